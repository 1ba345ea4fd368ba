"""Store probes against real HTTP servers on 127.0.0.1, and reads of the provisioner twin."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import aiohttp
import pytest

from remediator.adapters import probing
from remediator.core.stores import ProbeFailure
from remediator.simulation import provisioner
from tests.store_fixtures import PATH, StoreServer, closed_port, serve_stores


@pytest.fixture
async def stores_server() -> AsyncIterator[StoreServer]:
    async with serve_stores() as server:
        yield server


@pytest.fixture
async def prober() -> AsyncIterator[probing.Prober]:
    async with probing.Prober(timeout=10.0) as found:
        yield found


async def test_an_answer_is_up(stores_server: StoreServer, prober: probing.Prober) -> None:
    result = await prober.probe(stores_server.url + PATH)

    assert (result.up, result.status, result.failure) == (True, 200, None)
    assert result.duration >= 0
    assert stores_server.seen == [(f"127.0.0.1:{stores_server.port}", PATH)]


async def test_a_redirect_is_up_and_not_followed(
    stores_server: StoreServer, prober: probing.Prober
) -> None:
    stores_server.status = 302

    result = await prober.probe(stores_server.url + PATH)

    assert (result.up, result.status) == (True, 302)
    assert len(stores_server.seen) == 1


async def test_503_is_a_status_code_failure(
    stores_server: StoreServer, prober: probing.Prober
) -> None:
    stores_server.status = 503

    result = await prober.probe(stores_server.url + PATH)

    assert (result.up, result.status, result.failure) == (False, 503, ProbeFailure.STATUS_CODE)


async def test_connection_refused(prober: probing.Prober) -> None:
    result = await prober.probe(f"http://127.0.0.1:{closed_port()}{PATH}")

    assert (result.up, result.status, result.failure) == (
        False,
        None,
        ProbeFailure.CONNECTION_REFUSED,
    )


async def test_no_answer_within_the_timeout(stores_server: StoreServer) -> None:
    stores_server.hang = True
    async with probing.Prober(timeout=0.2) as quick:
        result = await quick.probe(stores_server.url + PATH)

    assert (result.up, result.failure) == (False, ProbeFailure.TIMEOUT)
    assert stores_server.entered.is_set(), "the request reached the server"


async def test_a_name_that_does_not_resolve(prober: probing.Prober) -> None:
    # .invalid never resolves (RFC 2606), with or without a network.
    result = await prober.probe(f"http://store.invalid{PATH}")

    assert (result.up, result.failure) == (False, ProbeFailure.DNS)


async def test_tls_to_a_plain_http_server(stores_server: StoreServer) -> None:
    async with probing.Prober(timeout=5.0) as tls:
        result = await tls.probe(f"https://127.0.0.1:{stores_server.port}{PATH}")

    assert (result.up, result.failure) == (False, ProbeFailure.TLS)


async def test_a_connection_closed_without_an_answer_is_other(prober: probing.Prober) -> None:
    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readline()
        writer.close()
        await writer.wait_closed()

    server = await asyncio.start_server(hang_up, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        result = await prober.probe(f"http://127.0.0.1:{port}{PATH}")

    assert (result.up, result.failure) == (False, ProbeFailure.OTHER)


@pytest.mark.parametrize("address", ["127.0.0.1", "localhost"], ids=["ip", "hostname"])
async def test_connect_to_sends_the_store_host(stores_server: StoreServer, address: str) -> None:
    async with probing.Prober(timeout=5.0, connect_to=(address, stores_server.port)) as fixed:
        first = await fixed.probe(f"http://s1.127.0.0.1.nip.io{PATH}")
        second = await fixed.probe("http://store-two.shop.invalid/x")

    assert first.up and second.up
    assert stores_server.seen == [("s1.127.0.0.1.nip.io", PATH), ("store-two.shop.invalid", "/x")]


async def test_connect_to_a_closed_port_is_refused() -> None:
    async with probing.Prober(timeout=5.0, connect_to=("127.0.0.1", closed_port())) as fixed:
        result = await fixed.probe(f"http://s1.127.0.0.1.nip.io{PATH}")

    assert result.failure is ProbeFailure.CONNECTION_REFUSED


async def test_probe_outside_the_context_is_a_bug() -> None:
    with pytest.raises(RuntimeError, match="outside"):
        await probing.Prober(timeout=1).probe("http://127.0.0.1/")


# --- the provisioner API ------------------------------------------------------------------------

TOKEN = "provisioner-token-7c1e"


@pytest.fixture
async def twin() -> AsyncIterator[tuple[provisioner.ProvisionerTwin, str]]:
    found = provisioner.ProvisionerTwin(token=TOKEN)
    async with provisioner.serve(found) as url:
        yield found, url


async def test_provisioner_statuses_by_store_id(
    twin: tuple[provisioner.ProvisionerTwin, str], http_session: aiohttp.ClientSession
) -> None:
    state, url = twin
    state.add_store("s1")
    state.add_store("s2", status="provisioning")

    statuses = await probing.read_provisioner_statuses(http_session, url, token=TOKEN, time_limit=5)

    assert statuses == {"s1": "running", "s2": "provisioning"}


async def test_provisioner_refusal_is_an_error_without_the_token(
    twin: tuple[provisioner.ProvisionerTwin, str], http_session: aiohttp.ClientSession
) -> None:
    _, url = twin

    with pytest.raises(probing.ProvisionerReadError, match="HTTP 401") as caught:
        await probing.read_provisioner_statuses(
            http_session, url, token="wrong-" + TOKEN, time_limit=5
        )

    assert TOKEN not in str(caught.value)


async def test_provisioner_unreachable(http_session: aiohttp.ClientSession) -> None:
    with pytest.raises(probing.ProvisionerReadError, match="ClientConnectorError"):
        await probing.read_provisioner_statuses(
            http_session, f"http://127.0.0.1:{closed_port()}", token=TOKEN, time_limit=5
        )


async def test_provisioner_health_endpoint(
    twin: tuple[provisioner.ProvisionerTwin, str], http_session: aiohttp.ClientSession
) -> None:
    state, url = twin
    headers = {"Authorization": f"Bearer {TOKEN}"}

    healthy = await probing.probe(http_session, f"{url}/healthz", time_limit=5, headers=headers)
    state.fail_next(1)
    failing = await probing.probe(http_session, f"{url}/healthz", time_limit=5, headers=headers)

    assert (healthy.up, healthy.status) == (True, 200)
    assert (failing.up, failing.failure) == (False, ProbeFailure.STATUS_CODE)
