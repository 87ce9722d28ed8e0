"""Secrets from the environment, with generated development fallbacks.

Production sets every secret in the environment. In development, a secret that is unset is
generated on first use into the data folder (git-ignored, readable by its owner only) and
reused after, so a fresh clone runs without set-up and no secret is ever committed.
"""

from __future__ import annotations

import os
from collections.abc import Callable

from campushub.models.engine import DATA_DIR


def secret(variable: str, filename: str, generate: Callable[[], str]) -> str:
    configured = os.environ.get(variable)
    if configured:
        return configured
    path = DATA_DIR / filename
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(generate())
        path.chmod(0o600)
    return path.read_text().strip()
