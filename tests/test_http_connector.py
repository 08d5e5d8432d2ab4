"""The bundled http connectors, run as the gateway runs them: a real subprocess per request.

The upstream, the proxy and the TLS server are real servers on 127.0.0.1 started by the tests;
every envelope the connector prints is checked against the published protocol.
"""

from __future__ import annotations

import base64
import importlib.util
import json
import os
import re
import selectors
import socket
import ssl
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import ModuleType
from typing import Any
from urllib.parse import urlsplit

import pytest
from starlette.testclient import TestClient

from gateway import Settings, create_app

REPOSITORY = Path(__file__).resolve().parent.parent
CONNECTOR = REPOSITORY / "connectors" / "http_request.py"
MANIFESTS = REPOSITORY / "manifests"
METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE")

XML_CATALOG = b"""<?xml version="1.0" encoding="UTF-8"?>
<catalog xmlns:dc="urn:dc" version="2">
  <book id="1"><title>Dune</title><dc:creator>Herbert</dc:creator></book>
  <book id="2"><title lang="en">Emma</title></book>
  <price currency="EUR">12.50</price>
  <empty/>
</catalog>"""

XML_BOMB = b"""<?xml version="1.0"?>
<!DOCTYPE lolz [
  <!ENTITY lol "lol">
  <!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
  <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
  <!ENTITY lol4 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">
  <!ENTITY lol5 "&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;">
  <!ENTITY lol6 "&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;">
  <!ENTITY lol7 "&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;">
  <!ENTITY lol8 "&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;">
  <!ENTITY lol9 "&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;">
]>
<lolz>&lol9;</lolz>"""

XML_EXTERNAL_ENTITY = b"""<?xml version="1.0"?>
<!DOCTYPE data [<!ENTITY secret SYSTEM "file:///etc/passwd">]>
<data>&secret;</data>"""

PASSWORD = "pa55-w0rd-never-logged"
TOKEN = "tok-abc-123-never-logged"
OVER_LIMIT = 16 * 1024 * 1024 + 1


# --- Servers on loopback ----------------------------------------------------------------------------


@dataclass
class Recorded:
    method: str
    target: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Reply:
    status: int = 200
    body: bytes = b""
    content_type: str = "application/json"
    headers: list[tuple[str, str]] = field(default_factory=list)


class Server(ThreadingHTTPServer):
    """A loopback server that records each request and answers what its handler decides."""

    daemon_threads = True

    def __init__(self, handler: type[BaseHTTPRequestHandler]) -> None:
        super().__init__(("127.0.0.1", 0), handler)
        self.requests: list[Recorded] = []
        self.release = threading.Event()  # lets the slow route finish once a test is over

    @property
    def authority(self) -> str:
        return f"127.0.0.1:{self.server_port}"

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # clients that hang up early (timeouts, refused bodies) are part of the tests


class Handler(BaseHTTPRequestHandler):
    server: Server

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def record(self) -> Recorded:
        length = int(self.headers.get("Content-Length") or 0)
        request = Recorded(self.command, self.path, dict(self.headers.items()), self.rfile.read(length))
        self.server.requests.append(request)
        return request

    def reply(self, reply: Reply) -> None:
        self.send_response(reply.status)
        self.send_header("Content-Type", reply.content_type)
        self.send_header("Content-Length", str(len(reply.body)))
        for name, value in reply.headers:
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(reply.body)


def as_json(value: Any, status: int = 200) -> Reply:
    return Reply(status, json.dumps(value).encode())


