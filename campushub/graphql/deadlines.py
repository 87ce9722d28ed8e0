"""A request's deadline, enforced by the database on the statements the request sends.

Operations run on the event loop (`execution.Executor`), where nothing can abandon them half-way
as a thread's run can be: at the deadline the database stops the statement running instead, and
the request is answered 504.

- SQLite: a progress handler interrupts the statement, and a wait for another writer (the
  pipeline: SQLite has one writer at a time) gives up at the deadline too;
- PostgreSQL: a watchdog thread sends a cancel request for a statement still running past its
  request's deadline — also one waiting on a lock. Setting `statement_timeout` per request would
  cost a round trip each: a prefill makes two.
"""

from __future__ import annotations

import contextlib
import logging
import math
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection
from sqlalchemy.exc import DBAPIError

from campushub.models.engine import BUSY_TIMEOUT_MS

log = logging.getLogger("campushub.api")

# SQLite checks a request's deadline every this many virtual-machine instructions.
DEADLINE_CHECK_STEPS = 100
# How often the PostgreSQL watchdog looks for statements past their deadline: a request may
# overrun its deadline by this much.
WATCH_INTERVAL_S = 0.05
# A request still running this long after its cancel (it went on to another statement, or the
# cancel came while Python code ran) is cancelled again. Each cancel request costs PostgreSQL a
# new backend process.
CANCEL_AGAIN_AFTER_S = 1.0
CANCEL_TIMEOUT_S = 2.0
QUERY_CANCELED = "57014"  # PostgreSQL's SQLSTATE for a cancelled statement (and statement_timeout)


@dataclass(slots=True)
class Watch:
    deadline: float  # time.monotonic()
    driver_connection: Any  # psycopg's
    cancelled_at: float | None = None


class StatementWatchdog:
    """Cancels the statements of watched PostgreSQL connections past their deadline.

    One daemon thread per process, started on first use, waking every `WATCH_INTERVAL_S`. A
    cancel request may reach the server late, when the statement it was meant for is done and
    the connection runs the next one: a connection that was sent one is therefore never used
    again (`deadline` invalidates it), whether or not its request saw the cancel."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._watched: dict[int, Watch] = {}
        self._thread: threading.Thread | None = None

    @contextlib.contextmanager
    def watching(self, driver_connection: Any, seconds: float) -> Iterator[Watch]:
        watch = Watch(time.monotonic() + seconds, driver_connection)
        with self._lock:
            self._watched[id(watch)] = watch
            if self._thread is None:
                self._thread = threading.Thread(target=self._watch, name="statement-watchdog", daemon=True)
                self._thread.start()
        try:
            yield watch
        finally:
            with self._lock:  # after this, no cancel is sent for it: marked under the same lock
                del self._watched[id(watch)]

    def _watch(self) -> None:
        while True:
            time.sleep(WATCH_INTERVAL_S)
            now = time.monotonic()
            due = []
            with self._lock:
                for watch in self._watched.values():
                    again = watch.cancelled_at is None or now - watch.cancelled_at >= CANCEL_AGAIN_AFTER_S
                    if now > watch.deadline and again:
                        watch.cancelled_at = now
                        due.append(watch.driver_connection)
            for driver_connection in due:  # outside the lock: a request ending need not wait for it
                try:
                    driver_connection.cancel_safe(timeout=CANCEL_TIMEOUT_S)
                except Exception:  # the statement then runs on: logged, the watchdog lives
                    log.exception("could not cancel a statement past its deadline")


_WATCHDOG = StatementWatchdog()


@contextlib.contextmanager
def deadline(connection: Connection, seconds: float) -> Iterator[None]:
    """The statements `connection` sends within the block are stopped `seconds` from now."""
    seconds = max(seconds, 0.0)
    driver = connection.connection.driver_connection
    if connection.dialect.name == "postgresql":
        watch: Watch | None = None
        try:
            with _WATCHDOG.watching(driver, seconds) as watch:
                yield
        finally:
            if watch is not None and watch.cancelled_at is not None:
                connection.invalidate()  # a cancel may still be on its way to it
        return
    if connection.dialect.name != "sqlite":
        yield
        return
    at = time.monotonic() + seconds
    driver.set_progress_handler(lambda: time.monotonic() > at, DEADLINE_CHECK_STEPS)
    # Waiting for another writer is not statement work the handler sees: bounded by the deadline too.
    # In whole tenths of a second: the driver caches statements by their text, and a new text
    # each time (an audit write's deadline is what is left of its request's) would push the
    # cached audit INSERTs out.
    driver.execute(f"PRAGMA busy_timeout={math.ceil(seconds * 10) * 100}")
    try:
        yield
    finally:
        driver.set_progress_handler(None, 0)
        driver.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")


def past_deadline(error: BaseException | None) -> bool:
    """Stopped at the deadline: interrupted or cancelled mid-statement, or still locked out when
    it came."""
    if not isinstance(error, DBAPIError):
        return False
    if getattr(error.orig, "sqlstate", None) == QUERY_CANCELED:
        return True
    return "interrupted" in str(error.orig) or "database is locked" in str(error.orig)
