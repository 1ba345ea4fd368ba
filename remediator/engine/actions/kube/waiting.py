"""``k8s.wait_for``: poll objects of any known kind until they are present, absent, in a phase
or have a condition; the generic "wait until" of verification and multi-step fixes.

Objects are chosen by name or by label selector (or all of the kind in the namespace). For
``phase`` and ``condition`` at least one object must exist and every chosen one must match.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Literal

from remediator.adapters import kubernetes
from remediator.core.actions import ActionSpec
from remediator.core.errors import PermanentStepError
from remediator.engine.actions.kube import bodies, guarding
from remediator.engine.actions.registry import ActionContext, Output

State = Literal["present", "absent", "phase", "condition"]
MAX_MATCHED = 50


@dataclass(frozen=True, slots=True, kw_only=True)
class WaitForParams:
    api_version: str = field(metadata={"doc": "e.g. v1, apps/v1, batch/v1, cert-manager.io/v1."})
    kind: str = field(metadata={"doc": "e.g. Pod, Deployment, Job, Certificate, Namespace."})
    name: str | None = field(default=None, metadata={"doc": "One object by name."})
    namespace: str | None = field(
        default=None, metadata={"doc": "Required for namespaced kinds; none for Namespace."}
    )
    label_selector: str | None = field(
        default=None, metadata={"doc": "Objects by label, e.g. app=store-abc-app."}
    )
    state: State = field(metadata={"doc": "present, absent, phase or condition."})
    phase: str | None = field(
        default=None, metadata={"doc": "state phase: the status.phase to reach, e.g. Running."}
    )
    condition_type: str | None = field(
        default=None, metadata={"doc": "state condition: the condition, e.g. Ready, Complete."}
    )
    condition_status: str = field(
        default="True", metadata={"doc": "state condition: its wanted status."}
    )
    interval: float = field(default=2.0, metadata={"doc": "Seconds between polls."})

    def __post_init__(self) -> None:
        resource = kubernetes.resource_for(self.api_version, self.kind)
        if resource is None:
            known = ", ".join(f"{r.api_version} {r.kind}" for r in kubernetes.RESOURCES)
            raise ValueError(f"unknown kind {self.api_version} {self.kind} (known: {known})")
        if resource.namespaced and self.namespace is None:
            raise ValueError(f"{self.kind} is namespaced: give namespace")
        if not resource.namespaced and self.namespace is not None:
            raise ValueError(f"{self.kind} is not namespaced: leave namespace out")
        if self.name is not None and self.label_selector is not None:
            raise ValueError("give name or label_selector, not both")
        if self.state == "phase" and not self.phase:
            raise ValueError("state phase needs phase")
        if self.state == "condition" and not self.condition_type:
            raise ValueError("state condition needs condition_type")
        if self.interval <= 0:
            raise ValueError("interval must be positive")

    @property
    def resource(self) -> kubernetes.Resource:
        found = kubernetes.resource_for(self.api_version, self.kind)
        assert found is not None  # noqa: S101 - checked in __post_init__
        return found


class WaitForAction:
    spec = ActionSpec(
        name="k8s.wait_for",
        params=WaitForParams,
        mutating=False,
        description=(
            "Poll objects (by name, label selector, or all of a kind in a namespace) until they "
            "are present, absent, in a status.phase or have a condition, or time is up."
        ),
        permissions=tuple(guarding.permission(r, "get", "list") for r in kubernetes.RESOURCES),
    )

    async def run(self, params: WaitForParams, context: ActionContext) -> Output:
        resource = params.resource
        if params.namespace is not None:
            guarding.check_namespace(params.namespace, context)
        if params.name is not None:
            if resource == kubernetes.NAMESPACES:
                guarding.check_namespace(params.name, context)
            else:
                guarding.check_name(params.name)
        if params.label_selector is not None:
            guarding.check_selector(params.label_selector)
        kube = guarding.client(context)
        loop = asyncio.get_running_loop()
        polls = 0
        while True:
            objects = await self._read(kube, resource, params)
            polls += 1
            matched = [bodies.name(o) for o in objects if _matches(o, params)]
            holds = (
                not objects
                if params.state == "absent"
                else bool(objects) and len(matched) == len(objects)
            )
            if holds:
                return {"state": params.state, "matched": matched[:MAX_MATCHED], "polls": polls}
            if context.deadline - loop.time() <= params.interval:
                raise PermanentStepError(
                    f"{params.kind} {_describe(params)} not {_wanted(params)} after {polls} "
                    f"polls: {len(objects)} found, {len(matched)} matching"
                )
            await asyncio.sleep(params.interval)

    async def _read(
        self, kube: kubernetes.KubeClient, resource: kubernetes.Resource, params: WaitForParams
    ) -> list[kubernetes.Object]:
        with guarding.api_errors(f"read {params.kind} {_describe(params)}"):
            try:
                if params.name is not None:
                    return [await kube.get(resource, params.name, namespace=params.namespace)]
                return await kube.list(
                    resource, namespace=params.namespace, label_selector=params.label_selector
                )
            except kubernetes.KubeNotFoundError:
                return []

    def preview(self, params: WaitForParams) -> str:
        return f"wait until {params.kind} {_describe(params)} is {_wanted(params)}"


def _matches(obj: kubernetes.Object, params: WaitForParams) -> bool:
    if params.state == "phase":
        return bodies.text(obj, "status", "phase") == params.phase
    if params.state == "condition":
        assert params.condition_type is not None  # noqa: S101 - checked in __post_init__
        return bodies.condition_is(obj, params.condition_type, params.condition_status)
    return True


def _describe(params: WaitForParams) -> str:
    where = f" in {params.namespace}" if params.namespace else ""
    if params.name is not None:
        return f"{params.name}{where}"
    if params.label_selector is not None:
        return f"-l {params.label_selector}{where}"
    return f"(all){where}"


def _wanted(params: WaitForParams) -> str:
    if params.state == "phase":
        return f"in phase {params.phase}"
    if params.state == "condition":
        return f"{params.condition_type}={params.condition_status}"
    return params.state
