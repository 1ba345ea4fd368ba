"""The safety envelope's decisions: pure functions of a policy, a state snapshot and ``now``.

The store gathers the snapshot inside the same transaction that writes the outcome, so the
decisions are exact under any concurrency (one writer): a burst of 1,000 alerts yields exactly
the runs the limits permit. Every refusal has a bounded ``reason`` used in the audit log, the
``remediator_runs_not_started_total{reason}`` metric and ``remediator simulate``.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal


class Refusal(enum.StrEnum):
    """Why a safeguard stopped a run; the order of checks is the order listed."""

    PAUSED = "paused"
    SCOPE = "scope"
    STORM = "storm"
    BREAKER_OPEN = "breaker_open"
    TARGET_RATE_LIMITED = "target_rate_limited"
    PLAYBOOK_RATE_LIMITED = "playbook_rate_limited"
    COOLDOWN = "cooldown"


@dataclass(frozen=True, slots=True, kw_only=True)
class RateLimit:
    max_runs: int
    window: float
    """Seconds; runs created within the last ``window`` count (cancelled ones do not)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class BreakerPolicy:
    failures: int = 3
    """Consecutive failed or unverified runs that open the breaker."""
    reset_after: float = 3600.0
    """Seconds after which an open breaker closes by itself (an operator can close it sooner)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class StormPolicy:
    min_targets: int = 3
    """Fewer distinct targets than this is never a storm, whatever the share of a small fleet."""
    max_targets: int = 5
    """More distinct targets than this firing the same alert within ``window`` is a storm."""
    max_percent: float = 20.0
    """…or more than this share of the known stores (when their number is known)."""
    window: float = 300.0
    playbook: str | None = None
    """A platform-level playbook to run once per storm instead of the per-target runs."""


@dataclass(frozen=True, slots=True, kw_only=True)
class SafetyPolicy:
    """Per-playbook limits; config supplies the defaults, a playbook's ``safety:`` overrides."""

    target_rate: RateLimit | None = RateLimit(max_runs=3, window=3600.0)
    playbook_rate: RateLimit | None = RateLimit(max_runs=20, window=600.0)
    cooldown: float = 300.0
    """Seconds after any run on a target finishes before another may start on it."""
    max_concurrent: int | None = None
    """Runs of this playbook executing at once (beside the global cap)."""
    breaker: BreakerPolicy = BreakerPolicy()
    storm: StormPolicy | None = StormPolicy()
    """None turns storm detection off for the playbook (no sightings are even recorded)."""
    allow_destructive: bool = False
    """Opt-in for destructive actions (delete a PVC or namespace, remove finalizers)."""
    approval: Literal["never", "destructive", "always"] = "destructive"
    """Which steps wait for an operator: none, destructive ones, or every mutating one."""
    approval_timeout: float = 3600.0
    """Seconds a run waits in ``awaiting_approval`` before it is rejected."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Snapshot:
    """What the store knows when a decision is taken."""

    paused: bool = False
    target_runs: int = 0
    """Runs on this target created within the policy's target window."""
    playbook_runs: int = 0
    """Runs of this playbook created within the policy's playbook window."""
    last_finished_on_target: float | None = None
    breaker_open: bool = False
    storm_targets: int = 0
    """Distinct targets that fired this alert within the storm window, this one included."""
    known_targets: int | None = None
    """How many stores exist, when discovery knows; enables the percentage threshold."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Decision:
    refusal: Refusal | None = None
    details: Mapping[str, Any] = field(default_factory=dict)

    @property
    def allowed(self) -> bool:
        return self.refusal is None


ALLOWED = Decision()


def is_storm(policy: StormPolicy | None, *, targets: int, known: int | None) -> bool:
    if policy is None or targets < policy.min_targets:
        return False
    if targets > policy.max_targets:
        return True
    return known is not None and known > 0 and targets * 100.0 / known > policy.max_percent


def storm_count_cap(policy: StormPolicy, *, known: int | None) -> int:
    """How far distinct targets must be counted to decide :func:`is_storm`: one past the
    lowest threshold in force."""
    threshold = policy.max_targets
    if known:
        threshold = min(threshold, int(known * policy.max_percent / 100.0))
    return max(policy.min_targets, threshold + 1)


def decide_admission(policy: SafetyPolicy, snapshot: Snapshot, *, now: float) -> Decision:
    """Whether a new run may be queued. Scope is checked earlier, on the alert itself."""
    if snapshot.paused:
        return Decision(refusal=Refusal.PAUSED)
    storm = policy.storm
    if storm is not None and is_storm(
        storm, targets=snapshot.storm_targets, known=snapshot.known_targets
    ):
        return Decision(
            refusal=Refusal.STORM,
            details={
                "targets": snapshot.storm_targets,
                # The store stops counting here: "targets" is "at least" when it equals this.
                "counted_up_to": storm_count_cap(storm, known=snapshot.known_targets),
                "known": snapshot.known_targets,
                "max_targets": storm.max_targets,
                "max_percent": storm.max_percent,
            },
        )
    return _limits(policy, snapshot, now=now)


def decide_start(policy: SafetyPolicy, snapshot: Snapshot, *, now: float) -> Decision:
    """Whether a queued run may start now: pause, breaker and cooldown may have changed.

    Rate limits are not re-checked: the run was counted when it was queued.
    """
    if snapshot.paused:
        return Decision(refusal=Refusal.PAUSED)
    if snapshot.breaker_open:
        return Decision(refusal=Refusal.BREAKER_OPEN)
    return _cooldown(policy, snapshot, now=now)


def needs_last_finished(policy: SafetyPolicy, decision: Decision) -> bool:
    """Whether knowing the target's last finished run could change ``decision``, made with
    ``last_finished_on_target=None``: only the cooldown reads it, and it is checked last, so
    only an allowed decision under a cooldown above zero. Reading it costs a query per
    alert; most alerts under load are refused before (rate limits)."""
    return decision.refusal is None and policy.cooldown > 0


def _limits(policy: SafetyPolicy, snapshot: Snapshot, *, now: float) -> Decision:
    if snapshot.breaker_open:
        return Decision(refusal=Refusal.BREAKER_OPEN)
    if policy.target_rate and snapshot.target_runs >= policy.target_rate.max_runs:
        return Decision(
            refusal=Refusal.TARGET_RATE_LIMITED,
            details={
                "runs": snapshot.target_runs,
                "max_runs": policy.target_rate.max_runs,
                "window": policy.target_rate.window,
            },
        )
    if policy.playbook_rate and snapshot.playbook_runs >= policy.playbook_rate.max_runs:
        return Decision(
            refusal=Refusal.PLAYBOOK_RATE_LIMITED,
            details={
                "runs": snapshot.playbook_runs,
                "max_runs": policy.playbook_rate.max_runs,
                "window": policy.playbook_rate.window,
            },
        )
    return _cooldown(policy, snapshot, now=now)


def _cooldown(policy: SafetyPolicy, snapshot: Snapshot, *, now: float) -> Decision:
    last = snapshot.last_finished_on_target
    if last is None:
        return ALLOWED
    # A run can have finished "after" now: now is read before the writer lock is won, and
    # another replica's clock may be a little ahead. It finished zero seconds ago, not minus a
    # few, or even a cooldown of 0 would refuse.
    elapsed = max(0.0, now - last)
    if elapsed < policy.cooldown:
        return Decision(
            refusal=Refusal.COOLDOWN,
            details={
                "last_finished": last,
                "cooldown": policy.cooldown,
                "remaining": round(policy.cooldown - elapsed, 3),
            },
        )
    return ALLOWED


FAILURES = ("failed", "unverified")
"""The run outcomes a breaker counts as failures."""


def breaker_trips(policy: BreakerPolicy, recent_outcomes: list[str]) -> bool:
    """True when the newest ``failures`` outcomes (newest first) are all failures."""
    window = recent_outcomes[: policy.failures]
    return len(window) == policy.failures and all(o in FAILURES for o in window)


def needs_approval(policy: SafetyPolicy, *, mutating: bool, destructive: bool) -> bool:
    if policy.approval == "always":
        return mutating or destructive
    return policy.approval == "destructive" and destructive
