"""Admission: a validated webhook's alerts become durable, deduplicated, queued runs.

The order matters for the delivery guarantee: plan (pure), reserve queue room, write dedupe
keys + runs + audit in one transaction, then enqueue. Only after that may the HTTP layer answer
2xx. If there is no room nothing is written and the caller answers 503, so Alertmanager's retry
is not mistaken for a duplicate.

A refusal is cheap: planning stops at the first alert that no longer fits, so a sender
retrying a large webhook against a full queue does not take the event loop from the executor
that is emptying it. Alerts already known to be durable need no room (the store will find them
duplicates and create nothing), so a re-delivery is accepted, and audited, even while the
queue is full.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import structlog

from remediator.adapters import metrics, state
from remediator.core import planning, safety
from remediator.core.alerts import DedupeKey, Webhook
from remediator.core.playbooks import PlaybookSet
from remediator.core.runs import Admission, AdmissionResult
from remediator.engine import envelope, scheduling

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True, kw_only=True)
class Admitted:
    results: tuple[AdmissionResult, ...]

    @property
    def duplicates(self) -> int:
        return sum(r.duplicate for r in self.results)

    @property
    def runs(self) -> tuple[str, ...]:
        return tuple(run for r in self.results for run in r.created_runs)


class QueueFullError(Exception):
    """No room for this payload's runs; nothing was recorded."""

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after
        """Seconds until the queue has likely drained enough for it, or None if unknown."""


SEEN_KEYS = 65_536
"""Dedupe keys :class:`SeenKeys` remembers (about 16 MiB at most): the alerts of the last
tens of thousands, which is what Alertmanager re-delivers in its next group notifications."""


class SeenKeys:
    """Dedupe keys this process saw committed: the store holds each of them for ever, so an
    alert with one of these keys is certainly a duplicate and needs no queue room.

    Only a positive cache: a key not here may still be known to the store (admitted before a
    restart, or by another replica); such an alert is counted as needing room, which can only
    make a full queue refuse it for a while, never lose it. The oldest keys are forgotten first.
    """

    def __init__(self, limit: int = SEEN_KEYS) -> None:
        self._limit = limit
        self._keys: dict[DedupeKey, None] = {}

    def __contains__(self, key: object) -> bool:
        return key in self._keys

    def __len__(self) -> int:
        return len(self._keys)

    def add(self, keys: Iterable[DedupeKey]) -> None:
        for key in keys:
            self._keys.pop(key, None)  # re-inserted: the most recent goes last
            self._keys[key] = None
        excess = len(self._keys) - self._limit
        if excess > 0:
            # Only the oldest few are copied out: the whole set is tens of thousands of keys.
            for key in list(itertools.islice(self._keys, excess)):
                del self._keys[key]


RUN_ID_RANDOM_BYTES = 10
RUN_IDS_PER_DRAW = 256


class RunIds:
    """Unguessable, time-ordered run ids, 32 hex digits (the shape of a UUIDv7 without its
    version bits): the creation time in milliseconds (48 bits), then 80 bits from the OS's
    CSPRNG, drawn for 256 ids at a time.

    Time order is for the state store: run ids key the runs' unique index, the steps table and
    the audit log's index by run, and a random key lands on a random page of each B-tree. With
    ids that grow, new rows go to the right-hand pages, which stay cached, and a commit writes
    a few pages instead of one per row per index (SQLite: an audit record costs about half as
    much). 80 random bits still make an id impossible to guess, and ids from several replicas
    never collide in practice. ``uuid4()`` per id cost a system call and a UUID object.
    """

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._pool = ""
        self._offset = 0

    def __call__(self) -> str:
        if self._offset >= len(self._pool):
            self._pool = os.urandom(RUN_ID_RANDOM_BYTES * RUN_IDS_PER_DRAW).hex()
            self._offset = 0
        start, self._offset = self._offset, self._offset + 2 * RUN_ID_RANDOM_BYTES
        millis = int(self._clock() * 1000) & 0xFFFF_FFFF_FFFF
        return f"{millis:012x}{self._pool[start : self._offset]}"


