"""``remediator test``: play playbook scenarios on the simulated platform, in-process.

For each scenario (`remediator.core.scenarios`): start the simulated platform
(`platform.run`: the Kubernetes API emulator, its controllers, the provisioner twin, the
storefront) with the scenario's stores and faults, a stand-in for Prometheus' query API
answering from the declared series (and ``store_up`` from the storefront for the rest), and
the on-call receiver; assemble remediator's engine exactly as the daemon does
(`running.build_engine`, a real SQLite state file) on the playbooks with their durations
compressed; set the safety state; deliver the alerts; wait until every run has finished;
then read what happened (runs and audit from the state, writes from the API, the twin and the
receiver, the stores' health from the platform) and compare it with the expectations.

Nothing here decides what passes: `remediator.core.scenarios.compare` does.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, TextIO

import structlog
import yaml
from aiohttp import web
from prometheus_client import CollectorRegistry

from remediator import config, running
from remediator.adapters import loading, metrics, state
from remediator.core import alerts, planning, scenarios
from remediator.core.errors import ConfigError, PlaybookError, Problem
from remediator.core.playbooks import PlaybookSet
from remediator.core.runs import AuditKind, RunFilter, RunRecord, RunStatus
from remediator.core.safety import SafetyPolicy
from remediator.engine import admitting, envelope, reloading
from remediator.engine.actions import registry
from remediator.simulation import (
    closedloop,
    controllers,
    faults,
    platform,
    promql,
    serving,
    standins,
    stores,
)

log = structlog.get_logger(__name__)

DELAYS = controllers.ControllerSettings(
    rollout_delay=0.01, job_delay=0.0, certificate_delay=0.01, volume_delay=0.01
)
"""The platform's controllers finish a rollout, a Job or a certificate within a few ms."""
DEADLINE = 30.0
"""Seconds a scenario may take in all; past it, it fails naming what was still running."""
ONCALL = "oncall"
_WAITING = frozenset(
    {str(RunStatus.QUEUED), str(RunStatus.RUNNING), str(RunStatus.AWAITING_APPROVAL)}
)


class ScenarioError(Exception):
    """A scenario could not be played (not: it failed its expectations)."""


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Result:
    scenario: scenarios.Scenario
    differences: tuple[str, ...]
    observed: scenarios.Observed
    seconds: float

    @property
    def passed(self) -> bool:
        return not self.differences


# --- the stand-in for Prometheus ----------------------------------------------------------------


class SeriesQuery:
    """Prometheus' instant-query API over the declared series, plus ``store_up`` of every
    store not declared, as the prober would see it (1 while its storefront answers)."""

    def __init__(self, sim: platform.SimulatedPlatform, series: Sequence[str]) -> None:
        self._sim = sim
        self._declared: list[promql.Sample] = []
        for text in series:
            selector, value = text.rsplit(None, 1)
            labels = promql.parse_series(selector)
            self._declared.append(promql.Sample(labels=labels, value=float(value)))
        self.queries: list[str] = []

    def samples(self) -> list[promql.Sample]:
        declared = {
            s.labels.get("store_id") for s in self._declared if s.labels["__name__"] == "store_up"
        }
        derived = [
            promql.Sample(
                labels={
                    "__name__": "store_up",
                    "store_id": store_id,
                    "namespace": stores.names(store_id).namespace,
                },
                value=1.0 if self._sim.serving(store_id) else 0.0,
            )
            for store_id in self._sim.store_ids
            if store_id not in declared
        ]
        return [*self._declared, *derived]

    async def handle(self, request: web.Request) -> web.Response:
        form = await request.post() if request.method == "POST" else request.query
        query = str(form.get("query", ""))
        self.queries.append(query)
        try:
            result = promql.evaluate(query, self.samples())
        except promql.PromQLError as e:
            error = {"status": "error", "errorType": "bad_data", "error": str(e)}
            return web.json_response(error, status=400)
        now = time.time()
        vector = [{"metric": dict(s.labels), "value": [now, repr(s.value)]} for s in result]
        return web.json_response(
            {"status": "success", "data": {"resultType": "vector", "result": vector}}
        )


@contextlib.asynccontextmanager
async def serve_series(query: SeriesQuery) -> AsyncIterator[str]:
    app = web.Application()
    app.router.add_route("*", "/api/v1/query", query.handle)
    async with serving.serve_app(app) as url:
        yield url


# --- what was written ---------------------------------------------------------------------------


