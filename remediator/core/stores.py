"""Stores as remediator sees them: identity, probe URL, phase and failure reasons. Pure and sync.

A store is a Namespace labelled ``app.kubernetes.io/part-of=store-platform`` (the selector is
configurable). Its id is the namespace name without the ``store-`` prefix, or the value of a
configured label; ``store-platform`` itself is excluded. Everything here works on plain JSON
dicts and floats; time is a parameter (``now``, epoch seconds, because it is compared with
Kubernetes timestamps), and the engine (`remediator.engine.watching`) feeds it what the watches,
the provisioning checks and the provisioner API observed.

Phase rules (`derive_phase`), first match wins:

1. The namespace is terminating (``deletionTimestamp``) → ``deleting``.
2. The provisioner API is configured and lists the store → its status (``provisioning``,
   ``running``, ``failed``, ``deleting``). A ``failed`` store gets the reason diagnosed from
   Kubernetes if there is one, else ``timeout`` past the provisioning timeout, else
   ``helm_failed`` (the provisioner's install is a Helm release).
3. The app Deployment is available and the DB StatefulSet ready → ``running``.
4. The store was ``running`` before, or (first sighting, e.g. after a daemon restart) its app
   Deployment completed a rollout once (condition ``Progressing`` with reason
   ``NewReplicaSetAvailable``) → ``running``: a running store that breaks stays running and
   ``store_up`` / ``store_component_ready`` say it is down. It never goes back to
   provisioning, which would hide it from StoreDown.
5. The store's Helm release (``store-<id>``) has status ``failed`` → ``failed``/``helm_failed``.
6. The store was ``failed`` before → stays ``failed`` with the same reason (a failure is
   final until the store becomes ready, is deleted, or the provisioner says otherwise).
7. A pod waits in an image pull error, a container is in CrashLoopBackOff, or a PVC is
   Pending, for at least the failure grace → ``failed`` with ``image_pull``, ``crash_loop``
   or ``pvc_pending`` (in that order of precedence).
8. Provisioning for at least the provisioning timeout → ``failed``/``timeout``.
9. Otherwise → ``provisioning``.

Provisioning stays provisioning past ``stuck_after`` (it is the StoreProvisioningStuck alert's
threshold: the store is then counted in ``stores_provisioning_stuck``) and only becomes
``failed``/``timeout`` at the longer provisioning timeout.

The phase's start (`PhaseState.since`): unchanged while the phase is; the namespace's
``deletionTimestamp`` for ``deleting``; the namespace's ``creationTimestamp`` for a store first
seen provisioning (so a daemon restart does not reset a stuck store's clock); else ``now``.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from remediator.core import scope

DEFAULT_SELECTOR = "app.kubernetes.io/part-of=store-platform"
PLATFORM_NAMESPACE = "store-platform"


class Phase(enum.StrEnum):
    PROVISIONING = "provisioning"
    RUNNING = "running"
    FAILED = "failed"
    DELETING = "deleting"


_PHASE_VALUES = frozenset(p.value for p in Phase)


class FailureReason(enum.StrEnum):
    """Why provisioning failed: the ``reason`` of ``store_provisioning_failures_total``."""

    HELM_FAILED = "helm_failed"
    IMAGE_PULL = "image_pull"
    CRASH_LOOP = "crash_loop"
    PVC_PENDING = "pvc_pending"
    TIMEOUT = "timeout"


class ProbeFailure(enum.StrEnum):
    """Why a probe failed: the ``reason`` of ``store_probe_failures_total``."""

    TIMEOUT = "timeout"
    CONNECTION_REFUSED = "connection_refused"
    STATUS_CODE = "status_code"
    """An answer with status 400 or above (redirects are not followed, and count as up)."""
    DNS = "dns"
    TLS = "tls"
    OTHER = "other"
    """Anything else: the connection reset, a malformed answer."""


class Component(enum.StrEnum):
    APP = "app"
    DB = "db"


# Precedence when several problems last past the grace at once: an image that cannot be pulled
# explains a pod that never starts better than the crash loop of another container does.
_PROBLEM_ORDER = (FailureReason.IMAGE_PULL, FailureReason.CRASH_LOOP, FailureReason.PVC_PENDING)
IMAGE_PULL_REASONS = frozenset(
    {"ErrImagePull", "ImagePullBackOff", "InvalidImageName", "ErrImageNeverPull"}
)
CRASH_LOOP_REASONS = frozenset({"CrashLoopBackOff"})
_PLACEHOLDER = re.compile(r"\{([^{}]*)\}")
PLACEHOLDERS = ("store_id", "namespace")
"""What URL and name templates may contain, as ``{store_id}`` and ``{namespace}``."""


@dataclass(frozen=True, slots=True, kw_only=True)
class StoreRef:
    """A store's identity: the label values of every per-store series."""

    store_id: str
    namespace: str


