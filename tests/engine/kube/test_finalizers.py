"""``k8s.remove_finalizers``: runbook scenario 5, a store namespace stuck terminating."""

from __future__ import annotations

from typing import Any

import pytest

from remediator.core import params
from remediator.core.errors import PermanentStepError, TemporaryStepError
from remediator.engine.actions.kube import finalizers
from remediator.engine.actions.registry import ActionContext
from remediator.simulation import kubeapi

from . import objects
from .conftest import OUT_OF_SCOPE, ApiLog, Kubectl, nothing_sent, requires_kubectl

NS = "store-a"
ACTION = finalizers.RemoveFinalizersAction()
PROTECTION = "kubernetes.io/pvc-protection"
HOLD = "example.com/backup-hold"


@pytest.fixture
def stuck(emulator: kubeapi.KubeEmulator) -> kubeapi.KubeEmulator:
    """A deleted store namespace held by its own finalizer and by a protected PVC."""
    emulator.seed(
        [
            objects.namespace(NS, finalizers=[HOLD]),
            objects.pvc("data-db-0", NS, finalizers=[PROTECTION]),
        ]
    )
    emulator.delete("v1", "Namespace", NS)
    return emulator


def removing(kind: str, name: str, **more: Any) -> Any:
    return params.build(finalizers.RemoveFinalizersParams, {"kind": kind, "name": name, **more})


def phase(emulator: kubeapi.KubeEmulator) -> str | None:
    namespace = emulator.get("v1", "Namespace", NS)
    return None if namespace is None else str(namespace["status"]["phase"])


@requires_kubectl
async def test_unsticking_a_namespace_step_by_step(
    stuck: kubeapi.KubeEmulator, context: ActionContext, api_log: ApiLog, kubectl: Kubectl
) -> None:
    assert phase(stuck) == "Terminating"

    pvc = await ACTION.run(removing("PersistentVolumeClaim", "data-db-0", namespace=NS), context)

    assert pvc == {
        "kind": "PersistentVolumeClaim",
        "name": "data-db-0",
        "removed": [PROTECTION],
        "remaining": [],
        "already_absent": False,
        "dry_run": False,
    }
    assert stuck.get("v1", "PersistentVolumeClaim", "data-db-0", NS) is None
    assert phase(stuck) == "Terminating"  # its own finalizer still holds it

    namespace = await ACTION.run(removing("Namespace", NS), context)

    assert (namespace["removed"], namespace["remaining"]) == ([HOLD], [])
    error = await kubectl("get", "namespace", NS, ok=False)
    assert "not found" in error
    patch = api_log.calls("PATCH", f"/namespaces/{NS}")[-1]
    assert patch.content_type == "application/merge-patch+json"


async def test_spec_finalizers_go_through_finalize(
    emulator: kubeapi.KubeEmulator, context: ActionContext, api_log: ApiLog
) -> None:
    # Content with a finalizer keeps the namespace controller from removing "kubernetes".
    emulator.seed([objects.namespace(NS), objects.pvc("data", NS, finalizers=[PROTECTION])])
    emulator.delete("v1", "Namespace", NS)

    output = await ACTION.run(removing("Namespace", NS, spec=True), context)

    assert output["removed"] == []
    assert (output["spec_removed"], output["spec_remaining"]) == (["kubernetes"], [])
    assert emulator.get("v1", "Namespace", NS) is None
    assert api_log.calls("PATCH") == []
    (finalize,) = api_log.calls("PUT", f"/namespaces/{NS}/finalize")
    assert finalize.query == {}


async def test_only_the_named_finalizers_are_removed(
    emulator: kubeapi.KubeEmulator, context: ActionContext
) -> None:
    emulator.seed([objects.namespace(NS), objects.pvc("data", NS, finalizers=["a/x", "b/y"])])

    output = await ACTION.run(
        removing("PersistentVolumeClaim", "data", namespace=NS, finalizers=["a/x", "c/z"]),
        context,
    )

    assert (output["removed"], output["remaining"]) == (["a/x"], ["b/y"])
    pvc = emulator.get("v1", "PersistentVolumeClaim", "data", NS)
    assert pvc is not None
    assert pvc["metadata"]["finalizers"] == ["b/y"]


