"""Deletion: finalizers, namespace termination, owner-reference propagation, preconditions."""

from __future__ import annotations

from typing import Any

import pytest
from kubernetes_asyncio import client

from remediator.simulation import kubeapi

from . import manifests
from .kubeclient import failure, raw

HOLD = "example.com/hold"


def configmap(
    name: str, ns: str = "default", *, finalizers: tuple[str, ...] = ()
) -> dict[str, Any]:
    metadata: dict[str, Any] = {"name": name, "namespace": ns}
    if finalizers:
        metadata["finalizers"] = list(finalizers)
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": metadata, "data": {"k": "v"}}


def owned(obj: dict[str, Any], owner: dict[str, Any]) -> dict[str, Any]:
    obj["metadata"].setdefault("ownerReferences", []).append(manifests.owner_reference(owner))
    return obj


def replicaset(name: str, ns: str, owner: dict[str, Any]) -> dict[str, Any]:
    rs = manifests.deployment(name, ns)
    rs["kind"] = "ReplicaSet"
    return owned(rs, owner)


def exists(emulator: kubeapi.KubeEmulator, api_version: str, kind: str, name: str, ns: str) -> bool:
    return emulator.get(api_version, kind, name, ns) is not None


async def test_finalizers_hold_an_object_until_emptied(
    core: client.CoreV1Api, emulator: kubeapi.KubeEmulator
) -> None:
    await core.create_namespaced_config_map("default", raw(configmap("held", finalizers=(HOLD,))))
    async with emulator.subscribe(kind="ConfigMap", api_version="v1") as events:
        await core.delete_namespaced_config_map("held", "default")
        # Still there, marked for deletion.
        read = await core.read_namespaced_config_map("held", "default")
        assert read.metadata.deletion_timestamp is not None
        assert read.metadata.deletion_grace_period_seconds == 0
        assert read.metadata.finalizers == [HOLD]

        # A second DELETE changes nothing; adding finalizers now is forbidden.
        await core.delete_namespaced_config_map("held", "default")
        status = await failure(
            core.patch_namespaced_config_map(
                "held", "default", {"metadata": {"finalizers": [HOLD, "example.com/more"]}}
            ),
            422,
        )
        assert "no new finalizers" in status["message"]

        # Emptying the finalizers completes the deletion.
        await core.patch_namespaced_config_map(
            "held", "default", {"metadata": {"finalizers": None}}
        )
        await failure(core.read_namespaced_config_map("held", "default"), 404)
        received = events.drain()
    # Marked, then gone: emptying the finalizers is the deletion itself, not a MODIFIED.
    assert [e.type for e in received] == ["MODIFIED", "DELETED"]
    assert received[1].object["metadata"].get("finalizers") is None


async def test_delete_responses(core: client.CoreV1Api, apps: client.AppsV1Api) -> None:
    await core.create_namespaced_pod("default", raw(manifests.pod("web", "default")))
    deleted_pod = await core.delete_namespaced_pod("web", "default")
    assert deleted_pod.metadata.name == "web"  # pods answer with the object...
    await apps.create_namespaced_deployment("default", raw(manifests.deployment("web", "default")))
    status = await apps.delete_namespaced_deployment("web", "default")
    assert status.status == "Success"  # ...most kinds with a Success Status
    assert status.details.name == "web"
    await failure(apps.read_namespaced_deployment("web", "default"), 404)


async def test_delete_preconditions(core: client.CoreV1Api) -> None:
    created = await core.create_namespaced_config_map("default", raw(configmap("a")))
    wrong_uid = client.V1DeleteOptions(preconditions=client.V1Preconditions(uid="not-it"))
    status = await failure(core.delete_namespaced_config_map("a", "default", body=wrong_uid), 409)
    assert "Precondition failed" in status["message"]
    stale = client.V1DeleteOptions(preconditions=client.V1Preconditions(resource_version="1"))
    await failure(core.delete_namespaced_config_map("a", "default", body=stale), 409)
    right = client.V1DeleteOptions(
        preconditions=client.V1Preconditions(
            uid=created.metadata.uid, resource_version=created.metadata.resource_version
        )
    )
    await core.delete_namespaced_config_map("a", "default", body=right)
    await failure(core.read_namespaced_config_map("a", "default"), 404)


