"""PATCH dialects and the /scale subresource over HTTP, through kubernetes_asyncio."""

from __future__ import annotations

from typing import Any

import pytest
from kubernetes_asyncio import client

from remediator.simulation import kubeapi

from . import manifests
from .kubeclient import MERGE_PATCH, content_type, failure, raw

CONTAINERS: list[dict[str, Any]] = [
    {
        "name": "php",
        "image": "store/php:1",
        "env": [{"name": "MEMORY_LIMIT", "value": "256M"}, {"name": "DEBUG", "value": "0"}],
    },
    {"name": "nginx", "image": "nginx:1.27"},
]


@pytest.fixture
def store(emulator: kubeapi.KubeEmulator) -> kubeapi.KubeEmulator:
    emulator.seed([manifests.deployment("store", "default", replicas=2, containers=CONTAINERS)])
    return emulator


@pytest.mark.usefixtures("store")
async def test_strategic_merge_patch_merges_containers_by_name(apps: client.AppsV1Api) -> None:
    # kubernetes_asyncio picks strategic-merge-patch+json for dict bodies.
    patch = {
        "spec": {
            "template": {
                "metadata": {"annotations": {"kubectl.kubernetes.io/restartedAt": "now"}},
                "spec": {
                    "containers": [
                        {"name": "php", "env": [{"name": "MEMORY_LIMIT", "value": "512M"}]}
                    ]
                },
            }
        }
    }
    patched = await apps.patch_namespaced_deployment("store", "default", patch)
    containers = patched.spec.template.spec.containers
    assert [c.name for c in containers] == ["php", "nginx"]
    assert containers[0].image == "store/php:1"
    assert [(e.name, e.value) for e in containers[0].env] == [
        ("MEMORY_LIMIT", "512M"),
        ("DEBUG", "0"),
    ]
    assert patched.spec.template.metadata.annotations == {
        "kubectl.kubernetes.io/restartedAt": "now"
    }
    assert patched.metadata.generation == 2


@pytest.mark.usefixtures("store")
async def test_strategic_delete_directive(apps: client.AppsV1Api) -> None:
    patch = {
        "spec": {"template": {"spec": {"containers": [{"name": "nginx", "$patch": "delete"}]}}}
    }
    patched = await apps.patch_namespaced_deployment("store", "default", patch)
    assert [c.name for c in patched.spec.template.spec.containers] == ["php"]


@pytest.mark.usefixtures("store")
async def test_merge_patch_replaces_lists(apps: client.AppsV1Api) -> None:
    patch = {"spec": {"template": {"spec": {"containers": [{"name": "php", "image": "php:2"}]}}}}
    patched = await apps.patch_namespaced_deployment(
        "store", "default", patch, **content_type(MERGE_PATCH)
    )
    containers = patched.spec.template.spec.containers
    assert [(c.name, c.image) for c in containers] == [("php", "php:2")]
    assert not containers[0].env, "a merge patch replaces the whole list"


@pytest.mark.usefixtures("store")
async def test_json_patch(apps: client.AppsV1Api) -> None:
    # A list body makes kubernetes_asyncio send json-patch+json.
    ops = [
        {"op": "test", "path": "/spec/replicas", "value": 2},
        {"op": "replace", "path": "/spec/replicas", "value": 4},
        {"op": "add", "path": "/metadata/labels/scaled", "value": "yes"},
    ]
    patched = await apps.patch_namespaced_deployment("store", "default", ops)
    assert patched.spec.replicas == 4
    assert patched.metadata.labels == {"scaled": "yes"}


@pytest.mark.usefixtures("store")
async def test_json_patch_failed_test_is_unprocessable(
    apps: client.AppsV1Api, emulator: kubeapi.KubeEmulator
) -> None:
    ops = [
        {"op": "replace", "path": "/spec/replicas", "value": 9},
        {"op": "test", "path": "/spec/replicas", "value": 2},
    ]
    status = await failure(apps.patch_namespaced_deployment("store", "default", ops), 422)
    assert "test failed" in status["message"]
    stored = emulator.get("apps/v1", "Deployment", "store")
    assert stored is not None
    assert stored["spec"]["replicas"] == 2
    await failure(apps.patch_namespaced_deployment("store", "default", [{"op": "jump"}]), 400)


@pytest.mark.usefixtures("store")
async def test_unsupported_patch_content_type(apps: client.AppsV1Api) -> None:
    status = await failure(
        apps.patch_namespaced_deployment(
            "store", "default", {"spec": {}}, **content_type("application/apply-patch+yaml")
        ),
        415,
    )
    assert status["reason"] == "UnsupportedMediaType"


@pytest.mark.usefixtures("store")
async def test_scale_subresource(apps: client.AppsV1Api, emulator: kubeapi.KubeEmulator) -> None:
    scale = await apps.read_namespaced_deployment_scale("store", "default")
    assert scale.kind == "Scale"
    assert scale.api_version == "autoscaling/v1"
    assert scale.spec.replicas == 2
    assert scale.status.selector == "app=store"

    scale.spec.replicas = 5
    replaced = await apps.replace_namespaced_deployment_scale("store", "default", scale)
    assert replaced.spec.replicas == 5
    stored = emulator.get("apps/v1", "Deployment", "store")
    assert stored is not None
    assert stored["spec"]["replicas"] == 5

    patched = await apps.patch_namespaced_deployment_scale(
        "store", "default", {"spec": {"replicas": 0}}
    )
    assert patched.spec.replicas == 0
    assert (await apps.read_namespaced_deployment("store", "default")).spec.replicas == 0

    # `scale` still carries the resourceVersion from before the two writes.
    scale.spec.replicas = 3
    await failure(apps.replace_namespaced_deployment_scale("store", "default", scale), 409)
    await failure(
        apps.patch_namespaced_deployment_scale("store", "default", {"spec": {"replicas": -1}}), 422
    )


async def test_statefulset_scale(apps: client.AppsV1Api) -> None:
    statefulset = manifests.deployment("db", "default", replicas=1)
    statefulset["kind"] = "StatefulSet"
    statefulset["spec"]["serviceName"] = "db"
    await apps.create_namespaced_stateful_set("default", raw(statefulset))
    patched = await apps.patch_namespaced_stateful_set_scale(
        "db", "default", {"spec": {"replicas": 3}}
    )
    assert patched.spec.replicas == 3
    assert (await apps.read_namespaced_stateful_set("db", "default")).spec.replicas == 3
