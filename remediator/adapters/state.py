"""The daemon's durable state: dedupe keys, runs, steps, settings and the hash-chained audit log.

:class:`StateStore` is the narrow contract the engine and the web layer use; it is small enough
for a server database to implement later. :class:`SqliteStateStore` implements it on an embedded
SQLite file in WAL mode.

Every SQLite call runs on one dedicated worker thread: that single writer is what keeps the audit
hash chain linear (the head is read and extended in the same transaction), and it keeps blocking
file I/O off the event loop. Each public method is one transaction. Time is always passed in as
``now`` (wall-clock epoch seconds); the injected ``clock`` is only a default where a caller has no
``now`` of its own.

Other processes (``remediator audit``) read the same file concurrently through
:func:`open_readonly`; WAL lets them do so without blocking the daemon's writes.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import concurrent.futures
import contextlib
import dataclasses
import functools
import json
import os
import pathlib
import sqlite3
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from types import TracebackType
from typing import Any, NoReturn, Protocol, Self, TypeVar

from remediator.adapters import safeguards
from remediator.core import auditing, errors, planning, runs, safety

T = TypeVar("T")

# Schema history. Entry N takes a database from user_version N to N+1; entries are never edited
# once released, only appended, so every existing file can be brought forward step by step.
MIGRATIONS: tuple[str, ...] = (
    """
    -- One row per dedupe key ever accepted: the row's existence is the "seen before" fact.
    CREATE TABLE alerts (
        fingerprint TEXT NOT NULL,
        starts_at TEXT NOT NULL,
        status TEXT NOT NULL,
        alert TEXT NOT NULL,
        received_at REAL NOT NULL,
        PRIMARY KEY (fingerprint, starts_at, status)
    ) WITHOUT ROWID;

    -- id orders runs for keyset pagination; run_id is the public name.
    CREATE TABLE runs (
        id INTEGER PRIMARY KEY,
        run_id TEXT NOT NULL UNIQUE,
        fingerprint TEXT NOT NULL,
        alert_starts_at TEXT NOT NULL,
        alert_status TEXT NOT NULL,
        alertname TEXT NOT NULL,
        playbook TEXT NOT NULL,
        target TEXT NOT NULL,
        status TEXT NOT NULL,
        dry_run INTEGER NOT NULL,
        created_at REAL NOT NULL,
        started_at REAL,
        finished_at REAL,
        error TEXT,
        FOREIGN KEY (fingerprint, alert_starts_at, alert_status)
            REFERENCES alerts (fingerprint, starts_at, status)
    );
    CREATE INDEX runs_by_created ON runs (created_at);
    CREATE INDEX runs_by_playbook ON runs (playbook, created_at);
    CREATE INDEX runs_by_target ON runs (target, created_at);
    CREATE INDEX runs_by_status ON runs (status, created_at);
    CREATE INDEX runs_by_fingerprint_status ON runs (fingerprint, status);
    CREATE INDEX runs_by_alert ON runs (fingerprint, alert_starts_at, alert_status);

    CREATE TABLE steps (
        run_id TEXT NOT NULL REFERENCES runs (run_id),
        idx INTEGER NOT NULL,
        phase TEXT NOT NULL,
        name TEXT NOT NULL,
        action TEXT NOT NULL,
        outcome TEXT NOT NULL,
        params TEXT NOT NULL,
        attempts INTEGER NOT NULL,
        duration REAL NOT NULL,
        started_at REAL NOT NULL,
        error TEXT,
        output TEXT NOT NULL,
        PRIMARY KEY (run_id, idx)
    ) WITHOUT ROWID;

    -- seq is assigned by the store (head + 1), never by AUTOINCREMENT: the hash covers it.
    CREATE TABLE audit (
        seq INTEGER PRIMARY KEY,
        time REAL NOT NULL,
        kind TEXT NOT NULL,
        run_id TEXT,
        fingerprint TEXT,
        alertname TEXT,
        playbook TEXT,
        target TEXT,
        outcome TEXT,
        reason TEXT,
        details TEXT NOT NULL,
        prev_hash TEXT NOT NULL,
        hash TEXT NOT NULL
    );
    CREATE INDEX audit_by_time ON audit (time);
    CREATE INDEX audit_by_run ON audit (run_id);
    CREATE INDEX audit_by_playbook ON audit (playbook);
    CREATE INDEX audit_by_target ON audit (target);
    -- The hash chain detects tampering; these make accidental edits impossible as well.
    CREATE TRIGGER audit_no_update BEFORE UPDATE ON audit
    BEGIN SELECT RAISE(ABORT, 'audit log is append-only'); END;
    CREATE TRIGGER audit_no_delete BEFORE DELETE ON audit
    BEGIN SELECT RAISE(ABORT, 'audit log is append-only'); END;

    CREATE TABLE settings (
        key TEXT PRIMARY KEY,
        value TEXT NOT NULL
    ) WITHOUT ROWID;
    """,
    safeguards.MIGRATION,
)
SCHEMA_VERSION = len(MIGRATIONS)

DEFAULT_BUSY_TIMEOUT = 5.0
"""Seconds to wait for another connection's lock (a CLI reader's checkpoint, a second store)."""
VERIFY_BATCH = 1000

_UNFINISHED = tuple(str(s) for s in runs.RunStatus if not s.finished)
_RUN_COLUMNS = (
    "r.id, r.run_id, r.playbook, r.target, r.status, r.fingerprint, r.alertname, a.alert,"
    " r.created_at, r.dry_run, r.started_at, r.finished_at, r.error"
)
_RUNS_JOINED = (
    "runs r JOIN alerts a ON a.fingerprint = r.fingerprint"
    " AND a.starts_at = r.alert_starts_at AND a.status = r.alert_status"
)
_AUDIT_COLUMNS = (
    "seq, time, kind, run_id, fingerprint, alertname, playbook, target, outcome, reason,"
    " details, prev_hash, hash"
)


class StateError(errors.RemediatorError):
    """The state store failed or refused to read or write; the cause is kept as ``__cause__``."""


class RunStateError(StateError):
    """A run does not exist, or its status does not allow the requested change."""


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
    ) -> None: ...

    async def append_audit(
        self, events: Sequence[runs.AuditEvent], *, now: float
    ) -> list[runs.AuditRecord]: ...

    async def set_paused(self, paused: bool, *, by: str, reason: str, now: float) -> bool: ...

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

    async def queued_runs(self) -> list[runs.RunRecord]: ...

    async def interrupt_unfinished(self, *, now: float, reason: str) -> list[runs.RunRecord]: ...

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


class SqliteStateStore:
    """:class:`StateStore` on one SQLite file; use :func:`open_readonly` for other processes."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        readonly: bool = False,
        busy_timeout: float = DEFAULT_BUSY_TIMEOUT,
        clock: Callable[[], float] = time.time,
        on_append: Callable[[runs.AuditRecord], None] | None = None,
    ) -> None:
        self.path = pathlib.Path(path)
        self._on_append = on_append
        self.readonly = readonly
        self._busy_timeout = busy_timeout
        self._clock = clock
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        # Touched only on the worker thread (sqlite3's check_same_thread enforces it).
        self._conn: _Connection | None = None

    async def __aenter__(self) -> Self:
        await self.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # Lifecycle

    async def open(self) -> None:
        if self._executor is not None:
            raise StateError(f"state store {self.path} is already open")
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="remediator-state"
        )
        try:
            await self._call(self._connect)
        except BaseException:
            self._executor.shutdown(wait=False)
            self._executor = None
            raise

    async def close(self) -> None:
        if self._executor is None:
            return
        try:
            await self._call(self._disconnect)
        finally:
            # The worker is idle now (the close job has finished), so this join is immediate.
            self._executor.shutdown(wait=True)
            self._executor = None

    # Intake

    async def admit(
        self,
        admissions: Sequence[runs.Admission],
        *,
        now: float,
        known_targets: int | None = None,
    ) -> list[runs.AdmissionResult]:
        """Dedupe, then create each candidate run its safety policy allows (one transaction)."""
        batch = tuple(admissions)

        def admit(conn: sqlite3.Connection) -> list[runs.AdmissionResult]:
            _append(conn, safeguards.expire_breakers(conn, now=now), now)
            return [self._admit_one(conn, a, now, known_targets) for a in batch]

        return await self._transact("admit", admit)

    # Runs

    async def claim_run(
        self,
        run_id: str,
        *,
        now: float,
        events: Sequence[runs.AuditEvent] = (),
        policy: safety.SafetyPolicy | None = None,
        policy_for: Callable[[str], safety.SafetyPolicy | None] | None = None,
        record_start: bool = False,
    ) -> runs.RunRecord | None:
        """QUEUED → RUNNING; ``events`` (and ``run_started`` with ``record_start``) are written
        only if it wins, in the same transaction.

        With a ``policy`` (or ``policy_for``, given the run's playbook name), the start is
        re-checked: pause, breaker and cooldown may have changed while the run waited. A
        refused run becomes CANCELLED with the reason, audited.
        """
        pending = tuple(events)

        def claim(conn: sqlite3.Connection) -> runs.RunRecord | None:
            queued = conn.execute(
                "SELECT playbook, target FROM runs WHERE run_id = ? AND status = ?",
                (run_id, str(runs.RunStatus.QUEUED)),
            ).fetchone()
            if queued is None:
                return None
            gate = (
                policy
                if policy is not None
                else (policy_for(queued[0]) if policy_for is not None else None)
            )
            if gate is not None:
                _append(conn, safeguards.expire_breakers(conn, now=now), now)
                snapshot = safety.Snapshot(
                    paused=safeguards.paused(conn) is not None,
                    breaker_open=safeguards.breaker_open(conn, queued[0], queued[1], now=now),
                    last_finished_on_target=safeguards.last_finished_on_target(conn, queued[1]),
                )
                decision = safety.decide_start(gate, snapshot, now=now)
                if decision.refusal is not None:
                    _cancel_run(
                        conn, run_id, str(decision.refusal), now, details=dict(decision.details)
                    )
                    return None
            # The status condition is the lock: of two concurrent claims only one matches.
            claimed = conn.execute(
                "UPDATE runs SET status = ?, started_at = ? WHERE run_id = ? AND status = ?",
                (str(runs.RunStatus.RUNNING), now, run_id, str(runs.RunStatus.QUEUED)),
            ).rowcount
            if not claimed:
                return None
            record = _fetch_run(conn, run_id)
            started = (
                [
                    dataclasses.replace(
                        _run_event(runs.AuditKind.RUN_STARTED, record, ""),
                        reason=None,
                        details={"dry_run": record.dry_run},
                    )
                ]
                if record_start
                else []
            )
            _append(conn, [*started, *pending], now)
            return record

        return await self._transact("claim_run", claim)

    async def finish_run(
        self,
        run_id: str,
        status: runs.RunStatus,
        *,
        now: float,
        error: str | None = None,
        events: Sequence[runs.AuditEvent] = (),
        breaker: safety.BreakerPolicy | None = None,
    ) -> list[runs.Breaker]:
        """Any unfinished status → ``status`` (a finished one); else :class:`RunStateError`.

        A run that already finished keeps its first outcome: for example one that was marked
        interrupted at shutdown while its task was still winding down. With a ``breaker``
        policy, returns the breakers this outcome opened (audited here, escalated by the caller).
        """
        if not status.finished:
            raise ValueError(f"finish_run needs a finished status, not {status}")
        pending = tuple(events)

        def finish(conn: sqlite3.Connection) -> list[runs.Breaker]:
            _transition(
                conn,
                run_id,
                to=status,
                allowed_from=_UNFINISHED,
                assignments="finished_at = ?, error = ?",
                values=(now, error),
            )
            _append(conn, pending, now)
            if breaker is None or status not in safeguards.JUDGED_STATUSES:
                return []
            # Close expired breakers first, or one past its time would still block a new trip.
            _append(conn, safeguards.expire_breakers(conn, now=now), now)
            run = _fetch_run(conn, run_id)
            opened = safeguards.trip_breakers(conn, run.playbook, run.target, breaker, now=now)
            _append(
                conn,
                [
                    runs.AuditEvent(
                        kind=runs.AuditKind.BREAKER_OPENED,
                        run_id=run_id,
                        playbook=b.playbook,
                        target=b.target,
                        outcome="open",
                        reason=f"{breaker.failures}_consecutive_failures",
                        details={
                            "closes_at": b.closes_at,
                            "scope": "target" if b.target else "playbook",
                        },
                    )
                    for b in opened
                ],
                now,
            )
            return opened

        return await self._transact("finish_run", finish)

    async def set_run_status(
        self,
        run_id: str,
        status: runs.RunStatus,
        *,
        now: float,
        events: Sequence[runs.AuditEvent] = (),
    ) -> None:
        """Move a started run between RUNNING and AWAITING_APPROVAL."""
        movable = (str(runs.RunStatus.RUNNING), str(runs.RunStatus.AWAITING_APPROVAL))
        if status not in movable:
            raise ValueError(
                f"set_run_status moves runs between {', '.join(movable)}, not to {status}; "
                "use claim_run or finish_run"
            )
        pending = tuple(events)

        def move(conn: sqlite3.Connection) -> None:
            _transition(conn, run_id, to=status, allowed_from=movable)
            _append(conn, pending, now)

        await self._transact("set_run_status", move)

    async def record_step(
        self,
        step: runs.StepRecord,
        *,
        events: Sequence[runs.AuditEvent] = (),
        now: float | None = None,
    ) -> None:
        """Store a finished step; ``now`` (the events' time) defaults to the store's clock."""
        when = self._clock() if now is None else now
        pending = tuple(events)

        def record(conn: sqlite3.Connection) -> None:
            conn.execute(
                "INSERT INTO steps (run_id, idx, phase, name, action, outcome, params, attempts,"
                " duration, started_at, error, output) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    step.run_id,
                    step.index,
                    step.phase,
                    step.name,
                    step.action,
                    str(step.outcome),
                    _dumps(step.params),
                    step.attempts,
                    step.duration,
                    step.started_at,
                    step.error,
                    _dumps(step.output),
                ),
            )
            _append(conn, pending, when)

        await self._transact("record_step", record)

    # Safety envelope

    async def set_paused(self, paused: bool, *, by: str, reason: str, now: float) -> bool:
        """The kill switch; durable, audited. False when it was already in that state."""

        def switch(conn: sqlite3.Connection) -> bool:
            current = safeguards.paused(conn)
            if (current is not None) == paused:
                return False
            safeguards.set_paused(
                conn, {"by": by, "reason": reason, "since": now} if paused else None
            )
            kind = runs.AuditKind.PAUSED if paused else runs.AuditKind.RESUMED
            _append(
                conn,
                [
                    runs.AuditEvent(
                        kind=kind,
                        outcome="paused" if paused else "resumed",
                        reason=reason,
                        details={
                            "by": by,
                            **({"paused_since": current["since"]} if current else {}),
                        },
                    )
                ],
                now,
            )
            return True

        return await self._transact("set_paused", switch)

    async def is_paused(self) -> bool:
        """Cheap enough to ask before every mutating step."""
        return await self._transact(
            "is_paused", lambda conn: safeguards.paused(conn) is not None, write=False
        )

    async def reset_breakers(
        self, playbook: str, target: str | None, *, by: str, now: float
    ) -> int:
        """Close a playbook's open breakers (one target's, or all); audited with who did it."""

        def reset(conn: sqlite3.Connection) -> int:
            events = safeguards.close_breakers(conn, playbook, target, by=by, now=now)
            _append(conn, events, now)
            return len(events)

        return await self._transact("reset_breakers", reset)

    async def safety_status(self, *, now: float) -> SafetyStatus:
        """Pause, open breakers and active storms, for the API, the CLI and the gauges."""

        def status(conn: sqlite3.Connection) -> SafetyStatus:
            if not self.readonly:
                _append(conn, safeguards.expire_breakers(conn, now=now), now)
            return SafetyStatus(
                paused=safeguards.paused(conn),
                breakers=tuple(safeguards.open_breakers(conn, now=now)),
                storms=tuple(safeguards.active_storms(conn)),
            )

        return await self._transact("safety_status", status, write=not self.readonly)

    async def preview_admission(
        self,
        run: runs.NewRun,
        policy: safety.SafetyPolicy,
        alertname: str,
        *,
        now: float,
        known_targets: int | None = None,
    ) -> safety.Decision:
        """The decision admit() would take for this candidate now, writing nothing."""

        def preview(conn: sqlite3.Connection) -> safety.Decision:
            snapshot = safeguards.snapshot(
                conn, run, policy, alertname, now=now, known_targets=known_targets
            )
            if policy.storm is None:
                return safety.decide_admission(policy, snapshot, now=now)
            seen = conn.execute(
                "SELECT 1 FROM sightings WHERE playbook = ? AND alertname = ? AND target = ?"
                " AND seen_at >= ?",
                (run.playbook, alertname, run.target, now - policy.storm.window),
            ).fetchone()
            if seen is None:  # admit() would record this sighting first
                snapshot = dataclasses.replace(snapshot, storm_targets=snapshot.storm_targets + 1)
            return safety.decide_admission(policy, snapshot, now=now)

        return await self._transact("preview_admission", preview, write=False)

    async def queued_runs(self) -> list[runs.RunRecord]:
        """Oldest first: the order the daemon re-enqueues them in after a restart."""

        def select(conn: sqlite3.Connection) -> list[runs.RunRecord]:
            rows = conn.execute(
                f"SELECT {_RUN_COLUMNS} FROM {_RUNS_JOINED}"  # noqa: S608 -- constant fragments
                " WHERE r.status = ? ORDER BY r.created_at, r.id",
                (str(runs.RunStatus.QUEUED),),
            ).fetchall()
            return [_decode_run(row) for row in rows]

        return await self._transact("queued_runs", select, write=False)

    async def interrupt_unfinished(self, *, now: float, reason: str) -> list[runs.RunRecord]:
        """RUNNING or AWAITING_APPROVAL → INTERRUPTED, one ``run_interrupted`` record each.

        A run awaiting approval is interrupted too: the task that held its rendered context is
        gone, and resuming half a run after a restart is not something to do unasked.
        Queued runs are re-enqueued, not interrupted.
        """

        def interrupt(conn: sqlite3.Connection) -> list[runs.RunRecord]:
            ids = [
                row[0]
                for row in conn.execute(
                    "SELECT run_id FROM runs WHERE status IN (?, ?) ORDER BY created_at, id",
                    (str(runs.RunStatus.RUNNING), str(runs.RunStatus.AWAITING_APPROVAL)),
                )
            ]
            interrupted = []
            for run_id in ids:
                conn.execute(
                    "UPDATE runs SET status = ?, finished_at = ?, error = ? WHERE run_id = ?",
                    (str(runs.RunStatus.INTERRUPTED), now, reason, run_id),
                )
                record = _fetch_run(conn, run_id)
                _append(conn, [_run_event(runs.AuditKind.RUN_INTERRUPTED, record, reason)], now)
                interrupted.append(record)
            return interrupted

        return await self._transact("interrupt_unfinished", interrupt)

    async def get_run(self, run_id: str) -> RunDetail | None:
        def select(conn: sqlite3.Connection) -> RunDetail | None:
            row = conn.execute(
                f"SELECT {_RUN_COLUMNS} FROM {_RUNS_JOINED} WHERE r.run_id = ?",  # noqa: S608
                (run_id,),
            ).fetchone()
            if row is None:
                return None
            steps = conn.execute(
                "SELECT * FROM steps WHERE run_id = ? ORDER BY idx", (run_id,)
            ).fetchall()
            audit = conn.execute(
                f"SELECT {_AUDIT_COLUMNS} FROM audit WHERE run_id = ? ORDER BY seq",  # noqa: S608
                (run_id,),
            ).fetchall()
            return RunDetail(
                run=_decode_run(row),
                steps=tuple(_decode_step(s) for s in steps),
                audit=tuple(_decode_audit(a) for a in audit),
            )

        return await self._transact("get_run", select, write=False)

    async def list_runs(
        self, flt: runs.RunFilter, *, limit: int = 50, cursor: str | None = None
    ) -> runs.Page[runs.RunRecord]:
        """Newest first. ``since`` is inclusive and ``until`` exclusive, on ``created_at``.

        ``flt.outcome`` matches the run's status; ``flt.kind`` does not apply to runs.
        """
        _check_limit(limit)
        clauses, params = _equalities(
            "r.",
            playbook=flt.playbook,
            target=flt.target,
            status=flt.outcome,
            alertname=flt.alertname,
        )
        _window(clauses, params, "r.created_at", flt)
        if cursor is not None:
            created_at, row_id = _decode_run_cursor(cursor)
            # Keyset, not OFFSET: pages stay stable while new runs arrive at the head.
            clauses.append("(r.created_at, r.id) < (?, ?)")
            params.extend((created_at, row_id))
        where = " AND ".join(clauses) or "1"

        def select(conn: sqlite3.Connection) -> runs.Page[runs.RunRecord]:
            rows = conn.execute(
                f"SELECT {_RUN_COLUMNS} FROM {_RUNS_JOINED} WHERE {where}"  # noqa: S608 -- placeholders only
                " ORDER BY r.created_at DESC, r.id DESC LIMIT ?",
                (*params, limit + 1),
            ).fetchall()
            page = rows[:limit]
            next_cursor = None
            if len(rows) > limit:
                last = page[-1]
                next_cursor = _encode_run_cursor(last["created_at"], last["id"])
            return runs.Page(items=tuple(_decode_run(r) for r in page), next_cursor=next_cursor)

        return await self._transact("list_runs", select, write=False)

    # Audit

    async def append_audit(
        self, events: Sequence[runs.AuditEvent], *, now: float
    ) -> list[runs.AuditRecord]:
        pending = tuple(events)
        return await self._transact("append_audit", lambda conn: _append(conn, pending, now))

    async def query_audit(
        self, flt: runs.RunFilter, *, limit: int = 100, cursor: str | None = None
    ) -> runs.Page[runs.AuditRecord]:
        """Oldest first by seq. ``since`` is inclusive and ``until`` exclusive, on ``time``."""
        _check_limit(limit)
        clauses, params = _equalities(
            "",
            playbook=flt.playbook,
            target=flt.target,
            outcome=flt.outcome,
            alertname=flt.alertname,
            kind=flt.kind,
        )
        _window(clauses, params, "time", flt)
        if cursor is not None:
            clauses.append("seq > ?")
            params.append(_decode_seq_cursor(cursor))
        where = " AND ".join(clauses) or "1"

        def select(conn: sqlite3.Connection) -> runs.Page[runs.AuditRecord]:
            rows = conn.execute(
                f"SELECT {_AUDIT_COLUMNS} FROM audit WHERE {where}"  # noqa: S608 -- placeholders only
                " ORDER BY seq LIMIT ?",
                (*params, limit + 1),
            ).fetchall()
            page = rows[:limit]
            next_cursor = str(page[-1]["seq"]) if len(rows) > limit else None
            return runs.Page(items=tuple(_decode_audit(r) for r in page), next_cursor=next_cursor)

        return await self._transact("query_audit", select, write=False)

    async def audit_records(
        self, *, after_seq: int = 0, batch: int = 1000
    ) -> AsyncIterator[runs.AuditRecord]:
        """The chain from ``after_seq`` on, fetched ``batch`` records per worker job.

        Writers interleave between batches; records appended meanwhile are included.
        """
        _check_limit(batch)
        after = after_seq
        while True:
            rows = await self._transact(
                "audit_records",
                functools.partial(_audit_batch, after=after, limit=batch),
                write=False,
            )
            for row in rows:
                yield _decode_audit(row)
            if len(rows) < batch:
                return
            after = rows[-1]["seq"]

    async def verify_audit(self) -> auditing.ChainReport:
        """Re-hash the whole chain without stalling the loop or the writer.

        Hashing runs on a helper thread that pulls batches through the worker thread, so
        webhooks keep being admitted between batches even on a very long log.
        """
        self._require_open()
        stop = threading.Event()
        try:
            return await asyncio.to_thread(self._verify_blocking, stop)
        finally:
            # On cancellation the helper thread stops at its next batch.
            stop.set()

    # Settings

    async def get_setting(self, key: str) -> str | None:
        def select(conn: sqlite3.Connection) -> str | None:
            row = conn.execute("SELECT value FROM settings WHERE key = ?", (key,)).fetchone()
            return None if row is None else str(row[0])

        return await self._transact("get_setting", select, write=False)

    async def put_setting(self, key: str, value: str | None) -> None:
        """Store ``value`` under ``key``; None removes the key."""

        def put(conn: sqlite3.Connection) -> None:
            if value is None:
                conn.execute("DELETE FROM settings WHERE key = ?", (key,))
            else:
                conn.execute(
                    "INSERT INTO settings (key, value) VALUES (?, ?)"
                    " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                    (key, value),
                )

        await self._transact("put_setting", put)

    # Worker-thread plumbing

    def _require_open(self) -> concurrent.futures.ThreadPoolExecutor:
        if self._executor is None:
            raise StateError(f"state store {self.path} is not open")
        return self._executor

    async def _call(self, job: Callable[[], T]) -> T:
        executor = self._require_open()
        return await asyncio.get_running_loop().run_in_executor(executor, job)

    async def _transact(
        self, operation: str, job: Callable[[sqlite3.Connection], T], *, write: bool = True
    ) -> T:
        # If the awaiting task is cancelled, the job still runs to its end on the worker: a
        # cancelled admit may have committed. Callers treat cancellation as "outcome unknown".
        result, appended = await self._call(
            lambda: self._in_transaction(operation, job, write=write)
        )
        # Called on the event loop after the commit, so the hook sees only durable records and
        # structlog's context variables of the calling task.
        if self._on_append is not None:
            for record in appended:
                self._on_append(record)
        return result

    def _in_transaction(
        self, operation: str, job: Callable[[sqlite3.Connection], T], *, write: bool
    ) -> tuple[T, list[runs.AuditRecord]]:
        conn = self._conn
        if conn is None:
            raise StateError(f"state store {self.path} is not open")
        conn.appended = []
        try:
            # IMMEDIATE takes the write lock up front, so a second store on the same file waits
            # (busy_timeout) instead of failing on lock upgrade mid-transaction. Reads use a
            # deferred transaction for a consistent snapshot across their queries.
            conn.execute("BEGIN IMMEDIATE" if write else "BEGIN")
            try:
                result = job(conn)
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
        except sqlite3.Error as e:
            raise StateError(f"{operation} failed on {self.path}: {e}") from e
        return result, conn.appended

    def _connect(self) -> None:
        mode = "ro" if self.readonly else "rwc"
        uri = f"{self.path.resolve().as_uri()}?mode={mode}"
        try:
            conn = sqlite3.connect(uri, uri=True, isolation_level=None, factory=_Connection)
        except sqlite3.Error as e:
            raise StateError(f"cannot open state store {self.path}: {e}") from e
        try:
            conn.row_factory = sqlite3.Row
            conn.execute(f"PRAGMA busy_timeout = {int(self._busy_timeout * 1000)}")
            conn.execute("PRAGMA foreign_keys = ON")
            if self.readonly:
                conn.execute("PRAGMA query_only = ON")
                _check_schema(conn, self.path)
            else:
                (journal,) = conn.execute("PRAGMA journal_mode = WAL").fetchone()
                if journal != "wal":
                    raise StateError(f"{self.path}: cannot use WAL mode (got {journal!r})")
                # NORMAL in WAL mode: a commit survives a crash of the daemon; only an OS crash
                # or power loss can drop the last commits (Alertmanager re-sends those alerts).
                conn.execute("PRAGMA synchronous = NORMAL")
                _migrate(conn, self.path)
        except sqlite3.Error as e:
            conn.close()
            raise StateError(f"cannot open state store {self.path}: {e}") from e
        except BaseException:
            conn.close()
            raise
        self._conn = conn

    def _disconnect(self) -> None:
        conn, self._conn = self._conn, None
        if conn is None:
            return
        try:
            if not self.readonly:
                # Recommended on close: refreshes planner statistics for long-lived files.
                conn.execute("PRAGMA optimize")
        except sqlite3.Error as e:
            raise StateError(f"closing {self.path} failed: {e}") from e
        finally:
            conn.close()

    def _admit_one(
        self,
        conn: sqlite3.Connection,
        admission: runs.Admission,
        now: float,
        known_targets: int | None,
    ) -> runs.AdmissionResult:
        key = admission.key
        key_values = (key.fingerprint, key.starts_at, str(key.status))
        alertname = _alertname(admission.alert)
        seen = conn.execute(
            "SELECT received_at FROM alerts WHERE fingerprint = ? AND starts_at = ? AND status = ?",
            key_values,
        ).fetchone()
        if seen is not None:
            earlier = [
                row[0]
                for row in conn.execute(
                    "SELECT run_id FROM runs WHERE fingerprint = ? AND alert_starts_at = ?"
                    " AND alert_status = ? ORDER BY id",
                    key_values,
                )
            ]
            duplicate = runs.AuditEvent(
                kind=runs.AuditKind.ALERT_DUPLICATE,
                fingerprint=key.fingerprint,
                alertname=alertname,
                details={"first_seen": seen[0], "runs": earlier},
            )
            _append(conn, [duplicate], now)
            return runs.AdmissionResult(key=key, duplicate=True)

        conn.execute(
            "INSERT INTO alerts (fingerprint, starts_at, status, alert, received_at)"
            " VALUES (?, ?, ?, ?, ?)",
            (*key_values, _dumps(admission.alert), now),
        )
        _append(conn, admission.events, now)
        cancelled: list[str] = []
        if admission.cancel_queued_runs:
            # Before inserting this admission's runs, so they can never be among the cancelled.
            cancelled.extend(_cancel_queued(conn, key.fingerprint, now))
        created: list[str] = []
        refused: list[tuple[str, str]] = []
        storms: list[runs.StormKey] = []
        for new in admission.runs:
            if new.policy is not None:
                decision = self._decide(
                    conn,
                    new,
                    new.policy,
                    key,
                    alertname,
                    now,
                    known_targets,
                    cancelled,
                    storms,
                    created,
                )
                if decision.refusal is not None:
                    refused.append((new.playbook, str(decision.refusal)))
                    _append(
                        conn,
                        [
                            planning.refused_event(
                                key, alertname, new, decision.refusal, dict(decision.details)
                            )
                        ],
                        now,
                    )
                    continue
            _insert_run(conn, new, key, alertname, now)
            created.append(new.run_id)
        return runs.AdmissionResult(
            key=key,
            duplicate=False,
            created_runs=tuple(created),
            cancelled_runs=tuple(cancelled),
            refused=tuple(refused),
            storms_started=tuple(storms),
        )

    def _decide(
        self,
        conn: sqlite3.Connection,
        new: runs.NewRun,
        policy: safety.SafetyPolicy,
        key: Any,
        alertname: str,
        now: float,
        known_targets: int | None,
        cancelled: list[str],
        storms: list[runs.StormKey],
        created: list[str],
    ) -> safety.Decision:
        """The admission decision for one candidate, with the storm bookkeeping it implies."""
        if str(key.status) == "firing" and policy.storm is not None:
            safeguards.record_sighting(conn, new, alertname, now)
        snapshot = safeguards.snapshot(
            conn, new, policy, alertname, now=now, known_targets=known_targets
        )
        decision = safety.decide_admission(policy, snapshot, now=now)
        storm_key = runs.StormKey(playbook=new.playbook, alertname=alertname)
        storm_id = safeguards.active_storm(conn, storm_key)
        storming = safety.is_storm(
            policy.storm, targets=snapshot.storm_targets, known=known_targets
        )
        if storming and storm_id is None and not snapshot.paused:
            _append(
                conn,
                [safeguards.start_storm(conn, storm_key, targets=snapshot.storm_targets, now=now)],
                now,
            )
            storms.append(storm_key)
            # Per-target remediation of this alert is suspended: runs not yet started go too.
            cancelled.extend(
                _cancel_queued_where(
                    conn,
                    "playbook = ? AND alertname = ?",
                    (new.playbook, alertname),
                    reason="storm",
                    now=now,
                )
            )
            if new.on_storm is not None:
                # The declared platform-level playbook runs once, instead of per-target runs.
                _insert_run(conn, new.on_storm, key, alertname, now)
                created.append(new.on_storm.run_id)
        elif not storming and storm_id is not None:
            _append(
                conn,
                [
                    safeguards.end_storm(
                        conn, storm_id, storm_key, targets=snapshot.storm_targets, now=now
                    )
                ],
                now,
            )
        return decision

    def _verify_blocking(self, stop: threading.Event) -> auditing.ChainReport:
        executor = self._require_open()
        unreadable: list[tuple[int, str]] = []

        def records() -> Iterator[runs.AuditRecord]:
            after = 0
            while not stop.is_set():
                job = functools.partial(_audit_batch, after=after, limit=VERIFY_BATCH)
                try:
                    rows, _ = executor.submit(
                        self._in_transaction, "verify_audit", job, write=False
                    ).result()
                except RuntimeError as e:  # the store was closed under us
                    raise StateError(f"verify_audit on {self.path} interrupted: {e}") from e
                for row in rows:
                    try:
                        record = _decode_audit(row)
                    except StateError as e:
                        # verify_chain only sees well-formed records; report this one after it.
                        unreadable.append((row["seq"], str(e)))
                        return
                    yield record
                if len(rows) < VERIFY_BATCH:
                    return
                after = rows[-1]["seq"]

        report = auditing.verify_chain(records())
        if report.intact and unreadable:
            seq, reason = unreadable[0]
            return auditing.ChainReport(checked=report.checked, first_broken=seq, reason=reason)
        return report


