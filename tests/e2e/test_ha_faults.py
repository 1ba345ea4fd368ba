"""Faults of a remediator cluster on PostgreSQL (issue 10), with real processes throughout.

Replicas are real daemons on one real PostgreSQL database. The test's HTTP client stands in
for Alertmanager's delivery: it re-sends every webhook that was not answered 2xx (Alertmanager
does exactly that, with a back-off) and some that were (its repeat interval), and sends them to
whichever replica it likes, as a Kubernetes Service in front of the replicas would. A real
Alertmanager delivers to one fixed URL, so for "retry against another replica" it would need
a load balancer that these tests do not have; and its back-off would make the timing of the
retries, which is what the assertions are about, neither fast nor controllable.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import secrets
import signal
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from remediator.core import reporting
from remediator.simulation import postgresql
from remediator.simulation.monitoring import pick_free_port
from tests import daemon_fixtures
from tests.daemon_fixtures import Daemon, cli, fingerprint_of, firing

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(not postgresql.available(), reason="PostgreSQL is not installed"),
]

PASSWORD_ENV = "REMEDIATOR_STATE_PASSWORD"
QUICK_LEASES = {"lease_duration": 2.0, "renew_interval": 0.5}
"""Leases short enough that a dead replica's runs are taken over within seconds."""
MULTI_DAEMON_TIMEOUT = 120
"""A hang guard, not a speed check: several daemons start on a machine CI may share."""


def fresh_database(server: postgresql.PostgresServer) -> str:
    """A new database on ``server`` for one test; its URL."""
    return server.create_database(f"ha_faults_{secrets.token_hex(4)}")


def cluster_config(directory: Path, url: str, playbook: str, **groups: dict[str, Any]) -> Path:
    """One config for every replica: the playbook, the database, short leases."""
    (directory / "playbooks").mkdir(exist_ok=True)
    (directory / "playbooks" / "playbook.yaml").write_text(playbook, encoding="utf-8")
    sections: dict[str, Mapping[str, Any]] = {
        "state": {"path": url},
        "ha": QUICK_LEASES,
        **groups,
    }
    return daemon_fixtures.write_config(directory, **sections)


@contextlib.asynccontextmanager
async def replicas(
    count: int, config: Path, *, cwd: Path, password: str
) -> AsyncIterator[list[Daemon]]:
    """``count`` daemons on one config (one database), started at once, ready when yielded."""
    async with contextlib.AsyncExitStack() as stack:
        started = await asyncio.gather(
            *(
                stack.enter_async_context(
                    daemon_fixtures.run_daemon(
                        "--config", config, cwd=cwd, env={PASSWORD_ENV: password}
                    )
                )
                for _ in range(count)
            ),
            return_exceptions=True,
        )
        for result in started:
            if isinstance(result, BaseException):
                raise result
        yield [d for d in started if isinstance(d, Daemon)]


DUPLICATE = {"alerts": 1, "duplicates": 1, "runs": []}
"""The answer to a delivery of one alert that was acknowledged before."""


async def redeliver(
    session: aiohttp.ClientSession,
    cluster: Sequence[Daemon],
    payloads: Sequence[Mapping[str, Any]],
    *,
    senders: int = 8,
) -> list[tuple[int, Any]]:
    """Send each webhook again, to the replicas in turn, ``senders`` at a time (Alertmanager
    retries groups in parallel); the status and JSON body of each answer, in order."""
    gate = asyncio.Semaphore(senders)

    async def one(turn: int, payload: Mapping[str, Any]) -> tuple[int, Any]:
        daemon = cluster[turn % len(cluster)]
        async with (
            gate,
            session.post(f"{daemon.url}/webhook/alertmanager", json=payload) as response,
        ):
            return response.status, await response.json()

    return list(await asyncio.gather(*(one(t, p) for t, p in enumerate(payloads))))


def assert_password_never_logged(daemons: Sequence[Daemon], password: str) -> None:
    for daemon in daemons:
        assert daemon.lines, "no log to look at"
        assert not [line for line in daemon.lines if password in line], "the password was logged"


def verify_audit(url: str, password: str, cwd: Path) -> None:
    verified = cli("audit", "verify", "--state", url, cwd=cwd, env={PASSWORD_ENV: password})
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert password not in verified.stdout + verified.stderr


