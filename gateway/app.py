"""The HTTP surface: spiff-arena's connector-proxy routes, built by `create_app`."""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hmac
import html
import itertools
import logging
import os
import re
import secrets
import sys
import time
from collections.abc import AsyncIterator, Iterator, Mapping
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route
from starlette.types import Message, Receive, Scope, Send

from gateway import envelope
from gateway.admission import Admission, BodyBudget
from gateway.dispatch import PREFIX, Dispatcher, cut, not_found, send_json
from gateway.errors import InternalError, RequestError, Saturated
from gateway.logs import AccessLog, configure_logging
from gateway.metrics import NO_COMMAND, NO_ERROR, RequestMetrics, process_gauges, render
from gateway.orphans import reaping
from gateway.registry import Registry, load_registry
from gateway.reload import Reloader, on_sighup
from gateway.runner import Runner
from gateway.settings import API_KEY_HEADER, Settings
from gateway.status_page import render_page
from gateway.workers import Pools

logger = logging.getLogger("gateway")
access_log = AccessLog()

UNAUTHORIZED = b'{"error":"Unauthorized"}'


def create_app(
    settings: Settings,
    registry: Registry | None = None,
    environ: Mapping[str, str] | None = None,
    *,
    reap_orphans: bool = False,
) -> Gateway:
    """The gateway as an ASGI app. `environ` is the gateway's environment, read by manifests' env and inherit_env.

    `reap_orphans` is for a server process of its own: it adopts every process its connectors leave running
    outside their process groups, and kills it (see `gateway.orphans`). Any other child of the process in
    another session, not started by the gateway, would be killed too.
    """
    environ = os.environ if environ is None else environ
    if registry is None:
        registry = load_registry(
            settings.manifest_dirs, settings.default_timeout, environ, max_wait=settings.admission.max_wait
        )
        log_registry(registry)

    app = Gateway(
        routes=[
            Route("/liveness", liveness),
            Route("/v1/liveness", liveness),
            Route("/v1/commands", list_commands),
            Route("/v1/auths", list_auths),
            Route("/v1/do/{connector}/{command}", _dispatched_elsewhere, methods=["POST"]),
            Route("/v1/auth/{connector}/{auth}", start_auth),
            Route("/metrics", metrics),
            Route("/openapi.json", openapi_document),
            Route("/", status_page),
        ],
        exception_handlers={
            RequestError: request_error,
            HTTPException: http_error,
            Exception: internal_error,
        },
        lifespan=_lifespan,
    )
    app.router.redirect_slashes = False  # a 307 is no answer Arena can use
    app.state.settings = settings
    app.state.environ = environ
    app.state.reap_orphans = reap_orphans
    app.state.registry = registry
    app.state.runner = Runner(settings.limits, environ)
    app.state.pools = Pools(settings.limits, environ)
    app.state.admission = Admission(settings.admission)
    app.state.bodies = BodyBudget(settings.max_buffered_body_bytes)
    app.api_key = settings.api_key.encode() if settings.api_key is not None else None
    app.metrics_need_key = settings.metrics_need_key
    app.dispatcher = Dispatcher(app.state)
    return app


@contextlib.asynccontextmanager
async def _lifespan(app: Starlette) -> AsyncIterator[None]:
    with _pidfd_child_watcher(), reaping(app.state.reap_orphans):
        pools: Pools = app.state.pools
        await pools.start_eager(list(app.state.registry.commands.values()))
        reloader = app.state.reloader = Reloader(app.state, app.state.environ)
        watching = asyncio.ensure_future(reloader.watch()) if app.state.settings.reload else None
        with on_sighup(reloader):
            yield
        if watching is not None:
            watching.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watching
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
    settings = Settings.from_env()
    configure_logging(settings.log_level, settings.log_format)
    return create_app(settings, reap_orphans=True)


def log_registry(registry: Registry) -> None:
    for manifest in registry.manifests:
        logger.info("Loaded manifest '%s': %d commands", manifest.path, len(manifest.commands))
        for warning in manifest.warnings:
            logger.warning("Manifest '%s': %s", manifest.path, warning)
    for failure in registry.failures:
        logger.error("%s\nThis manifest is skipped; the others are served.", failure)
    logger.info("Serving %d commands and %d auth handlers", len(registry.commands), len(registry.auths))


async def _dispatched_elsewhere(request: Request) -> Response:
    # Declared so that other methods get 405; POST is served by `Gateway.__call__` before routing.
    raise AssertionError("POST /v1/do is served by the dispatcher")


async def liveness(request: Request) -> Response:
    return JSONResponse({"ok": True})


async def list_commands(request: Request) -> Response:
    return Response(request.app.state.registry.commands_json, media_type="application/json")


