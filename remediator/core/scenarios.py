"""Playbook scenarios: what ``remediator test`` reads, and how it judges what happened.

A scenario file tests one playbook. Each scenario declares a platform (stores, faults,
the provisioner's view, Prometheus series), what arrives (alerts, the safety state, an
operator's approval) and what must happen (runs with their branch, steps, outcome and
verification; alerts not run and why; the exact writes; notifications; the platform's end
state). The runner (:mod:`remediator.simulation.scenarios`) plays a scenario on the simulated
platform and hands back an `Observed`; everything here is pure: the schema, loading with
``file:line: path: message`` problems, the comparison into a readable diff, coverage, and the
time compression that lets a scenario run in a fraction of a second.
"""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import jsonschema

from remediator.core import choosing, durations, parsing, schema, validation
from remediator.core.actions import ActionCatalog
from remediator.core.errors import Problem
from remediator.core.playbooks import Playbook, PlaybookSet, RetryPolicy, Step
from remediator.core.runs import RunStatus, StepOutcome

SCHEMA_ID = "https://remediator.dev/schemas/scenario.schema.json"
STORE_ID = r"^[a-z0-9]([a-z0-9-]{0,40}[a-z0-9])?$"
SERIES = r"^[a-zA-Z_:][a-zA-Z0-9_:]*(\{[^}]*\})?\s+-?[0-9]+(\.[0-9]+)?$"
PROVISIONER_STATUSES = ("provisioning", "running", "failed", "deleting", "absent")
"""What the provisioner can say of a store; ``absent``: it does not know the store."""
FINISHED = (
    str(RunStatus.SUCCEEDED),
    str(RunStatus.FAILED),
    str(RunStatus.UNVERIFIED),
    str(RunStatus.REJECTED),
    str(RunStatus.CANCELLED),
    str(RunStatus.INTERRUPTED),
)
DEFAULT_TIME_SCALE = 0.01
"""Playbooks poll 100 times faster in scenarios: a 15 s verify interval takes 150 ms."""
NOT_RUN = "not_run"
"""A step the run never reached."""
TIMEOUT_CAP = 1.0
"""Seconds no timeout exceeds in a scenario."""


# --- the schema ---------------------------------------------------------------------------------


