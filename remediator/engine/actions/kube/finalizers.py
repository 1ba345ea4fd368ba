"""``k8s.remove_finalizers``: unstick a Namespace or PVC that is stuck terminating.

This is the runbook's ``kubectl patch namespace X -p '{"metadata":{"finalizers":[]}}'
--type=merge``: a merge patch of ``metadata.finalizers``, carrying the resourceVersion it was
computed from, so a finalizer added meanwhile is never dropped unseen (409, retried). A
namespace's own ``spec.finalizers`` (``kubernetes``) can only change through ``PUT .../finalize``,
done when ``spec: true``. It skips the cleanup those finalizers guard, hence destructive.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any, Literal

from remediator.adapters import kubernetes
from remediator.core.actions import ActionSpec
from remediator.engine.actions.kube import bodies, guarding
from remediator.engine.actions.registry import ActionContext, Output


@dataclass(frozen=True, slots=True, kw_only=True)
class RemoveFinalizersParams:
    kind: Literal["Namespace", "PersistentVolumeClaim"] = field(
        metadata={"doc": "Namespace or PersistentVolumeClaim."}
    )
    name: str = field(metadata={"doc": "Name of the object."})
    namespace: str | None = field(
        default=None, metadata={"doc": "Namespace of the PersistentVolumeClaim (required for it)."}
    )
    finalizers: tuple[str, ...] = field(
        default=(), metadata={"doc": "Finalizers to remove; empty removes all of them."}
    )
    spec: bool = field(
        default=False,
        metadata={"doc": "Namespace only: also clear spec.finalizers (PUT .../finalize)."},
    )

    def __post_init__(self) -> None:
        if self.kind == "PersistentVolumeClaim" and self.namespace is None:
            raise ValueError("a PersistentVolumeClaim needs its namespace")
        if self.kind == "Namespace" and self.namespace is not None:
            raise ValueError("a Namespace has no namespace; give its name only")
        if self.spec and self.kind != "Namespace":
            raise ValueError("spec: true is for Namespaces only")


def _split(present: list[str], wanted: tuple[str, ...]) -> tuple[list[str], list[str]]:
    """(removed, remaining) when removing ``wanted`` (all if empty) from ``present``."""
    removed = [f for f in present if not wanted or f in wanted]
    return removed, [f for f in present if f not in removed]


class RemoveFinalizersAction:
    spec = ActionSpec(
        name="k8s.remove_finalizers",
        params=RemoveFinalizersParams,
        mutating=True,
        destructive=True,
        supports_dry_run=True,
        description=(
            "Remove finalizers (all, or the listed ones) from a Namespace or PVC stuck "
            "terminating; spec: true also clears a namespace's spec.finalizers."
        ),
        permissions=(
            guarding.permission(kubernetes.NAMESPACES, "get", "patch"),
            guarding.permission(kubernetes.NAMESPACES, "update", subresource="finalize"),
            guarding.permission(kubernetes.PERSISTENTVOLUMECLAIMS, "get", "patch"),
        ),
    )

    async def run(self, params: RemoveFinalizersParams, context: ActionContext) -> Output:
        if params.kind == "Namespace":
            guarding.check_not_platform(params.name)
            guarding.check_namespace(params.name, context)
            resource, namespace = kubernetes.NAMESPACES, None
        else:
            assert params.namespace is not None  # noqa: S101 - __post_init__ ensures it
            guarding.check_namespace(params.namespace, context)
            guarding.check_name(params.name)
            resource, namespace = kubernetes.PERSISTENTVOLUMECLAIMS, params.namespace
        kube = guarding.client(context)
        where = f"{namespace}/{params.name}" if namespace else params.name
        output: dict[str, Any] = {"kind": params.kind, "name": params.name}
        with guarding.api_errors(f"remove finalizers of {params.kind} {where}"):
            try:
                obj = await kube.get(resource, params.name, namespace=namespace)
            except kubernetes.KubeNotFoundError:
                return {**output, "removed": [], "remaining": [], "already_absent": True}
            removed, remaining = _split(
                bodies.strings(obj, "metadata", "finalizers"), params.finalizers
            )
            current = obj
            if removed:
                patch = {
                    "metadata": {
                        "finalizers": remaining,
                        "resourceVersion": bodies.text(obj, "metadata", "resourceVersion"),
                    }
                }
                patched = await kube.patch(
                    resource, params.name, patch, namespace=namespace, dry_run=context.dry_run
                )
                # A dry run changed nothing: the finalize below must start from what is stored.
                current = obj if context.dry_run else patched
            output |= {"removed": removed, "remaining": remaining}
            if params.spec:
                output |= await self._finalize(kube, current, params, context)
        context.log.info(
            "finalizers_removed",
            kind=params.kind,
            namespace=namespace,
            name=params.name,
            removed=output["removed"] + output.get("spec_removed", []),
            dry_run=context.dry_run,
        )
        return {**output, "already_absent": False, "dry_run": context.dry_run}

    async def _finalize(
        self,
        kube: kubernetes.KubeClient,
        namespace: kubernetes.Object,
        params: RemoveFinalizersParams,
        context: ActionContext,
    ) -> dict[str, Any]:
        present = bodies.strings(namespace, "spec", "finalizers")
        removed, remaining = _split(present, params.finalizers)
        if removed:
            # NotFound: removing the metadata finalizers already let the namespace go.
            with contextlib.suppress(kubernetes.KubeNotFoundError):
                await kube.finalize_namespace(namespace, remaining, dry_run=context.dry_run)
        return {"spec_removed": removed, "spec_remaining": remaining}

    def preview(self, params: RemoveFinalizersParams) -> str:
        which = ", ".join(params.finalizers) if params.finalizers else "all finalizers"
        where = f" -n {params.namespace}" if params.namespace else ""
        spec = " and spec.finalizers" if params.spec else ""
        return f"remove {which}{spec} from {params.kind.lower()}/{params.name}{where}"
