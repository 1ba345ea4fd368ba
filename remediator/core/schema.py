"""The playbook JSON Schema: the structural contract shared by the daemon and editors.

``playbook_schema()`` is what the daemon validates against; ``playbook_schema(catalog)`` adds
each action's params (generated from its dataclass) for editors, and is committed as
``remediator/schemas/playbook.schema.json`` (a test keeps the file and the code in step).
"""

from __future__ import annotations

from typing import Any

from remediator.core import durations, params
from remediator.core.actions import ActionCatalog

SCHEMA_ID = "https://remediator.dev/schemas/playbook.schema.json"
NAME_PATTERN = r"^[a-z0-9]([a-z0-9._-]{0,61}[a-z0-9])?$"
# Exactly what durations.parse_duration reads: "0", or units largest first, each at most once.
# A looser pattern let "30s5m" through validation only for parsing to reject it afterwards.
DURATION_PATTERN = (
    "^(0|(?=[0-9])" + "".join(rf"([0-9]+(\.[0-9]+)?{unit})?" for unit, _ in durations.UNITS) + ")$"
)

DURATION: dict[str, Any] = {
    "description": "Seconds, or a duration such as '500ms', '30s', '5m', '1h30m'.",
    "oneOf": [
        {"type": "number", "minimum": 0},
        {"type": "string", "pattern": DURATION_PATTERN},
    ],
}
_RETRY: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "attempts": {
            "type": "integer",
            "minimum": 1,
            "maximum": 20,
            "description": "Total tries, including the first.",
        },
        "backoff": {**DURATION, "description": "Delay before the second try; doubles, jittered."},
        "max_backoff": {**DURATION, "description": "Upper bound of one delay."},
    },
}


def _rate(description: str) -> dict[str, Any]:
    return {
        "description": description + " null disables it.",
        "oneOf": [
            {"type": "null"},
            {
                "type": "object",
                "additionalProperties": False,
                "properties": {
                    "max_runs": {"type": "integer", "minimum": 1},
                    "window": DURATION,
                },
            },
        ],
    }


_SAFETY: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "description": "Overrides of the safety defaults from the daemon's config (safety.defaults).",
    "properties": {
        "target_rate": _rate("At most max_runs runs on one target per window."),
        "playbook_rate": _rate("At most max_runs runs of this playbook per window."),
        "cooldown": {**DURATION, "description": "Quiet time on a target after any run."},
        "max_concurrent": {
            "type": ["integer", "null"],
            "minimum": 1,
            "description": "Runs of this playbook executing at once.",
        },
        "breaker": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "failures": {
                    "type": "integer",
                    "minimum": 1,
                    "description": "Consecutive failed/unverified runs that open it.",
                },
                "reset_after": {**DURATION, "description": "Closes by itself after this."},
            },
        },
        "storm": {
            "type": ["object", "null"],
            "description": "Storm detection; null turns it off for this playbook.",
            "additionalProperties": False,
            "properties": {
                "min_targets": {
                    "type": "integer",
                    "minimum": 1,
                    "description": "Fewer distinct targets is never a storm.",
                },
                "max_targets": {"type": "integer", "minimum": 1},
                "max_percent": {"type": "number", "exclusiveMinimum": 0, "maximum": 100},
                "window": DURATION,
                "playbook": {
                    "type": ["string", "null"],
                    "description": "Platform-level playbook run once per storm.",
                },
            },
        },
        "allow_destructive": {"type": "boolean", "description": "Opt in to destructive actions."},
        "approval": {
            "enum": ["never", "destructive", "always"],
            "description": "Steps that wait for an operator's approval.",
        },
        "approval_timeout": {
            **DURATION,
            "description": "Waiting longer than this rejects the run.",
        },
    },
}


STEP_NAME_PATTERN = r"^[a-z_][a-z0-9_]*$"
BRANCH_NAME: dict[str, Any] = {
    "type": "string",
    "pattern": STEP_NAME_PATTERN,
    "description": "A branch name, e.g. restart_app.",
}
_STEP_NAME: dict[str, Any] = {
    "type": "string",
    "pattern": STEP_NAME_PATTERN,
    "description": "Unique in the playbook; later steps read `steps.<name>.output`.",
}
_WHEN: dict[str, Any] = {
    "type": "string",
    "description": "Expression (no braces); the step is skipped when false.",
}
_ON_BRANCH: dict[str, Any] = {
    "description": "Run only when a `choose` step picked this branch (or one of these).",
    "oneOf": [BRANCH_NAME, {"type": "array", "minItems": 1, "items": BRANCH_NAME}],
}


