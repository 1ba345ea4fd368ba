"""Leader election without a cluster: a PostgreSQL session advisory lock, on the real server."""

from __future__ import annotations

import asyncio

from remediator.adapters import state
from remediator.simulation import postgresql
from tests import state_fixtures


async def test_one_leader_and_the_next_one_wins_when_its_session_ends(
    postgres_server: postgresql.PostgresServer,
) -> None:
    backend = state_fixtures.postgres_backend(postgres_server)
    async with backend.store() as first, backend.store() as second:
        assert isinstance(first, state.PostgresStateStore)
        assert isinstance(second, state.PostgresStateStore)
        a, b = first.leader_elector(), second.leader_elector()

        assert await a.try_lead()
        assert await a.try_lead(), "a leader keeps leading while its session lives"
        assert not await b.try_lead()

        # The leader's process dies: the server ends its session, and so its lock.
        with backend.raw() as admin:
            admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_locks"
                " WHERE locktype = 'advisory' AND granted"
            )
        assert not await a.try_lead(), "a leader whose session broke steps down"
        # The terminated backend exits a moment after pg_terminate_backend returns; the
        # daemon asks every renew_interval, the test a little more often.
        async with asyncio.timeout(5):
            while not await b.try_lead():  # noqa: ASYNC110 - polling is what the daemon does
                await asyncio.sleep(0.05)
        assert not await a.try_lead()

        await b.resign()
        assert await a.try_lead()
        await a.resign()
