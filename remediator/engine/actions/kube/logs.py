"""``k8s.logs_tail``: the last lines of a pod's log, for the audit trail and escalations.

Logs can hold anything, so every line is bounded and passed through redaction (known secret
values, bearer tokens, ``password=…`` pairs) before it becomes step output.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from remediator.adapters import kubernetes
from remediator.core import redaction
from remediator.core.actions import ActionSpec
from remediator.core.errors import PermanentStepError
from remediator.engine.actions.kube import bodies, guarding
from remediator.engine.actions.registry import ActionContext, Output

MAX_LINES = 500
MAX_LINE = 1000
"""Characters kept per line."""
MAX_BYTES = 256 * 1024
"""Asked of the server (``limitBytes``), so a huge log never reaches remediator."""
DEFAULT_CONTAINER = "kubectl.kubernetes.io/default-container"


@dataclass(frozen=True, slots=True, kw_only=True)
class LogsTailParams:
    namespace: str = field(metadata={"doc": "Namespace of the pod."})
    pod: str | None = field(default=None, metadata={"doc": "Pod name; or use label_selector."})
    label_selector: str | None = field(
        default=None,
        metadata={"doc": "Pick a matching pod (a Running one first), e.g. app=store-abc-app."},
    )
    container: str | None = field(
        default=None, metadata={"doc": "Container; default: the pod's default container."}
    )
    lines: int = field(default=50, metadata={"doc": f"Lines from the end, 1..{MAX_LINES}."})
    previous: bool = field(
        default=False, metadata={"doc": "The previous (crashed) container instance's log."}
    )

    def __post_init__(self) -> None:
        if (self.pod is None) == (self.label_selector is None):
            raise ValueError("give exactly one of pod and label_selector")
        if not 1 <= self.lines <= MAX_LINES:
            raise ValueError(f"lines must be within 1..{MAX_LINES}")


def _pick(pods: list[kubernetes.Object]) -> kubernetes.Object | None:
    running = [p for p in pods if bodies.text(p, "status", "phase") == "Running"]
    candidates = running or pods
    return candidates[0] if candidates else None


def _container(pod: Mapping[str, Any], wanted: str | None) -> str:
    """The container to read: the one asked for, else what kubectl would choose."""
    if wanted is not None:
        return wanted
    annotated = bodies.text(pod, "metadata", "annotations", DEFAULT_CONTAINER)
    if annotated:
        return annotated
    containers = bodies.items(pod, "spec", "containers")
    if not containers:
        raise PermanentStepError(f"pod {bodies.name(pod)} has no containers")
    return bodies.text(containers[0], "name")


class LogsTailAction:
    spec = ActionSpec(
        name="k8s.logs_tail",
        params=LogsTailParams,
        mutating=False,
        description=(
            "The last lines of a pod's log (by name or label selector; previous: the crashed "
            "instance), with secrets redacted."
        ),
        permissions=(
            guarding.permission(kubernetes.PODS, "get", "list"),
            guarding.permission(kubernetes.PODS, "get", subresource="log"),
        ),
    )

    async def run(self, params: LogsTailParams, context: ActionContext) -> Output:
        guarding.check_namespace(params.namespace, context)
        if params.pod is not None:
            guarding.check_name(params.pod)
        if params.label_selector is not None:
            guarding.check_selector(params.label_selector)
        if params.container is not None:
            guarding.check_name(params.container)
        kube = guarding.client(context)
        with guarding.api_errors(f"read logs in {params.namespace}"):
            if params.pod is not None:
                pod: kubernetes.Object | None = await kube.get(
                    kubernetes.PODS, params.pod, namespace=params.namespace
                )
            else:
                pods = await kube.list(
                    kubernetes.PODS,
                    namespace=params.namespace,
                    label_selector=params.label_selector,
                )
                pod = _pick(pods)
            if pod is None:
                raise PermanentStepError(
                    f"no pod in {params.namespace} matches {params.label_selector!r}"
                )
            name, container = bodies.name(pod), _container(pod, params.container)
            text = await kube.pod_logs(
                params.namespace,
                name,
                container=container,
                tail_lines=params.lines,
                previous=params.previous,
                limit_bytes=MAX_BYTES,
            )
        secrets = context.resources.secrets
        lines = [
            redaction.truncate(redaction.redact_text(line, secrets=secrets), MAX_LINE)
            for line in text.splitlines()[-params.lines :]
        ]
        return {"pod": name, "container": container, "previous": params.previous, "lines": lines}

    def preview(self, params: LogsTailParams) -> str:
        which = params.pod if params.pod is not None else f"-l {params.label_selector}"
        return f"logs --tail={params.lines} {which} -n {params.namespace}"
