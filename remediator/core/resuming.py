"""What happens to a run whose replica died: resume it after the step in flight, or end it.

The rule (documented in docs/playbooks.md, "When a replica dies"):

- A step that finished is never run again: the run continues after the last recorded step.
- The step that was in flight (begun, never recorded) is recorded as ``unknown``: whether it
  acted is not known, so it is neither repeated nor trusted.
- The run resumes when its playbook says ``resume: true``, or when every step still to run
  (the remaining ``steps`` and the ``verify`` checks) is read-only, so continuing cannot do
  anything a human has not already allowed. Otherwise it ends ``interrupted``.
- A run that had already failed (it was in its ``on_failure`` steps) is never resumed: it ends
  ``interrupted``, and a human is told, as in every takeover.

Pure: the caller knows which actions are read-only and passes that in.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from remediator.core.playbooks import Phase, Playbook, Step
from remediator.core.runs import StepRecord


@dataclass(frozen=True, slots=True, kw_only=True)
class ResumePlan:
    resume: bool
    next_step: int
    """Index into ``playbook.steps`` of the first step to run; ``len(steps)``: verify next."""
    reason: str
    """Why, in words for the audit record and the escalation."""


def plan_resume(
    playbook: Playbook,
    recorded: Sequence[StepRecord],
    *,
    read_only: Callable[[Step], bool],
) -> ResumePlan:
    """``recorded``: the run's steps as stored, the in-flight one already recorded unknown."""
    done = [r for r in recorded if r.phase == str(Phase.STEPS)]
    if any(r.phase == str(Phase.ON_FAILURE) for r in recorded):
        return ResumePlan(
            resume=False, next_step=len(playbook.steps), reason="it had already failed"
        )
    next_step = min(len(done), len(playbook.steps))
    remaining = [*playbook.steps[next_step:], *(playbook.verify.checks if playbook.verify else ())]
    if playbook.resume:
        return ResumePlan(resume=True, next_step=next_step, reason="the playbook says resume")
    writers = [s.name for s in remaining if not read_only(s)]
    if not writers:
        return ResumePlan(resume=True, next_step=next_step, reason="every step left is read-only")
    return ResumePlan(
        resume=False,
        next_step=next_step,
        reason=f"mutating steps remain ({', '.join(writers)}) and the playbook does not say "
        "resume: true",
    )
