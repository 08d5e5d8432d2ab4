#!/usr/bin/env python3
"""Throughput, latency and memory of the gateway, next to its HTTP ceiling, its spawn floor and a peer.

Every server is started here on 127.0.0.1, loaded with wrk, its RSS sampled from /proc, and
stopped; then one table is printed. Standard library only: the servers run under the gateway's
interpreter (--python, by default this one). bench/README.md says what each row and ratio means.

    python bench/run.py                                # every row, 10 s each
    python bench/run.py --duration 5 --only spawn-python worker-python
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
CONNECTORS = BENCH / "connectors"
WRK_SCRIPT = BENCH / "wrk_report.lua"

PAYLOAD = {"message": "hello", "count": 1}
BODY = json.dumps(PAYLOAD, separators=(",", ":"))
FILLER_COMMANDS = 1000
STARTUP_TIMEOUT = 30.0
STOP_TIMEOUT = 5.0
SMOKE_TIMEOUT = 15.0
WRK_GRACE = 15  # seconds wrk may take beyond its duration before it is killed
FLOOR_PARALLEL = 2
ONE_AT_A_TIME_WORKERS = 4  # worker processes of the *-1 rows, each taking one request at a time
FLOOR_RUN_TIMEOUT = 10.0
INSTALL_HINT = "apt-get install -y wrk webhook"


@dataclass(frozen=True)
class Row:
    """One line of the table: what is loaded, and what its ratio compares it with."""

    name: str
    server: str  # gateway, starlette, starlette-joined, webhook, or floor (subprocess without HTTP)
    path: str = ""
    method: str = "GET"
    connector: str | None = None  # python, node or cat: the executable behind the request
    reference: str | None = None
    compare: str = "rps"  # rps: requests/s over the reference's; p99: p99 over the reference's
    worker: bool = False
    parallel: int = FLOOR_PARALLEL  # floors only: spawns at a time


# Each row runs next to the row it is compared with, so that both see the same machine.
ROWS = (
    Row("ceiling-get", "starlette", "/v1/liveness"),
    Row("liveness", "gateway", "/v1/liveness", reference="ceiling-get"),
    Row("commands", "gateway", "/v1/commands", reference="liveness", compare="p99"),
    Row("ceiling-echo", "starlette", "/echo", "POST"),
    Row("worker-python", "gateway", "/v1/do/bench-worker-python/Echo", "POST", "python", "ceiling-echo", worker=True),
    Row("worker-node", "gateway", "/v1/do/bench-worker-node/Echo", "POST", "node", "ceiling-echo", worker=True),
    Row(
        "worker-python-1",
        "gateway",
        "/v1/do/bench-worker-python/EchoOneAtATime",
        "POST",
        "python",
        "ceiling-echo",
        worker=True,
    ),
    Row(
        "worker-node-1",
        "gateway",
        "/v1/do/bench-worker-node/EchoOneAtATime",
        "POST",
        "node",
        "ceiling-echo",
        worker=True,
    ),
    Row("ceiling-echo-joined", "starlette-joined", "/echo", "POST", reference="ceiling-echo"),
    Row("floor-python", "floor", connector="python"),
    Row("spawn-python", "gateway", "/v1/do/bench-python/Echo", "POST", "python", "floor-python"),
    Row("floor-python-16", "floor", connector="python", reference="floor-python", parallel=16),
    Row("spawn-python-2", "gateway", "/v1/do/bench-python/EchoTwoAtATime", "POST", "python", "floor-python"),
    Row("webhook-python", "webhook", "/hooks/python", "POST", "python", "floor-python"),
    Row("floor-node", "floor", connector="node"),
    Row("spawn-node", "gateway", "/v1/do/bench-node/Echo", "POST", "node", "floor-node"),
    Row("spawn-node-2", "gateway", "/v1/do/bench-node/EchoTwoAtATime", "POST", "node", "floor-node"),
    Row("webhook-node", "webhook", "/hooks/node", "POST", "node", "floor-node"),
    Row("floor-cat", "floor", connector="cat"),
    Row("spawn-cat", "gateway", "/v1/do/bench-cat/Echo", "POST", "cat", "floor-cat"),
    Row("webhook-cat", "webhook", "/hooks/cat", "POST", "cat", "floor-cat"),
)
ROW_NAMES = [row.name for row in ROWS]


@dataclass
class Result:
    row: Row
    rps: float | None = None
    p50_ms: float | None = None
    p99_ms: float | None = None
    requests: int = 0
    errors: int = 0
    rss_start_mb: float | None = None
    rss_peak_mb: float | None = None
    rss_end_mb: float | None = None
    cpu_percent: float | None = None
    other_cpu_percent: float | None = None
    unavailable: str | None = None
    ratio: float | None = None
    # Floors only: every run's duration, the seconds they took, and runs/s of each half.
    runs: list[float] = field(default_factory=list)
    elapsed: float = 0.0
    halves: list[float] = field(default_factory=list)


@dataclass
class Setup:
    """What every row needs: options, tools found, fixtures written, processes to stop at the end."""

    args: argparse.Namespace
    tmp: Path
    tools: dict[str, str | None]
    worker_mode: bool
    spawned: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def python(self) -> str:
        return str(self.args.python)

    def argv(self, connector: str, worker: bool = False) -> list[str]:
        if connector == "cat":
            return ["/bin/cat"]
        script = CONNECTORS / f"{'worker' if worker else 'echo'}.{'py' if connector == 'python' else 'js'}"
        if connector == "python":
            return [self.python, "-I", "-S", str(script)]
        return [str(self.tools["node"]), str(script)]


class Unavailable(Exception):
    """A row that cannot run here, and why."""


# --- entry point ---------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    rows = _selected_rows(args.only)
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, _interrupt)

    with tempfile.TemporaryDirectory(prefix="gateway-bench-") as tmp:
        setup = Setup(args, Path(tmp), _find_tools(), _has_worker_mode(args.python))
        try:
            _print_facts(setup, rows)
            write_fixtures(setup)
            results = {}
            for row in rows:
                results[row.name] = run_row(setup, row)
                finish_floors(setup, rows, results)
        except KeyboardInterrupt:
            print("\ninterrupted; stopping every process started", file=sys.stderr)
            return 130
        finally:
            signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut the clean-up short
            for process in setup.spawned:
                stop(process)

    _add_ratios(results)
    print()
    print_table(results)
    print()
    print_targets(results)
    print(f"load average at the end: {' '.join(f'{value:.2f}' for value in os.getloadavg())}")
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Benchmark the gateway on loopback and print one table.",
        epilog=f"Needs wrk (and webhook for the webhook rows): {INSTALL_HINT}",
    )
    parser.add_argument("--duration", type=int, default=10, help="seconds of measured load per row (default 10)")
    parser.add_argument("--warmup", type=int, default=2, help="seconds of unmeasured load before each row (default 2)")
    parser.add_argument("--connections", type=int, default=16, help="concurrent connections (default 16)")
    parser.add_argument("--threads", type=int, default=1, help="wrk threads (default 1: leaves the cores to servers)")
    parser.add_argument("--worker-size", type=int, default=1, help="processes per worker pool (default 1)")
    parser.add_argument(
        "--worker-concurrency", type=int, default=16, help="requests in flight per worker process (default 16)"
    )
    parser.add_argument(
        "--python",
        type=Path,
        default=Path(sys.executable),
        help="the interpreter with the gateway installed, which runs the servers (default: this one)",
    )
    parser.add_argument(
        "--only",
        nargs="+",
        metavar="ROW",
        choices=ROW_NAMES,
        help="run these rows (and the rows their ratios refer to): " + ", ".join(ROW_NAMES),
    )
    return parser


def _selected_rows(only: list[str] | None) -> list[Row]:
    if not only:
        return list(ROWS)
    wanted = set(only)
    by_name = {row.name: row for row in ROWS}
    for name in list(wanted):
        reference = by_name[name].reference
        while reference is not None:
            wanted.add(reference)
            reference = by_name[reference].reference
    return [row for row in ROWS if row.name in wanted]


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


# --- the machine and the tools -------------------------------------------------------------------


def _find_tools() -> dict[str, str | None]:
    return {name: shutil.which(name) for name in ("wrk", "node", "webhook")}


def _interpreter_facts(python: Path) -> dict[str, str]:
    probe = (
        "import importlib.util as u, json, platform, starlette, uvicorn\n"
        "print(json.dumps({'python': platform.python_version(), 'uvicorn': uvicorn.__version__,"
        " 'starlette': starlette.__version__,"
        " 'loop': 'uvloop' if u.find_spec('uvloop') else 'asyncio',"
        " 'http': 'httptools' if u.find_spec('httptools') else 'h11'}))"
    )
    done = subprocess.run([str(python), "-c", probe], capture_output=True, text=True, timeout=30, check=True)
    facts: dict[str, str] = json.loads(done.stdout)
    return facts


def _has_worker_mode(python: Path) -> bool:
    """Whether the gateway this interpreter imports accepts `mode: worker` in a manifest."""
    probe = "import gateway, pathlib; print(pathlib.Path(gateway.__file__).with_name('manifest.schema.json'))"
    done = subprocess.run([str(python), "-c", probe], capture_output=True, text=True, timeout=30, check=True)
    schema = Path(done.stdout.strip()).read_text()
    return '"workers"' in schema and '"worker"' in schema


def _tool_version(argv: list[str]) -> str:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=10)
    except OSError:
        return "not found"
    lines = (done.stdout or done.stderr).strip().splitlines()
    return lines[0] if lines else "?"


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    return platform.processor() or "?"


def _worst_case_seconds(args: argparse.Namespace, row: Row) -> float:
    load: int = args.warmup + args.duration
    if row.server == "floor":
        return load + 3 * FLOOR_RUN_TIMEOUT  # warm-up and two halves, each may end one run late
    return STARTUP_TIMEOUT + SMOKE_TIMEOUT + load + 2 * WRK_GRACE + 2 * STOP_TIMEOUT


def _print_facts(setup: Setup, rows: list[Row]) -> None:
    args, tools = setup.args, setup.tools
    facts = _interpreter_facts(args.python)
    load = " ".join(f"{value:.2f}" for value in os.getloadavg())
    bound = sum(_worst_case_seconds(args, row) for row in rows)
    print("connector-gateway benchmark, loopback only")
    print(f"  machine     {os.cpu_count()} cores, {_cpu_model()}, Linux {platform.release()}, load {load}")
    print(f"  python      {facts['python']} ({args.python})")
    print(
        f"  server      uvicorn {facts['uvicorn']} (loop {facts['loop']}, http {facts['http']}), "
        f"starlette {facts['starlette']}, one process"
    )
    print(f"  wrk         {_tool_version([tools['wrk'], '-v']) if tools['wrk'] else 'not found'}")
    print(f"  node        {_tool_version([tools['node'], '--version']) if tools['node'] else 'not found'}")
    print(f"  webhook     {_tool_version([tools['webhook'], '-version']) if tools['webhook'] else 'not found'}")
    print(
        f"  load        {args.duration} s per row after {args.warmup} s warm-up, {args.connections} connections, "
        f"{args.threads} wrk thread(s); floors: {FLOOR_PARALLEL} subprocesses at a time "
        "(floor-python-16: 16)"
    )
    print(
        f"  workers     size {args.worker_size}, concurrency {args.worker_concurrency}; "
        f"*-1 rows: size {ONE_AT_A_TIME_WORKERS}, concurrency 1"
    )
    typical = sum(args.warmup + args.duration + 2 for _ in rows)
    print(f"  time        {len(rows)} rows, about {typical} s, at most {bound:.0f} s", flush=True)
    if os.getloadavg()[0] > 0.5 * (os.cpu_count() or 1):
        print("  warning     the machine is busy with other work: expect lower, noisier numbers", flush=True)


# --- fixtures ------------------------------------------------------------------------------------


def write_fixtures(setup: Setup) -> None:
    """Manifests (1,000 filler commands, the echo connectors), and webhook's hooks, in the temp dir."""
    manifests = setup.tmp / "manifests"
    manifests.mkdir()
    for number in range(FILLER_COMMANDS // 100):
        _write_manifest(manifests / f"filler{number:02}.yaml", _filler_manifest(number))
    for connector in ("python", "node", "cat"):
        if connector == "node" and not setup.tools["node"]:
            continue
        _write_manifest(manifests / f"bench-{connector}.yaml", _echo_manifest(setup, connector, worker=False))
        if connector != "cat" and setup.worker_mode:
            _write_manifest(manifests / f"bench-worker-{connector}.yaml", _echo_manifest(setup, connector, worker=True))
    (setup.tmp / "hooks.json").write_text(json.dumps(_hooks(setup), indent=2))


def _write_manifest(path: Path, manifest: dict[str, Any]) -> None:
    path.write_text(json.dumps(manifest, indent=1))  # JSON is YAML


def _filler_manifest(number: int) -> dict[str, Any]:
    parameters = [
        {"id": "customer", "type": "str", "required": True, "description": "The customer number, e.g. C-1042."},
        {"id": "amount_cents", "type": "int", "default": 0, "description": "The amount in cents."},
        {"id": "lines", "type": "any", "description": "A list of {text, amount_cents} objects."},
    ]
    described = "Filler command {} of the benchmark."
    commands = [
        {"name": f"Command{index:03}", "description": described.format(index), "parameters": parameters}
        for index in range(100)
    ]
    return {
        "manifest_version": 1,
        "connector": f"filler{number:02}",
        "description": "Commands that are listed, never run.",
        "defaults": {"run": ["/bin/cat"], "spiff_keys": "none"},
        "commands": commands,
    }


def _echo_manifest(setup: Setup, connector: str, worker: bool) -> dict[str, Any]:
    argv = setup.argv(connector, worker)
    if argv[0] == setup.python:
        argv[0] = "{python}"
    command: dict[str, Any] = {"name": "Echo", "description": "Answers with what it was sent.", "run": argv}
    commands = [command]
    if worker:
        command["mode"] = "worker"
        command["workers"] = {"size": setup.args.worker_size, "concurrency": setup.args.worker_concurrency}
        # The default framing: each worker holds one request, so a pool of them shares the load.
        one = {"size": ONE_AT_A_TIME_WORKERS, "concurrency": 1}
        commands.append({**command, "name": "EchoOneAtATime", "workers": one})
    elif connector != "cat":
        # An interpreter's start-up is CPU: run as many at once as the floor does, the rest queue.
        queue = max(setup.args.connections, 1) * 2
        commands.append({**command, "name": "EchoTwoAtATime", "concurrency": FLOOR_PARALLEL, "queue": queue})
    name = f"bench-worker-{connector}" if worker else f"bench-{connector}"
    return {"manifest_version": 1, "connector": name, "defaults": {"spiff_keys": "none"}, "commands": commands}


def _hooks(setup: Setup) -> list[dict[str, Any]]:
    """webhook cannot write the body to a command's stdin: it writes it to a temp file, and sh redirects it."""
    hooks = []
    for connector in ("python", "node", "cat"):
        if connector == "node" and not setup.tools["node"]:
            continue
        feed = 'exec "$0" "$@" < "$BENCH_BODY"'
        arguments = ["-c", feed, *setup.argv(connector)]
        hooks.append(
            {
                "id": connector,
                "execute-command": "/bin/sh",
                "command-working-directory": str(setup.tmp),
                "pass-arguments-to-command": [{"source": "string", "name": value} for value in arguments],
                "pass-file-to-command": [{"source": "raw-request-body", "envname": "BENCH_BODY"}],
                "include-command-output-in-response": True,
                "response-headers": [{"name": "Content-Type", "value": "application/json"}],
                "http-methods": ["POST"],
            }
        )
    return hooks


# --- processes -----------------------------------------------------------------------------------


def start(setup: Setup, argv: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    """Start a process in a session of its own (so its children stop with it), logging to a file."""
    with log.open("ab") as sink:
        process = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=sink, stderr=sink, env=env, start_new_session=True
        )
    setup.spawned.append(process)
    return process


def stop(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM to the process's group, SIGKILL if it is still there after a few seconds."""
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(STOP_TIMEOUT)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)  # whatever is left of the group: connectors, workers
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(STOP_TIMEOUT)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def wait_ready(process: subprocess.Popen[bytes], url: str, log: Path) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise Unavailable(f"the server exited with status {process.returncode}: {_tail(log)}")
        with contextlib.suppress(OSError), urllib.request.urlopen(url, timeout=1):  # noqa: S310 (loopback, built here)
            return
        time.sleep(0.1)
    raise Unavailable(f"the server did not answer {url} within {STARTUP_TIMEOUT:g} s: {_tail(log)}")


def _tail(log: Path) -> str:
    lines = log.read_text(errors="replace").strip().splitlines() if log.exists() else []
    return " | ".join(lines[-3:]) or "(no output)"


def clean_env(**extra: str) -> dict[str, str]:
    """The environment the gateway gives a connector, which every server and floor run gets too.

    Nothing of this shell's environment gets through: NODE_EXTRA_CA_CERTS alone, for one, adds
    about 90 ms of CPU to every Node start, and the gateway's own settings would change what is measured.
    """
    return {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": os.environ.get("HOME", "/"), **extra}


def start_server(setup: Setup, row: Row) -> tuple[subprocess.Popen[bytes], str]:
    """Start the row's server on a free port; answer the process and its base URL once it is ready."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    log = setup.tmp / f"{row.name}.log"
    if row.server == "gateway":
        argv = [setup.python, "-m", "gateway", "serve", "--host", "127.0.0.1", "--port", str(port)]
        argv += ["--manifests", str(setup.tmp / "manifests")]
        env = clean_env(CONNECTOR_GATEWAY_SHUTDOWN_GRACE="2")
        ready = f"{base}/v1/liveness"
    elif row.server.startswith("starlette"):
        argv = [setup.python, str(BENCH / "echo_app.py"), "--port", str(port)]
        argv += ["--joined-writes"] if row.server == "starlette-joined" else []
        env, ready = clean_env(), f"{base}/v1/liveness"
    else:
        webhook = str(setup.tools["webhook"])
        argv = [webhook, "-ip", "127.0.0.1", "-port", str(port), "-hooks", str(setup.tmp / "hooks.json")]
        env, ready = clean_env(), f"{base}/"
    process = start(setup, argv, env, log)
    try:
        wait_ready(process, ready, log)
    except Unavailable:
        stop(process)
        raise
    return process, base


# --- one row -------------------------------------------------------------------------------------


def run_row(setup: Setup, row: Row) -> Result:
    print(f"{row.name:<16}", end=" ", file=sys.stderr, flush=True)
    try:
        _check_available(setup, row)
        with OtherLoad() as other:
            result = run_floor(setup, row) if row.server == "floor" else run_http(setup, row)
        result.other_cpu_percent = other.percent
    except Unavailable as exc:
        result = Result(row, unavailable=str(exc))
    if result.unavailable:
        print(f"not available: {result.unavailable}", file=sys.stderr, flush=True)
    else:
        print(f"{result.rps:8.1f} requests/s", file=sys.stderr, flush=True)
    return result


class OtherLoad:
    """CPU used by processes this script did not start, while a row ran: 100 is one core kept busy.

    The machine's user and system time, less this script's and that of the children it reaped
    (servers, with the connectors they reaped, wrk, floor runs), plus the time stolen by the hypervisor.
    Interrupt time is left out on both sides.
    """

    def __init__(self) -> None:
        self.percent: float | None = None
        self._start = (0.0, 0.0, 0.0)

    def __enter__(self) -> OtherLoad:
        self._start = (time.monotonic(), machine_cpu_seconds(), own_cpu_seconds())
        return self

    def __exit__(self, *exc_info: object) -> None:
        elapsed = time.monotonic() - self._start[0]
        machine = machine_cpu_seconds() - self._start[1]
        own = own_cpu_seconds() - self._start[2]
        self.percent = max(machine - own, 0.0) / elapsed * 100


def machine_cpu_seconds() -> float:
    """User and system time of every process, plus steal: time the hypervisor gave to other machines."""
    fields = Path("/proc/stat").read_text().splitlines()[0].split()
    user, nice, system, steal = (int(fields[index]) for index in (1, 2, 3, 8))
    return (user + nice + system + steal) / os.sysconf("SC_CLK_TCK")


def own_cpu_seconds() -> float:
    used = 0.0
    for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
        usage = resource.getrusage(who)
        used += usage.ru_utime + usage.ru_stime
    return used


def _check_available(setup: Setup, row: Row) -> None:
    if row.server != "floor" and not setup.tools["wrk"]:
        raise Unavailable(f"wrk not found ({INSTALL_HINT})")
    if row.server == "webhook" and not setup.tools["webhook"]:
        raise Unavailable(f"webhook not found ({INSTALL_HINT})")
    if row.connector == "node" and not setup.tools["node"]:
        raise Unavailable("node not found on PATH")
    if row.worker and not setup.worker_mode:
        raise Unavailable("this gateway has no worker mode (its manifest schema knows no 'mode: worker')")


def run_http(setup: Setup, row: Row) -> Result:
    process, base = start_server(setup, row)
    try:
        url = base + row.path
        _smoke(row, url)
        _wrk(setup, row, url, setup.args.warmup)  # unmeasured: caches, lazy workers, first allocations
        usage = Usage(process.pid)
        with usage:
            summary = _wrk(setup, row, url, setup.args.duration)
        return _result_of(row, summary, usage)
    finally:
        stop(process)


def _smoke(row: Row, url: str) -> None:
    """One request before the load, whose answer must be right: a fast wrong answer measures nothing."""
    data = BODY.encode() if row.method == "POST" else None
    headers = {"Content-Type": "application/json"}
    request = urllib.request.Request(url, data=data, method=row.method, headers=headers)  # noqa: S310 (loopback)
    try:
        # A loopback URL built here.
        with urllib.request.urlopen(request, timeout=SMOKE_TIMEOUT) as response:  # noqa: S310
            answer = response.read()
    except urllib.error.HTTPError as exc:
        raise Unavailable(f"{row.method} {row.path} answered {exc.code}: {exc.read()[:300]!r}") from None
    problem = _answer_problem(row, answer)
    if problem:
        raise Unavailable(f"{row.method} {row.path}: {problem}: {answer[:300]!r}")


def _answer_problem(row: Row, answer: bytes) -> str | None:
    try:
        decoded = json.loads(answer)
    except ValueError:
        return "the answer is not JSON"
    if row.path == "/v1/commands":
        return None if len(decoded) >= FILLER_COMMANDS else "fewer commands listed than loaded"
    if row.method == "GET":
        return None
    expected = PAYLOAD if row.connector == "cat" else {"echo": PAYLOAD}
    if row.server == "gateway":
        decoded = decoded.get("command_response", {}).get("body")
    return None if decoded == expected else f"expected {expected} as the answer"


def _wrk(setup: Setup, row: Row, url: str, seconds: int) -> dict[str, int]:
    args = setup.args
    connections = max(args.connections, args.threads)
    argv = [str(setup.tools["wrk"]), f"-t{args.threads}", f"-c{connections}", f"-d{seconds}s", "--timeout", "10s"]
    argv += ["-s", str(WRK_SCRIPT), url]
    if row.method == "POST":
        argv += ["--", "POST", BODY]
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        output, _ = process.communicate(timeout=seconds + WRK_GRACE)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    for line in output.splitlines():
        if line.startswith("WRK_SUMMARY "):
            summary: dict[str, int] = json.loads(line.removeprefix("WRK_SUMMARY "))
            return summary
    raise Unavailable(f"wrk printed no summary: {output.strip()[-300:]}")


def _result_of(row: Row, summary: dict[str, int], usage: Usage) -> Result:
    errors = sum(summary[kind] for kind in ("connect", "read", "write", "status", "timeout"))
    return Result(
        row,
        rps=summary["requests"] / (summary["duration_us"] / 1e6),
        p50_ms=summary["p50_us"] / 1000,
        p99_ms=summary["p99_us"] / 1000,
        requests=summary["requests"],
        errors=errors,
        rss_start_mb=usage.start_mb,
        rss_peak_mb=usage.peak_mb,
        rss_end_mb=usage.end_mb,
        cpu_percent=usage.cpu_percent,
    )


class Usage:
    """One process while it is loaded: its RSS before, at its peak (sampled every 50 ms) and after; its CPU use."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.start_mb: float | None = None
        self.peak_mb: float | None = None
        self.end_mb: float | None = None
        self.cpu_percent: float | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._cpu_start = (0.0, 0.0)

    def __enter__(self) -> Usage:
        self.start_mb = self.peak_mb = rss_mb(self.pid)
        self._cpu_start = (time.monotonic(), cpu_seconds(self.pid))
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        elapsed, used = time.monotonic() - self._cpu_start[0], cpu_seconds(self.pid) - self._cpu_start[1]
        self.cpu_percent = used / elapsed * 100
        self._stop.set()
        self._thread.join()
        self.end_mb = rss_mb(self.pid)
        self._note(self.end_mb)

    def _sample(self) -> None:
        while not self._stop.wait(0.05):
            self._note(rss_mb(self.pid))

    def _note(self, value: float | None) -> None:
        if value is not None and (self.peak_mb is None or value > self.peak_mb):
            self.peak_mb = value


def rss_mb(pid: int) -> float | None:
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return None


def cpu_seconds(pid: int) -> float:
    """User and system time of the process's own threads, not of its children."""
    with contextlib.suppress(OSError):
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return 0.0


# --- the floor: the same executables, spawned without HTTP --------------------------------------


def run_floor(setup: Setup, row: Row) -> Result:
    """The first half of a floor, run before the rows compared with it; `finish_floors` runs the second."""
    result = Result(row)
    _spawn_for(_floor_run(setup, row), setup.args.warmup, row.parallel)
    _add_floor_half(setup, result)
    return result


def finish_floors(setup: Setup, rows: list[Row], results: dict[str, Result]) -> None:
    """Once every row compared with a floor has run, run the floor's second half.

    Half before and half after: a machine whose speed drifts (a neighbour, the hypervisor)
    shifts the floor as much as the rows compared with it, and the two halves show by how much.
    """
    for result in results.values():
        floor = result.row
        if floor.server != "floor" or result.unavailable or len(result.halves) != 1:
            continue
        if all(row.name in results for row in rows if row.reference == floor.name):
            print(f"{floor.name + ' (2nd half)':<16}", end=" ", file=sys.stderr, flush=True)
            with OtherLoad() as other:
                _add_floor_half(setup, result)
            result.other_cpu_percent = max(result.other_cpu_percent or 0.0, other.percent or 0.0)
            print(f"{result.halves[-1]:8.1f} runs/s", file=sys.stderr, flush=True)


def _add_floor_half(setup: Setup, result: Result) -> None:
    runs, elapsed = _spawn_for(_floor_run(setup, result.row), setup.args.duration / 2, result.row.parallel)
    result.halves.append(len(runs) / elapsed)
    result.runs = sorted([*result.runs, *runs])
    result.elapsed += elapsed
    result.rps = len(result.runs) / result.elapsed
    result.p50_ms = statistics.median(result.runs) * 1000
    result.p99_ms = result.runs[min(len(result.runs) - 1, int(len(result.runs) * 0.99))] * 1000
    result.requests = len(result.runs)


def _floor_run(setup: Setup, row: Row) -> Callable[[], None]:
    """One spawn of the row's executable with the body on stdin, checked."""
    assert row.connector is not None
    argv = setup.argv(row.connector)
    env = clean_env()
    expected = BODY.encode() if row.connector == "cat" else None

    def once() -> None:
        done = subprocess.run(
            argv, input=BODY.encode(), capture_output=True, env=env, cwd=setup.tmp, timeout=FLOOR_RUN_TIMEOUT
        )
        if done.returncode != 0 or (expected is not None and done.stdout != expected):
            raise Unavailable(f"{argv[0]} failed: status {done.returncode}, {done.stderr[-300:]!r}")

    return once


def _spawn_for(once: Callable[[], None], seconds: float, parallel: int) -> tuple[list[float], float]:
    durations: list[float] = []
    failures: list[BaseException] = []
    started = time.monotonic()
    deadline = started + seconds

    def loop() -> None:
        try:
            while time.monotonic() < deadline and not failures:
                begun = time.perf_counter()
                once()
                durations.append(time.perf_counter() - begun)
        except Exception as exc:
            failures.append(exc)

    threads = [threading.Thread(target=loop, daemon=True) for _ in range(parallel)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if failures:
        raise failures[0]
    return durations, time.monotonic() - started


# --- ratios, table, targets ----------------------------------------------------------------------


def _add_ratios(results: dict[str, Result]) -> None:
    for result in results.values():
        reference = results.get(result.row.reference or "")
        if reference is None or result.rps is None or reference.rps is None:
            continue
        if result.row.compare == "p99":
            assert result.p99_ms is not None
            assert reference.p99_ms is not None
            result.ratio = result.p99_ms / reference.p99_ms
        else:
            result.ratio = result.rps / reference.rps


def _ratio_text(result: Result) -> str:
    row = result.row
    if result.halves and row.reference is None:
        return "runs/s by half: " + " / ".join(f"{half:.1f}" for half in result.halves)
    if result.ratio is None:
        return "-" if row.reference is None else f"- (needs {row.reference})"
    if row.compare == "p99":
        return f"p99 {result.ratio:.2f}x {row.reference}"
    return f"{result.ratio:.2f} of {row.reference}"


def _number(value: float | None, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


HEADER = (
    "row",
    "requests/s",
    "p50 ms",
    "p99 ms",
    "requests",
    "errors",
    "server CPU %",
    "other CPU %",
    "RSS MB start/peak",
    "ratio",
)
BUSY = 25.0  # other CPU %, above which a row's numbers are suspect


def print_table(results: dict[str, Result]) -> None:
    lines = [_cells(result) for result in results.values()]
    full = [line for line in [HEADER, *lines] if len(line) == len(HEADER)]
    widths = [max(len(line[column]) for line in full) for column in range(len(HEADER))]
    for line in [HEADER, *lines]:
        if len(line) == 2:  # a row that could not run, and why
            print(f"{line[0]:<{widths[0]}}  {line[1]}")
            continue
        last = len(line) - 1
        cells = [
            cell.ljust(width) if column in (0, last) else cell.rjust(width)
            for column, (cell, width) in enumerate(zip(line, widths, strict=True))
        ]
        print("  ".join(cells).rstrip())
    disturbed = [r.row.name for r in results.values() if (r.other_cpu_percent or 0) > BUSY]
    if disturbed:
        print(
            f"! other processes used more than {BUSY:g}% of a core meanwhile: rerun with --only {' '.join(disturbed)}"
        )


def _cells(result: Result) -> tuple[str, ...]:
    if result.unavailable:
        return (result.row.name, "not available: " + result.unavailable)
    rss = "-"
    if result.rss_start_mb is not None and result.rss_peak_mb is not None:
        rss = f"{result.rss_start_mb:.1f} / {result.rss_peak_mb:.1f}"
    return (
        result.row.name,
        _number(result.rps, 1),
        _number(result.p50_ms, 2),
        _number(result.p99_ms, 2),
        str(result.requests),
        str(result.errors),
        _number(result.cpu_percent, 0),
        _number(result.other_cpu_percent, 0) + ("!" if (result.other_cpu_percent or 0) > BUSY else " "),
        rss,
        _ratio_text(result),
    )


TARGETS: tuple[tuple[str, str, Callable[[float], bool]], ...] = (
    ("spawn-python", ">= 0.90 of floor-python", lambda ratio: ratio >= 0.9),
    ("spawn-python-2", ">= 0.90 of floor-python", lambda ratio: ratio >= 0.9),
    ("spawn-cat", "about 0.83 of floor-cat", lambda ratio: ratio >= 0.78),
    ("worker-python", ">= 0.70 of ceiling-echo", lambda ratio: ratio >= 0.7),
    ("worker-node", ">= 0.60 of ceiling-echo", lambda ratio: ratio >= 0.6),
    ("commands", "p99 within 3x liveness", lambda ratio: ratio <= 3),
)


def print_targets(results: dict[str, Result]) -> None:
    lines: list[tuple[str, str, str, bool, str]] = []
    for name, target, check in TARGETS:
        result = results.get(name)
        if result is not None and result.ratio is not None:
            lines.append((name, target, f"{result.ratio:5.2f}", check(result.ratio), ""))
    spawn, crowded = results.get("spawn-python"), results.get("floor-python-16")
    if spawn and crowded and spawn.rps and crowded.rps:
        # The same 16 interpreters starting at once, without HTTP: what the cores allow at that concurrency.
        ratio = spawn.rps / crowded.rps
        lines.append(("spawn-python", ">= 0.90 of floor-python-16", f"{ratio:5.2f}", ratio >= 0.9, ""))
    gateway = [r for r in results.values() if r.row.server == "gateway" and r.rss_peak_mb is not None]
    if gateway:
        peak = max(gateway, key=lambda r: r.rss_peak_mb or 0.0)
        rss = peak.rss_peak_mb or 0.0
        lines.append(("gateway RSS", "peak < 80 MB", f"{rss:5.1f}", rss < 80, f" ({peak.row.name})"))
    for result in gateway:
        if result.requests >= 20_000 and result.rss_start_mb and result.rss_end_mb is not None:
            growth = (result.rss_end_mb / result.rss_start_mb - 1) * 100
            target = f"RSS growth < 10% ({result.requests} req)"
            lines.append((result.row.name, target, f"{growth:4.1f}%", growth < 10, ""))
    if lines:
        print("targets")
    for name, target, value, met, note in lines:
        print(f"  {name:<16} {target:<34} {value}  {'met' if met else 'NOT met'}{note}")


if __name__ == "__main__":
    sys.exit(main())
