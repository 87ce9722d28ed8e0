"""Hand-made connector output for landing tests: records and pages as `land_batches` takes them."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Record:
    key: str
    data: dict[str, Any]
    problems: tuple[str, ...] = ()
    digest: str | None = None


@dataclass(frozen=True)
class Batch:
    records: list[Record]
    cursor: str | None = None
    fetched_at: dt.datetime = dt.datetime(2026, 11, 27, tzinfo=dt.UTC)
    pull: int = 1
