"""Named faults, one per runbook scenario and branch: how each breaks the state, and what
"fixed" means for it.

A fault breaks the simulated platform the way the real failure would show in the API (pod and
container statuses, conditions, Events, logs, the provisioner's status) and not with flags the
simulation would have to remember: the broken state *is* the fault. The controllers then make
the runbook's fix work as it would in a cluster: a restart replaces the broken pods, a deleted
Job is recreated and runs, a deleted Certificate is issued anew, and so on.

`Fault.flags` are the ``k8s.diagnose`` flags the fault sets (or keeps clear) and
`Fault.storefront` what the store URL answers meanwhile, so tests and the demo can rely on
them; `Fault.fix` names the remediator actions that repair it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping

from remediator.simulation import controllers, kubeapi, stores
from remediator.simulation.stores import Obj

MISSING_IMAGE = "wordpress:6.4.99-php8.2-apache"
"""A tag the simulated registry does not have."""
MISSING_STORAGE_CLASS = "fast-ssd"
CLEANUP_FINALIZER = "store-platform.io/cleanup"
"""The provisioner's own finalizer on a store namespace (it crashed before removing it)."""
PVC_PROTECTION = "kubernetes.io/pvc-protection"


class FaultError(ValueError):
    """Unknown fault, or a store id where none fits (or none where one is needed)."""


Breaker = Callable[[stores.Cluster, str], None]
Check = Callable[[stores.Cluster, str], bool]


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Fault:
    name: str
    description: str
    scenario: int
    """The runbook scenario it belongs to (1 provisioning … 5 deletion)."""
    fix: str
    """What repairs it, in remediator actions."""
    flags: Mapping[str, bool]
    """``k8s.diagnose`` flags of the affected namespace while the fault holds."""
    storefront: int
    """What the store's URL answers meanwhile (503: with the default `Answer.UNAVAILABLE`)."""
    breaks: Breaker
    fixed: Check
    platform_namespace: str | None = None
    """For a platform fault (no store id): the namespace it breaks; it affects every store."""

    @property
    def platform(self) -> bool:
        return self.platform_namespace is not None

    def namespace(self, store_id: str | None) -> str:
        """The namespace to diagnose for this fault."""
        if self.platform_namespace is not None:
            return self.platform_namespace
        if store_id is None:
            raise FaultError(f"fault {self.name!r} needs a store id")
        return stores.names(store_id).namespace


# --- how pods break -----------------------------------------------------------------------------


def _store(cluster: stores.Cluster, store_id: str) -> stores.StoreNames:
    n = stores.names(store_id)
    if not controllers.namespace_open(cluster.emulator, n.namespace):
        raise FaultError(f"store {store_id!r} has no active namespace {n.namespace}")
    return n


PodBreaker = Callable[[kubeapi.KubeEmulator, Obj], None]


def _not_ready(message: str) -> PodBreaker:
    """Running, but failing its readiness probe (a hung process): out of the endpoints."""

    def breaks(emulator: kubeapi.KubeEmulator, pod: Obj) -> None:
        started = {"startedAt": controllers.stamp(emulator, ago=3600)}
        pod["status"] = {
            **(pod.get("status") or {}),
            "phase": "Running",
            "conditions": controllers.pod_conditions(emulator, ready=False),
            "containerStatuses": [
                controllers.container_status(c, state={"running": started}, ready=False)
                for c in pod["spec"]["containers"]
            ],
        }
        emulator.update(pod)
        controllers.record_event(emulator, pod, reason="Unhealthy", message=message)

    return breaks


