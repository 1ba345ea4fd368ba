from __future__ import annotations

import copy
import itertools
import json
import pathlib
from collections.abc import Callable
from typing import Any

import pytest

from remediator.core import alerts, matching, planning, runs
from remediator.core.playbooks import Playbook, PlaybookSet, RetryPolicy, Step, Trigger
from remediator.core.runs import AuditEvent, AuditKind, NewRun

PAYLOADS = pathlib.Path(__file__).parent / "payloads"
FINGERPRINT = "46924153d5d81b9f"


def load_alert(name: str = "storedown-firing.json") -> alerts.Alert:
    raw: Any = json.loads((PAYLOADS / name).read_text())
    return alerts.parse_webhook(raw).alerts[0]


FIRING = load_alert()
RESOLVED = load_alert("storedown-resolved.json")


def playbook(
    name: str,
    *matchers: str,
    target: str = "store-{{ alert.labels.store_id }}",
    priority: int = 0,
    statuses: frozenset[alerts.AlertStatus] = frozenset({alerts.AlertStatus.FIRING}),
    dry_run: bool = False,
) -> Playbook:
    return Playbook(
        name=name,
        source=f"{name}.yaml",
        trigger=Trigger(
            matchers=tuple(
                matching.parse_matcher(m) for m in matchers or ['alertname="StoreDown"']
            ),
            statuses=statuses,
        ),
        target=target,
        steps=(Step(name="record", action="log", params={"message": "hi"}),),
        priority=priority,
        dry_run=dry_run,
    )


def run_ids() -> Callable[[], str]:
    counter = itertools.count(1)
    return lambda: f"run-{next(counter)}"


def plan(
    alert: alerts.Alert, *playbooks: Playbook, only_highest: bool = False, dry_run: bool = False
) -> Any:
    return planning.plan_admission(
        alert,
        PlaybookSet(playbooks=playbooks),
        only_highest=only_highest,
        make_run_id=run_ids(),
        dry_run=dry_run,
    )


def received(alert: alerts.Alert) -> AuditEvent:
    return AuditEvent(
        kind=AuditKind.ALERT_RECEIVED,
        fingerprint=FINGERPRINT,
        alertname="StoreDown",
        outcome=str(alert.status),
        details={"alert": alert.to_json()},
    )


def test_match_queues_a_run_on_the_rendered_target() -> None:
    store_down = playbook("store-down")

    admission = plan(FIRING, store_down)

    assert admission.key == FIRING.key
    assert admission.alert == FIRING.to_json()
    assert admission.runs == (
        NewRun(
            run_id="run-1",
            playbook="store-down",
            target="store-s1",
            dry_run=False,
            policy=store_down.safety,
        ),
    )
    assert admission.events == (received(FIRING),)
    assert admission.cancel_queued_runs is False


def test_queued_run_is_audited_as_run_queued() -> None:
    [run] = plan(FIRING, playbook("store-down")).runs

    event = planning.queued_event(FIRING.key, FIRING.name, run)

    assert event == AuditEvent(
        kind=AuditKind.RUN_QUEUED,
        run_id="run-1",
        fingerprint=FINGERPRINT,
        alertname="StoreDown",
        playbook="store-down",
        target="store-s1",
        details={"dry_run": False},
    )


def test_no_match_is_recorded_as_not_run() -> None:
    admission = plan(FIRING, playbook("disk-full", 'alertname="DiskFull"'))

    assert admission.runs == ()
    assert admission.events == (
        received(FIRING),
        AuditEvent(
            kind=AuditKind.ALERT_NOT_RUN,
            fingerprint=FINGERPRINT,
            alertname="StoreDown",
            reason="no_matching_playbook",
        ),
    )
    assert admission.cancel_queued_runs is False


def test_no_playbooks_at_all_is_no_match() -> None:
    admission = plan(FIRING)

    assert admission.runs == ()
    assert [e.reason for e in admission.events] == [None, planning.NotRun.NO_MATCHING_PLAYBOOK]


