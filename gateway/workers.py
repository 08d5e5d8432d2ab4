"""Worker mode: pools of long-lived connector processes that take requests as lines of JSON.

A pool belongs to one program started one way (see `Command.pool_key`). Each
request goes to the least busy worker with room for it; a worker that crashes,
misbehaves, overruns a request it took alone or lets requests pass their deadline
one after another is stopped and replaced, and only the requests it held fail.
The line protocol is in docs/connector-protocol.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import signal
import sys
import time
from collections import Counter, deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from gateway.admission import Slots
from gateway.deadlines import Deadlines
from gateway.errors import (
    ConnectorCrashed,
    ConnectorError,
    ConnectorTimeout,
    ConnectorUnavailable,
    InvalidOutput,
    OutputTooLarge,
)
from gateway.jsonlimits import FINITE_JSON, MAX_DEPTH, NotFinite, nests_deeper_than
from gateway.manifest import Command, WorkerSettings
from gateway.orphans import own_children
from gateway.redact import Redactor
from gateway.runner import (
    Limits,
    StderrLines,
    base_environment,
    floor_to_milliseconds,
    signal_group,
    spawn_options,
    start_failure,
)

logger = logging.getLogger("gateway.workers")
stderr_logger = logging.getLogger("gateway.connector")  # where spawned connectors' stderr goes too

# A worker that exits this soon after starting, without answering anything, counts towards the restart backoff.
EARLY_EXIT = 5.0
BACKOFF_FIRST = 0.1
BACKOFF_MAX = 30.0
CANCELLED_REMEMBERED = 10_000
# A worker's stderr may mention a request's secrets after its answer: those of its last requests stay redacted.
SECRETS_REMEMBERED = 64


@dataclass
class Answer:
    """A worker's answer line, decoded: `result` or `failed`, with the logs that go with it."""

    result: Any = None
    failed: str | None = None
    temporary: bool = False
    logs: list[str] = field(default_factory=list)


@dataclass
class _Pending:
    request_id: str
    command: Command
    future: asyncio.Future[Answer]
    stderr: StderrLines | None  # set when the worker takes one request at a time
    redact: Redactor
    stderr_mark: int = 0  # how many lines the worker had written on stderr when it took the request


@dataclass
class Tally:
    """What the pools did, by connector: kept by `Pools`, so that the counts outlive pools a reload replaces."""

    spawned: Counter[str] = field(default_factory=Counter)
    restarts: Counter[str] = field(default_factory=Counter)


