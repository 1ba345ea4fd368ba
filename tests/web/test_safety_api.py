"""The safety envelope through HTTP: each safeguard stops what it should, lets through what it
should, and leaves an audit record for every refusal.

Alerts arrive at the real webhook, operators act through the real control API, runs go through
the real scheduler and executor into a real SQLite store; only the actions are test ones (see
:mod:`tests.safety_fixtures`). Escalations go to a real local HTTP receiver.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import structlog
from aiohttp import web
from aiohttp.test_utils import TestClient
from pytest_aiohttp import AiohttpClient

from remediator.core.runs import AuditKind, RunStatus, StepOutcome
from tests.engine.conftest import playbook_yaml
from tests.safety_fixtures import (
    API_TOKEN,
    DEADLINE,
    WEBHOOK_TOKEN,
    Rig,
    Sink,
    bearer,
    dumps,
    firing,
    http_sink,
    open_rig,
    refiring,
    safety_section,
)

Client = TestClient[web.Request, web.Application]
MakeRig = Callable[..., Awaitable[tuple[Rig, Client]]]


def playbook(
    name: str,
    body: str,
    *,
    alertname: str = "StoreDown",
    target: str = "store-{{ alert.labels.store_id }}",
    **safety: Any,
) -> str:
    """A playbook on one alert with ``body`` (its steps), every limit lifted but ``safety``."""
    matchers = (f'alertname="{alertname}"',)
    return playbook_yaml(name, body, matchers=matchers, target=target) + safety_section(**safety)


CHANGE_STEPS = """\
    steps:
      - name: change
        action: test.mutate
        params:
          value: "{{ alert.labels.store_id }}"
    """
"""One mutating step."""

HALTABLE = playbook(
    "store-halt",
    """\
    steps:
      - name: wait
        action: test.hold
        params:
          key: "{{ target }}"
      - name: change
        action: test.mutate
        params:
          value: "{{ target }}"
    """,
)
"""A read-only step the test holds, then a mutating one."""


def destructive(*, dry_run: bool = False, **safety: Any) -> str:
    wipe = """\
    steps:
      - name: wipe
        action: test.destroy
        params:
          value: "{{ target }}"
    """
    text = playbook("store-wipe", wipe, allow_destructive=True, approval="destructive", **safety)
    return ("dry_run: true\n" if dry_run else "") + text


FAILING = playbook(
    "store-fail",
    """\
    steps:
      - name: restart
        action: test.fail
        params:
          kind: permanent
          message: store did not come back
    """,
    breaker={"failures": 2, "reset_after": "1h"},
)


def holding(name: str, **options: Any) -> str:
    """One read-only step the test holds, keyed by the run's target."""
    wait = """\
    steps:
      - name: wait
        action: test.hold
        params:
          key: "{{ target }}"
    """
    return playbook(name, wait, **options)


PLATFORM = playbook(
    "platform-restart",
    """\
    steps:
      - name: restart_all
        action: test.mutate
        params:
          value: platform
    """,
    alertname="StorePlatformDown",
    target="platform",
)
"""The platform-level playbook a storm may run instead; no alert of its own fires here."""


@pytest.fixture
async def sink() -> AsyncIterator[Sink]:
    async with http_sink() as started:
        yield started


@pytest.fixture
async def make_rig(
    tmp_path: Path, aiohttp_client: AiohttpClient, sink: Sink
) -> AsyncIterator[MakeRig]:
    """A Rig on these playbooks (name → YAML) and a client of its app; closed at teardown."""
    built: list[Rig] = []
    async with aiohttp.ClientSession() as session:

        async def make(playbooks: Mapping[str, str], **options: Any) -> tuple[Rig, Client]:
            directory = tmp_path / f"rig-{len(built)}"
            directory.mkdir()
            rig = await open_rig(
                directory, playbooks, session=session, notify_url=sink.url, **options
            )
            built.append(rig)
            client: Client = await aiohttp_client(rig.app())
            return rig, client

        try:
            yield make
        finally:
            for rig in built:
                await rig.close()
                await rig.store.close()


