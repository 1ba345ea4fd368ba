"""The embedded backend: one SQLite file in WAL mode, for one replica and the demo.

Every SQLite call runs on one dedicated worker thread: that single writer is what keeps the audit
hash chain linear (the head is read and extended in the same transaction), and it keeps blocking
file I/O off the event loop. Other processes (``remediator audit``) read the same file
concurrently through :func:`open_readonly`; WAL lets them do so without blocking the daemon.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import pathlib
import sqlite3
import time
from collections.abc import Callable
from typing import TypeVar

from remediator.adapters.state.connections import Connection
from remediator.adapters.state.contract import StateError
from remediator.adapters.state.store import SqlStateStore
from remediator.core import runs

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
    # The safety envelope (remediator.adapters.state.safeguards).
    """
    -- A firing alert seen for a target, for storm detection (distinct targets per window).
    CREATE TABLE sightings (
        playbook TEXT NOT NULL,
        alertname TEXT NOT NULL,
        target TEXT NOT NULL,
        seen_at REAL NOT NULL
    );
    -- Covering: counting distinct targets in a window reads the index only.
    CREATE INDEX sightings_by_alert ON sightings (playbook, alertname, seen_at, target);
    -- Breakers read the latest finished runs of a playbook, and of a playbook on one target.
    CREATE INDEX runs_by_playbook_finished ON runs (playbook, finished_at);
    CREATE INDEX runs_by_playbook_target_finished ON runs (playbook, target, finished_at);
    CREATE TABLE storms (
        id INTEGER PRIMARY KEY,
        playbook TEXT NOT NULL,
        alertname TEXT NOT NULL,
        started_at REAL NOT NULL,
        ended_at REAL,
        targets INTEGER NOT NULL
    );
    CREATE INDEX storms_active ON storms (playbook, alertname, ended_at);
    -- target '' is the breaker of the whole playbook.
    CREATE TABLE breakers (
        id INTEGER PRIMARY KEY,
        playbook TEXT NOT NULL,
        target TEXT NOT NULL,
        opened_at REAL NOT NULL,
        closes_at REAL NOT NULL,
        closed_at REAL,
        closed_by TEXT
    );
    CREATE INDEX breakers_by_key ON breakers (playbook, target, closed_at);
""",
    # Several replicas (the PostgreSQL backend shares these transactions): who owns each run,
    # the step in flight, durable approval decisions, and the replicas' leases.
    """
    ALTER TABLE runs ADD COLUMN owner TEXT;
    ALTER TABLE runs ADD COLUMN taken_over INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE runs ADD COLUMN in_flight TEXT;
    ALTER TABLE runs ADD COLUMN approval TEXT;
    CREATE INDEX runs_by_owner ON runs (owner, status);
    CREATE INDEX runs_by_target_status ON runs (target, status);
    CREATE TABLE replicas (
        replica_id TEXT PRIMARY KEY,
        host TEXT NOT NULL,
        started_at REAL NOT NULL,
        renewed_at REAL NOT NULL,
        expires_at REAL NOT NULL,
        known_targets INTEGER
    ) WITHOUT ROWID;
    """,
)
SCHEMA_VERSION = len(MIGRATIONS)

DEFAULT_BUSY_TIMEOUT = 5.0
"""Seconds to wait for another connection's lock (a CLI reader's checkpoint, a second store)."""


class SqliteStateStore(SqlStateStore):
    """The state store on one SQLite file; use :func:`open_readonly` for other processes."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        readonly: bool = False,
        busy_timeout: float = DEFAULT_BUSY_TIMEOUT,
        clock: Callable[[], float] = time.time,
        on_append: Callable[[runs.AuditRecord], None] | None = None,
    ) -> None:
        super().__init__(clock=clock, on_append=on_append)
        self.path = pathlib.Path(path)
        self.readonly = readonly
        self._busy_timeout = busy_timeout
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        # Touched only on the worker thread (sqlite3's check_same_thread enforces it).
        self._conn: _Connection | None = None

    @property
    def name(self) -> str:
        return str(self.path)

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

    def _require_open(self) -> concurrent.futures.ThreadPoolExecutor:
        if self._executor is None:
            raise StateError(f"state store {self.path} is not open")
        return self._executor

    async def _call(self, job: Callable[[], T]) -> T:
        executor = self._require_open()
        return await asyncio.get_running_loop().run_in_executor(executor, job)

    def _call_blocking(self, job: Callable[[], T]) -> T:
        try:
            return self._require_open().submit(job).result()
        except RuntimeError as e:  # the store was closed under us
            raise StateError(f"{self.path} was closed: {e}") from e

    @property
    def _driver_error(self) -> type[Exception]:
        return sqlite3.Error

    def _in_transaction(
        self, operation: str, job: Callable[[Connection], T], *, write: bool
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


class _Connection(sqlite3.Connection):
    """Collects the audit records a transaction appends, for the post-commit hook."""

    appended: list[runs.AuditRecord]


def open_readonly(path: str | os.PathLike[str]) -> SqliteStateStore:
    """A store on an existing file that can only read, e.g. a running daemon's, for the CLI.

    Still to be opened (``async with open_readonly(path) as store``); writes fail in SQLite.
    """
    if not pathlib.Path(path).is_file():
        raise StateError(f"no state store at {path}")
    return SqliteStateStore(path, readonly=True)


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
