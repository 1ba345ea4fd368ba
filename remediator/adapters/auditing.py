"""Every audit record is also a structlog event, so log pipelines see what the audit log holds.

Receipts (an alert received, a re-delivery seen) are logged at debug, decisions and outcomes at
info: a receipt is the audit log's record of the input, and at info it doubled the lines per
alert without saying what was done about it. Alertmanager logs its own notifications at debug
too. Every record is in the audit log whatever the level.
"""

from __future__ import annotations

import logging

import structlog

from remediator.core.runs import AuditKind, AuditRecord

log = structlog.get_logger("remediator.audit")

RECEIPTS = frozenset({AuditKind.ALERT_RECEIVED, AuditKind.ALERT_DUPLICATE})
"""Kinds logged at debug; every other kind at info."""


def log_record(record: AuditRecord) -> None:
    event = record.event
    receipt = event.kind in RECEIPTS
    if receipt and not log.is_enabled_for(logging.DEBUG):
        return  # before the fields are gathered: most records are receipts
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
    emit = log.debug if receipt else log.info
    emit(str(event.kind), **fields, details=dict(event.details))
