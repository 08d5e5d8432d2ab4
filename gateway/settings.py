"""Settings: read once, from one mapping (the environment), then overridden by command-line flags.

Nothing here is read at import time; tests build Settings from a plain dict.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import Any, TypeVar

from gateway.admission import AdmissionLimits
from gateway.runner import Limits

ENV_PREFIX = "CONNECTOR_GATEWAY_"
API_KEY_VARIABLE = "CONNECTOR_PROXY_API_KEY"
API_KEY_HEADER = "Spiff-Connector-Proxy-Api-Key"

_V = TypeVar("_V", int, float)


class SettingsError(ValueError):
    """A setting with a value the gateway cannot start with."""


def bundled_manifests() -> Path:
    return Path(str(resources.files("gateway"))) / "bundled" / "manifests"


@dataclass(frozen=True)
class Settings:
    host: str = "127.0.0.1"
    port: int = 7004
    manifest_dirs: tuple[Path, ...] = field(default_factory=lambda: (bundled_manifests(),))
    api_key: str | None = field(default=None, repr=False)
    default_timeout: float = 30.0
    max_body_bytes: int = 32 * 1024 * 1024
    # Request body bytes held at once, gateway-wide: four bodies of the largest size by default.
    max_buffered_body_bytes: int = 4 * 32 * 1024 * 1024
    limits: Limits = field(default_factory=Limits)
    admission: AdmissionLimits = field(default_factory=AdmissionLimits)
    # How long in-flight requests may go on after SIGTERM before they are cancelled.
    shutdown_grace: float = 30.0
    log_level: str = "info"
    log_format: str = "text"  # or "json": one JSON object per line
    # Whether /metrics asks for the API key too (when one is set); Prometheus can send it as a header.
    metrics_need_key: bool = False
    # Watch the manifest directories and serve their changes without a restart.
    reload: bool = True

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Settings from environment variables, then from explicit overrides (command-line flags)."""
        env = os.environ if env is None else env
        values: dict[str, Any] = {}
        reader = _Reader(env)

        values["host"] = reader.text("HOST")
        values["port"] = reader.read("PORT", port)
        manifests = reader.text("MANIFESTS")
        if manifests is not None:
            values["manifest_dirs"] = tuple(Path(part) for part in manifests.split(os.pathsep) if part)
        values["default_timeout"] = reader.read("TIMEOUT", seconds)
        values["max_body_bytes"] = reader.integer("MAX_BODY_BYTES", 1, None)
        values["max_buffered_body_bytes"] = reader.integer("MAX_BUFFERED_BODY_BYTES", 1, None)
        values["log_level"] = reader.text("LOG_LEVEL")
        values["log_format"] = reader.choice("LOG_FORMAT", ("text", "json"))
        values["metrics_need_key"] = reader.flag("METRICS_NEED_KEY")
        values["reload"] = reader.flag("RELOAD")
        values["shutdown_grace"] = reader.read("SHUTDOWN_GRACE", seconds)
        output = Limits()
        values["limits"] = replace(
            output,
            max_stdout_bytes=_first(reader.integer("MAX_STDOUT_BYTES", 1, None), output.max_stdout_bytes),
            max_stderr_lines=_first(reader.integer("MAX_STDERR_LINES", 0, None), output.max_stderr_lines),
            max_stderr_line_chars=_first(
                reader.integer("MAX_STDERR_LINE_CHARS", 1, None), output.max_stderr_line_chars
            ),
        )
        unset = AdmissionLimits()
        values["admission"] = AdmissionLimits(
            max_running=_first(reader.integer("MAX_RUNNING", 1, None), unset.max_running),
            max_waiting=_first(reader.integer("MAX_WAITING", 0, None), unset.max_waiting),
            max_wait=_first(reader.read("MAX_WAIT", seconds), unset.max_wait),
        )

        api_key = env.get(API_KEY_VARIABLE)
        if api_key is not None:
            if not api_key.strip():
                raise SettingsError(
                    f"{API_KEY_VARIABLE} is set but empty. Set it to the key Arena sends, "
                    "or unset it to serve without a key."
                )
            if api_key != api_key.strip():
                raise SettingsError(
                    f"{API_KEY_VARIABLE} begins or ends with whitespace, which HTTP strips from header values: "
                    "no request could ever match it. Remove the whitespace, here and in Arena's setting."
                )
            values["api_key"] = api_key

        values.update(overrides)
        return cls(**{name: value for name, value in values.items() if value is not None})

    @property
    def exposed_without_key(self) -> bool:
        """True when the gateway listens beyond loopback with no API key: anyone could run its commands."""
        return self.api_key is None and not _is_loopback(self.host)


