"""Run leases: each replica owns the runs it admitted or took, and renews one lease on all of
them; runs of a replica that stops renewing are taken over by whichever replica looks next.

The lease is the replica's row in the store (``heartbeat``): renewed every ``renew_interval``,
valid for ``lease_duration``. Every ``renew_interval`` each replica also adopts the orphans:
queued runs simply change hands; started runs are *taken over*: the step in flight is recorded
``unknown``, the resume rule (:mod:`remediator.core.resuming`) decides between resuming after it
and ending the run ``interrupted``, one escalation names the run, the target, the step in flight
and what was done, and the breaker counts the takeover as a failure.

Fencing: a replica acts on a run only while it owns it. Before every mutating step the executor
asks the store (``begin_step``), and writes of steps and outcomes check the owner, so a replica
that was presumed dead and comes back stops at its next step instead of acting twice. A replica
that cannot renew its lease for a whole ``lease_duration`` gives up everything it holds and
comes back as a new incarnation, so that its old runs are adopted (perhaps by itself) in the
same way as a dead replica's.
"""

from __future__ import annotations

import asyncio
import secrets
import socket
import time
from collections.abc import Callable

import structlog

from remediator.adapters import metrics, state
from remediator.config import HaSettings
from remediator.core import resuming
from remediator.core.playbooks import PlaybookSet, Step
from remediator.core.runs import Adoption, AuditEvent, AuditKind, RunStatus, Takeover
from remediator.engine import envelope, executing, scheduling
from remediator.engine.actions.registry import ActionRegistry

log = structlog.get_logger(__name__)


def default_replica_id() -> str:
    """Host name (the pod's name in Kubernetes) plus a suffix unique to this process."""
    return f"{socket.gethostname()}-{secrets.token_hex(3)}"


