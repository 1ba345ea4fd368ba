"""One store breaks at a time, and the loop closes through the real Prometheus and
Alertmanager: StoreDown (the app), StoreProvisioningStuck (the init Job), StoreDatabaseDown."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from remediator.simulation import closedloop, stores
from tests.e2e.closed_loop.conftest import (
    branch,
    finished_run,
    firing,
    held,
    last_seq,
    open_loop,
    received,
    restarted_at,
    steps,
    storefront_status,
    verification,
)

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio(loop_scope="module")]

STORES = ("s1", "s2", "s3")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def loop(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[closedloop.ClosedLoop]:
    workdir: Path = tmp_path_factory.mktemp("closed-loop")
    async with open_loop(workdir, STORES) as opened:
        yield opened


def provisioner_status(loop: closedloop.ClosedLoop, store_id: str) -> str:
    return str(loop.platform.twin.stores[store_id].status)


@pytest.mark.timeout(120)  # the module's loop starts in this test's time
async def test_store_down_is_fixed_verified_through_promql_and_resolves(
    loop: closedloop.ClosedLoop,
) -> None:
    after = await last_seq(loop)
    loop.platform.inject("app_down", "s1")
    assert await storefront_status(loop, "s1") == 503

    alert = await received(loop, "StoreDown", "s1", after=after, status="firing")
    # Evaluated by the real Prometheus (its generatorURL), delivered by the real Alertmanager.
    assert alert["details"]["alert"]["generatorURL"].startswith(loop.prometheus_url)
    assert alert["details"]["alert"]["labels"]["namespace"] == "store-s1"
    detail = await finished_run(loop, "store-down", "store-s1", after=after)

    assert detail["status"] == "succeeded", detail["error"]
    assert detail["fingerprint"] == alert["fingerprint"]
    assert branch(detail) == "restart_app"
    acted = {name: outcome for name, outcome in steps(detail).items() if outcome != "skipped"}
    assert acted == {
        "diagnose": "succeeded",
        "decide": "succeeded",
        "restart_app": "succeeded",
        "wait_app": "succeeded",
    }
    check = verification(detail)
    assert check["outcome"] == "passed"
    # The PromQL check itself held, on store_up as Prometheus scraped it back to 1.
    store_up = held(check)["store_up"]
    assert (store_up["value"], store_up["count"]) == (1, 1)

    resolved = await received(loop, "StoreDown", "s1", after=after, status="resolved")
    assert resolved["fingerprint"] == alert["fingerprint"]

    # The cluster: the app was restarted (and only it), the store serves again.
    assert restarted_at(loop, "Deployment", "store-s1", "s1-app") is not None
    assert restarted_at(loop, "StatefulSet", "store-s1", "s1-db") is None
    assert loop.platform.problems("s1") == []
    assert await storefront_status(loop, "s1") == 200
    assert await loop.store_up("s1") == 1
    assert not [a for a in await firing(loop, "StoreDown") if a["labels"]["store_id"] == "s1"]
    runs = await loop.runs(target="store-s1")
    assert [(r["playbook"], r["status"]) for r in runs] == [("store-down", "succeeded")]
    assert loop.receiver.messages == []


async def test_stuck_provisioning_gets_its_init_job_recreated(
    loop: closedloop.ClosedLoop,
) -> None:
    names = stores.names("s2")
    after = await last_seq(loop)
    loop.platform.inject("init_job_failed", "s2")
    failed_job = loop.platform.emulator.get("batch/v1", "Job", names.init_job, names.namespace)
    assert failed_job is not None
    assert provisioner_status(loop, "s2") == "provisioning"

    alert = await received(loop, "StoreProvisioningStuck", "s2", after=after, status="firing")
    detail = await finished_run(loop, "store-provisioning-stuck", "store-s2", after=after)

    assert detail["status"] == "succeeded", detail["error"]
    assert detail["fingerprint"] == alert["fingerprint"]
    assert branch(detail) == "retry_init_job"
    assert steps(detail)["delete_init_job"] == "succeeded"
    (deleted,) = [s for s in detail["steps"] if s["name"] == "delete_init_job"]
    assert deleted["params"]["name"] == names.init_job
    check = verification(detail)
    assert check["outcome"] == "passed"
    assert set(held(check)) == {"app_ready", "db_ready", "store_running"}

    await received(loop, "StoreProvisioningStuck", "s2", after=after, status="resolved")

    # A new Job (the provisioner's retry) ran to completion; the store is running.
    job = loop.platform.emulator.get("batch/v1", "Job", names.init_job, names.namespace)
    assert job is not None
    assert job["metadata"]["uid"] != failed_job["metadata"]["uid"]
    assert stores.condition_true(job, "Complete")
    assert provisioner_status(loop, "s2") == "running"
    assert loop.platform.problems("s2") == []
    assert await storefront_status(loop, "s2") == 200
    runs = await loop.runs(target="store-s2")
    assert [(r["playbook"], r["status"]) for r in runs] == [
        ("store-provisioning-stuck", "succeeded")
    ]


async def test_a_database_down_gets_its_statefulset_restarted(
    loop: closedloop.ClosedLoop,
) -> None:
    after = await last_seq(loop)
    loop.platform.inject("db_down", "s3")

    alert = await received(loop, "StoreDatabaseDown", "s3", after=after, status="firing")
    assert alert["details"]["alert"]["labels"]["component"] == "db"
    detail = await finished_run(loop, "store-database-down", "store-s3", after=after)

    assert detail["status"] == "succeeded", detail["error"]
    assert branch(detail) == "restart_database"
    acted = [name for name, outcome in steps(detail).items() if outcome != "skipped"]
    assert acted == ["diagnose", "decide", "restart_database", "wait_database"]
    check = verification(detail)
    assert check["outcome"] == "passed"
    assert set(held(check)) == {"database_ready"}

    await received(loop, "StoreDatabaseDown", "s3", after=after, status="resolved")

    assert restarted_at(loop, "StatefulSet", "store-s3", "s3-db") is not None
    assert restarted_at(loop, "Deployment", "store-s3", "s3-app") is None
    assert loop.platform.problems("s3") == []
    assert await storefront_status(loop, "s3") == 200
    runs = await loop.runs(target="store-s3")
    assert [(r["playbook"], r["status"]) for r in runs] == [("store-database-down", "succeeded")]
