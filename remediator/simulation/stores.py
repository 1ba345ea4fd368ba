"""The simulated platform's objects: one store's manifests, the platform's own, and health.

A store ``<id>`` lives in namespace ``store-<id>`` (labelled ``app.kubernetes.io/part-of=
store-platform``, as the runbook lists stores) and is what the ``store-instance`` Helm chart
would install: Deployment ``<id>-app`` (WordPress), StatefulSet ``<id>-db`` (MySQL), their
Services, Ingress ``<id>.<domain>`` with TLS secret ``<id>-tls``, Secret ``<id>-db-credentials``,
the init Job ``<id>-init`` and the Helm release record. What controllers make from those (pods,
Endpoints, the PVC from the volume claim template, the Certificate from the Ingress) is built
here too but created by :mod:`remediator.simulation.controllers`, as in a cluster.

The builders do no I/O; the readers at the end (`serving_problems`, `store_problems`) derive a
store's health from the emulator's state, for the storefront and for ``sim.healthy``.
"""

from __future__ import annotations

import base64
import dataclasses
import gzip
import hashlib
import json
import secrets
from collections.abc import Mapping, Sequence
from typing import Any

from remediator.simulation import access, kubeapi, provisioner

Obj = dict[str, Any]

DOMAIN = "127.0.0.1.nip.io"
CHECK_PATH = "/wp-includes/images/blank.gif"
"""The runbook's check path: a static file, so it answers whether or not the database does."""
PART_OF = "app.kubernetes.io/part-of"
PLATFORM = "store-platform"
STORE_ID_LABEL = "store-platform.io/store-id"
STATUS_LABEL = "store-platform.io/status"
"""The provisioner's status of the store, mirrored onto its namespace (``kubectl -L``)."""
PLATFORM_NAMESPACE = "store-platform"
PROVISIONER = "provisioner"
INGRESS_NAMESPACE = "ingress-nginx"
INGRESS_CONTROLLER = "ingress-nginx-controller"
CLUSTER_ISSUER = "letsencrypt"
ISSUER_ANNOTATION = "cert-manager.io/cluster-issuer"
STORAGE_CLASS = "standard"
STORAGE_CLASSES = frozenset({STORAGE_CLASS})
"""Storage classes the simulated volume provisioner can bind; claims of others stay Pending."""
CHART_VERSION = "0.3.1"

WORDPRESS_IMAGE = "wordpress:6.4-php8.2-apache"
MYSQL_IMAGE = "mysql:8.0"
WP_CLI_IMAGE = "wordpress:cli-2.9"
PROVISIONER_IMAGE = "registry.local/store-provisioner:1.4.0"
INGRESS_IMAGE = "registry.k8s.io/ingress-nginx/controller:v1.9.4"
IMAGES = frozenset({WORDPRESS_IMAGE, MYSQL_IMAGE, WP_CLI_IMAGE, PROVISIONER_IMAGE, INGRESS_IMAGE})
"""What the simulated registry holds; any other image fails to pull."""

HELM_LABELS = {"app.kubernetes.io/managed-by": "Helm"}


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Cluster:
    """What controllers and faults act on: the Kubernetes state and the provisioner's."""

    emulator: kubeapi.KubeEmulator
    twin: provisioner.ProvisionerTwin
    domain: str = DOMAIN


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class StoreNames:
    """Every object name of one store, derived from its id as the chart does."""

    id: str

    @property
    def namespace(self) -> str:
        return f"store-{self.id}"

    @property
    def release(self) -> str:
        return self.namespace

    @property
    def app(self) -> str:
        return f"{self.id}-app"

    @property
    def db(self) -> str:
        return f"{self.id}-db"

    @property
    def db_pod(self) -> str:
        return f"{self.db}-0"

    @property
    def pvc(self) -> str:
        return f"data-{self.db}-0"

    @property
    def credentials(self) -> str:
        return f"{self.db}-credentials"

    @property
    def tls(self) -> str:
        return f"{self.id}-tls"

    @property
    def init_job(self) -> str:
        return f"{self.id}-init"

    def host(self, domain: str = DOMAIN) -> str:
        return f"{self.id}.{domain}"


