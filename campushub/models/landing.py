"""Raw landing and the ledgers around it: what came in, what was refused, where each stream is.

- `raw_record`: append-only, one row per record version as received (a record is landed again
  only when its content hash changes, so re-syncing an unchanged source adds nothing);
- `quarantine`: every record refused, with its reason, until a steward resolves it;
- `sync_state`: each stream's cursor, written in the same transaction as the data it covers;
- `sync_run`: one row per stream run, with the counts a steward acts on.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import BigInteger, Date, Index, Select, String, Text, UniqueConstraint, select, text
from sqlalchemy.orm import Mapped, mapped_column

from campushub.models.base import Base, BigId, utcnow


def _partial(condition: str, postgresql: str | None = None) -> dict[str, Any]:
    return {"sqlite_where": text(condition), "postgresql_where": text(postgresql or condition)}


_RECORDS_ONLY = _partial("event_day IS NULL")
_EVENTS_ONLY = _partial("event_day IS NOT NULL")
# On PostgreSQL `id IS NOT NULL`, always true (id is the key), keeps this index to queries that
# compare id (reads from a watermark) and out of the per-key look-up. Without statistics — a
# stream's first load, one transaction no autovacuum sees — PostgreSQL estimates a row for the
# whole stream and may walk it backwards by id for every key instead of probing the key index:
# quadratic. (SQLite probes the key index anyway, and does not see `id > n` imply the condition.)
_RECORDS_BY_ID = _partial("event_day IS NULL", postgresql="event_day IS NULL AND id IS NOT NULL")


class RawRecord(Base):
    __tablename__ = "raw_record"
    # Events (rows with an event day: card transactions, by the million) are read by day and
    # never otherwise; records (every other row) by key and from a watermark, never by day. Each
    # index holds only the rows read through it — an event is written into one index, not three
    # — so a query must say which rows it means: `landed_records()` below, or a day.
    __table_args__ = (
        # A key's versions, newest found first: the look-up raw landing does per page.
        Index("ix_raw_record_key", "source", "stream", "source_key", "id", **_RECORDS_ONLY),
        # What the unified layer reads: a stream's records landed after its watermark, in order.
        Index("ix_raw_record_stream_id", "source", "stream", "id", **_RECORDS_BY_ID),
        # A day's events, for the daily partitions.
        Index("ix_raw_record_day", "source", "stream", "event_day", "id", **_EVENTS_ONLY),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    source: Mapped[str] = mapped_column(String(16))
    stream: Mapped[str] = mapped_column(String(32))
    source_key: Mapped[str | None] = mapped_column(String(64))
    run_id: Mapped[str] = mapped_column(String(64))
    fetched_at: Mapped[dt.datetime]
    content_hash: Mapped[str] = mapped_column(String(32))
    payload: Mapped[dict[str, Any]]
    # For event streams (card transactions): the day the event happened, so a daily partition
    # of the unified layer reads only its own day.
    event_day: Mapped[dt.date | None] = mapped_column(Date)


class QuarantinedRecord(Base):
    __tablename__ = "quarantine"
    __table_args__ = (UniqueConstraint("source", "stream", "source_key", "reason_hash"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    source: Mapped[str] = mapped_column(String(16))
    stream: Mapped[str] = mapped_column(String(32))
    # The record's key when it has one; else its content hash, so repeats still collapse.
    source_key: Mapped[str] = mapped_column(String(64))
    reason: Mapped[str] = mapped_column(Text)
    reason_hash: Mapped[str] = mapped_column(String(16))
    payload: Mapped[dict[str, Any]]
    first_seen: Mapped[dt.datetime] = mapped_column(default=utcnow)
    last_seen: Mapped[dt.datetime] = mapped_column(default=utcnow)
    run_id: Mapped[str] = mapped_column(String(64))
    times_seen: Mapped[int] = mapped_column(default=1)
    resolved_at: Mapped[dt.datetime | None]
    resolved_by: Mapped[str | None] = mapped_column(String(64))
    resolution: Mapped[str | None] = mapped_column(Text)


class SyncState(Base):
    __tablename__ = "sync_state"

    source: Mapped[str] = mapped_column(String(16), primary_key=True)
    stream: Mapped[str] = mapped_column(String(32), primary_key=True)
    cursor: Mapped[str | None] = mapped_column(String(128))
    last_success_at: Mapped[dt.datetime | None]
    last_run_id: Mapped[str | None] = mapped_column(String(64))


class SyncRun(Base):
    __tablename__ = "sync_run"
    __table_args__ = (Index("ix_sync_run_stream", "source", "stream", "finished_at"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    run_id: Mapped[str] = mapped_column(String(64))
    source: Mapped[str] = mapped_column(String(16))
    stream: Mapped[str] = mapped_column(String(32))
    mode: Mapped[str] = mapped_column(String(16))  # incremental / full / reconcile
    started_at: Mapped[dt.datetime]
    finished_at: Mapped[dt.datetime | None]
    status: Mapped[str] = mapped_column(String(16))  # success / failed
    fetched: Mapped[int] = mapped_column(BigInteger, default=0)
    landed: Mapped[int] = mapped_column(BigInteger, default=0)
    quarantined: Mapped[int] = mapped_column(BigInteger, default=0)
    cursor_before: Mapped[str | None] = mapped_column(String(128))
    cursor_after: Mapped[str | None] = mapped_column(String(128))
    error: Mapped[str | None] = mapped_column(Text)


def landed_records(source: str, stream: str, *columns: str, after: int = 0) -> Select[Any]:
    """A (non-event) stream's records landed after id `after`, oldest first, through the
    indexes that hold them: both are partial, and a query that does not say `event_day IS NULL`
    finds no index to use — it reads all of raw landing."""
    raw = RawRecord.__table__
    return (
        select(*(raw.c[name] for name in columns))
        .where(raw.c.source == source, raw.c.stream == stream, raw.c.event_day.is_(None), raw.c.id > after)
        .order_by(raw.c.id)
    )
