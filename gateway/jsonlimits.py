"""How deep a connector's JSON answer may nest, checked on its bytes before it is parsed.

Python's JSON parser and encoder recurse once per level, and so do those of most
callers: an answer nested a thousand levels deep parses in one process and fails
in the next. Refusing deep answers keeps every answer readable by Arena, and
costs next to nothing for the flat documents that make up nearly all traffic.
"""

from __future__ import annotations

import re

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