def settings_environment(settings: Settings) -> dict[str, str]:
    """The environment variables that make `Settings.from_env` rebuild these settings in another process."""
    return {
        ENV_PREFIX + "HOST": settings.host,
        ENV_PREFIX + "PORT": str(settings.port),
        ENV_PREFIX + "MANIFESTS": os.pathsep.join(str(directory) for directory in settings.manifest_dirs),
        ENV_PREFIX + "TIMEOUT": repr(settings.default_timeout),
        ENV_PREFIX + "MAX_BODY_BYTES": str(settings.max_body_bytes),
        ENV_PREFIX + "MAX_BUFFERED_BODY_BYTES": str(settings.max_buffered_body_bytes),
        ENV_PREFIX + "MAX_STDOUT_BYTES": str(settings.limits.max_stdout_bytes),
        ENV_PREFIX + "MAX_STDERR_LINES": str(settings.limits.max_stderr_lines),
        ENV_PREFIX + "MAX_STDERR_LINE_CHARS": str(settings.limits.max_stderr_line_chars),
        ENV_PREFIX + "MAX_RUNNING": str(settings.admission.max_running),
        ENV_PREFIX + "MAX_WAITING": str(settings.admission.max_waiting),
        ENV_PREFIX + "MAX_WAIT": repr(settings.admission.max_wait),
        ENV_PREFIX + "SHUTDOWN_GRACE": repr(settings.shutdown_grace),
        ENV_PREFIX + "LOG_LEVEL": settings.log_level,
        ENV_PREFIX + "LOG_FORMAT": settings.log_format,
        ENV_PREFIX + "METRICS_NEED_KEY": "1" if settings.metrics_need_key else "0",
        ENV_PREFIX + "RELOAD": "1" if settings.reload else "0",
    }


class _Reader:
    def __init__(self, env: Mapping[str, str]) -> None:
        self.env = env

    def text(self, name: str) -> str | None:
        value = self.env.get(ENV_PREFIX + name)
        return value if value else None

    def choice(self, name: str, allowed: tuple[str, ...]) -> str | None:
        raw = self.text(name)
        if raw is not None and raw.lower() not in allowed:
            raise SettingsError(f"{ENV_PREFIX}{name} must be one of {', '.join(allowed)}, got {raw!r}.")
        return raw.lower() if raw is not None else None

    def flag(self, name: str) -> bool | None:
        raw = self.text(name)
        if raw is None:
            return None
        if raw.lower() in ("1", "true", "yes", "on"):
            return True
        if raw.lower() in ("0", "false", "no", "off"):
            return False
        raise SettingsError(f"{ENV_PREFIX}{name} must be 1 or 0 (true or false), got {raw!r}.")

    def integer(self, name: str, low: int, high: int | None) -> int | None:
        return self.read(name, lambda raw: whole_number(raw, low, high))

    def read(self, name: str, parse: Callable[[str], _V]) -> _V | None:
        raw = self.text(name)
        if raw is None:
            return None
        try:
            return parse(raw)
        except ValueError as exc:
            raise SettingsError(f"{ENV_PREFIX}{name} {exc}.") from None


# The rules for numbers, shared by the environment variables and the command-line flags. Each raises
# ValueError saying what is wrong, worded to follow the setting's name.


def whole_number(raw: str, low: int, high: int | None = None) -> int:
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"must be a whole number, got {raw!r}") from None
    if value < low or (high is not None and value > high):
        bounds = f"between {low} and {high}" if high is not None else f"at least {low}"
        raise ValueError(f"must be {bounds}, got {value}")
    return value


def port(raw: str) -> int:
    return whole_number(raw, 1, 65535)


def seconds(raw: str) -> float:
    """A time limit: more than 0 and at most an hour; not a number, infinite and NaN refused."""
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"must be a number of seconds, got {raw!r}") from None
    if not 0 < value <= 3600:
        raise ValueError(f"must be more than 0 and at most 3600 seconds, got {raw}")
    return value


def _first(value: _V | None, default: _V) -> _V:
    return default if value is None else value


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