# 1. SIGKILL during admission ---------------------------------------------------------------

DISTINCT = 200
KILL_AFTER = DISTINCT // 2
SENDERS = 8


@pytest.mark.timeout(MULTI_DAEMON_TIMEOUT)
@pytest.mark.parametrize("retry_to", ["another replica", "the restarted replica"])
async def test_sigkill_during_admission_loses_nothing_and_duplicates_nothing(
    tmp_path: Path, postgres_server: postgresql.PostgresServer, retry_to: str
) -> None:
    url = fresh_database(postgres_server)
    password = postgres_server.password
    restarted = retry_to == "the restarted replica"
    # Restarted under the same name, as a container restarted in its pod is when
    # ha.replica_id is the pod's name.
    leases = {**QUICK_LEASES, "replica_id": "replica-a"} if restarted else QUICK_LEASES
    config = cluster_config(tmp_path, url, daemon_fixtures.QUICK_PLAYBOOK, ha=leases)
    async with contextlib.AsyncExitStack() as stack:
        doomed, *others = await stack.enter_async_context(
            replicas(1 if restarted else 2, config, cwd=tmp_path, password=password)
        )
        delivered = await daemon_fixtures.deliver_until_killed(
            doomed, daemon_fixtures.stream(DISTINCT), kill_after=KILL_AFTER, senders=SENDERS
        )
        assert delivered.in_flight, "the kill must cut requests short"
        if restarted:
            others = await stack.enter_async_context(
                replicas(1, config, cwd=tmp_path, password=password)
            )
        (receiver,) = others
        async with aiohttp.ClientSession(headers=receiver.headers()) as session:
            retried = await redeliver(session, [receiver], delivered.unacknowledged)
            assert {status for status, _ in retried} == {200}, retried
            repeated = await redeliver(session, [receiver], delivered.acknowledged[::7])
            assert repeated
            assert [a for a in repeated if a != (200, DUPLICATE)] == [], "not a duplicate"
            # The receiver adopts the dead replica's queue and takes over what it had
            # started: once its lease ran out, or at once when it is that replica restarted.
            runs = await daemon_fixtures.wait_all_finished(session, receiver)
            taken_over = await daemon_fixtures.audit_of(session, receiver, "run_taken_over")
            resumed = await daemon_fixtures.audit_of(session, receiver, "run_resumed")
        receiver.send(signal.SIGTERM)
        assert await receiver.exit_code() == 0
        assert_password_never_logged([doomed, receiver], password)
        adopted_queued = sum(
            e["count"] for e in receiver.events if e.get("event") == "runs_adopted"
        )

    per_alert = collections.Counter(run["fingerprint"] for run in runs)
    everything = {fingerprint_of(firing(i)) for i in range(DISTINCT)}
    assert set(per_alert) == everything, "an alert has no run"
    assert {fingerprint_of(p) for p in delivered.acknowledged} <= set(per_alert)
    assert [f for f, n in per_alert.items() if n != 1] == [], "an alert ran twice"
    outcomes = collections.Counter(run["status"] for run in runs)
    assert set(outcomes) == {"succeeded"}, outcomes
    assert adopted_queued + len(taken_over), (
        "the dead replica left nothing to adopt: the kill came too late"
    )
    # Each run the kill cut short was taken over once, and (its one step being read-only)
    # resumed.
    assert len({r["run_id"] for r in taken_over}) == len(taken_over)
    assert sorted(r["run_id"] for r in resumed) == sorted(r["run_id"] for r in taken_over)
    verify_audit(url, password, tmp_path)


