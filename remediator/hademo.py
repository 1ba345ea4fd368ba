"""``remediator demo --ha``: three replicas on one PostgreSQL; the one running a remediation is
killed, and another takes the run over, live.

It starts, all on 127.0.0.1 and in a fresh directory: a real PostgreSQL
(`simulation.postgresql.run_postgres`), the simulated store platform, an on-call receiver, and
three ``remediator serve`` processes (`REPLICAS`) sharing that database, with leases of
`LEASE_DURATION` s renewed every `RENEW_INTERVAL` s. The replicas are separate processes, not
daemons in this one, so that the kill is a real SIGKILL: no ``finally``, no lease released, no
last write, exactly as when a node dies.

Then it breaks store ``s1`` (fault ``app_down``), posts its StoreDown alert to one replica as
Alertmanager would, and follows the run through the review API and ``runs.owner`` in the
database. The demo playbook (`PLAYBOOK`) restarts the store's database, waits for it (the pause:
the simulated rollout takes `ROLLOUT_DELAY` s), then restarts the app. While the run waits
between its two mutating steps, the demo SIGKILLs the replica that owns it. A surviving replica
finds the lease expired, takes the run over (audit ``run_taken_over``), resumes it after the
last recorded step (``resume: true``: a restart is safe to continue after), escalates once to
on-call, and finishes it. The demo ends with the run's audit trail, the Kubernetes writes (the
database was restarted once, not again), and ``remediator audit verify`` of the one hash chain
the three replicas wrote.

Without PostgreSQL (Debian's ``postgresql``, which ``make setup`` installs) it says so and exits
2. The story is bounded by `DEADLINE`; the work directory is kept on a failure, for the logs.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import aiohttp
import psycopg
import yaml

from remediator import config, demo
from remediator.simulation import (
    closedloop,
    controllers,
    monitoring,
    platform,
    postgresql,
    standins,
)

REPLICAS = ("r1", "r2", "r3")
STORES = ("s1", "s2", "s3")
BROKEN_STORE = "s1"
FAULT = "app_down"
ALERT = "StoreDown"
PLAYBOOK_NAME = "store-restart-ha"
LEASE_DURATION = 2.0
"""Seconds a dead replica's runs stay its own: the takeover comes this long after the kill."""
RENEW_INTERVAL = 0.5
ROLLOUT_DELAY = 3.0
"""Seconds the simulated controllers take to roll a workload out: the pause between the two
restarts, in which the owner is killed."""
DEADLINE = 120.0
"""Seconds for the whole story, start-up included."""
START_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0
TICK = 0.1
LOG_FILE = "platform.log"
"""The simulated platform's log, in the work directory (each replica logs to its own)."""
EXIT_MISSING = 2
"""Exit status when PostgreSQL is not installed."""

PLAYBOOK = f"""\
# The HA demo's playbook (written by remediator/hademo.py): two mutating steps with a pause
# between them, so that the replica running it can be killed half-way.
name: {PLAYBOOK_NAME}
description: Restart the store's database, wait for it, then restart its app.
trigger:
  matchers:
    - alertname="{ALERT}"
target: "store-{{{{ alert.labels.store_id }}}}"
# A restart asked twice is a restart: safe to continue after a step whose outcome is unknown.
resume: true
safety:
  cooldown: 0
  storm: null
steps:
  - name: restart_db
    action: k8s.rollout_restart
    params:
      namespace: "{{{{ target }}}}"
      kind: StatefulSet
      name: "{{{{ alert.labels.store_id }}}}-db"
  - name: wait_db
    action: k8s.wait_rollout
    timeout: 1m
    params:
      namespace: "{{{{ target }}}}"
      kind: StatefulSet
      name: "{{{{ alert.labels.store_id }}}}-db"
      interval: 0.5
  - name: restart_app
    action: k8s.rollout_restart
    params:
      namespace: "{{{{ target }}}}"
      kind: Deployment
      name: "{{{{ alert.labels.store_id }}}}-app"
  - name: wait_app
    action: k8s.wait_rollout
    timeout: 1m
    params:
      namespace: "{{{{ target }}}}"
      kind: Deployment
      name: "{{{{ alert.labels.store_id }}}}-app"
      interval: 0.5
verify:
  timeout: 30s
  interval: 1s
  checks:
    - name: app_rolled_out
      action: k8s.wait_rollout
      params:
        namespace: "{{{{ target }}}}"
        kind: Deployment
        name: "{{{{ alert.labels.store_id }}}}-app"
        interval: 0.5
"""


