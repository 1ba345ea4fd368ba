"""The resume rule for a run taken over from a replica that died (pure)."""

from __future__ import annotations

from remediator.core import matching
from remediator.core.playbooks import Phase, Playbook, Step, Trigger, Verification
from remediator.core.resuming import plan_resume
from remediator.core.runs import StepOutcome, StepRecord

READ_ONLY = {"log", "prometheus.query"}


def read_only(step: Step) -> bool:
    return step.action in READ_ONLY


def fix(*actions: str, resume: bool = False, checks: tuple[str, ...] = ()) -> Playbook:
    return Playbook(
        name="fix",
        source="fix.yaml",
        trigger=Trigger(matchers=(matching.parse_matcher('alertname="StoreDown"'),)),
        target="store-{{ alert.labels.store_id }}",
        steps=tuple(Step(name=f"s{i}", action=a, params={}) for i, a in enumerate(actions)),
        verify=Verification(
            checks=tuple(Step(name=f"v{i}", action=a) for i, a in enumerate(checks))
        )
        if checks
        else None,
        resume=resume,
    )


def recorded(*outcomes: StepOutcome, phase: Phase = Phase.STEPS) -> list[StepRecord]:
    return [
        StepRecord(
            run_id="r1",
            index=i,
            phase=str(phase),
            name=f"s{i}",
            action="k8s.scale",
            outcome=outcome,
            params={},
            attempts=1,
            duration=0.1,
            started_at=1000.0,
        )
        for i, outcome in enumerate(outcomes)
    ]


DONE, UNKNOWN = StepOutcome.SUCCEEDED, StepOutcome.UNKNOWN


def test_only_read_only_steps_left_resume_after_the_unknown_one() -> None:
    playbook = fix("k8s.scale", "k8s.scale", "log", checks=("prometheus.query",))

    plan = plan_resume(playbook, recorded(DONE, UNKNOWN), read_only=read_only)

    assert (plan.resume, plan.next_step, plan.reason) == (
        True,
        2,
        "every step left is read-only",
    )


def test_a_mutating_step_left_ends_the_run_and_names_it() -> None:
    playbook = fix("k8s.scale", "k8s.scale", "k8s.rollout_restart")

    plan = plan_resume(playbook, recorded(DONE, UNKNOWN), read_only=read_only)

    assert not plan.resume
    assert "k8s" not in plan.reason and "s2" in plan.reason


def test_a_mutating_verify_check_counts_as_a_step_left() -> None:
    playbook = fix("k8s.scale", checks=("http.request",))

    assert not plan_resume(playbook, recorded(UNKNOWN), read_only=read_only).resume


def test_resume_true_continues_whatever_is_left() -> None:
    playbook = fix("k8s.scale", "k8s.scale", "k8s.rollout_restart", resume=True)

    plan = plan_resume(playbook, recorded(DONE, UNKNOWN), read_only=read_only)

    assert (plan.resume, plan.next_step) == (True, 2)


def test_a_run_taken_over_before_any_step_starts_at_the_first() -> None:
    plan = plan_resume(fix("log", "log"), [], read_only=read_only)

    assert (plan.resume, plan.next_step) == (True, 0)


def test_all_steps_done_goes_on_to_verify() -> None:
    playbook = fix("k8s.scale", checks=("prometheus.query",))

    plan = plan_resume(playbook, recorded(DONE), read_only=read_only)

    assert (plan.resume, plan.next_step) == (True, 1)


def test_a_run_in_its_on_failure_steps_is_never_resumed() -> None:
    playbook = fix("log", resume=True)
    steps = [*recorded(DONE), *recorded(UNKNOWN, phase=Phase.ON_FAILURE)]

    plan = plan_resume(playbook, steps, read_only=read_only)

    assert (plan.resume, plan.reason) == (False, "it had already failed")
