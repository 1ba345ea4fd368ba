"""Runs the real Prometheus and Alertmanager binaries for tests and for ``remediator demo``.

Each runner writes its config into a work directory, starts the binary on a free loopback
port with every config/storage/listen flag given explicitly (Debian's defaults point at /etc,
/var/lib and 0.0.0.0), waits for ``/-/ready`` and, on exit, stops the process with SIGTERM and
then SIGKILL. The process is stopped on every way out: normal exit, an exception in the body,
and cancellation.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import structlog
import yaml

log = structlog.get_logger(__name__)

PROMETHEUS_BINARY = "prometheus"
ALERTMANAGER_BINARY = "prometheus-alertmanager"  # Debian's name; there is no `alertmanager`
PROMTOOL_BINARY = "promtool"
AMTOOL_BINARY = "amtool"
SERVER_BINARIES = (PROMETHEUS_BINARY, ALERTMANAGER_BINARY)

# Both binaries answer /-/ready within half a second here; the margin is for loaded CI machines.
DEFAULT_READY_TIMEOUT = 20.0
DEFAULT_STOP_GRACE = 5.0
# A bind race (another process grabbing the port between our probe and the binary's bind) is
# rare; a couple of fresh ports settle it without hiding a real, repeatable failure.
PORT_ATTEMPTS = 3
LOG_TAIL_BYTES = 4000


class MonitoringError(Exception):
    """A monitoring binary is missing, exited early, or never became ready."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ScrapeTarget:
    """One endpoint for Prometheus to scrape."""

    job: str
    """The ``job`` label; targets sharing a job must share path, interval and honor_labels."""
    address: str
    """``host:port`` of the endpoint."""
    metrics_path: str = "/metrics"
    """HTTP path of the exposition."""
    interval: str = "1s"
    """Scrape interval as a Prometheus duration."""
    honor_labels: bool = False
    """Keep the target's own labels where they clash with Prometheus' (remediator's store
    series carry ``namespace``), as ``deploy/prometheus/scrape.yml`` does."""


@dataclass(frozen=True, slots=True, kw_only=True)
class PrometheusSpec:
    """What the generated ``prometheus.yml`` contains."""

    scrape_targets: Sequence[ScrapeTarget] = ()
    """Endpoints to scrape, grouped into one scrape config per job."""
    rule_files: Sequence[Path] = ()
    """Alerting/recording rule files, referenced by absolute path."""
    evaluation_interval: str = "1s"
    """How often rules are evaluated."""
    alertmanager_url: str | None = None
    """Where alerts are sent, e.g. an Alertmanager's ``RunningServer.url``; None: nowhere."""


@dataclass(frozen=True, slots=True, kw_only=True)
class AlertmanagerSpec:
    """What the generated ``alertmanager.yml`` contains: one route to one webhook receiver."""

    webhook_url: str
    """Where notifications are POSTed (the daemon's ``/alerts``)."""
    bearer_token: str | None = None
    """Sent as ``Authorization: Bearer``; written to a 0600 credentials file, never inline."""
    group_wait: str = "1s"
    """Delay before the first notification of a new group."""
    group_interval: str = "1s"
    """Delay before notifying about changes in an already notified group."""
    repeat_interval: str = "1h"
    """Delay before re-sending an unchanged notification."""
    group_by: Sequence[str] = ("alertname", "store_id")
    """Labels that split alerts into notification groups."""
    send_resolved: bool = True
    """Whether resolved alerts are notified too."""
    max_alerts: int = 0
    """Most alerts per webhook payload; 0 means no limit."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Gossip:
    """Alertmanager's HA cluster on loopback: this instance's gossip port and its peers'.

    Peers share silences and the notification log, so an alert posted to each of them is
    normally notified once. The ports are chosen before any peer starts, since each names the
    others on its command line."""

    port: int
    """Where this instance gossips (``--cluster.listen-address`` on 127.0.0.1)."""
    peers: Sequence[int]
    """The other instances' gossip ports."""
    peer_timeout: str = "15s"
    """How long a peer waits per position in the cluster before notifying itself (the first
    one notifies at once, the others only if the log does not show it sent)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class RunningServer:
    """A started, ready binary; valid inside its ``async with`` block."""

    url: str
    """Base URL on loopback, e.g. ``http://127.0.0.1:40123``."""
    process: asyncio.subprocess.Process
    """The binary's process (already exited after the block)."""
    config_file: Path
    """The generated configuration."""
    log_file: Path
    """The binary's combined stdout and stderr."""


