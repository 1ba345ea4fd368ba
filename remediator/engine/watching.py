"""Store discovery: list-then-watch informers, and the store directory they feed.

An `Informer` lists a collection, then watches it from the list's resourceVersion, renewing
the watch when the server ends it (``stores.watch_timeout``) and following bookmarks; when the
server no longer has that resourceVersion (410 Gone) it lists again. There is no periodic full
list. Four informers feed the `StoreDirectory`, all cluster-wide (one watch each, however many
stores; per-namespace watches would be two connections per store):

- Namespaces matching ``stores.selector``: the stores themselves (`stores.store_ref`);
- Deployments and StatefulSets: the app and DB of each store (``stores.app_deployment``,
  ``stores.db_statefulset``); only two booleans per object are kept, not the objects;
- Ingresses, unless ``stores.probe.url_template`` is set: each store's probe URL.

The directory derives each store's phase (`stores.derive_phase`, whose docstring has the rules)
on every change to the store and every ``stores.refresh_interval``, since some transitions
only take time (the failure grace, the provisioning timeout), and keeps the store metrics: the
per-store series of a store disappear with its namespace. Pods, PVCs and Helm release Secrets
are not watched: `remediator.engine.monitoring` checks them periodically, and only for stores
that are provisioning or failed, then reports here (`StoreDirectory.record_diagnosis`).

Time is wall-clock epoch seconds (``clock``), because phases start at Kubernetes timestamps.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import structlog
from prometheus_client import Gauge

from remediator.adapters import kubernetes, metrics
from remediator.adapters.kubernetes import Object, WatchEventType
from remediator.adapters.probing import ProbeResult
from remediator.config import StoresSettings
from remediator.core import stores
from remediator.core.stores import FailureReason, Phase, StoreRef

log = structlog.get_logger(__name__)

_Key = tuple[str, str]
"""(namespace, name)."""


def _key(obj: Object) -> _Key:
    metadata = obj.get("metadata") or {}
    return str(metadata.get("namespace") or ""), str(metadata.get("name") or "")


class Sink(Protocol):
    """Where an informer delivers: the whole collection after a list, then each change."""

    def replace(self, objects: Sequence[Object]) -> None: ...

    def apply(self, event_type: WatchEventType, obj: Object) -> None: ...


class Informer:
    """Keeps a `Sink` up to date with one collection; `run` until cancelled."""

    def __init__(
        self,
        kube: kubernetes.KubeClient,
        resource: kubernetes.Resource,
        sink: Sink,
        *,
        label_selector: str | None = None,
        watch_timeout: float = 300.0,
        retry_delay: float = 1.0,
        max_retry_delay: float = 30.0,
    ) -> None:
        self._kube = kube
        self.resource = resource
        self._sink = sink
        self._selector = label_selector or None
        self._timeout = max(1, round(watch_timeout))
        self._retry_delay = retry_delay
        self._max_retry_delay = max_retry_delay
        self.synced = asyncio.Event()
        """Set once the first list has been delivered."""
        self.lists = 0
        """Lists so far: 1 plus one per expiry (or unusable resourceVersion)."""
        self.resource_version: str | None = None

    async def run(self) -> None:
        failures = 0
        loop = asyncio.get_running_loop()
        while True:
            try:
                if self.resource_version is None:
                    await self._list()
                started = loop.time()
                await self._watch()
                failures = 0
                if loop.time() - started < 1:
                    # A watch the server (or a proxy) ends at once must not become a busy loop.
                    await asyncio.sleep(self._retry_delay)
            except kubernetes.KubeGoneError as e:
                log.info("watch_expired", resource=self.resource.plural, error=str(e))
                self.resource_version = None  # list again, at once: nothing is broken
            except kubernetes.KubeError as e:
                failures += 1
                await self._pause(failures, e)
            except asyncio.CancelledError:
                raise
            except Exception as e:  # a task boundary: a bug here must not end discovery
                failures += 1
                log.exception("informer_crashed", resource=self.resource.plural)
                self.resource_version = None
                await self._pause(failures, e)

    async def _list(self) -> None:
        listed = await self._kube.list_versioned(
            self.resource, all_namespaces=True, label_selector=self._selector, max_pages=None
        )
        self.lists += 1
        self._sink.replace(listed.items)
        self.resource_version = listed.resource_version or None
        self.synced.set()
        log.debug("informer_listed", resource=self.resource.plural, count=len(listed.items))

    async def _watch(self) -> None:
        events = self._kube.watch(
            self.resource,
            all_namespaces=True,
            label_selector=self._selector,
            resource_version=self.resource_version,
            timeout_seconds=self._timeout,
        )
        async with contextlib.aclosing(events):
            async for event in events:
                if event.type is not WatchEventType.BOOKMARK:
                    self._sink.apply(event.type, event.object)
                self.resource_version = event.resource_version or self.resource_version

    async def _pause(self, failures: int, error: Exception) -> None:
        delay = min(self._max_retry_delay, self._retry_delay * 2 ** min(failures - 1, 10))
        delay *= 0.5 + random.random() / 2  # noqa: S311 - jitter, not cryptography
        if isinstance(error, kubernetes.KubeForbiddenError):
            # Not transient: discovery stays incomplete (no phases) until RBAC is fixed.
            log.error(
                "watch_forbidden",
                resource=self.resource.plural,
                error=str(error),
                hint="grant list and watch, see remediator/permissions.py",
                retry_in=delay,
            )
        else:
            log.warning(
                "watch_failed", resource=self.resource.plural, error=str(error), retry_in=delay
            )
        await asyncio.sleep(delay)


# --- the directory ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class ProbeTarget:
    ref: StoreRef
    uid: str
    url: str
    """The full URL probed (base URL plus ``stores.probe.path``)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class DiagnosisTarget:
    ref: StoreRef
    uid: str
    release: str


