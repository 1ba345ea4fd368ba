"""The store monitor: discovery, probes, provisioning checks and the provisioner API, as
background tasks that only ever set metrics (a scrape of ``/metrics`` never waits for them).

`StoreMonitor.run` starts, as one task group:

- the informers of `remediator.engine.watching` (with a Kubernetes client and
  ``stores.enabled``), and a refresher that re-derives every phase each
  ``stores.refresh_interval``;
- the probe loop (``stores.probe.enabled``): a round probes every store with a URL, at most
  ``stores.probe.concurrency`` at once, each starting at a random offset within
  ``jitter * interval`` of the round's start; the next round starts ``interval`` after this
  one did, or when it ends if it overran (rounds never overlap);
- the provisioning check: every ``stores.check_interval``, for stores that are provisioning or
  failed only (running stores cost nothing here), list the pods, PVCs and Helm release Secrets
  of the store's namespace, at most ``stores.check_concurrency`` stores at once;
- with ``provisioner.url``: every ``stores.provisioner_interval``, ``GET /healthz`` (with the
  bearer token; an answer below 400 is up) sets ``provisioner_up``, then ``GET /api/v1/stores``
  gives each store's status, which overrides the derived phase where it is explicit. When the
  list cannot be read, the last one read stays in force.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Awaitable, Callable, Sequence

import aiohttp
import structlog

from remediator import __version__
from remediator.adapters import kubernetes, metrics, probing
from remediator.config import Settings, parse_host_port
from remediator.core import stores
from remediator.engine import watching

log = structlog.get_logger(__name__)


class ProbeLoop:
    def __init__(
        self,
        directory: watching.StoreDirectory,
        prober: probing.Prober,
        *,
        interval: float,
        jitter: float,
        concurrency: int,
        rng: random.Random | None = None,
    ) -> None:
        self._directory = directory
        self._prober = prober
        self._interval = interval
        self._spread = jitter * interval
        self._concurrency = concurrency
        self._rng = rng or random.Random()  # noqa: S311 - spreading load, not cryptography
        self.rounds = 0

    async def run(self) -> None:
        """Rounds from the moment discovery is synced (not an interval later)."""
        await self._directory.live.wait()
        loop = asyncio.get_running_loop()
        while True:
            started = loop.time()
            await self.probe_round(self._directory.targets(), spread=self._spread)
            await asyncio.sleep(max(0.0, started + self._interval - loop.time()))

    async def probe_round(
        self, targets: Sequence[watching.ProbeTarget], *, spread: float = 0.0
    ) -> None:
        """Probe each target once; at most ``concurrency`` workers, so a round of ten thousand
        stores holds a few dozen tasks, not ten thousand."""
        loop = asyncio.get_running_loop()
        offsets = [self._rng.uniform(0, spread) if spread > 0 else 0.0 for _ in targets]
        schedule = iter(sorted(zip(offsets, targets, strict=True), key=lambda pair: pair[0]))
        start = loop.time()

        async def worker() -> None:
            # One shared iterator: each worker takes the next due probe.
            for offset, target in schedule:
                delay = start + offset - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                try:
                    result = await self._prober.probe(target.url)
                except Exception:  # one store's probe is a task boundary
                    log.exception("probe_crashed", store_id=target.ref.store_id)
                    continue
                self._directory.record_probe(target, result)

        workers = min(self._concurrency, len(targets))
        async with asyncio.TaskGroup() as group:
            for _ in range(workers):
                group.create_task(worker())
        self.rounds += 1


async def check_provisioning(
    kube: kubernetes.KubeClient,
    directory: watching.StoreDirectory,
    *,
    concurrency: int,
) -> None:
    """One pass over the stores that are provisioning or failed."""
    limit = asyncio.Semaphore(concurrency)

    async def check(target: watching.DiagnosisTarget) -> None:
        namespace = target.ref.namespace
        async with limit:
            try:
                pods = await kube.list(kubernetes.PODS, namespace=namespace)
                pvcs = await kube.list(kubernetes.PERSISTENTVOLUMECLAIMS, namespace=namespace)
                helm = await kube.list(
                    kubernetes.SECRETS,
                    namespace=namespace,
                    label_selector=f"owner=helm,name={target.release}",
                )
            except kubernetes.KubeForbiddenError as e:
                hint = e.denial.explain() if e.denial is not None else None
                log.error(
                    "store_check_forbidden", store_id=target.ref.store_id, hint=hint, error=str(e)
                )
                return
            except kubernetes.KubeError as e:
                log.warning("store_check_failed", store_id=target.ref.store_id, error=str(e))
                return
        diagnosis = stores.diagnose(pods=pods, pvcs=pvcs, helm_secrets=helm, release=target.release)
        directory.record_diagnosis(target, diagnosis)

    async with asyncio.TaskGroup() as group:
        for target in directory.diagnosis_targets():
            group.create_task(check(target))


async def poll_provisioner(
    http: aiohttp.ClientSession,
    settings: Settings,
    store_metrics: metrics.StoreMetrics,
    *,
    token: str | None,
    directory: watching.StoreDirectory | None,
) -> None:
    """One health check of the provisioner API, then (when up) one read of its store list."""
    url = settings.provisioner.url
    if url is None:
        return
    headers = {"Authorization": f"Bearer {token}"} if token else None
    health = await probing.probe(
        http,
        url.rstrip("/") + "/healthz",
        time_limit=settings.provisioner.timeout,
        headers=headers,
    )
    if store_metrics.provisioner_up is not None:
        store_metrics.provisioner_up.set(1 if health.up else 0)
    if not health.up:
        log.warning(
            "provisioner_down",
            status=health.status,
            reason=health.failure.value if health.failure else None,
        )
        return
    if directory is None:
        return
    try:
        statuses = await probing.read_provisioner_statuses(
            http, url, token=token, time_limit=settings.provisioner.timeout
        )
    except probing.ProvisionerReadError as e:
        log.warning("provisioner_read_failed", error=str(e))
        return
    directory.set_provisioner_statuses(statuses)


async def every(interval: float, action: Callable[[], Awaitable[None] | None], name: str) -> None:
    """Run ``action`` now and then every ``interval`` seconds, surviving its failures."""
    while True:
        try:
            outcome = action()
            if outcome is not None:
                await outcome
        except asyncio.CancelledError:
            raise
        except Exception:  # a task boundary: log and try again next time
            log.exception("background_task_failed", task=name)
        await asyncio.sleep(interval)


class StoreMonitor:
    """Everything that produces the store metrics; ``run`` it as one background task."""

    def __init__(
        self,
        *,
        settings: Settings,
        kube: kubernetes.KubeClient | None,
        http: aiohttp.ClientSession,
        store_metrics: metrics.StoreMetrics,
        provisioner_token: str | None = None,
        clock: Callable[[], float] = time.time,
        retry_delay: float = 1.0,
        rng: random.Random | None = None,
    ) -> None:
        self._settings = settings
        self._kube = kube if settings.stores.enabled else None
        self._http = http
        self.store_metrics = store_metrics
        self._token = provisioner_token
        self._rng = rng
        self.directory = watching.StoreDirectory(settings.stores, store_metrics, clock=clock)
        self.informers: list[watching.Informer] = []
        if self._kube is not None:
            self.informers = watching.informers(
                self._kube, self.directory, settings.stores, retry_delay=retry_delay
            )
        self.probe_loop: ProbeLoop | None = None

    def forget_stores(self) -> None:
        """After ``run`` was cancelled because leadership moved: the new leader exports the
        store series now."""
        self.directory.forget_all()
        self.probe_loop = None

    async def synced(self) -> None:
        """Return once every informer has listed its collection once and the phases of what
        they found are derived (at once without a Kubernetes client)."""
        if self.informers:
            await self.directory.live.wait()

    async def _go_live(self) -> None:
        await asyncio.gather(*(i.synced.wait() for i in self.informers))
        self.directory.go_live()
        log.info("stores_synced", stores=len(self.directory))

    async def run(self) -> None:
        settings = self._settings.stores
        async with contextlib.AsyncExitStack() as stack, asyncio.TaskGroup() as group:
            if self._kube is not None:
                kube = self._kube
                for informer in self.informers:
                    group.create_task(informer.run(), name=f"informer-{informer.resource.plural}")
                group.create_task(self._go_live())
                group.create_task(
                    every(settings.refresh_interval, self.directory.refresh, "store-refresh")
                )
                group.create_task(
                    every(
                        settings.check_interval,
                        lambda: check_provisioning(
                            kube, self.directory, concurrency=settings.check_concurrency
                        ),
                        "store-checks",
                    )
                )
                if settings.probe.enabled:
                    probe = settings.probe
                    connect_to = parse_host_port(probe.connect_to) if probe.connect_to else None
                    prober = await stack.enter_async_context(
                        probing.Prober(
                            timeout=probe.timeout,
                            connect_to=connect_to,
                            concurrency=probe.concurrency,
                            user_agent=f"remediator/{__version__} (store probe)",
                        )
                    )
                    self.probe_loop = ProbeLoop(
                        self.directory,
                        prober,
                        interval=probe.interval,
                        jitter=probe.jitter,
                        concurrency=probe.concurrency,
                        rng=self._rng,
                    )
                    group.create_task(self.probe_loop.run(), name="store-probes")
            if self._settings.provisioner.url is not None:
                directory = self.directory if self._kube is not None else None
                group.create_task(
                    every(
                        settings.provisioner_interval,
                        lambda: poll_provisioner(
                            self._http,
                            self._settings,
                            self.store_metrics,
                            token=self._token,
                            directory=directory,
                        ),
                        "provisioner-poll",
                    )
                )