# --- identity -----------------------------------------------------------------------------------


def _metadata(obj: Mapping[str, Any]) -> Mapping[str, Any]:
    metadata = obj.get("metadata")
    return metadata if isinstance(metadata, Mapping) else {}


def store_ref(
    namespace: Mapping[str, Any],
    *,
    id_label: str | None = None,
    prefix: str = "store-",
    exclude: Iterable[str] = (PLATFORM_NAMESPACE,),
) -> StoreRef | None:
    """The store a Namespace object stands for, or None when it is not one.

    The id is the ``id_label`` label's value when configured, else the name after ``prefix``;
    it must be a DNS-1123 label either way (it ends up in label values and object names).
    """
    metadata = _metadata(namespace)
    name = metadata.get("name")
    if not isinstance(name, str) or not name or name in set(exclude):
        return None
    if id_label:
        labels = metadata.get("labels")
        value = labels.get(id_label) if isinstance(labels, Mapping) else None
    else:
        value = name[len(prefix) :] if name.startswith(prefix) else None
    if not isinstance(value, str) or not scope.DNS1123_LABEL.match(value):
        return None
    return StoreRef(store_id=value, namespace=name)


def parse_timestamp(value: object) -> float | None:
    """An RFC 3339 timestamp (``2026-01-10T10:00:00Z``) as epoch seconds; None if unusable."""
    if not isinstance(value, str) or not value:
        return None
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    if moment.tzinfo is None:
        return None
    return moment.timestamp()


# --- URLs and names -----------------------------------------------------------------------------


def template_problem(template: str, *, url: bool = False) -> str | None:
    """What is wrong with a URL or name template, or None. Only `PLACEHOLDERS` are allowed."""
    for name in _PLACEHOLDER.findall(template):
        if name not in PLACEHOLDERS:
            allowed = ", ".join(f"{{{p}}}" for p in PLACEHOLDERS)
            return f"unknown placeholder {{{name}}} (allowed: {allowed})"
    if "{" in _PLACEHOLDER.sub("", template) or "}" in _PLACEHOLDER.sub("", template):
        return "unbalanced braces"
    if url and not template.startswith(("http://", "https://")):
        return "must start with http:// or https://"
    return None


def render(template: str, ref: StoreRef) -> str:
    """``template`` with ``{store_id}`` and ``{namespace}`` replaced (checked at load time)."""
    values = {"store_id": ref.store_id, "namespace": ref.namespace}
    return _PLACEHOLDER.sub(lambda m: values[m.group(1)], template)


def ingress_base_url(ingress: Mapping[str, Any]) -> str | None:
    """``scheme://host`` of an Ingress's first rule with a host; https when its TLS section
    names that host. None when no rule has a host (nothing to probe by name)."""
    spec = ingress.get("spec")
    if not isinstance(spec, Mapping):
        return None
    host = next(
        (
            rule["host"]
            for rule in spec.get("rules") or ()
            if isinstance(rule, Mapping) and isinstance(rule.get("host"), str) and rule["host"]
        ),
        None,
    )
    if host is None or not scope.DNS1123_SUBDOMAIN.match(host):
        return None
    tls_hosts = {
        h
        for entry in spec.get("tls") or ()
        if isinstance(entry, Mapping)
        for h in entry.get("hosts") or ()
    }
    return f"{'https' if host in tls_hosts else 'http'}://{host}"


def probe_url(base_url: str, path: str) -> str:
    return base_url.rstrip("/") + "/" + path.lstrip("/")


def status_failure(status: int) -> ProbeFailure | None:
    """A probe answered with ``status``: up below 400 (a redirect is an answer), else down."""
    return ProbeFailure.STATUS_CODE if status >= 400 else None