def _crash_looping(log_text: str) -> PodBreaker:
    """Restarted over and over, now in back-off; the last run's log says why."""

    def breaks(emulator: kubeapi.KubeEmulator, pod: Obj) -> None:
        name, ns = pod["metadata"]["name"], pod["metadata"]["namespace"]
        statuses = []
        for container in pod["spec"]["containers"]:
            statuses.append(
                controllers.container_status(
                    container,
                    state={
                        "waiting": {
                            "reason": "CrashLoopBackOff",
                            "message": f"back-off 5m0s restarting failed container="
                            f"{container['name']} pod={name}",
                        }
                    },
                    last_state={
                        "terminated": {
                            "exitCode": 1,
                            "reason": "Error",
                            "startedAt": controllers.stamp(emulator, ago=40),
                            "finishedAt": controllers.stamp(emulator, ago=38),
                        }
                    },
                    ready=False,
                    restarts=7,
                )
            )
            emulator.set_pod_log(ns, name, container["name"], log_text, previous=True)
        pod["status"] = {
            **(pod.get("status") or {}),
            "phase": "Running",
            "conditions": controllers.pod_conditions(emulator, ready=False),
            "containerStatuses": statuses,
        }
        emulator.update(pod)
        controllers.record_event(
            emulator,
            pod,
            reason="BackOff",
            message=f"Back-off restarting failed container {statuses[0]['name']} in pod {name}",
        )

    return breaks


def _break_workload(
    cluster: stores.Cluster, kind: str, ns: str, name: str, breaks: PodBreaker
) -> None:
    emulator = cluster.emulator
    workload = emulator.get("apps/v1", kind, name, ns)
    if workload is None:
        raise FaultError(f"{kind} {ns}/{name} not found")
    for pod in controllers.owned_pods(emulator, workload):
        breaks(emulator, pod)
    controllers.sync_workload(emulator, kind, ns, name)
    controllers.sync_endpoints(emulator, ns)


# --- the faults ---------------------------------------------------------------------------------


def _app_down(cluster: stores.Cluster, store_id: str) -> None:
    n = _store(cluster, store_id)
    probe = "Readiness probe failed: HTTP probe failed with statuscode: 503"
    _break_workload(cluster, "Deployment", n.namespace, n.app, _not_ready(probe))


def _app_crashloop_db_ready(cluster: stores.Cluster, store_id: str) -> None:
    n = _store(cluster, store_id)
    log_text = (
        "[entrypoint] WordPress not found in /var/www/html - copying now...\n"
        "MySQL Connection Error: (2002) Connection refused\n"
        "Warning: mysqli::__construct(): (HY000/2002): Connection refused in Standard input "
        "code on line 22\n"
    )
    _break_workload(cluster, "Deployment", n.namespace, n.app, _crash_looping(log_text))


def _db_down(cluster: stores.Cluster, store_id: str) -> None:
    n = _store(cluster, store_id)
    probe = (
        "Readiness probe failed: mysqladmin: connect to server at 'localhost' failed error: "
        "'Can't connect to local MySQL server through socket '/var/run/mysqld/mysqld.sock' (2)'"
    )
    _break_workload(cluster, "StatefulSet", n.namespace, n.db, _not_ready(probe))


def _provisioner_down(cluster: stores.Cluster, store_id: str) -> None:
    log_text = (
        'level=error msg="store sync failed" error="pq: sorry, too many clients already"\n'
        "panic: database connection pool exhausted\n"
    )
    _break_workload(
        cluster,
        "Deployment",
        stores.PLATFORM_NAMESPACE,
        stores.PROVISIONER,
        _crash_looping(log_text),
    )


def _ingress_controller_down(cluster: stores.Cluster, store_id: str) -> None:
    probe = "Readiness probe failed: HTTP probe failed with statuscode: 500"
    _break_workload(
        cluster,
        "Deployment",
        stores.INGRESS_NAMESPACE,
        stores.INGRESS_CONTROLLER,
        _not_ready(probe),
    )


def _ingress_missing(cluster: stores.Cluster, store_id: str) -> None:
    n = _store(cluster, store_id)
    # Its Certificate goes with it (owned by the Ingress, as ingress-shim sets it up).
    cluster.emulator.delete("networking.k8s.io/v1", "Ingress", n.app, n.namespace)


