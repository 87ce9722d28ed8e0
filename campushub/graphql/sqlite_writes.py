"""The API's writes on SQLite: write-ahead-log checkpoints off the request path, and one
audit write at a time across the worker processes.

SQLite folds its log back into the database file on the commit that takes the log past 1,000
pages, inside that commit, with an fsync of the database file. Every API request commits its
audit rows, so every few hundred requests one of them would wait for a checkpoint — and with
operations running on the event loop (`execution.Executor`), every request queued behind it.
The API's connections therefore leave checkpoints to a thread of their own, which checkpoints
(PASSIVE: it never waits for readers or writers) once a second while requests write, and ends
when they stop. Other connections (the pipeline's, in its own process) keep SQLite's default;
so do the commits of this engine's other users up to the next API write, which checkpoints them.
"""

from __future__ import annotations

import fcntl
import logging
import os
import threading
import time
import weakref
from typing import Any

from sqlalchemy import Engine, event

log = logging.getLogger("campushub.api")

INTERVAL_S = 1.0
CHECKPOINT_THREAD = "sqlite-checkpoints"


def _no_autocheckpoint(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA wal_autocheckpoint=0")
    cursor.close()


class Checkpoints:
    """For an engine on an SQLite file (disposing an in-memory database's engine would drop it)."""

    def __init__(self, engine: Engine) -> None:
        self._engine = weakref.ref(engine)  # a thread of ours must not keep a dropped engine alive
        self._wrote = False
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        event.listen(engine, "connect", _no_autocheckpoint)
        engine.dispose()  # connections pooled before now would still checkpoint on commit

    def wrote(self) -> None:
        """A request committed: make sure its log pages reach the database file soon."""
        self._wrote = True
        if self._thread is None or not self._thread.is_alive():
            with self._lock:
                if self._thread is None or not self._thread.is_alive():
                    self._thread = threading.Thread(target=self._run, name=CHECKPOINT_THREAD, daemon=True)
                    self._thread.start()

    def _run(self) -> None:
        while True:
            time.sleep(INTERVAL_S)
            engine = self._engine()
            if not self._wrote or engine is None:
                return  # idle: the next write starts a new thread
            self._wrote = False
            try:
                with engine.connect() as connection:
                    connection.exec_driver_sql("PRAGMA wal_checkpoint(PASSIVE)")
            except Exception:
                log.warning("WAL checkpoint failed; the next write retries it", exc_info=True)
                return


class SQLiteWriters:
    """One audit write at a time across this server's worker processes.

    SQLite takes one writer at a time, and a writer that finds it taken sleeps in steps (1, 2,
    5, 10 ms …) before it tries again — on the event loop, where the operation runs, every
    request of that worker waits out the sleep. The workers queue here instead: a thread lock
    within a process, an `flock` on a file beside the database between processes, and each
    waiter is woken the moment the last write is done. (Other writers — the pipeline — still
    meet the API at SQLite's own lock, which waits no longer than a request's deadline.)"""

    def __init__(self, database: str) -> None:
        self._path = f"{database}-writers.lock"
        self._threads = threading.Lock()
        self._file: Any = None
        self._pid = 0

    def _lock_file(self) -> Any:
        if self._file is None or self._pid != os.getpid():  # opened in the worker, not before a fork
            self._file = open(self._path, "a+b")  # noqa: SIM115 - held for the process's life
            self._pid = os.getpid()
        return self._file

    def __enter__(self) -> None:
        self._threads.acquire()
        try:
            fcntl.flock(self._lock_file(), fcntl.LOCK_EX)
        except BaseException:
            self._threads.release()
            raise

    def __exit__(self, *_: object) -> None:
        try:
            fcntl.flock(self._lock_file(), fcntl.LOCK_UN)
        finally:
            self._threads.release()