# --- workloads ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Workload:
    """What the phase rules need to know about a Deployment or StatefulSet."""

    ready: bool
    """Every desired replica available (Deployment) or ready (StatefulSet), and at least one."""
    rolled_out: bool = False
    """The Deployment completed a rollout at some point (``NewReplicaSetAvailable``)."""


def _count(status: Mapping[str, Any], key: str) -> int:
    value = status.get(key)
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _desired(obj: Mapping[str, Any]) -> int:
    spec = obj.get("spec")
    replicas = spec.get("replicas", 1) if isinstance(spec, Mapping) else 1
    return replicas if isinstance(replicas, int) and not isinstance(replicas, bool) else 1


def deployment_workload(obj: Mapping[str, Any]) -> Workload:
    status = obj.get("status")
    status = status if isinstance(status, Mapping) else {}
    desired = _desired(obj)
    rolled_out = any(
        isinstance(c, Mapping)
        and c.get("type") == "Progressing"
        and c.get("reason") == "NewReplicaSetAvailable"
        for c in status.get("conditions") or ()
    )
    ready = desired > 0 and _count(status, "availableReplicas") >= desired
    return Workload(ready=ready, rolled_out=rolled_out)


def statefulset_workload(obj: Mapping[str, Any]) -> Workload:
    status = obj.get("status")
    status = status if isinstance(status, Mapping) else {}
    desired = _desired(obj)
    return Workload(ready=desired > 0 and _count(status, "readyReplicas") >= desired)


# --- diagnosis of stores that are not running -------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Diagnosis:
    """What one check of a store's pods, PVCs and Helm release found."""

    problems: frozenset[FailureReason] = frozenset()
    """Among image_pull, crash_loop, pvc_pending: what is wrong right now."""
    helm_failed: bool = False


def pod_problems(pod: Mapping[str, Any]) -> set[FailureReason]:
    status = pod.get("status")
    if not isinstance(status, Mapping):
        return set()
    found: set[FailureReason] = set()
    for key in ("initContainerStatuses", "containerStatuses"):
        for container in status.get(key) or ():
            state = container.get("state") if isinstance(container, Mapping) else None
            waiting = state.get("waiting") if isinstance(state, Mapping) else None
            reason = waiting.get("reason") if isinstance(waiting, Mapping) else None
            if reason in IMAGE_PULL_REASONS:
                found.add(FailureReason.IMAGE_PULL)
            elif reason in CRASH_LOOP_REASONS:
                found.add(FailureReason.CRASH_LOOP)
    return found


def pvc_pending(pvc: Mapping[str, Any]) -> bool:
    status = pvc.get("status")
    return isinstance(status, Mapping) and status.get("phase") == "Pending"


def helm_release_failed(secrets: Iterable[Mapping[str, Any]], release: str) -> bool:
    """Whether the latest revision of ``release`` has status ``failed``, read off the labels
    Helm 3's storage driver puts on its ``sh.helm.release.v1.<release>.v<N>`` Secrets (owner,
    name, status, version), so the release payload itself is never decoded."""
    latest: tuple[int, str] | None = None
    for secret in secrets:
        labels = _metadata(secret).get("labels")
        if not isinstance(labels, Mapping):
            continue
        if labels.get("owner") != "helm" or labels.get("name") != release:
            continue
        try:
            version = int(str(labels.get("version")))
        except ValueError:
            continue
        if latest is None or version > latest[0]:
            latest = (version, str(labels.get("status", "")))
    return latest is not None and latest[1] == "failed"


def diagnose(
    *,
    pods: Iterable[Mapping[str, Any]],
    pvcs: Iterable[Mapping[str, Any]],
    helm_secrets: Iterable[Mapping[str, Any]],
    release: str,
) -> Diagnosis:
    problems: set[FailureReason] = set()
    for pod in pods:
        problems |= pod_problems(pod)
    if any(pvc_pending(p) for p in pvcs):
        problems.add(FailureReason.PVC_PENDING)
    return Diagnosis(
        problems=frozenset(problems), helm_failed=helm_release_failed(helm_secrets, release)
    )


def merge_problems(
    previous: Mapping[FailureReason, float], found: Iterable[FailureReason], *, now: float
) -> dict[FailureReason, float]:
    """Problems with the time each was first seen: kept while still found, dropped when not."""
    return {reason: previous.get(reason, now) for reason in found}


