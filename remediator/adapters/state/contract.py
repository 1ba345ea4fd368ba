"""The state store's contract: what the engine, the web layer and the CLI may ask of it.

Two backends implement it on the same transactions (:mod:`.transactions`): SQLite, embedded, for
one replica (:mod:`.sqlite`), and PostgreSQL, for several replicas on one state (:mod:`.postgres`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from typing import Any, Protocol

from remediator.core import auditing, errors, runs, safety


class StateError(errors.RemediatorError):
    """The state store failed or refused to read or write; the cause is kept as ``__cause__``."""


class RunStateError(StateError):
    """A run does not exist, or its status does not allow the requested change."""


class RunLostError(RunStateError):
    """The run is owned by another replica now (it took the run over); stop writing to it."""


class UnstorableError(StateError):
    """A value cannot be written (not JSON): a bug in what was handed over, not an outage."""


class TargetBusyError(StateError):
    """A run cannot start yet: another run on its target is in progress (on any replica)."""


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class RunDetail:
    run: runs.RunRecord
    steps: tuple[runs.StepRecord, ...]
    """In step order."""
    audit: tuple[runs.AuditRecord, ...]
    """Every audit record naming this run, in chain order."""


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class SafetyStatus:
    paused: Mapping[str, Any] | None
    """``{"by", "reason", "since"}`` while paused."""
    breakers: tuple[runs.Breaker, ...]
    storms: tuple[runs.StormKey, ...]


class StateStore(Protocol):
    async def open(self) -> None: ...

    async def close(self) -> None: ...

    async def admit(
        self,
        admissions: Sequence[runs.Admission],
        *,
        now: float,
        known_targets: int | None = None,
        owner: str | None = None,
    ) -> list[runs.AdmissionResult]:
        """Apply a whole webhook's admissions atomically; durable once this returns."""

    async def claim_run(
        self,
        run_id: str,
        *,
        now: float,
        events: Sequence[runs.AuditEvent] = (),
        policy: safety.SafetyPolicy | None = None,
        policy_for: Callable[[str], safety.SafetyPolicy | None] | None = None,
        record_start: bool = False,
        owner: str | None = None,
    ) -> runs.RunRecord | None:
        """QUEUED → RUNNING, or None if the run is no longer queued (e.g. cancelled)."""

    async def finish_run(
        self,
        run_id: str,
        status: runs.RunStatus,
        *,
        now: float,
        error: str | None = None,
        events: Sequence[runs.AuditEvent] = (),
        breaker: safety.BreakerPolicy | None = None,
        owner: str | None = None,
        step: runs.StepRecord | None = None,
    ) -> list[runs.Breaker]: ...

    async def set_run_status(
        self,
        run_id: str,
        status: runs.RunStatus,
        *,
        now: float,
        events: Sequence[runs.AuditEvent] = (),
    ) -> None: ...

    async def record_step(
        self,
        step: runs.StepRecord,
        *,
        events: Sequence[runs.AuditEvent] = (),
        now: float | None = None,
        owner: str | None = None,
    ) -> None: ...

    async def append_audit(
        self, events: Sequence[runs.AuditEvent], *, now: float
    ) -> list[runs.AuditRecord]: ...

    async def set_paused(self, paused: bool, *, by: str, reason: str, now: float) -> bool: ...

    async def ping(self) -> None: ...

    async def is_paused(self) -> bool: ...

    async def reset_breakers(
        self, playbook: str, target: str | None, *, by: str, now: float
    ) -> int: ...

    async def safety_status(self, *, now: float) -> SafetyStatus: ...

    async def preview_admission(
        self,
        run: runs.NewRun,
        policy: safety.SafetyPolicy,
        alertname: str,
        *,
        now: float,
        known_targets: int | None = None,
    ) -> safety.Decision: ...

    async def begin_step(
        self, run_id: str, step: Mapping[str, Any] | None, *, owner: str | None = None
    ) -> str | None: ...

    async def heartbeat(
        self,
        replica_id: str,
        *,
        host: str,
        now: float,
        ttl: float,
        known_targets: int | None = None,
    ) -> int | None: ...

    async def release_replica(self, replica_id: str) -> int: ...

    async def adopt_orphans(
        self, replica_id: str, *, now: float, everyone_else: bool = False, starting: bool = False
    ) -> runs.Adoption: ...

    async def disown(self, run_id: str, owner: str) -> bool: ...

    async def decide_approval(self, run_id: str, decision: Mapping[str, Any]) -> bool: ...

    async def approval_of(self, run_id: str) -> dict[str, Any] | None: ...

    async def queued_runs(self) -> list[runs.RunRecord]: ...

    async def get_run(self, run_id: str) -> RunDetail | None: ...

    async def list_runs(
        self, flt: runs.RunFilter, *, limit: int = 50, cursor: str | None = None
    ) -> runs.Page[runs.RunRecord]: ...

    async def query_audit(
        self, flt: runs.RunFilter, *, limit: int = 100, cursor: str | None = None
    ) -> runs.Page[runs.AuditRecord]: ...

    # A plain def: implementations are async generators, which are called without awaiting.
    def audit_records(
        self, *, after_seq: int = 0, batch: int = 1000
    ) -> AsyncIterator[runs.AuditRecord]: ...

    async def verify_audit(self) -> auditing.ChainReport: ...

    async def get_setting(self, key: str) -> str | None: ...

    async def put_setting(self, key: str, value: str | None) -> None: ...