MAX_BATCH_ALERTS = 512
"""Admissions one shared transaction takes at most (a single larger webhook still goes alone)."""


class AdmissionBatcher:
    """Group commit: webhooks arriving while the store is busy share its next transaction.

    When the store is idle, the admissions of one loop iteration go to it at once, so an idle
    daemon adds no latency. Those that arrive while it writes wait, and then go together in
    one ``store.admit`` call, in arrival order, which decides them one after the other inside
    the transaction as if they had come in one webhook (a repeat of an alert admitted just
    before it is a duplicate). Each waiter gets its own slice of the results; if the
    transaction fails, every waiter of it gets the error, and nothing of any of them was
    recorded.
    """

    def __init__(
        self,
        *,
        store: state.StateStore,
        clock: Callable[[], float],
        known_targets: Callable[[], int | None],
        owner: Callable[[], str | None] = lambda: None,
    ) -> None:
        self._store = store
        self._clock = clock
        self._known_targets = known_targets
        self._owner = owner
        self._waiting: list[tuple[list[Admission], asyncio.Future[list[AdmissionResult]]]] = []
        self._writer: asyncio.Task[None] | None = None

    async def admit(self, admissions: list[Admission]) -> list[AdmissionResult]:
        future: asyncio.Future[list[AdmissionResult]] = asyncio.get_running_loop().create_future()
        self._waiting.append((admissions, future))
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._write(), name="admission-batches")
        # Shielded: one waiter giving up (its client went away) must not cancel the shared
        # transaction; like an unbatched cancelled admit, its outcome is then unknown to it.
        return await asyncio.shield(future)

    async def _write(self) -> None:
        while self._waiting:
            batch = self._next_batch()
            flat = [admission for admissions, _ in batch for admission in admissions]
            try:
                results = await self._store.admit(
                    flat,
                    now=self._clock(),
                    known_targets=self._known_targets(),
                    owner=self._owner(),
                )
            except asyncio.CancelledError:
                for _, future in batch:
                    future.cancel()
                raise
            except Exception as e:
                for _, future in batch:
                    if not future.done():
                        future.set_exception(e)
                continue
            start = 0
            for admissions, future in batch:
                if not future.done():
                    future.set_result(results[start : start + len(admissions)])
                start += len(admissions)

    def _next_batch(
        self,
    ) -> list[tuple[list[Admission], asyncio.Future[list[AdmissionResult]]]]:
        taken, size = 0, 0
        for admissions, _ in self._waiting:
            if taken and size + len(admissions) > MAX_BATCH_ALERTS:
                break
            taken += 1
            size += len(admissions)
        batch, self._waiting = self._waiting[:taken], self._waiting[taken:]
        return batch


