"""Full and incremental sync of the whole hub against the raw limit, on SQLite and PostgreSQL.

    python benchmarks/bench_sync.py [--students 50000] [--database sqlite|postgresql|both]

The pipeline runs the way the hub runs it — what `campushub run` (orchestration/mainjob.py)
does: `dagster.materialize` in this process, with the code location's own resources, in three
runs: every raw asset and the card accounts; then the rest of the unified layer with
`unified/persons`, beside (PostgreSQL) or before (SQLite) every daily partition of
`unified/card_transactions` in one partition-range run; each run with its assets' checks.

The raw limit: the GET requests the connectors sent during the full sync are recorded, then
replayed with the same client and authentication and only parsed (JSON, or the finance
export's GBK CSV), and each page's records go straight into a plain table through the
database's own bulk path — `executemany` of tuples on SQLite, binary `COPY … FROM STDIN` (psycopg
3 `cursor.copy`, as raw landing writes) on PostgreSQL — one transaction per stream, no hashing, no look-ups, no
indexes. The payload column has the type raw landing uses (JSON text on SQLite, JSONB on
PostgreSQL), so a record is serialised once, as any store of it must. The replay runs twice, in
this process: with the garbage-collector settings the hub's pipeline gave it, and with Python's
thresholds; the faster is the limit.

Incremental: after the full sync, 1% of the people-shaped records — students + staff + card
accounts, counted in the unified layer — worth of random changes go through the stand-ins'
admin endpoint (`POST /_admin/changes`). The change mix (changes.py) edits students, staff
and card accounts, adds new students (with a card and bills), card transactions (1-3 each)
and payments. Then the same three runs go again from the cursors, with the two newest
card-transaction partitions (what the `card_days_current` schedule refreshes).

The stand-ins run in their own process, as real source systems would; with `--database both`
each database gets a child process of its own, so each peak RSS is its own.
"""

from __future__ import annotations

import argparse
import csv
import gc
import io
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
from bench_connectors import stand_ins  # type: ignore[import-not-found]
from sqlalchemy import Engine, create_engine, text

PG_ADMIN_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
RAW_LIMIT_TABLE = "bench_raw_limit"
# Dagster's console logger at DEBUG prints every event: millions of characters at this scale.
QUIET = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}


