"""The people-shaped records the API serves — students and staff — with field-level guards.

A record travels through the schema as a `View`: its row plus the `Access` the caller has to
it. Every field resolver of `Student` and `Staff` goes through `guarded`, which refuses (and
audits the refusal) a field the caller's role was not granted, audits the read of one it was,
and masks what the grant says to mask. There is no other way to reach these fields.
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import graphene
from graphql import GraphQLError, GraphQLResolveInfo
from sqlalchemy import Connection, RowMapping, Select, case, func, select

from campushub.graphql.context import ID_NUMBER, Access, BatchLoader, RequestContext
from campushub.graphql.limits import MAX_KEY, check_page_size
from campushub.models.protect import decrypt_id, mask_id
from campushub.models.quality import mask_phone
from campushub.models.unified import ClassGroup, FeeBill, Major, OrgUnit, Payment, Person, Staff, Student
from campushub.reference.codes import code_table
from campushub.reference.identity import DOCUMENT_TYPES

MASKS: dict[str, Callable[[str], str]] = {"phone": mask_phone, ID_NUMBER: mask_id}


@dataclass(frozen=True, slots=True)
class View:
    row: RowMapping
    access: Access


def guarded(name: str, read: Callable[[View, RequestContext], Any]) -> Callable[..., Any]:
    def resolve(view: View, info: GraphQLResolveInfo) -> Any:
        context: RequestContext = info.context
        access = view.access
        if not access.allows(name):
            raise context.refuse(access.entity, access.subject, f"field {name} not granted", (name,))
        context.audit.read(access.subject, access.entity, (name,), access.purpose)
        value = read(view, context)
        if value is not None and name in access.masked and name in MASKS:
            return MASKS[name](value)
        return value

    return resolve


def column(name: str, key: str | None = None) -> Callable[..., Any]:
    return guarded(name, lambda view, _: view.row[key or name])


# --------------------------------------------------------------------------- small types
class Code(graphene.ObjectType):
    """A national-standard code and what it means."""

    code = graphene.String(required=True)
    label = graphene.String()

    @staticmethod
    def of(table: str, code: str | None) -> Code | None:
        if code is None:
            return None
        entry = code_table(table).get(code)
        return Code(code=code, label=entry.name if entry else None)


class Unit(graphene.ObjectType):
    """An org unit, major or class: its code and name."""

    code = graphene.String(required=True)
    name = graphene.String(required=True)


class FeeStatus(graphene.ObjectType):
    billed_fen = graphene.Int(required=True)
    paid_fen = graphene.Int(required=True)
    outstanding_fen = graphene.Int(required=True)
    settled = graphene.Boolean(required=True)
    bills = graphene.Int(required=True, description="number of bills")


class Bill(graphene.ObjectType):
    bill_no = graphene.String(required=True)
    item = graphene.String()
    academic_year = graphene.String()
    amount_fen = graphene.Int(required=True)
    paid_fen = graphene.Int(required=True)
    status = graphene.String()
    due_on = graphene.Date()


class PaymentRecord(graphene.ObjectType):
    payment_no = graphene.String(required=True)
    bill_no = graphene.String(required=True)
    amount_fen = graphene.Int(required=True)
    channel = graphene.String()
    paid_at = graphene.DateTime()


class PageInfo(graphene.ObjectType):
    has_next_page = graphene.Boolean(required=True)
    end_cursor = graphene.String()

    # A cursor into a list of people carries the last row's key (学号, 工号): read as that field
    # is, guarded and audited (`keyed_page_info`). Other lists' cursors carry internal ids.
    revealed_by: Callable[[GraphQLResolveInfo], str] | None = None

    @staticmethod
    def resolve_end_cursor(page_info: PageInfo, info: GraphQLResolveInfo) -> str | None:
        if page_info.revealed_by is not None:
            return page_info.revealed_by(info)
        return page_info.end_cursor


def _key_reader(entity: str, key_field: str, key_column: str) -> Callable[[View, GraphQLResolveInfo], str]:
    """A cursor carrying a row's key (学号, 工号) is that field read: allowed and audited, or
    refused, as the field is."""
    return guarded(key_field, lambda view, _: encode_cursor(entity, view.row[key_column]))


def keyed_cursor(entity: str, key_field: str, key_column: str) -> Callable[..., str]:
    """The resolver of the cursor of a list edge whose node is a `View`."""
    read = _key_reader(entity, key_field, key_column)
    return lambda edge, info: read(edge.node, info)


def keyed_page_info(more: bool, last: View | None, entity: str, key_field: str, key_column: str) -> PageInfo:
    """A page's info whose end cursor carries the key of the page's last row."""
    page_info = PageInfo(has_next_page=more, end_cursor=None)
    if last is not None:
        page_info.revealed_by = partial(_key_reader(entity, key_field, key_column), last)
    return page_info


# ------------------------------------------------------------------------------ loaders
def fee_statuses(connection: Connection, student_nos: list[str]) -> dict[str, FeeStatus]:
    owed = case((FeeBill.amount_fen > FeeBill.paid_fen, FeeBill.amount_fen - FeeBill.paid_fen), else_=0)
    query = (
        select(
            FeeBill.student_no, func.sum(FeeBill.amount_fen), func.sum(FeeBill.paid_fen), func.sum(owed), func.count()
        )
        .where(FeeBill.student_no.in_(student_nos), FeeBill.deleted_at.is_(None))
        .group_by(FeeBill.student_no)
    )
    return {
        student_no: FeeStatus(
            billed_fen=int(billed),
            paid_fen=int(paid),
            outstanding_fen=int(outstanding),
            settled=outstanding == 0,
            bills=count,
        )
        for student_no, billed, paid, outstanding, count in connection.execute(query)
    }


def _by_student(
    connection: Connection, query: Select[Any], student_nos: list[str], make: Callable[[Any], Any]
) -> dict[str, list[Any]]:
    """Each student's rows of `query`, made into objects, in its order ([] for none)."""
    found: dict[str, list[Any]] = {student_no: [] for student_no in student_nos}
    for row in connection.execute(query):
        found[row.student_no].append(make(row))
    return found


