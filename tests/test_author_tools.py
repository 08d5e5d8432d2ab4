"""The author tools: `new` scaffolds a connector that works as made, `call` runs a command as `serve`
would, `list` shows what the manifests serve and what failed."""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.cli import main
from gateway.scaffold import LANGUAGES, MODES

GREETING_LOG = "greeter/Hello: composing a greeting"
# How each scaffold's own test is run, in its own language, and how its output says how many tests passed.
OWN_TESTS = {
    "python": (
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"],
        {"spawn": "2 passed", "worker": "3 passed"},
    ),
    "node": (["node", "--test"], {"spawn": "# pass 2", "worker": "# pass 3"}),
    "go": (["go", "test", "-v"], {"spawn": "--- PASS", "worker": "--- PASS"}),
    "shell": (["sh", "test.sh"], {"spawn": "ok   a blank name", "worker": "ok   a request that fails"}),
}
PROGRAMS = {"python": "connector.py", "node": "connector.js", "go": "main.go", "shell": "connector.sh"}
TOOLS = {"node": "node", "go": "go", "shell": "jq"}


@pytest.fixture(autouse=True)
def keep_log_levels() -> Iterator[None]:
    """`call` sets the gateway's log levels in the process that runs it: here, pytest's."""
    levels = {name: logging.getLogger(name).level for name in ("gateway", "uvicorn")}
    yield
    for name, level in levels.items():
        logging.getLogger(name).setLevel(level)


def need(language: str) -> None:
    """A scaffold's language must be installed: a missing tool fails the test rather than skipping it."""
    tool = TOOLS.get(language)
    assert tool is None or shutil.which(tool), f"{tool} is needed on PATH to test the {language} scaffolds"


def scaffold(directory: Path, language: str = "python", mode: str = "spawn", name: str = "greeter") -> Path:
    assert main(["new", name, "--language", language, "--mode", mode, "--dir", str(directory)]) == 0
    return directory


