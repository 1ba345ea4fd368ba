"""Actions under the RBAC remediator's manifests grant, enforced by the emulator.

remediator's client carries its service account's token (`simulation.access.install`), so a
store namespace without its RoleBinding answers 403: the step says which permission is
missing where, ``k8s.diagnose`` reports it instead of failing, and every 403 is counted.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from prometheus_client import CollectorRegistry

from remediator.adapters import kubernetes, metrics
from remediator.config import Settings
from remediator.core.errors import PermanentStepError
from remediator.engine.actions.kube import diagnose, rollout
from remediator.engine.actions.registry import ActionContext, Resources
from remediator.simulation import access, kubeapi

from . import objects
from .conftest import jsonable, make_context

NS = "store-a"
HINT = "no RoleBinding for remediator in store-a?"


@pytest.fixture
def metric_set() -> metrics.Metrics:
    return metrics.Metrics(CollectorRegistry())


@pytest.fixture
async def remediator_kube(
    emulator: kubeapi.KubeEmulator, kube_url: str, metric_set: metrics.Metrics
) -> AsyncIterator[kubernetes.KubeClient]:
    token = access.install(emulator).token
    async with kubernetes.KubeClient.from_url(
        kube_url, token=token, timeout=2.0, on_forbidden=metric_set.count_permission_denied
    ) as client:
        yield client


@pytest.fixture
async def remediator_context(
    remediator_kube: kubernetes.KubeClient, http_session: aiohttp.ClientSession
) -> ActionContext:
    resources = Resources(settings=Settings(), http=http_session, kube=remediator_kube)
    return make_context(resources)


def denied(metric_set: metrics.Metrics, verb: str, resource: str) -> float:
    value = metric_set.registry.get_sample_value(
        "remediator_kubernetes_permission_denied_total", {"verb": verb, "resource": resource}
    )
    return value or 0.0


async def diagnosis(context: ActionContext) -> dict[str, Any]:
    output = await diagnose.DiagnoseAction().run(diagnose.DiagnoseParams(namespace=NS), context)
    return dict(jsonable(output))


async def test_a_store_with_its_role_binding_is_diagnosed_in_full(
    emulator: kubeapi.KubeEmulator, remediator_context: ActionContext, metric_set: metrics.Metrics
) -> None:
    emulator.seed([*objects.healthy_store(NS), access.store_role_binding(NS)])

    output = await diagnosis(remediator_context)

    assert output["flags"]["permission_denied"] is False
    assert output["permission_denied"] == []
    assert output["totals"]["pods"] > 0
    assert output["flags"]["app_ready"] is True
    assert denied(metric_set, "list", "pods") == 0


async def test_without_its_role_binding_the_diagnosis_fails_saying_what_is_missing(
    emulator: kubeapi.KubeEmulator, remediator_context: ActionContext, metric_set: metrics.Metrics
) -> None:
    emulator.seed(objects.healthy_store(NS))

    with pytest.raises(PermanentStepError) as caught:
        await diagnosis(remediator_context)

    message = str(caught.value)
    assert message.startswith(
        "diagnose store-a: permission denied: system:serviceaccount:remediator:remediator may "
        "not list "
    )
    assert HINT in message
    refused = message.partition("; refused: ")[2].split(", ")
    assert {"list pods", "list jobs.batch", "list secrets"} <= set(refused)
    # PVCs and what discovery watches are readable cluster-wide.
    assert "list persistentvolumeclaims" not in refused
    assert "list deployments.apps" not in refused
    assert denied(metric_set, "list", "pods") == 1
    assert denied(metric_set, "list", "jobs.batch") == 1
    assert denied(metric_set, "list", "deployments.apps") == 0


async def test_a_terminating_store_keeps_its_pvcs_within_reach(
    emulator: kubeapi.KubeEmulator, remediator_context: ActionContext
) -> None:
    """The namespace controller deletes the store's RoleBinding with its other contents;
    what store-deletion-stuck needs (the namespace, its PVCs) stays readable."""
    held = objects.pvc("held", NS, finalizers=["kubernetes.io/pvc-protection"])
    emulator.seed([*objects.healthy_store(NS), access.store_role_binding(NS), held])
    emulator.delete("v1", "Namespace", NS)
    assert emulator.list("rbac.authorization.k8s.io/v1", "RoleBinding", NS) == []

    output = await diagnosis(remediator_context)

    assert output["flags"]["namespace_terminating"] is True
    assert output["pvcs"] == [{"name": "held", "phase": "Bound"}]
    assert output["flags"]["permission_denied"] is True
    assert {"verb": "list", "resource": "pods", "namespace": NS} in output["permission_denied"]
    assert HINT in output["summary"]


async def test_a_refused_write_fails_the_step_naming_namespace_and_permission(
    emulator: kubeapi.KubeEmulator, remediator_context: ActionContext, metric_set: metrics.Metrics
) -> None:
    emulator.seed(objects.healthy_store(NS))
    params = rollout.RestartParams(namespace=NS, kind="Deployment", name=f"{NS}-app")

    with pytest.raises(PermanentStepError) as caught:
        await rollout.RolloutRestartAction().run(params, remediator_context)

    message = str(caught.value)
    assert "may not patch deployments.apps in namespace store-a" in message
    assert HINT in message
    assert denied(metric_set, "patch", "deployments.apps") == 1


def test_a_cluster_scope_denial_is_read_too() -> None:
    denial = kubernetes.parse_denial(
        'namespaces "x" is forbidden: User "system:serviceaccount:remediator:remediator" cannot '
        'delete resource "namespaces" in API group "" at the cluster scope'
    )
    assert denial == kubernetes.Denial(
        user="system:serviceaccount:remediator:remediator",
        verb="delete",
        resource="namespaces",
        api_group="",
        namespace=None,
    )
    assert "at the cluster scope" in denial.explain()
    assert kubernetes.parse_denial("admission webhook denied the request") is None
