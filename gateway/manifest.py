"""Manifests: the YAML files that describe a connector, its commands and how to run them.

A manifest is checked against `manifest.schema.json` and then for what a schema
cannot say (duplicates, defaults of the wrong type, executables that do not
exist). Every problem is collected and reported at once with its location.
"""

from __future__ import annotations

import datetime
import json
import math
import os
import pwd
import re
import shutil
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache, cached_property
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import jsonschema
import yaml

from gateway import schemas
from gateway.params import ParamType, json_type_name, matches_type
from gateway.redact import Redactor

SpiffKeys = Literal["all", "none"] | frozenset[str]

PYTHON_PLACEHOLDER = "{python}"
REFERENCE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
_LIMIT_FLAGS = {"cpu_seconds": "--cpu", "memory_mb": "--as", "open_files": "--nofile", "processes": "--nproc"}

# Arena gives up on a synchronous call after 45 s and may retry while the first run goes on.
ARENA_TIMEOUT = 45.0


@dataclass(frozen=True)
class Parameter:
    id: str
    type: ParamType
    required: bool = False
    description: str | None = None
    has_default: bool = False
    default: Any = None
    secret: bool = False
    # A JSON Schema (Draft 2020-12) the value must satisfy, and its validator, compiled at load.
    schema: Mapping[str, Any] | None = None
    validator: schemas.Validator | None = field(default=None, repr=False, compare=False)

    def describe(self) -> dict[str, Any]:
        """The parameter as listed by discovery: the protocol's fields, then descriptive ones."""
        described: dict[str, Any] = {"id": self.id, "type": self.type, "required": self.required}
        if self.description is not None:
            described["description"] = self.description
        if self.has_default:
            described["default"] = self.default
        if self.schema is not None:
            described["schema"] = self.schema
        return described


@dataclass(frozen=True, kw_only=True)
class Listed:
    """What discovery lists of a command or an auth handler: `connector/name` and its parameters."""

    connector: str
    name: str
    source: Path
    parameters: tuple[Parameter, ...] = ()
    description: str | None = None

    @property
    def id(self) -> str:
        return f"{self.connector}/{self.name}"

    def describe(self) -> dict[str, Any]:
        described: dict[str, Any] = {"id": self.id, "parameters": [p.describe() for p in self.parameters]}
        if self.description is not None:
            described["description"] = self.description
        return described


@dataclass(frozen=True)
class RunAs:
    name: str
    uid: int
    gid: int


@dataclass(frozen=True)
class WorkerSettings:
    size: int = 1
    concurrency: int = 1
    max_requests: int = 10_000
    start: Literal["lazy", "eager"] = "lazy"


@dataclass(frozen=True, kw_only=True)
class Command(Listed):
    argv: tuple[str, ...]
    timeout: float
    # Resolved values, credentials among them: kept out of repr so that no log line can show them.
    env: Mapping[str, str] = field(default_factory=dict, repr=False)
    secret_values: tuple[str, ...] = field(default=(), repr=False)
    inherit_env: tuple[str, ...] = ()
    spiff_keys: SpiffKeys = "all"
    run_as: RunAs | None = None
    concurrency: int | None = None
    queue: int = 0
    workers: WorkerSettings | None = None  # set in worker mode

    @property
    def workdir(self) -> Path:
        return self.source.parent

    @cached_property
    def redact(self) -> Redactor:
        """Hides the command's own secrets (those its environment resolved) wherever text is shown."""
        return Redactor(self.secret_values)

    @cached_property
    def pool_key(self) -> tuple[object, ...]:
        """Commands with the same key share one worker pool: the same program, started the same way."""
        return (self.source, self.argv, tuple(sorted(self.env.items())), self.inherit_env, self.run_as, self.workers)


@dataclass(frozen=True, kw_only=True)
class Auth(Listed):
    """An authentication handler, listed by /v1/auths."""


