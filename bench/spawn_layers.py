"""Where the time of one spawned request goes: the same executable, one request at a time, layer by layer.

Each layer adds one part of the gateway's path to the one before it, so the difference between
two lines is what that part costs per request:

    subprocess      Python's subprocess.run, the floor of bench/run.py
    asyncio         the event loop's subprocess path (pidfd child watcher, as the gateway sets it up)
    runner          the gateway's Runner: a session of its own, the clean environment, concurrent
                    pipes, the stdout limit, stderr lines, the deadline timer
    app             the gateway's ASGI app called in-process: routing, the API-key check, reading and
                    checking the body, admission, the envelope, the access line and metrics
    http            a real `connector-gateway serve` on 127.0.0.1, one keep-alive connection

    python bench/spawn_layers.py [--runs 400] [--executable /bin/cat]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import http.client
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

REPOSITORY = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPOSITORY))

from gateway.app import create_app  # noqa: E402
from gateway.call import post  # noqa: E402
from gateway.logs import configure_logging  # noqa: E402
from gateway.manifest import Command  # noqa: E402
from gateway.redact import Redactor  # noqa: E402
from gateway.runner import Limits, Runner, base_environment  # noqa: E402
from gateway.settings import Settings  # noqa: E402

BODY = json.dumps({"message": "hello", "count": 1}).encode()
PATH = "/v1/do/layers/Echo"
STARTUP_TIMEOUT = 30.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=400, help="requests per layer, after 40 unmeasured (default 400)")
    parser.add_argument("--executable", default="/bin/cat", help="what to spawn; it must echo stdin (default /bin/cat)")
    args = parser.parse_args()
    argv = (args.executable,)

    with tempfile.TemporaryDirectory(prefix="gateway-layers-") as tmp:
        manifests = Path(tmp)
        (manifests / "layers.yaml").write_text(_manifest(argv))
        layers: list[tuple[str, Callable[[int], list[float]]]] = [
            ("subprocess", lambda runs: _timed_sync(lambda: _subprocess_once(argv), runs)),
            ("asyncio", lambda runs: _in_loop(lambda: _asyncio_once(argv), runs)),
            ("runner", lambda runs: _runner_layer(argv, manifests, runs)),
            ("app", lambda runs: _app_layer(manifests, runs)),
            ("http", lambda runs: _http_layer(manifests, runs)),
        ]
        print(f"{args.executable}, one request at a time, {args.runs} runs per layer, {os.cpu_count()} cores")
        print(f"{'layer':<12} {'median us':>10} {'mean us':>9} {'p99 us':>8} {'+ median us':>12}")
        previous: float | None = None
        for name, layer in layers:
            layer(40)  # warm-up: caches, imports, the first spawns
            durations = sorted(layer(args.runs))
            median = statistics.median(durations) * 1e6
            added = "-" if previous is None else f"{median - previous:+.0f}"
            p99 = durations[min(len(durations) - 1, int(len(durations) * 0.99))] * 1e6
            print(f"{name:<12} {median:>10.0f} {statistics.fmean(durations) * 1e6:>9.0f} {p99:>8.0f} {added:>12}")
            previous = median


def _manifest(argv: tuple[str, ...]) -> str:
    command = {"name": "Echo", "run": list(argv), "spiff_keys": "none"}
    return json.dumps({"manifest_version": 1, "connector": "layers", "commands": [command]})


def _command(argv: tuple[str, ...], manifests: Path) -> Command:
    return Command(connector="layers", name="Echo", argv=argv, source=manifests / "layers.yaml", timeout=10.0)


# --- the layers ----------------------------------------------------------------------------------


def _subprocess_once(argv: tuple[str, ...]) -> None:
    done = subprocess.run(argv, input=BODY, capture_output=True, check=True, env=_clean_env())
    assert done.stdout == BODY


async def _asyncio_once(argv: tuple[str, ...]) -> None:
    process = await asyncio.create_subprocess_exec(
        *argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=_clean_env()
    )
    stdout, _ = await process.communicate(BODY)
    assert stdout == BODY, stdout
    assert process.returncode == 0, process.returncode


def _runner_layer(argv: tuple[str, ...], manifests: Path, runs: int) -> list[float]:
    runner = Runner(Limits(), environ={})
    command = _command(argv, manifests)

    async def once() -> None:
        finished = await runner.run(command, BODY, "layers", Redactor())
        assert finished.returncode == 0, finished

    return _in_loop(once, runs)


def _app_layer(manifests: Path, runs: int) -> list[float]:
    settings = Settings(manifest_dirs=(manifests,), reload=False, log_level="info")
    # The access line is written, as when serving; the file stays open until the process ends.
    configure_logging(settings.log_level, stream=open(manifests / "app.log", "a"))  # noqa: SIM115
    return asyncio.run(_app_runs(create_app(settings), runs))


async def _app_runs(app: Any, runs: int) -> list[float]:
    async with app.router.lifespan_context(app):
        return [await _timed(lambda: _asgi_once(app)) for _ in range(runs)]


async def _asgi_once(app: Any) -> None:
    """One request handed to the app as the server would hand it over, as `connector-gateway call` does."""
    status, raw = await post(app, "layers/Echo", BODY)
    assert status == 200, raw
    assert json.loads(raw)["command_response"]["body"] == json.loads(BODY), raw


def _http_layer(manifests: Path, runs: int) -> list[float]:
    port = _free_port()
    env = {**_clean_env(), "CONNECTOR_GATEWAY_RELOAD": "0"}
    argv = [sys.executable, "-m", "gateway", "serve", "--port", str(port), "--manifests", str(manifests)]
    with open(manifests / "serve.log", "ab") as log:
        server = subprocess.Popen(argv, stdout=log, stderr=log, env=env, start_new_session=True)
    try:
        connection = _connect(port, server)
        return [_timed_sync(lambda: _http_once(connection), 1)[0] for _ in range(runs)]
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.pid, signal.SIGTERM)
        server.wait(10)


def _connect(port: int, server: subprocess.Popen[bytes]) -> http.client.HTTPConnection:
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while time.monotonic() < deadline and server.poll() is None:
        with contextlib.suppress(OSError):
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            connection.request("GET", "/liveness")
            connection.getresponse().read()
            return connection
        time.sleep(0.1)
    raise SystemExit(f"the gateway did not start on 127.0.0.1:{port}")


def _http_once(connection: http.client.HTTPConnection) -> None:
    connection.request("POST", PATH, body=BODY, headers={"Content-Type": "application/json"})
    response = connection.getresponse()
    answer = json.loads(response.read())
    assert response.status == 200, answer
    assert answer["command_response"]["body"] == json.loads(BODY), answer


# --- timing --------------------------------------------------------------------------------------


def _timed_sync(once: Callable[[], None], runs: int) -> list[float]:
    durations = []
    for _ in range(runs):
        started = time.perf_counter()
        once()
        durations.append(time.perf_counter() - started)
    return durations


async def _timed(once: Callable[[], Awaitable[None]]) -> float:
    started = time.perf_counter()
    await once()
    return time.perf_counter() - started


def _in_loop(once: Callable[[], Awaitable[None]], runs: int) -> list[float]:
    async def all_runs() -> list[float]:
        with _pidfd_watcher():
            return [await _timed(once) for _ in range(runs)]

    return asyncio.run(all_runs())


@contextlib.contextmanager
def _pidfd_watcher() -> Any:
    """The child watcher the gateway's lifespan installs on Python 3.11; 3.12 uses pidfds by itself."""
    if sys.version_info >= (3, 12) or not hasattr(os, "pidfd_open"):
        yield
        return
    watcher = asyncio.PidfdChildWatcher()
    watcher.attach_loop(asyncio.get_running_loop())
    previous = asyncio.get_child_watcher()
    asyncio.set_child_watcher(watcher)
    try:
        yield
    finally:
        asyncio.set_child_watcher(previous)


def _clean_env() -> dict[str, str]:
    """What the gateway gives a connector, so every layer spawns the same way."""
    probe = Command(connector="layers", name="Echo", argv=("/bin/true",), source=REPOSITORY, timeout=1.0)
    return base_environment(probe, os.environ)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


if __name__ == "__main__":
    main()
