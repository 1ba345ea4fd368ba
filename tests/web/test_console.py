"""The console over a real socket (pytest-aiohttp), on the real store and engine of
``tests/web/conftest.py``: access, sessions, CSRF, refusals, and what pages show. The browser
tests (``tests/e2e/test_console.py``) cover the same pages clicked through in Chromium."""

from __future__ import annotations

import base64
import contextlib
import json
import re
import sqlite3

import aiohttp
from aiohttp import web
from aiohttp.test_utils import TestClient
from pytest_aiohttp import AiohttpClient

from remediator.web import intake
from tests.web.conftest import API_TOKEN, Client, Engine, MakeEngine, auth, storedown

VIEWER_TOKEN = "viewer-0f3b9e1c-secret"
CSRF = re.compile(r'name="csrf" value="([0-9a-f]+)"')
INLINE_SCRIPT = re.compile(r"<script(?![^>]*\bsrc=)", re.IGNORECASE)


async def log_in(
    client: Client, token: str = API_TOKEN, *, name: str = "alice", **headers: str
) -> aiohttp.ClientResponse:
    response = await client.post(
        "/ui/login",
        data={"name": name, "token": token},
        headers=headers,
        allow_redirects=False,
    )
    return response


async def csrf_of(client: Client) -> str:
    response = await client.get("/ui/")
    found = CSRF.search(await response.text())
    assert found is not None
    return found.group(1)


async def admit(client: Client, engine: Engine, store_id: str = "s1") -> str:
    response = await client.post("/webhook/alertmanager", json=storedown(store_id), headers=auth())
    assert response.status == 200, await response.text()
    await engine.settle()
    (run_id,) = (await response.json())["runs"]
    return str(run_id)


async def test_pages_need_a_login_and_every_answer_carries_the_security_headers(
    client: Client,
) -> None:
    to_console = await client.get("/ui", allow_redirects=False)
    to_login = await client.get("/ui/runs?outcome=failed", allow_redirects=False)
    login = await client.get("/ui/login")
    html = await login.text()

    assert (to_console.status, to_console.headers["Location"]) == (302, "/ui/")
    assert to_login.status == 302
    assert to_login.headers["Location"] == "/ui/login?next=/ui/runs?outcome%3Dfailed"
    for response in (to_login, login):
        csp = response.headers["Content-Security-Policy"]
        assert "script-src 'self';" in csp
        assert "frame-ancestors 'none'" in csp
        assert "unsafe-inline" not in csp
        assert response.headers["X-Content-Type-Options"] == "nosniff"
        assert response.headers["Cache-Control"] == "no-store"
    assert INLINE_SCRIPT.search(html) is None
    assert " style=" not in html


async def test_a_login_opens_a_strict_http_only_expiring_session(client: Client) -> None:
    plain = await log_in(client)
    overview = await client.get("/ui/")
    # Secure: the client's jar keeps this cookie from plain http from now on.
    behind_tls = await log_in(client, **{"X-Forwarded-Proto": "https"})

    assert (plain.status, plain.headers["Location"]) == (303, "/ui/")
    cookie = plain.headers["Set-Cookie"]
    for attribute in ("HttpOnly", "SameSite=Strict", "Max-Age=28800", "Path=/ui"):
        assert attribute in cookie
    assert "Secure" not in cookie
    assert "Secure" in behind_tls.headers["Set-Cookie"]
    assert overview.status == 200
    assert "alice · operator" in await overview.text()


async def test_wrong_tokens_get_one_message_and_repeated_failures_must_wait(
    make_engine: MakeEngine, aiohttp_client: AiohttpClient
) -> None:
    engine = await make_engine(viewer_token=VIEWER_TOKEN)
    client = await aiohttp_client(intake.make_app(engine.services))
    answers = [await log_in(client, token) for token in ("nope", API_TOKEN[:-1], "", "x")]
    texts = [await a.text() for a in answers]
    right_but_too_soon = await log_in(client, API_TOKEN)

    assert [a.status for a in answers] == [401, 401, 401, 401]
    # One message whatever was wrong: nothing says which token came close.
    assert all("That token was not accepted." in t for t in texts)
    assert right_but_too_soon.status == 429
    assert int(right_but_too_soon.headers["Retry-After"]) >= 1
    assert "Too many failed logins" in await right_but_too_soon.text()
    assert "Set-Cookie" not in right_but_too_soon.headers


