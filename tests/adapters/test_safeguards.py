"""The safety envelope in the state store, on real SQLite files: rate limits, cooldown,
breakers, storms, the kill switch and previews, exact under concurrency and across restarts."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import itertools
from collections.abc import AsyncIterator
from typing import Any

import pytest

from remediator.adapters import state
from remediator.core import runs
from remediator.core.alerts import AlertStatus, DedupeKey
from remediator.core.safety import BreakerPolicy, RateLimit, SafetyPolicy, StormPolicy
from tests import state_fixtures

PLAYBOOK = "restart-store"
ALERTNAME = "StoreDown"
STARTS_AT = "2024-05-01T10:00:00.000Z"
# Only what a test turns on applies: no rates, no cooldown, storms out of reach.
OPEN = SafetyPolicy(
    target_rate=None,
    playbook_rate=None,
    cooldown=0.0,
    breaker=BreakerPolicy(failures=3, reset_after=3600.0),
    storm=StormPolicy(max_targets=10_000, max_percent=100.0, window=300.0),
)


def policy(**changes: Any) -> SafetyPolicy:
    return dataclasses.replace(OPEN, **changes)


@pytest.fixture
async def store(backend: state_fixtures.Backend) -> AsyncIterator[state.SqlStateStore]:
    async with backend.store() as opened:
        yield opened


class Feed:
    """Distinct alerts for one playbook, each with one candidate run, through one store."""

    def __init__(
        self,
        store: state.SqlStateStore,
        safety: SafetyPolicy,
        *,
        playbook: str = PLAYBOOK,
        first: int = 1,
    ) -> None:
        self.store = store
        self.safety = safety
        self.playbook = playbook
        # A Feed on a reopened store starts further on, so its fingerprints are new.
        self._numbers = itertools.count(first)

    def admission(
        self,
        target: str,
        *,
        alertname: str = ALERTNAME,
        status: AlertStatus = AlertStatus.FIRING,
    ) -> runs.Admission:
        fingerprint = f"{self.playbook}-{next(self._numbers):05d}"
        return runs.Admission(
            key=DedupeKey(fingerprint=fingerprint, starts_at=STARTS_AT, status=status),
            alert={
                "status": str(status),
                "labels": {"alertname": alertname, "store_id": target},
                "annotations": {},
                "startsAt": STARTS_AT,
                "endsAt": None,
                "generatorURL": "",
                "fingerprint": fingerprint,
            },
            runs=(
                runs.NewRun(
                    run_id=f"{fingerprint}-{status}",
                    playbook=self.playbook,
                    target=target,
                    policy=self.safety,
                ),
            ),
            events=(
                runs.AuditEvent(
                    kind=runs.AuditKind.ALERT_RECEIVED, fingerprint=fingerprint, alertname=alertname
                ),
            ),
        )

    async def admit(
        self,
        target: str,
        *,
        now: float,
        known_targets: int | None = None,
        alertname: str = ALERTNAME,
        status: AlertStatus = AlertStatus.FIRING,
    ) -> runs.AdmissionResult:
        (result,) = await self.store.admit(
            [self.admission(target, alertname=alertname, status=status)],
            now=now,
            known_targets=known_targets,
        )
        return result

    async def queue(self, target: str, *, now: float) -> str:
        result = await self.admit(target, now=now)
        (run_id,) = result.created_runs
        return run_id

    async def run(self, target: str, outcome: runs.RunStatus, *, now: float) -> list[runs.Breaker]:
        """Admit, start and finish one run; the breakers its outcome opened."""
        run_id = await self.queue(target, now=now)
        assert await self.store.claim_run(run_id, now=now, policy=self.safety) is not None
        return await self.store.finish_run(run_id, outcome, now=now, breaker=self.safety.breaker)


async def audit(
    store: state.SqlStateStore, kind: runs.AuditKind | None = None
) -> list[runs.AuditRecord]:
    return [r async for r in store.audit_records() if kind is None or r.event.kind is kind]


async def status_of(store: state.SqlStateStore, run_id: str) -> runs.RunStatus:
    detail = await store.get_run(run_id)
    assert detail is not None
    return detail.run.status


async def assert_chain_intact(store: state.SqlStateStore) -> None:
    report = await store.verify_audit()
    assert report.intact, report
    assert report.checked == len(await audit(store))


def table_sizes(backend: state_fixtures.Backend) -> dict[str, int]:
    with backend.raw() as conn:
        return {
            table: conn.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]  # noqa: S608
            for table in ("alerts", "runs", "audit", "sightings", "storms", "breakers", "settings")
        }


# Rate limits


@pytest.mark.parametrize("one_batch", [False, True], ids=["separate-posts", "one-post"])
async def test_target_rate_allows_exactly_max_runs(
    store: state.SqlStateStore, one_batch: bool
) -> None:
    feed = Feed(store, policy(target_rate=RateLimit(max_runs=3, window=3600.0)))
    admissions = [feed.admission("store-1") for _ in range(4)]

    if one_batch:
        results = await store.admit(admissions, now=1000.0)
    else:
        results = [(await store.admit([a], now=1000.0 + i))[0] for i, a in enumerate(admissions)]

    assert [len(r.created_runs) for r in results] == [1, 1, 1, 0]
    assert results[3].refused == ((PLAYBOOK, "target_rate_limited"),)
    assert await store.get_run(admissions[3].runs[0].run_id) is None
    (refused,) = await audit(store, runs.AuditKind.ALERT_NOT_RUN)
    assert refused.event.reason == "target_rate_limited"
    assert refused.event.fingerprint == admissions[3].key.fingerprint
    assert (refused.event.playbook, refused.event.target) == (PLAYBOOK, "store-1")
    assert refused.event.details == {"runs": 3, "max_runs": 3, "window": 3600.0}
    # The limit is per target: another store is unaffected.
    assert (await feed.admit("store-2", now=1010.0)).created_runs
    await assert_chain_intact(store)


async def test_playbook_rate_counts_runs_on_every_target(store: state.SqlStateStore) -> None:
    feed = Feed(store, policy(playbook_rate=RateLimit(max_runs=2, window=600.0)))
    other = Feed(store, feed.safety, playbook="scale-store")

    results = [await feed.admit(f"store-{i}", now=1000.0 + i) for i in range(3)]

    assert [bool(r.created_runs) for r in results] == [True, True, False]
    assert results[2].refused == ((PLAYBOOK, "playbook_rate_limited"),)
    (refused,) = await audit(store, runs.AuditKind.ALERT_NOT_RUN)
    assert refused.event.details == {"runs": 2, "max_runs": 2, "window": 600.0}
    # Another playbook has its own budget.
    assert (await other.admit("store-0", now=1010.0)).created_runs


@pytest.mark.parametrize(
    "limit", ["target_rate", "playbook_rate"], ids=["target-window", "playbook-window"]
)
async def test_rate_window_slides(store: state.SqlStateStore, limit: str) -> None:
    feed = Feed(store, policy(**{limit: RateLimit(max_runs=3, window=100.0)}))
    for at in (1000.0, 1010.0, 1020.0):
        await feed.queue("store-1", now=at)
    reason = f"{limit}_limited"

    # A run created exactly ``window`` ago still counts; a moment later it no longer does.
    assert (await feed.admit("store-1", now=1099.0)).refused == ((PLAYBOOK, reason),)
    assert (await feed.admit("store-1", now=1100.0)).refused == ((PLAYBOOK, reason),)
    assert (await feed.admit("store-1", now=1100.5)).created_runs
    # ...and the one just created fills the window again.
    assert (await feed.admit("store-1", now=1100.5)).refused == ((PLAYBOOK, reason),)
    assert (await feed.admit("store-1", now=1110.0)).refused == ((PLAYBOOK, reason),)
    assert (await feed.admit("store-1", now=1110.5)).created_runs


async def test_cancelled_runs_do_not_count_but_finished_ones_do(
    store: state.SqlStateStore,
) -> None:
    feed = Feed(store, policy(target_rate=RateLimit(max_runs=3, window=3600.0)))
    first = feed.admission("store-1")
    await store.admit([first], now=1000.0)
    done = await feed.queue("store-1", now=1001.0)
    await feed.queue("store-1", now=1002.0)
    assert await store.claim_run(done, now=1003.0) is not None
    await store.finish_run(done, runs.RunStatus.FAILED, now=1004.0)
    assert (await feed.admit("store-1", now=1005.0)).refused

    resolved = dataclasses.replace(
        first,
        key=dataclasses.replace(first.key, status=AlertStatus.RESOLVED),
        runs=(),
        cancel_queued_runs=True,
    )
    (result,) = await store.admit([resolved], now=1006.0)

    assert result.cancelled_runs == (first.runs[0].run_id,)
    assert (await feed.admit("store-1", now=1007.0)).created_runs
    assert (await feed.admit("store-1", now=1008.0)).refused


async def test_limits_survive_a_restart(backend: state_fixtures.Backend) -> None:
    safety = policy(
        target_rate=RateLimit(max_runs=3, window=3600.0),
        playbook_rate=RateLimit(max_runs=4, window=3600.0),
    )
    async with backend.store() as first:
        feed = Feed(first, safety)
        for i in range(3):
            await feed.queue("store-1", now=1000.0 + i)

    async with backend.store() as second:
        feed = Feed(second, safety, first=100)
        assert (await feed.admit("store-1", now=2000.0)).refused == (
            (PLAYBOOK, "target_rate_limited"),
        )
        assert (await feed.admit("store-2", now=2001.0)).created_runs
        assert (await feed.admit("store-3", now=2002.0)).refused == (
            (PLAYBOOK, "playbook_rate_limited"),
        )
        await assert_chain_intact(second)


# Cooldown


async def test_cooldown_refuses_admission_until_it_passes(store: state.SqlStateStore) -> None:
    feed = Feed(store, policy(cooldown=300.0))
    await feed.run("store-1", runs.RunStatus.SUCCEEDED, now=1000.0)

    refused = await feed.admit("store-1", now=1299.0)
    allowed = await feed.admit("store-1", now=1300.0)

    assert refused.refused == ((PLAYBOOK, "cooldown"),)
    assert allowed.created_runs
    (record,) = await audit(store, runs.AuditKind.ALERT_NOT_RUN)
    assert record.event.details == {"last_finished": 1000.0, "cooldown": 300.0, "remaining": 1.0}
    # Only the target that just ran is cooling down.
    assert (await feed.admit("store-2", now=1001.0)).created_runs


async def test_cooldown_refuses_a_queued_run_at_start(store: state.SqlStateStore) -> None:
    feed = Feed(store, policy(cooldown=300.0))
    first, second, third = [await feed.queue("store-1", now=1000.0) for _ in range(3)]
    assert await store.claim_run(first, now=1001.0, policy=feed.safety) is not None
    await store.finish_run(first, runs.RunStatus.SUCCEEDED, now=1100.0)

    assert await store.claim_run(second, now=1200.0, policy=feed.safety) is None
    claimed = await store.claim_run(third, now=1400.0, policy=feed.safety)

    assert claimed is not None
    assert claimed.status is runs.RunStatus.RUNNING
    detail = await store.get_run(second)
    assert detail is not None
    assert (detail.run.status, detail.run.error) == (runs.RunStatus.CANCELLED, "cooldown")
    assert detail.run.started_at is None
    (cancelled,) = await audit(store, runs.AuditKind.RUN_CANCELLED)
    assert (cancelled.event.run_id, cancelled.event.reason) == (second, "cooldown")
    assert cancelled.event.details["remaining"] == 200.0
    # Cancelled for good: it is no longer queued once the cooldown has passed.
    assert await store.claim_run(second, now=1500.0, policy=feed.safety) is None


# A burst of concurrent admissions


@pytest.mark.parametrize(
    ("target_rate", "playbook_rate", "stores"),
    [
        (RateLimit(max_runs=3, window=3600.0), RateLimit(max_runs=100, window=3600.0), 1),
        (RateLimit(max_runs=2, window=3600.0), None, 1),
        (RateLimit(max_runs=3, window=3600.0), RateLimit(max_runs=100, window=3600.0), 2),
    ],
    ids=["playbook-bound", "target-bound", "two-stores-one-file"],
)
async def test_a_burst_yields_exactly_the_permitted_runs(
    backend: state_fixtures.Backend,
    target_rate: RateLimit,
    playbook_rate: RateLimit | None,
    stores: int,
) -> None:
    safety = policy(target_rate=target_rate, playbook_rate=playbook_rate)
    async with contextlib.AsyncExitStack() as stack:
        opened = [await stack.enter_async_context(backend.store()) for _ in range(stores)]
        feed = Feed(opened[0], safety)
        alerts = [feed.admission(f"store-{i % 50:02d}") for i in range(1000)]
        batches = [alerts[i : i + 10] for i in range(0, 1000, 10)]

        returned = await asyncio.gather(
            *(opened[n % stores].admit(b, now=1000.0 + n * 0.01) for n, b in enumerate(batches))
        )

        store = opened[0]
        results = [r for batch in returned for r in batch]
        created = [run_id for r in results for run_id in r.created_runs]
        refused = collections.Counter(reason for r in results for _, reason in r.refused)
        assert len(created) == 100
        assert sum(refused.values()) == 900
        assert all(len(r.created_runs) + len(r.refused) == 1 for r in results)

        page = await store.list_runs(runs.RunFilter(), limit=2000)
        assert sorted(r.run_id for r in page.items) == sorted(created)
        per_target = collections.Counter(r.target for r in page.items)
        assert max(per_target.values()) <= target_rate.max_runs
        if playbook_rate is None:
            assert per_target == {f"store-{i:02d}": 2 for i in range(50)}
            assert refused == {"target_rate_limited": 900}
        else:
            # Which limit a candidate meets first depends on the order the batches ran in.
            assert set(refused) <= {"target_rate_limited", "playbook_rate_limited"}
            assert refused["playbook_rate_limited"] > 0

        not_run = await audit(store, runs.AuditKind.ALERT_NOT_RUN)
        assert collections.Counter(r.event.reason for r in not_run) == refused
        assert len(await audit(store, runs.AuditKind.RUN_QUEUED)) == 100
        report = await store.verify_audit()
        assert report.intact
        assert report.checked == 1000 + 100 + 900


# Breakers


async def test_k_consecutive_failures_on_a_target_open_its_breaker(
    store: state.SqlStateStore,
) -> None:
    feed = Feed(store, OPEN)
    # Successes elsewhere keep the playbook breaker closed: only store-1 keeps failing.
    opened = []
    for i in range(3):
        opened.append(await feed.run("store-1", runs.RunStatus.FAILED, now=1000.0 + 10 * i))
        await feed.run("store-2", runs.RunStatus.SUCCEEDED, now=1005.0 + 10 * i)

    assert opened[:2] == [[], []]
    assert opened[2] == [
        runs.Breaker(playbook=PLAYBOOK, target="store-1", opened_at=1020.0, closes_at=4620.0)
    ]
    (record,) = await audit(store, runs.AuditKind.BREAKER_OPENED)
    assert (record.event.target, record.event.outcome) == ("store-1", "open")
    assert record.event.reason == "3_consecutive_failures"
    assert record.event.details == {"closes_at": 4620.0, "scope": "target"}
    refused = await feed.admit("store-1", now=1100.0)
    assert refused.refused == ((PLAYBOOK, "breaker_open"),)
    assert (await feed.admit("store-2", now=1100.0)).created_runs
    status = await store.safety_status(now=1100.0)
    assert status.breakers == tuple(opened[2])


async def test_k_consecutive_failures_across_targets_open_the_playbook_breaker(
    store: state.SqlStateStore,
) -> None:
    feed = Feed(store, OPEN)

    opened = [
        await feed.run(
            f"store-{i}",
            runs.RunStatus.UNVERIFIED if i == 1 else runs.RunStatus.FAILED,
            now=1000.0 + i,
        )
        for i in range(3)
    ]

    assert opened == [
        [],
        [],
        [runs.Breaker(playbook=PLAYBOOK, target=None, opened_at=1002.0, closes_at=4602.0)],
    ]
    (record,) = await audit(store, runs.AuditKind.BREAKER_OPENED)
    assert (record.event.target, record.event.details["scope"]) == (None, "playbook")
    # Every target of the playbook is stopped; another playbook is not.
    assert (await feed.admit("store-9", now=1010.0)).refused == ((PLAYBOOK, "breaker_open"),)
    other = Feed(store, OPEN, playbook="scale-store")
    assert (await other.admit("store-9", now=1010.0)).created_runs


async def test_failures_on_one_target_open_both_breakers(store: state.SqlStateStore) -> None:
    feed = Feed(store, OPEN)

    opened = [await feed.run("store-1", runs.RunStatus.FAILED, now=1000.0 + i) for i in range(3)]

    assert [b.target for b in opened[2]] == ["store-1", None]
    assert len(await audit(store, runs.AuditKind.BREAKER_OPENED)) == 2


async def test_a_success_in_between_restarts_the_count(store: state.SqlStateStore) -> None:
    feed = Feed(store, OPEN)
    outcomes = [
        runs.RunStatus.FAILED,
        runs.RunStatus.FAILED,
        runs.RunStatus.SUCCEEDED,
        runs.RunStatus.FAILED,
        runs.RunStatus.UNVERIFIED,
        runs.RunStatus.INTERRUPTED,  # says nothing about the playbook: neither counts nor resets
        runs.RunStatus.FAILED,
    ]

    opened = [
        await feed.run("store-1", outcome, now=1000.0 + i) for i, outcome in enumerate(outcomes)
    ]

    assert [len(o) for o in opened] == [0, 0, 0, 0, 0, 0, 2]


async def test_an_open_breaker_cancels_a_queued_run_at_start(
    store: state.SqlStateStore,
) -> None:
    feed = Feed(store, dataclasses.replace(OPEN, breaker=BreakerPolicy(failures=1)))
    waiting = await feed.queue("store-1", now=1000.0)
    await feed.run("store-1", runs.RunStatus.FAILED, now=1001.0)

    assert await store.claim_run(waiting, now=1002.0, policy=feed.safety) is None

    assert await status_of(store, waiting) is runs.RunStatus.CANCELLED
    (cancelled,) = await audit(store, runs.AuditKind.RUN_CANCELLED)
    assert (cancelled.event.run_id, cancelled.event.reason) == (waiting, "breaker_open")


async def test_breaker_closes_by_itself_after_reset_after(store: state.SqlStateStore) -> None:
    feed = Feed(
        store, dataclasses.replace(OPEN, breaker=BreakerPolicy(failures=2, reset_after=600))
    )
    for i in range(2):
        await feed.run("store-1", runs.RunStatus.FAILED, now=1000.0 + i)  # opens at 1001

    assert (await feed.admit("store-1", now=1600.0)).refused == ((PLAYBOOK, "breaker_open"),)
    assert (await store.safety_status(now=1600.0)).breakers
    assert await audit(store, runs.AuditKind.BREAKER_CLOSED) == []
    assert (await feed.admit("store-1", now=1601.0)).created_runs

    closed = await audit(store, runs.AuditKind.BREAKER_CLOSED)
    assert sorted((r.event.target or "", r.event.reason) for r in closed) == [
        ("", "timeout"),
        ("store-1", "timeout"),
    ]
    assert all(r.event.details["closed_by"] == "timeout" for r in closed)
    assert all(r.time == 1601.0 for r in closed)
    assert (await store.safety_status(now=1601.0)).breakers == ()
    # The failures before it opened are spent: it takes two new ones to open it again.
    assert await feed.run("store-1", runs.RunStatus.FAILED, now=1700.0) == []
    assert len(await feed.run("store-1", runs.RunStatus.FAILED, now=1701.0)) == 2
    await assert_chain_intact(store)


async def test_an_expired_breaker_does_not_block_the_next_trip(
    store: state.SqlStateStore,
) -> None:
    feed = Feed(store, dataclasses.replace(OPEN, breaker=BreakerPolicy(failures=1, reset_after=60)))
    # One run per target: the run that fails late is on another target.
    late = await feed.queue("store-2", now=1000.0)
    assert await store.claim_run(late, now=1000.0, policy=feed.safety) is not None
    assert len(await feed.run("store-1", runs.RunStatus.FAILED, now=1001.0)) == 2

    # Nothing has looked at the breakers since they expired (at 1061) when this run fails.
    opened = await store.finish_run(
        late, runs.RunStatus.FAILED, now=1100.0, breaker=feed.safety.breaker
    )

    assert [(b.target, b.opened_at) for b in opened] == [("store-2", 1100.0), (None, 1100.0)]
    assert len(await audit(store, runs.AuditKind.BREAKER_CLOSED)) == 2


async def test_operator_reset_closes_breakers_and_restarts_the_count(
    store: state.SqlStateStore,
) -> None:
    feed = Feed(store, OPEN)
    for i in range(3):
        await feed.run("store-1", runs.RunStatus.FAILED, now=1000.0 + i)

    assert await store.reset_breakers(PLAYBOOK, "store-1", by="alice", now=1100.0) == 1
    # The playbook breaker is still open.
    assert (await feed.admit("store-1", now=1101.0)).refused == ((PLAYBOOK, "breaker_open"),)
    assert await store.reset_breakers(PLAYBOOK, None, by="bob", now=1102.0) == 1
    assert await store.reset_breakers(PLAYBOOK, None, by="bob", now=1103.0) == 0

    closed = await audit(store, runs.AuditKind.BREAKER_CLOSED)
    assert [(r.event.target, r.event.reason, r.event.details, r.time) for r in closed] == [
        ("store-1", "operator_reset", {"closed_by": "alice"}, 1100.0),
        (None, "operator_reset", {"closed_by": "bob"}, 1102.0),
    ]
    assert (await store.safety_status(now=1104.0)).breakers == ()
    assert (await feed.admit("store-1", now=1104.0)).created_runs
    assert await feed.run("store-1", runs.RunStatus.FAILED, now=1110.0) == []
    assert await feed.run("store-1", runs.RunStatus.FAILED, now=1111.0) == []
    assert len(await feed.run("store-1", runs.RunStatus.FAILED, now=1112.0)) == 2


async def test_breakers_survive_a_restart(backend: state_fixtures.Backend) -> None:
    async with backend.store() as first:
        feed = Feed(first, OPEN)
        for i in range(3):
            await feed.run("store-1", runs.RunStatus.FAILED, now=1000.0 + i)

    async with backend.store() as second:
        feed = Feed(second, OPEN, first=100)
        assert (await feed.admit("store-1", now=1100.0)).refused == ((PLAYBOOK, "breaker_open"),)
        assert len((await second.safety_status(now=1100.0)).breakers) == 2


# Storms


STORMY = policy(storm=StormPolicy(max_targets=5, max_percent=100.0, window=300.0))
STORM_KEY = runs.StormKey(playbook=PLAYBOOK, alertname=ALERTNAME)


async def test_the_sixth_target_starts_a_storm_exactly_once(store: state.SqlStateStore) -> None:
    feed = Feed(store, STORMY)
    queued = [await feed.queue(f"store-{i}", now=1000.0 + i) for i in range(1, 6)]
    started = await store.claim_run(queued[0], now=1005.0, policy=STORMY)
    assert started is not None

    sixth = await feed.admit("store-6", now=1006.0)
    seventh = await feed.admit("store-7", now=1007.0)
    again = await feed.admit("store-2", now=1008.0)

    assert sixth.storms_started == (STORM_KEY,)
    assert sixth.refused == ((PLAYBOOK, "storm"),)
    assert sixth.cancelled_runs == tuple(queued[1:])
    assert [await status_of(store, r) for r in queued] == [
        runs.RunStatus.RUNNING,  # already acting: a storm stops what has not started
        *[runs.RunStatus.CANCELLED] * 4,
    ]
    cancelled = await audit(store, runs.AuditKind.RUN_CANCELLED)
    assert [(r.event.run_id, r.event.reason) for r in cancelled] == [
        (r, "storm") for r in queued[1:]
    ]
    for later in (seventh, again):
        assert later.storms_started == ()
        assert later.refused == ((PLAYBOOK, "storm"),)
        assert later.cancelled_runs == ()
    (record,) = await audit(store, runs.AuditKind.STORM_STARTED)
    assert (record.event.playbook, record.event.alertname) == (PLAYBOOK, ALERTNAME)
    assert record.event.details == {"targets": 6}
    not_run = await audit(store, runs.AuditKind.ALERT_NOT_RUN)
    assert [(r.event.target, r.event.reason) for r in not_run] == [
        ("store-6", "storm"),
        ("store-7", "storm"),
        ("store-2", "storm"),
    ]
    assert not_run[0].event.details == {
        "targets": 6,
        "counted_up_to": 6,
        "known": None,
        "max_targets": 5,
        "max_percent": 100.0,
    }
    assert (await store.safety_status(now=1009.0)).storms == (STORM_KEY,)
    # Another alert of the same playbook is not part of this storm.
    assert (await feed.admit("store-1", now=1010.0, alertname="StoreSlow")).created_runs


async def test_a_storm_within_one_post_starts_once(store: state.SqlStateStore) -> None:
    feed = Feed(store, STORMY)
    batch = [feed.admission(f"store-{i}") for i in range(20)]

    results = await store.admit(batch, now=1000.0)

    assert [r.storms_started for r in results if r.storms_started] == [(STORM_KEY,)]
    assert results[5].storms_started == (STORM_KEY,)
    assert [len(r.created_runs) for r in results] == [1] * 5 + [0] * 15
    assert results[5].cancelled_runs == tuple(r.created_runs[0] for r in results[:5])
    assert await store.queued_runs() == []
    assert len(await audit(store, runs.AuditKind.STORM_STARTED)) == 1


async def test_storm_by_share_of_known_targets(store: state.SqlStateStore) -> None:
    share = policy(storm=StormPolicy(max_targets=100, max_percent=20.0, window=300.0))
    feed = Feed(store, share)

    # 2 of 10 stores is 20 %, not more: still normal.
    results = [await feed.admit(f"store-{i}", now=1000.0 + i, known_targets=10) for i in range(3)]
    unknown = [
        await feed.admit(f"store-{i}", now=1010.0 + i, known_targets=None, alertname="Other")
        for i in range(3)
    ]
    empty_fleet = [
        await feed.admit(f"store-{i}", now=1020.0 + i, known_targets=0, alertname="Third")
        for i in range(3)
    ]

    assert [r.storms_started for r in results] == [(), (), (STORM_KEY,)]
    assert results[2].refused == ((PLAYBOOK, "storm"),)
    (record,) = await audit(store, runs.AuditKind.ALERT_NOT_RUN)
    assert record.event.details == {
        "targets": 3,
        "counted_up_to": 3,
        "known": 10,
        "max_targets": 100,
        "max_percent": 20.0,
    }
    assert all(r.created_runs for r in unknown + empty_fleet)


async def test_a_storm_ends_when_its_window_empties(store: state.SqlStateStore) -> None:
    feed = Feed(store, STORMY)
    for i in range(1, 7):
        await feed.admit(f"store-{i}", now=1000.0 + i)  # the storm starts at 1006

    # Six targets still fall inside the window at 1301 (it reaches back to 1001).
    still = await feed.admit("store-7", now=1301.0)
    assert still.refused == ((PLAYBOOK, "storm"),)
    assert await audit(store, runs.AuditKind.STORM_ENDED) == []

    after = await feed.admit("store-8", now=1400.0)

    assert after.created_runs
    assert after.storms_started == ()
    (ended,) = await audit(store, runs.AuditKind.STORM_ENDED)
    assert (ended.event.playbook, ended.event.alertname, ended.time) == (
        PLAYBOOK,
        ALERTNAME,
        1400.0,
    )
    # Sightings since 1100: store-7 (1301) and store-8.
    assert ended.event.details == {"targets": 2}
    assert (await store.safety_status(now=1400.0)).storms == ()
    # A new wave is a new storm, escalated again.
    waves = [await feed.admit(f"store-{i}", now=1500.0 + i) for i in range(10, 14)]
    assert [w.storms_started for w in waves] == [(), (), (), (STORM_KEY,)]
    assert len(await audit(store, runs.AuditKind.STORM_STARTED)) == 2
    await assert_chain_intact(store)


async def test_resolved_alerts_are_not_sightings(store: state.SqlStateStore) -> None:
    feed = Feed(store, STORMY)

    results = [
        await feed.admit(f"store-{i}", now=1000.0 + i, status=AlertStatus.RESOLVED)
        for i in range(8)
    ]

    assert all(r.created_runs for r in results)
    assert await audit(store, runs.AuditKind.STORM_STARTED) == []


# The kill switch


async def test_pause_refuses_admissions_and_starts_until_resumed(
    backend: state_fixtures.Backend,
) -> None:
    async with backend.store() as store:
        feed = Feed(store, OPEN)
        waiting = await feed.queue("store-1", now=999.0)

        assert await store.set_paused(True, by="alice", reason="incident 42", now=1000.0)
        assert not await store.set_paused(True, by="carol", reason="again", now=1001.0)
        paused = feed.admission("store-2")
        (result,) = await store.admit([paused], now=1002.0)
        (duplicate,) = await store.admit([paused], now=1003.0)

        assert result.refused == ((PLAYBOOK, "paused"),)
        assert duplicate.duplicate  # the alert was still recorded for dedupe
        assert await store.claim_run(waiting, now=1004.0, policy=OPEN) is None
        assert await status_of(store, waiting) is runs.RunStatus.CANCELLED

    async with backend.store() as store:
        feed = Feed(store, OPEN, first=100)
        status = await store.safety_status(now=1100.0)
        assert status.paused == {"by": "alice", "reason": "incident 42", "since": 1000.0}
        assert (await feed.admit("store-3", now=1101.0)).refused == ((PLAYBOOK, "paused"),)

        assert await store.set_paused(False, by="bob", reason="resolved", now=1200.0)
        assert not await store.set_paused(False, by="bob", reason="resolved", now=1201.0)
        assert (await feed.admit("store-4", now=1202.0)).created_runs
        assert (await store.safety_status(now=1202.0)).paused is None

        records = await audit(store)
        toggles = [
            (r.event.kind, r.event.outcome, r.event.reason, r.event.details, r.time)
            for r in records
            if r.event.kind in (runs.AuditKind.PAUSED, runs.AuditKind.RESUMED)
        ]
        assert toggles == [
            (runs.AuditKind.PAUSED, "paused", "incident 42", {"by": "alice"}, 1000.0),
            (
                runs.AuditKind.RESUMED,
                "resumed",
                "resolved",
                {"by": "bob", "paused_since": 1000.0},
                1200.0,
            ),
        ]
        received = [
            r.event.fingerprint for r in records if r.event.kind is runs.AuditKind.ALERT_RECEIVED
        ]
        assert paused.key.fingerprint in received
        not_run = [
            (r.event.target, r.event.reason)
            for r in records
            if r.event.kind is runs.AuditKind.ALERT_NOT_RUN
        ]
        assert not_run == [("store-2", "paused"), ("store-3", "paused")]
        cancelled = [r for r in records if r.event.kind is runs.AuditKind.RUN_CANCELLED]
        assert [(r.event.run_id, r.event.reason) for r in cancelled] == [(waiting, "paused")]
        await assert_chain_intact(store)


async def test_a_paused_store_starts_no_storm(store: state.SqlStateStore) -> None:
    feed = Feed(store, STORMY)
    await store.set_paused(True, by="alice", reason="maintenance", now=999.0)

    results = [await feed.admit(f"store-{i}", now=1000.0 + i) for i in range(8)]

    assert all(r.refused == ((PLAYBOOK, "paused"),) for r in results)
    assert await audit(store, runs.AuditKind.STORM_STARTED) == []


# Preview


async def preview_then_admit(
    store: state.SqlStateStore,
    backend: state_fixtures.Backend,
    feed: Feed,
    target: str,
    *,
    now: float,
    known_targets: int | None = None,
) -> str | None:
    """The preview's refusal, after checking it wrote nothing and admit() agreed."""
    admission = feed.admission(target)
    before = table_sizes(backend)
    decision = await store.preview_admission(
        admission.runs[0], feed.safety, ALERTNAME, now=now, known_targets=known_targets
    )
    assert table_sizes(backend) == before
    (result,) = await store.admit([admission], now=now, known_targets=known_targets)
    previewed = None if decision.refusal is None else str(decision.refusal)
    assert [reason for _, reason in result.refused] == ([previewed] if previewed else [])
    assert bool(result.created_runs) is decision.allowed
    return previewed


