"""The scheduler: capacity, one run per target, the concurrency cap, discard, drain, restore."""

from __future__ import annotations

import asyncio
from collections import Counter, defaultdict

import pytest
import structlog

from remediator.core.runs import RunStatus
from remediator.engine.scheduling import QueuedRun, Scheduler
from tests.engine.conftest import WAIT, Engine, playbook_yaml, store_labels, webhook


class Gate:
    """An ``execute`` for the scheduler: each run waits until the test lets it finish."""

    def __init__(self, targets: dict[str, str] | None = None) -> None:
        self.targets = targets or {}
        self.started: defaultdict[str, asyncio.Event] = defaultdict(asyncio.Event)
        self.release: defaultdict[str, asyncio.Event] = defaultdict(asyncio.Event)
        self.order: list[str] = []
        self.finished: list[str] = []
        self.cancelled: list[str] = []
        self.active = 0
        self.max_active = 0
        self.per_target: Counter[str] = Counter()
        self.max_per_target: Counter[str] = Counter()
        self.opened = False

    async def execute(self, run_id: str) -> None:
        target = self.targets.get(run_id, run_id)
        self.order.append(run_id)
        self.active += 1
        self.per_target[target] += 1
        self.max_active = max(self.max_active, self.active)
        self.max_per_target[target] = max(self.max_per_target[target], self.per_target[target])
        self.started[run_id].set()
        try:
            if not self.opened:
                await self.release[run_id].wait()
        except asyncio.CancelledError:
            self.cancelled.append(run_id)
            raise
        finally:
            self.active -= 1
            self.per_target[target] -= 1
        self.finished.append(run_id)

    def release_all(self) -> None:
        """Let every run finish, those waiting now and those still to start."""
        self.opened = True
        for event in self.release.values():
            event.set()


def queued(*pairs: tuple[str, str]) -> list[QueuedRun]:
    return [QueuedRun(run_id=run_id, target=target) for run_id, target in pairs]


async def started(gate: Gate, *run_ids: str) -> None:
    for run_id in run_ids:
        await asyncio.wait_for(gate.started[run_id].wait(), WAIT)


async def test_reserve_counts_waiting_and_reserved_runs_against_capacity() -> None:
    gate = Gate()
    scheduler = Scheduler(capacity=3, concurrency=1, execute=gate.execute)

    first = scheduler.reserve(2)
    assert first is not None
    assert scheduler.reserve(2) is None  # 2 reserved + 2 > 3
    # r1 starts at once (it does not wait), r2 waits behind the concurrency cap.
    first.commit(queued(("r1", "a"), ("r2", "b")))
    await started(gate, "r1")
    assert (scheduler.active, scheduler.depth) == (1, 1)

    second = scheduler.reserve(2)
    assert second is not None
    assert scheduler.reserve(1) is None  # 1 waiting + 2 reserved = 3
    second.release()
    assert scheduler.reserve(2) is not None

    gate.release_all()
    await asyncio.wait_for(scheduler.wait_idle(), WAIT)
    assert gate.finished == ["r1", "r2"]


async def test_room_is_what_reserve_would_take() -> None:
    gate = Gate()
    scheduler = Scheduler(capacity=3, concurrency=0, execute=gate.execute)
    assert scheduler.room == 3

    held = scheduler.reserve(2)
    assert held is not None
    assert scheduler.room == 1
    held.commit(queued(("r1", "a")))  # one place used, one given back
    assert scheduler.room == 2
    scheduler.restore(queued(("r2", "b"), ("r3", "c"), ("r4", "d")))  # past capacity
    assert scheduler.room == 0
    assert scheduler.reserve(1) is None

    await scheduler.drain(0)
    assert scheduler.room == 0  # shutting down: no room, whatever the queue holds


async def test_seconds_until_room_follow_the_drain_rate() -> None:
    gate = Gate()
    scheduler = Scheduler(capacity=10, concurrency=2, execute=gate.execute)
    assert scheduler.seconds_until_room(5) is None  # nothing finished: no rate yet

    reservation = scheduler.reserve(4)
    assert reservation is not None
    reservation.commit(queued(("r1", "a"), ("r2", "b"), ("r3", "c"), ("r4", "d")))
    gate.release_all()
    await asyncio.wait_for(scheduler.wait_idle(), WAIT)

    now = asyncio.get_running_loop().time()
    soon = scheduler.seconds_until_room(100, now=now + 1)
    assert soon is not None
    assert soon > 0
    assert scheduler.seconds_until_room(200, now=now + 1) == pytest.approx(2 * soon)
    # Nothing more finishes: the longer it stalls, the slower the rate it reads.
    later = scheduler.seconds_until_room(100, now=now + 10)
    assert later is not None
    assert later > soon


