"""The HTTP app on a real socket, over a real SQLite store, a real admitter and executor.

An :class:`Engine` wires what :mod:`remediator.running` wires, minus the process: a store in
``tmp_path``, a fresh ``CollectorRegistry``, a Scheduler whose runs pass through a gate (open
by default) before the real Executor claims them, so a test can hold runs "started but not
finished" to fill the queue.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable
from importlib import resources
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from prometheus_client import CollectorRegistry
from pytest_aiohttp import AiohttpClient

from remediator import running
from remediator.adapters import auditing, loading, metrics, state
from remediator.config import (
    AuthSettings,
    EngineSettings,
    PlaybookSettings,
    ServerSettings,
    Settings,
    StateSettings,
)
from remediator.engine import reloading
from remediator.engine.actions import registry
from remediator.web import intake
from tests.daemon_fixtures import UNLIMITED_SAFETY

WEBHOOK_TOKEN = "wh-7c1e0b9d-secret"
API_TOKEN = "api-52aa61f0-secret"
DEADLINE = 10.0
"""Seconds any single wait in these tests may take before the test fails."""

# The test's own playbook, so edits to the shipped playbooks/ cannot change these tests.
PLAYBOOK = """\
name: store-down
trigger:
  matchers:
    - alertname="StoreDown"
target: "store-{{ alert.labels.store_id }}"
steps:
  - name: record
    action: log
    params:
      message: "store {{ alert.labels.store_id }} is down"
"""
# Fails on every run without touching the network: the host is not in http.allowed_hosts.
FAILING_PLAYBOOK = """\
name: pod-crash
trigger:
  matchers:
    - alertname="PodCrash"
target: "pod-{{ alert.labels.pod }}"
steps:
  - name: restart
    action: http.request
    params:
      url: "http://not-allowed.invalid/restart"
      method: POST
"""

Client = TestClient[web.Request, web.Application]


def recorded(name: str) -> dict[str, Any]:
    """A payload Alertmanager 0.25 really sent (``storedown-firing``, ``storedown-resolved``)."""
    text = resources.files("remediator").joinpath("examples", f"{name}.json").read_text("utf-8")
    payload: dict[str, Any] = json.loads(text)
    return payload


def storedown(store_id: str) -> dict[str, Any]:
    """The recorded firing payload, for another store (so another fingerprint)."""
    payload = recorded("storedown-firing")
    alert = payload["alerts"][0]
    alert["labels"]["store_id"] = store_id
    alert["fingerprint"] = hashlib.sha256(store_id.encode()).hexdigest()[:16]
    return payload


def webhook(*alerts: dict[str, Any]) -> dict[str, Any]:
    """The recorded envelope around other alerts (Alertmanager groups several per delivery)."""
    payload = recorded("storedown-firing")
    payload["alerts"] = list(alerts)
    return payload


def alert(
    alertname: str,
    *,
    fingerprint: str,
    status: str = "firing",
    **labels: str,
) -> dict[str, Any]:
    """One alert in Alertmanager's shape, like the recorded one."""
    template = recorded(f"storedown-{status}")["alerts"][0]
    return {**template, "labels": {"alertname": alertname, **labels}, "fingerprint": fingerprint}


def auth(token: str = WEBHOOK_TOKEN) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