async def openapi_document(request: Request) -> Response:
    return Response(request.app.state.registry.openapi_json, media_type="application/json")


async def metrics(request: Request) -> Response:
    app: Gateway = request.app
    text = render(app.metrics, process_gauges(app.state, len(app.ids.in_flight)))
    return Response(text, media_type="text/plain; version=0.0.4; charset=utf-8")


async def status_page(request: Request) -> Response:
    app: Gateway = request.app
    page = render_page(app.state.registry, app.metrics, app.state.pools, app.started, app.api_key is not None)
    return HTMLResponse(page, headers={"cache-control": "no-store"})


async def list_auths(request: Request) -> Response:
    return Response(request.app.state.registry.auths_json, media_type="application/json")


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


async def request_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestError)
    request.state.error_code = exc.code
    headers = {"Retry-After": str(exc.retry_after)} if isinstance(exc, Saturated) else None
    return JSONResponse(envelope.protocol_error(exc), status_code=exc.status, headers=headers)


async def http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    path: str = request.scope["path"]  # as decoded by the server: request.url drops control characters
    if exc.status_code == 404 and path.startswith("/v1/do/"):
        return await request_error(request, not_found(path.removeprefix(PREFIX)))
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "bad_request")
    request.state.error_code = code
    body = {"command_response": {}, "error": {"error_code": code, "message": exc.detail}}
    return JSONResponse(body, status_code=exc.status_code, headers=exc.headers)


async def internal_error(request: Request, exc: Exception) -> Response:
    """An unexpected fault still gets an answer Arena can read; the server logs the traceback."""
    request_id = request.scope.get("state", {}).get("request_id", "-")
    request.state.error_code = InternalError.code
    logger.error("[%s] internal error on %s %s: %r", request_id, request.method, _printable(cut(request.url.path)), exc)
    return JSONResponse(envelope.protocol_error(_internal_error(request_id)), status_code=500)


def _internal_error(request_id: str) -> InternalError:
    return InternalError(f"The gateway failed unexpectedly; its log has the details under request id {request_id}.")


def _page(status: int, title: str, text: str) -> HTMLResponse:
    content = (
        "<!doctype html><html><head><meta charset='utf-8'>"
        f"<title>{html.escape(title)}</title></head>"
        f"<body><h1>{html.escape(title)}</h1><p>{html.escape(text)}</p></body></html>"
    )
    return HTMLResponse(content, status_code=status)


class Gateway(Starlette):
    """The ASGI app: the request id, API-key check and access log in front of every route,
    then the dispatcher for `POST /v1/do/...` and Starlette's routing for the rest."""

    api_key: bytes | None = None
    metrics_need_key = False
    dispatcher: Dispatcher
    ids: RequestIds
    metrics: RequestMetrics

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.ids = RequestIds()
        self.metrics = RequestMetrics()
        self.started = time.monotonic()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await super().__call__(scope, receive, send)
            return
        started = time.perf_counter()
        state = scope.setdefault("state", {})
        state["request_id"] = request_id = self.ids.take(scope["headers"])
        id_header = (b"x-request-id", request_id.encode())
        try:
            if (
                self.api_key is not None
                and _gated(scope, self.metrics_need_key)
                and not _key_matches(scope, self.api_key)
            ):
                state["error_code"] = "unauthorized"
                state["status"] = 401
                headers = [id_header, *_CHALLENGE] if scope["path"] in _FOR_BROWSERS else [id_header]
                await send_json(send, 401, UNAUTHORIZED, headers)
            elif scope["method"] == "POST" and scope["path"].startswith(PREFIX):
                await self._dispatch(scope, receive, send, id_header)
            else:
                await self._route(scope, receive, send, id_header)
        finally:
            self.ids.release(request_id)
            elapsed = time.perf_counter() - started
            status = state.get("status", 500)
            self.metrics.observe(
                state.get("command_id", NO_COMMAND), status, state.get("error_code", NO_ERROR), elapsed
            )
            if access_log.enabled():
                _log_access(scope, state, status, elapsed)

    async def _dispatch(self, scope: Scope, receive: Receive, send: Send, id_header: tuple[bytes, bytes]) -> None:
        state = scope["state"]
        try:
            state["status"] = await self.dispatcher(scope, receive, send, [id_header])
        except Exception as exc:
            state["status"] = 500
            state["error_code"] = InternalError.code
            logger.error("[%s] internal error on POST %s: %r", state["request_id"], _printable(cut(scope["path"])), exc)
            body = envelope.encode(envelope.protocol_error(_internal_error(state["request_id"])))
            with contextlib.suppress(Exception):  # the answer may have been started already
                await send_json(send, 500, body, [id_header])
            raise  # the server logs the traceback

    async def _route(self, scope: Scope, receive: Receive, send: Send, id_header: tuple[bytes, bytes]) -> None:
        state = scope["state"]

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                state["status"] = message["status"]
                message["headers"] = [*message.get("headers", []), id_header]
            await send(message)

        await super().__call__(scope, receive, send_with_id)


