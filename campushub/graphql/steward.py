"""The steward's views and actions: sync status, quality checks, quarantine, identity conflicts.

Only roles with `steward: true` in `permissions.yaml` get here. Quarantined payloads are
personal data: reading them is audited, and ID numbers in them are masked. Every action
(resolving a quarantined record or a conflict, accepting a unified table's new size) is audited.
"""

from __future__ import annotations

import datetime as dt
import itertools
import re
import unicodedata
from collections.abc import Mapping
from functools import cache
from typing import Any

import graphene
from graphql import GraphQLError, GraphQLResolveInfo
from sqlalchemy import func, select, update

from campushub.connectors import SOURCES, source_class
from campushub.graphql.context import Forbidden, RequestContext
from campushub.graphql.limits import bad_input, bounded_text, parse_key
from campushub.graphql.records import PageInfo, encode_cursor, page
from campushub.models.landing import QuarantinedRecord, SyncRun, SyncState
from campushub.models.protect import mask_id
from campushub.models.quality import CHECKED_TABLES, mask_phone
from campushub.models.service import CheckResult, RowCountMoved, accept_row_count
from campushub.models.sources import FRESHNESS, LABELS
from campushub.models.unified import Conflict

# A separator a person may write inside a number, up to three together ("440102 - 19900101"): a
# space or tab (plain, no-break or ideographic), a hyphen or dash (ASCII, typographic, soft or
# full-width). Never a comma, dot or colon, so amounts, decimals and times are not read as numbers.
SEPARATOR = r"[ \t\u00a0\u3000\u00ad\-\u2010-\u2015\uff0d]{0,3}"
DIGIT = r"[0-9\uff10-\uff19]"  # full-width digits too: a form typed with a Chinese input method
CHECK = r"[0-9Xx\uff10-\uff19\uff38\uff58]"  # an ID number's last character
# Runs of digits alone, whatever surrounds them (a letter, an underscore): an ID number — 18
# characters, or 15 digits before 1999 — and a mainland mobile number. Either may be written in
# the groups it is read aloud in: an ID number as region, birth date (the year may stand apart)
# and sequence (6-8-4, 6-4-4-4; 6-6-3 for the old one), a mobile as 3-4-4. A separator counts only
# between those groups, so a date, a bank card or a list of short numbers stays as it is.
ID_NUMBER_PATTERN = re.compile(
    rf"(?<!{DIGIT})(?:{DIGIT}{{6}}{SEPARATOR}{DIGIT}{{4}}{SEPARATOR}{DIGIT}{{4}}{SEPARATOR}{DIGIT}{{3}}{CHECK}"
    rf"|{DIGIT}{{6}}{SEPARATOR}{DIGIT}{{6}}{SEPARATOR}{DIGIT}{{3}})(?!{CHECK})"
)
# The country code is part of the match only where it runs straight into the number (8613800138000);
# written apart (+86 138…, (+86)138…) it is left as written and the number after it matched alone.
PHONE_PATTERN = re.compile(
    rf"(?<!{DIGIT})(?P<country>0{{0,2}}86)?"
    rf"(?P<number>[1１][3-9３-９]{DIGIT}{SEPARATOR}{DIGIT}{{4}}{SEPARATOR}{DIGIT}{{4}})(?!{DIGIT})"
)
_SEPARATORS = re.compile(SEPARATOR)


def _plain_digits(written: str) -> str:
    """A number as its plain ASCII characters: separators dropped, full-width digits narrowed."""
    return unicodedata.normalize("NFKC", _SEPARATORS.sub("", written))


def require_steward(context: RequestContext) -> None:
    if not context.role.steward:
        context.audit.denied(None, "steward", ("*",), "steward", f"{context.principal.role}: not a steward")
        raise Forbidden("steward views are for data stewards")


@cache
def _id_number_fields() -> frozenset[str]:
    """The fields the sources declare ID numbers in: a travel permit's or passport's number has
    no shape of its own to be recognised by."""
    return frozenset(
        field for name in SOURCES for spec in source_class(name).streams.values() for field in spec.id_numbers
    )


