"""Worker-mode echo connector for the benchmark: one JSON request per line in, one answer per line out.

Answers are written as soon as each request is read; several may be in flight at once.
"""

import json
import sys


def main() -> None:
    out = sys.stdout
    for line in sys.stdin:
        request = json.loads(line)
        if "cancel" in request:
            continue  # nothing to stop: every answer is immediate
        out.write(json.dumps({"id": request["id"], "result": {"echo": request["payload"]}}) + "\n")
        out.flush()


main()
