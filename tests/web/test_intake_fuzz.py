"""Fuzzed webhooks against the real app, admitter and SQLite store (hypothesis).

Whatever arrives, every request is answered within a deadline with a 2xx, a 4xx carrying a
JSON message, or a 503 with Retry-After; never another 5xx. A refusal records nothing; an
acceptance records exactly its new alerts, each of which parses again as a valid alert; the
audit chain verifies at the end. The inputs hypothesis found breaking these rules are kept as
explicit cases at the bottom.

Examples are derandomized (the same inputs on every CI run) and bounded in number, so this
module takes seconds, not minutes.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import json
import sqlite3
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pytest_aiohttp import AiohttpClient

from remediator.core import alerts
from remediator.web import intake
from tests.web.conftest import WEBHOOK_TOKEN, Client, Engine, MakeEngine, recorded

URL = intake.WEBHOOK_PATH
REQUEST_DEADLINE = 10.0
"""Seconds one request may take before it counts as a hang."""
MAX_BODY = 16 * 1024

FUZZ = settings(
    max_examples=150,
    deadline=None,
    derandomize=True,
    database=None,
    # One engine (and store) per test, shared by its examples: each check compares the
    # state before and after its own request, so examples need no isolation.
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@dataclass(frozen=True, slots=True)
class Target:
    client: Client
    engine: Engine


@pytest.fixture
async def target(make_engine: MakeEngine, aiohttp_client: AiohttpClient) -> AsyncIterator[Target]:
    """The app with runs held at the gate, so only admissions write while a request is checked,
    and a large queue, so a 503 comes from the input rather than from earlier examples. Once
    the examples are done, the held runs finish and the audit chain must verify."""
    engine = await make_engine(queue_size=100_000, max_body_bytes=MAX_BODY)
    engine.gate.clear()
    yield Target(client=await aiohttp_client(intake.make_app(engine.services)), engine=engine)
    engine.gate.set()
    await engine.settle()
    report = await engine.store.verify_audit()
    assert report.intact, report


# Strategies

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=10,
)


def mostly(valid: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Nine times in ten a valid value, else any JSON value, so that a payload with a dozen
    fields still often gets past the parser, into admission and the store."""
    return st.one_of(*[valid] * 9, json_values)


label_names = st.from_regex(r"[a-zA-Z_][a-zA-Z0-9_]{0,12}", fullmatch=True)
label_values = st.one_of(
    st.from_regex(r"[a-z0-9-]{1,12}", fullmatch=True),
    st.text(max_size=40),
    # Lone surrogates too, which JSON's \ud800 escapes can carry and UTF-8 cannot.
    st.text(st.characters(exclude_categories=()), max_size=6),
    st.sampled_from(["{{ 7*7 }}", "{% raw %}", "a" * 5000, "store-platform", ".."]),
)
labels = st.builds(
    lambda name, store, extra: {"alertname": name, "store_id": store, **extra},
    st.sampled_from(["StoreDown", "PodCrash", "Other"]),
    label_values,
    st.dictionaries(label_names | st.text(max_size=8), label_values, max_size=3),
)
offsets = st.sampled_from(["Z", "+00:00", "+01:00", "-01:00", "+14:00", "-12:00", ""])
edges = st.datetimes(max_value=datetime(1, 1, 2)) | st.datetimes(min_value=datetime(9999, 12, 30))
moments = st.builds(
    lambda moment, offset: moment.isoformat() + offset,
    st.datetimes() | edges,  # near year 1 or 9999 some zones have no UTC equivalent
    offsets,
) | st.sampled_from(["0001-01-01T00:00:00Z", "2026-13-01T00:00:00Z", "now", ""])
fingerprints = st.from_regex(r"[0-9a-f]{16}", fullmatch=True) | st.text(max_size=70)
alert_objects = st.fixed_dictionaries(
    {
        "status": mostly(st.sampled_from(["firing", "resolved"])),
        "labels": mostly(labels),
        "startsAt": mostly(moments),
        "fingerprint": mostly(fingerprints),
    },
    optional={
        "annotations": mostly(st.dictionaries(st.text(max_size=10), st.text(max_size=20))),
        "endsAt": mostly(moments),
        "generatorURL": mostly(st.text(max_size=30)),
    },
)
webhooks = st.fixed_dictionaries(
    {
        "version": mostly(st.just("4")),
        "status": mostly(st.sampled_from(["firing", "resolved"])),
        "receiver": mostly(st.text(min_size=1, max_size=10)),
        "groupKey": mostly(st.text(min_size=1, max_size=10)),
        "alerts": mostly(st.lists(mostly(alert_objects), max_size=4)),
    },
    optional={
        "groupLabels": mostly(st.dictionaries(label_names, label_values, max_size=2)),
        "commonLabels": mostly(st.dictionaries(label_names, label_values, max_size=2)),
        "commonAnnotations": json_values,
        "externalURL": mostly(st.text(max_size=20)),
        "truncatedAlerts": mostly(st.integers(min_value=0, max_value=10)),
    },
)


