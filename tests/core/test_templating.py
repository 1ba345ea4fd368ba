from __future__ import annotations

import json
import pathlib
from typing import Any

import jinja2
import jinja2.exceptions
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from remediator.core import alerts, errors, redaction, templating

PAYLOADS = pathlib.Path(__file__).parent / "payloads"


def make_context(**labels: str) -> dict[str, Any]:
    raw: Any = json.loads((PAYLOADS / "storedown-firing.json").read_text())
    alert = alerts.parse_webhook(raw).alerts[0].to_json()
    alert["labels"].update(labels)
    return {
        "alert": alert,
        "target": "store/s1",
        "playbook": "restart-store",
        "run": {"id": "r-1", "dry_run": False},
        "steps": {
            "probe": {"outcome": "succeeded", "output": {"ready": 0, "pods": ["a", "b"]}},
        },
    }


CONTEXT = make_context()


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("{{ alert.labels.store_id }}", "s1"),
        ("store-{{ alert.labels['store_id'] }}", "store-s1"),
        ("{{ alert.annotations.summary }}", "Store s1 is down"),
        ("{{ alert.status }}/{{ alert.fingerprint }}", "firing/46924153d5d81b9f"),
        ("{{ alert.startsAt }}", "2026-11-26T07:12:39.391Z"),
        (
            "{{ target }} {{ playbook }} {{ run.id }} {{ run.dry_run }}",
            "store/s1 restart-store r-1 False",
        ),
        ("{{ steps.probe.outcome }}:{{ steps.probe.output.pods | join(',') }}", "succeeded:a,b"),
        ("{% if steps.probe.output.ready == 0 %}down{% else %}up{% endif %}", "down"),
        ("{{ alert.labels.nope | default('none') }}", "none"),
        ("{{ alert.labels.store_id | upper }}", "S1"),
        ("{# a comment #}x", "x"),
        ("{{ '<b>' }}", "<b>"),
        ("{{ x }}\n", None),
    ],
    ids=[
        "label",
        "label-by-item",
        "annotation",
        "status-fingerprint",
        "starts-at",
        "target-playbook-run",
        "steps-output",
        "if-block",
        "default-filter",
        "filter",
        "comment",
        "no-autoescape",
        "keeps-trailing-newline",
    ],
)
def test_render(source: str, expected: str | None) -> None:
    if expected is None:
        assert templating.render(source, {"x": 1}) == "1\n"
    else:
        assert templating.render(source, CONTEXT) == expected


@pytest.mark.parametrize(
    "source",
    ["plain text", "", "a { b } c", "100%", "{ {not a template} }"],
    ids=["plain", "empty", "single-braces", "percent", "spaced-braces"],
)
def test_render_returns_plain_strings_unchanged(source: str) -> None:
    assert not templating.is_templated(source)
    # An empty context would fail any real template, so this also proves nothing was rendered.
    assert templating.render(source, {}) is source


@pytest.mark.parametrize(
    "source",
    ["{{ x }}", "a {% if x %}b{% endif %}", "{# c #}"],
    ids=["expression", "statement", "comment"],
)
def test_is_templated(source: str) -> None:
    assert templating.is_templated(source)


@pytest.mark.parametrize(
    "value",
    ["{{ 7*7 }}", "{% for i in range(3) %}x{% endfor %}", "{{ ''.__class__ }}", "{# x #}"],
    ids=["expression", "statement", "escape-attempt", "comment"],
)
def test_label_values_are_data_not_templates(value: str) -> None:
    context = make_context(store_id=value)
    assert templating.render("store {{ alert.labels.store_id }}", context) == f"store {value}"
    assert templating.render_params({"a": ["{{ alert.labels.store_id }}"]}, context) == {
        "a": [value]
    }
    assert templating.evaluate("alert.labels.store_id", context) == value


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("{{ nope }}", "undefined: 'nope' is undefined"),
        ("{{ alert.labels.nope }}", "undefined: 'dict object' has no attribute 'nope'"),
        ("{{ steps.later.outcome }}", "undefined: 'dict object' has no attribute 'later'"),
        ("{% if nope %}x{% endif %}", "undefined: 'nope' is undefined"),
        ("{{ 1 / 0 }}", "ZeroDivisionError: division by zero"),
        ("{{ 'a' + 1 }}", "TypeError"),
    ],
    ids=["name", "label", "later-step", "in-condition", "zero-division", "type-error"],
)
def test_render_errors(source: str, message: str) -> None:
    with pytest.raises(errors.TemplateError) as info:
        templating.render(source, CONTEXT)
    assert message in str(info.value)
    assert info.value.__cause__ is not None


