"""What isolation costs per spawned connector: plain, as another user, under prlimit, and both.

Runs each variant of one tiny connector (`/bin/true` by default) through the gateway's own
runner, sequentially, and prints the spawn-and-reap rate and the median time per run.
Running as another user needs root; that variant is left out otherwise.

    python bench/spawn_cost.py [--runs 300] [--executable /bin/true]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import sys
import time
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPOSITORY))

from gateway.manifest import Command, RunAs  # noqa: E402
from gateway.redact import Redactor  # noqa: E402
from gateway.runner import Limits, Runner  # noqa: E402


def variants(executable: str) -> dict[str, Command]:
    base = {"connector": "bench", "source": REPOSITORY / "bench" / "spawn.yaml", "timeout": 10.0}
    prlimit = shutil.which("prlimit")
    limited = (prlimit, "--cpu=5:6", "--nofile=256", "--as=1073741824", "--") if prlimit else None
    found = {"plain": Command(name="Plain", argv=(executable,), **base)}
    if limited:
        found["prlimit"] = Command(name="Limited", argv=(*limited, executable), **base)
    if os.geteuid() == 0:
        nobody = RunAs("nobody", 65534, 65534)
        found["another user"] = Command(name="User", argv=(executable,), run_as=nobody, **base)
        if limited:
            found["another user + prlimit"] = Command(name="Both", argv=(*limited, executable), run_as=nobody, **base)
    return found


async def measure(runner: Runner, command: Command, runs: int) -> list[float]:
    durations = []
    for number in range(runs):
        started = time.perf_counter()
        finished = await runner.run(command, b"{}", f"bench-{number}", Redactor())
        durations.append(time.perf_counter() - started)
        assert finished.returncode == 0, finished
    return durations


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=300, help="runs per variant (default 300)")
    parser.add_argument("--executable", default="/bin/true", help="what to spawn (default /bin/true)")
    args = parser.parse_args()

    runner = Runner(Limits(), environ={})
    print(f"{'variant':<24} {'runs/s':>8} {'median ms':>10} {'p99 ms':>8}")
    for name, command in variants(args.executable).items():
        asyncio.run(measure(runner, command, 20))  # warm-up
        durations = asyncio.run(measure(runner, command, args.runs))
        rate = len(durations) / sum(durations)
        median = statistics.median(durations) * 1000
        p99 = sorted(durations)[int(len(durations) * 0.99) - 1] * 1000
        print(f"{name:<24} {rate:>8.0f} {median:>10.2f} {p99:>8.2f}")


if __name__ == "__main__":
    main()
