"""The HTTP surface: spiff-arena's connector-proxy routes, built by `create_app`."""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import html
import json
import logging
import os
import sys
import time
import uuid
from collections.abc import AsyncIterator, Coroutine, Iterator, Mapping
from typing import Any, TypeVar

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway import envelope
from gateway.admission import Admission
from gateway.errors import (
    BodyTooLarge,
    CommandNotFound,
    ConnectorError,
    ConnectorFailed,
    ConnectorUnavailable,
    InternalError,
    InvalidBody,
    InvalidOutput,
    RequestError,
    Saturated,
    UnsupportedMediaType,
)
from gateway.manifest import Command
from gateway.params import prepare_payload, secret_values
from gateway.redact import Redactor
from gateway.registry import Registry, load_registry
from gateway.runner import Runner
from gateway.settings import API_KEY_HEADER, Settings
from gateway.workers import Pools

logger = logging.getLogger("gateway")
access_logger = logging.getLogger("gateway.access")

UNAUTHORIZED = {"error": "Unauthorized"}

_T = TypeVar("_T")


def create_app(
    settings: Settings, registry: Registry | None = None, environ: Mapping[str, str] | None = None
) -> Starlette:
    """The gateway as an ASGI app. `environ` is the gateway's environment, read by manifests' env and inherit_env."""
    environ = os.environ if environ is None else environ
    if registry is None:
        registry = load_registry(settings.manifest_dirs, settings.default_timeout, environ)
        log_registry(registry)

    app = Starlette(
        routes=[
            Route("/liveness", liveness),
            Route("/v1/liveness", liveness),
            Route("/v1/commands", list_commands),
            Route("/v1/auths", list_auths),
            Route("/v1/do/{connector}/{command}", do_command, methods=["POST"]),
            Route("/v1/auth/{connector}/{auth}", start_auth),
        ],
        middleware=[
            Middleware(AccessLog),
            Middleware(ApiKeyCheck, api_key=settings.api_key),
        ],
        exception_handlers={
            RequestError: request_error,
            CallerGone: caller_gone,
            ClientDisconnect: caller_gone,
            HTTPException: http_error,
            Exception: internal_error,
        },
        lifespan=_lifespan,
    )
    app.router.redirect_slashes = False  # a 307 is no answer Arena can use
    app.state.settings = settings
    app.state.registry = registry
    app.state.runner = Runner(settings.limits, environ)
    app.state.pools = Pools(settings.limits, environ)
    app.state.admission = Admission(settings.admission)
    return app


@contextlib.asynccontextmanager
async def _lifespan(app: Starlette) -> AsyncIterator[None]:
    with _pidfd_child_watcher():
        pools: Pools = app.state.pools
        await pools.start_eager(list(app.state.registry.commands.values()))
        yield
        await _stop_children(app)


async def _stop_children(app: Starlette) -> None:
    # Requests still running past the server's graceful shutdown were cancelled; their children must not outlive us.
    await app.state.pools.shutdown(app.state.settings.limits.kill_grace)
    app.state.runner.kill_all()


@contextlib.contextmanager
def _pidfd_child_watcher() -> Iterator[None]:
    """On Python 3.11, learn of child exits from pidfds rather than from a thread per child.

    It spawns markedly faster under load; Python 3.12 and later do this by themselves.
    """
    if sys.version_info >= (3, 12) or not hasattr(os, "pidfd_open"):
        yield
        return
    previous = asyncio.get_child_watcher()
    watcher = asyncio.PidfdChildWatcher()
    watcher.attach_loop(asyncio.get_running_loop())
    asyncio.set_child_watcher(watcher)
    try:
        yield
    finally:
        asyncio.set_child_watcher(previous)


def app_from_environment() -> Starlette:
    """The app of one of several gateway processes (`serve --workers N`), set up from the environment."""
    from gateway.cli import configure_logging

    settings = Settings.from_env()
    configure_logging(settings.log_level)
    return create_app(settings)


def log_registry(registry: Registry) -> None:
    for manifest in registry.manifests:
        logger.info("Loaded manifest '%s': %d commands", manifest.path, len(manifest.commands))
        for warning in manifest.warnings:
            logger.warning("Manifest '%s': %s", manifest.path, warning)
    for failure in registry.failures:
        logger.error("%s\nThis manifest is skipped; the others are served.", failure)
    logger.info("Serving %d commands and %d auth handlers", len(registry.commands), len(registry.auths))


async def liveness(request: Request) -> Response:
    return JSONResponse({"ok": True})


async def list_commands(request: Request) -> Response:
    return Response(request.app.state.registry.commands_json, media_type="application/json")


async def list_auths(request: Request) -> Response:
    return Response(request.app.state.registry.auths_json, media_type="application/json")


