"""Live reload against a real gateway process: manifests added, changed, broken and removed while it serves."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx2
import pytest

from conftest import Gateway, running
from serving import children, wait_for

FAKE = Path(__file__).parent / "connectors" / "fake.py"
WORKER = Path(__file__).parent / "connectors" / "fake_worker.py"
RELOADED = 5  # seconds a change may take to be served: the gateway promises about one


def manifest(description: str = "Echoes.", extra: str = "") -> str:
    return (
        "manifest_version: 1\nconnector: live\ncommands:\n"
        f"  - name: Echo\n    description: {description}\n"
        f"    run: ['{{python}}', -I, -S, '{FAKE}', echo]\n{extra}"
    )


def worker_manifest(greeting: str, workers: str = "{size: 1, concurrency: 4}", timeout: float = 5) -> str:
    return (
        "manifest_version: 1\nconnector: pooled\ncommands:\n"
        f"  - name: Do\n    run: ['{{python}}', -I, -S, '{WORKER}']\n    mode: worker\n    timeout: {timeout}\n"
        f"    workers: {workers}\n    env: {{GREETING: {greeting}}}\n"
    )


@pytest.fixture
def manifests(tmp_path: Path) -> Path:
    directory = tmp_path / "manifests"
    directory.mkdir()
    (directory / "live.yaml").write_text(manifest())
    return directory


@pytest.fixture
def gateway(manifests: Path) -> Iterator[Gateway]:
    with running(manifests) as gateway:
        yield gateway


def replace_atomically(path: Path, text: str) -> None:
    """As editors and deploy tools write: a temporary file renamed over the old one."""
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(text)
    os.replace(temporary, path)


def test_a_new_manifest_is_served_without_a_restart(gateway: Gateway, manifests: Path) -> None:
    (manifests / "more.yaml").write_text(manifest().replace("connector: live", "connector: more"))

    wait_for(lambda: "more/Echo" in gateway.commands(), RELOADED, "the new manifest being served")
    answer = gateway.do("more/Echo", {"text": "hi"}).json()
    assert answer["command_response"]["body"]["text"] == "hi"
    gateway.wait_logged("Reloaded the manifests (the manifests changed): 2 commands served; added more/Echo")


def test_a_changed_manifest_is_served_and_a_removed_one_is_gone(gateway: Gateway, manifests: Path) -> None:
    replace_atomically(manifests / "live.yaml", manifest(description="Echoes, reloaded."))
    wait_for(
        lambda: gateway.commands()["live/Echo"].get("description") == "Echoes, reloaded.",
        RELOADED,
        "the changed description",
    )

    (manifests / "live.yaml").unlink()

    wait_for(lambda: "live/Echo" not in gateway.commands(), RELOADED, "the removed command going away")
    assert gateway.do("live/Echo", {}).status_code == 404


def test_a_manifest_broken_by_an_edit_keeps_its_last_good_version(gateway: Gateway, manifests: Path) -> None:
    (manifests / "live.yaml").write_text(manifest(extra="    timeout: soon\n"))

    wait_for(lambda: "is invalid" in gateway.logged(), RELOADED, "the broken manifest being reported")
    log = gateway.logged()
    assert f"Manifest '{manifests / 'live.yaml'}' is invalid:" in log
    assert "commands[0].timeout: 'soon' is not of type 'number'" in log
    assert "Its last good version is still served." in log
    assert gateway.do("live/Echo", {"text": "still here"}).json()["command_response"]["body"]["text"] == "still here"
    assert "live.yaml" in httpx2.get(gateway.url("/")).text

    # Fixed, it is served as written, and the failure is gone.
    (manifests / "live.yaml").write_text(manifest(description="Fixed."))
    wait_for(lambda: gateway.commands()["live/Echo"].get("description") == "Fixed.", RELOADED, "the fix")
    assert "Every manifest loaded." in httpx2.get(gateway.url("/")).text


def test_editor_files_do_not_reload(gateway: Gateway, manifests: Path) -> None:
    for name in (".live.yaml.swp", "live.yaml~", "4913", "#live.yaml#", ".#live.yaml"):
        (manifests / name).write_text("not a manifest: [")
    (manifests / "other.txt").write_text("notes")
    time.sleep(1.5)  # several polls

    metrics = httpx2.get(gateway.url("/metrics")).text
    assert "connector_gateway_manifest_reloads_total 0" in metrics
    assert "connector_gateway_manifests_failed 0" in metrics


def test_requests_in_flight_finish_while_a_manifest_is_rewritten(gateway: Gateway, manifests: Path) -> None:
    failures: list[str] = []
    answered = 0
    stop = threading.Event()

    def traffic() -> None:
        nonlocal answered
        with httpx2.Client(timeout=30) as client:
            while not stop.is_set():
                response = client.post(gateway.url("/v1/do/live/Echo"), json={"text": "x"})
                body = response.json()
                if response.status_code != 200 or body.get("error") is not None:
                    failures.append(f"{response.status_code} {json.dumps(body)[:300]}")
                answered += 1

    threads = [threading.Thread(target=traffic) for _ in range(4)]
    for thread in threads:
        thread.start()
    try:
        for round_ in range(6):  # atomic renames and writes in place, some half-written when read
            text = manifest(description=f"Round {round_}.")
            if round_ % 2:
                replace_atomically(manifests / "live.yaml", text)
            else:
                (manifests / "live.yaml").write_text(text)
            time.sleep(0.5)
        wait_for(lambda: gateway.commands()["live/Echo"].get("description") == "Round 5.", RELOADED, "the last round")
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=30)

    assert failures == []
    assert answered > 20
    gateway.wait_logged("Reloaded the manifests")


def test_a_changed_worker_command_gets_a_new_pool_and_the_old_workers_exit(tmp_path: Path) -> None:
    directory = tmp_path / "manifests"
    directory.mkdir()
    (directory / "pooled.yaml").write_text(worker_manifest("first"))
    with running(directory) as gateway:
        before = gateway.do("pooled/Do", {"do": "pid"}).json()["command_response"]["body"]["pid"]

        replace_atomically(directory / "pooled.yaml", worker_manifest("second"))
        wait_for(
            lambda: gateway.do("pooled/Do", {"do": "pid"}).json()["command_response"]["body"]["pid"] != before,
            RELOADED,
            "a worker of the new definition answering",
        )

        wait_for(lambda: not Path(f"/proc/{before}").exists(), RELOADED, "the old worker exiting")
        gateway.wait_logged("Retired 1 worker pool(s) of changed or removed commands")


def test_a_worker_pool_retired_with_requests_queued_serves_them_and_leaves_no_worker_behind(tmp_path: Path) -> None:
    directory = tmp_path / "manifests"
    directory.mkdir()
    one_at_a_time = "{size: 1, concurrency: 1}"
    (directory / "pooled.yaml").write_text(worker_manifest("first", one_at_a_time, timeout=20))
    with running(directory) as gateway, ThreadPoolExecutor(3) as callers:
        calls = [callers.submit(gateway.do, "pooled/Do", {"do": "sleep", "seconds": 1.5}) for _ in range(3)]
        wait_for(lambda: gateway.metric("requests_queued") == 2, 10, "one request running and two queued")

        replace_atomically(directory / "pooled.yaml", worker_manifest("second", one_at_a_time, timeout=20))
        gateway.wait_logged("Retired 1 worker pool(s) of changed or removed commands", RELOADED)
        answers = [call.result().json()["command_response"]["body"] for call in calls]

        # The requests finish on the definition they started with; then nothing of it is left.
        assert [answer["greeting"] for answer in answers] == ["first"] * 3
        wait_for(lambda: children(gateway.process.pid) == [], RELOADED, "every worker of the old pool exiting")
        fresh = gateway.do("pooled/Do", {"do": "sleep", "seconds": 0}).json()["command_response"]["body"]
        assert fresh["greeting"] == "second"
        assert fresh["pid"] not in {answer["pid"] for answer in answers}


def test_with_reload_off_only_sighup_reloads(manifests: Path) -> None:
    with running(manifests, "--no-reload") as gateway:
        (manifests / "more.yaml").write_text(manifest().replace("connector: live", "connector: more"))
        time.sleep(1.5)  # several polls' worth
        assert "more/Echo" not in gateway.commands()

        gateway.process.send_signal(signal.SIGHUP)

        wait_for(lambda: "more/Echo" in gateway.commands(), RELOADED, "the reload SIGHUP asked for")
        gateway.wait_logged("Reloaded the manifests (SIGHUP)")
