"""Mixed load against a gateway on loopback, and what the gateway holds before and after it.

The mix runs the fake connector's good and bad behaviours side by side with the fake
worker's (tests/manifests-load: pools of long-lived processes), requests refused before
dispatch and callers that hang up. `tests/test_load.py` and `bench/soak.py` share it;
stdlib only, so the soak needs no test dependencies.
"""

from __future__ import annotations

import contextlib
import dataclasses
import http.client
import ipaddress
import itertools
import json
import os
import random
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from serving import free_port, stop, wait_until_live

FAKE_MANIFESTS = Path(__file__).resolve().parent / "manifests"
WORKER_MANIFESTS = Path(__file__).resolve().parent / "manifests-load"
# The gateway under load starts with this stdout limit, so that a flood is refused after a few reads.
MAX_STDOUT_BYTES = 65536


@dataclass(frozen=True)
class Kind:
    """One sort of request in the mix, and the answer it must get (status, error code)."""

    name: str
    weight: int
    path: str
    body: bytes = b""
    method: str = "POST"
    content_type: str = "application/json"
    status: int | None = 200
    code: str | None = None
    # How the caller hangs up instead of reading an answer: after the request, or halfway through the body.
    hangup: str | None = None
    # A body sent first to the same command, which must be answered without an error; the pair goes in turn
    # with the other pairs of its kind, each from one client.
    first: bytes | None = None


def _json(value: Any) -> bytes:
    return json.dumps(value).encode()


def _emit(stdout: str = "", stderr: str = "", exit: int = 0) -> bytes:
    return _json({"stdout": stdout, "stderr": stderr, "exit": exit})


_OWN_ERROR = json.dumps(
    {
        "command_response": {"body": {"id": 7}, "mimetype": "application/json", "http_status": 404},
        "command_response_version": 2,
        "error": {"error_code": "TicketNotFound", "message": "No ticket 7."},
    }
)

