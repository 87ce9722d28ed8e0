"""Form prefill: each form field's value from the unified layer, with where it came from.

A form field names a path (`person.name`, `student.college`, `fees.settled`, …). `PATHS` maps
every path to the entity it reads and the function that reads it; a path a form does not name
is never evaluated, so a form cannot release more than it declares. Derived values (fees
settled? refundable balance?) are computed here from unified rows on every request, never
stored.

Each filled value carries its source system, the source record's key and its as-of time — for
golden person fields from `field_provenance`, for the rest from the entity's own system — and
its quality notes: the record breaks a declared rule, the person has an open identity
conflict, a newer version of the record sits in quarantine, or the source is overdue.

Records are loaded for many people at once (`load_subjects`), so the same code fills one
person's form on a request and measures a form's coverage over the whole population.
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache
from typing import Any

from cryptography.fernet import InvalidToken
from sqlalchemy import (
    JSON,
    BindParameter,
    Column,
    ColumnElement,
    Connection,
    FromClause,
    RowMapping,
    Select,
    String,
    and_,
    bindparam,
    cast,
    exists,
    func,
    literal_column,
    null,
    select,
    union_all,
)
from sqlalchemy.exc import CompileError
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.functions import FunctionElement

from campushub.graphql.forms import Form
from campushub.models.base import UTCDateTime, as_utc
from campushub.models.engine import execute_built
from campushub.models.landing import QuarantinedRecord, SyncState
from campushub.models.protect import decrypt_id, mask_id
from campushub.models.quality import TABLE_RULES
from campushub.models.record_checks import record_problems
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
from campushub.reference.identity import DOCUMENT_TYPES, id_document_disagreement
from campushub.reference.source_codes import CARD_STATUS_HELD

PASS_SCORE = 60


@dataclass(frozen=True, slots=True)
class Filled:
    value: str  # machine form: ISO date, integer fen, national code, "true"/"false"
    display: str  # as a person reads it
    source: str
    source_key: str
    as_of: dt.datetime | None
    notes: tuple[str, ...] = ()  # quality problems; empty means the value passed every rule


@dataclass(frozen=True, slots=True)
class Missing:
    reason: str


Outcome = Filled | Missing


@dataclass
class Records:
    """One person's rows, as far as the asked-for paths need them."""

    person: RowMapping | None = None
    student: Mapping[str, Any] | None = None  # a row, or one read with the golden record (load_own)
    staff: RowMapping | None = None
    card: RowMapping | None = None
    bills: list[RowMapping] = field(default_factory=list)
    last_payment_at: dt.datetime | None = None
    grades: RowMapping | None = None
    provenance: dict[str, Mapping[str, Any]] = field(default_factory=dict)  # field -> source, source_key, as_of
    notes: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))  # entity -> notes
    show_full_id_number: bool = False


# ------------------------------------------------------------------------------ formatting
def _code(table: str, code: str | None) -> str | None:
    entry = code_table(table).get(code) if code else None
    return entry.name if entry else code


def _money(fen: int) -> str:
    return f"{fen / 100:,.2f} 元"


def _yes_no(flag: bool) -> str:
    return "是" if flag else "否"


# -------------------------------------------------------------------------- path resolvers
PERSON_FIELDS: dict[str, Callable[[Any], tuple[str, str]]] = {
    "name": lambda v: (v, v),
    "sex": lambda v: (v, _code("sex", v) or v),
    "birth_date": lambda v: (v.isoformat(), v.isoformat()),
    "ethnicity": lambda v: (v, _code("ethnicity", v) or v),
    "political_status": lambda v: (v, _code("political_status", v) or v),
    "phone": lambda v: (v, v),
    "email": lambda v: (v, v),
}


def _person_field(name: str) -> Callable[[Records], Outcome]:
    render = PERSON_FIELDS[name]

    def resolve(records: Records) -> Outcome:
        person = records.person
        if person is None:
            return Missing("不在统一数据中 (not in the unified layer)")
        value = person[name]
        if value is None:
            return Missing("没有任何来源系统提供此项 (no source system holds this)")
        provenance = records.provenance.get(name)
        machine, display = render(value)
        return Filled(
            machine,
            display,
            source=provenance["source"] if provenance else "hub",
            source_key=provenance["source_key"] if provenance else str(person["id"]),
            as_of=provenance["as_of"] if provenance else person["updated_at"],
            notes=tuple(records.notes["person"]),
        )

    return resolve


