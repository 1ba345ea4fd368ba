"""The slice of a DB-API connection the shared transactions use, so both backends can run them.

SQLite's ``sqlite3.Connection`` fits as it is; the PostgreSQL backend wraps psycopg's connection
to translate ``?`` placeholders and to give rows the same by-index and by-name access.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any, Protocol

from remediator.core import runs


class Cursor(Protocol):
    @property
    def rowcount(self) -> int: ...

    def fetchone(self) -> Any: ...

    def fetchall(self) -> list[Any]: ...

    def __iter__(self) -> Iterator[Any]: ...


class Connection(Protocol):
    appended: list[runs.AuditRecord]
    """Audit records this transaction appended, for the post-commit hook."""

    def execute(self, sql: str, parameters: Sequence[Any] = (), /) -> Cursor: ...