def names(store_id: str) -> StoreNames:
    return StoreNames(id=store_id)


def store_id_of(namespace: str) -> str | None:
    """``store-s1`` → ``s1``; None for namespaces that are not stores' (``store-platform``)."""
    if not namespace.startswith("store-") or namespace == PLATFORM_NAMESPACE:
        return None
    return namespace.removeprefix("store-")


# --- small builders -----------------------------------------------------------------------------


def _address(prefix: str, key: str) -> str:
    digest = hashlib.sha256(key.encode()).digest()
    return f"{prefix}.{digest[0]}.{digest[1] % 254 + 1}"


def pod_ip(namespace: str, name: str) -> str:
    return _address("10.244", f"{namespace}/{name}")


def template_hash(template: Mapping[str, Any]) -> str:
    """A stable hash of a pod template, like ``pod-template-hash`` (10 safe characters)."""
    digest = hashlib.sha256(json.dumps(template, sort_keys=True).encode()).hexdigest()
    # Kubernetes' SafeEncodeString alphabet has no vowels, so hashes never spell words.
    alphabet = "bcdfghjklmnpqrstvwxz2456789"
    return "".join(alphabet[int(digest[i : i + 2], 16) % len(alphabet)] for i in range(0, 20, 2))


def _meta(
    name: str,
    namespace: str | None = None,
    *,
    labels: Mapping[str, str] | None = None,
    annotations: Mapping[str, str] | None = None,
) -> Obj:
    metadata: Obj = {"name": name}
    if namespace is not None:
        metadata["namespace"] = namespace
    if labels:
        metadata["labels"] = dict(labels)
    if annotations:
        metadata["annotations"] = dict(annotations)
    return metadata


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def owner_reference(owner: Mapping[str, Any]) -> Obj:
    return {
        "apiVersion": owner["apiVersion"],
        "kind": owner["kind"],
        "name": owner["metadata"]["name"],
        "uid": owner["metadata"]["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }


def namespace(name: str, *, labels: Mapping[str, str] | None = None) -> Obj:
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": _meta(name, labels=labels)}


def service(
    name: str, ns: str, *, selector: Mapping[str, str], port: int, headless: bool = False
) -> Obj:
    spec: Obj = {
        "type": "ClusterIP",
        "selector": dict(selector),
        "ports": [{"name": "main", "port": port, "targetPort": port, "protocol": "TCP"}],
    }
    spec["clusterIP"] = "None" if headless else _address("10.96", f"{ns}/{name}")
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _meta(name, ns, labels={**selector, **HELM_LABELS}),
        "spec": spec,
    }


def secret_ref(variable: str, secret: str, key: str) -> Obj:
    return {"name": variable, "valueFrom": {"secretKeyRef": {"name": secret, "key": key}}}


def deployment(
    name: str,
    ns: str,
    *,
    labels: Mapping[str, str],
    containers: Sequence[Obj],
    replicas: int = 1,
) -> Obj:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _meta(name, ns, labels=labels),
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "strategy": {
                "type": "RollingUpdate",
                "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": "25%"},
            },
            "template": {
                "metadata": {"labels": {**labels, "app": name}},
                "spec": {"containers": list(containers)},
            },
        },
    }


def helm_release(
    release: str, ns: str, *, revision: int, status: str, modified_at: int | None = None
) -> Obj:
    """The Secret Helm 3 stores one release revision in: ``data.release`` is
    base64(gzip(JSON)), base64-encoded once more as every Secret's data is."""
    payload = {
        "name": release,
        "namespace": ns,
        "version": revision,
        "info": {
            "status": status,
            "description": "Install complete" if revision == 1 else "Upgrade complete",
        },
        "chart": {"metadata": {"name": "store-instance", "version": CHART_VERSION}},
        "config": {},
        "manifest": "---\n",
    }
    encoded = base64.b64encode(gzip.compress(json.dumps(payload).encode())).decode()
    labels = {"name": release, "owner": "helm", "status": status, "version": str(revision)}
    if modified_at is not None:
        labels["modifiedAt"] = str(modified_at)
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": _meta(f"sh.helm.release.v1.{release}.v{revision}", ns, labels=labels),
        "type": "helm.sh/release.v1",
        "data": {"release": _b64(encoded)},
    }