class Clock:
    """Wall-clock time the test sets: what admission, execution and the audit log see."""

    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class Engine:
    """Everything behind the app; ``services`` is what ``make_app`` takes."""

    def __init__(
        self,
        *,
        settings: Settings,
        store: state.SqliteStateStore,
        clock: Clock,
        session: aiohttp.ClientSession,
        webhook_token: str | None,
        api_token: str | None,
        viewer_token: str | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.clock = clock
        self.registry = CollectorRegistry()
        self.metrics = metrics.Metrics(self.registry)
        self.gate = asyncio.Event()
        self.gate.set()
        self.entered: asyncio.Queue[str] = asyncio.Queue()
        """Run ids that reached the gate, i.e. were dispatched by the scheduler."""
        self.ready = True
        actions = registry.builtin()
        library = reloading.PlaybookLibrary(
            loading.load_playbooks([settings.playbooks.directory], actions)
        )
        engine = running.build_engine(
            settings=settings,
            actions=actions,
            library=library,
            metrics=self.metrics,
            store=store,
            resources=registry.Resources(settings=settings, http=session),
            tokens=running.Tokens(webhook=webhook_token, api=api_token, viewer=viewer_token),
            ready=lambda: self.ready,
            clock=clock,
            wrap_execute=self._gated,
        )
        self.approvals = engine.approvals
        self.executor = engine.executor
        self.scheduler = engine.scheduler
        self.services = engine.services

    def _gated(self, execute: running.ExecuteRun) -> running.ExecuteRun:
        async def gated(run_id: str) -> object:
            self.entered.put_nowait(run_id)
            await self.gate.wait()
            return await execute(run_id)

        return gated

    async def next_dispatched(self) -> str:
        async with asyncio.timeout(DEADLINE):
            return await self.entered.get()

    async def settle(self) -> None:
        """Until every admitted run has finished (the gate must be open)."""
        async with asyncio.timeout(DEADLINE):
            await self.scheduler.wait_idle()

    def sample(self, name: str, **labels: str) -> float:
        return self.registry.get_sample_value(name, labels) or 0.0

    def rows(self, table: str) -> int:
        """Rows in a table of the SQLite file, read by a separate connection."""
        assert table in {"alerts", "runs", "steps", "audit"}
        with contextlib.closing(sqlite3.connect(self.store.path)) as conn:
            (count,) = conn.execute(f"SELECT count(*) FROM {table}").fetchone()  # noqa: S608
        return int(count)

    def audit_kinds(self) -> list[str]:
        with contextlib.closing(sqlite3.connect(self.store.path)) as conn:
            return [kind for (kind,) in conn.execute("SELECT kind FROM audit ORDER BY seq")]


MakeEngine = Callable[..., Awaitable[Engine]]


@pytest.fixture
async def make_engine(tmp_path: Path) -> AsyncIterator[MakeEngine]:
    """Build an Engine with some settings changed; everything is closed at teardown."""
    playbooks = tmp_path / "playbooks"
    playbooks.mkdir()
    for name, text in (("store-down", PLAYBOOK), ("pod-crash", FAILING_PLAYBOOK)):
        (playbooks / f"{name}.yaml").write_text(text + UNLIMITED_SAFETY, encoding="utf-8")
    built: list[Engine] = []
    async with aiohttp.ClientSession() as session:

        async def make(
            *,
            queue_size: int = 100,
            concurrency: int = 4,
            max_body_bytes: int = 64 * 1024,
            webhook_token: str | None = WEBHOOK_TOKEN,
            api_token: str | None = API_TOKEN,
            viewer_token: str | None = None,
            retry_after: int = 7,
        ) -> Engine:
            settings = Settings(
                server=ServerSettings(max_body_bytes=max_body_bytes, retry_after=retry_after),
                auth=AuthSettings(),
                playbooks=PlaybookSettings(directory=str(playbooks)),
                state=StateSettings(path=str(tmp_path / f"state-{len(built)}.sqlite")),
                engine=EngineSettings(queue_size=queue_size, concurrency=concurrency),
            )
            clock = Clock()
            store = state.SqliteStateStore(
                settings.state.path, clock=clock, on_append=auditing.log_record
            )
            await store.open()
            engine = Engine(
                settings=settings,
                store=store,
                clock=clock,
                session=session,
                webhook_token=webhook_token,
                api_token=api_token,
                viewer_token=viewer_token,
            )
            built.append(engine)
            return engine

        try:
            yield make
        finally:
            for engine in built:
                engine.gate.set()
                await engine.scheduler.drain(DEADLINE)
                await engine.store.close()


@pytest.fixture
async def engine(make_engine: MakeEngine) -> Engine:
    return await make_engine()


@pytest.fixture
async def client(aiohttp_client: AiohttpClient, engine: Engine) -> Client:
    return await aiohttp_client(intake.make_app(engine.services))
