"""Runs, step results and audit records: the durable facts of what remediator did and why."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from remediator.core.alerts import DedupeKey
from remediator.core.safety import SafetyPolicy

T = TypeVar("T")


def is_run_id(text: str) -> bool:
    """Run ids are 32 hex digits (``engine.admitting.RunIds``); anything else in a URL is
    refused before reaching the store."""
    return text.isalnum() and len(text) <= 64


class RunStatus(enum.StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    AWAITING_APPROVAL = "awaiting_approval"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    UNVERIFIED = "unverified"
    CANCELLED = "cancelled"
    INTERRUPTED = "interrupted"
    REJECTED = "rejected"

    @property
    def finished(self) -> bool:
        return self not in {RunStatus.QUEUED, RunStatus.RUNNING, RunStatus.AWAITING_APPROVAL}


class StepOutcome(enum.StrEnum):
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    SKIPPED = "skipped"
    """``when:`` was false."""
    DRY_RUN = "dry_run"
    """A mutating step that only reported what it would do."""
    TIMED_OUT = "timed_out"
    UNKNOWN = "unknown"
    """In flight when its replica died: whether it acted is not known."""


class AuditKind(enum.StrEnum):
    ALERT_RECEIVED = "alert_received"
    ALERT_DUPLICATE = "alert_duplicate"
    ALERT_NOT_RUN = "alert_not_run"
    """No run for this alert, with ``reason`` (no playbook matched, refused by safety, …)."""
    RUN_QUEUED = "run_queued"
    RUN_CANCELLED = "run_cancelled"
    RUN_STARTED = "run_started"
    STEP_FINISHED = "step_finished"
    VERIFICATION_FINISHED = "verification_finished"
    RUN_FINISHED = "run_finished"
    RUN_INTERRUPTED = "run_interrupted"
    PLAYBOOKS_LOADED = "playbooks_loaded"
    PLAYBOOKS_RELOAD_FAILED = "playbooks_reload_failed"
    DAEMON_STARTED = "daemon_started"
    DAEMON_STOPPED = "daemon_stopped"
    STORM_STARTED = "storm_started"
    STORM_ENDED = "storm_ended"
    BREAKER_OPENED = "breaker_opened"
    BREAKER_CLOSED = "breaker_closed"
    PAUSED = "remediation_paused"
    RESUMED = "remediation_resumed"
    APPROVAL_REQUESTED = "approval_requested"
    APPROVAL_DECIDED = "approval_decided"
    ESCALATION_SENT = "escalation_sent"
    RUN_TAKEN_OVER = "run_taken_over"
    """A replica took over a run whose replica stopped renewing its lease."""
    RUN_RESUMED = "run_resumed"
    LEADER_ELECTED = "leader_elected"
    LEADER_LOST = "leader_lost"


@dataclass(frozen=True, slots=True, kw_only=True)
class AuditEvent:
    """One decision or fact, as submitted; the store adds seq, time and the hash chain."""

    kind: AuditKind
    run_id: str | None = None
    fingerprint: str | None = None
    alertname: str | None = None
    playbook: str | None = None
    target: str | None = None
    outcome: str | None = None
    reason: str | None = None
    details: Mapping[str, Any] = field(default_factory=dict)
    """JSON-serialisable; secrets must already be redacted."""


@dataclass(frozen=True, slots=True, kw_only=True)
class AuditRecord:
    seq: int
    time: float
    """Wall-clock epoch seconds."""
    event: AuditEvent
    prev_hash: str
    hash: str


@dataclass(frozen=True, slots=True, kw_only=True)
class NewRun:
    """A candidate run, created in the same transaction that accepts its alert if the safety
    policy allows it there (the store decides, so limits are exact under concurrency)."""

    run_id: str
    playbook: str
    target: str
    dry_run: bool = False
    policy: SafetyPolicy | None = None
    """None: admitted without safety checks (tests of the store alone)."""
    on_storm: NewRun | None = None
    """The platform-level run (``safety.storm.playbook``) to queue, once, if this candidate
    starts a storm; without one the engine sends a storm escalation instead."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Admission:
    """Everything intake decided about one alert, applied atomically if the alert is new.

    If ``key`` was seen before, nothing here is written except an ``alert_duplicate`` record.
    """

    key: DedupeKey
    alert: Mapping[str, Any]
    """The alert in Alertmanager's JSON shape."""
    runs: tuple[NewRun, ...] = ()
    events: tuple[AuditEvent, ...] = ()
    cancel_queued_runs: bool = False
    """A resolved alert: cancel this fingerprint's runs that have not started."""


@dataclass(frozen=True, slots=True, kw_only=True)
class AdmissionResult:
    key: DedupeKey
    duplicate: bool
    created_runs: tuple[str, ...] = ()
    cancelled_runs: tuple[str, ...] = ()
    refused: tuple[tuple[str, str], ...] = ()
    """(playbook, reason) of candidate runs a safeguard refused."""
    storms_started: tuple[StormKey, ...] = ()
    """Storms this admission declared: each gets exactly one escalation."""


@dataclass(frozen=True, slots=True, kw_only=True)
class StormKey:
    playbook: str
    alertname: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Breaker:
    playbook: str
    target: str | None
    """None: the breaker of the whole playbook."""
    opened_at: float
    closes_at: float


@dataclass(frozen=True, slots=True, kw_only=True)
class RunRecord:
    run_id: str
    playbook: str
    target: str
    status: RunStatus
    fingerprint: str
    alertname: str
    alert: Mapping[str, Any]
    created_at: float
    dry_run: bool = False
    started_at: float | None = None
    finished_at: float | None = None
    error: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class StepRecord:
    run_id: str
    index: int
    """Order within the run, across phases."""
    phase: str
    name: str
    action: str
    outcome: StepOutcome
    params: Mapping[str, Any]
    """Rendered, with secrets redacted."""
    attempts: int
    duration: float
    started_at: float
    error: str | None = None
    output: Mapping[str, Any] = field(default_factory=dict)
    """A bounded summary of what the action returned."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Takeover:
    """A run this replica took over: what was done, and what was in flight."""

    run: RunRecord
    previous_owner: str | None
    steps: tuple[StepRecord, ...]
    """As recorded, in order, the in-flight step included (outcome ``unknown``)."""
    in_flight: str | None
    """The name of the step that was in flight, if one was."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Adoption:
    """What one look for orphaned runs gave this replica."""

    queued: tuple[RunRecord, ...] = ()
    taken_over: tuple[Takeover, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class RunFilter:
    since: float | None = None
    until: float | None = None
    playbook: str | None = None
    target: str | None = None
    outcome: str | None = None
    """For runs: the status; for audit: the record's outcome."""
    alertname: str | None = None
    kind: str | None = None
    """Audit records only."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Page(Generic[T]):
    items: tuple[T, ...]
    next_cursor: str | None
    """Opaque; pass back to get the following page. None on the last page."""
