"""Small controllers that make the emulator behave like a cluster running the store platform.

Each is an asyncio task fed by ``emulator.subscribe()``; events are only triggers, every handler
reads the current state again. What they do, each in the sync functions below (which seeding and
faults call directly, so the state is consistent the moment they return):

- workloads: a Deployment or StatefulSet whose generation is ahead of ``observedGeneration``
  (``kubectl rollout restart`` sets the template's ``restartedAt``; ``k8s.scale``) is marked
  progressing at once, and after ``rollout_delay`` its pods are replaced by new ones, as the
  kubelet would start them; replacing the pods is what clears a fault that a restart fixes;
- kubelet: a pod starts only if its images exist (`stores.IMAGES`), its Secrets exist and its
  PVCs are bound; a waiting pod is started when what it waits for appears;
- endpoints: Endpoints follow the readiness of the pods a Service selects; workload status
  follows the pods;
- volumes: a new claim of a known storage class is bound after ``volume_delay``; a claim
  deleted under a StatefulSet is recreated from its volume claim template;
- jobs: a new Job runs and completes after ``job_delay`` once the store's database is ready;
  a deleted init Job is recreated by the provisioner, which marks the store ``running`` when
  its init Job completes;
- certificates (cert-manager): an Ingress with a cluster-issuer annotation gets a Certificate
  per TLS entry; a new Certificate, or one whose Secret was deleted, is issued after
  ``certificate_delay``; a failed one (a fault) stays failed until deleted;
- provisioner: the twin's hooks install, re-apply (Helm upgrade) or remove a store's objects;
  when a deleting store's namespace is finally gone, the store is removed from the twin.

Namespace finalization and garbage collection are the emulator's own. Simplifications: pods
are owned by their Deployment directly (no ReplicaSets), there is one node, no scheduler, and
no pvc-protection controller (a PVC keeps that finalizer until someone removes it).
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import dataclasses
import secrets
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, timedelta
from types import TracebackType
from typing import Any

import structlog

from remediator.simulation import kubeapi, provisioner, stores
from remediator.simulation.stores import Obj

log = structlog.get_logger(__name__)

NODE = "sim-node-1"
NODE_IP = "172.18.0.2"
WORKLOAD_KINDS = ("Deployment", "StatefulSet")
_SUFFIX_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class ControllerSettings:
    rollout_delay: float = 1.0
    """Seconds from a changed pod template or replica count to the new pods being ready."""
    job_delay: float = 1.0
    """Seconds a Job runs before it completes (once the store's database is ready)."""
    certificate_delay: float = 0.5
    """Seconds cert-manager takes to issue a certificate."""
    volume_delay: float = 0.2
    """Seconds the volume provisioner takes to bind a new claim."""


# --- reading helpers ----------------------------------------------------------------------------


def stamp(emulator: kubeapi.KubeEmulator, *, ago: float = 0.0) -> str:
    moment = emulator.now().astimezone(UTC) - timedelta(seconds=ago)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def _terminating(obj: Mapping[str, Any] | None) -> bool:
    return obj is not None and bool(obj["metadata"].get("deletionTimestamp"))


def namespace_open(emulator: kubeapi.KubeEmulator, ns: str) -> bool:
    """The namespace exists and is not terminating: new objects may be created in it."""
    found = emulator.get("v1", "Namespace", ns)
    return found is not None and not _terminating(found)


def pod_ready(pod: Mapping[str, Any]) -> bool:
    return not _terminating(pod) and stores.condition_true(pod, "Ready")


def owned_pods(emulator: kubeapi.KubeEmulator, owner: Mapping[str, Any]) -> list[Obj]:
    uid = owner["metadata"]["uid"]
    return [
        pod
        for pod in emulator.list("v1", "Pod", owner["metadata"]["namespace"])
        if any(ref.get("uid") == uid for ref in pod["metadata"].get("ownerReferences") or [])
    ]


def workload_pods(emulator: kubeapi.KubeEmulator, kind: str, ns: str, name: str) -> list[Obj]:
    """The pods of a Deployment or StatefulSet; none if it does not exist."""
    obj = emulator.get("apps/v1", kind, name, ns)
    return [] if obj is None else owned_pods(emulator, obj)


def _revision(obj: Mapping[str, Any]) -> tuple[str, str]:
    """The pod label that says which template a pod was made from, and its current value."""
    digest = stores.template_hash(obj["spec"]["template"])
    if obj["kind"] == "Deployment":
        return "pod-template-hash", digest
    return "controller-revision-hash", f"{obj['metadata']['name']}-{digest}"


def _delete_quietly(
    emulator: kubeapi.KubeEmulator,
    api_version: str,
    kind: str,
    name: str,
    ns: str | None = None,
    *,
    propagation_policy: str | None = None,
) -> None:
    with contextlib.suppress(kubeapi.StatusError):
        emulator.delete(api_version, kind, name, ns, propagation_policy=propagation_policy)


def record_event(
    emulator: kubeapi.KubeEmulator,
    involved: Mapping[str, Any],
    *,
    reason: str,
    message: str,
    type_: str = "Warning",
    component: str = "kubelet",
) -> None:
    """An Event about ``involved``, as the component that noticed would record it."""
    metadata = involved["metadata"]
    ns = metadata.get("namespace") or "default"
    if not namespace_open(emulator, ns):
        return
    at = stamp(emulator)
    emulator.create({
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"name": f"{metadata['name']}.{secrets.token_hex(8)}", "namespace": ns},
        "involvedObject": {
            "apiVersion": involved.get("apiVersion"),
            "kind": involved.get("kind"),
            "name": metadata["name"],
            "namespace": ns,
            "uid": metadata.get("uid"),
        },
        "reason": reason,
        "message": message,
        "type": type_,
        "source": {"component": component},
        "reportingComponent": component,
        "firstTimestamp": at,
        "lastTimestamp": at,
        "count": 1,
    })  # fmt: skip


# --- kubelet ------------------------------------------------------------------------------------


