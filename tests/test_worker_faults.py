"""Worker mode's faults on the output side: answer lines too long or not JSON, stderr floods, crashes, secrets."""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient

from conftest import FAST_LIMITS, Protocol, make_settings
from gateway import create_app
from gateway.cli import main
from gateway.runner import Limits

WORKER = Path(__file__).parent / "connectors" / "fake_worker.py"


def write_manifest(directory: Path, concurrency: int, timeout: float = 5) -> Path:
    (directory / "cf.yaml").write_text(
        "manifest_version: 1\nconnector: cf\n"
        f"defaults: {{run: ['{{python}}', -I, -S, '{WORKER}'], mode: worker,"
        f" workers: {{size: 1, concurrency: {concurrency}}}, timeout: {timeout}}}\n"
        "commands:\n"
        "  - name: Do\n"
        "    parameters: [{id: do, type: str}, {id: password, type: str, secret: true}]\n"
    )
    return directory


def serve(directory: Path, concurrency: int = 1, limits: Limits = FAST_LIMITS, timeout: float = 5) -> TestClient:
    app = create_app(make_settings(manifest_dirs=(write_manifest(directory, concurrency, timeout),), limits=limits))
    assert app.state.registry.failures == ()
    return TestClient(app)


@pytest.fixture
def logged(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    with caplog.at_level(logging.INFO, logger="gateway"):
        yield caplog


def do(client: TestClient, protocol: Protocol, body: dict[str, Any]) -> dict[str, Any]:
    return protocol.do(client, "cf/Do", body)


def pid(client: TestClient, protocol: Protocol) -> int:
    value: int = do(client, protocol, {"do": "pid"})["command_response"]["body"]["pid"]
    return value


def stderr_records(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [record.getMessage() for record in caplog.records if record.name == "gateway.connector"]


def test_an_answer_line_over_the_stdout_limit_is_refused_even_in_one_read(tmp_path: Path, protocol: Protocol) -> None:
    with serve(tmp_path, limits=replace(FAST_LIMITS, max_stdout_bytes=1000)) as client:
        before = pid(client, protocol)
        fits = do(client, protocol, {"do": "long-line", "bytes": 900})
        answer = do(client, protocol, {"do": "long-line", "bytes": 5000})
        after = pid(client, protocol)

    assert fits["command_response"]["body"] == "x" * 900
    assert answer["error"] == {
        "error_code": "connector_output_too_large",
        "message": "The worker 1 of connector 'cf' printed a line longer than 1000 bytes.",
    }
    assert answer["command_response"]["http_status"] == 502
    assert after != before


def test_a_long_answer_line_in_many_reads_is_taken_whole(tmp_path: Path) -> None:
    with serve(tmp_path) as client:
        answer = client.post("/v1/do/cf/Do", json={"do": "long-line", "bytes": 900_000}).json()

    assert answer["command_response"]["body"] == "x" * 900_000


@pytest.mark.parametrize("number", ["NaN", "Infinity", "-Infinity", "1e400", "-1e400"])
def test_an_answer_holding_a_number_json_cannot_carry_is_invalid(
    tmp_path: Path, protocol: Protocol, number: str
) -> None:
    with serve(tmp_path) as client:
        before = pid(client, protocol)
        answer = do(client, protocol, {"do": "not-finite", "number": number})
        after = pid(client, protocol)

    assert answer["error"] == {
        "error_code": "connector_invalid_output",
        "message": "The worker 1 of connector 'cf' answered with a number JSON cannot carry "
        "(NaN, an infinity or one beyond the range of a double).",
    }
    assert answer["command_response"]["http_status"] == 502
    assert after == before  # the line was an answer all the same: the worker is sound


@pytest.mark.parametrize("concurrency", [1, 2])
def test_a_crashed_worker_leaves_its_last_stderr_lines_in_the_answer(
    tmp_path: Path, protocol: Protocol, concurrency: int
) -> None:
    with serve(tmp_path, concurrency) as client:
        do(client, protocol, {"do": "stderr", "text": "an earlier request"})
        answer = do(client, protocol, {"do": "crash-loudly"})

    assert answer["error"] == {
        "error_code": "connector_crashed",
        "message": "The worker 1 of connector 'cf' exited with status 3 while it held this request. "
        "Its last stderr lines: opening the ledger | disk full, giving up",
    }
    assert answer["spiff__logs"] == ["opening the ledger", "disk full, giving up"]


@pytest.mark.parametrize("concurrency", [1, 2])
def test_a_request_past_its_deadline_keeps_the_stderr_written_for_it(
    tmp_path: Path, protocol: Protocol, concurrency: int
) -> None:
    with serve(tmp_path, concurrency, timeout=0.5) as client:
        do(client, protocol, {"do": "stderr", "text": "an earlier request"})
        answer = do(client, protocol, {"do": "sleep", "seconds": 5, "say": "waiting on the ledger"})

    assert answer["error"]["error_code"] == "connector_timeout"
    assert answer["command_response"]["http_status"] == 504
    assert answer["spiff__logs"] == ["waiting on the ledger"]


def test_a_crash_without_stderr_says_so(tmp_path: Path, protocol: Protocol) -> None:
    with serve(tmp_path, concurrency=2) as client:
        answer = do(client, protocol, {"do": "crash"})

    assert answer["error"]["message"] == (
        "The worker 1 of connector 'cf' exited with status 3 while it held this request. It wrote nothing on stderr."
    )
    assert answer["spiff__logs"] == []


def test_call_shows_the_stderr_of_a_crashed_worker(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_manifest(tmp_path, concurrency=2)

    assert main(["call", "cf/Do", '{"do": "crash-loudly"}', "--manifests", str(tmp_path)]) == 1

    # After the gateway's own warnings, if its log is not captured elsewhere.
    assert capsys.readouterr().err.endswith(
        "opening the ledger\n"
        "disk full, giving up\n"
        "connector-gateway: 'cf/Do' failed with connector_crashed (inner status 502): The worker 1 of connector "
        "'cf' exited with status 3 while it held this request. "
        "Its last stderr lines: opening the ledger | disk full, giving up\n"
    )


@pytest.mark.parametrize("concurrency", [1, 2])
def test_secret_parameters_never_reach_the_log_from_a_worker(
    tmp_path: Path, protocol: Protocol, logged: pytest.LogCaptureFixture, concurrency: int
) -> None:
    with serve(tmp_path, concurrency) as client:
        for _ in range(3):
            answer = do(client, protocol, {"do": "stderr-secret", "password": "hunter2-SECRET"})
            assert answer["error"] is None
        # A later request, without secrets, during which the worker mentions the last one's.
        later = do(client, protocol, {"do": "stderr-remembered"})

    lines = stderr_records(logged)
    assert not [line for line in lines if "hunter2" in line]
    assert any(line.endswith("stderr: got password [redacted]") for line in lines)
    assert any(line.endswith("stderr: done with password [redacted]") for line in lines)
    assert any(line.endswith("stderr: still thinking of [redacted]") for line in lines)
    assert "hunter2" not in str(later)


def test_a_stderr_flood_from_a_worker_is_logged_within_bounds(
    tmp_path: Path, protocol: Protocol, logged: pytest.LogCaptureFixture
) -> None:
    with serve(tmp_path, concurrency=2) as client:
        answer = do(client, protocol, {"do": "stderr-flood", "lines": 50_000})

    assert answer["error"] is None
    lines = stderr_records(logged)
    # Its start and the one request it took: 100 lines each.
    assert lines[:200] == [f"worker 1 of connector 'cf' stderr: noise {number}" for number in range(200)]
    assert lines[200:] == [
        "The worker 1 of connector 'cf' wrote 49800 stderr lines that were not logged: "
        "a worker's lines are logged up to 100 for each request it takes."
    ]


def test_a_stderr_flood_of_a_request_taken_alone_is_bounded_like_its_logs(
    tmp_path: Path, protocol: Protocol, logged: pytest.LogCaptureFixture
) -> None:
    with serve(tmp_path) as client:
        answer = do(client, protocol, {"do": "stderr-flood", "lines": 50_000})

    assert answer["spiff__logs"][-1] == "(49900 more stderr lines not shown)"
    assert len(answer["spiff__logs"]) == 101
    assert len(stderr_records(logged)) == 100


def test_a_worker_flooding_stderr_still_answers_its_next_requests(tmp_path: Path, protocol: Protocol) -> None:
    with serve(tmp_path, concurrency=2) as client:
        do(client, protocol, {"do": "stderr-flood", "lines": 20_000})
        answers = [do(client, protocol, {"text": str(number)}) for number in range(3)]

    assert [answer["command_response"]["body"]["payload"]["text"] for answer in answers] == ["0", "1", "2"]


def test_the_dropped_line_count_is_logged_when_the_worker_takes_its_next_request(
    tmp_path: Path, protocol: Protocol, logged: pytest.LogCaptureFixture
) -> None:
    with serve(tmp_path, concurrency=2) as client:
        do(client, protocol, {"do": "stderr-flood", "lines": 1000})
        do(client, protocol, {"do": "stderr", "text": "the next request"})
        lines = stderr_records(logged)

    summary = re.compile(r"The worker 1 of connector 'cf' wrote (\d+) stderr lines that were not logged: ")
    counts = [int(found[1]) for line in lines if (found := summary.match(line))]
    assert counts == [800]
    assert lines[-1] == "worker 1 of connector 'cf' stderr: working on the next request"
