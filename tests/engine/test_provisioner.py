"""``provisioner.request`` against the provisioner twin over real HTTP, alone and in runs."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
import structlog
from aiohttp import web
from prometheus_client import CollectorRegistry
from pytest_aiohttp import AiohttpServer

from remediator import config
from remediator.adapters import metrics, state
from remediator.config import Settings
from remediator.core import params, validation
from remediator.core.errors import PermanentStepError, PlaybookError, TemporaryStepError
from remediator.core.runs import RunStatus, StepOutcome
from remediator.engine import executing
from remediator.engine.actions import provisioner as provisioner_action
from remediator.engine.actions.registry import ActionRegistry, Resources
from remediator.simulation import provisioner
from tests.engine.conftest import Engine, Recorder, action_context, playbook_yaml

TOKEN = "prov-token-5f2a9c7e"


@pytest.fixture
def twin() -> provisioner.ProvisionerTwin:
    twin = provisioner.ProvisionerTwin(token=TOKEN)
    twin.add_store("s1", status="provisioning")
    return twin


@pytest.fixture
async def twin_url(twin: provisioner.ProvisionerTwin) -> AsyncIterator[str]:
    async with provisioner.serve(twin) as url:
        yield url


def settings_for(url: str, **overrides: Any) -> Settings:
    return config.from_mapping({"provisioner": {"url": url, "timeout": 5, **overrides}})


@pytest.fixture
def resources(twin_url: str, http_session: aiohttp.ClientSession) -> Resources:
    return Resources(settings=settings_for(twin_url), http=http_session, provisioner_token=TOKEN)


def fast_action(*, backoff: float = 0.001) -> provisioner_action.ProvisionerAction:
    return provisioner_action.ProvisionerAction(backoff=backoff, jitter=lambda: 0.0)


async def call(
    res: Resources,
    *,
    action: provisioner_action.ProvisionerAction | None = None,
    deadline: float | None = None,
    **raw: Any,
) -> dict[str, Any]:
    typed = params.build(provisioner_action.ProvisionerParams, raw)
    run = (action or fast_action()).run
    return dict(await run(typed, action_context(res, deadline=deadline)))


# --- each operation and its effect --------------------------------------------------------------


async def test_get_returns_the_store(
    twin: provisioner.ProvisionerTwin, resources: Resources
) -> None:
    output = await call(resources, store_id="s1", operation="get")

    assert output == {
        "store_id": "s1",
        "operation": "get",
        "http_status": 200,
        "attempts": 1,
        "found": True,
        "store": twin.stores["s1"].to_json(),
    }
    assert output["store"]["status"] == "provisioning"
    (seen,) = twin.requests
    assert (seen.method, seen.path, seen.body, seen.authorized) == (
        "GET",
        "/api/v1/stores/s1",
        None,
        True,
    )


async def test_get_of_an_unknown_store_is_not_found_rather_than_an_error(
    twin: provisioner.ProvisionerTwin, resources: Resources
) -> None:
    output = await call(resources, store_id="s9", operation="get")

    assert output["found"] is False
    assert output["http_status"] == 404
    assert "store" not in output


async def test_set_status_patches_the_store(
    twin: provisioner.ProvisionerTwin, resources: Resources
) -> None:
    output = await call(resources, store_id="s1", operation="set_status", status="running")

    assert twin.stores["s1"].status == "running"
    assert output["store"]["status"] == "running"
    (seen,) = twin.requests
    assert (seen.method, seen.path, seen.body) == (
        "PATCH",
        "/api/v1/stores/s1",
        {"status": "running"},
    )


async def test_delete_removes_the_store_and_a_second_delete_finds_it_absent(
    twin: provisioner.ProvisionerTwin, resources: Resources
) -> None:
    deleted: list[str] = []

    async def on_delete(store: provisioner.Store) -> None:
        deleted.append(f"{store.id}:{store.status}")

    twin.on_delete = on_delete

    first = await call(resources, store_id="s1", operation="delete")
    second = await call(resources, store_id="s1", operation="delete")

    assert "s1" not in twin.stores
    assert deleted == ["s1:deleting"]
    assert (first["already_absent"], first["store"]["status"]) == (False, "deleting")
    assert (second["already_absent"], second["http_status"]) == (True, 404)
    assert [(r.method, r.path) for r in twin.requests] == [("DELETE", "/api/v1/stores/s1")] * 2


async def test_reprovision_posts_and_the_platform_hook_runs(
    twin: provisioner.ProvisionerTwin, resources: Resources
) -> None:
    twin.set_status("s1", "failed")
    reprovisioned: list[str] = []

    async def on_reprovision(store: provisioner.Store) -> None:
        reprovisioned.append(f"{store.id}:{store.status}")

    twin.on_reprovision = on_reprovision

    output = await call(resources, store_id="s1", operation="reprovision")

    assert reprovisioned == ["s1:provisioning"]
    assert (output["http_status"], output["store"]["status"]) == (202, "provisioning")
    (seen,) = twin.requests
    assert (seen.method, seen.path) == ("POST", "/api/v1/stores/s1/reprovision")


async def test_a_base_url_with_a_path_prefix_is_kept(
    twin: provisioner.ProvisionerTwin, twin_url: str, http_session: aiohttp.ClientSession
) -> None:
    res = Resources(
        settings=settings_for(f"{twin_url}/prefix/"), http=http_session, provisioner_token=TOKEN
    )

    output = await call(res, store_id="s1", operation="get")

    assert output["found"] is False  # the twin has no /prefix: the request went there
    assert twin.requests[0].path == "/prefix/api/v1/stores/s1"


# --- retries, permanent errors, timeouts --------------------------------------------------------


async def test_two_503s_are_retried_within_the_step(
    twin: provisioner.ProvisionerTwin, resources: Resources
) -> None:
    twin.fail_next(2, status=503)

    with structlog.testing.capture_logs() as logs:
        output = await call(resources, store_id="s1", operation="set_status", status="running")

    assert output["attempts"] == 3
    assert twin.stores["s1"].status == "running"
    assert len(twin.requests_for("PATCH", "/api/v1/stores/s1")) == 3
    retried = [e for e in logs if e["event"] == "provisioner_retrying"]
    assert [e["attempt"] for e in retried] == [1, 2]
    assert "HTTP 503" in retried[0]["error"]


async def test_retries_exhausted_is_a_temporary_failure(
    twin: provisioner.ProvisionerTwin, resources: Resources
) -> None:
    twin.fail_next(3, status=503)  # provisioner.retries defaults to 3 attempts

    with pytest.raises(TemporaryStepError, match=r"HTTP 503.*\(attempt 3 of 3\)"):
        await call(resources, store_id="s1", operation="set_status", status="running")

    assert len(twin.requests) == 3
    assert twin.stores["s1"].status == "provisioning"


async def test_the_retries_setting_bounds_the_attempts(
    twin: provisioner.ProvisionerTwin, twin_url: str, http_session: aiohttp.ClientSession
) -> None:
    twin.fail_next(5, status=502)
    res = Resources(
        settings=settings_for(twin_url, retries=1), http=http_session, provisioner_token=TOKEN
    )

    with pytest.raises(TemporaryStepError, match=r"\(attempt 1 of 1\)"):
        await call(res, store_id="s1", operation="get")

    assert len(twin.requests) == 1


@pytest.mark.parametrize(
    ("raw", "status"),
    [
        ({"store_id": "s9", "operation": "set_status", "status": "running"}, 404),
        ({"store_id": "s9", "operation": "reprovision"}, 404),
        ({"store_id": "s1", "operation": "get"}, 400),
    ],
    ids=["patch-absent", "reprovision-absent", "injected-400"],
)
async def test_4xx_is_permanent_and_not_retried(
    twin: provisioner.ProvisionerTwin, resources: Resources, raw: dict[str, Any], status: int
) -> None:
    if status == 400:
        twin.fail_next(1, status=400)

    with pytest.raises(PermanentStepError, match=f"HTTP {status}"):
        await call(resources, **raw)

    assert len(twin.requests) == 1


async def test_a_wrong_token_is_a_permanent_401(
    twin: provisioner.ProvisionerTwin, twin_url: str, http_session: aiohttp.ClientSession
) -> None:
    res = Resources(settings=settings_for(twin_url), http=http_session, provisioner_token="nope")

    with pytest.raises(PermanentStepError, match="HTTP 401"):
        await call(res, store_id="s1", operation="get")

    (seen,) = twin.requests
    assert seen.authorized is False


async def test_a_slow_provisioner_times_out_and_idempotent_calls_are_retried(
    twin: provisioner.ProvisionerTwin, twin_url: str, http_session: aiohttp.ClientSession
) -> None:
    twin.delay(30)
    res = Resources(
        settings=settings_for(twin_url, timeout=0.05, retries=2),
        http=http_session,
        provisioner_token=TOKEN,
    )

    with pytest.raises(TemporaryStepError, match=r"timed out after 0.05s \(attempt 2 of 2\)"):
        await call(res, store_id="s1", operation="get")

    assert len(twin.requests) == 2


async def test_a_timed_out_reprovision_is_not_sent_again(
    twin: provisioner.ProvisionerTwin, twin_url: str, http_session: aiohttp.ClientSession
) -> None:
    twin.delay(30)
    res = Resources(
        settings=settings_for(twin_url, timeout=0.05, retries=3),
        http=http_session,
        provisioner_token=TOKEN,
    )

    with pytest.raises(TemporaryStepError, match=r"timed out.*\(attempt 1 of 3\)"):
        await call(res, store_id="s1", operation="reprovision")

    assert len(twin.requests) == 1


async def test_a_503_reprovision_is_retried(
    twin: provisioner.ProvisionerTwin, resources: Resources
) -> None:
    twin.fail_next(1)

    output = await call(resources, store_id="s1", operation="reprovision")

    assert output["attempts"] == 2


async def test_retries_stop_at_the_step_deadline(
    twin: provisioner.ProvisionerTwin, resources: Resources
) -> None:
    twin.fail_next(5)
    deadline = asyncio.get_running_loop().time() + 2.0

    # A 60s backoff cannot fit before the deadline: fail now instead of being cut off later.
    with pytest.raises(TemporaryStepError, match="no time left for another"):
        await call(
            resources,
            store_id="s1",
            operation="get",
            action=fast_action(backoff=60),
            deadline=deadline,
        )

    assert len(twin.requests) == 1


async def test_connection_errors_are_retried(http_session: aiohttp.ClientSession) -> None:
    twin = provisioner.ProvisionerTwin(token=TOKEN)
    async with provisioner.serve(twin) as url:
        pass  # closed again: nothing listens there now
    res = Resources(
        settings=settings_for(url, retries=2), http=http_session, provisioner_token=TOKEN
    )

    with pytest.raises(TemporaryStepError, match=r"Client\w*Error.*\(attempt 2 of 2\)"):
        await call(res, store_id="s1", operation="get")


# --- refusals before any request ----------------------------------------------------------------


@pytest.mark.parametrize(
    "store_id",
    ["../s1", "S1", "s1/reprovision", "s1\n", "a" * 64, "-s1", "s1?x=1", ""],
    ids=["dotdot", "upper", "slash", "newline", "too-long", "leading-dash", "query", "empty"],
)
async def test_an_unsafe_store_id_is_refused_without_a_request(
    twin: provisioner.ProvisionerTwin, resources: Resources, store_id: str
) -> None:
    with pytest.raises(PermanentStepError, match=r"^scope: store_id .* is not a DNS-1123 label"):
        await call(resources, store_id=store_id, operation="delete")

    assert twin.requests == []


async def test_without_a_provisioner_url_nothing_is_sent(
    http_session: aiohttp.ClientSession,
) -> None:
    res = Resources(settings=Settings(), http=http_session, provisioner_token=TOKEN)

    with pytest.raises(PermanentStepError, match=r"no provisioner configured"):
        await call(res, store_id="s1", operation="get")


async def test_a_configured_token_file_whose_token_was_not_passed_is_an_error(
    twin: provisioner.ProvisionerTwin, twin_url: str, http_session: aiohttp.ClientSession
) -> None:
    res = Resources(settings=settings_for(twin_url, token_file="/run/token"), http=http_session)

    with pytest.raises(PermanentStepError, match="token was not loaded"):
        await call(res, store_id="s1", operation="get")

    assert twin.requests == []


# --- the token stays secret ---------------------------------------------------------------------


class Echo:
    """A provisioner that misbehaves: it echoes the Authorization header in every answer."""

    def __init__(self) -> None:
        self.failures_left = 1

    async def handle(self, request: web.Request) -> web.Response:
        header = request.headers.get("Authorization", "")
        if request.method == "PATCH":
            return web.Response(status=400, text=f"rejected credentials {header}")
        if self.failures_left:
            self.failures_left -= 1
            return web.Response(status=503, text=f"busy; you sent {header}")
        return web.json_response(
            {"id": "s1", "status": "running", "note": f"hello {header}", "raw": TOKEN}
        )


async def test_the_token_never_reaches_outputs_errors_or_logs(
    aiohttp_server: AiohttpServer, http_session: aiohttp.ClientSession
) -> None:
    app = web.Application()
    app.router.add_route("*", "/api/v1/stores/{id}", Echo().handle)
    server = await aiohttp_server(app, host="127.0.0.1")
    res = Resources(
        settings=settings_for(str(server.make_url("/"))),
        http=http_session,
        provisioner_token=TOKEN,
    )

    with structlog.testing.capture_logs() as logs:
        output = await call(res, store_id="s1", operation="get")
        with pytest.raises(PermanentStepError) as refused:
            await call(res, store_id="s1", operation="set_status", status="running")

    assert output["attempts"] == 2
    assert output["store"]["status"] == "running"
    assert "HTTP 400" in str(refused.value)
    for text in (json.dumps(output), str(refused.value), repr(logs)):
        assert TOKEN not in text
    assert any(e["event"] == "provisioner_retrying" for e in logs)


# --- spec, params, registry ---------------------------------------------------------------------


def test_only_get_is_read_only() -> None:
    spec = provisioner_action.ProvisionerAction.spec
    build = provisioner_action.ProvisionerParams

    mutating = {
        op: spec.is_mutating(build(store_id="s1", operation=op))
        for op in ("get", "delete", "reprovision")
    }
    mutating["set_status"] = spec.is_mutating(
        build(store_id="s1", operation="set_status", status="running")
    )

    assert mutating == {"get": False, "delete": True, "reprovision": True, "set_status": True}
    assert (spec.supports_dry_run, spec.permissions, spec.destructive) == (False, (), False)


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"store_id": "s1", "operation": "set_status"}, "status is required"),
        ({"store_id": "s1", "operation": "get", "status": "running"}, "only for operation"),
        ({"store_id": "s1", "operation": "restart"}, "operation"),
        ({"store_id": "s1", "operation": "set_status", "status": "paused"}, "status"),
        ({"operation": "get"}, "store_id: is required"),
    ],
    ids=["set-without-status", "status-without-set", "bad-operation", "bad-status", "no-id"],
)
def test_bad_params_are_load_time_problems(raw: dict[str, Any], message: str) -> None:
    problems = params.check(provisioner_action.ProvisionerParams, raw, path="params")

    assert problems
    assert message in "; ".join(f"{p.path}: {p.message}" for p in problems)


def test_previews_name_the_request() -> None:
    action = provisioner_action.ProvisionerAction()
    build = provisioner_action.ProvisionerParams

    assert [
        action.preview(build(store_id="s1", operation="get")),
        action.preview(build(store_id="s1", operation="set_status", status="running")),
        action.preview(build(store_id="s1", operation="delete")),
        action.preview(build(store_id="s1", operation="reprovision")),
    ] == [
        "GET provisioner /api/v1/stores/s1",
        "PATCH provisioner /api/v1/stores/s1 status=running",
        "DELETE provisioner /api/v1/stores/s1",
        "POST provisioner /api/v1/stores/s1/reprovision",
    ]


def test_the_builtin_registry_ships_it() -> None:
    from remediator.engine.actions import registry

    spec = registry.builtin().spec("provisioner.request")

    assert spec is not None
    assert spec.params is provisioner_action.ProvisionerParams


# --- through the executor -----------------------------------------------------------------------

MARK_RUNNING = """
steps:
  - name: look
    action: provisioner.request
    params: {store_id: "{{ alert.labels.store_id }}", operation: get}
  - name: mark_running
    action: provisioner.request
    when: steps.look.output.store.status == "provisioning"
    params:
      store_id: "{{ alert.labels.store_id }}"
      operation: set_status
      status: running