def scenario_schema(faults: Sequence[str] = ()) -> dict[str, Any]:
    """The scenario file's JSON Schema; ``faults`` (the simulated platform's catalogue) makes
    the fault names an enum for editors and for validation."""
    store_id: dict[str, Any] = {"type": "string", "pattern": STORE_ID, "description": "A store id."}
    stores: dict[str, Any] = {"type": "array", "items": store_id}
    labels: dict[str, Any] = {
        "type": "object",
        "additionalProperties": {"type": "string"},
        "description": "More labels of the alert (store_id and namespace come from `store`).",
    }
    fault_name: dict[str, Any] = {"type": "string", "description": "A fault of the catalogue."}
    if faults:
        fault_name["enum"] = sorted(faults)
    outcome = {
        "enum": [*(str(o) for o in StepOutcome), NOT_RUN],
        "description": f"An outcome, or {NOT_RUN}: the run ended before the step.",
    }
    alert: dict[str, Any] = {
        "type": "object",
        "additionalProperties": False,
        "required": ["alert"],
        "properties": {
            "alert": {"type": "string", "minLength": 1, "description": "The alertname."},
            "store": {**store_id, "description": "Labels store_id=ID, namespace=store-ID."},
            "stores": {
                **stores,
                "minItems": 1,
                "description": "One alert per store, in one delivery (a storm).",
            },
            "labels": labels,
            "status": {"enum": ["firing", "resolved"], "description": "Default firing."},
            "after": {
                "enum": ["finished", "started", "sent"],
                "description": "Send it once every earlier run finished (default), once a run "
                "started, or right after the previous delivery.",
            },
        },
    }
    history = {
        "type": "object",
        "additionalProperties": False,
        "required": ["alert", "outcome"],
        "properties": {
            "alert": alert["properties"]["alert"],
            "store": alert["properties"]["store"],
            "labels": labels,
            "outcome": {"enum": ["succeeded", "failed", "unverified"]},
            "ago": {**schema.DURATION, "description": "When it finished. Default 1m."},
        },
    }
    run: dict[str, Any] = {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "playbook": {"type": "string"},
            "target": {"type": "string"},
            "branch": {
                "description": "The branch its choose step picked; null: none ran.",
                "oneOf": [
                    {"type": "null"},
                    schema.BRANCH_NAME,
                    {"type": "array", "items": schema.BRANCH_NAME},
                ],
            },
            "steps": {
                "type": "object",
                "additionalProperties": outcome,
                "description": "Step name → outcome, for the steps named.",
            },
            "outcome": {"enum": list(FINISHED)},
            "verification": {"enum": ["passed", "failed", "none"]},
            "error": {"type": "string", "description": "Text the run's error contains."},
            "approval": {"enum": ["approved", "rejected", "none"]},
        },
    }
    not_run = {
        "type": "object",
        "additionalProperties": False,
        "required": ["reason"],
        "properties": {
            "playbook": {"type": ["string", "null"]},
            "target": {"type": ["string", "null"]},
            "reason": {"type": "string"},
        },
    }
    scenario = {
        "type": "object",
        "additionalProperties": False,
        "required": ["name", "alerts", "expect"],
        "properties": {
            "name": {"type": "string", "minLength": 1},
            "description": {"type": "string"},
            "platform": {
                "type": "object",
                "additionalProperties": False,
                "properties": {
                    "stores": {**stores, "description": "Healthy, running stores to start with."},
                    "faults": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "additionalProperties": False,
                            "required": ["fault"],
                            "properties": {"fault": fault_name, "store": store_id},
                        },
                    },
                    "provisioner": {
                        "type": "object",
                        "description": "Store id → what the provisioner says of it, applied "
                        "after the faults; a store not in `stores` exists only there.",
                        "propertyNames": {"pattern": STORE_ID},
                        "additionalProperties": {"enum": list(PROVISIONER_STATUSES)},
                    },
                    "series": {
                        "type": "array",
                        "items": {"type": "string", "pattern": SERIES},
                        "description": "Samples Prometheus holds, 'name{label=\"v\"} VALUE'; "
                        "store_up of a store not declared here follows its storefront.",
                    },
                },
            },
            "safety": {
                "type": "object",
                "additionalProperties": False,
                "properties": {
                    "paused": {"type": "boolean", "description": "The kill switch is on."},
                    "history": {
                        "type": "array",
                        "items": history,
                        "description": "Runs that finished before the alerts arrive.",
                    },
                },
            },
            "approval": {
                "enum": ["approve", "reject"],
                "description": "What the operator answers a run waiting for approval.",
            },
            "alerts": {"type": "array", "minItems": 1, "items": alert},
            "expect": {
                "type": "object",
                "additionalProperties": False,
                "properties": {
                    "runs": {"type": "array", "items": run, "description": "Every run, in order."},
                    "not_run": {
                        "type": "array",
                        "items": not_run,
                        "description": "Every alert or candidate run that did not run, in order.",
                    },
                    "writes": {
                        "type": "array",
                        "items": {"type": "string"},
                        "description": "Every write, in order: 'k8s METHOD resource ns/name', "
                        "'provisioner METHOD path', 'notify TARGET'; [] for none.",
                    },
                    "notifications": {
                        "type": "array",
                        "items": {"type": "string"},
                        "description": "Text each message contains, in order.",
                    },
                    "platform": {
                        "type": "object",
                        "additionalProperties": False,
                        "properties": {
                            key: {**stores, "description": description}
                            for key, description in (
                                ("healthy", "Serving, ready, provisioned, Helm deployed."),
                                ("unhealthy", "Still something wrong."),
                                ("gone", "No namespace, unknown to the provisioner."),
                            )
                        },
                    },
                },
            },
        },
    }
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": SCHEMA_ID,
        "title": "remediator playbook scenarios",
        "type": "object",
        "additionalProperties": False,
        "required": ["playbook", "scenarios"],
        "properties": {
            "playbook": {"type": "string", "description": "The playbook these scenarios test."},
            "scenarios": {"type": "array", "minItems": 1, "items": scenario},
        },
    }


