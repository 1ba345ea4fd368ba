"""The operator review API: runs, their steps and audit records, and the audit log itself.

Read-only here; filters and pagination are validated and bad values answer 400 naming the
query parameter. Protected by the API token (which falls back to the webhook token).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar

from aiohttp import web

from remediator.core import reporting, runs
from remediator.core.errors import InvalidInputError
from remediator.core.runs import Page, RunFilter
from remediator.web import auth
from remediator.web.services import SERVICES

T = TypeVar("T")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
MAX_LIMIT = 1000


def add_routes(app: web.Application) -> None:
    app.router.add_get("/api/v1/runs", _guarded(list_runs))
    app.router.add_get("/api/v1/runs/{run_id}", _guarded(get_run))
    app.router.add_get("/api/v1/audit", _guarded(list_audit))


class BadQueryError(Exception):
    def __init__(self, param: str, message: str) -> None:
        super().__init__(message)
        self.param = param


def _guarded(handler: Handler) -> Handler:
    async def guarded(request: web.Request) -> web.StreamResponse:
        if not auth.authorized(request, request.app[SERVICES].api_token):
            return auth.unauthorized()
        try:
            return await handler(request)
        except BadQueryError as e:
            return web.json_response(
                {"error": "bad_query", "message": str(e), "field": e.param}, status=400
            )

    return guarded


def parse_filter(
    query: Mapping[str, str] | web.Request, *, default_limit: int | None = None
) -> tuple[RunFilter, int, str | None]:
    params = query.query if isinstance(query, web.Request) else query
    allowed = {
        "since",
        "until",
        "playbook",
        "target",
        "outcome",
        "alertname",
        "kind",
        "limit",
        "cursor",
    }
    for name in params:
        if name not in allowed:
            raise BadQueryError(name, f"unknown query parameter {name!r}")

    def moment(name: str) -> float | None:
        text = params.get(name)
        if text is None:
            return None
        try:
            return reporting.parse_timestamp(text)
        except ValueError as e:
            raise BadQueryError(name, f"{name} must be RFC 3339 or epoch seconds") from e

    def text(name: str) -> str | None:
        value = params.get(name)
        if value is not None and (not value or len(value) > 253):
            raise BadQueryError(name, f"{name} must be 1-253 characters")
        return value

    try:
        limit = int(params.get("limit", str(default_limit or 50)))
    except ValueError as e:
        raise BadQueryError("limit", "limit must be an integer") from e
    if not 1 <= limit <= MAX_LIMIT:
        raise BadQueryError("limit", f"limit must be between 1 and {MAX_LIMIT}")
    flt = RunFilter(
        since=moment("since"),
        until=moment("until"),
        playbook=text("playbook"),
        target=text("target"),
        outcome=text("outcome"),
        alertname=text("alertname"),
        kind=text("kind"),
    )
    return flt, limit, text("cursor")


def store_refusal(error: ValueError | InvalidInputError) -> BadQueryError:
    # The store refuses a cursor it did not issue with InvalidInputError naming the param;
    # left uncaught, that was a 500 for what is the client's mistake.
    if isinstance(error, InvalidInputError) and error.problems:
        problem = error.problems[0]
        return BadQueryError(problem.path or "cursor", f"{problem.path}: {problem.message}")
    return BadQueryError("cursor", str(error))


async def fetch_page(
    params: Mapping[str, str] | web.Request,
    fetch: Callable[..., Awaitable[Page[T]]],
    *,
    default_limit: int | None = None,
) -> tuple[RunFilter, Page[T]]:
    """One page of a filtered listing (the API's and the console's): the query validated and
    the store's refusals raised as :class:`BadQueryError`."""
    flt, limit, cursor = parse_filter(params, default_limit=default_limit)
    try:
        page = await fetch(flt, limit=limit, cursor=cursor)
    except (ValueError, InvalidInputError) as e:
        raise store_refusal(e) from e
    return flt, page


async def _page(
    request: web.Request,
    fetch: Callable[..., Awaitable[Page[T]]],
    to_json: Callable[[T], dict[str, Any]],
) -> web.Response:
    """One page of a filtered listing, as JSON."""
    _, page = await fetch_page(request, fetch)
    return web.json_response(
        {"items": [to_json(item) for item in page.items], "next_cursor": page.next_cursor}
    )


async def list_runs(request: web.Request) -> web.Response:
    return await _page(request, request.app[SERVICES].store.list_runs, reporting.run_json)


async def get_run(request: web.Request) -> web.Response:
    run_id = request.match_info["run_id"]
    if not runs.is_run_id(run_id):
        raise BadQueryError("run_id", "not a run id")
    detail = await request.app[SERVICES].store.get_run(run_id)
    if detail is None:
        return web.json_response({"error": "not_found", "message": "no such run"}, status=404)
    return web.json_response(
        {
            **reporting.run_json(detail.run),
            "steps": [reporting.step_json(s) for s in detail.steps],
            "audit": [reporting.audit_json(a) for a in detail.audit],
        }
    )


async def list_audit(request: web.Request) -> web.Response:
    return await _page(request, request.app[SERVICES].store.query_audit, reporting.audit_json)
