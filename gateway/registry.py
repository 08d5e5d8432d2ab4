"""The registry: every command and auth handler loaded from the manifest directories.

A bad manifest is reported and skipped; it never hides the others. The
discovery answers and the OpenAPI document are serialized once per load, not
once per request.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from gateway import openapi
from gateway.manifest import DEFAULT_MAX_WAIT, Auth, Command, Listed, Manifest, ManifestError, load_manifest

MANIFEST_SUFFIXES = (".yaml", ".yml")


@dataclass(frozen=True)
class Registry:
    commands: dict[str, Command] = field(default_factory=dict)
    auths: dict[str, Auth] = field(default_factory=dict)
    manifests: tuple[Manifest, ...] = ()
    failures: tuple[ManifestError, ...] = ()
    commands_json: bytes = b"[]"
    auths_json: bytes = b"[]"
    openapi_json: bytes = field(default_factory=lambda: openapi.openapi_json(()))
    # Manifests that failed on a reload, whose last good version is still served.
    kept: frozenset[Path] = frozenset()

    def find(self, connector: str, command: str) -> Command | None:
        return self.commands.get(f"{connector}/{command}")


def manifest_files(directories: Iterable[Path]) -> list[Path]:
    """The manifest files of each directory in turn, by name; hidden files (editors' temporaries) skipped."""
    files: list[Path] = []
    for directory in directories:
        if not directory.is_dir():
            raise NotADirectoryError(f"Manifest directory '{directory}' does not exist or is not a directory.")
        files.extend(
            sorted(
                path
                for path in directory.iterdir()
                if path.suffix in MANIFEST_SUFFIXES and not path.name.startswith(".") and path.is_file()
            )
        )
    return files


def load_registry(
    directories: Sequence[Path],
    default_timeout: float,
    environ: Mapping[str, str] | None = None,
    previous: Registry | None = None,
    max_wait: float = DEFAULT_MAX_WAIT,
) -> Registry:
    """Load every manifest; the first file to claim a command id keeps it, a later claimant is rejected.

    `environ` is where `${NAME}` references are looked up: the gateway's own environment by default.
    On a reload, `previous` is the registry being replaced: a manifest that has become invalid is
    reported, and its last good version from `previous` goes on being served. `max_wait` is how long
    a request may wait for a run slot, which manifests are warned of with their time limits.
    """
    environ = os.environ if environ is None else environ
    last_good = {manifest.path: manifest for manifest in previous.manifests} if previous else {}
    commands: dict[str, Command] = {}
    auths: dict[str, Auth] = {}
    manifests: list[Manifest] = []
    failures: list[ManifestError] = []
    kept: set[Path] = set()

    for path in manifest_files(directories):
        try:
            manifest = load_manifest(path, default_timeout, environ, max_wait)
        except ManifestError as error:
            failures.append(error)
            if path not in last_good:
                continue
            manifest = last_good[path]
            kept.add(path)
        try:
            _check_conflicts(manifest, commands, auths)
        except ManifestError as error:
            failures.append(error)
            kept.discard(path)
            continue
        manifests.append(manifest)
        commands.update((command.id, command) for command in manifest.commands)
        auths.update((auth.id, auth) for auth in manifest.auths)

    return Registry(
        commands=commands,
        auths=auths,
        manifests=tuple(manifests),
        failures=tuple(failures),
        commands_json=_catalog(commands.values()),
        auths_json=_catalog(auths.values()),
        openapi_json=openapi.openapi_json(commands.values()),
        kept=frozenset(kept),
    )


def _check_conflicts(manifest: Manifest, commands: dict[str, Command], auths: dict[str, Auth]) -> None:
    problems = [
        f"command '{command.id}' is already served by '{commands[command.id].source}'"
        for command in manifest.commands
        if command.id in commands
    ]
    problems += [
        f"auth '{auth.id}' is already served by '{auths[auth.id].source}'"
        for auth in manifest.auths
        if auth.id in auths
    ]
    if problems:
        raise ManifestError(manifest.path, problems)


def _catalog(entries: Iterable[Listed]) -> bytes:
    described = [entry.describe() for entry in sorted(entries, key=lambda entry: entry.id)]
    return json.dumps(described, ensure_ascii=False, separators=(",", ":")).encode()
