"""The scenario runner's PromQL subset: what the playbooks ask, answered as Prometheus would,
and everything else refused."""

from __future__ import annotations

import pytest

from remediator.simulation import promql

SAMPLES = [
    promql.Sample(labels=promql.parse_series(text), value=value)
    for text, value in [
        ('store_up{store_id="s1", namespace="store-s1"}', 0.0),
        ('store_up{store_id="s2", namespace="store-s2"}', 1.0),
        ('store_up{store_id="s2", namespace="store-s2", instance="b"}', 0.0),
        ('provisioner_up{namespace="store-platform"}', 1.0),
    ]
]


def values(query: str) -> list[tuple[dict[str, str], float]]:
    return [(dict(s.labels), s.value) for s in promql.evaluate(query, SAMPLES)]


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ('max(store_up{store_id="s1"})', [({}, 0.0)]),
        ('max(store_up{store_id="s2"}) == 1', [({}, 1.0)]),
        ('max(store_up{store_id="s1"}) == 1', []),
        ("count(max by (store_id) (store_up) == 0) or vector(0)", [({}, 1.0)]),
        ("count(max by (store_id) (store_up) == 5) or vector(0)", [({}, 0.0)]),
        ("sum without (instance) (store_up)",
         [({"store_id": "s1", "namespace": "store-s1"}, 0.0),
          ({"store_id": "s2", "namespace": "store-s2"}, 1.0)]),
        ('store_up{store_id=~"s[12]", instance!~".+"} > 0',
         [({"store_id": "s2", "namespace": "store-s2"}, 1.0)]),
        ('{__name__="provisioner_up"}',
         [({"__name__": "provisioner_up", "namespace": "store-platform"}, 1.0)]),
        ("min(store_up)", [({}, 0.0)]),
        ("avg by (store_id) (store_up)", [({"store_id": "s1"}, 0.0), ({"store_id": "s2"}, 0.5)]),
        ("count(no_such_metric)", []),
    ],
    ids=lambda value: value if isinstance(value, str) else "",
)  # fmt: skip
def test_queries_of_the_subset(query: str, expected: list[tuple[dict[str, str], float]]) -> None:
    assert values(query) == expected


@pytest.mark.parametrize(
    "query",
    ["rate(store_up[5m])", "store_up + 1", "max(store_up", "store_up{store_id=s1}", "{}", ""],
)
def test_anything_else_is_refused(query: str) -> None:
    with pytest.raises(promql.PromQLError):
        promql.evaluate(query, SAMPLES)


def test_series_must_be_written_with_quoted_values() -> None:
    assert promql.parse_series("up") == {"__name__": "up"}
    with pytest.raises(promql.PromQLError):
        promql.parse_series("store_up{store_id=s1}")
