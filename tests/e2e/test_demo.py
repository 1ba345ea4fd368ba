"""``python -m remediator demo`` as a person runs it: a subprocess from a directory that is
not the repository, its output read for every live stage, the audit trail and the clean-up."""

from __future__ import annotations

import http.client
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
from pathlib import Path

import pytest

from remediator.simulation import monitoring

pytestmark = pytest.mark.e2e

DEMO_TIMEOUT = 100.0
"""The demo takes about 15 s here (its own bound is 3 minutes)."""

STAGES = (
    "START    simulated platform: stores s1, s2, s3",
    "BASELINE Prometheus has store_up == 1 for s1, s2, s3",
    "BREAK    fault app_down injected into store s1",
    'METRIC   store_up{store_id="s1"} = 0 in Prometheus',
    'ALERT    StoreDown{store_id="s1"} pending in Prometheus (for: 2s)',
    'ALERT    StoreDown{store_id="s1"} firing in Prometheus',
    'ALERT    StoreDown{store_id="s1"} active in Alertmanager',
    "WEBHOOK  remediator received StoreDown firing from Alertmanager",
    "RUN      playbook store-down started on store-s1",
    "STEP       restart_app (k8s.rollout_restart): succeeded",
    "VERIFY   passed: store_up=1 held through PromQL in Prometheus",
    "RUN      succeeded",
)
"""In causal order; the resolution may come before or after the run's end."""
RESOLVED = (
    'RESOLVED StoreDown{store_id="s1"} resolved in Prometheus',
    "RESOLVED remediator received StoreDown resolved from Alertmanager",
)


def demo(cwd: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "remediator", "demo", *args],
        cwd=cwd,
        env={**os.environ, **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def finish(process: subprocess.Popen[str]) -> str:
    try:
        out, _ = process.communicate(timeout=DEMO_TIMEOUT)
    except subprocess.TimeoutExpired:
        process.kill()
        out, _ = process.communicate()
        pytest.fail(f"the demo did not finish in {DEMO_TIMEOUT:g}s:\n{out}")
    return out


def positions(out: str, expected: tuple[str, ...]) -> list[int]:
    found = [out.find(text) for text in expected]
    missing = [text for text, at in zip(expected, found, strict=True) if at < 0]
    assert not missing, f"missing from the demo's output: {missing}\n{out}"
    return found


def audit_rows(out: str) -> dict[str, list[str]]:
    """kind → the outcome column of each row of the printed audit trail."""
    table = out[out.index("\nSEQ  TIME") :]
    rows: dict[str, list[str]] = {}
    for line in table.strip().splitlines()[1:]:
        cells = line.split()
        if len(cells) < 7 or not cells[0].isdigit():
            break
        rows.setdefault(cells[2], []).append(cells[6])
    return rows


def urls(out: str) -> list[str]:
    """The addresses of everything the demo said it started."""
    return re.findall(r"http://127\.0\.0\.1:\d+", out)


def refused(url: str) -> bool:
    host, port = url.removeprefix("http://").split(":")
    with socket.socket() as sock:
        sock.settimeout(1)
        return sock.connect_ex((host, int(port))) != 0


def require_binaries() -> None:
    missing = monitoring.missing_binaries()
    if missing:
        pytest.fail(f"{', '.join(missing)} not on PATH; run .ci/setup", pytrace=False)


@pytest.mark.timeout(120)
def test_the_demo_closes_the_loop_live_and_prints_the_audit_trail(tmp_path: Path) -> None:
    require_binaries()
    started = time.monotonic()
    process = demo(tmp_path)  # not the repository: the demo finds its playbooks itself
    out = finish(process)
    took = time.monotonic() - started

    assert process.returncode == 0, out
    assert took < 60, f"the demo took {took:.0f}s"
    assert "not installed" not in out
    found = positions(out, STAGES)
    assert found == sorted(found), out
    webhook = found[STAGES.index("WEBHOOK  remediator received StoreDown firing from Alertmanager")]
    (resolved_in_prometheus, resolved_webhook) = positions(out, RESOLVED)
    assert webhook < resolved_in_prometheus < resolved_webhook, out
    assert "HEALTHY  store s1: serving, every part ready" in out

    rows = audit_rows(out)
    assert rows["alert_received"] == ["firing", "resolved"]
    assert rows["run_started"] == ["running"]
    assert rows["verification_finished"] == ["passed"]
    assert rows["run_finished"] == ["succeeded"]
    assert re.search(r"run [0-9a-f]{32}: succeeded; escalations to oncall: 0", out), out

    assert "stopped: remediator, Prometheus, Alertmanager and the simulated platform" in out
    started_urls = urls(out)
    assert len(started_urls) >= 5, out  # Kubernetes API, storefront, Alertmanager, Prometheus…
    assert [u for u in started_urls if not refused(u)] == []


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    ("env", "reason"),
    [
        (
            {"REMEDIATOR_DEMO_NO_MONITORING": "1"},
            "monitoring disabled (REMEDIATOR_DEMO_NO_MONITORING=1",
        ),
        # Nothing on PATH at all (the interpreter is started by its full path).
        (
            {"PATH": "/nonexistent"},
            "prometheus not installed: prometheus, prometheus-alertmanager not on PATH",
        ),
    ],
    ids=["env-var", "binaries-missing"],
)
def test_without_monitoring_the_demo_says_so_and_still_closes_the_loop(
    tmp_path: Path, env: dict[str, str], reason: str
) -> None:
    process = demo(tmp_path, env=env)
    out = finish(process)

    assert process.returncode == 0, out
    assert out.index(reason) < out.index("START"), out
    assert "the demo posts the alert itself, shaped like Alertmanager's webhook" in out
    found = positions(
        out,
        (
            "BASELINE remediator's /metrics has store_up == 1 for s1, s2, s3",
            "BREAK    fault app_down injected into store s1",
            'METRIC   store_up{store_id="s1"} = 0 in remediator\'s /metrics (no Prometheus)',
            "the demo posts it to remediator's webhook as Alertmanager would (no Alertmanager)",
            "WEBHOOK  remediator received StoreDown firing from the demo",
            "RUN      playbook store-down started on store-s1",
            "VERIFY   passed: store_up=1 held from remediator's /metrics by the stand-in"
            " (no PromQL)",
            "RUN      succeeded",
            "RESOLVED remediator received StoreDown resolved from the demo",
        ),
    )
    assert found == sorted(found), out
    assert "Prometheus http://" not in out
    rows = audit_rows(out)
    assert rows["run_finished"] == ["succeeded"]
    assert rows["alert_received"] == ["firing", "resolved"]
    assert "stopped: remediator and the simulated platform" in out
    assert [u for u in urls(out) if not refused(u)] == []


