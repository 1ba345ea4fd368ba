"""Typed action params: load-time checks, run-time construction, JSON and JSON Schema views.

Each action declares its params as a frozen dataclass whose field types are drawn from a small
set: ``str``, ``int``, ``float``, ``bool``, ``Literal[...]``, ``X | None``, ``tuple[X, ...]``,
``Mapping[str, X]``/``dict[str, X]``, ``Any`` and nested frozen dataclasses. A field's
``metadata={"doc": "..."}`` becomes its description in the schema and the reference docs.

Params are checked twice, and the two checks differ on purpose:

* At load (:func:`check`) literal values must have exactly the declared type, like the JSON
  Schema says; a string holding a template is accepted for any scalar field and only compiled,
  since its value is unknown until the alert arrives. Lists and mappings cannot come from a
  template (rendering yields a string), so their items are templated instead.
* At run time (:func:`build`) every template has rendered to a string, so strings are converted
  to the declared type when that is unambiguous: ``"3"`` → ``3``, ``"1.5"`` → ``1.5``,
  ``"true"``/``"True"`` → ``True``, and ``""``/``"None"``/``"null"`` → ``None`` for optional
  non-string fields. Booleans and integers are never converted into each other.

A dataclass's ``__post_init__`` may raise :class:`ValueError` for rules types cannot express
(``replicas >= 0``); that is reported like a type mismatch, at load when no template is involved.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import math
import re
import types
import typing
from collections.abc import Mapping
from typing import Any, Literal, TypeVar

from remediator.core import errors, redaction, templating

T = TypeVar("T")

TEMPLATE_SCHEMA: Mapping[str, Any] = types.MappingProxyType(
    {"type": "string", "pattern": r"\{[{%#]", "description": "A template, rendered per run."}
)
"""What a templated scalar looks like in the JSON Schema: any string with a jinja marker."""
MAX_ERROR = 1024
_INT = re.compile(r"[+-]?\d+")
_FLOAT = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?")
_NONE_TEXTS = frozenset({"", "None", "null"})
_REPR_LIMIT = 60


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class ParamProblem:
    path: str
    """Dotted/indexed, starting with the ``path`` given to :func:`check`: ``params.replicas``."""
    message: str


class _Marker:
    """A sentinel that reads well in a debugger."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


_INVALID = _Marker("<invalid>")
"""A problem was recorded for this value (or inside it)."""
_DEFERRED = _Marker("<deferred>")
"""Load time only: the value holds a template, so it can only be built after rendering."""


def check(params_type: type[Any], raw: Mapping[str, Any], *, path: str) -> list[ParamProblem]:
    """Every problem with ``raw`` as params of ``params_type``, as found at playbook load."""
    converter = _Converter(load_time=True)
    converter.dataclass(params_type, raw, path)
    return converter.problems


def build(params_type: type[T], rendered: Mapping[str, Any]) -> T:
    """``params_type`` built from rendered params; :class:`errors.PermanentStepError` if wrong."""
    converter = _Converter(load_time=False)
    result = converter.dataclass(params_type, rendered, "")
    if converter.problems:
        details = "; ".join(
            f"{p.path}: {p.message}" if p.path else p.message for p in converter.problems
        )
        raise errors.PermanentStepError(redaction.truncate(f"invalid params: {details}", MAX_ERROR))
    return typing.cast(T, result)


def to_json(params_instance: object) -> dict[str, Any]:
    """The params as JSON-ready data: tuples become lists, mappings dicts, nesting kept."""
    if not dataclasses.is_dataclass(params_instance) or isinstance(params_instance, type):
        raise TypeError(f"expected a params dataclass instance, got {params_instance!r}")
    return typing.cast(dict[str, Any], _jsonable(params_instance))


def describe(params_type: type[Any], *, templates: bool = True) -> dict[str, Any]:
    """A JSON Schema (2020-12) object schema for ``params_type``.

    With ``templates`` (for validating playbooks) every non-string scalar also accepts a
    templated string, as :func:`check` does; without it (for reference docs) only plain types.
    """
    return _object_schema(params_type, templates)


# --- conversion, shared by check (load time) and build (run time) --------------------------


