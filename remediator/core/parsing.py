"""From playbook YAML text to :class:`~remediator.core.playbooks.Playbook` values.

YAML is composed into nodes first so every value keeps its line: validation problems then read
``file:line: path: message``. ``parse_playbook`` assumes a document that passed validation and
never mutates its input.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import yaml

from remediator.core import durations, matching, safety, scope
from remediator.core.alerts import AlertStatus
from remediator.core.errors import Problem
from remediator.core.playbooks import (
    CHOOSE,
    Case,
    Choice,
    Playbook,
    RetryPolicy,
    Step,
    Trigger,
    Verification,
)

Path = tuple[str | int, ...]
DEFAULT_STEP_TIMEOUT = 30.0
DEFAULT_POLICY = safety.SafetyPolicy()


@dataclass(frozen=True, slots=True, kw_only=True)
class Document:
    """One YAML document with the line of every value in it."""

    source: str
    raw: Any
    lines: Mapping[Path, int] = field(default_factory=dict)
    line: int = 1

    def line_of(self, path: Sequence[str | int]) -> int:
        """The line of ``path``, or of its nearest ancestor that has one."""
        key = tuple(path)
        while key:
            if key in self.lines:
                return self.lines[key]
            key = key[:-1]
        return self.line


def format_path(path: Sequence[str | int]) -> str:
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else part)
    return text


def read_documents(text: str, *, source: str) -> tuple[list[Document], list[Problem]]:
    """Split a file into documents; YAML syntax errors and duplicate keys are problems."""
    documents: list[Document] = []
    problems: list[Problem] = []
    loader = yaml.SafeLoader(text)
    try:
        while loader.check_node():
            node = loader.get_node()
            if node is None:  # pragma: no cover - check_node() said there is one
                break
            lines: dict[Path, int] = {}
            _index_lines(node, (), lines, problems, source)
            raw = loader.construct_document(node)
            if raw is not None:
                documents.append(
                    Document(source=source, raw=raw, lines=lines, line=node.start_mark.line + 1)
                )
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        problems.append(
            Problem(
                source=source,
                path="",
                line=mark.line + 1 if mark is not None else None,
                message=f"invalid YAML: {getattr(e, 'problem', None) or e}",
            )
        )
    finally:
        loader.dispose()
    return documents, problems


def _index_lines(
    node: yaml.Node, path: Path, lines: dict[Path, int], problems: list[Problem], source: str
) -> None:
    lines[path] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        seen: set[str] = set()
        for key_node, value_node in node.value:
            key = str(key_node.value)
            if key in seen:
                problems.append(
                    Problem(
                        source=source,
                        path=format_path((*path, key)),
                        line=key_node.start_mark.line + 1,
                        message="duplicate key",
                    )
                )
            seen.add(key)
            _index_lines(value_node, (*path, key), lines, problems, source)
            lines[(*path, key)] = key_node.start_mark.line + 1
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            _index_lines(item, (*path, index), lines, problems, source)


def parse_playbook(
    raw: Mapping[str, Any],
    *,
    source: str,
    line: int | None = None,
    defaults: safety.SafetyPolicy = DEFAULT_POLICY,
) -> Playbook:
    """Build a Playbook from a validated document; its ``safety:`` overrides ``defaults``."""
    trigger = raw["trigger"]
    statuses = trigger.get("status", "firing")
    if isinstance(statuses, str):
        statuses = [statuses]
    verify = raw.get("verify")
    return Playbook(
        name=raw["name"],
        source=source,
        line=line,
        description=raw.get("description", ""),
        priority=raw.get("priority", 0),
        trigger=Trigger(
            matchers=tuple(matching.parse_matcher(m) for m in trigger["matchers"]),
            statuses=frozenset(AlertStatus(s) for s in statuses),
        ),
        target=raw["target"],
        dry_run=raw.get("dry_run", False),
        resume=raw.get("resume", False),
        safety=merge_policy(defaults, raw.get("safety", {})),
        labels_used=scope.referenced_labels(template_sources(raw)),
        steps=tuple(_parse_step(s) for s in raw["steps"]),
        on_failure=tuple(_parse_step(s) for s in raw.get("on_failure", ())),
        verify=None
        if verify is None
        else Verification(
            checks=tuple(_parse_step(c) for c in verify["checks"]),
            timeout=durations.parse_duration(verify.get("timeout", 300)),
            interval=durations.parse_duration(verify.get("interval", 10)),
        ),
    )


def merge_policy(base: Any, overrides: Mapping[str, Any]) -> Any:
    """``base`` (a frozen policy dataclass) with the keys of ``overrides`` replaced, nested
    policies merged key by key, durations parsed; ``null`` disables an optional limit."""
    changes: dict[str, Any] = {}
    hints = typing.get_type_hints(type(base))
    for key, value in overrides.items():
        kind, current = hints[key], getattr(base, key)
        if value is None:
            changes[key] = None
        elif isinstance(value, Mapping):
            changes[key] = (
                merge_policy(current, value)
                if current is not None
                else _new_policy(_policy_type(kind), value, key)
            )
        else:
            changes[key] = _scalar(kind, value)
    return dataclasses.replace(base, **changes)


def _new_policy(policy_type: Any, values: Mapping[str, Any], path: str) -> Any:
    """A nested policy the defaults left off (``null``): every required field must be given."""
    hints = typing.get_type_hints(policy_type)
    fields = {
        key: _new_policy(_policy_type(hints[key]), value, f"{path}.{key}")
        if isinstance(value, Mapping)
        else _scalar(hints[key], value)
        for key, value in values.items()
    }
    try:
        return policy_type(**fields)
    except TypeError as e:
        missing = [f.name for f in dataclasses.fields(policy_type) if f.name not in values]
        raise ValueError(
            f"safety.{path} is off by default, so it needs {' and '.join(missing)} too"
        ) from e


def _scalar(kind: Any, value: Any) -> Any:
    if float in _types_of(kind) and isinstance(value, str):
        return durations.parse_duration(value)
    if float in _types_of(kind) and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


def _types_of(kind: Any) -> tuple[Any, ...]:
    return typing.get_args(kind) or (kind,)


def _policy_type(kind: Any) -> Any:
    return next(t for t in _types_of(kind) if dataclasses.is_dataclass(t))


def template_sources(raw: Mapping[str, Any]) -> list[str]:
    """Every string of a playbook document that is rendered or evaluated against an alert."""
    found: list[str] = []

    def walk(value: Any) -> None:
        if isinstance(value, str):
            found.append(value)
        elif isinstance(value, Mapping):
            for item in value.values():
                walk(item)
        elif isinstance(value, list | tuple):
            for item in value:
                walk(item)

    walk(raw.get("target", ""))
    for key in ("steps", "on_failure"):
        walk(raw.get(key, []))
    walk(raw.get("verify", {}))
    return found


def _parse_step(raw: Mapping[str, Any]) -> Step:
    retry = raw.get("retry", {})
    cases = raw.get("choose")
    on_branch = raw.get("on_branch", ())
    return Step(
        name=raw["name"],
        action=raw.get("action", CHOOSE),
        params=_freeze(raw.get("params", {})),
        when=raw.get("when"),
        expect=raw.get("expect"),
        choice=None
        if cases is None
        else Choice(
            cases=tuple(Case(branch=c["branch"], when=c.get("when")) for c in cases),
            default=raw.get("default"),
        ),
        on_branch=(on_branch,) if isinstance(on_branch, str) else tuple(on_branch),
        timeout=durations.parse_duration(raw.get("timeout", DEFAULT_STEP_TIMEOUT)),
        retry=RetryPolicy(
            attempts=retry.get("attempts", 1),
            backoff=durations.parse_duration(retry.get("backoff", 1)),
            max_backoff=durations.parse_duration(retry.get("max_backoff", 60)),
        ),
    )


def _freeze(value: Any) -> Any:
    """A read-only deep copy, so a playbook cannot be changed through its params."""
    if isinstance(value, Mapping):
        return MappingProxyType({k: _freeze(v) for k, v in value.items()})
    if isinstance(value, list | tuple):
        return tuple(_freeze(v) for v in value)
    return value
