"""The admission policy: valid Kubernetes 1.30, the chart's equals the kustomize base's, and
its CEL, evaluated for real (`tests.deploy.admission`, cel-python), refuses what it must.

Evaluated rather than read: a CEL expression that parses can still be wrong (a null
``namespaceObject`` on a cluster-scoped request, ``oldObject`` on a CREATE), and only running
it against the admission requests the API server sends shows what it does.
"""

from __future__ import annotations

import copy
import json
from typing import Any

import kubernetes_validate
import pytest

from tests.deploy import admission, manifests

REMEDIATOR = "system:serviceaccount:remediator:remediator"
STORE_LABELS = {"app.kubernetes.io/part-of": "store-platform", "store-id": "s1"}
KINDS = ("ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding")


def namespace(name: str, labels: dict[str, str] | None = None) -> dict[str, Any]:
    metadata: dict[str, Any] = {"name": name}
    if labels is not None:
        metadata["labels"] = labels
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": metadata}


NAMESPACES = {
    "store-s1": namespace("store-s1", STORE_LABELS),
    "store-platform": namespace("store-platform", {"app.kubernetes.io/part-of": "store-platform"}),
    "ingress-nginx": namespace("ingress-nginx"),
    "remediator": namespace("remediator"),
    "kube-system": namespace("kube-system", {"kubernetes.io/metadata.name": "kube-system"}),
    "store-fake": namespace("store-fake"),  # named like a store, not labelled as one
    "default": namespace("default", {}),
}


def kustomize_policy() -> manifests.Doc:
    return manifests.find(manifests.kustomize_docs(), "ValidatingAdmissionPolicy")


def chart_policy() -> manifests.Doc:
    """The chart's policy for release "remediator" in "remediator", default values: the
    skeleton, with its two template-computed expressions filled in as helm computes them."""
    (policy,) = [
        d
        for d in manifests.template_docs("admission-policy.yaml")
        if d["kind"] == "ValidatingAdmissionPolicy"
    ]
    policy = dict(json.loads(json.dumps(policy).replace(manifests.PLACEHOLDER, "remediator")))
    (listed,) = [v for v in policy["spec"]["variables"] if v["name"] == "listedNamespaces"]
    # concat (list .Release.Namespace) .Values.rbac.platformNamespaces | uniq | toJson
    names = list(dict.fromkeys(["remediator", *manifests.values()["rbac"]["platformNamespaces"]]))
    listed["expression"] = json.dumps(names, separators=(",", ":"))
    return policy


POLICIES = {"kustomize": kustomize_policy, "chart": chart_policy}


def judge(
    policy: manifests.Doc,
    operation: str,
    resource: str,
    name: str,
    *,
    ns: str = "",
    group: str = "",
    subresource: str = "",
    user: str = REMEDIATOR,
    labels_after: dict[str, str] | None = None,
) -> admission.Verdict:
    """How the policy judges ``operation`` on ``resource`` (a Namespace, or an object in
    ``ns``), with the objects the API server would pass along."""
    request = admission.request(
        user=user,
        operation=operation,
        resource=resource,
        name=name,
        namespace=ns,
        group=group,
        subresource=subresource,
    )
    if resource == "namespaces" and not group:
        current = NAMESPACES.get(name, namespace(name))
        new = copy.deepcopy(current)
        if labels_after is not None:
            new["metadata"]["labels"] = labels_after
        return admission.evaluate(
            policy,
            request=request,
            object_=None if operation == "DELETE" else new,
            old_object=None if operation == "CREATE" else current,
            namespace_object=None,
        )
    body = {"metadata": {"name": name, "namespace": ns} if ns else {"name": name}}
    return admission.evaluate(
        policy,
        request=request,
        object_=None if operation == "DELETE" else body,
        old_object=None if operation == "CREATE" else body,
        namespace_object=NAMESPACES.get(ns) if ns else None,
    )


@pytest.fixture(params=sorted(POLICIES))
def policy(request: pytest.FixtureRequest) -> manifests.Doc:
    return POLICIES[request.param]()


@pytest.mark.parametrize(
    ("operation", "resource", "group", "ns", "subresource"),
    [
        ("DELETE", "pods", "", "store-s1", ""),
        ("UPDATE", "deployments", "apps", "store-s1", ""),
        ("UPDATE", "deployments", "apps", "store-s1", "scale"),
        ("DELETE", "secrets", "", "store-s1", ""),
        ("UPDATE", "persistentvolumeclaims", "", "store-s1", ""),
        ("UPDATE", "deployments", "apps", "store-platform", ""),
        ("DELETE", "pods", "", "ingress-nginx", ""),
        ("UPDATE", "leases", "coordination.k8s.io", "remediator", ""),
        ("CREATE", "leases", "coordination.k8s.io", "remediator", ""),
    ],
    ids=lambda v: v or "-",
)
def test_writes_in_store_and_platform_namespaces_are_allowed(
    policy: manifests.Doc, operation: str, resource: str, group: str, ns: str, subresource: str
) -> None:
    verdict = judge(policy, operation, resource, "x", ns=ns, group=group, subresource=subresource)
    assert verdict.applies
    assert verdict.allowed, verdict.denied


