"""The state store's transactions, written once for both backends.

Each public function here is the body of one transaction: the backend opens it (SQLite's single
writer, or PostgreSQL under the writer lock), passes the connection in, and commits when the
function returns. SQL is the dialect both engines share (``?`` placeholders; the PostgreSQL
backend translates them). Time is always passed in as ``now`` (wall-clock epoch seconds).
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import dataclasses
import json
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NoReturn

from remediator.adapters.state import safeguards
from remediator.adapters.state.connections import Connection
from remediator.adapters.state.contract import (
    RunDetail,
    RunLostError,
    RunStateError,
    SafetyStatus,
    StateError,
    TargetBusyError,
    UnstorableError,
)
from remediator.core import auditing, errors, planning, runs, safety

UNFINISHED = tuple(str(s) for s in runs.RunStatus if not s.finished)
RUN_COLUMNS = (
    "r.id, r.run_id, r.playbook, r.target, r.status, r.fingerprint, r.alertname, a.alert,"
    " r.created_at, r.dry_run, r.started_at, r.finished_at, r.error"
)
RUNS_JOINED = (
    "runs r JOIN alerts a ON a.fingerprint = r.fingerprint"
    " AND a.starts_at = r.alert_starts_at AND a.status = r.alert_status"
)
AUDIT_HEAD = "audit_head"
"""``conn.memo`` key: (seq, hash) of the chain's last record, once this transaction knows it."""
AUDIT_COLUMNS = (
    "seq, time, kind, run_id, fingerprint, alertname, playbook, target, outcome, reason,"
    " details, prev_hash, hash"
)


# Intake


def admit(
    conn: Connection,
    batch: Sequence[runs.Admission],
    *,
    now: float,
    known_targets: int | None,
    owner: str | None,
) -> list[runs.AdmissionResult]:
    """Dedupe, then create each candidate run its safety policy allows; ``owner`` (the
    admitting replica) executes them unless its lease expires first."""
    append(conn, safeguards.expire_breakers(conn, now=now), now)
    return [_admit_one(conn, a, now, known_targets, owner) for a in batch]


def _admit_one(
    conn: Connection,
    admission: runs.Admission,
    now: float,
    known_targets: int | None,
    owner: str | None,
) -> runs.AdmissionResult:
    key = admission.key
    key_values = (key.fingerprint, key.starts_at, str(key.status))
    name = alertname(admission.alert)
    seen = conn.execute(
        "SELECT received_at FROM alerts WHERE fingerprint = ? AND starts_at = ? AND status = ?",
        key_values,
    ).fetchone()
    if seen is not None:
        earlier = [
            row[0]
            for row in conn.execute(
                "SELECT run_id FROM runs WHERE fingerprint = ? AND alert_starts_at = ?"
                " AND alert_status = ? ORDER BY id",
                key_values,
            )
        ]
        duplicate = runs.AuditEvent(
            kind=runs.AuditKind.ALERT_DUPLICATE,
            fingerprint=key.fingerprint,
            alertname=name,
            details={"first_seen": seen[0], "runs": earlier},
        )
        append(conn, [duplicate], now)
        return runs.AdmissionResult(key=key, duplicate=True)

    conn.execute(
        "INSERT INTO alerts (fingerprint, starts_at, status, alert, received_at)"
        " VALUES (?, ?, ?, ?, ?)",
        (*key_values, dumps(admission.alert), now),
    )
    append(conn, admission.events, now)
    cancelled: list[str] = []
    if admission.cancel_queued_runs:
        # Before inserting this admission's runs, so they can never be among the cancelled.
        cancelled.extend(cancel_queued(conn, key.fingerprint, now))
    created: list[str] = []
    refused: list[tuple[str, str]] = []
    storms: list[runs.StormKey] = []
    for new in admission.runs:
        if new.policy is not None:
            decision = _decide(
                conn, new, key, name, now, known_targets, owner, cancelled, storms, created
            )
            if decision.refusal is not None:
                refused.append((new.playbook, str(decision.refusal)))
                append(
                    conn,
                    [
                        planning.refused_event(
                            key, name, new, decision.refusal, dict(decision.details)
                        )
                    ],
                    now,
                )
                continue
        insert_run(conn, new, key, name, now, owner=owner)
        created.append(new.run_id)
    return runs.AdmissionResult(
        key=key,
        duplicate=False,
        created_runs=tuple(created),
        cancelled_runs=tuple(cancelled),
        refused=tuple(refused),
        storms_started=tuple(storms),
    )


