"""A connector written with connector_kit, served by the SDK's tests in both modes.

The payload's `action` picks a behaviour; every other key is ignored.
"""

from __future__ import annotations

import time
from typing import Any

from connector_kit import Context, Failure, run


def handle(payload: dict[str, Any], context: Context) -> Any:
    action = payload.get("action", "greet")
    if action == "greet":
        context.log(f"Greeting {payload['name']}")
        return {"greeting": f"Hello {payload['name']}"}
    if action == "context":
        return {
            "command": context.command,
            "request_id": context.request_id,
            "deadline": context.deadline,
            "remaining": context.remaining(),
        }
    if action == "envelope":
        body = {"id": 42}
        return {"command_response_version": 2, "command_response": {"body": body, "http_status": 201}}
    if action == "refuse":
        raise Failure("Invoice INV-7 is already paid.")
    if action == "unavailable":
        raise Failure("The ledger is down for maintenance; try again later.", temporary=True)
    if action == "crash":
        return {"ratio": 1 / len(payload.get("items", []))}
    if action == "not_json":
        return {"tags": {"a", "b"}}
    if action == "print":
        print("a stray print")
        return "printed"
    if action == "wait":
        return wait(payload, context)
    raise Failure(f"Unknown action '{action}'.")


def wait(payload: dict[str, Any], context: Context) -> dict[str, Any]:
    """Waits `seconds`, or less if the gateway cancels the request."""
    until = time.monotonic() + payload["seconds"]
    while time.monotonic() < until and not context.cancelled():
        time.sleep(0.01)
    if context.cancelled():
        context.log(f"Request {context.request_id} was cancelled")
    return {"waited": payload.get("seconds"), "label": payload.get("label")}


if __name__ == "__main__":
    run(handle)