async def post_alert(client: Client, payload: dict[str, Any]) -> dict[str, Any]:
    async with client.post(
        "/webhook/alertmanager", json=payload, headers=bearer(WEBHOOK_TOKEN)
    ) as response:
        assert response.status == 200, await response.text()
        body: dict[str, Any] = await response.json()
        return body


async def call(
    client: Client,
    path: str,
    body: Any = None,
    *,
    method: str = "POST",
    status: int = 200,
    token: str | None = API_TOKEN,
) -> Any:
    """One control API call; asserts the HTTP status and returns the JSON body."""
    headers = bearer(token) if token is not None else {}
    async with client.request(method, path, json=body, headers=headers) as response:
        assert response.status == status, await response.text()
        return await response.json()


async def only_run(client: Client, payload: dict[str, Any]) -> str:
    admitted = await post_alert(client, payload)
    (run_id,) = admitted["runs"]
    assert isinstance(run_id, str)
    return run_id


async def wait_awaiting(client: Client, run_id: str) -> dict[str, Any]:
    """Poll GET /api/v1/safety until the run waits for approval; that status."""
    async with asyncio.timeout(DEADLINE):
        while True:
            status: dict[str, Any] = await call(client, "/api/v1/safety", method="GET")
            if run_id in status["awaiting_approval"]:
                return status
            await asyncio.sleep(0.01)


# Control API: authentication and bodies


CONTROL_CALLS = [
    ("GET", "/api/v1/safety", None),
    ("POST", "/api/v1/pause", {"by": "alice", "reason": "maintenance"}),
    ("POST", "/api/v1/resume", {"by": "alice"}),
    ("POST", "/api/v1/breakers/reset", {"by": "alice", "playbook": "store-change"}),
    ("POST", "/api/v1/runs/0123abcd/approve", {"by": "alice"}),
    ("POST", "/api/v1/runs/0123abcd/reject", {"by": "alice"}),
]


@pytest.mark.parametrize("token", [None, WEBHOOK_TOKEN, "wrong"], ids=["none", "webhook", "wrong"])
@pytest.mark.parametrize(
    ("method", "path", "body"), CONTROL_CALLS, ids=[c[1] for c in CONTROL_CALLS]
)
async def test_control_needs_the_api_token(
    make_rig: MakeRig, token: str | None, method: str, path: str, body: Any
) -> None:
    rig, client = await make_rig({"store-change": playbook("store-change", CHANGE_STEPS)})

    refused = await call(client, path, body, method=method, status=401, token=token)

    assert refused["error"] == "unauthorized"
    assert not await rig.store.is_paused()
    assert await rig.audit(AuditKind.PAUSED) == []


BAD_BODIES = [
    ("/api/v1/pause", {"reason": "maintenance"}, "by"),
    ("/api/v1/pause", {"by": "alice"}, "reason"),
    ("/api/v1/pause", {"by": "alice", "reason": ""}, "reason"),
    ("/api/v1/pause", {"by": "alice smith", "reason": "maintenance"}, "by"),
    ("/api/v1/pause", {"by": "alice", "reason": "x" * 513}, "reason"),
    ("/api/v1/pause", ["alice"], "body"),
    ("/api/v1/resume", {}, "by"),
    ("/api/v1/breakers/reset", {"by": "alice"}, "playbook"),
    ("/api/v1/breakers/reset", {"by": "alice", "playbook": "p", "target": ""}, "target"),
    ("/api/v1/runs/0123abcd/approve", {"comment": "ok"}, "by"),
    ("/api/v1/runs/not-a-run-id/approve", {"by": "alice"}, "run_id"),
]


@pytest.mark.parametrize(
    ("path", "body", "field"),
    BAD_BODIES,
    ids=[f"{path.rsplit('/', 1)[1]}-{field}-{i}" for i, (path, _, field) in enumerate(BAD_BODIES)],
)
async def test_a_bad_body_is_400_naming_the_field(
    make_rig: MakeRig, path: str, body: Any, field: str
) -> None:
    rig, client = await make_rig({"store-change": playbook("store-change", CHANGE_STEPS)})

    refused = await call(client, path, body, status=400)

    assert (refused["error"], refused["field"]) == ("bad_request", field)
    assert not await rig.store.is_paused()
    assert await rig.audit(AuditKind.PAUSED) == []


