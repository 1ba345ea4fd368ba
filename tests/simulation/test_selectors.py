"""Label and field selector parsing and matching, against apimachinery's semantics."""

from __future__ import annotations

from typing import Any

import pytest

from remediator.simulation.kubeapi import selectors

LABELS = {"app": "web", "tier": "front", "release": "3"}


@pytest.mark.parametrize(
    ("selector", "expected"),
    [
        ("app=web", True),
        ("app==web", True),
        ("app=api", False),
        ("app!=api", True),
        ("app!=web", False),
        ("missing!=x", True),
        ("app in (api,web)", True),
        ("app in (api, db)", False),
        ("app notin (api,db)", True),
        ("app notin (web)", False),
        ("missing notin (x)", True),
        ("missing in (x)", False),
        ("tier", True),
        ("missing", False),
        ("!missing", True),
        ("!tier", False),
        ("app=web,tier=front", True),
        ("app=web,tier=back", False),
        ("app in (web),!missing,tier", True),
        ("release>2", True),
        ("release<3", False),
        ("", True),
    ],
    ids=lambda value: repr(value) if isinstance(value, str) else None,
)
def test_label_selector_matches(selector: str, expected: bool) -> None:
    assert selectors.parse_label_selector(selector).matches(LABELS) is expected


@pytest.mark.parametrize(
    "selector",
    ["app=", "app=web,", "app in ()", "app in web", "=web", "app=web=x", "app=-bad-", "!"],
    ids=["empty-value-is-valid", "trailing-comma", "empty-set", "set-without-parens",
         "no-key", "double-operator", "bad-value", "bang-without-key"],
)  # fmt: skip
def test_label_selector_syntax(selector: str) -> None:
    if selector == "app=":
        # "key=" selects an empty value: valid, and matches nothing here.
        assert not selectors.parse_label_selector(selector).matches(LABELS)
        assert selectors.parse_label_selector(selector).matches({"app": ""})
        return
    with pytest.raises(selectors.SelectorError):
        selectors.parse_label_selector(selector)


def test_prefixed_keys_and_none_labels() -> None:
    selector = selectors.parse_label_selector("app.kubernetes.io/part-of=store-platform")
    assert selector.matches({"app.kubernetes.io/part-of": "store-platform"})
    assert not selector.matches(None)
    assert selectors.parse_label_selector("!app.kubernetes.io/part-of").matches(None)


def test_selector_from_spec_round_trips_to_string() -> None:
    spec = {
        "matchLabels": {"app": "web"},
        "matchExpressions": [{"key": "tier", "operator": "In", "values": ["front", "edge"]}],
    }
    selector = selectors.selector_from_spec(spec)
    text = selectors.format_label_selector(selector)
    assert text == "app=web,tier in (front,edge)"
    assert selectors.parse_label_selector(text) == selector


POD: dict[str, Any] = {
    "metadata": {"name": "web-1", "namespace": "shop"},
    "spec": {"nodeName": "node-a", "hostNetwork": False},
    "status": {"phase": "Running"},
}


@pytest.mark.parametrize(
    ("selector", "expected"),
    [
        ("metadata.name=web-1", True),
        ("metadata.name==web-1", True),
        ("metadata.name!=web-1", False),
        ("metadata.namespace=shop,status.phase=Running", True),
        ("status.phase=Pending", False),
        ("status.phase!=Pending", True),
        ("spec.hostNetwork=false", True),
        ("spec.missing=", True),
        ("spec.missing!=", False),
        ("spec.nodeName=node-a", True),
    ],
    ids=lambda value: repr(value) if isinstance(value, str) else None,
)
def test_field_selector_matches(selector: str, expected: bool) -> None:
    assert selectors.parse_field_selector(selector).matches(POD) is expected


def test_field_selector_escapes() -> None:
    obj = {"metadata": {"name": "a,b=c"}}
    assert selectors.parse_field_selector(r"metadata.name=a\,b\=c").matches(obj)
    with pytest.raises(selectors.SelectorError):
        selectors.parse_field_selector("metadata.name")
    with pytest.raises(selectors.SelectorError):
        selectors.parse_field_selector(r"metadata.name=a\x")
