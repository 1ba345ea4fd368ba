"""remediator's RBAC in the simulated cluster: exactly what the deployment manifests grant.

`install` loads the Roles, ClusterRoles and bindings of ``deploy/kustomize/base/rbac.yaml``
(the kustomize base equals the Helm chart's default rendering object for object;
``tests/deploy/test_rbac.py`` fails when they differ) into the emulator, with remediator's
namespace and ServiceAccount, and returns remediator's service-account token. Each store
namespace gets the RoleBinding the store's chart includes (`store_role_binding`, from
``deploy/kustomize/store-namespace``, equal to ``helm-charts/remediator-store-access``).

remediator, given that token, then runs with exactly the chart's permissions, enforced by the
emulator (`kubeapi.authorization`); the harness and the simulated controllers stay admin.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
from pathlib import Path
from typing import Any

import yaml

from remediator.simulation import kubeapi, repository
from remediator.simulation.kubeapi import authorization

NAMESPACE = "remediator"
"""The namespace the kustomize base (and ``helm install -n remediator``) installs into."""
SERVICE_ACCOUNT = "remediator"
RBAC_KINDS = frozenset({"ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding"})
RBAC_FILE = Path("kustomize") / "base" / "rbac.yaml"
STORE_BINDING_FILE = Path("kustomize") / "store-namespace" / "rolebinding.yaml"

Obj = dict[str, Any]


@functools.cache
def _load(relative: Path) -> tuple[Obj, ...]:
    path = repository.find_directory("deploy") / relative
    docs = yaml.safe_load_all(path.read_text(encoding="utf-8"))
    return tuple(d for d in docs if isinstance(d, dict))


def rbac_manifests() -> list[Obj]:
    """remediator's Roles, ClusterRoles and bindings, as the kustomize base renders them."""
    return [copy.deepcopy(d) for d in _load(RBAC_FILE) if d.get("kind") in RBAC_KINDS]


def store_role_binding(namespace: str) -> Obj:
    """The RoleBinding the store chart creates in a store namespace, with the store."""
    (binding,) = copy.deepcopy(_load(STORE_BINDING_FILE))
    binding["metadata"]["namespace"] = namespace
    return binding


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class RemediatorAccess:
    """remediator's identity in one emulator; made by `install`."""

    emulator: kubeapi.KubeEmulator
    token: str
    """remediator's bearer token: its requests get exactly the manifests' RBAC."""
    user: authorization.User

    def refresh(self) -> list[Obj]:
        """Create the manifests' objects still missing whose namespace exists now (the
        platform namespaces' RoleBindings, where a test seeds those namespaces after the
        install; in a cluster they exist first). Returns what was created."""
        created = []
        for obj in rbac_manifests():
            metadata = obj["metadata"]
            namespace = metadata.get("namespace")
            if namespace is not None and self.emulator.get("v1", "Namespace", namespace) is None:
                continue
            if self.emulator.get(obj["apiVersion"], obj["kind"], metadata["name"], namespace):
                continue
            created.append(self.emulator.create(obj))
        return created

    def kubeconfig(self, path: Path, url: str) -> Path:
        """A kubeconfig for ``url`` with remediator's token (``kubernetes.kubeconfig``)."""
        return kubeapi.write_kubeconfig(path, url, token=self.token)


def install(emulator: kubeapi.KubeEmulator) -> RemediatorAccess:
    """remediator's namespace, ServiceAccount and RBAC (idempotent), and a token for it."""
    if emulator.get("v1", "Namespace", NAMESPACE) is None:
        emulator.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}})
    if emulator.get("v1", "ServiceAccount", SERVICE_ACCOUNT, NAMESPACE) is None:
        emulator.create(
            {
                "apiVersion": "v1",
                "kind": "ServiceAccount",
                "metadata": {"name": SERVICE_ACCOUNT, "namespace": NAMESPACE},
            }
        )
    access = RemediatorAccess(
        emulator=emulator,
        token=emulator.service_account_token(NAMESPACE, SERVICE_ACCOUNT),
        user=authorization.service_account(NAMESPACE, SERVICE_ACCOUNT),
    )
    access.refresh()
    return access