class HaDemoError(Exception):
    """A part did not start, or a stage did not come in time."""


@dataclass(kw_only=True)
class Replica:
    name: str
    url: str
    log: Path
    process: asyncio.subprocess.Process

    @property
    def alive(self) -> bool:
        return self.process.returncode is None


@dataclass(kw_only=True)
class Fleet:
    """The running parts: replicas, their database, the platform, the on-call receiver."""

    replicas: list[Replica]
    token: str
    server: postgresql.PostgresServer
    database_url: str
    sim: platform.SimulatedPlatform
    receiver: standins.EscalationReceiver
    http: aiohttp.ClientSession

    def named(self, replica_id: str) -> Replica:
        """The process of a replica id (``r2``, or ``r2.1`` after it lost its lease once)."""
        base = replica_id.split(".", 1)[0]
        for replica in self.replicas:
            if replica.name == base:
                return replica
        raise HaDemoError(f"no replica {replica_id!r}")

    def alive(self) -> list[Replica]:
        return [r for r in self.replicas if r.alive]

    async def api(self, path: str, **params: str) -> Any:
        """GET from the first live replica: they all read the same database."""
        for replica in self.alive():
            headers = {"Authorization": f"Bearer {self.token}"}
            with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                async with self.http.get(
                    f"{replica.url}{path}", params=params, headers=headers
                ) as r:
                    if r.status == 200:
                        return await r.json()
        raise HaDemoError(f"GET {path}: no live replica answered")

    async def audit(self, *, after: int) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = []
        cursor: str | None = None
        while True:
            params = {"limit": "500", **({"cursor": cursor} if cursor else {})}
            page = await self.api("/api/v1/audit", **params)
            found.extend(item for item in page["items"] if item["seq"] > after)
            cursor = page["next_cursor"]
            if not cursor:
                return sorted(found, key=lambda r: int(r["seq"]))

    async def owner(self, run_id: str) -> str | None:
        """``runs.owner``: the replica executing the run, as the database says."""
        async with await psycopg.AsyncConnection.connect(
            self.database_url, password=self.server.password, connect_timeout=5
        ) as conn:
            cursor = await conn.execute("SELECT owner FROM runs WHERE run_id = %s", (run_id,))
            row = await cursor.fetchone()
        return None if row is None else row[0]


def replica_config(
    *,
    name: str,
    port: int,
    workdir: Path,
    sim: platform.SimulatedPlatform,
    database_url: str,
    password_file: Path,
    token_file: Path,
    oncall_url: str,
) -> dict[str, Any]:
    """One replica's config mapping; only ``ha.replica_id`` and the port differ."""
    own = {
        "server": {"host": "127.0.0.1", "port": port},
        "auth": {"token_file": str(token_file)},
        "playbooks": {"directory": str(workdir / "playbooks"), "watch_interval": 60},
        "state": {"path": database_url, "password_file": str(password_file)},
        "engine": {"grace_period": 5},
        "kubernetes": {"timeout": 5},
        "provisioner": {"timeout": 5, "retries": 2},
        "notify": {"targets": {"oncall": {"url": oncall_url}}},
        "safety": {"escalation_target": "oncall", "status_interval": 1},
        "stores": {"refresh_interval": 0.5, "probe": {"interval": 0.5, "timeout": 2}},
        "ha": {
            "replica_id": name,
            "lease_duration": LEASE_DURATION,
            "renew_interval": RENEW_INTERVAL,
            # No pod, so no namespace of its own for a Kubernetes Lease: the database's lock.
            "leader_election": "postgresql",
        },
        "logging": {"format": "json", "level": "info"},
    }
    return closedloop.merged(sim.remediator_config(), own)


@contextlib.asynccontextmanager
async def replica_process(
    name: str, config_path: Path, *, port: int, log: Path
) -> AsyncIterator[Replica]:
    """``remediator serve``; stopped (SIGTERM, then SIGKILL) at exit."""
    url = f"http://127.0.0.1:{port}"
    serve = ["-m", "remediator", "serve", "--config", str(config_path)]
    process = await monitoring.spawn(sys.executable, serve, log_file=log)
    replica = Replica(name=name, url=url, log=log, process=process)
    try:
        yield replica
    finally:
        await _stop(process)


async def _stop(process: asyncio.subprocess.Process) -> None:
    await monitoring.stop_process(process, binary="remediator", grace=STOP_TIMEOUT)


