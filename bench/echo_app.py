"""The HTTP ceiling for the benchmark: a bare Starlette app served the way the gateway serves itself.

GET /v1/liveness answers like the gateway's liveness route; POST /echo parses the JSON body
and answers it back. No middleware, no logging, no process: only Starlette under uvicorn,
with the settings `connector-gateway serve` passes to uvicorn.run, and stock uvicorn's
connection protocol unless --joined-writes asks for the gateway's.

    python bench/echo_app.py --port 8123
"""

from __future__ import annotations

import argparse
import json
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route


async def liveness(request: Request) -> Response:
    return JSONResponse({"ok": True})


async def echo(request: Request) -> Response:
    body = json.loads(await request.body())
    return Response(json.dumps({"echo": body}, separators=(",", ":")).encode(), media_type="application/json")


app = Starlette(routes=[Route("/v1/liveness", liveness), Route("/echo", echo, methods=["POST"])])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument(
        "--joined-writes",
        action="store_true",
        help="use the gateway's connection protocol, which sends each answer in one write",
    )
    args = parser.parse_args()
    options: dict[str, Any] = {}
    if args.joined_writes:
        from gateway.server import OneSendHttpProtocol

        options["http"] = OneSendHttpProtocol
    # The same arguments as gateway/cli.py, so that loop and HTTP implementation are chosen alike;
    # stock uvicorn's connection protocol unless --joined-writes.
    uvicorn.run(
        app, host=args.host, port=args.port, log_config=None, access_log=False, timeout_graceful_shutdown=30, **options
    )


if __name__ == "__main__":
    main()
