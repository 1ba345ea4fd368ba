"""playbooks/store-down.yaml: runbook scenario 2, one test per branch, verified through a real
Prometheus. Its storm path is in test_ingress_controller_restart.py."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from remediator.simulation import kubeapi
from remediator.simulation.provisioner import Store
from tests.engine.kube import objects
from tests.playbooks_e2e.conftest import (
    Obj,
    Rig,
    StoreProbe,
    branch,
    open_rig,
    outcomes,
    requests,
    restarted_at,
    step,
    store_alert,
    store_namespace,
    texts,
    verification,
)

pytestmark = pytest.mark.e2e

BRANCH_STEPS = [
    "confirm_namespace",
    "reprovision",
    "restart_app",
    "wait_app",
    "confirm_database",
    "delete_certificate",
    "delete_tls_keypair",
    "confirm_still_down",
]


@pytest.fixture
async def rig(tmp_path: Path, probe: StoreProbe) -> AsyncIterator[Rig]:
    """The rig with Prometheus, which the playbook's store_up check queries."""
    async with open_rig(tmp_path, prometheus_url=probe.stack.url) as opened:
        yield opened


def down(store_id: str) -> dict[str, Any]:
    return store_alert("StoreDown", store_id, severity="critical")


def took(*taken: str) -> dict[str, str]:
    ran = dict.fromkeys(["diagnose", "decide", *taken], "succeeded")
    return ran | {name: "skipped" for name in BRANCH_STEPS if name not in taken}


def checks(detail: dict[str, Any]) -> dict[str, bool]:
    return {c["check"]: c["holds"] for c in verification(detail)["details"]["checks"]}


async def test_an_app_without_ready_endpoints_is_restarted(rig: Rig, probe: StoreProbe) -> None:
    broken = store_namespace("d1")
    broken["app_endpoints"] = objects.endpoints("d1-app", "store-d1", ready=0, not_ready=1)
    rig.seed(broken)
    probe.set("d1", 0)
    database = rig.get("StatefulSet", "d1-db", "store-d1")
    assert database is not None

    async def new_pods_serve(deployment: Obj) -> None:
        if deployment["metadata"]["name"] == "d1-app":
            rig.emulator.update(objects.endpoints("d1-app", "store-d1"))
            await probe.up("d1")

    rig.roll_out_restarts(before=new_pods_serve)

    detail = await rig.wait_run(await rig.fire(down("d1")))

    assert detail["status"] == "succeeded", detail["error"]
    assert branch(detail) == "restart_app"
    assert outcomes(detail) == took("restart_app", "wait_app")
    assert step(detail, "wait_app")["output"]["done"] is True
    assert checks(detail) == {"ingress_present": True, "certificate_ready": True, "store_up": True}
    assert verification(detail)["details"]["rounds"] == 1
    stamp = restarted_at(rig.get("Deployment", "d1-app", "store-d1"))
    assert stamp == step(detail, "restart_app")["output"]["restarted_at"]
    jsonpath = (
        "jsonpath={.spec.template.metadata.annotations.kubectl\\.kubernetes\\.io/restartedAt}"
    )
    assert (
        await rig.kubectl("get", "deployment", "d1-app", "-n", "store-d1", "-o", jsonpath) == stamp
    )
    # The database was ready and is left alone; nobody else was called or told.
    after = rig.get("StatefulSet", "d1-db", "store-d1")
    assert after is not None
    assert after["metadata"]["resourceVersion"] == database["metadata"]["resourceVersion"]
    assert requests(rig) == []
    assert rig.receiver.bodies == []


async def test_a_missing_ingress_is_recreated_by_reprovisioning(
    rig: Rig, probe: StoreProbe
) -> None:
    broken = store_namespace("d2")
    ingress = broken.pop("ingress")
    rig.seed(broken)
    probe.set("d2", 0)
    rig.twin.add_store("d2", status="running")

    async def helm_upgrade_recreates_the_ingress(store: Store) -> None:
        rig.seed([ingress])
        await probe.up("d2")
        store.status = "running"

    rig.twin.on_reprovision = helm_upgrade_recreates_the_ingress

    detail = await rig.wait_run(await rig.fire(down("d2")))

    assert detail["status"] == "succeeded", detail["error"]
    assert branch(detail) == "recreate_ingress"
    assert outcomes(detail) == took("reprovision")
    assert step(detail, "diagnose")["output"]["flags"]["ingress_missing"] is True
    assert requests(rig) == [("POST", "/api/v1/stores/d2/reprovision")]
    assert checks(detail) == {"ingress_present": True, "certificate_ready": True, "store_up": True}
    listed = await rig.kubectl("get", "ingress", "-n", "store-d2", "-o", "name")
    assert listed == "ingress.networking.k8s.io/d2-app\n"
    assert rig.receiver.bodies == []


