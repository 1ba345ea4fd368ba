"""The safety envelope in the real daemon process: the kill switch outlives a restart, and the
daemon's own wiring sends a breaker's escalation to a real receiver."""

from __future__ import annotations

import signal
from pathlib import Path

import aiohttp
import pytest

from tests import daemon_fixtures
from tests.engine.conftest import playbook_yaml
from tests.safety_fixtures import (
    ESCALATION_TARGET,
    daemon_alert,
    daemon_call,
    firing,
    http_sink,
    refiring,
    safety_section,
)

pytestmark = pytest.mark.e2e

LOGGING = (
    playbook_yaml(
        "store-down",
        """\
    steps:
      - name: note
        action: log
        params:
          message: "store {{ alert.labels.store_id }} is down"
    """,
    )
    + safety_section()
)

# Fails on every run without touching the network: the host is not in http.allowed_hosts.
FAILING = playbook_yaml(
    "store-restart",
    """\
    steps:
      - name: restart
        action: http.request
        params:
          url: "http://not-allowed.invalid/restart"
          method: POST
    """,
) + safety_section(breaker={"failures": 2})


def prepare(directory: Path, name: str, text: str) -> None:
    (directory / "playbooks").mkdir()
    (directory / "playbooks" / f"{name}.yaml").write_text(text, encoding="utf-8")


async def test_the_kill_switch_survives_a_restart(tmp_path: Path) -> None:
    prepare(tmp_path, "store-down", LOGGING)
    config = daemon_fixtures.write_config(tmp_path)

    async with (
        daemon_fixtures.run_daemon("--config", config, cwd=tmp_path) as first,
        aiohttp.ClientSession() as session,
    ):
        paused = await daemon_call(
            session, first, "/api/v1/pause", {"by": "alice", "reason": "db migration"}
        )
        first.send(signal.SIGTERM)
        assert await first.exit_code() == 0
    assert paused == {"paused": True, "changed": True}

    async with (
        daemon_fixtures.run_daemon("--config", config, cwd=tmp_path) as second,
        aiohttp.ClientSession() as session,
    ):
        status = await daemon_call(session, second, "/api/v1/safety", method="GET")
        async with session.get(f"{second.url}/metrics") as response:
            exposition = await response.text()
        admitted = await daemon_alert(session, second, firing("s1"))
        not_run = await daemon_call(
            session, second, "/api/v1/audit?kind=alert_not_run", method="GET"
        )
        runs_while_paused = await daemon_fixtures.all_runs(session, second)

        await daemon_call(session, second, "/api/v1/resume", {"by": "bob"})
        resumed = await daemon_alert(session, second, firing("s2"))
        finished = await daemon_fixtures.wait_all_finished(session, second)
        second.send(signal.SIGTERM)
        assert await second.exit_code() == 0

    assert (status["paused"]["by"], status["paused"]["reason"]) == ("alice", "db migration")
    assert "remediator_paused 1.0" in exposition.splitlines()
    assert admitted == {"alerts": 1, "duplicates": 0, "runs": []}
    assert [(r["target"], r["reason"]) for r in not_run["items"]] == [("store-s1", "paused")]
    assert runs_while_paused == []
    assert [(r["id"], r["status"]) for r in finished] == [(resumed["runs"][0], "succeeded")]


async def test_the_daemon_escalates_an_opened_breaker_once(tmp_path: Path) -> None:
    prepare(tmp_path, "store-restart", FAILING)
    async with http_sink() as receiver:
        config = daemon_fixtures.write_config(
            tmp_path,
            notify={"targets": {ESCALATION_TARGET: {"url": receiver.url}}},
            safety={"escalation_target": ESCALATION_TARGET},
        )
        async with (
            daemon_fixtures.run_daemon("--config", config, cwd=tmp_path) as daemon,
            aiohttp.ClientSession() as session,
        ):
            for n in (1, 2):
                await daemon_alert(session, daemon, refiring("s1", n))
                await daemon_fixtures.wait_all_finished(session, daemon)
            message = await receiver.next_body()
            refused = await daemon_alert(session, daemon, refiring("s1", 3))
            escalations = await daemon_call(
                session, daemon, "/api/v1/audit?kind=escalation_sent", method="GET"
            )
            daemon.send(signal.SIGTERM)
            assert await daemon.exit_code() == 0

    assert "circuit breaker open for store-restart on store-s1" in message["text"]
    assert refused["runs"] == []
    assert [(e["outcome"], e["reason"]) for e in escalations["items"]] == [
        ("sent", "breaker_opened")
    ]
    assert len(receiver.bodies) == 1