def _decide(
    conn: Connection,
    new: runs.NewRun,
    key: Any,
    name: str,
    now: float,
    known_targets: int | None,
    owner: str | None,
    cancelled: list[str],
    storms: list[runs.StormKey],
    created: list[str],
) -> safety.Decision:
    """The admission decision for one candidate, with the storm bookkeeping it implies."""
    policy = new.policy
    assert policy is not None  # noqa: S101 - the caller decides only runs with a policy
    if str(key.status) == "firing" and policy.storm is not None:
        safeguards.record_sighting(conn, new, name, now)
    snapshot = safeguards.snapshot(conn, new, policy, name, now=now, known_targets=known_targets)
    decision = _decided(conn, safety.decide_admission, policy, snapshot, new.target, now=now)
    storm_key = runs.StormKey(playbook=new.playbook, alertname=name)
    storm_id = safeguards.active_storm(conn, storm_key)
    storming = safety.is_storm(policy.storm, targets=snapshot.storm_targets, known=known_targets)
    if storming and storm_id is None and not snapshot.paused:
        append(
            conn,
            [safeguards.start_storm(conn, storm_key, targets=snapshot.storm_targets, now=now)],
            now,
        )
        storms.append(storm_key)
        # Per-target remediation of this alert is suspended: runs not yet started go too.
        cancelled.extend(
            cancel_queued_where(
                conn,
                "playbook = ? AND alertname = ?",
                (new.playbook, name),
                reason="storm",
                now=now,
            )
        )
        if new.on_storm is not None:
            # The declared platform-level playbook runs once, instead of per-target runs.
            insert_run(conn, new.on_storm, key, name, now, owner=owner)
            created.append(new.on_storm.run_id)
    elif not storming and storm_id is not None:
        append(
            conn,
            [
                safeguards.end_storm(
                    conn, storm_id, storm_key, targets=snapshot.storm_targets, now=now
                )
            ],
            now,
        )
    return decision


def preview_admission(
    conn: Connection,
    run: runs.NewRun,
    policy: safety.SafetyPolicy,
    name: str,
    *,
    now: float,
    known_targets: int | None,
) -> safety.Decision:
    snapshot = safeguards.snapshot(conn, run, policy, name, now=now, known_targets=known_targets)
    if policy.storm is None:
        return _decided(conn, safety.decide_admission, policy, snapshot, run.target, now=now)
    seen = conn.execute(
        "SELECT 1 FROM sightings WHERE playbook = ? AND alertname = ? AND target = ?"
        " AND seen_at >= ?",
        (run.playbook, name, run.target, now - policy.storm.window),
    ).fetchone()
    if seen is None:  # admit() would record this sighting first
        snapshot = dataclasses.replace(snapshot, storm_targets=snapshot.storm_targets + 1)
    return _decided(conn, safety.decide_admission, policy, snapshot, run.target, now=now)


def _decided(
    conn: Connection,
    decide: Callable[..., safety.Decision],
    policy: safety.SafetyPolicy,
    snapshot: safety.Snapshot,
    target: str,
    *,
    now: float,
) -> safety.Decision:
    """``decide`` on ``snapshot``, reading the target's last finished run (a query through all
    of the target's runs) only when the decision can depend on it."""
    decision = decide(policy, snapshot, now=now)
    if not safety.needs_last_finished(policy, decision):
        return decision
    last = safeguards.last_finished_on_target(conn, target)
    return decide(policy, dataclasses.replace(snapshot, last_finished_on_target=last), now=now)


# Runs


def claim_run(
    conn: Connection,
    run_id: str,
    *,
    now: float,
    events: Sequence[runs.AuditEvent],
    policy: safety.SafetyPolicy | None,
    policy_for: Callable[[str], safety.SafetyPolicy | None] | None,
    record_start: bool,
    owner: str | None,
) -> runs.RunRecord | None:
    queued = find_run(conn, run_id)
    if queued is None or queued.status is not runs.RunStatus.QUEUED:
        return None
    # One run per target across replicas: the writer lock makes this check and the claim one.
    if conn.execute(
        "SELECT 1 FROM runs WHERE target = ? AND status IN (?, ?) LIMIT 1",
        (queued.target, str(runs.RunStatus.RUNNING), str(runs.RunStatus.AWAITING_APPROVAL)),
    ).fetchone():
        raise TargetBusyError(f"target {queued.target!r} has a run in progress")
    gate = (
        policy
        if policy is not None
        else (policy_for(queued.playbook) if policy_for is not None else None)
    )
    if gate is not None:
        append(conn, safeguards.expire_breakers(conn, now=now), now)
        snapshot = safety.Snapshot(
            paused=safeguards.paused(conn) is not None,
            breaker_open=safeguards.breaker_open(conn, queued.playbook, queued.target, now=now),
        )
        decision = _decided(conn, safety.decide_start, gate, snapshot, queued.target, now=now)
        if decision.refusal is not None:
            cancel_run(conn, run_id, str(decision.refusal), now, details=dict(decision.details))
            return None
    # The status condition is the lock: of two concurrent claims only one matches.
    claimed = conn.execute(
        "UPDATE runs SET status = ?, started_at = ?, owner = COALESCE(?, owner)"
        " WHERE run_id = ? AND status = ?",
        (str(runs.RunStatus.RUNNING), now, owner, run_id, str(runs.RunStatus.QUEUED)),
    ).rowcount
    if not claimed:
        return None
    record = dataclasses.replace(queued, status=runs.RunStatus.RUNNING, started_at=now)
    started = (
        [
            dataclasses.replace(
                run_event(runs.AuditKind.RUN_STARTED, record, ""),
                reason=None,
                details={"dry_run": record.dry_run},
            )
        ]
        if record_start
        else []
    )
    append(conn, [*started, *events], now)
    return record


