"""Processes that outlive their connector outside its process group: adopted, stopped and reaped by `serve`.

A connector runs in a session of its own, whose process group is killed when it is done. A descendant that
moved to another session or group (setsid, a double fork) escapes that kill and, once its parent exits, is
re-parented to the nearest subreaper, else to PID 1. A serving gateway process makes itself that subreaper
(Linux only) and, twice a second, kills and reaps each child in another session that it did not start itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import itertools
import logging
import os
import signal
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass

logger = logging.getLogger("gateway")

SWEEP_INTERVAL = 0.5
PR_SET_CHILD_SUBREAPER = 36
_PROGRAM_CHARS = 200
_BOOT_CLOCK = getattr(time, "CLOCK_BOOTTIME", time.CLOCK_MONOTONIC)
_NANOSECONDS_PER_TICK = 1_000_000_000 // os.sysconf("SC_CLK_TCK")


class OwnChildren:
    """The processes this gateway process started, from their spawn until asyncio has reaped them.

    A spawn is open from just before its fork until its protocol has been told the pid. A child born while
    a spawn is open may be that spawn's, not yet known here: it is not judged until the spawn has closed.
    """

    def __init__(self) -> None:
        self.known: set[int] = set()
        self._open: dict[int, int] = {}  # spawn number: boot-clock tick at which it began
        self._numbers = itertools.count()

    @contextlib.contextmanager
    def spawning(self) -> Iterator[None]:
        number = next(self._numbers)
        self._open[number] = boot_ticks()
        try:
            yield
        finally:
            del self._open[number]

    def add(self, pid: int) -> None:
        self.known.add(pid)

    def discard(self, pid: int) -> None:
        self.known.discard(pid)

    def may_be_ours(self, pid: int, start: int) -> bool:
        """Whether the child `pid`, born at boot-clock tick `start`, is or may be one started here."""
        if pid in self.known:
            return True
        # Both tick counts are rounded down; one tick of margin on top.
        return any(start >= began - 1 for began in self._open.values())


own_children = OwnChildren()


def boot_ticks() -> int:
    """Now, in the clock and unit of a process's start time in /proc/PID/stat: clock ticks since boot."""
    return time.clock_gettime_ns(_BOOT_CLOCK) // _NANOSECONDS_PER_TICK


@dataclass(frozen=True)
class Stat:
    """The fields of /proc/PID/stat that tell whose a process is."""

    state: str
    ppid: int
    group: int
    session: int
    start: int


def read_stat(pid: int) -> Stat | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as file:
            text = file.read()
    except OSError:
        return None
    # The command name, in parentheses, may hold spaces and parentheses: the fields follow the last ')'.
    fields = text[text.rindex(b")") + 2 :].split()
    return Stat(fields[0].decode(), int(fields[1]), int(fields[2]), int(fields[3]), int(fields[19]))


class Reaper:
    """Kills and reaps the children of this process that are in another session and were not started here.

    Only those: a child in the gateway's own session was started by something else in the process (which
    waits for it itself), and every connector, with all its descendants, starts in a session of its own.
    A child still in the session of a connector that runs is left to it, and judged once it has ended.
    Each child is waited for by its pid, never with -1, so no exit status asyncio waits for is taken from it.
    """

    def __init__(self, children: OwnChildren) -> None:
        self.children = children
        self.pid = os.getpid()
        self.session = os.getsid(0)
        self.group = os.getpgrp()
        self.killed: dict[int, int] = {}  # pid: start tick, of children killed and not reaped yet
        self._lists = os.path.exists(f"/proc/{self.pid}/task/{self.pid}/children")

    async def run(self, interval: float = SWEEP_INTERVAL) -> None:
        while True:
            self.sweep()
            await asyncio.sleep(interval)

    def sweep(self) -> None:
        current = self._child_pids()
        self.killed = {pid: start for pid, start in self.killed.items() if pid in current}
        for pid in current:
            if pid in self.children.known:
                continue
            stat = read_stat(pid)
            if stat is not None and self._left_behind(pid, stat):
                self._stop(pid, stat)

    def _left_behind(self, pid: int, stat: Stat) -> bool:
        if stat.ppid != self.pid or stat.session == self.session:
            return False
        # Still in the session of a connector that runs: the end of that connector will deal with it.
        if stat.session in self.children.known:
            return False
        return not self.children.may_be_ours(pid, stat.start)

    def _stop(self, pid: int, stat: Stat) -> None:
        if stat.state != "Z" and self.killed.get(pid) != stat.start:
            self.killed[pid] = stat.start
            program = _program(pid)  # unreadable once it is dead
            if stat.group not in (0, 1, self.group):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(stat.group, signal.SIGKILL)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            logger.warning(
                "Killed process %d (%s), left running by a connector outside its process group",
                pid,
                program,
            )
        with contextlib.suppress(ChildProcessError):
            if os.waitpid(pid, os.WNOHANG)[0] == pid:
                self.killed.pop(pid, None)

    def _child_pids(self) -> set[int]:
        """This process's children: from each thread's list, or from every process's parent where there is none."""
        if not self._lists:
            return {pid for pid in _all_pids() if (stat := read_stat(pid)) is not None and stat.ppid == self.pid}
        pids: set[int] = set()
        with contextlib.suppress(OSError):
            for thread in os.listdir(f"/proc/{self.pid}/task"):
                with contextlib.suppress(OSError), open(f"/proc/{self.pid}/task/{thread}/children", "rb") as file:
                    pids.update(map(int, file.read().split()))
        return pids


def _all_pids() -> list[int]:
    with contextlib.suppress(OSError):
        return [int(entry) for entry in os.listdir("/proc") if entry.isdigit()]
    return []


def _program(pid: int) -> str:
    """The program a process runs, as its first argument says; never the other arguments, which may hold secrets."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as file:
            first = file.read(4096).split(b"\0", 1)[0]
    except OSError:
        return "?"
    text = first.decode("utf-8", errors="replace")[:_PROGRAM_CHARS]
    return text if text.isprintable() else text.encode("unicode_escape").decode("ascii")


def set_subreaper(on: bool) -> bool:
    """Make this process the one that orphaned descendants are re-parented to (Linux); whether it now is."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return False
    prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    prctl.restype = ctypes.c_int
    if prctl(PR_SET_CHILD_SUBREAPER, int(on), 0, 0, 0) != 0:
        logger.warning(
            "Could not become the reaper of orphaned connector processes: %s", os.strerror(ctypes.get_errno())
        )
        return False
    return True


@contextlib.contextmanager
def reaping(enabled: bool) -> Iterator[None]:
    """While the server runs: adopt what connectors leave behind, and kill and reap it."""
    if not enabled or not set_subreaper(True):
        yield
        return
    reaper = Reaper(own_children)
    sweeping = asyncio.ensure_future(reaper.run())
    try:
        yield
    finally:
        sweeping.cancel()
        reaper.sweep()  # what the connectors stopped at shutdown left behind, as far as it has been adopted yet
        set_subreaper(False)
