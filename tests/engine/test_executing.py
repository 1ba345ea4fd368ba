"""The executor on a real SQLite store with test actions: steps, retries, verify, audit, metrics."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence

import pytest
import structlog

from remediator.core import reporting
from remediator.core.actions import ActionSpec
from remediator.core.playbooks import PlaybookSet
from remediator.core.runs import AuditKind, AuditRecord, RunStatus, StepOutcome
from remediator.engine.actions.registry import ActionContext, Output
from tests.engine.conftest import (
    WAIT,
    EchoParams,
    Engine,
    playbook_yaml,
    store_labels,
    webhook,
)

SECRET = "tok-3f9a7c21e5d4"


def kinds(records: Sequence[AuditRecord]) -> list[str]:
    return [str(record.event.kind) for record in records]


async def run_one(
    engine: Engine, playbooks: PlaybookSet, *, dry_run: bool = False, secrets: tuple[str, ...] = ()
) -> tuple[str, RunStatus | str | None]:
    (run_id,) = await engine.queue(playbooks, dry_run=dry_run)
    status = await engine.executor(playbooks, secrets=secrets).execute(run_id)
    return run_id, status


async def test_success_records_steps_and_audit_in_order(engine: Engine) -> None:
    playbooks = engine.playbooks(
        playbook_yaml(
            "greet",
            """
            steps:
              - name: first
                action: test.echo
                params:
                  value: "store {{ alert.labels.store_id }} on {{ target }}"
              - name: second
                action: test.echo
                params:
                  value: "{{ steps.first.output.value }}!"
                  extra: {seen: "{{ steps.first.outcome }}"}
            """,
        )
    )

    run_id, status = await run_one(engine, playbooks)

    assert status is RunStatus.SUCCEEDED
    detail = await engine.detail(run_id)
    assert detail.run.status is RunStatus.SUCCEEDED
    assert detail.run.error is None
    assert [(s.index, s.phase, s.name, s.outcome, dict(s.params)) for s in detail.steps] == [
        (
            0,
            "steps",
            "first",
            StepOutcome.SUCCEEDED,
            {"value": "store s1 on store-s1", "extra": {}},
        ),
        (
            1,
            "steps",
            "second",
            StepOutcome.SUCCEEDED,
            {"value": "store s1 on store-s1!", "extra": {"seen": "succeeded"}},
        ),
    ]
    assert [dict(s.output) for s in detail.steps] == [
        {"value": "store s1 on store-s1"},
        {"value": "store s1 on store-s1!", "seen": "succeeded"},
    ]
    assert [s.attempts for s in detail.steps] == [1, 1]
    assert kinds(detail.audit) == [
        "run_queued",
        "run_started",
        "step_finished",
        "step_finished",
        "run_finished",
    ]
    first, second = (r.event for r in detail.audit[2:4])
    assert (first.details["step"], first.outcome) == ("first", "succeeded")
    assert second.details["params"] == {
        "value": "store s1 on store-s1!",
        "extra": {"seen": "succeeded"},
    }
    finished = detail.audit[-1].event
    assert (finished.outcome, finished.playbook, finished.target) == (
        "succeeded",
        "greet",
        "store-s1",
    )
    # The outcome follows the last step at once, so that step is written with it: one
    # transaction, one time for both records.
    assert detail.audit[-2].time == detail.audit[-1].time
    assert [c.params.value for c in engine.recorder.calls_of("test.echo")] == [
        "store s1 on store-s1",
        "store s1 on store-s1!",
    ]
    assert (await engine.store.verify_audit()).intact


async def test_when_false_skips_the_step(engine: Engine) -> None:
    playbooks = engine.playbooks(
        playbook_yaml(
            "conditional",
            """
            steps:
              - name: only_warning
                action: test.echo
                when: alert.labels.severity == "warning"
                params: {value: warning}
              - name: only_critical
                action: test.echo
                when: alert.labels.severity == "critical"
                params: {value: critical}
            """,
        )
    )

    run_id, status = await run_one(engine, playbooks)

    assert status is RunStatus.SUCCEEDED
    detail = await engine.detail(run_id)
    assert [(s.name, s.outcome) for s in detail.steps] == [
        ("only_warning", StepOutcome.SKIPPED),
        ("only_critical", StepOutcome.SUCCEEDED),
    ]
    assert [c.params.value for c in engine.recorder.calls] == ["critical"]


async def test_a_choose_step_picks_one_branch_and_only_its_steps_run(engine: Engine) -> None:
    playbooks = engine.playbooks(
        playbook_yaml(
            "branching",
            """
            steps:
              - name: decide
                choose:
                  - {when: alert.labels.severity == "warning", branch: wait}
                  - {when: alert.labels.severity == "critical", branch: restart}
                default: escalate
              - name: restart
                action: test.echo
                on_branch: restart
                params: {value: "restart after {{ steps.decide.output.branch }}"}
              - name: wait
                action: test.echo
                on_branch: [wait, escalate]
                params: {value: wait}
            """,
        )
    )

    run_id, status = await run_one(engine, playbooks)

    assert status is RunStatus.SUCCEEDED
    detail = await engine.detail(run_id)
    assert [(s.name, s.action, s.outcome) for s in detail.steps] == [
        ("decide", "choose", StepOutcome.SUCCEEDED),
        ("restart", "test.echo", StepOutcome.SUCCEEDED),
        ("wait", "test.echo", StepOutcome.SKIPPED),
    ]
    assert dict(detail.steps[0].output) == {"branch": "restart", "case": 1}
    assert [c.params.value for c in engine.recorder.calls] == ["restart after restart"]


async def test_a_choose_case_that_cannot_be_evaluated_fails_the_run(engine: Engine) -> None:
    playbooks = engine.playbooks(
        playbook_yaml(
            "broken-choice",
            """
            steps:
              - name: decide
                choose:
                  - {when: alert.labels.no_such_label == "x", branch: restart}
                default: escalate
              - name: escalate
                action: test.echo
                on_branch: escalate
                params: {value: never}
            """,
        )
    )

    run_id, status = await run_one(engine, playbooks)

    assert status is RunStatus.FAILED
    detail = await engine.detail(run_id)
    assert [(s.name, s.outcome) for s in detail.steps] == [("decide", StepOutcome.FAILED)]
    assert "undefined" in (detail.steps[0].error or "")
    assert engine.recorder.calls == []


async def test_temporary_errors_are_retried_until_success(engine: Engine) -> None:
    playbooks = engine.playbooks(
        playbook_yaml(
            "flaky",
            """
            steps:
              - name: wobbly
                action: test.flaky
                params: {key: a, failures: 2}
                retry: {attempts: 3, backoff: 10ms}
            """,
        )
    )

    run_id, status = await run_one(engine, playbooks)

    assert status is RunStatus.SUCCEEDED
    (step,) = (await engine.detail(run_id)).steps
    assert (step.outcome, step.attempts, dict(step.output)) == (
        StepOutcome.SUCCEEDED,
        3,
        {"attempt": 3},
    )
    assert engine.recorder.counts["test.flaky"] == 3


async def test_exhausted_retries_fail_the_run_and_stop_it(engine: Engine) -> None:
    playbooks = engine.playbooks(
        playbook_yaml(
            "flaky",
            """
            steps:
              - name: wobbly
                action: test.flaky
                params: {key: a, failures: 5}
                retry: {attempts: 3, backoff: 10ms}
              - name: after
                action: test.echo
            """,
        )
    )

    run_id, status = await run_one(engine, playbooks)

    assert status is RunStatus.FAILED
    detail = await engine.detail(run_id)
    (step,) = detail.steps
    assert (step.outcome, step.attempts, step.error) == (StepOutcome.FAILED, 3, "flaky a try 3")
    assert detail.run.error == "step 'wobbly': flaky a try 3"
    assert engine.recorder.counts["test.flaky"] == 3
    assert engine.recorder.calls_of("test.echo") == []


async def test_a_temporary_errors_delay_replaces_the_backoff(engine: Engine) -> None:
    # With the policy's backoff of an hour, only the error's own delay lets this finish.
    playbooks = engine.playbooks(
        playbook_yaml(
            "flaky",
            """
            steps:
              - name: wobbly
                action: test.flaky
                params: {key: a, failures: 1, delay: 0.001}
                retry: {attempts: 2, backoff: 1h}
            """,
        )
    )

    run_id, status = await asyncio.wait_for(run_one(engine, playbooks), WAIT)

    assert status is RunStatus.SUCCEEDED
    assert (await engine.detail(run_id)).steps[0].attempts == 2


async def test_permanent_errors_are_not_retried(engine: Engine) -> None:
    playbooks = engine.playbooks(
        playbook_yaml(
            "broken",
            """
            steps:
              - name: refuse
                action: test.fail
                params: {kind: permanent, message: "forbidden by policy"}
                retry: {attempts: 3, backoff: 10ms}
            """,
        )
    )

    run_id, status = await run_one(engine, playbooks)

    assert status is RunStatus.FAILED
    (step,) = (await engine.detail(run_id)).steps
    assert (step.outcome, step.attempts, step.error) == (
        StepOutcome.FAILED,
        1,
        "forbidden by policy",
    )
    assert engine.recorder.counts["test.fail"] == 1


async def test_a_step_over_its_timeout_is_timed_out(engine: Engine) -> None:
    playbooks = engine.playbooks(
        playbook_yaml(
            "slow",
            """
            steps:
              - name: hang
                action: test.block
                params: {key: hang}
                timeout: 50ms
                retry: {attempts: 2, backoff: 10ms}
            """,
        )
    )

    run_id, status = await run_one(engine, playbooks)

    assert status is RunStatus.FAILED
    detail = await engine.detail(run_id)
    (step,) = detail.steps
    assert (step.outcome, step.attempts) == (StepOutcome.TIMED_OUT, 2)
    assert step.error == "timed out after 0.05s"
    assert detail.run.error == "step 'hang': timed out after 0.05s"
    # Each attempt's action was cancelled, not left running in the background.
    assert engine.recorder.cancelled == ["hang", "hang"]


async def test_a_crashing_action_fails_its_step_and_the_executor_carries_on(
    engine: Engine,
) -> None:
    playbooks = engine.playbooks(
        playbook_yaml(
            "crash",
            """
            steps:
              - name: explode
                action: test.fail
                params: {kind: crash, message: boom}
                retry: {attempts: 3, backoff: 10ms}
            """,
        ),
        playbook_yaml(
            "fine",
            """
            steps:
              - name: hello
                action: test.echo
                params: {value: still here}
            """,
            matchers=('alertname="Other"',),
        ),
    )
    executor = engine.executor(playbooks)
    (crash_id,) = await engine.queue(playbooks)
    (fine_id,) = await engine.queue(
        playbooks, webhook(labels={"alertname": "Other", "store_id": "s2"}, fingerprint="abc")
    )

    with structlog.testing.capture_logs() as logs:
        crashed = await executor.execute(crash_id)
    fine = await executor.execute(fine_id)

    assert crashed is RunStatus.FAILED
    (step,) = (await engine.detail(crash_id)).steps
    assert (step.outcome, step.attempts, step.error) == (
        StepOutcome.FAILED,
        1,
        "RuntimeError: boom",
    )
    assert any(e["event"] == "action_crashed" for e in logs)
    assert fine is RunStatus.SUCCEEDED
    assert engine.recorder.calls_of("test.echo")[0].params.value == "still here"


async def test_on_failure_runs_after_a_failure_and_reads_run_error(engine: Engine) -> None:
    playbooks = engine.playbooks(
        playbook_yaml(
            "escalating",
            """
            steps:
              - name: fix
                action: test.fail
                params: {kind: permanent, message: disk full}
              - name: never
                action: test.echo
                params: {value: never}
            on_failure:
              - name: escalate
                action: test.echo
                params:
                  value: "{{ run.status }}: {{ run.error }}"
            """,
        )
    )

    run_id, status = await run_one(engine, playbooks)

    assert status is RunStatus.FAILED
    detail = await engine.detail(run_id)
    assert [(s.phase, s.name, s.outcome) for s in detail.steps] == [
        ("steps", "fix", StepOutcome.FAILED),
        ("on_failure", "escalate", StepOutcome.SUCCEEDED),
    ]
    assert detail.steps[1].params["value"] == "failed: step 'fix': disk full"
    assert [c.params.value for c in engine.recorder.calls_of("test.echo")] == [
        "failed: step 'fix': disk full"
    ]
    # The run keeps the outcome of its steps even though its escalation succeeded.
    assert detail.run.status is RunStatus.FAILED
    assert kinds(detail.audit)[-1] == "run_finished"


async def test_verification_passes_once_its_check_holds(engine: Engine) -> None:
    playbooks = engine.playbooks(
        playbook_yaml(
            "verified",
            """
            steps:
              - name: fix
                action: test.echo
            verify:
              timeout: 5s
              interval: 10ms
              checks:
                - name: healthy
                  action: test.flip
                  params: {key: health, ready_after: 3}
                  expect: output.ready
            on_failure:
              - name: escalate
                action: test.echo
                params: {value: escalated}
            """,
        )
    )

    run_id, status = await run_one(engine, playbooks)

    assert status is RunStatus.SUCCEEDED
    detail = await engine.detail(run_id)
    verification = [
        r.event for r in detail.audit if r.event.kind is AuditKind.VERIFICATION_FINISHED
    ]
    assert len(verification) == 1
    assert verification[0].outcome == "passed"
    assert verification[0].details["rounds"] == 3
    assert verification[0].details["checks"] == [
        {
            "check": "healthy",
            "holds": True,
            "error": None,
            "output": {"ready": True, "call": 3, "value": ""},
        }
    ]
    assert engine.recorder.counts["test.flip"] == 3
    assert [c.params.value for c in engine.recorder.calls_of("test.echo")] == [""]
    # Checks are audited as a verification, not as steps of the run.
    assert [s.name for s in detail.steps] == ["fix"]
    # Verification follows the step, so the step was written on its own, before it.
    (step,) = [r for r in detail.audit if r.event.kind is AuditKind.STEP_FINISHED]
    (checked,) = [r for r in detail.audit if r.event.kind is AuditKind.VERIFICATION_FINISHED]
    assert step.seq < checked.seq and step.time < checked.time


async def test_verification_that_never_holds_is_unverified_and_escalates(engine: Engine) -> None:
    playbooks = engine.playbooks(
        playbook_yaml(
            "unverified",
            """
            steps:
              - name: fix
                action: test.echo
            verify:
              timeout: 100ms
              interval: 20ms
              checks:
                - name: healthy
                  action: test.flip
                  params: {key: health, ready_after: 1000000}
                  expect: output.ready
            on_failure:
              - name: escalate
                action: test.echo
                params: {value: "{{ run.status }}: {{ run.error }}"}
            """,
        )
    )

    run_id, status = await run_one(engine, playbooks)

    assert status is RunStatus.UNVERIFIED
    detail = await engine.detail(run_id)
    assert detail.run.error == "verification did not hold by its deadline"
    (verification,) = [
        r.event for r in detail.audit if r.event.kind is AuditKind.VERIFICATION_FINISHED
    ]
    assert verification.outcome == "failed"
    assert verification.details["rounds"] >= 2
    assert verification.details["checks"][0]["holds"] is False
    assert verification.details["checks"][0]["error"] == "expectation not met: output.ready"
    assert [(s.phase, s.name) for s in detail.steps] == [
        ("steps", "fix"),
        ("on_failure", "escalate"),
    ]
    assert detail.steps[1].params["value"] == (
        "unverified: verification did not hold by its deadline"
    )


DRY_RUN_PLAYBOOK = playbook_yaml(
    "careful",
    """
    steps:
      - name: look
        action: test.echo
        params: {value: "{{ run.dry_run }}"}
      - name: change
        action: test.mutate
        params: {value: "replicas=3"}
      - name: aware
        action: test.dry_run_aware
        params: {value: x}
    """,
)


async def test_dry_run_previews_mutating_steps_and_calls_read_only_ones(engine: Engine) -> None:
    playbooks = engine.playbooks(DRY_RUN_PLAYBOOK)

    run_id, status = await run_one(engine, playbooks, dry_run=True)

    assert status is RunStatus.SUCCEEDED
    detail = await engine.detail(run_id)
    assert detail.run.dry_run is True
    assert [(s.name, s.outcome, dict(s.output)) for s in detail.steps] == [
        ("look", StepOutcome.SUCCEEDED, {"value": "True"}),
        ("change", StepOutcome.DRY_RUN, {"would": "would change replicas=3"}),
        ("aware", StepOutcome.DRY_RUN, {"dry_run": True}),
    ]
    assert engine.recorder.calls_of("test.mutate") == []
    (aware,) = engine.recorder.calls_of("test.dry_run_aware")
    assert aware.context.dry_run is True
    assert detail.audit[1].event.details == {"dry_run": True}


async def test_without_dry_run_mutating_steps_run(engine: Engine) -> None:
    playbooks = engine.playbooks(DRY_RUN_PLAYBOOK)

    run_id, status = await run_one(engine, playbooks)

    assert status is RunStatus.SUCCEEDED
    detail = await engine.detail(run_id)
    assert [s.outcome for s in detail.steps] == [StepOutcome.SUCCEEDED] * 3
    (change,) = engine.recorder.calls_of("test.mutate")
    assert change.context.dry_run is False
    (aware,) = engine.recorder.calls_of("test.dry_run_aware")
    assert aware.context.dry_run is False


async def test_a_dry_run_playbook_makes_dry_runs(engine: Engine) -> None:
    playbooks = engine.playbooks(DRY_RUN_PLAYBOOK + "dry_run: true\n")

    run_id, status = await run_one(engine, playbooks)

    assert status is RunStatus.SUCCEEDED
    assert (await engine.detail(run_id)).run.dry_run is True
    assert engine.recorder.calls_of("test.mutate") == []


async def assert_secret_hidden(engine: Engine, run_id: str) -> None:
    """The secret appears nowhere a person or the API can read it, and the mask does."""
    detail = await engine.detail(run_id)
    api_view = json.dumps(
        {
            "run": reporting.run_json(detail.run),
            "steps": [reporting.step_json(s) for s in detail.steps],
            "audit": [reporting.audit_json(r) for r in await engine.audit()],
        }
    )
    assert SECRET not in api_view
    assert "***" in api_view


async def test_known_secrets_are_masked_in_steps_errors_and_audit(engine: Engine) -> None:
    playbooks = engine.playbooks(
        playbook_yaml(
            "leaky",
            f"""
            steps:
              - name: use
                action: test.echo
                params:
                  value: "logged in with {SECRET}"
                  extra: {{note: "session {SECRET}"}}
              - name: retry
                action: test.flaky
                params: {{key: "{SECRET}", failures: 1}}
                retry: {{attempts: 2, backoff: 10ms}}
              - name: refuse
                action: test.fail
                params: {{kind: permanent, message: "rejected {SECRET}"}}
            on_failure:
              - name: escalate
                action: test.echo
                params:
                  value: "{{{{ run.error }}}} after {{{{ steps.use.output.note }}}}"
            """,
        )
    )

    with structlog.testing.capture_logs() as logs:
        run_id, status = await run_one(engine, playbooks, secrets=(SECRET,))

    assert status is RunStatus.FAILED
    detail = await engine.detail(run_id)
    use, retry, refuse, escalate = detail.steps
    assert dict(use.params) == {"value": "logged in with ***", "extra": {"note": "session ***"}}
    assert dict(use.output) == {"value": "logged in with ***", "note": "session ***"}
    assert retry.params["key"] == "***"
    assert refuse.error == "rejected ***"
    assert detail.run.error == "step 'refuse': rejected ***"
    assert escalate.params["value"] == "step 'refuse': rejected *** after session ***"
    await assert_secret_hidden(engine, run_id)
    assert SECRET not in repr(logs)
    # The actions themselves got the real values: masking is for records, not for work.
    assert engine.recorder.calls_of("test.echo")[0].params.value == f"logged in with {SECRET}"


async def test_known_secrets_are_masked_in_verification_records(engine: Engine) -> None:
    playbooks = engine.playbooks(
        playbook_yaml(
            "leaky-check",
            f"""
            steps:
              - name: fix
                action: test.echo
            verify:
              timeout: 50ms
              interval: 10ms
              checks:
                - name: healthy
                  action: test.flip
                  params: {{key: health, ready_after: 1000000, value: "{SECRET}"}}
                  expect: output.ready
            """,
        )
    )

    run_id, status = await run_one(engine, playbooks, secrets=(SECRET,))

    assert status is RunStatus.UNVERIFIED
    await assert_secret_hidden(engine, run_id)


async def test_cancelling_a_run_mid_step_records_it_interrupted(engine: Engine) -> None:
    playbooks = engine.playbooks(
        playbook_yaml(
            "long",
            """
            steps:
              - name: wait
                action: test.block
                params: {key: hang}
              - name: after
                action: test.echo
            """,
        )
    )
    (run_id,) = await engine.queue(playbooks)
    task = asyncio.create_task(engine.executor(playbooks).execute(run_id))
    await asyncio.wait_for(engine.recorder.started["hang"].wait(), WAIT)

    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    detail = await engine.detail(run_id)
    assert detail.run.status is RunStatus.INTERRUPTED
    assert detail.run.error == "interrupted by shutdown"
    assert detail.steps == ()
    assert detail.audit[-1].event.kind is AuditKind.RUN_FINISHED
    assert detail.audit[-1].event.outcome == "interrupted"
    assert engine.recorder.cancelled == ["hang"]
    assert engine.recorder.calls_of("test.echo") == []
    assert engine.sample("remediator_runs_total", playbook="long", outcome="interrupted") == 1


async def test_a_run_whose_playbook_is_gone_fails_with_a_reason(engine: Engine) -> None:
    playbooks = engine.playbooks(
        playbook_yaml(
            "removed",
            """
            steps:
              - name: hello
                action: test.echo
            """,
        )
    )
    (run_id,) = await engine.queue(playbooks)

    status = await engine.executor(PlaybookSet(playbooks=())).execute(run_id)

    assert status is RunStatus.FAILED
    detail = await engine.detail(run_id)
    assert detail.run.status is RunStatus.FAILED
    assert detail.run.error == "playbook is no longer loaded"
    assert detail.audit[-1].event.reason == "playbook is no longer loaded"
    assert engine.recorder.calls == []


async def test_a_run_no_longer_queued_is_not_executed(engine: Engine) -> None:
    playbooks = engine.playbooks(
        playbook_yaml(
            "cancelled",
            """
            steps:
              - name: hello
                action: test.echo
            """,
        )
    )
    (run_id,) = await engine.queue(playbooks)
    # The alert resolves before the run starts: the store cancels the queued run.
    await engine.queue(playbooks, webhook(status="resolved", labels=store_labels()))
    executor = engine.executor(playbooks)

    status = await executor.execute(run_id)

    assert status is None
    assert engine.recorder.calls == []
    detail = await engine.detail(run_id)
    assert detail.run.status is RunStatus.CANCELLED
    assert AuditKind.RUN_STARTED not in [r.event.kind for r in detail.audit]


async def test_a_finished_run_is_not_executed_again(engine: Engine) -> None:
    playbooks = engine.playbooks(
        playbook_yaml(
            "once",
            """
            steps:
              - name: hello
                action: test.echo
            """,
        )
    )
    (run_id,) = await engine.queue(playbooks)
    executor = engine.executor(playbooks)

    assert await executor.execute(run_id) is RunStatus.SUCCEEDED
    assert await executor.execute(run_id) is None
    assert engine.recorder.counts["test.echo"] == 1


async def test_runs_and_steps_are_counted_with_their_labels(engine: Engine) -> None:
    playbooks = engine.playbooks(
        playbook_yaml(
            "counted",
            """
            steps:
              - name: hello
                action: test.echo
              - name: skipped
                action: test.echo
                when: "false"
              - name: refuse
                action: test.fail
                params: {kind: permanent}
            """,
        )
    )

    await run_one(engine, playbooks)

    assert engine.sample("remediator_runs_total", playbook="counted", outcome="failed") == 1
    assert engine.sample("remediator_runs_total", playbook="counted", outcome="succeeded") == 0
    steps = "remediator_steps_total"
    assert engine.sample(steps, playbook="counted", action="test.echo", outcome="succeeded") == 1
    assert engine.sample(steps, playbook="counted", action="test.echo", outcome="skipped") == 1
    assert engine.sample(steps, playbook="counted", action="test.fail", outcome="failed") == 1
    assert engine.sample("remediator_step_duration_seconds_count", action="test.echo") == 2
    assert engine.sample("remediator_run_duration_seconds_count", playbook="counted") == 1


class UnstorableOutputAction:
    """Returns an output the store cannot write as JSON (a bug in an action)."""

    spec = ActionSpec(name="test.unstorable", params=EchoParams, mutating=False)

    async def run(self, params: EchoParams, context: ActionContext) -> Output:
        return {"handle": object()}

    def preview(self, params: EchoParams) -> str:
        return "unstorable"


async def test_a_run_that_cannot_be_recorded_fails_instead_of_staying_running(
    engine: Engine,
) -> None:
    engine.registry.register(UnstorableOutputAction())
    playbooks = engine.playbooks(
        playbook_yaml(
            "odd",
            """
            steps:
              - name: odd
                action: test.unstorable
              - name: after
                action: test.echo
            """,
        )
    )

    with structlog.testing.capture_logs() as logs:
        run_id, status = await run_one(engine, playbooks)

    assert status is RunStatus.FAILED
    assert any(e["event"] == "run_crashed" for e in logs)
    detail = await engine.detail(run_id)
    assert detail.run.status is RunStatus.FAILED
    assert detail.run.error is not None
    assert "cannot store as JSON" in detail.run.error
    assert engine.recorder.calls_of("test.echo") == []
    assert engine.sample("remediator_runs_total", playbook="odd", outcome="failed") == 1