async def _stop_all(processes: list[asyncio.subprocess.Process]) -> None:
    await asyncio.gather(*(_stop(p) for p in processes))


async def wait_ready(http: aiohttp.ClientSession, replica: Replica) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + START_TIMEOUT
    while loop.time() < deadline:
        if not replica.alive:
            break
        with contextlib.suppress(aiohttp.ClientError, TimeoutError):
            async with http.get(f"{replica.url}/readyz") as response:
                if response.status == 200:
                    return
        await asyncio.sleep(0.05)
    tail = replica.log.read_text(encoding="utf-8", errors="replace")[-2000:]
    raise HaDemoError(f"replica {replica.name} did not become ready; its log:\n{tail}")


@contextlib.asynccontextmanager
async def running_fleet(
    workdir: Path,
    server: postgresql.PostgresServer,
    on_escalation: Callable[[str, dict[str, Any]], None],
) -> AsyncIterator[Fleet]:
    token = secrets.token_urlsafe(24)
    token_file = closedloop.write_secret(workdir / "webhook-token", token)
    password_file = closedloop.write_secret(workdir / "state-password", server.password)
    playbooks = workdir / "playbooks"
    playbooks.mkdir()
    (playbooks / f"{PLAYBOOK_NAME}.yaml").write_text(PLAYBOOK, encoding="utf-8")
    delays = controllers.ControllerSettings(
        rollout_delay=ROLLOUT_DELAY, job_delay=0.0, certificate_delay=0.1, volume_delay=0.05
    )
    async with contextlib.AsyncExitStack() as stack:
        http = await stack.enter_async_context(
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10))
        )
        sim = await stack.enter_async_context(
            platform.run(
                stores=STORES,
                workdir=workdir / "platform",
                settings=platform.PlatformSettings(delays=delays),
            )
        )
        receiver = await stack.enter_async_context(standins.serve_receiver(on_escalation))
        replicas = []
        for name in REPLICAS:
            port = monitoring.pick_free_port()
            raw = replica_config(
                name=name,
                port=port,
                workdir=workdir,
                sim=sim,
                database_url=server.url(),
                password_file=password_file,
                token_file=token_file,
                oncall_url=receiver.target_url("oncall"),
            )
            config.from_mapping(raw, source=f"<{name}>")  # a mistake here fails here, named
            path = workdir / f"{name}.yaml"
            path.write_text(yaml.safe_dump(raw, sort_keys=False), encoding="utf-8")
            replicas.append(
                await stack.enter_async_context(
                    replica_process(name, path, port=port, log=workdir / f"{name}.log")
                )
            )
        # Stopped together (first on the way out), not one grace period after another.
        stack.push_async_callback(_stop_all, [r.process for r in replicas])
        # Started together, then waited for: their start-ups overlap.
        await asyncio.gather(*(wait_ready(http, r) for r in replicas))
        yield Fleet(
            replicas=replicas,
            token=token,
            server=server,
            database_url=server.url(),
            sim=sim,
            receiver=receiver,
            http=http,
        )


