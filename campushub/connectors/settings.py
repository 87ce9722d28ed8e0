"""Connector configuration from the environment: base URLs and credentials, never from code."""

from __future__ import annotations

import os

from campushub.connectors.base import HttpSettings, SourceError


def require_env(source: str, name: str) -> str:
    value = os.environ.get(name)
    if not value:
        raise SourceError(source, f"environment variable {name} is not set (see .env.example)")
    return value


def http_settings_from_env(source: str, **overrides: object) -> HttpSettings:
    """`CAMPUSHUB_<SOURCE>_URL` plus optional `CAMPUSHUB_<SOURCE>_TIMEOUT` (seconds)."""
    prefix = f"CAMPUSHUB_{source.upper()}"
    values: dict[str, object] = {"base_url": require_env(source, f"{prefix}_URL")}
    if timeout := os.environ.get(f"{prefix}_TIMEOUT"):
        values["timeout"] = float(timeout)
    values.update(overrides)
    return HttpSettings(**values)  # type: ignore[arg-type]
