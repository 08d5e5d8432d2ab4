"""The OpenAPI 3.1 document served at /openapi.json, generated from the loaded manifests.

Each command gets its own `POST /v1/do/{connector}/{command}` operation whose
request body lists its parameters, with their schemas; the fixed routes follow.
It is built once per registry load, like the discovery answers.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from gateway import __version__
from gateway.envelope import ENVELOPE_SCHEMA, ERROR_SCHEMA
from gateway.manifest import Command, Parameter
from gateway.schemas import has_references
from gateway.settings import API_KEY_HEADER

_SCALAR_SCHEMAS: dict[str, dict[str, Any]] = {
    "str": {"type": "string"},
    "int": {"type": "integer"},
    "bool": {"type": "boolean"},
    "any": {},
}


def openapi_json(commands: Iterable[Command]) -> bytes:
    document = openapi_document(commands)
    return json.dumps(document, ensure_ascii=False, separators=(",", ":")).encode()


def openapi_document(commands: Iterable[Command]) -> dict[str, Any]:
    paths: dict[str, Any] = {}
    for command in sorted(commands, key=lambda command: command.id):
        paths[f"/v1/do/{command.id}"] = {"post": _operation(command)}
    paths.update(_FIXED_PATHS)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "connector-gateway",
            "version": __version__,
            "description": "spiff-arena's connector proxy: the commands served here, generated from their manifests.",
        },
        "paths": paths,
        "components": {"schemas": _COMPONENTS, "securitySchemes": _SECURITY_SCHEMES, "responses": _RESPONSES},
    }


def request_schema(command: Command) -> dict[str, Any]:
    """The JSON body a command accepts: its parameters as properties; other keys pass through."""
    schema: dict[str, Any] = {
        "type": "object",
        "properties": {parameter.id: _property(command, parameter) for parameter in command.parameters},
        "additionalProperties": True,
    }
    required = [parameter.id for parameter in command.parameters if parameter.required]
    if required:
        schema["required"] = required
    return schema


def _property(command: Command, parameter: Parameter) -> dict[str, Any]:
    if parameter.schema is None:
        schema = dict(_SCALAR_SCHEMAS[parameter.type])
    else:
        schema = dict(parameter.schema)
        # A reference such as '#/$defs/item' means the parameter's schema, not this whole document.
        if "$id" not in schema and has_references(schema):
            schema = {"$id": f"urn:connector-gateway:{command.id}:{parameter.id}", **schema}
    if parameter.description is not None and "description" not in schema:
        schema["description"] = parameter.description
    if parameter.has_default and "default" not in schema:
        schema["default"] = parameter.default
    if parameter.secret:
        schema["writeOnly"] = True
    return schema


def _operation(command: Command) -> dict[str, Any]:
    operation: dict[str, Any] = {
        "operationId": command.id,
        "summary": f"Run {command.id}",
        "tags": [command.connector],
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": request_schema(command)}},
        },
        "responses": {
            "200": {"$ref": "#/components/responses/Envelope"},
            **{status: {"$ref": "#/components/responses/Refused"} for status in ("400", "404", "413", "415", "429")},
            "401": {"$ref": "#/components/responses/Unauthorized"},
            "500": {"$ref": "#/components/responses/Refused"},
        },
        "security": _KEYED,
    }
    if command.description is not None:
        operation["description"] = command.description
    return operation


# The key is needed only when the gateway is configured with one: either requirement may hold.
_KEYED: list[dict[str, list[str]]] = [{"apiKey": []}, {}]

_SECURITY_SCHEMES = {
    "apiKey": {
        "type": "apiKey",
        "in": "header",
        "name": API_KEY_HEADER,
        "description": "Arena's shared secret, required when the gateway is started with CONNECTOR_PROXY_API_KEY.",
    }
}


def _json(schema_name: str, description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{schema_name}"}}},
    }


_RESPONSES = {
    "Envelope": _json(
        "Envelope", "The connector ran: its answer, or its failure, in the version 2 envelope (inner http_status)."
    ),
    "Refused": _json("ProtocolError", "Refused before any connector ran; `error.error_code` says why."),
    "Unauthorized": _json("Unauthorized", "The API key is missing, wrong or sent more than once."),
}

_COMPONENTS: dict[str, Any] = {
    "Error": ERROR_SCHEMA,
    "Envelope": ENVELOPE_SCHEMA,
    "ProtocolError": {
        "type": "object",
        "required": ["command_response", "error"],
        "properties": {"command_response": {"type": "object"}, "error": {"$ref": "#/components/schemas/Error"}},
    },
    "Unauthorized": {
        "type": "object",
        "required": ["error"],
        "properties": {"error": {"const": "Unauthorized"}},
    },
    "Catalog": {
        "type": "array",
        "items": {
            "type": "object",
            "required": ["id", "parameters"],
            "properties": {
                "id": {"type": "string", "description": "connector/name"},
                "description": {"type": "string"},
                "parameters": {"type": "array", "items": {"$ref": "#/components/schemas/CatalogParameter"}},
            },
        },
    },
    "CatalogParameter": {
        "type": "object",
        "required": ["id", "type", "required"],
        "properties": {
            "id": {"type": "string"},
            "type": {"enum": ["str", "int", "bool", "any"]},
            "required": {"type": "boolean"},
            "description": {"type": "string"},
            "default": {},
            "schema": {
                "type": "object",
                "description": "The parameter's JSON Schema (Draft 2020-12), when it has one.",
            },
        },
    },
    "Liveness": {"type": "object", "required": ["ok"], "properties": {"ok": {"const": True}}},
}


def _get(summary: str, response: dict[str, Any], keyed: bool = True, **more: Any) -> dict[str, Any]:
    operation: dict[str, Any] = {"summary": summary, "responses": {"200": response}, **more}
    if keyed:
        operation["responses"]["401"] = {"$ref": "#/components/responses/Unauthorized"}
        operation["security"] = _KEYED
    else:
        operation["security"] = [{}]
    return {"get": operation}


def _content(media_type: str, description: str) -> dict[str, Any]:
    return {"description": description, "content": {media_type: {"schema": {"type": "string"}}}}


_LIVENESS = _json("Liveness", "The gateway is up.")

_FIXED_PATHS: dict[str, Any] = {
    "/v1/commands": _get("The commands served, with their parameters", _json("Catalog", "The command catalog.")),
    "/v1/auths": _get("The authentication handlers declared", _json("Catalog", "The auth handler catalog.")),
    "/v1/auth/{connector}/{auth}": _get(
        "Start an authentication handler's browser sign-in (not served yet: answers 501)",
        _content("text/html", "Not reached: the page says the flow is not supported yet."),
        keyed=False,
        parameters=[
            {"name": "connector", "in": "path", "required": True, "schema": {"type": "string"}},
            {"name": "auth", "in": "path", "required": True, "schema": {"type": "string"}},
        ],
    ),
    "/v1/liveness": _get("Whether the gateway is up", _LIVENESS, keyed=False),
    "/liveness": _get("Whether the gateway is up", _LIVENESS, keyed=False),
    "/metrics": _get(
        "Prometheus metrics (needs the key only with CONNECTOR_GATEWAY_METRICS_NEED_KEY=1)",
        _content("text/plain", "Prometheus's text exposition format."),
    ),
    "/": _get("The status page, for operators", _content("text/html", "The status page.")),
    "/openapi.json": _get(
        "This document",
        {"description": "The OpenAPI 3.1 document.", "content": {"application/json": {"schema": {"type": "object"}}}},
    ),
}
