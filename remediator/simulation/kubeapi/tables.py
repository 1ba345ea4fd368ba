"""Server-side printing: ``meta.k8s.io/v1`` Tables, what ``kubectl get`` asks for.

kubectl sends ``Accept: application/json;as=Table;g=meta.k8s.io;v=v1`` and prints the columns
the server chooses. The columns here follow the real server's printers for the kinds we serve,
reduced to the fields our simulations fill in.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from remediator.simulation.kubeapi import discovery

_Cell = Callable[[Mapping[str, Any], datetime], Any]


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Column:
    name: str
    cell: _Cell
    type: str = "string"
    format: str = ""
    priority: int = 0
    """kubectl shows priority-0 columns by default and the rest with ``-o wide``."""
    description: str = ""


def _path(obj: Mapping[str, Any], *keys: str, default: Any = None) -> Any:
    current: Any = obj
    for key in keys:
        if not isinstance(current, Mapping) or key not in current:
            return default
        current = current[key]
    return current


def _parse_time(text: str | None) -> datetime | None:
    if not text:
        return None
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None


def human_duration(seconds: float) -> str:
    """apimachinery's ``duration.HumanDuration`` (``45s``, ``3m12s``, ``5h``, ``12d``)."""
    s = max(int(seconds), 0)
    if s < 120:
        return f"{s}s"
    minutes = s // 60
    if minutes < 10:
        return f"{minutes}m{s % 60}s" if s % 60 else f"{minutes}m"
    if minutes < 180:
        return f"{minutes}m"
    hours = minutes // 60
    if hours < 8:
        return f"{hours}h{minutes % 60}m" if minutes % 60 else f"{hours}h"
    if hours < 48:
        return f"{hours}h"
    days = hours // 24
    if days < 365 * 2:
        return f"{days}d"
    return f"{days // 365}y"


def _since(text: str | None, now: datetime) -> str:
    then = _parse_time(text)
    return "<unknown>" if then is None else human_duration((now - then).total_seconds())


def _age(obj: Mapping[str, Any], now: datetime) -> str:
    return _since(_path(obj, "metadata", "creationTimestamp"), now)


def _name(obj: Mapping[str, Any], _: datetime) -> str:
    return str(_path(obj, "metadata", "name", default=""))


def _field(*keys: str, default: Any = "<none>") -> _Cell:
    return lambda obj, _: _path(obj, *keys, default=default)


NAME = Column(name="Name", cell=_name, format="name", description="Name must be unique.")
AGE = Column(name="Age", cell=_age, description="Time since creation.")


def _pod_ready(obj: Mapping[str, Any], _: datetime) -> str:
    statuses = _path(obj, "status", "containerStatuses", default=[]) or []
    total = len(_path(obj, "spec", "containers", default=[]) or [])
    return f"{sum(1 for s in statuses if s.get('ready'))}/{total}"


def _pod_status(obj: Mapping[str, Any], _: datetime) -> str:
    # Like kubectl: a waiting or terminated container's reason beats the pod phase.
    if _path(obj, "metadata", "deletionTimestamp"):
        return "Terminating"
    reason = str(
        _path(obj, "status", "reason", default="") or _path(obj, "status", "phase", default="")
    )
    for status in _path(obj, "status", "containerStatuses", default=[]) or []:
        state = status.get("state") or {}
        for key in ("waiting", "terminated"):
            if (state.get(key) or {}).get("reason"):
                return str(state[key]["reason"])
    return reason or "Unknown"


def _pod_restarts(obj: Mapping[str, Any], _: datetime) -> int:
    statuses = _path(obj, "status", "containerStatuses", default=[]) or []
    return sum(int(s.get("restartCount", 0)) for s in statuses)


def _ratio(ready: tuple[str, ...], total: tuple[str, ...]) -> _Cell:
    return lambda obj, _: (
        f"{_path(obj, *ready, default=0) or 0}/{_path(obj, *total, default=0) or 0}"
    )


