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
    assert {"resolveQuarantine", "resolveConflict"} <= set(schema.mutation_type.fields)


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