# --- one store ----------------------------------------------------------------------------------


def store_manifests(store_id: str, *, domain: str = DOMAIN) -> list[Obj]:
    """What installing the chart creates, namespace first; no status, no Helm record.

    Pods, Endpoints, the PVC and the Certificate are the controllers' to make.
    """
    n = names(store_id)
    ns = n.namespace
    chart = {**HELM_LABELS, "app.kubernetes.io/instance": n.release}
    app_labels = {**chart, "app.kubernetes.io/name": "wordpress", "app": n.app}
    db_labels = {**chart, "app.kubernetes.io/name": "mysql", "app": n.db}
    wordpress = {
        "name": "wordpress",
        "image": WORDPRESS_IMAGE,
        "ports": [{"name": "http", "containerPort": 80}],
        "env": [
            {"name": "WORDPRESS_DB_HOST", "value": n.db},
            {"name": "WORDPRESS_DB_USER", "value": "wordpress"},
            secret_ref("WORDPRESS_DB_PASSWORD", n.credentials, "password"),
        ],
        "readinessProbe": {"httpGet": {"path": CHECK_PATH, "port": 80}, "periodSeconds": 10},
    }
    mysql = {
        "name": "mysql",
        "image": MYSQL_IMAGE,
        "ports": [{"name": "mysql", "containerPort": 3306}],
        "env": [
            {"name": "MYSQL_DATABASE", "value": "wordpress"},
            {"name": "MYSQL_USER", "value": "wordpress"},
            secret_ref("MYSQL_PASSWORD", n.credentials, "password"),
            secret_ref("MYSQL_ROOT_PASSWORD", n.credentials, "root-password"),
        ],
        "volumeMounts": [{"name": "data", "mountPath": "/var/lib/mysql"}],
        "readinessProbe": {"exec": {"command": ["mysqladmin", "ping"]}, "periodSeconds": 10},
    }
    host = n.host(domain)
    return [
        namespace(ns, labels={PART_OF: PLATFORM, STORE_ID_LABEL: store_id}),
        # The store chart includes helm-charts/remediator-store-access: remediator may work here.
        access.store_role_binding(ns),
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": _meta(n.credentials, ns, labels=chart),
            "type": "Opaque",
            "data": {
                "password": _b64(secrets.token_urlsafe(12)),
                "root-password": _b64(secrets.token_urlsafe(12)),
            },
        },
        deployment(n.app, ns, labels=app_labels, containers=[wordpress]),
        {
            "apiVersion": "apps/v1",
            "kind": "StatefulSet",
            "metadata": _meta(n.db, ns, labels=db_labels),
            "spec": {
                "replicas": 1,
                "serviceName": n.db,
                "selector": {"matchLabels": {"app": n.db}},
                "template": {
                    "metadata": {"labels": db_labels},
                    "spec": {"containers": [mysql]},
                },
                "volumeClaimTemplates": [
                    {
                        "metadata": {"name": "data"},
                        "spec": {
                            "accessModes": ["ReadWriteOnce"],
                            "storageClassName": STORAGE_CLASS,
                            "resources": {"requests": {"storage": "1Gi"}},
                        },
                    }
                ],
            },
        },
        service(n.app, ns, selector={"app": n.app}, port=80),
        service(n.db, ns, selector={"app": n.db}, port=3306, headless=True),
        {
            "apiVersion": "networking.k8s.io/v1",
            "kind": "Ingress",
            "metadata": _meta(
                n.app, ns, labels=app_labels, annotations={ISSUER_ANNOTATION: CLUSTER_ISSUER}
            ),
            "spec": {
                "ingressClassName": "nginx",
                "tls": [{"hosts": [host], "secretName": n.tls}],
                "rules": [
                    {
                        "host": host,
                        "http": {
                            "paths": [
                                {
                                    "path": "/",
                                    "pathType": "Prefix",
                                    "backend": {"service": {"name": n.app, "port": {"number": 80}}},
                                }
                            ]
                        },
                    }
                ],
            },
        },
        init_job(store_id),
    ]


