"""The facade: what `platform.run` starts, its config fragment, kubectl, and the provisioner
twin's hooks acting on the cluster (create, reprovision, delete, status)."""

from __future__ import annotations

import asyncio
import os
import shutil
import stat
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from remediator import config
from remediator.adapters import kubernetes
from remediator.simulation import controllers, faults, platform, storefront, stores

from .conftest import STORES, Act, diagnose, fetch

KUBECTL = shutil.which("kubectl")


async def twin_call(
    http: aiohttp.ClientSession,
    sim: platform.SimulatedPlatform,
    method: str,
    path: str,
    *,
    json: Any = None,
) -> tuple[int, Any]:
    token = sim.provisioner_token_file.read_text().strip()
    async with http.request(
        method,
        sim.provisioner_url + path,
        json=json,
        headers={"Authorization": f"Bearer {token}"},
        timeout=aiohttp.ClientTimeout(total=5),
    ) as response:
        return response.status, await response.json()


async def test_run_starts_a_healthy_platform(
    sim: platform.SimulatedPlatform, http: aiohttp.ClientSession
) -> None:
    assert sim.store_ids == list(STORES)
    for store_id in STORES:
        assert sim.problems(store_id) == []
        assert sim.healthy(store_id)
        assert sim.serving(store_id)
        answer = await fetch(http, sim, store_id)
        assert (answer.status, answer.body) == (200, storefront.BLANK_GIF)
        assert sim.twin.stores[store_id].status == "running"
        assert sim.twin.stores[store_id].url == sim.store_url(store_id)
    assert sim.check_url("s1") == "http://s1.127.0.0.1.nip.io/wp-includes/images/blank.gif"
    assert sim.kubeconfig.is_file()
    mode = stat.S_IMODE(os.stat(sim.provisioner_token_file).st_mode)
    assert mode == 0o600
    status, listed = await twin_call(http, sim, "GET", "/api/v1/stores")
    assert status == 200
    assert [s["id"] for s in listed["items"]] == list(STORES)


async def test_store_objects_are_what_the_runbook_names(sim: platform.SimulatedPlatform) -> None:
    emulator = sim.emulator
    ns = "store-s1"
    found = {
        (kind, obj["metadata"]["name"])
        for api_version, kind in (
            ("apps/v1", "Deployment"),
            ("apps/v1", "StatefulSet"),
            ("v1", "Service"),
            ("v1", "Endpoints"),
            ("v1", "Pod"),
            ("v1", "Secret"),
            ("v1", "PersistentVolumeClaim"),
            ("networking.k8s.io/v1", "Ingress"),
            ("cert-manager.io/v1", "Certificate"),
            ("batch/v1", "Job"),
        )
        for obj in emulator.list(api_version, kind, ns)
    }
    expected = {
        ("Deployment", "s1-app"),
        ("StatefulSet", "s1-db"),
        ("Service", "s1-app"),
        ("Service", "s1-db"),
        ("Endpoints", "s1-app"),
        ("Endpoints", "s1-db"),
        ("Pod", "s1-db-0"),
        ("Secret", "s1-db-credentials"),
        ("Secret", "s1-tls"),
        ("Secret", "sh.helm.release.v1.store-s1.v1"),
        ("PersistentVolumeClaim", "data-s1-db-0"),
        ("Ingress", "s1-app"),
        ("Certificate", "s1-tls"),
        ("Job", "s1-init"),
    }
    assert expected <= found
    pods = [name for kind, name in found if kind == "Pod"]
    assert any(name.startswith("s1-app-") for name in pods)
    assert any(name.startswith("s1-init-") for name in pods)
    namespace = emulator.get("v1", "Namespace", ns)
    assert namespace is not None
    labels = namespace["metadata"]["labels"]
    assert labels[stores.PART_OF] == "store-platform"
    assert labels[stores.STATUS_LABEL] == "running"
    ingress = emulator.get("networking.k8s.io/v1", "Ingress", "s1-app", ns)
    assert ingress is not None
    assert ingress["spec"]["rules"][0]["host"] == "s1.127.0.0.1.nip.io"
    assert ingress["spec"]["tls"][0]["secretName"] == "s1-tls"
    for name, namespace_name in (
        ("provisioner", "store-platform"),
        ("ingress-nginx-controller", "ingress-nginx"),
    ):
        assert stores.available(emulator.get("apps/v1", "Deployment", name, namespace_name))


