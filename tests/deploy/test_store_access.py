"""helm-charts/remediator-store-access: the RoleBinding each store namespace gets with its store.

Checked like the remediator chart (no helm here: the template's skeleton with the chart's own
values), against its kustomize twin in deploy/kustomize/store-namespace, and against the names
the remediator chart gives its actions' ClusterRole and service account by default.
"""

from __future__ import annotations

import functools
import json
import re
import tomllib
from typing import Any

import jsonschema
import kubernetes_validate
import yaml

import remediator
from remediator.simulation import access
from tests.deploy import manifests

CHART = manifests.REPO / "helm-charts" / "remediator-store-access"
STORE_NAMESPACE = manifests.REPO / "deploy" / "kustomize" / "store-namespace"
RELEASE_NAMESPACE = "store-abc"
"""What .Release.Namespace is when the store chart (the parent) installs into store-abc."""


@functools.cache
def chart_values() -> dict[str, Any]:
    loaded = yaml.safe_load((CHART / "values.yaml").read_text(encoding="utf-8"))
    assert isinstance(loaded, dict)
    return loaded


def rendered_binding() -> dict[str, Any]:
    text = (CHART / "templates" / "rolebinding.yaml").read_text(encoding="utf-8")
    (doc,) = yaml.safe_load_all(manifests.skeleton(text, chart_values=chart_values()))
    # The only expressions that are no plain value: .Release.Namespace and .Release.Service.
    assert doc["metadata"]["namespace"] == manifests.PLACEHOLDER
    doc["metadata"]["namespace"] = RELEASE_NAMESPACE
    assert isinstance(doc, dict)
    return doc


def test_chart_metadata() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text(encoding="utf-8"))
    pyproject = tomllib.loads((manifests.REPO / "pyproject.toml").read_text(encoding="utf-8"))
    assert chart["apiVersion"] == "v2"
    assert chart["name"] == "remediator-store-access"
    assert re.fullmatch(r"\d+\.\d+\.\d+", chart["version"])
    assert chart["appVersion"] == pyproject["project"]["version"] == remediator.__version__


def test_values_validate_and_the_schema_rejects_typos() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text(encoding="utf-8"))
    jsonschema.Draft7Validator(schema).validate(chart_values())
    errors = list(jsonschema.Draft7Validator(schema).iter_errors({"remediatr": {}}))
    assert errors
    bad = {"remediator": {**chart_values()["remediator"], "namespace": "Not A Namespace"}}
    assert list(jsonschema.Draft7Validator(schema).iter_errors(bad))


def test_the_binding_is_valid_kubernetes() -> None:
    kubernetes_validate.validate(rendered_binding(), "1.30.0", strict=True)


def test_it_binds_what_the_remediator_chart_creates_by_default() -> None:
    """``helm install remediator helm-charts/remediator -n remediator``: fullname "remediator"
    (the release name holds the chart name), service account "remediator"."""
    binding = rendered_binding()
    remediator_chart = {
        d["metadata"]["name"]: d
        for d in manifests.template_docs("rbac.yaml")
        if d["kind"] == "ClusterRole"
    }
    assert "TEMPLATED-actions" in remediator_chart
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "ClusterRole",
        "name": "remediator-actions",
    }
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "remediator", "namespace": "remediator"}
    ]
    kustomize_roles = {d["metadata"]["name"] for d in manifests.kustomize_docs()}
    assert binding["roleRef"]["name"] in kustomize_roles


def test_kustomize_twin_equals_the_chart() -> None:
    (twin,) = [d for d in yaml.safe_load_all((STORE_NAMESPACE / "rolebinding.yaml").read_text())]
    chart = rendered_binding()
    for doc in (twin, chart):
        doc["metadata"].pop("labels", None)
    assert {**twin, "metadata": {**twin["metadata"], "namespace": RELEASE_NAMESPACE}} == chart


def test_the_simulated_stores_get_exactly_this_binding() -> None:
    binding = access.store_role_binding(RELEASE_NAMESPACE)
    binding["metadata"].pop("labels", None)
    chart = rendered_binding()
    chart["metadata"].pop("labels", None)
    assert binding == chart
