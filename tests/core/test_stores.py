"""Store identity, URLs, diagnosis and the phase rules: pure functions, no servers."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest

from remediator.core import stores
from remediator.core.stores import (
    Diagnosis,
    FailureReason,
    Observation,
    Phase,
    PhaseState,
    Policy,
    StoreRef,
    Workload,
)

PART_OF = {"app.kubernetes.io/part-of": "store-platform"}
CREATED = 1_000_000.0
POLICY = Policy(stuck_after=600, failure_grace=300, provisioning_timeout=1800)
READY = Workload(ready=True)
NOT_READY = Workload(ready=False)


def namespace(name: str, **labels: str) -> dict[str, Any]:
    return {"metadata": {"name": name, "labels": {**PART_OF, **labels}}}


# --- identity -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("obj", "kwargs", "expected"),
    [
        (namespace("store-s1"), {}, StoreRef(store_id="s1", namespace="store-s1")),
        (namespace("store-a-b-1"), {}, StoreRef(store_id="a-b-1", namespace="store-a-b-1")),
        (namespace("store-platform"), {}, None),
        (namespace("shop-s1"), {}, None),
        (namespace("store-"), {}, None),
        (namespace("store-Bad"), {}, None),
        (
            namespace("tenant-42", **{"example.com/store": "s42"}),
            {"id_label": "example.com/store"},
            StoreRef(store_id="s42", namespace="tenant-42"),
        ),
        (namespace("store-s1"), {"id_label": "example.com/store"}, None),
        (
            namespace("shop-s1"),
            {"prefix": "shop-", "exclude": ()},
            StoreRef(store_id="s1", namespace="shop-s1"),
        ),
        ({"metadata": {}}, {}, None),
    ],
    ids=[
        "prefix",
        "dashes",
        "platform-excluded",
        "other-prefix",
        "empty-id",
        "not-dns-label",
        "id-label",
        "id-label-missing",
        "custom-prefix",
        "no-name",
    ],
)
def test_store_ref(
    obj: Mapping[str, Any], kwargs: dict[str, Any], expected: StoreRef | None
) -> None:
    assert stores.store_ref(obj, **kwargs) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2026-01-10T10:00:00Z", 1768039200.0),
        ("2026-01-10T10:00:00+00:00", 1768039200.0),
        ("2026-01-10T10:00:00", None),
        ("yesterday", None),
        (None, None),
    ],
    ids=["zulu", "offset", "naive", "garbage", "missing"],
)
def test_parse_timestamp(value: object, expected: float | None) -> None:
    assert stores.parse_timestamp(value) == expected


# --- URLs ---------------------------------------------------------------------------------------

REF = StoreRef(store_id="s1", namespace="store-s1")


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        ("http://{store_id}.127.0.0.1.nip.io", "http://s1.127.0.0.1.nip.io"),
        ("https://shop.example/{namespace}/", "https://shop.example/store-s1/"),
        ("{store_id}-app", "s1-app"),
    ],
    ids=["host", "path", "name"],
)
def test_render(template: str, expected: str) -> None:
    assert stores.template_problem(template) is None
    assert stores.render(template, REF) == expected


@pytest.mark.parametrize(
    ("template", "url", "problem"),
    [
        ("http://{store}.nip.io", True, "unknown placeholder {store}"),
        ("http://{store_id.nip.io", True, "unbalanced braces"),
        ("{store_id}.nip.io", True, "must start with http:// or https://"),
        ("{store_id}.nip.io", False, None),
    ],
    ids=["unknown", "unbalanced", "no-scheme", "name-needs-no-scheme"],
)
def test_template_problem(template: str, url: bool, problem: str | None) -> None:
    found = stores.template_problem(template, url=url)
    assert (found is None) if problem is None else (found is not None and problem in found)


def ingress(host: str | None, *, tls: tuple[str, ...] = ()) -> dict[str, Any]:
    rules: list[dict[str, Any]] = [{"http": {}}]
    if host is not None:
        rules.append({"host": host})
    spec: dict[str, Any] = {"rules": rules}
    if tls:
        spec["tls"] = [{"hosts": list(tls), "secretName": "x"}]
    return {"metadata": {"name": "i", "namespace": "store-s1"}, "spec": spec}


@pytest.mark.parametrize(
    ("obj", "expected"),
    [
        (ingress("s1.shop.example"), "http://s1.shop.example"),
        (ingress("s1.shop.example", tls=("s1.shop.example",)), "https://s1.shop.example"),
        (ingress("s1.shop.example", tls=("other.example",)), "http://s1.shop.example"),
        (ingress(None), None),
        (ingress("bad host"), None),
        ({"metadata": {}}, None),
    ],
    ids=["http", "tls", "tls-other-host", "no-host", "invalid-host", "no-spec"],
)
def test_ingress_base_url(obj: Mapping[str, Any], expected: str | None) -> None:
    assert stores.ingress_base_url(obj) == expected


def test_probe_url_joins_one_slash() -> None:
    path = "/wp-includes/images/blank.gif"
    assert stores.probe_url("http://h/", path) == "http://h/wp-includes/images/blank.gif"
    assert stores.probe_url("http://h", "x") == "http://h/x"


@pytest.mark.parametrize(
    ("status", "down"),
    [(200, False), (301, False), (399, False), (400, True), (503, True)],
    ids=["ok", "redirect", "399", "400", "503"],
)
def test_status_failure(status: int, down: bool) -> None:
    expected = stores.ProbeFailure.STATUS_CODE if down else None
    assert stores.status_failure(status) is expected


# --- workloads ----------------------------------------------------------------------------------


def workload(kind: str, *, replicas: int, ready: int, reason: str | None = None) -> dict[str, Any]:
    key = "availableReplicas" if kind == "Deployment" else "readyReplicas"
    status: dict[str, Any] = {key: ready}
    if reason is not None:
        status["conditions"] = [{"type": "Progressing", "status": "True", "reason": reason}]
    return {"kind": kind, "spec": {"replicas": replicas}, "status": status}


@pytest.mark.parametrize(
    ("obj", "expected"),
    [
        (workload("Deployment", replicas=2, ready=2), Workload(ready=True)),
        (workload("Deployment", replicas=2, ready=1), Workload(ready=False)),
        (workload("Deployment", replicas=0, ready=0), Workload(ready=False)),
        (
            workload("Deployment", replicas=1, ready=0, reason="NewReplicaSetAvailable"),
            Workload(ready=False, rolled_out=True),
        ),
        (
            workload("Deployment", replicas=1, ready=0, reason="ReplicaSetUpdated"),
            Workload(ready=False),
        ),
        ({"kind": "Deployment"}, Workload(ready=False)),
    ],
    ids=["ready", "partly", "scaled-to-zero", "rolled-out-once", "rolling", "no-status"],
)
def test_deployment_workload(obj: Mapping[str, Any], expected: Workload) -> None:
    assert stores.deployment_workload(obj) == expected


def test_statefulset_workload_counts_ready_replicas() -> None:
    assert stores.statefulset_workload(workload("StatefulSet", replicas=1, ready=1)).ready
    assert not stores.statefulset_workload(workload("StatefulSet", replicas=1, ready=0)).ready


# --- diagnosis ----------------------------------------------------------------------------------


def pod(*waiting: str, init: str | None = None) -> dict[str, Any]:
    def status(reason: str) -> dict[str, Any]:
        return {"name": "c", "state": {"waiting": {"reason": reason}}}

    body: dict[str, Any] = {"containerStatuses": [status(r) for r in waiting]}
    if init is not None:
        body["initContainerStatuses"] = [status(init)]
    return {"metadata": {"name": "p"}, "status": body}


def helm(release: str, version: int, status: str) -> dict[str, Any]:
    labels = {"owner": "helm", "name": release, "version": str(version), "status": status}
    return {"metadata": {"name": f"sh.helm.release.v1.{release}.v{version}", "labels": labels}}


@pytest.mark.parametrize(
    ("pods", "pvcs", "secrets", "expected"),
    [
        ([pod("ContainerCreating")], [], [], Diagnosis()),
        (
            [pod("ImagePullBackOff")],
            [],
            [],
            Diagnosis(problems=frozenset({FailureReason.IMAGE_PULL})),
        ),
        (
            [pod(init="ErrImagePull")],
            [],
            [],
            Diagnosis(problems=frozenset({FailureReason.IMAGE_PULL})),
        ),
        (
            [pod("CrashLoopBackOff")],
            [],
            [],
            Diagnosis(problems=frozenset({FailureReason.CRASH_LOOP})),
        ),
        (
            [],
            [{"status": {"phase": "Pending"}}, {"status": {"phase": "Bound"}}],
            [],
            Diagnosis(problems=frozenset({FailureReason.PVC_PENDING})),
        ),
        ([], [], [helm("store-s1", 1, "deployed")], Diagnosis()),
        ([], [], [helm("store-s1", 1, "failed")], Diagnosis(helm_failed=True)),
        (
            [],
            [],
            [helm("store-s1", 1, "failed"), helm("store-s1", 2, "deployed")],
            Diagnosis(),
        ),
        (
            [],
            [],
            [helm("store-s1", 9, "deployed"), helm("store-s1", 10, "failed")],
            Diagnosis(helm_failed=True),
        ),
        ([], [], [helm("store-other", 1, "failed")], Diagnosis()),
    ],
    ids=[
        "creating",
        "image-pull",
        "init-image-pull",
        "crash-loop",
        "pvc-pending",
        "helm-deployed",
        "helm-failed",
        "helm-fixed-by-upgrade",
        "helm-numeric-order",
        "helm-other-release",
    ],
)
def test_diagnose(
    pods: list[dict[str, Any]],
    pvcs: list[dict[str, Any]],
    secrets: list[dict[str, Any]],
    expected: Diagnosis,
) -> None:
    found = stores.diagnose(pods=pods, pvcs=pvcs, helm_secrets=secrets, release="store-s1")
    assert found == expected


def test_merge_problems_keeps_first_seen_and_drops_cleared() -> None:
    before = {FailureReason.IMAGE_PULL: 10.0, FailureReason.PVC_PENDING: 20.0}
    merged = stores.merge_problems(
        before, {FailureReason.IMAGE_PULL, FailureReason.CRASH_LOOP}, now=50.0
    )
    assert merged == {FailureReason.IMAGE_PULL: 10.0, FailureReason.CRASH_LOOP: 50.0}


# --- phases -------------------------------------------------------------------------------------


def observe(**changes: Any) -> Observation:
    return Observation(created_at=CREATED, **changes)


def state(phase: Phase, since: float = CREATED, reason: FailureReason | None = None) -> PhaseState:
    return PhaseState(phase=phase, since=since, reason=reason)


NOW = CREATED + 100


@pytest.mark.parametrize(
    ("observed", "previous", "now", "expected"),
    [
        # 1. terminating wins over everything, its clock starts at the deletionTimestamp
        (
            observe(deleted_at=CREATED + 50, app=READY, db=READY, provisioner_status="running"),
            state(Phase.RUNNING),
            NOW,
            state(Phase.DELETING, CREATED + 50),
        ),
        # 2. the provisioner's explicit status wins over Kubernetes
        (observe(app=READY, db=READY, provisioner_status="provisioning"), None, NOW, None),
        (
            observe(provisioner_status="running"),
            state(Phase.PROVISIONING),
            NOW,
            state(Phase.RUNNING, NOW),
        ),
        (
            observe(provisioner_status="failed", problems={FailureReason.CRASH_LOOP: NOW}),
            state(Phase.PROVISIONING),
            NOW,
            state(Phase.FAILED, NOW, FailureReason.CRASH_LOOP),
        ),
        (
            observe(provisioner_status="failed"),
            state(Phase.PROVISIONING),
            NOW,
            state(Phase.FAILED, NOW, FailureReason.HELM_FAILED),
        ),
        (
            observe(provisioner_status="failed"),
            state(Phase.PROVISIONING),
            CREATED + 2000,
            state(Phase.FAILED, CREATED + 2000, FailureReason.TIMEOUT),
        ),
        (observe(provisioner_status="exploded"), None, NOW, state(Phase.PROVISIONING)),
        # 3. ready
        (observe(app=READY, db=READY), None, NOW, state(Phase.RUNNING, NOW)),
        (
            observe(app=READY, db=READY, helm_failed=True),
            state(Phase.FAILED, NOW - 1, FailureReason.HELM_FAILED),
            NOW,
            state(Phase.RUNNING, NOW),
        ),
        # 4. a running store that breaks stays running; so does one that rolled out once
        (
            observe(app=NOT_READY, db=READY, problems={FailureReason.CRASH_LOOP: 0.0}),
            state(Phase.RUNNING, CREATED + 10),
            NOW,
            state(Phase.RUNNING, CREATED + 10),
        ),
        (
            observe(app=Workload(ready=False, rolled_out=True), db=READY),
            None,
            NOW,
            state(Phase.RUNNING, NOW),
        ),
        (
            observe(app=Workload(ready=False, rolled_out=True), db=NOT_READY),
            state(Phase.PROVISIONING),
            NOW,
            state(Phase.PROVISIONING),
        ),
        # 5. helm failed: at once, no grace
        (
            observe(app=NOT_READY, helm_failed=True),
            state(Phase.PROVISIONING),
            NOW,
            state(Phase.FAILED, NOW, FailureReason.HELM_FAILED),
        ),
        # 6. failed stays failed
        (
            observe(app=NOT_READY),
            state(Phase.FAILED, CREATED + 5, FailureReason.IMAGE_PULL),
            NOW,
            state(Phase.FAILED, CREATED + 5, FailureReason.IMAGE_PULL),
        ),
        # 7. problems past the grace, by precedence
        (
            observe(problems={FailureReason.IMAGE_PULL: NOW - 299}),
            state(Phase.PROVISIONING),
            NOW,
            state(Phase.PROVISIONING),
        ),
        (
            observe(problems={FailureReason.IMAGE_PULL: NOW - 300}),
            state(Phase.PROVISIONING),
            NOW,
            state(Phase.FAILED, NOW, FailureReason.IMAGE_PULL),
        ),
        (
            observe(
                problems={FailureReason.PVC_PENDING: NOW - 900, FailureReason.CRASH_LOOP: NOW - 300}
            ),
            state(Phase.PROVISIONING),
            NOW,
            state(Phase.FAILED, NOW, FailureReason.CRASH_LOOP),
        ),
        (
            observe(problems={FailureReason.PVC_PENDING: NOW - 300}),
            state(Phase.PROVISIONING),
            NOW,
            state(Phase.FAILED, NOW, FailureReason.PVC_PENDING),
        ),
        # 8. stuck is still provisioning; the timeout is failed
        (observe(), state(Phase.PROVISIONING), CREATED + 1000, state(Phase.PROVISIONING)),
        (
            observe(),
            state(Phase.PROVISIONING),
            CREATED + 1800,
            state(Phase.FAILED, CREATED + 1800, FailureReason.TIMEOUT),
        ),
        # 9. provisioning, first seen: the clock starts at the namespace's creation
        (observe(), None, NOW, state(Phase.PROVISIONING, CREATED)),
        (observe(app=READY, db=NOT_READY), None, NOW, state(Phase.PROVISIONING, CREATED)),
    ],
    ids=[
        "terminating",
        "provisioner-provisioning",
        "provisioner-running",
        "provisioner-failed-diagnosed",
        "provisioner-failed-undiagnosed",
        "provisioner-failed-late",
        "provisioner-unknown-status",
        "ready",
        "ready-recovers-failed",
        "running-degraded",
        "first-sighting-rolled-out",
        "rolled-out-while-provisioning",
        "helm-failed",
        "failed-is-final",
        "within-grace",
        "image-pull",
        "precedence",
        "pvc-pending",
        "stuck-still-provisioning",
        "timeout",
        "first-sighting",
        "db-not-ready",
    ],
)
def test_derive_phase(
    observed: Observation, previous: PhaseState | None, now: float, expected: PhaseState | None
) -> None:
    found = stores.derive_phase(observed, previous=previous, now=now, policy=POLICY)
    assert found == (expected or state(Phase.PROVISIONING))


def test_phase_clock_runs_while_the_phase_holds() -> None:
    first = stores.derive_phase(observe(), previous=None, now=NOW, policy=POLICY)
    later = stores.derive_phase(observe(), previous=first, now=NOW + 500, policy=POLICY)
    assert later.since == first.since == CREATED


def test_creation_in_the_future_does_not_give_negative_durations() -> None:
    found = stores.derive_phase(observe(), previous=None, now=CREATED - 5, policy=POLICY)
    assert found.since == CREATED - 5


@pytest.mark.parametrize(
    ("current", "now", "stuck"),
    [
        (state(Phase.PROVISIONING), CREATED + 600, False),
        (state(Phase.PROVISIONING), CREATED + 601, True),
        (state(Phase.DELETING), CREATED + 9999, False),
    ],
    ids=["at-threshold", "past-threshold", "other-phase"],
)
def test_is_stuck(current: PhaseState, now: float, stuck: bool) -> None:
    assert stores.is_stuck(current, now=now, stuck_after=600) is stuck


def test_needs_diagnosis_only_before_running() -> None:
    assert stores.needs_diagnosis(None)
    assert stores.needs_diagnosis(state(Phase.PROVISIONING))
    assert stores.needs_diagnosis(state(Phase.FAILED, reason=FailureReason.TIMEOUT))
    assert not stores.needs_diagnosis(state(Phase.RUNNING))
    assert not stores.needs_diagnosis(state(Phase.DELETING))
