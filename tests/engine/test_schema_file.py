"""The committed editor schema is what the code generates, and it accepts the shipped playbooks."""

from __future__ import annotations

import copy
import json
import pathlib
from typing import Any

import jsonschema
import pytest
import yaml

from remediator import schemas
from remediator.core import schema
from remediator.engine.actions import registry
from remediator.simulation import faults

ROOT = pathlib.Path(__file__).parent.parent.parent
PLAYBOOKS = sorted((ROOT / "playbooks").glob("*.y*ml"))
FULL = jsonschema.Draft202012Validator(schema.playbook_schema(registry.builtin()))
STRUCTURE = jsonschema.Draft202012Validator(schema.playbook_schema())


def documents(path: pathlib.Path) -> list[Any]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def messages(validator: jsonschema.Draft202012Validator, instance: Any) -> list[str]:
    return sorted(e.message for e in validator.iter_errors(instance))


def test_committed_schema_is_the_generated_one() -> None:
    committed = schemas.SCHEMA_FILE.read_text()

    assert committed == schemas.render_schema(registry.builtin()), (
        "stale: run python -m remediator.schemas"
    )
    assert committed == (
        json.dumps(schema.playbook_schema(registry.builtin()), indent=2, sort_keys=True) + "\n"
    )


def test_committed_schema_is_a_valid_draft_2020_12_schema() -> None:
    committed = json.loads(schemas.SCHEMA_FILE.read_text())

    jsonschema.Draft202012Validator.check_schema(committed)
    assert committed["$schema"] == "https://json-schema.org/draft/2020-12/schema"


def test_committed_scenario_schema_is_the_generated_one_and_valid() -> None:
    committed = schemas.SCENARIO_SCHEMA_FILE.read_text()

    assert committed == schemas.render_scenario_schema(sorted(faults.FAULTS)), (
        "stale: run python -m remediator.schemas"
    )
    parsed = json.loads(committed)
    jsonschema.Draft202012Validator.check_schema(parsed)
    shipped = jsonschema.Draft202012Validator(parsed)
    for path in sorted((ROOT / "playbooks" / "tests").glob("*.yaml")):
        assert messages(shipped, yaml.safe_load(path.read_text())) == [], path.name


def test_generator_check_passes_on_the_committed_files() -> None:
    from remediator.schemas import __main__ as generator

    assert generator.main(["--check"]) == 0


def test_schema_names_every_action() -> None:
    committed = json.loads(schemas.SCHEMA_FILE.read_text())

    for definition in ("action_step", "check"):
        names = committed["$defs"][definition]["properties"]["action"]["enum"]
        assert names == registry.builtin().names()


def test_there_are_playbooks_to_check() -> None:
    assert PLAYBOOKS


@pytest.mark.parametrize("path", PLAYBOOKS, ids=[p.name for p in PLAYBOOKS])
def test_shipped_playbook_validates_against_the_full_schema(path: pathlib.Path) -> None:
    docs = documents(path)

    assert docs
    for doc in docs:
        assert messages(FULL, doc) == []


def valid_playbook() -> dict[str, Any]:
    return {
        "name": "store-down",
        "trigger": {"matchers": ['alertname="StoreDown"']},
        "target": "store-{{ alert.labels.store_id }}",
        "steps": [
            {
                "name": "record",
                "action": "prometheus.wait_for",
                "timeout": "2m",
                "params": {"query": "up == 1", "until": "empty", "interval": 5},
            }
        ],
        "verify": {
            "timeout": "5m",
            "checks": [
                {
                    "name": "up",
                    "action": "prometheus.query",
                    "params": {"query": "up"},
                    "expect": "output.value == 1",
                }
            ],
        },
    }


def test_sample_playbook_is_valid() -> None:
    assert messages(STRUCTURE, valid_playbook()) == []
    assert messages(FULL, valid_playbook()) == []


def bad_playbook() -> dict[str, Any]:
    bad = copy.deepcopy(valid_playbook())
    del bad["target"]
    bad["dryRun"] = True
    bad["steps"][0]["timeout"] = "30s5m"
    bad["verify"]["checks"] = []
    return bad


def test_structural_schema_rejects_a_bad_playbook() -> None:
    assert messages(STRUCTURE, bad_playbook()) == sorted(
        [
            "'target' is a required property",
            "Additional properties are not allowed ('dryRun' was unexpected)",
            "'30s5m' is not valid under any of the given schemas",
            "[] should be non-empty",
        ]
    )


@pytest.mark.parametrize(
    ("step_changes", "expected"),
    [
        ({"action": "prometheus.wait"}, "'prometheus.wait' is not one of"),
        ({"params": {"query": "up", "untl": "empty"}}, "('untl' was unexpected)"),
        ({"params": {"query": "up", "until": "never"}}, "'never' is not valid under any"),
        ({"params": {"until": "empty"}}, "'query' is a required property"),
        ({"params": {"query": "up", "interval": "soon"}}, "'soon' is not valid under any"),
    ],
    ids=["unknown-action", "unknown-param", "bad-literal", "missing-param", "bad-number"],
)
def test_full_schema_checks_action_params(step_changes: dict[str, Any], expected: str) -> None:
    playbook = valid_playbook()
    playbook["steps"][0].update(step_changes)

    assert messages(STRUCTURE, playbook) == []  # the structure leaves params to the actions
    assert any(expected in m for m in messages(FULL, playbook))


def test_full_schema_accepts_templates_for_typed_params() -> None:
    playbook = valid_playbook()
    playbook["steps"][0]["params"]["interval"] = "{{ alert.labels.interval }}"

    assert messages(FULL, playbook) == []


@pytest.mark.parametrize(
    "duration",
    ["0", "500ms", "30s", "1h30m", "1w2d", "1.5h", 0, 2.5],
    ids=str,
)
def test_durations_the_parser_reads_are_valid(duration: object) -> None:
    playbook = valid_playbook()
    playbook["steps"][0]["timeout"] = duration

    assert messages(STRUCTURE, playbook) == []


@pytest.mark.parametrize(
    "duration",
    ["", "5", "5x", "30s5m", "1d1d", "-5s", "s", -1, True],
    ids=str,
)
def test_durations_the_parser_refuses_are_invalid(duration: object) -> None:
    playbook = valid_playbook()
    playbook["steps"][0]["timeout"] = duration

    assert messages(STRUCTURE, playbook) != []
