"""``k8s.delete``, ``k8s.delete_pvc`` and ``k8s.delete_namespace``.

Deleting is the runbook's most common fix: a failed init Job so the provisioner retries, an
Ingress or Certificate so Helm or cert-manager recreate it. Those kinds recover by themselves
and are not destructive. A PVC holds store data, so it has its own action marked destructive,
which playbooks must opt in to; so is deleting a whole store namespace. Something already gone
is success (``already_absent``), which makes every delete safe to retry.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from remediator.adapters import kubernetes
from remediator.core.actions import ActionSpec
from remediator.engine.actions.kube import bodies, guarding
from remediator.engine.actions.registry import ActionContext, Output

DELETABLE: dict[str, kubernetes.Resource] = {
    "Pod": kubernetes.PODS,
    "Job": kubernetes.JOBS,
    "Secret": kubernetes.SECRETS,
    "Ingress": kubernetes.INGRESSES,
    "Certificate": kubernetes.CERTIFICATES,
}
Propagation = Literal["Background", "Foreground", "Orphan"]


@dataclass(frozen=True, slots=True, kw_only=True)
class DeleteParams:
    namespace: str = field(metadata={"doc": "Namespace of the object."})
    kind: Literal["Pod", "Job", "Secret", "Ingress", "Certificate"] = field(
        metadata={"doc": "Pod, Job, Secret, Ingress or Certificate (cert-manager.io/v1)."}
    )
    name: str = field(metadata={"doc": "Name of the object."})
    propagation: Propagation = field(
        default="Background",
        metadata={"doc": "What happens to dependents; Background also removes a Job's pods."},
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class DeletePvcParams:
    namespace: str = field(metadata={"doc": "Namespace of the claim."})
    name: str = field(metadata={"doc": "Name of the PersistentVolumeClaim, e.g. data-x-db-0."})


@dataclass(frozen=True, slots=True, kw_only=True)
class DeleteNamespaceParams:
    name: str = field(
        metadata={"doc": "Namespace to delete; must match the allowlist, never store-platform."}
    )


async def _delete(
    context: ActionContext,
    resource: kubernetes.Resource,
    name: str,
    *,
    namespace: str | None,
    propagation: str | None = None,
) -> dict[str, Any]:
    kube = guarding.client(context)
    where = f"{namespace}/{name}" if namespace else name
    with guarding.api_errors(f"delete {resource.kind} {where}"):
        try:
            result = await kube.delete(
                resource,
                name,
                namespace=namespace,
                propagation=propagation,
                dry_run=context.dry_run,
            )
        except kubernetes.KubeNotFoundError:
            return {"kind": resource.kind, "name": name, "deleted": False, "already_absent": True}
    # A Status means gone; an object with a deletionTimestamp waits for its finalizers.
    terminating = bodies.text(result, "kind") == resource.kind and bool(
        bodies.text(result, "metadata", "deletionTimestamp")
    )
    context.log.info(
        "object_deleted",
        kind=resource.kind,
        namespace=namespace,
        name=name,
        terminating=terminating,
        dry_run=context.dry_run,
    )
    return {
        "kind": resource.kind,
        "name": name,
        "deleted": True,
        "already_absent": False,
        "terminating": terminating,
        "finalizers": bodies.strings(result, "metadata", "finalizers") if terminating else [],
        "dry_run": context.dry_run,
    }


class DeleteAction:
    spec = ActionSpec(
        name="k8s.delete",
        params=DeleteParams,
        mutating=True,
        supports_dry_run=True,
        description=(
            "Delete a Pod, Job, Secret, Ingress or Certificate that its owner (controller, "
            "provisioner, Helm, cert-manager) recreates; already gone counts as success."
        ),
        permissions=tuple(guarding.permission(r, "delete") for r in DELETABLE.values()),
    )

    async def run(self, params: DeleteParams, context: ActionContext) -> Output:
        guarding.check_namespace(params.namespace, context)
        guarding.check_name(params.name)
        return await _delete(
            context,
            DELETABLE[params.kind],
            params.name,
            namespace=params.namespace,
            propagation=params.propagation,
        )

    def preview(self, params: DeleteParams) -> str:
        return f"delete {params.kind.lower()}/{params.name} -n {params.namespace}"


class DeletePvcAction:
    spec = ActionSpec(
        name="k8s.delete_pvc",
        params=DeletePvcParams,
        mutating=True,
        destructive=True,
        supports_dry_run=True,
        description=(
            "Delete a PersistentVolumeClaim, and with it (reclaim policy Delete) the store's "
            "data; for re-initializing a database the runbook's way."
        ),
        permissions=(guarding.permission(kubernetes.PERSISTENTVOLUMECLAIMS, "delete"),),
    )

    async def run(self, params: DeletePvcParams, context: ActionContext) -> Output:
        guarding.check_namespace(params.namespace, context)
        guarding.check_name(params.name)
        return await _delete(
            context, kubernetes.PERSISTENTVOLUMECLAIMS, params.name, namespace=params.namespace
        )

    def preview(self, params: DeletePvcParams) -> str:
        return f"delete pvc/{params.name} -n {params.namespace} (destroys its data)"


class DeleteNamespaceAction:
    spec = ActionSpec(
        name="k8s.delete_namespace",
        params=DeleteNamespaceParams,
        mutating=True,
        destructive=True,
        supports_dry_run=True,
        description=(
            "Delete a whole namespace and everything in it (store re-provisioning); "
            "store-platform is always refused."
        ),
        permissions=(guarding.permission(kubernetes.NAMESPACES, "delete"),),
    )

    async def run(self, params: DeleteNamespaceParams, context: ActionContext) -> Output:
        guarding.check_not_platform(params.name)
        guarding.check_namespace(params.name, context)
        output = await _delete(context, kubernetes.NAMESPACES, params.name, namespace=None)
        return output

    def preview(self, params: DeleteNamespaceParams) -> str:
        return f"delete namespace {params.name} and everything in it"
