"""Side by side: remediator and ansible-rulebook on the same webhook load shapes.

Both servers get StoreDown alerts in Alertmanager v4 bodies, one alert per webhook, and both
act at most once per store every 60 s: ansible-rulebook 1.3.2 (drools) with a ``throttle:
once_within: 60 seconds`` grouped by ``store_id`` and a ``debug`` action, behind a minimal
Alertmanager-style webhook source written by this bench; remediator with one ``log`` step,
``target_rate`` 1 per 60 s, storm detection off, log level info and its SQLite state. They run
one after the other, never at once, each in a fresh process pinned to CPU 0 while this load
generator runs on CPU 1. Three load shapes, each ``--seconds`` long, ``--repetitions`` times,
medians reported:

- ``closed``: ``--connections`` workers post one alert and wait for the answer, 10 % of alerts
  for a store not seen before (the rest re-fire for a known store, so they are throttled /
  rate-limited): accepted alerts/s.
- ``dispatch``: the same, but every alert is for a new store, so every one is acted upon:
  actions (debug lines / finished runs) per second within the load window.
- ``open``: ``--open-rate`` alerts/s on a fixed schedule, every one for a new store: p99 from
  the scheduled POST to the action (the debug banner's time / the run's ``started_at``).

Then remediator alone takes a ``--burst`` of alerts in groups of ``--burst-group``: every alert
must be acknowledged (503s are retried after Retry-After, as Alertmanager does) and become one
finished run; its peak RSS is reported.

ansible-rulebook is installed from PyPI into ``<cache-dir>/ansible-rulebook`` on the first run
(about a minute; it needs Java 17, found from ``java`` on PATH). ``--skip-ansible`` measures
remediator alone. Run from the repository root:

    python -m bench.compare [--seconds 10] [--repetitions 3] [--skip-ansible] [--quick]
                            [--state sqlite|postgresql://...] [--replicas N] [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import hashlib
import json
import os
import platform
import random
import re
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Protocol

import aiohttp

from bench import intake
from remediator import config

ROOT = Path(__file__).resolve().parents[1]
ANSIBLE_RULEBOOK_VERSION = "1.3.2"
# ansible-rulebook looks source filters up in collections through ansible-galaxy, which comes
# with ansible-core; without it no source starts.
ANSIBLE_REQUIREMENTS = (f"ansible-rulebook=={ANSIBLE_RULEBOOK_VERSION}", "ansible-core")
INSTALL_TIMEOUT = 900.0
SERVER_CPU = 0
CLIENT_CPU = 1
RETRY_AFTER = 1
"""Seconds remediator asks a refused sender to wait before it knows its drain rate; the load
generator honours whatever Retry-After says."""
BACKOFF_INITIAL = 0.5
BACKOFF_MULTIPLIER = 1.5
BACKOFF_RANDOMIZATION = 0.5
BACKOFF_MAX = 60.0
"""Alertmanager's retry of a failed notification (``notify.RetryStage``): the defaults of
``cenkalti/backoff``'s ``NewExponentialBackOff``, each interval drawn from ±50 % around the
nominal one, which grows by half per attempt up to 60 s."""
RETRY_AFTER_SPREAD = 0.2
"""A sender honouring Retry-After waits up to this share longer, at random."""
DRAIN_TIMEOUT = 60.0
"""Seconds after the load the open-loop shape waits for the last actions."""
SETTLE = 1.0
"""Seconds without a new action after which the rulebook's output is taken as complete."""
ACTION_MARK = "bench-action"
WEBHOOK_SOURCE = "bench_webhook"

SOURCE_PLUGIN = '''\
"""Alertmanager-style webhook source for the remediator bench: each alert of a POSTed body
becomes one event ``{"alert": ...}``, answered 200 once it is on the queue."""

import asyncio
import json

from aiohttp import web


async def main(queue, args):
    async def receive(request):
        try:
            body = json.loads(await request.read())
            alerts = body["alerts"]
        except (ValueError, KeyError, TypeError) as e:
            return web.json_response({"error": str(e)}, status=400)
        for alert in alerts:
            await queue.put({"alert": alert})
        return web.json_response({"alerts": len(alerts)})

    async def healthz(request):
        return web.json_response({"status": "ok"})

    app = web.Application(client_max_size=1024 * 1024)
    app.router.add_post("/webhook/alertmanager", receive)
    app.router.add_get("/healthz", healthz)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, args["host"], int(args["port"]))
    await site.start()
    try:
        await asyncio.Future()
    finally:
        await runner.cleanup()
'''

RULEBOOK = """\
- name: StoreDown
  hosts: all
  sources:
    - {source}:
        host: {host}
        port: {port}
  rules:
    - name: store down
      condition: event.alert.labels.alertname == "StoreDown"
      throttle:
        once_within: 60 seconds
        group_by_attributes:
          - event.alert.labels.store_id
      action:
        debug:
          msg: "{mark} {{{{ event.alert.labels.store_id }}}}"
"""

PLAYBOOK = """\
name: store-down
description: The bench's StoreDown playbook, equivalent to the rulebook's throttled debug.
priority: 10
trigger:
  matchers:
    - alertname="StoreDown"
target: "store-{{ alert.labels.store_id }}"
safety:
  target_rate: { max_runs: 1, window: 60s }
  playbook_rate: null
  cooldown: 0
  storm: null
steps:
  - name: note
    action: log
    params:
      message: "store {{ alert.labels.store_id }} is down"
"""


class BenchError(intake.BenchError):
    """The comparison could not measure (an install, a start-up or a check failed)."""


# Alerts


@dataclass(slots=True)
class AlertMaker:
    """One-alert Alertmanager v4 bodies for StoreDown; every alert a distinct event.

    Each alert has its own ``startsAt``, so remediator never takes it for a re-delivery: an
    alert for a known store is a new firing that its rate limit refuses, as the rulebook's
    throttle drops it.
    """

    prefix: str
    new_share: float
    seed: int = 1
    stores: list[str] = field(default_factory=list)
    made: int = 0
    rng: random.Random = field(init=False)
    base: datetime = field(init=False)

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)
        self.base = datetime.now(UTC) - timedelta(hours=1)

    def next_alert(self) -> tuple[str, dict[str, Any]]:
        """A store id and its alert: a new store with probability ``new_share``."""
        if not self.stores or self.rng.random() < self.new_share:
            store_id = f"{self.prefix}{len(self.stores)}"
            self.stores.append(store_id)
        else:
            store_id = self.rng.choice(self.stores)
        starts_at = self.base + timedelta(microseconds=self.made * 1000)
        self.made += 1
        return store_id, storedown_alert(store_id, starts_at)

    def next_body(self) -> tuple[str, bytes]:
        store_id, alert = self.next_alert()
        return store_id, webhook_body([alert], group=store_id)


