"""Parameter schemas: the JSON Schema (Draft 2020-12) a manifest may give a parameter.

A schema is checked and compiled once, when its manifest loads; the compiled
validator then checks each request's value, and every problem is described with
its path inside the value, never quoting a secret.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterator, Mapping, Sequence
from itertools import islice
from typing import TYPE_CHECKING, Any

import jsonschema
from referencing import Registry
from referencing.exceptions import Unresolvable
from referencing.jsonschema import DRAFT202012

if TYPE_CHECKING:
    from gateway.params import ParamType

DIALECT = "https://json-schema.org/draft/2020-12/schema"
# The formats a parameter's schema may use, the same on every installation: the package depends on the
# small checkers that jsonschema lacks for some of them. Any other format is refused at load. Left out:
# duration, iri and iri-reference, whose checkers would add a date library and a parser generator whose
# grammar takes a second to build at every start.
CHECKED_FORMATS = frozenset(
    {
        *("date", "date-time", "time", "email", "idn-email", "hostname", "idn-hostname", "ipv4", "ipv6"),
        *("uri", "uri-reference", "uri-template", "json-pointer", "relative-json-pointer", "regex", "uuid"),
    }
)
# Only these, in their Draft 2020-12 meaning, even where more checkers are installed; a KeyError here
# means a dependency is missing.
FORMAT_CHECKER = jsonschema.FormatChecker(())
FORMAT_CHECKER.checkers = {
    name: jsonschema.Draft202012Validator.FORMAT_CHECKER.checkers[name] for name in CHECKED_FORMATS
}

# Problems listed per parameter: a huge array of wrong items must not make a huge answer.
MAX_PROBLEMS = 20

_SCALAR: dict[str, ParamType] = {"string": "str", "integer": "int", "boolean": "bool"}
# Where Draft 2020-12 nests schemas: a keyword's value is one, a mapping of them, or a list of them.
_SCHEMA_VALUED = frozenset(
    {"items", "contains", "additionalProperties", "propertyNames", "if", "then", "else", "not"}
    | {"unevaluatedItems", "unevaluatedProperties", "contentSchema"}
)
_SCHEMA_MAPS = frozenset({"properties", "patternProperties", "$defs", "dependentSchemas"})
_SCHEMA_LISTS = frozenset({"prefixItems", "allOf", "anyOf", "oneOf"})
_KEYWORDS = (
    _SCHEMA_VALUED
    | _SCHEMA_MAPS
    | _SCHEMA_LISTS
    | {"$schema", "$id", "$ref", "$anchor", "$dynamicRef", "$dynamicAnchor", "$vocabulary", "$comment"}
    | {"type", "const", "enum", "multipleOf", "maximum", "exclusiveMaximum", "minimum", "exclusiveMinimum"}
    | {"maxLength", "minLength", "pattern", "maxItems", "minItems", "uniqueItems", "maxContains", "minContains"}
    | {"maxProperties", "minProperties", "required", "dependentRequired", "format"}
    | {"title", "description", "default", "deprecated", "readOnly", "writeOnly", "examples"}
    | {"contentEncoding", "contentMediaType"}
    # OpenAPI's own annotations, harmless here.
    | {"discriminator", "xml", "externalDocs", "example"}
)
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_SHOWN_LENGTH = 60

Validator = jsonschema.Draft202012Validator


def scalar_type(schema: Mapping[str, Any]) -> ParamType:
    """The protocol's scalar type a schema is listed with: Arena knows only str, int, bool and any."""
    declared = schema.get("type")
    return _SCALAR.get(declared, "any") if isinstance(declared, str) else "any"


def compile_schema(schema: Mapping[str, Any]) -> Validator:
    # An empty registry: a reference is never fetched from the network, whatever the schema says.
    return Validator(schema, registry=Registry(), format_checker=FORMAT_CHECKER)


def load_problems(schema: Mapping[str, Any]) -> list[tuple[str, str]]:
    """What the meta-schema cannot say about a parameter's schema, as (location inside it, message)."""
    problems: list[tuple[str, str]] = []
    dialect = schema.get("$schema")
    if dialect is not None and dialect != DIALECT:
        problems.append((".$schema", f"{dialect!r} is not supported; only Draft 2020-12 ({DIALECT!r}) is"))
    resolver = _resolver(schema)
    for path, keyword, value in _keywords(schema):
        location = _location(path)
        if not isinstance(value, str):
            continue  # the meta-schema reports it
        if keyword == "format" and value not in CHECKED_FORMATS:
            checked = ", ".join(sorted(CHECKED_FORMATS))
            problems.append(
                (
                    location,
                    f"format {value!r} is not checked by this gateway (it checks {checked}); use a 'pattern' instead",
                )
            )
        elif keyword in ("$ref", "$dynamicRef"):
            problems.extend((location, message) for message in _reference_problems(resolver, value))
    return problems