@dataclass(frozen=True)
class Manifest:
    path: Path
    connector: str
    commands: tuple[Command, ...]
    auths: tuple[Auth, ...] = ()
    description: str | None = None
    warnings: tuple[str, ...] = ()


class ManifestError(Exception):
    """A manifest that cannot be served, with every problem found in it."""

    def __init__(self, path: Path, problems: Sequence[str]) -> None:
        self.path = path
        self.problems = list(problems)
        super().__init__(str(self))

    def __str__(self) -> str:
        listed = "\n".join(f"  - {problem}" for problem in self.problems)
        return f"Manifest '{self.path}' is invalid:\n{listed}"


def load_manifest(path: Path, default_timeout: float, environ: Mapping[str, str]) -> Manifest:
    """Read and check one manifest file; raise ManifestError listing every problem.

    `environ` is the gateway's environment, where `${NAME}` references in `env` are looked up.
    """
    document = _read_yaml(path)

    problems = not_json_problems(document) or schema_problems(document)
    if problems:
        raise ManifestError(path, problems)

    return _Builder(path, document, default_timeout, environ).build()


def manifest_schema() -> dict[str, Any]:
    return dict(_schema())


@cache
def _schema() -> dict[str, Any]:
    text = resources.files("gateway").joinpath("manifest.schema.json").read_text(encoding="utf-8")
    schema: dict[str, Any] = json.loads(text)
    return schema


@cache
def _validator() -> jsonschema.Draft202012Validator:
    # Formats checked, so that a parameter's `pattern` must be a regular expression.
    return jsonschema.Draft202012Validator(_schema(), format_checker=schemas.FORMAT_CHECKER)


def schema_problems(document: Any) -> list[str]:
    errors = sorted(_validator().iter_errors(document), key=lambda e: list(map(str, e.absolute_path)))
    return [f"{_location(error.absolute_path)}: {_schema_message(error)}" for error in errors]


def not_json_problems(document: Any, path: tuple[str | int, ...] = ()) -> list[str]:
    """Values YAML reads that JSON has no word for (dates, binary, sets): they could not be listed or sent."""
    if isinstance(document, dict):
        problems = []
        for key, value in document.items():
            if not isinstance(key, str):
                problems.append(f"{_location(path)}: the key {key!r} is not a string; quote it")
            problems += not_json_problems(value, (*path, str(key)))
        return problems
    if isinstance(document, list):
        return [problem for index, item in enumerate(document) for problem in not_json_problems(item, (*path, index))]
    if isinstance(document, float) and not math.isfinite(document):
        return [f"{_location(path)}: {document!r} is not a JSON number"]
    if document is None or isinstance(document, str | int | float | bool):
        return []
    if isinstance(document, datetime.date):
        written = document.isoformat(sep=" ") if isinstance(document, datetime.datetime) else document.isoformat()
        return [f"{_location(path)}: YAML reads {written} as a date, and JSON has no dates; quote it: '{written}'"]
    return [f"{_location(path)}: a {type(document).__name__} is not a JSON value"]


def _schema_message(error: jsonschema.ValidationError) -> str:
    if error.validator == "pattern" and isinstance(error.instance, str):
        return _pattern_message(error.instance, str(error.validator_value))
    return error.message


def _pattern_message(value: str, pattern: str) -> str:
    definitions = _schema()["$defs"]
    if pattern == definitions["name"]["pattern"]:
        return f"{value!r} is not an allowed name (letters, digits, '_', '.' and '-', up to 100, no '..')"
    if pattern == definitions["parameter"]["properties"]["id"]["pattern"]:
        if value.startswith("spiff__"):
            return f"{value!r} is reserved for Arena's own keys"
        return f"{value!r} is not an allowed parameter id (letters, digits and '_', not starting with a digit)"
    if pattern == definitions["env_name"]["pattern"]:
        return f"{value!r} is not a valid environment variable name"
    return f"{value!r} does not match {pattern!r}"


def _location(path: Sequence[str | int] | Any) -> str:
    location = ""
    for part in path:
        location += f"[{part}]" if isinstance(part, int) else (f".{part}" if location else str(part))
    return location or "(top level)"


