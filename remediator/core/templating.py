"""Jinja templates in playbooks: params, targets and ``when:``/``expect:`` expressions.

Everything renders in one immutable sandbox with strict undefined names, so a typo fails the
step instead of acting on an empty string, and templates cannot reach Python internals or
mutate the context. Alert data is data: a label whose value is ``{{ 7*7 }}`` renders as that
literal text, because a template's output is never rendered again.

The context the engine passes (dict keys also read as attributes, ``alert.labels.store_id``):

``alert``
    The alert in Alertmanager's JSON shape: ``status``, ``labels``, ``annotations``,
    ``startsAt``, ``endsAt``, ``generatorURL``, ``fingerprint``. Labels named like dict methods
    (``items``, ``values``, ``get``…) must be read as ``alert.labels['values']``.
``target``
    The playbook's rendered target string.
``playbook``
    The playbook's name.
``run``
    ``{"id": str, "dry_run": bool}``.
``steps``
    Earlier steps by name: ``{"outcome": str, "output": {...}}``.
``output``
    In verify checks' ``expect:`` only: that check's own output.

Every failure, at compile or render time, is raised as :class:`errors.TemplateError` with the
original as its cause and a message of at most :data:`MAX_MESSAGE` characters.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Mapping
from typing import Any

import jinja2
import jinja2.exceptions
import jinja2.nodes as nodes
import jinja2.runtime
import jinja2.sandbox

from remediator.core import errors, redaction

MAX_MESSAGE = 300
MAX_SEQUENCE = 100_000
"""Longest string or list that ``*`` may build, like the sandbox's own ``range()`` limit."""
MAX_EXPONENT = 1_000
CACHE_SIZE = 1024
_MARKERS = ("{{", "{%", "{#")
# Errors Python itself raises while evaluating author-written expressions ("a" + 1, 1/0, ...).
# They are the template's fault, like jinja's own errors, so they are wrapped the same way.
_EVALUATION_ERRORS = (ArithmeticError, LookupError, TypeError, ValueError, AttributeError)
# Comments, raw blocks and whitespace control are applied by the lexer and leave no trace in the
# parse tree, so the fast path recognises them in the source and leaves them to jinja.
_LEXER_ONLY = re.compile(r"\{[%#]|\{\{[-+]|[-+]\}\}")
# The scalars the fast path outputs itself, with str() as jinja's output does; containers,
# Undefined and other objects are left to jinja.
_PLAIN_TYPES = frozenset({str, int, float, bool, type(None)})
_MISSING = object()


class _Sandbox(jinja2.sandbox.ImmutableSandboxedEnvironment):
    """Also bounds ``*`` and ``**``, the cheap ways to exhaust memory or CPU from one line."""

    intercepted_binops = frozenset({"*", "**"})

    def call_binop(
        self, context: jinja2.runtime.Context, operator: str, left: Any, right: Any
    ) -> Any:
        if operator == "**" and isinstance(right, int) and abs(right) > MAX_EXPONENT:
            raise jinja2.exceptions.SecurityError(f"exponent larger than {MAX_EXPONENT}")
        if operator == "*":
            for sequence, count in ((left, right), (right, left)):
                if (
                    isinstance(sequence, str | list | tuple)
                    and isinstance(count, int)
                    and len(sequence) * count > MAX_SEQUENCE
                ):
                    raise jinja2.exceptions.SecurityError(
                        f"repetition longer than {MAX_SEQUENCE} items"
                    )
        return super().call_binop(context, operator, left, right)


# Immutable configuration, built once: jinja environments are safe to share and caching the
# compiled templates per environment is what makes rendering cheap.
_ENV = _Sandbox(
    undefined=jinja2.StrictUndefined,
    autoescape=False,
    # A YAML block scalar's trailing newline is content; jinja would drop it by default.
    keep_trailing_newline=True,
)


def is_templated(s: str) -> bool:
    return any(marker in s for marker in _MARKERS)


def check_template(source: str) -> None:
    """Compile ``source``; raise :class:`errors.TemplateError` if it is not a valid template."""
    if is_templated(source):
        _template(source)


def check_expression(source: str) -> None:
    """Compile a bare expression; raise :class:`errors.TemplateError` if it is not valid."""
    _expression(source)


def always_true(source: str) -> bool:
    """Whether a bare expression is true whatever the context (``true``, ``1 == 1``): a
    ``choose`` case with one makes every later case unreachable. Not an expression: False."""
    try:
        check_expression(source)
        parsed = _ENV.parse("{{ (" + source + ") }}")
    except (errors.TemplateError, jinja2.TemplateError):
        return False
    output = parsed.body[0]
    if not isinstance(output, nodes.Output) or len(output.nodes) != 1:
        return False
    try:
        return bool(output.nodes[0].as_const(nodes.EvalContext(_ENV)))
    except nodes.Impossible:
        return False
    except _EVALUATION_ERRORS:
        return False


def render(source: str, context: Mapping[str, Any]) -> str:
    if not is_templated(source):
        return source
    template = _template(source)
    fast = _fast_renderer(source)
    try:
        # Only str(int) can raise in the fast path (too many digits), the same error jinja's
        # own str() raises, so it is wrapped the same way.
        rendered = fast(context) if fast is not None else None
        return template.render(context) if rendered is None else rendered
    except (jinja2.TemplateError, *_EVALUATION_ERRORS) as e:
        raise _wrap(e) from e


def render_params(value: Any, context: Mapping[str, Any]) -> Any:
    """A copy of ``value`` with every string inside rendered; mapping keys are left as they are.

    Mappings come back as dicts, lists as lists, tuples as tuples, other values unchanged.
    """
    return _render_value(value, context, "")