async def test_a_commit_gives_back_unused_room() -> None:
    gate = Gate()
    scheduler = Scheduler(capacity=2, concurrency=0, execute=gate.execute)
    reservation = scheduler.reserve(2)
    assert reservation is not None

    reservation.commit(queued(("r1", "a")))

    assert scheduler.depth == 1
    assert scheduler.reserve(1) is not None
    assert scheduler.reserve(1) is None


async def test_reserve_refuses_while_draining() -> None:
    scheduler = Scheduler(capacity=10, concurrency=1, execute=Gate().execute)

    assert await scheduler.drain(grace=1.0) == []

    assert scheduler.reserve(1) is None


async def test_one_run_per_target_while_other_targets_proceed() -> None:
    gate = Gate(targets={"a1": "A", "a2": "A", "a3": "A", "b1": "B"})
    scheduler = Scheduler(capacity=10, concurrency=10, execute=gate.execute)
    reservation = scheduler.reserve(4)
    assert reservation is not None

    reservation.commit(queued(("a1", "A"), ("a2", "A"), ("b1", "B"), ("a3", "A")))
    await started(gate, "a1", "b1")

    assert (scheduler.active, scheduler.depth) == (2, 2)
    gate.release["a1"].set()
    await started(gate, "a2")
    # The next run of A started only after the first finished; B's run is still going.
    assert gate.order.index("a2") > gate.order.index("b1")
    assert gate.finished == ["a1"]
    assert not gate.started["a3"].is_set()
    gate.release["b1"].set()
    gate.release["a2"].set()
    await started(gate, "a3")
    gate.release["a3"].set()
    await asyncio.wait_for(scheduler.wait_idle(), WAIT)

    assert gate.order == ["a1", "b1", "a2", "a3"]
    assert gate.max_per_target == {"A": 1, "B": 1}


async def test_the_concurrency_cap_holds() -> None:
    gate = Gate()
    scheduler = Scheduler(capacity=10, concurrency=2, execute=gate.execute)
    reservation = scheduler.reserve(5)
    assert reservation is not None
    reservation.commit(queued(*((f"r{i}", f"t{i}") for i in range(5))))
    await started(gate, "r0", "r1")
    assert (scheduler.active, scheduler.depth) == (2, 3)

    # Let each run finish as soon as it starts; the cap must still hold throughout.
    for run_id in [f"r{i}" for i in range(5)]:
        await started(gate, run_id)
        gate.release[run_id].set()
    await asyncio.wait_for(scheduler.wait_idle(), WAIT)

    assert gate.max_active == 2
    assert sorted(gate.finished) == [f"r{i}" for i in range(5)]


async def test_discard_drops_queued_runs() -> None:
    gate = Gate()
    scheduler = Scheduler(capacity=10, concurrency=1, execute=gate.execute)
    reservation = scheduler.reserve(3)
    assert reservation is not None
    reservation.commit(queued(("r1", "a"), ("r2", "b"), ("r3", "c")))
    await started(gate, "r1")

    scheduler.discard(["r2", "unknown"])

    assert scheduler.depth == 1
    gate.release["r1"].set()
    await started(gate, "r3")
    gate.release["r3"].set()
    await asyncio.wait_for(scheduler.wait_idle(), WAIT)
    assert gate.order == ["r1", "r3"]


async def test_drain_waits_out_the_grace_then_cancels_and_returns_the_queued() -> None:
    gate = Gate(targets={"quick": "A", "stuck": "B", "waiting": "A"})
    scheduler = Scheduler(capacity=10, concurrency=10, execute=gate.execute)
    reservation = scheduler.reserve(3)
    assert reservation is not None
    reservation.commit(queued(("quick", "A"), ("stuck", "B"), ("waiting", "A")))
    await started(gate, "quick", "stuck")

    draining = asyncio.create_task(scheduler.drain(grace=0.2))
    await asyncio.sleep(0)  # the drain task's first step stops dispatching
    assert scheduler.reserve(1) is None
    gate.release["quick"].set()
    still_queued = await asyncio.wait_for(draining, WAIT)

    assert still_queued == ["waiting"]
    assert gate.finished == ["quick"]
    assert gate.cancelled == ["stuck"]
    # Target A became free during the grace, yet nothing new started.
    assert not gate.started["waiting"].is_set()
    assert scheduler.active == 0
    await asyncio.wait_for(scheduler.wait_idle(), WAIT)