class LeaseKeeper:
    def __init__(
        self,
        *,
        store: state.StateStore,
        scheduler: scheduling.Scheduler,
        executor: executing.Executor,
        escalator: envelope.Escalator,
        playbooks: Callable[[], PlaybookSet],
        actions: ActionRegistry,
        metrics: metrics.Metrics,
        settings: HaSettings,
        exclusive: bool,
        replica_id: str | None = None,
        clock: Callable[[], float] = time.time,
        discovered: Callable[[], int | None] = lambda: None,
    ) -> None:
        """``exclusive``: no other replica can share this state (SQLite), so at start-up every
        run another process left unfinished is an orphan, lease or not. ``discovered``: the
        targets this replica's discovery knows (None unless it leads), reported with the
        lease so that followers size storms alike."""
        self._store = store
        self._scheduler = scheduler
        self._executor = executor
        self._escalator = escalator
        self._playbooks = playbooks
        self._actions = actions
        self._metrics = metrics
        self._settings = settings
        self._exclusive = exclusive
        self._base_id = replica_id or settings.replica_id or default_replica_id()
        self._incarnation = 0
        self._clock = clock
        self._host = socket.gethostname()
        self._renewed_at: float | None = None
        self._disowned: set[str] = set()
        self._discovered = discovered
        self.fleet_known_targets: int | None = None
        """The most targets a live replica's discovery reported at the last renewal."""

    @property
    def replica_id(self) -> str:
        """This replica's name in the store; a new incarnation after a lost lease."""
        return self._base_id if not self._incarnation else f"{self._base_id}.{self._incarnation}"

    @property
    def healthy(self) -> bool:
        """The lease was renewed within its duration: this replica may act on its runs."""
        renewed = self._renewed_at
        return renewed is not None and self._clock() - renewed < self._settings.lease_duration

    def store_failed(self, run_id: str) -> None:
        """A run stopped because the store failed under it: hand it over once it answers."""
        self._disowned.add(run_id)

    async def start(self) -> Adoption:
        """Take the lease and whatever was left to adopt; before the listener opens."""
        await self._renew()
        return await self._adopt(everyone_else=self._exclusive, starting=True)

    async def run(self) -> None:
        """Background task: renew, give up what cannot be recorded, adopt orphans."""
        while True:
            await asyncio.sleep(self._settings.renew_interval)
            try:
                await self._renew()
                for run_id in sorted(self._disowned):
                    await self._store.disown(run_id, self.replica_id)
                    self._disowned.discard(run_id)
                await self._adopt(everyone_else=False)
            except state.StateError:
                log.warning("lease_renewal_failed", replica=self.replica_id, exc_info=True)
                self._check_lease()

    async def stop(self) -> None:
        """On a clean shutdown, after the drain: queued runs go to the other replicas now."""
        try:
            released = await self._store.release_replica(self.replica_id)
        except state.StateError:
            log.warning("lease_release_failed", replica=self.replica_id, exc_info=True)
            return
        log.info("lease_released", replica=self.replica_id, queued_runs=released)

    async def _renew(self) -> None:
        now = self._clock()
        self.fleet_known_targets = await self._store.heartbeat(
            self.replica_id,
            host=self._host,
            now=now,
            ttl=self._settings.lease_duration,
            known_targets=self._discovered(),
        )
        self._renewed_at = now
        self._metrics.lease_ok.set(1)

    def _check_lease(self) -> None:
        if self._renewed_at is None or self.healthy:
            return
        # Other replicas may own our runs by now. Stop everything and start over as someone
        # new, so that what nobody took yet is adopted like any dead replica's runs.
        log.error("lease_lost", replica=self.replica_id)
        self._metrics.lease_ok.set(0)
        self._scheduler.abandon()
        self._disowned.clear()
        self._incarnation += 1
        self._renewed_at = None

    async def _adopt(self, *, everyone_else: bool, starting: bool = False) -> Adoption:
        adoption = await self._store.adopt_orphans(
            self.replica_id, now=self._clock(), everyone_else=everyone_else, starting=starting
        )
        if adoption.queued:
            log.info("runs_adopted", count=len(adoption.queued))
            self._scheduler.restore(
                scheduling.QueuedRun(run_id=r.run_id, target=r.target, playbook=r.playbook)
                for r in adoption.queued
            )
        for takeover in adoption.taken_over:
            await self._take_over(takeover)
        return adoption

    async def _take_over(self, takeover: Takeover) -> None:
        run = takeover.run
        playbook = self._playbooks().by_name(run.playbook)
        if playbook is None:
            plan = resuming.ResumePlan(
                resume=False, next_step=0, reason="its playbook is no longer loaded"
            )
        else:
            plan = resuming.plan_resume(playbook, takeover.steps, read_only=self._read_only)
        log.warning(
            "run_taken_over",
            run_id=run.run_id,
            previous_owner=takeover.previous_owner,
            step_in_flight=takeover.in_flight,
            resume=plan.resume,
            reason=plan.reason,
        )
        self._escalator.run_taken_over(takeover, resumed=plan.resume, reason=plan.reason)
        self._metrics.takeovers.labels(outcome="resumed" if plan.resume else "interrupted").inc()
        event = AuditEvent(
            kind=AuditKind.RUN_RESUMED if plan.resume else AuditKind.RUN_INTERRUPTED,
            run_id=run.run_id,
            fingerprint=run.fingerprint,
            alertname=run.alertname,
            playbook=run.playbook,
            target=run.target,
            outcome="resumed" if plan.resume else str(RunStatus.INTERRUPTED),
            reason=plan.reason,
            details={
                "from_step": _step_name(playbook.steps if playbook else (), plan.next_step),
                "previous_owner": takeover.previous_owner,
            },
        )
        if plan.resume:
            await self._store.append_audit([event], now=self._clock())
            self._executor.prepare_resume(run, next_step=plan.next_step, steps=takeover.steps)
            self._scheduler.restore(
                [scheduling.QueuedRun(run_id=run.run_id, target=run.target, playbook=run.playbook)]
            )
            return
        opened = await self._store.finish_run(
            run.run_id,
            RunStatus.INTERRUPTED,
            now=self._clock(),
            error=f"taken over from replica {takeover.previous_owner}: {plan.reason}",
            events=[event],
            breaker=playbook.safety.breaker if playbook is not None else None,
            owner=self.replica_id,
        )
        self._escalator.breakers_opened(opened)

    def _read_only(self, step: Step) -> bool:
        spec = self._actions.get(step.action).spec
        return not spec.mutating and spec.mutating_when is None


def _step_name(steps: tuple[Step, ...], index: int) -> str:
    return steps[index].name if index < len(steps) else "verify"
