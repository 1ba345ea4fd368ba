"""Log lines logged in one event-loop iteration reach the stream in one write, in order."""

from __future__ import annotations

import asyncio
import datetime
import io
import json
import re
from typing import cast

import structlog

from remediator.adapters import logsink


class CountingStream(io.StringIO):
    """A real text stream that also counts the writes it receives."""

    def __init__(self) -> None:
        super().__init__()
        self.writes = 0

    def write(self, text: str) -> int:
        self.writes += 1
        return super().write(text)


def logger(stream: CountingStream) -> structlog.typing.FilteringBoundLogger:
    return cast(
        structlog.typing.FilteringBoundLogger,
        structlog.wrap_logger(
            logsink.BatchingLoggerFactory(stream)(),
            processors=[structlog.processors.JSONRenderer()],
            wrapper_class=structlog.make_filtering_bound_logger(0),
        ),
    )


async def test_lines_of_one_iteration_are_written_once_in_order() -> None:
    stream = CountingStream()
    log = logger(stream)

    for i in range(5):
        log.info("step_finished", n=i)
    assert stream.writes == 0  # not yet: the flush runs after this callback
    await asyncio.sleep(0)

    assert stream.writes == 1
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [line["n"] for line in lines] == [0, 1, 2, 3, 4]


async def test_each_iteration_flushes_its_own_lines() -> None:
    stream = CountingStream()
    log = logger(stream)

    log.info("first")
    await asyncio.sleep(0)
    log.info("second")
    await asyncio.sleep(0)

    assert stream.writes == 2
    assert [json.loads(line)["event"] for line in stream.getvalue().splitlines()] == [
        "first",
        "second",
    ]


def test_outside_a_loop_a_line_is_written_at_once() -> None:
    stream = CountingStream()

    logger(stream).warning("config_invalid")

    assert stream.writes == 1
    assert json.loads(stream.getvalue())["event"] == "config_invalid"


async def test_a_line_from_another_thread_is_written_at_once_after_pending_ones() -> None:
    stream = CountingStream()
    log = logger(stream)

    log.info("on_the_loop")
    await asyncio.to_thread(log.info, "from_a_thread")

    assert [json.loads(line)["event"] for line in stream.getvalue().splitlines()] == [
        "on_the_loop",
        "from_a_thread",
    ]


def test_timestamps_match_structlogs_iso_utc_stamper_across_seconds() -> None:
    moments = [1_764_000_000.0, 1_764_000_000.999999, 1_764_000_000.9999996, 1_764_000_001.5]
    moments += [1_764_086_399.25, 1_764_086_400.000001]
    times = iter(moments)
    stamp = logsink.IsoTimeStamper(clock=lambda: next(times))

    for moment in moments:
        ours = stamp(None, "info", {})["timestamp"]
        reference = datetime.datetime.fromtimestamp(moment, tz=datetime.UTC)
        assert ours == reference.isoformat(timespec="microseconds").replace("+00:00", "Z")
    # structlog's own stamper writes the same shape (it drops zero microseconds, we never do)
    theirs = structlog.processors.TimeStamper(fmt="iso", utc=True)(None, "info", {})
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{6})?Z", theirs["timestamp"])


def test_rendered_lines_are_what_structlogs_json_renderer_writes() -> None:
    class Opaque:
        def __repr__(self) -> str:
            return "<opaque>"

    event = {"event": "run_finished", "n": 1, "ok": True, "none": None, "text": "é\n"}
    event["o"] = Opaque()
    ours = logsink.JsonLineRenderer()(None, "info", dict(event))

    assert ours == structlog.processors.JSONRenderer()(None, "info", dict(event))
    assert json.loads(ours)["o"] == "<opaque>"
