"""``remediator demo``: the daemon on an embedded default, fed a sample alert, audit printed.

Interim demo for the daemon core: it starts the daemon in-process on 127.0.0.1 with a fresh
token and state file, starts a local escalation receiver standing in for Slack, posts the
recorded StoreDown alert (firing, then a re-send, then resolved), waits for the run and prints
the audit trail. Everything it starts, it stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import tempfile
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from remediator import config, running

EXAMPLES = resources.files("remediator") / "examples"


def say(text: str) -> None:
    print(text, flush=True)  # the demo talks to a person; the daemon itself logs to stderr


def sample_alert(status: str, *, fingerprint: str, starts_at: str) -> dict[str, Any]:
    raw = json.loads((EXAMPLES / f"storedown-{status}.json").read_text(encoding="utf-8"))
    for alert in raw["alerts"]:
        alert["fingerprint"] = fingerprint
        alert["startsAt"] = starts_at
    return dict(raw)


@contextlib.asynccontextmanager
async def escalation_receiver() -> AsyncIterator[tuple[str, list[dict[str, Any]]]]:
    received: list[dict[str, Any]] = []

    async def receive(request: web.Request) -> web.Response:
        received.append(await request.json())
        return web.json_response({"ok": True})

    app = web.Application()
    app.router.add_post("/hooks/oncall", receive)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    try:
        yield f"http://{host}:{port}/hooks/oncall", received
    finally:
        await runner.cleanup()


async def run_demo(workdir: Path, *, keep: bool) -> int:
    token = secrets.token_urlsafe(24)
    token_file = workdir / "token"
    token_file.write_text(token, encoding="utf-8")
    token_file.chmod(0o600)
    playbooks = Path("playbooks")
    if not await asyncio.to_thread(playbooks.is_dir):
        say("demo: run it from the repository root (it uses ./playbooks)")
        return 1
    async with escalation_receiver() as (hook_url, escalations):
        settings = config.from_mapping(
            {
                "server": {"host": "127.0.0.1", "port": 0},
                "auth": {"token_file": str(token_file)},
                "playbooks": {"directory": str(playbooks)},
                "state": {"path": str(workdir / "remediator.sqlite")},
                "notify": {"targets": {"oncall": {"url": hook_url}}},
                "logging": {"format": "console", "level": "warning"},
            }
        )
        running.configure_logging(settings.logging)
        daemon = running.Daemon(settings=settings)
        task = asyncio.create_task(daemon.run())
        await asyncio.wait(
            [task, asyncio.create_task(daemon.ready.wait())], return_when=asyncio.FIRST_COMPLETED
        )
        if task.done():
            return task.result()
        say(f"remediator listening on {daemon.url} (state in {workdir})")
        headers = {"Authorization": f"Bearer {token}"}
        fingerprint = secrets.token_hex(8)
        starts_at = datetime.now(UTC).isoformat().replace("+00:00", "Z")
        async with aiohttp.ClientSession(headers=headers) as http:
            firing = sample_alert("firing", fingerprint=fingerprint, starts_at=starts_at)
            for label in ("firing", "firing (Alertmanager re-send)"):
                async with http.post(f"{daemon.url}/webhook/alertmanager", json=firing) as r:
                    say(f"POST StoreDown {label}: HTTP {r.status} {await r.json()}")
            await _wait_for_runs(http, daemon.url)
            resolved = sample_alert("resolved", fingerprint=fingerprint, starts_at=starts_at)
            async with http.post(f"{daemon.url}/webhook/alertmanager", json=resolved) as r:
                say(f"POST StoreDown resolved: HTTP {r.status} {await r.json()}")
            async with http.get(f"{daemon.url}/api/v1/audit", params={"limit": "200"}) as r:
                audit = await r.json()
        say("\naudit trail:")
        for item in audit["items"]:
            say(
                f"  #{item['seq']:<3} {item['time']}  {item['kind']:<22} "
                f"{item['playbook'] or '-':<12} {item['target'] or '-':<10} "
                f"{item['outcome'] or '-':<10} {item['reason'] or ''}"
            )
        say(f"\nescalations received: {len(escalations)}")
        if keep:
            say("daemon keeps running; Ctrl-C to stop")
            with contextlib.suppress(asyncio.CancelledError):
                await daemon.stopping.wait()
        daemon.stopping.set()
        return await task


async def _wait_for_runs(http: aiohttp.ClientSession, url: str, patience: float = 30) -> None:
    deadline = time.monotonic() + patience
    while time.monotonic() < deadline:
        async with http.get(f"{url}/api/v1/runs") as r:
            runs = (await r.json())["items"]
        if runs and all(run["finished_at"] for run in runs):
            for run in runs:
                say(
                    f"run {run['id'][:8]} {run['playbook']} on {run['target']}: {run['status']} "
                    f"(finished {run['finished_at']})"
                )
            return
        await asyncio.sleep(0.2)
    say("demo: runs did not finish in time")


def main(*, keep: bool = False) -> int:
    with tempfile.TemporaryDirectory(prefix="remediator-demo-") as workdir:
        try:
            return asyncio.run(run_demo(Path(workdir), keep=keep))
        except KeyboardInterrupt:
            return 130
