"""SqliteStateStore against real SQLite files: dedupe, runs, the audit chain, settings."""

from __future__ import annotations

import asyncio
import dataclasses
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from remediator.adapters import state
from remediator.core import auditing, errors, runs
from remediator.core.alerts import AlertStatus, DedupeKey
from tests import state_fixtures

STARTS_AT = "2024-05-01T10:00:00.000Z"


@pytest.fixture
async def store(backend: state_fixtures.Backend) -> AsyncIterator[state.SqlStateStore]:
    async with backend.store(clock=lambda: 5000.0) as opened:
        yield opened


def admission(
    fingerprint: str = "aaa1",
    *,
    status: AlertStatus = AlertStatus.FIRING,
    starts_at: str = STARTS_AT,
    alertname: str = "KubePodCrashLooping",
    new_runs: tuple[runs.NewRun, ...] = (),
    cancel: bool = False,
) -> runs.Admission:
    return runs.Admission(
        key=DedupeKey(fingerprint=fingerprint, starts_at=starts_at, status=status),
        alert={
            "status": str(status),
            "labels": {"alertname": alertname, "namespace": "shop"},
            "annotations": {},
            "startsAt": starts_at,
            "endsAt": None,
            "generatorURL": "",
            "fingerprint": fingerprint,
        },
        runs=new_runs,
        events=(
            runs.AuditEvent(
                kind=runs.AuditKind.ALERT_RECEIVED, fingerprint=fingerprint, alertname=alertname
            ),
        ),
        cancel_queued_runs=cancel,
    )


def new_run(run_id: str, *, playbook: str = "restart-pod", target: str = "shop/web") -> runs.NewRun:
    return runs.NewRun(run_id=run_id, playbook=playbook, target=target)


def event(kind: runs.AuditKind = runs.AuditKind.RUN_STARTED, **fields: Any) -> runs.AuditEvent:
    return runs.AuditEvent(kind=kind, **fields)


async def status_of(store: state.SqlStateStore, run_id: str) -> runs.RunStatus:
    detail = await store.get_run(run_id)
    assert detail is not None
    return detail.run.status


async def all_audit(store: state.SqlStateStore) -> list[runs.AuditRecord]:
    return [record async for record in store.audit_records()]


# Admission and dedupe


async def test_new_alert_stores_runs_and_events(store: state.SqlStateStore) -> None:
    results = await store.admit([admission(new_runs=(new_run("r1"),))], now=1000.0)

    assert results == [
        runs.AdmissionResult(key=admission().key, duplicate=False, created_runs=("r1",))
    ]
    detail = await store.get_run("r1")
    assert detail is not None
    assert detail.run.status is runs.RunStatus.QUEUED
    assert detail.run.fingerprint == "aaa1"
    assert detail.run.alertname == "KubePodCrashLooping"
    assert detail.run.alert["labels"]["namespace"] == "shop"
    assert detail.run.created_at == 1000.0
    received, queued = await all_audit(store)
    assert received.seq == 1
    assert received.time == 1000.0
    assert received.event.kind is runs.AuditKind.ALERT_RECEIVED
    assert received.prev_hash == auditing.GENESIS_HASH
    # The store writes run_queued itself, for every run it creates.
    assert (queued.seq, queued.time, queued.prev_hash) == (2, 1000.0, received.hash)
    assert queued.event == runs.AuditEvent(
        kind=runs.AuditKind.RUN_QUEUED,
        run_id="r1",
        fingerprint="aaa1",
        alertname="KubePodCrashLooping",
        playbook="restart-pod",
        target="shop/web",
        details={"dry_run": False},
    )


async def test_same_key_again_writes_only_a_duplicate_record(
    store: state.SqlStateStore,
) -> None:
    await store.admit([admission(new_runs=(new_run("r1"),))], now=1000.0)

    results = await store.admit([admission(new_runs=(new_run("r2"),))], now=1060.0)

    assert results == [runs.AdmissionResult(key=admission().key, duplicate=True)]
    assert await store.get_run("r2") is None
    records = await all_audit(store)
    assert [(r.event.kind, r.event.run_id) for r in records] == [
        (runs.AuditKind.ALERT_RECEIVED, None),
        (runs.AuditKind.RUN_QUEUED, "r1"),
        (runs.AuditKind.ALERT_DUPLICATE, None),
    ]
    duplicate = records[2].event
    assert duplicate.details == {"first_seen": 1000.0, "runs": ["r1"]}
    assert duplicate.fingerprint == "aaa1"
    assert records[2].time == 1060.0


async def test_dedupe_key_survives_a_restart(backend: state_fixtures.Backend) -> None:
    async with backend.store() as first:
        await first.admit([admission(new_runs=(new_run("r1"),))], now=1000.0)

    async with backend.store() as second:
        (result,) = await second.admit([admission()], now=2000.0)
        assert result.duplicate
        assert [r.run_id for r in await second.queued_runs()] == ["r1"]


