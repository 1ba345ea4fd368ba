"""The console's pages (GET): overview, runs, a run, alerts not run, audit, stores, login.

Listings go through the review API's own parsing and paging (:func:`review.fetch_page`), so a
filter means the same here as in ``/api/v1``; state is read through the ``StateStore``
protocol only.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from remediator.core import auditing, planning, runs, safety, timelines
from remediator.core.runs import AuditKind, AuditRecord, RunFilter, RunStatus
from remediator.web import review
from remediator.web.console import rendering, sessions
from remediator.web.console.rendering import CONSOLE, SESSION, render
from remediator.web.services import SERVICES, Services

DAY = 86400.0
VERIFICATION_SETTING = "console.last_audit_verification"
"""Where the last verification started from the console is kept (all replicas see it)."""
COUNT_PAGES = 20
"""Pages of 1000 runs counted for the overview; past that it says "at least"."""
HEAD_SCAN = 2000
"""Audit records read forward from the published head to find the newest one."""
STORES_PER_PAGE = 100
MAX_WAITING = 100
"""Runs waiting for approval shown on the overview."""
NOT_RUN_PAGES = 10
NOT_RUN_SHOWN = 20
"""Records listed per reason on the alerts-not-run page (the counts cover them all)."""

NOT_RUN_REASONS: Mapping[str, str] = {
    str(safety.Refusal.PAUSED): "Paused (kill switch)",
    str(safety.Refusal.TARGET_RATE_LIMITED): "Rate limit (target)",
    str(safety.Refusal.PLAYBOOK_RATE_LIMITED): "Rate limit (playbook)",
    str(safety.Refusal.COOLDOWN): "Cooldown",
    str(safety.Refusal.STORM): "Storm",
    str(safety.Refusal.BREAKER_OPEN): "Circuit breaker open",
    str(safety.Refusal.SCOPE): "Out of scope",
    planning.NotRun.SCOPE: "Out of scope",
    planning.NotRun.NO_MATCHING_PLAYBOOK: "No playbook",
    planning.NotRun.RESOLVED_NO_PLAYBOOK: "Resolved, no playbook",
    planning.NotRun.TARGET_UNRENDERABLE: "Target could not be rendered",
    planning.NotRun.ALERT_RESOLVED: "Alert resolved before the run",
    planning.NotRun.SHUTDOWN: "Shutting down",
}
"""Headings of the reasons an alert does not run; unknown reasons are shown as recorded."""


def add_routes(app: web.Application) -> None:
    app.router.add_get("/", overview, name="overview")
    app.router.add_get("/login", login_form)
    app.router.add_post("/login", login)
    app.router.add_get("/runs", run_list)
    app.router.add_get("/runs/{run_id}", run_page)
    app.router.add_get("/not-run", not_run)
    app.router.add_get("/audit", audit_list)
    app.router.add_get("/audit/verify", audit_verify)
    app.router.add_get("/audit/{seq}", audit_record)
    app.router.add_get("/stores", store_list)


# --- login --------------------------------------------------------------------------------------


def _next_page(value: str | None) -> str:
    """Back to where the login interrupted, but only ever within the console."""
    if value and value.startswith("/ui/") and not value.startswith("//"):
        return value
    return "/ui/"


async def login_form(request: web.Request) -> web.StreamResponse:
    console = request.app[CONSOLE]
    cookie = request.cookies.get(sessions.COOKIE)
    if console.keyring.open_access or (cookie and console.keyring.read(cookie, now=time.time())):
        raise web.HTTPFound(_next_page(request.query.get("next")))
    return render(request, "login.html", next=request.query.get("next", ""), error=None, name="")


async def login(request: web.Request) -> web.StreamResponse:
    console = request.app[CONSOLE]
    form = await request.post()
    token, name = str(form.get("token", "")), str(form.get("name", "")).strip()
    target = str(form.get("next", ""))
    client = request.remote or "?"

    def refused(error: str, status: int) -> web.Response:
        return render(request, "login.html", status=status, next=target, error=error, name=name)

    wait = console.throttle.wait_for(client)
    if wait > 0:
        response = refused(
            f"Too many failed logins from this address; try again in {wait:.0f} s.", 429
        )
        response.headers["Retry-After"] = str(max(1, round(wait)))
        return response
    if not sessions.NAME.match(name):
        return refused(
            "Your name: 1-48 letters, digits or @ . _ - (it goes in the audit log).", 400
        )
    role = console.keyring.role_of(token.strip())
    if role is None:
        console.throttle.failed(client)
        # Which token, or whether any is configured for a role, is not said.
        return refused("That token was not accepted.", 401)
    console.throttle.succeeded(client)
    ttl = console.settings.session_ttl
    value, _ = console.keyring.issue(role, name, now=time.time(), ttl=ttl)
    response = web.HTTPSeeOther(_next_page(target))
    rendering.set_session_cookie(request, response, value, ttl=ttl)
    return response


# --- overview -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Waiting:
    run: runs.RunRecord
    step: str
    action: str
    params: Any
    asked_at: float
    time_left: float


async def overview(request: web.Request) -> web.Response:
    services, console = request.app[SERVICES], request.app[CONSOLE]
    now = time.time()
    status = await services.store.safety_status(now=now)
    waiting = [
        w
        for w in await asyncio.gather(
            *(_waiting(services, console, run.run_id, now) for run in await _awaiting(services))
        )
        if w is not None
    ]
    counts, complete = await _outcome_counts(services, since=now - DAY)
    verification = await _last_verification(services)
    head, known_head = await _audit_head(services, verification)
    return render(
        request,
        "overview.html",
        refresh=True,
        now=now,
        paused=status.paused,
        breakers=status.breakers,
        storms=status.storms,
        waiting=waiting,
        counts=counts,
        counts_complete=complete,
        day_ago=rendering.iso(now - DAY),
        head=head,
        known_head=known_head,
        verification=verification,
    )


async def _awaiting(services: Services) -> tuple[runs.RunRecord, ...]:
    """Runs waiting for an operator, from the store: every replica's, not only this one's."""
    awaiting = RunFilter(outcome=str(RunStatus.AWAITING_APPROVAL))
    return (await services.store.list_runs(awaiting, limit=MAX_WAITING)).items


async def _waiting(
    services: Services, console: rendering.Console, run_id: str, now: float
) -> Waiting | None:
    detail = await services.store.get_run(run_id)
    if detail is None:
        return None
    asked = next(
        (r for r in reversed(detail.audit) if r.event.kind is AuditKind.APPROVAL_REQUESTED), None
    )
    if asked is None:
        return None
    details = asked.event.details
    timeout = float(details.get("timeout") or 0)
    return Waiting(
        run=detail.run,
        step=str(details.get("step", "")),
        action=str(details.get("action", "")),
        params=console.redact(details.get("params", {})),
        asked_at=asked.time,
        time_left=max(0.0, asked.time + timeout - now),
    )


async def _outcome_counts(services: Services, *, since: float) -> tuple[dict[str, int], bool]:
    """Runs created since ``since`` by status; False when there were too many to count all."""
    counts: collections.Counter[str] = collections.Counter()
    cursor = None
    for _ in range(COUNT_PAGES):
        page = await services.store.list_runs(RunFilter(since=since), limit=1000, cursor=cursor)
        counts.update(str(run.status) for run in page.items)
        cursor = page.next_cursor
        if cursor is None:
            break
    ordered = {str(s): counts[str(s)] for s in RunStatus if counts[str(s)]}
    return ordered, cursor is None


async def _last_verification(services: Services) -> dict[str, Any] | None:
    text = await services.store.get_setting(VERIFICATION_SETTING)
    if text is None:
        return None
    with contextlib.suppress(ValueError):
        found = json.loads(text)
        if isinstance(found, dict):
            return found
    return None


async def _audit_head(
    services: Services, verification: Mapping[str, Any] | None
) -> tuple[AuditRecord | None, int]:
    """The newest audit record and the head known before reading: the published one
    (``remediator_audit_head_seq``) or the last verification's. Reading forward from there is
    one record when this process wrote the last one, and a few when another replica did; no
    record at all means the log now ends before a head that was seen."""
    published = services.metrics.registry.get_sample_value("remediator_audit_head_seq") or 0
    verified = int(verification.get("head_seq", 0)) if verification else 0
    start = max(int(published), verified, 1) - 1
    newest = None
    records = services.store.audit_records(after_seq=start, batch=200)
    try:
        count = 0
        async for record in records:
            newest = record
            count += 1
            if count >= HEAD_SCAN:
                break
    finally:
        await records.aclose()  # type: ignore[attr-defined]
    return newest, start + 1 if start else 0


# --- runs ---------------------------------------------------------------------------------------


def _filled(query: Mapping[str, str], allowed: set[str]) -> dict[str, str]:
    """The query's non-empty fields: a submitted form sends every input, empty or not."""
    return {k: v.strip() for k, v in query.items() if k in allowed and v.strip()}


