"""The bundled http connectors in worker mode: one long-lived process, several requests at a time.

The connector is fed request lines as the gateway writes them, then served through the gateway
with the bundled manifest; upstreams are the loopback servers of test_http_connector.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient

from conftest import Protocol, make_settings
from gateway import create_app
from gateway.manifest import WorkerSettings
from gateway.settings import bundled_manifests
from test_http_connector import (
    CONNECTOR,
    MANIFESTS,
    PASSWORD,
    TOKEN,
    Server,
    UpstreamHandler,
    log_line,
    serve,
)

COMMANDS = {
    "GET": "http/GetRequestV2",
    "HEAD": "http/HeadRequestV2",
    "POST": "http/PostRequestV2",
    "PUT": "http/PutRequestV2",
    "PATCH": "http/PatchRequestV2",
    "DELETE": "http/DeleteRequestV2",
}


@pytest.fixture
def upstream() -> Iterator[Server]:
    yield from serve(UpstreamHandler)


class Worker:
    """The connector started as the gateway starts a worker; its answers are collected by id as they come."""

    def __init__(self, concurrency: int, script: list[str] | None = None) -> None:
        env = {
            "PATH": "/usr/local/bin:/usr/bin:/bin",
            "LANG": "C.UTF-8",
            "CONNECTOR_PROTOCOL": "1",
            "CONNECTOR_MODE": "worker",
            "CONNECTOR_CONCURRENCY": str(concurrency),
        }
        self.process = subprocess.Popen(
            [sys.executable, "-I", "-S", *(script or [str(CONNECTOR)])],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=MANIFESTS,
            env=env,
        )
        self.answers: dict[str, dict[str, Any]] = {}
        self.order: list[str] = []
        self.answered_at: dict[str, float] = {}
        self._arrived = threading.Condition()
        self._stderr: list[bytes] = []
        self._stderr_read = threading.Thread(target=self._read_stderr, daemon=True)
        self._stderr_read.start()
        self._stdout_read = threading.Thread(target=self._read, daemon=True)
        self._stdout_read.start()
        # Deadlines in the tests count from when the worker is ready, not from when it was started.
        self.request("ready", "GET", None)
        self.answer("ready")
        self.answers.clear()
        self.order.clear()

    def _read_stderr(self) -> None:
        assert self.process.stderr is not None
        self._stderr.extend(self.process.stderr)

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            answer = json.loads(line)
            with self._arrived:
                self.answers[answer["id"]] = answer
                self.order.append(answer["id"])
                self.answered_at[answer["id"]] = time.time()
                self._arrived.notify_all()

    def send(self, message: dict[str, Any] | str) -> None:
        assert self.process.stdin is not None
        line = message if isinstance(message, str) else json.dumps(message)
        self.process.stdin.write(line.encode() + b"\n")
        self.process.stdin.flush()

    def request(self, request_id: str, method: str, payload: Any, time_limit: float = 10) -> float:
        """Sends a request line and answers its deadline."""
        deadline = time.time() + time_limit
        self.send({"id": request_id, "command": COMMANDS[method], "deadline": deadline, "payload": payload})
        return deadline

    def answer(self, request_id: str, timeout: float = 10) -> dict[str, Any]:
        with self._arrived:
            assert self._arrived.wait_for(lambda: request_id in self.answers, timeout), f"no answer to {request_id}"
            return self.answers[request_id]

    def close(self, timeout: float = 10) -> str:
        """End of input: the worker finishes what it holds and exits; answers its stderr."""
        assert self.process.stdin is not None
        self.process.stdin.close()
        assert self.process.wait(timeout) == 0
        self._stderr_read.join(timeout)
        return b"".join(self._stderr).decode()

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()
        self._stdout_read.join(5)
        self._stderr_read.join(5)
        for pipe in (self.process.stdin, self.process.stdout, self.process.stderr):
            with contextlib.suppress(BrokenPipeError):
                pipe.close()  # type: ignore[union-attr]


@pytest.fixture
def workers() -> Iterator[list[Worker]]:
    started: list[Worker] = []
    yield started
    for worker in started:
        worker.kill()


@pytest.fixture
def worker(workers: list[Worker]) -> Worker:
    workers.append(Worker(concurrency=8))
    return workers[0]


def spawn(method: str, stdin: bytes) -> dict[str, Any]:
    """What the connector prints when the gateway starts it for one request."""
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "CONNECTOR_DEADLINE": repr(time.time() + 10)}
    result = subprocess.run(
        [sys.executable, "-I", "-S", str(CONNECTOR), method], input=stdin, capture_output=True, env=env, timeout=15
    )
    assert result.returncode == 0, result.stderr.decode()
    envelope: dict[str, Any] = json.loads(result.stdout)
    return envelope


def timeout_error(upstream: Server, limit: str) -> dict[str, str]:
    return {
        "error_code": "HttpTimeout",
        "message": f"No answer from {upstream.authority} before the command's time limit of {limit} s ran out.",
    }


# --- The line protocol ------------------------------------------------------------------------------


def test_one_worker_serves_every_command_with_its_method(worker: Worker, upstream: Server, protocol: Protocol) -> None:
    url = f"http://{upstream.authority}/echo"
    for method in COMMANDS:
        worker.request(method, method, {"url": url, "data": {"m": method}})

    for method in COMMANDS:
        answer = worker.answer(method)
        protocol.validate(answer["result"], "ConnectorProxyResponseV2")
        response = answer["result"]["command_response"]
        assert response["http_status"] == 200
        if method != "HEAD":
            assert response["body"]["method"] == method
        assert len(answer["logs"]) == 1
        assert log_line(method, url, "200").fullmatch(answer["logs"][0])
    stderr = worker.close()
    assert sorted(request.method for request in upstream.requests) == sorted(COMMANDS)
    # With several requests at once the gateway cannot tell whose a stderr line is: the id says.
    for method in COMMANDS:
        [line] = [line for line in stderr.splitlines() if line.startswith(f"[{method}] ")]
        assert log_line(method, url, "200").fullmatch(line.removeprefix(f"[{method}] "))


def test_concurrent_requests_keep_their_own_deadlines(worker: Worker, upstream: Server) -> None:
    started = time.time()
    slow_deadline = worker.request("slow", "GET", {"url": f"http://{upstream.authority}/slow"}, time_limit=2)
    quick_deadline = worker.request("quick", "GET", {"url": f"http://{upstream.authority}/slow"}, time_limit=1)
    worker.request("echo", "POST", {"url": f"http://{upstream.authority}/echo"})

    assert worker.answer("slow")["result"]["error"] == timeout_error(upstream, "2")
    assert worker.order == ["echo", "quick", "slow"]
    assert worker.answers["quick"]["result"]["error"] == timeout_error(upstream, "1")
    assert worker.answered_at["quick"] < quick_deadline
    assert worker.answered_at["slow"] < slow_deadline
    assert worker.answered_at["slow"] - started < 2.5  # side by side, not one after the other
    assert log_line("GET", f"http://{upstream.authority}/slow", "HttpTimeout").fullmatch(
        worker.answers["quick"]["logs"][0]
    )


def test_a_cancelled_request_stops_and_is_never_answered(worker: Worker, upstream: Server) -> None:
    worker.request("gone", "GET", {"url": f"http://{upstream.authority}/slow", "attempts": 3}, time_limit=20)
    waited = time.monotonic()
    while not upstream.requests and time.monotonic() - waited < 5:
        time.sleep(0.01)

    worker.send({"cancel": "gone"})
    worker.send({"cancel": "never-sent"})
    worker.request("next", "GET", {"url": f"http://{upstream.authority}/echo"})
    assert worker.answer("next")["result"]["error"] is None
    closing = time.monotonic()
    stderr = worker.close()

    assert time.monotonic() - closing < 2  # the slow exchange was cut, not waited for
    assert "gone" not in worker.answers
    assert len(upstream.requests) == 2  # no retry after the cancellation
    assert re.search(r"^\[gone\] GET http://\S+ -> HttpConnectionError in \d+ ms$", stderr, re.MULTILINE)


@pytest.mark.parametrize("payload", [[1, 2], "text", None, 7])
def test_a_payload_that_is_not_an_object_gets_the_spawn_mode_envelope(worker: Worker, payload: Any) -> None:
    worker.request("bad", "POST", payload)

    answer = worker.answer("bad")

    assert answer == {"id": "bad", "result": spawn("POST", json.dumps(payload).encode()), "logs": []}
    assert answer["result"]["error"] == {
        "error_code": "HttpInvalidParameter",
        "message": "The connector's input must be a JSON object of parameters.",
    }
    assert spawn("POST", b"{not json") == answer["result"]


def test_lines_that_are_not_requests_are_logged_and_the_worker_goes_on(worker: Worker, upstream: Server) -> None:
    worker.send("this is not json")
    worker.send({"no": "id"})
    worker.send({"id": "odd", "command": "http/TraceRequestV2", "deadline": time.time() + 5, "payload": {}})
    worker.request("after", "GET", {"url": f"http://{upstream.authority}/echo"})

    assert worker.answer("odd") == {
        "id": "odd",
        "failed": "The http connector has no command 'http/TraceRequestV2'; it has GetRequestV2, HeadRequestV2, "
        "PostRequestV2, PutRequestV2, PatchRequestV2, DeleteRequestV2.",
    }
    assert worker.answer("after")["result"]["command_response"]["http_status"] == 200
    ignored = "http connector: ignored a line that is not a request (a JSON object with a string 'id')"
    assert worker.close().splitlines()[:2] == [ignored, ignored]


def test_one_request_at_a_time_leaves_the_logs_to_stderr(workers: list[Worker], upstream: Server) -> None:
    workers.append(Worker(concurrency=1))
    url = f"http://{upstream.authority}/echo"
    workers[0].request("one", "GET", {"url": url})

    answer = workers[0].answer("one")

    assert "logs" not in answer  # the gateway takes the stderr lines as this request's logs
    assert log_line("GET", url, "200").fullmatch(workers[0].close().strip())


def test_secrets_never_reach_the_answer_or_stderr(worker: Worker, upstream: Server) -> None:
    payload = {
        "url": f"http://alice:{PASSWORD}@{upstream.authority}/missing?token={TOKEN}",
        "headers": {"X-Api-Key": TOKEN},
        "attempts": 2,
    }
    worker.request("secret", "GET", payload)

    answer = worker.answer("secret")
    printed = json.dumps(answer) + worker.close()

    assert answer["result"]["error"]["error_code"] == "HttpError404"
    assert PASSWORD not in printed
    assert TOKEN not in printed


STUCK_RESOLVER = """
import importlib.util, os, socket, sys, time
real_getaddrinfo = socket.getaddrinfo
def getaddrinfo(host, *args, **kwargs):
    if host == "stuck.example":
        time.sleep(60)
    return real_getaddrinfo(host, *args, **kwargs)
