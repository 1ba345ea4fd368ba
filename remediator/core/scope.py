"""Scope checks: which values may reach a Kubernetes name or namespace, and which namespaces.

Alert labels are untrusted input. A value used by a playbook must look like a plain identifier
before anything is rendered with it: a namespace of ``kube-system``, a ``../x``, a 300-character
string or one holding template syntax is refused, never evaluated, never sent.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

# \Z, not $: "$" also matches before a trailing newline, which would let "store-1\n" through.
DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?\Z")
DNS1123_SUBDOMAIN = re.compile(
    r"^(?=.{1,253}\Z)[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*\Z"
)
SAFE_LABEL_VALUE = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9._-]{0,61}[A-Za-z0-9])?\Z")
TEMPLATE_SYNTAX = re.compile(r"\{\{|\{%|\{#|\}\}|%\}")
# ``.get('x')`` is tried before ``.x``: the sandbox allows dict.get, which would otherwise be
# read as a label named "get" and leave "x" unchecked.
LABEL_REFERENCE = re.compile(
    r"alert\.labels(?:\.get\s*\(\s*['\"]([A-Za-z_][A-Za-z0-9_]*)['\"]"
    r"|\.([A-Za-z_][A-Za-z0-9_]*)"
    r"|\[\s*['\"]([A-Za-z_][A-Za-z0-9_]*)['\"]\s*\])"
)
DEFAULT_NAMESPACES = (r"store-[a-z0-9]([-a-z0-9]*[a-z0-9])?", "store-platform", "ingress-nginx")
"""Stores, the platform, and the ingress controller the storm playbook restarts."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ScopeProblem:
    field: str
    value: str
    """Truncated, safe to log."""
    message: str


def referenced_labels(templates: Iterable[str]) -> frozenset[str]:
    """Label names a playbook reads through ``alert.labels.X``, ``alert.labels['X']`` or
    ``alert.labels.get('X')``."""
    names = set()
    for source in templates:
        for got, dotted, indexed in LABEL_REFERENCE.findall(source):
            names.add(got or dotted or indexed)
    return frozenset(names)


_LABELS_ACCESS = re.compile(r"alert\s*(?:\.\s*labels|\[\s*['\"]labels['\"]\s*\])")


def opaque_label_access(source: str) -> bool:
    """True when a template reads labels in a way :func:`referenced_labels` cannot follow
    (aliasing, iteration, a variable key): its values would escape the scope check."""
    for access in _LABELS_ACCESS.finditer(source):
        reference = LABEL_REFERENCE.match(source, access.start())
        if reference is None or reference.group(2) in _MAPPING_METHODS:
            return True
    return False


_MAPPING_METHODS = frozenset({"items", "values", "keys"})
"""Read through these, every label escapes the per-name check."""


def check_labels(labels: Mapping[str, str], names: Iterable[str]) -> list[ScopeProblem]:
    """Problems with the values of ``names``; a missing label is left to template rendering."""
    problems = []
    for name in sorted(names):
        value = labels.get(name)
        if value is None:
            continue
        shown = value[:64] + ("…" if len(value) > 64 else "")
        if TEMPLATE_SYNTAX.search(value):
            problems.append(
                ScopeProblem(
                    field=f"labels.{name}", value=shown, message="contains template syntax"
                )
            )
        elif not SAFE_LABEL_VALUE.match(value):
            problems.append(
                ScopeProblem(
                    field=f"labels.{name}",
                    value=shown,
                    message="must be 1-63 letters, digits, '.', '_' or '-', starting and ending "
                    "with a letter or digit",
                )
            )
    return problems


def compile_allowlist(patterns: Iterable[str]) -> tuple[re.Pattern[str], ...]:
    return tuple(re.compile(rf"^(?:{p})\Z") for p in patterns)


def check_namespace(namespace: str, allowlist: Iterable[re.Pattern[str]]) -> str | None:
    """None when allowed, else why not."""
    if not DNS1123_LABEL.match(namespace):
        return f"namespace {namespace[:64]!r} is not a DNS-1123 label"
    if not any(p.match(namespace) for p in allowlist):
        return f"namespace {namespace!r} is outside the allowlist"
    return None


def check_name(name: str) -> str | None:
    if not DNS1123_SUBDOMAIN.match(name):
        return f"name {name[:64]!r} is not a DNS-1123 subdomain"
    return None
