"""Every fault breaks what it says (``k8s.diagnose`` flags through the real client, the store
URL's answer), and the runbook's fix, applied through remediator's real actions, heals it
through the controllers; the storefront follows."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import aiohttp
import pytest

from remediator.simulation import faults, platform, stores

from .conftest import STORES, Act, diagnose, fetch

Step = tuple[str, dict[str, Any]]
NS = "store-s1"


def restart(kind: str, name: str, namespace: str = NS) -> Step:
    return "k8s.rollout_restart", {"namespace": namespace, "kind": kind, "name": name}


def wait_rollout(kind: str, name: str, namespace: str = NS) -> Step:
    params = {"namespace": namespace, "kind": kind, "name": name, "interval": 0.02}
    return "k8s.wait_rollout", params


def delete(kind: str, name: str, **extra: Any) -> Step:
    return "k8s.delete", {"namespace": NS, "kind": kind, "name": name, **extra}


def provisioner(operation: str, **extra: Any) -> Step:
    return "provisioner.request", {"store_id": "s1", "operation": operation, **extra}


FIXES: dict[str, list[Step]] = {
    "init_job_failed": [delete("Job", "s1-init", propagation="Background")],
    "pvc_pending": [("k8s.delete_pvc", {"namespace": NS, "name": "data-s1-db-0"})],
    "image_pull_error": [provisioner("reprovision")],
    "status_wrong": [provisioner("set_status", status="running")],
    "app_down": [restart("Deployment", "s1-app"), wait_rollout("Deployment", "s1-app")],
    "ingress_missing": [provisioner("reprovision")],
    "certificate_not_ready": [delete("Certificate", "s1-tls"), delete("Secret", "s1-tls")],
    "ingress_controller_down": [
        restart("Deployment", "ingress-nginx-controller", "ingress-nginx"),
        wait_rollout("Deployment", "ingress-nginx-controller", "ingress-nginx"),
    ],
    "db_down": [restart("StatefulSet", "s1-db"), wait_rollout("StatefulSet", "s1-db")],
    "app_crashloop_db_ready": [restart("Deployment", "s1-app")],
    "db_credentials_missing": [provisioner("reprovision")],
    "provisioner_down": [
        (
            "k8s.scale",
            {"namespace": "store-platform", "kind": "Deployment", "name": "provisioner",
             "replicas": 3, "min_replicas": 1, "max_replicas": 3},
        ),
        restart("Deployment", "provisioner", "store-platform"),
        wait_rollout("Deployment", "provisioner", "store-platform"),
    ],
    "helm_pending": [
        ("helm.clear_pending_release", {"namespace": NS, "release": NS, "older_than": 600}),
        provisioner("reprovision"),
    ],
    "deletion_stuck": [
        ("k8s.remove_finalizers",
         {"kind": "PersistentVolumeClaim", "namespace": NS, "name": "data-s1-db-0"}),
        ("k8s.remove_finalizers", {"kind": "Namespace", "name": NS}),
    ],
}  # fmt: skip
"""The runbook's fix for each fault, as playbook steps would apply it."""

ALTERNATIVE_FIXES: dict[str, tuple[str, list[Step]]] = {
    "certificate_deleted": ("certificate_not_ready", [delete("Certificate", "s1-tls")]),
    "tls_secret_deleted": ("certificate_not_ready", [delete("Secret", "s1-tls")]),
    "provisioner_scaled": (
        "provisioner_down",
        [("k8s.scale", {"namespace": "store-platform", "kind": "Deployment",
                        "name": "provisioner", "replicas": 2})],
    ),
    "provisioner_restarted": (
        "provisioner_down", [restart("Deployment", "provisioner", "store-platform")]
    ),
    "helm_record_deleted": (
        "helm_pending",
        [delete("Secret", "sh.helm.release.v1.store-s1.v2"), provisioner("reprovision")],
    ),
    "finalizers_namespace_first": (
        "deletion_stuck",
        [("k8s.remove_finalizers", {"kind": "Namespace", "name": NS}),
         ("k8s.remove_finalizers",
          {"kind": "PersistentVolumeClaim", "namespace": NS, "name": "data-s1-db-0"})],
    ),
}  # fmt: skip


def test_every_fault_has_a_fix_here() -> None:
    assert set(FIXES) == set(faults.FAULTS)


def store_of(fault: faults.Fault) -> str | None:
    return None if fault.platform else "s1"


async def apply(act: Act, steps: Sequence[Step]) -> None:
    for name, params in steps:
        await act(name, **params)


