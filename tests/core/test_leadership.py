"""Who may take a Lease: decided on the follower's own clock, never the holder's renewTime."""

from __future__ import annotations

import pytest

from remediator.core.leadership import LeaseRecord, Move, decide


def record(holder: str | None, duration: float = 15.0) -> LeaseRecord:
    return LeaseRecord(
        holder=holder,
        duration=duration,
        renew_time="2020-01-01T00:00:00.000000Z",
        transitions=3,
        resource_version="42",
    )


@pytest.mark.parametrize(
    ("holder", "unchanged_for", "move"),
    [
        ("me", 1000.0, Move.RENEW),
        (None, 0.0, Move.ACQUIRE),
        ("other", 14.9, Move.WAIT),
        ("other", 15.0, Move.ACQUIRE),
    ],
)
def test_decide(holder: str | None, unchanged_for: float, move: Move) -> None:
    assert decide(record(holder), me="me", unchanged_for=unchanged_for, fallback_duration=5) is move


def test_a_lease_without_a_duration_uses_ours() -> None:
    lease = record("other", duration=0)

    assert decide(lease, me="me", unchanged_for=4.9, fallback_duration=5) is Move.WAIT
    assert decide(lease, me="me", unchanged_for=5.0, fallback_duration=5) is Move.ACQUIRE
