"""The gateway's log output: one line per record on stderr, written in batches.

A busy gateway writes an access line per request, and writing each line with a
system call of its own costs more than the rest of a request in worker mode. So
lines are gathered and written together a moment later: at most `FLUSH_INTERVAL`
seconds, at once for warnings and errors, and at exit.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TextIO

TEXT_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"
FLUSH_INTERVAL = 0.1
# Lines held past this many are written at once, whatever the interval.
MAX_HELD_LINES = 1000


def configure_logging(level: str, stream: TextIO | None = None) -> None:
    """Send the gateway's and uvicorn's records to stderr (or `stream`) at `level`.

    A process that configured logging already keeps its handlers; only the levels are set.
    """
    root = logging.getLogger()
    if not root.handlers:
        handler = BatchingHandler(stream)
        handler.setFormatter(TimeCachingFormatter(TEXT_FORMAT))
        root.addHandler(handler)
    for name in ("gateway", "uvicorn"):
        logging.getLogger(name).setLevel(level.upper())
    # No format here shows where a call was made from, or in which thread or process: the logging
    # HOWTO's optimisations, which spare every record a walk up the stack.
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False


class BatchingHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """A stream handler that writes lines in batches, from the event loop when one runs.

    Without a running loop (start-up, a thread, a tool), each line is written at once.
    """

    def __init__(self, stream: TextIO | None = None) -> None:
        super().__init__(stream)
        self.held: list[str] = []
        self._flush_scheduled_on: asyncio.AbstractEventLoop | None = None

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.held.append(self.format(record))
        except Exception:
            self.handleError(record)
            return
        if record.levelno >= logging.WARNING or len(self.held) >= MAX_HELD_LINES:
            self.flush()
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self.flush()
            return
        if self._flush_scheduled_on is not loop:
            self._flush_scheduled_on = loop
            loop.call_later(FLUSH_INTERVAL, self.flush)

    def flush(self) -> None:
        with self.lock:  # type: ignore[union-attr]
            self._flush_scheduled_on = None
            if not self.held:
                return
            text = "\n".join(self.held) + "\n"
            self.held.clear()
            try:
                self.stream.write(text)
                self.stream.flush()
            except Exception:
                logging.Handler.handleError(self, logging.makeLogRecord({"msg": text}))


class TimeCachingFormatter(logging.Formatter):
    """The standard text format, with the date and time spelled out once per second, not per line."""

    _second = -1
    _spelled = ""

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        if datefmt is not None:
            return super().formatTime(record, datefmt)
        second = int(record.created)
        if second != self._second:
            self._second = second
            self._spelled = time.strftime("%Y-%m-%d %H:%M:%S", self.converter(record.created))
        return f"{self._spelled},{int(record.msecs):03d}"