def fingerprint_of(store_id: str) -> str:
    return hashlib.sha256(f"StoreDown/{store_id}".encode()).hexdigest()[:16]


def storedown_alert(store_id: str, starts_at: datetime) -> dict[str, Any]:
    return {
        "status": "firing",
        "labels": {
            "alertname": "StoreDown",
            "store_id": store_id,
            "namespace": f"store-{store_id}",
            "severity": "critical",
        },
        "annotations": {"summary": f"store {store_id} answers no requests"},
        "startsAt": starts_at.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "endsAt": "0001-01-01T00:00:00Z",
        "generatorURL": "http://prometheus.bench:9090/graph?g0.expr=store_up+%3D%3D+0",
        "fingerprint": fingerprint_of(store_id),
    }


def webhook_body(alerts: list[dict[str, Any]], *, group: str) -> bytes:
    labels = {"alertname": "StoreDown", "group": group}
    return json.dumps(
        {
            "receiver": "remediator",
            "status": "firing",
            "alerts": alerts,
            "groupLabels": labels,
            "commonLabels": {**labels, "severity": "critical"},
            "commonAnnotations": {},
            "externalURL": "http://alertmanager.bench:9093",
            "version": "4",
            "groupKey": f'{{}}:{{alertname="StoreDown", group="{group}"}}',
            "truncatedAlerts": 0,
        }
    ).encode()


# Load generator


@dataclass(slots=True, kw_only=True)
class Load:
    """What one load shape sent and how the server answered."""

    started_wall: float = 0.0
    ended_wall: float = 0.0
    accepted_alerts: int = 0
    refusals_503: int = 0
    errors: list[str] = field(default_factory=list)
    sent_at: dict[str, float] = field(default_factory=dict)
    """Store id → wall time its (first) alert was due: where POST→action starts."""
    late_sends: int = 0
    """Open loop: sends that found all connections busy and left after their due time."""
    client_cpu_s: float = 0.0
    acknowledged: set[str] = field(default_factory=set)
    """Burst: fingerprints of the alerts in 2xx answers."""
    retried_errors: int = 0
    """Burst: attempts that failed without an answer (a timeout, a reset) and were retried."""

    @property
    def seconds(self) -> float:
        return self.ended_wall - self.started_wall

    @property
    def alerts_per_s(self) -> float | None:
        return self.accepted_alerts / self.seconds if self.seconds > 0 else None


class Poster:
    """POSTs bodies round-robin to the servers' webhook URLs; a 503 waits Retry-After, retries."""

    def __init__(
        self, session: aiohttp.ClientSession, urls: Sequence[str], token: str | None, load: Load
    ) -> None:
        self._session = session
        self._urls = urls
        self._headers = {"Content-Type": "application/json"}
        if token is not None:
            self._headers["Authorization"] = f"Bearer {token}"
        self._load = load
        self._next = 0

    async def post(self, body: bytes, *, alerts: int, until: float | None = None) -> bool:
        """True once the body is accepted; False on an error or when retrying would pass
        ``until`` (a loop-clock deadline)."""
        url = self._urls[self._next % len(self._urls)]
        self._next += 1
        loop = asyncio.get_running_loop()
        while True:
            try:
                async with self._session.post(url, data=body, headers=self._headers) as response:
                    await response.read()
                    if 200 <= response.status < 300:
                        self._load.accepted_alerts += alerts
                        return True
                    if response.status != 503:
                        self._load.errors.append(f"HTTP {response.status}")
                        return False
                    self._load.refusals_503 += 1
                    pause = float(response.headers.get("Retry-After", RETRY_AFTER))
            except (aiohttp.ClientError, TimeoutError) as e:
                self._load.errors.append(f"{type(e).__name__}: {e}"[:200])
                return False
            if until is not None and loop.time() + pause >= until:
                return False
            await asyncio.sleep(pause)

    async def notify(
        self,
        body: bytes,
        *,
        fingerprints: Sequence[str],
        until: float,
        honour_retry_after: bool,
        rng: random.Random,
    ) -> bool:
        """One webhook sent as Alertmanager's notifier sends it: any failure (a 5xx, a timeout,
        a reset) is retried with its exponential backoff until ``until``, so an alert is given
        up only at the deadline. With ``honour_retry_after`` a 503's Retry-After is waited for
        instead (plus up to :data:`RETRY_AFTER_SPREAD`, so refused senders do not all come
        back at once); real Alertmanager ignores the header. True once the body is
        acknowledged."""
        url = self._urls[self._next % len(self._urls)]
        self._next += 1
        loop = asyncio.get_running_loop()
        nominal = BACKOFF_INITIAL
        while True:
            retry_after: float | None = None
            try:
                async with self._session.post(url, data=body, headers=self._headers) as response:
                    await response.read()
                    if 200 <= response.status < 300:
                        self._load.accepted_alerts += len(fingerprints)
                        self._load.acknowledged.update(fingerprints)
                        return True
                    if response.status == 503:
                        self._load.refusals_503 += 1
                        if "Retry-After" in response.headers:
                            retry_after = float(response.headers["Retry-After"])
                    else:
                        self._load.errors.append(f"HTTP {response.status}")
                        if response.status < 500:
                            return False  # Alertmanager gives a 4xx up at once, too
            except (aiohttp.ClientError, TimeoutError):
                self._load.retried_errors += 1
            if honour_retry_after and retry_after is not None:
                pause = retry_after * (1 + RETRY_AFTER_SPREAD * rng.random())
            else:
                spread = BACKOFF_RANDOMIZATION * nominal
                pause = rng.uniform(nominal - spread, nominal + spread)
                nominal = min(BACKOFF_MAX, nominal * BACKOFF_MULTIPLIER)
            if loop.time() + pause >= until:
                return False
            await asyncio.sleep(pause)


