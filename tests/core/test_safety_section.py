"""A playbook's ``safety:`` section: merged over config defaults, validated, and enforced
by planning (scope) before anything is rendered."""

from __future__ import annotations

import copy
import dataclasses
import itertools
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import pytest
import yaml

from remediator.core import parsing, planning, validation
from remediator.core.actions import ActionSpec, StaticCatalog
from remediator.core.alerts import Alert, AlertStatus
from remediator.core.errors import PlaybookError
from remediator.core.playbooks import Playbook, PlaybookSet
from remediator.core.runs import Admission, AuditKind
from remediator.core.safety import BreakerPolicy, RateLimit, SafetyPolicy, StormPolicy


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class LogParams:
    message: str


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class DeletePvcParams:
    namespace: str
    name: str


CATALOG = StaticCatalog(
    {
        "log": ActionSpec(name="log", params=LogParams, mutating=False),
        "k8s.delete_pvc": ActionSpec(
            name="k8s.delete_pvc", params=DeletePvcParams, mutating=True, destructive=True
        ),
    }
)
# Config defaults unlike the dataclass defaults, so a merge that ignored them would show.
CONFIG = SafetyPolicy(
    target_rate=RateLimit(max_runs=5, window=600.0),
    playbook_rate=RateLimit(max_runs=50, window=1200.0),
    cooldown=60.0,
    breaker=BreakerPolicy(failures=4, reset_after=1800.0),
    storm=StormPolicy(max_targets=8, max_percent=10.0, window=120.0),
    approval="never",
    approval_timeout=600.0,
)


def playbook_doc(name: str = "restart-store", **extra: Any) -> dict[str, Any]:
    return {
        "name": name,
        "trigger": {"matchers": ['alertname="StoreDown"']},
        "target": "store-{{ alert.labels.store_id }}",
        "steps": [
            {"name": "note", "action": "log", "params": {"message": "{{ alert.labels.store_id }}"}}
        ],
        **extra,
    }


def files(*docs: Mapping[str, Any]) -> dict[str, str]:
    return {"pb.yaml": yaml.safe_dump_all(docs, sort_keys=False)}


def load(*docs: Mapping[str, Any], defaults: SafetyPolicy = CONFIG) -> PlaybookSet:
    return validation.load_set(files(*docs), CATALOG, defaults=defaults)


def problems_of(*docs: Mapping[str, Any], defaults: SafetyPolicy = CONFIG) -> list[tuple[str, str]]:
    with pytest.raises(PlaybookError) as caught:
        load(*docs, defaults=defaults)
    return [(p.path, p.message) for p in caught.value.problems]


# Merging over the config defaults


@pytest.mark.parametrize(
    ("section", "expected"),
    [
        ({}, CONFIG),
        (
            {"breaker": {"failures": 2}},
            dataclasses.replace(CONFIG, breaker=BreakerPolicy(failures=2, reset_after=1800.0)),
        ),
        (
            {"target_rate": {"window": "2h"}},
            dataclasses.replace(CONFIG, target_rate=RateLimit(max_runs=5, window=7200.0)),
        ),
        ({"target_rate": None}, dataclasses.replace(CONFIG, target_rate=None)),
        ({"playbook_rate": None}, dataclasses.replace(CONFIG, playbook_rate=None)),
        ({"cooldown": "5m"}, dataclasses.replace(CONFIG, cooldown=300.0)),
        ({"cooldown": 90}, dataclasses.replace(CONFIG, cooldown=90.0)),
        (
            {"storm": {"max_targets": 3, "window": "1m30s", "playbook": "restart-store"}},
            dataclasses.replace(
                CONFIG,
                storm=StormPolicy(
                    max_targets=3, max_percent=10.0, window=90.0, playbook="restart-store"
                ),
            ),
        ),
        (
            {"approval": "always", "approval_timeout": "15m", "max_concurrent": 2},
            dataclasses.replace(
                CONFIG, approval="always", approval_timeout=900.0, max_concurrent=2
            ),
        ),
    ],
    ids=[
        "empty",
        "partial-breaker",
        "partial-rate",
        "null-target-rate",
        "null-playbook-rate",
        "duration-string",
        "duration-int",
        "storm",
        "approval",
    ],
)
def test_safety_section_merges_over_config_defaults(
    section: dict[str, Any], expected: SafetyPolicy
) -> None:
    doc = playbook_doc(safety=section) if section else playbook_doc()

    [playbook] = load(doc).playbooks

    assert playbook.safety == expected


