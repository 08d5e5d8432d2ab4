"""The answers spiff-arena reads: version 2 envelopes and the minimal protocol error.

A connector's stdout becomes an envelope here: an envelope it printed itself is
checked and passed on, any other JSON value becomes the body, other text is
wrapped as `raw_response`.
"""

from __future__ import annotations

import json
import signal
from functools import cache
from typing import Any

import jsonschema

from gateway.errors import (
    ConnectorCrashed,
    ConnectorError,
    ConnectorFailed,
    ConnectorUnavailable,
    InternalError,
    InvalidOutput,
    RequestError,
)
from gateway.jsonlimits import FINITE_JSON, MAX_DEPTH, NotFinite, nests_deeper_than
from gateway.redact import Redactor
from gateway.runner import Finished

JSON_MIMETYPE = "application/json"
EX_TEMPFAIL = 75

ERROR_SCHEMA = {
    "type": "object",
    "required": ["error_code", "message"],
    "properties": {"error_code": {"type": "string", "minLength": 1}, "message": {"type": "string"}},
}
# The published protocol's ConnectorProxyResponseV2, which every dispatched answer must satisfy;
# /openapi.json describes answers with it too.
ENVELOPE_SCHEMA = {
    "type": "object",
    "required": ["command_response", "command_response_version", "error", "spiff__logs"],
    "properties": {
        "command_response": {
            "type": "object",
            "required": ["body", "mimetype"],
            "properties": {
                "mimetype": {"type": "string", "minLength": 1},
                "http_status": {"type": "integer", "minimum": 100, "maximum": 599},
                "headers": {"type": "object"},
            },
        },
        "command_response_version": {"const": 2},
        "error": {"oneOf": [ERROR_SCHEMA, {"type": "null"}]},
        "spiff__logs": {"type": "array", "items": {"type": "string"}},
    },
}


def encode(answer: Any) -> bytes:
    """An answer as compact UTF-8 JSON; NaN and infinities are refused, as JSON has none."""
    return _ENCODER.encode(answer).encode()


def success(body: Any, logs: list[str], http_status: int = 200) -> dict[str, Any]:
    return {
        "command_response": {
            "body": body,
            "mimetype": JSON_MIMETYPE,
            "http_status": http_status,
            "headers": {},
        },
        "command_response_version": 2,
        "error": None,
        "spiff__logs": logs,
    }


def failure(error: ConnectorError) -> dict[str, Any]:
    """A dispatched command that failed: outer 200, the inner status says whether a retry can help."""
    return {
        "command_response": {
            "body": {},
            "mimetype": JSON_MIMETYPE,
            "http_status": error.status,
            "headers": {},
        },
        "command_response_version": 2,
        "error": {"error_code": error.code, "message": error.message},
        "spiff__logs": error.logs,
    }


def protocol_error(error: RequestError | InternalError) -> dict[str, Any]:
    """A request refused before dispatch: the minimal form, sent with a non-2xx outer status."""
    return {"command_response": {}, "error": {"error_code": error.code, "message": error.message}}


def from_output(finished: Finished, command_id: str, redact: Redactor) -> dict[str, Any]:
    """The envelope for a finished process, or a ConnectorError saying why there is none."""
    logs = finished.stderr.logs()
    _check_exit(finished, command_id, logs)

    if nests_deeper_than(finished.stdout):
        raise InvalidOutput(
            f"The connector for '{command_id}' printed JSON nested more than {MAX_DEPTH} levels deep.", logs
        )
    try:
        text = finished.stdout.decode("utf-8")
    except UnicodeDecodeError as exc:
        # Replacing the bytes would hand Arena an answer that silently differs from what was printed.
        raise InvalidOutput(
            f"The connector for '{command_id}' printed bytes that are not UTF-8 text "
            f"(the first at byte {exc.start} of its output).",
            logs,
        ) from None
    try:
        value = FINITE_JSON.decode(text)
    except NotFinite as exc:
        if exc.literal:  # NaN and Infinity are no JSON: the output is text
            return success({"raw_response": text}, logs)
        raise InvalidOutput(
            f"The connector for '{command_id}' printed JSON that cannot be sent on: it holds a number too large "
            "for a double-precision float (such as 1e400).",
            logs,
        ) from None
    except (ValueError, RecursionError):
        return success({"raw_response": text}, logs)
    return from_value(value, logs, command_id, redact)