def container_status(
    container: Mapping[str, Any],
    *,
    state: Mapping[str, Any],
    ready: bool,
    restarts: int = 0,
    last_state: Mapping[str, Any] | None = None,
) -> Obj:
    return {
        "name": container["name"],
        "image": container.get("image", ""),
        "ready": ready,
        "started": "running" in state,
        "restartCount": restarts,
        "state": dict(state),
        "lastState": dict(last_state or {}),
    }


def pod_conditions(emulator: kubeapi.KubeEmulator, *, ready: bool) -> list[Obj]:
    at = stamp(emulator)
    flag = "True" if ready else "False"
    found = [
        {"type": "PodReadyToStartContainers", "status": "True"},
        {"type": "Initialized", "status": "True"},
        {"type": "Ready", "status": flag},
        {"type": "ContainersReady", "status": flag},
        {"type": "PodScheduled", "status": "True"},
    ]
    if not ready:
        for condition in found[2:4]:
            condition["reason"] = "ContainersNotReady"
    return [{**c, "lastTransitionTime": at} for c in found]


def _missing_secret(emulator: kubeapi.KubeEmulator, ns: str, container: Mapping[str, Any]) -> str:
    for env in container.get("env") or []:
        ref = (env.get("valueFrom") or {}).get("secretKeyRef")
        if (
            ref
            and not ref.get("optional")
            and emulator.get("v1", "Secret", ref["name"], ns) is None
        ):
            return str(ref["name"])
    return ""


def _container_start(
    emulator: kubeapi.KubeEmulator, ns: str, container: Mapping[str, Any]
) -> tuple[Obj, bool]:
    """The state the kubelet gets a container into: (state, ready)."""
    image = str(container.get("image", ""))
    if image not in stores.IMAGES:
        waiting = {"reason": "ImagePullBackOff", "message": f'Back-off pulling image "{image}"'}
        return {"waiting": waiting}, False
    secret = _missing_secret(emulator, ns, container)
    if secret:
        waiting = {
            "reason": "CreateContainerConfigError",
            "message": f'secret "{secret}" not found',
        }
        return {"waiting": waiting}, False
    return {"running": {"startedAt": stamp(emulator)}}, True


def _unbound_claims(emulator: kubeapi.KubeEmulator, pod: Mapping[str, Any]) -> list[str]:
    ns = pod["metadata"]["namespace"]
    unbound = []
    for volume in (pod.get("spec") or {}).get("volumes") or []:
        claim = (volume.get("persistentVolumeClaim") or {}).get("claimName")
        if claim:
            found = emulator.get("v1", "PersistentVolumeClaim", claim, ns)
            if ((found or {}).get("status") or {}).get("phase") != "Bound":
                unbound.append(str(claim))
    return unbound


def pod_status(emulator: kubeapi.KubeEmulator, pod: Mapping[str, Any]) -> Obj:
    """What the scheduler and kubelet make of ``pod`` given the namespace's state now."""
    metadata = pod["metadata"]
    ns = metadata["namespace"]
    if _unbound_claims(emulator, pod):
        return {
            "phase": "Pending",
            "qosClass": "BestEffort",
            "conditions": [
                {
                    "type": "PodScheduled",
                    "status": "False",
                    "reason": "Unschedulable",
                    "message": "0/1 nodes are available: pod has unbound immediate "
                    "PersistentVolumeClaims. preemption: 0/1 nodes are available: 1 Preemption "
                    "is not helpful for scheduling.",
                    "lastTransitionTime": stamp(emulator),
                }
            ],
        }
    statuses = []
    for container in (pod.get("spec") or {}).get("containers") or []:
        state, ready = _container_start(emulator, ns, container)
        statuses.append(container_status(container, state=state, ready=ready))
    ready = bool(statuses) and all(s["ready"] for s in statuses)
    ip = stores.pod_ip(ns, metadata["name"])
    return {
        "phase": "Running" if all("running" in s["state"] for s in statuses) else "Pending",
        "conditions": pod_conditions(emulator, ready=ready),
        "hostIP": NODE_IP,
        "podIP": ip,
        "podIPs": [{"ip": ip}],
        "startTime": stamp(emulator),
        "containerStatuses": statuses,
        "qosClass": "BestEffort",
    }


def _outline(status: Mapping[str, Any]) -> tuple[Any, ...]:
    """What a status change must alter to count: phase, readiness, container states."""
    containers = tuple(
        (c.get("name"), c.get("ready"), tuple(sorted(c.get("state") or {})))
        for c in status.get("containerStatuses") or []
    )
    return status.get("phase"), stores.condition_true({"status": status}, "Ready"), containers


def start_waiting_pods(emulator: kubeapi.KubeEmulator, ns: str) -> None:
    """The kubelet's retry: pending pods (not a Job's) whose images, Secrets or claims are
    there now start; pods broken while running are not touched."""
    for pod in emulator.list("v1", "Pod", ns):
        owners = pod["metadata"].get("ownerReferences") or []
        if _terminating(pod) or any(ref.get("kind") == "Job" for ref in owners):
            continue
        status = pod.get("status") or {}
        if status.get("phase") != "Pending":
            continue
        fresh = pod_status(emulator, pod)
        if _outline(fresh) != _outline(status):
            pod["status"] = fresh
            emulator.update(pod)


def new_pod(
    emulator: kubeapi.KubeEmulator,
    owner: Mapping[str, Any],
    name: str,
    *,
    labels: Mapping[str, str],
    volumes: Sequence[Obj] = (),
) -> Obj:
    """Create a pod of ``owner``'s template, started as far as the state allows."""
    template = owner["spec"]["template"]
    template_meta = template.get("metadata") or {}
    spec = copy.deepcopy(template.get("spec") or {})
    spec["nodeName"] = NODE
    if volumes:
        spec["volumes"] = [*spec.get("volumes", []), *volumes]
    metadata: Obj = {
        "name": name,
        "namespace": owner["metadata"]["namespace"],
        "labels": {**(template_meta.get("labels") or {}), **labels},
        "ownerReferences": [stores.owner_reference(owner)],
    }
    if template_meta.get("annotations"):
        metadata["annotations"] = dict(template_meta["annotations"])
    pod: Obj = {"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": spec}
    pod["status"] = pod_status(emulator, pod)
    return emulator.create(pod)


