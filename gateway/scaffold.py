"""`connector-gateway new`: a working connector to start from, in Python, Node, Go or shell.

A scaffold is a manifest, an executable in spawn or worker mode, a test in the
connector's own language and a README, made from the templates in
`gateway/templates`. It depends on nothing outside its directory.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
from dataclasses import dataclass
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import TextIO

import yaml

from gateway.manifest import manifest_schema

LANGUAGES = ("python", "node", "go", "shell")
MODES = ("spawn", "worker")
TEMPLATE_SUFFIX = ".tmpl"
# Files the templates cannot be named as: package data skips names that start with a dot.
_RENAMED = {"gitignore": ".gitignore"}
_EXECUTABLES = frozenset({"connector.py", "connector.js", "connector.sh", "test.sh"})
GO_BINARY = "connector"
GO_BUILD = ("go", "build", "-buildvcs=false", "-o", GO_BINARY, ".")


class ScaffoldError(Exception):
    """A scaffold that cannot be made; `status` is the exit status to end with (2: a usage error)."""

    def __init__(self, message: str, status: int = 1) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Language:
    title: str
    run: str  # the manifest's `run`, as YAML
    test: str  # the command that runs the scaffold's own test, in its directory
    files: tuple[tuple[str, str], ...]  # each file made, and what it is for


_LANGUAGES = {
    "python": Language(
        title="Python",
        run='["{python}", connector.py]   # {python}: the Python that runs the gateway',
        test="python3 -m pytest",
        files=(("connector.py", "the program"), ("test_connector.py", "its tests, for pytest")),
    ),
    "node": Language(
        title="Node",
        run="[node, connector.js]",
        test="node --test",
        files=(
            ("connector.js", "the program"),
            ("connector.test.js", "its tests, for node --test"),
            ("package.json", "marks the files as CommonJS; `npm test` runs the tests"),
        ),
    ),
    "go": Language(
        title="Go",
        run=f"[./{GO_BINARY}]   # built by: go build -o {GO_BINARY} .",
        test="go test",
        files=(
            ("main.go", f"the program, built into ./{GO_BINARY}"),
            ("main_test.go", "its tests, for go test"),
            ("go.mod", "the module; the standard library only"),
            (".gitignore", "leaves the built binary out of version control"),
        ),
    ),
    "shell": Language(
        title="shell (with jq)",
        run="[./connector.sh]",
        test="sh test.sh",
        files=(("connector.sh", "the program: sh and jq"), ("test.sh", "its tests")),
    ),
}

_MODE_SETTINGS = {
    "spawn": "  # Spawn mode (the default): each request starts the program once.\n",
    "worker": (
        "  # Worker mode: a pool of long-lived processes, each sent one request per line of stdin.\n"
        "  mode: worker\n"
        "  workers: {size: 1, concurrency: 1}\n"
    ),
}

_MODE_TEXT = {
    "spawn": (
        "In spawn mode the gateway starts the program for every request: it reads the\n"
        "parameters as one JSON object on stdin and prints its answer on stdout; each\n"
        "line it writes to stderr is a log line."
    ),
    "worker": (
        "In worker mode the gateway keeps the program running and sends it one request\n"
        "per line of stdin; the program answers each on one line of stdout, with the\n"
        "request's id and its log lines. Raise `workers.size` in the manifest for more\n"
        "processes."
    ),
}


@dataclass(frozen=True)
class Scaffold:
    """The files of one connector to start from, not written yet."""

    name: str
    language: str
    mode: str
    directory: Path
    files: dict[str, str]  # file name in `directory` -> content

    @property
    def command_id(self) -> str:
        return f"{self.name}/Hello"

    def paths(self) -> list[Path]:
        return [self.directory / name for name in self.files]


def check_name(name: str) -> None:
    """Refuse a connector name the manifest format would refuse."""
    pattern = manifest_schema()["$defs"]["name"]["pattern"]
    if not re.fullmatch(pattern, name):
        raise ScaffoldError(
            f"{name!r} is not an allowed connector name: use 1 to 100 letters, digits, '_', '.' or '-', "
            "starting with a letter or digit, without '..'.",
            status=2,
        )


def plan(name: str, language: str, mode: str, directory: Path) -> Scaffold:
    """The scaffold's files, made from the templates; raise ScaffoldError for a name that cannot be used."""
    check_name(name)
    spec = _LANGUAGES[language]
    values = {
        "connector": name,
        "language": spec.title,
        "run": spec.run,
        "mode": _MODE_SETTINGS[mode],
    }
    templates = resources.files("gateway") / "templates"
    files = {
        "manifest.yaml": _fill(templates / "manifest.yaml.tmpl", {**values, "connector": _yaml_scalar(name)}),
        "README.md": _fill(templates / "README.md.tmpl", {**values, **_readme_values(language, mode)}),
    }
    for folder in (templates / language, templates / language / mode):
        for template in sorted(folder.iterdir(), key=lambda entry: entry.name):
            if template.is_file() and template.name.endswith(TEMPLATE_SUFFIX):
                target = template.name.removesuffix(TEMPLATE_SUFFIX)
                files[_RENAMED.get(target, target)] = _fill(template, values)
    return Scaffold(name, language, mode, directory, files)


