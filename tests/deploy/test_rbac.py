"""The RBAC the manifests grant is exactly what the shipped actions and the daemon need.

Compared both ways, per role, as (API group, resource, verb) triples: a permission an action
declares but no manifest grants fails, and so does a grant nothing needs. The expectation is
computed from the live registry, so a new or changed action shows up here at once.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import pytest
import yaml

from remediator import permissions
from remediator.core.actions import ActionSpec, Permission, StaticCatalog
from remediator.engine.actions import registry
from remediator.simulation import access
from tests.deploy import manifests, rbac

HINT = "run `python -m tests.deploy.rbac --write` and review the diff"


def chart_rbac_docs() -> list[manifests.Doc]:
    return manifests.template_docs("rbac.yaml")


SOURCES = {
    "kustomize": manifests.kustomize_docs,
    "chart": chart_rbac_docs,
}


def describe(triples: Iterable[rbac.Triple]) -> str:
    return ", ".join(f"{g or 'core'}/{r}:{v}" for g, r, v in sorted(triples)) or "nothing"


@pytest.mark.parametrize("source", sorted(SOURCES))
@pytest.mark.parametrize("role", rbac.ROLES)
def test_each_role_grants_exactly_what_is_required(source: str, role: str) -> None:
    granted = rbac.rule_triples(rbac.rules_by_role(SOURCES[source]()).get(role))
    required = rbac.triples(rbac.expected()[role])
    missing, extra = required - granted, granted - required
    assert not missing, f"{source} {role}: actions need {describe(missing)}; {HINT}"
    assert not extra, f"{source} {role}: grants {describe(extra)} nothing needs; {HINT}"


@pytest.mark.parametrize("source", sorted(SOURCES))
def test_all_grants_together_equal_required_permissions(source: str) -> None:
    granted: set[rbac.Triple] = set()
    for rules in rbac.rules_by_role(SOURCES[source]()).values():
        granted |= rbac.rule_triples(rules)
    required = rbac.triples(permissions.required_permissions(registry.builtin()))
    assert granted == required, HINT


@pytest.mark.parametrize("source", sorted(SOURCES))
def test_only_the_leader_lease_rules_name_an_object(source: str) -> None:
    """resourceNames narrows get and update to the one Lease; create cannot be narrowed."""
    by_role = rbac.rules_by_role(SOURCES[source]())
    name = manifests.PLACEHOLDER + "-leader" if source == "chart" else rbac.LEADER_LEASE
    assert [rule["resourceNames"] for rule in by_role["leader_lease"]] == [[name]]
    for role in set(rbac.ROLES) - rbac.NAMED:
        assert not [rule for rule in by_role[role] if "resourceNames" in rule], role


def test_the_chart_grants_the_lease_its_config_names() -> None:
    text = (manifests.TEMPLATES / "rbac.yaml").read_text(encoding="utf-8")
    helpers = (manifests.TEMPLATES / "_helpers.tpl").read_text(encoding="utf-8")
    chart_name = rbac.LEASE_NAMES[rbac.CHART_RBAC]
    assert f'resourceNames: ["{chart_name}"]' in text
    assert f"lease_name: {chart_name}\n" in helpers
    managed = manifests.managed_config(keep_conditional=True)
    assert managed["ha"] == {
        "lease_name": manifests.PLACEHOLDER + "-leader",
        "lease_namespace": manifests.PLACEHOLDER,
    }


def strings(node: Any) -> Iterable[str]:
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict):
        for key, value in node.items():
            yield str(key)
            yield from strings(value)
    elif isinstance(node, list):
        for item in node:
            yield from strings(item)


@pytest.mark.parametrize("source", sorted(SOURCES))
def test_no_wildcards(source: str) -> None:
    for doc in SOURCES[source]():
        if doc["kind"] in {"Role", "ClusterRole", "RoleBinding", "ClusterRoleBinding"}:
            assert not [s for s in strings(doc) if "*" in s], doc["metadata"]["name"]
            for rule in doc.get("rules") or ():
                fields = {"apiGroups", "resources", "verbs"}
                if rule.get("resources") == ["leases"] and "resourceNames" in rule:
                    fields.add("resourceNames")  # the leader Lease, by name
                assert set(rule) == fields, rule


def test_no_wildcards_in_the_chart_template_text() -> None:
    text = (manifests.TEMPLATES / "rbac.yaml").read_text(encoding="utf-8")
    assert '"*"' not in text
    assert "'*'" not in text
    assert "[*]" not in text


def test_kustomize_binds_every_role_to_the_service_account() -> None:
    docs = manifests.kustomize_docs()
    bound = set()
    for doc in docs:
        if doc["kind"] in {"RoleBinding", "ClusterRoleBinding"}:
            assert doc["subjects"] == [
                {"kind": "ServiceAccount", "name": "remediator", "namespace": "remediator"}
            ]
            where = doc["metadata"].get("namespace")
            bound.add((doc["roleRef"]["kind"], doc["roleRef"]["name"], doc["kind"], where))
    # The actions' rules only per namespace: the platform's here, each store's by its chart.
    assert bound == {
        ("ClusterRole", "remediator-cluster", "ClusterRoleBinding", None),
        ("ClusterRole", "remediator-actions", "RoleBinding", "store-platform"),
        ("ClusterRole", "remediator-actions", "RoleBinding", "ingress-nginx"),
        ("Role", "remediator", "RoleBinding", "remediator"),
    }
    role = manifests.find(docs, "Role")
    assert role["metadata"]["namespace"] == "remediator"


def test_chart_binds_the_actions_role_per_namespace_and_cluster_wide_only_on_request() -> None:
    bindings = [
        (d["kind"], d["roleRef"]["name"])
        for d in chart_rbac_docs()
        if d["kind"] in {"RoleBinding", "ClusterRoleBinding"}
    ]
    # The skeleton takes both the range over rbac.platformNamespaces and the opt-in branch.
    assert ("RoleBinding", "TEMPLATED-actions") in bindings
    assert ("ClusterRoleBinding", "TEMPLATED-actions") in bindings
    assert ("ClusterRoleBinding", "TEMPLATED-cluster") in bindings
    assert ("RoleBinding", "TEMPLATED") in bindings
    rbac_values = manifests.values()["rbac"]
    assert rbac_values["clusterWideActions"] is False
    text = (manifests.TEMPLATES / "rbac.yaml").read_text(encoding="utf-8")
    opt_in = text.index("{{- if .Values.rbac.clusterWideActions }}")
    assert text.index("kind: ClusterRoleBinding", opt_in) < text.index("{{- end }}", opt_in)


def without_labels(doc: manifests.Doc) -> manifests.Doc:
    metadata = {k: v for k, v in doc["metadata"].items() if k != "labels"}
    return {**doc, "metadata": metadata}


def chart_default_rbac() -> list[manifests.Doc]:
    """The chart's RBAC as helm renders it for release "remediator" in namespace "remediator"
    with the default values: the skeleton with the names filled in, the range over
    rbac.platformNamespaces expanded and the opt-in cluster-wide binding left out."""
    rendered = []
    rbac_values = manifests.values()["rbac"]
    for doc in chart_rbac_docs():
        text = yaml.safe_dump(without_labels(doc)).replace(manifests.PLACEHOLDER, "remediator")
        obj = yaml.safe_load(text)
        if obj["kind"] == "ClusterRoleBinding" and obj["roleRef"]["name"] == "remediator-actions":
            assert not rbac_values["clusterWideActions"]
            continue
        if obj["kind"] == "RoleBinding" and obj["roleRef"]["kind"] == "ClusterRole":
            for namespace in rbac_values["platformNamespaces"]:
                rendered.append({**obj, "metadata": {**obj["metadata"], "namespace": namespace}})
            continue
        rendered.append(obj)
    return rendered


def identity(doc: manifests.Doc) -> tuple[str, str, str]:
    metadata = doc["metadata"]
    return doc["kind"], metadata["name"], metadata.get("namespace") or ""


def test_kustomize_rbac_is_the_chart_default_rendering() -> None:
    """The simulation loads the kustomize base's RBAC into the emulator (`simulation.access`);
    this is what makes that exactly the chart's."""
    kustomize = [
        without_labels(d) for d in manifests.kustomize_docs() if d["kind"] in access.RBAC_KINDS
    ]
    assert sorted(kustomize, key=identity) == sorted(chart_default_rbac(), key=identity)


