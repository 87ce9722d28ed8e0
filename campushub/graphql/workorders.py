"""Work orders (业务工单), correction requests and notifications: the service hall's write side.

Submitting a form never trusts the page's copy of the prefilled values: the server fills the
form again and stores, per field, what it served (value, source, key, as-of, quality) and what
the person did with it — confirmed it, or marked it wrong with a note and their own value
(self-declared). A value marked wrong becomes a correction request for the department that
owns its source system (`sources.OWNERS`). The snapshot is signed (HMAC-SHA256) into the work
order's verification code, printed on its PDF, so a stamped paper can always be traced back to
the data it was made from. A full ID number in a snapshot is sealed (encrypted), never stored
in the clear.

Who may see a work order: the person it is about, and the officers whose role processes its
form (`process_forms` in permissions.yaml) within their scope. Everyone else gets the same
refusal whether it exists or not, and the attempt is audited.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import json
import re
import secrets
from collections.abc import Mapping
from functools import cache
from typing import Any

import graphene
from graphql import GraphQLError, GraphQLResolveInfo
from sqlalchemy import Connection, RowMapping, insert, select, update

from campushub.graphql.context import Forbidden, RequestContext
from campushub.graphql.forms import Form, catalog
from campushub.graphql.limits import bad_input, bounded_text, parse_key
from campushub.graphql.permissions import ALL_SOURCES
from campushub.graphql.prefill import Filled, entities_of, fill
from campushub.graphql.records import PageInfo, encode_cursor, page
from campushub.models.protect import decrypt_id, encrypt_id, mask_id
from campushub.models.quality import mask_phone
from campushub.models.secrets import secret
from campushub.models.service import CorrectionRequest, Notification, WorkOrder
from campushub.models.sources import LABELS, OWNERS
from campushub.models.unified import Person, Student

NOTE_MAX = 500
VALUE_MAX = 200
# submitted -> processing -> ready; an officer may also mark a simple request ready at once.
TRANSITIONS: dict[str, frozenset[str]] = {
    "submitted": frozenset({"processing", "ready"}),
    "processing": frozenset({"ready"}),
    "ready": frozenset(),
}
STATUS_LABELS = {"submitted": "已提交", "processing": "办理中", "ready": "可领取"}
CODE_SHAPE = re.compile(r"^[A-Z2-7]{4}(-[A-Z2-7]{4}){3}$")


# ---------------------------------------------------------------------------- signing
@cache
def _signing_key() -> bytes:
    return secret("CAMPUSHUB_SIGNING_KEY", "signing.key", lambda: secrets.token_urlsafe(32)).encode()


def verification_code(snapshot: Mapping[str, Any]) -> str:
    """16 base32 characters of an HMAC over the canonical snapshot, as XXXX-XXXX-XXXX-XXXX."""
    canonical = json.dumps(snapshot, sort_keys=True, ensure_ascii=False, separators=(",", ":")).encode()
    digest = hmac.new(_signing_key(), canonical, hashlib.sha256).digest()
    code = base64.b32encode(digest).decode()[:16]
    return "-".join(code[i : i + 4] for i in range(0, 16, 4))


def verified(connection: Connection, code: str) -> RowMapping | None:
    """The work order a code belongs to, if its snapshot still signs to that code."""
    row = connection.execute(select(WorkOrder.__table__).where(WorkOrder.verification_code == code)).mappings().first()
    if row is None or not hmac.compare_digest(verification_code(row["snapshot"]), code):
        return None
    return row


def shown_fields(snapshot: Mapping[str, Any]) -> list[dict[str, Any]]:
    """A snapshot's fields as anyone but the PDF may show them: sealed values stay masked."""
    return [{key: value for key, value in field.items() if key != "sealed"} for field in snapshot["fields"]]


def printed_value(field: Mapping[str, Any]) -> str:
    """What the PDF prints: the sealed full value where the form declared it needs it."""
    return decrypt_id(field["sealed"].encode()) if field.get("sealed") else field.get("display") or ""