async def test_a_body_that_is_not_json_is_400(make_rig: MakeRig) -> None:
    _, client = await make_rig({"store-change": playbook("store-change", CHANGE_STEPS)})

    async with client.post(
        "/api/v1/pause",
        data=b"by=alice",
        headers={**bearer(API_TOKEN), "Content-Type": "application/json"},
    ) as response:
        assert response.status == 400
        assert (await response.json())["field"] == "body"


# Kill switch


async def test_paused_alerts_are_accepted_deduplicated_audited_and_not_run(
    make_rig: MakeRig,
) -> None:
    rig, client = await make_rig({"store-change": playbook("store-change", CHANGE_STEPS)})

    paused = await call(client, "/api/v1/pause", {"by": "alice", "reason": "db migration"})
    first = await post_alert(client, firing("s1"))
    again = await post_alert(client, firing("s1"))
    status = await call(client, "/api/v1/safety", method="GET")

    assert paused == {"paused": True, "changed": True}
    assert first == {"alerts": 1, "duplicates": 0, "runs": []}
    assert again == {"alerts": 1, "duplicates": 1, "runs": []}
    assert (status["paused"]["by"], status["paused"]["reason"]) == ("alice", "db migration")
    assert rig.sample("remediator_paused") == 1
    assert rig.sample("remediator_paused_since_timestamp_seconds") == status["paused"]["since"]
    assert rig.sample("remediator_runs_not_started_total", reason="paused") == 1
    not_run = await rig.audit(AuditKind.ALERT_NOT_RUN)
    assert [(e.playbook, e.target, e.reason) for e in not_run] == [
        ("store-change", "store-s1", "paused")
    ]
    assert len(await rig.audit(AuditKind.ALERT_DUPLICATE)) == 1
    (switched,) = await rig.audit(AuditKind.PAUSED)
    assert (switched.reason, switched.details) == ("db migration", {"by": "alice"})
    assert await rig.all_runs() == []
    assert rig.recorder.calls == []

    # Pausing again changes nothing and records nothing.
    assert await call(client, "/api/v1/pause", {"by": "bob", "reason": "again"}) == {
        "paused": True,
        "changed": False,
    }
    assert len(await rig.audit(AuditKind.PAUSED)) == 1


async def test_resume_lets_new_alerts_run(make_rig: MakeRig) -> None:
    rig, client = await make_rig({"store-change": playbook("store-change", CHANGE_STEPS)})
    await call(client, "/api/v1/pause", {"by": "alice", "reason": "db migration"})
    await post_alert(client, firing("s1"))

    resumed = await call(client, "/api/v1/resume", {"by": "bob"})
    run_id = await only_run(client, firing("s2"))
    await rig.settle()

    assert resumed == {"paused": False, "changed": True}
    assert (await call(client, "/api/v1/safety", method="GET"))["paused"] is None
    assert rig.sample("remediator_paused") == 0
    assert rig.sample("remediator_paused_since_timestamp_seconds") == 0
    assert (await rig.run(run_id)).run.status is RunStatus.SUCCEEDED
    assert [c.params.value for c in rig.recorder.calls_of("test.mutate")] == ["s2"]
    (back,) = await rig.audit(AuditKind.RESUMED)
    assert back.details["by"] == "bob"
    assert "paused_since" in back.details
    # The alert that arrived while paused stays not run: resuming does not replay it.
    assert [r.target for r in await rig.all_runs()] == ["store-s2"]


