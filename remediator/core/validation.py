"""Every problem in a set of playbooks, located as ``file:line: path: message``.

Structure is checked against the JSON Schema (the same one editors use), then the meaning:
matchers, templates, actions and their typed params, unique names. All problems are collected,
never just the first, so an author fixes a file in one pass.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping
from typing import Any

import jsonschema

from remediator.core import matching, params, parsing, schema, scope, templating
from remediator.core.actions import ActionCatalog
from remediator.core.errors import PlaybookError, Problem, TemplateError
from remediator.core.parsing import Document
from remediator.core.playbooks import Playbook, PlaybookSet
from remediator.core.safety import SafetyPolicy

_STRUCTURE = jsonschema.Draft202012Validator(schema.playbook_schema())


DEFAULT_POLICY = SafetyPolicy()
OPAQUE_LABELS = (
    "read labels as alert.labels.NAME or alert.labels['NAME'], so their values are "
    "scope-checked before use"
)


def validate(
    doc: Document, catalog: ActionCatalog, *, defaults: SafetyPolicy = DEFAULT_POLICY
) -> list[Problem]:
    problems = structural(doc)
    if isinstance(doc.raw, Mapping):
        problems.extend(_semantic(doc, doc.raw, catalog))
        if not problems:
            problems.extend(_destructive(doc, doc.raw, catalog, defaults))
    return sorted(problems, key=lambda p: (p.line or 0, p.path))


def load_set(
    files: Mapping[str, str],
    catalog: ActionCatalog,
    *,
    digest: str = "",
    defaults: SafetyPolicy = DEFAULT_POLICY,
) -> PlaybookSet:
    """Parse and validate whole files; raise :class:`PlaybookError` with every problem."""
    problems: list[Problem] = []
    playbooks: list[Playbook] = []
    for source, text in sorted(files.items()):
        documents, syntax = parsing.read_documents(text, source=source)
        problems.extend(syntax)
        for doc in documents:
            found = validate(doc, catalog, defaults=defaults)
            problems.extend(found)
            if found:
                continue
            try:
                playbooks.append(
                    parsing.parse_playbook(doc.raw, source=source, line=doc.line, defaults=defaults)
                )
            except ValueError as e:
                # What the schema cannot express (a duration of .inf or .nan) must still be a
                # problem of this file, not a crash of the loader.
                problems.append(Problem(source=source, path="", line=doc.line, message=str(e)))
    problems.extend(_duplicates(playbooks))
    problems.extend(_storm_playbooks(playbooks))
    if problems:
        raise PlaybookError(problems)
    return PlaybookSet(playbooks=tuple(playbooks), digest=digest)


def structural(
    doc: Document, checker: jsonschema.protocols.Validator = _STRUCTURE
) -> list[Problem]:
    """What ``checker`` (the playbook schema by default) finds wrong with the document's
    structure, with the unknown keys' closest known ones suggested."""
    problems: list[Problem] = []
    for error in checker.iter_errors(doc.raw):
        _report(doc, error, problems)
    return problems


_JSON_TYPES: dict[str, tuple[type, ...]] = {
    "null": (type(None),),
    "object": (dict,),
    "array": (list,),
    "string": (str,),
    "boolean": (bool,),
    "integer": (int,),
    "number": (int, float),
}


def _report(doc: Document, error: jsonschema.ValidationError, problems: list[Problem]) -> None:
    path = tuple(error.absolute_path)
    rule: Mapping[str, Any] = error.schema if isinstance(error.schema, Mapping) else {}
    if error.validator == "additionalProperties" and isinstance(error.instance, Mapping):
        allowed = set(rule.get("properties", {}))
        for key in error.instance:
            if key not in allowed:
                hint = difflib.get_close_matches(str(key), sorted(allowed), n=1)
                suffix = f" (did you mean {hint[0]!r}?)" if hint else ""
                problems.append(_problem(doc, (*path, key), f"unknown key{suffix}"))
        return
    if error.validator == "oneOf":
        if rule.get("oneOf") == schema.DURATION["oneOf"]:
            message = f"{error.instance!r} is not a duration such as '30s', '5m' or 10"
            problems.append(_problem(doc, path, message))
            return
        branch = _branch_for(rule, error.instance)
        if branch is not None:
            # Report what is wrong inside the alternative the value was evidently meant for
            # (an object for an object branch), not "is not valid under any of the schemas".
            for sub in error.context or ():
                if sub.relative_schema_path[0] == branch:
                    _report(doc, sub, problems)
            return
    problems.append(_problem(doc, path, error.message))


def _branch_for(rule: Mapping[str, Any], instance: object) -> int | None:
    """The one ``oneOf`` alternative whose declared type the instance has, if exactly one."""
    matches = []
    for index, alternative in enumerate(rule.get("oneOf", ())):
        declared = alternative.get("type")
        names = declared if isinstance(declared, list) else [declared]
        kinds = tuple(t for name in names if name for t in _JSON_TYPES.get(name, ()))
        if kinds and isinstance(instance, kinds):
            matches.append(index)
    return matches[0] if len(matches) == 1 else None