def init_job(store_id: str) -> Obj:
    """The chart's ``wp core install`` Job, as the provisioner (re)creates it."""
    n = names(store_id)
    labels = {**HELM_LABELS, "app.kubernetes.io/instance": n.release, "app": n.init_job}
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": _meta(n.init_job, n.namespace, labels=labels),
        "spec": {
            "backoffLimit": 6,
            "completions": 1,
            "parallelism": 1,
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "restartPolicy": "Never",
                    "containers": [
                        {
                            "name": "wp-cli",
                            "image": WP_CLI_IMAGE,
                            "command": ["wp", "core", "install", "--skip-email"],
                            "env": [
                                {"name": "WORDPRESS_DB_HOST", "value": n.db},
                                secret_ref("WORDPRESS_DB_PASSWORD", n.credentials, "password"),
                            ],
                        }
                    ],
                },
            },
        },
    }


def pvc_from_template(
    statefulset: Mapping[str, Any], ordinal: int, claim: Mapping[str, Any]
) -> Obj:
    """The claim the StatefulSet controller makes for ``ordinal`` from a volume claim template."""
    name = f"{claim['metadata']['name']}-{statefulset['metadata']['name']}-{ordinal}"
    labels = dict(statefulset["spec"]["selector"].get("matchLabels") or {})
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": _meta(name, statefulset["metadata"]["namespace"], labels=labels),
        "spec": json.loads(json.dumps(claim.get("spec") or {})),
        "status": {"phase": "Pending"},
    }


def certificate(ingress: Mapping[str, Any], tls: Mapping[str, Any]) -> Obj:
    """The Certificate cert-manager's ingress-shim makes for one TLS entry of an Ingress."""
    metadata = ingress["metadata"]
    secret = str(tls["secretName"])
    return {
        "apiVersion": "cert-manager.io/v1",
        "kind": "Certificate",
        "metadata": {
            **_meta(secret, metadata["namespace"], labels=metadata.get("labels")),
            "ownerReferences": [owner_reference(ingress)],
        },
        "spec": {
            "secretName": secret,
            "dnsNames": list(tls.get("hosts") or []),
            "issuerRef": {
                "name": (metadata.get("annotations") or {}).get(ISSUER_ANNOTATION, ""),
                "kind": "ClusterIssuer",
                "group": "cert-manager.io",
            },
        },
    }


def tls_secret(certificate: Mapping[str, Any]) -> Obj:
    metadata = certificate["metadata"]
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": _meta(
            certificate["spec"]["secretName"],
            metadata["namespace"],
            annotations={"cert-manager.io/certificate-name": metadata["name"]},
        ),
        "type": "kubernetes.io/tls",
        "data": {
            "tls.crt": _b64("-----BEGIN CERTIFICATE-----\nsimulated\n-----END CERTIFICATE-----\n"),
            "tls.key": _b64("-----BEGIN PRIVATE KEY-----\nsimulated\n-----END PRIVATE KEY-----\n"),
        },
    }


# --- the platform itself ------------------------------------------------------------------------