def open_readonly(path: str | os.PathLike[str]) -> SqliteStateStore:
    """A store on an existing file that can only read, e.g. a running daemon's, for the CLI.

    Still to be opened (``async with open_readonly(path) as store``); writes fail in SQLite.
    """
    if not pathlib.Path(path).is_file():
        raise StateError(f"no state store at {path}")
    return SqliteStateStore(path, readonly=True)


# Schema


def _migrate(conn: sqlite3.Connection, path: pathlib.Path) -> None:
    (version,) = conn.execute("PRAGMA user_version").fetchone()
    if version > SCHEMA_VERSION:
        raise StateError(
            f"{path} has schema version {version}; this remediator knows up to {SCHEMA_VERSION}"
        )
    for target, script in enumerate(MIGRATIONS[version:], start=version + 1):
        # user_version lives in the file header, which is journaled: it commits with the DDL.
        try:
            conn.executescript(
                f"BEGIN IMMEDIATE;\n{script}\nPRAGMA user_version = {target};\nCOMMIT;"
            )
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise


def _check_schema(conn: sqlite3.Connection, path: pathlib.Path) -> None:
    (version,) = conn.execute("PRAGMA user_version").fetchone()
    if version != SCHEMA_VERSION:
        raise StateError(
            f"{path} has schema version {version}, this remediator reads version {SCHEMA_VERSION}"
            " (a read-only store cannot migrate it)"
        )