def _id_number(records: Records) -> Outcome:
    person = records.person
    if person is None or person["id_number_cipher"] is None:
        return Missing("没有任何来源系统提供身份证件号 (no source system holds an ID number)")
    try:
        number = decrypt_id(person["id_number_cipher"])
    except InvalidToken:
        return Missing("身份证件号无法解密，请联系数据管理员 (stored ID number unreadable; a steward is needed)")
    notes = list(records.notes["person"])
    verdict = id_document_disagreement(person["id_type"], number, person["birth_date"], person["sex"])
    if verdict:
        notes.append(verdict)
    shown = number if records.show_full_id_number else mask_id(number)
    provenance = records.provenance.get("id_number")
    return Filled(
        shown,
        shown,
        source=provenance["source"] if provenance else "hub",
        source_key=provenance["source_key"] if provenance else str(person["id"]),
        as_of=provenance["as_of"] if provenance else person["updated_at"],
        notes=tuple(notes),
    )


def _id_type(records: Records) -> Outcome:
    """The kind of document the ID number is, from the source the number came from."""
    person = records.person
    if person is None or person["id_type"] is None:
        return Missing("没有任何来源系统提供身份证件号 (no source system holds an ID number)")
    provenance = records.provenance.get("id_number")
    return Filled(
        person["id_type"],
        _code(DOCUMENT_TYPES, person["id_type"]) or person["id_type"],
        source=provenance["source"] if provenance else "hub",
        source_key=provenance["source_key"] if provenance else str(person["id"]),
        as_of=provenance["as_of"] if provenance else person["updated_at"],
        notes=tuple(records.notes["person"]),
    )


def _entity_field(
    entity: str, source: str, key: str, column: str, render: Callable[[Any], tuple[str, str]] = lambda v: (v, v)
) -> Callable[[Records], Outcome]:
    def resolve(records: Records) -> Outcome:
        row = getattr(records, entity)
        if row is None:
            return Missing(NO_RECORD[entity])
        value = row[column]
        if value is None:
            return Missing(f"{SOURCE_NAMES[source]}未登记此项 ({source} holds no value)")
        machine, display = render(value)
        return Filled(machine, display, source, row[key], row["source_updated_at"], tuple(records.notes[entity]))

    return resolve


NO_RECORD = {
    "student": "没有学籍记录 (no student record)",
    "staff": "没有人事记录 (no staff record)",
    "card": "没有校园卡 (no campus card)",
}
SOURCE_NAMES = {"academic": "教务系统", "hr": "人事系统", "finance": "财务系统", "card": "一卡通系统"}


def _iso(value: dt.date) -> tuple[str, str]:
    return value.isoformat(), value.isoformat()


def _month(value: dt.date) -> tuple[str, str]:
    return value.isoformat(), f"{value.year}年{value.month}月"


def _fen(value: int) -> tuple[str, str]:
    return str(value), _money(value)


def _refundable(records: Records) -> Outcome:
    card = records.card
    if card is None:
        return Missing(NO_RECORD["card"])
    refundable = 0 if card["status"] == CARD_STATUS_HELD else max(card["balance_fen"], 0)
    notes = list(records.notes["card"])
    if card["status"] == CARD_STATUS_HELD:
        notes.append("card frozen: its balance is held until the card desk releases it")
    return Filled(str(refundable), _money(refundable), "card", card["card_no"], card["source_updated_at"], tuple(notes))


def _card_returned(records: Records) -> Outcome:
    return Missing(
        "一卡通系统不记录交卡，由卡务中心现场确认 (the card system does not record returns; the card desk confirms)"
    )


def _fees(compute: Callable[[Records], tuple[str, str]]) -> Callable[[Records], Outcome]:
    def resolve(records: Records) -> Outcome:
        student = records.student
        if student is None:
            return Missing(NO_RECORD["student"])
        if not records.bills:
            return Missing("财务系统没有此学生的账单 (finance holds no bills for this student)")
        # The daily export carries no per-bill modification time: the bill is as of its load.
        as_of = max(bill["source_updated_at"] or bill["loaded_at"] for bill in records.bills)
        machine, display = compute(records)
        return Filled(machine, display, "finance", student["student_no"], as_of, tuple(records.notes["fees"]))

    return resolve