# --- loading ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Arrival:
    """One delivery: the same alert for one or several stores."""

    alertname: str
    stores: tuple[str | None, ...] = (None,)
    labels: Mapping[str, str] = field(default_factory=dict)
    status: str = "firing"
    after: str = "finished"

    def alert_labels(self) -> list[dict[str, str]]:
        found = []
        for store in self.stores:
            labels = {"alertname": self.alertname, **self.labels}
            if store is not None:
                labels.update(store_id=store, namespace=f"store-{store}")
            found.append(labels)
        return found


@dataclass(frozen=True, slots=True, kw_only=True)
class PastRun:
    arrival: Arrival
    outcome: RunStatus
    ago: float


@dataclass(frozen=True, slots=True, kw_only=True)
class Scenario:
    name: str
    source: str
    line: int
    playbook: str
    stores: tuple[str, ...] = ()
    faults: tuple[tuple[str, str | None], ...] = ()
    provisioner: Mapping[str, str] = field(default_factory=dict)
    series: tuple[str, ...] = ()
    paused: bool = False
    history: tuple[PastRun, ...] = ()
    approval: str | None = None
    alerts: tuple[Arrival, ...] = ()
    expect: Mapping[str, Any] = field(default_factory=dict)

    @property
    def where(self) -> str:
        return f"{self.source}:{self.line}"


@dataclass(frozen=True, slots=True, kw_only=True)
class ScenarioFile:
    source: str
    playbook: str
    scenarios: tuple[Scenario, ...]


def load(
    text: str,
    *,
    source: str,
    playbooks: PlaybookSet,
    platform_faults: Mapping[str, bool],
) -> tuple[list[ScenarioFile], list[Problem]]:
    """The scenario files of ``text`` (one per YAML document) and every problem in them.

    ``platform_faults``: fault name → whether it breaks the platform (takes no store).
    """
    documents, problems = parsing.read_documents(text, source=source)
    checker = jsonschema.Draft202012Validator(scenario_schema(sorted(platform_faults)))
    files = []
    for doc in documents:
        found = validation.structural(doc, checker)
        if not found:
            found = _semantic(doc, playbooks, platform_faults)
        problems.extend(found)
        if not found:
            files.append(_parse(doc))
    return files, sorted(problems, key=lambda p: (p.line or 0, p.path))


def _semantic(
    doc: parsing.Document, playbooks: PlaybookSet, platform_faults: Mapping[str, bool]
) -> list[Problem]:
    raw = doc.raw
    problems: list[Problem] = []

    def problem(path: tuple[str | int, ...], message: str) -> None:
        problems.append(
            Problem(
                source=doc.source,
                path=parsing.format_path(path),
                line=doc.line_of(path),
                message=message,
            )
        )

    def suggest(name: str, known: Iterable[str]) -> str:
        hint = difflib.get_close_matches(name, sorted(known), n=1)
        return f" (did you mean {hint[0]!r}?)" if hint else ""

    playbook = playbooks.by_name(raw["playbook"])
    names = [p.name for p in playbooks.playbooks]
    if playbook is None:
        problem(("playbook",), f"no playbook {raw['playbook']!r}{suggest(raw['playbook'], names)}")
    for i, scenario in enumerate(raw["scenarios"]):
        here: tuple[str | int, ...] = ("scenarios", i)
        for j, fault in enumerate(scenario.get("platform", {}).get("faults", ())):
            platform_wide = platform_faults.get(fault["fault"], False)
            if platform_wide and "store" in fault:
                where = (*here, "platform", "faults", j, "store")
                problem(where, "a platform fault takes no store")
            if not platform_wide and "store" not in fault:
                problem((*here, "platform", "faults", j), f"fault {fault['fault']!r} needs a store")
        for j, arrival in enumerate(scenario["alerts"]):
            if "store" in arrival and "stores" in arrival:
                problem((*here, "alerts", j, "stores"), "give either store or stores")
        for j, run in enumerate(scenario["expect"].get("runs", ())):
            path = (*here, "expect", "runs", j)
            expected = playbooks.by_name(run["playbook"]) if "playbook" in run else playbook
            if "playbook" in run and expected is None:
                problem((*path, "playbook"), f"no playbook {run['playbook']!r}")
            if expected is None:
                continue
            branches = set(expected.branch_owners())
            picked = run.get("branch")
            for name in [picked] if isinstance(picked, str) else picked or []:
                if name not in branches:
                    hint = suggest(name, branches)
                    message = f"playbook {expected.name!r} has no branch {name!r}{hint}"
                    problem((*path, "branch"), message)
            steps = {s.name for _, s in expected.all_steps()}
            for name in run.get("steps", {}):
                if name not in steps:
                    message = f"playbook {expected.name!r} has no step {name!r}"
                    problem((*path, "steps", name), message + suggest(name, steps))
    return problems


