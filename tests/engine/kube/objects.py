"""Manifest builders for a store namespace, healthy by default, and Helm 3 release records.

Each builder states the fields the actions read, so a test breaks one thing by overriding one
argument. Helm records are encoded the way Helm 3's storage driver writes them.
"""

from __future__ import annotations

import base64
import gzip
import json
from collections.abc import Mapping, Sequence
from typing import Any

Obj = dict[str, Any]
PART_OF = "app.kubernetes.io/part-of"
STAMP = "2026-01-10T10:00:00Z"


def namespace(name: str, *, finalizers: Sequence[str] = ()) -> Obj:
    metadata: Obj = {"name": name, "labels": {PART_OF: "store-platform"}}
    if finalizers:
        metadata["finalizers"] = list(finalizers)
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": metadata}


def owner_reference(owner: Mapping[str, Any]) -> Obj:
    return {
        "apiVersion": owner["apiVersion"],
        "kind": owner["kind"],
        "name": owner["metadata"]["name"],
        "uid": owner["metadata"]["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }


def container_status(
    name: str,
    *,
    ready: bool = True,
    restarts: int = 0,
    waiting: str | None = None,
    terminated: str | None = None,
    last_terminated: str | None = None,
    exit_code: int = 1,
) -> Obj:
    state: Obj = {"running": {"startedAt": STAMP}}
    if waiting is not None:
        state = {"waiting": {"reason": waiting, "message": f"{waiting} for {name}"}}
    elif terminated is not None:
        state = {"terminated": {"reason": terminated, "exitCode": exit_code}}
    status: Obj = {
        "name": name,
        "ready": ready and waiting is None and terminated is None,
        "restartCount": restarts,
        "image": f"registry.local/{name}:1",
        "state": state,
    }
    if last_terminated is not None:
        status["lastState"] = {"terminated": {"reason": last_terminated, "exitCode": exit_code}}
    return status


def pod(
    name: str,
    ns: str,
    *,
    labels: Mapping[str, str] | None = None,
    phase: str = "Running",
    containers: Sequence[str] = ("app",),
    statuses: Sequence[Obj] | None = None,
    init_statuses: Sequence[Obj] = (),
    owner: Mapping[str, Any] | None = None,
    env_secrets: Sequence[str] = (),
    volume_secrets: Sequence[str] = (),
    annotations: Mapping[str, str] | None = None,
    finalizers: Sequence[str] = (),
) -> Obj:
    statuses = [container_status(c) for c in containers] if statuses is None else list(statuses)
    ready = all(s["ready"] for s in statuses) and phase == "Running"
    metadata: Obj = {"name": name, "namespace": ns, "labels": dict(labels or {"app": "app"})}
    if owner is not None:
        metadata["ownerReferences"] = [owner_reference(owner)]
    if annotations:
        metadata["annotations"] = dict(annotations)
    if finalizers:
        metadata["finalizers"] = list(finalizers)
    specs: list[Obj] = [{"name": c, "image": f"registry.local/{c}:1"} for c in containers]
    for secret in env_secrets:
        specs[0].setdefault("env", []).append(
            {
                "name": secret.upper().replace("-", "_"),
                "valueFrom": {"secretKeyRef": {"name": secret, "key": "password"}},
            }
        )
    spec: Obj = {"containers": specs}
    if volume_secrets:
        spec["volumes"] = [{"name": s, "secret": {"secretName": s}} for s in volume_secrets]
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": metadata,
        "spec": spec,
        "status": {
            "phase": phase,
            "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
            "containerStatuses": statuses,
            "initContainerStatuses": list(init_statuses),
        },
    }


def deployment(
    name: str,
    ns: str,
    *,
    replicas: int = 1,
    available: int | None = None,
    generation_seen: int = 1,
) -> Obj:
    done = replicas if available is None else available
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": ns},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"containers": [{"name": "app", "image": "registry.local/app:1"}]},
            },
        },
        "status": {
            "observedGeneration": generation_seen,
            "replicas": replicas,
            "updatedReplicas": replicas,
            "readyReplicas": done,
            "availableReplicas": done,
        },
    }


def statefulset(name: str, ns: str, *, replicas: int = 1, ready: int | None = None) -> Obj:
    done = replicas if ready is None else ready
    return {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": {"name": name, "namespace": ns},
        "spec": {
            "replicas": replicas,
            "serviceName": name,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"containers": [{"name": "db", "image": "registry.local/mysql:8"}]},
            },
        },
        "status": {
            "observedGeneration": 1,
            "replicas": replicas,
            "updatedReplicas": replicas,
            "readyReplicas": done,
            "availableReplicas": done,
        },
    }


def daemonset(name: str, ns: str, *, desired: int = 2) -> Obj:
    return {
        "apiVersion": "apps/v1",
        "kind": "DaemonSet",
        "metadata": {"name": name, "namespace": ns},
        "spec": {
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"containers": [{"name": "agent", "image": "registry.local/agent:1"}]},
            },
        },
        "status": {
            "observedGeneration": 1,
            "desiredNumberScheduled": desired,
            "updatedNumberScheduled": desired,
            "numberAvailable": desired,
        },
    }


def job(
    name: str, ns: str, *, failed: int = 0, succeeded: int = 1, condition: str | None = "Complete"
) -> Obj:
    status: Obj = {"failed": failed, "succeeded": succeeded}
    if condition is not None:
        status["conditions"] = [{"type": condition, "status": "True"}]
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name, "namespace": ns},
        "spec": {
            "template": {
                "spec": {
                    "restartPolicy": "Never",
                    "containers": [{"name": "init", "image": "registry.local/wp-cli:1"}],
                }
            }
        },
        "status": status,
    }