def platform_manifests() -> list[Obj]:
    """``store-platform`` (the provisioner, its Helm release) and ``ingress-nginx``."""
    provisioner_labels = {
        **HELM_LABELS,
        "app.kubernetes.io/instance": PLATFORM,
        "app.kubernetes.io/name": PROVISIONER,
    }
    ingress_labels = {
        "app.kubernetes.io/instance": "ingress-nginx",
        "app.kubernetes.io/name": "ingress-nginx",
        "app.kubernetes.io/component": "controller",
    }
    return [
        namespace(PLATFORM_NAMESPACE, labels={"kubernetes.io/metadata.name": PLATFORM_NAMESPACE}),
        deployment(
            PROVISIONER,
            PLATFORM_NAMESPACE,
            labels=provisioner_labels,
            containers=[
                {
                    "name": PROVISIONER,
                    "image": PROVISIONER_IMAGE,
                    "ports": [{"name": "http", "containerPort": 8080}],
                    "readinessProbe": {"httpGet": {"path": "/healthz", "port": 8080}},
                }
            ],
        ),
        service(PROVISIONER, PLATFORM_NAMESPACE, selector={"app": PROVISIONER}, port=8080),
        helm_release(PLATFORM, PLATFORM_NAMESPACE, revision=1, status="deployed"),
        namespace(INGRESS_NAMESPACE, labels={"kubernetes.io/metadata.name": INGRESS_NAMESPACE}),
        deployment(
            INGRESS_CONTROLLER,
            INGRESS_NAMESPACE,
            labels=ingress_labels,
            containers=[
                {
                    "name": "controller",
                    "image": INGRESS_IMAGE,
                    "ports": [{"name": "http", "containerPort": 80}],
                    "readinessProbe": {"httpGet": {"path": "/healthz", "port": 10254}},
                }
            ],
        ),
        service(
            INGRESS_CONTROLLER, INGRESS_NAMESPACE, selector={"app": INGRESS_CONTROLLER}, port=80
        ),
    ]


# --- reading the state --------------------------------------------------------------------------


def conditions(obj: Mapping[str, Any] | None) -> dict[str, Mapping[str, Any]]:
    found = ((obj or {}).get("status") or {}).get("conditions") or []
    return {str(c.get("type")): c for c in found if isinstance(c, Mapping)}


def condition_true(obj: Mapping[str, Any] | None, kind: str) -> bool:
    return conditions(obj).get(kind, {}).get("status") == "True"


def available(obj: Mapping[str, Any] | None) -> bool:
    """A Deployment or StatefulSet with all its replicas ready (and at least one)."""
    if obj is None or obj["metadata"].get("deletionTimestamp"):
        return False
    wanted = (obj.get("spec") or {}).get("replicas", 1)
    status = obj.get("status") or {}
    field = "availableReplicas" if obj["kind"] == "Deployment" else "readyReplicas"
    return bool(wanted) and int(status.get(field) or 0) >= wanted


def serving_replicas(obj: Mapping[str, Any] | None) -> int:
    """Ready replicas behind a Service: enough for traffic, if not for a finished rollout."""
    if obj is None or obj["metadata"].get("deletionTimestamp"):
        return 0
    return int((obj.get("status") or {}).get("readyReplicas") or 0)


def ready_addresses(endpoints: Mapping[str, Any] | None) -> int:
    return sum(len(s.get("addresses") or []) for s in (endpoints or {}).get("subsets") or [])


def latest_release(emulator: kubeapi.KubeEmulator, release: str, ns: str) -> Mapping[str, Any]:
    """The labels of a Helm release's newest record; empty when it has none."""
    records = emulator.list("v1", "Secret", ns, label_selector=f"owner=helm,name={release}")
    labels = [r["metadata"].get("labels") or {} for r in records]
    versions = [lab for lab in labels if str(lab.get("version", "")).isdigit()]
    return max(versions, key=lambda lab: int(lab["version"]), default={})


def ingress_controller_up(emulator: kubeapi.KubeEmulator) -> bool:
    controller = emulator.get("apps/v1", "Deployment", INGRESS_CONTROLLER, INGRESS_NAMESPACE)
    return serving_replicas(controller) > 0


def provisioner_up(emulator: kubeapi.KubeEmulator) -> bool:
    found = emulator.get("apps/v1", "Deployment", PROVISIONER, PLATFORM_NAMESPACE)
    return serving_replicas(found) > 0


