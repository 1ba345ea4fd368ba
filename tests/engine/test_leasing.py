"""Taking over a run whose replica died, wired as the daemon wires it (SQLite, one replica
restarting: it adopts every run another process left)."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from remediator.core import alerts, planning, runs
from tests import safety_fixtures
from tests.safety_fixtures import Rig, Sink, firing, http_sink, safety_section

DEAD = "replica-that-died"


def fix_playbook(*, resume: bool, last_mutates: bool, failures: int = 1000) -> str:
    last = "test.mutate" if last_mutates else "test.echo"
    resume_line = "resume: true\n" if resume else ""
    return f"""\
name: fix
trigger:
  matchers:
    - alertname="StoreDown"
target: "store-{{{{ alert.labels.store_id }}}}"
{resume_line}steps:
  - name: restart
    action: test.mutate
    params:
      value: restarted
  - name: scale
    action: test.mutate
    params:
      value: scaled
  - name: report
    action: {last}
    params:
      value: "after {{{{ steps.restart.output.changed }}}}"
{safety_section(breaker={"failures": failures, "reset_after": 600})}"""


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as opened:
        yield opened


@pytest.fixture
async def sink() -> AsyncIterator[Sink]:
    async with http_sink() as opened:
        yield opened


async def rig_with(tmp_path: Path, session: aiohttp.ClientSession, sink: Sink, text: str) -> Rig:
    return await safety_fixtures.open_rig(
        tmp_path, {"fix": text}, session=session, notify_url=sink.url
    )


async def died_in_scale(rig: Rig) -> str:
    """What a replica that was SIGKILLed left: step ``restart`` done, ``scale`` in flight."""
    store, now = rig.store, rig.clock()
    hook = alerts.parse_webhook(firing("s1"))
    ids = itertools.count(1)
    admissions = [
        planning.plan_admission(
            alert, rig.library(), only_highest=False, make_run_id=lambda: f"run-{next(ids)}"
        )
        for alert in hook.alerts
    ]
    await store.heartbeat(DEAD, host="node-1", now=now, ttl=15)
    (result,) = await store.admit(admissions, now=now, owner=DEAD)
    (run_id,) = result.created_runs
    assert await store.claim_run(run_id, now=now, owner=DEAD, record_start=True)
    assert await store.begin_step(run_id, in_flight(0, "restart", now), owner=DEAD) is None
    await store.record_step(
        runs.StepRecord(
            run_id=run_id,
            index=0,
            phase="steps",
            name="restart",
            action="test.mutate",
            outcome=runs.StepOutcome.SUCCEEDED,
            params={"value": "restarted"},
            attempts=1,
            duration=0.1,
            started_at=now,
            output={"changed": "restarted"},
        ),
        owner=DEAD,
    )
    assert await store.begin_step(run_id, in_flight(1, "scale", now), owner=DEAD) is None
    return run_id


def in_flight(index: int, name: str, now: float) -> dict[str, Any]:
    return {
        "index": index,
        "phase": "steps",
        "name": name,
        "action": "test.mutate",
        "started_at": now,
        "params": {"value": name},
    }


async def test_a_run_with_only_read_only_steps_left_resumes_after_the_unknown_step(
    tmp_path: Path, session: aiohttp.ClientSession, sink: Sink
) -> None:
    rig = await rig_with(tmp_path, session, sink, fix_playbook(resume=False, last_mutates=False))
    try:
        run_id = await died_in_scale(rig)

        adoption = await rig.keeper.start()
        detail = await rig.wait_status(run_id, runs.RunStatus.SUCCEEDED)
        await rig.settle()
        kinds = [e.kind for e in await rig.audit() if e.run_id == run_id]
    finally:
        await rig.close()
        await rig.store.close()

    assert [t.run.run_id for t in adoption.taken_over] == [run_id]
    # Nothing mutating ran again here: restart was done, scale's outcome is unknown.
    assert rig.recorder.calls_of("test.mutate") == []
    (report,) = rig.recorder.calls_of("test.echo")
    assert report.params.value == "after restarted", "the resumed step sees the steps before"
    assert [(s.name, s.outcome) for s in detail.steps] == [
        ("restart", runs.StepOutcome.SUCCEEDED),
        ("scale", runs.StepOutcome.UNKNOWN),
        ("report", runs.StepOutcome.SUCCEEDED),
    ]
    assert (
        kinds.index(runs.AuditKind.RUN_TAKEN_OVER)
        < kinds.index(runs.AuditKind.RUN_RESUMED)
        < kinds.index(runs.AuditKind.RUN_FINISHED)
    )
    (escalation,) = sink.bodies
    text = escalation["text"]
    for expected in (run_id, "store-s1", DEAD, "'scale' was in flight", "done: restart"):
        assert expected in text, text
    assert "resumed after it because every step left is read-only" in text
    assert rig.sample("remediator_runs_taken_over_total", outcome="resumed") == 1


async def test_a_run_with_mutating_steps_left_ends_interrupted_and_counts_as_a_failure(
    tmp_path: Path, session: aiohttp.ClientSession, sink: Sink
) -> None:
    rig = await rig_with(
        tmp_path, session, sink, fix_playbook(resume=False, last_mutates=True, failures=1)
    )
    try:
        run_id = await died_in_scale(rig)

        await rig.keeper.start()
        detail = await rig.wait_status(run_id, runs.RunStatus.INTERRUPTED)
        await rig.settle()
        status = await rig.store.safety_status(now=rig.clock())
    finally:
        await rig.close()
        await rig.store.close()

    assert rig.recorder.calls == []
    assert detail.run.error is not None and "mutating steps remain (report)" in detail.run.error
    texts = [body["text"] for body in sink.bodies]
    assert len(texts) == 2, texts
    assert any("ended interrupted" in t and run_id in t for t in texts)
    # The takeover is the breaker's one allowed failure: it opens, and says so once.
    assert any("circuit breaker open" in t for t in texts)
    assert {(b.playbook, b.target) for b in status.breakers} == {("fix", "store-s1"), ("fix", None)}
    assert rig.sample("remediator_runs_taken_over_total", outcome="interrupted") == 1


async def test_resume_true_continues_with_the_next_mutating_step_exactly_once(
    tmp_path: Path, session: aiohttp.ClientSession, sink: Sink
) -> None:
    rig = await rig_with(tmp_path, session, sink, fix_playbook(resume=True, last_mutates=True))
    try:
        run_id = await died_in_scale(rig)

        await rig.keeper.start()
        detail = await rig.wait_status(run_id, runs.RunStatus.SUCCEEDED)
        await rig.settle()
    finally:
        await rig.close()
        await rig.store.close()

    assert [c.params.value for c in rig.recorder.calls_of("test.mutate")] == ["after restarted"]
    assert [s.name for s in detail.steps] == ["restart", "scale", "report"]
    (escalation,) = sink.bodies
    assert "resumed after it because the playbook says resume" in escalation["text"]