def test_the_simulation_loads_the_kustomize_rbac() -> None:
    loaded = sorted((without_labels(d) for d in access.rbac_manifests()), key=identity)
    rendered = [
        without_labels(d) for d in manifests.kustomize_docs() if d["kind"] in access.RBAC_KINDS
    ]
    assert loaded == sorted(rendered, key=identity)


WRITES = frozenset({"create", "update", "patch", "delete", "deletecollection"})


@pytest.mark.parametrize("source", ["kustomize", "chart"])
def test_nothing_cluster_wide_reads_secrets_or_writes_inside_namespaces(source: str) -> None:
    """By default, what a ClusterRoleBinding grants: no Secret, and writes only to Namespaces
    themselves plus the PVC finalizers of Terminating store namespaces (whose RoleBinding is
    gone by then); the admission policy keeps even those to store namespaces."""
    docs = chart_default_rbac() if source == "chart" else manifests.kustomize_docs()
    cluster_roles = {d["metadata"]["name"]: d for d in docs if d["kind"] == "ClusterRole"}
    granted: set[rbac.Triple] = set()
    for doc in docs:
        if doc["kind"] == "ClusterRoleBinding":
            granted |= rbac.rule_triples(cluster_roles[doc["roleRef"]["name"]]["rules"])
    assert not {t for t in granted if t[1].partition("/")[0] == "secrets"}
    writes = {t for t in granted if t[2] in WRITES}
    assert writes == {
        ("", "namespaces", "delete"),
        ("", "namespaces", "patch"),
        ("", "namespaces/finalize", "update"),
        ("", "persistentvolumeclaims", "patch"),
    }
    assert rbac.triples(permissions.TERMINATING_NAMESPACE_PERMISSIONS) <= granted


