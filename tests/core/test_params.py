from __future__ import annotations

import dataclasses
import types
from collections.abc import Mapping
from typing import Any, Literal

import pytest

from remediator.core import errors, params


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Probe:
    url: str
    timeout: float = 5.0


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class ScaleParams:
    replicas: int = dataclasses.field(metadata={"doc": "Desired replica count."})
    namespace: str = "default"
    mode: Literal["rolling", "recreate"] = "rolling"
    limit: int | None = None
    ratio: float = 1.0
    force: bool = False
    names: tuple[str, ...] = ()
    pair: tuple[str, int] | None = None
    labels: Mapping[str, str] = dataclasses.field(default_factory=dict)
    body: dict[str, Any] = dataclasses.field(default_factory=dict)
    probe: Probe | None = None
    extra: Any = None
    api_token: str = ""

    def __post_init__(self) -> None:
        # Rules the types cannot say live here and surface as param problems.
        if self.replicas < 0:
            raise ValueError("replicas must not be negative")


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Unsupported:
    value: set[str]


def problems(raw: Mapping[str, Any]) -> list[tuple[str, str]]:
    return [(p.path, p.message) for p in params.check(ScaleParams, raw, path="params")]


# --- check (load time) ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw",
    [
        {"replicas": 3},
        {
            "replicas": 0,
            "namespace": "shop",
            "mode": "recreate",
            "limit": None,
            "ratio": 2,
            "force": True,
            "names": ["a", "b"],
            "pair": ["x", 1],
            "labels": {"app": "shop"},
            "body": {"any": [1, {"nested": True}]},
            "probe": {"url": "http://s1/healthz"},
            "extra": [1, "two"],
            "api_token": "abcd",
        },
        {
            "replicas": "{{ alert.labels.replicas }}",
            "mode": "{{ 'rolling' }}",
            "limit": "{% if x %}1{% else %}2{% endif %}",
            "force": "{{ run.dry_run }}",
            "names": ["{{ alert.labels.store_id }}", "fixed"],
            "labels": {"store": "{{ alert.labels.store_id }}"},
            "probe": {"url": "http://{{ target }}/", "timeout": "{{ t }}"},
            "extra": {"deep": ["{{ x }}"]},
        },
    ],
    ids=["required-only", "every-field-literal", "templates-anywhere-scalar"],
)
def test_check_accepts(raw: Mapping[str, Any]) -> None:
    assert problems(raw) == []


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (
            {"replica": 3},
            [
                ("params.replica", "unknown param 'replica' (did you mean 'replicas'?)"),
                ("params.replicas", "is required"),
            ],
        ),
        (
            {"replicas": 1, "colour": "red"},
            [("params.colour", "unknown param 'colour' (known params: replicas, namespace, ")],
        ),
        ({}, [("params.replicas", "is required")]),
        ({"replicas": "3"}, [("params.replicas", "must be an integer, got string '3'")]),
        ({"replicas": 1.5}, [("params.replicas", "must be an integer, got number 1.5")]),
        ({"replicas": True}, [("params.replicas", "must be an integer, got boolean true")]),
        ({"replicas": None}, [("params.replicas", "must be an integer, got null")]),
        (
            {"replicas": 1, "force": 1},
            [("params.force", "must be a boolean (true or false), got integer 1")],
        ),
        (
            {"replicas": 1, "ratio": "fast"},
            [("params.ratio", "must be a number, got string 'fast'")],
        ),
        ({"replicas": 1, "ratio": float("inf")}, [("params.ratio", "must be finite")]),
        (
            {"replicas": 1, "namespace": 7},
            [("params.namespace", "must be a string, got integer 7")],
        ),
        (
            {"replicas": 1, "mode": "rollin"},
            [
                (
                    "params.mode",
                    "must be one of 'rolling', 'recreate', got string 'rollin' "
                    "(did you mean 'rolling'?)",
                )
            ],
        ),
        (
            {"replicas": 1, "limit": "x"},
            [("params.limit", "must be an integer or null, got string 'x'")],
        ),
        ({"replicas": 1, "names": "a"}, [("params.names", "must be a list, got string 'a'")]),
        (
            {"replicas": 1, "names": ["a", 2]},
            [("params.names[1]", "must be a string, got integer 2")],
        ),
        (
            {"replicas": 1, "pair": ["a"]},
            [("params.pair", "must be a list of exactly 2 items, got 1")],
        ),
        ({"replicas": 1, "labels": ["a"]}, [("params.labels", "must be a mapping, got list")]),
        (
            {"replicas": 1, "labels": {"a": 1}},
            [("params.labels.a", "must be a string, got integer 1")],
        ),
        ({"replicas": 1, "labels": {1: "a"}}, [("params.labels", "keys must be strings, got 1")]),
        ({"replicas": 1, "probe": {}}, [("params.probe.url", "is required")]),
        (
            {"replicas": 1, "probe": {"url": "u", "timout": 1}},
            [("params.probe.timout", "unknown param 'timout' (did you mean 'timeout'?)")],
        ),
        (
            {"replicas": 1, "probe": "http://x"},
            [("params.probe", "must be a mapping, got string 'http://x'")],
        ),
        ({"replicas": -1}, [("params", "replicas must not be negative")]),
        (
            {"replicas": 1, "api_token": 12345},
            [("params.api_token", "must be a string, got integer")],
        ),
        (
            {"replicas": 1, "labels": {"password": ["hunter2"]}},
            [("params.labels.password", "must be a string, got list")],
        ),
    ],
    ids=[
        "unknown-suggests-close-match",
        "unknown-lists-known",
        "missing-required",
        "string-for-int-at-load",
        "float-for-int",
        "bool-for-int",
        "null-for-int",
        "int-for-bool",
        "text-for-float",
        "infinite-float",
        "int-for-str",
        "literal-suggests",
        "optional-wrong",
        "string-for-tuple",
        "tuple-item",
        "fixed-tuple-length",
        "list-for-mapping",
        "mapping-value",
        "mapping-key",
        "nested-missing",
        "nested-unknown",
        "nested-not-mapping",
        "post-init-rule",
        "secret-value-not-echoed",
        "secret-key-in-mapping",
    ],
)
def test_check_reports(raw: Mapping[str, Any], expected: list[tuple[str, str]]) -> None:
    found = problems(raw)
    assert [path for path, _ in found] == [path for path, _ in expected]
    for (_, message), (_, prefix) in zip(found, expected, strict=True):
        assert message.startswith(prefix), message


