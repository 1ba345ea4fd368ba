"""Admission: recorded webhooks become durable, deduplicated runs, or 503 with nothing written."""

from __future__ import annotations

import asyncio
import pathlib
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import pytest

from remediator.adapters import metrics, state
from remediator.core import alerts, runs
from remediator.core.playbooks import PlaybookSet
from remediator.core.runs import Admission as Admission_
from remediator.core.runs import AdmissionResult, AuditKind, RunFilter, RunStatus
from remediator.engine import admitting, scheduling
from remediator.engine.actions.registry import ActionRegistry
from tests.engine.conftest import load_payload, playbook_set, playbook_yaml, store_labels, webhook

RESTART = playbook_yaml(
    "restart-store",
    """
    steps:
      - name: restart
        action: test.mutate
        params: {value: "{{ target }}"}
    """,
    priority=10,
)
NOTIFY = playbook_yaml(
    "tell-someone",
    """
    steps:
      - name: tell
        action: test.echo
    """,
)


class Admission:
    """An Admitter on a scheduler that never starts runs, so admitted runs stay queued."""

    def __init__(
        self,
        store: state.StateStore,
        metrics: metrics.Metrics,
        playbooks: PlaybookSet,
        *,
        capacity: int = 100,
        only_highest: bool = True,
        dry_run: bool = False,
    ) -> None:
        self.started: list[str] = []
        self.scheduler = scheduling.Scheduler(
            capacity=capacity, concurrency=0, execute=self._execute
        )
        ids = iter(range(1, 1000))
        self.admitter = admitting.Admitter(
            store=store,
            scheduler=self.scheduler,
            metrics=metrics,
            playbooks=lambda: playbooks,
            only_highest=only_highest,
            dry_run=dry_run,
            make_run_id=lambda: f"run-{next(ids)}",
        )

    async def _execute(self, run_id: str) -> None:
        self.started.append(run_id)

    async def admit(self, body: dict[str, Any]) -> admitting.Admitted:
        return await self.admitter.admit(alerts.parse_webhook(body))


@pytest.fixture
def playbooks(registry: ActionRegistry) -> PlaybookSet:
    return playbook_set(registry, RESTART, NOTIFY)


@pytest.fixture
def admission(
    store: state.SqliteStateStore, metric_set: metrics.Metrics, playbooks: PlaybookSet
) -> Callable[..., Admission]:
    def make(**options: Any) -> Admission:
        return Admission(store, metric_set, playbooks, **options)

    return make


async def audit_kinds(store: state.StateStore) -> list[str]:
    return [str(r.event.kind) async for r in store.audit_records()]


def sample(metric_set: metrics.Metrics, name: str, **labels: str) -> float:
    return metric_set.registry.get_sample_value(name, labels) or 0.0


async def test_a_recorded_webhook_admits_its_runs_once(
    admission: Callable[..., Admission],
    store: state.SqliteStateStore,
    metric_set: metrics.Metrics,
) -> None:
    intake = admission()

    first = await intake.admit(load_payload("storedown-firing.json"))
    again = await intake.admit(load_payload("storedown-firing.json"))

    assert first.runs == ("run-1",)
    assert first.duplicates == 0
    assert again.runs == ()
    assert again.duplicates == 1
    assert intake.scheduler.depth == 1
    page = await store.list_runs(RunFilter())
    assert [(r.run_id, r.playbook, r.target, r.status) for r in page.items] == [
        ("run-1", "restart-store", "store-s1", RunStatus.QUEUED)
    ]
    assert await audit_kinds(store) == ["alert_received", "run_queued", "alert_duplicate"]
    assert sample(metric_set, "remediator_alerts_received_total", status="firing") == 2
    assert sample(metric_set, "remediator_alerts_duplicate_total") == 1


async def test_a_repeat_after_a_restart_is_still_a_duplicate(
    db_path: pathlib.Path, metric_set: metrics.Metrics, playbooks: PlaybookSet
) -> None:
    async with state.SqliteStateStore(db_path) as before:
        await Admission(before, metric_set, playbooks).admit(load_payload("storedown-firing.json"))

    async with state.SqliteStateStore(db_path) as after:
        # A new process does not know which alerts the store holds, so it counts the repeat
        # as needing room: refused while full, nothing written; a duplicate once there is room.
        full = Admission(after, metric_set, playbooks, capacity=0)
        with pytest.raises(admitting.QueueFullError):
            await full.admit(load_payload("storedown-firing.json"))
        intake = Admission(after, metric_set, playbooks)
        again = await intake.admit(load_payload("storedown-firing.json"))
        page = await after.list_runs(RunFilter())

    assert (again.duplicates, again.runs) == (1, ())
    assert intake.scheduler.depth == 0
    assert len(page.items) == 1


