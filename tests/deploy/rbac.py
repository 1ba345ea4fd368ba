"""The RBAC rule blocks of the Helm chart and the kustomize base, as remediator computes them.

Both manifests hold literal rule lists between ``# BEGIN generated rules: <role>`` and
``# END generated rules: <role>`` comments, so that the chart needs no helm binary to be read
and reviewers see plain YAML. ``python -m tests.deploy.rbac`` prints what the blocks must say;
``--write`` rewrites them in place (then review the diff: it is a change of privileges).
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from remediator import permissions
from remediator.config import HaSettings
from remediator.core.actions import Permission
from remediator.engine.actions import registry

REPO = Path(__file__).resolve().parents[2]
CHART_RBAC = REPO / "helm-charts" / "remediator" / "templates" / "rbac.yaml"
KUSTOMIZE_RBAC = REPO / "deploy" / "kustomize" / "base" / "rbac.yaml"
MANIFESTS = (CHART_RBAC, KUSTOMIZE_RBAC)

ROLES = ("cluster", "namespaced", "own_namespace", "leader_lease")
"""Block names, also the fields of :class:`remediator.permissions.RequiredRules`."""
ROLE_SUFFIXES = {"cluster": "-cluster", "namespaced": "-actions"}
"""How the roles are told apart in the manifests: ClusterRoles by name suffix, the Role by kind
(its rules naming the leader Lease are the leader_lease block, the others own_namespace)."""
NAMED = frozenset({"leader_lease"})
"""Blocks whose rules carry ``resourceNames``: the leader Lease's name."""
LEADER_LEASE = HaSettings().lease_name
"""The kustomize base's leader Lease: the config's default ``ha.lease_name`` (the base leaves it
unset, the HA overlay names it)."""
LEASE_NAMES = {
    CHART_RBAC: '{{ include "remediator.fullname" . }}-leader',
    KUSTOMIZE_RBAC: LEADER_LEASE,
}
"""What each manifest names the Lease: the chart as its managed config's ``ha.lease_name``."""

Triple = tuple[str, str, str]
"""(API group, resource, verb): one grant, the unit both sides are compared in."""

BLOCK = re.compile(
    r"^(?P<indent>[ \t]*)# BEGIN generated rules: (?P<role>\w+)\n"
    r"(?P<body>.*?)"
    r"^(?P=indent)# END generated rules: (?P=role)\n",
    re.MULTILINE | re.DOTALL,
)


def expected() -> dict[str, tuple[Permission, ...]]:
    rules = permissions.required_rules(registry.builtin())
    return {role: getattr(rules, role) for role in ROLES}


def triples(permission_list: Iterable[Permission]) -> set[Triple]:
    return {(p.api_group, p.resource, verb) for p in permission_list for verb in p.verbs}


def rule_triples(rules: Sequence[Mapping[str, Any]] | None) -> set[Triple]:
    """Every (group, resource, verb) an RBAC ``rules:`` list grants."""
    found: set[Triple] = set()
    for rule in rules or ():
        for group in rule.get("apiGroups") or ():
            for resource in rule.get("resources") or ():
                for verb in rule.get("verbs") or ():
                    found.add((group, resource, verb))
    return found


def role_of(obj: Mapping[str, Any]) -> str | None:
    """Which block a ClusterRole object holds, ``"own_namespace"`` for the Role (which holds
    leader_lease too: see `rules_by_role`), or ``None`` for other objects."""
    kind = obj.get("kind")
    name = str(obj.get("metadata", {}).get("name", ""))
    if kind == "Role":
        return "own_namespace"
    if kind == "ClusterRole":
        for role, suffix in ROLE_SUFFIXES.items():
            if name.endswith(suffix):
                return role
        raise AssertionError(f"ClusterRole {name!r} has no known suffix {ROLE_SUFFIXES}")
    return None


def rules_by_role(docs: Iterable[Mapping[str, Any]]) -> dict[str, list[Mapping[str, Any]]]:
    """Each block's rules as the manifests grant them: the Role's rules with ``resourceNames``
    are leader_lease, the rest of the Role own_namespace."""
    found: dict[str, list[Mapping[str, Any]]] = {}
    for doc in docs:
        role = role_of(doc)
        if role is None:
            continue
        assert role not in found, f"two objects hold the {role} rules"
        found[role] = []
        for rule in doc.get("rules") or ():
            named = role == "own_namespace" and "resourceNames" in rule
            found.setdefault("leader_lease" if named else role, []).append(rule)
    return found


def render_block(
    permission_list: Iterable[Permission], *, indent: str, resource_name: str | None = None
) -> str:
    lines = []
    for p in permission_list:
        verbs = ", ".join(f'"{v}"' for v in p.verbs)
        lines += [
            f'{indent}- apiGroups: ["{p.api_group}"]',
            f'{indent}  resources: ["{p.resource}"]',
            *([f'{indent}  resourceNames: ["{resource_name}"]'] if resource_name else []),
            f"{indent}  verbs: [{verbs}]",
        ]
    return "".join(f"{line}\n" for line in lines)


def rewrite(text: str, wanted: Mapping[str, Iterable[Permission]], *, lease_name: str) -> str:
    def replace(match: re.Match[str]) -> str:
        indent, role = match["indent"], match["role"]
        name = lease_name if role in NAMED else None
        body = render_block(wanted[role], indent=indent, resource_name=name)
        return (
            f"{indent}# BEGIN generated rules: {role}\n"
            f"{body}"
            f"{indent}# END generated rules: {role}\n"
        )

    return BLOCK.sub(replace, text)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.deploy.rbac", description=__doc__)
    parser.add_argument("--write", action="store_true", help="rewrite the manifests' blocks")
    args = parser.parse_args(argv)
    wanted = expected()
    if args.write:
        for path in MANIFESTS:
            text = rewrite(path.read_text(encoding="utf-8"), wanted, lease_name=LEASE_NAMES[path])
            path.write_text(text, encoding="utf-8")
            sys.stdout.write(f"wrote {path.relative_to(REPO)}\n")
        return 0
    for role in ROLES:
        name = LEADER_LEASE if role in NAMED else None
        block = render_block(wanted[role], indent="", resource_name=name)
        sys.stdout.write(f"# {role}\n{block}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
