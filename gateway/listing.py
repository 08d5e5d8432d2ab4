"""`connector-gateway list`: the commands the manifest directories serve, with their parameters,
the warnings of the manifests that loaded, and the manifests that could not be loaded, with every
problem found in them."""

from __future__ import annotations

import json
from typing import Any

from gateway.manifest import Command, Parameter
from gateway.registry import Registry


def as_json(registry: Registry) -> dict[str, Any]:
    """The listing for scripts: every command with its parameters, warnings, and every manifest that failed."""
    return {
        "commands": [_command_json(command) for command in _sorted(registry)],
        "warnings": [
            {"manifest": str(manifest.path), "warning": warning}
            for manifest in registry.manifests
            for warning in manifest.warnings
        ],
        "failures": [
            {"manifest": str(failure.path), "problems": list(failure.problems)} for failure in registry.failures
        ],
    }


def as_text(registry: Registry) -> str:
    """The listing for people: a block per command, then warnings, then the failures, then a count."""
    blocks = ["\n".join(_command_lines(command)) for command in _sorted(registry)]
    warnings = [
        f"warning {manifest.path}: {warning}" for manifest in registry.manifests for warning in manifest.warnings
    ]
    if warnings:
        blocks.append("\n".join(warnings))
    for failure in registry.failures:
        blocks.append("\n".join([f"error   {failure.path}:", *(f"  - {problem}" for problem in failure.problems)]))
    total = len(registry.manifests) + len(registry.failures)
    blocks.append(
        f"{_count(total, 'manifest')}, {_count(len(registry.commands), 'command')}, {len(registry.failures)} invalid."
    )
    return "\n\n".join(blocks) + "\n"


def _sorted(registry: Registry) -> list[Command]:
    return sorted(registry.commands.values(), key=lambda command: command.id)


def _command_json(command: Command) -> dict[str, Any]:
    described: dict[str, Any] = {"id": command.id}
    if command.description is not None:
        described["description"] = command.description
    described.update(mode=_mode(command), timeout=command.timeout, manifest=str(command.source))
    described["parameters"] = [_parameter_json(parameter) for parameter in command.parameters]
    return described


def _parameter_json(parameter: Parameter) -> dict[str, Any]:
    described = parameter.describe()
    if parameter.secret:
        described["secret"] = True
    return described


def _command_lines(command: Command) -> list[str]:
    heading = command.id if command.description is None else f"{command.id}: {_one_line(command.description)}"
    lines = [heading, f"  {_mode(command)} mode, timeout {command.timeout:g} s, from {command.source}"]
    if not command.parameters:
        return [*lines, "  (no parameters)"]
    rows = [
        (parameter.id, parameter.type, _requirement(parameter), _one_line(parameter.description or ""))
        for parameter in command.parameters
    ]
    widths = [max(len(row[column]) for row in rows) for column in range(3)]
    for row in rows:
        cells = [cell.ljust(width) for cell, width in zip(row[:3], widths, strict=True)]
        lines.append(f"  {'  '.join(cells)}  {row[3]}".rstrip())
    return lines


def _requirement(parameter: Parameter) -> str:
    if parameter.required:
        said = "required"
    elif parameter.has_default:
        said = f"default {json.dumps(parameter.default, ensure_ascii=False)}"
    else:
        said = "optional"
    return f"{said}, secret" if parameter.secret else said


def _mode(command: Command) -> str:
    return "spawn" if command.workers is None else "worker"


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}{'' if number == 1 else 's'}"
