"""playbooks/store-database-down.yaml: runbook scenario 3, one test per branch."""

from __future__ import annotations

from typing import Any

import pytest

from tests.engine.kube import objects
from tests.playbooks_e2e.conftest import (
    Obj,
    Rig,
    branch,
    outcomes,
    requests,
    restarted_at,
    step,
    store_alert,
    store_namespace,
    texts,
    verification,
    waiting_pod,
)

pytestmark = pytest.mark.e2e

BRANCH_STEPS = [
    "confirm_login",
    "confirm_storage",
    "restart_database",
    "wait_database",
    "restart_app",
    "wait_app",
]
JSONPATH_RESTARTED = (
    "jsonpath={.spec.template.metadata.annotations.kubectl\\.kubernetes\\.io/restartedAt}"
)


def db_down(store_id: str) -> dict[str, Any]:
    return store_alert("StoreDatabaseDown", store_id, severity="critical", component="db")


def took(*taken: str) -> dict[str, str]:
    ran = dict.fromkeys(["diagnose", "decide", *taken], "succeeded")
    return ran | {name: "skipped" for name in BRANCH_STEPS if name not in taken}


def checks(detail: dict[str, Any]) -> dict[str, bool]:
    return {c["check"]: c["holds"] for c in verification(detail)["details"]["checks"]}


def database_not_ready(store_id: str, *, reason: str | None = None) -> dict[str, Obj]:
    ns, db = f"store-{store_id}", f"{store_id}-db"
    seeded = store_namespace(store_id)
    seeded["db"] = objects.statefulset(db, ns, ready=0)
    status = objects.container_status("db", ready=False, waiting=reason, restarts=3)
    seeded["db_pod"] = objects.pod(
        f"{db}-0",
        ns,
        labels={"app": db},
        containers=("db",),
        statuses=[status],
        env_secrets=[f"{db}-credentials"],
    )
    return seeded


async def test_a_database_that_is_not_ready_is_restarted(rig: Rig) -> None:
    rig.seed(database_not_ready("b1"))
    app = rig.get("Deployment", "b1-app", "store-b1")
    assert app is not None
    rig.roll_out_restarts()

    detail = await rig.wait_run(await rig.fire(db_down("b1")))

    assert detail["status"] == "succeeded", detail["error"]
    assert branch(detail) == "restart_database"
    assert outcomes(detail) == took("restart_database", "wait_database")
    assert step(detail, "restart_database")["params"] == {
        "namespace": "store-b1",
        "kind": "StatefulSet",
        "name": "b1-db",
    }
    assert checks(detail) == {"database_ready": True, "app_ready": True}
    stamp = await rig.kubectl(
        "get", "statefulset", "b1-db", "-n", "store-b1", "-o", JSONPATH_RESTARTED
    )
    assert stamp == step(detail, "restart_database")["output"]["restarted_at"]
    # The app is not restarted for the database's sake.
    after = rig.get("Deployment", "b1-app", "store-b1")
    assert after is not None
    assert after["metadata"]["resourceVersion"] == app["metadata"]["resourceVersion"]
    assert requests(rig) == []
    assert rig.receiver.bodies == []


async def test_an_app_in_crash_loop_next_to_a_ready_database_is_restarted(rig: Rig) -> None:
    seeded = store_namespace("b2")
    seeded["app"] = objects.deployment("b2-app", "store-b2", available=0)
    seeded["app_pod"] = waiting_pod(
        "b2-app-7d9f-abcde", "store-b2", app="b2-app", reason="CrashLoopBackOff", restarts=7
    )
    rig.seed(seeded)
    database = rig.get("StatefulSet", "b2-db", "store-b2")
    assert database is not None
    rig.roll_out_restarts()

    detail = await rig.wait_run(await rig.fire(db_down("b2")))

    assert detail["status"] == "succeeded", detail["error"]
    assert branch(detail) == "restart_app"
    assert outcomes(detail) == took("restart_app", "wait_app")
    assert step(detail, "diagnose")["output"]["flags"]["crash_loop"] is True
    assert checks(detail) == {"database_ready": True, "app_ready": True}
    assert restarted_at(rig.get("Deployment", "b2-app", "store-b2")) is not None
    after = rig.get("StatefulSet", "b2-db", "store-b2")
    assert after is not None
    assert after["metadata"]["resourceVersion"] == database["metadata"]["resourceVersion"]
    assert rig.receiver.bodies == []


def without_credentials(store_id: str) -> dict[str, Obj]:
    seeded = database_not_ready(store_id, reason="CreateContainerConfigError")
    del seeded["credentials"]
    return seeded


def with_pending_volume(store_id: str) -> dict[str, Obj]:
    seeded = database_not_ready(store_id)
    seeded["pvc"] = objects.pvc(f"data-{store_id}-db-0", f"store-{store_id}", phase="Pending")
    return seeded


@pytest.mark.parametrize(
    ("scenario", "expected_branch", "confirm", "error"),
    [
        (
            without_credentials,
            "escalate_credentials",
            "confirm_login",
            "Secret b3-db-credentials in store-b3 not present after 1 polls",
        ),
        (
            with_pending_volume,
            "escalate_storage",
            "confirm_storage",
            "PersistentVolumeClaim (all) in store-b3 not in phase Bound after 1 polls",
        ),
    ],
    ids=["credentials-missing", "pvc-unbound"],
)
async def test_missing_credentials_or_storage_escalate_and_change_nothing(
    rig: Rig, scenario: Any, expected_branch: str, confirm: str, error: str
) -> None:
    rig.seed(scenario("b3"))
    rig.roll_out_restarts()  # would complete a restart at once, if there were one
    version = rig.emulator.resource_version

    detail = await rig.wait_run(await rig.fire(db_down("b3")))

    assert detail["status"] == "failed"
    assert branch(detail) == expected_branch
    before = BRANCH_STEPS[: BRANCH_STEPS.index(confirm)]
    assert outcomes(detail) == {
        "diagnose": "succeeded",
        "decide": "succeeded",
        **dict.fromkeys(before, "skipped"),
        confirm: "failed",
    }
    assert error in detail["error"]
    assert outcomes(detail, "on_failure") == {"escalate": "succeeded"}
    assert rig.emulator.resource_version == version
    assert restarted_at(rig.get("StatefulSet", "b3-db", "store-b3")) is None
    assert requests(rig) == []
    (message,) = texts(rig.receiver)
    assert f"Database of store b3 is down, remediation failed (branch {expected_branch})" in message
    assert rig.receiver.bodies[0]["attachments"][0]["color"] == "danger"


async def test_a_database_that_recovered_by_itself_is_only_verified(rig: Rig) -> None:
    rig.seed(store_namespace("b5"))
    version = rig.emulator.resource_version

    detail = await rig.wait_run(await rig.fire(db_down("b5")))

    assert detail["status"] == "succeeded", detail["error"]
    assert branch(detail) == "recovered"
    assert outcomes(detail) == took()
    assert verification(detail)["outcome"] == "passed"
    assert rig.emulator.resource_version == version
    assert rig.receiver.bodies == []