def _outstanding(records: Records) -> int:
    return sum(max(bill["amount_fen"] - bill["paid_fen"], 0) for bill in records.bills)


def _outstanding_items(records: Records) -> tuple[str, str]:
    owed = [bill for bill in records.bills if bill["amount_fen"] > bill["paid_fen"]]
    machine = ",".join(bill["bill_no"] for bill in owed)
    display = "；".join(
        f"{bill['academic_year']} {bill['item_name']} {_money(bill['amount_fen'] - bill['paid_fen'])}" for bill in owed
    )
    return machine, display or "无"


def _last_payment(records: Records) -> Outcome:
    if records.student is None:
        return Missing(NO_RECORD["student"])
    paid_at = records.last_payment_at
    if paid_at is None:
        return Missing("财务系统没有此学生的缴费记录 (finance holds no payments for this student)")
    local = paid_at.astimezone(dt.timezone(dt.timedelta(hours=8)))
    return Filled(
        paid_at.isoformat(), local.strftime("%Y-%m-%d %H:%M"), "finance", records.student["student_no"], paid_at
    )


def _grades(column: str, render: Callable[[Any], tuple[str, str]]) -> Callable[[Records], Outcome]:
    def resolve(records: Records) -> Outcome:
        if records.student is None:
            return Missing(NO_RECORD["student"])
        summary = records.grades
        if summary is None or not summary["courses"]:
            return Missing("教务系统还没有成绩 (academic affairs holds no grades yet)")
        machine, display = render(summary[column])
        return Filled(
            machine,
            display,
            "academic",
            records.student["student_no"],
            summary["as_of"],
            tuple(records.notes["student"]),
        )

    return resolve


# path -> (the records it needs, how it is read)
PATHS: dict[str, tuple[str, Callable[[Records], Outcome]]] = {
    **{f"person.{name}": ("person", _person_field(name)) for name in PERSON_FIELDS},
    "person.id_number": ("person", _id_number),
    "person.id_type": ("person", _id_type),
    "student.student_no": ("student", _entity_field("student", "academic", "student_no", "student_no")),
    "student.college": ("student", _entity_field("student", "academic", "student_no", "college_name")),
    "student.major": ("student", _entity_field("student", "academic", "student_no", "major_name")),
    "student.class": ("student", _entity_field("student", "academic", "student_no", "class_name")),
    "student.education_level": (
        "student",
        _entity_field(
            "student", "academic", "student_no", "education_level", lambda v: (v, _code("education_level", v))
        ),
    ),
    "student.entry_date": ("student", _entity_field("student", "academic", "student_no", "entry_date", _month)),
    "student.expected_graduation": (
        "student",
        _entity_field("student", "academic", "student_no", "expected_graduation", _month),
    ),
    "student.status": (
        "student",
        _entity_field("student", "academic", "student_no", "status", lambda v: (v, _code("student_status", v))),
    ),
    "staff.staff_no": ("staff", _entity_field("staff", "hr", "staff_no", "staff_no")),
    "staff.department": ("staff", _entity_field("staff", "hr", "staff_no", "department_name")),
    "staff.position": ("staff", _entity_field("staff", "hr", "staff_no", "position_name")),
    "staff.title": (
        "staff",
        _entity_field("staff", "hr", "staff_no", "title_code", lambda v: (v, _code("professional_title", v))),
    ),
    "staff.hire_date": ("staff", _entity_field("staff", "hr", "staff_no", "hire_date", _iso)),
    "staff.employment_status": ("staff", _entity_field("staff", "hr", "staff_no", "employment_status")),
    "staff.monthly_gross": ("staff", _entity_field("staff", "hr", "staff_no", "monthly_gross_fen", _fen)),
    "card.card_no": ("card", _entity_field("card", "card", "card_no", "card_no")),
    "card.holder_no": ("card", _entity_field("card", "card", "card_no", "holder_no")),
    "card.status": ("card", _entity_field("card", "card", "card_no", "status")),
    "card.balance": ("card", _entity_field("card", "card", "card_no", "balance_fen", _fen)),
    "card.refundable_balance": ("card", _refundable),
    "card.returned": ("card", _card_returned),
    "fees.billed": ("fees", _fees(lambda r: _fen(sum(bill["amount_fen"] for bill in r.bills)))),
    "fees.paid": ("fees", _fees(lambda r: _fen(sum(bill["paid_fen"] for bill in r.bills)))),
    "fees.outstanding": ("fees", _fees(lambda r: _fen(_outstanding(r)))),
    "fees.settled": ("fees", _fees(lambda r: (str(_outstanding(r) == 0).lower(), _yes_no(_outstanding(r) == 0)))),
    "fees.outstanding_items": ("fees", _fees(_outstanding_items)),
    "fees.last_payment_at": ("fees", _last_payment),
    "grades.courses": ("grades", _grades("courses", lambda v: (str(v), f"{v} 门"))),
    "grades.credits": ("grades", _grades("credits", lambda v: (f"{v:g}", f"{v:g} 学分"))),
    "grades.average_score": ("grades", _grades("average", lambda v: (f"{v:.1f}", f"{v:.1f} 分"))),
    "grades.last_term": ("grades", _grades("last_term", lambda v: (v, v))),
}


