"""Branch choice: what a ``choose`` step picks, and which steps its pick lets run.

A ``choose`` step tries its cases in order; the first whose ``when`` holds names the branch,
else its ``default`` does. Its output, ``{"branch": NAME, "case": INDEX}`` (``case`` is None
for the default), is recorded like any step's; a later step with ``on_branch`` runs only when
one of its branches is the one its ``choose`` step picked. The executor calls these; nothing
here does I/O.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from remediator.core import templating
from remediator.core.playbooks import Case, Choice, Playbook, Step


def always_holds(case: Case) -> bool:
    """No ``when``, or one that is true whatever the alert: nothing after it is reachable."""
    return case.when is None or templating.always_true(case.when)


def choose(choice: Choice, context: Mapping[str, Any]) -> dict[str, Any]:
    """The step's output. A ``when`` that cannot be evaluated raises `TemplateError`, which
    fails the step: a branch picked on a typo would be worse than no branch."""
    for index, case in enumerate(choice.cases):
        if case.when is None or templating.evaluate(case.when, context):
            return {"branch": case.branch, "case": index}
    return {"branch": choice.default, "case": None}


def chosen_branches(playbook: Playbook, steps: Mapping[str, Any]) -> dict[str, str]:
    """``choose`` step name → the branch it picked, for those that ran (``steps`` is the
    run's ``steps`` context: name → {"outcome", "output"})."""
    picked = {}
    for step in playbook.steps:
        if step.choice is None:
            continue
        output = (steps.get(step.name) or {}).get("output") or {}
        branch = output.get("branch") if isinstance(output, Mapping) else None
        if isinstance(branch, str):
            picked[step.name] = branch
    return picked


def admitted(playbook: Playbook, step: Step, steps: Mapping[str, Any]) -> bool:
    """Whether ``step``'s ``on_branch`` lets it run, given what the run's ``choose`` steps
    picked so far; a step without ``on_branch`` always may."""
    if not step.on_branch:
        return True
    owners = playbook.branch_owners()
    picked = chosen_branches(playbook, steps)
    return any(picked.get(owners.get(branch, "")) == branch for branch in step.on_branch)
