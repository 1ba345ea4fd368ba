"""Wiring and lifecycle: build every part once, start, serve, reload, and shut down cleanly.

Start-up order guarantees that nothing acknowledged is lost: the store opens and recovers
(runs interrupted by a crash are marked, queued runs are re-enqueued) before the listener
accepts a single webhook. Shutdown reverses it: stop accepting, drain within the grace period,
record what was interrupted, close the store.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import random
import signal
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import structlog
from aiohttp import web
from prometheus_client import CollectorRegistry

from remediator import __version__
from remediator.adapters import (
    auditing,
    kubernetes,
    loading,
    logsink,
    metrics,
    prometheus,
    state,
)
from remediator.config import LoggingSettings, Settings, read_token
from remediator.core.errors import ConfigError, Problem
from remediator.core.runs import AuditEvent, AuditKind, AuditRecord
from remediator.engine import (
    admitting,
    envelope,
    executing,
    leading,
    leasing,
    monitoring,
    reloading,
    scheduling,
    watching,
)
from remediator.engine.actions import registry
from remediator.web import intake
from remediator.web.services import Services

log = structlog.get_logger(__name__)


def configure_logging(settings: LoggingSettings) -> None:
    level = getattr(logging, settings.level.upper())
    renderer: structlog.typing.Processor = (
        logsink.JsonLineRenderer()
        if settings.format == "json"
        else structlog.dev.ConsoleRenderer(colors=False)
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            logsink.IsoTimeStamper(),
            structlog.processors.StackInfoRenderer(),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        # One write per loop iteration: per-line writes were a tenth of the daemon's time
        # under load (bench/README.md).
        logger_factory=logsink.BatchingLoggerFactory(sys.stderr),
        cache_logger_on_first_use=True,
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class Tokens:
    webhook: str | None
    api: str | None
    viewer: str | None = None
    """The console's read-only token, if configured."""

    @property
    def secrets(self) -> tuple[str, ...]:
        return tuple(t for t in {self.webhook, self.api, self.viewer} if t)


def resolve_tokens(settings: Settings) -> Tokens:
    auth = settings.auth
    webhook = read_token(auth.token_file, auth.token_env)
    api = read_token(auth.api_token_file, auth.api_token_env) or webhook
    if webhook is None and not auth.insecure_no_auth:
        raise ConfigError(
            [
                Problem(
                    source="<config>",
                    path="auth",
                    message=f"no webhook token: set auth.token_file or ${auth.token_env} "
                    "(or --insecure-no-auth for local experiments only)",
                )
            ]
        )
    if auth.insecure_no_auth:
        return Tokens(webhook=None, api=None)
    viewer = read_token(auth.viewer_token_file, auth.viewer_token_env)
    return Tokens(webhook=webhook, api=api, viewer=viewer)


ExecuteRun = Callable[[str], Awaitable[object]]


@dataclass(frozen=True, slots=True, kw_only=True)
class Engine:
    """The daemon's parts between HTTP and the store, wired together; see :func:`build_engine`."""

    approvals: envelope.Approvals
    escalator: envelope.Escalator
    executor: executing.Executor
    scheduler: scheduling.Scheduler
    admitter: admitting.Admitter
    reloader: reloading.Reloader
    keeper: leasing.LeaseKeeper
    services: Services