def _arrival(raw: Mapping[str, Any]) -> Arrival:
    stores: tuple[str | None, ...] = (
        tuple(raw["stores"]) if "stores" in raw else (raw.get("store"),)
    )
    return Arrival(
        alertname=raw["alert"],
        stores=stores,
        labels=dict(raw.get("labels", {})),
        status=raw.get("status", "firing"),
        after=raw.get("after", "finished"),
    )


def _parse(doc: parsing.Document) -> ScenarioFile:
    raw = doc.raw
    scenarios = []
    for i, item in enumerate(raw["scenarios"]):
        platform = item.get("platform", {})
        safety = item.get("safety", {})
        scenarios.append(
            Scenario(
                name=item["name"],
                source=doc.source,
                line=doc.line_of(("scenarios", i)),
                playbook=raw["playbook"],
                stores=tuple(platform.get("stores", ())),
                faults=tuple((f["fault"], f.get("store")) for f in platform.get("faults", ())),
                provisioner=dict(platform.get("provisioner", {})),
                series=tuple(platform.get("series", ())),
                paused=safety.get("paused", False),
                history=tuple(
                    PastRun(
                        arrival=_arrival(h),
                        outcome=RunStatus(h["outcome"]),
                        ago=durations.parse_duration(h.get("ago", 60)),
                    )
                    for h in safety.get("history", ())
                ),
                approval=item.get("approval"),
                alerts=tuple(_arrival(a) for a in item["alerts"]),
                expect=item["expect"],
            )
        )
    return ScenarioFile(source=doc.source, playbook=raw["playbook"], scenarios=tuple(scenarios))


# --- what happened ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class ObservedRun:
    playbook: str
    target: str
    outcome: str
    error: str | None = None
    branches: tuple[str, ...] = ()
    """What its choose steps picked, in order."""
    steps: Mapping[str, str] = field(default_factory=dict)
    """Step name → outcome (steps and on_failure)."""
    verification: str = "none"
    checks: tuple[str, ...] = ()
    """The verify checks of the last round."""
    approval: str = "none"


@dataclass(frozen=True, slots=True, kw_only=True)
class Observed:
    runs: tuple[ObservedRun, ...] = ()
    not_run: tuple[Mapping[str, str | None], ...] = ()
    writes: tuple[str, ...] = ()
    notifications: tuple[str, ...] = ()
    platform: Mapping[str, tuple[str, str]] = field(default_factory=dict)
    """Store id → (``healthy``, ``unhealthy`` or ``gone``; what is wrong)."""


def compare(scenario: Scenario, got: Observed) -> list[str]:
    """Every difference between what ``scenario`` expects and what happened, one per line
    (``runs[0].branch: expected restart_app, got escalate_database``); empty: it passed."""
    expect = scenario.expect
    lines: list[str] = []
    if "runs" in expect:
        lines.extend(_compare_runs(expect["runs"], got.runs, scenario.playbook))
    if "not_run" in expect:
        lines.extend(_compare_not_run(expect["not_run"], got.not_run))
    if "writes" in expect:
        lines.extend(_compare_lists("writes", list(expect["writes"]), list(got.writes)))
    if "notifications" in expect:
        lines.extend(_compare_notifications(expect["notifications"], got.notifications))
    for state, stores in expect.get("platform", {}).items():
        for store in stores:
            found, why = got.platform.get(store, ("gone", "no such store"))
            if found != state:
                detail = f" ({why})" if why else ""
                lines.append(f"platform.{state}: store {store} is {found}{detail}")
    return lines


