"""The connector kits in sdk/: one handler, both modes of the connector protocol.

The Python kit is tested here, alone (a spawned run, a worker fed lines by hand) and
under a real gateway serving sdk/python/example in both modes; the Node kit by its own
suite (`node --test` in sdk/node), which starts the gateway with the Python running these tests.
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from serving import free_port, wait_for, wait_until_live

REPOSITORY = Path(__file__).resolve().parent.parent
PYTHON_KIT = REPOSITORY / "sdk" / "python"
EXAMPLE = PYTHON_KIT / "example"
NODE_KIT = REPOSITORY / "sdk" / "node"

# The example manifest's time limit of each command, in seconds.
TIMEOUTS = {"Spawn": 7, "Worker": 3}
SECRET = "tk_live_do_not_log"


def connector_env(**extra: str) -> dict[str, str]:
    """An environment like the gateway's for the example: nothing of this one's CONNECTOR_* variables."""
    env = {name: value for name, value in os.environ.items() if not name.startswith("CONNECTOR_")}
    return {**env, "PYTHONPATH": str(PYTHON_KIT), **extra}


def spawn(payload: Any, **env: str) -> subprocess.CompletedProcess[str]:
    """Runs the example once, as the gateway does in spawn mode."""
    return subprocess.run(
        [sys.executable, "greeter.py"],
        cwd=EXAMPLE,
        env=connector_env(**env),
        input=payload if isinstance(payload, str) else json.dumps(payload),
        capture_output=True,
        text=True,
        timeout=30,
    )


# Spawn mode, alone


def test_spawn_prints_the_result_and_logs_on_stderr() -> None:
    result = spawn({"name": "Ada"})

    assert (result.returncode, json.loads(result.stdout), result.stderr) == (
        0,
        {"greeting": "Hello Ada"},
        "Greeting Ada\n",
    )


def test_spawn_passes_an_envelope_on_as_it_is() -> None:
    result = spawn({"action": "envelope"})

    assert json.loads(result.stdout) == {
        "command_response_version": 2,
        "command_response": {"body": {"id": 42}, "http_status": 201},
    }


@pytest.mark.parametrize(
    ("action", "status", "stderr"),
    [
        ("refuse", 1, "Invoice INV-7 is already paid.\n"),
        ("unavailable", 75, "The ledger is down for maintenance; try again later.\n"),
        ("crash", 1, "ZeroDivisionError: division by zero\n"),
        ("not_json", 1, "TypeError: Object of type set is not JSON serializable\n"),
    ],
)
def test_spawn_failure_exits_with_its_message_on_stderr(action: str, status: int, stderr: str) -> None:
    result = spawn({"action": action, "api_token": SECRET})

    assert (result.returncode, result.stdout, result.stderr) == (status, "", stderr)


def test_spawn_refuses_stdin_that_is_not_json_without_quoting_it() -> None:
    result = spawn(f'{{"api_token": "{SECRET}"')

    assert (result.returncode, result.stderr) == (
        1,
        "Stdin is not one JSON value: Expecting ',' delimiter: line 1 column 35 (char 34)\n",
    )


def test_spawn_keeps_stdout_for_the_answer() -> None:
    result = spawn({"action": "print"})

    assert (result.returncode, result.stdout, result.stderr) == (0, '"printed"\n', "a stray print\n")


def test_spawn_context_comes_from_the_environment() -> None:
    result = spawn(
        {"action": "context"},
        CONNECTOR_COMMAND="sdk-python/Spawn",
        CONNECTOR_REQUEST_ID="r-1",
        CONNECTOR_DEADLINE="1796310000.25",
    )

    context = json.loads(result.stdout)
    assert (context["command"], context["request_id"], context["deadline"]) == (
        "sdk-python/Spawn",
        "r-1",
        1796310000.25,
    )


def test_spawn_by_hand_gives_thirty_seconds() -> None:
    before = time.time()
    deadline = json.loads(spawn({"action": "context"}).stdout)["deadline"]

    assert before + 30 <= deadline <= time.time() + 30


# Worker mode, alone: lines written to its stdin, answers read from its stdout


class Worker:
    """The example in worker mode, with its answers collected by a thread as they come."""

    def __init__(self, concurrency: int) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "greeter.py"],
            cwd=EXAMPLE,
            env=connector_env(CONNECTOR_MODE="worker", CONNECTOR_CONCURRENCY=str(concurrency)),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.answers: queue.Queue[dict[str, Any]] = queue.Queue()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.answers.put(json.loads(line))

    def send(self, message: dict[str, Any] | str) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write((message if isinstance(message, str) else json.dumps(message)) + "\n")
        self.process.stdin.flush()

    def request(self, request_id: str, payload: dict[str, Any], deadline: float | None = None) -> None:
        deadline = time.time() + 10 if deadline is None else deadline
        self.send({"id": request_id, "command": "sdk-python/Worker", "deadline": deadline, "payload": payload})

    def receive(self) -> dict[str, Any]:
        return self.answers.get(timeout=10)

    def close(self) -> tuple[int, list[dict[str, Any]], str]:
        """Closes stdin and answers the exit status, the answers not received yet and stderr."""
        stdin, stdout, stderr = self.process.stdin, self.process.stdout, self.process.stderr
        assert stdin is not None
        assert stdout is not None
        assert stderr is not None
        stdin.close()
        status = self.process.wait(timeout=10)
        self.reader.join(timeout=10)
        with stdout, stderr:
            return status, list(self.answers.queue), stderr.read()

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.close()


@pytest.fixture
def worker() -> Iterator[Worker]:
    started = Worker(concurrency=2)
    yield started
    started.kill()


@pytest.fixture
def single_worker() -> Iterator[Worker]:
    started = Worker(concurrency=1)
    yield started
    started.kill()


def test_worker_answers_each_request_with_its_id(worker: Worker) -> None:
    worker.request("a", {"name": "Ada"})
    worker.request("b", {"action": "refuse"})
    worker.request("c", {"action": "unavailable"})
    worker.request("d", {"action": "crash", "api_token": SECRET})
    worker.request("e", {"action": "not_json"})
    answers = {answer["id"]: answer for answer in [worker.receive() for _ in range(5)]}

    assert answers == {
        "a": {"id": "a", "result": {"greeting": "Hello Ada"}, "logs": ["Greeting Ada"]},
        "b": {"id": "b", "failed": "Invoice INV-7 is already paid.", "temporary": False},
        "c": {"id": "c", "failed": "The ledger is down for maintenance; try again later.", "temporary": True},
        "d": {"id": "d", "failed": "ZeroDivisionError: division by zero"},
        "e": {"id": "e", "failed": "TypeError: Object of type set is not JSON serializable"},
    }
    status, _, stderr = worker.close()
    assert (status, stderr) == (0, "Greeting Ada\n")


def test_worker_taking_one_request_at_a_time_logs_on_stderr_only(single_worker: Worker) -> None:
    single_worker.request("a", {"name": "Ada"})

    assert single_worker.receive() == {"id": "a", "result": {"greeting": "Hello Ada"}}
    assert single_worker.close() == (0, [], "Greeting Ada\n")


def test_worker_passes_the_request_line_as_context(worker: Worker) -> None:
    worker.request("r-7", {"action": "context"}, deadline=1796310000.25)

    context = worker.receive()["result"]
    assert (context["command"], context["request_id"], context["deadline"]) == (
        "sdk-python/Worker",
        "r-7",
        1796310000.25,
    )


def test_worker_serves_two_at_once_and_never_answers_a_cancelled_request(worker: Worker) -> None:
    worker.request("slow", {"action": "wait", "seconds": 8})
    worker.request("fast", {"name": "Bo"})
    assert worker.receive()["id"] == "fast"

    worker.send({"cancel": "slow"})

    status, unanswered, stderr = worker.close()
    assert (status, unanswered) == (0, [])
    assert "Request slow was cancelled\n" in stderr


def test_worker_finishes_what_is_in_flight_when_stdin_closes(worker: Worker) -> None:
    worker.request("a", {"action": "wait", "seconds": 0.3, "label": "done"})

    status, unanswered, _ = worker.close()

    assert (status, unanswered) == (0, [{"id": "a", "result": {"waited": 0.3, "label": "done"}}])


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        ("{oops", "JSONDecodeError: Expecting property name enclosed in double quotes: line 1 column 2 (char 1)"),
        ('["a"]', "no string 'id' or 'cancel'"),
        ('{"id": 7, "payload": {}}', "no string 'id' or 'cancel'"),
    ],
)
def test_worker_skips_a_line_that_is_not_a_request(worker: Worker, line: str, problem: str) -> None:
    worker.send(line)
    worker.send({"cancel": "never-sent"})
    worker.request("a", {"name": "Ada"})

    assert worker.receive()["id"] == "a"
    status, _, stderr = worker.close()
    assert (status, stderr) == (0, f"Ignored a line on stdin that is not a request ({problem}).\nGreeting Ada\n")


def test_worker_keeps_stdout_for_answers(worker: Worker) -> None:
    worker.request("a", {"action": "print"})

    assert worker.receive() == {"id": "a", "result": "printed"}
    assert worker.close() == (0, [], "a stray print\n")


# Both modes under the gateway


@dataclass
class Gateway:
    url: str
    log: Path

    def do(self, command: str, payload: dict[str, Any]) -> dict[str, Any]:
        request = urllib.request.Request(
            f"{self.url}/v1/do/sdk-python/{command}",
            data=json.dumps(payload).encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            assert response.status == 200
            answer: dict[str, Any] = json.load(response)
            return answer


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    port = free_port()
    log = tmp_path_factory.mktemp("gateway") / "gateway.log"
    env = {name: value for name, value in os.environ.items() if not name.startswith("CONNECTOR_")}
    command = [sys.executable, "-m", "gateway", "serve", "--host", "127.0.0.1", "--port", str(port)]
    with log.open("w") as output:
        process = subprocess.Popen(
            [*command, "--manifests", str(EXAMPLE)], cwd=REPOSITORY, env=env, stdout=output, stderr=output, text=True
        )
    try:
        try:
            wait_until_live(port, process)
        except AssertionError as error:
            raise AssertionError(f"{error}\n{log.read_text()}") from None
        yield Gateway(f"http://127.0.0.1:{port}", log)
    finally:
        process.terminate()
        process.wait(timeout=15)


MODES = pytest.mark.parametrize("command", TIMEOUTS)


@MODES
def test_gateway_answers_the_result_as_body_with_the_logs(gateway: Gateway, command: str) -> None:
    answer = gateway.do(command, {"name": "Ada"})

    assert answer["command_response"]["body"] == {"greeting": "Hello Ada"}
    assert (answer["command_response"]["http_status"], answer["error"]) == (200, None)
    assert answer["spiff__logs"] == ["Greeting Ada"]


@MODES
def test_gateway_passes_a_returned_envelope_on(gateway: Gateway, command: str) -> None:
    answer = gateway.do(command, {"action": "envelope"})

    assert (answer["command_response"]["body"], answer["command_response"]["http_status"]) == ({"id": 42}, 201)


@MODES
@pytest.mark.parametrize(
    ("action", "code", "status", "message"),
    [
        ("refuse", "connector_failed", 502, "Invoice INV-7 is already paid."),
        ("unavailable", "connector_unavailable", 503, "The ledger is down for maintenance; try again later."),
        ("crash", "connector_failed", 502, "ZeroDivisionError: division by zero"),
    ],
)
def test_gateway_answers_a_failure_with_its_code(
    gateway: Gateway, command: str, action: str, code: str, status: int, message: str
) -> None:
    answer = gateway.do(command, {"action": action})

    assert (answer["error"]["error_code"], answer["command_response"]["http_status"]) == (code, status)
    assert answer["error"]["message"].endswith(message)


@MODES
def test_gateway_passes_the_deadline(gateway: Gateway, command: str) -> None:
    before = time.time()
    context = gateway.do(command, {"action": "context"})["command_response"]["body"]
    after = time.time()

    assert context["command"] == f"sdk-python/{command}"
    assert len(context["request_id"]) >= 16
    assert before + TIMEOUTS[command] - 0.01 <= context["deadline"] <= after + TIMEOUTS[command] + 0.01
    assert 0 < context["remaining"] <= TIMEOUTS[command]


def test_gateway_worker_serves_two_requests_at_once(gateway: Gateway) -> None:
    with ThreadPoolExecutor(max_workers=2) as pool:
        slow = pool.submit(gateway.do, "Worker", {"action": "wait", "seconds": 1.5, "label": "slow"})
        time.sleep(0.2)
        fast = gateway.do("Worker", {"name": "Bo"})

        assert not slow.done()
        assert fast["command_response"]["body"] == {"greeting": "Hello Bo"}
        assert slow.result()["command_response"]["body"] == {"waited": 1.5, "label": "slow"}


def test_gateway_cancels_a_worker_request_past_its_deadline(gateway: Gateway) -> None:
    answer = gateway.do("Worker", {"action": "wait", "seconds": 30})

    assert (answer["error"]["error_code"], answer["command_response"]["http_status"]) == ("connector_timeout", 504)
    wait_for(lambda: "was cancelled" in gateway.log.read_text(), 5, "the handler seeing its cancellation")
    assert gateway.do("Worker", {"name": "Ada"})["error"] is None


# The Node kit


def test_node_kit_suite_passes() -> None:
    node = shutil.which("node")
    assert node is not None, "node is not on PATH; the Node kit's suite needs Node 20 or later"
    env = {
        **os.environ,
        "GATEWAY_PYTHON": sys.executable,
        # The gateway module is found in this checkout even when it is not installed.
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPOSITORY), os.environ.get("PYTHONPATH")])),
    }

    result = subprocess.run([node, "--test"], cwd=NODE_KIT, env=env, capture_output=True, text=True, timeout=300)

    assert result.returncode == 0, f"node --test exited {result.returncode}:\n{result.stdout}\n{result.stderr}"