def bills_of(connection: Connection, student_nos: list[str]) -> dict[str, list[Bill]]:
    query = (
        select(FeeBill.__table__)
        .where(FeeBill.student_no.in_(student_nos), FeeBill.deleted_at.is_(None))
        .order_by(FeeBill.student_no, FeeBill.bill_no)
    )
    return _by_student(
        connection,
        query,
        student_nos,
        lambda bill: Bill(
            bill_no=bill.bill_no,
            item=bill.item_name,
            academic_year=bill.academic_year,
            amount_fen=bill.amount_fen,
            paid_fen=bill.paid_fen,
            status=bill.status,
            due_on=bill.due_on,
        ),
    )


def payments_of(connection: Connection, student_nos: list[str]) -> dict[str, list[PaymentRecord]]:
    query = (
        select(Payment.__table__)
        .where(Payment.student_no.in_(student_nos), Payment.deleted_at.is_(None))
        .order_by(Payment.student_no, Payment.paid_at)
    )
    return _by_student(
        connection,
        query,
        student_nos,
        lambda payment: PaymentRecord(
            payment_no=payment.payment_no,
            bill_no=payment.bill_no,
            amount_fen=payment.amount_fen,
            channel=payment.channel,
            paid_at=payment.paid_at,
        ),
    )


# What the loaders fetch, a batch of keys at a time: name -> (fetch, the students' key column).
LOADERS: dict[str, tuple[Callable[[Connection, list[Any]], dict[Any, Any]], str]] = {
    "fees": (fee_statuses, "student_no"),
    "bills": (bills_of, "student_no"),
    "payments": (payments_of, "student_no"),
}


def _loader(context: RequestContext, name: str) -> BatchLoader[Any, Any]:
    fetch = LOADERS[name][0]
    return context.loader(name, lambda keys: fetch(context.connection, keys))


def _load(context: RequestContext, name: str, key: Any) -> Any:
    return _loader(context, name).load(key)


