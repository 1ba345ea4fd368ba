"""playbooks/store-provisioning-stuck.yaml: runbook scenario 1, one test per branch."""

from __future__ import annotations

import time
from typing import Any

import pytest

from remediator.simulation import kubeapi
from remediator.simulation.provisioner import Store
from tests.engine.kube import objects
from tests.playbooks_e2e.conftest import (
    Obj,
    Rig,
    acted,
    audit_kinds,
    branch,
    complete_rollout,
    failed_job,
    outcomes,
    requests,
    step,
    store_alert,
    store_namespace,
    texts,
    verification,
    waiting_pod,
)

pytestmark = pytest.mark.e2e

ALL_BRANCH_STEPS = [
    "provision_again",
    "confirm_storage",
    "confirm_images",
    "clear_helm",
    "reinstall",
    "delete_init_job",
    "mark_running",
    "delete_namespace",
    "wait_namespace_gone",
    "reprovision",
]


def stuck(store_id: str) -> dict[str, Any]:
    return store_alert("StoreProvisioningStuck", store_id, severity="warning")


def provisioned_by_the_platform(rig: Rig, store_id: str) -> None:
    """The provisioner's reprovision: Helm installs the store afresh and it becomes running."""

    async def reprovisioned(store: Store) -> None:
        if rig.get("Namespace", store.namespace) is None:
            rig.seed(store_namespace(store_id))
        store.status = "running"

    rig.twin.on_reprovision = reprovisioned


def skipped_except(*taken: str) -> dict[str, str]:
    return {name: "skipped" for name in ALL_BRANCH_STEPS if name not in taken}


def took(*taken: str) -> dict[str, str]:
    """Every step's outcome when exactly the branch steps ``taken`` ran, and succeeded."""
    ran = dict.fromkeys(["diagnose", "decide", *taken], "succeeded")
    return ran | skipped_except(*taken)


async def test_a_failed_init_job_is_deleted_and_the_provisioner_retries_it(rig: Rig) -> None:
    broken = store_namespace("p1")
    broken["init_job"] = failed_job("p1-init", "store-p1")
    broken["app"] = objects.deployment("p1-app", "store-p1", available=0)
    rig.seed(broken)
    old_job = rig.get("Job", "p1-init", "store-p1")
    assert old_job is not None
    rig.seed([objects.pod("p1-init-x7k2q", "store-p1", owner=old_job, phase="Failed")])
    rig.twin.add_store("p1", status="provisioning")

    async def provisioner_retries(event: kubeapi.WatchEvent) -> None:
        # The provisioner notices its Job is gone and runs it again; the store comes up.
        if event.type == "DELETED" and event.object["metadata"]["name"] == "p1-init":
            rig.emulator.create(objects.job("p1-init", "store-p1"))
            complete_rollout(rig.emulator, "Deployment", "store-p1", "p1-app")
            rig.twin.set_status("p1", "running")

    rig.react("batch/v1", "Job", provisioner_retries)

    detail = await rig.wait_run(await rig.fire(stuck("p1")))

    assert detail["status"] == "succeeded", detail["error"]
    assert branch(detail) == "retry_init_job"
    assert acted(detail) == ["diagnose", "decide", "delete_init_job"]
    assert outcomes(detail) == took("delete_init_job")
    deleted = step(detail, "delete_init_job")
    assert deleted["params"] == {
        "namespace": "store-p1",
        "kind": "Job",
        "name": "p1-init",
        "propagation": "Background",
    }
    assert deleted["output"]["deleted"] is True
    checks = verification(detail)["details"]["checks"]
    assert [(c["check"], c["holds"]) for c in checks] == [
        ("app_ready", True),
        ("db_ready", True),
        ("store_running", True),
    ]
    # The Job is a new one (the retry), and Background propagation took the old one's pod.
    new_job = rig.get("Job", "p1-init", "store-p1")
    assert new_job is not None
    assert new_job["metadata"]["uid"] != old_job["metadata"]["uid"]
    assert rig.get("Pod", "p1-init-x7k2q", "store-p1") is None
    assert (
        await rig.kubectl(
            "get", "job", "p1-init", "-n", "store-p1", "-o", "jsonpath={.status.succeeded}"
        )
        == "1"
    )
    # Only verification talked to the provisioner; nothing was escalated.
    assert requests(rig) == [("GET", "/api/v1/stores/p1")]
    assert rig.receiver.bodies == []
    assert audit_kinds(detail)[-1] == "run_finished"