def _certificate_not_ready(cluster: stores.Cluster, store_id: str) -> None:
    n = _store(cluster, store_id)
    emulator = cluster.emulator
    cert = emulator.get("cert-manager.io/v1", "Certificate", n.tls, n.namespace)
    if cert is None:
        raise FaultError(f"certificate {n.namespace}/{n.tls} not found")
    expired = controllers.stamp(emulator, ago=86400)
    failed = (
        "The certificate request has failed to complete and will be retried: Failed to wait "
        'for order resource to become ready: order is in "errored" state: Failed to finalize '
        "Order: 429 urn:ietf:params:acme:error:rateLimited"
    )
    cert["status"] = {
        **(cert.get("status") or {}),
        "notAfter": expired,
        "conditions": [
            {"type": "Ready", "status": "False", "reason": "Expired",
             "message": f"Certificate expired on {expired}", "lastTransitionTime": expired},
            {"type": "Issuing", "status": "False", "reason": "Failed", "message": failed,
             "lastTransitionTime": controllers.stamp(emulator)},
        ],
    }  # fmt: skip
    emulator.update(cert)
    controllers.record_event(
        emulator, cert, reason="Failed", message=failed, component="cert-manager-certificates"
    )


def _init_job_failed(cluster: stores.Cluster, store_id: str) -> None:
    n = _store(cluster, store_id)
    emulator = cluster.emulator
    job = emulator.get("batch/v1", "Job", n.init_job, n.namespace) or emulator.create(
        stores.init_job(store_id)
    )
    for pod in controllers.owned_pods(emulator, job):
        emulator.delete("v1", "Pod", pod["metadata"]["name"], n.namespace)
    message = "Job has reached the specified backoff limit"
    stamp = controllers.stamp(emulator)
    job["status"] = {
        "startTime": controllers.stamp(emulator, ago=900),
        "failed": 7,
        "ready": 0,
        "terminating": 0,
        "uncountedTerminatedPods": {},
        "conditions": [
            {"type": "FailureTarget", "status": "True", "reason": "BackoffLimitExceeded",
             "message": message, "lastProbeTime": stamp, "lastTransitionTime": stamp},
            {"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded",
             "message": message, "lastProbeTime": stamp, "lastTransitionTime": stamp},
        ],
    }  # fmt: skip
    job = emulator.update(job)
    pod = controllers.new_pod(
        emulator,
        job,
        f"{n.init_job}-{controllers.random_suffix()}",
        labels={"job-name": n.init_job},
    )
    container = pod["spec"]["containers"][0]
    pod["status"] = {
        **pod["status"],
        "phase": "Failed",
        "conditions": controllers.pod_conditions(emulator, ready=False),
        "containerStatuses": [
            controllers.container_status(
                container,
                state={"terminated": {"exitCode": 1, "reason": "Error", "finishedAt": stamp}},
                ready=False,
            )
        ],
    }
    emulator.update(pod)
    emulator.set_pod_log(
        n.namespace,
        pod["metadata"]["name"],
        container["name"],
        "Error: Error establishing a database connection. This either means that the username "
        "and password information in your wp-config.php file is incorrect or that contact with "
        "the database server at store-db could not be established.\n",
    )
    controllers.record_event(
        emulator, job, reason="BackoffLimitExceeded", message=message, component="job-controller"
    )
    controllers.set_store_status(cluster, store_id, "provisioning")


def _pvc_pending(cluster: stores.Cluster, store_id: str) -> None:
    """Provisioning with a claim of a storage class that does not exist: the database pod
    cannot be scheduled, so the init Job cannot finish."""
    n = _store(cluster, store_id)
    emulator = cluster.emulator
    sts = emulator.get("apps/v1", "StatefulSet", n.db, n.namespace)
    if sts is None:
        raise FaultError(f"statefulset {n.namespace}/{n.db} not found")
    for pod in controllers.owned_pods(emulator, sts):
        emulator.delete("v1", "Pod", pod["metadata"]["name"], n.namespace)
    if emulator.get("v1", "PersistentVolumeClaim", n.pvc, n.namespace) is not None:
        emulator.delete("v1", "PersistentVolumeClaim", n.pvc, n.namespace)
    claim = stores.pvc_from_template(sts, 0, sts["spec"]["volumeClaimTemplates"][0])
    claim["spec"]["storageClassName"] = MISSING_STORAGE_CLASS
    emulator.create(claim)
    controllers.roll(emulator, "StatefulSet", n.namespace, n.db)
    db_pod = emulator.get("v1", "Pod", n.db_pod, n.namespace)
    if db_pod is not None:
        controllers.record_event(
            emulator,
            db_pod,
            reason="FailedScheduling",
            message="0/1 nodes are available: pod has unbound immediate PersistentVolumeClaims.",
            component="default-scheduler",
        )
    emulator.delete("batch/v1", "Job", n.init_job, n.namespace, propagation_policy="Background")
    emulator.create(stores.init_job(store_id))
    controllers.start_job(emulator, n.namespace, n.init_job)
    controllers.set_store_status(cluster, store_id, "provisioning")