def build_engine(
    *,
    settings: Settings,
    actions: registry.ActionRegistry,
    library: reloading.PlaybookLibrary,
    metrics: metrics.Metrics,
    store: state.StateStore,
    resources: registry.Resources,
    tokens: Tokens,
    ready: Callable[[], bool],
    clock: Callable[[], float] = time.time,
    jitter: Callable[[], float] = random.random,
    wrap_execute: Callable[[ExecuteRun], ExecuteRun] = lambda execute: execute,
    known_targets: Callable[[], int | None] | None = None,
    store_directory: watching.StoreDirectory | None = None,
    exclusive: bool = True,
    replica_id: str | None = None,
) -> Engine:
    """The one place the engine is assembled: the daemon and the test rigs both use it.

    ``wrap_execute`` lets a test hold runs between the scheduler and the executor.
    ``exclusive``: the store is this replica's alone (SQLite); ``replica_id`` names it.
    """
    metric_set = metrics
    approvals = envelope.Approvals(store)
    escalator = envelope.Escalator(
        resources=resources, store=store, metrics=metric_set, clock=clock
    )
    executor = executing.Executor(
        registry=actions,
        store=store,
        resources=resources,
        metrics=metric_set,
        playbooks=library,
        clock=clock,
        jitter=jitter,
        approvals=approvals,
        escalator=escalator,
        # The keeper is built below: these are looked up when a run starts, not now.
        owner=lambda: keeper.replica_id,
        on_store_failure=lambda run_id: keeper.store_failed(run_id),
    )

    def sized_by() -> int | None:
        # Configured, else what discovery knows: here if this replica is the leader, else
        # what the leader reported with its lease; None until someone knows (no percentage).
        if settings.safety.known_targets is not None:
            return settings.safety.known_targets
        local = known_targets() if known_targets is not None else None
        return local if local is not None else keeper.fleet_known_targets

    def playbook_limit(name: str) -> int | None:
        playbook = library().by_name(name)
        return playbook.safety.max_concurrent if playbook is not None else None

    scheduler = scheduling.Scheduler(
        capacity=settings.engine.queue_size,
        concurrency=settings.engine.concurrency,
        execute=wrap_execute(executor.execute),
        playbook_limit=playbook_limit,
    )
    metric_set.queue_depth.set_function(lambda: scheduler.depth)
    metric_set.runs_active.set_function(lambda: scheduler.active)
    admitter = admitting.Admitter(
        store=store,
        scheduler=scheduler,
        metrics=metric_set,
        playbooks=library,
        only_highest=settings.playbooks.match == "first",
        dry_run=settings.engine.dry_run,
        clock=clock,
        known_targets=sized_by,
        escalator=escalator,
        owner=lambda: keeper.replica_id,
    )
    keeper = leasing.LeaseKeeper(
        store=store,
        scheduler=scheduler,
        executor=executor,
        escalator=escalator,
        playbooks=library,
        actions=actions,
        metrics=metric_set,
        settings=settings.ha,
        exclusive=exclusive,
        replica_id=replica_id,
        clock=clock,
        discovered=known_targets or (lambda: None),
    )
    reloader = reloading.Reloader(
        library=library,
        paths=[settings.playbooks.directory],
        catalog=actions,
        store=store,
        metrics=metric_set,
        clock=clock,
        defaults=settings.safety.defaults,
    )
    services = Services(
        settings=settings,
        admitter=admitter,
        store=store,
        metrics=metric_set,
        webhook_token=tokens.webhook,
        api_token=tokens.api,
        ready=ready,
        approvals=approvals,
        refresh_safety=lambda: envelope.refresh_gauges(store, metric_set, approvals, now=clock()),
        viewer_token=tokens.viewer,
        store_directory=store_directory,
    )
    return Engine(
        approvals=approvals,
        escalator=escalator,
        executor=executor,
        scheduler=scheduler,
        admitter=admitter,
        reloader=reloader,
        keeper=keeper,
        services=services,
    )


@contextlib.asynccontextmanager
async def open_clients(
    settings: Settings,
    *,
    on_forbidden: kubernetes.ForbiddenHook | None = None,
) -> AsyncIterator[tuple[aiohttp.ClientSession, kubernetes.KubeClient | None]]:
    """The HTTP session and the cluster client (None without one), closed on exit."""
    async with contextlib.AsyncExitStack() as clients:
        session = await clients.enter_async_context(
            aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=settings.http.timeout),
                headers={"User-Agent": f"remediator/{__version__}"},
            )
        )
        kube = None
        if settings.kubernetes.enabled:
            kube = await clients.enter_async_context(
                kubernetes.connect(settings.kubernetes, on_forbidden=on_forbidden)
            )
        yield session, kube


def build_resources(
    settings: Settings,
    tokens: Tokens,
    session: aiohttp.ClientSession,
    kube: kubernetes.KubeClient | None,
) -> registry.Resources:
    """What actions reach the world through (and the secrets they must never show)."""
    prom = None
    if settings.prometheus.url:
        prom = prometheus.PrometheusClient(
            session, settings.prometheus.url, timeout=settings.prometheus.timeout
        )
    provisioner_token = read_token(settings.provisioner.token_file, settings.provisioner.token_env)
    return registry.Resources(
        settings=settings,
        http=session,
        prometheus=prom,
        kube=kube,
        provisioner_token=provisioner_token,
        secrets=(
            *tokens.secrets,
            *_notify_tokens(settings),
            *((provisioner_token,) if provisioner_token else ()),
        ),
    )


