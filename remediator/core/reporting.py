"""JSON shapes of runs, steps and audit records, shared by the API and the CLI."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from remediator.core.runs import AuditRecord, RunRecord, StepRecord


def timestamp(epoch: float | None) -> str | None:
    if epoch is None:
        return None
    moment = datetime.fromtimestamp(epoch, tz=UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def parse_timestamp(text: str) -> float:
    """RFC 3339 or epoch seconds → epoch seconds; ValueError otherwise."""
    try:
        return float(text)
    except ValueError:
        pass
    moment = datetime.fromisoformat(text)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def run_json(run: RunRecord) -> dict[str, Any]:
    return {
        "id": run.run_id,
        "playbook": run.playbook,
        "target": run.target,
        "status": str(run.status),
        "fingerprint": run.fingerprint,
        "alertname": run.alertname,
        "dry_run": run.dry_run,
        "created_at": timestamp(run.created_at),
        "started_at": timestamp(run.started_at),
        "finished_at": timestamp(run.finished_at),
        "error": run.error,
        "alert": dict(run.alert),
    }


def step_json(step: StepRecord) -> dict[str, Any]:
    return {
        "index": step.index,
        "phase": step.phase,
        "name": step.name,
        "action": step.action,
        "outcome": str(step.outcome),
        "attempts": step.attempts,
        "duration": round(step.duration, 3),
        "started_at": timestamp(step.started_at),
        "params": dict(step.params),
        "error": step.error,
        "output": dict(step.output),
    }


def audit_json(record: AuditRecord) -> dict[str, Any]:
    event = record.event
    return {
        "seq": record.seq,
        "time": timestamp(record.time),
        "kind": str(event.kind),
        "run_id": event.run_id,
        "fingerprint": event.fingerprint,
        "alertname": event.alertname,
        "playbook": event.playbook,
        "target": event.target,
        "outcome": event.outcome,
        "reason": event.reason,
        "details": dict(event.details),
        "prev_hash": record.prev_hash,
        "hash": record.hash,
    }
