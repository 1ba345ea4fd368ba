from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from remediator.core import auditing
from remediator.core.runs import AuditEvent, AuditKind, AuditRecord

START = 1_780_000_000.0


def events() -> list[AuditEvent]:
    return [
        AuditEvent(kind=AuditKind.DAEMON_STARTED),
        AuditEvent(
            kind=AuditKind.ALERT_RECEIVED,
            fingerprint="46924153d5d81b9f",
            alertname="StoreDown",
            outcome="firing",
            details={"alert": {"labels": {"store_id": "s1"}}},
        ),
        AuditEvent(
            kind=AuditKind.RUN_QUEUED,
            run_id="r1",
            fingerprint="46924153d5d81b9f",
            alertname="StoreDown",
            playbook="store-down",
            target="store-s1",
            details={"dry_run": False},
        ),
        AuditEvent(kind=AuditKind.RUN_STARTED, run_id="r1", playbook="store-down"),
        AuditEvent(kind=AuditKind.RUN_FINISHED, run_id="r1", outcome="succeeded"),
    ]


def chain(first_seq: int = 1) -> list[AuditRecord]:
    records = []
    prev = auditing.GENESIS_HASH
    for offset, event in enumerate(events()):
        record = auditing.seal(first_seq + offset, START + offset, event, prev)
        records.append(record)
        prev = record.hash
    return records


def test_seal_links_to_the_previous_hash() -> None:
    records = chain()

    assert records[0].prev_hash == auditing.GENESIS_HASH
    assert [r.prev_hash for r in records[1:]] == [r.hash for r in records[:-1]]
    assert len({r.hash for r in records}) == len(records)


def test_seal_hashes_the_canonical_content_after_the_previous_hash() -> None:
    event = events()[1]

    record = auditing.seal(7, START, event, "ab" * 32)

    content = json.dumps(
        {
            "seq": 7,
            "time": START,
            "kind": "alert_received",
            "run_id": None,
            "fingerprint": "46924153d5d81b9f",
            "alertname": "StoreDown",
            "playbook": None,
            "target": None,
            "outcome": "firing",
            "reason": None,
            "details": {"alert": {"labels": {"store_id": "s1"}}},
        },
        sort_keys=True,
        separators=(",", ":"),
    )
    assert auditing.canonical_content(7, START, event) == content
    assert record.hash == hashlib.sha256(f"{'ab' * 32}\n{content}".encode()).hexdigest()


def test_intact_chain_verifies() -> None:
    records = chain()
    report = auditing.verify_chain(records)

    assert report == auditing.ChainReport(
        checked=5, head_seq=records[-1].seq, head_hash=records[-1].hash
    )
    assert report.intact


def test_empty_chain_is_intact() -> None:
    assert auditing.verify_chain([]) == auditing.ChainReport(
        checked=0, head_seq=0, head_hash=auditing.GENESIS_HASH
    )


def replace_event(index: int, **changes: object) -> Callable[[list[AuditRecord]], None]:
    def tamper(records: list[AuditRecord]) -> None:
        record = records[index]
        event = dataclasses.replace(record.event, **changes)  # type: ignore[arg-type]
        records[index] = dataclasses.replace(record, event=event)

    return tamper


def replace_record(index: int, **changes: object) -> Callable[[list[AuditRecord]], None]:
    def tamper(records: list[AuditRecord]) -> None:
        records[index] = dataclasses.replace(records[index], **changes)  # type: ignore[arg-type]

    return tamper


def swap(first: int, second: int) -> Callable[[list[AuditRecord]], None]:
    def tamper(records: list[AuditRecord]) -> None:
        records[first], records[second] = records[second], records[first]

    return tamper


def remove(index: int) -> Callable[[list[AuditRecord]], None]:
    def tamper(records: list[AuditRecord]) -> None:
        del records[index]

    return tamper


def reseal_from(index: int, tamper: Callable[[list[AuditRecord]], None]) -> Callable[..., None]:
    """Tamper, then recompute this record's own hash, as a forger without the next ones would."""

    def both(records: list[AuditRecord]) -> None:
        tamper(records)
        record = records[index]
        records[index] = auditing.seal(record.seq, record.time, record.event, record.prev_hash)

    return both


