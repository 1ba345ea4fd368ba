"""Alertmanager webhook payloads (version 4) as frozen types, and their strict parser.

Every entry of ``alerts[]`` becomes its own :class:`Alert`: groups are Alertmanager's batching,
not units of work. Parsing never trusts the body: it checks every field it reads and names the
first offending one by path (``alerts[3].labels.store_id``).
"""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any, NoReturn

from remediator.core.errors import PayloadError, Problem

SUPPORTED_VERSION = "4"
LABEL_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
FINGERPRINT = re.compile(r"^[0-9a-fA-F]{1,64}$")
MAX_LABEL_VALUE = 4096
# Alertmanager writes the zero time for "no end yet" while an alert fires.
ZERO_TIME_YEAR = 1


class AlertStatus(enum.StrEnum):
    FIRING = "firing"
    RESOLVED = "resolved"


@dataclass(frozen=True, slots=True, kw_only=True)
class DedupeKey:
    """What makes a delivery the same alert event: Alertmanager re-sends these unchanged."""

    fingerprint: str
    starts_at: str
    status: AlertStatus

    def __str__(self) -> str:
        return f"{self.fingerprint}/{self.starts_at}/{self.status}"


@dataclass(frozen=True, slots=True, kw_only=True)
class Alert:
    status: AlertStatus
    labels: Mapping[str, str]
    annotations: Mapping[str, str]
    starts_at: datetime
    ends_at: datetime | None
    generator_url: str
    fingerprint: str

    @property
    def name(self) -> str:
        return self.labels.get("alertname", "")

    @property
    def key(self) -> DedupeKey:
        return DedupeKey(
            fingerprint=self.fingerprint,
            starts_at=format_time(self.starts_at),
            status=self.status,
        )

    def to_json(self) -> dict[str, Any]:
        """The Alertmanager shape, for storage, templates and the audit log."""
        return {
            "status": str(self.status),
            "labels": dict(self.labels),
            "annotations": dict(self.annotations),
            "startsAt": format_time(self.starts_at),
            "endsAt": format_time(self.ends_at) if self.ends_at else None,
            "generatorURL": self.generator_url,
            "fingerprint": self.fingerprint,
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class Webhook:
    receiver: str
    status: AlertStatus
    alerts: tuple[Alert, ...]
    group_key: str
    group_labels: Mapping[str, str] = field(default_factory=dict)
    common_labels: Mapping[str, str] = field(default_factory=dict)
    common_annotations: Mapping[str, str] = field(default_factory=dict)
    external_url: str = ""
    truncated_alerts: int = 0


def format_time(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def parse_webhook(raw: object) -> Webhook:
    """Validate a decoded JSON body; raise :class:`PayloadError` naming the offending field."""
    reader = _Reader()
    body = reader.mapping(raw, "")
    version = reader.string(body.get("version"), "version")
    if version != SUPPORTED_VERSION:
        reader.fail("version", f"unsupported webhook version {version!r}, expected '4'")
    raw_alerts = body.get("alerts")
    if not isinstance(raw_alerts, list):
        reader.fail("alerts", "must be a list")
    raw_alerts = list(raw_alerts)
    alerts = tuple(_parse_alert(reader, item, f"alerts[{i}]") for i, item in enumerate(raw_alerts))
    truncated = body.get("truncatedAlerts", 0)
    if not isinstance(truncated, int) or isinstance(truncated, bool) or truncated < 0:
        reader.fail("truncatedAlerts", "must be a non-negative integer")
    return Webhook(
        receiver=reader.string(body.get("receiver"), "receiver"),
        status=reader.status(body.get("status"), "status"),
        alerts=alerts,
        group_key=reader.string(body.get("groupKey"), "groupKey"),
        group_labels=reader.labels(body.get("groupLabels", {}), "groupLabels"),
        common_labels=reader.labels(body.get("commonLabels", {}), "commonLabels"),
        common_annotations=reader.annotations(
            body.get("commonAnnotations", {}), "commonAnnotations"
        ),
        external_url=reader.string(body.get("externalURL", ""), "externalURL", empty_ok=True),
        truncated_alerts=truncated,
    )


def _parse_alert(reader: _Reader, raw: object, path: str) -> Alert:
    item = reader.mapping(raw, path)
    fingerprint = reader.string(item.get("fingerprint"), f"{path}.fingerprint")
    if not FINGERPRINT.fullmatch(fingerprint):
        reader.fail(f"{path}.fingerprint", "must be 1-64 hexadecimal characters")
    labels = reader.labels(item.get("labels"), f"{path}.labels")
    if "alertname" not in labels:
        reader.fail(f"{path}.labels.alertname", "is required")
    ends_at = reader.time(item.get("endsAt"), f"{path}.endsAt", optional=True, zero_ok=True)
    starts_at = reader.time(item.get("startsAt"), f"{path}.startsAt")
    assert starts_at is not None  # noqa: S101 - not optional, so fail() raised otherwise
    return Alert(
        status=reader.status(item.get("status"), f"{path}.status"),
        labels=labels,
        annotations=reader.annotations(item.get("annotations", {}), f"{path}.annotations"),
        starts_at=starts_at,
        ends_at=None if ends_at is None or ends_at.year == ZERO_TIME_YEAR else ends_at,
        generator_url=reader.string(
            item.get("generatorURL", ""), f"{path}.generatorURL", empty_ok=True
        ),
        fingerprint=fingerprint.lower(),
    )


class _Reader:
    """Typed field access that raises on the first bad field, with its path."""

    def fail(self, path: str, message: str) -> NoReturn:
        raise PayloadError([Problem(source="<webhook>", path=path, message=message)])

    def mapping(self, raw: object, path: str) -> Mapping[str, Any]:
        if not isinstance(raw, dict):
            self.fail(path or "body", "must be a JSON object")
        return raw

    def string(self, raw: object, path: str, *, empty_ok: bool = False) -> str:
        if raw is None:
            self.fail(path, "is required")
        if not isinstance(raw, str):
            self.fail(path, "must be a string")
        if not raw and not empty_ok:
            self.fail(path, "must not be empty")
        self._encodable(raw, path)
        return raw

    def _encodable(self, text: str, path: str) -> None:
        # JSON's \ud800 escapes decode to lone surrogates, which no UTF-8 store or log can
        # hold: refused here rather than failing (as a 5xx) when the alert is recorded.
        if not text.isascii():
            try:
                text.encode("utf-8")
            except UnicodeEncodeError:
                self.fail(path, "is not valid Unicode (lone surrogate)")

    def status(self, raw: object, path: str) -> AlertStatus:
        value = self.string(raw, path)
        try:
            return AlertStatus(value)
        except ValueError:
            self.fail(path, f"must be 'firing' or 'resolved', not {value!r}")

    def time(
        self, raw: object, path: str, *, optional: bool = False, zero_ok: bool = False
    ) -> datetime | None:
        """``zero_ok``: Alertmanager's zero time (year 1) is allowed in any zone."""
        if raw is None and optional:
            return None
        value = self.string(raw, path)
        try:
            moment = datetime.fromisoformat(value)
        except ValueError:
            self.fail(path, f"must be an RFC 3339 timestamp, not {value[:64]!r}")
        if moment.tzinfo is None:
            self.fail(path, "must carry a time zone")
        try:
            # Dedupe keys and records are in UTC; year 1 east of UTC or 9999 west of it has
            # no UTC datetime.
            moment.astimezone(UTC)
        except OverflowError:
            if not (zero_ok and moment.year == ZERO_TIME_YEAR):
                self.fail(path, "is out of range once converted to UTC")
        return moment

    def labels(self, raw: object, path: str) -> Mapping[str, str]:
        mapping = self.mapping(raw, path)
        for name, value in mapping.items():
            if not LABEL_NAME.fullmatch(name):
                self.fail(f"{path}.{name[:64]}", "is not a valid label name")
            self._value(value, f"{path}.{name}")
        return MappingProxyType(dict(mapping))

    def annotations(self, raw: object, path: str) -> Mapping[str, str]:
        mapping = self.mapping(raw, path)
        for name, value in mapping.items():
            self._encodable(name, f"{path}.{name[:64]!r}")
            self._value(value, f"{path}.{name[:64]}")
        return MappingProxyType(dict(mapping))

    def _value(self, value: object, path: str) -> None:
        if not isinstance(value, str):
            self.fail(path, "must be a string")
        elif len(value) > MAX_LABEL_VALUE:
            self.fail(path, f"is longer than {MAX_LABEL_VALUE} characters")
        self._encodable(value, path)
