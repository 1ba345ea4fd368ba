"""The Helm chart, checked without helm: metadata, values and schema, template hygiene, copies.

There is no helm binary here, so templates are read as skeletons (see ``manifests.skeleton``):
every branch taken, values substituted where a template prints one plainly. That checks the
literal YAML and every ``.Values`` reference; it does not evaluate Sprig functions.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import re
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

import remediator
from remediator import config
from tests.deploy import manifests

CHART = manifests.CHART
TEMPLATE_FILES = sorted(p.name for p in manifests.TEMPLATES.iterdir() if p.is_file())
YAML_TEMPLATES = [n for n in TEMPLATE_FILES if n.endswith(".yaml")]
CRD_KINDS = {"ServiceMonitor", "PrometheusRule"}
UNSUPPORTED_CONFIG = {
    # The chart always uses token files (mounted Secrets), never environment variables, and
    # never runs without authentication.
    "auth.token_env",
    "auth.api_token_env",
    "auth.viewer_token_env",
    "auth.insecure_no_auth",
    "provisioner.token_env",
    "state.password_env",
    # One ConfigMap serves every replica: each names itself (its host name, the pod's name).
    "ha.replica_id",
    # In-cluster: the service account, no kubeconfig.
    "kubernetes.kubeconfig",
    "kubernetes.context",
}
"""Settings the chart deliberately offers no value for."""


def schema() -> dict[str, Any]:
    loaded = json.loads((CHART / "values.schema.json").read_text(encoding="utf-8"))
    assert isinstance(loaded, dict)
    return loaded


def template_text(name: str) -> str:
    return (manifests.TEMPLATES / name).read_text(encoding="utf-8")


# Chart.yaml


def test_chart_metadata() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text(encoding="utf-8"))
    pyproject = tomllib.loads((manifests.REPO / "pyproject.toml").read_text(encoding="utf-8"))
    assert chart["apiVersion"] == "v2"
    assert chart["name"] == "remediator"
    assert chart["type"] == "application"
    assert re.fullmatch(r"\d+\.\d+\.\d+", chart["version"])
    assert chart["appVersion"] == pyproject["project"]["version"] == remediator.__version__
    assert chart["description"]


# values.yaml and values.schema.json


def test_schema_is_draft_07() -> None:
    loaded = schema()
    assert loaded["$schema"] == "http://json-schema.org/draft-07/schema#"
    jsonschema.Draft7Validator.check_schema(loaded)


def test_values_validate_against_the_schema() -> None:
    jsonschema.Draft7Validator(schema()).validate(manifests.values())


def invalid_variants() -> Iterator[tuple[str, dict[str, Any]]]:
    def variant(path: str, value: Any) -> dict[str, Any]:
        values = copy.deepcopy(manifests.values())
        *parents, last = path.split(".")
        node = values
        for part in parents:
            node = node[part]
        node[last] = value
        return values

    yield "unknown top-level key", variant("replicas", 2)
    yield "chart-managed config key", variant("config.server.host", "127.0.0.1")
    yield "managed config group", variant("config.state", {"path": "x.sqlite"})
    yield "grace period as a string", variant("config.engine.grace_period", "25s")
    yield "typo in a config key", variant("config.engine.dryrun", True)
    yield "bad approval mode", variant("config.safety.defaults.approval", "sometimes")
    yield "egress rule without ports", variant("networkPolicy.egress.dns", {"to": []})


@pytest.mark.parametrize(("case", "values"), list(invalid_variants()), ids=lambda x: str(x)[:40])
def test_schema_rejects(case: str, values: dict[str, Any]) -> None:
    assert not jsonschema.Draft7Validator(schema()).is_valid(values), case


def undocumented_keys(node: yaml.Node, lines: list[str], path: str = "") -> Iterator[str]:
    """Keys of block mappings with neither a comment line above nor a comment on the line."""
    if not isinstance(node, yaml.MappingNode) or node.flow_style:
        return
    for key, value in node.value:
        line = key.start_mark.line
        documented = "#" in lines[line] or (line > 0 and lines[line - 1].lstrip().startswith("#"))
        name = f"{path}.{key.value}" if path else str(key.value)
        if not documented:
            yield name
        yield from undocumented_keys(value, lines, name)


def test_every_value_is_documented() -> None:
    text = (CHART / "values.yaml").read_text(encoding="utf-8")
    root = yaml.compose(text)
    assert root is not None
    assert list(undocumented_keys(root, text.splitlines())) == []


# Templates


VALUE_REFERENCE = re.compile(r"\$?\.Values((?:\.[A-Za-z_][A-Za-z0-9_]*)+)")


@pytest.mark.parametrize("name", TEMPLATE_FILES)
def test_templates_reference_only_existing_values(name: str) -> None:
    for match in VALUE_REFERENCE.finditer(template_text(name)):
        path = match.group(1).lstrip(".")
        try:
            manifests.lookup(manifests.values(), path)
        except KeyError:
            pytest.fail(f"{name}: .Values.{path} is not in values.yaml")


def test_included_templates_are_defined() -> None:
    helpers = template_text("_helpers.tpl")
    defined = set(re.findall(r'define\s+"([^"]+)"', helpers))
    for name in TEMPLATE_FILES:
        for included in re.findall(r'include\s+"([^"]+)"', template_text(name)):
            assert included in defined, f"{name}: include {included!r} is not defined"


@pytest.mark.parametrize("name", TEMPLATE_FILES)
def test_template_blocks_are_balanced(name: str) -> None:
    text = manifests.COMMENT.sub("", template_text(name))
    opened = len(manifests.BLOCK_START.findall(text))
    closed = len(manifests.BLOCK_END.findall(text))
    assert opened == closed, f"{name}: {opened} if/range/with/define, {closed} end"
    assert text.count("{{") == text.count("}}")


@pytest.mark.parametrize("name", YAML_TEMPLATES)
def test_template_skeleton_is_valid_kubernetes(name: str) -> None:
    docs = manifests.template_docs(name)
    assert docs, f"{name} renders no object"
    for doc in docs:
        assert doc["metadata"]["name"], name
        if doc["kind"] not in CRD_KINDS:
            kubernetes_validate.validate(doc, "1.30.0", strict=True)


def test_deployment_runs_remediator_safely() -> None:
    (deployment,) = manifests.template_docs("deployment.yaml")
    settings = manifests.merged(
        manifests.chart_default_config(), manifests.managed_config(keep_conditional=True)
    )
    assert manifests.deployment_problems(deployment, settings) == []
    values = manifests.values()
    assert values["terminationGracePeriodSeconds"] > values["config"]["engine"]["grace_period"]
    assert "fail" in template_text("deployment.yaml").split("apiVersion")[0], "the grace guard"
    resources = values["resources"]
    assert set(resources["requests"]) == set(resources["limits"]) == {"cpu", "memory"}


def test_optional_token_files_are_mounted() -> None:
    (deployment,) = manifests.template_docs("deployment.yaml")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    managed = manifests.managed_config(keep_conditional=True)
    assert str(Path(managed["auth"]["api_token_file"]).parent) == mounts["token"]
    assert str(Path(managed["provisioner"]["token_file"]).parent) == mounts["provisioner-token"]
    (secret,) = manifests.template_docs("secret.yaml")
    assert set(secret["data"]) == {
        Path(managed["auth"]["token_file"]).name,
        Path(managed["auth"]["api_token_file"]).name,
        Path(managed["auth"]["viewer_token_file"]).name,
    }
    assert str(Path(managed["auth"]["viewer_token_file"]).parent) == mounts["token"]


# config.yaml


def test_default_config_is_valid() -> None:
    settings = config.from_mapping(manifests.chart_default_config())
    assert settings.server.host == manifests.ALL_INTERFACES
    assert settings.auth.token_file is not None
    assert settings.auth.api_token_file is None
    assert not settings.auth.insecure_no_auth


def test_config_with_every_option_is_valid() -> None:
    settings = config.from_mapping(
        manifests.merged(
            manifests.chart_default_config(), manifests.managed_config(keep_conditional=True)
        )
    )
    assert settings.auth.api_token_file is not None
    assert settings.provisioner.token_file is not None


def test_every_setting_is_reachable() -> None:
    """Each config key is a value, set by the chart, or deliberately unsupported."""
    properties = schema()["properties"]["config"]["properties"]
    managed = manifests.managed_config(keep_conditional=True)
    for group in dataclasses.fields(config.Settings):
        group_type = type(getattr(config.Settings(), group.name))
        for setting in dataclasses.fields(group_type):
            key = f"{group.name}.{setting.name}"
            offered = setting.name in properties.get(group.name, {}).get("properties", {})
            chart_set = setting.name in managed.get(group.name, {})
            assert [offered, chart_set, key in UNSUPPORTED_CONFIG].count(True) == 1, key


def test_values_config_mirrors_the_settings_defaults() -> None:
    """Besides the pod layout, the chart changes only deployment-specific defaults (the URLs of
    Prometheus and the provisioner), never the daemon's behaviour."""
    defaults = config.from_mapping(manifests.managed_config(keep_conditional=False))
    chart = config.from_mapping(manifests.chart_default_config())
    for group in dataclasses.fields(config.Settings):
        if group.name not in {"prometheus", "provisioner"}:
            assert getattr(chart, group.name) == getattr(defaults, group.name), group.name
    assert dataclasses.replace(chart.prometheus, url=None) == defaults.prometheus
    assert dataclasses.replace(chart.provisioner, url=None) == defaults.provisioner


