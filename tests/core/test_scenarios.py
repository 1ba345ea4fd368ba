"""Scenario judging, pure: the comparison's diff, coverage, and the time compression."""

from __future__ import annotations

from pathlib import Path

import pytest

from remediator.adapters import loading
from remediator.core import scenarios
from remediator.core.playbooks import PlaybookSet
from remediator.engine.actions import registry

REPO = Path(__file__).resolve().parents[2]
CATALOG = registry.builtin()


@pytest.fixture(scope="module")
def shipped() -> PlaybookSet:
    return loading.load_playbooks([REPO / "playbooks"], CATALOG)


def scenario(**expect: object) -> scenarios.Scenario:
    return scenarios.Scenario(
        name="s", source="x.yaml", line=3, playbook="store-down", expect=expect
    )


RUN = scenarios.ObservedRun(
    playbook="store-down",
    target="store-s1",
    outcome="failed",
    error="step 'confirm_database': not complete",
    branches=("escalate_database",),
    steps={"diagnose": "succeeded", "decide": "succeeded", "confirm_database": "failed"},
    verification="none",
)


def test_only_the_keys_given_are_compared() -> None:
    got = scenarios.Observed(runs=(RUN,))
    assert scenarios.compare(scenario(runs=[{"branch": "escalate_database"}]), got) == []
    assert scenarios.compare(scenario(), got) == []


def test_each_difference_is_one_line_with_the_run_for_context() -> None:
    got = scenarios.Observed(runs=(RUN,), writes=("notify oncall",))
    expected = scenario(
        runs=[
            {
                "branch": "restart_app",
                "steps": {"restart_app": "succeeded", "confirm_database": "failed"},
                "outcome": "succeeded",
                "error": "nothing",
            }
        ],
        writes=["k8s PATCH deployments store-s1/s1-app", "notify oncall"],
    )

    assert scenarios.compare(expected, got) == [
        "runs[0].branch: expected restart_app, got escalate_database",
        "runs[0].steps.restart_app: expected succeeded, got not_run",
        "runs[0].outcome: expected succeeded, got failed",
        "runs[0].error: expected it to contain 'nothing', got "
        "\"step 'confirm_database': not complete\"",
        "  got runs[0]: store-down on store-s1 branch escalate_database, failed: "
        "step 'confirm_database': not complete",
        "    steps: diagnose succeeded, decide succeeded, confirm_database failed",
        "writes: expected (-) and got (+) differ:",
        "  - k8s PATCH deployments store-s1/s1-app",
        "    notify oncall",
    ]


def test_a_missing_or_extra_run_is_counted_and_shown() -> None:
    lines = scenarios.compare(scenario(runs=[]), scenarios.Observed(runs=(RUN,)))
    assert lines[0] == "runs: expected 0, got 1"
    assert lines[1].startswith("  got runs[0]: store-down on store-s1")


def test_not_run_compares_the_keys_given_in_order() -> None:
    got = scenarios.Observed(
        not_run=({"playbook": "store-down", "target": "store-s1", "reason": "cooldown"},)
    )
    assert scenarios.compare(scenario(not_run=[{"reason": "cooldown"}]), got) == []
    assert scenarios.compare(scenario(not_run=[{"reason": "storm"}]), got) == [
        "not_run: expected (-) and got (+) differ:",
        "  - alert: storm",
        "  + store-down on store-s1: cooldown",
    ]


def test_platform_states_name_what_is_wrong() -> None:
    got = scenarios.Observed(platform={"s1": ("unhealthy", "deployment s1-app not ready")})
    assert scenarios.compare(scenario(platform={"healthy": ["s1", "s2"]}), got) == [
        "platform.healthy: store s1 is unhealthy (deployment s1-app not ready)",
        "platform.healthy: store s2 is gone (no such store)",
    ]
    assert scenarios.compare(scenario(platform={"gone": ["s2"]}), got) == []


def test_coverage_counts_branches_picked_and_steps_that_ran(shipped: PlaybookSet) -> None:
    playbook = shipped.by_name("store-down")
    assert playbook is not None
    restart = scenarios.ObservedRun(
        playbook="store-down",
        target="store-s1",
        outcome="succeeded",
        branches=("restart_app",),
        steps={"diagnose": "succeeded", "decide": "succeeded", "restart_app": "succeeded",
               "wait_app": "succeeded", "reprovision": "skipped"},
        checks=("ingress_present", "certificate_ready", "store_up"),
    )  # fmt: skip

    found = scenarios.coverage(playbook, [restart, RUN])

    assert found.branches == (
        "escalate_namespace_missing",
        "recreate_ingress",
        "renew_certificate",
        "escalate_unknown",
    )
    # The branch checks were listed but skipped: on_branch did not admit them.
    assert "ingress_present" in found.steps and "store_up" not in found.steps
    assert "confirm_database" not in found.steps and "reprovision" in found.steps


def test_compression_shortens_waits_and_keeps_one_read_waits_one_read(
    shipped: PlaybookSet,
) -> None:
    playbook = shipped.by_name("store-down")
    assert playbook is not None

    fast = scenarios.compress_time(playbook, 0.01, CATALOG)

    steps = {s.name: s for _, s in fast.all_steps()}
    # confirm_database: timeout 10s, interval 10 (read once) → both 1s.
    assert steps["confirm_database"].timeout == 1.0
    assert steps["confirm_database"].params["interval"] == 1.0
    # wait_app: timeout 5m, the action's default interval 2s → 1s and 0.02s.
    assert steps["wait_app"].timeout == 1.0
    assert steps["wait_app"].params["interval"] == pytest.approx(0.02)
    assert fast.verify is not None and fast.verify.interval == pytest.approx(0.15)
    assert fast.verify.timeout == 1.0
    # What the engine reads as wall-clock ages and windows is untouched.
    assert fast.safety.cooldown == playbook.safety.cooldown
    assert steps["diagnose"].params == playbook.steps[0].params