def _count(*keys: str) -> _Cell:
    return lambda obj, _: int(_path(obj, *keys, default=0) or 0)


def _job_status(obj: Mapping[str, Any], _: datetime) -> str:
    for condition in _path(obj, "status", "conditions", default=[]) or []:
        if condition.get("status") == "True" and condition.get("type") in ("Complete", "Failed"):
            return str(condition["type"])
    return "Running"


def _service_ports(obj: Mapping[str, Any], _: datetime) -> str:
    ports = _path(obj, "spec", "ports", default=[]) or []
    rendered = [f"{p.get('port')}/{p.get('protocol', 'TCP')}" for p in ports]
    return ",".join(rendered) or "<none>"


def _endpoints(obj: Mapping[str, Any], _: datetime) -> str:
    found = [
        f"{address.get('ip')}:{port.get('port')}"
        for subset in obj.get("subsets") or []
        for address in subset.get("addresses") or []
        for port in subset.get("ports") or [{}]
    ]
    return ",".join(found) or "<none>"


def _data_count(obj: Mapping[str, Any], _: datetime) -> int:
    return len(obj.get("data") or {}) + len(obj.get("binaryData") or obj.get("stringData") or {})


def _ready_condition(obj: Mapping[str, Any], _: datetime) -> str:
    for condition in _path(obj, "status", "conditions", default=[]) or []:
        if condition.get("type") == "Ready":
            return str(condition.get("status", "Unknown"))
    return ""


def _event_object(obj: Mapping[str, Any], _: datetime) -> str:
    involved = obj.get("involvedObject") or {}
    return f"{str(involved.get('kind', '')).lower()}/{involved.get('name', '')}"


def _event_last_seen(obj: Mapping[str, Any], now: datetime) -> str:
    seen = (
        obj.get("lastTimestamp")
        or obj.get("eventTime")
        or _path(obj, "metadata", "creationTimestamp")
    )
    return _since(seen, now)


def _ingress_hosts(obj: Mapping[str, Any], _: datetime) -> str:
    hosts = [
        str(r.get("host")) for r in _path(obj, "spec", "rules", default=[]) or [] if r.get("host")
    ]
    return ",".join(hosts) or "*"