async def test_no_room_raises_and_records_nothing(
    admission: Callable[..., Admission],
    store: state.SqliteStateStore,
    metric_set: metrics.Metrics,
) -> None:
    full = admission(capacity=0)

    with pytest.raises(admitting.QueueFullError):
        await full.admit(load_payload("storedown-firing.json"))

    assert await audit_kinds(store) == []
    assert (await store.list_runs(RunFilter())).items == ()
    assert sample(metric_set, "remediator_runs_not_started_total", reason="queue_full") == 1
    # Alertmanager's retry is then a first delivery, not a duplicate.
    later = await admission().admit(load_payload("storedown-firing.json"))
    assert (later.duplicates, later.runs) == (0, ("run-1",))


async def test_a_resolved_alert_cancels_its_queued_runs(
    admission: Callable[..., Admission], store: state.SqliteStateStore
) -> None:
    intake = admission()
    firing = await intake.admit(load_payload("storedown-firing.json"))
    other = await intake.admit(webhook(labels=store_labels("s2"), fingerprint="beef"))
    assert intake.scheduler.depth == 2

    resolved = await intake.admit(load_payload("storedown-resolved.json"))

    assert resolved.results[0].cancelled_runs == firing.runs
    assert resolved.runs == ()
    assert intake.scheduler.depth == 1  # only the other alert's run is left
    (cancelled,) = firing.runs
    detail = await store.get_run(cancelled)
    assert detail is not None
    assert detail.run.status is RunStatus.CANCELLED
    assert detail.audit[-1].event.kind is AuditKind.RUN_CANCELLED
    (remaining,) = other.runs
    remaining_detail = await store.get_run(remaining)
    assert remaining_detail is not None
    assert remaining_detail.run.status is RunStatus.QUEUED


async def test_a_resolved_alert_is_admitted_even_when_restored_runs_overfill_the_queue(
    admission: Callable[..., Admission], store: state.SqliteStateStore
) -> None:
    intake = admission(capacity=1)
    firing = await intake.admit(load_payload("storedown-firing.json"))
    # After a restart every queued run is restored, whatever the configured capacity.
    intake.scheduler.restore([scheduling.QueuedRun(run_id="recovered", target="store-s9")])

    resolved = await intake.admit(load_payload("storedown-resolved.json"))

    assert resolved.results[0].cancelled_runs == firing.runs
    assert intake.scheduler.depth == 1


@pytest.mark.parametrize(
    ("only_highest", "expected"),
    [(True, ["restart-store"]), (False, ["restart-store", "tell-someone"])],
    ids=["first", "all"],
)
async def test_match_policy(
    admission: Callable[..., Admission],
    store: state.SqliteStateStore,
    only_highest: bool,
    expected: list[str],
) -> None:
    admitted = await admission(only_highest=only_highest).admit(
        load_payload("storedown-firing.json")
    )

    page = await store.list_runs(RunFilter())
    assert len(admitted.runs) == len(expected)
    assert sorted(r.playbook for r in page.items) == expected


async def test_an_unrenderable_target_is_not_run_with_its_reason(
    store: state.SqliteStateStore, metric_set: metrics.Metrics, registry: ActionRegistry
) -> None:
    playbooks = playbook_set(
        registry,
        playbook_yaml(
            "needs-pod",
            """
            steps:
              - name: hello
                action: test.echo
            """,
            target="{{ alert.labels.namespace }}/{{ alert.labels.pod }}",
        ),
    )
    intake = Admission(store, metric_set, playbooks)

    admitted = await intake.admit(load_payload("storedown-firing.json"))

    assert admitted.runs == ()
    assert intake.scheduler.depth == 0
    records = [r.event async for r in store.audit_records()]
    (not_run,) = [e for e in records if e.kind is AuditKind.ALERT_NOT_RUN]
    assert (not_run.playbook, not_run.reason) == ("needs-pod", "target_unrenderable")
    assert "namespace" in not_run.details["error"]
    assert (
        sample(metric_set, "remediator_runs_not_started_total", reason="target_unrenderable") == 1
    )


