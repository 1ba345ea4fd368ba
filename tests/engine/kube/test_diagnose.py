"""``k8s.diagnose`` on a healthy store and on each broken state the runbook describes."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import aiohttp
import pytest

from remediator.adapters import kubernetes
from remediator.config import Settings
from remediator.core.errors import PermanentStepError, TemporaryStepError
from remediator.engine.actions.kube import diagnose
from remediator.engine.actions.registry import ActionContext, Resources
from remediator.simulation import kubeapi

from . import objects
from .conftest import (
    OUT_OF_SCOPE,
    SECRET,
    ApiLog,
    Kubectl,
    jsonable,
    make_context,
    nothing_sent,
    requires_kubectl,
    serve_recorded,
)

NS = "store-a"
APP, DB = f"{NS}-app", f"{NS}-db"
ACTION = diagnose.DiagnoseAction()
PROBLEMS = {
    "namespace_missing",
    "namespace_terminating",
    "image_pull_error",
    "crash_loop",
    "oom_killed",
    "config_error",
    "pvc_pending",
    "init_job_failed",
    "ingress_missing",
    "endpoints_missing",
    "certificate_not_ready",
    "helm_pending",
    "helm_failed",
    "secrets_missing",
}

Seed = list[objects.Obj]


async def run(namespace: str, context: ActionContext) -> dict[str, Any]:
    output = await ACTION.run(diagnose.DiagnoseParams(namespace=namespace), context)
    return dict(jsonable(output))


def raised(output: dict[str, Any]) -> set[str]:
    return {name for name, value in output["flags"].items() if value and name in PROBLEMS}


async def test_healthy_store(
    emulator: kubeapi.KubeEmulator, context: ActionContext, api_log: ApiLog
) -> None:
    emulator.seed(objects.healthy_store(NS))

    output = await run(NS, context)

    assert raised(output) == set()
    assert output["flags"]["app_ready"] is True
    assert output["flags"]["db_ready"] is True
    assert output["namespace_phase"] == "Active"
    assert output["helm"] == {"release": NS, "revision": 2, "status": "deployed"}
    assert output["deployments"] == [
        {"name": APP, "replicas": 1, "ready": 1, "available": 1, "updated": 1}
    ]
    assert output["jobs"] == [
        {
            "name": f"{NS}-init",
            "active": 0,
            "succeeded": 1,
            "failed": 0,
            "complete": True,
            "failed_out": False,
        }
    ]
    assert output["pvcs"] == [{"name": f"data-{DB}-0", "phase": "Bound"}]
    assert {s["name"]: s["ready_endpoints"] for s in output["services"]} == {APP: 1, DB: 1}
    assert output["ingresses"] == [
        {"name": APP, "hosts": [f"{NS}.stores.example.com"], "tls_secrets": [f"{APP}-tls"]}
    ]
    assert output["certificates"] == [{"name": f"{APP}-tls", "ready": True, "secret": f"{APP}-tls"}]
    assert output["missing_secrets"] == []
    pod = next(p for p in output["pods"] if p["name"] == f"{DB}-0")
    assert pod == {
        "name": f"{DB}-0",
        "phase": "Running",
        "ready": True,
        "restarts": 0,
        "waiting_reasons": [],
        "terminated_reasons": [],
        "init_waiting_reasons": [],
        "init_failed": False,
        "owner_kind": "",
        "owner_name": "",
    }
    assert output["summary"].startswith("2/2 pods ready; app ready; db ready; helm store-a v2")
    assert output["summary"].endswith("no problems found")
    assert api_log.writes() == []


def image_pull(seed: Seed) -> None:
    seed.append(
        objects.pod(
            "bad-pull", NS, statuses=[objects.container_status("app", waiting="ImagePullBackOff")]
        )
    )


def crash_loop(seed: Seed) -> None:
    status = objects.container_status("app", waiting="CrashLoopBackOff", restarts=7)
    seed.append(objects.pod("crashing", NS, statuses=[status]))


def oom(seed: Seed) -> None:
    status = objects.container_status("app", restarts=2, last_terminated="OOMKilled", exit_code=137)
    seed.append(objects.pod("oom", NS, statuses=[status]))


def config_error(seed: Seed) -> None:
    status = objects.container_status("app", waiting="CreateContainerConfigError")
    seed.append(objects.pod("misconfigured", NS, statuses=[status]))


def pvc_pending(seed: Seed) -> None:
    seed.append(objects.pvc("uploads", NS, phase="Pending"))


def failed_init_job(seed: Seed) -> None:
    seed.append(objects.job("store-a-init-2", NS, failed=3, succeeded=0, condition="Failed"))


def failed_init_container(seed: Seed) -> None:
    init = objects.container_status("wait-for-db", terminated="Error", exit_code=1)
    seed.append(objects.pod("init-stuck", NS, phase="Pending", init_statuses=[init]))


def no_ready_endpoints(seed: Seed) -> None:
    seed[:] = [o for o in seed if not (o["kind"] == "Endpoints" and o["metadata"]["name"] == APP)]
    seed.append(objects.endpoints(APP, NS, ready=0, not_ready=2))


def no_ingress(seed: Seed) -> None:
    seed[:] = [o for o in seed if o["kind"] != "Ingress"]


def certificate_not_ready(seed: Seed) -> None:
    seed[:] = [o for o in seed if o["kind"] != "Certificate"]
    seed.append(objects.certificate(f"{APP}-tls", NS, ready="False"))


def helm_pending(seed: Seed) -> None:
    seed.append(objects.release_record(NS, NS, revision=3, status="pending-upgrade"))


def helm_failed(seed: Seed) -> None:
    seed.append(objects.release_record(NS, NS, revision=3, status="failed"))


def secret_missing(seed: Seed) -> None:
    seed[:] = [o for o in seed if o["metadata"]["name"] != f"{DB}-credentials"]


BROKEN: list[tuple[Callable[[Seed], None], set[str]]] = [
    (image_pull, {"image_pull_error"}),
    (crash_loop, {"crash_loop"}),
    (oom, {"oom_killed"}),
    (config_error, {"config_error"}),
    (pvc_pending, {"pvc_pending"}),
    (failed_init_job, {"init_job_failed"}),
    (failed_init_container, {"init_job_failed"}),
    (no_ready_endpoints, {"endpoints_missing"}),
    (no_ingress, {"ingress_missing"}),
    (certificate_not_ready, {"certificate_not_ready"}),
    (helm_pending, {"helm_pending"}),
    (helm_failed, {"helm_failed"}),
    (secret_missing, {"secrets_missing"}),
]


@pytest.mark.parametrize(("breakage", "flags"), BROKEN, ids=[b.__name__ for b, _ in BROKEN])
async def test_each_broken_state_raises_exactly_its_flag(
    emulator: kubeapi.KubeEmulator,
    context: ActionContext,
    breakage: Callable[[Seed], None],
    flags: set[str],
) -> None:
    seed = objects.healthy_store(NS)
    breakage(seed)
    emulator.seed(seed)

    output = await run(NS, context)

    assert raised(output) == flags
    assert f"problems: {', '.join(sorted(flags))}" in output["summary"]


async def test_details_of_a_broken_store(
    emulator: kubeapi.KubeEmulator, context: ActionContext
) -> None:
    seed = objects.healthy_store(NS)
    for breakage in (crash_loop, oom, helm_pending, secret_missing, no_ready_endpoints):
        breakage(seed)
    seed.append(objects.deployment("worker", NS, replicas=2, available=1))
    emulator.seed(seed)

    output = await run(NS, context)

    crashing = next(p for p in output["pods"] if p["name"] == "crashing")
    assert crashing["waiting_reasons"] == ["CrashLoopBackOff"]
    assert crashing["restarts"] == 7
    assert crashing["ready"] is False
    assert next(p for p in output["pods"] if p["name"] == "oom")["terminated_reasons"] == [
        "OOMKilled"
    ]
    assert output["helm"] == {"release": NS, "revision": 3, "status": "pending-upgrade"}
    assert output["missing_secrets"] == [f"{DB}-credentials"]
    assert {
        s["name"]: (s["ready_endpoints"], s["not_ready_endpoints"]) for s in output["services"]
    } == {
        APP: (0, 2),
        DB: (1, 0),
    }
    assert output["flags"]["app_ready"] is False  # worker: 1 of 2 available
    assert output["flags"]["db_ready"] is True


async def test_pod_owner_and_init_reasons(
    emulator: kubeapi.KubeEmulator, context: ActionContext
) -> None:
    emulator.seed([objects.namespace(NS)])
    (job,) = emulator.seed([objects.job("init", NS, succeeded=0, condition=None)])
    init = objects.container_status("fetch", waiting="ErrImagePull")
    emulator.seed([objects.pod("init-x", NS, phase="Pending", owner=job, init_statuses=[init])])

    output = await run(NS, context)

    (pod,) = output["pods"]
    assert (pod["owner_kind"], pod["owner_name"]) == ("Job", "init")
    assert pod["init_waiting_reasons"] == ["ErrImagePull"]
    assert raised(output) == {"image_pull_error", "init_job_failed", "ingress_missing"}


async def test_events_are_the_latest_twenty_in_time_order(
    emulator: kubeapi.KubeEmulator, context: ActionContext
) -> None:
    seed = [objects.namespace(NS)]
    # Out of order, and both kinds of timestamp: lastTimestamp (core) and eventTime.
    for i in reversed(range(24)):
        stamp = f"2026-01-10T10:{i:02}:00Z"
        if i % 2:
            seed.append(objects.event(f"e{i}", NS, reason=f"R{i}", last=stamp))
        else:
            seed.append(objects.event(f"e{i}", NS, reason=f"R{i}", event_time=stamp[:-1] + ".5Z"))
    seed.append(
        objects.event(
            "leaky",
            NS,
            reason="Failed",
            last="2026-01-10T11:00:00Z",
            message=f"auth failed with password={SECRET}",
        )
    )
    emulator.seed(seed)

    output = await run(NS, context)

    events = output["events"]
    assert len(events) == diagnose.MAX_EVENTS
    assert [e["reason"] for e in events] == [f"R{i}" for i in range(5, 24)] + ["Failed"]
    assert events[0]["time"] == "2026-01-10T10:05:00Z"
    assert SECRET not in events[-1]["message"]
    assert output["totals"]["events"] == 25


async def test_output_is_bounded(emulator: kubeapi.KubeEmulator, context: ActionContext) -> None:
    emulator.seed([objects.namespace(NS)])
    emulator.seed(objects.pod(f"p{i:02}", NS) for i in range(diagnose.MAX_ITEMS + 10))

    output = await run(NS, context)

    assert len(output["pods"]) == diagnose.MAX_ITEMS
    assert output["totals"]["pods"] == diagnose.MAX_ITEMS + 10


async def test_a_namespace_stuck_terminating(
    emulator: kubeapi.KubeEmulator, context: ActionContext
) -> None:
    seed = objects.healthy_store(NS)
    seed.append(objects.pvc("held", NS, finalizers=["kubernetes.io/pvc-protection"]))
    emulator.seed(seed)
    emulator.delete("v1", "Namespace", NS)

    output = await run(NS, context)

    assert output["namespace_phase"] == "Terminating"
    assert output["flags"]["namespace_terminating"] is True
    assert output["totals"]["pods"] == 0
    assert output["pvcs"] == [{"name": "held", "phase": "Bound"}]


async def test_missing_namespace_is_a_flag_not_an_error(context: ActionContext) -> None:
    output = await run("store-gone", context)

    assert output["flags"]["namespace_missing"] is True
    assert output["namespace_phase"] is None
    assert output["helm"] is None


async def test_without_cert_manager_installed(
    api_log: ApiLog, http_session: aiohttp.ClientSession
) -> None:
    """A cluster without the Certificate CRD answers 404 for the type: no certificates."""
    no_crd = [r for r in kubeapi.DEFAULT_RESOURCES if r.kind != "Certificate"]
    emulator = kubeapi.KubeEmulator(resources=no_crd)
    emulator.seed(o for o in objects.healthy_store(NS) if o["kind"] != "Certificate")
    async with (
        serve_recorded(emulator, api_log) as url,
        kubernetes.KubeClient.from_url(url) as kube,
    ):
        resources = Resources(settings=Settings(), http=http_session, kube=kube)
        output = await run(NS, make_context(resources))

    assert output["certificates"] == []
    assert raised(output) == set()
    assert api_log.calls("GET", "/certificates")


@pytest.mark.parametrize("namespace", OUT_OF_SCOPE, ids=["kube-system", "traversal", "long"])
async def test_out_of_scope_namespace_is_refused_without_a_call(
    emulator: kubeapi.KubeEmulator, context: ActionContext, api_log: ApiLog, namespace: str
) -> None:
    with nothing_sent(emulator, api_log), pytest.raises(PermanentStepError, match=r"^scope: "):
        await run(namespace, context)


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
    emulator.seed(objects.healthy_store(NS))
    api_log.fail("GET", "/jobs", status)

    with pytest.raises(error, match=rf"diagnose store-a: GET .*/jobs: HTTP {status}"):
        await run(NS, context)


@requires_kubectl
async def test_counts_agree_with_kubectl(
    emulator: kubeapi.KubeEmulator, context: ActionContext, kubectl: Kubectl
) -> None:
    seed = objects.healthy_store(NS)
    crash_loop(seed)
    emulator.seed(seed)

    output = await run(NS, context)
    names = (await kubectl("get", "pods", "-n", NS, "-o", "name")).split()

    assert sorted(f"pod/{p['name']}" for p in output["pods"]) == sorted(names)


def test_referenced_secrets_skip_optional_ones() -> None:
    pod = objects.pod("p", NS, env_secrets=["a"], volume_secrets=["b"])
    pod["spec"]["containers"][0]["envFrom"] = [
        {"secretRef": {"name": "c"}},
        {"secretRef": {"name": "d", "optional": True}},
    ]
    pod["spec"]["volumes"] += [
        {"name": "p", "projected": {"sources": [{"secret": {"name": "e"}}]}},
        {"name": "o", "secret": {"secretName": "f", "optional": True}},
    ]

    assert diagnose.referenced_secrets([pod]) == ["a", "b", "c", "e"]