@dataclass(kw_only=True)
class Story:
    fleet: Fleet
    narrator: demo.Narrator
    after_seq: int = 0
    run_id: str | None = None
    owner: str | None = None
    killed: str | None = None
    killed_at: float | None = None
    records: list[dict[str, Any]] = field(default_factory=list)
    outcome: str | None = None
    takeover: str | None = None
    """run_resumed or run_interrupted, once seen."""

    async def tick(self) -> None:
        for record in await self.fleet.audit(after=self.after_seq):
            self.after_seq = record["seq"]
            await self._tell(record)

    async def _tell(self, record: dict[str, Any]) -> None:
        kind, say = record["kind"], self.narrator.say
        if kind == "leader_elected":
            say(
                "LEADER",
                f"{record['details'].get('replica') or record['target']} leads"
                " (store discovery and probes; PostgreSQL advisory lock)",
            )
        if self.run_id is None:
            if kind == "run_started" and record["playbook"] == PLAYBOOK_NAME:
                self.run_id = record["run_id"]
            else:
                return
        if record["run_id"] != self.run_id:
            return
        self.records.append(record)
        details = record["details"]
        if kind == "run_started":
            self.owner = await self.fleet.owner(self.run_id)
            say(
                "RUN",
                f"playbook {record['playbook']} started on {record['target']}"
                f" (run {self.run_id}); owner {self.owner} (runs.owner in PostgreSQL)",
            )
        elif kind == "step_finished":
            by = self.owner or "?"
            say("STEP", f"  {details['step']} ({details['action']}): {record['outcome']} on {by}")
            if details["step"] == "restart_db" and self.killed is None:
                await self._kill()
        elif kind == "run_taken_over":
            self.owner = await self.fleet.owner(self.run_id)
            done = ", ".join(details.get("done") or []) or "nothing"
            waited = time.monotonic() - self.killed_at if self.killed_at else 0.0
            say(
                "TAKEOVER",
                f"run_taken_over: {self.owner} took run {self.run_id} from"
                f" {details.get('from') or self.killed} ({waited:.1f}s after the kill;"
                f" lease {LEASE_DURATION:g}s); step in flight:"
                f" {details.get('step_in_flight') or 'none'}; done before: {done}",
            )
        elif kind in ("run_resumed", "run_interrupted"):
            self.takeover = kind
            if kind == "run_interrupted":
                # The run's last record: an interrupted run has no run_finished.
                self.outcome = "interrupted"
            say(
                "TAKEOVER",
                f"{kind}: {record['reason']}"
                + (f"; continues at {details['from_step']}" if kind == "run_resumed" else ""),
            )
        elif kind == "verification_finished":
            say("VERIFY", f"{record['outcome']} (round {details.get('rounds')}) on {self.owner}")
        elif kind == "run_finished":
            self.outcome = record["outcome"]
            error = f": {record['reason']}" if record["reason"] else ""
            say("RUN", f"{record['outcome']}{error}")

    async def _kill(self) -> None:
        assert self.owner is not None  # noqa: S101 - read at run_started
        victim = self.fleet.named(self.owner)
        victim.process.send_signal(signal.SIGKILL)
        await victim.process.wait()
        self.killed, self.killed_at = victim.name, time.monotonic()
        self.narrator.say(
            "KILL",
            f"SIGKILL to replica {victim.name} (pid {victim.process.pid}), which owns the run,"
            " while it waits between its two restarts (wait_db)",
        )


def restarts(sim: platform.SimulatedPlatform, store_id: str) -> dict[str, int]:
    """Kubernetes writes (PATCH) to the store's database and app, as the API received them."""
    namespace = f"store-{store_id}"
    counted = {"statefulsets": 0, "deployments": 0}
    for write in sim.kube_writes:
        for kind in counted:
            if write.method == "PATCH" and f"/namespaces/{namespace}/{kind}/" in write.path:
                counted[kind] += 1
    return counted


async def verify_audit(fleet: Fleet) -> tuple[int, str]:
    """``remediator audit --state URL verify``, the real command, against the shared chain."""
    env = {**os.environ, "REMEDIATOR_STATE_PASSWORD": fleet.server.password}
    done = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "remediator", "audit", "--state", fleet.database_url, "verify"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return done.returncode, (done.stdout + done.stderr).strip()


async def tell(fleet: Fleet, narrator: demo.Narrator) -> Story:
    story = Story(fleet=fleet, narrator=narrator)
    fault = fleet.sim.inject(FAULT, BROKEN_STORE)
    narrator.say("BREAK", f"fault {FAULT} injected into store {BROKEN_STORE}: {fault.description}")
    receiving = fleet.replicas[1]
    labels = {
        "alertname": ALERT,
        "namespace": f"store-{BROKEN_STORE}",
        "store_id": BROKEN_STORE,
        "severity": "critical",
    }
    payload = standins.alertmanager_payload(labels, status="firing", starts_at=time.time())
    headers = {"Authorization": f"Bearer {fleet.token}"}
    url = f"{receiving.url}/webhook/alertmanager"
    async with fleet.http.post(url, json=payload, headers=headers) as r:
        if r.status != 200:
            raise HaDemoError(f"POST webhook to {receiving.name}: HTTP {r.status}")
    narrator.say(
        "ALERT",
        f'{ALERT}{{store_id="{BROKEN_STORE}"}} posted to replica'
        f" {receiving.name}'s webhook, as Alertmanager would",
    )
    while story.outcome is None:
        await story.tick()
        await asyncio.sleep(TICK)
    return story


def print_trail(story: Story, out: TextIO) -> None:
    print(f"\naudit trail of run {story.run_id} (GET /api/v1/audit), times in UTC:", file=out)
    demo.print_audit_table(story.records, out)