@dataclass(kw_only=True)
class Daemon:
    """A running remediator; ``serve`` builds one, tests can too."""

    settings: Settings
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    """Set once the listener accepts requests (kopf's ready_flag)."""
    stopping: asyncio.Event = field(default_factory=asyncio.Event)
    url: str = ""

    async def run(self) -> int:
        settings = self.settings
        tokens = resolve_tokens(settings)
        if settings.auth.insecure_no_auth:
            log.warning(
                "webhook_auth_disabled",
                message="INSECURE: webhook and API accept unauthenticated requests",
            )
        actions = registry.builtin()
        paths = [settings.playbooks.directory]
        playbooks = await asyncio.to_thread(
            functools.partial(
                loading.load_playbooks, paths, actions, defaults=settings.safety.defaults
            )
        )
        library = reloading.PlaybookLibrary(playbooks)
        metric_set = metrics.Metrics(CollectorRegistry())
        metric_set.playbooks_loaded.set(len(playbooks.playbooks))
        metric_set.know_playbooks(p.name for p in playbooks.playbooks)

        def audited(record: AuditRecord) -> None:
            auditing.log_record(record)
            metric_set.audit_head.set(record.seq)

        store = state.open_store(settings.state, on_append=audited)
        await store.open()
        try:
            async with open_clients(settings, on_forbidden=metric_set.count_permission_denied) as (
                session,
                kube,
            ):
                return await self._serve(
                    settings, tokens, actions, library, metric_set, store, session, kube
                )
        finally:
            await store.close()

    async def _serve(
        self,
        settings: Settings,
        tokens: Tokens,
        actions: registry.ActionRegistry,
        library: reloading.PlaybookLibrary,
        metric_set: metrics.Metrics,
        store: state.SqlStateStore,
        session: aiohttp.ClientSession,
        kube: kubernetes.KubeClient | None,
    ) -> int:
        resources = build_resources(settings, tokens, session, kube)
        provisioner_token = resources.provisioner_token
        monitor = _store_monitor(settings, kube, session, metric_set, provisioner_token)

        def known_targets() -> int | None:
            # What this replica's discovery has seen: None on a follower, or before it synced.
            if monitor is None or not monitor.directory.live.is_set():
                return None
            return len(monitor.directory) or None

        engine = build_engine(
            known_targets=known_targets,
            store_directory=monitor.directory if monitor is not None else None,
            settings=settings,
            actions=actions,
            library=library,
            metrics=metric_set,
            store=store,
            resources=resources,
            tokens=tokens,
            ready=lambda: not self.stopping.is_set(),
            exclusive=isinstance(store, state.SqliteStateStore),
        )
        scheduler, services = engine.scheduler, engine.services
        approvals, escalator, reloader = engine.approvals, engine.escalator, engine.reloader
        keeper = engine.keeper

        now = time.time()
        # Before the listener opens: runs a crashed predecessor (or, on PostgreSQL, a replica
        # whose lease expired) left behind are queued again or taken over.
        adopted = await keeper.start()
        queued, interrupted = adopted.queued, adopted.taken_over
        await store.append_audit(
            [
                reloading.loaded_event(library(), trigger="startup"),
                AuditEvent(
                    kind=AuditKind.DAEMON_STARTED,
                    outcome="started",
                    details={
                        "version": __version__,
                        "dry_run": settings.engine.dry_run,
                        "recovered_queued": len(queued),
                        "taken_over": len(interrupted),
                        "replica": keeper.replica_id,
                        "state": store.name,
                    },
                ),
            ],
            now=now,
        )

        await services.refresh_safety()
        runner = web.AppRunner(
            intake.make_app(services),
            access_log=None,
            shutdown_timeout=settings.engine.grace_period,
        )
        await runner.setup()
        site = web.TCPSite(runner, settings.server.host, settings.server.port)
        await site.start()
        self.url = _bound_url(
            runner, fallback=f"http://{settings.server.host}:{settings.server.port}"
        )
        singletons: list[tuple[str, leading.TaskFactory]] = []
        if monitor is not None:
            singletons.append(("store-monitor", monitor.run))
        leadership = leading.Leadership(
            _elector(settings, store, kube, keeper.replica_id),
            singletons=singletons,
            interval=settings.ha.renew_interval,
            store=store,
            metrics=metric_set,
            replica=lambda: keeper.replica_id,
            on_lost=monitor.forget_stores if monitor is not None else lambda: None,
        )
        if monitor is not None:
            metric_set.registry.register(
                metrics.WhileLeading(monitor.store_metrics.registry, lambda: leadership.leading)
            )
        background = [
            asyncio.create_task(
                reloader.watch(settings.playbooks.watch_interval), name="playbook-watcher"
            ),
            # On every replica: the safety gauges read the shared state, so any replica's
            # /metrics tells the truth (expiring a breaker twice is a no-op under the lock).
            asyncio.create_task(
                envelope.watch_gauges(
                    store, metric_set, approvals, interval=settings.safety.status_interval
                ),
                name="safety-gauges",
            ),
            asyncio.create_task(keeper.run(), name="lease-keeper"),
            asyncio.create_task(leadership.run(), name="leadership"),
        ]
        loop = asyncio.get_running_loop()
        with _signals(loop, self.stopping, reloader):
            log.info(
                "daemon_listening",
                url=self.url,
                playbooks=len(library().playbooks),
                recovered_queued=len(queued),
                taken_over=len(interrupted),
                replica=keeper.replica_id,
            )
            self.ready.set()
            await self.stopping.wait()
        log.info("daemon_stopping", grace_period=settings.engine.grace_period)
        for task in background:
            task.cancel()
        await asyncio.gather(*background, return_exceptions=True)
        still_queued = await scheduler.drain(settings.engine.grace_period)
        await keeper.stop()
        await escalator.drain()
        await runner.cleanup()
        await store.append_audit(
            [
                AuditEvent(
                    kind=AuditKind.DAEMON_STOPPED,
                    outcome="stopped",
                    details={"queued_for_next_start": len(still_queued)},
                )
            ],
            now=time.time(),
        )
        return 0


