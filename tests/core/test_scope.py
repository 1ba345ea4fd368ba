"""Scope checks: which alert label values, namespaces and names may reach a playbook."""

from __future__ import annotations

import pytest

from remediator.core import scope

ALLOWLIST = scope.compile_allowlist(scope.DEFAULT_NAMESPACES)


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        ("store-{{ alert.labels.store_id }}", {"store_id"}),
        ("{{ alert.labels['store_id'] }}", {"store_id"}),
        ('{{ alert.labels["store_id"] }}', {"store_id"}),
        ("{{ alert.labels[ 'store_id' ] }}", {"store_id"}),
        ("{{ alert.labels.get('store_id', 'x') }}", {"store_id"}),
        ('{{ alert.labels.get ( "store_id" ) }}', {"store_id"}),
        ("alert.labels.severity == 'critical' and alert.labels.team", {"severity", "team"}),
        ("{{ alert.annotations.summary }} {{ alert.status }}", set()),
        ("plain text", set()),
    ],
    ids=[
        "dotted",
        "single-quoted",
        "double-quoted",
        "spaced-index",
        "get",
        "get-spaced",
        "expression",
        "not-labels",
        "no-template",
    ],
)
def test_referenced_labels(template: str, expected: set[str]) -> None:
    assert scope.referenced_labels([template]) == expected


def test_referenced_labels_spans_all_templates() -> None:
    found = scope.referenced_labels(
        ["{{ alert.labels.namespace }}", "{{ alert.labels['pod'] }}", "{{ alert.labels.pod }}"]
    )

    assert found == frozenset({"namespace", "pod"})


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("../x", "must be 1-63"),
        ("x" * 300, "must be 1-63"),
        ("x" * 64, "must be 1-63"),
        ("{{ 7*7 }}", "template syntax"),
        ("{% if true %}", "template syntax"),
        ("abc}}", "template syntax"),
        ("a b", "must be 1-63"),
        ("", "must be 1-63"),
        ("-store", "must be 1-63"),
        ("store.", "must be 1-63"),
        ("store-1\n", "must be 1-63"),
        ("store/1", "must be 1-63"),
        ("störe", "must be 1-63"),
    ],
    ids=[
        "dotdot",
        "300-chars",
        "64-chars",
        "expression",
        "statement",
        "closing-braces",
        "space",
        "empty",
        "leading-dash",
        "trailing-dot",
        "trailing-newline",
        "slash",
        "non-ascii",
    ],
)
def test_check_labels_refuses(value: str, message: str) -> None:
    (problem,) = scope.check_labels({"store_id": value, "other": "../ignored"}, ["store_id"])

    assert problem.field == "labels.store_id"
    assert message in problem.message
    assert len(problem.value) <= 65  # truncated for the audit log


@pytest.mark.parametrize(
    "value",
    ["s1", "store-42", "a.b_c", "A", "x" * 63, "10.0.0.1"],
    ids=["short", "dashed", "dot-underscore", "one-char", "63-chars", "ip"],
)
def test_check_labels_accepts(value: str) -> None:
    assert scope.check_labels({"store_id": value}, ["store_id"]) == []


def test_check_labels_leaves_missing_labels_and_unused_ones_alone() -> None:
    labels = {"store_id": "s1", "description": "not an identifier at all"}

    assert scope.check_labels(labels, ["store_id", "missing"]) == []


def test_check_labels_reports_every_bad_label_in_name_order() -> None:
    problems = scope.check_labels({"b": "a b", "a": "{{x}}", "c": "ok"}, ["c", "b", "a"])

    assert [p.field for p in problems] == ["labels.a", "labels.b"]


@pytest.mark.parametrize(
    "namespace", ["store-abc", "store-platform", "store-1", "store-a-b"], ids=str
)
def test_check_namespace_accepts_store_namespaces(namespace: str) -> None:
    assert scope.check_namespace(namespace, ALLOWLIST) is None


@pytest.mark.parametrize(
    ("namespace", "message"),
    [
        ("kube-system", "outside the allowlist"),
        ("default", "outside the allowlist"),
        ("store", "outside the allowlist"),
        ("store-", "not a DNS-1123 label"),
        ("xstore-abc", "outside the allowlist"),
        ("store-abc.evil", "not a DNS-1123 label"),
        ("Store-abc", "not a DNS-1123 label"),
        ("store_abc", "not a DNS-1123 label"),
        ("../store-abc", "not a DNS-1123 label"),
        ("store-" + "a" * 58, "not a DNS-1123 label"),
        ("store-abc\n", "not a DNS-1123 label"),
        ("", "not a DNS-1123 label"),
    ],
    ids=[
        "kube-system",
        "default",
        "bare-store",
        "trailing-dash",
        "prefix",
        "dotted",
        "uppercase",
        "underscore",
        "traversal",
        "64-chars",
        "trailing-newline",
        "empty",
    ],
)
def test_check_namespace_refuses(namespace: str, message: str) -> None:
    reason = scope.check_namespace(namespace, ALLOWLIST)

    assert reason is not None
    assert message in reason


def test_allowlist_patterns_are_anchored() -> None:
    allowlist = scope.compile_allowlist(["team-a|team-b"])

    assert scope.check_namespace("team-b", allowlist) is None
    for namespace in ("team-a-x", "x-team-b", "team-c"):
        assert scope.check_namespace(namespace, allowlist) is not None


@pytest.mark.parametrize(
    "name",
    ["web", "web-7d9f", "a.b.c", "a" * 253, "0abc"],
    ids=["short", "dashed", "dotted", "253-chars", "leading-digit"],
)
def test_check_name_accepts_dns_subdomains(name: str) -> None:
    assert scope.check_name(name) is None


@pytest.mark.parametrize(
    "name",
    ["", "Web", "web_1", "-web", "web-", "a..b", "a/b", "../etc", "a" * 254, "web\n", "{{x}}"],
    ids=[
        "empty",
        "uppercase",
        "underscore",
        "leading-dash",
        "trailing-dash",
        "empty-label",
        "slash",
        "traversal",
        "254-chars",
        "trailing-newline",
        "template",
    ],
)
def test_check_name_refuses(name: str) -> None:
    reason = scope.check_name(name)

    assert reason is not None
    assert "DNS-1123 subdomain" in reason
