"""POST /v1/do: a command's executable runs and its output becomes spiff-arena's envelope."""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient

from conftest import FAKE_MANIFESTS, Protocol, make_settings
from gateway import create_app

SPIFF_KEYS = {
    "spiff__task_data": {"order": 7, "when": {"typename": "datetime", "value": "2026-01-01T00:00:00"}},
    "spiff__process_instance_id": 12,
    "spiff__process_model_identifier": "billing/invoices",
    "spiff__task_id": "0b7f5c1e-8f43-4a5e-9d36-1f2b0c3d4e5f",
    "spiff__callback_url": "http://127.0.0.1:7000/v1.0/tasks/callback",
}


@pytest.fixture
def client(client: TestClient) -> Iterator[TestClient]:
    """The shared client, checked after each test: whatever a connector did, the next request is served."""
    yield client
    answer = client.post("/v1/do/fake/Echo", json={"text": "next"}).json()
    assert answer["command_response"]["body"] == {"text": "next", "count": 1}


def do(client: TestClient, protocol: Protocol, command: str, body: Any, status: int = 200) -> dict[str, Any]:
    return protocol.do(client, f"fake/{command}", body, status)


def assert_failed(answer: dict[str, Any], code: str, status: int) -> str:
    assert answer["error"]["error_code"] == code
    assert answer["command_response"]["http_status"] == status
    message: str = answer["error"]["message"]
    return message


def test_payload_reaches_stdin_checked_and_defaulted(client: TestClient, protocol: Protocol) -> None:
    body = {
        "text": "hi",
        "count": None,
        "loud": True,
        "extra": [1, {"a": None}],
        "undeclared": None,
        **SPIFF_KEYS,
    }

    answer = do(client, protocol, "Echo", body)

    expected = {
        "text": "hi",
        "count": 1,
        "loud": True,
        "extra": [1, {"a": None}],
        "undeclared": None,
        **SPIFF_KEYS,
    }
    assert answer["command_response"] == {
        "body": expected,
        "mimetype": "application/json",
        "http_status": 200,
        "headers": {},
    }
    assert answer["error"] is None
    assert answer["spiff__logs"] == []


def test_manifest_can_drop_spiff_keys(client: TestClient, protocol: Protocol) -> None:
    assert do(client, protocol, "EchoNoSpiff", {"a": 1, **SPIFF_KEYS})["command_response"]["body"] == {"a": 1}
    kept = do(client, protocol, "EchoSomeSpiff", {"a": 1, **SPIFF_KEYS})["command_response"]["body"]
    assert kept == {"a": 1, "spiff__task_id": SPIFF_KEYS["spiff__task_id"]}


def test_missing_required_parameter_is_refused_before_running(client: TestClient, protocol: Protocol) -> None:
    answer = do(client, protocol, "Echo", {"text": None, **SPIFF_KEYS}, status=400)

    assert answer == {
        "command_response": {},
        "error": {
            "error_code": "missing_parameter",
            "message": "Command 'fake/Echo' is missing the required parameter 'text'.",
        },
    }


def test_ill_typed_parameters_are_all_named(client: TestClient, protocol: Protocol) -> None:
    answer = do(client, protocol, "Echo", {"text": 5, "count": "3", "loud": 1}, status=400)

    assert answer["error"] == {
        "error_code": "invalid_parameter",
        "message": "Command 'fake/Echo': Parameter 'text' must be a string (str), got an integer. "
        "Parameter 'count' must be an integer (int), got a string. "
        "Parameter 'loud' must be true or false (bool), got an integer.",
    }


def test_child_environment_is_built_from_scratch(client: TestClient, protocol: Protocol) -> None:
    answer = do(client, protocol, "Env", {})

    seen = answer["command_response"]["body"]
    env = seen["env"]
    assert "GATEWAY_SECRET" not in env
    assert "FAKE_UNSET" not in env
    assert env["FAKE_INHERITED"] == "inherited"
    assert env["GREETING"] == "hello"
    assert env["PATH"] == "/usr/local/bin:/usr/bin:/bin"
    assert env["CONNECTOR_PROTOCOL"] == "1"
    assert env["CONNECTOR_COMMAND"] == "fake/Env"
    assert env["CONNECTOR_TIMEOUT"] == "2.5"
    assert float(env["CONNECTOR_DEADLINE"]) > 0
    assert len(env["CONNECTOR_REQUEST_ID"]) == 32
    assert seen["cwd"] == str(FAKE_MANIFESTS.resolve())


