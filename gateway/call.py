"""`connector-gateway call`: run one command from the command line, exactly as `serve` would.

The request goes through the gateway's own app, in this process and over ASGI, so
the parameter checks, environment, limits and envelope cannot differ from those
Arena gets. The app's lifespan starts worker pools and stops every child after.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, BinaryIO, TextIO
from urllib.parse import quote

from starlette.types import Message

from gateway.app import Gateway, create_app
from gateway.dispatch import PREFIX
from gateway.settings import API_KEY_HEADER, Settings

logger = logging.getLogger("gateway")


@dataclass(frozen=True)
class Outcome:
    """What the gateway answered: the outer status and the JSON body (an envelope, or a refusal)."""

    status: int
    answer: dict[str, Any]

    @property
    def refused(self) -> bool:
        """Refused before any connector ran: the answer is the protocol's minimal error."""
        return self.status != 200

    @property
    def failed(self) -> bool:
        """What Arena would count as a failed task: a refusal, an error, or an inner status of 300 or more."""
        if self.refused or self.answer.get("error") is not None:
            return True
        status = self.answer.get("command_response", {}).get("http_status", 200)
        return isinstance(status, int) and status >= 300

    @property
    def logs(self) -> list[str]:
        logs = self.answer.get("spiff__logs", [])
        return [str(line) for line in logs] if isinstance(logs, list) else []

    def summary(self, command_id: str) -> str | None:
        """One line saying why the call failed, for people; None when it succeeded."""
        error = self.answer.get("error") or {}
        code, message = error.get("error_code", "-"), error.get("message", "")
        if self.refused:
            return f"'{command_id}' was refused with status {self.status}, {code}: {message}"
        inner = self.answer.get("command_response", {}).get("http_status", 200)
        if self.answer.get("error") is not None:
            return f"'{command_id}' failed with {code} (inner status {inner}): {message}"
        if self.failed:
            return f"'{command_id}' answered with inner status {inner}, which Arena counts as a failure"
        return None


def call(settings: Settings, command_id: str, body: bytes, environ: Mapping[str, str]) -> Outcome:
    """Run `command_id` with `body` as the JSON the caller sent; the app is built and torn down around it."""
    app = create_app(settings, environ=environ)
    status, raw = asyncio.run(_call_in_lifespan(app, command_id, body))
    return Outcome(status, json.loads(raw))


async def _call_in_lifespan(app: Gateway, command_id: str, body: bytes) -> tuple[int, bytes]:
    async with app.router.lifespan_context(app):
        try:
            return await post(app, command_id, body)
        except BaseException:
            # Interrupted (Ctrl-C): the lifespan's shutdown is skipped on the way out, so the children are
            # stopped here, while the loop still watches them exit. None may outlive this process.
            await app.state.pools.shutdown(app.state.settings.limits.kill_grace)
            app.state.runner.kill_all()
            raise


async def post(app: Gateway, command_id: str, body: bytes) -> tuple[int, bytes]:
    """One `POST /v1/do/...` through the app, as the server would hand it over."""
    path = PREFIX + command_id
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    settings: Settings = app.state.settings
    if settings.api_key is not None:
        headers.append((API_KEY_HEADER.lower().encode(), settings.api_key.encode()))
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": quote(path).encode(),
        "query_string": b"",
        "root_path": "",
        "headers": headers,
        "client": ("127.0.0.1", 0),
        "server": ("127.0.0.1", settings.port),
        "state": {},
    }
    answered = asyncio.Event()
    received = False
    status = 500
    chunks: list[bytes] = []

    async def receive() -> Message:
        nonlocal received
        if not received:
            received = True
            return {"type": "http.request", "body": body, "more_body": False}
        await answered.wait()  # the caller stays until the answer is complete: no hang-up
        return {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]
        elif message["type"] == "http.response.body":
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                answered.set()

    try:
        await app(scope, receive, send)
    except Exception:
        if not answered.is_set():
            raise
        # The caller has its 500 answer already; the server would log the traceback, so this does.
        logger.error("The gateway failed while answering '%s'", path, exc_info=True)
    answered.set()
    return status, b"".join(chunks)


def run(settings: Settings, command_id: str, body: bytes, environ: Mapping[str, str], out: TextIO, err: TextIO) -> int:
    """`connector-gateway call`: the answer as JSON on `out`, its log lines and any failure on `err`.

    The exit status is 0 on success, 1 when the call was refused or Arena would count the answer a failure.
    """
    outcome = call(settings, command_id, body, environ)
    for line in outcome.logs:
        print(line, file=err)
    summary = outcome.summary(command_id)
    if summary is not None:
        print(f"connector-gateway: {summary}", file=err)
    print(json.dumps(outcome.answer, indent=2, ensure_ascii=False), file=out)
    return 1 if outcome.failed else 0


def read_parameters(argument: str | None, stdin: BinaryIO | None, stdin_is_terminal: bool, limit: int) -> bytes:
    """The request body: the argument, or stdin for '-' or when stdin is not a terminal; empty means `{}`.

    At most one byte past the gateway's limit is read, enough for it to refuse the body as too large.
    """
    if argument is not None and argument != "-":
        body = argument.encode("utf-8", "surrogateescape")  # bytes that are not UTF-8 reach the gateway as sent
    elif stdin is not None and (argument == "-" or not stdin_is_terminal):
        body = stdin.read(limit + 1)
    else:
        body = b""
    return body if body.strip() else b"{}"
