"""The emulator authorizes service-account tokens by RBAC, as kube-apiserver does.

Requests go through the real kubernetes_asyncio client (remediator's own `KubeClient`) with a
service account's bearer token, and through the real ``kubectl`` impersonating it
(``--as``: client-go sends no token over plain HTTP) for ``kubectl auth can-i``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from remediator.adapters import kubernetes
from remediator.simulation import kubeapi
from remediator.simulation.kubeapi import authorization

from .test_kubeapi_kubectl import KUBECTL, environment

SA = "system:serviceaccount:ops:bot"
RBAC = "rbac.authorization.k8s.io/v1"


def cluster_role(name: str, *rules: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": RBAC, "kind": "ClusterRole", "metadata": {"name": name}, "rules": rules}


def role(name: str, namespace: str, *rules: dict[str, Any]) -> dict[str, Any]:
    metadata = {"name": name, "namespace": namespace}
    return {"apiVersion": RBAC, "kind": "Role", "metadata": metadata, "rules": list(rules)}


def rule(group: str, resources: list[str], verbs: list[str], **extra: Any) -> dict[str, Any]:
    return {"apiGroups": [group], "resources": resources, "verbs": verbs, **extra}


def binding(
    name: str,
    role_kind: str,
    role_name: str,
    *,
    namespace: str | None = None,
    subject: dict[str, Any] | None = None,
) -> dict[str, Any]:
    metadata: dict[str, Any] = {"name": name}
    if namespace is not None:
        metadata["namespace"] = namespace
    return {
        "apiVersion": RBAC,
        "kind": "RoleBinding" if namespace is not None else "ClusterRoleBinding",
        "metadata": metadata,
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": role_kind, "name": role_name},
        "subjects": [subject or {"kind": "ServiceAccount", "name": "bot", "namespace": "ops"}],
    }


def namespace(name: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}


def pod(name: str, ns: str) -> dict[str, Any]:
    spec = {"containers": [{"name": "app", "image": "app:1"}]}
    metadata = {"name": name, "namespace": ns}
    return {"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": spec}


def deployment(name: str, ns: str) -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": ns},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"containers": [{"name": "app", "image": "app:1"}]},
            },
        },
    }


@pytest.fixture
def cluster(emulator: kubeapi.KubeEmulator) -> kubeapi.KubeEmulator:
    """ops/bot may: read pods and their logs in store-a (RoleBinding to a ClusterRole), scale
    and patch Deployments there (a Role), patch only the Deployment "front" in store-b, list
    namespaces cluster-wide and get namespace store-a (a RoleBinding in it)."""
    emulator.seed([
        namespace("ops"), namespace("store-a"), namespace("store-b"), namespace("kube-system"),
        {"apiVersion": "v1", "kind": "ServiceAccount",
         "metadata": {"name": "bot", "namespace": "ops"}},
        pod("web-0", "store-a"), pod("web-0", "store-b"), pod("dns-0", "kube-system"),
        deployment("web", "store-a"), deployment("front", "store-b"), deployment("web", "store-b"),
        {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s", "namespace": "store-b"}},
        cluster_role("pod-reader", rule("", ["pods", "pods/log"], ["get", "list", "watch"])),
        binding("read-pods", "ClusterRole", "pod-reader", namespace="store-a"),
        role("deployer", "store-a", rule("apps", ["deployments"], ["get", "patch"]),
             rule("apps", ["*/scale"], ["get", "patch"])),
        binding("deploy", "Role", "deployer", namespace="store-a"),
        role("front", "store-b", rule("apps", ["deployments"], ["patch"], resourceNames=["front"])),
        # No namespace on the subject: the binding's own applies; here not ops, so it is not bot.
        binding("front", "Role", "front", namespace="store-b",
                subject={"kind": "ServiceAccount", "name": "bot"}),
        binding("front-ops", "Role", "front", namespace="store-b"),
        cluster_role("ns-lister", rule("", ["namespaces"], ["list"])),
        binding("list-ns", "ClusterRole", "ns-lister"),
        cluster_role("ns-getter", rule("", ["namespaces"], ["get"])),
        binding("get-own-ns", "ClusterRole", "ns-getter", namespace="store-a"),
        # Bindings to roles that do not exist, or of other subjects, grant bot nothing.
        binding("dangling", "ClusterRole", "no-such-role"),
        binding("someone-else", "ClusterRole", "pod-reader",
                subject={"kind": "ServiceAccount", "name": "other", "namespace": "ops"}),
    ])  # fmt: skip
    return emulator


@pytest.fixture
async def bot(cluster: kubeapi.KubeEmulator, kube_url: str) -> AsyncIterator[kubernetes.KubeClient]:
    token = cluster.service_account_token("ops", "bot")
    async with kubernetes.KubeClient.from_url(kube_url, token=token, timeout=5) as client:
        yield client


async def forbidden(call: Any) -> kubernetes.KubeForbiddenError:
    with pytest.raises(kubernetes.KubeForbiddenError) as caught:
        await call
    assert caught.value.status == 403
    return caught.value


async def test_role_binding_grants_its_cluster_role_in_its_namespace_only(
    bot: kubernetes.KubeClient,
) -> None:
    assert [p["metadata"]["name"] for p in await bot.list(kubernetes.PODS, namespace="store-a")]
    assert await bot.get(kubernetes.PODS, "web-0", namespace="store-a")
    error = await forbidden(bot.list(kubernetes.PODS, namespace="store-b"))
    assert str(error).endswith(
        f'pods is forbidden: User "{SA}" cannot list resource "pods" in API group "" '
        'in the namespace "store-b"'
    )
    error = await forbidden(bot.get(kubernetes.PODS, "dns-0", namespace="kube-system"))
    assert f'pods "dns-0" is forbidden: User "{SA}" cannot get resource "pods"' in str(error)


async def test_verbs_are_checked_one_by_one(bot: kubernetes.KubeClient) -> None:
    error = await forbidden(bot.delete(kubernetes.PODS, "web-0", namespace="store-a"))
    assert 'cannot delete resource "pods" in API group "" in the namespace "store-a"' in str(error)
    events = bot.watch(kubernetes.PODS, namespace="store-a", timeout_seconds=1)
    async for event in events:
        assert event.object["metadata"]["name"] == "web-0"
        break
    await events.aclose()


async def test_subresources_need_their_own_rule(
    bot: kubernetes.KubeClient, cluster: kubeapi.KubeEmulator
) -> None:
    cluster.set_pod_log("store-a", "web-0", "app", "hello\n")
    assert await bot.pod_logs("store-a", "web-0", container="app") == "hello\n"
    # A "*/scale" rule allows the scale subresource of deployments.
    scale = await bot.patch_scale(kubernetes.DEPLOYMENTS, "web", 2, namespace="store-a")
    assert scale.replicas == 2
    # deployments get+patch do not include deployments/status.
    error = await forbidden(
        bot.patch(kubernetes.DEPLOYMENTS, "web", {"status": {}}, namespace="store-a",
                  subresource="status")
    )  # fmt: skip
    assert 'cannot patch resource "deployments/status" in API group "apps"' in str(error)


async def test_api_groups_must_match(bot: kubernetes.KubeClient) -> None:
    # pod-reader grants pods in the core group; deployments are apps, jobs batch.
    error = await forbidden(bot.list(kubernetes.JOBS, namespace="store-a"))
    assert 'cannot list resource "jobs" in API group "batch"' in str(error)


async def test_resource_names_limit_a_rule_to_those_objects(bot: kubernetes.KubeClient) -> None:
    patch = {"metadata": {"annotations": {"touched": "yes"}}}
    patched = await bot.patch(kubernetes.DEPLOYMENTS, "front", patch, namespace="store-b")
    assert patched["metadata"]["annotations"] == {"touched": "yes"}
    error = await forbidden(bot.patch(kubernetes.DEPLOYMENTS, "web", patch, namespace="store-b"))
    assert f'deployments.apps "web" is forbidden: User "{SA}" cannot patch' in str(error)


async def test_cluster_role_binding_grants_everywhere_and_namespaces_are_in_themselves(
    bot: kubernetes.KubeClient,
) -> None:
    names = {n["metadata"]["name"] for n in await bot.list(kubernetes.NAMESPACES)}
    assert {"ops", "store-a", "store-b", "kube-system"} <= names
    # GET namespaces/store-a is in namespace store-a (RequestInfo), so its RoleBinding counts.
    assert (await bot.get(kubernetes.NAMESPACES, "store-a"))["metadata"]["name"] == "store-a"
    error = await forbidden(bot.get(kubernetes.NAMESPACES, "kube-system"))
    assert str(error).endswith(
        f'namespaces "kube-system" is forbidden: User "{SA}" cannot get resource "namespaces" '
        'in API group "" in the namespace "kube-system"'
    )


async def test_a_cluster_scoped_denial_says_so(bot: kubernetes.KubeClient) -> None:
    error = await forbidden(bot.delete(kubernetes.NAMESPACES, "store-b"))
    assert 'cannot delete resource "namespaces" in API group "" in the namespace "store-b"' in str(
        error
    )
    rbac = kubernetes.Resource("rbac.authorization.k8s.io", "v1", "clusterroles", "ClusterRole",
                               namespaced=False)  # fmt: skip
    error = await forbidden(bot.list(rbac))
    assert str(error).endswith(
        f'clusterroles.rbac.authorization.k8s.io is forbidden: User "{SA}" cannot list resource '
        '"clusterroles" in API group "rbac.authorization.k8s.io" at the cluster scope'
    )


async def test_the_forbidden_status_is_shaped_like_the_real_one(
    cluster: kubeapi.KubeEmulator, kube_url: str
) -> None:
    token = cluster.service_account_token("ops", "bot")
    attributes = authorization.Attributes(
        user=authorization.service_account("ops", "bot"),
        verb="get",
        api_group="",
        resource="secrets",
        name="s",
        namespace="store-b",
    )
    assert authorization.forbidden(attributes).to_status() == {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": f'secrets "s" is forbidden: User "{SA}" cannot get resource "secrets" in API '
        'group "" in the namespace "store-b"',
        "reason": "Forbidden",
        "details": {"name": "s", "kind": "secrets"},
        "code": 403,
    }
    async with kubernetes.KubeClient.from_url(kube_url, token=token, timeout=5) as client:
        error = await forbidden(client.get(kubernetes.SECRETS, "s", namespace="store-b"))
    assert error.reason == "Forbidden"


async def test_tokens_authenticate_and_the_admin_stays_unrestricted(
    cluster: kubeapi.KubeEmulator, kube_url: str
) -> None:
    async with kubernetes.KubeClient.from_url(kube_url, token="not-issued", timeout=5) as client:
        with pytest.raises(kubernetes.KubeForbiddenError) as caught:
            await client.list(kubernetes.PODS, namespace="store-a")
    assert caught.value.status == 401
    # Without credentials (no admin token configured): the harness, allowed everything.
    async with kubernetes.KubeClient.from_url(kube_url, timeout=5) as admin:
        assert await admin.get(kubernetes.SECRETS, "s", namespace="store-b")
    cluster.token = "admin-token"
    async with kubernetes.KubeClient.from_url(kube_url, token="admin-token", timeout=5) as admin:
        assert await admin.delete(kubernetes.PODS, "dns-0", namespace="kube-system")


def test_a_token_needs_an_existing_service_account(cluster: kubeapi.KubeEmulator) -> None:
    with pytest.raises(kubeapi.StatusError) as caught:
        cluster.service_account_token("ops", "nobody")
    assert caught.value.code == 404


def test_field_selector_names_the_object_of_a_list() -> None:
    assert authorization.name_from_field_selector("metadata.name=web") == "web"
    assert authorization.name_from_field_selector("a=b,metadata.name==web") == "web"
    assert authorization.name_from_field_selector("metadata.name!=web") == ""
    assert authorization.request_verb("GET", has_name=False, watch=True) == "watch"
    assert authorization.request_verb("DELETE", has_name=False, watch=False) == ("deletecollection")


# --- kubectl --------------------------------------------------------------------------------


@pytest.fixture
async def can_i(cluster: kubeapi.KubeEmulator, kube_url: str, tmp_path: Path) -> Any:
    if KUBECTL is None:
        pytest.skip("kubectl is not installed")
    kubeconfig = kubeapi.write_kubeconfig(tmp_path / "kubeconfig", kube_url)

    async def run(*args: str) -> tuple[int, str, str]:
        assert KUBECTL is not None
        process = await asyncio.create_subprocess_exec(
            KUBECTL, f"--kubeconfig={kubeconfig}", f"--cache-dir={tmp_path / 'cache'}",
            f"--as={SA}", *args,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            env=environment(tmp_path),
        )  # fmt: skip
        out, err = await process.communicate()
        assert process.returncode is not None
        return process.returncode, out.decode().strip(), err.decode().strip()

    return run


@pytest.mark.parametrize(
    ("args", "answer"),
    [
        (("get", "pods", "-n", "store-a"), "yes"),
        (("get", "pods", "--subresource=log", "-n", "store-a"), "yes"),
        (("delete", "pods", "-n", "store-a"), "no"),
        (("get", "pods", "-n", "store-b"), "no"),
        (("patch", "deployments.apps/front", "-n", "store-b"), "yes"),
        (("patch", "deployments.apps/web", "-n", "store-b"), "no"),
        (("patch", "deployments", "--subresource=scale", "-n", "store-a"), "yes"),
        (("list", "namespaces"), "yes"),
        (("get", "secrets", "-n", "kube-system"), "no"),
    ],
    ids=lambda v: " ".join(v) if isinstance(v, tuple) else v,
)
async def test_kubectl_auth_can_i(can_i: Any, args: tuple[str, ...], answer: str) -> None:
    code, out, err = await can_i("auth", "can-i", *args)
    assert out == answer, err
    assert code == (0 if answer == "yes" else 1)


async def test_kubectl_shows_the_forbidden_message(can_i: Any) -> None:
    code, _, err = await can_i("get", "secrets", "-n", "store-b")
    assert code == 1
    assert err.endswith(
        f'secrets is forbidden: User "{SA}" cannot list resource "secrets" in API group "" in '
        'the namespace "store-b"'
    )


async def test_only_who_may_impersonate_does(cluster: kubeapi.KubeEmulator, kube_url: str) -> None:
    token = cluster.service_account_token("ops", "bot")
    headers = {"Authorization": f"Bearer {token}", "Impersonate-User": "kubernetes-admin"}
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"{kube_url}/api/v1/namespaces/store-a/pods", headers=headers) as response,
    ):
        status = await response.json()
    assert response.status == 403
    assert 'cannot impersonate resource "users" in API group ""' in status["message"]
