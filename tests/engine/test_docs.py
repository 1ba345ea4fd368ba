"""docs/playbooks.md cannot drift from the code: every action, param and playbook key is there."""

from __future__ import annotations

import dataclasses
import pathlib
import re

import pytest

from remediator import schemas
from remediator.core import schema
from remediator.engine.actions import registry

DOCS = pathlib.Path(__file__).parent.parent.parent / "docs" / "playbooks.md"
TEXT = DOCS.read_text()
ACTIONS = registry.builtin()
NAMES = ACTIONS.names()


def section(name: str) -> str:
    """The docs of one action: from its heading to the next heading."""
    found = re.search(rf"^### `{re.escape(name)}`\n(.*?)(?=^#|\Z)", TEXT, re.MULTILINE | re.DOTALL)
    assert found is not None, f"docs/playbooks.md has no section for action {name!r}"
    return found.group(1)


def test_docs_are_where_the_generator_writes() -> None:
    assert schemas.DOCS_FILE.resolve() == DOCS.resolve()


def test_action_reference_is_the_generated_one() -> None:
    assert schemas.update_docs(TEXT, ACTIONS) == TEXT, "stale: run python -m remediator.schemas"


@pytest.mark.parametrize("name", NAMES, ids=NAMES)
def test_every_action_and_param_is_documented(name: str) -> None:
    spec = ACTIONS.spec(name)
    assert spec is not None
    text = section(name)

    for field in dataclasses.fields(spec.params):
        assert re.search(rf"^\| `{field.name}` \|", text, re.MULTILINE), (
            f"param {field.name!r} of {name!r} is not documented"
        )
    mutating = "depends on its params" if spec.mutating_when else ("yes" if spec.mutating else "no")
    assert f"- Mutating: {mutating}" in text
    assert ("- Destructive: **yes**" in text) is spec.destructive


def test_documented_actions_exist() -> None:
    documented = re.findall(r"^### `([^`]+)`$", TEXT, re.MULTILINE)

    assert documented == NAMES


def test_every_playbook_key_is_documented() -> None:
    properties = schema.playbook_schema()["properties"]

    for key in properties:
        assert re.search(rf"^\| `{key}` \|", TEXT, re.MULTILINE), f"top-level key {key!r}"
    for group in ("trigger", "verify", "safety"):
        for key in properties[group]["properties"]:
            assert re.search(rf"^\| `{key}` \|", TEXT, re.MULTILINE), f"{group}.{key}"


def test_every_step_key_is_documented() -> None:
    check = schema.playbook_schema()["$defs"]["check"]["properties"]

    for key in check:
        if key in ("retry", "expect"):
            continue
        assert re.search(rf"^\| `{key}` \|", TEXT, re.MULTILINE), f"step key {key!r}"
    for key in check["retry"]["properties"]:
        assert f"`retry.{key}`" in TEXT, f"retry.{key}"
    assert "`expect`" in TEXT


def test_every_choose_key_is_documented() -> None:
    choose = schema.playbook_schema()["$defs"]["choose_step"]["properties"]

    for key in choose:
        assert re.search(rf"^\| `{key}` \|", TEXT, re.MULTILINE), f"choose key {key!r}"


def test_editor_setup_points_at_the_committed_schema() -> None:
    assert "# yaml-language-server: $schema=../remediator/schemas/playbook.schema.json" in TEXT
    assert (DOCS.parent.parent / "remediator" / "schemas" / "playbook.schema.json").is_file()


def test_every_scenario_key_is_documented() -> None:
    from remediator.core import scenarios

    top = scenarios.scenario_schema()
    scenario = top["properties"]["scenarios"]["items"]
    groups = {
        "file": top["properties"],
        "scenario": scenario["properties"],
        "platform": scenario["properties"]["platform"]["properties"],
        "alerts": scenario["properties"]["alerts"]["items"]["properties"],
        "expect": scenario["properties"]["expect"]["properties"],
    }
    for group, keys in groups.items():
        for key in keys:
            row = rf"^\| (`\w+` / )*`{key}`( / `\w+`)* \|"
            assert re.search(row, TEXT, re.MULTILINE), f"{group}.{key}"
    run = scenario["properties"]["expect"]["properties"]["runs"]["items"]["properties"]
    history = scenario["properties"]["safety"]["properties"]
    for key in [*run, *history, "history"]:
        assert f"`{key}`" in TEXT, key
