"""Built-in actions against real local HTTP servers, and the registry they are looked up in."""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from pytest_aiohttp import AiohttpServer

from remediator import config
from remediator.config import Settings
from remediator.core import params
from remediator.core.errors import PermanentStepError, TemporaryStepError
from remediator.core.runs import RunStatus, StepOutcome
from remediator.engine.actions import httprequest, notify, promql, registry
from remediator.engine.actions.registry import ActionRegistry, Resources
from tests.engine.conftest import Engine, action_context, playbook_yaml

TOKEN = "notify-token-8c1d2e"


@dataclasses.dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]
    body: Any


class Upstream:
    """A real HTTP server on 127.0.0.1 that records requests and answers as told."""

    def __init__(self) -> None:
        self.seen: list[Seen] = []
        self.failures_left = 0
        self.port = 0

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    def url(self, path: str) -> str:
        return f"http://{self.host}{path}"

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body: Any = await request.json() if request.can_read_body else None
        self.seen.append(Seen(request.method, request.path, dict(request.headers), body))
        name = request.match_info["name"]
        if name == "json":
            return web.json_response({"ok": True, "got": body})
        if name == "text":
            return web.Response(text="plain words")
        if name == "flaky" and self.failures_left > 0:
            self.failures_left -= 1
            return web.Response(status=503, text="try later")
        if name == "flaky":
            return web.json_response({"recovered": True})
        if name == "busy":
            return web.Response(status=503, text="overloaded")
        if name == "missing":
            return web.Response(status=404, text="no such thing")
        if name == "created":
            return web.Response(status=201)
        return web.Response(status=500)


@pytest.fixture
async def upstream(aiohttp_server: AiohttpServer) -> Upstream:
    upstream = Upstream()
    app = web.Application()
    app.router.add_route("*", "/{name}", upstream.handle)
    server = await aiohttp_server(app, host="127.0.0.1")
    assert server.port is not None
    upstream.port = server.port
    return upstream


def resources(session: aiohttp.ClientSession, settings: Settings) -> Resources:
    return Resources(settings=settings, http=session)


@pytest.fixture
def allowing(upstream: Upstream, http_session: aiohttp.ClientSession) -> Callable[..., Resources]:
    def make(**raw: Any) -> Resources:
        settings = config.from_mapping(
            {"http": {"allowed_hosts": [upstream.host], "timeout": 5}, **raw}
        )
        return resources(http_session, settings)

    return make


async def request(res: Resources, *, dry_run: bool = False, **raw: Any) -> dict[str, Any]:
    action = httprequest.HttpRequestAction()
    typed = params.build(httprequest.HttpRequestParams, raw)
    return dict(await action.run(typed, action_context(res, dry_run=dry_run)))


async def test_http_request_to_an_allowed_host(
    upstream: Upstream, allowing: Callable[..., Resources]
) -> None:
    output = await request(
        allowing(),
        url=upstream.url("/json"),
        method="POST",
        headers={"X-Run": "r1"},
        json={"replicas": 3},
    )

    assert output == {"status": 200, "body": {"ok": True, "got": {"replicas": 3}}}
    (seen,) = upstream.seen
    assert (seen.method, seen.path, seen.body) == ("POST", "/json", {"replicas": 3})
    assert seen.headers["X-Run"] == "r1"


async def test_http_request_returns_text_bodies_as_text(
    upstream: Upstream, allowing: Callable[..., Resources]
) -> None:
    output = await request(allowing(), url=upstream.url("/text"))

    assert output == {"status": 200, "body": "plain words"}


async def test_http_request_accepts_listed_statuses(
    upstream: Upstream, allowing: Callable[..., Resources]
) -> None:
    output = await request(allowing(), url=upstream.url("/missing"), expect_status=[404])

    assert output["status"] == 404


@pytest.mark.parametrize(
    "url",
    [
        "http://localhost:{port}/json",
        "http://127.0.0.1:1/json",
        "http://example.com/json",
        "ftp://127.0.0.1:{port}/json",
        "/json",
    ],
    ids=["other-name", "other-port", "other-host", "not-http", "relative"],
)
async def test_http_request_refuses_other_hosts_without_calling_them(
    upstream: Upstream, allowing: Callable[..., Resources], url: str
) -> None:
    with pytest.raises(PermanentStepError):
        await request(allowing(), url=url.format(port=upstream.port))

    assert upstream.seen == []


@pytest.mark.parametrize(
    ("path", "error"),
    [("/busy", TemporaryStepError), ("/missing", PermanentStepError)],
    ids=["5xx-retryable", "4xx-permanent"],
)
async def test_http_request_sorts_error_statuses(
    upstream: Upstream,
    allowing: Callable[..., Resources],
    path: str,
    error: type[Exception],
) -> None:
    with pytest.raises(error) as raised:
        await request(allowing(), url=upstream.url(path))

    assert type(raised.value) is error
    assert "HTTP" in str(raised.value)


async def test_http_request_connection_errors_are_retryable(
    allowing: Callable[..., Resources], unused_tcp_port: int
) -> None:
    res = allowing(http={"allowed_hosts": [f"127.0.0.1:{unused_tcp_port}"]})

    with pytest.raises(TemporaryStepError):
        await request(res, url=f"http://127.0.0.1:{unused_tcp_port}/json")


def test_http_request_is_mutating_unless_read_only() -> None:
    spec = httprequest.HttpRequestAction.spec
    get = params.build(httprequest.HttpRequestParams, {"url": "http://x/"})
    post = params.build(httprequest.HttpRequestParams, {"url": "http://x/", "method": "POST"})

    assert (spec.is_mutating(get), spec.is_mutating(post)) == (False, True)


