"""`KubeClient` against the emulator over HTTP: every operation, error translation, connect()."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest
import structlog
from kubernetes_asyncio.client.exceptions import ApiException

from remediator.adapters import kubernetes
from remediator.config import KubernetesSettings
from remediator.core.errors import ConfigError
from remediator.simulation import kubeapi

from . import objects
from .conftest import ApiLog, serve_recorded

NS = "store-a"


@pytest.fixture
def store(emulator: kubeapi.KubeEmulator) -> kubeapi.KubeEmulator:
    emulator.seed(objects.healthy_store(NS))
    return emulator


def test_paths_are_percent_encoded() -> None:
    assert kubernetes.PODS.path(namespace=NS, name="../x") == (
        "/api/v1/namespaces/store-a/pods/..%2Fx"
    )
    assert kubernetes.NAMESPACES.path(name=NS, subresource="finalize") == (
        "/api/v1/namespaces/store-a/finalize"
    )
    assert kubernetes.CERTIFICATES.path(namespace=NS) == (
        "/apis/cert-manager.io/v1/namespaces/store-a/certificates"
    )
    with pytest.raises(ValueError, match=r"namespace is required"):
        kubernetes.PODS.path(name="x")


def test_resource_lookup_by_api_version_and_kind() -> None:
    assert kubernetes.resource_for("apps/v1", "Deployment") is kubernetes.DEPLOYMENTS
    assert kubernetes.resource_for("v1", "Deployment") is None


@pytest.mark.usefixtures("store")
async def test_get_and_list_with_selectors(kube: kubernetes.KubeClient) -> None:
    got = await kube.get(kubernetes.DEPLOYMENTS, "store-a-app", namespace=NS)
    assert got["metadata"]["name"] == "store-a-app"
    assert got["kind"] == "Deployment"

    by_label = await kube.list(kubernetes.PODS, namespace=NS, label_selector="app=store-a-db")
    by_field = await kube.list(
        kubernetes.SECRETS, namespace=NS, field_selector="type=helm.sh/release.v1"
    )
    namespaces = await kube.list(kubernetes.NAMESPACES)

    assert [p["metadata"]["name"] for p in by_label] == ["store-a-db-0"]
    assert sorted(s["metadata"]["name"] for s in by_field) == [
        "sh.helm.release.v1.store-a.v1",
        "sh.helm.release.v1.store-a.v2",
    ]
    assert {"default", NS} <= {n["metadata"]["name"] for n in namespaces}


async def test_list_follows_continue_tokens(
    emulator: kubeapi.KubeEmulator, kube: kubernetes.KubeClient, api_log: ApiLog
) -> None:
    emulator.seed([objects.namespace(NS)])
    emulator.seed(
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": f"cm-{i:04}", "namespace": NS},
        }
        for i in range(kubernetes.PAGE_SIZE + 3)
    )

    items = await kube.list(kubernetes.CONFIGMAPS, namespace=NS)

    assert len(items) == kubernetes.PAGE_SIZE + 3
    pages = api_log.calls("GET", "/configmaps")
    assert len(pages) == 2
    assert "continue" not in pages[0].query
    assert pages[1].query["continue"]


async def test_create_patch_in_three_dialects_and_delete(
    emulator: kubeapi.KubeEmulator, kube: kubernetes.KubeClient
) -> None:
    emulator.seed([objects.namespace(NS)])
    created = await kube.create(
        kubernetes.CONFIGMAPS,
        {"metadata": {"name": "settings"}, "data": {"a": "1"}},
        namespace=NS,
    )
    assert created["metadata"]["uid"]

    await kube.patch(kubernetes.CONFIGMAPS, "settings", {"data": {"b": "2"}}, namespace=NS)
    await kube.patch(
        kubernetes.CONFIGMAPS,
        "settings",
        {"data": {"c": "3"}},
        namespace=NS,
        patch_type=kubernetes.PatchType.STRATEGIC,
    )
    await kube.patch(
        kubernetes.CONFIGMAPS,
        "settings",
        [{"op": "remove", "path": "/data/a"}],
        namespace=NS,
        patch_type=kubernetes.PatchType.JSON,
    )
    stored = emulator.get("v1", "ConfigMap", "settings", NS)
    assert stored is not None
    assert stored["data"] == {"b": "2", "c": "3"}

    status = await kube.delete(kubernetes.CONFIGMAPS, "settings", namespace=NS)
    assert status["status"] == "Success"
    assert emulator.get("v1", "ConfigMap", "settings", NS) is None


async def test_dry_run_sends_dry_run_all_and_changes_nothing(
    emulator: kubeapi.KubeEmulator, kube: kubernetes.KubeClient, api_log: ApiLog
) -> None:
    emulator.seed(objects.healthy_store(NS))
    version = emulator.resource_version

    await kube.create(
        kubernetes.CONFIGMAPS, {"metadata": {"name": "new"}}, namespace=NS, dry_run=True
    )
    patched = await kube.patch(
        kubernetes.DEPLOYMENTS,
        "store-a-app",
        {"metadata": {"labels": {"x": "y"}}},
        namespace=NS,
        dry_run=True,
    )
    await kube.delete(kubernetes.PODS, "store-a-db-0", namespace=NS, dry_run=True)
    await kube.patch_scale(kubernetes.DEPLOYMENTS, "store-a-app", 5, namespace=NS, dry_run=True)

    assert patched["metadata"]["labels"] == {"x": "y"}
    assert emulator.resource_version == version
    assert [s.query.get("dryRun") for s in api_log.writes()] == [["All"]] * 4


async def test_delete_propagation_and_preconditions(
    emulator: kubeapi.KubeEmulator, kube: kubernetes.KubeClient
) -> None:
    emulator.seed([objects.namespace(NS)])
    (job,) = emulator.seed([objects.job("init", NS)])
    emulator.seed([objects.pod("init-x", NS, owner=job)])

    with pytest.raises(kubernetes.KubeConflictError):
        await kube.delete(kubernetes.JOBS, "init", namespace=NS, resource_version="1")
    await kube.delete(kubernetes.JOBS, "init", namespace=NS, propagation="Background")

    assert emulator.get("batch/v1", "Job", "init", NS) is None
    assert emulator.get("v1", "Pod", "init-x", NS) is None


@pytest.mark.usefixtures("store")
async def test_scale_subresource(kube: kubernetes.KubeClient) -> None:
    before = await kube.get_scale(kubernetes.STATEFULSETS, "store-a-db", namespace=NS)
    after = await kube.patch_scale(kubernetes.STATEFULSETS, "store-a-db", 3, namespace=NS)

    assert (before.replicas, before.current) == (1, 1)
    assert after.replicas == 3
    assert after.resource_version != before.resource_version


async def test_pod_logs_tail_container_previous_and_json_lines(
    emulator: kubeapi.KubeEmulator, kube: kubernetes.KubeClient, api_log: ApiLog
) -> None:
    emulator.seed([objects.namespace(NS), objects.pod("web", NS, containers=("app", "side"))])
    emulator.set_pod_log(NS, "web", "app", 'one\ntwo\n{"level": "error", "n": 3}\n')
    emulator.set_pod_log(NS, "web", "app", "before the crash\n", previous=True)

    text = await kube.pod_logs(NS, "web", container="app", tail_lines=2)
    previous = await kube.pod_logs(NS, "web", container="app", previous=True)

    # A JSON log line stays text (the generated client would hand back a dict's repr).
    assert text == 'two\n{"level": "error", "n": 3}\n'
    assert previous == "before the crash\n"
    assert api_log.calls("GET", "/log")[0].query == {"container": ["app"], "tailLines": ["2"]}
    with pytest.raises(kubernetes.KubeInvalidError, match=r"container name must be specified"):
        await kube.pod_logs(NS, "web")


async def test_finalize_namespace_clears_spec_finalizers(
    emulator: kubeapi.KubeEmulator, kube: kubernetes.KubeClient
) -> None:
    emulator.seed([objects.namespace(NS), objects.pvc("data", NS, finalizers=["hold/on"])])
    await kube.delete(kubernetes.NAMESPACES, NS)
    stuck = await kube.get(kubernetes.NAMESPACES, NS)
    assert stuck["spec"]["finalizers"] == ["kubernetes"]

    await kube.finalize_namespace(stuck, [])

    assert emulator.get("v1", "Namespace", NS) is None


# --- errors -------------------------------------------------------------------------------------


@pytest.mark.usefixtures("store")
@pytest.mark.parametrize(
    ("status", "error"),
    [
        (404, kubernetes.KubeNotFoundError),
        (409, kubernetes.KubeConflictError),
        (401, kubernetes.KubeUnauthorizedError),
        (403, kubernetes.KubeForbiddenError),
        (400, kubernetes.KubeInvalidError),
        (422, kubernetes.KubeInvalidError),
        (429, kubernetes.KubeUnavailableError),
        (500, kubernetes.KubeUnavailableError),
        (503, kubernetes.KubeUnavailableError),
        (405, kubernetes.KubeError),
    ],
    ids=str,
)
async def test_errors_are_translated_by_status(
    kube: kubernetes.KubeClient, api_log: ApiLog, status: int, error: type[Exception]
) -> None:
    api_log.fail("GET", "/deployments/store-a-app", status)

    with pytest.raises(error) as caught:
        await kube.get(kubernetes.DEPLOYMENTS, "store-a-app", namespace=NS)

    assert type(caught.value) is error
    assert isinstance(caught.value, kubernetes.KubeError)
    assert caught.value.status == status
    assert isinstance(caught.value.__cause__, ApiException)
    assert f"HTTP {status} Injected: injected {status}" in str(caught.value)


async def test_real_server_errors_keep_their_reason(
    emulator: kubeapi.KubeEmulator, kube: kubernetes.KubeClient
) -> None:
    emulator.seed([objects.namespace(NS)])

    with pytest.raises(kubernetes.KubeNotFoundError) as missing:
        await kube.get(kubernetes.PODS, "nope", namespace=NS)
    with pytest.raises(kubernetes.KubeConflictError) as exists:
        await kube.create(kubernetes.NAMESPACES, {"metadata": {"name": NS}})
    with pytest.raises(kubernetes.KubeInvalidError) as invalid:
        await kube.create(kubernetes.CONFIGMAPS, {"metadata": {"name": "Not_Valid"}}, namespace=NS)
    with pytest.raises(kubernetes.KubeInvalidError) as selector:
        await kube.list(kubernetes.PODS, namespace=NS, label_selector="a in (")

    assert missing.value.reason == "NotFound"
    assert 'pods "nope" not found' in str(missing.value)
    assert exists.value.reason == "AlreadyExists"
    assert (invalid.value.status, invalid.value.reason) == (422, "Invalid")
    assert selector.value.status == 400


@pytest.mark.usefixtures("store")
async def test_error_bodies_are_truncated(kube: kubernetes.KubeClient, api_log: ApiLog) -> None:
    api_log.fail("GET", "/pods", 500, body="x" * 5000)

    with pytest.raises(kubernetes.KubeUnavailableError) as caught:
        await kube.list(kubernetes.PODS, namespace=NS)

    detail = str(caught.value).rpartition(": ")[2]
    assert len(detail) == kubernetes.MAX_ERROR
    assert detail.endswith("…")


async def test_token_is_sent_and_401_without_it(emulator: kubeapi.KubeEmulator) -> None:
    emulator.token = "t0ken-abc"
    async with serve_recorded(emulator, ApiLog()) as url:
        async with kubernetes.KubeClient.from_url(url, token="t0ken-abc") as good:
            assert await good.get(kubernetes.NAMESPACES, "default")
        async with kubernetes.KubeClient.from_url(url) as anonymous:
            with pytest.raises(kubernetes.KubeForbiddenError) as caught:
                await anonymous.get(kubernetes.NAMESPACES, "default")
    assert caught.value.status == 401


@pytest.mark.usefixtures("store")
async def test_a_hanging_server_times_out(kube_url: str, api_log: ApiLog) -> None:
    api_log.hang("GET", "/deployments")
    async with kubernetes.KubeClient.from_url(kube_url, timeout=0.2) as kube:
        with pytest.raises(kubernetes.KubeUnavailableError, match=r"timed out") as caught:
            await kube.get(kubernetes.DEPLOYMENTS, "store-a-app", namespace=NS)
    assert caught.value.status is None
    assert isinstance(caught.value.__cause__, TimeoutError)


async def test_a_stopped_server_is_unavailable(emulator: kubeapi.KubeEmulator) -> None:
    async with serve_recorded(emulator, ApiLog()) as url:
        pass
    async with kubernetes.KubeClient.from_url(url) as kube:
        with pytest.raises(kubernetes.KubeUnavailableError, match=r"ClientConnectorError"):
            await kube.get(kubernetes.NAMESPACES, "default")
        with pytest.raises(kubernetes.KubeUnavailableError):
            await kube.pod_logs(NS, "web")


# --- connect() ----------------------------------------------------------------------------------


async def test_connect_with_a_kubeconfig_file(kube_url: str, tmp_path: Path) -> None:
    path = kubeapi.write_kubeconfig(tmp_path / "config", kube_url)
    settings = KubernetesSettings(kubeconfig=str(path), context="emulator", timeout=3.0)

    async with kubernetes.connect(settings, environ={}) as kube:
        assert kube is not None
        assert kube.timeout == 3.0
        assert await kube.get(kubernetes.NAMESPACES, "default")


async def test_connect_falls_back_to_kubeconfig_env_then_home(
    kube_url: str, tmp_path: Path
) -> None:
    path = kubeapi.write_kubeconfig(tmp_path / "elsewhere", kube_url)
    home = tmp_path / "home"
    (home / ".kube").mkdir(parents=True)
    kubeapi.write_kubeconfig(home / ".kube" / "config", kube_url)

    async with kubernetes.connect(KubernetesSettings(), environ={"KUBECONFIG": str(path)}) as kube:
        assert kube is not None
        assert await kube.list(kubernetes.NAMESPACES)
    async with kubernetes.connect(KubernetesSettings(), environ={"HOME": str(home)}) as kube:
        assert kube is not None
        assert await kube.list(kubernetes.NAMESPACES)


async def test_connect_without_any_configuration_yields_none(tmp_path: Path) -> None:
    with structlog.testing.capture_logs() as logs:
        async with kubernetes.connect(
            KubernetesSettings(), environ={"HOME": str(tmp_path)}
        ) as kube:
            assert kube is None
        async with kubernetes.connect(KubernetesSettings(enabled=False), environ={}) as off:
            assert off is None

    assert [e["event"] for e in logs] == ["kubernetes_not_configured", "kubernetes_disabled"]
    assert logs[0]["log_level"] == "warning"


@pytest.mark.parametrize(
    ("kubeconfig", "context", "environ", "message"),
    [
        ("missing", None, {}, "no such file"),
        ("config", "no-such-context", {}, "no-such-context"),
        (
            None,
            None,
            {"KUBERNETES_SERVICE_HOST": "10.0.0.1", "KUBERNETES_SERVICE_PORT": "443"},
            "in-cluster configuration",
        ),
    ],
    ids=["missing-file", "unknown-context", "in-cluster-without-token"],
)
async def test_connect_refuses_broken_configuration(
    kube_url: str,
    tmp_path: Path,
    kubeconfig: str | None,
    context: str | None,
    environ: dict[str, str],
    message: str,
) -> None:
    kubeapi.write_kubeconfig(tmp_path / "config", kube_url)
    settings = KubernetesSettings(
        kubeconfig=str(tmp_path / kubeconfig) if kubeconfig else None, context=context
    )

    with pytest.raises(ConfigError, match=message):
        async with kubernetes.connect(settings, environ=environ):
            pass


def test_helm_record_builder_matches_helm_storage() -> None:
    """The test builder itself: two base64 layers around gzip, as Helm 3 stores it."""
    record = objects.release_record("store-a", NS, revision=3, status="deployed")
    stored = base64.b64decode(record["data"]["release"])
    assert base64.b64decode(stored)[:2] == b"\x1f\x8b"
    assert record["metadata"]["labels"]["version"] == "3"