def test_request_id_reaches_connector_and_caller(client: TestClient) -> None:
    response = client.post("/v1/do/fake/Env", json={})

    assert (
        response.headers["x-request-id"] == response.json()["command_response"]["body"]["env"]["CONNECTOR_REQUEST_ID"]
    )


def test_connector_envelope_is_passed_on_with_stderr_appended(client: TestClient, protocol: Protocol) -> None:
    printed = {
        "command_response_version": 2,
        "command_response": {"body": {"id": 9}, "http_status": 201, "headers": {"Location": "/9"}},
        "spiff__logs": ["from the envelope"],
    }
    answer = do(client, protocol, "Emit", {"stdout": json.dumps(printed), "stderr": "from stderr\n"})

    assert answer == {
        "command_response_version": 2,
        "command_response": {
            "body": {"id": 9},
            "mimetype": "application/json",
            "http_status": 201,
            "headers": {"Location": "/9"},
        },
        "error": None,
        "spiff__logs": ["from the envelope", "from stderr"],
    }


def test_connector_own_error_code_is_passed_on(client: TestClient, protocol: Protocol) -> None:
    printed = {
        "command_response_version": 2,
        "command_response": {"body": {}, "http_status": 422},
        "error": {"error_code": "InvoiceAlreadyPaid", "message": "Invoice INV-7 is already paid."},
    }
    answer = do(client, protocol, "Emit", {"stdout": json.dumps(printed)})

    assert answer["error"] == printed["error"]
    assert answer["command_response"]["http_status"] == 422


@pytest.mark.parametrize(
    ("stdout", "body"),
    [
        ("[1, 2, 3]\n", [1, 2, 3]),
        ('"just a string"', "just a string"),
        ("null", None),
        ('{"no_version": true}', {"no_version": True}),
        ("plain text, not JSON\n", {"raw_response": "plain text, not JSON\n"}),
        ("", {"raw_response": ""}),
        ("NaN", {"raw_response": "NaN"}),
    ],
)
def test_plain_output_becomes_the_body(client: TestClient, protocol: Protocol, stdout: str, body: Any) -> None:
    answer = do(client, protocol, "Emit", {"stdout": stdout})

    assert answer["command_response"]["body"] == body
    assert answer["command_response"]["http_status"] == 200
    assert answer["error"] is None


def test_half_an_answer_then_death(client: TestClient, protocol: Protocol) -> None:
    half = '{"command_response_version": 2, "command_response": {"bo'
    answer = do(client, protocol, "Emit", {"stdout": half, "stderr": "segfault in the middle\n", "exit": 139})

    message = assert_failed(answer, "connector_failed", 502)
    assert message == (
        "The connector for 'fake/Emit' exited with status 139. Its last stderr lines: segfault in the middle"
    )


def test_half_an_answer_with_success_is_plain_text(client: TestClient, protocol: Protocol) -> None:
    half = '{"command_response_version": 2, "command_response": {"bo'
    answer = do(client, protocol, "Emit", {"stdout": half})

    assert answer["command_response"]["body"] == {"raw_response": half}


def test_an_answer_nested_too_deeply_is_refused(client: TestClient, protocol: Protocol) -> None:
    answer = do(client, protocol, "Emit", {"stdout": "[" * 300 + "]" * 300})

    message = assert_failed(answer, "connector_invalid_output", 502)
    assert message == "The connector for 'fake/Emit' printed JSON nested more than 256 levels deep."


def test_a_lone_surrogate_in_an_answer_is_refused(client: TestClient, protocol: Protocol) -> None:
    answer = do(client, protocol, "Emit", {"stdout": '{"name": "\\ud800"}'})

    message = assert_failed(answer, "connector_invalid_output", 502)
    assert message == (
        "The connector for 'fake/Emit' printed JSON that cannot be sent on: it holds a lone surrogate escape."
    )


