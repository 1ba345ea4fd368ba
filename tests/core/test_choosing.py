"""choose steps, pure: which branch a choice picks, and which steps its pick lets run."""

from __future__ import annotations

import pytest

from remediator.core import choosing, templating
from remediator.core.errors import TemplateError
from remediator.core.playbooks import Case, Choice, Playbook, Step, Trigger

CHOICE = Choice(
    cases=(
        Case(when="alert.labels.severity == 'warning'", branch="wait"),
        Case(when="alert.labels.severity == 'critical'", branch="restart"),
    ),
    default="escalate",
)


def context(severity: str) -> dict[str, object]:
    return {"alert": {"labels": {"severity": severity}}, "steps": {}}


@pytest.mark.parametrize(
    ("severity", "picked"),
    [("warning", {"branch": "wait", "case": 0}), ("critical", {"branch": "restart", "case": 1}),
     ("info", {"branch": "escalate", "case": None})],
    ids=["first-case", "second-case", "default"],
)  # fmt: skip
def test_the_first_case_that_holds_wins_else_the_default(
    severity: str, picked: dict[str, object]
) -> None:
    assert choosing.choose(CHOICE, context(severity)) == picked


def test_a_case_that_cannot_be_evaluated_raises() -> None:
    with pytest.raises(TemplateError, match="undefined"):
        choosing.choose(CHOICE, {"alert": {"labels": {}}, "steps": {}})


def test_branches_are_listed_once_in_order() -> None:
    choice = Choice(cases=(Case(when="a", branch="x"), Case(when="b", branch="x")), default="y")
    assert choice.branches() == ("x", "y")


@pytest.mark.parametrize(
    ("expression", "always"),
    [("true", True), ("1 == 1", True), ("not false", True), ("false", False),
     ("alert.labels.x == 'y'", False), ("steps.a.output.b or true", False), ("(", False)],
)  # fmt: skip
def test_constant_true_expressions_are_recognised(expression: str, always: bool) -> None:
    assert templating.always_true(expression) is always


def test_on_branch_admits_a_step_only_on_its_branches() -> None:
    decide = Step(name="decide", action="choose", choice=CHOICE)
    restart = Step(name="restart", action="log", on_branch=("restart",))
    either = Step(name="either", action="log", on_branch=("wait", "escalate"))
    always = Step(name="always", action="log")
    playbook = Playbook(
        name="p",
        source="p.yaml",
        trigger=Trigger(matchers=()),
        target="t",
        steps=(decide, restart, either, always),
    )
    picked = {"decide": {"outcome": "succeeded", "output": {"branch": "escalate", "case": None}}}

    assert [choosing.admitted(playbook, s, picked) for s in playbook.steps[1:]] == [
        False,
        True,
        True,
    ]
    # A choose step that did not run (skipped, or not yet) admits none of its branches.
    assert choosing.admitted(playbook, either, {}) is False
    assert choosing.admitted(playbook, always, {}) is True