async def test_a_certificate_that_is_not_ready_is_reissued(rig: Rig, probe: StoreProbe) -> None:
    broken = store_namespace("d3")
    broken["certificate"] = objects.certificate("d3-app-tls", "store-d3", ready="False")
    rig.seed(broken)
    probe.set("d3", 0)
    old_secret = rig.get("Secret", "d3-app-tls", "store-d3")
    assert old_secret is not None

    async def cert_manager(event: kubeapi.WatchEvent) -> None:
        # ingress-shim recreates the Certificate from the Ingress, the issuer writes the Secret:
        # once both are gone, a fresh, ready pair appears.
        gone = event.type == "DELETED" and event.object["metadata"]["name"] == "d3-app-tls"
        present = [rig.get(kind, "d3-app-tls", "store-d3") for kind in ("Certificate", "Secret")]
        if gone and present == [None, None]:
            await probe.up("d3")
            rig.seed(
                [
                    objects.secret(
                        "d3-app-tls", "store-d3", data={"tls.crt": "new", "tls.key": "k"}
                    ),
                    objects.certificate("d3-app-tls", "store-d3"),
                ]
            )

    rig.react("cert-manager.io/v1", "Certificate", cert_manager)
    rig.react("v1", "Secret", cert_manager)

    detail = await rig.wait_run(await rig.fire(down("d3")))

    assert detail["status"] == "succeeded", detail["error"]
    assert branch(detail) == "renew_certificate"
    assert outcomes(detail) == took("delete_certificate", "delete_tls_keypair")
    assert step(detail, "delete_certificate")["params"]["name"] == "d3-app-tls"
    assert [
        step(detail, s)["output"]["deleted"] for s in ("delete_certificate", "delete_tls_keypair")
    ] == [True, True]
    assert checks(detail) == {"ingress_present": True, "certificate_ready": True, "store_up": True}
    secret = rig.get("Secret", "d3-app-tls", "store-d3")
    assert secret is not None
    assert secret["metadata"]["uid"] != old_secret["metadata"]["uid"]
    ready = await rig.kubectl(
        "get",
        "certificate",
        "d3-app-tls",
        "-n",
        "store-d3",
        "-o",
        "jsonpath={.status.conditions[?(@.type=='Ready')].status}",
    )
    assert ready == "True"
    assert rig.receiver.bodies == []


def assert_escalated_only(rig: Rig, detail: dict[str, Any], version: int, confirm: str) -> str:
    """The run changed nothing and sent exactly one escalation; its text."""
    assert detail["status"] == "failed"
    # The run stopped at the failed re-check; the branches before it were skipped.
    before = BRANCH_STEPS[: BRANCH_STEPS.index(confirm)]
    assert outcomes(detail) == {
        "diagnose": "succeeded",
        "decide": "succeeded",
        **dict.fromkeys(before, "skipped"),
        confirm: "failed",
    }
    assert outcomes(detail, "on_failure") == {"escalate": "succeeded"}
    assert "verification_finished" not in [a["kind"] for a in detail["audit"]]
    assert rig.emulator.resource_version == version
    assert requests(rig) == []
    (message,) = texts(rig.receiver)
    assert rig.receiver.bodies[0]["attachments"][0]["color"] == "danger"
    return message


async def test_a_database_that_is_down_is_left_to_its_own_playbook(
    rig: Rig, probe: StoreProbe
) -> None:
    broken = store_namespace("d4")
    broken["app_endpoints"] = objects.endpoints("d4-app", "store-d4", ready=0, not_ready=1)
    broken["db"] = objects.statefulset("d4-db", "store-d4", ready=0)
    rig.seed(broken)
    probe.set("d4", 0)
    version = rig.emulator.resource_version

    detail = await rig.wait_run(await rig.fire(down("d4")))

    assert branch(detail) == "escalate_database"
    message = assert_escalated_only(rig, detail, version, "confirm_database")
    assert "rollout of StatefulSet store-d4/d4-db not complete after 1 polls" in detail["error"]
    assert "Store d4 is down, remediation failed (branch escalate_database)" in message
    assert "db not ready" in message


async def test_an_outage_with_no_cause_in_the_namespace_escalates(
    rig: Rig, probe: StoreProbe
) -> None:
    rig.seed(store_namespace("d5"))
    probe.set("d5", 0)
    await probe.seen("d5", 0)
    version = rig.emulator.resource_version

    detail = await rig.wait_run(await rig.fire(down("d5")))

    assert branch(detail) == "escalate_unknown"
    message = assert_escalated_only(rig, detail, version, "confirm_still_down")
    assert "condition 'non_empty' not met after 1 polls" in detail["error"]
    assert "(branch escalate_unknown)" in message
    assert "no problems found" in message


async def test_a_missing_namespace_escalates(rig: Rig, probe: StoreProbe) -> None:
    probe.set("d6", 0)
    rig.twin.add_store("d6", status="running")
    version = rig.emulator.resource_version

    detail = await rig.wait_run(await rig.fire(down("d6")))

    assert branch(detail) == "escalate_namespace_missing"
    message = assert_escalated_only(rig, detail, version, "confirm_namespace")
    assert "Namespace store-d6 not present after 1 polls" in detail["error"]
    assert "(branch escalate_namespace_missing)" in message
    assert "namespace_missing" in message
    assert "NotFound" in await rig.kubectl("get", "namespace", "store-d6", ok=False)
