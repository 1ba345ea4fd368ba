"""``http.request``: call an HTTP endpoint on a configured host.

Only hosts listed in ``http.allowed_hosts`` are reachable, so a templated URL cannot be
steered at an arbitrary address (SSRF). 5xx and connection errors are retryable; 4xx are not.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import aiohttp
import yarl

from remediator.core import redaction
from remediator.core.actions import ActionSpec
from remediator.core.errors import PermanentStepError, TemporaryStepError
from remediator.engine.actions.registry import ActionContext, Output

READ_ONLY_METHODS = frozenset({"GET", "HEAD"})
MAX_BODY = 64 * 1024

Method = Literal["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"]


@dataclass(frozen=True, slots=True, kw_only=True)
class HttpRequestParams:
    url: str = field(metadata={"doc": "Absolute http(s) URL on an allowed host."})
    method: Method = "GET"
    headers: dict[str, str] = field(default_factory=dict)
    json: Any = field(default=None, metadata={"doc": "JSON body to send."})
    expect_status: tuple[int, ...] = field(
        default=(), metadata={"doc": "Accepted status codes; default: any 2xx."}
    )


def check_allowed(url: str, allowed_hosts: tuple[str, ...]) -> yarl.URL:
    """The parsed URL if its host (or host:port) is allowed, else a permanent error."""
    parsed = yarl.URL(url)
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise PermanentStepError(f"not an absolute http(s) URL: {redaction.truncate(url, 128)}")
    host = parsed.host.lower()
    if host not in allowed_hosts and f"{host}:{parsed.port}" not in allowed_hosts:
        raise PermanentStepError(f"host {host!r} is not in http.allowed_hosts")
    return parsed


async def send(
    session: aiohttp.ClientSession,
    method: str,
    url: yarl.URL,
    *,
    time_limit: float,
    headers: Mapping[str, str] | None = None,
    json_body: Any = None,
    expect_status: tuple[int, ...] = (),
) -> tuple[int, Any]:
    """One request with a timeout, errors sorted into retryable and not; returns status, body."""
    try:
        async with session.request(
            method,
            url,
            headers=headers,
            json=json_body,
            timeout=aiohttp.ClientTimeout(total=time_limit),
            allow_redirects=False,
        ) as response:
            raw = await response.content.read(MAX_BODY)
            status = response.status
            content_type = response.content_type
    except TimeoutError as e:
        raise TemporaryStepError(f"{method} {url.host}: timed out after {time_limit:g}s") from e
    except aiohttp.ClientError as e:
        raise TemporaryStepError(f"{method} {url.host}: {type(e).__name__}: {e}") from e
    text = raw.decode("utf-8", errors="replace")
    body: Any = text
    if content_type == "application/json":
        try:
            body = json.loads(text)
        except ValueError:
            body = text
    ok = status in expect_status if expect_status else 200 <= status < 300
    if not ok:
        detail = redaction.truncate(text, 256)
        if status >= 500 or status == 429:
            raise TemporaryStepError(f"{method} {url.host}{url.path}: HTTP {status}: {detail}")
        raise PermanentStepError(f"{method} {url.host}{url.path}: HTTP {status}: {detail}")
    return status, body


class HttpRequestAction:
    spec = ActionSpec(
        name="http.request",
        params=HttpRequestParams,
        mutating=True,
        mutating_when=lambda p: p.method not in READ_ONLY_METHODS,
        description="Call an HTTP endpoint on a host listed in http.allowed_hosts.",
    )

    async def run(self, params: HttpRequestParams, context: ActionContext) -> Output:
        settings = context.resources.settings.http
        url = check_allowed(params.url, settings.allowed_hosts)
        status, body = await send(
            context.resources.http,
            params.method,
            url,
            time_limit=settings.timeout,
            headers=params.headers,
            json_body=params.json,
            expect_status=params.expect_status,
        )
        return {"status": status, "body": body}

    def preview(self, params: HttpRequestParams) -> str:
        return f"{params.method} {params.url}"
