"""``k8s.delete``, ``k8s.delete_pvc`` and ``k8s.delete_namespace``."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from remediator.config import SafetySettings, Settings
from remediator.core.errors import PermanentStepError, TemporaryStepError
from remediator.engine.actions.kube import delete
from remediator.engine.actions.registry import ActionContext, Resources
from remediator.simulation import kubeapi

from . import objects
from .conftest import (
    OUT_OF_SCOPE,
    ApiLog,
    Kubectl,
    make_context,
    nothing_sent,
    requires_kubectl,
)

NS = "store-a"
DELETE = delete.DeleteAction()
DELETE_PVC = delete.DeletePvcAction()
DELETE_NAMESPACE = delete.DeleteNamespaceAction()


@pytest.fixture
def store(emulator: kubeapi.KubeEmulator) -> kubeapi.KubeEmulator:
    emulator.seed(objects.healthy_store(NS))
    return emulator


def deleting(kind: str, name: str, **more: Any) -> Any:
    return delete.DeleteParams(namespace=NS, kind=kind, name=name, **more)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kind", "api_version", "name"),
    [
        ("Pod", "v1", "store-a-db-0"),
        ("Secret", "v1", "store-a-db-credentials"),
        ("Ingress", "networking.k8s.io/v1", "store-a-app"),
        ("Certificate", "cert-manager.io/v1", "store-a-app-tls"),
        ("Job", "batch/v1", "store-a-init"),
    ],
    ids=["pod", "secret", "ingress", "certificate", "job"],
)
async def test_delete_each_kind(
    store: kubeapi.KubeEmulator,
    context: ActionContext,
    api_log: ApiLog,
    kind: str,
    api_version: str,
    name: str,
) -> None:
    output = await DELETE.run(deleting(kind, name), context)

    assert output == {
        "kind": kind,
        "name": name,
        "deleted": True,
        "already_absent": False,
        "terminating": False,
        "finalizers": [],
        "dry_run": False,
    }
    assert store.get(api_version, kind, name, NS) is None
    (sent,) = api_log.writes()
    assert sent.query["propagationPolicy"] == ["Background"]


@requires_kubectl
async def test_failed_init_job_goes_with_its_pods(
    emulator: kubeapi.KubeEmulator, context: ActionContext, kubectl: Kubectl
) -> None:
    """Runbook scenario 1: delete the init job so the provisioner retries."""
    emulator.seed([objects.namespace(NS)])
    (job,) = emulator.seed([objects.job("init", NS, failed=3, succeeded=0, condition="Failed")])
    emulator.seed([objects.pod(f"init-{i}", NS, owner=job, phase="Failed") for i in range(3)])
    emulator.seed([objects.pod("bystander", NS)])

    await DELETE.run(deleting("Job", "init"), context)

    assert await kubectl("get", "jobs", "-n", NS, "-o", "name") == ""
    assert (await kubectl("get", "pods", "-n", NS, "-o", "name")).split() == ["pod/bystander"]


async def test_orphan_keeps_the_jobs_pods(
    emulator: kubeapi.KubeEmulator, context: ActionContext
) -> None:
    emulator.seed([objects.namespace(NS)])
    (job,) = emulator.seed([objects.job("init", NS)])
    emulator.seed([objects.pod("init-0", NS, owner=job)])

    await DELETE.run(deleting("Job", "init", propagation="Orphan"), context)

    assert emulator.get("batch/v1", "Job", "init", NS) is None
    assert emulator.get("v1", "Pod", "init-0", NS) is not None


async def test_already_absent_is_success(
    store: kubeapi.KubeEmulator, context: ActionContext
) -> None:
    output = await DELETE.run(deleting("Pod", "gone-already"), context)

    assert output == {
        "kind": "Pod",
        "name": "gone-already",
        "deleted": False,
        "already_absent": True,
    }


async def test_an_object_with_finalizers_is_left_terminating(
    store: kubeapi.KubeEmulator, context: ActionContext
) -> None:
    store.seed([objects.pod("held", NS, finalizers=["example.com/hold"])])

    output = await DELETE.run(deleting("Pod", "held"), context)

    assert output["terminating"] is True
    assert output["finalizers"] == ["example.com/hold"]
    held = store.get("v1", "Pod", "held", NS)
    assert held is not None
    assert held["metadata"]["deletionTimestamp"]


async def test_dry_run_deletes_nothing(
    store: kubeapi.KubeEmulator, dry_context: ActionContext, api_log: ApiLog
) -> None:
    version = store.resource_version

    pod = await DELETE.run(deleting("Pod", "store-a-db-0"), dry_context)
    pvc = await DELETE_PVC.run(
        delete.DeletePvcParams(namespace=NS, name="data-store-a-db-0"), dry_context
    )
    namespace = await DELETE_NAMESPACE.run(delete.DeleteNamespaceParams(name=NS), dry_context)

    assert (pod["dry_run"], pvc["dry_run"], namespace["dry_run"]) == (True, True, True)
    assert store.resource_version == version
    assert store.get("v1", "Pod", "store-a-db-0", NS) is not None
    assert [s.query["dryRun"] for s in api_log.writes()] == [["All"]] * 3


@requires_kubectl
async def test_delete_pvc(
    store: kubeapi.KubeEmulator, context: ActionContext, kubectl: Kubectl
) -> None:
    assert DELETE_PVC.spec.destructive is True
    assert DELETE.spec.destructive is False

    output = await DELETE_PVC.run(
        delete.DeletePvcParams(namespace=NS, name="data-store-a-db-0"), context
    )

    assert output["kind"] == "PersistentVolumeClaim"
    assert output["deleted"] is True
    assert await kubectl("get", "pvc", "-n", NS, "-o", "name") == ""


@requires_kubectl
async def test_delete_namespace_takes_its_contents(
    store: kubeapi.KubeEmulator, context: ActionContext, kubectl: Kubectl
) -> None:
    """Runbook scenario 1, option 2: force re-provisioning."""
    output = await DELETE_NAMESPACE.run(delete.DeleteNamespaceParams(name=NS), context)

    assert (output["kind"], output["deleted"]) == ("Namespace", True)
    error = await kubectl("get", "namespace", NS, ok=False)
    assert 'namespaces "store-a" not found' in error


async def test_delete_namespace_held_by_a_finalizer_reports_terminating(
    emulator: kubeapi.KubeEmulator, context: ActionContext
) -> None:
    emulator.seed([objects.namespace(NS), objects.pvc("data", NS, finalizers=["hold/on"])])

    output = await DELETE_NAMESPACE.run(delete.DeleteNamespaceParams(name=NS), context)

    assert output["terminating"] is True
    stuck = emulator.get("v1", "Namespace", NS)
    assert stuck is not None
    assert stuck["status"]["phase"] == "Terminating"


async def test_the_platform_namespace_is_never_deleted(
    emulator: kubeapi.KubeEmulator, resources: Resources, api_log: ApiLog
) -> None:
    emulator.seed([objects.namespace("store-platform")])
    # Even an allowlist that explicitly includes it does not help.
    settings = Settings(safety=SafetySettings(namespaces=("store-platform", ".*")))
    context = make_context(dataclasses.replace(resources, settings=settings))

    with (
        nothing_sent(emulator, api_log),
        pytest.raises(PermanentStepError, match=r"^scope: never delete .* 'store-platform'"),
    ):
        await DELETE_NAMESPACE.run(delete.DeleteNamespaceParams(name="store-platform"), context)

    assert emulator.get("v1", "Namespace", "store-platform") is not None


@pytest.mark.parametrize("namespace", OUT_OF_SCOPE, ids=["kube-system", "traversal", "long"])
async def test_out_of_scope_is_refused_without_a_call(
    store: kubeapi.KubeEmulator, context: ActionContext, api_log: ApiLog, namespace: str
) -> None:
    with nothing_sent(store, api_log):
        with pytest.raises(PermanentStepError, match=r"^scope: "):
            await DELETE.run(
                delete.DeleteParams(namespace=namespace, kind="Pod", name="x"), context
            )
        with pytest.raises(PermanentStepError, match=r"^scope: "):
            await DELETE.run(
                deleting("Pod", namespace if namespace != "kube-system" else "A"), context
            )
        with pytest.raises(PermanentStepError, match=r"^scope: "):
            await DELETE_PVC.run(delete.DeletePvcParams(namespace=namespace, name="x"), context)
        with pytest.raises(PermanentStepError, match=r"^scope: "):
            await DELETE_NAMESPACE.run(delete.DeleteNamespaceParams(name=namespace), context)


@pytest.mark.usefixtures("store")
@pytest.mark.parametrize(
    ("status", "error"),
    [(409, TemporaryStepError), (503, TemporaryStepError), (403, PermanentStepError)],
    ids=str,
)
async def test_api_failures(
    context: ActionContext, api_log: ApiLog, status: int, error: type[Exception]
) -> None:
    api_log.fail("DELETE", "/ingresses/", status)

    with pytest.raises(error, match=rf"delete Ingress store-a/store-a-app: .*HTTP {status}"):
        await DELETE.run(deleting("Ingress", "store-a-app"), context)