class _Converter:
    def __init__(self, *, load_time: bool) -> None:
        self.load_time = load_time
        self.problems: list[ParamProblem] = []

    def fail(self, path: str, message: str) -> _Marker:
        self.problems.append(ParamProblem(path=path, message=message))
        return _INVALID

    def dataclass(self, cls: type, raw: object, path: str) -> Any:
        fields = _fields(cls)
        if not isinstance(raw, Mapping):
            return self.fail(path, f"must be a mapping, got {_show(raw, secret=False)}")
        values: dict[str, Any] = {}
        problems_before = len(self.problems)
        for key in raw:
            if not isinstance(key, str):
                self.fail(path, f"param names must be strings, got {key!r}")
            elif key not in fields:
                self.fail(_join(path, key), _unknown(key, fields))
        for name, (field, hint) in fields.items():
            if name in raw:
                secret = redaction.is_secret_key(name)
                values[name] = self.value(hint, raw[name], _join(path, name), secret=secret)
            elif field.default is dataclasses.MISSING and field.default_factory is (
                dataclasses.MISSING
            ):
                self.fail(_join(path, name), "is required")
        if len(self.problems) > problems_before:
            return _INVALID
        if any(v is _DEFERRED for v in values.values()):
            return _DEFERRED
        try:
            return cls(**values)
        except ValueError as e:
            return self.fail(path, str(e))

    def value(self, tp: Any, value: Any, path: str, *, secret: bool) -> Any:
        if self.load_time and isinstance(value, str) and templating.is_templated(value):
            return self.template(tp, value, path)
        if tp is Any:
            return self.anything(value, path)
        origin = typing.get_origin(tp)
        if origin is typing.Union or origin is types.UnionType:
            return self.union(tp, value, path, secret=secret)
        if origin is Literal:
            return self.literal(tp, value, path, secret=secret)
        if tp in (str, int, float, bool):
            return self.scalar(tp, value, path, secret=secret)
        if tp is tuple or origin is tuple:
            return self.sequence(tp, value, path, secret=secret)
        if tp in (dict, Mapping) or origin in (dict, Mapping):
            return self.mapping(tp, value, path, secret=secret)
        if dataclasses.is_dataclass(tp) and isinstance(tp, type):
            return self.dataclass(tp, value, path)
        raise TypeError(f"unsupported param type {tp!r} at {path or 'top level'}")

    def template(self, tp: Any, value: str, path: str) -> Any:
        try:
            templating.check_template(value)
        except errors.TemplateError as e:
            return self.fail(path, str(e))
        if not _accepts_template(tp):
            return self.fail(
                path,
                f"must be {_expected(tp)}; a template renders to a string, "
                "so template the items inside instead",
            )
        return _DEFERRED

    def anything(self, value: Any, path: str) -> Any:
        if not self.load_time:
            return value
        # Free-form values are not type-checked, but templates inside them still must compile.
        deferred = False
        for where, text in _strings(value, path):
            if templating.is_templated(text):
                deferred = True
                try:
                    templating.check_template(text)
                except errors.TemplateError as e:
                    self.fail(where, str(e))
        return _DEFERRED if deferred else value

    def union(self, tp: Any, value: Any, path: str, *, secret: bool) -> Any:
        members = [m for m in typing.get_args(tp) if m is not type(None)]
        optional = len(members) < len(typing.get_args(tp))
        if value is None and optional:
            return None
        if (
            optional
            and not self.load_time
            and isinstance(value, str)
            and value in _NONE_TEXTS
            and not any(m is str or m is Any for m in members)
        ):
            # jinja renders None as "None"; an optional number given "" or "None" means unset.
            return None
        if len(members) == 1 and not _accepts_template(members[0]):
            # A list or mapping reports problems at its items' own paths.
            return self.value(members[0], value, path, secret=secret)
        for member in members:
            trial = _Converter(load_time=self.load_time)
            result = trial.value(member, value, path, secret=secret)
            if not trial.problems:
                return result
        return self.fail(path, f"must be {_expected(tp)}, got {_show(value, secret=secret)}")

    def literal(self, tp: Any, value: Any, path: str, *, secret: bool) -> Any:
        choices = typing.get_args(tp)
        for choice in choices:
            if type(value) is type(choice) and value == choice:
                return choice
            if not self.load_time and isinstance(value, str) and not isinstance(choice, str):
                converted = _from_text(type(choice), value)
                if type(converted) is type(choice) and converted == choice:
                    return choice
        message = f"must be {_expected(tp)}, got {_show(value, secret=secret)}"
        if isinstance(value, str):
            close = difflib.get_close_matches(value, [c for c in choices if isinstance(c, str)], 1)
            if close:
                message += f" (did you mean {close[0]!r}?)"
        return self.fail(path, message)

    def scalar(self, tp: type[Any], value: Any, path: str, *, secret: bool) -> Any:
        if _is_a(tp, value):
            if tp is float:
                # YAML writes `timeout: 5` for a float field; that is a number, not a mismatch.
                return float(value) if math.isfinite(value) else self.fail(path, "must be finite")
            return value
        if not self.load_time and isinstance(value, str):
            converted = _from_text(tp, value)
            if converted is not None:
                return converted
        return self.fail(path, f"must be {_expected(tp)}, got {_show(value, secret=secret)}")

    def sequence(self, tp: Any, value: Any, path: str, *, secret: bool) -> Any:
        if not isinstance(value, list | tuple):
            return self.fail(path, f"must be a list, got {_show(value, secret=secret)}")
        args = typing.get_args(tp)
        if not args:
            item_types: list[Any] = [Any] * len(value)
        elif len(args) == 2 and args[1] is Ellipsis:
            item_types = [args[0]] * len(value)
        elif len(args) != len(value):
            return self.fail(path, f"must be a list of exactly {len(args)} items, got {len(value)}")
        else:
            item_types = list(args)
        items = [
            self.value(item_type, item, f"{path}[{i}]", secret=secret)
            for i, (item_type, item) in enumerate(zip(item_types, value, strict=True))
        ]
        return _settle(items) or tuple(items)

    def mapping(self, tp: Any, value: Any, path: str, *, secret: bool) -> Any:
        if not isinstance(value, Mapping):
            return self.fail(path, f"must be a mapping, got {_show(value, secret=secret)}")
        key_type, item_type = typing.get_args(tp) or (str, Any)
        if key_type is not str:
            raise TypeError(f"unsupported param type {tp!r}: mapping keys must be str")
        result: dict[str, Any] = {}
        for key, item in value.items():
            if not isinstance(key, str):
                self.fail(path, f"keys must be strings, got {key!r}")
                result[repr(key)] = _INVALID
                continue
            result[key] = self.value(
                item_type,
                item,
                _join(path, key),
                secret=secret or redaction.is_secret_key(key),
            )
        settled = _settle(list(result.values()))
        if settled is not None:
            return settled
        is_dict = tp is dict or typing.get_origin(tp) is dict
        # Mapping fields get a read-only view, keeping the frozen params actually immutable.
        return result if is_dict else types.MappingProxyType(result)


