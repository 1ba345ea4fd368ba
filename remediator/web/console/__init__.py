"""The operator console at ``/ui``: server-rendered pages over the review and control API's
own queries and operations, on the API's port.

Pages are jinja2 templates (autoescaped) with one stylesheet and one small script shipped in
this package; nothing is fetched from another host. Every page reads without JavaScript; the
script only refreshes the parts of a page that change. Changes are form POSTs carrying the
session's CSRF token, answered with a redirect and a notice (post/redirect/get).

Access: a login with the API token (operator: everything) or the viewer token (read only),
kept in a signed session cookie (:mod:`.sessions`). Every response carries a CSP without
inline script, ``frame-ancestors 'none'`` and ``nosniff``.
"""

from __future__ import annotations

import time
from urllib.parse import quote, urlsplit

from aiohttp import web

from remediator.web.console import controls, pages, rendering, sessions
from remediator.web.console.rendering import CONSOLE, SESSION, Console
from remediator.web.services import SERVICES, Services

PREFIX = "/ui"
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self';"
        " connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
    "Cross-Origin-Opener-Policy": "same-origin",
}
_PUBLIC = {f"{PREFIX}/login"}
"""Paths served without a session (besides the static files)."""


def add_to(app: web.Application, services: Services) -> None:
    """Mount the console on the daemon's app, at ``/ui``."""

    async def to_console(request: web.Request) -> web.StreamResponse:
        raise web.HTTPFound(f"{PREFIX}/")

    app.router.add_get(PREFIX, to_console)
    app.add_subapp(PREFIX, make_app(services))


def make_app(services: Services) -> web.Application:
    app = web.Application(middlewares=[_secured, _logged_in])
    app[SERVICES] = services
    app[CONSOLE] = Console(
        settings=services.settings.console,
        keyring=sessions.Keyring(
            operator_token=services.api_token, viewer_token=services.viewer_token
        ),
        throttle=sessions.LoginThrottle(clock=time.monotonic),
        secrets=tuple(
            t for t in (services.webhook_token, services.api_token, services.viewer_token) if t
        ),
    )
    pages.add_routes(app)
    controls.add_routes(app)
    app.router.add_static(
        "/static", rendering.STATIC, name="static", show_index=False, append_version=True
    )
    return app


@web.middleware
async def _secured(request: web.Request, handler: rendering.Handler) -> web.StreamResponse:
    if request.method == "POST" and not _same_origin(request):
        response: web.StreamResponse = web.Response(
            status=403, text="cross-origin form submissions are refused"
        )
    else:
        try:
            response = await handler(request)
        except web.HTTPException as e:
            response = e
    response.headers.update(SECURITY_HEADERS)
    if not request.path.startswith(f"{PREFIX}/static/"):
        response.headers["Cache-Control"] = "no-store"
    if isinstance(response, web.HTTPException) and response.status >= 300:
        raise response
    return response


def _same_origin(request: web.Request) -> bool:
    """A browser names the page a POST comes from; one from another site is refused even
    before its CSRF token is checked. Without the header (non-browser clients), the CSRF
    token alone decides."""
    origin = request.headers.get("Origin")
    if origin is None:
        return True
    return urlsplit(origin).netloc == request.host


@web.middleware
async def _logged_in(request: web.Request, handler: rendering.Handler) -> web.StreamResponse:
    if request.path in _PUBLIC or request.path.startswith(f"{PREFIX}/static/"):
        return await handler(request)
    console = request.app[CONSOLE]
    now = time.time()
    cookie = request.cookies.get(sessions.COOKIE)
    session = console.keyring.read(cookie, now=now) if cookie else None
    if session is None and console.keyring.open_access:
        value, session = console.keyring.issue(
            sessions.Role.OPERATOR, "anonymous", now=now, ttl=console.settings.session_ttl
        )
        request[SESSION] = session
        response = await handler(request)
        rendering.set_session_cookie(request, response, value, ttl=console.settings.session_ttl)
        return response
    if session is None:
        if request.method != "GET":
            raise web.HTTPUnauthorized(text="log in first")
        target = request.path_qs
        raise web.HTTPFound(f"{PREFIX}/login?next={quote(target, safe='')}")
    request[SESSION] = session
    return await handler(request)