def _image_pull_error(cluster: stores.Cluster, store_id: str) -> None:
    """Provisioning rolled out an image tag the registry does not have."""
    n = _store(cluster, store_id)
    emulator = cluster.emulator

    def bad_image(deployment: Obj) -> None:
        for container in deployment["spec"]["template"]["spec"]["containers"]:
            container["image"] = MISSING_IMAGE

    emulator.apply_change("apps/v1", "Deployment", n.app, bad_image, namespace=n.namespace)
    controllers.roll(emulator, "Deployment", n.namespace, n.app)
    for pod in controllers.workload_pods(emulator, "Deployment", n.namespace, n.app):
        controllers.record_event(
            emulator,
            pod,
            reason="Failed",
            message=f'Failed to pull image "{MISSING_IMAGE}": rpc error: code = NotFound desc = '
            f'failed to pull and unpack image "docker.io/library/{MISSING_IMAGE}": not found',
        )
    controllers.set_store_status(cluster, store_id, "provisioning")


def _db_credentials_missing(cluster: stores.Cluster, store_id: str) -> None:
    """The database Secret is gone and the app's pods were recreated since (a node drain):
    they cannot start."""
    n = _store(cluster, store_id)
    emulator = cluster.emulator
    if emulator.get("v1", "Secret", n.credentials, n.namespace) is not None:
        emulator.delete("v1", "Secret", n.credentials, n.namespace)
    controllers.replace_pods(emulator, "Deployment", n.namespace, n.app)
    for pod in controllers.workload_pods(emulator, "Deployment", n.namespace, n.app):
        controllers.record_event(
            emulator, pod, reason="Failed", message=f'Error: secret "{n.credentials}" not found'
        )


def _status_wrong(cluster: stores.Cluster, store_id: str) -> None:
    _store(cluster, store_id)
    controllers.set_store_status(cluster, store_id, "provisioning")


def _helm_pending(cluster: stores.Cluster, store_id: str) -> None:
    """The provisioner's ``helm upgrade`` died an hour ago: the release's record is left
    ``pending-upgrade`` and the store ``provisioning``; Helm refuses the next upgrade."""
    n = _store(cluster, store_id)
    controllers.set_store_status(cluster, store_id, "provisioning")
    emulator = cluster.emulator
    latest = stores.latest_release(emulator, n.release, n.namespace)
    revision = int(latest.get("version", "0")) + 1
    an_hour_ago = int(emulator.now().timestamp()) - 3600
    emulator.create(
        stores.helm_release(
            n.release, n.namespace, revision=revision, status="pending-upgrade",
            modified_at=an_hour_ago,
        )
    )  # fmt: skip


def _deletion_stuck(cluster: stores.Cluster, store_id: str) -> None:
    """Deletion started, but the namespace keeps the provisioner's finalizer and the database
    claim keeps ``pvc-protection``: Terminating for good, the store ``deleting``."""
    n = _store(cluster, store_id)
    emulator = cluster.emulator
    controllers.set_store_status(cluster, store_id, "deleting")

    def hold(finalizer: str) -> Callable[[Obj], None]:
        def change(obj: Obj) -> None:
            obj["metadata"]["finalizers"] = [*obj["metadata"].get("finalizers", []), finalizer]

        return change

    emulator.apply_change("v1", "Namespace", n.namespace, hold(CLEANUP_FINALIZER))
    if emulator.get("v1", "PersistentVolumeClaim", n.pvc, n.namespace) is not None:
        emulator.apply_change(
            "v1", "PersistentVolumeClaim", n.pvc, hold(PVC_PROTECTION), namespace=n.namespace
        )
    emulator.delete("v1", "Namespace", n.namespace)


