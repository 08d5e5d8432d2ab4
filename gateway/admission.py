"""Admission: how many connector runs may go on at once, gateway-wide and per command.

A request that finds every slot busy waits in a bounded queue for a bounded time;
past either bound it is refused with 429 and Retry-After, which Arena retries,
instead of piling up until every caller times out.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from dataclasses import dataclass

from gateway.errors import Saturated
from gateway.manifest import Command


@dataclass(frozen=True)
class AdmissionLimits:
    max_running: int = 32
    max_waiting: int = 64
    # How long a request may wait for a slot; it still has its whole time limit once it runs.
    max_wait: float = 10.0


class Slots:
    """A number of slots with a bounded queue in front of them, served in order of arrival."""

    def __init__(self, size: int, queue: int) -> None:
        self.size = size
        self.queue = queue
        self.running = 0
        self._waiters: deque[asyncio.Future[None]] = deque()

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    def take_now(self) -> bool:
        """Take a slot if one is free and nobody is waiting for it, without waiting."""
        if self.running < self.size and not self._waiters:
            self.running += 1
            return True
        return False

    async def acquire(self, max_wait: float, what: str) -> None:
        if self.take_now():
            return
        if len(self._waiters) >= self.queue:
            raise Saturated(f"{what} is busy: {self.size} running and {self.waiting} waiting. Try again shortly.")
        if not await self.wait_for_slot(max_wait):
            raise Saturated(f"{what} is busy: no run could start within {max_wait:g} s. Try again shortly.")

    async def wait_for_slot(self, timeout: float) -> bool:
        """Queue for a slot for up to `timeout` seconds, however long the queue: True once one is held."""
        if self.take_now():
            return True
        slot = asyncio.get_running_loop().create_future()
        self._waiters.append(slot)
        try:
            async with asyncio.timeout(timeout):
                await slot
        except BaseException as exc:  # the time is up, or the waiting request was cancelled
            self._give_up(slot)
            if isinstance(exc, TimeoutError):
                return False
            raise
        return True

    def _give_up(self, slot: asyncio.Future[None]) -> None:
        if slot.done() and not slot.cancelled():
            self.release()  # handed over just as the wait ended: it goes to the next in line
        else:
            with contextlib.suppress(ValueError):
                self._waiters.remove(slot)

    def release(self) -> None:
        while self._waiters:
            slot = self._waiters.popleft()
            if not slot.done():
                slot.set_result(None)  # handed over: the count of running stays the same
                return
        self.running -= 1


class Admission:
    def __init__(self, limits: AdmissionLimits) -> None:
        self.limits = limits
        self.gateway = Slots(limits.max_running, limits.max_waiting)
        self.commands: dict[str, Slots] = {}

    def slot(self, command: Command) -> Slot:
        """Hold a slot of the command (when it sets `concurrency`), then one of the gateway: `async with`."""
        return Slot(self, self._slots_of(command), command.id)

    def _slots_of(self, command: Command) -> Slots | None:
        if command.concurrency is None:
            return None
        slots = self.commands.get(command.id)
        if slots is None or (slots.size, slots.queue) != (command.concurrency, command.queue):
            slots = self.commands[command.id] = Slots(command.concurrency, command.queue)
        return slots


class Slot:
    """A run slot, held for the body of an `async with`; waiting past a bound raises `Saturated`."""

    __slots__ = ("admission", "command_id", "own")

    def __init__(self, admission: Admission, own: Slots | None, command_id: str) -> None:
        self.admission = admission
        self.own = own
        self.command_id = command_id

    async def __aenter__(self) -> None:
        max_wait = self.admission.limits.max_wait
        if self.own is not None and not self.own.take_now():
            await self.own.acquire(max_wait, f"Command '{self.command_id}'")
        try:
            if not self.admission.gateway.take_now():
                await self.admission.gateway.acquire(max_wait, "The gateway")
        except BaseException:
            if self.own is not None:
                self.own.release()
            raise

    async def __aexit__(self, *exc_info: object) -> None:
        self.admission.gateway.release()
        if self.own is not None:
            self.own.release()


class BodyBudget:
    """How many bytes of request bodies the gateway holds at once, from the first byte read to the answer.

    Each body is bounded by itself, yet a crowd of large ones would hold their sum in memory: past
    the budget a request is refused with 429 before its body is read. A request alone is never
    refused, so the budget cannot turn away a body that the size limit allows.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.held = 0

    def hold(self) -> BodyHold:
        return BodyHold(self)


class BodyHold:
    """One request's share of the `BodyBudget`: grown as its body arrives, given back once it is answered."""

    __slots__ = ("budget", "size")

    def __init__(self, budget: BodyBudget) -> None:
        self.budget = budget
        self.size = 0

    def cover(self, size: int) -> None:
        """Hold `size` bytes in all, or raise `Saturated` when others hold so much that it would pass the budget."""
        budget = self.budget
        if size <= self.size:
            return
        others = budget.held - self.size
        if others > 0 and others + size > budget.limit:
            raise Saturated(
                f"The gateway is busy: the bodies of other requests take {others} bytes, and this one would pass "
                f"the limit of {budget.limit} bytes held at once. Try again shortly."
            )
        budget.held += size - self.size
        self.size = size

    def release(self) -> None:
        self.budget.held -= self.size
        self.size = 0