def test_check_reports_every_problem_at_once() -> None:
    found = problems(
        {
            "replica": 1,
            "mode": "fast",
            "names": [1, 2],
            "probe": {"url": 1},
            "labels": "{{ x }}",
            "extra": {"a": "{{ broken"},
            "namespace": "{% if %}",
        }
    )
    assert [path for path, _ in found] == [
        "params.replica",
        "params.replicas",
        "params.namespace",
        "params.mode",
        "params.names[0]",
        "params.names[1]",
        "params.labels",
        "params.probe.url",
        "params.extra.a",
    ]
    messages = dict(found)
    assert "template the items inside instead" in messages["params.labels"]
    assert messages["params.extra.a"].startswith("syntax error:")
    assert messages["params.namespace"].startswith("syntax error:")


def test_check_skips_post_init_when_a_template_is_involved() -> None:
    # replicas is only known after rendering, so the rule cannot be checked yet.
    assert problems({"replicas": "{{ -1 }}"}) == []


def test_check_rejects_a_non_mapping() -> None:
    found = params.check(ScaleParams, ["replicas"], path="steps[0].params")  # type: ignore[arg-type]
    assert [(p.path, p.message) for p in found] == [
        ("steps[0].params", "must be a mapping, got list")
    ]


def test_unsupported_field_type_is_a_programming_error() -> None:
    with pytest.raises(TypeError, match="unsupported param type"):
        params.check(Unsupported, {"value": ["a"]}, path="params")


# --- build (run time) ----------------------------------------------------------------------