@st.composite
def encoded(draw: st.DrawFn, value: st.SearchStrategy[Any]) -> bytes:
    """JSON text of a drawn value, ASCII-escaped or raw UTF-8 (lone surrogates left invalid)."""
    ascii_only = draw(st.booleans())
    text = json.dumps(draw(value), ensure_ascii=ascii_only)
    return text.encode("utf-8", "surrogatepass")


@st.composite
def mangled(draw: st.DrawFn) -> bytes:
    """A valid recorded payload, cut, spliced or with bytes replaced."""
    body = json.dumps(recorded("storedown-firing")).encode()
    start = draw(st.integers(0, len(body)))
    end = draw(st.integers(start, min(len(body), start + 40)))
    return body[:start] + draw(st.binary(max_size=12)) + body[end:]


header_text = st.text(
    st.characters(min_codepoint=0x20, max_codepoint=0x17F, exclude_characters="\x7f"),
    max_size=40,
)
authorizations = st.one_of(
    st.just(f"Bearer {WEBHOOK_TOKEN}"),
    st.just(f"Bearer {WEBHOOK_TOKEN}"),
    st.sampled_from(["", "Bearer", "Bearer ", f"bearer  {WEBHOOK_TOKEN} ", "Basic Zm9vOmJhcg=="]),
    st.builds(lambda t: f"Bearer {t}", header_text),
    header_text,
)
content_types = st.one_of(
    st.just("application/json"),
    st.sampled_from(
        [
            "application/json; charset=utf-8",
            "application/json; charset=latin-1",
            "application/json; charset",
            "APPLICATION/JSON",
            "text/plain",
            "multipart/form-data; boundary=x",
            "",
        ]
    ),
    header_text,
)
encodings = st.sampled_from([None, None, None, "identity", "gzip", "deflate", "br", "x-nope"])


@st.composite
def requests(draw: st.DrawFn, bodies: st.SearchStrategy[bytes]) -> tuple[bytes, dict[str, str]]:
    body = draw(bodies)
    headers = {"Authorization": draw(authorizations), "Content-Type": draw(content_types)}
    encoding = draw(encodings)
    if encoding is not None:
        headers["Content-Encoding"] = encoding
        if encoding == "gzip" and draw(st.booleans()):
            body = gzip.compress(body)
    return body, headers


# The check


def snapshot(engine: Engine) -> dict[str, int]:
    return {table: engine.rows(table) for table in ("alerts", "runs", "audit")}


def recorded_alerts(engine: Engine) -> list[tuple[str, str, str, str]]:
    with contextlib.closing(sqlite3.connect(engine.store.path)) as conn:
        return list(conn.execute("SELECT fingerprint, starts_at, status, alert FROM alerts"))


def assert_valid_record(fingerprint: str, starts_at: str, status: str, text: str) -> None:
    """A stored alert is one the parser accepts, under the dedupe key it is stored by."""
    envelope = {**recorded("storedown-firing"), "alerts": [json.loads(text)]}
    (alert,) = alerts.parse_webhook(envelope).alerts
    assert (alert.key.fingerprint, alert.key.starts_at, str(alert.key.status)) == (
        fingerprint,
        starts_at,
        status,
    )