def find_ingress(
    emulator: kubeapi.KubeEmulator, host: str, namespace: str
) -> Mapping[str, Any] | None:
    """The Ingress in ``namespace`` routing ``host``. (ingress-nginx looks in every namespace;
    a store's host is only ever claimed in its own, and looking there keeps probes cheap.)"""
    for ingress in emulator.list("networking.k8s.io/v1", "Ingress", namespace):
        if ingress["metadata"].get("deletionTimestamp"):
            continue
        if any(r.get("host") == host for r in (ingress.get("spec") or {}).get("rules") or []):
            return ingress
    return None


def serving_problems(
    emulator: kubeapi.KubeEmulator, store_id: str, *, domain: str = DOMAIN
) -> list[str]:
    """Why the store's URL would not answer 200 now; empty when it would.

    The check path is static, so the database does not matter here (it does for
    `store_problems`), exactly as for the runbook's curl of ``blank.gif``.
    """
    n = names(store_id)
    problems: list[str] = []
    ns = emulator.get("v1", "Namespace", n.namespace)
    if ns is None:
        return [f"namespace {n.namespace} missing"]
    if ns["metadata"].get("deletionTimestamp"):
        problems.append(f"namespace {n.namespace} terminating")
    if not ingress_controller_up(emulator):
        problems.append("ingress controller unavailable")
    if find_ingress(emulator, n.host(domain), n.namespace) is None:
        problems.append(f"no ingress for {n.host(domain)}")
    cert = emulator.get("cert-manager.io/v1", "Certificate", n.tls, n.namespace)
    if not condition_true(cert, "Ready"):
        problems.append(f"certificate {n.tls} not ready")
    if emulator.get("v1", "Secret", n.tls, n.namespace) is None:
        problems.append(f"TLS secret {n.tls} missing")
    app = emulator.get("apps/v1", "Deployment", n.app, n.namespace)
    if serving_replicas(app) == 0:
        problems.append(f"deployment {n.app} has no ready replicas")
    if ready_addresses(emulator.get("v1", "Endpoints", n.app, n.namespace)) == 0:
        problems.append(f"service {n.app} has no ready endpoints")
    return problems


def store_problems(cluster: Cluster, store_id: str) -> list[str]:
    """Everything wrong with a store: not serving, or any part of it not as provisioned."""
    n = names(store_id)
    emulator = cluster.emulator
    problems = serving_problems(emulator, store_id, domain=cluster.domain)
    if emulator.get("v1", "Namespace", n.namespace) is None:
        return problems
    app = emulator.get("apps/v1", "Deployment", n.app, n.namespace)
    if not available(app):
        problems.append(f"deployment {n.app} not fully available")
    if not available(emulator.get("apps/v1", "StatefulSet", n.db, n.namespace)):
        problems.append(f"statefulset {n.db} not ready")
    if ready_addresses(emulator.get("v1", "Endpoints", n.db, n.namespace)) == 0:
        problems.append(f"service {n.db} has no ready endpoints")
    claim = emulator.get("v1", "PersistentVolumeClaim", n.pvc, n.namespace)
    if ((claim or {}).get("status") or {}).get("phase") != "Bound":
        problems.append(f"pvc {n.pvc} not bound")
    if emulator.get("v1", "Secret", n.credentials, n.namespace) is None:
        problems.append(f"secret {n.credentials} missing")
    if not condition_true(emulator.get("batch/v1", "Job", n.init_job, n.namespace), "Complete"):
        problems.append(f"job {n.init_job} not complete")
    release = latest_release(emulator, n.release, n.namespace)
    if release.get("status") != "deployed":
        problems.append(f"helm release {n.release} is {release.get('status', 'missing')}")
    store = cluster.twin.stores.get(store_id)
    if store is None:
        problems.append(f"store {store_id} unknown to the provisioner")
    elif store.status != "running":
        problems.append(f"provisioner says {store.status}")
    return problems
