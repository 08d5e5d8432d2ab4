"""Helpers for tests that run the gateway as a real process on a loopback port."""

from __future__ import annotations

import contextlib
import json
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx2


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def wait_until_live(port: int, process: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"the gateway exited early:\n{process.stdout.read() if process.stdout else ''}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/liveness", timeout=1) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.05)
    raise AssertionError("the gateway did not answer /v1/liveness within 20 s")


def children(pid: int) -> list[int]:
    """The processes whose parent is `pid`, read from /proc."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rpartition(")")[2].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def wait_for(condition: Callable[[], bool], seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not happen within {seconds} s")
        time.sleep(0.02)


def metric(port: int, sample: str) -> float:
    """The value of one sample of the gateway's /metrics, named with its labels as exposed."""
    for line in httpx2.get(f"http://127.0.0.1:{port}/metrics").text.splitlines():
        if line.startswith(f"{sample} "):
            return float(line.split()[1])
    raise AssertionError(f"no metric {sample}")


def send_post(port: int, path: str, payload: dict[str, Any]) -> socket.socket:
    """A POST sent on a connection left open, so that a test can read its answer or hang up instead."""
    body = json.dumps(payload).encode()
    connection = socket.create_connection(("127.0.0.1", port), timeout=30)
    connection.sendall(
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n".encode()
        + body
    )
    return connection


@dataclass
class Gateway:
    """A gateway process serving one manifest directory, its output in a log file."""

    process: subprocess.Popen[bytes]
    port: int
    log: Path

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def commands(self) -> dict[str, Any]:
        return {command["id"]: command for command in httpx2.get(self.url("/v1/commands")).json()}

    def do(self, command: str, body: dict[str, Any]) -> httpx2.Response:
        return httpx2.post(self.url(f"/v1/do/{command}"), json=body, timeout=30)

    def metric(self, name: str) -> float:
        """The value of a metric without labels, such as `requests_queued`."""
        return metric(self.port, f"connector_gateway_{name}")

    def logged(self) -> str:
        return self.log.read_text()

    def wait_logged(self, text: str, seconds: float = 2) -> None:
        """Log lines are written in batches, a moment after they are logged."""
        wait_for(lambda: text in self.logged(), seconds, f"the log line {text!r}")


@contextlib.contextmanager
def running(directory: Path, *flags: str) -> Iterator[Gateway]:
    port = free_port()
    log = directory.parent / f"gateway-{port}.log"
    with log.open("wb") as sink:
        process = subprocess.Popen(
            [sys.executable, "-m", "gateway", "serve", "--port", str(port), "--manifests", str(directory), *flags],
            stdout=sink,
            stderr=sink,
        )
    try:
        wait_until_live(port, process)  # type: ignore[arg-type]
        yield Gateway(process, port, log)
    finally:
        process.kill()
        process.wait(timeout=10)


def alive(pid: int) -> bool:
    """Whether a process runs: not gone, and not a zombie waiting for its parent."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] != "Z"
    except OSError:
        return False
