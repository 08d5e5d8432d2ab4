"""Worker mode: pools of long-lived processes, replaced when they fail, recycled, started and stopped."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2
import pytest
from starlette.testclient import TestClient

from conftest import Protocol, make_settings
from gateway import create_app

WORKER = Path(__file__).parent / "connectors" / "fake_worker.py"


def serve(directory: Path, workers: str, timeout: float = 5, run: str | None = None) -> TestClient:
    run = run or f"['{{python}}', -I, -S, '{WORKER}']"
    (directory / "pool.yaml").write_text(
        "manifest_version: 1\nconnector: pool\n"
        f"defaults: {{run: {run}, mode: worker, workers: {workers}, timeout: {timeout}}}\n"
        "commands:\n  - {name: Do, parameters: [{id: do, type: str}]}\n  - {name: Other}\n"
    )
    app = create_app(make_settings(manifest_dirs=(directory,)))
    assert app.state.registry.failures == ()
    return TestClient(app)


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    with serve(tmp_path, "{size: 1}") as test_client:
        yield test_client


def do(client: TestClient, protocol: Protocol, body: dict[str, Any], command: str = "Do") -> dict[str, Any]:
    response = client.post(f"/v1/do/pool/{command}", json=body)
    assert response.status_code == 200, response.text
    answer: dict[str, Any] = response.json()
    protocol.validate_answer(200, answer)
    return answer


def pid(client: TestClient, protocol: Protocol) -> int:
    value: int = do(client, protocol, {"do": "pid"})["command_response"]["body"]["pid"]
    return value


def test_a_worker_serves_many_requests_and_commands(client: TestClient, protocol: Protocol) -> None:
    first = do(client, protocol, {"text": "hi", "spiff__task_id": "t-1"})["command_response"]["body"]
    other = do(client, protocol, {}, command="Other")["command_response"]["body"]
    seen = do(client, protocol, {"do": "pid"})["command_response"]["body"]

    assert first["payload"] == {"text": "hi", "spiff__task_id": "t-1"}
    assert first["command"] == "pool/Do"
    assert first["deadline"] > 0
    assert other["command"] == "pool/Other"
    assert seen["served"] == 3
    assert "worker mode, 1 worker alive" in client.get("/").text
    assert seen["env"]["CONNECTOR_MODE"] == "worker"
    assert seen["env"]["CONNECTOR_CONCURRENCY"] == "1"
    assert "CONNECTOR_REQUEST_ID" not in seen["env"]
    assert client.app.state.pools.of(client.app.state.registry.commands["pool/Do"]).spawned == 1  # type: ignore[attr-defined]


def test_a_failure_answer_keeps_the_worker(client: TestClient, protocol: Protocol) -> None:
    before = pid(client, protocol)

    failed = do(client, protocol, {"do": "fail"})
    temporary = do(client, protocol, {"do": "fail-temporarily"})

    assert failed["error"] == {
        "error_code": "connector_failed",
        "message": "The connector for 'pool/Do' failed: the ledger refused",
    }
    assert failed["command_response"]["http_status"] == 502
    assert failed["spiff__logs"] == ["tried the ledger"]
    assert temporary["error"]["error_code"] == "connector_unavailable"
    assert temporary["command_response"]["http_status"] == 503
    assert pid(client, protocol) == before


@pytest.mark.parametrize(
    ("action", "code", "message"),
    [
        (
            "crash",
            "connector_crashed",
            "The worker 1 of connector 'pool' exited with status 3 while it held this request. "
            "It wrote nothing on stderr.",
        ),
        (
            "garbage",
            "connector_invalid_output",
            "The worker 1 of connector 'pool' printed a line that is not an answer to a request it holds.",
        ),
        (
            "deep",
            "connector_invalid_output",
            "The worker 1 of connector 'pool' printed JSON nested more than 256 levels deep.",
        ),
        (
            "wrong-id",
            "connector_invalid_output",
            "The worker 1 of connector 'pool' printed a line that is not an answer to a request it holds.",
        ),
    ],
)
def test_a_misbehaving_worker_is_replaced(
    client: TestClient, protocol: Protocol, action: str, code: str, message: str
) -> None:
    before = pid(client, protocol)

    answer = do(client, protocol, {"do": action})

    assert answer["error"] == {"error_code": code, "message": message}
    assert answer["command_response"]["http_status"] == 502
    assert pid(client, protocol) != before


def test_a_request_past_its_deadline_replaces_a_worker_that_took_it_alone(tmp_path: Path, protocol: Protocol) -> None:
    with serve(tmp_path, "{size: 1}", timeout=0.5) as client:
        before = pid(client, protocol)
        answer = do(client, protocol, {"do": "sleep", "seconds": 30})
        after = pid(client, protocol)

    assert answer["error"] == {
        "error_code": "connector_timeout",
        "message": "The connector for 'pool/Do' did not answer within its time limit of 0.5 s.",
    }
    assert answer["command_response"]["http_status"] == 504
    assert after != before


def test_a_worker_taking_several_requests_is_sent_a_cancellation_instead(tmp_path: Path, protocol: Protocol) -> None:
    with serve(tmp_path, "{size: 1, concurrency: 2}", timeout=0.5) as client:
        before = pid(client, protocol)
        answer = do(client, protocol, {"do": "sleep", "seconds": 0.8})
        after = pid(client, protocol)

    assert answer["error"]["error_code"] == "connector_timeout"
    assert after == before


def test_stderr_of_a_worker_taking_one_request_is_its_logs(client: TestClient, protocol: Protocol) -> None:
    answer = do(client, protocol, {"do": "stderr", "text": "invoice 7"})

    assert answer["spiff__logs"] == ["working on invoice 7"]


def test_a_worker_is_recycled_after_max_requests(tmp_path: Path, protocol: Protocol) -> None:
    with serve(tmp_path, "{size: 1, max_requests: 2}") as client:
        pids = [pid(client, protocol) for _ in range(5)]

    assert pids[0] == pids[1] != pids[2] == pids[3] != pids[4]


def test_eager_workers_start_with_the_gateway(tmp_path: Path) -> None:
    with serve(tmp_path, "{size: 2, start: eager}") as client:
        command = client.app.state.registry.commands["pool/Do"]  # type: ignore[attr-defined]
        assert client.app.state.pools.of(command).spawned == 2  # type: ignore[attr-defined]


def test_workers_that_keep_dying_are_restarted_with_backoff(tmp_path: Path, protocol: Protocol) -> None:
    with serve(tmp_path, "{size: 1}", run="['{python}', -c, 'import sys; sys.stdin.readline()']") as client:
        crashed = do(client, protocol, {})
        waiting = do(client, protocol, {})
        page = client.get("/").text
        restarts = client.get("/metrics").text

    assert crashed["error"]["error_code"] == "connector_crashed"
    # Operators see it on the status page and in the metrics.
    assert "worker mode, 0 workers alive, 1 restart after early exits; next start in " in page
    assert 'connector_gateway_worker_restarts_total{connector="pool"} 1' in restarts
    assert waiting["error"]["error_code"] == "connector_unavailable"
    assert waiting["error"]["message"].startswith(
        "The workers of 'pool/Do' keep exiting soon after they start; the next start is in "
    )
    assert waiting["command_response"]["http_status"] == 503


def test_workers_are_stopped_with_the_gateway(tmp_path: Path, protocol: Protocol) -> None:
    with serve(tmp_path, "{size: 1}") as client:
        worker = pid(client, protocol)

    assert not Path(f"/proc/{worker}").exists() or Path(f"/proc/{worker}/stat").read_text().split(") ")[1][0] == "Z"


def test_requests_arriving_together_start_no_more_workers_than_the_pool_holds(tmp_path: Path) -> None:
    async def scenario(app: Any) -> list[int]:
        transport = httpx2.ASGITransport(app=app)
        async with httpx2.AsyncClient(transport=transport, base_url="http://gateway") as client:
            calls = [client.post("/v1/do/pool/Do", json={"do": "pid"}) for _ in range(12)]
            return [response.json()["command_response"]["body"]["pid"] for response in await asyncio.gather(*calls)]

    with serve(tmp_path, "{size: 2, concurrency: 4}") as client:
        app = client.app

    pids = asyncio.run(scenario(app))

    assert len(pids) == 12
    assert len(set(pids)) <= 2
    assert app.state.pools.of(app.state.registry.commands["pool/Do"]).spawned == 2
