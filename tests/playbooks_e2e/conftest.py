"""The shipped playbooks (``playbooks/*.yaml``), run end to end by the real daemon, for what
a scenario (``playbooks/tests/``, ``remediator test``) cannot express: another config, states
the simulated platform has no fault for.

Each test seeds one runbook scenario's broken state into a `KubeEmulator` served over HTTP,
starts the provisioner twin and a notify receiver, runs `running.Daemon` in-process on the
repository's playbooks, posts the alert as Alertmanager does, waits for the run through the
API, then asserts on the cluster (the emulator, and ``kubectl`` for some), the twin's recorded
requests, the messages received and the run's audit trail.

Small controllers (:meth:`Rig.react`) play what the cluster and the platform do after a fix: a
restarted workload rolls out, cert-manager re-issues a deleted certificate. They react to the
emulator's change events, so the daemon's own polls (``k8s.wait_rollout`` and friends) find
their work done; the tests themselves only poll the daemon's run API, under a deadline.

StoreDown is verified through Prometheus: a real one (:func:`monitoring_stack`, once per
session) scrapes a ``store_up`` gauge that the tests' controllers set when a store is fixed.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import os
import shutil
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import prometheus_client
import pytest
from aiohttp import web

from remediator import config, running
from remediator.adapters import prometheus
from remediator.simulation import access, kubeapi, monitoring, serving
from remediator.simulation import provisioner as twin_module
from tests import monitoring_fixtures
from tests.engine.kube import objects
from tests.safety_fixtures import Sink, http_sink

REPO = Path(__file__).resolve().parents[2]
PLAYBOOKS = REPO / "playbooks"
WEBHOOK_TOKEN = "e2e-webhook-4c1d9a"
API_TOKEN = "e2e-api-7f20b3"
PROVISIONER_TOKEN = "e2e-provisioner-5e8a61"
DEADLINE = 20.0
"""Seconds any single wait may take; reaching it means the behaviour under test broke."""
KUBECTL = shutil.which("kubectl")
NAMESPACES = ("store-[a-z0-9]([-a-z0-9]*[a-z0-9])?", "store-platform", "ingress-nginx")
"""safety.namespaces: the default allowlist plus the ingress controller's namespace."""

Obj = dict[str, Any]
Handler = Callable[[kubeapi.WatchEvent], Awaitable[None]]


# --- Alertmanager payloads ----------------------------------------------------------------------


def alert_payload(alertname: str, **labels: str) -> dict[str, Any]:
    """A v4 webhook with one firing alert, shaped like the recorded StoreDown delivery
    (``remediator/examples/storedown-firing.json``), labelled as the alert rules label it."""
    full = {"alertname": alertname, **labels}
    identity = ",".join(f"{k}={v}" for k, v in sorted(full.items()))
    fingerprint = hashlib.sha256(identity.encode()).hexdigest()[:16]
    now = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    group = {k: full[k] for k in ("alertname", "store_id") if k in full}
    return {
        "receiver": "remediator",
        "status": "firing",
        "alerts": [
            {
                "status": "firing",
                "labels": full,
                "annotations": {"summary": f"{alertname} {labels.get('store_id', '')}".strip()},
                "startsAt": now,
                "endsAt": "0001-01-01T00:00:00Z",
                "generatorURL": "http://prometheus:9090/graph?g0.expr=store_up+%3D%3D+0",
                "fingerprint": fingerprint,
            }
        ],
        "groupLabels": group,
        "commonLabels": full,
        "commonAnnotations": {},
        "externalURL": "http://alertmanager:9093",
        "version": "4",
        "groupKey": "{}:{" + ", ".join(f'{k}="{v}"' for k, v in group.items()) + "}",
        "truncatedAlerts": 0,
    }


