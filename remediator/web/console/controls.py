"""The console's changes (POST): pause, resume, reset a breaker, approve or reject a run, log out.

Each runs the control API's own operation (:mod:`remediator.web.control`), so it is audited the
same way, with ``console:<name>`` as who did it. A form must carry its session's CSRF token, and
a viewer's session may not change anything; both are refused with 403 before anything happens.
The answer is a redirect to the page the change concerns, with a notice saying what was done.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Mapping

from aiohttp import web

from remediator.core import runs
from remediator.engine import envelope
from remediator.web import control
from remediator.web.console import rendering, sessions
from remediator.web.console.rendering import CONSOLE, SESSION, Handler, render
from remediator.web.services import SERVICES

CSRF_FIELD = "csrf"


def add_routes(app: web.Application) -> None:
    app.router.add_post("/logout", _checked(logout, control_needed=False))
    app.router.add_post("/pause", _checked(pause))
    app.router.add_post("/resume", _checked(resume))
    app.router.add_post("/breakers/reset", _checked(reset_breaker))
    app.router.add_post("/runs/{run_id}/approve", _checked(approve))
    app.router.add_post("/runs/{run_id}/reject", _checked(reject))


FormHandler = Callable[[web.Request, Mapping[str, str]], Awaitable[web.StreamResponse]]


def _checked(handler: FormHandler, *, control_needed: bool = True) -> Handler:
    async def checked(request: web.Request) -> web.StreamResponse:
        session = request[SESSION]
        form = {k: v for k, v in (await request.post()).items() if isinstance(v, str)}
        if not sessions.Keyring.csrf_matches(session, form.get(CSRF_FIELD)):
            return render(
                request,
                "refused.html",
                status=403,
                reason="This form was stale or did not come from this console (its CSRF token "
                "is missing or wrong). Reload the page and try again.",
            )
        if control_needed and not session.may_control:
            return render(request, "refused.html", status=403, reason="This login may only read.")
        try:
            return await handler(request, form)
        except control.BadBodyError as e:
            back = _back(request)
            raise rendering.redirect(request, back, notice=f"{e.field}: {e}", error=True) from e

    return checked


def _back(request: web.Request) -> str:
    run_id = request.match_info.get("run_id")
    return f"/ui/runs/{run_id}" if run_id and runs.is_run_id(run_id) else "/ui/"


async def logout(request: web.Request, form: Mapping[str, str]) -> web.StreamResponse:
    request.app[CONSOLE].keyring.revoke(request[SESSION], now=time.time())
    response = web.HTTPSeeOther("/ui/login")
    response.del_cookie(sessions.COOKIE, path="/ui")
    return response


async def pause(request: web.Request, form: Mapping[str, str]) -> web.StreamResponse:
    reason = control.parse_text(form, "reason", required=True)
    by = request[SESSION].actor
    changed = await control.switch(request.app[SERVICES], paused=True, by=by, reason=reason)
    notice = f"Remediation paused: {reason}" if changed else "Remediation was already paused."
    raise rendering.redirect(request, "/ui/", notice=notice)


async def resume(request: web.Request, form: Mapping[str, str]) -> web.StreamResponse:
    reason = control.parse_text(form, "reason")
    by = request[SESSION].actor
    changed = await control.switch(request.app[SERVICES], paused=False, by=by, reason=reason)
    notice = "Remediation resumed." if changed else "Remediation was not paused."
    raise rendering.redirect(request, "/ui/", notice=notice)


async def reset_breaker(request: web.Request, form: Mapping[str, str]) -> web.StreamResponse:
    playbook = control.parse_text(form, "playbook", required=True)
    target = control.parse_target({"target": form["target"]} if form.get("target") else {})
    closed = await control.reset(
        request.app[SERVICES], playbook=playbook, target=target, by=request[SESSION].actor
    )
    scope = f"{playbook} on {target}" if target else playbook
    raise rendering.redirect(request, "/ui/", notice=f"Closed {closed} breaker(s) of {scope}.")


async def _decide(
    request: web.Request, form: Mapping[str, str], *, approved: bool
) -> web.StreamResponse:
    run_id = control.check_run_id(request.match_info["run_id"])
    decision = envelope.ApprovalDecision(
        approved=approved,
        by=request[SESSION].actor,
        comment=control.parse_text(form, "comment"),
    )
    back = f"/ui/runs/{run_id}"
    if not await control.decide(request.app[SERVICES], run_id, decision):
        raise rendering.redirect(
            request, back, notice="That run is no longer waiting for an approval.", error=True
        )
    verb = "approved" if approved else "rejected"
    raise rendering.redirect(request, back, notice=f"Run {run_id} {verb}.")


async def approve(request: web.Request, form: Mapping[str, str]) -> web.StreamResponse:
    return await _decide(request, form, approved=True)


async def reject(request: web.Request, form: Mapping[str, str]) -> web.StreamResponse:
    return await _decide(request, form, approved=False)