def write(scaffold: Scaffold) -> list[Path]:
    """Write every file of the scaffold, or none: an existing file is never overwritten."""
    targets = scaffold.paths()
    if scaffold.language == "go":
        targets.append(scaffold.directory / GO_BINARY)  # `go build` would replace it
    existing = [path for path in targets if path.exists() or path.is_symlink()]
    if existing:
        listed = ", ".join(f"'{path}'" for path in existing)
        raise ScaffoldError(
            f"Will not overwrite {listed}: move {'it' if len(existing) == 1 else 'them'} away "
            "or choose another --dir. Nothing was written."
        )
    if scaffold.directory.exists() and not scaffold.directory.is_dir():
        raise ScaffoldError(f"'{scaffold.directory}' exists and is not a directory: choose another --dir.")

    written = []
    path = scaffold.directory
    try:
        path.mkdir(parents=True, exist_ok=True)
        for name, content in scaffold.files.items():
            path = scaffold.directory / name
            with path.open("x", encoding="utf-8") as file:  # "x": fails rather than replace a file made meanwhile
                file.write(content)
            if name in _EXECUTABLES:
                path.chmod(0o755)
            written.append(path)
    except OSError as exc:
        raise ScaffoldError(f"Cannot write '{path}': {exc.strerror or exc}. Choose another --dir.") from exc
    return written


@dataclass(frozen=True)
class Built:
    """The outcome of building a Go scaffold: whether Go was found, and whether the build worked."""

    found: bool
    ok: bool
    output: str = ""


def build_go(directory: Path) -> Built:
    """`go build` in the scaffold's directory, standard library only: nothing is downloaded."""
    go = shutil.which("go")
    if go is None:
        return Built(found=False, ok=False)
    env = {**os.environ, "GOPROXY": "off", "GOTOOLCHAIN": "local"}
    try:
        done = subprocess.run(
            [go, *GO_BUILD[1:]], cwd=directory, env=env, capture_output=True, text=True, timeout=600, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return Built(found=True, ok=False, output=str(exc))
    return Built(found=True, ok=done.returncode == 0, output=(done.stdout + done.stderr).strip())


def own_test(language: str) -> str:
    """The command that runs a scaffold's own test, in its directory."""
    return _LANGUAGES[language].test


def _readme_values(language: str, mode: str) -> dict[str, str]:
    spec = _LANGUAGES[language]
    listed = [("manifest.yaml", "the manifest: the command, its parameters and how to run it"), *spec.files]
    files = "\n".join(f"- `{name}`: {what}" for name, what in listed)
    build = f"go build -o {GO_BINARY} .\n" if language == "go" else ""
    return {"files": files, "build": build, "test": spec.test, "mode_text": _MODE_TEXT[mode], "mode": mode}


def _fill(template: Traversable, values: dict[str, str]) -> str:
    text = template.read_text(encoding="utf-8")
    for key, value in values.items():
        text = text.replace("{{" + key + "}}", value)
    return text


def _yaml_scalar(name: str) -> str:
    """The name as YAML reads it back: `123`, `true` or `1e3` would otherwise load as a number or a boolean."""
    return name if yaml.safe_load(name) == name else f'"{name}"'


def create(name: str, language: str, mode: str, directory: Path | None, out: TextIO, err: TextIO) -> int:
    """`connector-gateway new`: write the scaffold, build it when it is Go, and say what to do next."""
    directory = Path(name) if directory is None else directory
    try:
        scaffold = plan(name, language, mode, directory)
        written = write(scaffold)
    except ScaffoldError as exc:
        print(f"connector-gateway: {exc}", file=err)
        return exc.status

    print(f"Made the {_LANGUAGES[language].title} connector '{name}', in {mode} mode, in {directory}:", file=out)
    for path in written:
        print(f"  {path}", file=out)
    status = _build(scaffold, out, err) if language == "go" else 0

    place = shlex.quote(str(directory))
    print("Next:", file=out)
    if language == "go" and not (directory / GO_BINARY).exists():
        print(f"  (cd {place} && go build -o {GO_BINARY} .)", file=out)
    print(f"  connector-gateway validate {place}", file=out)
    print(f'  connector-gateway call {scaffold.command_id} \'{{"name": "Ada"}}\' --manifests {place}', file=out)
    print(f"  (cd {place} && {own_test(language)})", file=out)
    return status


def _build(scaffold: Scaffold, out: TextIO, err: TextIO) -> int:
    built = build_go(scaffold.directory)
    binary = scaffold.directory / GO_BINARY
    if not built.found:
        print(
            f"Go was not found on PATH, so {binary} is not built: the manifest runs it, and validate reports it "
            f"missing until it is. Install Go 1.19 or later, then run: cd {shlex.quote(str(scaffold.directory))} "
            f"&& go build -o {GO_BINARY} .",
            file=err,
        )
        return 0
    if not built.ok:
        print(f"connector-gateway: go build failed in {scaffold.directory}:\n{built.output}", file=err)
        return 1
    print(f"Built {binary} with go build.", file=out)
    return 0