def missing_binaries(names: Iterable[str] = SERVER_BINARIES) -> tuple[str, ...]:
    """The given commands that are not on PATH, in order."""
    return tuple(name for name in names if shutil.which(name) is None)


def binaries_available(names: Iterable[str] = SERVER_BINARIES) -> bool:
    return not missing_binaries(names)


def write_prometheus_config(
    spec: PrometheusSpec, *, workdir: Path, filename: str = "prometheus.yml"
) -> Path:
    """Write the ``prometheus.yml`` for `spec` into `workdir` and return its path."""
    config: dict[str, Any] = {
        # Only the global evaluation interval: an explicit scrape_timeout above a 1s scrape
        # interval is rejected, while the implicit one is capped to the interval.
        "global": {"evaluation_interval": spec.evaluation_interval},
        "scrape_configs": _scrape_configs(spec.scrape_targets),
    }
    if spec.rule_files:
        config["rule_files"] = [str(path.resolve()) for path in spec.rule_files]
    if spec.alertmanager_url is not None:
        url = urlsplit(spec.alertmanager_url)
        if url.scheme not in ("http", "https") or not url.netloc:
            raise ValueError(f"alertmanager_url must be an http(s) URL: {spec.alertmanager_url!r}")
        config["alerting"] = {
            "alertmanagers": [
                {
                    "scheme": url.scheme,
                    "path_prefix": url.path or "/",
                    "static_configs": [{"targets": [url.netloc]}],
                }
            ]
        }
    path = workdir / filename
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def write_alertmanager_config(
    spec: AlertmanagerSpec, *, workdir: Path, filename: str = "alertmanager.yml"
) -> Path:
    """Write the ``alertmanager.yml`` (and the token's credentials file) into `workdir`."""
    webhook: dict[str, Any] = {
        "url": spec.webhook_url,
        "send_resolved": spec.send_resolved,
        "max_alerts": spec.max_alerts,
    }
    if spec.bearer_token is not None:
        token_file = workdir / "webhook-token"
        _write_secret(token_file, spec.bearer_token)
        webhook["http_config"] = {
            "authorization": {"type": "Bearer", "credentials_file": str(token_file.resolve())}
        }
    config = {
        "route": {
            "receiver": "remediator",
            "group_by": list(spec.group_by),
            "group_wait": spec.group_wait,
            "group_interval": spec.group_interval,
            "repeat_interval": spec.repeat_interval,
        },
        "receivers": [{"name": "remediator", "webhook_configs": [webhook]}],
    }
    path = workdir / filename
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


@contextlib.asynccontextmanager
async def run_prometheus(
    spec: PrometheusSpec,
    *,
    workdir: Path,
    ready_timeout: float = DEFAULT_READY_TIMEOUT,
    stop_grace: float = DEFAULT_STOP_GRACE,
    pick_port: Callable[[], int] | None = None,
) -> AsyncIterator[RunningServer]:
    """Run Prometheus for `spec` with its config, data and log in `workdir`."""
    workdir = _prepare_workdir(workdir)
    config_file = write_prometheus_config(spec, workdir=workdir)
    storage = workdir / "prometheus-data"

    def arguments(address: str) -> list[str]:
        return [
            f"--config.file={config_file}",
            f"--storage.tsdb.path={storage}",
            f"--web.listen-address={address}",
            # Makes generatorURL point at this instance rather than at the hostname.
            f"--web.external-url=http://{address}",
        ]

    async with _run_server(
        PROMETHEUS_BINARY,
        arguments,
        config_file=config_file,
        log_file=workdir / "prometheus.log",
        ready_timeout=ready_timeout,
        stop_grace=stop_grace,
        pick_port=pick_port or pick_free_port,
    ) as server:
        log.info("prometheus_started", url=server.url, pid=server.process.pid)
        yield server


