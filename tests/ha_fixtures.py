"""Several daemon processes on one real PostgreSQL database: a remediator cluster for the
high-availability tests (``tests/e2e/test_ha_*.py``).

:func:`run_cluster` starts, on 127.0.0.1 and free ports only: the simulated store platform
(`remediator.simulation.platform`: the Kubernetes API emulator over HTTP with remediator's
RBAC, the storefront every store answers on, the provisioner twin), a notify receiver for
escalations (`tests.safety_fixtures.http_sink`), a fresh database on the session's
``postgres_server``, and N ``remediator serve`` processes (`tests.daemon_fixtures.run_daemon`),
each with its own config, port and ``ha.replica_id`` and a short lease, so that a SIGKILLed
replica's runs and leadership move within seconds. Replicas can also be started later
(:meth:`HaCluster.start_replica`), and :func:`run_alertmanagers` runs real Alertmanagers
clustered with each other by gossip, each delivering to one replica.

The tests read the cluster the way an operator would: the API and ``/metrics`` of any live
replica (the state is shared), each process's own JSON log for what it did itself, the writes
the emulator answered (`SimulatedPlatform.kube_writes`), and ``remediator audit verify``.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import secrets
import signal
import sys
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import psycopg
import pytest
from aiohttp import web
from prometheus_client import parser

from remediator.core import reporting, runs
from remediator.simulation import access, closedloop, monitoring, platform, postgresql, serving
from tests import daemon_fixtures
from tests.safety_fixtures import ESCALATION_TARGET, Sink, http_sink

LEASE_DURATION = 2.0
"""``ha.lease_duration`` of every replica: a dead replica's runs and leader lease move after it."""
RENEW_INTERVAL = 0.5
"""``ha.renew_interval``: leases are renewed, orphans looked for and leadership tried this often."""
PROBE_INTERVAL = 0.5
"""``stores.probe.interval`` of the leader's store probes."""
DEADLINE = 20.0
"""Seconds any single wait may take; reaching it means the behaviour under test broke (the
margin over the intervals above is for a loaded 2-core CI machine)."""
POLL = 0.05

Labels = frozenset[tuple[str, str]]


@dataclass(kw_only=True)
class Replica:
    replica_id: str
    daemon: daemon_fixtures.Daemon
    config: Path
    killed: bool = False
    frozen: bool = False

    @property
    def url(self) -> str:
        return self.daemon.url

    def logged(self, event: str, **fields: Any) -> list[dict[str, Any]]:
        """This process's own log events named ``event`` whose fields include ``fields``."""
        return [
            e
            for e in self.daemon.events
            if e.get("event") == event and all(e.get(k) == v for k, v in fields.items())
        ]


