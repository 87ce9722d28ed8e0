"""Form prefill through the GraphQL API: every shipped form, checked against the unified layer.

What each filled value should be — and its source system, source key and as-of time — is
read here independently from the database with SQLAlchemy, and derived values (fees settled,
outstanding, refundable balance) are recomputed from the rows. Then: purpose limitation (only
declared fields are released and audited), quality flags (open identity conflicts, quarantined
newer versions) and coverage over the population.
"""

from __future__ import annotations

import datetime as dt
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from sqlalchemy import Engine, RowMapping, delete, event, func, insert, select, update

from campushub.graphql.app import ApiSettings, api_engine
from campushub.graphql.auth import Principal
from campushub.graphql.coverage import FILLABLE, POPULATION, coverage
from campushub.graphql.execution import THREADS_SETTING
from campushub.graphql.forms import Form, FormField, catalog
from campushub.graphql.permissions import ROLES
from campushub.graphql.prefill import PATHS, Filled, entities_of, fill, load_own, load_subjects
from campushub.graphql.sqlite_writes import CHECKPOINT_THREAD
from campushub.models.landing import QuarantinedRecord, SyncState
from campushub.models.protect import decrypt_id, mask_id
from campushub.models.service import AuditEntry
from campushub.models.sources import FRESHNESS
from campushub.models.unified import (
    CardAccount,
    ClassGroup,
    Conflict,
    FeeBill,
    FieldProvenance,
    Grade,
    Major,
    OrgUnit,
    Payment,
    Person,
    Staff,
    Student,
)
from campushub.reference.codes import code_table
from tests.api_support import Api, ApiHub, ApiServer

FORMS = sorted(catalog())
PREFILL = """query($form: ID!) { prefill(formId: $form) {
    form { id fields { name prefilled } }
    fields { name label labelEn value display source sourceKey asOf quality notes }
    filled missing { name } } }"""
CONFLICT_NOTE = "open identity conflict"
QUARANTINE_NOTE = "a newer version from the source is in quarantine"


# ------------------------------------------------------------------- the database's truth
@dataclass(frozen=True)
class Truth:
    """What a filled field must say; `value is None` means the hub cannot fill it."""

    value: str | None
    source: str | None = None
    source_key: str | None = None
    as_of: dt.datetime | None = None


MISSING = Truth(None)


def _one(rows: list[RowMapping]) -> RowMapping | None:
    assert len(rows) <= 1, "the test people have one record of each kind"
    return rows[0] if rows else None