def masked_payload(value: Any) -> Any:
    """A payload with every ID-number- and phone-shaped value masked, however deep it sits: in
    text, in a number, in a key — and every value of a field declared to hold an ID number."""
    if isinstance(value, dict):
        return _masked_dict(value)
    if isinstance(value, list):
        return [masked_payload(item) for item in value]
    if isinstance(value, int | float) and not isinstance(value, bool):
        digits = str(int(value)) if isinstance(value, float) and value.is_integer() else str(value)
        masked = masked_payload(digits)
        return value if masked == digits else masked
    if isinstance(value, str):
        # A separated number is shown masked in its plain form: the separators carry nothing.
        value = ID_NUMBER_PATTERN.sub(lambda match: mask_id(_plain_digits(match.group())), value)
        return PHONE_PATTERN.sub(
            lambda match: (match["country"] or "") + mask_phone(_plain_digits(match["number"])), value
        )
    return value


def _masked_dict(value: Mapping[Any, Any]) -> dict[Any, Any]:
    """Two keys that differ only in their masked digits (13800138000, 13811118000) mask alike; the
    later one gets a numbered suffix so that neither value is dropped. The suffix follows the
    payload's own key order, so the same stored payload is always shown the same way."""
    masked: dict[Any, Any] = {}
    for key, item in value.items():
        shown = masked_payload(key)
        if shown in masked:
            shown = next(candidate for n in itertools.count(2) if (candidate := f"{shown} ({n})") not in masked)
        shown_item = masked_payload(item)
        if shown_item == item and key in _id_number_fields() and isinstance(item, str | int):
            shown_item = mask_id(str(item))  # a permit's or passport's number: masked by where it is
        masked[shown] = shown_item
    return masked


class StreamStatus(graphene.ObjectType):
    source = graphene.String(required=True)
    source_label = graphene.String(required=True)
    stream = graphene.String(required=True)
    cursor = graphene.String()
    last_success_at = graphene.DateTime()
    freshness_window_minutes = graphene.Int(required=True)
    fresh = graphene.Boolean(required=True)
    last_run_status = graphene.String()
    last_run_finished_at = graphene.DateTime()
    last_run_fetched = graphene.Int()
    last_run_landed = graphene.Int()
    last_run_quarantined = graphene.Int()
    last_run_error = graphene.String()
    open_quarantine = graphene.Int(required=True)


class Check(graphene.ObjectType):
    entity = graphene.String(required=True)
    name = graphene.String(required=True)
    passed = graphene.Boolean(required=True)
    counts = graphene.JSONString(required=True)
    failing_keys = graphene.JSONString(required=True)
    evaluated_at = graphene.DateTime(required=True)
    run_id = graphene.String()
    blocking = graphene.Boolean(
        required=True, description="false for a check that only warns when it fails: it holds nothing back"
    )

    @staticmethod
    def resolve_failing_keys(check: Check, info: GraphQLResolveInfo) -> list[dict[str, Any]]:
        """Failing keys name people (学号, 工号, card numbers, a masked phone): a read of them is
        audited, as the quarantine's payloads are."""
        if check.failing_keys:
            info.context.audit.read(None, "check", (f"{check.entity}.{check.name} failing keys",), "steward")
        return check.failing_keys


class QuarantineRecord(graphene.ObjectType):
    id = graphene.ID(required=True)
    source = graphene.String(required=True)
    stream = graphene.String(required=True)
    source_key = graphene.String(required=True)
    reason = graphene.String(required=True)
    payload = graphene.JSONString(required=True, description="as received; ID numbers masked")
    first_seen = graphene.DateTime(required=True)
    last_seen = graphene.DateTime(required=True)
    times_seen = graphene.Int(required=True)
    run_id = graphene.String(required=True)
    resolved_at = graphene.DateTime()
    resolved_by = graphene.String()
    resolution = graphene.String()

    @staticmethod
    def of(row: Mapping[str, Any]) -> QuarantineRecord:
        return QuarantineRecord(
            id=str(row["id"]),
            source=row["source"],
            stream=row["stream"],
            source_key=row["source_key"],
            reason=row["reason"],
            payload=masked_payload(row["payload"]),
            first_seen=row["first_seen"],
            last_seen=row["last_seen"],
            times_seen=row["times_seen"],
            run_id=row["run_id"],
            resolved_at=row["resolved_at"],
            resolved_by=row["resolved_by"],
            resolution=row["resolution"],
        )


