"""The quality rules of `quality.py`, applied to one record at a time.

The asset checks judge whole tables; a form that serves one person's values needs the verdict
on just their rows, now — a value whose record breaks a rule is served flagged, never silently.
The rules themselves are not repeated here: they are read from `quality.TABLE_RULES` and
`quality.PATTERNS`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from functools import cache
from typing import Any

from campushub.models.quality import PATTERNS, TABLE_RULES
from campushub.reference.codes import code_table


@cache
def _pattern(name: str) -> re.Pattern[str]:
    return re.compile(PATTERNS[name])


def record_problems(table: str, row: Mapping[str, Any]) -> list[str]:
    """What the declared column rules find wrong with one row of `table` (empty: nothing)."""
    rules = TABLE_RULES.get(table)
    if rules is None:
        return []
    problems = [f"{column} is missing" for column in rules.not_null if row.get(column) is None]
    for column, table_name in rules.codes.items():
        value = row.get(column)
        if value is not None and value not in code_table(table_name):
            problems.append(f"{column} is not a code of {table_name}")
    for column, pattern in rules.formats.items():
        value = row.get(column)
        if value is not None and not _pattern(pattern).fullmatch(value):
            problems.append(f"{column} is not a valid {pattern}")
    return problems
