"""The resource table, and the discovery documents kubectl and client libraries read from it.

Each served resource is one `ResourceType` row; routing, storage keys, error messages and
``/api``, ``/apis`` discovery are all derived from the table, so adding a resource (or a CRD)
is one more row.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Iterator
from typing import Any

from remediator.simulation.kubeapi import errors

OBJECT_VERBS = ("create", "delete", "deletecollection", "get", "list", "patch", "update", "watch")
SUBRESOURCE_VERBS = ("get", "patch", "update")

#: What ``/version`` reports; kubectl only warns on skew, but keep it close to our kubectl 1.32.
VERSION_INFO: dict[str, str] = {
    "major": "1",
    "minor": "32",
    "gitVersion": "v1.32.0-remediator-emulator",
    "gitCommit": "0000000000000000000000000000000000000000",
    "gitTreeState": "clean",
    "buildDate": "2025-01-01T00:00:00Z",
    "goVersion": "go1.23.4",
    "compiler": "gc",
    "platform": "linux/amd64",
}


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class ResourceType:
    """One REST resource, e.g. ``apps/v1 deployments``."""

    group: str
    """API group; ``""`` for the core group served under ``/api/v1``."""
    version: str
    plural: str
    """The URL path segment, e.g. ``deployments``."""
    kind: str
    namespaced: bool = True
    short_names: tuple[str, ...] = ()
    categories: tuple[str, ...] = ()
    subresources: frozenset[str] = frozenset()
    """Among ``status``, ``scale``, ``log``, ``finalize``."""
    builtin: bool = True
    """False for CRDs: the real server rejects strategic-merge patches on them."""
    orphans_by_default: bool = False
    """batch/v1 Jobs keep their pods on a bare DELETE, for backward compatibility."""

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def singular(self) -> str:
        return self.kind.lower()

    @property
    def list_kind(self) -> str:
        return f"{self.kind}List"

    @property
    def has_status(self) -> bool:
        """With a status subresource, writes to the main resource leave ``status`` alone."""
        return "status" in self.subresources


def _row(
    api_version: str,
    kind: str,
    plural: str,
    *,
    namespaced: bool = True,
    short: tuple[str, ...] = (),
    all_category: bool = False,
    sub: tuple[str, ...] = (),
    builtin: bool = True,
    orphans: bool = False,
) -> ResourceType:
    group, _, version = api_version.rpartition("/")
    return ResourceType(
        group=group,
        version=version,
        plural=plural,
        kind=kind,
        namespaced=namespaced,
        short_names=short,
        categories=("all",) if all_category else (),
        subresources=frozenset(sub),
        builtin=builtin,
        orphans_by_default=orphans,
    )


DEFAULT_RESOURCES: tuple[ResourceType, ...] = (
    _row("v1", "Namespace", "namespaces", namespaced=False, short=("ns",),
         sub=("status", "finalize")),
    _row("v1", "Pod", "pods", short=("po",), all_category=True, sub=("status", "log")),
    _row("v1", "Event", "events", short=("ev",)),
    _row("v1", "Service", "services", short=("svc",), all_category=True, sub=("status",)),
    _row("v1", "Endpoints", "endpoints", short=("ep",)),
    _row("v1", "Secret", "secrets"),
    _row("v1", "ConfigMap", "configmaps", short=("cm",)),
    _row("v1", "PersistentVolumeClaim", "persistentvolumeclaims", short=("pvc",), sub=("status",)),
    _row("v1", "ServiceAccount", "serviceaccounts", short=("sa",)),
    _row("apps/v1", "Deployment", "deployments", short=("deploy",), all_category=True,
         sub=("status", "scale")),
    _row("apps/v1", "StatefulSet", "statefulsets", short=("sts",), all_category=True,
         sub=("status", "scale")),
    _row("apps/v1", "DaemonSet", "daemonsets", short=("ds",), all_category=True, sub=("status",)),
    _row("apps/v1", "ReplicaSet", "replicasets", short=("rs",), all_category=True,
         sub=("status", "scale")),
    _row("batch/v1", "Job", "jobs", all_category=True, sub=("status",), orphans=True),
    _row("networking.k8s.io/v1", "Ingress", "ingresses", short=("ing",), sub=("status",)),
    _row("coordination.k8s.io/v1", "Lease", "leases"),
    _row("rbac.authorization.k8s.io/v1", "ClusterRole", "clusterroles", namespaced=False),
    _row("rbac.authorization.k8s.io/v1", "ClusterRoleBinding", "clusterrolebindings",
         namespaced=False),
    _row("rbac.authorization.k8s.io/v1", "Role", "roles"),
    _row("rbac.authorization.k8s.io/v1", "RoleBinding", "rolebindings"),
    _row("cert-manager.io/v1", "Certificate", "certificates", short=("cert", "certs"),
         sub=("status",), builtin=False),
)  # fmt: skip


class ResourceTable:
    """Lookups over a fixed set of resource types (by URL path or by apiVersion + kind)."""

    def __init__(self, resources: Iterable[ResourceType]) -> None:
        self._resources = tuple(resources)
        self._by_path = {(r.group, r.version, r.plural): r for r in self._resources}
        self._by_kind = {(r.api_version, r.kind): r for r in self._resources}
        if len(self._by_path) != len(self._resources) or len(self._by_kind) != len(self._resources):
            raise ValueError("resource table has duplicate plurals or kinds")

    def __iter__(self) -> Iterator[ResourceType]:
        return iter(self._resources)

    def by_path(self, group: str, version: str, plural: str) -> ResourceType | None:
        return self._by_path.get((group, version, plural))

    def by_kind(self, api_version: str, kind: str) -> ResourceType:
        """The resource for an object's apiVersion/kind; a 404 Status when not served."""
        try:
            return self._by_kind[(api_version, kind)]
        except KeyError:
            raise errors.StatusError(
                404, "NotFound", f'no matches for kind "{kind}" in version "{api_version}"'
            ) from None

    def group_versions(self) -> dict[str, list[str]]:
        """Named groups (not the core group) with their versions, in table order."""
        groups: dict[str, list[str]] = {}
        for resource in self._resources:
            if resource.group:
                versions = groups.setdefault(resource.group, [])
                if resource.version not in versions:
                    versions.append(resource.version)
        return groups


