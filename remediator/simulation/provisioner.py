"""A twin of the store provisioner API, over real HTTP, for tests and the demo.

It keeps stores in memory and speaks the API the runbook uses::

    GET    /healthz                          {"status": "ok"} (what remediator's health probe reads)
    GET    /api/v1/stores                    {"items": [store, ...]}
    POST   /api/v1/stores                    {"id": "s1"} -> 201, status "provisioning"
    GET    /api/v1/stores/<id>               store, or 404
    PATCH  /api/v1/stores/<id>               {"status": "running"} -> store
    DELETE /api/v1/stores/<id>               store (status "deleting"), then it is gone
    POST   /api/v1/stores/<id>/reprovision   202, store with status "provisioning"

Every request needs ``Authorization: Bearer <token>`` (401 without); errors are JSON bodies
``{"error": code, "message": text}``. The simulated platform reacts through async hooks
(``on_create``, ``on_reprovision``, ``on_delete``), awaited before the answer is sent, so when
a client has its answer the platform has already acted. Tests steer failures with
:meth:`ProvisionerTwin.fail_next` and :meth:`ProvisionerTwin.delay` and assert on
:attr:`ProvisionerTwin.requests`, which records every request but none of its headers.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime
import hmac
import itertools
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Literal, get_args

import structlog
from aiohttp import web

from remediator.core import scope
from remediator.simulation import serving

log = structlog.get_logger(__name__)

StoreStatus = Literal["provisioning", "running", "failed", "deleting"]
STATUSES: frozenset[str] = frozenset(get_args(StoreStatus))


@dataclass(slots=True, kw_only=True)
class Store:
    """One store's record, as the API returns it."""

    id: str
    """A DNS-1123 label; the store's namespace is ``store-<id>``."""
    status: StoreStatus
    namespace: str
    url: str
    """Where shoppers reach the store."""
    created_at: str
    """ISO 8601, UTC."""

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True, slots=True, kw_only=True)
class RecordedRequest:
    """One request as the twin saw it; headers are left out, since they carry the token."""

    method: str
    path: str
    body: Any
    """Parsed JSON, else the text, else None for an empty body."""
    authorized: bool


StoreHook = Callable[[Store], Awaitable[None]]


