"""Intake benchmark: webhook payloads streamed at a running daemon, next to a parse-only server.

Both servers run as separate processes on 127.0.0.1, so this load generator shares neither
their event loop nor their CPU accounting. The same payload stream (Alertmanager-style groups of
1-10 distinct alerts, plus exact repeats of earlier payloads) goes first to a bare aiohttp server
that only parses the JSON (three passes, the median reported), then to ``python -m remediator
serve`` with one quick ``log`` playbook, so every new alert becomes a real, audited run.

Reported per server: accepted alerts/s (alerts in 2xx answers over the stream's wall time) and
POST→2xx latency; for the daemon also POST→run created and POST→run finished, read from its
SQLite file with the same wall clock (``time.time()``) the POSTs were stamped with. The figure
is the ratio daemon/baseline of accepted alerts/s.

    python bench/intake.py [--alerts N] [--concurrency C] [--repeat-ratio R] [--quick]
                           [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import hashlib
import json
import os
import platform
import random
import secrets
import signal
import socket
import sqlite3
import sys
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from remediator import config

HOST = "127.0.0.1"  # loopback only, by construction: no flag changes it
WEBHOOK_PATH = "/webhook/alertmanager"
ALERTNAME = "BenchAlert"
PLAYBOOK = """\
name: bench-log
description: One quick step per alert, so every accepted alert becomes a real, audited run.
priority: 10
trigger:
  matchers:
    - alertname="BenchAlert"
target: "bench-{{ alert.labels.bench_id }}"
# Thousands of distinct targets firing one alertname is a storm to the safety envelope, and
# rate limits would refuse most runs: lifted, so every new alert becomes a run to measure.
safety:
  target_rate: null
  playbook_rate: null
  cooldown: 0
  storm: null
steps:
  - name: record
    action: log
    params:
      message: "bench alert {{ alert.labels.bench_id }}"
      level: debug
"""
DEFAULT_ALERTS = 5000
DEFAULT_CONCURRENCY = 32
QUICK_ALERTS = 200
QUICK_CONCURRENCY = 8
STARTUP_TIMEOUT = 30.0
STOP_TIMEOUT = 15.0
POLL_INTERVAL = 0.1
MAX_BODY_BYTES = 1024 * 1024
SCRIPT = Path(__file__).resolve()
BASELINE_PASSES = 3
"""The parse-only stream lasts well under a second, so one pass is noisy; the median of three."""


class BenchError(Exception):
    """The bench could not measure: a server did not start, or the environment is unusable."""


# Payloads


@dataclass(frozen=True, slots=True, kw_only=True)
class Payload:
    body: bytes
    fingerprints: tuple[str, ...]
    repeat_of: int | None = None
    """Index (among the originals) of the payload this one repeats byte for byte."""

    @property
    def alerts(self) -> int:
        return len(self.fingerprints)


def build_payloads(
    alerts: int, *, repeat_ratio: float, concurrency: int, seed: int
) -> list[Payload]:
    """``alerts`` distinct alerts in groups of 1-10, plus ~``repeat_ratio`` repeated payloads.

    A repeat trails its original by at least ``concurrency`` payloads when the stream allows,
    so the original is normally admitted first, as with Alertmanager's re-sends.
    """
    rng = random.Random(seed)
    base = datetime.now(UTC) - timedelta(hours=1)
    originals: list[Payload] = []
    made = 0
    while made < alerts:
        size = min(rng.randint(1, 10), alerts - made)
        originals.append(_group(len(originals), range(made, made + size), base))
        made += size
    repeats = round(repeat_ratio * len(originals))
    stream = list(originals)
    positions = rng.sample(range(1, len(originals) + 1), min(repeats, len(originals)))
    # Insert from the back, so each position still counts originals ahead of it.
    for position in sorted(positions, reverse=True):
        gap = min(concurrency, position - 1)
        source = rng.randrange(0, position - gap)
        stream.insert(position, dataclasses.replace(originals[source], repeat_of=source))
    return stream


def _group(group: int, ids: range, base: datetime) -> Payload:
    name = f"g{group}"
    alerts = [_alert(i, name, base) for i in ids]
    body = {
        "receiver": "remediator",
        "status": "firing",
        "alerts": alerts,
        "groupLabels": {"alertname": ALERTNAME, "group": name},
        "commonLabels": {"alertname": ALERTNAME, "group": name, "job": "bench"},
        "commonAnnotations": {},
        "externalURL": "http://alertmanager.bench:9093",
        "version": "4",
        "groupKey": f'{{}}:{{alertname="{ALERTNAME}", group="{name}"}}',
        "truncatedAlerts": 0,
    }
    return Payload(
        body=json.dumps(body).encode(), fingerprints=tuple(a["fingerprint"] for a in alerts)
    )


def _alert(i: int, group: str, base: datetime) -> dict[str, Any]:
    starts_at = base + timedelta(milliseconds=i)
    return {
        "status": "firing",
        "labels": {
            "alertname": ALERTNAME,
            "bench_id": str(i),
            "group": group,
            "instance": f"10.0.{i // 250 % 256}.{i % 250}:9100",
            "job": "bench",
            "severity": "warning",
        },
        "annotations": {"summary": f"bench alert {i}"},
        "startsAt": starts_at.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "endsAt": "0001-01-01T00:00:00Z",
        "generatorURL": f"http://prometheus.bench:9090/graph?g0.expr=bench_up%7Bid%3D%22{i}%22%7D",
        "fingerprint": hashlib.sha256(f"bench-{i}".encode()).hexdigest()[:16],
    }


# Load generator


@dataclass(slots=True, kw_only=True)
class Delivery:
    payload: int
    sent_wall: float
    """time.time() just before the first attempt: comparable with the daemon's timestamps."""
    sent: float
    done: float = 0.0
    status: int = 0
    duplicates: int = 0
    refusals_503: int = 0
    error: str | None = None

    @property
    def accepted(self) -> bool:
        return 200 <= self.status < 300