async def test_pause_halts_a_running_run_before_its_next_mutating_step(make_rig: MakeRig) -> None:
    rig, client = await make_rig({"store-halt": HALTABLE})
    run_id = await only_run(client, refiring("s1", 1))
    await rig.started("store-s1")
    # Queued behind it: one run per target at a time.
    waiting = await only_run(client, refiring("s1", 2))

    await call(client, "/api/v1/pause", {"by": "alice", "reason": "stop everything"})
    rig.release_all()
    await rig.settle()

    queued = await rig.run(waiting)
    assert (queued.run.status, queued.run.error) == (RunStatus.CANCELLED, "paused")
    assert queued.steps == ()
    detail = await rig.run(run_id)
    assert detail.run.status is RunStatus.INTERRUPTED
    assert detail.run.error is not None
    assert "kill switch" in detail.run.error
    # The read-only step in flight finished; the mutating one never started.
    assert [(s.name, s.outcome) for s in detail.steps] == [("wait", StepOutcome.SUCCEEDED)]
    assert rig.recorder.calls_of("test.mutate") == []
    finished = [a.event for a in detail.audit if a.event.kind is AuditKind.RUN_FINISHED]
    assert [(e.outcome, e.reason) for e in finished] == [("interrupted", detail.run.error)]
    assert rig.sample("remediator_runs_total", playbook="store-halt", outcome="interrupted") == 1
    assert await rig.audit(AuditKind.BREAKER_OPENED) == []


async def test_pause_stops_a_mutating_on_failure_step_and_keeps_the_failure(
    make_rig: MakeRig,
) -> None:
    undo = """\
    steps:
      - name: wait
        action: test.hold
        params:
          key: "{{ target }}"
      - name: check
        action: test.fail
        params:
          kind: permanent
          message: still down
    on_failure:
      - name: undo
        action: test.mutate
        params:
          value: "{{ target }}"
    """
    rig, client = await make_rig({"store-undo": playbook("store-undo", undo)})
    run_id = await only_run(client, firing("s1"))
    await rig.started("store-s1")

    await call(client, "/api/v1/pause", {"by": "alice", "reason": "stop everything"})
    with structlog.testing.capture_logs() as logs:
        rig.release_all()
        await rig.settle()

    detail = await rig.run(run_id)
    # The check failed before anything was halted: that failure stands (a breaker counts it).
    assert detail.run.status is RunStatus.FAILED
    assert detail.run.error == (
        "step 'check': still down; on_failure stopped: remediation paused (kill switch)"
    )
    assert rig.recorder.calls_of("test.mutate") == []
    assert "run_crashed" not in [entry["event"] for entry in logs]


# Approvals


async def test_a_destructive_step_waits_for_approval_then_runs(make_rig: MakeRig) -> None:
    rig, client = await make_rig({"store-wipe": destructive()})
    run_id = await only_run(client, firing("s1"))

    status = await wait_awaiting(client, run_id)
    listed = await call(client, "/api/v1/runs", method="GET")

    assert status["awaiting_approval"] == [run_id]
    assert [(r["id"], r["status"]) for r in listed["items"]] == [(run_id, "awaiting_approval")]
    assert rig.sample("remediator_runs_awaiting_approval") == 1
    assert rig.recorder.calls_of("test.destroy") == []

    decided = await call(client, f"/api/v1/runs/{run_id}/approve", {"by": "alice", "comment": "ok"})
    await rig.settle()

    assert decided == {"run_id": run_id, "approved": True}
    detail = await rig.run(run_id)
    assert detail.run.status is RunStatus.SUCCEEDED
    assert [c.params.value for c in rig.recorder.calls_of("test.destroy")] == ["store-s1"]
    events = [a.event for a in detail.audit]
    kinds = [e.kind for e in events]
    assert kinds.index(AuditKind.APPROVAL_REQUESTED) < kinds.index(AuditKind.APPROVAL_DECIDED)
    assert kinds.index(AuditKind.APPROVAL_DECIDED) < kinds.index(AuditKind.STEP_FINISHED)
    requested = events[kinds.index(AuditKind.APPROVAL_REQUESTED)]
    assert requested.details["step"] == "wipe"
    assert requested.details["action"] == "test.destroy"
    assert requested.details["params"]["value"] == "store-s1"
    decision = events[kinds.index(AuditKind.APPROVAL_DECIDED)]
    assert (decision.outcome, decision.reason, decision.details["by"]) == (
        "approved",
        "ok",
        "alice",
    )
    assert rig.sample("remediator_runs_awaiting_approval") == 0
    assert (await call(client, "/api/v1/safety", method="GET"))["awaiting_approval"] == []


