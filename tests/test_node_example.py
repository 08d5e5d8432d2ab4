"""The Node example connector's own suite (`node --test` in examples/node-connector).

It covers the connector alone and under this gateway, which it starts with the
Python running these tests.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parent.parent
EXAMPLE = REPOSITORY / "examples" / "node-connector"


def test_node_example_suite_passes() -> None:
    node = shutil.which("node")
    assert node is not None, (
        "node is not on PATH; the Node example's suite needs Node 20 or later (.ci/run installs it)"
    )
    env = {
        **os.environ,
        "GATEWAY_PYTHON": sys.executable,
        # The gateway module is found in this checkout even when it is not installed.
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPOSITORY), os.environ.get("PYTHONPATH")])),
    }

    result = subprocess.run(
        [node, "--test"],
        cwd=EXAMPLE,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )

    assert result.returncode == 0, f"node --test exited {result.returncode}:\n{result.stdout}\n{result.stderr}"