def entities_of(paths: Iterable[str]) -> frozenset[str]:
    entities = {PATHS[path][0] for path in paths}
    # Fees and grades are found by 学号: they need the student row too.
    if entities & {"fees", "grades"}:
        entities.add("student")
    return frozenset(entities)


# ------------------------------------------------------------------------------- loading
def _by_person(rows: Iterable[RowMapping], prefer: Callable[[RowMapping], Any]) -> dict[int, RowMapping]:
    """One row per person: where someone has several (a re-issued card), the preferred one."""
    chosen: dict[int, RowMapping] = {}
    for row in rows:
        current = chosen.get(row["person_id"])
        if current is None or prefer(row) > prefer(current):
            chosen[row["person_id"]] = row
    return chosen


# The statements are built once per shape: building a SQLAlchemy statement (and its cache key)
# per request costs more than running it. A prefill asks about one person, and compares by
# equality; coverage asks about many, through an expanding IN list — which SQLAlchemy renders
# into the SQL afresh on every execution, a cost a single person need not pay.
PERSON_IDS, PERSON_ID = bindparam("person_ids", expanding=True), bindparam("person_id")
STUDENT_NOS, STUDENT_NO = bindparam("student_nos", expanding=True), bindparam("student_no")


def _among(column: ColumnElement[Any], one: bool, many: BindParameter[Any], single: BindParameter[Any]) -> Any:
    return column == single if one else column.in_(many)


def _among_people(column: ColumnElement[Any], one: bool) -> Any:
    return _among(column, one, PERSON_IDS, PERSON_ID)


def _among_students(column: ColumnElement[Any], one: bool) -> Any:
    return _among(column, one, STUDENT_NOS, STUDENT_NO)


def _people(ids: Sequence[int]) -> dict[str, Any]:
    """Parameters for either shape (a statement ignores the one it does not name)."""
    return {"person_ids": list(ids), "person_id": ids[0]}


def _students_by_no(numbers: Sequence[str]) -> dict[str, Any]:
    return {"student_nos": list(numbers), "student_no": numbers[0]}


def _with_student_names(statement: Select[Any], student: FromClause) -> Select[Any]:
    """`statement` with the names of `student`'s college, major and class, as its record shows them."""
    college, major, klass = OrgUnit.__table__.alias("college"), Major.__table__, ClassGroup.__table__
    return (
        statement.add_columns(
            college.c.name.label("college_name"), major.c.name.label("major_name"), klass.c.name.label("class_name")
        )
        .outerjoin(college, college.c.id == student.c.college_id)
        .outerjoin(major, major.c.id == student.c.major_id)
        .outerjoin(klass, klass.c.id == student.c.class_id)
    )


# Columns no form path reads: bookkeeping, and the keys of what comes joined by name. Left out
# of the statements, unless a quality rule reads them: psycopg describes each column of a result
# and sets up its loader on every execution (a prefill's statement: 35 → 24 columns, 3% fewer
# instructions a prefill).
UNREAD = frozenset(
    {"created_at", "id_number_hash", "row_hash", "loaded_at", "deleted_at"}
    | {"college_id", "major_id", "class_id", "department_id", "college_code", "major_code", "class_code"}
)


def _read(table: FromClause, rules: str) -> list[Column[Any]]:
    """The columns of `table` (or an alias of the table `rules` names) that prefill reads."""
    ruled = TABLE_RULES[rules].columns
    return [column for column in table.c if column.name not in UNREAD or column.name in ruled]