# Runs


def _transition(
    conn: sqlite3.Connection,
    run_id: str,
    *,
    to: runs.RunStatus,
    allowed_from: Sequence[str],
    assignments: str = "",
    values: Sequence[object] = (),
) -> None:
    marks = ", ".join("?" * len(allowed_from))
    extra = f", {assignments}" if assignments else ""
    changed = conn.execute(
        f"UPDATE runs SET status = ?{extra} WHERE run_id = ? AND status IN ({marks})",  # noqa: S608
        (str(to), *values, run_id, *allowed_from),
    ).rowcount
    if changed:
        return
    row = conn.execute("SELECT status FROM runs WHERE run_id = ?", (run_id,)).fetchone()
    if row is None:
        raise RunStateError(f"no run {run_id!r}")
    raise RunStateError(f"run {run_id!r} is {row[0]}, it cannot become {to}")


def _insert_run(
    conn: sqlite3.Connection, new: runs.NewRun, key: Any, alertname: str, now: float
) -> None:
    conn.execute(
        "INSERT INTO runs (run_id, fingerprint, alert_starts_at, alert_status, alertname,"
        " playbook, target, status, dry_run, created_at)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            new.run_id,
            key.fingerprint,
            key.starts_at,
            str(key.status),
            alertname,
            new.playbook,
            new.target,
            str(runs.RunStatus.QUEUED),
            int(new.dry_run),
            now,
        ),
    )
    _append(conn, [planning.queued_event(key, alertname, new)], now)


