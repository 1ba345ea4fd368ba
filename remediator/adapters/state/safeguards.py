"""SQL for the safety envelope, run inside the state store's transactions.

Each function takes the open connection of the caller's transaction, so a snapshot and the
decision written from it are atomic. The decisions themselves are in :mod:`remediator.core.safety`.
Expiry is lazy: an open breaker past its ``closes_at`` or a storm whose window has emptied is
closed by the next call that looks at it, which returns the audit events to record.
"""

from __future__ import annotations

import json

from remediator.adapters.state.connections import Connection
from remediator.core import safety
from remediator.core.runs import AuditEvent, AuditKind, Breaker, NewRun, StormKey

PAUSED_KEY = "safety.paused"
"""Namespaced, so a general setting called ``paused`` cannot collide with the kill switch."""
BREAKERS_EXPIRED_AT = "breakers_expired_at"
"""``conn.memo`` key: the ``now`` up to which this transaction already expired breakers."""
UNCLOSED_BREAKERS = "unclosed_breakers"
"""``conn.memo`` key: {(playbook, target): ((id, opened_at, closes_at), ...)} of the breakers
not yet closed, once this transaction has read them. Every write to ``breakers`` drops it, and it is
replaced, never changed in place, so a savepoint's rollback restores it with the memo."""
ACTIVE_STORMS = "active_storms"
"""``conn.memo`` key: {(playbook, alertname): id} of the storms not ended; like the above."""
SIGHTING_RETENTION = 86400.0
"""Seconds of sightings kept; longer than any sensible storm window."""
UNCOUNTED_STATUS = "cancelled"
"""Runs count against rate limits unless cancelled (they never acted). Said as "status is not
cancelled" in SQL, the planner reads the runs of a target (or playbook) in the window from its
(target, created_at) index; "status IN (eight others)" made it probe eight statuses of the
target, each through all its runs ever: 13 -> 6 us per alert, and no longer growing with the
target's history."""
JUDGED_STATUSES = ("succeeded", "failed", "unverified")
"""Outcomes a breaker judges; interrupted or rejected runs say nothing about the playbook."""


def paused(conn: Connection) -> dict[str, object] | None:
    if PAUSED_KEY in conn.memo:
        known: dict[str, object] | None = conn.memo[PAUSED_KEY]
        return None if known is None else dict(known)
    row = conn.execute("SELECT value FROM settings WHERE key = ?", (PAUSED_KEY,)).fetchone()
    state = None if row is None else dict(json.loads(row[0]))
    conn.memo[PAUSED_KEY] = state
    return None if state is None else dict(state)


def set_paused(conn: Connection, state: dict[str, object] | None) -> None:
    conn.memo[PAUSED_KEY] = None if state is None else dict(state)
    if state is None:
        conn.execute("DELETE FROM settings WHERE key = ?", (PAUSED_KEY,))
    else:
        conn.execute(
            "INSERT INTO settings (key, value) VALUES (?, ?)"
            " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            (PAUSED_KEY, json.dumps(state, sort_keys=True)),
        )


def record_sighting(conn: Connection, run: NewRun, alertname: str, now: float) -> None:
    conn.execute(
        "DELETE FROM sightings WHERE playbook = ? AND alertname = ? AND seen_at < ?",
        (run.playbook, alertname, now - SIGHTING_RETENTION),
    )
    conn.execute(
        "INSERT INTO sightings (playbook, alertname, target, seen_at) VALUES (?, ?, ?, ?)",
        (run.playbook, alertname, run.target, now),
    )


def storm_targets(
    conn: Connection, playbook: str, alertname: str, *, since: float, cap: int
) -> int:
    """Distinct targets in the window, counted up to ``cap`` only: past the storm threshold the
    exact number changes no decision, and counting all of them made every admission slower."""
    row = conn.execute(
        "SELECT COUNT(*) FROM (SELECT DISTINCT target FROM sightings"
        " WHERE playbook = ? AND alertname = ? AND seen_at >= ? LIMIT ?) AS seen",
        (playbook, alertname, since, cap),
    ).fetchone()
    return int(row[0])


def active_storm(conn: Connection, key: StormKey) -> int | None:
    # Read once per transaction: every admission asks, and storms are rare.
    active: dict[tuple[str, str], int] | None = conn.memo.get(ACTIVE_STORMS)
    if active is None:
        rows = conn.execute(
            "SELECT playbook, alertname, id FROM storms WHERE ended_at IS NULL ORDER BY id"
        ).fetchall()
        active = {(r[0], r[1]): int(r[2]) for r in rows}
        conn.memo[ACTIVE_STORMS] = active
    return active.get((key.playbook, key.alertname))


