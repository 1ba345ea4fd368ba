"""The Prometheus alert rules in alerts/ and their contract with remediator's playbooks.

promtool accepts every rule file and passes every unit test file; every rule is annotated and
labelled the way Alertmanager routing and the playbooks expect; and every playbook's trigger names
an alert defined here that can carry the label values the trigger matches on.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry
from prometheus_client.metrics import MetricWrapperBase

from remediator.adapters import loading, metrics
from remediator.core import matching
from remediator.core.playbooks import Matcher, MatchOp, Playbook, Trigger
from remediator.engine.actions import registry
from remediator.simulation import monitoring

ROOT = Path(__file__).resolve().parents[2]
ALERTS = ROOT / "alerts"
RULE_FILES = sorted(ALERTS.glob("*.rules.yml"))
TEST_FILES = sorted((ALERTS / "tests").glob("*_test.yml"))
PLAYBOOKS = ROOT / "playbooks"

SEVERITIES = frozenset({"critical", "warning", "info"})
STORE_GROUP = "stores"
"""Per-store alerts: each carries store_id and namespace, for playbooks to target the store."""
PLATFORM_GROUP = "store-platform"
"""Alerts on the provisioning machinery: namespace="store-platform" and never a store_id."""
STORE_ID_FROM_NAMESPACE = '"store_id", "$1", "namespace", "store-(.+)"'
"""label_replace's arguments wherever a store alert's metric has a namespace but no store_id."""

# The metric contract the rules are written against: each metric's own labels (the scrape adds
# job and instance, which the rules aggregate away). The remediator_* ones are checked against
# remediator/adapters/metrics.py below.
METRIC_LABELS: Mapping[str, frozenset[str]] = {
    # remediator's prober and store discovery
    "store_up": frozenset({"store_id", "namespace"}),
    "store_probe_duration_seconds": frozenset(),
    "store_probe_failures_total": frozenset({"reason"}),
    "stores": frozenset({"phase"}),
    "store_phase_duration_seconds": frozenset({"store_id", "namespace", "phase"}),
    "store_provisioning_duration_seconds": frozenset(),
    "store_provisioning_failures_total": frozenset({"reason"}),
    "stores_provisioning_stuck": frozenset(),
    "store_component_ready": frozenset({"store_id", "namespace", "component"}),
    "provisioner_up": frozenset(),
    # remediator itself
    "remediator_runs_total": frozenset({"playbook", "outcome"}),
    "remediator_breakers_open": frozenset({"playbook"}),
    "remediator_storm_active": frozenset({"playbook", "alertname"}),
    "remediator_paused": frozenset(),
    "remediator_paused_since_timestamp_seconds": frozenset(),
    "remediator_queue_depth": frozenset(),
    "remediator_webhook_requests_total": frozenset({"code"}),
    "remediator_leader": frozenset(),
    "remediator_replica_lease_ok": frozenset(),
    # Prometheus and the platform's exporters
    "up": frozenset({"job", "instance"}),
    "http_requests_total": frozenset({"namespace", "status"}),
    "kubelet_volume_stats_available_bytes": frozenset({"namespace", "persistentvolumeclaim"}),
    "kubelet_volume_stats_capacity_bytes": frozenset({"namespace", "persistentvolumeclaim"}),
    "container_memory_usage_bytes": frozenset({"namespace", "pod", "container"}),
    "container_spec_memory_limit_bytes": frozenset({"namespace", "pod", "container"}),
}

OPEN = None
"""Any value: the label is copied from the series."""
PROVISIONING_REASONS = frozenset(
    {"helm_failed", "image_pull", "crash_loop", "pvc_pending", "timeout"}
)

# The labels each alert's expression yields, besides the rule's own `labels:`, and the values
# they can take where the expression pins them. Read off the expression: its outer `by (...)`,
# plus what label_replace adds; or, without aggregation, the metric's labels above.
# The promtool unit tests prove it: their exp_labels must have exactly these keys.
SERIES_LABELS: Mapping[str, Mapping[str, frozenset[str] | None]] = {
    # by (namespace, store_id)
    "StoreDown": {"namespace": OPEN, "store_id": OPEN},
    # by (namespace, store_id, component) of component="db"
    "StoreDatabaseDown": {"namespace": OPEN, "store_id": OPEN, "component": frozenset({"db"})},
    # by (namespace, store_id)
    "StoreProvisioningStuck": {"namespace": OPEN, "store_id": OPEN},
    "StoreDeletionStuck": {"namespace": OPEN, "store_id": OPEN},
    # by (namespace) + label_replace(store_id)
    "HighErrorRate": {"namespace": OPEN, "store_id": OPEN},
    # by (namespace, persistentvolumeclaim) + label_replace(store_id)
    "DiskSpaceLow": {"namespace": OPEN, "persistentvolumeclaim": OPEN, "store_id": OPEN},
    # by (namespace, pod, container) + label_replace(store_id)
    "MemoryHigh": {"namespace": OPEN, "pod": OPEN, "container": OPEN, "store_id": OPEN},
    # by (reason)
    "StoreProvisioningFailed": {"reason": PROVISIONING_REASONS},
    # max(...): no labels
    "ProvisionerAPIDown": {},
    # by (job) of job="remediator"; absent(up{job="remediator"})
    "RemediatorDown": {"job": frozenset({"remediator"})},
    # by (playbook)
    "RemediatorRunsFailing": {"playbook": OPEN},
    "RemediatorBreakerOpen": {"playbook": OPEN},
    # by (playbook, storm_alertname), storm_alertname from the metric's alertname
    "RemediatorStormMode": {"playbook": OPEN, "storm_alertname": OPEN},
    # max(...): no labels
    "RemediatorPausedTooLong": {},
    # sum(...) and min(...): no labels
    "RemediatorLeaderless": {},
    "RemediatorStateStoreUnreachable": {},
    "RemediatorQueueBacklog": {},
    # by (code) of code=~"5.."
    "RemediatorWebhookErrors": {"code": OPEN},
}


@dataclass(frozen=True, slots=True, kw_only=True)
class Rule:
    alert: str
    expr: str
    labels: Mapping[str, str]
    annotations: Mapping[str, str]
    group: str
    source: str


@dataclass(frozen=True, slots=True, kw_only=True)
class AlertCase:
    """One `alert_rule_test` entry of a promtool test file."""

    alertname: str
    exp_labels: tuple[Mapping[str, str], ...]
    where: str


def read_rules() -> list[Rule]:
    rules = []
    for path in RULE_FILES:
        raw: Any = yaml.safe_load(path.read_text())
        for group in raw["groups"]:
            for rule in group["rules"]:
                if "alert" not in rule:
                    continue
                rules.append(
                    Rule(
                        alert=rule["alert"],
                        expr=rule["expr"],
                        labels={k: str(v) for k, v in (rule.get("labels") or {}).items()},
                        annotations=dict(rule.get("annotations") or {}),
                        group=group["name"],
                        source=path.name,
                    )
                )
    return rules


def read_alert_cases() -> list[AlertCase]:
    cases = []
    for path in TEST_FILES:
        raw: Any = yaml.safe_load(path.read_text())
        for test in raw["tests"]:
            for case in test.get("alert_rule_test") or ():
                exp_alerts = case.get("exp_alerts") or ()
                cases.append(
                    AlertCase(
                        alertname=case["alertname"],
                        exp_labels=tuple(
                            {k: str(v) for k, v in (a.get("exp_labels") or {}).items()}
                            for a in exp_alerts
                        ),
                        where=f"{path.name}: {test.get('name', '?')} @ {case['eval_time']}",
                    )
                )
    return cases


RULES = read_rules()
RULES_BY_NAME = {rule.alert: rule for rule in RULES}
ALERT_CASES = read_alert_cases()


def rule_id(rule: Rule) -> str:
    return rule.alert


def run_promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [monitoring.PROMTOOL_BINARY, *args],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (enough PromQL for these rules)."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # string literals
    text = re.sub(r"\{[^}]*\}|\[[^\]]*\]", " ", text)  # matchers, ranges
    text = re.sub(
        r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text
    )  # label lists
    keywords = {"and", "or", "unless", "bool", "offset", "by", "without", "on", "ignoring"}
    return {
        token.group()
        for token in re.finditer(r"(?<![\w:.])[A-Za-z_:][\w:]*(?![\w:]|\s*\()", text)
        if token.group() not in keywords
    }


def produced_labels(rule: Rule) -> dict[str, frozenset[str] | None]:
    """Every label the alert can carry (but alertname), with its possible values."""
    labels = dict(SERIES_LABELS[rule.alert])
    labels.update({name: frozenset({value}) for name, value in rule.labels.items()})
    return labels


# --- promtool -----------------------------------------------------------------------------------


def test_there_are_rules_and_tests() -> None:
    assert [p.name for p in RULE_FILES] == ["remediator.rules.yml", "stores.rules.yml"]
    assert TEST_FILES
    assert RULES


@pytest.mark.parametrize("path", RULE_FILES, ids=[p.name for p in RULE_FILES])
def test_promtool_checks_rules(path: Path) -> None:
    result = run_promtool("check", "rules", str(path))

    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("path", TEST_FILES, ids=[p.name for p in TEST_FILES])
def test_promtool_unit_tests_pass(path: Path) -> None:
    result = run_promtool("test", "rules", str(path))

    assert result.returncode == 0, result.stdout + result.stderr


def test_every_rule_file_has_unit_tests() -> None:
    tested: set[Path] = set()
    for path in TEST_FILES:
        raw: Any = yaml.safe_load(path.read_text())
        tested.update((path.parent / name).resolve() for name in raw["rule_files"])

    assert set(RULE_FILES) <= tested


@pytest.mark.parametrize("rule", RULES, ids=rule_id)
def test_every_alert_is_tested_firing_and_quiet(rule: Rule) -> None:
    cases = [c for c in ALERT_CASES if c.alertname == rule.alert]

    assert any(c.exp_labels for c in cases), f"{rule.alert}: no unit test where it fires"
    assert any(not c.exp_labels for c in cases), f"{rule.alert}: no unit test where it is quiet"


# --- labels and annotations ---------------------------------------------------------------------


def test_alert_names_are_unique() -> None:
    assert len(RULES_BY_NAME) == len(RULES)


@pytest.mark.parametrize("rule", RULES, ids=rule_id)
def test_rule_has_summary_description_and_severity(rule: Rule) -> None:
    assert rule.annotations.get("summary", "").strip()
    assert rule.annotations.get("description", "").strip()
    assert rule.labels.get("severity") in SEVERITIES


@pytest.mark.parametrize("rule", RULES, ids=rule_id)
def test_rule_uses_only_contract_metrics(rule: Rule) -> None:
    unknown = metric_names(rule.expr) - set(METRIC_LABELS)

    assert not unknown, f"{rule.alert}: metrics outside the contract: {sorted(unknown)}"


def test_label_table_covers_exactly_the_rules() -> None:
    assert set(SERIES_LABELS) == set(RULES_BY_NAME)


@pytest.mark.parametrize("rule", RULES, ids=rule_id)
def test_label_table_agrees_with_the_unit_tests(rule: Rule) -> None:
    produced = produced_labels(rule)
    assert not set(SERIES_LABELS[rule.alert]) & set(rule.labels), "a rule label hides a series one"

    for case in ALERT_CASES:
        if case.alertname != rule.alert:
            continue
        for labels in case.exp_labels:
            # promtool adds alertname to the expected labels itself.
            assert set(labels) - {"alertname"} == set(produced), case.where
            for name, value in labels.items():
                values = produced.get(name)
                assert values is None or value in values, f"{case.where}: {name}={value!r}"


@pytest.mark.parametrize("rule", [r for r in RULES if r.group == STORE_GROUP], ids=rule_id)
def test_store_alerts_carry_store_id_and_namespace(rule: Rule) -> None:
    assert rule.source == "stores.rules.yml"
    assert {"store_id", "namespace"} <= set(produced_labels(rule))
    if any("store_id" not in METRIC_LABELS[m] for m in metric_names(rule.expr)):
        # The metric has only a namespace: store_id comes from it, and the platform's own
        # namespace must not turn into a store called "platform".
        assert STORE_ID_FROM_NAMESPACE in " ".join(rule.expr.split())
        assert 'namespace!="store-platform"' in rule.expr


@pytest.mark.parametrize("rule", [r for r in RULES if r.group == PLATFORM_GROUP], ids=rule_id)
def test_platform_alerts_carry_the_platform_namespace_and_no_store_id(rule: Rule) -> None:
    assert rule.labels.get("namespace") == "store-platform"
    assert "store_id" not in produced_labels(rule)


@pytest.mark.parametrize("rule", RULES, ids=rule_id)
def test_every_rule_is_in_a_known_group(rule: Rule) -> None:
    assert (rule.source, rule.group) in {
        ("stores.rules.yml", STORE_GROUP),
        ("stores.rules.yml", PLATFORM_GROUP),
        ("remediator.rules.yml", "remediator"),
    }


def test_daemon_exports_the_metrics_the_rules_use() -> None:
    metric_registry = CollectorRegistry()
    wrappers: dict[str, MetricWrapperBase] = {}
    for value in vars(metrics.Metrics(metric_registry)).values():
        if isinstance(value, MetricWrapperBase):
            (family,) = value.describe()
            suffix = "_total" if family.type == "counter" else ""
            wrappers[family.name + suffix] = value

    daemon_metrics = {name for name in METRIC_LABELS if name.startswith("remediator_")}
    assert daemon_metrics <= set(wrappers)
    # Store metrics may live in another collector; where they are in Metrics, check them too.
    for name in sorted(set(METRIC_LABELS) & set(wrappers)):
        labels = {label: "x" for label in METRIC_LABELS[name]}
        if labels:
            wrappers[name].labels(**labels)  # ValueError when the label names differ
        assert metric_registry.get_sample_value(name, labels) is not None, name


# --- playbooks ----------------------------------------------------------------------------------


def accepts(matcher: Matcher) -> Callable[[str], bool]:
    if matcher.op is MatchOp.EQUAL:
        return lambda value: value == matcher.value
    if matcher.op is MatchOp.NOT_EQUAL:
        return lambda value: value != matcher.value
    assert matcher.pattern is not None
    pattern = matcher.pattern
    if matcher.op is MatchOp.REGEX:
        return lambda value: pattern.fullmatch(value) is not None
    return lambda value: pattern.fullmatch(value) is None


def unmatchable(playbook: Playbook, rule: Rule) -> list[str]:
    """The trigger's label matchers that no alert of this rule can satisfy."""
    produced = produced_labels(rule)
    problems = []
    for matcher in playbook.trigger.matchers:
        if matcher.name == "alertname":
            continue
        ok = accepts(matcher)
        if ok(""):
            # Also satisfied by an alert without the label (`!=`, `!~`, `=""`, `=~".*"`).
            continue
        values = produced.get(matcher.name, frozenset())
        if values is OPEN:
            continue
        if not any(ok(v) for v in values):
            source = "sets" if matcher.name in rule.labels else "yields"
            found = ", ".join(sorted(values)) or "no such label"
            problems.append(f"{matcher}: rule {rule.alert} {source} {matcher.name}: {found}")
    return problems