class QuarantineConnection(graphene.ObjectType):
    nodes = graphene.List(graphene.NonNull(QuarantineRecord), required=True)
    page_info = graphene.Field(PageInfo, required=True)


class IdentityConflict(graphene.ObjectType):
    id = graphene.ID(required=True)
    kind = graphene.String(required=True)
    subject = graphene.String(required=True)
    person_id = graphene.Int()
    details = graphene.JSONString(required=True)
    status = graphene.String(required=True)
    opened_at = graphene.DateTime(required=True)
    resolved_at = graphene.DateTime()
    resolved_by = graphene.String()
    resolution = graphene.String()

    @staticmethod
    def of(row: Mapping[str, Any]) -> IdentityConflict:
        return IdentityConflict(
            id=str(row["id"]),
            kind=row["kind"],
            subject=row["subject"],
            person_id=row["person_id"],
            details=masked_payload(row["details"]),
            status=row["status"],
            opened_at=row["opened_at"],
            resolved_at=row["resolved_at"],
            resolved_by=row["resolved_by"],
            resolution=row["resolution"],
        )


class ConflictConnection(graphene.ObjectType):
    nodes = graphene.List(graphene.NonNull(IdentityConflict), required=True)
    page_info = graphene.Field(PageInfo, required=True)


class QuarantineFilter(graphene.InputObjectType):
    source = graphene.String()
    stream = graphene.String()
    reason_contains = graphene.String()
    resolved = graphene.Boolean(default_value=False)


