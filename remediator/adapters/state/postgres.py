"""The shared backend: PostgreSQL, for several replicas on one state.

Driver: psycopg 3, used through its blocking API on a pool of worker threads, so the very
transactions the SQLite backend runs (:mod:`.transactions`) run here unchanged; psycopg_pool
checks a connection before lending it and replaces broken ones, which is what makes a replica
recover by itself after the server restarts.

Every write transaction first takes one transaction-scoped advisory lock (the *writer lock*):
writers are serialized across all replicas exactly as SQLite's single writer serializes them,
so rate limits, cooldowns, the per-target lock, breakers, storms and the kill switch are decided
on the state every earlier admission left, and the audit chain's head is extended by one writer
at a time. In READ COMMITTED each statement sees every transaction committed before it, so what
the previous lock holder wrote is visible once the lock is ours. Reads run in REPEATABLE READ,
READ ONLY transactions and take no lock.

Every statement, lock wait and pool checkout is bounded by ``query_timeout``; connecting by
``connect_timeout``; dead peers are noticed through TCP keepalives. The password never travels
in the URL: it is passed to libpq on its own, and messages name the server as
``postgresql://user@host:port/database``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import psycopg
import psycopg.conninfo
import psycopg_pool

from remediator.adapters.state.connections import Connection, Cursor
from remediator.adapters.state.contract import StateError
from remediator.adapters.state.store import SqlStateStore
from remediator.core import runs

T = TypeVar("T")

WRITER_LOCK = 0x72656D01
"""Advisory lock key serializing every write transaction (``rem`` + 1)."""
MIGRATION_LOCK = 0x72656D02
"""Session advisory lock held by the one replica applying migrations."""

# Schema history, as for SQLite: entry N takes the database from version N to N+1, applied in
# one transaction each and never edited once released.
MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE alerts (
        fingerprint TEXT NOT NULL,
        starts_at TEXT NOT NULL,
        status TEXT NOT NULL,
        alert TEXT NOT NULL,
        received_at DOUBLE PRECISION NOT NULL,
        PRIMARY KEY (fingerprint, starts_at, status)
    );
    CREATE TABLE runs (
        id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        run_id TEXT NOT NULL UNIQUE,
        fingerprint TEXT NOT NULL,
        alert_starts_at TEXT NOT NULL,
        alert_status TEXT NOT NULL,
        alertname TEXT NOT NULL,
        playbook TEXT NOT NULL,
        target TEXT NOT NULL,
        status TEXT NOT NULL,
        dry_run INTEGER NOT NULL,
        created_at DOUBLE PRECISION NOT NULL,
        started_at DOUBLE PRECISION,
        finished_at DOUBLE PRECISION,
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
    CREATE INDEX runs_by_playbook_finished ON runs (playbook, finished_at);
    CREATE INDEX runs_by_playbook_target_finished ON runs (playbook, target, finished_at);

    CREATE TABLE steps (
        run_id TEXT NOT NULL REFERENCES runs (run_id),
        idx INTEGER NOT NULL,
        phase TEXT NOT NULL,
        name TEXT NOT NULL,
        action TEXT NOT NULL,
        outcome TEXT NOT NULL,
        params TEXT NOT NULL,
        attempts INTEGER NOT NULL,
        duration DOUBLE PRECISION NOT NULL,
        started_at DOUBLE PRECISION NOT NULL,
        error TEXT,
        output TEXT NOT NULL,
        PRIMARY KEY (run_id, idx)
    );

    CREATE TABLE audit (
        seq BIGINT PRIMARY KEY,
        time DOUBLE PRECISION NOT NULL,
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
    CREATE FUNCTION audit_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN RAISE EXCEPTION 'audit log is append-only'; END $$;
    CREATE TRIGGER audit_no_update_or_delete BEFORE UPDATE OR DELETE ON audit
        FOR EACH ROW EXECUTE FUNCTION audit_append_only();
    CREATE TRIGGER audit_no_truncate BEFORE TRUNCATE ON audit
        FOR EACH STATEMENT EXECUTE FUNCTION audit_append_only();

    CREATE TABLE settings (
        key TEXT PRIMARY KEY,
        value TEXT NOT NULL
    );

    CREATE TABLE sightings (
        playbook TEXT NOT NULL,
        alertname TEXT NOT NULL,
        target TEXT NOT NULL,
        seen_at DOUBLE PRECISION NOT NULL
    );
    CREATE INDEX sightings_by_alert ON sightings (playbook, alertname, seen_at, target);
    CREATE TABLE storms (
        id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        playbook TEXT NOT NULL,
        alertname TEXT NOT NULL,
        started_at DOUBLE PRECISION NOT NULL,
        ended_at DOUBLE PRECISION,
        targets INTEGER NOT NULL
    );
    CREATE INDEX storms_active ON storms (playbook, alertname, ended_at);
    CREATE TABLE breakers (
        id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        playbook TEXT NOT NULL,
        target TEXT NOT NULL,
        opened_at DOUBLE PRECISION NOT NULL,
        closes_at DOUBLE PRECISION NOT NULL,
        closed_at DOUBLE PRECISION,
        closed_by TEXT
    );
    CREATE INDEX breakers_by_key ON breakers (playbook, target, closed_at);
    """,
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
        started_at DOUBLE PRECISION NOT NULL,
        renewed_at DOUBLE PRECISION NOT NULL,
        expires_at DOUBLE PRECISION NOT NULL,
        known_targets INTEGER
    );
    """,
)
SCHEMA_VERSION = len(MIGRATIONS)


class PostgresStateStore(SqlStateStore):
    """The state store on a PostgreSQL database shared by every replica."""

    def __init__(
        self,
        url: str,
        *,
        password: str | None = None,
        readonly: bool = False,
        pool_size: int = 4,
        query_timeout: float = 5.0,
        connect_timeout: float = 5.0,
        clock: Callable[[], float] = time.time,
        on_append: Callable[[runs.AuditRecord], None] | None = None,
    ) -> None:
        super().__init__(clock=clock, on_append=on_append)
        try:
            params = psycopg.conninfo.conninfo_to_dict(url)
        except psycopg.ProgrammingError as e:
            raise StateError(f"state.path is not a PostgreSQL URL: {_first_line(e)}") from e
        if "password" in params:
            raise StateError("state.path must not contain a password; use state.password_file")
        self._params: dict[str, Any] = dict(params)
        self._password = password
        self.readonly = readonly
        self._pool_size = pool_size
        self._query_timeout = query_timeout
        self._connect_timeout = connect_timeout
        self._pool: psycopg_pool.ConnectionPool[psycopg.Connection[Any]] | None = None
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None

    @property
    def name(self) -> str:
        p = self._params
        host = p.get("host") or "localhost"
        port = p.get("port") or "5432"
        user = p.get("user") or ""
        return f"postgresql://{user}{'@' if user else ''}{host}:{port}/{p.get('dbname') or ''}"

    def connection_kwargs(self) -> dict[str, Any]:
        """libpq parameters for a new connection: the URL's, the password, the timeouts."""
        ms = int(self._query_timeout * 1000)
        options = f"-c statement_timeout={ms} -c lock_timeout={ms}"
        options += " -c idle_in_transaction_session_timeout=60000"
        if self.readonly:
            options += " -c default_transaction_read_only=on"
        kwargs: dict[str, Any] = {
            **self._params,
            "connect_timeout": max(1, round(self._connect_timeout)),
            "application_name": "remediator",
            "options": options,
            "keepalives": 1,
            "keepalives_idle": 5,
            "keepalives_interval": 2,
            "keepalives_count": 3,
        }
        if self._password is not None:
            kwargs["password"] = self._password
        return kwargs

    def connect(self, **overrides: Any) -> psycopg.Connection[Any]:
        """One connection outside the pool (migrations, the leader lock); StateError if not."""
        try:
            return psycopg.connect(autocommit=True, **{**self.connection_kwargs(), **overrides})
        except psycopg.Error as e:
            raise StateError(f"cannot connect to {self.name}: {_first_line(e)}") from e

    def leader_elector(self) -> AdvisoryLockElector:
        return AdvisoryLockElector(self, timeout=self._connect_timeout)

    async def open(self) -> None:
        if self._pool is not None:
            raise StateError(f"state store {self.name} is already open")
        executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=self._pool_size, thread_name_prefix="remediator-state"
        )
        try:
            await asyncio.get_running_loop().run_in_executor(executor, self._open_blocking)
        except BaseException:
            executor.shutdown(wait=False)
            raise
        self._executor = executor

    def _open_blocking(self) -> None:
        # A direct connection first: its error names the real cause (refused, no such database,
        # authentication), where a pool would only report a timeout.
        with self.connect() as conn:
            if self.readonly:
                _check_schema(conn, self.name)
            else:
                _migrate(conn, self.name)
        pool: psycopg_pool.ConnectionPool[psycopg.Connection[Any]] = psycopg_pool.ConnectionPool(
            kwargs={**self.connection_kwargs(), "autocommit": True, "row_factory": _row_factory},
            min_size=1,
            max_size=self._pool_size,
            timeout=self._query_timeout,
            check=psycopg_pool.ConnectionPool.check_connection,
            reconnect_timeout=0,  # never give up reconnecting: the daemon outlives outages
            name="remediator-state",
            open=False,
        )
        try:
            pool.open(wait=True, timeout=self._connect_timeout)
        except psycopg_pool.PoolTimeout as e:
            pool.close()
            raise StateError(f"cannot connect to {self.name}: {_first_line(e)}") from e
        self._pool = pool

    async def close(self) -> None:
        pool, executor = self._pool, self._executor
        self._pool = self._executor = None
        if executor is not None:
            executor.shutdown(wait=True)
        if pool is not None:
            await asyncio.to_thread(pool.close)

    async def _call(self, job: Callable[[], T]) -> T:
        if self._executor is None:
            raise StateError(f"state store {self.name} is not open")
        return await asyncio.get_running_loop().run_in_executor(self._executor, job)

    def _call_blocking(self, job: Callable[[], T]) -> T:
        # The pool is thread-safe: a helper thread may borrow a connection itself.
        return job()

    @property
    def _driver_error(self) -> type[Exception]:
        return psycopg.Error

    def _in_transaction(
        self, operation: str, job: Callable[[Connection], T], *, write: bool
    ) -> tuple[T, list[runs.AuditRecord]]:
        pool = self._pool
        if pool is None:
            raise StateError(f"state store {self.name} is not open")
        try:
            with pool.connection() as pg, pg.transaction():
                if write:
                    pg.execute("SELECT pg_advisory_xact_lock(%s)", (WRITER_LOCK,))
                else:
                    pg.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
                conn = _Connection(pg)
                result = job(conn)
        except psycopg.Error as e:
            raise StateError(f"{operation} failed on {self.name}: {_first_line(e)}") from e
        return result, conn.appended