TAMPERING: list[tuple[str, Callable[[list[AuditRecord]], None], int, int, str]] = [
    (
        "content-outcome",
        replace_event(4, outcome="failed"),
        5,
        4,
        "content does not match its hash",
    ),
    (
        "content-details",
        replace_event(2, details={"dry_run": True}),
        3,
        2,
        "content does not match its hash",
    ),
    (
        "content-target",
        replace_event(2, target="store-s2"),
        3,
        2,
        "content does not match its hash",
    ),
    ("time", replace_record(1, time=START + 100), 2, 1, "content does not match its hash"),
    (
        "kind",
        replace_event(0, kind=AuditKind.DAEMON_STOPPED),
        1,
        0,
        "content does not match its hash",
    ),
    ("hash-itself", replace_record(3, hash="f" * 64), 4, 3, "content does not match its hash"),
    (
        "resealed-record-breaks-the-next-link",
        reseal_from(1, replace_event(1, outcome="resolved")),
        3,
        2,
        "link to previous record broken",
    ),
    ("broken-link", replace_record(2, prev_hash="0" * 64), 3, 2, "link to previous record broken"),
    (
        "first-not-linked-to-genesis",
        replace_record(0, prev_hash="1" * 64),
        1,
        0,
        "link to previous record broken",
    ),
    ("reordered", swap(1, 2), 3, 1, "sequence gap: expected 2, found 3"),
    ("record-removed", remove(2), 4, 2, "sequence gap: expected 3, found 4"),
    (
        "seq-changed",
        replace_record(3, seq=9),
        9,
        3,
        "sequence gap: expected 4, found 9",
    ),
]


@pytest.mark.parametrize(
    ("tamper", "broken_seq", "checked", "reason"),
    [case[1:] for case in TAMPERING],
    ids=[case[0] for case in TAMPERING],
)
def test_tampering_is_found_at_the_first_broken_record(
    tamper: Callable[[list[AuditRecord]], None], broken_seq: int, checked: int, reason: str
) -> None:
    records = chain()
    tamper(records)

    report = auditing.verify_chain(records)

    assert report == auditing.ChainReport(checked=checked, first_broken=broken_seq, reason=reason)
    assert not report.intact


def test_removing_the_first_records_breaks_the_genesis_link() -> None:
    report = auditing.verify_chain(chain()[2:])

    assert report.first_broken == 3
    assert report.checked == 0
    assert report.reason == "link to previous record broken"


def test_truncating_the_end_is_not_detectable_by_the_chain_alone() -> None:
    # The chain proves order and content, not how many records there should be: the report's
    # head is what a copy kept elsewhere is compared with to see that the end was cut off.
    records = chain()
    full = auditing.verify_chain(records)
    cut = auditing.verify_chain(records[:3])

    assert cut.intact
    assert cut.checked == 3
    assert (cut.head_seq, cut.head_hash) == (records[2].seq, records[2].hash)
    assert (full.head_seq, full.head_hash) == (records[-1].seq, records[-1].hash)


def test_chain_may_start_at_any_seq_when_linked_to_genesis() -> None:
    records = chain(first_seq=100)
    assert auditing.verify_chain(records) == auditing.ChainReport(
        checked=5, head_seq=104, head_hash=records[-1].hash
    )


def test_time_is_hashed_to_the_microsecond() -> None:
    event = events()[0]

    same = auditing.canonical_content(1, START + 1e-7, event)
    later = auditing.canonical_content(1, START + 1e-5, event)

    assert same == auditing.canonical_content(1, START, event)
    assert later != same


def test_non_ascii_details_are_hashed_as_written() -> None:
    event = AuditEvent(kind=AuditKind.RUN_FINISHED, details={"error": "störung — 障害"})

    assert "störung — 障害" in auditing.canonical_content(1, START, event)
    assert auditing.verify_chain([auditing.seal(1, START, event, auditing.GENESIS_HASH)]).intact


_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=12,
)
_maybe_text = st.none() | st.text(max_size=12)


@given(
    seq=st.integers(min_value=1, max_value=2**53),
    time=st.floats(min_value=0, max_value=4e9),
    kind=st.sampled_from(list(AuditKind)),
    fields=st.fixed_dictionaries(
        {
            name: _maybe_text
            for name in (
                "run_id",
                "fingerprint",
                "alertname",
                "playbook",
                "target",
                "outcome",
                "reason",
            )
        }
    ),
    details=st.dictionaries(st.text(), _json_values, max_size=5),
)
def test_spliced_content_is_the_whole_record_encoded_at_once(
    seq: int, time: float, kind: AuditKind, fields: dict[str, str | None], details: dict[str, Any]
) -> None:
    """The fast path (details encoded once and spliced in) hashes exactly the bytes the
    documented form gives: every key of the record, sorted, in one compact JSON object."""
    event = AuditEvent(kind=kind, details=details, **fields)
    whole = json.dumps(
        {
            "seq": seq,
            "time": round(time, 6),
            "kind": str(kind),
            **fields,
            "details": details,
        },
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
    )
    assert auditing.canonical_content(seq, time, event) == whole
    spliced = auditing.canonical_content(
        seq, time, event, details_json=auditing.canonical_details(details)
    )
    assert spliced == whole
