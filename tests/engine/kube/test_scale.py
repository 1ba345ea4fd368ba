"""``k8s.scale`` through the ``/scale`` subresource, bounded by the step's own limits."""

from __future__ import annotations

from typing import Any

import pytest

from remediator.core import params
from remediator.core.errors import PermanentStepError, TemporaryStepError
from remediator.engine.actions.kube import scale
from remediator.engine.actions.registry import ActionContext
from remediator.simulation import kubeapi

from . import objects
from .conftest import OUT_OF_SCOPE, ApiLog, Kubectl, nothing_sent, requires_kubectl

NS = "store-platform"
ACTION = scale.ScaleAction()


@pytest.fixture
def platform(emulator: kubeapi.KubeEmulator) -> kubeapi.KubeEmulator:
    emulator.seed(
        [
            objects.namespace(NS),
            objects.deployment("provisioner", NS, replicas=1),
            objects.statefulset("provisioner-db", NS, replicas=1),
        ]
    )
    return emulator


def scaling(
    replicas: int, *, kind: str = "Deployment", name: str = "provisioner", **more: Any
) -> Any:
    raw = {"namespace": NS, "kind": kind, "name": name, "replicas": replicas, **more}
    return params.build(scale.ScaleParams, raw)


@pytest.mark.parametrize(
    ("kind", "name"), [("Deployment", "provisioner"), ("StatefulSet", "provisioner-db")]
)
async def test_scale_up(
    platform: kubeapi.KubeEmulator, context: ActionContext, api_log: ApiLog, kind: str, name: str
) -> None:
    output = await ACTION.run(scaling(3, kind=kind, name=name), context)

    assert output == {
        "kind": kind,
        "name": name,
        "from": 1,
        "to": 3,
        "changed": True,
        "dry_run": False,
    }
    stored = platform.get("apps/v1", kind, name, NS)
    assert stored is not None
    assert stored["spec"]["replicas"] == 3
    assert [(s.method, s.path.rpartition("/")[2]) for s in api_log.seen] == [
        ("GET", "scale"),
        ("PATCH", "scale"),
    ]


@requires_kubectl
@pytest.mark.usefixtures("platform")
async def test_scale_as_kubectl_sees_it(context: ActionContext, kubectl: Kubectl) -> None:
    await ACTION.run(scaling(3), context)

    replicas = await kubectl(
        "get", "deploy", "provisioner", "-n", NS, "-o", "jsonpath={.spec.replicas}"
    )
    assert replicas == "3"


async def test_scale_to_the_current_count_sends_no_write(
    platform: kubeapi.KubeEmulator, context: ActionContext, api_log: ApiLog
) -> None:
    output = await ACTION.run(scaling(1), context)

    assert output["changed"] is False
    assert api_log.writes() == []


async def test_dry_run_changes_nothing(
    platform: kubeapi.KubeEmulator, dry_context: ActionContext, api_log: ApiLog
) -> None:
    version = platform.resource_version

    output = await ACTION.run(scaling(0), dry_context)

    assert (output["from"], output["to"], output["dry_run"]) == (1, 0, True)
    assert platform.resource_version == version
    assert [s.query["dryRun"] for s in api_log.writes()] == [["All"]]


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"replicas": 11}, "replicas 11 is outside 0..10"),
        ({"replicas": 1, "min_replicas": 2, "max_replicas": 4}, "replicas 1 is outside 2..4"),
        ({"replicas": -1, "min_replicas": -1}, "need 0 <= min_replicas <= max_replicas"),
        ({"replicas": 2, "min_replicas": 3, "max_replicas": 1}, "need 0 <= min_replicas"),
    ],
    ids=["above-max", "below-min", "negative", "inverted-bounds"],
)
def test_out_of_bounds_replicas_are_refused_before_any_call(
    raw: dict[str, Any], message: str
) -> None:
    base = {"namespace": NS, "kind": "Deployment", "name": "provisioner"}

    problems = params.check(scale.ScaleParams, {**base, **raw}, path="params")
    with pytest.raises(PermanentStepError, match=message):
        params.build(scale.ScaleParams, {**base, **raw})

    assert len(problems) == 1
    assert message in problems[0].message


def test_templated_replicas_are_bounded_once_rendered() -> None:
    raw = {"namespace": NS, "kind": "Deployment", "name": "p", "replicas": "{{ alert.n }}"}

    assert params.check(scale.ScaleParams, raw, path="params") == []
    with pytest.raises(PermanentStepError, match=r"outside"):
        params.build(scale.ScaleParams, {**raw, "replicas": "50"})


@pytest.mark.parametrize("namespace", OUT_OF_SCOPE, ids=["kube-system", "traversal", "long"])
async def test_out_of_scope_namespace_is_refused_without_a_call(
    platform: kubeapi.KubeEmulator, context: ActionContext, api_log: ApiLog, namespace: str
) -> None:
    refused = scale.ScaleParams(namespace=namespace, kind="Deployment", name="p", replicas=1)

    with nothing_sent(platform, api_log), pytest.raises(PermanentStepError, match=r"^scope: "):
        await ACTION.run(refused, context)


@pytest.mark.usefixtures("platform")
@pytest.mark.parametrize(
    ("method", "status", "error"),
    [
        ("GET", 404, PermanentStepError),
        ("PATCH", 409, TemporaryStepError),
        ("PATCH", 500, TemporaryStepError),
        ("PATCH", 422, PermanentStepError),
    ],
    ids=["get-404", "patch-409", "patch-500", "patch-422"],
)
async def test_api_failures(
    context: ActionContext, api_log: ApiLog, method: str, status: int, error: type[Exception]
) -> None:
    api_log.fail(method, "/scale", status)

    with pytest.raises(error, match=rf"scale Deployment store-platform/provisioner: .*{status}"):
        await ACTION.run(scaling(2), context)


async def test_scaling_a_missing_workload(context: ActionContext) -> None:
    with pytest.raises(PermanentStepError, match=r"HTTP 404 NotFound"):
        await ACTION.run(scaling(2, name="nothing"), context)
