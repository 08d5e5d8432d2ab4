"""What operators watch: Prometheus metrics, request ids from callers, JSON log lines."""

from __future__ import annotations

import asyncio
import io
import json
import logging
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families
from starlette.testclient import TestClient

from conftest import make_settings
from gateway import create_app
from gateway.logs import AccessLog, configure_logging
from gateway.settings import Settings, SettingsError, settings_environment
from serving import wait_for

API_KEY = "k3y"
WORKER = Path(__file__).parent / "connectors" / "fake_worker.py"


def scrape(client: TestClient, **headers: str) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """Every sample of /metrics, by metric name and label set, read with Prometheus's own parser."""
    response = client.get("/metrics", headers=headers)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    samples: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return samples


def test_requests_are_counted_by_command_status_and_error_code(client: TestClient) -> None:
    client.post("/v1/do/fake/Echo", json={"text": "hi"})
    client.post("/v1/do/fake/Echo", json={"text": "hi"})
    client.post("/v1/do/fake/Echo", json={})  # missing parameter
    client.post("/v1/do/fake/KillSelf", json={})  # the connector crashes: outer 200, an error inside
    client.post("/v1/do/no/Such", json={})

    requests = scrape(client)["connector_gateway_requests_total"]

    assert requests[(("command", "fake/Echo"), ("error_code", "-"), ("status", "200"))] == 2
    assert requests[(("command", "fake/Echo"), ("error_code", "missing_parameter"), ("status", "400"))] == 1
    assert requests[(("command", "fake/KillSelf"), ("error_code", "connector_crashed"), ("status", "200"))] == 1
    # A command nobody serves is counted without its name: callers cannot grow the label set.
    assert requests[(("command", "-"), ("error_code", "command_not_found"), ("status", "404"))] == 1


def test_durations_are_a_histogram_per_command(client: TestClient) -> None:
    for _ in range(3):
        client.post("/v1/do/fake/Echo", json={"text": "hi"})

    samples = scrape(client)

    command = (("command", "fake/Echo"),)
    assert samples["connector_gateway_request_duration_seconds_count"][command] == 3
    assert 0 < samples["connector_gateway_request_duration_seconds_sum"][command] < 30
    buckets = {
        labels: value
        for labels, value in samples["connector_gateway_request_duration_seconds_bucket"].items()
        if ("command", "fake/Echo") in labels
    }
    assert buckets[(("command", "fake/Echo"), ("le", "+Inf"))] == 3
    assert list(buckets.values()) == sorted(buckets.values()), "buckets must be cumulative"


def test_process_and_registry_gauges(client: TestClient) -> None:
    client.post("/v1/do/fake/Echo", json={"text": "hi"})

    samples = scrape(client)

    assert samples["connector_gateway_processes_spawned_total"][(("mode", "spawn"),)] == 1
    assert samples["connector_gateway_processes_spawned_total"][(("mode", "worker"),)] == 0
    assert samples["connector_gateway_requests_in_flight"][()] == 1  # the scrape itself
    assert samples["connector_gateway_requests_queued"][()] == 0
    registry = client.app.state.registry  # type: ignore[attr-defined]
    assert samples["connector_gateway_commands"][()] == len(registry.commands)
    assert samples["connector_gateway_manifests_failed"][()] == 0


def pooled_manifest(max_requests: int = 100) -> str:
    """One connector with three worker pools: commands with different `run` or `workers` do not share one."""
    return (
        "manifest_version: 1\nconnector: pool\n"
        f"defaults: {{run: ['{{python}}', -I, -S, '{WORKER}'], mode: worker, timeout: 5}}\n"
        "commands:\n"
        f"  - {{name: Do, parameters: [{{id: do, type: str}}], workers: {{max_requests: {max_requests}}}}}\n"
        f"  - {{name: Other, workers: {{concurrency: 2, max_requests: {max_requests}}}}}\n"
        "  - name: Dies\n    run: ['{python}', -c, 'import sys; sys.stdin.readline()']\n"
        f"    workers: {{max_requests: {max_requests}}}\n"
    )


@pytest.fixture
def pooled(tmp_path: Path) -> Iterator[TestClient]:
    (tmp_path / "pool.yaml").write_text(pooled_manifest())
    with TestClient(create_app(make_settings(manifest_dirs=(tmp_path,), reload=False))) as test_client:
        yield test_client


