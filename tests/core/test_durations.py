from __future__ import annotations

import pytest

from remediator.core import durations


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        (0, 0.0),
        (30, 30.0),
        (1.5, 1.5),
        ("0", 0.0),
        ("500ms", 0.5),
        ("30s", 30.0),
        ("5m", 300.0),
        ("1h", 3600.0),
        ("1h30m", 5400.0),
        ("2d", 172800.0),
        ("1w", 604800.0),
        ("1d2h3m4s5ms", 93784.005),
        ("1.5h", 5400.0),
        ("0s", 0.0),
        (" 10s ", 10.0),
        ("1m500ms", 60.5),
    ],
    ids=[
        "zero-int",
        "int",
        "float",
        "zero-text",
        "milliseconds",
        "seconds",
        "minutes",
        "hours",
        "hours-minutes",
        "days",
        "weeks",
        "every-unit",
        "fraction",
        "zero-seconds",
        "surrounding-spaces",
        "minutes-milliseconds",
    ],
)
def test_parse_duration(value: str | int | float, seconds: float) -> None:
    assert durations.parse_duration(value) == pytest.approx(seconds)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("", "expected a number of seconds or a duration like"),
        ("30", "missing unit, e.g. '30s'"),
        ("1.5", "missing unit, e.g. '1.5s'"),
        ("5 m", "at column 2: expected a unit (w, d, h, m, s, ms)"),
        (" 1h 5m", "at column 4: expected a number of seconds"),
        ("5min", "at column 3"),
        ("1y", "at column 2: expected a unit"),
        ("30s5m", "units must go from largest to smallest"),
        ("1h1h", "units must go from largest to smallest"),
        ("-5s", "must not be negative"),
        (-1, "must not be negative"),
        (-0.5, "must not be negative"),
        (float("inf"), "must be finite"),
        (float("nan"), "must be finite"),
        (True, "expected a number of seconds"),
        ("h", "at column 1"),
        (".5s", "at column 1"),
    ],
    ids=[
        "empty",
        "bare-number-text",
        "bare-fraction-text",
        "space-inside",
        "space-between-components",
        "unknown-unit",
        "years-unsupported",
        "wrong-order",
        "repeated-unit",
        "negative-text",
        "negative-int",
        "negative-float",
        "infinite",
        "nan",
        "bool",
        "unit-only",
        "leading-dot",
    ],
)
def test_parse_duration_rejects(value: object, message: str) -> None:
    with pytest.raises(ValueError, match=r"^invalid duration ") as info:
        durations.parse_duration(value)  # type: ignore[arg-type]
    assert message in str(info.value)


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "0s"),
        (0.0004, "0s"),
        (0.5, "500ms"),
        (1, "1s"),
        (1.25, "1s250ms"),
        (90, "1m30s"),
        (5400, "1h30m"),
        (86400, "1d"),
        (172800 + 3661, "2d1h1m1s"),
        (14 * 86400, "14d"),
        (0.1 + 0.2, "300ms"),
    ],
    ids=[
        "zero",
        "below-a-millisecond",
        "milliseconds",
        "second",
        "seconds-milliseconds",
        "minutes",
        "hours",
        "day",
        "mixed",
        "weeks-as-days",
        "float-noise",
    ],
)
def test_format_duration(seconds: float, text: str) -> None:
    assert durations.format_duration(seconds) == text


@pytest.mark.parametrize(
    "seconds", [0.001, 0.5, 59.999, 61, 3600.5, 93784.005, 10 * 86400], ids=str
)
def test_format_then_parse_round_trips(seconds: float) -> None:
    assert durations.parse_duration(durations.format_duration(seconds)) == pytest.approx(seconds)


@pytest.mark.parametrize(
    "seconds", [-1, float("inf"), float("nan")], ids=["negative", "inf", "nan"]
)
def test_format_duration_rejects(seconds: float) -> None:
    with pytest.raises(ValueError, match="cannot format"):
        durations.format_duration(seconds)
