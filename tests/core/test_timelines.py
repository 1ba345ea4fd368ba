"""A run's timeline: spans and marks placed to scale between its creation and its end."""

from __future__ import annotations

from typing import Any

import pytest

from remediator.core import timelines
from remediator.core.runs import (
    AuditEvent,
    AuditKind,
    AuditRecord,
    RunRecord,
    RunStatus,
    StepOutcome,
    StepRecord,
)

T0 = 1_800_000_000.0


def run(**changes: Any) -> RunRecord:
    fields: dict[str, Any] = {
        "run_id": "r1",
        "playbook": "store-down",
        "target": "store-s1",
        "status": RunStatus.FAILED,
        "fingerprint": "f",
        "alertname": "StoreDown",
        "alert": {},
        "created_at": T0,
        "started_at": T0 + 1,
        "finished_at": T0 + 10,
    }
    return RunRecord(**{**fields, **changes})


def step(index: int, name: str, start: float, duration: float, **changes: Any) -> StepRecord:
    fields: dict[str, Any] = {
        "run_id": "r1",
        "index": index,
        "phase": "steps",
        "name": name,
        "action": "log",
        "outcome": StepOutcome.SUCCEEDED,
        "params": {},
        "attempts": 1,
        "duration": duration,
        "started_at": T0 + start,
    }
    return StepRecord(**{**fields, **changes})


def record(seq: int, at: float, kind: AuditKind, **event: Any) -> AuditRecord:
    return AuditRecord(
        seq=seq,
        time=T0 + at,
        event=AuditEvent(kind=kind, run_id="r1", **event),
        prev_hash="p",
        hash="h",
    )


def test_spans_are_placed_to_scale_from_creation_to_the_end() -> None:
    steps = [
        step(0, "diagnose", 1, 3),
        step(1, "restart", 4, 0, outcome=StepOutcome.FAILED, error="HTTP 404"),
    ]
    timeline = timelines.build(run(), steps, [record(9, 10, AuditKind.RUN_FINISHED)], now=T0 + 99)

    assert (timeline.start, timeline.end, timeline.finished) == (T0, T0 + 10, True)
    assert [(s.kind, s.label, s.offset) for s in timeline.spans] == [
        ("wait", "queued", 0.0),
        ("step", "diagnose (log)", 0.1),
        ("step", "restart (log)", 0.4),
    ]
    assert [s.width for s in timeline.spans] == pytest.approx([0.1, 0.3, timelines.MIN_WIDTH])
    failed = timeline.spans[2]
    assert (failed.outcome, failed.detail) == ("failed", "HTTP 404")
    assert [(m.label, m.offset, m.seq) for m in timeline.marks] == [("finished", 1.0, 9)]
    assert [t.seconds for t in timeline.ticks] == [0, 2.5, 5, 7.5, 10]


def test_an_unfinished_run_reaches_to_now_and_its_approval_is_still_open() -> None:
    audit = [
        record(3, 2, AuditKind.APPROVAL_REQUESTED, details={"step": "delete_pvc", "timeout": 60}),
    ]
    timeline = timelines.build(
        run(status=RunStatus.AWAITING_APPROVAL, finished_at=None), [], audit, now=T0 + 20
    )

    assert (timeline.end, timeline.finished) == (T0 + 20, False)
    approval = timeline.spans[-1]
    assert (approval.kind, approval.label, approval.outcome) == (
        "approval",
        "approval of delete_pvc",
        "awaiting_approval",
    )
    assert (approval.offset, approval.width) == (0.1, 0.9)


def test_a_decided_approval_and_a_verification_are_spans_of_their_own() -> None:
    audit = [
        record(3, 2, AuditKind.APPROVAL_REQUESTED, details={"step": "restart"}),
        record(
            4,
            5,
            AuditKind.APPROVAL_DECIDED,
            outcome="approved",
            reason="go",
            details={"by": "console:alice"},
        ),
        record(
            6,
            9,
            AuditKind.VERIFICATION_FINISHED,
            outcome="failed",
            details={"rounds": 2, "checks": [{"check": "up", "holds": False, "error": "0"}]},
        ),
    ]
    timeline = timelines.build(run(), [step(0, "restart", 5, 1)], audit, now=T0 + 99)
    by_kind = {s.kind: s for s in timeline.spans}

    assert (by_kind["approval"].start, by_kind["approval"].end) == (T0 + 2, T0 + 5)
    assert by_kind["approval"].detail == "approved by console:alice: go"
    verification = by_kind["verification"]
    # It began when the last step before it ended.
    assert (verification.start, verification.end) == (T0 + 6, T0 + 9)
    assert (verification.label, verification.detail) == ("verification, 2 round(s)", "up: 0")
