"""Run leases, takeovers, fencing and durable approvals: the store's part of high availability,
on both backends (two replicas are two stores on one database)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from remediator.adapters import state
from remediator.core import auditing, runs
from remediator.core.alerts import AlertStatus, DedupeKey
from remediator.core.safety import BreakerPolicy
from tests import state_fixtures

TTL = 15.0


@pytest.fixture
async def store(backend: state_fixtures.Backend) -> AsyncIterator[state.SqlStateStore]:
    async with backend.store(clock=lambda: 5000.0) as opened:
        yield opened


@pytest.fixture
async def other(backend: state_fixtures.Backend) -> AsyncIterator[state.SqlStateStore]:
    """A second replica's store on the same state."""
    async with backend.store(clock=lambda: 5000.0) as opened:
        yield opened


def admission(fingerprint: str, *new: runs.NewRun) -> runs.Admission:
    return runs.Admission(
        key=DedupeKey(
            fingerprint=fingerprint, starts_at="2024-05-01T10:00:00Z", status=AlertStatus.FIRING
        ),
        alert={
            "status": "firing",
            "labels": {"alertname": "StoreDown"},
            "fingerprint": fingerprint,
        },
        runs=new,
        events=(),
    )


def new_run(run_id: str, target: str = "store-1") -> runs.NewRun:
    return runs.NewRun(run_id=run_id, playbook="store-down", target=target)


async def queue(
    store: state.SqlStateStore, run_id: str, *, owner: str, target: str = "store-1"
) -> None:
    (result,) = await store.admit(
        [admission(f"fp-{run_id}", new_run(run_id, target))], now=1000.0, owner=owner
    )
    assert result.created_runs == (run_id,)


def step(run_id: str, index: int, name: str, outcome: runs.StepOutcome) -> runs.StepRecord:
    return runs.StepRecord(
        run_id=run_id,
        index=index,
        phase="steps",
        name=name,
        action="k8s.rollout_restart",
        outcome=outcome,
        params={"name": "web"},
        attempts=1,
        duration=0.5,
        started_at=1000.0 + index,
    )


def flying(index: int, name: str) -> dict[str, Any]:
    return {
        "index": index,
        "phase": "steps",
        "name": name,
        "action": "k8s.scale",
        "started_at": 1010.0,
        "params": {"replicas": 2},
    }


async def audit(store: state.SqlStateStore, kind: runs.AuditKind) -> list[runs.AuditRecord]:
    return [r async for r in store.audit_records() if r.event.kind is kind]


async def detail(store: state.SqlStateStore, run_id: str) -> state.RunDetail:
    found = await store.get_run(run_id)
    assert found is not None
    return found


async def adopt(
    store: state.SqlStateStore, replica: str, *, now: float, everyone_else: bool = False
) -> runs.Adoption:
    """What a replica does each renewal: renew its own lease, then look for orphans."""
    await store.heartbeat(replica, host=f"node-{replica}", now=now, ttl=TTL)
    return await store.adopt_orphans(replica, now=now, everyone_else=everyone_else)


async def started_with_one_step_in_flight(store: state.SqlStateStore, run_id: str) -> None:
    """Replica a: claimed, recorded step 0, began mutating step 1, then died."""
    await store.heartbeat("a", host="node-a", now=1000.0, ttl=TTL)
    await queue(store, run_id, owner="a")
    assert await store.claim_run(run_id, now=1001.0, owner="a") is not None
    await store.record_step(step(run_id, 0, "restart", runs.StepOutcome.SUCCEEDED), owner="a")
    assert await store.begin_step(run_id, flying(1, "scale"), owner="a") is None


async def test_a_live_lease_keeps_its_runs(store: state.SqlStateStore) -> None:
    await started_with_one_step_in_flight(store, "r1")
    await queue(store, "r2", owner="a", target="store-2")
    await store.heartbeat("b", host="node-b", now=1005.0, ttl=TTL)

    adoption = await store.adopt_orphans("b", now=1014.0)

    assert adoption == runs.Adoption()
    assert (await detail(store, "r1")).run.status is runs.RunStatus.RUNNING