class Steward(graphene.ObjectType):
    """What a data steward watches. Every field needs the steward role."""

    streams = graphene.List(graphene.NonNull(StreamStatus), required=True)
    checks = graphene.List(graphene.NonNull(Check), required=True, failing_only=graphene.Boolean(default_value=False))
    quarantine = graphene.Field(
        QuarantineConnection,
        required=True,
        filter=QuarantineFilter(),
        first=graphene.Int(default_value=20),
        after=graphene.String(),
    )
    conflicts = graphene.Field(
        ConflictConnection,
        required=True,
        status=graphene.String(default_value="open"),
        first=graphene.Int(default_value=20),
        after=graphene.String(),
    )

    @staticmethod
    def resolve_streams(_: Any, info: GraphQLResolveInfo) -> list[StreamStatus]:
        context: RequestContext = info.context
        connection = context.connection
        now = dt.datetime.now(dt.UTC)
        latest = select(func.max(SyncRun.id)).group_by(SyncRun.source, SyncRun.stream)
        runs = {
            (run.source, run.stream): run
            for run in connection.execute(select(SyncRun.__table__).where(SyncRun.id.in_(latest)))
        }
        open_counts = dict(
            connection.execute(
                select(QuarantinedRecord.source + "/" + QuarantinedRecord.stream, func.count())
                .where(QuarantinedRecord.resolved_at.is_(None))
                .group_by(QuarantinedRecord.source, QuarantinedRecord.stream)
            ).all()
        )
        statuses = []
        # The source systems' streams; the pipeline's own bookkeeping cursors are not a source.
        states = select(SyncState.__table__).where(SyncState.source.in_(list(FRESHNESS)))
        for state in connection.execute(states.order_by(SyncState.source, SyncState.stream)):
            window = FRESHNESS.get(state.source, dt.timedelta(hours=1))
            run = runs.get((state.source, state.stream))
            statuses.append(
                StreamStatus(
                    source=state.source,
                    source_label=LABELS.get(state.source, state.source),
                    stream=state.stream,
                    cursor=state.cursor,
                    last_success_at=state.last_success_at,
                    freshness_window_minutes=int(window.total_seconds() // 60),
                    fresh=state.last_success_at is not None and now - state.last_success_at <= window,
                    last_run_status=run.status if run else None,
                    last_run_finished_at=run.finished_at if run else None,
                    last_run_fetched=run.fetched if run else None,
                    last_run_landed=run.landed if run else None,
                    last_run_quarantined=run.quarantined if run else None,
                    last_run_error=run.error if run else None,
                    open_quarantine=open_counts.get(f"{state.source}/{state.stream}", 0),
                )
            )
        return statuses

    @staticmethod
    def resolve_checks(_: Any, info: GraphQLResolveInfo, failing_only: bool) -> list[Check]:
        query = select(CheckResult.__table__).order_by(CheckResult.entity, CheckResult.check_name)
        if failing_only:
            query = query.where(CheckResult.passed.is_(False))
        return [
            Check(
                entity=row.entity,
                name=row.check_name,
                passed=row.passed,
                counts=row.counts,
                failing_keys=row.samples,
                evaluated_at=row.evaluated_at,
                run_id=row.run_id,
                blocking=row.blocking,
            )
            for row in info.context.connection.execute(query)
        ]

    @staticmethod
    def resolve_quarantine(
        _: Any, info: GraphQLResolveInfo, first: int, filter: dict | None = None, after: str | None = None
    ) -> QuarantineConnection:
        context: RequestContext = info.context
        criteria = filter or {"resolved": False}
        query = select(QuarantinedRecord.__table__)
        if criteria.get("source"):
            query = query.where(QuarantinedRecord.source == criteria["source"])
        if criteria.get("stream"):
            query = query.where(QuarantinedRecord.stream == criteria["stream"])
        if criteria.get("reason_contains"):
            query = query.where(QuarantinedRecord.reason.contains(criteria["reason_contains"], autoescape=True))
        resolved = criteria.get("resolved")
        if resolved is not None:
            query = query.where(
                QuarantinedRecord.resolved_at.is_not(None) if resolved else QuarantinedRecord.resolved_at.is_(None)
            )
        rows, more = page(context.connection, query, QuarantinedRecord.id, "quarantine", first, after, parse=int)
        records = [QuarantineRecord.of(row) for row in rows]
        if records:
            context.audit.read(None, "quarantine", [f"{r.source}/{r.stream}/{r.id}" for r in records], "steward")
        end = encode_cursor("quarantine", str(rows[-1]["id"])) if rows else None
        return QuarantineConnection(nodes=records, page_info=PageInfo(has_next_page=more, end_cursor=end))

    @staticmethod
    def resolve_conflicts(
        _: Any, info: GraphQLResolveInfo, status: str, first: int, after: str | None = None
    ) -> ConflictConnection:
        context: RequestContext = info.context
        query = select(Conflict.__table__).where(Conflict.status == status)
        rows, more = page(context.connection, query, Conflict.id, "conflict", first, after, parse=int)
        conflicts = [IdentityConflict.of(row) for row in rows]
        for conflict in conflicts:
            context.audit.read(conflict.person_id, "conflict", ("details",), "steward")
        end = encode_cursor("conflict", str(rows[-1]["id"])) if rows else None
        return ConflictConnection(nodes=conflicts, page_info=PageInfo(has_next_page=more, end_cursor=end))


class ResolveQuarantine(graphene.Mutation):
    """Mark a quarantined record resolved, with what was done about it."""

    class Arguments:
        id = graphene.ID(required=True)
        resolution = graphene.String(required=True)

    Output = QuarantineRecord

    @staticmethod
    def mutate(_: Any, info: GraphQLResolveInfo, id: str, resolution: str) -> QuarantineRecord:
        context: RequestContext = info.context
        require_steward(context)
        note = _note(resolution, "resolution")
        result = context.connection.execute(
            update(QuarantinedRecord)
            .where(QuarantinedRecord.id == _record_id(id), QuarantinedRecord.resolved_at.is_(None))
            .values(resolved_at=dt.datetime.now(dt.UTC), resolved_by=context.principal.subject, resolution=note)
        )
        if result.rowcount != 1:
            raise GraphQLError("no open quarantined record with this id", extensions={"code": "NOT_FOUND"})
        record = (
            context.connection.execute(
                select(QuarantinedRecord.__table__).where(QuarantinedRecord.id == _record_id(id))
            )
            .mappings()
            .one()
        )
        context.audit.read(
            None, "quarantine", (f"resolve {record['source']}/{record['stream']}/{record['id']}",), "steward"
        )
        return QuarantineRecord.of(record)


class ResolveConflict(graphene.Mutation):
    """Close an identity conflict with the steward's decision."""

    class Arguments:
        id = graphene.ID(required=True)
        resolution = graphene.String(required=True)

    Output = IdentityConflict

    @staticmethod
    def mutate(_: Any, info: GraphQLResolveInfo, id: str, resolution: str) -> IdentityConflict:
        context: RequestContext = info.context
        require_steward(context)
        note = _note(resolution, "resolution")
        result = context.connection.execute(
            update(Conflict)
            .where(Conflict.id == _record_id(id), Conflict.status == "open")
            .values(
                status="resolved",
                resolved_at=dt.datetime.now(dt.UTC),
                resolved_by=context.principal.subject,
                resolution=note,
            )
        )
        if result.rowcount != 1:
            raise GraphQLError("no open conflict with this id", extensions={"code": "NOT_FOUND"})
        conflict = (
            context.connection.execute(select(Conflict.__table__).where(Conflict.id == _record_id(id))).mappings().one()
        )
        context.audit.read(conflict["person_id"], "conflict", ("resolve",), "steward")
        return IdentityConflict.of(conflict)


class RowCountAcceptance(graphene.ObjectType):
    entity = graphene.String(required=True)
    row_count = graphene.Int(required=True, description="the table's live rows when accepted")
    accepted_by = graphene.String(required=True)
    accepted_at = graphene.DateTime(required=True)
    reason = graphene.String(required=True)


class AcceptRowCount(graphene.Mutation):
    """Accept a unified table's live-row count as it stands: a drop that was real (a source
    retired records, a cohort graduated). Its row-count check compares with this count from its
    next evaluation on, instead of failing against the last passing one."""

    class Arguments:
        entity = graphene.String(required=True, description="the unified asset, as its checks name it: students")
        row_count = graphene.Int(
            required=True,
            description="the live rows the failing verdict showed: refused if the table holds another count",
        )
        reason = graphene.String(required=True)

    Output = RowCountAcceptance

    @staticmethod
    def mutate(_: Any, info: GraphQLResolveInfo, entity: str, row_count: int, reason: str) -> RowCountAcceptance:
        context: RequestContext = info.context
        require_steward(context)
        if entity not in CHECKED_TABLES:
            raise bad_input(f"entity: no row-count check by that name; one of {', '.join(sorted(CHECKED_TABLES))}")
        note = _note(reason, "reason")
        try:
            accepted = accept_row_count(context.connection, entity, context.principal.subject, note, row_count)
        except RowCountMoved as moved:
            raise bad_input(str(moved)) from None
        context.audit.read(None, "check", (f"accept {entity}.row_count {accepted['row_count']}",), "steward")
        return RowCountAcceptance(
            entity=accepted["entity"],
            row_count=accepted["row_count"],
            accepted_by=accepted["accepted_by"],
            accepted_at=accepted["accepted_at"],
            reason=accepted["reason"],
        )


def _record_id(value: str) -> int:
    try:
        return parse_key(value)
    except ValueError:
        raise GraphQLError("id must be a number", extensions={"code": "BAD_USER_INPUT"}) from None


def _note(value: str, what: str) -> str:
    note = bounded_text(value, what, 256, required=True)
    assert note is not None  # required
    return note