async def test_a_rejected_run_never_runs_its_destructive_step(make_rig: MakeRig) -> None:
    rig, client = await make_rig({"store-wipe": destructive()})
    run_id = await only_run(client, firing("s1"))
    await wait_awaiting(client, run_id)

    await call(client, f"/api/v1/runs/{run_id}/reject", {"by": "bob", "comment": "not now"})
    await rig.settle()

    detail = await rig.run(run_id)
    assert detail.run.status is RunStatus.REJECTED
    assert detail.run.error == "step 'wipe' rejected by bob: not now"
    assert rig.recorder.calls_of("test.destroy") == []
    assert detail.steps == ()
    (decision,) = [a.event for a in detail.audit if a.event.kind is AuditKind.APPROVAL_DECIDED]
    assert (decision.outcome, decision.details["by"]) == ("rejected", "bob")
    # A rejection is an operator's decision, not a failure of the playbook.
    assert await rig.audit(AuditKind.BREAKER_OPENED) == []


async def test_an_unanswered_approval_times_out_as_rejected(make_rig: MakeRig) -> None:
    rig, client = await make_rig({"store-wipe": destructive(approval_timeout="200ms")})
    run_id = await only_run(client, firing("s1"))

    detail = await rig.wait_status(run_id, RunStatus.REJECTED)

    assert detail.run.error is not None
    assert "rejected by timeout" in detail.run.error
    assert rig.recorder.calls_of("test.destroy") == []
    (decision,) = [a.event for a in detail.audit if a.event.kind is AuditKind.APPROVAL_DECIDED]
    assert (decision.outcome, decision.details["by"]) == ("rejected", "timeout")
    await call(client, f"/api/v1/runs/{run_id}/approve", {"by": "alice"}, status=409)


async def test_deciding_a_run_that_is_not_waiting_is_409(make_rig: MakeRig) -> None:
    rig, client = await make_rig({"store-wipe": destructive()})
    run_id = await only_run(client, firing("s1"))
    await wait_awaiting(client, run_id)
    await call(client, f"/api/v1/runs/{run_id}/approve", {"by": "alice"})
    await rig.settle()

    for target in (run_id, "0123456789abcdef0123456789abcdef"):
        for verb in ("approve", "reject"):
            conflict = await call(
                client, f"/api/v1/runs/{target}/{verb}", {"by": "mallory"}, status=409
            )
            assert conflict["error"] == "not_awaiting_approval"
    decided = await rig.audit(AuditKind.APPROVAL_DECIDED)
    assert [e.details["by"] for e in decided] == ["alice"]
    assert len(rig.recorder.calls_of("test.destroy")) == 1


async def test_a_malformed_run_id_is_refused_before_any_lookup(make_rig: MakeRig) -> None:
    _, client = await make_rig({"store-wipe": destructive()})

    for verb in ("approve", "reject"):
        refused = await call(
            client, f"/api/v1/runs/not-a-run-id/{verb}", {"by": "alice"}, status=400
        )
        assert refused["field"] == "run_id"


async def test_a_dry_run_needs_no_approval(make_rig: MakeRig) -> None:
    rig, client = await make_rig({"store-wipe": destructive(dry_run=True)})
    run_id = await only_run(client, firing("s1"))
    await rig.settle()

    detail = await rig.run(run_id)
    assert detail.run.status is RunStatus.SUCCEEDED
    assert detail.run.dry_run
    assert [(s.name, s.outcome) for s in detail.steps] == [("wipe", StepOutcome.DRY_RUN)]
    assert rig.recorder.calls_of("test.destroy") == []
    assert await rig.audit(AuditKind.APPROVAL_REQUESTED) == []


async def test_an_approval_given_while_paused_does_not_override_the_kill_switch(
    make_rig: MakeRig,
) -> None:
    rig, client = await make_rig({"store-wipe": destructive()})
    run_id = await only_run(client, firing("s1"))
    await wait_awaiting(client, run_id)

    await call(client, "/api/v1/pause", {"by": "alice", "reason": "incident"})
    await call(client, f"/api/v1/runs/{run_id}/approve", {"by": "bob"})
    await rig.settle()

    detail = await rig.run(run_id)
    assert detail.run.status is RunStatus.INTERRUPTED
    assert detail.run.error is not None
    assert "kill switch" in detail.run.error
    assert rig.recorder.calls_of("test.destroy") == []