def _settle(items: list[Any]) -> _Marker | None:
    """The marker a container takes from its items, or None if every item is a real value."""
    if any(item is _INVALID for item in items):
        return _INVALID
    if any(item is _DEFERRED for item in items):
        return _DEFERRED
    return None


def _is_a(tp: type[Any], value: Any) -> bool:
    # bool is an int subclass, and `replicas: true` is a mistake, never 1.
    if isinstance(value, bool):
        return tp is bool
    if tp is float:
        return isinstance(value, int | float)
    return isinstance(value, tp)


def _from_text(tp: type[Any], text: str) -> Any:
    """``text`` as ``tp`` when that reading is unambiguous, else None."""
    stripped = text.strip()
    if tp is int and _INT.fullmatch(stripped):
        return int(stripped)
    if tp is float and _FLOAT.fullmatch(stripped):
        return float(stripped)
    if tp is bool and stripped.lower() in ("true", "false"):
        return stripped.lower() == "true"
    return None


def _accepts_template(tp: Any) -> bool:
    """Whether a rendered string can become a ``tp`` (so a template is fine at load time)."""
    if tp is Any or tp in (str, int, float, bool):
        return True
    origin = typing.get_origin(tp)
    if origin is Literal:
        return True
    if origin is typing.Union or origin is types.UnionType:
        return any(_accepts_template(m) for m in typing.get_args(tp))
    return False


@functools.lru_cache(maxsize=256)
def _fields(cls: type) -> dict[str, tuple[dataclasses.Field[Any], Any]]:
    if not (dataclasses.is_dataclass(cls) and isinstance(cls, type)):
        raise TypeError(f"params type must be a dataclass, not {cls!r}")
    hints = typing.get_type_hints(cls)
    return {f.name: (f, hints[f.name]) for f in dataclasses.fields(cls) if f.init}


def _unknown(key: str, fields: Mapping[str, Any]) -> str:
    close = difflib.get_close_matches(key, list(fields), n=1)
    if close:
        return f"unknown param '{key}' (did you mean '{close[0]}'?)"
    known = ", ".join(fields) or "none"
    return f"unknown param '{key}' (known params: {known})"