"""
VERIFY_RUNNING = """
verify:
  timeout: 5s
  interval: 10ms
  checks:
    - name: running
      action: provisioner.request
      params: {store_id: "{{ alert.labels.store_id }}", operation: get}
      expect: output.store.status == "running"
"""


@pytest.fixture
def provisioning_engine(
    store: state.SqliteStateStore, http_session: aiohttp.ClientSession
) -> Engine:
    return Engine(
        store=store,
        metrics=metrics.Metrics(CollectorRegistry()),
        recorder=Recorder(),
        registry=ActionRegistry([fast_action()]),
        session=http_session,
    )


def executor_for(engine: Engine, playbooks: Any, url: str) -> executing.Executor:
    return executing.Executor(
        registry=engine.registry,
        store=engine.store,
        resources=Resources(
            settings=settings_for(url), http=engine.session, provisioner_token=TOKEN
        ),
        metrics=engine.metrics,
        playbooks=lambda: playbooks,
        jitter=lambda: 0.0,
    )


async def test_a_run_marks_a_stuck_store_running_and_verifies_it(
    provisioning_engine: Engine, twin: provisioner.ProvisionerTwin, twin_url: str
) -> None:
    engine = provisioning_engine
    playbooks = engine.playbooks(playbook_yaml("stuck", MARK_RUNNING + VERIFY_RUNNING))
    (run_id,) = await engine.queue(playbooks)

    status = await executor_for(engine, playbooks, twin_url).execute(run_id)

    assert status is RunStatus.SUCCEEDED
    assert twin.stores["s1"].status == "running"
    detail = await engine.detail(run_id)
    assert [(s.name, s.outcome) for s in detail.steps] == [
        ("look", StepOutcome.SUCCEEDED),
        ("mark_running", StepOutcome.SUCCEEDED),
    ]
    assert len(twin.requests_for("GET", "/api/v1/stores/s1")) == 2  # look, then verify
    stored = json.dumps(
        [dict(s.output) for s in detail.steps] + [r.event.details for r in detail.audit],
        default=str,
    )
    assert TOKEN not in stored


async def test_a_dry_run_reads_but_does_not_send_the_change(
    provisioning_engine: Engine, twin: provisioner.ProvisionerTwin, twin_url: str
) -> None:
    engine = provisioning_engine
    playbooks = engine.playbooks(playbook_yaml("stuck", MARK_RUNNING))
    (run_id,) = await engine.queue(playbooks, dry_run=True)

    status = await executor_for(engine, playbooks, twin_url).execute(run_id)

    assert status is RunStatus.SUCCEEDED

    assert twin.stores["s1"].status == "provisioning"
    assert {r.method for r in twin.requests} == {"GET"}
    detail = await engine.detail(run_id)
    look, change = detail.steps
    assert look.outcome is StepOutcome.SUCCEEDED
    assert (change.outcome, dict(change.output)) == (
        StepOutcome.DRY_RUN,
        {"would": "PATCH provisioner /api/v1/stores/s1 status=running"},
    )


def test_a_set_status_step_without_a_status_fails_to_load() -> None:
    registry = ActionRegistry([fast_action()])
    document = playbook_yaml(
        "bad",
        """
        steps:
          - name: mark
            action: provisioner.request
            params: {store_id: s1, operation: set_status}
        """,
    )

    with pytest.raises(PlaybookError, match="status is required") as caught:
        validation.load_set({"bad.yaml": document}, registry, digest="x")

    assert "steps[0].params" in str(caught.value)
