"""Singleton work on one elected replica: store discovery, probes, provisioning checks and
provisioner reads, and so the store metrics (``store_up`` and the rest), which only the leader
exports (:class:`remediator.adapters.metrics.WhileLeading`). The safety gauges are not
singletons: they read the shared state, so every replica exports them alike.

An :class:`Elector` answers "am I the leader now?" each round; :class:`Leadership` starts the
singleton tasks when the answer turns yes and cancels them when it turns no (or the elector
cannot be asked), audits each change and exports ``remediator_leader``. Electors:

- :class:`SoleElector`: SQLite, one replica: always the leader.
- :class:`LeaseElector`: a coordination.k8s.io Lease, renewed every round; a follower takes it
  once it has seen no renewal for the lease's duration (:mod:`remediator.core.leadership`).
- ``PostgresStateStore.leader_elector()``: a session advisory lock on a connection of its own,
  released by the server the moment the leader's connection dies.

A leader that cannot renew steps down at once rather than wait for its lease to run out, so two
leaders overlap only if a renewal is slower than the whole lease.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import time
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, Protocol

import structlog

from remediator.adapters import kubernetes, metrics, state
from remediator.core import leadership
from remediator.core.runs import AuditEvent, AuditKind

log = structlog.get_logger(__name__)

TaskFactory = Callable[[], Coroutine[Any, Any, None]]


class Elector(Protocol):
    name: str

    async def try_lead(self) -> bool:
        """Acquire or renew; True while this replica is the leader."""

    async def resign(self) -> None: ...


class SoleElector:
    name = "sole"

    async def try_lead(self) -> bool:
        return True

    async def resign(self) -> None:
        return None


class LeaseElector:
    name = "kubernetes"

    def __init__(
        self,
        kube: kubernetes.KubeClient,
        *,
        namespace: str,
        lease: str,
        identity: str,
        duration: float,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._kube = kube
        self._namespace = namespace
        self._lease = lease
        self._identity = identity
        self._duration = duration
        self._monotonic = monotonic
        self._seen: tuple[str | None, str | None, str] | None = None
        self._seen_at = 0.0

    async def try_lead(self) -> bool:
        try:
            current = await self._kube.get(
                kubernetes.LEASES, self._lease, namespace=self._namespace
            )
        except kubernetes.KubeNotFoundError:
            return await self._write(None, transitions=0)
        record = _record(current)
        seen = (record.holder, record.renew_time, record.resource_version)
        now = self._monotonic()
        if seen != self._seen:
            self._seen, self._seen_at = seen, now
        move = leadership.decide(
            record,
            me=self._identity,
            unchanged_for=now - self._seen_at,
            fallback_duration=self._duration,
        )
        if move is leadership.Move.WAIT:
            return False
        transitions = record.transitions + (move is leadership.Move.ACQUIRE)
        return await self._write(current, transitions=transitions)

    async def resign(self) -> None:
        """Hand the lease on at once (a clean shutdown), rather than after its duration."""
        with contextlib.suppress(kubernetes.KubeError):
            current = await self._kube.get(
                kubernetes.LEASES, self._lease, namespace=self._namespace
            )
            if _record(current).holder == self._identity:
                body = dict(current)
                body["spec"] = {**current.get("spec", {}), "holderIdentity": None}
                await self._kube.replace(
                    kubernetes.LEASES, self._lease, body, namespace=self._namespace
                )

    async def _write(self, current: dict[str, Any] | None, *, transitions: int) -> bool:
        now = _microtime()
        spec: dict[str, Any] = {
            "holderIdentity": self._identity,
            "leaseDurationSeconds": max(1, round(self._duration)),
            "renewTime": now,
            "leaseTransitions": transitions,
        }
        try:
            if current is None:
                spec["acquireTime"] = now
                await self._kube.create(
                    kubernetes.LEASES,
                    {
                        "apiVersion": "coordination.k8s.io/v1",
                        "kind": "Lease",
                        "metadata": {"name": self._lease, "namespace": self._namespace},
                        "spec": spec,
                    },
                    namespace=self._namespace,
                )
            else:
                previous = current.get("spec", {})
                held = previous.get("holderIdentity") == self._identity
                spec["acquireTime"] = previous.get("acquireTime") if held else now
                # resourceVersion in the body makes this a compare-and-swap: of two followers
                # taking an expired lease at once, one gets 409.
                body = {**current, "spec": {**previous, **spec}}
                await self._kube.replace(
                    kubernetes.LEASES, self._lease, body, namespace=self._namespace
                )
        except (kubernetes.KubeConflictError, kubernetes.KubeNotFoundError):
            return False
        return True


def _record(lease: dict[str, Any]) -> leadership.LeaseRecord:
    spec = lease.get("spec") or {}
    return leadership.LeaseRecord(
        holder=spec.get("holderIdentity") or None,
        duration=float(spec.get("leaseDurationSeconds") or 0),
        renew_time=spec.get("renewTime"),
        transitions=int(spec.get("leaseTransitions") or 0),
        resource_version=str(lease.get("metadata", {}).get("resourceVersion", "")),
    )


def _microtime() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class Leadership:
    """Runs ``singletons`` while this replica leads; see the module docstring."""

    def __init__(
        self,
        elector: Elector,
        *,
        singletons: Sequence[tuple[str, TaskFactory]],
        interval: float,
        store: state.StateStore,
        metrics: metrics.Metrics,
        replica: Callable[[], str],
        on_lost: Callable[[], None] = lambda: None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._elector = elector
        self._singletons = singletons
        self._interval = interval
        self._store = store
        self._metrics = metrics
        self._replica = replica
        self._on_lost = on_lost
        self._clock = clock
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def leading(self) -> bool:
        return bool(self._tasks)

    async def run(self) -> None:
        try:
            while True:
                try:
                    async with asyncio.timeout(self._interval):
                        leads = await self._elector.try_lead()
                except Exception:  # an elector that cannot be asked means: not leading
                    log.warning("leader_election_failed", elector=self._elector.name, exc_info=True)
                    leads = False
                if leads and not self.leading:
                    await self._elected()
                elif not leads and self.leading:
                    await self._lost("lease not renewed")
                await asyncio.sleep(self._interval)
        finally:
            if self.leading:
                await self._stop_singletons()
                self._metrics.leader.set(0)
            with contextlib.suppress(Exception):
                await asyncio.shield(self._elector.resign())

    async def _elected(self) -> None:
        self._tasks = [
            asyncio.create_task(factory(), name=name) for name, factory in self._singletons
        ]
        self._metrics.leader.set(1)
        self._metrics.leader_changes.labels(change="elected").inc()
        log.info("leader_elected", replica=self._replica(), elector=self._elector.name)
        await self._audit(AuditKind.LEADER_ELECTED, "elected", None)

    async def _lost(self, reason: str) -> None:
        await self._stop_singletons()
        self._metrics.leader.set(0)
        self._metrics.leader_changes.labels(change="lost").inc()
        self._on_lost()
        log.warning("leader_lost", replica=self._replica(), elector=self._elector.name)
        await self._audit(AuditKind.LEADER_LOST, "lost", reason)

    async def _stop_singletons(self) -> None:
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _audit(self, kind: AuditKind, outcome: str, reason: str | None) -> None:
        try:
            await self._store.append_audit(
                [
                    AuditEvent(
                        kind=kind,
                        outcome=outcome,
                        reason=reason,
                        details={"replica": self._replica(), "elector": self._elector.name},
                    )
                ],
                now=self._clock(),
            )
        except state.StateError:
            # The store may be what failed; the change is still logged and exported.
            log.warning("leader_change_not_audited", exc_info=True)