async def test_an_alert_no_playbook_matches_is_recorded_not_run(
    admission: Callable[..., Admission], store: state.SqliteStateStore
) -> None:
    admitted = await admission().admit(webhook(labels={"alertname": "DiskFull", "store_id": "s1"}))

    assert admitted.runs == ()
    records = [r.event async for r in store.audit_records()]
    assert [(str(e.kind), e.reason) for e in records] == [
        ("alert_received", None),
        ("alert_not_run", "no_matching_playbook"),
    ]


async def test_global_dry_run_makes_dry_runs(
    admission: Callable[..., Admission], store: state.SqliteStateStore
) -> None:
    admitted = await admission(dry_run=True).admit(load_payload("storedown-firing.json"))

    (run_id,) = admitted.runs
    detail = await store.get_run(run_id)
    assert detail is not None
    assert detail.run.dry_run is True


@pytest.fixture
async def closed_store(db_path: pathlib.Path) -> AsyncIterator[state.SqliteStateStore]:
    # Opened and closed again: every write fails, as on a broken disk.
    async with state.SqliteStateStore(db_path) as opened:
        pass
    yield opened


async def test_a_failed_write_gives_the_reserved_room_back(
    closed_store: state.SqliteStateStore, metric_set: metrics.Metrics, playbooks: PlaybookSet
) -> None:
    intake = Admission(closed_store, metric_set, playbooks, capacity=1)

    with pytest.raises(state.StateError):
        await intake.admit(load_payload("storedown-firing.json"))

    assert intake.scheduler.reserve(1) is not None


def test_run_ids_are_distinct_hex_across_pool_refills() -> None:
    make = admitting.RunIds()
    ids = [make() for _ in range(3 * admitting.RUN_IDS_PER_DRAW + 7)]

    assert len(set(ids)) == len(ids)
    assert all(len(i) == 32 and int(i, 16) >= 0 and runs.is_run_id(i) for i in ids)


def test_run_ids_sort_by_creation_time() -> None:
    clock = iter([1_764_000_000.0005 + 0.001 * i for i in range(600)])
    make = admitting.RunIds(clock=lambda: next(clock))
    ids = [make() for _ in range(600)]

    assert ids == sorted(ids)
    assert int(ids[0][:12], 16) == 1_764_000_000_000  # milliseconds since the epoch
    assert len({i[12:] for i in ids}) == len(ids)  # and the random part still differs


def test_each_admitter_draws_its_own_run_ids() -> None:
    first, second = admitting.RunIds(), admitting.RunIds()

    assert {first() for _ in range(10)}.isdisjoint({second() for _ in range(10)})


class CountingStore(state.SqliteStateStore):
    """The real store, counting its admission transactions."""

    def __init__(self, path: pathlib.Path) -> None:
        super().__init__(path)
        self.admit_calls: list[int] = []

    async def admit(
        self,
        admissions: Sequence[Admission_],
        *,
        now: float,
        known_targets: int | None = None,
        owner: str | None = None,
    ) -> list[AdmissionResult]:
        self.admit_calls.append(len(admissions))
        return await super().admit(admissions, now=now, known_targets=known_targets, owner=owner)


def one_store(store_id: str) -> dict[str, Any]:
    return webhook(labels=store_labels(store_id), fingerprint=f"{ord(store_id[-1]):016x}")


async def test_concurrent_webhooks_share_one_transaction_each_with_its_own_results(
    db_path: pathlib.Path, metric_set: metrics.Metrics, playbooks: PlaybookSet
) -> None:
    async with CountingStore(db_path) as store:
        intake = Admission(store, metric_set, playbooks)
        first = asyncio.create_task(intake.admit(one_store("s1")))
        await asyncio.sleep(0.01)  # its transaction is under way
        bodies = [one_store("s2"), one_store("s3"), one_store("s1")]
        later = [asyncio.create_task(intake.admit(body)) for body in bodies]

        admitted = [await first, *await asyncio.gather(*later)]

        # The first went alone; the three that came while it was written went together.
        assert store.admit_calls == [1, 3]
        assert [(a.runs, a.duplicates) for a in admitted] == [
            (("run-1",), 0),
            (("run-2",), 0),
            (("run-3",), 0),
            ((), 1),  # a repeat of the first, admitted in the same transaction as others
        ]
        page = await store.list_runs(RunFilter())
        assert sorted(r.target for r in page.items) == ["store-s1", "store-s2", "store-s3"]
        assert intake.scheduler.depth == 3


