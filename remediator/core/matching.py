"""Which playbooks an alert triggers: Alertmanager matchers, parsed and evaluated as it does.

Playbook authors copy matchers from their Alertmanager routes, so both the syntax and the
semantics follow Alertmanager's classic parser (``pkg/labels/parse.go``): values may be quoted or
not, ``\\"``, ``\\\\`` and ``\\n`` are the only escapes (any other backslash is kept literally, so
``=~"\\d+"`` means what it says), regexes are anchored at both ends, and a missing label reads
as the empty string.
"""

from __future__ import annotations

import re

from remediator.core import alerts, playbooks

_LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
# Longest first: "=~" must not be read as "=" followed by a value starting with "~".
_OPERATORS = (
    playbooks.MatchOp.REGEX,
    playbooks.MatchOp.NOT_REGEX,
    playbooks.MatchOp.NOT_EQUAL,
    playbooks.MatchOp.EQUAL,
)
_REGEX_OPS = frozenset({playbooks.MatchOp.REGEX, playbooks.MatchOp.NOT_REGEX})
_ESCAPES = {"n": "\n", '"': '"', "\\": "\\"}


def parse_matcher(text: str) -> playbooks.Matcher:
    """Parse ``name="value"``, ``name!=v``, ``name=~"regex"`` or ``name!~"regex"``.

    Raise :class:`ValueError` saying what is wrong and at which (1-based) column.
    """
    position = _skip_spaces(text, 0)
    found = _LABEL_NAME.match(text, position)
    if found is None:
        raise ValueError(_error(text, position, "expected a label name ([a-zA-Z_][a-zA-Z0-9_]*)"))
    name = found.group()
    position = _skip_spaces(text, found.end())
    op = next((op for op in _OPERATORS if text.startswith(op.value, position)), None)
    if op is None:
        raise ValueError(_error(text, position, "expected one of =, !=, =~, !~"))
    position = _skip_spaces(text, position + len(op.value))
    if text.startswith('"', position):
        value = _read_quoted(text, position)
    else:
        value = _read_unquoted(text, position)
    pattern = _compile(value, text, position) if op in _REGEX_OPS else None
    return playbooks.Matcher(name=name, op=op, value=value, pattern=pattern)


def matches(trigger: playbooks.Trigger, alert: alerts.Alert) -> bool:
    if alert.status not in trigger.statuses:
        return False
    return all(_holds(matcher, alert.labels.get(matcher.name, "")) for matcher in trigger.matchers)


def find_matches(
    alert: alerts.Alert,
    playbook_set: playbooks.PlaybookSet,
    *,
    only_highest: bool,
) -> tuple[playbooks.Playbook, ...]:
    """Matching playbooks, higher priority first, then by name so the order is reproducible."""
    found = sorted(
        (p for p in playbook_set.playbooks if matches(p.trigger, alert)),
        key=lambda p: (-p.priority, p.name),
    )
    return tuple(found[:1] if only_highest else found)


def _holds(matcher: playbooks.Matcher, value: str) -> bool:
    op = matcher.op
    if op is playbooks.MatchOp.EQUAL:
        return value == matcher.value
    if op is playbooks.MatchOp.NOT_EQUAL:
        return value != matcher.value
    # A Matcher built by hand (tests, other parsers) may lack its compiled pattern.
    pattern = matcher.pattern or _anchored(matcher.value)
    # fullmatch on top of the anchors: Python's "$" would also accept a trailing newline.
    found = pattern.fullmatch(value) is not None
    return found if op is playbooks.MatchOp.REGEX else not found


def _read_quoted(text: str, start: int) -> str:
    chars: list[str] = []
    position = start + 1
    while position < len(text):
        char = text[position]
        if char == '"':
            rest = _skip_spaces(text, position + 1)
            if rest < len(text):
                raise ValueError(_error(text, rest, "unexpected text after the closing quote"))
            return "".join(chars)
        if char == "\\" and position + 1 < len(text):
            following = text[position + 1]
            # Unknown escapes stay literal, as in Alertmanager, so regexes like \d survive.
            chars.append(_ESCAPES.get(following, "\\" + following))
            position += 2
            continue
        chars.append(char)
        position += 1
    raise ValueError(_error(text, start, "unterminated quoted value (missing closing '\"')"))


def _read_unquoted(text: str, start: int) -> str:
    raw = text[start:].rstrip()
    if raw[:1] in ("=", "~"):
        # `a==b` or `a!=~b` is a mistyped operator far more often than a value starting so.
        raise ValueError(
            _error(text, start, f"unquoted value starts with {raw[0]!r}; check the operator")
        )
    quote = raw.find('"')
    if quote >= 0:
        raise ValueError(
            _error(text, start + quote, "unescaped '\"' in an unquoted value; quote the value")
        )
    chars: list[str] = []
    position = 0
    while position < len(raw):
        char = raw[position]
        if char == "\\" and position + 1 < len(raw):
            following = raw[position + 1]
            chars.append(_ESCAPES.get(following, "\\" + following))
            position += 2
            continue
        chars.append(char)
        position += 1
    return "".join(chars)


def _compile(value: str, text: str, position: int) -> re.Pattern[str]:
    # Compiling the bare value first rejects "a)|(b", which would otherwise compile once
    # wrapped and silently escape the anchoring.
    try:
        re.compile(value)
        return _anchored(value)
    except re.error as e:
        raise ValueError(_error(text, position, f"invalid regex {value!r}: {e}")) from e


def _anchored(value: str) -> re.Pattern[str]:
    return re.compile(rf"^(?:{value})$")


def _skip_spaces(text: str, position: int) -> int:
    while position < len(text) and text[position].isspace():
        position += 1
    return position


def _error(text: str, position: int, message: str) -> str:
    return f"invalid matcher {text!r}: {message} at column {position + 1}"
