"""playbooks/store-deletion-stuck.yaml: runbook scenario 5, one test per branch."""

from __future__ import annotations

from typing import Any

import pytest

from remediator.simulation.provisioner import StoreStatus
from tests.engine.kube import objects
from tests.playbooks_e2e.conftest import (
    Rig,
    audit_kinds,
    branch,
    outcomes,
    requests,
    step,
    store_alert,
    store_namespace,
    texts,
    verification,
)

pytestmark = pytest.mark.e2e

BRANCH_STEPS = [
    "confirm_not_deleting",
    "confirm_terminating",
    "pvc_finalizers_0",
    "pvc_finalizers_1",
    "pvc_finalizers_2",
    "namespace_finalizers",
    "wait_namespace_gone",
    "confirm_deleted",
]
PROTECTION = "kubernetes.io/pvc-protection"
CLEANUP = "platform.example.com/cleanup"


def deletion_stuck(store_id: str) -> dict[str, Any]:
    return store_alert("StoreDeletionStuck", store_id, severity="warning")


def took(*taken: str) -> dict[str, str]:
    ran = dict.fromkeys(["store", "diagnose", "decide", *taken], "succeeded")
    return ran | {name: "skipped" for name in BRANCH_STEPS if name not in taken}


def seed_terminating(rig: Rig, store_id: str) -> None:
    """A store whose namespace deletion hangs: both PVCs keep pvc-protection, and the
    namespace carries a finalizer of the platform's that never got removed."""
    ns = f"store-{store_id}"
    seeded = store_namespace(store_id)
    seeded["namespace"] = objects.namespace(ns, finalizers=[CLEANUP])
    seeded["pvc"] = objects.pvc(f"data-{store_id}-db-0", ns, finalizers=[PROTECTION])
    seeded["uploads"] = objects.pvc(f"uploads-{store_id}", ns, finalizers=[PROTECTION])
    rig.seed(seeded)
    rig.emulator.delete("v1", "Namespace", ns)


async def test_a_terminating_namespace_is_unstuck_and_the_deletion_confirmed(rig: Rig) -> None:
    seed_terminating(rig, "x1")
    stuck = rig.get("Namespace", "store-x1")
    assert stuck is not None
    assert stuck["status"]["phase"] == "Terminating"
    assert sorted(
        p["metadata"]["name"] for p in rig.emulator.list("v1", "PersistentVolumeClaim", "store-x1")
    ) == [
        "data-x1-db-0",
        "uploads-x1",
    ]
    rig.twin.add_store("x1", status="deleting")

    detail = await rig.wait_run(await rig.fire(deletion_stuck("x1")))

    assert detail["status"] == "succeeded", detail["error"]
    assert branch(detail) == "unstick"
    assert outcomes(detail) == took(
        "pvc_finalizers_0",
        "pvc_finalizers_1",
        "namespace_finalizers",
        "wait_namespace_gone",
        "confirm_deleted",
    )
    assert [step(detail, f"pvc_finalizers_{i}")["output"]["removed"] for i in (0, 1)] == [
        [PROTECTION],
        [PROTECTION],
    ]
    assert step(detail, "namespace_finalizers")["output"]["removed"] == [CLEANUP]
    # No operator was asked: both sides already agreed the store is being deleted.
    assert "approval_requested" not in audit_kinds(detail)
    assert requests(rig) == [
        ("GET", "/api/v1/stores/x1"),
        ("DELETE", "/api/v1/stores/x1"),
        ("GET", "/api/v1/stores/x1"),
    ]
    assert "x1" not in rig.twin.stores
    assert verification(detail)["outcome"] == "passed"
    assert rig.emulator.list("v1", "PersistentVolumeClaim", "store-x1") == []
    assert "NotFound" in await rig.kubectl("get", "namespace", "store-x1", ok=False)
    assert rig.receiver.bodies == []


async def test_a_namespace_already_gone_only_finishes_the_provisioner_record(rig: Rig) -> None:
    rig.twin.add_store("x2", status="deleting")
    version = rig.emulator.resource_version

    detail = await rig.wait_run(await rig.fire(deletion_stuck("x2")))

    assert detail["status"] == "succeeded", detail["error"]
    assert branch(detail) == "finish_record"
    assert outcomes(detail) == took("confirm_deleted")
    assert step(detail, "confirm_deleted")["output"]["http_status"] == 200
    assert requests(rig) == [
        ("GET", "/api/v1/stores/x2"),
        ("DELETE", "/api/v1/stores/x2"),
        ("GET", "/api/v1/stores/x2"),
    ]
    assert rig.twin.stores == {}
    assert rig.emulator.resource_version == version
    assert rig.receiver.bodies == []


def seed_active(rig: Rig, store_id: str) -> None:
    rig.seed(store_namespace(store_id))


@pytest.mark.parametrize(
    ("seed", "status", "expected_branch", "confirm", "error"),
    [
        (
            seed_active,
            "deleting",
            "escalate_not_terminating",
            "confirm_terminating",
            "Namespace store-x3 not in phase Terminating after 1 polls",
        ),
        (
            seed_terminating,
            "running",
            "escalate_not_deleting",
            "confirm_not_deleting",
            "Namespace store-x3 not absent after 1 polls",
        ),
    ],
    ids=["namespace-active", "provisioner-not-deleting"],
)
async def test_a_deletion_not_agreed_on_by_both_sides_escalates_and_changes_nothing(
    rig: Rig, seed: Any, status: StoreStatus, expected_branch: str, confirm: str, error: str
) -> None:
    seed(rig, "x3")
    rig.twin.add_store("x3", status=status)
    version = rig.emulator.resource_version

    detail = await rig.wait_run(await rig.fire(deletion_stuck("x3")))

    assert detail["status"] == "failed"
    assert branch(detail) == expected_branch
    before = BRANCH_STEPS[: BRANCH_STEPS.index(confirm)]
    assert outcomes(detail) == {
        "store": "succeeded",
        "diagnose": "succeeded",
        "decide": "succeeded",
        **dict.fromkeys(before, "skipped"),
        confirm: "failed",
    }
    assert error in detail["error"]
    assert rig.emulator.resource_version == version
    assert requests(rig) == [("GET", "/api/v1/stores/x3")]
    assert rig.twin.stores["x3"].status == status
    (message,) = texts(rig.receiver)
    assert f"Store x3 stuck deleting, remediation failed (branch {expected_branch})" in message
