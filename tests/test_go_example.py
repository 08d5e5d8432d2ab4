"""The Go example connector (examples/go-connector): its own `go test` suite, and the built binary
under the real gateway in both modes, against the example's warehouse service on loopback.

The binaries are built with the system Go into a temporary directory. The gateway serves a copy
of the example's manifest next to them: as written (worker mode), and without `mode` and
`workers` (spawn mode), each with a `timeout` of 3 s instead of 20 so that the deadline test is
short.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from serving import free_port, stop, wait_until_live

REPOSITORY = Path(__file__).resolve().parent.parent
EXAMPLE = REPOSITORY / "examples" / "go-connector"
TOKEN = "tk_live_5ecret"
TIMEOUT = 3
WAIT = 15  # seconds any one step may take before a test fails instead of stalling


def go() -> str:
    found = shutil.which("go")
    assert found is not None, (
        "go is not on PATH; the Go example needs Go 1.19 or later: apt-get install golang-go (.ci/run installs it)"
    )
    return found


def go_env() -> dict[str, str]:
    # Standard library only: nothing may be downloaded, and go.mod must not need changing.
    return {**os.environ, "GOPROXY": "off", "GOFLAGS": "-mod=readonly"}


def run_go(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [go(), *args], cwd=EXAMPLE, env=go_env(), capture_output=True, text=True, timeout=300, check=False
    )


def test_go_example_unit_suite_passes() -> None:
    result = run_go("test", "./...")

    assert result.returncode == 0, f"go test exited {result.returncode}:\n{result.stdout}\n{result.stderr}"


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The connector and the warehouse service, built as the example's README says."""
    directory = tmp_path_factory.mktemp("go-example-bin")
    for output, package in (("inventory", "."), ("inventory-service", "./cmd/inventory-service")):
        result = run_go("build", "-o", str(directory / output), package)
        assert result.returncode == 0, f"go build {package} exited {result.returncode}:\n{result.stderr}"
    return directory


