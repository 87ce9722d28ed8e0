"""The garbage collector's settings for processes that run the pipeline's steps.

Steps turn millions of source records into short-lived dicts and rows. At Python's default
thresholds the cyclic collector considers a full collection every 70,000 new objects or so,
and each one re-scans every object the process holds — a quarter of a unified load's time
(grades at 10,000 students: 6.8-7.1 s; 4.9 s with no collections at all). So, once per process,
when its first run starts: what the process holds by then (libraries, the code location) lives
as long as the process and is frozen out of the scans, and the young generation is collected
every 10,000 new objects instead of 700 — so a full collection is considered every million.
Cyclic garbage the steps leave is still collected: at the university profile the sync's peak
memory stayed as it was (758-864 MiB, against 789-870 before), where thresholds of 50,000 had
raised it by 220 MiB.
"""

from __future__ import annotations

import gc
import threading

THRESHOLDS = (10_000, 10, 10)

_tuned = False
_lock = threading.Lock()


def tune_for_bulk_work() -> None:
    """Freeze what the process holds and raise the young generation's threshold — the first
    time only: objects of earlier runs, frozen later, would never be collected."""
    global _tuned
    with _lock:
        if _tuned:
            return
        gc.collect()
        gc.freeze()
        gc.set_threshold(*THRESHOLDS)
        _tuned = True