async def test_a_failed_shared_transaction_fails_every_waiter_and_records_nothing(
    db_path: pathlib.Path, metric_set: metrics.Metrics, playbooks: PlaybookSet
) -> None:
    async with CountingStore(db_path) as store:
        intake = Admission(store, metric_set, playbooks)
        await intake.admit(one_store("s1"))
        await store.close()  # the next transaction fails, as on a broken disk

        outcomes = await asyncio.gather(
            *(intake.admit(one_store(s)) for s in ("s2", "s3")), return_exceptions=True
        )

        assert all(isinstance(o, state.StateError) for o in outcomes)
        assert store.admit_calls == [1, 2]
        assert intake.scheduler.depth == 1  # the two reservations were given back
    async with state.SqliteStateStore(db_path) as reopened:
        page = await reopened.list_runs(RunFilter())
        assert [r.target for r in page.items] == ["store-s1"]


def stores_webhook(*store_ids: str) -> dict[str, Any]:
    """One webhook with a StoreDown alert per store (fingerprint = the store's index, hex)."""
    body = webhook()
    body["alerts"] = [
        webhook(labels=store_labels(store_id), fingerprint=f"{i + 1:04x}")["alerts"][0]
        for i, store_id in enumerate(store_ids)
    ]
    return body


async def test_a_refusal_stops_planning_at_the_first_alert_that_does_not_fit(
    admission: Callable[..., Admission],
    store: state.SqliteStateStore,
    metric_set: metrics.Metrics,
) -> None:
    intake = admission(capacity=2)

    with pytest.raises(admitting.QueueFullError, match="about 5 runs"):
        await intake.admit(stores_webhook("s1", "s2", "s3", "s4", "s5"))

    # Planned were s1, s2 (they fit) and s3 (it did not): three run ids drawn, not five.
    assert (await intake.admit(webhook())).runs == ("run-4",)
    assert await audit_kinds(store) == ["alert_received", "run_queued"]
    assert sample(metric_set, "remediator_runs_not_started_total", reason="queue_full") == 3


async def test_a_webhook_of_known_alerts_needs_no_room_and_is_audited(
    admission: Callable[..., Admission], store: state.SqliteStateStore
) -> None:
    intake = admission(capacity=2)
    first = await intake.admit(stores_webhook("s1", "s2"))
    assert intake.scheduler.room == 0

    again = await intake.admit(stores_webhook("s1", "s2"))

    assert (again.duplicates, again.runs) == (2, ())
    assert intake.scheduler.depth == 2
    recorded = await audit_kinds(store)
    assert recorded[-2:] == ["alert_duplicate", "alert_duplicate"]
    # One new alert among them needs room, so all three are refused and nothing is written.
    with pytest.raises(admitting.QueueFullError):
        await intake.admit(stores_webhook("s1", "s2", "s3"))
    assert await audit_kinds(store) == recorded
    assert first.runs == ("run-1", "run-2")


async def test_the_same_alert_twice_in_one_webhook_needs_room_once(
    admission: Callable[..., Admission],
) -> None:
    intake = admission(capacity=1)
    body = webhook()
    body["alerts"] = body["alerts"] * 2

    admitted = await intake.admit(body)

    assert (admitted.duplicates, len(admitted.runs)) == (1, 1)


def test_seen_keys_forget_the_oldest_first() -> None:
    def key(n: int) -> alerts.DedupeKey:
        return alerts.DedupeKey(
            fingerprint=f"{n:x}",
            starts_at="2026-12-03T00:00:00.000Z",
            status=alerts.AlertStatus.FIRING,
        )

    seen = admitting.SeenKeys(limit=3)
    seen.add([key(1), key(2), key(3)])
    seen.add([key(1)])  # seen again: now the most recent
    seen.add([key(4)])

    assert [n for n in range(1, 5) if key(n) in seen] == [1, 3, 4]
    assert len(seen) == 3