class _UniqueKeyLoader(yaml.SafeLoader):
    """A safe loader that refuses a key written twice in one mapping instead of keeping the last."""


def _construct_unique_mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node)
        if key in seen:
            line = key_node.start_mark.line + 1
            raise yaml.constructor.ConstructorError(None, None, f"key {key!r} appears twice (line {line})")
        seen.add(key)
    return loader.construct_mapping(node)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_unique_mapping)


def _read_yaml(path: Path) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ManifestError(path, [f"cannot be read: {exc}"]) from exc
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        raise ManifestError(path, [f"is not valid YAML: {_yaml_message(exc)}"]) from exc


def _yaml_message(exc: yaml.YAMLError) -> str:
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or str(exc)
    if mark is None:
        return str(problem)
    return f"{problem} at line {mark.line + 1}, column {mark.column + 1}"


class _Builder:
    """Turns a schema-valid document into a Manifest, collecting what the schema cannot check."""

    def __init__(
        self, path: Path, document: dict[str, Any], default_timeout: float, environ: Mapping[str, str]
    ) -> None:
        self.path = path
        self.document = document
        self.default_timeout = default_timeout
        self.environ = environ
        self.problems: list[str] = []
        self.warnings: list[str] = []

    def build(self) -> Manifest:
        connector = self.document["connector"]
        defaults = self.document.get("defaults", {})
        commands = self._commands(connector, defaults)
        auths = self._auths(connector)
        if self.problems:
            raise ManifestError(self.path, self.problems)
        return Manifest(
            path=self.path,
            connector=connector,
            commands=commands,
            auths=auths,
            description=self.document.get("description"),
            warnings=tuple(self.warnings),
        )

    def _commands(self, connector: str, defaults: dict[str, Any]) -> tuple[Command, ...]:
        commands = []
        self._check_unique_names("commands", self.document["commands"])
        for index, raw in enumerate(self.document["commands"]):
            where = f"commands[{index}] ({raw['name']})"
            settings = {**defaults, **raw}
            argv = self._argv(where, settings.get("run"), settings.get("limits"))
            timeout = float(settings.get("timeout", self.default_timeout))
            if timeout >= ARENA_TIMEOUT:
                self.warnings.append(
                    f"{where}.timeout: {timeout:g} s is at or above Arena's own limit of 45 s; Arena may "
                    "give up and retry while the first run goes on. Keep synchronous commands well under 45 s."
                )
            env, secret_values = self._env(where, settings.get("env", {}))
            if "workers" in settings and settings.get("mode", "spawn") != "worker":
                self.problems.append(f"{where}.workers: only used with mode: worker; add it or drop workers")
            concurrency = settings.get("concurrency")
            commands.append(
                Command(
                    connector=connector,
                    name=raw["name"],
                    source=self.path,
                    argv=argv,
                    timeout=timeout,
                    parameters=self._parameters(where, raw.get("parameters", [])),
                    description=raw.get("description"),
                    env=env,
                    secret_values=secret_values,
                    inherit_env=tuple(settings.get("inherit_env", ())),
                    spiff_keys=_spiff_keys(settings.get("spiff_keys", "all")),
                    run_as=self._run_as(where, settings.get("user")),
                    concurrency=concurrency,
                    queue=settings.get("queue", 2 * concurrency if concurrency else 0),
                    workers=_worker_settings(settings),
                )
            )
        return tuple(commands)

    def _auths(self, connector: str) -> tuple[Auth, ...]:
        raw_auths = self.document.get("auths", [])
        self._check_unique_names("auths", raw_auths)
        return tuple(
            Auth(
                connector=connector,
                name=raw["name"],
                source=self.path,
                parameters=self._parameters(f"auths[{index}] ({raw['name']})", raw.get("parameters", [])),
                description=raw.get("description"),
            )
            for index, raw in enumerate(raw_auths)
        )

    def _check_unique_names(self, section: str, items: list[dict[str, Any]]) -> None:
        seen: dict[str, int] = {}
        for index, item in enumerate(items):
            name = item["name"]
            if name in seen:
                self.problems.append(f"{section}[{index}].name: {name!r} is already used by {section}[{seen[name]}]")
            seen.setdefault(name, index)

    def _parameters(self, where: str, raw_parameters: list[dict[str, Any]]) -> tuple[Parameter, ...]:
        parameters = []
        seen: set[str] = set()
        for index, raw in enumerate(raw_parameters):
            at = f"{where}.parameters[{index}] ({raw['id']})"
            if raw["id"] in seen:
                self.problems.append(f"{at}.id: parameter {raw['id']!r} is declared twice")
            seen.add(raw["id"])
            param_type, validator = self._typing(at, raw)
            parameter = Parameter(
                id=raw["id"],
                type=param_type,
                required=raw.get("required", False),
                description=raw.get("description"),
                has_default="default" in raw,
                default=raw.get("default"),
                secret=raw.get("secret", False),
                schema=raw.get("schema"),
                validator=validator,
            )
            self._check_default(at, parameter)
            parameters.append(parameter)
        return tuple(parameters)

    def _typing(self, at: str, raw: dict[str, Any]) -> tuple[ParamType, schemas.Validator | None]:
        """The scalar type listed to Arena, and the validator of the parameter's schema if it has one.

        With a schema, the scalar type follows from the schema's `type`; a `type` written beside it
        must be that same one.
        """
        written: ParamType | None = raw.get("type")
        schema: dict[str, Any] | None = raw.get("schema")
        if schema is None:
            if written is None:
                self.problems.append(f"{at}: needs a 'type' (str, int, bool or any) or a 'schema'")
            return written or "any", None

        problems = schemas.load_problems(schema)
        self.problems.extend(f"{at}.schema{location}: {message}" for location, message in problems)
        unknown = schemas.unknown_keywords(schema)
        self.warnings.extend(f"{at}.schema{location}: {message}" for location, message in unknown)
        derived = schemas.scalar_type(schema)
        if written is not None and written != derived:
            self.problems.append(
                f"{at}.type: {written!r} contradicts the schema, whose type {schema.get('type', '(none)')!r} "
                f"is listed to Arena as {derived!r}; drop 'type', which follows from the schema"
            )
        return derived, None if problems else schemas.compile_schema(schema)

    def _check_default(self, at: str, parameter: Parameter) -> None:
        if not parameter.has_default:
            return
        if parameter.required:
            self.problems.append(f"{at}.default: a required parameter cannot have a default; drop one of them")
        elif parameter.default is None:
            self.problems.append(f"{at}.default: null is not a default (null counts as absent); drop the line")
        elif parameter.validator is not None:
            problems = schemas.value_problems(parameter.validator, parameter.default, parameter.secret)
            self.problems.extend(
                f"{at}.default{path}: {message}; a default must satisfy the parameter's schema"
                for path, message in problems
            )
        elif parameter.schema is None and not matches_type(parameter.default, parameter.type):
            self.problems.append(
                f"{at}.default: must be a {parameter.type}, got {json_type_name(parameter.default)} "
                f"{parameter.default!r}"
            )

    def _argv(self, where: str, run: list[str] | None, limits: dict[str, int] | None) -> tuple[str, ...]:
        if run is None:
            self.problems.append(f"{where}.run: missing; set it on the command or under defaults")
            return ()
        for index, argument in enumerate(run):
            if REFERENCE.search(argument):
                self.problems.append(
                    f"{where}.run[{index}]: {argument!r}: references are not expanded in run, where any user "
                    "of the machine could read them; pass the value through env instead"
                )
        executable = _resolve_executable(run[0], self.path.parent)
        if isinstance(executable, _Unresolved):
            self.problems.append(f"{where}.run[0]: {executable.reason}")
            return ()
        return (*self._limits_prefix(where, limits), executable, *run[1:])

    def _limits_prefix(self, where: str, limits: dict[str, int] | None) -> tuple[str, ...]:
        """Resource limits are set by prlimit, which then executes the command: no code runs between fork and exec."""
        if not limits:
            return ()
        prlimit = shutil.which("prlimit")
        if prlimit is None:
            self.problems.append(f"{where}.limits: the prlimit program (util-linux) was not found on PATH")
            return ()
        flags = []
        for name, value in limits.items():
            amount = str(value * 1024 * 1024 if name == "memory_mb" else value)
            if name == "cpu_seconds":  # SIGXCPU at the limit, so the process can say why; SIGKILL a second later
                amount = f"{value}:{value + 1}"
            flags.append(f"{_LIMIT_FLAGS[name]}={amount}")
        return (prlimit, *flags, "--")

    def _env(self, where: str, raw: dict[str, str]) -> tuple[dict[str, str], tuple[str, ...]]:
        """Expand ${NAME} from the gateway's environment; what was expanded is secret."""
        env: dict[str, str] = {}
        secrets: list[str] = []
        for name, value in raw.items():
            for reference in REFERENCE.findall(value):
                if reference not in self.environ:
                    self.problems.append(
                        f"{where}.env.{name}: ${{{reference}}} is not set in the gateway's environment"
                    )
                elif self.environ[reference]:
                    secrets.append(self.environ[reference])
            env[name] = REFERENCE.sub(lambda match: self.environ.get(match.group(1), ""), value)
        return env, tuple(secrets)

    def _run_as(self, where: str, user: str | int | None) -> RunAs | None:
        if user is None:
            return None
        try:
            entry = pwd.getpwuid(user) if isinstance(user, int) else pwd.getpwnam(user)
        except KeyError:
            self.problems.append(f"{where}.user: no user {user!r} exists on this machine")
            return None
        if os.geteuid() != 0 and entry.pw_uid != os.geteuid():
            self.problems.append(
                f"{where}.user: running as {entry.pw_name!r} needs the gateway to run as root; "
                "drop the setting or start the gateway as root"
            )
            return None
        return RunAs(entry.pw_name, entry.pw_uid, entry.pw_gid)