def finish_run(
    conn: Connection,
    run_id: str,
    status: runs.RunStatus,
    *,
    now: float,
    error: str | None,
    events: Sequence[runs.AuditEvent],
    breaker: safety.BreakerPolicy | None,
    owner: str | None,
    step: runs.StepRecord | None = None,
) -> list[runs.Breaker]:
    taken_over = check_owner(conn, run_id, owner)
    if step is not None:
        insert_step(conn, step)
    transition(
        conn,
        run_id,
        to=status,
        allowed_from=UNFINISHED,
        assignments="finished_at = ?, error = ?, in_flight = NULL",
        values=(now, error),
    )
    append(conn, events, now)
    if breaker is None:
        return []
    # A breaker opens on the newest outcomes all being failures, and this one is the newest:
    # a success (or an outcome a breaker does not judge) can open none, unless the run was
    # taken over, which counts as a failure whatever came after.
    if status not in safety.FAILURES and not taken_over:
        return []
    # Close expired breakers first, or one past its time would still block a new trip.
    append(conn, safeguards.expire_breakers(conn, now=now), now)
    run = fetch_run(conn, run_id)
    opened = safeguards.trip_breakers(conn, run.playbook, run.target, breaker, now=now)
    append(
        conn,
        [
            runs.AuditEvent(
                kind=runs.AuditKind.BREAKER_OPENED,
                run_id=run_id,
                playbook=b.playbook,
                target=b.target,
                outcome="open",
                reason=f"{breaker.failures}_consecutive_failures",
                details={"closes_at": b.closes_at, "scope": "target" if b.target else "playbook"},
            )
            for b in opened
        ],
        now,
    )
    return opened


def record_step(
    conn: Connection,
    step: runs.StepRecord,
    *,
    events: Sequence[runs.AuditEvent],
    now: float,
    owner: str | None,
) -> None:
    check_owner(conn, step.run_id, owner)
    insert_step(conn, step)
    # The step is no longer in flight: a takeover from here on would not mark it unknown.
    conn.execute("UPDATE runs SET in_flight = NULL WHERE run_id = ?", (step.run_id,))
    append(conn, events, now)


def insert_step(conn: Connection, step: runs.StepRecord) -> None:
    conn.execute(
        "INSERT INTO steps (run_id, idx, phase, name, action, outcome, params, attempts,"
        " duration, started_at, error, output) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            step.run_id,
            step.index,
            step.phase,
            step.name,
            step.action,
            str(step.outcome),
            dumps(step.params),
            step.attempts,
            step.duration,
            step.started_at,
            step.error,
            dumps(step.output),
        ),
    )


def check_owner(conn: Connection, run_id: str, owner: str | None) -> bool:
    """Only the run's owner writes its steps and outcome; a replica that lost it must stop.
    Returns whether the run was taken over (False for an unknown run)."""
    row = conn.execute("SELECT owner, taken_over FROM runs WHERE run_id = ?", (run_id,)).fetchone()
    if row is None:
        return False
    if owner is not None and row[0] is not None and row[0] != owner:
        raise RunLostError(f"run {run_id!r} is now owned by replica {row[0]!r}")
    return bool(row[1])


def begin_step(
    conn: Connection, run_id: str, step: Mapping[str, Any] | None, *, owner: str | None
) -> str | None:
    """Right before a mutating step acts: None if it may, else why not (``paused``, or
    ``lost`` when another replica owns the run now). Marks the step in flight."""
    if safeguards.paused(conn) is not None:
        return "paused"
    row = conn.execute("SELECT owner, status FROM runs WHERE run_id = ?", (run_id,)).fetchone()
    if row is None or row[1] not in (
        str(runs.RunStatus.RUNNING),
        str(runs.RunStatus.AWAITING_APPROVAL),
    ):
        return "lost"
    if owner is not None and row[0] is not None and row[0] != owner:
        return "lost"
    if step is not None:
        conn.execute("UPDATE runs SET in_flight = ? WHERE run_id = ?", (dumps(step), run_id))
    return None