@cache
def _students_statement(one: bool) -> Select[Any]:
    quarantined = _quarantined("student", Student.student_no).label("quarantined")
    columns = _read(Student.__table__, "student")
    return _with_student_names(select(*columns, quarantined), Student.__table__).where(
        _among_people(Student.person_id, one), Student.deleted_at.is_(None)
    )


def _preferred_student(row: RowMapping) -> tuple[dt.date, str]:
    return row["entry_date"] or dt.date.min, row["student_no"]


def _students(connection: Connection, person_ids: Sequence[int]) -> dict[int, RowMapping]:
    statement = _students_statement(len(person_ids) == 1)
    rows = execute_built(connection, statement, _people(person_ids)).mappings()
    return _by_person(rows, _preferred_student)


@cache
def _staff_statement(one: bool) -> Select[Any]:
    department = OrgUnit.__table__.alias("department")
    return (
        select(
            *_read(Staff.__table__, "staff"),
            department.c.name.label("department_name"),
            _quarantined("staff", Staff.staff_no).label("quarantined"),
        )
        .outerjoin(department, department.c.id == Staff.department_id)
        .where(_among_people(Staff.person_id, one), Staff.deleted_at.is_(None))
    )


def _staff(connection: Connection, person_ids: Sequence[int]) -> dict[int, RowMapping]:
    rows = execute_built(connection, _staff_statement(len(person_ids) == 1), _people(person_ids)).mappings()
    return _by_person(rows, lambda row: row["staff_no"])


@cache
def _cards_statement(one: bool) -> Select[Any]:
    quarantined = _quarantined("card", CardAccount.card_no).label("quarantined")
    return select(*_read(CardAccount.__table__, "card_account"), quarantined).where(
        _among_people(CardAccount.person_id, one), CardAccount.deleted_at.is_(None)
    )


def _cards(connection: Connection, person_ids: Sequence[int]) -> dict[int, RowMapping]:
    rows = execute_built(connection, _cards_statement(len(person_ids) == 1), _people(person_ids)).mappings()
    # The card in use: a normal card over a lost or frozen one, then the newest.
    return _by_person(rows, lambda row: (row["status"] == "正常", row["opened_on"] or dt.date.min, row["card_no"]))


@cache
def _bills_statement(one: bool) -> Select[Any]:
    return (
        select(FeeBill.__table__)
        .where(_among_students(FeeBill.student_no, one), FeeBill.deleted_at.is_(None))
        .order_by(FeeBill.bill_no)
    )


@cache
def _last_payments_statement(one: bool) -> Select[Any]:
    return (
        select(Payment.student_no, func.max(Payment.paid_at))
        .where(_among_students(Payment.student_no, one), Payment.deleted_at.is_(None))
        .group_by(Payment.student_no)
    )


@cache
def _grade_summaries_statement(one: bool) -> Select[Any]:
    passed = Grade.score >= PASS_SCORE
    return (
        select(
            Grade.student_no,
            func.count().label("courses"),
            func.coalesce(func.sum(Grade.credits).filter(passed), 0.0).label("credits"),
            func.avg(Grade.score).label("average"),
            func.max(Grade.term).label("last_term"),
            func.max(Grade.source_updated_at).label("as_of"),
        )
        .where(_among_students(Grade.student_no, one), Grade.deleted_at.is_(None))
        .group_by(Grade.student_no)
    )


def _note_quality(records: dict[int, Records], now: dt.datetime, entities: frozenset[str]) -> None:
    """What should not be served as plain fact: rows that break a declared rule, newer versions
    of a row refused into quarantine, open identity conflicts, sources overdue — and where each
    golden field came from — as read with the people's golden records (`_facts_column`)."""
    last_sync: dict[str, dt.datetime | None] = {}
    for found in records.values():
        for what, a, b, c, d, at in (found.person["facts"] if found.person else None) or ():
            if what == "provenance":
                found.provenance[b] = {"source": c, "source_key": d, "as_of": _instant(at)}
            elif what == "sync":
                last_sync[a] = _instant(at)
            else:  # an open identity conflict
                found.notes["person"].append(f"open identity conflict ({b}) awaits a steward")

    overdue = _overdue_sources(last_sync, now, _sources_of(entities))
    for found in records.values():
        for entity, row, table in (
            ("person", found.person, "person"),
            ("student", found.student, "student"),
            ("staff", found.staff, "staff"),
            ("card", found.card, "card_account"),
        ):
            if row is not None and entity in entities:
                found.notes[entity].extend(record_problems(table, row))
                if entity in QUARANTINE_STREAMS and row["quarantined"]:
                    found.notes[entity].append("a newer version from the source is in quarantine")
        for entity, source in ENTITY_SOURCE.items():
            if source in overdue:
                found.notes[entity].append(overdue[source])


