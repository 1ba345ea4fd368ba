"""``k8s.rollout_restart`` and ``k8s.wait_rollout``, with a test controller rolling the pods."""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator
from typing import Any

import pytest

from remediator.core.errors import PermanentStepError, TemporaryStepError
from remediator.engine.actions.kube import rollout
from remediator.engine.actions.registry import ActionContext, Resources
from remediator.simulation import kubeapi

from . import objects
from .conftest import (
    ApiLog,
    Kubectl,
    make_context,
    nothing_sent,
    requires_kubectl,
)

NS = "store-a"
APP = f"{NS}-app"
RESTART = rollout.RolloutRestartAction()
WAIT = rollout.WaitRolloutAction()
KINDS: dict[str, Any] = {
    "Deployment": lambda: objects.deployment(APP, NS, replicas=2),
    "StatefulSet": lambda: objects.statefulset(APP, NS, replicas=2),
    "DaemonSet": lambda: objects.daemonset(APP, NS),
}


@pytest.fixture
def store(emulator: kubeapi.KubeEmulator) -> kubeapi.KubeEmulator:
    emulator.seed([objects.namespace(NS), *(make() for make in KINDS.values())])
    return emulator


def restart(kind: rollout.WorkloadKind = "Deployment", name: str = APP, namespace: str = NS) -> Any:
    return rollout.RestartParams(namespace=namespace, kind=kind, name=name)


def wait(kind: rollout.WorkloadKind = "Deployment", interval: float = 0.02) -> Any:
    return rollout.WaitRolloutParams(namespace=NS, kind=kind, name=APP, interval=interval)


@pytest.mark.parametrize("kind", list(KINDS))
async def test_restart_sets_the_template_annotation(
    store: kubeapi.KubeEmulator, context: ActionContext, api_log: ApiLog, kind: Any
) -> None:
    output = await RESTART.run(restart(kind), context)

    stored = store.get("apps/v1", kind, APP, NS)
    assert stored is not None
    annotations = stored["spec"]["template"]["metadata"]["annotations"]
    assert annotations == {rollout.RESTARTED_AT: output["restarted_at"]}
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", output["restarted_at"])
    assert output == {
        "kind": kind,
        "name": APP,
        "restarted_at": output["restarted_at"],
        "generation": 2,
        "dry_run": False,
    }
    (patch,) = api_log.writes()
    assert patch.content_type == "application/strategic-merge-patch+json"


@requires_kubectl
async def test_restart_as_kubectl_sees_it(
    store: kubeapi.KubeEmulator, context: ActionContext, kubectl: Kubectl
) -> None:
    output = await RESTART.run(restart(), context)

    jsonpath = r"{.spec.template.metadata.annotations.kubectl\.kubernetes\.io/restartedAt}"
    seen = await kubectl("get", "deployment", APP, "-n", NS, "-o", f"jsonpath={jsonpath}")
    assert seen == output["restarted_at"]


async def test_restart_dry_run_changes_nothing(
    store: kubeapi.KubeEmulator, dry_context: ActionContext, api_log: ApiLog
) -> None:
    version = store.resource_version

    output = await RESTART.run(restart(), dry_context)

    assert output["dry_run"] is True
    assert store.resource_version == version
    assert [s.query["dryRun"] for s in api_log.writes()] == [["All"]]


@pytest.mark.parametrize(
    ("params", "match"),
    [
        (restart(namespace="kube-system"), "outside the allowlist"),
        (restart(namespace="../x"), "not a DNS-1123 label"),
        (restart(name="../x"), "not a DNS-1123 subdomain"),
        (restart(name="a" * 300), "not a DNS-1123 subdomain"),
    ],
    ids=["kube-system", "namespace-traversal", "name-traversal", "long-name"],
)
async def test_out_of_scope_is_refused_without_a_call(
    store: kubeapi.KubeEmulator, context: ActionContext, api_log: ApiLog, params: Any, match: str
) -> None:
    with (
        nothing_sent(store, api_log),
        pytest.raises(PermanentStepError, match=rf"^scope: .*{match}"),
    ):
        await RESTART.run(params, context)
    with nothing_sent(store, api_log), pytest.raises(PermanentStepError, match=r"^scope: "):
        await WAIT.run(
            rollout.WaitRolloutParams(
                namespace=params.namespace, kind="Deployment", name=params.name
            ),
            context,
        )


@pytest.mark.usefixtures("store")
@pytest.mark.parametrize(
    ("status", "error"),
    [(404, PermanentStepError), (409, TemporaryStepError), (503, TemporaryStepError)],
    ids=str,
)
async def test_api_failures(
    context: ActionContext, api_log: ApiLog, status: int, error: type[Exception]
) -> None:
    api_log.fail("PATCH", f"/deployments/{APP}", status)

    with pytest.raises(error, match=rf"restart Deployment store-a/store-a-app: .*HTTP {status}"):
        await RESTART.run(restart(), context)


async def test_restart_of_a_missing_workload(context: ActionContext) -> None:
    with pytest.raises(PermanentStepError, match=r"HTTP 404 NotFound"):
        await RESTART.run(restart(name="nothing-here"), context)


