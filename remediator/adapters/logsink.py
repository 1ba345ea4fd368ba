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
import threading
from typing import Any, TextIO


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