@dataclass
class Rows:
    """One person's rows, read straight from the unified layer."""

    person: RowMapping
    provenance: dict[str, RowMapping]
    student: RowMapping | None
    staff: RowMapping | None
    card: RowMapping | None
    bills: list[RowMapping]
    last_paid_at: dt.datetime | None
    grades: list[RowMapping]

    @classmethod
    def of(cls, engine: Engine, person_id: int) -> Rows:
        college, major, klass = OrgUnit.__table__.alias(), Major.__table__, ClassGroup.__table__
        with engine.connect() as connection:
            person = connection.execute(select(Person.__table__).where(Person.id == person_id)).mappings().one()
            provenance = {
                row["field"]: row
                for row in connection.execute(
                    select(FieldProvenance.__table__).where(
                        FieldProvenance.entity == "person", FieldProvenance.entity_id == person_id
                    )
                ).mappings()
            }
            student = _one(
                list(
                    connection.execute(
                        select(
                            Student.__table__,
                            college.c.name.label("college_name"),
                            major.c.name.label("major_name"),
                            klass.c.name.label("class_name"),
                        )
                        .outerjoin(college, college.c.id == Student.college_id)
                        .outerjoin(major, major.c.id == Student.major_id)
                        .outerjoin(klass, klass.c.id == Student.class_id)
                        .where(Student.person_id == person_id, Student.deleted_at.is_(None))
                    ).mappings()
                )
            )
            department = OrgUnit.__table__.alias()
            staff = _one(
                list(
                    connection.execute(
                        select(Staff.__table__, department.c.name.label("department_name"))
                        .outerjoin(department, department.c.id == Staff.department_id)
                        .where(Staff.person_id == person_id, Staff.deleted_at.is_(None))
                    ).mappings()
                )
            )
            card = _one(
                list(
                    connection.execute(
                        select(CardAccount.__table__).where(
                            CardAccount.person_id == person_id, CardAccount.deleted_at.is_(None)
                        )
                    ).mappings()
                )
            )
            student_no = student["student_no"] if student else None
            bills = list(
                connection.execute(
                    select(FeeBill.__table__)
                    .where(FeeBill.student_no == student_no, FeeBill.deleted_at.is_(None))
                    .order_by(FeeBill.bill_no)
                ).mappings()
            )
            last_paid_at = connection.execute(
                select(func.max(Payment.paid_at)).where(Payment.student_no == student_no, Payment.deleted_at.is_(None))
            ).scalar()
            grades = list(
                connection.execute(
                    select(Grade.__table__).where(Grade.student_no == student_no, Grade.deleted_at.is_(None))
                ).mappings()
            )
        return cls(person, provenance, student, staff, card, bills, last_paid_at, grades)

    # -- what each path must come out as -----------------------------------------------
    def truth(self, form_field: FormField) -> Truth:
        path = form_field.path
        assert path is not None
        entity, name = path.split(".", 1)
        if entity == "person":
            return self._person(name, form_field.full_id_number)
        if entity in ("student", "staff", "card"):
            return self._entity(entity, name)
        if entity == "fees":
            return self._fees(name)
        assert entity == "grades", path
        return self._grades(name)

    def _person(self, name: str, full_id_number: bool) -> Truth:
        if name == "id_number":
            number = decrypt_id(self.person["id_number_cipher"])
            value = number if full_id_number else mask_id(number)
        elif name == "id_type":  # the document comes with its number, from the same source
            value, name = self.person["id_type"], "id_number"
        else:
            raw = self.person[name]
            value = raw.isoformat() if isinstance(raw, dt.date) else raw
        if value is None:
            return MISSING
        provenance = self.provenance[name]
        return Truth(value, provenance["source"], provenance["source_key"], provenance["as_of"])

    def _entity(self, entity: str, name: str) -> Truth:
        row: RowMapping | None = getattr(self, entity)
        if row is None or (entity, name) == ("card", "returned"):  # no system records a returned card
            return MISSING
        columns = {
            ("student", "college"): "college_name",
            ("student", "major"): "major_name",
            ("student", "class"): "class_name",
            ("staff", "department"): "department_name",
            ("staff", "position"): "position_name",
            ("staff", "title"): "title_code",
            ("staff", "monthly_gross"): "monthly_gross_fen",
            ("card", "balance"): "balance_fen",
        }
        if (entity, name) == ("card", "refundable_balance"):
            # A frozen card's balance is held, not refunded; a negative one is never paid out.
            raw: Any = 0 if row["status"] == "冻结" else max(row["balance_fen"], 0)
        else:
            raw = row[columns.get((entity, name), name)]
        if raw is None:
            return MISSING
        value = raw.isoformat() if isinstance(raw, dt.date) else str(raw)
        source, key = {"student": ("academic", "student_no"), "staff": ("hr", "staff_no"), "card": ("card", "card_no")}[
            entity
        ]
        return Truth(value, source, row[key], row["source_updated_at"])

    def _fees(self, name: str) -> Truth:
        if self.student is None:
            return MISSING
        student_no = self.student["student_no"]
        if name == "last_payment_at":
            if self.last_paid_at is None:
                return MISSING
            return Truth(self.last_paid_at.isoformat(), "finance", student_no, self.last_paid_at)
        if not self.bills:
            return MISSING
        owed = [bill for bill in self.bills if bill["amount_fen"] > bill["paid_fen"]]
        outstanding = sum(bill["amount_fen"] - bill["paid_fen"] for bill in owed)
        value = {
            "billed": str(sum(bill["amount_fen"] for bill in self.bills)),
            "paid": str(sum(bill["paid_fen"] for bill in self.bills)),
            "outstanding": str(outstanding),
            "settled": "true" if outstanding == 0 else "false",
            "outstanding_items": ",".join(bill["bill_no"] for bill in owed),
        }[name]
        as_of = max(bill["source_updated_at"] or bill["loaded_at"] for bill in self.bills)
        return Truth(value, "finance", student_no, as_of)

    def _grades(self, name: str) -> Truth:
        if self.student is None or not self.grades:
            return MISSING
        scores = [grade["score"] for grade in self.grades if grade["score"] is not None]
        passed_credits = sum(
            grade["credits"] or 0 for grade in self.grades if grade["score"] is not None and grade["score"] >= 60
        )
        value = {
            "courses": str(len(self.grades)),
            "credits": f"{passed_credits:g}",
            "average_score": f"{sum(scores) / len(scores):.1f}",
            "last_term": max(grade["term"] for grade in self.grades),
        }[name]
        as_of = max(grade["source_updated_at"] for grade in self.grades if grade["source_updated_at"])
        return Truth(value, "academic", self.student["student_no"], as_of)


