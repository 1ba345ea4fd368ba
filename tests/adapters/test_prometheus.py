"""PrometheusClient against a real Prometheus, and against local servers for the failures
a real Prometheus does not produce on demand (hangs, 5xx, proxies, malformed bodies)."""

from __future__ import annotations

import asyncio
import json
import math
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import pytest
import structlog
from aiohttp import web
from aiohttp.test_utils import TestServer

from remediator.adapters import prometheus
from tests import monitoring_fixtures

AiohttpServer = Callable[[web.Application], Awaitable[TestServer]]


# --- real Prometheus --------------------------------------------------------------------------


@pytest.mark.e2e
async def test_query_follows_the_scraped_gauge(
    prometheus_api: prometheus.PrometheusClient,
    gauge_target: monitoring_fixtures.GaugeTarget,
) -> None:
    gauge = gauge_target.gauge.labels(store_id="s1")
    promql = 'store_up{store_id="s1"}'

    gauge.set(1.0)
    result = await monitoring_fixtures.wait_for_query(
        prometheus_api, promql, lambda r: r.scalar() == 1.0
    )
    assert result.result_type == "vector"
    assert result.samples[0].labels == {
        "__name__": "store_up",
        "instance": gauge_target.address,
        "job": "stores",
        "store_id": "s1",
    }

    gauge.set(0.0)
    await monitoring_fixtures.wait_for_query(prometheus_api, promql, lambda r: r.scalar() == 0.0)

    # NaN and +Inf travel as strings in the API; they must come back as floats.
    gauge.set(math.nan)
    await monitoring_fixtures.wait_for_query(
        prometheus_api, promql, lambda r: math.isnan(r.scalar() or 0.0)
    )
    gauge.set(math.inf)
    await monitoring_fixtures.wait_for_query(
        prometheus_api, promql, lambda r: r.scalar() == math.inf
    )

    matrix = await prometheus_api.query(f"{promql}[1m]")
    assert matrix.result_type == "matrix"
    assert matrix.scalar() is None
    assert {sample.labels["store_id"] for sample in matrix.samples} == {"s1"}
    values = [sample.value for sample in matrix.samples]
    assert {1.0, 0.0, math.inf} <= set(values)
    assert any(math.isnan(value) for value in values)
    timestamps = [sample.timestamp for sample in matrix.samples]
    assert timestamps == sorted(timestamps)


@pytest.mark.e2e
async def test_query_evaluates_expressions_at_a_given_time(
    prometheus_api: prometheus.PrometheusClient,
) -> None:
    at = 1_700_000_000.25

    now = await prometheus_api.query("time()", at=at)
    assert now.result_type == "scalar"
    assert now.scalar() == at
    assert now.samples[0].timestamp == at
    assert now.samples[0].labels == {}

    assert (await prometheus_api.query("1/0", at=at)).scalar() == math.inf
    assert (await prometheus_api.query("-1/0", at=at)).scalar() == -math.inf
    assert math.isnan((await prometheus_api.query("0/0", at=at)).scalar() or 0.0)

    numeric_string = await prometheus_api.query('"42"', at=at)
    assert (numeric_string.result_type, numeric_string.scalar()) == ("string", 42.0)


@pytest.mark.e2e
async def test_query_returns_every_series_of_a_vector(
    prometheus_api: prometheus.PrometheusClient,
) -> None:
    empty = await prometheus_api.query("vector(1) > 2")
    assert (empty.result_type, empty.samples, empty.scalar()) == ("vector", (), None)

    two = await prometheus_api.query(
        'label_replace(vector(1), "store_id", "s1", "", "")'
        ' or label_replace(vector(2), "store_id", "s2", "", "")'
    )
    assert two.scalar() is None
    by_store = {sample.labels["store_id"]: sample.value for sample in two.samples}
    assert by_store == {"s1": 1.0, "s2": 2.0}


@pytest.mark.e2e
async def test_bad_promql_raises_query_error(prometheus_api: prometheus.PrometheusClient) -> None:
    with pytest.raises(prometheus.PrometheusQueryError) as info:
        await prometheus_api.query("sum(")
    assert info.value.status == 400
    assert info.value.error_type == "bad_data"
    assert "parse error" in info.value.error


@pytest.mark.e2e
async def test_non_numeric_string_result_raises_query_error(
    prometheus_api: prometheus.PrometheusClient,
) -> None:
    with pytest.raises(prometheus.PrometheusQueryError) as info:
        await prometheus_api.query('"hello"')
    assert info.value.error_type == "unsupported_result"
    assert info.value.error == "hello"


