"""A run as a sequence in time: the spans and moments the console draws to scale.

Pure: from a run, its steps and its audit records (and ``now`` for a run still going) to
offsets and widths as fractions of the run's duration, so the template only multiplies.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from remediator.core.runs import AuditKind, AuditRecord, RunRecord, StepRecord

MIN_WIDTH = 0.004
"""A zero-length span (a skipped step, an instant check) still gets a visible sliver."""
TICKS = 5

_MARKED = {
    AuditKind.RUN_QUEUED: "queued",
    AuditKind.RUN_STARTED: "started",
    AuditKind.ESCALATION_SENT: "escalation",
    AuditKind.BREAKER_OPENED: "breaker opened",
    AuditKind.RUN_CANCELLED: "cancelled",
    AuditKind.RUN_INTERRUPTED: "interrupted",
    AuditKind.RUN_FINISHED: "finished",
}


@dataclass(frozen=True, slots=True, kw_only=True)
class Span:
    kind: str
    """``wait`` (queued), ``step``, ``approval`` or ``verification``."""
    label: str
    outcome: str
    start: float
    end: float
    offset: float
    """Start, as a fraction of the timeline from its left edge."""
    width: float
    detail: str = ""
    """Why it failed or was skipped, what was decided."""

    @property
    def duration(self) -> float:
        return self.end - self.start


@dataclass(frozen=True, slots=True, kw_only=True)
class Mark:
    label: str
    at: float
    offset: float
    seq: int
    """The audit record it stands for."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Tick:
    offset: float
    seconds: float
    """Since the timeline's start."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Timeline:
    start: float
    end: float
    spans: tuple[Span, ...]
    marks: tuple[Mark, ...]
    ticks: tuple[Tick, ...]
    finished: bool

    @property
    def duration(self) -> float:
        return self.end - self.start


def build(
    run: RunRecord,
    steps: Sequence[StepRecord],
    audit: Sequence[AuditRecord],
    *,
    now: float,
) -> Timeline:
    """From the run's creation to its end (``now`` while it is unfinished)."""
    start = run.created_at
    finished = run.finished_at is not None
    moments = [run.created_at, run.started_at or start, run.finished_at or now]
    moments += [s.started_at + s.duration for s in steps]
    moments += [r.time for r in audit]
    end = max(moments) if finished else max(now, *moments)
    raw: list[tuple[str, str, str, float, float, str]] = []
    if run.started_at is not None and run.started_at > start:
        raw.append(("wait", "queued", "queued", start, run.started_at, ""))
    for step in steps:
        detail = step.error or ""
        label = f"{step.name} ({step.action})"
        if step.phase != "steps":
            label = f"{step.phase}: {label}"
        raw.append(
            (
                "step",
                label,
                str(step.outcome),
                step.started_at,
                step.started_at + step.duration,
                detail,
            )
        )
    raw.extend(_approvals(audit, end=end))
    raw.extend(_verifications(run, steps, audit))
    spans = tuple(
        Span(
            kind=kind,
            label=label,
            outcome=outcome,
            start=begin,
            end=stop,
            offset=_fraction(begin, start, end),
            width=max(MIN_WIDTH, _fraction(stop, start, end) - _fraction(begin, start, end)),
            detail=detail,
        )
        for kind, label, outcome, begin, stop, detail in sorted(raw, key=lambda s: s[3])
    )
    marks = tuple(
        Mark(
            label=_MARKED[r.event.kind],
            at=r.time,
            offset=_fraction(r.time, start, end),
            seq=r.seq,
        )
        for r in audit
        if r.event.kind in _MARKED
    )
    ticks = tuple(
        Tick(offset=i / (TICKS - 1), seconds=(end - start) * i / (TICKS - 1)) for i in range(TICKS)
    )
    return Timeline(start=start, end=end, spans=spans, marks=marks, ticks=ticks, finished=finished)


def _approvals(
    audit: Sequence[AuditRecord], *, end: float
) -> list[tuple[str, str, str, float, float, str]]:
    """One span per approval asked: from the request to the decision (or to now)."""
    found = []
    asked: AuditRecord | None = None
    for record in audit:
        kind = record.event.kind
        if kind is AuditKind.APPROVAL_REQUESTED:
            asked = record
        elif kind is AuditKind.APPROVAL_DECIDED and asked is not None:
            by = record.event.details.get("by", "?")
            comment = f": {record.event.reason}" if record.event.reason else ""
            found.append(
                (
                    "approval",
                    f"approval of {_step_of(asked)}",
                    record.event.outcome or "decided",
                    asked.time,
                    record.time,
                    f"{record.event.outcome} by {by}{comment}",
                )
            )
            asked = None
    if asked is not None:
        found.append(
            (
                "approval",
                f"approval of {_step_of(asked)}",
                "awaiting_approval",
                asked.time,
                end,
                "waiting for an operator",
            )
        )
    return found


def _verifications(
    run: RunRecord, steps: Sequence[StepRecord], audit: Sequence[AuditRecord]
) -> list[tuple[str, str, str, float, float, str]]:
    """Verification is recorded once, when it ends; it began when the last step before it
    ended (or the run started)."""
    found = []
    for record in audit:
        if record.event.kind is not AuditKind.VERIFICATION_FINISHED:
            continue
        before = [s.started_at + s.duration for s in steps if s.started_at <= record.time]
        begin = max(before, default=run.started_at or run.created_at)
        rounds = record.event.details.get("rounds", "?")
        failing = [
            f"{c.get('check')}: {c.get('error')}"
            for c in record.event.details.get("checks", ())
            if isinstance(c, dict) and not c.get("holds")
        ]
        found.append(
            (
                "verification",
                f"verification, {rounds} round(s)",
                record.event.outcome or "?",
                min(begin, record.time),
                record.time,
                "; ".join(failing),
            )
        )
    return found


def _step_of(record: AuditRecord) -> str:
    return str(record.event.details.get("step", "a step"))


def _fraction(moment: float, start: float, end: float) -> float:
    if end <= start:
        return 0.0
    return min(1.0, max(0.0, (moment - start) / (end - start)))
