"""Leader election on a Kubernetes Lease, decided without trusting other replicas' clocks.

As client-go's leaderelection does: a follower never compares the holder's ``renewTime`` with
its own clock. It notes *when it saw* the lease record change, and takes the lease only once the
record has stayed unchanged for ``leaseDurationSeconds`` of its own monotonic time.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


@dataclass(frozen=True, slots=True, kw_only=True)
class LeaseRecord:
    holder: str | None
    duration: float
    renew_time: str | None
    transitions: int
    resource_version: str


class Move(enum.StrEnum):
    RENEW = "renew"
    """We hold it: write a new renewTime."""
    ACQUIRE = "acquire"
    """Free, or its holder stopped renewing: take it (one more transition)."""
    WAIT = "wait"
    """Someone else holds it and may still be alive."""


def decide(record: LeaseRecord, *, me: str, unchanged_for: float, fallback_duration: float) -> Move:
    """``unchanged_for``: seconds of our own clock since we last saw the record change."""
    if record.holder == me:
        return Move.RENEW
    if not record.holder:
        return Move.ACQUIRE
    duration = record.duration if record.duration > 0 else fallback_duration
    return Move.ACQUIRE if unchanged_for >= duration else Move.WAIT
