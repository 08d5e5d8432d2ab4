"""Secrets by reference, redaction, another user and resource limits for connector processes."""

from __future__ import annotations

import json
import logging
import os
import pwd
from pathlib import Path
from typing import Any, ClassVar

import pytest
from starlette.testclient import TestClient

from conftest import Protocol, make_settings
from gateway import create_app
from gateway.manifest import ManifestError, load_manifest

FAKE = Path(__file__).parent / "connectors" / "fake.py"
DEBIAN_PYTHON = "/usr/bin/python3"  # readable by every user, unlike an interpreter under /root


def manifest(directory: Path, commands: str) -> Path:
    path = directory / "isolated.yaml"
    path.write_text(f"manifest_version: 1\nconnector: iso\ncommands:\n{commands}")
    return path


def serve(directory: Path, environ: dict[str, str] | None = None) -> TestClient:
    app = create_app(make_settings(manifest_dirs=(directory,)), environ=environ or {})
    assert app.state.registry.failures == (), app.state.registry.failures[0]
    return TestClient(app)


class TestSecrets:
    COMMANDS = f"""\
  - name: Emit
    run: ["{{python}}", "-I", "-S", "{FAKE}", "emit"]
    env: {{API_TOKEN: "Bearer ${{FAKE_TOKEN}}", PLAIN: "${{FAKE_PLAIN}}-suffix"}}
    parameters:
      - {{id: password, type: str, secret: true}}
      - {{id: vault, type: any, secret: true}}
      - {{id: visible, type: str}}
  - name: Env
    run: ["{{python}}", "-I", "-S", "{FAKE}", "env"]
    env: {{API_TOKEN: "Bearer ${{FAKE_TOKEN}}"}}
"""
    ENVIRON: ClassVar[dict[str, str]] = {
        "FAKE_TOKEN": "tok-0123456789",
        "FAKE_PLAIN": "plainvalue",
        "UNRELATED_SECRET": "nope",
    }

    @pytest.fixture
    def client(self, tmp_path: Path) -> TestClient:
        manifest(tmp_path, self.COMMANDS)
        return serve(tmp_path, self.ENVIRON)

    def test_references_reach_only_the_declaring_connector(self, client: TestClient) -> None:
        env = client.post("/v1/do/iso/Env", json={}).json()["command_response"]["body"]["env"]

        assert env["API_TOKEN"] == "Bearer tok-0123456789"
        assert "FAKE_TOKEN" not in env
        assert "UNRELATED_SECRET" not in env

    def test_secrets_are_redacted_wherever_people_read(
        self, client: TestClient, protocol: Protocol, caplog: pytest.LogCaptureFixture
    ) -> None:
        printed = {
            "command_response_version": 2,
            "command_response": {"body": {}, "http_status": 401},
            "error": {"error_code": "Denied", "message": "token tok-0123456789 refused for pa55word"},
            "spiff__logs": ["sent pa55word and k3y-in-vault"],
        }
        body = {
            "password": "pa55word",
            "vault": {"keys": ["k3y-in-vault"]},
            "visible": "shown",
            "stdout": json.dumps(printed),
            "stderr": "auth with pa55word / tok-0123456789 / k3y-in-vault / plainvalue / shown\n",
        }

        with caplog.at_level(logging.INFO, logger="gateway"):
            answer = client.post("/v1/do/iso/Emit", json=body).json()

        protocol.validate_answer(200, answer)
        assert answer["error"]["message"] == "token [redacted] refused for [redacted]"
        assert answer["spiff__logs"] == [
            "sent [redacted] and [redacted]",
            "auth with [redacted] / [redacted] / [redacted] / [redacted] / shown",
        ]
        logged = "\n".join(caplog.messages)
        for secret in ("pa55word", "tok-0123456789", "k3y-in-vault", "plainvalue"):
            assert secret not in logged
        assert "auth with [redacted]" in logged

    def test_failure_messages_are_redacted(self, client: TestClient) -> None:
        body = {"password": "pa55word", "stderr": "login failed for pa55word\n", "exit": 1}

        answer = client.post("/v1/do/iso/Emit", json=body).json()

        assert answer["error"]["message"] == (
            "The connector for 'iso/Emit' exited with status 1. Its last stderr lines: login failed for [redacted]"
        )