@pytest.mark.parametrize(
    ("part", "broken", "expected_branch", "confirm", "error", "flag"),
    [
        (
            "pvc",
            objects.pvc("data-p2-db-0", "store-p2", phase="Pending"),
            "escalate_storage",
            "confirm_storage",
            "PersistentVolumeClaim (all) in store-p2 not in phase Bound",
            "pvc_pending",
        ),
        (
            "app_pod",
            waiting_pod("p2-app-7d9f-abcde", "store-p2", app="p2-app", reason="ImagePullBackOff"),
            "escalate_image",
            "confirm_images",
            "Pod (all) in store-p2 not Ready=True",
            "image_pull_error",
        ),
    ],
    ids=["pvc-pending", "image-pull-error"],
)
async def test_storage_and_image_problems_escalate_and_change_nothing(
    rig: Rig,
    part: str,
    broken: Obj,
    expected_branch: str,
    confirm: str,
    error: str,
    flag: str,
) -> None:
    seeded = store_namespace("p2")
    seeded[part] = broken
    seeded["app"] = objects.deployment("p2-app", "store-p2", available=0)
    rig.seed(seeded)
    rig.twin.add_store("p2", status="provisioning")
    version = rig.emulator.resource_version

    detail = await rig.wait_run(await rig.fire(stuck("p2")))

    assert detail["status"] == "failed"
    assert branch(detail) == expected_branch
    assert acted(detail) == ["diagnose", "decide", confirm]
    assert step(detail, confirm)["outcome"] == "failed"
    assert error in step(detail, confirm)["error"]
    assert step(detail, "diagnose")["output"]["flags"][flag] is True
    assert outcomes(detail, "on_failure") == {"escalate": "succeeded"}
    assert "verification_finished" not in audit_kinds(detail)
    # Nothing changed: no write reached the cluster or the provisioner.
    assert rig.emulator.resource_version == version
    assert requests(rig) == []
    (message,) = texts(rig.receiver)
    assert "Store p2 stuck provisioning, remediation failed" in message
    assert f"branch {expected_branch}" in message
    assert f"problems: {flag}" in message


async def test_healthy_resources_with_a_wrong_status_are_marked_running(rig: Rig) -> None:
    rig.seed(store_namespace("p3"))
    rig.twin.add_store("p3", status="provisioning")
    version = rig.emulator.resource_version

    detail = await rig.wait_run(await rig.fire(stuck("p3")))

    assert detail["status"] == "succeeded", detail["error"]
    assert branch(detail) == "mark_running"
    assert acted(detail) == ["diagnose", "decide", "mark_running"]
    assert step(detail, "mark_running")["output"]["store"]["status"] == "running"
    assert rig.twin.stores["p3"].status == "running"
    patch, read = [r for r in rig.twin.requests if r.path.startswith("/api/v1/stores/")]
    assert (patch.method, patch.path, patch.body) == (
        "PATCH",
        "/api/v1/stores/p3",
        {"status": "running"},
    )
    assert (read.method, read.path) == ("GET", "/api/v1/stores/p3")
    # Only the provisioner's record was wrong: the cluster is untouched.
    assert rig.emulator.resource_version == version
    assert verification(detail)["outcome"] == "passed"
    assert rig.receiver.bodies == []


async def test_a_stale_pending_helm_record_is_deleted_and_the_store_reinstalled(rig: Rig) -> None:
    seeded = store_namespace("p4")
    stale = int(time.time()) - 3600
    seeded["pending_record"] = objects.release_record(
        "store-p4", "store-p4", revision=2, status="pending-upgrade", modified_at=stale
    )
    rig.seed(seeded)
    pending = rig.get("Secret", "sh.helm.release.v1.store-p4.v2", "store-p4")
    assert pending is not None
    rig.twin.add_store("p4", status="provisioning")

    async def helm_upgrade_succeeds(store: Store) -> None:
        rig.seed([objects.release_record("store-p4", "store-p4", revision=2, status="deployed")])
        store.status = "running"

    rig.twin.on_reprovision = helm_upgrade_succeeds

    detail = await rig.wait_run(await rig.fire(stuck("p4")))

    assert detail["status"] == "succeeded", detail["error"]
    assert branch(detail) == "clear_helm"
    assert acted(detail) == ["diagnose", "decide", "clear_helm", "reinstall"]
    cleared = step(detail, "clear_helm")["output"]
    assert (cleared["cleared"], cleared["status"], cleared["revision"]) == (
        True,
        "pending-upgrade",
        2,
    )
    assert requests(rig) == [
        ("POST", "/api/v1/stores/p4/reprovision"),
        ("GET", "/api/v1/stores/p4"),
    ]
    record = rig.get("Secret", "sh.helm.release.v1.store-p4.v2", "store-p4")
    assert record is not None
    # The pending record was deleted; the upgrade the reprovision ran wrote a deployed one.
    assert record["metadata"]["uid"] != pending["metadata"]["uid"]
    assert record["metadata"]["labels"]["status"] == "deployed"
    assert rig.receiver.bodies == []


