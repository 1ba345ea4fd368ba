"""The safety envelope's pure decisions: every branch, its order and its boundaries."""

from __future__ import annotations

import dataclasses
from typing import Any, Literal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from remediator.core import safety
from remediator.core.safety import (
    BreakerPolicy,
    Decision,
    RateLimit,
    Refusal,
    SafetyPolicy,
    Snapshot,
    StormPolicy,
)

NOW = 10_000.0
POLICY = SafetyPolicy(
    target_rate=RateLimit(max_runs=3, window=3600.0),
    playbook_rate=RateLimit(max_runs=20, window=600.0),
    cooldown=300.0,
    storm=StormPolicy(max_targets=5, max_percent=20.0, window=300.0),
)
# Every safeguard would refuse this one; each case below clears the earlier ones.
EVERYTHING_WRONG = Snapshot(
    paused=True,
    storm_targets=6,
    breaker_open=True,
    target_runs=3,
    playbook_runs=20,
    last_finished_on_target=NOW - 1.0,
)


@pytest.mark.parametrize(
    ("cleared", "expected"),
    [
        ({}, Refusal.PAUSED),
        ({"paused": False}, Refusal.STORM),
        ({"paused": False, "storm_targets": 5}, Refusal.BREAKER_OPEN),
        (
            {"paused": False, "storm_targets": 5, "breaker_open": False},
            Refusal.TARGET_RATE_LIMITED,
        ),
        (
            {"paused": False, "storm_targets": 5, "breaker_open": False, "target_runs": 2},
            Refusal.PLAYBOOK_RATE_LIMITED,
        ),
        (
            {
                "paused": False,
                "storm_targets": 5,
                "breaker_open": False,
                "target_runs": 2,
                "playbook_runs": 19,
            },
            Refusal.COOLDOWN,
        ),
        (
            {
                "paused": False,
                "storm_targets": 5,
                "breaker_open": False,
                "target_runs": 2,
                "playbook_runs": 19,
                "last_finished_on_target": None,
            },
            None,
        ),
    ],
    ids=["paused", "storm", "breaker", "target-rate", "playbook-rate", "cooldown", "allowed"],
)
def test_admission_checks_in_order(cleared: dict[str, Any], expected: Refusal | None) -> None:
    snapshot = dataclasses.replace(EVERYTHING_WRONG, **cleared)

    decision = safety.decide_admission(POLICY, snapshot, now=NOW)

    assert decision.refusal is expected
    assert decision.allowed is (expected is None)


@pytest.mark.parametrize(
    ("target_runs", "playbook_runs", "expected"),
    [
        (2, 0, None),
        (3, 0, Refusal.TARGET_RATE_LIMITED),
        (4, 0, Refusal.TARGET_RATE_LIMITED),
        (0, 19, None),
        (0, 20, Refusal.PLAYBOOK_RATE_LIMITED),
    ],
    ids=["target-below", "target-exactly-max", "target-above", "playbook-below", "playbook-max"],
)
def test_rate_limits_refuse_from_exactly_max_runs(
    target_runs: int, playbook_runs: int, expected: Refusal | None
) -> None:
    snapshot = Snapshot(target_runs=target_runs, playbook_runs=playbook_runs)

    assert safety.decide_admission(POLICY, snapshot, now=NOW).refusal is expected


def test_rate_limit_refusal_details() -> None:
    target = safety.decide_admission(POLICY, Snapshot(target_runs=3), now=NOW)
    playbook = safety.decide_admission(POLICY, Snapshot(playbook_runs=25), now=NOW)

    assert target.details == {"runs": 3, "max_runs": 3, "window": 3600.0}
    assert playbook.details == {"runs": 25, "max_runs": 20, "window": 600.0}


@pytest.mark.parametrize(
    ("limit", "counter"),
    [("target_rate", "target_runs"), ("playbook_rate", "playbook_runs")],
    ids=["target-rate", "playbook-rate"],
)
def test_a_disabled_rate_limit_never_refuses(limit: str, counter: str) -> None:
    disabled: dict[str, Any] = {limit: None}
    policy = dataclasses.replace(POLICY, **disabled)
    counted: dict[str, Any] = {counter: 10**6}
    snapshot = Snapshot(**counted)

    assert safety.decide_admission(policy, snapshot, now=NOW) == safety.ALLOWED
    assert safety.decide_admission(POLICY, snapshot, now=NOW).refusal is not None


