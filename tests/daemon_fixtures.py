"""The daemon as a real process: ``python -m remediator serve`` on a port the OS picks.

The daemon logs ``daemon_listening`` with its bound URL (JSON logs on stderr); that line is the
readiness signal, confirmed by ``/readyz`` within a deadline. stderr is drained continuously so
the daemon never blocks on a full pipe, and kept for assertions.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import yaml

STARTUP_BUDGET = 20.0
"""Seconds from spawning the process to a 200 from /readyz."""
EXIT_BUDGET = 20.0
TOKEN = "e2e-token-93b1f0a6"
API_TOKEN = "e2e-api-token-5d7c2e18"

UNLIMITED_SAFETY = """\
# These tests are about delivery, not the safety envelope: no limit may refuse a run here.
safety:
  target_rate: null
  playbook_rate: null
  cooldown: 0
  breaker: {failures: 1000}
  storm: {max_targets: 100000}
"""
"""A playbook's ``safety:`` section that lifts every limit (append it to the playbook)."""

QUICK_PLAYBOOK = (
    """\
name: quick
trigger:
  matchers:
    - alertname="E2E"
target: "item-{{ alert.labels.item }}"
steps:
  - name: note
    action: log
    params:
      message: "item {{ alert.labels.item }}"
"""
    + UNLIMITED_SAFETY
)
"""One log step per ``firing(i)`` alert, each on its own target."""


