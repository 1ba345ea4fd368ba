"""The monitoring runners: generated configs, the real binaries, and the whole chain
(gauge -> Prometheus rule -> Alertmanager -> webhook receiver) on loopback."""

from __future__ import annotations

import asyncio
import socket
import stat
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import pytest
import structlog
import yaml

from remediator.simulation import monitoring
from tests import monitoring_fixtures

TOKEN = "webhook-s3cret"

STORE_DOWN_RULES = """\
groups:
  - name: stores
    rules:
      - alert: StoreDown
        expr: store_up == 0
        for: 1s
        labels:
          severity: critical
        annotations:
          summary: "Store {{ $labels.store_id }} is down"
"""


@pytest.fixture
async def webhook_receiver() -> AsyncIterator[monitoring_fixtures.WebhookReceiver]:
    async with monitoring_fixtures.serve_webhook_receiver() as receiver:
        yield receiver


@pytest.fixture
async def gauge_target() -> AsyncIterator[monitoring_fixtures.GaugeTarget]:
    async with monitoring_fixtures.serve_gauge() as target:
        yield target


@pytest.fixture
def rule_file(tmp_path: Path) -> Path:
    path = tmp_path / "rules.yml"
    path.write_text(STORE_DOWN_RULES)
    return path


def alertmanager_spec(receiver_url: str) -> monitoring.AlertmanagerSpec:
    return monitoring.AlertmanagerSpec(webhook_url=receiver_url, bearer_token=TOKEN)


# --- generated configs --------------------------------------------------------------------------


