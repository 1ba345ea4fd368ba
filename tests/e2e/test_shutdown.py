"""SIGTERM while a step is in flight: stop accepting, finish within the grace period or record
the run as interrupted, keep what was queued for the next start, exit 0 either way.

The step is an ``http.request`` to a server in this test that answers only when the test says
so, so "the step is running" and "the step has finished" are events, not timings.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import sqlite3
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from remediator.simulation import serving
from tests import daemon_fixtures
from tests.daemon_fixtures import fingerprint_of, firing

pytestmark = pytest.mark.e2e

BUDGET = 20.0

SLOW_PLAYBOOK = """\
name: slow
trigger:
  matchers:
    - alertname="E2E"
target: "item-{{ alert.labels.item }}"
steps:
  - name: call
    action: http.request
    params:
      url: "http://%(address)s/work/{{ alert.labels.item }}"
      method: POST
"""


@dataclass(kw_only=True)
class SlowService:
    """Answers each request once ``release`` is set; ``arrived`` has the paths, in order."""

    address: str
    arrived: asyncio.Queue[str] = field(default_factory=asyncio.Queue)
    release: asyncio.Event = field(default_factory=asyncio.Event)

    async def next_request(self) -> str:
        async with asyncio.timeout(BUDGET):
            return await self.arrived.get()


@contextlib.asynccontextmanager
async def slow_service() -> AsyncIterator[SlowService]:
    service: SlowService | None = None

    async def work(request: web.Request) -> web.Response:
        assert service is not None
        service.arrived.put_nowait(request.path)
        await service.release.wait()
        return web.json_response({"done": request.match_info["item"]})

    app = web.Application()
    app.router.add_post("/work/{item}", work)
    async with serving.serve_app(app) as url:
        service = SlowService(address=url.removeprefix("http://"))
        try:
            yield service
        finally:
            service.release.set()


def prepare(tmp_path: Path, service: SlowService, *, grace: float) -> Path:
    (tmp_path / "playbooks").mkdir()
    (tmp_path / "playbooks" / "slow.yaml").write_text(
        SLOW_PLAYBOOK % {"address": service.address} + daemon_fixtures.UNLIMITED_SAFETY,
        encoding="utf-8",
    )
    return daemon_fixtures.write_config(
        tmp_path,
        engine={"concurrency": 1, "grace_period": grace},
        http={"allowed_hosts": [service.address], "timeout": 60},
    )


def stored(tmp_path: Path, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    with contextlib.closing(sqlite3.connect(tmp_path / "state.sqlite")) as conn:
        return conn.execute(sql, args).fetchall()


def run_status(tmp_path: Path, payload: dict[str, Any]) -> tuple[str, str | None]:
    ((status, error),) = stored(
        tmp_path, "SELECT status, error FROM runs WHERE fingerprint = ?", fingerprint_of(payload)
    )
    return status, error


async def post(
    session: aiohttp.ClientSession, daemon: daemon_fixtures.Daemon, payload: dict[str, Any]
) -> aiohttp.ClientResponse:
    async with session.post(f"{daemon.url}/webhook/alertmanager", json=payload) as response:
        await response.read()
        return response


async def test_step_within_grace_finishes_and_the_daemon_stops_accepting(tmp_path: Path) -> None:
    async with slow_service() as service:
        config = prepare(tmp_path, service, grace=BUDGET)
        async with (
            daemon_fixtures.run_daemon("--config", config, cwd=tmp_path) as daemon,
            aiohttp.ClientSession(headers=daemon.headers()) as session,
        ):
            assert (await post(session, daemon, firing(0))).status == 200
            assert await service.next_request() == "/work/i0"

            daemon.send(signal.SIGTERM)
            async with asyncio.timeout(BUDGET):
                await daemon_fixtures.wait_until_not_ready(session, daemon.url)
            async with session.post(f"{daemon.url}/webhook/alertmanager", json=firing(1)) as late:
                assert late.status == 503
                assert "Retry-After" in late.headers
                assert (await late.json())["error"] == "shutting_down"

            service.release.set()
            assert await daemon.exit_code() == 0

    assert run_status(tmp_path, firing(0)) == ("succeeded", None)
    assert (
        stored(tmp_path, "SELECT * FROM alerts WHERE fingerprint = ?", fingerprint_of(firing(1)))
        == []
    )
    ((kind, details),) = stored(
        tmp_path, "SELECT kind, details FROM audit ORDER BY seq DESC LIMIT 1"
    )
    assert (kind, json.loads(details)) == ("daemon_stopped", {"queued_for_next_start": 0})


async def test_step_past_grace_is_interrupted_and_queued_runs_wait_for_the_next_start(
    tmp_path: Path,
) -> None:
    alerts = [firing(i) for i in range(3)]
    async with slow_service() as service:
        config = prepare(tmp_path, service, grace=0.2)
        async with (
            daemon_fixtures.run_daemon("--config", config, cwd=tmp_path) as daemon,
            aiohttp.ClientSession(headers=daemon.headers()) as session,
        ):
            for payload in alerts:
                assert (await post(session, daemon, payload)).status == 200
            assert await service.next_request() == "/work/i0"

            daemon.send(signal.SIGTERM)
            assert await daemon.exit_code() == 0

        assert run_status(tmp_path, alerts[0]) == ("interrupted", "interrupted by shutdown")
        assert [run_status(tmp_path, p)[0] for p in alerts[1:]] == ["queued", "queued"]
        finished = stored(
            tmp_path,
            "SELECT outcome, reason FROM audit WHERE kind = 'run_finished' AND fingerprint = ?",
            fingerprint_of(alerts[0]),
        )
        assert finished == [("interrupted", "interrupted by shutdown")]
        ((kind, details),) = stored(
            tmp_path, "SELECT kind, details FROM audit ORDER BY seq DESC LIMIT 1"
        )
        assert (kind, json.loads(details)) == ("daemon_stopped", {"queued_for_next_start": 2})

        service.release.set()
        async with (
            daemon_fixtures.run_daemon("--config", config, cwd=tmp_path) as daemon,
            aiohttp.ClientSession(headers=daemon.headers()) as session,
        ):
            runs = await daemon_fixtures.wait_all_finished(session, daemon)
            daemon.send(signal.SIGTERM)
            assert await daemon.exit_code() == 0

        assert sorted([await service.next_request(), await service.next_request()]) == [
            "/work/i1",
            "/work/i2",
        ]

    assert len(runs) == 3
    assert run_status(tmp_path, alerts[0])[0] == "interrupted"
    assert [run_status(tmp_path, p)[0] for p in alerts[1:]] == ["succeeded", "succeeded"]
    (started,) = stored(
        tmp_path,
        "SELECT details FROM audit WHERE kind = 'daemon_started' ORDER BY seq DESC LIMIT 1",
    )
    assert json.loads(started[0])["recovered_queued"] == 2
