"""The server's connection protocol: an answer's head and body leave in one write, and HTTP still works."""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest

from conftest import FAKE_MANIFESTS
from gateway.server import JoinedWrites
from serving import free_port, wait_until_live


class Recording(asyncio.Transport):
    """Stands in for the socket transport underneath: records what reaches it, in order."""

    def __init__(self) -> None:
        super().__init__()
        self.events: list[Any] = []
        self.closing = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.events.append(bytes(data))

    def close(self) -> None:
        self.closing = True
        self.events.append("close")

    def abort(self) -> None:
        self.closing = True
        self.events.append("abort")

    def is_closing(self) -> bool:
        return self.closing

    def get_write_buffer_size(self) -> int:
        return 0


async def _next_turn() -> None:
    await asyncio.sleep(0)


def test_the_writes_of_one_turn_reach_the_socket_as_one() -> None:
    async def scenario() -> list[Any]:
        socket_transport = Recording()
        joined = JoinedWrites(socket_transport, asyncio.get_running_loop())
        joined.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n")
        joined.write(b"{}")
        assert socket_transport.events == []
        assert joined.get_write_buffer_size() == 40
        await _next_turn()
        joined.write(b"next")
        await _next_turn()
        return socket_transport.events

    assert asyncio.run(scenario()) == [b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}", b"next"]


def test_closing_sends_what_is_held_first_and_aborting_drops_it() -> None:
    async def scenario() -> tuple[list[Any], list[Any]]:
        closed, aborted = Recording(), Recording()
        for transport in (closed, aborted):
            joined = JoinedWrites(transport, asyncio.get_running_loop())
            joined.write(b"head")
            joined.write(b"body")
            joined.close() if transport is closed else joined.abort()
        await _next_turn()
        return closed.events, aborted.events

    closed, aborted = asyncio.run(scenario())
    assert closed == [b"headbody", "close"]
    assert aborted == ["abort"]


@pytest.fixture
def port() -> Iterator[int]:
    port = free_port()
    command = [sys.executable, "-m", "gateway", "serve", "--port", str(port), "--manifests", str(FAKE_MANIFESTS)]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, text=True)
    try:
        wait_until_live(port, process)
        yield port
    finally:
        process.terminate()
        process.wait(timeout=10)


def _request(path: str, body: dict[str, Any] | None = None, close: bool = False) -> bytes:
    data = json.dumps(body).encode() if body is not None else b""
    method = "POST" if body is not None else "GET"
    head = f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {len(data)}\r\n"
    if body is not None:
        head += "Content-Type: application/json\r\n"
    if close:
        head += "Connection: close\r\n"
    return head.encode() + b"\r\n" + data


def _read_answers(connection: socket.socket, count: int) -> list[tuple[int, dict[str, str], Any]]:
    """Read `count` answers with a Content-Length each from one connection."""
    buffer = b""
    answers: list[tuple[int, dict[str, str], Any]] = []
    while len(answers) < count:
        while b"\r\n\r\n" not in buffer:
            chunk = connection.recv(65536)
            assert chunk, f"the connection closed after {len(answers)} answers"
            buffer += chunk
        head, _, buffer = buffer.partition(b"\r\n\r\n")
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        headers = {name.lower(): value.strip() for name, _, value in (line.partition(":") for line in header_lines)}
        length = int(headers["content-length"])
        while len(buffer) < length:
            chunk = connection.recv(65536)
            assert chunk, "the connection closed inside a body"
            buffer += chunk
        answers.append((int(status_line.split()[1]), headers, json.loads(buffer[:length])))
        buffer = buffer[length:]
    return answers


def test_pipelined_requests_on_one_connection_are_answered_in_order(port: int) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as connection:
        connection.sendall(
            _request("/v1/liveness")
            + _request("/v1/do/fake/Echo", {"text": "first"})
            + _request("/v1/do/fake/Nope", {})
            + _request("/v1/do/fake/Echo", {"text": "last"})
        )
        answers = _read_answers(connection, 4)

    assert [status for status, _, _ in answers] == [200, 200, 404, 200]
    assert answers[0][2] == {"ok": True}
    assert answers[1][2]["command_response"]["body"]["text"] == "first"
    assert answers[2][2]["error"]["error_code"] == "command_not_found"
    assert answers[3][2]["command_response"]["body"]["text"] == "last"


def test_an_answer_before_connection_close_arrives_whole(port: int) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as connection:
        connection.sendall(_request("/v1/do/fake/Echo", {"text": "bye"}, close=True))
        [(status, headers, body)] = _read_answers(connection, 1)
        assert connection.recv(1) == b""  # then the server closes

    assert status == 200
    assert headers["connection"] == "close"
    assert body["command_response"]["body"]["text"] == "bye"
