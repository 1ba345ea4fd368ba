"""The daemon's metric set: series that must exist before their first event."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from remediator.adapters import metrics


def test_run_series_of_known_playbooks_exist_at_zero() -> None:
    # increase() cannot see a series' first increment: RemediatorRunsFailing needs the failed
    # series of every playbook to exist before that playbook's first failure.
    metric_set = metrics.Metrics(CollectorRegistry())

    metric_set.know_playbooks(["store-down", "db-down"])

    for playbook in ("store-down", "db-down"):
        for outcome in metrics.RUN_OUTCOMES:
            labels = {"playbook": playbook, "outcome": outcome}
            assert metric_set.registry.get_sample_value("remediator_runs_total", labels) == 0.0
    unknown = {"playbook": "other", "outcome": "failed"}
    assert metric_set.registry.get_sample_value("remediator_runs_total", unknown) is None


@pytest.mark.parametrize("code", metrics.WEBHOOK_CODES, ids=str)
def test_webhook_status_series_exist_from_the_start(code: str) -> None:
    metric_set = metrics.Metrics(CollectorRegistry())

    value = metric_set.registry.get_sample_value(
        "remediator_webhook_requests_total", {"code": code}
    )

    assert value == 0.0


def test_store_metrics_are_exposed_only_while_leading() -> None:
    exposed = CollectorRegistry()
    store_metrics = metrics.StoreMetrics(CollectorRegistry(), provisioner=True)
    leading = [True]
    exposed.register(metrics.WhileLeading(store_metrics.registry, lambda: leading[0]))
    store_metrics.store_up.labels(store_id="s1", namespace="store-s1").set(1)
    assert store_metrics.provisioner_up is not None
    store_metrics.provisioner_up.set(1)

    assert exposed.get_sample_value("store_up", {"store_id": "s1", "namespace": "store-s1"}) == 1
    assert exposed.get_sample_value("provisioner_up") == 1
    leading[0] = False
    assert exposed.get_sample_value("store_up", {"store_id": "s1", "namespace": "store-s1"}) is None
    assert exposed.get_sample_value("provisioner_up") is None
    assert b"store_up" not in generate_latest(exposed)
