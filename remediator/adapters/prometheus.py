"""Prometheus HTTP API client: instant queries and readiness, over the daemon's aiohttp session.

Only the calls the daemon needs (``/api/v1/query`` and ``/-/ready``). Transport failures,
timeouts and 5xx answers become `PrometheusUnavailableError` (worth a retry later); 4xx and
``status: error`` answers become `PrometheusQueryError` (the query itself is wrong).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import aiohttp
import structlog
import yarl

log = structlog.get_logger(__name__)

# Error bodies from Prometheus, or from a proxy in front of it, can be whole HTML pages.
TEXT_ERROR_MAX_SIZE = 256


class PrometheusError(Exception):
    """Any failure to get a usable answer from Prometheus, including a malformed response."""


class PrometheusUnavailableError(PrometheusError):
    """Prometheus could not be reached, did not answer in time, or answered with a 5xx."""

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class PrometheusQueryError(PrometheusError):
    """Prometheus rejected the query (4xx or ``status: error``), e.g. bad PromQL."""

    def __init__(self, message: str, *, status: int | None, error_type: str, error: str) -> None:
        super().__init__(message)
        self.status = status
        self.error_type = error_type
        self.error = error


@dataclass(frozen=True, slots=True, kw_only=True)
class Sample:
    """One value of one series at one instant."""

    labels: Mapping[str, str]
    """The series labels (empty for scalars and strings)."""
    value: float
    """The value; NaN and ±Inf are kept as such."""
    timestamp: float
    """Unix time in seconds of the evaluation (instant) or the sample (range)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class QueryResult:
    """The ``data`` of a successful query, with a range result flattened to its samples."""

    result_type: str
    """``vector``, ``scalar``, ``matrix`` or ``string``, as Prometheus reports it."""
    samples: tuple[Sample, ...]
    """Vector: one sample per series; scalar/string: one; matrix: every sample of every series."""

    def scalar(self) -> float | None:
        """The single value if there is exactly one sample (always so for a scalar), else None."""
        return self.samples[0].value if len(self.samples) == 1 else None