def load_problems(path: Path, environ: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ManifestError) as caught:
        load_manifest(path, default_timeout=30, environ=environ or {})
    return caught.value.problems


def test_an_unset_reference_is_a_load_error(tmp_path: Path) -> None:
    path = manifest(tmp_path, "  - {name: A, run: ['{python}'], env: {TOKEN: '${NOT_SET_ANYWHERE}'}}\n")

    assert load_problems(path) == [
        "commands[0] (A).env.TOKEN: ${NOT_SET_ANYWHERE} is not set in the gateway's environment"
    ]


def test_references_are_refused_on_argv(tmp_path: Path) -> None:
    path = manifest(tmp_path, "  - {name: A, run: ['{python}', '--token=${TOKEN}']}\n")

    assert load_problems(path, {"TOKEN": "x"}) == [
        "commands[0] (A).run[1]: '--token=${TOKEN}': references are not expanded in run, where any user of the "
        "machine could read them; pass the value through env instead"
    ]


def test_resolved_values_never_show_in_a_repr(tmp_path: Path) -> None:
    path = manifest(tmp_path, "  - {name: A, run: ['{python}'], env: {TOKEN: '${TOKEN}'}}\n")

    command = load_manifest(path, default_timeout=30, environ={"TOKEN": "s3cr3t-value"}).commands[0]

    assert "s3cr3t-value" not in repr(command)
    assert command.secret_values == ("s3cr3t-value",)


def test_an_unknown_user_is_a_load_error(tmp_path: Path) -> None:
    path = manifest(tmp_path, "  - {name: A, run: ['{python}'], user: no-such-user-here}\n")

    assert load_problems(path) == ["commands[0] (A).user: no user 'no-such-user-here' exists on this machine"]


def identity(client: TestClient, command: str) -> dict[str, Any]:
    answer = client.post(f"/v1/do/iso/{command}", json={}).json()
    assert answer["error"] is None, answer
    body: dict[str, Any] = answer["command_response"]["body"]
    return body


def test_connector_runs_as_another_user_when_the_gateway_is_root(tmp_path: Path) -> None:
    tmp_path.chmod(0o755)  # the working directory must be open to that user
    path = manifest(tmp_path, f"  - {{name: Who, run: [{DEBIAN_PYTHON}, -I, -S, '{FAKE}', identity], user: nobody}}\n")
    nobody = pwd.getpwnam("nobody")

    if os.geteuid() != 0:
        assert load_problems(path) == [
            "commands[0] (Who).user: running as 'nobody' needs the gateway to run as root; "
            "drop the setting or start the gateway as root"
        ]
        return
    with serve(tmp_path) as client:
        seen = identity(client, "Who")

    assert (seen["uid"], seen["gid"]) == (nobody.pw_uid, nobody.pw_gid)
    assert seen["groups"] == []


def test_resource_limits_are_applied(tmp_path: Path) -> None:
    commands = f"""\
  - name: Limited
    run: ["{{python}}", -I, -S, "{FAKE}", identity]
    limits: {{open_files: 64, cpu_seconds: 5, memory_mb: 2048}}
  - name: Burn
    run: ["{{python}}", -I, -S, "{FAKE}", burn]
    timeout: 10
    limits: {{cpu_seconds: 1}}
"""
    manifest(tmp_path, commands)

    with serve(tmp_path) as client:
        limits = identity(client, "Limited")["limits"]
        burnt = client.post("/v1/do/iso/Burn", json={}).json()

    assert limits == {
        "RLIMIT_NOFILE": [64, 64],
        "RLIMIT_CPU": [5, 6],
        "RLIMIT_AS": [2048 * 1024 * 1024, 2048 * 1024 * 1024],
    }
    assert burnt["error"]["error_code"] == "connector_crashed"
    assert (
        burnt["error"]["message"] == "The connector for 'iso/Burn' was killed by SIGXCPU. It wrote nothing on stderr."
    )
