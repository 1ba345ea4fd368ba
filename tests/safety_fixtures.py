"""Parts for testing the safety envelope as a wired system, in-process and as a daemon.

:class:`Rig` wires what :mod:`remediator.running` wires (store, admitter, scheduler with its
per-playbook caps, executor, approvals, escalator, the HTTP app) around a registry of test
actions, so a step can block until the test releases it and a destructive step can be watched
without a cluster. :func:`http_sink` is a real local HTTP endpoint that records what is POSTed
to it: the notify receiver for escalations, or the service a daemon's ``http.request`` calls.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import time
import types
from collections import Counter
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import yaml
from aiohttp import web
from prometheus_client import CollectorRegistry

from remediator import running
from remediator.adapters import auditing, loading, metrics, state
from remediator.config import (
    EngineSettings,
    NotifySettings,
    NotifyTarget,
    PlaybookSettings,
    SafetySettings,
    Settings,
    StateSettings,
)
from remediator.core import runs
from remediator.core.actions import ActionSpec
from remediator.engine import reloading
from remediator.engine.actions.registry import ActionContext, ActionRegistry, Output, Resources
from remediator.simulation import serving
from remediator.web import intake
from tests import daemon_fixtures
from tests.engine.conftest import EchoParams, KeyParams, Recorder, make_registry

DEADLINE = 10.0
"""Seconds any single wait may take before the test fails."""
WEBHOOK_TOKEN = "wh-safety-0b6f3a1c"
API_TOKEN = "api-safety-8e24d9f7"
ESCALATION_TARGET = "oncall"

OPEN_SAFETY: Mapping[str, Any] = types.MappingProxyType(
    {
        "target_rate": None,
        "playbook_rate": None,
        "cooldown": 0,
        "breaker": {"failures": 1000},
        "storm": {"max_targets": 100_000},
    }
)
"""Every limit lifted; a test turns on only the safeguard it is about."""


def safety_section(**overrides: Any) -> str:
    """A playbook's ``safety:`` section: :data:`OPEN_SAFETY` with ``overrides`` applied."""
    return yaml.safe_dump({"safety": {**OPEN_SAFETY, **overrides}}, sort_keys=True)


# Test actions the built-in registry does not have


class HoldAction:
    """Read-only: waits for ``recorder.release[key]``; counts its runs in flight per playbook."""

    spec = ActionSpec(name="test.hold", params=KeyParams, mutating=False)

    def __init__(self, recorder: Recorder) -> None:
        self.recorder = recorder
        self.active: Counter[str] = Counter()
        self.peak: Counter[str] = Counter()
        self.released = False
        """Set: every hold, also those not started yet, returns at once."""

    async def run(self, params: KeyParams, context: ActionContext) -> Output:
        self.recorder.record(self.spec.name, params, context)
        self.active[context.playbook] += 1
        self.peak[context.playbook] = max(
            self.peak[context.playbook], self.active[context.playbook]
        )
        self.recorder.started[params.key].set()
        try:
            if not self.released:
                await self.recorder.release[params.key].wait()
        finally:
            self.active[context.playbook] -= 1
        return {"key": params.key}

    def preview(self, params: KeyParams) -> str:
        return f"hold {params.key}"


class DestroyAction:
    """Destructive (say, deleting a PVC): it needs an opt-in and, by default, an approval."""

    spec = ActionSpec(name="test.destroy", params=EchoParams, mutating=True, destructive=True)

    def __init__(self, recorder: Recorder) -> None:
        self.recorder = recorder

    async def run(self, params: EchoParams, context: ActionContext) -> Output:
        self.recorder.record(self.spec.name, params, context)
        return {"destroyed": params.value}

    def preview(self, params: EchoParams) -> str:
        return f"would destroy {params.value}"


def safety_registry(recorder: Recorder) -> tuple[ActionRegistry, HoldAction]:
    actions = make_registry(recorder)
    hold = HoldAction(recorder)
    actions.register(hold)
    actions.register(DestroyAction(recorder))
    return actions, hold


# A local HTTP endpoint


@dataclass(kw_only=True)
class Sink:
    """What was POSTed to a local endpoint; ``received`` also wakes waiters."""

    url: str
    address: str
    bodies: list[Any] = field(default_factory=list)
    """JSON bodies (None for an empty one), in arrival order."""
    paths: list[str] = field(default_factory=list)
    received: asyncio.Queue[Any] = field(default_factory=asyncio.Queue)

    async def next_body(self) -> Any:
        async with asyncio.timeout(DEADLINE):
            return await self.received.get()