@contextlib.asynccontextmanager
async def client_session(connections: int) -> AsyncIterator[aiohttp.ClientSession]:
    connector = aiohttp.TCPConnector(limit=connections)
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        yield session


async def closed_loop(
    urls: Sequence[str],
    *,
    token: str | None,
    maker: AlertMaker,
    seconds: float,
    connections: int,
) -> Load:
    """``connections`` workers, each posting one alert and waiting for its answer."""
    load = Load()
    loop = asyncio.get_running_loop()
    async with client_session(connections) as session:
        poster = Poster(session, urls, token, load)
        end = loop.time() + seconds

        async def worker() -> None:
            while loop.time() < end:
                store_id, body = maker.next_body()
                load.sent_at.setdefault(store_id, time.time())
                await poster.post(body, alerts=1, until=end)

        cpu = time.process_time()
        load.started_wall = time.time()
        await asyncio.gather(*(worker() for _ in range(connections)))
        load.ended_wall = time.time()
        load.client_cpu_s = time.process_time() - cpu
    return load


async def open_loop(
    urls: Sequence[str],
    *,
    token: str | None,
    maker: AlertMaker,
    seconds: float,
    rate: float,
    connections: int,
) -> Load:
    """One alert every ``1/rate`` s on a fixed schedule, whatever the answers, over at most
    ``connections`` connections. Latency starts at the due time, so a send that waited for a
    free connection counts its wait (no coordinated omission)."""
    load = Load()
    loop = asyncio.get_running_loop()
    async with client_session(connections) as session:
        poster = Poster(session, urls, token, load)
        free = asyncio.Semaphore(connections)
        tasks: set[asyncio.Task[bool]] = set()

        async def send(body: bytes) -> bool:
            async with free:
                return await poster.post(body, alerts=1)

        cpu = time.process_time()
        start, load.started_wall = loop.time(), time.time()
        for i in range(round(seconds * rate)):
            due = start + i / rate
            await asyncio.sleep(max(0.0, due - loop.time()))
            store_id, body = maker.next_body()
            load.sent_at[store_id] = load.started_wall + i / rate
            if free.locked():
                load.late_sends += 1
            task = asyncio.create_task(send(body))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        await asyncio.gather(*tasks)
        load.ended_wall = time.time()
        load.client_cpu_s = time.process_time() - cpu
    return load


async def burst(
    urls: Sequence[str],
    *,
    token: str | None,
    prefix: str,
    alerts: int,
    group: int,
    connections: int,
    deadline: float,
    honour_retry_after: bool = True,
) -> Load:
    """``alerts`` alerts for distinct stores in groups of ``group``, all posted at once, each
    webhook retried as Alertmanager retries it (:meth:`Poster.notify`)."""
    maker = AlertMaker(prefix=prefix, new_share=1.0)
    bodies = []
    for start in range(0, alerts, group):
        batch = [maker.next_alert()[1] for _ in range(min(group, alerts - start))]
        body = webhook_body(batch, group=f"{prefix}{start}")
        bodies.append((body, [a["fingerprint"] for a in batch]))
    load = Load()
    rng = random.Random(7)
    async with client_session(connections) as session:
        poster = Poster(session, urls, token, load)
        cpu = time.process_time()
        load.started_wall = time.time()
        await asyncio.gather(
            *(
                poster.notify(
                    body,
                    fingerprints=fingerprints,
                    until=deadline,
                    honour_retry_after=honour_retry_after,
                    rng=rng,
                )
                for body, fingerprints in bodies
            )
        )
        load.ended_wall = time.time()
        load.client_cpu_s = time.process_time() - cpu
    return load


# Servers


class Server(Protocol):
    """A system under test, started fresh for each measurement."""

    name: str
    urls: list[str]
    token: str | None

    def pids(self) -> list[int]: ...

    async def action_times(self, load: Load) -> dict[str, float]:
        """Store id → wall time its first action started (a debug line, a run started)."""
        ...

    async def finished_times(self, load: Load) -> list[float]:
        """Wall times at which actions completed (debug lines, runs finished)."""
        ...

    async def drain(self, expected: int, deadline: float) -> bool:
        """Until ``expected`` actions started and nothing is pending, or the deadline."""
        ...


def pinned(command: Sequence[str], cpu: int | None) -> list[str]:
    """The command on one CPU (its threads inherit it: the JVM's too)."""
    if cpu is None:
        return list(command)
    return ["taskset", "-c", str(cpu), *command]


@functools.cache
def pinning_cpus() -> tuple[int | None, int | None]:
    """(server CPU, client CPU), or (None, None) when there are not two to tell apart.

    Decided once, from the affinity the bench started with: after it pins itself to the
    client CPU its own affinity no longer shows the server's, and asking again would start
    every server unpinned, on the client's CPU (which the figures before this fix suffered).
    """
    try:
        available = os.sched_getaffinity(0)
    except AttributeError:
        return None, None
    if {SERVER_CPU, CLIENT_CPU} <= available and shutil.which("taskset"):
        return SERVER_CPU, CLIENT_CPU
    return None, None


def java_home() -> str:
    java = shutil.which("java")
    if java is None:
        raise BenchError("ansible-rulebook needs Java 17: no `java` on PATH (or --skip-ansible)")
    return str(Path(java).resolve().parents[1])


def ensure_ansible_rulebook(cache: Path) -> Path:
    """The ansible-rulebook executable in the cache's virtualenv, installed on first use."""
    venv = cache / "ansible-rulebook"
    executable = venv / "bin" / "ansible-rulebook"
    marker = venv / "bench-installed.txt"
    wanted = "\n".join(ANSIBLE_REQUIREMENTS)
    if executable.exists() and marker.exists() and marker.read_text() == wanted:
        return executable
    print(f"installing {' '.join(ANSIBLE_REQUIREMENTS)} into {venv} ...", file=sys.stderr)
    commands = [
        [sys.executable, "-m", "venv", "--clear", str(venv)],
        [str(venv / "bin" / "pip"), "install", "--quiet", *ANSIBLE_REQUIREMENTS],
    ]
    for command in commands:
        done = subprocess.run(
            command, capture_output=True, text=True, timeout=INSTALL_TIMEOUT, check=False
        )
        if done.returncode != 0:
            raise BenchError(f"{' '.join(command)} failed:\n{done.stderr[-2000:]}")
    marker.write_text(wanted)
    return executable