# ------------------------------------------------------------------------------- helpers
def person_of(engine: Engine, principal: Principal) -> int:
    entity, key = (Student, Student.student_no) if principal.role == "student" else (Staff, Staff.staff_no)
    with engine.connect() as connection:
        person_id = connection.execute(select(entity.person_id).where(key == principal.subject)).scalar()
    assert person_id is not None
    return person_id


def user_for(hub: ApiHub, form: Form) -> Principal:
    """A demo user who may use the form and is its subject (a student for student forms)."""
    role = "staff" if form.subject == "staff" else "student"
    assert role in form.roles
    return hub.users[role]


def prefill(api: Api, form_id: str) -> tuple[dict[str, Any], str]:
    response = api.post(PREFILL, {"form": form_id})
    assert response.status_code == 200, response.text
    return response.json(), response.headers["X-Request-ID"]


def audit_rows(engine: Engine, request_id: str) -> list[RowMapping]:
    with engine.connect() as connection:
        query = select(AuditEntry.__table__).where(AuditEntry.request_id == request_id).order_by(AuditEntry.id)
        return list(connection.execute(query).mappings())


def check_prefill(hub: ApiHub, principal: Principal, form: Form) -> dict[str, dict[str, Any]]:
    """Prefill `form` as `principal` and check every field against the database; the fields by name."""
    answer, _ = prefill(hub.as_principal(principal), form.id)
    assert "errors" not in answer, answer
    result = answer["data"]["prefill"]
    fields = result["fields"]
    # every declared field, in the declared order, with its labels
    assert [field["name"] for field in fields] == [field.name for field in form.fields]
    assert [(field["label"], field["labelEn"]) for field in fields] == [(f.label, f.label_en) for f in form.fields]
    rows = Rows.of(hub.engine, person_of(hub.engine, principal))
    for form_field, field in zip(form.fields, fields, strict=True):
        expected = rows.truth(form_field) if form_field.path else MISSING
        if expected.value is None:
            assert field["quality"] == "MISSING" and field["value"] is None, field
            assert field["notes"] and all(note.strip() for note in field["notes"]), field  # a reason
            if form_field.path is None and form_field.reason:
                assert field["notes"] == [form_field.reason]
            continue
        assert field["value"] == expected.value, (form.id, field["name"])
        assert (field["source"], field["sourceKey"]) == (expected.source, expected.source_key), field
        as_of = dt.datetime.fromisoformat(field["asOf"]) if field["asOf"] else None
        assert as_of == expected.as_of, field
        assert field["display"], field
        assert field["quality"] == ("FLAGGED" if field["notes"] else "OK"), field
    filled = [field["name"] for field in fields if field["quality"] != "MISSING"]
    assert result["filled"] == len(filled)
    assert [field["name"] for field in result["missing"]] == [f["name"] for f in fields if f["quality"] == "MISSING"]
    return {field["name"]: field for field in fields}


# ----------------------------------------------------------------------- every form
@pytest.mark.parametrize("form_id", FORMS)
def test_prefill_fills_every_declared_field_from_the_unified_layer(hub_api: ApiHub, form_id: str) -> None:
    form = catalog()[form_id]
    fields = check_prefill(hub_api, user_for(hub_api, form), form)
    # the demo users were chosen so that the hub fills most of each form
    assert sum(field["quality"] != "MISSING" for field in fields.values()) >= len(form.paths) - 1