async def test_namespace_termination(
    core: client.CoreV1Api, emulator: kubeapi.KubeEmulator
) -> None:
    emulator.seed([
        manifests.namespace("shop"),
        manifests.pod("web-1", "shop"),
        manifests.deployment("web", "shop"),
        configmap("held", "shop", finalizers=(HOLD,)),
        manifests.pod("elsewhere", "default"),
    ])  # fmt: skip
    await core.delete_namespace("shop")
    namespace = await core.read_namespace("shop")
    assert namespace.status.phase == "Terminating"
    assert namespace.metadata.deletion_timestamp is not None
    conditions = {c.type: c for c in namespace.status.conditions}
    assert conditions["NamespaceContentRemaining"].message == (
        "Some resources are remaining: configmaps has 1 resource instances"
    )
    assert conditions["NamespaceFinalizersRemaining"].status == "True"
    assert HOLD in conditions["NamespaceFinalizersRemaining"].message
    assert not exists(emulator, "v1", "Pod", "web-1", "shop")
    assert not exists(emulator, "apps/v1", "Deployment", "web", "shop")
    assert exists(emulator, "v1", "Pod", "elsewhere", "default")

    status = await failure(
        core.create_namespaced_pod("shop", raw(manifests.pod("new", "shop"))), 403
    )
    assert status["reason"] == "Forbidden"
    assert "because it is being terminated" in status["message"]

    await core.patch_namespaced_config_map("held", "shop", {"metadata": {"finalizers": None}})
    await failure(core.read_namespace("shop"), 404)


async def test_empty_namespace_goes_at_once(
    core: client.CoreV1Api, emulator: kubeapi.KubeEmulator
) -> None:
    emulator.seed([manifests.namespace("empty")])
    async with emulator.subscribe(kind="Namespace", api_version="v1") as events:
        await core.delete_namespace("empty")
        received = events.drain()
    # Terminating; then the namespace controller finds it empty, drops the "kubernetes"
    # finalizer and with that the namespace.
    assert [e.type for e in received] == ["MODIFIED", "DELETED"]
    assert received[0].object["status"]["phase"] == "Terminating"
    assert received[1].object["spec"]["finalizers"] == []
    await failure(core.read_namespace("empty"), 404)


async def test_namespace_finalizers(core: client.CoreV1Api, emulator: kubeapi.KubeEmulator) -> None:
    stuck = manifests.namespace("stuck")
    stuck["spec"] = {"finalizers": ["example.com/custom"]}
    emulator.seed([stuck])
    created = await core.read_namespace("stuck")
    assert created.spec.finalizers == ["example.com/custom"]

    # The main resource cannot change spec.finalizers; only /finalize can.
    created.spec.finalizers = []
    replaced = await core.replace_namespace("stuck", created)
    assert replaced.spec.finalizers == ["example.com/custom"]

    await core.delete_namespace("stuck")
    assert (await core.read_namespace("stuck")).status.phase == "Terminating"

    current = await core.read_namespace("stuck")
    current.spec.finalizers = []
    await core.replace_namespace_finalize("stuck", current)
    await failure(core.read_namespace("stuck"), 404)


def test_namespace_metadata_finalizers_hold_it_after_the_contents_are_gone() -> None:
    emulator = kubeapi.KubeEmulator()
    held = manifests.namespace("held")
    held["metadata"]["finalizers"] = [HOLD]
    emulator.seed([held, manifests.pod("web", "held")])
    terminating = emulator.delete("v1", "Namespace", "held")
    assert terminating is not None
    assert emulator.list("v1", "Pod", "held") == []
    namespace = emulator.get("v1", "Namespace", "held")
    assert namespace is not None
    assert namespace["spec"]["finalizers"] == [], "the namespace controller did its part"
    emulator.patch("v1", "Namespace", "held", {"metadata": {"finalizers": None}})
    assert emulator.get("v1", "Namespace", "held") is None


async def test_default_namespace_finalizer_is_kubernetes(core: client.CoreV1Api) -> None:
    created = await core.create_namespace(raw(manifests.namespace("shop")))
    assert created.spec.finalizers == ["kubernetes"]
    assert created.status.phase == "Active"


async def test_jobs_orphan_their_pods_by_default(
    batch: client.BatchV1Api, emulator: kubeapi.KubeEmulator
) -> None:
    [kept_job, removed_job] = emulator.seed([
        manifests.job("kept", "default"), manifests.job("removed", "default")
    ])  # fmt: skip
    emulator.seed([
        manifests.pod("kept-abc", "default", owner=kept_job),
        manifests.pod("removed-abc", "default", owner=removed_job),
    ])  # fmt: skip

    await batch.delete_namespaced_job("kept", "default")
    orphan = emulator.get("v1", "Pod", "kept-abc", "default")
    assert orphan is not None
    assert "ownerReferences" not in orphan["metadata"]

    await batch.delete_namespaced_job("removed", "default", propagation_policy="Background")
    assert not exists(emulator, "v1", "Pod", "removed-abc", "default")