# 4. Bad input at start-up ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fault", "cause"),
    [
        ("wrong port", "Connection refused"),
        ("wrong database", "does not exist"),
        ("wrong password", "password authentication failed"),
    ],
)
def test_bad_database_at_startup_exits_with_one_clear_line(
    tmp_path: Path, postgres_server: postgresql.PostgresServer, fault: str, cause: str
) -> None:
    server = postgres_server
    password = server.password
    host, port, database = "127.0.0.1", server.port, "remediator"
    if fault == "wrong port":
        port = pick_free_port()  # nothing listens there
    elif fault == "wrong database":
        database = f"missing_{secrets.token_hex(3)}"
    else:
        password = f"not-{secrets.token_hex(8)}"
    url = f"postgresql://{server.role}@{host}:{port}/{database}"
    config = cluster_config(tmp_path, url, daemon_fixtures.QUICK_PLAYBOOK)
    done = cli("serve", "--config", config, cwd=tmp_path, env={PASSWORD_ENV: password})
    output = done.stdout + done.stderr
    assert done.returncode != 0, output
    lines = [line for line in output.splitlines() if line.strip()]
    assert len(lines) == 1, output
    assert f"{host}:{port}/{database}" in lines[0], lines[0]
    assert cause in lines[0], lines[0]
    assert password not in output
    assert server.password not in output


# 3. Exact limits across three replicas ----------------------------------------------------

FLEET_ALERTS = 1000
STORES = 50
RUNS_PER_STORE = 3
ALERTS_PER_WEBHOOK = 5
FLEET_SENDERS = 12
FLEET_PLAYBOOK = f"""\
name: store-fix
trigger:
  matchers:
    - alertname="StoreDown"
target: "store-{{{{ alert.labels.store }}}}"
steps:
  - name: note
    action: log
    params:
      message: "store {{{{ alert.labels.store }}}}"
safety:
  target_rate: {{max_runs: {RUNS_PER_STORE}, window: 1h}}
  playbook_rate: null
  cooldown: 0
  breaker: {{failures: 1000}}
  storm: {{max_targets: 100000}}
"""


def fleet_webhooks() -> list[dict[str, Any]]:
    """Every alert once, ``ALERTS_PER_WEBHOOK`` stores' at a time (as Alertmanager groups
    them by alert name), so that each store's alerts arrive on every replica at once."""
    webhooks = []
    for first in range(0, FLEET_ALERTS, ALERTS_PER_WEBHOOK):
        alerts = [
            firing(i, alertname="StoreDown", store=f"s{i % STORES}")["alerts"][0]
            for i in range(first, first + ALERTS_PER_WEBHOOK)
        ]
        webhooks.append({**firing(first, alertname="StoreDown"), "alerts": alerts})
    return webhooks


@pytest.mark.timeout(MULTI_DAEMON_TIMEOUT)
async def test_limits_are_exact_across_three_replicas(
    tmp_path: Path, postgres_server: postgresql.PostgresServer
) -> None:
    url = fresh_database(postgres_server)
    password = postgres_server.password
    config = cluster_config(tmp_path, url, FLEET_PLAYBOOK)
    pending = fleet_webhooks()
    pending.reverse()
    reported: list[str] = []
    """The run ids the 2xx answers reported."""
    answered_by: collections.Counter[str] = collections.Counter()

    async with replicas(3, config, cwd=tmp_path, password=password) as cluster:

        async def send(session: aiohttp.ClientSession, first: int) -> None:
            turn = first
            while pending:
                payload = pending.pop()
                daemon = cluster[turn % len(cluster)]
                turn += 1
                async with session.post(
                    f"{daemon.url}/webhook/alertmanager", json=payload
                ) as response:
                    assert response.status == 200, await response.text()
                    answer = await response.json()
                assert answer["alerts"] == ALERTS_PER_WEBHOOK
                assert answer["duplicates"] == 0
                reported.extend(answer["runs"])
                answered_by[daemon.url] += 1

        async with aiohttp.ClientSession(headers=cluster[0].headers()) as session:
            await asyncio.gather(*(send(session, i) for i in range(FLEET_SENDERS)))
            runs = await daemon_fixtures.wait_all_finished(session, cluster[1])
            refusals = await daemon_fixtures.audit_of(session, cluster[2], "alert_not_run")
            assert_password_never_logged(cluster, password)
            refused_by_metrics = sum(
                [await _refusals_counted(session, daemon) for daemon in cluster],
                collections.Counter[str](),
            )

    webhooks = FLEET_ALERTS // ALERTS_PER_WEBHOOK
    assert sorted(answered_by.values())[0] >= webhooks // 3 - FLEET_SENDERS, answered_by
    per_store = collections.Counter(run["target"] for run in runs)
    assert per_store == {f"store-s{i}": RUNS_PER_STORE for i in range(STORES)}
    assert {run["status"] for run in runs} == {"succeeded"}
    assert sorted(reported) == sorted(run["id"] for run in runs)

    everything = {fingerprint_of(firing(i)) for i in range(FLEET_ALERTS)}
    refused_alerts = everything - {run["fingerprint"] for run in runs}
    assert len(refused_alerts) == FLEET_ALERTS - STORES * RUNS_PER_STORE
    assert collections.Counter(r["reason"] for r in refusals) == {
        "target_rate_limited": len(refused_alerts)
    }
    assert sorted(r["fingerprint"] for r in refusals) == sorted(refused_alerts)
    assert refused_by_metrics == {"target_rate_limited": len(refused_alerts)}
    verify_audit(url, password, tmp_path)


