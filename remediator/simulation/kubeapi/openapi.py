"""A minimal OpenAPI v3 description: enough for kubectl to trust server-side field validation.

``kubectl create -f`` / ``apply -f`` validate manifests either on the client (which needs the
full schema) or, if the server's OpenAPI shows a ``fieldValidation`` query parameter on the
kind's PATCH operation, on the server. Publishing just those operations keeps kubectl on the
server-side path without us shipping the Kubernetes schemas.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from remediator.simulation.kubeapi import discovery

_FIELD_VALIDATION = {
    "name": "fieldValidation",
    "in": "query",
    "description": "How the server treats unknown or duplicate fields.",
    "schema": {"type": "string", "uniqueItems": True},
}


def _prefix(group: str, version: str) -> str:
    return f"api/{version}" if not group else f"apis/{group}/{version}"


def group_version_document(
    table: discovery.ResourceTable, group: str, version: str
) -> dict[str, Any] | None:
    paths: dict[str, Any] = {}
    for r in table:
        if (r.group, r.version) != (group, version):
            continue
        scope = "/namespaces/{namespace}" if r.namespaced else ""
        base = f"/{_prefix(group, version)}{scope}/{r.plural}"
        gvk = {"group": r.group, "version": r.version, "kind": r.kind}

        def operation(action: str, kind: str = r.kind, extension: dict[str, str] = gvk) -> Any:
            return {
                "operationId": f"{action}{kind}",
                "x-kubernetes-action": action,
                "x-kubernetes-group-version-kind": extension,
                "parameters": [_FIELD_VALIDATION] if action in ("post", "put", "patch") else [],
                "responses": {"200": {"description": "OK"}},
            }

        paths[base] = {"get": operation("list"), "post": operation("post")}
        paths[f"{base}/{{name}}"] = {
            "get": operation("get"),
            "put": operation("put"),
            "patch": operation("patch"),
            "delete": operation("delete"),
        }
    if not paths:
        return None
    return {
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes", "version": discovery.VERSION_INFO["gitVersion"]},
        "paths": paths,
        "components": {"schemas": {}},
    }


def root_document(table: discovery.ResourceTable) -> dict[str, Any]:
    """``GET /openapi/v3``: one entry per group-version, with a content hash as kubectl caches
    the documents by it."""
    paths: dict[str, Any] = {}
    versions = [("", "v1")] + [(g, v) for g, vs in table.group_versions().items() for v in vs]
    for group, version in versions:
        document = group_version_document(table, group, version)
        if document is None:
            continue
        digest = hashlib.sha256(json.dumps(document, sort_keys=True).encode()).hexdigest()
        prefix = _prefix(group, version)
        paths[prefix] = {"serverRelativeURL": f"/openapi/v3/{prefix}?hash={digest.upper()}"}
    return {"paths": paths}
