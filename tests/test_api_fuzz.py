"""Fuzzing the API with schemathesis' GraphQL mode: queries and mutations generated from the
checked-in SDL (`campushub/graphql/schema.graphql` — production refuses introspection), sent over
HTTP to the running API with a steward's and a student's token.

Whatever a client sends, the API must answer without a server error: no 5xx, and no execution
error masked as `INTERNAL` (the generic "internal error" a bug in a resolver produces).

The runs are bounded and derandomized, so CI sees the same examples every time; to explore more,
run with `CAMPUSHUB_FUZZ_EXAMPLES=2000 CAMPUSHUB_FUZZ_RANDOM=1`.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import Connection, Table, delete, select, update

from campushub.graphql.app import ApiSettings, DocumentCache
from campushub.graphql.schema import SCHEMA as GRAPHENE_SCHEMA
from campushub.graphql.sdl import SCHEMA_FILE
from campushub.models import Base
from tests.api_support import ApiHub

SCHEMA = schemathesis.graphql.from_path(SCHEMA_FILE)
EXAMPLES = int(os.environ.get("CAMPUSHUB_FUZZ_EXAMPLES", "50"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,  # requests over a socket: timing is not what is tested
    derandomize=not os.environ.get("CAMPUSHUB_FUZZ_RANDOM"),
    database=None,  # no .hypothesis directory in the work tree
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
)


def check_answer(case: Any, response: Any) -> None:
    """No server error, and an answer a client can act on."""
    shown = f"{response.status_code} for\n{case.body}\n{response.content[:2000]!r}"
    assert response.status_code < 500, shown
    assert response.status_code in (200, 400), shown
    request_id = response.headers.get("x-request-id", [""])[0]
    assert request_id, shown
    body = response.json()
    for error in body.get("errors", []):
        extensions = error.get("extensions", {})
        assert extensions.get("requestId") == request_id, shown
        assert extensions.get("code") != "INTERNAL", f"a resolver failed: {shown}"
        assert extensions.get("code"), f"an error without a code: {shown}"


@pytest.fixture
def session() -> Iterator[requests.Session]:
    with requests.Session() as client:
        yield client


# What mutations may change. The audit log is left alone: it only grows, and says who fuzzed.
MUTABLE_TABLES = ("quarantine", "conflict", "work_order", "correction_request", "notification", "row_count_acceptance")


@pytest.fixture
def restored_tables(hub_api: ApiHub) -> Iterator[None]:
    """Fuzzed mutations may act on real rows (ids are small numbers) or add rows: put every
    table they can touch back as it was, since the session's data is shared by all API tests."""
    tables = [table for table in Base.metadata.sorted_tables if table.name in MUTABLE_TABLES]
    assert len(tables) == len(MUTABLE_TABLES), "a mutable table was renamed: update MUTABLE_TABLES"

    def rows(connection: Connection, table: Table) -> dict[tuple[Any, ...], dict[str, Any]]:
        keys = list(table.primary_key.columns)
        return {tuple(row[key.name] for key in keys): dict(row) for row in connection.execute(select(table)).mappings()}

    with hub_api.engine.connect() as connection:
        before = {table.name: rows(connection, table) for table in tables}
    yield
    with hub_api.engine.begin() as connection:
        for table in reversed(tables):  # children before the rows they point at
            keys = list(table.primary_key.columns)
            for key, row in rows(connection, table).items():
                where = [column == value for column, value in zip(keys, key, strict=True)]
                if key not in before[table.name]:
                    connection.execute(delete(table).where(*where))
                elif row != before[table.name][key]:
                    connection.execute(update(table).where(*where).values(**before[table.name][key]))


@pytest.mark.parametrize("role", ["steward", "student", "college_officer"])
def test_generated_queries_never_fail_the_server(hub_api: ApiHub, session: requests.Session, role: str) -> None:
    headers = {"Authorization": f"Bearer {hub_api.as_role(role).token}", "Accept": "application/json"}

    @FUZZ
    @given(case=SCHEMA["Query"].as_strategy())
    def run(case: Any) -> None:
        check_answer(case, case.call(base_url=hub_api.url, session=session, headers=headers, timeout=30))

    run()


@pytest.mark.usefixtures("restored_tables")
@pytest.mark.parametrize("role", ["steward", "student"])
def test_generated_mutations_never_fail_the_server(hub_api: ApiHub, session: requests.Session, role: str) -> None:
    headers = {"Authorization": f"Bearer {hub_api.as_role(role).token}", "Accept": "application/json"}

    @settings(FUZZ, max_examples=max(EXAMPLES // 3, 10))
    @given(case=SCHEMA["Mutation"].as_strategy())
    def run(case: Any) -> None:
        check_answer(case, case.call(base_url=hub_api.url, session=session, headers=headers, timeout=30))

    run()


@settings(FUZZ, max_examples=30)
@given(document=st.text(max_size=200))
def test_arbitrary_text_as_a_document_is_a_client_error(document: str) -> None:
    """Not a GraphQL document at all: parse errors, never an exception (no API needed)."""
    prepared = DocumentCache(GRAPHENE_SCHEMA.graphql_schema, ApiSettings()).prepare(document)
    assert prepared.document is not None or prepared.errors