# --- workloads ----------------------------------------------------------------------------------


def _keep_time(old: Sequence[Mapping[str, Any]], new: Obj, at: str) -> Obj:
    """Condition timestamps change only when the condition does, so a resync is a no-op."""
    same = [
        c
        for c in old
        if (c.get("type"), c.get("status"), c.get("reason"))
        == (new["type"], new["status"], new.get("reason"))
    ]
    if not same:
        return {**new, "lastUpdateTime": at, "lastTransitionTime": at}
    kept = {k: same[0][k] for k in ("lastUpdateTime", "lastTransitionTime") if k in same[0]}
    return {**new, **kept}


def sync_workload(
    emulator: kubeapi.KubeEmulator, kind: str, ns: str, name: str, *, observe: bool = False
) -> None:
    """Status from the pods, as the Deployment/StatefulSet controller reports it; ``observe``
    also records the current generation as seen (the controller has acted on it)."""
    obj = emulator.get("apps/v1", kind, name, ns)
    if obj is None or _terminating(obj):
        return
    wanted = int(obj["spec"].get("replicas", 1))
    label, current = _revision(obj)
    pods = [p for p in owned_pods(emulator, obj) if not _terminating(p)]
    updated = [p for p in pods if p["metadata"].get("labels", {}).get(label) == current]
    ready = [p for p in pods if pod_ready(p)]
    old = obj.get("status") or {}
    status: Obj = {
        "observedGeneration": obj["metadata"]["generation"]
        if observe
        else old.get("observedGeneration", 0),
        "replicas": len(pods),
        "updatedReplicas": len(updated),
        "readyReplicas": len(ready),
        "availableReplicas": len(ready),
    }
    if kind == "Deployment":
        status["unavailableReplicas"] = max(0, wanted - len(ready))
        done = len(updated) == wanted == len(ready) and len(pods) == wanted
        at = stamp(emulator)
        hashed = f"{name}-{current}"
        previous = old.get("conditions") or []
        status["conditions"] = [
            _keep_time(
                previous,
                {
                    "type": "Available",
                    "status": "True" if len(ready) >= wanted else "False",
                    "reason": "MinimumReplicasAvailable"
                    if len(ready) >= wanted
                    else "MinimumReplicasUnavailable",
                    "message": "Deployment has minimum availability."
                    if len(ready) >= wanted
                    else "Deployment does not have minimum availability.",
                },
                at,
            ),
            _keep_time(
                previous,
                {
                    "type": "Progressing",
                    "status": "True",
                    "reason": "NewReplicaSetAvailable" if done else "ReplicaSetUpdated",
                    "message": f'ReplicaSet "{hashed}" has successfully progressed.'
                    if done
                    else f'ReplicaSet "{hashed}" is progressing.',
                },
                at,
            ),
        ]
    else:
        status["currentReplicas"] = len(updated)
        status["currentRevision"] = old.get("currentRevision", current)
        status["updateRevision"] = current
        if len(updated) == wanted:
            status["currentRevision"] = current
        status["collisionCount"] = 0
    if status != old:
        obj["status"] = status
        emulator.update(obj)


def sync_workloads(emulator: kubeapi.KubeEmulator, ns: str) -> None:
    for kind in WORKLOAD_KINDS:
        for obj in emulator.list("apps/v1", kind, ns):
            sync_workload(emulator, kind, ns, obj["metadata"]["name"])


def ensure_claims(emulator: kubeapi.KubeEmulator, statefulset: Mapping[str, Any]) -> None:
    """The StatefulSet controller's claims from ``volumeClaimTemplates``, where missing."""
    ns = statefulset["metadata"]["namespace"]
    if not namespace_open(emulator, ns) or _terminating(statefulset):
        return
    for ordinal in range(int(statefulset["spec"].get("replicas", 1))):
        for template in statefulset["spec"].get("volumeClaimTemplates") or []:
            claim = stores.pvc_from_template(statefulset, ordinal, template)
            if emulator.get("v1", "PersistentVolumeClaim", claim["metadata"]["name"], ns) is None:
                emulator.create(claim)


def _claim_volumes(statefulset: Mapping[str, Any], ordinal: int) -> list[Obj]:
    return [
        {
            "name": template["metadata"]["name"],
            "persistentVolumeClaim": {
                "claimName": f"{template['metadata']['name']}-"
                f"{statefulset['metadata']['name']}-{ordinal}"
            },
        }
        for template in statefulset["spec"].get("volumeClaimTemplates") or []
    ]


def random_suffix() -> str:
    """Five characters, as the API server appends to a ``generateName``."""
    return "".join(secrets.choice(_SUFFIX_ALPHABET) for _ in range(5))


def roll(emulator: kubeapi.KubeEmulator, kind: str, ns: str, name: str) -> None:
    """Finish a rollout now: pods of an old template go, pods of the current one come up to
    ``spec.replicas``; the status then shows the generation as observed."""
    obj = emulator.get("apps/v1", kind, name, ns)
    if obj is None or _terminating(obj) or not namespace_open(emulator, ns):
        return
    wanted = int(obj["spec"].get("replicas", 1))
    label, current = _revision(obj)
    pods = [p for p in owned_pods(emulator, obj) if not _terminating(p)]
    keep = [p for p in pods if p["metadata"].get("labels", {}).get(label) == current]
    for pod in pods:
        if pod not in keep:
            _delete_quietly(emulator, "v1", "Pod", pod["metadata"]["name"], ns)
    if kind == "StatefulSet":
        ensure_claims(emulator, obj)
        present = {p["metadata"]["name"] for p in keep}
        for ordinal in range(wanted):
            pod_name = f"{name}-{ordinal}"
            if pod_name not in present:
                labels = {label: current, "statefulset.kubernetes.io/pod-name": pod_name}
                new_pod(
                    emulator, obj, pod_name, labels=labels, volumes=_claim_volumes(obj, ordinal)
                )
        for pod in keep:
            ordinal = pod["metadata"]["name"].rpartition("-")[2]
            if not ordinal.isdigit() or int(ordinal) >= wanted:
                _delete_quietly(emulator, "v1", "Pod", pod["metadata"]["name"], ns)
    else:
        for pod in keep[wanted:]:
            _delete_quietly(emulator, "v1", "Pod", pod["metadata"]["name"], ns)
        for _ in range(wanted - len(keep)):
            new_pod(emulator, obj, f"{name}-{current}-{random_suffix()}", labels={label: current})
    sync_workload(emulator, kind, ns, name, observe=True)
    sync_endpoints(emulator, ns)


