"""Leader election under exactly the RBAC the manifests grant, enforced by the emulator.

The real `LeaseElector` on the real Kubernetes client, with remediator's service-account token
(`simulation.access.install` loads the kustomize base's Role, equal to the chart's), acquires,
renews, loses, takes over and hands on its Lease without one refusal; what it sent is recorded
on the wire and must be exactly what the Role grants, so the Role grants nothing it does not
use. Any other Lease is refused, and so is any other namespace.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from aiohttp import web

from remediator import config, permissions
from remediator.adapters import kubernetes
from remediator.engine import leading
from remediator.simulation import access, kubeapi, serving
from remediator.simulation.kubeapi import authorization
from tests.deploy import rbac

LEASE_PATH = re.compile(
    r"^/apis/coordination\.k8s\.io/v1/namespaces/(?P<namespace>[^/]+)/leases(?:/(?P<name>[^/]+))?$"
)
LEASE = config.HaSettings().lease_name
DURATION = 15.0

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
Seen = tuple[str, str, str, int]
"""(RBAC verb, namespace, Lease name or "" for a collection, HTTP status)."""


class Clock:
    """The electors' monotonic clock: a lease expires when the test says so."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def emulator() -> kubeapi.KubeEmulator:
    return kubeapi.KubeEmulator()


@pytest.fixture
def seen() -> list[Seen]:
    return []


@pytest.fixture
async def kube_url(emulator: kubeapi.KubeEmulator, seen: list[Seen]) -> AsyncIterator[str]:
    @web.middleware
    async def record(request: web.Request, handler: Handler) -> web.StreamResponse:
        response = await handler(request)
        match = LEASE_PATH.match(request.path)
        if match is not None:
            verb = authorization.request_verb(
                request.method, has_name=match["name"] is not None, watch=False
            )
            seen.append((verb, match["namespace"], match["name"] or "", response.status))
        return response

    app = kubeapi.make_app(emulator)
    app.middlewares.insert(0, record)
    async with serving.serve_app(app) as url:
        yield url


@pytest.fixture
async def kube(
    emulator: kubeapi.KubeEmulator, kube_url: str
) -> AsyncIterator[kubernetes.KubeClient]:
    token = access.install(emulator).token
    async with kubernetes.KubeClient.from_url(kube_url, token=token, timeout=2.0) as client:
        yield client


def elector(
    kube: kubernetes.KubeClient,
    identity: str,
    clock: Clock,
    *,
    lease: str = LEASE,
    namespace: str = access.NAMESPACE,
) -> leading.LeaseElector:
    return leading.LeaseElector(
        kube,
        namespace=namespace,
        lease=lease,
        identity=identity,
        duration=DURATION,
        monotonic=clock,
    )


async def test_election_needs_exactly_what_the_role_grants(
    kube: kubernetes.KubeClient, emulator: kubeapi.KubeEmulator, seen: list[Seen]
) -> None:
    clock = Clock()
    first, second = elector(kube, "replica-a", clock), elector(kube, "replica-b", clock)
    assert await first.try_lead()  # creates the Lease
    assert await first.try_lead()  # renews it
    assert not await second.try_lead()  # a live holder: wait
    clock.now += DURATION + 1  # the first stops renewing; the second sees no change for long
    assert await second.try_lead()  # takes it over
    assert not await first.try_lead()  # sees the new holder
    await second.resign()  # a clean shutdown hands it on at once
    assert await first.try_lead()
    lease = emulator.get("coordination.k8s.io/v1", "Lease", LEASE, access.NAMESPACE)
    assert lease is not None
    assert lease["spec"]["holderIdentity"] == "replica-a"
    assert lease["spec"]["leaseTransitions"] == 2

    # Only the first read finds nothing (then it creates the Lease); no request is refused.
    assert [status for *_, status in seen if status >= 400] == [404]
    assert seen[0][0] == "get"
    assert {namespace for _, namespace, _, _ in seen} == {access.NAMESPACE}
    on_the_lease = {verb for verb, _, name, _ in seen if name == LEASE}
    on_any = {verb for verb, _, name, _ in seen if name == ""}
    granted = rbac.rules_by_role(access.rbac_manifests())
    assert on_the_lease == {verb for rule in granted["leader_lease"] for verb in rule["verbs"]}
    assert on_the_lease == set(permissions.LEADER_LEASE_PERMISSIONS[0].verbs)
    assert on_any == {verb for rule in granted["own_namespace"] for verb in rule["verbs"]}
    assert on_any == set(permissions.OWN_NAMESPACE_PERMISSIONS[0].verbs)
    assert [rule["resourceNames"] for rule in granted["leader_lease"]] == [[LEASE]]


async def test_another_lease_in_the_namespace_is_refused(
    kube: kubernetes.KubeClient, emulator: kubeapi.KubeEmulator, seen: list[Seen]
) -> None:
    emulator.create(
        {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {"name": "some-controller", "namespace": access.NAMESPACE},
            "spec": {"holderIdentity": "some-controller-0", "leaseDurationSeconds": 15},
        }
    )
    intruder = elector(kube, "replica-a", Clock(), lease="some-controller")
    with pytest.raises(kubernetes.KubeForbiddenError):
        await intruder.try_lead()
    with pytest.raises(kubernetes.KubeForbiddenError):
        await kube.replace(
            kubernetes.LEASES,
            "some-controller",
            {
                "apiVersion": "coordination.k8s.io/v1",
                "kind": "Lease",
                "metadata": {"name": "some-controller", "namespace": access.NAMESPACE},
                "spec": {"holderIdentity": "replica-a"},
            },
            namespace=access.NAMESPACE,
        )
    assert [(verb, status) for verb, _, _, status in seen] == [("get", 403), ("update", 403)]
    lease = emulator.get("coordination.k8s.io/v1", "Lease", "some-controller", access.NAMESPACE)
    assert lease is not None
    assert lease["spec"]["holderIdentity"] == "some-controller-0"


async def test_the_lease_of_another_namespace_is_refused(
    kube: kubernetes.KubeClient, emulator: kubeapi.KubeEmulator, seen: list[Seen]
) -> None:
    emulator.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "elsewhere"}})
    outside = elector(kube, "replica-a", Clock(), namespace="elsewhere")
    with pytest.raises(kubernetes.KubeForbiddenError):
        await outside.try_lead()
    assert [(verb, status) for verb, _, _, status in seen] == [("get", 403)]
    assert emulator.get("coordination.k8s.io/v1", "Lease", LEASE, "elsewhere") is None
