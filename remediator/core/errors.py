"""The exception hierarchy shared by every layer.

Adapters translate foreign errors (aiohttp, kubernetes_asyncio, sqlite3) into these, keeping
the original as ``__cause__``, so the engine decides retry-or-not on our types only.
"""

from __future__ import annotations

from dataclasses import dataclass


class RemediatorError(Exception):
    """Base of every error remediator raises on purpose."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Problem:
    """One thing wrong with an input, located precisely enough to fix it."""

    source: str
    """The file (or ``<webhook>``, ``<config>``) the problem is in."""
    path: str
    """Dotted/indexed path inside the document, e.g. ``steps[2].params.replicas``."""
    message: str
    line: int | None = None
    """1-based line in ``source`` when known."""

    def __str__(self) -> str:
        where = f"{self.source}:{self.line}" if self.line is not None else self.source
        return f"{where}: {self.path}: {self.message}" if self.path else f"{where}: {self.message}"


class InvalidInputError(RemediatorError):
    """An input (payload, playbook, config) failed validation; carries every problem found."""

    def __init__(self, problems: list[Problem] | tuple[Problem, ...]) -> None:
        self.problems = tuple(problems)
        super().__init__("\n".join(str(p) for p in self.problems))


class PayloadError(InvalidInputError):
    """A webhook body is not a valid Alertmanager v4 payload."""


class PlaybookError(InvalidInputError):
    """One or more playbooks are invalid."""


class ConfigError(InvalidInputError):
    """The daemon's configuration is invalid."""


class TemplateError(RemediatorError):
    """A template failed to compile or render (undefined name, sandbox violation, bad syntax)."""


class StepError(RemediatorError):
    """A step failed. The subclass says whether trying again can help."""


class PermanentStepError(StepError):
    """Retrying will not help: bad params after rendering, 4xx answers, refused by scope."""


class TemporaryStepError(StepError):
    """Retrying may help: timeouts, 5xx, conflicts. ``delay`` overrides the backoff if set."""

    def __init__(self, message: str, *, delay: float | None = None) -> None:
        super().__init__(message)
        self.delay = delay