class PrometheusClient:
    """Talks to one Prometheus server; the session is owned (and closed) by the caller."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        base_url: str,
        *,
        timeout: float = 10.0,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        self._session = session
        self._base_url = yarl.URL(base_url)
        if self._base_url.user is not None and any(
            name.lower() == "authorization" for name in headers or {}
        ):
            # aiohttp would refuse this on every request; refusing it once, up front, is clearer.
            raise ValueError("base_url credentials and an Authorization header exclude each other")
        self._timeout_seconds = timeout
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        # Copied so that a caller mutating its dict later does not change our requests.
        # Never logged and never put into exception messages: it may carry credentials.
        self._headers = dict(headers or {})

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._display_url!s})"

    @property
    def _display_url(self) -> yarl.URL:
        # Credentials in the URL's userinfo must not reach logs or exception messages either.
        return self._base_url.with_user(None)

    async def query(self, promql: str, *, at: float | None = None) -> QueryResult:
        """Run an instant query, evaluated at `at` (Unix seconds) or at Prometheus' now."""
        # POST with a form body, as Prometheus' own clients do: long queries do not hit
        # URL-length limits of proxies, and the query text stays out of access logs.
        form = {"query": promql, "timeout": _format_seconds(self._timeout_seconds)}
        if at is not None:
            form["time"] = _format_seconds(at)
        url = self._base_url / "api/v1/query"
        try:
            async with self._session.post(
                url, data=form, headers=self._headers, timeout=self._timeout
            ) as response:
                status = response.status
                body = await response.read()
        except TimeoutError as e:
            msg = f"Prometheus at {self._display_url} timed out after {self._timeout_seconds}s"
            raise PrometheusUnavailableError(msg) from e
        except aiohttp.ClientError as e:
            msg = f"Prometheus at {self._display_url} is unreachable: {_truncate(str(e))}"
            raise PrometheusUnavailableError(msg) from e
        return self._parse_query_response(status, body)

    async def ready(self) -> bool:
        """Whether Prometheus answers ``/-/ready`` with 200; never raises for I/O failures."""
        url = self._base_url / "-/ready"
        try:
            async with self._session.get(
                url, headers=self._headers, timeout=self._timeout
            ) as response:
                await response.read()
                return response.status == 200
        except (TimeoutError, aiohttp.ClientError) as e:
            log.debug(
                "prometheus_readiness_check_failed",
                url=str(self._display_url),
                error=_truncate(f"{type(e).__name__}: {e}"),
            )
            return False

    def _parse_query_response(self, status: int, body: bytes) -> QueryResult:
        try:
            payload = json.loads(body)
        except ValueError:
            payload = None
        if not isinstance(payload, dict):
            payload = {}

        if status >= 500:
            # Prometheus answers 503 for its own query timeouts and cancellations, too.
            detail = payload.get("error") or body.decode(errors="replace")
            msg = f"Prometheus answered HTTP {status}: {_truncate(str(detail))}"
            raise PrometheusUnavailableError(msg, status=status)
        if status >= 400 or payload.get("status") == "error":
            error_type = str(payload.get("errorType") or f"http_{status}")
            error = _truncate(str(payload.get("error") or body.decode(errors="replace")))
            raise PrometheusQueryError(
                f"Prometheus rejected the query ({error_type}): {error}",
                status=status,
                error_type=error_type,
                error=error,
            )
        # 'warnings' (and 'infos' in newer versions) are deliberately ignored: the daemon acts
        # on the data, and a partial answer still is the best answer Prometheus can give.
        try:
            data = payload["data"]
            return _parse_data(data["resultType"], data["result"])
        except PrometheusError:
            raise
        except (AttributeError, KeyError, TypeError, ValueError, IndexError) as e:
            text = _truncate(body.decode(errors="replace"))
            raise PrometheusError(f"Prometheus sent a malformed query response: {text}") from e


def _parse_data(result_type: str, result: Any) -> QueryResult:
    samples: tuple[Sample, ...]
    if result_type == "vector":
        samples = tuple(_parse_sample(item["metric"], item["value"]) for item in result)
    elif result_type == "matrix":
        samples = tuple(
            _parse_sample(series["metric"], pair) for series in result for pair in series["values"]
        )
    elif result_type == "scalar":
        samples = (_parse_sample({}, result),)
    elif result_type == "string":
        # A string has no natural place in a float sample; a numeric one (`"42"`) is accepted.
        timestamp, text = result
        try:
            value = float(text)
        except ValueError:
            raise PrometheusQueryError(
                f"Prometheus returned a non-numeric string: {_truncate(text)}",
                status=None,
                error_type="unsupported_result",
                error=_truncate(text),
            ) from None
        samples = (Sample(labels=MappingProxyType({}), value=value, timestamp=float(timestamp)),)
    else:
        raise PrometheusQueryError(
            f"Prometheus returned an unknown result type: {_truncate(str(result_type))}",
            status=None,
            error_type="unsupported_result",
            error=_truncate(str(result_type)),
        )
    return QueryResult(result_type=result_type, samples=samples)


def _parse_sample(metric: Mapping[str, str], pair: Any) -> Sample:
    timestamp, value = pair
    # float() understands Prometheus' "NaN", "+Inf" and "-Inf" spellings as they are.
    return Sample(
        labels=MappingProxyType({str(k): str(v) for k, v in metric.items()}),
        value=float(value),
        timestamp=float(timestamp),
    )


def _format_seconds(seconds: float) -> str:
    if not math.isfinite(seconds):
        raise ValueError(f"not a finite number of seconds: {seconds!r}")
    # repr() round-trips exactly; Prometheus parses it (exponent included) as float seconds.
    return repr(float(seconds))


def _truncate(text: str) -> str:
    if len(text) <= TEXT_ERROR_MAX_SIZE:
        return text
    return text[: TEXT_ERROR_MAX_SIZE - 1] + "…"
