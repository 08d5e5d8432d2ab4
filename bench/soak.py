#!/usr/bin/env python3
"""Soak the gateway with mixed load for a while, then print a reliability report.

    python bench/soak.py --duration 60 --concurrency 16
    python bench/soak.py --url http://127.0.0.1:7004 --duration 300

Without --url it starts a gateway over tests/manifests and tests/manifests-load (the
fake connector, and the fake worker in three pools), as tests/test_load.py does. A
gateway given by --url must serve those manifests with
CONNECTOR_GATEWAY_MAX_STDOUT_BYTES=65536 for every answer to be the expected one;
its process is found by its listening port, or given with --pid. Only loopback
targets are accepted. Exit status 1 when an answer was unexpected or the gateway
kept descriptors or processes after the load.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import os
import re
import sys
import tempfile
import time
import urllib.parse
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
import mixed_load
from mixed_load import Outcome, Snapshot, Target

SETTLE = 15.0


@dataclass
class Subject:
    """The gateway under load: where it listens, its process if known, and its log if this script started it."""

    target: Target
    description: str
    pid: int | None = None
    marker: str | None = None
    log: Path | None = None


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    with _subject(args) as subject:
        before = None
        if subject.pid is not None:
            before = mixed_load.warmed_up(subject.pid, subject.marker, subject.target, SETTLE)

        started = time.monotonic()
        kinds = itertools.islice(mixed_load.endless(args.seed), args.max_requests)
        outcomes = mixed_load.run_load(subject.target, kinds, args.concurrency, started + args.duration, args.timeout)
        elapsed = time.monotonic() - started

        after = None
        if subject.pid is not None and before is not None:
            after = mixed_load.rested(subject.pid, subject.marker, subject.target, SETTLE, before.holds_no_more_than)
        log = subject.log.read_text(errors="replace") if subject.log else None

    print(_report(args, subject, outcomes, elapsed, before, after, log))
    leaked = before is not None and after is not None and not after.holds_no_more_than(before)
    return 1 if leaked or any(not outcome.as_expected for outcome in outcomes) else 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=_bounded(float, 1, 3600), default=60.0, help="seconds of load (default 60)")
    parser.add_argument("--concurrency", type=_bounded(int, 1, 256), default=16, help="client threads (default 16)")
    parser.add_argument(
        "--max-requests", type=_bounded(int, 1, 10_000_000), default=1_000_000, help="stop after this many requests"
    )
    parser.add_argument("--timeout", type=_bounded(float, 1, 60), default=15.0, help="client timeout per request")
    parser.add_argument("--seed", type=int, default=1, help="seed of the random mix (default 1)")
    parser.add_argument("--url", help="a running gateway on loopback, e.g. http://127.0.0.1:7004")
    parser.add_argument("--pid", type=int, help="its process id (default: the process listening on the port)")
    return parser


def _bounded(kind: type[int] | type[float], low: float, high: float) -> Callable[[str], float]:
    def parse(text: str) -> float:
        value = kind(text)
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be between {low:g} and {high:g}, got {text}")
        return value

    return parse


@contextlib.contextmanager
def _subject(args: argparse.Namespace) -> Iterator[Subject]:
    if args.url is None:
        with tempfile.TemporaryDirectory(prefix="soak-") as workdir, mixed_load.started_gateway(Path(workdir)) as gw:
            description = "started by soak.py over tests/manifests and tests/manifests-load"
            yield Subject(gw.target, description, gw.process.pid, gw.marker, gw.log)
        return

    url = urllib.parse.urlsplit(args.url)
    if url.scheme != "http" or not url.hostname or not mixed_load.is_loopback(url.hostname):
        sys.exit(f"soak.py: --url must be http:// on a loopback address, got {args.url!r}")
    target = Target(url.hostname, url.port or 80)
    pid = args.pid if args.pid is not None else _listener(target.port)
    if pid is not None and not os.access(f"/proc/{pid}/fd", os.R_OK):
        pid = None  # another user's process: its descriptors cannot be read
    yield Subject(target, f"at {args.url}", pid)


def _listener(port: int) -> int | None:
    """The process holding the socket that listens on the port."""
    inodes = {
        f"socket:[{inode}]" for local, listening, inode in mixed_load.tcp_sockets() if local == port and listening
    }
    for entry in filter(str.isdigit, os.listdir("/proc")):
        with contextlib.suppress(OSError):
            for fd in os.listdir(f"/proc/{entry}/fd"):
                with contextlib.suppress(OSError):
                    if os.readlink(f"/proc/{entry}/fd/{fd}") in inodes:
                        return int(entry)
    return None


# ---------------------------------------------------------------- the report


def _report(
    args: argparse.Namespace,
    subject: Subject,
    outcomes: list[Outcome],
    elapsed: float,
    before: Snapshot | None,
    after: Snapshot | None,
    log: str | None,
) -> str:
    answered = [outcome for outcome in outcomes if outcome.answered]
    hangups = sum(outcome.kind.hangup is not None for outcome in outcomes)
    unanswered = [outcome for outcome in outcomes if outcome.problem and not outcome.answered]
    unexpected = [outcome for outcome in outcomes if not outcome.as_expected]
    seconds = [outcome.seconds for outcome in answered]
    host = f"{subject.target.host}:{subject.target.port}"
    lines = [
        "connector-gateway soak",
        f"  gateway             {host}, {subject.description}, pid {subject.pid or 'unknown'}",
        f"  load                {args.duration:g} s, {args.concurrency} client threads, seed {args.seed}",
        f"requests              {len(outcomes)} in {elapsed:.1f} s ({len(outcomes) / elapsed:.1f}/s)",
        f"  answered            {len(answered)}",
        f"  hang-ups sent       {hangups}",
        f"  without an answer   {len(unanswered)}",
        f"  unexpected          {len(unexpected)}",
        f"answers by status     {_counts(Counter(str(outcome.status) for outcome in answered))}",
        f"answers by code       {_counts(Counter(outcome.code or '-' for outcome in answered))}",
        f"latency (answered)    p50 {_ms(seconds, 0.5)}  p99 {_ms(seconds, 0.99)}  max {_ms(seconds, 1.0)}",
        *_by_kind(outcomes),
        *_gateway(before, after, log),
    ]
    lines += [f"  unexpected: {outcome.kind.name} {_answer(outcome)}" for outcome in unexpected[:10]]
    return "\n".join(line.rstrip() for line in lines)


def _by_kind(outcomes: list[Outcome]) -> list[str]:
    groups: dict[str, list[Outcome]] = defaultdict(list)
    for outcome in outcomes:
        groups[outcome.kind.name].append(outcome)
    lines = [f"by kind               {'sent':>6} {'p50':>9} {'p99':>9}  answers"]
    for kind in mixed_load.MIX:
        group = groups.get(kind.name, [])
        seconds = [outcome.seconds for outcome in group if outcome.answered]
        answers = _counts(Counter(_answer(outcome) for outcome in group))
        lines.append(f"  {kind.name:<19} {len(group):>6} {_ms(seconds, 0.5):>9} {_ms(seconds, 0.99):>9}  {answers}")
    return lines


def _gateway(before: Snapshot | None, after: Snapshot | None, log: str | None) -> list[str]:
    if before is None or after is None:
        return ["gateway               process unknown: no /proc readings"]
    lines = [
        f"gateway               {'start':>10} {'end':>10}",
        f"  VmRSS               {_mib(before.rss_kib):>10} {_mib(after.rss_kib):>10}",
        f"  threads             {before.threads!s:>10} {after.threads!s:>10}",
        f"  open descriptors    {len(before.descriptors):>10} {len(after.descriptors):>10}",
        f"  workers             {before.workers().total():>10} {after.workers().total():>10}",
        f"  other processes     {len(before.others()):>10} {len(after.others()):>10}",
    ]
    lines += [f"  left open: {target} x{count}" for target, count in after.opened_since(before).items()]
    lines += [
        f"  workers beyond the start: {pool} x{count}" for pool, count in (after.workers() - before.workers()).items()
    ]
    lines += [f"  left running: {process}" for pid, process in after.others().items() if pid not in before.others()]
    if log is not None:
        levels = Counter(re.findall(r"^\S+ \S+ (WARNING|ERROR|CRITICAL) ", log, flags=re.MULTILINE))
        lines.append(
            f"gateway log           {log.count(chr(10))} lines; {levels['ERROR']} ERROR, {levels['WARNING']} WARNING; "
            f"{log.count('error=caller_gone')} caller_gone, {log.count('Traceback')} tracebacks"
        )
    return lines


def _answer(outcome: Outcome) -> str:
    if outcome.problem:
        return outcome.problem[:80]
    return "hung up" if not outcome.answered else f"{outcome.status} {outcome.code or '-'}"


def _counts(counter: Counter[str]) -> str:
    return ", ".join(f"{key}: {count}" for key, count in counter.most_common())


def _ms(seconds: list[float], fraction: float) -> str:
    return f"{mixed_load.percentile(seconds, fraction) * 1000:.1f} ms" if seconds else "-"


def _mib(kib: int | None) -> str:
    return f"{kib / 1024:.1f} MiB" if kib is not None else "?"


if __name__ == "__main__":
    sys.exit(main())