@dataclass(frozen=True)
class _Unresolved:
    reason: str


def _resolve_executable(name: str, base: Path) -> str | _Unresolved:
    """Resolve argv[0] once, at load time, to an absolute path that can be executed."""
    if name == PYTHON_PLACEHOLDER:
        return sys.executable
    if "/" not in name:
        found = shutil.which(name)
        return _past_shim(found, name) if found else _Unresolved(f"executable {name!r} was not found on PATH")
    path = (base / name).resolve()
    if not path.is_file():
        return _Unresolved(f"executable {name!r} does not exist (looked for {path})")
    if not os.access(path, os.X_OK):
        return _Unresolved(f"{name!r} is not executable; run: chmod +x {path}")
    return str(path)


# What each interpreter says its real binary is, for version managers' shims (pyenv, asdf, nodenv, ...).
_REAL_BINARY = {"python": ("-c", "import sys; print(sys.executable)"), "node": ("-p", "process.execPath")}


def _past_shim(found: str, name: str) -> str:
    """The interpreter behind a version manager's shim: a shim costs tens of milliseconds on every start."""
    kind = "python" if name.startswith("python") else name
    if "/shims/" not in found or kind not in _REAL_BINARY:
        return found
    try:
        real = subprocess.run(
            [found, *_REAL_BINARY[kind]], capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return found
    return real if real and os.access(real, os.X_OK) else found


def _worker_settings(settings: dict[str, Any]) -> WorkerSettings | None:
    if settings.get("mode", "spawn") != "worker":
        return None
    return WorkerSettings(**settings.get("workers", {}))


def _spiff_keys(raw: str | list[str]) -> SpiffKeys:
    if raw == "all":
        return "all"
    if raw == "none":
        return "none"
    return frozenset(raw)
