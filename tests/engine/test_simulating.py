"""``simulate``: what the recorded StoreDown alerts would do, computed by the daemon's own logic."""

from __future__ import annotations

import io
from typing import Any

import pytest

from remediator import config
from remediator.config import Settings
from remediator.core.playbooks import PlaybookSet
from remediator.engine import simulating
from remediator.engine.actions import registry
from tests.engine.conftest import load_payload, playbook_set, playbook_yaml

ACTIONS = registry.builtin()
STORE_DOWN = playbook_yaml(
    "store-down",
    """
    steps:
      - name: record
        action: log
        params: {message: "store {{ alert.labels.store_id }} down", level: warning}
      - name: restart
        action: http.request
        params:
          url: "http://stores.internal/restart/{{ alert.labels.store_id }}"
          method: POST
      - name: status
        action: http.request
        when: steps.restart.output.status == 200
        params: {url: "http://stores.internal/status/{{ alert.labels.store_id }}"}
      - name: report
        action: log
        params: {message: "restart answered {{ steps.restart.output.status }}"}
    on_failure:
      - name: escalate
        action: notify.webhook
        params: {target: oncall, text: "{{ target }} still down"}
    """,
    matchers=('alertname="StoreDown"', 'store_id=~"s[0-9]+"'),
    priority=10,
)
FALLBACK = playbook_yaml(
    "store-down-fallback",
    """
    steps:
      - name: record
        action: log
        params: {message: fallback}
    """,
    priority=1,
)
WARNING_ONLY = playbook_yaml(
    "store-warning",
    """
    steps:
      - name: record
        action: log
        params: {message: warning}
    """,
    matchers=('alertname="StoreDown"', 'severity="warning"'),
)
PODS = playbook_yaml(
    "pod-crash",
    """
    steps:
      - name: record
        action: log
        params: {message: pods}
    """,
    matchers=('alertname="KubePodCrashLooping"',),
)
ON_RESOLVE = """\
name: store-recovered
trigger:
  matchers: ['alertname="StoreDown"']
  status: resolved
target: "store-{{ alert.labels.store_id }}"
steps:
  - name: record
    action: log
    params: {message: "{{ target }} recovered"}
"""


@pytest.fixture
def playbooks() -> PlaybookSet:
    return playbook_set(ACTIONS, STORE_DOWN, FALLBACK, WARNING_ONLY, PODS, ON_RESOLVE)


def only_alert(report: dict[str, Any]) -> dict[str, Any]:
    (alert,) = report["alerts"]
    assert isinstance(alert, dict)
    return alert


def matched(alert: dict[str, Any], name: str) -> dict[str, Any]:
    (found,) = [p for p in alert["matched"] if p["playbook"] == name]
    assert isinstance(found, dict)
    return found


def test_the_firing_alert_shows_the_chosen_playbook_and_its_rendered_steps(
    playbooks: PlaybookSet,
) -> None:
    report = simulating.simulate(
        load_payload("storedown-firing.json"), playbooks, ACTIONS, settings=Settings()
    )

    assert (report["match_policy"], report["dry_run"]) == ("first", False)
    alert = only_alert(report)
    assert (alert["alertname"], alert["status"], alert["fingerprint"]) == (
        "StoreDown",
        "firing",
        "46924153d5d81b9f",
    )
    assert [(p["playbook"], p["would_run"]) for p in alert["matched"]] == [
        ("store-down", True),
        ("store-down-fallback", False),
    ]
    chosen = matched(alert, "store-down")
    assert (chosen["target"], chosen["target_error"], chosen["priority"]) == (
        "store-s1",
        None,
        10,
    )
    assert chosen["source"] == "playbook0.yaml:1"
    steps = {s["name"]: s for s in chosen["steps"]}
    assert [(s["phase"], s["name"]) for s in chosen["steps"]] == [
        ("steps", "record"),
        ("steps", "restart"),
        ("steps", "status"),
        ("steps", "report"),
        ("on_failure", "escalate"),
    ]
    assert steps["record"]["params"] == {
        "message": "store s1 down",
        "level": "warning",
        "fields": {},
    }
    assert steps["record"]["mutating"] is False
    assert steps["restart"]["params"]["url"] == "http://stores.internal/restart/s1"
    assert steps["restart"]["mutating"] is True
    assert steps["restart"]["would"] == "POST http://stores.internal/restart/s1"
    # A GET on the same action is read-only: mutating follows the params.
    assert steps["status"]["mutating"] is False
    assert steps["status"]["when"] == "steps.restart.output.status == 200"
    assert steps["report"]["params"] == simulating.RUNTIME_NOTE
    assert steps["escalate"]["params"]["text"] == "store-s1 still down"


def test_not_matched_playbooks_name_the_matcher_that_failed(playbooks: PlaybookSet) -> None:
    report = simulating.simulate(
        load_payload("storedown-firing.json"), playbooks, ACTIONS, settings=Settings()
    )

    because = {m["playbook"]: m["because"] for m in only_alert(report)["not_matched"]}
    assert because == {
        "store-warning": "severity=\"warning\" does not hold (value 'critical')",
        "pod-crash": "alertname=\"KubePodCrashLooping\" does not hold (value 'StoreDown')",
        "store-recovered": "status firing not in ['resolved']",
    }


