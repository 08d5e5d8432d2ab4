"""The connector-gateway command: validate, serve on a real socket, and help."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from conftest import FAKE_MANIFESTS, Protocol
from gateway.app import create_app
from gateway.cli import main
from gateway.runner import Limits
from gateway.settings import Settings, SettingsError, bundled_manifests, settings_environment
from serving import free_port, wait_until_live

REPOSITORY = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def keep_sigterm_handler() -> Iterator[None]:
    """`serve` installs its SIGTERM handler in the process that calls it: here, pytest's."""
    handler = signal.getsignal(signal.SIGTERM)
    yield
    signal.signal(signal.SIGTERM, handler)


def test_validate_reports_every_problem_and_exits_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CONNECTOR_GATEWAY_MAX_WAIT", raising=False)
    (tmp_path / "bad.yaml").write_text(
        """\
manifest_version: 1
connector: x
defaults:
  run: ['{python}']
commands:
  - {name: A, timeout: soon}
  - {name: B, run: [./nope.sh], timeout: 50}
  - name: C
    env: {TOKEN: "${X_TOKEN_NOT_SET}"}
    parameters:
      - {id: n, type: int}
      - {id: n, type: str}
  - {name: C}
"""
    )
    (tmp_path / "slow.yaml").write_text(
        "manifest_version: 1\nconnector: s\ncommands:\n  - {name: B, run: ['{python}'], timeout: 50}\n"
    )

    status = main(["validate", str(tmp_path)])

    bad = tmp_path / "bad.yaml"
    assert status == 1
    assert capsys.readouterr().out.splitlines() == [
        f"ok      {tmp_path / 'slow.yaml'}: 1 command",
        f"warning {tmp_path / 'slow.yaml'}: commands[0] (B).timeout: 50 s is at or above Arena's own limit of 45 s; "
        "Arena may give up and retry while the first run goes on. Keep synchronous commands well under 45 s.",
        f"error   {bad}:",
        "  - commands[0].timeout: 'soon' is not of type 'number'",
        "  - commands[3].name: 'C' is already used by commands[2]",
        f"  - commands[1] (B).run[0]: executable './nope.sh' does not exist (looked for {tmp_path / 'nope.sh'})",
        "  - commands[2] (C).env.TOKEN: ${X_TOKEN_NOT_SET} is not set in the gateway's environment",
        "  - commands[2] (C).parameters[1] (n).id: parameter 'n' is declared twice",
        f"warning {bad}: commands[1] (B).timeout: 50 s is at or above Arena's own limit of 45 s; "
        "Arena may give up and retry while the first run goes on. Keep synchronous commands well under 45 s.",
        "2 manifests, 1 command, 1 invalid.",
    ]