class Worker:
    """One long-lived process of a pool, and the requests it holds."""

    def __init__(self, pool: Pool, number: int) -> None:
        self.pool = pool
        self.number = number
        self.pending: dict[str, _Pending] = {}
        self.served = 0
        self.answered = 0
        self.started = time.monotonic()
        self.draining = False
        self.stuck = False  # stopped as soon as it holds nothing, see `Pool._note_expiry`
        self.expired_in_a_row = 0  # requests that passed their deadline since it last answered one
        loop = asyncio.get_running_loop()
        self.exited: asyncio.Future[None] = loop.create_future()
        self.pipes_closed: asyncio.Future[None] = loop.create_future()
        self.transport: asyncio.SubprocessTransport | None = None
        self.pid = 0
        self._stdin: asyncio.WriteTransport | None = None
        self._outbox: list[bytes] = []
        self.reaper: asyncio.Future[None] | None = None  # reads the last answers once the process is gone
        self.secrets = _HeldSecrets(pool.command.redact)
        self.stderr = _WorkerStderr(self.name, pool.limits, pool.settings.concurrency, self.secrets)

    @property
    def name(self) -> str:
        return f"worker {self.number} of {self.pool.label}"

    @property
    def load(self) -> int:
        return len(self.pending)

    async def start(self, command: Command, environ: Mapping[str, str]) -> None:
        env = base_environment(command, environ)
        env.update(CONNECTOR_MODE="worker", CONNECTOR_CONCURRENCY=str(self.pool.settings.concurrency))
        loop = asyncio.get_running_loop()
        with own_children.spawning():
            transport, _ = await loop.subprocess_exec(
                lambda: _WorkerPipes(self), *command.argv, **spawn_options(command, env)
            )
        self.transport = transport
        self.pid = transport.get_pid()
        stdin = transport.get_pipe_transport(0)
        assert isinstance(stdin, asyncio.WriteTransport)
        self._stdin = stdin
        logger.info("Started %s (pid %d)", self.name, self.pid)

    def send(self, line: bytes) -> None:
        """Queue a line for the worker's stdin: the lines of one turn of the event loop go in one write."""
        if not self._outbox:
            asyncio.get_running_loop().call_soon(self._write_outbox)
        self._outbox.append(line)

    def _write_outbox(self) -> None:
        if self._outbox and self._stdin is not None and not self._stdin.is_closing():
            self._stdin.write(b"".join(self._outbox))
        self._outbox.clear()

    def take(self, pending: _Pending, line: bytes) -> None:
        self.pending[pending.request_id] = pending
        self.secrets.hold(pending.request_id, pending.redact)
        self.stderr.grant()
        pending.stderr_mark = self.stderr.written
        self.served += 1
        if self.pool.settings.max_requests and self.served >= self.pool.settings.max_requests:
            self.draining = True
        self.send(line)

    def release(self, request_id: str) -> None:
        self.pending.pop(request_id, None)
        self.secrets.let_go(request_id)
        if self.stuck and not self.pending:
            self.stop()
        elif self.draining and not self.pending:
            self.close_input()

    def close_input(self) -> None:
        """End of file on stdin: the worker finishes what it holds and exits."""
        self._write_outbox()
        if self._stdin is not None and not self._stdin.is_closing():
            self._stdin.close()

    def on_line(self, line: bytes) -> None:
        if nests_deeper_than(line, MAX_DEPTH + 1):  # the answer object itself is one level
            self.fail(InvalidOutput(f"The {self.name} printed JSON nested more than {MAX_DEPTH} levels deep."))
            return
        try:
            message, not_finite = _parse(line)
            request_id = message["id"]
            pending = self.pending[request_id]
        except (ValueError, KeyError, TypeError, RecursionError):
            if self._was_cancelled(line):
                return
            self.fail(InvalidOutput(f"The {self.name} printed a line that is not an answer to a request it holds."))
            return
        if not_finite:
            # An answer all the same, to a request it holds: only that request fails.
            self._count_answer()
            refusal = (
                f"The {self.name} answered with a number JSON cannot carry "
                "(NaN, an infinity or one beyond the range of a double)."
            )
            self._fail_one(pending, InvalidOutput(refusal))
            return
        answer = _decode(message, self.pool.limits)
        if answer is None:
            self.fail(InvalidOutput(f"The {self.name} printed an answer with neither 'result' nor 'failed'."))
            return
        if pending.stderr is not None:
            pending.stderr.close()
            answer.logs = [*answer.logs, *pending.stderr.logs()]
        self._count_answer()
        if not pending.future.done():
            pending.future.set_result(answer)

    def _count_answer(self) -> None:
        self.answered += 1
        self.expired_in_a_row = 0

    def on_stderr(self, data: bytes) -> None:
        holder = next(iter(self.pending.values()), None) if self.pool.settings.concurrency == 1 else None
        if holder is not None and holder.stderr is not None:
            holder.stderr.feed(data)
        else:
            self.stderr.feed(data)

    def on_exit(self) -> None:
        """The process is gone; its last answers may still be in the pipe, so they are read first."""
        if not self.exited.done():
            self.exited.set_result(None)
        self.pool.stopping.discard(self)
        self.reaper = asyncio.ensure_future(self._after_exit())

    async def _after_exit(self) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.pool.limits.drain_timeout):
                await asyncio.shield(self.pipes_closed)
        self.stderr.close()
        returncode = self.transport.get_returncode() if self.transport else None
        if returncode is not None and returncode < 0:
            how = f"was killed by {signal.Signals(-returncode).name}"
        else:
            how = f"exited with status {returncode}"
        self.fail(ConnectorCrashed(f"The {self.name} {how} while it held this request."))
        if self.transport is not None:
            self.transport.close()

    def fail(self, error: ConnectorError) -> None:
        """Every request this worker holds fails with `error`, and the worker is stopped."""
        for pending in list(self.pending.values()):
            self._fail_one(pending, error)
        self.pending.clear()
        self.stop()

    def _fail_one(self, pending: _Pending, error: ConnectorError) -> None:
        """One request fails, with the stderr lines written for it; after a crash, its message ends with the last."""
        if pending.future.done():
            return
        if pending.stderr is not None:
            pending.stderr.close()
            logs, tail = pending.stderr.logs(), list(pending.stderr.tail)
        else:
            logs, tail = self.stderr.since(pending.stderr_mark)
        message = error.message + _stderr_tail(tail) if isinstance(error, ConnectorCrashed) else error.message
        pending.future.set_exception(type(error)(message, logs))

    def stop(self) -> None:
        self.pool.forget(self)
        if not self.pid:
            return
        if self.exited.done():
            signal_group(self.pid, signal.SIGKILL)  # whatever it left behind in its group
            return
        signal_group(self.pid, signal.SIGTERM)
        asyncio.get_running_loop().call_later(self.pool.limits.kill_grace, signal_group, self.pid, signal.SIGKILL)
        self.pool.stopping.add(self)  # until it exits: a shutdown before then must not leave it behind

    def kill_if_running(self) -> None:
        if self.pid and not self.exited.done():
            signal_group(self.pid, signal.SIGKILL)

    def _was_cancelled(self, line: bytes) -> bool:
        """A late answer to a request the gateway cancelled is expected, and dropped."""
        with contextlib.suppress(ValueError, KeyError, TypeError, RecursionError):
            return self.pool.cancelled.pop(json.loads(line)["id"], False) is None
        return False


