"""Watches: resume from a resourceVersion, selection changes, timeouts, bookmarks, 410 Gone."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp
import pytest
from kubernetes_asyncio import client, watch
from kubernetes_asyncio.client.exceptions import ApiException

from remediator.simulation import kubeapi

from . import manifests
from .kubeclient import raw


@pytest.fixture
def emulator() -> kubeapi.KubeEmulator:
    # A short history, so that expiry is reachable in a few writes.
    return kubeapi.KubeEmulator(history_size=8)


def configmap(name: str, **data: str) -> dict[str, Any]:
    meta = {"name": name, "namespace": "default"}
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta, "data": dict(data)}


async def collect(func: Any, *args: Any, count: int, **kwargs: Any) -> list[dict[str, Any]]:
    """The first ``count`` events of a kubernetes_asyncio watch."""
    events: list[dict[str, Any]] = []
    async with watch.Watch() as stream:
        async for event in stream.stream(func, *args, **kwargs):
            events.append(event)
            if len(events) == count:
                break
    return events


async def test_watch_replays_changes_after_a_resource_version(core: client.CoreV1Api) -> None:
    listed = await core.list_namespaced_config_map("default")
    await core.create_namespaced_config_map("default", raw(configmap("a", v="1")))
    await core.patch_namespaced_config_map("a", "default", {"data": {"v": "2"}})
    await core.delete_namespaced_config_map("a", "default")

    events = await collect(
        core.list_namespaced_config_map,
        "default",
        count=3,
        resource_version=listed.metadata.resource_version,
        timeout_seconds=10,
    )
    assert [(e["type"], e["object"].data) for e in events] == [
        ("ADDED", {"v": "1"}),
        ("MODIFIED", {"v": "2"}),
        ("DELETED", {"v": "2"}),
    ]
    versions = [int(e["object"].metadata.resource_version) for e in events]
    assert versions == sorted(versions)
    assert len(set(versions)) == 3


async def test_watch_starts_with_current_state_then_goes_live(
    core: client.CoreV1Api, emulator: kubeapi.KubeEmulator
) -> None:
    emulator.seed([configmap("a", v="1")])
    received: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

    async def consume() -> None:
        async with watch.Watch() as stream:
            async for event in stream.stream(
                core.list_namespaced_config_map, "default", timeout_seconds=10
            ):
                await received.put(event)
                if event["type"] == "MODIFIED":
                    break

    consumer = asyncio.create_task(consume())
    initial = await received.get()
    assert (initial["type"], initial["object"].metadata.name) == ("ADDED", "a")
    # The watch is subscribed now; a simulated controller's write must reach it.
    emulator.patch("v1", "ConfigMap", "a", {"data": {"v": "2"}}, namespace="default")
    live = await received.get()
    assert (live["type"], live["object"].data) == ("MODIFIED", {"v": "2"})
    await consumer


async def test_watch_selection_changes_look_like_added_and_deleted(
    core: client.CoreV1Api, emulator: kubeapi.KubeEmulator
) -> None:
    start = str(emulator.resource_version)
    emulator.seed([manifests.pod("web-1", "default", labels={"app": "web"})])
    emulator.patch("v1", "Pod", "web-1", {"metadata": {"labels": {"app": "db"}}})
    emulator.patch("v1", "Pod", "web-1", {"metadata": {"labels": {"app": "web", "x": "1"}}})
    emulator.patch("v1", "Pod", "web-1", {"metadata": {"labels": {"x": "2"}}})

    events = await collect(
        core.list_namespaced_pod,
        "default",
        count=4,
        label_selector="app=web",
        resource_version=start,
        timeout_seconds=10,
    )
    assert [(e["type"], e["object"].metadata.labels) for e in events] == [
        ("ADDED", {"app": "web"}),
        ("DELETED", {"app": "web"}),  # leaving the selection: the last matching state
        ("ADDED", {"app": "web", "x": "1"}),
        ("MODIFIED", {"app": "web", "x": "2"}),
    ]


async def test_all_namespaces_and_field_selected_watches(
    core: client.CoreV1Api, emulator: kubeapi.KubeEmulator
) -> None:
    start = str(emulator.resource_version)
    emulator.seed([
        manifests.namespace("shop"),
        manifests.pod("a", "default", phase="Running"),
        manifests.pod("b", "shop", phase="Failed"),
        manifests.pod("c", "shop", phase="Running"),
    ])  # fmt: skip
    everywhere = await collect(
        core.list_pod_for_all_namespaces, count=3, resource_version=start, timeout_seconds=10
    )
    assert [e["object"].metadata.name for e in everywhere] == ["a", "b", "c"]
    running_in_shop = await collect(
        core.list_namespaced_pod,
        "shop",
        count=1,
        field_selector="status.phase=Running",
        resource_version=start,
        timeout_seconds=10,
    )
    assert [e["object"].metadata.name for e in running_in_shop] == ["c"]


async def test_timeout_ends_the_stream_with_a_bookmark(
    core: client.CoreV1Api, emulator: kubeapi.KubeEmulator
) -> None:
    start = str(emulator.resource_version)
    emulator.seed([configmap("a")])
    emulator.seed([manifests.pod("unrelated", "default")])
    events = []
    async with watch.Watch() as stream:
        # With timeout_seconds, kubernetes_asyncio stops (rather than reconnects) at the end.
        async for event in stream.stream(
            core.list_namespaced_config_map,
            "default",
            resource_version=start,
            timeout_seconds=1,
            allow_watch_bookmarks=True,
        ):
            events.append(event)
    assert [e["type"] for e in events] == ["ADDED", "BOOKMARK"]
    # The bookmark moves the client past writes it did not see (the pod).
    bookmark = events[-1]["raw_object"]
    assert bookmark["metadata"]["resourceVersion"] == str(emulator.resource_version)
    assert bookmark["kind"] == "ConfigMap"


async def test_expired_resource_version_is_410_gone(
    core: client.CoreV1Api, emulator: kubeapi.KubeEmulator, kube_url: str
) -> None:
    start = str(emulator.resource_version)
    emulator.seed([configmap(f"cm-{i}") for i in range(10)])  # more than the history holds

    with pytest.raises(ApiException) as caught:
        await collect(
            core.list_namespaced_config_map,
            "default",
            count=1,
            resource_version=start,
            timeout_seconds=10,
        )
    assert caught.value.status == 410

    # On the wire: a 200 stream carrying one ERROR event with a 410 Status, as upstream.
    async with (
        aiohttp.ClientSession() as session,
        session.get(
            f"{kube_url}/api/v1/namespaces/default/configmaps",
            params={"watch": "1", "resourceVersion": start},
        ) as response,
    ):
        assert response.status == 200
        lines = (await response.read()).decode().splitlines()
    assert len(lines) == 1
    error = json.loads(lines[0])
    assert error["type"] == "ERROR"
    assert error["object"]["kind"] == "Status"
    assert (error["object"]["code"], error["object"]["reason"]) == (410, "Expired")

    # A resourceVersion still in the history works.
    recent = str(emulator.resource_version - 2)
    events = await collect(
        core.list_namespaced_config_map,
        "default",
        count=2,
        resource_version=recent,
        timeout_seconds=10,
    )
    assert [e["object"].metadata.name for e in events] == ["cm-8", "cm-9"]


async def test_idle_watches_get_periodic_bookmarks(emulator: kubeapi.KubeEmulator) -> None:
    settings = kubeapi.ServerSettings(bookmark_interval=0.05)
    start = str(emulator.resource_version)
    async with (
        kubeapi.serve(emulator, settings=settings) as url,
        aiohttp.ClientSession() as session,
        session.get(
            f"{url}/api/v1/pods",
            params={"watch": "true", "allowWatchBookmarks": "true", "resourceVersion": start},
        ) as response,
    ):
        first = json.loads(await response.content.readline())
        assert first["type"] == "BOOKMARK"
        assert first["object"]["metadata"]["resourceVersion"] == start


async def test_shutdown_ends_open_watches_promptly(emulator: kubeapi.KubeEmulator) -> None:
    async with asyncio.timeout(3), aiohttp.ClientSession() as session:  # shutdown_timeout is 5s
        async with kubeapi.serve(emulator) as url:
            response = await session.get(f"{url}/api/v1/namespaces", params={"watch": "1"})
            added = json.loads(await response.content.readline())
            assert (added["type"], added["object"]["metadata"]["name"]) == ("ADDED", "default")
        assert await response.content.read() == b""
        response.release()


async def test_subscribers_see_every_change_as_private_copies(
    core: client.CoreV1Api, emulator: kubeapi.KubeEmulator
) -> None:
    async with emulator.subscribe(api_version="v1", kind="ConfigMap") as events:
        await core.create_namespaced_config_map("default", raw(configmap("a", v="1")))
        emulator.seed([manifests.pod("ignored", "default")])
        await core.patch_namespaced_config_map("a", "default", {"data": {"v": "2"}})
        await core.delete_namespaced_config_map("a", "default")
        received = events.drain()
    assert [(e.type, e.object["data"]["v"]) for e in received] == [
        ("ADDED", "1"),
        ("MODIFIED", "2"),
        ("DELETED", "2"),
    ]
    assert received[1].old_object is not None
    assert received[1].old_object["data"] == {"v": "1"}
    assert [e.resource_version for e in received] == sorted(e.resource_version for e in received)


async def test_subscriber_copies_are_detached_from_the_store(
    emulator: kubeapi.KubeEmulator,
) -> None:
    async with emulator.subscribe() as events:
        emulator.seed([configmap("a", v="1")])
        [event] = events.drain()
    event.object["data"]["v"] = "mutated"
    stored = emulator.get("v1", "ConfigMap", "a")
    assert stored is not None
    assert stored["data"] == {"v": "1"}