def queued_runs(conn: Connection) -> list[runs.RunRecord]:
    rows = conn.execute(
        f"SELECT {RUN_COLUMNS} FROM {RUNS_JOINED}"  # noqa: S608 -- constant fragments
        " WHERE r.status = ? ORDER BY r.created_at, r.id",
        (str(runs.RunStatus.QUEUED),),
    ).fetchall()
    return [decode_run(row) for row in rows]


def run_detail(conn: Connection, run_id: str) -> RunDetail | None:
    row = conn.execute(
        f"SELECT {RUN_COLUMNS} FROM {RUNS_JOINED} WHERE r.run_id = ?",  # noqa: S608
        (run_id,),
    ).fetchone()
    if row is None:
        return None
    steps = conn.execute("SELECT * FROM steps WHERE run_id = ? ORDER BY idx", (run_id,)).fetchall()
    audit = conn.execute(
        f"SELECT {AUDIT_COLUMNS} FROM audit WHERE run_id = ? ORDER BY seq",  # noqa: S608
        (run_id,),
    ).fetchall()
    return RunDetail(
        run=decode_run(row),
        steps=tuple(decode_step(s) for s in steps),
        audit=tuple(decode_audit(a) for a in audit),
    )


def list_runs(
    conn: Connection, flt: runs.RunFilter, *, limit: int, cursor: str | None
) -> runs.Page[runs.RunRecord]:
    check_limit(limit)
    clauses, params = equalities(
        "r.",
        playbook=flt.playbook,
        target=flt.target,
        status=flt.outcome,
        alertname=flt.alertname,
    )
    window(clauses, params, "r.created_at", flt)
    if cursor is not None:
        created_at, row_id = decode_run_cursor(cursor)
        # Keyset, not OFFSET: pages stay stable while new runs arrive at the head.
        clauses.append("(r.created_at, r.id) < (?, ?)")
        params.extend((created_at, row_id))
    where = " AND ".join(clauses) or "TRUE"
    rows = conn.execute(
        f"SELECT {RUN_COLUMNS} FROM {RUNS_JOINED} WHERE {where}"  # noqa: S608 -- placeholders only
        " ORDER BY r.created_at DESC, r.id DESC LIMIT ?",
        (*params, limit + 1),
    ).fetchall()
    page = rows[:limit]
    next_cursor = None
    if len(rows) > limit:
        last = page[-1]
        next_cursor = encode_run_cursor(last["created_at"], last["id"])
    return runs.Page(items=tuple(decode_run(r) for r in page), next_cursor=next_cursor)


# Replicas: leases, takeovers, approvals


def heartbeat(
    conn: Connection,
    replica_id: str,
    *,
    host: str,
    now: float,
    ttl: float,
    known_targets: int | None = None,
) -> int | None:
    """Renew this replica's lease: every run it owns stays its own until ``now + ttl``.

    ``known_targets``: how many targets this replica's discovery knows (the leader's, None on
    followers). Returns the largest count a live replica reported, so that every replica
    sizes storms by the leader's discovery.
    """
    conn.execute(
        "INSERT INTO replicas (replica_id, host, started_at, renewed_at, expires_at,"
        " known_targets) VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (replica_id) DO UPDATE"
        " SET renewed_at = excluded.renewed_at, expires_at = excluded.expires_at,"
        " known_targets = excluded.known_targets",
        (replica_id, host, now, now, now + ttl, known_targets),
    )
    row = conn.execute(
        "SELECT MAX(known_targets) FROM replicas WHERE expires_at > ?", (now,)
    ).fetchone()
    return None if row is None or row[0] is None else int(row[0])


def release(conn: Connection, replica_id: str) -> int:
    """A clean shutdown: hand the queued runs to whoever looks next; end the lease now."""
    released = conn.execute(
        "UPDATE runs SET owner = NULL WHERE owner = ? AND status = ?",
        (replica_id, str(runs.RunStatus.QUEUED)),
    ).rowcount
    conn.execute("DELETE FROM replicas WHERE replica_id = ?", (replica_id,))
    return released