@pytest.mark.parametrize(
    "source",
    [
        "{{ ''.__class__ }}",
        "{{ ''.__class__.__mro__[1].__subclasses__() }}",
        "{{ alert.__init__.__globals__ }}",
        "{{ cycler.__init__.__globals__.os }}",
        "{{ lipsum.__globals__ }}",
        "{{ alert.labels.update({'x': 1}) }}",
        "{{ steps.probe.output.pods.append('c') }}",
        "{{ 'a' * 1000000 }}",
        "{{ [1] * 1000000 }}",
        "{{ 9 ** 9999999 }}",
        "{{ range(10000000) | list }}",
    ],
    ids=[
        "dunder-class",
        "subclasses",
        "globals-via-dict",
        "cycler-globals",
        "lipsum-globals",
        "mutate-dict",
        "mutate-list",
        "huge-string",
        "huge-list",
        "huge-power",
        "huge-range",
    ],
)
def test_sandbox_refuses(source: str) -> None:
    with pytest.raises(errors.TemplateError) as info:
        templating.render(source, CONTEXT)
    assert isinstance(info.value.__cause__, jinja2.exceptions.SecurityError | OverflowError)
    assert CONTEXT["steps"]["probe"]["output"]["pods"] == ["a", "b"]
    assert "x" not in CONTEXT["alert"]["labels"]


def test_sandbox_refusal_is_reported_as_such() -> None:
    with pytest.raises(errors.TemplateError, match=r"forbidden by the sandbox: .*__class__"):
        templating.render("{{ ''.__class__ }}", CONTEXT)


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("{{ x ", "syntax error: unexpected end of template"),
        ("a\n{% if x %}", "(line 2)"),
        ("{{ x | nosuchfilter }}", "No filter named 'nosuchfilter'"),
        ("{% endfor %}", "syntax error: Encountered unknown tag 'endfor'"),
    ],
    ids=["unclosed", "line-number", "unknown-filter", "stray-end"],
)
def test_check_template_rejects(source: str, message: str) -> None:
    with pytest.raises(errors.TemplateError) as info:
        templating.check_template(source)
    assert message in str(info.value)
    assert isinstance(info.value.__cause__, jinja2.TemplateError)


@pytest.mark.parametrize(
    "source",
    ["{{ alert.labels.nope }}", "plain", "{% if a %}{{ b }}{% endif %}"],
    ids=["undefined-is-fine-at-compile", "plain", "block"],
)
def test_check_template_accepts(source: str) -> None:
    templating.check_template(source)


def test_error_messages_are_bounded() -> None:
    with pytest.raises(errors.TemplateError) as info:
        templating.render("{{ " + "a" * 1000 + " }}", {})
    assert len(str(info.value)) <= templating.MAX_MESSAGE
    assert str(info.value).endswith("…")


def test_render_params_renders_strings_deeply_and_keeps_keys_and_types() -> None:
    raw = {
        "name": "{{ alert.labels.store_id }}",
        "replicas": 3,
        "enabled": True,
        "nothing": None,
        "labels": {"{{ key }}": "{{ alert.labels.job }}"},
        "args": ["--store", "{{ alert.labels.store_id }}", 5],
        "pair": ("{{ target }}", 1.5),
    }
    assert templating.render_params(raw, CONTEXT) == {
        "name": "s1",
        "replicas": 3,
        "enabled": True,
        "nothing": None,
        "labels": {"{{ key }}": "stores"},
        "args": ["--store", "s1", 5],
        "pair": ("store/s1", 1.5),
    }
    assert raw["name"] == "{{ alert.labels.store_id }}"


def test_render_params_error_names_the_path() -> None:
    with pytest.raises(errors.TemplateError, match=r"^headers\.X-Store\[1\]: undefined: 'nope'"):
        templating.render_params({"headers": {"X-Store": ["ok", "{{ nope }}"]}}, CONTEXT)


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ("steps.probe.output.ready == 0", True),
        ("steps.probe.output.ready > 0", False),
        ("alert.labels.severity in ['critical', 'warning']", True),
        ("alert.labels.store_id", "s1"),
        ("steps.probe.output.pods | length", 2),
        ("steps.probe.output.pods", ["a", "b"]),
        ("{'a': 1}", {"a": 1}),
        ("not run.dry_run and alert.status == 'firing'", True),
        ("alert.labels.zone is defined", False),
        ("alert.labels.zone | default('eu') == 'eu'", True),
        ("'{{' in alert.labels.store_id", False),
        ("none", None),
    ],
    ids=[
        "comparison-true",
        "comparison-false",
        "membership",
        "string",
        "filter-int",
        "list",
        "dict-literal",
        "boolean-logic",
        "is-defined",
        "default",
        "braces-inside-a-string-literal",
        "none",
    ],
)
def test_evaluate(expression: str, expected: Any) -> None:
    assert templating.evaluate(expression, CONTEXT) == expected