async def test_restore_enqueues_beyond_capacity_and_runs_them() -> None:
    gate = Gate()
    scheduler = Scheduler(capacity=1, concurrency=5, execute=gate.execute)

    scheduler.restore(queued(("r1", "a"), ("r2", "b"), ("r3", "c")))

    await started(gate, "r1", "r2", "r3")
    gate.release_all()
    await asyncio.wait_for(scheduler.wait_idle(), WAIT)
    assert sorted(gate.finished) == ["r1", "r2", "r3"]


async def test_an_admission_without_runs_needs_no_room_in_an_overfull_queue() -> None:
    scheduler = Scheduler(capacity=1, concurrency=0, execute=Gate().execute)
    scheduler.restore(queued(("r1", "a"), ("r2", "b")))

    assert scheduler.reserve(1) is None
    assert scheduler.reserve(0) is not None


async def test_a_crashing_execute_does_not_stop_the_scheduler() -> None:
    ran: list[str] = []

    async def execute(run_id: str) -> None:
        ran.append(run_id)
        if run_id == "bad":
            raise RuntimeError("bug in the executor")

    scheduler = Scheduler(capacity=10, concurrency=1, execute=execute)

    with structlog.testing.capture_logs() as logs:
        scheduler.restore(queued(("bad", "a"), ("good", "a")))
        await asyncio.wait_for(scheduler.wait_idle(), WAIT)

    assert ran == ["bad", "good"]
    assert [e["run_id"] for e in logs if e["event"] == "run_crashed"] == ["bad"]


BLOCKING = playbook_yaml(
    "block",
    """
    steps:
      - name: hold
        action: test.block
        params: {key: "{{ run.id }}"}
    """,
)


async def test_with_the_executor_a_target_never_runs_twice_at_once(engine: Engine) -> None:
    playbooks = engine.playbooks(BLOCKING)
    executor = engine.executor(playbooks)
    scheduler = Scheduler(capacity=10, concurrency=4, execute=executor.execute)
    (a1,) = await engine.queue(playbooks, webhook(labels=store_labels("s1"), fingerprint="a1"))
    (a2,) = await engine.queue(playbooks, webhook(labels=store_labels("s1"), fingerprint="a2"))
    (b1,) = await engine.queue(playbooks, webhook(labels=store_labels("s2"), fingerprint="b1"))
    recorder = engine.recorder

    scheduler.restore(
        QueuedRun(run_id=r.run_id, target=r.target) for r in await engine.store.queued_runs()
    )
    await asyncio.wait_for(recorder.started[a1].wait(), WAIT)
    await asyncio.wait_for(recorder.started[b1].wait(), WAIT)
    assert (scheduler.active, scheduler.depth) == (2, 1)
    recorder.release[a1].set()
    await asyncio.wait_for(recorder.started[a2].wait(), WAIT)
    assert ("end", a1) in recorder.timeline
    assert ("end", b1) not in recorder.timeline
    recorder.release[a2].set()
    recorder.release[b1].set()
    await asyncio.wait_for(scheduler.wait_idle(), WAIT)

    assert recorder.max_active == {"store-s1": 1, "store-s2": 1}
    assert recorder.timeline.index(("end", a1)) < recorder.timeline.index(("start", a2))
    for run_id in (a1, a2, b1):
        assert (await engine.detail(run_id)).run.status is RunStatus.SUCCEEDED


async def test_drain_interrupts_runs_past_the_grace_in_the_store(engine: Engine) -> None:
    playbooks = engine.playbooks(BLOCKING)
    scheduler = Scheduler(capacity=10, concurrency=1, execute=engine.executor(playbooks).execute)
    (first,) = await engine.queue(playbooks, webhook(labels=store_labels("s1"), fingerprint="a1"))
    (second,) = await engine.queue(playbooks, webhook(labels=store_labels("s2"), fingerprint="b"))
    scheduler.restore(queued((first, "store-s1"), (second, "store-s2")))
    await asyncio.wait_for(engine.recorder.started[first].wait(), WAIT)

    still_queued = await asyncio.wait_for(scheduler.drain(grace=0.01), WAIT)

    assert still_queued == [second]
    assert (await engine.detail(first)).run.status is RunStatus.INTERRUPTED
    assert (await engine.detail(second)).run.status is RunStatus.QUEUED
    assert engine.recorder.cancelled == [first]


async def test_wait_idle_returns_once_everything_finished() -> None:
    gate = Gate()
    scheduler = Scheduler(capacity=10, concurrency=2, execute=gate.execute)
    scheduler.restore(queued(("r1", "a")))
    waiter = asyncio.create_task(scheduler.wait_idle())
    await started(gate, "r1")
    assert not waiter.done()

    gate.release["r1"].set()

    await asyncio.wait_for(waiter, WAIT)
    assert scheduler.active == 0
