"""The Alertmanager and Prometheus examples are valid and route/scrape what remediator needs.

Checked with the real tools (``amtool``, ``promtool``), offline.
"""

from __future__ import annotations

import subprocess
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from remediator.adapters import loading
from remediator.core.playbooks import MatchOp
from remediator.engine.actions import registry
from tests.deploy import manifests

ALERTMANAGER = manifests.REPO / "deploy" / "alertmanager" / "remediator-receiver.yml"
PROMETHEUS = manifests.REPO / "deploy" / "prometheus" / "scrape.yml"
STORE_RULES = manifests.ALERTS / "stores.rules.yml"
SELF_RULES = manifests.ALERTS / "remediator.rules.yml"


def run(*command: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(c) for c in command], capture_output=True, text=True, check=False, timeout=30
    )


def load(path: Path) -> dict[str, Any]:
    loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
    assert isinstance(loaded, dict)
    return loaded


def alert_names(path: Path) -> list[str]:
    if not path.is_file():
        return []
    return [
        rule["alert"]
        for group in load(path)["groups"]
        for rule in group["rules"]
        if "alert" in rule
    ]


@cache
def known_alerts() -> tuple[str, ...]:
    return tuple(
        name for path in sorted(manifests.ALERTS.glob("*.rules.yml")) for name in alert_names(path)
    )


def playbook_alertnames() -> list[str]:
    """Alertnames the shipped playbooks trigger on: literal ones, and known alerts a regex takes."""
    found: set[str] = set()
    playbooks = loading.load_playbooks([manifests.PLAYBOOKS], registry.builtin())
    for playbook in playbooks.playbooks:
        for matcher in playbook.trigger.matchers:
            if matcher.name != "alertname":
                continue
            if matcher.op is MatchOp.EQUAL:
                found.add(matcher.value)
            elif matcher.op is MatchOp.REGEX and matcher.pattern is not None:
                found.update(a for a in known_alerts() if matcher.pattern.fullmatch(a))
    return sorted(found)


@cache
def receivers_for(alertname: str) -> list[str]:
    done = run(
        "amtool",
        "config",
        "routes",
        "test",
        f"--config.file={ALERTMANAGER}",
        f"alertname={alertname}",
        "store_id=s1",
        "severity=critical",
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip().split(",")


# Alertmanager


def test_alertmanager_config_is_valid() -> None:
    done = run("amtool", "check-config", ALERTMANAGER)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout


def remediator_receiver() -> dict[str, Any]:
    receivers: list[dict[str, Any]] = load(ALERTMANAGER)["receivers"]
    (receiver,) = [r for r in receivers if r["name"] == "remediator"]
    return receiver


def test_webhook_reaches_the_service_with_the_token() -> None:
    (webhook,) = remediator_receiver()["webhook_configs"]
    url = urlsplit(webhook["url"])
    assert url.path == "/webhook/alertmanager"
    assert url.hostname == "remediator.remediator.svc"
    assert url.port == manifests.values()["service"]["port"] == 9095
    assert webhook["send_resolved"] is True, "resolved alerts cancel queued runs"
    assert 0 < webhook["max_alerts"] <= 100
    authorization = webhook["http_config"]["authorization"]
    assert authorization["type"] == "Bearer"
    assert authorization["credentials_file"].startswith("/")
    assert "credentials" not in authorization, "the token belongs in a file, not the config"


def test_route_groups_per_store_and_keeps_paging() -> None:
    routes = load(ALERTMANAGER)["route"]["routes"]
    (route,) = [r for r in routes if r["receiver"] == "remediator"]
    assert route["group_by"] == ["alertname", "store_id"]
    assert route["continue"] is True, "remediator must not swallow the alerts humans get"
    for key in ("group_wait", "group_interval", "repeat_interval"):
        assert key in route


def test_the_alert_lists_below_are_not_empty() -> None:
    # Guards the parametrisations below against silently testing nothing.
    assert playbook_alertnames()
    assert alert_names(STORE_RULES)


@pytest.mark.parametrize("alertname", playbook_alertnames())
def test_every_playbook_alert_reaches_remediator_and_people(alertname: str) -> None:
    assert receivers_for(alertname) == ["remediator", "oncall"]


@pytest.mark.parametrize("alertname", alert_names(STORE_RULES))
def test_every_store_alert_reaches_remediator(alertname: str) -> None:
    assert "remediator" in receivers_for(alertname), (
        f"add {alertname} to the remediator route's alertname matcher in {ALERTMANAGER.name}"
    )


@pytest.mark.parametrize("alertname", [*alert_names(SELF_RULES), "Watchdog"])
def test_alerts_about_remediator_go_to_people_only(alertname: str) -> None:
    assert receivers_for(alertname) == ["oncall"]


# Prometheus


def test_prometheus_config_is_valid() -> None:
    done = run("promtool", "check", "config", PROMETHEUS)
    assert done.returncode == 0, done.stdout + done.stderr


def test_prometheus_loads_the_shipped_rule_files() -> None:
    (pattern,) = load(PROMETHEUS)["rule_files"]
    matched = sorted(p.resolve() for p in PROMETHEUS.parent.glob(pattern))
    assert matched == sorted(p.resolve() for p in manifests.ALERTS.glob("*.rules.yml"))
    done = run("promtool", "check", "config", PROMETHEUS)
    for path in matched:
        assert path.name in done.stdout


def test_scrape_job_is_named_as_the_alerts_expect() -> None:
    (job,) = load(PROMETHEUS)["scrape_configs"]
    # alerts/remediator.rules.yml selects up{job="remediator"}.
    assert job["job_name"] == "remediator"
    assert job["metrics_path"] == "/metrics"
    (static,) = job["static_configs"]
    assert static["targets"] == ["remediator.remediator.svc:9095"]


def test_remediator_scrapes_keep_the_stores_namespace_labels() -> None:
    # store_up{namespace="store-s1"} must reach the alert rules as is: with honor_labels off,
    # Prometheus renames it exported_namespace and StoreDown alerts lose their namespace.
    config = yaml.safe_load(PROMETHEUS.read_text())
    (job,) = [j for j in config["scrape_configs"] if j["job_name"] == "remediator"]
    assert job["honor_labels"] is True
    assert all("namespace" not in t.get("labels", {}) for t in job["static_configs"])
    monitor = (manifests.REPO / "helm-charts/remediator/templates/servicemonitor.yaml").read_text()
    assert "honorLabels: true" in monitor
