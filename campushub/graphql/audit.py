"""The audit trail of one request: every read of personal data, and every refused attempt.

Resolvers note what they release (`read`) or refuse (`denied`) as they go; the app writes the
notes as `audit_log` rows — one per subject, entity, purpose and outcome, listing the fields —
in one statement *before* the answer is sent. If that write fails, the answer is withheld:
no read without its audit row.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache
from types import TracebackType
from typing import Any, NamedTuple

from sqlalchemy import Connection, Dialect

from campushub.models.service import AuditEntry

ALLOWED, DENIED = "allowed", "denied"
# 10 bound values a row: well under SQLite's and PostgreSQL's limits on one statement's parameters.
ROWS_PER_STATEMENT = 1_000


@dataclass
class AuditTrail:
    request_id: str
    actor: str
    actor_role: str
    committed: bool = False  # written with a mutation's commit: nothing of it is to write again
    # (subject person id, entity, purpose, outcome, detail) -> fields, in the order first read
    _entries: dict[tuple[int | None, str, str, str, str | None], dict[str, None]] = field(
        default_factory=lambda: defaultdict(dict)
    )

    def read(self, subject: int | None, entity: str, fields: list[str] | tuple[str, ...], purpose: str) -> None:
        self._entries[subject, entity, purpose, ALLOWED, None].update(dict.fromkeys(fields))

    def denied(
        self, subject: int | None, entity: str, fields: list[str] | tuple[str, ...], purpose: str, why: str
    ) -> None:
        self._entries[subject, entity, purpose, DENIED, why[:256]].update(dict.fromkeys(fields))

    def refusals(self) -> AuditTrail:
        """A copy holding only the refusals noted so far (an operation abandoned on a thread may
        still be noting more in this one)."""
        copy = AuditTrail(self.request_id, self.actor, self.actor_role)
        for key, fields in list(self._entries.items()):
            if key[3] == DENIED:
                copy._entries[key] = dict(fields)
        return copy

    def keep_only_refusals(self) -> None:
        """Forgets the reads noted so far (their answer was withheld); the refusals stay."""
        for key in [key for key in self._entries if key[3] != DENIED]:
            del self._entries[key]

    def __len__(self) -> int:
        return len(self._entries)

    def rows(self, at: dt.datetime) -> list[dict]:
        return [
            {
                "at": at,
                "request_id": self.request_id,
                "actor": self.actor,
                "actor_role": self.actor_role,
                "purpose": purpose,
                "subject_person_id": subject,
                "entity": entity,
                "fields": list(fields),
                "outcome": outcome,
                "detail": detail,
            }
            for (subject, entity, purpose, outcome, detail), fields in self._entries.items()
        ]

    def write(self, connection: Connection) -> None:
        write_rows(connection, self.rows(dt.datetime.now(dt.UTC)))


def write_rows(connection: Connection, rows: list[dict]) -> None:
    """The rows as one multi-row INSERT (per chunk): a single statement is atomic even on an
    autocommit connection, and on SQLite it holds the write lock only while SQLite itself runs
    — not across Python code waiting for the GIL, as BEGIN … COMMIT in separate calls would,
    stalling the other API workers' audit writes.

    Rows beyond one statement's go in a transaction of their own where the connection is in
    autocommit: all or none of them, so that a batch that failed half-way and is written again
    request by request (`TurnWriter`) leaves no row twice."""
    chunks = [rows[start : start + ROWS_PER_STATEMENT] for start in range(0, len(rows), ROWS_PER_STATEMENT)]
    autocommit = connection.get_execution_options().get("isolation_level") == "AUTOCOMMIT"
    own_transaction = len(chunks) > 1 and autocommit
    if own_transaction:
        connection.exec_driver_sql("BEGIN")
    try:
        for chunk in chunks:
            insert = _insert_of(connection.dialect, len(chunk), tuple(chunk[0]))
            connection.exec_driver_sql(insert.sql, insert.parameters(chunk))
    except BaseException:
        if own_transaction:
            with contextlib.suppress(Exception):  # (a lost connection took the transaction with it)
                connection.exec_driver_sql("ROLLBACK")
        raise
    if own_transaction:
        connection.exec_driver_sql("COMMIT")


class _Insert(NamedTuple):
    sql: str  # in the driver's own placeholders
    # Each column, with its conversion on the way in as SQLAlchemy would apply it (`UTCDateTime`'s
    # normalising to UTC, JSON's encoding); None where the driver takes the value as it is.
    columns: tuple[tuple[str, Callable[[Any], Any] | None], ...]

    def parameters(self, rows: list[dict]) -> tuple[Any, ...]:
        return tuple(
            row[name] if process is None else process(row[name]) for row in rows for name, process in self.columns
        )


# The driver's positional placeholder, by the paramstyle SQLAlchemy's dialect declares for it.
PLACEHOLDERS = {"qmark": "?", "format": "%s", "pyformat": "%s"}


@lru_cache(maxsize=128)  # the batch sizes a worker meets, and a department page's
def _insert_of(dialect: Dialect, count: int, names: tuple[str, ...]) -> _Insert:
    """An INSERT of `count` rows of the columns `names`, written once per dialect and count and
    sent as the driver's own SQL with positional values. (Through SQLAlchemy's compiled form an
    audit write cost 292,000 instructions, and as the driver's SQL 183,000 — at 800 requests a
    second, a write per request. SQLAlchemy compiles a multi-row `insert().values()` afresh on
    every execution: that had been a tenth of the API's time.)"""
    placeholder = PLACEHOLDERS.get(dialect.paramstyle)
    if placeholder is None:
        raise ValueError(f"audit rows are written for qmark and format paramstyles, not {dialect.paramstyle}")
    row = "(" + ", ".join([placeholder] * len(names)) + ")"
    sql = f"INSERT INTO {AuditEntry.__tablename__} ({', '.join(names)}) VALUES {', '.join([row] * count)}"
    columns = AuditEntry.__table__.c
    return _Insert(
        sql, tuple((name, columns[name].type.dialect_impl(dialect).bind_processor(dialect)) for name in names)
    )


