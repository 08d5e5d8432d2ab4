"""The `connector-gateway` command: serve the manifests, or check them without serving."""

from __future__ import annotations

import argparse
import logging
import math
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from starlette.applications import Starlette

from gateway import __version__
from gateway.logs import configure_logging
from gateway.registry import load_registry, manifest_files
from gateway.settings import (
    API_KEY_VARIABLE,
    ENV_PREFIX,
    Settings,
    SettingsError,
    bundled_manifests,
    settings_environment,
)

logger = logging.getLogger("gateway")

_DESCRIPTION = """\
A connector proxy for spiff-arena. Each command is an executable in any language,
described by a YAML manifest; the gateway pipes the request to its stdin and
answers with what it prints."""

_SERVE_EPILOG = f"""\
environment variables (flags win over them):
  {ENV_PREFIX}HOST            address to listen on (default 127.0.0.1)
  {ENV_PREFIX}PORT            port to listen on (default 7004)
  {ENV_PREFIX}MANIFESTS       manifest directories, separated by ':' (default: the bundled ones)
  {ENV_PREFIX}TIMEOUT         time limit in seconds for commands whose manifest sets none (default 30)
  {ENV_PREFIX}MAX_BODY_BYTES  largest request body accepted (default 33554432, 32 MiB)
  {ENV_PREFIX}MAX_STDOUT_BYTES  largest answer a connector may print (default 16777216, 16 MiB)
  {ENV_PREFIX}MAX_RUNNING     connector runs at once, gateway-wide (default 32)
  {ENV_PREFIX}MAX_WAITING     requests that may wait for a run slot (default 64); beyond: 429
  {ENV_PREFIX}MAX_WAIT        seconds a request may wait for a run slot (default 10); then: 429
  {ENV_PREFIX}SHUTDOWN_GRACE  seconds in-flight requests may finish after SIGTERM (default 30)
  {ENV_PREFIX}LOG_LEVEL       debug, info, warning or error (default info)
  {ENV_PREFIX}LOG_FORMAT      text or json: one JSON object per log line (default text)
  {ENV_PREFIX}METRICS_NEED_KEY  1: /metrics asks for the API key too, when one is set (default 0)
  {ENV_PREFIX}RELOAD          0: do not watch the manifest directories for changes (default 1)
  {API_KEY_VARIABLE}     shared secret Arena sends in Spiff-Connector-Proxy-Api-Key;
                              when set, /v1 routes answer 401 without it"""


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.subcommand is None:
        parser.print_help()
        return 2
    result: int = args.handler(args)
    return result


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="connector-gateway", description=_DESCRIPTION)
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    subcommands = parser.add_subparsers(dest="subcommand", metavar="COMMAND")

    serve = subcommands.add_parser(
        "serve",
        help="serve the connector-proxy protocol (GET /v1/commands, POST /v1/do/...)",
        description="Serve the commands of the manifest directories over HTTP for spiff-arena.",
        epilog=_SERVE_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    serve.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port to listen on (default 7004, Arena's default)")
    serve.add_argument(
        "--manifests",
        metavar="DIR",
        type=Path,
        action="append",
        help="a manifest directory; repeat for several (default: the bundled manifests)",
    )
    serve.add_argument(
        "--with-bundled",
        action="store_true",
        help="serve the bundled manifests after the --manifests directories",
    )
    serve.add_argument(
        "--workers",
        type=int,
        default=1,
        metavar="N",
        help="gateway processes sharing the port (default 1); each has its own pools and limits",
    )
    serve.add_argument("--timeout", type=float, help="default time limit in seconds (default 30)")
    serve.add_argument(
        "--no-reload",
        dest="reload",
        action="store_false",
        default=None,
        help="do not watch the manifest directories (SIGHUP still reloads them)",
    )
    serve.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    serve.add_argument("--log-format", choices=["text", "json"], help="log lines as text (default) or JSON objects")
    serve.set_defaults(handler=_serve)

    validate = subcommands.add_parser(
        "validate",
        help="check manifests without serving; exit status 1 if any is invalid",
        description="Check every manifest in the directories and report every problem with its location.",
    )
    validate.add_argument(
        "directories",
        metavar="DIR",
        type=Path,
        nargs="*",
        help=f"manifest directories (default: {ENV_PREFIX}MANIFESTS, else the bundled manifests)",
    )
    validate.set_defaults(handler=_validate)
    return parser


def _serve(args: argparse.Namespace) -> int:
    manifest_dirs = tuple(args.manifests or ())
    if args.with_bundled:
        manifest_dirs += (bundled_manifests(),)
    try:
        settings = Settings.from_env(
            host=args.host,
            port=args.port,
            manifest_dirs=manifest_dirs or None,
            default_timeout=args.timeout,
            log_level=args.log_level,
            log_format=args.log_format,
            reload=args.reload,
        )
    except SettingsError as exc:
        print(f"connector-gateway: {exc}", file=sys.stderr)
        return 2

    configure_logging(settings.log_level, settings.log_format)
    if settings.exposed_without_key:
        logger.warning(
            "Listening on %s without %s: anyone who can reach this address can run every command, "
            "and the bundled http connectors fetch any URL they are given. Set %s.",
            settings.host,
            API_KEY_VARIABLE,
            API_KEY_VARIABLE,
        )

    from gateway.app import create_app

    try:
        if args.workers > 1:
            manifest_files(settings.manifest_dirs)  # each process loads them; a missing directory stops here
            return _serve_processes(settings, args.workers)
        app = create_app(settings)
    except NotADirectoryError as exc:
        logger.error("%s", exc)
        return 2
    _run_uvicorn(settings, app)
    return 0


def _serve_processes(settings: Settings, processes: int) -> int:
    """Several gateway processes on one port: each builds its app from the environment, set here."""
    os.environ.update(settings_environment(settings))
    _run_uvicorn(settings, "gateway.app:app_from_environment", factory=True, workers=processes)
    return 0


def _run_uvicorn(settings: Settings, app: Starlette | str, **options: Any) -> None:
    import uvicorn

    from gateway.server import OneSendHttpProtocol

    # uvicorn drains and shuts down on SIGTERM, then raises the signal again under the handler it found
    # installed: this one turns that into a clean exit, status 0, as service managers expect.
    signal.signal(signal.SIGTERM, _exit_after_shutdown)
    uvicorn.run(
        app,
        host=settings.host,
        port=settings.port,
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=math.ceil(settings.shutdown_grace),
        http=OneSendHttpProtocol,
        **options,
    )


def _exit_after_shutdown(signum: int, frame: object) -> None:
    raise SystemExit(0)


def _validate(args: argparse.Namespace) -> int:
    try:
        settings = Settings.from_env()
        directories = tuple(args.directories) or settings.manifest_dirs
        registry = load_registry(directories, settings.default_timeout)
    except (SettingsError, NotADirectoryError) as exc:
        print(f"connector-gateway: {exc}", file=sys.stderr)
        return 2

    for manifest in registry.manifests:
        print(f"ok      {manifest.path}: {_count(len(manifest.commands), 'command')}")
        for warning in manifest.warnings:
            print(f"warning {manifest.path}: {warning}")
    for failure in registry.failures:
        print(f"error   {failure.path}:")
        for problem in failure.problems:
            print(f"  - {problem}")

    total = len(registry.manifests) + len(registry.failures)
    print(
        f"{_count(total, 'manifest')}, {_count(len(registry.commands), 'command')}, {len(registry.failures)} invalid."
    )
    return 1 if registry.failures else 0


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}{'' if number == 1 else 's'}"
