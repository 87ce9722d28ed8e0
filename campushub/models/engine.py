"""The one engine of the unified layer, configured by `CAMPUSHUB_DATABASE_URL`.

Default: an SQLite file in the project's `data/` folder, in WAL mode so readers (the API) never
block the pipeline's writer. Production: PostgreSQL through psycopg 3, e.g.
`postgresql+psycopg://campushub@db.internal/campushub`.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from collections.abc import Callable, Iterator, Mapping
from functools import lru_cache
from pathlib import Path
from typing import Any, TypeVar

import orjson
from sqlalchemy import Connection, CursorResult, Dialect, Engine, Executable, create_engine, event
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.sql.compiler import WARN_LINTING, Compiled
from sqlalchemy.sql.dml import UpdateBase

DATA_DIR = Path(os.environ.get("CAMPUSHUB_DATA_DIR", "data"))


def database_url() -> str:
    url = os.environ.get("CAMPUSHUB_DATABASE_URL")
    if url:
        return url
    DATA_DIR.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{DATA_DIR / 'campushub.db'}"


BUSY_TIMEOUT_MS = 30_000  # how long an SQLite writer waits for another's transaction


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")  # durable at checkpoints; WAL keeps it consistent
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
    cursor.close()


# orjson reads an integer beyond 64 bits as a float, silently: text with that many digits in a
# row (inside a string too, harmlessly) goes to the standard reader.
_LONG_DIGITS = re.compile(r"[0-9]{19}")
_LONG_DIGIT_BYTES = re.compile(rb"[0-9]{19}")
# Values that orjson reads exactly as the standard reader does.
_EXACT = frozenset({str, int, bool, type(None)})


def decode_json(text: str | bytes) -> Any:
    """JSON columns as read (raw payloads, by the million): orjson, at a fraction of the standard
    library's cost. What it refuses or would read differently and Python's json module writes —
    NaN, integers beyond 64 bits — the standard reader takes."""
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError:
        return json.loads(text)
    # A misread integer comes out as a float: a flat object without one is exact as read, which
    # is every payload but a few. (Searching each text for long digit runs cost three parses.)
    if type(value) is dict and _EXACT.issuperset(map(type, value.values())):
        return value
    long_digits = _LONG_DIGIT_BYTES if isinstance(text, bytes | bytearray | memoryview) else _LONG_DIGITS
    return json.loads(text) if long_digits.search(text) else value  # type: ignore[arg-type]


def make_engine(url: str | None = None, **options: Any) -> Engine:
    url = url or database_url()
    options.setdefault("json_deserializer", decode_json)
    if url.startswith("sqlite"):
        engine = create_engine(url, **options)
        if engine.url.database and engine.url.database != ":memory:":
            Path(engine.url.database).parent.mkdir(parents=True, exist_ok=True)
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    options.setdefault("pool_pre_ping", True)
    return create_engine(url, **options)


def execute_built(
    connection: Connection, statement: Executable, parameters: Mapping[str, Any] | None = None
) -> CursorResult[Any]:
    """`connection.execute(statement, parameters)` for a SELECT or text() statement built once
    and kept (a module constant, or cached by its builder), compiled once per dialect.

    SQLAlchemy looks each statement's compiled form up by a cache key it derives anew on every
    execution: for a large statement a deep tuple, hashed and compared in full each time — a
    twentieth of a prefill's CPU on PostgreSQL. A kept statement is its own key. (An INSERT or
    UPDATE construct is compiled for the columns its parameters name: it goes the usual way.)"""
    if isinstance(statement, UpdateBase):
        raise TypeError(f"execute_built takes a SELECT or text(), not {type(statement).__name__}")
    return connection.execute(_compiled(statement, connection.dialect), parameters)  # type: ignore[call-overload]


# The kept statements — a few dozen, and an audit INSERT per batch size — for each dialect.
@lru_cache(maxsize=512)
def _compiled(statement: Executable, dialect: Dialect) -> Compiled:
    # Linted as SQLAlchemy lints what it compiles itself: a FROM left out of a join warns.
    linting = dialect.compiler_linting | WARN_LINTING  # type: ignore[attr-defined]
    return statement.compile(dialect=dialect, linting=linting)  # type: ignore[attr-defined]


@contextlib.contextmanager
def reading_only(connection: Connection) -> Iterator[Connection]:
    """`connection`, for a unit of work that only reads, with no transaction of its own: each
    statement reads its own snapshot.

    - PostgreSQL: in autocommit, which spares the BEGIN and COMMIT round trips;
    - SQLite: left as it is. Its driver begins no transaction for a read, and setting an
      isolation level would cost more than it saves: at check-in SQLAlchemy sets the default
      back with a `PRAGMA read_uncommitted`, which expires every statement SQLite has compiled
      on the connection. The next use compiles them anew — for a prefill's statement four
      times what running it costs (measured at the university profile: 225 against 50 µs).

    A write inside the block would commit at once on PostgreSQL but be rolled back at check-in
    on SQLite, silently: on SQLite the block refuses one that it finds still open at its end."""
    autocommit = connection.get_execution_options().get("isolation_level") == "AUTOCOMMIT"
    if connection.dialect.name == "postgresql" and not autocommit:  # (a connection kept for reads already is)
        connection.execution_options(isolation_level="AUTOCOMMIT")
    yield connection
    if connection.dialect.name == "sqlite" and connection.connection.driver_connection.in_transaction:
        raise RuntimeError("a unit of work meant only to read wrote to the database (it is rolled back)")


T = TypeVar("T")


def once_more_if_disconnected(work: Callable[[], T]) -> T:
    """`work()`, run again if it met a pooled connection the database had closed (a restart):
    for engines whose pool is not pinged before each use (the API's), and only for work that
    commits nothing before its end — which the lost connection took with it. SQLAlchemy has
    then replaced that connection and every one as old."""
    try:
        return work()
    except DBAPIError as error:
        if not connection_lost(error):
            raise
        return work()


def connection_lost(error: BaseException | None) -> bool:
    """The database had closed the connection `error` came from (SQLAlchemy has dropped it)."""
    return isinstance(error, DBAPIError) and error.connection_invalidated


def session_factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


def refresh_statistics(engine: Engine) -> None:
    """After a bulk load. PostgreSQL plans from table statistics that autovacuum refreshes only
    some time later: until then the API's queries after a first load are planned for empty
    tables (at the university profile a prefill's conflict look-up scanned every card, 5 ms
    instead of 0.2). SQLite's plans need no statistics here: nothing to do."""
    if engine.dialect.name != "postgresql":
        return
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
        connection.exec_driver_sql("ANALYZE")


# PostgreSQL's own rule for when autovacuum re-analyzes a table: 50 rows plus a tenth of it changed.
ANALYZE_THRESHOLD_ROWS = 50
ANALYZE_SCALE_FACTOR = 0.1


def refresh_grown_statistics(connection: Connection, written: Mapping[str, int] | None = None) -> list[str]:
    """ANALYZE, inside the caller's transaction, the tables it changed by more than autovacuum's
    own threshold — `written` (rows by table), or by default what PostgreSQL counts for the
    transaction (its pending counts, which may still hold a previous transaction's of the last
    second: at worst a table is analyzed once more than needed). Returns the tables analyzed.

    The next step of a pipeline — a check, the next entity, the API — plans its statements
    right after a bulk load, while autovacuum may not have come round yet (nor ever, where it
    is off), for tables it believes empty: plans fit for a handful of rows, such as scanning a
    whole table per look-up (see `refresh_statistics`). ANALYZE samples the transaction's own
    rows, and stays cheap (a fixed sample, whatever the table's size). The statements of a
    first load itself are written not to depend on statistics (see `unify.stored_hashes`,
    card_days.py). SQLite's plans need no statistics here: nothing to do."""
    if connection.dialect.name != "postgresql":
        return []
    counted = (
        "SELECT relname, n_tup_ins + n_tup_upd + n_tup_del FROM pg_stat_xact_user_tables "
        "WHERE schemaname = current_schema()"
    )
    changed = dict(written if written is not None else connection.exec_driver_sql(counted).all())
    schema = str(connection.exec_driver_sql("SELECT current_schema()").scalar_one())
    sizes = dict(
        connection.exec_driver_sql(
            "SELECT relname, greatest(reltuples, 0) FROM pg_class "
            "WHERE relnamespace = (SELECT oid FROM pg_namespace WHERE nspname = %(schema)s) "
            "AND relname = ANY(%(names)s)",
            {"schema": schema, "names": list(changed)},
        ).all()
    )
    grown = sorted(
        name
        for name, rows in changed.items()
        if name in sizes and rows > ANALYZE_THRESHOLD_ROWS + ANALYZE_SCALE_FACTOR * sizes[name]
    )
    quote = connection.dialect.identifier_preparer.quote
    for name in grown:
        # SKIP_LOCKED: a table another transaction is vacuuming or analyzing is left to it,
        # rather than holding this load's transaction (and its cursor) waiting.
        connection.exec_driver_sql(f"ANALYZE (SKIP_LOCKED) {quote(schema)}.{quote(name)}")
    return grown