# --- what "fixed" means -------------------------------------------------------------------------


def _healthy(cluster: stores.Cluster, store_id: str) -> bool:
    return not stores.store_problems(cluster, store_id)


def _gone(cluster: stores.Cluster, store_id: str) -> bool:
    namespace = stores.names(store_id).namespace
    return (
        cluster.emulator.get("v1", "Namespace", namespace) is None
        and store_id not in cluster.twin.stores
    )


def _provisioner_up(cluster: stores.Cluster, store_id: str) -> bool:
    return stores.provisioner_up(cluster.emulator)


def _ingress_controller_up(cluster: stores.Cluster, store_id: str) -> bool:
    return stores.ingress_controller_up(cluster.emulator)


FAULTS: Mapping[str, Fault] = {
    f.name: f
    for f in (
        Fault(
            name="init_job_failed",
            scenario=1,
            description="Provisioning stuck: the init Job failed (BackoffLimitExceeded) and the "
            "provisioner still says provisioning.",
            fix="k8s.delete Job <id>-init (propagation Background); the provisioner recreates "
            "it, it completes and the store becomes running",
            flags={"init_job_failed": True, "app_ready": True, "db_ready": True},
            storefront=200,
            breaks=_init_job_failed,
            fixed=_healthy,
        ),
        Fault(
            name="pvc_pending",
            scenario=1,
            description="Provisioning stuck: the database claim asks for a storage class that "
            "does not exist, so it stays Pending and the database pod unschedulable.",
            fix="k8s.delete_pvc data-<id>-db-0; the StatefulSet recreates it from its "
            "template, it binds, the database starts and the init Job completes",
            flags={"pvc_pending": True, "db_ready": False, "app_ready": True},
            storefront=200,
            breaks=_pvc_pending,
            fixed=_healthy,
        ),
        Fault(
            name="image_pull_error",
            scenario=1,
            description="Provisioning stuck: the app's image tag does not exist "
            "(ImagePullBackOff).",
            fix="provisioner.request reprovision; the chart's image is rolled out again",
            flags={"image_pull_error": True, "app_ready": False},
            storefront=503,
            breaks=_image_pull_error,
            fixed=_healthy,
        ),
        Fault(
            name="status_wrong",
            scenario=1,
            description="Everything is healthy but the provisioner still says provisioning.",
            fix="provisioner.request set_status running",
            flags={"app_ready": True, "db_ready": True, "init_job_failed": False},
            storefront=200,
            breaks=_status_wrong,
            fixed=_healthy,
        ),
        Fault(
            name="app_down",
            scenario=2,
            description="The app's pods run but fail their readiness probe: no ready "
            "endpoints, the store answers 503.",
            fix="k8s.rollout_restart Deployment <id>-app",
            flags={"app_ready": False, "endpoints_missing": True, "db_ready": True},
            storefront=503,
            breaks=_app_down,
            fixed=_healthy,
        ),
        Fault(
            name="ingress_missing",
            scenario=2,
            description="The store's Ingress (and so its Certificate) is gone: its host is "
            "unknown to the ingress controller (404).",
            fix="provisioner.request reprovision; Helm recreates the Ingress and cert-manager "
            "its Certificate",
            flags={"ingress_missing": True, "app_ready": True},
            storefront=404,
            breaks=_ingress_missing,
            fixed=_healthy,
        ),
        Fault(
            name="certificate_not_ready",
            scenario=2,
            description="The TLS certificate expired and its renewal failed: Ready=False.",
            fix="k8s.delete Certificate <id>-tls (or Secret <id>-tls); cert-manager issues a "
            "new one",
            flags={"certificate_not_ready": True, "app_ready": True},
            storefront=503,
            breaks=_certificate_not_ready,
            fixed=_healthy,
        ),
        Fault(
            name="ingress_controller_down",
            scenario=2,
            description="ingress-nginx-controller has no ready pod: every store fails.",
            fix="k8s.rollout_restart Deployment ingress-nginx-controller in ingress-nginx",
            flags={"app_ready": False, "endpoints_missing": True},
            storefront=503,
            breaks=_ingress_controller_down,
            fixed=_ingress_controller_up,
            platform_namespace=stores.INGRESS_NAMESPACE,
        ),
        Fault(
            name="db_down",
            scenario=3,
            description="The database pod runs but fails its readiness probe: StatefulSet not "
            "ready (the static check path still answers).",
            fix="k8s.rollout_restart StatefulSet <id>-db",
            flags={"db_ready": False, "endpoints_missing": True, "app_ready": True},
            storefront=200,
            breaks=_db_down,
            fixed=_healthy,
        ),
        Fault(
            name="app_crashloop_db_ready",
            scenario=3,
            description="The app crash-loops (it lost the database once, now in back-off) "
            "although the database is ready again.",
            fix="k8s.rollout_restart Deployment <id>-app",
            flags={"crash_loop": True, "db_ready": True, "app_ready": False},
            storefront=503,
            breaks=_app_crashloop_db_ready,
            fixed=_healthy,
        ),
        Fault(
            name="db_credentials_missing",
            scenario=3,
            description="Secret <id>-db-credentials is gone; the app's recreated pods cannot "
            "start (CreateContainerConfigError).",
            fix="provisioner.request reprovision; the Secret is regenerated and the pods start",
            flags={"secrets_missing": True, "config_error": True, "app_ready": False},
            storefront=503,
            breaks=_db_credentials_missing,
            fixed=_healthy,
        ),
        Fault(
            name="provisioner_down",
            scenario=4,
            description="The provisioner crash-loops (connection pool exhausted); its API "
            "answers 503.",
            fix="k8s.rollout_restart (or k8s.scale) Deployment provisioner in store-platform",
            flags={"app_ready": False, "crash_loop": True},
            storefront=200,
            breaks=_provisioner_down,
            fixed=_provisioner_up,
            platform_namespace=stores.PLATFORM_NAMESPACE,
        ),
        Fault(
            name="helm_pending",
            scenario=4,
            description="Provisioning stuck: the provisioner's Helm upgrade died an hour ago, "
            "the release is pending-upgrade and reprovisioning fails until it is cleared.",
            fix="helm.clear_pending_release store-<id> (or k8s.delete of the pending record's "
            "Secret), then provisioner.request reprovision",
            flags={"helm_pending": True, "app_ready": True},
            storefront=200,
            breaks=_helm_pending,
            fixed=_healthy,
        ),
        Fault(
            name="deletion_stuck",
            scenario=5,
            description="Deletion stuck: the namespace is Terminating with the provisioner's "
            "finalizer, the database PVC held by pvc-protection, the store deleting.",
            fix="k8s.remove_finalizers on PersistentVolumeClaim data-<id>-db-0 and on "
            "Namespace store-<id>; the namespace goes and the provisioner forgets the store",
            flags={"namespace_terminating": True},
            storefront=404,
            breaks=_deletion_stuck,
            fixed=_gone,
        ),
    )
}


def get(name: str) -> Fault:
    try:
        return FAULTS[name]
    except KeyError:
        raise FaultError(f"unknown fault {name!r}; known: {', '.join(sorted(FAULTS))}") from None


def inject(cluster: stores.Cluster, name: str, store_id: str | None = None) -> Fault:
    """Break ``store_id`` (or, for a platform fault, the platform) the way ``name`` says."""
    fault = get(name)
    if fault.platform and store_id is not None:
        raise FaultError(f"fault {name!r} breaks the platform; give no store id")
    if not fault.platform and store_id is None:
        raise FaultError(f"fault {name!r} needs a store id")
    fault.breaks(cluster, store_id or "")
    return fault


def is_fixed(cluster: stores.Cluster, name: str, store_id: str | None = None) -> bool:
    return get(name).fixed(cluster, store_id or "")