# Circuit breaker


async def test_a_breaker_opens_escalates_once_and_an_operator_resets_it(
    make_rig: MakeRig, sink: Sink
) -> None:
    rig, client = await make_rig({"store-fail": FAILING})
    failed = []
    for n in (1, 2):
        failed.append(await only_run(client, refiring("s1", n)))
        await rig.settle()

    third = await post_alert(client, refiring("s1", 3))
    await rig.services.refresh_safety()

    assert [(await rig.run(r)).run.status for r in failed] == [RunStatus.FAILED] * 2
    assert third["runs"] == []
    refused = (await rig.audit(AuditKind.ALERT_NOT_RUN))[-1]
    assert (refused.playbook, refused.target, refused.reason) == (
        "store-fail",
        "store-s1",
        "breaker_open",
    )
    assert rig.sample("remediator_runs_not_started_total", reason="breaker_open") == 1
    # The failures opened the target's breaker and the playbook's: one event, one message.
    opened = await rig.audit(AuditKind.BREAKER_OPENED)
    assert sorted(e.details["scope"] for e in opened) == ["playbook", "target"]
    assert all(e.reason == "2_consecutive_failures" for e in opened)
    (message,) = sink.bodies
    assert "circuit breaker open" in message["text"]
    assert "store-fail" in message["text"]
    (escalation,) = await rig.audit(AuditKind.ESCALATION_SENT)
    assert (escalation.outcome, escalation.reason, escalation.playbook) == (
        "sent",
        "breaker_opened",
        "store-fail",
    )
    assert rig.sample("remediator_escalations_total", kind="breaker_opened", outcome="sent") == 1
    assert rig.sample("remediator_breakers_open", playbook="store-fail") == 2
    status = await call(client, "/api/v1/safety", method="GET")
    assert sorted((b["playbook"], b["target"] or "") for b in status["breakers"]) == [
        ("store-fail", ""),
        ("store-fail", "store-s1"),
    ]

    reset = await call(client, "/api/v1/breakers/reset", {"by": "alice", "playbook": "store-fail"})
    rig.clock.catch_up()
    after = await only_run(client, refiring("s1", 4))
    await rig.settle()

    assert reset == {"closed": 2}
    assert rig.sample("remediator_breakers_open", playbook="store-fail") == 0
    closed = await rig.audit(AuditKind.BREAKER_CLOSED)
    assert [(e.reason, e.details["closed_by"]) for e in closed] == [("operator_reset", "alice")] * 2
    assert (await rig.run(after)).run.status is RunStatus.FAILED
    # One failure since the reset is not two: the breaker stays closed, nobody is paged again.
    assert len(await rig.audit(AuditKind.BREAKER_OPENED)) == 2
    assert len(sink.bodies) == 1


# Storms


async def eight_stores(rig: Rig, client: Client) -> list[list[str]]:
    """StoreDown for s1..s8, one delivery each; the runs each delivery created."""
    created = []
    for i in range(1, 9):
        created.append((await post_alert(client, firing(f"s{i}")))["runs"])
        if i == 2:
            # Two runs hold the two execution slots; s3..s5 will wait in the queue.
            await rig.started("store-s1")
            await rig.started("store-s2")
    return created