@pytest.mark.e2e
async def test_ready_is_true_for_a_running_prometheus(
    prometheus_api: prometheus.PrometheusClient,
) -> None:
    assert await prometheus_api.ready() is True


# --- unreachable and hanging servers ----------------------------------------------------------


@pytest.fixture
def closed_port() -> int:
    # Bound and closed again: nothing listens there, so connecting is refused.
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


async def test_unreachable_server_raises_unavailable(
    http_session: aiohttp.ClientSession, closed_port: int
) -> None:
    client = prometheus.PrometheusClient(http_session, f"http://127.0.0.1:{closed_port}")
    with pytest.raises(prometheus.PrometheusUnavailableError) as info:
        await client.query("up")
    assert isinstance(info.value.__cause__, aiohttp.ClientConnectionError)
    assert info.value.status is None
    assert await client.ready() is False


@pytest.mark.parametrize(
    ("base_url", "headers"),
    [
        ("http://user:the-secret@127.0.0.1:{port}", None),
        ("http://127.0.0.1:{port}", {"Authorization": "Bearer the-secret"}),
    ],
    ids=["url-userinfo", "authorization-header"],
)
async def test_secrets_stay_out_of_errors_and_logs(
    http_session: aiohttp.ClientSession,
    closed_port: int,
    base_url: str,
    headers: dict[str, str] | None,
) -> None:
    client = prometheus.PrometheusClient(
        http_session, base_url.format(port=closed_port), headers=headers
    )
    with structlog.testing.capture_logs() as logs:
        with pytest.raises(prometheus.PrometheusUnavailableError) as info:
            await client.query("up")
        assert await client.ready() is False
    assert [entry["event"] for entry in logs] == ["prometheus_readiness_check_failed"]
    assert "the-secret" not in f"{info.value} {logs} {client!r}"


async def test_url_credentials_and_authorization_header_are_refused_together(
    http_session: aiohttp.ClientSession,
) -> None:
    with pytest.raises(ValueError, match="exclude each other"):
        prometheus.PrometheusClient(
            http_session, "http://u:p@127.0.0.1:9090", headers={"authorization": "Bearer x"}
        )


@pytest.fixture
async def hanging_server(aiohttp_server: AiohttpServer) -> AsyncIterator[TestServer]:
    released = asyncio.Event()

    async def hang(request: web.Request) -> web.Response:
        await released.wait()
        return web.Response()

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", hang)
    server = await aiohttp_server(app)
    yield server
    # Lets the handlers finish, so the server's shutdown does not wait for them.
    released.set()


async def test_query_times_out_as_unavailable(
    http_session: aiohttp.ClientSession, hanging_server: TestServer
) -> None:
    client = prometheus.PrometheusClient(
        http_session, str(hanging_server.make_url("/")), timeout=0.2
    )
    with pytest.raises(prometheus.PrometheusUnavailableError, match="timed out") as info:
        await client.query("up")
    assert isinstance(info.value.__cause__, TimeoutError)
    assert await client.ready() is False


# --- answers a real Prometheus gives only rarely ----------------------------------------------


class FakePrometheus:
    """Answers every query with a canned response and records what it was sent."""

    def __init__(self, *, status: int = 200, body: str | dict[str, Any] = "") -> None:
        self.status = status
        self.body = json.dumps(body) if isinstance(body, dict) else body
        self.requests: list[tuple[str, str, dict[str, str], str | None]] = []

    async def handle(self, request: web.Request) -> web.Response:
        form = {key: str(value) for key, value in (await request.post()).items()}
        self.requests.append(
            (request.method, request.path, form, request.headers.get("Authorization"))
        )
        return web.Response(status=self.status, text=self.body)


async def serve_fake(aiohttp_server: AiohttpServer, fake: FakePrometheus) -> TestServer:
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", fake.handle)
    return await aiohttp_server(app)


SUCCESS = {"status": "success", "data": {"resultType": "vector", "result": []}}


async def test_query_posts_the_form_to_the_api_under_the_base_path(
    aiohttp_server: AiohttpServer, http_session: aiohttp.ClientSession
) -> None:
    fake = FakePrometheus(body=SUCCESS)
    server = await serve_fake(aiohttp_server, fake)
    client = prometheus.PrometheusClient(
        http_session,
        str(server.make_url("/prometheus/")),
        timeout=3.0,
        headers={"Authorization": "Bearer t0ken"},
    )

    await client.query("up == 0", at=1234.5)
    await client.query("up")

    assert fake.requests == [
        (
            "POST",
            "/prometheus/api/v1/query",
            {"query": "up == 0", "timeout": "3.0", "time": "1234.5"},
            "Bearer t0ken",
        ),
        ("POST", "/prometheus/api/v1/query", {"query": "up", "timeout": "3.0"}, "Bearer t0ken"),
    ]


