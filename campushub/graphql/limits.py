"""Limits against abuse, checked on the parsed document before anything executes.

- depth: how deeply selections nest (fragments expanded);
- cost: every field costs 1, times the size of each list it sits in — a connection's `first`
  (its default when absent, its maximum, `MAX_PAGE_SIZE`, when given by a variable), or a
  declared size for plain lists; a fragment's cost is worked out once and counted at each
  spread;
- aliases and operations per document.

The checks run once per distinct document (the app caches the verdict with the parse), after
graphql-core's own validation has ruled out unknown fields and fragment cycles.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from graphql import (
    DocumentNode,
    FieldNode,
    FragmentDefinitionNode,
    FragmentSpreadNode,
    GraphQLError,
    GraphQLField,
    GraphQLInterfaceType,
    GraphQLList,
    GraphQLNamedType,
    GraphQLObjectType,
    GraphQLSchema,
    InlineFragmentNode,
    IntValueNode,
    OperationDefinitionNode,
    SelectionSetNode,
    StringValueNode,
    ValidationRule,
    get_named_type,
    get_nullable_type,
)

MAX_PAGE_SIZE = 100
DEFAULT_PAGE_SIZE = 20
# Plain lists whose size no argument bounds: what one can reasonably hold. A connection's
# `edges` and `nodes` are already counted by its `first`.
LIST_SIZES = {
    "edges": 1,
    "nodes": 1,
    "bills": 20,
    "payments": 50,
    "fields": 20,
    "forms": 10,
    "streams": 20,
    "checks": 60,
}


@dataclass(frozen=True, slots=True)
class Limits:
    max_depth: int = 10
    max_cost: int = 5_000
    max_aliases: int = 15
    max_operations: int = 5


# Far past any limit: a document's figures stop here (`_Costing`).
FIGURE_CAP = 10**9


@dataclass(frozen=True, slots=True)
class _Cost:
    """What a selection set costs for one parent object: the depth it reaches below itself, its
    fields (each list's selections counted once per item it may hold), and its aliases (as
    written, fragments expanded: an alias names a field once however many items repeat it)."""

    depth: int
    cost: int
    aliases: int


def _list_size(field: FieldNode, definition: GraphQLField) -> int:
    """How many times a field's selections are repeated: 1 for a single object, the page size
    for a connection (its `first` or `last`, the argument's default when absent, the maximum when
    a variable gives it), a declared size for a plain list."""
    given = {argument.name.value: argument.value for argument in field.arguments or ()}
    for name in ("first", "last"):
        if name in given:
            value = given[name]
            return max(int(value.value), 1) if isinstance(value, IntValueNode) else MAX_PAGE_SIZE
    for name in ("first", "last"):
        argument = definition.args.get(name)
        if argument is not None:
            default = argument.default_value
            return max(default, 1) if isinstance(default, int) else MAX_PAGE_SIZE
    if isinstance(get_nullable_type(definition.type), GraphQLList):
        return LIST_SIZES.get(field.name.value, DEFAULT_PAGE_SIZE)
    return 1


class _Costing:
    """Costs the selection sets of one document. A fragment is costed once, however many times
    it is spread: expanded afresh at each spread, fragments that each spread the next one twice
    would double the work at every level — a document of a few hundred bytes, hours of walking.
    Figures stop at `FIGURE_CAP`, so that they stay small numbers too."""

    def __init__(self, schema: GraphQLSchema, document: DocumentNode) -> None:
        self._schema = schema
        self._fragments = {d.name.value: d for d in document.definitions if isinstance(d, FragmentDefinitionNode)}
        self._costed: dict[str, _Cost] = {}

    def selections(self, selection_set: SelectionSetNode | None, parent: GraphQLNamedType) -> _Cost:
        depth = cost = aliases = 0
        for selection in selection_set.selections if selection_set else ():
            if isinstance(selection, FieldNode):
                part = self._field(selection, parent)
                depth = max(depth, part.depth + 1)
            elif isinstance(selection, InlineFragmentNode):
                condition = selection.type_condition
                part = self.selections(
                    selection.selection_set,
                    (self._schema.get_type(condition.name.value) if condition else parent) or parent,
                )
                depth = max(depth, part.depth)
            elif isinstance(selection, FragmentSpreadNode) and selection.name.value in self._fragments:
                part = self._fragment(selection.name.value, parent)
                depth = max(depth, part.depth)
            else:
                continue
            cost, aliases = cost + part.cost, aliases + part.aliases
        return _Cost(min(depth, FIGURE_CAP), min(cost, FIGURE_CAP), min(aliases, FIGURE_CAP))

    def _field(self, field: FieldNode, parent: GraphQLNamedType) -> _Cost:
        alias = 1 if field.alias is not None else 0
        fields = parent.fields if isinstance(parent, GraphQLObjectType | GraphQLInterfaceType) else {}
        definition = fields.get(field.name.value)
        if definition is None or field.selection_set is None:
            return _Cost(0, 1, alias)  # a scalar, or an introspection field
        below = self.selections(field.selection_set, get_named_type(definition.type))
        size = _list_size(field, definition)
        return _Cost(below.depth, 1 + size * below.cost, alias + below.aliases)

    def _fragment(self, name: str, parent: GraphQLNamedType) -> _Cost:
        if name not in self._costed:
            fragment = self._fragments[name]
            condition = self._schema.get_type(fragment.type_condition.name.value) or parent
            self._costed[name] = self.selections(fragment.selection_set, condition)
        return self._costed[name]


def check_limits(schema: GraphQLSchema, document: DocumentNode, limits: Limits) -> list[GraphQLError]:
    """Every operation of `document` against the limits. Run after graphql-core's validation,
    which refuses fragment cycles and spreads of unknown fragments."""
    operations = [d for d in document.definitions if isinstance(d, OperationDefinitionNode)]
    errors: list[GraphQLError] = []
    if len(operations) > limits.max_operations:
        errors.append(_limit_error(f"{len(operations)} operations in one document; at most {limits.max_operations}"))
    costing = _Costing(schema, document)
    for operation in operations:
        root = schema.get_root_type(operation.operation)
        if root is None:
            continue
        measured = costing.selections(operation.selection_set, root)
        name = operation.name.value if operation.name else "anonymous operation"
        depth, cost, aliases = (_figure(value) for value in (measured.depth, measured.cost, measured.aliases))
        if measured.depth > limits.max_depth:
            errors.append(_limit_error(f"{name}: depth {depth} exceeds the maximum of {limits.max_depth}"))
        if measured.cost > limits.max_cost:
            errors.append(_limit_error(f"{name}: estimated cost {cost} exceeds the budget of {limits.max_cost}"))
        if measured.aliases > limits.max_aliases:
            errors.append(_limit_error(f"{name}: {aliases} aliases; at most {limits.max_aliases}"))
    return errors


def _figure(value: int) -> str:
    return f"over {FIGURE_CAP}" if value >= FIGURE_CAP else str(value)


def _limit_error(message: str) -> GraphQLError:
    return GraphQLError(message, extensions={"code": "LIMIT_EXCEEDED"})


# The largest key a BIGINT column holds: a larger id or cursor would fail in the database, not
# as the client's error.
MAX_KEY = 2**63 - 1


def bad_input(message: str) -> GraphQLError:
    return GraphQLError(message, extensions={"code": "BAD_USER_INPUT"})


def bounded_text(value: str | None, what: str, limit: int, required: bool) -> str | None:
    """Free text a person typed: trimmed, required when asked, never longer than `limit`."""
    text = (value or "").strip()
    if required and not text:
        raise bad_input(f"{what}: required")
    if len(text) > limit:
        raise bad_input(f"{what}: at most {limit} characters")
    return text or None


def parse_key(value: str) -> int:
    """A numeric id or cursor key a client sent: ASCII digits within a BIGINT, else ValueError.
    (`str.isdigit` alone also accepts "²" and other digits `int` refuses.)"""
    if not (value.isascii() and value.isdigit()) or int(value) > MAX_KEY:
        raise ValueError(f"not a key: {value!r}")
    return int(value)


def contains_nul(value: Any) -> bool:
    """Whether a string anywhere in a JSON value holds a NUL character (PostgreSQL text cannot)."""
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(contains_nul(item) for item in value.values())
    if isinstance(value, list):
        return any(contains_nul(item) for item in value)
    return False


class NoNulCharactersRule(ValidationRule):
    """No string literal may hold a NUL character: no value the hub holds has one, and
    PostgreSQL refuses it in text, which would surface as an internal error."""

    def enter_string_value(self, node: StringValueNode, *_: Any) -> None:
        if "\x00" in node.value:
            self.report_error(
                GraphQLError(
                    "string values may not contain NUL characters", node, extensions={"code": "BAD_USER_INPUT"}
                )
            )


def check_page_size(first: int | None) -> int:
    # `first: Int = 20` is nullable, so `first: null` is a valid argument: refuse it like 0.
    if first is None:
        raise GraphQLError(
            f"first must be between 1 and {MAX_PAGE_SIZE}, got null", extensions={"code": "BAD_USER_INPUT"}
        )
    if not 1 <= first <= MAX_PAGE_SIZE:
        raise GraphQLError(
            f"first must be between 1 and {MAX_PAGE_SIZE}, got {first}", extensions={"code": "LIMIT_EXCEEDED"}
        )
    return first
