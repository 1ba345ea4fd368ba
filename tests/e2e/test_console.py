"""The console in a real browser: headless Chromium (Debian's package, no download) driven by
Playwright, against remediator running in the closed loop (`remediator.simulation.closedloop`:
the simulated platform behind a real Kubernetes API emulator, without Prometheus).

The module shares one loop and one browser; each test opens its own browser context (its own
cookies), works on its own store, and saves a screenshot of the pages it sees into
``docs/console/`` (the README shows them).
"""

from __future__ import annotations

import asyncio
import hashlib
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from playwright.async_api import (
    Browser,
    BrowserContext,
    Page,
    Route,
    ViewportSize,
    async_playwright,
    expect,
)

from remediator.simulation import closedloop
from tests.daemon_fixtures import UNLIMITED_SAFETY
from tests.e2e.closed_loop.conftest import restarted_at

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio(loop_scope="module")]

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",  # the tests run as root
    "--disable-gpu",
    # Chromium otherwise tries hosts this network refuses.
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
SCREENSHOTS = Path(__file__).resolve().parents[2] / "docs" / "console"
VIEWPORT: ViewportSize = {"width": 1280, "height": 800}
WAIT_MS = 10_000
VIEWER_TOKEN = "viewer-token-4be1c8a07d"

SAFETY = UNLIMITED_SAFETY
PLAYBOOKS = {
    # Every mutating step waits for an operator.
    "console-restart": """\
name: console-restart
trigger:
  matchers:
    - alertname="ConsoleRestart"
target: "store-{{ alert.labels.store_id }}"
steps:
  - name: restart_app
    action: k8s.rollout_restart
    params:
      kind: Deployment
      namespace: "store-{{ alert.labels.store_id }}"
      name: "{{ alert.labels.store_id }}-app"
"""
    + SAFETY
    + "  approval: always\n  approval_timeout: 5m\n",
    # Scales a Deployment the stores do not have: the Kubernetes API answers 404.
    "console-scale": """\
name: console-scale
trigger:
  matchers:
    - alertname="ConsoleScale"
target: "store-{{ alert.labels.store_id }}"
steps:
  - name: note
    action: log
    params:
      message: "scaling the worker of {{ alert.labels.store_id }}"
  - name: scale_worker
    action: k8s.scale
    params:
      kind: Deployment
      namespace: "store-{{ alert.labels.store_id }}"
      name: "{{ alert.labels.store_id }}-worker"
      replicas: 2
"""
    + SAFETY,
}


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def loop(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[closedloop.ClosedLoop]:
    workdir = tmp_path_factory.mktemp("console")
    playbooks = workdir / "playbooks"
    playbooks.mkdir()
    for name, text in PLAYBOOKS.items():
        (playbooks / f"{name}.yaml").write_text(text, encoding="utf-8")
    viewer_file = workdir / "viewer-token"
    viewer_file.write_text(VIEWER_TOKEN + "\n", encoding="utf-8")
    settings = closedloop.LoopSettings(
        stores=("s1", "s2", "s3", "s4"),
        monitoring=False,
        playbooks=playbooks,
        overrides={
            "auth": {"viewer_token_file": str(viewer_file)},
            "console": {"refresh_interval": 0.5},
        },
    )
    async with closedloop.run(workdir=workdir, settings=settings) as running:
        yield running


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def browser() -> AsyncIterator[Browser]:
    if shutil.which(CHROMIUM) is None:
        pytest.fail(f"{CHROMIUM} is missing; run .ci/setup (it installs Debian's chromium)")
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield launched
        await launched.close()


@pytest_asyncio.fixture(loop_scope="module")
async def context(browser: Browser) -> AsyncIterator[BrowserContext]:
    opened = await browser.new_context(viewport=VIEWPORT)
    opened.set_default_timeout(WAIT_MS)
    yield opened
    await opened.close()


async def shoot(page: Page, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    await page.screenshot(path=str(SCREENSHOTS / f"{name}.png"))


async def log_in(
    context: BrowserContext, loop: closedloop.ClosedLoop, *, token: str, name: str = "alice"
) -> Page:
    page = await context.new_page()
    await page.goto(f"{loop.url}/ui/")
    await page.get_by_label("Your name").fill(name)
    await page.get_by_label("Token").fill(token)
    await page.get_by_role("button", name="Log in").click()
    await expect(page.get_by_role("heading", name="Overview")).to_be_visible()
    return page


def firing(alertname: str, store_id: str, **annotations: str) -> dict[str, Any]:
    fingerprint = hashlib.sha256(f"{alertname}/{store_id}".encode()).hexdigest()[:16]
    return {
        "version": "4",
        "receiver": "remediator",
        "status": "firing",
        "groupKey": f'{{}}:{{alertname="{alertname}"}}',
        "truncatedAlerts": 0,
        "alerts": [
            {
                "status": "firing",
                "labels": {"alertname": alertname, "store_id": store_id, "severity": "page"},
                "annotations": annotations,
                "startsAt": "2026-12-03T09:00:00.000Z",
                "endsAt": "0001-01-01T00:00:00Z",
                "generatorURL": "http://prometheus.example/graph?g0.expr=store_up",
                "fingerprint": fingerprint,
            }
        ],
    }


async def test_a_wrong_token_is_refused_and_the_right_one_shows_the_overview(
    loop: closedloop.ClosedLoop, context: BrowserContext
) -> None:
    page = await context.new_page()
    await page.goto(f"{loop.url}/ui/")
    await expect(page.get_by_role("heading", name="Log in")).to_be_visible()
    await shoot(page, "login")

    await page.get_by_label("Your name").fill("alice")
    await page.get_by_label("Token").fill("not-the-token")
    await page.get_by_role("button", name="Log in").click()
    await expect(page.get_by_role("alert")).to_have_text("That token was not accepted.")

    await page.get_by_label("Token").fill(loop.token)
    await page.get_by_role("button", name="Log in").click()
    await expect(page.get_by_role("heading", name="Overview")).to_be_visible()
    await expect(page.locator("#kill-switch")).to_contain_text("Remediation is running")
    await expect(page.locator(".who")).to_contain_text("alice · operator")
    cookie = next(c for c in await context.cookies() if c["name"] == "remediator_session")
    assert (cookie["httpOnly"], cookie["sameSite"]) == (True, "Strict")


async def test_a_failed_run_shows_its_failing_step_and_error_on_the_timeline(
    loop: closedloop.ClosedLoop, context: BrowserContext
) -> None:
    answer = await loop.post_alert(firing("ConsoleScale", "s2", summary="workers behind"))
    (run_id,) = answer["runs"]
    detail = await loop.wait_run(run_id)
    assert detail["status"] == "failed"
    page = await log_in(context, loop, token=loop.token)

    await page.get_by_role("link", name="Runs", exact=True).click()
    await page.get_by_label("Outcome").select_option("failed")
    await page.get_by_role("button", name="Filter").click()
    await expect(page.locator("#runs tbody tr")).to_have_count(1)
    await shoot(page, "runs")
    await page.get_by_role("link", name=run_id[:8]).click()

    failed = page.locator("#timeline .span[data-outcome=failed]")
    await expect(failed).to_have_count(1)
    await expect(failed).to_contain_text("scale_worker (k8s.scale)")
    (step,) = [s for s in detail["steps"] if s["outcome"] == "failed"]
    assert step["error"]
    await expect(failed.locator(".span-detail")).to_have_text(step["error"])
    await expect(page.locator("#timeline .span[data-outcome=succeeded]")).to_contain_text("note")
    await expect(page.locator("#alert")).to_contain_text("workers behind")
    await expect(page.locator("#alert a[href^='http://prometheus.example/']")).to_have_count(1)
    await shoot(page, "run-failed")


async def test_an_approved_run_proceeds_and_writes_to_the_cluster(
    loop: closedloop.ClosedLoop, context: BrowserContext
) -> None:
    assert restarted_at(loop, "Deployment", "store-s1", "s1-app") is None
    answer = await loop.post_alert(firing("ConsoleRestart", "s1"))
    (run_id,) = answer["runs"]
    await loop.wait_audit("approval_requested", where=lambda r: r["run_id"] == run_id)
    page = await log_in(context, loop, token=loop.token)

    waiting = page.locator("#approvals .waiting")
    await expect(waiting).to_contain_text("restart_app")
    await expect(waiting).to_contain_text("left before it is rejected")
    await shoot(page, "overview-approval")
    await waiting.get_by_role("link", name=run_id[:8]).click()
    await expect(page.locator("#timeline .span[data-outcome=awaiting_approval]")).to_have_count(1)
    await shoot(page, "run-awaiting-approval")

    approve = page.locator(f"form[action='/ui/runs/{run_id}/approve']").first
    await approve.get_by_label("Comment").fill("restart is safe now")
    await approve.get_by_role("button", name="Approve").click()
    await expect(page.get_by_role("status")).to_have_text(f"Run {run_id} approved.")
    # The page refreshes itself until the run is over.
    await expect(page.locator("h1 .status")).to_have_text("succeeded")
    await expect(page.locator("#timeline .span[data-outcome=approved]")).to_contain_text(
        "approved by console:alice: restart is safe now"
    )
    await shoot(page, "run-approved")
    assert restarted_at(loop, "Deployment", "store-s1", "s1-app") is not None
    (decided,) = await loop.audit(kind="approval_decided")
    assert (decided["run_id"], decided["details"]["by"]) == (run_id, "console:alice")


async def test_paused_remediation_records_a_new_alert_as_not_run(
    loop: closedloop.ClosedLoop, context: BrowserContext
) -> None:
    page = await log_in(context, loop, token=loop.token, name="bob")
    try:
        await page.get_by_label("Reason").fill("database migration")
        await page.get_by_role("button", name="Pause all remediation").click()
        await expect(page.get_by_role("status")).to_have_text(
            "Remediation paused: database migration"
        )
        switch = page.locator("#kill-switch")
        await expect(switch).to_contain_text("paused")
        await expect(switch).to_contain_text("console:bob")
        await shoot(page, "overview-paused")

        answer = await loop.post_alert(firing("ConsoleScale", "s3"))
        assert answer["runs"] == []
        await page.get_by_role("link", name="Not run").click()
        paused = page.locator("#reason-paused")
        await expect(paused).to_contain_text("Paused (kill switch)")
        await expect(paused.locator("tbody tr")).to_contain_text(["ConsoleScale"])
        await expect(paused).to_contain_text("store-s3")
        await shoot(page, "not-run")
        await paused.locator("tbody tr a").first.click()
        await expect(page.locator("h1")).to_contain_text("alert_not_run")
        await expect(page.locator(".facts")).to_contain_text("paused")
    finally:
        await page.goto(f"{loop.url}/ui/")
        await page.get_by_role("button", name="Resume remediation").click()
    await expect(page.get_by_role("status")).to_have_text("Remediation resumed.")
    status = await loop.api("/api/v1/safety")
    assert status["paused"] is None
    switched = [
        (r["kind"], r["reason"], r["details"]["by"])
        for r in await loop.audit()
        if r["kind"] in ("remediation_paused", "remediation_resumed")
    ]
    assert switched == [
        ("remediation_paused", "database migration", "console:bob"),
        ("remediation_resumed", "", "console:bob"),
    ]


async def test_a_refresh_in_flight_while_the_operator_types_keeps_what_was_typed(
    loop: closedloop.ClosedLoop, context: BrowserContext
) -> None:
    page = await log_in(context, loop, token=loop.token, name="dave")
    held = asyncio.Event()
    release = asyncio.Event()

    async def hold_one_refresh(route: Route) -> None:
        if route.request.resource_type == "fetch" and not held.is_set():
            held.set()
            await release.wait()
        await route.continue_()

    await page.route(f"{loop.url}/ui/", hold_one_refresh)
    await asyncio.wait_for(held.wait(), WAIT_MS / 1000)
    # The refresh left before the operator typed; its answer arrives after.
    reason = page.get_by_label("Reason")
    await reason.fill("typed while the page refreshed")
    async with page.expect_response(lambda r: r.request.resource_type == "fetch") as answered:
        release.set()
    await (await answered.value).finished()
    # The script reads the body and swaps the live parts in the tasks after the response ends.
    await page.evaluate("() => new Promise((done) => setTimeout(done, 200))")
    await expect(reason).to_have_value("typed while the page refreshed")


async def test_a_viewer_finds_no_controls_and_a_forged_post_is_refused(
    loop: closedloop.ClosedLoop, context: BrowserContext
) -> None:
    page = await log_in(context, loop, token=VIEWER_TOKEN, name="carol")
    await expect(page.locator(".who")).to_contain_text("carol · viewer")
    await expect(page.locator("main form")).to_have_count(0)
    runs = await loop.runs()
    await page.goto(f"{loop.url}/ui/runs/{runs[0]['id']}")
    await expect(page.locator("main form")).to_have_count(0)

    csrf = await page.locator("header input[name=csrf]").get_attribute("value")
    forged = await page.request.post(
        f"{loop.url}/ui/pause", form={"csrf": csrf or "", "reason": "viewer was here"}
    )
    assert forged.status == 403
    assert "may only read" in await forged.text()
    assert (await loop.api("/api/v1/safety"))["paused"] is None


async def test_a_post_without_the_csrf_token_is_refused(
    loop: closedloop.ClosedLoop, context: BrowserContext
) -> None:
    page = await log_in(context, loop, token=loop.token)
    refused = await page.request.post(f"{loop.url}/ui/pause", form={"reason": "no token"})
    assert refused.status == 403
    assert "CSRF" in await refused.text()
    assert (await loop.api("/api/v1/safety"))["paused"] is None


async def test_the_audit_chain_verifies_and_the_stores_are_listed(
    loop: closedloop.ClosedLoop, context: BrowserContext
) -> None:
    page = await log_in(context, loop, token=loop.token)
    await page.get_by_role("link", name="Audit").click()
    await expect(page.locator("table.list tbody tr").first).to_be_visible()
    await shoot(page, "audit")
    await page.get_by_role("link", name="Verify the chain").click()
    await expect(page.locator("#verification")).to_contain_text("The chain is intact")
    await shoot(page, "audit-verified")

    await page.get_by_role("link", name="Stores").click()
    rows = page.locator("#stores tbody tr")
    await expect(rows).to_have_count(4)
    await expect(rows.first).to_contain_text("running")
    # The failed run of the second test is s2's last run.
    await expect(rows.filter(has_text="store-s2")).to_contain_text("console-scale failed")
    await shoot(page, "stores")

    await page.get_by_role("link", name="Overview").click()
    await expect(page.locator("#chain")).to_contain_text("intact")
    await shoot(page, "overview")

    await page.get_by_role("button", name="Log out").click()
    await expect(page.get_by_role("heading", name="Log in")).to_be_visible()
    await page.goto(f"{loop.url}/ui/runs")
    await expect(page.get_by_role("heading", name="Log in")).to_be_visible()
