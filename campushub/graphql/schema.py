"""The GraphQL schema: the service hall's forms, the caller's own data, department queries
and the steward's views.

Subjects are never chosen by the caller where the answer is theirs: `me` and `prefill` always
mean the signed-in person. Department queries go through `RequestContext.access`, and their
rows through the field guards of `records.py`. The SDL is checked in (`schema.graphql`);
`tests/test_api_schema.py` fails when code and file diverge.
"""

from __future__ import annotations

import base64
import datetime as dt
import threading
import time
from functools import cache
from typing import Any

import graphene
from graphql import GraphQLError, GraphQLResolveInfo
from sqlalchemy import Select, func, select

from campushub.graphql.context import RequestContext
from campushub.graphql.coverage import Coverage, coverage
from campushub.graphql.forms import Form as FormSpec
from campushub.graphql.forms import FormField, catalog
from campushub.graphql.limits import check_page_size, parse_key
from campushub.graphql.prefill import Filled, entities_of, fill
from campushub.graphql.records import (
    PageInfo,
    StaffType,
    StudentType,
    View,
    encode_cursor,
    expect_for_students,
    keyed_cursor,
    keyed_page_info,
    page,
    staff_query,
    student_query,
)
from campushub.graphql.steward import AcceptRowCount, ResolveConflict, ResolveQuarantine, Steward, require_steward
from campushub.graphql.workorders import (
    Correction,
    CorrectionConnection,
    DecideCorrection,
    MarkNotificationsRead,
    NotificationType,
    SetWorkOrderStatus,
    SubmitWorkOrder,
    WorkOrderConnection,
    WorkOrderType,
    corrections_to_decide,
    my_corrections,
    my_notifications,
    my_work_orders,
    work_order_for,
    work_orders_to_process,
)
from campushub.models.landing import SyncRun
from campushub.models.service import AuditEntry
from campushub.models.sources import LABELS
from campushub.models.unified import ClassGroup, Major, OrgUnit
from campushub.models.unified import Staff as StaffRow
from campushub.models.unified import Student as StudentRow


# --------------------------------------------------------------------------------- forms
class Quality(graphene.Enum):
    OK = "ok"
    FLAGGED = "flagged"  # filled, but its record breaks a rule, is disputed, stale or superseded
    MISSING = "missing"  # the hub cannot fill it: typed by hand


class FormFieldSpec(graphene.ObjectType):
    name = graphene.String(required=True)
    label = graphene.String(required=True)
    label_en = graphene.String(required=True)
    prefilled = graphene.Boolean(required=True, description="false: the applicant types it")


class Form(graphene.ObjectType):
    id = graphene.ID(required=True)
    title = graphene.String(required=True)
    title_en = graphene.String(required=True)
    subject = graphene.String(required=True, description="student, staff or cardholder: always the signed-in person")
    fields = graphene.List(graphene.NonNull(FormFieldSpec), required=True)

    @staticmethod
    @cache  # the catalog is fixed: one answer object per form, read by every request
    def of(form: FormSpec) -> Form:
        return Form(
            id=form.id,
            title=form.title,
            title_en=form.title_en,
            subject=form.subject,
            fields=[
                FormFieldSpec(name=f.name, label=f.label, label_en=f.label_en, prefilled=f.path is not None)
                for f in form.fields
            ],
        )


class PrefilledField(graphene.ObjectType):
    name = graphene.String(required=True)
    label = graphene.String(required=True)
    label_en = graphene.String(required=True)
    value = graphene.String(description="machine form: ISO date, integer fen, national code")
    display = graphene.String(description="as the form prints it")
    source = graphene.String(description="academic, hr, finance or card")
    source_label = graphene.String(description="教务, 人事, 财务 or 一卡通")
    source_key = graphene.String(description="the record's key in its source system")
    as_of = graphene.DateTime()
    quality = graphene.Field(Quality, required=True)
    notes = graphene.List(graphene.NonNull(graphene.String), required=True, description="quality notes, or why missing")


