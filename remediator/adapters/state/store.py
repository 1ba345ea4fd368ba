""":class:`SqlStateStore`: the :class:`~.contract.StateStore` API on the shared transactions.

A backend supplies the transaction itself (:meth:`SqlStateStore._in_transaction`, blocking)
and where it runs (:meth:`SqlStateStore._call`: PostgreSQL's on worker threads, because each
statement is a network round trip; SQLite's on the loop, see :mod:`.sqlite`); everything a
method means is here and in :mod:`.transactions`, once for both. Nothing that waits on a disk
or a network runs on the event loop.

Each public method is one transaction as far as its caller can tell. Writes that arrive while
another write is committing wait for it and then commit together (group commit): each runs in
a savepoint of one shared transaction, in arrival order, so each sees the ones before it as
if they had committed one after the other, and one that fails is rolled back alone. Every
caller is answered only after the shared COMMIT, so an answer still means durable.
"""

from __future__ import annotations

import abc
import asyncio
import dataclasses
import functools
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from types import TracebackType
from typing import Any, Self, TypeVar

from remediator.adapters.state import safeguards
from remediator.adapters.state import transactions as tx
from remediator.adapters.state.connections import Connection
from remediator.adapters.state.contract import RunDetail, SafetyStatus, StateError
from remediator.core import auditing, runs, safety

T = TypeVar("T")

VERIFY_BATCH = 1000

Committed = tuple[Any, list[runs.AuditRecord]]


@dataclasses.dataclass(slots=True)
class _PendingWrite:
    operation: str
    job: Callable[[Connection], Any]
    future: asyncio.Future[Committed]