def test_build_converts_rendered_strings() -> None:
    built = params.build(
        ScaleParams,
        {
            "replicas": " 3 ",
            "mode": "recreate",
            "limit": "None",
            "ratio": "1.5",
            "force": "True",
            "names": ["s1", "s2"],
            "pair": ("a", "2"),
            "labels": {"store": "s1"},
            "body": {"k": [1, 2]},
            "probe": {"url": "http://s1", "timeout": "2"},
            "extra": "anything",
        },
    )
    assert built == ScaleParams(
        replicas=3,
        mode="recreate",
        limit=None,
        ratio=1.5,
        force=True,
        names=("s1", "s2"),
        pair=("a", 2),
        labels={"store": "s1"},
        body={"k": [1, 2]},
        probe=Probe(url="http://s1", timeout=2.0),
        extra="anything",
    )
    assert isinstance(built.labels, types.MappingProxyType)
    assert type(built.body) is dict
    assert type(built.probe and built.probe.timeout) is float


@pytest.mark.parametrize(
    ("field", "value", "expected"),
    [
        ("replicas", "-2", None),
        ("replicas", "+4", 4),
        ("ratio", "2", 2.0),
        ("ratio", "1e3", 1000.0),
        ("ratio", 3, 3.0),
        ("force", "false", False),
        ("force", "TRUE", True),
        ("limit", "", None),
        ("limit", "null", None),
        ("limit", "7", 7),
    ],
    ids=[
        "negative-int-then-post-init",
        "signed-int",
        "int-text-for-float",
        "exponent",
        "int-for-float",
        "false",
        "upper-true",
        "empty-optional",
        "null-optional",
        "optional-int-text",
    ],
)
def test_build_coerces(field: str, value: Any, expected: Any) -> None:
    raw = {"replicas": 1, field: value}
    if expected is None and field == "replicas":
        with pytest.raises(errors.PermanentStepError, match="replicas must not be negative"):
            params.build(ScaleParams, raw)
        return
    assert getattr(params.build(ScaleParams, raw), field) == expected


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"replicas": "three"}, "invalid params: replicas: must be an integer, got string 'three'"),
        ({"replicas": "3.0"}, "replicas: must be an integer, got string '3.0'"),
        ({"replicas": "1_000"}, "replicas: must be an integer, got string '1_000'"),
        ({"replicas": True}, "replicas: must be an integer, got boolean true"),
        ({"replicas": "true"}, "replicas: must be an integer, got string 'true'"),
        ({"replicas": 1, "force": "1"}, "force: must be a boolean (true or false), got string '1'"),
        ({"replicas": 1, "force": 0}, "force: must be a boolean (true or false), got integer 0"),
        (
            {"replicas": 1, "force": "yes"},
            "force: must be a boolean (true or false), got string 'yes'",
        ),
        ({"replicas": 1, "ratio": "nan"}, "ratio: must be a number, got string 'nan'"),
        ({"replicas": 1, "mode": "Rolling"}, "mode: must be one of 'rolling', 'recreate'"),
        ({"replicas": 1, "namespace": "None"}, None),
        ({"replicas": 1, "names": "a,b"}, "names: must be a list, got string 'a,b'"),
        (
            {"replicas": 1, "probe": {"url": "u", "timeout": "soon"}},
            "probe.timeout: must be a number",
        ),
        ({"replicas": 1, "api_token": 5}, "api_token: must be a string, got integer"),
        ({}, "invalid params: replicas: is required"),
        (
            {"replicas": 1, "replica": 2},
            "replica: unknown param 'replica' (did you mean 'replicas'?)",
        ),
        ({"replicas": "x", "force": "y"}, "replicas: must be an integer, got string 'x'; force: "),
    ],
    ids=[
        "word-for-int",
        "decimal-text-for-int",
        "underscored-int",
        "bool-for-int",
        "bool-text-for-int",
        "int-text-for-bool",
        "int-for-bool",
        "yes-for-bool",
        "nan",
        "literal-is-case-sensitive",
        "none-text-stays-a-string-for-str",
        "text-for-tuple",
        "nested",
        "secret-not-echoed",
        "missing",
        "unknown",
        "all-problems",
    ],
)
def test_build_rejects(raw: Mapping[str, Any], message: str | None) -> None:
    if message is None:
        assert params.build(ScaleParams, raw).namespace == "None"
        return
    with pytest.raises(errors.PermanentStepError) as info:
        params.build(ScaleParams, raw)
    assert message in str(info.value)
    assert str(info.value).startswith("invalid params: ")