def _describe(run: ObservedRun) -> str:
    branch = f" branch {'/'.join(run.branches)}" if run.branches else ""
    error = f": {run.error}" if run.error else ""
    return f"{run.playbook} on {run.target}{branch}, {run.outcome}{error}"


def _compare_runs(
    expected: Sequence[Mapping[str, Any]], got: Sequence[ObservedRun], default_playbook: str
) -> list[str]:
    lines = []
    if len(expected) != len(got):
        lines.append(f"runs: expected {len(expected)}, got {len(got)}")
        lines.extend(f"  got runs[{i}]: {_describe(run)}" for i, run in enumerate(got))
    for i, (want, run) in enumerate(zip(expected, got, strict=False)):
        path = f"runs[{i}]"
        differences = []
        playbook = want.get("playbook", default_playbook)
        if playbook != run.playbook:
            differences.append(f"{path}.playbook: expected {playbook}, got {run.playbook}")
        if "target" in want and want["target"] != run.target:
            differences.append(f"{path}.target: expected {want['target']}, got {run.target}")
        if "branch" in want:
            branch = want["branch"]
            wanted = [] if branch is None else [branch] if isinstance(branch, str) else branch
            if list(run.branches) != list(wanted):
                expected_text = "/".join(wanted) or "none"
                got_text = "/".join(run.branches) or "none"
                differences.append(f"{path}.branch: expected {expected_text}, got {got_text}")
        for step, outcome in want.get("steps", {}).items():
            actual = run.steps.get(step, NOT_RUN)
            if actual != outcome:
                differences.append(f"{path}.steps.{step}: expected {outcome}, got {actual}")
        for key, actual in (
            ("outcome", run.outcome),
            ("verification", run.verification),
            ("approval", run.approval),
        ):
            if key in want and want[key] != actual:
                differences.append(f"{path}.{key}: expected {want[key]}, got {actual}")
        if "error" in want and want["error"] not in (run.error or ""):
            differences.append(
                f"{path}.error: expected it to contain {want['error']!r}, got {run.error!r}"
            )
        if differences:
            lines.extend(differences)
            lines.append(f"  got {path}: {_describe(run)}")
            ran = ", ".join(f"{name} {outcome}" for name, outcome in run.steps.items())
            lines.append(f"    steps: {ran}")
    return lines


def _compare_not_run(
    expected: Sequence[Mapping[str, Any]], got: Sequence[Mapping[str, str | None]]
) -> list[str]:
    def shown(entry: Mapping[str, Any]) -> str:
        who = " on ".join(str(entry[k]) for k in ("playbook", "target") if entry.get(k))
        return f"{who or 'alert'}: {entry.get('reason')}"

    matches = len(expected) == len(got) and all(
        all(actual.get(key) == value for key, value in want.items())
        for want, actual in zip(expected, got, strict=True)
    )
    if matches:
        return []
    return _compare_lists("not_run", [shown(e) for e in expected], [shown(g) for g in got])


def _compare_notifications(expected: Sequence[str], got: Sequence[str]) -> list[str]:
    lines = []
    if len(expected) != len(got):
        lines.append(f"notifications: expected {len(expected)}, got {len(got)}")
    for i, (want, text) in enumerate(zip(expected, got, strict=False)):
        if want not in text:
            lines.append(f"notifications[{i}]: expected it to contain {want!r}, got {text!r}")
    if lines:
        lines.extend(f"  got notifications[{i}]: {text}" for i, text in enumerate(got))
    return lines


