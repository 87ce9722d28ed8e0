"""Reads the survivorship rules (`survivorship.yaml`) and applies them to candidate values."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from functools import cache
from importlib.resources import files
from typing import Any

import yaml


@dataclass(frozen=True)
class Rule:
    rule: str  # priority / most_recent
    sources: tuple[str, ...]
    # Sources whose value is taken only when none of `sources` has one, in this order: for a
    # system whose record time says nothing about the field (a card account's moves with every
    # purchase, not with the phone on it).
    fallback: tuple[str, ...] = ()


@dataclass(frozen=True)
class Candidate:
    """One source's value for a field, with where and when it came from."""

    source: str
    source_key: str
    value: Any
    as_of: dt.datetime | None


@cache
def rules() -> dict[str, dict[str, Rule]]:
    text = files(__package__).joinpath("survivorship.yaml").read_text(encoding="utf-8")
    declared = yaml.safe_load(text)
    result: dict[str, dict[str, Rule]] = {}
    for entity, fields in declared.items():
        result[entity] = {}
        for field, spec in fields.items():
            if spec["rule"] not in ("priority", "most_recent"):
                raise ValueError(f"survivorship.yaml: {entity}.{field}: unknown rule {spec['rule']!r}")
            result[entity][field] = Rule(spec["rule"], tuple(spec["sources"]), tuple(spec.get("fallback", ())))
    return result


def choose(entity: str, field: str, candidates: list[Candidate]) -> tuple[Candidate | None, str]:
    """The winning candidate and why it won (for the conflict log)."""
    rule = rules()[entity][field]
    usable = [c for c in candidates if c.value not in (None, "") and c.source in rule.sources]
    if not usable:
        spare = [c for c in candidates if c.value not in (None, "") and c.source in rule.fallback]
        if spare:
            winner = max(spare, key=lambda c: (_instant(c.as_of), -rule.fallback.index(c.source)))
            return winner, f"only {winner.source} has a value for {entity}.{field} (a fallback)"
        return None, "no source has a value"
    rank = {source: n for n, source in enumerate(rule.sources)}
    if rule.rule == "priority":
        winner = min(usable, key=lambda c: rank[c.source])
        return winner, f"{winner.source} is authoritative for {entity}.{field}"
    winner = max(usable, key=lambda c: (_instant(c.as_of), -rank[c.source]))
    return winner, f"most recent: {winner.source} as of {winner.as_of.isoformat() if winner.as_of else 'unknown'}"


def _instant(as_of: dt.datetime | None) -> dt.datetime:
    """Comparable whatever the database gave back: SQLite returns naive datetimes (taken as
    UTC), PostgreSQL aware ones; mixing the two would raise. An unknown time sorts first."""
    if as_of is None:
        return dt.datetime.min.replace(tzinfo=dt.UTC)
    return as_of if as_of.tzinfo is not None else as_of.replace(tzinfo=dt.UTC)