def test_durations_are_floats_and_input_is_not_mutated() -> None:
    raw = playbook_doc(safety={"cooldown": 90, "breaker": {"reset_after": "1h"}})
    before = copy.deepcopy(raw)

    playbook = parsing.parse_playbook(raw, source="pb.yaml", defaults=CONFIG)

    assert raw == before
    assert type(playbook.safety.cooldown) is float
    assert type(playbook.safety.breaker.reset_after) is float
    assert playbook.safety.breaker == BreakerPolicy(failures=4, reset_after=3600.0)


def test_without_defaults_the_dataclass_defaults_apply() -> None:
    playbook = parsing.parse_playbook(playbook_doc(), source="pb.yaml")

    assert playbook.safety == SafetyPolicy()


def test_a_playbook_can_enable_a_rate_limit_the_config_disabled() -> None:
    defaults = dataclasses.replace(CONFIG, target_rate=None)

    [playbook] = load(
        playbook_doc(safety={"target_rate": {"max_runs": 2, "window": "1m"}}), defaults=defaults
    ).playbooks

    assert playbook.safety.target_rate == RateLimit(max_runs=2, window=60.0)


# Schema


@pytest.mark.parametrize(
    ("section", "path", "message"),
    [
        ({"cooldwn": "5m"}, "safety.cooldwn", "unknown key (did you mean 'cooldown'?)"),
        (
            {"breaker": {"failure": 3}},
            "safety.breaker.failure",
            "unknown key (did you mean 'failures'?)",
        ),
        (
            {"storm": {"max_target": 3}},
            "safety.storm.max_target",
            "unknown key (did you mean 'max_targets'?)",
        ),
        (
            {"allow_destructiv": True},
            "safety.allow_destructiv",
            "unknown key (did you mean 'allow_destructive'?)",
        ),
        ({"frobnicate": 1}, "safety.frobnicate", "unknown key"),
        (
            {"approval": "sometimes"},
            "safety.approval",
            "'sometimes' is not one of ['never', 'destructive', 'always']",
        ),
        (
            {"cooldown": "5 minutes"},
            "safety.cooldown",
            "'5 minutes' is not a duration such as '30s', '5m' or 10",
        ),
    ],
    ids=["top", "breaker", "storm", "allow-destructive", "no-hint", "approval", "duration"],
)
def test_schema_rejects_bad_safety_keys(section: dict[str, Any], path: str, message: str) -> None:
    assert problems_of(playbook_doc(safety=section)) == [(path, message)]


def test_unknown_key_in_a_rate_limit_gets_a_hint() -> None:
    problems = problems_of(playbook_doc(safety={"target_rate": {"max_run": 3}}))

    assert problems == [
        ("safety.target_rate.max_run", "unknown key (did you mean 'max_runs'?)"),
    ]


# Destructive actions


def destructive_doc(**extra: Any) -> dict[str, Any]:
    delete = {
        "name": "drop_cache",
        "action": "k8s.delete_pvc",
        "params": {"namespace": "store-{{ alert.labels.store_id }}", "name": "cache"},
    }
    doc = playbook_doc(**extra)
    return {**doc, "steps": [*doc["steps"], delete]}


def test_destructive_action_without_opt_in_names_the_step() -> None:
    problems = problems_of(destructive_doc())

    assert problems == [
        (
            "steps[1].action",
            "'k8s.delete_pvc' is destructive: set safety.allow_destructive: true to opt in",
        )
    ]


def test_destructive_action_in_on_failure_needs_opt_in_too() -> None:
    doc = playbook_doc(
        on_failure=[
            {"name": "wipe", "action": "k8s.delete_pvc", "params": {"namespace": "a", "name": "b"}}
        ]
    )

    assert [path for path, _ in problems_of(doc)] == ["on_failure[0].action"]


def test_destructive_action_with_opt_in_loads() -> None:
    [playbook] = load(destructive_doc(safety={"allow_destructive": True})).playbooks

    assert playbook.safety.allow_destructive is True
    assert [s.action for s in playbook.steps] == ["log", "k8s.delete_pvc"]


def test_opt_in_may_come_from_the_config_and_a_playbook_may_withdraw_it() -> None:
    permissive = dataclasses.replace(CONFIG, allow_destructive=True)

    assert len(load(destructive_doc(), defaults=permissive).playbooks) == 1
    withdrawn = destructive_doc(safety={"allow_destructive": False})
    assert [path for path, _ in problems_of(withdrawn, defaults=permissive)] == ["steps[1].action"]


# storm.playbook


def test_storm_playbook_must_name_an_existing_playbook() -> None:
    doc = playbook_doc(safety={"storm": {"playbook": "platform-restart"}})

    assert problems_of(doc) == [("safety.storm.playbook", "no playbook named 'platform-restart'")]