def _strings(value: Any, path: str) -> list[tuple[str, str]]:
    if isinstance(value, str):
        return [(path, value)]
    if isinstance(value, Mapping):
        return [s for k, v in value.items() for s in _strings(v, _join(path, str(k)))]
    if isinstance(value, list | tuple):
        return [s for i, v in enumerate(value) for s in _strings(v, f"{path}[{i}]")]
    return []


def _expected(tp: Any) -> str:
    if tp is Any:
        return "any value"
    if tp is str:
        return "a string"
    if tp is int:
        return "an integer"
    if tp is float:
        return "a number"
    if tp is bool:
        return "a boolean (true or false)"
    if tp is type(None):
        return "null"
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(c) for c in typing.get_args(tp))
    if origin is typing.Union or origin is types.UnionType:
        return " or ".join(_expected(m) for m in typing.get_args(tp))
    if tp is tuple or origin is tuple:
        return "a list"
    return "a mapping"


def _show(value: Any, *, secret: bool) -> str:
    """A short description of a wrong value; a secret param's value is never echoed."""
    kind = _kind(value)
    if value is None or secret:
        return kind
    if isinstance(value, list | tuple | Mapping):
        return kind
    if isinstance(value, bool):
        return f"{kind} {str(value).lower()}"  # as the YAML author wrote it
    return f"{kind} {redaction.truncate(repr(value), _REPR_LIMIT)}"


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list | tuple):
        return "list"
    if isinstance(value, Mapping):
        return "mapping"
    return type(value).__name__


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


# --- JSON -------------------------------------------------------------------------------------


def _jsonable(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return value


# --- JSON Schema ------------------------------------------------------------------------------


def _object_schema(cls: type, templates: bool) -> dict[str, Any]:
    properties: dict[str, Any] = {}
    required: list[str] = []
    for name, (field, hint) in _fields(cls).items():
        schema = _schema(hint, templates)
        doc = field.metadata.get("doc")
        if doc:
            schema["description"] = doc
        if field.default is not dataclasses.MISSING:
            schema["default"] = _jsonable(field.default)
        elif field.default_factory is not dataclasses.MISSING:
            schema["default"] = _jsonable(field.default_factory())
        else:
            required.append(name)
        properties[name] = schema
    result: dict[str, Any] = {
        "type": "object",
        "properties": properties,
        "additionalProperties": False,
    }
    if required:
        result["required"] = required
    return result


def _schema(tp: Any, templates: bool) -> dict[str, Any]:
    base = _base_schema(tp, templates)
    if not templates or not _accepts_template(tp) or _takes_strings(tp):
        return base
    alternatives = base["anyOf"] if set(base) == {"anyOf"} else [base]
    return {"anyOf": [*alternatives, dict(TEMPLATE_SCHEMA)]}


def _takes_strings(tp: Any) -> bool:
    """Whether plain strings are already valid, so a template alternative would be redundant."""
    if tp is str or tp is Any:
        return True
    origin = typing.get_origin(tp)
    if origin is typing.Union or origin is types.UnionType:
        return any(_takes_strings(m) for m in typing.get_args(tp))
    return False


def _base_schema(tp: Any, templates: bool) -> dict[str, Any]:
    simple = {str: "string", int: "integer", float: "number", bool: "boolean", type(None): "null"}
    if tp is Any:
        return {}
    if tp in simple:
        return {"type": simple[tp]}
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is Literal:
        return {"enum": list(args)}
    if origin is typing.Union or origin is types.UnionType:
        alternatives: list[dict[str, Any]] = []
        for member in args:
            schema = _base_schema(member, templates)
            alternatives.extend(schema["anyOf"] if set(schema) == {"anyOf"} else [schema])
        return {"anyOf": alternatives}
    if tp is tuple or origin is tuple:
        if not args:
            return {"type": "array"}
        if len(args) == 2 and args[1] is Ellipsis:
            return {"type": "array", "items": _schema(args[0], templates)}
        return {
            "type": "array",
            "prefixItems": [_schema(a, templates) for a in args],
            "items": False,
            "minItems": len(args),
        }
    if tp in (dict, Mapping) or origin in (dict, Mapping):
        item_type = args[1] if args else Any
        return {"type": "object", "additionalProperties": _schema(item_type, templates)}
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        return _object_schema(tp, templates)
    raise TypeError(f"unsupported param type {tp!r}")