class _Connection:
    """psycopg behind the shared transactions' interface (``?`` placeholders)."""

    def __init__(self, pg: psycopg.Connection[Any]) -> None:
        self._pg = pg
        self.appended: list[runs.AuditRecord] = []
        self.memo: dict[str, Any] = {}

    def execute(self, sql: str, parameters: Sequence[Any] = (), /) -> Cursor:
        if not parameters:
            return self._pg.execute(sql)
        return self._pg.execute(_placeholders(sql), parameters)


@functools.lru_cache(maxsize=512)
def _placeholders(sql: str) -> str:
    # The shared SQL has no literal % or ?, so a plain replacement is exact.
    return sql.replace("%", "%%").replace("?", "%s")


class _Row:
    """A row readable by position and by column name, like ``sqlite3.Row``."""

    __slots__ = ("_index", "_values")

    def __init__(self, values: Sequence[Any], index: dict[str, int]) -> None:
        self._values = values
        self._index = index

    def __getitem__(self, key: int | str) -> Any:
        return self._values[key if isinstance(key, int) else self._index[key]]

    def __len__(self) -> int:
        return len(self._values)

    def __iter__(self) -> Any:
        return iter(self._values)


def _row_factory(cursor: Any) -> Callable[[Sequence[Any]], _Row]:
    index = {c.name: i for i, c in enumerate(cursor.description or ())}
    return lambda values: _Row(values, index)


