"""One HTTP server standing in for ingress-nginx in front of every simulated store.

It routes by ``Host`` (``<id>.127.0.0.1.nip.io``, port ignored) as the ingress controller does,
and answers from the emulator's state at the moment of the request:

- the ingress controller has no ready pod: every host fails;
- no Ingress for the host (unknown store, Ingress deleted, namespace gone): 404;
- the store cannot serve (`stores.serving_problems`: app not ready, no ready endpoints,
  certificate not ready, namespace terminating): it fails;
- otherwise the runbook's check path ``/wp-includes/images/blank.gif`` is a 200 with a tiny GIF
  (``/`` a tiny page, anything else 404, as WordPress would).

A failing store answers 503 (nginx with no upstream) or hangs and then answers 504, chosen per
store with :meth:`Storefront.set_answer`. Clients reach it with their own URL and Host header,
or with aiohttp's resolver pointed at it (a prober's ``connect_to``).
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
from collections.abc import AsyncIterator

from aiohttp import web

from remediator.simulation import kubeapi, serving, stores

BLANK_GIF = (
    b"GIF89a\x01\x00\x01\x00\x80\x00\x00\x00\x00\x00\xff\xff\xff!\xf9\x04\x01\x00\x00\x00\x00"
    b",\x00\x00\x00\x00\x01\x00\x01\x00\x00\x02\x02D\x01\x00;"
)
"""The 1x1 transparent GIF WordPress ships as ``blank.gif`` (43 bytes)."""
PLATFORM = ""
"""`Storefront.set_answer` key for failures of the whole platform (the ingress controller)."""


class Answer(enum.Enum):
    """How a store that cannot serve answers."""

    UNAVAILABLE = "503"
    """At once, ``503 Service Temporarily Unavailable`` (nginx without a ready upstream)."""
    HANG = "hang"
    """Nothing until ``hang_timeout``, then ``504 Gateway Time-out`` (an upstream that hangs)."""


def _page(status: int, reason: str) -> str:
    title = f"{status} {reason}"
    return (
        f"<html>\r\n<head><title>{title}</title></head>\r\n<body>\r\n"
        f"<center><h1>{title}</h1></center>\r\n<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n"
    )


class Storefront:
    """The routing and answers; serve it with :func:`serve`."""

    def __init__(
        self,
        emulator: kubeapi.KubeEmulator,
        *,
        domain: str = stores.DOMAIN,
        hang_timeout: float = 30.0,
    ) -> None:
        self.emulator = emulator
        self.domain = domain
        self.hang_timeout = hang_timeout
        self._answers: dict[str, Answer] = {}

    def set_answer(self, store_id: str, answer: Answer) -> None:
        """How ``store_id`` (or `PLATFORM`, for every store) answers while it cannot serve."""
        self._answers[store_id] = answer

    def answer_for(self, store_id: str) -> Answer:
        return self._answers.get(store_id, Answer.UNAVAILABLE)

    def store_for(self, host: str) -> str | None:
        """The store an Ingress routes ``host`` to, or None (nginx's default backend: 404)."""
        name = host.rsplit(":", 1)[0] if host.count(":") == 1 else host
        name = name.lower().rstrip(".")
        store_id, _, domain = name.partition(".")
        if domain != self.domain or not store_id:
            return None
        if stores.find_ingress(self.emulator, name, stores.names(store_id).namespace) is None:
            return None
        return store_id

    def problems(self, store_id: str) -> list[str]:
        """Why ``store_id`` would not answer 200 now (empty: it would)."""
        return stores.serving_problems(self.emulator, store_id, domain=self.domain)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        if not stores.ingress_controller_up(self.emulator):
            return await self._fail(PLATFORM, ["ingress controller unavailable"])
        store_id = self.store_for(request.host)
        if store_id is None:
            return self._html(404, "Not Found")
        problems = self.problems(store_id)
        if problems:
            return await self._fail(store_id, problems)
        if request.path == stores.CHECK_PATH:
            return web.Response(body=BLANK_GIF, content_type="image/gif")
        if request.path == "/":
            return web.Response(
                text=f"<html><body><h1>Store {store_id}</h1></body></html>",
                content_type="text/html",
            )
        return self._html(404, "Not Found")

    async def _fail(self, key: str, problems: list[str]) -> web.Response:
        headers = {"X-Simulation-Problems": "; ".join(problems)[:512]}
        if self.answer_for(key) is Answer.HANG:
            # Cancelled when the client gives up (the runner cancels handlers on disconnect).
            await asyncio.sleep(self.hang_timeout)
            return self._html(504, "Gateway Time-out", headers=headers)
        return self._html(503, "Service Temporarily Unavailable", headers=headers)

    @staticmethod
    def _html(status: int, reason: str, *, headers: dict[str, str] | None = None) -> web.Response:
        return web.Response(
            status=status, text=_page(status, reason), content_type="text/html", headers=headers
        )


def make_app(storefront: Storefront) -> web.Application:
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", storefront.handle)
    return app


@contextlib.asynccontextmanager
async def serve(
    storefront: Storefront, *, host: str = "127.0.0.1", port: int = 0
) -> AsyncIterator[str]:
    """Serve ``storefront``; yields ``http://host:port`` once the socket is listening."""
    async with serving.serve_app(make_app(storefront), host=host, port=port) as url:
        yield url