def log_in(address: str, token: str) -> int:
    """POST the console's login form; its status (303 and a session cookie when accepted)."""
    connection = http.client.HTTPConnection(address, timeout=10)
    try:
        body = urllib.parse.urlencode({"name": "demo", "token": token})
        headers = {"Content-Type": "application/x-www-form-urlencoded"}
        connection.request("POST", "/ui/login", body=body, headers=headers)
        response = connection.getresponse()
        assert "remediator_session=" in (response.getheader("Set-Cookie") or "")
        return response.status
    finally:
        connection.close()


@pytest.mark.timeout(120)
def test_keep_runs_until_ctrl_c_then_stops_everything(tmp_path: Path) -> None:
    require_binaries()
    process = demo(tmp_path, "--keep")
    assert process.stdout is not None
    lines: list[str] = []
    deadline = time.monotonic() + DEMO_TIMEOUT
    # readline blocks, but the demo prints at least every stage; the deadline is the test's.
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            break
        lines.append(line)
        if line.startswith("--keep: everything keeps running until Ctrl-C"):
            break
    out = "".join(lines)
    assert "--keep: everything keeps running" in out, out
    console = re.search(
        r"^console http://([\d.]+:\d+)/ui/ : log in with any name and the token (\S+)$",
        out,
        re.M,
    )
    assert console is not None, out
    assert log_in(console.group(1), console.group(2)) == 303
    started_urls = urls(out)
    assert all(not refused(u) for u in started_urls), "something stopped before Ctrl-C"

    process.send_signal(signal.SIGINT)
    out += finish(process)

    assert process.returncode == 0, out
    assert "stopped: remediator, Prometheus, Alertmanager and the simulated platform" in out
    assert [u for u in started_urls if not refused(u)] == []
