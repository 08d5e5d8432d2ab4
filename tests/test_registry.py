"""Loading a directory of manifests: order, conflicts, skipped files."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.registry import load_registry

RUN = "run: ['{python}', '-c', 'print(1)']"


def manifest(directory: Path, name: str, connector: str, *commands: str) -> Path:
    listed = "".join(f"  - {{name: {command}, {RUN}}}\n" for command in commands)
    path = directory / name
    path.write_text(f"manifest_version: 1\nconnector: {connector}\ncommands:\n{listed}")
    return path


def test_first_file_to_claim_a_command_keeps_it(tmp_path: Path) -> None:
    first = manifest(tmp_path, "a.yaml", "crm", "Find", "Create")
    second = manifest(tmp_path, "b.yaml", "crm", "Create", "Delete")

    registry = load_registry((tmp_path,), default_timeout=30)

    assert sorted(registry.commands) == ["crm/Create", "crm/Find"]
    assert registry.commands["crm/Create"].source == first
    [failure] = registry.failures
    assert failure.path == second
    assert failure.problems == [f"command 'crm/Create' is already served by '{first}'"]


def test_directories_load_in_the_order_given(tmp_path: Path) -> None:
    (tmp_path / "one").mkdir()
    (tmp_path / "two").mkdir()
    winner = manifest(tmp_path / "two", "z.yaml", "crm", "Find")
    manifest(tmp_path / "one", "a.yaml", "crm", "Find")

    registry = load_registry((tmp_path / "two", tmp_path / "one"), default_timeout=30)

    assert registry.commands["crm/Find"].source == winner


def test_only_visible_yaml_files_are_manifests(tmp_path: Path) -> None:
    manifest(tmp_path, "a.yml", "a", "Run")
    manifest(tmp_path, ".b.yaml", "b", "Run")  # an editor's temporary file
    manifest(tmp_path, "c.yaml.swp", "c", "Run")
    manifest(tmp_path, "README.md", "d", "Run")

    assert list(load_registry((tmp_path,), default_timeout=30).commands) == ["a/Run"]


def test_a_missing_directory_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(
        NotADirectoryError, match=r"Manifest directory '.*nowhere' does not exist or is not a directory\."
    ):
        load_registry((tmp_path / "nowhere",), default_timeout=30)


def test_catalog_is_sorted_by_id(tmp_path: Path) -> None:
    manifest(tmp_path, "a.yaml", "zeta", "B", "A")
    manifest(tmp_path, "b.yaml", "alpha", "C")

    registry = load_registry((tmp_path,), default_timeout=30)

    assert registry.commands_json == (
        b'[{"id":"alpha/C","parameters":[]},{"id":"zeta/A","parameters":[]},{"id":"zeta/B","parameters":[]}]'
    )


def test_manifests_are_warned_of_the_wait_for_a_run_slot_they_are_loaded_with(tmp_path: Path) -> None:
    path = tmp_path / "slow.yaml"
    path.write_text(f"manifest_version: 1\nconnector: slow\ncommands:\n  - {{name: Export, timeout: 30, {RUN}}}\n")

    [relaxed] = load_registry((tmp_path,), default_timeout=30).manifests
    [crowded] = load_registry((tmp_path,), default_timeout=30, max_wait=15).manifests

    assert relaxed.warnings == ()
    assert crowded.warnings == (
        "commands[0] (Export).timeout: 30 s plus up to 15 s of waiting for a run slot (CONNECTOR_GATEWAY_MAX_WAIT) "
        "reaches Arena's own limit of 45 s; Arena may give up on a request that waited and retry while it runs. "
        "Keep the two together under 45 s.",
    )


def test_an_invalid_manifest_keeps_its_warnings(tmp_path: Path) -> None:
    (tmp_path / "bad.yaml").write_text(
        f"manifest_version: 1\nconnector: bad\ncommands:\n  - {{name: A, timeout: 50, {RUN}}}\n  - {{name: A, {RUN}}}\n"
    )

    [failure] = load_registry((tmp_path,), default_timeout=30).failures

    assert failure.problems == ["commands[1].name: 'A' is already used by commands[0]"]
    assert [warning.split(";")[0] for warning in failure.warnings] == [
        "commands[0] (A).timeout: 50 s is at or above Arena's own limit of 45 s"
    ]