def _cancel_queued(conn: sqlite3.Connection, fingerprint: str, now: float) -> tuple[str, ...]:
    return tuple(
        _cancel_queued_where(
            conn, "fingerprint = ?", (fingerprint,), reason="alert_resolved", now=now
        )
    )


def _cancel_queued_where(
    conn: sqlite3.Connection, where: str, values: tuple[object, ...], *, reason: str, now: float
) -> list[str]:
    """Cancel the QUEUED runs matching ``where`` (a constant SQL fragment), oldest first."""
    ids = [
        row[0]
        for row in conn.execute(
            f"SELECT run_id FROM runs WHERE {where} AND status = ?"  # noqa: S608 - constant
            " ORDER BY created_at, id",
            (*values, str(runs.RunStatus.QUEUED)),
        )
    ]
    for run_id in ids:
        _cancel_run(conn, run_id, reason, now)
    return ids


def _cancel_run(
    conn: sqlite3.Connection,
    run_id: str,
    reason: str,
    now: float,
    details: Mapping[str, Any] | None = None,
) -> None:
    conn.execute(
        "UPDATE runs SET status = ?, finished_at = ?, error = ? WHERE run_id = ?",
        (str(runs.RunStatus.CANCELLED), now, reason, run_id),
    )
    event = _run_event(runs.AuditKind.RUN_CANCELLED, _fetch_run(conn, run_id), reason)
    if details:
        event = dataclasses.replace(event, details={**event.details, **details})
    _append(conn, [event], now)