async def test_a_storm_suspends_per_target_runs_and_escalates_once(
    make_rig: MakeRig, sink: Sink
) -> None:
    storm = {"max_targets": 5, "window": "5m"}
    rig, client = await make_rig(
        {"restart-store": holding("restart-store", storm=storm)}, concurrency=2
    )

    created = await eight_stores(rig, client)
    await rig.escalator.drain()
    await rig.services.refresh_safety()

    assert [len(runs) for runs in created] == [1, 1, 1, 1, 1, 0, 0, 0]
    by_id = {r.run_id: r for r in await rig.all_runs()}
    statuses = [by_id[runs[0]].status for runs in created[:5]]
    assert statuses == [RunStatus.RUNNING] * 2 + [RunStatus.CANCELLED] * 3
    cancelled = await rig.audit(AuditKind.RUN_CANCELLED)
    assert [(e.target, e.reason) for e in cancelled] == [
        (f"store-s{i}", "storm") for i in (3, 4, 5)
    ]
    refused = await rig.audit(AuditKind.ALERT_NOT_RUN)
    assert [(e.target, e.reason) for e in refused] == [
        ("store-s6", "storm"),
        ("store-s7", "storm"),
        ("store-s8", "storm"),
    ]
    assert all(e.details["targets"] > e.details["max_targets"] == 5 for e in refused)
    (started,) = await rig.audit(AuditKind.STORM_STARTED)
    assert (started.playbook, started.alertname, started.details) == (
        "restart-store",
        "StoreDown",
        {"targets": 6},
    )
    (message,) = sink.bodies
    assert "storm of StoreDown" in message["text"]
    (escalation,) = await rig.audit(AuditKind.ESCALATION_SENT)
    assert (escalation.outcome, escalation.reason) == ("sent", "storm_started")
    assert (
        rig.sample("remediator_storm_active", playbook="restart-store", alertname="StoreDown") == 1
    )
    assert rig.sample("remediator_runs_not_started_total", reason="storm") == 6
    assert rig.sample("remediator_runs_not_started_total", reason="alert_resolved") == 0
    assert (await call(client, "/api/v1/safety", method="GET"))["storms"] == [
        {"playbook": "restart-store", "alertname": "StoreDown"}
    ]

    rig.release_all()
    await rig.settle()
    # The two runs that had started finish; nothing else ever ran.
    assert sorted(c.context.target for c in rig.recorder.calls_of("test.hold")) == [
        "store-s1",
        "store-s2",
    ]
    assert [(await rig.run(runs[0])).run.status for runs in created[:2]] == [
        RunStatus.SUCCEEDED
    ] * 2


async def test_a_storm_with_a_platform_playbook_runs_it_once_instead(
    make_rig: MakeRig, sink: Sink
) -> None:
    storm = {"max_targets": 5, "window": "5m", "playbook": "platform-restart"}
    rig, client = await make_rig(
        {
            "restart-store": holding("restart-store", storm=storm),
            "platform-restart": PLATFORM,
        },
        concurrency=2,
    )

    created = await eight_stores(rig, client)
    rig.release_all()
    await rig.settle()

    assert [len(runs) for runs in created] == [1, 1, 1, 1, 1, 1, 0, 0]
    (platform_run,) = created[5]
    detail = await rig.run(platform_run)
    assert (detail.run.playbook, detail.run.target, detail.run.status) == (
        "platform-restart",
        "platform",
        RunStatus.SUCCEEDED,
    )
    (call_,) = rig.recorder.calls_of("test.mutate")
    assert (call_.context.playbook, call_.params.value) == ("platform-restart", "platform")
    all_runs = await rig.all_runs()
    assert sorted((r.playbook, r.status) for r in all_runs) == [
        ("platform-restart", RunStatus.SUCCEEDED),
        ("restart-store", RunStatus.CANCELLED),
        ("restart-store", RunStatus.CANCELLED),
        ("restart-store", RunStatus.CANCELLED),
        ("restart-store", RunStatus.SUCCEEDED),
        ("restart-store", RunStatus.SUCCEEDED),
    ]
    assert len(await rig.audit(AuditKind.STORM_STARTED)) == 1
    assert await rig.audit(AuditKind.ESCALATION_SENT) == []
    assert sink.bodies == []


# Rate limit and cooldown