def trigger_problems(playbooks: Sequence[Playbook]) -> list[str]:
    problems = []
    for playbook in playbooks:
        where = f"{playbook.source}: playbook {playbook.name}"
        by_name = [m for m in playbook.trigger.matchers if m.name == "alertname"]
        if not any(m.op in (MatchOp.EQUAL, MatchOp.REGEX) for m in by_name):
            problems.append(f"{where}: trigger has no alertname= (or =~) matcher")
            continue
        candidates = [r for r in RULES if all(accepts(m)(r.alert) for m in by_name)]
        if not candidates:
            wanted = ", ".join(str(m) for m in by_name)
            problems.append(f"{where}: no alert rule in alerts/*.rules.yml matches {wanted}")
            continue
        # One alert that satisfies every matcher is enough (a regex may name several).
        reasons = [unmatchable(playbook, rule) for rule in candidates]
        if all(reasons):
            problems.extend(f"{where}: {reason}" for found in reasons for reason in found)
    return problems


def test_playbook_triggers_have_rules() -> None:
    playbook_set = loading.load_playbooks([PLAYBOOKS], registry.builtin())
    assert playbook_set.playbooks

    problems = trigger_problems(playbook_set.playbooks)

    assert not problems, "\n".join(problems)


def playbook_on(*matchers: str) -> Playbook:
    return Playbook(
        name="p",
        source="p.yaml",
        trigger=Trigger(matchers=tuple(matching.parse_matcher(m) for m in matchers)),
        target="t",
        steps=(),
    )


