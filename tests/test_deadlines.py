"""Deadlines kept by one timer: what expires, when, and that ended requests are not held."""

from __future__ import annotations

import asyncio
from typing import Any

from gateway.deadlines import Deadlines


class Expired(Exception):
    pass


def _expire(future: asyncio.Future[Any]) -> None:
    future.set_exception(Expired())


async def _outcome(future: asyncio.Future[Any]) -> str:
    try:
        await future
    except Expired:
        return "expired"
    return "answered"


def test_a_pending_future_expires_at_its_deadline_and_an_answered_one_does_not() -> None:
    async def scenario() -> tuple[str, str, float, int]:
        loop = asyncio.get_running_loop()
        deadlines = Deadlines(_expire)
        slow, quick = loop.create_future(), loop.create_future()
        started = loop.time()
        for future in (slow, quick):
            deadlines.add(loop, future, 0.05, started + 0.05)
        loop.call_later(0.01, quick.set_result, None)

        outcomes = await asyncio.gather(_outcome(slow), _outcome(quick))
        elapsed = loop.time() - started
        for _ in (slow, quick):
            deadlines.finished(0.05)
        return outcomes[0], outcomes[1], elapsed, deadlines.watched

    slow, quick, elapsed, watched = asyncio.run(scenario())
    assert (slow, quick) == ("expired", "answered")
    assert elapsed >= 0.05
    assert watched == 0


def test_limits_of_different_lengths_each_expire_on_time() -> None:
    async def scenario() -> list[tuple[str, float]]:
        loop = asyncio.get_running_loop()
        deadlines = Deadlines(_expire)
        started = loop.time()
        futures = {limit: loop.create_future() for limit in (0.2, 0.05)}  # the longer one first
        for limit, future in futures.items():
            deadlines.add(loop, future, limit, started + limit)

        async def timed(future: asyncio.Future[Any]) -> tuple[str, float]:
            outcome = await _outcome(future)
            return outcome, loop.time() - started

        return await asyncio.gather(*(timed(future) for future in futures.values()))

    (long_outcome, long_after), (short_outcome, short_after) = asyncio.run(scenario())
    assert long_outcome == short_outcome == "expired"
    assert 0.05 <= short_after < long_after
    assert long_after >= 0.2


def test_a_deadline_added_out_of_order_still_expires_first() -> None:
    async def scenario() -> list[str]:
        loop = asyncio.get_running_loop()
        deadlines = Deadlines(_expire)
        now = loop.time()
        later, earlier = loop.create_future(), loop.create_future()
        deadlines.add(loop, later, 1.0, now + 1.0)
        deadlines.add(loop, earlier, 1.0, now + 0.05)  # it waited for a slot before it was added
        order: list[str] = []
        earlier.add_done_callback(lambda _: order.append("earlier"))
        later.add_done_callback(lambda _: order.append("later"))
        await asyncio.sleep(0.2)
        later.cancel()
        return order

    assert asyncio.run(scenario()) == ["earlier", "later"]


def test_requests_that_end_out_of_turn_are_not_held_behind_a_long_one() -> None:
    async def scenario() -> int:
        loop = asyncio.get_running_loop()
        deadlines = Deadlines(_expire)
        long_running = loop.create_future()
        deadlines.add(loop, long_running, 30.0, loop.time() + 30.0)
        for _ in range(10_000):
            quick = loop.create_future()
            deadlines.add(loop, quick, 30.0, loop.time() + 30.0)
            quick.set_result(None)
            deadlines.finished(30.0)
        watched = deadlines.watched
        long_running.cancel()
        return watched

    assert asyncio.run(scenario()) <= 2 * 1 + 64 + 1
