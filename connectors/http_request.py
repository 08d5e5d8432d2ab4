"""The bundled http connectors: one HTTP request per command, answered as a version 2 envelope.

Spawn mode: http_request.py GET|HEAD|POST|PUT|PATCH|DELETE, with the parameters as one JSON object on stdin.
Worker mode (CONNECTOR_MODE=worker): request lines on stdin, the method taken from each command id,
several requests at a time on threads. A spawned run pays for every import, so the file imports only
the standard library modules a request needs; the XML parser, needed by few answers, is imported where
it is used.
"""

from __future__ import annotations

import base64
import http.client
import json
import math
import os
import socket
import ssl
import string
import sys
import threading
import time
from urllib.parse import quote, unquote, urlencode, urljoin, urlsplit

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing costs milliseconds at start-up, so it is only read by the type checker
    from collections.abc import Iterable, Mapping
    from typing import Any, BinaryIO

METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE")
# In worker mode one process serves every command; the method comes from the command's name.
COMMAND_METHODS = {
    "GetRequestV2": "GET",
    "HeadRequestV2": "HEAD",
    "PostRequestV2": "POST",
    "PutRequestV2": "PUT",
    "PatchRequestV2": "PATCH",
    "DeleteRequestV2": "DELETE",
}
SAFE_METHODS = ("GET", "HEAD")  # retried with `attempts` and redirected, as they change nothing upstream
METHODS_WITH_PARAMS = ("GET", "HEAD", "DELETE")
METHODS_WITH_DATA = ("POST", "PUT", "PATCH", "DELETE")
REDIRECT_STATUSES = (301, 302, 303, 307, 308)
MAX_REDIRECTS = 10
MAX_BODY_BYTES = 16 * 1024 * 1024
READ_CHUNK = 64 * 1024
DEFAULT_TIME_LIMIT = 30.0  # seconds, when the gateway gives no CONNECTOR_DEADLINE
USER_AGENT = "connector-gateway-http/1"
# Headers that carry credentials for one origin: not sent on when a redirect leaves that origin.
ORIGIN_CREDENTIAL_HEADERS = ("authorization", "cookie")
# Every printable ASCII character but the space stays as written in a URL; the rest is percent-encoded,
# so a path with spaces or non-ASCII text still forms a valid request line.
URL_SAFE = string.punctuation
HEADER_NAME_CHARS = frozenset(string.ascii_letters + string.digits + "!#$%&'*+-.^_`|~")
EX_USAGE = 64


class ConnectorError(Exception):
    """A failure answered as an envelope error: its code, the inner status and a message for the modeler.

    The inner status tells Arena whether a retry may help: 5xx (and 429) yes, 4xx no.
    """

    def __init__(self, code: str, status: int, message: str, *, retryable: bool = False) -> None:
        super().__init__(message)
        self.code = code
        self.status = status
        self.message = message
        self.retryable = retryable  # whether another attempt (the `attempts` parameter) may help


def invalid(message: str) -> ConnectorError:
    return ConnectorError("HttpInvalidParameter", 400, message)


def connection_failed(message: str) -> ConnectorError:
    return ConnectorError("HttpConnectionError", 502, message, retryable=True)


def tls_failed(message: str) -> ConnectorError:
    return ConnectorError("HttpTlsError", 502, message)


def cancelled() -> ConnectorError:
    # Never answered: the gateway has given up on the request and drops any answer to it.
    return ConnectorError("HttpCancelled", 499, "The gateway cancelled the request.")


# --- Time -------------------------------------------------------------------------------------------


class Deadline:
    """The moment to stop waiting on the upstream: shortly before the gateway stops this process."""

    def __init__(self, end: float, limit: float, grace: float) -> None:
        self.end = end  # on the time.monotonic() clock
        self.limit = limit  # the command's time limit in seconds, quoted in the timeout message
        self.grace = grace  # how long after `end` a request still stuck is abandoned, see main()
        self.host = "the upstream"  # the host being waited on, for the timeout message

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Deadline:
        return cls.until(_env_float(env, "CONNECTOR_DEADLINE"), _env_float(env, "CONNECTOR_TIMEOUT"))

    @classmethod
    def until(cls, deadline: float | None, limit: float | None) -> Deadline:
        """The deadline as Unix time, if known, and the time limit in seconds, if known."""
        left = deadline - time.time() if deadline is not None else (limit or DEFAULT_TIME_LIMIT)
        # Keep a margin to print the answer and exit before the gateway's own deadline.
        margin = min(0.5, max(left, 0.0) * 0.1)
        return cls(time.monotonic() + left - margin, limit or _guess_limit(left), margin / 2)

    def remaining(self) -> float:
        return self.end - time.monotonic()

    def check(self) -> float:
        """The seconds left, or the timeout error once none are."""
        left = self.remaining()
        if left <= 0:
            raise self.timeout()
        return left

    def timeout(self) -> ConnectorError:
        limit = f"{self.limit:g}"
        return ConnectorError(
            "HttpTimeout",
            504,
            f"No answer from {self.host} before the command's time limit of {limit} s ran out.",
        )