def _run_event(kind: runs.AuditKind, run: runs.RunRecord, reason: str) -> runs.AuditEvent:
    return runs.AuditEvent(
        kind=kind,
        run_id=run.run_id,
        fingerprint=run.fingerprint,
        alertname=run.alertname,
        playbook=run.playbook,
        target=run.target,
        outcome=str(run.status),
        reason=reason,
    )


def _fetch_run(conn: sqlite3.Connection, run_id: str) -> runs.RunRecord:
    row = conn.execute(
        f"SELECT {_RUN_COLUMNS} FROM {_RUNS_JOINED} WHERE r.run_id = ?",  # noqa: S608
        (run_id,),
    ).fetchone()
    if row is None:
        raise RunStateError(f"no run {run_id!r}")
    return _decode_run(row)


def _alertname(alert: Mapping[str, Any]) -> str:
    labels = alert.get("labels")
    name = labels.get("alertname") if isinstance(labels, Mapping) else None
    return name if isinstance(name, str) else ""


# Audit


class _Connection(sqlite3.Connection):
    """Collects the audit records a transaction appends, for the post-commit hook."""

    appended: list[runs.AuditRecord]


def _append(
    conn: sqlite3.Connection, events: Sequence[runs.AuditEvent], now: float
) -> list[runs.AuditRecord]:
    """Extend the chain from the head as seen inside the caller's transaction."""
    if not events:
        return []
    # Stored as REAL and read back as float: an int ``now`` would hash as "1000", not "1000.0".
    now = float(now)
    head = conn.execute("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1").fetchone()
    seq, prev_hash = (head[0], head[1]) if head else (0, auditing.GENESIS_HASH)
    records = []
    for event in events:
        seq += 1
        details = _dumps(event.details)
        # Hash the details as they will be read back (plain dicts and lists), so the returned
        # record equals the stored one and re-hashing on verification gives the same digest.
        plain = dataclasses.replace(event, details=json.loads(details))
        record = auditing.seal(seq, now, plain, prev_hash)
        conn.execute(
            f"INSERT INTO audit ({_AUDIT_COLUMNS}) VALUES ({', '.join('?' * 13)})",  # noqa: S608
            (
                seq,
                now,
                str(event.kind),
                event.run_id,
                event.fingerprint,
                event.alertname,
                event.playbook,
                event.target,
                event.outcome,
                event.reason,
                details,
                record.prev_hash,
                record.hash,
            ),
        )
        prev_hash = record.hash
        records.append(record)
    if isinstance(conn, _Connection):
        conn.appended.extend(records)
    return records


