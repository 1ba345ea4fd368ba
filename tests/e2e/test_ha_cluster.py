"""High availability as a cluster does it: three ``remediator serve`` processes on one real
PostgreSQL database, in front of the simulated platform (the Kubernetes API emulator over HTTP,
real store endpoints), with real Alertmanagers where alerts come from (`tests.ha_fixtures`).

- Two Alertmanagers, peered by gossip (or partitioned), each deliver to a different replica:
  one alert, posted to both, is remediated once across the cluster, with one set of
  Kubernetes writes, and verified.
- The replica running a run is SIGKILLed between two mutating steps: another replica takes the
  run over after the lease, repeats nothing, and escalates once (resuming the run, or ending it
  ``interrupted``, as the playbook says).
- The owner only stalls (SIGSTOP) past its lease and then wakes up: it is fenced off the run.
- The leader is SIGKILLed: a follower leads within one lease (Kubernetes Lease or PostgreSQL
  advisory lock) and exports ``store_up`` again within a probe interval.

Leases are short (`ha_fixtures.LEASE_DURATION`): the waits are seconds; the daemons' start-up
is most of each test's time.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from remediator.simulation import postgresql, stores
from tests import ha_fixtures
from tests.engine.conftest import playbook_yaml
from tests.playbooks_e2e.conftest import store_alert
from tests.safety_fixtures import safety_section

pytestmark = [
    pytest.mark.e2e,
    # Each test starts two or three daemon processes (and a verifying CLI): on a loaded 2-core
    # machine their start-up alone can take 15 s; a stuck wait still fails at its DEADLINE.
    pytest.mark.timeout(120),
    pytest.mark.skipif(not postgresql.available(), reason="PostgreSQL is not installed"),
]

CLOCK_SLACK = 0.05
"""Seconds between the test's clock reading and the daemons' (same host, separate reads)."""
MARGIN = 1.5
"""Seconds of scheduling latency allowed on top of a protocol bound (a lease, a probe
interval) on a loaded 2-core CI machine; far below the bound it checks against (the fallback
of a broken takeover or election is never, or the default lease of 15 s)."""


def restart(kind: str, name: str) -> str:
    return f"""\
    action: k8s.rollout_restart
    params:
      namespace: "{{{{ target }}}}"
      kind: {kind}
      name: "{{{{ alert.labels.store_id }}}}-{name}"
"""


def storefront_check(storefront_url: str) -> str:
    """A verify check: the store's check URL answers 200 through the storefront (the
    simulated ingress, which routes by Host header)."""
    return f"""\
      action: http.request
      params:
        url: "{storefront_url}{stores.CHECK_PATH}"
        headers:
          Host: "{{{{ alert.labels.store_id }}}}.{stores.DOMAIN}"
        expect_status: [200]
"""


def store_down_playbook(storefront_url: str) -> str:
    """The runbook's fix for a store whose app is down (restart it, see the rollout through),
    verified by the store answering again."""
    return (
        playbook_yaml(
            "ha-store-down",
            f"""\
steps:
  - name: restart_app
{restart("Deployment", "app")}
  - name: wait_app
    action: k8s.wait_rollout
    timeout: 30s
    params:
      namespace: "{{{{ target }}}}"
      kind: Deployment
      name: "{{{{ alert.labels.store_id }}}}-app"
      interval: 0.2