def envelope(body: object, logs: list[str], status: int = 200, error: object = None) -> dict[str, object]:
    return {
        "command_response": {"body": body, "mimetype": "application/json", "http_status": status, "headers": {}},
        "command_response_version": 2,
        "error": error,
        "spiff__logs": logs,
    }


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("language", LANGUAGES)
def test_a_scaffold_validates_and_answers_under_call(
    tmp_path: Path, language: str, mode: str, capsys: pytest.CaptureFixture[str]
) -> None:
    need(language)
    directory = scaffold(tmp_path / "greeter", language, mode)
    capsys.readouterr()

    assert main(["validate", str(directory)]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == "1 manifest, 1 command, 0 invalid."

    assert main(["call", "greeter/Hello", '{"name": "Ada"}', "--manifests", str(directory)]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out) == envelope({"message": "Hello, Ada!"}, [GREETING_LOG])
    assert captured.err.splitlines() == [GREETING_LOG]

    assert main(["call", "greeter/Hello", '{"name": " ", "greeting": "Hi"}', "--manifests", str(directory)]) == 1
    captured = capsys.readouterr()
    message = "The name is blank; send the name of the person to greet."
    assert json.loads(captured.out) == {
        **envelope({}, [GREETING_LOG], 422, {"error_code": "BlankName", "message": message}),
        "command_response": {"body": {}, "mimetype": "application/json", "http_status": 422},
    }
    assert captured.err.splitlines() == [
        GREETING_LOG,
        f"connector-gateway: 'greeter/Hello' failed with BlankName (inner status 422): {message}",
    ]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("language", LANGUAGES)
def test_a_scaffolds_own_test_runs_in_its_language_and_can_fail(tmp_path: Path, language: str, mode: str) -> None:
    need(language)
    directory = scaffold(tmp_path / "greeter", language, mode)
    command, passed = OWN_TESTS[language]
    env = {**os.environ, "GOPROXY": "off", "GOFLAGS": ""}

    done = subprocess.run(command, cwd=directory, env=env, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    assert passed[mode] in done.stdout

    program = directory / PROGRAMS[language]
    program.write_text(program.read_text().replace("composing a greeting", "composing a farewell"))
    broken = subprocess.run(command, cwd=directory, env=env, capture_output=True, text=True, timeout=120, check=False)
    assert broken.returncode != 0, broken.stdout + broken.stderr


def test_new_says_what_it_made_and_what_to_do_next(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    directory = tmp_path / "greeter"

    assert main(["new", "greeter", "--language", "node", "--mode", "worker", "--dir", str(directory)]) == 0

    assert capsys.readouterr().out.splitlines() == [
        f"Made the Node connector 'greeter', in worker mode, in {directory}:",
        *(
            f"  {directory / name}"
            for name in ("manifest.yaml", "README.md", "package.json", "connector.js", "connector.test.js")
        ),
        "Next:",
        f"  connector-gateway validate {directory}",
        f'  connector-gateway call greeter/Hello \'{{"name": "Ada"}}\' --manifests {directory}',
        f"  (cd {directory} && node --test)",
    ]
    assert os.access(directory / "connector.js", os.X_OK)


def test_new_writes_into_a_directory_named_after_the_connector_by_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)

    assert main(["new", "greeter"]) == 0

    assert sorted(path.name for path in (tmp_path / "greeter").iterdir()) == [
        "README.md",
        "connector.py",
        "manifest.yaml",
        "test_connector.py",
    ]


def test_new_refuses_a_name_the_manifest_format_refuses(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["new", "my connector", "--dir", str(tmp_path / "x")]) == 2

    assert capsys.readouterr().err == (
        "connector-gateway: 'my connector' is not an allowed connector name: use 1 to 100 letters, digits, "
        "'_', '.' or '-', starting with a letter or digit, without '..'.\n"
    )
    assert not (tmp_path / "x").exists()


def test_new_never_overwrites_and_writes_nothing_when_a_file_exists(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "manifest.yaml").write_text("mine\n")

    assert main(["new", "greeter", "--dir", str(tmp_path)]) == 1

    assert capsys.readouterr().err == (
        f"connector-gateway: Will not overwrite '{tmp_path / 'manifest.yaml'}': move it away or choose "
        "another --dir. Nothing was written.\n"
    )
    assert [path.name for path in tmp_path.iterdir()] == ["manifest.yaml"]
    assert (tmp_path / "manifest.yaml").read_text() == "mine\n"


def test_a_name_yaml_would_read_as_a_number_is_quoted(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    directory = scaffold(tmp_path / "c", "shell", "spawn", name="1e3")
    capsys.readouterr()

    assert main(["call", "1e3/Hello", '{"name": "Ada"}', "--manifests", str(directory)]) == 0
    assert json.loads(capsys.readouterr().out)["command_response"]["body"] == {"message": "Hello, Ada!"}


def test_a_go_scaffold_without_go_says_how_to_build_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    directory = tmp_path / "greeter"
    monkeypatch.setenv("PATH", str(tmp_path / "no-tools"))

    assert main(["new", "greeter", "--language", "go", "--dir", str(directory)]) == 0

    captured = capsys.readouterr()
    assert captured.err == (
        f"Go was not found on PATH, so {directory / 'connector'} is not built: the manifest runs it, and validate "
        f"reports it missing until it is. Install Go 1.19 or later, then run: cd {directory} && go build -o "
        "connector .\n"
    )
    assert f"  (cd {directory} && go build -o connector .)" in captured.out.splitlines()
    assert not (directory / "connector").exists()
    assert (directory / "main.go").is_file()


@pytest.fixture(scope="module")
def greeter(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A Python scaffold in spawn mode: the quickest to run."""
    directory = tmp_path_factory.mktemp("call") / "greeter"
    assert main(["new", "greeter", "--dir", str(directory)]) == 0
    return directory


def gateway(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway", *args],
        input=stdin,
        stdin=None if stdin is not None else subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize("args", [["-"], []], ids=["dash", "no-argument"])
def test_call_reads_the_parameters_from_stdin(greeter: Path, args: list[str]) -> None:
    done = gateway("call", "greeter/Hello", *args, "--manifests", str(greeter), stdin='{"name": "Grace"}')

    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == envelope({"message": "Hello, Grace!"}, [GREETING_LOG])
    assert done.stderr == GREETING_LOG + "\n"


def test_call_refuses_a_missing_parameter_in_the_protocols_shape(
    greeter: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["call", "greeter/Hello", '{"greeting": "Hi"}', "--manifests", str(greeter)]) == 1

    captured = capsys.readouterr()
    message = "Command 'greeter/Hello' is missing the required parameter 'name'."
    assert json.loads(captured.out) == {
        "command_response": {},
        "error": {"error_code": "missing_parameter", "message": message},
    }
    assert captured.err == (
        f"connector-gateway: 'greeter/Hello' was refused with status 400, missing_parameter: {message}\n"
    )


def test_call_of_an_unknown_command_is_refused(greeter: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["call", "greeter/Goodbye", "{}", "--manifests", str(greeter)]) == 1

    message = "No command 'greeter/Goodbye' is served here; GET /v1/commands lists the commands."
    assert json.loads(capsys.readouterr().out) == {
        "command_response": {},
        "error": {"error_code": "command_not_found", "message": message},
    }


def test_call_passes_a_body_that_is_not_json_to_the_gateway_to_judge(
    greeter: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["call", "greeter/Hello", "[1]", "--manifests", str(greeter)]) == 1

    assert json.loads(capsys.readouterr().out)["error"] == {
        "error_code": "invalid_body",
        "message": "The request body must be a JSON object of parameters, got an array.",
    }


def test_call_without_a_manifest_directory_is_a_usage_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["call", "greeter/Hello", "{}", "--manifests", str(tmp_path / "nowhere")]) == 2

    assert capsys.readouterr().err == (
        f"connector-gateway: Manifest directory '{tmp_path / 'nowhere'}' does not exist or is not a directory.\n"
    )


def test_call_without_a_command_is_a_usage_error() -> None:
    with pytest.raises(SystemExit) as exited:
        main(["call"])

    assert exited.value.code == 2


STUBBORN_WORKER = """\
import os, signal, sys, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
with open("worker.pid", "w") as file:
    file.write(str(os.getpid()))
for line in sys.stdin:
    request = __import__("json").loads(line)
    if request["command"] == "stubborn/Answer":
        print(__import__("json").dumps({"id": request["id"], "result": "done"}), flush=True)
    else:
        time.sleep(60)
time.sleep(60)  # ignores the end of its input, too
"""


def running(pid: int) -> bool:
    """Whether the process exists and has not exited (a zombie waits only to be reaped)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
    return "State:\tZ" not in status


@pytest.mark.parametrize(("command", "code"), [("Answer", 0), ("Overrun", 1)])
def test_call_leaves_no_worker_behind(tmp_path: Path, command: str, code: int) -> None:
    """Even a worker that ignores SIGTERM and the end of its input, answering or overrunning its time limit."""
    (tmp_path / "worker.py").write_text(STUBBORN_WORKER)
    (tmp_path / "stubborn.yaml").write_text(
        textwrap.dedent("""\
            manifest_version: 1
            connector: stubborn
            defaults: {run: ["{python}", worker.py], mode: worker, timeout: 0.5}
            commands: [{name: Answer}, {name: Overrun}]
        """)
    )

    done = gateway("call", f"stubborn/{command}", "{}", "--manifests", str(tmp_path))

    assert done.returncode == code, done.stderr
    assert not running(int((tmp_path / "worker.pid").read_text()))


def test_list_shows_every_command_and_every_failed_manifest(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    greeter = scaffold(tmp_path / "greeter", "python", "worker")
    others = tmp_path / "others"
    others.mkdir()
    (others / "bad.yaml").write_text("manifest_version: 1\nconnector: bad\ncommands:\n  - {name: A, timeout: soon}\n")
    (others / "vault.yaml").write_text(
        textwrap.dedent("""\
            manifest_version: 1
            connector: vault
            defaults: {run: ["{python}", x.py], timeout: 5}
            commands:
              - name: Ping
                timeout: 50
              - name: Open
                description: Opens the vault.
                parameters:
                  - {id: token, type: str, required: true, secret: true}
                  - {id: tries, type: int, default: 3}
                  - {id: extra, type: any}
        """)
    )
    capsys.readouterr()
    ping_warning = (
        "commands[0] (Ping).timeout: 50 s is at or above Arena's own limit of 45 s; Arena may give up and retry "
        "while the first run goes on. Keep synchronous commands well under 45 s."
    )

    assert main(["list", "--manifests", str(greeter), "--manifests", str(others)]) == 1

    assert capsys.readouterr().out == textwrap.dedent(f"""\
        greeter/Hello: Greets someone by name.
          worker mode, timeout 10 s, from {greeter / "manifest.yaml"}
          name      str  required         Who to greet.
          greeting  str  default "Hello"  The word to greet with.

        vault/Open: Opens the vault.
          spawn mode, timeout 5 s, from {others / "vault.yaml"}
          token  str  required, secret
          tries  int  default 3
          extra  any  optional

        vault/Ping
          spawn mode, timeout 50 s, from {others / "vault.yaml"}
          (no parameters)

        warning {others / "vault.yaml"}: {ping_warning}

        error   {others / "bad.yaml"}:
          - commands[0].timeout: 'soon' is not of type 'number'
          - commands[0] (A).run: missing; set it on the command or under defaults

        3 manifests, 3 commands, 1 invalid.
    """)

    assert main(["list", "--json", "--manifests", str(greeter), "--manifests", str(others)]) == 1

    assert json.loads(capsys.readouterr().out) == {
        "commands": [
            {
                "id": "greeter/Hello",
                "description": "Greets someone by name.",
                "mode": "worker",
                "timeout": 10.0,
                "manifest": str(greeter / "manifest.yaml"),
                "parameters": [
                    {"id": "name", "type": "str", "required": True, "description": "Who to greet."},
                    {
                        "id": "greeting",
                        "type": "str",
                        "required": False,
                        "description": "The word to greet with.",
                        "default": "Hello",
                    },
                ],
            },
            {
                "id": "vault/Open",
                "description": "Opens the vault.",
                "mode": "spawn",
                "timeout": 5.0,
                "manifest": str(others / "vault.yaml"),
                "parameters": [
                    {"id": "token", "type": "str", "required": True, "secret": True},
                    {"id": "tries", "type": "int", "required": False, "default": 3},
                    {"id": "extra", "type": "any", "required": False},
                ],
            },
            {
                "id": "vault/Ping",
                "mode": "spawn",
                "timeout": 50.0,
                "manifest": str(others / "vault.yaml"),
                "parameters": [],
            },
        ],
        "warnings": [{"manifest": str(others / "vault.yaml"), "warning": ping_warning}],
        "failures": [
            {
                "manifest": str(others / "bad.yaml"),
                "problems": [
                    "commands[0].timeout: 'soon' is not of type 'number'",
                    "commands[0] (A).run: missing; set it on the command or under defaults",
                ],
            }
        ],
    }


def test_list_exits_0_when_every_manifest_loaded(greeter: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["list", "--manifests", str(greeter)]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == "1 manifest, 1 command, 0 invalid."


def test_list_shows_the_bundled_manifests_by_default(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CONNECTOR_GATEWAY_MANIFESTS", raising=False)

    assert main(["list", "--json"]) == 0
    ids = [command["id"] for command in json.loads(capsys.readouterr().out)["commands"]]
    assert "http/GetRequestV2" in ids


@pytest.mark.parametrize("subcommand", ["new", "call", "list"])
def test_each_author_tool_has_help(subcommand: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main([subcommand, "--help"])

    assert exited.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: connector-gateway {subcommand}")
    mentioned = {"new": ["--language", "--mode", "--dir"], "call": ["exit status", "--manifests"], "list": ["--json"]}
    for text in mentioned[subcommand]:
        assert text in out


def test_call_sends_the_api_key_the_gateway_asks_for(
    greeter: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CONNECTOR_PROXY_API_KEY", "s3cr3t")

    assert main(["call", "greeter/Hello", '{"name": "Ada"}', "--manifests", str(greeter)]) == 0
    assert json.loads(capsys.readouterr().out)["command_response"]["body"] == {"message": "Hello, Ada!"}