def test_match_all_runs_every_matching_playbook(playbooks: PlaybookSet) -> None:
    settings = config.from_mapping({"playbooks": {"match": "all"}})

    report = simulating.simulate(
        load_payload("storedown-firing.json"), playbooks, ACTIONS, settings=settings
    )

    alert = only_alert(report)
    assert report["match_policy"] == "all"
    assert [(p["playbook"], p["would_run"]) for p in alert["matched"]] == [
        ("store-down", True),
        ("store-down-fallback", True),
    ]


def test_dry_run_marks_mutating_steps_as_not_executed(playbooks: PlaybookSet) -> None:
    settings = config.from_mapping({"engine": {"dry_run": True}})

    report = simulating.simulate(
        load_payload("storedown-firing.json"), playbooks, ACTIONS, settings=settings
    )

    chosen = matched(only_alert(report), "store-down")
    steps = {s["name"]: s for s in chosen["steps"]}
    assert chosen["dry_run"] is True
    assert steps["restart"]["would"] == (
        "(dry-run, not executed) POST http://stores.internal/restart/s1"
    )
    assert steps["record"]["would"] == "log warning: store s1 down"


def test_the_resolved_alert_cancels_queued_runs(playbooks: PlaybookSet) -> None:
    report = simulating.simulate(
        load_payload("storedown-resolved.json"), playbooks, ACTIONS, settings=Settings()
    )

    alert = only_alert(report)
    assert alert["status"] == "resolved"
    assert {
        "kind": "cancel_queued_runs",
        "playbook": None,
        "target": None,
        "reason": "alert_resolved",
        "details": {},
    } in alert["decisions"]
    assert [(p["playbook"], p["would_run"]) for p in alert["matched"]] == [
        ("store-recovered", True)
    ]
    assert matched(alert, "store-recovered")["steps"][0]["params"]["message"] == (
        "store-s1 recovered"
    )
    because = {m["playbook"]: m["because"] for m in alert["not_matched"]}
    assert because["store-down"] == "status resolved not in ['firing']"


def test_an_unrenderable_target_is_reported_with_its_error() -> None:
    playbooks = playbook_set(
        ACTIONS,
        playbook_yaml(
            "needs-pod",
            """
            steps:
              - name: record
                action: log
                params: {message: "{{ alert.labels.pod }}"}
            """,
            target="{{ alert.labels.namespace }}/{{ alert.labels.pod }}",
        ),
    )

    report = simulating.simulate(
        load_payload("storedown-firing.json"), playbooks, ACTIONS, settings=Settings()
    )

    alert = only_alert(report)
    needs_pod = matched(alert, "needs-pod")
    assert (needs_pod["would_run"], needs_pod["target"]) == (False, None)
    assert "namespace" in needs_pod["target_error"]
    (decision,) = alert["decisions"]
    assert (decision["kind"], decision["playbook"], decision["reason"]) == (
        "alert_not_run",
        "needs-pod",
        "target_unrenderable",
    )
    assert needs_pod["steps"][0]["params"].startswith("error: ")


def test_a_bare_alert_object_is_accepted(playbooks: PlaybookSet) -> None:
    bare = load_payload("storedown-firing.json")["alerts"][0]

    report = simulating.simulate(bare, playbooks, ACTIONS, settings=Settings())

    assert matched(only_alert(report), "store-down")["would_run"] is True


def test_the_printed_report_names_decisions_and_reasons(playbooks: PlaybookSet) -> None:
    report = simulating.simulate(
        load_payload("storedown-firing.json"), playbooks, ACTIONS, settings=Settings()
    )
    out = io.StringIO()

    simulating.print_report(report, out)

    text = out.getvalue()
    assert "playbook store-down (playbook0.yaml:1): WOULD RUN, target=store-s1" in text
    assert "restart: http.request [mutating]" in text
    assert "POST http://stores.internal/restart/s1" in text
    assert 'not matched: pod-crash: alertname="KubePodCrashLooping" does not hold' in text


def test_a_choose_step_shows_its_branch_when_its_cases_read_only_the_alert() -> None:
    deciding = playbook_yaml(
        "deciding",
        """
        steps:
          - name: decide
            choose:
              - {when: alert.labels.severity == "warning", branch: wait}
              - {when: alert.labels.severity == "critical", branch: restart}
            default: escalate
          - name: later
            choose:
              - {when: steps.decide.output.branch == "wait", branch: waited}
            default: acted
        """,
    )
    report = simulating.simulate(
        load_payload("storedown-firing.json"),
        playbook_set(ACTIONS, deciding),
        ACTIONS,
        settings=Settings(),
    )

    decide, later = matched(only_alert(report), "deciding")["steps"]
    assert (decide["action"], decide["mutating"], decide["would"]) == (
        "choose",
        False,
        "branch restart",
    )
    assert later["would"] == (
        "branches: waited, acted; picked at run time (its cases read earlier steps' outputs)"
    )
