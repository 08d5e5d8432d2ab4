"""Prometheus metrics: what every request did, and the state of the gateway's processes, at `/metrics`.

A request costs two dictionary updates here; everything else (in-flight and queued
requests, processes spawned, worker restarts, reloads) is read from the parts that
own it when the metrics are scraped. The text is Prometheus's exposition format 0.0.4.
"""

from __future__ import annotations

import bisect
import math
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

PREFIX = "connector_gateway"
# Request durations, in seconds: from a worker's sub-millisecond answer to Arena's 45 s limit.
BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 45.0)
# Requests that name no served command are counted under this label, so that a caller cannot
# grow the metrics without bound by asking for made-up commands.
NO_COMMAND = "-"
NO_ERROR = "-"


@dataclass
class Histogram:
    counts: list[int] = field(default_factory=lambda: [0] * (len(BUCKETS) + 1))
    total: float = 0.0

    def observe(self, seconds: float) -> None:
        self.counts[bisect.bisect_left(BUCKETS, seconds)] += 1
        self.total += seconds

    @property
    def count(self) -> int:
        return sum(self.counts)

    def quantile(self, q: float) -> float | None:
        """An estimate from the buckets, as Prometheus's histogram_quantile makes it; None without data."""
        count = self.count
        if count == 0:
            return None
        rank = q * count
        seen = 0
        for index, in_bucket in enumerate(self.counts):
            if seen + in_bucket >= rank and in_bucket:
                if index == len(BUCKETS):
                    return BUCKETS[-1]
                lower = BUCKETS[index - 1] if index else 0.0
                return lower + (BUCKETS[index] - lower) * (rank - seen) / in_bucket
            seen += in_bucket
        return BUCKETS[-1]


@dataclass
class CommandStats:
    """One command's requests so far, for the status page."""

    requests: int
    errors: int
    p50: float | None
    p95: float | None


class RequestMetrics:
    """Counts of requests by command, status and error code, and durations by command."""

    def __init__(self) -> None:
        self.requests: dict[tuple[str, int, str], int] = {}
        self.durations: dict[str, Histogram] = {}

    def observe(self, command: str, status: int, error_code: str, seconds: float) -> None:
        key = (command, status, error_code)
        self.requests[key] = self.requests.get(key, 0) + 1
        histogram = self.durations.get(command)
        if histogram is None:
            histogram = self.durations[command] = Histogram()
        histogram.observe(seconds)

    def command_stats(self, command: str) -> CommandStats:
        """Requests, errors (an error code, or an outer status other than 200) and latency of one command."""
        requests = errors = 0
        for (name, status, error_code), count in self.requests.items():
            if name == command:
                requests += count
                if status != 200 or error_code != NO_ERROR:
                    errors += count
        histogram = self.durations.get(command, Histogram())
        return CommandStats(requests, errors, histogram.quantile(0.5), histogram.quantile(0.95))


@dataclass
class Gauge:
    """A value read at scrape time, by label set."""

    name: str
    kind: str  # "gauge" or "counter"
    help: str
    read: Callable[[], Iterable[tuple[dict[str, str], float]]]


def render(metrics: RequestMetrics, gauges: Iterable[Gauge]) -> str:
    """Every metric in Prometheus's text format."""
    lines: list[str] = []
    name = f"{PREFIX}_requests_total"
    lines += _header(name, "counter", "Requests answered, by command, outer HTTP status and error code.")
    for (command, status, error_code), count in sorted(metrics.requests.items()):
        labels = _labels({"command": command, "status": str(status), "error_code": error_code})
        lines.append(f"{name}{labels} {count}")

    name = f"{PREFIX}_request_duration_seconds"
    lines += _header(name, "histogram", "Time from a request's arrival to its answer, by command.")
    for command, histogram in sorted(metrics.durations.items()):
        lines.extend(_histogram_lines(name, command, histogram))

    for gauge in gauges:
        lines += _header(f"{PREFIX}_{gauge.name}", gauge.kind, gauge.help)
        for label_set, value in gauge.read():
            lines.append(f"{PREFIX}_{gauge.name}{_labels(label_set)} {_number(value)}")
    return "\n".join(lines) + "\n"


