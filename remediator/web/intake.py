"""The app factory and the Alertmanager intake: ``POST /webhook/alertmanager``.

Checks run cheapest first: auth, content type, declared size, then the body read with a hard
limit, JSON, and the v4 payload shape. Nothing invalid reaches the engine; each refusal is
counted by reason and answered with a JSON body naming what was wrong.
"""

from __future__ import annotations

import asyncio
import json

import structlog
from aiohttp import web
from aiohttp.web_protocol import RequestPayloadError
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from remediator.adapters import state
from remediator.core import alerts
from remediator.core.errors import PayloadError
from remediator.engine import admitting
from remediator.web import auth, console, control, review
from remediator.web.services import SERVICES, Services

log = structlog.get_logger(__name__)

WEBHOOK_PATH = "/webhook/alertmanager"


def make_app(services: Services) -> web.Application:
    # client_max_size makes aiohttp stop reading a body past the limit (413), chunked or not.
    app = web.Application(client_max_size=services.settings.server.max_body_bytes)
    app[SERVICES] = services
    app.router.add_post(WEBHOOK_PATH, receive_alerts)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics_endpoint)
    review.add_routes(app)
    control.add_routes(app)
    if services.settings.console.enabled:
        console.add_to(app, services)
    return app


def _refuse(
    services: Services,
    status: int,
    reason: str,
    message: str,
    field: str | None = None,
    headers: dict[str, str] | None = None,
) -> web.Response:
    services.metrics.webhook_rejections.labels(reason=reason).inc()
    services.metrics.webhook_requests.labels(code=str(status)).inc()
    log.info("webhook_refused", status=status, reason=reason, field=field, message=message[:256])
    body: dict[str, object] = {"error": reason, "message": message}
    if field is not None:
        body["field"] = field
    return web.json_response(body, status=status, headers=headers)


async def receive_alerts(request: web.Request) -> web.Response:
    services = request.app[SERVICES]
    try:
        checked = await _checked_webhook(request, services)
    except Exception:
        # A parser bug must not answer a bad body with a bare 500 (which Alertmanager would
        # retry forever): it is refused as invalid, and logged with its traceback to be fixed.
        log.exception("webhook_check_failed")
        return _refuse(services, 400, "invalid_payload", "the payload could not be validated")
    if isinstance(checked, web.Response):
        return checked
    return await _admit(services, checked)


async def _checked_webhook(
    request: web.Request, services: Services
) -> alerts.Webhook | web.Response:
    """The validated webhook, or the refusal to answer with."""
    limit = services.settings.server.max_body_bytes
    if not auth.authorized(request, services.webhook_token):
        services.metrics.webhook_rejections.labels(reason="unauthorized").inc()
        services.metrics.webhook_requests.labels(code="401").inc()
        return auth.unauthorized()
    if request.content_type != "application/json":
        return _refuse(
            services,
            415,
            "unsupported_media_type",
            f"Content-Type must be application/json, not {request.content_type[:64]!r}",
        )
    if request.content_length is not None and request.content_length > limit:
        return _refuse(services, 413, "too_large", f"body larger than {limit} bytes")
    try:
        body = await request.read()
    except web.HTTPRequestEntityTooLarge:
        return _refuse(services, 413, "too_large", f"body larger than {limit} bytes")
    except RequestPayloadError as e:
        # A body its Content-Encoding does not decode (gzip that is not gzip), or cut short.
        return _refuse(services, 400, "unreadable_body", f"body cannot be read: {e}"[:256])
    try:
        raw = json.loads(body)
    except Exception as e:
        # Not only ValueError (UnicodeDecodeError included): deep nesting raises
        # RecursionError, and a client must get a 400 for that too, never a 500.
        reason = "nested too deeply" if isinstance(e, RecursionError) else str(e)
        return _refuse(services, 400, "malformed_json", f"body is not JSON: {reason}"[:256])
    try:
        return alerts.parse_webhook(raw)
    except PayloadError as e:
        problem = e.problems[0]
        return _refuse(
            services,
            400,
            "invalid_payload",
            f"{problem.path}: {problem.message}",
            field=problem.path,
        )


async def _admit(services: Services, webhook: alerts.Webhook) -> web.Response:
    retry_after = {"Retry-After": str(services.settings.server.retry_after)}
    if not services.ready():
        # Draining after SIGTERM: the scheduler takes nothing more, and saying "queue_full"
        # would send operators looking for a backlog that is not there.
        return _refuse(
            services, 503, "shutting_down", "shutting down; retry later", headers=retry_after
        )
    try:
        admitted = await services.admitter.admit(webhook)
    except admitting.QueueFullError as e:
        wait = _retry_after(e.retry_after, fallback=services.settings.server.retry_after)
        return _refuse(services, 503, "queue_full", str(e), headers={"Retry-After": wait})
    except Exception:
        # The store failed (disk full, locked) or admission hit a bug: the transaction was
        # rolled back or its outcome is unknown. 503 makes Alertmanager send it again, and
        # dedupe makes that safe even if it had been committed.
        log.exception("webhook_admission_failed", group_key=webhook.group_key[:256])
        return _refuse(
            services,
            503,
            "admission_failed",
            "the alerts could not be recorded; retry later",
            headers=retry_after,
        )
    services.metrics.webhook_requests.labels(code="200").inc()
    # At debug, like the alert_received records it sums up: at info, a webhook of one alert
    # took as many log lines as the decision about it (metrics count the webhooks).
    log.debug(
        "webhook_accepted",
        group_key=webhook.group_key,
        alerts=len(webhook.alerts),
        duplicates=admitted.duplicates,
        runs=len(admitted.runs),
    )
    return web.json_response(
        {
            "alerts": len(webhook.alerts),
            "duplicates": admitted.duplicates,
            "runs": list(admitted.runs),
        }
    )


MAX_RETRY_AFTER = 60
"""Seconds a full queue asks a sender to wait at most: Alertmanager's own longest backoff."""


def _retry_after(estimate: float | None, *, fallback: int) -> str:
    """Whole seconds until the queue has room, from its drain rate; the configured value
    before any run has finished (there is no rate to go by yet).

    Rounded, not rounded up: a retry that comes a little early costs one cheap refusal, one
    that comes late leaves the executor without work.
    """
    if estimate is None:
        return str(fallback)
    return str(min(MAX_RETRY_AFTER, max(1, round(estimate))))


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


READY_CHECK_TIMEOUT = 2.0
"""Seconds /readyz waits for the state store; kubelet's probe times out at 1 s by default,
so a slower answer is as bad as none."""


async def readyz(request: web.Request) -> web.Response:
    services = request.app[SERVICES]
    if not services.ready():
        return web.json_response({"status": "not ready"}, status=503)
    # Never ready without the database: a replica that cannot make an alert durable must
    # not get traffic the Service could send to one that can.
    try:
        async with asyncio.timeout(READY_CHECK_TIMEOUT):
            await services.store.ping()
    except (state.StateError, TimeoutError):
        return web.json_response(
            {"status": "not ready", "reason": "state store unreachable"}, status=503
        )
    return web.json_response({"status": "ready"})


async def metrics_endpoint(request: web.Request) -> web.Response:
    output = generate_latest(request.app[SERVICES].metrics.registry)
    response = web.Response(body=output)
    response.headers["Content-Type"] = CONTENT_TYPE_LATEST
    return response
