"""Session-wide fixtures: the real PostgreSQL server and the two state backends."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from remediator.simulation import postgresql
from tests import state_fixtures


@pytest.fixture(scope="session")
def postgres_server(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[postgresql.PostgresServer]:
    """One real server for the whole run (started on first use); a database per test."""
    with postgresql.run_postgres(tmp_path_factory.mktemp("postgres")) as server:
        yield server


@pytest.fixture(params=["sqlite", "postgresql"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> state_fixtures.Backend:
    if request.param == "sqlite":
        return state_fixtures.sqlite_backend(tmp_path / "state.db")
    server: postgresql.PostgresServer = request.getfixturevalue("postgres_server")
    return state_fixtures.postgres_backend(server)
