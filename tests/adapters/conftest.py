"""Fixtures for adapter tests: a real Prometheus scraping a local gauge, and a client for it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from remediator.adapters import prometheus
from remediator.simulation import monitoring
from tests import monitoring_fixtures


@pytest.fixture
async def http_session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
async def gauge_target() -> AsyncIterator[monitoring_fixtures.GaugeTarget]:
    async with monitoring_fixtures.serve_gauge() as target:
        yield target


@pytest.fixture
async def prometheus_server(
    gauge_target: monitoring_fixtures.GaugeTarget, tmp_path: Path
) -> AsyncIterator[monitoring.RunningServer]:
    spec = monitoring.PrometheusSpec(
        scrape_targets=[monitoring.ScrapeTarget(job="stores", address=gauge_target.address)]
    )
    async with monitoring.run_prometheus(spec, workdir=tmp_path) as server:
        yield server


@pytest.fixture
def prometheus_api(
    http_session: aiohttp.ClientSession, prometheus_server: monitoring.RunningServer
) -> prometheus.PrometheusClient:
    return prometheus.PrometheusClient(http_session, prometheus_server.url, timeout=5.0)
