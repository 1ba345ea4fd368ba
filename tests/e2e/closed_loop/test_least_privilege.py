"""The closed loop under the chart's RBAC: a store namespace without remediator's RoleBinding.

The platform runs remediator as its service account (`simulation.access`), so the emulator
refuses what the manifests do not grant. Here one store lost its RoleBinding (its chart was
installed without helm-charts/remediator-store-access): its StoreDown run must fail saying so,
be audited and escalated, open the breaker, and be counted; the other store is unaffected.
Without Prometheus and Alertmanager (the test posts the alert), so it takes seconds.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from remediator.adapters import kubernetes
from remediator.config import KubernetesSettings
from remediator.simulation import access, closedloop, standins

pytestmark = pytest.mark.e2e

HINT = "no RoleBinding for remediator in store-s1?"


def one_failure_opens_the_breaker(workdir: Path) -> Path:
    """The shipped playbooks, with store-down's breaker opening after one failed run."""
    directory = workdir / "playbooks"
    directory.mkdir()
    for source in closedloop.find_directory("playbooks").glob("*.yaml"):
        text = source.read_text(encoding="utf-8")
        if source.name == "store-down.yaml":
            shipped = "breaker: { failures: 2, reset_after: 2h }"
            assert shipped in text
            text = text.replace(shipped, "breaker: { failures: 1, reset_after: 2h }")
        (directory / source.name).write_text(text, encoding="utf-8")
    return directory


async def test_a_store_without_its_role_binding_fails_clearly(tmp_path: Path) -> None:
    settings = closedloop.LoopSettings(
        stores=("s1", "s2"), monitoring=False, playbooks=one_failure_opens_the_breaker(tmp_path)
    )
    async with closedloop.run(workdir=tmp_path / "loop", settings=settings) as loop:
        emulator = loop.platform.emulator
        rbac = "rbac.authorization.k8s.io/v1"
        binding = access.store_role_binding("store-s1")["metadata"]["name"]
        assert emulator.get(rbac, "RoleBinding", binding, "store-s1") is not None
        emulator.delete(rbac, "RoleBinding", binding, "store-s1")
        loop.platform.inject("app_down", "s1")

        labels = loop.alert_labels("StoreDown", "s1")
        payload = standins.alertmanager_payload(labels, status="firing", starts_at=time.time())
        (run_id,) = (await loop.post_alert(payload))["runs"]
        detail = await loop.wait_run(run_id)

        assert detail["status"] == "failed"
        assert HINT in detail["error"]
        assert "may not list certificates.cert-manager.io in namespace store-s1" in detail["error"]
        assert "list pods" in detail["error"]
        finished = [a for a in detail["audit"] if a["kind"] == "run_finished"]
        assert finished
        assert HINT in str(finished[-1]["reason"])
        escalated = [m for m in loop.receiver.messages if HINT in str(m.get("text"))]
        assert escalated, loop.receiver.messages
        await loop.wait_audit("breaker_opened", playbook="store-down", timeout=10)
        safety = await loop.api("/api/v1/safety")
        assert ("store-down", "store-s1") in [
            (b["playbook"], b["target"]) for b in safety["breakers"]
        ]
        async with loop.http.get(f"{loop.url}/metrics") as response:
            exported = await response.text()
        assert (
            'remediator_kubernetes_permission_denied_total{resource="pods",verb="list"} 1.0'
        ) in exported
        # The diagnosis failed, saying so, before any branch was taken on what it missed.
        (diagnose,) = [s for s in detail["steps"] if s["name"] == "diagnose"]
        assert diagnose["outcome"] == "failed"
        assert not [
            s for s in detail["steps"] if s["phase"] == "steps" and s["outcome"] == "succeeded"
        ]


async def test_remediators_own_token_is_refused_outside_store_and_platform_namespaces(
    tmp_path: Path,
) -> None:
    """Not broader than needed: with exactly the manifests' RBAC, remediator's token may write
    in a store namespace but not in kube-system, and may not read Secrets outside stores."""
    settings = closedloop.LoopSettings(stores=("s1",), monitoring=False)
    async with (
        closedloop.run(workdir=tmp_path / "loop", settings=settings) as loop,
        kubernetes.connect(
            KubernetesSettings(kubeconfig=str(loop.platform.remediator_kubeconfig))
        ) as kube,
    ):
        assert kube is not None
        store_pods = await kube.list(kubernetes.PODS, namespace="store-s1")
        assert store_pods is not None
        with pytest.raises(kubernetes.KubeForbiddenError):
            await kube.list(kubernetes.SECRETS, namespace="kube-system")
        with pytest.raises(kubernetes.KubeForbiddenError):
            await kube.list(kubernetes.SECRETS, namespace="default")
        with pytest.raises(kubernetes.KubeForbiddenError):
            await kube.create(
                kubernetes.CONFIGMAPS,
                {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x"}},
                namespace="kube-system",
            )
        with pytest.raises(kubernetes.KubeForbiddenError):
            await kube.delete(kubernetes.PODS, "anything", namespace="kube-system")