def test_evaluate_sees_verify_output() -> None:
    assert templating.evaluate("output.status == 200", {**CONTEXT, "output": {"status": 200}})


@pytest.mark.parametrize(
    ("expression", "message"),
    [
        ("nope", "undefined: 'nope' is undefined"),
        ("steps.probe.output.missing", "undefined: 'dict object' has no attribute 'missing'"),
        ("[1, nope]", "undefined: 'nope' is undefined"),
        ("{'a': nope}", "undefined: 'nope' is undefined"),
        ("''.__class__", "forbidden by the sandbox"),
        ("x ==", "syntax error"),
        ("", "syntax error"),
        ("{{ steps.probe.output.ready > 0 }}", "use 'steps.probe.output.ready > 0', not"),
        ("  {{x}}  ", "expressions are written without braces"),
    ],
    ids=[
        "undefined-name",
        "undefined-attribute",
        "undefined-in-list",
        "undefined-in-dict",
        "sandbox",
        "syntax",
        "empty",
        "braces",
        "braces-spaced",
    ],
)
def test_evaluate_errors(expression: str, message: str) -> None:
    with pytest.raises(errors.TemplateError) as info:
        templating.evaluate(expression, CONTEXT)
    assert message in str(info.value)


@pytest.mark.parametrize(
    ("expression", "message"),
    [("{{ a }}", "without braces"), ("a and", "syntax error"), ("a | nofilter", "nofilter")],
    ids=["braces", "syntax", "unknown-filter"],
)
def test_check_expression_rejects(expression: str, message: str) -> None:
    with pytest.raises(errors.TemplateError, match=message):
        templating.check_expression(expression)


def test_check_expression_accepts_undefined_names() -> None:
    templating.check_expression("steps.later.output.ready > 0")


@pytest.mark.parametrize(
    "source",
    [
        "store-{{ alert.labels.store_id }}",
        "{{ alert.labels['values'] }}",
        "{{alert.status}}/{{ alert.fingerprint }}\n",
        "{{ target }}",
    ],
    ids=["label", "item-named-like-a-method", "two-fields", "top-level-name"],
)
def test_field_paths_take_the_fast_path(source: str) -> None:
    context = make_context(values="v")
    fast = templating._fast_renderer(source)
    assert fast is not None
    expected = templating._ENV.from_string(source).render(context)
    assert fast(context) == expected
    assert templating.render(source, context) == expected


@pytest.mark.parametrize(
    "source",
    [
        "{{ alert.labels.store_id | upper }}",
        "{{ alert.labels.items }}",
        "{{ alert.labels.store_id ~ 'x' }}",
        "{{ alert.labels[0] }}",
        "{{ _private }}",
        "{{ alert._private }}",
        "{{ self.x }}",
        "{% if run.dry_run %}x{% endif %}",
        "{# c #}{{ target }}",
        "{% raw %}{{ x }}{% endraw %}{{ target }}",
        "a {{- target }}",
        "{{ target -}} b",
        "{{ none }}",
    ],
    ids=[
        "filter",
        "dict-method",
        "concat",
        "int-key",
        "underscore-name",
        "underscore-attribute",
        "self",
        "block",
        "comment",
        "raw",
        "strip-before",
        "strip-after",
        "constant",
    ],
)
def test_other_templates_render_through_jinja(source: str) -> None:
    assert templating._fast_renderer(source) is None


def test_fast_path_leaves_a_missing_label_to_jinja() -> None:
    source = "store-{{ alert.labels.nope }}"
    fast = templating._fast_renderer(source)
    assert fast is not None
    assert fast(CONTEXT) is None
    with pytest.raises(errors.TemplateError) as info:
        templating.render(source, CONTEXT)
    assert str(info.value) == "undefined: 'dict object' has no attribute 'nope'"
    assert isinstance(info.value.__cause__, jinja2.UndefinedError)


def test_labels_named_like_dict_methods_render_as_jinja_does() -> None:
    context = make_context(items="x")
    expected = templating._ENV.from_string("{{ alert.labels.items }}").render(context)
    assert expected.startswith("<built-in method items of dict object")
    assert templating.render("{{ alert.labels.items }}", context) == expected
    assert templating.render("{{ alert.labels['items'] }}", context) == "x"


def test_fast_path_keeps_alert_data_as_data() -> None:
    fast = templating._fast_renderer("store {{ alert.labels.store_id }}")
    assert fast is not None
    assert fast(make_context(store_id="{{ 7*7 }}")) == "store {{ 7*7 }}"