class Admitter:
    def __init__(
        self,
        *,
        store: state.StateStore,
        scheduler: scheduling.Scheduler,
        metrics: metrics.Metrics,
        playbooks: Callable[[], PlaybookSet],
        only_highest: bool,
        dry_run: bool,
        clock: Callable[[], float] = time.time,
        make_run_id: Callable[[], str] | None = None,
        known_targets: Callable[[], int | None] = lambda: None,
        escalator: envelope.Escalator | None = None,
        owner: Callable[[], str | None] = lambda: None,
    ) -> None:
        self._escalator = escalator
        self._scheduler = scheduler
        self._metrics = metrics
        self._playbooks = playbooks
        self._only_highest = only_highest
        self._dry_run = dry_run
        self._make_run_id = make_run_id or RunIds()
        self._batches = AdmissionBatcher(
            store=store, clock=clock, known_targets=known_targets, owner=owner
        )
        self._seen = SeenKeys()

    def _plan(self, webhook: Webhook) -> tuple[list[Admission], int]:
        """The admissions and the queue room they need, planned alert by alert; it stops as
        soon as the room needed exceeds the room free, because then the webhook is refused
        whole (Alertmanager retries it all), and planning the rest would only burn the CPU
        that the executor needs to make room.

        All of it runs without an await, so the room read here is still the room when the
        caller reserves it.
        """
        playbooks = self._playbooks()
        room = self._scheduler.room
        admissions: list[Admission] = []
        counted: set[DedupeKey] = set()
        wanted = 0
        for alert in webhook.alerts:
            admission = planning.plan_admission(
                alert,
                playbooks,
                only_highest=self._only_highest,
                make_run_id=self._make_run_id,
                dry_run=self._dry_run,
            )
            admissions.append(admission)
            # Known durable, or earlier in this webhook: the store creates nothing for it.
            if admission.key in self._seen or admission.key in counted:
                continue
            counted.add(admission.key)
            # A storm's platform-level run may be created too, so it needs room as well.
            wanted += sum(1 + (run.on_storm is not None) for run in admission.runs)
            if wanted > room:
                break
        return admissions, wanted

    def _queue_full(self, wanted: int, *, planned: int, alerts: int) -> QueueFullError:
        # When planning stopped early, the rest of the webhook is assumed to need room at the
        # same rate, to tell the sender roughly how long to wait.
        needed = math.ceil(wanted * alerts / planned) if planned else wanted
        self._metrics.runs_not_started.labels(reason="queue_full").inc(wanted)
        return QueueFullError(
            f"no room for {needed if planned == alerts else f'about {needed}'} runs",
            retry_after=self._scheduler.seconds_until_room(needed - self._scheduler.room),
        )

    async def admit(self, webhook: Webhook) -> Admitted:
        admissions, wanted = self._plan(webhook)
        # Never a part of a webhook: what planning left out would be acknowledged unrecorded.
        complete = len(admissions) == len(webhook.alerts)
        reservation = self._scheduler.reserve(wanted) if complete else None
        if reservation is None:
            raise self._queue_full(wanted, planned=len(admissions), alerts=len(webhook.alerts))
        try:
            results = await self._batches.admit(admissions)
        except BaseException:
            reservation.release()
            raise
        self._seen.add(a.key for a in admissions)
        candidates = {
            new.run_id: new
            for a in admissions
            for run in a.runs
            for new in (run, run.on_storm)
            if new is not None
        }
        reservation.commit(
            scheduling.QueuedRun(
                run_id=run_id,
                target=candidates[run_id].target,
                playbook=candidates[run_id].playbook,
            )
            for result in results
            for run_id in result.created_runs
        )
        self._escalate_storms(admissions, results)
        cancelled = [run_id for r in results for run_id in r.cancelled_runs]
        self._scheduler.discard(cancelled)
        self._count(admissions, results)
        return Admitted(results=tuple(results))

    def _escalate_storms(self, admissions: list[Admission], results: list[AdmissionResult]) -> None:
        """One escalation per storm, unless a platform-level playbook takes it over."""
        if self._escalator is None:
            return
        with_platform_run = {
            (run.playbook, str(a.alert.get("labels", {}).get("alertname", "")))
            for a in admissions
            for run in a.runs
            if run.on_storm is not None
        }
        for result in results:
            for storm in result.storms_started:
                if (storm.playbook, storm.alertname) not in with_platform_run:
                    self._escalator.storm_started(storm)

    def _count(self, admissions: list[Admission], results: list[AdmissionResult]) -> None:
        for admission, result in zip(admissions, results, strict=True):
            self._metrics.alerts_received.labels(status=str(admission.key.status)).inc()
            if result.duplicate:
                self._metrics.alerts_duplicate.inc()
                continue
            for event in admission.events:
                if event.reason:
                    self._metrics.runs_not_started.labels(reason=event.reason).inc()
            for _, reason in result.refused:
                self._metrics.runs_not_started.labels(reason=reason).inc()
            if result.cancelled_runs:
                # A resolved alert cancels its own queued runs; a firing one only by starting a
                # storm, which cancels the queued runs of every target.
                reason = (
                    planning.NotRun.ALERT_RESOLVED
                    if admission.cancel_queued_runs
                    else safety.Refusal.STORM
                )
                self._metrics.runs_not_started.labels(reason=reason).inc(len(result.cancelled_runs))