def _parse(line: bytes) -> tuple[Any, bool]:
    """A worker's line as JSON, and whether it holds a number JSON cannot carry; ValueError if it is no JSON."""
    text = line.decode("utf-8", "surrogatepass")
    try:
        return FINITE_JSON.decode(text), False
    except NotFinite:
        return json.loads(text), True  # read again to learn which request it answers


def _stderr_tail(lines: Iterable[str]) -> str:
    tail = [line for line in lines if line.strip()]
    return f" Its last stderr lines: {' | '.join(tail)}" if tail else " It wrote nothing on stderr."


def _decode(message: dict[str, Any], limits: Limits) -> Answer | None:
    logs = message.get("logs", [])
    logs = [str(line)[: limits.max_stderr_line_chars] for line in logs] if isinstance(logs, list) else []
    if len(logs) > limits.max_stderr_lines:
        logs = [*logs[: limits.max_stderr_lines], f"({len(logs) - limits.max_stderr_lines} more log lines not shown)"]
    if "result" in message:
        return Answer(result=message["result"], logs=logs)
    if "failed" in message:
        return Answer(failed=str(message["failed"]), temporary=message.get("temporary") is True, logs=logs)
    return None


class _HeldSecrets(Redactor):
    """A worker's redactor: the manifest's secrets, and those of the requests it holds or held lately.

    A worker taking several requests at once writes stderr that is no one request's, so its lines are
    redacted with the secrets of every request they could be about.
    """

    def __init__(self, base: Redactor) -> None:
        super().__init__(base.secrets)
        self.base = base
        self.held: dict[str, Redactor] = {}
        self.lately: deque[Redactor] = deque(maxlen=SECRETS_REMEMBERED)

    def hold(self, request_id: str, redact: Redactor) -> None:
        if redact.secrets != self.base.secrets:
            self.held[request_id] = redact
            self._combine()

    def let_go(self, request_id: str) -> None:
        redact = self.held.pop(request_id, None)
        if redact is not None:
            self.lately.append(redact)
            self._combine()

    def _combine(self) -> None:
        sources = [self.base, *self.held.values(), *self.lately]
        self.secrets = Redactor(secret for source in sources for secret in source.secrets).secrets


