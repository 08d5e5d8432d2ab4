"""Running a connector executable: one process per request, bounded in time and output.

The child runs without a shell, in a new session (so its whole process group can
be stopped), with an environment built from scratch. Its stdin is written while
stdout and stderr are read, so no pipe can deadlock the other; once the child
exits, whatever is left of its process group is killed so that a grandchild
holding a pipe cannot keep the request open; what left the group is caught by
`gateway.orphans` in a server process.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import signal
import subprocess
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from gateway.errors import ConnectorStartFailed, ConnectorTimeout, OutputTooLarge
from gateway.manifest import Command
from gateway.orphans import own_children
from gateway.redact import Redactor

logger = logging.getLogger("gateway.connector")

PROTOCOL_VERSION = "1"
DEFAULT_PATH = "/usr/local/bin:/usr/bin:/bin"
# Variables that say nothing secret and that many programs need to behave.
PASSED_THROUGH = ("HOME", "LANG", "LC_ALL", "TZ", "TMPDIR")

_TAIL_LINES = 5


@dataclass(frozen=True)
class Limits:
    max_stdout_bytes: int = 16 * 1024 * 1024
    max_stderr_lines: int = 100
    max_stderr_line_chars: int = 2000
    # How long a child may take to exit after SIGTERM before it gets SIGKILL.
    kill_grace: float = 1.0
    # How long pipes may stay open after the child exited (a grandchild in another session).
    drain_timeout: float = 0.5


@dataclass
class Finished:
    returncode: int
    stdout: bytes
    stderr: StderrLines


@dataclass
class StderrLines:
    """A connector's stderr as bounded lines: the first ones kept for logs, the last few for errors."""

    max_lines: int
    max_chars: int
    request_id: str
    command_id: str
    redact: Redactor = field(default_factory=Redactor)
    lines: list[str] = field(default_factory=list)
    tail: deque[str] = field(default_factory=lambda: deque(maxlen=_TAIL_LINES))
    dropped: int = 0
    _partial: bytearray = field(default_factory=bytearray)
    _partial_cut: bool = False

    def feed(self, chunk: bytes) -> None:
        start = 0
        while (end := chunk.find(b"\n", start)) != -1:
            self._extend_partial(chunk[start:end])
            self._finish_line()
            start = end + 1
        self._extend_partial(chunk[start:])

    def close(self) -> None:
        if self._partial or self._partial_cut:
            self._finish_line()

    def logs(self) -> list[str]:
        if self.dropped:
            return [*self.lines, f"({self.dropped} more stderr lines not shown)"]
        return list(self.lines)

    def _extend_partial(self, piece: bytes) -> None:
        # Four bytes per character at most: enough to cut at max_chars after decoding.
        room = self.max_chars * 4 - len(self._partial)
        if len(piece) > room:
            self._partial_cut = True
        self._partial += piece[: max(room, 0)]

    def _finish_line(self) -> None:
        line = self.redact(self._partial.decode("utf-8", errors="replace").rstrip("\r"))
        if self._partial_cut or len(line) > self.max_chars:
            line = line[: self.max_chars] + " [cut]"
        self._partial.clear()
        self._partial_cut = False

        self.tail.append(line)
        self._take(line)

    def _take(self, line: str) -> None:
        """A whole line, redacted and cut: logged and kept while there is room, counted after."""
        if len(self.lines) < self.max_lines:
            self.lines.append(line)
            logger.info("[%s] %s stderr: %s", self.request_id, self.command_id, line)
        else:
            self.dropped += 1


def base_environment(command: Command, source: Mapping[str, str]) -> dict[str, str]:
    """What every process of the command gets: a few harmless basics and the manifest's own."""
    env = {name: source[name] for name in PASSED_THROUGH if name in source}
    env.setdefault("LANG", "C.UTF-8")
    env["PATH"] = DEFAULT_PATH
    env.update({name: source[name] for name in command.inherit_env if name in source})
    env.update(command.env)
    env["CONNECTOR_PROTOCOL"] = PROTOCOL_VERSION
    return env


def child_environment(command: Command, request_id: str, deadline: float, source: Mapping[str, str]) -> dict[str, str]:
    """A spawned child's whole environment: the basics and the request's metadata."""
    env = base_environment(command, source)
    env.update(
        CONNECTOR_COMMAND=command.id,
        CONNECTOR_REQUEST_ID=request_id,
        CONNECTOR_TIMEOUT=f"{command.timeout:g}",
        CONNECTOR_DEADLINE=f"{floor_to_milliseconds(deadline):.3f}",
    )
    return env


def floor_to_milliseconds(moment: float) -> float:
    """A deadline as connectors see it: rounded down, so that it never promises time that is not there."""
    return math.floor(moment * 1000) / 1000


def spawn_options(command: Command, env: Mapping[str, str]) -> dict[str, Any]:
    """How every connector process starts: three pipes, its own session, its manifest's directory and user."""
    run_as = command.run_as
    return {
        "stdin": subprocess.PIPE,
        "stdout": subprocess.PIPE,
        "stderr": subprocess.PIPE,
        "env": env,
        "cwd": command.workdir,
        "start_new_session": True,
        "user": run_as.uid if run_as else None,
        "group": run_as.gid if run_as else None,
        "extra_groups": [] if run_as else None,
    }


def start_failure(command: Command, request_id: str, exc: OSError) -> ConnectorStartFailed:
    logger.error("[%s] %s could not be started: %s", request_id, command.id, exc)
    return ConnectorStartFailed(f"The connector for '{command.id}' could not be started: {exc.strerror or exc}.")


