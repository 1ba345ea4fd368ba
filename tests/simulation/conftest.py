"""Fixtures: an emulator, served on a real 127.0.0.1 socket, and real clients pointed at it."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from kubernetes_asyncio import client

from remediator.simulation import kubeapi


@pytest.fixture
def emulator() -> kubeapi.KubeEmulator:
    return kubeapi.KubeEmulator()


@pytest.fixture
async def kube_url(emulator: kubeapi.KubeEmulator) -> AsyncIterator[str]:
    async with kubeapi.serve(emulator) as base_url:
        yield base_url


@pytest.fixture
async def kube_api(kube_url: str) -> AsyncIterator[client.ApiClient]:
    configuration = client.Configuration(host=kube_url)
    async with client.ApiClient(configuration) as api_client:
        yield api_client


@pytest.fixture
def core(kube_api: client.ApiClient) -> client.CoreV1Api:
    return client.CoreV1Api(kube_api)


@pytest.fixture
def apps(kube_api: client.ApiClient) -> client.AppsV1Api:
    return client.AppsV1Api(kube_api)


@pytest.fixture
def batch(kube_api: client.ApiClient) -> client.BatchV1Api:
    return client.BatchV1Api(kube_api)


@pytest.fixture
def custom(kube_api: client.ApiClient) -> client.CustomObjectsApi:
    return client.CustomObjectsApi(kube_api)


@pytest.fixture
def coordination(kube_api: client.ApiClient) -> client.CoordinationV1Api:
    return client.CoordinationV1Api(kube_api)
