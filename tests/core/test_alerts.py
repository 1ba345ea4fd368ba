from __future__ import annotations

import copy
import json
import pathlib
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest

from remediator.core import alerts
from remediator.core.errors import PayloadError, Problem

PAYLOADS = pathlib.Path(__file__).parent / "payloads"
STARTS_AT = datetime(2026, 11, 26, 7, 12, 39, 391000, tzinfo=UTC)

Mutation = Callable[[dict[str, Any]], None]


def payload(name: str = "storedown-firing.json") -> dict[str, Any]:
    raw: dict[str, Any] = json.loads((PAYLOADS / name).read_text())
    return raw


def put(*path: str | int, value: object) -> Mutation:
    def mutate(body: dict[str, Any]) -> None:
        node: Any = body
        for part in path[:-1]:
            node = node[part]
        node[path[-1]] = value

    return mutate


def drop(*path: str | int) -> Mutation:
    def mutate(body: dict[str, Any]) -> None:
        node: Any = body
        for part in path[:-1]:
            node = node[part]
        del node[path[-1]]

    return mutate


def test_firing_payload_parses_to_its_values() -> None:
    webhook = alerts.parse_webhook(payload())

    assert webhook.receiver == "remediator"
    assert webhook.status is alerts.AlertStatus.FIRING
    assert webhook.group_key == '{}:{alertname="StoreDown", store_id="s1"}'
    assert dict(webhook.group_labels) == {"alertname": "StoreDown", "store_id": "s1"}
    assert dict(webhook.common_annotations) == {"summary": "Store s1 is down"}
    assert webhook.external_url == "http://vm:50209"
    assert webhook.truncated_alerts == 0
    [alert] = webhook.alerts
    assert alert.status is alerts.AlertStatus.FIRING
    assert alert.name == "StoreDown"
    assert alert.fingerprint == "46924153d5d81b9f"
    assert alert.starts_at == STARTS_AT
    assert alert.ends_at is None  # Alertmanager's zero time means "no end yet"
    assert dict(alert.labels) == {
        "alertname": "StoreDown",
        "instance": "127.0.0.1:35837",
        "job": "stores",
        "severity": "critical",
        "store_id": "s1",
    }
    assert dict(alert.annotations) == {"summary": "Store s1 is down"}
    assert alert.generator_url == "http://vm:40255/graph?g0.expr=store_up+%3D%3D+0&g0.tab=1"
    assert alert.key == alerts.DedupeKey(
        fingerprint="46924153d5d81b9f",
        starts_at="2026-11-26T07:12:39.391Z",
        status=alerts.AlertStatus.FIRING,
    )
    assert str(alert.key) == "46924153d5d81b9f/2026-11-26T07:12:39.391Z/firing"


def test_resolved_payload_parses_with_its_end_time() -> None:
    webhook = alerts.parse_webhook(payload("storedown-resolved.json"))

    assert webhook.status is alerts.AlertStatus.RESOLVED
    [alert] = webhook.alerts
    assert alert.status is alerts.AlertStatus.RESOLVED
    assert alert.starts_at == STARTS_AT
    assert alert.ends_at == datetime(2026, 11, 26, 7, 12, 41, 391000, tzinfo=UTC)
    assert str(alert.key) == "46924153d5d81b9f/2026-11-26T07:12:39.391Z/resolved"


def test_firing_and_resolved_deliveries_of_one_alert_have_different_keys() -> None:
    firing = alerts.parse_webhook(payload()).alerts[0]
    resolved = alerts.parse_webhook(payload("storedown-resolved.json")).alerts[0]

    assert firing.fingerprint == resolved.fingerprint
    assert firing.key != resolved.key


def test_redelivery_has_the_same_key() -> None:
    first = alerts.parse_webhook(payload()).alerts[0]
    again = alerts.parse_webhook(payload()).alerts[0]

    assert first.key == again.key
    assert hash(first.key) == hash(again.key)


def test_to_json_gives_the_alertmanager_shape_back() -> None:
    raw = payload("storedown-resolved.json")["alerts"][0]
    alert = alerts.parse_webhook(payload("storedown-resolved.json")).alerts[0]

    assert alert.to_json() == raw


def test_to_json_of_a_firing_alert_has_no_end() -> None:
    alert = alerts.parse_webhook(payload()).alerts[0]

    assert alert.to_json()["endsAt"] is None


def test_start_time_in_another_zone_keys_as_utc() -> None:
    body = payload()
    body["alerts"][0]["startsAt"] = "2026-11-26T09:12:39.391+02:00"

    alert = alerts.parse_webhook(body).alerts[0]

    assert alert.starts_at == STARTS_AT
    assert alert.key.starts_at == "2026-11-26T07:12:39.391Z"


def test_fingerprint_is_lowercased() -> None:
    body = payload()
    body["alerts"][0]["fingerprint"] = "46924153D5D81B9F"

    assert alerts.parse_webhook(body).alerts[0].fingerprint == "46924153d5d81b9f"