def api_versions(server_address: str) -> dict[str, Any]:
    """``GET /api``: the legacy core group."""
    return {
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [
            {"clientCIDR": "0.0.0.0/0", "serverAddress": server_address}
        ],
    }


def _api_group(name: str, versions: list[str]) -> dict[str, Any]:
    entries = [{"groupVersion": f"{name}/{v}", "version": v} for v in versions]
    return {"name": name, "versions": entries, "preferredVersion": entries[0]}


def api_group_list(table: ResourceTable) -> dict[str, Any]:
    """``GET /apis``, answered as a plain APIGroupList (kubectl falls back from aggregated v2)."""
    return {
        "kind": "APIGroupList",
        "apiVersion": "v1",
        "groups": [_api_group(g, vs) for g, vs in table.group_versions().items()],
    }


def api_group(table: ResourceTable, group: str) -> dict[str, Any] | None:
    versions = table.group_versions().get(group)
    if versions is None:
        return None
    return {"kind": "APIGroup", "apiVersion": "v1", **_api_group(group, versions)}


def api_resource_list(table: ResourceTable, group: str, version: str) -> dict[str, Any] | None:
    """``GET /api/v1`` or ``/apis/<group>/<version>``, including subresource entries."""
    resources: list[dict[str, Any]] = []
    for r in table:
        if (r.group, r.version) != (group, version):
            continue
        entry: dict[str, Any] = {
            "name": r.plural,
            "singularName": r.singular,
            "namespaced": r.namespaced,
            "kind": r.kind,
            "verbs": list(OBJECT_VERBS),
        }
        if r.short_names:
            entry["shortNames"] = list(r.short_names)
        if r.categories:
            entry["categories"] = list(r.categories)
        resources.append(entry)
        for sub in sorted(r.subresources):
            resources.append(_subresource_entry(r, sub))
    if not resources:
        return None
    group_version = f"{group}/{version}" if group else version
    return {
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": group_version,
        "resources": resources,
    }


def _subresource_entry(resource: ResourceType, sub: str) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "name": f"{resource.plural}/{sub}",
        "singularName": "",
        "namespaced": resource.namespaced,
        "kind": resource.kind,
        "verbs": list(SUBRESOURCE_VERBS),
    }
    if sub == "scale":
        entry.update(group="autoscaling", version="v1", kind="Scale")
    elif sub == "log":
        entry["verbs"] = ["get"]
    elif sub == "finalize":
        entry["verbs"] = ["update"]
    return entry
