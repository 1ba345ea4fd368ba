"""POST /webhook/alertmanager on a real socket: what is accepted, what is refused and why.

Every refusal must leave the store untouched, answer a JSON body naming the problem and be
counted by reason and status code.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import structlog
from pytest_aiohttp import AiohttpClient

from remediator.web import intake
from tests.web.conftest import (
    WEBHOOK_TOKEN,
    Client,
    Engine,
    MakeEngine,
    auth,
    recorded,
    storedown,
)

URL = intake.WEBHOOK_PATH


async def post(client: Client, payload: Any, **headers: str) -> tuple[int, dict[str, Any]]:
    async with client.post(URL, json=payload, headers={**auth(), **headers}) as response:
        return response.status, await response.json()


def assert_nothing_written(engine: Engine) -> None:
    assert {t: engine.rows(t) for t in ("alerts", "runs", "audit")} == {
        "alerts": 0,
        "runs": 0,
        "audit": 0,
    }


def assert_refusal_counted(engine: Engine, *, reason: str, code: str) -> None:
    assert engine.sample("remediator_webhook_rejections_total", reason=reason) == 1
    assert engine.sample("remediator_webhook_requests_total", code=code) == 1
    assert engine.sample("remediator_webhook_requests_total", code="200") == 0


async def test_recorded_firing_payload_creates_one_durable_run(
    client: Client, engine: Engine
) -> None:
    status, body = await post(client, recorded("storedown-firing"))

    assert status == 200
    assert body["alerts"] == 1
    assert body["duplicates"] == 0
    assert len(body["runs"]) == 1
    await engine.settle()
    detail = await engine.store.get_run(body["runs"][0])
    assert detail is not None
    assert detail.run.playbook == "store-down"
    assert detail.run.target == "store-s1"
    assert detail.run.fingerprint == "46924153d5d81b9f"
    assert str(detail.run.status) == "succeeded"
    assert [s.name for s in detail.steps] == ["record"]
    assert engine.rows("alerts") == 1
    kinds = engine.audit_kinds()
    assert kinds[:2] == ["alert_received", "run_queued"]
    assert {"run_started", "step_finished", "run_finished"} <= set(kinds)
    assert engine.sample("remediator_webhook_requests_total", code="200") == 1
    assert engine.sample("remediator_alerts_received_total", status="firing") == 1


async def test_redelivered_payload_is_a_duplicate_and_creates_no_run(
    client: Client, engine: Engine
) -> None:
    _, first = await post(client, recorded("storedown-firing"))
    await engine.settle()

    status, again = await post(client, recorded("storedown-firing"))

    assert status == 200
    assert again == {"alerts": 1, "duplicates": 1, "runs": []}
    assert engine.rows("runs") == 1
    assert engine.rows("alerts") == 1
    assert engine.audit_kinds().count("alert_duplicate") == 1
    assert engine.sample("remediator_alerts_duplicate_total") == 1
    await engine.settle()
    assert engine.entered.qsize() == 1, "the duplicate must not have been scheduled"
    assert (await engine.entered.get()) == first["runs"][0]


@pytest.mark.parametrize(
    "headers",
    [
        pytest.param({}, id="no-header"),
        pytest.param({"Authorization": "Bearer wrong-token"}, id="wrong-token"),
        pytest.param({"Authorization": f"Basic {WEBHOOK_TOKEN}"}, id="wrong-scheme"),
        pytest.param({"Authorization": f"Bearer {WEBHOOK_TOKEN}x"}, id="token-prefix"),
    ],
)
async def test_unauthorized_requests_are_refused(
    client: Client, engine: Engine, headers: dict[str, str]
) -> None:
    async with client.post(URL, json=recorded("storedown-firing"), headers=headers) as response:
        assert response.status == 401
        assert response.headers["WWW-Authenticate"].startswith("Bearer")
        assert (await response.json())["error"] == "unauthorized"

    assert_nothing_written(engine)
    assert_refusal_counted(engine, reason="unauthorized", code="401")


async def test_tokens_never_reach_the_logs(client: Client, engine: Engine) -> None:
    with structlog.testing.capture_logs() as logs:
        await post(client, recorded("storedown-firing"))
        await engine.settle()
        await post(client, recorded("storedown-firing"))
        await post(client, {"version": "3"})
        async with client.post(
            URL, json={}, headers={"Authorization": "Bearer guessed-a1b2c3"}
        ) as response:
            assert response.status == 401

    assert {"webhook_accepted", "webhook_refused", "run_finished"} <= {e["event"] for e in logs}
    text = json.dumps(logs, default=str)
    assert WEBHOOK_TOKEN not in text
    assert "guessed-a1b2c3" not in text
    assert "Bearer" not in text


async def test_other_content_types_are_refused(client: Client, engine: Engine) -> None:
    body = json.dumps(recorded("storedown-firing"))
    headers = {**auth(), "Content-Type": "text/plain"}
    async with client.post(URL, data=body, headers=headers) as response:
        assert response.status == 415
        assert (await response.json())["error"] == "unsupported_media_type"

    assert_nothing_written(engine)
    assert_refusal_counted(engine, reason="unsupported_media_type", code="415")


@pytest.fixture
async def small_limit(
    make_engine: MakeEngine, aiohttp_client: AiohttpClient
) -> tuple[Client, Engine]:
    engine = await make_engine(max_body_bytes=1024)
    return await aiohttp_client(intake.make_app(engine.services)), engine


def oversized() -> bytes:
    payload = recorded("storedown-firing")
    payload["commonAnnotations"]["padding"] = "x" * 4096
    return json.dumps(payload).encode()


async def test_declared_oversized_body_is_refused(small_limit: tuple[Client, Engine]) -> None:
    client, engine = small_limit
    body = oversized()
    headers = {**auth(), "Content-Type": "application/json"}
    async with client.post(URL, data=body, headers=headers) as response:
        assert response.request_info.headers["Content-Length"] == str(len(body))
        assert response.status == 413
        assert (await response.json())["error"] == "too_large"

    assert_nothing_written(engine)
    assert_refusal_counted(engine, reason="too_large", code="413")


async def test_chunked_oversized_body_is_refused(small_limit: tuple[Client, Engine]) -> None:
    client, engine = small_limit
    body = oversized()

    async def chunks() -> AsyncIterator[bytes]:
        for start in range(0, len(body), 512):
            yield body[start : start + 512]

    headers = {**auth(), "Content-Type": "application/json"}
    async with client.post(URL, data=chunks(), headers=headers) as response:
        assert "Content-Length" not in response.request_info.headers
        assert response.request_info.headers["Transfer-Encoding"] == "chunked"
        assert response.status == 413
        assert (await response.json())["error"] == "too_large"

    assert_nothing_written(engine)
    assert_refusal_counted(engine, reason="too_large", code="413")


async def test_body_at_the_limit_is_accepted(small_limit: tuple[Client, Engine]) -> None:
    client, engine = small_limit
    body = json.dumps(recorded("storedown-firing")).encode()
    assert len(body) <= 1024
    headers = {**auth(), "Content-Type": "application/json"}
    async with client.post(URL, data=body, headers=headers) as response:
        assert response.status == 200
    assert engine.rows("runs") == 1


async def test_malformed_json_is_refused(client: Client, engine: Engine) -> None:
    headers = {**auth(), "Content-Type": "application/json"}
    async with client.post(URL, data=b'{"version": "4", "alerts": [', headers=headers) as response:
        assert response.status == 400
        assert (await response.json())["error"] == "malformed_json"

    assert_nothing_written(engine)
    assert_refusal_counted(engine, reason="malformed_json", code="400")


def _set_version(p: dict[str, Any]) -> None:
    p["version"] = "3"


def _alerts_not_list(p: dict[str, Any]) -> None:
    p["alerts"] = {"0": p["alerts"][0]}


def _no_fingerprint(p: dict[str, Any]) -> None:
    del p["alerts"][0]["fingerprint"]


def _bad_starts_at(p: dict[str, Any]) -> None:
    p["alerts"][0]["startsAt"] = "yesterday at noon"


def _label_not_string(p: dict[str, Any]) -> None:
    p["alerts"][0]["labels"]["store_id"] = 1


def _second_alert_bad(p: dict[str, Any]) -> None:
    p["alerts"].append({**p["alerts"][0], "startsAt": "2026-11-26T07:12:39"})


@pytest.mark.parametrize(
    ("mutate", "field"),
    [
        pytest.param(_set_version, "version", id="version-3"),
        pytest.param(_alerts_not_list, "alerts", id="alerts-not-a-list"),
        pytest.param(_no_fingerprint, "alerts[0].fingerprint", id="missing-fingerprint"),
        pytest.param(_bad_starts_at, "alerts[0].startsAt", id="bad-startsAt"),
        pytest.param(_label_not_string, "alerts[0].labels.store_id", id="label-not-string"),
        # The first alert is valid: a payload is all or nothing.
        pytest.param(_second_alert_bad, "alerts[1].startsAt", id="second-alert-no-zone"),
    ],
)
async def test_invalid_payload_names_the_field(
    client: Client, engine: Engine, mutate: Callable[[dict[str, Any]], None], field: str
) -> None:
    payload = recorded("storedown-firing")
    mutate(payload)

    status, body = await post(client, payload)

    assert status == 400
    assert body["error"] == "invalid_payload"
    assert body["field"] == field
    assert body["message"].startswith(f"{field}: ")
    assert_nothing_written(engine)
    assert_refusal_counted(engine, reason="invalid_payload", code="400")


async def test_full_queue_answers_503_and_records_nothing(
    make_engine: MakeEngine, aiohttp_client: AiohttpClient
) -> None:
    engine = await make_engine(queue_size=1, concurrency=1)
    client: Client = await aiohttp_client(intake.make_app(engine.services))
    engine.gate.clear()
    _, running = await post(client, storedown("s2"))
    assert await engine.next_dispatched() == running["runs"][0]
    _, queued = await post(client, storedown("s3"))
    assert engine.scheduler.depth == 1
    written = {t: engine.rows(t) for t in ("alerts", "runs", "audit")}

    async with client.post(URL, json=recorded("storedown-firing"), headers=auth()) as response:
        assert response.status == 503
        assert response.headers["Retry-After"] == "7"
        assert (await response.json())["error"] == "queue_full"

    assert {t: engine.rows(t) for t in ("alerts", "runs", "audit")} == written
    assert engine.sample("remediator_webhook_rejections_total", reason="queue_full") == 1
    assert engine.sample("remediator_webhook_requests_total", code="503") == 1
    assert engine.sample("remediator_runs_not_started_total", reason="queue_full") == 1

    engine.gate.set()
    await engine.settle()
    # Alertmanager's retry: a new alert to us, not a duplicate of the refused delivery.
    status, retried = await post(client, recorded("storedown-firing"))
    assert status == 200
    assert retried["duplicates"] == 0
    assert len(retried["runs"]) == 1
    await engine.settle()
    for run_id in (running["runs"][0], queued["runs"][0], retried["runs"][0]):
        detail = await engine.store.get_run(run_id)
        assert detail is not None
        assert str(detail.run.status) == "succeeded"


async def test_resolved_payload_cancels_the_queued_run(
    make_engine: MakeEngine, aiohttp_client: AiohttpClient
) -> None:
    engine = await make_engine(concurrency=1)
    client: Client = await aiohttp_client(intake.make_app(engine.services))
    engine.gate.clear()
    _, busy = await post(client, storedown("s2"))
    assert await engine.next_dispatched() == busy["runs"][0]
    _, firing = await post(client, recorded("storedown-firing"))
    (run_id,) = firing["runs"]
    assert engine.scheduler.depth == 1

    status, resolved = await post(client, recorded("storedown-resolved"))

    assert status == 200
    assert resolved == {"alerts": 1, "duplicates": 0, "runs": []}
    assert engine.scheduler.depth == 0
    detail = await engine.store.get_run(run_id)
    assert detail is not None
    assert str(detail.run.status) == "cancelled"
    cancelled = [a for a in detail.audit if str(a.event.kind) == "run_cancelled"]
    assert len(cancelled) == 1
    assert cancelled[0].event.reason == "alert_resolved"
    assert engine.sample("remediator_runs_not_started_total", reason="alert_resolved") == 1

    engine.gate.set()
    await engine.settle()
    detail = await engine.store.get_run(run_id)
    assert detail is not None
    assert str(detail.run.status) == "cancelled"
    assert "run_started" not in {str(a.event.kind) for a in detail.audit}


async def test_not_ready_refuses_with_503_and_records_nothing(
    client: Client, engine: Engine
) -> None:
    engine.ready = False

    async with client.post(URL, json=recorded("storedown-firing"), headers=auth()) as response:
        assert response.status == 503
        assert response.headers["Retry-After"] == "7"
        assert (await response.json())["error"] == "shutting_down"

    assert_nothing_written(engine)
    assert_refusal_counted(engine, reason="shutting_down", code="503")


async def test_healthz(client: Client) -> None:
    async with client.get("/healthz") as response:
        assert response.status == 200
        assert (await response.json())["status"] == "ok"


async def test_readyz_follows_readiness(client: Client, engine: Engine) -> None:
    engine.ready = False
    async with client.get("/readyz") as response:
        assert response.status == 503
    engine.ready = True
    async with client.get("/readyz") as response:
        assert response.status == 200
        assert (await response.json())["status"] == "ready"


async def test_readyz_is_503_while_the_store_does_not_answer(
    client: Client, engine: Engine
) -> None:
    await engine.store.close()  # as when its database is away

    async with client.get("/readyz") as response:
        assert response.status == 503
        body = await response.json()
    assert body["status"] == "not ready"
    assert "not open" in body["message"]


async def test_metrics_exposes_remediator_series(client: Client) -> None:
    await post(client, recorded("storedown-firing"))
    async with client.post(URL, json={}) as response:
        assert response.status == 401

    async with client.get("/metrics") as response:
        assert response.status == 200
        assert response.content_type == "text/plain"
        text = await response.text()

    for series in (
        'remediator_webhook_requests_total{code="200"} 1.0',
        'remediator_webhook_rejections_total{reason="unauthorized"} 1.0',
        'remediator_alerts_received_total{status="firing"} 1.0',
        "remediator_queue_depth ",
        "remediator_runs_active ",
    ):
        assert series in text


async def test_a_failing_store_is_a_503_to_retry(client: Client, engine: Engine) -> None:
    await engine.store.close()  # as when the disk fails under it: every write raises

    async with client.post(URL, json=recorded("storedown-firing"), headers=auth()) as response:
        assert response.status == 503
        assert response.headers["Retry-After"] == "7"
        body = await response.json()

    assert body["error"] == "admission_failed"
    assert engine.sample("remediator_webhook_rejections_total", reason="admission_failed") == 1
    assert engine.sample("remediator_webhook_requests_total", code="503") == 1
