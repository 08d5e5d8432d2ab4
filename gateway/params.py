"""Checking a caller's payload against a command's declared parameters.

Arena evaluates every parameter as a Python expression, so any JSON value can
arrive for any parameter: this is where `str`, `int` and `bool` and parameters'
schemas are enforced, `null` is treated as absent and defaults are filled in.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal

from gateway.errors import InvalidParameter, MissingParameter
from gateway.redact import string_leaves
from gateway.schemas import value_problems

if TYPE_CHECKING:
    from gateway.manifest import Command, Parameter

ParamType = Literal["str", "int", "bool", "any"]

SPIFF_PREFIX = "spiff__"

_EXPECTED = {"str": "a string", "int": "an integer", "bool": "true or false"}


def json_type_name(value: Any) -> str:
    """The JSON name of a value's type, as a modeler would read it in an error message."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"


def matches_type(value: Any, param_type: ParamType) -> bool:
    if param_type == "any":
        return True
    if param_type == "str":
        return isinstance(value, str)
    if param_type == "bool":
        return isinstance(value, bool)
    return _as_int(value) is not None


def prepare_payload(command: Command, body: dict[str, Any]) -> dict[str, Any]:
    """The object the connector reads on stdin, or a 400 naming every bad parameter.

    Declared parameters are checked and defaulted; undeclared keys pass untouched;
    Arena's reserved `spiff__` keys are kept or dropped as the manifest says.
    """
    payload = {key: value for key, value in body.items() if _keeps_key(command, key)}

    missing: list[str] = []
    invalid: list[str] = []
    for parameter in command.parameters:
        value = payload.get(parameter.id)
        if value is None:
            payload.pop(parameter.id, None)
            if parameter.required:
                missing.append(parameter.id)
            elif parameter.has_default:
                payload[parameter.id] = parameter.default
            continue
        if parameter.validator is not None:
            problems = value_problems(parameter.validator, value, parameter.secret)
            if problems:
                invalid.extend(f"Parameter '{parameter.id}'{path}: {message}." for path, message in problems)
                continue
        elif not matches_type(value, parameter.type):
            invalid.append(_type_problem(parameter, value))
            continue
        if parameter.type == "int":
            payload[parameter.id] = _as_int(value)

    if missing:
        raise MissingParameter(_missing_message(command, missing))
    if invalid:
        raise InvalidParameter(f"Command '{command.id}': " + " ".join(invalid))
    return payload


def _keeps_key(command: Command, key: str) -> bool:
    if not key.startswith(SPIFF_PREFIX) or command.spiff_keys == "all":
        return True
    if command.spiff_keys == "none":
        return False
    return key in command.spiff_keys


def _as_int(value: Any) -> int | None:
    # JSON has one number type: 3.0 is the integer 3, as JSON Schema counts it.
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return None


def _type_problem(parameter: Parameter, value: Any) -> str:
    # The value itself is never quoted: it may be a credential resolved by Arena.
    expected = _EXPECTED[parameter.type]
    return f"Parameter '{parameter.id}' must be {expected} ({parameter.type}), got {json_type_name(value)}."


def _missing_message(command: Command, missing: Sequence[str]) -> str:
    names = ", ".join(f"'{name}'" for name in missing)
    noun = "parameter" if len(missing) == 1 else "parameters"
    return f"Command '{command.id}' is missing the required {noun} {names}."


def secret_values(command: Command, payload: dict[str, Any]) -> list[str]:
    """The strings of this request's parameters marked `secret`, to be redacted wherever text is shown."""
    return [
        leaf
        for parameter in command.parameters
        if parameter.secret
        for leaf in string_leaves(payload.get(parameter.id))
    ]
