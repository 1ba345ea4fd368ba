"""Durations as playbooks and settings write them: seconds, or Prometheus-style ``1h30m``.

Playbook authors already write ``for: 5m`` in alerting rules, so timeouts and intervals read the
same way here. Units go from largest to smallest, each at most once (as Prometheus requires),
which keeps ``5m30s`` unambiguous and rejects typos like ``30s5m``.
"""

from __future__ import annotations

import math
import re

# Largest first: format_duration walks this order, parse_duration enforces it.
UNITS: tuple[tuple[str, float], ...] = (
    ("w", 7 * 86400.0),
    ("d", 86400.0),
    ("h", 3600.0),
    ("m", 60.0),
    ("s", 1.0),
    ("ms", 0.001),
)
_UNIT_SECONDS = dict(UNITS)
_UNIT_RANK = {unit: rank for rank, (unit, _) in enumerate(UNITS)}
# "ms" must be tried before "m", or "500ms" would read as 500 minutes and a stray "s".
_COMPONENT = re.compile(r"(\d+(?:\.\d+)?)(ms|w|d|h|m|s)")
_NUMBER = re.compile(r"\d+(?:\.\d+)?")
_EXAMPLES = "a number of seconds or a duration like '500ms', '30s', '5m', '1h30m', '2d'"


def parse_duration(value: str | int | float) -> float:
    """Seconds in ``value``; raise :class:`ValueError` for anything else or a negative one."""
    # bool is an int subclass; `timeout: true` is a mistake, not one second.
    if isinstance(value, bool):
        raise ValueError(f"invalid duration {value!r}: expected {_EXAMPLES}")
    if isinstance(value, int | float):
        return _non_negative(float(value), value)
    if not isinstance(value, str):
        raise ValueError(f"invalid duration {value!r}: expected {_EXAMPLES}")
    text = value.strip()
    indent = len(value) - len(value.lstrip())  # columns count in what the author wrote
    if text == "0":
        return 0.0
    if not text:
        raise ValueError(f"invalid duration {value!r}: expected {_EXAMPLES}")
    if text.startswith("-"):
        raise ValueError(f"invalid duration {value!r}: must not be negative")
    total = 0.0
    position = 0
    last_rank = -1
    while position < len(text):
        found = _COMPONENT.match(text, position)
        if found is None:
            if _is_number(text):
                raise ValueError(f"invalid duration {value!r}: missing unit, e.g. '{text}s'")
            leading = _NUMBER.match(text, position)
            if leading is not None:
                column = indent + leading.end() + 1
                raise ValueError(
                    f"invalid duration {value!r} at column {column}: expected a unit "
                    f"({', '.join(unit for unit, _ in UNITS)})"
                )
            column = indent + position + 1
            raise ValueError(f"invalid duration {value!r} at column {column}: expected {_EXAMPLES}")
        number, unit = found.groups()
        rank = _UNIT_RANK[unit]
        if rank <= last_rank:
            raise ValueError(
                f"invalid duration {value!r}: units must go from largest to smallest, "
                f"each at most once"
            )
        last_rank = rank
        total += float(number) * _UNIT_SECONDS[unit]
        position = found.end()
    return _non_negative(total, value)


def format_duration(seconds: float) -> str:
    """The shortest unit string for ``seconds``, to the millisecond: ``90`` → ``1m30s``."""
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"cannot format {seconds!r} as a duration")
    # Integer milliseconds so that 0.1 + 0.2 style float noise cannot leak into the text.
    remaining = round(seconds * 1000)
    if remaining == 0:
        return "0s"
    parts: list[str] = []
    for unit, unit_seconds in UNITS:
        if unit == "w":
            continue  # "14d" reads better than "2w" in logs and is what people type.
        unit_ms = round(unit_seconds * 1000)
        count, remaining = divmod(remaining, unit_ms)
        if count:
            parts.append(f"{count}{unit}")
    return "".join(parts)


def _non_negative(seconds: float, original: object) -> float:
    if not math.isfinite(seconds):
        raise ValueError(f"invalid duration {original!r}: must be finite")
    if seconds < 0:
        raise ValueError(f"invalid duration {original!r}: must not be negative")
    return seconds


def _is_number(text: str) -> bool:
    return _NUMBER.fullmatch(text) is not None