@pytest.mark.parametrize(
    ("matchers", "problem"),
    [
        (('alertname="StoreDown"', 'severity="critical"', 'store_id=~"[a-z0-9-]+"'), None),
        (('alertname="StoreDatabaseDown"', 'component="db"', 'namespace=~"store-.+"'), None),
        (('alertname=~"Store(Provisioning|Deletion)Stuck"', 'severity=~"warning|info"'), None),
        (('alertname="ProvisionerAPIDown"', 'namespace="store-platform"', 'team!="x"'), None),
        (('alertname="StoreProvisioningFailed"', 'reason="image_pull"'), None),
        (('alertname="StoreGone"',), "no alert rule in alerts/*.rules.yml matches"),
        (('alertname!="StoreDown"', 'severity="critical"'), "no alertname= (or =~) matcher"),
        (('alertname="StoreDown"', 'severity="warning"'), "StoreDown sets severity: critical"),
        (('alertname="StoreDatabaseDown"', 'component="app"'), "yields component: db"),
        (('alertname="ProvisionerAPIDown"', 'store_id=~".+"'), "store_id: no such label"),
        (('alertname="StoreProvisioningFailed"', 'reason="oom"'), "yields reason: crash_loop"),
    ],
    ids=[
        "severity-static",
        "component-pinned",
        "alertname-regex",
        "namespace-static",
        "reason-closed-set",
        "unknown-alert",
        "no-alertname",
        "wrong-severity",
        "wrong-component",
        "label-never-set",
        "unknown-reason",
    ],
)
def test_trigger_check_judges_each_matcher(matchers: tuple[str, ...], problem: str | None) -> None:
    problems = trigger_problems([playbook_on(*matchers)])

    if problem is None:
        assert problems == []
    else:
        assert len(problems) == 1
        assert problem in problems[0]