def store_alert(alertname: str, store_id: str, *, severity: str, **extra: str) -> dict[str, Any]:
    """A per-store alert: store_id and namespace, as every rule of the `stores` group yields."""
    return alert_payload(
        alertname, store_id=store_id, namespace=f"store-{store_id}", severity=severity, **extra
    )


def combined(*payloads: Mapping[str, Any]) -> dict[str, Any]:
    """One delivery carrying the alerts of several (a storm arriving at once)."""
    first = dict(payloads[0])
    return {**first, "alerts": [a for p in payloads for a in p["alerts"]], "groupLabels": {}}


# --- store namespaces, named as the runbook names them -------------------------------------------


def store_namespace(store_id: str) -> dict[str, Obj]:
    """A healthy store ``store-<id>``, keyed by role, so a test breaks one part by replacing or
    deleting its entry before seeding. Names follow the runbook: ``<id>-app``, ``<id>-db``."""
    ns = f"store-{store_id}"
    app, db = f"{store_id}-app", f"{store_id}-db"
    credentials = f"{db}-credentials"
    return {
        "namespace": objects.namespace(ns),
        # What the store chart includes (helm-charts/remediator-store-access): without it,
        # remediator may not touch the store at all.
        "access": access.store_role_binding(ns),
        "app": objects.deployment(app, ns),
        "db": objects.statefulset(db, ns),
        "app_pod": objects.pod(
            f"{app}-7d9f-abcde", ns, labels={"app": app}, env_secrets=[credentials]
        ),
        "db_pod": objects.pod(
            f"{db}-0", ns, labels={"app": db}, containers=("db",), env_secrets=[credentials]
        ),
        "credentials": objects.secret(credentials, ns, data={"password": "db-pass-9d1e"}),
        "init_job": objects.job(f"{store_id}-init", ns),
        "pvc": objects.pvc(f"data-{db}-0", ns),
        "app_service": objects.service(app, ns),
        "app_endpoints": objects.endpoints(app, ns),
        "db_service": objects.service(db, ns),
        "db_endpoints": objects.endpoints(db, ns),
        "ingress": objects.ingress(
            app, ns, host=f"{store_id}.stores.example.com", tls_secret=f"{app}-tls"
        ),
        "certificate": objects.certificate(f"{app}-tls", ns),
        "tls_secret": objects.secret(f"{app}-tls", ns, data={"tls.crt": "crt", "tls.key": "key"}),
        "helm_record": objects.release_record(ns, ns, revision=1, status="deployed"),
    }


def platform() -> list[Obj]:
    """store-platform with the provisioner Deployment (one replica) and its pod."""
    ns = "store-platform"
    return [
        objects.namespace(ns),
        objects.deployment("provisioner", ns, replicas=1),
        objects.pod("provisioner-6c8b-x1", ns, labels={"app.kubernetes.io/name": "provisioner"}),
        objects.release_record(ns, ns, revision=1, status="deployed"),
    ]


def ingress_controller() -> list[Obj]:
    ns = "ingress-nginx"
    return [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}},
        objects.deployment("ingress-nginx-controller", ns, replicas=2),
    ]


def complete_rollout(emulator: kubeapi.KubeEmulator, kind: str, namespace: str, name: str) -> None:
    """What the Deployment/StatefulSet controller and the kubelet report once every pod of the
    current template is ready."""

    def done(obj: Obj) -> None:
        replicas = obj["spec"].get("replicas", 1)
        obj["status"] = {
            "observedGeneration": obj["metadata"]["generation"],
            "replicas": replicas,
            "updatedReplicas": replicas,
            "readyReplicas": replicas,
            "availableReplicas": replicas,
        }

    emulator.apply_change("apps/v1", kind, name, done, namespace=namespace)


def rolled_out_by_controller(event: kubeapi.WatchEvent) -> bool:
    """A Deployment/StatefulSet change that asks for a new rollout (a restart, a scale)."""
    if event.type != "MODIFIED":
        return False
    obj = event.object
    return int(obj["metadata"].get("generation", 0)) > int(
        obj.get("status", {}).get("observedGeneration", 0)
    )