# --- phases -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Observation:
    """Everything known about one store at one moment."""

    created_at: float
    """The namespace's creationTimestamp."""
    deleted_at: float | None = None
    """The namespace's deletionTimestamp: set while it is terminating."""
    app: Workload | None = None
    """The app Deployment; None while it does not exist."""
    db: Workload | None = None
    helm_failed: bool = False
    problems: Mapping[FailureReason, float] = field(default_factory=dict)
    """Current problems and when each was first seen."""
    provisioner_status: str | None = None
    """The store's status in the provisioner API, when it is configured and lists the store."""

    @property
    def ready(self) -> bool:
        return self.app is not None and self.app.ready and self.db is not None and self.db.ready


@dataclass(frozen=True, slots=True, kw_only=True)
class PhaseState:
    phase: Phase
    since: float
    """When the store entered the phase (epoch seconds)."""
    reason: FailureReason | None = None
    """Set for ``failed`` only."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Policy:
    stuck_after: float = 600.0
    failure_grace: float = 300.0
    provisioning_timeout: float = 1800.0


def derive_phase(
    observed: Observation, *, previous: PhaseState | None, now: float, policy: Policy
) -> PhaseState:
    """The store's phase now; see the module docstring for the rules."""
    phase, reason = _classify(observed, previous, now, policy)
    if previous is not None and previous.phase is phase:
        since = previous.since
    elif phase is Phase.DELETING and observed.deleted_at is not None:
        since = observed.deleted_at
    elif phase is Phase.PROVISIONING and previous is None:
        since = min(observed.created_at, now)
    else:
        since = now
    return PhaseState(phase=phase, since=since, reason=reason)


def _classify(
    observed: Observation, previous: PhaseState | None, now: float, policy: Policy
) -> tuple[Phase, FailureReason | None]:
    if observed.deleted_at is not None:
        return Phase.DELETING, None
    explicit = observed.provisioner_status
    if explicit in _PHASE_VALUES:
        phase = Phase(explicit)
        if phase is not Phase.FAILED:
            return phase, None
        return phase, _failure_reason(observed, previous, now, policy)
    if observed.ready:
        return Phase.RUNNING, None
    if previous is not None and previous.phase is Phase.RUNNING:
        return Phase.RUNNING, None
    if previous is None and observed.app is not None and observed.app.rolled_out:
        return Phase.RUNNING, None
    if observed.helm_failed:
        return Phase.FAILED, FailureReason.HELM_FAILED
    if previous is not None and previous.phase is Phase.FAILED:
        return Phase.FAILED, previous.reason
    lasting = lasting_problem(observed.problems, now=now, grace=policy.failure_grace)
    if lasting is not None:
        return Phase.FAILED, lasting
    if now - observed.created_at >= policy.provisioning_timeout:
        return Phase.FAILED, FailureReason.TIMEOUT
    return Phase.PROVISIONING, None


def lasting_problem(
    problems: Mapping[FailureReason, float], *, now: float, grace: float
) -> FailureReason | None:
    """The first problem (by precedence) seen for at least ``grace`` seconds."""
    for reason in _PROBLEM_ORDER:
        first_seen = problems.get(reason)
        if first_seen is not None and now - first_seen >= grace:
            return reason
    return None


def _failure_reason(
    observed: Observation, previous: PhaseState | None, now: float, policy: Policy
) -> FailureReason:
    """Why the provisioner's ``failed`` store failed, as far as Kubernetes can tell."""
    if observed.helm_failed:
        return FailureReason.HELM_FAILED
    current = lasting_problem(observed.problems, now=now, grace=0.0)
    if current is not None:
        return current
    if previous is not None and previous.reason is not None:
        return previous.reason
    if now - observed.created_at >= policy.provisioning_timeout:
        return FailureReason.TIMEOUT
    return FailureReason.HELM_FAILED


def is_stuck(state: PhaseState, *, now: float, stuck_after: float) -> bool:
    """Provisioning for longer than ``stuck_after`` (the StoreProvisioningStuck threshold)."""
    return state.phase is Phase.PROVISIONING and now - state.since > stuck_after


def needs_diagnosis(state: PhaseState | None) -> bool:
    """Stores whose pods, PVCs and Helm release the periodic check looks at."""
    return state is None or state.phase in (Phase.PROVISIONING, Phase.FAILED)
