"""`POST /v1/do/{connector}/{command}`: one command run for Arena, from request body to envelope.

This is the route every service task takes, so it is served as a plain ASGI
function rather than through Starlette's routing, request and response objects:
in worker mode the gateway's own work per request is most of the cost.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import unquote

from starlette.types import Receive, Scope, Send

from gateway import envelope
from gateway.admission import BodyHold
from gateway.errors import (
    BodyTooLarge,
    CommandNotFound,
    ConnectorError,
    ConnectorFailed,
    ConnectorUnavailable,
    InvalidBody,
    InvalidOutput,
    RequestError,
    Saturated,
    UnsupportedMediaType,
)
from gateway.jsonlimits import FINITE_JSON, NotFinite
from gateway.manifest import Command
from gateway.params import prepare_payload, secret_values
from gateway.redact import Redactor

if TYPE_CHECKING:
    from starlette.datastructures import State

    from gateway.registry import Registry
    from gateway.settings import Settings

logger = logging.getLogger("gateway")

PREFIX = "/v1/do/"
# How long a run goes before its caller is watched for a hang-up (see `HangUps`).
WATCH_AFTER = 0.05
# Command names from callers are cut to this many characters in messages and log lines.
SHOWN_NAME = 200

_T = TypeVar("_T")
_JSON_HEADER = (b"content-type", b"application/json")


class CallerGone(Exception):
    """The caller hung up: there is no one left to answer."""


class Dispatcher:
    """Serves `/v1/do`: finds the command, checks the body, runs it and answers with an envelope."""

    def __init__(self, state: State) -> None:
        # The app's state, read on every request: the registry in it may be replaced while serving.
        self.state = state
        self.hang_ups = HangUps()

    async def __call__(self, scope: Scope, receive: Receive, send: Send, headers: list[tuple[bytes, bytes]]) -> int:
        """Answer the request and return the status sent (499 when the caller left first).

        `headers` go on the answer; `scope["state"]` receives `command` and `error_code` for the access log.
        """
        state: dict[str, Any] = scope["state"]
        held = self.state.bodies.hold()
        try:
            body = await self._run(scope, receive, state, held)
        except RequestError as error:
            state["error_code"] = error.code
            if isinstance(error, Saturated):
                headers = [*headers, (b"retry-after", str(error.retry_after).encode())]
            await send_json(send, error.status, envelope.encode(envelope.protocol_error(error)), headers)
            return error.status
        except CallerGone:
            state["error_code"] = "caller_gone"
            return 499  # nobody to send it to; the access log shows it, as nginx's 499 does
        finally:
            held.release()
        await send_json(send, 200, body, headers)
        return 200

    async def _run(self, scope: Scope, receive: Receive, state: dict[str, Any], held: BodyHold) -> bytes:
        registry: Registry = self.state.registry
        settings: Settings = self.state.settings
        request_id: str = state["request_id"]
        asked = _asked(scope)
        connector, _, name = asked.partition("/")
        well_formed = connector != "" and name != "" and "/" not in name
        if well_formed:
            state["command"] = asked

        # Everything that can refuse the request comes before any process starts.
        command = registry.find(connector, name) if well_formed else None
        if command is None:
            raise not_found(asked)
        state["command_id"] = command.id
        _check_media_type(scope["headers"])
        body = await _read_json_object(scope["headers"], receive, settings.max_body_bytes, held)
        payload = prepare_payload(command, body)
        stdin = _encode(payload)
        secrets = secret_values(command, payload)
        redact = Redactor([*command.secret_values, *secrets]) if secrets else command.redact

        # The caller is watched from here on: one that hangs up while queued for a slot is never run.
        answer = await self.hang_ups.run(receive, self._execute(command, stdin, redact, state))
        if answer is None:
            if state.get("running"):
                logger.info("[%s] %s: the caller went away; its connector was stopped", request_id, command.id)
            else:
                logger.info("[%s] %s: the caller went away while queued; nothing was run", request_id, command.id)
            raise CallerGone()
        return answer

    async def _execute(self, command: Command, stdin: bytes, redact: Redactor, state: dict[str, Any]) -> bytes:
        """Wait for a run slot, run the command and shape its outcome, success or failure, as an encoded envelope."""
        async with self.state.admission.slot(command):
            state["running"] = True
            return await self._outcome(command, stdin, redact, state)

    async def _outcome(self, command: Command, stdin: bytes, redact: Redactor, state: dict[str, Any]) -> bytes:
        try:
            answer, logs = await self._dispatch(command, stdin, redact, state["request_id"])
            encoded = _encode_answer(answer, command.id, logs)
        except ConnectorError as error:
            logger.warning("[%s] %s failed: %s %s", state["request_id"], command.id, error.code, error.message)
            state["error_code"] = error.code
            return _encode_answer(envelope.failure(error), command.id, [])
        if answer["error"] is not None:
            state["error_code"] = answer["error"].get("error_code")
        return encoded

    async def _dispatch(
        self, command: Command, stdin: bytes, redact: Redactor, request_id: str
    ) -> tuple[dict[str, Any], list[str]]:
        """The envelope from a spawned process or from a worker, with the logs that came with it."""
        if command.workers is None:
            finished = await self.state.runner.run(command, stdin, request_id, redact)
            return envelope.from_output(finished, command.id, redact), finished.stderr.logs()

        answer = await self.state.pools.of(command).run(command, stdin, request_id, redact)
        logs = [redact(line) for line in answer.logs] if answer.logs else answer.logs
        if answer.failed is not None:
            failure = ConnectorUnavailable if answer.temporary else ConnectorFailed
            raise failure(f"The connector for '{command.id}' failed: {redact(answer.failed)}", logs)
        return envelope.from_value(answer.result, logs, command.id, redact), logs


def not_found(command_id: str) -> CommandNotFound:
    return CommandNotFound(f"No command '{cut(command_id)}' is served here; GET /v1/commands lists the commands.")


def cut(name: str) -> str:
    """A name from the caller, cut to `SHOWN_NAME` characters for messages and logs."""
    return name if len(name) <= SHOWN_NAME else name[:SHOWN_NAME] + "…"


def _asked(scope: Scope) -> str:
    """The `{connector}/{command}` part of the path, decoded.

    Only a slash as sent separates the two: an encoded one (`%2F`) is part of a name, so it is
    shown as sent, and no command has such a name.
    """
    path: str = scope["path"]
    raw: bytes | None = scope.get("raw_path")
    if raw is None or b"%" not in raw or b"%2f" not in raw.lower():
        return path[len(PREFIX) :]
    segments = (unquote(segment).replace("/", "%2F") for segment in raw.decode("latin-1").split("/"))
    return "/".join(segments).removeprefix(PREFIX)


async def send_json(send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]]) -> None:
    start = [(b"content-length", str(len(body)).encode()), _JSON_HEADER, *headers]
    await send({"type": "http.response.start", "status": status, "headers": start})
    await send({"type": "http.response.body", "body": body})


def _encode_answer(answer: dict[str, Any], command_id: str, logs: list[str]) -> bytes:
    # Encoded here, not by the response: a connector's JSON can be valid yet unencodable, nested
    # deeper than the encoder recurses or holding a lone surrogate escape, and that is its fault.
    try:
        return envelope.encode(answer)
    except (RecursionError, UnicodeEncodeError) as exc:
        why = "it nests too deeply" if isinstance(exc, RecursionError) else "it holds a lone surrogate escape"
        raise InvalidOutput(
            f"The connector for '{command_id}' printed JSON that cannot be sent on: {why}.", logs
        ) from None


class HangUps:
    """Cancels the runs whose callers hung up, also while they wait for a run slot.

    Watching a caller costs a task, and most runs end within milliseconds: so a run is watched
    only once it has lasted `WATCH_AFTER` (up to twice that), all by one timer. A hang-up before
    then is seen as soon as the watch starts, as its disconnect message is waiting.
    """

    def __init__(self) -> None:
        self.young: dict[asyncio.Task[Any], Receive] = {}  # started since the last sweep
        self.aging: dict[asyncio.Task[Any], Receive] = {}  # started in the interval before
        self.watchers: dict[asyncio.Task[Any], asyncio.Future[None]] = {}
        self._sweep_on: asyncio.AbstractEventLoop | None = None

    async def run(self, receive: Receive, work: Coroutine[Any, Any, _T]) -> _T | None:
        """The work's result, or None once the caller has hung up: then the work is cancelled."""
        loop = asyncio.get_running_loop()
        task = asyncio.current_task(loop)
        assert task is not None
        self.young[task] = receive
        if self._sweep_on is not loop:
            self._schedule_sweep(loop)
        try:
            return await work
        except asyncio.CancelledError:
            watcher = self.watchers.get(task)
            if watcher is not None and watcher.done() and not watcher.cancelled():
                task.uncancel()  # the cancellation was ours, for the hang-up: it ends here
                return None
            raise
        finally:
            self.young.pop(task, None)
            self.aging.pop(task, None)
            watcher = self.watchers.pop(task, None)
            if watcher is not None:
                watcher.cancel()

    def _schedule_sweep(self, loop: asyncio.AbstractEventLoop) -> None:
        self._sweep_on = loop
        loop.call_later(WATCH_AFTER, self._sweep, loop)

    def _sweep(self, loop: asyncio.AbstractEventLoop) -> None:
        self._sweep_on = None
        for task, receive in self.aging.items():
            watcher = asyncio.ensure_future(_caller_gone(receive))
            watcher.add_done_callback(functools.partial(_cancel_unless_cancelled, task))
            self.watchers[task] = watcher
        self.aging, self.young = self.young, {}
        if self.aging:
            self._schedule_sweep(loop)


