"""Bearer-token checks, constant-time, never logging what was sent."""

from __future__ import annotations

import hmac

from aiohttp import web


def authorized(request: web.Request, token: str | None) -> bool:
    """True when ``token`` is None (auth explicitly disabled) or the request carries it."""
    if token is None:
        return True
    header = request.headers.get("Authorization", "")
    scheme, _, presented = header.partition(" ")
    if scheme.lower() != "bearer":
        return False
    return hmac.compare_digest(presented.strip().encode(), token.encode())


def unauthorized() -> web.Response:
    return web.json_response(
        {"error": "unauthorized", "message": "missing or wrong bearer token"},
        status=401,
        headers={"WWW-Authenticate": 'Bearer realm="remediator"'},
    )
