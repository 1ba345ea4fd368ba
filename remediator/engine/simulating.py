"""``remediator simulate``: what an alert would do, computed with the daemon's own logic.

It matches, renders targets and step params, and states each decision the engine would take,
without touching the store, the network or anything else.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, TextIO

from remediator.config import Settings
from remediator.core import alerts, choosing, matching, params, planning, safety, templating
from remediator.core.alerts import Alert, AlertStatus
from remediator.core.errors import PermanentStepError, TemplateError
from remediator.core.playbooks import Phase, Playbook, PlaybookSet, Trigger
from remediator.core.runs import NewRun
from remediator.engine.actions.registry import ActionRegistry

RUNTIME_NOTE = "rendered at run time (uses earlier steps' outputs)"


def as_webhook(raw: Any) -> alerts.Webhook:
    """Accept a full webhook payload, or one alert object, wrapped as Alertmanager would."""
    if isinstance(raw, Mapping) and "alerts" not in raw and "labels" in raw:
        raw = {
            "version": "4",
            "status": raw.get("status", "firing"),
            "receiver": "simulate",
            "groupKey": "simulate",
            "alerts": [raw],
        }
    return alerts.parse_webhook(raw)


Decide = Callable[[NewRun, str], safety.Decision]
"""The safety decision for a candidate run of an alert (by name): offline or from a state file."""


def offline_decision(settings: Settings) -> Decide:
    """What the envelope decides on a fresh state: only the alert's own scope and limits."""

    def decide(run: NewRun, alertname: str) -> safety.Decision:
        assert run.policy is not None  # noqa: S101 - plan_admission always attaches one
        snapshot = safety.Snapshot(storm_targets=1, known_targets=settings.safety.known_targets)
        return safety.decide_admission(run.policy, snapshot, now=0.0)

    return decide


def candidates(raw: Any, playbooks: PlaybookSet, *, settings: Settings) -> list[tuple[NewRun, str]]:
    """Every candidate run the alerts would create, for a caller that decides them up front."""
    found: list[tuple[NewRun, str]] = []
    for alert in as_webhook(raw).alerts:
        admission = planning.plan_admission(
            alert,
            playbooks,
            only_highest=settings.playbooks.match == "first",
            make_run_id=lambda: "simulated",
            dry_run=settings.engine.dry_run,
        )
        found.extend((run, alert.name) for run in admission.runs)
    return found


def simulate(
    raw: Any,
    playbooks: PlaybookSet,
    actions: ActionRegistry,
    *,
    settings: Settings,
    decide: Decide | None = None,
) -> dict[str, Any]:
    webhook = as_webhook(raw)
    only_highest = settings.playbooks.match == "first"
    decide = decide or offline_decision(settings)
    return {
        "match_policy": settings.playbooks.match,
        "dry_run": settings.engine.dry_run,
        "alerts": [
            _alert(
                a,
                playbooks,
                actions,
                only_highest=only_highest,
                dry_run=settings.engine.dry_run,
                decide=decide,
            )
            for a in webhook.alerts
        ],
    }


def _alert(
    alert: Alert,
    playbooks: PlaybookSet,
    actions: ActionRegistry,
    *,
    only_highest: bool,
    dry_run: bool,
    decide: Decide,
) -> dict[str, Any]:
    admission = planning.plan_admission(
        alert,
        playbooks,
        only_highest=only_highest,
        make_run_id=lambda: "simulated",
        dry_run=dry_run,
    )
    matched = matching.find_matches(alert, playbooks, only_highest=False)
    chosen = {p.name for p in matching.find_matches(alert, playbooks, only_highest=only_highest)}
    decisions = [
        {
            "kind": str(e.kind),
            "playbook": e.playbook,
            "target": e.target,
            "reason": e.reason,
            "details": dict(e.details) if e.reason else {},
        }
        for e in admission.events[1:]
    ]
    for run in admission.runs:
        decision = decide(run, alert.name)
        decisions.append(
            {
                "kind": "would_queue" if decision.allowed else "alert_not_run",
                "playbook": run.playbook,
                "target": run.target,
                "reason": str(decision.refusal) if decision.refusal else None,
                "details": dict(decision.details),
            }
        )
    if alert.status is AlertStatus.RESOLVED:
        decisions.append(
            {
                "kind": "cancel_queued_runs",
                "playbook": None,
                "target": None,
                "reason": planning.NotRun.ALERT_RESOLVED,
                "details": {},
            }
        )
    return {
        "alertname": alert.name,
        "status": str(alert.status),
        "fingerprint": alert.fingerprint,
        "labels": dict(alert.labels),
        "decisions": decisions,
        "matched": [
            _playbook(p, alert, actions, dry_run=dry_run, chosen=p.name in chosen) for p in matched
        ],
        "not_matched": [
            {"playbook": p.name, "because": _why_not(p.trigger, alert)}
            for p in playbooks.playbooks
            if p not in matched
        ],
    }


