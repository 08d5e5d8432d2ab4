"""Manifests: loading, every problem reported with its location, executables resolved at load time."""

from __future__ import annotations

import contextlib
import copy
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway import schemas
from gateway.manifest import Command, ManifestError, load_manifest, schema_problems


def write(directory: Path, text: str, name: str = "demo.yaml") -> Path:
    path = directory / name
    path.write_text(text)
    return path


def executable(directory: Path, name: str = "run.sh") -> Path:
    path = directory / name
    path.write_text("#!/bin/sh\ncat\n")
    path.chmod(0o755)
    return path


def problems(path: Path) -> list[str]:
    with pytest.raises(ManifestError) as caught:
        load_manifest(path, default_timeout=30, environ={})
    assert caught.value.path == path
    return caught.value.problems


COMPLETE = """\
manifest_version: 1
connector: billing
description: Invoices in the ledger.
defaults:
  run: [./run.sh]
  timeout: 10
  env: {LEDGER_URL: "http://127.0.0.1:9000"}
  inherit_env: [HTTPS_PROXY]
commands:
  - name: CreateInvoice
    description: Creates an invoice.
    parameters:
      - {id: customer, type: str, required: true, description: Customer number.}
      - {id: amount, type: int, required: true}
      - {id: draft, type: bool, default: true}
      - {id: lines, type: any}
  - name: VoidInvoice
    run: ["{python}", void.py]
    timeout: 2.5
    spiff_keys: none
auths:
  - name: OAuth
    parameters:
      - {id: client_id, type: str, required: true}
"""


def test_complete_manifest_loads(tmp_path: Path) -> None:
    script = executable(tmp_path)
    manifest = load_manifest(write(tmp_path, COMPLETE), default_timeout=30, environ={})

    create, void = manifest.commands
    assert create.id == "billing/CreateInvoice"
    assert create.argv == (str(script),)
    assert create.timeout == 10
    assert create.env == {"LEDGER_URL": "http://127.0.0.1:9000"}
    assert create.inherit_env == ("HTTPS_PROXY",)
    assert create.spiff_keys == "all"
    assert create.workdir == tmp_path
    assert [(p.id, p.type, p.required, p.has_default) for p in create.parameters] == [
        ("customer", "str", True, False),
        ("amount", "int", True, False),
        ("draft", "bool", False, True),
        ("lines", "any", False, False),
    ]
    assert void.argv == (sys.executable, "void.py")
    assert void.timeout == 2.5
    assert void.spiff_keys == "none"
    assert [auth.id for auth in manifest.auths] == ["billing/OAuth"]
    assert manifest.warnings == ()


def test_default_timeout_applies_when_none_is_set(tmp_path: Path) -> None:
    executable(tmp_path)
    path = write(tmp_path, "manifest_version: 1\nconnector: c\ncommands:\n  - {name: A, run: [./run.sh]}\n")

    command: Command = load_manifest(path, default_timeout=12.5, environ={}).commands[0]

    assert command.timeout == 12.5


def test_every_schema_problem_is_reported_with_its_location(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """\
manifest_version: 2
connector: bad/name
commands:
  - name: A
    run: "./run.sh --flag"
    timeout: soon
    parameters:
      - {id: x, type: string}
      - {id: spiff__task_data, type: any}
    shell: true
""",
    )

    assert problems(path) == [
        "commands[0]: Additional properties are not allowed ('shell' was unexpected)",
        "commands[0].parameters[0].type: 'string' is not one of ['str', 'int', 'bool', 'any']",
        "commands[0].parameters[1].id: 'spiff__task_data' is reserved for Arena's own keys",
        "commands[0].run: './run.sh --flag' is not of type 'array'",
        "commands[0].timeout: 'soon' is not of type 'number'",
        "connector: 'bad/name' is not an allowed name (letters, digits, '_', '.' and '-', up to 100, no '..')",
        "manifest_version: 1 was expected",
    ]


@pytest.mark.parametrize("name", ["..", "a..b", "../etc", "a/b", ".hidden", "x" * 101, ""])
def test_names_with_path_tricks_are_refused(tmp_path: Path, name: str) -> None:
    executable(tmp_path)
    path = write(tmp_path, f"manifest_version: 1\nconnector: c\ncommands:\n  - {{name: '{name}', run: [./run.sh]}}\n")

    assert problems(path) == [
        f"commands[0].name: {name!r} is not an allowed name (letters, digits, '_', '.' and '-', up to 100, no '..')"
    ]