@dataclass(kw_only=True)
class HaCluster:
    workdir: Path
    platform: platform.SimulatedPlatform
    escalations: Sink
    """The notify receiver behind ``safety.escalation_target``."""
    database_url: str
    admin_url: str
    """The database as PostgreSQL's superuser: the test reads the lease table through it."""
    password_file: Path
    session: aiohttp.ClientSession
    settings: Mapping[str, Any]
    """Config groups every replica shares (merged over the defaults of `write_config`)."""
    replicas: list[Replica] = field(default_factory=list)
    _stack: contextlib.AsyncExitStack = field(default_factory=contextlib.AsyncExitStack)

    # --- the replicas ----------------------------------------------------------------------------

    @property
    def live(self) -> list[Replica]:
        """The replicas that answer: neither killed nor frozen."""
        return [r for r in self.replicas if not (r.killed or r.frozen)]

    def replica(self, replica_id: str) -> Replica:
        (found,) = [r for r in self.replicas if r.replica_id == replica_id]
        return found

    def write_replica_config(self, replica_id: str) -> Path:
        directory = self.workdir / replica_id
        directory.mkdir()
        groups = closedloop.merged(self.settings, {"ha": {"replica_id": replica_id}})
        return daemon_fixtures.write_config(directory, **groups)

    async def start_replica(self, replica_id: str) -> Replica:
        config = self.write_replica_config(replica_id)
        daemon = await self._stack.enter_async_context(
            daemon_fixtures.run_daemon("--config", config, cwd=config.parent)
        )
        replica = Replica(replica_id=replica_id, daemon=daemon, config=config)
        self.replicas.append(replica)
        return replica

    def freeze(self, replica: Replica) -> None:
        """SIGSTOP: the process keeps its connections but does nothing, as a node that stalls
        (a long GC pause, a frozen VM, a partition) and is presumed dead by the others."""
        replica.daemon.send(signal.SIGSTOP)
        replica.frozen = True

    def thaw(self, replica: Replica) -> None:
        replica.daemon.send(signal.SIGCONT)
        replica.frozen = False

    async def wait_logged(self, replica: Replica, event: str, **fields: Any) -> dict[str, Any]:
        """The replica's first log event ``event`` with ``fields``, once it has logged it."""
        async with asyncio.timeout(DEADLINE):
            while True:
                found = replica.logged(event, **fields)
                if found:
                    return found[0]
                await asyncio.sleep(POLL)

    async def kill(self, replica: Replica) -> None:
        """SIGKILL: no drain, no lease release, no resignation; as a node dying."""
        replica.daemon.send(signal.SIGKILL)
        assert await replica.daemon.exit_code() == -signal.SIGKILL
        replica.killed = True

    # --- reading the cluster ---------------------------------------------------------------------

    def _any(self) -> daemon_fixtures.Daemon:
        return self.live[0].daemon

    async def api(self, path: str, replica: Replica | None = None, **params: str) -> Any:
        daemon = replica.daemon if replica is not None else self._any()
        async with self.session.get(
            f"{daemon.url}{path}", params=params, headers=daemon.headers(daemon_fixtures.API_TOKEN)
        ) as response:
            assert response.status == 200, await response.text()
            return await response.json()

    async def runs(self, replica: Replica | None = None) -> list[dict[str, Any]]:
        return await daemon_fixtures.all_runs(self.session, (replica or self.live[0]).daemon)

    async def run_detail(self, run_id: str) -> dict[str, Any]:
        detail: dict[str, Any] = await self.api(f"/api/v1/runs/{run_id}")
        return detail

    async def audit(self, kind: str) -> list[dict[str, Any]]:
        return await daemon_fixtures.audit_of(self.session, self._any(), kind)

    async def wait_run(self, run_id: str) -> dict[str, Any]:
        """The run's detail once it has finished."""
        async with asyncio.timeout(DEADLINE):
            while True:
                detail = await self.run_detail(run_id)
                if runs.RunStatus(detail["status"]).finished:
                    return detail
                await asyncio.sleep(POLL)

    async def wait_audit(
        self, kind: str, where: Callable[[dict[str, Any]], bool] = lambda _: True
    ) -> dict[str, Any]:
        """The first audit record of ``kind`` matching ``where``, once there is one."""
        async with asyncio.timeout(DEADLINE):
            while True:
                for record in await self.audit(kind):
                    if where(record):
                        return record
                await asyncio.sleep(POLL)

    async def metrics(
        self, replica: Replica
    ) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
        """One replica's ``/metrics``: (sample name, labels) → value."""
        async with self.session.get(f"{replica.url}/metrics") as response:
            assert response.status == 200, await response.text()
            text = await response.text()
        return {
            (sample.name, frozenset(sample.labels.items())): sample.value
            for family in parser.text_string_to_metric_families(text)
            for sample in family.samples
        }

    async def sample(self, replica: Replica, name: str, **labels: str) -> float | None:
        return (await self.metrics(replica)).get((name, frozenset(labels.items())))

    async def counted(self, replica: Replica, name: str, **labels: str) -> float:
        """A sample the replica exports from its start (counters at 0): missing is an error."""
        value = await self.sample(replica, name, **labels)
        assert value is not None, (replica.replica_id, name, labels)
        return value

    async def leaders(self) -> list[Replica]:
        """The live replicas exporting ``remediator_leader 1``."""
        return [r for r in self.live if await self.sample(r, "remediator_leader") == 1]

    async def store_up(self, replica: Replica) -> dict[str, float]:
        """store id → ``store_up`` on one replica's ``/metrics`` (only a leader has any)."""
        return {
            dict(labels)["store_id"]: value
            for (name, labels), value in (await self.metrics(replica)).items()
            if name == "store_up"
        }

    async def owner_of(self, run_id: str, step: str) -> Replica:
        """The replica that ran ``step`` of the run, by its own log (the API does not say
        which process executes a run; the logs bind ``run_id`` to every line of it)."""
        async with asyncio.timeout(DEADLINE):
            while True:
                found = [
                    r for r in self.replicas if r.logged("step_finished", run_id=run_id, step=step)
                ]
                if found:
                    (owner,) = found
                    return owner
                await asyncio.sleep(POLL)

    async def wait_leader(self) -> Replica:
        """The one live replica exporting ``remediator_leader 1``, once there is exactly one."""
        async with asyncio.timeout(DEADLINE):
            while True:
                leaders = await self.leaders()
                if len(leaders) == 1:
                    return leaders[0]
                await asyncio.sleep(POLL)

    async def wait_store_up(
        self, replica: Replica, expected: Mapping[str, float]
    ) -> dict[str, float]:
        """Until the replica's ``store_up`` series are ``expected``; them then."""
        async with asyncio.timeout(DEADLINE):
            while True:
                found = await self.store_up(replica)
                if found == expected:
                    return found
                await asyncio.sleep(POLL)

    async def wait_renewals(self, rounds: int) -> None:
        """Until every live replica has renewed its lease ``rounds`` more times (each renewal
        is followed by its look for orphans), read off the lease table itself."""

        async def expiries() -> dict[str, float]:
            async with await psycopg.AsyncConnection.connect(self.admin_url) as conn:
                cursor = await conn.execute("SELECT replica_id, expires_at FROM replicas")
                return {str(r): float(e) for r, e in await cursor.fetchall()}

        start = await expiries()
        seen = dict.fromkeys((r.replica_id for r in self.live), 0)
        last = dict(start)
        async with asyncio.timeout(DEADLINE):
            while min(seen.values()) < rounds:
                await asyncio.sleep(POLL)
                now = await expiries()
                for replica_id in seen:
                    if now.get(replica_id, 0.0) > last.get(replica_id, 0.0):
                        seen[replica_id] += 1
                last = now

    def kube_writes(self, namespace: str) -> list[tuple[str, str]]:
        """(method, path) of every write the emulator answered in ``namespace``, in order."""
        marker = f"/namespaces/{namespace}/"
        return [(w.method, w.path) for w in self.platform.kube_writes if marker in w.path]

    async def verify_audit(self) -> int:
        """``remediator audit verify`` against the shared PostgreSQL database: asserts the hash
        chain intact; the records it checked. A process of its own, awaited without blocking
        the loop that serves the platform to the replicas (`daemon_fixtures.cli` would)."""
        config = self.replicas[0].config
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "remediator",
            "audit",
            "--config",
            str(config),
            "verify",
            "--state",
            self.database_url,
            cwd=config.parent,
            env=daemon_fixtures.environment(),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        async with asyncio.timeout(DEADLINE * 2):
            output, _ = await process.communicate()
        text = output.decode(errors="replace")
        intact = re.search(r"^audit log intact: (\d+) records$", text, re.MULTILINE)
        assert process.returncode == 0 and intact is not None, (process.returncode, text)
        return int(intact.group(1))


