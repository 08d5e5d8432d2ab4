"""The JSON the gateway takes in and can send on: how deep it may nest, and which numbers it holds.

Python's JSON parser and encoder recurse once per level, and so do those of most
callers: an answer nested a thousand levels deep parses in one process and fails
in the next. Refusing deep answers keeps every answer readable by Arena, and
costs next to nothing for the flat documents that make up nearly all traffic.
Python also reads `NaN`, `Infinity` and numbers past a double's range (`1e400`),
none of which JSON can carry on: `FINITE_JSON` refuses them as it reads.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

MAX_DEPTH = 256

_INNERMOST_PAIR = re.compile(rb"\[\]|\{\}")
_NOT_BRACKETS = bytes(byte for byte in range(256) if byte not in b"[]{}")


def nests_deeper_than(document: bytes | bytearray, limit: int = MAX_DEPTH) -> bool:
    """True when the JSON text opens more than `limit` arrays or objects inside one another."""
    if document.count(b"[") + document.count(b"{") <= limit:
        return False
    brackets = _outside_strings(document).translate(None, _NOT_BRACKETS)
    # Each pass removes the innermost pairs, one level; what is left after `limit` passes is deeper.
    for _ in range(limit):
        if not brackets:
            return False
        brackets = _INNERMOST_PAIR.sub(b"", brackets)
    return bool(brackets)


def _outside_strings(document: bytes | bytearray) -> bytes:
    """The document without its string literals, so that brackets inside strings do not count."""
    # Once escaped backslashes and escaped quotes are gone, every other quote opens or closes a string.
    unescaped = document.replace(b"\\\\", b"").replace(b'\\"', b"")
    return b"".join(unescaped.split(b'"')[0::2])


class NotFinite(ValueError):
    """A number JSON cannot carry: a `NaN` or `Infinity` literal (`literal`, no JSON at all), or one past a
    double's range, which Python would read as an infinity."""

    def __init__(self, text: str, literal: bool) -> None:
        super().__init__(f"{text} is not a JSON value" if literal else f"{text} is past a double's range")
        self.literal = literal


def _literal(name: str) -> Any:
    raise NotFinite(name, literal=True)


def _finite(text: str) -> float:
    number = float(text)
    if math.isinf(number):
        raise NotFinite(text, literal=False)
    return number


# Made once: json.loads builds a new decoder on every call given options.
FINITE_JSON = json.JSONDecoder(parse_constant=_literal, parse_float=_finite)