def describe_kube_write(request: platform.ApiRequest) -> str:
    """``k8s PATCH deployments store-s1/s1-app``: the resource (with a subresource) and the
    object, from the request path."""
    parts = [p for p in request.path.split("/") if p]
    rest = parts[2:] if parts[:1] == ["api"] else parts[3:]
    namespace = None
    if len(rest) >= 3 and rest[0] == "namespaces" and rest[2] not in ("status", "finalize"):
        namespace, rest = rest[1], rest[2:]
    resource, name, sub = [*rest, None, None, None][:3]
    what = f"{resource}/{sub}" if sub else str(resource)
    obj = "/".join(p for p in (namespace, name) if p)
    line = f"k8s {request.method} {what} {obj}".rstrip()
    if request.query.get("dryRun"):
        line += " (dry-run)"
    if request.status >= 400:
        line += f" -> {request.status}"
    return line


def describe_twin_write(method: str, path: str, body: Any) -> str:
    shown = f" {json.dumps(body, sort_keys=True)}" if body else ""
    return f"provisioner {method} {path}{shown}"


# --- one scenario -------------------------------------------------------------------------------


def settings_for(
    base: Mapping[str, Any],
    sim: platform.SimulatedPlatform,
    *,
    workdir: Path,
    prometheus_url: str,
    receiver: standins.EscalationReceiver,
    targets: Sequence[str],
) -> config.Settings:
    """remediator's settings: the operator's config (its safety defaults above all), pointed
    at the platform, the stand-ins and a state file of its own; one run at a time, so that
    the writes come in a fixed order."""
    scenario_config = {
        "playbooks": {"directory": str(workdir)},
        "state": {"path": str(workdir / "state.sqlite")},
        "engine": {"concurrency": 1, "dry_run": False},
        "prometheus": {"url": prometheus_url, "timeout": 5},
        "kubernetes": {"timeout": 5},
        "provisioner": {"timeout": 5, "retries": 1},
        "notify": {"targets": {name: {"url": receiver.target_url(name)} for name in targets}},
        "safety": {"escalation_target": ONCALL},
        "stores": {"enabled": False},
        "logging": {"level": "error"},
    }
    raw = closedloop.merged(closedloop.merged(dict(base), sim.remediator_config()), scenario_config)
    return config.from_mapping(raw, source="<scenario>")


def notify_targets(playbooks: PlaybookSet) -> list[str]:
    """Every literal ``notify.webhook`` target of the playbooks, and on-call."""
    found = {ONCALL}
    for playbook in playbooks.playbooks:
        for _, step in playbook.all_steps():
            target = step.params.get("target") if step.action == "notify.webhook" else None
            if isinstance(target, str) and "{" not in target:
                found.add(target)
    return sorted(found)


def _prepare_platform(sim: platform.SimulatedPlatform, scenario: scenarios.Scenario) -> None:
    for fault, store_id in scenario.faults:
        try:
            sim.inject(fault, store_id)
        except faults.FaultError as e:
            raise ScenarioError(f"fault {fault}: {e}") from e
    cluster = sim.cluster
    for store_id, status in scenario.provisioner.items():
        if status == "absent":
            cluster.twin.stores.pop(store_id, None)
        elif store_id in cluster.twin.stores:
            controllers.set_store_status(cluster, store_id, status)  # type: ignore[arg-type]
        else:
            cluster.twin.add_store(store_id, status=status)  # type: ignore[arg-type]


def _webhook(arrival: scenarios.Arrival, *, status: str, starts_at: float) -> alerts.Webhook:
    payloads = [
        standins.alertmanager_payload(
            labels, status=status, starts_at=starts_at, ends_at=time.time()
        )
        for labels in arrival.alert_labels()
    ]
    combined = {**payloads[0], "alerts": [a for p in payloads for a in p["alerts"]]}
    return alerts.parse_webhook(combined)


async def _set_safety(
    scenario: scenarios.Scenario,
    store: state.StateStore,
    playbooks: PlaybookSet,
    *,
    only_highest: bool,
) -> set[str]:
    """The kill switch and the runs before the scenario; their run ids."""
    now = time.time()
    past: set[str] = set()
    for entry in sorted(scenario.history, key=lambda e: -e.ago):
        finished = now - entry.ago
        (alert,) = _webhook(entry.arrival, status="firing", starts_at=finished - 60).alerts
        admission = planning.plan_admission(
            alert, playbooks, only_highest=only_highest, make_run_id=admitting.RunIds()
        )
        for result in await store.admit([admission], now=finished - 1):
            for run_id in result.created_runs:
                run = await store.claim_run(
                    run_id, now=finished - 1, policy_for=_policies(playbooks), record_start=True
                )
                if run is None:
                    continue
                playbook = playbooks.by_name(run.playbook)
                await store.finish_run(
                    run_id,
                    entry.outcome,
                    now=finished,
                    error=None if entry.outcome is RunStatus.SUCCEEDED else "earlier run",
                    breaker=playbook.safety.breaker if playbook else None,
                )
                past.add(run_id)
    if scenario.paused:
        await store.set_paused(True, by="scenario", reason="the scenario's safety state", now=now)
    return past


