"""Log output that costs one write per event-loop iteration, not one per line.

structlog's ``PrintLogger`` writes and flushes every line: under load that is several write
system calls per alert (the webhook, each audit record, each step), and each one gives up the
GIL, which on a busy core the state store's worker thread takes. Here the lines logged while
the loop runs one iteration of callbacks are joined and written once, by a callback the loop
runs right after them; so a line reaches the stream at most one iteration late. Outside a
running loop (start-up, the CLI, other threads) a line is written at once, and whatever is
still pending is written at interpreter exit.
"""

from __future__ import annotations

import asyncio
import atexit
import json
import threading
import time
from collections.abc import Callable
from typing import Any, TextIO

from structlog.typing import EventDict


class BatchingWriter:
    """Buffers lines from the event loop's thread and writes them once per loop iteration."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self._pending: list[str] = []
        self._lock = threading.Lock()
        self._scheduled = False
        atexit.register(self.flush)

    @property
    def stream(self) -> TextIO:
        return self._stream

    def write_line(self, line: str) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        with self._lock:
            self._pending.append(line)
            if loop is not None and self._scheduled:
                return
            if loop is not None and not loop.is_closed():
                self._scheduled = True
                loop.call_soon(self.flush)
                return
        self.flush()

    def flush(self) -> None:
        with self._lock:
            self._scheduled = False
            if not self._pending:
                return
            text = "\n".join(self._pending) + "\n"
            self._pending.clear()
            # Written under the lock, so lines from two threads never interleave mid-line.
            self._stream.write(text)
            self._stream.flush()


class BatchingLogger:
    """A structlog logger (like ``PrintLogger``) that writes through a :class:`BatchingWriter`."""

    def __init__(self, writer: BatchingWriter) -> None:
        self._writer = writer

    def msg(self, message: str) -> None:
        self._writer.write_line(message)

    log = debug = info = warn = warning = error = critical = exception = fatal = failure = msg


class BatchingLoggerFactory:
    """``logger_factory`` for :func:`structlog.configure`: every logger shares one writer."""

    def __init__(self, stream: TextIO) -> None:
        self.writer = BatchingWriter(stream)

    def __call__(self, *args: Any) -> BatchingLogger:
        return BatchingLogger(self.writer)


class IsoTimeStamper:
    """structlog processor: ``timestamp`` as ISO 8601 UTC with microseconds and a ``Z``, the
    format of ``TimeStamper(fmt="iso", utc=True)`` at half its cost (and with the microseconds
    even when they are zero, so every line's timestamp has one length).

    The date and time down to the second are formatted once per second; each line formats only
    its microseconds. structlog's stamper builds a timezone-aware datetime per line, which was
    a third of what a log line cost under load.
    """

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._second = -1
        self._prefix = ""

    def __call__(self, logger: Any, method: str, event_dict: EventDict) -> EventDict:
        # Rounded to the microsecond as datetime rounds; exact for any epoch before 2255.
        second, micros = divmod(round(self._clock() * 1_000_000), 1_000_000)
        if second != self._second:
            self._second = second
            self._prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        event_dict["timestamp"] = f"{self._prefix}.{micros:06d}Z"
        return event_dict


class JsonLineRenderer:
    """structlog processor: the event as one line of JSON, like ``JSONRenderer()``, with one
    encoder built once. ``json.dumps`` with any keyword builds a new encoder per call, which
    was half of what rendering a line cost. A value JSON cannot encode is written as its
    ``repr``, as structlog's renderer does."""

    def __init__(self) -> None:
        self._encode = json.JSONEncoder(default=repr).encode

    def __call__(self, logger: Any, method: str, event_dict: EventDict) -> str:
        return self._encode(event_dict)