def test_storm_playbook_may_be_defined_in_the_same_set() -> None:
    doc = playbook_doc(safety={"storm": {"playbook": "platform-restart"}})
    platform = playbook_doc("platform-restart", target="platform")

    loaded = load(doc, platform)

    first = loaded.by_name("restart-store")
    assert first is not None
    assert first.safety.storm is not None
    assert first.safety.storm.playbook == "platform-restart"


# Labels the templates read


def test_labels_used_come_from_every_template() -> None:
    doc = playbook_doc(
        description="uses {{ alert.labels.not_a_template }}",
        trigger={"matchers": ['alertname="StoreDown"', 'matcher_only=~".+"']},
        target="{{ alert.labels.namespace }}/{{ alert.labels['pod'] }}",
        steps=[
            {
                "name": "note",
                "action": "log",
                "when": 'alert.labels.severity == "critical"',
                "params": {"message": '{{ alert.labels["store_id"] }}'},
            }
        ],
        verify={
            "checks": [
                {
                    "name": "check",
                    "action": "log",
                    "params": {"message": "{{ alert.labels.region }}"},
                    "expect": "alert.labels.zone != ''",
                }
            ]
        },
        on_failure=[
            {"name": "escalate", "action": "log", "params": {"message": "{{ alert.labels.team }}"}}
        ],
    )

    [playbook] = load(doc).playbooks

    assert playbook.labels_used == {
        "namespace",
        "pod",
        "severity",
        "store_id",
        "region",
        "zone",
        "team",
    }


# Planning refuses unsafe label values before rendering


def alert(store_id: str, **labels: str) -> Alert:
    return Alert(
        status=AlertStatus.FIRING,
        labels={"alertname": "StoreDown", "store_id": store_id, **labels},
        annotations={},
        starts_at=datetime(2024, 5, 1, 10, tzinfo=UTC),
        ends_at=None,
        generator_url="",
        fingerprint="f00d",
    )


@pytest.fixture
def playbook() -> Playbook:
    doc = playbook_doc(safety={"target_rate": {"max_runs": 1}, "cooldown": "10m"})
    [loaded] = load(doc).playbooks
    return loaded


def plan(playbook: Playbook, subject: Alert) -> tuple[Admission, int]:
    counter = itertools.count(1)
    admission = planning.plan_admission(
        subject,
        PlaybookSet(playbooks=(playbook,)),
        only_highest=False,
        make_run_id=lambda: f"run-{next(counter)}",
    )
    return admission, next(counter) - 1


@pytest.mark.parametrize(
    ("value", "shown", "message"),
    [
        ("../x", "../x", "must be 1-63"),
        ("x" * 300, "x" * 64 + "…", "must be 1-63"),
        ("{{ 7*7 }}", "{{ 7*7 }}", "contains template syntax"),
        ("{% raw %}", "{% raw %}", "contains template syntax"),
    ],
    ids=["traversal", "300-chars", "expression", "statement"],
)
def test_plan_refuses_unsafe_label_values_before_rendering(
    playbook: Playbook, value: str, shown: str, message: str
) -> None:
    admission, run_ids_made = plan(playbook, alert(value))

    assert admission.runs == ()
    assert run_ids_made == 0
    received, refused = admission.events
    assert received.kind is AuditKind.ALERT_RECEIVED
    assert refused.kind is AuditKind.ALERT_NOT_RUN
    assert (refused.playbook, refused.reason) == ("restart-store", "scope")
    assert refused.target is None  # nothing was rendered
    [problem] = refused.details["problems"]
    assert problem["field"] == "labels.store_id"
    assert problem["value"] == shown
    assert message in problem["message"]
    assert "49" not in str(refused.details)


def test_plan_lists_every_unsafe_field(playbook: Playbook) -> None:
    doc = playbook_doc(target="{{ alert.labels.namespace }}-{{ alert.labels.store_id }}")
    [both] = load(doc).playbooks

    admission, _ = plan(both, alert("a b", namespace="kube system"))

    fields = [p["field"] for p in admission.events[1].details["problems"]]
    assert fields == ["labels.namespace", "labels.store_id"]


def test_plan_queues_a_safe_value_with_the_playbook_policy(playbook: Playbook) -> None:
    # A label the playbook does not read may hold anything.
    admission, _ = plan(playbook, alert("s1", description="free text {{ x }}"))

    [run] = admission.runs
    assert (run.run_id, run.playbook, run.target) == ("run-1", "restart-store", "store-s1")
    assert run.policy == playbook.safety
    assert run.policy is not None
    assert run.policy.target_rate == RateLimit(max_runs=1, window=600.0)
    assert run.policy.cooldown == 600.0
    # The store writes run_queued when it creates the run; planning only reports the alert.
    assert [e.kind for e in admission.events] == [AuditKind.ALERT_RECEIVED]