def start_storm(conn: Connection, key: StormKey, *, targets: int, now: float) -> AuditEvent:
    conn.memo.pop(ACTIVE_STORMS, None)
    conn.execute(
        "INSERT INTO storms (playbook, alertname, started_at, targets) VALUES (?, ?, ?, ?)",
        (key.playbook, key.alertname, now, targets),
    )
    return AuditEvent(
        kind=AuditKind.STORM_STARTED,
        playbook=key.playbook,
        alertname=key.alertname,
        outcome="started",
        details={"targets": targets},
    )


def end_storm(
    conn: Connection, storm_id: int, key: StormKey, *, targets: int, now: float
) -> AuditEvent:
    conn.memo.pop(ACTIVE_STORMS, None)
    conn.execute("UPDATE storms SET ended_at = ? WHERE id = ?", (now, storm_id))
    return AuditEvent(
        kind=AuditKind.STORM_ENDED,
        playbook=key.playbook,
        alertname=key.alertname,
        outcome="ended",
        details={"targets": targets},
    )


def active_storms(conn: Connection) -> list[StormKey]:
    rows = conn.execute(
        "SELECT DISTINCT playbook, alertname FROM storms WHERE ended_at IS NULL"
    ).fetchall()
    return [StormKey(playbook=r[0], alertname=r[1]) for r in rows]


def count_runs(
    conn: Connection,
    *,
    since: float,
    playbook: str | None = None,
    target: str | None = None,
) -> int:
    clauses, values = ["created_at >= ?"], [since]
    if playbook is not None:
        clauses.append("playbook = ?")
        values.append(playbook)  # type: ignore[arg-type]
    if target is not None:
        clauses.append("target = ?")
        values.append(target)  # type: ignore[arg-type]
    row = conn.execute(
        f"SELECT COUNT(*) FROM runs WHERE {' AND '.join(clauses)}"  # noqa: S608 - constants
        " AND status <> ?",
        (*values, UNCOUNTED_STATUS),
    ).fetchone()
    return int(row[0])


def last_finished_on_target(conn: Connection, target: str) -> float | None:
    row = conn.execute(
        "SELECT MAX(finished_at) FROM runs WHERE target = ? AND started_at IS NOT NULL",
        (target,),
    ).fetchone()
    return None if row[0] is None else float(row[0])


def expire_breakers(conn: Connection, *, now: float) -> list[AuditEvent]:
    """Close breakers whose time is up; the events say so."""
    # Once per transaction and time: a breaker opened since closes after ``now``.
    if conn.memo.get(BREAKERS_EXPIRED_AT, float("-inf")) >= now:
        return []
    conn.memo[BREAKERS_EXPIRED_AT] = now
    expired = sorted(
        (row_id, playbook, target, opened_at, closes_at)
        for (playbook, target), rows in _unclosed(conn).items()
        for row_id, opened_at, closes_at in rows
        if closes_at <= now
    )
    if expired:
        conn.memo.pop(UNCLOSED_BREAKERS)
    events = []
    for row_id, playbook, target, opened_at, closes_at in expired:
        conn.execute(
            "UPDATE breakers SET closed_at = ?, closed_by = ? WHERE id = ?",
            (closes_at, "timeout", row_id),
        )
        events.append(
            AuditEvent(
                kind=AuditKind.BREAKER_CLOSED,
                playbook=playbook,
                target=target or None,
                outcome="closed",
                reason="timeout",
                details={"opened_at": opened_at, "closed_by": "timeout"},
            )
        )
    return events


_Unclosed = dict[tuple[str, str], tuple[tuple[int, float, float], ...]]


def _unclosed(conn: Connection) -> _Unclosed:
    """The breakers not closed yet, read once per transaction (admission and claim ask for
    every run, and almost always there are none)."""
    unclosed: _Unclosed | None = conn.memo.get(UNCLOSED_BREAKERS)
    if unclosed is None:
        unclosed = {}
        for row in conn.execute(
            "SELECT playbook, target, id, opened_at, closes_at FROM breakers"
            " WHERE closed_at IS NULL ORDER BY id"
        ).fetchall():
            key = (row[0], row[1])
            unclosed[key] = (*unclosed.get(key, ()), (int(row[2]), row[3], row[4]))
        conn.memo[UNCLOSED_BREAKERS] = unclosed
    return unclosed


def breaker_open(conn: Connection, playbook: str, target: str, *, now: float) -> bool:
    # An expired breaker counts as closed even before expire_breakers() has marked it: a
    # read-only preview does not expire anything, and must decide as admit() will.
    unclosed = _unclosed(conn)
    if not unclosed:
        return False
    return any(
        closes_at > now
        for scope in (target, "")
        for _, _, closes_at in unclosed.get((playbook, scope), ())
    )


