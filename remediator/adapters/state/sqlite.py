"""The embedded backend: one SQLite file in WAL mode, for one replica and the demo.

Transactions run on the event loop's thread, each from BEGIN to COMMIT without an await, so
one runs at a time: that single writer is what keeps the audit hash chain linear (the head is
read and extended in the same transaction). Running them there rather than on a worker thread
is the fast path for one process on one core: a commit in WAL mode with ``synchronous=NORMAL``
only writes pages to the OS cache, while a hop to a thread and back costs two wake-ups and a
fight for the GIL on every statement. The one slow I/O, the fsync of a checkpoint, happens on
a thread of its own (:class:`_Checkpointer`), never on the loop; and a write lock held by
another process is waited for with ``asyncio.sleep``, never by blocking the loop. Other
processes (``remediator audit``) read the same file concurrently through :func:`open_readonly`;
WAL lets them do so without blocking the daemon.
"""

from __future__ import annotations

import asyncio
import os
import pathlib
import sqlite3
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

import structlog

from remediator.adapters.state.connections import Connection
from remediator.adapters.state.contract import StateError
from remediator.adapters.state.store import SqlStateStore
from remediator.core import runs

log = structlog.get_logger(__name__)

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
    # Fewer pages per commit. A commit writes every page it changed, and a key that starts with
    # a fingerprint (a hash) lands on a random page of its B-tree: the dedupe keys' table (rows
    # of a few hundred bytes) and two indexes of runs were a third of the pages each commit
    # wrote. Start time first, a new alert's key goes to the right-hand pages, which recent
    # alerts share; the queued runs of an alert are found in an index of queued runs only,
    # which is small and stays in the cache. Lookups by the whole key work as before.
    """
    CREATE TABLE alerts_by_start (
        fingerprint TEXT NOT NULL,
        starts_at TEXT NOT NULL,
        status TEXT NOT NULL,
        alert TEXT NOT NULL,
        received_at REAL NOT NULL,
        PRIMARY KEY (starts_at, fingerprint, status)
    ) WITHOUT ROWID;
    INSERT INTO alerts_by_start (fingerprint, starts_at, status, alert, received_at)
        SELECT fingerprint, starts_at, status, alert, received_at FROM alerts;
    DROP TABLE alerts;
    ALTER TABLE alerts_by_start RENAME TO alerts;
    DROP INDEX runs_by_alert;
    CREATE INDEX runs_by_alert ON runs (alert_starts_at, fingerprint, alert_status);
    DROP INDEX runs_by_fingerprint_status;
    CREATE INDEX runs_queued_by_fingerprint ON runs (fingerprint, created_at)
        WHERE status = 'queued';
    """,
    # An audit record indexes only the columns it has. Most records are about an alert before
    # any run (received, not run because...): no run id, often no playbook or target. A NULL
    # still took an entry in each index, on every append, and no query looks one up: they all
    # ask for "column = value", which implies NOT NULL, so SQLite uses these partial indexes.
    """
    DROP INDEX audit_by_run;
    CREATE INDEX audit_by_run ON audit (run_id) WHERE run_id IS NOT NULL;
    DROP INDEX audit_by_playbook;
    CREATE INDEX audit_by_playbook ON audit (playbook) WHERE playbook IS NOT NULL;
    DROP INDEX audit_by_target;
    CREATE INDEX audit_by_target ON audit (target) WHERE target IS NOT NULL;
    """,
)
SCHEMA_VERSION = len(MIGRATIONS)

DEFAULT_BUSY_TIMEOUT = 5.0
"""Seconds to wait for another connection's write lock (a second process on the same file)."""
BUSY_RETRY_FIRST = 0.001
BUSY_RETRY_MAX = 0.05
"""The loop sleeps between attempts to take a write lock held elsewhere: 1 ms, doubling to 50."""

