"""``notify.webhook``: escalate to a human through a Slack-compatible incoming webhook.

Targets are named in config (``notify.targets``), so playbooks never carry URLs or tokens.
Escalations are sent in dry-run too, marked as such: a human should still hear about it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Literal

import yarl

from remediator.core.actions import ActionSpec
from remediator.core.errors import PermanentStepError
from remediator.engine.actions import httprequest
from remediator.engine.actions.registry import ActionContext, Output

COLORS = {"info": "#439FE0", "warning": "warning", "critical": "danger"}


@dataclass(frozen=True, slots=True, kw_only=True)
class NotifyParams:
    target: str = field(metadata={"doc": "Name of a configured notify target."})
    text: str = field(metadata={"doc": "Message; may be a template."})
    severity: Literal["info", "warning", "critical"] = "warning"
    fields: dict[str, str] = field(default_factory=dict)


class NotifyWebhookAction:
    spec = ActionSpec(
        name="notify.webhook",
        params=NotifyParams,
        mutating=False,
        description="Send a Slack-compatible message to a configured webhook target.",
    )

    async def run(self, params: NotifyParams, context: ActionContext) -> Output:
        settings = context.resources.settings.notify
        target = settings.targets.get(params.target)
        if target is None:
            raise PermanentStepError(f"no notify target named {params.target!r}")
        headers = {}
        if target.token_env:
            token = os.environ.get(target.token_env, "")
            if not token:
                raise PermanentStepError(
                    f"notify target {params.target!r}: ${target.token_env} is empty"
                )
            headers["Authorization"] = f"Bearer {token}"
        prefix = "[dry-run] " if context.dry_run else ""
        fields = {
            "playbook": context.playbook,
            "target": context.target,
            "run": context.run_id,
            **params.fields,
        }
        payload = {
            "text": f"{prefix}{params.text}",
            "attachments": [
                {
                    "color": COLORS[params.severity],
                    "fields": [{"title": k, "value": v, "short": True} for k, v in fields.items()],
                }
            ],
        }
        status, _ = await httprequest.send(
            context.resources.http,
            "POST",
            yarl.URL(target.url),
            time_limit=settings.timeout,
            headers=headers,
            json_body=payload,
        )
        return {"target": params.target, "status": status, "text": payload["text"]}

    def preview(self, params: NotifyParams) -> str:
        return f"notify {params.target}: {params.text}"