class Prefill(graphene.ObjectType):
    form = graphene.Field(Form, required=True)
    fields = graphene.List(graphene.NonNull(PrefilledField), required=True)
    filled = graphene.Int(required=True)
    missing = graphene.List(graphene.NonNull(PrefilledField), required=True)


class FieldCoverage(graphene.ObjectType):
    name = graphene.String(required=True)
    filled = graphene.Int(required=True)
    share = graphene.Float(required=True)


class FormCoverage(graphene.ObjectType):
    form = graphene.Field(Form, required=True)
    population = graphene.Int(required=True, description="people who may use the form")
    share = graphene.Float(required=True, description="share of the form's fields the hub fills, over them all")
    fields = graphene.List(graphene.NonNull(FieldCoverage), required=True)


def _prefilled(form_field: FormField, outcome: Any) -> PrefilledField:
    common = {"name": form_field.name, "label": form_field.label, "label_en": form_field.label_en}
    if isinstance(outcome, Filled):
        return PrefilledField(
            **common,
            value=outcome.value,
            display=outcome.display,
            source=outcome.source,
            source_label=LABELS.get(outcome.source, outcome.source),
            source_key=outcome.source_key,
            as_of=outcome.as_of,
            quality=Quality.FLAGGED if outcome.notes else Quality.OK,
            notes=list(outcome.notes),
        )
    return PrefilledField(**common, quality=Quality.MISSING, notes=[outcome.reason])


class _CoverageCache:
    """Coverage over the population moves only when a sync lands: cache it per data version."""

    ttl_s = 300.0

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._entries: dict[tuple[str, str], tuple[Any, float, Coverage]] = {}

    def get(self, context: RequestContext, form: FormSpec) -> Coverage:
        connection = context.connection
        version = connection.execute(select(func.max(SyncRun.id))).scalar()
        key = (connection.engine.url.render_as_string(), form.id)
        with self._lock:
            cached = self._entries.get(key)
            if cached and cached[0] == version and time.monotonic() - cached[1] < self.ttl_s:
                return cached[2]
        measured = coverage(connection, form)
        with self._lock:
            self._entries[key] = (version, time.monotonic(), measured)
        return measured


COVERAGE = _CoverageCache()


# ------------------------------------------------------------------------------------ me
class AccessLogEntry(graphene.ObjectType):
    at = graphene.DateTime(required=True)
    actor = graphene.String(required=True)
    actor_role = graphene.String(required=True)
    purpose = graphene.String(required=True)
    entity = graphene.String(required=True)
    fields = graphene.List(graphene.NonNull(graphene.String), required=True)
    outcome = graphene.String(required=True)


class AccessLog(graphene.ObjectType):
    nodes = graphene.List(graphene.NonNull(AccessLogEntry), required=True)
    page_info = graphene.Field(PageInfo, required=True)


# The "my data" view is a form over every path the caller's role may read about themselves.
MY_DATA_PATHS = {
    "person": ("name", "sex", "birth_date", "ethnicity", "political_status", "id_type", "id_number", "phone", "email"),
    "student": ("student_no", "college", "major", "class", "education_level", "entry_date", "status"),
    "staff": ("staff_no", "department", "position", "title", "hire_date", "employment_status"),
    "card": ("card_no", "status", "balance"),
    "fees": ("billed", "paid", "outstanding", "settled"),
    "grades": ("courses", "credits", "average_score", "last_term"),
}


def my_data_form(self_entities: frozenset[str]) -> FormSpec:
    fields = tuple(
        FormField(
            name=f"{entity}.{name}", label=f"{entity}.{name}", label_en=f"{entity}.{name}", path=f"{entity}.{name}"
        )
        for entity, names in MY_DATA_PATHS.items()
        if entity in self_entities
        for name in names
    )
    return FormSpec("my_data", "我的数据", "My data", "student", frozenset(), fields)