def _instant(text: str | None) -> dt.datetime | None:
    """An instant read from JSON: PostgreSQL's ISO 8601 with its offset, SQLite's UTC wall clock."""
    return None if text is None else as_utc(dt.datetime.fromisoformat(text))


def _constant(value: str) -> ColumnElement[str]:
    """A constant of a statement, written into its SQL: a bound one is converted and sent anew
    on every execution (a prefill's facts had nineteen)."""
    if "'" in value:
        raise ValueError(f"not a plain constant: {value!r}")
    return literal_column(f"'{value}'", String)


class JsonRows(FunctionElement[Any]):
    """An aggregate: the rows it is given, as one JSON array of arrays (NULL or [] for none)."""

    type = JSON()
    inherit_cache = True


@compiles(JsonRows)
def _json_rows_elsewhere(element: JsonRows, compiler: Any, **kw: Any) -> str:
    raise CompileError(f"JSON aggregation is written for PostgreSQL and SQLite, not {compiler.dialect.name}")


@compiles(JsonRows, "postgresql")
def _json_rows_postgresql(element: JsonRows, compiler: Any, **kw: Any) -> str:
    return f"json_agg(json_build_array({compiler.process(element.clauses, **kw)}))"


@compiles(JsonRows, "sqlite")
def _json_rows_sqlite(element: JsonRows, compiler: Any, **kw: Any) -> str:
    return f"json_group_array(json_array({compiler.process(element.clauses, **kw)}))"


def _facts_column(entities: frozenset[str]) -> ColumnElement[Any]:
    """The facts about a person that live outside their own rows, as far as `entities` need
    them — the last complete sync of the sources they come from, the person's open identity
    conflicts, where each golden field came from — as a column of their golden record: rows of
    (what, a, b, c, d, at) in JSON.

    Read with the golden record, in its statement, they cost a prefill no round trip of their
    own: each costs as much as the work it carries. (Provenance joined to the golden record
    would repeat its every column for each of its fields.)"""
    parts: list[Select[Any]] = [
        select(
            _constant("conflict").label("what"),
            cast(Conflict.person_id, String).label("a"),
            Conflict.kind.label("b"),
            null().label("c"),
            null().label("d"),
            cast(null(), UTCDateTime).label("at"),
        ).where(Conflict.person_id == Person.id, Conflict.status == _constant("open")),
        *_unlinked_conflicts(),
    ]
    sources = _sources_of(entities)
    if sources:
        last_success = func.min(SyncState.last_success_at)
        synced = select(_constant("sync"), SyncState.source, null(), null(), null(), last_success)
        parts.append(synced.where(SyncState.source.in_([_constant(s) for s in sources])).group_by(SyncState.source))
    if "person" in entities:
        provenance = FieldProvenance.__table__
        parts.append(
            select(
                _constant("provenance"),
                cast(provenance.c.entity_id, String),
                provenance.c.field,
                provenance.c.source,
                provenance.c.source_key,
                provenance.c.as_of,
            ).where(provenance.c.entity == _constant("person"), provenance.c.entity_id == Person.id)
        )
    facts = union_all(*(part.correlate(Person) for part in parts)).subquery("facts")
    return select(JsonRows(*facts.c)).scalar_subquery().label("facts")


# Where a newer version of an entity's record waits when refused: its source and stream.
QUARANTINE_STREAMS = {"student": ("academic", "students"), "staff": ("hr", "staff"), "card": ("card", "card_accounts")}


def _quarantined(entity: str, key: ColumnElement[str]) -> ColumnElement[bool]:
    """Whether a newer version of the entity's row with this `key` sits in quarantine: what is
    served may be out of date."""
    source, stream = QUARANTINE_STREAMS[entity]
    return exists().where(
        QuarantinedRecord.source == _constant(source),
        QuarantinedRecord.stream == _constant(stream),
        QuarantinedRecord.source_key == key,
        QuarantinedRecord.resolved_at.is_(None),
    )