def replace_pods(emulator: kubeapi.KubeEmulator, kind: str, ns: str, name: str) -> None:
    """Recreate a workload's pods from the same template, as after a node drain."""
    obj = emulator.get("apps/v1", kind, name, ns)
    if obj is None:
        return
    for pod in owned_pods(emulator, obj):
        _delete_quietly(emulator, "v1", "Pod", pod["metadata"]["name"], ns)
    roll(emulator, kind, ns, name)


# --- endpoints ----------------------------------------------------------------------------------


def _selects(selector: Mapping[str, str], pod: Mapping[str, Any]) -> bool:
    labels = pod["metadata"].get("labels") or {}
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def sync_endpoints(emulator: kubeapi.KubeEmulator, ns: str) -> None:
    """Endpoints of every selecting Service in ``ns``: ready pods as ``addresses``, the others
    as ``notReadyAddresses`` (as the endpoints controller writes them)."""
    if not namespace_open(emulator, ns):
        return
    pods = [
        p
        for p in emulator.list("v1", "Pod", ns)
        if not _terminating(p)
        and (p.get("status") or {}).get("podIP")
        and (p.get("status") or {}).get("phase") in ("Pending", "Running")
    ]
    for service in emulator.list("v1", "Service", ns):
        selector = (service.get("spec") or {}).get("selector") or {}
        if not selector:
            continue
        chosen = sorted(
            (p for p in pods if _selects(selector, p)), key=lambda p: p["status"]["podIP"]
        )
        subsets: list[Obj] = []
        if chosen:
            subset: Obj = {}
            for key, group in (
                ("addresses", [p for p in chosen if pod_ready(p)]),
                ("notReadyAddresses", [p for p in chosen if not pod_ready(p)]),
            ):
                if group:
                    subset[key] = [
                        {
                            "ip": p["status"]["podIP"],
                            "nodeName": NODE,
                            "targetRef": {
                                "kind": "Pod",
                                "name": p["metadata"]["name"],
                                "namespace": ns,
                                "uid": p["metadata"]["uid"],
                            },
                        }
                        for p in group
                    ]
            subset["ports"] = [
                {
                    "name": port.get("name", ""),
                    "port": port.get("targetPort", port.get("port")),
                    "protocol": port.get("protocol", "TCP"),
                }
                for port in service["spec"].get("ports") or []
            ]
            subsets.append(subset)
        name = service["metadata"]["name"]
        existing = emulator.get("v1", "Endpoints", name, ns)
        if existing is None:
            emulator.create({
                "apiVersion": "v1",
                "kind": "Endpoints",
                "metadata": {
                    "name": name,
                    "namespace": ns,
                    "labels": dict(service["metadata"].get("labels") or {}),
                },
                "subsets": subsets,
            })  # fmt: skip
        elif existing.get("subsets") != subsets:
            existing["subsets"] = subsets
            emulator.update(existing)


# --- volumes ------------------------------------------------------------------------------------


def bind_claim(emulator: kubeapi.KubeEmulator, ns: str, name: str) -> bool:
    """The volume provisioner: bind a pending claim of a known class; False if it cannot."""
    claim = emulator.get("v1", "PersistentVolumeClaim", name, ns)
    if claim is None or _terminating(claim):
        return False
    if (claim.get("status") or {}).get("phase") == "Bound":
        return True
    spec = claim.setdefault("spec", {})
    if spec.get("storageClassName", stores.STORAGE_CLASS) not in stores.STORAGE_CLASSES:
        return False
    spec["volumeName"] = f"pvc-{claim['metadata']['uid']}"
    size = ((spec.get("resources") or {}).get("requests") or {}).get("storage", "1Gi")
    claim["status"] = {
        "phase": "Bound",
        "accessModes": list(spec.get("accessModes") or ["ReadWriteOnce"]),
        "capacity": {"storage": size},
    }
    emulator.update(claim)
    return True


# --- jobs ---------------------------------------------------------------------------------------


def start_job(emulator: kubeapi.KubeEmulator, ns: str, name: str) -> None:
    """A new Job gets its pod and ``active: 1``; one that already ran is left alone."""
    job = emulator.get("batch/v1", "Job", name, ns)
    if job is None or _terminating(job) or (job.get("status") or {}).get("startTime"):
        return
    if not namespace_open(emulator, ns):
        return
    job["status"] = {"active": 1, "startTime": stamp(emulator), "ready": 0}
    job = emulator.update(job)
    labels = {"job-name": name, "batch.kubernetes.io/job-name": name}
    new_pod(emulator, job, f"{name}-{random_suffix()}", labels=labels)


def _database_ready(emulator: kubeapi.KubeEmulator, ns: str) -> bool:
    store_id = stores.store_id_of(ns)
    if store_id is None:
        return True
    db = stores.names(store_id).db
    return stores.available(emulator.get("apps/v1", "StatefulSet", db, ns))


def job_running(job: Mapping[str, Any]) -> bool:
    status = job.get("status") or {}
    done = stores.condition_true(job, "Complete") or stores.condition_true(job, "Failed")
    return bool(status.get("active")) and not done and not _terminating(job)


