"""``provisioner.request``: read or change a store's record in the store provisioner API.

Runbook scenarios 1, 4 and 5 end at the provisioner: mark a store ``running`` once its
resources are healthy, delete it, or provision it again. The base URL and bearer token come from
the config, never from a playbook, so a playbook can only name a store and an operation.

5xx answers and connection errors are retried inside the step (``provisioner.retries``
attempts, jittered exponential backoff, never past the step's deadline); 4xx answers are not.
A timed-out ``reprovision`` is not retried: the provisioner may have accepted it, and a second
one would start provisioning over the first.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from typing import Any, Literal

import yarl

from remediator.core import planning, redaction, scope
from remediator.core.actions import ActionSpec
from remediator.core.errors import PermanentStepError, StepError, TemporaryStepError
from remediator.core.playbooks import RetryPolicy
from remediator.engine.actions import httprequest
from remediator.engine.actions.registry import ActionContext, Output

Operation = Literal["get", "set_status", "delete", "reprovision"]
StoreStatus = Literal["provisioning", "running", "failed", "deleting"]

_OK = tuple(range(200, 300))
# GET and DELETE read a 404 as an answer (not found, already gone), not as a failure.
_OK_OR_ABSENT = (*_OK, 404)


@dataclass(frozen=True, slots=True, kw_only=True)
class ProvisionerParams:
    store_id: str = field(
        metadata={"doc": "The store's id, a DNS-1123 label (`s1` for namespace `store-s1`)."}
    )
    operation: Operation = field(
        metadata={
            "doc": "get: read the store; set_status: PATCH its status; delete: DELETE it "
            "(already gone counts as done); reprovision: POST …/reprovision."
        }
    )
    status: StoreStatus | None = field(
        default=None, metadata={"doc": "The new status; required by set_status, refused otherwise."}
    )

    def __post_init__(self) -> None:
        if self.operation == "set_status" and self.status is None:
            raise ValueError("status is required for operation 'set_status'")
        if self.operation != "set_status" and self.status is not None:
            raise ValueError(f"status is only for operation 'set_status', not {self.operation!r}")


@dataclass(frozen=True, slots=True, kw_only=True)
class _Request:
    method: str
    path: tuple[str, ...]
    """Segments after the base URL, each quoted by yarl."""
    body: dict[str, Any] | None = None
    expect: tuple[int, ...] = _OK
    retry_timeouts: bool = True


def _request(params: ProvisionerParams) -> _Request:
    store = ("api", "v1", "stores", params.store_id)
    if params.operation == "get":
        return _Request(method="GET", path=store, expect=_OK_OR_ABSENT)
    if params.operation == "set_status":
        return _Request(method="PATCH", path=store, body={"status": params.status})
    if params.operation == "delete":
        return _Request(method="DELETE", path=store, expect=_OK_OR_ABSENT)
    return _Request(method="POST", path=(*store, "reprovision"), retry_timeouts=False)


class ProvisionerAction:
    spec = ActionSpec(
        name="provisioner.request",
        params=ProvisionerParams,
        mutating=True,
        mutating_when=lambda p: p.operation != "get",
        # Removing a store from the provisioner is as final as deleting its namespace.
        destructive_when=lambda p: p.operation == "delete",
        description="Get a store from the store provisioner API, set its status, delete it or "
        "provision it again; the URL and token come from the `provisioner` config.",
    )

    def __init__(
        self,
        *,
        backoff: float = 0.5,
        max_backoff: float = 8.0,
        jitter: Callable[[], float] = random.random,
    ) -> None:
        self._backoff = backoff
        self._max_backoff = max_backoff
        self._jitter = jitter

    async def run(self, params: ProvisionerParams, context: ActionContext) -> Output:
        # The id lands in a URL path; anything but a plain label is refused before any request.
        if not scope.DNS1123_LABEL.match(params.store_id):
            shown = redaction.truncate(params.store_id, 64)
            raise PermanentStepError(f"scope: store_id {shown!r} is not a DNS-1123 label")
        resources = context.resources
        settings = resources.settings.provisioner
        if not settings.url:
            raise PermanentStepError("no provisioner configured (provisioner.url)")
        base = yarl.URL(settings.url)
        if base.scheme not in ("http", "https") or not base.host:
            raise PermanentStepError("provisioner.url is not an absolute http(s) URL")
        token = resources.provisioner_token
        if token is None and settings.token_file:
            raise PermanentStepError("provisioner.token_file is set but its token was not loaded")
        secrets = (*resources.secrets, *((token,) if token else ()))

        request = _request(params)
        url = base
        for segment in request.path:
            url = url / segment
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        status, body, attempts = await self._send(
            context, request, url, headers=headers, secrets=secrets
        )

        output: dict[str, Any] = {
            "store_id": params.store_id,
            "operation": params.operation,
            "http_status": status,
            "attempts": attempts,
        }
        store = redaction.redact(body, secrets=secrets) if isinstance(body, dict) else None
        if params.operation == "get":
            output["found"] = status != 404
        if params.operation == "delete":
            output["already_absent"] = status == 404
        if status != 404:
            output["store"] = store
        return output

    async def _send(
        self,
        context: ActionContext,
        request: _Request,
        url: yarl.URL,
        *,
        headers: dict[str, str],
        secrets: Collection[str],
    ) -> tuple[int, Any, int]:
        settings = context.resources.settings.provisioner
        policy = RetryPolicy(
            attempts=max(1, settings.retries), backoff=self._backoff, max_backoff=self._max_backoff
        )
        loop = asyncio.get_running_loop()
        for attempt in range(1, policy.attempts + 1):
            remaining = context.deadline - loop.time()
            if remaining <= 0:
                raise TemporaryStepError(
                    f"{request.method} provisioner: no time left for attempt {attempt}"
                )
            try:
                status, body = await httprequest.send(
                    context.resources.http,
                    request.method,
                    url,
                    time_limit=min(settings.timeout, remaining),
                    headers=headers,
                    json_body=request.body,
                    expect_status=request.expect,
                )
            except PermanentStepError as e:
                raise _masked(e, secrets) from e.__cause__
            except TemporaryStepError as e:
                timed_out = isinstance(e.__cause__, TimeoutError)
                if attempt == policy.attempts or (timed_out and not request.retry_timeouts):
                    raise _masked(e, secrets, f" (attempt {attempt} of {policy.attempts})") from (
                        e.__cause__
                    )
                pause = (
                    e.delay
                    if e.delay is not None
                    else planning.backoff_delay(policy, attempt, jitter=self._jitter())
                )
                if loop.time() + pause >= context.deadline:
                    raise _masked(
                        e, secrets, f" (attempt {attempt}; no time left for another)"
                    ) from e.__cause__
                context.log.info(
                    "provisioner_retrying",
                    method=request.method,
                    attempt=attempt,
                    error=str(_masked(e, secrets)),
                    delay=round(pause, 3),
                )
                await asyncio.sleep(pause)
            else:
                return status, body, attempt
        raise AssertionError("unreachable: the loop returns or raises on its last attempt")

    def preview(self, params: ProvisionerParams) -> str:
        request = _request(params)
        path = "/" + "/".join(request.path)
        suffix = f" status={params.status}" if params.status is not None else ""
        return f"{request.method} provisioner {path}{suffix}"


def _masked(error: StepError, secrets: Collection[str], suffix: str = "") -> StepError:
    """The same kind of error, its text cleaned of the token (an API may echo it back)."""
    text = redaction.redact_text(str(error), secrets=secrets) + suffix
    if isinstance(error, TemporaryStepError):
        return TemporaryStepError(text, delay=error.delay)
    return PermanentStepError(text)
