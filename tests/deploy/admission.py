"""A ValidatingAdmissionPolicy's CEL, evaluated for real against admission requests.

There is no API server here, so the policy is evaluated the way kube-apiserver's admission
plugin does it, with cel-python (a CEL implementation, not a re-reading of the expressions):
the match conditions decide whether the policy applies (all must be true); then the variables,
in order, each seeing the ones before it as ``variables.<name>``; then each validation, whose
false (or error, ``failurePolicy: Fail``) denies with its message. ``object``, ``oldObject``
and ``namespaceObject`` are null where the API server passes none (DELETE, CREATE, a
cluster-scoped object). Match constraints (resources, operations) are checked by the tests.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import celpy
from celpy import celtypes
from celpy.adapter import json_to_cel
from celpy.evaluation import CELEvalError


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Verdict:
    applies: bool
    """All match conditions held (the policy judged the request)."""
    denied: tuple[str, ...] = ()
    """The messages of the failed validations."""

    @property
    def allowed(self) -> bool:
        return not self.denied


_ENVIRONMENT = celpy.Environment()


def _evaluate(expression: str, activation: Mapping[str, Any]) -> Any:
    program = _ENVIRONMENT.program(_ENVIRONMENT.compile(expression))
    try:
        return program.evaluate(dict(activation))
    except CELEvalError as e:
        return e


def _cel(obj: Mapping[str, Any] | None) -> Any:
    return json_to_cel(None if obj is None else dict(obj))


def evaluate(
    policy: Mapping[str, Any],
    *,
    request: Mapping[str, Any],
    object_: Mapping[str, Any] | None = None,
    old_object: Mapping[str, Any] | None = None,
    namespace_object: Mapping[str, Any] | None = None,
) -> Verdict:
    spec = policy["spec"]
    activation: dict[str, Any] = {
        "request": json_to_cel(dict(request)),
        "object": _cel(object_),
        "oldObject": _cel(old_object),
        "namespaceObject": _cel(namespace_object),
    }
    for condition in spec.get("matchConditions") or ():
        matched = _evaluate(condition["expression"], activation)
        if isinstance(matched, CELEvalError):  # failurePolicy: Fail
            return Verdict(applies=True, denied=(f"match condition failed: {matched}",))
        if matched != celtypes.BoolType(True):
            return Verdict(applies=False)
    variables: dict[celtypes.StringType, Any] = {}
    for variable in spec.get("variables") or ():
        activation["variables"] = celtypes.MapType(variables)
        variables[celtypes.StringType(variable["name"])] = _evaluate(
            variable["expression"], activation
        )
    activation["variables"] = celtypes.MapType(variables)
    denied = tuple(
        " ".join(str(validation.get("message") or validation["expression"]).split())
        for validation in spec["validations"]
        if _evaluate(validation["expression"], activation) != celtypes.BoolType(True)
    )
    return Verdict(applies=True, denied=denied)


def request(
    *,
    user: str,
    operation: str,
    resource: str,
    name: str,
    namespace: str = "",
    group: str = "",
    subresource: str = "",
) -> dict[str, Any]:
    """An AdmissionRequest (admission.k8s.io/v1) as the API server builds it."""
    return {
        "uid": "705ab4f5-6393-11e8-b7cc-42010a800002",
        "kind": {"group": group, "version": "v1", "kind": resource.capitalize()},
        "resource": {"group": group, "version": "v1", "resource": resource},
        "subResource": subresource,
        "requestKind": {"group": group, "version": "v1", "kind": resource.capitalize()},
        "requestResource": {"group": group, "version": "v1", "resource": resource},
        "requestSubResource": subresource,
        "name": name,
        "namespace": namespace,
        "operation": operation,
        "userInfo": {
            "username": user,
            "groups": ["system:serviceaccounts", "system:authenticated"],
        },
        "dryRun": False,
    }