def _guess_limit(left: float) -> float:
    """The time limit, for the timeout message, when only the deadline is known (worker mode).

    The gateway set the deadline a moment ago (longer when a worker had to start first), so the time
    left is a little under the limit: 29.8 s is said as 30 s.
    """
    return max(round(left) if left >= 10 else round(left, 1), 0.0)


def _env_float(env: Mapping[str, str], name: str) -> float | None:
    try:
        return float(env[name])
    except (KeyError, ValueError):
        return None


# --- The request ------------------------------------------------------------------------------------


class Request:
    """One request to send: what the parameters ask for, already checked and encoded."""

    def __init__(self, method: str, url: str, headers: dict[str, str], body: bytes | None, attempts: int) -> None:
        self.method = method
        self.url = url
        self.headers = headers
        self.body = body
        self.attempts = attempts


def build_request(method: str, payload: Any) -> Request:
    if not isinstance(payload, dict):
        raise invalid("The connector's input must be a JSON object of parameters.")

    url, url_credentials = _check_url(payload.get("url"))
    if method in METHODS_WITH_PARAMS and payload.get("params") is not None:
        url = _add_query(url, _check_params(payload["params"]))

    headers = {"User-Agent": USER_AGENT, "Accept": "*/*"}
    for name, value in _check_headers(payload.get("headers")).items():
        _replace_header(headers, name, value)
    # The connector decodes no compressed bodies, so it always asks for the identity encoding.
    headers = {name: value for name, value in headers.items() if name.lower() != "accept-encoding"}

    credentials = _basic_credentials(payload) or url_credentials
    if credentials is not None:
        _replace_header(headers, "Authorization", "Basic " + base64.b64encode(credentials.encode()).decode())

    body = None
    if method in METHODS_WITH_DATA and "data" in payload:
        body = _json_body(payload["data"])
        if not any(name.lower() == "content-type" for name in headers):
            headers["Content-Type"] = "application/json"

    attempts = _check_attempts(payload.get("attempts")) if method in SAFE_METHODS else 1
    return Request(method, url, headers, body, attempts)


def _check_url(url: Any) -> tuple[str, str | None]:
    """The URL without its user information, and that information as `user:password` when present."""
    if not isinstance(url, str) or not url:
        raise invalid("Parameter 'url' is required and must be a string.")
    try:
        parts = urlsplit(url.strip())
        parts.port  # noqa: B018 - reading the port is what checks it
    except ValueError:
        raise invalid("Parameter 'url' is not a valid URL.") from None
    if parts.scheme not in ("http", "https"):
        raise invalid("Parameter 'url' must start with http:// or https://.")
    if not parts.hostname:
        raise invalid("Parameter 'url' has no host name.")

    credentials = None
    if parts.username is not None:
        credentials = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
    netloc = parts.netloc.rpartition("@")[2]
    return parts._replace(netloc=netloc, fragment="").geturl(), credentials


def _check_params(params: Any) -> list[tuple[str, str]]:
    if not isinstance(params, dict):
        raise invalid(f"Parameter 'params' must be an object of query parameters, got {_json_type(params)}.")
    pairs = []
    for name, value in params.items():
        for item in value if isinstance(value, list) else [value]:
            if item is None:
                continue
            if isinstance(item, (dict, list)):
                raise invalid(f"Query parameter '{name}' must be a string, a number or a list of them.")
            pairs.append((name, str(item)))
    return pairs


def _add_query(url: str, pairs: list[tuple[str, str]]) -> str:
    if not pairs:
        return url
    parts = urlsplit(url)
    query = "&".join(part for part in (parts.query, urlencode(pairs)) if part)
    return parts._replace(query=query).geturl()


def _check_headers(headers: Any) -> dict[str, str]:
    if headers is None:
        return {}
    if not isinstance(headers, dict):
        raise invalid(f"Parameter 'headers' must be an object of header names and values, got {_json_type(headers)}.")
    checked = {}
    for name, value in headers.items():
        if value is None:
            continue
        if not name or not HEADER_NAME_CHARS.issuperset(name):
            raise invalid(f"Header name {name!r} is not a valid HTTP header name.")
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            raise invalid(f"Header '{name}' must be a string or a number, got {_json_type(value)}.")
        checked[name] = _check_header_value(name, str(value))
    return checked