def expect_for_students(context: RequestContext, rows: Sequence[RowMapping]) -> None:
    """Tell the loaders which keys a page of students will ask for: one query each for the
    fields the page asks for, whatever its size. (Majors and classes need none: `student_query`
    joins them.)"""
    for name, (_, key) in LOADERS.items():
        _loader(context, name).expect(row[key] for row in rows)


# ------------------------------------------------------------------------------ Student
PERSON_COLUMNS = (
    Person.name,
    Person.sex,
    Person.phone.label("person_phone"),
    Person.email.label("person_email"),
    Person.id_type,
    Person.id_number_cipher,
)


def student_query() -> Select[Any]:
    # Major and class are joined here, not loaded after: a department page stays one query
    # for its rows, however many majors and classes they span.
    college = OrgUnit.__table__.alias("college")
    return (
        select(
            Student.__table__,
            *PERSON_COLUMNS,
            college.c.code.label("college_unit_code"),
            college.c.name.label("college_name"),
            Major.code.label("major_unit_code"),
            Major.name.label("major_name"),
            ClassGroup.code.label("class_unit_code"),
            ClassGroup.name.label("class_name"),
        )
        .outerjoin(Person, Person.id == Student.person_id)
        .outerjoin(college, college.c.id == Student.college_id)
        .outerjoin(Major, Major.id == Student.major_id)
        .outerjoin(ClassGroup, ClassGroup.id == Student.class_id)
        .where(Student.deleted_at.is_(None))
    )


def _unit(view: View, kind: str) -> Unit | None:
    code = view.row[f"{kind}_unit_code"]
    return Unit(code=code, name=view.row[f"{kind}_name"]) if code is not None else None


def _id_number(view: View, _: RequestContext) -> str | None:
    cipher = view.row["id_number_cipher"]
    return decrypt_id(cipher) if cipher is not None else None


def _id_type(view: View, _: RequestContext) -> Code | None:
    # Beside the number: a masked number alone does not say whether it is a resident ID or a passport.
    return Code.of(DOCUMENT_TYPES, view.row["id_type"])


class StudentType(graphene.ObjectType):
    """A student as academic affairs registers them; the person fields are the golden record's."""

    class Meta:
        name = "Student"

    student_no = graphene.String(required=True, resolver=column("studentNo", "student_no"))
    name = graphene.String(resolver=column("name"))
    sex = graphene.Field(Code, resolver=guarded("sex", lambda v, _: Code.of("sex", v.row["sex"])))
    status = graphene.Field(Code, resolver=guarded("status", lambda v, _: Code.of("student_status", v.row["status"])))
    entry_year = graphene.Int(
        resolver=guarded("entryYear", lambda v, _: v.row["entry_date"].year if v.row["entry_date"] else None)
    )
    education_level = graphene.Field(
        Code, resolver=guarded("educationLevel", lambda v, _: Code.of("education_level", v.row["education_level"]))
    )
    college = graphene.Field(
        Unit,
        resolver=guarded(
            "college",
            lambda v, _: (
                Unit(code=v.row["college_unit_code"], name=v.row["college_name"])
                if v.row["college_unit_code"]
                else None
            ),
        ),
    )
    major = graphene.Field(Unit, resolver=guarded("major", lambda v, _: _unit(v, "major")))
    class_group = graphene.Field(Unit, resolver=guarded("classGroup", lambda v, _: _unit(v, "class")))
    expected_graduation = graphene.Date(resolver=column("expectedGraduation", "expected_graduation"))
    phone = graphene.String(resolver=column("phone", "person_phone"))
    email = graphene.String(resolver=guarded("email", lambda v, _: v.row["email"] or v.row["person_email"]))
    id_number = graphene.String(resolver=guarded(ID_NUMBER, _id_number))
    id_type = graphene.Field(
        Code, description="the kind of document the ID number is", resolver=guarded("idType", _id_type)
    )
    fee_status = graphene.Field(
        FeeStatus, resolver=guarded("feeStatus", lambda v, c: _load(c, "fees", v.row["student_no"]))
    )
    bills = graphene.List(
        graphene.NonNull(Bill), resolver=guarded("bills", lambda v, c: _load(c, "bills", v.row["student_no"]))
    )
    payments = graphene.List(
        graphene.NonNull(PaymentRecord),
        resolver=guarded("payments", lambda v, c: _load(c, "payments", v.row["student_no"])),
    )