def restarted_at(obj: Mapping[str, Any] | None) -> str | None:
    assert obj is not None
    annotations = obj["spec"]["template"]["metadata"].get("annotations") or {}
    value = annotations.get("kubectl.kubernetes.io/restartedAt")
    return str(value) if value is not None else None


# --- a real Prometheus, once per session ----------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Monitoring:
    url: str
    store_up: prometheus_client.Gauge
    """``store_up{store_id, namespace}``, scraped every 500 ms (job ``stores``)."""


class _MonitoringThread(threading.Thread):
    """Prometheus and the gauge it scrapes, on an event loop of their own.

    Prometheus needs about 5 s to its first scrape (target discovery is batched), too long to
    pay per test; a thread keeps both alive across the tests' own event loops.
    """

    def __init__(self, workdir: Path) -> None:
        super().__init__(name="e2e-monitoring", daemon=True)
        self.workdir = workdir
        self.up = threading.Event()
        self.monitoring: Monitoring | None = None
        self.error: BaseException | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None

    def run(self) -> None:
        asyncio.run(self._main())

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stopping = asyncio.Event()
        try:
            async with monitoring_fixtures.serve_gauge(
                "store_up", labelnames=("store_id", "namespace")
            ) as target:
                job = monitoring.ScrapeTarget(
                    job="stores", address=target.address, interval="500ms"
                )
                spec = monitoring.PrometheusSpec(scrape_targets=[job])
                async with (
                    monitoring.run_prometheus(spec, workdir=self.workdir) as server,
                    aiohttp.ClientSession() as session,
                ):
                    client = prometheus.PrometheusClient(session, server.url)
                    await monitoring_fixtures.wait_for_query(
                        client, 'up{job="stores"} == 1', lambda r: bool(r.samples)
                    )
                    self.monitoring = Monitoring(url=server.url, store_up=target.gauge)
                    self.up.set()
                    await self._stopping.wait()
        except BaseException as e:  # reported to the fixture in the main thread
            self.error = e
        finally:
            self.up.set()

    def stop(self) -> None:
        if self._loop is not None and self._stopping is not None:
            self._loop.call_soon_threadsafe(self._stopping.set)
        self.join(timeout=30)


@pytest.fixture(scope="session")
def monitoring_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Monitoring]:
    thread = _MonitoringThread(tmp_path_factory.mktemp("prometheus"))
    thread.start()
    try:
        assert thread.up.wait(timeout=40), "Prometheus did not start"
        if thread.error is not None:
            raise thread.error
        assert thread.monitoring is not None
        yield thread.monitoring
    finally:
        thread.stop()


class StoreProbe:
    """The prober's view of the stores: set ``store_up`` and wait until Prometheus has it."""

    def __init__(self, stack: Monitoring, client: prometheus.PrometheusClient) -> None:
        self.stack = stack
        self.client = client

    def set(self, store_id: str, value: float) -> None:
        self.stack.store_up.labels(store_id, f"store-{store_id}").set(value)

    async def seen(self, store_id: str, value: float) -> None:
        query = f'max(store_up{{store_id="{store_id}"}})'
        await monitoring_fixtures.wait_for_query(self.client, query, lambda r: r.scalar() == value)

    async def up(self, store_id: str) -> None:
        """The store answers again, and Prometheus knows it (before the cluster shows the
        fix, so the daemon's store_up check holds on its first round)."""
        self.set(store_id, 1)
        await self.seen(store_id, 1)

    async def no_store_down(self) -> None:
        """Until no store_up == 0 series is left from earlier tests (they clear the gauge)."""
        await monitoring_fixtures.wait_for_query(
            self.client,
            "count(max by (store_id) (store_up) == 0) or vector(0)",
            lambda r: r.scalar() == 0,
        )