def from_value(value: Any, logs: list[str], command_id: str, redact: Redactor) -> dict[str, Any]:
    """The envelope for a connector's JSON answer: its own envelope, checked, or the body of a new one."""
    if isinstance(value, dict) and "command_response_version" in value:
        return _connector_envelope(value, logs, command_id, redact)
    return success(value, logs)


def _check_exit(finished: Finished, command_id: str, logs: list[str]) -> None:
    code = finished.returncode
    if code == 0:
        return
    tail = _stderr_tail(finished)
    if code < 0:
        raise ConnectorCrashed(f"The connector for '{command_id}' was killed by {_signal_name(-code)}.{tail}", logs)
    if code == EX_TEMPFAIL:
        raise ConnectorUnavailable(
            f"The connector for '{command_id}' reported a temporary failure (exit status 75).{tail}", logs
        )
    raise ConnectorFailed(f"The connector for '{command_id}' exited with status {code}.{tail}", logs)


def _connector_envelope(value: dict[str, Any], logs: list[str], command_id: str, redact: Redactor) -> dict[str, Any]:
    envelope = {"error": None, "spiff__logs": [], **value}
    response = envelope.get("command_response")
    if isinstance(response, dict):
        envelope["command_response"] = {"mimetype": JSON_MIMETYPE, **response}

    if not _plainly_valid(envelope):
        problems = sorted(_envelope_validator().iter_errors(envelope), key=lambda e: list(map(str, e.path)))
        details = "; ".join(f"{_path(problem.absolute_path)}: {problem.message}" for problem in problems[:5])
        raise InvalidOutput(f"The connector for '{command_id}' printed an invalid version 2 envelope: {details}.", logs)
    # What the connector wrote about itself is shown to people: no credential of the request may be in it.
    envelope["spiff__logs"] = [*map(redact, envelope["spiff__logs"]), *logs]
    if envelope["error"] is not None:
        envelope["error"] = {**envelope["error"], "message": redact(envelope["error"]["message"])}
    return envelope


def _plainly_valid(envelope: dict[str, Any]) -> bool:
    """The schema's checks, written out for the common case: an answer on every request pays for them.

    False sends the envelope through the schema, which then names each problem.
    """
    response = envelope.get("command_response")
    error = envelope["error"]
    logs = envelope["spiff__logs"]
    status = response.get("http_status", 200) if isinstance(response, dict) else None
    return (
        type(response) is dict
        and "body" in response
        and type(response["mimetype"]) is str
        and response["mimetype"] != ""
        and type(status) is int
        and 100 <= status <= 599
        and type(response.get("headers", {})) is dict
        and type(envelope["command_response_version"]) is int
        and envelope["command_response_version"] == 2
        and (
            error is None
            or (
                type(error) is dict
                and type(error.get("error_code")) is str
                and error["error_code"] != ""
                and type(error.get("message")) is str
            )
        )
        and type(logs) is list
        and all(type(line) is str for line in logs)
    )


@cache
def _envelope_validator() -> jsonschema.Draft202012Validator:
    return jsonschema.Draft202012Validator(ENVELOPE_SCHEMA)


def _stderr_tail(finished: Finished) -> str:
    tail = [line for line in finished.stderr.tail if line.strip()]
    return f" Its last stderr lines: {' | '.join(tail)}" if tail else " It wrote nothing on stderr."


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def _path(parts: Any) -> str:
    return ".".join(str(part) for part in parts) or "(top level)"


# Made once: json.dumps builds a new encoder on every call given options.
_ENCODER = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":"))