# Copies of repository files


def test_playbooks_copy_equals_the_repository_playbooks() -> None:
    repo = manifests.repo_files(manifests.PLAYBOOKS, "*.yaml", "*.yml")
    assert all(name.endswith(".yaml") for name in repo), "the chart globs playbooks/*.yaml"
    assert manifests.repo_files(CHART / "playbooks", "*.yaml", "*.yml") == repo, (
        "sync with: cp playbooks/*.yaml helm-charts/remediator/playbooks/"
    )
    assert '.Files.Glob "playbooks/*.yaml"' in template_text("playbooks-configmap.yaml")


def test_alerts_copy_equals_the_repository_alerts() -> None:
    repo = manifests.repo_files(manifests.ALERTS, "*.rules.yml")
    assert manifests.repo_files(CHART / "alerts", "*.rules.yml", "*.yaml", "*.yml") == repo, (
        "sync with: cp alerts/*.rules.yml helm-charts/remediator/alerts/"
    )
    assert '.Files.Glob "alerts/*.rules.yml"' in template_text("prometheusrule.yaml")


def test_alert_groups_merge_into_one_prometheus_rule() -> None:
    """The PrometheusRule concatenates every file's groups, so their names must be unique."""
    names = []
    for text in manifests.repo_files(CHART / "alerts", "*.rules.yml").values():
        loaded = yaml.safe_load(text)
        assert set(loaded) == {"groups"}, "PrometheusRule takes only the groups"
        names += [group["name"] for group in loaded["groups"]]
    assert len(names) == len(set(names))


