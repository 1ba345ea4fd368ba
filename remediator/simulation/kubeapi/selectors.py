"""Label and field selectors, parsed the way apimachinery's ``labels`` and ``fields`` do.

Pure and sync: parsing raises `SelectorError` (the server turns it into a 400), matching
takes plain JSON objects.
"""

from __future__ import annotations

import dataclasses
import enum
import re
from collections.abc import Mapping
from typing import Any

# apimachinery's grammars: validation.IsQualifiedName and IsValidLabelValue.
_NAME = r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?"
_PREFIX = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*"
LABEL_KEY = re.compile(rf"^({_PREFIX}/)?{_NAME}$")
LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]{0,61})?[A-Za-z0-9])?$")


class SelectorError(ValueError):
    """A selector string that does not parse."""


class Operator(enum.StrEnum):
    EQUALS = "="
    NOT_EQUALS = "!="
    IN = "in"
    NOT_IN = "notin"
    EXISTS = "exists"
    DOES_NOT_EXIST = "!"
    GREATER_THAN = "gt"
    LESS_THAN = "lt"


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Requirement:
    key: str
    operator: Operator
    values: tuple[str, ...] = ()

    def matches(self, labels: Mapping[str, str]) -> bool:
        present = self.key in labels
        value = labels.get(self.key)
        match self.operator:
            case Operator.EQUALS | Operator.IN:
                return present and value in self.values
            case Operator.NOT_EQUALS | Operator.NOT_IN:
                # Like Kubernetes: a missing key satisfies "!=" and "notin".
                return not present or value not in self.values
            case Operator.EXISTS:
                return present
            case Operator.DOES_NOT_EXIST:
                return not present
            case Operator.GREATER_THAN | Operator.LESS_THAN:
                try:
                    have, want = int(value or ""), int(self.values[0])
                except ValueError:
                    return False
                return have > want if self.operator is Operator.GREATER_THAN else have < want


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class LabelSelector:
    """All requirements must match (they are ANDed); an empty selector matches everything."""

    requirements: tuple[Requirement, ...] = ()

    def matches(self, labels: Mapping[str, str] | None) -> bool:
        labels = labels or {}
        return all(r.matches(labels) for r in self.requirements)


# Tokens: operators first so "!=" wins over "!" and "==" over "=".
_TOKEN = re.compile(r"\s*(==|!=|=|!|\(|\)|,|<|>|[^\s=!(),<>]+)")


def _tokenize(text: str) -> list[str]:
    tokens: list[str] = []
    position = 0
    while position < len(text):
        if text[position:].strip() == "":
            break
        found = _TOKEN.match(text, position)
        if found is None:  # pragma: no cover - the pattern accepts any non-space char
            raise SelectorError(f"unable to parse selector {text!r}")
        tokens.append(found.group(1))
        position = found.end()
    return tokens


def _check_key(key: str) -> str:
    if not LABEL_KEY.match(key):
        raise SelectorError(f"invalid label key {key!r}")
    return key


def _check_value(value: str) -> str:
    if not LABEL_VALUE.match(value):
        raise SelectorError(f"invalid label value {value!r}")
    return value


_OPERATOR_TOKENS = frozenset({"=", "==", "!=", "in", "notin", "<", ">"})


def parse_label_selector(text: str) -> LabelSelector:
    """Parse ``a=b,c!=d,e in (f,g),h notin (i),j,!k,n>3`` into a `LabelSelector`."""
    tokens = _tokenize(text)
    requirements: list[Requirement] = []
    i = 0

    def take() -> str:
        nonlocal i
        if i >= len(tokens):
            raise SelectorError(f"unexpected end of selector {text!r}")
        i += 1
        return tokens[i - 1]

    def peek() -> str | None:
        return tokens[i] if i < len(tokens) else None

    while i < len(tokens):
        word = take()
        if word == "!":
            requirements.append(
                Requirement(key=_check_key(take()), operator=Operator.DOES_NOT_EXIST)
            )
        else:
            key = _check_key(word)
            op = peek()
            if op is None or op == ",":
                requirements.append(Requirement(key=key, operator=Operator.EXISTS))
            elif op in ("=", "==", "!="):
                take()
                nxt = peek()
                # "key=" selects the empty value, which is a valid label value.
                value = "" if nxt is None or nxt == "," else _check_value(take())
                operator = Operator.NOT_EQUALS if op == "!=" else Operator.EQUALS
                requirements.append(Requirement(key=key, operator=operator, values=(value,)))
            elif op in ("in", "notin"):
                take()
                requirements.append(
                    Requirement(
                        key=key,
                        operator=Operator.IN if op == "in" else Operator.NOT_IN,
                        values=_parse_value_set(take, peek, text),
                    )
                )
            elif op in ("<", ">"):
                take()
                number = take()
                if not number.lstrip("-").isdigit():
                    raise SelectorError(f"{op} needs an integer value in {text!r}")
                operator = Operator.GREATER_THAN if op == ">" else Operator.LESS_THAN
                requirements.append(Requirement(key=key, operator=operator, values=(number,)))
            else:
                raise SelectorError(f"unexpected {op!r} in selector {text!r}")
        if i < len(tokens):
            if take() != ",":
                raise SelectorError(f"expected ',' in selector {text!r}")
            if i >= len(tokens):
                raise SelectorError(f"trailing ',' in selector {text!r}")
    return LabelSelector(requirements=tuple(requirements))


