"""Typed reads of Kubernetes objects (decoded JSON), tolerant of missing or null fields.

Objects come from the API server, or from whoever wrote them; a ``status: null`` or a string
where a number belongs must read as "unknown", never crash an action halfway through.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any


def dig(obj: object, *path: str) -> object:
    """The value at ``path``, or None when any step is missing or not a mapping."""
    for key in path:
        if not isinstance(obj, Mapping):
            return None
        obj = obj.get(key)
    return obj


def text(obj: object, *path: str, default: str = "") -> str:
    value = dig(obj, *path)
    return value if isinstance(value, str) else default


def number(obj: object, *path: str, default: int = 0) -> int:
    value = dig(obj, *path)
    if isinstance(value, bool) or not isinstance(value, int):
        return default
    return value


def flag(obj: object, *path: str) -> bool:
    return dig(obj, *path) is True


def mapping(obj: object, *path: str) -> Mapping[str, Any]:
    value = dig(obj, *path)
    return value if isinstance(value, Mapping) else {}


def items(obj: object, *path: str) -> list[Mapping[str, Any]]:
    """The mappings in the list at ``path`` (other entries are skipped)."""
    value = dig(obj, *path)
    if not isinstance(value, list):
        return []
    return [item for item in value if isinstance(item, Mapping)]


def strings(obj: object, *path: str) -> list[str]:
    value = dig(obj, *path)
    if not isinstance(value, list):
        return []
    return [item for item in value if isinstance(item, str)]


def name(obj: object) -> str:
    return text(obj, "metadata", "name")


def labels(obj: object) -> Mapping[str, Any]:
    return mapping(obj, "metadata", "labels")


def condition(obj: object, condition_type: str) -> Mapping[str, Any] | None:
    for found in items(obj, "status", "conditions"):
        if found.get("type") == condition_type:
            return found
    return None


def condition_is(obj: object, condition_type: str, status: str = "True") -> bool:
    found = condition(obj, condition_type)
    return found is not None and found.get("status") == status


def timestamp(value: object) -> datetime | None:
    """An RFC 3339 time as the API writes it (``Z`` or offset, with or without fraction)."""
    if not isinstance(value, str) or not value:
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)
