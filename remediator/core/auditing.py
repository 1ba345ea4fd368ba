"""The audit log's hash chain: how a record is hashed and how a chain is checked.

Each record's hash covers its content and the previous record's hash, so changing, removing or
reordering any record breaks every hash after it. Pure functions; the store calls them.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from remediator.core.runs import AuditEvent, AuditRecord

GENESIS_HASH = "0" * 64


_CANONICAL = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False)
"""Sorted keys, no whitespace: one encoder, built once (``json.dumps`` builds one per call)."""


def canonical_details(details: Any) -> str:
    """Plain JSON values (dicts, lists, str, numbers, bools, None) in canonical form."""
    return _CANONICAL.encode(details)


def canonical_content(
    seq: int, time: float, event: AuditEvent, *, details_json: str | None = None
) -> str:
    """The exact bytes that are hashed: sorted keys, no whitespace, so any reader can re-hash.

    ``details_json``, when the caller has it, is ``canonical_details(event.details)``: it is
    spliced in rather than encoded a second time.
    """
    if details_json is None:
        details_json = canonical_details(event.details)
    # The keys in sorted order, each value as the canonical encoder writes it: formatting the
    # line directly costs a fifth of encoding (and sorting) a dict of the fields.
    return (
        f'{{"alertname":{_text(event.alertname)},"details":{details_json}'
        f',"fingerprint":{_text(event.fingerprint)},"kind":{_encode_string(str(event.kind))}'
        f',"outcome":{_text(event.outcome)},"playbook":{_text(event.playbook)}'
        f',"reason":{_text(event.reason)},"run_id":{_text(event.run_id)}'
        f',"seq":{seq!r},"target":{_text(event.target)}'
        f',"time":{round(time, 6)!r}}}'
    )


_encode_string = json.encoder.encode_basestring
"""A JSON string as the canonical encoder writes it (ensure_ascii=False): the same C function."""


def _text(value: str | None) -> str:
    return "null" if value is None else _encode_string(value)


def chain_hash(prev_hash: str, content: str) -> str:
    return hashlib.sha256(f"{prev_hash}\n{content}".encode()).hexdigest()


def seal(
    seq: int, time: float, event: AuditEvent, prev_hash: str, *, details_json: str | None = None
) -> AuditRecord:
    digest = chain_hash(prev_hash, canonical_content(seq, time, event, details_json=details_json))
    return AuditRecord(seq=seq, time=time, event=event, prev_hash=prev_hash, hash=digest)


@dataclass(frozen=True, slots=True, kw_only=True)
class ChainReport:
    checked: int
    first_broken: int | None = None
    """seq of the first record whose hash or link does not hold."""
    reason: str = ""
    head_seq: int = 0
    """The last intact record. The chain cannot show that records were cut off its end, so
    operators keep (seq, hash) elsewhere and compare: a lower seq, or another hash at that seq,
    means the log was truncated."""
    head_hash: str = GENESIS_HASH

    @property
    def intact(self) -> bool:
        return self.first_broken is None


def verify_chain(records: Iterable[AuditRecord]) -> ChainReport:
    """Check links, hashes and sequence numbers, in order, stopping at the first break."""
    expected_prev = GENESIS_HASH
    expected_seq: int | None = None
    checked = 0
    for record in records:
        if expected_seq is not None and record.seq != expected_seq:
            return ChainReport(
                checked=checked,
                first_broken=record.seq,
                reason=f"sequence gap: expected {expected_seq}, found {record.seq}",
            )
        if record.prev_hash != expected_prev:
            return ChainReport(
                checked=checked, first_broken=record.seq, reason="link to previous record broken"
            )
        recomputed = chain_hash(
            record.prev_hash, canonical_content(record.seq, record.time, record.event)
        )
        if recomputed != record.hash:
            return ChainReport(
                checked=checked, first_broken=record.seq, reason="content does not match its hash"
            )
        checked += 1
        expected_prev = record.hash
        expected_seq = record.seq + 1
    return ChainReport(checked=checked, head_seq=(expected_seq or 1) - 1, head_hash=expected_prev)
