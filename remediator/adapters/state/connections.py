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
    memo: dict[str, Any]
    """Facts this transaction already read or wrote (the chain's head, the kill switch), so a
    group of writes in one transaction asks the database once. Emptied when a transaction
    begins; :meth:`SqlStateStore._each` restores it when it rolls a write back."""

    def execute(self, sql: str, parameters: Sequence[Any] = (), /) -> Cursor: ...
