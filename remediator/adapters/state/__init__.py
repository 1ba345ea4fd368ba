"""The daemon's durable state: dedupe keys, runs, steps, settings and the hash-chained audit log.

:class:`StateStore` (:mod:`.contract`) is what the engine, the web layer and the CLI use. Two
backends implement it on one set of transactions (:mod:`.transactions`, :mod:`.safeguards`):
:class:`SqliteStateStore`, the embedded default for one replica, and
:class:`PostgresStateStore` for several replicas on one state. :func:`open_store` picks the
backend from ``state.path``: a ``postgresql://`` URL, or else a file path.
"""

from __future__ import annotations

import os
import pathlib
import time
from collections.abc import Callable

from remediator.adapters.state.contract import (
    RunDetail,
    RunLostError,
    RunStateError,
    SafetyStatus,
    StateError,
    StateStore,
    TargetBusyError,
    UnstorableError,
)
from remediator.adapters.state.postgres import SCHEMA_VERSION as PG_SCHEMA_VERSION
from remediator.adapters.state.postgres import PostgresStateStore
from remediator.adapters.state.sqlite import SCHEMA_VERSION, SqliteStateStore, open_readonly
from remediator.adapters.state.store import SqlStateStore
from remediator.config import StateSettings, is_postgres_url
from remediator.core import runs

__all__ = [
    "PG_SCHEMA_VERSION",
    "SCHEMA_VERSION",
    "PostgresStateStore",
    "RunDetail",
    "RunLostError",
    "RunStateError",
    "SafetyStatus",
    "SqlStateStore",
    "SqliteStateStore",
    "StateError",
    "StateStore",
    "TargetBusyError",
    "UnstorableError",
    "open_readonly",
    "open_store",
]


def open_store(
    settings: StateSettings,
    *,
    readonly: bool = False,
    clock: Callable[[], float] = time.time,
    on_append: Callable[[runs.AuditRecord], None] | None = None,
) -> SqlStateStore:
    """The configured backend, not yet opened. ``readonly``: for the CLI beside a daemon."""
    if is_postgres_url(settings.path):
        return PostgresStateStore(
            settings.path,
            password=read_password(settings),
            readonly=readonly,
            pool_size=settings.pool_size,
            query_timeout=settings.query_timeout,
            connect_timeout=settings.connect_timeout,
            clock=clock,
            on_append=on_append,
        )
    if readonly:
        return open_readonly(settings.path)
    return SqliteStateStore(settings.path, clock=clock, on_append=on_append)


def read_password(settings: StateSettings) -> str | None:
    if settings.password_file:
        try:
            return pathlib.Path(settings.password_file).read_text(encoding="utf-8").strip()
        except OSError as e:
            raise StateError(
                f"state.password_file: cannot read {settings.password_file}: {e.strerror}"
            ) from e
    return os.environ.get(settings.password_env) or None
