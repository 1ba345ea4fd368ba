"""``bench/intake.py --quick`` runs to the end with consistent counts; no timing is asserted."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FIGURES = {
    "sent_payloads",
    "accepted_payloads",
    "accepted_alerts",
    "alerts_per_s",
    "accepted_latency",
    "refusals_503",
    "errors",
    "cpu_s_stream",
}
DAEMON_FIGURES = {"new_alerts", "duplicates", "created_latency", "finished_latency", "cpu_s_total"}


@pytest.mark.e2e
@pytest.mark.timeout(30)
def test_quick_bench_runs_to_completion(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    bench = subprocess.Popen(
        [sys.executable, "bench/intake.py", "--quick", "--timeout", "15", "--json", str(out)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        output, _ = bench.communicate(timeout=20)
    except subprocess.TimeoutExpired:
        # SIGTERM, not kill: the bench then stops the two servers it started.
        bench.send_signal(signal.SIGTERM)
        output, _ = bench.communicate(timeout=8)
        pytest.fail(f"bench did not finish in time:\n{output}")

    assert bench.returncode == 0, output
    assert "ratio daemon/baseline" in output
    report = json.loads(out.read_text(encoding="utf-8"))
    assert report.keys() >= {"config", "baseline", "daemon", "ratio", "checks", "complete"}
    assert report["baseline"].keys() >= FIGURES
    assert report["daemon"].keys() >= FIGURES | DAEMON_FIGURES
    config, daemon = report["config"], report["daemon"]
    sent_alerts = config["alerts"] + config["repeat_alerts"]
    assert config["repeat_payloads"] > 0
    # Nothing lost: every payload answered 2xx, every distinct alert new exactly once, every
    # repeat seen as a duplicate, one finished run per distinct alert.
    assert report["baseline"]["accepted_alerts"] == sent_alerts
    assert daemon["accepted_alerts"] == sent_alerts
    assert daemon["accepted_payloads"] == config["payloads"]
    assert daemon["new_alerts"] == config["alerts"]
    assert daemon["duplicates"] == config["repeat_alerts"]
    assert daemon["duplicates_audited"] == config["repeat_alerts"]
    assert daemon["runs_recorded"] == daemon["runs_finished"] == config["alerts"]
    assert daemon["errors"] == 0
    assert daemon["created_latency"]["n"] == config["alerts"]
    assert report["complete"] is True
