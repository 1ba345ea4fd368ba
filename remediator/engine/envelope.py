"""The safety envelope's moving parts: approvals, escalations, and the safety gauges.

The decisions are pure (:mod:`remediator.core.safety`) and taken inside the store's
transactions; this module does what follows from them: waits for an operator's approval,
sends the one escalation a breaker or a storm deserves, and keeps the gauges current.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import structlog

from remediator.adapters import metrics, state
from remediator.core.runs import AuditEvent, AuditKind, Breaker, StepOutcome, StormKey, Takeover
from remediator.engine.actions import notify
from remediator.engine.actions.registry import ActionContext, Resources

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True, kw_only=True)
class ApprovalDecision:
    approved: bool
    by: str
    comment: str = ""


class Approvals:
    """Runs waiting for an operator. Decisions are durable in the store, so an operator may
    decide on any replica: the waiting replica is woken at once when it is the one that was
    asked, and otherwise sees the decision at its next look (``poll_interval``). The first
    decision wins; a run nobody decides on is rejected by ``timeout`` at its deadline."""

    def __init__(self, store: state.StateStore, *, poll_interval: float = 0.5) -> None:
        self._store = store
        self._poll_interval = poll_interval
        self._waiting: dict[str, asyncio.Future[ApprovalDecision]] = {}

    @property
    def waiting(self) -> list[str]:
        """Runs waiting on this replica."""
        return sorted(self._waiting)

    async def wait(self, run_id: str, *, patience: float) -> ApprovalDecision:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[ApprovalDecision] = loop.create_future()
        self._waiting[run_id] = future
        deadline = loop.time() + patience
        try:
            while True:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    timeout = ApprovalDecision(
                        approved=False, by="timeout", comment=f"no decision within {patience:g}s"
                    )
                    if await self._store.decide_approval(run_id, _as_record(timeout)):
                        return timeout
                    # Someone decided in the last moment: that decision stands.
                    return _decision(await self._store.approval_of(run_id)) or timeout
                await asyncio.wait({future}, timeout=min(self._poll_interval, remaining))
                if future.done():
                    return future.result()
                if (found := _decision(await self._store.approval_of(run_id))) is not None:
                    return found
        finally:
            self._waiting.pop(run_id, None)

    async def decide(self, run_id: str, decision: ApprovalDecision) -> bool:
        """False when no run with that id is waiting (unknown, finished, or already decided)."""
        if not await self._store.decide_approval(run_id, _as_record(decision)):
            return False
        future = self._waiting.get(run_id)
        if future is not None and not future.done():
            future.set_result(decision)
        return True


def _as_record(decision: ApprovalDecision) -> dict[str, object]:
    return {"approved": decision.approved, "by": decision.by, "comment": decision.comment}


def _decision(record: Mapping[str, Any] | None) -> ApprovalDecision | None:
    if record is None:
        return None
    return ApprovalDecision(
        approved=bool(record.get("approved")),
        by=str(record.get("by", "")),
        comment=str(record.get("comment", "")),
    )


class Escalator:
    """One message per run outcome that opened breakers, and per started storm, through
    ``safety.escalation_target``."""

    def __init__(
        self,
        *,
        resources: Resources,
        store: state.StateStore,
        metrics: metrics.Metrics,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._resources = resources
        self._store = store
        self._metrics = metrics
        self._clock = clock
        self._tasks: set[asyncio.Task[None]] = set()

    def breakers_opened(self, breakers: Sequence[Breaker]) -> None:
        """One message for the breakers one run's outcome opened: failures on a single target
        open its breaker and the playbook's at once, and that is one event to a human."""
        if not breakers:
            return
        playbook = breakers[0].playbook
        targets = [b.target for b in breakers if b.target]
        scopes = [f"{playbook} on {t}" for t in targets]
        if any(b.target is None for b in breakers):
            scopes.append(f"{playbook} (all targets)")
        self._spawn(
            "breaker_opened",
            playbook=playbook,
            target=targets[0] if targets else None,
            text=f"remediator: circuit breaker open for {' and '.join(scopes)}; no more runs "
            "until it is reset or times out",
        )

    def storm_started(self, storm: StormKey) -> None:
        self._spawn(
            "storm_started",
            playbook=storm.playbook,
            target=None,
            text=f"remediator: storm of {storm.alertname} alerts; per-target runs of "
            f"playbook {storm.playbook} are suspended",
        )

    def run_taken_over(self, takeover: Takeover, *, resumed: bool, reason: str) -> None:
        """One message per takeover: a human should know automation lost track of a step."""
        run = takeover.run
        done = [s.name for s in takeover.steps if s.outcome != StepOutcome.UNKNOWN]
        flying = (
            f"step {takeover.in_flight!r} was in flight (outcome unknown)"
            if takeover.in_flight
            else "no step was in flight"
        )
        ending = "resumed after it" if resumed else "ended interrupted"
        self._spawn(
            "run_taken_over",
            playbook=run.playbook,
            target=run.target,
            text=f"remediator: run {run.run_id} of playbook {run.playbook} on {run.target} was "
            f"taken over from replica {takeover.previous_owner or '(none)'}, which stopped "
            f"renewing its lease; {flying}; done: {', '.join(done) or 'nothing'}; "
            f"{ending} because {reason}",
            run_id=run.run_id,
        )

    def _spawn(
        self,
        kind: str,
        *,
        playbook: str,
        target: str | None,
        text: str,
        run_id: str | None = None,
    ) -> None:
        task = asyncio.create_task(
            self._send(kind, playbook=playbook, target=target, text=text, run_id=run_id)
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _send(
        self, kind: str, *, playbook: str, target: str | None, text: str, run_id: str | None
    ) -> None:
        name = self._resources.settings.safety.escalation_target
        outcome, error = "sent", None
        if name is None:
            outcome, error = "not_configured", "safety.escalation_target is not set"
        else:
            context = ActionContext(
                resources=self._resources,
                dry_run=False,
                # The run it is about, if any: the message's "run" field names it for on-call.
                run_id=run_id or "-",
                playbook=playbook,
                target=target or "-",
                deadline=asyncio.get_running_loop().time() + 30,
                log=log,
            )
            params = notify.NotifyParams(target=name, text=text, severity="critical")
            try:
                await notify.NotifyWebhookAction().run(params, context)
            except Exception as e:  # an escalation failure is recorded, never raised
                outcome, error = "failed", str(e)[:256]
        self._metrics.escalations.labels(kind=kind, outcome=outcome).inc()
        await self._store.append_audit(
            [
                AuditEvent(
                    kind=AuditKind.ESCALATION_SENT,
                    run_id=run_id,
                    playbook=playbook,
                    target=target,
                    outcome=outcome,
                    reason=kind,
                    details={"text": text, "target": name, "error": error},
                )
            ],
            now=self._clock(),
        )

    async def drain(self) -> None:
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)


async def refresh_gauges(
    store: state.StateStore,
    metric_set: metrics.Metrics,
    approvals: Approvals,
    *,
    now: float,
) -> None:
    status = await store.safety_status(now=now)
    metric_set.paused.set(1 if status.paused else 0)
    since = status.paused.get("since") if status.paused else None
    metric_set.paused_since.set(float(since) if isinstance(since, int | float) else 0.0)
    metric_set.breakers_open.clear()
    for breaker in status.breakers:
        metric_set.breakers_open.labels(playbook=breaker.playbook).inc()
    metric_set.storm_active.clear()
    for storm in status.storms:
        metric_set.storm_active.labels(playbook=storm.playbook, alertname=storm.alertname).set(1)
    metric_set.awaiting_approval.set(len(approvals.waiting))


async def watch_gauges(
    store: state.StateStore,
    metric_set: metrics.Metrics,
    approvals: Approvals,
    *,
    interval: float,
    clock: Callable[[], float] = time.time,
) -> None:
    """Background task: breakers and storms expire with time, not only with new alerts."""
    while True:
        try:
            await refresh_gauges(store, metric_set, approvals, now=clock())
        except state.StateError:
            log.exception("safety_gauges_refresh_failed")
        await asyncio.sleep(interval)