def open_breakers(conn: Connection, *, now: float) -> list[Breaker]:
    # closes_at as well: a read-only store (the CLI) cannot expire breakers first.
    rows = conn.execute(
        "SELECT playbook, target, opened_at, closes_at FROM breakers WHERE closed_at IS NULL"
        " AND closes_at > ? ORDER BY opened_at",
        (now,),
    ).fetchall()
    return [
        Breaker(playbook=r[0], target=r[1] or None, opened_at=r[2], closes_at=r[3]) for r in rows
    ]


def trip_breakers(
    conn: Connection,
    playbook: str,
    target: str,
    policy: safety.BreakerPolicy,
    *,
    now: float,
) -> list[Breaker]:
    """After a run finished: open the (playbook, target) and playbook breakers that trip."""
    opened = []
    for key in (target, ""):
        if (playbook, key) in _unclosed(conn):
            continue
        last_close = conn.execute(
            "SELECT MAX(closed_at) FROM breakers WHERE playbook = ? AND target = ?",
            (playbook, key),
        ).fetchone()[0]
        marks = ", ".join("?" * len(JUDGED_STATUSES))
        target_clause = "AND target = ?" if key else ""
        # A run taken over from a dead replica counts as a failure, whatever came after: its
        # automation lost track of a step mid-flight, and that must stop after a few times.
        rows = conn.execute(
            "SELECT CASE WHEN taken_over = 1 THEN 'failed' ELSE status END FROM runs"  # noqa: S608
            f" WHERE playbook = ? {target_clause}"
            f" AND (status IN ({marks}) OR taken_over = 1) AND finished_at > ?"
            " ORDER BY finished_at DESC, id DESC LIMIT ?",
            (
                playbook,
                *((key,) if key else ()),
                *JUDGED_STATUSES,
                last_close or 0.0,
                policy.failures,
            ),
        ).fetchall()
        if safety.breaker_trips(policy, [r[0] for r in rows]):
            closes_at = now + policy.reset_after
            conn.memo.pop(UNCLOSED_BREAKERS, None)
            conn.execute(
                "INSERT INTO breakers (playbook, target, opened_at, closes_at) VALUES (?, ?, ?, ?)",
                (playbook, key, now, closes_at),
            )
            opened.append(
                Breaker(playbook=playbook, target=key or None, opened_at=now, closes_at=closes_at)
            )
    return opened


def close_breakers(
    conn: Connection, playbook: str, target: str | None, *, by: str, now: float
) -> list[AuditEvent]:
    """An operator's reset; ``target`` None closes every breaker of the playbook."""
    if target is None:
        rows = conn.execute(
            "SELECT id, target FROM breakers WHERE playbook = ? AND closed_at IS NULL",
            (playbook,),
        ).fetchall()
    else:
        rows = conn.execute(
            "SELECT id, target FROM breakers WHERE playbook = ? AND target = ?"
            " AND closed_at IS NULL",
            (playbook, target),
        ).fetchall()
    if rows:
        conn.memo.pop(UNCLOSED_BREAKERS, None)
    events = []
    for row_id, key in rows:
        conn.execute(
            "UPDATE breakers SET closed_at = ?, closed_by = ? WHERE id = ?", (now, by, row_id)
        )
        events.append(
            AuditEvent(
                kind=AuditKind.BREAKER_CLOSED,
                playbook=playbook,
                target=key or None,
                outcome="closed",
                reason="operator_reset",
                details={"closed_by": by},
            )
        )
    return events


def snapshot(
    conn: Connection,
    run: NewRun,
    policy: safety.SafetyPolicy,
    alertname: str,
    *,
    now: float,
    known_targets: int | None,
) -> safety.Snapshot:
    """What the admission decision reads, but for the target's last finished run: the caller
    reads that only if :func:`safety.needs_last_finished` says the decision can depend on it."""
    return safety.Snapshot(
        paused=paused(conn) is not None,
        target_runs=count_runs(conn, since=now - policy.target_rate.window, target=run.target)
        if policy.target_rate
        else 0,
        playbook_runs=count_runs(
            conn, since=now - policy.playbook_rate.window, playbook=run.playbook
        )
        if policy.playbook_rate
        else 0,
        breaker_open=breaker_open(conn, run.playbook, run.target, now=now),
        storm_targets=storm_targets(
            conn,
            run.playbook,
            alertname,
            since=now - policy.storm.window,
            cap=safety.storm_count_cap(policy.storm, known=known_targets),
        )
        if policy.storm is not None
        else 0,
        known_targets=known_targets,
    )
