"""Log lines logged in one event-loop iteration reach the stream in one write, in order."""

from __future__ import annotations

import asyncio
import io
import json
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
