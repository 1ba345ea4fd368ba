"""The sync helpers (for seeding and simulated controllers), discovery, and the resource table."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import aiohttp
import pytest
from kubernetes_asyncio import client

from remediator.simulation import kubeapi

from . import manifests
from .kubeclient import failure

FIXED = datetime(2025, 3, 1, 12, 0, 0, tzinfo=UTC)


def test_seed_fills_metadata() -> None:
    emulator = kubeapi.KubeEmulator(clock=lambda: FIXED)
    [ns, pod] = emulator.seed([
        manifests.pod("web", "shop"),  # seeded after its namespace, whatever the order
        manifests.namespace("shop"),
    ])  # fmt: skip
    assert ns["kind"] == "Namespace"
    metadata = pod["metadata"]
    assert metadata["namespace"] == "shop"
    assert metadata["creationTimestamp"] == "2025-03-01T12:00:00Z"
    assert metadata["generation"] == 1
    assert len(metadata["uid"]) == 36
    assert int(metadata["resourceVersion"]) == emulator.resource_version
    assert pod["status"]["phase"] == "Pending"

    [defaulted] = emulator.seed(
        [{"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}}]
    )
    assert defaulted["metadata"]["namespace"] == "default"


def test_get_and_list_return_copies() -> None:
    emulator = kubeapi.KubeEmulator()
    emulator.seed([
        manifests.pod("a", "default", labels={"app": "web"}, phase="Running"),
        manifests.pod("b", "default", labels={"app": "db"}, phase="Running"),
    ])  # fmt: skip
    got = emulator.get("v1", "Pod", "a")
    assert got is not None
    got["metadata"]["labels"]["app"] = "changed"
    again = emulator.get("v1", "Pod", "a", "default")
    assert again is not None
    assert again["metadata"]["labels"] == {"app": "web"}
    assert emulator.get("v1", "Pod", "missing") is None

    assert [p["metadata"]["name"] for p in emulator.list("v1", "Pod", label_selector="app=db")] == [
        "b"
    ]
    assert [
        p["metadata"]["name"]
        for p in emulator.list("v1", "Pod", "default", field_selector="metadata.name!=b")
    ] == ["a"]


def test_sync_writes_follow_the_api_rules() -> None:
    emulator = kubeapi.KubeEmulator()
    [pod] = emulator.seed([manifests.pod("web", "default", phase="Pending")])

    # Controllers may write status directly.
    running = emulator.apply_change(
        "v1", "Pod", "web", lambda p: p["status"].update(phase="Running"), namespace="default"
    )
    assert running["status"]["phase"] == "Running"
    assert int(running["metadata"]["resourceVersion"]) > int(pod["metadata"]["resourceVersion"])

    with pytest.raises(kubeapi.StatusError) as caught:
        emulator.update(pod)  # stale resourceVersion
    assert (caught.value.code, caught.value.reason) == (409, "Conflict")

    with pytest.raises(kubeapi.StatusError) as caught:
        emulator.create(manifests.pod("web", "default"))
    assert caught.value.reason == "AlreadyExists"

    with pytest.raises(kubeapi.StatusError) as caught:
        emulator.create(manifests.pod("web", "ghost"))
    assert caught.value.code == 404

    with pytest.raises(kubeapi.StatusError) as caught:
        emulator.get("example.com/v1", "Widget", "w")
    assert caught.value.code == 404

    patched = emulator.patch(
        "v1", "Pod", "web", [{"op": "add", "path": "/metadata/labels/x", "value": "y"}],
        namespace="default", patch_type=kubeapi.PatchType.JSON,
    )  # fmt: skip
    assert patched["metadata"]["labels"] == {"x": "y"}
    assert emulator.delete("v1", "Pod", "web", "default") is None
    assert emulator.get("v1", "Pod", "web") is None


def test_delete_returns_the_object_while_finalizers_hold_it() -> None:
    emulator = kubeapi.KubeEmulator()
    emulator.seed([manifests.pod("web", "default", finalizers=("example.com/x",))])
    terminating = emulator.delete("v1", "Pod", "web")
    assert terminating is not None
    assert terminating["metadata"]["deletionTimestamp"]
    # Pods default to their grace period (30s) like the real API.
    assert terminating["metadata"]["deletionGracePeriodSeconds"] == 30


WIDGET = kubeapi.ResourceType(
    group="example.com", version="v1", plural="widgets", kind="Widget", builtin=False,
    short_names=("wd",), subresources=frozenset({"status"}),
)  # fmt: skip


@pytest.fixture
def emulator() -> kubeapi.KubeEmulator:
    return kubeapi.KubeEmulator(resources=(*kubeapi.DEFAULT_RESOURCES, WIDGET))


async def test_an_added_resource_is_served_and_discoverable(
    custom: client.CustomObjectsApi, kube_url: str
) -> None:
    widget: dict[str, Any] = {
        "apiVersion": "example.com/v1",
        "kind": "Widget",
        "metadata": {"name": "w", "namespace": "default"},
        "spec": {"size": 1},
    }
    await custom.create_namespaced_custom_object("example.com", "v1", "default", "widgets", widget)
    read = await custom.get_namespaced_custom_object("example.com", "v1", "default", "widgets", "w")
    assert read["spec"] == {"size": 1}
    await failure(
        custom.get_namespaced_custom_object("example.com", "v1", "default", "widgets", "x"), 404
    )
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{kube_url}/apis") as response:
            groups = await response.json()
        assert "example.com" in [g["name"] for g in groups["groups"]]
        async with session.get(f"{kube_url}/apis/example.com/v1") as response:
            resources = await response.json()
    assert [(r["name"], r.get("shortNames")) for r in resources["resources"]] == [
        ("widgets", ["wd"]),
        ("widgets/status", None),
    ]


async def test_discovery_documents(kube_url: str) -> None:
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{kube_url}/version") as response:
            assert (await response.json())["major"] == "1"
        async with session.get(f"{kube_url}/api") as response:
            assert (await response.json())["versions"] == ["v1"]
        async with session.get(f"{kube_url}/apis/apps/v1") as response:
            apps = {r["name"]: r for r in (await response.json())["resources"]}
        async with session.get(f"{kube_url}/apis/apps") as response:
            assert (await response.json())["preferredVersion"]["groupVersion"] == "apps/v1"
        async with session.get(f"{kube_url}/openapi/v2") as response:
            assert response.status == 404
            assert (await response.json())["kind"] == "Status"
        async with session.post(f"{kube_url}/api/v1/namespaces/default/pods/x") as response:
            assert response.status == 405
    assert apps["deployments"]["shortNames"] == ["deploy"]
    assert apps["deployments"]["namespaced"] is True
    assert "watch" in apps["deployments"]["verbs"]
    assert apps["deployments/scale"]["kind"] == "Scale"
    assert apps["deployments/scale"]["group"] == "autoscaling"


async def test_tables_for_kubectl(kube_url: str, emulator: kubeapi.KubeEmulator) -> None:
    emulator.seed([manifests.namespace("shop"), manifests.pod("web", "shop", phase="Running")])
    accept = "application/json;as=Table;v=v1;g=meta.k8s.io,application/json"
    async with (
        aiohttp.ClientSession() as session,
        session.get(
            f"{kube_url}/api/v1/namespaces/shop/pods", headers={"Accept": accept}
        ) as response,
    ):
        table = await response.json()
    assert (table["kind"], table["apiVersion"]) == ("Table", "meta.k8s.io/v1")
    assert [c["name"] for c in table["columnDefinitions"]][:4] == [
        "Name", "Ready", "Status", "Restarts",
    ]  # fmt: skip
    [row] = table["rows"]
    assert row["cells"][:3] == ["web", "0/1", "Running"]
    assert row["object"]["kind"] == "PartialObjectMetadata"
    assert row["object"]["metadata"]["namespace"] == "shop"