def _migrate(conn: psycopg.Connection[Any], name: str) -> None:
    # A session lock: of several replicas starting at once, one migrates, the others wait and
    # then find nothing left to do.
    conn.execute("SELECT pg_advisory_lock(%s)", (MIGRATION_LOCK,))
    try:
        conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
        version = _version(conn)
        if version > SCHEMA_VERSION:
            raise StateError(
                f"{name} has schema version {version}; this remediator knows up to "
                f"{SCHEMA_VERSION}: upgrade remediator, never downgrade it"
            )
        for target, script in enumerate(MIGRATIONS[version:], start=version + 1):
            with conn.transaction():
                conn.execute(script)
                conn.execute("DELETE FROM schema_version")
                conn.execute("INSERT INTO schema_version (version) VALUES (%s)", (target,))
    except psycopg.Error as e:
        raise StateError(f"migrating {name} failed: {_first_line(e)}") from e
    finally:
        conn.execute("SELECT pg_advisory_unlock(%s)", (MIGRATION_LOCK,))


def _check_schema(conn: psycopg.Connection[Any], name: str) -> None:
    try:
        version = _version(conn)
    except psycopg.errors.UndefinedTable:
        version = 0
    if version != SCHEMA_VERSION:
        raise StateError(
            f"{name} has schema version {version}, this remediator reads version "
            f"{SCHEMA_VERSION} (a read-only store cannot migrate it)"
        )