@pytest.mark.parametrize("name", sorted(faults.FAULTS))
async def test_the_fault_breaks_what_it_says(
    sim: platform.SimulatedPlatform, http: aiohttp.ClientSession, act: Act, name: str
) -> None:
    fault = faults.FAULTS[name]
    store_id = store_of(fault)

    injected = sim.inject(name, store_id)

    assert injected is fault
    assert not sim.fixed(name, store_id)
    report = await diagnose(act, fault.namespace(store_id))
    assert {flag: report["flags"][flag] for flag in fault.flags} == dict(fault.flags)
    answer = await fetch(http, sim, "s1")
    assert answer.status == fault.storefront, answer.headers.get("X-Simulation-Problems")
    assert sim.serving("s1") == (fault.storefront == 200)
    if fault.platform:
        # A platform fault breaks no store's own objects.
        own = [p for p in sim.problems("s1") if p != "ingress controller unavailable"]
        assert own == []
    else:
        assert not sim.healthy("s1")
        assert sim.healthy("s2"), sim.problems("s2")


@pytest.mark.parametrize("name", sorted(FIXES))
async def test_the_runbook_fix_heals_it(
    sim: platform.SimulatedPlatform, http: aiohttp.ClientSession, act: Act, name: str
) -> None:
    fault = faults.FAULTS[name]
    store_id = store_of(fault)
    sim.inject(name, store_id)

    await apply(act, FIXES[name])

    await sim.wait_fixed(name, store_id, timeout=5)
    if name == "deletion_stuck":
        assert sim.store_ids == ["s2"]
        assert (await fetch(http, sim, "s1")).status == 404
        return
    for each in STORES:
        await sim.wait_healthy(each, timeout=5)
        assert (await fetch(http, sim, each)).status == 200
    report = await diagnose(act, fault.namespace(store_id))
    assert report["flags"]["app_ready"]


@pytest.mark.parametrize("variant", sorted(ALTERNATIVE_FIXES))
async def test_other_fixes_work_too(
    sim: platform.SimulatedPlatform, act: Act, variant: str
) -> None:
    name, steps = ALTERNATIVE_FIXES[variant]
    store_id = store_of(faults.FAULTS[name])
    sim.inject(name, store_id)

    await apply(act, steps)

    await sim.wait_fixed(name, store_id, timeout=5)


async def test_restarting_does_not_fix_what_a_restart_cannot(
    sim: platform.SimulatedPlatform, act: Act
) -> None:
    sim.inject("image_pull_error", "s1")

    await apply(act, [restart("Deployment", "s1-app")])
    # The rollout finishes (with the same missing image), and the store stays broken.
    await sim.wait_until(lambda: not sim.controllers.busy, timeout=5, what="the controllers idle")
    report = await diagnose(act, NS)
    assert report["flags"]["image_pull_error"]
    assert not sim.fixed("image_pull_error", "s1")


async def test_a_pending_release_blocks_reprovisioning(
    sim: platform.SimulatedPlatform, http: aiohttp.ClientSession
) -> None:
    sim.inject("helm_pending", "s1")
    token = sim.provisioner_token_file.read_text().strip()

    async with http.post(
        sim.provisioner_url + "/api/v1/stores/s1/reprovision",
        headers={"Authorization": f"Bearer {token}"},
    ) as response:
        assert response.status == 500

    assert sim.twin.stores["s1"].status == "failed"
    assert stores.latest_release(sim.emulator, NS, NS)["status"] == "pending-upgrade"


async def test_provisioner_down_answers_503_until_fixed(
    sim: platform.SimulatedPlatform, http: aiohttp.ClientSession, act: Act
) -> None:
    sim.inject("provisioner_down")
    token = sim.provisioner_token_file.read_text().strip()
    headers = {"Authorization": f"Bearer {token}"}

    async with http.get(sim.provisioner_url + "/api/v1/stores", headers=headers) as response:
        assert response.status == 503
    await apply(act, [restart("Deployment", "provisioner", "store-platform")])
    await sim.wait_fixed("provisioner_down", timeout=5)
    async with http.get(sim.provisioner_url + "/api/v1/stores", headers=headers) as response:
        assert response.status == 200
    output = await act("provisioner.request", store_id="s1", operation="get")
    assert output["store"]["status"] == "running"


async def test_crash_loop_leaves_the_previous_log(
    sim: platform.SimulatedPlatform, act: Act
) -> None:
    sim.inject("app_crashloop_db_ready", "s1")
    report = await diagnose(act, NS)
    pod = next(p["name"] for p in report["pods"] if p["name"].startswith("s1-app-"))

    output = await act("k8s.logs_tail", namespace=NS, pod=pod, container="wordpress", previous=True)

    assert "Connection refused" in str(output)
