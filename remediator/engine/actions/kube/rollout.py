"""``k8s.rollout_restart`` and ``k8s.wait_rollout``: restart a workload, then see it through.

The restart is exactly ``kubectl rollout restart``: a strategic-merge patch of the pod
template's ``kubectl.kubernetes.io/restartedAt`` annotation, which makes the controller roll
every pod. Waiting mirrors ``kubectl rollout status``: the controller must have observed the
new generation and every replica must be updated and available.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from remediator.adapters import kubernetes
from remediator.core.actions import ActionSpec
from remediator.core.errors import PermanentStepError
from remediator.engine.actions.kube import bodies, guarding
from remediator.engine.actions.registry import ActionContext, Output

RESTARTED_AT = "kubectl.kubernetes.io/restartedAt"

WorkloadKind = Literal["Deployment", "StatefulSet", "DaemonSet"]
WORKLOADS: dict[str, kubernetes.Resource] = {
    "Deployment": kubernetes.DEPLOYMENTS,
    "StatefulSet": kubernetes.STATEFULSETS,
    "DaemonSet": kubernetes.DAEMONSETS,
}


@dataclass(frozen=True, slots=True, kw_only=True)
class RestartParams:
    namespace: str = field(metadata={"doc": "Namespace of the workload."})
    kind: WorkloadKind = field(metadata={"doc": "Deployment, StatefulSet or DaemonSet."})
    name: str = field(metadata={"doc": "Name of the workload, e.g. store-abc-app."})


@dataclass(frozen=True, slots=True, kw_only=True)
class WaitRolloutParams:
    namespace: str = field(metadata={"doc": "Namespace of the workload."})
    kind: WorkloadKind = field(metadata={"doc": "Deployment, StatefulSet or DaemonSet."})
    name: str = field(metadata={"doc": "Name of the workload."})
    interval: float = field(default=2.0, metadata={"doc": "Seconds between polls."})

    def __post_init__(self) -> None:
        if self.interval <= 0:
            raise ValueError("interval must be positive")


def _check(namespace: str, name: str, context: ActionContext) -> None:
    guarding.check_namespace(namespace, context)
    guarding.check_name(name)


class RolloutRestartAction:
    spec = ActionSpec(
        name="k8s.rollout_restart",
        params=RestartParams,
        mutating=True,
        supports_dry_run=True,
        description=(
            "Restart a Deployment, StatefulSet or DaemonSet's pods, as kubectl rollout restart "
            "does (pod template annotation kubectl.kubernetes.io/restartedAt)."
        ),
        permissions=tuple(guarding.permission(r, "patch") for r in WORKLOADS.values()),
    )

    async def run(self, params: RestartParams, context: ActionContext) -> Output:
        _check(params.namespace, params.name, context)
        kube = guarding.client(context)
        # Second precision, as kubectl writes it (time.RFC3339).
        restarted_at = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        patch = {"spec": {"template": {"metadata": {"annotations": {RESTARTED_AT: restarted_at}}}}}
        what = f"restart {params.kind} {params.namespace}/{params.name}"
        with guarding.api_errors(what):
            patched = await kube.patch(
                WORKLOADS[params.kind],
                params.name,
                patch,
                namespace=params.namespace,
                patch_type=kubernetes.PatchType.STRATEGIC,
                dry_run=context.dry_run,
            )
        context.log.info(
            "workload_restarted",
            kind=params.kind,
            namespace=params.namespace,
            name=params.name,
            dry_run=context.dry_run,
        )
        return {
            "kind": params.kind,
            "name": params.name,
            "restarted_at": restarted_at,
            "generation": bodies.number(patched, "metadata", "generation"),
            "dry_run": context.dry_run,
        }

    def preview(self, params: RestartParams) -> str:
        return f"rollout restart {params.kind.lower()}/{params.name} -n {params.namespace}"


def rollout_status(kind: str, obj: kubernetes.Object) -> dict[str, Any]:
    """The numbers ``kubectl rollout status`` looks at, and whether they say "done"."""
    generation = bodies.number(obj, "metadata", "generation")
    observed = bodies.number(obj, "status", "observedGeneration")
    status = bodies.mapping(obj, "status")
    if kind == "DaemonSet":
        desired = bodies.number(status, "desiredNumberScheduled")
        available = bodies.number(status, "numberAvailable")
        updated = bodies.number(status, "updatedNumberScheduled", default=desired)
        numbers = {"desired": desired, "updated": updated, "available": available}
        done = updated == desired and available == desired
    else:
        replicas = bodies.dig(obj, "spec", "replicas")
        wanted = replicas if isinstance(replicas, int) else 1
        updated = bodies.number(status, "updatedReplicas")
        ready = bodies.number(status, "readyReplicas")
        available = bodies.number(status, "availableReplicas")
        current = bodies.number(status, "replicas")
        numbers = {
            "replicas": wanted,
            "current": current,
            "updated": updated,
            "ready": ready,
            "available": available,
        }
        if kind == "StatefulSet":
            done = updated == wanted and ready == wanted
        else:
            # Old pods still terminating (current > updated) mean the rollout is not over.
            done = updated == wanted and available == wanted and current <= updated
    return {
        "generation": generation,
        "observed_generation": observed,
        **numbers,
        "done": observed >= generation and done,
    }


class WaitRolloutAction:
    spec = ActionSpec(
        name="k8s.wait_rollout",
        params=WaitRolloutParams,
        mutating=False,
        description=(
            "Poll a Deployment, StatefulSet or DaemonSet until its rollout is complete "
            "(observed generation current, all replicas updated and available) or time is up."
        ),
        permissions=tuple(guarding.permission(r, "get") for r in WORKLOADS.values()),
    )

    async def run(self, params: WaitRolloutParams, context: ActionContext) -> Output:
        _check(params.namespace, params.name, context)
        kube = guarding.client(context)
        loop = asyncio.get_running_loop()
        what = f"read {params.kind} {params.namespace}/{params.name}"
        polls = 0
        while True:
            with guarding.api_errors(what):
                obj = await kube.get(
                    WORKLOADS[params.kind], params.name, namespace=params.namespace
                )
            polls += 1
            status = rollout_status(params.kind, obj)
            if status["done"]:
                return {"kind": params.kind, "name": params.name, **status, "polls": polls}
            if context.deadline - loop.time() <= params.interval:
                numbers = ", ".join(f"{k}={v}" for k, v in status.items() if k != "done")
                raise PermanentStepError(
                    f"rollout of {params.kind} {params.namespace}/{params.name} not complete "
                    f"after {polls} polls: {numbers}"
                )
            await asyncio.sleep(params.interval)

    def preview(self, params: WaitRolloutParams) -> str:
        return f"rollout status {params.kind.lower()}/{params.name} -n {params.namespace}"
