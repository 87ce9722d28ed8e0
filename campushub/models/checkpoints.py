"""SQLite's write-ahead log folded back into the database file on a thread of its own.

SQLite checkpoints on the commit that takes the log past 1,000 pages, inside that commit: the
committer copies the log into the database file and waits for its fsync. For the API that was a
request stalled every few hundred requests; for the pipeline, seconds of copying after every
large commit (a stream's landing, a week of card days) with the second core idle. An engine
given `Checkpoints` leaves checkpoints to a thread, which checkpoints (PASSIVE: it never waits
for readers or writers) once a second while its engine commits, and ends when commits stop.
SQLite checkpoints on its own again when the last connection to the database closes.
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
from typing import Any

from sqlalchemy import Engine, event

log = logging.getLogger("campushub.models")

INTERVAL_S = 1.0


def _no_autocheckpoint(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA wal_autocheckpoint=0")
    cursor.close()


class Checkpoints:
    """For an engine on an SQLite file (disposing an in-memory database's engine would drop it)."""

    def __init__(self, engine: Engine, *, on_commit: bool = False) -> None:
        """With `on_commit`, every commit on the engine counts as a write; otherwise its users
        call `wrote()` after the writes they want folded in soon."""
        self._engine = weakref.ref(engine)  # a thread of ours must not keep a dropped engine alive
        self._wrote = False
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        event.listen(engine, "connect", _no_autocheckpoint)
        if on_commit:
            event.listen(engine, "commit", lambda _connection: self.wrote())
        engine.dispose()  # connections pooled before now would still checkpoint on commit

    def wrote(self) -> None:
        """Something committed: make sure its log pages reach the database file soon."""
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