class _WorkerStderr(StderrLines):
    """A worker's stderr outside any request it takes alone: logged within a budget, the last lines kept.

    Each request the worker takes (and its start) adds `max_stderr_lines` lines to what it may log, up to that
    many for each request it can hold; the lines past the budget are counted, and the count is logged when the
    worker next takes a request or exits. The last lines are kept for the answers of requests it crashes on.
    """

    def __init__(self, name: str, limits: Limits, concurrency: int, redact: Redactor) -> None:
        super().__init__(limits.max_stderr_lines, limits.max_stderr_line_chars, "-", name, redact)
        self.budget = self.max_lines
        self.written = 0
        self.recent: deque[str] = deque(maxlen=self.max_lines)
        self._most = self.max_lines * concurrency

    def grant(self) -> None:
        """The worker takes a request: it may log more."""
        self._report_dropped()
        self.budget = min(self.budget + self.max_lines, self._most)

    def since(self, mark: int) -> tuple[list[str], list[str]]:
        """The lines written since `mark` lines had been (the last `max_lines` of them), and their last few."""
        count = self.written - mark
        kept, tail = _last(self.recent, count), _last(self.tail, count)
        if count > len(kept):
            return [f"({count - len(kept)} earlier stderr lines not shown)", *kept], tail
        return kept, tail

    def close(self) -> None:
        super().close()
        self._report_dropped()

    def _take(self, line: str) -> None:
        self.written += 1
        self.recent.append(line)
        if self.budget > 0:
            self.budget -= 1
            stderr_logger.info("%s stderr: %s", self.command_id, line)
        else:
            self.dropped += 1

    def _report_dropped(self) -> None:
        if self.dropped:
            stderr_logger.warning(
                "The %s wrote %d stderr lines that were not logged: "
                "a worker's lines are logged up to %d for each request it takes.",
                self.command_id,
                self.dropped,
                self.max_lines,
            )
            self.dropped = 0


def _last(lines: deque[str], count: int) -> list[str]:
    return list(lines)[len(lines) - min(count, len(lines)) :]


class _WorkerPipes(asyncio.SubprocessProtocol):
    """Splits a worker's stdout into lines, each bounded in length, and passes its stderr on."""

    def __init__(self, worker: Worker) -> None:
        self.worker = worker
        self.partial = bytearray()  # a line whose end has not come yet
        self.overflowed = False  # a line passed the limit: the worker is stopped, the rest of its stdout ignored
        self._open = {1, 2}
        self.pid = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.SubprocessTransport)
        self.pid = transport.get_pid()
        own_children.add(self.pid)

    def pipe_data_received(self, fd: int, data: bytes) -> None:
        if fd == 2:
            self.worker.on_stderr(data)
            return
        if self.overflowed:
            return
        limit = self.worker.pool.limits.max_stdout_bytes
        start = 0
        # Only the new data is searched for line ends: a long line comes in many reads.
        while (end := data.find(b"\n", start)) != -1:
            if len(self.partial) + end - start > limit:
                self._overflow(limit)
                return
            if self.partial:
                self.partial += memoryview(data)[start:end]
                line = bytes(self.partial)
                self.partial.clear()
            else:
                line = data[start:end]
            start = end + 1
            if line.strip():
                self.worker.on_line(line)
        if len(self.partial) + len(data) - start > limit:
            self._overflow(limit)
            return
        self.partial += memoryview(data)[start:]

    def _overflow(self, limit: int) -> None:
        self.overflowed = True
        self.partial = bytearray()
        self.worker.fail(OutputTooLarge(f"The {self.worker.name} printed a line longer than {limit} bytes."))

    def pipe_connection_lost(self, fd: int, exc: Exception | None) -> None:
        self._open.discard(fd)
        if not self._open and not self.worker.pipes_closed.done():
            self.worker.pipes_closed.set_result(None)

    def process_exited(self) -> None:
        own_children.discard(self.pid)
        self.worker.on_exit()