@pytest.fixture
async def probe(monitoring_stack: Monitoring) -> AsyncIterator[StoreProbe]:
    monitoring_stack.store_up.clear()
    async with aiohttp.ClientSession() as session:
        yield StoreProbe(
            monitoring_stack, prometheus.PrometheusClient(session, monitoring_stack.url)
        )
    monitoring_stack.store_up.clear()


# --- the rig: cluster, provisioner, receiver, daemon -------------------------------------------


@dataclass(kw_only=True)
class Outage:
    """While ``down``, the provisioner answers every request with 503 (its pods are wedged)."""

    down: bool = False

    @web.middleware
    async def middleware(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        if self.down:
            return web.json_response({"error": "unavailable", "message": "wedged"}, status=503)
        return await handler(request)


@contextlib.asynccontextmanager
async def serve_provisioner(
    twin: twin_module.ProvisionerTwin, outage: Outage
) -> AsyncIterator[str]:
    """`provisioner.serve`, with the outage switch in front of the twin."""
    app = twin_module.make_app(twin)
    app.middlewares.insert(0, outage.middleware)
    async with serving.serve_app(app) as url:
        yield url


@dataclass(kw_only=True)
class Rig:
    emulator: kubeapi.KubeEmulator
    twin: twin_module.ProvisionerTwin
    outage: Outage
    receiver: Sink
    daemon: running.Daemon
    session: aiohttp.ClientSession
    workdir: Path
    kubeconfig: Path
    """The admin's (the tests' kubectl); remediator's has its service-account token."""
    access: access.RemediatorAccess
    _watches: list[tuple[kubeapi.Subscription, asyncio.Task[None]]] = field(default_factory=list)

    # --- the alert and the run

    async def post(self, payload: Mapping[str, Any]) -> dict[str, Any]:
        async with self.session.post(
            f"{self.daemon.url}/webhook/alertmanager",
            json=payload,
            headers={"Authorization": f"Bearer {WEBHOOK_TOKEN}"},
        ) as response:
            assert response.status == 200, await response.text()
            admitted: dict[str, Any] = await response.json()
            return admitted

    async def fire(self, payload: Mapping[str, Any]) -> str:
        """Post one alert; the id of the one run it started."""
        admitted = await self.post(payload)
        (run_id,) = admitted["runs"]
        return str(run_id)

    async def api(self, method: str, path: str, body: Any = None) -> Any:
        async with self.session.request(
            method,
            f"{self.daemon.url}{path}",
            json=body,
            headers={"Authorization": f"Bearer {API_TOKEN}"},
        ) as response:
            assert response.status == 200, await response.text()
            return await response.json()

    async def run(self, run_id: str) -> dict[str, Any]:
        detail: dict[str, Any] = await self.api("GET", f"/api/v1/runs/{run_id}")
        return detail

    async def wait_run(self, run_id: str, *statuses: str) -> dict[str, Any]:
        """Poll GET /api/v1/runs/{id} until the run has one of ``statuses`` (default: any
        finished one); its detail, with steps and audit records, then."""
        wanted = set(statuses) or {
            "succeeded",
            "failed",
            "unverified",
            "rejected",
            "cancelled",
            "interrupted",
        }
        async with asyncio.timeout(DEADLINE):
            while True:
                detail = await self.run(run_id)
                if detail["status"] in wanted:
                    return detail
                await asyncio.sleep(0.05)

    async def runs(self) -> list[dict[str, Any]]:
        page = await self.api("GET", "/api/v1/runs?limit=1000")
        items: list[dict[str, Any]] = page["items"]
        return items

    async def approve(self, run_id: str, *, approved: bool, comment: str = "") -> None:
        verb = "approve" if approved else "reject"
        answer = await self.api(
            "POST", f"/api/v1/runs/{run_id}/{verb}", {"by": "alice", "comment": comment}
        )
        assert answer == {"run_id": run_id, "approved": approved}

    # --- the cluster

    def seed(self, objects_: Mapping[str, Obj] | list[Obj]) -> None:
        values = list(objects_.values()) if isinstance(objects_, Mapping) else objects_
        self.emulator.seed(values)
        # The chart's RoleBindings in platform namespaces a test has just created.
        self.access.refresh()

    def get(self, kind: str, name: str, namespace: str | None = None) -> Obj | None:
        api_version = {
            "Deployment": "apps/v1",
            "StatefulSet": "apps/v1",
            "Job": "batch/v1",
            "Ingress": "networking.k8s.io/v1",
            "Certificate": "cert-manager.io/v1",
        }.get(kind, "v1")
        return self.emulator.get(api_version, kind, name, namespace)

    def react(self, api_version: str, kind: str, handler: Handler) -> None:
        """Call ``handler`` for every later change of that kind, in order; its errors fail the
        test at teardown."""
        subscription = self.emulator.subscribe(api_version=api_version, kind=kind)

        async def consume() -> None:
            async for event in subscription:
                await handler(event)

        self._watches.append((subscription, asyncio.create_task(consume())))

    def roll_out_restarts(self, *, before: Callable[[Obj], Awaitable[None]] | None = None) -> None:
        """Deployments and StatefulSets complete each new rollout (restart, scale) at once,
        after ``before`` (say, the store answering again)."""

        for kind in ("Deployment", "StatefulSet"):

            async def roll(event: kubeapi.WatchEvent, kind: str = kind) -> None:
                if not rolled_out_by_controller(event):
                    return
                if before is not None:
                    await before(event.object)
                meta = event.object["metadata"]
                complete_rollout(self.emulator, kind, meta["namespace"], meta["name"])

            self.react("apps/v1", kind, roll)

    async def kubectl(self, *args: str, ok: bool = True) -> str:
        """The real kubectl against the emulator; stdout (stderr when ``ok`` is False)."""
        assert KUBECTL is not None, "kubectl is not installed"
        env = {k: v for k, v in os.environ.items() if k in ("PATH", "LANG", "TMPDIR")}
        env["HOME"] = str(self.workdir)
        process = await asyncio.create_subprocess_exec(
            KUBECTL,
            f"--kubeconfig={self.kubeconfig}",
            f"--cache-dir={self.workdir / 'kube-cache'}",
            *args,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=env,
        )
        out, err = await process.communicate()
        assert (process.returncode == 0) == ok, (args, process.returncode, err.decode())
        return out.decode() if ok else err.decode()

    async def close_watches(self) -> None:
        for subscription, _ in self._watches:
            subscription.close()
        for _, task in self._watches:
            await task  # re-raises a controller's failure


def settings_for(
    workdir: Path,
    *,
    kubeconfig: Path,
    provisioner_url: str,
    notify_url: str,
    prometheus_url: str | None,
    namespaces: tuple[str, ...],
) -> config.Settings:
    files = {"token": WEBHOOK_TOKEN, "api-token": API_TOKEN, "provisioner-token": PROVISIONER_TOKEN}
    for name, value in files.items():
        (workdir / name).write_text(f"{value}\n", encoding="utf-8")
    raw: dict[str, Any] = {
        "server": {"host": "127.0.0.1", "port": 0},
        "auth": {
            "token_file": str(workdir / "token"),
            "api_token_file": str(workdir / "api-token"),
        },
        # The repository's playbooks themselves are under test.
        "playbooks": {"directory": str(PLAYBOOKS), "watch_interval": 60},
        "state": {"path": str(workdir / "state.sqlite")},
        "engine": {"grace_period": 5},
        "kubernetes": {"kubeconfig": str(kubeconfig), "timeout": 5},
        "provisioner": {
            "url": provisioner_url,
            "token_file": str(workdir / "provisioner-token"),
            "timeout": 5,
            "retries": 2,
        },
        "notify": {"targets": {"oncall": {"url": notify_url}}},
        "safety": {"namespaces": list(namespaces), "escalation_target": "oncall"},
        "logging": {"format": "console", "level": "warning"},
    }
    if prometheus_url is not None:
        raw["prometheus"] = {"url": prometheus_url, "timeout": 5}
    if "stores" in {f.name for f in dataclasses.fields(config.Settings)}:
        # The daemon's own store discovery and URL probes are not under test here, and would
        # resolve the made-up store hosts; the provisioner health poll stays (see `requests`).
        raw["stores"] = {"enabled": False}
    return config.from_mapping(raw)


@contextlib.asynccontextmanager
async def open_rig(
    workdir: Path, *, prometheus_url: str | None = None, namespaces: tuple[str, ...] = NAMESPACES
) -> AsyncIterator[Rig]:
    emulator = kubeapi.KubeEmulator()
    # remediator runs as its service account, with exactly the RBAC of its manifests.
    remediator_access = access.install(emulator)
    twin = twin_module.ProvisionerTwin(token=PROVISIONER_TOKEN)
    outage = Outage()
    async with (
        kubeapi.serve(emulator) as kube_url,
        serve_provisioner(twin, outage) as provisioner_url,
        http_sink() as receiver,
        aiohttp.ClientSession() as session,
    ):
        kubeconfig = kubeapi.write_kubeconfig(workdir / "kubeconfig", kube_url)
        settings = settings_for(
            workdir,
            kubeconfig=remediator_access.kubeconfig(workdir / "remediator-kubeconfig", kube_url),
            provisioner_url=provisioner_url,
            notify_url=receiver.url,
            prometheus_url=prometheus_url,
            namespaces=namespaces,
        )
        daemon = running.Daemon(settings=settings)
        serving = asyncio.create_task(daemon.run())
        ready = asyncio.create_task(daemon.ready.wait())
        await asyncio.wait({serving, ready}, timeout=DEADLINE, return_when=asyncio.FIRST_COMPLETED)
        if not ready.done():
            ready.cancel()
            raise AssertionError(
                f"daemon did not start: {serving.result() if serving.done() else 'timeout'}"
            )
        rig = Rig(
            emulator=emulator,
            twin=twin,
            outage=outage,
            receiver=receiver,
            daemon=daemon,
            session=session,
            workdir=workdir,
            kubeconfig=kubeconfig,
            access=remediator_access,
        )
        try:
            yield rig
        finally:
            daemon.stopping.set()
            async with asyncio.timeout(DEADLINE):
                assert await serving == 0
            await rig.close_watches()


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    """The rig without Prometheus: playbooks verified through the cluster and the provisioner."""
    async with open_rig(tmp_path) as opened:
        yield opened


# --- reading a run's audit trail -----------------------------------------------------------------


def outcomes(detail: Mapping[str, Any], phase: str = "steps") -> dict[str, str]:
    """Step name → outcome, of one phase, in execution order."""
    return {s["name"]: s["outcome"] for s in detail["steps"] if s["phase"] == phase}


def step(detail: Mapping[str, Any], name: str) -> dict[str, Any]:
    (found,) = [s for s in detail["steps"] if s["name"] == name]
    return dict(found)


def verification(detail: Mapping[str, Any]) -> dict[str, Any]:
    (record,) = [a for a in detail["audit"] if a["kind"] == "verification_finished"]
    return dict(record)


def requests(rig: Rig) -> list[tuple[str, str]]:
    """The requests the playbooks made to the provisioner: those about one store. (The daemon
    also polls ``/healthz`` and the store list for its own metrics.)"""
    return [(r.method, r.path) for r in rig.twin.requests if r.path.startswith("/api/v1/stores/")]


def texts(receiver: Sink) -> list[str]:
    return [str(body["text"]) for body in receiver.bodies]
