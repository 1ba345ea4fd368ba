"""Kubernetes ``Status`` failures: raised by the emulator, rendered as JSON by the server.

Clients branch on ``code`` and ``reason`` (kubernetes_asyncio raises ``ApiException(status=...)``,
client-go's ``IsConflict`` reads the reason), so both must match what a real kube-apiserver sends.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any


class StatusError(Exception):
    """A failed API call, carrying everything needed for a ``kind: Status`` body."""

    def __init__(
        self,
        code: int,
        reason: str,
        message: str,
        *,
        details: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason
        self.message = message
        self.details = dict(details) if details is not None else None

    def to_status(self) -> dict[str, Any]:
        status: dict[str, Any] = {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        }
        if self.details is not None:
            status["details"] = self.details
        return status


def group_resource(plural: str, group: str) -> str:
    """The ``pods`` / ``deployments.apps`` spelling used in API server messages."""
    return f"{plural}.{group}" if group else plural


def _details(plural: str, group: str, name: str) -> dict[str, Any]:
    details: dict[str, Any] = {"name": name, "kind": plural}
    if group:
        details["group"] = group
    return details


def not_found(plural: str, group: str, name: str) -> StatusError:
    return StatusError(
        404,
        "NotFound",
        f'{group_resource(plural, group)} "{name}" not found',
        details=_details(plural, group, name),
    )


def no_such_resource() -> StatusError:
    return StatusError(404, "NotFound", "the server could not find the requested resource")


def already_exists(plural: str, group: str, name: str) -> StatusError:
    return StatusError(
        409,
        "AlreadyExists",
        f'{group_resource(plural, group)} "{name}" already exists',
        details=_details(plural, group, name),
    )


def conflict(plural: str, group: str, name: str, *, why: str | None = None) -> StatusError:
    why = why or (
        "the object has been modified; please apply your changes to the latest version "
        "and try again"
    )
    return StatusError(
        409,
        "Conflict",
        f'Operation cannot be fulfilled on {group_resource(plural, group)} "{name}": {why}',
        details=_details(plural, group, name),
    )


def forbidden(plural: str, group: str, name: str, *, why: str) -> StatusError:
    return StatusError(
        403,
        "Forbidden",
        f'{group_resource(plural, group)} "{name}" is forbidden: {why}',
        details=_details(plural, group, name),
    )


def invalid(kind: str, group: str, name: str, causes: Sequence[tuple[str, str]]) -> StatusError:
    """A 422 with one ``(field, message)`` cause per problem, like apimachinery's field errors."""
    qualified = f"{kind}.{group}" if group else kind
    summary = ", ".join(f"{field}: {message}" for field, message in causes)
    details: dict[str, Any] = {
        "name": name,
        "kind": kind,
        "causes": [
            {"reason": "FieldValueInvalid", "message": message, "field": field}
            for field, message in causes
        ],
    }
    if group:
        details["group"] = group
    return StatusError(
        422, "Invalid", f'{qualified} "{name}" is invalid: {summary}', details=details
    )


def unprocessable(message: str) -> StatusError:
    # JSON-patch failures come back as a bare 422 without a reason, as in apiserver's patch.go.
    return StatusError(422, "", message)


def bad_request(message: str) -> StatusError:
    return StatusError(400, "BadRequest", message)


def expired(message: str) -> StatusError:
    return StatusError(410, "Expired", message)


def unsupported_media_type(message: str) -> StatusError:
    return StatusError(415, "UnsupportedMediaType", message)


def method_not_allowed(message: str) -> StatusError:
    return StatusError(405, "MethodNotAllowed", message)


def unauthorized() -> StatusError:
    return StatusError(401, "Unauthorized", "Unauthorized")