def _histogram_lines(name: str, command: str, histogram: Histogram) -> Iterator[str]:
    cumulative = 0
    for bound, count in zip((*BUCKETS, math.inf), histogram.counts, strict=True):
        cumulative += count
        le = "+Inf" if bound == math.inf else _number(bound)
        yield f"{name}_bucket{_labels({'command': command, 'le': le})} {cumulative}"
    yield f"{name}_sum{_labels({'command': command})} {_number(histogram.total)}"
    yield f"{name}_count{_labels({'command': command})} {cumulative}"


def _header(name: str, kind: str, text: str) -> list[str]:
    return [f"# HELP {name} {text}", f"# TYPE {name} {kind}"]


def _labels(labels: dict[str, str]) -> str:
    if not labels:
        return ""
    inner = ",".join(f'{key}="{_escape(value)}"' for key, value in labels.items())
    return "{" + inner + "}"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _number(value: float) -> str:
    return repr(float(value)) if not float(value).is_integer() else str(int(value))


def process_gauges(state: Any, in_flight: int) -> list[Gauge]:
    """What the app's parts know of themselves, read at scrape time: `state` is the app's state."""
    pools = state.pools.every()
    tally = state.pools.tally
    admission = state.admission
    queued = admission.gateway.waiting + sum(slots.waiting for slots in admission.commands.values())
    queued += sum(pool.room.waiting for pool in pools)
    reloader = getattr(state, "reloader", None)
    gauges = [
        Gauge("requests_in_flight", "gauge", "HTTP requests being answered.", lambda: [({}, in_flight)]),
        Gauge("requests_queued", "gauge", "Requests waiting for a run slot or a worker.", lambda: [({}, queued)]),
        Gauge(
            "runs_in_progress",
            "gauge",
            "Connector runs going on, gateway-wide.",
            lambda: [({}, admission.gateway.running)],
        ),
        Gauge(
            "processes_spawned_total",
            "counter",
            "Connector processes started: one per request in spawn mode, workers in worker mode.",
            lambda: [({"mode": "spawn"}, state.runner.spawned), ({"mode": "worker"}, tally.spawned.total())],
        ),
        Gauge(
            "workers",
            "gauge",
            "Worker processes alive, by connector.",
            lambda: _workers_alive(pools),
        ),
        Gauge(
            "worker_restarts_total",
            "counter",
            "Workers that exited soon after starting and were started again after a backoff, by connector.",
            lambda: _restarts(pools, tally),
        ),
        Gauge("commands", "gauge", "Commands served.", lambda: [({}, len(state.registry.commands))]),
        Gauge(
            "manifests_failed",
            "gauge",
            "Manifests that failed to load and are not served (or served in their last good version).",
            lambda: [({}, len(state.registry.failures))],
        ),
    ]
    if reloader is not None:
        gauges += [
            Gauge(
                "manifest_reloads_total",
                "counter",
                "Reloads of the manifest directories.",
                lambda: [({}, reloader.reloads)],
            ),
            Gauge(
                "manifest_reload_failures_total",
                "counter",
                "Manifests found invalid on a reload.",
                lambda: [({}, reloader.failures)],
            ),
        ]
    return gauges


def _workers_alive(pools: list[Any]) -> list[tuple[dict[str, str], float]]:
    alive = Counter({pool.command.connector: 0 for pool in pools})
    for pool in pools:
        alive[pool.command.connector] += len(pool.workers)
    return _per_connector(alive)


def _restarts(pools: list[Any], tally: Any) -> list[tuple[dict[str, str], float]]:
    # Counted by the gateway rather than by each pool, so that a reload that replaces a pool keeps its count.
    restarts = Counter({pool.command.connector: 0 for pool in pools})
    restarts.update(tally.restarts)
    return _per_connector(restarts)


def _per_connector(counts: Counter[str]) -> list[tuple[dict[str, str], float]]:
    """One sample per connector, however many pools it has (commands with other `run` or `workers`)."""
    return [({"connector": connector}, count) for connector, count in sorted(counts.items())]