def _check_header_value(name: str, value: str) -> str:
    if any(char in value for char in "\r\n\0"):
        raise invalid(f"Header '{name}' must not contain line breaks.")
    try:
        value.encode("latin-1")  # what HTTP/1.1 header values are sent as
    except UnicodeEncodeError:
        raise invalid(f"Header '{name}' holds characters HTTP headers cannot carry; percent-encode them.") from None
    return value


def _replace_header(headers: dict[str, str], name: str, value: str) -> None:
    for existing in [key for key in headers if key.lower() == name.lower()]:
        del headers[existing]
    headers[name] = value


def _basic_credentials(payload: dict[str, Any]) -> str | None:
    username = payload.get("basic_auth_username")
    password = payload.get("basic_auth_password")
    if username is None and password is None:
        return None
    for name, value in (("basic_auth_username", username), ("basic_auth_password", password)):
        if value is not None and not isinstance(value, str):
            raise invalid(f"Parameter '{name}' must be a string, got {_json_type(value)}.")
    return f"{username or ''}:{password or ''}"


def _json_body(data: Any) -> bytes:
    try:
        return json.dumps(data, allow_nan=False).encode()
    except ValueError:
        raise invalid("Parameter 'data' holds NaN or Infinity, which JSON cannot carry.") from None


def _check_attempts(attempts: Any) -> int:
    if attempts is None:
        return 1
    if isinstance(attempts, bool) or not isinstance(attempts, int) or attempts < 1:
        raise invalid("Parameter 'attempts' must be a whole number of 1 or more.")
    return attempts


