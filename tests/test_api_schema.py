"""The checked-in SDL (`campushub/graphql/schema.graphql`) is the schema the code serves.

Regenerate after a deliberate change of the API with
`UPDATE_SNAPSHOTS=1 pytest tests/test_api_schema.py`, then review the diff.
"""

from __future__ import annotations

import inspect
import os

import pytest
from graphql import build_schema, find_breaking_changes

from campushub.cli import main
from campushub.graphql.sdl import SCHEMA_FILE, schema_sdl

REGENERATE = "regenerate it with `UPDATE_SNAPSHOTS=1 pytest tests/test_api_schema.py` and review the diff"


def test_checked_in_sdl_matches_the_code() -> None:
    sdl = schema_sdl()
    if os.environ.get("UPDATE_SNAPSHOTS"):
        SCHEMA_FILE.write_text(sdl, encoding="utf-8")
    assert SCHEMA_FILE.exists(), f"{SCHEMA_FILE} is missing: {REGENERATE}"
    checked_in = SCHEMA_FILE.read_text(encoding="utf-8")
    if checked_in != sdl:
        # Name what broke for clients, so a reviewer sees at once whether the change is safe.
        breaking = find_breaking_changes(build_schema(checked_in), build_schema(sdl))
        detail = "".join(f"\n  breaking: {change.description}" for change in breaking)
        pytest.fail(f"{SCHEMA_FILE.name} and the schema in code diverge; {REGENERATE}{detail}")


def test_the_file_is_a_valid_schema_with_the_api_roots() -> None:
    schema = build_schema(SCHEMA_FILE.read_text(encoding="utf-8"))
    assert schema.query_type is not None and schema.mutation_type is not None
    assert {"me", "forms", "prefill", "students", "steward"} <= set(schema.query_type.fields)
    assert {"resolveQuarantine", "resolveConflict", "acceptRowCount"} <= set(schema.mutation_type.fields)


def test_cli_prints_the_sdl(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["schema"]) == 0
    assert capsys.readouterr().out == schema_sdl()


def test_every_resolver_is_synchronous() -> None:
    """The app tells graphql-core that no value is awaitable (app._never_awaitable): a coroutine
    resolver would be answered as a broken value, so none may exist."""
    from graphql import GraphQLObjectType

    from campushub.graphql.schema import SCHEMA

    resolvers = [
        (f"{type_.name}.{name}", definition.resolve)
        for type_ in SCHEMA.graphql_schema.type_map.values()
        if isinstance(type_, GraphQLObjectType) and not type_.name.startswith("__")
        for name, definition in type_.fields.items()
        if definition.resolve is not None
    ]
    assert len(resolvers) > 20
    asynchronous = [
        name
        for name, resolve in resolvers
        if inspect.iscoroutinefunction(resolve)
        or inspect.isasyncgenfunction(resolve)
        or inspect.iscoroutinefunction(getattr(resolve, "func", None))  # functools.partial
    ]
    assert asynchronous == []


def test_the_short_cut_for_plain_fields_answers_as_graphql_core_does() -> None:
    """PlainLeafExecution reads default-resolved scalars directly: the answer — values, nulls,
    errors and their paths — must be what graphql-core's own execution gives."""
    import datetime as dt
    from typing import Any

    import graphene
    from graphql import ExecutionContext, execute, parse

    from campushub.graphql.execution import PlainLeafExecution, plain_leaves

    class Colour(graphene.Enum):
        RED = "red"
        BLUE = "blue"

    class Item(graphene.ObjectType):
        name = graphene.String()
        required = graphene.String(required=True)
        count = graphene.Int()
        colour = graphene.Field(Colour)
        at = graphene.DateTime()
        shout = graphene.String(times=graphene.Int())
        renamed = graphene.String(name="alias_of_name")

        @staticmethod
        def resolve_shout(parent: object, _info: object, times: int = 1) -> str:
            return str(getattr(parent, "name", None) or parent.get("name")).upper() * times  # type: ignore[union-attr]

    class Query(graphene.ObjectType):
        items = graphene.List(graphene.NonNull(Item), required=True)
        dicts = graphene.List(Item)

        @staticmethod
        def resolve_items(_: object, __: object) -> list[Item]:
            at = dt.datetime(2026, 11, 27, 8, tzinfo=dt.UTC)
            return [
                Item(name="a", required="x", count=1, colour=Colour.RED, at=at),
                Item(name=None, required="y", count=2**40, colour="blue"),  # Int out of range: an error
                Item(name="c", required=None),  # a required field that is null: an error up the path
            ]

        @staticmethod
        def resolve_dicts(_: object, __: object) -> list[dict[str, object]]:
            return [{"name": "d", "required": "z", "count": "7"}, {"required": "w", "colour": "green"}]

        # Lists a list's short cut must leave to graphql-core: a null item, an error in place of
        # one (whose attributes would pass for the fields asked for), none at all.
        with_null = graphene.List(Item)
        with_error = graphene.List(Item)
        empty = graphene.List(graphene.NonNull(Item), required=True)

        @staticmethod
        def resolve_with_error(_: object, __: object) -> list[object]:
            class ItemError(Exception):
                name, required = "looks", "like an item"

            return [{"name": "f", "required": "u"}, ItemError("no such item")]

        @staticmethod
        def resolve_with_null(_: object, __: object) -> list[dict[str, object] | None]:
            return [{"name": "e", "required": "v"}, None]

        @staticmethod
        def resolve_empty(_: object, __: object) -> list[Item]:
            return []

    schema = graphene.Schema(query=Query).graphql_schema
    PlainLeafExecution.plain, before = plain_leaves(schema), PlainLeafExecution.plain
    try:
        assert ("Item", "name") in PlainLeafExecution.plain and ("Item", "shout") not in PlainLeafExecution.plain
        for query in (
            "{ items { name required count colour at shout(times: 2) aliasOfName } }",
            "{ items { n: name name } dicts { name required count colour at } }",
            "{ dicts { __typename name colour } }",
            "{ withNull { name required } empty { name } dicts { required count } }",
            "{ withError { name required } }",
            "{ dicts { required } items { required } }",
        ):
            document = parse(query)
            standard = execute(schema, document, execution_context_class=ExecutionContext)
            short_cut = execute(schema, document, execution_context_class=PlainLeafExecution)
            assert short_cut.data == standard.data
            assert [e.formatted for e in short_cut.errors or []] == [e.formatted for e in standard.errors or []]
        assert standard.errors  # the cases above include errors, and they matched (the last one's)

        # And the short cut is taken: a list of plain objects is never completed item by item.
        completed_lists: list[str] = []

        def standard_list(context: ExecutionContext, return_type: Any, *args: Any) -> Any:
            completed_lists.append(str(return_type))
            return completing_a_list(context, return_type, *args)

        completing_a_list = ExecutionContext.complete_list_value
        ExecutionContext.complete_list_value = standard_list  # type: ignore[method-assign]
        try:
            document = parse("{ dicts { required } withNull { name } }")  # (a null item: the standard way)
            assert execute(schema, document, execution_context_class=PlainLeafExecution).errors is None
            assert completed_lists == ["[Item]"]
            completed_lists.clear()
            execute(schema, document, execution_context_class=ExecutionContext)
            assert completed_lists == ["[Item]", "[Item]"]
        finally:
            ExecutionContext.complete_list_value = completing_a_list  # type: ignore[method-assign]
    finally:
        PlainLeafExecution.plain = before