# ---------------------------------------------------------------------------- access
def _subject_college(connection: Connection, person_id: int) -> int | None:
    return connection.execute(
        select(Student.college_id).where(Student.person_id == person_id, Student.deleted_at.is_(None))
    ).scalar()


def processes(context: RequestContext, form_id: str, subject: int) -> bool:
    """Does the caller's role process this form's work orders, for this person?"""
    role = context.role
    if form_id not in role.process_forms:
        return False
    form = catalog()[form_id]
    grant = role.grant("student" if form.subject == "student" else "staff")
    if grant is None or grant.scope == "all":
        return True
    return _subject_college(context.connection, subject) == context.org_unit_id


def work_order_for(context: RequestContext, public_id: str, purpose: str) -> RowMapping:
    row = (
        context.connection.execute(select(WorkOrder.__table__).where(WorkOrder.public_id == public_id))
        .mappings()
        .first()
    )
    subject = row["subject_person_id"] if row else None
    if row is not None and (subject == context.person_id or processes(context, row["form_id"], subject)):
        context.audit.read(subject, "work_order", [f["name"] for f in row["snapshot"]["fields"]], purpose)
        return row
    context.audit.denied(subject, "work_order", ("*",), purpose, f"{context.principal.role}: work order {public_id}")
    raise Forbidden("work order: not found or not yours")


def decided_sources(context: RequestContext) -> frozenset[str]:
    """The source systems whose correction requests the caller's role decides (permissions.yaml)."""
    return context.role.decides_corrections


def _deciding(query: Any, sources: frozenset[str]) -> Any:
    return query if ALL_SOURCES in sources else query.where(CorrectionRequest.source.in_(sorted(sources)))


# ------------------------------------------------------------------------------ types
class WorkOrderField(graphene.ObjectType):
    name = graphene.String(required=True)
    label = graphene.String(required=True)
    label_en = graphene.String()
    value = graphene.String()
    display = graphene.String()
    source = graphene.String()
    source_label = graphene.String()
    source_key = graphene.String()
    as_of = graphene.String()
    quality = graphene.String()
    confirmed = graphene.Boolean(required=True)
    self_declared = graphene.Boolean(required=True)
    note = graphene.String()


class WorkOrderType(graphene.ObjectType):
    class Meta:
        name = "WorkOrder"

    id = graphene.ID(required=True)
    form_id = graphene.String(required=True)
    form_title = graphene.String(required=True)
    status = graphene.String(required=True)
    status_label = graphene.String(required=True)
    created_at = graphene.DateTime(required=True)
    updated_at = graphene.DateTime(required=True)
    verification_code = graphene.String(required=True)
    requester = graphene.String(required=True)
    requester_name = graphene.String()
    fields = graphene.List(graphene.NonNull(WorkOrderField), required=True)

    @staticmethod
    def of(row: Mapping[str, Any]) -> WorkOrderType:
        snapshot = row["snapshot"]
        return WorkOrderType(
            id=row["public_id"],
            form_id=row["form_id"],
            form_title=snapshot["form_title"],
            status=row["status"],
            status_label=STATUS_LABELS[row["status"]],
            created_at=row["created_at"],
            updated_at=row["updated_at"],
            verification_code=row["verification_code"],
            requester=row["requester"],
            requester_name=snapshot.get("requester_name"),
            fields=[WorkOrderField(**field) for field in shown_fields(snapshot)],
        )


