"""Raw landing: a stream's records, as received, into `raw_record`, with quarantine and cursor.

One stream run is one database transaction: the landed records, the quarantined ones and the
stream's new cursor commit together or not at all, so a failed run leaves everything as it was
and the cursor never moves ahead of the data it covers.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

from sqlalchemy import Connection, Engine, Table, select, update
from sqlalchemy.dialects import postgresql, sqlite

from campushub.models.base import utcnow
from campushub.models.landing import QuarantinedRecord, RawRecord, SyncRun, SyncState


class RecordLike(Protocol):
    """What landing needs of a connector record (campushub.connectors.base.Record)."""

    @property
    def key(self) -> str | None: ...
    @property
    def data(self) -> dict[str, Any]: ...
    @property
    def problems(self) -> tuple[str, ...]: ...


class BatchLike(Protocol):
    @property
    def records(self) -> list[Any]: ...
    @property
    def cursor(self) -> str | None: ...
    @property
    def fetched_at(self) -> dt.datetime: ...


def content_hash(payload: dict[str, Any]) -> str:
    return hashlib.md5(
        json.dumps(payload, sort_keys=True, ensure_ascii=False).encode(), usedforsecurity=False
    ).hexdigest()


def upsert(connection: Connection, table: Table):  # type: ignore[no-untyped-def]
    """INSERT … ON CONFLICT for the connection's dialect (SQLite and PostgreSQL share the API)."""
    dialect = postgresql if connection.dialect.name == "postgresql" else sqlite
    return dialect.insert(table)


@dataclass
class LandingResult:
    source: str
    stream: str
    run_id: str
    mode: str
    cursor_before: str | None
    cursor_after: str | None = None
    fetched: int = 0
    landed: int = 0
    unchanged: int = 0
    quarantined: int = 0
    deleted: int = 0  # reconcile runs: records the source no longer has
    keyless: int = 0  # reconcile runs: broken records without a key (whose presence is unknown)
    pages: int = 0
    seconds: float = 0.0
    quarantine_reasons: dict[str, int] = field(default_factory=dict)

    def metadata(self) -> dict[str, Any]:
        """What a steward sees on the materialization."""
        return {
            "fetched": self.fetched,
            "landed": self.landed,
            "unchanged": self.unchanged,
            "quarantined": self.quarantined,
            "deleted_at_source": self.deleted,
            "deletions_undecidable_keyless_records": self.keyless,
            "pages": self.pages,
            "cursor_before": self.cursor_before or "",
            "cursor_after": self.cursor_after or "",
            "mode": self.mode,
            "duration_s": round(self.seconds, 3),
        }


def _latest_hashes(connection: Connection, source: str, stream: str, keys: list[str]) -> dict[str, str]:
    """The content hash of the newest landed version of each key."""
    if not keys:
        return {}
    rows = connection.execute(
        select(RawRecord.source_key, RawRecord.content_hash)
        .where(RawRecord.source == source, RawRecord.stream == stream, RawRecord.source_key.in_(keys))
        .order_by(RawRecord.id)
    )
    return {key: digest for key, digest in rows}


def _quarantine(connection: Connection, source: str, stream: str, run_id: str, records: list[Any]) -> None:
    if not records:
        return
    now = utcnow()
    rows = []
    for record in records:
        reason = "; ".join(record.problems)
        rows.append(
            {
                "source": source,
                "stream": stream,
                "source_key": record.key or f"#{content_hash(record.data)}",
                "reason": reason,
                "reason_hash": hashlib.md5(reason.encode(), usedforsecurity=False).hexdigest()[:16],
                "payload": record.data,
                "first_seen": now,
                "last_seen": now,
                "run_id": run_id,
                "times_seen": 1,
            }
        )
    table = QuarantinedRecord.__table__
    statement = upsert(connection, table)
    # A record that keeps arriving broken is one quarantine row, seen again, not a new one.
    statement = statement.on_conflict_do_update(
        index_elements=["source", "stream", "source_key", "reason_hash"],
        set_={
            "last_seen": statement.excluded.last_seen,
            "run_id": statement.excluded.run_id,
            "payload": statement.excluded.payload,
            "times_seen": table.c.times_seen + 1,
        },
    )
    # The same broken record twice in one page would make one statement update a row twice.
    unique = {(row["source_key"], row["reason_hash"]): row for row in rows}
    connection.execute(statement, list(unique.values()))


