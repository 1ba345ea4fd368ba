"""The daemon's durable state: dedupe keys, runs, steps, settings and the hash-chained audit log.

:class:`StateStore` (:mod:`.contract`) is what the engine, the web layer and the CLI use. Two
backends implement it on one set of transactions (:mod:`.transactions`, :mod:`.safeguards`):
:class:`SqliteStateStore`, the embedded default for one replica, and the PostgreSQL one for
several replicas on one state. :func:`open_store` picks the backend from ``state.path``.
"""

from remediator.adapters.state.contract import (
    RunDetail,
    RunStateError,
    SafetyStatus,
    StateError,
    StateStore,
)
from remediator.adapters.state.sqlite import SCHEMA_VERSION, SqliteStateStore, open_readonly

__all__ = [
    "SCHEMA_VERSION",
    "RunDetail",
    "RunStateError",
    "SafetyStatus",
    "SqliteStateStore",
    "StateError",
    "StateStore",
    "open_readonly",
]