def test_every_alert_of_a_group_is_parsed() -> None:
    body = payload()
    second = copy.deepcopy(body["alerts"][0])
    second["fingerprint"] = "aa"
    second["labels"]["store_id"] = "s2"
    body["alerts"].append(second)

    parsed = alerts.parse_webhook(body).alerts

    assert [a.labels["store_id"] for a in parsed] == ["s1", "s2"]


def test_optional_fields_default() -> None:
    body = payload()
    for key in ("groupLabels", "commonLabels", "commonAnnotations", "externalURL"):
        del body[key]
    del body["truncatedAlerts"]
    for key in ("annotations", "generatorURL", "endsAt"):
        del body["alerts"][0][key]

    webhook = alerts.parse_webhook(body)

    assert webhook.truncated_alerts == 0
    assert webhook.external_url == ""
    assert dict(webhook.common_labels) == {}
    alert = webhook.alerts[0]
    assert alert.ends_at is None
    assert dict(alert.annotations) == {}
    assert alert.generator_url == ""


def test_zero_end_time_in_any_zone_means_no_end() -> None:
    body = payload()
    body["alerts"][0]["endsAt"] = "0001-01-01T00:30:00+01:00"

    (alert,) = alerts.parse_webhook(body).alerts

    assert alert.ends_at is None


def test_non_ascii_values_are_kept() -> None:
    body = payload()
    body["alerts"][0]["labels"]["store_id"] = "café-☕"

    (alert,) = alerts.parse_webhook(body).alerts

    assert alert.labels["store_id"] == "café-☕"


def test_parsing_does_not_change_its_input() -> None:
    body = payload()
    before = copy.deepcopy(body)

    alerts.parse_webhook(body)

    assert body == before


def test_labels_are_read_only() -> None:
    alert = alerts.parse_webhook(payload()).alerts[0]

    with pytest.raises(TypeError):
        alert.labels["store_id"] = "other"  # type: ignore[index]