def land_batches(
    connection: Connection,
    source: str,
    stream: str,
    batches: Iterable[BatchLike],
    result: LandingResult,
    *,
    append_only: bool = False,
    event_day: Callable[[dict[str, Any]], dt.date] | None = None,
    seen_keys: set[str] | None = None,
) -> None:
    """Land every batch on `connection` (inside the caller's transaction); collect the keys of
    good records in `seen_keys` when given."""
    for batch in batches:
        result.pages += 1
        result.fetched += len(batch.records)
        good = [r for r in batch.records if not r.problems]
        bad = [r for r in batch.records if r.problems]
        for record in bad:
            for problem in record.problems:
                reason = problem.split(":")[0]
                result.quarantine_reasons[reason] = result.quarantine_reasons.get(reason, 0) + 1
        _quarantine(connection, source, stream, result.run_id, bad)
        result.quarantined += len(bad)
        if seen_keys is not None:
            # A record the source still has is present even when it arrives broken.
            seen_keys.update(record.key for record in batch.records if record.key)
            result.keyless += sum(1 for record in bad if not record.key)

        hashes = [content_hash(r.data) for r in good]
        # Events (append-only streams) are never re-sent with new content: skip the look-up.
        known = {} if append_only else _latest_hashes(connection, source, stream, [r.key for r in good if r.key])
        rows = [
            {
                "source": source,
                "stream": stream,
                "source_key": record.key,
                "run_id": result.run_id,
                "fetched_at": batch.fetched_at,
                "content_hash": digest,
                "payload": record.data,
                "event_day": event_day(record.data) if event_day else None,
            }
            for record, digest in zip(good, hashes, strict=True)
            if known.get(record.key or "") != digest
        ]
        if rows:
            connection.execute(RawRecord.__table__.insert(), rows)
        result.landed += len(rows)
        result.unchanged += len(good) - len(rows)
        if batch.cursor is not None:
            result.cursor_after = batch.cursor


class StreamReader(Protocol):
    name: str

    def read(self, stream: str, cursor: str | None = None) -> Iterator[BatchLike]: ...


def land_stream(
    engine: Engine,
    reader: StreamReader,
    stream: str,
    run_id: str,
    *,
    append_only: bool = False,
    event_day: Callable[[dict[str, Any]], dt.date] | None = None,
    reconcile: Callable[[Connection, set[str]], int] | None = None,
) -> LandingResult:
    """Pull `stream` from its cursor and land it, in one transaction with the new cursor.

    With `reconcile`, pull everything instead, and hand the keys that came back to
    `reconcile(connection, keys)` — in the same transaction — which marks what is gone and
    returns how many records that was.
    """
    started = time.perf_counter()
    source = reader.name
    with engine.begin() as connection:
        state = connection.execute(
            select(SyncState.cursor).where(SyncState.source == source, SyncState.stream == stream)
        ).scalar_one_or_none()
    mode = "reconcile" if reconcile else "incremental"
    result = LandingResult(source, stream, run_id, mode, None if reconcile else state)
    seen: set[str] | None = set() if reconcile else None
    started_at = utcnow()
    try:
        with engine.begin() as connection:
            batches = reader.read(stream, result.cursor_before)
            land_batches(
                connection,
                source,
                stream,
                batches,
                result,
                append_only=append_only,
                event_day=event_day,
                seen_keys=seen,
            )
            # A keyless broken record could be any record: then nothing can be called deleted.
            if reconcile is not None and seen is not None and not result.keyless:
                result.deleted = reconcile(connection, seen)
            _save_cursor(connection, source, stream, result.cursor_after or state, run_id)
            result.seconds = time.perf_counter() - started
            _log_run(connection, result, started_at, "success", None)
    except Exception as exc:
        result.seconds = time.perf_counter() - started
        with engine.begin() as connection:
            _log_run(connection, result, started_at, "failed", f"{type(exc).__name__}: {exc}"[:2000])
        raise
    return result


def _save_cursor(connection: Connection, source: str, stream: str, cursor: str | None, run_id: str) -> None:
    values = {"cursor": cursor, "last_success_at": utcnow(), "last_run_id": run_id}
    statement = upsert(connection, SyncState.__table__).values(source=source, stream=stream, **values)
    connection.execute(statement.on_conflict_do_update(index_elements=["source", "stream"], set_=values))


def _log_run(
    connection: Connection, result: LandingResult, started_at: dt.datetime, status: str, error: str | None
) -> None:
    connection.execute(
        SyncRun.__table__.insert().values(
            run_id=result.run_id,
            source=result.source,
            stream=result.stream,
            mode=result.mode,
            started_at=started_at,
            finished_at=utcnow(),
            status=status,
            fetched=result.fetched,
            landed=result.landed,
            quarantined=result.quarantined,
            cursor_before=result.cursor_before,
            cursor_after=result.cursor_after,
            error=error,
        )
    )


def mark_quarantine_resolved(connection: Connection, quarantine_id: int, steward: str, resolution: str) -> bool:
    changed = connection.execute(
        update(QuarantinedRecord)
        .where(QuarantinedRecord.id == quarantine_id, QuarantinedRecord.resolved_at.is_(None))
        .values(resolved_at=utcnow(), resolved_by=steward, resolution=resolution)
    )
    return changed.rowcount == 1
