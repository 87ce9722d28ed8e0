"""SQLite write-ahead-log checkpoints off the API's request path.

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

import logging
import threading
import time
import weakref
from typing import Any

from sqlalchemy import Engine, event

log = logging.getLogger("campushub.api")

INTERVAL_S = 1.0


def _no_autocheckpoint(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA wal_autocheckpoint=0")
    cursor.close()


class Checkpoints:
    def __init__(self, engine: Engine) -> None:
        self._engine = weakref.ref(engine)  # a thread of ours must not keep a dropped engine alive
        self._wrote = False
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        event.listen(engine, "connect", _no_autocheckpoint)
        if engine.url.database not in (None, "", ":memory:"):  # disposing would drop an in-memory database
            engine.dispose()  # connections pooled before now would still checkpoint on commit

    def wrote(self) -> None:
        """A request committed: make sure its log pages reach the database file soon."""
        self._wrote = True
        if self._thread is None or not self._thread.is_alive():
            with self._lock:
                if self._thread is None or not self._thread.is_alive():
                    self._thread = threading.Thread(target=self._run, name="sqlite-checkpoints", daemon=True)
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