async def post(
    session: aiohttp.ClientSession, replica: Replica, payload: Mapping[str, Any]
) -> dict[str, Any]:
    """POST a webhook to one replica, as Alertmanager does; its answer."""
    async with session.post(
        f"{replica.url}/webhook/alertmanager", json=payload, headers=replica.daemon.headers()
    ) as response:
        assert response.status == 200, await response.text()
        admitted: dict[str, Any] = await response.json()
        return admitted


def recorded_at(record: Mapping[str, Any]) -> float:
    """An audit record's time (as the API shows it) in epoch seconds."""
    return reporting.parse_timestamp(str(record["time"]))


def cluster_settings(
    *,
    sim: platform.SimulatedPlatform,
    database_url: str,
    password_file: Path,
    playbooks: Path,
    escalation_url: str,
    allowed_hosts: Sequence[str],
    overrides: Mapping[str, Any],
) -> dict[str, Any]:
    """Config groups shared by every replica: the platform's fragment, the shared database,
    short leases and probes, the escalation receiver; then ``overrides``."""
    shared = {
        "state": {"path": database_url, "password_file": str(password_file)},
        "playbooks": {"directory": str(playbooks), "watch_interval": 60},
        "engine": {"grace_period": 5},
        "kubernetes": {"timeout": 5},
        "provisioner": {"timeout": 5, "retries": 1},
        "http": {"allowed_hosts": list(allowed_hosts)},
        "notify": {"targets": {ESCALATION_TARGET: {"url": escalation_url}}},
        "safety": {"escalation_target": ESCALATION_TARGET, "status_interval": 1},
        "ha": {
            "lease_duration": LEASE_DURATION,
            "renew_interval": RENEW_INTERVAL,
            # remediator's own namespace, where its RBAC grants the Lease.
            "lease_namespace": access.NAMESPACE,
        },
        "stores": {
            "refresh_interval": 0.5,
            "check_interval": 1,
            "provisioner_interval": 0.5,
            "probe": {"interval": PROBE_INTERVAL, "timeout": 2},
        },
    }
    return closedloop.merged(closedloop.merged(sim.remediator_config(), shared), overrides)


