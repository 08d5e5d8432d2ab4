"""The gateway's log output: one line per record on stderr, written in batches, and the access log.

A busy gateway writes an access line per request, and in worker mode writing each
line with a system call of its own, through a full logging record, costs more than
the rest of the request. So lines are gathered and written together a moment
later (at most `FLUSH_INTERVAL` seconds; at once for warnings and errors; at
exit), and an access line is held as its fields until then.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import logging
import time
from typing import Any, TextIO

TEXT_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"
ACCESS_FORMAT = "%s %s %s %d command=%s error=%s %.1fms"
FLUSH_INTERVAL = 0.1
# Lines held past this many are written at once, whatever the interval.
MAX_HELD_LINES = 1000


def configure_logging(level: str, log_format: str = "text", stream: TextIO | None = None) -> None:
    """Send the gateway's and uvicorn's records to stderr (or `stream`) at `level`, as text or JSON lines.

    A process that configured logging already keeps its handlers; only the levels are set.
    """
    root = logging.getLogger()
    if not root.handlers:
        handler = BatchingHandler(stream)
        handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
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
        # Lines, or access lines still as (time, fields) to be spelled out when written.
        self.held: list[str | tuple[float, tuple[Any, ...]]] = []
        self._flush_scheduled_on: asyncio.AbstractEventLoop | None = None

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.held.append(self.format(record))
        except Exception:
            self.handleError(record)
            return
        self._schedule_flush(urgent=record.levelno >= logging.WARNING)

    def hold_access(self, fields: tuple[Any, ...]) -> None:
        """An access line, as `AccessLog.write`'s fields: formatted when it is written."""
        with self.lock:  # type: ignore[union-attr]
            self.held.append((time.time(), fields))
            self._schedule_flush(urgent=False)

    def _schedule_flush(self, urgent: bool) -> None:
        if urgent or len(self.held) >= MAX_HELD_LINES:
            self.flush()
            return
        scheduled = self._flush_scheduled_on
        if scheduled is not None and not scheduled.is_closed():
            return  # a flush is due within FLUSH_INTERVAL
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self.flush()
            return
        self._flush_scheduled_on = loop
        loop.call_later(FLUSH_INTERVAL, self.flush)

    def flush(self) -> None:
        with self.lock:  # type: ignore[union-attr]
            self._flush_scheduled_on = None
            if not self.held:
                return
            text = "\n".join(map(self._spelled, self.held)) + "\n"
            self.held.clear()
            try:
                self.stream.write(text)
                self.stream.flush()
            except Exception:
                self.handleError(logging.makeLogRecord({"msg": text}))

    def _spelled(self, line: str | tuple[float, tuple[Any, ...]]) -> str:
        if isinstance(line, str):
            return line
        created, fields = line
        if isinstance(self.formatter, TextFormatter | JsonFormatter):
            return self.formatter.access_line(created, fields)
        record = logging.makeLogRecord({"name": ACCESS_LOGGER, "levelno": logging.INFO, "levelname": "INFO"})
        record.msg, record.args = ACCESS_FORMAT, fields
        record.created, record.msecs = created, int((created - int(created)) * 1000) + 0.0
        return self.format(record)


class TextFormatter(logging.Formatter):
    """`TEXT_FORMAT`, with the date and time spelled out once per second rather than per line."""

    _second = -1
    _spelled = ""

    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        if datefmt is not None:
            return super().formatTime(record, datefmt)
        return self._time(record.created, int(record.msecs))

    def access_line(self, created: float, fields: tuple[Any, ...]) -> str:
        """What `format` makes of the access log's record with these fields."""
        milliseconds = int((created - int(created)) * 1000)
        return f"{self._time(created, milliseconds)} INFO    {ACCESS_LOGGER}: {ACCESS_FORMAT % fields}"

    def _time(self, created: float, milliseconds: int) -> str:
        second = int(created)
        if second != self._second:
            self._second = second
            self._spelled = time.strftime("%Y-%m-%d %H:%M:%S", self.converter(created))
        return f"{self._spelled},{milliseconds:03d}"


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time (UTC, RFC 3339), level, logger, message, and the exception if any.

    Access lines carry their fields as keys too: request_id, method, path, status, command,
    error_code and duration_ms.
    """

    def format(self, record: logging.LogRecord) -> str:
        if record.name == ACCESS_LOGGER and isinstance(record.args, tuple) and len(record.args) == len(ACCESS_FIELDS):
            return self.access_line(record.created, record.args)
        entry: dict[str, Any] = {
            "time": _utc(record.created),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False, default=str)

    def access_line(self, created: float, fields: tuple[Any, ...]) -> str:
        entry: dict[str, Any] = {
            "time": _utc(created),
            "level": "INFO",
            "logger": ACCESS_LOGGER,
            "message": ACCESS_FORMAT % fields,
            **dict(zip(ACCESS_FIELDS, fields, strict=True)),
        }
        entry["duration_ms"] = round(entry["duration_ms"], 3)
        return json.dumps(entry, ensure_ascii=False)


def _utc(created: float) -> str:
    moment = datetime.datetime.fromtimestamp(created, datetime.UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


ACCESS_LOGGER = "gateway.access"
ACCESS_FIELDS = ("request_id", "method", "path", "status", "command", "error_code", "duration_ms")


class AccessLog:
    """The access log: one line per request on the `gateway.access` logger, at INFO.

    Under the handler `configure_logging` installs, a line skips the logging record and is
    held as its fields until written; under any other handlers (an embedding application's,
    a test's capture) it is an ordinary record.
    """

    def __init__(self) -> None:
        self.logger = logging.getLogger(ACCESS_LOGGER)

    def enabled(self) -> bool:
        return self.logger.isEnabledFor(logging.INFO)

    def write(self, request_id: str, method: str, path: str, status: int, command: str, error: str, ms: float) -> None:
        handlers = logging.root.handlers
        if len(handlers) == 1 and isinstance(handlers[0], BatchingHandler) and self._plain():
            handlers[0].hold_access((request_id, method, path, status, command, error, ms))
        else:
            self.logger.info(ACCESS_FORMAT, request_id, method, path, status, command, error, ms)

    def _plain(self) -> bool:
        """Nothing between this logger and the root: no handler, no filter, on either."""
        logger: logging.Logger | None = self.logger
        while logger is not None and logger is not logging.root:
            if logger.handlers or logger.filters or not logger.propagate:
                return False
            logger = logger.parent
        handler = logging.root.handlers[0]
        return not logging.root.filters and not handler.filters and handler.level <= logging.INFO
