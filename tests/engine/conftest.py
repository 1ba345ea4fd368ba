"""Engine test parts: a real SQLite store, a registry of small test actions, payload builders.

The test actions record what they were called with and, where a test needs to steer timing,
wait on :class:`asyncio.Event` objects the test sets, so no test sleeps to wait for anything.
"""

from __future__ import annotations

import asyncio
import copy
import itertools
import json
import pathlib
import textwrap
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import aiohttp
import pytest
import structlog
from prometheus_client import CollectorRegistry

from remediator.adapters import metrics, state
from remediator.config import Settings
from remediator.core import alerts, planning, runs, safety, validation
from remediator.core.actions import ActionSpec
from remediator.core.errors import PermanentStepError, TemporaryStepError
from remediator.core.playbooks import PlaybookSet
from remediator.engine import executing
from remediator.engine.actions import httprequest, logmessage, notify
from remediator.engine.actions.registry import ActionContext, ActionRegistry, Output, Resources

PAYLOADS = pathlib.Path(__file__).parent / "payloads"
FINGERPRINT = "46924153d5d81b9f"
STARTS_AT = "2026-11-26T07:12:39.391Z"
WAIT = 5.0
"""Upper bound for anything a test waits for; reaching it means the behaviour broke."""


def load_payload(name: str) -> dict[str, Any]:
    """A recorded Alertmanager webhook body (a fresh copy each time)."""
    loaded: dict[str, Any] = json.loads((PAYLOADS / name).read_text(encoding="utf-8"))
    return loaded


def webhook(
    *,
    status: str = "firing",
    labels: Mapping[str, str] | None = None,
    annotations: Mapping[str, str] | None = None,
    fingerprint: str = FINGERPRINT,
    starts_at: str = STARTS_AT,
) -> dict[str, Any]:
    """A one-alert webhook body shaped like the recorded StoreDown payload."""
    body = load_payload("storedown-firing.json")
    alert = copy.deepcopy(body["alerts"][0])
    alert["status"] = status
    alert["fingerprint"] = fingerprint
    alert["startsAt"] = starts_at
    if labels is not None:
        alert["labels"] = dict(labels)
    if annotations is not None:
        alert["annotations"] = dict(annotations)
    if status == "resolved":
        alert["endsAt"] = "2026-11-26T07:20:00.000Z"
    body["status"] = status
    body["alerts"] = [alert]
    return body


def store_labels(store_id: str = "s1", **extra: str) -> dict[str, str]:
    return {"alertname": "StoreDown", "severity": "critical", "store_id": store_id, **extra}


def playbook_yaml(
    name: str,
    body: str,
    *,
    matchers: tuple[str, ...] = ('alertname="StoreDown"',),
    target: str = "store-{{ alert.labels.store_id }}",
    priority: int = 0,
) -> str:
    """A playbook document: the given header, then ``body`` (steps, verify, on_failure…)."""
    header = [
        f"name: {name}",
        f"priority: {priority}",
        "trigger:",
        "  matchers:",
        *(f"    - {json.dumps(m)}" for m in matchers),
        f"target: {json.dumps(target)}",
    ]
    return "\n".join(header) + "\n" + textwrap.dedent(body)


# The engine's mechanics are tested without the safety envelope's limits in the way (a second
# run on a target inside the default cooldown would be refused); the envelope has its own tests.
PERMISSIVE = safety.SafetyPolicy(
    target_rate=None,
    playbook_rate=None,
    cooldown=0.0,
    storm=safety.StormPolicy(max_targets=1_000_000),
    breaker=safety.BreakerPolicy(failures=1_000_000),
)


def playbook_set(
    registry: ActionRegistry, *documents: str, defaults: safety.SafetyPolicy = PERMISSIVE
) -> PlaybookSet:
    """Documents validated and parsed exactly as the daemon loads files."""
    files = {f"playbook{i}.yaml": text for i, text in enumerate(documents)}
    return validation.load_set(files, registry, digest="|".join(documents), defaults=defaults)


# Test actions


@dataclass(frozen=True, slots=True, kw_only=True)
class EchoParams:
    value: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True, kw_only=True)
class FlakyParams:
    key: str
    failures: int
    """Calls that raise TemporaryStepError before one succeeds."""
    delay: float | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class FailParams:
    kind: Literal["permanent", "temporary", "crash"]
    message: str = "it broke"


@dataclass(frozen=True, slots=True, kw_only=True)
class KeyParams:
    key: str


@dataclass(frozen=True, slots=True, kw_only=True)
class FlipParams:
    key: str
    ready_after: int
    """The call from which ``ready`` is true."""
    value: str = ""


@dataclass(frozen=True, slots=True)
class Call:
    action: str
    params: Any
    context: ActionContext


