"""The storefront: one server answering for every store by Host, from the emulator's state."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.abc import AbstractResolver, ResolveResult

from remediator.simulation import platform, storefront

from .conftest import FAST, fetch


async def test_a_healthy_store_serves_the_check_path(
    sim: platform.SimulatedPlatform, http: aiohttp.ClientSession
) -> None:
    answer = await fetch(http, sim, "s1")

    assert answer.status == 200
    assert answer.content_type == "image/gif"
    assert answer.body == storefront.BLANK_GIF
    assert answer.body.startswith(b"GIF89a") and len(answer.body) == 43
    home = await fetch(http, sim, "s1", "/")
    assert (home.status, home.content_type) == (200, "text/html")
    assert b"Store s1" in home.body
    assert (await fetch(http, sim, "s1", "/wp-admin/nothing")).status == 404


@pytest.mark.parametrize(
    ("host", "status"),
    [
        ("s2.127.0.0.1.nip.io", 200),
        ("S2.127.0.0.1.NIP.IO", 200),
        ("s2.127.0.0.1.nip.io:8080", 200),
        ("s2.127.0.0.1.nip.io.", 200),
        ("nope.127.0.0.1.nip.io", 404),
        ("s2.stores.example.com", 404),
        ("127.0.0.1.nip.io", 404),
        ("127.0.0.1", 404),
    ],
    ids=["plain", "case", "port", "trailing-dot", "unknown", "other-domain", "bare", "ip"],
)
async def test_routing_by_host(
    sim: platform.SimulatedPlatform, http: aiohttp.ClientSession, host: str, status: int
) -> None:
    assert (await fetch(http, sim, host)).status == status


async def test_a_broken_store_answers_503_with_the_reason(
    sim: platform.SimulatedPlatform, http: aiohttp.ClientSession
) -> None:
    sim.inject("app_down", "s1")

    answer = await fetch(http, sim, "s1")

    assert answer.status == 503
    assert b"503 Service Temporarily Unavailable" in answer.body
    assert "s1-app has no ready endpoints" in answer.headers["X-Simulation-Problems"]
    assert (await fetch(http, sim, "s2")).status == 200


async def test_a_hanging_store_keeps_the_client_waiting(
    sim: platform.SimulatedPlatform, http: aiohttp.ClientSession
) -> None:
    sim.inject("app_down", "s1", answer=storefront.Answer.HANG)

    with pytest.raises(TimeoutError):
        await fetch(http, sim, "s1", time_limit=0.2)
    assert (await fetch(http, sim, "s2")).status == 200


async def test_a_hang_ends_as_a_gateway_timeout(
    tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    settings = platform.PlatformSettings(delays=FAST, hang_timeout=0.05)
    async with platform.run(stores=["s1"], workdir=tmp_path, settings=settings) as sim:
        sim.inject("certificate_not_ready", "s1", answer=storefront.Answer.HANG)

        answer = await fetch(http, sim, "s1")

    assert answer.status == 504
    assert "certificate s1-tls not ready" in answer.headers["X-Simulation-Problems"]


async def test_the_ingress_controller_down_fails_every_host(
    sim: platform.SimulatedPlatform, http: aiohttp.ClientSession
) -> None:
    sim.inject("ingress_controller_down")

    for host in ("s1", "s2", "nope.127.0.0.1.nip.io"):
        answer = await fetch(http, sim, host)
        assert answer.status == 503
        assert answer.headers["X-Simulation-Problems"] == "ingress controller unavailable"
    assert not sim.serving("s1")


async def test_the_ingress_controller_may_hang_instead(
    sim: platform.SimulatedPlatform, http: aiohttp.ClientSession
) -> None:
    sim.inject("ingress_controller_down", answer=storefront.Answer.HANG)

    with pytest.raises(TimeoutError):
        await fetch(http, sim, "s2", time_limit=0.2)


async def test_the_answer_follows_the_state_at_once(
    sim: platform.SimulatedPlatform, http: aiohttp.ClientSession
) -> None:
    sim.emulator.delete("networking.k8s.io/v1", "Ingress", "s1-app", "store-s1")
    assert (await fetch(http, sim, "s1")).status == 404
    sim.emulator.delete("v1", "Secret", "s2-tls", "store-s2")
    # cert-manager re-issues it (after its small delay); meanwhile the store fails.
    assert (await fetch(http, sim, "s2")).status == 503
    await sim.wait_until(lambda: sim.serving("s2"), timeout=5)
    assert (await fetch(http, sim, "s2")).status == 200


class _ConnectTo(AbstractResolver):
    """Every name resolves to one address, like a prober's ``connect_to``."""

    def __init__(self, host: str, port: int) -> None:
        self._host, self._port = host, port

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        return [
            ResolveResult(
                hostname=host,
                host=self._host,
                port=self._port,
                family=socket.AF_INET,
                proto=0,
                flags=socket.AI_NUMERICHOST,
            )
        ]

    async def close(self) -> None:
        pass


async def test_the_store_url_works_through_connect_to(sim: platform.SimulatedPlatform) -> None:
    probe: dict[str, Any] = sim.stores_config()["probe"]
    host, _, port = probe["connect_to"].rpartition(":")
    connector = aiohttp.TCPConnector(resolver=_ConnectTo(host, int(port)), use_dns_cache=False)
    async with aiohttp.ClientSession(connector=connector) as session:
        url = probe["url_template"].format(store_id="s1") + probe["path"]
        assert url == sim.check_url("s1")
        async with session.get(url) as response:
            assert response.status == 200
            assert await response.read() == storefront.BLANK_GIF
