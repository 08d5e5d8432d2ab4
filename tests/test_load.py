"""Thousands of mixed requests against the gateway as a real server: each one answered, nothing left behind.

The mix runs connectors in both modes: a process per request, and pools of workers.
"""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

from conftest import Protocol
from mixed_load import MIX, RESTING_WORKERS, Outcome, planned, rested, run_load, started_gateway, warmed_up

REQUESTS = 2000
CONCURRENCY = 16
CLIENT_TIMEOUT = 15.0
# The load stops by itself after this long, sent or not; it takes a fraction of it.
LOAD_BOUND = 180.0
SETTLE = 15.0


def test_mixed_load_is_answered_and_leaks_nothing(tmp_path: Path, protocol: Protocol) -> None:
    with started_gateway(tmp_path) as gateway:
        pid, marker = gateway.process.pid, gateway.marker
        before = warmed_up(pid, marker, gateway.target, CLIENT_TIMEOUT)

        deadline = time.monotonic() + LOAD_BOUND
        outcomes = run_load(gateway.target, planned(REQUESTS, seed=7), CONCURRENCY, deadline, CLIENT_TIMEOUT)

        after = rested(pid, marker, gateway.target, SETTLE, until=lambda snapshot: snapshot.holds_no_more_than(before))
        assert gateway.process.poll() is None, "the gateway exited under load"
    log = gateway.log.read_text()

    assert len(outcomes) == REQUESTS, f"{len(outcomes)} of {REQUESTS} requests were sent within {LOAD_BOUND:g} s"
    unexpected = [_describe(outcome) for outcome in outcomes if not outcome.as_expected]
    assert unexpected == [], f"{len(unexpected)} unexpected outcomes, the first: {unexpected[:5]}"
    for outcome in outcomes:
        if outcome.answered and outcome.kind.path.startswith("/v1/do/"):
            protocol.validate_answer(outcome.status, outcome.answer)
    assert {(outcome.status, outcome.code) for outcome in outcomes} == {(kind.status, kind.code) for kind in MIX}
    assert "command=fake/Sleep error=caller_gone" in log, "no hang-up reached the gateway while its connector ran"
    assert "command=worker/AloneSlow error=caller_gone" in log, "no hang-up reached the gateway while a worker ran"
    assert "command=worker/Shared error=caller_gone" in log, "no hang-up reached the gateway while a worker ran"
    assert "Traceback" not in log
    assert "internal_error" not in log

    # Only the workers are left, as many in each pool as before the load: a spawned connector, a worker
    # replaced but left running, a pool grown past its size or a zombie would show here.
    assert after.others() == before.others() == {}
    assert after.workers() == before.workers() == RESTING_WORKERS
    assert after.opened_since(before) == Counter()
    assert len(after.descriptors) == len(before.descriptors)


def _describe(outcome: Outcome) -> tuple[str, int | None, str | None, str | None]:
    return outcome.kind.name, outcome.status, outcome.code, outcome.problem