def peak_rss_mib() -> float:
    """This process's peak resident set since it started or since `reset_peak_rss()`."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def reset_peak_rss() -> None:
    """Start the peak again from the current resident set (Linux: clear_refs 5), so that the
    raw-limit replay, which holds a whole CSV export as one string, is not charged to the hub."""
    try:
        with open("/proc/self/clear_refs", "w") as clear_refs:
            clear_refs.write("5")
    except OSError:
        pass  # elsewhere the peak stays cumulative: an over-estimate, never an under-estimate


# ---------------------------------------------------------------------------- databases
@contextmanager
def fresh_database(kind: str, admin_url: str) -> Iterator[str]:
    """The URL of an empty database of `kind`, removed afterwards."""
    if kind == "sqlite":
        with tempfile.TemporaryDirectory(prefix="campushub-bench-") as folder:
            yield f"sqlite:///{Path(folder) / 'campushub.db'}"
        return
    name = f"campushub_bench_{uuid.uuid4().hex[:12]}"
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield admin_url.rsplit("/", 1)[0] + f"/{name}"
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def count_rows(engine: Engine, table: str) -> int:
    with engine.connect() as connection:
        return int(connection.execute(text(f"SELECT count(*) FROM {table}")).scalar_one())


# ---------------------------------------------------------------------------- the pipeline
@contextmanager
def recording_gets() -> Iterator[list[tuple[str, httpx.URL]]]:
    """Every GET any connector sends while inside: (source, URL), in order."""
    from campushub.connectors.base import HttpSource

    sent: list[tuple[str, httpx.URL]] = []
    original = HttpSource.__init__

    def init(self: HttpSource, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        name = self.name
        # Runs in the prefetch thread too: list.append is atomic under the GIL.
        self.client.event_hooks["request"].append(
            lambda request: sent.append((name, request.url)) if request.method == "GET" else None
        )

    HttpSource.__init__ = init  # type: ignore[method-assign]
    try:
        yield sent
    finally:
        HttpSource.__init__ = original  # type: ignore[method-assign]


def step_seconds(result: Any) -> dict[str, float]:
    """Wall time of each step of a finished in-process run, by step key."""
    seconds: dict[str, float] = {}
    for event in result.all_events:
        if event.event_type_value in ("STEP_SUCCESS", "STEP_FAILURE") and event.step_key:
            seconds[event.step_key] = event.event_specific_data.duration_ms / 1000
    return seconds


class Pipeline:
    """The hub's runs as the main job runs them (orchestration/mainjob.py)."""

    def __init__(self) -> None:
        from dagster import DagsterInstance

        from campushub.orchestration.assets.unified import CARD_DAYS

        self.instance = DagsterInstance.ephemeral()
        # The card days' own (see `sync_and_card_days`), kept so the incremental's checks compare
        # with the full sync's, as the hub's stored instance lets them.
        self.days_instance = DagsterInstance.ephemeral()
        self.card_days = CARD_DAYS

    def sync(self, days: list[str] | None = None) -> tuple[float, list[float], dict[str, float], dict[str, float]]:
        """Landing, then the unified layer beside the card days (`days`: first and last, all when
        None): (wall seconds, each run's step seconds summed, step seconds, metadata totals)."""
        from campushub.orchestration.mainjob import sync_and_card_days

        started = time.perf_counter()
        results = sync_and_card_days(self.instance, days, QUIET, self.days_instance)
        seconds = time.perf_counter() - started
        if len(results) < 3 or not all(result.success for result in results):
            raise RuntimeError("a run of the main job failed: see the errors above")
        steps: dict[str, float] = {}
        runs: list[float] = []
        totals: Counter[str] = Counter()
        for result in results:
            run_steps = step_seconds(result)
            steps.update(run_steps)
            # A run's steps go one after another: their sum is its time but for its start and end.
            runs.append(sum(run_steps.values()))
            for event in result.get_asset_materialization_events():
                path = event.materialization.asset_key.path
                if event.materialization.partition:
                    continue  # the card days: each day repeats the range run's totals
                for name, value in event.materialization.metadata.items():
                    if isinstance(value.value, int) and not isinstance(value.value, bool):
                        totals[f"{path[0]}.{name}"] += value.value
        return seconds, runs, steps, dict(totals)


CARD_STEP = "unified__card_transactions"


def check_seconds(steps: dict[str, float]) -> float:
    """Time in the asset-check steps: all checks of one asset run as one op, `unified_<entity>_checks`."""
    return sum(seconds for key, seconds in steps.items() if key.endswith("_checks"))


# ---------------------------------------------------------------------------- the raw limit
def records_in(body: Any) -> list[Any]:
    """A page's records: the longest list in the envelope (`data.list`, `items`, `data.rows`…)."""
    if isinstance(body, list):
        return body
    best: list[Any] = []
    frontier = [body]
    for _ in range(3):
        nested = []
        for value in frontier:
            if isinstance(value, dict):
                for item in value.values():
                    if isinstance(item, list) and len(item) > len(best):
                        best = item
                    elif isinstance(item, dict):
                        nested.append(item)
        frontier = nested
    return best


def page_records(response: httpx.Response) -> list[Any]:
    """Decode a page into its records and nothing more."""
    if response.headers.get("content-type", "").startswith("text/csv"):
        rows = list(csv.reader(io.StringIO(response.content.decode("gbk"))))
        return rows[1:-1]  # between the header and the trailer
    return records_in(json.loads(response.content))


def bulk_writer(engine: Engine) -> tuple[Any, Callable[[str, list[Any]], None]]:
    """A raw DBAPI connection with a plain table, and the database's bulk path into it."""
    dbapi = engine.raw_connection()
    cursor = dbapi.cursor()
    if engine.dialect.name == "postgresql":
        cursor.execute(f"CREATE TABLE {RAW_LIMIT_TABLE} (stream text, payload jsonb)")
        dbapi.commit()

        from psycopg.types.json import set_json_dumps

        # Binary COPY, as raw landing writes: the JSON text is sent as it is.
        set_json_dumps(lambda text: text, context=cursor)

        def write(stream: str, records: list[Any]) -> None:
            with cursor.copy(f"COPY {RAW_LIMIT_TABLE} (stream, payload) FROM STDIN (FORMAT BINARY)") as copy:
                copy.set_types(["text", "jsonb"])
                for record in records:
                    copy.write_row((stream, json.dumps(record, ensure_ascii=False)))

    else:
        cursor.execute(f"CREATE TABLE {RAW_LIMIT_TABLE} (stream TEXT, payload JSON)")
        dbapi.commit()

        def write(stream: str, records: list[Any]) -> None:
            cursor.executemany(
                f"INSERT INTO {RAW_LIMIT_TABLE} (stream, payload) VALUES (?, ?)",
                [(stream, json.dumps(record, ensure_ascii=False)) for record in records],
            )

    return dbapi, write