def set_store_status(
    cluster: stores.Cluster, store_id: str, status: provisioner.StoreStatus
) -> None:
    """The provisioner changes a store's status, mirrored onto its namespace's label."""
    if store_id in cluster.twin.stores:
        cluster.twin.set_status(store_id, status)
    reflect_status(cluster, store_id)


def reflect_status(cluster: stores.Cluster, store_id: str) -> None:
    store = cluster.twin.stores.get(store_id)
    ns = cluster.emulator.get("v1", "Namespace", stores.names(store_id).namespace)
    if store is None or ns is None:
        return
    labels = ns["metadata"].setdefault("labels", {})
    if labels.get(stores.STATUS_LABEL) != store.status:
        labels[stores.STATUS_LABEL] = store.status
        cluster.emulator.update(ns)


def finish_job(cluster: stores.Cluster, ns: str, name: str) -> bool:
    """Complete a running Job if it can (a store's database must be ready); the provisioner
    then marks a provisioning store ``running``. False while it must keep running."""
    emulator = cluster.emulator
    job = emulator.get("batch/v1", "Job", name, ns)
    if job is None or not job_running(job) or not _database_ready(emulator, ns):
        return False
    at = stamp(emulator)
    job["status"] = {
        "startTime": job["status"].get("startTime", at),
        "completionTime": at,
        "succeeded": 1,
        "ready": 0,
        "terminating": 0,
        "uncountedTerminatedPods": {},
        "conditions": [
            {
                "type": "SuccessCriteriaMet",
                "status": "True",
                "reason": "CompletionsReached",
                "message": "Reached expected number of succeeded pods",
                "lastProbeTime": at,
                "lastTransitionTime": at,
            },
            {
                "type": "Complete",
                "status": "True",
                "reason": "CompletionsReached",
                "message": "Reached expected number of succeeded pods",
                "lastProbeTime": at,
                "lastTransitionTime": at,
            },
        ],
    }
    job = emulator.update(job)
    for pod in owned_pods(emulator, job):
        pod["status"] = {
            **(pod.get("status") or {}),
            "phase": "Succeeded",
            "conditions": pod_conditions(emulator, ready=False),
            "containerStatuses": [
                container_status(
                    c,
                    state={"terminated": {"exitCode": 0, "reason": "Completed", "finishedAt": at}},
                    ready=False,
                )
                for c in pod["spec"].get("containers") or []
            ],
        }
        emulator.update(pod)
    store_id = stores.store_id_of(ns)
    if store_id is not None and name == stores.names(store_id).init_job:
        store = cluster.twin.stores.get(store_id)
        if store is not None and store.status == "provisioning":
            set_store_status(cluster, store_id, "running")
            log.info("store_provisioned", store_id=store_id)
    return True


def recreate_init_job(cluster: stores.Cluster, store_id: str) -> bool:
    """The provisioner's retry: an init Job deleted while its store is still wanted is created
    again (it then runs like any new Job)."""
    n = stores.names(store_id)
    store = cluster.twin.stores.get(store_id)
    emulator = cluster.emulator
    if store is None or store.status == "deleting" or not namespace_open(emulator, n.namespace):
        return False
    if emulator.get("batch/v1", "Job", n.init_job, n.namespace) is not None:
        return False
    emulator.create(stores.init_job(store_id))
    return True


# --- certificates -------------------------------------------------------------------------------


def ensure_certificates(emulator: kubeapi.KubeEmulator, ns: str) -> None:
    """cert-manager's ingress-shim: a Certificate per TLS entry of an annotated Ingress."""
    if not namespace_open(emulator, ns):
        return
    for ingress in emulator.list("networking.k8s.io/v1", "Ingress", ns):
        annotations = ingress["metadata"].get("annotations") or {}
        if _terminating(ingress) or stores.ISSUER_ANNOTATION not in annotations:
            continue
        for tls in (ingress.get("spec") or {}).get("tls") or []:
            name = tls.get("secretName")
            if name and emulator.get("cert-manager.io/v1", "Certificate", name, ns) is None:
                emulator.create(stores.certificate(ingress, tls))


def needs_issuing(certificate: Mapping[str, Any]) -> bool:
    """New (no Ready condition yet) or asked to re-issue (Issuing=True); a Certificate whose
    issuance failed waits in backoff, which only deleting it (or its Secret) cuts short."""
    found = stores.conditions(certificate)
    return not _terminating(certificate) and (
        "Ready" not in found or found.get("Issuing", {}).get("status") == "True"
    )


def issue_certificate(emulator: kubeapi.KubeEmulator, ns: str, name: str) -> None:
    cert = emulator.get("cert-manager.io/v1", "Certificate", name, ns)
    if cert is None or not needs_issuing(cert) or not namespace_open(emulator, ns):
        return
    secret = cert["spec"]["secretName"]
    if emulator.get("v1", "Secret", secret, ns) is None:
        emulator.create(stores.tls_secret(cert))
    at = stamp(emulator)
    now = emulator.now().astimezone(UTC)
    cert["status"] = {
        "conditions": [
            {
                "type": "Ready",
                "status": "True",
                "reason": "Ready",
                "message": "Certificate is up to date and has not expired",
                "lastTransitionTime": at,
                "observedGeneration": cert["metadata"]["generation"],
            }
        ],
        "notBefore": at,
        "notAfter": (now + timedelta(days=90)).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "renewalTime": (now + timedelta(days=60)).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "revision": int((cert.get("status") or {}).get("revision", 0)) + 1,
    }
    emulator.update(cert)