async def _refusals_counted(
    session: aiohttp.ClientSession, daemon: Daemon
) -> collections.Counter[str]:
    """``remediator_runs_not_started_total`` of one replica, by reason."""
    async with session.get(f"{daemon.url}/metrics") as response:
        assert response.status == 200
        text = await response.text()
    counted: collections.Counter[str] = collections.Counter()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "remediator_runs_not_started_total" and sample.value:
                counted[sample.labels["reason"]] += int(sample.value)
    return counted


# 2. PostgreSQL away for 10 s under load ---------------------------------------------------

OUTAGE = 10.0
"""Seconds the database is stopped (the issue asks for 10)."""
OUTAGE_SENDERS = 8
OUTAGE_QUERY_TIMEOUT = 1.0
"""state.query_timeout: how long a webhook waits for the database before its 503."""
RECOVERY_BUDGET = 30.0


@dataclass(frozen=True, kw_only=True)
class Answer:
    """One request of the test to a replica, and what came back (``status`` 0: no answer)."""

    replica: int
    sent: float
    answered: float
    status: int
    retry_after: str | None = None
    payload: dict[str, Any] | None = None

    def within(self, start: float, end: float) -> bool:
        """Sent and answered while the database was away."""
        return start <= self.sent and self.answered <= end


@dataclass(kw_only=True)
class Load:
    """Webhooks for new alerts to every replica in turn, and /readyz probes, until stopped."""

    cluster: list[Daemon]
    webhooks: list[Answer] = field(default_factory=list)
    probes: list[Answer] = field(default_factory=list)
    stopping: asyncio.Event = field(default_factory=asyncio.Event)
    next_alert: Iterator[int] = field(default_factory=itertools.count)

    async def send(self, session: aiohttp.ClientSession, first: int) -> None:
        turn = first
        while not self.stopping.is_set():
            replica, turn = turn % len(self.cluster), turn + 1
            payload = firing(next(self.next_alert))
            sent = time.monotonic()
            try:
                async with session.post(
                    f"{self.cluster[replica].url}/webhook/alertmanager", json=payload
                ) as response:
                    await response.read()
                    status, retry_after = response.status, response.headers.get("Retry-After")
            except (aiohttp.ClientError, TimeoutError):
                status, retry_after = 0, None
            self.webhooks.append(
                Answer(
                    replica=replica,
                    sent=sent,
                    answered=time.monotonic(),
                    status=status,
                    retry_after=retry_after,
                    payload=payload,
                )
            )
            await asyncio.sleep(0.01)

    async def probe(self, session: aiohttp.ClientSession, replica: int) -> None:
        while not self.stopping.is_set():
            sent = time.monotonic()
            try:
                async with session.get(f"{self.cluster[replica].url}/readyz") as response:
                    status = response.status
            except (aiohttp.ClientError, TimeoutError):
                status = 0
            self.probes.append(
                Answer(replica=replica, sent=sent, answered=time.monotonic(), status=status)
            )
            await asyncio.sleep(0.1)

    def acknowledged(self) -> list[dict[str, Any]]:
        return [a.payload for a in self.webhooks if 200 <= a.status < 300 and a.payload]

    def recovered(self, since: float) -> bool:
        """Every replica answered a probe 200 and a webhook 2xx, both sent after ``since``."""
        return all(
            any(p.replica == r and p.sent >= since and p.status == 200 for p in self.probes)
            and any(
                w.replica == r and w.sent >= since and 200 <= w.status < 300 for w in self.webhooks
            )
            for r in range(len(self.cluster))
        )