socket.getaddrinfo = getaddrinfo
spec = importlib.util.spec_from_file_location("http_request", sys.argv[1])
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
sys.exit(module.main(["http_request.py"], os.environ))
"""


def test_a_request_stuck_in_name_resolution_is_answered_in_time_and_holds_nobody_up(
    workers: list[Worker], upstream: Server
) -> None:
    workers.append(Worker(concurrency=2, script=["-c", STUCK_RESOLVER, str(CONNECTOR)]))
    worker = workers[0]

    deadline = worker.request("stuck", "GET", {"url": "http://stuck.example:8080/x"}, time_limit=1)
    worker.request("fine", "GET", {"url": f"http://localhost:{upstream.server_port}/echo"})

    assert worker.answer("fine")["result"]["error"] is None
    stuck = worker.answer("stuck")
    assert worker.answered_at["stuck"] < deadline
    assert stuck["result"]["error"] == {
        "error_code": "HttpTimeout",
        "message": "No answer from stuck.example:8080 before the command's time limit of 1 s ran out.",
    }
    assert stuck["logs"] == ["no answer from stuck.example:8080 before the deadline"]
    worker.request("later", "GET", {"url": f"http://localhost:{upstream.server_port}/echo"})
    assert worker.answer("later")["result"]["error"] is None


# --- Through the gateway ----------------------------------------------------------------------------


@pytest.fixture
def bundled() -> Iterator[TestClient]:
    environ = {"NO_PROXY": "127.0.0.1", "HTTP_PROXY": "http://127.0.0.1:9"}
    app = create_app(make_settings(manifest_dirs=(bundled_manifests(),)), environ=environ)
    with TestClient(app) as client:
        yield client


def test_the_bundled_manifest_runs_one_pool_of_workers_for_every_command(bundled: TestClient) -> None:
    registry = bundled.app.state.registry  # type: ignore[attr-defined]
    commands = [registry.commands[command] for command in COMMANDS.values()]

    assert {command.workers for command in commands} == {WorkerSettings(size=2, concurrency=8, start="lazy")}
    assert len({command.pool_key for command in commands}) == 1
    assert {command.timeout for command in commands} == {30}


def test_concurrent_requests_through_the_gateway(bundled: TestClient, upstream: Server, protocol: Protocol) -> None:
    url = f"http://{upstream.authority}/echo"

    def call(method: str) -> dict[str, Any]:
        answer = bundled.post(f"/v1/do/{COMMANDS[method]}", json={"url": url, "data": {"m": method}})
        assert answer.status_code == 200
        envelope: dict[str, Any] = answer.json()
        protocol.validate_answer(200, envelope)
        return envelope

    with ThreadPoolExecutor(12) as pool:
        envelopes = list(pool.map(call, [*COMMANDS, *COMMANDS]))

    for method, envelope in zip([*COMMANDS, *COMMANDS], envelopes, strict=True):
        assert envelope["error"] is None
        assert envelope["command_response"]["http_status"] == 200
        if method != "HEAD":
            assert envelope["command_response"]["body"]["method"] == method
        [line] = envelope["spiff__logs"]
        assert log_line(method, url, "200").fullmatch(line)
    pools = bundled.app.state.pools.pools  # type: ignore[attr-defined]
    [pool] = pools.values()
    assert 1 <= pool.spawned <= 2


def test_the_gateway_answers_the_connectors_own_errors(bundled: TestClient, upstream: Server) -> None:
    answer = bundled.post("/v1/do/http/GetRequestV2", json={"url": f"http://{upstream.authority}/missing"}).json()

    assert answer["error"] == {
        "error_code": "HttpError404",
        "message": f"GET http://{upstream.authority} answered 404 Not Found.",
    }
    assert answer["command_response"]["http_status"] == 404


def test_one_request_at_a_time_through_the_gateway_logs_each_line_once(
    tmp_path: Path, upstream: Server, protocol: Protocol
) -> None:
    manifest = (MANIFESTS / "http.yaml").read_text()
    single = manifest.replace("workers: {size: 2, concurrency: 8, start: lazy}", "workers: {size: 1, concurrency: 1}")
    assert single != manifest
    (tmp_path / "manifests").mkdir()
    (tmp_path / "manifests" / "http.yaml").write_text(single)
    os.symlink(CONNECTOR.parent, tmp_path / "connectors")
    url = f"http://{upstream.authority}/echo"

    with TestClient(create_app(make_settings(manifest_dirs=(tmp_path / "manifests",)))) as client:
        envelopes = [client.post("/v1/do/http/GetRequestV2", json={"url": url}).json() for _ in range(5)]

    for envelope in envelopes:
        protocol.validate_answer(200, envelope)
        [line] = envelope["spiff__logs"]
        assert log_line("GET", url, "200").fullmatch(line)