@contextlib.asynccontextmanager
async def run_alertmanager(
    spec: AlertmanagerSpec,
    *,
    workdir: Path,
    ready_timeout: float = DEFAULT_READY_TIMEOUT,
    stop_grace: float = DEFAULT_STOP_GRACE,
    pick_port: Callable[[], int] | None = None,
    gossip: Gossip | None = None,
) -> AsyncIterator[RunningServer]:
    """Run Alertmanager for `spec` with its config, data and log in `workdir`; alone, or in a
    cluster with its ``gossip`` peers."""
    workdir = _prepare_workdir(workdir)
    config_file = write_alertmanager_config(spec, workdir=workdir)
    storage = workdir / "alertmanager-data"

    def arguments(address: str) -> list[str]:
        return [
            f"--config.file={config_file}",
            f"--storage.path={storage}",
            f"--web.listen-address={address}",
            # Makes the webhook's externalURL point at this instance rather than the hostname.
            f"--web.external-url=http://{address}",
            *_cluster_arguments(gossip),
        ]

    async with _run_server(
        ALERTMANAGER_BINARY,
        arguments,
        config_file=config_file,
        log_file=workdir / "alertmanager.log",
        ready_timeout=ready_timeout,
        stop_grace=stop_grace,
        pick_port=pick_port or pick_free_port,
    ) as server:
        log.info("alertmanager_started", url=server.url, pid=server.process.pid)
        yield server


def _cluster_arguments(gossip: Gossip | None) -> list[str]:
    if gossip is None:
        # Empty turns the HA gossip off, which would otherwise bind 0.0.0.0:9094.
        return ["--cluster.listen-address="]
    address = f"127.0.0.1:{gossip.port}"
    return [
        f"--cluster.listen-address={address}",
        # Needed on loopback: there is no private address for Alertmanager to advertise.
        f"--cluster.advertise-address={address}",
        f"--cluster.peer-timeout={gossip.peer_timeout}",
        *(f"--cluster.peer=127.0.0.1:{peer}" for peer in gossip.peers),
    ]


def _scrape_configs(targets: Sequence[ScrapeTarget]) -> list[dict[str, Any]]:
    # Prometheus rejects duplicate job names, so targets of one job share a scrape config.
    jobs: dict[str, dict[str, Any]] = {}
    for target in targets:
        config: dict[str, Any] = {
            "job_name": target.job,
            "scrape_interval": target.interval,
            "metrics_path": target.metrics_path,
            "static_configs": [{"targets": []}],
        }
        if target.honor_labels:
            config["honor_labels"] = True
        job = jobs.setdefault(target.job, config)
        shared = (job["scrape_interval"], job["metrics_path"], job.get("honor_labels", False))
        if shared != (target.interval, target.metrics_path, target.honor_labels):
            raise ValueError(
                f"targets of job {target.job!r} differ in interval, metrics_path or honor_labels"
            )
        job["static_configs"][0]["targets"].append(target.address)
    return list(jobs.values())


def _prepare_workdir(workdir: Path) -> Path:
    # Absolute, because the paths end up in flags and configs read by another process.
    workdir = workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    return workdir


def _write_secret(path: Path, secret: str) -> None:
    # Created 0600 from the start (no window with default permissions); fchmod covers a file
    # left over from an earlier run with wider permissions.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as file:
        os.fchmod(file.fileno(), 0o600)
        file.write(secret)


