"""The JSON the gateway reads: the nesting limit on connectors' answers, counted on the bytes, and finite numbers."""

from __future__ import annotations

import json

import pytest

from gateway.jsonlimits import FINITE_JSON, NotFinite, nests_deeper_than


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


@pytest.mark.parametrize(
    ("text", "literal"),
    [("NaN", True), ("[Infinity]", True), ('{"a": -Infinity}', True), ("1e400", False), ('{"a": [-1E+309]}', False)],
)
def test_numbers_json_cannot_carry_are_refused_as_they_are_read(text: str, literal: bool) -> None:
    with pytest.raises(NotFinite) as refused:
        FINITE_JSON.decode(text)

    assert refused.value.literal is literal


def test_every_number_json_can_carry_is_read() -> None:
    huge_integer = "1" + "0" * 400

    assert FINITE_JSON.decode(f"[{huge_integer}, 1.7e308, -2.5e-320, 0.0]") == [
        int(huge_integer),
        1.7e308,
        -2.5e-320,
        0.0,
    ]