async def test_after_a_login_only_pages_of_the_console_are_returned_to(client: Client) -> None:
    elsewhere = await client.post(
        "/ui/login",
        data={"name": "alice", "token": API_TOKEN, "next": "//evil.example/ui/"},
        allow_redirects=False,
    )
    runs = await client.post(
        "/ui/login",
        data={"name": "alice", "token": API_TOKEN, "next": "/ui/runs?outcome=failed"},
        allow_redirects=False,
    )

    assert elsewhere.headers["Location"] == "/ui/"
    assert runs.headers["Location"] == "/ui/runs?outcome=failed"


async def test_a_viewer_reads_everything_and_may_change_nothing(
    make_engine: MakeEngine, aiohttp_client: AiohttpClient
) -> None:
    engine = await make_engine(viewer_token=VIEWER_TOKEN)
    client = await aiohttp_client(intake.make_app(engine.services))
    run_id = await admit(client, engine)
    assert (await log_in(client, VIEWER_TOKEN, name="carol")).status == 303
    overview = await (await client.get("/ui/")).text()
    run_page = await client.get(f"/ui/runs/{run_id}")
    forged = await client.post(
        "/ui/pause", data={"csrf": await csrf_of(client), "reason": "viewer"}
    )

    assert "carol · viewer" in overview
    assert 'action="/ui/pause"' not in overview
    assert run_page.status == 200
    assert "<form" not in (await run_page.text()).split("<main>", 1)[1]
    assert forged.status == 403
    assert "This login may only read." in await forged.text()
    assert not await engine.store.is_paused()


async def test_a_change_needs_the_session_csrf_token_and_a_same_origin_form(
    client: Client, engine: Engine
) -> None:
    await log_in(client)
    csrf = await csrf_of(client)
    missing = await client.post("/ui/pause", data={"reason": "no token"})
    wrong = await client.post("/ui/pause", data={"reason": "guessed", "csrf": "0" * 64})
    other_site = await client.post(
        "/ui/pause",
        data={"reason": "cross-site", "csrf": csrf},
        headers={"Origin": "https://evil.example"},
    )
    paused_before = await engine.store.is_paused()
    done = await client.post(
        "/ui/pause", data={"reason": "migration", "csrf": csrf}, allow_redirects=False
    )
    overview = await (await client.get("/ui/")).text()

    assert [r.status for r in (missing, wrong, other_site)] == [403, 403, 403]
    assert "CSRF token" in await missing.text()
    assert not paused_before
    assert (done.status, done.headers["Location"]) == (303, "/ui/")
    assert await engine.store.is_paused()
    assert "Remediation paused: migration" in overview
    assert "console:alice" in overview
    assert "remediation_paused" in engine.audit_kinds()


async def test_a_tampered_or_logged_out_session_is_not_accepted(client: Client) -> None:
    await log_in(client)
    cookie = client.session.cookie_jar.filter_cookies(client.make_url("/ui/"))
    value = cookie["remediator_session"].value
    body, _, signature = value.partition(".")
    csrf = await csrf_of(client)

    logged_in = await client.get("/ui/", allow_redirects=False)
    logged_out = await client.post("/ui/logout", data={"csrf": csrf}, allow_redirects=False)
    client.session.cookie_jar.clear()

    async def with_cookie(cookie: str) -> aiohttp.ClientResponse:
        headers = {"Cookie": f"remediator_session={cookie}"}
        return await client.get("/ui/", headers=headers, allow_redirects=False)

    payload = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    renamed = base64.urlsafe_b64encode(json.dumps({**payload, "n": "mallory"}).encode())
    tampered = await with_cookie(f"{renamed.decode().rstrip('=')}.{signature}")
    replayed = await with_cookie(value)  # a copy kept from before the logout

    assert logged_in.status == 200
    assert tampered.status == 302
    assert logged_out.status == 303
    assert replayed.status == 302
    assert replayed.headers["Location"].startswith("/ui/login")


async def test_the_run_page_masks_secrets_and_links_only_http_sources(
    client: Client, engine: Engine
) -> None:
    payload = storedown("s1")
    payload["alerts"][0]["annotations"]["runbook"] = f"see wiki, token={API_TOKEN}"
    payload["alerts"][0]["generatorURL"] = "javascript:alert(document.cookie)"
    response = await client.post("/webhook/alertmanager", json=payload, headers=auth())
    (run_id,) = (await response.json())["runs"]
    await engine.settle()
    await log_in(client)
    page = await client.get(f"/ui/runs/{run_id}")
    html = await page.text()

    assert page.status == 200
    assert API_TOKEN not in html
    assert "token=***" in html
    assert 'href="javascript:' not in html
    assert 'data-outcome="succeeded"' in html
    assert "record (log)" in html