def _reissue_for_secret(emulator: kubeapi.KubeEmulator, ns: str, secret: str) -> list[str]:
    """cert-manager noticed a Certificate's Secret is gone: Issuing=True, Ready=False."""
    reissued = []
    for cert in emulator.list("cert-manager.io/v1", "Certificate", ns):
        if cert["spec"].get("secretName") != secret or _terminating(cert):
            continue
        at = stamp(emulator)
        message = "Issuing certificate as Secret does not exist"
        cert["status"] = {
            **(cert.get("status") or {}),
            "conditions": [
                {"type": "Ready", "status": "False", "reason": "DoesNotExist",
                 "message": message, "lastTransitionTime": at},
                {"type": "Issuing", "status": "True", "reason": "DoesNotExist",
                 "message": message, "lastTransitionTime": at},
            ],
        }  # fmt: skip
        emulator.update(cert)
        reissued.append(cert["metadata"]["name"])
    return reissued


# --- installing and upgrading a store (what the provisioner does with Helm) ----------------------


class ProvisioningError(Exception):
    """The provisioner could not do what was asked; the twin answers 500."""


def _releases(emulator: kubeapi.KubeEmulator, release: str, ns: str) -> list[Obj]:
    found = emulator.list("v1", "Secret", ns, label_selector=f"owner=helm,name={release}")
    return sorted(found, key=lambda s: int(s["metadata"]["labels"].get("version", "0")))


def converge(emulator: kubeapi.KubeEmulator, ns: str) -> None:
    """Everything the controllers would do in ``ns``, done now with no delays (seeding)."""
    for sts in emulator.list("apps/v1", "StatefulSet", ns):
        ensure_claims(emulator, sts)
    for claim in emulator.list("v1", "PersistentVolumeClaim", ns):
        bind_claim(emulator, ns, claim["metadata"]["name"])
    for kind in ("StatefulSet", "Deployment"):
        for obj in emulator.list("apps/v1", kind, ns):
            roll(emulator, kind, ns, obj["metadata"]["name"])
    ensure_certificates(emulator, ns)
    for cert in emulator.list("cert-manager.io/v1", "Certificate", ns):
        issue_certificate(emulator, ns, cert["metadata"]["name"])
    sync_endpoints(emulator, ns)


def install_store(cluster: stores.Cluster, store_id: str, *, settled: bool = False) -> None:
    """``helm install``: the chart's objects and release record. With ``settled`` every
    controller's work is done at once too (the store comes up healthy and complete)."""
    emulator = cluster.emulator
    n = stores.names(store_id)
    if emulator.get("v1", "Namespace", n.namespace) is not None:
        raise ProvisioningError(f"namespace {n.namespace} already exists")
    emulator.seed(stores.store_manifests(store_id, domain=cluster.domain))
    emulator.create(stores.helm_release(n.release, n.namespace, revision=1, status="deployed"))
    reflect_status(cluster, store_id)
    if settled:
        converge(emulator, n.namespace)
        start_job(emulator, n.namespace, n.init_job)
        finish_job(cluster, n.namespace, n.init_job)


def _reapply(emulator: kubeapi.KubeEmulator, manifest: Mapping[str, Any]) -> None:
    """Helm's three-way merge, roughly: chart fields win, live-only annotations (such as
    ``restartedAt`` on a pod template) stay, status is untouched, Secrets keep their data."""
    metadata = manifest["metadata"]
    current = emulator.get(
        manifest["apiVersion"], manifest["kind"], metadata["name"], metadata.get("namespace")
    )
    if current is None:
        emulator.create(manifest)
        return
    if manifest["kind"] == "Secret":
        return
    new = copy.deepcopy(current)
    for field in ("labels", "annotations"):
        merged = {**(current["metadata"].get(field) or {}), **(metadata.get(field) or {})}
        if merged:
            new["metadata"][field] = merged
    for key, value in manifest.items():
        if key not in ("apiVersion", "kind", "metadata", "status"):
            new[key] = copy.deepcopy(value)
    template = (current.get("spec") or {}).get("template")
    live = ((template or {}).get("metadata") or {}).get("annotations")
    if live and "template" in (new.get("spec") or {}):
        chart = new["spec"]["template"].setdefault("metadata", {})
        chart["annotations"] = {**live, **(chart.get("annotations") or {})}
    emulator.update(new)


def upgrade_store(cluster: stores.Cluster, store_id: str) -> None:
    """``helm upgrade`` (the provisioner's reprovision): re-apply the chart, recreating what is
    missing and restoring what drifted, re-run the init Job, record a new revision."""
    emulator = cluster.emulator
    n = stores.names(store_id)
    ns = emulator.get("v1", "Namespace", n.namespace)
    if ns is None:
        install_store(cluster, store_id)
        return
    if _terminating(ns):
        raise ProvisioningError(f"namespace {n.namespace} is being deleted")
    records = _releases(emulator, n.release, n.namespace)
    latest = records[-1]["metadata"]["labels"] if records else {}
    if str(latest.get("status", "")).startswith("pending-"):
        raise ProvisioningError(
            f"helm upgrade {n.release}: another operation (install/upgrade/rollback) is in progress"
        )
    for manifest in stores.store_manifests(store_id, domain=cluster.domain)[1:]:
        if manifest["kind"] == "Job":
            continue
        _reapply(emulator, manifest)
    _delete_quietly(
        emulator, "batch/v1", "Job", n.init_job, n.namespace, propagation_policy="Background"
    )
    emulator.create(stores.init_job(store_id))
    for record in records:
        if record["metadata"]["labels"].get("status") == "deployed":
            record["metadata"]["labels"]["status"] = "superseded"
            emulator.update(record)
    revision = int(latest.get("version", "0")) + 1
    emulator.create(
        stores.helm_release(n.release, n.namespace, revision=revision, status="deployed")
    )
    reflect_status(cluster, store_id)


def uninstall_store(cluster: stores.Cluster, store_id: str) -> bool:
    """``helm uninstall`` then delete the namespace; True if the namespace is gone."""
    emulator = cluster.emulator
    n = stores.names(store_id)
    if emulator.get("v1", "Namespace", n.namespace) is None:
        return True
    for record in _releases(emulator, n.release, n.namespace):
        _delete_quietly(emulator, "v1", "Secret", record["metadata"]["name"], n.namespace)
    _delete_quietly(emulator, "v1", "Namespace", n.namespace)
    return emulator.get("v1", "Namespace", n.namespace) is None


