"""What the core knows about an action: its name, its typed params, and how dangerous it is.

The engine's registry maps names to implementations; the core only needs these specs to validate
playbooks at load time and to plan safely, so it never imports the engine.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol


@dataclass(frozen=True, slots=True, kw_only=True)
class Permission:
    """One RBAC rule an action needs; the Helm chart and kustomize base grant exactly these."""

    api_group: str
    """"" for the core group."""
    resource: str
    """Plural, with subresource if any: ``deployments``, ``deployments/scale``, ``pods/log``."""
    verbs: tuple[str, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class ActionSpec:
    name: str
    """The playbook's ``action:`` value, e.g. ``k8s.rollout_restart``."""
    params: type[Any]
    """A frozen dataclass; its fields are the action's params, their types are enforced."""
    mutating: bool
    """Changes something outside remediator; suppressed in dry-run."""
    destructive: bool = False
    """Deletes data or forces deletion; playbooks must opt in (safety envelope)."""
    supports_dry_run: bool = False
    """The action itself honours dry-run (e.g. the API server's ``dryRun=All``); otherwise the
    executor never calls a mutating action in dry-run and reports its preview instead."""
    mutating_when: Callable[[Any], bool] | None = None
    destructive_when: Callable[[Any], bool] | None = None
    """For actions destructive only with some params (the provisioner's DELETE). At load time a
    step whose params cannot be built yet (templated) counts as destructive."""
    """For actions whose danger depends on params (``http.request`` with GET is read-only)."""
    description: str = ""
    permissions: tuple[Permission, ...] = ()
    """Kubernetes RBAC the action needs (issue: least-privilege RBAC derived from the registry)."""

    def is_destructive(self, params: object) -> bool:
        if self.destructive_when is not None:
            return self.destructive_when(params)
        return self.destructive

    def is_mutating(self, params: object) -> bool:
        if self.mutating_when is not None:
            return self.mutating_when(params)
        return self.mutating


class ActionCatalog(Protocol):
    """Read-only view of the registry, enough to validate and plan."""

    def spec(self, name: str) -> ActionSpec | None: ...

    def names(self) -> list[str]: ...


@dataclass(frozen=True, slots=True)
class StaticCatalog:
    """An ActionCatalog over a fixed mapping; handy for tests and offline validation."""

    specs: Mapping[str, ActionSpec]

    def spec(self, name: str) -> ActionSpec | None:
        return self.specs.get(name)

    def names(self) -> list[str]:
        return sorted(self.specs)