def adopt(
    conn: Connection, replica_id: str, *, now: float, everyone_else: bool, starting: bool = False
) -> runs.Adoption:
    """Make this replica the owner of every unfinished run whose owner's lease has expired
    (with ``everyone_else``: of every other owner, for a single replica after a crash; with
    ``starting``: of its own id's as well, left by the previous process of that name).

    Queued runs simply change hands. A started run is taken over: its step in flight, if any,
    is recorded ``unknown``; ``run_taken_over`` says who had it and what was done.
    """
    # A replica without a live lease of its own must not take anything: what it took would
    # be an orphan again at once, and it may be the one the others already think dead.
    if not conn.execute(
        "SELECT 1 FROM replicas WHERE replica_id = ? AND expires_at > ?", (replica_id, now)
    ).fetchone():
        return runs.Adoption()
    conn.execute("DELETE FROM replicas WHERE expires_at <= ?", (now,))
    marks = ", ".join("?" * len(UNFINISHED))
    orphaned = (
        "(owner IS NULL OR owner != ?)"
        if everyone_else
        else "(owner IS NULL OR (owner != ? AND owner NOT IN (SELECT replica_id FROM replicas)))"
    )
    params: tuple[str, ...] = (*UNFINISHED, replica_id)
    if starting:
        # A process that is starting owns nothing yet: what its id owns, a previous process of
        # that name left (ha.replica_id set to the pod's name, and the container restarted).
        # Its own renewal keeps that lease alive, so no other replica would ever adopt them.
        orphaned = f"(owner = ? OR {orphaned})"
        params = (*UNFINISHED, replica_id, replica_id)
    rows = conn.execute(
        f"SELECT run_id, owner, status, in_flight FROM runs WHERE status IN ({marks})"  # noqa: S608
        f" AND {orphaned} ORDER BY created_at, id",
        params,
    ).fetchall()
    queued: list[runs.RunRecord] = []
    taken: list[runs.Takeover] = []
    for run_id, previous, status, in_flight in rows:
        if status == str(runs.RunStatus.QUEUED):
            conn.execute("UPDATE runs SET owner = ? WHERE run_id = ?", (replica_id, run_id))
            queued.append(fetch_run(conn, run_id))
            continue
        conn.execute(
            "UPDATE runs SET owner = ?, taken_over = 1, status = ?, in_flight = NULL"
            " WHERE run_id = ?",
            (replica_id, str(runs.RunStatus.RUNNING), run_id),
        )
        flying = json.loads(in_flight) if in_flight else None
        if flying is not None:
            _record_unknown(conn, run_id, flying, now)
        steps = tuple(
            decode_step(r)
            for r in conn.execute(
                "SELECT * FROM steps WHERE run_id = ? ORDER BY idx", (run_id,)
            ).fetchall()
        )
        record = fetch_run(conn, run_id)
        in_flight_name = flying["name"] if flying else None
        append(
            conn,
            [
                dataclasses.replace(
                    run_event(runs.AuditKind.RUN_TAKEN_OVER, record, "lease_expired"),
                    outcome="taken_over",
                    details={
                        "from": previous,
                        "by": replica_id,
                        "was": status,
                        "step_in_flight": in_flight_name,
                        "done": [s.name for s in steps if s.outcome != runs.StepOutcome.UNKNOWN],
                    },
                )
            ],
            now,
        )
        taken.append(
            runs.Takeover(
                run=record, previous_owner=previous, steps=steps, in_flight=in_flight_name
            )
        )
    return runs.Adoption(queued=tuple(queued), taken_over=tuple(taken))


def _record_unknown(conn: Connection, run_id: str, step: Mapping[str, Any], now: float) -> None:
    started = float(step["started_at"])
    insert_step(
        conn,
        runs.StepRecord(
            run_id=run_id,
            index=int(step["index"]),
            phase=str(step["phase"]),
            name=str(step["name"]),
            action=str(step["action"]),
            outcome=runs.StepOutcome.UNKNOWN,
            params=step.get("params", {}),
            attempts=0,
            duration=max(0.0, now - started),
            started_at=started,
            error="in flight when its replica stopped renewing its lease: outcome unknown",
        ),
    )


def disown(conn: Connection, run_id: str, owner: str) -> bool:
    """Give up a started run this replica can no longer record: it is adopted like an orphan."""
    return bool(
        conn.execute(
            "UPDATE runs SET owner = NULL WHERE run_id = ? AND owner = ?", (run_id, owner)
        ).rowcount
    )


def decide_approval(conn: Connection, run_id: str, decision: Mapping[str, Any]) -> bool:
    """The first decision on a run awaiting approval wins; False if there was none to take."""
    return bool(
        conn.execute(
            "UPDATE runs SET approval = ? WHERE run_id = ? AND status = ? AND approval IS NULL",
            (dumps(decision), run_id, str(runs.RunStatus.AWAITING_APPROVAL)),
        ).rowcount
    )


