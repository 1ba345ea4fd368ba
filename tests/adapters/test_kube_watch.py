"""``KubeClient.list_versioned`` and ``KubeClient.watch`` against the Kubernetes API emulator.

The emulator serves real watch streams over HTTP: resume from a resourceVersion, bookmarks,
the server-side timeout, and "410 Gone" once a resourceVersion has left its (small) history.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

import pytest

from remediator.adapters import kubernetes
from remediator.adapters.kubernetes import WatchEvent, WatchEventType
from remediator.simulation import kubeapi
from tests.store_fixtures import closed_port

HISTORY = 4
PART_OF = {"app.kubernetes.io/part-of": "store-platform"}


@pytest.fixture
def emulator() -> kubeapi.KubeEmulator:
    return kubeapi.KubeEmulator(history_size=HISTORY)


@pytest.fixture
async def kube(emulator: kubeapi.KubeEmulator) -> AsyncIterator[kubernetes.KubeClient]:
    settings = kubeapi.ServerSettings(bookmark_interval=0.05)
    async with (
        kubeapi.serve(emulator, settings=settings) as url,
        kubernetes.KubeClient.from_url(url, timeout=5) as client,
    ):
        yield client


def namespace(name: str, **labels: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels}}


def configmap(name: str, ns: str = "default", **data: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": name, "namespace": ns, "labels": {"app": "x"}},
        "data": data,
    }


async def take(events: AsyncGenerator[WatchEvent, None], count: int) -> list[WatchEvent]:
    """The first ``count`` events, then the stream is closed."""
    found: list[WatchEvent] = []
    async with contextlib.aclosing(events):
        async for event in events:
            found.append(event)
            if len(found) == count:
                break
    return found


def summary(events: list[WatchEvent]) -> list[tuple[str, str]]:
    return [(e.type.value, e.object["metadata"]["name"]) for e in events]


async def test_list_then_watch_from_its_resource_version(
    kube: kubernetes.KubeClient, emulator: kubeapi.KubeEmulator
) -> None:
    emulator.seed([namespace("store-a", **PART_OF), namespace("other")])
    listed = await kube.list_versioned(
        kubernetes.NAMESPACES, label_selector="app.kubernetes.io/part-of=store-platform"
    )
    emulator.create(namespace("store-b", **PART_OF))
    emulator.patch("v1", "Namespace", "store-a", {"metadata": {"labels": {"x": "1"}}})
    emulator.delete("v1", "Namespace", "store-b")  # terminating (MODIFIED), then gone

    events = await take(
        kube.watch(
            kubernetes.NAMESPACES,
            label_selector="app.kubernetes.io/part-of=store-platform",
            resource_version=listed.resource_version,
            timeout_seconds=30,
        ),
        4,
    )

    assert [o["metadata"]["name"] for o in listed.items] == ["store-a"]
    assert listed.resource_version == str(emulator.resource_version - 4)
    assert summary(events) == [
        ("ADDED", "store-b"),
        ("MODIFIED", "store-a"),
        ("MODIFIED", "store-b"),
        ("DELETED", "store-b"),
    ]
    versions = [int(e.resource_version or 0) for e in events]
    assert versions == sorted(versions)


async def test_watch_without_resource_version_starts_with_what_exists(
    kube: kubernetes.KubeClient, emulator: kubeapi.KubeEmulator
) -> None:
    emulator.seed([namespace("store-a"), configmap("one"), configmap("two")])

    events = await take(
        kube.watch(kubernetes.CONFIGMAPS, namespace="default", timeout_seconds=30), 2
    )

    assert summary(events) == [("ADDED", "one"), ("ADDED", "two")]


async def test_cluster_wide_watch_of_a_namespaced_resource(
    kube: kubernetes.KubeClient, emulator: kubeapi.KubeEmulator
) -> None:
    emulator.seed([namespace("store-a"), namespace("store-b")])
    listed = await kube.list_versioned(kubernetes.CONFIGMAPS, all_namespaces=True)
    emulator.seed([configmap("a", "store-a"), configmap("b", "store-b")])

    events = await take(
        kube.watch(
            kubernetes.CONFIGMAPS,
            all_namespaces=True,
            resource_version=listed.resource_version,
            timeout_seconds=30,
        ),
        2,
    )

    assert [(e.object["metadata"]["namespace"], e.type.value) for e in events] == [
        ("store-a", "ADDED"),
        ("store-b", "ADDED"),
    ]
    with pytest.raises(ValueError, match="namespace is required"):
        await take(kube.watch(kubernetes.CONFIGMAPS), 1)


async def test_idle_watch_gets_bookmarks_with_the_current_resource_version(
    kube: kubernetes.KubeClient, emulator: kubeapi.KubeEmulator
) -> None:
    listed = await kube.list_versioned(kubernetes.CONFIGMAPS, namespace="default")

    (event,) = await take(
        kube.watch(
            kubernetes.CONFIGMAPS,
            namespace="default",
            resource_version=listed.resource_version,
            timeout_seconds=30,
        ),
        1,
    )

    assert event.type is WatchEventType.BOOKMARK
    assert event.resource_version == str(emulator.resource_version)


async def test_no_bookmarks_unless_asked(
    kube: kubernetes.KubeClient, emulator: kubeapi.KubeEmulator
) -> None:
    listed = await kube.list_versioned(kubernetes.CONFIGMAPS, namespace="default")

    # The stream ends at the server's timeout (1 s) without a single event.
    events = await take(
        kube.watch(
            kubernetes.CONFIGMAPS,
            namespace="default",
            resource_version=listed.resource_version,
            timeout_seconds=1,
            bookmarks=False,
        ),
        1,
    )

    assert events == []


async def test_expired_resource_version_is_gone(
    kube: kubernetes.KubeClient, emulator: kubeapi.KubeEmulator
) -> None:
    listed = await kube.list_versioned(kubernetes.CONFIGMAPS, namespace="default")
    for i in range(HISTORY + 2):
        emulator.create(configmap(f"c{i}"))

    with pytest.raises(kubernetes.KubeGoneError) as caught:
        await take(
            kube.watch(
                kubernetes.CONFIGMAPS,
                namespace="default",
                resource_version=listed.resource_version,
                timeout_seconds=30,
            ),
            1,
        )

    assert caught.value.status == 410
    assert "too old resource version" in str(caught.value)
    # What a watcher then does: list again, and watch from the new list.
    again = await kube.list_versioned(kubernetes.CONFIGMAPS, namespace="default")
    assert len(again.items) == HISTORY + 2
    assert int(again.resource_version) == emulator.resource_version


async def test_events_larger_than_aiohttps_line_limit(
    kube: kubernetes.KubeClient, emulator: kubeapi.KubeEmulator
) -> None:
    listed = await kube.list_versioned(kubernetes.CONFIGMAPS, namespace="default")
    big = "x" * 300_000
    emulator.create(configmap("big", blob=big))

    (event,) = await take(
        kube.watch(
            kubernetes.CONFIGMAPS,
            namespace="default",
            resource_version=listed.resource_version,
            timeout_seconds=30,
        ),
        1,
    )

    assert event.object["data"]["blob"] == big


async def test_paginated_list_follows_every_page(
    kube: kubernetes.KubeClient, emulator: kubeapi.KubeEmulator
) -> None:
    emulator.seed([configmap(f"c{i:04}") for i in range(kubernetes.PAGE_SIZE + 3)])

    capped = await kube.list_versioned(kubernetes.CONFIGMAPS, namespace="default", max_pages=1)
    complete = await kube.list_versioned(kubernetes.CONFIGMAPS, namespace="default", max_pages=None)

    assert len(capped.items) == kubernetes.PAGE_SIZE
    assert len(complete.items) == kubernetes.PAGE_SIZE + 3
    assert complete.resource_version == str(emulator.resource_version)


async def test_unknown_resource_is_not_found(kube: kubernetes.KubeClient) -> None:
    widgets = kubernetes.Resource("example.com", "v1", "widgets", "Widget", namespaced=False)

    with pytest.raises(kubernetes.KubeNotFoundError):
        await take(kube.watch(widgets, timeout_seconds=5), 1)


async def test_bad_credentials_are_forbidden() -> None:
    emulator = kubeapi.KubeEmulator(token="right")
    async with (
        kubeapi.serve(emulator) as url,
        kubernetes.KubeClient.from_url(url, token="wrong", timeout=5) as client,
    ):
        with pytest.raises(kubernetes.KubeForbiddenError):
            await take(client.watch(kubernetes.NAMESPACES, timeout_seconds=5), 1)


async def test_no_server_is_unavailable() -> None:
    url = f"http://127.0.0.1:{closed_port()}"
    async with kubernetes.KubeClient.from_url(url, timeout=5) as client:
        with pytest.raises(kubernetes.KubeUnavailableError):
            await take(client.watch(kubernetes.NAMESPACES, timeout_seconds=5), 1)
