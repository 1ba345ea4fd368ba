"""Fixtures: the simulated platform with tiny controller delays, and remediator's real actions
(its registry, `KubeClient` and HTTP session) pointed at it through its config fragment."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import structlog

from remediator import config
from remediator.adapters import kubernetes
from remediator.engine.actions import registry
from remediator.engine.actions.registry import ActionContext, Output, Resources
from remediator.simulation import controllers, platform, stores

FAST = controllers.ControllerSettings(
    rollout_delay=0.02, job_delay=0.02, certificate_delay=0.02, volume_delay=0.02
)
STORES = ("s1", "s2")
SETTINGS = platform.PlatformSettings(delays=FAST)


@pytest.fixture
async def sim(tmp_path: Path) -> AsyncIterator[platform.SimulatedPlatform]:
    async with platform.run(stores=STORES, workdir=tmp_path, settings=SETTINGS) as running:
        yield running


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
async def kube(sim: platform.SimulatedPlatform) -> AsyncIterator[kubernetes.KubeClient]:
    """remediator's client: its service account's token, so the actions run with exactly the
    RBAC of its manifests."""
    token = sim.remediator_access.token
    async with kubernetes.KubeClient.from_url(sim.kube_url, token=token, timeout=5.0) as client:
        yield client


@pytest.fixture
def settings(sim: platform.SimulatedPlatform) -> config.Settings:
    return config.from_mapping(sim.remediator_config())


@pytest.fixture
def resources(
    sim: platform.SimulatedPlatform,
    settings: config.Settings,
    http: aiohttp.ClientSession,
    kube: kubernetes.KubeClient,
) -> Resources:
    token = sim.provisioner_token_file.read_text().strip()
    return Resources(settings=settings, http=http, kube=kube, provisioner_token=token)


Act = Callable[..., Awaitable[Output]]


@pytest.fixture
def act(resources: Resources) -> Act:
    """``await act("k8s.rollout_restart", namespace=..., ...)``: one real action, run as the
    executor would run it (no envelope: the tests call what a playbook step would)."""
    actions = registry.builtin()

    async def run(name: str, /, **params: Any) -> Output:
        action = actions.get(name)
        context = ActionContext(
            resources=resources,
            dry_run=False,
            run_id="run-sim",
            playbook="sim-test",
            target=str(params.get("namespace") or params.get("store_id") or "platform"),
            deadline=asyncio.get_running_loop().time() + 10.0,
            log=structlog.get_logger("tests.sim"),
        )
        return await action.run(action.spec.params(**params), context)

    return run


@dataclasses.dataclass(frozen=True, slots=True)
class Answer:
    status: int
    body: bytes
    content_type: str
    headers: dict[str, str]


async def fetch(
    http: aiohttp.ClientSession,
    sim: platform.SimulatedPlatform,
    host: str,
    path: str = stores.CHECK_PATH,
    *,
    time_limit: float = 5.0,
) -> Answer:
    """A request to the storefront for ``host`` (a store id, or a full host name)."""
    name = host if "." in host else stores.names(host).host(sim.domain)
    async with http.get(
        sim.storefront_url + path,
        headers={"Host": name},
        timeout=aiohttp.ClientTimeout(total=time_limit),
    ) as response:
        return Answer(
            response.status, await response.read(), response.content_type, dict(response.headers)
        )


async def diagnose(act: Act, namespace: str) -> dict[str, Any]:
    output = await act("k8s.diagnose", namespace=namespace)
    return dict(output)