class TwinError(Exception):
    """An API error answer: its HTTP status, a machine-readable code and a message."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


class ProvisionerTwin:
    """The provisioner's state, its hooks and its injected faults; serve it with :func:`serve`."""

    def __init__(
        self,
        *,
        token: str,
        domain: str = "127.0.0.1.nip.io",
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.token = token
        self.domain = domain
        self.stores: dict[str, Store] = {}
        self.requests: list[RecordedRequest] = []
        self.on_create: StoreHook | None = None
        """Awaited after a store is created (status ``provisioning``)."""
        self.on_reprovision: StoreHook | None = None
        """Awaited after a store is set back to ``provisioning`` by ``…/reprovision``."""
        self.on_delete: StoreHook | None = None
        """Awaited while a store is ``deleting``; it is removed when the hook returns."""
        self._clock = clock
        self._ids = itertools.count(1)
        self._failures: list[int] = []
        self._delay = 0.0

    # --- for tests and the simulated platform ------------------------------------------------

    def add_store(self, store_id: str, *, status: StoreStatus = "running") -> Store:
        """Seed a store directly: no request is recorded and no hook runs."""
        if not scope.DNS1123_LABEL.match(store_id):
            raise ValueError(f"store id {store_id!r} is not a DNS-1123 label")
        store = Store(
            id=store_id,
            status=status,
            namespace=f"store-{store_id}",
            url=f"http://{store_id}.{self.domain}",
            created_at=self._now(),
        )
        self.stores[store_id] = store
        return store

    def set_status(self, store_id: str, status: StoreStatus) -> Store:
        """Change a store's status, as the real provisioner does when provisioning ends."""
        store = self.stores[store_id]
        store.status = status
        return store

    def fail_next(self, n: int, *, status: int = 503) -> None:
        """Answer the next ``n`` requests with ``status`` (after recording them)."""
        self._failures.extend([status] * n)

    def delay(self, seconds: float) -> None:
        """Hold every following request this long before answering; 0 turns it off."""
        self._delay = seconds

    def requests_for(self, method: str, path: str) -> list[RecordedRequest]:
        return [r for r in self.requests if (r.method, r.path) == (method, path)]

    # --- the API's behaviour -----------------------------------------------------------------

    def _now(self) -> str:
        moment = datetime.datetime.fromtimestamp(self._clock(), tz=datetime.UTC)
        return moment.isoformat(timespec="seconds").replace("+00:00", "Z")

    def _authorized(self, header: str | None) -> bool:
        expected = f"Bearer {self.token}".encode()
        return header is not None and hmac.compare_digest(header.encode(), expected)

    def _get(self, store_id: str) -> Store:
        store = self.stores.get(store_id)
        if store is None:
            raise TwinError(404, "not_found", f"store {store_id!r} not found")
        return store

    async def _create(self, body: Any) -> Store:
        if body is None:
            body = {}
        if not isinstance(body, dict) or set(body) - {"id"}:
            raise TwinError(400, "invalid_request", "body must be a JSON object with only 'id'")
        store_id = body.get("id")
        if store_id is None:
            store_id = next(f"s{n}" for n in self._ids if f"s{n}" not in self.stores)
        if not isinstance(store_id, str) or not scope.DNS1123_LABEL.match(store_id):
            raise TwinError(400, "invalid_request", "id must be a DNS-1123 label")
        if store_id in self.stores:
            raise TwinError(409, "conflict", f"store {store_id!r} already exists")
        store = self.add_store(store_id, status="provisioning")
        await self._run_hook(self.on_create, store, failed_status="failed")
        return store

    def _patch(self, store_id: str, body: Any) -> Store:
        store = self._get(store_id)
        if not isinstance(body, dict) or set(body) != {"status"}:
            raise TwinError(400, "invalid_request", "body must be a JSON object with only 'status'")
        status = body["status"]
        if status not in STATUSES:
            allowed = ", ".join(sorted(STATUSES))
            raise TwinError(400, "invalid_request", f"status must be one of {allowed}")
        store.status = status
        return store

    async def _delete(self, store_id: str) -> Store:
        store = self._get(store_id)
        store.status = "deleting"
        # A failing hook leaves the store "deleting", like a deletion stuck on a finalizer.
        await self._run_hook(self.on_delete, store, failed_status="deleting")
        self.stores.pop(store_id, None)
        return store

    async def _reprovision(self, store_id: str) -> Store:
        store = self._get(store_id)
        if store.status == "deleting":
            raise TwinError(409, "conflict", f"store {store_id!r} is being deleted")
        store.status = "provisioning"
        await self._run_hook(self.on_reprovision, store, failed_status="failed")
        return store

    async def _run_hook(
        self, hook: StoreHook | None, store: Store, *, failed_status: StoreStatus
    ) -> None:
        if hook is None:
            return
        try:
            await hook(store)
        except Exception as e:  # the platform's failure is the API's 500, not a crashed twin
            log.warning("provisioner_hook_failed", store_id=store.id, error=repr(e))
            store.status = failed_status
            raise TwinError(500, "internal", f"store {store.id!r}: platform error") from e


TWIN = web.AppKey("twin", ProvisionerTwin)


def make_app(twin: ProvisionerTwin) -> web.Application:
    app = web.Application(middlewares=[_front])
    app[TWIN] = twin
    router = app.router
    router.add_get("/healthz", _healthz)
    router.add_get("/api/v1/stores", _list)
    router.add_post("/api/v1/stores", _create)
    router.add_get("/api/v1/stores/{id}", _get)
    router.add_patch("/api/v1/stores/{id}", _patch)
    router.add_delete("/api/v1/stores/{id}", _delete)
    router.add_post("/api/v1/stores/{id}/reprovision", _reprovision)
    return app


@contextlib.asynccontextmanager
async def serve(
    twin: ProvisionerTwin, *, host: str = "127.0.0.1", port: int = 0
) -> AsyncIterator[str]:
    """Serve ``twin`` over HTTP; yields the base URL once the socket is listening."""
    async with serving.serve_app(make_app(twin), host=host, port=port, shutdown_timeout=1.0) as url:
        yield url


@web.middleware
async def _front(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    twin = request.app[TWIN]
    authorized = twin._authorized(request.headers.get("Authorization"))
    twin.requests.append(
        RecordedRequest(
            method=request.method,
            path=request.path,
            body=_parse(await request.read()),
            authorized=authorized,
        )
    )
    if twin._delay > 0:
        await asyncio.sleep(twin._delay)
    if twin._failures:
        status = twin._failures.pop(0)
        return _error(status, "injected", f"injected failure (HTTP {status})")
    if not authorized:
        response = _error(401, "unauthorized", "a valid bearer token is required")
        response.headers["WWW-Authenticate"] = "Bearer"
        return response
    try:
        return await handler(request)
    except TwinError as e:
        return _error(e.status, e.code, e.message)
    except web.HTTPException as e:  # unknown paths and methods, as JSON like every other error
        return _error(e.status, e.reason.lower().replace(" ", "_"), e.reason)


def _parse(raw: bytes) -> Any:
    if not raw:
        return None
    text = raw.decode("utf-8", errors="replace")
    try:
        return json.loads(text)
    except ValueError:
        return text


def _error(status: int, code: str, message: str) -> web.Response:
    return web.json_response({"error": code, "message": message}, status=status)


async def _body(request: web.Request) -> Any:
    body = _parse(await request.read())
    if isinstance(body, str):
        raise TwinError(400, "invalid_request", "body must be JSON")
    return body


async def _healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def _list(request: web.Request) -> web.Response:
    stores = request.app[TWIN].stores
    return web.json_response({"items": [stores[k].to_json() for k in sorted(stores)]})


async def _create(request: web.Request) -> web.Response:
    store = await request.app[TWIN]._create(await _body(request))
    return web.json_response(store.to_json(), status=201)


async def _get(request: web.Request) -> web.Response:
    return web.json_response(request.app[TWIN]._get(request.match_info["id"]).to_json())


async def _patch(request: web.Request) -> web.Response:
    store = request.app[TWIN]._patch(request.match_info["id"], await _body(request))
    return web.json_response(store.to_json())


async def _delete(request: web.Request) -> web.Response:
    store = await request.app[TWIN]._delete(request.match_info["id"])
    return web.json_response(store.to_json())


async def _reprovision(request: web.Request) -> web.Response:
    store = await request.app[TWIN]._reprovision(request.match_info["id"])
    return web.json_response(store.to_json(), status=202)
