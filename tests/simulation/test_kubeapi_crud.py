"""CRUD, optimistic concurrency, selectors and subresources through kubernetes_asyncio."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes_asyncio import client, config

from remediator.simulation import kubeapi

from . import manifests
from .kubeclient import MERGE_PATCH, STRATEGIC_MERGE_PATCH, content_type, failure, raw


def configmap(name: str, ns: str = "default", **data: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": name, "namespace": ns},
        "data": dict(data),
    }


async def test_create_fills_metadata_and_reads_back(
    core: client.CoreV1Api, emulator: kubeapi.KubeEmulator
) -> None:
    created = await core.create_namespaced_config_map("default", raw(configmap("settings", a="1")))
    assert created.metadata.uid
    assert created.metadata.creation_timestamp is not None
    assert created.metadata.generation == 1
    assert created.metadata.resource_version == str(emulator.resource_version)

    read = await core.read_namespaced_config_map("settings", "default")
    assert read.data == {"a": "1"}
    assert read.metadata.uid == created.metadata.uid
    stored = emulator.get("v1", "ConfigMap", "settings", "default")
    assert stored is not None
    assert stored["data"] == {"a": "1"}


async def test_create_existing_name_is_already_exists(core: client.CoreV1Api) -> None:
    await core.create_namespaced_config_map("default", raw(configmap("settings")))
    status = await failure(
        core.create_namespaced_config_map("default", raw(configmap("settings"))), 409
    )
    assert status["reason"] == "AlreadyExists"
    assert status["details"] == {"name": "settings", "kind": "configmaps"}


async def test_missing_objects_are_not_found(
    core: client.CoreV1Api, apps: client.AppsV1Api
) -> None:
    status = await failure(core.read_namespaced_config_map("nope", "default"), 404)
    assert status["reason"] == "NotFound"
    assert status["message"] == 'configmaps "nope" not found'
    status = await failure(apps.read_namespaced_deployment("nope", "default"), 404)
    assert status["message"] == 'deployments.apps "nope" not found'
    assert status["details"]["group"] == "apps"
    await failure(core.patch_namespaced_config_map("nope", "default", {"data": {}}), 404)
    await failure(core.delete_namespaced_config_map("nope", "default"), 404)
    await failure(
        core.replace_namespaced_config_map("nope", "default", raw(configmap("nope"))), 404
    )


async def test_generate_name(core: client.CoreV1Api) -> None:
    body = configmap("")
    body["metadata"] = {"generateName": "settings-"}
    first = await core.create_namespaced_config_map("default", raw(body))
    second = await core.create_namespaced_config_map("default", raw(body))
    assert first.metadata.name.startswith("settings-")
    assert len(first.metadata.name) == len("settings-") + 5
    assert first.metadata.name != second.metadata.name


async def test_stale_resource_version_conflicts(core: client.CoreV1Api) -> None:
    created = await core.create_namespaced_config_map("default", raw(configmap("settings", a="1")))
    stale = created.metadata.resource_version
    created.data = {"a": "2"}
    updated = await core.replace_namespaced_config_map("settings", "default", created)
    assert int(updated.metadata.resource_version) > int(stale)

    created.data = {"a": "3"}  # still carries the stale resourceVersion
    status = await failure(core.replace_namespaced_config_map("settings", "default", created), 409)
    assert status["reason"] == "Conflict"
    assert "the object has been modified" in status["message"]

    patch = {"metadata": {"resourceVersion": stale}, "data": {"a": "4"}}
    await failure(core.patch_namespaced_config_map("settings", "default", patch), 409)
    read = await core.read_namespaced_config_map("settings", "default")
    assert read.data == {"a": "2"}


async def test_update_without_resource_version_is_unconditional(core: client.CoreV1Api) -> None:
    await core.create_namespaced_config_map("default", raw(configmap("settings", a="1")))
    replaced = await core.replace_namespaced_config_map(
        "settings", "default", raw(configmap("settings", a="2"))
    )
    assert replaced.data == {"a": "2"}


async def test_no_op_write_keeps_the_resource_version(
    core: client.CoreV1Api, emulator: kubeapi.KubeEmulator
) -> None:
    created = await core.create_namespaced_config_map("default", raw(configmap("settings", a="1")))
    before = emulator.resource_version
    same = await core.patch_namespaced_config_map("settings", "default", {"data": {"a": "1"}})
    assert same.metadata.resource_version == created.metadata.resource_version
    assert emulator.resource_version == before


async def test_generation_tracks_spec_not_metadata(apps: client.AppsV1Api) -> None:
    await apps.create_namespaced_deployment("default", raw(manifests.deployment("web", "default")))
    labelled = await apps.patch_namespaced_deployment(
        "web", "default", {"metadata": {"labels": {"tier": "front"}}}
    )
    assert labelled.metadata.generation == 1
    scaled = await apps.patch_namespaced_deployment("web", "default", {"spec": {"replicas": 3}})
    assert scaled.metadata.generation == 2


async def test_resource_version_is_global_and_lists_report_it(
    core: client.CoreV1Api, apps: client.AppsV1Api, emulator: kubeapi.KubeEmulator
) -> None:
    cm = await core.create_namespaced_config_map("default", raw(configmap("a")))
    deploy = await apps.create_namespaced_deployment(
        "default", raw(manifests.deployment("web", "default"))
    )
    assert int(deploy.metadata.resource_version) == int(cm.metadata.resource_version) + 1
    listed = await core.list_namespaced_config_map("default")
    assert listed.metadata.resource_version == str(emulator.resource_version)
    assert [i.metadata.name for i in listed.items] == ["a"]


@pytest.fixture
def shop(emulator: kubeapi.KubeEmulator) -> kubeapi.KubeEmulator:
    part_of = {manifests.PART_OF: "store-platform"}
    emulator.seed([
        manifests.namespace("shop-a", labels=part_of),
        manifests.namespace("shop-b", labels=part_of),
        manifests.namespace("tools"),
        manifests.pod("web-1", "shop-a", labels={"app": "web", "tier": "front"}, phase="Running"),
        manifests.pod("web-2", "shop-a", labels={"app": "web"}, phase="Pending"),
        manifests.pod("db-1", "shop-a", labels={"app": "db"}, phase="Running"),
        manifests.pod("web-1", "shop-b", labels={"app": "web"}, phase="Failed"),
        manifests.pod("tool", "tools", phase="Running"),
        manifests.event("e1", "shop-a", involved="web-1", kind="Pod", reason="BackOff",
                        type_="Warning"),
        manifests.event("e2", "shop-a", involved="web-2", kind="Pod", reason="Pulled",
                        type_="Normal"),
        manifests.event("e3", "shop-a", involved="web", kind="Deployment",
                        reason="ScalingReplicaSet", type_="Normal"),
    ])  # fmt: skip
    return emulator


def names(listing: Any) -> list[str]:
    return [f"{i.metadata.namespace or ''}/{i.metadata.name}".lstrip("/") for i in listing.items]


@pytest.mark.usefixtures("shop")
async def test_label_selectors(core: client.CoreV1Api) -> None:
    selected = await core.list_namespace(label_selector=f"{manifests.PART_OF}=store-platform")
    assert names(selected) == ["shop-a", "shop-b"]
    assert names(await core.list_namespaced_pod("shop-a", label_selector="app=web")) == [
        "shop-a/web-1",
        "shop-a/web-2",
    ]
    assert names(await core.list_pod_for_all_namespaces(label_selector="app=web")) == [
        "shop-a/web-1",
        "shop-a/web-2",
        "shop-b/web-1",
    ]
    assert names(
        await core.list_pod_for_all_namespaces(label_selector="app in (web,db),tier!=front")
    ) == ["shop-a/db-1", "shop-a/web-2", "shop-b/web-1"]
    assert names(await core.list_pod_for_all_namespaces(label_selector="!app")) == ["tools/tool"]
    assert names(await core.list_namespaced_pod("shop-a", label_selector="tier")) == [
        "shop-a/web-1"
    ]
    assert names(await core.list_namespaced_pod("shop-a", label_selector="app notin (web)")) == [
        "shop-a/db-1"
    ]


@pytest.mark.usefixtures("shop")
async def test_field_selectors(core: client.CoreV1Api) -> None:
    running = await core.list_pod_for_all_namespaces(field_selector="status.phase=Running")
    assert names(running) == ["shop-a/db-1", "shop-a/web-1", "tools/tool"]
    not_running = await core.list_pod_for_all_namespaces(field_selector="status.phase!=Running")
    assert names(not_running) == ["shop-a/web-2", "shop-b/web-1"]
    by_name = await core.list_pod_for_all_namespaces(
        field_selector="metadata.name=web-1,metadata.namespace=shop-b"
    )
    assert names(by_name) == ["shop-b/web-1"]
    pod_events = await core.list_namespaced_event(
        "shop-a", field_selector="involvedObject.kind=Pod,type=Warning"
    )
    assert [e.reason for e in pod_events.items] == ["BackOff"]
    web_events = await core.list_namespaced_event(
        "shop-a", field_selector="involvedObject.name==web-2,reason=Pulled"
    )
    assert [e.metadata.name for e in web_events.items] == ["e2"]


@pytest.mark.usefixtures("shop")
async def test_bad_selectors_are_bad_requests(core: client.CoreV1Api) -> None:
    status = await failure(core.list_namespaced_pod("shop-a", label_selector="app in web"), 400)
    assert status["reason"] == "BadRequest"
    await failure(core.list_namespaced_pod("shop-a", field_selector="status.phase"), 400)


@pytest.mark.usefixtures("shop")
async def test_pagination(core: client.CoreV1Api) -> None:
    first = await core.list_pod_for_all_namespaces(limit=2)
    assert names(first) == ["shop-a/db-1", "shop-a/web-1"]
    assert first.metadata.remaining_item_count == 3
    second = await core.list_pod_for_all_namespaces(limit=2, _continue=first.metadata._continue)
    assert names(second) == ["shop-a/web-2", "shop-b/web-1"]
    third = await core.list_pod_for_all_namespaces(limit=2, _continue=second.metadata._continue)
    assert names(third) == ["tools/tool"]
    assert third.metadata._continue is None


async def test_namespace_rules_on_create(core: client.CoreV1Api) -> None:
    status = await failure(
        core.create_namespaced_config_map("ghost", raw(configmap("x", "ghost"))), 404
    )
    assert status["message"] == 'namespaces "ghost" not found'
    status = await failure(
        core.create_namespaced_config_map("default", raw(configmap("x", "other"))), 400
    )
    assert "does not match the namespace" in status["message"]


async def test_invalid_objects_are_unprocessable(
    core: client.CoreV1Api, apps: client.AppsV1Api
) -> None:
    status = await failure(
        core.create_namespaced_config_map("default", raw(configmap("Not_Valid"))), 422
    )
    assert status["reason"] == "Invalid"
    assert status["details"]["causes"][0]["field"] == "metadata.name"
    bad = manifests.deployment("web", "default", replicas=-1)
    status = await failure(apps.create_namespaced_deployment("default", raw(bad)), 422)
    assert status["details"]["causes"][0]["field"] == "spec.replicas"


async def test_status_is_written_only_through_the_status_subresource(
    core: client.CoreV1Api, emulator: kubeapi.KubeEmulator
) -> None:
    await core.create_namespaced_pod(
        "default", raw(manifests.pod("web", "default", phase="Running"))
    )
    # The main resource ignores status changes, like the real server...
    ignored = await core.patch_namespaced_pod("web", "default", {"status": {"phase": "Failed"}})
    assert ignored.status.phase == "Running"
    # ...and /status ignores everything but status.
    patched = await core.patch_namespaced_pod_status(
        "web", "default", {"status": {"phase": "Failed"}, "metadata": {"labels": {"x": "y"}}}
    )
    assert patched.status.phase == "Failed"
    stored = emulator.get("v1", "Pod", "web", "default")
    assert stored is not None
    assert stored["status"]["phase"] == "Failed"
    assert stored["metadata"]["labels"] == {}


async def test_leases_have_optimistic_concurrency(coordination: client.CoordinationV1Api) -> None:
    lease = {
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {"name": "remediator-leader", "namespace": "default"},
        "spec": {"holderIdentity": "a", "leaseDurationSeconds": 15},
    }
    await coordination.create_namespaced_lease("default", raw(lease))
    seen_by_a = await coordination.read_namespaced_lease("remediator-leader", "default")
    seen_by_b = await coordination.read_namespaced_lease("remediator-leader", "default")

    seen_by_a.spec.lease_transitions = 1
    renewed = await coordination.replace_namespaced_lease("remediator-leader", "default", seen_by_a)
    assert renewed.spec.holder_identity == "a"

    seen_by_b.spec.holder_identity = "b"
    await failure(
        coordination.replace_namespaced_lease("remediator-leader", "default", seen_by_b), 409
    )
    current = await coordination.read_namespaced_lease("remediator-leader", "default")
    assert current.spec.holder_identity == "a"
    assert current.spec.lease_transitions == 1


async def test_pod_logs(core: client.CoreV1Api, emulator: kubeapi.KubeEmulator) -> None:
    emulator.seed([
        manifests.pod("single", "default"),
        manifests.pod("multi", "default", containers=("php", "nginx")),
    ])  # fmt: skip
    emulator.set_pod_log("default", "single", "app", "one\ntwo\nthree\n")
    emulator.set_pod_log("default", "multi", "php", "PHP Fatal error: out of memory\n")
    emulator.set_pod_log("default", "multi", "php", "booted\n", previous=True)

    assert await core.read_namespaced_pod_log("single", "default") == "one\ntwo\nthree\n"
    assert await core.read_namespaced_pod_log("single", "default", tail_lines=2) == "two\nthree\n"
    logs = await core.read_namespaced_pod_log("multi", "default", container="php")
    assert logs == "PHP Fatal error: out of memory\n"
    previous = await core.read_namespaced_pod_log(
        "multi", "default", container="php", previous=True
    )
    assert previous == "booted\n"
    assert await core.read_namespaced_pod_log("multi", "default", container="nginx") == ""

    status = await failure(core.read_namespaced_pod_log("multi", "default"), 400)
    assert "choose one of: [php nginx]" in status["message"]
    await failure(core.read_namespaced_pod_log("multi", "default", container="redis"), 400)
    await failure(core.read_namespaced_pod_log("gone", "default"), 404)


async def test_custom_resources(custom: client.CustomObjectsApi) -> None:
    group, version, plural = "cert-manager.io", "v1", "certificates"
    await custom.create_namespaced_custom_object(
        group, version, "default", plural, manifests.certificate("shop", "default", ready="False")
    )
    listed = await custom.list_namespaced_custom_object(group, version, "default", plural)
    assert [i["metadata"]["name"] for i in listed["items"]] == ["shop"]
    patched = await custom.patch_namespaced_custom_object(
        group, version, "default", plural, "shop",
        {"metadata": {"annotations": {"cert-manager.io/issue-temporary-certificate": "true"}}},
        **content_type(MERGE_PATCH),
    )  # fmt: skip
    assert patched["metadata"]["annotations"] == {
        "cert-manager.io/issue-temporary-certificate": "true"
    }
    status = await failure(
        custom.patch_namespaced_custom_object(
            group, version, "default", plural, "shop", {"spec": {"renewBefore": "1h"}},
            **content_type(STRATEGIC_MERGE_PATCH),
        ),
        415,
    )  # fmt: skip
    assert status["reason"] == "UnsupportedMediaType"


async def test_dry_run_changes_nothing(
    core: client.CoreV1Api, apps: client.AppsV1Api, emulator: kubeapi.KubeEmulator
) -> None:
    would_be = await core.create_namespaced_config_map(
        "default", raw(configmap("settings", a="1")), dry_run="All"
    )
    assert would_be.metadata.name == "settings"
    assert emulator.get("v1", "ConfigMap", "settings") is None

    await apps.create_namespaced_deployment("default", raw(manifests.deployment("web", "default")))
    before = emulator.resource_version
    async with emulator.subscribe() as events:
        patched = await apps.patch_namespaced_deployment(
            "web", "default", {"spec": {"replicas": 5}}, dry_run="All"
        )
        assert patched.spec.replicas == 5
        replaced = await apps.read_namespaced_deployment("web", "default")
        replaced.spec.replicas = 7
        assert (
            await apps.replace_namespaced_deployment("web", "default", replaced, dry_run="All")
        ).spec.replicas == 7
        await apps.delete_namespaced_deployment("web", "default", dry_run="All")
        assert not events.pending
    assert emulator.resource_version == before
    stored = emulator.get("apps/v1", "Deployment", "web")
    assert stored is not None
    assert stored["spec"]["replicas"] == 1
    await failure(
        core.create_namespaced_config_map("default", raw(configmap("x")), dry_run="Some"), 400
    )


@pytest.fixture
async def token_core() -> AsyncIterator[tuple[str, kubeapi.KubeEmulator]]:
    emulator = kubeapi.KubeEmulator(token="s3cret")
    async with kubeapi.serve(emulator) as url:
        yield url, emulator


async def test_bearer_token_is_required_when_configured(
    token_core: tuple[str, kubeapi.KubeEmulator],
) -> None:
    url, _ = token_core
    anonymous = client.Configuration(host=url)
    async with client.ApiClient(anonymous) as api:
        status = await failure(client.CoreV1Api(api).list_namespace(), 401)
        assert status["reason"] == "Unauthorized"
    authenticated = client.Configuration(
        host=url, api_key={"BearerToken": "s3cret"}, api_key_prefix={"BearerToken": "Bearer"}
    )
    async with client.ApiClient(authenticated) as api:
        listed = await client.CoreV1Api(api).list_namespace()
        assert [n.metadata.name for n in listed.items] == ["default"]


async def test_kubeconfig_with_token_for_kubernetes_asyncio(
    token_core: tuple[str, kubeapi.KubeEmulator], tmp_path: Path
) -> None:
    url, _ = token_core
    path = kubeapi.write_kubeconfig(tmp_path / "kubeconfig", url, token="s3cret", namespace="shop")
    assert path.stat().st_mode & 0o077 == 0, "a file holding a token is private"
    configuration = client.Configuration()
    await config.load_kube_config(config_file=str(path), client_configuration=configuration)
    assert configuration.host == url
    async with client.ApiClient(configuration) as api:
        listed = await client.CoreV1Api(api).list_namespace()
    assert [n.metadata.name for n in listed.items] == ["default"]
