"""Who may read what through the GraphQL API: the role matrix, IDOR, masking, audit, stewards.

Every expectation about access is computed from `permissions.yaml` (`ROLES`) and the schema,
never hard-coded, and checked against the live API over HTTP on SQLite and PostgreSQL. Values
are compared with what the database holds, read independently with SQLAlchemy.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from graphql import GraphQLObjectType, get_named_type
from sqlalchemy import Engine, RowMapping, delete, func, insert, select, update
from sqlalchemy.exc import DBAPIError

from campushub.graphql import audit as audit_module
from campushub.graphql.auth import Principal
from campushub.graphql.forms import catalog
from campushub.graphql.permissions import ROLES
from campushub.graphql.schema import SCHEMA
from campushub.models.landing import QuarantinedRecord
from campushub.models.protect import decrypt_id
from campushub.models.quality import Baseline, Outcome
from campushub.models.service import (
    AuditEntry,
    CheckResult,
    RowCountAcceptance,
    record_check_result,
    row_count_baseline,
)
from campushub.models.sources import FRESHNESS
from campushub.models.unified import Conflict, OrgUnit, Person, Staff, Student
from campushub.reference.codes import code_table
from campushub.reference.identity import DOCUMENT_TYPES
from tests.api_support import Api, ApiHub

FORBIDDEN, NOT_FOUND = "FORBIDDEN", "NOT_FOUND"
ENTITY_TYPES = {"student": "Student", "staff": "Staff"}  # department entity -> its GraphQL type
SINGLE_LOOKUP = {"student": ("student", "studentNo"), "staff": ("staffMember", "staffNo")}
LISTS = {"student": "students", "staff": "staffMembers"}
GHOST_STUDENT_NO = "209999999999"  # a 学号 no student has


# ------------------------------------------------------------------------------- helpers
def schema_fields(type_name: str) -> list[str]:
    return list(SCHEMA.graphql_schema.type_map[type_name].fields)  # type: ignore[attr-defined]


def selection(type_name: str, field: str) -> str:
    """The field as a query selects it: an object-typed field with its first subfield."""
    named = get_named_type(SCHEMA.graphql_schema.type_map[type_name].fields[field].type)  # type: ignore[attr-defined]
    if isinstance(named, GraphQLObjectType):
        return f"{field} {{ {next(iter(named.fields))} }}"
    return field


def granted(role: str, entity: str, field: str) -> bool:
    grant = ROLES[role].grant(entity)
    return grant is not None and field in grant.fields


def error_codes(answer: dict[str, Any]) -> list[str]:
    return [error["extensions"]["code"] for error in answer.get("errors", [])]


def ask(api: Api, query: str, variables: dict[str, Any] | None = None) -> tuple[dict[str, Any], str]:
    """The answer and its request id (the X-Request-ID header)."""
    response = api.post(query, variables)
    assert response.status_code == 200, response.text
    return response.json(), response.headers["X-Request-ID"]


def audit_rows(engine: Engine, request_id: str) -> list[RowMapping]:
    with engine.connect() as connection:
        query = select(AuditEntry.__table__).where(AuditEntry.request_id == request_id).order_by(AuditEntry.id)
        return list(connection.execute(query).mappings())


def person_id_of_student(engine: Engine, student_no: str) -> int:
    with engine.connect() as connection:
        person_id = connection.execute(select(Student.person_id).where(Student.student_no == student_no)).scalar()
    assert person_id is not None
    return person_id


def principal(hub: ApiHub, role: str, org_unit: str | None = None) -> Principal:
    """The role's demo user, acting for `org_unit` when given (a scoped role's own college)."""
    user = hub.users[role]
    return dataclasses.replace(user, org_unit=org_unit) if org_unit is not None else user


def all_nodes(api: Api, list_name: str, fields: str) -> list[dict[str, Any]]:
    """Every node of a department list, page by page."""
    nodes: list[dict[str, Any]] = []
    after: str | None = None
    query = f"""query($after: String) {{ {list_name}(first: 100, after: $after) {{
        edges {{ node {{ {fields} }} }} pageInfo {{ hasNextPage endCursor }} }} }}"""
    while True:
        answer = api.query(query, {"after": after})
        assert "errors" not in answer, answer
        connection = answer["data"][list_name]
        nodes += [edge["node"] for edge in connection["edges"]]
        if not connection["pageInfo"]["hasNextPage"]:
            return nodes
        after = connection["pageInfo"]["endCursor"]


@dataclasses.dataclass(frozen=True)
class Target:
    """A record a department role reads: its key, person and org unit."""

    key: str
    person_id: int
    org_code: str


def demo_subjects(hub: ApiHub) -> set[str]:
    return {user.subject for user in hub.users.values()}


def student_target(hub: ApiHub, role: str) -> Target:
    """The demo student (every student field filled for them), or, for the student role itself,
    another student: the matrix is about other people's records."""
    query = (
        select(Student.student_no, Student.person_id, OrgUnit.code)
        .join(OrgUnit, OrgUnit.id == Student.college_id)
        .where(Student.deleted_at.is_(None))
        .order_by(Student.student_no)
    )
    if role == "student":
        query = query.where(Student.student_no != hub.users["student"].subject)
    else:
        query = query.where(Student.student_no == hub.users["student"].subject)
    with hub.engine.connect() as connection:
        row = connection.execute(query).first()
    assert row is not None
    return Target(*row)


def staff_target(hub: ApiHub) -> Target:
    """A member of staff who is none of the demo users, with every department field filled."""
    query = (
        select(Staff.staff_no, Staff.person_id, OrgUnit.code)
        .join(OrgUnit, OrgUnit.id == Staff.department_id)
        .join(Person, Person.id == Staff.person_id)
        .where(
            Staff.deleted_at.is_(None),
            Staff.staff_no.not_in(demo_subjects(hub)),
            Staff.title_code.is_not(None),
            Staff.position_code.is_not(None),
            Staff.hire_date.is_not(None),
            Staff.salary_grade.is_not(None),
            Staff.monthly_gross_fen.is_not(None),
            Person.phone.is_not(None),
        )
        .order_by(Staff.staff_no)
    )
    with hub.engine.connect() as connection:
        row = connection.execute(query).first()
    assert row is not None
    return Target(*row)