@pytest.mark.parametrize(
    "value",
    [True, False, None, 0, -3, 10**30, 1.5, -0.0, 1e100, float("inf"), float("nan"), "", "é"],
    ids=repr,
)
def test_fast_path_renders_scalars_as_jinja_does(value: Any) -> None:
    fast = templating._fast_renderer("v={{ x.y }}")
    assert fast is not None
    context = {"x": {"y": value}}
    assert fast(context) == templating._ENV.from_string("v={{ x.y }}").render(context)


def test_fast_path_reports_an_unprintable_int_as_jinja_does() -> None:
    context = {"x": {"y": 10**5000}}
    with pytest.raises(ValueError, match="integer string conversion") as jinja_info:
        templating._ENV.from_string("{{ x.y }}").render(context)
    with pytest.raises(errors.TemplateError) as info:
        templating.render("{{ x.y }}", context)
    assert str(info.value) == redaction.truncate(
        f"ValueError: {jinja_info.value}", templating.MAX_MESSAGE
    )


# Keys named like dict methods, private names and jinja's `self` are where the sandbox's
# lookups differ from a plain dict's, so the generated contexts and paths use them often.
_NAMES = ["alert", "labels", "a", "store_id", "items", "get", "values", "keys", "_x", "self"]
_KEYS = [*_NAMES, "__class__", "0", "a-b", "none"]
_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**64), max_value=2**64)
    | st.floats()
    | st.text(max_size=6)
    | st.just("{{ 7*7 }}")
)
_VALUES = st.recursive(
    _SCALARS,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.sampled_from(_KEYS), inner),
    max_leaves=12,
)
_DICTS = st.dictionaries(st.sampled_from(_KEYS), _VALUES, min_size=1)
# No "{" in literal text, so every generated template is valid and only rendering can fail.
_TEXT = st.text(alphabet="ab -_}%#\n\r\té", max_size=4)
# Shapes the fast path leaves to jinja, though some render the same.
_OTHER_WRAPPERS = ["{{- %s }}", "{{ %s -}}", "{{ %s }}{# c #}", "{{ %s | string }}"]


def _pick(draw: st.DrawFn, present: list[str], pool: list[str]) -> str:
    """Mostly a key present in the data, so paths reach values; sometimes any key at all."""
    if present and draw(st.integers(min_value=0, max_value=4)) < 4:
        return draw(st.sampled_from(present))
    return draw(st.sampled_from(pool))


def _goes_deeper(draw: st.DrawFn, value: Any) -> bool:
    """Mostly down to a scalar; sometimes stops at a dict or goes on past a scalar."""
    roll = draw(st.integers(min_value=0, max_value=9))
    return roll < 8 if isinstance(value, dict) else roll == 9


@st.composite
def _field_templates(draw: st.DrawFn) -> tuple[str, dict[str, Any]]:
    """A context, and a template of field paths that mostly follow keys present in it."""
    context = draw(
        st.dictionaries(st.sampled_from(_NAMES), _DICTS | _VALUES, min_size=1, max_size=4)
    )
    source = ""
    for _ in range(draw(st.integers(min_value=1, max_value=3))):
        name = _pick(draw, sorted(context), _NAMES)
        path, value = name, context.get(name)
        while _goes_deeper(draw, value):
            key = _pick(draw, sorted(value) if isinstance(value, dict) else [], _KEYS)
            as_attribute = key.isidentifier() and draw(st.booleans())
            path += f".{key}" if as_attribute else f"[{key!r}]"
            value = value.get(key) if isinstance(value, dict) else None
        wrapper = "{{%s}}" if draw(st.booleans()) else "{{ %s }}"
        if draw(st.integers(min_value=0, max_value=5)) == 5:
            wrapper = draw(st.sampled_from(_OTHER_WRAPPERS))
        source += draw(_TEXT) + wrapper % path
    return source + draw(_TEXT), context


@settings(max_examples=300, deadline=None)
@given(_field_templates())
def test_fast_path_renders_exactly_as_jinja(case: tuple[str, dict[str, Any]]) -> None:
    """Whatever the data, the fast path gives jinja's result or steps aside for jinja: it never
    changes a result, and never turns an error into a result."""
    source, context = case
    fast = templating._fast_renderer(source)
    try:
        expected = templating._ENV.from_string(source).render(context)
    except Exception as e:
        assert fast is None or fast(context) is None
        with pytest.raises(errors.TemplateError) as info:
            templating.render(source, context)
        assert type(info.value.__cause__) is type(e)
        assert str(info.value.__cause__) == str(e)
    else:
        assert fast is None or fast(context) in (None, expected)
        assert templating.render(source, context) == expected