# Weights are per 1,000 requests. Most are quick; a timeout holds a run slot for 0.5 s and a
# connector that ignores SIGTERM for 1.5 s (its time limit, then the kill grace).
# The worker_ kinds go to the fake worker's pools: "shared" takes 4 requests at a time per worker, and its
# 2 workers live as long as the gateway; "alone" is one worker taking one request at a time, replaced
# after garbage, a timeout or a hang-up, so those hold the pool up to 0.5 s each and are rare.
# A worker that exits before its first answer delays the next start (the restart backoff), which would
# refuse the requests behind it at random: so a crash goes to a pool of its own, "crashing", after an
# echo on the same worker.
MIX = (
    Kind("echo", 300, "/v1/do/fake/Echo", _json({"text": "hello", "count": 2, "extra": {"a": [1, 2]}})),
    Kind("emit_json", 120, "/v1/do/fake/Emit", _emit('{"ok": true}', "one\ntwo\n")),
    Kind("emit_text", 30, "/v1/do/fake/Emit", _emit("plain text")),
    Kind("own_error", 30, "/v1/do/fake/Emit", _emit(_OWN_ERROR), code="TicketNotFound"),
    Kind("exit_3", 40, "/v1/do/fake/Emit", _emit(stderr="bad input\n", exit=3), code="connector_failed"),
    Kind("exit_75", 20, "/v1/do/fake/Emit", _emit(exit=75), code="connector_unavailable"),
    Kind(
        "invalid_envelope",
        30,
        "/v1/do/fake/Emit",
        _emit('{"command_response_version": 2, "error": 5}'),
        code="connector_invalid_output",
    ),
    Kind("killed", 25, "/v1/do/fake/KillSelf", _json({"signal": int(signal.SIGKILL)}), code="connector_crashed"),
    Kind("terminated", 10, "/v1/do/fake/KillSelf", _json({"signal": int(signal.SIGTERM)}), code="connector_crashed"),
    Kind("grandchild", 30, "/v1/do/fake/Grandchild", b"{}"),
    Kind(
        "flood_stdout",
        20,
        "/v1/do/fake/FloodStdout",
        _json({"bytes": 4 * MAX_STDOUT_BYTES}),
        code="connector_output_too_large",
    ),
    Kind("timeout", 15, "/v1/do/fake/Sleep", _json({"seconds": 30}), code="connector_timeout"),
    Kind("ignore_term", 5, "/v1/do/fake/IgnoreTerm", b"{}", code="connector_timeout"),
    Kind("missing_parameter", 20, "/v1/do/fake/Echo", b"{}", status=400, code="missing_parameter"),
    Kind("invalid_parameter", 20, "/v1/do/fake/Echo", _json({"text": 5}), status=400, code="invalid_parameter"),
    Kind("not_json", 20, "/v1/do/fake/Echo", b'{"text": ', status=400, code="invalid_body"),
    Kind("not_object", 10, "/v1/do/fake/Echo", b"[1, 2]", status=400, code="invalid_body"),
    Kind(
        "wrong_media_type",
        10,
        "/v1/do/fake/Echo",
        b"{}",
        content_type="text/plain",
        status=415,
        code="unsupported_media_type",
    ),
    Kind("unknown_command", 30, "/v1/do/fake/NoSuchCommand", b"{}", status=404, code="command_not_found"),
    Kind("commands", 20, "/v1/commands", method="GET"),
    Kind("liveness", 10, "/v1/liveness", method="GET"),
    Kind("hangup_running", 25, "/v1/do/fake/Sleep", _json({"seconds": 30}), status=None, hangup="after_request"),
    Kind("hangup_in_body", 10, "/v1/do/fake/Echo", _json({"text": "x" * 200}), status=None, hangup="in_body"),
    Kind("worker_echo", 80, "/v1/do/worker/Shared", _json({"text": "hello", "extra": {"a": [1, 2]}})),
    # A worker taking several requests reads them one after another: those sent while it sleeps wait in its stdin.
    Kind("worker_sleep", 20, "/v1/do/worker/Shared", _json({"do": "sleep", "seconds": 0.2})),
    Kind("worker_echo_alone", 20, "/v1/do/worker/Alone", _json({"text": "hello"})),
    Kind("worker_garbage", 10, "/v1/do/worker/Alone", _json({"do": "garbage"}), code="connector_invalid_output"),
    Kind(
        "worker_timeout", 5, "/v1/do/worker/AloneSlow", _json({"do": "sleep", "seconds": 30}), code="connector_timeout"
    ),
    Kind(
        "worker_crash",
        5,
        "/v1/do/worker/Crashing",
        _json({"do": "crash"}),
        code="connector_crashed",
        first=_json({"do": "echo"}),
    ),
    # Hang-ups while a worker holds the request: the alone pool replaces its worker; a shared worker is
    # sent a cancellation, and its late answer is dropped.
    Kind(
        "worker_hangup",
        5,
        "/v1/do/worker/AloneSlow",
        _json({"do": "sleep", "seconds": 30}),
        status=None,
        hangup="after_request",
    ),
    Kind(
        "worker_cancel",
        5,
        "/v1/do/worker/Shared",
        _json({"do": "sleep", "seconds": 0.3}),
        status=None,
        hangup="after_request",
    ),
)
# The workers of each pool when the gateway is at rest, by the word that ends their command line: the
# shared pool's 2 start with the gateway and stay; the crashing pool's all crash; the alone pool replaces
# a worker only when a request needs one, so the request in TOP_UP starts it if the load left none.
RESTING_WORKERS = Counter({"shared": 2, "alone": 1})
TOP_UP = tuple(kind for kind in MIX if kind.name == "worker_echo_alone")
WORKER_PROGRAM = "fake_worker.py"

# The kinds sent in pairs, each pair in turn.
_IN_TURN = {kind.name: threading.Lock() for kind in MIX if kind.first is not None}


def planned(count: int, seed: int) -> list[Kind]:
    """Exactly `count` requests in the mix's proportions (every kind at least once), shuffled."""
    total = sum(kind.weight for kind in MIX)
    plan = [kind for kind in MIX for _ in range(max(1, round(count * kind.weight / total)))]
    random.Random(seed).shuffle(plan)
    return plan[:count]


def endless(seed: int) -> Iterator[Kind]:
    """Requests drawn at random in the mix's proportions, for as long as the caller takes them."""
    rng = random.Random(seed)
    weights = [kind.weight for kind in MIX]
    while True:
        yield from rng.choices(MIX, weights, k=100)


# ---------------------------------------------------------------- sending


@dataclass(frozen=True)
class Target:
    host: str
    port: int


@dataclass
class Outcome:
    kind: Kind
    seconds: float
    status: int | None = None
    code: str | None = None
    answer: Any = None
    # What went wrong on the client's side: no answer, or an answer not in the protocol's shape.
    problem: str | None = None

    @property
    def answered(self) -> bool:
        return self.status is not None

    @property
    def as_expected(self) -> bool:
        return self.problem is None and (self.status, self.code) == (self.kind.status, self.kind.code)