def test_resolved_without_playbook_cancels_queued_runs() -> None:
    # The playbook matches the labels but only triggers on firing alerts.
    admission = plan(RESOLVED, playbook("store-down"))

    assert admission.runs == ()
    assert admission.cancel_queued_runs is True
    assert admission.events == (
        received(RESOLVED),
        AuditEvent(
            kind=AuditKind.ALERT_NOT_RUN,
            fingerprint=FINGERPRINT,
            alertname="StoreDown",
            reason="resolved_without_playbook",
        ),
    )


def test_resolved_with_a_resolved_playbook_runs_it_and_cancels_queued_runs() -> None:
    cleanup = playbook("store-up", statuses=frozenset({alerts.AlertStatus.RESOLVED}))

    admission = plan(RESOLVED, playbook("store-down"), cleanup)

    assert [(r.playbook, r.target) for r in admission.runs] == [("store-up", "store-s1")]
    assert admission.cancel_queued_runs is True
    assert admission.events == (received(RESOLVED),)


@pytest.mark.parametrize(
    ("only_highest", "expected"),
    [(True, ["urgent"]), (False, ["urgent", "a-normal", "b-normal"])],
    ids=["only-highest", "all"],
)
def test_match_policy(only_highest: bool, expected: list[str]) -> None:
    admission = plan(
        FIRING,
        playbook("b-normal"),
        playbook("urgent", priority=10),
        playbook("a-normal"),
        only_highest=only_highest,
    )

    assert [r.playbook for r in admission.runs] == expected
    assert [r.run_id for r in admission.runs] == [f"run-{i}" for i in range(1, len(expected) + 1)]
    assert admission.events == (received(FIRING),)


@pytest.mark.parametrize(
    ("target", "error"),
    [
        ("{{ alert.labels.missing }}", "undefined: 'dict object' has no attribute 'missing'"),
        ("{{ alert.labels.store_id.__class__ }}", "forbidden by the sandbox"),
        ("{{ '' }}  ", "target rendered empty"),
        ("{{ 'x' * 300 }}", "target longer than 253 characters"),
    ],
    ids=["undefined", "sandbox", "empty", "too-long"],
)
def test_unrenderable_target_is_not_run(target: str, error: str) -> None:
    ids = run_ids()
    calls: list[str] = []

    def make_run_id() -> str:
        calls.append("called")
        return ids()

    admission = planning.plan_admission(
        FIRING,
        PlaybookSet(playbooks=(playbook("broken", target=target),)),
        only_highest=False,
        make_run_id=make_run_id,
    )

    assert admission.runs == ()
    assert calls == []
    [_, not_run] = admission.events
    assert not_run.kind is AuditKind.ALERT_NOT_RUN
    assert not_run.playbook == "broken"
    assert not_run.reason == "target_unrenderable"
    assert not_run.fingerprint == FINGERPRINT
    assert error in not_run.details["error"]


def test_unrenderable_target_does_not_stop_other_playbooks() -> None:
    admission = plan(
        FIRING,
        playbook("broken", target="{{ alert.labels.nope }}", priority=5),
        playbook("store-down"),
    )

    assert [r.playbook for r in admission.runs] == ["store-down"]
    assert [(e.kind, e.playbook, e.reason) for e in admission.events[1:]] == [
        (AuditKind.ALERT_NOT_RUN, "broken", "target_unrenderable"),
    ]


def test_target_is_stripped() -> None:
    admission = plan(FIRING, playbook("store-down", target="  {{ alert.labels.store_id }}\n"))

    assert admission.runs[0].target == "s1"


def test_alert_data_in_the_target_is_not_rendered_again() -> None:
    raw: Any = json.loads((PAYLOADS / "storedown-firing.json").read_text())
    raw["alerts"][0]["labels"]["store_id"] = "{{ 7 * 7 }}"
    alert = alerts.parse_webhook(raw).alerts[0]

    admission = plan(alert, playbook("store-down"))

    assert admission.runs[0].target == "store-{{ 7 * 7 }}"


@pytest.mark.parametrize(
    ("global_dry_run", "playbook_dry_run", "expected"),
    [(False, False, False), (True, False, True), (False, True, True), (True, True, True)],
    ids=["neither", "global", "playbook", "both"],
)
def test_dry_run_flag(global_dry_run: bool, playbook_dry_run: bool, expected: bool) -> None:
    admission = plan(
        FIRING, playbook("store-down", dry_run=playbook_dry_run), dry_run=global_dry_run
    )

    [run] = admission.runs
    assert run.dry_run is expected
    assert planning.queued_event(FIRING.key, FIRING.name, run).details == {"dry_run": expected}


