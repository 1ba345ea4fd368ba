"""Store discovery, phases, probes and the provisioner against the emulator and the twin.

The store monitor runs as in the daemon, against the Kubernetes API emulator over HTTP and a
real store server; time-dependent rules use an injected clock (which the emulator's timestamps
follow too), and the periodic parts (refresh, provisioning check, provisioner poll) are called
directly so that no test waits for an interval. Conditions are awaited through
``StoreDirectory.wait_until`` or the store server's events, never by sleeping.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.metrics import MetricWrapperBase

from remediator import config, running
from remediator.adapters import kubernetes, metrics
from remediator.config import ProbeSettings, ProvisionerSettings, Settings, StoresSettings
from remediator.core.stores import FailureReason, Phase
from remediator.engine import monitoring
from remediator.simulation import kubeapi, provisioner
from tests.alerts.test_rules import METRIC_LABELS
from tests.engine.kube import objects
from tests.store_fixtures import StoreServer, closed_port, serve_stores

WAIT = 10.0
T0 = 1_780_000_000.0
TOKEN = "twin-token-51c0"


class Clock:
    """Wall-clock time that only moves when a test moves it."""

    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def datetime(self) -> datetime:
        return datetime.fromtimestamp(self.now, UTC)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def emulator(clock: Clock) -> kubeapi.KubeEmulator:
    return kubeapi.KubeEmulator(history_size=8, clock=clock.datetime)


@pytest.fixture
async def kube_url(emulator: kubeapi.KubeEmulator) -> AsyncIterator[str]:
    async with kubeapi.serve(emulator) as url:
        yield url


@pytest.fixture
async def kube(kube_url: str) -> AsyncIterator[kubernetes.KubeClient]:
    async with kubernetes.KubeClient.from_url(kube_url, timeout=5) as client:
        yield client


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


def store_settings(**changes: Any) -> Settings:
    """Long intervals: a test triggers refreshes and checks itself."""
    probe = changes.pop("probe", ProbeSettings(enabled=False))
    stores = StoresSettings(
        refresh_interval=3600, check_interval=3600, provisioner_interval=3600, probe=probe
    )
    return Settings(stores=dataclasses.replace(stores, **changes))


@contextlib.asynccontextmanager
async def running_monitor(
    kube: kubernetes.KubeClient | None,
    registry: CollectorRegistry,
    http: aiohttp.ClientSession,
    *,
    settings: Settings,
    clock: Clock,
) -> AsyncIterator[monitoring.StoreMonitor]:
    monitor = monitoring.StoreMonitor(
        settings=settings,
        kube=kube,
        http=http,
        store_metrics=metrics.StoreMetrics(
            registry, provisioner=settings.provisioner.url is not None
        ),
        provisioner_token=TOKEN,
        clock=clock,
        retry_delay=0.02,
    )
    task = asyncio.create_task(monitor.run())
    try:
        async with asyncio.timeout(WAIT):
            await monitor.synced()
        yield monitor
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def until(monitor: monitoring.StoreMonitor, predicate: Callable[[], bool]) -> None:
    async with asyncio.timeout(WAIT):
        await monitor.directory.wait_until(predicate)


def sample(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    return registry.get_sample_value(name, labels)


def exposition(registry: CollectorRegistry) -> str:
    return generate_latest(registry).decode()


def namespaces(monitor: monitoring.StoreMonitor) -> set[str]:
    return {ref.namespace for ref in monitor.directory.refs()}


def ready_store(store_id: str) -> list[dict[str, Any]]:
    ns = f"store-{store_id}"
    return [
        objects.namespace(ns),
        objects.deployment(f"{store_id}-app", ns),
        objects.statefulset(f"{store_id}-db", ns),
    ]


# --- the metric contract ------------------------------------------------------------------------


def test_store_metrics_match_the_alert_rules_contract(registry: CollectorRegistry) -> None:
    store_metrics = metrics.StoreMetrics(registry, provisioner=True)
    wrappers: dict[str, MetricWrapperBase] = {}
    for value in vars(store_metrics).values():
        if isinstance(value, MetricWrapperBase):
            (family,) = value.describe()
            wrappers[family.name + ("_total" if family.type == "counter" else "")] = value
    contract = {n for n in METRIC_LABELS if n.startswith(("store", "provisioner"))}

    assert set(wrappers) == contract
    for name in contract:
        labels = METRIC_LABELS[name]
        assert set(wrappers[name]._labelnames) == labels, name


def test_closed_label_sets_start_at_zero(registry: CollectorRegistry) -> None:
    metrics.StoreMetrics(registry)

    for reason in FailureReason:
        assert sample(registry, "store_provisioning_failures_total", reason=reason) == 0
    for probe_reason in ("timeout", "connection_refused", "status_code", "dns"):
        assert sample(registry, "store_probe_failures_total", reason=probe_reason) == 0
    for phase in ("provisioning", "running", "failed", "deleting"):
        assert sample(registry, "stores", phase=phase) == 0
    assert sample(registry, "stores_provisioning_stuck") == 0
    # Without a provisioner there is no provisioner_up: a series at 0 would mean "down".
    assert "provisioner_up" not in exposition(registry)


# --- discovery ----------------------------------------------------------------------------------


async def test_stores_appear_and_disappear_while_watching(
    kube: kubernetes.KubeClient,
    emulator: kubeapi.KubeEmulator,
    registry: CollectorRegistry,
    http: aiohttp.ClientSession,
    clock: Clock,
) -> None:
    platform = objects.namespace("store-platform")
    unlabelled = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "store-x"}}
    emulator.seed([*ready_store("a"), platform, unlabelled])

    async with running_monitor(
        kube, registry, http, settings=store_settings(), clock=clock
    ) as monitor:
        assert namespaces(monitor) == {"store-a"}
        emulator.seed(ready_store("b"))
        await until(monitor, lambda: namespaces(monitor) == {"store-a", "store-b"})
        await until(monitor, lambda: sample(registry, "stores", phase="running") == 2)

        emulator.delete("v1", "Namespace", "store-a")  # its contents go at once, then it does
        await until(monitor, lambda: namespaces(monitor) == {"store-b"})

        text = exposition(registry)
        assert 'store_id="a"' not in text
        assert 'namespace="store-a"' not in text
        assert (
            sample(
                registry,
                "store_component_ready",
                store_id="b",
                namespace="store-b",
                component="db",
            )
            == 1
        )
        assert sample(registry, "stores", phase="running") == 1


async def test_a_monitor_that_stops_leading_forgets_every_store_and_its_series(
    kube: kubernetes.KubeClient,
    emulator: kubeapi.KubeEmulator,
    registry: CollectorRegistry,
    http: aiohttp.ClientSession,
    clock: Clock,
) -> None:
    emulator.seed([*ready_store("a"), *ready_store("b")])

    async with running_monitor(
        kube, registry, http, settings=store_settings(), clock=clock
    ) as monitor:
        await until(monitor, lambda: sample(registry, "stores", phase="running") == 2)

    # Leadership moved: the task was cancelled (above) and the new leader exports the stores.
    monitor.forget_stores()

    assert len(monitor.directory) == 0
    assert not monitor.directory.live.is_set()
    assert 'namespace="store-a"' not in exposition(registry)
    assert sample(registry, "stores", phase="running") == 0


async def test_id_label_and_selector_are_configurable(
    kube: kubernetes.KubeClient,
    emulator: kubeapi.KubeEmulator,
    registry: CollectorRegistry,
    http: aiohttp.ClientSession,
    clock: Clock,
) -> None:
    labels = {"team": "shops", "example.com/store": "s42"}
    emulator.seed(
        [
            {
                "apiVersion": "v1",
                "kind": "Namespace",
                "metadata": {"name": "t-1", "labels": labels},
            },
            objects.namespace("store-ignored"),
        ]
    )
    settings = store_settings(selector="team=shops", id_label="example.com/store")

    async with running_monitor(kube, registry, http, settings=settings, clock=clock) as monitor:
        assert [(r.store_id, r.namespace) for r in monitor.directory.refs()] == [("s42", "t-1")]


async def test_a_namespace_leaving_the_selection_is_a_store_gone(
    kube: kubernetes.KubeClient,
    emulator: kubeapi.KubeEmulator,
    registry: CollectorRegistry,
    http: aiohttp.ClientSession,
    clock: Clock,
) -> None:
    emulator.seed(ready_store("a"))
    async with running_monitor(
        kube, registry, http, settings=store_settings(), clock=clock
    ) as monitor:
        emulator.patch(
            "v1",
            "Namespace",
            "store-a",
            {"metadata": {"labels": {"app.kubernetes.io/part-of": None}}},
        )
        await until(monitor, lambda: not namespaces(monitor))
        assert 'store_id="a"' not in exposition(registry)


async def test_relist_after_the_resource_version_expired(
    emulator: kubeapi.KubeEmulator,
    registry: CollectorRegistry,
    http: aiohttp.ClientSession,
    clock: Clock,
) -> None:
    emulator.seed([*ready_store("a"), *ready_store("b")])
    async with contextlib.AsyncExitStack() as api_server:
        url = await api_server.enter_async_context(kubeapi.serve(emulator))
        port = int(url.rsplit(":", 1)[1])
        async with (
            kubernetes.KubeClient.from_url(url, timeout=5) as kube,
            running_monitor(
                kube, registry, http, settings=store_settings(), clock=clock
            ) as monitor,
        ):
            (watcher,) = [i for i in monitor.informers if i.resource == kubernetes.NAMESPACES]
            stale = watcher.resource_version
            assert watcher.lists == 1
            # The API server goes away; meanwhile store-a is deleted, store-c created, and more
            # changes happen than the emulator's history holds, so no watch can resume.
            await api_server.aclose()
            emulator.delete("v1", "Namespace", "store-a")
            emulator.seed(ready_store("c"))
            for i in range(10):
                emulator.create(objects.secret(f"filler-{i}", "store-c"))

            async with kubeapi.serve(emulator, port=port):
                await until(monitor, lambda: namespaces(monitor) == {"store-b", "store-c"})

            assert watcher.lists == 2, "one list at start, one after the 410"
            assert watcher.resource_version != stale
            assert 'store_id="a"' not in exposition(registry)


# --- phases, durations and provisioning failures --------------------------------------------


def pod(store_id: str, waiting: str) -> dict[str, Any]:
    ns = f"store-{store_id}"
    status = objects.container_status("app", waiting=waiting)
    return objects.pod(f"{store_id}-app-0", ns, statuses=[status])


def not_ready_store(store_id: str, *extra: dict[str, Any]) -> list[dict[str, Any]]:
    ns = f"store-{store_id}"
    return [
        objects.namespace(ns),
        objects.deployment(f"{store_id}-app", ns, available=0),
        objects.statefulset(f"{store_id}-db", ns, ready=0),
        *extra,
    ]


def phase_duration(registry: CollectorRegistry, store_id: str, phase: str) -> float | None:
    return sample(
        registry,
        "store_phase_duration_seconds",
        store_id=store_id,
        namespace=f"store-{store_id}",
        phase=phase,
    )


def failures(registry: CollectorRegistry) -> dict[str, float]:
    return {
        reason.value: sample(registry, "store_provisioning_failures_total", reason=reason) or 0.0
        for reason in FailureReason
    }


async def test_phases_durations_and_failures_from_seeded_states(
    kube: kubernetes.KubeClient,
    emulator: kubeapi.KubeEmulator,
    registry: CollectorRegistry,
    http: aiohttp.ClientSession,
    clock: Clock,
) -> None:
    # All created at T0 (the emulator stamps creationTimestamp with the same clock).
    emulator.seed(
        [
            *ready_store("run"),
            objects.namespace("store-new"),
            *not_ready_store("img", pod("img", "ImagePullBackOff")),
            *not_ready_store("crash", pod("crash", "CrashLoopBackOff")),
            *not_ready_store("pvc", objects.pvc("data-pvc-db-0", "store-pvc", phase="Pending")),
            *not_ready_store(
                "helm",
                objects.release_record("store-helm", "store-helm", revision=1, status="failed"),
            ),
            objects.namespace("store-gone", finalizers=["example.com/hold"]),
        ]
    )
    clock.now = T0 + 30
    emulator.delete("v1", "Namespace", "store-gone")  # held by its finalizer: Terminating
    clock.now = T0 + 100
    settings = store_settings()
    async with running_monitor(kube, registry, http, settings=settings, clock=clock) as monitor:
        directory = monitor.directory
        await monitoring.check_provisioning(kube, directory, concurrency=2)
        directory.refresh()

        assert phase_duration(registry, "run", "running") == 0  # first seen running: now
        assert phase_duration(registry, "new", "provisioning") == 100  # since its creation
        assert phase_duration(registry, "img", "provisioning") == 100  # within the grace
        assert phase_duration(registry, "helm", "failed") == 0  # helm failure: no grace
        assert phase_duration(registry, "gone", "deleting") == 70  # since deletionTimestamp
        assert {p: sample(registry, "stores", phase=p) for p in Phase} == {
            "provisioning": 4,
            "running": 1,
            "failed": 1,
            "deleting": 1,
        }
        assert failures(registry)["helm_failed"] == 1
        ready = {
            (s, c): sample(
                registry, "store_component_ready", store_id=s, namespace=f"store-{s}", component=c
            )
            for s in ("run", "img")
            for c in ("app", "db")
        }
        assert ready == {("run", "app"): 1, ("run", "db"): 1, ("img", "app"): 0, ("img", "db"): 0}

        # The grace (300 s from the first check) passes: the lasting problems are failures.
        clock.now = T0 + 400
        await monitoring.check_provisioning(kube, directory, concurrency=2)
        directory.refresh()
        assert phase_duration(registry, "img", "provisioning") is None  # one series per store
        assert phase_duration(registry, "img", "failed") == 0
        assert failures(registry) == {
            "helm_failed": 1,
            "image_pull": 1,
            "crash_loop": 1,
            "pvc_pending": 1,
            "timeout": 0,
        }
        assert sample(registry, "stores_provisioning_stuck") == 0

        # Counted once per store and reason, however often it is seen again.
        clock.now = T0 + 500
        await monitoring.check_provisioning(kube, directory, concurrency=2)
        directory.refresh()
        assert failures(registry)["image_pull"] == 1

        # Past stuck_after (600 s) the store still provisioning is stuck, not failed...
        clock.now = T0 + 601
        directory.refresh()
        assert sample(registry, "stores_provisioning_stuck") == 1
        assert phase_duration(registry, "new", "provisioning") == 601
        # ...until the provisioning timeout (30 min).
        clock.now = T0 + 1800
        directory.refresh()
        assert sample(registry, "stores_provisioning_stuck") == 0
        assert phase_duration(registry, "new", "failed") == 0
        assert failures(registry)["timeout"] == 1


async def test_provisioning_duration_is_observed_once_the_store_runs(
    kube: kubernetes.KubeClient,
    emulator: kubeapi.KubeEmulator,
    registry: CollectorRegistry,
    http: aiohttp.ClientSession,
    clock: Clock,
) -> None:
    emulator.seed([*ready_store("old"), *not_ready_store("s1")])
    clock.now = T0 + 200
    async with running_monitor(
        kube, registry, http, settings=store_settings(), clock=clock
    ) as monitor:
        directory = monitor.directory
        assert directory.phase_of("store-s1") is not None
        emulator.patch(
            "apps/v1",
            "Deployment",
            "s1-app",
            {"status": {"availableReplicas": 1}},
            namespace="store-s1",
        )
        clock.now = T0 + 250
        emulator.patch(
            "apps/v1",
            "StatefulSet",
            "s1-db",
            {"status": {"readyReplicas": 1}},
            namespace="store-s1",
        )
        await until(monitor, lambda: sample(registry, "stores", phase="running") == 2)

        # Only s1: "old" was already running when first seen.
        assert sample(registry, "store_provisioning_duration_seconds_count") == 1
        assert sample(registry, "store_provisioning_duration_seconds_sum") == 250
        assert phase_duration(registry, "s1", "running") == 0

        # A running store that breaks stays running (StoreDown and store_component_ready
        # report it); it does not go back to provisioning.
        clock.now = T0 + 300
        emulator.patch(
            "apps/v1",
            "Deployment",
            "s1-app",
            {"status": {"availableReplicas": 0}},
            namespace="store-s1",
        )
        await until(
            monitor,
            lambda: (
                sample(
                    registry,
                    "store_component_ready",
                    store_id="s1",
                    namespace="store-s1",
                    component="app",
                )
                == 0
            ),
        )
        directory.refresh()
        assert phase_duration(registry, "s1", "running") == 50
        assert sample(registry, "store_provisioning_duration_seconds_count") == 1


# --- probes -------------------------------------------------------------------------------------


@pytest.fixture
async def store_server() -> AsyncIterator[StoreServer]:
    async with serve_stores() as server:
        yield server


def probing_settings(server: StoreServer, **changes: Any) -> Settings:
    values: dict[str, Any] = {
        "url_template": "http://{store_id}.127.0.0.1.nip.io",
        "connect_to": f"127.0.0.1:{server.port}",
        "timeout": 5,
        "interval": 3600,  # one round once discovery is synced; tests run further rounds
        "jitter": 0,
    }
    return store_settings(probe=ProbeSettings(**{**values, **changes}))


def up(registry: CollectorRegistry, store_id: str) -> float | None:
    return sample(registry, "store_up", store_id=store_id, namespace=f"store-{store_id}")


async def test_probes_set_store_up_and_count_failures(
    kube: kubernetes.KubeClient,
    emulator: kubeapi.KubeEmulator,
    registry: CollectorRegistry,
    http: aiohttp.ClientSession,
    clock: Clock,
    store_server: StoreServer,
) -> None:
    emulator.seed([*ready_store("good"), *ready_store("bad")])
    store_server.statuses["bad.127.0.0.1.nip.io"] = 503
    settings = probing_settings(store_server)

    async with running_monitor(kube, registry, http, settings=settings, clock=clock) as monitor:
        assert monitor.probe_loop is not None
        await monitor.probe_loop.probe_round(monitor.directory.targets())

        assert (up(registry, "good"), up(registry, "bad")) == (1, 0)
        assert (sample(registry, "store_probe_failures_total", reason="status_code") or 0) >= 1
        assert (sample(registry, "store_probe_duration_seconds_count") or 0) >= 2
        assert ("good.127.0.0.1.nip.io", "/wp-includes/images/blank.gif") in store_server.seen


async def test_ingress_hosts_are_probed_when_there_is_no_template(
    kube: kubernetes.KubeClient,
    emulator: kubeapi.KubeEmulator,
    registry: CollectorRegistry,
    http: aiohttp.ClientSession,
    clock: Clock,
    store_server: StoreServer,
) -> None:
    ingress = objects.ingress("s1-app", "store-s1", host="s1.shop.test", tls_secret="s1-tls")
    ingress["spec"].pop("tls")
    emulator.seed([*ready_store("s1"), ingress, *ready_store("bare")])
    settings = probing_settings(store_server, url_template=None)

    async with running_monitor(kube, registry, http, settings=settings, clock=clock) as monitor:
        assert monitor.directory.base_url("store-s1") == "http://s1.shop.test"
        assert [t.ref.store_id for t in monitor.directory.targets()] == ["s1"]
        assert monitor.probe_loop is not None
        await monitor.probe_loop.probe_round(monitor.directory.targets())
        assert up(registry, "s1") == 1
        assert up(registry, "bare") is None  # no URL, no probe, no series

        emulator.delete("networking.k8s.io/v1", "Ingress", "s1-app", namespace="store-s1")
        await until(monitor, lambda: monitor.directory.base_url("store-s1") is None)
        assert up(registry, "s1") is None


async def test_series_of_deleted_stores_disappear(
    kube: kubernetes.KubeClient,
    emulator: kubeapi.KubeEmulator,
    registry: CollectorRegistry,
    http: aiohttp.ClientSession,
    clock: Clock,
    store_server: StoreServer,
) -> None:
    held = [*ready_store("s1")]
    held[0] = objects.namespace("store-s1", finalizers=["example.com/hold"])
    emulator.seed([*held, *ready_store("s2")])
    settings = probing_settings(store_server)

    async with running_monitor(kube, registry, http, settings=settings, clock=clock) as monitor:
        assert monitor.probe_loop is not None
        await monitor.probe_loop.probe_round(monitor.directory.targets())
        assert up(registry, "s1") == up(registry, "s2") == 1

        # Deleting: no more probes and no store_up, but the phase series (for the alerts).
        clock.now = T0 + 10
        emulator.delete("v1", "Namespace", "store-s1")
        await until(monitor, lambda: sample(registry, "stores", phase="deleting") == 1)
        assert up(registry, "s1") is None
        assert phase_duration(registry, "s1", "deleting") == 0
        assert [t.ref.store_id for t in monitor.directory.targets()] == ["s2"]

        # Gone: nothing of it is left in the exposition.
        emulator.patch("v1", "Namespace", "store-s1", {"metadata": {"finalizers": None}})
        await until(monitor, lambda: namespaces(monitor) == {"store-s2"})
        text = exposition(registry)
        assert 'store_id="s1"' not in text
        assert 'store_id="s2"' in text


async def test_a_probe_answered_after_its_store_is_gone_leaves_no_series(
    kube: kubernetes.KubeClient,
    emulator: kubeapi.KubeEmulator,
    registry: CollectorRegistry,
    http: aiohttp.ClientSession,
    clock: Clock,
    store_server: StoreServer,
) -> None:
    emulator.seed(ready_store("s1"))
    store_server.hang = True
    settings = probing_settings(store_server)

    async with running_monitor(kube, registry, http, settings=settings, clock=clock) as monitor:
        assert monitor.probe_loop is not None
        probe_round = asyncio.create_task(
            monitor.probe_loop.probe_round(monitor.directory.targets())
        )
        await store_server.wait_for_requests(2)  # the start-up round's and this one's
        emulator.delete("v1", "Namespace", "store-s1")
        await until(monitor, lambda: not namespaces(monitor))
        store_server.release.set()
        await probe_round

        assert up(registry, "s1") is None
        assert 'store_id="s1"' not in exposition(registry)


async def test_probe_concurrency_is_bounded(
    kube: kubernetes.KubeClient,
    emulator: kubeapi.KubeEmulator,
    registry: CollectorRegistry,
    http: aiohttp.ClientSession,
    clock: Clock,
    store_server: StoreServer,
) -> None:
    emulator.seed([o for i in range(6) for o in ready_store(f"s{i}")])
    store_server.hang = True
    settings = probing_settings(store_server, concurrency=2)

    async with running_monitor(kube, registry, http, settings=settings, clock=clock):
        await store_server.wait_for_requests(2)
        assert store_server.in_flight == 2
        store_server.release.set()
        await store_server.wait_for_requests(6)

    assert store_server.peak == 2
    assert sorted(host for host, _ in store_server.seen) == [
        f"s{i}.127.0.0.1.nip.io" for i in range(6)
    ]


async def test_a_round_spreads_its_probes_over_the_jitter_window(
    kube: kubernetes.KubeClient,
    emulator: kubeapi.KubeEmulator,
    registry: CollectorRegistry,
    http: aiohttp.ClientSession,
    clock: Clock,
    store_server: StoreServer,
) -> None:
    emulator.seed([o for i in range(3) for o in ready_store(f"s{i}")])
    settings = probing_settings(store_server)

    async with running_monitor(kube, registry, http, settings=settings, clock=clock) as monitor:
        assert monitor.probe_loop is not None
        await store_server.wait_for_requests(3)  # the start-up round
        loop = asyncio.get_running_loop()
        started = loop.time()
        await monitor.probe_loop.probe_round(monitor.directory.targets(), spread=0.2)

        # Each probe waited for its random offset in [0, 0.2) s; none was skipped.
        assert loop.time() - started < 5
        assert len(store_server.seen) == 6


# --- the provisioner API ------------------------------------------------------------------------


@pytest.fixture
async def twin() -> AsyncIterator[tuple[provisioner.ProvisionerTwin, str]]:
    found = provisioner.ProvisionerTwin(token=TOKEN)
    async with provisioner.serve(found) as url:
        yield found, url


async def test_provisioner_up_against_the_twin(
    twin: tuple[provisioner.ProvisionerTwin, str],
    registry: CollectorRegistry,
    http: aiohttp.ClientSession,
) -> None:
    state, url = twin
    settings = Settings(provisioner=ProvisionerSettings(url=url, timeout=5))
    store_metrics = metrics.StoreMetrics(registry, provisioner=True)

    async def poll() -> float | None:
        await monitoring.poll_provisioner(
            http, settings, store_metrics, token=TOKEN, directory=None
        )
        return sample(registry, "provisioner_up")

    assert await poll() == 1
    state.fail_next(1, status=503)
    assert await poll() == 0
    assert await poll() == 1
    healthz = state.requests_for("GET", "/healthz")
    assert len(healthz) == 3
    assert all(r.authorized for r in healthz)


async def test_provisioner_unreachable_is_down(
    registry: CollectorRegistry, http: aiohttp.ClientSession
) -> None:
    settings = Settings(provisioner=ProvisionerSettings(url=f"http://127.0.0.1:{closed_port()}"))
    store_metrics = metrics.StoreMetrics(registry, provisioner=True)

    await monitoring.poll_provisioner(http, settings, store_metrics, token=None, directory=None)

    assert sample(registry, "provisioner_up") == 0


async def test_provisioner_status_wins_where_explicit(
    kube: kubernetes.KubeClient,
    emulator: kubeapi.KubeEmulator,
    twin: tuple[provisioner.ProvisionerTwin, str],
    registry: CollectorRegistry,
    http: aiohttp.ClientSession,
    clock: Clock,
) -> None:
    state, url = twin
    emulator.seed([*ready_store("s1"), *ready_store("s2"), *not_ready_store("s3")])
    state.add_store("s1", status="provisioning")  # ready in Kubernetes, not yet for the API
    state.add_store("s3", status="failed")
    settings = dataclasses.replace(
        store_settings(), provisioner=ProvisionerSettings(url=url, timeout=5)
    )

    async with running_monitor(kube, registry, http, settings=settings, clock=clock) as monitor:
        await monitoring.poll_provisioner(
            http, settings, monitor.store_metrics, token=TOKEN, directory=monitor.directory
        )
        phases = {
            ns: (found.phase.value, found.reason)
            for ns in ("store-s1", "store-s2", "store-s3")
            if (found := monitor.directory.phase_of(ns)) is not None
        }

    assert phases == {
        "store-s1": ("provisioning", None),
        "store-s2": ("running", None),  # not listed by the API: Kubernetes decides
        "store-s3": ("failed", FailureReason.HELM_FAILED),
    }
    assert sample(registry, "provisioner_up") == 1
    assert failures(registry)["helm_failed"] == 1


# --- the daemon ---------------------------------------------------------------------------------


async def test_metrics_scrape_is_not_blocked_by_hanging_probes(
    tmp_path: Path, emulator: kubeapi.KubeEmulator, kube_url: str, store_server: StoreServer
) -> None:
    """The whole daemon, in-process: discovery and a probe that never gets an answer."""
    emulator.seed(ready_store("s1"))
    store_server.hang = True
    (tmp_path / "playbooks").mkdir()
    raw = {
        "server": {"host": "127.0.0.1", "port": 0},
        "auth": {"insecure_no_auth": True},
        "playbooks": {"directory": str(tmp_path / "playbooks"), "watch_interval": 60},
        "state": {"path": str(tmp_path / "state.sqlite")},
        "kubernetes": {"kubeconfig": str(kubeapi.write_kubeconfig(tmp_path / "kube", kube_url))},
        "stores": {
            "probe": {
                "url_template": "http://{store_id}.127.0.0.1.nip.io",
                "connect_to": f"127.0.0.1:{store_server.port}",
                "timeout": 50,  # longer than this test may last: the probe hangs until released
                "jitter": 0,
            }
        },
    }
    daemon = running.Daemon(settings=config.from_mapping(raw))
    served = asyncio.create_task(daemon.run())
    try:
        async with asyncio.timeout(WAIT):
            await daemon.ready.wait()
            await store_server.entered.wait()  # discovered, and its probe is in flight
            async with http_get(f"{daemon.url}/metrics") as (status, text):
                pass

        assert status == 200
        assert store_server.in_flight == 1 and not store_server.release.is_set()
        assert 'stores{phase="running"} 1.0' in text
        assert (
            'store_phase_duration_seconds{namespace="store-s1",phase="running",store_id="s1"}'
            in (text)
        )
        assert 'store_up{namespace="store-s1"' not in text  # no answer yet
    finally:
        store_server.release.set()
        daemon.stopping.set()
        async with asyncio.timeout(WAIT):
            assert await served == 0


@contextlib.asynccontextmanager
async def http_get(url: str) -> AsyncIterator[tuple[int, str]]:
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        yield response.status, await response.text()