class ProvisionerHooks:
    """The twin's ``on_create``/``on_reprovision``/``on_delete``: what the real provisioner
    does to the cluster when asked through its API."""

    def __init__(self, cluster: stores.Cluster) -> None:
        self._cluster = cluster

    def attach(self) -> None:
        twin = self._cluster.twin
        twin.on_create = self.create
        twin.on_reprovision = self.reprovision
        twin.on_delete = self.delete

    async def create(self, store: provisioner.Store) -> None:
        install_store(self._cluster, store.id)
        log.info("store_installed", store_id=store.id)

    async def reprovision(self, store: provisioner.Store) -> None:
        upgrade_store(self._cluster, store.id)
        log.info("store_upgraded", store_id=store.id)

    async def delete(self, store: provisioner.Store) -> None:
        reflect_status(self._cluster, store.id)
        if not uninstall_store(self._cluster, store.id):
            # The twin keeps the store "deleting"; the provisioner controller removes it
            # once the namespace is finally gone.
            raise ProvisioningError(f"namespace {store.namespace} is still terminating")
        log.info("store_uninstalled", store_id=store.id)


# --- the asyncio side ---------------------------------------------------------------------------


_Handler = Callable[[kubeapi.WatchEvent], None]
_INGRESSES = ("networking.k8s.io/v1", "Ingress")