async def test_the_real_client_and_diagnose_see_a_healthy_store(
    sim: platform.SimulatedPlatform, kube: kubernetes.KubeClient, act: Act
) -> None:
    namespaces = await kube.list(
        kubernetes.NAMESPACES, label_selector="app.kubernetes.io/part-of=store-platform"
    )
    assert sorted(n["metadata"]["name"] for n in namespaces) == ["store-s1", "store-s2"]
    report = await diagnose(act, "store-s1")
    assert report["flags"]["app_ready"] and report["flags"]["db_ready"]
    assert [name for name, raised in report["flags"].items() if raised] == [
        "app_ready",
        "db_ready",
    ]
    assert report["helm"] == {"release": "store-s1", "revision": 1, "status": "deployed"}
    assert report["missing_secrets"] == []
    platform_report = await diagnose(act, "store-platform")
    assert platform_report["flags"]["app_ready"]
    assert not platform_report["flags"]["helm_pending"]


@pytest.mark.skipif(KUBECTL is None, reason="kubectl is not installed")
async def test_kubectl_lists_the_stores(sim: platform.SimulatedPlatform, tmp_path: Path) -> None:
    assert KUBECTL is not None
    env = {k: v for k, v in os.environ.items() if k in ("PATH", "LANG", "TMPDIR")}
    env["HOME"] = str(tmp_path)
    process = await asyncio.create_subprocess_exec(
        KUBECTL,
        "--kubeconfig",
        str(sim.kubeconfig),
        "get",
        "namespaces",
        "-l",
        "app.kubernetes.io/part-of=store-platform",
        "-L",
        stores.STATUS_LABEL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )
    out, err = await process.communicate()
    assert process.returncode == 0, err.decode()
    rows = [line.split() for line in out.decode().splitlines()[1:]]
    assert [(row[0], row[1], row[-1]) for row in rows] == [
        ("store-s1", "Active", "running"),
        ("store-s2", "Active", "running"),
    ]


async def test_the_config_fragment_is_a_valid_remediator_config(
    sim: platform.SimulatedPlatform,
) -> None:
    settings = config.from_mapping(sim.remediator_config())

    # remediator talks to the API as its service account, not as the harness' admin.
    assert settings.kubernetes.kubeconfig == str(sim.remediator_kubeconfig)
    assert sim.remediator_kubeconfig != sim.kubeconfig
    assert settings.provisioner.url == sim.provisioner_url
    assert settings.provisioner.token_file == str(sim.provisioner_token_file)
    assert "ingress-nginx" in settings.safety.namespaces
    probe = settings.stores.probe
    assert probe.connect_to == sim.storefront_url.removeprefix("http://")
    assert probe.url_template == "http://{store_id}.127.0.0.1.nip.io"


async def test_faults_are_listed_and_checked(sim: platform.SimulatedPlatform) -> None:
    listed = sim.faults()
    assert set(listed) == set(faults.FAULTS)
    assert {
        "app_down",
        "ingress_missing",
        "certificate_not_ready",
        "init_job_failed",
        "pvc_pending",
        "image_pull_error",
        "status_wrong",
        "db_down",
        "app_crashloop_db_ready",
        "db_credentials_missing",
        "provisioner_down",
        "helm_pending",
        "deletion_stuck",
        "ingress_controller_down",
    } == set(listed)
    assert all(description for description in listed.values())
    with pytest.raises(faults.FaultError, match="unknown fault 'nope'"):
        sim.inject("nope", "s1")
    with pytest.raises(faults.FaultError, match="needs a store id"):
        sim.inject("app_down")
    with pytest.raises(faults.FaultError, match="give no store id"):
        sim.inject("provisioner_down", "s1")
    with pytest.raises(faults.FaultError, match="no active namespace"):
        sim.inject("app_down", "unknown")
    assert sim.healthy("s1")


