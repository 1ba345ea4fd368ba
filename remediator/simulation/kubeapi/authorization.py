"""Authentication and RBAC authorization, as kube-apiserver does them for bearer tokens.

A request is made by a `User`: the emulator's admin (its ``token``, or no credentials at all
when it has none: the test harness and the simulated controllers), or a service account
holding a token from `KubeEmulator.issue_token`. Admin requests are always allowed, like the
real ``system:masters`` group; every other request is decided by the RBAC objects stored in
the emulator, with the semantics of ``k8s.io/kubernetes/plugin/pkg/auth/authorizer/rbac``:

- ClusterRoleBindings grant their ClusterRole's rules everywhere; a RoleBinding grants its Role
  (same namespace) or ClusterRole only in its own namespace;
- a rule matches on verb, API group, resource (``pods``, ``pods/log``, ``*``, ``*/scale``) and,
  when it lists ``resourceNames``, the object's name; ``*`` matches any verb or group;
- subjects are users, groups and service accounts (``system:serviceaccount:NS:NAME``, in the
  groups ``system:serviceaccounts``, ``system:serviceaccounts:NS``, ``system:authenticated``).

The request attributes follow ``RequestInfo``: ``GET /api/v1/namespaces/x`` is in namespace
``x`` (so a RoleBinding there can grant it), a list or watch with ``metadata.name=`` in its
field selector is for that name. Discovery and ``SelfSubjectAccessReview`` are open to every
authenticated user, as the default ``system:discovery`` and ``system:basic-user`` bindings make
them. Denials are 403 Status bodies worded like the real ones; aggregated ClusterRoles and
non-resource URL rules are not emulated.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from remediator.simulation.kubeapi import errors

RBAC_GROUP = "rbac.authorization.k8s.io"
AUTHENTICATED = "system:authenticated"
MASTERS = "system:masters"
SERVICE_ACCOUNT_PREFIX = "system:serviceaccount:"


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class User:
    name: str
    groups: tuple[str, ...] = ()
    uid: str = ""

    @property
    def is_admin(self) -> bool:
        return MASTERS in self.groups

    def to_user_info(self) -> dict[str, Any]:
        info: dict[str, Any] = {"username": self.name, "groups": list(self.groups)}
        if self.uid:
            info["uid"] = self.uid
        return info


ADMIN = User(name="kubernetes-admin", groups=(MASTERS, AUTHENTICATED))
"""Who the harness is: its requests are never refused."""


def service_account(namespace: str, name: str, *, uid: str = "") -> User:
    return User(
        name=f"{SERVICE_ACCOUNT_PREFIX}{namespace}:{name}",
        groups=("system:serviceaccounts", f"system:serviceaccounts:{namespace}", AUTHENTICATED),
        uid=uid,
    )


def impersonated(name: str, groups: Sequence[str], uid: str = "") -> User:
    """The user a request's ``Impersonate-*`` headers name, as the apiserver fills it in: a
    service account without explicit groups gets its own, everyone is authenticated."""
    if name.startswith(SERVICE_ACCOUNT_PREFIX) and not groups:
        namespace, _, account = name.removeprefix(SERVICE_ACCOUNT_PREFIX).partition(":")
        return service_account(namespace, account, uid=uid)
    found = [*groups, *([] if AUTHENTICATED in groups else [AUTHENTICATED])]
    return User(name=name, groups=tuple(found), uid=uid)


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Attributes:
    """One resource request, as the authorizer sees it."""

    user: User
    verb: str
    api_group: str
    resource: str
    subresource: str = ""
    name: str = ""
    namespace: str = ""
    """Empty at the cluster scope."""

    @property
    def combined_resource(self) -> str:
        return f"{self.resource}/{self.subresource}" if self.subresource else self.resource


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Decision:
    allowed: bool
    reason: str = ""


RbacObjects = Callable[[str, str | None], list[dict[str, Any]]]
"""``(kind, namespace)`` → the stored RBAC objects of that kind (None: every namespace)."""


def request_verb(method: str, *, has_name: bool, watch: bool) -> str:
    """The RBAC verb of an HTTP request (``RequestInfoFactory``)."""
    if method in ("GET", "HEAD"):
        if watch:
            return "watch"
        return "get" if has_name else "list"
    if method == "DELETE":
        return "delete" if has_name else "deletecollection"
    return {"POST": "create", "PUT": "update", "PATCH": "patch"}.get(method, method.lower())


def name_from_field_selector(selector: str) -> str:
    """``metadata.name=x`` in a list or watch's field selector names the object authorized."""
    for raw in selector.split(","):
        term = raw.strip()
        if "!=" in term:
            continue
        key, found, value = term.partition("==") if "==" in term else term.partition("=")
        if found and key.strip() == "metadata.name":
            return value.strip()
    return ""