async def test_warnings_are_ignored(
    aiohttp_server: AiohttpServer, http_session: aiohttp.ClientSession
) -> None:
    body = {
        "status": "success",
        "warnings": ["PromQL info: metric might not be a counter"],
        "data": {"resultType": "vector", "result": [{"metric": {}, "value": [1.5, "-Inf"]}]},
    }
    server = await serve_fake(aiohttp_server, FakePrometheus(body=body))
    client = prometheus.PrometheusClient(http_session, str(server.make_url("/")))

    result = await client.query("rate(up[1m])")

    assert result.samples == (prometheus.Sample(labels={}, value=-math.inf, timestamp=1.5),)


@pytest.mark.parametrize(
    ("status", "body", "fragment"),
    [
        (503, {"status": "error", "errorType": "timeout", "error": "query timed out"}, "timed out"),
        (502, "<html><body>Bad Gateway</body></html>", "Bad Gateway"),
    ],
    ids=["prometheus-timeout", "proxy-html"],
)
async def test_server_errors_raise_unavailable(
    aiohttp_server: AiohttpServer,
    http_session: aiohttp.ClientSession,
    status: int,
    body: str | dict[str, Any],
    fragment: str,
) -> None:
    server = await serve_fake(aiohttp_server, FakePrometheus(status=status, body=body))
    client = prometheus.PrometheusClient(http_session, str(server.make_url("/")))

    with pytest.raises(prometheus.PrometheusUnavailableError, match=fragment) as info:
        await client.query("up")
    assert info.value.status == status


@pytest.mark.parametrize(
    ("status", "body", "error_type", "error"),
    [
        (
            422,
            {"status": "error", "errorType": "execution", "error": "x" * 1000},
            "execution",
            "x" * 255 + "…",
        ),
        (401, "Unauthorized", "http_401", "Unauthorized"),
        (200, {"status": "error", "errorType": "bad_data", "error": "nope"}, "bad_data", "nope"),
    ],
    ids=["long-error-truncated", "non-json-4xx", "status-error-on-200"],
)
async def test_rejections_raise_query_error(
    aiohttp_server: AiohttpServer,
    http_session: aiohttp.ClientSession,
    status: int,
    body: str | dict[str, Any],
    error_type: str,
    error: str,
) -> None:
    server = await serve_fake(aiohttp_server, FakePrometheus(status=status, body=body))
    client = prometheus.PrometheusClient(http_session, str(server.make_url("/")))

    with pytest.raises(prometheus.PrometheusQueryError) as info:
        await client.query("up")
    assert (info.value.status, info.value.error_type, info.value.error) == (
        status,
        error_type,
        error,
    )
    assert len(info.value.error) <= prometheus.TEXT_ERROR_MAX_SIZE


@pytest.mark.parametrize(
    "body",
    [
        "not json",
        {"status": "success"},
        {"status": "success", "data": {"resultType": "vector", "result": [{"value": [1, "1"]}]}},
        {"status": "success", "data": {"resultType": "scalar", "result": [1, "one"]}},
    ],
    ids=["not-json", "no-data", "no-metric", "non-numeric-value"],
)
async def test_malformed_success_raises_plain_prometheus_error(
    aiohttp_server: AiohttpServer,
    http_session: aiohttp.ClientSession,
    body: str | dict[str, Any],
) -> None:
    server = await serve_fake(aiohttp_server, FakePrometheus(body=body))
    client = prometheus.PrometheusClient(http_session, str(server.make_url("/")))

    with pytest.raises(prometheus.PrometheusError, match="malformed") as info:
        await client.query("up")
    assert type(info.value) is prometheus.PrometheusError


@pytest.mark.parametrize(
    ("samples", "expected"),
    [
        ((), None),
        ((prometheus.Sample(labels={}, value=3.0, timestamp=0.0),), 3.0),
        (
            (
                prometheus.Sample(labels={"a": "1"}, value=1.0, timestamp=0.0),
                prometheus.Sample(labels={"a": "2"}, value=2.0, timestamp=0.0),
            ),
            None,
        ),
    ],
    ids=["none", "one", "two"],
)
def test_scalar_needs_exactly_one_sample(
    samples: tuple[prometheus.Sample, ...], expected: float | None
) -> None:
    assert prometheus.QueryResult(result_type="vector", samples=samples).scalar() == expected
