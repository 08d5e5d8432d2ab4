#!/usr/bin/env python3
"""A worker that misbehaves on request, to exercise the gateway's worker pools.

What it does with a request is the payload's "do": echo (the default), sleep,
fail, fail-temporarily, crash, deep, garbage, wrong-id, stderr, pid. It reads one
line at a time, so a sleep holds up the requests sent after it. The ids of the
cancellations it was sent are in the answer to "pid".
"""

import json
import os
import sys
import time

served = 0
cancelled = []


def answer(message):
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


def handle(request):
    global served
    served += 1
    payload = request["payload"]
    action = payload.get("do", "echo")
    reply = {"id": request["id"]}
    if action == "sleep":
        time.sleep(payload.get("seconds", 60))
        slept = {"slept": payload.get("seconds", 60), "pid": os.getpid(), "greeting": os.environ.get("GREETING")}
        answer({**reply, "result": slept})
    elif action == "fail":
        answer({**reply, "failed": "the ledger refused", "temporary": False, "logs": ["tried the ledger"]})
    elif action == "fail-temporarily":
        answer({**reply, "failed": "the ledger is down", "temporary": True})
    elif action == "crash":
        os._exit(3)
    elif action == "deep":
        nested = "[" * 300 + "]" * 300
        sys.stdout.write(f'{{"id": "{request["id"]}", "result": {nested}}}\n')
        sys.stdout.flush()
    elif action == "garbage":
        sys.stdout.write("this is not json\n")
        sys.stdout.flush()
    elif action == "wrong-id":
        answer({"id": "nobody-asked", "result": 1})
    elif action == "stderr":
        sys.stderr.write(f"working on {payload.get('text')}\n")
        sys.stderr.flush()
        answer({**reply, "result": {"ok": True}})
    elif action == "pid":
        answer(
            {**reply, "result": {"pid": os.getpid(), "served": served, "cancelled": cancelled, "env": dict(os.environ)}}
        )
    else:
        answer(
            {**reply, "result": {"payload": payload, "command": request["command"], "deadline": request["deadline"]}}
        )


for line in sys.stdin:
    message = json.loads(line)
    if "cancel" in message:
        cancelled.append(message["cancel"])
    else:
        handle(message)
