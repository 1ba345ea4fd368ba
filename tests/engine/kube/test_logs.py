"""``k8s.logs_tail``: which pod and container, how many lines, and nothing secret in them."""

from __future__ import annotations

from typing import Any

import pytest

from remediator.core import params
from remediator.core.errors import PermanentStepError, TemporaryStepError
from remediator.engine.actions.kube import logs
from remediator.engine.actions.registry import ActionContext
from remediator.simulation import kubeapi

from . import objects
from .conftest import OUT_OF_SCOPE, SECRET, ApiLog, nothing_sent

NS = "store-a"
ACTION = logs.LogsTailAction()


@pytest.fixture
def store(emulator: kubeapi.KubeEmulator) -> kubeapi.KubeEmulator:
    emulator.seed(
        [
            objects.namespace(NS),
            objects.pod("app-1", NS, labels={"app": "shop"}, phase="Pending"),
            objects.pod("app-2", NS, labels={"app": "shop"}, containers=("php", "nginx")),
            objects.pod(
                "db-0",
                NS,
                labels={"app": "db"},
                containers=("mysql", "exporter"),
                annotations={logs.DEFAULT_CONTAINER: "mysql"},
            ),
        ]
    )
    emulator.set_pod_log(NS, "app-1", "app", "pending pod\n")
    lines = "".join(f"line {i}\n" for i in range(1, 101))
    emulator.set_pod_log(NS, "app-2", "php", lines)
    emulator.set_pod_log(NS, "app-2", "nginx", "GET / 200\n")
    emulator.set_pod_log(NS, "app-2", "php", "Fatal error: out of memory\n", previous=True)
    emulator.set_pod_log(NS, "db-0", "mysql", "ready for connections\n")
    return emulator


def tail(**raw: Any) -> Any:
    return params.build(logs.LogsTailParams, {"namespace": NS, **raw})


@pytest.mark.usefixtures("store")
async def test_tail_of_a_named_pod_defaults_to_its_first_container(
    context: ActionContext, api_log: ApiLog
) -> None:
    output = await ACTION.run(tail(pod="app-2", lines=3), context)

    assert output == {
        "pod": "app-2",
        "container": "php",
        "previous": False,
        "lines": ["line 98", "line 99", "line 100"],
    }
    (request,) = api_log.calls("GET", "/log")
    assert request.query["tailLines"] == ["3"]
    assert request.query["limitBytes"] == [str(logs.MAX_BYTES)]


@pytest.mark.usefixtures("store")
async def test_container_choice(context: ActionContext) -> None:
    annotated = await ACTION.run(tail(pod="db-0"), context)
    explicit = await ACTION.run(tail(pod="app-2", container="nginx"), context)

    assert (annotated["container"], annotated["lines"]) == ("mysql", ["ready for connections"])
    assert (explicit["container"], explicit["lines"]) == ("nginx", ["GET / 200"])


@pytest.mark.usefixtures("store")
async def test_label_selector_prefers_a_running_pod(context: ActionContext) -> None:
    output = await ACTION.run(tail(label_selector="app=shop", lines=1), context)

    assert (output["pod"], output["lines"]) == ("app-2", ["line 100"])


@pytest.mark.usefixtures("store")
async def test_previous_instance(context: ActionContext, api_log: ApiLog) -> None:
    output = await ACTION.run(tail(pod="app-2", previous=True), context)

    assert output["lines"] == ["Fatal error: out of memory"]
    assert api_log.calls("GET", "/log")[0].query["previous"] == ["true"]


async def test_secrets_are_redacted_and_lines_bounded(
    emulator: kubeapi.KubeEmulator, context: ActionContext
) -> None:
    emulator.seed([objects.namespace(NS), objects.pod("web", NS)])
    emulator.set_pod_log(
        NS,
        "web",
        "app",
        "\n".join(
            [
                f"connecting with {SECRET}",
                "DB_PASSWORD=hunter2 retrying",
                "Authorization: Bearer eyJhbGciOi.abc.def",
                '{"level": "info", "msg": "structured"}',
                "x" * 5000,
            ]
        ),
    )

    output = await ACTION.run(tail(pod="web"), context)

    text = "\n".join(output["lines"])
    assert SECRET not in text
    assert "hunter2" not in text
    assert "eyJhbGciOi" not in text
    assert output["lines"][3] == '{"level": "info", "msg": "structured"}'
    assert len(output["lines"][4]) == logs.MAX_LINE


@pytest.mark.usefixtures("store")
async def test_no_matching_pod(context: ActionContext) -> None:
    with pytest.raises(PermanentStepError, match=r"no pod in store-a matches 'app=none'"):
        await ACTION.run(tail(label_selector="app=none"), context)


@pytest.mark.usefixtures("store")
async def test_no_previous_instance_is_a_permanent_error(context: ActionContext) -> None:
    with pytest.raises(PermanentStepError, match=r"HTTP 400.*previous terminated container"):
        await ACTION.run(tail(pod="db-0", previous=True), context)


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"pod": "a", "lines": 0}, "1..500"),
        ({"pod": "a", "lines": 501}, "1..500"),
        ({}, "exactly one of pod and label_selector"),
        ({"pod": "a", "label_selector": "a=b"}, "exactly one"),
    ],
    ids=["zero-lines", "too-many-lines", "neither", "both"],
)
def test_params_are_checked(raw: dict[str, Any], message: str) -> None:
    with pytest.raises(PermanentStepError, match=message):
        tail(**raw)


@pytest.mark.parametrize(
    "raw",
    [
        *({"namespace": n, "pod": "a"} for n in OUT_OF_SCOPE),
        {"pod": "../x"},
        {"pod": "a", "container": "../x"},
        {"label_selector": "app=a;rm"},
    ],
    ids=["kube-system", "traversal", "long", "pod-traversal", "container", "selector"],
)
async def test_out_of_scope_is_refused_without_a_call(
    store: kubeapi.KubeEmulator, context: ActionContext, api_log: ApiLog, raw: dict[str, Any]
) -> None:
    with nothing_sent(store, api_log), pytest.raises(PermanentStepError, match=r"^scope: "):
        await ACTION.run(tail(**raw), context)


@pytest.mark.usefixtures("store")
@pytest.mark.parametrize(
    ("path", "status", "error"),
    [
        ("/pods/app-2/log", 503, TemporaryStepError),
        ("/pods/app-2/log", 403, PermanentStepError),
        ("/pods/gone", 404, PermanentStepError),
    ],
    ids=["log-503", "log-403", "pod-404"],
)
async def test_api_failures(
    context: ActionContext, api_log: ApiLog, path: str, status: int, error: type[Exception]
) -> None:
    api_log.fail("GET", path, status)
    pod = path.split("/")[2]

    with pytest.raises(error, match=rf"read logs in store-a: .*HTTP {status}"):
        await ACTION.run(tail(pod=pod), context)
