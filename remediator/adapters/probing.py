"""HTTP probes of store URLs and reads of the provisioner API, with aiohttp.

A probe is one GET without redirects, bounded by a total timeout; an answer below 400 is up.
Every failure gets one of a closed set of reasons (`stores.ProbeFailure`), read off the
exception: a timeout, a refused connection, a name that does not resolve, a TLS failure, or
anything else. The body is never read.

`Prober` owns its session: no cookie jar (ten thousand stores would fill it), a fresh
connection per probe (a health check should not ride on a connection from 30 s ago, and pooled
connections to ten thousand hosts would only expire unused), and, with ``connect_to``, a
resolver that sends every request to one address while the URL's host stays in the Host header
and TLS SNI, like curl's ``--connect-to``. Without it, names resolve through real DNS.
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import socket
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult

from remediator.core import redaction, stores
from remediator.core.errors import RemediatorError


@dataclass(frozen=True, slots=True, kw_only=True)
class ProbeResult:
    up: bool
    duration: float
    """Seconds from sending the request to the answer's headers, or to the failure."""
    status: int | None = None
    failure: stores.ProbeFailure | None = None


class ProvisionerReadError(RemediatorError):
    """The provisioner API's store list could not be read."""


def failure_reason(error: BaseException) -> stores.ProbeFailure:
    """The probe failure reason an exception from aiohttp stands for."""
    if isinstance(error, TimeoutError):  # aiohttp's ServerTimeoutError is one too
        return stores.ProbeFailure.TIMEOUT
    if isinstance(error, aiohttp.ClientConnectorDNSError):
        return stores.ProbeFailure.DNS
    if isinstance(error, aiohttp.ClientSSLError | ssl.SSLError):
        return stores.ProbeFailure.TLS
    if isinstance(error, aiohttp.ClientConnectorError):
        cause = error.os_error
        if isinstance(cause, socket.gaierror):
            return stores.ProbeFailure.DNS
        if isinstance(cause, ConnectionRefusedError) or cause.errno == errno.ECONNREFUSED:
            return stores.ProbeFailure.CONNECTION_REFUSED
    return stores.ProbeFailure.OTHER


_PROBE_ERRORS = (TimeoutError, aiohttp.ClientError, OSError)
"""What a GET can raise besides bugs: ssl.SSLError and socket.gaierror are OSErrors."""


async def probe(
    session: aiohttp.ClientSession,
    url: str,
    *,
    time_limit: float,
    headers: Mapping[str, str] | None = None,
) -> ProbeResult:
    """GET ``url`` once, without following redirects."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    try:
        async with session.get(
            url,
            allow_redirects=False,
            timeout=aiohttp.ClientTimeout(total=time_limit),
            headers=headers,
        ) as response:
            status = response.status
    except _PROBE_ERRORS as e:
        return ProbeResult(up=False, duration=loop.time() - started, failure=failure_reason(e))
    failure = stores.status_failure(status)
    return ProbeResult(
        up=failure is None, duration=loop.time() - started, status=status, failure=failure
    )


class FixedResolver(AbstractResolver):
    """Resolves every name to one ``host:port`` (curl's ``--connect-to``); the name itself
    stays the request's Host header and TLS server name."""

    def __init__(self, host: str, port: int) -> None:
        self._host = host
        self._port = port
        self._numeric: socket.AddressFamily | None = None
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            self._inner: AbstractResolver | None = aiohttp.DefaultResolver()
        else:
            self._inner = None
            self._numeric = socket.AF_INET6 if address.version == 6 else socket.AF_INET

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        if self._inner is not None:
            found = await self._inner.resolve(self._host, self._port, family)
            return [{**entry, "hostname": host} for entry in found]
        assert self._numeric is not None  # noqa: S101 - set whenever there is no inner resolver
        return [
            {
                "hostname": host,
                "host": self._host,
                "port": self._port,
                "family": self._numeric,
                "proto": 0,
                "flags": socket.AI_NUMERICHOST | socket.AI_NUMERICSERV,
            }
        ]

    async def close(self) -> None:
        if self._inner is not None:
            await self._inner.close()


class Prober:
    """Probes store URLs through one session; use as an async context manager."""

    def __init__(
        self,
        *,
        timeout: float,
        connect_to: tuple[str, int] | None = None,
        concurrency: int = 50,
        user_agent: str = "remediator",
    ) -> None:
        self.timeout = timeout
        self._connect_to = connect_to
        self._concurrency = concurrency
        self._user_agent = user_agent
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> Prober:
        resolver: AbstractResolver | None = None
        if self._connect_to is not None:
            resolver = FixedResolver(*self._connect_to)
        connector = aiohttp.TCPConnector(
            limit=self._concurrency,
            force_close=True,
            resolver=resolver,
            # With connect_to every name maps to one address anyway; caching them would only
            # keep ten thousand entries.
            use_dns_cache=resolver is None,
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            cookie_jar=aiohttp.DummyCookieJar(),
            headers={"User-Agent": self._user_agent},
            auto_decompress=False,
        )
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def probe(self, url: str) -> ProbeResult:
        if self._session is None:
            raise RuntimeError("Prober used outside `async with`")
        return await probe(self._session, url, time_limit=self.timeout)


# --- the provisioner API ------------------------------------------------------------------------


async def read_provisioner_statuses(
    session: aiohttp.ClientSession, base_url: str, *, token: str | None, time_limit: float
) -> dict[str, str]:
    """Each store's status from ``GET /api/v1/stores``, by store id."""
    url = base_url.rstrip("/") + "/api/v1/stores"
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        async with session.get(
            url, headers=headers, timeout=aiohttp.ClientTimeout(total=time_limit)
        ) as response:
            if response.status != 200:
                body = redaction.truncate(await response.text(errors="replace"), 256)
                raise ProvisionerReadError(f"GET {url}: HTTP {response.status}: {body}")
            decoded: Any = await response.json(content_type=None)
    except (TimeoutError, aiohttp.ClientError, ValueError) as e:
        detail = "timed out" if isinstance(e, TimeoutError) else f"{type(e).__name__}: {e}"
        raise ProvisionerReadError(f"GET {url}: {redaction.truncate(detail, 256)}") from e
    items = decoded.get("items") if isinstance(decoded, dict) else None
    if not isinstance(items, list):
        raise ProvisionerReadError(f"GET {url}: expected an object with an 'items' list")
    return {
        item["id"]: item["status"]
        for item in items
        if isinstance(item, dict)
        and isinstance(item.get("id"), str)
        and isinstance(item.get("status"), str)
    }