def api_for(hub: ApiHub, role: str, entity: str, target: Target) -> Api:
    """The role's demo user; a role whose grant is scoped to its own college acts for the
    target's, so the row is in scope and only the field grant decides."""
    grant = ROLES[role].grant(entity)
    org = target.org_code if grant is not None and grant.scope == "own_college" else None
    return hub.as_principal(principal(hub, role, org))


# ----------------------------------------------------------------------- the role matrix
def test_every_granted_field_is_a_field_of_the_api() -> None:
    """permissions.yaml names the API's fields: a misspelt grant would silently deny."""
    for role in ROLES.values():
        for entity, grant in role.grants.items():
            assert grant.fields <= set(schema_fields(ENTITY_TYPES[entity])), (role.name, entity)


@pytest.mark.parametrize("entity", sorted(ENTITY_TYPES))
@pytest.mark.parametrize("role", sorted(ROLES))
def test_field_matrix(hub_api: ApiHub, role: str, entity: str) -> None:
    type_name = ENTITY_TYPES[entity]
    target = student_target(hub_api, role) if entity == "student" else staff_target(hub_api)
    api = api_for(hub_api, role, entity, target)
    lookup, key = SINGLE_LOOKUP[entity]
    expected, seen = {}, {}
    for field in schema_fields(type_name):
        expected[field] = "allowed" if granted(role, entity, field) else "denied"
        answer = api.query(f'{{ {lookup}({key}: "{target.key}") {{ {selection(type_name, field)} }} }}')
        record = answer["data"][lookup]
        value = record[field] if record is not None else None
        if value is not None and "errors" not in answer:
            seen[field] = "allowed"
        elif value is None and error_codes(answer) == [FORBIDDEN]:
            seen[field] = "denied"
        else:
            seen[field] = f"unexpected: {answer}"
    assert seen == expected


@pytest.mark.parametrize("role", sorted(role for role in ROLES if ROLES[role].grant("student") is None))
def test_roles_without_a_student_grant_cannot_list_students(hub_api: ApiHub, role: str) -> None:
    answer, request_id = ask(hub_api.as_role(role), "{ students(first: 5) { edges { node { studentNo } } } }")
    assert answer["data"] is None and error_codes(answer) == [FORBIDDEN]
    denied = [row for row in audit_rows(hub_api.engine, request_id) if row["outcome"] == "denied"]
    assert [(row["entity"], row["actor_role"]) for row in denied] == [("student", role)]


def test_college_officer_lists_only_own_college(hub_api: ApiHub) -> None:
    officer = hub_api.users["college_officer"]
    nodes = all_nodes(hub_api.as_role("college_officer"), "students", "studentNo college { code }")
    with hub_api.engine.connect() as connection:
        own = set(
            connection.execute(
                select(Student.student_no)
                .join(OrgUnit, OrgUnit.id == Student.college_id)
                .where(OrgUnit.code == officer.org_unit, Student.deleted_at.is_(None))
            ).scalars()
        )
    assert own, "the demo college officer's college has students"
    assert {node["studentNo"] for node in nodes} == own
    assert len(nodes) == len(own)
    assert {node["college"]["code"] for node in nodes} == {officer.org_unit}


def test_finance_officer_lists_every_college(hub_api: ApiHub) -> None:
    assert ROLES["finance_officer"].grants["student"].scope == "all"
    nodes = all_nodes(hub_api.as_role("finance_officer"), "students", "studentNo college { code }")
    with hub_api.engine.connect() as connection:
        everyone = set(connection.execute(select(Student.student_no).where(Student.deleted_at.is_(None))).scalars())
        colleges = set(
            connection.execute(
                select(OrgUnit.code).join(Student, Student.college_id == OrgUnit.id).where(Student.deleted_at.is_(None))
            ).scalars()
        )
    assert {node["studentNo"] for node in nodes} == everyone
    assert {node["college"]["code"] for node in nodes} == colleges and len(colleges) > 1


def test_librarian_sees_only_the_four_library_fields_in_lists(hub_api: ApiHub) -> None:
    library_fields = {"studentNo", "name", "status", "expectedGraduation"}
    assert ROLES["librarian"].grants["student"].fields == library_fields
    api = hub_api.as_role("librarian")
    answer = api.query(
        "{ students(first: 10) { edges { node { studentNo name status { code } expectedGraduation } } } }"
    )
    assert "errors" not in answer
    assert len(answer["data"]["students"]["edges"]) == 10
    for field in set(schema_fields("Student")) - library_fields:
        answer = api.query(f"{{ students(first: 3) {{ edges {{ node {{ {selection('Student', field)} }} }} }} }}")
        assert error_codes(answer) and set(error_codes(answer)) == {FORBIDDEN}, field
        values = [edge["node"][field] for edge in answer["data"]["students"]["edges"]] if answer["data"] else []
        assert all(value is None for value in values), field


def test_only_hr_sees_other_peoples_pay(hub_api: ApiHub) -> None:
    pay = ("salaryGrade", "monthlyGrossFen")
    target = staff_target(hub_api)
    with hub_api.engine.connect() as connection:
        truth = connection.execute(
            select(Staff.salary_grade, Staff.monthly_gross_fen).where(Staff.staff_no == target.key)
        ).one()
    seeing = set()
    for role in ROLES:
        api = api_for(hub_api, role, "staff", target)
        single = api.query(f'{{ staffMember(staffNo: "{target.key}") {{ staffNo {" ".join(pay)} }} }}')
        listed = api.query(f"{{ staffMembers(first: 100) {{ edges {{ node {{ {' '.join(pay)} }} }} }} }}")
        record = single["data"]["staffMember"]
        if record is not None and (record["salaryGrade"], record["monthlyGrossFen"]) == tuple(truth):
            assert "errors" not in single and "errors" not in listed, role
            seeing.add(role)
        else:
            assert FORBIDDEN in error_codes(single) and FORBIDDEN in error_codes(listed), role
            nodes = [edge["node"] for edge in listed["data"]["staffMembers"]["edges"]] if listed["data"] else []
            assert all(node[name] is None for node in nodes for name in pay), role
    assert seeing == {role for role in ROLES if all(granted(role, "staff", name) for name in pay)} == {"hr_officer"}