async def test_resolved_and_new_start_are_different_keys(store: state.SqlStateStore) -> None:
    results = await store.admit(
        [
            admission(),
            admission(status=AlertStatus.RESOLVED),
            admission(starts_at="2024-05-01T11:00:00.000Z"),
            admission(),  # repeated within the same POST
        ],
        now=1000.0,
    )

    assert [r.duplicate for r in results] == [False, False, False, True]


async def test_failed_batch_writes_nothing(store: state.SqlStateStore) -> None:
    await store.admit([admission("0001", new_runs=(new_run("taken"),))], now=1000.0)
    before = await all_audit(store)

    batch = [
        admission("0002", new_runs=(new_run("r2"),)),
        admission("0003", new_runs=(new_run("taken"),)),  # run id collision fails the batch
    ]
    with pytest.raises(state.StateError) as caught:
        await store.admit(batch, now=1100.0)

    assert caught.value.__cause__ is not None  # the backend's integrity error
    assert await store.get_run("r2") is None
    assert await all_audit(store) == before
    # The first alert's key was rolled back too, so its redelivery is accepted as new.
    (result,) = await store.admit([admission("0002", new_runs=(new_run("r2"),))], now=1200.0)
    assert not result.duplicate
    assert (await store.verify_audit()).intact


async def test_resolved_alert_cancels_only_queued_runs_of_its_fingerprint(
    store: state.SqlStateStore,
) -> None:
    await store.admit(
        [
            admission("aaa1", new_runs=(new_run("queued"), new_run("started"))),
            admission("bbb2", new_runs=(new_run("other"),)),
        ],
        now=1000.0,
    )
    assert await store.claim_run("started", now=1010.0) is not None

    (result,) = await store.admit(
        [
            admission(
                "aaa1",
                status=AlertStatus.RESOLVED,
                cancel=True,
                new_runs=(new_run("on-resolve", playbook="notify"),),
            )
        ],
        now=1100.0,
    )

    assert result.cancelled_runs == ("queued",)
    assert result.created_runs == ("on-resolve",)
    assert await status_of(store, "queued") is runs.RunStatus.CANCELLED
    assert await status_of(store, "started") is runs.RunStatus.RUNNING
    assert await status_of(store, "other") is runs.RunStatus.QUEUED
    assert await status_of(store, "on-resolve") is runs.RunStatus.QUEUED
    cancelled = [r for r in await all_audit(store) if r.event.kind is runs.AuditKind.RUN_CANCELLED]
    assert [(r.event.run_id, r.event.reason, r.time) for r in cancelled] == [
        ("queued", "alert_resolved", 1100.0)
    ]
    assert cancelled[0].event.playbook == "restart-pod"
    assert cancelled[0].event.outcome == "cancelled"


# Run lifecycle


async def test_concurrent_claims_have_exactly_one_winner(store: state.SqlStateStore) -> None:
    await store.admit([admission(new_runs=(new_run("r1"),))], now=1000.0)

    claims = await asyncio.gather(*(store.claim_run("r1", now=1001.0) for _ in range(5)))

    winners = [c for c in claims if c is not None]
    assert len(winners) == 1
    assert winners[0].status is runs.RunStatus.RUNNING
    assert winners[0].started_at == 1001.0


async def test_claims_from_two_stores_on_one_file_have_one_winner(
    backend: state_fixtures.Backend,
) -> None:
    async with (
        backend.store() as one,
        backend.store() as two,
    ):
        await one.admit([admission(new_runs=(new_run("r1"),))], now=1000.0)

        claims = await asyncio.gather(
            one.claim_run("r1", now=1001.0, events=[event(run_id="r1")]),
            two.claim_run("r1", now=1001.0, events=[event(run_id="r1")]),
        )

        assert sorted(c is None for c in claims) == [False, True]
        started = [r for r in await all_audit(one) if r.event.kind is runs.AuditKind.RUN_STARTED]
        assert len(started) == 1


async def test_cancelled_run_cannot_be_claimed(store: state.SqlStateStore) -> None:
    await store.admit([admission(new_runs=(new_run("r1"),))], now=1000.0)
    await store.admit([admission(status=AlertStatus.RESOLVED, cancel=True)], now=1001.0)

    assert await store.claim_run("r1", now=1002.0, events=[event(run_id="r1")]) is None
    kinds = [r.event.kind for r in await all_audit(store)]
    assert runs.AuditKind.RUN_STARTED not in kinds


async def test_run_moves_through_approval_to_finish(store: state.SqlStateStore) -> None:
    await store.admit([admission(new_runs=(new_run("r1"),))], now=1000.0)
    await store.claim_run("r1", now=1001.0)

    await store.set_run_status("r1", runs.RunStatus.AWAITING_APPROVAL, now=1002.0)
    assert await status_of(store, "r1") is runs.RunStatus.AWAITING_APPROVAL
    await store.set_run_status("r1", runs.RunStatus.RUNNING, now=1003.0)
    await store.finish_run(
        "r1",
        runs.RunStatus.FAILED,
        now=1004.0,
        error="scale refused",
        events=[event(runs.AuditKind.RUN_FINISHED, run_id="r1", outcome="failed")],
    )

    detail = await store.get_run("r1")
    assert detail is not None
    assert detail.run.status is runs.RunStatus.FAILED
    assert (detail.run.started_at, detail.run.finished_at) == (1001.0, 1004.0)
    assert detail.run.error == "scale refused"
    assert [r.event.kind for r in detail.audit] == [
        runs.AuditKind.RUN_QUEUED,
        runs.AuditKind.RUN_FINISHED,
    ]