def _audit_batch(conn: sqlite3.Connection, *, after: int, limit: int) -> list[sqlite3.Row]:
    return conn.execute(
        f"SELECT {_AUDIT_COLUMNS} FROM audit WHERE seq > ? ORDER BY seq LIMIT ?",  # noqa: S608
        (after, limit),
    ).fetchall()


# Encoding


def _dumps(value: object) -> str:
    try:
        return json.dumps(value, sort_keys=True, ensure_ascii=False, default=_jsonable)
    except (TypeError, ValueError) as e:
        raise StateError(f"cannot store as JSON: {e}") from e


def _jsonable(value: object) -> object:
    # Read-only views (MappingProxyType) are common in our frozen types; json only knows dict.
    if isinstance(value, Mapping):
        return dict(value)
    raise TypeError(f"{type(value).__name__} is not JSON-serialisable")


def _decode_run(row: sqlite3.Row) -> runs.RunRecord:
    try:
        return runs.RunRecord(
            run_id=row["run_id"],
            playbook=row["playbook"],
            target=row["target"],
            status=runs.RunStatus(row["status"]),
            fingerprint=row["fingerprint"],
            alertname=row["alertname"],
            alert=json.loads(row["alert"]),
            created_at=row["created_at"],
            dry_run=bool(row["dry_run"]),
            started_at=row["started_at"],
            finished_at=row["finished_at"],
            error=row["error"],
        )
    except ValueError as e:
        raise StateError(f"run {row['run_id']!r} is unreadable: {e}") from e


