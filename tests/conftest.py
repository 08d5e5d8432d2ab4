"""Shared fixtures: an app over the fake connector, and the published protocol's validators."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx2
import jsonschema
import pytest
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012
from starlette.testclient import TestClient

from gateway import Settings, create_app
from gateway.runner import Limits
from serving import free_port, wait_for, wait_until_live

TESTS = Path(__file__).parent
FAKE_MANIFESTS = TESTS / "manifests"
OPENAPI = json.loads((TESTS / "data" / "spiff-arena-connector-proxy.openapi.json").read_text())

FAST_LIMITS = Limits(max_stdout_bytes=1024 * 1024, kill_grace=0.3, drain_timeout=0.3)


class Protocol:
    """Validators for the answers of spiff-arena's published connector-proxy protocol."""

    def __init__(self) -> None:
        resource = Resource.from_contents(OPENAPI, default_specification=DRAFT202012)
        self.registry: Registry[Any] = Registry().with_resource("openapi", resource)

    def validate(self, instance: Any, component: str) -> None:
        schema = {"$ref": f"openapi#/components/schemas/{component}"}
        jsonschema.Draft202012Validator(schema, registry=self.registry).validate(instance)

    def validate_unauthorized(self, instance: Any) -> None:
        schema = OPENAPI["components"]["responses"]["Unauthorized"]["content"]["application/json"]["schema"]
        jsonschema.Draft202012Validator(schema).validate(instance)

    def validate_answer(self, status: int, instance: Any) -> None:
        """Dispatched answers are envelopes; refusals the minimal error, or the 401 shape."""
        if status == 401:
            self.validate_unauthorized(instance)
        elif status < 300:
            self.validate(instance, "ConnectorProxyResponseV2")
        else:
            self.validate(instance, "ConnectorProxyProtocolError")

    def do(self, client: TestClient, command_id: str, body: Any, status: int = 200) -> dict[str, Any]:
        """`POST /v1/do/{command_id}` with a JSON body: its answer, of the status expected, in the protocol's shape."""
        response = client.post(f"/v1/do/{command_id}", json=body)
        assert response.status_code == status, response.text
        answer: dict[str, Any] = response.json()
        self.validate_answer(status, answer)
        return answer


@pytest.fixture(scope="session")
def protocol() -> Protocol:
    return Protocol()


def make_settings(**overrides: Any) -> Settings:
    values: dict[str, Any] = {"manifest_dirs": (FAKE_MANIFESTS,), "limits": FAST_LIMITS}
    values.update(overrides)
    return Settings(**values)


@pytest.fixture
def client() -> Iterator[TestClient]:
    app = create_app(make_settings(), environ={"FAKE_INHERITED": "inherited", "GATEWAY_SECRET": "s3cr3t"})
    with TestClient(app) as test_client:
        yield test_client


# --- a gateway as a real process on a loopback port -------------------------------------------------


def metric(port: int, sample: str) -> float:
    """The value of one sample of the gateway's /metrics, named with its labels as exposed."""
    for line in httpx2.get(f"http://127.0.0.1:{port}/metrics").text.splitlines():
        if line.startswith(f"{sample} "):
            return float(line.split()[1])
    raise AssertionError(f"no metric {sample}")


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
