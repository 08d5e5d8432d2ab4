"""Spawn-mode echo connector for the benchmark: answers with the JSON object it read on stdin."""

import json
import sys

request = json.load(sys.stdin)
sys.stdout.write(json.dumps({"echo": request}))
