"""Both state backends behind one interface, so one contract suite runs against each.

``backend`` is parametrized: ``sqlite`` (a file in the test's directory) and ``postgresql``
(a fresh database per test on the session's real PostgreSQL server, see ``postgres_server``).
"""

from __future__ import annotations

import contextlib
import itertools
import pathlib
import sqlite3
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import psycopg

from remediator.adapters import state
from remediator.simulation import postgresql

_databases = itertools.count(1)


class RawConnection:
    """A connection that bypasses the store, as an intruder with database access would."""

    def __init__(self, execute: Callable[[str, Sequence[Any]], Any]) -> None:
        self._execute = execute

    def execute(self, sql: str, parameters: Sequence[Any] = ()) -> Any:
        return self._execute(sql, parameters)


@dataclass(kw_only=True)
class Backend:
    name: str
    open_store: Callable[..., state.SqlStateStore]
    """A new, unopened store on this test's database (call twice for two replicas)."""
    open_raw: Callable[[], contextlib.AbstractContextManager[RawConnection]]
    drop_audit_guards: str
    """SQL that lets a raw connection edit the audit table (an intruder's first step)."""
    append_only_error: type[Exception]
    newer_schema: str
    """SQL that makes the database's schema newer than this remediator knows."""

    def store(self, **kwargs: Any) -> state.SqlStateStore:
        return self.open_store(**kwargs)

    @contextlib.contextmanager
    def raw(self) -> Iterator[RawConnection]:
        with self.open_raw() as conn:
            yield conn


def sqlite_backend(path: pathlib.Path) -> Backend:
    @contextlib.contextmanager
    def raw() -> Iterator[RawConnection]:
        conn = sqlite3.connect(path, isolation_level=None)
        try:
            yield RawConnection(lambda sql, params: conn.execute(sql, params))
        finally:
            conn.close()

    return Backend(
        name="sqlite",
        open_store=lambda **kw: state.SqliteStateStore(path, **kw),
        open_raw=raw,
        drop_audit_guards="DROP TRIGGER audit_no_update; DROP TRIGGER audit_no_delete",
        append_only_error=sqlite3.IntegrityError,
        newer_schema=f"PRAGMA user_version = {state.SCHEMA_VERSION + 1}",
    )


def postgres_backend(server: postgresql.PostgresServer) -> Backend:
    database = f"test_{next(_databases)}"
    url = server.create_database(database)
    admin = f"postgresql://postgres@127.0.0.1:{server.port}/{database}"

    @contextlib.contextmanager
    def raw() -> Iterator[RawConnection]:
        with psycopg.connect(admin, autocommit=True) as conn:

            def execute(sql: str, params: Sequence[Any]) -> Any:
                if not params:
                    return conn.execute(sql)
                return conn.execute(sql.replace("?", "%s"), params)

            yield RawConnection(execute)

    return Backend(
        name="postgresql",
        open_store=lambda **kw: state.PostgresStateStore(url, password=server.password, **kw),
        open_raw=raw,
        drop_audit_guards="ALTER TABLE audit DISABLE TRIGGER USER",
        append_only_error=psycopg.errors.RaiseException,
        newer_schema=f"UPDATE schema_version SET version = {state.PG_SCHEMA_VERSION + 1}",  # noqa: S608
    )


def execute_script(conn: RawConnection, script: str) -> None:
    for statement in script.split(";"):
        if statement.strip():
            conn.execute(statement)