def test_leader_election_writes_only_in_the_own_namespace() -> None:
    rules = permissions.required_rules(registry.builtin())
    cluster_wide = rbac.triples([*rules.cluster, *rules.namespaced])
    in_own_namespace = rbac.triples([*rules.own_namespace, *rules.leader_lease])
    for verb in ("create", "update"):
        assert ("coordination.k8s.io", "leases", verb) not in cluster_wide
        assert ("coordination.k8s.io", "leases", verb) in in_own_namespace


def test_daemon_permissions_are_included() -> None:
    required = rbac.triples(permissions.required_permissions(registry.builtin()))
    assert rbac.triples(permissions.DAEMON_PERMISSIONS) <= required
    assert rbac.triples(permissions.OWN_NAMESPACE_PERMISSIONS) <= required
    assert rbac.triples(permissions.LEADER_LEASE_PERMISSIONS) <= required
    assert ("", "namespaces", "watch") in required


def test_normalise_merges_verbs_per_resource() -> None:
    merged = permissions.normalise(
        [
            Permission(api_group="apps", resource="deployments", verbs=("patch", "get")),
            Permission(api_group="", resource="pods", verbs=("list",)),
            Permission(api_group="apps", resource="deployments", verbs=("get", "list")),
        ]
    )
    assert merged == [
        Permission(api_group="", resource="pods", verbs=("list",)),
        Permission(api_group="apps", resource="deployments", verbs=("get", "list", "patch")),
    ]


def test_subresources_follow_their_resource_scope() -> None:
    finalize = Permission(api_group="", resource="namespaces/finalize", verbs=("update",))
    scale = Permission(api_group="apps", resource="deployments/scale", verbs=("patch",))
    assert permissions.is_cluster_scoped(finalize)
    assert not permissions.is_cluster_scoped(scale)


def test_a_new_action_permission_is_noticed() -> None:
    """What the comparison above relies on: the expectation follows the catalogue."""

    class NoParams:
        pass

    wanted = Permission(api_group="apps", resource="replicasets", verbs=("delete",))
    actions = registry.builtin()
    specs = {name: spec for name in actions.names() if (spec := actions.spec(name)) is not None}
    specs["k8s.test_only"] = ActionSpec(
        name="k8s.test_only", params=NoParams, mutating=True, permissions=(wanted,)
    )
    required = rbac.triples(permissions.required_permissions(StaticCatalog(specs)))
    granted = rbac.rule_triples(rbac.rules_by_role(manifests.kustomize_docs())["namespaced"])
    assert required - granted >= {("apps", "replicasets", "delete")}