# --- waiting --------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def deployment_controller(
    emulator: kubeapi.KubeEmulator, api_log: ApiLog
) -> AsyncIterator[list[int]]:
    """Rolls a restarted Deployment in two steps, as the real controller does: first the new
    pods exist but are not yet available, and once the waiter has looked, they are. Yields the
    generations it rolled out."""
    seen: list[int] = []

    async def control() -> None:
        async with emulator.subscribe(api_version="apps/v1", kind="Deployment") as events:
            async for event in events:
                metadata, spec = event.object["metadata"], event.object["spec"]
                observed = (event.object.get("status") or {}).get("observedGeneration", 0)
                if observed >= metadata["generation"]:
                    continue
                seen.append(metadata["generation"])
                n = spec["replicas"]
                half_done = {
                    "observedGeneration": metadata["generation"],
                    "replicas": n + 1,  # an old pod is still terminating
                    "updatedReplicas": n,
                    "readyReplicas": n - 1,
                    "availableReplicas": n - 1,
                }
                looked = api_log.arrival("GET", f"/deployments/{metadata['name']}")
                emulator.patch(
                    "apps/v1", "Deployment", metadata["name"], {"status": half_done}, namespace=NS
                )
                await looked.wait()
                done = {"replicas": n, "readyReplicas": n, "availableReplicas": n}
                emulator.patch(
                    "apps/v1", "Deployment", metadata["name"], {"status": done}, namespace=NS
                )

    task = asyncio.create_task(control())
    try:
        yield seen
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_wait_follows_a_restart_to_completion(
    store: kubeapi.KubeEmulator, context: ActionContext, api_log: ApiLog
) -> None:
    async with deployment_controller(store, api_log) as generations:
        await RESTART.run(restart(), context)
        output = await WAIT.run(wait(), context)

    assert generations == [2]
    assert output == {
        "kind": "Deployment",
        "name": APP,
        "generation": 2,
        "observed_generation": 2,
        "replicas": 2,
        "current": 2,
        "updated": 2,
        "ready": 2,
        "available": 2,
        "done": True,
        "polls": output["polls"],
    }
    assert output["polls"] >= 2


async def test_wait_polls_until_the_controller_catches_up(
    store: kubeapi.KubeEmulator, context: ActionContext, api_log: ApiLog
) -> None:
    await RESTART.run(restart(), context)
    first_poll = api_log.arrival("GET", f"/deployments/{APP}")

    async def controller() -> None:
        await first_poll.wait()

        def done(obj: dict[str, Any]) -> None:
            obj["status"]["observedGeneration"] = obj["metadata"]["generation"]

        store.apply_change("apps/v1", "Deployment", APP, done, namespace=NS)

    task = asyncio.create_task(controller())
    output = await WAIT.run(wait(), context)
    await task

    assert output["done"] is True
    assert output["polls"] >= 2


async def test_wait_gives_up_at_the_deadline_with_the_last_status(
    store: kubeapi.KubeEmulator, resources: Resources, api_log: ApiLog
) -> None:
    await RESTART.run(restart(), make_context(resources))
    loop = asyncio.get_running_loop()
    started = loop.time()

    with pytest.raises(PermanentStepError) as caught:
        await WAIT.run(wait(interval=0.05), make_context(resources, timeout=0.4))

    assert loop.time() - started < 0.4
    assert "not complete after" in str(caught.value)
    assert "generation=2, observed_generation=1" in str(caught.value)
    assert len(api_log.calls("GET", f"/deployments/{APP}")) >= 3


async def test_wait_on_a_missing_workload_fails_at_once(
    store: kubeapi.KubeEmulator, context: ActionContext
) -> None:
    params = rollout.WaitRolloutParams(namespace=NS, kind="StatefulSet", name="missing")

    with pytest.raises(PermanentStepError, match=r"HTTP 404"):
        await WAIT.run(params, context)


@pytest.mark.parametrize(
    ("kind", "status", "done"),
    [
        (
            "Deployment",
            {"observedGeneration": 2, "replicas": 2, "updatedReplicas": 2, "availableReplicas": 2},
            True,
        ),
        (
            "Deployment",
            {"observedGeneration": 1, "replicas": 2, "updatedReplicas": 2, "availableReplicas": 2},
            False,
        ),
        (
            "Deployment",
            {"observedGeneration": 2, "replicas": 3, "updatedReplicas": 2, "availableReplicas": 2},
            False,
        ),
        (
            "Deployment",
            {"observedGeneration": 2, "replicas": 2, "updatedReplicas": 2, "availableReplicas": 1},
            False,
        ),
        ("StatefulSet", {"observedGeneration": 2, "updatedReplicas": 2, "readyReplicas": 2}, True),
        ("StatefulSet", {"observedGeneration": 2, "updatedReplicas": 1, "readyReplicas": 2}, False),
        (
            "DaemonSet",
            {
                "observedGeneration": 2,
                "desiredNumberScheduled": 3,
                "updatedNumberScheduled": 3,
                "numberAvailable": 3,
            },
            True,
        ),
        (
            "DaemonSet",
            {"observedGeneration": 2, "desiredNumberScheduled": 3, "numberAvailable": 2},
            False,
        ),
    ],
    ids=[
        "deploy-done",
        "deploy-unobserved",
        "deploy-old-pods",
        "deploy-unavailable",
        "sts-done",
        "sts-not-updated",
        "ds-done",
        "ds-unavailable",
    ],
)
def test_rollout_status_rules(kind: str, status: dict[str, int], done: bool) -> None:
    obj = {"metadata": {"generation": 2}, "spec": {"replicas": 2}, "status": status}

    assert rollout.rollout_status(kind, obj)["done"] is done


def test_wait_interval_must_be_positive() -> None:
    with pytest.raises(ValueError, match=r"interval"):
        rollout.WaitRolloutParams(namespace=NS, kind="Deployment", name=APP, interval=0)