async def test_the_target_rate_limit_refuses_the_third_run_on_a_store(make_rig: MakeRig) -> None:
    limited = playbook("store-change", CHANGE_STEPS, target_rate={"max_runs": 2, "window": "1h"})
    rig, client = await make_rig({"store-change": limited})

    admitted = [await post_alert(client, refiring("s1", n)) for n in (1, 2, 3)]
    other = await post_alert(client, refiring("s2", 1))
    await rig.settle()

    assert [len(a["runs"]) for a in admitted] == [1, 1, 0]
    assert len(other["runs"]) == 1
    (refused,) = await rig.audit(AuditKind.ALERT_NOT_RUN)
    assert (refused.target, refused.reason) == ("store-s1", "target_rate_limited")
    assert refused.details == {"runs": 2, "max_runs": 2, "window": 3600.0}
    assert rig.sample("remediator_runs_not_started_total", reason="target_rate_limited") == 1
    assert sorted(c.params.value for c in rig.recorder.calls_of("test.mutate")) == [
        "s1",
        "s1",
        "s2",
    ]


async def test_the_cooldown_refuses_a_run_right_after_one_finished(make_rig: MakeRig) -> None:
    cooling = playbook("store-change", CHANGE_STEPS, cooldown="10m")
    rig, client = await make_rig({"store-change": cooling})
    first = await only_run(client, refiring("s1", 1))
    await rig.settle()
    finished_at = (await rig.run(first)).run.finished_at

    refused_now = await post_alert(client, refiring("s1", 2))
    rig.clock.now += 600
    allowed_later = await post_alert(client, refiring("s1", 3))
    await rig.settle()

    assert refused_now["runs"] == []
    assert len(allowed_later["runs"]) == 1
    (refused,) = await rig.audit(AuditKind.ALERT_NOT_RUN)
    assert (refused.target, refused.reason) == ("store-s1", "cooldown")
    assert refused.details == {"last_finished": finished_at, "cooldown": 600.0, "remaining": 600.0}
    assert len(rig.recorder.calls_of("test.mutate")) == 2


# Per-playbook concurrency


async def test_max_concurrent_holds_one_playbook_while_another_proceeds(make_rig: MakeRig) -> None:
    rig, client = await make_rig(
        {
            "store-serial": holding("store-serial", max_concurrent=1),
            "pod-check": holding(
                "pod-check", alertname="PodCrash", target="pod-{{ alert.labels.store_id }}"
            ),
        },
        concurrency=8,
    )

    for i in (1, 2, 3):
        await post_alert(client, firing(f"s{i}"))
    for i in (1, 2):
        await post_alert(client, firing(f"p{i}", alertname="PodCrash"))
    for key in ("store-s1", "pod-p1", "pod-p2"):
        await rig.started(key)

    assert rig.hold.active == {"store-serial": 1, "pod-check": 2}
    waiting = [r.target for r in await rig.all_runs() if r.status is RunStatus.QUEUED]
    assert sorted(waiting) == ["store-s2", "store-s3"]

    rig.recorder.release["store-s1"].set()
    await rig.started("store-s2")
    assert rig.hold.active["store-serial"] == 1
    rig.release_all()
    await rig.settle()

    assert rig.hold.peak == {"store-serial": 1, "pod-check": 2}
    assert [r.status for r in await rig.all_runs()] == [RunStatus.SUCCEEDED] * 5


# Scope


@pytest.mark.parametrize(
    ("store_id", "shown"),
    [("../x", "../x"), ("a" * 300, "a" * 64 + "…"), ("{{ 7*7 }}", "{{ 7*7 }}")],
    ids=["path", "300-chars", "template"],
)
async def test_an_out_of_scope_label_is_refused_before_anything_renders(
    make_rig: MakeRig, store_id: str, shown: str
) -> None:
    rig, client = await make_rig({"store-change": playbook("store-change", CHANGE_STEPS)})

    admitted = await post_alert(client, firing(store_id))
    await rig.settle()

    assert admitted["runs"] == []
    (refused,) = await rig.audit(AuditKind.ALERT_NOT_RUN)
    assert (refused.playbook, refused.target, refused.reason) == ("store-change", None, "scope")
    (problem,) = refused.details["problems"]
    assert (problem["field"], problem["value"]) == ("labels.store_id", shown)
    assert rig.sample("remediator_runs_not_started_total", reason="scope") == 1
    assert await rig.all_runs() == []
    assert rig.recorder.calls == []
    assert "store-49" not in dumps(await rig.audit())
