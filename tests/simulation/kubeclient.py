"""Helpers for driving the emulator through kubernetes_asyncio."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Mapping
from typing import Any

import pytest
from kubernetes_asyncio.client.exceptions import ApiException


async def failure(call: Awaitable[Any], code: int) -> dict[str, Any]:
    """Await an API call that must fail with ``code``; returns the parsed Status body."""
    with pytest.raises(ApiException) as caught:
        await call
    assert caught.value.status == code, caught.value.body
    assert caught.value.body is not None
    body: dict[str, Any] = json.loads(caught.value.body)
    assert body["kind"] == "Status"
    assert body["code"] == code
    return body


def raw(body: Mapping[str, Any]) -> Any:
    """A plain-dict request body. kubernetes_asyncio serializes dicts as they are, but its stubs
    ask for models (``V1Pod``...); this says so once instead of a cast at every call."""
    return body


MERGE_PATCH = "application/merge-patch+json"
STRATEGIC_MERGE_PATCH = "application/strategic-merge-patch+json"


def content_type(value: str) -> dict[str, Any]:
    """Keyword arguments choosing the PATCH dialect (``**content_type(MERGE_PATCH)``).
    kubernetes_asyncio honours ``_content_type`` at runtime; its stubs leave it out."""
    return {"_content_type": value}
