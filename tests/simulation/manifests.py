"""Small manifest builders, so tests state only the fields they are about."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

PART_OF = "app.kubernetes.io/part-of"


def namespace(name: str, *, labels: Mapping[str, str] | None = None) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {"name": name, "labels": dict(labels or {})},
    }


def owner_reference(owner: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": owner["apiVersion"],
        "kind": owner["kind"],
        "name": owner["metadata"]["name"],
        "uid": owner["metadata"]["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }


def pod(
    name: str,
    ns: str,
    *,
    labels: Mapping[str, str] | None = None,
    containers: Sequence[str] = ("app",),
    phase: str | None = None,
    owner: Mapping[str, Any] | None = None,
    finalizers: Sequence[str] = (),
) -> dict[str, Any]:
    metadata: dict[str, Any] = {"name": name, "namespace": ns, "labels": dict(labels or {})}
    if owner is not None:
        metadata["ownerReferences"] = [owner_reference(owner)]
    if finalizers:
        metadata["finalizers"] = list(finalizers)
    obj: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": metadata,
        "spec": {"containers": [{"name": c, "image": f"registry.local/{c}:1"} for c in containers]},
    }
    if phase is not None:
        obj["status"] = {"phase": phase}
    return obj


def deployment(
    name: str,
    ns: str,
    *,
    replicas: int = 1,
    labels: Mapping[str, str] | None = None,
    containers: Sequence[Mapping[str, Any]] | None = None,
) -> dict[str, Any]:
    selector = {"app": name}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": ns, "labels": dict(labels or {})},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": selector},
            "template": {
                "metadata": {"labels": selector},
                "spec": {
                    "containers": [dict(c) for c in containers]
                    if containers is not None
                    else [{"name": name, "image": f"registry.local/{name}:1"}]
                },
            },
        },
    }


def job(name: str, ns: str) -> dict[str, Any]:
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name, "namespace": ns},
        "spec": {
            "template": {
                "spec": {
                    "restartPolicy": "Never",
                    "containers": [{"name": "main", "image": "registry.local/job:1"}],
                }
            }
        },
    }


def certificate(name: str, ns: str, *, ready: str = "True") -> dict[str, Any]:
    return {
        "apiVersion": "cert-manager.io/v1",
        "kind": "Certificate",
        "metadata": {"name": name, "namespace": ns},
        "spec": {"secretName": f"{name}-tls", "dnsNames": [f"{name}.example.com"]},
        "status": {"conditions": [{"type": "Ready", "status": ready}]},
    }


def event(
    name: str, ns: str, *, involved: str, kind: str, reason: str, type_: str
) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"name": name, "namespace": ns},
        "involvedObject": {"kind": kind, "name": involved, "namespace": ns},
        "reason": reason,
        "type": type_,
        "message": f"{reason} for {kind.lower()}/{involved}",
    }