async def do_command(request: Request) -> Response:
    settings: Settings = request.app.state.settings
    registry: Registry = request.app.state.registry
    connector, name = request.path_params["connector"], request.path_params["command"]
    request.state.command = f"{connector}/{name}"

    # Everything that can refuse the request comes before any process starts.
    command = registry.find(connector, name)
    if command is None:
        raise _not_found(f"{connector}/{name}")
    _check_media_type(request)
    body = await _read_json_object(request, settings.max_body_bytes)
    payload = prepare_payload(command, body)
    stdin = _encode(payload)
    redact = Redactor([*command.secret_values, *secret_values(command, payload)])

    request_id: str = request.state.request_id
    admission: Admission = request.app.state.admission
    async with admission.slot(command):
        answer = await _until_disconnected(request, _execute(request, command, stdin, redact))
    if answer is None:
        logger.info("[%s] %s: the caller went away; its connector was stopped", request_id, command.id)
        raise CallerGone()
    return Response(answer, media_type="application/json")


async def _execute(request: Request, command: Command, stdin: bytes, redact: Redactor) -> bytes:
    """Run the command and shape its outcome, success or failure, as an encoded version 2 envelope."""
    request_id: str = request.state.request_id
    try:
        answer, logs = await _dispatch(request, command, stdin, redact)
        encoded = _encode_answer(answer, command.id, logs)
    except ConnectorError as error:
        logger.warning("[%s] %s failed: %s %s", request_id, command.id, error.code, error.message)
        request.state.error_code = error.code
        return _encode_answer(envelope.failure(error), command.id, [])
    if answer["error"] is not None:
        request.state.error_code = answer["error"].get("error_code")
    return encoded


async def _dispatch(
    request: Request, command: Command, stdin: bytes, redact: Redactor
) -> tuple[dict[str, Any], list[str]]:
    """The envelope from a spawned process or from a worker, with the logs that came with it."""
    request_id: str = request.state.request_id
    if command.workers is None:
        runner: Runner = request.app.state.runner
        finished = await runner.run(command, stdin, request_id, redact)
        return envelope.from_output(finished, command.id, redact), finished.stderr.logs()

    pools: Pools = request.app.state.pools
    answer = await pools.of(command).run(command, stdin, request_id, redact)
    logs = [redact(line) for line in answer.logs]
    if answer.failed is not None:
        failure = ConnectorUnavailable if answer.temporary else ConnectorFailed
        raise failure(f"The connector for '{command.id}' failed: {redact(answer.failed)}", logs)
    return envelope.from_value(answer.result, logs, command.id, redact), logs


def _encode_answer(answer: dict[str, Any], command_id: str, logs: list[str]) -> bytes:
    # Encoded here, not by the response: a connector's JSON can be valid yet unencodable, nested
    # deeper than the encoder recurses or holding a lone surrogate escape, and that is its fault.
    try:
        return json.dumps(answer, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode()
    except (RecursionError, UnicodeEncodeError) as exc:
        reason = "it nests too deeply" if isinstance(exc, RecursionError) else "it holds a lone surrogate escape"
        raise InvalidOutput(
            f"The connector for '{command_id}' printed JSON that cannot be sent on: {reason}.", logs
        ) from None


async def _until_disconnected(request: Request, work: Coroutine[Any, Any, _T]) -> _T | None:
    """The work's result, or None once the caller has hung up: then the work is cancelled."""
    task = asyncio.current_task()
    assert task is not None
    watcher = asyncio.ensure_future(_caller_gone(request))
    watcher.add_done_callback(lambda done: task.cancel() if not done.cancelled() else None)
    try:
        return await work
    except asyncio.CancelledError:
        if watcher.done() and not watcher.cancelled():
            task.uncancel()  # the cancellation was ours, for the hang-up: it ends here
            return None
        raise
    finally:
        watcher.cancel()


async def _caller_gone(request: Request) -> None:
    # The body has been read, so the next message the server sends is the disconnect.
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def start_auth(request: Request) -> Response:
    auth_id = f"{request.path_params['connector']}/{request.path_params['auth']}"
    registry: Registry = request.app.state.registry
    if auth_id not in registry.auths:
        return _page(404, "Unknown authentication handler", f"No handler '{auth_id}' is declared here.")
    return _page(
        501,
        "Sign-in not supported yet",
        f"The handler '{auth_id}' is declared, but this gateway does not run browser sign-in flows yet. "
        "Store the token set in Arena as a secret by hand for now.",
    )


class CallerGone(Exception):
    """The caller hung up: there is no one left to answer."""


async def caller_gone(request: Request, exc: Exception) -> Response:
    request.state.error_code = "caller_gone"
    # Never sent; the status only tells the access log what happened, as nginx's 499 does.
    return Response(status_code=499)


async def request_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestError)
    request.state.error_code = exc.code
    headers = {"Retry-After": str(exc.retry_after)} if isinstance(exc, Saturated) else None
    return JSONResponse(envelope.protocol_error(exc), status_code=exc.status, headers=headers)


async def http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    path: str = request.scope["path"]  # as decoded by the server: request.url drops control characters
    if exc.status_code == 404 and path.startswith("/v1/do/"):
        return await request_error(request, _not_found(path.removeprefix("/v1/do/")))
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "bad_request")
    body = {"command_response": {}, "error": {"error_code": code, "message": exc.detail}}
    return JSONResponse(body, status_code=exc.status_code, headers=exc.headers)


