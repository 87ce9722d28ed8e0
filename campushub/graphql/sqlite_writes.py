"""The API's writes on SQLite: write-ahead-log checkpoints off the request path, and one
audit write at a time across the worker processes.

SQLite folds its log back into the database file on the commit that takes the log past 1,000
pages, inside that commit, with an fsync of the database file. Every API request commits its
audit rows, so every few hundred requests one of them would wait for a checkpoint — and with
operations running on the event loop (`execution.Executor`), every request queued behind it.
The API's engine therefore leaves checkpoints to a thread of their own (`models.checkpoints`),
told after each request that wrote.
"""

from __future__ import annotations

import fcntl
import logging
import os
import threading
from typing import Any

log = logging.getLogger("campushub.api")


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