def _elector(
    settings: Settings,
    store: state.SqlStateStore,
    kube: kubernetes.KubeClient | None,
    identity: str,
) -> leading.Elector:
    """``ha.leader_election`` made concrete; see :mod:`remediator.engine.leading`."""
    choice = settings.ha.leader_election
    shared = isinstance(store, state.PostgresStateStore)
    if choice == "none" or (choice == "auto" and not shared):
        return leading.SoleElector()
    if choice == "kubernetes" or (choice == "auto" and kube is not None):
        if kube is None:
            raise ConfigError(
                [
                    Problem(
                        source="<config>",
                        path="ha.leader_election",
                        message="kubernetes needs kubernetes.enabled and a cluster",
                    )
                ]
            )
        return leading.LeaseElector(
            kube,
            namespace=_lease_namespace(settings),
            lease=settings.ha.lease_name,
            identity=identity,
            duration=settings.ha.lease_duration,
        )
    if not shared:
        raise ConfigError(
            [
                Problem(
                    source="<config>",
                    path="ha.leader_election",
                    message="postgresql needs state.path to be a postgresql:// URL",
                )
            ]
        )
    assert isinstance(store, state.PostgresStateStore)  # noqa: S101 - shared says so
    return store.leader_elector()


SERVICE_ACCOUNT_NAMESPACE = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"


def _lease_namespace(settings: Settings) -> str:
    if settings.ha.lease_namespace:
        return settings.ha.lease_namespace
    with contextlib.suppress(OSError):
        return Path(SERVICE_ACCOUNT_NAMESPACE).read_text(encoding="utf-8").strip()
    return os.environ.get("POD_NAMESPACE", "default")


def _store_monitor(
    settings: Settings,
    kube: kubernetes.KubeClient | None,
    session: aiohttp.ClientSession,
    metric_set: metrics.Metrics,
    provisioner_token: str | None,
) -> monitoring.StoreMonitor | None:
    """Store discovery and probes (with a cluster), the provisioner's health (with its URL)."""
    discovering = settings.stores.enabled and kube is not None
    if not discovering and settings.provisioner.url is None:
        return None
    return monitoring.StoreMonitor(
        settings=settings,
        kube=kube,
        http=session,
        store_metrics=metrics.StoreMetrics(
            CollectorRegistry(), provisioner=settings.provisioner.url is not None
        ),
        provisioner_token=provisioner_token,
    )


def _notify_tokens(settings: Settings) -> tuple[str, ...]:
    """Escalation receivers' tokens, so they are masked wherever they could surface."""
    found = []
    for target in settings.notify.targets.values():
        if target.token_env and (token := os.environ.get(target.token_env)):
            found.append(token)
    return tuple(found)


def _bound_url(runner: web.AppRunner, *, fallback: str) -> str:
    """The real address, which differs from the config when it asked for port 0."""
    for address in runner.addresses:
        host, port = address[:2]
        return f"http://{host}:{port}"
    return fallback


@contextlib.contextmanager
def _signals(
    loop: asyncio.AbstractEventLoop, stopping: asyncio.Event, reloader: reloading.Reloader
) -> Iterator[None]:
    reloads: set[asyncio.Task[bool]] = set()

    def reload() -> None:
        task = loop.create_task(reloader.reload(trigger="sighup"))
        reloads.add(task)
        task.add_done_callback(reloads.discard)

    handled = []
    with contextlib.suppress(NotImplementedError, RuntimeError):  # not the main thread
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stopping.set)
            handled.append(sig)
        loop.add_signal_handler(signal.SIGHUP, reload)
        handled.append(signal.SIGHUP)
    try:
        yield
    finally:
        for sig in handled:
            loop.remove_signal_handler(sig)


async def serve(settings: Settings) -> int:
    return await Daemon(settings=settings).run()