class Me(graphene.ObjectType):
    subject = graphene.String(required=True, description="学号 or 工号")
    role = graphene.String(required=True)
    role_label = graphene.String(required=True)
    org_unit = graphene.String()
    student = graphene.Field(StudentType)
    staff = graphene.Field(StaffType)
    data = graphene.List(
        graphene.NonNull(PrefilledField), required=True, description="everything the hub holds about me, with sources"
    )
    work_orders = graphene.List(
        graphene.NonNull(WorkOrderType), required=True, description="my work orders, newest first"
    )
    notifications = graphene.List(graphene.NonNull(NotificationType), required=True)
    corrections = graphene.List(graphene.NonNull(Correction), required=True, description="my correction requests")
    access_log = graphene.Field(
        AccessLog,
        required=True,
        first=graphene.Int(default_value=20),
        after=graphene.String(),
        description="who read my data, when, in which role and for what purpose",
    )

    @staticmethod
    def resolve_work_orders(_: Any, info: GraphQLResolveInfo) -> list[WorkOrderType]:
        return my_work_orders(info.context)

    @staticmethod
    def resolve_notifications(_: Any, info: GraphQLResolveInfo) -> list[NotificationType]:
        return my_notifications(info.context)

    @staticmethod
    def resolve_corrections(_: Any, info: GraphQLResolveInfo) -> list[Correction]:
        return my_corrections(info.context)

    @staticmethod
    def resolve_student(_: Any, info: GraphQLResolveInfo) -> View | None:
        context: RequestContext = info.context
        return _own(context, "student", student_query().where(StudentRow.person_id == context.person_id))

    @staticmethod
    def resolve_staff(_: Any, info: GraphQLResolveInfo) -> View | None:
        context: RequestContext = info.context
        return _own(context, "staff", staff_query().where(StaffRow.person_id == context.person_id))

    @staticmethod
    def resolve_data(_: Any, info: GraphQLResolveInfo) -> list[PrefilledField]:
        context: RequestContext = info.context
        form = my_data_form(context.role.self_entities)
        records = context.own_records(entities_of(form.paths))
        if records is None:
            return []
        outcomes = fill(form, records)
        context.audit.read(context.person_id, "my_data", [name for name, _ in outcomes], "self")
        return [_prefilled(form_field, outcome) for form_field, (_, outcome) in zip(form.fields, outcomes, strict=True)]

    @staticmethod
    def resolve_access_log(_: Any, info: GraphQLResolveInfo, first: int, after: str | None = None) -> AccessLog:
        context: RequestContext = info.context
        if context.person_id is None:
            return AccessLog(nodes=[], page_info=PageInfo(has_next_page=False))
        # Newest first: keyset on the descending id.
        check_page_size(first)
        query = select(AuditEntry.__table__).where(AuditEntry.subject_person_id == context.person_id)
        if after is not None:
            query = query.where(AuditEntry.id < _log_cursor(after))
        rows = list(context.connection.execute(query.order_by(AuditEntry.id.desc()).limit(first + 1)))
        more, rows = len(rows) > first, rows[:first]
        return AccessLog(
            nodes=[
                AccessLogEntry(
                    at=row.at,
                    actor=row.actor,
                    actor_role=row.actor_role,
                    purpose=row.purpose,
                    entity=row.entity,
                    fields=row.fields,
                    outcome=row.outcome,
                )
                for row in rows
            ],
            page_info=PageInfo(has_next_page=more, end_cursor=encode_cursor("log", str(rows[-1].id)) if rows else None),
        )


def _log_cursor(after: str) -> int:
    try:
        kind, _, key = base64.urlsafe_b64decode(after.encode()).decode().partition(":")
        if kind == "log":
            return parse_key(key)
    except (ValueError, UnicodeDecodeError):
        pass
    raise GraphQLError("after: not a cursor of this list", extensions={"code": "BAD_USER_INPUT"})


def _own(context: RequestContext, entity: str, query: Select[Any]) -> View | None:
    if context.person_id is None or entity not in context.role.self_entities:
        return None
    row = context.connection.execute(query).mappings().first()
    if row is None:
        return None
    access = context.access(entity, context.person_id, None)
    assert access is not None  # the caller's own record, in one of their self entities
    return View(row, access)


