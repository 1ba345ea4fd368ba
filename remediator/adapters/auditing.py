"""Every audit record is also a structlog event, so log pipelines see what the audit log holds."""

from __future__ import annotations

import structlog

from remediator.core.runs import AuditRecord

log = structlog.get_logger("remediator.audit")


def log_record(record: AuditRecord) -> None:
    event = record.event
    fields = {
        key: value
        for key, value in {
            "audit_seq": record.seq,
            "run_id": event.run_id,
            "fingerprint": event.fingerprint,
            "alertname": event.alertname,
            "playbook": event.playbook,
            "target": event.target,
            "outcome": event.outcome,
            "reason": event.reason,
        }.items()
        if value is not None
    }
    log.info(str(event.kind), **fields, details=dict(event.details))
