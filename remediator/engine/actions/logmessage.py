"""``log``: record a message in the run's audit trail and the daemon's log."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from remediator.core.actions import ActionSpec
from remediator.engine.actions.registry import ActionContext, Output


@dataclass(frozen=True, slots=True, kw_only=True)
class LogParams:
    message: str = field(metadata={"doc": "Text to record; may be a template."})
    level: Literal["debug", "info", "warning", "error"] = "info"
    fields: dict[str, Any] = field(default_factory=dict, metadata={"doc": "Extra structured data."})


class LogAction:
    spec = ActionSpec(
        name="log",
        params=LogParams,
        mutating=False,
        description="Record a message in the audit trail and the daemon's log.",
    )

    async def run(self, params: LogParams, context: ActionContext) -> Output:
        getattr(context.log, params.level)(
            "playbook_message_logged", message=params.message, **params.fields
        )
        return {"message": params.message, "level": params.level, "fields": params.fields}

    def preview(self, params: LogParams) -> str:
        return f"log {params.level}: {params.message}"
