"""``k8s.scale``: set a Deployment's or StatefulSet's replicas through ``/scale``.

Bounds are part of the params (``min_replicas``..``max_replicas``), so a templated or mistaken
``replicas`` is refused before anything is sent, at load time when it is a literal.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from remediator.adapters import kubernetes
from remediator.core.actions import ActionSpec
from remediator.engine.actions.kube import guarding
from remediator.engine.actions.registry import ActionContext, Output

SCALABLE: dict[str, kubernetes.Resource] = {
    "Deployment": kubernetes.DEPLOYMENTS,
    "StatefulSet": kubernetes.STATEFULSETS,
}


@dataclass(frozen=True, slots=True, kw_only=True)
class ScaleParams:
    namespace: str = field(metadata={"doc": "Namespace of the workload."})
    kind: Literal["Deployment", "StatefulSet"] = field(
        metadata={"doc": "Deployment or StatefulSet."}
    )
    name: str = field(metadata={"doc": "Name of the workload."})
    replicas: int = field(metadata={"doc": "Desired replicas, within min_replicas..max_replicas."})
    min_replicas: int = field(default=0, metadata={"doc": "Lowest replicas this step may set."})
    max_replicas: int = field(default=10, metadata={"doc": "Highest replicas this step may set."})

    def __post_init__(self) -> None:
        if not 0 <= self.min_replicas <= self.max_replicas:
            raise ValueError("need 0 <= min_replicas <= max_replicas")
        if not self.min_replicas <= self.replicas <= self.max_replicas:
            raise ValueError(
                f"replicas {self.replicas} is outside {self.min_replicas}..{self.max_replicas}"
            )


class ScaleAction:
    spec = ActionSpec(
        name="k8s.scale",
        params=ScaleParams,
        mutating=True,
        supports_dry_run=True,
        description=(
            "Set a Deployment's or StatefulSet's replicas via its scale subresource; "
            "replicas outside min_replicas..max_replicas are refused."
        ),
        permissions=tuple(
            guarding.permission(r, "get", "patch", subresource="scale") for r in SCALABLE.values()
        ),
    )

    async def run(self, params: ScaleParams, context: ActionContext) -> Output:
        guarding.check_namespace(params.namespace, context)
        guarding.check_name(params.name)
        kube = guarding.client(context)
        resource = SCALABLE[params.kind]
        what = f"scale {params.kind} {params.namespace}/{params.name}"
        with guarding.api_errors(what):
            before = await kube.get_scale(resource, params.name, namespace=params.namespace)
            if before.replicas != params.replicas:
                await kube.patch_scale(
                    resource,
                    params.name,
                    params.replicas,
                    namespace=params.namespace,
                    dry_run=context.dry_run,
                )
        changed = before.replicas != params.replicas
        if changed:
            context.log.info(
                "workload_scaled",
                kind=params.kind,
                namespace=params.namespace,
                name=params.name,
                replicas_from=before.replicas,
                replicas_to=params.replicas,
                dry_run=context.dry_run,
            )
        return {
            "kind": params.kind,
            "name": params.name,
            "from": before.replicas,
            "to": params.replicas,
            "changed": changed,
            "dry_run": context.dry_run,
        }

    def preview(self, params: ScaleParams) -> str:
        return (
            f"scale {params.kind.lower()}/{params.name} -n {params.namespace} "
            f"--replicas={params.replicas}"
        )
