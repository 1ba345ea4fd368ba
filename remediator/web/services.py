"""What the HTTP handlers use, built once by :mod:`remediator.running` and stored on the app."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from aiohttp import web

from remediator.adapters import metrics, state
from remediator.config import Settings
from remediator.engine import admitting, envelope, watching


@dataclass(frozen=True, slots=True, kw_only=True)
class Services:
    """Everything the HTTP handlers use, built once by :mod:`remediator.running`."""

    settings: Settings
    admitter: admitting.Admitter
    store: state.StateStore
    metrics: metrics.Metrics
    webhook_token: str | None
    api_token: str | None
    ready: Callable[[], bool]
    approvals: envelope.Approvals
    refresh_safety: Callable[[], Awaitable[None]]
    """Bring the safety gauges up to date right after an operator changed something."""
    viewer_token: str | None = None
    """Console logins with this token may only read."""
    store_directory: watching.StoreDirectory | None = None
    """The discovered stores, when discovery runs (the console's Stores page)."""


SERVICES = web.AppKey("services", Services)