async def test_a_bad_filter_is_named_as_the_api_names_it(client: Client) -> None:
    await log_in(client)
    api = await client.get("/api/v1/runs?since=yesterday", headers=auth(API_TOKEN))
    page = await client.get("/ui/runs?since=yesterday&playbook=")

    assert api.status == page.status == 400
    message = (await api.json())["message"]
    assert f"since: {message}" in await page.text()


async def test_verifying_names_the_first_broken_record(client: Client, engine: Engine) -> None:
    await admit(client, engine)
    with contextlib.closing(sqlite3.connect(engine.store.path)) as conn:
        (seq,) = conn.execute("SELECT seq FROM audit WHERE kind = 'run_finished'").fetchone()
        conn.executescript("DROP TRIGGER audit_no_update; DROP TRIGGER audit_no_delete;")
        conn.execute("UPDATE audit SET details = '{}' WHERE seq = ?", (seq,))
        conn.commit()
    await log_in(client)
    verify = await (await client.get("/ui/audit/verify")).text()
    overview = await (await client.get("/ui/")).text()

    assert f'broken at record\n  <a href="/ui/audit/{seq}">#{seq}</a>' in verify
    assert "content does not match its hash" in verify
    assert f'<a href="/ui/audit/{seq}">#{seq}</a>' in overview
    assert "status-failed" in overview


async def test_deciding_a_run_that_is_not_waiting_says_so(client: Client, engine: Engine) -> None:
    run_id = await admit(client, engine)
    await log_in(client)
    answer = await client.post(
        f"/ui/runs/{run_id}/approve", data={"csrf": await csrf_of(client), "comment": "ok"}
    )

    assert answer.url.path == f"/ui/runs/{run_id}"
    assert "That run is no longer waiting for an approval." in await answer.text()


async def test_without_auth_everyone_is_an_operator_and_pages_name_what_is_missing(
    make_engine: MakeEngine, aiohttp_client: AiohttpClient
) -> None:
    engine = await make_engine(webhook_token=None, api_token=None)
    client: TestClient[web.Request, web.Application] = await aiohttp_client(
        intake.make_app(engine.services)
    )
    overview = await client.get("/ui/", allow_redirects=False)
    stores = await client.get("/ui/stores")
    login = await client.get("/ui/login", allow_redirects=False)

    assert overview.status == 200
    assert "anonymous · operator" in await overview.text()
    assert "Store discovery is not running here" in await stores.text()
    assert (login.status, login.headers["Location"]) == (302, "/ui/")


async def test_the_overview_notices_records_cut_off_the_end_of_the_log(
    client: Client, engine: Engine
) -> None:
    await admit(client, engine)
    await log_in(client)
    verified = await (await client.get("/ui/audit/verify")).text()
    with contextlib.closing(sqlite3.connect(engine.store.path)) as conn:
        (head,) = conn.execute("SELECT max(seq) FROM audit").fetchone()
        intact = await (await client.get("/ui/")).text()
        conn.executescript("DROP TRIGGER audit_no_update; DROP TRIGGER audit_no_delete;")
        conn.execute("DELETE FROM audit WHERE seq > ?", (head - 2,))
        conn.commit()
    cut = await (await client.get("/ui/")).text()

    assert "The chain is intact" in verified
    assert f'Head: <a href="/ui/audit/{head}">#{head}</a>' in intact
    assert f"The log ends before record #{head}, which was its head before" in cut


async def test_a_breaker_reset_names_what_it_closed_and_a_bad_form_what_was_wrong(
    client: Client,
) -> None:
    await log_in(client)
    csrf = await csrf_of(client)
    empty = await client.post("/ui/breakers/reset", data={"csrf": csrf, "playbook": ""})
    reset = await client.post(
        "/ui/breakers/reset", data={"csrf": csrf, "playbook": "pod-crash", "target": "pod-a"}
    )

    assert empty.url.path == reset.url.path == "/ui/"
    assert "playbook: playbook must be a string" in await empty.text()
    assert "Closed 0 breaker(s) of pod-crash on pod-a." in await reset.text()