# -------------------------------------------------------------------------------- Staff
def staff_query() -> Select[Any]:
    department = OrgUnit.__table__.alias("department")
    return (
        select(
            Staff.__table__,
            *PERSON_COLUMNS,
            department.c.code.label("department_unit_code"),
            department.c.name.label("department_name"),
        )
        .outerjoin(Person, Person.id == Staff.person_id)
        .outerjoin(department, department.c.id == Staff.department_id)
        .where(Staff.deleted_at.is_(None))
    )


class StaffType(graphene.ObjectType):
    """A member of staff as HR registers them; the person fields are the golden record's."""

    class Meta:
        name = "Staff"

    staff_no = graphene.String(required=True, resolver=column("staffNo", "staff_no"))
    name = graphene.String(resolver=column("name"))
    sex = graphene.Field(Code, resolver=guarded("sex", lambda v, _: Code.of("sex", v.row["sex"])))
    department = graphene.Field(
        Unit,
        resolver=guarded(
            "department",
            lambda v, _: (
                Unit(code=v.row["department_unit_code"], name=v.row["department_name"])
                if v.row["department_unit_code"]
                else None
            ),
        ),
    )
    position = graphene.String(
        resolver=guarded("position", lambda v, _: v.row["position_name"] or v.row["position_code"])
    )
    title = graphene.Field(
        Code, resolver=guarded("title", lambda v, _: Code.of("professional_title", v.row["title_code"]))
    )
    hire_date = graphene.Date(resolver=column("hireDate", "hire_date"))
    employment_status = graphene.String(resolver=column("employmentStatus", "employment_status"))
    salary_grade = graphene.Int(resolver=column("salaryGrade", "salary_grade"))
    monthly_gross_fen = graphene.Int(resolver=column("monthlyGrossFen", "monthly_gross_fen"))
    phone = graphene.String(resolver=column("phone", "person_phone"))
    email = graphene.String(resolver=guarded("email", lambda v, _: v.row["email"] or v.row["person_email"]))
    id_number = graphene.String(resolver=guarded(ID_NUMBER, _id_number))
    id_type = graphene.Field(
        Code, description="the kind of document the ID number is", resolver=guarded("idType", _id_type)
    )


# ---------------------------------------------------------------------- cursor paging
def encode_cursor(kind: str, key: str) -> str:
    return base64.urlsafe_b64encode(f"{kind}:{key}".encode()).decode()


def decode_cursor(kind: str, cursor: str | None) -> str | None:
    if cursor is None:
        return None
    try:
        found_kind, _, key = base64.urlsafe_b64decode(cursor.encode()).decode().partition(":")
    except (ValueError, UnicodeDecodeError):
        found_kind, key = "", ""
    if found_kind != kind or not key or "\x00" in key:  # NUL: no key has one, and PostgreSQL refuses it
        raise GraphQLError("after: not a cursor of this list", extensions={"code": "BAD_USER_INPUT"})
    return key


def page(
    connection: Connection,
    query: Select[Any],
    key: Any,
    kind: str,
    first: int,
    after: str | None,
    parse: Callable[[str], Any] = str,
) -> tuple[list[RowMapping], bool]:
    """Keyset pagination on a unique key: stable under inserts, cheap at any depth."""
    check_page_size(first)
    start = decode_cursor(kind, after)
    if start is not None:
        try:
            start_key = parse(start)
            if isinstance(start_key, int) and start_key > MAX_KEY:  # past any key: the database would fail
                raise ValueError(start)
            query = query.where(key > start_key)
        except ValueError:
            raise GraphQLError("after: not a cursor of this list", extensions={"code": "BAD_USER_INPUT"}) from None
    rows = list(connection.execute(query.order_by(key).limit(first + 1)).mappings())
    return rows[:first], len(rows) > first
