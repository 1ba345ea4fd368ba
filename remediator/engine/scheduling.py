"""The bounded run queue: capacity for backpressure, one run per target, concurrency caps
(global, and per playbook from its safety policy).

Intake reserves room *before* it acknowledges an alert, so an acknowledged alert always has a
place: when there is no room the webhook answers 503 and Alertmanager retries. Runs whose
target is busy wait while other targets' runs go ahead.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter, OrderedDict, deque
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass

import structlog

log = structlog.get_logger(__name__)

DEFERRED = "deferred"
"""An ``execute`` result meaning "not now": the run goes back to the queue after a delay."""
DRAIN_SAMPLES = 256
"""Finished runs the drain rate is measured over: about a second at full speed, so the rate
follows the executor closely, yet hundreds of samples smooth out single slow runs."""


@dataclass(frozen=True, slots=True)
class QueuedRun:
    run_id: str
    target: str
    playbook: str = ""


class Reservation:
    """Room for up to ``size`` runs, held between the capacity check and the durable write."""

    def __init__(self, scheduler: Scheduler, size: int) -> None:
        self._scheduler = scheduler
        self.size = size

    def commit(self, runs: Iterable[QueuedRun]) -> None:
        """Enqueue the runs actually created; unused room is given back."""
        self._scheduler._commit(self, list(runs))

    def release(self) -> None:
        self._scheduler._release(self)


class Scheduler:
    def __init__(
        self,
        *,
        capacity: int,
        concurrency: int,
        execute: Callable[[str], Awaitable[object]],
        playbook_limit: Callable[[str], int | None] = lambda playbook: None,
        retry_delay: float = 1.0,
    ) -> None:
        self._retry_delay = retry_delay
        self._deferred: dict[str, asyncio.TimerHandle] = {}
        self._playbook_limit = playbook_limit
        self._per_playbook: Counter[str] = Counter()
        self._capacity = capacity
        self._concurrency = concurrency
        self._execute = execute
        self._pending: OrderedDict[str, QueuedRun] = OrderedDict()
        self._reserved = 0
        self._busy_targets: set[str] = set()
        self._running: dict[asyncio.Task[None], QueuedRun] = {}
        self._accepting = True
        self._idle = asyncio.Event()
        self._idle.set()
        self._finish_times: deque[float] = deque(maxlen=DRAIN_SAMPLES)

    @property
    def depth(self) -> int:
        """Runs waiting to start."""
        return len(self._pending)

    @property
    def active(self) -> int:
        return len(self._running)

    @property
    def room(self) -> int:
        """Runs :meth:`reserve` would take now: 0 when full or shutting down."""
        if not self._accepting:
            return 0
        return max(0, self._capacity - len(self._pending) - self._reserved)

    def seconds_until_room(self, places: int, *, now: float | None = None) -> float | None:
        """How long ``places`` more places take to free at the recent drain rate (runs
        finished per second over the last :data:`DRAIN_SAMPLES`), or None before any finished.

        A rate measured up to *now* (the loop's clock), not up to the last finish, so a
        stalled executor reads as slow rather than as fast as it last was.
        """
        if not self._finish_times:
            return None
        if now is None:
            now = asyncio.get_running_loop().time()
        elapsed = now - self._finish_times[0]
        if elapsed <= 0:
            return None
        return places * elapsed / len(self._finish_times)

    def reserve(self, size: int) -> Reservation | None:
        """Room for ``size`` more runs, or None when full or shutting down."""
        if not self._accepting:
            return None
        # An admission that queues nothing (a resolved alert cancelling runs) needs no room,
        # even when restored runs have pushed the queue past its capacity.
        if size and len(self._pending) + self._reserved + size > self._capacity:
            return None
        self._reserved += size
        return Reservation(self, size)

    def restore(self, runs: Iterable[QueuedRun]) -> None:
        """Enqueue runs recovered from the store (at start-up, or adopted from a replica that
        died), ignoring capacity; runs already here are not added twice."""
        for run in runs:
            if run.run_id in self._deferred or any(
                r.run_id == run.run_id for r in self._running.values()
            ):
                continue
            self._pending[run.run_id] = run
        self._dispatch()

    def discard(self, run_ids: Iterable[str]) -> None:
        """Drop queued runs that were cancelled (their store rows already say so)."""
        for run_id in run_ids:
            self._pending.pop(run_id, None)
        self._update_idle()

    def _commit(self, reservation: Reservation, runs: list[QueuedRun]) -> None:
        self._release(reservation)
        for run in runs:
            self._pending[run.run_id] = run
        self._dispatch()

    def _release(self, reservation: Reservation) -> None:
        self._reserved -= reservation.size
        reservation.size = 0

    def _dispatch(self) -> None:
        if not self._accepting:
            return
        free = self._concurrency - len(self._running)
        starting: list[QueuedRun] = []
        targets: set[str] = set()
        per_playbook: Counter[str] = Counter()
        # Scan in order without copying the queue: it can hold thousands of runs, and this runs
        # every time one finishes. Usually the first few entries fill the free slots.
        for run in self._pending.values():
            if len(starting) >= free:
                break
            if run.target in self._busy_targets or run.target in targets:
                continue
            limit = self._playbook_limit(run.playbook)
            busy = self._per_playbook[run.playbook] + per_playbook[run.playbook]
            if limit is not None and busy >= limit:
                continue
            starting.append(run)
            targets.add(run.target)
            per_playbook[run.playbook] += 1
        for run in starting:
            del self._pending[run.run_id]
            self._busy_targets.add(run.target)
            self._per_playbook[run.playbook] += 1
            task = asyncio.create_task(self._run(run), name=f"run-{run.run_id}")
            self._running[task] = run
            task.add_done_callback(self._finished)
        self._update_idle()

    async def _run(self, run: QueuedRun) -> None:
        try:
            outcome = await self._execute(run.run_id)
        except asyncio.CancelledError:
            raise
        except Exception:  # the executor audits its own failures; this guards the scheduler
            log.exception("run_crashed", run_id=run.run_id)
            return
        if outcome == DEFERRED:
            # Its target is busy on another replica, or the store is away: try again later,
            # without holding a slot meanwhile.
            self._deferred[run.run_id] = asyncio.get_running_loop().call_later(
                self._retry_delay, self._undefer, run
            )

    def _undefer(self, run: QueuedRun) -> None:
        self._deferred.pop(run.run_id, None)
        if self._accepting:
            self._pending[run.run_id] = run
            self._dispatch()

    def abandon(self) -> None:
        """This replica lost its lease: stop every run here and forget the queue (another
        replica owns those runs now; any left over are adopted again by the lease keeper)."""
        for handle in self._deferred.values():
            handle.cancel()
        self._deferred.clear()
        self._pending.clear()
        for task in self._running:
            task.cancel()
        self._update_idle()

    def _finished(self, task: asyncio.Task[None]) -> None:
        run = self._running.pop(task)
        self._finish_times.append(asyncio.get_running_loop().time())
        self._busy_targets.discard(run.target)
        self._per_playbook[run.playbook] -= 1
        self._dispatch()
        self._update_idle()

    def _update_idle(self) -> None:
        if self._running or ((self._pending or self._deferred) and self._accepting):
            self._idle.clear()
        else:
            self._idle.set()

    async def wait_idle(self) -> None:
        """Until nothing runs and nothing waits (tests and the demo use this)."""
        await self._idle.wait()

    async def drain(self, grace: float) -> list[str]:
        """Stop starting runs; give running ones ``grace`` seconds, then cancel them.

        Returns the run ids that were still queued; they stay queued in the store and start
        after the next start-up.
        """
        self._accepting = False
        for handle in self._deferred.values():
            handle.cancel()
        self._deferred.clear()
        self._update_idle()
        if self._running:
            _, late = await asyncio.wait(list(self._running), timeout=grace)
            for task in late:
                task.cancel()
            for task in late:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        return list(self._pending)