async def run_ha_demo(workdir: Path, server: postgresql.PostgresServer, out: TextIO) -> int:
    narrator = demo.Narrator(out)

    def escalated(target: str, body: dict[str, Any]) -> None:
        narrator.say("ONCALL", f"{target} received: {body.get('text', body)}")

    async with running_fleet(workdir, server, escalated) as fleet:
        narrator.say("START", f"PostgreSQL {server.url()} (data in {server.data})")
        narrator.say(
            "START",
            f"simulated platform: stores {', '.join(fleet.sim.store_ids)};"
            f" Kubernetes API {fleet.sim.kube_url}",
        )
        for replica in fleet.replicas:
            narrator.say(
                "START",
                f"replica {replica.name}: {replica.url}, pid"
                f" {replica.process.pid}, log {replica.log.name}",
            )
        narrator.say(
            "START",
            f"leases: {LEASE_DURATION:g}s, renewed every {RENEW_INTERVAL:g}s;"
            f" playbook {PLAYBOOK_NAME} (restart db, wait, restart app; resume: true)",
        )
        try:
            async with asyncio.timeout(DEADLINE):
                story = await tell(fleet, narrator)
        except TimeoutError:
            narrator.note(f"\ndemo --ha: FAILED: not finished within {DEADLINE:g}s")
            return 1
        except HaDemoError as e:
            narrator.note(f"\ndemo --ha: FAILED: {e}")
            return 1
        healthy = fleet.sim.healthy(BROKEN_STORE)
        narrator.say(
            "HEALTHY" if healthy else "PROBLEM",
            f"store {BROKEN_STORE}: "
            + (
                "serving, every part ready"
                if healthy
                else "; ".join(fleet.sim.problems(BROKEN_STORE))
            ),
        )
        writes = restarts(fleet.sim, BROKEN_STORE)
        code, verified = await verify_audit(fleet)
        print_trail(story, out)
        narrator.note(
            f"\nKubernetes writes to store-{BROKEN_STORE}: StatefulSet {BROKEN_STORE}-db patched"
            f" {writes['statefulsets']}x, Deployment {BROKEN_STORE}-app patched"
            f" {writes['deployments']}x (each restart once: nothing was done twice)"
        )
        narrator.note(f"remediator audit verify (one chain, written by {', '.join(REPLICAS)}):")
        narrator.note("  " + verified.replace("\n", "\n  "))
        escalations = len(fleet.receiver.messages)
        narrator.note(
            f"\nrun {story.run_id}: {story.outcome}; killed {story.killed}, taken over by"
            f" {story.owner} ({story.takeover}); escalations to oncall: {escalations}"
        )
        ok = (
            story.outcome == "succeeded"
            and story.takeover is not None
            and code == 0
            and healthy
            and writes == {"statefulsets": 1, "deployments": 1}
        )
    narrator.note("stopped: the replicas, PostgreSQL and the simulated platform")
    return 0 if ok else 1


def missing() -> str | None:
    if postgresql.available():
        return None
    return (
        "demo --ha needs PostgreSQL, which is not installed: no server under"
        f" {postgresql.BINARIES}/<version>/bin (Debian package postgresql; `make setup`"
        " installs it). `remediator demo` without --ha runs on SQLite."
    )


def main(*, out: TextIO = sys.stdout) -> int:
    reason = missing()
    if reason:
        print(reason, file=sys.stderr, flush=True)
        return EXIT_MISSING
    print(
        "remediator demo --ha: three replicas on one PostgreSQL; the one running a remediation"
        " is killed, and another takes the run over",
        file=out,
        flush=True,
    )
    workdir = Path(tempfile.mkdtemp(prefix="remediator-demo-ha-"))
    logs = ", ".join(f"{name}.log" for name in REPLICAS)
    print(f"workdir {workdir} (replica logs {logs}, {LOG_FILE})", file=out, flush=True)
    code = 1
    try:
        with (
            (workdir / LOG_FILE).open("a", encoding="utf-8") as log,
            postgresql.run_postgres(workdir / "postgres") as server,
        ):
            demo.configure_logging(log)
            code = asyncio.run(run_ha_demo(workdir, server, out))
    except KeyboardInterrupt:
        code = 130
    except postgresql.PostgresError as e:
        print(f"demo --ha: PostgreSQL did not start: {e}", file=out, flush=True)
    finally:
        if code == 1:
            print(f"demo --ha: logs kept in {workdir}", file=out, flush=True)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    return code
