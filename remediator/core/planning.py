"""Decisions about an alert before anything runs: which runs to create and why not.

``plan_admission`` turns one alert into an :class:`~remediator.core.runs.Admission`: the runs
to queue and the audit events that explain them, including every "not run, because". The store
applies it atomically, only if the alert is new.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from remediator.core import matching, scope, templating
from remediator.core.alerts import Alert, AlertStatus, DedupeKey
from remediator.core.errors import TemplateError
from remediator.core.playbooks import Playbook, PlaybookSet, RetryPolicy
from remediator.core.runs import Admission, AuditEvent, AuditKind, NewRun

MAX_TARGET_LENGTH = 253


class NotRun:
    """Reasons an alert or a candidate run does not run; bounded, so usable as metric labels.

    The safety envelope adds its own (:class:`remediator.core.safety.Refusal`).
    """

    NO_MATCHING_PLAYBOOK = "no_matching_playbook"
    RESOLVED_NO_PLAYBOOK = "resolved_without_playbook"
    TARGET_UNRENDERABLE = "target_unrenderable"
    SCOPE = "scope"
    ALERT_RESOLVED = "alert_resolved"
    DUPLICATE = "duplicate"
    SHUTDOWN = "shutdown"


def alert_context(alert: Alert) -> dict[str, Any]:
    """The template variables an alert provides (see :mod:`remediator.core.templating`)."""
    return {"alert": alert.to_json()}


def alert_fields(alert: Alert) -> dict[str, Any]:
    """The fields every audit event about this alert carries."""
    return {"fingerprint": alert.fingerprint, "alertname": alert.name}


def plan_admission(
    alert: Alert,
    playbooks: PlaybookSet,
    *,
    only_highest: bool,
    make_run_id: Callable[[], str],
    dry_run: bool = False,
) -> Admission:
    # One Alertmanager-shaped copy serves the audit record, the stored alert and the target
    # templates: none of them changes it (templates render in an immutable sandbox).
    shape = alert.to_json()
    context = {"alert": shape}
    received = AuditEvent(
        kind=AuditKind.ALERT_RECEIVED,
        **alert_fields(alert),
        outcome=str(alert.status),
        details={"alert": shape},
    )
    events: list[AuditEvent] = [received]
    runs: list[NewRun] = []
    matched = matching.find_matches(alert, playbooks, only_highest=only_highest)
    if not matched:
        reason = (
            NotRun.RESOLVED_NO_PLAYBOOK
            if alert.status is AlertStatus.RESOLVED
            else NotRun.NO_MATCHING_PLAYBOOK
        )
        events.append(
            AuditEvent(kind=AuditKind.ALERT_NOT_RUN, **alert_fields(alert), reason=reason)
        )
    for playbook in matched:
        problems = scope.check_labels(alert.labels, playbook.labels_used)
        if problems:
            # Refused before anything is rendered: the value is data that never gets evaluated.
            events.append(
                AuditEvent(
                    kind=AuditKind.ALERT_NOT_RUN,
                    **alert_fields(alert),
                    playbook=playbook.name,
                    reason=NotRun.SCOPE,
                    details={
                        "problems": [
                            {"field": p.field, "value": p.value, "message": p.message}
                            for p in problems
                        ]
                    },
                )
            )
            continue
        target, error = render_target(playbook, alert, context)
        if target is None:
            events.append(
                AuditEvent(
                    kind=AuditKind.ALERT_NOT_RUN,
                    **alert_fields(alert),
                    playbook=playbook.name,
                    reason=NotRun.TARGET_UNRENDERABLE,
                    details={"error": error},
                )
            )
            continue
        runs.append(
            NewRun(
                run_id=make_run_id(),
                playbook=playbook.name,
                target=target,
                dry_run=dry_run or playbook.dry_run,
                policy=playbook.safety,
                on_storm=_storm_run(
                    playbook, alert, context, playbooks, make_run_id, dry_run=dry_run
                ),
            )
        )
    return Admission(
        key=alert.key,
        alert=shape,
        runs=tuple(runs),
        events=tuple(events),
        cancel_queued_runs=alert.status is AlertStatus.RESOLVED,
    )


def _storm_run(
    playbook: Playbook,
    alert: Alert,
    context: Mapping[str, Any],
    playbooks: PlaybookSet,
    make_run_id: Callable[[], str],
    *,
    dry_run: bool,
) -> NewRun | None:
    """The declared platform-level playbook's run, prepared in case this alert starts a storm."""
    name = playbook.safety.storm.playbook if playbook.safety.storm else None
    platform = playbooks.by_name(name) if name else None
    if platform is None or scope.check_labels(alert.labels, platform.labels_used):
        return None
    target, _ = render_target(platform, alert, context)
    if target is None:
        return None
    return NewRun(
        run_id=make_run_id(),
        playbook=platform.name,
        target=target,
        dry_run=dry_run or platform.dry_run,
        policy=None,
    )


def queued_event(key: DedupeKey, alertname: str, run: NewRun) -> AuditEvent:
    return AuditEvent(
        kind=AuditKind.RUN_QUEUED,
        run_id=run.run_id,
        fingerprint=key.fingerprint,
        alertname=alertname,
        playbook=run.playbook,
        target=run.target,
        details={"dry_run": run.dry_run},
    )


def refused_event(
    key: DedupeKey, alertname: str, run: NewRun, refusal: str, details: dict[str, Any]
) -> AuditEvent:
    """A candidate run a safeguard stopped: "not run, because"."""
    return AuditEvent(
        kind=AuditKind.ALERT_NOT_RUN,
        fingerprint=key.fingerprint,
        alertname=alertname,
        playbook=run.playbook,
        target=run.target,
        reason=str(refusal),
        details=details,
    )


def render_target(
    playbook: Playbook, alert: Alert, context: Mapping[str, Any] | None = None
) -> tuple[str | None, str]:
    """The rendered target, or None and why it could not be rendered; ``context``, when the
    caller has it, is ``alert_context(alert)``."""
    try:
        context = alert_context(alert) if context is None else context
        target = templating.render(playbook.target, context).strip()
    except TemplateError as e:
        return None, str(e)
    if not target:
        return None, "target rendered empty"
    if len(target) > MAX_TARGET_LENGTH:
        return None, f"target longer than {MAX_TARGET_LENGTH} characters"
    return target, ""


def backoff_delay(policy: RetryPolicy, attempt: int, *, jitter: float) -> float:
    """Seconds to wait after failed try number ``attempt`` (1-based).

    Exponential with "equal jitter": at least half the nominal delay, so retries never collapse
    to zero, and at most the nominal delay, so a herd of runs spreads out. ``jitter`` is in [0, 1).
    """
    nominal: float = min(policy.max_backoff, policy.backoff * 2.0 ** (attempt - 1))
    return nominal / 2 + nominal / 2 * jitter


def summarize(value: Any, *, max_items: int = 20, max_text: int = 512) -> Any:
    """A bounded copy of an action's output for the audit log and the API."""
    if isinstance(value, Mapping):
        items = list(value.items())
        out = {
            str(k): summarize(v, max_items=max_items, max_text=max_text)
            for k, v in items[:max_items]
        }
        if len(items) > max_items:
            out["…"] = f"{len(items) - max_items} more"
        return out
    if isinstance(value, list | tuple):
        head = [summarize(v, max_items=max_items, max_text=max_text) for v in value[:max_items]]
        if len(value) > max_items:
            head.append(f"… {len(value) - max_items} more")
        return head
    if isinstance(value, str) and len(value) > max_text:
        return value[:max_text] + "…"
    return value