def _semantic(doc: Document, raw: Mapping[str, Any], catalog: ActionCatalog) -> list[Problem]:
    problems: list[Problem] = []
    trigger = raw.get("trigger")
    if isinstance(trigger, Mapping) and isinstance(trigger.get("matchers"), list):
        for i, text in enumerate(trigger["matchers"]):
            if isinstance(text, str):
                try:
                    matching.parse_matcher(text)
                except ValueError as e:
                    problems.append(_problem(doc, ("trigger", "matchers", i), f"bad matcher: {e}"))
    target = raw.get("target")
    if isinstance(target, str):
        problems.extend(_template(doc, ("target",), target, expression=False))
    seen: dict[str, tuple[str | int, ...]] = {}
    path: tuple[str | int, ...]
    for phase_path, steps in _phases(raw):
        for i, step in enumerate(steps):
            if isinstance(step, Mapping):
                path = (*phase_path, i)
                problems.extend(_step(doc, path, step, catalog, check=phase_path[0] == "verify"))
                name = step.get("name")
                if isinstance(name, str):
                    if name in seen:
                        first = parsing.format_path(seen[name])
                        problems.append(
                            _problem(
                                doc,
                                (*path, "name"),
                                f"duplicate step name {name!r} (first used at {first})",
                            )
                        )
                    seen.setdefault(name, path)
    problems.extend(_branches(doc, raw))
    return problems


def _branches(doc: Document, raw: Mapping[str, Any]) -> list[Problem]:
    """``choose`` steps that cannot always pick a branch or have cases nobody reaches, and
    ``on_branch`` names no earlier ``choose`` step can produce."""
    problems: list[Problem] = []
    owners: dict[str, str] = {}
    later: dict[str, str] = {}
    steps = raw.get("steps")
    if isinstance(steps, list):
        for step in steps:
            if isinstance(step, Mapping) and isinstance(step.get("choose"), list):
                for case in step["choose"]:
                    if isinstance(case, Mapping) and isinstance(case.get("branch"), str):
                        later.setdefault(case["branch"], str(step.get("name")))
                if isinstance(step.get("default"), str):
                    later.setdefault(step["default"], str(step.get("name")))
    for phase_path, items in _phases(raw):
        for i, step in enumerate(items):
            if not isinstance(step, Mapping):
                continue
            path = (*phase_path, i)
            problems.extend(_on_branch(doc, path, step, owners, later))
            if phase_path == ("steps",) and isinstance(step.get("choose"), list):
                problems.extend(_choose(doc, path, step, owners))
    return problems


def _choose(
    doc: Document, path: tuple[str | int, ...], step: Mapping[str, Any], owners: dict[str, str]
) -> list[Problem]:
    problems: list[Problem] = []
    name = str(step.get("name"))
    always: int | None = None
    produced: list[tuple[tuple[str | int, ...], str]] = []
    for j, case in enumerate(step["choose"]):
        if not isinstance(case, Mapping):
            continue
        here = (*path, "choose", j)
        if always is not None:
            problems.append(
                _problem(doc, here, f"unreachable: case {always} before it always holds")
            )
        when = case.get("when")
        if isinstance(when, str):
            problems.extend(_template(doc, (*here, "when"), when, expression=True))
        if always is None and (when is None or templating.always_true(str(when))):
            always = j
        if isinstance(case.get("branch"), str):
            produced.append(((*here, "branch"), case["branch"]))
    default = step.get("default")
    if isinstance(default, str):
        if always is not None:
            message = f"unreachable: case {always} always holds"
            problems.append(_problem(doc, (*path, "default"), message))
        produced.append(((*path, "default"), default))
    elif always is None:
        problems.append(
            _problem(
                doc,
                (*path, "choose"),
                "no case always holds: add `default: <branch>` for when none does",
            )
        )
    for where, branch in produced:
        owner = owners.setdefault(branch, name)
        if owner != name:
            problems.append(
                _problem(doc, where, f"branch {branch!r} is already chosen by step {owner!r}")
            )
    return problems


def _on_branch(
    doc: Document,
    path: tuple[str | int, ...],
    step: Mapping[str, Any],
    owners: Mapping[str, str],
    later: Mapping[str, str],
) -> list[Problem]:
    wanted = step.get("on_branch")
    names = [wanted] if isinstance(wanted, str) else wanted if isinstance(wanted, list) else []
    problems = []
    for k, branch in enumerate(names):
        if not isinstance(branch, str) or branch in owners:
            continue
        where = (*path, "on_branch") if isinstance(wanted, str) else (*path, "on_branch", k)
        if branch in later:
            message = f"branch {branch!r} is chosen only later, by step {later[branch]!r}"
        else:
            hint = difflib.get_close_matches(branch, sorted(later), n=1)
            suffix = f" (did you mean {hint[0]!r}?)" if hint else ""
            message = f"no choose step before it can produce branch {branch!r}{suffix}"
        problems.append(_problem(doc, where, message))
    return problems


