"""The operator commands as a user runs them: ``remediator pause | resume | safety | breakers |
approve | reject`` against a daemon process, and ``simulate --state`` on its live state file."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests import daemon_fixtures
from tests.engine.conftest import playbook_yaml
from tests.safety_fixtures import (
    daemon_alert,
    daemon_call,
    firing,
    http_sink,
    refiring,
    safety_section,
    wait_awaiting_approval,
)

pytestmark = pytest.mark.e2e

RATE_LIMITED = playbook_yaml(
    "store-down",
    """\
    steps:
      - name: note
        action: log
        params:
          message: "store {{ alert.labels.store_id }} is down"
    """,
) + safety_section(target_rate={"max_runs": 2, "window": "1h"})

FAILING = playbook_yaml(
    "pod-crash",
    """\
    steps:
      - name: restart
        action: http.request
        params:
          url: "http://not-allowed.invalid/restart"
          method: POST
    """,
    matchers=('alertname="PodCrash"',),
    target="pod-{{ alert.labels.store_id }}",
) + safety_section(breaker={"failures": 1})

# Every mutating step waits for an operator; %(address)s is a local HTTP server of the test.
GUARDED = playbook_yaml(
    "store-call",
    """\
    steps:
      - name: call
        action: http.request
        params:
          url: "http://%(address)s/work/{{ alert.labels.store_id }}"
          method: POST
    """,
) + safety_section(approval="always")


async def remediator(
    directory: Path, *args: str | Path, rc: int = 0
) -> subprocess.CompletedProcess[str]:
    """``remediator ARGS`` in a thread, so the daemon's log pipe keeps being drained."""
    return await asyncio.to_thread(daemon_fixtures.cli, *args, cwd=directory, check_rc=rc)


def control(daemon: daemon_fixtures.Daemon, directory: Path) -> tuple[str, ...]:
    """The flags every control command needs to reach this daemon."""
    return ("--url", daemon.url, "--token-file", str(directory / "api-token"))


def prepare(directory: Path, name: str, text: str, **groups: Any) -> Path:
    (directory / "playbooks").mkdir()
    (directory / "playbooks" / f"{name}.yaml").write_text(text, encoding="utf-8")
    return daemon_fixtures.write_config(directory, **groups)


def alert_file(directory: Path, name: str, payload: dict[str, Any]) -> Path:
    path = directory / f"{name}.json"
    path.write_text(json.dumps(payload), encoding="utf-8")
    return path


async def simulated(directory: Path, alert: Path, config: Path, *state: str) -> list[Any]:
    """``remediator simulate --json``: the decisions about the alert."""
    done = await remediator(
        directory,
        "simulate",
        "--alert",
        alert,
        "--playbooks",
        directory / "playbooks",
        "--config",
        config,
        *state,
        "--json",
    )
    report = json.loads(done.stdout)
    decisions: list[Any] = report["alerts"][0]["decisions"]
    return decisions


async def test_pause_safety_resume_and_simulate_against_the_live_state(tmp_path: Path) -> None:
    config = prepare(tmp_path, "store-down", RATE_LIMITED)
    again = alert_file(tmp_path, "again", refiring("s1", 3))
    other = alert_file(tmp_path, "other", firing("s2"))
    live = ("--state", str(tmp_path / "state.sqlite"))

    async with (
        daemon_fixtures.run_daemon("--config", config, cwd=tmp_path) as daemon,
        aiohttp.ClientSession() as session,
    ):
        flags = control(daemon, tmp_path)
        for n in (1, 2):
            await daemon_alert(session, daemon, refiring("s1", n))
        await daemon_fixtures.wait_all_finished(session, daemon)

        offline = await simulated(tmp_path, again, config)
        limited = await simulated(tmp_path, again, config, *live)
        # The webhook's token does not open the control API.
        unauthorized = await remediator(
            tmp_path,
            *("pause", "--reason", "x", "--url", daemon.url, "--token-file", tmp_path / "token"),
            rc=1,
        )
        paused = await remediator(
            tmp_path, "pause", "--reason", "db migration", "--by", "alice", *flags
        )
        shown_paused = await remediator(tmp_path, "safety", *flags)
        while_paused = await simulated(tmp_path, other, config, *live)
        resumed = await remediator(tmp_path, "resume", "--by", "alice", *flags)
        status = await daemon_call(session, daemon, "/api/v1/safety", method="GET")
        audit = await daemon_call(session, daemon, "/api/v1/audit", method="GET")
        daemon.send(signal.SIGTERM)
        assert await daemon.exit_code() == 0

    # Without the state file the simulation knows no history; with it, it decides as the daemon.
    assert [(d["kind"], d["reason"]) for d in offline] == [("would_queue", None)]
    (refusal,) = limited
    assert (refusal["kind"], refusal["target"], refusal["reason"]) == (
        "alert_not_run",
        "store-s1",
        "target_rate_limited",
    )
    assert refusal["details"] == {"runs": 2, "max_runs": 2, "window": 3600.0}
    assert [(d["kind"], d["reason"]) for d in while_paused] == [("alert_not_run", "paused")]
    assert "HTTP 401" in unauthorized.stderr
    assert "Traceback" not in unauthorized.stderr

    assert paused.stdout == "remediation paused\n"
    (line,) = shown_paused.stdout.splitlines()
    assert line.startswith("paused: by alice since ")
    assert line.endswith(": db migration")
    assert resumed.stdout == "remediation resumed\n"
    assert status["paused"] is None
    switched = [
        (r["kind"], r["details"]["by"])
        for r in audit["items"]
        if r["kind"] in ("remediation_paused", "remediation_resumed")
    ]
    assert switched == [("remediation_paused", "alice"), ("remediation_resumed", "alice")]
    # simulate only read the file: nothing it decided was recorded.
    assert not any(r["kind"] == "alert_not_run" for r in audit["items"])


