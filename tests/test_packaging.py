"""A plain, non-editable install carries the bundled manifests and connectors and serves them."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from serving import free_port, wait_until_live

REPOSITORY = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The package built as a wheel and installed into a directory of its own, away from this checkout."""
    work = tmp_path_factory.mktemp("install")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation", "-w", work, REPOSITORY],
        check=True,
        capture_output=True,
        timeout=300,
    )
    [wheel] = work.glob("connector_gateway-*.whl")
    site = work / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", site, wheel],
        check=True,
        capture_output=True,
        timeout=300,
    )
    return site


def run_installed(site: Path, *args: str) -> subprocess.Popen[str]:
    # Run from the install directory so that this checkout's gateway/ cannot be imported by accident.
    env = {**os.environ, "PYTHONPATH": str(site)}
    env.pop("CONNECTOR_GATEWAY_MANIFESTS", None)
    return subprocess.Popen(
        [sys.executable, "-m", "gateway", *args],
        cwd=site,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def test_installed_package_validates_its_bundled_manifests(installed: Path) -> None:
    process = run_installed(installed, "validate")
    output, _ = process.communicate(timeout=60)

    assert process.returncode == 0, output
    assert f"ok      {installed / 'gateway' / 'bundled' / 'manifests' / 'http.yaml'}: 6 commands" in output


@pytest.fixture
def upstream() -> Iterator[str]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = json.dumps({"path": self.path}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_installed_package_serves_the_bundled_http_connector(installed: Path, upstream: str) -> None:
    port = free_port()
    process = run_installed(installed, "serve", "--port", str(port))
    try:
        wait_until_live(port, process)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/commands", timeout=10) as response:
            ids = [entry["id"] for entry in json.load(response)]
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/v1/do/http/GetRequestV2",
            data=json.dumps({"url": f"{upstream}/ping"}).encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            answer = json.load(response)
    finally:
        process.terminate()
        process.communicate(timeout=10)

    assert {"http/GetRequestV2", "http/PostRequestV2", "http/DeleteRequestV2"} <= set(ids)
    assert answer["command_response"]["http_status"] == 200
    assert answer["command_response"]["body"] == {"path": "/ping"}


def test_installed_package_carries_every_template_and_scaffolds_a_connector_that_runs(
    installed: Path, tmp_path: Path
) -> None:
    templates = REPOSITORY / "gateway" / "templates"
    shipped = installed / "gateway" / "templates"
    assert sorted(path.relative_to(shipped) for path in shipped.rglob("*.tmpl")) == sorted(
        path.relative_to(templates) for path in templates.rglob("*.tmpl")
    )

    directory = tmp_path / "greeter"
    outputs = []
    for args in (
        ("new", "greeter", "--mode", "worker", "--dir", str(directory)),
        ("validate", str(directory)),
        ("call", "greeter/Hello", '{"name": "Ada"}', "--manifests", str(directory)),
    ):
        process = run_installed(installed, *args)
        output, _ = process.communicate(timeout=60)
        assert process.returncode == 0, output
        outputs.append(output)

    assert '"message": "Hello, Ada!"' in outputs[-1]


def test_installed_package_brings_its_format_checkers_with_it(installed: Path) -> None:
    # Without them a parameter's `format: date-time` or `format: uri` would be checked or refused
    # depending on what else is installed.
    [metadata] = installed.glob("connector_gateway-*.dist-info/METADATA")
    requirements = [
        line.split(":", 1)[1].strip() for line in metadata.read_text().splitlines() if line.startswith("Requires-Dist:")
    ]

    names = {re.split(r"[<>=\[ ;]", requirement, maxsplit=1)[0].lower() for requirement in requirements}
    assert {"jsonschema", "fqdn", "idna", "jsonpointer", "rfc3339-validator", "rfc3986-validator"} <= names
    assert "uri-template" in names