async def check_request(target: Target, body: bytes, headers: dict[str, str]) -> int:
    client, engine = target.client, target.engine
    before = snapshot(engine)
    async with asyncio.timeout(REQUEST_DEADLINE):
        async with client.post(URL, data=body, headers=headers) as response:
            status, raw = response.status, await response.read()
            retry_after = response.headers.get("Retry-After")
            content_type = response.content_type
    assert 200 <= status < 300 or 400 <= status < 500 or status == 503, (status, raw[:300])
    after = snapshot(engine)
    if status == 400 and content_type == "text/plain" and "Content-Encoding" in headers:
        # aiohttp's HTTP parser refuses an encoding it cannot decode (br without Brotli, bad
        # deflate) before any handler runs, in plain text; nothing of ours saw the request.
        assert after == before
        return status
    answer = json.loads(raw)  # every answer of ours is JSON, refusals included
    assert isinstance(answer, dict)
    if status >= 400:
        assert isinstance(answer.get("message"), str)
        assert answer["message"]
        assert after == before, f"a {status} refusal recorded something"
        if status == 503:
            assert retry_after is not None
            assert retry_after.isdigit()
        return status
    new = answer["alerts"] - answer["duplicates"]
    assert after["alerts"] - before["alerts"] == new
    if new:
        for row in recorded_alerts(engine):
            assert_valid_record(*row)
    return status


# Fuzz tests


@FUZZ
@given(request=requests(encoded(webhooks)))
async def test_fuzzed_webhooks_get_a_clean_answer(
    target: Target, request: tuple[bytes, dict[str, str]]
) -> None:
    await check_request(target, *request)


@FUZZ
@given(request=requests(encoded(json_values) | mangled() | st.binary(max_size=300)))
async def test_fuzzed_bodies_get_a_clean_answer(
    target: Target, request: tuple[bytes, dict[str, str]]
) -> None:
    await check_request(target, *request)


# What the fuzzer found, and inputs next to it, kept as explicit cases.


def payload_with(**alert_fields: Any) -> bytes:
    payload = recorded("storedown-firing")
    payload["alerts"][0].update(alert_fields)
    return json.dumps(payload).encode()


JSON = {"Authorization": f"Bearer {WEBHOOK_TOKEN}", "Content-Type": "application/json"}


@pytest.mark.parametrize(
    ("body", "headers", "status"),
    [
        (b"[" * 5_000 + b"]" * 5_000, JSON, 400),
        (b'{"version": "4", "receiver": "\xff\xfe"}', JSON, 400),
        (b"\xef\xbb\xbf{}", JSON, 400),
        (payload_with(labels={"alertname": "StoreDown", "store_id": "\ud800"}), JSON, 400),
        (payload_with(annotations={"\udfff": "x"}), JSON, 400),
        (payload_with(startsAt="0001-01-01T00:00:00+01:00"), JSON, 400),
        (payload_with(startsAt="9999-12-31T23:59:59-01:00"), JSON, 400),
        (payload_with(endsAt="0001-01-01T00:30:00+01:00"), JSON, 200),
        (payload_with(), {**JSON, "Content-Encoding": "gzip"}, 400),
        (payload_with(), {**JSON, "Authorization": "Bearer wh-7c1e0b9d-secr\u00e9t"}, 401),
    ],
    ids=[
        "deep-nesting",
        "invalid-utf8",
        "utf8-bom",
        "lone-surrogate-label",
        "lone-surrogate-annotation-name",
        "year-1-east-of-utc",
        "year-9999-west-of-utc",
        "zero-ends-at-east-of-utc",
        "gzip-that-is-not",
        "non-ascii-token",
    ],
)
async def test_found_inputs_are_refused_cleanly(
    target: Target, body: bytes, headers: dict[str, str], status: int
) -> None:
    assert await check_request(target, body, headers) == status
