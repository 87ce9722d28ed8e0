"""The schema's SDL, as code defines it and as `schema.graphql` (checked in) records it.

The file is what clients, reviewers and the fuzz tests read: a change of the API shows up as a
diff of it. `tests/test_api_schema.py` fails when code and file diverge; regenerate the file
with `UPDATE_SNAPSHOTS=1 pytest tests/test_api_schema.py` (or `campushub schema > …`).
"""

from __future__ import annotations

from pathlib import Path

from graphql import print_schema

SCHEMA_FILE = Path(__file__).with_name("schema.graphql")


def schema_sdl() -> str:
    """The SDL of the schema the API serves, with a final newline (as the file has it)."""
    from campushub.graphql.schema import SCHEMA  # the schema imports the models: only when asked

    return print_schema(SCHEMA.graphql_schema) + "\n"
