"""The action plug-in interface and the registry the executor dispatches through.

An action is an object with a ``spec`` (name, typed params, mutating/destructive) and an async
``run(params, context)``. The executor looks actions up by name, so it has no branches on
action names; playbooks naming unknown actions or params fail at load time.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import aiohttp
import structlog

from remediator.adapters import kubernetes, prometheus
from remediator.config import Settings
from remediator.core.actions import ActionSpec

Output = Mapping[str, Any]


@dataclass(frozen=True, slots=True, kw_only=True)
class Resources:
    """Long-lived clients shared by all actions; built once by :mod:`remediator.running`."""

    settings: Settings
    http: aiohttp.ClientSession
    prometheus: prometheus.PrometheusClient | None = None
    kube: kubernetes.KubeClient | None = None
    secrets: tuple[str, ...] = ()
    """Known secret values, masked wherever they would appear in outputs or errors."""
    provisioner_token: str | None = None
    """Bearer token for the store provisioner API, read from ``provisioner.token_file``."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ActionContext:
    resources: Resources
    dry_run: bool
    """Only reaches actions whose spec says ``supports_dry_run``; others are not called."""
    run_id: str
    playbook: str
    target: str
    deadline: float
    """Event-loop time by which this attempt must finish; pollers plan their last poll by it."""
    log: structlog.typing.FilteringBoundLogger


class Action(Protocol):
    spec: ActionSpec

    async def run(self, params: Any, context: ActionContext) -> Output: ...

    def preview(self, params: Any) -> str:
        """One line saying what ``run`` would do, for dry-run and ``simulate``."""
        ...


class ActionRegistry:
    """Name → action. An instance per daemon (or test); nothing is registered globally."""

    def __init__(self, actions: Iterable[Action] = ()) -> None:
        self._actions: dict[str, Action] = {}
        for action in actions:
            self.register(action)

    def register(self, action: Action) -> None:
        name = action.spec.name
        if name in self._actions:
            raise ValueError(f"action {name!r} is already registered")
        self._actions[name] = action

    def get(self, name: str) -> Action:
        return self._actions[name]

    def spec(self, name: str) -> ActionSpec | None:
        action = self._actions.get(name)
        return action.spec if action is not None else None

    def names(self) -> list[str]:
        return sorted(self._actions)


def builtin() -> ActionRegistry:
    """The registry of every action remediator ships."""
    # Imported here: the action modules import this module for the interface types.
    from remediator.engine.actions import helm, httprequest, logmessage, notify, promql, provisioner
    from remediator.engine.actions.kube import (
        delete,
        diagnose,
        finalizers,
        logs,
        rollout,
        scale,
        waiting,
    )

    return ActionRegistry(
        [
            logmessage.LogAction(),
            httprequest.HttpRequestAction(),
            promql.QueryAction(),
            promql.WaitForAction(),
            notify.NotifyWebhookAction(),
            provisioner.ProvisionerAction(),
            diagnose.DiagnoseAction(),
            rollout.RolloutRestartAction(),
            rollout.WaitRolloutAction(),
            scale.ScaleAction(),
            delete.DeleteAction(),
            delete.DeletePvcAction(),
            delete.DeleteNamespaceAction(),
            finalizers.RemoveFinalizersAction(),
            waiting.WaitForAction(),
            logs.LogsTailAction(),
            helm.ReleaseStatusAction(),
            helm.ClearPendingReleaseAction(),
        ]
    )