def test_a_student_registered_with_a_permit_or_passport_gets_the_certificate_unflagged(hub_api: ApiHub) -> None:
    """Students from Hong Kong, Macao and Taiwan, and from abroad, prove who they are with
    another document: the certificate prints its kind and its whole number, and nothing about it
    is flagged — it has no birth date or sex in it to disagree with."""
    form = catalog()["enrollment_certificate"]
    with hub_api.engine.connect() as connection:
        holders = connection.execute(
            select(Student.student_no, Person.id_type)
            .join(Person, Person.id == Student.person_id)
            .where(Person.id_type != "1", Student.deleted_at.is_(None))
            .order_by(Student.student_no)
        ).all()
    assert {id_type for _, id_type in holders} >= {"6", "9"}, holders  # the stand-ins' permits and cards
    for student_no, id_type in holders:
        fields = check_prefill(hub_api, Principal(subject=student_no, role="student"), form)
        document, number = fields["id_type"], fields["id_number"]
        assert (document["value"], document["display"]) == (id_type, code_table("id_document_type")[id_type].name)
        assert document["source"] == number["source"] == "academic"
        assert number["quality"] == document["quality"] == "OK", (student_no, number["notes"])
        assert len(number["value"]) < 18 and "*" not in number["value"]  # the whole number, as the form declares


def students_where(engine: Engine, *, settled: bool | None = None, card_status: str | None = None) -> str | None:
    """A student with a card and bills, all paid (settled) or not, or whose card has a status."""
    owed = func.sum(FeeBill.amount_fen - FeeBill.paid_fen).filter(FeeBill.amount_fen > FeeBill.paid_fen)
    query = (
        select(Student.student_no)
        .join(CardAccount, CardAccount.person_id == Student.person_id)
        .join(FeeBill, FeeBill.student_no == Student.student_no)
        .where(Student.deleted_at.is_(None), FeeBill.deleted_at.is_(None))
        .group_by(Student.student_no)
        .order_by(Student.student_no)
    )
    if settled is not None:
        query = query.having(func.coalesce(owed, 0) == 0 if settled else func.coalesce(owed, 0) > 0)
    if card_status is not None:
        query = query.where(CardAccount.status == card_status)
    with engine.connect() as connection:
        return connection.execute(query).scalar()


def test_derived_fees_and_refundable_balance(hub_api: ApiHub) -> None:
    clearance, deferral = catalog()["graduation_clearance"], catalog()["tuition_deferral"]
    cases = {
        "settled": students_where(hub_api.engine, settled=True),
        "owing": students_where(hub_api.engine, settled=False),
        "frozen card": students_where(hub_api.engine, card_status="冻结"),
    }
    assert cases["settled"] and cases["owing"], cases
    seen = {}
    for case, student_no in cases.items():
        if student_no is None:
            continue
        principal = Principal(subject=student_no, role="student")
        fields = check_prefill(hub_api, principal, clearance)
        check_prefill(hub_api, principal, deferral)
        seen[case] = (fields["fees_settled"]["value"], fields["outstanding"]["value"], fields["refundable"]["value"])
    assert seen["settled"][:2] == ("true", "0")
    assert seen["owing"][0] == "false" and int(seen["owing"][1]) > 0
    if "frozen card" in seen:
        assert seen["frozen card"][2] == "0"


# ----------------------------------------------------------------- purpose limitation
@pytest.mark.parametrize("form_id", FORMS)
def test_prefill_releases_and_audits_only_the_declared_fields(hub_api: ApiHub, form_id: str) -> None:
    form = catalog()[form_id]
    principal = user_for(hub_api, form)
    answer, request_id = prefill(hub_api.as_principal(principal), form_id)
    fields = answer["data"]["prefill"]["fields"]
    assert [field["name"] for field in fields] == [field.name for field in form.fields]
    released = [field["name"] for field in fields if field["quality"] != "MISSING"]
    rows = audit_rows(hub_api.engine, request_id)
    assert [(r["purpose"], r["entity"], r["outcome"], r["subject_person_id"]) for r in rows] == [
        (f"form:{form_id}", "form", "allowed", person_of(hub_api.engine, principal))
    ]
    assert rows[0]["fields"] == released
    assert set(released) <= {field.name for field in form.fields if field.path}


