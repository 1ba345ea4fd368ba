"""``bench/probe.py`` with a few stores runs to the end with consistent counts; no timing is
asserted."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
STORES = 40
WORKER_FIGURES = {
    "rounds",
    "cpu_s_per_round",
    "wall_s_per_round",
    "probes_per_cpu_s",
    "base_rss_mib",
    "peak_rss_mib",
    "probed_up",
}


@pytest.mark.e2e
@pytest.mark.timeout(60)
def test_small_probe_bench_runs_to_completion(tmp_path: Path) -> None:
    out = tmp_path / "probe.json"
    argv = [sys.executable, "bench/probe.py", "--stores", str(STORES), "--rounds", "2"]
    bench = subprocess.Popen(
        [*argv, "--timeout", "30", "--json", str(out)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        output, _ = bench.communicate(timeout=45)
    except subprocess.TimeoutExpired:
        # SIGTERM, not kill: the bench then closes its children's stdin and they exit.
        bench.send_signal(signal.SIGTERM)
        output, _ = bench.communicate(timeout=10)
        pytest.fail(f"bench did not finish in time:\n{output}")

    assert bench.returncode == 0, output
    assert "ratio daemon/plain CPU per round" in output
    report = json.loads(out.read_text(encoding="utf-8"))
    assert report["complete"] is True
    assert report["checks"] == {"all_discovered": True, "daemon_all_up": True, "plain_all_up": True}
    for worker in ("daemon", "plain-fresh", "plain-keepalive"):
        assert report[worker].keys() >= WORKER_FIGURES, worker
        assert len(report[worker]["rounds"]) == 2
        assert report[worker]["probed_up"] == STORES
    daemon = report["daemon"]
    assert daemon["discovered"] == STORES
    assert daemon["failures"] == {}
    assert report["ratio"].keys() >= {"cpu_per_round_vs_plain_fresh", "peak_rss_vs_plain_fresh"}