def test_problems_beyond_the_schema_are_all_collected(tmp_path: Path) -> None:
    (tmp_path / "plain.txt").write_text("not executable")
    path = write(
        tmp_path,
        """\
manifest_version: 1
connector: c
commands:
  - name: A
    run: [no-such-program-anywhere]
    parameters:
      - {id: n, type: int, default: "3"}
      - {id: n, type: str}
      - {id: r, type: str, required: true, default: x}
      - {id: z, type: any, default: null}
  - name: A
    run: [./missing.sh]
  - name: B
    run: [./plain.txt]
  - name: C
""",
    )

    assert problems(path) == [
        "commands[1].name: 'A' is already used by commands[0]",
        "commands[0] (A).run[0]: executable 'no-such-program-anywhere' was not found on PATH",
        "commands[0] (A).parameters[0] (n).default: must be a int, got a string '3'",
        "commands[0] (A).parameters[1] (n).id: parameter 'n' is declared twice",
        "commands[0] (A).parameters[2] (r).default: a required parameter cannot have a default; drop one of them",
        "commands[0] (A).parameters[3] (z).default: null is not a default (null counts as absent); drop the line",
        f"commands[1] (A).run[0]: executable './missing.sh' does not exist (looked for {tmp_path / 'missing.sh'})",
        f"commands[2] (B).run[0]: './plain.txt' is not executable; run: chmod +x {tmp_path / 'plain.txt'}",
        "commands[3] (C).run: missing; set it on the command or under defaults",
    ]


def test_yaml_syntax_error_names_the_line(tmp_path: Path) -> None:
    path = write(tmp_path, "manifest_version: 1\nconnector: [unclosed\n")

    [problem] = problems(path)
    assert problem.startswith("is not valid YAML: ")
    assert "line 3" in problem


def test_a_key_written_twice_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path, "manifest_version: 1\nconnector: a\nconnector: b\ncommands: []\n")

    assert problems(path) == ["is not valid YAML: key 'connector' appears twice (line 3)"]


def test_a_document_that_is_not_a_mapping(tmp_path: Path) -> None:
    assert problems(write(tmp_path, "- just\n- a list\n")) == [
        "(top level): ['just', 'a list'] is not of type 'object'"
    ]


def test_time_limit_at_arenas_limit_is_a_warning(tmp_path: Path) -> None:
    executable(tmp_path)
    path = write(
        tmp_path, "manifest_version: 1\nconnector: c\ncommands:\n  - {name: Slow, run: [./run.sh], timeout: 45}\n"
    )

    manifest = load_manifest(path, default_timeout=30, environ={})

    assert manifest.warnings == (
        "commands[0] (Slow).timeout: 45 s is at or above Arena's own limit of 45 s; Arena may give up and retry "
        "while the first run goes on. Keep synchronous commands well under 45 s.",
    )


def test_error_message_lists_every_problem_with_the_file(tmp_path: Path) -> None:
    error = ManifestError(tmp_path / "x.yaml", ["first", "second"])

    assert str(error) == f"Manifest '{tmp_path / 'x.yaml'}' is invalid:\n  - first\n  - second"


def test_the_reference_example_is_a_valid_manifest() -> None:
    reference = (Path(__file__).parent.parent / "docs" / "manifests.md").read_text()
    example = reference.split("## A complete example", 1)[1].split("```yaml\n", 1)[1].split("```", 1)[0]

    assert schema_problems(yaml.safe_load(example)) == []


def test_worker_settings_need_worker_mode(tmp_path: Path) -> None:
    path = write(
        tmp_path, "manifest_version: 1\nconnector: c\ncommands:\n  - {name: A, run: ['{python}'], workers: {size: 2}}\n"
    )

    assert problems(path) == ["commands[0] (A).workers: only used with mode: worker; add it or drop workers"]


