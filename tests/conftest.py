"""Shared fixtures: an app over the fake connector, and the published protocol's validators."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012
from starlette.testclient import TestClient

from gateway import Settings, create_app
from gateway.runner import Limits

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