def _unlinked_conflicts() -> list[Select[Any]]:
    """Open identity conflicts about a person that name no person: the records they dispute
    stay unlinked until a steward decides, so they are found by the keys they name — the ID
    number (`id:<hash>`, the same number under two names; by the index on subject) and a card
    the person's 学号/工号 claims (`card:<card no>`, a card whose name is not its holder's)."""
    unlinked = (Conflict.status == _constant("open"), Conflict.person_id.is_(None))
    id_subject = _constant("id:") + func.substr(Person.id_number_hash, literal_column("1"), literal_column("16"))
    same_id = select(_constant("conflict"), cast(Person.id, String), Conflict.kind, null(), null(), null()).where(
        Conflict.subject == id_subject, *unlinked
    )
    card_claimed = [
        select(_constant("conflict"), cast(holder.person_id, String), Conflict.kind, null(), null(), null())
        .select_from(holder)
        .join(CardAccount, and_(CardAccount.holder_kind == _constant(kind), CardAccount.holder_no == number))
        .join(Conflict, Conflict.subject == _constant("card:") + CardAccount.card_no)
        .where(holder.person_id == Person.id, *unlinked)
        for holder, kind, number in ((Student, "student", Student.student_no), (Staff, "staff", Staff.staff_no))
    ]
    return [same_id, *card_claimed]


ENTITY_SOURCE = {"student": "academic", "grades": "academic", "staff": "hr", "fees": "finance", "card": "card"}


def _sources_of(entities: frozenset[str]) -> list[str]:
    """The source systems whose freshness matters to values of `entities`."""
    return sorted({ENTITY_SOURCE[entity] for entity in entities if entity in ENTITY_SOURCE})


def _overdue_sources(last: Mapping[str, dt.datetime | None], now: dt.datetime, sources: list[str]) -> dict[str, str]:
    overdue = {}
    for source in sources:
        window = FRESHNESS[source]
        synced = last.get(source)
        if synced is None or now - synced > window:
            when = synced.isoformat(timespec="minutes") if synced else "never"
            overdue[source] = f"{source} not synced within {window} (last complete sync: {when})"
    return overdue


# Who a caller is: their token names a 学号 (students) or a 工号 (everyone else), whose row
# links to their golden record.
_OWN_KEYS: dict[str, ColumnElement[str]] = {"student": Student.student_no, "staff": Staff.staff_no}
_OWN_KEY = bindparam("own_key")


def own_anchor(role: str) -> str:
    return "student" if role == "student" else "staff"


def _own(anchor: str) -> tuple[Any, Any]:
    """The join to the caller's own student or staff row, and the condition that finds it."""
    table = Student if anchor == "student" else Staff
    return table, and_(_OWN_KEYS[anchor] == _OWN_KEY, table.deleted_at.is_(None))


@cache
def own_person_statement(anchor: str) -> Select[Any]:
    table, found = _own(anchor)
    return select(table.person_id).where(found)


# The columns of the caller's student rows when they come with their golden record.
_OWN_STUDENT = Student.__table__.alias("own_student")
_OWN_STUDENT_PREFIX = "own_student__"


@cache
def _persons_statement(
    one: bool, entities: frozenset[str], own: str | None = None, with_student: bool = False, facts: bool = True
) -> Select[Any]:
    """The people's golden records, with their `facts` as `entities` need them (`_facts_column`).
    With `own` ("student" or "staff"), the caller's
    own, found by the key their token names — and `with_student`, their student rows too — in
    the same statement: every round trip saved counts in a request about oneself."""
    persons = select(*_read(Person.__table__, "person"))
    if facts:
        persons = persons.add_columns(_facts_column(entities))
    if own is None:
        persons = persons.where(_among_people(Person.id, one))
    else:
        table, found = _own(own)
        persons = persons.join(table, table.person_id == Person.id).where(found)
    if with_student:
        student = _OWN_STUDENT
        columns = [column.label(_OWN_STUDENT_PREFIX + column.name) for column in _read(student, "student")]
        quarantined = _quarantined("student", student.c.student_no).label(_OWN_STUDENT_PREFIX + "quarantined")
        current = and_(student.c.person_id == Person.id, student.c.deleted_at.is_(None))
        persons = _with_student_names(persons.add_columns(*columns, quarantined).outerjoin(student, current), student)
    return persons


