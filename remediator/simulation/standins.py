"""Local stand-ins around remediator in the closed loop: the on-call channel it escalates to,
and, where Prometheus and Alertmanager are not installed, their two parts remediator meets.

- `EscalationReceiver`: a Slack-compatible incoming webhook (``notify.targets.<name>.url``)
  that keeps every message it gets and hands each to a callback (the demo prints them).
- `alertmanager_payload`: a webhook body shaped like Alertmanager 0.25's (v4), for posting an
  alert without Alertmanager.
- `MetricsQuery`: answers the store-up queries of the shipped playbooks on Prometheus'
  ``/api/v1/query`` from remediator's own ``/metrics``. It is no PromQL engine: any other
  query is refused as ``bad_data``, so a playbook that needs more fails loudly.
"""

from __future__ import annotations

import contextlib
import hashlib
import re
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import aiohttp
from aiohttp import web
from prometheus_client import parser

from remediator.simulation import serving

FIRING_ENDS_AT = "0001-01-01T00:00:00Z"
"""``endsAt`` of a firing alert in Alertmanager's webhook (Go's zero time)."""


# --- the on-call channel ------------------------------------------------------------------------


@dataclass(kw_only=True)
class EscalationReceiver:
    """Every message remediator sent, as received (``{"text": …, …}``); see `serve_receiver`."""

    url: str = ""
    """Base URL; the target ``NAME`` posts to ``{url}/hooks/NAME``."""
    messages: list[dict[str, Any]] = field(default_factory=list)
    on_message: Callable[[str, dict[str, Any]], None] | None = None
    """Called with (target name, body) for each message as it arrives."""

    def target_url(self, name: str) -> str:
        return f"{self.url}/hooks/{name}"

    async def _receive(self, request: web.Request) -> web.Response:
        body = await request.json()
        message = body if isinstance(body, dict) else {"text": str(body)}
        self.messages.append(message)
        if self.on_message is not None:
            self.on_message(request.match_info["target"], message)
        return web.json_response({"ok": True})


@contextlib.asynccontextmanager
async def serve_receiver(
    on_message: Callable[[str, dict[str, Any]], None] | None = None, *, host: str = "127.0.0.1"
) -> AsyncIterator[EscalationReceiver]:
    receiver = EscalationReceiver(on_message=on_message)
    app = web.Application()
    app.router.add_post("/hooks/{target}", receiver._receive)
    async with serving.serve_app(app, host=host) as url:
        receiver.url = url
        yield receiver


# --- Alertmanager's webhook body ----------------------------------------------------------------


def rfc3339(moment: float) -> str:
    stamp = datetime.fromtimestamp(moment, UTC).isoformat(timespec="milliseconds")
    return stamp.replace("+00:00", "Z")


def fingerprint(labels: Mapping[str, str]) -> str:
    """16 hex digits derived from the label set, stable like Alertmanager's (not equal to it)."""
    identity = "\xff".join(f"{k}\xfe{v}" for k, v in sorted(labels.items()))
    return hashlib.sha256(identity.encode()).hexdigest()[:16]


def alertmanager_payload(
    labels: Mapping[str, str],
    *,
    status: str,
    starts_at: float,
    ends_at: float | None = None,
    annotations: Mapping[str, str] | None = None,
    group_by: tuple[str, ...] = ("alertname", "store_id"),
    external_url: str = "http://alertmanager.invalid",
) -> dict[str, Any]:
    """One alert in a v4 webhook body, as Alertmanager groups and sends it
    (compare ``remediator/examples/storedown-firing.json``)."""
    group = {k: labels[k] for k in group_by if k in labels}
    alert = {
        "status": status,
        "labels": dict(labels),
        "annotations": dict(annotations or {}),
        "startsAt": rfc3339(starts_at),
        "endsAt": rfc3339(ends_at) if status == "resolved" and ends_at else FIRING_ENDS_AT,
        "generatorURL": "",
        "fingerprint": fingerprint(labels),
    }
    return {
        "receiver": "remediator",
        "status": status,
        "alerts": [alert],
        "groupLabels": group,
        "commonLabels": dict(labels),
        "commonAnnotations": dict(annotations or {}),
        "externalURL": external_url,
        "version": "4",
        "groupKey": "{}:{" + ", ".join(f'{k}="{v}"' for k, v in group.items()) + "}",
        "truncatedAlerts": 0,
    }


# --- store_up without Prometheus ----------------------------------------------------------------

_ONE_STORE = re.compile(
    r'max\(store_up\{store_id="(?P<store>[a-z0-9-]+)"\}\)(?:==(?P<equals>[0-9.]+))?'
)
_STORES_DOWN = "count(maxby(store_id)(store_up)==0)orvector(0)"


class MetricsQuery:
    """Prometheus' instant-query endpoint for the playbooks' ``store_up`` queries, evaluated
    on a fresh read of remediator's ``/metrics`` (``metrics_url``, settable after start)."""

    def __init__(self, http: aiohttp.ClientSession, metrics_url: str = "") -> None:
        self._http = http
        self.metrics_url = metrics_url
        self.queries: list[str] = []

    async def store_up(self) -> dict[str, float]:
        """store id → ``store_up`` as remediator exports it now."""
        async with self._http.get(self.metrics_url) as response:
            response.raise_for_status()
            text = await response.text()
        return {
            sample.labels["store_id"]: sample.value
            for family in parser.text_string_to_metric_families(text)
            if family.name == "store_up"
            for sample in family.samples
        }

    async def evaluate(self, promql: str) -> list[float]:
        """The values of the result vector (no labels: every supported query aggregates)."""
        compact = "".join(promql.split())
        up = await self.store_up()
        if compact == _STORES_DOWN:
            return [float(sum(1 for value in up.values() if value == 0))]
        match = _ONE_STORE.fullmatch(compact)
        if match is None:
            raise ValueError(f"the stand-in answers only the playbooks' store_up queries: {promql}")
        value = up.get(match["store"])
        if value is None or (match["equals"] is not None and value != float(match["equals"])):
            return []
        return [value]

    async def handle(self, request: web.Request) -> web.Response:
        form = await request.post() if request.method == "POST" else request.query
        promql = str(form.get("query", ""))
        self.queries.append(promql)
        try:
            values = await self.evaluate(promql)
        except ValueError as e:
            error = {"status": "error", "errorType": "bad_data", "error": str(e)}
            return web.json_response(error, status=400)
        now = time.time()
        result = [{"metric": {}, "value": [now, repr(value)]} for value in values]
        data = {"resultType": "vector", "result": result}
        return web.json_response({"status": "success", "data": data})


@contextlib.asynccontextmanager
async def serve_metrics_query(
    http: aiohttp.ClientSession, *, host: str = "127.0.0.1"
) -> AsyncIterator[tuple[str, MetricsQuery]]:
    """Serve a `MetricsQuery` (set its ``metrics_url`` before the first query); yields its base
    URL, for remediator's ``prometheus.url``."""
    query = MetricsQuery(http)
    app = web.Application()
    app.router.add_route("*", "/api/v1/query", query.handle)
    async with serving.serve_app(app, host=host) as url:
        yield url, query