RUN_FILTERS = {"playbook", "target", "alertname", "outcome", "since", "until", "cursor"}
AUDIT_FILTERS = {*RUN_FILTERS, "kind"}


async def _listing(
    request: web.Request,
    template: str,
    params: dict[str, str],
    fetch: Callable[..., Awaitable[runs.Page[Any]]],
    **context: Any,
) -> web.Response:
    """A filtered page of a listing; a bad filter is shown above the form, as the API's 400."""
    error, page = None, None
    try:
        _, page = await review.fetch_page(params, fetch, default_limit=100)
    except review.BadQueryError as e:
        error = f"{e.param}: {e}"
    status = 400 if error else 200
    return render(
        request, template, status=status, params=params, error=error, page=page, **context
    )


async def run_list(request: web.Request) -> web.Response:
    params = _filled(request.query, RUN_FILTERS)
    statuses = [str(s) for s in RunStatus]
    store = request.app[SERVICES].store
    return await _listing(request, "runs.html", params, store.list_runs, statuses=statuses)


async def run_page(request: web.Request) -> web.Response:
    services, console = request.app[SERVICES], request.app[CONSOLE]
    run_id = request.match_info["run_id"]
    detail = await services.store.get_run(run_id) if runs.is_run_id(run_id) else None
    if detail is None:
        return render(request, "missing.html", status=404, what=f"run {run_id}")
    now = time.time()
    run = detail.run
    timeline = timelines.build(run, detail.steps, detail.audit, now=now)
    until = (run.finished_at or now) + 60
    escalations = await services.store.query_audit(
        RunFilter(
            kind=str(AuditKind.ESCALATION_SENT),
            playbook=run.playbook,
            target=run.target,
            since=run.created_at,
            until=until,
        ),
        limit=50,
    )
    verifications = [r for r in detail.audit if r.event.kind is AuditKind.VERIFICATION_FINISHED]
    queued = next((r for r in detail.audit if r.event.kind is AuditKind.RUN_QUEUED), None)
    alert = console.redact(dict(run.alert))
    session = request[SESSION]
    waiting = run.status is RunStatus.AWAITING_APPROVAL
    return render(
        request,
        "run.html",
        refresh=not run.status.finished,
        run=run,
        alert=alert,
        queued=queued,
        steps=[
            {
                "record": s,
                "params": console.redact(dict(s.params)),
                "output": console.redact(dict(s.output)),
                "error": console.redact(s.error),
            }
            for s in detail.steps
        ],
        timeline=timeline,
        verifications=[
            {"record": r, "details": console.redact(dict(r.event.details))} for r in verifications
        ],
        escalations=escalations.items,
        audit=[
            {"record": r, "details": console.redact(dict(r.event.details))} for r in detail.audit
        ],
        can_decide=waiting and session.may_control,
        waiting=await _waiting(services, console, run.run_id, now) if waiting else None,
    )


