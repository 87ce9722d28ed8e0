"""graphql-core's execution, with a short cut for the commonest field there is.

Most fields of an answer are scalars read off their parent object by graphene's default
resolver, without arguments: a prefill's sixty `name`, `value`, `source`, `asOf` and `quality`.
For each, graphql-core builds a resolve-info record, reads the (absent) arguments, calls the
resolver through two layers of indirection and dispatches on the return type before it
serialises — most of a prefill's execution time. `PlainLeafExecution` reads and serialises
such a field directly. Everything else, and any value that is null or fails to serialise
(the errors and their paths), goes the standard way.
"""

from __future__ import annotations

from functools import partial
from typing import Any, NamedTuple

from graphene.types.resolver import dict_or_attr_resolver
from graphql import (
    ExecutionContext,
    FieldNode,
    GraphQLEnumType,
    GraphQLNonNull,
    GraphQLObjectType,
    GraphQLScalarType,
    GraphQLSchema,
    Undefined,
)
from graphql.pyutils import Path


class PlainLeaf(NamedTuple):
    attribute: str
    default: Any
    leaf: GraphQLScalarType | GraphQLEnumType


def plain_leaves(schema: GraphQLSchema) -> dict[tuple[str, str], PlainLeaf]:
    """(type, field) -> how to read it, for every field the short cut may take."""
    found = {}
    for type_name, graphql_type in schema.type_map.items():
        if not isinstance(graphql_type, GraphQLObjectType) or type_name.startswith("__"):
            continue
        for field_name, field in graphql_type.fields.items():
            resolve = field.resolve
            leaf = field.type.of_type if isinstance(field.type, GraphQLNonNull) else field.type
            default_resolver = isinstance(resolve, partial) and resolve.func is dict_or_attr_resolver
            if default_resolver and not field.args and isinstance(leaf, GraphQLScalarType | GraphQLEnumType):
                attribute, default = resolve.args
                found[type_name, field_name] = PlainLeaf(attribute, default, leaf)
    return found


class PlainLeafExecution(ExecutionContext):
    """Set `plain` (from `plain_leaves`) on the class before use: one schema per process."""

    plain: dict[tuple[str, str], PlainLeaf] = {}  # noqa: RUF012 - filled once, read by every request

    def execute_field(
        self, parent_type: GraphQLObjectType, source: Any, field_nodes: list[FieldNode], path: Path
    ) -> Any:
        node = field_nodes[0]
        plain = self.plain.get((parent_type.name, node.name.value))
        if plain is not None and not node.arguments and self.middleware_manager is None:
            if isinstance(source, dict):
                value = source.get(plain.attribute, plain.default)
            else:
                value = getattr(source, plain.attribute, plain.default)
            if value is not None:
                try:
                    serialized = plain.leaf.serialize(value)
                except Exception:  # the standard way reports it, located in the answer
                    serialized = None
                if serialized is not None and serialized is not Undefined:
                    return serialized
        return super().execute_field(parent_type, source, field_nodes, path)