class Correction(graphene.ObjectType):
    id = graphene.ID(required=True)
    form_id = graphene.String(required=True)
    work_order_id = graphene.String()
    field = graphene.String(required=True)
    label = graphene.String(required=True)
    source = graphene.String(required=True)
    source_label = graphene.String(required=True)
    source_key = graphene.String()
    owner = graphene.String(required=True, description="the department that owns the source system")
    current_value = graphene.String()
    claimed_value = graphene.String()
    note = graphene.String(required=True)
    status = graphene.String(required=True)
    requester = graphene.String(required=True)
    created_at = graphene.DateTime(required=True)
    decided_at = graphene.DateTime()
    decided_by = graphene.String()
    response_note = graphene.String()

    @staticmethod
    def of(row: Mapping[str, Any]) -> Correction:
        fields = {name: row[name] for name in Correction._meta.fields if name in row and name != "id"}
        return Correction(id=str(row["id"]), source_label=LABELS.get(row["source"], row["source"]), **fields)


class NotificationType(graphene.ObjectType):
    class Meta:
        name = "Notification"

    id = graphene.ID(required=True)
    message = graphene.String(required=True)
    link = graphene.String()
    created_at = graphene.DateTime(required=True)
    read_at = graphene.DateTime()


class WorkOrderConnection(graphene.ObjectType):
    nodes = graphene.List(graphene.NonNull(WorkOrderType), required=True)
    page_info = graphene.Field(PageInfo, required=True)


class CorrectionConnection(graphene.ObjectType):
    nodes = graphene.List(graphene.NonNull(Correction), required=True)
    page_info = graphene.Field(PageInfo, required=True)


class AnswerInput(graphene.InputObjectType):
    name = graphene.String(required=True)
    value = graphene.String(description="the person's own value: for a field marked wrong, or typed by hand")
    confirmed = graphene.Boolean(required=True)
    note = graphene.String(description="why the prefilled value is wrong (1-500 characters)")


# ----------------------------------------------------------------------------- queries
def my_work_orders(context: RequestContext) -> list[WorkOrderType]:
    if context.person_id is None:
        return []
    query = (
        select(WorkOrder.__table__)
        .where(WorkOrder.subject_person_id == context.person_id)
        .order_by(WorkOrder.id.desc())
        .limit(50)
    )
    return [WorkOrderType.of(row) for row in context.connection.execute(query).mappings()]


def my_notifications(context: RequestContext) -> list[NotificationType]:
    if context.person_id is None:
        return []
    query = (
        select(Notification.__table__)
        .where(Notification.person_id == context.person_id)
        .order_by(Notification.id.desc())
        .limit(50)
    )
    return [
        NotificationType(
            id=str(r["id"]), message=r["message"], link=r["link"], created_at=r["created_at"], read_at=r["read_at"]
        )
        for r in context.connection.execute(query).mappings()
    ]


def my_corrections(context: RequestContext) -> list[Correction]:
    if context.person_id is None:
        return []
    query = (
        select(CorrectionRequest.__table__)
        .where(CorrectionRequest.subject_person_id == context.person_id)
        .order_by(CorrectionRequest.id.desc())
        .limit(50)
    )
    return [Correction.of(row) for row in context.connection.execute(query).mappings()]


def work_orders_to_process(
    context: RequestContext, status: str | None, first: int, after: str | None
) -> WorkOrderConnection:
    role = context.role
    if not role.process_forms:
        context.audit.denied(None, "work_order", ("*",), "process", f"{role.name}: processes no forms")
        raise Forbidden(f"role {role.name} processes no work orders")
    query = select(WorkOrder.__table__).where(WorkOrder.form_id.in_(sorted(role.process_forms)))
    if status:
        query = query.where(WorkOrder.status == status)
    student_grant = role.grant("student")
    if student_grant is not None and student_grant.scope == "own_college":
        own = select(Student.person_id).where(Student.college_id == context.org_unit_id)
        query = query.where(WorkOrder.subject_person_id.in_(own))
    rows, more = page(context.connection, query, WorkOrder.id, "work_order", first, after, parse=int)
    for row in rows:  # every field of each is released: each is named
        fields = [field["name"] for field in row["snapshot"]["fields"]]
        context.audit.read(row["subject_person_id"], "work_order", fields, "process")
    end = encode_cursor("work_order", str(rows[-1]["id"])) if rows else None
    return WorkOrderConnection(
        nodes=[WorkOrderType.of(row) for row in rows], page_info=PageInfo(has_next_page=more, end_cursor=end)
    )