# --- alerts not run -----------------------------------------------------------------------------


WINDOWS = {"1h": 3600.0, "24h": DAY, "7d": 7 * DAY}


async def not_run(request: web.Request) -> web.Response:
    services = request.app[SERVICES]
    window = request.query.get("window", "24h")
    if window not in WINDOWS:
        window = "24h"
    now = time.time()
    since = now - WINDOWS[window]
    groups: dict[str, list[AuditRecord]] = collections.defaultdict(list)
    cursor, complete = None, True
    flt = RunFilter(kind=str(AuditKind.ALERT_NOT_RUN), since=since)
    for _ in range(NOT_RUN_PAGES):
        page = await services.store.query_audit(flt, limit=1000, cursor=cursor)
        for record in page.items:
            groups[record.event.reason or "unknown"].append(record)
        cursor = page.next_cursor
        if cursor is None:
            break
    else:
        complete = False
    ordered = sorted(groups.items(), key=lambda item: -len(item[1]))
    return render(
        request,
        "not_run.html",
        window=window,
        windows=list(WINDOWS),
        since=since,
        complete=complete,
        groups=[
            {
                "reason": reason,
                "title": NOT_RUN_REASONS.get(reason, reason),
                "count": len(records),
                "latest": list(reversed(records))[:NOT_RUN_SHOWN],
            }
            for reason, records in ordered
        ],
    )