async def test_finished_run_keeps_its_outcome_and_writes_nothing(
    store: state.SqlStateStore,
) -> None:
    await store.admit([admission(new_runs=(new_run("r1"),))], now=1000.0)
    await store.claim_run("r1", now=1001.0)
    await store.finish_run("r1", runs.RunStatus.INTERRUPTED, now=1002.0, error="shutdown")
    before = await all_audit(store)

    with pytest.raises(state.RunStateError, match="interrupted"):
        await store.finish_run(
            "r1", runs.RunStatus.SUCCEEDED, now=1003.0, events=[event(run_id="r1")]
        )
    with pytest.raises(state.RunStateError, match="no run"):
        await store.set_run_status("missing", runs.RunStatus.RUNNING, now=1003.0)
    with pytest.raises(ValueError, match="finished status"):
        await store.finish_run("r1", runs.RunStatus.RUNNING, now=1003.0)
    with pytest.raises(ValueError, match="claim_run or finish_run"):
        await store.set_run_status("r1", runs.RunStatus.SUCCEEDED, now=1003.0)

    assert await status_of(store, "r1") is runs.RunStatus.INTERRUPTED
    assert await all_audit(store) == before


async def test_queued_runs_come_oldest_first(store: state.SqlStateStore) -> None:
    await store.admit([admission("0003", new_runs=(new_run("c"),))], now=1003.0)
    await store.admit([admission("0001", new_runs=(new_run("a1"), new_run("a2")))], now=1001.0)
    await store.admit([admission("0002", new_runs=(new_run("b"),))], now=1002.0)
    await store.claim_run("b", now=1004.0)

    assert [r.run_id for r in await store.queued_runs()] == ["a1", "a2", "c"]


async def test_steps_and_audit_appear_in_run_detail(store: state.SqlStateStore) -> None:
    await store.admit([admission(new_runs=(new_run("r1"),))], now=1000.0)
    for index in (1, 0):
        step = runs.StepRecord(
            run_id="r1",
            index=index,
            phase="steps",
            name=f"step-{index}",
            action="kubernetes.restart",
            outcome=runs.StepOutcome.DRY_RUN,
            params={"namespace": "shop", "replicas": (1, 2)},
            attempts=2,
            duration=0.25,
            started_at=1001.0 + index,
            output={"would": "restart"},
        )
        await store.record_step(
            step, events=[event(runs.AuditKind.STEP_FINISHED, run_id="r1", outcome="dry_run")]
        )

    detail = await store.get_run("r1")

    assert detail is not None
    assert [s.name for s in detail.steps] == ["step-0", "step-1"]
    assert detail.steps[0].params == {"namespace": "shop", "replicas": [1, 2]}
    assert detail.steps[0].outcome is runs.StepOutcome.DRY_RUN
    assert detail.steps[0].output == {"would": "restart"}
    # record_step has no ``now`` of its own here, so the injected clock dates its events.
    assert [(r.event.kind, r.time) for r in detail.audit] == [
        (runs.AuditKind.RUN_QUEUED, 1000.0),
        (runs.AuditKind.STEP_FINISHED, 5000.0),
        (runs.AuditKind.STEP_FINISHED, 5000.0),
    ]
    with pytest.raises(state.StateError):
        await store.record_step(detail.steps[0])  # the same index twice
    with pytest.raises(state.StateError):
        await store.record_step(dataclasses.replace(detail.steps[0], run_id="no-such-run"))


async def test_concurrent_writes_commit_together_and_a_failing_one_alone_is_rolled_back(
    store: state.SqlStateStore,
) -> None:
    ids = [f"r{i}" for i in range(20)]
    await store.admit(
        [admission(new_runs=tuple(new_run(i, target=f"shop/{i}") for i in ids))], now=1000.0
    )
    step = runs.StepRecord(
        run_id="r0",
        index=0,
        phase="steps",
        name="restart",
        action="k8s.rollout_restart",
        outcome=runs.StepOutcome.SUCCEEDED,
        params={},
        attempts=1,
        duration=0.1,
        started_at=1001.0,
    )
    started = event(runs.AuditKind.STEP_FINISHED, run_id="r0")

    outcomes = await asyncio.gather(
        *(store.claim_run(i, now=1001.0, record_start=True) for i in ids),
        # Fails on the driver (no such run: a foreign key), after writing its audit record.
        store.record_step(dataclasses.replace(step, run_id="no-such-run"), events=[started]),
        store.finish_run("no-such-run", runs.RunStatus.SUCCEEDED, now=1002.0),
        return_exceptions=True,
    )

    claimed, (broken_step, unknown_run) = outcomes[:20], outcomes[20:]
    assert [r.run_id for r in claimed if isinstance(r, runs.RunRecord)] == ids
    assert isinstance(broken_step, state.StateError)
    assert "record_step failed" in str(broken_step)
    assert isinstance(unknown_run, state.RunStateError)
    records = await all_audit(store)
    assert [r.event.run_id for r in records if r.event.kind is runs.AuditKind.RUN_STARTED] == ids
    assert not [r for r in records if r.event.kind is runs.AuditKind.STEP_FINISHED]
    assert (await store.verify_audit()).intact