@pytest.mark.parametrize(
    ("since_finish", "expected"),
    [
        (0.0, Refusal.COOLDOWN),
        (299.999, Refusal.COOLDOWN),
        (300.0, None),
        (301.0, None),
    ],
    ids=["just-finished", "just-before", "exactly-cooldown", "after"],
)
def test_cooldown_edge(since_finish: float, expected: Refusal | None) -> None:
    snapshot = Snapshot(last_finished_on_target=NOW - since_finish)

    assert safety.decide_admission(POLICY, snapshot, now=NOW).refusal is expected
    assert safety.decide_start(POLICY, snapshot, now=NOW).refusal is expected


def test_cooldown_details_say_how_long_is_left() -> None:
    decision = safety.decide_admission(POLICY, Snapshot(last_finished_on_target=NOW - 100), now=NOW)

    assert decision == Decision(
        refusal=Refusal.COOLDOWN,
        details={"last_finished": NOW - 100, "cooldown": 300.0, "remaining": 200.0},
    )


def test_zero_cooldown_allows_a_run_finished_this_instant() -> None:
    policy = dataclasses.replace(POLICY, cooldown=0.0)

    assert safety.decide_admission(policy, Snapshot(last_finished_on_target=NOW), now=NOW).allowed


def test_a_run_finished_after_now_finished_zero_seconds_ago() -> None:
    # now is read before the writer lock; another replica may finish a run meanwhile.
    later = Snapshot(last_finished_on_target=NOW + 0.2)
    zero = dataclasses.replace(POLICY, cooldown=0.0)

    assert safety.decide_admission(zero, later, now=NOW).allowed
    assert safety.decide_start(zero, later, now=NOW).allowed
    assert safety.decide_admission(POLICY, later, now=NOW).details["remaining"] == 300.0


def test_storm_refusal_details() -> None:
    snapshot = Snapshot(storm_targets=6, known_targets=100)

    decision = safety.decide_admission(POLICY, snapshot, now=NOW)

    assert decision.details == {
        "targets": 6,
        "counted_up_to": 6,
        "known": 100,
        "max_targets": 5,
        "max_percent": 20.0,
    }


@pytest.mark.parametrize(
    ("cleared", "expected"),
    [
        ({}, Refusal.PAUSED),
        ({"paused": False}, Refusal.BREAKER_OPEN),
        ({"paused": False, "breaker_open": False}, Refusal.COOLDOWN),
        ({"paused": False, "breaker_open": False, "last_finished_on_target": None}, None),
    ],
    ids=["paused", "breaker", "cooldown", "allowed"],
)
def test_start_checks_in_order_and_ignores_rates_and_storms(
    cleared: dict[str, Any], expected: Refusal | None
) -> None:
    # Rates and storms were judged at admission: a queued run was already counted.
    snapshot = dataclasses.replace(EVERYTHING_WRONG, **cleared)

    assert safety.decide_start(POLICY, snapshot, now=NOW).refusal is expected


STORM = StormPolicy(max_targets=5, max_percent=20.0)


@pytest.mark.parametrize(
    ("targets", "known", "expected"),
    [
        (5, None, False),
        (6, None, True),
        (0, None, False),
        # Percent is strict as well: 20 % of 10 is not more than 20 %.
        (2, 10, False),
        (3, 10, True),
        (5, 25, False),
        (6, 25, True),  # also over max_targets
        (1, 4, False),  # 25 % of a small fleet, but one store is never a storm (min_targets)
        (3, 4, True),  # 75 % of a small fleet, and min_targets reached
        (4, 0, False),  # an empty fleet count gives no percentage
        (6, 0, True),  # ...but max_targets still applies
        (4, None, False),
    ],
    ids=[
        "count-equal",
        "count-above",
        "none",
        "percent-equal",
        "percent-above",
        "percent-equal-25",
        "both",
        "percent-small-fleet-one-target",
        "percent-small-fleet-min-targets",
        "known-zero",
        "known-zero-count-above",
        "known-none",
    ],
)
def test_is_storm_is_strictly_greater(targets: int, known: int | None, expected: bool) -> None:
    assert safety.is_storm(STORM, targets=targets, known=known) is expected
    snapshot = Snapshot(storm_targets=targets, known_targets=known)
    refusal = safety.decide_admission(POLICY, snapshot, now=NOW).refusal
    assert (refusal is Refusal.STORM) is expected