@contextlib.asynccontextmanager
async def run_cluster(
    workdir: Path,
    server: postgresql.PostgresServer,
    *,
    replicas: int,
    playbooks: Callable[[platform.SimulatedPlatform], Mapping[str, str]] = lambda _: {},
    stores: Sequence[str] = ("s1",),
    allowed_hosts: Sequence[str] = (),
    overrides: Mapping[str, Any] | None = None,
) -> AsyncIterator[HaCluster]:
    """The platform with ``stores``, the receiver, a new database and ``replicas`` daemons
    (``r0``, ``r1``…) on ``playbooks`` (file name → YAML, given the running platform, whose
    addresses a playbook may name); everything stopped on the way out."""
    password_file = workdir / "state-password"
    password_file.touch(mode=0o600)
    password_file.write_text(server.password + "\n", encoding="utf-8")
    database = f"ha_{secrets.token_hex(4)}"
    database_url = server.create_database(database)
    async with (
        platform.run(
            stores=stores,
            workdir=workdir / "platform",
            settings=platform.PlatformSettings(delays=closedloop.LOOP_DELAYS),
        ) as sim,
        http_sink() as escalations,
        aiohttp.ClientSession() as session,
    ):
        playbook_dir = workdir / "playbooks"
        playbook_dir.mkdir()
        for name, text in playbooks(sim).items():
            (playbook_dir / f"{name}.yaml").write_text(text, encoding="utf-8")
        cluster = HaCluster(
            workdir=workdir,
            platform=sim,
            escalations=escalations,
            database_url=database_url,
            admin_url=f"postgresql://postgres@127.0.0.1:{server.port}/{database}",
            password_file=password_file,
            session=session,
            settings=cluster_settings(
                sim=sim,
                database_url=database_url,
                password_file=password_file,
                playbooks=playbook_dir,
                escalation_url=escalations.url,
                allowed_hosts=[sim.storefront_url.removeprefix("http://"), *allowed_hosts],
                overrides=overrides or {},
            ),
        )
        async with cluster._stack:
            # One after the other: started together on a loaded 2-core machine, three
            # interpreters importing at once can each miss daemon_fixtures.STARTUP_BUDGET.
            for index in range(replicas):
                await cluster.start_replica(f"r{index}")
            yield cluster


# --- a step the test holds ---------------------------------------------------------------------


@dataclass(kw_only=True)
class Hold:
    """An HTTP endpoint that answers a POST only once the test releases it: a step of a
    playbook (``http.request``) that the test keeps in flight as long as it needs."""

    url: str
    address: str
    calls: list[str] = field(default_factory=list)
    """The JSON bodies (as text) of every request that arrived, in order."""
    arrived: asyncio.Event = field(default_factory=asyncio.Event)
    released: asyncio.Event = field(default_factory=asyncio.Event)

    async def wait_arrived(self) -> None:
        async with asyncio.timeout(DEADLINE):
            await self.arrived.wait()