BAD: list[tuple[str, Mutation, str, str]] = [
    (
        "version-3",
        put("version", value="3"),
        "version",
        "unsupported webhook version '3', expected '4'",
    ),
    ("version-missing", drop("version"), "version", "is required"),
    ("version-number", put("version", value=4), "version", "must be a string"),
    ("alerts-missing", drop("alerts"), "alerts", "must be a list"),
    ("alerts-object", put("alerts", value={"0": {}}), "alerts", "must be a list"),
    ("alert-not-object", put("alerts", 0, value="x"), "alerts[0]", "must be a JSON object"),
    (
        "fingerprint-missing",
        drop("alerts", 0, "fingerprint"),
        "alerts[0].fingerprint",
        "is required",
    ),
    (
        "fingerprint-empty",
        put("alerts", 0, "fingerprint", value=""),
        "alerts[0].fingerprint",
        "must not be empty",
    ),
    (
        "fingerprint-not-hex",
        put("alerts", 0, "fingerprint", value="not-hex"),
        "alerts[0].fingerprint",
        "must be 1-64 hexadecimal characters",
    ),
    (
        "fingerprint-trailing-newline",
        put("alerts", 0, "fingerprint", value="46924153d5d81b9f\n"),
        "alerts[0].fingerprint",
        "must be 1-64 hexadecimal characters",
    ),
    (
        "fingerprint-too-long",
        put("alerts", 0, "fingerprint", value="a" * 65),
        "alerts[0].fingerprint",
        "must be 1-64 hexadecimal characters",
    ),
    (
        "fingerprint-number",
        put("alerts", 0, "fingerprint", value=1234),
        "alerts[0].fingerprint",
        "must be a string",
    ),
    (
        "alert-status-unknown",
        put("alerts", 0, "status", value="pending"),
        "alerts[0].status",
        "must be 'firing' or 'resolved', not 'pending'",
    ),
    (
        "alert-status-missing",
        drop("alerts", 0, "status"),
        "alerts[0].status",
        "is required",
    ),
    (
        "webhook-status-unknown",
        put("status", value="FIRING"),
        "status",
        "must be 'firing' or 'resolved', not 'FIRING'",
    ),
    (
        "startsAt-garbage",
        put("alerts", 0, "startsAt", value="yesterday"),
        "alerts[0].startsAt",
        "must be an RFC 3339 timestamp, not 'yesterday'",
    ),
    (
        "startsAt-naive",
        put("alerts", 0, "startsAt", value="2026-11-26T07:12:39.391"),
        "alerts[0].startsAt",
        "must carry a time zone",
    ),
    (
        "startsAt-missing",
        drop("alerts", 0, "startsAt"),
        "alerts[0].startsAt",
        "is required",
    ),
    (
        "endsAt-garbage",
        put("alerts", 0, "endsAt", value="never"),
        "alerts[0].endsAt",
        "must be an RFC 3339 timestamp, not 'never'",
    ),
    (
        "labels-missing",
        drop("alerts", 0, "labels"),
        "alerts[0].labels",
        "must be a JSON object",
    ),
    (
        "label-name-invalid",
        put("alerts", 0, "labels", "store-id", value="s1"),
        "alerts[0].labels.store-id",
        "is not a valid label name",
    ),
    (
        "label-name-leading-digit",
        put("alerts", 0, "labels", "1store", value="s1"),
        "alerts[0].labels.1store",
        "is not a valid label name",
    ),
    (
        "label-name-trailing-newline",
        put("alerts", 0, "labels", "store\n", value="s1"),
        "alerts[0].labels.store\n",
        "is not a valid label name",
    ),
    (
        "label-value-number",
        put("alerts", 0, "labels", "store_id", value=1),
        "alerts[0].labels.store_id",
        "must be a string",
    ),
    (
        "label-value-null",
        put("alerts", 0, "labels", "store_id", value=None),
        "alerts[0].labels.store_id",
        "must be a string",
    ),
    (
        "label-value-too-long",
        put("alerts", 0, "labels", "store_id", value="x" * (alerts.MAX_LABEL_VALUE + 1)),
        "alerts[0].labels.store_id",
        f"is longer than {alerts.MAX_LABEL_VALUE} characters",
    ),
    (
        "annotation-value-list",
        put("alerts", 0, "annotations", "summary", value=["a"]),
        "alerts[0].annotations.summary",
        "must be a string",
    ),
    (
        "alertname-missing",
        drop("alerts", 0, "labels", "alertname"),
        "alerts[0].labels.alertname",
        "is required",
    ),
    (
        "truncatedAlerts-negative",
        put("truncatedAlerts", value=-1),
        "truncatedAlerts",
        "must be a non-negative integer",
    ),
    (
        "truncatedAlerts-boolean",
        put("truncatedAlerts", value=True),
        "truncatedAlerts",
        "must be a non-negative integer",
    ),
    ("receiver-missing", drop("receiver"), "receiver", "is required"),
    ("groupKey-empty", put("groupKey", value=""), "groupKey", "must not be empty"),
    (
        "commonLabels-not-object",
        put("commonLabels", value=[]),
        "commonLabels",
        "must be a JSON object",
    ),
    (
        "label-lone-surrogate",
        put("alerts", 0, "labels", "store_id", value="s\ud800"),
        "alerts[0].labels.store_id",
        "is not valid Unicode (lone surrogate)",
    ),
    (
        "receiver-lone-surrogate",
        put("receiver", value="\udfff"),
        "receiver",
        "is not valid Unicode (lone surrogate)",
    ),
    (
        "annotation-name-lone-surrogate",
        put("alerts", 0, "annotations", value={"\ud800": "x"}),
        "alerts[0].annotations.'\\ud800'",
        "is not valid Unicode (lone surrogate)",
    ),
    (
        "startsAt-year-1-east-of-utc",
        put("alerts", 0, "startsAt", value="0001-01-01T00:00:00+01:00"),
        "alerts[0].startsAt",
        "is out of range once converted to UTC",
    ),
    (
        "endsAt-year-9999-west-of-utc",
        put("alerts", 0, "endsAt", value="9999-12-31T23:30:00-01:00"),
        "alerts[0].endsAt",
        "is out of range once converted to UTC",
    ),
]


@pytest.mark.parametrize(
    ("mutate", "path", "message"),
    [case[1:] for case in BAD],
    ids=[case[0] for case in BAD],
)
def test_bad_payload_names_the_field(mutate: Mutation, path: str, message: str) -> None:
    body = payload()
    mutate(body)

    with pytest.raises(PayloadError) as caught:
        alerts.parse_webhook(body)

    assert caught.value.problems == (Problem(source="<webhook>", path=path, message=message),)


@pytest.mark.parametrize(
    "body",
    [[], "alerts", None, 4],
    ids=["list", "string", "null", "number"],
)
def test_body_must_be_an_object(body: object) -> None:
    with pytest.raises(PayloadError) as caught:
        alerts.parse_webhook(body)

    assert caught.value.problems == (
        Problem(source="<webhook>", path="body", message="must be a JSON object"),
    )


def test_problem_in_a_later_alert_names_its_index() -> None:
    body = payload()
    second = copy.deepcopy(body["alerts"][0])
    second["labels"]["store_id"] = 7
    body["alerts"].append(second)

    with pytest.raises(PayloadError) as caught:
        alerts.parse_webhook(body)

    assert [p.path for p in caught.value.problems] == ["alerts[1].labels.store_id"]


def test_over_long_bad_value_is_not_echoed_in_full() -> None:
    body = payload()
    body["alerts"][0]["startsAt"] = "x" * 10_000

    with pytest.raises(PayloadError) as caught:
        alerts.parse_webhook(body)

    assert len(str(caught.value)) < 200
