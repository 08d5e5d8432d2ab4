"""Manifests: the YAML files that describe a connector, its commands and how to run them.

A manifest is checked against `manifest.schema.json` and then for what a schema
cannot say (duplicates, defaults of the wrong type, executables that do not
exist), on every part that passed the schema. Every problem is collected and
reported at once with its location.
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
# Where a value sits in a manifest: keys and list indexes, as jsonschema gives them.
Location = tuple[str | int, ...]

PYTHON_PLACEHOLDER = "{python}"
REFERENCE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
_LIMIT_FLAGS = {"cpu_seconds": "--cpu", "memory_mb": "--as", "open_files": "--nofile", "processes": "--nproc"}

# Arena gives up on a synchronous call after 45 s and may retry while the first run goes on.
ARENA_TIMEOUT = 45.0
# How long a request may wait for a run slot unless CONNECTOR_GATEWAY_MAX_WAIT says otherwise.
DEFAULT_MAX_WAIT = 10.0


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
    """A manifest that cannot be served, with every problem found in it, and the warnings it would get if valid."""

    def __init__(self, path: Path, problems: Sequence[str], warnings: Sequence[str] = ()) -> None:
        self.path = path
        self.problems = list(problems)
        self.warnings = list(warnings)
        super().__init__(str(self))

    def __str__(self) -> str:
        listed = "\n".join(f"  - {problem}" for problem in self.problems)
        text = f"Manifest '{self.path}' is invalid:\n{listed}"
        if self.warnings:
            text += "\nWarnings:\n" + "\n".join(f"  - {warning}" for warning in self.warnings)
        return text


def load_manifest(
    path: Path, default_timeout: float, environ: Mapping[str, str], max_wait: float = DEFAULT_MAX_WAIT
) -> Manifest:
    """Read and check one manifest file; raise ManifestError listing every problem.

    `environ` is the gateway's environment, where `${NAME}` references in `env` are looked up;
    `max_wait` is how long a request may wait for a run slot before its command starts.
    """
    document = _read_yaml(path)

    problems = not_json_problems(document)
    if problems:
        raise ManifestError(path, problems)
    errors = _schema_errors(document)
    if not isinstance(document, dict):
        raise ManifestError(path, _described(errors))

    # The checks beyond the schema run on every part that passed it, so that one file shows all its problems.
    builder = _Builder(path, document, default_timeout, environ, max_wait, _failed_parts(errors))
    return builder.build(_described(errors))


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
    return _described(_schema_errors(document))


def _schema_errors(document: Any) -> list[jsonschema.ValidationError]:
    return sorted(_validator().iter_errors(document), key=lambda e: list(map(str, e.absolute_path)))


def _described(errors: Sequence[jsonschema.ValidationError]) -> list[str]:
    return [f"{_location(error.absolute_path)}: {_schema_message(error)}" for error in errors]


def _failed_parts(errors: Sequence[jsonschema.ValidationError]) -> frozenset[Location]:
    """The parts of a manifest that failed the schema, each as the unit the later checks skip.

    A unit is a setting of `defaults`, a setting of one command or auth handler, or a whole
    parameter; a section that is not even of the right type is a unit of its own. A key missing
    from, or unexpected in, the top level, `defaults`, a command or an auth handler says nothing
    against the keys that are there, so it makes no unit.
    """
    failed: set[Location] = set()
    for error in errors:
        path = tuple(error.absolute_path)
        in_section = path[:1] in (("commands",), ("auths",))
        if in_section and len(path) >= 4 and path[2] == "parameters":
            failed.add(path[:4])
        elif error.validator in ("required", "additionalProperties") and (
            path in ((), ("defaults",)) or (in_section and len(path) == 2)
        ):
            continue
        else:
            failed.add(path[:3] if in_section else path[:2])
    return frozenset(failed)


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
    """Turns a document into a Manifest, checking what the schema cannot on every part that passed it."""

    def __init__(
        self,
        path: Path,
        document: dict[str, Any],
        default_timeout: float,
        environ: Mapping[str, str],
        max_wait: float,
        failed: frozenset[Location],
    ) -> None:
        self.path = path
        self.document = document
        self.default_timeout = default_timeout
        self.environ = environ
        self.max_wait = max_wait
        self.failed = failed
        self.problems: list[str] = []
        self.warnings: list[str] = []

    def build(self, schema_problems: list[str]) -> Manifest:
        connector = self._valid("connector", default="")
        defaults = self._valid("defaults", default={})
        commands = self._commands(str(connector), defaults)
        auths = self._auths(str(connector))
        if schema_problems or self.problems:
            raise ManifestError(self.path, schema_problems + self.problems, self.warnings)
        return Manifest(
            path=self.path,
            connector=connector,
            commands=commands,
            auths=auths,
            description=self.document.get("description"),
            warnings=tuple(self.warnings),
        )

    def _failed(self, location: Location) -> bool:
        """Whether the value at `location`, or a part holding it, failed the schema."""
        return any(location[:length] in self.failed for length in range(1, len(location) + 1))

    def _valid(self, key: str, default: Any) -> Any:
        return default if self._failed((key,)) else self.document.get(key, default)

    def _items(self, section: str) -> list[tuple[int, dict[str, Any]]]:
        """The entries of `commands` or `auths` that are mappings, with their indexes."""
        items = self._valid(section, default=[])
        return [(index, item) for index, item in enumerate(items) if not self._failed((section, index))]

    def _name(self, section: str, index: int, item: dict[str, Any]) -> str | None:
        return None if self._failed((section, index, "name")) else item.get("name")

    def _where(self, section: str, index: int, item: dict[str, Any]) -> str:
        name = self._name(section, index, item)
        return f"{section}[{index}]" if name is None else f"{section}[{index}] ({name})"

    def _setting_failed(self, index: int, raw: dict[str, Any], key: str) -> bool:
        """Whether the value a command takes for `key`, its own or from `defaults`, failed the schema."""
        return self._failed(("commands", index, key) if key in raw else ("defaults", key))

    def _commands(self, connector: str, defaults: dict[str, Any]) -> tuple[Command, ...]:
        commands = []
        items = self._items("commands")
        self._check_unique_names("commands", items)
        for index, raw in items:
            where = self._where("commands", index, raw)
            # A setting that failed the schema is left out, not replaced by the one under defaults.
            settings = {
                key: value for key, value in {**defaults, **raw}.items() if not self._setting_failed(index, raw, key)
            }
            argv = self._argv(
                where, settings.get("run"), settings.get("limits"), self._setting_failed(index, raw, "run")
            )
            timeout = float(settings.get("timeout", self.default_timeout))
            if not self._setting_failed(index, raw, "timeout"):
                self._check_timeout(where, timeout, settings.get("concurrency"))
            env, secret_values = self._env(where, settings.get("env", {}))
            if self._workers_without_worker_mode(index, raw, settings):
                self.problems.append(f"{where}.workers: only used with mode: worker; add it or drop workers")
            concurrency = settings.get("concurrency")
            commands.append(
                Command(
                    connector=connector,
                    name=self._name("commands", index, raw) or "",
                    source=self.path,
                    argv=argv,
                    timeout=timeout,
                    parameters=self._parameters(where, ("commands", index), raw),
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

    def _workers_without_worker_mode(self, index: int, raw: dict[str, Any], settings: dict[str, Any]) -> bool:
        worker_mode = settings.get("mode", "spawn") == "worker" or self._setting_failed(index, raw, "mode")
        return "workers" in settings and not worker_mode

    def _check_timeout(self, where: str, timeout: float, concurrency: int | None) -> None:
        """Warn of a time limit Arena may not wait for: its own, or with the wait for a run slot before it."""
        if timeout >= ARENA_TIMEOUT:
            self.warnings.append(
                f"{where}.timeout: {timeout:g} s is at or above Arena's own limit of 45 s; Arena may "
                "give up and retry while the first run goes on. Keep synchronous commands well under 45 s."
            )
            return
        # A command with its own `concurrency` may wait for its own slot, then for one of the gateway's.
        waits = 2 if concurrency else 1
        if timeout + waits * self.max_wait >= ARENA_TIMEOUT:
            waited = "twice CONNECTOR_GATEWAY_MAX_WAIT" if waits == 2 else "CONNECTOR_GATEWAY_MAX_WAIT"
            self.warnings.append(
                f"{where}.timeout: {timeout:g} s plus up to {waits * self.max_wait:g} s of waiting for a run slot "
                f"({waited}) reaches Arena's own limit of 45 s; Arena may give up on a request that waited "
                "and retry while it runs. Keep the two together under 45 s."
            )

    def _auths(self, connector: str) -> tuple[Auth, ...]:
        items = self._items("auths")
        self._check_unique_names("auths", items)
        return tuple(
            Auth(
                connector=connector,
                name=self._name("auths", index, raw) or "",
                source=self.path,
                parameters=self._parameters(self._where("auths", index, raw), ("auths", index), raw),
                description=raw.get("description"),
            )
            for index, raw in items
        )

    def _check_unique_names(self, section: str, items: list[tuple[int, dict[str, Any]]]) -> None:
        seen: dict[str, int] = {}
        for index, item in items:
            name = self._name(section, index, item)
            if name is None:
                continue
            if name in seen:
                self.problems.append(f"{section}[{index}].name: {name!r} is already used by {section}[{seen[name]}]")
            seen.setdefault(name, index)

    def _parameters(self, where: str, location: Location, raw_item: dict[str, Any]) -> tuple[Parameter, ...]:
        """The parameters of a command or auth handler; one that failed the schema is left out of the checks."""
        if self._failed((*location, "parameters")):
            return ()
        parameters = []
        seen: set[str] = set()
        for index, raw in enumerate(raw_item.get("parameters", [])):
            if self._failed((*location, "parameters", index)):
                continue
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

    def _argv(
        self, where: str, run: list[str] | None, limits: dict[str, int] | None, run_failed: bool
    ) -> tuple[str, ...]:
        if run is None:
            if not run_failed:  # reported by the schema
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
