"""Playbooks as frozen types: what triggers them, what they act on, their steps and checks.

These are produced by :mod:`remediator.core.parsing` from YAML and consumed by matching,
planning and the executor. Templated values stay as source strings here; they are compiled at
load (to fail early) and rendered per run.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from remediator.core.alerts import AlertStatus
from remediator.core.safety import SafetyPolicy


class MatchOp(enum.StrEnum):
    EQUAL = "="
    NOT_EQUAL = "!="
    REGEX = "=~"
    NOT_REGEX = "!~"


@dataclass(frozen=True, slots=True, kw_only=True)
class Matcher:
    """One Alertmanager matcher, e.g. ``severity=~"critical|warning"``."""

    name: str
    op: MatchOp
    value: str
    pattern: re.Pattern[str] | None = None
    """The fully anchored regex for ``=~`` and ``!~``, as Alertmanager anchors them."""

    def __str__(self) -> str:
        escaped = self.value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
        return f'{self.name}{self.op}"{escaped}"'


@dataclass(frozen=True, slots=True, kw_only=True)
class Trigger:
    matchers: tuple[Matcher, ...]
    statuses: frozenset[AlertStatus] = frozenset({AlertStatus.FIRING})


@dataclass(frozen=True, slots=True, kw_only=True)
class RetryPolicy:
    attempts: int = 1
    """Total tries including the first."""
    backoff: float = 1.0
    """Seconds before the second try; doubled each time, with full jitter."""
    max_backoff: float = 60.0


class Phase(enum.StrEnum):
    """Where a step sits in a run; audit and metrics use it."""

    STEPS = "steps"
    VERIFY = "verify"
    ON_FAILURE = "on_failure"


@dataclass(frozen=True, slots=True, kw_only=True)
class Step:
    name: str
    action: str
    params: Mapping[str, Any] = field(default_factory=dict)
    """Raw params; any string inside may be a template."""
    when: str | None = None
    """A template expression; the step is skipped when it is false."""
    timeout: float = 30.0
    retry: RetryPolicy = RetryPolicy()
    expect: str | None = None
    """Verify checks only: an expression over ``output`` that must be true."""
    line: int | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Verification:
    checks: tuple[Step, ...]
    timeout: float = 300.0
    """Deadline for all checks to hold at once; past it the run is ``unverified``."""
    interval: float = 10.0


@dataclass(frozen=True, slots=True, kw_only=True)
class Playbook:
    name: str
    source: str
    """The file it came from, for error messages and the audit log."""
    trigger: Trigger
    target: str
    """Template for the key this playbook acts on; one run per key at a time."""
    steps: tuple[Step, ...]
    description: str = ""
    priority: int = 0
    """Higher wins when config allows only one playbook per alert."""
    on_failure: tuple[Step, ...] = ()
    verify: Verification | None = None
    dry_run: bool = False
    safety: SafetyPolicy = field(default_factory=SafetyPolicy)
    labels_used: frozenset[str] = frozenset()
    """Alert labels the templates read; their values are scope-checked before any rendering."""
    line: int | None = None

    def all_steps(self) -> tuple[tuple[Phase, Step], ...]:
        checks = self.verify.checks if self.verify else ()
        return (
            *((Phase.STEPS, s) for s in self.steps),
            *((Phase.VERIFY, s) for s in checks),
            *((Phase.ON_FAILURE, s) for s in self.on_failure),
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class PlaybookSet:
    playbooks: tuple[Playbook, ...]
    digest: str = ""
    """Content hash of the files, to tell a real reload from a no-op."""

    def by_name(self, name: str) -> Playbook | None:
        return next((p for p in self.playbooks if p.name == name), None)
