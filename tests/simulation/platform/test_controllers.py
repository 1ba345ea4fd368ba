"""The controllers, driven by emulator events: rollouts, endpoints, the kubelet's retries,
volumes, Jobs, cert-manager, and a store provisioned from bare manifests."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from remediator.simulation import controllers, kubeapi, platform, provisioner, stores

from .conftest import FAST, Act, fetch

NS = "store-s1"


def get(sim: platform.SimulatedPlatform, api_version: str, kind: str, name: str) -> Any:
    found = sim.emulator.get(api_version, kind, name, NS)
    assert found is not None, f"{kind} {name} missing"
    return found


def app_pods(sim: platform.SimulatedPlatform) -> list[dict[str, Any]]:
    return controllers.workload_pods(sim.emulator, "Deployment", NS, "s1-app")


async def test_a_restart_progresses_then_completes(tmp_path: Path, act: Act) -> None:
    # A long delay, so the progressing state can be looked at; the test finishes the rollout.
    slow = platform.PlatformSettings(delays=controllers.ControllerSettings(rollout_delay=60))
    async with platform.run(stores=["s1"], workdir=tmp_path, settings=slow) as sim:
        before = {p["metadata"]["name"] for p in app_pods(sim)}
        emulator = sim.emulator
        emulator.patch(
            "apps/v1",
            "Deployment",
            "s1-app",
            {"spec": {"template": {"metadata": {"annotations": {"x/restartedAt": "now"}}}}},
            namespace=NS,
        )

        def observed() -> bool:
            app = get(sim, "apps/v1", "Deployment", "s1-app")
            return bool(app["status"]["observedGeneration"] == app["metadata"]["generation"])

        await sim.wait_until(observed, timeout=5, what="the restart observed")
        app = get(sim, "apps/v1", "Deployment", "s1-app")
        assert app["status"]["updatedReplicas"] == 0
        assert app["status"]["availableReplicas"] == 1  # the old pod keeps serving meanwhile
        progressing = stores.conditions(app)["Progressing"]
        assert progressing["reason"] == "ReplicaSetUpdated"
        assert sim.serving("s1")

        controllers.roll(emulator, "Deployment", NS, "s1-app")

        app = get(sim, "apps/v1", "Deployment", "s1-app")
        assert app["status"]["updatedReplicas"] == app["status"]["availableReplicas"] == 1
        assert stores.conditions(app)["Progressing"]["reason"] == "NewReplicaSetAvailable"
        after = app_pods(sim)
        assert {p["metadata"]["name"] for p in after}.isdisjoint(before)
        assert after[0]["metadata"]["annotations"] == {"x/restartedAt": "now"}
        assert sim.healthy("s1")


async def test_rollout_restart_and_wait_rollout_through_the_api(
    sim: platform.SimulatedPlatform, act: Act
) -> None:
    before = {p["metadata"]["name"] for p in app_pods(sim)}
    params = {"namespace": NS, "kind": "Deployment", "name": "s1-app"}

    await act("k8s.rollout_restart", **params)
    status = await act("k8s.wait_rollout", **params, interval=0.02)

    assert status["done"]
    pods = app_pods(sim)
    assert len(pods) == 1
    assert pods[0]["metadata"]["name"] not in before
    assert "kubectl.kubernetes.io/restartedAt" in pods[0]["metadata"]["annotations"]
    endpoints = get(sim, "v1", "Endpoints", "s1-app")
    assert [a["targetRef"]["name"] for a in endpoints["subsets"][0]["addresses"]] == [
        pods[0]["metadata"]["name"]
    ]


async def test_scaling_adds_and_removes_pods_and_endpoints(
    sim: platform.SimulatedPlatform, http: aiohttp.ClientSession, act: Act
) -> None:
    params = {"namespace": NS, "kind": "Deployment", "name": "s1-app"}

    await act("k8s.scale", **params, replicas=3)
    await act("k8s.wait_rollout", **params, interval=0.02)

    assert len(app_pods(sim)) == 3
    assert stores.ready_addresses(get(sim, "v1", "Endpoints", "s1-app")) == 3

    await act("k8s.scale", **params, replicas=0)
    await sim.wait_until(lambda: not app_pods(sim), timeout=5, what="no app pods")
    assert get(sim, "v1", "Endpoints", "s1-app")["subsets"] == []
    assert (await fetch(http, sim, "s1")).status == 503


async def test_endpoints_and_status_follow_pod_readiness(sim: platform.SimulatedPlatform) -> None:
    pod = app_pods(sim)[0]
    pod["status"]["conditions"] = controllers.pod_conditions(sim.emulator, ready=False)

    sim.emulator.update(pod)  # as a kubelet would report it; the controllers do the rest

    def out_of_service() -> bool:
        endpoints = get(sim, "v1", "Endpoints", "s1-app")
        return stores.ready_addresses(endpoints) == 0

    await sim.wait_until(out_of_service, timeout=5, what="endpoints not ready")
    subset = get(sim, "v1", "Endpoints", "s1-app")["subsets"][0]
    assert [a["targetRef"]["name"] for a in subset["notReadyAddresses"]] == [
        pod["metadata"]["name"]
    ]
    assert get(sim, "apps/v1", "Deployment", "s1-app")["status"]["readyReplicas"] == 0
    assert not sim.serving("s1")


async def test_waiting_pods_start_when_their_secret_appears(
    sim: platform.SimulatedPlatform,
) -> None:
    emulator = sim.emulator
    secret = get(sim, "v1", "Secret", "s1-db-credentials")
    emulator.delete("v1", "Secret", "s1-db-credentials", NS)
    controllers.replace_pods(emulator, "Deployment", NS, "s1-app")
    waiting = app_pods(sim)[0]["status"]["containerStatuses"][0]["state"]["waiting"]
    assert waiting["reason"] == "CreateContainerConfigError"

    emulator.create({**secret, "metadata": {"name": "s1-db-credentials", "namespace": NS}})

    await sim.wait_healthy("s1", timeout=5)
    assert app_pods(sim)[0]["status"]["phase"] == "Running"


async def test_a_deleted_claim_is_recreated_and_bound(sim: platform.SimulatedPlatform) -> None:
    old = get(sim, "v1", "PersistentVolumeClaim", "data-s1-db-0")

    sim.emulator.delete("v1", "PersistentVolumeClaim", "data-s1-db-0", NS)

    def bound_again() -> bool:
        claim = sim.emulator.get("v1", "PersistentVolumeClaim", "data-s1-db-0", NS)
        return claim is not None and claim["status"]["phase"] == "Bound"

    await sim.wait_until(bound_again, timeout=5, what="the claim bound again")
    new = get(sim, "v1", "PersistentVolumeClaim", "data-s1-db-0")
    assert new["metadata"]["uid"] != old["metadata"]["uid"]
    assert new["spec"]["storageClassName"] == stores.STORAGE_CLASS
    assert new["spec"]["volumeName"] == f"pvc-{new['metadata']['uid']}"


async def test_a_deleted_init_job_is_recreated_and_completes(
    sim: platform.SimulatedPlatform, act: Act
) -> None:
    old = get(sim, "batch/v1", "Job", "s1-init")

    output = await act("k8s.delete", namespace=NS, kind="Job", name="s1-init")

    assert output["deleted"]

    def completed_again() -> bool:
        job = sim.emulator.get("batch/v1", "Job", "s1-init", NS)
        return (
            job is not None
            and job["metadata"]["uid"] != old["metadata"]["uid"]
            and stores.condition_true(job, "Complete")
        )

    await sim.wait_until(completed_again, timeout=5, what="the init Job completed again")
    job = get(sim, "batch/v1", "Job", "s1-init")
    pods = controllers.owned_pods(sim.emulator, job)
    assert [p["status"]["phase"] for p in pods] == ["Succeeded"]
    assert sim.healthy("s1")


async def test_an_init_job_waits_for_the_database(sim: platform.SimulatedPlatform) -> None:
    emulator = sim.emulator
    sim.inject("db_down", "s1")
    emulator.delete("batch/v1", "Job", "s1-init", NS, propagation_policy="Background")
    await sim.wait_until(
        lambda: emulator.get("batch/v1", "Job", "s1-init", NS) is not None,
        timeout=5,
        what="the init Job recreated",
    )
    await sim.wait_until(lambda: not sim.controllers.busy, timeout=5, what="controllers idle")
    assert controllers.job_running(get(sim, "batch/v1", "Job", "s1-init"))

    controllers.replace_pods(emulator, "StatefulSet", NS, "s1-db")  # the database is back

    await sim.wait_healthy("s1", timeout=5)


async def test_a_deleting_store_with_a_deleted_init_job_gets_none(
    sim: platform.SimulatedPlatform,
) -> None:
    controllers.set_store_status(sim.cluster, "s1", "deleting")

    sim.emulator.delete("batch/v1", "Job", "s1-init", NS)
    await sim.wait_until(lambda: not sim.controllers.busy, timeout=5, what="controllers idle")

    assert sim.emulator.get("batch/v1", "Job", "s1-init", NS) is None


@pytest.mark.parametrize("kind", ["Certificate", "Secret"])
async def test_cert_manager_issues_a_deleted_certificate_or_secret_anew(
    sim: platform.SimulatedPlatform, kind: str
) -> None:
    api_version = "cert-manager.io/v1" if kind == "Certificate" else "v1"

    sim.emulator.delete(api_version, kind, "s1-tls", NS)

    await sim.wait_until(lambda: sim.serving("s1"), timeout=5, what="the certificate issued")
    cert = get(sim, "cert-manager.io/v1", "Certificate", "s1-tls")
    assert stores.condition_true(cert, "Ready")
    assert cert["metadata"]["ownerReferences"][0]["kind"] == "Ingress"
    assert get(sim, "v1", "Secret", "s1-tls")["type"] == "kubernetes.io/tls"


async def test_a_failed_certificate_is_not_retried_by_itself(
    sim: platform.SimulatedPlatform,
) -> None:
    sim.inject("certificate_not_ready", "s1")

    await sim.wait_until(lambda: not sim.controllers.busy, timeout=5, what="controllers idle")

    assert not stores.condition_true(
        get(sim, "cert-manager.io/v1", "Certificate", "s1-tls"), "Ready"
    )


async def test_a_namespace_whose_finalizers_are_cleared_disappears(
    sim: platform.SimulatedPlatform, act: Act
) -> None:
    sim.inject("deletion_stuck", "s1")
    namespace = get(sim, "v1", "Namespace", NS)
    assert namespace["status"]["phase"] == "Terminating"
    assert sim.twin.stores["s1"].status == "deleting"

    await act("k8s.remove_finalizers", kind="Namespace", name=NS)
    assert sim.emulator.get("v1", "Namespace", NS) is not None  # the PVC still holds it
    await act(
        "k8s.remove_finalizers", kind="PersistentVolumeClaim", namespace=NS, name="data-s1-db-0"
    )

    assert sim.emulator.get("v1", "Namespace", NS) is None
    await sim.wait_until(lambda: "s1" not in sim.twin.stores, timeout=5, what="store forgotten")


# --- the controllers alone, on a bare emulator --------------------------------------------------


async def _wait(emulator: kubeapi.KubeEmulator, condition: Callable[[], bool]) -> None:
    async with asyncio.timeout(5), emulator.subscribe() as events:
        while not condition():
            await events.get()


async def test_a_store_is_provisioned_from_its_manifests_alone() -> None:
    emulator = kubeapi.KubeEmulator()
    twin = provisioner.ProvisionerTwin(token="t")
    cluster = stores.Cluster(emulator=emulator, twin=twin)
    emulator.seed(stores.platform_manifests())
    for ns in (stores.PLATFORM_NAMESPACE, stores.INGRESS_NAMESPACE):
        controllers.converge(emulator, ns)
    twin.add_store("s1", status="provisioning")
    # Installed before the controllers run: their first pass picks everything up.
    controllers.install_store(cluster, "s1")
    assert emulator.list("v1", "Pod", NS) == []

    async with controllers.Controllers(cluster, FAST):
        # Each step is a controller's: claim bound, database and app rolled out, certificate
        # issued, endpoints ready, init Job done, the provisioner's status running.
        await _wait(emulator, lambda: not stores.store_problems(cluster, "s1"))

    assert twin.stores["s1"].status == "running"
    namespace = emulator.get("v1", "Namespace", NS)
    assert namespace is not None
    assert namespace["metadata"]["labels"][stores.STATUS_LABEL] == "running"


async def test_a_pod_that_cannot_pull_its_image_waits() -> None:
    emulator = kubeapi.KubeEmulator()
    twin = provisioner.ProvisionerTwin(token="t")
    cluster = stores.Cluster(emulator=emulator, twin=twin)
    emulator.seed(stores.platform_manifests())

    def missing(deployment: dict[str, Any]) -> None:
        deployment["spec"]["template"]["spec"]["containers"][0]["image"] = "nope:1"

    emulator.apply_change(
        "apps/v1", "Deployment", stores.PROVISIONER, missing, namespace=stores.PLATFORM_NAMESPACE
    )
    async with controllers.Controllers(cluster, FAST) as running:

        def rolled_out() -> bool:
            return bool(
                controllers.workload_pods(
                    emulator, "Deployment", stores.PLATFORM_NAMESPACE, stores.PROVISIONER
                )
            )

        await _wait(emulator, rolled_out)
        assert not stores.provisioner_up(emulator)
        assert running.settings is FAST
    pod = controllers.workload_pods(
        emulator, "Deployment", stores.PLATFORM_NAMESPACE, stores.PROVISIONER
    )[0]
    state = pod["status"]["containerStatuses"][0]["state"]
    assert state["waiting"]["reason"] == "ImagePullBackOff"