async def wait_for(condition: Callable[[], bool], budget: float, what: str) -> None:
    try:
        async with asyncio.timeout(budget):
            while not condition():  # noqa: ASYNC110 - polls what other tasks append
                await asyncio.sleep(0.05)
    except TimeoutError:
        raise AssertionError(f"not within {budget} s: {what}") from None


@pytest.mark.timeout(MULTI_DAEMON_TIMEOUT)
async def test_database_outage_refuses_with_503_and_recovers_by_itself(tmp_path: Path) -> None:
    with postgresql.run_postgres(tmp_path / "postgres") as server:
        url = server.url()
        config = cluster_config(
            tmp_path,
            url,
            daemon_fixtures.QUICK_PLAYBOOK,
            state={
                "path": url,
                "query_timeout": OUTAGE_QUERY_TIMEOUT,
                "connect_timeout": OUTAGE_QUERY_TIMEOUT,
            },
            ha={"lease_duration": 3.0, "renew_interval": 1.0},
        )
        async with (
            replicas(2, config, cwd=tmp_path, password=server.password) as cluster,
            aiohttp.ClientSession(
                headers=cluster[0].headers(), timeout=aiohttp.ClientTimeout(total=15)
            ) as session,
        ):
            load = Load(cluster=cluster)
            workers = [
                *(asyncio.create_task(load.send(session, i)) for i in range(OUTAGE_SENDERS)),
                *(asyncio.create_task(load.probe(session, r)) for r in range(len(cluster))),
            ]
            await wait_for(lambda: len(load.acknowledged()) >= 20, 20, "webhooks acknowledged")
            await asyncio.to_thread(server.stop)
            down, wall_down = time.monotonic(), time.time()
            await asyncio.sleep(OUTAGE)
            up, wall_up = time.monotonic(), time.time()
            await asyncio.to_thread(server.start)
            await wait_for(lambda: load.recovered(up), RECOVERY_BUDGET, "every replica recovered")
            load.stopping.set()
            await asyncio.gather(*workers)

            # Alertmanager sends again whatever was not acknowledged.
            unacknowledged = [
                a.payload for a in load.webhooks if a.payload and not 200 <= a.status < 300
            ]
            retried = await redeliver(session, cluster, unacknowledged)
            assert {status for status, _ in retried} == {200}, retried
            runs = await daemon_fixtures.wait_all_finished(session, cluster[1])
            assert [d.process.returncode for d in cluster] == [None, None], "a replica died"
            for daemon in cluster:
                daemon.send(signal.SIGTERM)
            assert [await d.exit_code() for d in cluster] == [0, 0]
            assert_password_never_logged(cluster, server.password)
        verify_audit(url, server.password, tmp_path)

    during = [a for a in load.webhooks if a.within(down, up)]
    assert {a.replica for a in during} == {0, 1}, "each replica must be tried while it is away"
    # Nothing is acknowledged that the database could not have stored, and the replicas
    # answer even when they cannot store: never a 500, never silence.
    assert {(a.status, a.retry_after is not None) for a in during} == {(503, True)}
    assert {a.status for a in load.webhooks} <= {200, 503}
    assert all(a.retry_after for a in load.webhooks if a.status == 503)
    probed = [p for p in load.probes if p.within(down, up)]
    assert {p.replica for p in probed} == {0, 1}
    assert {p.status for p in probed} == {503}, "ready without its database"

    # A claim reads the clock before it waits (up to query_timeout) for a connection, so one
    # that commits the moment the database is back may say it started that much earlier.
    started = [reporting.parse_timestamp(r["started_at"]) for r in runs if r["started_at"]]
    meanwhile = [t for t in started if wall_down <= t <= wall_up - OUTAGE_QUERY_TIMEOUT]
    assert meanwhile == [], "a run started while the database was away"
    per_alert = collections.Counter(run["fingerprint"] for run in runs)
    acknowledged = {fingerprint_of(p) for p in load.acknowledged()}
    assert acknowledged <= set(per_alert), "an acknowledged alert was lost"
    assert set(per_alert) == {fingerprint_of(a.payload) for a in load.webhooks if a.payload}
    assert [f for f, n in per_alert.items() if n != 1] == [], "an alert ran twice"
    assert {run["status"] for run in runs} == {"succeeded"}
