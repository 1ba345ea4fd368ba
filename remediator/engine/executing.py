"""Execute one run: its steps through actions, its verification, its escalation.

For each step: evaluate ``when``, render params, build the typed params, honour dry-run, call
the action under a timeout with retries and jittered backoff, record the step and its audit
event. Then verify until a deadline; a failed or unverified run runs ``on_failure``.
Errors of one step never escape the run: they become outcomes, audited and counted.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import structlog

from remediator.adapters import metrics, state
from remediator.core import choosing, params, planning, redaction, safety, templating
from remediator.core.errors import PermanentStepError, StepError, TemplateError, TemporaryStepError
from remediator.core.playbooks import Phase, Playbook, PlaybookSet, Step
from remediator.core.runs import (
    AuditEvent,
    AuditKind,
    RunRecord,
    RunStatus,
    StepOutcome,
    StepRecord,
)
from remediator.core.safety import SafetyPolicy
from remediator.engine import envelope, scheduling
from remediator.engine.actions.registry import ActionContext, ActionRegistry, Resources

log = structlog.get_logger(__name__)


class RunLostError(Exception):
    """This replica no longer owns the run (another one took it over, or the store is gone);
    it stops here without writing anything more. Whoever owns it now records the rest."""


class RunHaltedError(Exception):
    """The whole run stops here, with this status (paused by the kill switch, rejected)."""

    def __init__(self, status: RunStatus, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass(slots=True, kw_only=True)
class StepResult:
    outcome: StepOutcome
    output: Mapping[str, Any] = field(default_factory=dict)
    error: str | None = None
    attempts: int = 0

    @property
    def ok(self) -> bool:
        return self.outcome in (StepOutcome.SUCCEEDED, StepOutcome.SKIPPED, StepOutcome.DRY_RUN)


@dataclass(slots=True, kw_only=True)
class _RunState:
    """What one run accumulates while it executes."""

    run: RunRecord
    playbook: Playbook
    context: dict[str, Any]
    index: int = 0
    unrecorded: tuple[StepRecord, AuditEvent] | None = None
    """The last step's record, written with the run's outcome in one transaction."""

    def event(self, kind: AuditKind, **fields: Any) -> AuditEvent:
        return AuditEvent(
            kind=kind,
            run_id=self.run.run_id,
            fingerprint=self.run.fingerprint,
            alertname=self.run.alertname,
            playbook=self.run.playbook,
            target=self.run.target,
            **fields,
        )


def _new_run_state(run: RunRecord, playbook: Playbook, past: tuple[StepRecord, ...]) -> _RunState:
    return _RunState(
        run=run,
        playbook=playbook,
        context={
            "alert": dict(run.alert),
            "target": run.target,
            "playbook": playbook.name,
            "run": {"id": run.run_id, "dry_run": run.dry_run},
            # A resumed run sees what its steps recorded (redacted, summarized outputs).
            "steps": {r.name: {"outcome": str(r.outcome), "output": r.output} for r in past},
        },
        index=max((r.index for r in past), default=-1) + 1,
    )


class Executor:
    def __init__(
        self,
        *,
        registry: ActionRegistry,
        store: state.StateStore,
        resources: Resources,
        metrics: metrics.Metrics,
        playbooks: Callable[[], PlaybookSet],
        clock: Callable[[], float] = time.time,
        jitter: Callable[[], float] = random.random,
        approvals: envelope.Approvals | None = None,
        escalator: envelope.Escalator | None = None,
        owner: Callable[[], str | None] = lambda: None,
        on_store_failure: Callable[[str], None] = lambda run_id: None,
    ) -> None:
        self._owner = owner
        self._on_store_failure = on_store_failure
        self._resuming: dict[str, tuple[RunRecord, int, tuple[StepRecord, ...]]] = {}
        self._approvals = approvals
        self._escalator = escalator
        self._registry = registry
        self._store = store
        self._resources = resources
        self._metrics = metrics
        self._playbooks = playbooks
        self._clock = clock
        self._jitter = jitter

    def prepare_resume(
        self, run: RunRecord, *, next_step: int, steps: tuple[StepRecord, ...]
    ) -> None:
        """A run this replica took over: the next :meth:`execute` of it continues at
        ``next_step`` of its playbook's steps, with ``steps`` (as recorded) as its past."""
        self._resuming[run.run_id] = (run, next_step, steps)

    async def execute(self, run_id: str) -> RunStatus | str | None:
        """Claim and run one queued run (or resume a taken-over one); None if it was no longer
        queued (e.g. cancelled), a safeguard refused its start (the store audits that), or the
        run was lost to another replica; :data:`scheduling.DEFERRED` if it cannot start yet
        (its target is busy on another replica, or the store is away)."""
        resuming = self._resuming.pop(run_id, None)
        if resuming is not None:
            run, start, past = resuming
        else:
            try:
                claimed = await self._store.claim_run(
                    run_id,
                    now=self._clock(),
                    policy_for=self._policy_of,
                    record_start=True,
                    owner=self._owner(),
                )
            except state.TargetBusyError:
                return scheduling.DEFERRED
            except state.StateError:
                log.warning("run_claim_failed", run_id=run_id, exc_info=True)
                return scheduling.DEFERRED
            if claimed is None:
                return None
            run, start, past = claimed, 0, ()
        try:
            return await self._execute_claimed(run, start=start, past=past)
        except RunLostError as e:
            log.warning("run_lost", run_id=run.run_id, reason=str(e))
            return None
        except state.StateError:
            # Nothing more about this run can be recorded here; once the store answers again
            # the run is handed over (in-flight step unknown) like one whose replica died.
            log.exception("run_abandoned_store_failed", run_id=run.run_id)
            self._on_store_failure(run.run_id)
            return None

    async def _execute_claimed(
        self, run: RunRecord, *, start: int, past: tuple[StepRecord, ...]
    ) -> RunStatus:
        with structlog.contextvars.bound_contextvars(
            run_id=run.run_id,
            playbook=run.playbook,
            target=run.target,
            fingerprint=run.fingerprint,
        ):
            playbook = self._playbooks().by_name(run.playbook)
            if playbook is None:
                return await self._finish(
                    run,
                    RunStatus.FAILED,
                    started=self._clock(),
                    error="playbook is no longer loaded",
                )
            started = self._clock()
            run_state = _new_run_state(run, playbook, past)
            try:
                status, error = await self._execute(run_state, start=start)
            except asyncio.CancelledError:
                # Shutdown after the grace period: the run is recorded as interrupted, then
                # the cancellation continues so the daemon can exit.
                await self._finish(
                    run,
                    RunStatus.INTERRUPTED,
                    started=started,
                    error="interrupted by shutdown",
                    unrecorded=run_state.unrecorded,
                )
                raise
            except RunLostError:
                raise
            except Exception as e:
                # An outage of the store is the caller's to handle (hand the run over). A bug
                # (say, an action output the store cannot write) must end this run as failed;
                # escaping would leave it "running" in the store until a restart.
                if isinstance(e, state.StateError) and not isinstance(e, state.UnstorableError):
                    raise
                log.exception("run_crashed")
                reason = redaction.redact_text(str(e), secrets=self._resources.secrets)
                status, error = (
                    RunStatus.FAILED,
                    f"{type(e).__name__}: {redaction.truncate(reason)}",
                )
            return await self._finish(
                run, status, started=started, error=error, unrecorded=run_state.unrecorded
            )

    def _policy_of(self, playbook: str) -> SafetyPolicy | None:
        found = self._playbooks().by_name(playbook)
        return found.safety if found is not None else None

    async def _execute(self, run_state: _RunState, *, start: int) -> tuple[RunStatus, str | None]:
        playbook = run_state.playbook
        # When the outcome follows the last step at once (no verify, no on_failure), that
        # step's record is written with the outcome: one transaction fewer per run, and a
        # replica dying in between leaves the step as it would before its own write.
        ends_run = playbook.verify is None and not playbook.on_failure
        remaining = playbook.steps[start:]
        status, error = RunStatus.SUCCEEDED, None
        try:
            for number, step in enumerate(remaining, start=1):
                last = ends_run and number == len(remaining)
                result = await self._step(run_state, Phase.STEPS, step, with_outcome=last)
                if not result.ok:
                    status, error = RunStatus.FAILED, f"step {step.name!r}: {result.error}"
                    break
        except RunHaltedError as halt:
            # Paused or rejected: an operator's decision, so no verification and no escalation.
            return halt.status, str(halt)
        try:
            verified = playbook.verify is None or (
                status is RunStatus.SUCCEEDED and await self._verify(run_state)
            )
        except RunHaltedError as halt:  # a mutating check (http.request POST) hit the gate
            return halt.status, str(halt)
        if status is RunStatus.SUCCEEDED and not verified:
            status, error = RunStatus.UNVERIFIED, "verification did not hold by its deadline"
        if status is not RunStatus.SUCCEEDED and playbook.on_failure:
            run_state.context["run"] = {
                **run_state.context["run"],
                "status": str(status),
                "error": error,
            }
            try:
                for step in playbook.on_failure:
                    await self._step(run_state, Phase.ON_FAILURE, step)
            except RunHaltedError as halt:
                # The run had already failed: that outcome stands (the breaker must count it);
                # why its on_failure steps stopped becomes part of its error.
                error = f"{error}; on_failure stopped: {halt}"
        return status, error

    async def _verify(self, run_state: _RunState) -> bool:
        verify = run_state.playbook.verify
        assert verify is not None  # noqa: S101 - caller checked
        loop = asyncio.get_running_loop()
        deadline = loop.time() + verify.timeout
        rounds = 0
        while True:
            rounds += 1
            last_round = loop.time() + verify.interval >= deadline
            holding = []
            for check in verify.checks:
                remaining = max(0.001, deadline - loop.time())
                result = await self._step(
                    run_state,
                    Phase.VERIFY,
                    check,
                    time_limit=min(check.timeout, remaining),
                    record=False,
                    retry=False,
                )
                holds = result.ok and self._expectation_holds(check, result, run_state)
                holding.append(
                    {
                        "check": check.name,
                        "holds": holds,
                        "error": result.error,
                        # Audited like a step's output, so masked like one.
                        "output": redaction.redact(
                            planning.summarize(result.output), secrets=self._resources.secrets
                        ),
                    }
                )
                if not holds and not last_round:
                    break
            passed = all(h["holds"] for h in holding) and len(holding) == len(verify.checks)
            if passed or last_round:
                outcome = "passed" if passed else "failed"
                await self._store.append_audit(
                    [
                        run_state.event(
                            AuditKind.VERIFICATION_FINISHED,
                            outcome=outcome,
                            details={"rounds": rounds, "checks": holding},
                        )
                    ],
                    now=self._clock(),
                )
                return passed
            await asyncio.sleep(min(verify.interval, max(0.0, deadline - loop.time())))

    def _expectation_holds(self, check: Step, result: StepResult, run_state: _RunState) -> bool:
        if check.expect is None:
            return True
        try:
            value = templating.evaluate(
                check.expect, {**run_state.context, "output": result.output}
            )
        except TemplateError as e:
            result.error = f"expect: {e}"
            return False
        if not value:
            result.error = f"expectation not met: {check.expect}"
        return bool(value)

    async def _step(
        self,
        run_state: _RunState,
        phase: Phase,
        step: Step,
        *,
        time_limit: float | None = None,
        record: bool = True,
        retry: bool = True,
        with_outcome: bool = False,
    ) -> StepResult:
        started = self._clock()
        loop = asyncio.get_running_loop()
        begun = loop.time()
        rendered: Mapping[str, Any] = {}
        with structlog.contextvars.bound_contextvars(step=step.name, action=step.action):
            try:
                if not choosing.admitted(run_state.playbook, step, run_state.context["steps"]) or (
                    step.when is not None and not templating.evaluate(step.when, run_state.context)
                ):
                    result = StepResult(outcome=StepOutcome.SKIPPED)
                elif step.choice is not None:
                    picked = choosing.choose(step.choice, run_state.context)
                    result = StepResult(outcome=StepOutcome.SUCCEEDED, output=picked, attempts=1)
                else:
                    action = self._registry.get(step.action)
                    rendered = templating.render_params(dict(step.params), run_state.context)
                    typed = params.build(action.spec.params, rendered)
                    rendered = params.to_json(typed)
                    refused = await self._gate(
                        run_state, step, typed, rendered, phase=phase, mark=record, begun=started
                    )
                    result = refused or await self._perform(
                        run_state, step, typed, time_limit=time_limit or step.timeout, retry=retry
                    )
            except (TemplateError, PermanentStepError) as e:
                result = StepResult(outcome=StepOutcome.FAILED, error=str(e), attempts=0)
            duration = loop.time() - begun
            secrets = self._resources.secrets
            result.error = (
                redaction.redact_text(result.error, secrets=secrets) if result.error else None
            )
            run_state.context["steps"][step.name] = {
                "outcome": str(result.outcome),
                "output": result.output,
            }
            self._metrics.step_finished(
                playbook=run_state.playbook.name,
                action=step.action,
                outcome=str(result.outcome),
                duration=duration,
            )
            if record:
                await self._record_step(
                    run_state,
                    phase,
                    step,
                    result,
                    rendered,
                    started,
                    duration,
                    with_outcome=with_outcome,
                )
            # A recorded step is logged once already, as its audit record (at info).
            (log.debug if record else log.info)(
                "step_finished",
                phase=str(phase),
                outcome=str(result.outcome),
                error=result.error,
                duration=round(duration, 3),
            )
        return result

    async def _gate(
        self,
        run_state: _RunState,
        step: Step,
        typed: Any,
        rendered: Mapping[str, Any],
        *,
        phase: Phase,
        mark: bool,
        begun: float,
    ) -> StepResult | None:
        """The envelope's last word right before a step acts; a result when it must not.

        Raises :class:`RunHaltedError` when the whole run must stop (kill switch, rejection),
        :class:`RunLostError` when another replica owns the run now. A recorded mutating step
        that may act is marked in flight first (``mark``), so that a takeover knows it began.
        """
        spec = self._registry.get(step.action).spec
        mutating = spec.is_mutating(typed)
        if not mutating:
            return None
        policy = run_state.playbook.safety
        destructive = spec.is_destructive(typed)
        if destructive and not policy.allow_destructive:
            return StepResult(
                outcome=StepOutcome.FAILED,
                error=f"{step.action} is destructive and the playbook does not allow it",
            )
        if not run_state.run.dry_run and safety.needs_approval(
            policy, mutating=mutating, destructive=destructive
        ):
            if await self._store.is_paused():
                raise RunHaltedError(RunStatus.INTERRUPTED, "remediation paused (kill switch)")
            decision = await self._await_approval(run_state, step, rendered, policy)
            if not decision.approved:
                comment = f": {decision.comment}" if decision.comment else ""
                raise RunHaltedError(
                    RunStatus.REJECTED, f"step {step.name!r} rejected by {decision.by}{comment}"
                )
        # Also after a long approval wait: an approval given after the kill switch was thrown
        # must not override it.
        flying = (
            {
                "index": run_state.index,
                "phase": str(phase),
                "name": step.name,
                "action": step.action,
                "started_at": begun,
                "params": redaction.redact(dict(rendered), secrets=self._resources.secrets),
            }
            if mark
            else None
        )
        verdict = await self._store.begin_step(run_state.run.run_id, flying, owner=self._owner())
        if verdict == "paused":
            raise RunHaltedError(RunStatus.INTERRUPTED, "remediation paused (kill switch)")
        if verdict == "lost":
            raise RunLostError("another replica owns this run now")
        return None

    async def _await_approval(
        self,
        run_state: _RunState,
        step: Step,
        rendered: Mapping[str, Any],
        policy: SafetyPolicy,
    ) -> envelope.ApprovalDecision:
        run_id = run_state.run.run_id
        safe_params = redaction.redact(dict(rendered), secrets=self._resources.secrets)
        await self._store.set_run_status(
            run_id,
            RunStatus.AWAITING_APPROVAL,
            now=self._clock(),
            events=[
                run_state.event(
                    AuditKind.APPROVAL_REQUESTED,
                    outcome="awaiting_approval",
                    details={
                        "step": step.name,
                        "action": step.action,
                        "params": safe_params,
                        "timeout": policy.approval_timeout,
                    },
                )
            ],
        )
        if self._approvals is None:
            decision = envelope.ApprovalDecision(
                approved=False, by="remediator", comment="approvals are not enabled"
            )
        else:
            self._metrics.awaiting_approval.inc()
            try:
                decision = await self._approvals.wait(run_id, patience=policy.approval_timeout)
            finally:
                self._metrics.awaiting_approval.dec()
        await self._store.set_run_status(
            run_id,
            RunStatus.RUNNING,
            now=self._clock(),
            events=[
                run_state.event(
                    AuditKind.APPROVAL_DECIDED,
                    outcome="approved" if decision.approved else "rejected",
                    reason=decision.comment or None,
                    details={"step": step.name, "by": decision.by},
                )
            ],
        )
        return decision

    async def _perform(
        self, run_state: _RunState, step: Step, typed: Any, *, time_limit: float, retry: bool
    ) -> StepResult:
        action = self._registry.get(step.action)
        spec = action.spec
        dry_run = run_state.run.dry_run
        if dry_run and spec.is_mutating(typed) and not spec.supports_dry_run:
            return StepResult(outcome=StepOutcome.DRY_RUN, output={"would": action.preview(typed)})
        loop = asyncio.get_running_loop()
        attempts = step.retry.attempts if retry else 1
        for attempt in range(1, attempts + 1):
            context = ActionContext(
                resources=self._resources,
                dry_run=dry_run,
                run_id=run_state.run.run_id,
                playbook=run_state.playbook.name,
                target=run_state.run.target,
                deadline=loop.time() + time_limit,
                log=log,
            )
            delay: float | None = None
            try:
                async with asyncio.timeout(time_limit):
                    output = await action.run(typed, context)
                outcome = (
                    StepOutcome.DRY_RUN
                    if dry_run and spec.is_mutating(typed)
                    else StepOutcome.SUCCEEDED
                )
                return StepResult(outcome=outcome, output=dict(output), attempts=attempt)
            except TimeoutError:
                error, outcome = f"timed out after {time_limit:g}s", StepOutcome.TIMED_OUT
            except TemporaryStepError as e:
                error, outcome, delay = str(e), StepOutcome.FAILED, e.delay
            except StepError as e:
                return StepResult(outcome=StepOutcome.FAILED, error=str(e), attempts=attempt)
            except Exception as e:  # a bug in an action must fail the step, not the daemon
                log.exception("action_crashed")
                return StepResult(
                    outcome=StepOutcome.FAILED,
                    error=f"{type(e).__name__}: {redaction.truncate(str(e))}",
                    attempts=attempt,
                )
            if attempt == attempts:
                return StepResult(outcome=outcome, error=error, attempts=attempt)
            pause = (
                delay
                if delay is not None
                else planning.backoff_delay(step.retry, attempt, jitter=self._jitter())
            )
            log.info(
                "step_retrying",
                attempt=attempt,
                error=redaction.redact_text(error, secrets=self._resources.secrets),
                delay=round(pause, 3),
            )
            await asyncio.sleep(pause)
        raise AssertionError("unreachable: the loop returns on its last attempt")

    async def _record_step(
        self,
        run_state: _RunState,
        phase: Phase,
        step: Step,
        result: StepResult,
        rendered: Mapping[str, Any],
        started: float,
        duration: float,
        *,
        with_outcome: bool = False,
    ) -> None:
        secrets = self._resources.secrets
        safe_params = redaction.redact(dict(rendered), secrets=secrets)
        safe_output = redaction.redact(planning.summarize(result.output), secrets=secrets)
        record = StepRecord(
            run_id=run_state.run.run_id,
            index=run_state.index,
            phase=str(phase),
            name=step.name,
            action=step.action,
            outcome=result.outcome,
            params=safe_params,
            attempts=result.attempts,
            duration=duration,
            started_at=started,
            error=result.error,
            output=safe_output,
        )
        run_state.index += 1
        event = run_state.event(
            AuditKind.STEP_FINISHED,
            outcome=str(result.outcome),
            reason=result.error,
            details={
                "step": step.name,
                "phase": str(phase),
                "action": step.action,
                "params": safe_params,
                "attempts": result.attempts,
                "duration": round(duration, 3),
                "output": safe_output,
            },
        )
        if with_outcome:
            run_state.unrecorded = (record, event)
            return
        try:
            await self._store.record_step(record, events=[event], owner=self._owner())
        except state.RunLostError as e:
            raise RunLostError(str(e)) from e

    async def _finish(
        self,
        run: RunRecord,
        status: RunStatus,
        *,
        started: float,
        error: str | None,
        unrecorded: tuple[StepRecord, AuditEvent] | None = None,
    ) -> RunStatus:
        now = self._clock()
        event = AuditEvent(
            kind=AuditKind.RUN_FINISHED,
            run_id=run.run_id,
            fingerprint=run.fingerprint,
            alertname=run.alertname,
            playbook=run.playbook,
            target=run.target,
            outcome=str(status),
            reason=error,
            details={"duration": round(now - started, 3)},
        )
        playbook = self._playbooks().by_name(run.playbook)
        step, events = None, [event]
        if unrecorded is not None:
            step, step_event = unrecorded
            events = [step_event, event]
        try:
            opened = await self._store.finish_run(
                run.run_id,
                status,
                now=now,
                error=error,
                events=events,
                breaker=playbook.safety.breaker if playbook is not None else None,
                owner=self._owner(),
                step=step,
            )
        except state.RunLostError as e:
            raise RunLostError(str(e)) from e
        if self._escalator is not None:
            self._escalator.breakers_opened(opened)
        self._metrics.run_finished(
            playbook=run.playbook, outcome=str(status), duration=now - started
        )
        # Its audit record, just appended, is the info line.
        log.debug("run_finished", outcome=str(status), error=error)
        return status
