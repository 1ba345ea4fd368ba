"""``k8s.wait_for``: present, absent, phase and condition, by name, label or kind."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

from remediator.core import params
from remediator.core.errors import PermanentStepError, TemporaryStepError
from remediator.engine.actions.kube import waiting
from remediator.engine.actions.registry import ActionContext, Resources
from remediator.simulation import kubeapi

from . import objects
from .conftest import OUT_OF_SCOPE, ApiLog, make_context, nothing_sent

NS = "store-a"
ACTION = waiting.WaitForAction()


def wait_for(**raw: Any) -> Any:
    return params.build(waiting.WaitForParams, {"interval": 0.02, **raw})


async def after_first_poll(api_log: ApiLog, path_part: str, change: Callable[[], Any]) -> None:
    """Make ``change`` once the waiter has looked at least once (and so has seen the before)."""
    await api_log.arrival("GET", path_part).wait()
    change()


async def run_while(
    api_log: ApiLog, path_part: str, change: Callable[[], Any], params_: Any, context: Any
) -> dict[str, Any]:
    task = asyncio.create_task(after_first_poll(api_log, path_part, change))
    output = dict(await ACTION.run(params_, context))
    await task
    return output


async def test_present_by_name(
    emulator: kubeapi.KubeEmulator, context: ActionContext, api_log: ApiLog
) -> None:
    emulator.seed([objects.namespace(NS)])

    output = await run_while(
        api_log,
        "/pods/web",
        lambda: emulator.create(objects.pod("web", NS)),
        wait_for(api_version="v1", kind="Pod", namespace=NS, name="web", state="present"),
        context,
    )

    assert output["state"] == "present"
    assert output["matched"] == ["web"]
    assert output["polls"] >= 2


async def test_absent_namespace(
    emulator: kubeapi.KubeEmulator, context: ActionContext, api_log: ApiLog
) -> None:
    emulator.seed([objects.namespace(NS)])

    output = await run_while(
        api_log,
        f"/namespaces/{NS}",
        lambda: emulator.delete("v1", "Namespace", NS),
        wait_for(api_version="v1", kind="Namespace", name=NS, state="absent"),
        context,
    )

    assert (output["state"], output["matched"]) == ("absent", [])
    assert output["polls"] >= 2


async def test_phase_of_every_selected_pod(
    emulator: kubeapi.KubeEmulator, context: ActionContext, api_log: ApiLog
) -> None:
    emulator.seed(
        [
            objects.namespace(NS),
            objects.pod("web-1", NS, labels={"app": "web"}),
            objects.pod("web-2", NS, labels={"app": "web"}, phase="Pending"),
            objects.pod("other", NS, labels={"app": "other"}, phase="Failed"),
        ]
    )

    def start() -> None:
        emulator.patch("v1", "Pod", "web-2", {"status": {"phase": "Running"}}, namespace=NS)

    output = await run_while(
        api_log,
        "/pods",
        start,
        wait_for(
            api_version="v1",
            kind="Pod",
            namespace=NS,
            label_selector="app=web",
            state="phase",
            phase="Running",
        ),
        context,
    )

    assert output["matched"] == ["web-1", "web-2"]
    assert output["polls"] >= 2


@pytest.mark.parametrize(
    ("obj", "api_version", "kind", "condition"),
    [
        (
            objects.certificate("tls", NS, ready="False"),
            "cert-manager.io/v1",
            "Certificate",
            "Ready",
        ),
        (objects.job("init", NS, condition=None), "batch/v1", "Job", "Complete"),
    ],
    ids=["certificate-ready", "job-complete"],
)
async def test_condition(
    emulator: kubeapi.KubeEmulator,
    context: ActionContext,
    api_log: ApiLog,
    obj: dict[str, Any],
    api_version: str,
    kind: str,
    condition: str,
) -> None:
    emulator.seed([objects.namespace(NS), obj])
    name = obj["metadata"]["name"]

    def fulfil() -> None:
        conditions = [{"type": condition, "status": "True"}]
        emulator.patch(
            api_version, kind, name, {"status": {"conditions": conditions}}, namespace=NS
        )

    output = await run_while(
        api_log,
        f"/{name}",
        fulfil,
        wait_for(
            api_version=api_version,
            kind=kind,
            namespace=NS,
            name=name,
            state="condition",
            condition_type=condition,
        ),
        context,
    )

    assert output["matched"] == [name]


async def test_absent_with_no_selector_means_none_of_the_kind(
    emulator: kubeapi.KubeEmulator, context: ActionContext
) -> None:
    emulator.seed([objects.namespace(NS)])

    output = await ACTION.run(
        wait_for(api_version="batch/v1", kind="Job", namespace=NS, state="absent"), context
    )

    assert output["matched"] == []


async def test_gives_up_at_the_deadline(
    emulator: kubeapi.KubeEmulator, resources: Resources
) -> None:
    emulator.seed([objects.namespace(NS), objects.pod("web", NS, phase="Pending")])
    loop = asyncio.get_running_loop()
    started = loop.time()

    with pytest.raises(PermanentStepError) as caught:
        await ACTION.run(
            wait_for(
                api_version="v1",
                kind="Pod",
                namespace=NS,
                name="web",
                state="phase",
                phase="Running",
                interval=0.05,
            ),
            make_context(resources, timeout=0.3),
        )

    assert loop.time() - started < 0.3
    assert "Pod web in store-a not in phase Running after" in str(caught.value)
    assert "1 found, 0 matching" in str(caught.value)


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"api_version": "v1", "kind": "Gadget"}, "unknown kind v1 Gadget"),
        ({"api_version": "apps/v1", "kind": "Pod"}, "unknown kind apps/v1 Pod"),
        ({"api_version": "v1", "kind": "Pod"}, "Pod is namespaced"),
        ({"api_version": "v1", "kind": "Namespace", "namespace": NS}, "not namespaced"),
        (
            {
                "api_version": "v1",
                "kind": "Pod",
                "namespace": NS,
                "name": "a",
                "label_selector": "b=c",
            },
            "not both",
        ),
        ({"api_version": "v1", "kind": "Pod", "namespace": NS, "state": "phase"}, "needs phase"),
        (
            {"api_version": "v1", "kind": "Pod", "namespace": NS, "state": "condition"},
            "needs condition_type",
        ),
    ],
    ids=[
        "unknown-kind",
        "wrong-group",
        "needs-namespace",
        "cluster-scoped",
        "name-and-selector",
        "phase-missing",
        "condition-missing",
    ],
)
def test_inconsistent_params_are_refused_at_load(raw: dict[str, Any], message: str) -> None:
    problems = params.check(waiting.WaitForParams, {"state": "present", **raw}, path="params")

    assert len(problems) == 1
    assert message in problems[0].message


@pytest.mark.parametrize(
    "raw",
    [
        *({"api_version": "v1", "kind": "Pod", "namespace": n} for n in OUT_OF_SCOPE),
        {"api_version": "v1", "kind": "Pod", "namespace": NS, "name": "../x"},
        {"api_version": "v1", "kind": "Namespace", "name": "kube-system"},
        {"api_version": "v1", "kind": "Pod", "namespace": NS, "label_selector": "a=b\nc"},
        {"api_version": "v1", "kind": "Pod", "namespace": NS, "label_selector": "a='b'"},
    ],
    ids=[
        "kube-system",
        "traversal",
        "long",
        "name-traversal",
        "namespace-name",
        "selector-newline",
        "selector-quote",
    ],
)
async def test_out_of_scope_is_refused_without_a_call(
    emulator: kubeapi.KubeEmulator, context: ActionContext, api_log: ApiLog, raw: dict[str, Any]
) -> None:
    with nothing_sent(emulator, api_log), pytest.raises(PermanentStepError, match=r"^scope: "):
        await ACTION.run(wait_for(state="present", **raw), context)


@pytest.mark.parametrize(
    ("status", "error"), [(503, TemporaryStepError), (403, PermanentStepError)], ids=str
)
async def test_api_failures(
    emulator: kubeapi.KubeEmulator,
    context: ActionContext,
    api_log: ApiLog,
    status: int,
    error: type[Exception],
) -> None:
    emulator.seed([objects.namespace(NS)])
    api_log.fail("GET", "/pods", status)

    with pytest.raises(error, match=rf"read Pod -l app=web in store-a: .*HTTP {status}"):
        await ACTION.run(
            wait_for(
                api_version="v1",
                kind="Pod",
                namespace=NS,
                label_selector="app=web",
                state="present",
            ),
            context,
        )
