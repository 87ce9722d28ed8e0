"""Raw landing: a stream's records, as received, into `raw_record`, with quarantine and cursor.

One stream run is one database transaction: the landed records, the quarantined ones and the
stream's new cursor commit together or not at all, so a failed run leaves everything as it was
and the cursor never moves ahead of the data it covers.
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import json
import operator
import queue
import threading
import time
from collections.abc import Callable, Generator, Iterable, Iterator, Sequence
from contextlib import closing
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

import orjson
from sqlalchemy import Connection, Date, Engine, Table, func, select, text, update
from sqlalchemy.dialects import postgresql, sqlite

from campushub.models.base import UTCDateTime, utcnow
from campushub.models.engine import refresh_grown_statistics
from campushub.models.landing import QuarantinedRecord, RawRecord, SyncRun, SyncState, landed_records


class RecordLike(Protocol):
    """What landing needs of a connector record (campushub.connectors.base.Record)."""

    @property
    def key(self) -> str | None: ...
    @property
    def data(self) -> dict[str, Any]: ...
    @property
    def problems(self) -> tuple[str, ...]: ...
    @property
    def digest(self) -> str | None: ...


class BatchLike(Protocol):
    @property
    def records(self) -> list[Any]: ...
    @property
    def cursor(self) -> str | None: ...
    @property
    def fetched_at(self) -> dt.datetime: ...
    @property
    def pull(self) -> int: ...


def encode(payload: dict[str, Any]) -> str:
    """A payload as raw landing stores it: JSON, keys in order."""
    return json.dumps(payload, sort_keys=True, ensure_ascii=False)


def serialise(payload: dict[str, Any]) -> tuple[str, str]:
    """A payload's JSON text and its content hash, from one serialisation: the text is what
    raw landing stores, so a record is encoded once on its way in."""
    body = encode(payload)
    return body, hashlib.md5(body.encode(), usedforsecurity=False).hexdigest()


def _encoded(record: RecordLike) -> tuple[str | None, str]:
    """(the stored text, or None until needed; the content hash): the source's own fingerprint
    when it gives one — then the record is encoded only if it lands — else the text's."""
    return (None, record.digest) if record.digest else serialise(record.data)


def content_hash(payload: dict[str, Any]) -> str:
    return serialise(payload)[1]


def upsert(connection: Connection, table: Table):  # type: ignore[no-untyped-def]
    """INSERT … ON CONFLICT for the connection's dialect (SQLite and PostgreSQL share the API)."""
    dialect = postgresql if connection.dialect.name == "postgresql" else sqlite
    return dialect.insert(table)


def bind_processors(connection: Connection, table: Table, columns: Sequence[str]) -> list[Callable[[Any], Any] | None]:
    """Each column's conversion to what the driver is given (UTC instants, SQLite's date text),
    for writers that hand the driver plain tuples."""
    dialect = connection.dialect
    processors = []
    for name in columns:
        kind = table.c[name].type
        fast = _SQLITE_TEXT.get(type(kind)) if dialect.name == "sqlite" else None
        processors.append(fast or kind.dialect_impl(dialect).bind_processor(dialect))
    return processors


def _sqlite_instant(value: dt.datetime | None) -> str | None:
    """`UTCDateTime` as SQLite stores it: the UTC wall clock, always with microseconds."""
    if value is None:
        return None
    if value.tzinfo is None:
        raise ValueError(f"naive datetime {value!r}: campushub stores instants with their time zone")
    return value.astimezone(dt.UTC).replace(tzinfo=None).isoformat(" ", "microseconds")


def _sqlite_date(value: dt.date | None) -> str | None:
    if value is None:
        return None
    if type(value) is dt.date:
        return value.isoformat()
    return f"{value.year:04d}-{value.month:02d}-{value.day:02d}"  # a datetime: its date, as SQLAlchemy does


# SQLAlchemy's SQLite processors format dates and instants field by field in Python; the C
# isoformat gives the same text (tests/test_models.py compares them) at a fraction of the cost —
# a tenth of a bulk write's time, card transactions carrying two of them a row.
_SQLITE_TEXT: dict[type, Callable[[Any], Any]] = {UTCDateTime: _sqlite_instant, Date: _sqlite_date}


