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
    try:
        return template.render(context)
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
