"""Templates, their filters, and what every page shares: the session, the notice, the refresh."""

from __future__ import annotations

import json
import math
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import jinja2
from aiohttp import web

from remediator.config import ConsoleSettings
from remediator.core import redaction
from remediator.web.console import sessions

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
STATIC = Path(str(resources.files("remediator.web.console") / "static"))
NOTICE_COOKIE = "remediator_notice"
NOTICE_TTL = 60


@dataclass(frozen=True, slots=True, kw_only=True)
class Console:
    settings: ConsoleSettings
    keyring: sessions.Keyring
    throttle: sessions.LoginThrottle
    secrets: tuple[str, ...]
    """Masked wherever they could surface on a page (tokens echoed in an error, say)."""

    def redact(self, value: Any) -> Any:
        return redaction.redact(value, secrets=self.secrets)


CONSOLE = web.AppKey("console", Console)
SESSION = web.RequestKey("console_session", sessions.Session)


def when(epoch: float | None) -> str:
    if epoch is None:
        return "—"
    return datetime.fromtimestamp(epoch, tz=UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def iso(epoch: float | None) -> str:
    if epoch is None:
        return ""
    return datetime.fromtimestamp(epoch, tz=UTC).isoformat(timespec="seconds")


def seconds(value: float | None) -> str:
    """A duration as people read it: 0.42 s, 3 m 05 s, 2 h 10 m."""
    if value is None or math.isnan(value):
        return "—"
    if value < 10:
        return f"{value:.2f} s"
    if value < 60:
        return f"{value:.0f} s"
    minutes, secs = divmod(int(value), 60)
    if minutes < 60:
        return f"{minutes} m {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours} h {minutes:02d} m"
    return f"{hours // 24} d {hours % 24} h"


def pretty(value: Any) -> str:
    return json.dumps(value, indent=2, ensure_ascii=False, sort_keys=True, default=str)


def http_url(value: object) -> str | None:
    """``value`` if it is an http(s) URL, so a ``javascript:`` generatorURL is never a link."""
    if isinstance(value, str) and value.lower().startswith(("http://", "https://")):
        return value
    return None


def query(params: Mapping[str, str | None], **changes: str | None) -> str:
    merged = {**params, **changes}
    return urlencode({k: v for k, v in merged.items() if v})


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("remediator.web.console", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(when=when, iso=iso, seconds=seconds, pretty=pretty, http_url=http_url)
    env.globals.update(query=query)
    return env


ENVIRONMENT = _environment()


def render(
    request: web.Request,
    template: str,
    *,
    status: int = 200,
    refresh: bool = False,
    **context: Any,
) -> web.Response:
    """A full page; ``refresh``: its ``data-live`` parts reload every refresh interval."""
    console = request.app[CONSOLE]
    session = request.get(SESSION)
    notice = _take_notice(request, console, session)
    html = ENVIRONMENT.get_template(template).render(
        session=session,
        notice=notice,
        refresh=console.settings.refresh_interval if refresh else None,
        path=request.path,
        static=lambda name: request.app.router["static"].url_for(filename=name),
        **context,
    )
    response = web.Response(text=html, status=status, content_type="text/html")
    if notice is not None:
        response.del_cookie(NOTICE_COOKIE, path="/ui")
    return response


def redirect(
    request: web.Request, location: str, *, notice: str, error: bool = False
) -> web.HTTPSeeOther:
    """Post/redirect/get: ``notice`` is shown once on the next page (signed, so no other site
    can put words on this one)."""
    response = web.HTTPSeeOther(location)
    session = request.get(SESSION)
    if session is not None:
        value = request.app[CONSOLE].keyring.seal_note(
            session, ("error:" if error else "ok:") + notice
        )
        response.set_cookie(
            NOTICE_COOKIE,
            value,
            max_age=NOTICE_TTL,
            path="/ui",
            httponly=True,
            samesite="Strict",
            secure=is_tls(request),
        )
    return response


def _take_notice(
    request: web.Request, console: Console, session: sessions.Session | None
) -> dict[str, str] | None:
    value = request.cookies.get(NOTICE_COOKIE)
    if value is None or session is None:
        return None
    text = console.keyring.open_note(session, value)
    if text is None:
        return None
    level, _, message = text.partition(":")
    return {"level": "error" if level == "error" else "ok", "text": message}


def is_tls(request: web.Request) -> bool:
    """Served over TLS, here or at the Ingress in front. A client lying in the header only
    makes its own cookie Secure, which a browser on plain http then does not send back."""
    forwarded = request.headers.get("X-Forwarded-Proto", "").split(",")[0].strip().lower()
    return request.secure or forwarded == "https"


def set_session_cookie(
    request: web.Request, response: web.StreamResponse, value: str, *, ttl: float
) -> None:
    response.set_cookie(
        sessions.COOKIE,
        value,
        max_age=int(ttl),
        path="/ui",
        httponly=True,
        samesite="Strict",
        secure=is_tls(request),
    )