ACTION_LINE = re.compile(
    rf"^\*\* (?P<time>\d{{4}}-\d\d-\d\d \d\d:\d\d:\d\d(?:\.\d+)?) \[debug\] \**\n"
    rf"{ACTION_MARK} (?P<store>\S+)$",
    re.MULTILINE,
)


def parse_debug_actions(text: str) -> list[tuple[str, float]]:
    """(store id, wall time) of each ``debug`` action in ansible-rulebook's output.

    The banner's time is the action's own ``datetime.now()`` (local time, so it is read back
    as local time).
    """
    return [
        (match["store"], datetime.fromisoformat(match["time"]).timestamp())
        for match in ACTION_LINE.finditer(text)
    ]


@dataclass(kw_only=True)
class RulebookServer:
    name: str = "ansible-rulebook"
    process: asyncio.subprocess.Process
    output: Path
    urls: list[str]
    token: str | None = None

    def pids(self) -> list[int]:
        return [self.process.pid]

    def actions(self) -> list[tuple[str, float]]:
        return parse_debug_actions(self.output.read_text(encoding="utf-8", errors="replace"))

    async def action_times(self, load: Load) -> dict[str, float]:
        first: dict[str, float] = {}
        for store, moment in self.actions():
            first.setdefault(store, moment)
        return first

    async def finished_times(self, load: Load) -> list[float]:
        return [moment for _, moment in self.actions()]

    async def drain(self, expected: int, deadline: float) -> bool:
        # No queue to ask: the output is complete once it has all actions or stops growing.
        loop = asyncio.get_running_loop()
        seen, still_since = -1, loop.time()
        while loop.time() < deadline:
            count = len(self.actions())
            if count >= expected:
                return True
            if count != seen:
                seen, still_since = count, loop.time()
            elif loop.time() - still_since > SETTLE:
                return False
            await asyncio.sleep(0.2)
        return False


@contextlib.asynccontextmanager
async def rulebook_server(
    executable: Path, workdir: Path, *, cpu: int | None
) -> AsyncIterator[RulebookServer]:
    sources = workdir / "sources"
    sources.mkdir()
    (sources / f"{WEBHOOK_SOURCE}.py").write_text(SOURCE_PLUGIN, encoding="utf-8")
    port = intake.free_port()
    rulebook = workdir / "rulebook.yml"
    rulebook.write_text(
        RULEBOOK.format(source=WEBHOOK_SOURCE, host=intake.HOST, port=port, mark=ACTION_MARK),
        encoding="utf-8",
    )
    command = pinned(
        [str(executable), "--rulebook", str(rulebook), "--source-dir", str(sources)], cpu
    )
    env = {
        **os.environ,
        "JAVA_HOME": java_home(),
        "PATH": f"{executable.parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "ANSIBLE_LOCAL_TEMP": str(workdir / "ansible-tmp"),
        "HOME": str(workdir),  # ansible-galaxy writes its caches under ~
    }
    output = workdir / "stdout.log"
    base = f"http://{intake.HOST}:{port}"
    async with child_process(
        command, stdout=output, stderr=workdir / "stderr.log", env=env, cwd=workdir
    ) as process:
        await wait_http(f"{base}/healthz", process, log_path=workdir / "stderr.log")
        yield RulebookServer(process=process, output=output, urls=[f"{base}{intake.WEBHOOK_PATH}"])


@contextlib.asynccontextmanager
async def child_process(
    command: Sequence[str],
    *,
    stdout: Path,
    stderr: Path,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
) -> AsyncIterator[asyncio.subprocess.Process]:
    """A server process stopped on exit (SIGTERM, then SIGKILL), as bench/intake.py does."""
    with stdout.open("wb") as out, stderr.open("wb") as err:
        process = await asyncio.create_subprocess_exec(
            *command,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=out,
            stderr=err,
            env=env,
            cwd=cwd,
            start_new_session=True,
        )
        try:
            yield process
        finally:
            await intake.stop_process(process)


