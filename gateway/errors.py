"""The errors the gateway answers with, each carrying its code and status.

    GatewayError
    ├── InternalError      500 internal_error: a fault of the gateway itself, logged with the request id
    ├── RequestError       refused before a connector runs: the outer status says why
    │   ├── CommandNotFound        404 command_not_found
    │   ├── InvalidBody            400 invalid_body
    │   ├── MissingParameter       400 missing_parameter
    │   ├── InvalidParameter       400 invalid_parameter
    │   ├── BodyTooLarge           413 body_too_large
    │   ├── UnsupportedMediaType   415 unsupported_media_type
    │   └── Saturated              429 too_many_requests, with Retry-After
    └── ConnectorError     the connector ran and failed: outer 200, the inner status says why
        ├── ConnectorFailed        502 connector_failed
        ├── ConnectorCrashed       502 connector_crashed
        ├── ConnectorStartFailed   502 connector_start_failed
        ├── InvalidOutput          502 connector_invalid_output
        ├── OutputTooLarge         502 connector_output_too_large
        ├── ConnectorUnavailable   503 connector_unavailable
        └── ConnectorTimeout       504 connector_timeout

Codes are part of the public surface: modelers attach BPMN boundary events to
them, so a code is never renamed. Arena retries a status of 429 or 500 and above.
"""

from __future__ import annotations

from typing import ClassVar


class GatewayError(Exception):
    code: ClassVar[str]
    status: ClassVar[int]

    def __init__(self, message: str, logs: list[str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        # What the connector wrote on stderr before it failed, for the answer's spiff__logs.
        self.logs = logs or []

    @property
    def retryable(self) -> bool:
        return self.status == 429 or self.status >= 500


class InternalError(GatewayError):
    code = "internal_error"
    status = 500


class RequestError(GatewayError):
    """The request was refused before any connector ran."""


class CommandNotFound(RequestError):
    code = "command_not_found"
    status = 404


class InvalidBody(RequestError):
    code = "invalid_body"
    status = 400


class MissingParameter(RequestError):
    code = "missing_parameter"
    status = 400


class InvalidParameter(RequestError):
    code = "invalid_parameter"
    status = 400


class BodyTooLarge(RequestError):
    code = "body_too_large"
    status = 413


class UnsupportedMediaType(RequestError):
    code = "unsupported_media_type"
    status = 415


class Saturated(RequestError):
    code = "too_many_requests"
    status = 429
    retry_after = 1


class ConnectorError(GatewayError):
    """The connector was started and did not produce a usable answer."""


class ConnectorFailed(ConnectorError):
    code = "connector_failed"
    status = 502


class ConnectorCrashed(ConnectorError):
    code = "connector_crashed"
    status = 502


class ConnectorStartFailed(ConnectorError):
    code = "connector_start_failed"
    status = 502


class InvalidOutput(ConnectorError):
    code = "connector_invalid_output"
    status = 502


class OutputTooLarge(ConnectorError):
    code = "connector_output_too_large"
    status = 502


class ConnectorUnavailable(ConnectorError):
    code = "connector_unavailable"
    status = 503


class ConnectorTimeout(ConnectorError):
    code = "connector_timeout"
    status = 504


ALL_ERRORS: tuple[type[GatewayError], ...] = (
    CommandNotFound,
    InvalidBody,
    MissingParameter,
    InvalidParameter,
    BodyTooLarge,
    UnsupportedMediaType,
    Saturated,
    InternalError,
    ConnectorFailed,
    ConnectorCrashed,
    ConnectorStartFailed,
    InvalidOutput,
    OutputTooLarge,
    ConnectorUnavailable,
    ConnectorTimeout,
)
