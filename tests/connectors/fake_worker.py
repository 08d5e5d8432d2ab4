#!/usr/bin/env python3
"""A worker that misbehaves on request, to exercise the gateway's worker pools.

What it does with a request is the payload's "do": echo (the default), sleep,
fail, fail-temporarily, crash, crash-loudly, deep, garbage, wrong-id, stderr,
stderr-flood, stderr-secret, stderr-remembered, long-line, not-finite, pid, escape.
It reads one line at a time, so a sleep holds up the requests sent after it. The
ids of the cancellations it was sent are in the answer to "pid".
"""

import json
import os
import sys
import time

served = 0
remembered = None  # the password of the last stderr-secret request
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
        if "say" in payload:
            sys.stderr.write(payload["say"] + "\n")
            sys.stderr.flush()
        time.sleep(payload.get("seconds", 60))
        slept = {"slept": payload.get("seconds", 60), "pid": os.getpid(), "greeting": os.environ.get("GREETING")}
        answer({**reply, "result": slept})
    elif action == "fail":
        answer({**reply, "failed": "the ledger refused", "temporary": False, "logs": ["tried the ledger"]})
    elif action == "fail-temporarily":
        answer({**reply, "failed": "the ledger is down", "temporary": True})
    elif action == "crash":
        os._exit(3)
    elif action == "crash-loudly":
        sys.stderr.write("opening the ledger\ndisk full, giving up\n")
        sys.stderr.flush()
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
    elif action == "stderr-flood":
        sys.stderr.write("".join(f"noise {number}\n" for number in range(payload.get("lines", 50_000))))
        sys.stderr.flush()
        answer({**reply, "result": {"ok": True}})
    elif action == "stderr-secret":
        global remembered
        remembered = payload.get("password")
        # Before and after its answer: a line may arrive once the gateway has the answer.
        sys.stderr.write(f"got password {payload.get('password')}\n")
        sys.stderr.flush()
        answer({**reply, "result": {"ok": True}})
        sys.stderr.write(f"done with password {payload.get('password')}\n")
        sys.stderr.flush()
    elif action == "stderr-remembered":
        sys.stderr.write(f"still thinking of {remembered}\n")
        sys.stderr.flush()
        answer({**reply, "result": {"ok": True}})
    elif action == "long-line":
        answer({**reply, "result": "x" * payload.get("bytes", 5000)})
    elif action == "not-finite":
        # What Python's json writes for NaN and the infinities, or a number too large for a double.
        sys.stdout.write(f'{{"id": "{request["id"]}", "result": {{"value": {payload.get("number")}}}}}\n')
        sys.stdout.flush()
    elif action == "escape":  # a process in a session of its own, which outlives the worker
        answer({**reply, "result": {"escaped": escape()}})
    elif action == "pid":
        answer(
            {**reply, "result": {"pid": os.getpid(), "served": served, "cancelled": cancelled, "env": dict(os.environ)}}
        )
    else:
        answer(
            {**reply, "result": {"payload": payload, "command": request["command"], "deadline": request["deadline"]}}
        )


def escape():
    """Fork a process that moves to a session of its own and sleeps; its pid once it has moved."""
    report, reported = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.setsid()
        quiet = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(quiet, fd)
        os.write(reported, b"moved\n")
        time.sleep(30)
        os._exit(0)
    os.close(reported)
    os.read(report, 64)
    os.close(report)
    return pid


for line in sys.stdin:
    message = json.loads(line)
    if "cancel" in message:
        cancelled.append(message["cancel"])
    else:
        handle(message)