# -------------------------------------------------------------------------------- IDOR
def other_student(hub: ApiHub) -> tuple[str, int, str]:
    """A student who is not the demo student: 学号, person id and name."""
    with hub.engine.connect() as connection:
        row = connection.execute(
            select(Student.student_no, Student.person_id, Person.name)
            .join(Person, Person.id == Student.person_id)
            .where(Student.student_no != hub.users["student"].subject, Student.deleted_at.is_(None))
            .order_by(Student.student_no.desc())
        ).first()
        ghost = connection.execute(select(Student.id).where(Student.student_no == GHOST_STUDENT_NO)).first()
    assert row is not None and ghost is None
    return row.student_no, row.person_id, row.name


def without_request_ids(answer: dict[str, Any]) -> dict[str, Any]:
    errors = [{**error, "extensions": {**error["extensions"], "requestId": None}} for error in answer.get("errors", [])]
    return {**answer, "errors": errors}


def test_a_student_gets_nothing_of_another_student_by_any_path(hub_api: ApiHub) -> None:
    api = hub_api.as_role("student")
    other_no, other_person, other_name = other_student(hub_api)
    me = hub_api.users["student"]
    with hub_api.engine.connect() as connection:
        other = connection.execute(select(Person.__table__).where(Person.id == other_person)).mappings().one()
    secrets = [other_name, other["phone"], decrypt_id(other["id_number_cipher"])]

    def nothing_of_other(answer: dict[str, Any]) -> None:
        text_of = json.dumps(answer, ensure_ascii=False)
        assert not any(secret and secret in text_of for secret in secrets), answer

    # single lookup, and the same answer as for a 学号 nobody has
    query = '{ student(studentNo: "%s") { studentNo name phone idNumber } }'
    answer, request_id = ask(api, query % other_no)
    ghost_answer, _ = ask(api, query % GHOST_STUDENT_NO)
    assert answer["data"] == {"student": None} and error_codes(answer) == [FORBIDDEN]
    assert without_request_ids(answer) == without_request_ids(ghost_answer)
    nothing_of_other(answer)
    denied = [row for row in audit_rows(hub_api.engine, request_id) if row["outcome"] == "denied"]
    assert [(row["subject_person_id"], row["entity"]) for row in denied] == [(other_person, "student")]

    # aliases: each alias refused on its own, the caller's own record still served
    answer, request_id = ask(
        api,
        f'{{ a: student(studentNo: "{other_no}") {{ name }} b: student(studentNo: "{GHOST_STUDENT_NO}") {{ name }} '
        f"mine: me {{ student {{ studentNo }} }} }}",
    )
    assert answer["data"]["a"] is None and answer["data"]["b"] is None
    assert answer["data"]["mine"]["student"]["studentNo"] == me.subject
    assert error_codes(answer) == [FORBIDDEN, FORBIDDEN]
    nothing_of_other(answer)
    assert other_person in {
        row["subject_person_id"] for row in audit_rows(hub_api.engine, request_id) if row["outcome"] == "denied"
    }

    # nested lists
    answer = api.query("{ students(first: 100) { edges { node { studentNo name phone } } } }")
    assert answer["data"] is None and error_codes(answer) == [FORBIDDEN]
    nothing_of_other(answer)

    # prefill: the subject is always the caller, and there is no argument to choose another
    assert set(SCHEMA.graphql_schema.query_type.fields["prefill"].args) == {"formId"}  # type: ignore[union-attr]
    assert not SCHEMA.graphql_schema.query_type.fields["me"].args  # type: ignore[union-attr]
    answer = api.query(f'{{ prefill(formId: "enrollment_certificate", studentNo: "{other_no}") {{ filled }} }}')
    assert answer.get("data") is None and answer["errors"]
    answer = api.query('{ prefill(formId: "enrollment_certificate") { fields { name value } } }')
    values = {field["name"]: field["value"] for field in answer["data"]["prefill"]["fields"]}
    assert values["student_no"] == me.subject and values["name"] == me.name
    nothing_of_other(answer)

    # a member of staff, by 工号
    staff = staff_target(hub_api)
    answer, request_id = ask(api, f'{{ staffMember(staffNo: "{staff.key}") {{ staffNo name }} }}')
    assert answer["data"] == {"staffMember": None} and error_codes(answer) == [FORBIDDEN]
    denied = [row for row in audit_rows(hub_api.engine, request_id) if row["outcome"] == "denied"]
    assert [(row["subject_person_id"], row["entity"]) for row in denied] == [(staff.person_id, "staff")]


# ----------------------------------------------------------------------------- masking
def id_number_of(engine: Engine, person_id: int) -> str:
    with engine.connect() as connection:
        cipher = connection.execute(select(Person.id_number_cipher).where(Person.id == person_id)).scalar_one()
    return decrypt_id(cipher)


def masked_like(shown: str, number: str) -> bool:
    """First 3 and last 4 characters, stars between."""
    return shown == number[:3] + "*" * (len(number) - 7) + number[-4:]


