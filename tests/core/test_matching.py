from __future__ import annotations

import dataclasses
import json
import pathlib
from typing import Any

import pytest

from remediator.core import alerts, matching, playbooks

PAYLOADS = pathlib.Path(__file__).parent / "payloads"


def load_alert(name: str = "storedown-firing.json") -> alerts.Alert:
    raw: Any = json.loads((PAYLOADS / name).read_text())
    return alerts.parse_webhook(raw).alerts[0]


FIRING = load_alert()
RESOLVED = load_alert("storedown-resolved.json")


def trigger(
    *matchers: str, statuses: frozenset[alerts.AlertStatus] | None = None
) -> playbooks.Trigger:
    parsed = tuple(matching.parse_matcher(m) for m in matchers)
    if statuses is None:
        return playbooks.Trigger(matchers=parsed)
    return playbooks.Trigger(matchers=parsed, statuses=statuses)


def playbook(name: str, *matchers: str, priority: int = 0) -> playbooks.Playbook:
    return playbooks.Playbook(
        name=name,
        source=f"{name}.yaml",
        trigger=trigger(*matchers),
        target="{{ alert.labels.store_id }}",
        steps=(),
        priority=priority,
    )


@pytest.mark.parametrize(
    ("text", "name", "op", "value"),
    [
        ('severity="critical"', "severity", playbooks.MatchOp.EQUAL, "critical"),
        ('severity!="info"', "severity", playbooks.MatchOp.NOT_EQUAL, "info"),
        ('severity=~"crit|warn"', "severity", playbooks.MatchOp.REGEX, "crit|warn"),
        ('severity!~"info.*"', "severity", playbooks.MatchOp.NOT_REGEX, "info.*"),
        ("severity=critical", "severity", playbooks.MatchOp.EQUAL, "critical"),
        ("severity!=info", "severity", playbooks.MatchOp.NOT_EQUAL, "info"),
        ("job=~stores|shops", "job", playbooks.MatchOp.REGEX, "stores|shops"),
        ('  job = "stores"  ', "job", playbooks.MatchOp.EQUAL, "stores"),
        ("foo=", "foo", playbooks.MatchOp.EQUAL, ""),
        ('foo=""', "foo", playbooks.MatchOp.EQUAL, ""),
        ('_x9="a"', "_x9", playbooks.MatchOp.EQUAL, "a"),
        (r'msg="say \"hi\""', "msg", playbooks.MatchOp.EQUAL, 'say "hi"'),
        (r'path="C:\\dir"', "path", playbooks.MatchOp.EQUAL, "C:\\dir"),
        (r'text="a\nb"', "text", playbooks.MatchOp.EQUAL, "a\nb"),
        (r'id=~"\d+"', "id", playbooks.MatchOp.REGEX, r"\d+"),
        ('x="a=~b"', "x", playbooks.MatchOp.EQUAL, "a=~b"),
        ('x="a b"', "x", playbooks.MatchOp.EQUAL, "a b"),
    ],
    ids=[
        "equal",
        "not-equal",
        "regex",
        "not-regex",
        "unquoted-equal",
        "unquoted-not-equal",
        "unquoted-regex",
        "spaces-around",
        "unquoted-empty",
        "quoted-empty",
        "underscore-name",
        "escaped-quote",
        "escaped-backslash",
        "escaped-newline",
        "unknown-escape-kept-for-regex",
        "operator-inside-value",
        "space-inside-quotes",
    ],
)
def test_parse_matcher(text: str, name: str, op: playbooks.MatchOp, value: str) -> None:
    matcher = matching.parse_matcher(text)
    assert (matcher.name, matcher.op, matcher.value) == (name, op, value)
    assert (matcher.pattern is not None) == (op in {"=~", "!~"})


def test_parsed_matcher_round_trips_through_str() -> None:
    original = matching.parse_matcher(r'msg=~"say \"hi\"\\\n.*"')
    again = matching.parse_matcher(str(original))
    assert (again.name, again.op, again.value) == (original.name, original.op, original.value)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "expected a label name ([a-zA-Z_][a-zA-Z0-9_]*) at column 1"),
        ('9lives="x"', "expected a label name ([a-zA-Z_][a-zA-Z0-9_]*) at column 1"),
        ('"sev"="x"', "expected a label name ([a-zA-Z_][a-zA-Z0-9_]*) at column 1"),
        ('severity"critical"', "expected one of =, !=, =~, !~ at column 9"),
        ('severity=="critical"', "unquoted value starts with '='; check the operator at column 10"),
        ("severity==critical", "unquoted value starts with '='; check the operator at column 10"),
        ("severity!=~crit", "unquoted value starts with '~'; check the operator at column 11"),
        ("severity", "expected one of =, !=, =~, !~ at column 9"),
        ('sev-erity="x"', "expected one of =, !=, =~, !~ at column 4"),
        ('severity="critical', "unterminated quoted value (missing closing '\"') at column 10"),
        ('severity="a" extra', "unexpected text after the closing quote at column 14"),
        ('severity=cri"tical', "unescaped '\"' in an unquoted value; quote the value at column 13"),
        ('severity=~"(crit"', "invalid regex '(crit': missing ), unterminated subpattern"),
        ('severity=~"a)|(b"', "invalid regex 'a)|(b': unbalanced parenthesis"),
        ('severity!~"*"', "invalid regex '*': nothing to repeat"),
    ],
    ids=[
        "empty",
        "name-starts-with-digit",
        "quoted-name",
        "missing-operator",
        "double-equals-quoted",
        "double-equals",
        "not-equal-tilde",
        "name-only",
        "dash-in-name",
        "unterminated",
        "trailing-garbage",
        "quote-in-unquoted",
        "bad-regex",
        "regex-escaping-anchors",
        "bad-negative-regex",
    ],
)
def test_parse_matcher_rejects(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=r"^invalid matcher ") as info:
        matching.parse_matcher(text)
    assert message in str(info.value)


