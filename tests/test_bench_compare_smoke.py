"""``python -m bench.compare --quick --skip-ansible`` runs to the end with consistent counts,
and the ansible-rulebook output parser reads the debug banners it relies on. No timing is
asserted: it is a benchmark."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import pytest

from bench import compare

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.e2e
@pytest.mark.timeout(60)
def test_quick_compare_runs_to_completion(tmp_path: Path) -> None:
    out = tmp_path / "compare.json"
    argv = [sys.executable, "-m", "bench.compare", "--quick", "--skip-ansible"]
    bench = subprocess.Popen(
        [*argv, "--timeout", "40", "--json", str(out)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        output, _ = bench.communicate(timeout=50)
    except subprocess.TimeoutExpired:
        # SIGTERM, not kill: the bench then stops the daemons it started.
        bench.send_signal(signal.SIGTERM)
        output, _ = bench.communicate(timeout=20)
        pytest.fail(f"compare did not finish in time:\n{output}")

    assert bench.returncode == 0, output
    assert "every alert dispatches" in output
    report = json.loads(out.read_text(encoding="utf-8"))
    assert report["complete"] is True
    results = report["results"]
    assert set(results) == {"closed", "dispatch", "open"}
    assert all(set(per_server) == {"remediator"} for per_server in results.values())
    (closed,) = results["closed"]["remediator"]
    (dispatch,) = results["dispatch"]["remediator"]
    (opened,) = results["open"]["remediator"]
    pinned = report["config"]["pinned"]
    if pinned["server_cpu"] is not None:  # a machine with two CPUs the bench may use
        # Each server ran on its own CPU, never beside the load generator.
        assert [r["server_cpus"] for r in (closed, dispatch, opened)] == [
            [pinned["server_cpu"]]
        ] * 3
    assert closed["accepted_alerts"] > closed["new_stores"] > 0
    assert dispatch["accepted_alerts"] == dispatch["new_stores"]
    assert dispatch["actions_per_s"] > 0
    # Open loop: every alert was sent, accepted and started a run.
    sent = round(compare.QUICK["seconds"] * compare.QUICK["open_rate"])
    assert opened["accepted_alerts"] == opened["actions"] == sent
    assert opened["action_latency"]["n"] == sent
    burst = report["burst"]
    assert burst["accepted_alerts"] == burst["runs_succeeded_distinct"] == compare.QUICK["burst"]
    assert burst["lost"] == burst["not_done"] == burst["unacknowledged"] == 0
    assert burst["acknowledged_distinct"] == compare.QUICK["burst"]
    assert burst["peak_rss_mib"] > 0


def test_debug_banners_are_read_as_actions() -> None:
    output = (
        "\n** 2026-12-03 09:15:52.863533 [debug] ****************************************\n"
        f"{compare.ACTION_MARK} t1-0\n"
        "********************************************************************************\n"
        "\n** 2026-12-03 09:15:53 [debug] ***********************************************\n"
        f"{compare.ACTION_MARK} t1-1\n"
        "********************************************************************************\n"
        "\n** 2026-12-03 09:15:54.000001 [debug] ****************************************\n"
        "some other message\n"
    )

    assert compare.parse_debug_actions(output) == [
        ("t1-0", datetime(2026, 12, 3, 9, 15, 52, 863533).timestamp()),
        ("t1-1", datetime(2026, 12, 3, 9, 15, 53).timestamp()),
    ]


def test_state_other_than_sqlite_or_a_url_is_refused(tmp_path: Path) -> None:
    with pytest.raises(compare.BenchError, match="--state must be"):
        compare.state_section("mysql://db", tmp_path)