CHECKPOINT_INTERVAL = 0.1
"""Seconds between the checkpointer's passes: each copies what the WAL gained to the file.

Short passes keep each checkpoint's fsync short, and a commit whose WAL writes wait on that
fsync (ext4) stalls the loop for as long: at 0.5 s the open loop at 400 alerts/s had a p99 of
20-30 ms (one slow COMMIT a second), at 0.1 s 4-10 ms, with the closed loop and dispatch
within noise (bench/README.md, 4 December 22:35). 0.05 s measured like 0.1."""
AUTOCHECKPOINT_PAGES = 20_000
"""The writer's own checkpoint, on the loop, only if the checkpointer falls this far behind
(about 80 MiB of WAL): a backstop that bounds the WAL, never the usual path."""
JOURNAL_SIZE_LIMIT = 64 * 1024 * 1024
"""Bytes the WAL file is truncated to when it restarts, after a burst made it grow."""
CACHE_KIB = 32 * 1024
"""The writer's page cache: the indexes of recent runs and audit records stay in memory."""
SQLITE_BUSY = 5


class _Busy(Exception):
    """Another connection holds the write lock; nothing of this transaction was written."""


class SqliteStateStore(SqlStateStore):
    """The state store on one SQLite file; use :func:`open_readonly` for other processes."""

    # A transaction holds the lock only while it runs without an await, so bigger groups
    # cost no one else a wait; they only save commits (each writes every page it touched).
    max_group = 256
    group_admissions = True
    # Waiting costs an idle loop microseconds. Under load, writes come in bursts a few
    # iterations apart (the executor's workers, a batch of webhooks): committing after the
    # first iteration that brought none left groups of 2-9 writes. Six iterations, back to back
    # in bench.compare: closed loop 618 -> 725 alerts/s, dispatch 240 -> 308 runs/s.
    gather_iterations = 6

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        readonly: bool = False,
        busy_timeout: float = DEFAULT_BUSY_TIMEOUT,
        checkpoint_interval: float = CHECKPOINT_INTERVAL,
        clock: Callable[[], float] = time.time,
        on_append: Callable[[runs.AuditRecord], None] | None = None,
    ) -> None:
        super().__init__(clock=clock, on_append=on_append)
        self.path = pathlib.Path(path)
        self.readonly = readonly
        self._busy_timeout = busy_timeout
        self._checkpoint_interval = checkpoint_interval
        self._loop: asyncio.AbstractEventLoop | None = None
        self._checkpointer: _Checkpointer | None = None
        # Used only on the loop's thread (sqlite3's check_same_thread enforces it).
        self._conn: _Connection | None = None

    @property
    def name(self) -> str:
        return str(self.path)

    async def open(self) -> None:
        if self._loop is not None:
            raise StateError(f"state store {self.path} is already open")
        self._connect()
        self._loop = asyncio.get_running_loop()
        if not self.readonly:
            self._checkpointer = _Checkpointer(self.path, interval=self._checkpoint_interval)
            self._checkpointer.start()

    async def close(self) -> None:
        if self._loop is None:
            return
        try:
            if self._checkpointer is not None:
                # Joined off the loop: a pass in progress may be in its fsync.
                await asyncio.to_thread(self._checkpointer.stop)
                self._checkpointer = None
        finally:
            self._loop = None
            self._disconnect()

    async def _call(self, job: Callable[[], T]) -> T:
        if self._loop is None:
            raise StateError(f"state store {self.path} is not open")
        deadline = time.monotonic() + self._busy_timeout
        pause = BUSY_RETRY_FIRST
        while True:
            try:
                return job()
            except _Busy:
                if time.monotonic() + pause > deadline:
                    raise StateError(
                        f"{self.path} is locked: another process has held its write lock for"
                        f" more than {self._busy_timeout:g} s (is a second daemon using it?)"
                    ) from None
                await asyncio.sleep(pause)
                pause = min(pause * 2, BUSY_RETRY_MAX)

    def _call_blocking(self, job: Callable[[], T]) -> T:
        loop = self._loop
        if loop is None:
            raise StateError(f"state store {self.path} is not open")
        if _running_loop() is loop:
            raise RuntimeError("_call_blocking is for other threads; await the store instead")
        try:
            return asyncio.run_coroutine_threadsafe(self._call(job), loop).result()
        except RuntimeError as e:  # the loop was closed under us
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
        conn.memo = {}
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
            if getattr(e, "sqlite_errorcode", 0) & 0xFF == SQLITE_BUSY:
                raise _Busy from e
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
            # No blocking wait for a lock on the loop: _call retries with asyncio.sleep.
            conn.execute("PRAGMA busy_timeout = 0")
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
                conn.execute(f"PRAGMA wal_autocheckpoint = {AUTOCHECKPOINT_PAGES}")
                conn.execute(f"PRAGMA journal_size_limit = {JOURNAL_SIZE_LIMIT}")
                conn.execute(f"PRAGMA cache_size = -{CACHE_KIB}")
                # Every write of a group runs in its own savepoint, whose journal keeps the
                # original of each page it changes. On disk, that journal was a new file in
                # /var/tmp per transaction once it outgrew 64 KiB: created, written page by
                # page, unlinked. A group's journal is a few MiB at most.
                conn.execute("PRAGMA temp_store = MEMORY")
                _migrate(conn, self.path, busy_timeout=self._busy_timeout)
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


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