# Listing and filtering


async def _seed_runs(store: state.SqlStateStore) -> None:
    """12 runs: created at 1000..1011, two playbooks, two targets, the first of each target
    claimed (one run at a time per target)."""
    for i in range(12):
        await store.admit(
            [
                admission(
                    f"{i:04x}",
                    alertname="HighLatency" if i % 2 else "KubePodCrashLooping",
                    new_runs=(
                        new_run(
                            f"r{i:02d}",
                            playbook="scale-up" if i % 2 else "restart-pod",
                            target="shop/api" if i < 6 else "shop/web",
                        ),
                    ),
                )
            ],
            now=1000.0 + i,
        )
        if i % 6 == 0:
            await store.claim_run(f"r{i:02d}", now=1000.5 + i)


@pytest.mark.parametrize(
    ("flt", "expected"),
    [
        (runs.RunFilter(), [f"r{i:02d}" for i in reversed(range(12))]),
        (runs.RunFilter(playbook="scale-up"), ["r11", "r09", "r07", "r05", "r03", "r01"]),
        (runs.RunFilter(target="shop/api", playbook="restart-pod"), ["r04", "r02", "r00"]),
        (runs.RunFilter(outcome="running"), ["r06", "r00"]),
        (runs.RunFilter(alertname="HighLatency", since=1007.0), ["r11", "r09", "r07"]),
        (runs.RunFilter(since=1002.0, until=1005.0), ["r04", "r03", "r02"]),
    ],
    ids=["all", "playbook", "target-and-playbook", "status", "alertname-since", "window"],
)
async def test_list_runs_filters(
    store: state.SqlStateStore, flt: runs.RunFilter, expected: list[str]
) -> None:
    await _seed_runs(store)

    page = await store.list_runs(flt)

    assert [r.run_id for r in page.items] == expected
    assert page.next_cursor is None


async def test_list_runs_cursor_walks_every_run_once(store: state.SqlStateStore) -> None:
    await _seed_runs(store)
    # Same created_at for several runs: the cursor must break ties, not skip or repeat them.
    await store.admit(
        [admission("ffff", new_runs=tuple(new_run(f"tie{i}") for i in range(4)))], now=1005.0
    )

    seen: list[str] = []
    cursor: str | None = None
    pages = 0
    while True:
        page = await store.list_runs(runs.RunFilter(), limit=5, cursor=cursor)
        seen.extend(r.run_id for r in page.items)
        pages += 1
        if page.next_cursor is None:
            break
        cursor = page.next_cursor

    assert pages == 4
    assert len(seen) == len(set(seen)) == 16
    created = [(await store.get_run(i)) for i in seen]
    times = [d.run.created_at for d in created if d is not None]
    assert times == sorted(times, reverse=True)


@pytest.mark.parametrize(
    "cursor", ["%%%", "bm90LWEtY3Vyc29y", ""], ids=["junk", "no-colon", "empty"]
)
async def test_list_runs_rejects_foreign_cursors(store: state.SqlStateStore, cursor: str) -> None:
    with pytest.raises(errors.InvalidInputError, match="cursor"):
        await store.list_runs(runs.RunFilter(), cursor=cursor)


async def test_query_audit_filters_and_pages(store: state.SqlStateStore) -> None:
    await _seed_runs(store)
    started = runs.AuditEvent(
        kind=runs.AuditKind.RUN_STARTED, playbook="scale-up", target="shop/web", outcome="running"
    )
    await store.append_audit([started] * 7, now=2000.0)

    page = await store.query_audit(
        runs.RunFilter(kind="alert_received", since=1003.0, until=1006.0)
    )
    assert [r.time for r in page.items] == [1003.0, 1004.0, 1005.0]
    page = await store.query_audit(runs.RunFilter(alertname="HighLatency", until=1004.0))
    # Each admission writes alert_received then run_queued: alerts 1 and 3 are HighLatency.
    assert [(r.seq, r.event.kind) for r in page.items] == [
        (3, runs.AuditKind.ALERT_RECEIVED),
        (4, runs.AuditKind.RUN_QUEUED),
        (7, runs.AuditKind.ALERT_RECEIVED),
        (8, runs.AuditKind.RUN_QUEUED),
    ]

    seqs: list[int] = []
    cursor: str | None = None
    while True:
        page = await store.query_audit(
            runs.RunFilter(playbook="scale-up", target="shop/web", outcome="running"),
            limit=3,
            cursor=cursor,
        )
        seqs.extend(r.seq for r in page.items)
        if page.next_cursor is None:
            break
        cursor = page.next_cursor
    assert seqs == sorted(seqs)
    assert len(seqs) == len(set(seqs)) == 7
    with pytest.raises(errors.InvalidInputError, match="limit"):
        await store.query_audit(runs.RunFilter(), limit=0)
    with pytest.raises(errors.InvalidInputError, match="cursor"):
        await store.query_audit(runs.RunFilter(), cursor="seven")


