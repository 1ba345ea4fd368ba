"""Every audit record is also a structlog event: emitted after the commit, never before."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import structlog

from remediator.adapters import auditing, state
from remediator.core import runs
from remediator.core.alerts import AlertStatus, DedupeKey


def admission(fingerprint: str, run_id: str) -> runs.Admission:
    key = DedupeKey(
        fingerprint=fingerprint, starts_at="2026-11-26T07:12:39.391Z", status=AlertStatus.FIRING
    )
    return runs.Admission(
        key=key,
        alert={"labels": {"alertname": "StoreDown", "store_id": "s1"}},
        runs=(runs.NewRun(run_id=run_id, playbook="store-down", target="store-s1"),),
        events=(
            runs.AuditEvent(
                kind=runs.AuditKind.ALERT_RECEIVED,
                fingerprint=fingerprint,
                alertname="StoreDown",
                outcome="firing",
            ),
        ),
    )


async def test_committed_records_are_logged_with_their_fields(tmp_path: Path) -> None:
    async with state.SqliteStateStore(
        tmp_path / "state.sqlite", on_append=auditing.log_record
    ) as store:
        with structlog.testing.capture_logs() as logged:
            await store.admit([admission("aa01", "r1")], now=1000.0)

    assert [(e["event"], e["audit_seq"]) for e in logged] == [
        ("alert_received", 1),
        ("run_queued", 2),
    ]
    # The receipt at debug, the decision at info.
    assert logged[0]["log_level"] == "debug"
    queued = logged[1]
    assert queued["run_id"] == "r1"
    assert queued["playbook"] == "store-down"
    assert queued["target"] == "store-s1"
    assert queued["log_level"] == "info"


async def test_receipts_are_not_logged_at_info(tmp_path: Path) -> None:
    before = structlog.get_config()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.INFO))
    try:
        async with state.SqliteStateStore(
            tmp_path / "state.sqlite", on_append=auditing.log_record
        ) as store:
            with structlog.testing.capture_logs() as logged:
                await store.admit([admission("aa01", "r1")], now=1000.0)
    finally:
        structlog.configure(**before)

    assert [e["event"] for e in logged] == ["run_queued"]


async def test_a_failed_transaction_logs_nothing(tmp_path: Path) -> None:
    async with state.SqliteStateStore(
        tmp_path / "state.sqlite", on_append=auditing.log_record
    ) as store:
        await store.admit([admission("aa01", "r1")], now=1000.0)
        with structlog.testing.capture_logs() as logged, pytest.raises(state.StateError):
            # The same run id again: the whole batch rolls back, so nothing was recorded.
            await store.admit([admission("bb02", "r1")], now=1001.0)

    assert logged == []
