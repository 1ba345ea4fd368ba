"""playbooks/ingress-controller-restart.yaml with a config that does not allow its namespace.

Its branches and the storm that starts it are scenarios (playbooks/tests/); what a scenario
cannot say is the daemon's config, so the refusal by the namespace allowlist is tested here."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tests.playbooks_e2e.conftest import (
    NAMESPACES,
    Obj,
    Rig,
    StoreProbe,
    combined,
    ingress_controller,
    open_rig,
    outcomes,
    restarted_at,
    store_alert,
    store_namespace,
    texts,
)

pytestmark = pytest.mark.e2e

STORES = [f"m{i}" for i in range(1, 7)]
"""One more than store-down's safety.storm.max_targets."""
RESTARTED = "jsonpath={.spec.template.metadata.annotations.kubectl\\.kubernetes\\.io/restartedAt}"


@pytest.fixture
async def rig(tmp_path: Path, probe: StoreProbe) -> AsyncIterator[Rig]:
    """The rig with Prometheus, which the playbook's verification queries."""
    async with open_rig(tmp_path, prometheus_url=probe.stack.url) as opened:
        yield opened


def storm() -> dict[str, Any]:
    """Six stores' StoreDown alerts in one delivery."""
    return combined(*(store_alert("StoreDown", s, severity="critical") for s in STORES))


async def stores_down(rig: Rig, probe: StoreProbe) -> dict[str, Obj | None]:
    """Six healthy-looking stores that the prober sees down; their app Deployments."""
    await probe.no_store_down()
    rig.seed(ingress_controller())
    for store_id in STORES:
        rig.seed(store_namespace(store_id))
        probe.set(store_id, 0)
    for store_id in STORES:
        await probe.seen(store_id, 0)
    return {s: rig.get("Deployment", f"{s}-app", f"store-{s}") for s in STORES}


async def platform_run(rig: Rig, admitted: dict[str, Any]) -> tuple[str, list[dict[str, Any]]]:
    """The storm playbook's run, and the store-down runs it replaced."""
    runs = await rig.runs()
    assert {r["id"] for r in runs} == set(admitted["runs"])
    (platform,) = [r["id"] for r in runs if r["playbook"] == "ingress-controller-restart"]
    return platform, [r for r in runs if r["playbook"] == "store-down"]


async def test_without_its_namespace_allowlisted_the_restart_is_refused_and_escalated(
    tmp_path: Path, probe: StoreProbe
) -> None:
    stores_only = tuple(n for n in NAMESPACES if n != "ingress-nginx")
    async with open_rig(tmp_path, prometheus_url=probe.stack.url, namespaces=stores_only) as rig:
        await stores_down(rig, probe)
        version = rig.emulator.resource_version

        platform_id, _ = await platform_run(rig, await rig.post(storm()))
        detail = await rig.wait_run(platform_id)

        assert detail["status"] == "failed"
        assert outcomes(detail) == {"restart_controller": "failed"}
        assert "scope: namespace 'ingress-nginx' is outside the allowlist" in detail["error"]
        assert rig.emulator.resource_version == version
        assert (
            restarted_at(rig.get("Deployment", "ingress-nginx-controller", "ingress-nginx")) is None
        )
        # Its own escalation, and, since one failure opens its breaker, the envelope's.
        first, second = await rig.receiver.next_body(), await rig.receiver.next_body()
        escalation, breaker = sorted((first["text"], second["text"]))
        assert escalation.startswith("Many stores went down at once (StoreDown storm)")
        assert "outside the allowlist" in escalation
        assert breaker.startswith(
            "remediator: circuit breaker open for ingress-controller-restart on ingress-nginx"
        )
        assert len(texts(rig.receiver)) == 2