@pytest.mark.e2e
@pytest.mark.parametrize(
    ("tool", "subcommand"),
    [(monitoring.PROMTOOL_BINARY, "check config"), (monitoring.AMTOOL_BINARY, "check-config")],
    ids=["promtool", "amtool"],
)
async def test_generated_configs_pass_the_official_checks(
    tmp_path: Path, rule_file: Path, tool: str, subcommand: str
) -> None:
    if tool == monitoring.PROMTOOL_BINARY:
        spec = monitoring.PrometheusSpec(
            scrape_targets=[
                monitoring.ScrapeTarget(job="stores", address="127.0.0.1:9001"),
                monitoring.ScrapeTarget(job="stores", address="127.0.0.1:9002"),
                monitoring.ScrapeTarget(job="api", address="127.0.0.1:9003", interval="5s"),
            ],
            rule_files=[rule_file],
            alertmanager_url="http://127.0.0.1:9093",
        )
        config = monitoring.write_prometheus_config(spec, workdir=tmp_path)
    else:
        config = monitoring.write_alertmanager_config(
            alertmanager_spec("http://127.0.0.1:8080/alerts"), workdir=tmp_path
        )

    process = await asyncio.create_subprocess_exec(
        tool,
        *subcommand.split(),
        str(config),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    output, _ = await process.communicate()

    assert process.returncode == 0, output.decode()


def test_prometheus_config_groups_targets_per_job(tmp_path: Path, rule_file: Path) -> None:
    spec = monitoring.PrometheusSpec(
        scrape_targets=[
            monitoring.ScrapeTarget(job="stores", address="127.0.0.1:9001"),
            monitoring.ScrapeTarget(job="stores", address="127.0.0.1:9002"),
        ],
        rule_files=[rule_file],
        alertmanager_url="http://127.0.0.1:9093/am",
    )

    config = yaml.safe_load(monitoring.write_prometheus_config(spec, workdir=tmp_path).read_text())

    assert config["scrape_configs"] == [
        {
            "job_name": "stores",
            "scrape_interval": "1s",
            "metrics_path": "/metrics",
            "static_configs": [{"targets": ["127.0.0.1:9001", "127.0.0.1:9002"]}],
        }
    ]
    assert config["rule_files"] == [str(rule_file.resolve())]
    assert config["alerting"]["alertmanagers"] == [
        {
            "scheme": "http",
            "path_prefix": "/am",
            "static_configs": [{"targets": ["127.0.0.1:9093"]}],
        }
    ]


def test_prometheus_config_refuses_one_job_with_two_intervals(tmp_path: Path) -> None:
    spec = monitoring.PrometheusSpec(
        scrape_targets=[
            monitoring.ScrapeTarget(job="stores", address="127.0.0.1:9001"),
            monitoring.ScrapeTarget(job="stores", address="127.0.0.1:9002", interval="5s"),
        ]
    )
    with pytest.raises(ValueError, match="'stores'"):
        monitoring.write_prometheus_config(spec, workdir=tmp_path)


def test_alertmanager_token_goes_to_a_private_file(tmp_path: Path) -> None:
    # A leftover from an earlier run with wide permissions must be tightened, too.
    (tmp_path / "webhook-token").write_text("old")
    (tmp_path / "webhook-token").chmod(0o644)

    config_file = monitoring.write_alertmanager_config(
        alertmanager_spec("http://127.0.0.1:8080/alerts"), workdir=tmp_path
    )

    text = config_file.read_text()
    assert TOKEN not in text
    webhook = yaml.safe_load(text)["receivers"][0]["webhook_configs"][0]
    token_file = Path(webhook["http_config"]["authorization"]["credentials_file"])
    assert token_file.read_text() == TOKEN
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    assert webhook["send_resolved"] is True


def test_missing_binaries_are_named() -> None:
    assert monitoring.missing_binaries(["prometheus", "no-such-binary-x"]) == ("no-such-binary-x",)
    assert monitoring.binaries_available(["no-such-binary-x"]) is False
    # .ci/setup installs both servers wherever the tests run.
    assert monitoring.binaries_available() is True


async def test_run_without_the_binary_says_which_is_missing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(monitoring.MonitoringError, match="prometheus-alertmanager not found"):
        async with monitoring.run_alertmanager(alertmanager_spec("http://x/"), workdir=tmp_path):
            pass


# --- the real binaries --------------------------------------------------------------------------


@pytest.mark.e2e
async def test_alertmanager_delivers_a_posted_alert_with_the_bearer_token(
    tmp_path: Path, webhook_receiver: monitoring_fixtures.WebhookReceiver
) -> None:
    spec = alertmanager_spec(webhook_receiver.url)
    async with (
        monitoring.run_alertmanager(spec, workdir=tmp_path) as alertmanager,
        aiohttp.ClientSession() as session,
    ):
        alert = {"labels": {"alertname": "StoreDown", "store_id": "s7"}}
        async with session.post(f"{alertmanager.url}/api/v2/alerts", json=[alert]) as response:
            assert response.status == 200

        delivery = await webhook_receiver.next_delivery()

    assert delivery.authorization == f"Bearer {TOKEN}"
    assert delivery.payload["status"] == "firing"
    assert delivery.payload["externalURL"] == alertmanager.url
    assert delivery.payload["groupLabels"] == {"alertname": "StoreDown", "store_id": "s7"}
    assert [a["labels"] for a in delivery.payload["alerts"]] == [alert["labels"]]


@pytest.mark.e2e
async def test_prometheus_rule_fires_through_alertmanager_and_resolves(
    tmp_path: Path,
    rule_file: Path,
    gauge_target: monitoring_fixtures.GaugeTarget,
    webhook_receiver: monitoring_fixtures.WebhookReceiver,
) -> None:
    store = gauge_target.gauge.labels(store_id="s1")
    store.set(0.0)
    async with monitoring.run_alertmanager(
        alertmanager_spec(webhook_receiver.url), workdir=tmp_path / "alertmanager"
    ) as alertmanager:
        prometheus_spec = monitoring.PrometheusSpec(
            scrape_targets=[monitoring.ScrapeTarget(job="stores", address=gauge_target.address)],
            rule_files=[rule_file],
            alertmanager_url=alertmanager.url,
        )
        async with monitoring.run_prometheus(
            prometheus_spec, workdir=tmp_path / "prometheus"
        ) as prometheus:
            firing = await webhook_receiver.next_delivery()
            store.set(1.0)
            resolved = await webhook_receiver.next_delivery()

    assert firing.authorization == resolved.authorization == f"Bearer {TOKEN}"
    assert (firing.payload["status"], resolved.payload["status"]) == ("firing", "resolved")
    [alert] = firing.payload["alerts"]
    assert alert["labels"] == {
        "alertname": "StoreDown",
        "instance": gauge_target.address,
        "job": "stores",
        "severity": "critical",
        "store_id": "s1",
    }
    assert alert["annotations"] == {"summary": "Store s1 is down"}
    assert alert["generatorURL"].startswith(f"{prometheus.url}/graph?")
    assert [a["fingerprint"] for a in resolved.payload["alerts"]] == [alert["fingerprint"]]


@pytest.mark.e2e
async def test_prometheus_that_exits_early_reports_its_log(tmp_path: Path) -> None:
    broken = tmp_path / "broken.yml"
    broken.write_text(STORE_DOWN_RULES.replace("store_up == 0", "sum(store_up"))
    spec = monitoring.PrometheusSpec(rule_files=[broken])

    with pytest.raises(monitoring.MonitoringError) as info:
        async with monitoring.run_prometheus(spec, workdir=tmp_path):
            pass

    assert "exited with code 1" in str(info.value)
    assert "unclosed left parenthesis" in str(info.value)


@pytest.mark.e2e
async def test_cancellation_stops_the_process(
    tmp_path: Path, webhook_receiver: monitoring_fixtures.WebhookReceiver
) -> None:
    started: asyncio.Queue[asyncio.subprocess.Process] = asyncio.Queue()

    async def run_until_cancelled() -> None:
        spec = alertmanager_spec(webhook_receiver.url)
        async with monitoring.run_alertmanager(spec, workdir=tmp_path) as alertmanager:
            await started.put(alertmanager.process)
            await asyncio.Event().wait()

    task = asyncio.create_task(run_until_cancelled())
    async with asyncio.timeout(monitoring_fixtures.MONITORING_BUDGET):
        process = await started.get()
    assert process.returncode is None

    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    # Reaped, not merely signalled: a returncode exists only after the process is gone.
    assert process.returncode is not None


@pytest.mark.e2e
async def test_failing_body_stops_the_process(
    tmp_path: Path, webhook_receiver: monitoring_fixtures.WebhookReceiver
) -> None:
    processes = []
    with pytest.raises(RuntimeError, match="boom"):
        spec = alertmanager_spec(webhook_receiver.url)
        async with monitoring.run_alertmanager(spec, workdir=tmp_path) as alertmanager:
            processes.append(alertmanager.process)
            raise RuntimeError("boom")

    assert [process.returncode for process in processes] == [0]


@pytest.mark.e2e
async def test_never_ready_is_reported_and_stopped(
    tmp_path: Path, webhook_receiver: monitoring_fixtures.WebhookReceiver
) -> None:
    spec = alertmanager_spec(webhook_receiver.url)
    with (
        structlog.testing.capture_logs() as logs,
        pytest.raises(monitoring.MonitoringError, match="did not become ready"),
    ):
        async with monitoring.run_alertmanager(spec, workdir=tmp_path, ready_timeout=0):
            pass

    [stopped] = [entry for entry in logs if entry["event"] == "monitoring_process_stopped"]
    assert stopped["returncode"] is not None


async def test_a_process_ignoring_sigterm_is_killed_after_the_grace() -> None:
    stubborn = (
        "import signal, time\n"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "print('ignoring', flush=True)\n"
        "time.sleep(60)\n"
    )
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-c", stubborn, stdout=asyncio.subprocess.PIPE
    )
    assert process.stdout is not None
    assert await process.stdout.readline() == b"ignoring\n"

    with structlog.testing.capture_logs() as logs:
        await monitoring.stop_process(process, binary="stubborn", grace=0.2)

    assert process.returncode == -9
    assert [entry["event"] for entry in logs] == [
        "monitoring_process_killed",
        "monitoring_process_stopped",
    ]


@pytest.fixture
def taken_port() -> Iterator[int]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port: int = sock.getsockname()[1]
        yield port


@pytest.mark.e2e
async def test_a_taken_port_is_retried_with_another(
    tmp_path: Path,
    webhook_receiver: monitoring_fixtures.WebhookReceiver,
    taken_port: int,
) -> None:
    # The race being covered (another process binding the probed port first) cannot be
    # provoked from outside, so the first pick is a port that is in use.
    ports = iter([taken_port])

    def pick() -> int:
        return next(ports, None) or monitoring.pick_free_port()

    with structlog.testing.capture_logs() as logs:
        spec = alertmanager_spec(webhook_receiver.url)
        async with monitoring.run_alertmanager(
            spec, workdir=tmp_path, pick_port=pick
        ) as alertmanager:
            assert alertmanager.process.returncode is None
            assert alertmanager.url != f"http://127.0.0.1:{taken_port}"

    retries = [entry for entry in logs if entry["event"] == "monitoring_port_retried"]
    assert [entry["address"] for entry in retries] == [f"127.0.0.1:{taken_port}"]