def _cancel_unless_cancelled(task: asyncio.Task[Any], watcher: asyncio.Future[None]) -> None:
    if not watcher.cancelled():
        task.cancel()


async def _caller_gone(receive: Receive) -> None:
    # The body has been read, so the next message the server sends is the disconnect.
    while (await receive())["type"] != "http.disconnect":
        pass


def _encode(payload: dict[str, Any]) -> bytes:
    try:
        return envelope.encode(payload)
    except RecursionError:
        # The decoder took it, a few calls higher up the stack; the encoder needs those few more.
        raise InvalidBody("The request body is nested too deeply.") from None
    except UnicodeEncodeError:
        # JSON's \uXXXX escapes can spell half of a surrogate pair, which is no character at all.
        raise InvalidBody("The request body holds a lone surrogate escape (such as \\ud800), not text.") from None


def _header(headers: list[tuple[bytes, bytes]], name: bytes) -> str:
    for key, value in headers:
        if key.lower() == name:
            return value.decode("latin-1")
    return ""


def _check_media_type(headers: list[tuple[bytes, bytes]]) -> None:
    media_type = _header(headers, b"content-type").partition(";")[0].strip().lower()
    if media_type != "application/json" and not media_type.endswith("+json"):
        shown = f"'{media_type}'" if media_type else "none"
        raise UnsupportedMediaType(f"The request body must be sent as Content-Type application/json, got {shown}.")