def test_helmignore_keeps_the_copied_files() -> None:
    ignored = (CHART / ".helmignore").read_text(encoding="utf-8")
    patterns = [p for p in ignored.splitlines() if p and not p.startswith("#")]
    for kept in ("playbooks/", "alerts/", "store-down.yaml", "stores.rules.yml"):
        assert not any(
            re.fullmatch(p.replace(".", r"\.").replace("*", ".*"), kept) for p in patterns
        )


# Prometheus Operator objects


@pytest.mark.parametrize("name", ["servicemonitor.yaml", "prometheusrule.yaml"])
def test_monitoring_objects_carry_the_release_label(name: str) -> None:
    (doc,) = manifests.template_docs(name)
    assert doc["apiVersion"] == "monitoring.coreos.com/v1"
    assert doc["metadata"]["labels"]["release"] == "kube-prometheus-stack"


def test_service_monitor_scrapes_metrics_as_job_remediator() -> None:
    (monitor,) = manifests.template_docs("servicemonitor.yaml")
    (service,) = manifests.template_docs("service.yaml")
    # alerts/remediator.rules.yml expects job="remediator": the name label, not the release.
    assert monitor["spec"]["jobLabel"] == "app.kubernetes.io/name"
    assert "app.kubernetes.io/name" in template_text("_helpers.tpl")
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["path"] == "/metrics"
    assert endpoint["port"] == service["spec"]["ports"][0]["name"] == "http"


def with_database(replicas: int, url: str) -> dict[str, Any]:
    values = copy.deepcopy(manifests.values())
    values["replicaCount"] = replicas
    values["database"]["url"] = url
    return values


@pytest.mark.parametrize("url", ["", "/var/lib/remediator/other.sqlite"])
def test_schema_refuses_several_replicas_on_sqlite(url: str) -> None:
    errors = list(jsonschema.Draft7Validator(schema()).iter_errors(with_database(2, url)))
    messages = " ".join(error.message for error in errors)
    assert "replicaCount > 1 needs PostgreSQL: set database.url" in messages


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://remediator@db.example:5432/remediator?sslmode=verify-full",
        "postgres://remediator@remediator-db-rw:5432/remediator",
    ],
)
def test_schema_accepts_several_replicas_on_postgresql(url: str) -> None:
    jsonschema.Draft7Validator(schema()).validate(with_database(3, url))
    assert config.is_postgres_url(url)


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://remediator:secret@db.example:5432/remediator",
        "postgresql://remediator@db.example:5432/remediator?password=secret",
    ],
)
def test_schema_refuses_a_password_in_the_database_url(url: str) -> None:
    assert not jsonschema.Draft7Validator(schema()).is_valid(with_database(1, url))