def reload(client: TestClient) -> None:
    assert client.portal is not None
    client.portal.call(client.app.state.reloader.reload, "test")  # type: ignore[attr-defined]


def test_every_metric_has_its_labels(pooled: TestClient, tmp_path: Path) -> None:
    with ThreadPoolExecutor(2) as callers:
        running = callers.submit(pooled.post, "/v1/do/pool/Do", json={"do": "sleep", "seconds": 1})
        wait_for(lambda: scrape(pooled)["connector_gateway_runs_in_progress"][()] == 1, 10, "the first request")
        queued = callers.submit(pooled.post, "/v1/do/pool/Do", json={"do": "pid"})
        wait_for(lambda: scrape(pooled)["connector_gateway_requests_queued"][()] == 1, 10, "a request queued")
        assert running.result().status_code == queued.result().status_code == 200
    (tmp_path / "broken.yaml").write_text("manifest_version: 1\nconnector: [")
    reload(pooled)

    samples = scrape(pooled)

    assert {
        name: {tuple(sorted(label for label, _ in labels)) for labels in values} for name, values in samples.items()
    } == {
        "connector_gateway_requests_total": {("command", "error_code", "status")},
        "connector_gateway_request_duration_seconds_bucket": {("command", "le")},
        "connector_gateway_request_duration_seconds_sum": {("command",)},
        "connector_gateway_request_duration_seconds_count": {("command",)},
        "connector_gateway_requests_in_flight": {()},
        "connector_gateway_requests_queued": {()},
        "connector_gateway_runs_in_progress": {()},
        "connector_gateway_processes_spawned_total": {("mode",)},
        "connector_gateway_workers": {("connector",)},
        "connector_gateway_worker_restarts_total": {("connector",)},
        "connector_gateway_commands": {()},
        "connector_gateway_manifests_failed": {()},
        "connector_gateway_manifest_reloads_total": {()},
        "connector_gateway_manifest_reload_failures_total": {()},
    }
    assert samples["connector_gateway_workers"][(("connector", "pool"),)] == 1
    assert samples["connector_gateway_manifest_reloads_total"][()] == 1
    assert samples["connector_gateway_manifest_reload_failures_total"][()] == 1
    assert samples["connector_gateway_manifests_failed"][()] == 1


def test_worker_counters_outlive_a_reload_and_each_connector_has_one_series(pooled: TestClient) -> None:
    for command in ("Do", "Other", "Dies"):
        pooled.post(f"/v1/do/pool/{command}", json={})
    before = pooled.get("/metrics").text

    # Every pool of the connector is replaced by one of a new definition.
    directory = Path(pooled.app.state.settings.manifest_dirs[0])  # type: ignore[attr-defined]
    (directory / "pool.yaml").write_text(pooled_manifest(max_requests=99))
    reload(pooled)
    after = pooled.get("/metrics").text

    for text in (before, after):
        series = [line.rpartition(" ")[0] for line in text.splitlines() if not line.startswith("#")]
        assert [name for name, count in Counter(series).items() if count > 1] == []
    assert 'connector_gateway_workers{connector="pool"} 2' in before.splitlines()
    counted, counted_after = counters(before), counters(after)
    assert {key: counted_after.get(key) for key, value in counted.items() if counted_after.get(key, -1) < value} == {}
    assert counted_after[("connector_gateway_processes_spawned_total", (("mode", "worker"),))] == 3
    assert counted_after[("connector_gateway_worker_restarts_total", (("connector", "pool"),))] == 1


def counters(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """The samples of every counter but the requests, which the scrapes themselves change."""
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        if family.type == "counter" and family.name != "connector_gateway_requests"
        for sample in family.samples
    }


def test_metrics_are_open_by_default_even_with_an_api_key() -> None:
    with TestClient(create_app(make_settings(api_key=API_KEY))) as client:
        assert client.get("/metrics").status_code == 200
        assert client.get("/v1/commands").status_code == 401


def test_metrics_can_require_the_api_key() -> None:
    with TestClient(create_app(make_settings(api_key=API_KEY, metrics_need_key=True))) as client:
        assert client.get("/metrics").status_code == 401
        assert "connector_gateway_requests_total" in scrape(client, **{"Spiff-Connector-Proxy-Api-Key": API_KEY})