def _policies(playbooks: PlaybookSet) -> Callable[[str], SafetyPolicy | None]:
    def policy(name: str) -> SafetyPolicy | None:
        found = playbooks.by_name(name)
        return found.safety if found is not None else None

    return policy


async def _answer_approvals(approvals: envelope.Approvals, answer: str | None) -> None:
    """The operator: approves or rejects each run that waits; without an answer in the
    scenario, rejects it (a scenario must not hang on a question nobody answers)."""
    while True:
        for run_id in approvals.waiting:
            approved = answer == "approve"
            comment = "" if answer else "the scenario gives no approval"
            decision = envelope.ApprovalDecision(approved=approved, by="scenario", comment=comment)
            await approvals.decide(run_id, decision)
        await asyncio.sleep(0.002)


async def _stop(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def _runs(store: state.StateStore) -> list[RunRecord]:
    page = await store.list_runs(RunFilter(), limit=1000)
    return list(page.items)


async def _wait(store: state.StateStore, until: str, seen: set[str]) -> None:
    """Until every run has finished (``finished``) or one not in ``seen`` has started."""
    while True:
        runs = await _runs(store)
        if until == "finished" and all(str(r.status) not in _WAITING for r in runs):
            return
        if until == "started" and any(
            r.run_id not in seen and str(r.status) != str(RunStatus.QUEUED) for r in runs
        ):
            return
        await asyncio.sleep(0.005)


async def play(
    scenario: scenarios.Scenario,
    playbooks: PlaybookSet,
    *,
    base_config: Mapping[str, Any],
    workdir: Path,
) -> scenarios.Observed:
    """Play one scenario and report what happened."""
    settings_platform = platform.PlatformSettings(delays=DELAYS, hang_timeout=1.0)
    messages: list[tuple[str, dict[str, Any]]] = []
    async with contextlib.AsyncExitStack() as stack:
        sim = await stack.enter_async_context(
            platform.run(
                stores=scenario.stores, workdir=workdir / "platform", settings=settings_platform
            )
        )
        _prepare_platform(sim, scenario)
        receiver = await stack.enter_async_context(
            standins.serve_receiver(lambda target, body: messages.append((target, body)))
        )
        try:
            series = SeriesQuery(sim, scenario.series)
        except promql.PromQLError as e:
            raise ScenarioError(f"series: {e}") from e
        prometheus_url = await stack.enter_async_context(serve_series(series))
        settings = settings_for(
            base_config,
            sim,
            workdir=workdir,
            prometheus_url=prometheus_url,
            receiver=receiver,
            targets=notify_targets(playbooks),
        )
        store = state.SqliteStateStore(settings.state.path)
        await store.open()
        stack.push_async_callback(store.close)
        session, kube = await stack.enter_async_context(running.open_clients(settings))
        tokens = running.Tokens(webhook=None, api=None)
        engine = running.build_engine(
            settings=settings,
            actions=registry.builtin(),
            library=reloading.PlaybookLibrary(playbooks),
            metrics=metrics.Metrics(CollectorRegistry()),
            store=store,
            resources=running.build_resources(settings, tokens, session, kube),
            tokens=tokens,
            ready=lambda: True,
        )
        only_highest = settings.playbooks.match == "first"
        past = await _set_safety(scenario, store, playbooks, only_highest=only_highest)
        audit_start = 0
        async for record in store.audit_records():
            audit_start = record.seq
        writes_start = len(sim.kube_writes), len(sim.twin.requests)
        approver = asyncio.get_running_loop().create_task(
            _answer_approvals(engine.approvals, scenario.approval)
        )
        stack.push_async_callback(_stop, approver)
        try:
            async with asyncio.timeout(DEADLINE):
                seen = set(past)
                for arrival in scenario.alerts:
                    if arrival.after != "sent":
                        await _wait(store, arrival.after, seen)
                    seen.update(r.run_id for r in await _runs(store))
                    started = time.time() - 120
                    await engine.admitter.admit(
                        _webhook(arrival, status=arrival.status, starts_at=started)
                    )
                await _wait(store, "finished", seen)
                await engine.scheduler.wait_idle()
                await engine.escalator.drain()
        except TimeoutError:
            unfinished = [
                f"{r.playbook} on {r.target}: {r.status}"
                for r in await _runs(store)
                if str(r.status) in _WAITING
            ]
            raise ScenarioError(
                f"not finished within {DEADLINE:g}s: {', '.join(unfinished) or 'no run'}"
            ) from None
        return await _observe(
            scenario,
            store,
            sim,
            playbooks,
            past=past,
            audit_start=audit_start,
            writes_start=writes_start,
            messages=messages,
        )


async def _observe(
    scenario: scenarios.Scenario,
    store: state.StateStore,
    sim: platform.SimulatedPlatform,
    playbooks: PlaybookSet,
    *,
    past: set[str],
    audit_start: int,
    writes_start: tuple[int, int],
    messages: list[tuple[str, dict[str, Any]]],
) -> scenarios.Observed:
    details = []
    for record in await _runs(store):
        if record.run_id not in past:
            detail = await store.get_run(record.run_id)
            assert detail is not None  # noqa: S101 - listed a moment ago
            details.append(detail)
    # In the order they were queued: the audit chain's, exact also within one delivery.
    details.sort(key=lambda d: d.audit[0].seq if d.audit else 0)
    observed_runs = []
    for detail in details:
        record = detail.run
        playbook = playbooks.by_name(record.playbook)
        choose_steps = {s.name for s in playbook.steps if s.choice} if playbook else set()
        branches = tuple(
            str(step.output.get("branch"))
            for step in detail.steps
            if step.name in choose_steps and step.output.get("branch")
        )
        verification, approval = "none", "none"
        checks: tuple[str, ...] = ()
        for audit in detail.audit:
            event = audit.event
            if event.kind is AuditKind.VERIFICATION_FINISHED:
                verification = str(event.outcome)
                checks = tuple(str(c["check"]) for c in event.details.get("checks", ()))
            elif event.kind is AuditKind.APPROVAL_DECIDED:
                approval = str(event.outcome)
        observed_runs.append(
            scenarios.ObservedRun(
                playbook=record.playbook,
                target=record.target,
                outcome=str(record.status),
                error=record.error,
                branches=branches,
                steps={step.name: str(step.outcome) for step in detail.steps},
                verification=verification,
                checks=checks,
                approval=approval,
            )
        )
    not_run = []
    async for audit in store.audit_records(after_seq=audit_start):
        event = audit.event
        if event.kind in (AuditKind.ALERT_NOT_RUN, AuditKind.RUN_CANCELLED):
            not_run.append(
                {"playbook": event.playbook, "target": event.target, "reason": event.reason}
            )
    kube_start, twin_start = writes_start
    writes = [describe_kube_write(r) for r in sim.kube_writes[kube_start:]]
    writes += [
        describe_twin_write(r.method, r.path, r.body)
        for r in sim.twin.requests[twin_start:]
        if r.method not in ("GET", "HEAD")
    ]
    writes += [f"notify {target}" for target, _ in messages]
    health = {}
    known = {*scenario.stores, *scenario.provisioner, *_expected_stores(scenario)}
    for store_id in sorted(known):
        health[store_id] = _health(sim, store_id)
    return scenarios.Observed(
        runs=tuple(observed_runs),
        not_run=tuple(not_run),
        writes=tuple(writes),
        notifications=tuple(str(body.get("text", "")) for _, body in messages),
        platform=health,
    )


def _expected_stores(scenario: scenarios.Scenario) -> Iterator[str]:
    for names in scenario.expect.get("platform", {}).values():
        yield from names


def _health(sim: platform.SimulatedPlatform, store_id: str) -> tuple[str, str]:
    namespace = stores.names(store_id).namespace
    if sim.emulator.get("v1", "Namespace", namespace) is None and store_id not in sim.twin.stores:
        return "gone", ""
    problems = sim.problems(store_id)
    return ("unhealthy", "; ".join(problems)) if problems else ("healthy", "")


# --- the command --------------------------------------------------------------------------------


def scenario_files(paths: Sequence[Path]) -> list[Path]:
    found: list[Path] = []
    for path in paths:
        if path.is_dir():
            found.extend(sorted(p for p in path.iterdir() if p.suffix in (".yaml", ".yml")))
        else:
            found.append(path)
    return found


def load_scenarios(
    paths: Sequence[Path], playbooks: PlaybookSet
) -> tuple[list[scenarios.ScenarioFile], list[Problem]]:
    platform_faults = {name: fault.platform for name, fault in faults.FAULTS.items()}
    files: list[scenarios.ScenarioFile] = []
    problems: list[Problem] = []
    for path in scenario_files(paths):
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as e:
            problems.append(Problem(source=str(path), path="", message=f"cannot read: {e}"))
            continue
        loaded, found = scenarios.load(
            text, source=str(path), playbooks=playbooks, platform_faults=platform_faults
        )
        files.extend(loaded)
        problems.extend(found)
    if not files and not problems:
        problems.append(Problem(source=", ".join(map(str, paths)), path="", message="no scenarios"))
    return files, problems


async def run_all(
    files: Sequence[scenarios.ScenarioFile],
    playbooks: PlaybookSet,
    *,
    base_config: Mapping[str, Any],
    out: TextIO,
) -> list[Result]:
    results = []
    for scenario_file in files:
        for scenario in scenario_file.scenarios:
            began = time.monotonic()
            with tempfile.TemporaryDirectory(prefix="remediator-scenario-") as workdir:
                try:
                    observed = await play(
                        scenario, playbooks, base_config=base_config, workdir=Path(workdir)
                    )
                    differences = tuple(scenarios.compare(scenario, observed))
                except ScenarioError as e:
                    observed, differences = scenarios.Observed(), (f"could not play: {e}",)
            result = Result(
                scenario=scenario,
                differences=differences,
                observed=observed,
                seconds=time.monotonic() - began,
            )
            results.append(result)
            verdict = "ok  " if result.passed else "FAIL"
            print(
                f"{verdict} {scenario.where} {scenario.name} ({result.seconds:.2f}s)",
                file=out,
                flush=True,
            )
            for line in differences:
                print(f"       {line}", file=out)
    return results


def print_coverage(
    files: Sequence[scenarios.ScenarioFile],
    playbooks: PlaybookSet,
    results: Sequence[Result],
    out: TextIO,
) -> bool:
    """What no scenario exercised, per tested playbook; True if every branch was."""
    runs = [run for result in results for run in result.observed.runs]
    complete = True
    for name in sorted({f.playbook for f in files}):
        playbook = playbooks.by_name(name)
        if playbook is None:
            continue
        found = scenarios.coverage(playbook, runs)
        complete = complete and not found.branches
        branches = ", ".join(found.branches) or "all covered"
        steps = ", ".join(found.steps) or "all covered"
        print(f"coverage {name}: branches not taken: {branches}; steps not run: {steps}", file=out)
    return complete


def compressed(playbooks: PlaybookSet, scale: float) -> PlaybookSet:
    catalog = registry.builtin()
    return dataclasses.replace(
        playbooks,
        playbooks=tuple(scenarios.compress_time(p, scale, catalog) for p in playbooks.playbooks),
    )


def main(
    paths: Sequence[Path],
    *,
    playbooks_dir: Path,
    config_path: Path | None,
    coverage: bool,
    time_scale: float,
    out: TextIO,
    err: TextIO,
) -> int:
    """0 all passed (and with ``coverage``, every branch taken); 1 a scenario failed or a
    branch was never taken; 2 a scenario file, the playbooks or the config is wrong."""
    try:
        base_config = _read_config(config_path)
        settings = config.from_mapping(base_config, source=str(config_path or "<defaults>"))
        playbooks = loading.load_playbooks(
            [playbooks_dir], registry.builtin(), defaults=settings.safety.defaults
        )
    except (ConfigError, PlaybookError) as e:
        for problem in e.problems:
            print(problem, file=err)
        return 2
    files, problems = load_scenarios(paths, playbooks)
    for problem in problems:
        print(problem, file=err)
    if problems:
        return 2
    fast = compressed(playbooks, time_scale)
    results = asyncio.run(run_all(files, fast, base_config=base_config, out=out))
    failed = sum(not r.passed for r in results)
    print(f"{len(results) - failed} passed, {failed} failed", file=out)
    covered = print_coverage(files, playbooks, results, out) if coverage else True
    return 1 if failed or not covered else 0


def _read_config(path: Path | None) -> dict[str, Any]:
    """The operator's config as written (its safety defaults apply to the scenarios too)."""
    if path is None:
        return {}
    config.load(path)  # every problem named, as for `serve`
    raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    return dict(raw)
