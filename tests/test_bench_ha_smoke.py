"""``python -m bench.ha --quick --shapes open`` runs to the end: a real PostgreSQL, one and
three replicas on it and one on SQLite, each taking the same open-loop load, every alert
accepted and started as a run. No timing is asserted: it is a benchmark."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from bench import ha
from remediator.simulation import postgresql

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.e2e
@pytest.mark.timeout(120)
@pytest.mark.skipif(not postgresql.available(), reason="PostgreSQL is not installed")
def test_quick_ha_bench_runs_to_completion(tmp_path: Path) -> None:
    out = tmp_path / "ha.json"
    argv = [sys.executable, "-m", "bench.ha", "--quick", "--shapes", "open"]
    bench = subprocess.Popen(
        [*argv, "--timeout", "90", "--json", str(out)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        output, _ = bench.communicate(timeout=110)
    except subprocess.TimeoutExpired:
        # SIGTERM, not kill: the bench then stops the daemons and PostgreSQL it started.
        bench.send_signal(signal.SIGTERM)
        output, _ = bench.communicate(timeout=20)
        pytest.fail(f"the ha bench did not finish in time:\n{output}")

    assert bench.returncode == 0, output
    assert "open loop: p99 POST→run started ms" in output
    report = json.loads(out.read_text(encoding="utf-8"))
    assert report["complete"] is True
    sent = round(ha.QUICK["seconds"] * ha.QUICK["open_rate"])
    per_setup = report["results"]["open"]
    assert set(per_setup) == {"sqlite x1", "postgresql x1", "postgresql x3"}
    for name, (measured,) in per_setup.items():
        assert measured["accepted_alerts"] == measured["actions"] == sent, name
        assert measured["action_latency"]["n"] == sent, name
    assert report["summary"]["sqlite x1"]["p99_ms"]["ratio"] == 1.0


def test_ratios_are_to_one_replica_on_sqlite() -> None:
    def measured(p99: float) -> dict[str, object]:
        return {"action_latency": {"p99_ms": p99}}

    results = {
        "open": {
            "sqlite x1": [measured(10.0), measured(30.0), measured(20.0)],
            "postgresql x3": [measured(50.0)],
        }
    }
    summary = ha.summarize(results)

    assert summary["sqlite x1"]["p99_ms"] == {
        "median": 20.0,
        "min": 10.0,
        "max": 30.0,
        "ratio": 1.0,
    }
    assert summary["postgresql x3"]["p99_ms"]["ratio"] == 2.5