class UpstreamHandler(Handler):
    """The upstream: one route per behaviour under test."""

    def handle_any(self) -> None:
        request = self.record()
        route = urlsplit(self.path).path
        if route == "/slow":
            self.server.release.wait(10)
        if route == "/stream-too-much":
            self.stream_too_much()
            return
        self.reply(self.route(route, request))

    do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = handle_any

    def route(self, route: str, request: Recorded) -> Reply:
        if route == "/echo":
            echo = {"method": request.method, "body": request.body.decode()}
            return Reply(body=json.dumps(echo).encode(), headers=[("X-Multi", "a"), ("X-Multi", "b")])
        if route == "/xml":
            return Reply(body=XML_CATALOG, content_type=self.headers.get("X-Reply-Type", "application/xml"))
        if route == "/bomb":
            return Reply(body=XML_BOMB, content_type="application/xml")
        if route == "/external-entity":
            return Reply(body=XML_EXTERNAL_ENTITY, content_type="text/xml")
        if route == "/broken-xml":
            return Reply(body=b"<open><unclosed></open>", content_type="application/xml")
        if route == "/broken-json":
            return Reply(body=b"{not json", content_type="application/json")
        if route == "/huge-number":  # valid JSON, but past a float's range: no JSON encoder can send it on
            return Reply(body=b'{"a": 1e400}', content_type="application/json")
        if route == "/text":
            return Reply(body="Grüße, plain text".encode(), content_type="text/plain; charset=utf-8")
        if route == "/missing":
            return as_json({"detail": "no such invoice"}, 404)
        if route == "/fail":
            return as_json({"detail": "upstream broke"}, 500)
        if route == "/redirect":
            return Reply(302, headers=[("Location", "/echo")])
        if route == "/redirect-away":
            return Reply(302, headers=[("Location", self.headers["X-Redirect-To"])])
        if route == "/too-large":
            return Reply(body=b"x" * OVER_LIMIT, content_type="text/plain")
        return as_json({"route": route})

    def stream_too_much(self) -> None:
        """A body without a declared length, ended by closing the connection."""
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.end_headers()
        chunk = b"x" * (1024 * 1024)
        for _ in range(OVER_LIMIT // len(chunk) + 1):
            self.wfile.write(chunk)


class ProxyHandler(Handler):
    """A forward proxy that answers plain HTTP itself and tunnels CONNECT to the upstream."""

    def do_GET(self) -> None:
        self.record()
        self.reply(as_json({"proxied": self.path}))

    def do_CONNECT(self) -> None:
        self.record()
        host, _, port = self.path.rpartition(":")
        with socket.create_connection((host, int(port))) as upstream:
            self.send_response(200, "Connection established")
            self.end_headers()
            relay(self.connection, upstream)
        self.close_connection = True


def relay(client: socket.socket, upstream: socket.socket) -> None:
    with selectors.DefaultSelector() as selector:
        selector.register(client, selectors.EVENT_READ, upstream)
        selector.register(upstream, selectors.EVENT_READ, client)
        while True:
            for key, _ in selector.select(timeout=5):
                data = key.fileobj.recv(65536)  # type: ignore[union-attr]
                if not data:
                    return
                key.data.sendall(data)


def serve(handler: type[BaseHTTPRequestHandler], tls: ssl.SSLContext | None = None) -> Iterator[Server]:
    server = Server(handler)
    if tls is not None:
        server.socket = tls.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.release.set()
        server.shutdown()
        server.server_close()


@pytest.fixture
def upstream() -> Iterator[Server]:
    yield from serve(UpstreamHandler)


@pytest.fixture
def other_upstream() -> Iterator[Server]:
    yield from serve(UpstreamHandler)


@pytest.fixture
def proxy() -> Iterator[Server]:
    yield from serve(ProxyHandler)


@pytest.fixture(scope="session")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1, made with the openssl command line."""
    directory = tmp_path_factory.mktemp("tls")
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "2", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True, capture_output=True,
    )  # fmt: skip
    return cert, key


@pytest.fixture
def tls_upstream(certificate: tuple[Path, Path]) -> Iterator[Server]:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(*certificate)
    yield from serve(UpstreamHandler, tls=context)


# --- Running the connector --------------------------------------------------------------------------


@dataclass
class Run:
    envelope: dict[str, Any]
    stderr: str
    finished: float  # Unix time at which the process had exited
    deadline: float

    @property
    def response(self) -> dict[str, Any]:
        return self.envelope["command_response"]  # type: ignore[no-any-return]

    @property
    def error(self) -> dict[str, str] | None:
        return self.envelope["error"]  # type: ignore[no-any-return]

    @property
    def log_lines(self) -> list[str]:
        return self.stderr.splitlines()


Connector = Callable[..., Run]


def connector_env(method: str, time_limit: float, extra: dict[str, str]) -> dict[str, str]:
    """The environment the gateway builds: from scratch, with the protocol's variables."""
    deadline = time.time() + time_limit
    command = f"http/{method.capitalize()}RequestV2"
    return {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "LANG": "C.UTF-8",
        "CONNECTOR_PROTOCOL": "1",
        "CONNECTOR_COMMAND": command,
        "CONNECTOR_REQUEST_ID": "test-request",
        "CONNECTOR_TIMEOUT": f"{time_limit:g}",
        "CONNECTOR_DEADLINE": repr(deadline),
        **extra,
    }


@pytest.fixture
def connector(protocol: Any) -> Connector:
    def run(method: str, payload: dict[str, Any], *, time_limit: float = 10, **env: str) -> Run:
        environment = connector_env(method, time_limit, env)
        result = subprocess.run(
            [sys.executable, "-I", "-S", str(CONNECTOR), method],
            input=json.dumps(payload).encode(),
            capture_output=True,
            cwd=MANIFESTS,
            env=environment,
            timeout=time_limit + 5,
        )
        finished = time.time()
        assert result.returncode == 0, result.stderr.decode()
        envelope = json.loads(result.stdout)
        protocol.validate(envelope, "ConnectorProxyResponseV2")
        return Run(envelope, result.stderr.decode(), finished, float(environment["CONNECTOR_DEADLINE"]))

    return run


def load_connector_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("http_request", CONNECTOR)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def error_of(run: Run) -> tuple[int, str, str]:
    assert run.error is not None
    return run.response["http_status"], run.error["error_code"], run.error["message"]


def log_line(method: str, url: str, outcome: str) -> re.Pattern[str]:
    """The connector's line for one exchange: the URL's origin only, since a path may carry a secret."""
    parts = urlsplit(url)
    return re.compile(re.escape(f"{method} {parts.scheme}://{parts.netloc} -> {outcome} in ") + r"\d+ ms")


# --- Methods and bodies -----------------------------------------------------------------------------


@pytest.mark.parametrize("method", METHODS)
def test_each_method_reaches_the_upstream_and_answers_its_status_and_headers(
    connector: Connector, upstream: Server, method: str
) -> None:
    run = connector(method, {"url": f"http://{upstream.authority}/echo"})

    assert [request.method for request in upstream.requests] == [method]
    assert upstream.requests[0].headers["User-Agent"] == "connector-gateway-http/1"
    assert run.error is None
    assert run.response["http_status"] == 200
    assert run.response["mimetype"] == "application/json"
    assert run.response["headers"]["Content-Type"] == "application/json"
    assert run.response["headers"]["X-Multi"] == "a, b"
    expected = {"raw_response": ""} if method == "HEAD" else {"method": method, "body": ""}
    assert run.response["body"] == expected
    assert len(run.log_lines) == 1
    assert log_line(method, f"http://{upstream.authority}/echo", "200").fullmatch(run.log_lines[0])


@pytest.mark.parametrize("method", ["POST", "PUT", "PATCH", "DELETE"])
def test_data_is_sent_as_a_json_body(connector: Connector, upstream: Server, method: str) -> None:
    data = {"invoice": "INV-7", "lines": [1, 2.5, None], "paid": False, "note": "Grüße"}

    run = connector(method, {"url": f"http://{upstream.authority}/echo", "data": data})

    [request] = upstream.requests
    assert request.headers["Content-Type"] == "application/json"
    assert json.loads(request.body) == data
    assert json.loads(run.response["body"]["body"]) == data


def test_a_content_type_header_replaces_the_json_default(connector: Connector, upstream: Server) -> None:
    headers = {"Content-Type": "application/vnd.api+json"}

    connector("POST", {"url": f"http://{upstream.authority}/echo", "data": [], "headers": headers})

    assert upstream.requests[0].headers["Content-Type"] == "application/vnd.api+json"


def test_query_params_and_headers_reach_the_upstream(connector: Connector, upstream: Server) -> None:
    payload = {
        "url": f"http://{upstream.authority}/echo?fixed=1",
        "params": {"q": "a b&c", "tag": ["x", "y"], "n": 3, "skipped": None},
        "headers": {"X-Request-Id": "r-1", "X-Count": 2, "Accept-Encoding": "gzip", "user-agent": "bpmn/1"},
    }

    connector("GET", payload)

    [request] = upstream.requests
    assert request.target == "/echo?fixed=1&q=a+b%26c&tag=x&tag=y&n=3"
    assert request.headers["X-Request-Id"] == "r-1"
    assert request.headers["X-Count"] == "2"
    assert request.headers["Accept-Encoding"] == "identity"
    assert [value for name, value in request.headers.items() if name.lower() == "user-agent"] == ["bpmn/1"]
    assert request.headers["Accept"] == "*/*"


def test_a_json_body_is_parsed(connector: Connector, upstream: Server) -> None:
    run = connector("GET", {"url": f"http://{upstream.authority}/anything"})

    assert run.response["body"] == {"route": "/anything"}


@pytest.mark.parametrize("content_type", ["application/xml", "text/xml; charset=utf-8", "application/atom+xml"])
def test_xml_is_mapped_to_an_object(connector: Connector, upstream: Server, content_type: str) -> None:
    run = connector("GET", {"url": f"http://{upstream.authority}/xml", "headers": {"X-Reply-Type": content_type}})

    assert run.error is None
    assert run.response["body"] == {
        "catalog": {
            "@xmlns:dc": "urn:dc",
            "@version": "2",
            "book": [
                {"@id": "1", "title": "Dune", "dc:creator": "Herbert"},
                {"@id": "2", "title": {"@lang": "en", "#text": "Emma"}},
            ],
            "price": {"@currency": "EUR", "#text": "12.50"},
            "empty": None,
        }
    }


@pytest.mark.parametrize("route", ["/bomb", "/external-entity"])
def test_xml_with_a_doctype_is_refused_without_expanding_it(connector: Connector, upstream: Server, route: str) -> None:
    run = connector("GET", {"url": f"http://{upstream.authority}{route}"})

    assert error_of(run) == (
        502,
        "HttpUnsafeXml",
        f"The response to GET http://{upstream.authority} is XML with a DOCTYPE or entity "
        "declaration, which the connector refuses to parse.",
    )
    assert run.response["body"] == {}


@pytest.mark.parametrize(
    ("route", "text"),
    [
        ("/text", "Grüße, plain text"),
        ("/broken-xml", "<open><unclosed></open>"),
        ("/broken-json", "{not json"),
        ("/huge-number", '{"a": 1e400}'),
    ],
)
def test_other_bodies_are_answered_as_raw_response(
    connector: Connector, upstream: Server, route: str, text: str
) -> None:
    run = connector("GET", {"url": f"http://{upstream.authority}{route}"})

    assert run.error is None
    assert run.response["body"] == {"raw_response": text}


@pytest.mark.parametrize("route", ["/too-large", "/stream-too-much"])
def test_a_body_over_16_mib_is_refused(connector: Connector, upstream: Server, route: str) -> None:
    run = connector("GET", {"url": f"http://{upstream.authority}{route}"})

    assert error_of(run) == (
        502,
        "HttpResponseTooLarge",
        f"The response of {upstream.authority} is larger than 16 MiB, the most the connector accepts.",
    )


# --- Upstream errors and retries --------------------------------------------------------------------


def test_a_404_sets_http_error_404(connector: Connector, upstream: Server) -> None:
    run = connector("GET", {"url": f"http://{upstream.authority}/missing?token={TOKEN}"})

    assert error_of(run) == (
        404,
        "HttpError404",
        f"GET http://{upstream.authority} answered 404 Not Found.",
    )
    assert run.response["body"] == {"detail": "no such invoice"}
    assert TOKEN not in run.stderr


def test_a_500_is_retried_attempts_times_then_answered(connector: Connector, upstream: Server) -> None:
    run = connector("GET", {"url": f"http://{upstream.authority}/fail", "attempts": 3})

    assert len(upstream.requests) == 3
    assert error_of(run) == (
        500,
        "HttpError500",
        f"GET http://{upstream.authority} answered 500 Internal Server Error.",
    )
    assert run.response["body"] == {"detail": "upstream broke"}
    attempt_line = log_line("GET", f"http://{upstream.authority}/fail", "500")
    assert [bool(attempt_line.fullmatch(line)) for line in run.log_lines] == [True, False, True, False, True]
    assert run.log_lines[1::2] == ["attempt 2 of 3", "attempt 3 of 3"]


def test_a_post_is_never_retried(connector: Connector, upstream: Server) -> None:
    run = connector("POST", {"url": f"http://{upstream.authority}/fail", "attempts": 3})

    assert len(upstream.requests) == 1
    assert error_of(run)[:2] == (500, "HttpError500")


def test_redirects_are_followed_for_get(connector: Connector, upstream: Server) -> None:
    run = connector("GET", {"url": f"http://{upstream.authority}/redirect"})

    assert [request.target for request in upstream.requests] == ["/redirect", "/echo"]
    assert run.response["http_status"] == 200
    assert run.response["body"] == {"method": "GET", "body": ""}
    assert log_line("GET", f"http://{upstream.authority}/redirect", "302").fullmatch(run.log_lines[0])
    assert log_line("GET", f"http://{upstream.authority}/echo", "200").fullmatch(run.log_lines[1])


def test_a_redirect_is_the_answer_for_post(connector: Connector, upstream: Server) -> None:
    run = connector("POST", {"url": f"http://{upstream.authority}/redirect", "data": {}})

    assert len(upstream.requests) == 1
    assert run.error is None
    assert run.response["http_status"] == 302
    assert run.response["headers"]["Location"] == "/echo"


def test_credentials_are_not_sent_to_another_origin_on_redirect(
    connector: Connector, upstream: Server, other_upstream: Server
) -> None:
    headers = {"X-Redirect-To": f"http://{other_upstream.authority}/echo", "Cookie": "session=1"}
    payload = {"url": f"http://{upstream.authority}/redirect-away", "headers": headers}

    run = connector("GET", {**payload, "basic_auth_username": "alice", "basic_auth_password": PASSWORD})

    assert run.response["http_status"] == 200
    assert "Authorization" in upstream.requests[0].headers
    [followed] = other_upstream.requests
    assert "Authorization" not in followed.headers
    assert "Cookie" not in followed.headers


# --- Credentials ------------------------------------------------------------------------------------


def test_basic_auth_reaches_the_upstream_and_is_never_logged(connector: Connector, upstream: Server) -> None:
    payload = {
        "url": f"http://{upstream.authority}/missing?api_key={TOKEN}",
        "basic_auth_username": "alice",
        "basic_auth_password": PASSWORD,
        "headers": {"X-Api-Key": TOKEN, "Cookie": f"session={TOKEN}"},
        "attempts": 2,
    }

    run = connector("GET", payload)

    expected = "Basic " + base64.b64encode(f"alice:{PASSWORD}".encode()).decode()
    assert upstream.requests[0].headers["Authorization"] == expected
    assert upstream.requests[0].headers["X-Api-Key"] == TOKEN
    printed = json.dumps(run.envelope) + run.stderr
    for secret in (PASSWORD, TOKEN, expected.split()[1]):
        assert secret not in printed
    assert run.envelope["spiff__logs"] == []


def test_credentials_in_the_url_are_used_and_never_logged(connector: Connector, upstream: Server) -> None:
    run = connector("GET", {"url": f"http://alice:{PASSWORD}@{upstream.authority}/echo"})

    expected = "Basic " + base64.b64encode(f"alice:{PASSWORD}".encode()).decode()
    assert upstream.requests[0].headers["Authorization"] == expected
    assert PASSWORD not in json.dumps(run.envelope) + run.stderr
    assert log_line("GET", f"http://{upstream.authority}/echo", "200").fullmatch(run.log_lines[0])


# --- Network failures and time ----------------------------------------------------------------------


@pytest.fixture
def refusing_port() -> Iterator[int]:
    """A loopback port that is bound but not listening, so connecting to it is refused."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


def test_connection_refused_is_a_connection_error(connector: Connector, refusing_port: int) -> None:
    run = connector("GET", {"url": f"http://127.0.0.1:{refusing_port}/x", "attempts": 2})

    assert error_of(run) == (
        502,
        "HttpConnectionError",
        f"Could not connect to 127.0.0.1:{refusing_port}: connection refused.",
    )
    assert run.log_lines[1] == "attempt 2 of 2"
    assert len(run.log_lines) == 3


def test_an_upstream_slower_than_the_deadline_is_a_timeout_answered_in_time(
    connector: Connector, upstream: Server
) -> None:
    run = connector("GET", {"url": f"http://{upstream.authority}/slow"}, time_limit=1.5)

    assert error_of(run) == (
        504,
        "HttpTimeout",
        f"No answer from {upstream.authority} before the command's time limit of 1.5 s ran out.",
    )
    assert not upstream.release.is_set()  # the upstream never answered
    assert run.finished < run.deadline
    assert log_line("GET", f"http://{upstream.authority}/slow", "HttpTimeout").fullmatch(run.log_lines[0])


STUCK_RESOLVER = """
import importlib.util, os, socket, sys, time
def resolve_forever(*args, **kwargs):
    time.sleep(60)
socket.getaddrinfo = resolve_forever
spec = importlib.util.spec_from_file_location("http_request", sys.argv[1])
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
sys.exit(module.main(["http_request.py", "GET"], os.environ))
"""


def test_a_request_stuck_in_name_resolution_is_still_answered_in_time(protocol: Any) -> None:
    environment = connector_env("GET", 1.0, {})

    result = subprocess.run(
        [sys.executable, "-I", "-S", "-c", STUCK_RESOLVER, str(CONNECTOR)],
        input=b'{"url": "http://stuck.example:8080/x"}',
        capture_output=True,
        env=environment,
        timeout=10,
    )

    assert time.time() < float(environment["CONNECTOR_DEADLINE"])
    assert result.returncode == 0
    envelope = json.loads(result.stdout)
    protocol.validate(envelope, "ConnectorProxyResponseV2")
    assert envelope["error"] == {
        "error_code": "HttpTimeout",
        "message": "No answer from stuck.example:8080 before the command's time limit of 1 s ran out.",
    }
    assert envelope["command_response"]["http_status"] == 504
    assert result.stderr.decode() == "no answer from stuck.example:8080 before the deadline\n"


# --- TLS --------------------------------------------------------------------------------------------


def test_a_self_signed_certificate_fails_verification_by_default(connector: Connector, tls_upstream: Server) -> None:
    run = connector("GET", {"url": f"https://{tls_upstream.authority}/echo"})

    assert error_of(run) == (
        502,
        "HttpTlsError",
        f"The TLS certificate of {tls_upstream.authority} could not be verified: self-signed certificate. "
        "The operator can set SSL_CERT_FILE to a CA bundle that trusts it.",
    )
    assert tls_upstream.requests == []


@pytest.mark.parametrize("variable", ["SSL_CERT_FILE", "REQUESTS_CA_BUNDLE"])
def test_a_ca_bundle_from_the_environment_is_trusted(
    connector: Connector, tls_upstream: Server, certificate: tuple[Path, Path], variable: str
) -> None:
    run = connector("GET", {"url": f"https://{tls_upstream.authority}/echo"}, **{variable: str(certificate[0])})

    assert run.error is None
    assert run.response["body"] == {"method": "GET", "body": ""}


def test_an_unreadable_ca_bundle_is_a_tls_error(connector: Connector, tmp_path: Path) -> None:
    missing = tmp_path / "missing.pem"

    run = connector("GET", {"url": "https://127.0.0.1:9/x"}, SSL_CERT_FILE=str(missing))

    assert error_of(run) == (
        502,
        "HttpTlsError",
        f"The CA bundle '{missing}' set in SSL_CERT_FILE could not be loaded: no such file or directory.",
    )


# --- Proxies ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("variable", ["HTTP_PROXY", "http_proxy"])
def test_an_http_proxy_is_used(connector: Connector, upstream: Server, proxy: Server, variable: str) -> None:
    setting = f"http://scout:{PASSWORD}@{proxy.authority}"

    run = connector("GET", {"url": f"http://{upstream.authority}/echo?token={TOKEN}"}, **{variable: setting})

    assert upstream.requests == []
    [request] = proxy.requests
    assert request.target == f"http://{upstream.authority}/echo?token={TOKEN}"
    assert request.headers["Proxy-Authorization"] == "Basic " + base64.b64encode(f"scout:{PASSWORD}".encode()).decode()
    assert run.response["body"] == {"proxied": f"http://{upstream.authority}/echo?token={TOKEN}"}
    expected = re.escape(f"GET http://{upstream.authority} via proxy {proxy.authority} -> 200 in ") + r"\d+ ms"
    assert re.fullmatch(expected, run.log_lines[0])
    assert PASSWORD not in run.stderr
    assert TOKEN not in run.stderr


@pytest.mark.parametrize("no_proxy", ["127.0.0.1", "localhost, 127.0.0.1", ".0.0.1", "*"])
def test_no_proxy_bypasses_the_proxy(connector: Connector, upstream: Server, proxy: Server, no_proxy: str) -> None:
    run = connector(
        "GET", {"url": f"http://{upstream.authority}/echo"}, HTTP_PROXY=f"http://{proxy.authority}", NO_PROXY=no_proxy
    )

    assert proxy.requests == []
    assert len(upstream.requests) == 1
    assert run.response["body"] == {"method": "GET", "body": ""}


def test_https_goes_through_the_proxy_in_a_tunnel(
    connector: Connector, tls_upstream: Server, proxy: Server, certificate: tuple[Path, Path]
) -> None:
    run = connector(
        "GET",
        {"url": f"https://{tls_upstream.authority}/echo"},
        HTTPS_PROXY=f"http://{proxy.authority}",
        SSL_CERT_FILE=str(certificate[0]),
    )

    assert [(request.method, request.target) for request in proxy.requests] == [("CONNECT", tls_upstream.authority)]
    assert [request.target for request in tls_upstream.requests] == ["/echo"]
    assert run.response["body"] == {"method": "GET", "body": ""}


PROXY_ENVIRONMENTS = [
    {"HTTP_PROXY": "http://upper:3128"},
    {"HTTP_PROXY": "http://upper:3128", "http_proxy": "http://lower:3128"},
    {"HTTP_PROXY": "http://upper:3128", "http_proxy": ""},
    {"HTTPS_PROXY": "proxy.example:8080", "NO_PROXY": "example.com"},
    {"http_proxy": "http://p:1", "no_proxy": ".example.com, other.org:8080"},
    {"http_proxy": "http://p:1", "no_proxy": "*"},
    {"http_proxy": "http://p:1", "NO_PROXY": "EXAMPLE.com"},
    {"http_proxy": "http://p:1", "REQUEST_METHOD": "GET"},
]
PROXY_HOSTS = ["example.com", "api.example.com", "example.com:8443", "other.org:8080", "other.org", "127.0.0.1"]


@pytest.mark.parametrize("environment", PROXY_ENVIRONMENTS)
def test_proxy_settings_are_read_as_urllib_reads_them(
    monkeypatch: pytest.MonkeyPatch, environment: dict[str, str]
) -> None:
    for name in list(os.environ):
        if name.lower().endswith("_proxy") or name == "REQUEST_METHOD":
            monkeypatch.delenv(name)
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    http_request = load_connector_module()

    proxies = http_request.proxy_settings(os.environ)

    assert proxies == urllib.request.getproxies_environment()
    urllib_bypass = urllib.request.proxy_bypass_environment  # type: ignore[attr-defined]  # not in typeshed
    for host in PROXY_HOSTS:
        assert http_request.bypasses_proxy(host, proxies.get("no")) == urllib_bypass(host, proxies), host


# --- Parameters the gateway passed but the connector cannot use --------------------------------------


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        ({"url": "ftp://example.com/file"}, "Parameter 'url' must start with http:// or https://."),
        ({"url": "example.com/path"}, "Parameter 'url' must start with http:// or https://."),
        ({"url": "http:///path"}, "Parameter 'url' has no host name."),
        ({"url": "http://example.com:99999/"}, "Parameter 'url' is not a valid URL."),
        ({"url": 7}, "Parameter 'url' is required and must be a string."),
        ({}, "Parameter 'url' is required and must be a string."),
        (
            {"url": "http://example.com", "headers": ["X-A: 1"]},
            "Parameter 'headers' must be an object of header names and values, got a list.",
        ),
        (
            {"url": "http://example.com", "headers": {"X-A": {"b": 1}}},
            "Header 'X-A' must be a string or a number, got an object.",
        ),
        (
            {"url": "http://example.com", "headers": {"X-A": "1\r\nX-Injected: yes"}},
            "Header 'X-A' must not contain line breaks.",
        ),
        (
            {"url": "http://example.com", "headers": {"X-Name": "Zoë 😀"}},
            "Header 'X-Name' holds characters HTTP headers cannot carry; percent-encode them.",
        ),
        (
            {"url": "http://example.com", "headers": {"Bad Name": "1"}},
            "Header name 'Bad Name' is not a valid HTTP header name.",
        ),
        (
            {"url": "http://example.com", "params": "a=1"},
            "Parameter 'params' must be an object of query parameters, got a string.",
        ),
        (
            {"url": "http://example.com", "params": {"a": {"b": 1}}},
            "Query parameter 'a' must be a string, a number or a list of them.",
        ),
        ({"url": "http://example.com", "attempts": 0}, "Parameter 'attempts' must be a whole number of 1 or more."),
        (
            {"url": "http://example.com", "basic_auth_password": 1234},
            "Parameter 'basic_auth_password' must be a string, got a number.",
        ),
    ],
)
def test_unusable_parameters_are_a_400_error(connector: Connector, payload: dict[str, Any], message: str) -> None:
    run = connector("GET", payload)

    assert error_of(run) == (400, "HttpInvalidParameter", message)
    assert run.stderr == ""


def test_data_that_json_cannot_carry_is_a_400_error(connector: Connector) -> None:
    run = connector("POST", {"url": "http://example.com", "data": {"ratio": float("nan")}})

    assert error_of(run) == (
        400,
        "HttpInvalidParameter",
        "Parameter 'data' holds NaN or Infinity, which JSON cannot carry.",
    )


def test_an_unknown_method_is_a_usage_error() -> None:
    result = subprocess.run(
        [sys.executable, "-I", "-S", str(CONNECTOR), "TRACE"], input=b"{}", capture_output=True, timeout=10
    )

    assert result.returncode == 64
    assert result.stdout == b""
    assert result.stderr.decode() == "usage: http_request.py GET|HEAD|POST|PUT|PATCH|DELETE < parameters.json\n"


# --- Through the gateway ----------------------------------------------------------------------------

CONTRACT_PARAMETERS = {
    "http/GetRequestV2": ["url", "headers", "params", "basic_auth_username", "basic_auth_password", "attempts"],
    "http/HeadRequestV2": ["url", "headers", "params", "basic_auth_username", "basic_auth_password", "attempts"],
    "http/PostRequestV2": ["url", "headers", "data", "basic_auth_username", "basic_auth_password"],
    "http/PutRequestV2": ["url", "headers", "data", "basic_auth_username", "basic_auth_password"],
    "http/PatchRequestV2": ["url", "headers", "data", "basic_auth_username", "basic_auth_password"],
    "http/DeleteRequestV2": ["url", "headers", "params", "data", "basic_auth_username", "basic_auth_password"],
}
CONTRACT_TYPES = {"url": "str", "basic_auth_username": "str", "basic_auth_password": "str", "attempts": "int"}


@pytest.fixture
def gateway() -> Iterator[TestClient]:
    # A proxy that refuses, and NO_PROXY to bypass it: both must reach the connector through inherit_env.
    environ = {"HTTP_PROXY": "http://127.0.0.1:9", "NO_PROXY": "127.0.0.1", "GATEWAY_SECRET": PASSWORD}
    app = create_app(Settings(manifest_dirs=(MANIFESTS,)), environ=environ)
    with TestClient(app) as client:
        yield client


def test_the_manifest_offers_the_contract_commands(gateway: TestClient, protocol: Any) -> None:
    catalog = gateway.get("/v1/commands").json()

    protocol.validate(catalog, "CommandCatalog")
    offered = {command["id"]: command["parameters"] for command in catalog}
    assert {name: [parameter["id"] for parameter in offered[name]] for name in CONTRACT_PARAMETERS} == (
        CONTRACT_PARAMETERS
    )
    for parameters in offered.values():
        for parameter in parameters:
            assert parameter["type"] == CONTRACT_TYPES.get(parameter["id"], "any")
            assert parameter["required"] == (parameter["id"] == "url")


def test_a_post_through_the_gateway(gateway: TestClient, upstream: Server, protocol: Any) -> None:
    body = {
        "url": f"http://{upstream.authority}/echo",
        "data": {"invoice": "INV-7"},
        "basic_auth_password": PASSWORD,
        "spiff__task_data": {"secret": PASSWORD},
        "spiff__task_id": "3f1c",
    }

    answer = gateway.post("/v1/do/http/PostRequestV2", json=body)

    assert answer.status_code == 200
    envelope = answer.json()
    protocol.validate_answer(200, envelope)
    assert envelope["error"] is None
    assert envelope["command_response"]["body"] == {"method": "POST", "body": '{"invoice": "INV-7"}'}
    assert log_line("POST", f"http://{upstream.authority}/echo", "200").fullmatch(envelope["spiff__logs"][0])
    assert PASSWORD not in json.dumps(envelope)