@contextlib.asynccontextmanager
async def hold_server() -> AsyncIterator[Hold]:
    hold: Hold | None = None

    async def held(request: web.Request) -> web.Response:
        assert hold is not None
        hold.calls.append(await request.text())
        hold.arrived.set()
        # Cancelled when the caller goes away (a killed replica): see serving.serve_app.
        await hold.released.wait()
        return web.json_response({"ok": True})

    app = web.Application()
    app.router.add_post("/hold", held)
    async with serving.serve_app(app) as url:
        hold = Hold(url=f"{url}/hold", address=url.removeprefix("http://"))
        try:
            yield hold
        finally:
            hold.released.set()


# --- Alertmanagers in one gossip cluster -------------------------------------------------------


def require_alertmanager() -> None:
    """Not optional: CI installs it (.ci/setup); a machine without it fails, loudly."""
    if monitoring.missing_binaries([monitoring.ALERTMANAGER_BINARY]):
        pytest.fail(
            f"{monitoring.ALERTMANAGER_BINARY} is not on PATH; run .ci/setup", pytrace=False
        )


@contextlib.asynccontextmanager
async def run_alertmanagers(
    workdir: Path, receivers: Sequence[Replica], *, peered: bool = True
) -> AsyncIterator[list[monitoring.RunningServer]]:
    """One real Alertmanager per replica, delivering to it alone, all peered by gossip (as in an
    HA Alertmanager deployment); yields once every one lists all the others as peers. Not
    ``peered``: each on its own, as peers that cannot gossip (a partition), each notifying."""
    gossip_ports = [monitoring.pick_free_port() for _ in receivers]
    async with contextlib.AsyncExitStack() as stack:
        servers = []
        for index, replica in enumerate(receivers):
            spec = monitoring.AlertmanagerSpec(
                webhook_url=f"{replica.url}/webhook/alertmanager",
                bearer_token=daemon_fixtures.TOKEN,
                group_by=("alertname", "store_id"),
            )
            gossip = (
                monitoring.Gossip(
                    port=gossip_ports[index],
                    peers=[p for i, p in enumerate(gossip_ports) if i != index],
                    # The second peer waits this long for the first one's notification to
                    # gossip before it would notify itself.
                    peer_timeout="2s",
                )
                if peered
                else None
            )
            servers.append(
                await stack.enter_async_context(
                    monitoring.run_alertmanager(spec, workdir=workdir / f"am{index}", gossip=gossip)
                )
            )
        async with aiohttp.ClientSession() as session, asyncio.timeout(DEADLINE):
            for server in servers:
                while peered:
                    if len(await _peers(session, server)) == len(servers):
                        break
                    await asyncio.sleep(0.1)
        yield servers


async def _peers(session: aiohttp.ClientSession, server: monitoring.RunningServer) -> list[Any]:
    async with session.get(f"{server.url}/api/v2/status") as response:
        response.raise_for_status()
        status = await response.json()
    peers: list[Any] = status.get("cluster", {}).get("peers") or []
    return peers


async def post_to_alertmanager(
    session: aiohttp.ClientSession, server: monitoring.RunningServer, alerts: list[dict[str, Any]]
) -> None:
    """What Prometheus does: POST /api/v2/alerts."""
    async with session.post(f"{server.url}/api/v2/alerts", json=alerts) as response:
        assert response.status == 200, await response.text()


async def wait_notified(
    session: aiohttp.ClientSession, servers: Sequence[monitoring.RunningServer]
) -> None:
    """Until every Alertmanager has decided about its first notification (asked the shared
    notification log whether it was sent) and has no webhook request in flight."""
    async with asyncio.timeout(DEADLINE):
        for server in servers:
            while True:
                queried = await am_metric(session, server, "alertmanager_nflog_queries_total")
                attempts = await am_metric(session, server, "alertmanager_notifications_total")
                answered = await am_metric(
                    session, server, "alertmanager_notification_latency_seconds_count"
                )
                if queried >= 1 and answered >= attempts:
                    break
                await asyncio.sleep(0.1)


async def am_metric(
    session: aiohttp.ClientSession, server: monitoring.RunningServer, name: str
) -> float:
    """The sum of an Alertmanager's samples named ``name`` (0 if it has none)."""
    async with session.get(f"{server.url}/metrics") as response:
        text = await response.text()
    return sum(
        sample.value
        for family in parser.text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name
    )
