"""The kustomize base renders, every object is valid Kubernetes 1.30, and it runs remediator."""

from __future__ import annotations

import copy
from typing import Any

import kubernetes_validate
import pytest
import yaml

from remediator import config
from tests.deploy import manifests

KUBERNETES_VERSION = "1.30.0"
CLUSTER_SCOPED_KINDS = {
    "Namespace",
    "ClusterRole",
    "ClusterRoleBinding",
    "ValidatingAdmissionPolicy",
    "ValidatingAdmissionPolicyBinding",
}
PLATFORM_NAMESPACES = ("store-platform", "ingress-nginx")
"""Where the base binds the actions' ClusterRole besides the stores (rbac.platformNamespaces)."""


def docs_by_id() -> dict[str, manifests.Doc]:
    return {f"{d['kind']}/{d['metadata']['name']}": d for d in manifests.kustomize_docs()}


def test_renders_the_expected_objects() -> None:
    kinds = sorted(d["kind"] for d in manifests.kustomize_docs())
    assert kinds == sorted(
        [
            "Namespace",
            "ServiceAccount",
            "ClusterRole",
            "ClusterRole",
            "ClusterRoleBinding",
            "Role",
            "RoleBinding",
            "RoleBinding",
            "RoleBinding",
            "ValidatingAdmissionPolicy",
            "ValidatingAdmissionPolicyBinding",
            "ConfigMap",
            "ConfigMap",
            "PersistentVolumeClaim",
            "Deployment",
            "Service",
            "PodDisruptionBudget",
            "NetworkPolicy",
        ]
    )


@pytest.mark.parametrize("object_id", sorted(docs_by_id()))
def test_object_validates_strictly(object_id: str) -> None:
    kubernetes_validate.validate(docs_by_id()[object_id], KUBERNETES_VERSION, strict=True)


def test_strict_validation_is_not_vacuous() -> None:
    deployment = copy.deepcopy(manifests.find(manifests.kustomize_docs(), "Deployment"))
    deployment["spec"]["template"]["spec"]["containers"][0]["securityContex"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSION, strict=True)


def test_nothing_looks_like_a_store() -> None:
    """Store discovery lists namespaces labelled part-of=store-platform; remediator is none."""
    for doc in manifests.kustomize_docs():
        labels = doc["metadata"].get("labels") or {}
        assert labels.get("app.kubernetes.io/part-of") != "store-platform", doc["kind"]
    assert "part-of: store-platform" not in (manifests.TEMPLATES / "_helpers.tpl").read_text()


def test_everything_namespaced_is_in_the_remediator_namespace() -> None:
    """Except the RoleBindings that let remediator work in the platform namespaces."""
    elsewhere = []
    for doc in manifests.kustomize_docs():
        namespace = doc["metadata"].get("namespace")
        if doc["kind"] in CLUSTER_SCOPED_KINDS:
            assert namespace is None, doc["metadata"]["name"]
        elif namespace != "remediator":
            elsewhere.append((doc["kind"], doc["metadata"]["name"], namespace))
    assert sorted(elsewhere) == sorted(
        ("RoleBinding", "remediator-actions", ns) for ns in PLATFORM_NAMESPACES
    )
    assert list(PLATFORM_NAMESPACES) == manifests.values()["rbac"]["platformNamespaces"]


def test_deployment_runs_remediator_safely() -> None:
    docs = manifests.kustomize_docs()
    deployment = manifests.find(docs, "Deployment")
    settings = config_mapping(docs)
    assert manifests.deployment_problems(deployment, settings) == []
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    resources = container["resources"]
    assert set(resources["requests"]) == set(resources["limits"]) == {"cpu", "memory"}


def config_mapping(docs: list[manifests.Doc]) -> dict[str, Any]:
    loaded = yaml.safe_load(manifests.config_map(docs)["data"]["config.yaml"])
    assert isinstance(loaded, dict)
    return loaded


def test_the_config_map_holds_a_valid_config() -> None:
    docs = manifests.kustomize_docs()
    name = manifests.config_map(docs)["metadata"]["name"]
    settings = config.from_mapping(config_mapping(docs))
    assert settings.server.host == manifests.ALL_INTERFACES
    assert settings.kubernetes.kubeconfig is None
    assert not settings.auth.insecure_no_auth
    volumes = manifests.find(docs, "Deployment")["spec"]["template"]["spec"]["volumes"]
    (volume,) = [v for v in volumes if v["name"] == "config"]
    assert volume["configMap"]["name"] == name, "the Deployment uses the hash-suffixed name"


def test_playbooks_config_map_equals_the_repository_playbooks() -> None:
    docs = manifests.kustomize_docs()
    data = manifests.find(docs, "ConfigMap", "-playbooks")["data"]
    repo = manifests.repo_files(manifests.PLAYBOOKS, "*.yaml", "*.yml")
    assert data == repo, (
        "sync with: cp playbooks/*.yaml deploy/kustomize/base/playbooks/ and list each file "
        "under configMapGenerator remediator-playbooks in deploy/kustomize/base/kustomization.yaml"
    )


def test_playbooks_copy_equals_the_repository_playbooks() -> None:
    copied = manifests.repo_files(manifests.KUSTOMIZE_BASE / "playbooks", "*.yaml", "*.yml")
    assert copied == manifests.repo_files(manifests.PLAYBOOKS, "*.yaml", "*.yml")


def test_config_file_equals_the_chart_default_config() -> None:
    text = (manifests.KUSTOMIZE_BASE / "config.yaml").read_text(encoding="utf-8")
    assert yaml.safe_load(text) == manifests.chart_default_config()


def test_service_and_pdb_select_the_pod() -> None:
    docs = manifests.kustomize_docs()
    pod_labels = manifests.find(docs, "Deployment")["spec"]["template"]["metadata"]["labels"]
    service = manifests.find(docs, "Service")
    assert service["spec"]["selector"].items() <= pod_labels.items()
    assert service["spec"]["ports"] == [
        {"name": "http", "port": 9095, "targetPort": "http", "protocol": "TCP"}
    ]
    pdb = manifests.find(docs, "PodDisruptionBudget")
    assert pdb["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    # One replica: a budget of minAvailable 1 would block every node drain.
    assert pdb["spec"] == {**pdb["spec"], "maxUnavailable": 1}
    assert "minAvailable" not in pdb["spec"]


def test_network_policy_equals_the_chart_defaults() -> None:
    docs = manifests.kustomize_docs()
    policy = manifests.find(docs, "NetworkPolicy")["spec"]
    pod_labels = manifests.find(docs, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert policy["podSelector"]["matchLabels"].items() <= pod_labels.items()
    assert policy["policyTypes"] == ["Ingress", "Egress"]
    values = manifests.values()["networkPolicy"]
    assert policy["ingress"] == [
        {"from": values["ingressFrom"], "ports": [{"port": "http", "protocol": "TCP"}]}
    ]
    # The chart ranges over the egress map, which Go templates visit in key order.
    assert policy["egress"] == [
        {"to": rule["to"], "ports": rule["ports"]}
        for _, rule in sorted(values["egress"].items())
        if rule
    ]


def test_the_token_secret_is_not_shipped() -> None:
    docs = manifests.kustomize_docs()
    assert not [d for d in docs if d["kind"] == "Secret"]
    volumes = manifests.find(docs, "Deployment")["spec"]["template"]["spec"]["volumes"]
    (token,) = [v for v in volumes if v["name"] == "token"]
    assert token["secret"]["secretName"] == "remediator-token"