@contextmanager
def python_default_thresholds() -> Iterator[None]:
    """Python's own garbage-collector thresholds for a while, where the hub's pipeline raised
    the young generation's (orchestration/collector.py). What the hub froze stays frozen: that
    only spares the replay collections, so the limit it gives can only be lower."""
    thresholds = gc.get_threshold()
    gc.set_threshold(700, 10, 10)
    try:
        yield
    finally:
        gc.set_threshold(*thresholds)


def raw_limit(engine: Engine, sent: list[tuple[str, httpx.URL]]) -> tuple[float, float, int]:
    """Replay the recorded GETs, parse, bulk-insert: (total seconds, of which inserting, records)."""
    from campushub.connectors import open_source

    dbapi, write = bulk_writer(engine)
    records = 0
    inserting = 0.0
    started = time.perf_counter()
    try:
        for name in dict.fromkeys(source for source, _ in sent):
            with open_source(name) as source:
                stream = None
                for url in (url for source_name, url in sent if source_name == name):
                    if url.path != stream and stream is not None:
                        dbapi.commit()  # one transaction per stream, as raw landing has
                    stream = url.path
                    request = source.client.build_request("GET", url)
                    source.authenticate(request)
                    response = source.client.send(request)
                    response.raise_for_status()
                    page = page_records(response)
                    before = time.perf_counter()
                    write(url.path, page)
                    inserting += time.perf_counter() - before
                    records += len(page)
                dbapi.commit()
        seconds = time.perf_counter() - started
        cursor = dbapi.cursor()
        cursor.execute(f"DROP TABLE {RAW_LIMIT_TABLE}")
        cursor.close()
        dbapi.commit()
    finally:
        dbapi.close()
    return seconds, inserting, records