class RequestIds:
    """Request ids: the caller's `X-Request-Id` when it is a plain token, else one made here.

    Made ids are a random prefix for this process and a counter: 32 hex digits, like a UUID's,
    but cheaper. An id is unique among the requests in flight, as workers match answers by it:
    a caller's id that is already in flight gets a suffix.
    """

    def __init__(self) -> None:
        self.prefix = secrets.token_hex(12)
        self.counter = itertools.count()
        self.in_flight: set[str] = set()

    def take(self, headers: list[tuple[bytes, bytes]]) -> str:
        request_id = None
        for name, value in headers:
            if name == b"x-request-id":
                request_id = _plain_token(value)
                break
        if request_id is None:
            request_id = f"{self.prefix}{next(self.counter):08x}"
        elif request_id in self.in_flight:
            request_id = f"{request_id}.{next(self.counter):x}"
        self.in_flight.add(request_id)
        return request_id

    def release(self, request_id: str) -> None:
        self.in_flight.discard(request_id)


_TOKEN = re.compile(rb"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")


def _plain_token(value: bytes) -> str | None:
    """A caller's request id, if it is safe to log and pass on: letters, digits, `._:-`, at most 128."""
    return value.decode("ascii") if _TOKEN.fullmatch(value) else None


_API_KEY_NAME = API_KEY_HEADER.lower().encode("latin-1")


def _key_matches(scope: Scope, api_key: bytes) -> bool:
    """Arena's shared secret, sent once in its header; from a browser, on its routes, as an HTTP Basic password."""
    sent = [value for name, value in scope["headers"] if name.lower() == _API_KEY_NAME]
    if not sent and _takes_basic(scope):
        sent = [
            password
            for name, value in scope["headers"]
            if name.lower() == b"authorization" and (password := _basic(value))
        ]
    return len(sent) == 1 and hmac.compare_digest(sent[0], api_key)


def _takes_basic(scope: Scope) -> bool:
    """Whether the key may come as a Basic password: on the browsers' pages, and from the status page's form.

    The form posts to /v1/do with the credentials the browser signed in with, and browsers send
    `Origin` on every POST, and `Sec-Fetch-Site` where they can: a same-origin request is the page's.
    (Another site's page cannot send JSON here at all without a CORS preflight the gateway never grants.)
    """
    path: str = scope["path"]
    if path in _FOR_BROWSERS:
        return True
    if scope["method"] != "POST" or not path.startswith(PREFIX):
        return False
    origin = site = None
    for name, value in scope["headers"]:
        lowered = name.lower()
        if lowered == b"origin":
            origin = value
        elif lowered == b"sec-fetch-site":
            site = value
    return origin is not None and site in (None, b"same-origin")


def _basic(authorization: bytes) -> bytes | None:
    """The password of an HTTP Basic `Authorization` value; the user name is not checked."""
    scheme, _, encoded = authorization.partition(b" ")
    if scheme.lower() != b"basic":
        return None
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True)
    except binascii.Error:
        return None
    return decoded.partition(b":")[2] or None


# Pages for people: a 401 there asks the browser to prompt for the key, as a Basic auth password.
_FOR_BROWSERS = ("/", "/openapi.json")
_CHALLENGE = [(b"www-authenticate", b'Basic realm="connector-gateway", charset="UTF-8"')]


def _gated(scope: Scope, metrics_need_key: bool) -> bool:
    """Every /v1 route needs the API key, but liveness and the browser's auth route; so do the
    status page and /openapi.json, and /metrics when so set."""
    path: str = scope["path"]
    if scope["method"] == "OPTIONS" or path in ("/liveness", "/v1/liveness"):
        return False
    if path == "/metrics":
        return metrics_need_key
    if path in _FOR_BROWSERS:
        return True
    return path.startswith("/v1/") and not path.startswith("/v1/auth/")


def _log_access(scope: Scope, state: dict[str, Any], status: int, elapsed: float) -> None:
    access_log.write(
        state["request_id"],
        scope["method"],
        _printable(cut(scope["path"])),
        status,
        _printable(cut(state.get("command", "-"))),
        state.get("error_code", "-"),
        elapsed * 1000,
    )


def _printable(text: str) -> str:
    """Text from the caller, with line breaks and other controls escaped: it cannot forge a log line."""
    return text if text.isprintable() else text.encode("unicode_escape").decode("ascii")
