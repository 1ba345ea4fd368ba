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


CHOOSE = "choose"
"""The ``action`` of a ``choose`` step in records and metrics (no registered action has it)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Case:
    """One case of a ``choose`` step: the branch it picks when ``when`` holds."""

    branch: str
    when: str | None = None
    """An expression; None: the case always holds (every later case is unreachable)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Choice:
    """A ``choose`` step's cases, tried in order; the first that holds names the branch."""

    cases: tuple[Case, ...]
    default: str | None = None
    """The branch when no case holds (validation ensures one always does, or this is set)."""

    def branches(self) -> tuple[str, ...]:
        """Every branch it can produce, in order of first appearance."""
        names = [case.branch for case in self.cases]
        if self.default is not None:
            names.append(self.default)
        return tuple(dict.fromkeys(names))


@dataclass(frozen=True, slots=True, kw_only=True)
class Step:
    name: str
    action: str
    """The registered action; `CHOOSE` for a ``choose`` step, which has `choice` instead."""
    params: Mapping[str, Any] = field(default_factory=dict)
    """Raw params; any string inside may be a template."""
    when: str | None = None
    """A template expression; the step is skipped when it is false."""
    timeout: float = 30.0
    retry: RetryPolicy = RetryPolicy()
    expect: str | None = None
    """Verify checks only: an expression over ``output`` that must be true."""
    choice: Choice | None = None
    """A ``choose`` step's cases; its output is ``{"branch": NAME, "case": INDEX or None}``."""
    on_branch: tuple[str, ...] = ()
    """The step runs only when one of these branches was chosen (empty: always)."""
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
    resume: bool = False
    """A run taken over after its replica died continues even if mutating steps remain."""
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

    def branch_owners(self) -> dict[str, str]:
        """Branch name → the ``choose`` step that can produce it."""
        return {
            branch: step.name
            for step in self.steps
            if step.choice is not None
            for branch in step.choice.branches()
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class PlaybookSet:
    playbooks: tuple[Playbook, ...]
    digest: str = ""
    """Content hash of the files, to tell a real reload from a no-op."""

    def by_name(self, name: str) -> Playbook | None:
        return next((p for p in self.playbooks if p.name == name), None)