def bulk_insert(
    connection: Connection,
    table: Table,
    columns: Sequence[str],
    rows: Sequence[Sequence[Any]],
    *,
    binary: bool = False,
) -> None:
    """Append `rows` (tuples in `columns` order, values already as the driver takes them) to
    `table` inside the connection's transaction, by the database's own bulk path: COPY on
    PostgreSQL (`binary`: in its binary format, for values each of its column's own Python
    type, JSON as text — see `_copy`), one prepared INSERT run over all rows elsewhere. No ORM,
    no per-row dicts."""
    if not rows:
        return
    quote = connection.dialect.identifier_preparer.quote
    names = ", ".join(quote(name) for name in columns)
    if connection.dialect.name == "postgresql":
        _copy(connection, quote(table.name), names, rows, binary=binary)
        return
    marks = ", ".join("?" for _ in columns)
    connection.exec_driver_sql(f"INSERT INTO {quote(table.name)} ({names}) VALUES ({marks})", list(rows))


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


def bulk_upsert(
    connection: Connection, table: Table, key: Sequence[str], rows: Sequence[dict[str, Any]], *, update: bool
) -> int:
    """INSERT … ON CONFLICT (key) DO UPDATE (or DO NOTHING) of `rows`, all with the same
    columns, through the bulk path. Returns the rows written: with DO NOTHING, those inserted.

    PostgreSQL: COPY into a session-scoped staging table, then one INSERT … SELECT.
    Elsewhere: one prepared statement run over plain tuples.
    """
    if not rows:
        return 0
    columns, values = _bound(connection, table, rows)
    quote = connection.dialect.identifier_preparer.quote
    names = ", ".join(quote(name) for name in columns)
    if update:
        assignments = ", ".join(f"{quote(n)} = excluded.{quote(n)}" for n in columns if n not in key)
        conflict = f"ON CONFLICT ({', '.join(quote(n) for n in key)}) DO UPDATE SET {assignments}"
    else:
        conflict = f"ON CONFLICT ({', '.join(quote(n) for n in key)}) DO NOTHING"
    if connection.dialect.name != "postgresql":
        marks = ", ".join("?" for _ in columns)
        sql = f"INSERT INTO {quote(table.name)} ({names}) VALUES ({marks}) {conflict}"
        return int(connection.exec_driver_sql(sql, values).rowcount)
    return _through_stage(
        connection,
        table,
        columns,
        values,
        lambda stage: f"INSERT INTO {quote(table.name)} ({names}) SELECT {names} FROM {stage} {conflict}",
    )


def bulk_update(connection: Connection, table: Table, key: tuple[str, ...], rows: Sequence[dict[str, Any]]) -> None:
    """UPDATE the rows of `table` named by `key` with the other values of `rows` (all with the
    same columns, each key once: given twice, which one wins differs between the databases),
    through the bulk path.

    PostgreSQL: COPY into a session-scoped staging table, then one UPDATE … FROM it — an
    executemany sends a statement per row, which the server plans and runs one by one (the person
    master's first load updates every identity, role record and person that way).
    Elsewhere: one prepared statement run over plain tuples."""
    if not rows:
        return
    columns, values = _bound(connection, table, rows)
    quote = connection.dialect.identifier_preparer.quote
    changed = [name for name in columns if name not in key]
    if not changed:
        raise ValueError(f"bulk_update of {table.name}: the rows hold nothing but their key {key}")
    if connection.dialect.name != "postgresql":
        order = [columns.index(name) for name in (*changed, *key)]
        assignments = ", ".join(f"{quote(n)} = ?" for n in changed)
        matches = " AND ".join(f"{quote(n)} = ?" for n in key)
        sql = f"UPDATE {quote(table.name)} SET {assignments} WHERE {matches}"
        connection.exec_driver_sql(sql, [tuple(value[i] for i in order) for value in values])
        return
    assignments = ", ".join(f"{quote(n)} = s.{quote(n)}" for n in changed)
    matches = " AND ".join(f"t.{quote(n)} = s.{quote(n)}" for n in key)
    _through_stage(
        connection,
        table,
        columns,
        values,
        lambda stage: f"UPDATE {quote(table.name)} AS t SET {assignments} FROM {stage} AS s WHERE {matches}",
    )