def approval_of(conn: Connection, run_id: str) -> dict[str, Any] | None:
    row = conn.execute("SELECT approval FROM runs WHERE run_id = ?", (run_id,)).fetchone()
    return None if row is None or row[0] is None else dict(json.loads(row[0]))


# Safety envelope


def set_paused(conn: Connection, paused: bool, *, by: str, reason: str, now: float) -> bool:
    current = safeguards.paused(conn)
    if (current is not None) == paused:
        return False
    safeguards.set_paused(conn, {"by": by, "reason": reason, "since": now} if paused else None)
    kind = runs.AuditKind.PAUSED if paused else runs.AuditKind.RESUMED
    append(
        conn,
        [
            runs.AuditEvent(
                kind=kind,
                outcome="paused" if paused else "resumed",
                reason=reason,
                details={"by": by, **({"paused_since": current["since"]} if current else {})},
            )
        ],
        now,
    )
    return True


def reset_breakers(
    conn: Connection, playbook: str, target: str | None, *, by: str, now: float
) -> int:
    events = safeguards.close_breakers(conn, playbook, target, by=by, now=now)
    append(conn, events, now)
    return len(events)


def safety_status(conn: Connection, *, now: float, expire: bool) -> SafetyStatus:
    if expire:
        append(conn, safeguards.expire_breakers(conn, now=now), now)
    return SafetyStatus(
        paused=safeguards.paused(conn),
        breakers=tuple(safeguards.open_breakers(conn, now=now)),
        storms=tuple(safeguards.active_storms(conn)),
    )


# Audit


def query_audit(
    conn: Connection, flt: runs.RunFilter, *, limit: int, cursor: str | None
) -> runs.Page[runs.AuditRecord]:
    check_limit(limit)
    clauses, params = equalities(
        "",
        playbook=flt.playbook,
        target=flt.target,
        outcome=flt.outcome,
        alertname=flt.alertname,
        kind=flt.kind,
    )
    window(clauses, params, "time", flt)
    if cursor is not None:
        clauses.append("seq > ?")
        params.append(decode_seq_cursor(cursor))
    where = " AND ".join(clauses) or "TRUE"
    rows = conn.execute(
        f"SELECT {AUDIT_COLUMNS} FROM audit WHERE {where}"  # noqa: S608 -- placeholders only
        " ORDER BY seq LIMIT ?",
        (*params, limit + 1),
    ).fetchall()
    page = rows[:limit]
    next_cursor = str(page[-1]["seq"]) if len(rows) > limit else None
    return runs.Page(items=tuple(decode_audit(r) for r in page), next_cursor=next_cursor)


# Settings


def get_setting(conn: Connection, key: str) -> str | None:
    row = conn.execute("SELECT value FROM settings WHERE key = ?", (key,)).fetchone()
    return None if row is None else str(row[0])


def put_setting(conn: Connection, key: str, value: str | None) -> None:
    conn.memo.pop(key, None)  # what a transaction remembers of a setting is under its key
    if value is None:
        conn.execute("DELETE FROM settings WHERE key = ?", (key,))
    else:
        conn.execute(
            "INSERT INTO settings (key, value) VALUES (?, ?)"
            " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            (key, value),
        )


def transition(
    conn: Connection,
    run_id: str,
    *,
    to: runs.RunStatus,
    allowed_from: Sequence[str],
    assignments: str = "",
    values: Sequence[object] = (),
) -> None:
    marks = ", ".join("?" * len(allowed_from))
    extra = f", {assignments}" if assignments else ""
    changed = conn.execute(
        f"UPDATE runs SET status = ?{extra} WHERE run_id = ? AND status IN ({marks})",  # noqa: S608
        (str(to), *values, run_id, *allowed_from),
    ).rowcount
    if changed:
        return
    row = conn.execute("SELECT status FROM runs WHERE run_id = ?", (run_id,)).fetchone()
    if row is None:
        raise RunStateError(f"no run {run_id!r}")
    raise RunStateError(f"run {run_id!r} is {row[0]}, it cannot become {to}")


def insert_run(
    conn: Connection,
    new: runs.NewRun,
    key: Any,
    alertname: str,
    now: float,
    *,
    owner: str | None,
) -> None:
    conn.execute(
        "INSERT INTO runs (run_id, fingerprint, alert_starts_at, alert_status, alertname,"
        " playbook, target, status, dry_run, created_at, owner)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            new.run_id,
            key.fingerprint,
            key.starts_at,
            str(key.status),
            alertname,
            new.playbook,
            new.target,
            str(runs.RunStatus.QUEUED),
            int(new.dry_run),
            now,
            owner,
        ),
    )
    append(conn, [planning.queued_event(key, alertname, new)], now)