# ------------------------------------------------------------------------ department lists
class StudentFilter(graphene.InputObjectType):
    college_code = graphene.String()
    major_code = graphene.String()
    class_code = graphene.String()
    status = graphene.String(description="学生当前状态码, e.g. 01 在读")
    entry_year = graphene.Int(description="the grade (年级): year of entry")


class StaffFilter(graphene.InputObjectType):
    department_code = graphene.String()
    title_code = graphene.String()


# Each filter narrows a list by a field, so it reads that field of every row it passes over: a
# role may filter only by the fields it was granted (permissions.yaml).
FILTERED_FIELDS = {
    "student": {
        "college_code": "college",
        "major_code": "major",
        "class_code": "classGroup",
        "status": "status",
        "entry_year": "entryYear",
    },
    "staff": {"department_code": "department", "title_code": "title"},
}


class StudentEdge(graphene.ObjectType):
    cursor = graphene.String(required=True, resolver=keyed_cursor("student", "studentNo", "student_no"))
    node = graphene.Field(StudentType, required=True)


class StudentConnection(graphene.ObjectType):
    edges = graphene.List(graphene.NonNull(StudentEdge), required=True)
    page_info = graphene.Field(PageInfo, required=True)


class StaffEdge(graphene.ObjectType):
    cursor = graphene.String(required=True, resolver=keyed_cursor("staff", "staffNo", "staff_no"))
    node = graphene.Field(StaffType, required=True)


class StaffConnection(graphene.ObjectType):
    edges = graphene.List(graphene.NonNull(StaffEdge), required=True)
    page_info = graphene.Field(PageInfo, required=True)


def filtered_fields(entity: str, criteria: dict[str, Any]) -> tuple[str, ...]:
    """The fields a list's filter reads of every row it lets through (as the filters apply)."""
    return tuple(FILTERED_FIELDS[entity][name] for name, value in criteria.items() if value)


def _scoped(
    context: RequestContext, entity: str, query: Select[Any], org_column: Any, criteria: dict[str, Any]
) -> Select[Any]:
    grant = context.role.grant(entity)
    if grant is None:
        raise context.refuse(entity, None, "list not granted")
    refused = [field for field in filtered_fields(entity, criteria) if field not in grant.fields]
    if refused:
        raise context.refuse(entity, None, f"filter by {', '.join(refused)} not granted", refused)
    if grant.scope == "own_college":
        own = select(OrgUnit.id).where(OrgUnit.code == context.principal.org_unit).scalar_subquery()
        query = query.where(org_column == own)
    return query


def _students_filtered(query: Select[Any], criteria: dict[str, Any]) -> Select[Any]:
    if criteria.get("college_code"):
        query = query.where(
            StudentRow.college_id
            == select(OrgUnit.id).where(OrgUnit.code == criteria["college_code"]).scalar_subquery()
        )
    if criteria.get("major_code"):
        query = query.where(
            StudentRow.major_id == select(Major.id).where(Major.code == criteria["major_code"]).scalar_subquery()
        )
    if criteria.get("class_code"):
        query = query.where(
            StudentRow.class_id
            == select(ClassGroup.id).where(ClassGroup.code == criteria["class_code"]).scalar_subquery()
        )
    if criteria.get("status"):
        query = query.where(StudentRow.status == criteria["status"])
    if criteria.get("entry_year"):
        year = criteria["entry_year"]
        if not dt.MINYEAR <= year < dt.MAXYEAR:  # a date of it (and of the next year) must exist
            raise GraphQLError(f"filter.entryYear: no such year {year}", extensions={"code": "BAD_USER_INPUT"})
        query = query.where(
            StudentRow.entry_date >= dt.date(year, 1, 1), StudentRow.entry_date < dt.date(year + 1, 1, 1)
        )
    return query


