"""The gateway as a real process: callers that hang up, and SIGTERM with requests in flight."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from serving import children, free_port, send_post, wait_for, wait_until_live

FAKE = Path(__file__).parent / "connectors" / "fake.py"


@pytest.fixture
def slow_manifests(tmp_path: Path) -> Path:
    (tmp_path / "slow.yaml").write_text(
        "manifest_version: 1\nconnector: slow\ncommands:\n"
        f"  - {{name: Sleep, run: ['{{python}}', -I, -S, '{FAKE}', sleep], timeout: 20}}\n"
    )
    return tmp_path


def start(manifests: Path, **env: str) -> tuple[subprocess.Popen[str], int]:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "gateway", "serve", "--port", str(port), "--manifests", str(manifests)],
        env={**os.environ, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    wait_until_live(port, process)
    return process, port


@pytest.fixture
def gateway(slow_manifests: Path) -> Iterator[tuple[subprocess.Popen[str], int]]:
    process, port = start(slow_manifests)
    try:
        yield process, port
    finally:
        process.kill()
        process.communicate(timeout=10)


def send_sleep(port: int, seconds: float) -> socket.socket:
    return send_post(port, "/v1/do/slow/Sleep", {"seconds": seconds})


def test_a_caller_that_hangs_up_stops_its_connector(gateway: tuple[subprocess.Popen[str], int]) -> None:
    process, port = gateway
    connection = send_sleep(port, 15)
    wait_for(lambda: len(children(process.pid)) == 1, 10, "the connector's start")

    connection.close()

    wait_for(lambda: children(process.pid) == [], 10, "the connector's end after the caller hung up")
    process.terminate()
    log, _ = process.communicate(timeout=10)
    assert "slow/Sleep: the caller went away; its connector was stopped" in log
    assert "POST /v1/do/slow/Sleep 499 command=slow/Sleep error=caller_gone" in log


def read_answer(connection: socket.socket, into: list[bytes]) -> None:
    with connection:
        while chunk := connection.recv(65536):
            into.append(chunk)


def test_sigterm_lets_requests_in_flight_finish(slow_manifests: Path) -> None:
    process, port = start(slow_manifests)
    received: list[bytes] = []
    reader = threading.Thread(target=read_answer, args=(send_sleep(port, 1), received))
    reader.start()
    wait_for(lambda: len(children(process.pid)) == 1, 10, "the connector's start")

    process.send_signal(signal.SIGTERM)
    log, _ = process.communicate(timeout=30)
    reader.join(timeout=10)

    assert process.returncode == 0, log
    answer = b"".join(received)
    assert answer.startswith(b"HTTP/1.1 200 OK"), answer
    assert b'"body":{"slept":1}' in answer


def test_sigterm_stops_what_outlasts_the_grace_period(slow_manifests: Path) -> None:
    process, port = start(slow_manifests, CONNECTOR_GATEWAY_SHUTDOWN_GRACE="1")
    connection = send_sleep(port, 15)
    wait_for(lambda: len(children(process.pid)) == 1, 10, "the connector's start")
    [connector] = children(process.pid)

    process.send_signal(signal.SIGTERM)
    log, _ = process.communicate(timeout=30)
    connection.close()

    assert process.returncode == 0, log
    assert not Path(f"/proc/{connector}").exists() or _is_zombie_of_nobody(connector)


def _is_zombie_of_nobody(pid: int) -> bool:
    # Once the gateway is gone, init adopts and reaps what is left; a zombie in between is harmless.
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] == "Z"
    except OSError:
        return True


def test_several_gateway_processes_share_the_port(slow_manifests: Path) -> None:
    port = free_port()
    serve = ["serve", "--port", str(port), "--workers", "2", "--manifests", str(slow_manifests)]
    process = subprocess.Popen(
        [sys.executable, "-m", "gateway", *serve],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        wait_until_live(port, process)
        wait_for(lambda: len(_serving_processes(process.pid)) == 2, 20, "two serving processes")
        connection = send_sleep(port, 0.1)
        received: list[bytes] = []
        read_answer(connection, received)
    finally:
        process.send_signal(signal.SIGTERM)
        log, _ = process.communicate(timeout=30)

    assert process.returncode == 0, log
    assert b'"body":{"slept":0.1}' in b"".join(received)
    assert log.count("Serving 1 commands and 0 auth handlers") == 2


def _serving_processes(supervisor: int) -> list[int]:
    """uvicorn's worker processes: children of the supervisor that started with multiprocessing's spawn."""
    return [pid for pid in children(supervisor) if b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes()]