def test_a_callers_request_id_is_used_returned_and_passed_to_the_connector(client: TestClient) -> None:
    response = client.post("/v1/do/fake/Env", json={}, headers={"X-Request-Id": "arena-task-42.retry:1"})

    assert response.headers["x-request-id"] == "arena-task-42.retry:1"
    assert response.json()["command_response"]["body"]["env"]["CONNECTOR_REQUEST_ID"] == "arena-task-42.retry:1"


@pytest.mark.parametrize("sent", ["two words", "x" * 129, "line\\nbreak", "-leading-dash", ""])
def test_a_request_id_that_is_not_a_plain_token_is_replaced(client: TestClient, sent: str) -> None:
    response = client.post("/v1/do/fake/Env", json={}, headers={"X-Request-Id": sent})

    request_id = response.headers["x-request-id"]
    assert request_id != sent
    assert len(request_id) == 32
    assert int(request_id, 16) >= 0
    assert response.json()["command_response"]["body"]["env"]["CONNECTOR_REQUEST_ID"] == request_id


def test_request_ids_in_flight_are_unique_even_when_callers_repeat_one() -> None:
    app = create_app(make_settings())
    headers = [(b"x-request-id", b"same")]

    first, second = app.ids.take(headers), app.ids.take(headers)
    app.ids.release(first)
    third = app.ids.take(headers)

    assert first == "same"
    assert second.startswith("same.")
    assert third == "same"


@pytest.fixture
def json_logging() -> Iterator[io.StringIO]:
    root = logging.getLogger()
    saved = root.handlers, root.level
    stream = io.StringIO()
    root.handlers = []
    configure_logging("info", "json", stream)
    yield stream
    root.handlers, root.level = saved


def test_json_log_lines_carry_the_access_fields(json_logging: io.StringIO) -> None:
    async def serve() -> None:
        logging.getLogger("gateway").info("Serving %d commands", 3)
        AccessLog().write("a1b2", "POST", "/v1/do/x/Y", 200, "x/Y", "-", 1.25)

    asyncio.run(serve())
    logging.getLogger().handlers[0].flush()  # as at exit: lines still held when the loop ended

    lifecycle, access = (json.loads(line) for line in json_logging.getvalue().splitlines())
    assert lifecycle["time"].endswith("Z")
    assert {key: lifecycle[key] for key in ("level", "logger", "message")} == {
        "level": "INFO",
        "logger": "gateway",
        "message": "Serving 3 commands",
    }
    assert {key: value for key, value in access.items() if key != "time"} == {
        "level": "INFO",
        "logger": "gateway.access",
        "message": "a1b2 POST /v1/do/x/Y 200 command=x/Y error=- 1.2ms",
        "request_id": "a1b2",
        "method": "POST",
        "path": "/v1/do/x/Y",
        "status": 200,
        "command": "x/Y",
        "error_code": "-",
        "duration_ms": 1.25,
    }


def test_json_log_lines_keep_the_traceback(json_logging: io.StringIO) -> None:
    try:
        raise RuntimeError("a bug")
    except RuntimeError:
        logging.getLogger("gateway").exception("internal error")

    (line,) = json_logging.getvalue().splitlines()
    entry = json.loads(line)
    assert entry["level"] == "ERROR"
    assert "RuntimeError: a bug" in entry["exception"]


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("LOG_FORMAT", "xml", "CONNECTOR_GATEWAY_LOG_FORMAT must be one of text, json, got 'xml'."),
        (
            "METRICS_NEED_KEY",
            "maybe",
            "CONNECTOR_GATEWAY_METRICS_NEED_KEY must be 1 or 0 (true or false), got 'maybe'.",
        ),
    ],
)
def test_observability_settings_refuse_bad_values(variable: str, value: str, message: str) -> None:
    with pytest.raises(SettingsError) as refused:
        Settings.from_env({f"CONNECTOR_GATEWAY_{variable}": value})

    assert str(refused.value) == message


def test_observability_settings_are_read_from_the_environment() -> None:
    settings = Settings.from_env({"CONNECTOR_GATEWAY_LOG_FORMAT": "JSON", "CONNECTOR_GATEWAY_METRICS_NEED_KEY": "true"})

    assert (settings.log_format, settings.metrics_need_key) == ("json", True)
    assert Settings.from_env(settings_environment(settings)) == settings
