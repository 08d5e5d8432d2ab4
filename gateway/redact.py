"""Redaction: credentials a request carries never reach a log line, spiff__logs or an error message."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

MARK = "[redacted]"


class Redactor:
    """Replaces every occurrence of the given secret values in a text."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        # Longest first, so that a secret containing another is replaced whole.
        self.secrets = sorted({secret for secret in secrets if secret}, key=len, reverse=True)

    def __call__(self, text: str) -> str:
        for secret in self.secrets:
            if secret in text:
                text = text.replace(secret, MARK)
        return text


def string_leaves(value: Any) -> list[str]:
    """Every string inside a JSON value: a secret parameter may be an object of credentials."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [leaf for item in value.values() for leaf in string_leaves(item)]
    if isinstance(value, list):
        return [leaf for item in value for leaf in string_leaves(item)]
    return []