@contextlib.asynccontextmanager
async def _run_server(
    binary: str,
    arguments: Callable[[str], list[str]],
    *,
    config_file: Path,
    log_file: Path,
    ready_timeout: float,
    stop_grace: float,
    pick_port: Callable[[], int],
) -> AsyncIterator[RunningServer]:
    """``pick_port`` is a parameter so a test can hand out a port that is already taken."""
    executable = shutil.which(binary)
    if executable is None:
        raise MonitoringError(
            f"{binary} not found on PATH; install the Debian package (see .ci/setup)"
        )
    for attempt in range(1, PORT_ATTEMPTS + 1):
        address = f"127.0.0.1:{pick_port()}"
        url = f"http://{address}"
        process = await spawn(executable, arguments(address), log_file=log_file)
        try:
            async with asyncio.timeout(ready_timeout):
                await _wait_ready(url, process, binary=binary, log_file=log_file)
        except BaseException as e:
            await stop_process(process, binary=binary, grace=stop_grace)
            if isinstance(e, _PortTakenError):
                log.warning(
                    "monitoring_port_retried", binary=binary, address=address, attempt=attempt
                )
                continue
            if isinstance(e, TimeoutError):
                raise MonitoringError(
                    f"{binary} did not become ready at {url} within {ready_timeout}s;"
                    f" log tail ({log_file}):\n{_read_tail(log_file)}"
                ) from None
            raise
        try:
            yield RunningServer(
                url=url, process=process, config_file=config_file, log_file=log_file
            )
        finally:
            await stop_process(process, binary=binary, grace=stop_grace)
        return
    raise MonitoringError(
        f"{binary} found no free port in {PORT_ATTEMPTS} attempts:\n{_read_tail(log_file)}"
    )


class _PortTakenError(Exception):
    pass


def pick_free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def spawn(
    executable: str, arguments: list[str], *, log_file: Path
) -> asyncio.subprocess.Process:
    """``executable`` with its output to ``log_file``, SIGTERMed if this process dies."""
    # A file rather than a pipe: nobody reads a pipe while the test runs, and a full pipe
    # would block the binary's logging. The file also survives for post-mortems. Truncated per
    # attempt, so that an earlier attempt's bind error is not mistaken for this one's.
    with log_file.open("wb") as output:
        command = [executable, *arguments]
        setpriv = shutil.which("setpriv")
        if setpriv is not None:
            # The kernel SIGTERMs the binary if this Python process dies without cleaning up
            # (SIGKILL, OOM), so no orphaned Prometheus keeps running after a crashed test run.
            command = [setpriv, "--pdeathsig", "TERM", "--", *command]
        return await asyncio.create_subprocess_exec(
            *command, stdin=asyncio.subprocess.DEVNULL, stdout=output, stderr=output
        )


async def _wait_ready(
    url: str, process: asyncio.subprocess.Process, *, binary: str, log_file: Path
) -> None:
    # Polling an external binary's /-/ready is the only readiness signal it offers.
    probe_timeout = aiohttp.ClientTimeout(total=1.0)
    async with aiohttp.ClientSession(timeout=probe_timeout) as session:
        while process.returncode is None:
            with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                async with session.get(f"{url}/-/ready") as response:
                    if response.status == 200:
                        return
            await asyncio.sleep(0.1)
    tail = _read_tail(log_file)
    if "address already in use" in tail:
        raise _PortTakenError
    raise MonitoringError(
        f"{binary} exited with code {process.returncode} before becoming ready;"
        f" log tail ({log_file}):\n{tail}"
    )


async def stop_process(process: asyncio.subprocess.Process, *, binary: str, grace: float) -> None:
    """SIGTERM, then SIGKILL after ``grace`` seconds (or when cancelled meanwhile)."""
    if process.returncode is None:
        try:
            process.send_signal(signal.SIGTERM)
            await asyncio.wait_for(process.wait(), grace)
        except ProcessLookupError:
            pass
        except TimeoutError:
            log.warning("monitoring_process_killed", binary=binary, pid=process.pid, grace=grace)
            process.kill()
            await process.wait()
        except asyncio.CancelledError:
            # Cancelled while waiting for a clean exit: do not leave the process behind.
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            raise
    log.info(
        "monitoring_process_stopped",
        binary=binary,
        pid=process.pid,
        returncode=process.returncode,
    )


def _read_tail(log_file: Path) -> str:
    try:
        with log_file.open("rb") as file:
            file.seek(0, os.SEEK_END)
            file.seek(max(0, file.tell() - LOG_TAIL_BYTES))
            return file.read().decode(errors="replace")
    except OSError as e:
        return f"(log unavailable: {e})"