def evaluate(expression: str, context: Mapping[str, Any]) -> Any:
    """The native value of a bare expression such as ``steps.check.output.ready > 0``."""
    compiled = _expression(expression)
    try:
        result = compiled(context)
        _reject_undefined(result)
    except (jinja2.TemplateError, *_EVALUATION_ERRORS) as e:
        raise _wrap(e) from e
    return result


@functools.lru_cache(maxsize=CACHE_SIZE)
def _template(source: str) -> jinja2.Template:
    try:
        return _ENV.from_string(source)
    except jinja2.TemplateError as e:
        raise _wrap(e) from e


_Part = str | tuple[str, tuple[str, ...]]
"""Literal text, or a field path: a context name and the dict keys read below it."""


@functools.lru_cache(maxsize=CACHE_SIZE)
def _fast_renderer(source: str) -> Callable[[Mapping[str, Any]], str | None] | None:
    """A renderer that skips jinja's per-render context set-up, for templates of only text and
    field paths (``store-{{ alert.labels.store_id }}``, the usual target); None for any other.

    The renderer returns None when it cannot be sure to give jinja's result (a key missing, a
    value not a plain dict or scalar), and the caller then renders through jinja, which gives
    the real result or the real error.
    """
    if _LEXER_ONLY.search(source):
        return None
    body = _ENV.parse(source).body
    if len(body) != 1 or not isinstance(body[0], nodes.Output):
        return None
    parts: list[_Part] = []
    for node in body[0].nodes:
        if isinstance(node, nodes.TemplateData):
            parts.append(node.data)
            continue
        path = _field_path(node)
        if path is None:
            return None
        parts.append(path)
    return functools.partial(_render_fields, tuple(parts))


def _field_path(node: nodes.Node) -> tuple[str, tuple[str, ...]] | None:
    keys: list[str] = []
    while not isinstance(node, nodes.Name):
        if isinstance(node, nodes.Getattr):
            # The sandbox's getattr prefers the attribute: `labels.items` is the dict method.
            if hasattr(dict, node.attr):
                return None
            keys.append(node.attr)
        elif (
            isinstance(node, nodes.Getitem)
            and isinstance(node.arg, nodes.Const)
            and type(node.arg.value) is str
        ):
            # The sandbox's getitem prefers the item: `labels['items']` is the label.
            keys.append(node.arg.value)
        else:
            return None
        node = node.node
    # `self` is jinja's reference to the template itself, never a context value; private names
    # are left to the sandbox's own rules.
    if node.name == "self" or any(name.startswith("_") for name in (node.name, *keys)):
        return None
    return node.name, tuple(reversed(keys))


def _render_fields(parts: tuple[_Part, ...], context: Mapping[str, Any]) -> str | None:
    out: list[str] = []
    for part in parts:
        if isinstance(part, str):
            out.append(part)
            continue
        name, keys = part
        value = context.get(name, _MISSING)
        for key in keys:
            # A plain dict has no attribute of that name (checked at compile time), so both
            # getattr and getitem in the sandbox return the item; anything else goes to jinja.
            if type(value) is not dict:
                return None
            value = value.get(key, _MISSING)
        if type(value) not in _PLAIN_TYPES:
            return None
        out.append(str(value))
    return "".join(out)


@functools.lru_cache(maxsize=CACHE_SIZE)
def _expression(source: str) -> Callable[..., Any]:
    stripped = source.strip()
    if stripped.startswith("{{") and stripped.endswith("}}"):
        inner = stripped[2:-2].strip()
        raise errors.TemplateError(
            redaction.truncate(
                f"expressions are written without braces: use {inner!r}, not {stripped!r}",
                MAX_MESSAGE,
            )
        )
    try:
        # undefined_to_none=False: a bare undefined name must fail like it does in templates.
        return _ENV.compile_expression(source, undefined_to_none=False)
    except jinja2.TemplateError as e:
        raise _wrap(e) from e


def _render_value(value: Any, context: Mapping[str, Any], path: str) -> Any:
    if isinstance(value, str):
        try:
            return render(value, context)
        except errors.TemplateError as e:
            if not path:
                raise
            raise errors.TemplateError(redaction.truncate(f"{path}: {e}", MAX_MESSAGE)) from e
    if isinstance(value, Mapping):
        return {k: _render_value(v, context, _join(path, str(k))) for k, v in value.items()}
    if isinstance(value, list):
        return [_render_value(v, context, f"{path}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, tuple):
        return tuple(_render_value(v, context, f"{path}[{i}]") for i, v in enumerate(value))
    return value


def _reject_undefined(value: Any) -> None:
    """Raise the undefined error hiding in an expression's result, even inside a list or dict."""
    if isinstance(value, jinja2.Undefined):
        # StrictUndefined raises its own error (UndefinedError or SecurityError) on str().
        str(value)
        raise jinja2.UndefinedError("expression result is undefined")
    if isinstance(value, list | tuple):
        for item in value:
            _reject_undefined(item)
    elif isinstance(value, dict):
        for item in value.values():
            _reject_undefined(item)


def _wrap(e: Exception) -> errors.TemplateError:
    if isinstance(e, jinja2.TemplateSyntaxError):
        message = f"syntax error: {e.message} (line {e.lineno})"
    elif isinstance(e, jinja2.exceptions.SecurityError):
        message = f"forbidden by the sandbox: {e}"
    elif isinstance(e, jinja2.UndefinedError):
        message = f"undefined: {e}"
    elif isinstance(e, jinja2.TemplateError):
        line = getattr(e, "lineno", None)
        message = f"{e}" + (f" (line {line})" if line else "")
    else:
        message = f"{type(e).__name__}: {e}"
    return errors.TemplateError(redaction.truncate(message, MAX_MESSAGE))


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key
