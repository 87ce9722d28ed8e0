import pytest
from tests.api_support import api_hub
from tests.databases import DATABASES


@DATABASES
def test_smoke(simulators, database_kind, tmp_path):
    with api_hub(simulators, database_kind, tmp_path) as hub:
        print(hub.users)
        api = hub.as_role("college_officer")
        out = api.query(
            "{ students(first: 100) { edges { node { studentNo name phone major { name } classGroup { name } feeStatus { settled } } } pageInfo { hasNextPage endCursor } } }"
        )
        assert "errors" not in out, out
        print(len(out["data"]["students"]["edges"]), out["data"]["students"]["edges"][0])
        out = hub.as_role("steward").query(
            "{ steward { streams { source stream fresh lastRunStatus openQuarantine } checks { name passed } conflicts { nodes { kind subject details } } } }"
        )
        print(out)
        out = hub.as_role("student").query("{ coverage { form { id } population share } }")
        print(out)