class _Checkpointer:
    """Copies the WAL back into the database file every ``interval``, on its own thread and
    connection, so the fsync a checkpoint needs never stalls the event loop.

    PASSIVE: it never waits for the writer or a reader, and takes no lock they wait for. A
    failed pass is logged and the next one tries again; the writer's own autocheckpoint
    (:data:`AUTOCHECKPOINT_PAGES`) bounds the WAL if passes keep failing.
    """

    def __init__(self, path: pathlib.Path, *, interval: float) -> None:
        self._path = path
        self._interval = interval
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="remediator-checkpoint", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        self._thread.join()

    def _run(self) -> None:
        try:
            conn = sqlite3.connect(self._path, isolation_level=None, check_same_thread=True)
        except sqlite3.Error as e:
            log.warning("checkpointer_not_started", path=str(self._path), error=str(e))
            return
        try:
            while not self._stopping.wait(self._interval):
                self._checkpoint(conn)
            self._checkpoint(conn)  # what the last writes left, before the file is closed
        finally:
            conn.close()

    def _checkpoint(self, conn: sqlite3.Connection) -> None:
        try:
            conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        except sqlite3.Error as e:
            log.warning("checkpoint_failed", path=str(self._path), error=str(e))


class _Connection(sqlite3.Connection):
    """Collects the audit records a transaction appends, for the post-commit hook."""

    appended: list[runs.AuditRecord]
    memo: dict[str, Any]


def open_readonly(path: str | os.PathLike[str]) -> SqliteStateStore:
    """A store on an existing file that can only read, e.g. a running daemon's, for the CLI.

    Still to be opened (``async with open_readonly(path) as store``); writes fail in SQLite.
    """
    if not pathlib.Path(path).is_file():
        raise StateError(f"no state store at {path}")
    return SqliteStateStore(path, readonly=True)


def _migrate(conn: sqlite3.Connection, path: pathlib.Path, *, busy_timeout: float) -> None:
    # At start-up, before the daemon serves anything: a blocking wait for the lock is fine.
    conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout * 1000)}")
    try:
        _migrate_locked(conn, path)
    finally:
        conn.execute("PRAGMA busy_timeout = 0")


def _migrate_locked(conn: sqlite3.Connection, path: pathlib.Path) -> None:
    (version,) = conn.execute("PRAGMA user_version").fetchone()
    if version > SCHEMA_VERSION:
        raise StateError(
            f"{path} has schema version {version}; this remediator knows up to {SCHEMA_VERSION}"
        )
    if version == SCHEMA_VERSION:
        return
    # A table is rebuilt by copy, drop and rename, which foreign keys would refuse halfway; as
    # SQLite's ALTER TABLE procedure says, they are off meanwhile and checked before COMMIT.
    # (The pragma is a no-op inside a transaction, so it is set around them.)
    conn.execute("PRAGMA foreign_keys = OFF")
    try:
        for target, script in enumerate(MIGRATIONS[version:], start=version + 1):
            _migrate_one(conn, path, script, target)
    finally:
        conn.execute("PRAGMA foreign_keys = ON")


def _migrate_one(conn: sqlite3.Connection, path: pathlib.Path, script: str, target: int) -> None:
    # user_version lives in the file header, which is journaled: it commits with the DDL.
    try:
        conn.executescript(f"BEGIN IMMEDIATE;\n{script}\nPRAGMA user_version = {target};")
        broken = conn.execute("PRAGMA foreign_key_check").fetchall()
        if broken:
            # The check covers the whole file: a row broken before this migration counts too.
            raise StateError(
                f"{path}: after migrating to schema version {target}, {len(broken)} row(s)"
                f" break a foreign key, first in table {broken[0][0]!r}; nothing was changed"
            )
        conn.execute("COMMIT")
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
