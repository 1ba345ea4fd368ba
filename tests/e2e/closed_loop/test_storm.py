"""A storm: the ingress controller goes down, every store with it. StoreDown fires for each;
past store-down's storm threshold (at least 3 stores and more than 20% of those discovered, or
more than 5, within 5 minutes) remediator suspends the per-store runs and runs the declared
platform playbook, ingress-controller-restart, once.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from remediator.core import reporting
from remediator.simulation import closedloop, stores
from tests.e2e.closed_loop.conftest import (
    RUN,
    STAGE,
    finished_run,
    firing,
    held,
    last_seq,
    open_loop,
    received,
    restarted_at,
    storefront_status,
    verification,
)

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio(loop_scope="module")]

STORES = tuple(f"s{i}" for i in range(1, 9))
"""Eight stores: more than store-down's storm.max_targets (5), so all of them down is a storm
whichever threshold applies."""


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def loop(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[closedloop.ClosedLoop]:
    workdir: Path = tmp_path_factory.mktemp("closed-loop-storm")
    async with open_loop(workdir, STORES) as opened:
        yield opened


@pytest.mark.timeout(120)
async def test_a_storm_restarts_the_ingress_controller_once_instead_of_every_store(
    loop: closedloop.ClosedLoop,
) -> None:
    after = await last_seq(loop)
    loop.platform.inject("ingress_controller_down")
    assert {await storefront_status(loop, s) for s in STORES} == {503}

    storm = await loop.wait_audit("storm_started", after=after, timeout=STAGE)
    assert (storm["playbook"], storm["alertname"]) == ("store-down", "StoreDown")
    detail = await finished_run(loop, "ingress-controller-restart", "ingress-nginx", after=after)

    assert detail["status"] == "succeeded", detail["error"]
    assert [s["name"] for s in detail["steps"] if s["outcome"] == "succeeded"] == [
        "restart_controller",
        "wait_controller",
    ]
    check = verification(detail)
    assert check["outcome"] == "passed"
    assert held(check)["no_store_down"]["value"] == 0

    # Every store's alert arrived; the ones past the threshold were not run, because storm,
    # and runs still queued when it started were cancelled, because storm.
    for store_id in STORES:
        await received(loop, "StoreDown", store_id, after=after, status="firing")
    records = await loop.audit(after=after)
    suspended = [
        r
        for r in records
        if r["kind"] in ("alert_not_run", "run_cancelled") and r["reason"] == "storm"
    ]
    assert suspended, "no per-store run was suspended"
    assert {r["playbook"] for r in suspended} == {"store-down"}
    per_store = await loop.runs(playbook="store-down")
    assert len(per_store) + sum(r["kind"] == "alert_not_run" for r in suspended) == len(STORES)
    assert len(per_store) <= 5

    # Exactly one platform run, and no per-store restart once the storm had started (none at
    # all: the per-store diagnosis finds nothing wrong in a store's namespace).
    platform_runs = await loop.runs(playbook="ingress-controller-restart")
    assert [r["status"] for r in platform_runs] == ["succeeded"]
    storm_time = reporting.parse_timestamp(storm["time"])
    for run in per_store:
        finished = await loop.wait_run(run["id"], timeout=RUN)
        restarts = [
            s
            for s in finished["steps"]
            if s["action"] == "k8s.rollout_restart" and s["outcome"] != "skipped"
        ]
        assert all(reporting.parse_timestamp(s["started_at"]) < storm_time for s in restarts), (
            restarts
        )
    for store_id in STORES:
        names = stores.names(store_id)
        assert restarted_at(loop, "Deployment", names.namespace, names.app) is None

    # The cluster: the controller was restarted once, every store serves again, and every
    # store's alert resolved.
    assert restarted_at(loop, "Deployment", stores.INGRESS_NAMESPACE, stores.INGRESS_CONTROLLER)
    assert loop.platform.fixed("ingress_controller_down")
    for store_id in STORES:
        assert loop.platform.problems(store_id) == []
        assert await storefront_status(loop, store_id) == 200
        await received(loop, "StoreDown", store_id, after=after, status="resolved")
    assert await firing(loop, "StoreDown") == []