@dataclass(frozen=True, slots=True, kw_only=True)
class StoreStatus:
    """One store as the directory knows it now (the console's Stores page)."""

    ref: StoreRef
    state: stores.PhaseState | None
    """None until discovery is live."""
    up: bool | None
    """What ``store_up`` says: the last probe's answer, None while it is not exported."""


@dataclass(slots=True, kw_only=True)
class _Store:
    ref: StoreRef
    uid: str
    created_at: float
    deleted_at: float | None = None
    app_name: str
    db_name: str
    state: stores.PhaseState | None = None
    problems: dict[FailureReason, float] = field(default_factory=dict)
    helm_failed: bool = False
    counted: set[FailureReason] = field(default_factory=set)
    """Failure reasons already counted for this store (each is counted once)."""
    seen_unfinished: bool = False
    """Seen provisioning or failed: its provisioning duration is observed when it runs."""
    exported: tuple[bool, bool] | None = None
    """The (app, db) readiness last exported, so unchanged gauges are not set again."""
    up_gauge: Gauge | None = None
    """This store's ``store_up`` child, kept so that a probe's answer skips the label lookup;
    None whenever the series is removed."""
    up: bool | None = None
    """The value last exported as ``store_up``; None whenever the series is removed."""
    duration_gauge: Gauge | None = None
    """Its ``store_phase_duration_seconds`` child for the current phase."""