# ---------------------------------------------------------------------------- one database
def bench(kind: str, students: int, admin_url: str, percent: float) -> None:
    from cryptography.fernet import Fernet

    # Benchmark databases are throw-away: so is the key their ID numbers are encrypted with.
    os.environ.setdefault("CAMPUSHUB_ID_KEY", Fernet.generate_key().decode())
    from campushub.models.engine import make_engine
    from campushub.models.migrate import upgrade

    with stand_ins(students) as urls, fresh_database(kind, admin_url) as url:
        os.environ["CAMPUSHUB_DATABASE_URL"] = url
        engine = make_engine(url)
        upgrade(engine)  # the schema is not part of a sync
        pipeline = Pipeline()
        shown = url if kind == "sqlite" else url.rsplit("/", 1)[0] + "/<fresh>"
        print(f"# full and incremental sync, {students:,} students, {kind} ({shown})", flush=True)

        # -- full sync ---------------------------------------------------------------------
        with recording_gets() as sent:
            full, (landing_run, unified_run, days_run), steps, totals = pipeline.sync()
        rss_full = peak_rss_mib()
        days = pipeline.card_days.get_partition_keys()
        raw_steps = sum(s for k, s in steps.items() if k.startswith("raw__"))
        unified_steps = sum(
            s for k, s in steps.items() if k.startswith("unified__") and k not in ("unified__persons", CARD_STEP)
        )
        fetched = totals.get("raw.fetched", 0)
        side = "beside" if kind == "postgresql" else "then"
        print(
            f"full sync: {full:8.1f} s  ({fetched:,} records in {len(sent):,} GETs; dagster.materialize in-process: "
            f"landing run {landing_run:.1f} s, then the unified run {unified_run:.1f} s {side} the card-day run "
            f"{days_run:.1f} s ({len(days)} partitions); steps: raw landing {raw_steps:.1f} s, unified "
            f"{unified_steps:.1f} s, persons {steps.get('unified__persons', 0):.1f} s, card days "
            f"{steps.get(CARD_STEP, 0):.1f} s, checks {check_seconds(steps):.1f} s)",
            flush=True,
        )
        print(
            f"  landed {totals.get('raw.landed', 0):,}, quarantined {totals.get('raw.quarantined', 0):,}; "
            f"unified inserted {totals.get('unified.inserted', 0):,}",
            flush=True,
        )
        slowest = sorted(steps.items(), key=lambda item: -item[1])[:8]
        print("  slowest steps: " + ", ".join(f"{key} {seconds:.1f} s" for key, seconds in slowest), flush=True)

        # -- the raw limit -----------------------------------------------------------------
        # Replayed in this process, which the sync left with the hub's garbage-collector settings,
        # and again with Python's thresholds: the faster replay is the limit.
        reset_peak_rss()
        tuned = raw_limit(engine, sent)
        with python_default_thresholds():
            untuned = raw_limit(engine, sent)
        rss_limit = peak_rss_mib()
        limit, inserting, replayed = min(tuned, untuned)
        print(
            f"raw limit: {limit:8.1f} s  (same {len(sent):,} GETs replayed with httpx + parse: "
            f"{limit - inserting:.1f} s; {replayed:,} records bulk-inserted "
            f"({'binary COPY' if kind == 'postgresql' else 'executemany'}): {inserting:.1f} s; "
            f"the faster of two replays: {tuned[0]:.1f} s with the hub's collector settings, "
            f"{untuned[0]:.1f} s with Python's thresholds)",
            flush=True,
        )
        print(f"full sync / raw limit: {full / limit:.2f}x (goal <= 2x)", flush=True)

        # -- incremental -------------------------------------------------------------------
        people = sum(count_rows(engine, table) for table in ("student", "staff", "card_account"))
        count = max(1, round(people * percent / 100))
        applied = httpx.post(f"{urls['academic']}/_admin/changes", json={"count": count}, timeout=600)
        applied.raise_for_status()
        touched = Counter(change["stream"] for change in applied.json()["changes"])
        print(
            f"changes: {count:,} = {percent:g}% of {people:,} students + staff + card accounts; records touched: "
            + ", ".join(f"{stream} {n:,}" for stream, n in touched.most_common()),
            flush=True,
        )
        reset_peak_rss()
        recent = days[-2:]
        incremental, inc_runs, inc_steps, inc_totals = pipeline.sync(recent)
        rss_incremental = peak_rss_mib()
        print(
            f"incremental sync: {incremental:8.1f} s = {incremental / full:.1%} of the full sync (goal <= 5%)  "
            f"(landed {inc_totals.get('raw.landed', 0):,}; runs {' / '.join(f'{r:.1f}' for r in inc_runs)} s, "
            f"card_transactions {len(recent)} partitions; of all this, checks {check_seconds(inc_steps):.1f} s)",
            flush=True,
        )
        slowest = sorted(inc_steps.items(), key=lambda item: -item[1])[:5]
        print("  slowest steps: " + ", ".join(f"{key} {seconds:.1f} s" for key, seconds in slowest), flush=True)

        # -- memory and checks -------------------------------------------------------------
        print(
            f"peak RSS of the hub process: {max(rss_full, rss_incremental):.0f} MiB (goal <= 1024 MiB; full sync "
            f"{rss_full:.0f} MiB, incremental {rss_incremental:.0f} MiB; the raw-limit replay in between, "
            f"not the hub's work, {rss_limit:.0f} MiB)",
            flush=True,
        )
        checks = check_seconds(steps)
        print(f"quality checks in the full sync: {checks:.1f} s = {checks / full:.1%} of it (goal <= 20%)", flush=True)
        engine.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--students", type=int, default=50_000)
    parser.add_argument("--database", choices=("sqlite", "postgresql", "both"), default="both")
    parser.add_argument("--pg-admin-url", default=PG_ADMIN_URL, help="where to create the fresh PostgreSQL database")
    parser.add_argument("--percent", type=float, default=1.0, help="changes for the incremental sync, in %% of people")
    args = parser.parse_args()
    if args.database != "both":
        bench(args.database, args.students, args.pg_admin_url, args.percent)
        return
    for kind in ("sqlite", "postgresql"):
        options = [
            "--students",
            str(args.students),
            "--pg-admin-url",
            args.pg_admin_url,
            "--percent",
            str(args.percent),
        ]
        subprocess.run([sys.executable, __file__, "--database", kind, *options], check=True)


if __name__ == "__main__":
    main()