@contextlib.asynccontextmanager
async def http_sink() -> AsyncIterator[Sink]:
    """An HTTP server on 127.0.0.1 answering 200 to every POST; listening when this yields."""
    sink: Sink | None = None

    async def accept(request: web.Request) -> web.Response:
        assert sink is not None
        text = await request.text()
        body = json.loads(text) if text else None
        sink.bodies.append(body)
        sink.paths.append(request.path)
        sink.received.put_nowait(body)
        return web.json_response({"ok": True})

    app = web.Application()
    app.router.add_post("/{tail:.*}", accept)
    async with serving.serve_app(app) as url:
        sink = Sink(url=f"{url}/hook", address=url.removeprefix("http://"))
        yield sink


# Payloads


def firing(
    store_id: str,
    *,
    alertname: str = "StoreDown",
    starts_at: str = "2026-11-26T07:12:39.391Z",
    status: str = "firing",
) -> dict[str, Any]:
    """A v4 webhook with one alert about ``store_id``, shaped like the recorded StoreDown one.

    A new ``starts_at`` is the same alert firing again: a new dedupe key, the same target.
    """
    labels = {"alertname": alertname, "severity": "critical", "store_id": store_id}
    fingerprint = hashlib.sha256(f"{alertname}/{store_id}".encode()).hexdigest()[:16]
    return {
        "version": "4",
        "receiver": "remediator",
        "status": status,
        "groupKey": f'{{}}:{{alertname="{alertname}", store_id="{store_id[:40]}"}}',
        "truncatedAlerts": 0,
        "groupLabels": {"alertname": alertname},
        "commonLabels": labels,
        "commonAnnotations": {},
        "externalURL": "http://alertmanager:9093",
        "alerts": [
            {
                "status": status,
                "labels": labels,
                "annotations": {"summary": "store is down"},
                "startsAt": starts_at,
                "endsAt": "0001-01-01T00:00:00Z",
                "generatorURL": "http://prometheus:9090/graph",
                "fingerprint": fingerprint,
            }
        ],
    }


def refiring(store_id: str, n: int) -> dict[str, Any]:
    """The ``n``-th firing of the same alert on ``store_id`` (a new startsAt each time)."""
    return firing(store_id, starts_at=f"2026-11-26T07:{n:02d}:00.000Z")


# The wired system


class Clock:
    """Wall-clock seconds the test sets; admission, execution and the audit log read it.

    It starts at the real time (and stays there until a test moves it), because the control
    API stamps pauses and breaker resets with ``time.time()``: the two must not disagree by
    more than the test's own duration.
    """

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now

    def catch_up(self) -> None:
        """Jump to the real time, after a control call stamped something with it."""
        self.now = max(self.now, time.time())


def make_settings(
    directory: Path,
    *,
    notify_url: str | None = None,
    concurrency: int = 4,
    dry_run: bool = False,
) -> Settings:
    targets = {ESCALATION_TARGET: NotifyTarget(url=notify_url)} if notify_url else {}
    return Settings(
        playbooks=PlaybookSettings(directory=str(directory / "playbooks")),
        state=StateSettings(path=str(directory / "state.sqlite")),
        engine=EngineSettings(queue_size=100, concurrency=concurrency, dry_run=dry_run),
        notify=NotifySettings(targets=types.MappingProxyType(targets)),
        safety=SafetySettings(escalation_target=ESCALATION_TARGET if notify_url else None),
    )


