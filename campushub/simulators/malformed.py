"""Malformed records, as real source systems serve them now and then.

Whether record n of a stream is broken, and how, is a pure function of the seed, the stream,
n and the rate, so the tests can compute exactly which records a connector must flag.
"""

from __future__ import annotations

import datetime as dt
import zlib
from dataclasses import dataclass
from typing import Any

from campushub.reference.identity import RESIDENT_ID, make_id_number
from campushub.simulators.world import mix

KINDS = ("bad_check_digit", "impossible_date", "missing_key", "unknown_code")
_MISTYPED_RESIDENT_ID = make_id_number("440802", dt.date(2004, 5, 17), 123)
_BAD_CHECK = {c: n for c, n in zip("0123456789X", "1234567890X"[1:] + "0", strict=True)}


@dataclass(frozen=True)
class Corruptible:
    """Where a stream's records can be broken: field names and impossible values."""

    key: str
    id_number: str | None = None
    id_type: str | None = None  # the field naming the ID number's kind of document
    date: tuple[str, str] | None = None  # (field, a value that is not a date)
    code: tuple[str, str] | None = None  # (field, a value outside its code table)

    def kinds(self) -> tuple[str, ...]:
        available = {
            "bad_check_digit": self.id_number,
            "impossible_date": self.date,
            "missing_key": self.key,
            "unknown_code": self.code,
        }
        return tuple(kind for kind in KINDS if available[kind])


def _roll(seed: int, stream: str, n: int) -> int:
    return mix(seed, zlib.crc32(stream.encode()), n)


def malformed_kind(seed: int, stream: str, n: int, rate: float, plan: Corruptible) -> str | None:
    if rate <= 0:
        return None
    roll = _roll(seed, stream, n)
    if (roll & 0xFFFFFFFF) / 2**32 >= rate:
        return None
    kinds = plan.kinds()
    return kinds[(roll >> 32) % len(kinds)]


def corrupt(record: dict[str, Any], plan: Corruptible, kind: str) -> dict[str, Any]:
    broken = dict(record)
    if kind == "bad_check_digit" and plan.id_number:
        value = str(broken[plan.id_number])
        if plan.id_type and broken.get(plan.id_type) != RESIDENT_ID:
            # A travel permit or passport has no check digit to get wrong: a clerk typed the
            # person in as a resident, with a mistyped number.
            broken[plan.id_type], value = RESIDENT_ID, _MISTYPED_RESIDENT_ID
        broken[plan.id_number] = value[:17] + _BAD_CHECK[value[17]]
    elif kind == "impossible_date" and plan.date:
        broken[plan.date[0]] = plan.date[1]
    elif kind == "missing_key":
        broken.pop(plan.key, None)
    elif kind == "unknown_code" and plan.code:
        broken[plan.code[0]] = plan.code[1]
    return broken


def maybe_corrupt(
    record: dict[str, Any], seed: int, stream: str, n: int, rate: float, plan: Corruptible
) -> dict[str, Any]:
    kind = malformed_kind(seed, stream, n, rate, plan)
    return corrupt(record, plan, kind) if kind else record


def repeats_previous_page(seed: int, stream: str, page: int, rate: float) -> bool:
    """Whether a page starts with the last record of the page before (a page-shift repeat)."""
    return page > 1 and rate > 0 and (_roll(seed, stream + "#page", page) & 0xFFFFFFFF) / 2**32 < rate