def test_a_prefill_of_ones_own_record_costs_two_statements(hub_api: ApiHub) -> None:
    """Each statement is a round trip, and a request's own cost on PostgreSQL: who the caller
    is comes with their golden record, their student rows and the facts about them (each golden
    field's provenance, conflicts, quarantine, last syncs); then the audit insert."""
    form = catalog()["enrollment_certificate"]
    api = hub_api.as_principal(user_for(hub_api, form))
    statements: list[str] = []

    def count(_connection: Any, _cursor: Any, statement: str, *_: Any) -> None:
        # Not the request's: on SQLite a background thread checkpoints the log after writes.
        if threading.current_thread().name != CHECKPOINT_THREAD:
            statements.append(statement)

    event.listen(hub_api.engine, "before_cursor_execute", count)
    try:
        answer, _ = prefill(api, form.id)
    finally:
        event.remove(hub_api.engine, "before_cursor_execute", count)
    assert all(field["quality"] != "MISSING" for field in answer["data"]["prefill"]["fields"][:3])
    assert len(statements) == 2, statements
    tables = ("person", "own_student", "class_group", "field_provenance", "conflict", "quarantine", "sync_state")
    assert all(table in statements[0] for table in tables)
    assert statements[-1].startswith("INSERT INTO audit_log")


