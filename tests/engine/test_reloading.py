"""Hot reload from real files: a valid change swaps the set, an invalid one keeps the old set."""

from __future__ import annotations

import asyncio
import pathlib

import pytest

from remediator.adapters import loading, metrics, state
from remediator.core.runs import AuditEvent, AuditKind
from remediator.engine import reloading
from remediator.engine.actions.registry import ActionRegistry
from tests.engine.conftest import WAIT, playbook_yaml

STEPS = """
steps:
  - name: hello
    action: test.echo
"""


class Reloading:
    """A playbook directory on disk with its library and reloader."""

    def __init__(
        self,
        directory: pathlib.Path,
        registry: ActionRegistry,
        store: state.SqliteStateStore,
        metrics: metrics.Metrics,
    ) -> None:
        self.directory = directory
        self.store = store
        self.metrics = metrics
        self.write("first.yaml", playbook_yaml("original", STEPS))
        self.library = reloading.PlaybookLibrary(loading.load_playbooks([directory], registry))
        self.reloader = reloading.Reloader(
            library=self.library,
            paths=[directory],
            catalog=registry,
            store=store,
            metrics=metrics,
        )

    def write(self, name: str, text: str) -> None:
        (self.directory / name).write_text(text, encoding="utf-8")

    def names(self) -> list[str]:
        return sorted(p.name for p in self.library().playbooks)

    async def events(self) -> list[AuditEvent]:
        return [r.event async for r in self.store.audit_records()]

    def failures(self) -> float:
        value = self.metrics.registry.get_sample_value("remediator_playbook_reload_failures_total")
        return value or 0.0


@pytest.fixture
def setup(
    tmp_path: pathlib.Path,
    registry: ActionRegistry,
    store: state.SqliteStateStore,
    metric_set: metrics.Metrics,
) -> Reloading:
    directory = tmp_path / "playbooks"
    directory.mkdir()
    return Reloading(directory, registry, store, metric_set)


async def test_a_valid_change_becomes_the_active_set(setup: Reloading) -> None:
    setup.write("second.yaml", playbook_yaml("added", STEPS))

    assert await setup.reloader.reload(trigger="sighup") is True

    assert setup.names() == ["added", "original"]
    (event,) = await setup.events()
    assert (event.kind, event.outcome, event.reason) == (
        AuditKind.PLAYBOOKS_LOADED,
        "loaded",
        "sighup",
    )
    assert event.details["playbooks"] == ["added", "original"]
    assert event.details["digest"] == setup.library().digest
    assert setup.metrics.registry.get_sample_value("remediator_playbooks_loaded") == 2


async def test_an_unchanged_set_is_not_reloaded_or_audited(setup: Reloading) -> None:
    before = setup.library()

    assert await setup.reloader.reload(trigger="sighup") is True

    assert setup.library() is before
    assert await setup.events() == []


async def test_an_invalid_change_keeps_the_previous_set(setup: Reloading) -> None:
    before = setup.library()
    setup.write("first.yaml", playbook_yaml("original", STEPS) + "bogus_key: 1\n")
    setup.write(
        "second.yaml",
        playbook_yaml(
            "broken",
            """
            steps:
              - name: hello
                action: test.nonexistent
            """,
        ),
    )

    assert await setup.reloader.reload(trigger="file_change") is False

    assert setup.library() is before
    (event,) = await setup.events()
    assert (event.kind, event.outcome, event.reason) == (
        AuditKind.PLAYBOOKS_RELOAD_FAILED,
        "kept_previous",
        "file_change",
    )
    assert event.details["kept"] == ["original"]
    problems = event.details["problems"]
    assert any("first.yaml" in p and "bogus_key" in p for p in problems), problems
    assert any("second.yaml" in p and "test.nonexistent" in p for p in problems), problems
    assert setup.failures() == 1


async def test_watch_picks_up_a_file_change(setup: Reloading) -> None:
    watcher = asyncio.create_task(setup.reloader.watch(interval=0.01))
    loop = asyncio.get_running_loop()
    deadline = loop.time() + WAIT
    try:
        # The watcher takes its baseline snapshot when it starts, at a moment the test cannot
        # see; a change written before that would be part of the baseline. So keep changing
        # the file (each version a different size) until the watcher has reacted.
        version = 0
        while "added" not in setup.names():
            if loop.time() > deadline:
                pytest.fail("the watcher did not reload the changed directory")
            version += 1
            setup.write("second.yaml", playbook_yaml("added", STEPS) + "#" * version + "\n")
            await asyncio.sleep(0.02)
    finally:
        watcher.cancel()
        with pytest.raises(asyncio.CancelledError):
            await watcher

    loaded = [e for e in await setup.events() if e.kind is AuditKind.PLAYBOOKS_LOADED]
    assert loaded
    assert loaded[0].reason == "file_change"


async def test_watch_keeps_the_old_set_when_a_change_is_invalid(setup: Reloading) -> None:
    before = setup.library()
    watcher = asyncio.create_task(setup.reloader.watch(interval=0.01))
    loop = asyncio.get_running_loop()
    deadline = loop.time() + WAIT
    try:
        version = 0
        while setup.failures() == 0:
            if loop.time() > deadline:
                pytest.fail("the watcher did not try to reload the changed directory")
            version += 1
            setup.write("second.yaml", "name: [unclosed" + " " * version + "\n")
            await asyncio.sleep(0.02)
    finally:
        watcher.cancel()
        with pytest.raises(asyncio.CancelledError):
            await watcher

    assert setup.library() is before
    assert {e.kind for e in await setup.events()} == {AuditKind.PLAYBOOKS_RELOAD_FAILED}
