"""One handler function served in both modes of the connector protocol (docs/connector-protocol.md).

Spawn mode answers one request read on stdin; worker mode (CONNECTOR_MODE=worker) serves NDJSON until
stdin closes. Stdlib only, and cheap to import as a spawned connector does per request: no typing, no threads.
"""

from __future__ import annotations

import _thread
import json
import os
import sys
import time

TYPE_CHECKING = False
if TYPE_CHECKING:  # importing typing costs milliseconds; only the type checker needs it
    from collections.abc import Callable
    from typing import Any, BinaryIO, NoReturn

    Handler = Callable[[Any, "Context"], Any]

__all__ = ["Context", "Failure", "run"]

EXIT_FAILED, EXIT_TEMPFAIL = 1, 75
# When the connector runs by hand, without the gateway's CONNECTOR_DEADLINE.
DEFAULT_TIMEOUT = 30.0
# Whole lines on stdout and stderr, whichever thread writes them.
_OUTPUT = _thread.allocate_lock()


class Failure(Exception):
    """A failure the handler understands: connector_failed (502), or connector_unavailable (503) if temporary."""

    def __init__(self, message: str, temporary: bool = False) -> None:
        super().__init__(message)
        self.message = message
        self.temporary = temporary


class Context:
    """What a handler knows about its request besides the payload."""

    def __init__(self, command: str, request_id: str, deadline: float) -> None:
        self.command = command
        self.request_id = request_id
        self.deadline = deadline  # Unix time in seconds by which the answer must be out
        # Lines for the answer's `logs` when a worker takes several requests at once (see _serve).
        self._logs: list[str] | None = None
        self._cancelled = False

    def remaining(self) -> float:
        """Seconds left before the deadline, never below zero."""
        return max(0.0, self.deadline - time.time())

    def cancelled(self) -> bool:
        """True once the gateway has withdrawn the request (worker mode); its answer is then dropped."""
        return self._cancelled

    def log(self, line: str) -> None:
        """Writes one diagnostic line to stderr; it reaches the answer's spiff__logs. Never log credentials."""
        line = " ".join(line.splitlines())
        if self._logs is not None:
            self._logs.append(line)
        _stderr_line(line)


def run(handler: Handler) -> NoReturn:
    """Serves `handler(payload, context)`, which returns a JSON value (the body) or a version 2
    envelope, or raises Failure, in the mode the gateway chose; then exits."""
    # Answers keep a copy of stdout, and descriptor 1 and sys.stdout lead to stderr: a stray print(),
    # or a child process that inherits stdout, then writes a log line instead of corrupting an answer.
    sys.stdout.flush()
    answers = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    sys.stdout = sys.stderr

    if os.environ.get("CONNECTOR_MODE") == "worker":
        sys.exit(_serve(handler, answers))
    sys.exit(_answer_once(handler, answers))


def _answer_once(handler: Handler, answers: BinaryIO) -> int:
    """Spawn mode: one payload on stdin, the answer on stdout, the outcome in the exit status."""
    environ = os.environ
    deadline = _deadline(environ.get("CONNECTOR_DEADLINE"))
    context = Context(environ.get("CONNECTOR_COMMAND", ""), environ.get("CONNECTOR_REQUEST_ID", ""), deadline)
    try:
        payload = json.load(sys.stdin.buffer)
    except ValueError as error:
        _stderr_line(f"Stdin is not one JSON value: {error}")
        return EXIT_FAILED

    try:
        text = _dumps(handler(payload, context))
    except Failure as failure:
        _stderr_line(failure.message)
        return EXIT_TEMPFAIL if failure.temporary else EXIT_FAILED
    except Exception as error:
        _stderr_line(_describe(error))
        return EXIT_FAILED

    answers.write(text.encode() + b"\n")
    answers.flush()
    return 0


def _serve(handler: Handler, answers: BinaryIO) -> int:
    """Worker mode: requests and cancellations on stdin, answers on stdout, until stdin closes."""
    from concurrent.futures import ThreadPoolExecutor

    concurrency = max(1, int(os.environ.get("CONNECTOR_CONCURRENCY") or 1))
    in_flight: dict[str, Context] = {}

    def answer(context: Context, payload: Any) -> None:
        try:
            if not context.cancelled():
                _send(answers, context, {"result": handler(payload, context)})
        except Failure as failure:
            _send(answers, context, {"failed": failure.message, "temporary": failure.temporary})
        except Exception as error:
            _send(answers, context, {"failed": _describe(error)})
        finally:
            in_flight.pop(context.request_id, None)

    with ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="connector") as pool:
        for line in sys.stdin.buffer:
            request = _parse(line)
            if request is None:
                continue
            if "cancel" in request:
                cancelled = in_flight.get(request["cancel"])  # None if already answered
                if cancelled is not None:
                    cancelled._cancelled = True
                continue

            context = Context(str(request.get("command", "")), request["id"], _deadline(request.get("deadline")))
            if concurrency > 1:  # the gateway cannot tell whose stderr line is whose
                context._logs = []
            in_flight[context.request_id] = context
            pool.submit(answer, context, request.get("payload"))
    return 0


def _parse(line: bytes) -> dict[str, Any] | None:
    """A request or a cancellation read from stdin; None, and a line on stderr, for anything else."""
    try:
        request = json.loads(line)
        problem = "no string 'id' or 'cancel'"
    except ValueError as error:
        request, problem = None, _describe(error)
    if isinstance(request, dict) and isinstance(request.get("id", request.get("cancel")), str):
        return request
    _stderr_line(f"Ignored a line on stdin that is not a request ({problem}).")
    return None


def _send(answers: BinaryIO, context: Context, outcome: dict[str, Any]) -> None:
    """Writes one answer line, unless the request was cancelled: the gateway would ignore it."""
    logs = {"logs": context._logs} if context._logs else {}
    try:
        line = _dumps({"id": context.request_id, **outcome, **logs})
    except Exception as error:  # a result that is not JSON
        line = _dumps({"id": context.request_id, "failed": _describe(error), **logs})
    with _OUTPUT:
        if not context.cancelled():
            answers.write(line.encode() + b"\n")
            answers.flush()


def _deadline(value: str | float | None) -> float:
    """The gateway's deadline in Unix seconds, or the default one when the connector runs by hand."""
    return float(value) if value else time.time() + DEFAULT_TIMEOUT


def _dumps(value: Any) -> str:
    return json.dumps(value, allow_nan=False)  # NaN is not JSON: refuse it here, not at the gateway


def _describe(error: BaseException) -> str:
    """The error's type and message: never its traceback's locals, never the payload."""
    return f"{type(error).__name__}: {error}"


def _stderr_line(line: str) -> None:
    with _OUTPUT:
        sys.stderr.write(line + "\n")
        sys.stderr.flush()