def test_build_with_literal_of_ints() -> None:
    @dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
    class Level:
        level: Literal[1, 2, 3]

    assert params.build(Level, {"level": "2"}).level == 2
    with pytest.raises(errors.PermanentStepError, match="must be one of 1, 2, 3, got string '4'"):
        params.build(Level, {"level": "4"})
    with pytest.raises(errors.PermanentStepError, match="got boolean true"):
        params.build(Level, {"level": True})


# --- to_json / describe --------------------------------------------------------------------


def test_to_json_is_json_safe() -> None:
    built = params.build(
        ScaleParams,
        {
            "replicas": 2,
            "names": ["a"],
            "pair": ["p", 1],
            "labels": {"k": "v"},
            "probe": {"url": "u"},
        },
    )
    assert params.to_json(built) == {
        "replicas": 2,
        "namespace": "default",
        "mode": "rolling",
        "limit": None,
        "ratio": 1.0,
        "force": False,
        "names": ["a"],
        "pair": ["p", 1],
        "labels": {"k": "v"},
        "body": {},
        "probe": {"url": "u", "timeout": 5.0},
        "extra": None,
        "api_token": "",
    }
    assert type(params.to_json(built)["labels"]) is dict


def test_to_json_rejects_a_type() -> None:
    with pytest.raises(TypeError):
        params.to_json(ScaleParams)


TEMPLATE = dict(params.TEMPLATE_SCHEMA)


def test_describe_for_docs() -> None:
    schema = params.describe(ScaleParams, templates=False)
    assert schema["type"] == "object"
    assert schema["additionalProperties"] is False
    assert schema["required"] == ["replicas"]
    props = schema["properties"]
    assert props["replicas"] == {"type": "integer", "description": "Desired replica count."}
    assert props["namespace"] == {"type": "string", "default": "default"}
    assert props["mode"] == {"enum": ["rolling", "recreate"], "default": "rolling"}
    assert props["limit"] == {"anyOf": [{"type": "integer"}, {"type": "null"}], "default": None}
    assert props["ratio"] == {"type": "number", "default": 1.0}
    assert props["force"] == {"type": "boolean", "default": False}
    assert props["names"] == {"type": "array", "items": {"type": "string"}, "default": []}
    assert props["pair"]["anyOf"][0] == {
        "type": "array",
        "prefixItems": [{"type": "string"}, {"type": "integer"}],
        "items": False,
        "minItems": 2,
    }
    assert props["labels"] == {
        "type": "object",
        "additionalProperties": {"type": "string"},
        "default": {},
    }
    assert props["body"] == {"type": "object", "additionalProperties": {}, "default": {}}
    assert props["probe"] == {
        "anyOf": [
            {
                "type": "object",
                "properties": {
                    "url": {"type": "string"},
                    "timeout": {"type": "number", "default": 5.0},
                },
                "required": ["url"],
                "additionalProperties": False,
            },
            {"type": "null"},
        ],
        "default": None,
    }
    assert props["extra"] == {"default": None}


def test_describe_for_validation_accepts_templates_where_check_does() -> None:
    props = params.describe(ScaleParams)["properties"]
    assert props["replicas"]["anyOf"] == [{"type": "integer"}, TEMPLATE]
    assert props["mode"]["anyOf"] == [{"enum": ["rolling", "recreate"]}, TEMPLATE]
    assert props["limit"]["anyOf"] == [{"type": "integer"}, {"type": "null"}, TEMPLATE]
    assert props["namespace"] == {"type": "string", "default": "default"}
    assert props["names"]["items"] == {"type": "string"}
    assert props["labels"]["additionalProperties"] == {"type": "string"}
    # A list cannot come from a template, so the array schema itself takes no template.
    assert props["pair"]["anyOf"][0]["prefixItems"][1] == {"anyOf": [{"type": "integer"}, TEMPLATE]}
    assert TEMPLATE not in props["pair"]["anyOf"]
    assert props["probe"]["anyOf"][0]["properties"]["timeout"]["anyOf"] == [
        {"type": "number"},
        TEMPLATE,
    ]


def test_describe_unsupported_type() -> None:
    with pytest.raises(TypeError, match="unsupported param type"):
        params.describe(Unsupported)