# The audit chain


async def test_appended_records_form_an_intact_chain(store: state.SqlStateStore) -> None:
    first = await store.append_audit(
        [event(run_id="r1"), event(run_id="r2", details={"n": 1})],
        now=1000,  # an int: hashed as the float it is stored as
    )
    second = await store.append_audit([event(run_id="r3")], now=1001.5)

    assert [r.seq for r in first + second] == [1, 2, 3]
    assert first[1].prev_hash == first[0].hash
    assert second[0].prev_hash == first[1].hash
    assert await all_audit(store) == first + second
    report = await store.verify_audit()
    assert (report.intact, report.checked) == (True, 3)


async def test_audit_records_stream_in_batches(store: state.SqlStateStore) -> None:
    await store.append_audit([event(run_id=str(i)) for i in range(25)], now=1000.0)

    tail = [r.seq async for r in store.audit_records(after_seq=10, batch=4)]

    assert tail == list(range(11, 26))


async def test_two_hundred_concurrent_appends_keep_the_chain_intact(
    store: state.SqlStateStore,
) -> None:
    returned = await asyncio.gather(
        *(store.append_audit([event(run_id=f"r{i}")] * 2, now=1000.0 + i) for i in range(200))
    )

    seqs = sorted(r.seq for batch in returned for r in batch)
    assert seqs == list(range(1, 401))
    assert all(second.seq == first.seq + 1 for first, second in returned)
    report = await store.verify_audit()
    assert (report.intact, report.checked) == (True, 400)


async def _chain_of(store: state.SqlStateStore, count: int) -> None:
    for i in range(count):
        await store.append_audit([event(run_id=f"r{i}", details={"i": i})], now=1000.0 + i)


def _tamper(
    backend: state_fixtures.Backend, statement: str, params: tuple[object, ...] = ()
) -> None:
    with backend.raw() as conn:
        state_fixtures.execute_script(conn, backend.drop_audit_guards)
        conn.execute(statement, params)


@pytest.mark.parametrize(
    ("statement", "first_broken", "reason"),
    [
        ("UPDATE audit SET details = '{\"i\": 99}' WHERE seq = 5", 5, "content"),
        ("UPDATE audit SET time = time + 1 WHERE seq = 5", 5, "content"),
        ("DELETE FROM audit WHERE seq = 5", 6, "sequence gap"),
        ("UPDATE audit SET kind = 'made_up' WHERE seq = 5", 5, "unreadable"),
    ],
    ids=["details", "time", "deleted", "unknown-kind"],
)
async def test_tampering_names_the_first_broken_record(
    store: state.SqlStateStore,
    backend: state_fixtures.Backend,
    statement: str,
    first_broken: int,
    reason: str,
) -> None:
    await _chain_of(store, 8)

    _tamper(backend, statement)
    report = await store.verify_audit()

    assert report.first_broken == first_broken
    assert report.checked == 4
    assert reason in report.reason


async def test_rehashed_record_still_breaks_the_next_link(
    store: state.SqlStateStore, backend: state_fixtures.Backend
) -> None:
    await _chain_of(store, 8)
    records = await all_audit(store)
    forged = auditing.seal(5, records[4].time, event(run_id="forged"), records[4].prev_hash)

    _tamper(
        backend,
        "UPDATE audit SET run_id = 'forged', details = '{}', hash = ? WHERE seq = 5",
        (forged.hash,),
    )
    report = await store.verify_audit()

    assert (report.first_broken, report.reason) == (6, "link to previous record broken")


async def test_triggers_make_the_audit_table_append_only(
    store: state.SqlStateStore, backend: state_fixtures.Backend
) -> None:
    await _chain_of(store, 3)

    with backend.raw() as conn:
        with pytest.raises(backend.append_only_error, match="append-only"):
            conn.execute("UPDATE audit SET reason = 'edited' WHERE seq = 2")
        with pytest.raises(backend.append_only_error, match="append-only"):
            conn.execute("DELETE FROM audit WHERE seq = 3")

    report = await store.verify_audit()

    assert (report.intact, report.checked) == (True, 3)


async def test_empty_chain_is_intact(store: state.SqlStateStore) -> None:
    report = await store.verify_audit()
    assert (report.intact, report.checked) == (True, 0)


# Settings, schema, read-only access