@pytest.mark.parametrize(
    ("matcher", "expected"),
    [
        ('alertname="StoreDown"', True),
        ('alertname="storedown"', False),
        ('severity!="info"', True),
        ('severity!="critical"', False),
        ('severity=~"critical|warning"', True),
        ('severity=~"crit"', False),
        ('severity=~"crit.*"', True),
        ('severity=~"ritical"', False),
        ('severity=~"Critical"', False),
        ('severity!~"crit"', True),
        ('severity!~"crit.*"', False),
        ('store_id=~"s[0-9]+"', True),
        ('missing=""', True),
        ('missing!=""', False),
        ('store_id=""', False),
        ('store_id!=""', True),
        ('missing=~".*"', True),
        ('missing=~".+"', False),
        ('missing!~".+"', True),
        ('missing!="x"', True),
        ('missing="x"', False),
    ],
    ids=[
        "equal",
        "equal-is-case-sensitive",
        "not-equal",
        "not-equal-fails",
        "regex-alternation",
        "regex-anchored-no-prefix-match",
        "regex-explicit-wildcard",
        "regex-anchored-no-suffix-match",
        "regex-case-sensitive",
        "not-regex-anchored",
        "not-regex-fails",
        "regex-class",
        "absent-equals-empty",
        "absent-not-equal-empty-requires-presence",
        "present-not-empty",
        "present-not-equal-empty",
        "absent-matches-dot-star",
        "absent-fails-dot-plus",
        "absent-not-regex",
        "absent-not-equal-value",
        "absent-equal-value",
    ],
)
def test_matches_single_matcher(matcher: str, expected: bool) -> None:
    assert matching.matches(trigger(matcher), FIRING) is expected


def test_regex_does_not_accept_trailing_newline() -> None:
    # Python's "$" matches before a final newline; Alertmanager's (RE2's) does not.
    alert = dataclasses.replace(FIRING, labels={**FIRING.labels, "severity": "crit\n"})
    assert not matching.matches(trigger('severity=~"crit"'), alert)


def test_hand_built_regex_matcher_without_pattern_is_anchored() -> None:
    matcher = playbooks.Matcher(name="severity", op=playbooks.MatchOp.REGEX, value="crit")
    assert not matching.matches(playbooks.Trigger(matchers=(matcher,)), FIRING)


def test_all_matchers_must_hold() -> None:
    assert matching.matches(trigger('alertname="StoreDown"', "severity=critical"), FIRING)
    assert not matching.matches(trigger('alertname="StoreDown"', "severity=warning"), FIRING)


def test_no_matchers_match_everything_of_the_right_status() -> None:
    assert matching.matches(trigger(), FIRING)
    assert not matching.matches(trigger(), RESOLVED)


@pytest.mark.parametrize(
    ("statuses", "alert", "expected"),
    [
        (None, FIRING, True),
        (None, RESOLVED, False),
        (frozenset({alerts.AlertStatus.RESOLVED}), RESOLVED, True),
        (frozenset({alerts.AlertStatus.RESOLVED}), FIRING, False),
        (frozenset(alerts.AlertStatus), RESOLVED, True),
    ],
    ids=[
        "default-firing",
        "default-ignores-resolved",
        "resolved-only",
        "resolved-only-ignores-firing",
        "both",
    ],
)
def test_matches_status(
    statuses: frozenset[alerts.AlertStatus] | None, alert: alerts.Alert, expected: bool
) -> None:
    assert matching.matches(trigger('alertname="StoreDown"', statuses=statuses), alert) is expected


def test_find_matches_orders_by_priority_then_name() -> None:
    playbook_set = playbooks.PlaybookSet(
        playbooks=(
            playbook("zeta", 'alertname="StoreDown"', priority=5),
            playbook("unrelated", 'alertname="DiskFull"', priority=100),
            playbook("beta", 'alertname="StoreDown"'),
            playbook("alpha", "severity=critical"),
            playbook("gamma", 'job=~"stores"', priority=5),
        )
    )
    found = matching.find_matches(FIRING, playbook_set, only_highest=False)
    assert [p.name for p in found] == ["gamma", "zeta", "alpha", "beta"]
    highest = matching.find_matches(FIRING, playbook_set, only_highest=True)
    assert [p.name for p in highest] == ["gamma"]


@pytest.mark.parametrize("only_highest", [True, False], ids=["only-highest", "all"])
def test_find_matches_none(only_highest: bool) -> None:
    playbook_set = playbooks.PlaybookSet(playbooks=(playbook("disk", 'alertname="DiskFull"'),))
    assert matching.find_matches(FIRING, playbook_set, only_highest=only_highest) == ()