def cancel_queued(conn: Connection, fingerprint: str, now: float) -> tuple[str, ...]:
    return tuple(
        cancel_queued_where(
            conn, "fingerprint = ?", (fingerprint,), reason="alert_resolved", now=now
        )
    )


def cancel_queued_where(
    conn: Connection, where: str, values: tuple[object, ...], *, reason: str, now: float
) -> list[str]:
    """Cancel the QUEUED runs matching ``where`` (a constant SQL fragment), oldest first."""
    ids = [
        row[0]
        for row in conn.execute(
            # The status as a literal: a bound value cannot use the index of queued runs.
            f"SELECT run_id FROM runs WHERE {where} AND status = '{runs.RunStatus.QUEUED}'"  # noqa: S608 - constant
            " ORDER BY created_at, id",
            values,
        )
    ]
    for run_id in ids:
        cancel_run(conn, run_id, reason, now)
    return ids


def cancel_run(
    conn: Connection,
    run_id: str,
    reason: str,
    now: float,
    details: Mapping[str, Any] | None = None,
) -> None:
    conn.execute(
        "UPDATE runs SET status = ?, finished_at = ?, error = ? WHERE run_id = ?",
        (str(runs.RunStatus.CANCELLED), now, reason, run_id),
    )
    event = run_event(runs.AuditKind.RUN_CANCELLED, fetch_run(conn, run_id), reason)
    if details:
        event = dataclasses.replace(event, details={**event.details, **details})
    append(conn, [event], now)


def run_event(kind: runs.AuditKind, run: runs.RunRecord, reason: str) -> runs.AuditEvent:
    return runs.AuditEvent(
        kind=kind,
        run_id=run.run_id,
        fingerprint=run.fingerprint,
        alertname=run.alertname,
        playbook=run.playbook,
        target=run.target,
        outcome=str(run.status),
        reason=reason,
    )


def find_run(conn: Connection, run_id: str) -> runs.RunRecord | None:
    row = conn.execute(
        f"SELECT {RUN_COLUMNS} FROM {RUNS_JOINED} WHERE r.run_id = ?",  # noqa: S608
        (run_id,),
    ).fetchone()
    return None if row is None else decode_run(row)


def fetch_run(conn: Connection, run_id: str) -> runs.RunRecord:
    found = find_run(conn, run_id)
    if found is None:
        raise RunStateError(f"no run {run_id!r}")
    return found


def alertname(alert: Mapping[str, Any]) -> str:
    labels = alert.get("labels")
    name = labels.get("alertname") if isinstance(labels, Mapping) else None
    return name if isinstance(name, str) else ""


# The chain


def append(
    conn: Connection, events: Sequence[runs.AuditEvent], now: float
) -> list[runs.AuditRecord]:
    """Extend the chain from the head as seen inside the caller's transaction."""
    if not events:
        return []
    # Stored as REAL and read back as float: an int ``now`` would hash as "1000", not "1000.0".
    now = float(now)
    head = conn.memo.get(AUDIT_HEAD)
    if head is None:
        head = conn.execute("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1").fetchone()
    seq, prev_hash = (head[0], head[1]) if head else (0, auditing.GENESIS_HASH)
    records = []
    for event in events:
        seq += 1
        if is_plain(event.details):
            plain = event
        else:
            # Hashed as they will be read back (plain dicts and lists), so the returned record
            # equals the stored one and re-hashing on verification gives the same digest.
            plain = dataclasses.replace(event, details=json.loads(dumps(event.details)))
        try:
            details = auditing.canonical_details(plain.details)
        except ValueError as e:
            raise UnstorableError(f"cannot store as JSON: {e}") from e
        record = auditing.seal(seq, now, plain, prev_hash, details_json=details)
        conn.execute(
            f"INSERT INTO audit ({AUDIT_COLUMNS}) VALUES ({', '.join('?' * 13)})",  # noqa: S608
            (
                seq,
                now,
                str(event.kind),
                event.run_id,
                event.fingerprint,
                event.alertname,
                event.playbook,
                event.target,
                event.outcome,
                event.reason,
                details,
                record.prev_hash,
                record.hash,
            ),
        )
        prev_hash = record.hash
        records.append(record)
    conn.memo[AUDIT_HEAD] = (seq, prev_hash)
    conn.appended.extend(records)
    return records


def audit_batch(conn: Connection, *, after: int, limit: int) -> list[Any]:
    return conn.execute(
        f"SELECT {AUDIT_COLUMNS} FROM audit WHERE seq > ? ORDER BY seq LIMIT ?",  # noqa: S608
        (after, limit),
    ).fetchall()


# Encoding