async def wait_http(url: str, process: asyncio.subprocess.Process, *, log_path: Path) -> None:
    """Until ``url`` answers 200 (the server is up), or fail with the tail of its log."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + intake.STARTUP_TIMEOUT
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as session:
        while loop.time() < deadline and process.returncode is None:
            with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                async with session.get(url) as response:
                    if response.status == 200:
                        return
            await asyncio.sleep(0.05)
    raise BenchError(
        f"{url} did not come up (exit code {process.returncode}):\n{intake.tail(log_path)}"
    )


def state_section(
    state: str, workdir: Path, *, password_file: Path | None = None
) -> dict[str, Any]:
    """The daemon's ``state:`` config for ``--state``.

    ``sqlite`` is a fresh file per measurement; a PostgreSQL URL goes to ``state.path`` as it
    is (it carries no password: that comes from ``password_file``, else from the daemon's
    ``REMEDIATOR_STATE_PASSWORD``, which the bench's environment passes on). Nothing else here
    reads the database directly: runs come from the review API and the queue from
    ``/metrics``, so any backend and any number of replicas sharing it are measured the same
    way. Each measurement uses its own store ids, so a database shared between measurements
    does not carry rate limits from one to the next.
    """
    if state == "sqlite":
        return {"path": str(workdir / "state.sqlite")}
    if state.startswith(("postgresql://", "postgres://")):
        section: dict[str, Any] = {"path": state}
        if password_file is not None:
            section["password_file"] = str(password_file)
        return section
    raise BenchError(f"--state must be 'sqlite' or a postgresql:// URL, not {state!r}")


def daemon_config(workdir: Path, *, port: int, state: dict[str, Any]) -> dict[str, Any]:
    playbooks = workdir / "playbooks"
    playbooks.mkdir(exist_ok=True)
    (playbooks / "store-down.yaml").write_text(PLAYBOOK, encoding="utf-8")
    return {
        "server": {"host": intake.HOST, "port": port, "retry_after": RETRY_AFTER},
        "playbooks": {"directory": str(playbooks)},
        "state": state,
        # Engine defaults (queue 1000, concurrency 8): what a deployment runs with.
        "engine": {"grace_period": 5},
        "logging": {"format": "json", "level": "info"},
    }


@dataclass(kw_only=True)
class RemediatorServer:
    name: str = "remediator"
    processes: list[asyncio.subprocess.Process]
    bases: list[str]
    urls: list[str]
    token: str | None

    def pids(self) -> list[int]:
        return [p.pid for p in self.processes]

    async def runs(self, load: Load) -> list[dict[str, Any]]:
        """Every StoreDown run created since the load began, through the review API."""
        found: list[dict[str, Any]] = []
        cursor: str | None = None
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        since = f"{load.started_wall - 1:.3f}"
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:
            while True:
                params = {"alertname": "StoreDown", "since": since, "limit": "1000"}
                if cursor:
                    params["cursor"] = cursor
                async with session.get(
                    f"{self.bases[0]}/api/v1/runs", params=params, headers=headers
                ) as response:
                    if response.status != 200:
                        raise BenchError(f"/api/v1/runs: HTTP {response.status}")
                    page = await response.json()
                found.extend(page["items"])
                cursor = page.get("next_cursor")
                if not cursor:
                    return found

    async def action_times(self, load: Load) -> dict[str, float]:
        first: dict[str, float] = {}
        for run in await self.runs(load):
            if run["started_at"]:
                store = run["alert"]["labels"]["store_id"]
                moment = _epoch(run["started_at"])
                first[store] = min(first.get(store, moment), moment)
        return first

    async def finished_times(self, load: Load) -> list[float]:
        return [_epoch(r["finished_at"]) for r in await self.runs(load) if r["finished_at"]]

    async def pending(self, session: aiohttp.ClientSession) -> float:
        """Runs queued or running on every replica, from ``/metrics``."""
        pending = 0.0
        for base in self.bases:
            async with session.get(f"{base}/metrics") as response:
                text = await response.text()
            pending += sum(
                _gauge(text, name) for name in ("remediator_queue_depth", "remediator_runs_active")
            )
        return pending

    async def drain(self, expected: int, deadline: float) -> bool:
        loop = asyncio.get_running_loop()
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:
            while loop.time() < deadline:
                if await self.pending(session) == 0:
                    return True
                await asyncio.sleep(0.2)
        return False

    async def idle_while(self, busy: asyncio.Task[Any], *, every: float = 0.25) -> float:
        """Seconds, sampled every ``every``, that nothing was queued or running while ``busy``
        (the load) was still sending: a sender waiting longer than it had to."""
        idle = 0.0
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:
            while not busy.done():
                with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                    if await self.pending(session) == 0:
                        idle += every
                await asyncio.wait([busy], timeout=every)
        return idle


def _epoch(text: str) -> float:
    return datetime.fromisoformat(text).timestamp()


def _gauge(metrics_text: str, name: str) -> float:
    match = re.search(rf"^{name} (\S+)$", metrics_text, re.MULTILINE)
    return float(match[1]) if match else 0.0


@contextlib.asynccontextmanager
async def remediator_servers(
    workdir: Path,
    *,
    state: str,
    replicas: int,
    cpu: int | None,
    password_file: Path | None = None,
) -> AsyncIterator[RemediatorServer]:
    """``replicas`` daemons on one state; more than one needs a server database. With several,
    the bench's load goes to them round-robin (`Poster`)."""
    if replicas > 1 and state == "sqlite":
        raise BenchError("--replicas above 1 needs --state postgresql://... (shared state)")
    token = secrets.token_urlsafe(24)
    token_file = workdir / "token"
    token_file.write_text(token, encoding="utf-8")
    token_file.chmod(0o600)
    section = state_section(state, workdir, password_file=password_file)
    async with contextlib.AsyncExitStack() as stack:
        processes, bases = [], []
        for replica in range(replicas):
            port = intake.free_port()
            raw = daemon_config(workdir, port=port, state=section)
            config.from_mapping(raw)  # a config typo fails here, with the daemon's message
            config_path = workdir / f"config-{replica}.yaml"
            config_path.write_text(json.dumps(raw, indent=2), encoding="utf-8")  # JSON is YAML
            serve = ["serve", "--config", str(config_path), "--token-file", str(token_file)]
            command = pinned([sys.executable, "-m", "remediator", *serve], cpu)
            log_path = workdir / f"daemon-{replica}.log"
            process = await stack.enter_async_context(
                child_process(command, stdout=log_path, stderr=log_path, cwd=workdir)
            )
            base = f"http://{intake.HOST}:{port}"
            await wait_http(f"{base}/readyz", process, log_path=log_path)
            processes.append(process)
            bases.append(base)
        yield RemediatorServer(
            processes=processes,
            bases=bases,
            urls=[f"{b}{intake.WEBHOOK_PATH}" for b in bases],
            token=token,
        )


# Profiling


@contextlib.asynccontextmanager
async def profiled(
    pids: Sequence[int], out: Path | None, *, cpu: int | None
) -> AsyncIterator[None]:
    """py-spy samples the server while the load runs (on the client's CPU), when asked."""
    if out is None:
        yield
        return
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    async with contextlib.AsyncExitStack() as stack:
        for pid in pids:
            output = f"{out}-{pid}.speedscope.json"
            record = ["--rate", "200", "--format", "speedscope", "--output", output, "--idle"]
            command = pinned([py_spy, "record", "--pid", str(pid), *record, "--nonblocking"], cpu)
            log = out.with_name(f"{out.name}-{pid}.py-spy.log")
            process = await stack.enter_async_context(
                child_process(command, stdout=log, stderr=log)
            )
            stack.push_async_callback(_interrupt, process)
        await asyncio.sleep(0.5)  # py-spy attaches
        yield


async def _interrupt(process: asyncio.subprocess.Process) -> None:
    # py-spy writes its profile on SIGINT; SIGTERM would lose it.
    if process.returncode is None:
        process.send_signal(signal.SIGINT)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(process.wait(), intake.STOP_TIMEOUT)


# Measurements


@dataclass(frozen=True, slots=True, kw_only=True)
class Options:
    seconds: float
    repetitions: int
    connections: int
    open_rate: float
    burst: int
    burst_group: int
    burst_sender: str
    burst_only: bool
    skip_ansible: bool
    state: str
    replicas: int
    cache: Path
    timeout: float
    profile: Path | None
    shapes: tuple[str, ...] = ()


SHAPES = ("closed", "dispatch", "open")
SHAPE_TITLES = {
    "closed": "closed loop, 10 % new stores: alerts/s",
    "dispatch": "every alert dispatches: actions/s",
    "open": "open loop: p99 POST→action ms",
}


def process_figures(pids: Sequence[int], cpu_before: Sequence[float | None]) -> dict[str, Any]:
    cpu = [intake.cpu_delta(pid, before) for pid, before in zip(pids, cpu_before, strict=True)]
    affinity: set[int] = set()
    for pid in pids:
        with contextlib.suppress(OSError):
            affinity |= os.sched_getaffinity(pid)
    return {
        "server_cpus": sorted(affinity),
        "server_cpu_s": _round(sum(c for c in cpu if c is not None)) if any(cpu) else None,
        "peak_rss_mib": max((peak_rss_mib(pid) or 0.0) for pid in pids) or None,
    }


def peak_rss_mib(pid: int) -> float | None:
    """VmHWM of a live process: its peak resident set so far."""
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text(encoding="ascii").splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    return None


async def measure(
    server: Server, shape: str, *, options: Options, prefix: str, profile: Path | None
) -> dict[str, Any]:
    """One load shape against a freshly started server."""
    loop = asyncio.get_running_loop()
    new_share = 0.1 if shape == "closed" else 1.0
    maker = AlertMaker(prefix=prefix, new_share=new_share)
    pids = server.pids()
    cpu_before = [intake.cpu_seconds(pid) for pid in pids]
    async with profiled(pids, profile, cpu=pinning_cpus()[1]):
        if shape == "open":
            load = await open_loop(
                server.urls,
                token=server.token,
                maker=maker,
                seconds=options.seconds,
                rate=options.open_rate,
                connections=options.connections,
            )
        else:
            load = await closed_loop(
                server.urls,
                token=server.token,
                maker=maker,
                seconds=options.seconds,
                connections=options.connections,
            )
    figures: dict[str, Any] = {
        "seconds": round(load.seconds, 3),
        "accepted_alerts": load.accepted_alerts,
        "alerts_per_s": _round(load.alerts_per_s, 1),
        "new_stores": len(maker.stores),
        "refusals_503": load.refusals_503,
        "errors": len(load.errors),
        "first_errors": load.errors[:3],
        "client_cpu_s": round(load.client_cpu_s, 3),
        **process_figures(pids, cpu_before),
    }
    if shape == "dispatch":
        # The sustained rate: what was done while the load lasted, not after it.
        done = await server.finished_times(load)
        within = [t for t in done if load.started_wall <= t <= load.ended_wall]
        figures["actions_per_s"] = _round(len(within) / load.seconds, 1) if load.seconds else None
        figures["backlog_at_end"] = load.accepted_alerts - len(within)
    elif shape == "open":
        drained = await server.drain(load.accepted_alerts, loop.time() + DRAIN_TIMEOUT)
        started = await server.action_times(load)
        latency = [started[s] - load.sent_at[s] for s in load.sent_at if s in started]
        figures.update(
            drained=drained,
            actions=len(started),
            late_sends=load.late_sends,
            action_latency=intake.percentiles(latency),
        )
    return figures


def headline(shape: str, figures: dict[str, Any]) -> float | None:
    value: float | None
    if shape == "closed":
        value = figures["alerts_per_s"]
    elif shape == "dispatch":
        value = figures["actions_per_s"]
    else:
        value = figures["action_latency"]["p99_ms"]
    return value


async def run_shapes(
    options: Options, workdir: Path, rulebook: Path | None
) -> dict[str, dict[str, list[dict[str, Any]]]]:
    server_cpu, _ = pinning_cpus()
    results: dict[str, dict[str, list[dict[str, Any]]]] = {}
    count = 0
    for shape in options.shapes or SHAPES:
        per_server: dict[str, list[dict[str, Any]]] = {}
        for repetition in range(options.repetitions):
            # Interleaved, so a neighbour's load on this shared machine hits both alike.
            servers: list[str] = ([] if rulebook is None else ["ansible-rulebook"]) + ["remediator"]
            for name in servers:
                count += 1
                run_dir = workdir / f"{count:02d}-{shape}-{name}-{repetition}"
                run_dir.mkdir()
                prefix = f"t{count}-"
                profile = None
                if options.profile is not None and name == "remediator":
                    profile = options.profile / f"{shape}-{repetition}"
                async with contextlib.AsyncExitStack() as stack:
                    server: Server
                    if name == "ansible-rulebook":
                        assert rulebook is not None
                        server = await stack.enter_async_context(
                            rulebook_server(rulebook, run_dir, cpu=server_cpu)
                        )
                    else:
                        server = await stack.enter_async_context(
                            remediator_servers(
                                run_dir,
                                state=options.state,
                                replicas=options.replicas,
                                cpu=server_cpu,
                            )
                        )
                    figures = await measure(
                        server, shape, options=options, prefix=prefix, profile=profile
                    )
                per_server.setdefault(name, []).append(figures)
                print(
                    f"  {shape:<9} {name:<17} #{repetition + 1}: {_cell(headline(shape, figures))}",
                    file=sys.stderr,
                )
        results[shape] = per_server
    return results


async def run_burst(options: Options, workdir: Path) -> dict[str, Any]:
    run_dir = workdir / "burst-remediator"
    run_dir.mkdir()
    loop = asyncio.get_running_loop()
    server_cpu, _ = pinning_cpus()
    async with remediator_servers(
        run_dir, state=options.state, replicas=options.replicas, cpu=server_cpu
    ) as server:
        pids = server.pids()
        cpu_before = [intake.cpu_seconds(pid) for pid in pids]
        allowed = max(DRAIN_TIMEOUT, options.burst / 50)
        if options.burst_sender == "alertmanager":
            # Its backoff can leave a sender asleep for one longest interval after the queue
            # has room: a delay of its own making, allowed once.
            allowed += BACKOFF_MAX * (1 + BACKOFF_RANDOMIZATION)
        deadline = loop.time() + allowed
        profile = None if options.profile is None else options.profile / "burst"
        async with profiled(pids, profile, cpu=pinning_cpus()[1]):
            sending = asyncio.create_task(
                burst(
                    server.urls,
                    token=server.token,
                    prefix="burst-",
                    alerts=options.burst,
                    group=options.burst_group,
                    connections=options.connections,
                    deadline=deadline,
                    honour_retry_after=options.burst_sender == "retry-after",
                )
            )
            idle = await server.idle_while(sending)
            load = await sending
        drained = await server.drain(load.accepted_alerts, deadline)
        drained_wall = time.time()
        runs = await server.runs(load)
        figures = process_figures(pids, cpu_before)
    finished = {r["fingerprint"] for r in runs if r["status"] == "succeeded"}
    recorded = {r["fingerprint"] for r in runs}
    return {
        "alerts": options.burst,
        "group": options.burst_group,
        "sender": options.burst_sender,
        "accepted_alerts": load.accepted_alerts,
        "acknowledged_distinct": len(load.acknowledged),
        "acknowledged_seconds": round(load.seconds, 3),
        "refusals_503": load.refusals_503,
        "retried_errors": load.retried_errors,
        "errors": len(load.errors),
        "runs": len(runs),
        "runs_succeeded_distinct": len(finished),
        "drained": drained,
        "all_done_seconds": round(drained_wall - load.started_wall, 3),
        "idle_while_sending_s": idle,
        # Lost: acknowledged, yet no run was recorded for it. A run not (yet) succeeded at the
        # deadline is durable, so not lost, nor is an alert never acknowledged (its sender
        # still has it); both fail the burst all the same.
        "lost": len(load.acknowledged - recorded),
        "not_done": len(load.acknowledged - finished),
        "unacknowledged": options.burst - len(load.acknowledged),
        **figures,
    }


def summarize(results: dict[str, dict[str, list[dict[str, Any]]]]) -> dict[str, Any]:
    summary: dict[str, Any] = {}
    for shape, per_server in results.items():
        row: dict[str, Any] = {}
        for name, figures in per_server.items():
            values = [v for v in (headline(shape, f) for f in figures) if v is not None]
            row[name] = {
                "median": _round(statistics.median(values), 1) if values else None,
                "min": min(values, default=None),
                "max": max(values, default=None),
            }
            if shape == "dispatch":
                accepted = [f["alerts_per_s"] for f in figures if f["alerts_per_s"]]
                row[name]["accepted_alerts_per_s"] = (
                    _round(statistics.median(accepted), 1) if accepted else None
                )
        ours, theirs = row.get("remediator"), row.get("ansible-rulebook")
        if ours and theirs and ours["median"] and theirs["median"]:
            row["ratio"] = round(ours["median"] / theirs["median"], 2)
        summary[shape] = row
    return summary


async def run_compare(options: Options, workdir: Path) -> dict[str, Any]:
    server_cpu, client_cpu = pinning_cpus()
    if client_cpu is not None:
        os.sched_setaffinity(0, {client_cpu})
    rulebook = None
    if not options.skip_ansible and not options.burst_only:
        java_home()
        rulebook = await asyncio.to_thread(ensure_ansible_rulebook, options.cache)
    results = {} if options.burst_only else await run_shapes(options, workdir, rulebook)
    burst_figures = await run_burst(options, workdir) if options.burst else None
    summary = summarize(results)
    checks = {
        "no_errors": all(
            f["errors"] == 0 for per in results.values() for fs in per.values() for f in fs
        ),
        "open_loop_drained": all(
            f["drained"] for fs in results.get("open", {}).values() for f in fs
        ),
    }
    if burst_figures is not None:
        checks["burst_lost_nothing"] = burst_figures["lost"] == 0
        checks["burst_all_acknowledged"] = burst_figures["unacknowledged"] == 0
        checks["burst_all_done"] = burst_figures["not_done"] == 0
    return {
        "bench": "compare",
        "config": {
            "seconds": options.seconds,
            "repetitions": options.repetitions,
            "connections": options.connections,
            "open_rate": options.open_rate,
            "state": options.state.split("@")[-1],  # never the password of a URL
            "replicas": options.replicas,
            "pinned": {"server_cpu": server_cpu, "client_cpu": client_cpu},
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "ansible_rulebook": None if options.skip_ansible else ANSIBLE_RULEBOOK_VERSION,
        },
        "results": results,
        "summary": summary,
        "burst": burst_figures,
        "checks": checks,
        "complete": all(checks.values()),
    }


def print_report(report: dict[str, Any]) -> None:
    cfg, summary = report["config"], report["summary"]
    print(
        f"compare: {cfg['seconds']} s per test, {cfg['repetitions']} repetitions (median "
        f"[min-max]), {cfg['connections']} connections, open loop {cfg['open_rate']} alerts/s, "
        f"state {cfg['state']} x{cfg['replicas']}, pinned {cfg['pinned']}"
    )
    header = f"{'':<42}{'ansible-rulebook':>24}{'remediator':>24}{'ratio':>8}"
    print(header)
    print("-" * len(header))

    def cell(figure: dict[str, Any] | None) -> str:
        if not figure or figure["median"] is None:
            return "-"
        return f"{figure['median']:,} [{figure['min']:,}-{figure['max']:,}]"

    for shape in SHAPES:
        if shape not in summary:
            continue
        row = summary[shape]
        title = SHAPE_TITLES[shape]
        if shape == "open":
            title = f"open loop {cfg['open_rate']:g}/s: p99 POST→action ms"
        print(
            f"{title:<42}{cell(row.get('ansible-rulebook')):>24}"
            f"{cell(row.get('remediator')):>24}{_cell(row.get('ratio')):>8}"
        )
        if shape == "dispatch":
            accepted = {
                name: row[name]["accepted_alerts_per_s"]
                for name in ("ansible-rulebook", "remediator")
                if name in row
            }
            print(
                f"{'  (accepted alerts/s)':<42}{_cell(accepted.get('ansible-rulebook')):>24}"
                f"{_cell(accepted.get('remediator')):>24}"
            )
    print("-" * len(header))
    print("ratio = remediator ÷ ansible-rulebook (for the latency row, lower is better)")
    for shape in SHAPES:
        for name, figures in report["results"].get(shape, {}).items():
            extra = ""
            if shape == "dispatch":
                extra = f", backlog at end {[f['backlog_at_end'] for f in figures]}"
            if shape == "open":
                extra = f", p50 ms {[f['action_latency']['p50_ms'] for f in figures]}"
            print(
                f"  {shape} {name}: 503s {[f['refusals_503'] for f in figures]}, "
                f"server CPU s {[f['server_cpu_s'] for f in figures]}, "
                f"peak RSS MiB {[f['peak_rss_mib'] for f in figures]}{extra}"
            )
    if report["burst"] is not None:
        b = report["burst"]
        print(
            f"burst: {b['alerts']:,} alerts in groups of {b['group']} ({b['sender']} sender): "
            f"acknowledged {b['acknowledged_distinct']:,} in {b['acknowledged_seconds']} s "
            f"({b['refusals_503']} 503s, {b['retried_errors']} errors retried), "
            f"{b['runs_succeeded_distinct']:,} runs succeeded, lost {b['lost']}, not done "
            f"{b['not_done']}, unacknowledged {b['unacknowledged']}, "
            f"all done in {b['all_done_seconds']} s "
            f"(queue empty while senders waited {b['idle_while_sending_s']} s), "
            f"server CPU {b['server_cpu_s']} s, peak RSS {b['peak_rss_mib']} MiB"
        )
    failed = [name for name, ok in report["checks"].items() if not ok]
    print("checks: all passed" if not failed else f"checks FAILED: {', '.join(failed)}")


def _round(value: float | None, digits: int = 3) -> float | None:
    return None if value is None else round(value, digits)


def _cell(value: object) -> str:
    return "-" if value is None else f"{value:,}" if isinstance(value, int | float) else str(value)


QUICK = {"seconds": 1.5, "repetitions": 1, "open_rate": 50.0, "burst": 200, "burst_group": 50}


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.compare",
        description="remediator vs ansible-rulebook on the same webhook load shapes.",
    )
    parser.add_argument("--seconds", type=float, default=10.0, help="load per test (10)")
    parser.add_argument("--repetitions", type=int, default=3, help="per shape and server (3)")
    parser.add_argument("--connections", type=int, default=16, help="client connections (16)")
    parser.add_argument("--open-rate", type=float, default=400.0, help="open loop alerts/s")
    parser.add_argument("--burst", type=int, default=10_000, help="burst alerts (0: none)")
    parser.add_argument("--burst-group", type=int, default=500, help="alerts per burst webhook")
    parser.add_argument(
        "--burst-sender",
        choices=("retry-after", "alertmanager"),
        default="retry-after",
        help="on a 503, wait its Retry-After (default) or, as Alertmanager does, ignore it and "
        "back off exponentially",
    )
    parser.add_argument(
        "--burst-only", action="store_true", help="only the burst (no load shapes, no install)"
    )
    parser.add_argument("--skip-ansible", action="store_true", help="measure remediator only")
    parser.add_argument(
        "--shapes",
        nargs="+",
        choices=SHAPES,
        default=list(SHAPES),
        help="load shapes to measure (all)",
    )
    parser.add_argument(
        "--state",
        default="sqlite",
        help="remediator's state: sqlite (a fresh file per test) or a postgresql:// URL",
    )
    parser.add_argument("--replicas", type=int, default=1, help="remediator processes (1)")
    parser.add_argument(
        "--cache-dir",
        type=Path,
        default=ROOT / ".bench",
        help="where ansible-rulebook's virtualenv lives (default .bench/)",
    )
    parser.add_argument(
        "--profile",
        type=Path,
        metavar="DIR",
        help="py-spy speedscope profiles of remediator under each load, into DIR",
    )
    parser.add_argument("--timeout", type=float, default=1200.0, help="global deadline (s)")
    parser.add_argument("--quick", action="store_true", help="smoke run: tiny loads, 1 rep")
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write the report here")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    args = parser.parse_args(argv)
    if args.quick:
        for name, value in QUICK.items():
            if parser.get_default(name) == getattr(args, name):
                setattr(args, name, value)
    if args.seconds <= 0 or args.repetitions < 1 or args.connections < 1 or args.replicas < 1:
        parser.error("--seconds, --repetitions, --connections and --replicas must be positive")
    if args.open_rate <= 0 or args.burst < 0 or args.burst_group < 1:
        parser.error("--open-rate and --burst-group must be positive, --burst at least 0")
    if args.burst_only and not args.burst:
        parser.error("--burst-only needs a --burst above 0")
    return args


async def _main(options: Options, *, keep: bool) -> dict[str, Any]:
    task = asyncio.current_task()
    assert task is not None
    # SIGTERM unwinds like Ctrl-C: cancellation, so every server is stopped on the way out.
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    if options.profile is not None:
        options.profile.mkdir(parents=True, exist_ok=True)
    with intake.work_directory(keep) as workdir:
        async with asyncio.timeout(options.timeout):
            return await run_compare(options, workdir)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    options = Options(
        seconds=args.seconds,
        repetitions=args.repetitions,
        connections=args.connections,
        open_rate=args.open_rate,
        burst=args.burst,
        burst_group=args.burst_group,
        burst_sender=args.burst_sender,
        burst_only=args.burst_only,
        skip_ansible=args.skip_ansible,
        state=args.state,
        replicas=args.replicas,
        cache=args.cache_dir,
        timeout=args.timeout,
        profile=args.profile.resolve() if args.profile else None,
        shapes=tuple(args.shapes),
    )
    return intake.run_to_exit_status(
        "compare",
        lambda: asyncio.run(_main(options, keep=args.keep)),
        timeout=options.timeout,
        show=print_report,
        json_path=args.json,
    )


if __name__ == "__main__":
    raise SystemExit(main())