@pytest.fixture(scope="module")
def warehouse(built: Path) -> Iterator[str]:
    port = free_port()
    process = subprocess.Popen(
        [str(built / "inventory-service"), "-addr", f"127.0.0.1:{port}", "-token", TOKEN],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for_port(port, process)
        yield f"http://127.0.0.1:{port}"
    finally:
        process.kill()
        process.communicate(timeout=10)


def wait_for_port(port: int, process: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        assert process.poll() is None, f"the warehouse service exited: {process.communicate()[1]}"
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise AssertionError(f"the warehouse service did not listen on port {port} within {WAIT} s")


@dataclass
class Gateway:
    mode: str
    url: str
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text()


def manifest_directory(mode: str, built: Path, directory: Path) -> Path:
    """A copy of the example's manifest beside the built connector, in `mode`."""
    text = (EXAMPLE / "manifest.yaml").read_text()
    removed = ["  mode: worker\n", "  workers: {size: 2, concurrency: 8}\n"] if mode == "spawn" else []
    for line in [*removed, "  timeout: 20\n"]:
        assert line in text, f"examples/go-connector/manifest.yaml no longer has the line {line!r}"
    for line in removed:
        text = text.replace(line, "")
    (directory / "manifest.yaml").write_text(text.replace("  timeout: 20\n", f"  timeout: {TIMEOUT}\n"))
    (directory / "bin").mkdir()
    shutil.copy2(built / "inventory", directory / "bin" / "inventory")
    return directory


@pytest.fixture(scope="module", params=["worker", "spawn"])
def gateway(request: pytest.FixtureRequest, built: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    mode: str = request.param
    manifests = manifest_directory(mode, built, tmp_path_factory.mktemp(f"go-example-{mode}"))
    log_path = manifests / "gateway.log"
    port = free_port()
    # It is spoken to without a key and with its default settings.
    env = {
        name: value
        for name, value in os.environ.items()
        if name != "CONNECTOR_PROXY_API_KEY" and not name.startswith("CONNECTOR_GATEWAY_")
    }
    command = [sys.executable, "-m", "gateway", "serve", "--host", "127.0.0.1", "--port", str(port)]
    with log_path.open("w") as log:
        process = subprocess.Popen(
            [*command, "--manifests", str(manifests)],
            cwd=REPOSITORY,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            text=True,
        )
    gateway = Gateway(mode, f"http://127.0.0.1:{port}", log_path)
    try:
        try:
            wait_until_live(port, process)
        except AssertionError as error:
            raise AssertionError(f"{error}\n{gateway.log()}") from None
        yield gateway
    finally:
        stop(process)


def spiff_keys(task_id: str | None = None) -> dict[str, Any]:
    """The reserved keys Arena adds to every request body."""
    return {
        "spiff__task_data": {"customer": "ACME", "notes": "x" * 10_000},
        "spiff__process_instance_id": 42,
        "spiff__process_model_identifier": "fulfilment/reserve",
        "spiff__task_id": task_id or str(uuid.uuid4()),
        "spiff__callback_url": "http://127.0.0.1:7000/v1.0/tasks/callback",
    }


def call(gateway: Gateway, command: str, params: dict[str, Any], task_id: str | None = None) -> tuple[int, Any]:
    """POST /v1/do/inventory/{command} as Arena sends it: the outer status and the answer."""
    request = urllib.request.Request(
        f"{gateway.url}/v1/do/inventory/{command}",
        data=json.dumps({**params, **spiff_keys(task_id)}).encode(),
        headers={"Content-Type": "application/json", "User-Agent": "spiffworkflow-backend"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=WAIT) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        with error:
            return error.code, json.loads(error.read())


class HeldUpstream:
    """An upstream that takes one request and never answers it; it notes when the caller hangs up."""

    def __init__(self) -> None:
        self.received = threading.Event()
        self.abandoned = threading.Event()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(WAIT)
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        threading.Thread(target=self._hold, daemon=True).start()

    def _hold(self) -> None:
        try:
            connection, _ = self.listener.accept()
            with connection:
                connection.settimeout(WAIT)
                data = b""
                while b"\r\n\r\n" not in data and (chunk := connection.recv(65536)):
                    data += chunk
                self.received.set()
                while connection.recv(65536):
                    pass
                self.abandoned.set()
        except OSError:
            return  # no request, or a caller that outlasted WAIT: the test's own wait fails

    def close(self) -> None:
        self.listener.close()


@pytest.fixture
def held() -> Iterator[HeldUpstream]:
    upstream = HeldUpstream()
    yield upstream
    upstream.close()


def test_discovery_lists_both_commands_with_their_parameter_types(gateway: Gateway) -> None:
    with urllib.request.urlopen(f"{gateway.url}/v1/commands", timeout=WAIT) as response:
        commands = {command["id"]: command for command in json.loads(response.read())}

    assert sorted(commands) == ["inventory/GetStock", "inventory/ReserveStock"]
    reserve = [(p["id"], p["type"], p["required"]) for p in commands["inventory/ReserveStock"]["parameters"]]
    assert reserve == [
        ("base_url", "str", True),
        ("api_token", "str", False),
        ("sku", "str", True),
        ("quantity", "int", True),
        ("allow_partial", "bool", False),
        ("note", "str", False),
        ("metadata", "any", False),
    ]


def test_get_stock_answers_the_item_with_one_log_line(gateway: Gateway, warehouse: str) -> None:
    status, answer = call(gateway, "GetStock", {"base_url": warehouse, "api_token": TOKEN, "sku": "WIDGET-1"})

    assert status == 200, answer
    assert answer["error"] is None
    assert answer["command_response"]["http_status"] == 200
    assert answer["command_response"]["body"] == {
        "sku": "WIDGET-1",
        "name": "Widget",
        "on_hand": 12,
        "reserved": 0,
        "available": 12,
    }
    # Once: from stderr in spawn mode, from the answer's "logs" in worker mode.
    [line] = answer["spiff__logs"]
    assert line.startswith(f"GET {warehouse}/items/WIDGET-1 -> 200 in ")
    assert line.endswith(" ms")


def test_reserve_stock_passes_int_bool_and_any_and_a_retried_task_reserves_once(
    gateway: Gateway, warehouse: str
) -> None:
    def available() -> int:
        _, answer = call(gateway, "GetStock", {"base_url": warehouse, "api_token": TOKEN, "sku": "BOLT-M4"})
        count: int = answer["command_response"]["body"]["available"]
        return count

    before = available()
    params = {
        "base_url": warehouse,
        "api_token": TOKEN,
        "sku": "BOLT-M4",
        "quantity": 5.0,
        "allow_partial": False,
        "metadata": {"order": "SO-1042", "lines": [1, 2]},
    }
    task_id = str(uuid.uuid4())

    status, first = call(gateway, "ReserveStock", params, task_id)
    _, retried = call(gateway, "ReserveStock", params, task_id)

    assert status == 200, first
    assert first["error"] is None
    assert first["command_response"]["http_status"] == 201
    body = first["command_response"]["body"]
    assert body == {
        "id": body["id"],
        "sku": "BOLT-M4",
        "requested": 5,
        "quantity": 5,
        "partial": False,
        "metadata": {"order": "SO-1042", "lines": [1, 2]},
        "status": "held",
    }
    # The same task id is the same reservation: the stock is held once.
    assert retried["command_response"]["http_status"] == 200
    assert retried["command_response"]["body"] == body
    assert available() == before - 5


def test_too_little_stock_is_the_connectors_own_error_code(gateway: Gateway, warehouse: str) -> None:
    params = {"base_url": warehouse, "api_token": TOKEN, "sku": "GEAR-7", "quantity": 50}

    status, answer = call(gateway, "ReserveStock", params)

    assert status == 200, answer
    assert answer["error"] == {
        "error_code": "InsufficientStock",
        "message": "Item 'GEAR-7' has only 3 available; 50 were asked for. "
        "Set 'allow_partial' to reserve what there is.",
    }
    assert answer["command_response"]["http_status"] == 409


def test_the_connector_checks_what_the_manifest_cannot(gateway: Gateway, warehouse: str) -> None:
    params = {"base_url": warehouse, "sku": "A/B", "quantity": 0, "metadata": ["not", "an", "object"]}

    status, answer = call(gateway, "ReserveStock", params)

    assert status == 200, answer
    problems = [
        "Parameter 'sku' must be 1 to 64 letters, digits, '.', '_' or '-', got \"A/B\".",
        "Parameter 'quantity' must be from 1 to 100000, got 0.",
        'Parameter \'metadata\' must be an object, got ["not","an","object"].',
    ]
    assert answer["error"] == {"error_code": "InvalidInventoryRequest", "message": " ".join(problems)}
    assert answer["command_response"]["http_status"] == 400
    assert answer["command_response"]["body"] == {"problems": problems}


@pytest.mark.parametrize(
    ("params", "code", "message"),
    [
        (
            {"quantity": 1},
            "missing_parameter",
            "Command 'inventory/ReserveStock' is missing the required parameters 'base_url', 'sku'.",
        ),
        (
            {"base_url": "http://127.0.0.1:9", "sku": "X", "quantity": "five", "allow_partial": "yes"},
            "invalid_parameter",
            "Command 'inventory/ReserveStock': Parameter 'quantity' must be an integer (int), got a string. "
            "Parameter 'allow_partial' must be true or false (bool), got a string.",
        ),
    ],
)
def test_the_gateway_refuses_missing_and_mistyped_parameters(
    gateway: Gateway, params: dict[str, Any], code: str, message: str
) -> None:
    status, answer = call(gateway, "ReserveStock", params)

    assert status == 400, answer
    assert answer["error"] == {"error_code": code, "message": message}


def test_an_upstream_that_does_not_answer_is_the_connectors_own_timeout(gateway: Gateway, held: HeldUpstream) -> None:
    status, answer = call(gateway, "GetStock", {"base_url": held.url, "sku": "WIDGET-1"})

    # The connector gives up a quarter of a second before the gateway's deadline, in its own terms.
    assert status == 200, answer
    assert answer["error"]["error_code"] == "InventoryTimeout"
    assert answer["error"]["message"].startswith(f"{held.url}/items/WIDGET-1 did not answer in time (gave up after ")
    assert answer["command_response"]["http_status"] == 504
    assert held.abandoned.wait(WAIT), "the upstream call was never closed"


def test_a_caller_that_hangs_up_stops_the_upstream_call(gateway: Gateway, held: HeldUpstream) -> None:
    body = json.dumps({"base_url": held.url, "sku": "WIDGET-1", **spiff_keys()}).encode()
    port = int(gateway.url.rsplit(":", 1)[1])
    caller = socket.create_connection(("127.0.0.1", port), timeout=WAIT)
    caller.sendall(
        b"POST /v1/do/inventory/GetStock HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        + f"Content-Length: {len(body)}\r\n\r\n".encode()
        + body
    )
    assert held.received.wait(WAIT), "the request never reached the upstream"

    caller.close()

    # Spawn mode kills the connector; worker mode cancels the request, and the worker closes the call.
    assert held.abandoned.wait(WAIT), "the upstream call went on after the caller hung up"


def test_the_token_never_reaches_a_log(gateway: Gateway, warehouse: str) -> None:
    call(gateway, "GetStock", {"base_url": warehouse, "api_token": TOKEN, "sku": "NOPE-1"})
    status, answer = call(gateway, "GetStock", {"base_url": warehouse, "api_token": "wrong-token", "sku": "GEAR-7"})

    assert answer["error"]["error_code"] == "InventoryAccessDenied", (status, answer)
    # The gateway would redact a secret parameter the connector printed; nothing should need it.
    for text in (json.dumps(answer), gateway.log()):
        assert TOKEN not in text
        assert "wrong-token" not in text
        assert "[redacted]" not in text


def test_worker_mode_serves_both_commands_from_one_pool_and_spawn_mode_from_none(
    gateway: Gateway, warehouse: str
) -> None:
    call(gateway, "GetStock", {"base_url": warehouse, "api_token": TOKEN, "sku": "GEAR-7"})
    call(gateway, "ReserveStock", {"base_url": warehouse, "api_token": TOKEN, "sku": "BOLT-M4", "quantity": 1})

    # Two pools would each have started a worker for their first request.
    started = gateway.log().count("Started worker 1 of connector 'inventory'")
    assert started == (1 if gateway.mode == "worker" else 0), gateway.log()
    assert "Started worker 2" not in gateway.log()