@dataclass(slots=True)
class _Waiting:
    rows: list[dict]
    deadline: float  # time.monotonic() by which the request must be answered
    failure: BaseException | None = None  # what writing its rows raised
    traceback: TracebackType | None = None  # (each request raises it with the write's own frames)

    def failed(self, error: BaseException | None) -> None:
        self.failure, self.traceback = error, error.__traceback__ if error is not None else None


@dataclass(slots=True)
class _Turn:
    """The rows of the queries a worker answered in one turn of its event loop."""

    waiting: list[_Waiting] = field(default_factory=list)
    written: bool = False  # (or failed: then each `_Waiting` holds its failure)


class TurnWriter:
    """Writes the audit rows of the queries a worker answers in one turn of its event loop with
    one INSERT, before any of their answers leaves.

    Operations run on the event loop, one after another; the requests that arrived together —
    ready in the same turn — each run theirs, queue their rows and step aside for one turn. The
    first of them back writes the rows of all, and each answer leaves as its request comes back:
    one statement and one commit, its wait for the write-ahead log's flush included, where each
    request had its own (no read without its audit row). The busier the worker, the more requests
    share a write.

    The write happens as the requests come back, not in a callback of its own: woken from a
    callback, they would come back a turn later, behind the operations of the requests that
    arrived meanwhile — at 800 requests a second, half as long again to wait for an answer.

    The write is given the earliest deadline of the requests it writes for. If a shared write
    fails, each request's rows are written on their own, so that a row the database refuses
    withholds only its own request's answer. A request cancelled while it stepped aside (its
    client gone) still has its rows written, as its read has happened."""

    def __init__(self, write: Callable[[list[dict], float], None]) -> None:
        self._write = write
        self._open: dict[asyncio.AbstractEventLoop, _Turn] = {}

    async def write(self, rows: list[dict], deadline: float) -> None:
        """Returns once `rows` are committed; raises what their write raised."""
        loop = asyncio.get_running_loop()
        turn = self._open.get(loop)
        if turn is None:
            turn = self._open[loop] = _Turn()
        waiting = _Waiting(rows, deadline)
        turn.waiting.append(waiting)
        try:
            await asyncio.sleep(0)  # the operations ready in this turn run now, and queue their rows
        finally:
            if not turn.written:  # the first back writes for all
                self._flush(loop, turn)
        if waiting.failure is not None:
            raise waiting.failure.with_traceback(waiting.traceback)

    def _flush(self, loop: asyncio.AbstractEventLoop, turn: _Turn) -> None:
        if self._open.get(loop) is turn:
            del self._open[loop]
        turn.written = True
        batch = turn.waiting
        # Failed until a write of its rows returns: a request whose write was interrupted half-way
        # (a BaseException, which goes on to whoever was writing) is not answered as if written.
        interrupted = RuntimeError("audit rows not written: their write was interrupted")
        for waiting in batch:
            waiting.failed(interrupted)
        try:
            self._write([row for waiting in batch for row in waiting.rows], min(w.deadline for w in batch))
        except Exception as error:
            if len(batch) == 1 or isinstance(error, TimeoutError):
                for waiting in batch:
                    waiting.failed(error)
                return
            for waiting in batch:  # which request's rows were refused: each answers for its own
                try:
                    self._write(waiting.rows, waiting.deadline)
                except Exception as own_error:
                    waiting.failed(own_error)
                else:
                    waiting.failed(None)
        else:
            for waiting in batch:
                waiting.failed(None)