def _decode_step(row: sqlite3.Row) -> runs.StepRecord:
    try:
        return runs.StepRecord(
            run_id=row["run_id"],
            index=row["idx"],
            phase=row["phase"],
            name=row["name"],
            action=row["action"],
            outcome=runs.StepOutcome(row["outcome"]),
            params=json.loads(row["params"]),
            attempts=row["attempts"],
            duration=row["duration"],
            started_at=row["started_at"],
            error=row["error"],
            output=json.loads(row["output"]),
        )
    except ValueError as e:
        raise StateError(f"step {row['idx']} of run {row['run_id']!r} is unreadable: {e}") from e


def _decode_audit(row: sqlite3.Row) -> runs.AuditRecord:
    try:
        event = runs.AuditEvent(
            kind=runs.AuditKind(row["kind"]),
            run_id=row["run_id"],
            fingerprint=row["fingerprint"],
            alertname=row["alertname"],
            playbook=row["playbook"],
            target=row["target"],
            outcome=row["outcome"],
            reason=row["reason"],
            details=json.loads(row["details"]),
        )
    except ValueError as e:
        raise StateError(f"audit record {row['seq']} is unreadable: {e}") from e
    return runs.AuditRecord(
        seq=row["seq"], time=row["time"], event=event, prev_hash=row["prev_hash"], hash=row["hash"]
    )


