"""``k8s.diagnose``: one read-only snapshot of a store namespace, with flags for ``when:``.

It reads what the runbook's diagnosis steps read (pods, jobs, PVCs, workloads, services and
their endpoints, ingresses, certificates, Helm records, events, referenced secrets) and boils
them down to a bounded, JSON-safe summary plus booleans such as ``flags.image_pull_error`` or
``flags.helm_pending``, so playbooks branch on facts instead of parsing text.

A list RBAC refuses fails the step with a message naming the permission and the namespace
("no RoleBinding for remediator in store-x?"): flags computed from reads that were refused
would send a playbook down the wrong branch. Except in a Terminating namespace, whose
RoleBinding the namespace controller has already deleted with the rest of its contents, or one
that does not exist at all: there the refusals are expected, so they are reported
(``permission_denied``, its flag and the summary) and what could be read (the namespace, its
PVCs) is diagnosed.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from remediator.adapters import kubernetes
from remediator.core import redaction
from remediator.core.actions import ActionSpec
from remediator.core.errors import PermanentStepError
from remediator.engine.actions import helm
from remediator.engine.actions.kube import bodies, guarding
from remediator.engine.actions.registry import ActionContext, Output

MAX_ITEMS = 50
"""Entries kept per list (pods, jobs…); counts in ``totals`` are exact."""
MAX_EVENTS = 20
MAX_SECRET_CHECKS = 20
MAX_TEXT = 256
IMAGE_PULL_REASONS = frozenset({"ErrImagePull", "ImagePullBackOff", "InvalidImageName"})
# Waiting reasons of an init container that are normal progress, not an error.
INIT_PROGRESS_REASONS = frozenset({"PodInitializing", "ContainerCreating"})
_EPOCH = datetime.min.replace(tzinfo=UTC)


@dataclass(frozen=True, slots=True, kw_only=True)
class DiagnoseParams:
    namespace: str = field(metadata={"doc": "The namespace to inspect, e.g. store-abc."})


@dataclass(frozen=True, slots=True, kw_only=True)
class _Snapshot:
    namespace: kubernetes.Object | None
    pods: list[kubernetes.Object]
    jobs: list[kubernetes.Object]
    pvcs: list[kubernetes.Object]
    deployments: list[kubernetes.Object]
    statefulsets: list[kubernetes.Object]
    services: list[kubernetes.Object]
    endpoints: list[kubernetes.Object]
    ingresses: list[kubernetes.Object]
    certificates: list[kubernetes.Object]
    helm_secrets: list[kubernetes.Object]
    events: list[kubernetes.Object]
    denied: list[kubernetes.Denial]
    """What RBAC refused (the reads above then count as empty)."""


_LISTED = (
    kubernetes.PODS,
    kubernetes.JOBS,
    kubernetes.PERSISTENTVOLUMECLAIMS,
    kubernetes.DEPLOYMENTS,
    kubernetes.STATEFULSETS,
    kubernetes.SERVICES,
    kubernetes.ENDPOINTS,
    kubernetes.INGRESSES,
    kubernetes.CERTIFICATES,
    kubernetes.EVENTS,
)


class DiagnoseAction:
    spec = ActionSpec(
        name="k8s.diagnose",
        params=DiagnoseParams,
        mutating=False,
        description=(
            "Snapshot a namespace: pods, jobs, PVCs, deployments, statefulsets, services and "
            "endpoints, ingresses, certificates, Helm release, recent events, missing secrets; "
            "flags (crash_loop, image_pull_error, helm_pending…) for later steps' when:."
        ),
        permissions=(
            guarding.permission(kubernetes.NAMESPACES, "get"),
            *(guarding.permission(r, "list") for r in _LISTED),
            guarding.permission(kubernetes.SECRETS, "get", "list"),
        ),
    )

    async def run(self, params: DiagnoseParams, context: ActionContext) -> Output:
        namespace = params.namespace
        guarding.check_namespace(namespace, context)
        kube = guarding.client(context)
        with guarding.api_errors(f"diagnose {namespace}"):
            snapshot = await _read(kube, namespace)
            missing = await _missing_secrets(kube, namespace, snapshot.pods)
        terminating = bodies.text(snapshot.namespace, "status", "phase") == "Terminating"
        # A namespace that is gone has no RoleBinding either: its refusals are expected too.
        gone = snapshot.namespace is None
        if snapshot.denied and not terminating and not gone:
            raise PermanentStepError(f"diagnose {namespace}: {_refusals(snapshot.denied)}")
        return _report(namespace, snapshot, missing, secrets=context.resources.secrets)

    def preview(self, params: DiagnoseParams) -> str:
        return f"diagnose namespace {params.namespace}"


# --- reading ------------------------------------------------------------------------------------


async def _read(kube: kubernetes.KubeClient, namespace: str) -> _Snapshot:
    denied: list[kubernetes.Denial] = []

    async def listed(
        resource: kubernetes.Resource, selector: str | None = None
    ) -> list[kubernetes.Object]:
        try:
            return await kube.list(resource, namespace=namespace, label_selector=selector)
        except kubernetes.KubeNotFoundError:
            # The type is not served (cert-manager not installed): nothing of it exists.
            return []
        except kubernetes.KubeForbiddenError as e:
            if e.denial is None:
                raise
            denied.append(e.denial)
            return []

    async def the_namespace() -> kubernetes.Object | None:
        try:
            return await kube.get(kubernetes.NAMESPACES, namespace)
        except kubernetes.KubeNotFoundError:
            return None

    found, lists, helm_secrets = await asyncio.gather(
        the_namespace(),
        asyncio.gather(*(listed(resource) for resource in _LISTED)),
        listed(kubernetes.SECRETS, "owner=helm"),
    )
    of = dict(zip(_LISTED, lists, strict=True))
    return _Snapshot(
        namespace=found,
        pods=of[kubernetes.PODS],
        jobs=of[kubernetes.JOBS],
        pvcs=of[kubernetes.PERSISTENTVOLUMECLAIMS],
        deployments=of[kubernetes.DEPLOYMENTS],
        statefulsets=of[kubernetes.STATEFULSETS],
        services=of[kubernetes.SERVICES],
        endpoints=of[kubernetes.ENDPOINTS],
        ingresses=of[kubernetes.INGRESSES],
        certificates=of[kubernetes.CERTIFICATES],
        helm_secrets=helm_secrets,
        events=of[kubernetes.EVENTS],
        denied=sorted(denied, key=lambda d: (d.qualified_resource, d.verb)),
    )


def referenced_secrets(pods: Iterable[Mapping[str, Any]]) -> list[str]:
    """Secrets the pods need to start: env ``secretKeyRef``, ``envFrom``, secret volumes.

    References marked ``optional: true`` are left out: a pod starts without them.
    """
    names: set[str] = set()
    for pod in pods:
        spec = bodies.mapping(pod, "spec")
        containers = [*bodies.items(spec, "initContainers"), *bodies.items(spec, "containers")]
        for container in containers:
            for env in bodies.items(container, "env"):
                ref = bodies.mapping(env, "valueFrom", "secretKeyRef")
                if ref and not bodies.flag(ref, "optional"):
                    names.add(bodies.text(ref, "name"))
            for source in bodies.items(container, "envFrom"):
                ref = bodies.mapping(source, "secretRef")
                if ref and not bodies.flag(ref, "optional"):
                    names.add(bodies.text(ref, "name"))
        for volume in bodies.items(spec, "volumes"):
            secret = bodies.mapping(volume, "secret")
            if secret and not bodies.flag(secret, "optional"):
                names.add(bodies.text(secret, "secretName"))
            for projected in bodies.items(volume, "projected", "sources"):
                ref = bodies.mapping(projected, "secret")
                if ref and not bodies.flag(ref, "optional"):
                    names.add(bodies.text(ref, "name"))
    return sorted(n for n in names if n)


async def _missing_secrets(
    kube: kubernetes.KubeClient, namespace: str, pods: Sequence[Mapping[str, Any]]
) -> list[str]:
    # One GET per referenced name rather than listing (and so reading) every secret.
    wanted = referenced_secrets(pods)[:MAX_SECRET_CHECKS]

    async def absent(name: str) -> bool:
        try:
            await kube.get(kubernetes.SECRETS, name, namespace=namespace)
        except kubernetes.KubeNotFoundError:
            return True
        except kubernetes.KubeForbiddenError as e:
            if e.denial is None:
                raise
            return False  # unknown; the refused list of secrets is reported already
        return False

    found = await asyncio.gather(*(absent(name) for name in wanted))
    return [name for name, is_absent in zip(wanted, found, strict=True) if is_absent]


# --- summarizing --------------------------------------------------------------------------------


def _owner(obj: Mapping[str, Any]) -> tuple[str, str]:
    refs = bodies.items(obj, "metadata", "ownerReferences")
    controller = next((r for r in refs if r.get("controller") is True), refs[0] if refs else {})
    return bodies.text(controller, "kind"), bodies.text(controller, "name")


def _reasons(statuses: Iterable[Mapping[str, Any]], *path: str) -> list[str]:
    found = []
    for status in statuses:
        reason = bodies.text(status, *path, "reason")
        if reason and reason not in found:
            found.append(reason)
    return found


def _pod(pod: Mapping[str, Any]) -> dict[str, Any]:
    statuses = bodies.items(pod, "status", "containerStatuses")
    init = bodies.items(pod, "status", "initContainerStatuses")
    owner_kind, owner_name = _owner(pod)
    terminated = _reasons(statuses, "state", "terminated")
    for reason in _reasons(statuses, "lastState", "terminated"):
        if reason not in terminated:
            terminated.append(reason)
    return {
        "name": bodies.name(pod),
        "phase": bodies.text(pod, "status", "phase", default="Unknown"),
        "ready": bodies.condition_is(pod, "Ready"),
        "restarts": sum(bodies.number(s, "restartCount") for s in statuses),
        "waiting_reasons": _reasons(statuses, "state", "waiting"),
        "terminated_reasons": terminated,
        "init_waiting_reasons": _reasons(init, "state", "waiting"),
        "init_failed": _init_failed(init),
        "owner_kind": owner_kind,
        "owner_name": owner_name,
    }


def _init_failed(statuses: Iterable[Mapping[str, Any]]) -> bool:
    for status in statuses:
        waiting = bodies.text(status, "state", "waiting", "reason")
        if waiting and waiting not in INIT_PROGRESS_REASONS:
            return True
        for state in ("state", "lastState"):
            terminated = bodies.mapping(status, state, "terminated")
            if terminated and bodies.number(terminated, "exitCode") != 0:
                return True
    return False


def _job(job: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "name": bodies.name(job),
        "active": bodies.number(job, "status", "active"),
        "succeeded": bodies.number(job, "status", "succeeded"),
        "failed": bodies.number(job, "status", "failed"),
        "complete": bodies.condition_is(job, "Complete"),
        "failed_out": bodies.condition_is(job, "Failed"),
    }


def _workload(obj: Mapping[str, Any]) -> dict[str, Any]:
    spec_replicas = bodies.dig(obj, "spec", "replicas")
    return {
        "name": bodies.name(obj),
        "replicas": spec_replicas if isinstance(spec_replicas, int) else 1,
        "ready": bodies.number(obj, "status", "readyReplicas"),
        "available": bodies.number(obj, "status", "availableReplicas"),
        "updated": bodies.number(obj, "status", "updatedReplicas"),
    }


def _service(
    service: Mapping[str, Any], endpoints: Mapping[str, Mapping[str, Any]]
) -> dict[str, Any]:
    subsets = bodies.items(endpoints.get(bodies.name(service)), "subsets")
    return {
        "name": bodies.name(service),
        "type": bodies.text(service, "spec", "type", default="ClusterIP"),
        "ready_endpoints": sum(len(bodies.items(s, "addresses")) for s in subsets),
        "not_ready_endpoints": sum(len(bodies.items(s, "notReadyAddresses")) for s in subsets),
    }


def _ingress(ingress: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "name": bodies.name(ingress),
        "hosts": [
            h for r in bodies.items(ingress, "spec", "rules") if (h := bodies.text(r, "host"))
        ],
        "tls_secrets": [
            s for t in bodies.items(ingress, "spec", "tls") if (s := bodies.text(t, "secretName"))
        ],
    }


def _certificate(certificate: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "name": bodies.name(certificate),
        "ready": bodies.condition_is(certificate, "Ready"),
        "secret": bodies.text(certificate, "spec", "secretName"),
    }


def _event_time(event: Mapping[str, Any]) -> datetime:
    for path in (("lastTimestamp",), ("eventTime",), ("firstTimestamp",)):
        found = bodies.timestamp(bodies.dig(event, *path))
        if found is not None:
            return found
    return bodies.timestamp(bodies.dig(event, "metadata", "creationTimestamp")) or _EPOCH


def _events(events: Iterable[Mapping[str, Any]], secrets: Sequence[str]) -> list[dict[str, Any]]:
    timed = sorted(((_event_time(e), e) for e in events), key=lambda pair: pair[0])
    return [
        {
            "time": when.strftime("%Y-%m-%dT%H:%M:%SZ") if when > _EPOCH else "",
            "type": bodies.text(e, "type"),
            "reason": bodies.text(e, "reason"),
            "kind": bodies.text(e, "involvedObject", "kind"),
            "name": bodies.text(e, "involvedObject", "name"),
            "message": redaction.truncate(
                redaction.redact_text(bodies.text(e, "message"), secrets=secrets), MAX_TEXT
            ),
        }
        for when, e in timed[-MAX_EVENTS:]
    ]


def _helm(namespace: str, secrets: Iterable[Mapping[str, Any]]) -> dict[str, Any] | None:
    latest = helm.latest_by_release(helm.release_records(secrets))
    if not latest:
        return None
    # A store namespace holds one release, named like the namespace; otherwise the newest.
    record = latest.get(namespace) or max(latest.values(), key=lambda r: r.created)
    return {"release": record.release, "revision": record.revision, "status": record.status}


def _report(
    namespace: str, snapshot: _Snapshot, missing: list[str], *, secrets: Sequence[str]
) -> Output:
    pods = [_pod(p) for p in snapshot.pods]
    jobs = [_job(j) for j in snapshot.jobs]
    pvcs = [
        {"name": bodies.name(c), "phase": bodies.text(c, "status", "phase", default="Pending")}
        for c in snapshot.pvcs
    ]
    deployments = [_workload(d) for d in snapshot.deployments]
    statefulsets = [_workload(s) for s in snapshot.statefulsets]
    endpoints = {bodies.name(e): e for e in snapshot.endpoints}
    services = [_service(s, endpoints) for s in snapshot.services]
    ingresses = [_ingress(i) for i in snapshot.ingresses]
    certificates = [_certificate(c) for c in snapshot.certificates]
    releases = helm.latest_by_release(helm.release_records(snapshot.helm_secrets))

    phase = bodies.text(snapshot.namespace, "status", "phase")
    waiting = {r for p in pods for r in p["waiting_reasons"] + p["init_waiting_reasons"]}
    flags = {
        "namespace_missing": snapshot.namespace is None,
        "namespace_terminating": phase == "Terminating",
        "image_pull_error": bool(waiting & IMAGE_PULL_REASONS),
        "crash_loop": "CrashLoopBackOff" in waiting,
        "oom_killed": any("OOMKilled" in p["terminated_reasons"] for p in pods),
        "config_error": "CreateContainerConfigError" in waiting,
        "pvc_pending": any(c["phase"] != "Bound" for c in pvcs),
        "init_job_failed": any(j["failed"] > 0 and not j["complete"] for j in jobs)
        or any(p["init_failed"] for p in pods),
        "app_ready": bool(deployments)
        and all(d["replicas"] > 0 and d["available"] == d["replicas"] for d in deployments),
        "db_ready": bool(statefulsets)
        and all(s["replicas"] > 0 and s["ready"] == s["replicas"] for s in statefulsets),
        "ingress_missing": not ingresses,
        "endpoints_missing": any(
            s["ready_endpoints"] == 0 for s in services if s["type"] != "ExternalName"
        ),
        "certificate_not_ready": any(not c["ready"] for c in certificates),
        "helm_pending": any(r.status in helm.PENDING for r in releases.values()),
        "helm_failed": any(r.status == helm.FAILED for r in releases.values()),
        "secrets_missing": bool(missing),
        "permission_denied": bool(snapshot.denied),
    }
    helm_release = _helm(namespace, snapshot.helm_secrets)
    totals = {
        "pods": len(pods),
        "jobs": len(jobs),
        "pvcs": len(pvcs),
        "deployments": len(deployments),
        "statefulsets": len(statefulsets),
        "services": len(services),
        "ingresses": len(ingresses),
        "certificates": len(certificates),
        "events": len(snapshot.events),
    }
    return {
        "namespace_phase": phase or None,
        "pods": pods[:MAX_ITEMS],
        "jobs": jobs[:MAX_ITEMS],
        "pvcs": pvcs[:MAX_ITEMS],
        "deployments": deployments[:MAX_ITEMS],
        "statefulsets": statefulsets[:MAX_ITEMS],
        "services": services[:MAX_ITEMS],
        "ingresses": ingresses[:MAX_ITEMS],
        "certificates": certificates[:MAX_ITEMS],
        "helm": helm_release,
        "events": _events(snapshot.events, secrets),
        "missing_secrets": missing,
        "flags": flags,
        "totals": totals,
        "permission_denied": [
            {"verb": d.verb, "resource": d.qualified_resource, "namespace": d.namespace}
            for d in snapshot.denied
        ],
        "summary": _summary(pods, flags, helm_release, denied=snapshot.denied),
    }


def _summary(
    pods: Sequence[Mapping[str, Any]],
    flags: Mapping[str, bool],
    release: Mapping[str, Any] | None,
    *,
    denied: Sequence[kubernetes.Denial],
) -> str:
    ready = sum(1 for p in pods if p["ready"])
    healthy = ("app_ready", "db_ready")
    raised = [name for name, value in flags.items() if value and name not in healthy]
    # First: every other finding is incomplete without these reads.
    parts = [_refusals(denied)] if denied else []
    parts += [
        f"{ready}/{len(pods)} pods ready",
        f"app {'ready' if flags['app_ready'] else 'not ready'}",
        f"db {'ready' if flags['db_ready'] else 'not ready'}",
    ]
    if release is not None:
        parts.append(f"helm {release['release']} v{release['revision']} {release['status']}")
    parts.append(f"problems: {', '.join(raised)}" if raised else "no problems found")
    return "; ".join(parts)


def _refusals(denied: Sequence[kubernetes.Denial]) -> str:
    refused = ", ".join(f"{d.verb} {d.qualified_resource}" for d in denied)
    return f"{denied[0].explain()}; refused: {refused}"
