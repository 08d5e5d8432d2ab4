"""Parameters with a JSON Schema: checked at load, enforced before any run, listed by discovery and /openapi.json."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from openapi_spec_validator import OpenAPIV31SpecValidator
from starlette.testclient import TestClient

from conftest import Protocol, make_settings
from gateway import create_app
from gateway.errors import InvalidParameter, MissingParameter
from gateway.manifest import Command, ManifestError, load_manifest
from gateway.params import prepare_payload
from gateway.schemas import MAX_PROBLEMS

FAKE = Path(__file__).parent / "connectors" / "fake.py"

TYPED = f"""\
manifest_version: 1
connector: typed
commands:
  - name: Tag
    description: Answers with the payload it read.
    run: ['{{python}}', -I, -S, '{FAKE}', echo]
    parameters:
      - id: items
        required: true
        description: Up to five tags.
        schema: {{type: array, items: {{type: string}}, maxItems: 5}}
      - id: level
        type: int
        schema: {{type: integer, minimum: 1, maximum: 5}}
        default: 3
      - id: mode
        schema: {{enum: [fast, safe]}}
      - id: address
        schema:
          type: object
          required: [host]
          properties:
            host: {{type: string, format: ipv4}}
            port: {{type: integer, minimum: 1, maximum: 65535}}
          additionalProperties: false
      - id: token
        secret: true
        schema: {{type: string, pattern: "^sk-[a-z0-9]{{8}}$"}}
      - id: tree
        schema:
          $defs:
            node: {{type: object, properties: {{kids: {{type: array, items: {{$ref: "#/$defs/node"}}}}}}}}
          $ref: "#/$defs/node"
      - id: note
        type: str