# --- audit --------------------------------------------------------------------------------------


async def audit_list(request: web.Request) -> web.Response:
    params = _filled(request.query, AUDIT_FILTERS)
    if not request.query:
        # The chain is oldest first; unfiltered, its first page would be the daemon's first day.
        params["since"] = rendering.iso(time.time() - DAY)
    kinds = [str(k) for k in AuditKind]
    store = request.app[SERVICES].store
    return await _listing(request, "audit.html", params, store.query_audit, kinds=kinds)


async def audit_record(request: web.Request) -> web.Response:
    services, console = request.app[SERVICES], request.app[CONSOLE]
    text = request.match_info["seq"]
    record = None
    if text.isdigit() and 0 < int(text) < 2**63:
        seq = int(text)
        records = services.store.audit_records(after_seq=seq - 1, batch=1)
        try:
            record = await anext(records, None)
        finally:
            await records.aclose()  # type: ignore[attr-defined]
        if record is not None and record.seq != seq:
            record = None
    if record is None:
        return render(request, "missing.html", status=404, what=f"audit record #{text}")
    return render(
        request,
        "audit_record.html",
        record=record,
        details=console.redact(dict(record.event.details)),
    )


async def audit_verify(request: web.Request) -> web.Response:
    services, session = request.app[SERVICES], request[SESSION]
    report = await services.store.verify_audit()
    result = _verification_json(report, by=session.actor, at=time.time())
    await services.store.put_setting(VERIFICATION_SETTING, json.dumps(result))
    return render(request, "verify.html", result=result)


def _verification_json(report: auditing.ChainReport, *, by: str, at: float) -> dict[str, Any]:
    return {
        "at": at,
        "by": by,
        "intact": report.intact,
        "checked": report.checked,
        "first_broken": report.first_broken,
        "reason": report.reason,
        "head_seq": report.head_seq,
        "head_hash": report.head_hash,
    }


# --- stores -------------------------------------------------------------------------------------


async def store_list(request: web.Request) -> web.Response:
    services = request.app[SERVICES]
    directory = services.store_directory
    if directory is None:
        return render(request, "stores.html", stores=None, page=1, pages=1, now=time.time())
    statuses = directory.statuses()
    pages = max(1, -(-len(statuses) // STORES_PER_PAGE))
    number = request.query.get("page", "1")
    page = min(pages, max(1, int(number))) if number.isdigit() else 1
    shown = statuses[(page - 1) * STORES_PER_PAGE : page * STORES_PER_PAGE]
    last = await asyncio.gather(
        *(services.store.list_runs(RunFilter(target=s.ref.namespace), limit=1) for s in shown)
    )
    return render(
        request,
        "stores.html",
        stores=[
            {"status": s, "last_run": found.items[0] if found.items else None}
            for s, found in zip(shown, last, strict=True)
        ],
        total=len(statuses),
        page=page,
        pages=pages,
        now=time.time(),
    )
