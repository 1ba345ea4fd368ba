"""A crash in the middle of a stream of alerts loses no acknowledged alert and duplicates none.

The daemon is a real process. Alerts stream in over HTTP from several senders at once, as
Alertmanager delivers groups in parallel; the daemon is SIGKILLed half-way, so some requests
are in flight. After a restart on the same state file every delivery that was not answered 2xx
is sent again (Alertmanager retries those), and so are some that were (it also re-sends on its
repeat interval). In the end there is exactly one run per distinct alert, and the runs the
crash cut short were taken over and finished.
"""

from __future__ import annotations

import collections
import signal
from pathlib import Path

import aiohttp
import pytest

from tests import daemon_fixtures
from tests.daemon_fixtures import cli, fingerprint_of, firing

pytestmark = pytest.mark.e2e

DISTINCT = 200
KILL_AFTER = DISTINCT // 2
"""Acknowledged deliveries before the SIGKILL."""
SENDERS = 8
CONCURRENCY = 8


async def test_sigkill_mid_stream_then_restart(tmp_path: Path) -> None:
    (tmp_path / "playbooks").mkdir()
    (tmp_path / "playbooks" / "quick.yaml").write_text(
        daemon_fixtures.QUICK_PLAYBOOK, encoding="utf-8"
    )
    config = daemon_fixtures.write_config(tmp_path, engine={"concurrency": CONCURRENCY})
    async with daemon_fixtures.run_daemon("--config", config, cwd=tmp_path) as first:
        delivered = await daemon_fixtures.deliver_until_killed(
            first, daemon_fixtures.stream(DISTINCT), kill_after=KILL_AFTER, senders=SENDERS
        )
    acknowledged, unacknowledged = delivered.acknowledged, delivered.unacknowledged
    assert len(acknowledged) >= KILL_AFTER
    assert unacknowledged, "the kill must have happened with deliveries still to send"
    acknowledged_alerts = {fingerprint_of(p) for p in acknowledged}

    async with (
        daemon_fixtures.run_daemon("--config", config, cwd=tmp_path) as second,
        aiohttp.ClientSession(headers=second.headers()) as session,
    ):
        url = f"{second.url}/webhook/alertmanager"
        for payload in unacknowledged:
            async with session.post(url, json=payload) as response:
                assert response.status == 200, await response.text()
        for payload in acknowledged[::7]:
            async with session.post(url, json=payload) as response:
                assert response.status == 200
                assert await response.json() == {"alerts": 1, "duplicates": 1, "runs": []}

        runs = await daemon_fixtures.wait_all_finished(session, second)
        starts = await daemon_fixtures.audit_of(session, second, "daemon_started")
        resumed = await daemon_fixtures.audit_of(session, second, "run_resumed")
        second.send(signal.SIGTERM)
        assert await second.exit_code() == 0

    per_alert = collections.Counter(run["fingerprint"] for run in runs)
    everything = {fingerprint_of(firing(i)) for i in range(DISTINCT)}
    assert set(per_alert) == everything, "an alert has no run"
    assert acknowledged_alerts <= set(per_alert), "an acknowledged alert was lost"
    assert [f for f, n in per_alert.items() if n != 1] == [], "an alert ran twice"
    # The runs the crash cut short are taken over at the restart; their one step is read-only,
    # so they resume (docs/playbooks.md, "When a replica dies") and succeed.
    outcomes = collections.Counter(run["status"] for run in runs)
    assert set(outcomes) == {"succeeded"}, outcomes
    taken_over = [s["details"]["taken_over"] for s in starts]
    assert taken_over[0] == 0
    assert taken_over[1] <= CONCURRENCY
    assert len(resumed) == taken_over[1]
    assert all(r["reason"] == "every step left is read-only" for r in resumed)

    verified = cli("audit", "verify", "--state", tmp_path / "state.sqlite", cwd=tmp_path)
    assert verified.returncode == 0, verified.stdout + verified.stderr
