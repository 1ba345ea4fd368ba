"""The real kubectl against the emulator: discovery, Table printing, CRDs, writes, watch."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from remediator.simulation import kubeapi

from . import manifests

KUBECTL = shutil.which("kubectl")
pytestmark = pytest.mark.skipif(KUBECTL is None, reason="kubectl is not installed")

Kubectl = Callable[..., Awaitable[str]]


class KubectlError(Exception):
    pass


@pytest.fixture
def store(emulator: kubeapi.KubeEmulator) -> kubeapi.KubeEmulator:
    part_of = {manifests.PART_OF: "store-platform"}
    emulator.seed([
        manifests.namespace("store-berlin", labels=part_of),
        manifests.namespace("store-paris", labels=part_of),
        manifests.namespace("monitoring"),
        manifests.pod("php-0", "store-berlin", labels={"app": "php"}, phase="Running"),
        manifests.pod("php-1", "store-berlin", labels={"app": "php"}, phase="Pending"),
        manifests.pod("php-0", "store-paris", labels={"app": "php"}, phase="Running"),
        manifests.deployment("php", "store-berlin", replicas=2),
        manifests.certificate("berlin-tls", "store-berlin", ready="False"),
    ])  # fmt: skip
    return emulator


def environment(home: Path) -> dict[str, str]:
    # A private HOME keeps kubectl away from any real ~/.kube (config and cache).
    keep = {k: v for k, v in os.environ.items() if k in ("PATH", "LANG", "TMPDIR")}
    return {**keep, "HOME": str(home)}


@pytest.fixture
async def kubectl(kube_url: str, tmp_path: Path) -> AsyncIterator[Kubectl]:
    kubeconfig = kubeapi.write_kubeconfig(tmp_path / "kubeconfig", kube_url)
    base = [f"--kubeconfig={kubeconfig}", f"--cache-dir={tmp_path / 'cache'}"]

    async def run(*args: str, ok: bool = True) -> str:
        assert KUBECTL is not None
        process = await asyncio.create_subprocess_exec(
            KUBECTL, *base, *args,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=environment(tmp_path),
        )  # fmt: skip
        out, err = await process.communicate()
        if (process.returncode == 0) != ok:
            raise KubectlError(f"kubectl {' '.join(args)}: rc={process.returncode}: {err.decode()}")
        return out.decode() if ok else err.decode()

    yield run


def table(output: str) -> list[list[str]]:
    return [line.split() for line in output.strip().splitlines()]


@pytest.mark.usefixtures("store")
async def test_namespaces_by_label_as_names(kubectl: Kubectl) -> None:
    out = await kubectl(
        "get", "namespaces", "-l", f"{manifests.PART_OF}=store-platform", "-o", "name"
    )
    assert out.split() == ["namespace/store-berlin", "namespace/store-paris"]


@pytest.mark.usefixtures("store")
async def test_namespaces_by_label_as_json(kubectl: Kubectl) -> None:
    out = await kubectl(
        "get", "namespaces", "-l", f"{manifests.PART_OF}=store-platform", "-o", "json"
    )
    listing = json.loads(out)
    assert listing["kind"] == "List"
    assert [i["metadata"]["name"] for i in listing["items"]] == ["store-berlin", "store-paris"]
    assert all(i["status"]["phase"] == "Active" for i in listing["items"])


@pytest.mark.usefixtures("store")
async def test_get_pods_prints_the_server_table(kubectl: Kubectl) -> None:
    rows = table(await kubectl("get", "pods", "-n", "store-berlin"))
    assert rows[0] == ["NAME", "READY", "STATUS", "RESTARTS", "AGE"]
    assert [(r[0], r[1], r[2]) for r in rows[1:]] == [
        ("php-0", "0/1", "Running"),
        ("php-1", "0/1", "Pending"),
    ]


@pytest.mark.usefixtures("store")
async def test_get_pods_in_all_namespaces_with_a_selector(kubectl: Kubectl) -> None:
    rows = table(await kubectl("get", "pods", "-A", "-l", "app=php", "--field-selector",
                               "status.phase=Running"))  # fmt: skip
    assert rows[0][:2] == ["NAMESPACE", "NAME"]
    assert [(r[0], r[1]) for r in rows[1:]] == [("store-berlin", "php-0"), ("store-paris", "php-0")]


@pytest.mark.usefixtures("store")
async def test_get_deployments(kubectl: Kubectl) -> None:
    rows = table(await kubectl("get", "deploy", "-n", "store-berlin"))
    assert rows[0] == ["NAME", "READY", "UP-TO-DATE", "AVAILABLE", "AGE"]
    assert rows[1][:4] == ["php", "0/2", "0", "0"]


@pytest.mark.usefixtures("store")
async def test_get_custom_resources_through_discovery(kubectl: Kubectl) -> None:
    rows = table(await kubectl("get", "certificates", "-n", "store-berlin"))
    assert rows[0] == ["NAME", "READY", "SECRET", "AGE"]
    assert rows[1][:3] == ["berlin-tls", "False", "berlin-tls-tls"]
    assert (await kubectl("get", "cert", "-n", "store-berlin", "-o", "name")).split() == [
        "certificate.cert-manager.io/berlin-tls"
    ]


async def test_writes_through_kubectl(
    kubectl: Kubectl, store: kubeapi.KubeEmulator, tmp_path: Path
) -> None:
    await kubectl("scale", "deployment/php", "-n", "store-berlin", "--replicas=5")
    scaled = store.get("apps/v1", "Deployment", "php", "store-berlin")
    assert scaled is not None
    assert scaled["spec"]["replicas"] == 5

    await kubectl("rollout", "restart", "deployment/php", "-n", "store-berlin")
    restarted = store.get("apps/v1", "Deployment", "php", "store-berlin")
    assert restarted is not None
    annotations = restarted["spec"]["template"]["metadata"]["annotations"]
    assert "kubectl.kubernetes.io/restartedAt" in annotations

    manifest = tmp_path / "settings.json"
    settings = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "settings", "namespace": "store-paris"},
        "data": {"a": "1"},
    }
    manifest.write_text(json.dumps(settings))
    await kubectl("create", "-f", str(manifest))
    settings["data"] = {"a": "2"}
    manifest.write_text(json.dumps(settings))
    await kubectl("apply", "-f", str(manifest))
    applied = store.get("v1", "ConfigMap", "settings", "store-paris")
    assert applied is not None
    assert applied["data"] == {"a": "2"}

    error = await kubectl(
        "patch", "deployment/php", "-n", "store-berlin", "--type=json",
        "-p", '[{"op": "test", "path": "/spec/replicas", "value": 1}]',
        ok=False,
    )  # fmt: skip
    assert "test failed" in error

    await kubectl("delete", "namespace", "store-paris")
    assert store.get("v1", "Namespace", "store-paris") is None
    assert store.list("v1", "Pod", "store-paris") == []


async def test_logs(kubectl: Kubectl, store: kubeapi.KubeEmulator) -> None:
    store.set_pod_log("store-berlin", "php-0", "app", "starting\nready\nOOMKilled\n")
    assert await kubectl("logs", "-n", "store-berlin", "php-0", "--tail=2") == "ready\nOOMKilled\n"


@pytest.mark.usefixtures("store")
async def test_watch_prints_changes(kubectl: Kubectl, kube_url: str, tmp_path: Path) -> None:
    assert KUBECTL is not None
    kubeconfig = kubeapi.write_kubeconfig(tmp_path / "watch-kubeconfig", kube_url)
    process = await asyncio.create_subprocess_exec(
        KUBECTL, f"--kubeconfig={kubeconfig}", f"--cache-dir={tmp_path / 'cache'}",
        "get", "pods", "-n", "store-paris", "--watch", "--output-watch-events",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=environment(tmp_path),
    )  # fmt: skip
    assert process.stdout is not None
    try:
        header = (await process.stdout.readline()).split()
        assert header[:3] == [b"EVENT", b"NAME", b"READY"]
        assert (await process.stdout.readline()).split()[:2] == [b"ADDED", b"php-0"]
        await kubectl("delete", "pod", "php-0", "-n", "store-paris")
        assert (await process.stdout.readline()).split()[:2] == [b"DELETED", b"php-0"]
    finally:
        process.terminate()
        await process.communicate()
