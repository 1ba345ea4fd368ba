"""The kube and helm actions' specs: names, danger flags, and RBAC that is exactly what they use.

The Helm chart's Role is generated from (and checked against) ``spec.permissions``, so a rule
missing here is a 403 in production and a rule too many is privilege nobody needs. The last
test runs every action and derives the rules from the requests it actually made.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

import pytest

from remediator.adapters import kubernetes
from remediator.core.actions import ActionSpec, Permission
from remediator.engine.actions import helm, registry
from remediator.engine.actions.kube import (
    delete,
    diagnose,
    finalizers,
    logs,
    rollout,
    scale,
    waiting,
)
from remediator.engine.actions.registry import Action, Resources
from remediator.simulation import kubeapi

from . import objects
from .conftest import ApiLog, make_context

BUILTIN = registry.builtin()
ACTIONS: dict[str, Action] = {
    name: BUILTIN.get(name) for name in BUILTIN.names() if name.startswith(("k8s.", "helm."))
}
NAMES = sorted(ACTIONS)
VERBS = {"get", "list", "watch", "create", "update", "patch", "delete", "deletecollection"}
KNOWN = {(r.group, r.plural) for r in kubernetes.RESOURCES}
SUBRESOURCES = {
    ("apps", "deployments/scale"),
    ("apps", "statefulsets/scale"),
    ("", "pods/log"),
    ("", "namespaces/finalize"),
}


def spec(name: str) -> ActionSpec:
    return ACTIONS[name].spec


def test_the_contracted_actions_are_registered() -> None:
    assert NAMES == [
        "helm.clear_pending_release",
        "helm.release_status",
        "k8s.delete",
        "k8s.delete_namespace",
        "k8s.delete_pvc",
        "k8s.diagnose",
        "k8s.logs_tail",
        "k8s.remove_finalizers",
        "k8s.rollout_restart",
        "k8s.scale",
        "k8s.wait_for",
        "k8s.wait_rollout",
    ]


def test_danger_flags() -> None:
    mutating = {n for n in NAMES if spec(n).mutating}
    destructive = {n for n in NAMES if spec(n).destructive}

    assert mutating == {
        "helm.clear_pending_release",
        "k8s.delete",
        "k8s.delete_namespace",
        "k8s.delete_pvc",
        "k8s.remove_finalizers",
        "k8s.rollout_restart",
        "k8s.scale",
    }
    assert destructive == {"k8s.delete_namespace", "k8s.delete_pvc", "k8s.remove_finalizers"}
    assert all(spec(n).supports_dry_run for n in mutating)
    assert not any(spec(n).supports_dry_run for n in set(NAMES) - mutating)


@pytest.mark.parametrize("name", NAMES)
def test_permissions_are_well_formed(name: str) -> None:
    permissions = spec(name).permissions

    assert permissions, f"{name} declares no RBAC"
    for permission in permissions:
        assert isinstance(permission, Permission)
        assert re.fullmatch(r"([a-z0-9-]+(\.[a-z0-9-]+)*)?", permission.api_group)
        assert (permission.api_group, permission.resource) in KNOWN | SUBRESOURCES
        assert permission.verbs
        assert set(permission.verbs) <= VERBS
        assert len(set(permission.verbs)) == len(permission.verbs)
    keys = [(p.api_group, p.resource) for p in permissions]
    assert len(keys) == len(set(keys)), f"{name}: one rule per resource"


@pytest.mark.parametrize("name", NAMES)
def test_params_are_frozen_and_documented(name: str) -> None:
    params = spec(name).params
    assert dataclasses.is_dataclass(params)
    assert params.__dataclass_params__.frozen  # type: ignore[attr-defined]
    for field in dataclasses.fields(params):
        assert field.metadata.get("doc"), f"{name}.{field.name} has no doc"
    assert spec(name).description


# --- the rules each action really needs ---------------------------------------------------------

_VERB = {"POST": "create", "PUT": "update", "PATCH": "patch", "DELETE": "delete"}


def rule_of(method: str, path: str) -> tuple[str, str, str]:
    """The RBAC rule (group, resource[/subresource], verb) a request needs."""
    segments = path.strip("/").split("/")
    group = "" if segments[0] == "api" else segments[1]
    rest = segments[2:] if segments[0] == "api" else segments[3:]
    # namespaces/x/pods/... is scoping; namespaces/x and namespaces/x/finalize are namespaces.
    if rest[0] == "namespaces" and len(rest) >= 3 and rest[2] not in ("finalize", "status"):
        rest = rest[2:]
    resource = rest[0] if len(rest) < 3 else f"{rest[0]}/{rest[2]}"
    verb = _VERB.get(method) or ("get" if len(rest) > 1 else "list")
    return group, resource, verb


NS, OTHER = "store-a", "store-b"
APP, DB = f"{NS}-app", f"{NS}-db"


WORKLOADS: tuple[rollout.WorkloadKind, ...] = ("Deployment", "StatefulSet", "DaemonSet")


def scenarios() -> dict[str, list[Any]]:
    """Params that make each action use every rule it declares (dry run and for real)."""
    every_kind = [
        waiting.WaitForParams(
            api_version=r.api_version,
            kind=r.kind,
            state="absent",
            namespace=NS if r.namespaced else None,
            interval=0.01,
            **by,
        )
        for r in kubernetes.RESOURCES
        for by in ({"label_selector": "nothing=here"}, {"name": "store-nothing"})
    ]
    return {
        "k8s.diagnose": [diagnose.DiagnoseParams(namespace=NS)],
        "k8s.rollout_restart": [
            rollout.RestartParams(namespace=NS, kind=k, name=APP) for k in WORKLOADS
        ],
        "k8s.wait_rollout": [
            rollout.WaitRolloutParams(namespace=NS, kind=k, name=APP) for k in WORKLOADS
        ],
        "k8s.scale": [
            scale.ScaleParams(namespace=NS, kind="Deployment", name=APP, replicas=2),
            scale.ScaleParams(namespace=NS, kind="StatefulSet", name=APP, replicas=2),
        ],
        "k8s.delete": [
            delete.DeleteParams(namespace=NS, kind="Pod", name=f"{DB}-0"),
            delete.DeleteParams(namespace=NS, kind="Job", name=f"{NS}-init"),
            delete.DeleteParams(namespace=NS, kind="Secret", name=f"{DB}-credentials"),
            delete.DeleteParams(namespace=NS, kind="Ingress", name=APP),
            delete.DeleteParams(namespace=NS, kind="Certificate", name=f"{APP}-tls"),
        ],
        "k8s.delete_pvc": [delete.DeletePvcParams(namespace=NS, name=f"data-{DB}-0")],
        "k8s.delete_namespace": [delete.DeleteNamespaceParams(name=NS)],
        "k8s.remove_finalizers": [
            finalizers.RemoveFinalizersParams(
                kind="PersistentVolumeClaim", name="held", namespace=OTHER
            ),
            finalizers.RemoveFinalizersParams(kind="Namespace", name=OTHER, spec=True),
        ],
        "k8s.wait_for": every_kind,
        "k8s.logs_tail": [
            logs.LogsTailParams(namespace=NS, pod=f"{DB}-0"),
            logs.LogsTailParams(namespace=NS, label_selector=f"app={DB}"),
        ],
        "helm.release_status": [helm.ReleaseStatusParams(namespace=NS, release=NS)],
        "helm.clear_pending_release": [
            helm.ClearPendingParams(namespace=NS, release=NS, older_than=0)
        ],
    }


def seed(emulator: kubeapi.KubeEmulator) -> None:
    emulator.seed(objects.healthy_store(NS))
    emulator.seed(
        [
            objects.daemonset(APP, NS),
            objects.statefulset(APP, NS),
            objects.namespace(OTHER, finalizers=["example.com/hold"]),
            objects.pvc("held", OTHER, finalizers=["kubernetes.io/pvc-protection"]),
            objects.release_record(NS, NS, revision=3, status="pending-upgrade"),
        ]
    )
    emulator.delete("v1", "Namespace", OTHER)
    emulator.set_pod_log(NS, f"{DB}-0", "db", "ready\n")


def declared(name: str) -> set[tuple[str, str, str]]:
    return {(p.api_group, p.resource, v) for p in spec(name).permissions for v in p.verbs}


@pytest.mark.parametrize("name", NAMES)
async def test_permissions_are_exactly_what_the_action_uses(
    emulator: kubeapi.KubeEmulator, resources: Resources, api_log: ApiLog, name: str
) -> None:
    seed(emulator)
    action = ACTIONS[name]
    used: set[tuple[str, str, str]] = set()
    for dry_run in (True, False) if action.spec.mutating else (False,):
        for params in scenarios()[name]:
            await action.run(params, make_context(resources, dry_run=dry_run))
    used = {rule_of(s.method, s.path) for s in api_log.seen}

    assert used <= declared(name), f"{name} used undeclared {sorted(used - declared(name))}"
    assert used == declared(name), f"{name} declares unused {sorted(declared(name) - used)}"
