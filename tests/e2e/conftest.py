"""Fixtures for the end-to-end tests: the gateway as a real uvicorn subprocess on loopback, Arena
configured to call it, an upstream HTTP service for the connectors, and a server that is no proxy.

A failed test gets the tail of each gateway's log appended to its report.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Generator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx2
import pytest

from .arena import Arena

E2E = Path(__file__).parent
REPO = E2E.parents[1]
API_KEY = "e2e-shared-secret"

STARTUP_TIMEOUT = 20.0
STOP_TIMEOUT = 10.0
LOG_TAIL_LINES = 60


@dataclass
class Gateway:
    url: str
    process: subprocess.Popen[bytes]
    log_path: Path
    api_key: str | None

    def log_tail(self) -> str:
        lines = self.log_path.read_text(encoding="utf-8", errors="replace").splitlines()
        return "\n".join(lines[-LOG_TAIL_LINES:])


def manifest_dirs() -> list[Path]:
    """The e2e test connectors, the bundled ones and the Node example, each when it exists."""
    candidates = [E2E / "manifests", REPO / "manifests", REPO / "examples" / "node-connector"]
    return [directory for directory in candidates if directory.is_dir()]


@contextmanager
def running_gateway(log_path: Path, api_key: str | None = None) -> Iterator[Gateway]:
    """`python -m gateway serve` on a free loopback port, live before it is yielded, stopped after."""
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith("CONNECTOR_GATEWAY_") and name != "CONNECTOR_PROXY_API_KEY"
    }
    if api_key is not None:
        env["CONNECTOR_PROXY_API_KEY"] = api_key
    port = _free_port()
    argv = [sys.executable, "-m", "gateway", "serve", "--host", "127.0.0.1", "--port", str(port)]
    for directory in manifest_dirs():
        argv += ["--manifests", str(directory)]

    with log_path.open("wb") as log:
        process = subprocess.Popen(argv, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    gateway = Gateway(f"http://127.0.0.1:{port}", process, log_path, api_key)
    try:
        _wait_until_live(gateway)
        yield gateway
    finally:
        _stop(process)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _wait_until_live(gateway: Gateway) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT
    with httpx2.Client(timeout=1.0, trust_env=False) as client:
        while time.monotonic() < deadline:
            if gateway.process.poll() is not None:
                pytest.fail(
                    f"The gateway exited with status {gateway.process.returncode} before answering "
                    f"/v1/liveness. Its log:\n{gateway.log_tail()}"
                )
            try:
                if client.get(f"{gateway.url}/v1/liveness").status_code == 200:
                    return
            except httpx2.TransportError:
                pass
            time.sleep(0.05)
    pytest.fail(f"The gateway did not answer /v1/liveness within {STARTUP_TIMEOUT:g} s. Its log:\n{gateway.log_tail()}")


def _stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(timeout=STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=STOP_TIMEOUT)


@pytest.fixture(scope="session")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    with running_gateway(tmp_path_factory.mktemp("gateway") / "gateway.log") as running:
        yield running


@pytest.fixture(scope="session")
def keyed_gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    """A gateway started with CONNECTOR_PROXY_API_KEY set to API_KEY."""
    with running_gateway(tmp_path_factory.mktemp("keyed-gateway") / "gateway.log", API_KEY) as running:
        yield running


@pytest.fixture
def connect() -> Iterator[Callable[..., Arena]]:
    """Makes an Arena configured with a proxy URL and optional API key; closes them after the test."""
    made: list[Arena] = []

    def connect(proxy_url: str, api_key: str | None = None) -> Arena:
        made.append(Arena(proxy_url, api_key))
        return made[-1]

    yield connect
    for arena in made:
        arena.close()


@pytest.fixture
def arena(gateway: Gateway, connect: Callable[..., Arena]) -> Arena:
    """Arena configured for the gateway that needs no API key."""
    return connect(gateway.url)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, Any, Any]:
    report = yield
    if report.failed:
        for value in getattr(item, "funcargs", {}).values():
            if isinstance(value, Gateway):
                report.sections.append((f"gateway log, last lines ({value.url})", value.log_tail()))
    return report


# --- Loopback HTTP servers ---------------------------------------------------------------------


@dataclass
class Server:
    url: str
    requests: list[str] = field(default_factory=list)


class _Handler(BaseHTTPRequestHandler):
    server: _RecordingServer

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: the tests read `requests` instead of stderr."""

    def answer(self, status: int, content_type: str, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def answer_json(self, status: int, document: Any) -> None:
        self.answer(status, "application/json", json.dumps(document).encode())


class _RecordingServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, handler: type[_Handler]) -> None:
        super().__init__(("127.0.0.1", 0), handler)
        self.record = Server(f"http://127.0.0.1:{self.server_address[1]}")


@contextmanager
def serving(handler: type[_Handler]) -> Iterator[Server]:
    server = _RecordingServer(handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield server.record
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=STOP_TIMEOUT)


TICKETS = {7: {"id": 7, "title": "Printer on fire", "status": "open"}}
PROFILES = {"ada": {"name": "Ada Lovelace", "since": 1843}}


class _UpstreamHandler(_Handler):
    """A tickets API under /api (for the Node example) and a profiles API (for the http connector)."""

    def do_GET(self) -> None:
        self.server.record.requests.append(f"GET {self.path}")
        kind, _, key = self.path.strip("/").rpartition("/")
        if kind == "api/tickets" and key.isdigit() and int(key) in TICKETS:
            self.answer_json(200, TICKETS[int(key)])
        elif kind == "api/tickets":
            self.answer_json(404, {"error": f"No ticket {key}."})
        elif kind == "profiles" and key in PROFILES:
            self.answer_json(200, PROFILES[key])
        else:
            self.answer(404, "text/plain", b"Not found")


class _NotAProxyHandler(_Handler):
    """What a misconfigured proxy URL may reach: a reverse proxy's HTML error page."""

    def do_POST(self) -> None:
        self.server.record.requests.append(f"POST {self.path}")
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.answer(502, "text/html", NOT_A_PROXY_PAGE.encode())


NOT_A_PROXY_PAGE = "<html><body><h1>502 Bad Gateway</h1></body></html>"


@pytest.fixture(scope="session")
def upstream() -> Iterator[Server]:
    with serving(_UpstreamHandler) as server:
        yield server


@pytest.fixture
def not_a_proxy() -> Iterator[Server]:
    with serving(_NotAProxyHandler) as server:
        yield server