def test_validate_warns_when_the_wait_for_a_slot_and_the_timeout_reach_arenas_limit(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CONNECTOR_GATEWAY_MAX_WAIT", "15")
    (tmp_path / "m.yaml").write_text(
        """\
manifest_version: 1
connector: m
defaults: {run: ['{python}']}
commands:
  - {name: Quick, timeout: 29}
  - {name: Slow, timeout: 30}
  - {name: OwnSlots, timeout: 15, concurrency: 2}
"""
    )

    assert main(["validate", str(tmp_path)]) == 0

    assert capsys.readouterr().out.splitlines()[1:] == [
        f"warning {tmp_path / 'm.yaml'}: commands[1] (Slow).timeout: 30 s plus up to 15 s of waiting for a run slot "
        "(CONNECTOR_GATEWAY_MAX_WAIT) reaches Arena's own limit of 45 s; Arena may give up on a request that "
        "waited and retry while it runs. Keep the two together under 45 s.",
        f"warning {tmp_path / 'm.yaml'}: commands[2] (OwnSlots).timeout: 15 s plus up to 30 s of waiting for a run "
        "slot (twice CONNECTOR_GATEWAY_MAX_WAIT) reaches Arena's own limit of 45 s; Arena may give up on a request "
        "that waited and retry while it runs. Keep the two together under 45 s.",
        "1 manifest, 3 commands, 0 invalid.",
    ]


def test_validate_passes_good_manifests(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", str(FAKE_MANIFESTS)]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == "1 manifest, 17 commands, 0 invalid."


def test_validate_checks_the_bundled_manifests_by_default(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CONNECTOR_GATEWAY_MANIFESTS", raising=False)

    assert main(["validate"]) == 0
    assert "http.yaml: 6 commands" in capsys.readouterr().out


def test_validate_of_a_missing_directory_is_a_usage_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", str(tmp_path / "nowhere")]) == 2
    assert "does not exist or is not a directory" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [["--help"], ["serve", "--help"], ["validate", "--help"]])
def test_help_is_useful(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(argv)

    assert exited.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: connector-gateway")
    if argv[0] == "serve":
        for mentioned in ("--manifests DIR", "CONNECTOR_GATEWAY_PORT", "CONNECTOR_PROXY_API_KEY", "7004"):
            assert mentioned in out


def gateway_command(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "gateway", *args],
        env={**os.environ, **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def test_an_empty_api_key_is_refused_at_start_up() -> None:
    process = gateway_command("serve", "--port", str(free_port()), env={"CONNECTOR_PROXY_API_KEY": ""})
    output, _ = process.communicate(timeout=30)

    assert process.returncode == 2
    assert output.strip() == (
        "connector-gateway: CONNECTOR_PROXY_API_KEY is set but empty. Set it to the key Arena sends, "
        "or unset it to serve without a key."
    )


@pytest.fixture
def served() -> Iterator[tuple[int, subprocess.Popen[str]]]:
    port = free_port()
    process = gateway_command("serve", "--port", str(port), "--manifests", str(FAKE_MANIFESTS))
    try:
        wait_until_live(port, process)
        yield port, process
    finally:
        process.terminate()
        process.wait(timeout=10)


def test_serve_answers_on_a_real_socket(served: tuple[int, subprocess.Popen[str]]) -> None:
    port, process = served
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/v1/do/fake/Echo",
        data=json.dumps({"text": "over the wire"}).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        answer = json.load(response)

    assert answer["command_response"]["body"] == {"text": "over the wire", "count": 1}
    process.terminate()
    log, _ = process.communicate(timeout=10)
    assert "Serving 17 commands and 1 auth handlers" in log
    assert "POST /v1/do/fake/Echo 200 command=fake/Echo error=-" in log


@pytest.mark.parametrize(
    ("host", "key", "exposed"),
    [
        ("127.0.0.1", None, False),
        ("127.0.0.2", None, False),
        ("::1", None, False),
        ("localhost", None, False),
        ("0.0.0.0", None, True),
        ("10.1.2.3", None, True),
        ("0.0.0.0", "key", False),
    ],
)
def test_exposure_is_judged_by_host_and_key(host: str, key: str | None, exposed: bool) -> None:
    assert Settings(host=host, api_key=key).exposed_without_key is exposed


def test_serving_beyond_loopback_without_a_key_warns(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # uvicorn.run is replaced so that nothing binds beyond loopback in a test.
    served: dict[str, object] = {}
    monkeypatch.setattr("uvicorn.run", lambda app, **options: served.update(options))
    monkeypatch.delenv("CONNECTOR_PROXY_API_KEY", raising=False)

    with caplog.at_level(logging.WARNING, logger="gateway"):
        assert main(["serve", "--host", "0.0.0.0", "--port", "7999", "--manifests", str(FAKE_MANIFESTS)]) == 0

    assert served["host"] == "0.0.0.0"
    assert served["port"] == 7999
    assert any(
        "Listening on 0.0.0.0 without CONNECTOR_PROXY_API_KEY: anyone who can reach this address" in message
        for message in caplog.messages
    )


def test_with_bundled_serves_them_after_the_given_directories(monkeypatch: pytest.MonkeyPatch) -> None:
    served: dict[str, object] = {}
    monkeypatch.setattr("uvicorn.run", lambda app, **options: served.update(app=app))

    assert main(["serve", "--manifests", str(FAKE_MANIFESTS), "--with-bundled"]) == 0

    settings = served["app"].state.settings  # type: ignore[attr-defined]
    assert settings.manifest_dirs == (FAKE_MANIFESTS, bundled_manifests())
    registry = served["app"].state.registry  # type: ignore[attr-defined]
    assert {"fake/Echo", "http/GetRequestV2"} <= set(registry.commands)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["call", "fake/Echo", "--timeout", "-1"],
            "argument --timeout: must be more than 0 and at most 3600 seconds, got -1",
        ),
        (
            ["call", "fake/Echo", "--timeout", "0"],
            "argument --timeout: must be more than 0 and at most 3600 seconds, got 0",
        ),
        (
            ["call", "fake/Echo", "--timeout", "nan"],
            "argument --timeout: must be more than 0 and at most 3600 seconds, got nan",
        ),
        (["serve", "--timeout", "inf"], "argument --timeout: must be more than 0 and at most 3600 seconds, got inf"),
        (["serve", "--timeout", "soon"], "argument --timeout: must be a number of seconds, got 'soon'"),
        (["serve", "--port", "70000"], "argument --port: must be between 1 and 65535, got 70000"),
        (["serve", "--port", "0"], "argument --port: must be between 1 and 65535, got 0"),
        (["serve", "--workers", "0"], "argument --workers: must be at least 1, got 0"),
        (["serve", "--workers", "two"], "argument --workers: must be a whole number, got 'two'"),
    ],
)
def test_flags_are_checked_as_their_environment_variables_are(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(argv)

    assert exited.value.code == 2
    assert (
        capsys.readouterr().err
        == f"connector-gateway {argv[0]}: error: {message} (see connector-gateway {argv[0]} --help)\n"
    )


def test_the_environment_variable_says_the_same_as_the_flag() -> None:
    process = gateway_command("serve", env={"CONNECTOR_GATEWAY_TIMEOUT": "nan"})
    output, _ = process.communicate(timeout=30)

    assert process.returncode == 2
    assert (
        output
        == "connector-gateway: CONNECTOR_GATEWAY_TIMEOUT must be more than 0 and at most 3600 seconds, got nan.\n"
    )


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("CONNECTOR_GATEWAY_MAX_STDERR_LINES", "-1", "must be at least 0, got -1"),
        ("CONNECTOR_GATEWAY_MAX_STDERR_LINES", "many", "must be a whole number, got 'many'"),
        ("CONNECTOR_GATEWAY_MAX_STDERR_LINE_CHARS", "0", "must be at least 1, got 0"),
    ],
)
def test_stderr_limits_are_checked(variable: str, value: str, message: str) -> None:
    with pytest.raises(SettingsError) as refused:
        Settings.from_env({variable: value})

    assert str(refused.value) == f"{variable} {message}."


def test_stderr_limits_are_set_from_the_environment(protocol: Protocol) -> None:
    settings = Settings.from_env(
        {
            "CONNECTOR_GATEWAY_MANIFESTS": str(FAKE_MANIFESTS),
            "CONNECTOR_GATEWAY_MAX_STDERR_LINES": "2",
            "CONNECTOR_GATEWAY_MAX_STDERR_LINE_CHARS": "5",
        }
    )
    payload = {"stdout": "{}", "stderr": "one\ntwo two two\nthree\nfour\n"}

    with TestClient(create_app(settings, environ={})) as client:
        response = client.post("/v1/do/fake/Emit", json=payload)

    protocol.validate_answer(response.status_code, response.json())
    assert response.json()["spiff__logs"] == ["one", "two t [cut]", "(2 more stderr lines not shown)"]


def test_stderr_limits_reach_every_process_of_serve_workers() -> None:
    settings = Settings.from_env(
        {"CONNECTOR_GATEWAY_MAX_STDERR_LINES": "0", "CONNECTOR_GATEWAY_MAX_STDERR_LINE_CHARS": "300"}
    )

    rebuilt = Settings.from_env(settings_environment(settings))

    assert (rebuilt.limits.max_stderr_lines, rebuilt.limits.max_stderr_line_chars) == (0, 300)
    assert Settings.from_env({}).limits == Limits(max_stderr_lines=100, max_stderr_line_chars=2000)


def test_serve_runs_on_asyncios_own_loop_even_where_uvloop_is_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    # uvicorn's "auto" picks uvloop whenever it can be imported; the gateway asks for asyncio by name.
    served: dict[str, object] = {}
    monkeypatch.setattr("uvicorn.run", lambda app, **options: served.update(options))

    assert main(["serve", "--manifests", str(FAKE_MANIFESTS)]) == 0

    assert served["loop"] == "asyncio"