def send(target: Target, kind: Kind, timeout: float) -> Outcome:
    if kind.first is None:
        return _send(target, kind, timeout)
    turn = _IN_TURN[kind.name]
    if not turn.acquire(timeout=timeout):
        return Outcome(kind, timeout, problem=f"not sent: the pairs before it took more than {timeout:g} s")
    try:
        ahead = dataclasses.replace(
            kind, name=f"{kind.name} (first)", body=kind.first, status=200, code=None, first=None
        )
        first = _send(target, ahead, timeout)
        if not first.as_expected:
            problem = f"the request before it got {first.status} {first.code}: {first.problem}"
            return Outcome(kind, first.seconds, problem=problem)
        return _send(target, kind, timeout)
    finally:
        turn.release()


def _send(target: Target, kind: Kind, timeout: float) -> Outcome:
    started = time.perf_counter()
    try:
        if kind.hangup is not None:
            _hang_up(target, kind, timeout)
            return Outcome(kind, time.perf_counter() - started)
        status, raw = _request(target, kind, timeout)
    except (OSError, http.client.HTTPException) as exc:
        return Outcome(kind, time.perf_counter() - started, problem=f"no answer: {exc!r}")
    outcome = Outcome(kind, time.perf_counter() - started, status)
    try:
        outcome.answer = json.loads(raw)
    except ValueError:
        outcome.problem = f"the body is not JSON: {raw[:200]!r}"
        return outcome
    outcome.code, outcome.problem = _read_answer(kind, status, outcome.answer)
    return outcome