async def test_an_expired_lease_hands_queued_runs_over_and_takes_started_ones(
    store: state.SqlStateStore,
) -> None:
    await started_with_one_step_in_flight(store, "r1")
    await queue(store, "r2", owner="a", target="store-2")
    await store.heartbeat("b", host="node-b", now=1010.0, ttl=TTL)

    adoption = await adopt(store, "b", now=1016.0)

    assert [r.run_id for r in adoption.queued] == ["r2"]
    (takeover,) = adoption.taken_over
    assert (takeover.run.run_id, takeover.previous_owner, takeover.in_flight) == (
        "r1",
        "a",
        "scale",
    )
    # The finished step is kept; the one in flight is recorded unknown, never repeated.
    assert [(s.name, s.outcome) for s in takeover.steps] == [
        ("restart", runs.StepOutcome.SUCCEEDED),
        ("scale", runs.StepOutcome.UNKNOWN),
    ]
    assert takeover.steps[1].params == {"replicas": 2}
    assert takeover.run.status is runs.RunStatus.RUNNING
    (record,) = await audit(store, runs.AuditKind.RUN_TAKEN_OVER)
    assert record.event.run_id == "r1"
    assert record.event.details == {
        "from": "a",
        "by": "b",
        "was": "running",
        "step_in_flight": "scale",
        "done": ["restart"],
    }
    # Nothing is adopted twice.
    assert await store.adopt_orphans("b", now=1017.0) == runs.Adoption()
    report = await store.verify_audit()
    assert report.intact, report


async def test_a_recorded_step_is_no_longer_in_flight(store: state.SqlStateStore) -> None:
    await started_with_one_step_in_flight(store, "r1")
    await store.record_step(step("r1", 1, "scale", runs.StepOutcome.SUCCEEDED), owner="a")

    (takeover,) = (await adopt(store, "b", now=1100.0)).taken_over

    assert takeover.in_flight is None
    assert [s.outcome for s in takeover.steps] == [runs.StepOutcome.SUCCEEDED] * 2


async def test_the_old_owner_is_fenced_off_after_a_takeover(store: state.SqlStateStore) -> None:
    await started_with_one_step_in_flight(store, "r1")
    await adopt(store, "b", now=1100.0)

    assert await store.begin_step("r1", flying(2, "again"), owner="a") == "lost"
    with pytest.raises(state.RunLostError, match="'b'"):
        await store.record_step(step("r1", 2, "again", runs.StepOutcome.SUCCEEDED), owner="a")
    with pytest.raises(state.RunLostError):
        await store.finish_run("r1", runs.RunStatus.SUCCEEDED, now=1101.0, owner="a")
    # The new owner carries on.
    assert await store.begin_step("r1", flying(2, "next"), owner="b") is None
    await store.finish_run("r1", runs.RunStatus.SUCCEEDED, now=1102.0, owner="b")
    assert (await detail(store, "r1")).run.status is runs.RunStatus.SUCCEEDED


async def test_the_kill_switch_stops_a_step_before_it_is_in_flight(
    store: state.SqlStateStore,
) -> None:
    await started_with_one_step_in_flight(store, "r1")
    await store.record_step(step("r1", 1, "scale", runs.StepOutcome.SUCCEEDED), owner="a")
    await store.set_paused(True, by="alice", reason="incident", now=1020.0)

    assert await store.begin_step("r1", flying(2, "delete"), owner="a") == "paused"
    (takeover,) = (await adopt(store, "b", now=1100.0)).taken_over
    assert takeover.in_flight is None


async def test_a_restarted_single_replica_takes_over_every_other_owner(
    store: state.SqlStateStore,
) -> None:
    await started_with_one_step_in_flight(store, "r1")
    await queue(store, "r2", owner="a", target="store-2")

    # The lease of the crashed process has not expired, but nobody else shares this state.
    adoption = await adopt(store, "a2", now=1002.0, everyone_else=True)

    assert [r.run_id for r in adoption.queued] == ["r2"]
    assert [t.run.run_id for t in adoption.taken_over] == ["r1"]


async def test_a_replica_restarted_under_its_own_name_takes_over_what_it_left(
    store: state.SqlStateStore, other: state.SqlStateStore
) -> None:
    # ha.replica_id is the pod's name and the container restarted: the new process renews the
    # very lease its predecessor held, so nobody else will ever see these runs as orphans.
    await started_with_one_step_in_flight(store, "r1")
    await queue(store, "r2", owner="a", target="store-2")
    await other.heartbeat("a", host="node-a", now=1003.0, ttl=TTL)

    assert await other.adopt_orphans("a", now=1003.0) == runs.Adoption()
    adoption = await other.adopt_orphans("a", now=1003.0, starting=True)

    assert [r.run_id for r in adoption.queued] == ["r2"]
    (takeover,) = adoption.taken_over
    assert (takeover.run.run_id, takeover.previous_owner, takeover.in_flight) == (
        "r1",
        "a",
        "scale",
    )


async def test_a_replica_without_a_live_lease_adopts_nothing(
    store: state.SqlStateStore,
) -> None:
    await started_with_one_step_in_flight(store, "r1")

    assert await store.adopt_orphans("b", now=1100.0) == runs.Adoption()
    await store.heartbeat("b", host="node-b", now=1100.0, ttl=TTL)
    assert [t.run.run_id for t in (await adopt(store, "b", now=1100.0)).taken_over] == ["r1"]