async def test_nothing_to_remove_sends_no_write(
    emulator: kubeapi.KubeEmulator, context: ActionContext, api_log: ApiLog
) -> None:
    emulator.seed([objects.namespace(NS), objects.pvc("data", NS)])

    output = await ACTION.run(removing("PersistentVolumeClaim", "data", namespace=NS), context)

    assert (output["removed"], output["remaining"]) == ([], [])
    assert api_log.writes() == []


async def test_already_gone_is_success(context: ActionContext) -> None:
    output = await ACTION.run(removing("Namespace", "store-gone"), context)

    assert output["already_absent"] is True


async def test_dry_run_changes_nothing(
    stuck: kubeapi.KubeEmulator, dry_context: ActionContext, api_log: ApiLog
) -> None:
    version = stuck.resource_version

    output = await ACTION.run(removing("Namespace", NS, spec=True), dry_context)

    assert (output["removed"], output["spec_removed"]) == ([HOLD], ["kubernetes"])
    assert output["dry_run"] is True
    assert stuck.resource_version == version
    assert [(s.method, s.query["dryRun"]) for s in api_log.writes()] == [
        ("PATCH", ["All"]),
        ("PUT", ["All"]),
    ]


async def test_a_finalizer_added_meanwhile_is_a_conflict_not_a_loss(
    emulator: kubeapi.KubeEmulator, context: ActionContext, api_log: ApiLog
) -> None:
    emulator.seed([objects.namespace(NS), objects.pvc("data", NS, finalizers=[PROTECTION])])

    def add_finalizer() -> None:
        def change(pvc: dict[str, Any]) -> None:
            pvc["metadata"]["finalizers"].append("late/arrival")

        emulator.apply_change("v1", "PersistentVolumeClaim", "data", change, namespace=NS)

    api_log.before("PATCH", "/persistentvolumeclaims/data", add_finalizer)

    with pytest.raises(TemporaryStepError, match=r"HTTP 409 Conflict"):
        await ACTION.run(removing("PersistentVolumeClaim", "data", namespace=NS), context)

    pvc = emulator.get("v1", "PersistentVolumeClaim", "data", NS)
    assert pvc is not None
    assert pvc["metadata"]["finalizers"] == [PROTECTION, "late/arrival"]


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"kind": "PersistentVolumeClaim", "name": "x"}, "needs its namespace"),
        ({"kind": "Namespace", "name": NS, "namespace": NS}, "has no namespace"),
        (
            {"kind": "PersistentVolumeClaim", "name": "x", "namespace": NS, "spec": True},
            "Namespaces only",
        ),
    ],
    ids=["pvc-without-namespace", "namespace-with-namespace", "spec-on-pvc"],
)
def test_inconsistent_params_are_refused(raw: dict[str, Any], message: str) -> None:
    with pytest.raises(PermanentStepError, match=message):
        params.build(finalizers.RemoveFinalizersParams, raw)


@pytest.mark.parametrize("namespace", OUT_OF_SCOPE, ids=["kube-system", "traversal", "long"])
async def test_out_of_scope_is_refused_without_a_call(
    stuck: kubeapi.KubeEmulator, context: ActionContext, api_log: ApiLog, namespace: str
) -> None:
    with nothing_sent(stuck, api_log):
        with pytest.raises(PermanentStepError, match=r"^scope: "):
            await ACTION.run(removing("Namespace", namespace), context)
        with pytest.raises(PermanentStepError, match=r"^scope: "):
            await ACTION.run(removing("PersistentVolumeClaim", "x", namespace=namespace), context)
        with pytest.raises(PermanentStepError, match=r"^scope: "):
            await ACTION.run(removing("PersistentVolumeClaim", "../x", namespace=NS), context)
        with pytest.raises(PermanentStepError, match=r"^scope: never .* platform"):
            await ACTION.run(removing("Namespace", "store-platform"), context)


@pytest.mark.parametrize(
    ("method", "status", "error"),
    [
        ("GET", 503, TemporaryStepError),
        ("PATCH", 403, PermanentStepError),
        ("PUT", 500, TemporaryStepError),
    ],
    ids=["get-503", "patch-403", "finalize-500"],
)
async def test_api_failures(
    stuck: kubeapi.KubeEmulator,
    context: ActionContext,
    api_log: ApiLog,
    method: str,
    status: int,
    error: type[Exception],
) -> None:
    api_log.fail(method, f"/namespaces/{NS}", status)

    with pytest.raises(error, match=rf"remove finalizers of Namespace store-a: .*HTTP {status}"):
        await ACTION.run(removing("Namespace", NS, spec=True), context)