def corrections_to_decide(context: RequestContext, status: str, first: int, after: str | None) -> CorrectionConnection:
    sources = decided_sources(context)
    if not sources:
        context.audit.denied(None, "correction", ("*",), "corrections", f"{context.principal.role}: not an owner")
        raise Forbidden("correction requests are for stewards and the departments that own the data")
    query = _deciding(select(CorrectionRequest.__table__).where(CorrectionRequest.status == status), sources)
    rows, more = page(context.connection, query, CorrectionRequest.id, "correction", first, after, parse=int)
    for row in rows:
        context.audit.read(row["subject_person_id"], "correction", (row["field"],), "corrections")
    end = encode_cursor("correction", str(rows[-1]["id"])) if rows else None
    return CorrectionConnection(
        nodes=[Correction.of(row) for row in rows], page_info=PageInfo(has_next_page=more, end_cursor=end)
    )


# --------------------------------------------------------------------------- mutations
def _answers_by_field(form: Form, answers: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    by_name: dict[str, dict[str, Any]] = {}
    for answer in answers:
        if answer["name"] in by_name:
            raise bad_input(f"field {answer['name']!r} answered twice")
        by_name[answer["name"]] = answer
    declared = [field.name for field in form.fields]
    unknown = sorted(set(by_name) - set(declared))
    missing = [name for name in declared if name not in by_name]
    if unknown:
        raise bad_input(f"form {form.id} has no fields {unknown}")
    if missing:
        raise bad_input(f"answer every field of {form.id}; missing {missing}")
    return by_name


def _snapshot_field(form_field: Any, outcome: Any, answer: dict[str, Any]) -> tuple[dict[str, Any], bool]:
    """One field of the snapshot, and whether it is a correction of a served value."""
    label = form_field.label
    base = {"name": form_field.name, "label": label, "label_en": form_field.label_en}
    if isinstance(outcome, Filled) and answer["confirmed"]:
        field = {
            **base,
            "value": outcome.value,
            "display": outcome.display,
            "source": outcome.source,
            "source_label": LABELS.get(outcome.source, outcome.source),
            "source_key": outcome.source_key,
            "as_of": outcome.as_of.isoformat() if outcome.as_of else None,
            "quality": "flagged" if outcome.notes else "ok",
            "confirmed": True,
            "self_declared": False,
            "note": None,
        }
        if form_field.full_id_number:
            field["sealed"] = encrypt_id(outcome.value).decode()
            field["value"] = field["display"] = _masked(outcome.value)
        return field, False
    corrected = isinstance(outcome, Filled)
    note = bounded_text(answer.get("note"), f"{label}: note", NOTE_MAX, required=corrected)
    value = bounded_text(answer.get("value"), f"{label}: value", VALUE_MAX, required=True)
    assert value is not None
    field = {
        **base,
        "value": value,
        "display": value,
        "source": None,
        "source_label": "本人申报",  # self-declared
        "source_key": None,
        "as_of": None,
        "quality": "self_declared",
        "confirmed": False,
        "self_declared": True,
        "note": note,
    }
    if form_field.path == ID_NUMBER_PATH:  # never in the clear; in full only where the form needs it
        if form_field.full_id_number:
            field["sealed"] = encrypt_id(value).decode()
        field["value"] = field["display"] = _masked(value)
    return field, corrected


def _masked(number: str) -> str:
    return mask_id(number) if len(number) > 7 else "*" * len(number)


ID_NUMBER_PATH = "person.id_number"
# What a correction request keeps of the value the hub holds: the department deciding it holds
# the value in its own system, and reads it there by the request's source key.
HELD_VALUE_MASKS = {ID_NUMBER_PATH: _masked, "person.phone": mask_phone}


def _held_value(form: Form, field_name: str, shown: str) -> str:
    path = next((field.path for field in form.fields if field.name == field_name), None)
    mask = HELD_VALUE_MASKS.get(path or "")
    return mask(shown) if mask else shown


def submit_work_order(context: RequestContext, form_id: str, answers: list[dict[str, Any]]) -> WorkOrderType:
    form = context.usable_form(form_id)
    records = context.own_records(entities_of(form.paths))
    if records is None:
        raise GraphQLError("no record of you in the unified layer yet", extensions={"code": "NOT_FOUND"})
    by_name = _answers_by_field(form, answers)
    outcomes = dict(fill(form, records))
    fields, corrections = [], []
    for form_field in form.fields:
        outcome = outcomes[form_field.name]
        field, corrected = _snapshot_field(form_field, outcome, by_name[form_field.name])
        fields.append(field)
        if corrected:
            corrections.append((field, outcome))
    now = dt.datetime.now(dt.UTC)
    name = context.connection.execute(select(Person.name).where(Person.id == context.person_id)).scalar()
    public_id = secrets.token_hex(12)
    snapshot = {
        "work_order": public_id,
        "form_id": form.id,
        "form_title": form.title,
        "requester": context.principal.subject,
        "requester_name": name,
        "created_at": now.isoformat(),
        "fields": fields,
    }
    code = verification_code(snapshot)
    work_order_id = context.connection.execute(
        insert(WorkOrder).values(
            public_id=public_id,
            form_id=form.id,
            subject_person_id=context.person_id,
            requester=context.principal.subject,
            requester_role=context.principal.role,
            status="submitted",
            snapshot=snapshot,
            verification_code=code,
            created_at=now,
            updated_at=now,
        )
    ).inserted_primary_key[0]
    for field, outcome in corrections:
        context.connection.execute(
            insert(CorrectionRequest).values(
                work_order_id=work_order_id,
                subject_person_id=context.person_id,
                requester=context.principal.subject,
                form_id=form.id,
                field=field["name"],
                label=field["label"],
                source=outcome.source,
                source_key=outcome.source_key,
                owner=OWNERS.get(outcome.source, "网络与信息中心"),
                current_value=_held_value(form, field["name"], outcome.display)[:256],
                claimed_value=(field["display"] or "")[:256],
                note=field["note"],
                status="open",
                created_at=now,
            )
        )
    context.audit.read(context.person_id, "work_order", [f["name"] for f in fields], f"form:{form.id}")
    row = context.connection.execute(select(WorkOrder.__table__).where(WorkOrder.id == work_order_id)).mappings().one()
    return WorkOrderType.of(row)


def notify(connection: Connection, person_id: int, message: str, link: str | None) -> None:
    connection.execute(
        insert(Notification).values(
            person_id=person_id, message=message[:256], link=link, created_at=dt.datetime.now(dt.UTC)
        )
    )


def set_status(context: RequestContext, public_id: str, status: str) -> WorkOrderType:
    row = work_order_for(context, public_id, "process")
    if not processes(context, row["form_id"], row["subject_person_id"]):
        context.audit.denied(row["subject_person_id"], "work_order", ("status",), "process", "not a processor")
        raise Forbidden("work order: not found or not yours")
    if status not in TRANSITIONS[row["status"]]:
        raise bad_input(f"a {row['status']} work order cannot become {status}")
    now = dt.datetime.now(dt.UTC)
    context.connection.execute(
        update(WorkOrder)
        .where(WorkOrder.id == row["id"], WorkOrder.status == row["status"])
        .values(status=status, updated_at=now, updated_by=context.principal.subject)
    )
    if status == "ready":
        title = row["snapshot"]["form_title"]
        notify(
            context.connection,
            row["subject_person_id"],
            f"您的「{title}」已办好，可以领取 (ready for pickup)",
            f"#/work-orders/{public_id}",
        )
    updated = context.connection.execute(select(WorkOrder.__table__).where(WorkOrder.id == row["id"])).mappings().one()
    return WorkOrderType.of(updated)


def decide_correction(context: RequestContext, correction_id: str, accept: bool, note: str) -> Correction:
    sources = decided_sources(context)
    if not sources:
        context.audit.denied(None, "correction", ("*",), "corrections", f"{context.principal.role}: not an owner")
        raise Forbidden("correction requests are for stewards and the departments that own the data")
    try:
        key = parse_key(correction_id)
    except ValueError:
        raise bad_input("id must be a number") from None
    response = bounded_text(note, "note", NOTE_MAX, required=True)
    query = _deciding(
        select(CorrectionRequest.__table__).where(CorrectionRequest.id == key, CorrectionRequest.status == "open"),
        sources,
    )
    row = context.connection.execute(query).mappings().first()
    if row is None:
        raise GraphQLError("no open correction request with this id for you", extensions={"code": "NOT_FOUND"})
    status = "accepted" if accept else "rejected"
    context.connection.execute(
        update(CorrectionRequest)
        .where(CorrectionRequest.id == row["id"])
        .values(
            status=status,
            decided_at=dt.datetime.now(dt.UTC),
            decided_by=context.principal.subject,
            response_note=response,
        )
    )
    outcome = "已采纳 (accepted)" if accept else "未采纳 (rejected)"
    notify(
        context.connection,
        row["subject_person_id"],
        f"您对「{row['label']}」的更正申请{outcome}：{response}",
        "#/my-data",
    )
    context.audit.read(row["subject_person_id"], "correction", (row["field"], status), "corrections")
    updated = (
        context.connection.execute(select(CorrectionRequest.__table__).where(CorrectionRequest.id == row["id"]))
        .mappings()
        .one()
    )
    return Correction.of(updated)


class SubmitWorkOrder(graphene.Mutation):
    """Submit a form: the values confirmed or corrected, snapshotted with their provenance."""

    class Arguments:
        form_id = graphene.ID(required=True)
        answers = graphene.List(graphene.NonNull(AnswerInput), required=True)

    Output = WorkOrderType

    @staticmethod
    def mutate(_: Any, info: GraphQLResolveInfo, form_id: str, answers: list[dict[str, Any]]) -> WorkOrderType:
        return submit_work_order(info.context, form_id, answers)


class SetWorkOrderStatus(graphene.Mutation):
    """An officer moves a work order on: processing, then ready for pickup (the person is told)."""

    class Arguments:
        id = graphene.ID(required=True)
        status = graphene.String(required=True)

    Output = WorkOrderType

    @staticmethod
    def mutate(_: Any, info: GraphQLResolveInfo, id: str, status: str) -> WorkOrderType:
        if status not in STATUS_LABELS:
            raise bad_input(f"status must be one of {sorted(STATUS_LABELS)}")
        return set_status(info.context, id, status)


class DecideCorrection(graphene.Mutation):
    """Accept or reject a correction request, with a note back to the person."""

    class Arguments:
        id = graphene.ID(required=True)
        accept = graphene.Boolean(required=True)
        note = graphene.String(required=True)

    Output = Correction

    @staticmethod
    def mutate(_: Any, info: GraphQLResolveInfo, id: str, accept: bool, note: str) -> Correction:
        return decide_correction(info.context, id, accept, note)


class MarkNotificationsRead(graphene.Mutation):
    Output = graphene.Int

    @staticmethod
    def mutate(_: Any, info: GraphQLResolveInfo) -> int:
        context: RequestContext = info.context
        if context.person_id is None:
            return 0
        result = context.connection.execute(
            update(Notification)
            .where(Notification.person_id == context.person_id, Notification.read_at.is_(None))
            .values(read_at=dt.datetime.now(dt.UTC))
        )
        return int(result.rowcount)