@dataclass(slots=True, kw_only=True)
class Stream:
    deliveries: list[Delivery] = field(default_factory=list)
    started: float = 0.0
    finished: float = 0.0
    client_cpu_s: float = 0.0
    cut_by_deadline: bool = False

    @property
    def seconds(self) -> float:
        return self.finished - self.started


async def stream_payloads(
    url: str,
    payloads: Sequence[Payload],
    *,
    token: str | None,
    concurrency: int,
    deadline: float,
) -> Stream:
    """POST every payload in order over at most ``concurrency`` connections, until ``deadline``.

    A 503 is retried after its Retry-After (the daemon's queue is full; Alertmanager would do
    the same); any other failure is recorded and not retried.
    """
    loop = asyncio.get_running_loop()
    headers = {"Content-Type": "application/json"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    result = Stream()
    queue = iter(enumerate(payloads))

    async def deliver(session: aiohttp.ClientSession, index: int, payload: Payload) -> Delivery:
        delivery = Delivery(payload=index, sent_wall=time.time(), sent=time.perf_counter())
        while True:
            pause = None
            try:
                async with session.post(url, data=payload.body, headers=headers) as response:
                    delivery.status = response.status
                    if response.status == 503:
                        delivery.refusals_503 += 1
                        await response.read()
                        pause = float(response.headers.get("Retry-After", "1"))
                    elif delivery.accepted:
                        answer = await response.json()
                        delivery.duplicates = int(answer.get("duplicates", 0))
                    else:
                        text = await response.text()
                        delivery.error = f"HTTP {response.status}: {text[:200]}"
            except (aiohttp.ClientError, TimeoutError, ValueError) as e:
                delivery.error = f"{type(e).__name__}: {e}"[:300]
            if pause is None:
                break
            if loop.time() + pause >= deadline:
                delivery.error = "503, and the deadline leaves no time to retry"
                break
            await asyncio.sleep(pause)  # outside the request: the connection is free meanwhile
        delivery.done = time.perf_counter()
        return delivery

    async def worker(session: aiohttp.ClientSession) -> None:
        for index, payload in queue:
            if loop.time() >= deadline:
                result.cut_by_deadline = True
                return
            result.deliveries.append(await deliver(session, index, payload))

    connector = aiohttp.TCPConnector(limit=concurrency)
    timeout = aiohttp.ClientTimeout(total=max(1.0, deadline - loop.time()))
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        cpu = time.process_time()
        result.started = time.perf_counter()
        await asyncio.gather(*(worker(session) for _ in range(concurrency)))
        result.finished = time.perf_counter()
        result.client_cpu_s = time.process_time() - cpu
    result.deliveries.sort(key=lambda d: d.payload)
    return result


# Server processes


@contextlib.asynccontextmanager
async def server_process(
    command: Sequence[str], *, log_path: Path, pipe_stdout: bool = False
) -> AsyncIterator[asyncio.subprocess.Process]:
    """A child process that is always stopped on exit: SIGTERM, then SIGKILL after a while."""
    with log_path.open("wb") as log:
        process = await asyncio.create_subprocess_exec(
            *command,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE if pipe_stdout else log,
            stderr=log,
            # Its own session: a Ctrl-C in the terminal reaches only us, and we stop it in order.
            start_new_session=True,
        )
        try:
            yield process
        finally:
            await stop_process(process)


async def stop_process(process: asyncio.subprocess.Process) -> None:
    if process.returncode is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        process.terminate()
    try:
        await asyncio.wait_for(process.wait(), STOP_TIMEOUT)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        await process.wait()
    except BaseException:
        # Cancelled again while waiting (a second Ctrl-C): leave nothing running behind us.
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        raise


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of a process (all its threads), from /proc; None elsewhere."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text(encoding="ascii")
    except OSError:
        return None
    # Fields after the parenthesised command name start at field 3 (state); utime and stime
    # are fields 14 and 15, in clock ticks.
    fields = text[text.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((HOST, 0))
        return int(probe.getsockname()[1])


def tail(path: Path, lines: int = 20) -> str:
    with contextlib.suppress(OSError):
        return "\n".join(path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:])
    return ""


def cpu_delta(pid: int, before: float | None) -> float | None:
    now = cpu_seconds(pid)
    return None if now is None or before is None else now - before


# Baseline


async def serve_baseline(port: int) -> None:
    """A bare aiohttp server: read the body, parse the JSON, answer 200. Nothing else."""

    async def receive(request: web.Request) -> web.Response:
        raw = json.loads(await request.read())
        return web.json_response({"alerts": len(raw["alerts"]), "duplicates": 0})

    app = web.Application(client_max_size=MAX_BODY_BYTES)
    app.router.add_post(WEBHOOK_PATH, receive)
    # As the daemon does: no access log, so both servers do the same per-request work.
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        site = web.TCPSite(runner, HOST, port)
        await site.start()
        bound = runner.addresses[0][1]
        print(f"listening {HOST}:{bound}", flush=True)  # the parent waits for this line
        await stop.wait()
    finally:
        await runner.cleanup()


async def measure_baseline(
    payloads: Sequence[Payload], *, concurrency: int, deadline: float, workdir: Path
) -> dict[str, Any]:
    command = [sys.executable, str(SCRIPT), "--baseline-server", "0"]
    log_path = workdir / "baseline.log"
    async with server_process(command, log_path=log_path, pipe_stdout=True) as process:
        assert process.stdout is not None
        try:
            line = await asyncio.wait_for(process.stdout.readline(), STARTUP_TIMEOUT)
        except TimeoutError:
            line = b""
        if not line.startswith(b"listening "):
            raise BenchError(f"baseline server did not start:\n{tail(log_path)}")
        url = f"http://{line.split()[1].decode()}{WEBHOOK_PATH}"
        passes = []
        for _ in range(BASELINE_PASSES):
            before = cpu_seconds(process.pid)
            stream = await stream_payloads(
                url, payloads, token=None, concurrency=concurrency, deadline=deadline
            )
            cpu = cpu_delta(process.pid, before)
            passes.append({**intake_figures(stream, payloads), "cpu_s_stream": _round(cpu)})
    # The server keeps no state, so passes are interchangeable; the median one is reported.
    passes.sort(key=lambda figures: figures["alerts_per_s"] or 0.0)
    median = passes[len(passes) // 2]
    return {**median, "passes_alerts_per_s": [figures["alerts_per_s"] for figures in passes]}


# Daemon


@dataclass(frozen=True, slots=True, kw_only=True)
class RunRow:
    fingerprint: str
    status: str
    created_at: float
    finished_at: float | None


def daemon_config(workdir: Path, *, port: int, queue_size: int) -> dict[str, Any]:
    playbooks = workdir / "playbooks"
    playbooks.mkdir()
    (playbooks / "bench.yaml").write_text(PLAYBOOK, encoding="utf-8")
    return {
        "server": {"host": HOST, "port": port, "retry_after": 1},
        "playbooks": {"directory": str(playbooks)},
        "state": {"path": str(workdir / "state.sqlite")},
        "engine": {"queue_size": queue_size, "grace_period": 5},
        # Level warning: the bench measures intake and runs, not log rendering.
        "logging": {"format": "json", "level": "warning"},
    }


async def measure_daemon(
    payloads: Sequence[Payload],
    *,
    concurrency: int,
    queue_size: int,
    deadline: float,
    workdir: Path,
) -> dict[str, Any]:
    token = secrets.token_urlsafe(24)
    token_file = workdir / "token"
    token_file.write_text(token, encoding="utf-8")
    token_file.chmod(0o600)
    port = free_port()
    raw = daemon_config(workdir, port=port, queue_size=queue_size)
    config.from_mapping(raw)  # fail here, with the daemon's own message, on a config typo
    config_path = workdir / "config.yaml"
    config_path.write_text(json.dumps(raw, indent=2), encoding="utf-8")  # JSON is YAML
    state_path = Path(raw["state"]["path"])
    command = [
        sys.executable,
        "-m",
        "remediator",
        "serve",
        "--config",
        str(config_path),
        "--token-file",
        str(token_file),
    ]
    base = f"http://{HOST}:{port}"
    log_path = workdir / "daemon.log"
    async with server_process(command, log_path=log_path) as process:
        await wait_ready(f"{base}/readyz", process, log_path=log_path)
        before = cpu_seconds(process.pid)
        stream = await stream_payloads(
            f"{base}{WEBHOOK_PATH}",
            payloads,
            token=token,
            concurrency=concurrency,
            deadline=deadline,
        )
        cpu_stream = cpu_delta(process.pid, before)
        # One run per new alert the daemon acknowledged (the bench playbook matches them all).
        acknowledged = sum(
            payloads[d.payload].alerts - d.duplicates for d in stream.deliveries if d.accepted
        )
        drained = await wait_for_runs(
            state_path, expected=acknowledged, process=process, deadline=deadline
        )
        cpu_total = cpu_delta(process.pid, before)
    rows, duplicates_audited = read_state(state_path)
    figures = intake_figures(stream, payloads)
    figures.update(recorded_figures(stream, payloads, rows))
    log_lines = tail(log_path, lines=10**6).splitlines()
    figures.update(
        duplicates_audited=duplicates_audited,
        drained=drained,
        cpu_s_stream=_round(cpu_stream),
        cpu_s_total=_round(cpu_total),
        exit_code=process.returncode,
        log_lines=len(log_lines),
        log_tail=log_lines[-5:],
    )
    return figures


async def wait_ready(url: str, process: asyncio.subprocess.Process, *, log_path: Path) -> None:
    # The daemon announces itself (daemon_listening) only at log level info, and the bench
    # runs it at warning; /readyz is its readiness contract for probes, so ask that.
    loop = asyncio.get_running_loop()
    deadline = loop.time() + STARTUP_TIMEOUT
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as session:
        while loop.time() < deadline:
            if process.returncode is not None:
                break
            with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                async with session.get(url) as response:
                    if response.status == 200:
                        return
            await asyncio.sleep(0.05)
    raise BenchError(
        f"daemon not ready (exit code {process.returncode}); its log:\n{tail(log_path)}"
    )


def _connect_readonly(path: Path) -> sqlite3.Connection:
    return sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)


def count_unfinished(path: Path) -> tuple[int, int]:
    with contextlib.closing(_connect_readonly(path)) as conn:
        total, unfinished = conn.execute(
            "SELECT count(*), count(*) - count(finished_at) FROM runs WHERE alertname = ?",
            (ALERTNAME,),
        ).fetchone()
    return int(total), int(unfinished)


async def wait_for_runs(
    path: Path, *, expected: int, process: asyncio.subprocess.Process, deadline: float
) -> bool:
    """Until ``expected`` runs are finished (True), or the deadline or the daemon's exit (False)."""
    loop = asyncio.get_running_loop()
    while True:
        total, unfinished = await asyncio.to_thread(count_unfinished, path)
        if total >= expected and unfinished == 0:
            return True
        if loop.time() >= deadline or process.returncode is not None:
            return False
        await asyncio.sleep(POLL_INTERVAL)


def read_state(path: Path) -> tuple[list[RunRow], int]:
    with contextlib.closing(_connect_readonly(path)) as conn:
        rows = [
            RunRow(fingerprint=fp, status=status, created_at=created, finished_at=finished)
            for fp, status, created, finished in conn.execute(
                "SELECT fingerprint, status, created_at, finished_at FROM runs"
                " WHERE alertname = ? ORDER BY id",
                (ALERTNAME,),
            )
        ]
        (duplicates,) = conn.execute(
            "SELECT count(*) FROM audit WHERE kind = 'alert_duplicate' AND alertname = ?",
            (ALERTNAME,),
        ).fetchone()
    return rows, int(duplicates)


# Figures


def percentiles(seconds: Sequence[float]) -> dict[str, float | int | None]:
    """Nearest-rank p50/p99/max in milliseconds."""
    ordered = sorted(seconds)
    if not ordered:
        return {"n": 0, "p50_ms": None, "p99_ms": None, "max_ms": None}

    def rank(q: float) -> float:
        index = max(0, min(len(ordered) - 1, -(-len(ordered) * q // 100) - 1))
        return round(ordered[int(index)] * 1000, 2)

    return {"n": len(ordered), "p50_ms": rank(50), "p99_ms": rank(99), "max_ms": rank(100)}


def intake_figures(stream: Stream, payloads: Sequence[Payload]) -> dict[str, Any]:
    accepted = [d for d in stream.deliveries if d.accepted]
    alerts = sum(payloads[d.payload].alerts for d in accepted)
    duplicates = sum(d.duplicates for d in accepted)
    seconds = stream.seconds
    errors = [d.error for d in stream.deliveries if d.error]
    return {
        "sent_payloads": len(stream.deliveries),
        "sent_alerts": sum(payloads[d.payload].alerts for d in stream.deliveries),
        "accepted_payloads": len(accepted),
        "accepted_alerts": alerts,
        "new_alerts": alerts - duplicates,
        "duplicates": duplicates,
        "refusals_503": sum(d.refusals_503 for d in stream.deliveries),
        "errors": len(errors),
        "first_errors": errors[:3],
        "cut_by_deadline": stream.cut_by_deadline,
        "seconds": round(seconds, 3),
        "alerts_per_s": round(alerts / seconds, 1) if seconds > 0 else None,
        "payloads_per_s": round(len(accepted) / seconds, 1) if seconds > 0 else None,
        "accepted_latency": percentiles([d.done - d.sent for d in accepted]),
        "client_cpu_s": round(stream.client_cpu_s, 3),
    }


def recorded_figures(
    stream: Stream, payloads: Sequence[Payload], rows: Sequence[RunRow]
) -> dict[str, Any]:
    # An alert's clock starts at the first POST that carried it: its original payload.
    first_sent: dict[str, float] = {}
    for delivery in stream.deliveries:
        for fingerprint in payloads[delivery.payload].fingerprints:
            first_sent.setdefault(fingerprint, delivery.sent_wall)
    created = [
        r.created_at - first_sent[r.fingerprint] for r in rows if r.fingerprint in first_sent
    ]
    finished = [
        r.finished_at - first_sent[r.fingerprint]
        for r in rows
        if r.finished_at is not None and r.fingerprint in first_sent
    ]
    finished_at = [r.finished_at for r in rows if r.finished_at is not None]
    start = min(first_sent.values(), default=0.0)
    span = max(finished_at) - start if finished_at else 0.0
    return {
        "runs_recorded": len(rows),
        "runs_finished": len(finished_at),
        "runs_by_status": dict(Counter(r.status for r in rows)),
        "recorded_seconds": round(span, 3),
        "runs_per_s": round(len(finished_at) / span, 1) if span > 0 else None,
        "created_latency": percentiles(created),
        "finished_latency": percentiles(finished),
    }


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


# Orchestration


@dataclass(frozen=True, slots=True, kw_only=True)
class Options:
    alerts: int
    concurrency: int
    repeat_ratio: float
    queue_size: int
    timeout: float
    seed: int


async def run_bench(options: Options, workdir: Path) -> dict[str, Any]:
    payloads = build_payloads(
        options.alerts,
        repeat_ratio=options.repeat_ratio,
        concurrency=options.concurrency,
        seed=options.seed,
    )
    repeats = [p for p in payloads if p.repeat_of is not None]
    loop = asyncio.get_running_loop()
    deadline = loop.time() + options.timeout
    # Baseline first, daemon second, never both at once: each gets the whole machine.
    (workdir / "baseline").mkdir()
    (workdir / "daemon").mkdir()
    baseline = await measure_baseline(
        payloads, concurrency=options.concurrency, deadline=deadline, workdir=workdir / "baseline"
    )
    daemon = await measure_daemon(
        payloads,
        concurrency=options.concurrency,
        queue_size=options.queue_size,
        deadline=deadline,
        workdir=workdir / "daemon",
    )
    repeat_alerts = sum(p.alerts for p in repeats)
    checks = {
        "all_alerts_new_once": daemon["new_alerts"] == options.alerts,
        "duplicates_equal_repeats": daemon["duplicates"] == repeat_alerts,
        "runs_recorded_all": daemon["runs_recorded"] == options.alerts,
        "runs_finished_all": daemon["runs_finished"] == options.alerts,
        "baseline_accepted_all": baseline["accepted_payloads"] == len(payloads),
        "daemon_exit_0": daemon["exit_code"] == 0,
    }
    ratio = (
        round(daemon["alerts_per_s"] / baseline["alerts_per_s"], 4)
        if daemon["alerts_per_s"] and baseline["alerts_per_s"]
        else None
    )
    return {
        "bench": "intake",
        "config": {
            "alerts": options.alerts,
            "payloads": len(payloads),
            "repeat_payloads": len(repeats),
            "repeat_alerts": repeat_alerts,
            "repeat_ratio": options.repeat_ratio,
            "concurrency": options.concurrency,
            "queue_size": options.queue_size,
            "seed": options.seed,
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "aiohttp": aiohttp.__version__,
        },
        "baseline": baseline,
        "daemon": daemon,
        "ratio": ratio,
        "checks": checks,
        "complete": all(checks.values()),
    }


def print_report(report: dict[str, Any]) -> None:
    cfg, base, daemon = report["config"], report["baseline"], report["daemon"]
    print(
        f"intake bench: {cfg['alerts']} alerts in {cfg['payloads']} payloads "
        f"({cfg['repeat_payloads']} repeats = {cfg['repeat_alerts']} alerts), "
        f"concurrency {cfg['concurrency']}, {cfg['cpus']} cpus"
    )
    header = f"{'':<28}{'alerts/s':>10}{'p50 ms':>10}{'p99 ms':>10}{'server CPU s':>14}"
    print(header)
    print("-" * len(header))

    def row(name: str, rate: object, latency: dict[str, Any], cpu: object) -> None:
        print(
            f"{name:<28}{_cell(rate):>10}{_cell(latency['p50_ms']):>10}"
            f"{_cell(latency['p99_ms']):>10}{_cell(cpu):>14}"
        )

    row("baseline POST→200", base["alerts_per_s"], base["accepted_latency"], base["cpu_s_stream"])
    row(
        "daemon POST→2xx",
        daemon["alerts_per_s"],
        daemon["accepted_latency"],
        daemon["cpu_s_stream"],
    )
    row("daemon POST→run created", None, daemon["created_latency"], None)
    row(
        "daemon POST→run finished",
        daemon["runs_per_s"],
        daemon["finished_latency"],
        daemon["cpu_s_total"],
    )
    print("-" * len(header))
    print(f"ratio daemon/baseline (accepted alerts/s): {_cell(report['ratio'])}")
    print(
        f"duplicates {daemon['duplicates']} (sent {cfg['repeat_alerts']}), "
        f"503s {daemon['refusals_503']}, errors {daemon['errors']} / {base['errors']} (baseline), "
        f"runs {daemon['runs_finished']}/{daemon['runs_recorded']} finished "
        f"{daemon['runs_by_status']}"
    )
    print(
        f"client CPU s: {base['client_cpu_s']} (baseline), {daemon['client_cpu_s']} (daemon); "
        f"stream {base['seconds']} s / {daemon['seconds']} s"
    )
    failed = [name for name, ok in report["checks"].items() if not ok]
    print("checks: all passed" if not failed else f"checks FAILED: {', '.join(failed)}")


def _cell(value: object) -> str:
    return "-" if value is None else str(value)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="bench/intake.py",
        description="Accepted alerts/s and POST→run latency of the daemon vs a parse-only server.",
    )
    parser.add_argument("--alerts", type=int, help=f"distinct alerts (default {DEFAULT_ALERTS})")
    parser.add_argument(
        "--concurrency", type=int, help=f"client connections (default {DEFAULT_CONCURRENCY})"
    )
    parser.add_argument(
        "--repeat-ratio", type=float, default=0.1, help="repeated payloads per original payload"
    )
    parser.add_argument(
        "--queue-size",
        type=int,
        default=100_000,
        help="daemon engine.queue_size; small values exercise 503 + Retry-After",
    )
    parser.add_argument(
        "--timeout", type=float, default=300.0, help="global deadline in seconds (default 300)"
    )
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"smoke run: {QUICK_ALERTS} alerts, concurrency {QUICK_CONCURRENCY}",
    )
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write the report here")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (logs, db)")
    parser.add_argument("--baseline-server", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.alerts is None:
        args.alerts = QUICK_ALERTS if args.quick else DEFAULT_ALERTS
    if args.concurrency is None:
        args.concurrency = QUICK_CONCURRENCY if args.quick else DEFAULT_CONCURRENCY
    if args.alerts < 1 or args.concurrency < 1 or not 0 <= args.repeat_ratio <= 1:
        parser.error("--alerts and --concurrency must be >= 1, --repeat-ratio within [0, 1]")
    return args


@contextlib.contextmanager
def work_directory(keep: bool) -> Iterator[Path]:
    if keep:
        path = Path(tempfile.mkdtemp(prefix="remediator-bench-"))
        print(f"work directory: {path}", file=sys.stderr)
        yield path
        return
    with tempfile.TemporaryDirectory(prefix="remediator-bench-") as name:
        yield Path(name)


async def _main(options: Options, *, keep: bool) -> dict[str, Any]:
    task = asyncio.current_task()
    assert task is not None
    # SIGTERM unwinds like Ctrl-C does: cancellation, so the servers are stopped on the way out.
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    with work_directory(keep) as workdir:
        # A backstop past the deadline the stream and the drain honour themselves.
        async with asyncio.timeout(options.timeout + 2 * STOP_TIMEOUT + STARTUP_TIMEOUT):
            return await run_bench(options, workdir)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.baseline_server is not None:
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(serve_baseline(args.baseline_server))
        return 0
    options = Options(
        alerts=args.alerts,
        concurrency=args.concurrency,
        repeat_ratio=args.repeat_ratio,
        queue_size=args.queue_size,
        timeout=args.timeout,
        seed=args.seed,
    )
    return run_to_exit_status(
        "bench",
        lambda: asyncio.run(_main(options, keep=args.keep)),
        timeout=options.timeout,
        show=print_report,
        json_path=args.json,
    )


def run_to_exit_status(
    name: str,
    run: Callable[[], dict[str, Any]],
    *,
    timeout: float,
    show: Callable[[dict[str, Any]], None],
    json_path: Path | None,
    errors: tuple[type[Exception], ...] = (BenchError,),
) -> int:
    """A bench's command line around ``run``: 130 when interrupted, 1 when it failed or its
    report is incomplete, else 0; the report printed (and written to ``json_path``)."""
    try:
        report = run()
    except (KeyboardInterrupt, asyncio.CancelledError):
        print(f"{name} interrupted; servers stopped", file=sys.stderr)
        return 130
    except errors as e:
        print(f"{name} failed: {e}", file=sys.stderr)
        return 1
    except TimeoutError:
        print(f"{name} failed: over the {timeout} s deadline", file=sys.stderr)
        return 1
    show(report)
    if json_path is not None:
        json_path.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return 0 if report["complete"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