class Pool:
    """The workers of one program, started lazily or eagerly, replaced when they fail."""

    def __init__(
        self, command: Command, limits: Limits, environ: Mapping[str, str], tally: Tally | None = None
    ) -> None:
        assert command.workers is not None
        self.command = command
        self.settings: WorkerSettings = command.workers
        self.limits = limits
        self.environ = environ
        self.label = f"connector '{command.connector}'"
        self.workers: list[Worker] = []
        self.stopping: set[Worker] = set()  # stopped, and not yet exited
        # Requests beyond what the workers can hold wait here, within their time limit.
        self.room = Slots(self.settings.size * self.settings.concurrency, queue=sys.maxsize)
        # Requests given up on, whose late answers are dropped; the oldest are forgotten past a bound.
        self.cancelled: dict[str, None] = {}
        self.deadlines = Deadlines(_expire)
        self.tally = tally or Tally()
        self.spawned = 0
        self.restarts = 0
        self.retired = False
        self._retire_grace = 0.0
        self._early_exits = 0
        self._next_start = 0.0
        self._numbers = 0
        self._choosing = asyncio.Lock()

    async def fill(self) -> None:
        """Start every worker now: for `start: eager`."""
        async with self._choosing:
            while len(self._live()) < self.settings.size:
                await self._start_worker()

    async def run(self, command: Command, payload: bytes, request_id: str, redact: Redactor) -> Answer:
        deadline = time.time() + command.timeout
        try:
            if not self.room.take_now() and not await self.room.wait_for_slot(command.timeout):
                raise self._timeout(command, [])
            try:
                worker = self._least_busy() if not self._choosing.locked() else None
                if worker is None:
                    worker = await self._worker_with_room()
                return await self._call(worker, command, payload, request_id, redact, deadline)
            finally:
                self.room.release()
        finally:
            if self.retired and self.idle:
                self._close_all()

    async def _call(
        self, worker: Worker, command: Command, payload: bytes, request_id: str, redact: Redactor, deadline: float
    ) -> Answer:
        stderr = None
        if self.settings.concurrency == 1:
            limits = self.limits
            # Redacted as the worker's other lines: it may mention a secret of a request it took before.
            stderr = StderrLines(
                limits.max_stderr_lines, limits.max_stderr_line_chars, request_id, command.id, worker.secrets
            )
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Answer] = loop.create_future()
        pending = _Pending(request_id, command, future, stderr, redact)
        worker.take(pending, _request_line(request_id, command, deadline, payload))
        # The wall clock's deadline the worker was given, on the loop's clock.
        self.deadlines.add(loop, future, command.timeout, loop.time() + deadline - time.time())
        try:
            return await future
        except _Expired:
            # Taken alone, its own lines; shared, the worker's lines since it took this request.
            logs = stderr.logs() if stderr else worker.stderr.since(pending.stderr_mark)[0]
            self._abandon(worker, request_id)
            self._note_expiry(worker)
            raise self._timeout(command, logs) from None
        except asyncio.CancelledError:
            self._abandon(worker, request_id)
            raise
        finally:
            self.deadlines.finished(command.timeout)
            worker.release(request_id)

    def _timeout(self, command: Command, logs: list[str]) -> ConnectorTimeout:
        message = f"The connector for '{command.id}' did not answer within its time limit of {command.timeout:g} s."
        return ConnectorTimeout(message, logs)

    def _abandon(self, worker: Worker, request_id: str) -> None:
        """A request is given up: a worker that took it alone is replaced, another is told to cancel it."""
        if self.settings.concurrency == 1:
            worker.pending.pop(request_id, None)
            worker.fail(ConnectorTimeout("abandoned"))
            return
        self.cancelled[request_id] = None
        if len(self.cancelled) > CANCELLED_REMEMBERED:
            del self.cancelled[next(iter(self.cancelled))]
        worker.send(json.dumps({"cancel": request_id}).encode() + b"\n")

    def _note_expiry(self, worker: Worker) -> None:
        """Tell a stuck worker from a slow one, when it takes several requests at once.

        One that lets `concurrency` requests in a row pass their deadline, answering none in between,
        is stuck: it takes no more, and is stopped once the requests it holds are answered or expire.
        """
        if self.settings.concurrency == 1 or worker.stuck:
            return  # stopped by `_abandon` already, or to be stopped
        worker.expired_in_a_row += 1
        if worker.expired_in_a_row < self.settings.concurrency:
            return
        worker.stuck = worker.draining = True
        logger.warning(
            "The %s let %d requests in a row pass their deadline without answering; it is replaced",
            worker.name,
            worker.expired_in_a_row,
        )

    def _least_busy(self) -> Worker | None:
        """The live worker holding the fewest requests, if one has room."""
        best = None
        for worker in self.workers:
            if worker.draining or worker.exited.done() or worker.load >= self.settings.concurrency:
                continue
            if best is None or worker.load < best.load:
                best = worker
        return best

    async def _worker_with_room(self) -> Worker:
        # One request at a time chooses, so that requests arriving together do not each start a worker.
        async with self._choosing:
            return self._least_busy() or await self._start_worker()

    async def _start_worker(self) -> Worker:
        wait = self._next_start - time.monotonic()
        if wait > 0:
            raise ConnectorUnavailable(
                f"The workers of '{self.command.id}' keep exiting soon after they start; "
                f"the next start is in {wait:.1f} s."
            )
        self._numbers += 1
        worker = Worker(self, self._numbers)
        try:
            await worker.start(self.command, self.environ)
        except OSError as exc:
            raise start_failure(self.command, "-", exc) from exc
        self.spawned += 1
        self.tally.spawned[self.command.connector] += 1
        self.workers.append(worker)
        return worker

    def next_start_in(self) -> float:
        """Seconds until the pool may start a worker again, after workers kept exiting early; 0 if it may now."""
        return max(self._next_start - time.monotonic(), 0.0)

    def _live(self) -> list[Worker]:
        return [worker for worker in self.workers if not worker.draining and not worker.exited.done()]

    def forget(self, worker: Worker) -> None:
        if worker not in self.workers:
            return
        self.workers.remove(worker)
        lived = time.monotonic() - worker.started
        if worker.exited.done() and worker.answered == 0 and lived < EARLY_EXIT and not worker.draining:
            self._early_exits += 1
            delay = min(BACKOFF_FIRST * 2 ** (self._early_exits - 1), BACKOFF_MAX)
            self._next_start = time.monotonic() + delay
            self.restarts += 1
            self.tally.restarts[self.command.connector] += 1
            logger.warning("The %s exited %.1f s after it started; next start in %.1f s", worker.name, lived, delay)
        elif worker.exited.done():
            self._early_exits = 0

    def retire(self, grace: float) -> None:
        """Finish the requests in the pool, running or queued, then stop: see `_close_all`.

        No new request comes to a retired pool, so its queue only shrinks; its workers, even those
        started for the queue after this call, end once it is empty.
        """
        self.retired = True
        self._retire_grace = grace
        if self.idle:
            self._close_all()

    def _close_all(self) -> None:
        """Every worker's input is closed: each exits when it is done, or is killed `_retire_grace` s later."""
        loop = asyncio.get_running_loop()
        for worker in list(self.workers):
            worker.draining = True
            worker.close_input()
            loop.call_later(self._retire_grace, worker.kill_if_running)

    @property
    def idle(self) -> bool:
        return self.room.running == 0 and self.room.waiting == 0

    @property
    def finished(self) -> bool:
        """Nothing left of the pool: no request in it, no worker alive."""
        return self.idle and not self.workers and not self.stopping

    async def shutdown(self, grace: float) -> None:
        """Close every worker's input, let them finish for `grace` seconds, then kill what is left.

        Workers being stopped already (after a timeout) count too. Killed workers are waited for, and their
        pipes read to the end, so that nothing of them is left once the event loop closes.
        """
        workers = [*self.workers, *self.stopping]
        for worker in workers:
            worker.close_input()
        exits = [worker.exited for worker in workers if worker.pid]
        if not exits:
            return
        await asyncio.wait(exits, timeout=grace)
        for worker in workers:
            if not worker.exited.done():
                signal_group(worker.pid, signal.SIGKILL)
        await asyncio.wait(exits, timeout=self.limits.kill_grace)
        reapers = [worker.reaper for worker in workers if worker.reaper is not None]
        if reapers:
            await asyncio.wait(reapers, timeout=self.limits.drain_timeout + self.limits.kill_grace)


