"""Deadlines of many requests, kept by one timer rather than one timer per request.

A timer per request costs a heap entry that stays behind when the request ends early, as nearly
all do. Here the requests of one time limit expire in the order they arrived, so each limit keeps
a queue, oldest first, and one timer is set for the earliest head. A request that ends leaves its
queue at once when it is the oldest, or with the next compaction when it ended out of turn.
"""

from __future__ import annotations

import asyncio
import bisect
import math
from collections import deque
from collections.abc import Callable
from typing import Any

Entry = tuple[float, "asyncio.Future[Any]"]


class Deadlines:
    """Calls `expire(future)` for each future still pending at its deadline (on the loop's clock)."""

    def __init__(self, expire: Callable[[asyncio.Future[Any]], None]) -> None:
        self._expire = expire
        self._queues: dict[float, deque[Entry]] = {}
        self._live = 0
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = math.inf

    def add(self, loop: asyncio.AbstractEventLoop, future: asyncio.Future[Any], limit: float, deadline: float) -> None:
        """Watch `future` until `deadline`; `limit` is its time limit, which groups it with its peers."""
        queue = self._queues.get(limit)
        if queue is None:
            queue = self._queues[limit] = deque()
        if queue and deadline < queue[-1][0]:  # started after a later-arriving peer: rare, kept in order
            queue.insert(bisect.bisect_right(queue, deadline, key=_deadline), (deadline, future))
        else:
            queue.append((deadline, future))
        self._live += 1
        if deadline < self._timer_at:
            self._arm(loop, deadline)

    def finished(self, limit: float) -> None:
        """A future added with `limit` is done (answered, expired or cancelled)."""
        self._live -= 1
        queue = self._queues[limit]
        while queue and queue[0][1].done():
            queue.popleft()
        if len(queue) > 2 * self._live + 64:  # many ended out of turn behind a long-running one
            self._queues[limit] = deque(entry for entry in queue if not entry[1].done())

    @property
    def watched(self) -> int:
        """Entries held, live or ended out of turn: bounded by a small multiple of the live ones."""
        return sum(map(len, self._queues.values()))

    def _arm(self, loop: asyncio.AbstractEventLoop, when: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = loop.call_at(when, self._fire, loop)
        self._timer_at = when

    def _fire(self, loop: asyncio.AbstractEventLoop) -> None:
        self._timer, self._timer_at = None, math.inf
        now = loop.time()
        earliest = math.inf
        for queue in self._queues.values():
            while queue:
                deadline, future = queue[0]
                if not future.done():
                    if deadline > now:
                        earliest = min(earliest, deadline)
                        break
                    self._expire(future)
                queue.popleft()
        if earliest < math.inf:
            self._arm(loop, earliest)


def _deadline(entry: Entry) -> float:
    return entry[0]