def test_id_number_is_masked_except_where_a_form_declares_it(hub_api: ApiHub) -> None:
    me = hub_api.users["student"]
    person_id = person_id_of_student(hub_api.engine, me.subject)
    number = id_number_of(hub_api.engine, person_id)
    api = hub_api.as_role("student")
    answer = api.query("{ me { student { idNumber idType { code label } } data { name value } } }")
    assert "errors" not in answer
    assert masked_like(answer["data"]["me"]["student"]["idNumber"], number)
    with hub_api.engine.connect() as connection:
        id_type = connection.execute(select(Person.id_type).where(Person.id == person_id)).scalar_one()
    # The document's kind beside its masked number, labelled from the code table.
    assert answer["data"]["me"]["student"]["idType"] == {
        "code": id_type,
        "label": code_table(DOCUMENT_TYPES)[id_type].name,
    }
    # The same for a member of staff, on their own record.
    staff = hub_api.users["staff"]
    with hub_api.engine.connect() as connection:
        staff_person = connection.execute(
            select(Person.id_type, Person.id_number_cipher)
            .join(Staff, Staff.person_id == Person.id)
            .where(Staff.staff_no == staff.subject)
        ).one()
    mine = hub_api.as_role("staff").query("{ me { staff { idNumber idType { code } } } }")["data"]["me"]["staff"]
    assert masked_like(mine["idNumber"], decrypt_id(staff_person.id_number_cipher))
    assert mine["idType"] == {"code": staff_person.id_type}
    data = {field["name"]: field["value"] for field in answer["data"]["me"]["data"]}
    assert masked_like(data["person.id_number"], number)
    checked = set()
    for form in catalog().values():
        id_fields = [field for field in form.fields if field.path == "person.id_number"]
        if "student" not in form.roles or form.subject == "staff" or not id_fields:
            continue
        answer = api.query(f'{{ prefill(formId: "{form.id}") {{ fields {{ name value display }} }} }}')
        shown = {field["name"]: field for field in answer["data"]["prefill"]["fields"]}
        for field in id_fields:
            if field.full_id_number:
                assert shown[field.name]["value"] == shown[field.name]["display"] == number, form.id
            else:
                assert masked_like(shown[field.name]["value"], number), form.id
                assert masked_like(shown[field.name]["display"], number), form.id
            checked.add((form.id, field.full_id_number))
    assert ("enrollment_certificate", True) in checked and any(not full for _, full in checked)


def test_phone_is_masked_for_the_college_officer_and_plain_for_oneself(hub_api: ApiHub) -> None:
    assert "phone" in ROLES["college_officer"].grants["student"].masked
    me = hub_api.users["student"]
    with hub_api.engine.connect() as connection:
        phones = dict(
            connection.execute(
                select(Student.student_no, Person.phone).join(Person, Person.id == Student.person_id)
            ).all()
        )
    own = hub_api.as_role("student").query("{ me { student { phone } } }")
    assert own["data"]["me"]["student"]["phone"] == phones[me.subject] and "*" not in phones[me.subject]
    officer = hub_api.as_role("college_officer")
    nodes = all_nodes(officer, "students", "studentNo phone")
    assert me.subject in {node["studentNo"] for node in nodes}
    for node in nodes:
        assert node["phone"] is not None and masked_like(node["phone"], phones[node["studentNo"]]), node
    single = officer.query(f'{{ student(studentNo: "{me.subject}") {{ phone }} }}')
    assert masked_like(single["data"]["student"]["phone"], phones[me.subject])


# ------------------------------------------------------------------------------- audit
def test_a_department_page_writes_one_audit_row_per_student(hub_api: ApiHub) -> None:
    officer = hub_api.users["college_officer"]
    response = hub_api.as_role("college_officer").post(
        "{ students(first: 7) { edges { node { studentNo name phone } } } }"
    )
    answer, request_id = response.json(), response.headers["X-Request-ID"]
    uuid.UUID(request_id)
    student_nos = [edge["node"]["studentNo"] for edge in answer["data"]["students"]["edges"]]
    assert len(student_nos) == 7
    with hub_api.engine.connect() as connection:
        persons = set(
            connection.execute(select(Student.person_id).where(Student.student_no.in_(student_nos))).scalars()
        )
    rows = audit_rows(hub_api.engine, request_id)
    assert len(rows) == 7
    assert {row["subject_person_id"] for row in rows} == persons
    for row in rows:
        assert row["request_id"] == request_id
        assert (row["actor"], row["actor_role"]) == (officer.subject, "college_officer")
        assert (row["purpose"], row["entity"], row["outcome"]) == ("department:student", "student", "allowed")
        assert row["fields"] == ["studentNo", "name", "phone"]


def test_prefill_and_my_data_are_audited(hub_api: ApiHub) -> None:
    me = hub_api.users["student"]
    person_id = person_id_of_student(hub_api.engine, me.subject)
    api = hub_api.as_role("student")
    answer, request_id = ask(api, '{ prefill(formId: "tuition_deferral") { fields { name quality } } }')
    released = [field["name"] for field in answer["data"]["prefill"]["fields"] if field["quality"] != "MISSING"]
    rows = audit_rows(hub_api.engine, request_id)
    assert [(r["purpose"], r["entity"], r["subject_person_id"], r["outcome"]) for r in rows] == [
        ("form:tuition_deferral", "form", person_id, "allowed")
    ]
    assert rows[0]["fields"] == released and (rows[0]["actor"], rows[0]["actor_role"]) == (me.subject, "student")

    answer, request_id = ask(api, "{ me { data { name quality } } }")
    rows = audit_rows(hub_api.engine, request_id)
    assert [(r["purpose"], r["entity"], r["subject_person_id"]) for r in rows] == [("self", "my_data", person_id)]
    assert rows[0]["fields"] == [field["name"] for field in answer["data"]["me"]["data"]]


def test_the_audit_log_is_append_only(hub_api: ApiHub) -> None:
    _, request_id = ask(hub_api.as_role("student"), "{ me { student { name } } }")
    assert audit_rows(hub_api.engine, request_id)
    for statement in (
        update(AuditEntry).where(AuditEntry.request_id == request_id).values(actor="someone else"),
        delete(AuditEntry).where(AuditEntry.request_id == request_id),
    ):
        with pytest.raises(DBAPIError, match="append-only"), hub_api.engine.begin() as connection:
            connection.execute(statement)
    rows = audit_rows(hub_api.engine, request_id)
    assert rows and all(row["actor"] == hub_api.users["student"].subject for row in rows)