def _why_not(trigger: Trigger, alert: Alert) -> str:
    if alert.status not in trigger.statuses:
        return f"status {alert.status} not in {sorted(map(str, trigger.statuses))}"
    for matcher in trigger.matchers:
        single = Trigger(matchers=(matcher,), statuses=trigger.statuses)
        if not matching.matches(single, alert):
            return f"{matcher} does not hold (value {alert.labels.get(matcher.name, '')!r})"
    return "lower priority than the chosen playbook"


def _playbook(
    playbook: Playbook, alert: Alert, actions: ActionRegistry, *, dry_run: bool, chosen: bool
) -> dict[str, Any]:
    target, error = planning.render_target(playbook, alert)
    context = {
        **planning.alert_context(alert),
        "target": target,
        "playbook": playbook.name,
        "run": {"id": "simulated", "dry_run": dry_run or playbook.dry_run},
        "steps": {},
    }
    return {
        "playbook": playbook.name,
        "source": f"{playbook.source}:{playbook.line}",
        "priority": playbook.priority,
        "would_run": chosen and target is not None,
        "target": target,
        "target_error": error or None,
        "dry_run": dry_run or playbook.dry_run,
        "steps": [_step(phase, step, context, actions) for phase, step in playbook.all_steps()],
    }


def _step(
    phase: Any, step: Any, context: dict[str, Any], actions: ActionRegistry
) -> dict[str, Any]:
    if phase is Phase.ON_FAILURE:
        # Escalations read why the run failed; show where that text will go.
        context = {
            **context,
            "run": {**context["run"], "status": "failed", "error": "<the run's error>"},
        }
    if step.choice is not None:
        return _choice(phase, step, context)
    action = actions.get(step.action)
    entry: dict[str, Any] = {
        "phase": str(phase),
        "name": step.name,
        "action": step.action,
        "destructive": action.spec.destructive,
        "when": step.when,
    }
    try:
        rendered = templating.render_params(dict(step.params), context)
        typed = params.build(action.spec.params, rendered)
    except TemplateError as e:
        uses_steps = "steps." in repr(dict(step.params))
        entry["params"] = RUNTIME_NOTE if uses_steps else f"error: {e}"
        entry["mutating"] = action.spec.mutating
        return entry
    except PermanentStepError as e:
        entry["params"] = f"error: {e}"
        entry["mutating"] = action.spec.mutating
        return entry
    mutating = action.spec.is_mutating(typed)
    entry.update(
        params=params.to_json(typed),
        mutating=mutating,
        destructive=action.spec.is_destructive(typed),
        would=action.preview(typed),
    )
    if context["run"]["dry_run"] and mutating and not action.spec.supports_dry_run:
        entry["would"] = f"(dry-run, not executed) {entry['would']}"
    return entry


def _choice(phase: Any, step: Any, context: dict[str, Any]) -> dict[str, Any]:
    """A ``choose`` step: the branch it would pick, when its cases read only the alert."""
    entry: dict[str, Any] = {
        "phase": str(phase),
        "name": step.name,
        "action": step.action,
        "destructive": False,
        "mutating": False,
        "when": step.when,
        "params": "branches: " + ", ".join(step.choice.branches()),
    }
    try:
        entry["would"] = f"branch {choosing.choose(step.choice, context)['branch']}"
    except TemplateError as e:
        uses_steps = any("steps." in (case.when or "") for case in step.choice.cases)
        why = "picked at run time (its cases read earlier steps' outputs)" if uses_steps else e
        entry["would"] = f"{entry['params']}; {why}"
    return entry


def print_report(report: Mapping[str, Any], out: TextIO) -> None:
    for alert in report["alerts"]:
        labels = ", ".join(f"{k}={v}" for k, v in sorted(alert["labels"].items()))
        print(f"alert {alert['alertname']} [{alert['status']}] {{{labels}}}", file=out)
        for decision in alert["decisions"]:
            who = f" {decision['playbook']}" if decision["playbook"] else ""
            on = f" on {decision['target']}" if decision["target"] else ""
            why = f": {decision['reason']}" if decision["reason"] else ""
            print(f"  decision: {decision['kind']}{who}{on}{why}", file=out)
        for playbook in alert["matched"]:
            flag = "WOULD RUN" if playbook["would_run"] else "matched, not run"
            mode = " (dry-run)" if playbook["dry_run"] else ""
            print(
                f"  playbook {playbook['playbook']} ({playbook['source']}): {flag}{mode}, "
                f"target={playbook['target']}",
                file=out,
            )
            for step in playbook["steps"]:
                when = f" when {step['when']}" if step["when"] else ""
                marks = "".join(
                    [
                        " [mutating]" if step.get("mutating") else "",
                        " [destructive]" if step["destructive"] else "",
                    ]
                )
                print(
                    f"    {step['phase']:<10} {step['name']}: {step['action']}{marks}{when}",
                    file=out,
                )
                detail = step.get("would") or step["params"]
                print(f"               {detail}", file=out)
        for miss in alert["not_matched"]:
            print(f"  not matched: {miss['playbook']}: {miss['because']}", file=out)