def dumps(value: object) -> str:
    try:
        return json.dumps(value, sort_keys=True, ensure_ascii=False, default=jsonable)
    except (TypeError, ValueError) as e:
        raise UnstorableError(f"cannot store as JSON: {e}") from e


def is_plain(value: object) -> bool:
    """Only what JSON reads back as itself: dicts with str keys, lists, str, numbers, None."""
    if type(value) is dict:
        return all(type(k) is str and is_plain(v) for k, v in value.items())
    if type(value) is list:
        return all(is_plain(v) for v in value)
    return type(value) in _PLAIN_SCALARS


_PLAIN_SCALARS = (str, int, float, bool, type(None))


def jsonable(value: object) -> object:
    # Read-only views (MappingProxyType) are common in our frozen types; json only knows dict.
    if isinstance(value, Mapping):
        return dict(value)
    raise TypeError(f"{type(value).__name__} is not JSON-serialisable")


def decode_run(row: Any) -> runs.RunRecord:
    try:
        return runs.RunRecord(
            run_id=row["run_id"],
            playbook=row["playbook"],
            target=row["target"],
            status=runs.RunStatus(row["status"]),
            fingerprint=row["fingerprint"],
            alertname=row["alertname"],
            alert=json.loads(row["alert"]),
            created_at=row["created_at"],
            dry_run=bool(row["dry_run"]),
            started_at=row["started_at"],
            finished_at=row["finished_at"],
            error=row["error"],
        )
    except ValueError as e:
        raise StateError(f"run {row['run_id']!r} is unreadable: {e}") from e


def decode_step(row: Any) -> runs.StepRecord:
    try:
        return runs.StepRecord(
            run_id=row["run_id"],
            index=row["idx"],
            phase=row["phase"],
            name=row["name"],
            action=row["action"],
            outcome=runs.StepOutcome(row["outcome"]),
            params=json.loads(row["params"]),
            attempts=row["attempts"],
            duration=row["duration"],
            started_at=row["started_at"],
            error=row["error"],
            output=json.loads(row["output"]),
        )
    except ValueError as e:
        raise StateError(f"step {row['idx']} of run {row['run_id']!r} is unreadable: {e}") from e


def decode_audit(row: Any) -> runs.AuditRecord:
    try:
        event = runs.AuditEvent(
            kind=runs.AuditKind(row["kind"]),
            run_id=row["run_id"],
            fingerprint=row["fingerprint"],
            alertname=row["alertname"],
            playbook=row["playbook"],
            target=row["target"],
            outcome=row["outcome"],
            reason=row["reason"],
            details=json.loads(row["details"]),
        )
    except ValueError as e:
        raise StateError(f"audit record {row['seq']} is unreadable: {e}") from e
    return runs.AuditRecord(
        seq=row["seq"], time=row["time"], event=event, prev_hash=row["prev_hash"], hash=row["hash"]
    )


# Query helpers


def equalities(prefix: str, **columns: str | None) -> tuple[list[str], list[object]]:
    """``column = ?`` for each filter that is set; ``prefix`` is the table alias, if any."""
    clauses: list[str] = []
    params: list[object] = []
    for name, value in columns.items():
        if value is not None:
            clauses.append(f"{prefix}{name} = ?")
            params.append(value)
    return clauses, params


def window(clauses: list[str], params: list[object], column: str, flt: runs.RunFilter) -> None:
    """``since`` inclusive, ``until`` exclusive, on ``column`` (a constant)."""
    if flt.since is not None:
        clauses.append(f"{column} >= ?")
        params.append(flt.since)
    if flt.until is not None:
        clauses.append(f"{column} < ?")
        params.append(flt.until)


def check_limit(limit: int) -> None:
    if limit < 1:
        bad_query("limit", "must be at least 1")


def encode_run_cursor(created_at: float, row_id: int) -> str:
    # repr() round-trips floats exactly, so the keyset comparison resumes at the same row.
    return base64.urlsafe_b64encode(f"{created_at!r}:{row_id}".encode()).decode()


def decode_run_cursor(cursor: str) -> tuple[float, int]:
    try:
        created_at, row_id = base64.urlsafe_b64decode(cursor.encode()).decode().split(":")
        return float(created_at), int(row_id)
    except (binascii.Error, UnicodeError, ValueError):
        bad_query("cursor", "is not a cursor this store issued")


def decode_seq_cursor(cursor: str) -> int:
    with contextlib.suppress(ValueError):
        return int(cursor)
    bad_query("cursor", "is not a cursor this store issued")


def bad_query(path: str, message: str) -> NoReturn:
    raise errors.InvalidInputError([errors.Problem(source="<query>", path=path, message=message)])