class _Expired(Exception):
    """A request's deadline passed before its worker answered."""


def _expire(future: asyncio.Future[Any]) -> None:
    if not future.done():
        future.set_exception(_Expired())


def _request_line(request_id: str, command: Command, deadline: float, payload: bytes) -> bytes:
    # The payload is already encoded for spawn mode; it is spliced in rather than decoded and encoded again.
    head = (
        f'{{"id":{json.dumps(request_id)},"command":{_quoted(command.id)},'
        f'"deadline":{floor_to_milliseconds(deadline)!r},"timeout":{command.timeout!r},"payload":'
    )
    return b"".join((head.encode(), payload, b"}\n"))


@functools.lru_cache(maxsize=1024)
def _quoted(command_id: str) -> str:
    return json.dumps(command_id)


class Pools:
    """Every worker pool of the gateway, by pool key."""

    def __init__(self, limits: Limits, environ: Mapping[str, str]) -> None:
        self.limits = limits
        self.environ = environ
        self.pools: dict[tuple[object, ...], Pool] = {}
        self.retired: list[Pool] = []  # replaced by a reload, finishing what they hold
        self.tally = Tally()

    def of(self, command: Command) -> Pool:
        pool = self.pools.get(command.pool_key)
        if pool is None:
            pool = self.pools[command.pool_key] = Pool(command, self.limits, self.environ, self.tally)
        return pool

    def every(self) -> list[Pool]:
        """The pools serving, and those retired that are not finished yet."""
        return [*self.pools.values(), *(pool for pool in self.retired if not pool.finished)]

    async def start_eager(self, commands: list[Command]) -> None:
        for command in commands:
            if command.workers is not None and command.workers.start == "eager":
                try:
                    await self.of(command).fill()
                except ConnectorError as error:
                    logger.error("Could not start the workers of '%s': %s", command.id, error.message)

    def retire_unused(self, in_use: set[tuple[object, ...]], idle_only: bool = False) -> int:
        """Retire the pools that no served command uses any more (after a reload); the number retired.

        A request that started on a command's old definition may still open a pool for it: with
        `idle_only`, such pools are retired once they hold nothing.
        """
        retired = 0
        for key, pool in list(self.pools.items()):
            if key in in_use or (idle_only and not pool.idle):
                continue
            del self.pools[key]
            pool.retire(pool.command.timeout + self.limits.kill_grace)
            self.retired = [*(old for old in self.retired if not old.finished), pool]
            retired += 1
        return retired

    async def shutdown(self, grace: float) -> None:
        await asyncio.gather(*(pool.shutdown(grace) for pool in [*self.pools.values(), *self.retired]))
