"""A full queue pushes back cheaply and loses nothing: the real app, admitter, executor and
SQLite store.

A webhook whose runs do not all fit is refused whole with 503 and Retry-After, and nothing of
it is recorded; one that needs no room (a re-delivery of alerts already recorded) is accepted
and audited however full the queue is; and under a burst of retried webhooks every alert that
was acknowledged becomes exactly one finished run.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import sqlite3
from typing import Any

from pytest_aiohttp import AiohttpClient

from remediator.web import intake
from tests.web.conftest import (
    DEADLINE,
    Client,
    Engine,
    MakeEngine,
    auth,
    recorded,
    storedown,
    webhook,
)

URL = intake.WEBHOOK_PATH
FALLBACK_RETRY_AFTER = 120
"""Configured Retry-After: above intake.MAX_RETRY_AFTER, so a value from the drain rate is
told apart from it."""


def alerts_of(*store_ids: str) -> dict[str, Any]:
    """One webhook carrying a StoreDown alert for each store."""
    return webhook(*(storedown(store_id)["alerts"][0] for store_id in store_ids))


def fingerprint(store_id: str) -> str:
    return hashlib.sha256(store_id.encode()).hexdigest()[:16]


async def post(client: Client, payload: Any) -> tuple[int, dict[str, Any], str | None]:
    async with client.post(URL, json=payload, headers=auth()) as response:
        return response.status, await response.json(), response.headers.get("Retry-After")


def written(engine: Engine) -> dict[str, int]:
    return {t: engine.rows(t) for t in ("alerts", "runs", "audit")}


async def full_queue(
    make_engine: MakeEngine, aiohttp_client: AiohttpClient, *, queue_size: int
) -> tuple[Engine, Client, dict[str, Any]]:
    """One run held at the gate and ``queue_size`` runs waiting behind it: no room left.
    Returns the webhook that filled the queue."""
    engine = await make_engine(
        queue_size=queue_size, concurrency=1, retry_after=FALLBACK_RETRY_AFTER
    )
    client: Client = await aiohttp_client(intake.make_app(engine.services))
    engine.gate.clear()
    status, running, _ = await post(client, alerts_of("held"))
    assert status == 200
    assert await engine.next_dispatched() == running["runs"][0]
    filling = alerts_of(*(f"q{i}" for i in range(queue_size)))
    status, queued, _ = await post(client, filling)
    assert status == 200
    assert len(queued["runs"]) == queue_size
    assert engine.scheduler.room == 0
    return engine, client, filling


async def test_a_webhook_that_does_not_fit_is_refused_whole_and_records_nothing(
    make_engine: MakeEngine, aiohttp_client: AiohttpClient
) -> None:
    engine, client, _ = await full_queue(make_engine, aiohttp_client, queue_size=3)
    before = written(engine)

    status, body, retry_after = await post(client, alerts_of("n1", "n2", "n3", "n4"))

    assert status == 503
    assert body["error"] == "queue_full"
    # No run has finished yet, so there is no drain rate: the configured value.
    assert retry_after == str(FALLBACK_RETRY_AFTER)
    assert written(engine) == before
    assert engine.scheduler.depth == 3
    assert engine.sample("remediator_webhook_rejections_total", reason="queue_full") == 1


async def test_a_redelivery_is_accepted_and_audited_while_the_queue_is_full(
    make_engine: MakeEngine, aiohttp_client: AiohttpClient
) -> None:
    engine, client, filling = await full_queue(make_engine, aiohttp_client, queue_size=3)
    before = written(engine)

    # Alertmanager sends a group's notification again: every alert in it is recorded.
    status, body, _ = await post(client, filling)

    assert status == 200
    assert body == {"alerts": 3, "duplicates": 3, "runs": []}
    after = written(engine)
    assert (after["alerts"], after["runs"]) == (before["alerts"], before["runs"])
    assert engine.audit_kinds()[before["audit"] :] == ["alert_duplicate"] * 3
    assert engine.scheduler.depth == 3

    # The same group with one new alert needs room for it, so it is refused, all of it.
    status, body, _ = await post(client, alerts_of("q0", "q1", "q2", "n1"))

    assert status == 503
    assert body["error"] == "queue_full"
    assert written(engine) == after


async def test_a_resolved_alert_needs_no_room(
    make_engine: MakeEngine, aiohttp_client: AiohttpClient
) -> None:
    engine, client, _ = await full_queue(make_engine, aiohttp_client, queue_size=1)
    before = written(engine)

    status, body, _ = await post(client, recorded("storedown-resolved"))

    assert status == 200
    assert body == {"alerts": 1, "duplicates": 0, "runs": []}
    assert engine.rows("alerts") == before["alerts"] + 1
    assert engine.scheduler.depth == 1


async def test_retry_after_follows_the_drain_rate_once_runs_have_finished(
    make_engine: MakeEngine, aiohttp_client: AiohttpClient
) -> None:
    engine = await make_engine(queue_size=2, concurrency=1, retry_after=FALLBACK_RETRY_AFTER)
    client: Client = await aiohttp_client(intake.make_app(engine.services))
    status, _, _ = await post(client, alerts_of("d1", "d2"))
    assert status == 200
    await engine.settle()  # two runs finished: the scheduler has a drain rate
    engine.gate.clear()
    await post(client, alerts_of("held"))
    await engine.next_dispatched()
    await post(client, alerts_of("q0", "q1"))

    status, _, retry_after = await post(client, alerts_of("n1"))

    assert status == 503
    assert retry_after is not None
    assert 1 <= int(retry_after) <= intake.MAX_RETRY_AFTER


async def test_nothing_acknowledged_is_lost_in_a_burst_of_retried_webhooks(
    make_engine: MakeEngine, aiohttp_client: AiohttpClient
) -> None:
    engine = await make_engine(queue_size=4, concurrency=2)
    client: Client = await aiohttp_client(intake.make_app(engine.services))
    groups = [[f"b{g}-{i}" for i in range(3)] for g in range(8)]
    acknowledged: set[str] = set()
    refused: set[int] = set()
    most_refused = asyncio.Event()

    async def deliver(group: int) -> None:
        # As Alertmanager does: the same webhook again until it is acknowledged (without
        # Retry-After's seconds, to keep the test fast).
        while True:
            status, body, _ = await post(client, alerts_of(*groups[group]))
            if status == 200:
                assert body["alerts"] == 3
                acknowledged.update(fingerprint(s) for s in groups[group])
                return
            assert (status, body["error"]) == (503, "queue_full")
            refused.add(group)
            if len(refused) >= len(groups) - 2:
                most_refused.set()
            await asyncio.sleep(0.01)

    engine.gate.clear()
    async with asyncio.timeout(DEADLINE):
        senders = [asyncio.create_task(deliver(group)) for group in range(len(groups))]
        # Held at the gate, 2 running and 4 waiting: 6 of the 8 webhooks are refused.
        await most_refused.wait()
        engine.gate.set()
        await asyncio.gather(*senders)
    await engine.settle()

    assert len(acknowledged) == 24
    with contextlib.closing(sqlite3.connect(engine.store.path)) as conn:
        rows = conn.execute("SELECT fingerprint, status FROM runs").fetchall()
    assert sorted(fp for fp, _ in rows) == sorted(acknowledged)  # one run each, none twice
    assert {status for _, status in rows} == {"succeeded"}
    assert engine.rows("alerts") == 24
    report = await engine.store.verify_audit()
    assert report.first_broken is None
    assert report.checked == engine.rows("audit")
