"""The nesting limit on connectors' answers, counted on the bytes."""

from __future__ import annotations

import json

import pytest

from gateway.jsonlimits import nests_deeper_than


def nested(depth: int) -> bytes:
    value: object = "leaf [ { ]"
    for level in range(depth):
        value = [value] if level % 2 else {"k": value}
    return json.dumps(value).encode()


@pytest.mark.parametrize("depth", [0, 1, 2, 3, 10, 255, 256, 257, 300])
def test_depth_is_counted_exactly(depth: int) -> None:
    assert nests_deeper_than(nested(depth), limit=256) is (depth > 256)


@pytest.mark.parametrize(
    ("document", "deeper_than_one"),
    [
        (rb'["[[[["]', False),
        (rb'["\"[[", "\\"]', False),
        (rb'["\\", [[]]]', True),
        (rb"[{}, {}, []]", True),
        (rb"[1, 2, 3]", False),
        (b"not json at all", False),
    ],
)
def test_brackets_inside_strings_do_not_count(document: bytes, deeper_than_one: bool) -> None:
    assert nests_deeper_than(document, limit=1) is deeper_than_one