async def _read_json_object(
    headers: list[tuple[bytes, bytes]], receive: Receive, limit: int, held: BodyHold
) -> dict[str, Any]:
    declared = _header(headers, b"content-length")
    if declared.isascii() and declared.isdigit():
        if int(declared) > limit:
            raise _too_large(limit)
        held.cover(int(declared))
    raw = await _read_body(receive, limit, held)

    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidBody(f"The request body is not UTF-8 text (invalid byte at position {exc.start}).") from None
    try:
        body = FINITE_JSON.decode(text)
    except RecursionError:
        raise InvalidBody("The request body is nested too deeply.") from None
    except ValueError as exc:
        if isinstance(exc, NotFinite) and not exc.literal:
            raise InvalidBody(
                "The request body holds a number too large for a double-precision float (such as 1e400)."
            ) from None
        raise InvalidBody(f"The request body is not valid JSON: {exc}.") from None
    if not isinstance(body, dict):
        raise InvalidBody(f"The request body must be a JSON object of parameters, got {_kind(body)}.")
    return body


async def _read_body(receive: Receive, limit: int, held: BodyHold) -> bytes:
    message = await receive()
    if message["type"] == "http.disconnect":
        raise CallerGone()
    raw: bytes = message.get("body", b"")
    if not message.get("more_body", False):  # the whole body in one message: nearly every request
        if len(raw) > limit:
            raise _too_large(limit)
        held.cover(len(raw))
        return raw
    chunks = bytearray(raw)
    held.cover(len(chunks))
    while message.get("more_body", False):
        message = await receive()
        if message["type"] == "http.disconnect":
            raise CallerGone()
        chunks += message.get("body", b"")
        if len(chunks) > limit:
            raise _too_large(limit)
        held.cover(len(chunks))
    return bytes(chunks)


def _too_large(limit: int) -> BodyTooLarge:
    return BodyTooLarge(f"The request body is larger than the gateway's limit of {limit} bytes.")


def _kind(value: Any) -> str:
    return {list: "an array", str: "a string", bool: "a boolean", type(None): "null"}.get(type(value), "a number")