@pytest.mark.parametrize(
    "stdout",
    [
        '{"a": 1e400}',
        "[-1e400]",
        '{"command_response": {"body": {"total": 2e308}, "mimetype": "text/csv"}, "command_response_version": 2}',
    ],
)
def test_a_number_past_a_floats_range_in_an_answer_is_refused(
    client: TestClient, protocol: Protocol, stdout: str
) -> None:
    answer = do(client, protocol, "Emit", {"stdout": stdout})

    message = assert_failed(answer, "connector_invalid_output", 502)
    assert message == (
        "The connector for 'fake/Emit' printed JSON that cannot be sent on: "
        "it holds a number too large for a double-precision float (such as 1e400)."
    )


def test_output_that_is_not_utf8_is_invalid(client: TestClient, protocol: Protocol) -> None:
    answer = do(client, protocol, "Binary", {})

    assert answer["error"] == {
        "error_code": "connector_invalid_output",
        "message": "The connector for 'fake/Binary' printed bytes that are not UTF-8 text (the first at byte 0 of "
        "its output).",
    }
    assert answer["command_response"]["http_status"] == 502


def test_text_in_any_script_is_passed_on_whole(client: TestClient, protocol: Protocol) -> None:
    answer = do(client, protocol, "Emit", {"stdout": "Grüße, 世界 🚀"})

    assert answer["command_response"]["body"] == {"raw_response": "Grüße, 世界 🚀"}


@pytest.mark.parametrize(
    ("printed", "detail"),
    [
        ({"command_response_version": 2}, "(top level): 'command_response' is a required property"),
        (
            {"command_response_version": 1, "command_response": {"body": 1}},
            "command_response_version: 2 was expected",
        ),
        (
            {"command_response_version": 2, "command_response": {"body": 1, "http_status": 700}},
            "command_response.http_status: 700 is greater than the maximum of 599",
        ),
        (
            {"command_response_version": 2, "command_response": {"body": 1}, "error": {"code": "x"}},
            "error: {'code': 'x'} is not valid under any of the given schemas",
        ),
        (
            {"command_response_version": 2, "command_response": {"body": 1}, "spiff__logs": None},
            "spiff__logs: None is not of type 'array'",
        ),
        (
            {"command_response_version": 2, "command_response": {"body": 1}, "spiff__logs": "abc"},
            "spiff__logs: 'abc' is not of type 'array'",
        ),
    ],
)
def test_invalid_envelope_is_a_502(client: TestClient, protocol: Protocol, printed: Any, detail: str) -> None:
    answer = do(client, protocol, "Emit", {"stdout": json.dumps(printed)})

    message = assert_failed(answer, "connector_invalid_output", 502)
    assert message == f"The connector for 'fake/Emit' printed an invalid version 2 envelope: {detail}."


def test_nonzero_exit_is_connector_failed_with_stderr_tail(client: TestClient, protocol: Protocol) -> None:
    stderr = "".join(f"step {n}\n" for n in range(8)) + "cannot reach the ledger\n"
    answer = do(client, protocol, "Emit", {"stdout": '{"ignored": true}', "stderr": stderr, "exit": 3})

    message = assert_failed(answer, "connector_failed", 502)
    assert message == (
        "The connector for 'fake/Emit' exited with status 3. "
        "Its last stderr lines: step 4 | step 5 | step 6 | step 7 | cannot reach the ledger"
    )
    assert answer["spiff__logs"][-1] == "cannot reach the ledger"


def test_exit_75_is_a_temporary_failure(client: TestClient, protocol: Protocol) -> None:
    answer = do(client, protocol, "Emit", {"exit": 75})

    message = assert_failed(answer, "connector_unavailable", 503)
    assert message == (
        "The connector for 'fake/Emit' reported a temporary failure (exit status 75). It wrote nothing on stderr."
    )


def test_death_by_signal_is_connector_crashed(client: TestClient, protocol: Protocol) -> None:
    answer = do(client, protocol, "KillSelf", {"signal": int(signal.SIGSEGV)})

    message = assert_failed(answer, "connector_crashed", 502)
    assert message == "The connector for 'fake/KillSelf' was killed by SIGSEGV. Its last stderr lines: about to die"


def test_time_limit_stops_the_connector_with_a_504(client: TestClient, protocol: Protocol) -> None:
    answer = do(client, protocol, "Sleep", {"seconds": 30})

    message = assert_failed(answer, "connector_timeout", 504)
    assert message == "The connector for 'fake/Sleep' did not finish within its time limit of 0.5 s and was stopped."