def test_planning_does_not_change_the_playbooks() -> None:
    playbooks = (playbook("store-down"),)
    before = copy.deepcopy(playbooks)

    plan(FIRING, *playbooks, dry_run=True)

    assert playbooks == before


def test_alert_context_is_the_alert_json() -> None:
    assert planning.alert_context(FIRING) == {"alert": FIRING.to_json()}


POLICY = RetryPolicy(attempts=10, backoff=1.0, max_backoff=60.0)
NOMINAL = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 60.0, 60.0, 60.0, 60.0]


@pytest.mark.parametrize(
    ("attempt", "nominal"),
    list(enumerate(NOMINAL, start=1)),
    ids=[f"attempt-{i}" for i in range(1, len(NOMINAL) + 1)],
)
def test_backoff_delay_bounds(attempt: int, nominal: float) -> None:
    lowest = planning.backoff_delay(POLICY, attempt, jitter=0.0)
    middle = planning.backoff_delay(POLICY, attempt, jitter=0.5)
    highest = planning.backoff_delay(POLICY, attempt, jitter=0.999999)

    assert lowest == nominal / 2  # never below half: retries cannot collapse to zero
    assert middle == pytest.approx(nominal * 0.75)
    assert nominal / 2 < highest < nominal
    assert highest <= POLICY.max_backoff


def test_backoff_delay_never_shrinks() -> None:
    delays = [planning.backoff_delay(POLICY, a, jitter=0.3) for a in range(1, 11)]

    assert delays == sorted(delays)
    assert delays[-1] == pytest.approx(60.0 * 0.65)


def test_backoff_cap_below_the_first_delay_wins() -> None:
    policy = RetryPolicy(attempts=3, backoff=10.0, max_backoff=4.0)

    assert planning.backoff_delay(policy, 1, jitter=0.0) == 2.0
    assert planning.backoff_delay(policy, 3, jitter=0.0) == 2.0


def test_summarize_keeps_small_values() -> None:
    value = {"count": 3, "names": ["a", "b"], "nested": {"ok": True, "none": None}}

    assert planning.summarize(value) == value


def test_summarize_bounds_mappings() -> None:
    value = {f"k{i}": i for i in range(25)}

    summary = planning.summarize(value, max_items=20)

    assert list(summary)[:20] == [f"k{i}" for i in range(20)]
    assert summary["…"] == "5 more"
    assert len(summary) == 21


def test_summarize_bounds_lists_and_tuples() -> None:
    assert planning.summarize(list(range(23)), max_items=20) == [*range(20), "… 3 more"]
    assert planning.summarize(tuple(range(3)), max_items=2) == [0, 1, "… 1 more"]


def test_summarize_bounds_strings() -> None:
    assert planning.summarize("x" * 512, max_text=512) == "x" * 512
    assert planning.summarize("x" * 600, max_text=512) == "x" * 512 + "…"


def test_summarize_bounds_nested_values() -> None:
    value = {"samples": [{"text": "y" * 100, "items": list(range(5))}] * 5}

    summary = planning.summarize(value, max_items=3, max_text=10)

    assert summary == {
        "samples": [{"text": "y" * 10 + "…", "items": [0, 1, 2, "… 2 more"]}] * 3 + ["… 2 more"]
    }


def test_summarize_stringifies_keys_and_does_not_change_its_input() -> None:
    value: dict[Any, Any] = {1: ["a"] * 30}
    before = copy.deepcopy(value)

    summary = planning.summarize(value)

    assert list(summary) == ["1"]
    assert value == before


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("0123456789abcdef0123456789abcdef", True),
        ("a" * 64, True),
        ("a" * 65, False),
        ("", False),
        ("not-a-run-id", False),
        ("../etc", False),
    ],
    ids=["uuid-hex", "longest", "too-long", "empty", "dashes", "path"],
)
def test_is_run_id(text: str, expected: bool) -> None:
    assert runs.is_run_id(text) is expected