def _request(target: Target, kind: Kind, timeout: float) -> tuple[int, bytes]:
    connection = http.client.HTTPConnection(target.host, target.port, timeout=timeout)
    try:
        headers = {"Content-Type": kind.content_type} if kind.method == "POST" else {}
        connection.request(kind.method, kind.path, body=kind.body or None, headers=headers)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def _hang_up(target: Target, kind: Kind, timeout: float) -> None:
    head = (
        f"POST {kind.path} HTTP/1.1\r\nHost: {target.host}:{target.port}\r\n"
        f"Content-Type: {kind.content_type}\r\nContent-Length: {len(kind.body)}\r\n\r\n"
    ).encode()
    with socket.create_connection((target.host, target.port), timeout=timeout) as sock:
        if kind.hangup == "in_body":
            sock.sendall(head + kind.body[: len(kind.body) // 2])
            time.sleep(0.02)
            # A reset rather than an orderly close: the other way a caller can vanish.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        else:
            sock.sendall(head + kind.body)
            time.sleep(0.1)  # the connector is running by now (or waits for a worker); its time limit is 0.5 s


def _read_answer(kind: Kind, status: int, answer: Any) -> tuple[str | None, str | None]:
    """The answer's error code, and what is wrong with its shape if anything."""
    if kind.path == "/v1/commands":
        return None, None if status == 200 and isinstance(answer, list) else "not a list of commands"
    if kind.path == "/v1/liveness":
        return None, None if answer == {"ok": True} else "not the liveness answer"
    if not isinstance(answer, dict) or not isinstance(answer.get("error"), dict | None):
        return None, "not an object with an error member"
    error = answer["error"]
    code = error.get("error_code") if error is not None else None
    if status < 300:
        keys = {"command_response", "command_response_version", "error", "spiff__logs"}
        return code, None if keys <= answer.keys() and answer["command_response_version"] == 2 else "not an envelope"
    if answer.get("command_response") != {} or not isinstance(code, str):
        return code, "not the protocol's minimal error"
    return code, None


def run_load(target: Target, kinds: Iterable[Kind], concurrency: int, deadline: float, timeout: float) -> list[Outcome]:
    """Send the requests from `concurrency` threads until there are no more or the deadline (monotonic) passes."""
    source = iter(kinds)
    lock = threading.Lock()
    outcomes: list[Outcome] = []

    def work() -> None:
        while time.monotonic() < deadline:
            with lock:
                kind = next(source, None)
            if kind is None:
                return
            outcome = send(target, kind, timeout)
            with lock:
                outcomes.append(outcome)

    threads = [threading.Thread(target=work, name=f"load-{number}", daemon=True) for number in range(concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        # Every request is bounded by `timeout` (a hang-up adds 0.1 s; a pair waits its turn, then sends two),
        # so this wait is too.
        thread.join(max(0.0, deadline - time.monotonic()) + 3 * timeout + 5)
    with lock:
        return list(outcomes)


# ---------------------------------------------------------------- the gateway process


@dataclass
class Gateway:
    """A gateway started for the load: its process, address, log and the mark its connectors carry."""

    process: subprocess.Popen[bytes]
    target: Target
    log: Path
    # Connectors get the gateway's TMPDIR: a directory of their own marks every process they start.
    marker: str | None


@contextlib.contextmanager
def started_gateway(workdir: Path, max_running: int = 64) -> Iterator[Gateway]:
    """The gateway as a real server over the fake connector and worker, with room for the load; stopped on exit."""
    port = free_port()
    marker = workdir / "connector-tmp"
    marker.mkdir()
    env = {name: value for name, value in os.environ.items() if not name.startswith("CONNECTOR_")}
    env.update(
        CONNECTOR_GATEWAY_MAX_RUNNING=str(max_running),
        CONNECTOR_GATEWAY_MAX_WAITING=str(max_running * 4),
        CONNECTOR_GATEWAY_MAX_STDOUT_BYTES=str(MAX_STDOUT_BYTES),
        CONNECTOR_GATEWAY_SHUTDOWN_GRACE="2",
        TMPDIR=str(marker),
    )
    log = workdir / "gateway.log"
    argv = [sys.executable, "-m", "gateway", "serve", "--port", str(port)]
    argv += ["--manifests", str(FAKE_MANIFESTS), "--manifests", str(WORKER_MANIFESTS)]
    with log.open("wb") as sink:
        process = subprocess.Popen(argv, env=env, stdout=sink, stderr=subprocess.STDOUT)
    try:
        wait_until_live(port, process)
        yield Gateway(process, Target("127.0.0.1", port), log, str(marker))
    finally:
        stop(process, grace=15)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


# ---------------------------------------------------------------- what the gateway holds, from /proc


@dataclass(frozen=True)
class Process:
    """A connector process: its state (R, S, Z for a zombie, ...) and name from /proc/PID/stat, and its arguments."""

    pid: int
    state: str
    name: str
    argv: tuple[str, ...]

    @property
    def pool(self) -> str | None:
        """The pool of the fake worker this process is, by the word after the worker's path; None if it is none."""
        if self.state != "Z" and len(self.argv) >= 2 and Path(self.argv[-2]).name == WORKER_PROGRAM:
            return self.argv[-1]
        return None

    def __str__(self) -> str:
        return f"{self.pid} {self.state} {self.name} {' '.join(self.argv) or '?'}"


@dataclass(frozen=True)
class Snapshot:
    """The gateway's open descriptors (by what they point at), its connector processes, memory and threads."""

    descriptors: list[str]
    processes: dict[int, Process] = field(default_factory=dict)
    rss_kib: int | None = None
    threads: int | None = None

    @classmethod
    def take(cls, pid: int, marker: str | None = None) -> Snapshot:
        return cls(open_descriptors(pid), connector_processes(pid, marker), rss_kib(pid), thread_count(pid))

    def opened_since(self, before: Snapshot) -> Counter[str]:
        """Descriptors open now that were not open before, by what they point at."""
        return Counter(self.descriptors) - Counter(before.descriptors)

    def workers(self) -> Counter[str]:
        """The fake worker's processes, counted by pool."""
        return Counter(process.pool for process in self.processes.values() if process.pool is not None)

    def others(self) -> dict[int, Process]:
        """The processes that are not a running fake worker: spawned connectors, what they started, zombies."""
        return {pid: process for pid, process in self.processes.items() if process.pool is None}

    def idle(self) -> bool:
        """No connection, and no process but the workers each pool has at rest (see `rested`)."""
        return not self.others() and self.workers() == RESTING_WORKERS and CONNECTION not in self.descriptors

    def holds_no_more_than(self, before: Snapshot) -> bool:
        """No descriptor and no process that were not there before; workers, which pools replace, by pool."""
        return (
            not self.opened_since(before)
            and self.workers() <= before.workers()
            and self.others().keys() <= before.others().keys()
        )


def open_descriptors(pid: int) -> list[str]:
    """What each descriptor points at, without inode numbers, which differ on every run.

    A TCP connection is told apart from the gateway's other sockets: when it is idle it has none.
    """
    connections = _tcp_connections(pid)
    targets = []
    for name in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(OSError):  # closed between the listing and the look
            target = os.readlink(f"/proc/{pid}/fd/{name}")
            kind, _, inode = target.partition(":[")
            targets.append(CONNECTION if inode[:-1] in connections else kind if inode else target)
    return sorted(targets)


CONNECTION = "socket (tcp connection)"


def _tcp_connections(pid: int) -> set[str]:
    return {inode for _, listening, inode in tcp_sockets(str(pid)) if not listening}


def tcp_sockets(process: str = "self") -> list[tuple[int, bool, str]]:
    """(local port, listening, inode) of every TCP socket in the network namespace of a process."""
    sockets = []
    for table in ("tcp", "tcp6"):
        with contextlib.suppress(OSError), open(f"/proc/{process}/net/{table}") as file:
            for line in itertools.islice(file, 1, None):
                fields = line.split()
                port = int(fields[1].rsplit(":", 1)[1], 16)
                sockets.append((port, fields[3] == "0A", fields[9]))  # 0A: LISTEN
    return sockets


def rss_kib(pid: int) -> int | None:
    with contextlib.suppress(OSError), open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return None


def thread_count(pid: int) -> int | None:
    with contextlib.suppress(OSError):
        return len(os.listdir(f"/proc/{pid}/task"))
    return None


def connector_processes(pid: int, marker: str | None) -> dict[int, Process]:
    """Every descendant of the gateway, and every process carrying its connectors' mark (TMPDIR=marker).

    The mark finds what escaped the family tree: a grandchild whose parent exited is
    adopted by init, but keeps the environment it was started with.
    """
    stats = _all_stats()
    children: dict[int, list[int]] = {}
    for child, (ppid, _, _) in stats.items():
        children.setdefault(ppid, []).append(child)
    found: set[int] = set()
    pending = list(children.get(pid, []))
    while pending:
        child = pending.pop()
        if child not in found:
            found.add(child)
            pending.extend(children.get(child, []))
    if marker is not None:
        mark = f"TMPDIR={marker}".encode()
        found.update(other for other in stats if other != pid and mark in _environment(other))
    return {other: Process(other, *stats[other][1:], _arguments(other)) for other in sorted(found) if other in stats}


def _all_stats() -> dict[int, tuple[int, str, str]]:
    """Parent pid, state and name of every process: (ppid, state, comm)."""
    stats = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as file:
                stat = file.read()
        except OSError:
            continue
        comm = stat[stat.index("(") + 1 : stat.rindex(")")]
        state, ppid = stat[stat.rindex(")") + 2 :].split()[:2]
        stats[int(entry)] = (int(ppid), state, comm)
    return stats


def _environment(pid: int) -> list[bytes]:
    try:
        with open(f"/proc/{pid}/environ", "rb") as file:
            return file.read().split(b"\0")
    except OSError:
        return []


def _arguments(pid: int) -> tuple[str, ...]:
    """The command line, empty for a zombie or a process gone."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as file:
            arguments = file.read().decode(errors="replace")
    except OSError:
        return ()
    return tuple(arguments.rstrip("\0").split("\0")) if arguments else ()


def settle(pid: int, marker: str | None, timeout: float, until: Callable[[Snapshot], bool]) -> Snapshot:
    """Poll until a snapshot satisfies `until` or the timeout passes; the last snapshot either way."""
    deadline = time.monotonic() + timeout
    while True:
        snapshot = Snapshot.take(pid, marker)
        if until(snapshot) or time.monotonic() > deadline:
            return snapshot
        time.sleep(0.1)


def warmed_up(gateway_pid: int, marker: str | None, target: Target, timeout: float) -> Snapshot:
    """Send one request of each answered kind, then take the snapshot to compare with after the load.

    It is taken once the gateway is idle (the warm-up's connections closed, its connectors
    gone, its worker pools at rest), or after `timeout` if it never is.
    """
    for kind in MIX:
        if kind.hangup is None:
            send(target, kind, timeout)
    return rested(gateway_pid, marker, target, timeout, until=Snapshot.idle)


def rested(
    gateway_pid: int, marker: str | None, target: Target, timeout: float, until: Callable[[Snapshot], bool]
) -> Snapshot:
    """Bring the worker pools to the size they have at rest (`RESTING_WORKERS`), then `settle`.

    A pool replaces a worker it gave up on when a request needs one, so the load leaves it one short at times.
    """
    for kind in TOP_UP:
        send(target, kind, timeout)
    return settle(gateway_pid, marker, timeout, until)


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))] if ordered else float("nan")