verify:
  timeout: 15s
  interval: 0.5s
  checks:
    - name: store_answers
{storefront_check(storefront_url)}
""",
        )
        + safety_section()
    )


def two_mutations_playbook(hold_url: str, *, resume: bool) -> str:
    """Two Kubernetes writes with a step the test holds in flight between them (a POST to the
    test's `ha_fixtures.hold_server`, itself mutating)."""
    return (
        playbook_yaml(
            "ha-two-mutations",
            f"""\
resume: {str(resume).lower()}
steps:
  - name: restart_app
{restart("Deployment", "app")}
  - name: hold
    action: http.request
    timeout: 60s
    params:
      url: "{hold_url}"
      method: POST
      json: {{store: "{{{{ alert.labels.store_id }}}}"}}
  - name: restart_db
{restart("StatefulSet", "db")}
""",
            matchers=('alertname="HaTwoMutations"',),
        )
        + safety_section()
    )


@contextlib.asynccontextmanager
async def holding_cluster(
    workdir: Path, server: postgresql.PostgresServer, *, replicas: int, resume: bool
) -> AsyncIterator[tuple[ha_fixtures.Hold, ha_fixtures.HaCluster]]:
    """The cluster on `two_mutations_playbook` for store s2, and the step it holds."""
    async with (
        ha_fixtures.hold_server() as hold,
        ha_fixtures.run_cluster(
            workdir,
            server,
            replicas=replicas,
            playbooks=lambda _: {
                "ha-two-mutations": two_mutations_playbook(hold.url, resume=resume)
            },
            stores=("s2",),
            allowed_hosts=[hold.address],
        ) as cluster,
    ):
        yield hold, cluster


def alertmanager_alert(alertname: str, store_id: str) -> dict[str, Any]:
    """An alert as Prometheus POSTs it to Alertmanager's /api/v2/alerts."""
    now = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    return {
        "labels": {
            "alertname": alertname,
            "store_id": store_id,
            "namespace": f"store-{store_id}",
            "severity": "critical",
        },
        "annotations": {"summary": f"{alertname} {store_id}"},
        "startsAt": now,
        "generatorURL": "http://prometheus:9090/graph?g0.expr=store_up+%3D%3D+0",
    }


# --- 1. two Alertmanagers, three replicas, one run ----------------------------------------------


@pytest.mark.parametrize("peered", [True, False], ids=["gossiping", "partitioned"])
async def test_an_alert_from_two_alertmanagers_is_remediated_once(
    tmp_path: Path, postgres_server: postgresql.PostgresServer, peered: bool
) -> None:
    """Peered, the Alertmanagers share their notification log and normally one notifies;
    partitioned, each notifies its replica: the replicas' shared deduplication absorbs it."""
    ha_fixtures.require_alertmanager()
    async with ha_fixtures.run_cluster(
        tmp_path,
        postgres_server,
        replicas=3,
        playbooks=lambda sim: {"ha-store-down": store_down_playbook(sim.storefront_url)},
        stores=("s1",),
    ) as cluster:
        sim = cluster.platform
        sim.inject("app_down", "s1")
        assert not sim.serving("s1")
        first, second, _ = cluster.replicas
        async with ha_fixtures.run_alertmanagers(
            tmp_path / "am", [first, second], peered=peered
        ) as ams:
            alert = alertmanager_alert("StoreDown", "s1")
            for am in ams:
                await ha_fixtures.post_to_alertmanager(cluster.session, am, [alert])
            started = await cluster.wait_audit("run_started")
            detail = await cluster.wait_run(started["run_id"])
            # Both Alertmanagers have decided about their notification (sent, or found in
            # the shared log that the other sent it): nothing else is on its way.
            await ha_fixtures.wait_notified(cluster.session, ams)
            sent = [
                await ha_fixtures.am_metric(cluster.session, am, "alertmanager_notifications_total")
                for am in ams
            ]
        runs_seen = [await cluster.runs(replica) for replica in cluster.replicas]
        heard = [
            await cluster.counted(r, "remediator_alerts_received_total", status="firing")
            for r in cluster.replicas
        ]
        received = await cluster.audit("alert_received")
        duplicates = await cluster.audit("alert_duplicate")
        verified = [a for a in detail["audit"] if a["kind"] == "verification_finished"]
        writes = cluster.kube_writes("store-s1")
        checked = await cluster.verify_audit()

    # Each Alertmanager notifies its own replica, none the third.
    assert sent[0] + sent[1] == heard[0] + heard[1] and heard[2] == 0, (sent, heard)
    if peered:
        assert sent[0] + sent[1] >= 1, sent
    else:
        assert sent[0] >= 1 and sent[1] >= 1, sent
    # The first delivery admitted the alert; any other was a duplicate, on whichever replica.
    assert (len(received), len(duplicates)) == (1, sum(heard) - 1), (received, duplicates)
    # One run, whoever received the alert and however often: every replica sees the same one.
    assert [[r["id"] for r in seen] for seen in runs_seen] == [[started["run_id"]]] * 3
    assert (detail["playbook"], detail["target"], detail["status"]) == (
        "ha-store-down",
        "store-s1",
        "succeeded",
    )
    assert [(v["outcome"]) for v in verified] == ["passed"]
    assert {s["name"]: s["outcome"] for s in detail["steps"] if s["phase"] == "steps"} == {
        "restart_app": "succeeded",
        "wait_app": "succeeded",
    }
    # One set of writes reached the API: the one restart, by whichever replica ran it.
    assert writes == [("PATCH", "/apis/apps/v1/namespaces/store-s1/deployments/s1-app")]
    assert sim.healthy("s1"), sim.problems("s1")
    assert checked >= max(a["seq"] for a in detail["audit"])  # the chain holds the run
    assert cluster.escalations.bodies == []


# --- 2. the owner dies between two mutating steps --------------------------------------------


@pytest.mark.parametrize("resume", [False, True], ids=["interrupted", "resumed"])
async def test_a_run_whose_replica_is_killed_is_taken_over_once(
    tmp_path: Path, postgres_server: postgresql.PostgresServer, resume: bool
) -> None:
    async with holding_cluster(tmp_path, postgres_server, replicas=3, resume=resume) as (
        hold,
        cluster,
    ):
        entry = cluster.replicas[1]
        admitted = await ha_fixtures.post(
            cluster.session, entry, store_alert("HaTwoMutations", "s2", severity="critical")
        )
        (run_id,) = admitted["runs"]
        await hold.wait_arrived()
        owner = await cluster.owner_of(run_id, "restart_app")
        before_kill = list(cluster.kube_writes("store-s2"))
        killed_at = time.time()
        await cluster.kill(owner)

        taken = await cluster.wait_audit("run_taken_over", lambda r: r["run_id"] == run_id)
        detail = await cluster.wait_run(run_id)
        message = await cluster.escalations.next_body()
        hold.released.set()
        # Every survivor has looked for orphans again since: a second takeover (or message)
        # would have happened by now.
        await cluster.wait_renewals(rounds=2)
        taken_all = await cluster.audit("run_taken_over")
        resumed = await cluster.audit("run_resumed")
        interrupted = await cluster.audit("run_interrupted")
        writes = cluster.kube_writes("store-s2")
        takeovers = {
            r.replica_id: await cluster.counted(
                r,
                "remediator_runs_taken_over_total",
                outcome="resumed" if resume else "interrupted",
            )
            for r in cluster.live
        }
        checked = await cluster.verify_audit()

    new_owner = taken["details"]["by"]
    assert new_owner != owner.replica_id and new_owner in {r.replica_id for r in cluster.live}
    assert taken["details"] | {"by": None} == {
        "from": owner.replica_id,
        "by": None,
        "was": "running",
        "step_in_flight": "hold",
        "done": ["restart_app"],
    }
    # Taken over once the lease ran out (the last renewal came at most one interval before
    # the kill), not before, and at a renewal soon after.
    waited = ha_fixtures.recorded_at(taken) - killed_at
    assert waited >= ha_fixtures.LEASE_DURATION - ha_fixtures.RENEW_INTERVAL - CLOCK_SLACK, waited
    assert waited <= ha_fixtures.LEASE_DURATION + ha_fixtures.RENEW_INTERVAL + MARGIN, waited
    assert [r["run_id"] for r in taken_all] == [run_id]

    restart_app = ("PATCH", "/apis/apps/v1/namespaces/store-s2/deployments/s2-app")
    restart_db = ("PATCH", "/apis/apps/v1/namespaces/store-s2/statefulsets/s2-db")
    assert before_kill == [restart_app]
    assert len(hold.calls) == 1, hold.calls
    steps = {s["name"]: s["outcome"] for s in detail["steps"] if s["phase"] == "steps"}
    if resume:
        # Resumed after the step in flight: the second write, once; the first not again.
        assert writes == [restart_app, restart_db]
        assert steps == {"restart_app": "succeeded", "hold": "unknown", "restart_db": "succeeded"}
        assert [r["run_id"] for r in resumed] == [run_id]
        assert interrupted == []
        ending = "resumed after it"
    else:
        assert writes == [restart_app]
        assert detail["status"] == "interrupted"
        assert steps == {"restart_app": "succeeded", "hold": "unknown"}
        assert [r["run_id"] for r in interrupted] == [run_id]
        assert resumed == []
        ending = "ended interrupted"
    # One message, naming the run, the target, the step in flight and what was done.
    assert cluster.escalations.bodies == [message]
    text = message["text"]
    for part in (
        run_id,
        "store-s2",
        f"from replica {owner.replica_id}",
        "step 'hold' was in flight",
        "done: restart_app;",
        ending,
    ):
        assert part in text, (part, text)
    fields = {f["title"]: f["value"] for f in message["attachments"][0]["fields"]}
    assert fields == {"playbook": "ha-two-mutations", "target": "store-s2", "run": run_id}
    assert takeovers[new_owner] == 1
    assert sum(takeovers.values()) == 1
    assert checked >= max(a["seq"] for a in detail["audit"])  # the chain holds the run


async def test_a_replica_presumed_dead_that_comes_back_is_fenced(
    tmp_path: Path, postgres_server: postgresql.PostgresServer
) -> None:
    """The owner stalls (SIGSTOP) mid-step past its lease, the run is taken over and ended;
    then the owner wakes up with its step's answer in hand. It must not record that step
    nor start the next one: the store says the run is someone else's now."""
    async with holding_cluster(tmp_path, postgres_server, replicas=2, resume=False) as (
        hold,
        cluster,
    ):
        admitted = await ha_fixtures.post(
            cluster.session,
            cluster.replicas[0],
            store_alert("HaTwoMutations", "s2", severity="critical"),
        )
        (run_id,) = admitted["runs"]
        await hold.wait_arrived()
        owner = await cluster.owner_of(run_id, "restart_app")
        (survivor,) = [r for r in cluster.replicas if r is not owner]
        cluster.freeze(owner)
        try:
            taken = await cluster.wait_audit("run_taken_over", lambda r: r["run_id"] == run_id)
            # The survivor is done with the run once it has ended it and sent the escalation
            # (audited on its own, after the message went out).
            await cluster.wait_audit("escalation_sent", lambda r: r["run_id"] == run_id)
            ended = await cluster.wait_run(run_id)
            # The held step answers while its caller sleeps: the answer waits in its socket.
            hold.released.set()
        finally:
            cluster.thaw(owner)
        lost = await cluster.wait_logged(owner, "run_lost", run_id=run_id)
        await cluster.wait_renewals(rounds=2)
        after = await cluster.run_detail(run_id)
        writes = cluster.kube_writes("store-s2")
        messages = list(cluster.escalations.bodies)
        checked = await cluster.verify_audit()

    assert taken["details"]["from"] == owner.replica_id
    assert taken["details"]["by"] == survivor.replica_id
    assert ended["status"] == "interrupted"
    # Nothing the woken replica did reached the run or the cluster.
    assert after["status"] == "interrupted"
    assert after["steps"] == ended["steps"]
    assert [a["kind"] for a in after["audit"]] == [a["kind"] for a in ended["audit"]]
    assert writes == [("PATCH", "/apis/apps/v1/namespaces/store-s2/deployments/s2-app")]
    assert len(hold.calls) == 1
    assert "owned by replica" in str(lost.get("reason")), lost
    assert owner.logged("run_abandoned_store_failed", run_id=run_id) == []
    assert len(messages) == 1 and run_id in messages[0]["text"]
    assert checked >= max(a["seq"] for a in after["audit"])  # the chain holds the run


# --- 3. the leader dies ------------------------------------------------------------------------


@pytest.mark.parametrize("elector", ["kubernetes", "postgresql"])
async def test_a_follower_leads_and_probes_once_the_leader_is_killed(
    tmp_path: Path, postgres_server: postgresql.PostgresServer, elector: str
) -> None:
    async with ha_fixtures.run_cluster(
        tmp_path,
        postgres_server,
        replicas=3,
        stores=("s1", "s2"),
        overrides={"ha": {"leader_election": elector}},
    ) as cluster:
        leader = await cluster.wait_leader()
        probed = await cluster.wait_store_up(leader, {"s1": 1.0, "s2": 1.0})
        followers_before = {
            r.replica_id: await cluster.store_up(r) for r in cluster.live if r is not leader
        }
        killed_at = time.time()
        await cluster.kill(leader)

        successor = await cluster.wait_leader()
        elected = await cluster.wait_audit(
            "leader_elected", lambda r: r["details"]["replica"] == successor.replica_id
        )
        exported = await cluster.wait_store_up(successor, {"s1": 1.0, "s2": 1.0})
        exported_at = time.time()
        # A whole lease later, still one leader: the survivors do not fight over it.
        await cluster.wait_renewals(
            rounds=round(ha_fixtures.LEASE_DURATION / ha_fixtures.RENEW_INTERVAL)
        )
        leaders_after = await cluster.leaders()
        remaining = [r for r in cluster.live if r is not successor]
        followers_after = {r.replica_id: await cluster.store_up(r) for r in remaining}
        changes = await cluster.audit("leader_elected")
        counted = {
            r.replica_id: await cluster.counted(
                r, "remediator_leader_changes_total", change="elected"
            )
            for r in cluster.live
        }
        lease = cluster.platform.emulator.get(
            "coordination.k8s.io/v1", "Lease", "remediator-leader", "remediator"
        )
        checked = await cluster.verify_audit()

    assert probed == {"s1": 1.0, "s2": 1.0}
    assert followers_before == {r: {} for r in followers_before}
    assert successor is not leader and not successor.killed
    elected_at = ha_fixtures.recorded_at(elected)
    waited = elected_at - killed_at
    assert waited <= ha_fixtures.LEASE_DURATION + ha_fixtures.RENEW_INTERVAL + MARGIN, waited
    if elector == "kubernetes":
        # A Lease is taken only once it has gone unrenewed for its duration.
        assert waited >= ha_fixtures.LEASE_DURATION - ha_fixtures.RENEW_INTERVAL - CLOCK_SLACK
    assert exported == {"s1": 1.0, "s2": 1.0}
    assert exported_at - elected_at <= ha_fixtures.PROBE_INTERVAL + MARGIN
    assert leaders_after == [successor]
    assert followers_after == {r.replica_id: {} for r in remaining}
    assert [(c["details"]["replica"], c["details"]["elector"]) for c in changes] == [
        (leader.replica_id, elector),
        (successor.replica_id, elector),
    ]
    assert counted == {r: (1 if r == successor.replica_id else 0) for r in counted}
    if elector == "kubernetes":
        assert lease is not None
        assert lease["spec"]["holderIdentity"] == successor.replica_id
        assert lease["spec"]["leaseTransitions"] == 1
    else:
        assert lease is None
    assert checked >= max(c["seq"] for c in changes)
