"""Connectors: one module per source system on a small shared base (`base.py`).

`SOURCES` names every connector class; `open_source(name)` configures one from the environment.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

from campushub.connectors.base import Batch, HttpSource, Record, SourceError

# source name -> "module:Class", imported on demand so one source's code never loads the others'
SOURCES: dict[str, str] = {
    "academic": "campushub.connectors.academic:AcademicSource",
    "hr": "campushub.connectors.hr:HRSource",
    "finance": "campushub.connectors.finance:FinanceSource",
    "card": "campushub.connectors.card:CardSource",
}


def source_class(name: str) -> type[HttpSource]:
    try:
        module, cls = SOURCES[name].split(":")
    except KeyError:
        raise SourceError(name, f"no such source; sources: {', '.join(SOURCES)}") from None
    return getattr(import_module(module), cls)


def open_source(name: str, **options: Any) -> HttpSource:
    """A connector configured from the environment (`CAMPUSHUB_<SOURCE>_...`)."""
    return source_class(name).from_env(**options)  # type: ignore[attr-defined, no-any-return]


__all__ = ["SOURCES", "Batch", "HttpSource", "Record", "SourceError", "open_source", "source_class"]