def authorize(attributes: Attributes, rbac: RbacObjects) -> Decision:
    user = attributes.user
    if user.is_admin:
        return Decision(allowed=True, reason="system:masters")
    for binding in rbac("ClusterRoleBinding", None):
        if not _applies_to(binding, user, namespace=""):
            continue
        rules = _role_rules(binding, rbac, namespace="")
        if any(_rule_allows(rule, attributes) for rule in rules):
            return Decision(allowed=True, reason=_allowed_by(binding, user))
    if attributes.namespace:
        for binding in rbac("RoleBinding", attributes.namespace):
            if not _applies_to(binding, user, namespace=attributes.namespace):
                continue
            rules = _role_rules(binding, rbac, namespace=attributes.namespace)
            if any(_rule_allows(rule, attributes) for rule in rules):
                return Decision(allowed=True, reason=_allowed_by(binding, user))
    return Decision(allowed=False)


def forbidden(attributes: Attributes, reason: str = "") -> errors.StatusError:
    """The 403 kube-apiserver answers (``responsewriters.Forbidden``, ``NewForbidden``)."""
    a = attributes
    scope = f'in the namespace "{a.namespace}"' if a.namespace else "at the cluster scope"
    why = (
        f'User "{a.user.name}" cannot {a.verb} resource "{a.combined_resource}" '
        f'in API group "{a.api_group}" {scope}'
    )
    if reason:
        why = f"{why}: {reason}"
    qualified = errors.group_resource(a.resource, a.api_group)
    subject = f'{qualified} "{a.name}"' if a.name else qualified
    details: dict[str, Any] = {"kind": a.resource}
    if a.name:
        details["name"] = a.name
    if a.api_group:
        details["group"] = a.api_group
    return errors.StatusError(403, "Forbidden", f"{subject} is forbidden: {why}", details=details)


# --- RBAC semantics ---------------------------------------------------------------------------


def _strings(node: Mapping[str, Any], key: str) -> list[str]:
    value = node.get(key)
    return [str(v) for v in value] if isinstance(value, list) else []


def _applies_to(binding: Mapping[str, Any], user: User, *, namespace: str) -> bool:
    for subject in binding.get("subjects") or ():
        if not isinstance(subject, Mapping):
            continue
        kind, name = subject.get("kind"), str(subject.get("name") or "")
        if kind == "User" and name == user.name:
            return True
        if kind == "Group" and name in user.groups:
            return True
        if kind == "ServiceAccount":
            # A RoleBinding may leave out the namespace of a service account of its own.
            account_namespace = str(subject.get("namespace") or namespace)
            if account_namespace and user.name == (
                f"{SERVICE_ACCOUNT_PREFIX}{account_namespace}:{name}"
            ):
                return True
    return False


def _role_rules(
    binding: Mapping[str, Any], rbac: RbacObjects, *, namespace: str
) -> list[Mapping[str, Any]]:
    ref = binding.get("roleRef") or {}
    if ref.get("apiGroup") != RBAC_GROUP:
        return []
    kind, name = ref.get("kind"), ref.get("name")
    if kind == "ClusterRole":
        roles = rbac("ClusterRole", None)
    elif kind == "Role" and namespace:
        roles = rbac("Role", namespace)
    else:
        return []
    for role in roles:
        if role["metadata"]["name"] == name:
            return [r for r in role.get("rules") or () if isinstance(r, Mapping)]
    return []  # a binding to a role that does not exist grants nothing


def _rule_allows(rule: Mapping[str, Any], a: Attributes) -> bool:
    verbs, groups = _strings(rule, "verbs"), _strings(rule, "apiGroups")
    if not ("*" in verbs or a.verb in verbs) or not ("*" in groups or a.api_group in groups):
        return False
    if not _resource_matches(_strings(rule, "resources"), a):
        return False
    names = _strings(rule, "resourceNames")
    return not names or a.name in names


def _resource_matches(resources: Iterable[str], a: Attributes) -> bool:
    for resource in resources:
        if resource in ("*", a.combined_resource):
            return True
        if a.subresource and resource == f"*/{a.subresource}":
            return True
    return False


def _allowed_by(binding: Mapping[str, Any], user: User) -> str:
    ref = binding.get("roleRef") or {}
    metadata = binding["metadata"]
    where = f'RoleBinding "{metadata["name"]}/{metadata.get("namespace")}"'
    if binding.get("kind") == "ClusterRoleBinding":
        where = f'ClusterRoleBinding "{metadata["name"]}"'
    who = f'User "{user.name}"'
    if user.name.startswith(SERVICE_ACCOUNT_PREFIX):
        namespace, _, account = user.name.removeprefix(SERVICE_ACCOUNT_PREFIX).partition(":")
        who = f'ServiceAccount "{account}/{namespace}"'
    return f'RBAC: allowed by {where} of {ref.get("kind")} "{ref.get("name")}" to {who}'