def _version(conn: psycopg.Connection[Any]) -> int:
    row = conn.execute("SELECT max(version) FROM schema_version").fetchone()
    return int(row[0]) if row and row[0] is not None else 0


def _first_line(error: Exception) -> str:
    """libpq messages carry hints on later lines; one line keeps logs and CLI errors tidy."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


LEADER_LOCK = 0x72656D03
"""Session advisory lock held by the leader (without a Kubernetes cluster)."""


class AdvisoryLockElector:
    """Leader election on a session advisory lock, on a connection outside the pool.

    The server releases the lock the moment the holder's session ends, so a follower's next
    ``try_lead`` after the leader died wins it; a leader whose connection breaks stops leading.
    """

    name = "postgresql"

    def __init__(self, store: PostgresStateStore, *, timeout: float = 5.0) -> None:
        self._store = store
        self._timeout = timeout
        self._conn: psycopg.Connection[Any] | None = None
        self._held = False

    async def try_lead(self) -> bool:
        return await asyncio.to_thread(self._try_lead_blocking)

    async def resign(self) -> None:
        await asyncio.to_thread(self._resign_blocking)

    def _resign_blocking(self) -> None:
        # Unlock before closing: the server ends a closed session a moment later, and the next
        # leader should not have to wait for that.
        if self._held and self._conn is not None:
            with contextlib.suppress(psycopg.Error):
                self._conn.execute("SELECT pg_advisory_unlock(%s)", (LEADER_LOCK,))
        self._drop()

    def _try_lead_blocking(self) -> bool:
        try:
            if self._conn is None or self._conn.closed:
                self._held = False
                self._conn = self._store.connect(connect_timeout=max(1, round(self._timeout)))
            if self._held:
                self._conn.execute("SELECT 1")  # still our session, so still our lock
                return True
            row = self._conn.execute("SELECT pg_try_advisory_lock(%s)", (LEADER_LOCK,)).fetchone()
            self._held = bool(row and row[0])
            return self._held
        except (psycopg.Error, StateError):
            self._drop()
            return False

    def _drop(self) -> None:
        conn, self._conn, self._held = self._conn, None, False
        if conn is not None:
            with contextlib.suppress(psycopg.Error):
                conn.close()