def _step(*, check: bool) -> dict[str, Any]:
    properties: dict[str, Any] = {
        "name": _STEP_NAME,
        "action": {"type": "string", "description": "A registered action, e.g. `log`."},
        "params": {
            "type": "object",
            "description": "The action's params; strings may be templates.",
        },
        "when": _WHEN,
        "on_branch": _ON_BRANCH,
        "timeout": {**DURATION, "description": "Per attempt. Default 30s."},
        "retry": _RETRY,
    }
    if check:
        properties["expect"] = {
            "type": "string",
            "description": "Expression over `output` that must be true for the check to hold.",
        }
    return {
        "type": "object",
        "additionalProperties": False,
        "required": ["name", "action"],
        "properties": properties,
    }


_CHOOSE_STEP: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["name", "choose"],
    "description": "Pick one branch: the first case whose `when` holds, else `default`. "
    "Later steps run on it with `on_branch`; its output is {branch, case}.",
    "properties": {
        "name": _STEP_NAME,
        "choose": {
            "type": "array",
            "minItems": 1,
            "items": {
                "type": "object",
                "additionalProperties": False,
                "required": ["branch"],
                "properties": {
                    "when": {
                        "type": "string",
                        "description": "Expression (no braces); without it the case always "
                        "holds, and must be the last.",
                    },
                    "branch": BRANCH_NAME,
                },
            },
        },
        "default": {**BRANCH_NAME, "description": "The branch when no case holds."},
        "when": _WHEN,
        "on_branch": _ON_BRANCH,
    },
}
_ANY_STEP: dict[str, Any] = {
    "if": {"type": "object", "required": ["choose"]},
    "then": {"$ref": "#/$defs/choose_step"},
    "else": {"$ref": "#/$defs/action_step"},
}


def playbook_schema(catalog: ActionCatalog | None = None) -> dict[str, Any]:
    action_step = _step(check=False)
    check = _step(check=True)
    schema: dict[str, Any] = {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": SCHEMA_ID,
        "title": "remediator playbook",
        "type": "object",
        "additionalProperties": False,
        "required": ["name", "trigger", "target", "steps"],
        "properties": {
            "name": {
                "type": "string",
                "pattern": NAME_PATTERN,
                "description": "Unique across all playbooks; lowercase DNS-label style.",
            },
            "description": {"type": "string"},
            "priority": {
                "type": "integer",
                "description": "Higher wins when only one playbook may run per alert.",
            },
            "trigger": {
                "type": "object",
                "additionalProperties": False,
                "required": ["matchers"],
                "properties": {
                    "matchers": {
                        "type": "array",
                        "minItems": 1,
                        "items": {"type": "string"},
                        "description": "Alertmanager matchers, all must hold: "
                        'alertname="StoreDown", severity=~"critical|warning".',
                    },
                    "status": {
                        "description": "Alert statuses that trigger a run. Default: firing.",
                        "oneOf": [
                            {"enum": ["firing", "resolved"]},
                            {
                                "type": "array",
                                "minItems": 1,
                                "uniqueItems": True,
                                "items": {"enum": ["firing", "resolved"]},
                            },
                        ],
                    },
                },
            },
            "target": {
                "type": "string",
                "minLength": 1,
                "description": "Template of what the playbook acts on, e.g. "
                "'store-{{ alert.labels.store_id }}'. One run per target.",
            },
            "dry_run": {
                "type": "boolean",
                "description": "Mutating steps of this playbook only report what they would do.",
            },
            "resume": {
                "type": "boolean",
                "description": "When the replica running it dies, another one resumes the run "
                "after the step that was in flight, even if mutating steps remain. Without it "
                "a run resumes only when every step left is read-only.",
            },
            "safety": _SAFETY,
            "steps": {"type": "array", "minItems": 1, "items": {"$ref": "#/$defs/step"}},
            "on_failure": {
                "type": "array",
                "items": {"$ref": "#/$defs/action_step"},
                "description": "Escalation, run when a step fails or verification does not hold.",
            },
            "verify": {
                "type": "object",
                "additionalProperties": False,
                "required": ["checks"],
                "properties": {
                    "timeout": {**DURATION, "description": "Deadline for all checks to hold."},
                    "interval": {**DURATION, "description": "Pause between rounds of checks."},
                    "checks": {"type": "array", "minItems": 1, "items": {"$ref": "#/$defs/check"}},
                },
            },
        },
        "$defs": {
            "step": _ANY_STEP,
            "action_step": action_step,
            "choose_step": _CHOOSE_STEP,
            "check": check,
            "duration": DURATION,
        },
    }
    if catalog is not None:
        _add_action_params(schema, catalog)
    return schema


def _add_action_params(schema: dict[str, Any], catalog: ActionCatalog) -> None:
    names = catalog.names()
    branches: list[dict[str, Any]] = []
    for name in names:
        spec = catalog.spec(name)
        assert spec is not None  # noqa: S101 - names() and spec() come from one registry
        described = params.describe(spec.params)
        branches.append(
            {
                "if": {"properties": {"action": {"const": name}}, "required": ["action"]},
                "then": {"properties": {"params": described}},
            }
        )
    for definition in ("action_step", "check"):
        body = schema["$defs"][definition]
        body["properties"]["action"]["enum"] = names
        body["allOf"] = branches