def unknown_keywords(schema: Mapping[str, Any]) -> list[tuple[str, str]]:
    """Keywords that Draft 2020-12 does not define, which every validator ignores: typos, mostly."""
    unknown = []
    for path, keyword, _ in _keywords(schema):
        if keyword in _KEYWORDS or keyword.startswith("x-"):
            continue
        close = difflib.get_close_matches(keyword, _KEYWORDS, n=1)
        hint = f"did you mean {close[0]!r}?" if close else "names of extensions start with 'x-'"
        unknown.append((_location(path), f"{keyword!r} is not a JSON Schema keyword and checks nothing; {hint}"))
    return unknown


def value_problems(validator: Validator, value: Any, secret: bool) -> list[tuple[str, str]]:
    """Every way `value` fails the schema, as (path inside the value, message), by path."""
    errors = list(islice(validator.iter_errors(value), MAX_PROBLEMS + 1))
    listed = sorted(errors[:MAX_PROBLEMS], key=lambda error: _order(error.absolute_path))
    problems = [(_value_path(error.absolute_path), _message(error, secret)) for error in listed]
    if len(errors) > MAX_PROBLEMS:
        problems.append(("", f"more problems, not listed (the first {MAX_PROBLEMS} are)"))
    return problems


def has_references(schema: Mapping[str, Any]) -> bool:
    """Whether a schema refers to parts of itself: placed inside another document, it needs its own `$id`."""
    return any(keyword in ("$ref", "$dynamicRef") for _, keyword, _ in _keywords(schema))


def _resolver(schema: Mapping[str, Any]) -> Any:
    resource = DRAFT202012.create_resource(schema)
    base = resource.id() or ""
    return Registry().with_resource(base, resource).resolver(base)


def _reference_problems(resolver: Any, reference: str) -> Iterator[str]:
    if not reference.startswith("#"):
        yield (
            f"{reference!r} points outside the parameter's schema, which the gateway never fetches; "
            "put what it refers to under '$defs' and refer to '#/$defs/...'"
        )
        return
    try:
        resolver.lookup(reference)
    except Unresolvable:
        yield f"{reference!r} does not point to anything in the parameter's schema"


def _keywords(schema: Any, path: tuple[str | int, ...] = ()) -> Iterator[tuple[tuple[str | int, ...], str, Any]]:
    """Every keyword of a schema and of the schemas nested in it, with its path."""
    if not isinstance(schema, dict):
        return  # a boolean schema has no keywords
    for keyword, value in schema.items():
        here = (*path, keyword)
        yield here, keyword, value
        if keyword in _SCHEMA_VALUED:
            yield from _keywords(value, here)
        elif keyword in _SCHEMA_MAPS and isinstance(value, dict):
            for name, subschema in value.items():
                yield from _keywords(subschema, (*here, name))
        elif keyword in _SCHEMA_LISTS and isinstance(value, list):
            for index, subschema in enumerate(value):
                yield from _keywords(subschema, (*here, index))


def _location(path: Sequence[str | int]) -> str:
    return "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in path)


def _value_path(path: Sequence[str | int]) -> str:
    parts = []
    for part in path:
        if isinstance(part, int):
            parts.append(f"[{part}]")
        else:
            parts.append(f".{part}" if _IDENTIFIER.fullmatch(part) else f"[{part!r}]")
    return "".join(parts)


def _order(path: Sequence[str | int]) -> list[tuple[int, int | str]]:
    return [(0, part) if isinstance(part, int) else (1, part) for part in path]


def _message(error: jsonschema.ValidationError, secret: bool) -> str:
    """jsonschema's message, with the value shortened, or for a secret never shown at all."""
    shown = repr(error.instance)
    if secret:
        if error.message.startswith(shown):
            return "the value" + error.message[len(shown) :]
        if error.validator in ("required", "dependentRequired"):
            return error.message  # names properties of the schema, not parts of the value
        return f"the value does not satisfy the schema's {error.validator!r}"
    if len(shown) > _SHOWN_LENGTH:
        return error.message.replace(shown, shown[:_SHOWN_LENGTH] + "...")
    return error.message
