"""The `connector-gateway` command: serve the manifests, check or list them, scaffold a connector, call a command.

Each subcommand's work is in a module of its own; this one reads the arguments and settings."""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import signal
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

if TYPE_CHECKING:
    from starlette.applications import Starlette

from gateway import __version__
from gateway.logs import configure_logging
from gateway.registry import load_registry, manifest_files
from gateway.scaffold import LANGUAGES, MODES
from gateway.settings import (
    API_KEY_VARIABLE,
    ENV_PREFIX,
    Settings,
    SettingsError,
    bundled_manifests,
    port,
    seconds,
    settings_environment,
    whole_number,
)

logger = logging.getLogger("gateway")

_T = TypeVar("_T")

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
  {ENV_PREFIX}MAX_BUFFERED_BODY_BYTES  request bodies held at once, all requests together
                              (default 134217728, 128 MiB); beyond: 429
  {ENV_PREFIX}MAX_STDOUT_BYTES  largest answer a connector may print (default 16777216, 16 MiB)
  {ENV_PREFIX}MAX_STDERR_LINES  connector stderr lines kept per request, for the log and spiff__logs
                              (default 100; 0: none)
  {ENV_PREFIX}MAX_STDERR_LINE_CHARS  characters kept of each stderr line (default 2000)
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


_NEW_DESCRIPTION = """\
Write a connector to start from into a directory of its own: a manifest, a program
in the chosen language and mode serving one command (NAME/Hello), a test in that
language and a README. It passes validate and runs under call as it is. Existing
files are never overwritten."""

_CALL_DESCRIPTION = """\
Run one command exactly as serve would for Arena: the same parameter checks,
environment, limits and envelope, in spawn or worker mode as its manifest says. The
answer (the version 2 envelope, or the protocol's error when the request is refused)
is printed as JSON on stdout; the connector's log lines (spiff__logs) and a line
saying why a call failed go to stderr."""

_LIST_DESCRIPTION = """\
List every command the manifest directories serve, with its mode, time limit,
manifest and parameters (type, required or default, description), then every
manifest that could not be loaded with each of its problems. Exits with status 1
when a manifest failed, as validate does."""

_NEW_EPILOG = """\
example:
  $ connector-gateway new greeter --language node --mode worker
  $ connector-gateway validate greeter
  $ connector-gateway call greeter/Hello '{"name": "Ada"}' --manifests greeter
  $ (cd greeter && node --test)

A Go scaffold is built with `go build` (standard library only) when Go is on PATH;
otherwise build it yourself: cd DIR && go build -o connector .
A shell scaffold needs jq."""

_CALL_EPILOG = f"""\
exit status: 0 on success; 1 when the request was refused (command_not_found,
missing_parameter, ...) or the answer has an error or an inner http_status of 300
or more, as Arena would fail the task; 2 for a usage error.

examples:
  $ connector-gateway call greeter/Hello '{{"name": "Ada"}}' --manifests greeter
  $ echo '{{"name": "Ada"}}' | connector-gateway call greeter/Hello --manifests greeter

Settings come from the environment as for serve ({ENV_PREFIX}TIMEOUT,
{ENV_PREFIX}MAX_STDOUT_BYTES, ...); so do the variables the manifests' env and
inherit_env read."""


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.subcommand is None:
        parser.print_help()
        return 2
    result: int = args.handler(args)
    return result


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="connector-gateway", description=_DESCRIPTION)
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
    serve.add_argument("--port", type=_flag(port), help="port to listen on (default 7004, Arena's default)")
    _add_manifest_options(serve, "serve")
    serve.add_argument(
        "--workers",
        type=_flag(lambda raw: whole_number(raw, 1)),
        default=1,
        metavar="N",
        help="gateway processes sharing the port (default 1); each has its own pools and limits",
    )
    serve.add_argument("--timeout", type=_flag(seconds), help="default time limit in seconds (default 30)")
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

    _add_new(subcommands)
    _add_call(subcommands)
    _add_list(subcommands)
    return parser


class _Parser(argparse.ArgumentParser):
    """A usage error in one line, as a setting's own error is; the full usage is one --help away."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _flag(parse: Callable[[str], _T]) -> Callable[[str], _T]:
    """A flag's type, by the same rule as its environment variable; argparse reports a refusal, exit status 2."""

    def checked(raw: str) -> _T:
        try:
            return parse(raw)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    return checked


def _add_manifest_options(parser: argparse.ArgumentParser, verb: str) -> None:
    parser.add_argument(
        "--manifests",
        metavar="DIR",
        type=Path,
        action="append",
        help=f"a manifest directory; repeat for several (default: {ENV_PREFIX}MANIFESTS, else the bundled manifests)",
    )
    parser.add_argument(
        "--with-bundled",
        action="store_true",
        help=f"{verb} the bundled manifests after the --manifests directories",
    )


def _manifest_dirs(args: argparse.Namespace) -> tuple[Path, ...] | None:
    """The --manifests directories, the bundled ones after them with --with-bundled; None if neither was given."""
    manifest_dirs = tuple(args.manifests or ())
    if args.with_bundled:
        manifest_dirs += (bundled_manifests(),)
    return manifest_dirs or None