def test_audit_rows_beyond_one_statement_are_written_all_or_none(
    hub_api: ApiHub, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On an autocommit connection, as the workers write a turn's rows: a batch whose later
    statement fails leaves none of its rows, so that writing them again request by request
    cannot write any twice."""
    monkeypatch.setattr(audit_module, "ROWS_PER_STATEMENT", 2)
    request_id = str(uuid.uuid4())

    def row(n: int, outcome: str | None = "allowed") -> dict[str, Any]:
        return {
            "at": dt.datetime.now(dt.UTC),
            "request_id": request_id,
            "actor": "audit-test",
            "actor_role": "steward",
            "purpose": "steward",
            "subject_person_id": None,
            "entity": "test",
            "fields": [f"field{n}"],
            "outcome": outcome,
            "detail": None,
        }

    with hub_api.engine.connect() as connection:
        connection.execution_options(isolation_level="AUTOCOMMIT")
        with pytest.raises(DBAPIError):  # the third row breaks a NOT NULL, in the second statement
            audit_module.write_rows(connection, [row(1), row(2), row(3, outcome=None)])
        assert audit_rows(hub_api.engine, request_id) == []
        audit_module.write_rows(connection, [row(4), row(5), row(6)])  # the connection is usable again
    assert [row["fields"] for row in audit_rows(hub_api.engine, request_id)] == [["field4"], ["field5"], ["field6"]]


def test_my_access_log_shows_the_officers_read(hub_api: ApiHub) -> None:
    me, officer = hub_api.users["student"], hub_api.users["college_officer"]
    read = hub_api.as_role("college_officer").query(f'{{ student(studentNo: "{me.subject}") {{ name }} }}')
    assert read["data"]["student"]["name"] == me.name
    answer = hub_api.as_role("student").query(
        "{ me { accessLog(first: 5) { nodes { actor actorRole purpose entity fields outcome } } } }"
    )
    nodes = answer["data"]["me"]["accessLog"]["nodes"]
    assert {
        "actor": officer.subject,
        "actorRole": "college_officer",
        "purpose": "department:student",
        "entity": "student",
        "fields": ["name"],
        "outcome": "allowed",
    } in nodes


# ----------------------------------------------------------------------------- steward
@pytest.mark.parametrize("role", sorted(ROLES))
def test_steward_views_are_for_stewards_only(hub_api: ApiHub, role: str) -> None:
    answer, request_id = ask(hub_api.as_role(role), "{ steward { streams { source } } }")
    if ROLES[role].steward:
        assert "errors" not in answer
        assert {stream["source"] for stream in answer["data"]["steward"]["streams"]} == set(FRESHNESS)
    else:
        assert answer["data"] is None and error_codes(answer) == [FORBIDDEN]
        assert [(r["entity"], r["outcome"]) for r in audit_rows(hub_api.engine, request_id)] == [("steward", "denied")]


def test_stewards_see_which_failed_checks_only_warn_and_reading_failing_keys_is_audited(hub_api: ApiHub) -> None:
    """A kept verdict says whether its failure blocks or only warns (the checks record it from
    the rule's declaration): the desk shows a warning apart from the failures that hold data back.
    Its failing keys name people: reading them writes an audit row."""
    verdicts = [("grades", "source_keys", False), ("students", "references", True)]
    failing = [{"student_no": "202401010001"}]
    query = "{ steward { checks(failingOnly: true) { entity name blocking %s } } }"
    with hub_api.engine.begin() as connection:
        kept = connection.execute(select(CheckResult.__table__)).mappings().all()
        connection.execute(delete(CheckResult))
        for entity, name, blocking in verdicts:
            verdict = Outcome(passed=False, counts={"failing": 1}, samples=failing if blocking else [])
            record_check_result(connection, entity, name, verdict, "t", blocking)
    try:
        steward = hub_api.as_role("steward")
        answer, request_id = ask(steward, query % "")
        keys, keys_request_id = ask(steward, query % "failingKeys")
    finally:
        with hub_api.engine.begin() as connection:
            connection.execute(delete(CheckResult))
            if kept:
                connection.execute(insert(CheckResult), [dict(row) for row in kept])
    assert "errors" not in answer, answer
    shown = [(check["entity"], check["name"], check["blocking"]) for check in answer["data"]["steward"]["checks"]]
    assert shown == verdicts
    assert [json.loads(check["failingKeys"]) for check in keys["data"]["steward"]["checks"]] == [[], failing]
    assert audit_rows(hub_api.engine, request_id) == []  # no failing keys asked for, none read
    assert [(r["entity"], r["fields"], r["purpose"]) for r in audit_rows(hub_api.engine, keys_request_id)] == [
        ("check", ["students.references failing keys"], "steward")
    ]


ID_NUMBER_IN_PAYLOAD = "440902200308246403"  # a well-formed number, as a source would send it


@pytest.fixture
def own_quarantine_row(hub_api: ApiHub) -> Iterator[int]:
    """A quarantined record of this test's own, removed afterwards (quarantine is not append-only)."""
    with hub_api.engine.begin() as connection:
        row_id = connection.execute(
            insert(QuarantinedRecord)
            .values(
                source="academic",
                stream="students",
                source_key=f"T{uuid.uuid4().hex[:12]}",
                reason="test: a record a steward must look at",
                reason_hash=uuid.uuid4().hex[:16],
                payload={"XH": "T0001", "SFZJH": ID_NUMBER_IN_PAYLOAD, "note": f"id {ID_NUMBER_IN_PAYLOAD} inside"},
                run_id="test",
            )
            .returning(QuarantinedRecord.id)
        ).scalar_one()
    yield row_id
    with hub_api.engine.begin() as connection:
        connection.execute(delete(QuarantinedRecord).where(QuarantinedRecord.id == row_id))


@pytest.fixture
def own_conflict(hub_api: ApiHub) -> Iterator[int]:
    with hub_api.engine.begin() as connection:
        conflict_id = connection.execute(
            insert(Conflict)
            .values(
                kind="test_conflict",
                subject=f"test:{uuid.uuid4().hex}",
                person_id=person_id_of_student(hub_api.engine, hub_api.users["student"].subject),
                details={"why": "a test's own conflict", "id_number": ID_NUMBER_IN_PAYLOAD},
                status="open",
            )
            .returning(Conflict.id)
        ).scalar_one()
    yield conflict_id
    with hub_api.engine.begin() as connection:
        connection.execute(delete(Conflict).where(Conflict.id == conflict_id))


QUARANTINE = """query($after: String) { steward { quarantine(first: 100, after: $after) {
    nodes { id source stream sourceKey payload resolvedAt } pageInfo { hasNextPage endCursor } } } }"""


def test_steward_sees_quarantine_masked_and_resolves_it_once(hub_api: ApiHub, own_quarantine_row: int) -> None:
    steward = hub_api.as_role("steward")
    nodes, after = [], None
    while True:
        answer = steward.query(QUARANTINE, {"after": after})
        assert "errors" not in answer
        found = answer["data"]["steward"]["quarantine"]
        nodes += found["nodes"]
        if not found["pageInfo"]["hasNextPage"]:
            break
        after = found["pageInfo"]["endCursor"]
    mine = next(node for node in nodes if node["id"] == str(own_quarantine_row))
    payload = json.loads(mine["payload"])
    masked = ID_NUMBER_IN_PAYLOAD[:3] + "*" * 11 + ID_NUMBER_IN_PAYLOAD[-4:]
    assert payload["SFZJH"] == masked and payload["note"] == f"id {masked} inside"
    assert ID_NUMBER_IN_PAYLOAD not in json.dumps(answer)

    mutation = """mutation($id: ID!) { resolveQuarantine(id: $id, resolution: "fixed at source") {
        id resolvedAt resolvedBy resolution } }"""
    answer, request_id = ask(steward, mutation, {"id": str(own_quarantine_row)})
    assert "errors" not in answer
    resolved = answer["data"]["resolveQuarantine"]
    assert resolved["resolvedBy"] == hub_api.users["steward"].subject and resolved["resolution"] == "fixed at source"
    rows = audit_rows(hub_api.engine, request_id)
    assert any(
        row["entity"] == "quarantine" and row["actor_role"] == "steward" and str(own_quarantine_row) in row["fields"][0]
        for row in rows
    )
    with hub_api.engine.connect() as connection:
        stored = connection.execute(
            select(QuarantinedRecord.resolved_by, QuarantinedRecord.resolution).where(
                QuarantinedRecord.id == own_quarantine_row
            )
        ).one()
    assert tuple(stored) == (hub_api.users["steward"].subject, "fixed at source")

    again = steward.query(mutation, {"id": str(own_quarantine_row)})
    assert not (again["data"] or {}).get("resolveQuarantine") and error_codes(again) == [NOT_FOUND]


def test_steward_sees_conflicts_and_resolves_one_once(hub_api: ApiHub, own_conflict: int) -> None:
    steward = hub_api.as_role("steward")
    with hub_api.engine.connect() as connection:
        open_ids = set(connection.execute(select(Conflict.id).where(Conflict.status == "open")).scalars())
    answer = steward.query("{ steward { conflicts(first: 100) { nodes { id kind status details } } } }")
    assert "errors" not in answer
    nodes = answer["data"]["steward"]["conflicts"]["nodes"]
    assert {int(node["id"]) for node in nodes} == open_ids and len(open_ids) >= 2  # the stand-ins' own, and ours
    assert ID_NUMBER_IN_PAYLOAD not in json.dumps(answer)

    mutation = """mutation($id: ID!) { resolveConflict(id: $id, resolution: "checked: the same person") {
        id status resolvedBy resolution } }"""
    answer, request_id = ask(steward, mutation, {"id": str(own_conflict)})
    assert "errors" not in answer
    assert answer["data"]["resolveConflict"] == {
        "id": str(own_conflict),
        "status": "resolved",
        "resolvedBy": hub_api.users["steward"].subject,
        "resolution": "checked: the same person",
    }
    rows = audit_rows(hub_api.engine, request_id)
    person_id = person_id_of_student(hub_api.engine, hub_api.users["student"].subject)
    assert [(r["entity"], r["fields"], r["subject_person_id"], r["actor_role"]) for r in rows] == [
        ("conflict", ["resolve"], person_id, "steward")
    ]
    again = steward.query(mutation, {"id": str(own_conflict)})
    assert not (again["data"] or {}).get("resolveConflict") and error_codes(again) == [NOT_FOUND]


def test_non_stewards_cannot_resolve(hub_api: ApiHub, own_conflict: int) -> None:
    for role in (role for role in ROLES if not ROLES[role].steward):
        answer = hub_api.as_role(role).query(
            f'mutation {{ resolveConflict(id: "{own_conflict}", resolution: "no") {{ id }} }}'
        )
        assert error_codes(answer) == [FORBIDDEN], role
    with hub_api.engine.connect() as connection:
        status = connection.execute(select(Conflict.status).where(Conflict.id == own_conflict)).scalar_one()
    assert status == "open"


ACCEPT_ROW_COUNT = """mutation($entity: String!, $rowCount: Int!, $reason: String!) {
  acceptRowCount(entity: $entity, rowCount: $rowCount, reason: $reason) {
    entity rowCount acceptedBy acceptedAt reason } }"""


@pytest.fixture
def own_acceptances(hub_api: ApiHub) -> Iterator[None]:
    """The row-count acceptances a test makes are its own: gone afterwards."""
    with hub_api.engine.connect() as connection:
        before = connection.execute(select(func.coalesce(func.max(RowCountAcceptance.id), 0))).scalar_one()
    yield
    with hub_api.engine.begin() as connection:
        connection.execute(delete(RowCountAcceptance).where(RowCountAcceptance.id > before))


def acceptances(hub_api: ApiHub) -> list[RowMapping]:
    with hub_api.engine.connect() as connection:
        return list(connection.execute(select(RowCountAcceptance.__table__)).mappings())


@pytest.mark.usefixtures("own_acceptances")
def test_steward_accepts_a_tables_row_count_as_its_baseline(hub_api: ApiHub) -> None:
    steward = hub_api.as_role("steward")
    with hub_api.engine.connect() as connection:
        live = connection.execute(select(func.count()).where(Student.deleted_at.is_(None))).scalar_one()
    # The count a steward was shown, if the table has moved on since, is not accepted.
    moved = steward.query(ACCEPT_ROW_COUNT, {"entity": "students", "rowCount": live + 1, "reason": "graduated"})
    assert moved["data"] is None and error_codes(moved) == ["BAD_USER_INPUT"]
    assert f"holds {live} live rows now" in moved["errors"][0]["message"] and acceptances(hub_api) == []
    variables = {"entity": "students", "rowCount": live, "reason": "  a cohort graduated  "}
    answer, request_id = ask(steward, ACCEPT_ROW_COUNT, variables)
    assert "errors" not in answer, answer
    with hub_api.engine.connect() as connection:
        baseline = row_count_baseline(connection, "students")
    accepted = answer["data"]["acceptRowCount"]
    subject = hub_api.users["steward"].subject
    assert {k: v for k, v in accepted.items() if k != "acceptedAt"} == {
        "entity": "students",
        "rowCount": live,
        "acceptedBy": subject,
        "reason": "a cohort graduated",
    }
    (stored,) = acceptances(hub_api)
    assert (stored["entity"], stored["row_count"], stored["accepted_by"]) == ("students", live, subject)
    assert dt.datetime.fromisoformat(accepted["acceptedAt"]) == stored["accepted_at"]
    # The students' row-count check compares with it next: nothing was evaluated after it.
    assert baseline == Baseline(live, stored["accepted_at"], subject)
    rows = audit_rows(hub_api.engine, request_id)
    assert [(r["entity"], r["fields"], r["actor_role"], r["outcome"]) for r in rows] == [
        ("check", [f"accept students.row_count {live}"], "steward", "allowed")
    ]


@pytest.mark.usefixtures("own_acceptances")
def test_a_row_count_is_accepted_only_for_a_checked_entity_and_with_a_reason(hub_api: ApiHub) -> None:
    steward = hub_api.as_role("steward")
    for entity, reason in (
        ("student", "the table's name, not the entity's"),
        ("audit_log", "not a unified table"),
        ("students; DROP TABLE student", "an injection"),
        ("students", "   "),
        ("students", "x" * 257),
    ):
        answer = steward.query(ACCEPT_ROW_COUNT, {"entity": entity, "rowCount": 0, "reason": reason})
        assert answer["data"] is None and error_codes(answer) == ["BAD_USER_INPUT"], (entity, reason)
    unknown = steward.query(ACCEPT_ROW_COUNT, {"entity": "student", "rowCount": 0, "reason": "x"})
    assert "students" in unknown["errors"][0]["message"]  # it names what may be accepted
    assert acceptances(hub_api) == []


@pytest.mark.usefixtures("own_acceptances")
def test_non_stewards_cannot_accept_a_row_count(hub_api: ApiHub) -> None:
    for role in (role for role in ROLES if not ROLES[role].steward):
        answer, request_id = ask(
            hub_api.as_role(role), ACCEPT_ROW_COUNT, {"entity": "students", "rowCount": 0, "reason": "no"}
        )
        assert answer["data"] is None and error_codes(answer) == [FORBIDDEN], role
        assert [(r["entity"], r["outcome"]) for r in audit_rows(hub_api.engine, request_id)] == [("steward", "denied")]
    assert acceptances(hub_api) == []


def test_a_list_is_filtered_only_by_fields_the_role_was_granted(hub_api: ApiHub) -> None:
    librarian = hub_api.as_role("librarian")
    by_class = "query($f: StudentFilter) { students(first: 5, filter: $f) { edges { node { studentNo } } } }"
    for criteria, field in (
        ({"classCode": "X"}, "classGroup"),
        ({"collegeCode": "X"}, "college"),
        ({"majorCode": "X"}, "major"),
        ({"entryYear": 2024}, "entryYear"),
    ):
        answer, request_id = ask(librarian, by_class, {"f": criteria})
        assert error_codes(answer) == [FORBIDDEN], criteria
        assert answer["data"] is None or answer["data"]["students"] is None
        (row,) = audit_rows(hub_api.engine, request_id)
        assert (row["outcome"], row["entity"], row["fields"]) == ("denied", "student", [field])
    # A granted field filters, and each row it lets through is known to hold the value: audited.
    answer, request_id = ask(librarian, by_class, {"f": {"status": "01"}})
    assert "errors" not in answer and answer["data"]["students"]["edges"]
    rows = audit_rows(hub_api.engine, request_id)
    assert len(rows) == len(answer["data"]["students"]["edges"])
    assert all(row["fields"] == ["status", "studentNo"] for row in rows), [row["fields"] for row in rows]


def test_reading_only_cursors_reads_the_keys_they_carry_and_is_audited(hub_api: ApiHub) -> None:
    officer = hub_api.as_role("college_officer")
    answer, request_id = ask(officer, "{ students(first: 5) { edges { cursor } pageInfo { endCursor } } }")
    assert "errors" not in answer, answer
    cursors = [edge["cursor"] for edge in answer["data"]["students"]["edges"]]
    assert len(cursors) == 5 and answer["data"]["students"]["pageInfo"]["endCursor"] == cursors[-1]
    rows = audit_rows(hub_api.engine, request_id)
    assert len(rows) == 5  # one per student whose 学号 a cursor carries
    assert all((row["outcome"], row["fields"]) == ("allowed", ["studentNo"]) for row in rows)
    # The end cursor alone carries the last student's.
    answer, request_id = ask(officer, "{ students(first: 5) { pageInfo { endCursor } } }")
    assert answer["data"]["students"]["pageInfo"]["endCursor"] == cursors[-1]
    assert [row["fields"] for row in audit_rows(hub_api.engine, request_id)] == [["studentNo"]]
    # Pages follow on from a cursor as before.
    after = officer.query(
        "query($a: String) { students(first: 2, after: $a) { edges { node { studentNo } } } }", {"a": cursors[1]}
    )
    assert len(after["data"]["students"]["edges"]) == 2


def test_a_finance_page_costs_the_same_statements_whatever_its_size(hub_api: ApiHub) -> None:
    """Bills and payments are loaded for the whole page at once, as fee status is: a page's
    statements do not grow with its students."""
    import threading

    from sqlalchemy import event

    from campushub.graphql.sqlite_writes import CHECKPOINT_THREAD

    finance = hub_api.as_role("finance_officer")
    page = (
        "{ students(first: %d) { edges { node { studentNo feeStatus { settled } "
        "bills { billNo amountFen } payments { paymentNo amountFen } } } } }"
    )
    counted: dict[int, list[str]] = {}
    for size in (5, 20):
        statements: list[str] = []

        def count(_connection: Any, _cursor: Any, statement: str, *_: Any, into: list[str] = statements) -> None:
            if threading.current_thread().name != CHECKPOINT_THREAD:
                into.append(statement)

        event.listen(hub_api.engine, "before_cursor_execute", count)
        try:
            answer = finance.query(page % size)
        finally:
            event.remove(hub_api.engine, "before_cursor_execute", count)
        assert "errors" not in answer, answer
        edges = answer["data"]["students"]["edges"]
        assert len(edges) == size and any(edge["node"]["bills"] for edge in edges)
        counted[size] = statements
    assert len(counted[5]) == len(counted[20]) <= 5, counted[20]  # rows, fees, bills, payments, audit


def test_quarantined_payloads_are_masked_in_text_numbers_and_keys() -> None:
    from campushub.graphql.steward import masked_payload

    number, legacy, mobile = "44010219900101123X", "440102900101123", "13800138000"
    payload = {
        "SFZJH": number,
        "id_as_number": 440102199001011234,
        "note": f"id_{number}; old {legacy}; call {mobile} or +86{mobile}",
        number: "a key of its own",
        "phones": [mobile, int(mobile), float(mobile), f"0086{mobile}"],
        "student_no": "202401010001",  # 12 digits: a 学号, not masked
        "amount_fen": 1250,
    }
    masked = masked_payload(payload)
    text = json.dumps(masked, ensure_ascii=False)
    for secret in (number, legacy, mobile, "440102199001011234"):
        assert secret not in text, secret
    assert masked["SFZJH"] == "440***********123X"
    assert masked["phones"][:3] == ["138****8000"] * 3 and mobile not in masked["phones"][3]
    assert masked["student_no"] == "202401010001" and masked["amount_fen"] == 1250


def test_quarantined_permit_and_passport_numbers_are_masked_by_the_field_that_holds_them() -> None:
    """A travel permit's or passport's number has no shape of its own: it is masked because the
    source declares the field it sits in an ID number's."""
    from campushub.graphql.steward import masked_payload

    payload = {"SFZJLXM": "A", "SFZJH": "E12345678", "XH": "202401010001", "nested": {"idNumber": "H12345678"}}
    assert masked_payload(payload) == {
        "SFZJLXM": "A",
        "SFZJH": "E1*****78",
        "XH": "202401010001",
        "nested": {"idNumber": "H1*****78"},
    }


@pytest.mark.parametrize(
    ("written", "shown"),
    [
        ("138-0013-8000", "138****8000"),
        ("138 0013 8000", "138****8000"),
        ("+86 138 0013 8000", "+86 138****8000"),
        ("(+86)13800138000", "(+86)138****8000"),
        ("0086-138-0013-8000", "0086-138****8000"),
        ("440102 19900101 123X", "440***********123X"),
        ("440102-19900101-123X", "440***********123X"),
        ("440102 1990 0101 123X", "440***********123X"),
        ("440102 900101 123", "440********1123"),
        ("138  0013  8000", "138****8000"),
        ("138\t0013\t8000", "138****8000"),
        ("440102 - 19900101 - 123X", "440***********123X"),
        ("１３８００１３８０００", "138****8000"),
        ("４４０１０２１９９００１０１１２３Ｘ", "440***********123X"),
    ],
)
def test_quarantined_numbers_written_with_separators_are_masked(written: str, shown: str) -> None:
    from campushub.graphql.steward import masked_payload

    assert masked_payload({"note": f"call {written}, thanks"}) == {"note": f"call {shown}, thanks"}
    assert masked_payload({written: "a key"}) == {shown: "a key"}


@pytest.mark.parametrize(
    "ordinary",
    ["2026-12-06", "2026-12-06 13:45:00", "12,345.00", "138-00", "202401010001", "6222 0212 3456 7890", "1 2 3 4"],
)
def test_dates_times_amounts_and_short_codes_in_quarantine_are_not_masked(ordinary: str) -> None:
    from campushub.graphql.steward import masked_payload

    assert masked_payload({"note": ordinary}) == {"note": ordinary}


def test_keys_that_mask_alike_keep_every_value() -> None:
    from campushub.graphql.steward import masked_payload

    # Same first three and last four digits: mask_phone shows both as 138****8000.
    payload = {"13800138000": "first", "13811118000": "second", "13822228000": "third", "name": "张三"}
    masked = masked_payload(payload)
    assert masked == {"138****8000": "first", "138****8000 (2)": "second", "138****8000 (3)": "third", "name": "张三"}
    assert masked_payload(payload) == masked  # the same payload is always shown the same way
