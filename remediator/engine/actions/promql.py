"""``prometheus.query`` and ``prometheus.wait_for``: PromQL against the configured Prometheus.

They are the basis of verification: a playbook checks ``store_up{store_id="…"} == 1`` instead
of trusting that its fix worked. An unreachable Prometheus is a retryable error; bad PromQL is not.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any, Literal

from remediator.adapters import prometheus
from remediator.core.actions import ActionSpec
from remediator.core.errors import PermanentStepError, TemporaryStepError
from remediator.engine.actions.registry import ActionContext, Output

MAX_SAMPLES = 50


@dataclass(frozen=True, slots=True, kw_only=True)
class QueryParams:
    query: str = field(metadata={"doc": "PromQL instant query."})


@dataclass(frozen=True, slots=True, kw_only=True)
class WaitForParams:
    query: str = field(metadata={"doc": "PromQL instant query, polled until the condition holds."})
    until: Literal["non_empty", "empty"] = field(
        default="non_empty",
        metadata={
            "doc": "non_empty: some series matches (e.g. 'store_up{…} == 1'); empty: none does."
        },
    )
    interval: float = field(default=5.0, metadata={"doc": "Seconds between polls."})


def _client(context: ActionContext) -> prometheus.PrometheusClient:
    if context.resources.prometheus is None:
        raise PermanentStepError("no Prometheus configured (prometheus.url)")
    return context.resources.prometheus


async def _query(client: prometheus.PrometheusClient, promql: str) -> prometheus.QueryResult:
    try:
        return await client.query(promql)
    except prometheus.PrometheusQueryError as e:
        raise PermanentStepError(f"bad query: {e}") from e
    except prometheus.PrometheusError as e:
        raise TemporaryStepError(f"Prometheus unavailable: {e}") from e


def _output(result: prometheus.QueryResult) -> dict[str, Any]:
    return {
        "value": result.scalar(),
        "count": len(result.samples),
        "samples": [
            {"labels": dict(s.labels), "value": s.value} for s in result.samples[:MAX_SAMPLES]
        ],
    }


class QueryAction:
    spec = ActionSpec(
        name="prometheus.query",
        params=QueryParams,
        mutating=False,
        description="Run a PromQL instant query; output has value, count and samples.",
    )

    async def run(self, params: QueryParams, context: ActionContext) -> Output:
        return _output(await _query(_client(context), params.query))

    def preview(self, params: QueryParams) -> str:
        return f"query {params.query}"


class WaitForAction:
    spec = ActionSpec(
        name="prometheus.wait_for",
        params=WaitForParams,
        mutating=False,
        description="Poll a PromQL query until it returns series (or none) within the timeout.",
    )

    async def run(self, params: WaitForParams, context: ActionContext) -> Output:
        client = _client(context)
        loop = asyncio.get_running_loop()
        polls = 0
        while True:
            result = await _query(client, params.query)
            polls += 1
            holds = bool(result.samples) == (params.until == "non_empty")
            if holds:
                return {**_output(result), "polls": polls}
            remaining = context.deadline - loop.time()
            if remaining <= params.interval:
                raise PermanentStepError(
                    f"condition {params.until!r} not met after {polls} polls; "
                    f"last result had {len(result.samples)} series"
                )
            await asyncio.sleep(params.interval)

    def preview(self, params: WaitForParams) -> str:
        return f"wait until {params.query} is {params.until}"
