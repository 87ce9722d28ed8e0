"""What the hub records about its own service, beside the data it serves.

- `audit_log`: one row per read of personal data (and per refused attempt), written before the
  answer leaves the API. The API only ever inserts: the migration adds triggers that refuse
  UPDATE and DELETE on both SQLite and PostgreSQL, so an audit trail cannot be edited through
  the application's own connection.
- `check_result`: the latest verdict of every data-quality check, so the API can show stewards
  what failed (and flag served values) without reading Dagster's own storage — and the row-count
  check its baseline (`row_count_baseline`);
- `row_count_acceptance`: a steward's decision that a unified table's new, smaller size is
  right, which its row-count check then compares with;
- `work_order` (业务工单): a submitted form — a snapshot of the values the person confirmed,
  each with its provenance, signed so a printed copy can be verified against it;
- `correction_request`: a value the person marked wrong, routed to the department that owns
  the source system, with its outcome;
- `notification`: what a person is told on their next visit (work order ready, correction
  decided).
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import Connection, Index, RowMapping, String, delete, insert, select, true
from sqlalchemy.orm import Mapped, mapped_column

from campushub.models.base import Base, BigId, Payload, utcnow
from campushub.models.quality import CHECKED_TABLES, ROW_COUNT, Baseline, Outcome, live_rows


class AuditEntry(Base):
    __tablename__ = "audit_log"
    __table_args__ = (
        Index("ix_audit_log_subject", "subject_person_id", "at"),
        Index("ix_audit_log_actor", "actor", "at"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    request_id: Mapped[str] = mapped_column(String(36))
    actor: Mapped[str] = mapped_column(String(64))  # the token's subject (学号/工号)
    actor_role: Mapped[str] = mapped_column(String(32))
    purpose: Mapped[str] = mapped_column(String(64))  # "form:<id>", "department:<query>", "steward", "self"
    subject_person_id: Mapped[int | None]
    entity: Mapped[str] = mapped_column(String(32))
    fields: Mapped[list[str]] = mapped_column(Payload)
    outcome: Mapped[str] = mapped_column(String(8))  # allowed / denied
    detail: Mapped[str | None] = mapped_column(String(256))


class CheckResult(Base):
    __tablename__ = "check_result"

    entity: Mapped[str] = mapped_column(String(32), primary_key=True)
    check_name: Mapped[str] = mapped_column(String(32), primary_key=True)
    passed: Mapped[bool]
    counts: Mapped[dict[str, Any]]
    samples: Mapped[list[dict[str, Any]]] = mapped_column(Payload)
    evaluated_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    run_id: Mapped[str | None] = mapped_column(String(64))
    # False for a check that only warns when it fails (it holds nothing back): shown as a warning.
    blocking: Mapped[bool] = mapped_column(default=True, server_default=true())


class RowCountAcceptance(Base):
    """A data steward accepting a unified table's live-row count as it stands — a drop that was
    real — with why. Kept, never replaced: each is a decision on record."""

    __tablename__ = "row_count_acceptance"
    __table_args__ = (Index("ix_row_count_acceptance_entity", "entity", "accepted_at"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    entity: Mapped[str] = mapped_column(String(32))  # the unified asset, as its checks name it
    row_count: Mapped[int]  # its table's live rows when accepted
    accepted_by: Mapped[str] = mapped_column(String(64))
    accepted_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    reason: Mapped[str] = mapped_column(String(256))


class WorkOrder(Base):
    __tablename__ = "work_order"
    __table_args__ = (Index("ix_work_order_subject", "subject_person_id", "created_at"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    public_id: Mapped[str] = mapped_column(String(32), unique=True)  # random: ids are not guessable
    form_id: Mapped[str] = mapped_column(String(64))
    subject_person_id: Mapped[int]
    requester: Mapped[str] = mapped_column(String(64))  # 学号/工号 of the signed-in person
    requester_role: Mapped[str] = mapped_column(String(32))
    status: Mapped[str] = mapped_column(String(16))  # submitted / processing / ready
    snapshot: Mapped[dict[str, Any]]
    verification_code: Mapped[str] = mapped_column(String(19), unique=True)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    updated_by: Mapped[str | None] = mapped_column(String(64))


class CorrectionRequest(Base):
    __tablename__ = "correction_request"
    __table_args__ = (
        Index("ix_correction_request_status", "owner", "status"),
        # A department's list: one status, its own source, in id order (keyset pages). Status
        # leads so that the steward's list, which filters on status alone, can use it too.
        Index("ix_correction_request_status_source", "status", "source", "id"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    work_order_id: Mapped[int]
    subject_person_id: Mapped[int] = mapped_column(index=True)
    requester: Mapped[str] = mapped_column(String(64))
    form_id: Mapped[str] = mapped_column(String(64))
    field: Mapped[str] = mapped_column(String(64))
    label: Mapped[str] = mapped_column(String(64))
    source: Mapped[str] = mapped_column(String(16))
    source_key: Mapped[str | None] = mapped_column(String(64))
    owner: Mapped[str] = mapped_column(String(64))  # the department that owns the source system
    current_value: Mapped[str | None] = mapped_column(String(256))
    claimed_value: Mapped[str | None] = mapped_column(String(256))
    note: Mapped[str] = mapped_column(String(512))
    status: Mapped[str] = mapped_column(String(16), default="open")  # open / accepted / rejected
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    decided_at: Mapped[dt.datetime | None]
    decided_by: Mapped[str | None] = mapped_column(String(64))
    response_note: Mapped[str | None] = mapped_column(String(512))


class Notification(Base):
    __tablename__ = "notification"
    __table_args__ = (Index("ix_notification_person", "person_id", "read_at"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    person_id: Mapped[int]
    message: Mapped[str] = mapped_column(String(256))
    link: Mapped[str | None] = mapped_column(String(128))
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    read_at: Mapped[dt.datetime | None]


def record_check_result(
    connection: Connection, entity: str, check_name: str, outcome: Outcome, run_id: str | None, blocking: bool = True
) -> None:
    """Keep the latest verdict of one check (replacing the previous one) for the API to show."""
    connection.execute(delete(CheckResult).where(CheckResult.entity == entity, CheckResult.check_name == check_name))
    connection.execute(
        insert(CheckResult).values(
            entity=entity,
            check_name=check_name,
            passed=outcome.passed,
            counts={**outcome.counts, **outcome.details},
            samples=outcome.samples,
            evaluated_at=utcnow(),
            run_id=run_id,
            blocking=blocking,
        )
    )


def row_count_baseline(connection: Connection, entity: str) -> Baseline | None:
    """What `entity`'s row-count check compares with: the count of its last passing evaluation,
    or the count a steward accepted since; None before either (a first evaluation).

    Read from the hub's own records rather than Dagster's event log: the log is searched only
    so far back (a long failing streak pushes the last pass out of reach), the main job may run
    on an in-memory instance, and Dagster's storage can be reset apart from the tables the counts
    describe — while the acceptances this is weighed against live here. (A pass is dated by when
    it counted, an acceptance by when it was made: the hub's hosts are assumed to keep one time.)
    `check_result` keeps the latest verdict alone, so a failing verdict carries the baseline it
    was held to: however many failures ago the last pass was, the latest verdict still names it.
    """
    verdict = connection.execute(
        select(CheckResult.passed, CheckResult.counts, CheckResult.evaluated_at).where(
            CheckResult.entity == entity, CheckResult.check_name == ROW_COUNT
        )
    ).first()
    baseline = Baseline.after(verdict.passed, verdict.counts, verdict.evaluated_at) if verdict is not None else None
    accepted = connection.execute(
        select(RowCountAcceptance.row_count, RowCountAcceptance.accepted_at, RowCountAcceptance.accepted_by)
        .where(RowCountAcceptance.entity == entity)
        .order_by(RowCountAcceptance.accepted_at.desc(), RowCountAcceptance.id.desc())
        .limit(1)
    ).first()
    if accepted is not None and (baseline is None or accepted.accepted_at > baseline.at):
        return Baseline(accepted.row_count, accepted.accepted_at, accepted.accepted_by)
    return baseline


class RowCountMoved(ValueError):
    """The table holds another number of live rows than the steward was shown and accepted."""

    def __init__(self, entity: str, live: int, seen: int) -> None:
        super().__init__(f"{entity} holds {live} live rows now, not the {seen} accepted: look again before accepting")
        self.live = live


def accept_row_count(connection: Connection, entity: str, steward: str, reason: str, seen: int) -> RowMapping:
    """Accept the live-row count of `entity`'s table, which the steward `seen` on the failing
    verdict: its row-count check compares with it from its next evaluation on, until one passes.
    RowCountMoved if the table holds another count by now — a drop still going on is not what
    they accepted. `entity` must be one of `CHECKED_TABLES`."""
    row_count = live_rows(connection, CHECKED_TABLES[entity])
    if row_count != seen:
        raise RowCountMoved(entity, row_count, seen)
    return (
        connection.execute(
            insert(RowCountAcceptance)
            .values(entity=entity, row_count=row_count, accepted_by=steward, accepted_at=utcnow(), reason=reason)
            .returning(*RowCountAcceptance.__table__.c)
        )
        .mappings()
        .one()
    )