def bulk_append(connection: Connection, table: Table, rows: Sequence[dict[str, Any]]) -> None:
    """INSERT `rows`, all with the same columns, whose keys the caller knows absent in this
    transaction — found so, or sure of it (a first load's chunk, see `unify._appended`; the
    unified layer has one writer at a time: the Dagster pool `unified_layer`, limited to one in
    the deployment's dagster.yaml): no conflict to handle, so on PostgreSQL they are copied
    straight into the table — staging them and merging costs about half as much again. A key
    that is there after all fails the statement on the unique key, as it must.
    As text: a mapper may pass a source's odd value through (a number where text belongs), which
    binary input refuses and the server converts. (Binary saved a second of client time on
    365,000 grades, but the server was the bottleneck of the copy: no faster.)"""
    if rows:
        columns, values = _bound(connection, table, rows)
        bulk_insert(connection, table, columns, values, binary=False)


def _bound(connection: Connection, table: Table, rows: Sequence[dict[str, Any]]) -> tuple[list[str], list[Any]]:
    """The rows' columns, and each row as a tuple of values as the driver takes them."""
    columns = list(rows[0])
    converting = [(i, _memoised(p)) for i, p in enumerate(bind_processors(connection, table, columns)) if p]
    # A row's values read in C (itemgetter), then converted where the driver needs it.
    in_order = operator.itemgetter(*columns) if len(columns) > 1 else (lambda row: (row[columns[0]],))
    values: list[Sequence[Any]] = list(map(in_order, rows))
    if converting:

        def converted(value: Sequence[Any]) -> tuple[Any, ...]:
            bound = list(value)
            for index, processor in converting:
                bound[index] = processor(bound[index])
            return tuple(bound)  # SQLAlchemy takes a driver statement's parameters as tuples

        values = list(map(converted, values))
    return columns, values