def load_subjects(
    connection: Connection,
    person_ids: Sequence[int],
    entities: frozenset[str],
    *,
    with_quality: bool = True,
    now: dt.datetime | None = None,
) -> dict[int, Records]:
    """The rows `entities` need for each person, in a fixed handful of queries whatever the
    number of people."""
    records = {person_id: Records() for person_id in person_ids}
    if not records:
        return records
    ids = list(records)
    persons = _persons_statement(len(ids) == 1, entities, facts=with_quality)
    _take_persons(records, execute_built(connection, persons, _people(ids)).mappings())
    _load_rest(connection, records, entities, with_quality, now)
    return records


def load_own(
    connection: Connection, anchor: str, key: str, entities: frozenset[str], *, now: dt.datetime | None = None
) -> tuple[int, Records] | None:
    """The caller's own records, as `load_subjects` loads them, found by the 学号 (`anchor`
    "student") or 工号 ("staff") their token names; None when no golden record links to it."""
    with_student = "student" in entities
    statement = _persons_statement(True, entities, anchor, with_student)
    rows = execute_built(connection, statement, {"own_key": key}).mappings().all()
    records: dict[int, Records] = {}
    _take_persons(records, rows)
    if not records:
        return None
    ((person_id, found),) = records.items()
    if with_student:
        students = [_own_student(row) for row in rows if row[_OWN_STUDENT_PREFIX + "id"] is not None]
        found.student = max(students, key=_preferred_student, default=None)
    _load_rest(connection, records, entities, True, now, students_loaded=with_student)
    return person_id, found


@cache
def _own_student_columns() -> tuple[tuple[str, str], ...]:
    """(name in a student row, label in the persons statement), for each column `_own_student` takes."""
    names = [column.name for column in _read(_OWN_STUDENT, "student")]
    own = [(name, _OWN_STUDENT_PREFIX + name) for name in (*names, "quarantined")]
    return (*own, *((name, name) for name in ("college_name", "major_name", "class_name")))


def _own_student(row: RowMapping) -> dict[str, Any]:
    """A student row as `_students` reads it, from the columns it had in the persons statement."""
    return {name: row[label] for name, label in _own_student_columns()}


def _take_persons(records: dict[int, Records], rows: Iterable[RowMapping]) -> None:
    for row in rows:  # a person with several student rows comes once with each (load_own)
        found = records.setdefault(row["id"], Records())
        if found.person is None:
            found.person = row


def _load_rest(
    connection: Connection,
    records: dict[int, Records],
    entities: frozenset[str],
    with_quality: bool,
    now: dt.datetime | None,
    *,
    students_loaded: bool = False,
) -> None:
    ids = list(records)
    if "student" in entities and not students_loaded:
        for person_id, row in _students(connection, ids).items():
            records[person_id].student = row
    if "staff" in entities:
        for person_id, row in _staff(connection, ids).items():
            records[person_id].staff = row
    if "card" in entities:
        for person_id, row in _cards(connection, ids).items():
            records[person_id].card = row
    by_student_no = {found.student["student_no"]: found for found in records.values() if found.student is not None}
    numbers = list(by_student_no)
    students = _students_by_no(numbers) if numbers else {}
    if "fees" in entities and numbers:
        for bill in execute_built(connection, _bills_statement(len(numbers) == 1), students).mappings():
            by_student_no[bill["student_no"]].bills.append(bill)
        for student_no, paid_at in execute_built(connection, _last_payments_statement(len(numbers) == 1), students):
            by_student_no[student_no].last_payment_at = paid_at
    if "grades" in entities and numbers:
        for summary in execute_built(connection, _grade_summaries_statement(len(numbers) == 1), students).mappings():
            by_student_no[summary["student_no"]].grades = summary
    if with_quality:
        _note_quality(records, now or dt.datetime.now(dt.UTC), entities)


def fill(form: Form, records: Records) -> list[tuple[str, Outcome]]:
    """Every field of `form`, in order: its value with provenance, or why it is missing."""
    outcomes: list[tuple[str, Outcome]] = []
    for form_field in form.fields:
        if form_field.path is None:
            outcomes.append((form_field.name, Missing(form_field.reason or "由申请人填写 (asked of the applicant)")))
            continue
        records.show_full_id_number = form_field.full_id_number
        outcomes.append((form_field.name, PATHS[form_field.path][1](records)))
    records.show_full_id_number = False
    return outcomes


__all__ = ["PATHS", "Filled", "Missing", "Records", "entities_of", "fill", "load_own", "load_subjects", "own_anchor"]