async def test_a_clean_release_hands_queued_runs_over_at_once(store: state.SqlStateStore) -> None:
    await store.heartbeat("a", host="node-a", now=1000.0, ttl=TTL)
    await queue(store, "r1", owner="a")

    assert await store.release_replica("a") == 1
    adoption = await adopt(store, "b", now=1001.0)

    assert [r.run_id for r in adoption.queued] == ["r1"]


async def test_a_disowned_run_is_taken_over_at_the_next_look(store: state.SqlStateStore) -> None:
    await started_with_one_step_in_flight(store, "r1")

    assert await store.disown("r1", "a")
    assert not await store.disown("r1", "a")
    (takeover,) = (await adopt(store, "a", now=1002.0)).taken_over

    assert takeover.previous_owner is None
    assert takeover.in_flight == "scale"


async def test_one_run_per_target_across_replicas(
    store: state.SqlStateStore, other: state.SqlStateStore
) -> None:
    await queue(store, "r1", owner="a")
    await queue(store, "r2", owner="b")
    assert await store.claim_run("r1", now=1001.0, owner="a") is not None

    with pytest.raises(state.TargetBusyError, match="store-1"):
        await other.claim_run("r2", now=1002.0, owner="b")
    await store.finish_run("r1", runs.RunStatus.SUCCEEDED, now=1003.0, owner="a")
    assert await other.claim_run("r2", now=1004.0, owner="b") is not None


async def test_concurrent_claims_and_adoptions_give_each_run_to_one_replica(
    store: state.SqlStateStore, other: state.SqlStateStore
) -> None:
    for i in range(20):
        await queue(store, f"r{i:02d}", owner="dead", target=f"store-{i}")
    await store.heartbeat("a", host="node-a", now=1099.0, ttl=TTL)
    await other.heartbeat("b", host="node-b", now=1099.0, ttl=TTL)
    first = await asyncio.gather(
        store.adopt_orphans("a", now=1100.0), other.adopt_orphans("b", now=1100.0)
    )
    adopted = [r.run_id for adoption in first for r in adoption.queued]
    assert sorted(adopted) == [f"r{i:02d}" for i in range(20)]

    claims = await asyncio.gather(
        *(
            s.claim_run(f"r{i:02d}", now=1101.0, owner=o)
            for i in range(20)
            for s, o in ((store, "a"), (other, "b"))
        )
    )

    won = [c.run_id for c in claims if c is not None]
    assert sorted(won) == [f"r{i:02d}" for i in range(20)]


async def test_the_first_approval_decision_wins_on_any_replica(
    store: state.SqlStateStore, other: state.SqlStateStore
) -> None:
    await queue(store, "r1", owner="a")
    assert not await other.decide_approval("r1", {"approved": True, "by": "early"})
    await store.claim_run("r1", now=1001.0, owner="a")
    await store.set_run_status("r1", runs.RunStatus.AWAITING_APPROVAL, now=1002.0)

    assert await other.decide_approval("r1", {"approved": False, "by": "bob"})
    assert not await store.decide_approval("r1", {"approved": True, "by": "alice"})
    assert await store.approval_of("r1") == {"approved": False, "by": "bob"}

    # A later request starts from no decision.
    await store.set_run_status("r1", runs.RunStatus.RUNNING, now=1003.0)
    await store.set_run_status("r1", runs.RunStatus.AWAITING_APPROVAL, now=1004.0)
    assert await store.approval_of("r1") is None


async def test_followers_learn_the_known_targets_from_the_leaders_lease(
    store: state.SqlStateStore,
) -> None:
    assert await store.heartbeat("follower", host="n1", now=1000.0, ttl=TTL) is None
    assert await store.heartbeat("leader", host="n2", now=1001.0, ttl=TTL, known_targets=40) == 40
    assert await store.heartbeat("follower", host="n1", now=1005.0, ttl=TTL) == 40
    # The leader died: its count is not trusted past its lease.
    assert await store.heartbeat("follower", host="n1", now=1020.0, ttl=TTL) is None


async def test_the_breaker_counts_a_takeover_as_a_failure(store: state.SqlStateStore) -> None:
    breaker = BreakerPolicy(failures=2, reset_after=600)
    for i in range(2):
        run_id = f"r{i}"
        await started_with_one_step_in_flight(store, run_id)
        await adopt(store, f"b{i}", now=1100.0 + i)
        opened = await store.finish_run(
            run_id, runs.RunStatus.SUCCEEDED, now=1101.0 + i, breaker=breaker, owner=f"b{i}"
        )

    assert [(b.playbook, b.target) for b in opened] == [
        ("store-down", "store-1"),
        ("store-down", None),
    ]


async def test_takeover_records_keep_the_chain_verifiable(store: state.SqlStateStore) -> None:
    await started_with_one_step_in_flight(store, "r1")
    await adopt(store, "b", now=1100.0)

    records = [r async for r in store.audit_records()]
    assert auditing.verify_chain(iter(records)).intact