"""


def manifest_with(parameters: str) -> str:
    return (
        "manifest_version: 1\nconnector: typed\ncommands:\n"
        f"  - name: Tag\n    run: ['{{python}}', -I, -S, '{FAKE}', echo]\n    parameters:\n{parameters}"
    )


def load(directory: Path, text: str) -> Command:
    path = directory / "typed.yaml"
    path.write_text(text)
    return load_manifest(path, default_timeout=30, environ={}).commands[0]


def problems(directory: Path, text: str) -> list[str]:
    with pytest.raises(ManifestError) as caught:
        load(directory, text)
    return caught.value.problems


@pytest.fixture
def tag(tmp_path: Path) -> Command:
    return load(tmp_path, TYPED)


def refusal(command: Command, body: dict[str, Any]) -> str:
    with pytest.raises(InvalidParameter) as caught:
        prepare_payload(command, body)
    return caught.value.message


# Loading


def test_the_scalar_type_follows_from_the_schema(tag: Command) -> None:
    assert {p.id: p.type for p in tag.parameters} == {
        "items": "any",
        "level": "int",
        "mode": "any",
        "address": "any",
        "token": "str",
        "tree": "any",
        "note": "str",
    }
    items = tag.parameters[0]
    assert items.schema == {"type": "array", "items": {"type": "string"}, "maxItems": 5}
    assert items.describe() == {
        "id": "items",
        "type": "any",
        "required": True,
        "description": "Up to five tags.",
        "schema": {"type": "array", "items": {"type": "string"}, "maxItems": 5},
    }


def test_a_type_that_contradicts_the_schema_is_refused(tmp_path: Path) -> None:
    found = problems(
        tmp_path,
        manifest_with(
            "      - {id: a, type: str, schema: {type: integer}}\n"
            "      - {id: b, type: any, schema: {type: string}}\n"
            "      - {id: c, type: int, schema: {minimum: 1}}\n"
        ),
    )

    assert found == [
        "commands[0] (Tag).parameters[0] (a).type: 'str' contradicts the schema, whose type 'integer' is listed "
        "to Arena as 'int'; drop 'type', which follows from the schema",
        "commands[0] (Tag).parameters[1] (b).type: 'any' contradicts the schema, whose type 'string' is listed "
        "to Arena as 'str'; drop 'type', which follows from the schema",
        "commands[0] (Tag).parameters[2] (c).type: 'int' contradicts the schema, whose type '(none)' is listed "
        "to Arena as 'any'; drop 'type', which follows from the schema",
    ]


def test_a_parameter_needs_a_type_or_a_schema(tmp_path: Path) -> None:
    assert problems(tmp_path, manifest_with("      - {id: a}\n")) == [
        "commands[0] (Tag).parameters[0] (a): needs a 'type' (str, int, bool or any) or a 'schema'"
    ]


def test_an_invalid_schema_is_reported_with_every_location(tmp_path: Path) -> None:
    found = problems(
        tmp_path,
        manifest_with(
            "      - {id: a, schema: {type: strin}}\n"
            "      - {id: b, schema: {type: array, maxItems: '5', items: {pattern: '['}}}\n"
            "      - {id: c, schema: [not, a, schema]}\n"
        ),
    )

    assert found == [
        "commands[0].parameters[0].schema.type: 'strin' is not valid under any of the given schemas",
        "commands[0].parameters[1].schema.items.pattern: '[' is not a 'regex'",
        "commands[0].parameters[1].schema.maxItems: '5' is not of type 'integer'",
        "commands[0].parameters[2].schema: ['not', 'a', 'schema'] is not of type 'object'",
    ]


def test_what_the_meta_schema_cannot_say_is_reported_too(tmp_path: Path) -> None:
    found = problems(
        tmp_path,
        manifest_with(
            "      - {id: a, schema: {$schema: 'http://json-schema.org/draft-07/schema#'}}\n"
            "      - {id: b, schema: {type: string, format: credit-card}}\n"
            "      - {id: c, schema: {$ref: 'https://example.com/schemas/c.json'}}\n"
            "      - {id: d, schema: {type: array, items: {$ref: '#/$defs/missing'}}}\n"
        ),
    )

    assert found[0] == (
        "commands[0] (Tag).parameters[0] (a).schema.$schema: 'http://json-schema.org/draft-07/schema#' is not "
        "supported; only Draft 2020-12 ('https://json-schema.org/draft/2020-12/schema') is"
    )
    assert found[1].startswith(
        "commands[0] (Tag).parameters[1] (b).schema.format: format 'credit-card' is not checked by this gateway "
        "(it checks date, "
    )
    assert found[1].endswith("); use a 'pattern' instead")
    assert found[2:] == [
        "commands[0] (Tag).parameters[2] (c).schema.$ref: 'https://example.com/schemas/c.json' points outside the "
        "parameter's schema, which the gateway never fetches; put what it refers to under '$defs' and refer to "
        "'#/$defs/...'",
        "commands[0] (Tag).parameters[3] (d).schema.items.$ref: '#/$defs/missing' does not point to anything in "
        "the parameter's schema",
    ]


def test_format_and_ref_keys_inside_data_are_not_keywords(tmp_path: Path) -> None:
    command = load(
        tmp_path,
        manifest_with("      - {id: a, schema: {const: {format: no-such-format, $ref: 'https://example.com/'}}}\n"),
    )

    assert command.parameters[0].validator is not None


def test_a_default_must_satisfy_the_schema(tmp_path: Path) -> None:
    found = problems(
        tmp_path,
        manifest_with(
            "      - {id: a, schema: {type: array, items: {type: string, format: ipv4}}, default: ['10.0.0.1', x, 3]}\n"
            "      - {id: b, secret: true, schema: {type: string, minLength: 12}, default: hunter2}\n"
        ),
    )

    assert found == [
        "commands[0] (Tag).parameters[0] (a).default[1]: 'x' is not a 'ipv4'; a default must satisfy the "
        "parameter's schema",
        "commands[0] (Tag).parameters[0] (a).default[2]: 3 is not of type 'string'; a default must satisfy the "
        "parameter's schema",
        "commands[0] (Tag).parameters[1] (b).default: the value is too short; a default must satisfy the "
        "parameter's schema",
    ]
    assert not any("hunter2" in problem for problem in found)


# Payloads


def test_a_valid_payload_passes_with_defaults_filled_in(tag: Command) -> None:
    body = {
        "items": ["a", "b"],
        "mode": "safe",
        "address": {"host": "10.0.0.1", "port": 8080},
        "token": "sk-abcd1234",
        "tree": {"kids": [{"kids": []}]},
        "note": None,
    }

    assert prepare_payload(tag, body) == {
        "items": ["a", "b"],
        "level": 3,
        "mode": "safe",
        "address": {"host": "10.0.0.1", "port": 8080},
        "token": "sk-abcd1234",
        "tree": {"kids": [{"kids": []}]},
    }


def test_an_integer_schema_passes_a_whole_number_on_as_an_integer(tag: Command) -> None:
    payload = prepare_payload(tag, {"items": [], "level": 2.0})

    assert payload["level"] == 2
    assert isinstance(payload["level"], int)


def test_each_problem_is_named_with_its_path(tag: Command) -> None:
    assert refusal(tag, {"items": ["a", 7, "b", True]}) == (
        "Command 'typed/Tag': Parameter 'items'[1]: 7 is not of type 'string'. "
        "Parameter 'items'[3]: True is not of type 'string'."
    )


def test_every_problem_of_every_parameter_is_reported_at_once(tag: Command) -> None:
    message = refusal(
        tag,
        {
            "items": ["a", "b", "c", "d", "e", "f"],
            "level": 9,
            "mode": "slow",
            "address": {"host": "999.0.0.1", "port": 0, "extra": 1},
            "tree": {"kids": [{"kids": "none"}]},
            "note": 5,
        },
    )

    assert message == (
        "Command 'typed/Tag': "
        "Parameter 'items': ['a', 'b', 'c', 'd', 'e', 'f'] is too long. "
        "Parameter 'level': 9 is greater than the maximum of 5. "
        "Parameter 'mode': 'slow' is not one of ['fast', 'safe']. "
        "Parameter 'address': Additional properties are not allowed ('extra' was unexpected). "
        "Parameter 'address'.host: '999.0.0.1' is not a 'ipv4'. "
        "Parameter 'address'.port: 0 is less than the minimum of 1. "
        "Parameter 'tree'.kids[0].kids: 'none' is not of type 'array'. "
        "Parameter 'note' must be a string (str), got an integer."
    )


def test_a_missing_required_parameter_is_still_missing_not_invalid(tag: Command) -> None:
    with pytest.raises(MissingParameter):
        prepare_payload(tag, {"items": None, "level": 9})


def test_a_key_that_is_no_identifier_is_quoted_in_the_path(tmp_path: Path) -> None:
    command = load(
        tmp_path, manifest_with("      - {id: a, schema: {type: object, additionalProperties: {type: integer}}}\n")
    )

    assert refusal(command, {"a": {"two words": "x"}}) == (
        "Command 'typed/Tag': Parameter 'a'['two words']: 'x' is not of type 'integer'."
    )


def test_a_secret_value_is_never_quoted(tmp_path: Path) -> None:
    command = load(
        tmp_path,
        manifest_with(
            "      - {id: token, secret: true, schema: {type: string, pattern: '^sk-'}}\n"
            "      - id: creds\n"
            "        secret: true\n"
            "        schema: {type: object, required: [user], properties: {password: {minLength: 30}},"
            " additionalProperties: false}\n"
            "      - {id: pin, secret: true, schema: {const: 1234}}\n"
        ),
    )

    message = refusal(
        command,
        {"token": "pk-live-0042", "creds": {"password": "hunter2", "hunter3": "x"}, "pin": 4321},
    )

    assert message == (
        "Command 'typed/Tag': "
        "Parameter 'token': the value does not match '^sk-'. "
        "Parameter 'creds': 'user' is a required property. "
        "Parameter 'creds': the value does not satisfy the schema's 'additionalProperties'. "
        "Parameter 'creds'.password: the value is too short. "
        "Parameter 'pin': the value does not satisfy the schema's 'const'."
    )
    for secret in ("pk-live-0042", "hunter2", "hunter3", "4321"):
        assert secret not in message


def test_a_long_value_is_shortened_in_the_message(tag: Command) -> None:
    message = refusal(tag, {"items": [], "note": "n", "mode": "x" * 500})

    assert message == f"Command 'typed/Tag': Parameter 'mode': '{'x' * 59}... is not one of ['fast', 'safe']."


def test_problems_listed_are_bounded(tag: Command) -> None:
    message = refusal(tag, {"items": list(range(MAX_PROBLEMS + 10))})

    assert message.count("is not of type 'string'") == MAX_PROBLEMS
    assert message.endswith(f"Parameter 'items': more problems, not listed (the first {MAX_PROBLEMS} are).")


@pytest.mark.parametrize(
    ("schema", "good", "bad"),
    [
        ("{type: string, format: ipv4}", "192.0.2.1", "192.0.2.300"),
        ("{type: string, format: uuid}", "5f0c4c1e-6f1e-4a53-9a43-2f6d0f3b2c11", "5f0c4c1e"),
        ("{type: string, format: date}", "2026-12-04", "2026-13-04"),
        ("{type: string, format: email}", "ops@example.com", "ops.example.com"),
    ],
)
def test_formats_are_checked(tmp_path: Path, schema: str, good: str, bad: str) -> None:
    command = load(tmp_path, manifest_with(f"      - {{id: a, schema: {schema}}}\n"))

    assert prepare_payload(command, {"a": good}) == {"a": good}
    assert refusal(command, {"a": bad}).startswith(f"Command 'typed/Tag': Parameter 'a': {bad!r} is not a ")


# Routes


@pytest.fixture
def typed_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "manifests"
    directory.mkdir()
    (directory / "typed.yaml").write_text(TYPED)
    return directory


@pytest.fixture
def typed_client(typed_dir: Path) -> Iterator[TestClient]:
    with TestClient(create_app(make_settings(manifest_dirs=(typed_dir,)))) as client:
        yield client


def test_discovery_lists_the_scalar_type_and_the_schema(typed_client: TestClient, protocol: Protocol) -> None:
    catalog = typed_client.get("/v1/commands").json()

    protocol.validate(catalog, "CommandCatalog")
    parameters = {parameter["id"]: parameter for parameter in catalog[0]["parameters"]}
    assert parameters["level"] == {
        "id": "level",
        "type": "int",
        "required": False,
        "default": 3,
        "schema": {"type": "integer", "minimum": 1, "maximum": 5},
    }
    assert parameters["note"] == {"id": "note", "type": "str", "required": False}


def test_an_invalid_payload_is_refused_before_anything_runs(typed_client: TestClient, protocol: Protocol) -> None:
    response = typed_client.post("/v1/do/typed/Tag", json={"items": ["a", 2], "level": 0, "token": "sk-wrong"})

    assert response.status_code == 400
    protocol.validate_answer(400, response.json())
    assert response.json()["error"] == {
        "error_code": "invalid_parameter",
        "message": "Command 'typed/Tag': Parameter 'items'[1]: 2 is not of type 'string'. "
        "Parameter 'level': 0 is less than the minimum of 1. "
        "Parameter 'token': the value does not match '^sk-[a-z0-9]{8}$'.",
    }


def openapi(client: TestClient, **headers: str) -> dict[str, Any]:
    response = client.get("/openapi.json", headers=headers)
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    document: dict[str, Any] = response.json()
    return document


def test_openapi_document_is_valid_openapi_3_1(client: TestClient, typed_client: TestClient) -> None:
    for document in (openapi(client), openapi(typed_client)):
        OpenAPIV31SpecValidator(document).validate()
        assert document["openapi"] == "3.1.0"


def test_openapi_describes_each_command_and_the_fixed_routes(client: TestClient) -> None:
    document = openapi(client)
    commands = [entry["id"] for entry in client.get("/v1/commands").json()]

    do_paths = sorted(path for path in document["paths"] if path.startswith("/v1/do/"))
    assert do_paths == sorted(f"/v1/do/{command}" for command in commands)
    assert {"/v1/commands", "/v1/auths", "/v1/liveness", "/liveness", "/metrics", "/", "/openapi.json"} <= set(
        document["paths"]
    )
    echo = document["paths"]["/v1/do/fake/Echo"]["post"]
    assert echo["operationId"] == "fake/Echo"
    assert echo["requestBody"]["content"]["application/json"]["schema"] == {
        "type": "object",
        "properties": {
            "text": {"type": "string", "description": "Any text."},
            "count": {"type": "integer", "default": 1},
            "loud": {"type": "boolean"},
            "extra": {},
        },
        "additionalProperties": True,
        "required": ["text"],
    }


def request_validator(document: dict[str, Any], command: str) -> jsonschema.Draft202012Validator:
    schema = document["paths"][f"/v1/do/{command}"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    return jsonschema.Draft202012Validator(schema, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER)


TYPED_VALID = [
    {"items": []},
    {"items": ["a", "b", "c", "d", "e"], "level": 5, "mode": "fast"},
    {"items": ["x"], "address": {"host": "127.0.0.1"}, "token": "sk-0123abcd", "note": "n"},
    {"items": ["x"], "tree": {"kids": [{"kids": [{}]}]}, "address": {"host": "10.1.2.3", "port": 65535}},
    {"items": ["x"], "undeclared": {"passes": True}, "spiff__task_id": "t-1"},
]
TYPED_INVALID = [
    {},
    {"items": "a"},
    {"items": ["a"] * 6},
    {"items": [], "level": 0},
    {"items": [], "mode": "slow"},
    {"items": [], "address": {"port": 80}},
    {"items": [], "address": {"host": "10.0.0.1", "user": "x"}},
    {"items": [], "token": "sk-short"},
    {"items": [], "tree": {"kids": [{"kids": 1}]}},
    {"items": [], "note": 1},
]


@pytest.mark.parametrize("body", TYPED_VALID)
def test_a_payload_valid_per_the_document_is_accepted(typed_client: TestClient, body: dict[str, Any]) -> None:
    request_validator(openapi(typed_client), "typed/Tag").validate(body)

    response = typed_client.post("/v1/do/typed/Tag", json=body)

    assert response.status_code == 200
    received = response.json()["command_response"]["body"]
    assert {key: received[key] for key in body} == body


@pytest.mark.parametrize("body", TYPED_INVALID)
def test_a_payload_invalid_per_the_document_is_refused(typed_client: TestClient, body: dict[str, Any]) -> None:
    assert not request_validator(openapi(typed_client), "typed/Tag").is_valid(body)

    response = typed_client.post("/v1/do/typed/Tag", json=body)

    assert response.status_code == 400
    assert response.json()["error"]["error_code"] in ("invalid_parameter", "missing_parameter")


def test_the_scalar_commands_accept_what_their_document_describes(client: TestClient) -> None:
    validator = request_validator(openapi(client), "fake/Echo")
    for body in ({"text": "t"}, {"text": "t", "count": 2, "loud": False, "extra": [1, {"a": None}]}):
        validator.validate(body)
        assert client.post("/v1/do/fake/Echo", json=body).status_code == 200
    assert not validator.is_valid({"text": "t", "count": "2"})
    assert client.post("/v1/do/fake/Echo", json={"text": "t", "count": "2"}).status_code == 400


def test_a_reload_replaces_the_document(typed_dir: Path, typed_client: TestClient) -> None:
    (typed_dir / "more.yaml").write_text(
        f"manifest_version: 1\nconnector: more\ncommands:\n  - name: Run\n    run: ['{{python}}', '{FAKE}', echo]\n"
    )

    typed_client.portal.call(typed_client.app.state.reloader.reload, "test")  # type: ignore[attr-defined,union-attr]

    assert "/v1/do/more/Run" in openapi(typed_client)["paths"]


class TestOpenapiGating:
    KEY = "k3y-from-arena"

    @pytest.fixture
    def keyed(self) -> TestClient:
        return TestClient(create_app(make_settings(api_key=self.KEY)))

    def test_it_needs_the_key_when_one_is_set(self, keyed: TestClient) -> None:
        for headers in ({}, {"Spiff-Connector-Proxy-Api-Key": "wrong"}):
            response = keyed.get("/openapi.json", headers=headers)
            assert response.status_code == 401
            assert response.json() == {"error": "Unauthorized"}
            assert response.headers["www-authenticate"].startswith("Basic ")

        assert openapi(keyed, **{"Spiff-Connector-Proxy-Api-Key": self.KEY})["openapi"] == "3.1.0"
        basic = base64.b64encode(f"anyone:{self.KEY}".encode()).decode()
        assert openapi(keyed, authorization=f"Basic {basic}")["openapi"] == "3.1.0"

    def test_it_is_open_without_a_key(self, client: TestClient) -> None:
        assert openapi(client)["openapi"] == "3.1.0"


def test_the_reference_example_behaves_as_documented(tmp_path: Path) -> None:
    reference = (Path(__file__).parent.parent / "docs" / "manifests.md").read_text()
    section = reference.split("### Typed parameters: `schema`", 1)[1]
    parameters = yaml.safe_load(section.split("```yaml\n", 1)[1].split("```", 1)[0])["parameters"]
    document = {
        "manifest_version": 1,
        "connector": "alerts",
        "commands": [{"name": "Notify", "run": ["{python}", "-c", "pass"], "parameters": parameters}],
    }
    notify = load(tmp_path, yaml.safe_dump(document))

    message = refusal(notify, {"tags": ["ops", 7], "retries": 9, "callback": {"host": "10.0.0.1", "port": 0}})
    assert f"\n{message}\n" in section
    parameters[2]["type"] = "str"
    (contradiction,) = problems(tmp_path, yaml.safe_dump(document))
    assert f"\n{contradiction}\n" in section


def test_an_unknown_keyword_is_warned_about_as_a_likely_typo(tmp_path: Path) -> None:
    path = tmp_path / "typed.yaml"
    path.write_text(
        manifest_with(
            "      - id: a\n"
            "        schema:\n"
            "          type: array\n"
            "          maxitems: 5\n"
            "          items: {type: string, x-order: 1, Pattern: '^a'}\n"
            "          $defs: {unused: {type: object, properties: {colour: {tipe: string}}}}\n"
            "          const_: {maxitems: 1}\n"
        )
    )

    manifest = load_manifest(path, default_timeout=30, environ={})

    assert manifest.warnings == (
        "commands[0] (Tag).parameters[0] (a).schema.maxitems: 'maxitems' is not a JSON Schema keyword and checks "
        "nothing; did you mean 'maxItems'?",
        "commands[0] (Tag).parameters[0] (a).schema.items.Pattern: 'Pattern' is not a JSON Schema keyword and "
        "checks nothing; did you mean 'pattern'?",
        "commands[0] (Tag).parameters[0] (a).schema.$defs.unused.properties.colour.tipe: 'tipe' is not a JSON "
        "Schema keyword and checks nothing; did you mean 'type'?",
        "commands[0] (Tag).parameters[0] (a).schema.const_: 'const_' is not a JSON Schema keyword and checks "
        "nothing; did you mean 'const'?",
    )


def test_the_status_page_shows_a_schema_in_brief(typed_client: TestClient) -> None:
    page = typed_client.get("/").text

    assert (
        "<li><code>items</code> (any, required): Up to five tags.<br><code class='schema' "
        "title='{&quot;type&quot;:&quot;array&quot;,&quot;items&quot;:{&quot;type&quot;:&quot;string&quot;},"
        "&quot;maxItems&quot;:5}'>{&quot;type&quot;:&quot;array&quot;,&quot;items&quot;:{&quot;type&quot;:"
        "&quot;string&quot;},&quot;maxItems&quot;:5}</code></li>"
    ) in page
    tree = page.split("<code>tree</code>", 1)[1].split("</li>", 1)[0]
    assert tree.endswith("...</code>")
    assert '"typed/Tag": {"items": [], "level": 3}' in page  # the form starts from an empty array


def test_values_that_json_cannot_carry_are_refused_with_their_location(tmp_path: Path) -> None:
    found = problems(
        tmp_path,
        manifest_with(
            "      - {id: a, type: any, default: 2026-12-04}\n"
            "      - {id: b, schema: {enum: [2026-12-04 10:30:00, x], maximum: .inf}}\n"
            "      - {id: c, schema: {type: object, properties: {1: {type: string}}}}\n"
        ),
    )

    assert found == [
        "commands[0].parameters[0].default: YAML reads 2026-12-04 as a date, and JSON has no dates; quote it: "
        "'2026-12-04'",
        "commands[0].parameters[1].schema.enum[0]: YAML reads 2026-12-04 10:30:00 as a date, and JSON has no dates; "
        "quote it: '2026-12-04 10:30:00'",
        "commands[0].parameters[1].schema.maximum: inf is not a JSON number",
        "commands[0].parameters[2].schema.properties: the key 1 is not a string; quote it",
    ]


def test_the_readme_openapi_example_is_what_the_node_example_serves() -> None:
    root = Path(__file__).parent.parent
    readme = (root / "README.md").read_text().split("### OpenAPI document", 1)[1]
    shown = json.loads(readme.split("| .properties |= {title, priority, urgent, labels}'\n", 1)[1].split("```", 1)[0])
    app = create_app(make_settings(manifest_dirs=(root / "examples" / "node-connector",)))

    schema = request_validator(openapi(TestClient(app)), "tickets/CreateTicket").schema
    kept = {name: schema["properties"][name] for name in ("title", "priority", "urgent", "labels")}

    assert shown == {**schema, "properties": kept}
    assert shown["properties"]["urgent"]["default"] is False  # a false default is still listed