async def test_background_and_orphan_propagation(
    apps: client.AppsV1Api, emulator: kubeapi.KubeEmulator
) -> None:
    [web, api] = emulator.seed([
        manifests.deployment("web", "default"), manifests.deployment("api", "default")
    ])  # fmt: skip
    [web_rs, api_rs] = emulator.seed([
        replicaset("web-1", "default", web), replicaset("api-1", "default", api)
    ])  # fmt: skip
    emulator.seed([
        manifests.pod("web-1-a", "default", owner=web_rs),
        manifests.pod("api-1-a", "default", owner=api_rs),
    ])  # fmt: skip

    await apps.delete_namespaced_deployment("web", "default")  # Background by default
    assert not exists(emulator, "apps/v1", "ReplicaSet", "web-1", "default")
    assert not exists(emulator, "v1", "Pod", "web-1-a", "default")

    await apps.delete_namespaced_deployment(
        "api", "default", body=client.V1DeleteOptions(propagation_policy="Orphan")
    )
    orphan = emulator.get("apps/v1", "ReplicaSet", "api-1", "default")
    assert orphan is not None
    assert "ownerReferences" not in orphan["metadata"]
    assert exists(emulator, "v1", "Pod", "api-1-a", "default")


async def test_foreground_propagation_waits_for_the_chain(
    apps: client.AppsV1Api, core: client.CoreV1Api, emulator: kubeapi.KubeEmulator
) -> None:
    [web] = emulator.seed([manifests.deployment("web", "default")])
    [rs] = emulator.seed([replicaset("web-1", "default", web)])
    emulator.seed([
        manifests.pod("web-1-a", "default", owner=rs, finalizers=(HOLD,)),
        manifests.pod("web-1-b", "default", owner=rs),
    ])  # fmt: skip

    await apps.delete_namespaced_deployment("web", "default", propagation_policy="Foreground")
    waiting = await apps.read_namespaced_deployment("web", "default")
    assert waiting.metadata.finalizers == ["foregroundDeletion"]
    assert waiting.metadata.deletion_timestamp is not None
    assert exists(emulator, "apps/v1", "ReplicaSet", "web-1", "default")
    assert not exists(emulator, "v1", "Pod", "web-1-b", "default")

    await core.patch_namespaced_pod("web-1-a", "default", {"metadata": {"finalizers": None}})
    assert not exists(emulator, "apps/v1", "ReplicaSet", "web-1", "default")
    await failure(apps.read_namespaced_deployment("web", "default"), 404)


async def test_background_waits_for_a_finalizing_owner(emulator: kubeapi.KubeEmulator) -> None:
    owner = configmap("owner", finalizers=(HOLD,))
    [owner] = emulator.seed([owner])
    emulator.seed([owned(configmap("dependent"), owner)])
    assert emulator.delete("v1", "ConfigMap", "owner", "default") is not None
    assert exists(emulator, "v1", "ConfigMap", "dependent", "default")
    emulator.patch("v1", "ConfigMap", "owner", {"metadata": {"finalizers": None}})
    assert not exists(emulator, "v1", "ConfigMap", "owner", "default")
    assert not exists(emulator, "v1", "ConfigMap", "dependent", "default")


async def test_a_dependent_with_another_owner_survives(emulator: kubeapi.KubeEmulator) -> None:
    [first, second] = emulator.seed([configmap("first"), configmap("second")])
    emulator.seed([owned(owned(configmap("shared"), first), second)])
    emulator.delete("v1", "ConfigMap", "first", "default")
    shared = emulator.get("v1", "ConfigMap", "shared", "default")
    assert shared is not None
    assert [r["name"] for r in shared["metadata"]["ownerReferences"]] == ["second"]


async def test_delete_collection_by_label(
    core: client.CoreV1Api, emulator: kubeapi.KubeEmulator
) -> None:
    emulator.seed([
        manifests.pod("web-1", "default", labels={"app": "web"}),
        manifests.pod("web-2", "default", labels={"app": "web"}),
        manifests.pod("db-1", "default", labels={"app": "db"}),
    ])  # fmt: skip
    await core.delete_collection_namespaced_pod("default", label_selector="app=web")
    assert [p["metadata"]["name"] for p in emulator.list("v1", "Pod", "default")] == ["db-1"]


@pytest.mark.parametrize("policy", ["Orphan", "Background", "Foreground"])
async def test_dry_run_delete_keeps_everything(
    apps: client.AppsV1Api, emulator: kubeapi.KubeEmulator, policy: str
) -> None:
    [web] = emulator.seed([manifests.deployment("web", "default")])
    emulator.seed([replicaset("web-1", "default", web)])
    before = emulator.resource_version
    await apps.delete_namespaced_deployment(
        "web", "default", propagation_policy=policy, dry_run="All"
    )
    assert emulator.resource_version == before
    rs = emulator.get("apps/v1", "ReplicaSet", "web-1", "default")
    assert rs is not None
    assert rs["metadata"]["ownerReferences"][0]["uid"] == web["metadata"]["uid"]