_COLUMNS: dict[tuple[str, str], tuple[Column, ...]] = {
    ("", "Namespace"): (NAME, Column(name="Status", cell=_field("status", "phase")), AGE),
    ("", "Pod"): (
        NAME,
        Column(name="Ready", cell=_pod_ready),
        Column(name="Status", cell=_pod_status),
        Column(name="Restarts", cell=_pod_restarts, type="integer"),
        AGE,
        Column(name="IP", cell=_field("status", "podIP"), priority=1),
        Column(name="Node", cell=_field("spec", "nodeName"), priority=1),
    ),
    ("", "Service"): (
        NAME,
        Column(name="Type", cell=_field("spec", "type")),
        Column(name="Cluster-IP", cell=_field("spec", "clusterIP")),
        Column(name="Ports", cell=_service_ports),
        AGE,
    ),
    ("", "Endpoints"): (NAME, Column(name="Endpoints", cell=_endpoints), AGE),
    ("", "Event"): (
        Column(name="Last Seen", cell=_event_last_seen),
        Column(name="Type", cell=_field("type", default="")),
        Column(name="Reason", cell=_field("reason", default="")),
        Column(name="Object", cell=_event_object),
        Column(name="Message", cell=_field("message", default="")),
        dataclasses.replace(NAME, priority=1),
    ),
    ("", "Secret"): (
        NAME,
        Column(name="Type", cell=_field("type", default="Opaque")),
        Column(name="Data", cell=_data_count, type="integer"),
        AGE,
    ),
    ("", "ConfigMap"): (NAME, Column(name="Data", cell=_data_count, type="integer"), AGE),
    ("", "PersistentVolumeClaim"): (
        NAME,
        Column(name="Status", cell=_field("status", "phase")),
        Column(name="Volume", cell=_field("spec", "volumeName", default="")),
        Column(name="Capacity", cell=_field("status", "capacity", "storage", default="")),
        Column(name="StorageClass", cell=_field("spec", "storageClassName", default="")),
        AGE,
    ),
    ("apps", "Deployment"): (
        NAME,
        Column(name="Ready", cell=_ratio(("status", "readyReplicas"), ("spec", "replicas"))),
        Column(name="Up-to-date", cell=_count("status", "updatedReplicas"), type="integer"),
        Column(name="Available", cell=_count("status", "availableReplicas"), type="integer"),
        AGE,
    ),
    ("apps", "StatefulSet"): (
        NAME,
        Column(name="Ready", cell=_ratio(("status", "readyReplicas"), ("spec", "replicas"))),
        AGE,
    ),
    ("apps", "DaemonSet"): (
        NAME,
        Column(name="Desired", cell=_count("status", "desiredNumberScheduled"), type="integer"),
        Column(name="Current", cell=_count("status", "currentNumberScheduled"), type="integer"),
        Column(name="Ready", cell=_count("status", "numberReady"), type="integer"),
        Column(name="Available", cell=_count("status", "numberAvailable"), type="integer"),
        AGE,
    ),
    ("apps", "ReplicaSet"): (
        NAME,
        Column(name="Desired", cell=_count("spec", "replicas"), type="integer"),
        Column(name="Current", cell=_count("status", "replicas"), type="integer"),
        Column(name="Ready", cell=_count("status", "readyReplicas"), type="integer"),
        AGE,
    ),
    ("batch", "Job"): (
        NAME,
        Column(name="Status", cell=_job_status),
        Column(name="Completions", cell=_ratio(("status", "succeeded"), ("spec", "completions"))),
        AGE,
    ),
    ("networking.k8s.io", "Ingress"): (
        NAME,
        Column(name="Class", cell=_field("spec", "ingressClassName")),
        Column(name="Hosts", cell=_ingress_hosts),
        AGE,
    ),
    ("coordination.k8s.io", "Lease"): (
        NAME,
        Column(name="Holder", cell=_field("spec", "holderIdentity", default="")),
        AGE,
    ),
    ("cert-manager.io", "Certificate"): (
        NAME,
        Column(name="Ready", cell=_ready_condition),
        Column(name="Secret", cell=_field("spec", "secretName", default="")),
        AGE,
    ),
}


def columns_for(resource: discovery.ResourceType) -> tuple[Column, ...]:
    return _COLUMNS.get((resource.group, resource.kind), (NAME, AGE))


def _row_object(obj: Mapping[str, Any], include_object: str) -> dict[str, Any] | None:
    if include_object == "None":
        return None
    if include_object == "Object":
        return dict(obj)
    return {
        "kind": "PartialObjectMetadata",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": obj.get("metadata", {}),
    }


def render_table(
    resource: discovery.ResourceType,
    objects: Sequence[Mapping[str, Any]],
    *,
    now: datetime,
    resource_version: str | None = None,
    continue_token: str | None = None,
    include_object: str = "Metadata",
) -> dict[str, Any]:
    """A Table for a list (or, with one object, for a single GET or watch event)."""
    columns = columns_for(resource)
    now = now.astimezone(UTC)
    rows = []
    for obj in objects:
        row: dict[str, Any] = {"cells": [column.cell(obj, now) for column in columns]}
        embedded = _row_object(obj, include_object)
        if embedded is not None:
            row["object"] = embedded
        rows.append(row)
    metadata: dict[str, Any] = {}
    if resource_version is not None:
        metadata["resourceVersion"] = resource_version
    if continue_token:
        metadata["continue"] = continue_token
    return {
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": metadata,
        "columnDefinitions": [
            {
                "name": c.name,
                "type": c.type,
                "format": c.format,
                "description": c.description,
                "priority": c.priority,
            }
            for c in columns
        ],
        "rows": rows,
    }