class Runner:
    """Starts connector processes and keeps track of the ones alive, to stop them all at shutdown."""

    def __init__(self, limits: Limits, environ: Mapping[str, str]) -> None:
        self.limits = limits
        self.environ = environ
        self.spawned = 0
        self.alive: set[int] = set()

    async def run(self, command: Command, stdin: bytes, request_id: str, redact: Redactor) -> Finished:
        """Run the command's executable once; raise a ConnectorError if it cannot finish within its limits."""
        limits = self.limits
        deadline = time.time() + command.timeout
        env = child_environment(command, request_id, deadline, self.environ)
        stderr = StderrLines(limits.max_stderr_lines, limits.max_stderr_line_chars, request_id, command.id, redact)
        loop = asyncio.get_running_loop()
        try:
            with own_children.spawning():
                transport, pipes = await loop.subprocess_exec(
                    lambda: _Pipes(loop, limits.max_stdout_bytes, stderr), *command.argv, **spawn_options(command, env)
                )
        except OSError as exc:
            raise start_failure(command, request_id, exc) from exc

        self.spawned += 1
        pid = transport.get_pid()
        self.alive.add(pid)
        try:
            return await _Supervisor(transport, pipes, command, request_id, limits).run(stdin)
        finally:
            self.alive.discard(pid)
            transport.close()

    def kill_all(self) -> None:
        """Stop every connector still running: the gateway is going away."""
        for pid in list(self.alive):
            logger.warning("Killing connector process group %d at shutdown", pid)
            signal_group(pid, signal.SIGKILL)


class _Pipes(asyncio.SubprocessProtocol):
    """Collects a child's stdout and stderr as they arrive and notes when it exits.

    The exit is noticed on its own, not when the pipes close: a grandchild may hold them open.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, max_stdout: int, stderr: StderrLines) -> None:
        self.max_stdout = max_stdout
        self.stdout = bytearray()
        self.stdout_overflow = False
        self.stderr = stderr
        self.exited: asyncio.Future[None] = loop.create_future()
        self.closed: asyncio.Future[None] = loop.create_future()
        self._open = {1, 2}
        self._pid = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.SubprocessTransport)
        self._pid = transport.get_pid()
        own_children.add(self._pid)

    def pipe_data_received(self, fd: int, data: bytes) -> None:
        if fd == 2:
            self.stderr.feed(data)
        elif not self.stdout_overflow:
            if len(self.stdout) + len(data) > self.max_stdout:
                self.stdout_overflow = True
                signal_group(self._pid, signal.SIGKILL)
            else:
                self.stdout += data

    def pipe_connection_lost(self, fd: int, exc: Exception | None) -> None:
        self._open.discard(fd)
        if not self._open and not self.closed.done():
            self.closed.set_result(None)

    def process_exited(self) -> None:
        own_children.discard(self._pid)
        if not self.exited.done():
            self.exited.set_result(None)


class _Supervisor:
    def __init__(
        self,
        transport: asyncio.SubprocessTransport,
        pipes: _Pipes,
        command: Command,
        request_id: str,
        limits: Limits,
    ) -> None:
        self.transport = transport
        self.pipes = pipes
        self.command = command
        self.request_id = request_id
        self.limits = limits
        self.pid = transport.get_pid()

    async def run(self, stdin: bytes) -> Finished:
        self._feed(stdin)
        try:
            async with asyncio.timeout(self.command.timeout):
                await asyncio.shield(self.pipes.exited)
        except TimeoutError:
            await self._stop()
            await self._drain()
            raise ConnectorTimeout(self._timeout_message(), self.pipes.stderr.logs()) from None
        except asyncio.CancelledError:  # the caller went away or the gateway stops
            self._signal_group(signal.SIGKILL)
            raise

        self._signal_group(signal.SIGKILL)  # leftovers of the group may hold our pipes open
        await self._drain()

        if self.pipes.stdout_overflow:
            raise OutputTooLarge(
                f"The connector for '{self.command.id}' printed more than "
                f"{self.limits.max_stdout_bytes} bytes on stdout and was stopped.",
                self.pipes.stderr.logs(),
            )
        returncode = self.transport.get_returncode()
        assert returncode is not None
        return Finished(returncode, bytes(self.pipes.stdout), self.pipes.stderr)

    def _feed(self, data: bytes) -> None:
        # Written without waiting: the loop flushes it as the child reads, and a child that
        # exits without reading its input merely closes the pipe.
        pipe = self.transport.get_pipe_transport(0)
        assert isinstance(pipe, asyncio.WriteTransport)
        pipe.write(data)
        pipe.close()

    async def _drain(self) -> None:
        """Wait briefly for the pipes to close; a grandchild in its own session may keep them open."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.limits.drain_timeout):
                await asyncio.shield(self.pipes.closed)
        self.pipes.stderr.close()

    async def _stop(self) -> None:
        """SIGTERM to the whole group, a grace period, then SIGKILL."""
        self._signal_group(signal.SIGTERM)
        try:
            async with asyncio.timeout(self.limits.kill_grace):
                await asyncio.shield(self.pipes.exited)
        except TimeoutError:
            logger.warning(
                "[%s] %s ignored SIGTERM for %gs; killing it",
                self.request_id,
                self.command.id,
                self.limits.kill_grace,
            )
        self._signal_group(signal.SIGKILL)
        await asyncio.shield(self.pipes.exited)

    def _signal_group(self, signum: int) -> None:
        signal_group(self.pid, signum)

    def _timeout_message(self) -> str:
        message = f"The connector for '{self.command.id}' did not finish within its time limit of "
        return message + f"{self.command.timeout:g} s and was stopped."


def signal_group(pid: int, signum: int) -> None:
    """Signal the process group a connector leads (it was started in a session of its own)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signum)