@pytest.mark.parametrize(
    ("outcomes", "expected"),
    [
        ([], False),
        (["failed", "failed"], False),
        (["failed", "failed", "failed"], True),
        (["unverified", "failed", "unverified"], True),
        (["failed", "failed", "failed", "succeeded"], True),
        (["failed", "succeeded", "failed", "failed"], False),
        (["succeeded", "failed", "failed", "failed"], False),
        (["failed", "failed", "interrupted"], False),
    ],
    ids=[
        "none",
        "too-few",
        "k-failures",
        "unverified-counts",
        "older-success-ignored",
        "success-in-between",
        "newest-success",
        "other-outcome",
    ],
)
def test_breaker_trips_on_k_newest_failures(outcomes: list[str], expected: bool) -> None:
    assert safety.breaker_trips(BreakerPolicy(failures=3), outcomes) is expected


def test_breaker_of_one_trips_on_a_single_failure() -> None:
    assert safety.breaker_trips(BreakerPolicy(failures=1), ["failed"])
    assert not safety.breaker_trips(BreakerPolicy(failures=1), ["succeeded", "failed"])


Approval = Literal["never", "destructive", "always"]


@pytest.mark.parametrize(
    ("approval", "mutating", "destructive", "expected"),
    [
        ("never", False, False, False),
        ("never", True, False, False),
        ("never", True, True, False),
        ("destructive", False, False, False),
        ("destructive", True, False, False),
        ("destructive", True, True, True),
        ("always", False, False, False),
        ("always", True, False, True),
        ("always", True, True, True),
        ("always", False, True, True),
    ],
    ids=[
        "never-read",
        "never-mutating",
        "never-destructive",
        "destructive-read",
        "destructive-mutating",
        "destructive-destructive",
        "always-read",
        "always-mutating",
        "always-destructive",
        "always-destructive-only",
    ],
)
def test_needs_approval(
    approval: Approval, mutating: bool, destructive: bool, expected: bool
) -> None:
    policy = SafetyPolicy(approval=approval)

    assert safety.needs_approval(policy, mutating=mutating, destructive=destructive) is expected


def test_defaults_are_conservative() -> None:
    policy = SafetyPolicy()

    assert policy.allow_destructive is False
    assert policy.approval == "destructive"
    assert policy.target_rate == RateLimit(max_runs=3, window=3600.0)
    assert safety.decide_admission(policy, Snapshot(), now=NOW) == safety.ALLOWED


@given(
    paused=st.booleans(),
    breaker_open=st.booleans(),
    target_runs=st.integers(0, 5),
    playbook_runs=st.integers(0, 25),
    storm_targets=st.integers(0, 8),
    cooldown=st.sampled_from([0.0, 300.0]),
    last_finished=st.none() | st.floats(NOW - 1000.0, NOW + 10.0),
    starting=st.booleans(),
)
def test_a_decision_without_the_last_finished_run_stands_unless_it_is_needed(
    paused: bool,
    breaker_open: bool,
    target_runs: int,
    playbook_runs: int,
    storm_targets: int,
    cooldown: float,
    last_finished: float | None,
    starting: bool,
) -> None:
    # The store reads the target's last finished run only when needs_last_finished() says so.
    policy = dataclasses.replace(POLICY, cooldown=cooldown)
    decide = safety.decide_start if starting else safety.decide_admission
    snapshot = Snapshot(
        paused=paused,
        breaker_open=breaker_open,
        target_runs=target_runs,
        playbook_runs=playbook_runs,
        storm_targets=storm_targets,
    )
    first = decide(policy, snapshot, now=NOW)
    full = decide(
        policy,
        dataclasses.replace(snapshot, last_finished_on_target=last_finished),
        now=NOW,
    )
    if not safety.needs_last_finished(policy, first):
        assert full == first
    else:
        assert first.refusal is None and full.refusal in (None, Refusal.COOLDOWN)