def _add_new(subcommands: Any) -> None:
    new = subcommands.add_parser(
        "new",
        help="scaffold a working connector: manifest, program, test and README",
        description=_NEW_DESCRIPTION,
        epilog=_NEW_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    new.add_argument(
        "name",
        metavar="NAME",
        help="the connector's name, the part of each command id before the slash: letters, digits, '_', '.', '-'",
    )
    new.add_argument("--language", choices=LANGUAGES, default="python", help="the program's language (default python)")
    new.add_argument(
        "--mode",
        choices=MODES,
        default="spawn",
        help="spawn: a process per request (default); worker: long-lived processes sent one request per line",
    )
    new.add_argument("--dir", type=Path, metavar="PATH", help="the directory to write into (default ./NAME)")
    new.set_defaults(handler=_new)


def _add_call(subcommands: Any) -> None:
    call = subcommands.add_parser(
        "call",
        help="run one command as the gateway would and print its answer",
        description=_CALL_DESCRIPTION,
        epilog=_CALL_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    call.add_argument("command", metavar="CONNECTOR/COMMAND", help="the command id, as listed by list")
    call.add_argument(
        "parameters",
        metavar="PARAMETERS",
        nargs="?",
        help="the parameters, a JSON object; '-' reads them from stdin, as does leaving them out when stdin is "
        "not a terminal; otherwise {}",
    )
    _add_manifest_options(call, "also load")
    call.add_argument(
        "--timeout", type=_flag(seconds), help="time limit in seconds for commands whose manifest sets none"
    )
    call.add_argument(
        "--log-level",
        choices=["debug", "info", "warning", "error"],
        default="warning",
        help="the gateway's own log on stderr (default warning; info shows each stderr line as it comes)",
    )
    call.set_defaults(handler=_call)


def _add_list(subcommands: Any) -> None:
    listing = subcommands.add_parser(
        "list",
        help="list the commands with their parameters, and the manifests that failed; exit status 1 if any did",
        description=_LIST_DESCRIPTION,
    )
    _add_manifest_options(listing, "also list")
    listing.add_argument("--json", action="store_true", help="print one JSON object, for scripts")
    listing.set_defaults(handler=_list)


def _serve(args: argparse.Namespace) -> int:
    try:
        settings = Settings.from_env(
            host=args.host,
            port=args.port,
            manifest_dirs=_manifest_dirs(args),
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
        app = create_app(settings, reap_orphans=True)
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
        # asyncio's own loop even where uvloop is installed: uvloop spawns subprocesses with a plain fork()
        # and about 2.5 times slower, and spawn mode starts a process per request.
        loop="asyncio",
        http=OneSendHttpProtocol,
        **options,
    )


def _exit_after_shutdown(signum: int, frame: object) -> None:
    raise SystemExit(0)


def _validate(args: argparse.Namespace) -> int:
    try:
        settings = Settings.from_env()
        directories = tuple(args.directories) or settings.manifest_dirs
        registry = load_registry(directories, settings.default_timeout, max_wait=settings.admission.max_wait)
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
        for warning in failure.warnings:
            print(f"warning {failure.path}: {warning}")

    total = len(registry.manifests) + len(registry.failures)
    print(
        f"{_count(total, 'manifest')}, {_count(len(registry.commands), 'command')}, {len(registry.failures)} invalid."
    )
    return 1 if registry.failures else 0


def _new(args: argparse.Namespace) -> int:
    from gateway.scaffold import create

    return create(args.name, args.language, args.mode, args.dir, sys.stdout, sys.stderr)


def _call(args: argparse.Namespace) -> int:
    from gateway import call

    try:
        settings = Settings.from_env(
            manifest_dirs=_manifest_dirs(args), default_timeout=args.timeout, log_level=args.log_level, reload=False
        )
        stdin = sys.stdin.buffer if sys.stdin is not None else None
        body = call.read_parameters(
            args.parameters, stdin, sys.stdin is not None and sys.stdin.isatty(), settings.max_body_bytes
        )
        manifest_files(settings.manifest_dirs)  # a missing directory is a usage error, before anything runs
    except (SettingsError, NotADirectoryError) as exc:
        print(f"connector-gateway: {exc}", file=sys.stderr)
        return 2

    configure_logging(settings.log_level, settings.log_format)
    try:
        return call.run(settings, args.command, body, os.environ, sys.stdout, sys.stderr)
    except KeyboardInterrupt:
        print("connector-gateway: interrupted; the command's processes were stopped.", file=sys.stderr)
        return 130


def _list(args: argparse.Namespace) -> int:
    from gateway.listing import as_json, as_text

    try:
        settings = Settings.from_env(manifest_dirs=_manifest_dirs(args))
        registry = load_registry(settings.manifest_dirs, settings.default_timeout, max_wait=settings.admission.max_wait)
    except (SettingsError, NotADirectoryError) as exc:
        print(f"connector-gateway: {exc}", file=sys.stderr)
        return 2

    if args.json:
        print(json.dumps(as_json(registry), indent=2, ensure_ascii=False))
    else:
        print(as_text(registry), end="")
    return 1 if registry.failures else 0


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}{'' if number == 1 else 's'}"