async def test_a_namespace_that_was_never_created_is_provisioned_again(rig: Rig) -> None:
    rig.twin.add_store("p5", status="provisioning")
    provisioned_by_the_platform(rig, "p5")

    detail = await rig.wait_run(await rig.fire(stuck("p5")))

    assert detail["status"] == "succeeded", detail["error"]
    assert branch(detail) == "provision_again"
    assert acted(detail) == ["diagnose", "decide", "provision_again"]
    assert "approval_requested" not in audit_kinds(detail)
    assert requests(rig) == [
        ("POST", "/api/v1/stores/p5/reprovision"),
        ("GET", "/api/v1/stores/p5"),
    ]
    assert await rig.kubectl("get", "namespace", "store-p5", "-o", "name") == "namespace/store-p5\n"


def database_never_ready(store_id: str) -> dict[str, Obj]:
    """No runbook row applies: the database never became ready, nothing says why."""
    ns, db = f"store-{store_id}", f"{store_id}-db"
    seeded = store_namespace(store_id)
    seeded["db"] = objects.statefulset(db, ns, ready=0)
    seeded["db_pod"] = objects.pod(
        f"{db}-0",
        ns,
        labels={"app": db},
        containers=("db",),
        statuses=[objects.container_status("db", ready=False)],
    )
    seeded["app"] = objects.deployment(f"{store_id}-app", ns, available=0)
    return seeded


async def test_recreating_the_store_waits_for_approval_then_wipes_and_reprovisions(
    rig: Rig,
) -> None:
    rig.seed(database_never_ready("p6"))
    old = rig.get("Namespace", "store-p6")
    assert old is not None
    rig.twin.add_store("p6", status="provisioning")
    provisioned_by_the_platform(rig, "p6")
    version = rig.emulator.resource_version

    run_id = await rig.fire(stuck("p6"))
    waiting = await rig.wait_run(run_id, "awaiting_approval")

    # Nothing destructive before an operator says so.
    assert rig.emulator.resource_version == version
    assert requests(rig) == []
    safety = await rig.api("GET", "/api/v1/safety")
    assert safety["awaiting_approval"] == [run_id]
    (requested,) = [a for a in waiting["audit"] if a["kind"] == "approval_requested"]
    assert requested["details"]["step"] == "delete_namespace"
    assert requested["details"]["params"] == {"name": "store-p6"}

    await rig.approve(run_id, approved=True, comment="wipe it")
    detail = await rig.wait_run(run_id)

    assert detail["status"] == "succeeded", detail["error"]
    assert branch(detail) == "recreate"
    assert acted(detail) == [
        "diagnose",
        "decide",
        "delete_namespace",
        "wait_namespace_gone",
        "reprovision",
    ]
    (decided,) = [a for a in detail["audit"] if a["kind"] == "approval_decided"]
    assert (decided["outcome"], decided["details"]["by"]) == ("approved", "alice")
    assert step(detail, "delete_namespace")["output"]["deleted"] is True
    assert step(detail, "wait_namespace_gone")["output"]["state"] == "absent"
    assert requests(rig) == [
        ("POST", "/api/v1/stores/p6/reprovision"),
        ("GET", "/api/v1/stores/p6"),
    ]
    # A new namespace: the old one was deleted, the reprovision created it again.
    uid = await rig.kubectl("get", "namespace", "store-p6", "-o", "jsonpath={.metadata.uid}")
    assert uid != old["metadata"]["uid"]
    assert rig.receiver.bodies == []


async def test_a_rejected_recreate_changes_nothing(rig: Rig) -> None:
    rig.seed(database_never_ready("p7"))
    rig.twin.add_store("p7", status="provisioning")
    version = rig.emulator.resource_version

    run_id = await rig.fire(stuck("p7"))
    await rig.wait_run(run_id, "awaiting_approval")
    await rig.approve(run_id, approved=False, comment="customer data, restore instead")
    detail = await rig.wait_run(run_id)

    assert detail["status"] == "rejected"
    assert "rejected by alice: customer data, restore instead" in detail["error"]
    assert outcomes(detail) == {"diagnose": "succeeded", "decide": "succeeded"} | skipped_except(
        "delete_namespace", "wait_namespace_gone", "reprovision"
    )
    (decided,) = [a for a in detail["audit"] if a["kind"] == "approval_decided"]
    assert decided["outcome"] == "rejected"
    assert rig.emulator.resource_version == version
    assert rig.get("Namespace", "store-p7") is not None
    assert requests(rig) == []
    # An operator decided: no escalation on top.
    assert rig.receiver.bodies == []
