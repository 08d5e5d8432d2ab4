"""Admission: bounded concurrency and bounded waiting, refused with 429 and Retry-After."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx2
import pytest
from starlette.types import Message

from conftest import Protocol, make_settings, metric
from gateway import create_app
from gateway.admission import AdmissionLimits, Slots
from gateway.errors import Saturated
from gateway.settings import Settings
from serving import children, free_port, send_post, wait_for, wait_until_live

FAKE = Path(__file__).parent / "connectors" / "fake.py"


def test_a_full_queue_refuses_at_once() -> None:
    async def scenario() -> None:
        slots = Slots(size=1, queue=1)
        await slots.acquire(1.0, "Command 'a/B'")
        waiter = asyncio.ensure_future(slots.acquire(1.0, "Command 'a/B'"))
        await asyncio.sleep(0)
        assert slots.waiting == 1

        with pytest.raises(Saturated) as refused:
            await slots.acquire(1.0, "Command 'a/B'")
        assert refused.value.message == "Command 'a/B' is busy: 1 running and 1 waiting. Try again shortly."

        slots.release()
        await waiter
        assert (slots.running, slots.waiting) == (1, 0)

    asyncio.run(scenario())


def test_waiting_is_bounded_in_time() -> None:
    async def scenario() -> None:
        slots = Slots(size=1, queue=5)
        await slots.acquire(1.0, "The gateway")

        with pytest.raises(Saturated) as refused:
            await slots.acquire(0.05, "The gateway")

        assert refused.value.message == "The gateway is busy: no run could start within 0.05 s. Try again shortly."
        assert slots.waiting == 0

    asyncio.run(scenario())


def run_two_at_once(app: Any, path: str) -> list[httpx2.Response]:
    async def scenario() -> list[httpx2.Response]:
        transport = httpx2.ASGITransport(app=app)
        async with httpx2.AsyncClient(transport=transport, base_url="http://gateway") as client:
            calls = [client.post(path, json={"seconds": 0.5}) for _ in range(2)]
            return list(await asyncio.gather(*calls))

    return asyncio.run(scenario())


def assert_one_refused(responses: list[httpx2.Response], protocol: Protocol, message: str) -> None:
    ok, refused = sorted(responses, key=lambda response: response.status_code)
    assert ok.status_code == 200
    assert ok.json()["command_response"]["body"] == {"slept": 0.5}
    assert refused.status_code == 429
    assert refused.headers["retry-after"] == "1"
    protocol.validate_answer(429, refused.json())
    assert refused.json()["error"] == {"error_code": "too_many_requests", "message": message}


def sleeper(directory: Path, extra: str = "") -> Path:
    (directory / "one.yaml").write_text(
        "manifest_version: 1\nconnector: one\ncommands:\n"
        f"  - {{name: Sleep, run: ['{{python}}', -I, -S, '{FAKE}', sleep]{extra}}}\n"
    )
    return directory


def test_a_command_at_its_concurrency_refuses_with_429(tmp_path: Path, protocol: Protocol) -> None:
    app = create_app(make_settings(manifest_dirs=(sleeper(tmp_path, ", concurrency: 1, queue: 0"),)))

    responses = run_two_at_once(app, "/v1/do/one/Sleep")

    assert_one_refused(responses, protocol, "Command 'one/Sleep' is busy: 1 running and 0 waiting. Try again shortly.")
    assert app.state.runner.spawned == 1


def test_the_gateway_at_its_limit_refuses_with_429(tmp_path: Path, protocol: Protocol) -> None:
    limits = AdmissionLimits(max_running=1, max_waiting=0)
    app = create_app(make_settings(manifest_dirs=(sleeper(tmp_path),), admission=limits))

    responses = run_two_at_once(app, "/v1/do/one/Sleep")

    assert_one_refused(responses, protocol, "The gateway is busy: 1 running and 0 waiting. Try again shortly.")
    assert app.state.runner.spawned == 1


def test_a_queued_request_runs_once_a_slot_frees(tmp_path: Path) -> None:
    app = create_app(make_settings(manifest_dirs=(sleeper(tmp_path, ", concurrency: 1, queue: 1"),)))

    responses = run_two_at_once(app, "/v1/do/one/Sleep")

    assert [response.status_code for response in responses] == [200, 200]
    assert app.state.runner.spawned == 2


# A gateway-wide budget of request body bytes held at once


async def post(app: Any, receive: Callable[[], Awaitable[Message]], length: int) -> tuple[int, dict[str, str], Any]:
    """One POST to one/Sleep straight into the app, its body given by `receive`: status, headers and JSON."""
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "server": ("127.0.0.1", 7004),
        "client": ("127.0.0.1", 50000),
        "root_path": "",
        "path": "/v1/do/one/Sleep",
        "raw_path": b"/v1/do/one/Sleep",
        "query_string": b"",
        "headers": [(b"content-type", b"application/json"), (b"content-length", str(length).encode())],
    }
    sent: list[Message] = []

    async def send(message: Message) -> None:
        sent.append(message)

    await app(scope, receive, send)
    headers = {name.decode(): value.decode() for name, value in sent[0]["headers"]}
    return sent[0]["status"], headers, json.loads(b"".join(message.get("body", b"") for message in sent[1:]))


def whole(body: bytes) -> Callable[[], Awaitable[Message]]:
    async def receive() -> Message:
        return {"type": "http.request", "body": body, "more_body": False}

    return receive


def test_bodies_past_the_budget_held_at_once_are_refused_with_429(tmp_path: Path, protocol: Protocol) -> None:
    app = create_app(
        make_settings(manifest_dirs=(sleeper(tmp_path),), max_body_bytes=1000, max_buffered_body_bytes=1500)
    )
    body = json.dumps({"seconds": 0, "pad": "x" * 880}).encode()

    async def scenario() -> list[tuple[int, dict[str, str], Any]]:
        halfway, rest = asyncio.Event(), asyncio.Event()
        parts = [body[:100], body[100:]]

        async def slowly() -> Message:  # the first caller sends half its body, then waits
            if len(parts) == 2:
                halfway.set()
                return {"type": "http.request", "body": parts.pop(0), "more_body": True}
            await rest.wait()
            return {"type": "http.request", "body": parts.pop(0), "more_body": False}

        first = asyncio.ensure_future(post(app, slowly, len(body)))
        await asyncio.wait_for(halfway.wait(), 10)
        refused = await post(app, whole(body), len(body))
        rest.set()
        answered = await first
        then = await post(app, whole(body), len(body))  # its turn, once the first is answered
        return [answered, refused, then]

    answered, refused, then = asyncio.run(scenario())

    assert answered[0] == then[0] == 200
    status, headers, answer = refused
    assert status == 429
    assert headers["retry-after"] == "1"
    protocol.validate_answer(429, answer)
    assert answer["error"] == {
        "error_code": "too_many_requests",
        "message": f"The gateway is busy: the bodies of other requests take {len(body)} bytes, and this one would "
        "pass the limit of 1500 bytes held at once. Try again shortly.",
    }
    assert app.state.runner.spawned == 2
    assert app.state.bodies.held == 0


def test_a_body_alone_is_never_refused_by_the_budget(tmp_path: Path) -> None:
    app = create_app(make_settings(manifest_dirs=(sleeper(tmp_path),), max_body_bytes=1000, max_buffered_body_bytes=10))
    body = json.dumps({"seconds": 0, "pad": "x" * 880}).encode()

    status, _, answer = asyncio.run(post(app, whole(body), len(body)))

    assert status == 200, answer
    assert app.state.bodies.held == 0


def test_the_budget_is_four_bodies_of_the_largest_size_unless_set() -> None:
    assert Settings.from_env({}).max_buffered_body_bytes == 4 * Settings.from_env({}).max_body_bytes
    assert Settings.from_env({"CONNECTOR_GATEWAY_MAX_BUFFERED_BODY_BYTES": "5000"}).max_buffered_body_bytes == 5000


# A caller that hangs up while queued for a slot


def test_a_caller_that_hangs_up_while_queued_is_never_run(tmp_path: Path) -> None:
    manifests = sleeper(tmp_path, ", concurrency: 1, queue: 4, timeout: 30")
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "gateway", "serve", "--port", str(port), "--manifests", str(manifests)],
        env={**os.environ, "CONNECTOR_GATEWAY_MAX_WAIT": "60"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        wait_until_live(port, process)
        running = send_post(port, "/v1/do/one/Sleep", {"seconds": 20})
        wait_for(lambda: len(children(process.pid)) == 1, 10, "the first run's start")
        queued = send_post(port, "/v1/do/one/Sleep", {"seconds": 0})
        wait_for(lambda: metric(port, "connector_gateway_requests_queued") == 1, 10, "the second request's wait")

        queued.close()

        # While the first still runs, the second leaves the queue: its caller is gone.
        wait_for(lambda: metric(port, "connector_gateway_requests_queued") == 0, 10, "the second request's end")
        assert metric(port, "connector_gateway_runs_in_progress") == 1
        running.close()
        wait_for(lambda: metric(port, "connector_gateway_runs_in_progress") == 0, 10, "the first run's end")
        assert metric(port, 'connector_gateway_processes_spawned_total{mode="spawn"}') == 1
    finally:
        process.terminate()
        log, _ = process.communicate(timeout=30)

    assert "one/Sleep: the caller went away while queued; nothing was run" in log
    assert "one/Sleep: the caller went away; its connector was stopped" in log
    assert log.count("POST /v1/do/one/Sleep 499 command=one/Sleep error=caller_gone") == 2
