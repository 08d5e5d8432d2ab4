"""Greets `name` and echoes the whole request it read on stdin, so a test can see what Arena sent."""

import json
import os
import sys

request = json.load(sys.stdin)
print(f"greeting {request['name']!r}", file=sys.stderr)
json.dump(
    {
        "greeting": f"Hello, {request['name']}",
        "command": os.environ["CONNECTOR_COMMAND"],
        "received": request,
    },
    sys.stdout,
)
