"""The Grafana dashboard: well-formed, its queries valid PromQL over metrics we export."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry

from remediator.adapters import metrics
from tests.deploy import manifests

DASHBOARD = manifests.REPO / "deploy" / "grafana" / "remediator-dashboard.json"
NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
FUNCTIONS_AND_KEYWORDS = frozenset(
    {
        "sum",
        "count",
        "max",
        "min",
        "avg",
        "by",
        "without",
        "rate",
        "increase",
        "vector",
        "histogram_quantile",
        "or",
        "and",
        "unless",
        "le",
        "on",
        "ignoring",
    }
)


def load() -> dict[str, Any]:
    return dict(json.loads(DASHBOARD.read_text(encoding="utf-8")))


def panels() -> list[dict[str, Any]]:
    return [p for p in load()["panels"] if p["type"] != "row"]


def expressions() -> list[str]:
    return [t["expr"] for p in panels() for t in p["targets"]]


def exported_names() -> set[str]:
    """Every sample name the daemon's registries can expose (histogram suffixes included)."""
    registry = CollectorRegistry()
    metrics.Metrics(registry)
    metrics.StoreMetrics(registry, provisioner=True)
    names = set()
    for family in registry.collect():
        names.add(family.name)
        names.update(f"{family.name}{suffix}" for suffix in ("_total", "_bucket", "_sum", "_count"))
    return names


def test_the_dashboard_is_well_formed() -> None:
    dashboard = load()

    assert dashboard["uid"] == "remediator-overview"
    assert dashboard["templating"]["list"][0]["type"] == "datasource"
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in panels():
        assert panel["title"], panel
        assert panel["targets"], panel["title"]
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]


@pytest.mark.parametrize("expr", expressions())
def test_every_query_reads_exported_metrics(expr: str) -> None:
    # Strip label matchers and legend-free strings, then what is left that is not PromQL is a
    # metric name, which must be one the daemon exports.
    bare = re.sub(r"\{[^}]*\}|\[[^\]]*\]|\"[^\"]*\"", " ", expr)
    names = {n for n in NAME.findall(bare) if n not in FUNCTIONS_AND_KEYWORDS}
    names -= {"playbook", "outcome", "reason", "phase", "code", "kind", "status", "action"}

    unknown = names - exported_names()

    assert not unknown, f"{expr}: not exported by remediator: {sorted(unknown)}"


def test_every_query_is_valid_promql(tmp_path: Path) -> None:
    # promtool parses recording-rule expressions, which checks the PromQL offline.
    rules = {
        "groups": [
            {
                "name": "dashboard",
                "rules": [
                    {"record": f"dashboard:query_{i}", "expr": expr}
                    for i, expr in enumerate(expressions())
                ],
            }
        ]
    }
    path = tmp_path / "dashboard.rules.yml"
    path.write_text(yaml.safe_dump(rules), encoding="utf-8")

    done = subprocess.run(
        ["promtool", "check", "rules", str(path)], capture_output=True, text=True, check=False
    )

    assert done.returncode == 0, done.stdout + done.stderr
