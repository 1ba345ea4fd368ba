"""The simulated store platform, shared by ``remediator demo`` and the end-to-end tests::

    from remediator.simulation import platform

    async with platform.run(stores=["s1", "s2"], workdir=tmp_path) as sim:
        sim.inject("app_down", "s1")            # the store answers 503 now
        ...                                     # remediator restarts <id>-app
        await sim.wait_healthy("s1", timeout=10)

`run` starts, all on 127.0.0.1: the in-memory Kubernetes API seeded with the platform and the
stores, remediator's RBAC exactly as its manifests grant it (`access.install`), a kubeconfig for
the harness (admin) and one for remediator (its service-account token), the controllers that
make it behave like a cluster, the provisioner twin behind a bearer token (token file in
``workdir``), and one storefront server answering for every store by Host header. Everything
it starts, it stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import structlog
from aiohttp import web

from remediator.core import scope
from remediator.simulation import (
    access,
    controllers,
    faults,
    kubeapi,
    provisioner,
    serving,
    storefront,
    stores,
)

log = structlog.get_logger(__name__)

Fault = faults.Fault
"""(The platform's method ``faults()`` hides the module in its class body.)"""
EXTRA_NAMESPACES = (stores.INGRESS_NAMESPACE,)
"""Namespaces remediator must be allowed to touch beyond its defaults (`kube_namespaces`)."""


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class PlatformSettings:
    delays: controllers.ControllerSettings = dataclasses.field(
        default_factory=controllers.ControllerSettings
    )
    """How long the simulated controllers take (tests make it tiny)."""
    domain: str = stores.DOMAIN
    """Stores answer on ``<id>.<domain>``."""
    hang_timeout: float = 30.0
    """Seconds a hanging store (`storefront.Answer.HANG`) keeps a request before its 504."""
    host: str = "127.0.0.1"
    """Where all the servers listen."""


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class ApiRequest:
    """One write a client sent to the Kubernetes API (anything but GET, HEAD, OPTIONS)."""

    method: str
    path: str
    query: Mapping[str, str]
    status: int
    """The status the API answered with."""


class SimulatedPlatform:
    """A running simulated platform; made by :func:`run`."""

    def __init__(
        self,
        *,
        cluster: stores.Cluster,
        running: controllers.Controllers,
        front: storefront.Storefront,
        kube_url: str,
        kubeconfig: Path,
        remediator_access: access.RemediatorAccess,
        remediator_kubeconfig: Path,
        storefront_url: str,
        provisioner_url: str,
        provisioner_token_file: Path,
        changes: _Changes,
        kube_writes: list[ApiRequest],
    ) -> None:
        self.cluster = cluster
        self.controllers = running
        self.storefront = front
        self.kube_url = kube_url
        """Base URL of the Kubernetes API (plain HTTP; no credentials is the admin)."""
        self.kubeconfig = kubeconfig
        """A kubeconfig for `kube_url` as the admin, for kubectl and the harness."""
        self.remediator_access = remediator_access
        """remediator's service account and token: the RBAC its manifests grant, no more."""
        self.remediator_kubeconfig = remediator_kubeconfig
        """A kubeconfig for `kube_url` with remediator's token (its ``kubernetes.kubeconfig``)."""
        self.storefront_url = storefront_url
        """``http://127.0.0.1:PORT``: where every store's host name must be connected to."""
        self.provisioner_url = provisioner_url
        self.provisioner_token_file = provisioner_token_file
        self.kube_writes = kube_writes
        """Every write clients (remediator, kubectl) sent over HTTP, in order; the
        controllers' own changes go to the emulator directly and are not in it."""
        self._changes = changes

    @property
    def emulator(self) -> kubeapi.KubeEmulator:
        return self.cluster.emulator

    @property
    def twin(self) -> provisioner.ProvisionerTwin:
        return self.cluster.twin

    @property
    def domain(self) -> str:
        return self.cluster.domain

    @property
    def store_ids(self) -> list[str]:
        """Stores with a namespace, as ``kubectl get ns -l app.kubernetes.io/part-of=...``."""
        selector = f"{stores.PART_OF}={stores.PLATFORM}"
        found = [
            stores.store_id_of(ns["metadata"]["name"])
            for ns in self.emulator.list("v1", "Namespace", label_selector=selector)
        ]
        return [store_id for store_id in found if store_id is not None]

    def store_url(self, store_id: str) -> str:
        """The store's public URL, as the provisioner reports it (``http://<id>.<domain>``)."""
        return f"http://{stores.names(store_id).host(self.domain)}"

    def check_url(self, store_id: str) -> str:
        """The runbook's check URL of the store (connect it to `storefront_url`)."""
        return self.store_url(store_id) + stores.CHECK_PATH

    # --- faults ---------------------------------------------------------------------------------

    def faults(self) -> dict[str, str]:
        """Every fault that can be injected: name → description."""
        return {name: fault.description for name, fault in faults.FAULTS.items()}

    def inject(
        self,
        fault: str,
        store_id: str | None = None,
        *,
        answer: storefront.Answer = storefront.Answer.UNAVAILABLE,
    ) -> Fault:
        """Break ``store_id`` (no id for a platform fault) as ``fault`` says; while it cannot
        serve, the store's URL answers as ``answer`` says."""
        injected = faults.inject(self.cluster, fault, store_id)
        self.storefront.set_answer(store_id or storefront.PLATFORM, answer)
        log.info("fault_injected", fault=fault, store_id=store_id)
        self._changes.notify()
        return injected

    def fixed(self, fault: str, store_id: str | None = None) -> bool:
        return faults.is_fixed(self.cluster, fault, store_id)

    async def wait_fixed(
        self,
        fault: str,
        store_id: str | None = None,
        *,
        timeout: float = 10.0,  # noqa: ASYNC109 - the error says what is still wrong
    ) -> None:
        await self.wait_until(
            lambda: self.fixed(fault, store_id),
            timeout=timeout,
            what=f"fault {fault} of {store_id or 'the platform'} fixed",
            explain=lambda: self.problems(store_id) if store_id else [],
        )

    # --- health ---------------------------------------------------------------------------------

    def serving(self, store_id: str) -> bool:
        """The store's URL would answer 200 now."""
        return not self.storefront.problems(store_id)

    def problems(self, store_id: str) -> list[str]:
        """Everything wrong with the store (see `stores.store_problems`)."""
        return stores.store_problems(self.cluster, store_id)

    def healthy(self, store_id: str) -> bool:
        """Serving, every part ready, provisioned (``running``), Helm release deployed."""
        return not self.problems(store_id)

    async def wait_healthy(
        self,
        store_id: str,
        timeout: float = 10.0,  # noqa: ASYNC109 - the error says what is still wrong
    ) -> None:
        await self.wait_until(
            lambda: self.healthy(store_id),
            timeout=timeout,
            what=f"store {store_id} healthy",
            explain=lambda: self.problems(store_id),
        )

    async def wait_until(
        self,
        condition: Callable[[], bool],
        *,
        timeout: float,  # noqa: ASYNC109 - the error says what is still wrong
        what: str = "condition",
        explain: Callable[[], list[str]] = list,
    ) -> None:
        """Return once ``condition()`` holds, re-checked on every change of the simulation
        (no polling); `TimeoutError` naming what is still wrong after ``timeout`` seconds."""
        try:
            async with asyncio.timeout(timeout):
                while not condition():
                    await self._changes.next()
        except TimeoutError:
            reasons = "; ".join(explain()) or "no details"
            raise TimeoutError(f"{what}: not after {timeout:g}s ({reasons})") from None

    # --- changing the platform ------------------------------------------------------------------

    def add_store(self, store_id: str) -> None:
        """A new store, complete and healthy at once (no provisioning through the API)."""
        add_store(self.cluster, store_id)
        self._changes.notify()

    # --- remediator's config --------------------------------------------------------------------

    def kube_config(self) -> dict[str, Any]:
        """The ``kubernetes`` settings group pointing remediator at the emulator, as its
        service account: the emulator enforces the RBAC of remediator's manifests."""
        return {"kubeconfig": str(self.remediator_kubeconfig)}

    def provisioner_config(self) -> dict[str, Any]:
        """The ``provisioner`` settings group pointing remediator at the twin."""
        return {"url": self.provisioner_url, "token_file": str(self.provisioner_token_file)}

    def kube_namespaces(self) -> list[str]:
        """``safety.namespaces``: remediator's defaults plus ingress-nginx, whose controller
        the ``ingress_controller_down`` fix restarts."""
        return [*scope.DEFAULT_NAMESPACES, *EXTRA_NAMESPACES]

    def stores_config(self) -> dict[str, Any]:
        """The ``stores`` settings group: probe every store over plain HTTP at its own host
        name, connected to the storefront (the simulated ingress has no TLS)."""
        address = self.storefront_url.removeprefix("http://")
        return {
            "probe": {
                "url_template": f"http://{{store_id}}.{self.domain}",
                "path": stores.CHECK_PATH,
                "connect_to": address,
            }
        }

    def remediator_config(self) -> dict[str, Any]:
        """A config mapping fragment (as in the YAML file) for remediator to run against this
        platform: Kubernetes, the provisioner, store discovery and probing, and the namespaces
        its actions may touch. Merge it into a config; timings are the caller's to choose."""
        return {
            "kubernetes": self.kube_config(),
            "provisioner": self.provisioner_config(),
            "stores": self.stores_config(),
            "safety": {"namespaces": self.kube_namespaces()},
        }


class _Changes:
    """Wakes waiters on every change: emulator events, controller work, provisioner requests."""

    def __init__(self) -> None:
        self._event = asyncio.Event()

    def notify(self) -> None:
        self._event.set()
        self._event = asyncio.Event()

    async def next(self) -> None:
        await self._event.wait()


def add_store(cluster: stores.Cluster, store_id: str) -> None:
    """A store known to the provisioner as ``running``, installed and settled."""
    cluster.twin.add_store(store_id, status="running")
    controllers.install_store(cluster, store_id, settled=True)


def seed(cluster: stores.Cluster, store_ids: Sequence[str]) -> None:
    """The platform's own namespaces and the given stores, healthy, before anything runs."""
    cluster.emulator.seed(stores.platform_manifests())
    for ns in (stores.PLATFORM_NAMESPACE, stores.INGRESS_NAMESPACE):
        controllers.converge(cluster.emulator, ns)
    for store_id in store_ids:
        add_store(cluster, store_id)


def run(
    *,
    stores: Sequence[str] = ("s1",),
    workdir: str | os.PathLike[str],
    settings: PlatformSettings | None = None,
) -> contextlib.AbstractAsyncContextManager[SimulatedPlatform]:
    """Start the simulated platform with ``stores`` (ids) healthy; files go to ``workdir``."""
    return _running(tuple(stores), Path(workdir), settings or PlatformSettings())


def _write_token(workdir: Path, token: str) -> Path:
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / "provisioner-token"
    path.touch(mode=0o600)
    path.write_text(token + "\n")
    return path


@contextlib.asynccontextmanager
async def _running(
    store_ids: tuple[str, ...], workdir: Path, settings: PlatformSettings
) -> AsyncIterator[SimulatedPlatform]:
    token = secrets.token_urlsafe(24)
    emulator = kubeapi.KubeEmulator(namespaces=("default", "kube-system", "kube-public"))
    twin = provisioner.ProvisionerTwin(token=token, domain=settings.domain)
    cluster = stores.Cluster(emulator=emulator, twin=twin, domain=settings.domain)
    seed(cluster, store_ids)
    remediator_access = access.install(emulator)
    controllers.ProvisionerHooks(cluster).attach()

    token_file = _write_token(workdir, token)
    changes = _Changes()
    front = storefront.Storefront(
        emulator, domain=settings.domain, hang_timeout=settings.hang_timeout
    )
    running = controllers.Controllers(cluster, settings.delays, on_change=changes.notify)

    kube_writes: list[ApiRequest] = []
    async with contextlib.AsyncExitStack() as stack:
        kube_url = await stack.enter_async_context(
            _serve_kube(emulator, kube_writes, host=settings.host)
        )
        kubeconfig = kubeapi.write_kubeconfig(workdir / "kubeconfig", kube_url)
        remediator_kubeconfig = remediator_access.kubeconfig(
            workdir / "remediator-kubeconfig", kube_url
        )
        provisioner_url = await stack.enter_async_context(
            _serve_twin(cluster, changes, host=settings.host)
        )
        storefront_url = await stack.enter_async_context(
            storefront.serve(front, host=settings.host)
        )
        await stack.enter_async_context(_notifying(emulator, changes))
        await stack.enter_async_context(running)
        log.info(
            "platform_started",
            stores=len(store_ids),
            kube_url=kube_url,
            storefront_url=storefront_url,
            provisioner_url=provisioner_url,
        )
        yield SimulatedPlatform(
            cluster=cluster,
            running=running,
            front=front,
            kube_url=kube_url,
            kubeconfig=kubeconfig,
            remediator_access=remediator_access,
            remediator_kubeconfig=remediator_kubeconfig,
            storefront_url=storefront_url,
            provisioner_url=provisioner_url,
            provisioner_token_file=token_file,
            changes=changes,
            kube_writes=kube_writes,
        )


@contextlib.asynccontextmanager
async def _notifying(emulator: kubeapi.KubeEmulator, changes: _Changes) -> AsyncIterator[None]:
    """Every emulator event wakes the waiters of `SimulatedPlatform.wait_until`."""

    async def forward(subscription: kubeapi.Subscription) -> None:
        async for _ in subscription:
            changes.notify()

    subscription = emulator.subscribe()
    task = asyncio.get_running_loop().create_task(forward(subscription))
    try:
        yield
    finally:
        subscription.close()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


_Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
_READS = frozenset({"GET", "HEAD", "OPTIONS"})


@contextlib.asynccontextmanager
async def _serve_kube(
    emulator: kubeapi.KubeEmulator, writes: list[ApiRequest], *, host: str
) -> AsyncIterator[str]:
    """`kubeapi.make_app`, recording every write it answers (its status too: a refused write
    was still attempted)."""

    @web.middleware
    async def recording(request: web.Request, handler: _Handler) -> web.StreamResponse:
        if request.method in _READS:
            return await handler(request)
        response = await handler(request)
        writes.append(
            ApiRequest(
                method=request.method,
                path=request.path,
                query=dict(request.query),
                status=response.status,
            )
        )
        return response

    app = kubeapi.make_app(emulator)
    app.middlewares.insert(0, recording)
    async with serving.serve_app(app, host=host, shutdown_timeout=5.0) as url:
        yield url


@contextlib.asynccontextmanager
async def _serve_twin(
    cluster: stores.Cluster, changes: _Changes, *, host: str
) -> AsyncIterator[str]:
    """The twin behind the provisioner Deployment: without a ready pod it answers 503 (what
    the ingress answers for a Service without endpoints); statuses reach the namespaces."""

    @web.middleware
    async def through_the_deployment(request: web.Request, handler: _Handler) -> web.StreamResponse:
        if not stores.provisioner_up(cluster.emulator):
            return web.json_response(
                {"error": "unavailable", "message": "no ready provisioner pod"}, status=503
            )
        try:
            return await handler(request)
        finally:
            for store_id in list(cluster.twin.stores):
                controllers.reflect_status(cluster, store_id)
            changes.notify()

    app = provisioner.make_app(cluster.twin)
    app.middlewares.insert(0, through_the_deployment)
    async with serving.serve_app(app, host=host) as url:
        yield url