def _compare_lists(name: str, expected: list[str], got: list[str]) -> list[str]:
    """An ordered diff: ``-`` expected but missing, ``+`` there but not expected."""
    if expected == got:
        return []
    lines = [f"{name}: expected (-) and got (+) differ:"]
    if not expected and not got:
        return lines
    matcher = difflib.SequenceMatcher(a=expected, b=got, autojunk=False)
    for op, a1, a2, b1, b2 in matcher.get_opcodes():
        if op == "equal":
            lines.extend(f"    {item}" for item in expected[a1:a2])
            continue
        lines.extend(f"  - {item}" for item in expected[a1:a2])
        lines.extend(f"  + {item}" for item in got[b1:b2])
    if not got:
        lines.append("  (got none)")
    return lines


# --- coverage -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Coverage:
    playbook: str
    branches: tuple[str, ...]
    """Branches no scenario's run picked."""
    steps: tuple[str, ...]
    """Steps and checks no scenario's run executed (not skipped)."""


def coverage(playbook: Playbook, runs: Iterable[ObservedRun]) -> Coverage:
    picked: set[str] = set()
    ran: set[str] = set()
    owners = [s.name for s in playbook.steps if s.choice is not None]
    for run in runs:
        if run.playbook != playbook.name:
            continue
        picked.update(run.branches)
        ran.update(name for name, outcome in run.steps.items() if outcome != StepOutcome.SKIPPED)
        # Checks are not recorded as steps: one was evaluated when it was in the last round
        # and its on_branch let it run (a skipped check still "holds").
        chosen = dict(zip(owners, run.branches, strict=False))
        context = {name: {"output": {"branch": branch}} for name, branch in chosen.items()}
        checks = {c.name: c for c in playbook.verify.checks} if playbook.verify else {}
        ran.update(
            name
            for name in run.checks
            if name in checks and choosing.admitted(playbook, checks[name], context)
        )
    branches = [b for b in playbook.branch_owners() if b not in picked]
    steps = [step.name for _, step in playbook.all_steps() if step.name not in ran]
    return Coverage(playbook=playbook.name, branches=tuple(branches), steps=tuple(steps))


# --- time ---------------------------------------------------------------------------------------


def compress_time(
    playbook: Playbook, scale: float, catalog: ActionCatalog, *, cap: float = TIMEOUT_CAP
) -> Playbook:
    """``playbook`` with what it waits for shortened: the ``interval`` param of polling
    actions, retry backoffs and the verification interval multiplied by ``scale``; every
    timeout (steps, checks, verification, approval) cut to at most ``cap`` seconds, long enough
    for a call that takes milliseconds on a busy machine, short enough that a scenario which
    waits a deadline out still ends within about a second. A one-read wait (``interval`` at
    least its ``timeout``) gets an interval equal to its timeout: it still reads once.
    Wall-clock ages such as ``older_than`` and the safety windows are left alone."""

    def shorter(seconds: float) -> float:
        return min(seconds, cap)

    def step(original: Step) -> Step:
        spec = catalog.spec(original.action)
        params = dict(original.params)
        timeout = shorter(original.timeout)
        fields = {f.name: f for f in dataclasses.fields(spec.params)} if spec else {}
        if "interval" in fields:
            interval = params.get("interval", fields["interval"].default)
            if isinstance(interval, int | float):
                one_read = interval >= original.timeout
                params["interval"] = timeout if one_read else float(interval) * scale
        retry = original.retry
        return dataclasses.replace(
            original,
            params=params,
            timeout=timeout,
            retry=RetryPolicy(
                attempts=retry.attempts,
                backoff=retry.backoff * scale,
                max_backoff=retry.max_backoff * scale,
            ),
        )

    verify = playbook.verify
    return dataclasses.replace(
        playbook,
        steps=tuple(step(s) for s in playbook.steps),
        on_failure=tuple(step(s) for s in playbook.on_failure),
        verify=None
        if verify is None
        else dataclasses.replace(
            verify,
            checks=tuple(step(c) for c in verify.checks),
            timeout=shorter(verify.timeout),
            interval=verify.interval * scale,
        ),
        safety=dataclasses.replace(
            playbook.safety, approval_timeout=shorter(playbook.safety.approval_timeout)
        ),
    )