async def internal_error(request: Request, exc: Exception) -> Response:
    """An unexpected fault still gets an answer Arena can read; the server logs the traceback."""
    request_id = request.scope.get("state", {}).get("request_id", "-")
    logger.error("[%s] internal error on %s %s: %r", request_id, request.method, request.url.path, exc)
    error = InternalError(f"The gateway failed unexpectedly; its log has the details under request id {request_id}.")
    # Sent from outside the middleware stack, so the request id header is added here.
    headers = {"x-request-id": request_id}
    return JSONResponse(envelope.protocol_error(error), status_code=error.status, headers=headers)


def _not_found(command_id: str) -> CommandNotFound:
    return CommandNotFound(f"No command '{command_id}' is served here; GET /v1/commands lists the commands.")


def _encode(payload: dict[str, Any]) -> bytes:
    try:
        return json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode()
    except UnicodeEncodeError:
        # JSON's \uXXXX escapes can spell half of a surrogate pair, which is no character at all.
        raise InvalidBody("The request body holds a lone surrogate escape (such as \\ud800), not text.") from None


def _check_media_type(request: Request) -> None:
    media_type = request.headers.get("content-type", "").partition(";")[0].strip().lower()
    if media_type != "application/json" and not media_type.endswith("+json"):
        shown = f"'{media_type}'" if media_type else "none"
        raise UnsupportedMediaType(f"The request body must be sent as Content-Type application/json, got {shown}.")


async def _read_json_object(request: Request, limit: int) -> dict[str, Any]:
    declared = request.headers.get("content-length", "")
    if declared.isascii() and declared.isdigit() and int(declared) > limit:
        raise _too_large(limit)
    raw = bytearray()
    async for chunk in request.stream():
        raw += chunk
        if len(raw) > limit:
            raise _too_large(limit)

    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidBody(f"The request body is not UTF-8 text (invalid byte at position {exc.start}).") from None
    try:
        body = json.loads(text, parse_constant=_reject_constant)
    except RecursionError:
        raise InvalidBody("The request body is nested too deeply.") from None
    except ValueError as exc:
        raise InvalidBody(f"The request body is not valid JSON: {exc}.") from None
    if not isinstance(body, dict):
        raise InvalidBody(f"The request body must be a JSON object of parameters, got {_kind(body)}.")
    return body


def _too_large(limit: int) -> BodyTooLarge:
    return BodyTooLarge(f"The request body is larger than the gateway's limit of {limit} bytes.")


def _kind(value: Any) -> str:
    return {list: "an array", str: "a string", bool: "a boolean", type(None): "null"}.get(type(value), "a number")


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON value")


def _page(status: int, title: str, text: str) -> HTMLResponse:
    content = (
        "<!doctype html><html><head><meta charset='utf-8'>"
        f"<title>{html.escape(title)}</title></head>"
        f"<body><h1>{html.escape(title)}</h1><p>{html.escape(text)}</p></body></html>"
    )
    return HTMLResponse(content, status_code=status)


class ApiKeyCheck:
    """Arena's shared secret: every /v1 route but liveness and the browser's auth route needs it."""

    def __init__(self, app: ASGIApp, api_key: str | None) -> None:
        self.app = app
        self.api_key = api_key.encode() if api_key is not None else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.api_key is None or scope["type"] != "http" or not _gated(scope):
            await self.app(scope, receive, send)
            return
        sent = [value for name, value in scope["headers"] if name.decode("latin-1").lower() == API_KEY_HEADER.lower()]
        if len(sent) == 1 and hmac.compare_digest(sent[0], self.api_key):
            await self.app(scope, receive, send)
            return
        scope.setdefault("state", {})["error_code"] = "unauthorized"
        await JSONResponse(UNAUTHORIZED, status_code=401)(scope, receive, send)


def _gated(scope: Scope) -> bool:
    path: str = scope["path"]
    if scope["method"] == "OPTIONS" or path in ("/liveness", "/v1/liveness"):
        return False
    return path.startswith("/v1/") and not path.startswith("/v1/auth/")


class AccessLog:
    """One line per request: request id, method, path, status, command, error code, duration."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        request_id = uuid.uuid4().hex
        state = scope.setdefault("state", {})
        state["request_id"] = request_id
        status = 500

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", []), (b"x-request-id", request_id.encode())]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            access_logger.info(
                "%s %s %s %d command=%s error=%s %.1fms",
                request_id,
                scope["method"],
                _printable(scope["path"]),
                status,
                _printable(state.get("command", "-")),
                state.get("error_code", "-"),
                (time.perf_counter() - started) * 1000,
            )


def _printable(text: str) -> str:
    """Text from the caller, with line breaks and other controls escaped: it cannot forge a log line."""
    return text if text.isprintable() else text.encode("unicode_escape").decode("ascii")
