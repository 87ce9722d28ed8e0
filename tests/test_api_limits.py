"""The document limits, on parsed documents: what a query is charged for, and that charging it
takes work in proportion to the document, not to what the document expands to."""

from __future__ import annotations

import re

import pytest
from graphql import parse, validate

from campushub.graphql import limits
from campushub.graphql.limits import DEFAULT_PAGE_SIZE, Limits, check_limits
from campushub.graphql.schema import SCHEMA

SCHEMA_ = SCHEMA.graphql_schema


def _messages(document: str, **chosen: int) -> list[str]:
    parsed = parse(document)
    assert validate(SCHEMA_, parsed) == []
    return [error.message for error in check_limits(SCHEMA_, parsed, Limits(**chosen))]


def _cost(document: str) -> int:
    (message,) = _messages(document, max_cost=0)
    found = re.search(r"estimated cost (\d+) exceeds", message)
    assert found, message
    return int(found.group(1))


def _fan_out(levels: int) -> str:
    """Each fragment spreads the next twice: 2**levels copies of `me { subject }`, written in a
    few dozen bytes a level."""
    fragments = [f"fragment F{n} on Query {{ ...F{n + 1} ...F{n + 1} }}" for n in range(levels)]
    return "\n".join(["query FanOut { ...F0 }", *fragments, f"fragment F{levels} on Query {{ me {{ subject }} }}"])


def test_fragments_spread_many_times_are_charged_in_full_but_walked_once(monkeypatch: pytest.MonkeyPatch) -> None:
    assert _cost(_fan_out(12)) == 2**12 * 2  # what executing it would resolve: every copy
    walked: list[str] = []
    field = limits._Costing._field

    def counting(self: limits._Costing, node: object, parent: object) -> object:
        walked.append(node.name.value)  # type: ignore[attr-defined]
        return field(self, node, parent)  # type: ignore[arg-type]

    monkeypatch.setattr(limits._Costing, "_field", counting)
    # Expanded, this would be 2**60 copies: walking them would never end.
    assert _messages(_fan_out(60)) == [f"FanOut: estimated cost over {limits.FIGURE_CAP} exceeds the budget of 5000"]
    assert walked == ["me", "subject"]  # each field of the document once


def test_a_connection_without_first_is_charged_its_default_page() -> None:
    without = "{ students { edges { node { studentNo name } } } }"
    with_default = f"{{ students(first: {DEFAULT_PAGE_SIZE}) {{ edges {{ node {{ studentNo name }} }} }} }}"
    assert _cost(without) == _cost(with_default) == 1 + DEFAULT_PAGE_SIZE * (1 + 1 + 2)
    assert _cost("{ students(first: 1) { edges { node { studentNo name } } } }") == 1 + 1 * 4
    # Given by a variable: the most it may be.
    by_variable = "query Page($n: Int) { students(first: $n) { edges { node { studentNo name } } } }"
    assert _cost(by_variable) == 1 + limits.MAX_PAGE_SIZE * 4


def test_aliases_are_counted_as_written_with_fragments_expanded() -> None:
    # Two aliases, repeated on each of 100 items: still two aliases.
    assert _messages("{ students(first: 100) { edges { node { a: name b: studentNo } } } }", max_aliases=2) == []
    # A fragment with two aliases, spread twice: four.
    twice = "query Twice { ...A ...A } fragment A on Query { x: me { subject } y: me { role } }"
    assert _messages(twice, max_aliases=3) == ["Twice: 4 aliases; at most 3"]


def test_depth_counts_through_fragments() -> None:
    deep = "query Deep { ...S } fragment S on Query { students { edges { node { college { code } } } } }"
    assert _messages(deep, max_depth=4) == ["Deep: depth 5 exceeds the maximum of 4"]
    assert _messages(deep, max_depth=5) == []
