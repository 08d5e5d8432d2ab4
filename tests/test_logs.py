"""The log handler: lines are batched while the event loop runs, never lost or reordered."""

from __future__ import annotations

import asyncio
import io
import logging
import re
from collections.abc import Iterator

import pytest

from gateway.logs import FLUSH_INTERVAL, TEXT_FORMAT, AccessLog, BatchingHandler, TextFormatter, configure_logging


@pytest.fixture
def logged() -> tuple[logging.Logger, io.StringIO]:
    stream = io.StringIO()
    handler = BatchingHandler(stream)
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    logger = logging.getLogger("test.logs.batching")
    logger.handlers = [handler]
    logger.propagate = False
    logger.setLevel(logging.INFO)
    return logger, stream


def test_a_line_logged_outside_the_event_loop_is_written_at_once(logged: tuple[logging.Logger, io.StringIO]) -> None:
    logger, stream = logged

    logger.info("starting")

    assert stream.getvalue() == "INFO starting\n"


def test_lines_logged_in_the_event_loop_are_written_together_shortly_after(
    logged: tuple[logging.Logger, io.StringIO],
) -> None:
    logger, stream = logged

    async def serve() -> tuple[str, str]:
        logger.info("one")
        logger.info("two")
        held = stream.getvalue()
        await asyncio.sleep(FLUSH_INTERVAL * 3)
        return held, stream.getvalue()

    held, written = asyncio.run(serve())

    assert held == ""
    assert written == "INFO one\nINFO two\n"


def test_a_warning_writes_itself_and_every_line_held_before_it_in_order(
    logged: tuple[logging.Logger, io.StringIO],
) -> None:
    logger, stream = logged

    async def serve() -> str:
        logger.info("request")
        logger.warning("trouble")
        return stream.getvalue()

    assert asyncio.run(serve()) == "INFO request\nWARNING trouble\n"


def test_lines_held_when_the_loop_ends_are_written_by_the_next_flush(
    logged: tuple[logging.Logger, io.StringIO],
) -> None:
    logger, stream = logged

    async def serve() -> None:
        logger.info("last words")

    asyncio.run(serve())
    logger.info("after the loop")  # a new line outside any loop writes what was held too

    assert stream.getvalue() == "INFO last words\nINFO after the loop\n"


def test_the_time_is_spelled_as_the_standard_formatter_spells_it() -> None:
    record = logging.makeLogRecord({"name": "gateway", "levelname": "INFO", "levelno": 20, "msg": "hello"})
    caching = TextFormatter()
    for created in (1_800_000_000.0, 1_800_000_000.5, 1_800_000_001.25):
        record.created, record.msecs = created, (created % 1) * 1000

        assert caching.format(record) == logging.Formatter(TEXT_FORMAT).format(record)


@pytest.fixture
def gateway_logging() -> Iterator[io.StringIO]:
    """The root logger as `connector-gateway serve` sets it up, writing to a string."""
    root = logging.getLogger()
    saved = root.handlers, root.level
    stream = io.StringIO()
    root.handlers = []
    configure_logging("info", "text", stream)
    yield stream
    root.handlers, root.level = saved


def test_an_access_line_reads_like_any_other_record(gateway_logging: io.StringIO) -> None:
    async def serve() -> None:
        logging.getLogger("gateway").info("started")
        AccessLog().write("a1b2", "POST", "/v1/do/x/Y", 200, "x/Y", "-", 1.25)
        logging.getLogger("gateway").warning("then this")

    asyncio.run(serve())

    lines = gateway_logging.getvalue().splitlines()
    stamp = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}"
    assert [re.sub(stamp, "<time>", line) for line in lines] == [
        "<time> INFO    gateway: started",
        "<time> INFO    gateway.access: a1b2 POST /v1/do/x/Y 200 command=x/Y error=- 1.2ms",
        "<time> WARNING gateway: then this",
    ]


def test_under_other_handlers_an_access_line_is_an_ordinary_record(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="gateway.access")

    AccessLog().write("a1b2", "POST", "/v1/do/x/Y", 429, "x/Y", "busy", 0.5)

    (record,) = caplog.records
    assert (record.name, record.levelname) == ("gateway.access", "INFO")
    assert record.getMessage() == "a1b2 POST /v1/do/x/Y 429 command=x/Y error=busy 0.5ms"