# Query helpers


def _equalities(prefix: str, **columns: str | None) -> tuple[list[str], list[object]]:
    """``column = ?`` for each filter that is set; ``prefix`` is the table alias, if any."""
    clauses: list[str] = []
    params: list[object] = []
    for name, value in columns.items():
        if value is not None:
            clauses.append(f"{prefix}{name} = ?")
            params.append(value)
    return clauses, params


def _window(clauses: list[str], params: list[object], column: str, flt: runs.RunFilter) -> None:
    """``since`` inclusive, ``until`` exclusive, on ``column`` (a constant)."""
    if flt.since is not None:
        clauses.append(f"{column} >= ?")
        params.append(flt.since)
    if flt.until is not None:
        clauses.append(f"{column} < ?")
        params.append(flt.until)


def _check_limit(limit: int) -> None:
    if limit < 1:
        _bad_query("limit", "must be at least 1")


def _encode_run_cursor(created_at: float, row_id: int) -> str:
    # repr() round-trips floats exactly, so the keyset comparison resumes at the same row.
    return base64.urlsafe_b64encode(f"{created_at!r}:{row_id}".encode()).decode()


def _decode_run_cursor(cursor: str) -> tuple[float, int]:
    try:
        created_at, row_id = base64.urlsafe_b64decode(cursor.encode()).decode().split(":")
        return float(created_at), int(row_id)
    except (binascii.Error, UnicodeError, ValueError):
        _bad_query("cursor", "is not a cursor this store issued")


def _decode_seq_cursor(cursor: str) -> int:
    with contextlib.suppress(ValueError):
        return int(cursor)
    _bad_query("cursor", "is not a cursor this store issued")


def _bad_query(path: str, message: str) -> NoReturn:
    raise errors.InvalidInputError([errors.Problem(source="<query>", path=path, message=message)])