async def test_preview_writes_nothing_and_agrees_with_admit(
    store: state.SqlStateStore, backend: state_fixtures.Backend
) -> None:
    safety = policy(
        target_rate=RateLimit(max_runs=2, window=1000.0),
        cooldown=50.0,
        breaker=BreakerPolicy(failures=1, reset_after=100.0),
        storm=StormPolicy(max_targets=3, max_percent=20.0, window=300.0),
    )
    feed = Feed(store, safety)

    async def step(target: str, now: float, known: int | None = None) -> str | None:
        return await preview_then_admit(store, backend, feed, target, now=now, known_targets=known)

    assert await step("store-1", 1000.0) is None
    assert await step("store-1", 1001.0) is None
    assert await step("store-1", 1002.0) == "target_rate_limited"
    first = (await store.queued_runs())[0].run_id
    assert await store.claim_run(first, now=1003.0, policy=safety) is not None
    await store.finish_run(first, runs.RunStatus.FAILED, now=1004.0, breaker=safety.breaker)
    assert await step("store-2", 1010.0) == "breaker_open"
    # Expired but not yet marked closed: the preview must not see it as open.
    assert await step("store-2", 1104.0) is None
    assert await step("store-3", 1105.0) is None
    assert await step("store-4", 1106.0) == "storm"
    assert await step("store-4", 1107.0) == "storm"  # a target already sighted
    assert await step("store-5", 1500.0) is None
    fifth = next(r.run_id for r in await store.queued_runs() if r.target == "store-5")
    assert await store.claim_run(fifth, now=1501.0, policy=safety) is not None
    await store.finish_run(fifth, runs.RunStatus.SUCCEEDED, now=1502.0, breaker=safety.breaker)
    assert await step("store-5", 1520.0) == "cooldown"
    await store.set_paused(True, by="alice", reason="test", now=1600.0)
    assert await step("store-6", 1601.0) == "paused"
    await store.set_paused(False, by="alice", reason="test", now=1700.0)
    # store-5 twice and store-6 in the window: 3 of 2 known stores is a storm by share.
    assert await step("store-7", 1701.0, known=2) == "storm"
    # Four targets in the window now: more than max_targets, whatever the fleet's size.
    assert await step("store-8", 1702.0, known=1000) == "storm"
    await assert_chain_intact(store)