def test_a_version_managers_shim_is_resolved_to_the_real_interpreter(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    shims = tmp_path / "shims"
    shims.mkdir()
    shim = shims / "python3"
    shim.write_text(f'#!/bin/sh\nexec {sys.executable} "$@"\n')
    shim.chmod(0o755)
    monkeypatch.setenv("PATH", f"{shims}:/usr/bin:/bin")
    path = write(tmp_path, "manifest_version: 1\nconnector: c\ncommands:\n  - {name: A, run: [python3, -c, pass]}\n")

    command = load_manifest(path, default_timeout=30, environ={}).commands[0]

    assert command.argv == (str(Path(sys.executable)), "-c", "pass")


def test_checks_beyond_the_schema_run_on_every_part_that_passes_it(tmp_path: Path) -> None:
    executable(tmp_path)
    path = write(
        tmp_path,
        """\
manifest_version: 1
connector: c
defaults:
  run: [./run.sh]
  timeout: soon
commands:
  - name: A
    run: [./missing.sh]
    shell: true
  - run: [./also-missing.sh]
    timeout: 50
  - name: B
    run: "./run.sh --flag"
  - name: C
    mode: forever
    workers: {size: 2}
    parameters:
      - {id: x, type: string}
      - {id: y, type: int, default: "3"}
  - name: D
    user: [root]
    env: {TOKEN: "${UNSET_TOKEN}"}
  - just a string
auths:
  - name: A
    parameters:
      - {id: p, type: str, default: 1}
  - {name: A}
""",
    )

    with pytest.raises(ManifestError) as caught:
        load_manifest(path, default_timeout=30, environ={})

    assert caught.value.problems == [
        "commands[0]: Additional properties are not allowed ('shell' was unexpected)",
        "commands[1]: 'name' is a required property",
        "commands[2].run: './run.sh --flag' is not of type 'array'",
        "commands[3].mode: 'forever' is not one of ['spawn', 'worker']",
        "commands[3].parameters[0].type: 'string' is not one of ['str', 'int', 'bool', 'any']",
        "commands[4].user: ['root'] is not valid under any of the given schemas",
        "commands[5]: 'just a string' is not of type 'object'",
        "defaults.timeout: 'soon' is not of type 'number'",
        f"commands[0] (A).run[0]: executable './missing.sh' does not exist (looked for {tmp_path / 'missing.sh'})",
        "commands[1].run[0]: executable './also-missing.sh' does not exist "
        f"(looked for {tmp_path / 'also-missing.sh'})",
        "commands[3] (C).parameters[1] (y).default: must be a int, got a string '3'",
        "commands[4] (D).env.TOKEN: ${UNSET_TOKEN} is not set in the gateway's environment",
        "auths[1].name: 'A' is already used by auths[0]",
        "auths[0] (A).parameters[0] (p).default: must be a str, got an integer 1",
    ]
    assert caught.value.warnings == [
        "commands[1].timeout: 50 s is at or above Arena's own limit of 45 s; Arena may give up and retry while the "
        "first run goes on. Keep synchronous commands well under 45 s."
    ]


def test_an_invalid_manifests_warnings_are_shown_with_its_problems(tmp_path: Path) -> None:
    error = ManifestError(tmp_path / "x.yaml", ["first"], ["careful"])

    assert str(error) == f"Manifest '{tmp_path / 'x.yaml'}' is invalid:\n  - first\nWarnings:\n  - careful"


def test_the_wait_for_a_run_slot_counts_towards_arenas_limit(tmp_path: Path) -> None:
    executable(tmp_path)
    path = write(
        tmp_path,
        "manifest_version: 1\nconnector: c\ndefaults: {run: [./run.sh]}\ncommands:\n"
        "  - {name: Fits, timeout: 34}\n  - {name: Reaches, timeout: 35}\n",
    )

    assert load_manifest(path, default_timeout=30, environ={}, max_wait=5).warnings == ()
    assert load_manifest(path, default_timeout=30, environ={}, max_wait=10).warnings == (
        "commands[1] (Reaches).timeout: 35 s plus up to 10 s of waiting for a run slot (CONNECTOR_GATEWAY_MAX_WAIT) "
        "reaches Arena's own limit of 45 s; Arena may give up on a request that waited and retry while it runs. "
        "Keep the two together under 45 s.",
    )


@pytest.mark.parametrize(
    ("schema_format", "good", "bad"),
    [
        ("date-time", "2026-12-04T07:30:00Z", "2026-12-04 at half past seven"),
        ("time", "07:30:00+01:00", "half past seven"),
        ("uri", "https://example.com/a?b=c", "not a uri"),
        ("hostname", "ledger.example.com", "-ledger-"),
        ("uri-template", "https://example.com/{id}", "https://example.com/{id"),
        ("json-pointer", "/a/0", "a/0"),
    ],
)
def test_formats_beyond_jsonschemas_own_are_checked(tmp_path: Path, schema_format: str, good: str, bad: str) -> None:
    parameter = f"{{id: v, schema: {{type: string, format: {schema_format}}}}}"
    path = write(
        tmp_path,
        "manifest_version: 1\nconnector: c\ncommands:\n"
        f"  - {{name: A, run: ['{{python}}'], parameters: [{parameter}]}}\n",
    )

    [parameter] = load_manifest(path, default_timeout=30, environ={}).commands[0].parameters

    assert parameter.validator is not None
    assert schemas.value_problems(parameter.validator, good, secret=False) == []
    assert schemas.value_problems(parameter.validator, bad, secret=False) == [
        ("", f"{bad!r} is not a {schema_format!r}")
    ]


def test_the_checked_formats_are_the_documented_ones_and_all_have_a_checker() -> None:
    documented = {
        *("date", "date-time", "time", "email", "idn-email", "hostname", "idn-hostname"),
        *("ipv4", "ipv6", "uri", "uri-reference", "uri-template"),
        *("json-pointer", "relative-json-pointer", "regex", "uuid"),
    }

    assert set(schemas.CHECKED_FORMATS) == documented
    assert set(schemas.FORMAT_CHECKER.checkers) == documented


@pytest.mark.parametrize("schema_format", ["duration", "iri", "phone"])
def test_a_format_the_gateway_does_not_check_is_refused_at_load(tmp_path: Path, schema_format: str) -> None:
    parameter = f"{{id: v, schema: {{type: string, format: {schema_format}}}}}"
    path = write(
        tmp_path,
        "manifest_version: 1\nconnector: c\ncommands:\n"
        f"  - {{name: A, run: ['{{python}}'], parameters: [{parameter}]}}\n",
    )

    with pytest.raises(ManifestError) as raised:
        load_manifest(path, default_timeout=30, environ={})

    assert f"format {schema_format!r} is not checked by this gateway" in str(raised.value)


@pytest.mark.parametrize(
    "example", ["manifests/http.yaml", "examples/node-connector/manifest.yaml", "examples/go-connector/manifest.yaml"]
)
def test_the_shipped_manifests_mark_their_credentials_secret(example: str) -> None:
    document = yaml.safe_load((Path(__file__).parent.parent / example).read_text())
    credentials = [
        (command["name"], parameter["id"], parameter.get("secret", False))
        for command in document["commands"]
        for parameter in command.get("parameters", [])
        if any(word in parameter["id"] for word in ("token", "password", "secret", "api_key"))
    ]

    assert credentials
    assert all(secret for _, _, secret in credentials), credentials


BROKEN_VALUES = st.sampled_from([None, 0, -1, 0.5, "", "x", True, [], [1], ["x"], {}, {"zz": 1}, {"name": 1}])


def locations(node: Any, prefix: tuple[str | int, ...] = ()) -> list[tuple[str | int, ...]]:
    found = [prefix]
    if isinstance(node, dict):
        found += [location for key, value in node.items() for location in locations(value, (*prefix, key))]
    elif isinstance(node, list):
        found += [location for index, value in enumerate(node) for location in locations(value, (*prefix, index))]
    return found


@settings(max_examples=300, deadline=None, derandomize=True, database=None)
@given(data=st.data())
def test_any_broken_part_is_reported_never_crashed_on(data: st.DataObject) -> None:
    document = yaml.safe_load(BROKEN_BASE)
    for _ in range(data.draw(st.integers(1, 4))):
        *parents, last = data.draw(st.sampled_from(locations(document)[1:]))
        holder = document
        for part in parents:
            holder = holder[part]
        change = data.draw(st.sampled_from(["replace", "delete", "add a key"]))
        if change == "delete" and isinstance(holder, dict):
            del holder[last]
        elif change == "add a key" and isinstance(holder[last], dict):
            holder[last][data.draw(st.sampled_from(["zz", "name", "id", "run"]))] = 1
        else:
            holder[last] = copy.deepcopy(data.draw(BROKEN_VALUES))

    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "m.yaml"
        path.write_text(yaml.safe_dump(document))
        with contextlib.suppress(ManifestError):
            load_manifest(path, default_timeout=30, environ={})


BROKEN_BASE = """\
manifest_version: 1
connector: c
defaults: {run: ['{python}', -c, pass], timeout: 10, env: {A: b}, mode: worker, workers: {size: 1}}
commands:
  - name: A
    parameters:
      - {id: x, type: str}
      - {id: y, schema: {type: integer}, default: 2}
    concurrency: 2
    queue: 1
    limits: {cpu_seconds: 2}
  - {name: B, run: [./nope.sh], spiff_keys: none, inherit_env: [X], mode: spawn}
auths:
  - name: O
    parameters: [{id: p, type: str, secret: true}]
"""