def environment() -> dict[str, str]:
    """The test's environment without tokens, so only what a test passes counts."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("REMEDIATOR_")}
    env["PYTHONUNBUFFERED"] = "1"
    return env


def cli(
    *args: str | Path,
    cwd: Path,
    check_rc: int | None = None,
    env: Mapping[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run ``python -m remediator`` to completion; ``env`` adds to the clean environment."""
    done = subprocess.run(
        [sys.executable, "-m", "remediator", *map(str, args)],
        cwd=cwd,
        env={**environment(), **(env or {})},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if check_rc is not None:
        assert done.returncode == check_rc, (done.returncode, done.stdout, done.stderr)
    return done


def write_config(directory: Path, **groups: Mapping[str, Any]) -> Path:
    """A config file for a test daemon: port 0, a token file, JSON logs; ``groups`` override."""
    token_file = directory / "token"
    token_file.write_text(f"{TOKEN}\n", encoding="utf-8")
    api_token_file = directory / "api-token"
    api_token_file.write_text(f"{API_TOKEN}\n", encoding="utf-8")
    config: dict[str, dict[str, Any]] = {
        "server": {"host": "127.0.0.1", "port": 0},
        "auth": {"token_file": str(token_file), "api_token_file": str(api_token_file)},
        "playbooks": {"directory": str(directory / "playbooks"), "watch_interval": 60},
        "state": {"path": str(directory / "state.sqlite")},
        "engine": {"grace_period": 10},
        "logging": {"format": "json", "level": "info"},
    }
    for name, values in groups.items():
        config.setdefault(name, {}).update(values)
    path = directory / "config.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


@dataclass(kw_only=True)
class Daemon:
    process: asyncio.subprocess.Process
    url: str = ""
    lines: list[str] = field(default_factory=list)
    """stderr so far, one log line each."""

    @property
    def events(self) -> list[dict[str, Any]]:
        found = []
        for line in self.lines:
            with contextlib.suppress(ValueError):
                event = json.loads(line)
                if isinstance(event, dict):
                    found.append(event)
        return found

    def send(self, sig: signal.Signals) -> None:
        self.process.send_signal(sig)

    async def exit_code(self) -> int:
        async with asyncio.timeout(EXIT_BUDGET):
            return await self.process.wait()

    def headers(self, token: str = TOKEN) -> dict[str, str]:
        return {"Authorization": f"Bearer {token}"}


@contextlib.asynccontextmanager
async def run_daemon(
    *args: str | Path, cwd: Path, env: Mapping[str, str] | None = None
) -> AsyncIterator[Daemon]:
    """``remediator serve ARGS``, ready when this yields; killed at exit if still running."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "remediator",
        "serve",
        *map(str, args),
        cwd=cwd,
        env={**environment(), **(env or {})},
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    daemon = Daemon(process=process)
    listening: asyncio.Future[str] = asyncio.get_running_loop().create_future()
    reader = asyncio.create_task(_read_stderr(daemon, listening))
    try:
        try:
            async with asyncio.timeout(STARTUP_BUDGET):
                daemon.url = await listening
                await wait_ready(daemon.url)
        except (TimeoutError, RuntimeError) as e:
            raise AssertionError(f"daemon did not start: {e}\n" + "\n".join(daemon.lines)) from e
        yield daemon
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
        await reader


async def _read_stderr(daemon: Daemon, listening: asyncio.Future[str]) -> None:
    assert daemon.process.stderr is not None
    async for raw in daemon.process.stderr:
        line = raw.decode("utf-8", errors="replace").rstrip("\n")
        daemon.lines.append(line)
        if not listening.done() and '"daemon_listening"' in line:
            with contextlib.suppress(ValueError):
                listening.set_result(json.loads(line)["url"])
    if not listening.done():
        listening.set_exception(RuntimeError(f"exited with {await daemon.process.wait()}"))


async def wait_ready(url: str) -> None:
    """Until /readyz answers 200; the caller bounds it with a deadline."""
    async with aiohttp.ClientSession() as session:
        while True:
            with contextlib.suppress(aiohttp.ClientError):
                async with session.get(f"{url}/readyz") as response:
                    if response.status == 200:
                        return
            await asyncio.sleep(0.02)


async def wait_until_not_ready(session: aiohttp.ClientSession, url: str) -> None:
    """Until /readyz answers 503 (the daemon is shutting down); bounded by the caller."""
    while True:
        async with session.get(f"{url}/readyz") as response:
            if response.status == 503:
                return
        await asyncio.sleep(0.02)


async def all_runs(
    session: aiohttp.ClientSession, daemon: Daemon, **query: str
) -> list[dict[str, Any]]:
    """Every run through GET /api/v1/runs, page after page."""
    return await _every_page(session, daemon, "/api/v1/runs", query)


async def _every_page(
    session: aiohttp.ClientSession, daemon: Daemon, path: str, query: Mapping[str, str]
) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    params = {"limit": "1000", **query}
    while True:
        async with session.get(
            f"{daemon.url}{path}", params=params, headers=daemon.headers(API_TOKEN)
        ) as response:
            assert response.status == 200, await response.text()
            page = await response.json()
        items.extend(page["items"])
        if page["next_cursor"] is None:
            return items
        params["cursor"] = page["next_cursor"]


async def audit_of(
    session: aiohttp.ClientSession, daemon: Daemon, kind: str
) -> list[dict[str, Any]]:
    """Every audit record of one kind, through GET /api/v1/audit, page after page."""
    return await _every_page(session, daemon, "/api/v1/audit", {"kind": kind})


async def wait_all_finished(
    session: aiohttp.ClientSession, daemon: Daemon, *, budget: float = 30.0
) -> list[dict[str, Any]]:
    """Poll the API until no run is queued or running; every run at that point."""
    async with asyncio.timeout(budget):
        while True:
            runs = await all_runs(session, daemon)
            if all(r["status"] not in ("queued", "running") for r in runs):
                return runs
            await asyncio.sleep(0.05)


@dataclass(kw_only=True)
class Delivered:
    """What a stream of webhooks cut short by a SIGKILL left, as Alertmanager would see it."""

    acknowledged: list[dict[str, Any]] = field(default_factory=list)
    """Answered 2xx: the daemon promised these are durable."""
    unacknowledged: list[dict[str, Any]] = field(default_factory=list)
    """Not answered 2xx: Alertmanager sends these again."""
    in_flight: int = 0
    """Requests already sent when the kill came and never answered."""


async def deliver_until_killed(
    daemon: Daemon, deliveries: Sequence[Mapping[str, Any]], *, kill_after: int, senders: int
) -> Delivered:
    """POST ``deliveries`` from ``senders`` at once; SIGKILL the daemon at the ``kill_after``th
    acknowledgement, so the others' requests are in flight; the rest go nowhere."""
    pending = list(reversed(deliveries))
    delivered = Delivered()
    killed = asyncio.Event()
    url = f"{daemon.url}/webhook/alertmanager"

    async def send(session: aiohttp.ClientSession) -> None:
        while pending:
            payload = dict(pending.pop())
            sent_before_kill = not killed.is_set()
            try:
                async with session.post(url, json=payload) as response:
                    await response.read()
                    ok = 200 <= response.status < 300
            except aiohttp.ClientError:
                ok = False
                delivered.in_flight += sent_before_kill and killed.is_set()
            (delivered.acknowledged if ok else delivered.unacknowledged).append(payload)
            if len(delivered.acknowledged) == kill_after and not killed.is_set():
                # Once: a second kill() could reap the child before asyncio's watcher does.
                killed.set()
                daemon.process.kill()

    async with aiohttp.ClientSession(headers=daemon.headers()) as session:
        await asyncio.gather(*(send(session) for _ in range(senders)))
    assert await daemon.exit_code() == -signal.SIGKILL
    return delivered


def firing(index: int, *, alertname: str = "E2E", **labels: str) -> dict[str, Any]:
    """A v4 payload with one firing alert, distinct per ``index``."""
    return {
        "version": "4",
        "receiver": "remediator",
        "status": "firing",
        "groupKey": f'{{}}:{{alertname="{alertname}", item="i{index}"}}',
        "truncatedAlerts": 0,
        "alerts": [
            {
                "status": "firing",
                "labels": {"alertname": alertname, "item": f"i{index}", **labels},
                "annotations": {},
                "startsAt": "2026-11-26T07:12:39.391Z",
                "endsAt": "0001-01-01T00:00:00Z",
                "generatorURL": "",
                "fingerprint": f"{0xE2E00000 + index:x}",
            }
        ],
    }


def stream(distinct: int) -> list[dict[str, Any]]:
    """Every ``firing(i)`` once, some twice in a row, some again much later (as Alertmanager
    re-sends on its repeat interval)."""
    deliveries = []
    for i in range(distinct):
        deliveries.append(firing(i))
        if i % 10 == 3:
            deliveries.append(firing(i))
        if i % 25 == 24:
            deliveries.append(firing(i - 20))
    return deliveries


def fingerprint_of(payload: Mapping[str, Any]) -> str:
    alerts: Sequence[Mapping[str, Any]] = payload["alerts"]
    return str(alerts[0]["fingerprint"])