class Recorder:
    """What the test actions saw and did, and the events that steer the blocking one."""

    def __init__(self) -> None:
        self.calls: list[Call] = []
        self.counts: Counter[str] = Counter()
        self.started: defaultdict[str, asyncio.Event] = defaultdict(asyncio.Event)
        self.release: defaultdict[str, asyncio.Event] = defaultdict(asyncio.Event)
        self.cancelled: list[str] = []
        self.timeline: list[tuple[str, str]] = []
        self.active: Counter[str] = Counter()
        self.max_active: Counter[str] = Counter()

    def record(self, action: str, params: Any, context: ActionContext) -> int:
        self.calls.append(Call(action, params, context))
        self.counts[action] += 1
        return self.counts[action]

    def calls_of(self, action: str) -> list[Call]:
        return [c for c in self.calls if c.action == action]


class EchoAction:
    """Read-only: returns its value (and ``extra``) as output."""

    spec = ActionSpec(name="test.echo", params=EchoParams, mutating=False)

    def __init__(self, recorder: Recorder) -> None:
        self.recorder = recorder

    async def run(self, params: EchoParams, context: ActionContext) -> Output:
        self.recorder.record(self.spec.name, params, context)
        return {"value": params.value, **params.extra}

    def preview(self, params: EchoParams) -> str:
        return f"echo {params.value}"


class MutateAction:
    """Changes something; the executor must not call it in dry-run."""

    spec = ActionSpec(name="test.mutate", params=EchoParams, mutating=True)

    def __init__(self, recorder: Recorder) -> None:
        self.recorder = recorder

    async def run(self, params: EchoParams, context: ActionContext) -> Output:
        self.recorder.record(self.spec.name, params, context)
        return {"changed": params.value}

    def preview(self, params: EchoParams) -> str:
        return f"would change {params.value}"


class DryRunAwareAction:
    """Mutating, but honours dry-run itself (like the API server's dryRun=All)."""

    spec = ActionSpec(
        name="test.dry_run_aware", params=EchoParams, mutating=True, supports_dry_run=True
    )

    def __init__(self, recorder: Recorder) -> None:
        self.recorder = recorder

    async def run(self, params: EchoParams, context: ActionContext) -> Output:
        self.recorder.record(self.spec.name, params, context)
        return {"dry_run": context.dry_run}

    def preview(self, params: EchoParams) -> str:
        return f"aware {params.value}"


class FlakyAction:
    """Raises TemporaryStepError for its first ``failures`` calls per key, then succeeds."""

    spec = ActionSpec(name="test.flaky", params=FlakyParams, mutating=False)

    def __init__(self, recorder: Recorder) -> None:
        self.recorder = recorder

    async def run(self, params: FlakyParams, context: ActionContext) -> Output:
        self.recorder.record(self.spec.name, params, context)
        self.recorder.counts[f"flaky:{params.key}"] += 1
        attempt = self.recorder.counts[f"flaky:{params.key}"]
        if attempt <= params.failures:
            raise TemporaryStepError(f"flaky {params.key} try {attempt}", delay=params.delay)
        return {"attempt": attempt}

    def preview(self, params: FlakyParams) -> str:
        return f"flaky {params.key}"


class FailAction:
    spec = ActionSpec(name="test.fail", params=FailParams, mutating=False)

    def __init__(self, recorder: Recorder) -> None:
        self.recorder = recorder

    async def run(self, params: FailParams, context: ActionContext) -> Output:
        self.recorder.record(self.spec.name, params, context)
        if params.kind == "permanent":
            raise PermanentStepError(params.message)
        if params.kind == "temporary":
            raise TemporaryStepError(params.message)
        raise RuntimeError(params.message)

    def preview(self, params: FailParams) -> str:
        return f"fail {params.kind}"


class BlockAction:
    """Sets ``started[key]``, then waits for ``release[key]``; counts runs per target."""

    spec = ActionSpec(name="test.block", params=KeyParams, mutating=False)

    def __init__(self, recorder: Recorder) -> None:
        self.recorder = recorder

    async def run(self, params: KeyParams, context: ActionContext) -> Output:
        recorder = self.recorder
        recorder.record(self.spec.name, params, context)
        recorder.active[context.target] += 1
        recorder.max_active[context.target] = max(
            recorder.max_active[context.target], recorder.active[context.target]
        )
        recorder.timeline.append(("start", params.key))
        recorder.started[params.key].set()
        try:
            await recorder.release[params.key].wait()
        except asyncio.CancelledError:
            recorder.cancelled.append(params.key)
            raise
        finally:
            recorder.active[context.target] -= 1
        recorder.timeline.append(("end", params.key))
        return {"key": params.key}

    def preview(self, params: KeyParams) -> str:
        return f"block {params.key}"