class StoreDirectory:
    """Every discovered store, its phase and its metrics; fed by informers and the checks."""

    def __init__(
        self,
        settings: StoresSettings,
        store_metrics: metrics.StoreMetrics,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._settings = settings
        self._metrics = store_metrics
        self._clock = clock
        self._policy = stores.Policy(
            stuck_after=settings.stuck_after,
            failure_grace=settings.failure_grace,
            provisioning_timeout=settings.provisioning_timeout,
        )
        self._stores: dict[str, _Store] = {}
        self._apps: dict[_Key, stores.Workload] = {}
        self._dbs: dict[_Key, stores.Workload] = {}
        self._ingresses: dict[str, dict[str, str]] = {}
        """Namespace → Ingress name → base URL."""
        self._provisioner: Mapping[str, str] = {}
        self._phases: Counter[Phase] = Counter()
        self._changed = asyncio.Event()
        self.live = asyncio.Event()
        """Set by `go_live`: from then on phases are derived and exported."""
        self.namespaces: Sink = _NamespaceSink(self)
        self.deployments: Sink = _WorkloadSink(self, self._apps, stores.deployment_workload)
        self.statefulsets: Sink = _WorkloadSink(self, self._dbs, stores.statefulset_workload)
        self.ingresses: Sink = _IngressSink(self)

    # --- reading ------------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._stores)

    def refs(self) -> list[StoreRef]:
        return [s.ref for s in self._stores.values()]

    def phase_of(self, namespace: str) -> stores.PhaseState | None:
        found = self._stores.get(namespace)
        return found.state if found is not None else None

    def statuses(self) -> list[StoreStatus]:
        """Every store, by namespace."""
        found = (
            StoreStatus(ref=s.ref, state=s.state, up=s.up if s.up_gauge is not None else None)
            for s in self._stores.values()
        )
        return sorted(found, key=lambda status: status.ref.namespace)

    def base_url(self, namespace: str) -> str | None:
        found = self._stores.get(namespace)
        return self._base_url(found) if found is not None else None

    def targets(self) -> list[ProbeTarget]:
        """Stores to probe: those with a URL that are not being deleted."""
        found = []
        for store in self._stores.values():
            base = self._base_url(store)
            if base is not None and not self._deleting(store):
                url = stores.probe_url(base, self._settings.probe.path)
                found.append(ProbeTarget(ref=store.ref, uid=store.uid, url=url))
        return found

    def diagnosis_targets(self) -> list[DiagnosisTarget]:
        """Stores whose pods, PVCs and Helm release the periodic check looks at."""
        if not self.live.is_set():
            return []
        return [
            DiagnosisTarget(
                ref=s.ref, uid=s.uid, release=stores.render(self._settings.helm_release, s.ref)
            )
            for s in self._stores.values()
            if stores.needs_diagnosis(s.state) and s.deleted_at is None
        ]

    async def wait_until(self, predicate: Callable[[], bool]) -> None:
        """Return once ``predicate()`` holds; it is re-checked after every change here."""
        while True:
            changed = self._changed
            if predicate():
                return
            await changed.wait()

    def go_live(self) -> None:
        """Start deriving phases, once every informer has delivered its first list: before,
        a store listed ahead of its Deployment would look like one just provisioning."""
        self.live.set()
        self.refresh()

    # --- reports from the checks --------------------------------------------------------------

    def record_probe(self, target: ProbeTarget, result: ProbeResult) -> None:
        self._metrics.probe_duration.observe(result.duration)
        if result.failure is not None:
            self._metrics.probe_failures.labels(reason=result.failure.value).inc()
        store = self._stores.get(target.ref.namespace)
        # A store deleted (or re-created, or re-addressed) while its probe was in flight: its
        # series must stay gone, and a new store's must not get the old one's answer.
        if store is None or store.uid != target.uid or self._deleting(store):
            return
        base = self._base_url(store)
        if base is None or stores.probe_url(base, self._settings.probe.path) != target.url:
            return
        if store.up_gauge is None:
            store.up_gauge = self._metrics.store_up.labels(
                store_id=store.ref.store_id, namespace=store.ref.namespace
            )
        store.up_gauge.set(1 if result.up else 0)
        store.up = result.up
        self._notify()

    def record_diagnosis(self, target: DiagnosisTarget, diagnosis: stores.Diagnosis) -> None:
        store = self._stores.get(target.ref.namespace)
        if store is None or store.uid != target.uid:
            return
        now = self._clock()
        store.problems = stores.merge_problems(store.problems, diagnosis.problems, now=now)
        store.helm_failed = diagnosis.helm_failed
        self._evaluate(store, now)
        self._notify()

    def set_provisioner_statuses(self, statuses: Mapping[str, str]) -> None:
        """The provisioner API's status of each store by id; it wins where it is explicit."""
        self._provisioner = dict(statuses)
        self.refresh()

    # --- evaluation ---------------------------------------------------------------------------

    def refresh(self) -> None:
        """Re-derive every phase and set the time-dependent gauges."""
        if not self.live.is_set():
            return
        now = self._clock()
        stuck = 0
        for store in self._stores.values():
            self._evaluate(store, now)
            if store.state is not None and stores.is_stuck(
                store.state, now=now, stuck_after=self._settings.stuck_after
            ):
                stuck += 1
        self._metrics.provisioning_stuck.set(stuck)
        self._notify()

    def _observation(self, store: _Store) -> stores.Observation:
        namespace = store.ref.namespace
        return stores.Observation(
            created_at=store.created_at,
            deleted_at=store.deleted_at,
            app=self._apps.get((namespace, store.app_name)),
            db=self._dbs.get((namespace, store.db_name)),
            helm_failed=store.helm_failed,
            problems=store.problems,
            provisioner_status=self._provisioner.get(store.ref.store_id),
        )

    def _evaluate(self, store: _Store, now: float) -> None:
        if not self.live.is_set():
            return
        observed = self._observation(store)
        previous = store.state
        state = stores.derive_phase(observed, previous=previous, now=now, policy=self._policy)
        store.state = state
        ref = store.ref
        if previous is None or previous.phase is not state.phase:
            if previous is not None:
                self._phases[previous.phase] -= 1
                self._set_phase_count(previous.phase)
                self._metrics.phase_duration.remove(
                    ref.store_id, ref.namespace, previous.phase.value
                )
            self._phases[state.phase] += 1
            self._set_phase_count(state.phase)
            store.duration_gauge = self._metrics.phase_duration.labels(
                store_id=ref.store_id, namespace=ref.namespace, phase=state.phase.value
            )
            self._transitioned(store, previous, state, now)
        assert store.duration_gauge is not None  # noqa: S101 - set with the first phase
        store.duration_gauge.set(max(0.0, now - state.since))
        reason = state.reason
        if state.phase is Phase.FAILED and reason is not None and reason not in store.counted:
            store.counted.add(reason)
            self._metrics.provisioning_failures.labels(reason=reason.value).inc()
            log.info(
                "store_provisioning_failed",
                store_id=ref.store_id,
                namespace=ref.namespace,
                reason=reason.value,
            )
        readiness = (
            observed.app is not None and observed.app.ready,
            observed.db is not None and observed.db.ready,
        )
        if readiness != store.exported:
            store.exported = readiness
            for component, ready in zip(stores.Component, readiness, strict=True):
                self._metrics.component_ready.labels(
                    store_id=ref.store_id, namespace=ref.namespace, component=component.value
                ).set(1 if ready else 0)

    def _transitioned(
        self,
        store: _Store,
        previous: stores.PhaseState | None,
        state: stores.PhaseState,
        now: float,
    ) -> None:
        if state.phase in (Phase.PROVISIONING, Phase.FAILED):
            store.seen_unfinished = True
        elif state.phase is Phase.RUNNING and store.seen_unfinished:
            # Once per store, and only when this daemon saw it unfinished: a store found
            # running at start-up did not just finish provisioning.
            store.seen_unfinished = False
            self._metrics.provisioning_duration.observe(max(0.0, now - store.created_at))
        elif state.phase is Phase.DELETING:
            self._forget_up(store)
        # A store's first phase is news only once discovery is past its initial list.
        (log.info if previous is not None else log.debug)(
            "store_phase_changed",
            store_id=store.ref.store_id,
            namespace=store.ref.namespace,
            phase=state.phase.value,
            previous=previous.phase.value if previous is not None else None,
            reason=state.reason.value if state.reason is not None else None,
        )

    def _forget_up(self, store: _Store) -> None:
        self._metrics.store_up.remove(store.ref.store_id, store.ref.namespace)
        store.up_gauge = None

    def _set_phase_count(self, phase: Phase) -> None:
        self._metrics.stores.labels(phase=phase.value).set(self._phases[phase])

    def _deleting(self, store: _Store) -> bool:
        return store.state is not None and store.state.phase is Phase.DELETING

    def _base_url(self, store: _Store) -> str | None:
        template = self._settings.probe.url_template
        if template is not None:
            return stores.render(template, store.ref)
        found = self._ingresses.get(store.ref.namespace)
        return found[min(found)] if found else None

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    # --- changes from the informers -----------------------------------------------------------

    def _upsert(self, namespace: Object) -> None:
        settings = self._settings
        ref = stores.store_ref(
            namespace,
            id_label=settings.id_label,
            prefix=settings.namespace_prefix,
            exclude=settings.exclude,
        )
        name = _key(namespace)[1]
        metadata = namespace.get("metadata") or {}
        uid = str(metadata.get("uid") or name)
        current = self._stores.get(name)
        if current is not None and (ref is None or current.uid != uid or current.ref != ref):
            self._remove(name)  # no longer a store, or another one under the same name
            current = None
        if ref is None:
            return
        now = self._clock()
        if current is None:
            created = stores.parse_timestamp(metadata.get("creationTimestamp"))
            current = _Store(
                ref=ref,
                uid=uid,
                created_at=created if created is not None else now,
                app_name=stores.render(settings.app_deployment, ref),
                db_name=stores.render(settings.db_statefulset, ref),
            )
            self._stores[name] = current
            # Thousands at start-up are not news; one appearing later is.
            (log.info if self.live.is_set() else log.debug)(
                "store_discovered", store_id=ref.store_id, namespace=ref.namespace
            )
        if metadata.get("deletionTimestamp"):
            deleted = stores.parse_timestamp(metadata["deletionTimestamp"])
            current.deleted_at = deleted if deleted is not None else now
        self._evaluate(current, now)

    def _remove(self, namespace: str) -> None:
        store = self._stores.pop(namespace, None)
        if store is None:
            return
        phase = store.state.phase if store.state is not None else None
        if phase is not None:
            self._phases[phase] -= 1
            self._set_phase_count(phase)
        self._metrics.forget_store(store.ref, phase=phase)
        log.info("store_gone", store_id=store.ref.store_id, namespace=namespace)

    def forget_all(self) -> None:
        """Drop every store and its series: this replica stopped watching (it lost the
        leadership), and a follower must not export a store_up nobody updates any more."""
        for namespace in list(self._stores):
            self._remove(namespace)
        self._apps.clear()
        self._dbs.clear()
        self._ingresses.clear()
        self._provisioner = {}
        self.live.clear()
        self._notify()

    def _reevaluate(self, namespace: str) -> None:
        store = self._stores.get(namespace)
        if store is not None:
            self._evaluate(store, self._clock())


class _NamespaceSink:
    def __init__(self, directory: StoreDirectory) -> None:
        self._directory = directory

    def replace(self, objects: Sequence[Object]) -> None:
        directory = self._directory
        listed = {_key(o)[1] for o in objects}
        for gone in [n for n in directory._stores if n not in listed]:
            directory._remove(gone)
        for obj in objects:
            directory._upsert(obj)
        directory._notify()

    def apply(self, event_type: WatchEventType, obj: Object) -> None:
        if event_type is WatchEventType.DELETED:
            self._directory._remove(_key(obj)[1])
        else:
            self._directory._upsert(obj)
        self._directory._notify()


class _WorkloadSink:
    """Deployments or StatefulSets, reduced to what the phase rules need."""

    def __init__(
        self,
        directory: StoreDirectory,
        table: dict[_Key, stores.Workload],
        reduce: Callable[[Object], stores.Workload],
    ) -> None:
        self._directory = directory
        self._table = table
        self._reduce = reduce

    def replace(self, objects: Sequence[Object]) -> None:
        self._table.clear()
        self._table.update((_key(o), self._reduce(o)) for o in objects)
        self._directory.refresh()

    def apply(self, event_type: WatchEventType, obj: Object) -> None:
        key = _key(obj)
        if event_type is WatchEventType.DELETED:
            self._table.pop(key, None)
        else:
            reduced = self._reduce(obj)
            if self._table.get(key) == reduced:
                return  # a status heartbeat that changes nothing the phase rules read
            self._table[key] = reduced
        self._directory._reevaluate(key[0])
        self._directory._notify()


class _IngressSink:
    def __init__(self, directory: StoreDirectory) -> None:
        self._directory = directory

    def replace(self, objects: Sequence[Object]) -> None:
        table = self._directory._ingresses
        before = set(table)
        table.clear()
        for obj in objects:
            self._put(obj)
        for namespace in before - set(table):
            self._lost(namespace)
        self._directory._notify()

    def apply(self, event_type: WatchEventType, obj: Object) -> None:
        namespace, name = _key(obj)
        table = self._directory._ingresses
        if event_type is WatchEventType.DELETED:
            table.get(namespace, {}).pop(name, None)
        else:
            table.get(namespace, {}).pop(name, None)
            self._put(obj)
        if not table.get(namespace):
            table.pop(namespace, None)
            self._lost(namespace)
        self._directory._notify()

    def _put(self, obj: Object) -> None:
        namespace, name = _key(obj)
        url = stores.ingress_base_url(obj)
        if url is not None:
            self._directory._ingresses.setdefault(namespace, {})[name] = url

    def _lost(self, namespace: str) -> None:
        # Without a URL the store is not probed: drop its last answer rather than keep it.
        store = self._directory._stores.get(namespace)
        if store is not None:
            self._directory._forget_up(store)


def informers(
    kube: kubernetes.KubeClient,
    directory: StoreDirectory,
    settings: StoresSettings,
    *,
    retry_delay: float = 1.0,
) -> list[Informer]:
    """The informers that keep ``directory`` current."""

    def informer(
        resource: kubernetes.Resource, sink: Sink, selector: str | None = None
    ) -> Informer:
        return Informer(
            kube,
            resource,
            sink,
            label_selector=selector,
            watch_timeout=settings.watch_timeout,
            retry_delay=retry_delay,
        )

    found = [
        informer(kubernetes.NAMESPACES, directory.namespaces, settings.selector),
        informer(kubernetes.DEPLOYMENTS, directory.deployments),
        informer(kubernetes.STATEFULSETS, directory.statefulsets),
    ]
    if settings.probe.url_template is None:
        found.append(informer(kubernetes.INGRESSES, directory.ingresses))
    return found
