"""Admission: how many connector runs may go on at once, gateway-wide and per command.

A request that finds every slot busy waits in a bounded queue for a bounded time;
past either bound it is refused with 429 and Retry-After, which Arena retries,
instead of piling up until every caller times out.
"""

from __future__ import annotations

import asyncio
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
    """A number of slots with a bounded queue in front of them."""

    def __init__(self, size: int, queue: int) -> None:
        self.size = size
        self.queue = queue
        self.waiting = 0
        self._free = asyncio.Semaphore(size)

    @property
    def running(self) -> int:
        return self.size - self._free._value

    async def acquire(self, max_wait: float, what: str) -> None:
        if not self._free.locked():
            await self._free.acquire()
            return
        if self.waiting >= self.queue:
            raise Saturated(f"{what} is busy: {self.size} running and {self.waiting} waiting. Try again shortly.")
        self.waiting += 1
        try:
            async with asyncio.timeout(max_wait):
                await self._free.acquire()
        except TimeoutError:
            raise Saturated(f"{what} is busy: no run could start within {max_wait:g} s. Try again shortly.") from None
        finally:
            self.waiting -= 1

    def release(self) -> None:
        self._free.release()


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
        if self.own is not None:
            await self.own.acquire(max_wait, f"Command '{self.command_id}'")
        try:
            await self.admission.gateway.acquire(max_wait, "The gateway")
        except BaseException:
            if self.own is not None:
                self.own.release()
            raise

    async def __aexit__(self, *exc_info: object) -> None:
        self.admission.gateway.release()
        if self.own is not None:
            self.own.release()