def _json_type(value: Any) -> str:
    names = {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null"}
    return names.get(type(value), "a number")


# --- Proxies ----------------------------------------------------------------------------------------


class Proxy:
    def __init__(self, host: str, port: int, authorization: str | None) -> None:
        self.host = host
        self.port = port
        self.authorization = authorization  # the Proxy-Authorization value, when the proxy URL has credentials

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"


def proxy_settings(env: Mapping[str, str]) -> dict[str, str]:
    """The `<scheme>_proxy` settings by scheme, read as urllib reads them: lower case names win."""
    proxies = {}
    for name, value in env.items():
        if value and name.lower().endswith("_proxy"):
            proxies[name.lower()[:-6]] = value
    if "REQUEST_METHOD" in env:  # under CGI, HTTP_PROXY can come from a client's Proxy header
        proxies.pop("http", None)
    for name, value in env.items():
        if name.endswith("_proxy"):
            if value:
                proxies[name.lower()[:-6]] = value
            else:
                proxies.pop(name.lower()[:-6], None)
    return proxies


def bypasses_proxy(host: str, no_proxy: str | None) -> bool:
    """Whether `host` (with its port, if the URL has one) is listed in NO_PROXY, matched as urllib does."""
    if no_proxy is None:
        return False
    if no_proxy == "*":
        return True
    host = host.lower()
    host_only = host
    head, _, port = host.rpartition(":")
    if head and port.isdigit():
        host_only = head
    for name in no_proxy.split(","):
        name = name.strip().lstrip(".").lower()
        if not name:
            continue
        if name in (host, host_only) or host.endswith("." + name) or host_only.endswith("." + name):
            return True
    return False


def find_proxy(scheme: str, netloc: str, env: Mapping[str, str]) -> Proxy | None:
    proxies = proxy_settings(env)
    setting = proxies.get(scheme)
    if setting is None or bypasses_proxy(netloc, proxies.get("no")):
        return None
    parts = urlsplit(setting if "://" in setting else "//" + setting)
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        port = 0
    if not parts.hostname or port == 0:
        raise connection_failed(f"The proxy set in {scheme}_proxy is not a valid URL; give it as http://host:port.")

    authorization = None
    if parts.username and parts.password:
        pair = f"{unquote(parts.username)}:{unquote(parts.password)}"
        authorization = "Basic " + base64.b64encode(pair.encode()).decode()
    return Proxy(parts.hostname, port, authorization)


# --- One exchange with the upstream -----------------------------------------------------------------


class Response:
    def __init__(self, status: int, reason: str, headers: dict[str, str], body: bytes, where: str) -> None:
        self.status = status
        self.reason = reason
        self.headers = headers
        self.body = body
        self.where = where  # method, scheme and host: as logged and quoted in messages (a path may hold a secret)


class Client:
    """Sends one command's requests within its deadline, through the configured proxy and with verified TLS."""

    def __init__(self, env: Mapping[str, str], deadline: Deadline, log: Log, tls: TlsContext) -> None:
        self.env = env
        self.deadline = deadline
        self.log = log
        self.tls = tls
        self.cancelled = threading.Event()
        self._open: http.client.HTTPConnection | None = None  # the connection in use, shut by cancel()

    def cancel(self) -> None:
        """Best effort: the connection in use is shut, which ends a wait on it, and no other is opened."""
        self.cancelled.set()
        connection = self._open
        sock = connection.sock if connection is not None else None
        if sock is not None:
            try:  # noqa: SIM105 - contextlib would cost every spawned run an import
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def pause(self, seconds: float) -> None:
        self.cancelled.wait(seconds)

    def exchange(self, method: str, url: str, headers: dict[str, str], body: bytes | None) -> Response:
        parts = urlsplit(url)
        host = parts.netloc
        where = f"{method} {parts.scheme}://{host}"
        self.deadline.host = host
        proxy = find_proxy(parts.scheme, host, self.env)
        target = _request_target(url) if proxy is None or parts.scheme == "https" else quote(url, safe=URL_SAFE)
        if proxy is not None and proxy.authorization is not None and parts.scheme == "http":
            headers = {**headers, "Proxy-Authorization": proxy.authorization}

        started = time.monotonic()
        outcome = "failed"
        try:
            response = self._send(parts.scheme, host, proxy, method, target, headers, body)
            response.where = where
            outcome = str(response.status)
            return response
        except ConnectorError as error:
            outcome = error.code
            raise
        finally:
            via = f" via proxy {proxy.address}" if proxy is not None else ""
            elapsed = round((time.monotonic() - started) * 1000)
            self.log(f"{where}{via} -> {outcome} in {elapsed} ms")

    def _send(
        self,
        scheme: str,
        host: str,
        proxy: Proxy | None,
        method: str,
        target: str,
        headers: dict[str, str],
        body: bytes | None,
    ) -> Response:
        connection = self._connection(scheme, host, proxy)
        self._open = connection
        try:
            if self.cancelled.is_set():
                raise cancelled()
            sock = self._connect(connection, host)
            connection.request(method, target, body=body, headers=headers)
            sock.settimeout(self.deadline.check())
            upstream = connection.getresponse()
            content = self._read_body(upstream, sock, host)
            return Response(upstream.status, upstream.reason, _plain_headers(upstream.getheaders()), content, "")
        except (TimeoutError, ssl.SSLError, OSError, http.client.HTTPException) as error:
            raise self._failure(error, host, proxy) from None
        finally:
            self._open = None
            connection.close()

    def _connection(self, scheme: str, host: str, proxy: Proxy | None) -> http.client.HTTPConnection:
        timeout = self.deadline.check()
        address = urlsplit("//" + host)
        port = address.port
        if scheme == "http":
            if proxy is not None:
                return http.client.HTTPConnection(proxy.host, proxy.port, timeout=timeout)
            return http.client.HTTPConnection(address.hostname or host, port, timeout=timeout)
        if proxy is None:
            return http.client.HTTPSConnection(address.hostname or host, port, timeout=timeout, context=self.tls.get())
        connection = http.client.HTTPSConnection(proxy.host, proxy.port, timeout=timeout, context=self.tls.get())
        tunnel_headers = {"Proxy-Authorization": proxy.authorization} if proxy.authorization else None
        connection.set_tunnel(address.hostname or host, port, headers=tunnel_headers)
        return connection

    def _connect(self, connection: http.client.HTTPConnection, host: str) -> socket.socket:
        connection.connect()
        sock = connection.sock
        if sock is None:
            raise connection_failed(f"Could not connect to {host}.")
        return sock

    def _read_body(self, upstream: http.client.HTTPResponse, sock: socket.socket, host: str) -> bytes:
        declared = upstream.getheader("Content-Length", "")
        if declared.isdigit() and int(declared) > MAX_BODY_BYTES:
            raise too_large(host)
        chunks: list[bytes] = []
        size = 0
        while True:
            # One read at a time, each bounded by the time left: a slow upstream cannot outlast the deadline.
            sock.settimeout(self.deadline.check())
            chunk = upstream.read1(READ_CHUNK)
            if not chunk:
                return b"".join(chunks)
            size += len(chunk)
            if size > MAX_BODY_BYTES:
                raise too_large(host)
            chunks.append(chunk)

    def _failure(self, error: BaseException, host: str, proxy: Proxy | None) -> ConnectorError:
        if isinstance(error, TimeoutError):
            return self.deadline.timeout()
        if isinstance(error, ssl.SSLCertVerificationError):
            reason = error.verify_message or error.reason or "unknown reason"
            return tls_failed(
                f"The TLS certificate of {host} could not be verified: {reason}. "
                "The operator can set SSL_CERT_FILE to a CA bundle that trusts it."
            )
        if isinstance(error, ssl.SSLError):
            return tls_failed(f"The TLS handshake with {host} failed: {error.reason or error}.")
        peer = f"proxy {proxy.address}" if proxy is not None else host
        if isinstance(error, socket.gaierror):
            return connection_failed(f"Could not resolve the host name of {peer}.")
        if isinstance(error, ConnectionRefusedError):
            return connection_failed(f"Could not connect to {peer}: connection refused.")
        if isinstance(error, http.client.HTTPException):
            return connection_failed(f"{host} sent a broken HTTP response: {type(error).__name__}.")
        detail = error.strerror if isinstance(error, OSError) and error.strerror else str(error)
        return connection_failed(f"The connection to {peer} failed: {detail}.")


def _request_target(url: str) -> str:
    parts = urlsplit(url)
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return quote(target, safe=URL_SAFE)


def _plain_headers(pairs: list[tuple[str, str]]) -> dict[str, str]:
    """Response headers as one object; a repeated header's values are joined with commas."""
    headers: dict[str, str] = {}
    names: dict[str, str] = {}
    for name, value in pairs:
        first = names.setdefault(name.lower(), name)
        headers[first] = f"{headers[first]}, {value}" if first in headers else value
    return headers


def too_large(host: str) -> ConnectorError:
    limit = MAX_BODY_BYTES // (1024 * 1024)
    return ConnectorError(
        "HttpResponseTooLarge",
        502,
        f"The response of {host} is larger than {limit} MiB, the most the connector accepts.",
    )


class TlsContext:
    """The TLS settings, loaded at the first https:// URL and kept: a worker loads the CA store once."""

    def __init__(self, env: Mapping[str, str]) -> None:
        self.env = env
        self._context: ssl.SSLContext | None = None
        self._lock = threading.Lock()

    def get(self) -> ssl.SSLContext:
        with self._lock:
            if self._context is None:
                self._context = tls_context(self.env)
            return self._context


def tls_context(env: Mapping[str, str]) -> ssl.SSLContext:
    """Verification always on; a CA bundle named by the operator replaces the system's."""
    for name in ("SSL_CERT_FILE", "REQUESTS_CA_BUNDLE"):
        cafile = env.get(name)
        if cafile:
            try:
                return ssl.create_default_context(cafile=cafile)
            except ssl.SSLError:
                detail = "it holds no PEM certificate"
            except OSError as error:
                detail = (error.strerror or str(error)).lower()
            raise tls_failed(f"The CA bundle {cafile!r} set in {name} could not be loaded: {detail}.")
    return ssl.create_default_context()


# --- Attempts and redirects ------------------------------------------------------------------------


def send(client: Client, request: Request) -> Response:
    """Sends the request up to `attempts` times while the upstream fails with 5xx or cannot be reached."""
    attempt = 1
    while True:
        try:
            response = follow_redirects(client, request)
            if response.status < 500 or not _pause_before_retry(client, attempt, request.attempts):
                return response
        except ConnectorError as error:
            if not error.retryable or not _pause_before_retry(client, attempt, request.attempts):
                raise
        attempt += 1


def _pause_before_retry(client: Client, attempt: int, attempts: int) -> bool:
    """Waits a short, growing pause and says True, or says False when no retry is due or has time left."""
    if attempt >= attempts or client.cancelled.is_set():
        return False
    pause = min(1.0, 0.1 * 2 ** (attempt - 1))
    if client.deadline.remaining() < pause + 0.1:
        client.log(f"no time left for attempt {attempt + 1} of {attempts}")
        return False
    client.pause(pause)
    client.log(f"attempt {attempt + 1} of {attempts}")
    return True


def follow_redirects(client: Client, request: Request) -> Response:
    """Follows redirects for GET and HEAD as urllib does; other methods get the redirect as their answer."""
    url, headers = request.url, request.headers
    for _ in range(MAX_REDIRECTS):
        response = client.exchange(request.method, url, headers, request.body)
        location = _location(response)
        if request.method not in SAFE_METHODS or response.status not in REDIRECT_STATUSES or location is None:
            return response
        next_url = urljoin(url, quote(location, encoding="iso-8859-1", safe=URL_SAFE))
        if urlsplit(next_url).scheme not in ("http", "https"):
            return response
        if _origin(next_url) != _origin(url):
            headers = {name: value for name, value in headers.items() if name.lower() not in ORIGIN_CREDENTIAL_HEADERS}
        url = urlsplit(next_url)._replace(fragment="").geturl()
    return client.exchange(request.method, url, headers, request.body)


def _origin(url: str) -> tuple[str, str]:
    parts = urlsplit(url)
    return parts.scheme, parts.netloc


def _location(response: Response) -> str | None:
    found = {name.lower(): value for name, value in response.headers.items()}
    return found.get("location", found.get("uri"))


# --- The answer -------------------------------------------------------------------------------------


def answer_body(response: Response) -> Any:
    """The upstream body as JSON: parsed JSON, XML mapped to an object, or the text as `raw_response`.

    A body that does not parse as its content type says is answered as text, so nothing is lost.
    """
    mimetype, charset = _content_type(response.headers)
    if response.body and (mimetype == "application/json" or mimetype.endswith("+json")):
        try:
            return json.loads(response.body, parse_constant=_refuse_constant, parse_float=_finite_float)
        except (ValueError, RecursionError):
            pass
    elif response.body and (mimetype in ("application/xml", "text/xml") or mimetype.endswith("+xml")):
        try:
            return xml_to_json(response.body, response.where)
        except ValueError:
            pass
    return {"raw_response": _text(response.body, charset)}


def _content_type(headers: dict[str, str]) -> tuple[str, str]:
    value = next((value for name, value in headers.items() if name.lower() == "content-type"), "")
    mimetype, *params = value.split(";")
    charset = "utf-8"
    for param in params:
        key, _, param_value = param.partition("=")
        if key.strip().lower() == "charset" and param_value.strip():
            charset = param_value.strip().strip('"')
    return mimetype.strip().lower(), charset


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")  # NaN and Infinity would make the envelope invalid JSON


def _finite_float(text: str) -> float:
    number = float(text)
    if not math.isfinite(number):  # past a float's range, such as 1e400: it would become Infinity
        raise ValueError(f"{text} is too large for a float")
    return number


def _text(body: bytes, charset: str) -> str:
    try:
        return body.decode(charset, errors="replace")
    except LookupError:  # a charset Python does not know
        return body.decode("utf-8", errors="replace")


class _XmlTree:
    """Builds the JSON form of an XML document as expat reads it, the way xmltodict maps it."""

    def __init__(self, where: str) -> None:
        self.where = where
        self.stack: list[tuple[dict[str, Any], list[str]]] = [({}, [])]

    def start(self, name: str, attributes: dict[str, str]) -> None:
        self.stack.append(({f"@{key}": value for key, value in attributes.items()}, []))

    def text(self, data: str) -> None:
        self.stack[-1][1].append(data)

    def end(self, name: str) -> None:
        node, texts = self.stack.pop()
        text = "".join(texts).strip()
        value: Any = text or None
        if node:
            if text:
                node["#text"] = text
            value = node
        parent = self.stack[-1][0]
        if name not in parent:
            parent[name] = value
        elif isinstance(parent[name], list):  # element values are never lists, so a list means repetition
            parent[name].append(value)
        else:
            parent[name] = [parent[name], value]

    def refuse(self, *_: Any) -> None:
        # Entity declarations are how XML bombs expand; without a DOCTYPE there can be none.
        raise ConnectorError(
            "HttpUnsafeXml",
            502,
            f"The response to {self.where} is XML with a DOCTYPE or entity declaration, "
            "which the connector refuses to parse.",
        )


def xml_to_json(body: bytes, where: str) -> dict[str, Any]:
    """The document as an object; ValueError when it is not well-formed XML."""
    from xml.parsers import expat

    tree = _XmlTree(where)
    parser = expat.ParserCreate()
    parser.SetParamEntityParsing(expat.XML_PARAM_ENTITY_PARSING_NEVER)
    parser.StartDoctypeDeclHandler = tree.refuse
    parser.EntityDeclHandler = tree.refuse
    parser.StartElementHandler = tree.start
    parser.EndElementHandler = tree.end
    parser.CharacterDataHandler = tree.text
    parser.buffer_text = True
    try:
        parser.Parse(body, True)
    except expat.ExpatError as error:
        raise ValueError(str(error)) from None
    return tree.stack[0][0]


def envelope(body: Any, status: int, headers: dict[str, str], error: dict[str, str] | None) -> dict[str, Any]:
    return {
        "command_response": {
            "body": body,
            "mimetype": "application/json",
            "http_status": status,
            "headers": headers,
        },
        "command_response_version": 2,
        "error": error,
        "spiff__logs": [],
    }


def response_envelope(response: Response) -> dict[str, Any]:
    error = None
    if response.status >= 400:
        reason = f" {response.reason}" if response.reason else ""
        message = f"{response.where} answered {response.status}{reason}."
        error = {"error_code": f"HttpError{response.status}", "message": message}
    return envelope(answer_body(response), response.status, response.headers, error)


def error_envelope(error: ConnectorError) -> dict[str, Any]:
    return envelope({}, error.status, {}, {"error_code": error.code, "message": error.message})


# --- Running ----------------------------------------------------------------------------------------


_stderr_lock = threading.Lock()  # workers log from several threads; a line is written whole


def log(line: str) -> None:
    """One line for the gateway's log: never a header, a query or a body."""
    with _stderr_lock:
        sys.stderr.write(line + "\n")
        sys.stderr.flush()


class Log:
    """The lines of one command: each logged at once, and kept for a worker's answer (`logs`)."""

    def __init__(self, prefix: str = "") -> None:
        self.prefix = prefix  # a worker taking several requests at once tags its stderr lines with the request id
        self.lines: list[str] = []

    def __call__(self, line: str) -> None:
        self.lines.append(line)
        log(self.prefix + line)


def run(method: str, payload: Any, client: Client) -> dict[str, Any] | None:
    """The envelope to answer, or None after an unexpected failure (already logged)."""
    try:
        request = build_request(method, payload)
        client.deadline.host = urlsplit(request.url).netloc
        return response_envelope(send(client, request))
    except ConnectorError as error:
        return error_envelope(error)
    except Exception as error:  # a bug: its message could quote a header, so only its type and place are logged
        client.log(f"http connector failed: unexpected {type(error).__name__} at {_innermost_frame(error)}")
        return None


def _innermost_frame(error: BaseException) -> str:
    frame = error.__traceback__
    while frame is not None and frame.tb_next is not None:
        frame = frame.tb_next
    if frame is None:
        return "an unknown place"
    return f"{os.path.basename(frame.tb_frame.f_code.co_filename)}:{frame.tb_lineno}"


class Job:
    """One command run on a thread of its own, so that it is answered by its deadline even when stuck."""

    def __init__(self, request_id: str, method: str, payload: Any, client: Client) -> None:
        self.id = request_id
        self.method = method
        self.payload = payload
        self.client = client
        self.stuck = False  # no answer by the deadline: the thread may still be running
        self._answers: list[dict[str, Any] | None] = []
        self._settled = threading.Event()  # the answer is ready, or the request was cancelled

    @property
    def cancelled(self) -> bool:
        return self.client.cancelled.is_set()

    def result(self) -> dict[str, Any] | None:
        """The envelope (HttpTimeout past the deadline), or None after an unexpected failure."""
        threading.Thread(target=self._run, daemon=True).start()
        # Socket timeouts end the request at the deadline; this wait ends one that is stuck where no socket
        # timeout applies (name resolution), still before the gateway gives up on it.
        deadline = self.client.deadline
        self._settled.wait(max(deadline.remaining() + deadline.grace, 0.0))
        if self._answers:
            return self._answers[0]
        self.stuck = True
        if not self.cancelled:
            self.client.log(f"no answer from {deadline.host} before the deadline")
        return error_envelope(deadline.timeout())

    def cancel(self) -> None:
        self.client.cancel()
        self._settled.set()

    def _run(self) -> None:
        self._answers.append(run(self.method, self.payload, self.client))
        self._settled.set()


def read_payload(stdin: bytes) -> Any:
    """The parameters; input that is not JSON is refused like any input that is not an object."""
    try:
        return json.loads(stdin)
    except ValueError:
        return None


# --- Worker mode ------------------------------------------------------------------------------------


class Worker:
    """Answers request lines from stdin on stdout, up to `concurrency` at a time, each on its own thread.

    The line protocol is in docs/connector-protocol.md, "Worker mode".
    """

    def __init__(self, env: Mapping[str, str], concurrency: int, stdout: BinaryIO) -> None:
        self.env = env
        self.concurrency = concurrency
        self.stdout = stdout
        self.tls = TlsContext(env)
        self.jobs: dict[str, Job] = {}
        self.lock = threading.Lock()  # guards `jobs` and the lines written to stdout
        # The gateway sends at most `concurrency` requests before an answer; the bound only holds a
        # gateway that sends more.
        self.slots = threading.BoundedSemaphore(concurrency)
        self.handlers: set[threading.Thread] = set()

    def serve(self, lines: Iterable[bytes]) -> int:
        for line in lines:
            if line.strip():
                self.take(line)
        # End of input: what is in flight is finished, each by its own deadline.
        for handler in list(self.handlers):
            handler.join()
        return 0

    def take(self, line: bytes) -> None:
        message = _request(line)
        if message is None:
            log("http connector: ignored a line that is not a request (a JSON object with a string 'id')")
        elif "cancel" in message:
            self.cancel(message["cancel"])
        else:
            self.start(message)

    def start(self, request: dict[str, Any]) -> None:
        request_id: str = request["id"]
        command = request.get("command")
        method = COMMAND_METHODS.get(command.rpartition("/")[2]) if isinstance(command, str) else None
        if method is None:
            known = ", ".join(COMMAND_METHODS)
            self.write({"id": request_id, "failed": f"The http connector has no command {command!r}; it has {known}."})
            return

        deadline = request.get("deadline")
        if isinstance(deadline, bool) or not isinstance(deadline, (int, float)):
            deadline = None
        lines = Log(f"[{request_id}] " if self.concurrency > 1 else "")
        client = Client(self.env, Deadline.until(deadline, None), lines, self.tls)
        job = Job(request_id, method, request.get("payload"), client)

        self.slots.acquire()
        with self.lock:
            self.jobs[request_id] = job  # before the thread starts, so that a cancellation finds it
        handler = threading.Thread(target=self.handle, args=(job,), name=f"request {request_id}", daemon=True)
        self.handlers.add(handler)
        handler.start()

    def handle(self, job: Job) -> None:
        try:
            try:
                envelope = job.result()
            finally:
                self.slots.release()  # before the answer goes out: the gateway may send the next one at once
            self.write(self.answer(job, envelope), job)
        finally:
            self.handlers.discard(threading.current_thread())

    def answer(self, job: Job, envelope: dict[str, Any] | None) -> dict[str, Any]:
        answer: dict[str, Any] = {"id": job.id}
        if envelope is not None:
            answer["result"] = envelope
        else:  # an unexpected failure, as the last line logged says
            answer["failed"] = job.client.log.lines[-1]
        # With one request at a time the gateway takes stderr as the request's logs; with more it cannot
        # tell whose they are, so they travel in the answer.
        if self.concurrency > 1:
            answer["logs"] = list(job.client.log.lines)
        return answer

    def cancel(self, request_id: Any) -> None:
        with self.lock:
            job = self.jobs.get(request_id) if isinstance(request_id, str) else None
        if job is not None:
            job.cancel()

    def write(self, answer: dict[str, Any], job: Job | None = None) -> None:
        line = json.dumps(answer).encode() + b"\n"
        with self.lock:
            if job is not None:
                self.jobs.pop(job.id, None)
                if job.cancelled:
                    return  # the gateway has given up on it and must not get an answer
            self.stdout.write(line)
            self.stdout.flush()


def _request(line: bytes) -> dict[str, Any] | None:
    try:
        message = json.loads(line)
    except (ValueError, RecursionError):
        return None
    if not isinstance(message, dict):
        return None
    key = "cancel" if "cancel" in message else "id"
    return message if isinstance(message.get(key), str) else None


def _concurrency(env: Mapping[str, str]) -> int:
    try:
        return max(int(env.get("CONNECTOR_CONCURRENCY", "1")), 1)
    except ValueError:
        return 1


# --- Starting ---------------------------------------------------------------------------------------


def main(argv: list[str], env: Mapping[str, str]) -> int:
    if env.get("CONNECTOR_MODE") == "worker":
        return Worker(env, _concurrency(env), sys.stdout.buffer).serve(sys.stdin.buffer)
    if len(argv) != 2 or argv[1] not in METHODS:
        log(f"usage: http_request.py {'|'.join(METHODS)} < parameters.json")
        return EX_USAGE

    payload = read_payload(sys.stdin.buffer.read())
    client = Client(env, Deadline.from_env(env), Log(), TlsContext(env))
    job = Job(env.get("CONNECTOR_REQUEST_ID", "-"), argv[1], payload, client)
    envelope = job.result()
    if envelope is None:
        return 70  # EX_SOFTWARE: the gateway answers connector_failed
    print(json.dumps(envelope), flush=True)
    if job.stuck:
        os._exit(0)  # the request's thread may never return
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv, os.environ))
