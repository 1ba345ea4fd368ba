"""A small PromQL subset over a fixed set of samples, for the scenario runner's stand-in of
Prometheus' instant-query API.

Enough for the queries playbooks write against store metrics, and nothing more, so a query
outside it fails loudly (`PromQLError`) instead of answering something Prometheus would not:

- selectors ``name``, ``name{label="v", other=~"re", x!="v", y!~"re"}`` and ``{__name__="n"}``;
- aggregations ``sum``, ``min``, ``max``, ``avg``, ``count`` with ``by (…)`` or ``without (…)``
  before or after the argument;
- comparisons with a number (``== != > < >= <=``), which filter as PromQL's do without ``bool``;
- ``a or b``, ``vector(N)``, plain numbers and parentheses.

No ranges, offsets, functions besides ``vector``, or arithmetic between vectors.
"""

from __future__ import annotations

import dataclasses
import operator
import re
from collections.abc import Callable, Mapping, Sequence

Labels = tuple[tuple[str, str], ...]


class PromQLError(ValueError):
    """The query is not PromQL, or not in the subset this module answers."""


@dataclasses.dataclass(frozen=True, slots=True)
class Sample:
    labels: Mapping[str, str]
    """With ``__name__`` for a series; results of aggregations have none."""
    value: float


_TOKEN = re.compile(
    r"\s*(?:(?P<number>[0-9]+(?:\.[0-9]+)?(?:e[+-]?[0-9]+)?)"
    r'|(?P<string>"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\')'
    r"|(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)"
    r"|(?P<op>==|!=|=~|!~|>=|<=|[=<>(){},]))"
)
_COMPARE: Mapping[str, Callable[[float, float], bool]] = {
    "==": operator.eq,
    "!=": operator.ne,
    ">": operator.gt,
    "<": operator.lt,
    ">=": operator.ge,
    "<=": operator.le,
}
_AGGREGATIONS: Mapping[str, Callable[[Sequence[float]], float]] = {
    "sum": sum,
    "min": min,
    "max": max,
    "avg": lambda values: sum(values) / len(values),
    "count": len,
}


def _tokens(query: str) -> list[str]:
    found, position = [], 0
    text = query.rstrip()
    while position < len(text):
        match = _TOKEN.match(text, position)
        if match is None or match.end() == position:
            raise PromQLError(f"unexpected character at {position}: {text[position:]!r}")
        found.append(match.group().strip())
        position = match.end()
    return found