@pytest.mark.parametrize(
    ("operation", "resource", "group", "ns"),
    [
        ("DELETE", "pods", "", "kube-system"),
        ("DELETE", "secrets", "", "kube-system"),
        ("UPDATE", "persistentvolumeclaims", "", "kube-system"),
        ("UPDATE", "deployments", "apps", "default"),
        ("DELETE", "pods", "", "store-fake"),
        ("CREATE", "rolebindings", "rbac.authorization.k8s.io", "kube-system"),
        # Cluster-scoped objects other than namespaces: never.
        ("CREATE", "clusterrolebindings", "rbac.authorization.k8s.io", ""),
        ("DELETE", "nodes", "", ""),
    ],
    ids=lambda v: v or "-",
)
def test_writes_anywhere_else_are_refused(
    policy: manifests.Doc, operation: str, resource: str, group: str, ns: str
) -> None:
    verdict = judge(policy, operation, resource, "x", ns=ns, group=group)
    assert verdict.applies
    assert verdict.denied == (
        "remediator writes only in store namespaces (labelled with the store label) and the "
        "platform namespaces listed in its policy",
    )


def test_a_store_namespace_may_be_patched_finalized_and_deleted(policy: manifests.Doc) -> None:
    assert judge(policy, "UPDATE", "namespaces", "store-s1").allowed
    assert judge(policy, "UPDATE", "namespaces", "store-s1", subresource="finalize").allowed
    assert judge(policy, "DELETE", "namespaces", "store-s1").allowed


@pytest.mark.parametrize("name", ["store-platform", "ingress-nginx", "remediator"])
def test_platform_namespaces_are_never_deleted(policy: manifests.Doc, name: str) -> None:
    verdict = judge(policy, "DELETE", "namespaces", name)
    assert verdict.denied == ("remediator never deletes a platform namespace or its own",)
    assert judge(policy, "UPDATE", "namespaces", name).allowed


@pytest.mark.parametrize("name", ["kube-system", "default", "store-fake"])
def test_other_namespaces_are_not_touched(policy: manifests.Doc, name: str) -> None:
    for operation in ("UPDATE", "DELETE"):
        assert not judge(policy, operation, "namespaces", name).allowed


def test_a_patch_cannot_make_a_namespace_a_store(policy: manifests.Doc) -> None:
    """Namespaces are judged by their labels before the change."""
    verdict = judge(policy, "UPDATE", "namespaces", "kube-system", labels_after=STORE_LABELS)
    assert not verdict.allowed


def test_other_users_are_not_judged(policy: manifests.Doc) -> None:
    for user in ("kubernetes-admin", "system:serviceaccount:remediator:other",
                 "system:serviceaccount:kube-system:remediator"):  # fmt: skip
        verdict = judge(policy, "DELETE", "namespaces", "kube-system", user=user)
        assert not verdict.applies


def test_the_evaluation_is_not_vacuous(policy: manifests.Doc) -> None:
    """A policy whose validation is changed to always fail refuses a store write: the verdicts
    above come from the expressions, not from the evaluator."""
    broken = copy.deepcopy(policy)
    broken["spec"]["validations"][0]["expression"] = "variables.isStore && false"
    assert not judge(broken, "DELETE", "pods", "x", ns="store-s1").allowed
    typo = copy.deepcopy(policy)
    typo["spec"]["validations"][0]["expression"] = "variables.isStor || variables.isListed"
    assert not judge(typo, "DELETE", "pods", "x", ns="store-s1").allowed


def test_it_matches_every_write_of_every_resource() -> None:
    rules = kustomize_policy()["spec"]["matchConstraints"]["resourceRules"]
    assert rules == [
        {
            "apiGroups": ["*"],
            "apiVersions": ["*"],
            "resources": ["*", "*/*"],
            "operations": ["CREATE", "UPDATE", "DELETE"],
        }
    ]
    assert kustomize_policy()["spec"]["failurePolicy"] == "Fail"


def test_the_chart_policy_equals_the_kustomize_one() -> None:
    kustomize = kustomize_policy()
    chart = chart_policy()
    for policy in (chart, kustomize):
        policy["metadata"].pop("labels", None)
    assert chart == kustomize


def test_the_binding_denies_with_the_policy() -> None:
    docs = manifests.kustomize_docs()
    binding = manifests.find(docs, "ValidatingAdmissionPolicyBinding")
    assert binding["spec"] == {
        "policyName": kustomize_policy()["metadata"]["name"],
        "validationActions": ["Deny"],
    }
    (chart_binding,) = [
        d
        for d in manifests.template_docs("admission-policy.yaml")
        if d["kind"] == "ValidatingAdmissionPolicyBinding"
    ]
    assert chart_binding["spec"]["validationActions"] == ["Deny"]


@pytest.mark.parametrize("kind", KINDS)
def test_kustomize_objects_validate_strictly_for_kubernetes_1_30(kind: str) -> None:
    kubernetes_validate.validate(
        manifests.find(manifests.kustomize_docs(), kind), "1.30.0", strict=True
    )
