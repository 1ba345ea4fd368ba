"""The operator control API: the kill switch, breaker resets, approvals, safety status.

Every change names who made it (``by``), is audited by the store, and needs the API token.
Bodies are validated and a bad one answers 400 naming the field.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Mapping
from typing import Any

from aiohttp import web

from remediator.core import runs
from remediator.engine import envelope
from remediator.web import auth
from remediator.web.services import SERVICES, Services

ACTOR = re.compile(r"^[A-Za-z0-9@._:-]{1,64}$")
MAX_TEXT = 512


def add_routes(app: web.Application) -> None:
    app.router.add_get("/api/v1/safety", _guard(safety_status))
    app.router.add_post("/api/v1/pause", _guard(pause))
    app.router.add_post("/api/v1/resume", _guard(resume))
    app.router.add_post("/api/v1/breakers/reset", _guard(reset_breakers))
    app.router.add_post("/api/v1/runs/{run_id}/approve", _guard(approve))
    app.router.add_post("/api/v1/runs/{run_id}/reject", _guard(reject))


class BadBodyError(Exception):
    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


def _guard(handler: Any) -> Any:
    async def guarded(request: web.Request) -> web.StreamResponse:
        services = request.app[SERVICES]
        if not auth.authorized(request, services.api_token):
            return auth.unauthorized()
        try:
            response: web.StreamResponse = await handler(request, services)
        except BadBodyError as e:
            return web.json_response(
                {"error": "bad_request", "message": str(e), "field": e.field}, status=400
            )
        return response

    return guarded


async def _body(request: web.Request) -> dict[str, Any]:
    if not request.can_read_body:
        return {}
    if request.content_type != "application/json":
        raise BadBodyError("body", "Content-Type must be application/json")
    try:
        body = json.loads(await request.read())
    except ValueError as e:
        raise BadBodyError("body", f"body is not JSON: {e}") from e
    if not isinstance(body, dict):
        raise BadBodyError("body", "must be a JSON object")
    return body


def parse_actor(body: Mapping[str, Any]) -> str:
    by = body.get("by")
    if not isinstance(by, str) or not ACTOR.match(by):
        raise BadBodyError("by", "who is deciding: 1-64 characters [A-Za-z0-9@._:-]")
    return by


def parse_text(body: Mapping[str, Any], name: str, *, required: bool = False) -> str:
    value = body.get(name, "")
    if not isinstance(value, str) or len(value) > MAX_TEXT or (required and not value):
        raise BadBodyError(
            name,
            f"{name} must be a string of at most {MAX_TEXT} characters"
            + (" and not empty" if required else ""),
        )
    return value


def parse_target(body: Mapping[str, Any]) -> str | None:
    target = body.get("target")
    if target is not None and (not isinstance(target, str) or not 0 < len(target) <= 253):
        raise BadBodyError("target", "target must be a string of 1-253 characters")
    return target


def check_run_id(run_id: str) -> str:
    if not runs.is_run_id(run_id):
        raise BadBodyError("run_id", "not a run id")
    return run_id


# The operations, shared by this JSON API and the console's forms: one place decides what a
# pause, a reset or an approval does.


async def switch(services: Services, *, paused: bool, by: str, reason: str) -> bool:
    """Pause or resume; False when it already was in that state."""
    changed = await services.store.set_paused(paused, by=by, reason=reason, now=time.time())
    await services.refresh_safety()
    return changed


async def reset(services: Services, *, playbook: str, target: str | None, by: str) -> int:
    """Close a playbook's breakers (one target's, or all); how many were open."""
    closed = await services.store.reset_breakers(playbook, target, by=by, now=time.time())
    await services.refresh_safety()
    return closed


async def decide(services: Services, run_id: str, decision: envelope.ApprovalDecision) -> bool:
    """False when no run with that id is waiting for an approval."""
    return await services.approvals.decide(run_id, decision)


async def safety_status(request: web.Request, services: Services) -> web.Response:
    status = await services.store.safety_status(now=time.time())
    # From the store, not this replica's waiters: a run may wait on any replica.
    waiting = await services.store.list_runs(
        runs.RunFilter(outcome=str(runs.RunStatus.AWAITING_APPROVAL)), limit=1000
    )
    return web.json_response(
        {
            "paused": dict(status.paused) if status.paused else None,
            "breakers": [
                {
                    "playbook": b.playbook,
                    "target": b.target,
                    "opened_at": b.opened_at,
                    "closes_at": b.closes_at,
                }
                for b in status.breakers
            ],
            "storms": [{"playbook": s.playbook, "alertname": s.alertname} for s in status.storms],
            "awaiting_approval": sorted(r.run_id for r in waiting.items),
        }
    )


async def _switch(request: web.Request, services: Services, *, paused: bool) -> web.Response:
    body = await _body(request)
    by, reason = parse_actor(body), parse_text(body, "reason", required=paused)
    changed = await switch(services, paused=paused, by=by, reason=reason)
    return web.json_response({"paused": paused, "changed": changed})


async def pause(request: web.Request, services: Services) -> web.Response:
    return await _switch(request, services, paused=True)


async def resume(request: web.Request, services: Services) -> web.Response:
    return await _switch(request, services, paused=False)


async def reset_breakers(request: web.Request, services: Services) -> web.Response:
    body = await _body(request)
    by = parse_actor(body)
    playbook = parse_text(body, "playbook", required=True)
    closed = await reset(services, playbook=playbook, target=parse_target(body), by=by)
    return web.json_response({"closed": closed})


async def _decide(request: web.Request, services: Services, *, approved: bool) -> web.Response:
    run_id = check_run_id(request.match_info["run_id"])
    body = await _body(request)
    decision = envelope.ApprovalDecision(
        approved=approved, by=parse_actor(body), comment=parse_text(body, "comment")
    )
    if not await decide(services, run_id, decision):
        return web.json_response(
            {"error": "not_awaiting_approval", "message": "no run with that id is waiting"},
            status=409,
        )
    return web.json_response({"run_id": run_id, "approved": approved})


async def approve(request: web.Request, services: Services) -> web.Response:
    return await _decide(request, services, approved=True)


async def reject(request: web.Request, services: Services) -> web.Response:
    return await _decide(request, services, approved=False)