# Operations on the event loop read on the connection their worker keeps; on threads, on pooled ones.
@pytest.mark.parametrize("threads", [0, 2])
def test_a_prefill_leaves_sqlite_the_statements_it_compiled(
    hub_api: ApiHub, threads: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No PRAGMA runs with a prefill but its deadline's busy timeout: a flag PRAGMA — as
    SQLAlchemy's reset of an isolation level at check-in — expires every statement SQLite has
    compiled on the connection, and the next prefill would compile its statement anew. Served
    by an app of its own, whose every connection is traced once in use (the shared app's
    workers keep theirs), after a first prefill has set its connections up."""
    if hub_api.engine.dialect.name != "sqlite":
        pytest.skip("a PostgreSQL session's prepared statements outlive such settings")
    monkeypatch.setenv(THREADS_SETTING, str(threads))
    form = catalog()["enrollment_certificate"]
    executed: list[str] = []
    recording = threading.Event()

    def trace(statement: str) -> None:
        # Not the request's: a background thread checkpoints the log after writes.
        if recording.is_set() and threading.current_thread().name != CHECKPOINT_THREAD:
            executed.append(statement)

    engine = api_engine(hub_api.engine.url.render_as_string(hide_password=False))
    # From each connection's first checkout on — not its set-up, which a new one runs once — for good.
    event.listen(engine, "checkout", lambda dbapi_connection, *_: dbapi_connection.set_trace_callback(trace))
    try:
        with ApiServer(engine, ApiSettings()) as server:
            api = Api(server.url, user_for(hub_api, form))
            prefill(api, form.id)
            recording.set()
            for _ in range(2):
                prefill(api, form.id)
            recording.clear()  # (at its end the app gives its connections back: not a prefill's)
    finally:
        engine.dispose()
    assert sum(statement.startswith("SELECT person.id") for statement in executed) == 2, executed
    pragmas = [statement for statement in executed if statement.upper().startswith("PRAGMA")]
    assert pragmas and all(pragma.startswith("PRAGMA busy_timeout=") for pragma in pragmas), pragmas


@pytest.mark.parametrize("form_id", FORMS)
def test_a_role_the_form_is_not_for_is_refused_and_audited(hub_api: ApiHub, form_id: str) -> None:
    form = catalog()[form_id]
    for role in sorted(set(ROLES) - form.roles):
        answer, request_id = prefill(hub_api.as_role(role), form_id)
        assert answer["data"] is None, role
        assert [error["extensions"]["code"] for error in answer["errors"]] == ["FORBIDDEN"], role
        rows = audit_rows(hub_api.engine, request_id)
        assert [(r["purpose"], r["entity"], r["outcome"], r["fields"]) for r in rows] == [
            (f"form:{form_id}", "form", "denied", [form_id])
        ], role


# ----------------------------------------------------------------------------- quality
def student_with_open_conflict(engine: Engine) -> str:
    """The 学号 of a student an open identity conflict is about: named by the conflict's person,
    or — a card whose name is not its holder's stays unlinked — by the holder the card claims."""
    with engine.connect() as connection:
        for conflict in connection.execute(select(Conflict.__table__).where(Conflict.status == "open")).mappings():
            if conflict["person_id"] is not None:
                query = select(Student.student_no).where(Student.person_id == conflict["person_id"])
            else:
                kind, _, key = str(conflict["details"].get("holder", "")).partition(":")
                if kind != "student":
                    continue
                query = select(Student.student_no).where(Student.student_no == key)
            student_no = connection.execute(query.where(Student.deleted_at.is_(None))).scalar()
            if student_no is not None:
                return student_no
    raise AssertionError("the stand-ins open a card-name conflict about a student")


def test_a_person_with_an_open_identity_conflict_is_flagged(hub_api: ApiHub) -> None:
    principal = Principal(subject=student_with_open_conflict(hub_api.engine), role="student")
    form = catalog()["enrollment_certificate"]
    fields = check_prefill(hub_api, principal, form)
    person_fields = [field.name for field in form.fields if field.path and field.path.startswith("person.")]
    for name in person_fields:
        assert fields[name]["quality"] == "FLAGGED", fields[name]
        assert any(CONFLICT_NOTE in note for note in fields[name]["notes"]), fields[name]
    # the demo student has no conflict: not flagged for one
    demo = check_prefill(hub_api, hub_api.users["student"], form)
    assert not any(CONFLICT_NOTE in note for field in demo.values() for note in field["notes"])


def test_an_unlinked_conflict_over_the_id_number_flags_the_persons_values(hub_api: ApiHub) -> None:
    """The same ID number under two names: the conflict names no person until a steward decides,
    and is found by the number's hash (`id:<hash>`)."""
    principal = hub_api.users["student"]
    with hub_api.engine.begin() as connection:
        person_id = connection.execute(
            select(Student.person_id).where(Student.student_no == principal.subject)
        ).scalar_one()
        number_hash = connection.execute(select(Person.id_number_hash).where(Person.id == person_id)).scalar_one()
        conflict_id = connection.execute(
            insert(Conflict)
            .values(kind="same_id_number", subject=f"id:{number_hash[:16]}", person_id=None, details={"test": True})
            .returning(Conflict.id)
        ).scalar_one()
    try:
        form = catalog()["enrollment_certificate"]
        fields = check_prefill(hub_api, principal, form)
    finally:
        with hub_api.engine.begin() as connection:
            connection.execute(delete(Conflict).where(Conflict.id == conflict_id))
    for form_field in form.fields:
        if form_field.path and form_field.path.startswith("person."):
            assert any(CONFLICT_NOTE in note for note in fields[form_field.name]["notes"]), form_field.name


@pytest.fixture
def quarantined_newer_version(hub_api: ApiHub) -> Iterator[str]:
    """A refused newer version of the demo student's record, removed afterwards."""
    student_no = hub_api.users["student"].subject
    with hub_api.engine.begin() as connection:
        row_id = connection.execute(
            insert(QuarantinedRecord)
            .values(
                source="academic",
                stream="students",
                source_key=student_no,
                reason="test: impossible date RXNY=2026-13",
                reason_hash=uuid.uuid4().hex[:16],
                payload={"XH": student_no, "RXNY": "2026-13"},
                run_id="test",
            )
            .returning(QuarantinedRecord.id)
        ).scalar_one()
    yield student_no
    with hub_api.engine.begin() as connection:
        connection.execute(delete(QuarantinedRecord).where(QuarantinedRecord.id == row_id))


def test_a_quarantined_newer_version_flags_the_entitys_values(hub_api: ApiHub, quarantined_newer_version: str) -> None:
    form = catalog()["enrollment_certificate"]
    fields = check_prefill(hub_api, hub_api.users["student"], form)
    for form_field in form.fields:
        notes = fields[form_field.name]["notes"]
        if form_field.path and form_field.path.startswith("student."):
            assert fields[form_field.name]["quality"] == "FLAGGED" and QUARANTINE_NOTE in notes, form_field.name
        else:
            assert QUARANTINE_NOTE not in notes, form_field.name  # the person's golden fields are another record


def test_the_flag_goes_when_the_quarantined_record_is_gone(hub_api: ApiHub) -> None:
    fields = check_prefill(hub_api, hub_api.users["student"], catalog()["enrollment_certificate"])
    assert not any(QUARANTINE_NOTE in note for field in fields.values() for note in field["notes"])


def test_a_source_overdue_flags_the_values_it_provides(hub_api: ApiHub) -> None:
    """The academic system's last complete sync pushed past its freshness window: the student
    fields of the enrollment certificate are flagged with when it was, the person's golden
    fields (provenance of their own) are not; the flag goes with a fresh sync."""
    form = catalog()["enrollment_certificate"]
    long_ago = dt.datetime(2020, 1, 1, tzinfo=dt.UTC)
    with hub_api.engine.begin() as connection:
        kept = connection.execute(
            select(SyncState.stream, SyncState.last_success_at).where(SyncState.source == "academic")
        ).all()
        assert kept
        connection.execute(update(SyncState).where(SyncState.source == "academic").values(last_success_at=long_ago))
    try:
        fields = check_prefill(hub_api, hub_api.users["student"], form)
    finally:
        with hub_api.engine.begin() as connection:
            for stream, at in kept:
                connection.execute(
                    update(SyncState)
                    .where(SyncState.source == "academic", SyncState.stream == stream)
                    .values(last_success_at=at)
                )
    overdue = f"academic not synced within {FRESHNESS['academic']} (last complete sync: 2020-01-01T00:00+00:00)"
    for form_field in form.fields:
        notes = fields[form_field.name]["notes"]
        if form_field.path and form_field.path.startswith("student."):
            assert fields[form_field.name]["quality"] == "FLAGGED" and overdue in notes, form_field.name
        else:
            assert not any("not synced" in note for note in notes), form_field.name
    fresh = check_prefill(hub_api, hub_api.users["student"], form)
    assert not any("not synced" in note for field in fresh.values() for note in field["notes"])


# ---------------------------------------------------------------------------- coverage
COVERAGE = """{ coverage { form { id fields { name prefilled } } population share fields { name filled share } } }"""


def test_coverage_matches_the_database(hub_api: ApiHub) -> None:
    answer = hub_api.as_role("student").query(COVERAGE)
    assert "errors" not in answer
    measured = {entry["form"]["id"]: entry for entry in answer["data"]["coverage"]}
    assert set(measured) == set(FORMS)
    populations = {
        "student": select(Student.person_id).where(Student.deleted_at.is_(None), Student.person_id.is_not(None)),
        "staff": select(Staff.person_id).where(Staff.deleted_at.is_(None), Staff.person_id.is_not(None)),
        "cardholder": select(CardAccount.person_id).where(
            CardAccount.deleted_at.is_(None), CardAccount.person_id.is_not(None)
        ),
    }
    with hub_api.engine.connect() as connection:
        for form_id, entry in measured.items():
            form = catalog()[form_id]
            population = connection.execute(
                select(func.count()).select_from(populations[form.subject].distinct().subquery())
            ).scalar_one()
            assert entry["population"] == population > 0, form_id
            filled = {field["name"]: field["filled"] for field in entry["fields"]}
            assert list(filled) == [field.name for field in form.fields], form_id
            for form_field in form.fields:
                if form_field.path is None:  # typed by hand: never counted as filled
                    assert filled[form_field.name] == 0, (form_id, form_field.name)
            shares = {field["name"]: field["share"] for field in entry["fields"]}
            assert shares == pytest.approx({name: count / population for name, count in filled.items()})
            assert entry["share"] == pytest.approx(sum(filled.values()) / (population * len(form.fields)))
        assert measured["enrollment_certificate"]["fields"] == expected_enrollment_coverage(connection)
        # the graduation clearance's card fields: students who hold a card
        with_card = connection.execute(
            select(func.count(func.distinct(Student.person_id)))
            .join(CardAccount, CardAccount.person_id == Student.person_id)
            .where(Student.deleted_at.is_(None), CardAccount.deleted_at.is_(None))
        ).scalar_one()
        clearance = {f["name"]: f["filled"] for f in measured["graduation_clearance"]["fields"]}
        assert clearance["card_no"] == clearance["card_balance"] == with_card


def expected_enrollment_coverage(connection: Any) -> list[dict[str, Any]]:
    """Per field of the enrollment certificate: the students whose value is there."""
    college, major, klass = OrgUnit.__table__.alias(), Major.__table__, ClassGroup.__table__
    columns = {
        "name": Person.name,
        "sex": Person.sex,
        "birth_date": Person.birth_date,
        "id_type": Person.id_type,
        "id_number": Person.id_number_cipher,
        "student_no": Student.student_no,
        "college": college.c.name,
        "major": major.c.name,
        "class": klass.c.name,
        "education_level": Student.education_level,
        "entry_date": Student.entry_date,
        "expected_graduation": Student.expected_graduation,
        "status": Student.status,
    }
    form = catalog()["enrollment_certificate"]
    assert list(columns) == [field.name for field in form.fields]
    base = (
        select(Student.person_id)
        .join(Person, Person.id == Student.person_id)
        .outerjoin(college, college.c.id == Student.college_id)
        .outerjoin(major, major.c.id == Student.major_id)
        .outerjoin(klass, klass.c.id == Student.class_id)
        .where(Student.deleted_at.is_(None))
    )
    population = connection.execute(select(func.count()).select_from(base.distinct().subquery())).scalar_one()
    result = []
    for name, column in columns.items():
        filled = connection.execute(
            select(func.count()).select_from(base.where(column.is_not(None)).distinct().subquery())
        ).scalar_one()
        result.append({"name": name, "filled": filled, "share": filled / population})
    return result


def test_every_prefill_path_declares_when_it_can_be_filled() -> None:
    assert set(FILLABLE) == set(PATHS)


def test_counted_coverage_equals_filling_every_form(hub_api: ApiHub) -> None:
    """The database's count of who each field fills for agrees with prefill, person by person."""
    with hub_api.engine.connect() as connection:
        for form in catalog().values():
            people = sorted(set(connection.execute(POPULATION[form.subject].distinct()).scalars()))
            records = load_subjects(connection, people, entities_of(form.paths), with_quality=False)
            filled = dict.fromkeys((field.name for field in form.fields), 0)
            for found in records.values():
                for name, outcome in fill(form, found):
                    filled[name] += isinstance(outcome, Filled)
            counted = coverage(connection, form)
            assert counted.population == len(people), form.id
            assert dict(counted.filled) == filled, form.id


@pytest.mark.parametrize("anchor", ["student", "staff"])
def test_ones_own_records_are_what_the_general_loader_finds(hub_api: ApiHub, anchor: str) -> None:
    """`load_own` finds the caller by the key their token names in the statement that reads
    their golden record (and their student rows): the same records, field for field and flag
    for flag, as loading the person by id."""
    table, key = (Student, Student.student_no) if anchor == "student" else (Staff, Staff.staff_no)
    now = dt.datetime.now(dt.UTC)
    with hub_api.engine.connect() as connection:
        callers = connection.execute(
            select(key, table.person_id).where(table.deleted_at.is_(None), table.person_id.is_not(None)).limit(40)
        ).all()
        assert callers
        for form in catalog().values():
            entities = entities_of(form.paths)
            for caller_key, person_id in callers:
                own = load_own(connection, anchor, caller_key, entities, now=now)
                assert own is not None and own[0] == person_id
                general = load_subjects(connection, [person_id], entities, now=now)[person_id]
                assert fill(form, own[1]) == fill(form, general), (form.id, caller_key)
                assert own[1].notes == general.notes
        assert load_own(connection, anchor, "no such key", frozenset({"person", "student"}), now=now) is None
