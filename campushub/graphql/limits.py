"""Limits against abuse, checked on the parsed document before anything executes.

- depth: how deeply selections nest (fragments expanded);
- cost: every field costs 1, times the size of each list it sits in — a connection's `first`
  (its maximum, `MAX_PAGE_SIZE`, when given by a variable), or a declared size for plain lists;
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
    GraphQLInterfaceType,
    GraphQLList,
    GraphQLNamedType,
    GraphQLObjectType,
    GraphQLOutputType,
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


@dataclass
class _Tally:
    depth: int = 0
    cost: int = 0
    aliases: int = 0


def _list_size(field: FieldNode, field_type: GraphQLOutputType) -> int:
    """How many times a field's selections are repeated: 1 for a single object, the page size
    for a connection, a declared size for a plain list."""
    for argument in field.arguments or ():
        if argument.name.value in ("first", "last"):
            if isinstance(argument.value, IntValueNode):
                return max(int(argument.value.value), 1)
            return MAX_PAGE_SIZE  # a variable: assume the worst it may be
    if isinstance(get_nullable_type(field_type), GraphQLList):
        return LIST_SIZES.get(field.name.value, DEFAULT_PAGE_SIZE)
    return 1


def _walk(
    selection_set: SelectionSetNode | None,
    parent: GraphQLNamedType,
    context: tuple[GraphQLSchema, dict[str, FragmentDefinitionNode]],
    depth: int,
    multiplier: int,
    tally: _Tally,
) -> None:
    if selection_set is None:
        return
    schema, fragments = context
    tally.depth = max(tally.depth, depth)
    for selection in selection_set.selections:
        if isinstance(selection, FieldNode):
            if selection.alias is not None:
                tally.aliases += 1
            name = selection.name.value
            definition = (
                parent.fields.get(name) if isinstance(parent, GraphQLObjectType | GraphQLInterfaceType) else None
            )
            tally.cost += multiplier
            if definition is None or selection.selection_set is None:
                continue  # a scalar, or an introspection field
            size = _list_size(selection, definition.type)
            _walk(
                selection.selection_set, get_named_type(definition.type), context, depth + 1, multiplier * size, tally
            )
        elif isinstance(selection, InlineFragmentNode):
            condition = schema.get_type(selection.type_condition.name.value) if selection.type_condition else parent
            _walk(selection.selection_set, condition or parent, context, depth, multiplier, tally)
        elif isinstance(selection, FragmentSpreadNode) and selection.name.value in fragments:
            fragment = fragments[selection.name.value]
            condition = schema.get_type(fragment.type_condition.name.value) or parent
            _walk(fragment.selection_set, condition, context, depth, multiplier, tally)


def check_limits(schema: GraphQLSchema, document: DocumentNode, limits: Limits) -> list[GraphQLError]:
    operations = [d for d in document.definitions if isinstance(d, OperationDefinitionNode)]
    fragments = {d.name.value: d for d in document.definitions if isinstance(d, FragmentDefinitionNode)}
    errors: list[GraphQLError] = []
    if len(operations) > limits.max_operations:
        errors.append(_limit_error(f"{len(operations)} operations in one document; at most {limits.max_operations}"))
    for operation in operations:
        tally = _Tally()
        root = schema.get_root_type(operation.operation)
        if root is not None:
            _walk(operation.selection_set, root, (schema, fragments), 1, 1, tally)
        name = operation.name.value if operation.name else "anonymous operation"
        if tally.depth > limits.max_depth:
            errors.append(_limit_error(f"{name}: depth {tally.depth} exceeds the maximum of {limits.max_depth}"))
        if tally.cost > limits.max_cost:
            errors.append(_limit_error(f"{name}: estimated cost {tally.cost} exceeds the budget of {limits.max_cost}"))
        if tally.aliases > limits.max_aliases:
            errors.append(_limit_error(f"{name}: {tally.aliases} aliases; at most {limits.max_aliases}"))
    return errors


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