def test_connector_ignoring_sigterm_is_killed(client: TestClient, protocol: Protocol) -> None:
    answer = do(client, protocol, "IgnoreTerm", {})

    assert_failed(answer, "connector_timeout", 504)
    assert do(client, protocol, "Echo", {"text": "still serving"})["error"] is None


def test_time_limit_stops_the_whole_process_group(client: TestClient, protocol: Protocol) -> None:
    answer = do(client, protocol, "FamilyHang", {})

    assert_failed(answer, "connector_timeout", 504)
    [line] = answer["spiff__logs"]
    grandchild = int(line.removeprefix("grandchild "))
    assert not _alive(grandchild)


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except OSError:
        return False
    return state != "Z"  # a zombie is dead, waiting for init to reap it


def test_request_headers_never_reach_the_connector(client: TestClient) -> None:
    headers = {"Authorization": "Bearer header-token", "Cookie": "session=header-cookie"}
    env = client.post("/v1/do/fake/Env", json={}, headers=headers).json()["command_response"]["body"]["env"]

    assert not any("header-token" in value or "header-cookie" in value for value in env.values())


def test_grandchild_holding_stdout_does_not_hold_the_request(client: TestClient, protocol: Protocol) -> None:
    answer = do(client, protocol, "Grandchild", {})

    assert answer["command_response"]["body"] == {"ok": True}


def test_stdout_beyond_the_limit_is_stopped(client: TestClient, protocol: Protocol) -> None:
    answer = do(client, protocol, "FloodStdout", {"bytes": 5 * 1024 * 1024})

    message = assert_failed(answer, "connector_output_too_large", 502)
    assert message == "The connector for 'fake/FloodStdout' printed more than 1048576 bytes on stdout and was stopped."


def test_stderr_is_bounded_and_read_while_stdin_is_written(client: TestClient, protocol: Protocol) -> None:
    big_input = {"blob": "z" * (512 * 1024)}
    answer = do(client, protocol, "FloodStderrFirst", big_input)

    assert answer["command_response"]["body"] == big_input
    logs = answer["spiff__logs"]
    assert logs[:2] == ["line 0", "line 1"]
    assert len(logs) == 101
    assert logs[-1] == "(19900 more stderr lines not shown)"


def test_a_huge_stderr_line_is_cut(client: TestClient, protocol: Protocol) -> None:
    answer = do(client, protocol, "LongStderrLine", {"bytes": 100 * 1024 * 1024})

    first, last = answer["spiff__logs"]
    assert first == "y" * 2000 + " [cut]"
    assert last == "last line"


def test_connector_that_never_reads_stdin(client: TestClient, protocol: Protocol) -> None:
    answer = do(client, protocol, "NoRead", {"blob": "z" * (4 * 1024 * 1024)})

    assert answer["command_response"]["body"] == {"ok": True}


def test_executable_gone_after_load_is_a_start_failure(tmp_path: Path, protocol: Protocol) -> None:
    script = tmp_path / "run.sh"
    script.write_text("#!/bin/sh\necho '{}'\n")
    script.chmod(0o755)
    (tmp_path / "gone.yaml").write_text(
        "manifest_version: 1\nconnector: gone\ncommands:\n  - {name: Run, run: [./run.sh]}\n"
    )
    app = create_app(make_settings(manifest_dirs=(tmp_path,)))
    script.unlink()

    with TestClient(app) as client:
        response = client.post("/v1/do/gone/Run", json={})

    answer = response.json()
    protocol.validate_answer(200, answer)
    assert_failed(answer, "connector_start_failed", 502)
    assert answer["error"]["message"] == "The connector for 'gone/Run' could not be started: No such file or directory."


def test_no_zombies_left_behind(client: TestClient, protocol: Protocol) -> None:
    for command, body in [
        ("Sleep", {"seconds": 30}),
        ("IgnoreTerm", {}),
        ("KillSelf", {}),
        ("Grandchild", {}),
    ]:
        do(client, protocol, command, body)

    assert _zombie_children() == []


def _zombie_children() -> list[str]:
    me = str(os.getpid())
    zombies = []
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            fields = dict(line.split(":\t", 1) for line in status.read_text().splitlines() if ":\t" in line)
        except OSError:
            continue
        if fields.get("PPid", "").strip() == me and fields.get("State", "").startswith("Z"):
            zombies.append(status.parent.name)
    return zombies
