"""A store server for probe tests: one aiohttp app answering for every store by Host header.

Like an ingress controller in front of many stores, it records the Host header and path of each
request; tests can make it answer with another status, or hang until released (signalled by
``entered``, never by polling).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from aiohttp import web

from remediator.simulation import serving

PATH = "/wp-includes/images/blank.gif"


@dataclass
class StoreServer:
    """One server answering for every store, by Host header, like an ingress controller."""

    url: str = ""
    port: int = 0
    status: int = 200
    """The answer for every store, unless ``statuses`` has one for its host."""
    statuses: dict[str, int] = field(default_factory=dict)
    seen: list[tuple[str, str]] = field(default_factory=list)
    """(Host header, path) of each request."""
    hang: bool = False
    """Hold every request until ``release`` is set."""
    entered: asyncio.Event = field(default_factory=asyncio.Event)
    """Set by the first request."""
    release: asyncio.Event = field(default_factory=asyncio.Event)
    in_flight: int = 0
    peak: int = 0
    """The most requests held at once."""
    _arrived: asyncio.Condition = field(default_factory=asyncio.Condition)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        host = request.headers.get("Host", "")
        self.seen.append((host, request.path))
        self.entered.set()
        async with self._arrived:
            self._arrived.notify_all()
        self.in_flight += 1
        self.peak = max(self.peak, self.in_flight)
        try:
            if self.hang:
                await self.release.wait()
        finally:
            self.in_flight -= 1
        status = self.statuses.get(host, self.status)
        if status in (301, 302):
            raise web.HTTPFound("https://elsewhere.example/")
        return web.Response(status=status, body=b"GIF89a")

    async def wait_for_requests(self, count: int) -> None:
        """Until at least ``count`` requests have arrived in all."""
        async with self._arrived:
            await self._arrived.wait_for(lambda: len(self.seen) >= count)


@contextlib.asynccontextmanager
async def serve_stores() -> AsyncIterator[StoreServer]:
    server = StoreServer()
    app = web.Application()
    app.router.add_get("/{tail:.*}", server.handle)
    async with serving.serve_app(app) as url:
        server.url = url
        server.port = int(url.rsplit(":", 1)[1])
        try:
            yield server
        finally:
            server.release.set()


def closed_port() -> int:
    """A port nothing listens on (it was free a moment ago)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port