def _parse_value_set(take: Any, peek: Any, text: str) -> tuple[str, ...]:
    if take() != "(":
        raise SelectorError(f"expected '(' in selector {text!r}")
    values: list[str] = []
    while True:
        word = take()
        if word == ")":
            break
        if word == ",":
            continue
        values.append(_check_value(word))
    if not values:
        raise SelectorError(f"'in' and 'notin' need at least one value in {text!r}")
    return tuple(values)


def selector_from_spec(spec: Mapping[str, Any] | None) -> LabelSelector:
    """The structured ``spec.selector`` (matchLabels + matchExpressions) as a `LabelSelector`."""
    spec = spec or {}
    requirements = [
        Requirement(key=k, operator=Operator.EQUALS, values=(str(v),))
        for k, v in sorted((spec.get("matchLabels") or {}).items())
    ]
    ops = {
        "In": Operator.IN,
        "NotIn": Operator.NOT_IN,
        "Exists": Operator.EXISTS,
        "DoesNotExist": Operator.DOES_NOT_EXIST,
    }
    for expression in spec.get("matchExpressions") or []:
        requirements.append(
            Requirement(
                key=str(expression["key"]),
                operator=ops[str(expression["operator"])],
                values=tuple(str(v) for v in expression.get("values") or ()),
            )
        )
    return LabelSelector(requirements=tuple(requirements))


def format_label_selector(selector: LabelSelector) -> str:
    """The string form, e.g. for ``Scale.status.selector``."""
    parts: list[str] = []
    for r in selector.requirements:
        match r.operator:
            case Operator.EQUALS:
                parts.append(f"{r.key}={r.values[0]}")
            case Operator.NOT_EQUALS:
                parts.append(f"{r.key}!={r.values[0]}")
            case Operator.IN | Operator.NOT_IN:
                parts.append(f"{r.key} {r.operator.value} ({','.join(r.values)})")
            case Operator.EXISTS:
                parts.append(r.key)
            case Operator.DOES_NOT_EXIST:
                parts.append(f"!{r.key}")
            case Operator.GREATER_THAN:
                parts.append(f"{r.key}>{r.values[0]}")
            case Operator.LESS_THAN:
                parts.append(f"{r.key}<{r.values[0]}")
    return ",".join(parts)


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class FieldRequirement:
    path: str
    """A dotted path into the object, e.g. ``status.phase`` or ``involvedObject.name``."""
    value: str
    negated: bool = False

    def matches(self, obj: Mapping[str, Any]) -> bool:
        return (field_value(obj, self.path) == self.value) != self.negated


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class FieldSelector:
    requirements: tuple[FieldRequirement, ...] = ()

    def matches(self, obj: Mapping[str, Any]) -> bool:
        return all(r.matches(obj) for r in self.requirements)


def field_value(obj: Mapping[str, Any], path: str) -> str:
    """A field as the API server compares it: missing is ``""``, booleans are lower-case."""
    current: Any = obj
    for part in path.split("."):
        if not isinstance(current, Mapping) or part not in current:
            return ""
        current = current[part]
    if current is None:
        return ""
    if isinstance(current, bool):
        return "true" if current else "false"
    return str(current)


def _split_unescaped(text: str, separator: str) -> list[str]:
    parts, current, escaped = [], [], False
    for char in text:
        if escaped:
            current.append("\\" + char)
            escaped = False
        elif char == "\\":
            escaped = True
        elif char == separator:
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    if escaped:
        raise SelectorError(f"dangling escape in field selector {text!r}")
    parts.append("".join(current))
    return parts


def _unescape(text: str) -> str:
    # fields.EscapeValue escapes exactly "\\", "," and "="; anything else is an error upstream.
    out, escaped = [], False
    for char in text:
        if escaped:
            if char not in "\\,=":
                raise SelectorError(f"invalid escape sequence \\{char} in {text!r}")
            out.append(char)
            escaped = False
        elif char == "\\":
            escaped = True
        else:
            out.append(char)
    return "".join(out)


def parse_field_selector(text: str) -> FieldSelector:
    """Parse ``metadata.name=x,status.phase!=Running`` (``=``, ``==``, ``!=``; ``\\``-escapes)."""
    requirements: list[FieldRequirement] = []
    if not text.strip():
        return FieldSelector()
    for term in _split_unescaped(text, ","):
        found = _find_operator(term)
        if found is None:
            raise SelectorError(f"invalid field selector term {term!r}: no operator")
        index, op = found
        path, raw_value = term[:index].strip(), term[index + len(op) :]
        if not path:
            raise SelectorError(f"invalid field selector term {term!r}: empty field")
        requirements.append(
            FieldRequirement(path=path, value=_unescape(raw_value), negated=op == "!=")
        )
    return FieldSelector(requirements=tuple(requirements))


def _find_operator(term: str) -> tuple[int, str] | None:
    i = 0
    while i < len(term):
        char = term[i]
        if char == "\\":
            i += 2
            continue
        if term.startswith("!=", i):
            return i, "!="
        if term.startswith("==", i):
            return i, "=="
        if char == "=":
            return i, "="
        i += 1
    return None
