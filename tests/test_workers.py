"""Worker mode: pools of long-lived processes, replaced when they fail, recycled, started and stopped."""

from __future__ import annotations

import asyncio
import json
import re
import socket
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx2
import pytest
from starlette.testclient import TestClient

from conftest import Gateway, Protocol, make_settings, running
from gateway import create_app
from serving import alive, wait_for

WORKER = Path(__file__).parent / "connectors" / "fake_worker.py"


def write_manifest(directory: Path, workers: str, timeout: float = 5, run: str | None = None) -> None:
    run = run or f"['{{python}}', -I, -S, '{WORKER}']"
    (directory / "pool.yaml").write_text(
        "manifest_version: 1\nconnector: pool\n"
        f"defaults: {{run: {run}, mode: worker, workers: {workers}, timeout: {timeout}}}\n"
        "commands:\n  - {name: Do, parameters: [{id: do, type: str}]}\n  - {name: Other}\n"
    )


def serve(directory: Path, workers: str, timeout: float = 5, run: str | None = None) -> TestClient:
    write_manifest(directory, workers, timeout, run)
    app = create_app(make_settings(manifest_dirs=(directory,)))
    assert app.state.registry.failures == ()
    return TestClient(app)


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    with serve(tmp_path, "{size: 1}") as test_client:
        yield test_client


def do(client: TestClient, protocol: Protocol, body: dict[str, Any], command: str = "Do") -> dict[str, Any]:
    return protocol.do(client, f"pool/{command}", body)


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
    state = client.app.state  # type: ignore[attr-defined]
    assert state.pools.of(state.registry.commands["pool/Do"]).spawned == 1


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
        # An answer in between: two expiries, but not in a row.
        again = do(client, protocol, {"do": "sleep", "seconds": 0.8})
        last = pid(client, protocol)

    assert answer["error"]["error_code"] == "connector_timeout"
    assert again["error"]["error_code"] == "connector_timeout"
    assert after == last == before


def test_a_worker_that_lets_as_many_requests_expire_as_it_takes_at_once_is_replaced(
    tmp_path: Path, protocol: Protocol, caplog: pytest.LogCaptureFixture
) -> None:
    with serve(tmp_path, "{size: 1, concurrency: 2}", timeout=0.5) as client:
        before = pid(client, protocol)
        with ThreadPoolExecutor(2) as callers:
            stuck = list(callers.map(lambda _: do(client, protocol, {"do": "sleep", "seconds": 30}), range(2)))
        after = pid(client, protocol)

    assert [answer["error"]["error_code"] for answer in stuck] == ["connector_timeout"] * 2
    assert after != before
    assert (
        "The worker 1 of connector 'pool' let 2 requests in a row pass their deadline without answering; it is replaced"
    ) in caplog.messages


def test_one_worker_crashing_leaves_the_requests_of_the_others_alone(tmp_path: Path, protocol: Protocol) -> None:
    with serve(tmp_path, "{size: 2}") as client, ThreadPoolExecutor(1) as callers:
        slow = callers.submit(do, client, protocol, {"do": "sleep", "seconds": 1})
        wait_for(lambda: runs_in_progress(client) == 1, 10, "the slow request running")
        crashed = do(client, protocol, {"do": "crash"})
        slept = slow.result()["command_response"]["body"]

    assert crashed["error"] == {
        "error_code": "connector_crashed",
        "message": (
            "The worker 2 of connector 'pool' exited with status 3 while it held this request. "
            "It wrote nothing on stderr."
        ),
    }
    assert slept["slept"] == 1


def runs_in_progress(client: TestClient) -> float:
    metrics = client.get("/metrics").text
    found = re.search(r"^connector_gateway_runs_in_progress (\S+)$", metrics, re.MULTILINE)
    assert found is not None, metrics
    return float(found[1])


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


def test_workers_that_keep_dying_are_restarted_with_backoff(
    tmp_path: Path, protocol: Protocol, caplog: pytest.LogCaptureFixture
) -> None:
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
    # And in the log.
    (restart,) = [
        record for record in caplog.records if record.levelname == "WARNING" and record.name == "gateway.workers"
    ]
    assert re.fullmatch(
        r"The worker 1 of connector 'pool' exited \d+\.\d s after it started; next start in 0\.1 s", restart.message
    )


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


def hang_up(gateway: Gateway, body: dict[str, Any], request_id: str) -> None:
    """Send a request, wait until it runs, and close the connection without reading the answer."""
    data = json.dumps(body).encode()
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=30) as connection:
        connection.sendall(
            b"POST /v1/do/pool/Do HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            + f"X-Request-Id: {request_id}\r\nContent-Length: {len(data)}\r\n\r\n".encode()
            + data
        )
        wait_for(lambda: gateway.metric("runs_in_progress") == 1, 10, "the request running")


def worker_state(gateway: Gateway) -> dict[str, Any]:
    state: dict[str, Any] = gateway.do("pool/Do", {"do": "pid"}).json()["command_response"]["body"]
    return state


@pytest.fixture
def manifests(tmp_path: Path) -> Path:
    directory = tmp_path / "manifests"
    directory.mkdir()
    return directory


def test_a_caller_hanging_up_stops_the_worker_that_took_its_request_alone(manifests: Path) -> None:
    write_manifest(manifests, "{size: 1}", timeout=20)
    with running(manifests) as gateway:
        before = worker_state(gateway)["pid"]

        hang_up(gateway, {"do": "sleep", "seconds": 15}, "hung-up-1")

        wait_for(lambda: not alive(before), 10, "the worker's end after its caller hung up")
        assert worker_state(gateway)["pid"] != before
        gateway.wait_logged("hung-up-1 POST /v1/do/pool/Do 499 command=pool/Do error=caller_gone")


def test_a_caller_hanging_up_sends_a_cancellation_to_a_worker_taking_several_requests(manifests: Path) -> None:
    write_manifest(manifests, "{size: 1, concurrency: 2}", timeout=20)
    with running(manifests) as gateway:
        before = worker_state(gateway)["pid"]

        hang_up(gateway, {"do": "sleep", "seconds": 1}, "hung-up-2")

        # The fake worker reads the cancellation once its sleep is over, and lists it.
        wait_for(lambda: "hung-up-2" in worker_state(gateway)["cancelled"], 10, "the cancellation")
        assert worker_state(gateway)["pid"] == before
        gateway.wait_logged("hung-up-2 POST /v1/do/pool/Do 499 command=pool/Do error=caller_gone")