async def test_settings_round_trip_and_persist(backend: state_fixtures.Backend) -> None:
    async with backend.store() as store:
        assert await store.get_setting("paused") is None
        await store.put_setting("paused", "true")
        await store.put_setting("paused", "false")
        await store.put_setting("reason", "maintenance")
        await store.put_setting("reason", None)

    async with backend.store() as store:
        assert await store.get_setting("paused") == "false"
        assert await store.get_setting("reason") is None


async def test_a_newer_schema_is_refused(backend: state_fixtures.Backend) -> None:
    async with backend.store():
        pass
    with backend.raw() as conn:
        conn.execute(backend.newer_schema)

    with pytest.raises(state.StateError, match=r"schema version .*knows up to"):
        await backend.store().open()


async def test_sqlite_schema_is_versioned_and_in_wal_mode(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    async with state.SqliteStateStore(path):
        conn = sqlite3.connect(path)
        try:
            assert conn.execute("PRAGMA user_version").fetchone() == (state.SCHEMA_VERSION,)
            assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        finally:
            conn.close()


async def test_readonly_store_reads_a_live_file_and_cannot_write(
    store: state.SqlStateStore, backend: state_fixtures.Backend
) -> None:
    await store.admit([admission(new_runs=(new_run("r1"),))], now=1000.0)

    async with backend.store(readonly=True) as reader:
        assert [r.run_id for r in await reader.queued_runs()] == ["r1"]
        # Writes by the daemon while the reader is open are visible to its next read.
        await store.put_setting("paused", "true")
        assert await reader.get_setting("paused") == "true"
        with pytest.raises(state.StateError, match=r"read-?only"):
            await reader.put_setting("paused", "false")
        with pytest.raises(state.StateError):
            await reader.append_audit([event()], now=1001.0)
        with pytest.raises(state.StateError):
            await reader.admit([admission("beef")], now=1001.0)
        assert (await reader.verify_audit()).intact

    assert await store.get_setting("paused") == "true"
    assert [r.event.kind for r in await all_audit(store)] == [
        runs.AuditKind.ALERT_RECEIVED,
        runs.AuditKind.RUN_QUEUED,
    ]


async def test_readonly_needs_an_existing_store(tmp_path: Path) -> None:
    with pytest.raises(state.StateError, match="no state store"):
        state.open_readonly(tmp_path / "missing.db")


async def test_closed_store_refuses_calls(backend: state_fixtures.Backend) -> None:
    store = backend.store()
    with pytest.raises(state.StateError, match="not open"):
        await store.get_setting("x")
    async with store:
        with pytest.raises(state.StateError, match="already open"):
            await store.open()
    with pytest.raises(state.StateError, match="not open"):
        await store.verify_audit()
    await store.close()  # idempotent


async def test_a_write_rolled_back_in_a_group_leaves_no_trace_for_the_next(
    store: state.SqlStateStore,
) -> None:
    """Writes that commit together share what their transaction knows (the chain's head, the
    kill switch); one rolled back must take its part of that with it."""
    from remediator.adapters.state import safeguards
    from remediator.adapters.state import transactions as tx

    def pause_append_then_fail(conn: Any) -> None:
        safeguards.set_paused(conn, {"by": "someone", "reason": "rolled back"})
        tx.append(conn, [event()], 1000.0)
        raise RuntimeError("this write fails after it wrote")

    def read_pause_and_append(conn: Any) -> bool:
        tx.append(conn, [event()], 1001.0)
        return safeguards.paused(conn) is not None

    failed, read = await asyncio.gather(
        store._write("fails", pause_append_then_fail),
        store._write("reads", read_pause_and_append),
        return_exceptions=True,
    )
    assert isinstance(failed, RuntimeError)
    assert not isinstance(read, BaseException)
    seen_paused, appended = read
    assert seen_paused is False
    assert [r.seq for r in appended] == [1]  # the failed write's seq 1 was not kept
    assert not await store.is_paused()
    chain = await store.verify_audit()
    assert chain.intact and chain.checked == 1


async def test_audit_details_of_any_shape_read_back_as_hashed(store: state.SqlStateStore) -> None:
    """Plain details take the fast path; views and tuples are stored as what JSON reads back.
    Either way the returned record is the stored one, and the chain verifies."""
    import types

    appended = await store.append_audit(
        [
            event(details={"plain": [1, 2.5, "x", None, True], "nested": {"k": "v"}}),
            event(details=types.MappingProxyType({"view": (1, 2), "inner": {"t": ("a",)}})),
            event(details={}),
        ],
        now=1000.0,
    )
    stored = await all_audit(store)
    assert [r.event.details for r in stored] == [
        {"plain": [1, 2.5, "x", None, True], "nested": {"k": "v"}},
        {"view": [1, 2], "inner": {"t": ["a"]}},
        {},
    ]
    assert appended == stored
    assert (await store.verify_audit()).intact


async def test_breakers_and_storms_a_transaction_remembers_follow_its_own_writes(
    store: state.SqlStateStore,
) -> None:
    """Unclosed breakers and active storms are read once per transaction; a write to either
    within it must show in what the same transaction asks next."""
    from remediator.adapters.state import safeguards
    from remediator.core import safety
    from remediator.core.runs import StormKey

    policy = safety.BreakerPolicy(failures=1, reset_after=60.0)

    def within_one_transaction(conn: Any) -> list[object]:
        seen: list[object] = [safeguards.breaker_open(conn, "pb", "store-1", now=1000.0)]
        conn.execute(
            "INSERT INTO breakers (playbook, target, opened_at, closes_at) VALUES (?, ?, ?, ?)",
            ("pb", "", 990.0, 1001.0),
        )
        conn.memo.pop(safeguards.UNCLOSED_BREAKERS, None)  # as trip_breakers() does
        seen.append(safeguards.breaker_open(conn, "pb", "store-1", now=1000.0))
        seen.append(safeguards.breaker_open(conn, "other", "store-1", now=1000.0))
        seen.append(len(safeguards.expire_breakers(conn, now=1002.0)))
        seen.append(safeguards.breaker_open(conn, "pb", "store-1", now=1000.0))
        seen.append(safeguards.trip_breakers(conn, "pb", "store-2", policy, now=1003.0))
        storm = StormKey(playbook="pb", alertname="StoreDown")
        seen.append(safeguards.active_storm(conn, storm))
        safeguards.start_storm(conn, storm, targets=5, now=1003.0)
        storm_id = safeguards.active_storm(conn, storm)
        seen.append(storm_id is not None)
        assert storm_id is not None
        safeguards.end_storm(conn, storm_id, storm, targets=0, now=1004.0)
        seen.append(safeguards.active_storm(conn, storm))
        return seen

    seen, _ = await store._write("breakers", within_one_transaction)

    assert seen == [False, True, False, 1, False, [], None, True, None]


# SQLite schema migrations


def _sqlite_file_at_version(path: Path, version: int) -> sqlite3.Connection:
    """A file as an older remediator left it: the first ``version`` migrations applied."""
    from remediator.adapters.state.sqlite import MIGRATIONS

    conn = sqlite3.connect(path, isolation_level=None)
    for target, script in enumerate(MIGRATIONS[:version], start=1):
        conn.executescript(f"BEGIN;\n{script}\nPRAGMA user_version = {target};\nCOMMIT;")
    return conn


def _insert_v3_run(conn: sqlite3.Connection, run_id: str, fingerprint: str) -> None:
    conn.execute(
        "INSERT INTO runs (run_id, fingerprint, alert_starts_at, alert_status, alertname,"
        " playbook, target, status, dry_run, created_at)"
        " VALUES (?, ?, ?, 'firing', 'KubePodCrashLooping', 'restart-pod', 'shop/web',"
        " 'queued', 0, 1000.0)",
        (run_id, fingerprint, STARTS_AT),
    )


async def test_sqlite_version_3_file_keeps_its_alerts_and_runs_when_migrated(
    tmp_path: Path,
) -> None:
    path = tmp_path / "state.db"
    conn = _sqlite_file_at_version(path, 3)
    conn.execute(
        "INSERT INTO alerts (fingerprint, starts_at, status, alert, received_at)"
        " VALUES ('aaa1', ?, 'firing', ?, 999.0)",
        (STARTS_AT, '{"labels": {"alertname": "KubePodCrashLooping"}}'),
    )
    _insert_v3_run(conn, "r1", "aaa1")
    conn.close()

    async with state.SqliteStateStore(path) as store:
        detail = await store.get_run("r1")
        assert detail is not None
        assert detail.run.alert == {"labels": {"alertname": "KubePodCrashLooping"}}
        # The dedupe key survived the rebuild, and the queued runs of an alert are still found.
        (again,) = await store.admit([admission("aaa1")], now=1001.0)
        assert again.duplicate
        (resolved,) = await store.admit(
            [admission("aaa1", status=AlertStatus.RESOLVED, cancel=True)], now=1002.0
        )
        assert resolved.cancelled_runs == ("r1",)

    conn = sqlite3.connect(path)
    try:
        assert conn.execute("PRAGMA user_version").fetchone() == (state.SCHEMA_VERSION,)
        assert conn.execute("PRAGMA foreign_key_check").fetchall() == []
        (index,) = conn.execute(
            "SELECT sql FROM sqlite_schema WHERE name = 'runs_queued_by_fingerprint'"
        ).fetchone()
        assert index.endswith("WHERE status = 'queued'")
    finally:
        conn.close()


async def test_sqlite_migration_that_would_break_a_foreign_key_changes_nothing(
    tmp_path: Path,
) -> None:
    path = tmp_path / "state.db"
    conn = _sqlite_file_at_version(path, 3)
    _insert_v3_run(conn, "orphan", "no-such-alert")  # possible only with foreign keys off
    conn.close()

    with pytest.raises(
        state.StateError,
        match=(
            r"after migrating to schema version 4, 1 row\(s\) break a foreign key,"
            r" first in table 'runs'"
        ),
    ):
        await state.SqliteStateStore(path).open()

    conn = sqlite3.connect(path)
    try:
        assert conn.execute("PRAGMA user_version").fetchone() == (3,)
        (schema,) = conn.execute("SELECT sql FROM sqlite_schema WHERE name = 'alerts'").fetchone()
        assert "PRIMARY KEY (fingerprint, starts_at, status)" in schema
        assert conn.execute("SELECT run_id FROM runs").fetchall() == [("orphan",)]
    finally:
        conn.close()


async def test_sqlite_audit_indexes_hold_only_records_with_the_column(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    conn = _sqlite_file_at_version(path, 4)  # full indexes, as schema 4 left them
    conn.close()
    new = runs.NewRun(run_id="r1", playbook="restart-pod", target="shop/web")
    async with state.SqliteStateStore(path) as store:
        await store.admit([admission("aaa1", new_runs=(new,))], now=1000.0)
        by_target = await store.query_audit(runs.RunFilter(target="shop/web"))
        by_playbook = await store.query_audit(runs.RunFilter(playbook="restart-pod"))
        detail = await store.get_run("r1")
    assert detail is not None
    # The receipt has no run, playbook or target; the run's record has all three.
    assert [r.event.kind for r in detail.audit] == [runs.AuditKind.RUN_QUEUED]
    assert [r.event.kind for r in by_target.items] == [runs.AuditKind.RUN_QUEUED]
    assert [r.event.kind for r in by_playbook.items] == [runs.AuditKind.RUN_QUEUED]

    conn = sqlite3.connect(path)
    try:
        for index, column in (
            ("audit_by_run", "run_id"),
            ("audit_by_playbook", "playbook"),
            ("audit_by_target", "target"),
        ):
            (sql,) = conn.execute(
                "SELECT sql FROM sqlite_schema WHERE name = ?", (index,)
            ).fetchone()
            assert sql.endswith(f"WHERE {column} IS NOT NULL")
            # The store's lookups ("column = ?") still use the partial index.
            plan = " ".join(
                row[-1]
                for row in conn.execute(
                    f"EXPLAIN QUERY PLAN SELECT details FROM audit WHERE {column} = ?"  # noqa: S608
                    " ORDER BY seq",
                    ("x",),
                )
            )
            assert f"USING INDEX {index} ({column}=?)" in plan
            # One entry, the run's record: the receipt (NULLs) is not in it.
            (entries,) = conn.execute(
                f"SELECT COUNT(*) FROM audit INDEXED BY {index}"  # noqa: S608
                f" WHERE {column} IS NOT NULL"
            ).fetchone()
            assert (entries, conn.execute("SELECT COUNT(*) FROM audit").fetchone()[0]) == (1, 2)
    finally:
        conn.close()


class _Recording:
    """A real SQLite connection that keeps the statements a transaction function executes."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn
        self.appended: list[runs.AuditRecord] = []
        self.memo: dict[str, Any] = {}
        self.statements: list[tuple[str, tuple[Any, ...]]] = []

    def execute(self, sql: str, parameters: Any = (), /) -> sqlite3.Cursor:
        self.statements.append((sql, tuple(parameters)))
        return self.conn.execute(sql, parameters)


@pytest.mark.parametrize("scope", ["target", "playbook"])
async def test_sqlite_rate_counts_read_only_the_window_of_runs(tmp_path: Path, scope: str) -> None:
    from remediator.adapters.state import safeguards

    path = tmp_path / "state.db"
    async with state.SqliteStateStore(path) as store:
        # Runs on many targets, and statistics of them, as a daemon has.
        await store.admit(
            [
                admission(
                    f"a{i}",
                    new_runs=(
                        runs.NewRun(run_id=f"r{i}", playbook="restart-pod", target=f"shop/{i}"),
                    ),
                )
                for i in range(1000)
            ],
            now=1000.0,
        )
    recording = _Recording(sqlite3.connect(path, isolation_level=None))
    try:
        # Finished, one a second: the planner's statistics then favour (target, status).
        recording.conn.execute(
            "UPDATE runs SET status = 'succeeded', created_at = 1000.0 + id,"
            " finished_at = 1001.0 + id"
        )
        recording.conn.execute("ANALYZE")
        if scope == "target":
            counted = safeguards.count_runs(recording, since=2000.0, target="shop/999")
        else:
            counted = safeguards.count_runs(recording, since=2000.0, playbook="restart-pod")
        assert counted == 1  # the last run only
        ((sql, parameters),) = recording.statements
        plan = " ".join(
            row[-1] for row in recording.conn.execute(f"EXPLAIN QUERY PLAN {sql}", parameters)
        )
    finally:
        recording.conn.close()
    # A range of the (scope, created_at) index: the runs in the window, not all the target's.
    assert f"USING INDEX runs_by_{scope} ({scope}=? AND created_at>?)" in plan, plan