class _Parser:
    def __init__(self, query: str, samples: Sequence[Sample]) -> None:
        self.query = query
        self.tokens = _tokens(query)
        self.position = 0
        self.samples = samples

    def peek(self) -> str | None:
        return self.tokens[self.position] if self.position < len(self.tokens) else None

    def take(self, expected: str | None = None) -> str:
        token = self.peek()
        if token is None or (expected is not None and token != expected):
            wanted = f"{expected!r}" if expected else "more"
            raise PromQLError(f"expected {wanted} at token {self.position} of {self.query!r}")
        self.position += 1
        return token

    def parse(self) -> list[Sample]:
        result = self.union()
        if self.peek() is not None:
            raise PromQLError(f"unsupported at {self.peek()!r} in {self.query!r}")
        return result

    def union(self) -> list[Sample]:
        left = self.comparison()
        while self.peek() == "or":
            self.take()
            right = self.comparison()
            seen = {_identity(s.labels) for s in left}
            left = left + [s for s in right if _identity(s.labels) not in seen]
        return left

    def comparison(self) -> list[Sample]:
        operand = self.operand()
        token = self.peek()
        if token is not None and token in _COMPARE:
            self.take()
            threshold = float(self.take())
            keep = _COMPARE[token]
            operand = [
                Sample(labels={k: v for k, v in s.labels.items() if k != "__name__"}, value=s.value)
                for s in operand
                if keep(s.value, threshold)
            ]
        return operand

    def operand(self) -> list[Sample]:
        word = self.take()
        if word == "(":
            inner = self.union()
            self.take(")")
            return inner
        if re.fullmatch(r"[0-9].*", word):
            return [Sample(labels={}, value=float(word))]
        if word == "vector":
            self.take("(")
            value = float(self.take())
            self.take(")")
            return [Sample(labels={}, value=value)]
        if word in _AGGREGATIONS:
            return self.aggregation(word)
        if word == "{":
            self.position -= 1
            return self.selector(None)
        if re.fullmatch(r"[a-zA-Z_:][a-zA-Z0-9_:]*", word):
            return self.selector(word)
        raise PromQLError(f"unsupported {word!r} in {self.query!r}")

    def grouping(self) -> tuple[str, tuple[str, ...]] | None:
        if self.peek() not in ("by", "without"):
            return None
        mode = self.take()
        self.take("(")
        names: list[str] = []
        while self.peek() != ")":
            names.append(self.take())
            if self.peek() == ",":
                self.take()
        self.take(")")
        return mode, tuple(names)

    def aggregation(self, name: str) -> list[Sample]:
        grouping = self.grouping()
        self.take("(")
        inner = self.union()
        self.take(")")
        grouping = grouping or self.grouping()
        groups: dict[Labels, list[float]] = {}
        for sample in inner:
            labels = {k: v for k, v in sample.labels.items() if k != "__name__"}
            if grouping is None:
                kept: Mapping[str, str] = {}
            elif grouping[0] == "by":
                kept = {k: v for k, v in labels.items() if k in grouping[1]}
            else:
                kept = {k: v for k, v in labels.items() if k not in grouping[1]}
            groups.setdefault(_identity(kept), []).append(sample.value)
        aggregate = _AGGREGATIONS[name]
        return [
            Sample(labels=dict(key), value=float(aggregate(values)))
            for key, values in groups.items()
        ]

    def selector(self, metric: str | None) -> list[Sample]:
        tests: list[Callable[[Mapping[str, str]], bool]] = []
        if metric is not None:
            tests.append(lambda labels: labels.get("__name__") == metric)
        if self.peek() == "{":
            self.take()
            while self.peek() != "}":
                label, op, raw = self.take(), self.take(), self.take()
                if op not in ("=", "!=", "=~", "!~") or raw[0] not in "\"'":
                    raise PromQLError(f"bad matcher {label}{op}{raw} in {self.query!r}")
                tests.append(_matcher(label, op, _unquote(raw)))
                if self.peek() == ",":
                    self.take()
            self.take("}")
        if not tests:
            raise PromQLError(f"empty selector in {self.query!r}")
        return [s for s in self.samples if all(test(s.labels) for test in tests)]


def _identity(labels: Mapping[str, str]) -> Labels:
    return tuple(sorted(labels.items()))


def _unquote(raw: str) -> str:
    body = raw[1:-1]
    return re.sub(r"\\(.)", lambda m: {"n": "\n"}.get(m.group(1), m.group(1)), body)


def _matcher(label: str, op: str, value: str) -> Callable[[Mapping[str, str]], bool]:
    if op in ("=~", "!~"):
        pattern = re.compile(f"(?:{value})")
        wanted = op == "=~"
        return lambda labels: (pattern.fullmatch(labels.get(label, "")) is not None) == wanted
    if op == "=":
        return lambda labels: labels.get(label, "") == value
    return lambda labels: labels.get(label, "") != value


def evaluate(query: str, samples: Sequence[Sample]) -> list[Sample]:
    """The instant vector ``query`` yields over ``samples`` (all taken to be current)."""
    return _Parser(query, samples).parse()


_SERIES = re.compile(r"\s*(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)\s*(?:\{(?P<labels>[^}]*)\})?\s*")
_LABEL = re.compile(r'\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*=\s*"((?:[^"\\]|\\.)*)"\s*(?:,|$)')


def parse_series(text: str) -> dict[str, str]:
    """``store_up{store_id="s1"}`` → its labels with ``__name__``; `PromQLError` if it is no
    series selector with ``=`` matchers only."""
    match = _SERIES.fullmatch(text)
    if match is None:
        raise PromQLError(f'not a series such as name{{label="value"}}: {text!r}')
    labels = {"__name__": match["name"]}
    rest = match["labels"] or ""
    position = 0
    while position < len(rest.strip()):
        pair = _LABEL.match(rest, position)
        if pair is None:
            raise PromQLError(f'labels must be written label="value": {text!r}')
        labels[pair[1]] = _unquote(f'"{pair[2]}"')
        position = pair.end()
    return labels
