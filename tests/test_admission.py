"""Admission: bounded concurrency and bounded waiting, refused with 429 and Retry-After."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx2
import pytest

from conftest import Protocol, make_settings
from gateway import create_app
from gateway.admission import AdmissionLimits, Slots
from gateway.errors import Saturated

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
