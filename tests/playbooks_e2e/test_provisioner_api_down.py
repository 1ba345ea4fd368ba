"""playbooks/provisioner-api-down.yaml where the simulated platform has no fault for it: a
stale pending record of the platform's own release, and a provisioner Deployment that is gone.
The common case (scaled up, restarted, answering again) is a scenario (playbooks/tests/)."""

from __future__ import annotations

import time
from typing import Any

import pytest

from tests.engine.kube import objects
from tests.playbooks_e2e.conftest import (
    Obj,
    Rig,
    alert_payload,
    outcomes,
    platform,
    requests,
    restarted_at,
    step,
    texts,
)

pytestmark = pytest.mark.e2e


def api_down() -> dict[str, Any]:
    return alert_payload("ProvisionerAPIDown", namespace="store-platform", severity="critical")


def restart_heals_the_api(rig: Rig) -> None:
    """The provisioner is wedged until its pods are replaced by a rollout restart."""
    rig.outage.down = True

    async def heal(deployment: Obj) -> None:
        if deployment["metadata"]["name"] == "provisioner" and restarted_at(deployment):
            rig.outage.down = False

    rig.roll_out_restarts(before=heal)


def probes(rig: Rig) -> list[tuple[str, str]]:
    return [r for r in requests(rig) if r[1] == "/api/v1/stores/remediator-probe"]


async def test_three_replicas_are_kept_and_a_stale_platform_release_is_cleared(rig: Rig) -> None:
    seeded = platform()
    seeded[1] = objects.deployment("provisioner", "store-platform", replicas=5)
    stale = int(time.time()) - 3600
    seeded.append(
        objects.release_record(
            "store-platform",
            "store-platform",
            revision=2,
            status="pending-upgrade",
            modified_at=stale,
        )
    )
    rig.seed(seeded)
    restart_heals_the_api(rig)

    detail = await rig.wait_run(await rig.fire(api_down()))

    assert detail["status"] == "succeeded", detail["error"]
    assert outcomes(detail) == {
        "diagnose": "succeeded",
        "scale_up": "skipped",
        "restart": "succeeded",
        "clear_platform_release": "succeeded",
        "wait_rollout": "succeeded",
    }
    cleared = step(detail, "clear_platform_release")["output"]
    assert (cleared["cleared"], cleared["revision"], cleared["status"]) == (
        True,
        2,
        "pending-upgrade",
    )
    assert rig.get("Secret", "sh.helm.release.v1.store-platform.v2", "store-platform") is None
    assert rig.get("Secret", "sh.helm.release.v1.store-platform.v1", "store-platform") is not None
    provisioner = rig.get("Deployment", "provisioner", "store-platform")
    assert provisioner is not None
    assert provisioner["spec"]["replicas"] == 5, "never scaled down"
    assert rig.receiver.bodies == []


async def test_a_missing_provisioner_deployment_escalates(rig: Rig) -> None:
    rig.seed([objects.namespace("store-platform")])
    version = rig.emulator.resource_version

    detail = await rig.wait_run(await rig.fire(api_down()))

    assert detail["status"] == "failed"
    assert outcomes(detail) == {
        "diagnose": "succeeded",
        "scale_up": "skipped",
        "restart": "failed",
    }
    assert "restart Deployment store-platform/provisioner" in detail["error"]
    assert rig.emulator.resource_version == version
    (message,) = texts(rig.receiver)
    assert message.startswith("The provisioner API is down, remediation failed: step 'restart'")
