"""The log handler: lines are batched while the event loop runs, never lost or reordered."""

from __future__ import annotations

import asyncio
import io
import logging

import pytest

from gateway.logs import FLUSH_INTERVAL, TEXT_FORMAT, BatchingHandler, TimeCachingFormatter


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
    caching = TimeCachingFormatter(TEXT_FORMAT)
    for created in (1_800_000_000.0, 1_800_000_000.5, 1_800_000_001.25):
        record.created, record.msecs = created, (created % 1) * 1000

        assert caching.format(record) == logging.Formatter(TEXT_FORMAT).format(record)