async def test_wait_healthy_says_what_is_still_wrong(sim: platform.SimulatedPlatform) -> None:
    sim.inject("app_down", "s1")

    with pytest.raises(TimeoutError, match=r"store s1 healthy.*s1-app has no ready endpoints"):
        await sim.wait_healthy("s1", timeout=0.1)


async def test_a_store_created_through_the_api_is_provisioned(
    sim: platform.SimulatedPlatform, http: aiohttp.ClientSession
) -> None:
    status, created = await twin_call(http, sim, "POST", "/api/v1/stores", json={"id": "s3"})

    assert (status, created["status"]) == (201, "provisioning")
    assert not sim.healthy("s3")
    await sim.wait_healthy("s3", timeout=5)
    assert sim.twin.stores["s3"].status == "running"
    assert (await fetch(http, sim, "s3")).status == 200
    assert "s3" in sim.store_ids


async def test_a_store_deleted_through_the_api_is_gone(
    sim: platform.SimulatedPlatform, http: aiohttp.ClientSession
) -> None:
    status, deleted = await twin_call(http, sim, "DELETE", "/api/v1/stores/s2")

    assert (status, deleted["status"]) == (200, "deleting")
    assert sim.emulator.get("v1", "Namespace", "store-s2") is None
    assert "s2" not in sim.twin.stores
    assert (await fetch(http, sim, "s2")).status == 404
    assert sim.store_ids == ["s1"]
    assert sim.healthy("s1")


async def test_reprovision_restores_the_stores_objects(
    sim: platform.SimulatedPlatform, http: aiohttp.ClientSession
) -> None:
    emulator = sim.emulator
    emulator.delete("v1", "Service", "s1-db", "store-s1")
    emulator.delete("v1", "Secret", "s1-db-credentials", "store-s1")

    status, store = await twin_call(http, sim, "POST", "/api/v1/stores/s1/reprovision")

    assert (status, store["status"]) == (202, "provisioning")
    assert emulator.get("v1", "Service", "s1-db", "store-s1") is not None
    assert emulator.get("v1", "Secret", "s1-db-credentials", "store-s1") is not None
    await sim.wait_healthy("s1", timeout=5)
    release = stores.latest_release(emulator, "store-s1", "store-s1")
    assert (release["version"], release["status"]) == ("2", "deployed")
    first = emulator.get("v1", "Secret", "sh.helm.release.v1.store-s1.v1", "store-s1")
    assert first is not None
    assert first["metadata"]["labels"]["status"] == "superseded"


async def test_status_patches_are_reflected_on_the_namespace(
    sim: platform.SimulatedPlatform, http: aiohttp.ClientSession
) -> None:
    status, _ = await twin_call(http, sim, "PATCH", "/api/v1/stores/s1", json={"status": "failed"})

    assert status == 200
    namespace = sim.emulator.get("v1", "Namespace", "store-s1")
    assert namespace is not None
    assert namespace["metadata"]["labels"][stores.STATUS_LABEL] == "failed"
    assert not sim.healthy("s1")
    assert sim.serving("s1")
    assert sim.problems("s1") == ["provisioner says failed"]


async def test_add_store_while_running(
    sim: platform.SimulatedPlatform, http: aiohttp.ClientSession
) -> None:
    sim.add_store("s9")

    assert sim.healthy("s9")
    assert (await fetch(http, sim, "s9")).status == 200


async def test_everything_stops_on_exit(tmp_path: Path, http: aiohttp.ClientSession) -> None:
    slow = platform.PlatformSettings(delays=controllers.ControllerSettings(rollout_delay=60))
    async with platform.run(stores=["a"], workdir=tmp_path, settings=slow) as sim:
        urls = [sim.kube_url, sim.storefront_url, sim.provisioner_url]
        running = sim.controllers
        sim.emulator.patch(
            "apps/v1",
            "Deployment",
            "a-app",
            {"spec": {"replicas": 2}},
            namespace="store-a",
        )
        await sim.wait_until(lambda: running.busy, timeout=5, what="a rollout scheduled")

    assert not running.busy
    for url in urls:
        with pytest.raises(aiohttp.ClientConnectionError):
            async with http.get(url, timeout=aiohttp.ClientTimeout(total=2)):
                pass