class Controllers:
    """All controllers as asyncio tasks; ``async with Controllers(...)`` runs them."""

    def __init__(
        self,
        cluster: stores.Cluster,
        settings: ControllerSettings | None = None,
        *,
        on_change: Callable[[], None] | None = None,
    ) -> None:
        """
        :param on_change: called after each event handled and each delayed step, so waiters
            notice changes outside the emulator too (the twin's stores).
        """
        self.cluster = cluster
        self.settings = settings or ControllerSettings()
        self._on_change = on_change
        self._tasks: list[asyncio.Task[None]] = []
        self._subscriptions: list[kubeapi.Subscription] = []
        self._pending: dict[tuple[str, ...], asyncio.Task[None]] = {}

    @property
    def emulator(self) -> kubeapi.KubeEmulator:
        return self.cluster.emulator

    async def __aenter__(self) -> Controllers:
        self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    def start(self) -> None:
        handlers: dict[str, _Handler] = {
            "workloads": self._on_workload_event,
            "kubelet": self._on_kubelet_event,
            "volumes": self._on_volume_event,
            "jobs": self._on_job_event,
            "certificates": self._on_certificate_event,
            "provisioner": self._on_provisioner_event,
        }
        loop = asyncio.get_running_loop()
        for name, handler in handlers.items():
            # Subscribed before the resync below, so nothing between the two is missed.
            subscription = self.emulator.subscribe()
            self._subscriptions.append(subscription)
            self._tasks.append(loop.create_task(self._loop(name, subscription, handler)))
        self._resync()

    async def stop(self) -> None:
        for subscription in self._subscriptions:
            subscription.close()
        tasks = [*self._tasks, *self._pending.values()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._tasks.clear()
        self._pending.clear()
        self._subscriptions.clear()

    @property
    def busy(self) -> bool:
        """Delayed work is scheduled (a rollout, an issuance, a Job) or events are queued."""
        return bool(self._pending) or any(s.pending for s in self._subscriptions)

    async def _loop(self, name: str, subscription: kubeapi.Subscription, handler: _Handler) -> None:
        async for event in subscription:
            self._guarded(name, handler, event)

    def _guarded(self, name: str, work: Callable[..., None], *args: Any) -> None:
        try:
            work(*args)
        except kubeapi.StatusError as e:
            # A race with a deletion or a terminating namespace: the next event retries.
            log.debug("controller_conflicted", controller=name, error=str(e))
        except Exception:  # one bad event must not stop the controller
            log.exception("controller_failed", controller=name)
        if self._on_change is not None:
            self._on_change()

    def _later(self, key: tuple[str, ...], delay: float, work: Callable[[], None]) -> None:
        """Run ``work`` after ``delay``; a newer request under the same key replaces it."""
        previous = self._pending.pop(key, None)
        if previous is not None:
            previous.cancel()
        self._pending[key] = asyncio.get_running_loop().create_task(self._after(key, delay, work))

    async def _after(self, key: tuple[str, ...], delay: float, work: Callable[[], None]) -> None:
        try:
            await asyncio.sleep(delay)
            self._guarded(key[0], work)
        finally:
            if self._pending.get(key) is asyncio.current_task():
                del self._pending[key]

    def _resync(self) -> None:
        """Act on what is already there, as controllers do on start-up after their first list."""
        emulator = self.emulator
        for kind in WORKLOAD_KINDS:
            for obj in emulator.list("apps/v1", kind):
                self._guarded("workloads", self._check_rollout, obj)
        for claim in emulator.list("v1", "PersistentVolumeClaim"):
            self._guarded("volumes", self._schedule_bind, claim)
        for job in emulator.list("batch/v1", "Job"):
            self._guarded("jobs", self._check_job, job)
        for ns in sorted({i["metadata"]["namespace"] for i in emulator.list(*_INGRESSES)}):
            self._guarded("certificates", ensure_certificates, emulator, ns)
        for cert in emulator.list("cert-manager.io/v1", "Certificate"):
            self._guarded("certificates", self._schedule_issue, cert)

    # --- handlers -------------------------------------------------------------------------------

    def _on_workload_event(self, event: kubeapi.WatchEvent) -> None:
        if event.resource.kind not in WORKLOAD_KINDS or event.type == "DELETED":
            return
        metadata = event.object["metadata"]
        current = self.emulator.get(
            "apps/v1", event.resource.kind, metadata["name"], metadata["namespace"]
        )
        if current is not None:
            self._check_rollout(current)

    def _check_rollout(self, obj: Mapping[str, Any]) -> None:
        metadata = obj["metadata"]
        observed = (obj.get("status") or {}).get("observedGeneration")
        if _terminating(obj) or observed == metadata["generation"]:
            return
        kind, ns, name = obj["kind"], metadata["namespace"], metadata["name"]
        # Progressing at once: the generation is seen, the pods are not updated yet.
        sync_workload(self.emulator, kind, ns, name, observe=True)
        log.info("rollout_started", kind=kind, namespace=ns, name=name)

        def finish() -> None:
            roll(self.emulator, kind, ns, name)
            log.info("rollout_finished", kind=kind, namespace=ns, name=name)

        self._later(("workloads", kind, ns, name), self.settings.rollout_delay, finish)

    def _on_kubelet_event(self, event: kubeapi.WatchEvent) -> None:
        ns = event.object["metadata"].get("namespace")
        kind = event.resource.kind
        if not ns:
            return
        if kind == "Pod":
            sync_workloads(self.emulator, ns)
            sync_endpoints(self.emulator, ns)
        elif kind == "Service" and event.type != "DELETED":
            sync_endpoints(self.emulator, ns)
        elif (kind == "Secret" and event.type == "ADDED") or (
            kind == "PersistentVolumeClaim" and event.type == "MODIFIED"
        ):
            start_waiting_pods(self.emulator, ns)

    def _on_volume_event(self, event: kubeapi.WatchEvent) -> None:
        if event.resource.kind != "PersistentVolumeClaim":
            return
        metadata = event.object["metadata"]
        ns = metadata["namespace"]
        if event.type == "DELETED":
            # The StatefulSet controller recreates the claims of its pending pods.
            for sts in self.emulator.list("apps/v1", "StatefulSet", ns):
                ensure_claims(self.emulator, sts)
            return
        current = self.emulator.get("v1", "PersistentVolumeClaim", metadata["name"], ns)
        if event.type == "ADDED" and current is not None:
            self._schedule_bind(current)

    def _schedule_bind(self, claim: Mapping[str, Any]) -> None:
        if (claim.get("status") or {}).get("phase") == "Bound" or _terminating(claim):
            return
        ns, name = claim["metadata"]["namespace"], claim["metadata"]["name"]
        storage_class = (claim.get("spec") or {}).get("storageClassName", stores.STORAGE_CLASS)
        if storage_class not in stores.STORAGE_CLASSES:
            record_event(
                self.emulator,
                claim,
                reason="ProvisioningFailed",
                message=f'storageclass.storage.k8s.io "{storage_class}" not found',
                component="persistentvolume-controller",
            )
            return

        def bind() -> None:
            if bind_claim(self.emulator, ns, name):
                log.info("claim_bound", namespace=ns, name=name)

        self._later(("volumes", ns, name), self.settings.volume_delay, bind)

    def _on_job_event(self, event: kubeapi.WatchEvent) -> None:
        kind = event.resource.kind
        metadata = event.object["metadata"]
        ns = metadata.get("namespace", "")
        if kind == "StatefulSet" and _database_ready(self.emulator, ns):
            # A database became ready: the Jobs waiting for it can finish.
            for job in self.emulator.list("batch/v1", "Job", ns):
                if job_running(job) and ("jobs", ns, job["metadata"]["name"]) not in self._pending:
                    self._check_job(job)
        if kind != "Job":
            return
        if event.type == "DELETED":
            store_id = stores.store_id_of(ns)
            if (
                store_id is not None
                and metadata["name"] == stores.names(store_id).init_job
                and recreate_init_job(self.cluster, store_id)
            ):
                log.info("init_job_recreated", store_id=store_id)
            return
        current = self.emulator.get("batch/v1", "Job", metadata["name"], ns)
        if current is not None and event.type == "ADDED":
            self._check_job(current)

    def _check_job(self, job: Mapping[str, Any]) -> None:
        ns, name = job["metadata"]["namespace"], job["metadata"]["name"]
        start_job(self.emulator, ns, name)
        current = self.emulator.get("batch/v1", "Job", name, ns)
        if current is None or not job_running(current):
            return

        def finish() -> None:
            if finish_job(self.cluster, ns, name):
                log.info("job_completed", namespace=ns, name=name)

        self._later(("jobs", ns, name), self.settings.job_delay, finish)

    def _on_certificate_event(self, event: kubeapi.WatchEvent) -> None:
        kind = event.resource.kind
        metadata = event.object["metadata"]
        ns = metadata.get("namespace", "")
        if kind == "Ingress" and event.type != "DELETED":
            ensure_certificates(self.emulator, ns)
        elif kind == "Certificate":
            if event.type == "DELETED":
                ensure_certificates(self.emulator, ns)
                return
            current = self.emulator.get("cert-manager.io/v1", "Certificate", metadata["name"], ns)
            if current is not None:
                self._schedule_issue(current)
        elif (
            kind == "Secret"
            and event.type == "DELETED"
            and event.object.get("type") == "kubernetes.io/tls"
            and namespace_open(self.emulator, ns)
        ):
            _reissue_for_secret(self.emulator, ns, metadata["name"])

    def _schedule_issue(self, cert: Mapping[str, Any]) -> None:
        if not needs_issuing(cert):
            return
        ns, name = cert["metadata"]["namespace"], cert["metadata"]["name"]

        def issue() -> None:
            issue_certificate(self.emulator, ns, name)
            log.info("certificate_issued", namespace=ns, name=name)

        key = ("certificates", ns, name)
        if key not in self._pending:
            self._later(key, self.settings.certificate_delay, issue)

    def _on_provisioner_event(self, event: kubeapi.WatchEvent) -> None:
        if event.resource.kind != "Namespace" or event.type != "DELETED":
            return
        store_id = stores.store_id_of(event.object["metadata"]["name"])
        twin = self.cluster.twin
        store = twin.stores.get(store_id) if store_id is not None else None
        if store is not None and store.status == "deleting":
            twin.stores.pop(store.id, None)
            log.info("store_deleted", store_id=store.id)
