"""The console overlay (deploy/kustomize/console-ingress): valid Kubernetes, and it publishes
the console alone, to the Service the base defines, through the NetworkPolicy."""

from __future__ import annotations

import kubernetes_validate
import pytest

from tests.deploy import manifests
from tests.deploy.test_kustomize import KUBERNETES_VERSION

OVERLAY = manifests.KUSTOMIZE_BASE.parent / "console-ingress"


@pytest.fixture(scope="module")
def docs() -> list[manifests.Doc]:
    return manifests.kustomize_docs(OVERLAY)


def test_every_object_validates_strictly(docs: list[manifests.Doc]) -> None:
    for doc in docs:
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


def test_only_the_console_is_published_to_the_remediator_service(
    docs: list[manifests.Doc],
) -> None:
    ingress = manifests.find(docs, "Ingress", "remediator-console")
    service = manifests.find(docs, "Service", "remediator")
    ([rule],) = [ingress["spec"]["rules"]]
    paths = rule["http"]["paths"]

    assert [(p["path"], p["pathType"]) for p in paths] == [("/ui", "Prefix")]
    backend = paths[0]["backend"]["service"]
    assert backend["name"] == service["metadata"]["name"]
    assert backend["port"]["name"] in {p["name"] for p in service["spec"]["ports"]}
    assert ingress["spec"]["tls"][0]["hosts"] == [rule["host"]]


def test_the_network_policy_admits_the_ingress_controller_besides_monitoring(
    docs: list[manifests.Doc],
) -> None:
    policy = manifests.find(docs, "NetworkPolicy", "remediator")
    base = manifests.find(manifests.kustomize_docs(), "NetworkPolicy", "remediator")
    peers = policy["spec"]["ingress"][0]["from"]

    assert peers[:-1] == base["spec"]["ingress"][0]["from"]
    assert peers[-1]["podSelector"]["matchLabels"] == {"app.kubernetes.io/name": "ingress-nginx"}