async def test_breakers_reset_closes_what_the_failures_opened(tmp_path: Path) -> None:
    config = prepare(tmp_path, "pod-crash", FAILING)

    async with (
        daemon_fixtures.run_daemon("--config", config, cwd=tmp_path) as daemon,
        aiohttp.ClientSession() as session,
    ):
        flags = control(daemon, tmp_path)
        await daemon_alert(session, daemon, firing("p1", alertname="PodCrash"))
        (failed,) = await daemon_fixtures.wait_all_finished(session, daemon)

        shown_open = await remediator(tmp_path, "safety", *flags)
        reset = await remediator(tmp_path, "breakers", "reset", "pod-crash", "--by", "bob", *flags)
        status = await daemon_call(session, daemon, "/api/v1/safety", method="GET")
        again = firing("p1", alertname="PodCrash", starts_at="2026-11-26T08:00:00.000Z")
        admitted = await daemon_alert(session, daemon, again)
        closed = await daemon_call(
            session, daemon, "/api/v1/audit?kind=breaker_closed", method="GET"
        )
        daemon.send(signal.SIGTERM)
        assert await daemon.exit_code() == 0

    assert failed["status"] == "failed"
    assert sorted(line.split(" until ")[0] for line in shown_open.stdout.splitlines()) == [
        "breaker open: pod-crash (whole playbook)",
        "breaker open: pod-crash pod-p1",
        "paused: no",
    ]
    assert reset.stdout == "closed 2 breaker(s)\n"
    assert status["breakers"] == []
    assert len(admitted["runs"]) == 1
    assert sorted((r["target"] or "", r["details"]["closed_by"]) for r in closed["items"]) == [
        ("", "bob"),
        ("pod-p1", "bob"),
    ]


async def test_approve_and_reject_runs_waiting_for_an_operator(tmp_path: Path) -> None:
    async with http_sink() as service:
        config = prepare(
            tmp_path,
            "store-call",
            GUARDED % {"address": service.address},
            http={"allowed_hosts": [service.address]},
        )
        async with (
            daemon_fixtures.run_daemon("--config", config, cwd=tmp_path) as daemon,
            aiohttp.ClientSession() as session,
        ):
            flags = control(daemon, tmp_path)
            (kept,) = (await daemon_alert(session, daemon, firing("s1")))["runs"]
            (dropped,) = (await daemon_alert(session, daemon, firing("s2")))["runs"]
            waiting = await wait_awaiting_approval(session, daemon, 2)
            shown = await remediator(tmp_path, "safety", *flags)
            nothing_yet = list(service.paths)

            approved = await remediator(tmp_path, "approve", kept, "--by", "alice", *flags)
            rejected = await remediator(
                tmp_path, "reject", dropped, "--by", "bob", "--comment", "not now", *flags
            )
            runs = await daemon_fixtures.wait_all_finished(session, daemon)
            daemon.send(signal.SIGTERM)
            assert await daemon.exit_code() == 0

    assert sorted(waiting) == sorted([kept, dropped])
    assert sorted(shown.stdout.splitlines()) == sorted(
        ["paused: no", f"awaiting approval: run {kept}", f"awaiting approval: run {dropped}"]
    )
    assert nothing_yet == []
    assert approved.stdout == f"run {kept}: approved\n"
    assert rejected.stdout == f"run {dropped}: rejected\n"
    assert {r["id"]: (r["status"], r["error"]) for r in runs} == {
        kept: ("succeeded", None),
        dropped: ("rejected", "step 'call' rejected by bob: not now"),
    }
    assert service.paths == ["/work/s1"]
