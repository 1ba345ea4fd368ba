"""Leader election on a coordination.k8s.io Lease, against the API emulator over HTTP with the
real client, checked with the real kubectl."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from remediator.adapters import kubernetes, metrics, state
from remediator.core import runs
from remediator.engine import leading
from remediator.simulation import kubeapi
from tests.engine.kube.conftest import KUBECTL, Kubectl

NAMESPACE = "store-platform"
LEASE = "remediator-leader"


@pytest.fixture(autouse=True)
def platform_namespace(emulator: kubeapi.KubeEmulator) -> None:
    emulator.seed([{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}}])


class Monotonic:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def elector(kube: kubernetes.KubeClient, identity: str, clock: Monotonic) -> leading.LeaseElector:
    return leading.LeaseElector(
        kube, namespace=NAMESPACE, lease=LEASE, identity=identity, duration=15, monotonic=clock
    )


async def lease(kubectl: Kubectl) -> dict[str, object]:
    spec = json.loads(await kubectl("get", "lease", LEASE, "-n", NAMESPACE, "-o", "json"))["spec"]
    assert isinstance(spec, dict)
    return spec


@pytest.mark.skipif(KUBECTL is None, reason="kubectl is not installed")
async def test_one_leader_until_it_stops_renewing_for_the_lease_duration(
    kube: kubernetes.KubeClient, kubectl: Kubectl
) -> None:
    a_clock, b_clock = Monotonic(), Monotonic()
    a, b = elector(kube, "a", a_clock), elector(kube, "b", b_clock)

    assert await a.try_lead()
    assert not await b.try_lead()
    first = await lease(kubectl)
    assert (first["holderIdentity"], first["leaseDurationSeconds"]) == ("a", 15)

    # a renews: b sees the record change, so its wait starts over each time.
    for _ in range(3):
        a_clock.now += 10
        b_clock.now += 10
        assert await a.try_lead()
        assert not await b.try_lead()

    # a is gone: b's own clock (not a's renewTime, which may be skewed) decides.
    b_clock.now += 14
    assert not await b.try_lead()
    b_clock.now += 1
    assert await b.try_lead()
    taken = await lease(kubectl)
    assert (taken["holderIdentity"], taken["leaseTransitions"]) == ("b", 1)
    # a comes back: it is a follower now.
    assert not await a.try_lead()


async def test_two_followers_taking_an_expired_lease_at_once_make_one_leader(
    kube: kubernetes.KubeClient,
) -> None:
    clock = Monotonic()
    assert await elector(kube, "dead", clock).try_lead()
    followers = [elector(kube, name, clock) for name in ("b", "c")]
    assert [await f.try_lead() for f in followers] == [False, False]
    clock.now += 20

    won = await asyncio.gather(*(f.try_lead() for f in followers))

    # The replace carries the resourceVersion it read: the slower one gets 409.
    assert sorted(won) == [False, True]


async def test_resigning_hands_the_lease_on_at_once(kube: kubernetes.KubeClient) -> None:
    clock = Monotonic()
    a, b = elector(kube, "a", clock), elector(kube, "b", clock)
    assert await a.try_lead()

    await a.resign()

    assert await b.try_lead()


async def until(condition: Callable[[], bool]) -> None:
    async with asyncio.timeout(5):
        while not condition():  # noqa: ASYNC110 - the state is a plain list the task appends to
            await asyncio.sleep(0.01)


class Toggle:
    name = "toggle"

    def __init__(self) -> None:
        self.leads = True
        self.resigned = False

    async def try_lead(self) -> bool:
        return self.leads

    async def resign(self) -> None:
        self.resigned = True


async def test_leadership_runs_the_singletons_only_while_it_leads(
    tmp_path: Path,
) -> None:
    registry = CollectorRegistry()
    metric_set = metrics.Metrics(registry)
    started: list[str] = []
    cancelled: list[str] = []
    forgotten: list[bool] = []

    async def singleton() -> None:
        started.append("monitor")
        try:
            await asyncio.Event().wait()
        finally:
            cancelled.append("monitor")

    toggle = Toggle()
    async with state.SqliteStateStore(tmp_path / "state.sqlite") as store:
        leadership = leading.Leadership(
            toggle,
            singletons=[("monitor", singleton)],
            interval=0.01,
            store=store,
            metrics=metric_set,
            replica=lambda: "r1",
            on_lost=lambda: forgotten.append(True),
        )
        task = asyncio.create_task(leadership.run())
        await until(lambda: len(started) == 1)
        assert registry.get_sample_value("remediator_leader") == 1
        toggle.leads = False
        await until(lambda: len(cancelled) == 1)
        assert registry.get_sample_value("remediator_leader") == 0
        toggle.leads = True
        await until(lambda: len(started) == 2)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        records = [r.event async for r in store.audit_records()]

    assert started == ["monitor", "monitor"]
    assert cancelled == ["monitor", "monitor"]
    assert forgotten == [True]
    assert toggle.resigned
    assert [(e.kind, e.details["replica"]) for e in records] == [
        (runs.AuditKind.LEADER_ELECTED, "r1"),
        (runs.AuditKind.LEADER_LOST, "r1"),
        (runs.AuditKind.LEADER_ELECTED, "r1"),
    ]
    changes = {
        change: registry.get_sample_value("remediator_leader_changes_total", {"change": change})
        for change in ("elected", "lost")
    }
    assert changes == {"elected": 2, "lost": 1}