class FlipAction:
    """Read-only check whose ``ready`` output turns true from call ``ready_after`` on."""

    spec = ActionSpec(name="test.flip", params=FlipParams, mutating=False)

    def __init__(self, recorder: Recorder) -> None:
        self.recorder = recorder

    async def run(self, params: FlipParams, context: ActionContext) -> Output:
        self.recorder.record(self.spec.name, params, context)
        self.recorder.counts[f"flip:{params.key}"] += 1
        call = self.recorder.counts[f"flip:{params.key}"]
        return {"ready": call >= params.ready_after, "call": call, "value": params.value}

    def preview(self, params: FlipParams) -> str:
        return f"flip {params.key}"


def make_registry(recorder: Recorder) -> ActionRegistry:
    return ActionRegistry(
        [
            EchoAction(recorder),
            MutateAction(recorder),
            DryRunAwareAction(recorder),
            FlakyAction(recorder),
            FailAction(recorder),
            BlockAction(recorder),
            FlipAction(recorder),
            logmessage.LogAction(),
            httprequest.HttpRequestAction(),
            notify.NotifyWebhookAction(),
        ]
    )


# The engine's parts, real ones


class Engine:
    """One test's store, metrics and actions, with helpers to queue runs and read results."""

    def __init__(
        self,
        *,
        store: state.SqliteStateStore,
        metrics: metrics.Metrics,
        recorder: Recorder,
        registry: ActionRegistry,
        session: aiohttp.ClientSession,
    ) -> None:
        self.store = store
        self.metrics = metrics
        self.recorder = recorder
        self.registry = registry
        self.session = session
        self._ids = itertools.count(1)

    def playbooks(self, *documents: str) -> PlaybookSet:
        return playbook_set(self.registry, *documents)

    def resources(
        self, *, settings: Settings | None = None, secrets: tuple[str, ...] = ()
    ) -> Resources:
        return Resources(settings=settings or Settings(), http=self.session, secrets=secrets)

    def executor(
        self,
        playbooks: PlaybookSet | Callable[[], PlaybookSet],
        *,
        settings: Settings | None = None,
        secrets: tuple[str, ...] = (),
    ) -> executing.Executor:
        current = playbooks if callable(playbooks) else (lambda: playbooks)
        return executing.Executor(
            registry=self.registry,
            store=self.store,
            resources=self.resources(settings=settings, secrets=secrets),
            metrics=self.metrics,
            playbooks=current,
            jitter=lambda: 0.0,
        )

    def next_id(self) -> str:
        return f"run-{next(self._ids)}"

    async def queue(
        self,
        playbooks: PlaybookSet,
        body: Mapping[str, Any] | None = None,
        *,
        dry_run: bool = False,
    ) -> list[str]:
        """Admit a webhook's alerts straight into the store, as queued runs; their ids."""
        hook = alerts.parse_webhook(dict(body or webhook(labels=store_labels())))
        admissions = [
            planning.plan_admission(
                alert, playbooks, only_highest=False, make_run_id=self.next_id, dry_run=dry_run
            )
            for alert in hook.alerts
        ]
        results = await self.store.admit(admissions, now=1000.0)
        return [run_id for result in results for run_id in result.created_runs]

    async def detail(self, run_id: str) -> state.RunDetail:
        found = await self.store.get_run(run_id)
        assert found is not None, f"no run {run_id}"
        return found

    async def audit(self) -> list[runs.AuditRecord]:
        return [record async for record in self.store.audit_records()]

    def sample(self, name: str, **labels: str) -> float:
        value = self.metrics.registry.get_sample_value(name, labels)
        return 0.0 if value is None else value


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


@pytest.fixture
def registry(recorder: Recorder) -> ActionRegistry:
    return make_registry(recorder)


@pytest.fixture
def db_path(tmp_path: pathlib.Path) -> pathlib.Path:
    return tmp_path / "state.sqlite"


@pytest.fixture
async def store(db_path: pathlib.Path) -> AsyncIterator[state.SqliteStateStore]:
    async with state.SqliteStateStore(db_path) as opened:
        yield opened


@pytest.fixture
def metric_set() -> metrics.Metrics:
    return metrics.Metrics(CollectorRegistry())


@pytest.fixture
async def http_session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
def engine(
    store: state.SqliteStateStore,
    metric_set: metrics.Metrics,
    recorder: Recorder,
    registry: ActionRegistry,
    http_session: aiohttp.ClientSession,
) -> Engine:
    return Engine(
        store=store,
        metrics=metric_set,
        recorder=recorder,
        registry=registry,
        session=http_session,
    )


def action_context(
    resources: Resources, *, dry_run: bool = False, deadline: float | None = None
) -> ActionContext:
    """The context the executor would give an action, for calling one directly."""
    return ActionContext(
        resources=resources,
        dry_run=dry_run,
        run_id="run-direct",
        playbook="direct",
        target="store-s1",
        deadline=asyncio.get_running_loop().time() + 10 if deadline is None else deadline,
        log=structlog.get_logger("tests"),
    )
