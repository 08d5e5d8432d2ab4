"""What a connector leaves running outside its process group, under a real `serve`: killed and reaped."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from conftest import FAKE_MANIFESTS
from gateway.orphans import OwnChildren, boot_ticks, read_stat
from serving import children, free_port, wait_for, wait_until_live

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the gateway reaps orphans on Linux")

WORKER = Path(__file__).parent / "connectors" / "fake_worker.py"


@dataclass
class Served:
    process: subprocess.Popen[str]
    port: int
    log: Path

    def post(self, command: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.port}/v1/do/{command}",
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return response.status, json.load(response)
        except urllib.error.HTTPError as error:
            with error:
                return error.code, json.load(error)

    def zombies(self) -> list[int]:
        return [pid for pid in children(self.process.pid) if _state(pid) == "Z"]


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    pools = tmp_path_factory.mktemp("pools")
    (pools / "pool.yaml").write_text(
        "manifest_version: 1\nconnector: pool\n"
        f"commands:\n  - {{name: Do, run: ['{{python}}', -I, -S, '{WORKER}'], mode: worker}}\n"
    )
    log = pools.parent / "gateway.log"
    port = free_port()
    argv = ["serve", "--port", str(port), "--manifests", str(FAKE_MANIFESTS), "--manifests", str(pools)]
    with log.open("w") as output:
        process = subprocess.Popen(
            [sys.executable, "-m", "gateway", *argv], stdout=output, stderr=subprocess.STDOUT, text=True
        )
    try:
        wait_until_live(port, process)
        yield Served(process, port, log)
    finally:
        process.terminate()
        process.wait(timeout=30)


def _state(pid: int) -> str | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except OSError:
        return None


def gone(pid: int) -> bool:
    """Neither running nor a zombie waiting to be reaped."""
    return not Path(f"/proc/{pid}").exists()


def test_a_process_left_running_after_an_answer_is_killed(served: Served) -> None:
    status, answer = served.post("fake/Escape", {})
    assert status == 200
    escaped = answer["command_response"]["body"]["escaped"]

    wait_for(lambda: gone(escaped), 5, f"the end of process {escaped}")
    wait_for(lambda: served.zombies() == [], 5, "the reaping of every zombie child")
    assert served.post("fake/Echo", {"text": "still serving"})[0] == 200
    line = f"Killed process {escaped} ({sys.executable}), left running by a connector outside its process group"
    assert line in served.log.read_text()


def test_a_process_left_running_by_a_connector_that_timed_out_is_killed(served: Served) -> None:
    status, answer = served.post("fake/Escape", {"hang": True})
    assert status == 200
    assert answer["command_response"]["http_status"] == 504
    assert answer["error"]["error_code"] == "connector_timeout"
    [line] = answer["spiff__logs"]
    escaped = int(line.removeprefix("escaped "))

    wait_for(lambda: gone(escaped), 5, f"the end of process {escaped}")
    wait_for(lambda: served.zombies() == [], 5, "the reaping of every zombie child")
    assert served.post("fake/Echo", {"text": "still serving"})[0] == 200


def test_a_double_fork_leaves_neither_a_process_nor_a_zombie(served: Served) -> None:
    status, answer = served.post("fake/Escape", {"double_fork": True})
    assert status == 200
    escaped = answer["command_response"]["body"]["escaped"]

    wait_for(lambda: gone(escaped), 5, f"the end of process {escaped}")
    wait_for(lambda: served.zombies() == [], 5, "the reaping of every zombie child")


def test_an_orphan_still_in_a_running_connectors_group_is_left_to_the_connectors_end(served: Served) -> None:
    # A shell's `( helper & )` does this: the subshell exits and the helper is orphaned, in the connector's group.
    status, answer = served.post("fake/Escape", {"in_group": True, "wait": 1.2})
    assert status == 200
    body = answer["command_response"]["body"]
    assert body["alive"] is True

    wait_for(lambda: gone(body["escaped"]), 5, f"the end of process {body['escaped']}")
    assert f"Killed process {body['escaped']} " not in served.log.read_text()  # the group's kill ended it


def test_the_gateways_own_workers_are_not_taken_for_escaped_processes(served: Served) -> None:
    status, answer = served.post("pool/Do", {"do": "pid"})
    assert status == 200
    worker = answer["command_response"]["body"]["pid"]

    status, answer = served.post("fake/Escape", {})
    escaped = answer["command_response"]["body"]["escaped"]
    wait_for(lambda: gone(escaped), 5, f"the end of process {escaped}")  # the sweep has run since the worker started

    status, answer = served.post("pool/Do", {"do": "pid"})
    assert status == 200
    assert answer["command_response"]["body"]["pid"] == worker
    assert f"Killed process {worker} " not in served.log.read_text()


def test_a_process_a_worker_left_outside_its_group_is_killed_once_the_worker_exits(served: Served) -> None:
    status, answer = served.post("pool/Do", {"do": "escape"})
    assert status == 200
    escaped = answer["command_response"]["body"]["escaped"]

    status, answer = served.post("pool/Do", {"do": "crash"})
    assert answer["error"]["error_code"] == "connector_crashed"

    wait_for(lambda: gone(escaped), 5, f"the end of process {escaped}")
    wait_for(lambda: served.zombies() == [], 5, "the reaping of every zombie child")
    assert served.post("pool/Do", {"do": "pid"})[0] == 200


def start_of(process: subprocess.Popen[bytes]) -> int:
    stat = read_stat(process.pid)
    assert stat is not None
    return stat.start


def test_a_child_born_while_a_spawn_is_open_is_left_alone_until_the_spawn_has_closed() -> None:
    # A spawned process is known only a few turns of the event loop after its fork.
    own = OwnChildren()
    waiting = [sys.executable, "-c", "input()"]
    with subprocess.Popen(waiting, stdin=subprocess.PIPE) as before:
        born_before = start_of(before)
        wait_for(lambda: boot_ticks() > born_before + 1, 5, "two clock ticks")
        with own.spawning():
            during = subprocess.Popen(waiting, stdin=subprocess.PIPE)
            born_during = start_of(during)
            assert own.may_be_ours(during.pid, born_during)
            assert not own.may_be_ours(before.pid, born_before)
            own.add(during.pid)

        assert own.may_be_ours(during.pid, born_during)
        own.discard(during.pid)
        assert not own.may_be_ours(during.pid, born_during)
        during.communicate(b"\n")
        before.communicate(b"\n")