def _memoised(convert: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """`convert`, remembering its answers for one write: a chunk's rows share most of their
    instants (the write stamp; a source's batch update times), and formatting one is the cost."""
    answers: dict[Any, Any] = {}

    def memoised(value: Any) -> Any:
        try:
            return answers[value]
        except KeyError:
            answers[value] = answer = convert(value)
            return answer
        except TypeError:  # unhashable
            return convert(value)

    return memoised


def _copy(
    connection: Connection, table: str, names: str, rows: Iterable[Sequence[Any]], *, binary: bool = False
) -> None:
    """COPY `rows` into the columns `names` of `table` (PostgreSQL).

    `binary`: in PostgreSQL's binary format, which psycopg formats in C, where a text row costs
    a Python call per row and value — at raw landing's eight columns, the largest single cost
    of a load after the source's own pages. Binary input does not coerce: every value must be
    of its column's Python type (str for text, int, datetime, date), which raw landing's own
    columns are by construction, and JSON columns are given JSON text, sent as it is. Unified
    rows, whose mappers may pass a source's odd value through, go as text."""
    driver = connection.connection.driver_connection
    with driver.cursor() as cursor:
        if not binary:
            with cursor.copy(f"COPY {table} ({names}) FROM STDIN") as copy:
                for row in rows:
                    copy.write_row(row)
            return
        from psycopg.types.json import set_json_dumps  # PostgreSQL's driver: imported where it is used

        types = _column_types(connection, cursor, table, names)
        set_json_dumps(_no_conversion, context=cursor)  # this cursor's own: the connection's binds keep theirs
        with cursor.copy(f"COPY {table} ({names}) FROM STDIN (FORMAT BINARY)") as copy:
            copy.set_types(types)
            for row in rows:
                copy.write_row(row)


def _column_types(connection: Connection, cursor: Any, table: str, names: str) -> list[int]:
    """The type oids of `names` in `table`, asked once per database session."""
    known: dict[tuple[str, str], list[int]] = connection.info.setdefault("campushub_copy_types", {})
    if (table, names) not in known:
        cursor.execute(f"SELECT {names} FROM {table} LIMIT 0")
        known[(table, names)] = [column.type_code for column in cursor.description]
    return known[(table, names)]


def _through_stage(
    connection: Connection,
    table: Table,
    columns: Sequence[str],
    values: Iterable[Sequence[Any]],
    statement: Callable[[str], str],
) -> int:
    """COPY `values` into `table`'s staging table for `columns`, run `statement(stage)` — the
    write from the stage into the table — and empty the stage: the rows the statement wrote."""
    quote = connection.dialect.identifier_preparer.quote
    stage = _staging_table(connection, table, columns)
    _copy(connection, stage, ", ".join(quote(name) for name in columns), values)
    with connection.connection.driver_connection.cursor() as cursor:
        cursor.execute(statement(stage))
        written = cursor.rowcount
        cursor.execute(f"TRUNCATE {stage}")
    return int(written)


def _staging_table(connection: Connection, table: Table, columns: Sequence[str]) -> str:
    """A temporary table shaped like `columns` of `table`, made once per database session (a
    column set of its own, since streams writing one table may not fill the same columns)."""
    signature = hashlib.md5(",".join(columns).encode(), usedforsecurity=False).hexdigest()[:8]
    name = f"stage_{table.name}_{signature}"
    quote = connection.dialect.identifier_preparer.quote
    connection.exec_driver_sql(
        f"CREATE TEMPORARY TABLE IF NOT EXISTS {name} ON COMMIT DELETE ROWS AS "
        f"SELECT {', '.join(quote(c) for c in columns)} FROM {quote(table.name)} WITH NO DATA"
    )
    return name


# Raw landing's columns as the bulk path writes them; `payload` goes as JSON text.
RAW_COLUMNS = ("source", "stream", "source_key", "run_id", "fetched_at", "content_hash", "payload", "event_day")
RAW_BINDS = ("fetched_at", "event_day")  # the columns whose values the driver needs converted


def _no_conversion(value: Any) -> Any:
    return value


# The newest landed version of each key, one index probe per key on (source, stream,
# source_key, id). A plain `source_key IN (…) ORDER BY id` lets either planner read the
# stream in id order through (source, stream, id) instead, filtering every row landed so far
# for each page: quadratic in a first load. The keys arrive as one array parameter.
_LATEST_HASH = """SELECT k.key, (SELECT r.content_hash FROM raw_record r
                                WHERE r.source = :source AND r.stream = :stream AND r.source_key = k.key
                                  AND r.event_day IS NULL
                                ORDER BY r.id DESC LIMIT 1)
                  FROM {keys}"""
# The keys go as one JSON array: encoded in C by orjson, where psycopg builds a text[] value in
# Python, element by element.
_KEY_LISTS = {
    "postgresql": "json_array_elements_text(CAST(:keys AS json)) AS k(key)",
    "sqlite": "(SELECT value AS key FROM json_each(:keys)) AS k",
}


def _latest_hashes(connection: Connection, source: str, stream: str, keys: list[str]) -> dict[str, str]:
    """The content hash of the newest landed version of each key."""
    if not keys:
        return {}
    statement = _LATEST_HASH.format(keys=_KEY_LISTS[connection.dialect.name])
    parameters = {"source": source, "stream": stream, "keys": orjson.dumps(keys).decode()}
    rows = connection.execute(text(statement), parameters)
    return {key: digest for key, digest in rows if digest is not None}


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
    binds = bind_processors(connection, RawRecord.__table__, RAW_BINDS)
    fetched_at, day_of = (bind or _no_conversion for bind in binds)
    day_of = functools.lru_cache(maxsize=1024)(day_of)  # a few hundred days for millions of events
    pull = 1
    for batch in batches:
        if batch.pull != pull and seen_keys is not None:
            # The stream's pull started again (its pages shifted): what is present is what the
            # pull that completes brings back — a record deleted meanwhile was seen before.
            seen_keys.clear()
            result.keyless = 0
        pull = batch.pull
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

        encoded = [_encoded(r) for r in good]
        # Events (append-only streams) are never re-sent with new content: skip the look-up.
        known = {} if append_only else _latest_hashes(connection, source, stream, [r.key for r in good if r.key])
        fetched = fetched_at(batch.fetched_at)
        rows = [
            (
                source,
                stream,
                record.key,
                result.run_id,
                fetched,
                digest,
                encode(record.data) if body is None else body,
                day_of(event_day(record.data)) if event_day else None,
            )
            for record, (body, digest) in zip(good, encoded, strict=True)
            if known.get(record.key or "") != digest
        ]
        bulk_insert(connection, RawRecord.__table__, RAW_COLUMNS, rows, binary=True)  # each value of its own type
        result.landed += len(rows)
        result.unchanged += len(good) - len(rows)
        if batch.cursor is not None:
            result.cursor_after = batch.cursor


T = TypeVar("T")
PREFETCH_PAGES = 2


def prefetched(pages: Iterator[T], depth: int = PREFETCH_PAGES) -> Generator[T, None, None]:
    """`pages`, read ahead on a thread by up to `depth` pages.

    The source system builds its next page while this process lands the last one, so the two
    overlap instead of taking turns (the database and socket calls release the GIL). Order,
    errors and the end are the reader's own: a reader's exception is raised here, at the page
    it would have been raised at. When the consumer stops early, the reader is closed on its
    thread after the page in flight, and nothing more is fetched.
    """
    handoff: queue.Queue[tuple[str, Any]] = queue.Queue(maxsize=depth)
    stopped = threading.Event()

    def put(kind: str, item: Any) -> bool:
        while not stopped.is_set():
            try:
                handoff.put((kind, item), timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def read_ahead() -> None:
        try:
            for page in pages:
                if not put("page", page):
                    break
            else:
                put("end", None)
        except BaseException as error:  # handed to the consumer, who raises it
            put("error", error)
        finally:
            close = getattr(pages, "close", None)
            if close is not None:
                close()

    reader = threading.Thread(target=read_ahead, name="campushub-prefetch", daemon=True)
    reader.start()
    try:
        while True:
            kind, item = handoff.get()
            if kind == "end":
                return
            if kind == "error":
                raise item
            yield item
    finally:
        stopped.set()
        reader.join()


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
    returns how many records that was. Keys that a sync beside the pull landed while it ran
    count as come back too: their records were at the source after the pull began, and may
    have been made after it had passed their place.
    """
    started = time.perf_counter()
    source = reader.name
    with engine.begin() as connection:
        state = connection.execute(
            select(SyncState.cursor).where(SyncState.source == source, SyncState.stream == stream)
        ).scalar_one_or_none()
        # Raw ids rise with each insert: a record landed at or below this one was fetched from
        # its source before the pull began, so the pull must have found it unless it is gone.
        landed_before = connection.execute(select(func.coalesce(func.max(RawRecord.id), 0))).scalar_one()
    mode = "reconcile" if reconcile else "incremental"
    result = LandingResult(source, stream, run_id, mode, None if reconcile else state)
    seen: set[str] | None = set() if reconcile else None
    started_at = utcnow()
    try:
        with engine.begin() as connection, closing(prefetched(reader.read(stream, result.cursor_before))) as batches:
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
                result.deleted = reconcile(
                    connection, seen | _landed_after(connection, source, stream, landed_before, run_id)
                )
            refresh_grown_statistics(connection)
            _save_cursor(connection, source, stream, result.cursor_after or state, run_id)
            result.seconds = time.perf_counter() - started
            _log_run(connection, result, started_at, "success", None)
    except Exception as exc:
        result.seconds = time.perf_counter() - started
        with engine.begin() as connection:
            _log_run(connection, result, started_at, "failed", f"{type(exc).__name__}: {exc}"[:2000])
        raise
    return result


def _landed_after(connection: Connection, source: str, stream: str, raw_id: int, run_id: str) -> set[str]:
    """The keys of `stream` that other runs landed after raw record `raw_id`. Not this run's: a
    key it landed in a pull it started again is present only if the pull that finished saw it."""
    landed = landed_records(source, stream, "source_key", after=raw_id).where(RawRecord.run_id != run_id)
    return {key for key in connection.execute(landed).scalars() if key is not None}


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