# ---------------------------------------------------------------------------------- root
class Query(graphene.ObjectType):
    me = graphene.Field(Me, required=True)
    forms = graphene.List(graphene.NonNull(Form), required=True, description="the forms I may use")
    prefill = graphene.Field(Prefill, required=True, form_id=graphene.ID(required=True))
    coverage = graphene.List(
        graphene.NonNull(FormCoverage),
        required=True,
        form_id=graphene.ID(),
        description="how much of each form the hub fills, over everyone who may use it",
    )
    students = graphene.Field(
        StudentConnection,
        required=True,
        filter=StudentFilter(),
        first=graphene.Int(default_value=20),
        after=graphene.String(),
    )
    student = graphene.Field(StudentType, student_no=graphene.String(required=True))
    staff_members = graphene.Field(
        StaffConnection,
        required=True,
        filter=StaffFilter(),
        first=graphene.Int(default_value=20),
        after=graphene.String(),
    )
    staff_member = graphene.Field(StaffType, staff_no=graphene.String(required=True))
    steward = graphene.Field(Steward, required=True)
    work_order = graphene.Field(WorkOrderType, required=True, id=graphene.ID(required=True))
    work_orders = graphene.Field(
        WorkOrderConnection,
        required=True,
        status=graphene.String(),
        first=graphene.Int(default_value=20),
        after=graphene.String(),
        description="the work orders my role processes",
    )
    corrections = graphene.Field(
        CorrectionConnection,
        required=True,
        status=graphene.String(default_value="open"),
        first=graphene.Int(default_value=20),
        after=graphene.String(),
        description="correction requests for stewards and the departments that own the data",
    )

    @staticmethod
    def resolve_work_order(_: Any, info: GraphQLResolveInfo, id: str) -> WorkOrderType:
        return WorkOrderType.of(work_order_for(info.context, id, "work_order"))

    @staticmethod
    def resolve_work_orders(
        _: Any, info: GraphQLResolveInfo, first: int, status: str | None = None, after: str | None = None
    ) -> WorkOrderConnection:
        return work_orders_to_process(info.context, status, first, after)

    @staticmethod
    def resolve_corrections(
        _: Any, info: GraphQLResolveInfo, status: str, first: int, after: str | None = None
    ) -> CorrectionConnection:
        return corrections_to_decide(info.context, status, first, after)

    @staticmethod
    def resolve_me(_: Any, info: GraphQLResolveInfo) -> Me:
        principal = info.context.principal
        return Me(
            subject=principal.subject,
            role=principal.role,
            role_label=info.context.role.label,
            org_unit=principal.org_unit,
        )

    @staticmethod
    def resolve_forms(_: Any, info: GraphQLResolveInfo) -> list[Form]:
        role = info.context.principal.role
        return [Form.of(form) for form in catalog().values() if role in form.roles]

    @staticmethod
    def resolve_prefill(_: Any, info: GraphQLResolveInfo, form_id: str) -> Prefill:
        context: RequestContext = info.context
        form = context.usable_form(form_id)
        records = context.own_records(entities_of(form.paths))
        if records is None:
            raise GraphQLError("no record of you in the unified layer yet", extensions={"code": "NOT_FOUND"})
        outcomes = fill(form, records)
        fields = [
            _prefilled(form_field, outcome) for form_field, (_, outcome) in zip(form.fields, outcomes, strict=True)
        ]
        released = [name for name, outcome in outcomes if isinstance(outcome, Filled)]
        context.audit.read(context.person_id, "form", released, f"form:{form.id}")
        return Prefill(
            form=Form.of(form),
            fields=fields,
            filled=len(released),
            missing=[field for field in fields if field.quality == Quality.MISSING],
        )

    @staticmethod
    def resolve_coverage(_: Any, info: GraphQLResolveInfo, form_id: str | None = None) -> list[FormCoverage]:
        forms = [catalog()[form_id]] if form_id in catalog() else [] if form_id else list(catalog().values())
        results = []
        for form in forms:
            measured = COVERAGE.get(info.context, form)
            results.append(
                FormCoverage(
                    form=Form.of(form),
                    population=measured.population,
                    share=measured.share,
                    fields=[
                        FieldCoverage(
                            name=name, filled=filled, share=filled / measured.population if measured.population else 0
                        )
                        for name, filled in measured.filled.items()
                    ],
                )
            )
        return results

    @staticmethod
    def resolve_students(
        _: Any, info: GraphQLResolveInfo, first: int, filter: dict | None = None, after: str | None = None
    ) -> StudentConnection:
        context: RequestContext = info.context
        criteria = filter or {}
        query = _students_filtered(
            _scoped(context, "student", student_query(), StudentRow.college_id, criteria), criteria
        )
        rows, more = page(context.connection, query, StudentRow.student_no, "student", first, after)
        expect_for_students(context, rows)
        edges = []
        for row in rows:
            access = context.access("student", row["person_id"], row["college_id"])
            if access is None:  # cannot happen for a scoped query; refuse rather than trust it
                raise context.refuse("student", row["person_id"], "row outside scope")
            if criteria:  # each row listed is known to hold what the filter asked for
                context.audit.read(row["person_id"], "student", filtered_fields("student", criteria), access.purpose)
            edges.append(StudentEdge(node=View(row, access)))
        last = edges[-1].node if edges else None
        return StudentConnection(
            edges=edges, page_info=keyed_page_info(more, last, "student", "studentNo", "student_no")
        )

    @staticmethod
    def resolve_student(_: Any, info: GraphQLResolveInfo, student_no: str) -> View | None:
        context: RequestContext = info.context
        row = context.connection.execute(student_query().where(StudentRow.student_no == student_no)).mappings().first()
        subject = row["person_id"] if row else None
        access = context.access("student", subject, row["college_id"]) if row else None
        if access is None:
            # The same answer whether the student exists or not: nothing to enumerate.
            raise context.refuse("student", subject, f"lookup of student {student_no}")
        return View(row, access)

    @staticmethod
    def resolve_staff_members(
        _: Any, info: GraphQLResolveInfo, first: int, filter: dict | None = None, after: str | None = None
    ) -> StaffConnection:
        context: RequestContext = info.context
        criteria = filter or {}
        query = _scoped(context, "staff", staff_query(), StaffRow.department_id, criteria)
        if criteria.get("department_code"):
            query = query.where(
                StaffRow.department_id
                == select(OrgUnit.id).where(OrgUnit.code == criteria["department_code"]).scalar_subquery()
            )
        if criteria.get("title_code"):
            query = query.where(StaffRow.title_code == criteria["title_code"])
        rows, more = page(context.connection, query, StaffRow.staff_no, "staff", first, after)
        edges = []
        for row in rows:
            access = context.access("staff", row["person_id"], row["department_id"])
            if access is None:
                raise context.refuse("staff", row["person_id"], "row outside scope")
            if criteria:
                context.audit.read(row["person_id"], "staff", filtered_fields("staff", criteria), access.purpose)
            edges.append(StaffEdge(node=View(row, access)))
        last = edges[-1].node if edges else None
        return StaffConnection(edges=edges, page_info=keyed_page_info(more, last, "staff", "staffNo", "staff_no"))

    @staticmethod
    def resolve_staff_member(_: Any, info: GraphQLResolveInfo, staff_no: str) -> View | None:
        context: RequestContext = info.context
        row = context.connection.execute(staff_query().where(StaffRow.staff_no == staff_no)).mappings().first()
        subject = row["person_id"] if row else None
        access = context.access("staff", subject, row["department_id"]) if row else None
        if access is None:
            raise context.refuse("staff", subject, f"lookup of staff {staff_no}")
        return View(row, access)

    @staticmethod
    def resolve_steward(_: Any, info: GraphQLResolveInfo) -> Steward:
        require_steward(info.context)
        return Steward()


class Mutation(graphene.ObjectType):
    submit_work_order = SubmitWorkOrder.Field()
    set_work_order_status = SetWorkOrderStatus.Field()
    decide_correction = DecideCorrection.Field()
    mark_notifications_read = MarkNotificationsRead.Field()
    resolve_quarantine = ResolveQuarantine.Field()
    resolve_conflict = ResolveConflict.Field()
    accept_row_count = AcceptRowCount.Field()


SCHEMA = graphene.Schema(query=Query, mutation=Mutation, auto_camelcase=True)