class SqlStateStore(abc.ABC):
    """What both backends share; see :mod:`.sqlite` and :mod:`.postgres`."""

    readonly: bool = False
    max_group: int = 32
    """Writes committed in one transaction at most: bounds how long the writer lock is held."""
    gather_iterations: int = 0
    """Loop iterations a group waits for more writes before it commits: where a commit is
    the costly part (SQLite writes every page it touched), a few more writes per commit."""
    group_admissions: bool = False
    """Whether admissions share a group too. Not where a transaction holds a lock across round
    trips: the admitter already sends a batch of webhooks as one call, and more in the same
    transaction would keep the other replicas waiting too long."""

    def __init__(
        self,
        *,
        clock: Callable[[], float] = time.time,
        on_append: Callable[[runs.AuditRecord], None] | None = None,
    ) -> None:
        self._clock = clock
        self._on_append = on_append
        self._pending_writes: list[_PendingWrite] = []
        self._committer: asyncio.Task[None] | None = None

    @property
    @abc.abstractmethod
    def name(self) -> str:
        """Where the state lives, for messages: a path, or a URL without its password."""

    @abc.abstractmethod
    async def open(self) -> None: ...

    @abc.abstractmethod
    async def close(self) -> None: ...

    @abc.abstractmethod
    async def _call(self, job: Callable[[], T]) -> T:
        """Run a blocking job on the backend's worker thread(s)."""

    @abc.abstractmethod
    def _call_blocking(self, job: Callable[[], T]) -> T:
        """Run a blocking job from a thread other than the event loop's, and wait for it."""

    @property
    @abc.abstractmethod
    def _driver_error(self) -> type[Exception]:
        """The database driver's base exception, for errors of one write in a group."""

    @abc.abstractmethod
    def _in_transaction(
        self, operation: str, job: Callable[[Connection], T], *, write: bool
    ) -> tuple[T, list[runs.AuditRecord]]:
        """Blocking: run ``job`` in one transaction; the records it appended, once committed."""

    async def __aenter__(self) -> Self:
        await self.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # Intake

    async def admit(
        self,
        admissions: Sequence[runs.Admission],
        *,
        now: float,
        known_targets: int | None = None,
        owner: str | None = None,
    ) -> list[runs.AdmissionResult]:
        """Dedupe, then create each candidate run its safety policy allows (one transaction);
        ``owner``, the admitting replica, is to execute the runs."""
        batch = tuple(admissions)
        return await self._transact(
            "admit",
            lambda c: tx.admit(c, batch, now=now, known_targets=known_targets, owner=owner),
            group=self.group_admissions,
        )

    # Runs

    async def claim_run(
        self,
        run_id: str,
        *,
        now: float,
        events: Sequence[runs.AuditEvent] = (),
        policy: safety.SafetyPolicy | None = None,
        policy_for: Callable[[str], safety.SafetyPolicy | None] | None = None,
        record_start: bool = False,
        owner: str | None = None,
    ) -> runs.RunRecord | None:
        """QUEUED → RUNNING (by ``owner``, if given); :class:`TargetBusyError` while another
        run on its target is in progress, on any replica. ``events`` (and ``run_started`` with
        ``record_start``) are written only if it wins, in the same transaction.

        With a ``policy`` (or ``policy_for``, given the run's playbook name), the start is
        re-checked: pause, breaker and cooldown may have changed while the run waited. A
        refused run becomes CANCELLED with the reason, audited.
        """
        pending = tuple(events)
        return await self._transact(
            "claim_run",
            lambda c: tx.claim_run(
                c,
                run_id,
                now=now,
                events=pending,
                policy=policy,
                policy_for=policy_for,
                record_start=record_start,
                owner=owner,
            ),
        )

    async def finish_run(
        self,
        run_id: str,
        status: runs.RunStatus,
        *,
        now: float,
        error: str | None = None,
        events: Sequence[runs.AuditEvent] = (),
        breaker: safety.BreakerPolicy | None = None,
        owner: str | None = None,
        step: runs.StepRecord | None = None,
    ) -> list[runs.Breaker]:
        """Any unfinished status → ``status`` (a finished one); else :class:`RunStateError`.

        A run that already finished keeps its first outcome: for example one that was marked
        interrupted at shutdown while its task was still winding down. With a ``breaker``
        policy, returns the breakers this outcome opened (audited here, escalated by the caller).
        ``step``, the last step's record, is stored in the same transaction, as
        :meth:`record_step` would have stored it; its audit event goes first in ``events``.
        """
        if not status.finished:
            raise ValueError(f"finish_run needs a finished status, not {status}")
        pending = tuple(events)
        return await self._transact(
            "finish_run",
            lambda c: tx.finish_run(
                c,
                run_id,
                status,
                now=now,
                error=error,
                events=pending,
                breaker=breaker,
                owner=owner,
                step=step,
            ),
        )

    async def set_run_status(
        self,
        run_id: str,
        status: runs.RunStatus,
        *,
        now: float,
        events: Sequence[runs.AuditEvent] = (),
    ) -> None:
        """Move a started run between RUNNING and AWAITING_APPROVAL."""
        movable = (str(runs.RunStatus.RUNNING), str(runs.RunStatus.AWAITING_APPROVAL))
        if status not in movable:
            raise ValueError(
                f"set_run_status moves runs between {', '.join(movable)}, not to {status}; "
                "use claim_run or finish_run"
            )
        pending = tuple(events)

        def move(conn: Connection) -> None:
            tx.transition(conn, run_id, to=status, allowed_from=movable)
            if status is runs.RunStatus.AWAITING_APPROVAL:
                # A new request: an earlier step's decision does not answer it.
                conn.execute("UPDATE runs SET approval = NULL WHERE run_id = ?", (run_id,))
            tx.append(conn, pending, now)

        await self._transact("set_run_status", move)

    async def record_step(
        self,
        step: runs.StepRecord,
        *,
        events: Sequence[runs.AuditEvent] = (),
        now: float | None = None,
        owner: str | None = None,
    ) -> None:
        """Store a finished step; ``now`` (the events' time) defaults to the store's clock.
        With ``owner``, :class:`RunLostError` if another replica owns the run now."""
        when = self._clock() if now is None else now
        pending = tuple(events)
        await self._transact(
            "record_step",
            lambda c: tx.record_step(c, step, events=pending, now=when, owner=owner),
        )

    async def begin_step(
        self, run_id: str, step: Mapping[str, Any] | None, *, owner: str | None = None
    ) -> str | None:
        """Right before a mutating step: None if it may act (and it is now in flight), else
        ``paused`` (the kill switch) or ``lost`` (another replica has taken the run over)."""
        return await self._transact(
            "begin_step", lambda c: tx.begin_step(c, run_id, step, owner=owner)
        )

    # Replicas

    async def heartbeat(
        self,
        replica_id: str,
        *,
        host: str,
        now: float,
        ttl: float,
        known_targets: int | None = None,
    ) -> int | None:
        """Renew ``replica_id``'s lease on its runs until ``now + ttl``; report the targets its
        discovery knows, and get the most any live replica reported."""
        return await self._transact(
            "heartbeat",
            lambda c: tx.heartbeat(
                c, replica_id, host=host, now=now, ttl=ttl, known_targets=known_targets
            ),
        )

    async def release_replica(self, replica_id: str) -> int:
        """On a clean shutdown: its queued runs go to the next replica that looks."""
        return await self._transact("release_replica", lambda c: tx.release(c, replica_id))

    async def adopt_orphans(
        self, replica_id: str, *, now: float, everyone_else: bool = False, starting: bool = False
    ) -> runs.Adoption:
        """Take every unfinished run whose owner's lease expired (or, with ``everyone_else``,
        every other owner's; with ``starting``, this replica id's too); started ones are taken
        over, audited."""
        return await self._transact(
            "adopt_orphans",
            lambda c: tx.adopt(
                c, replica_id, now=now, everyone_else=everyone_else, starting=starting
            ),
        )

    async def disown(self, run_id: str, owner: str) -> bool:
        """Hand a started run over to the next look for orphans (its step in flight unknown)."""
        return await self._transact("disown", lambda c: tx.disown(c, run_id, owner))

    async def decide_approval(self, run_id: str, decision: Mapping[str, Any]) -> bool:
        """Record an operator's (or the timeout's) decision; the first one wins."""
        return await self._transact(
            "decide_approval", lambda c: tx.decide_approval(c, run_id, decision)
        )

    async def approval_of(self, run_id: str) -> dict[str, Any] | None:
        return await self._transact("approval_of", lambda c: tx.approval_of(c, run_id), write=False)

    async def queued_runs(self) -> list[runs.RunRecord]:
        """Queued runs, oldest first."""
        return await self._transact("queued_runs", tx.queued_runs, write=False)

    async def get_run(self, run_id: str) -> RunDetail | None:
        return await self._transact("get_run", lambda c: tx.run_detail(c, run_id), write=False)

    async def list_runs(
        self, flt: runs.RunFilter, *, limit: int = 50, cursor: str | None = None
    ) -> runs.Page[runs.RunRecord]:
        """Newest first. ``since`` is inclusive and ``until`` exclusive, on ``created_at``.

        ``flt.outcome`` matches the run's status; ``flt.kind`` does not apply to runs.
        """
        tx.check_limit(limit)
        return await self._transact(
            "list_runs", lambda c: tx.list_runs(c, flt, limit=limit, cursor=cursor), write=False
        )

    # Safety envelope

    async def set_paused(self, paused: bool, *, by: str, reason: str, now: float) -> bool:
        """The kill switch; durable, audited. False when it was already in that state."""
        return await self._transact(
            "set_paused", lambda c: tx.set_paused(c, paused, by=by, reason=reason, now=now)
        )

    async def ping(self) -> None:
        """One round trip to the database; :class:`StateError` when it does not answer."""
        await self._transact("ping", lambda c: c.execute("SELECT 1").fetchone(), write=False)

    async def is_paused(self) -> bool:
        """Cheap enough to ask before every mutating step."""
        return await self._transact(
            "is_paused", lambda c: safeguards.paused(c) is not None, write=False
        )

    async def reset_breakers(
        self, playbook: str, target: str | None, *, by: str, now: float
    ) -> int:
        """Close a playbook's open breakers (one target's, or all); audited with who did it."""
        return await self._transact(
            "reset_breakers", lambda c: tx.reset_breakers(c, playbook, target, by=by, now=now)
        )

    async def safety_status(self, *, now: float) -> SafetyStatus:
        """Pause, open breakers and active storms, for the API, the CLI and the gauges."""
        writable = not self.readonly
        return await self._transact(
            "safety_status",
            lambda c: tx.safety_status(c, now=now, expire=writable),
            write=writable,
        )

    async def preview_admission(
        self,
        run: runs.NewRun,
        policy: safety.SafetyPolicy,
        alertname: str,
        *,
        now: float,
        known_targets: int | None = None,
    ) -> safety.Decision:
        """The decision admit() would take for this candidate now, writing nothing."""
        return await self._transact(
            "preview_admission",
            lambda c: tx.preview_admission(
                c, run, policy, alertname, now=now, known_targets=known_targets
            ),
            write=False,
        )

    # Audit

    async def append_audit(
        self, events: Sequence[runs.AuditEvent], *, now: float
    ) -> list[runs.AuditRecord]:
        pending = tuple(events)
        return await self._transact("append_audit", lambda c: tx.append(c, pending, now))

    async def query_audit(
        self, flt: runs.RunFilter, *, limit: int = 100, cursor: str | None = None
    ) -> runs.Page[runs.AuditRecord]:
        """Oldest first by seq. ``since`` is inclusive and ``until`` exclusive, on ``time``."""
        tx.check_limit(limit)
        return await self._transact(
            "query_audit",
            lambda c: tx.query_audit(c, flt, limit=limit, cursor=cursor),
            write=False,
        )

    async def audit_records(
        self, *, after_seq: int = 0, batch: int = 1000
    ) -> AsyncIterator[runs.AuditRecord]:
        """The chain from ``after_seq`` on, fetched ``batch`` records per transaction.

        Writers interleave between batches; records appended meanwhile are included.
        """
        tx.check_limit(batch)
        after = after_seq
        while True:
            rows = await self._transact(
                "audit_records",
                functools.partial(tx.audit_batch, after=after, limit=batch),
                write=False,
            )
            for row in rows:
                yield tx.decode_audit(row)
            if len(rows) < batch:
                return
            after = rows[-1]["seq"]

    async def verify_audit(self) -> auditing.ChainReport:
        """Re-hash the whole chain without stalling the loop or the writers.

        Hashing runs on a helper thread that pulls batches through the backend, so webhooks
        keep being admitted between batches even on a very long log.
        """
        stop = threading.Event()
        try:
            return await asyncio.to_thread(self._verify_blocking, stop)
        finally:
            # On cancellation the helper thread stops at its next batch.
            stop.set()

    # Settings

    async def get_setting(self, key: str) -> str | None:
        return await self._transact("get_setting", lambda c: tx.get_setting(c, key), write=False)

    async def put_setting(self, key: str, value: str | None) -> None:
        """Store ``value`` under ``key``; None removes the key."""
        await self._transact("put_setting", lambda c: tx.put_setting(c, key, value))

    # Plumbing

    async def _transact(
        self,
        operation: str,
        job: Callable[[Connection], T],
        *,
        write: bool = True,
        group: bool = True,
    ) -> T:
        # If the awaiting task is cancelled, the job still runs to its end on the worker: a
        # cancelled admit may have committed. Callers treat cancellation as "outcome unknown".
        if write and group:
            result, appended = await self._write(operation, job)
        else:
            result, appended = await self._call(
                lambda: self._in_transaction(operation, job, write=write)
            )
        # Called on the event loop after the commit, so the hook sees only durable records and
        # structlog's context variables of the calling task.
        if self._on_append is not None:
            for record in appended:
                self._on_append(record)
        return result

    async def _write(self, operation: str, job: Callable[[Connection], T]) -> tuple[T, list[Any]]:
        future: asyncio.Future[Committed] = asyncio.get_running_loop().create_future()
        self._pending_writes.append(_PendingWrite(operation, job, future))
        if self._committer is None or self._committer.done():
            self._committer = asyncio.create_task(self._commit_pending(), name="state-commits")
        # Shielded: a caller giving up must not cancel the others' shared transaction.
        result, appended = await asyncio.shield(future)
        return result, appended

    async def _commit_pending(self) -> None:
        while self._pending_writes:
            for _ in range(self.gather_iterations):
                await asyncio.sleep(0)
            group = self._pending_writes[: self.max_group]
            del self._pending_writes[: self.max_group]
            try:
                if len(group) == 1:
                    (only,) = group
                    single = functools.partial(
                        self._in_transaction, only.operation, only.job, write=True
                    )
                    outcomes: list[Committed | BaseException] = [await self._call(single)]
                else:
                    shared = functools.partial(
                        self._in_transaction,
                        "group_commit",
                        functools.partial(self._each, group=group),
                        write=True,
                    )
                    outcomes, _ = await self._call(shared)
            except asyncio.CancelledError:
                for pending in group:
                    pending.future.cancel()
                raise
            except Exception as e:  # the shared transaction failed: none of them was written
                outcomes = [e] * len(group)
            for pending, outcome in zip(group, outcomes, strict=True):
                if pending.future.done():
                    continue
                if isinstance(outcome, BaseException):
                    pending.future.set_exception(outcome)
                else:
                    pending.future.set_result(outcome)

    def _each(
        self, conn: Connection, *, group: Sequence[_PendingWrite]
    ) -> list[Committed | BaseException]:
        """Blocking, inside the shared transaction: each write in its own savepoint."""
        outcomes: list[Committed | BaseException] = []
        for pending in group:
            mark = len(conn.appended)
            memo = dict(conn.memo)
            conn.execute("SAVEPOINT one_write")
            try:
                result = pending.job(conn)
            except Exception as e:
                conn.execute("ROLLBACK TO SAVEPOINT one_write")
                conn.execute("RELEASE SAVEPOINT one_write")
                del conn.appended[mark:]
                conn.memo = memo
                if isinstance(e, self._driver_error):
                    e = StateError(f"{pending.operation} failed on {self.name}: {e}")
                outcomes.append(e)
                continue
            conn.execute("RELEASE SAVEPOINT one_write")
            outcomes.append((result, conn.appended[mark:]))
        return outcomes

    def _verify_blocking(self, stop: threading.Event) -> auditing.ChainReport:
        unreadable: list[tuple[int, str]] = []

        def records() -> Iterator[runs.AuditRecord]:
            after = 0
            while not stop.is_set():
                job = functools.partial(tx.audit_batch, after=after, limit=VERIFY_BATCH)
                rows: list[Any]
                rows, _ = self._call_blocking(
                    functools.partial(self._in_transaction, "verify_audit", job, write=False)
                )
                for row in rows:
                    try:
                        record = tx.decode_audit(row)
                    except StateError as e:
                        # verify_chain only sees well-formed records; report this one after it.
                        unreadable.append((row["seq"], str(e)))
                        return
                    yield record
                if len(rows) < VERIFY_BATCH:
                    return
                after = rows[-1]["seq"]

        report = auditing.verify_chain(records())
        if report.intact and unreadable:
            seq, reason = unreadable[0]
            return auditing.ChainReport(checked=report.checked, first_broken=seq, reason=reason)
        return report
