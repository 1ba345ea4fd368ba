"""Local endpoints around the real Prometheus and Alertmanager in tests.

A scrape target whose gauge the test sets, and a webhook receiver that queues what
Alertmanager delivers. Both listen on 127.0.0.1 on a port the OS picks and are ready when
their context manager yields (aiohttp's site has bound by then), so nobody polls for them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import prometheus_client
from aiohttp import web

from remediator.adapters import prometheus
from remediator.simulation import serving

# The reference measured the first scrape 5-6 s after Prometheus starts and the first webhook
# 8.7-10 s after; the budget leaves room for a loaded CI machine.
MONITORING_BUDGET = 20.0


@dataclass(frozen=True, slots=True, kw_only=True)
class GaugeTarget:
    gauge: prometheus_client.Gauge
    address: str
    """``127.0.0.1:PORT``, as Prometheus' static_configs want it."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Delivery:
    authorization: str | None
    payload: dict[str, Any]


@dataclass(frozen=True, slots=True, kw_only=True)
class WebhookReceiver:
    url: str
    deliveries: asyncio.Queue[Delivery]

    async def next_delivery(self) -> Delivery:
        async with asyncio.timeout(MONITORING_BUDGET):
            return await self.deliveries.get()


@contextlib.asynccontextmanager
async def serve_gauge(
    name: str = "store_up", *, labelnames: Sequence[str] = ("store_id",)
) -> AsyncIterator[GaugeTarget]:
    # A registry per target, so that tests never see each other's series.
    registry = prometheus_client.CollectorRegistry()
    gauge = prometheus_client.Gauge(name, "Set by the test.", labelnames, registry=registry)

    async def metrics(request: web.Request) -> web.Response:
        return web.Response(
            body=prometheus_client.generate_latest(registry),
            headers={"Content-Type": prometheus_client.CONTENT_TYPE_LATEST},
        )

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    async with _serve(app) as address:
        yield GaugeTarget(gauge=gauge, address=address)


@contextlib.asynccontextmanager
async def serve_webhook_receiver(path: str = "/alerts") -> AsyncIterator[WebhookReceiver]:
    deliveries: asyncio.Queue[Delivery] = asyncio.Queue()

    async def receive(request: web.Request) -> web.Response:
        payload = json.loads(await request.read())
        authorization = request.headers.get("Authorization")
        await deliveries.put(Delivery(authorization=authorization, payload=payload))
        return web.Response(status=200)

    app = web.Application()
    app.router.add_post(path, receive)
    async with _serve(app) as address:
        yield WebhookReceiver(url=f"http://{address}{path}", deliveries=deliveries)


async def wait_for_query(
    client: prometheus.PrometheusClient,
    promql: str,
    predicate: Callable[[prometheus.QueryResult], bool],
) -> prometheus.QueryResult:
    """Query until `predicate` holds: Prometheus offers no push for new samples."""
    async with asyncio.timeout(MONITORING_BUDGET):
        while True:
            result = await client.query(promql)
            if predicate(result):
                return result
            await asyncio.sleep(0.2)


@contextlib.asynccontextmanager
async def _serve(app: web.Application) -> AsyncIterator[str]:
    async with serving.serve_app(app) as url:
        yield url.removeprefix("http://")