class Rig:
    """The daemon's parts around test actions; ``app`` is what the tests talk HTTP to."""

    def __init__(
        self,
        *,
        settings: Settings,
        store: state.SqliteStateStore,
        clock: Clock,
        session: aiohttp.ClientSession,
    ) -> None:
        self.settings = settings
        self.store = store
        self.clock = clock
        self.recorder = Recorder()
        self.actions, self.hold = safety_registry(self.recorder)
        self.registry = CollectorRegistry()
        self.metrics = metrics.Metrics(self.registry)
        library = reloading.PlaybookLibrary(
            loading.load_playbooks(
                [settings.playbooks.directory], self.actions, defaults=settings.safety.defaults
            )
        )
        resources = Resources(settings=settings, http=session)
        engine = running.build_engine(
            settings=settings,
            actions=self.actions,
            library=library,
            metrics=self.metrics,
            store=store,
            resources=resources,
            tokens=running.Tokens(webhook=WEBHOOK_TOKEN, api=API_TOKEN),
            ready=lambda: True,
            clock=clock,
            jitter=lambda: 0.0,
        )
        self.library = library
        self.keeper = engine.keeper
        self.approvals = engine.approvals
        self.escalator = engine.escalator
        self.executor = engine.executor
        self.scheduler = engine.scheduler
        self.services = engine.services

    def app(self) -> web.Application:
        return intake.make_app(self.services)

    def release_all(self) -> None:
        self.hold.released = True
        for event in self.recorder.release.values():
            event.set()

    async def started(self, key: str) -> None:
        """Until a ``test.hold`` step with this key is running."""
        async with asyncio.timeout(DEADLINE):
            await self.recorder.started[key].wait()

    async def settle(self) -> None:
        """Until nothing runs or waits, and every escalation has been sent and audited."""
        async with asyncio.timeout(DEADLINE):
            await self.scheduler.wait_idle()
            await self.escalator.drain()

    async def close(self) -> None:
        self.release_all()
        await self.scheduler.drain(DEADLINE)
        await self.escalator.drain()

    async def run(self, run_id: str) -> state.RunDetail:
        detail = await self.store.get_run(run_id)
        assert detail is not None, f"no run {run_id}"
        return detail

    async def wait_status(self, run_id: str, status: runs.RunStatus) -> state.RunDetail:
        """Poll the store until the run has ``status``; its detail then."""
        async with asyncio.timeout(DEADLINE):
            while True:
                detail = await self.run(run_id)
                if detail.run.status is status:
                    return detail
                await asyncio.sleep(0.01)

    async def audit(self, kind: runs.AuditKind | None = None) -> list[runs.AuditEvent]:
        return [
            record.event
            async for record in self.store.audit_records()
            if kind is None or record.event.kind is kind
        ]

    async def all_runs(self) -> list[runs.RunRecord]:
        page = await self.store.list_runs(runs.RunFilter(), limit=1000)
        return list(page.items)

    def sample(self, name: str, **labels: str) -> float:
        return self.registry.get_sample_value(name, labels) or 0.0


async def open_rig(
    directory: Path,
    playbooks: Mapping[str, str],
    *,
    session: aiohttp.ClientSession,
    notify_url: str | None = None,
    concurrency: int = 4,
    dry_run: bool = False,
) -> Rig:
    """Write ``playbooks`` (name → YAML) and build a Rig on a new store in ``directory``."""
    (directory / "playbooks").mkdir()
    for name, text in playbooks.items():
        (directory / "playbooks" / f"{name}.yaml").write_text(text, encoding="utf-8")
    settings = make_settings(
        directory, notify_url=notify_url, concurrency=concurrency, dry_run=dry_run
    )
    clock = Clock()
    store = state.SqliteStateStore(settings.state.path, clock=clock, on_append=auditing.log_record)
    await store.open()
    return Rig(settings=settings, store=store, clock=clock, session=session)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def dumps(events: list[runs.AuditEvent]) -> str:
    """The audit events as one JSON text, to look for a value anywhere in them."""
    return json.dumps(
        [{"target": e.target, "reason": e.reason, "details": dict(e.details)} for e in events],
        default=dict,
    )


# A daemon subprocess (tests.daemon_fixtures) through its HTTP API


async def daemon_call(
    session: aiohttp.ClientSession,
    daemon: daemon_fixtures.Daemon,
    path: str,
    body: Any = None,
    *,
    method: str = "POST",
    status: int = 200,
    token: str = daemon_fixtures.API_TOKEN,
) -> Any:
    """One call to a daemon's API (the webhook too, with its token); asserts the status."""
    async with session.request(
        method, f"{daemon.url}{path}", json=body, headers=bearer(token)
    ) as response:
        assert response.status == status, await response.text()
        return await response.json()


async def daemon_alert(
    session: aiohttp.ClientSession, daemon: daemon_fixtures.Daemon, payload: dict[str, Any]
) -> dict[str, Any]:
    admitted: dict[str, Any] = await daemon_call(
        session, daemon, "/webhook/alertmanager", payload, token=daemon_fixtures.TOKEN
    )
    return admitted


async def wait_awaiting_approval(
    session: aiohttp.ClientSession, daemon: daemon_fixtures.Daemon, count: int
) -> list[str]:
    """Poll GET /api/v1/safety until ``count`` runs wait for approval; their ids."""
    async with asyncio.timeout(DEADLINE):
        while True:
            status = await daemon_call(session, daemon, "/api/v1/safety", method="GET")
            waiting: list[str] = status["awaiting_approval"]
            if len(waiting) >= count:
                return waiting
            await asyncio.sleep(0.02)