def pvc(name: str, ns: str, *, phase: str = "Bound", finalizers: Sequence[str] = ()) -> Obj:
    metadata: Obj = {"name": name, "namespace": ns}
    if finalizers:
        metadata["finalizers"] = list(finalizers)
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": metadata,
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}},
        "status": {"phase": phase},
    }


def service(name: str, ns: str, *, type_: str = "ClusterIP") -> Obj:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": ns},
        "spec": {"type": type_, "selector": {"app": name}, "ports": [{"port": 80}]},
    }


def endpoints(name: str, ns: str, *, ready: int = 1, not_ready: int = 0) -> Obj:
    subset: Obj = {"ports": [{"port": 80}]}
    if ready:
        subset["addresses"] = [{"ip": f"10.0.0.{i + 1}"} for i in range(ready)]
    if not_ready:
        subset["notReadyAddresses"] = [{"ip": f"10.0.1.{i + 1}"} for i in range(not_ready)]
    return {
        "apiVersion": "v1",
        "kind": "Endpoints",
        "metadata": {"name": name, "namespace": ns},
        "subsets": [subset],
    }


def ingress(name: str, ns: str, *, host: str, tls_secret: str) -> Obj:
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "Ingress",
        "metadata": {"name": name, "namespace": ns},
        "spec": {
            "tls": [{"hosts": [host], "secretName": tls_secret}],
            "rules": [{"host": host}],
        },
    }


def certificate(name: str, ns: str, *, ready: str = "True", secret: str | None = None) -> Obj:
    return {
        "apiVersion": "cert-manager.io/v1",
        "kind": "Certificate",
        "metadata": {"name": name, "namespace": ns},
        "spec": {"secretName": secret or name, "dnsNames": [f"{name}.example.com"]},
        "status": {"conditions": [{"type": "Ready", "status": ready}]},
    }


def secret(name: str, ns: str, *, data: Mapping[str, str] | None = None) -> Obj:
    encoded = {k: base64.b64encode(v.encode()).decode() for k, v in (data or {}).items()}
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "namespace": ns},
        "type": "Opaque",
        "data": encoded,
    }


def event(
    name: str,
    ns: str,
    *,
    reason: str,
    kind: str = "Pod",
    involved: str = "app",
    type_: str = "Warning",
    last: str | None = None,
    event_time: str | None = None,
    message: str | None = None,
) -> Obj:
    obj: Obj = {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"name": name, "namespace": ns},
        "involvedObject": {"kind": kind, "name": involved, "namespace": ns},
        "reason": reason,
        "type": type_,
        "message": message if message is not None else f"{reason} for {kind.lower()}/{involved}",
    }
    if last is not None:
        obj["lastTimestamp"] = last
    if event_time is not None:
        obj["eventTime"] = event_time
    return obj


# --- Helm 3 release records -----------------------------------------------------------------


def helm_payload(release: Mapping[str, Any]) -> str:
    """What Helm's ``encodeRelease`` stores: base64(gzip(JSON))."""
    raw = json.dumps(release).encode()
    return base64.b64encode(gzip.compress(raw)).decode()


def release_record(
    release: str,
    ns: str,
    *,
    revision: int,
    status: str,
    modified_at: int | None = None,
    last_deployed: str = STAMP,
    payload: str | None = None,
) -> Obj:
    """The Secret Helm 3 writes for one revision; ``data`` is base64 once more, as for any
    Secret sent through the API."""
    labels = {"name": release, "owner": "helm", "status": status, "version": str(revision)}
    if modified_at is not None:
        labels["modifiedAt"] = str(modified_at)
    stored = (
        payload
        if payload is not None
        else helm_payload(
            {
                "name": release,
                "namespace": ns,
                "version": revision,
                "info": {
                    "first_deployed": STAMP,
                    "last_deployed": last_deployed,
                    "deleted": "",
                    "description": "Upgrade complete" if status == "deployed" else status,
                    "status": status,
                },
                "chart": {"metadata": {"name": "store-instance", "version": "0.3.1"}},
                "config": {},
                "manifest": "---\n",
            }
        )
    )
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {
            "name": f"sh.helm.release.v1.{release}.v{revision}",
            "namespace": ns,
            "labels": labels,
        },
        "type": "helm.sh/release.v1",
        "data": {"release": base64.b64encode(stored.encode()).decode()},
    }


def healthy_store(ns: str) -> list[Obj]:
    """A store namespace where every diagnose flag is clear (app and db ready)."""
    app, db = f"{ns}-app", f"{ns}-db"
    return [
        namespace(ns),
        deployment(app, ns),
        statefulset(db, ns),
        pod(f"{app}-7d9f-abcde", ns, labels={"app": app}, env_secrets=[f"{db}-credentials"]),
        pod(f"{db}-0", ns, labels={"app": db}, containers=("db",)),
        secret(f"{db}-credentials", ns, data={"password": "hunter2-db-secret"}),
        job(f"{ns}-init", ns),
        pvc(f"data-{db}-0", ns),
        service(app, ns),
        endpoints(app, ns),
        service(db, ns),
        endpoints(db, ns),
        ingress(app, ns, host=f"{ns}.stores.example.com", tls_secret=f"{app}-tls"),
        certificate(f"{app}-tls", ns),
        release_record(ns, ns, revision=1, status="superseded"),
        release_record(ns, ns, revision=2, status="deployed"),
        event("e1", ns, reason="Scheduled", type_="Normal", last="2026-01-10T10:00:00Z"),
    ]