async def test_an_http_step_retries_a_5xx_through_the_executor(
    engine: Engine, upstream: Upstream
) -> None:
    upstream.failures_left = 2
    settings = config.from_mapping({"http": {"allowed_hosts": [upstream.host]}})
    playbooks = engine.playbooks(
        playbook_yaml(
            "call",
            f"""
            steps:
              - name: poke
                action: http.request
                params:
                  url: "{upstream.url("/flaky")}?store={{{{ alert.labels.store_id }}}}"
                  method: POST
                retry: {{attempts: 3, backoff: 10ms}}
            """,
        )
    )
    (run_id,) = await engine.queue(playbooks)

    status = await engine.executor(playbooks, settings=settings).execute(run_id)

    assert status is RunStatus.SUCCEEDED
    detail = await engine.detail(run_id)
    (step,) = detail.steps
    assert (step.outcome, step.attempts) == (StepOutcome.SUCCEEDED, 3)
    assert dict(step.output) == {"status": 200, "body": {"recovered": True}}
    assert len(upstream.seen) == 3


@pytest.fixture
def notifying(
    upstream: Upstream, http_session: aiohttp.ClientSession, monkeypatch: pytest.MonkeyPatch
) -> Resources:
    monkeypatch.setenv("TEST_NOTIFY_TOKEN", TOKEN)
    settings = config.from_mapping(
        {
            "notify": {
                "targets": {
                    "oncall": {"url": upstream.url("/json"), "token_env": "TEST_NOTIFY_TOKEN"},
                    "open": {"url": upstream.url("/created")},
                    "unset": {"url": upstream.url("/json"), "token_env": "TEST_NOTIFY_UNSET"},
                }
            }
        }
    )
    monkeypatch.delenv("TEST_NOTIFY_UNSET", raising=False)
    return resources(http_session, settings)


async def send_notification(res: Resources, *, dry_run: bool = False, **raw: Any) -> dict[str, Any]:
    action = notify.NotifyWebhookAction()
    typed = params.build(notify.NotifyParams, raw)
    return dict(await action.run(typed, action_context(res, dry_run=dry_run)))


async def test_notify_posts_a_slack_message_with_the_bearer_token(
    upstream: Upstream, notifying: Resources
) -> None:
    output = await send_notification(
        notifying,
        target="oncall",
        text="store s1 is still down",
        severity="critical",
        fields={"store": "s1"},
    )

    assert output == {"target": "oncall", "status": 200, "text": "store s1 is still down"}
    (seen,) = upstream.seen
    assert seen.method == "POST"
    assert seen.headers["Authorization"] == f"Bearer {TOKEN}"
    assert seen.body == {
        "text": "store s1 is still down",
        "attachments": [
            {
                "color": "danger",
                "fields": [
                    {"title": "playbook", "value": "direct", "short": True},
                    {"title": "target", "value": "store-s1", "short": True},
                    {"title": "run", "value": "run-direct", "short": True},
                    {"title": "store", "value": "s1", "short": True},
                ],
            }
        ],
    }


async def test_notify_without_a_token_sends_no_authorization(
    upstream: Upstream, notifying: Resources
) -> None:
    output = await send_notification(notifying, target="open", text="hello", severity="info")

    assert output["status"] == 201
    (seen,) = upstream.seen
    assert "Authorization" not in seen.headers
    assert seen.body["attachments"][0]["color"] == "#439FE0"


async def test_notify_marks_dry_runs(upstream: Upstream, notifying: Resources) -> None:
    output = await send_notification(notifying, dry_run=True, target="oncall", text="would fix")

    assert output["text"] == "[dry-run] would fix"
    assert upstream.seen[0].body["text"] == "[dry-run] would fix"


@pytest.mark.parametrize(
    ("target", "message"),
    [("pager", "no notify target named 'pager'"), ("unset", "$TEST_NOTIFY_UNSET is empty")],
    ids=["unknown-target", "empty-token"],
)
async def test_notify_refuses_without_sending(
    upstream: Upstream, notifying: Resources, target: str, message: str
) -> None:
    with pytest.raises(PermanentStepError, match=message.replace("$", r"\$")):
        await send_notification(notifying, target=target, text="hello")

    assert upstream.seen == []


@pytest.mark.parametrize(
    ("action", "raw"),
    [
        (promql.QueryAction(), {"query": "up"}),
        (promql.WaitForAction(), {"query": "up", "interval": 0.01}),
    ],
    ids=["query", "wait_for"],
)
async def test_prometheus_actions_need_a_configured_prometheus(
    http_session: aiohttp.ClientSession, action: registry.Action, raw: dict[str, Any]
) -> None:
    typed = params.build(action.spec.params, raw)
    run: Callable[..., Awaitable[object]] = action.run

    with pytest.raises(PermanentStepError, match="no Prometheus configured"):
        await run(typed, action_context(resources(http_session, Settings())))


def test_the_builtin_registry_holds_every_shipped_action() -> None:
    actions = registry.builtin()

    assert {
        "http.request",
        "log",
        "notify.webhook",
        "prometheus.query",
        "prometheus.wait_for",
    } <= set(actions.names())
    assert actions.names() == sorted(actions.names())
    spec = actions.spec("notify.webhook")
    assert spec is not None
    assert spec.mutating is False
    assert actions.spec("k8s.nope") is None


def test_an_action_name_is_registered_once() -> None:
    actions = ActionRegistry([httprequest.HttpRequestAction()])

    with pytest.raises(ValueError, match="already registered"):
        actions.register(httprequest.HttpRequestAction())


def test_registries_are_independent() -> None:
    first = ActionRegistry()
    first.register(notify.NotifyWebhookAction())

    assert ActionRegistry().names() == []
    assert first.names() == ["notify.webhook"]