def _phases(raw: Mapping[str, Any]) -> Iterable[tuple[tuple[str | int, ...], list[Any]]]:
    for key in ("steps", "on_failure"):
        if isinstance(raw.get(key), list):
            yield (key,), raw[key]
    verify = raw.get("verify")
    if isinstance(verify, Mapping) and isinstance(verify.get("checks"), list):
        yield ("verify", "checks"), verify["checks"]


def _step(
    doc: Document,
    path: tuple[str | int, ...],
    step: Mapping[str, Any],
    catalog: ActionCatalog,
    *,
    check: bool,
) -> list[Problem]:
    problems: list[Problem] = []
    for key in ("when", "expect"):
        if isinstance(step.get(key), str):
            problems.extend(_template(doc, (*path, key), step[key], expression=True))
    action = step.get("action")
    if not isinstance(action, str):
        return problems
    spec = catalog.spec(action)
    if spec is None:
        hint = difflib.get_close_matches(action, catalog.names(), n=1)
        suffix = f" (did you mean {hint[0]!r}?)" if hint else ""
        problems.append(_problem(doc, (*path, "action"), f"unknown action {action!r}{suffix}"))
        return problems
    if check and spec.mutating and spec.mutating_when is None:
        problems.append(
            _problem(
                doc,
                (*path, "action"),
                f"{action!r} changes things; verify checks must be read-only",
            )
        )
    raw_params = step.get("params", {})
    for sub, text in _strings(raw_params, ("params",)):
        if scope.opaque_label_access(text):
            problems.append(_problem(doc, (*path, *sub), OPAQUE_LABELS))
    if isinstance(raw_params, Mapping):
        for found in params.check(spec.params, raw_params, path="params"):
            sub = tuple(_split_path(found.path))
            problems.append(_problem(doc, (*path, *sub), found.message))
    return problems


def _template(
    doc: Document, path: tuple[str | int, ...], source: str, *, expression: bool
) -> list[Problem]:
    try:
        if expression:
            templating.check_expression(source)
        else:
            templating.check_template(source)
    except TemplateError as e:
        return [_problem(doc, path, f"bad template: {e}")]
    if scope.opaque_label_access(source):
        return [_problem(doc, path, OPAQUE_LABELS)]
    return []


def _strings(
    value: Any, path: tuple[str | int, ...]
) -> Iterable[tuple[tuple[str | int, ...], str]]:
    if isinstance(value, str):
        yield path, value
    elif isinstance(value, Mapping):
        for key, item in value.items():
            yield from _strings(item, (*path, str(key)))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _strings(item, (*path, index))


def _destructive(
    doc: Document, raw: Mapping[str, Any], catalog: ActionCatalog, defaults: SafetyPolicy
) -> list[Problem]:
    """Destructive actions need an explicit opt-in; the engine enforces it again at run time."""
    overrides = raw.get("safety", {})
    allowed = overrides.get("allow_destructive", defaults.allow_destructive)
    if allowed:
        return []
    problems = []
    for phase_path, steps in _phases(raw):
        for i, step in enumerate(steps):
            spec = catalog.spec(step["action"]) if "action" in step else None
            if spec is not None and _may_destroy(spec, step.get("params", {})):
                problems.append(
                    _problem(
                        doc,
                        (*phase_path, i, "action"),
                        f"{step['action']!r} is destructive: set safety.allow_destructive: true "
                        "to opt in",
                    )
                )
    return problems


def _may_destroy(spec: Any, raw_params: Mapping[str, Any]) -> bool:
    if spec.destructive_when is None:
        return bool(spec.destructive)
    try:
        typed = params.build(spec.params, raw_params)
    except Exception:  # templated or invalid: it could be the destructive variant
        return True
    return bool(spec.is_destructive(typed))


def _storm_playbooks(playbooks: list[Playbook]) -> list[Problem]:
    names = {p.name for p in playbooks}
    problems = []
    for playbook in playbooks:
        storm = playbook.safety.storm
        if storm is not None and storm.playbook is not None and storm.playbook not in names:
            problems.append(
                Problem(
                    source=playbook.source,
                    line=playbook.line,
                    path="safety.storm.playbook",
                    message=f"no playbook named {storm.playbook!r}",
                )
            )
    return problems


def _duplicates(playbooks: list[Playbook]) -> list[Problem]:
    first: dict[str, Playbook] = {}
    problems = []
    for playbook in playbooks:
        earlier = first.setdefault(playbook.name, playbook)
        if earlier is not playbook:
            problems.append(
                Problem(
                    source=playbook.source,
                    line=playbook.line,
                    path="name",
                    message=f"duplicate playbook name {playbook.name!r} "
                    f"(also in {earlier.source}:{earlier.line})",
                )
            )
    return problems


def _split_path(dotted: str) -> list[str | int]:
    """``params.items[2].name`` → ["params", "items", 2, "name"]."""
    parts: list[str | int] = []
    for chunk in dotted.replace("]", "").split("."):
        name, *indexes = chunk.split("[")
        if name:
            parts.append(name)
        parts.extend(int(i) for i in indexes if i.isdigit())
    return parts


def _problem(doc: Document, path: tuple[str | int, ...], message: str) -> Problem:
    return Problem(
        source=doc.source, path=parsing.format_path(path), line=doc.line_of(path), message=message
    )
