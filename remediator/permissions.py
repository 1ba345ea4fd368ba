"""The Kubernetes RBAC remediator needs: its actions' permissions plus the daemon's own.

Each action declares the rules it needs (``ActionSpec.permissions``); the daemon itself needs a
few more, listed here and nowhere else. Least privilege: inside a namespace remediator may do
only what a RoleBinding there grants (each store's is created with the store, see
``helm-charts/remediator-store-access``); cluster-wide it may only watch what discovery watches
and touch namespaces, never read a Secret. The Helm chart (``helm-charts/remediator/templates/
rbac.yaml``) and the kustomize base (``deploy/kustomize/base/rbac.yaml``) grant exactly
:func:`required_rules` of the built-in registry: ``tests/deploy/test_rbac.py`` fails when they
grant less or more, and ``python -m tests.deploy.rbac --write`` rewrites both rule blocks.

Nothing here runs in the daemon; it is pure data plus set arithmetic over the action catalogue.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from remediator.core.actions import ActionCatalog, Permission

DISCOVERY_PERMISSIONS: tuple[Permission, ...] = (
    # Store discovery (remediator.engine.watching): each store is a namespace labelled
    # app.kubernetes.io/part-of=store-platform; list, then watch from the list's resourceVersion.
    Permission(api_group="", resource="namespaces", verbs=("list", "watch")),
    # Each store's app Deployment and DB StatefulSet: their readiness decides the store's phase
    # and store_component_ready (one cluster-wide watch each, not one per store).
    Permission(api_group="apps", resource="deployments", verbs=("list", "watch")),
    Permission(api_group="apps", resource="statefulsets", verbs=("list", "watch")),
    # Each store's Ingress gives the URL the prober probes (a cluster-wide watch, unless
    # stores.probe.url_template is set).
    Permission(api_group="networking.k8s.io", resource="ingresses", verbs=("list", "watch")),
)
"""What the informers list and watch cluster-wide: one watch per kind, however many stores.
Granted by a ClusterRoleBinding; nothing here is a Secret or a write."""

STORE_CHECK_PERMISSIONS: tuple[Permission, ...] = (
    # Why a store that is not running yet fails (image pull, crash loop, Pending PVC, failed
    # Helm release): listed periodically, and only in the namespaces of stores provisioning or
    # failed. Helm's release records are Secrets, selected by owner=helm,name=<release>: read
    # per store namespace, through the store's RoleBinding, never cluster-wide.
    Permission(api_group="", resource="pods", verbs=("list",)),
    Permission(api_group="", resource="persistentvolumeclaims", verbs=("list",)),
    Permission(api_group="", resource="secrets", verbs=("list",)),
)
"""What the daemon reads inside each store namespace (the store's RoleBinding grants it)."""

DAEMON_PERMISSIONS: tuple[Permission, ...] = (*DISCOVERY_PERMISSIONS, *STORE_CHECK_PERMISSIONS)
"""What the daemon needs for itself, outside its own namespace."""

TERMINATING_NAMESPACE_PERMISSIONS: tuple[Permission, ...] = (
    # store-deletion-stuck works in a Terminating store namespace, whose RoleBinding the
    # namespace controller has already deleted with the rest of its contents (it keeps only
    # what has finalizers). Reading its PVCs and removing their finalizers must then work
    # without it. The one write granted cluster-wide besides namespaces; the admission policy
    # (templates/admission-policy.yaml) refuses it outside store namespaces.
    Permission(api_group="", resource="persistentvolumeclaims", verbs=("get", "list", "patch")),
)
"""Namespaced permissions also granted cluster-wide, for namespaces that lost their binding."""

OWN_NAMESPACE_PERMISSIONS: tuple[Permission, ...] = (
    # Leader election (remediator.engine.leading.LeaseElector) creates its Lease the first time.
    # RBAC cannot limit a create to a name (the new object's name is not part of the request
    # when it is authorized), so this one grant is on any Lease, still in this namespace only.
    Permission(api_group="coordination.k8s.io", resource="leases", verbs=("create",)),
)
"""What the daemon needs only in the namespace it runs in (granted by a Role, not a ClusterRole)."""

LEADER_LEASE_PERMISSIONS: tuple[Permission, ...] = (
    # LeaseElector reads the Lease every round, renews or takes it over (a compare-and-swap
    # replace) and hands it on at shutdown: get and update, never patch, list or delete.
    Permission(api_group="coordination.k8s.io", resource="leases", verbs=("get", "update")),
)
"""What the daemon needs on its leader Lease (``ha.lease_name``) alone: the Role grants it with
``resourceNames`` naming that Lease."""

CLUSTER_SCOPED: frozenset[tuple[str, str]] = frozenset(
    {
        ("", "namespaces"),
        ("", "nodes"),
        ("", "persistentvolumes"),
        ("apiextensions.k8s.io", "customresourcedefinitions"),
        ("rbac.authorization.k8s.io", "clusterroles"),
        ("rbac.authorization.k8s.io", "clusterrolebindings"),
        ("storage.k8s.io", "storageclasses"),
        ("cert-manager.io", "clusterissuers"),
    }
)
"""(API group, resource) pairs that are not namespaced; a subresource follows its resource.
Resources not listed are treated as namespaced, which only matters for how they are bound."""


@dataclass(frozen=True, slots=True, kw_only=True)
class RequiredRules:
    """The required permissions, split by how the manifests grant them."""

    cluster: tuple[Permission, ...]
    """Granted cluster-wide (a ClusterRole bound by a ClusterRoleBinding): the cluster-scoped
    resources (namespaces), what discovery watches (`DISCOVERY_PERMISSIONS`) and the
    terminating-namespace clean-up (`TERMINATING_NAMESPACE_PERMISSIONS`). No Secrets."""
    namespaced: tuple[Permission, ...]
    """Everything needed inside a store or platform namespace: a ClusterRole bound there by a
    RoleBinding (created with each store; cluster-wide only as an explicit opt-in)."""
    own_namespace: tuple[Permission, ...]
    """The daemon's own namespace: a Role and a RoleBinding."""
    leader_lease: tuple[Permission, ...]
    """The daemon's own namespace, on the leader Lease only: the same Role, ``resourceNames``."""


def normalise(permissions: Iterable[Permission]) -> list[Permission]:
    """One permission per (API group, resource), verbs merged and sorted, sorted by group."""
    verbs: dict[tuple[str, str], set[str]] = {}
    for permission in permissions:
        verbs.setdefault((permission.api_group, permission.resource), set()).update(
            permission.verbs
        )
    return [
        Permission(api_group=group, resource=resource, verbs=tuple(sorted(verbs[group, resource])))
        for group, resource in sorted(verbs)
    ]


def is_cluster_scoped(permission: Permission) -> bool:
    resource = permission.resource.partition("/")[0]
    return (permission.api_group, resource) in CLUSTER_SCOPED


def action_permissions(catalog: ActionCatalog) -> list[Permission]:
    """Every permission the catalogue's actions declare, normalised."""
    found: list[Permission] = []
    for name in catalog.names():
        spec = catalog.spec(name)
        if spec is not None:
            found.extend(spec.permissions)
    return normalise(found)


def required_rules(catalog: ActionCatalog) -> RequiredRules:
    """The actions' permissions plus the daemon's own, split by where they are granted."""
    anywhere = normalise([*action_permissions(catalog), *DAEMON_PERMISSIONS])
    in_namespaces = normalise([*action_permissions(catalog), *STORE_CHECK_PERMISSIONS])
    cluster_wide = [*DISCOVERY_PERMISSIONS, *TERMINATING_NAMESPACE_PERMISSIONS]
    return RequiredRules(
        cluster=tuple(normalise([*(p for p in anywhere if is_cluster_scoped(p)), *cluster_wide])),
        namespaced=tuple(p for p in in_namespaces if not is_cluster_scoped(p)),
        own_namespace=tuple(normalise(OWN_NAMESPACE_PERMISSIONS)),
        leader_lease=tuple(normalise(LEADER_LEASE_PERMISSIONS)),
    )


def required_permissions(catalog: ActionCatalog) -> list[Permission]:
    """Everything remediator needs, wherever granted, normalised into one list."""
    rules = required_rules(catalog)
    return normalise([*rules.cluster, *rules.namespaced, *rules.own_namespace, *rules.leader_lease])
