"""The Dagster pipeline end to end: the real assets, jobs and schedules, against the running
stand-ins over real HTTP, into SQLite and PostgreSQL.

Each database gets its own small world (a dedicated cluster: these tests change it, break it
and delete from it), loaded from empty once by the `hub` fixture, which keeps what the first
run and its re-run reported. Every test then leaves the hub in sync with its world, so the
tests do not depend on the order they run in.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import importlib
import json
import logging
import os
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from functools import cached_property
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from dagster import (
    AssetsDefinition,
    DagsterInstance,
    Definitions,
    ExecuteInProcessResult,
    RunRequest,
    build_schedule_context,
    materialize,
    validate_run_config,
)
from dagster._core.storage.tags import ASSET_PARTITION_RANGE_END_TAG, ASSET_PARTITION_RANGE_START_TAG
from sqlalchemy import Engine, func, select

from campushub.connectors.academic import AcademicSource
from campushub.connectors.base import Batch, HttpSettings
from campushub.models.base import Base
from campushub.models.ingest import land_stream
from campushub.models.landing import QuarantinedRecord, RawRecord, SyncRun, SyncState
from campushub.models.unified import CardTransaction
from campushub.models.unify import MAPPINGS, mark_deleted, unify
from campushub.orchestration.assets.raw import RAW_ASSETS, STREAMS
from campushub.orchestration.assets.unified import ALL_UNIFIED, CARD_DAYS
from campushub.orchestration.automation import (
    JOBS,
    SCHEDULES,
    card_days_current,
    every_15_minutes,
    nightly_reconcile,
    reconcile_run_config,
)
from campushub.orchestration.resources import HRAPI, AcademicAPI, CardAPI, DatabaseResource, FinanceAPI
from campushub.simulators import academic as academic_sim
from campushub.simulators import hr as hr_sim
from campushub.simulators.academic import Without
from campushub.simulators.malformed import malformed_kind
from campushub.simulators.server import SimulatorCluster
from campushub.simulators.world import CST, World
from tests.conftest import FAST_RETRY, apply_changes, http_settings, set_faults, start_cluster
from tests.databases import DATABASES, fresh_database

PIPELINE_STUDENTS = 60  # 20 staff, ~2,000 grades, ~7,400 card transactions: a full load in seconds
DATABASE_KINDS: Sequence[str] = DATABASES.args[1]
SNAPSHOT_FILE = Path(__file__).parent / "snapshots" / "definitions.json"
WORKSPACE_FILE = Path(__file__).parent.parent / "workspace.yaml"

ASSETS: dict[str, AssetsDefinition] = {a.key.to_user_string(): a for a in [*RAW_ASSETS, *ALL_UNIFIED]}
RAW_KEYS = [f"raw/{source}/{stream}" for source, streams in STREAMS.items() for stream in streams]
# The streams the change knob edits, as (system, stream) the way the change log names them.
CHANGING = [
    ("academic", "students"),
    ("hr", "staff"),
    ("finance", "fee_bills"),
    ("finance", "payments"),
    ("card", "card_accounts"),
    ("card", "card_transactions"),
]
UNIFIED_OF = {
    "students": "unified/students",
    "grades": "unified/grades",
    "staff": "unified/staff",
    "fee_bills": "unified/fee_bills",
    "payments": "unified/payments",
    "card_accounts": "unified/card_accounts",
}


# ---------------------------------------------------------------------------- resources
class _FastRetry:
    """The tests' quick retries: the production policy backs off for seconds per fault."""

    def http_settings(self) -> HttpSettings:
        return dataclasses.replace(super().http_settings(), retry=FAST_RETRY)  # type: ignore[misc]


class FastAcademicAPI(_FastRetry, AcademicAPI):
    pass


class FastHRAPI(_FastRetry, HRAPI):
    pass


class FastFinanceAPI(_FastRetry, FinanceAPI):
    pass


class FastCardAPI(_FastRetry, CardAPI):
    pass


def resources_for(cluster: SimulatorCluster, database_url: str) -> dict[str, object]:
    urls, settings = cluster.urls, cluster.settings
    return {
        "academic": FastAcademicAPI(base_url=urls["academic"], api_key=settings.academic_api_key),
        "hr": FastHRAPI(base_url=urls["hr"], client_id=settings.hr_client_id, client_secret=settings.hr_client_secret),
        "finance": FastFinanceAPI(
            base_url=urls["finance"], user=settings.finance_user, password=settings.finance_password
        ),
        "card": FastCardAPI(base_url=urls["card"], app_key=settings.card_app_key, app_secret=settings.card_app_secret),
        "database": DatabaseResource(url=database_url),
    }


def resources_for_nothing() -> dict[str, object]:
    """Resources that satisfy the jobs' requirements but are never opened."""
    unused = "http://127.0.0.1:9"
    return {
        "academic": AcademicAPI(base_url=unused, api_key="-"),
        "hr": HRAPI(base_url=unused, client_id="-", client_secret="-"),
        "finance": FinanceAPI(base_url=unused, user="-", password="-"),
        "card": CardAPI(base_url=unused, app_key="-", app_secret="-"),
        "database": DatabaseResource(url="sqlite://"),
    }


def url_of(engine: Engine) -> str:
    return engine.url.render_as_string(hide_password=False)


# ---------------------------------------------------------------------------- ground truth
def truth(world: World) -> dict[str, int]:
    """How many records each system serves now, counted from the world, not from an API."""
    deleted = set(world.changes.deleted_students)
    students = range(world.student_count)
    return {
        "students": world.student_count - len(deleted),
        "grades": world.grade_count - sum(len(world.grade_indices_of(i)) for i in deleted),
        "staff": world.staff_count,
        "fee_bills": sum(len(world.bills_of(i)) for i in students),
        "payments": sum(len(world.payments_of(i)) for i in students),
        "card_accounts": sum(world.account_exists(a) for a in range(world.account_count)),
        "card_transactions": sum(1 for _ in transactions(world)),
    }


def transactions(world: World) -> Iterator[dt.datetime]:
    """When each card transaction happened: the base ledger, then the ones changes added."""
    for seq in range(world.base_transaction_seq_end):
        transaction = world.base_transaction(seq)
        if transaction is not None:
            yield transaction.at
    for transaction in world.changes.transactions:
        yield transaction.at


def transactions_by_day(world: World) -> Counter[dt.date]:
    return Counter(at.astimezone(CST).date() for at in transactions(world))


def expected_keys(changes: list[dict[str, Any]]) -> dict[tuple[str, str], set[str]]:
    return {(system, stream): {c["key"] for c in changes if c["stream"] == stream} for system, stream in CHANGING}


def wait_until_served(changes: list[dict[str, Any]]) -> None:
    """The card system windows updates by whole seconds and serves a change only once its
    second is over (see simulators/card.py): wait for that, as a 15-minute schedule would."""
    latest = max(dt.datetime.fromisoformat(c["at"]) for c in changes)
    ready = latest.replace(microsecond=0) + dt.timedelta(seconds=1, milliseconds=20)
    delay = (ready - dt.datetime.now(dt.UTC)).total_seconds()
    if delay > 0:
        time.sleep(delay)


# ---------------------------------------------------------------------------- the database
# Unified table -> what it counts, by the ground truth's names.
COUNTED = {
    "student": "students",
    "grade": "grades",
    "staff": "staff",
    "fee_bill": "fee_bills",
    "payment": "payments",
    "card_account": "card_accounts",
    "card_transaction": "card_transactions",
}


def live_counts(engine: Engine) -> dict[str, int]:
    """Unified rows not marked deleted, by the ground truth's name of what they count."""
    counts = {}
    with engine.connect() as connection:
        for name, counted in COUNTED.items():
            table = Base.metadata.tables[name]
            query = select(func.count()).select_from(table)
            if "deleted_at" in table.c:
                query = query.where(table.c.deleted_at.is_(None))
            counts[counted] = connection.execute(query).scalar_one()
    return counts


def db_transactions_by_day(engine: Engine) -> Counter[dt.date]:
    table = CardTransaction.__table__
    with engine.connect() as connection:
        rows = connection.execute(select(table.c.day, func.count()).group_by(table.c.day))
        return Counter({day: count for day, count in rows})


def raw_transactions_by_day(engine: Engine) -> Counter[dt.date]:
    with engine.connect() as connection:
        rows = connection.execute(
            select(RawRecord.event_day, func.count())
            .where(RawRecord.source == "card", RawRecord.stream == "card_transactions")
            .group_by(RawRecord.event_day)
        )
        return Counter({day: count for day, count in rows})


def unified_rows(engine: Engine, source: str, stream: str) -> dict[str, tuple[Any, ...]]:
    """Unified rows by source key ('|'-joined natural key, as connectors key records):
    what a change to them would change (row hash and deletion mark, or the whole event)."""
    mapping = MAPPINGS[(source, stream)]
    table = mapping.table
    keys = [table.c[name] for name in mapping.key]
    state = [table.c.row_hash, table.c.deleted_at] if "row_hash" in table.c else list(table.c)
    with engine.connect() as connection:
        rows = connection.execute(select(*keys, *state)).all()
    return {"|".join(str(v) for v in row[: len(keys)]): tuple(row[len(keys) :]) for row in rows}


def deleted_keys(engine: Engine) -> dict[str, set[str]]:
    """Every unified row marked deleted, by table."""
    marked: dict[str, set[str]] = {}
    with engine.connect() as connection:
        for table in {m.table for m in MAPPINGS.values()}:
            if "deleted_at" not in table.c:
                continue
            mapping = next(m for m in MAPPINGS.values() if m.table is table)
            keys = [table.c[name] for name in mapping.key]
            for row in connection.execute(select(*keys).where(table.c.deleted_at.is_not(None))):
                marked.setdefault(table.name, set()).add("|".join(str(v) for v in row))
    return marked


def out_of_sync(hub: Hub) -> dict[str, tuple[int, int]]:
    """Where the unified layer and the world disagree: {what: (rows, truth)}. Card
    transactions are left out: the unified layer holds only the days built so far."""
    counts, expected = live_counts(hub.engine), truth(hub.world)
    del counts["card_transactions"]
    return {name: (count, expected[name]) for name, count in counts.items() if count != expected[name]}


def raw_mark(engine: Engine) -> int:
    with engine.connect() as connection:
        return connection.execute(select(func.coalesce(func.max(RawRecord.id), 0))).scalar_one()


def landed_since(engine: Engine, mark: int) -> dict[tuple[str, str], list[str]]:
    landed: dict[tuple[str, str], list[str]] = {}
    with engine.connect() as connection:
        rows = connection.execute(
            select(RawRecord.source, RawRecord.stream, RawRecord.source_key).where(RawRecord.id > mark)
        )
        for source, stream, key in rows:
            landed.setdefault((source, stream), []).append(key)
    return landed


def ledger(engine: Engine, source: str, stream: str) -> dict[str, Any]:
    """What a failed run must leave alone: the cursor, raw landing and the unified rows."""
    with engine.connect() as connection:
        state = connection.execute(
            select(SyncState.cursor, SyncState.last_run_id).where(
                SyncState.source == source, SyncState.stream == stream
            )
        ).one()
        raw = connection.execute(select(func.count()).select_from(RawRecord)).scalar_one()
    return {"cursor": tuple(state), "raw_records": raw, "unified": unified_rows(engine, source, stream)}


# ---------------------------------------------------------------------------- running Dagster
def metadata(result: ExecuteInProcessResult) -> dict[str, dict[str, Any]]:
    """Each materialized asset's metadata values (the last event per asset)."""
    return {
        e.materialization.asset_key.to_user_string(): {k: v.value for k, v in e.materialization.metadata.items()}
        for e in result.get_asset_materialization_events()
    }


def partition_metadata(result: ExecuteInProcessResult) -> dict[str, dict[str, Any]]:
    return {
        str(e.materialization.partition): {k: v.value for k, v in e.materialization.metadata.items()}
        for e in result.get_asset_materialization_events()
    }


@dataclasses.dataclass
class Loaded:
    """What loading the hub from empty, and loading it again at once, reported and left."""

    truth: dict[str, int]
    truth_by_day: Counter[dt.date]
    first: ExecuteInProcessResult
    card_days: list[ExecuteInProcessResult]
    counts: dict[str, int]
    counts_by_day: Counter[dt.date]
    raw_by_day: Counter[dt.date]
    rerun: ExecuteInProcessResult
    card_days_rerun: list[ExecuteInProcessResult]
    counts_after_rerun: dict[str, int]


@dataclasses.dataclass
class Hub:
    kind: str
    cluster: SimulatorCluster
    engine: Engine
    instance: DagsterInstance
    loaded: Loaded | None = None

    @cached_property
    def resources(self) -> dict[str, object]:
        return resources_for(self.cluster, url_of(self.engine))

    @cached_property
    def defs(self) -> Definitions:
        """The code location's assets, jobs and schedules, bound to this hub's resources."""
        return Definitions(assets=[*RAW_ASSETS, *ALL_UNIFIED], jobs=JOBS, schedules=SCHEDULES, resources=self.resources)

    @property
    def world(self) -> World:
        return self.cluster.world

    def scheduled(self, schedule_name: str, request: RunRequest, **options: Any) -> ExecuteInProcessResult:
        """Run what a schedule asked for, on the job it targets, as the daemon would."""
        job = self.defs.get_job_def(self.defs.get_schedule_def(schedule_name).job_name)
        return job.execute_in_process(
            run_config=request.run_config or None,
            instance=self.instance,
            partition_key=request.partition_key,
            tags=request.tags,
            **options,
        )

    def sync(self, **options: Any) -> ExecuteInProcessResult:
        return self.scheduled("every_15_minutes", tick(every_15_minutes, defs=self.defs)[0], **options)

    def reconcile(self, **options: Any) -> ExecuteInProcessResult:
        return self.scheduled("nightly_reconcile", tick(nightly_reconcile, defs=self.defs)[0], **options)

    def card_days(self, first: str, last: str | None = None) -> ExecuteInProcessResult:
        """Card transactions for a day, or a range of days in one run as a backfill runs them."""
        job = self.defs.get_job_def("card_transactions_by_day")
        if last is None:
            return job.execute_in_process(instance=self.instance, partition_key=first)
        tags = {ASSET_PARTITION_RANGE_START_TAG: first, ASSET_PARTITION_RANGE_END_TAG: last}
        return job.execute_in_process(instance=self.instance, tags=tags)

    def materialize(self, keys: list[str], **options: Any) -> ExecuteInProcessResult:
        return materialize([ASSETS[k] for k in keys], resources=self.resources, instance=self.instance, **options)


def tick(schedule: Any, at: dt.datetime | None = None, defs: Definitions | None = None) -> list[RunRequest]:
    """Evaluate a schedule as the daemon would at `at` (now by default)."""
    context = build_schedule_context(
        scheduled_execution_time=at or dt.datetime.now(CST),
        # Partitioned targets resolve their partitions through the repository.
        repository_def=(defs or code_location()).get_repository_def(),
    )
    return list(schedule.evaluate_tick(context).run_requests or [])


@contextmanager
def faults(cluster: SimulatorCluster, sources: Sequence[str], **knobs: object) -> Iterator[None]:
    for source in sources:
        set_faults(cluster, source, **knobs)
    try:
        yield
    finally:
        cluster.reset_faults()


# Which card days the load builds. Every partition costs Dagster a few events (~10 ms each),
# so not all 185 days with data: the first day (it starts at 06:00), and the last 31 days in
# one range run, the most a backfill run of the asset takes (its BackfillPolicy). The raw
# landing's per-day counts stand for the rest: a partition reads exactly its `event_day`.
FIRST_CARD_DAY = "2026-03-01"
CARD_RANGE = ("2026-08-02", "2026-09-01")


def card_days_built() -> set[dt.date]:
    start, end = (dt.date.fromisoformat(day) for day in CARD_RANGE)
    return {dt.date.fromisoformat(FIRST_CARD_DAY)} | {start + dt.timedelta(n) for n in range((end - start).days + 1)}


def load_from_empty(hub: Hub) -> Loaded:
    first = hub.sync()
    card_days = [hub.card_days(FIRST_CARD_DAY), hub.card_days(*CARD_RANGE)]
    counts, counts_by_day = live_counts(hub.engine), db_transactions_by_day(hub.engine)
    raw_by_day = raw_transactions_by_day(hub.engine)
    rerun = hub.sync()
    card_days_rerun = [hub.card_days(*CARD_RANGE)]
    return Loaded(
        truth=truth(hub.world),
        truth_by_day=transactions_by_day(hub.world),
        first=first,
        card_days=card_days,
        counts=counts,
        counts_by_day=counts_by_day,
        raw_by_day=raw_by_day,
        rerun=rerun,
        card_days_rerun=card_days_rerun,
        counts_after_rerun=live_counts(hub.engine),
    )


@pytest.fixture(scope="module", params=DATABASE_KINDS)
def hub(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hub]:
    kind: str = request.param
    with fresh_database(kind, tmp_path_factory.mktemp(kind)) as engine:
        cluster = start_cluster(PIPELINE_STUDENTS)
        try:
            hub = Hub(kind, cluster, engine, DagsterInstance.ephemeral())
            hub.loaded = load_from_empty(hub)
            yield hub
        finally:
            cluster.stop()


# ---------------------------------------------------------------------------- 1. from empty
def test_load_from_empty_matches_the_world(hub: Hub) -> None:
    loaded = hub.loaded
    assert loaded is not None and loaded.first.success and all(run.success for run in loaded.card_days)
    md = metadata(loaded.first)
    assert set(RAW_KEYS) <= set(md)
    for key in RAW_KEYS:
        assert md[key]["mode"] == "incremental" and md[key]["quarantined"] == 0, key
        assert md[key]["landed"] == md[key]["fetched"] > 0, key
    truth_ = loaded.truth
    assert {stream: md[f"raw/{source}/{stream}"]["landed"] for source, stream in CHANGING} == {
        stream: truth_[stream] for _, stream in CHANGING
    }
    assert md["raw/academic/grades"]["landed"] == truth_["grades"]
    for stream, key in UNIFIED_OF.items():
        assert md[key]["inserted"] == truth_[stream] and md[key]["quarantined"] == 0, key
    assert md["unified/persons"]["persons_created"] > 0
    built = card_days_built()
    assert loaded.counts == truth_ | {"card_transactions": sum(loaded.truth_by_day[day] for day in built)}

    # Transactions run from 2026-03-01 06:00 to 2026-09-01 07:00 (Asia/Shanghai): 185 days,
    # each landed under its own day, so each partition builds exactly its day.
    assert min(loaded.truth_by_day) == dt.date(2026, 3, 1) and max(loaded.truth_by_day) == dt.date(2026, 9, 1)
    assert len(loaded.truth_by_day) == 185
    assert loaded.raw_by_day == loaded.truth_by_day
    assert loaded.counts_by_day == Counter({day: loaded.truth_by_day[day] for day in built})
    single, ranged = (partition_metadata(run) for run in loaded.card_days)
    assert single[FIRST_CARD_DAY]["inserted"] == loaded.truth_by_day[dt.date(2026, 3, 1)]
    assert {dt.date.fromisoformat(key) for key in ranged} == built - {dt.date(2026, 3, 1)}
    # One run covers the range, and each day's event carries the run's totals.
    assert {figures["inserted"] for figures in ranged.values()} == {
        sum(loaded.truth_by_day[dt.date.fromisoformat(key)] for key in ranged)
    }


def test_rerun_changes_nothing_and_says_so(hub: Hub) -> None:
    loaded = hub.loaded
    assert loaded is not None and loaded.rerun.success and all(run.success for run in loaded.card_days_rerun)
    md = metadata(loaded.rerun)
    assert set(md) == set(ASSETS) - {"unified/card_transactions"}
    for key in RAW_KEYS:
        assert (md[key]["landed"], md[key]["quarantined"], md[key]["deleted_at_source"]) == (0, 0, 0), key
    for key in set(md) - set(RAW_KEYS) - {"unified/persons"}:
        assert (md[key]["inserted"], md[key]["updated"]) == (0, 0), key
    assert md["unified/persons"]["identities_resolved"] == 0
    assert md["unified/persons"]["persons_created"] == md["unified/persons"]["persons_updated"] == 0
    (ranged,) = (partition_metadata(run) for run in loaded.card_days_rerun)
    for partition, figures in ranged.items():
        assert figures["inserted"] == 0 and figures["unchanged"] > 0, partition
    assert loaded.counts_after_rerun == loaded.counts


# ---------------------------------------------------------------------------- 2. incremental
def test_incremental_run_picks_up_exactly_the_changes(hub: Hub) -> None:
    mark = raw_mark(hub.engine)
    before = {stream: unified_rows(hub.engine, system, stream) for system, stream in CHANGING}
    changes = apply_changes(hub.cluster, 40, seed=2024)
    expected = expected_keys(changes)
    assert all(expected.values()), "the seed must change every stream the knob can change"
    wait_until_served(changes)

    result = hub.sync()
    # The schedule that follows each sync builds yesterday's and today's transactions.
    days = [hub.scheduled("card_days_current", request) for request in tick(card_days_current, defs=hub.defs)]
    assert result.success and all(day.success for day in days)

    landed = landed_since(hub.engine, mark)
    for system, stream in CHANGING:
        # Lists, not sets: each change lands once, however many times its record changed.
        assert sorted(landed.pop((system, stream), [])) == sorted(expected[(system, stream)]), stream
    assert landed == {}, "nothing else may land"

    md = metadata(result)
    for system, stream in CHANGING:
        after = unified_rows(hub.engine, system, stream)
        changed = {key for key, state in after.items() if before[stream].get(key) != state}
        assert changed == expected[(system, stream)], stream
        if stream in UNIFIED_OF:
            figures = md[UNIFIED_OF[stream]]
            assert figures["inserted"] + figures["updated"] == len(expected[(system, stream)]), stream
    new_students = sum(c["kind"] == "new_student" for c in changes if c["stream"] == "students")
    assert md["unified/students"]["inserted"] == new_students
    assert out_of_sync(hub) == {}


def test_a_transfer_recorded_days_after_it_was_paid_lands_once(hub: Hub) -> None:
    mark = raw_mark(hub.engine)
    changes = apply_changes(hub.cluster, 3, seed=41, kinds=["late_payment"])
    expected = expected_keys(changes)
    late = expected[("finance", "payments")]
    assert len(late) == 3

    result = hub.sync()
    assert result.success
    landed = landed_since(hub.engine, mark)
    assert sorted(landed.pop(("finance", "payments"))) == sorted(late)
    assert sorted(landed.pop(("finance", "fee_bills"))) == sorted(expected[("finance", "fee_bills")])
    assert landed == {}, "the payments read again within the posting lag land nothing"
    rows = unified_rows(hub.engine, "finance", "payments")
    assert late <= set(rows) and out_of_sync(hub) == {}

    settled = raw_mark(hub.engine)
    assert hub.sync().success and raw_mark(hub.engine) == settled, "a second read of them lands nothing"


# ---------------------------------------------------------------------------- 3. deletions
def reconcile_config(keys: list[str]) -> dict[str, Any]:
    """The nightly reconcile's run config, cut down to the raw assets among `keys`."""
    ops = {ASSETS[key].op.name for key in keys}
    return {"ops": {op: config for op, config in reconcile_run_config()["ops"].items() if op in ops}}


def academic_keys(cluster: SimulatorCluster, stream: str, page_size: int, cursor: str | None = None) -> list[str]:
    source = AcademicSource(http_settings(cluster, "academic"), cluster.settings.academic_api_key, page_size=page_size)
    with source:
        return [record.key for batch in source.read(stream, cursor) for record in batch.records if record.key]


@pytest.mark.parametrize(
    ("selection", "removed"),
    [(range(10), [0, 3, 4, 9]), (range(10), []), (range(3), [0, 1, 2]), ([2, 5, 7, 11], [1, 5, 11, 12])],
)
def test_without_pages_a_selection_minus_the_removed(selection: Sequence[int], removed: list[int]) -> None:
    expected = [i for i in selection if i not in removed]  # removed indices the selection lacks change nothing
    view = Without(selection, removed)
    assert len(view) == len(expected) and list(view) == expected
    assert [view[n] for n in range(-len(expected), 0)] == expected
    assert all(view[start : start + 3] == expected[start : start + 3] for start in range(len(expected) + 1))
    with pytest.raises(IndexError):
        view[len(expected)]


def test_a_deleted_student_is_gone_from_every_page_and_count() -> None:
    cluster = start_cluster(PIPELINE_STUDENTS)  # its own: deletions would shift the hub's world
    try:
        world = cluster.world
        with AcademicSource(http_settings(cluster, "academic"), cluster.settings.academic_api_key) as source:
            cursor = list(source.read("students"))[-1].cursor
        gone = apply_changes(cluster, 3, seed=4, kinds=["student_deleted"])
        deleted = world.changes.deleted_students
        assert len(deleted) == 3 and {c["key"] for c in gone if c["stream"] == "students"} == {
            world.student_no(i) for i in deleted
        }
        students = [world.student_no(i) for i in range(world.student_count) if i not in deleted]
        grades = [
            f"{g.student_no}|{g.course_code}|{g.term}"
            for i in range(world.student_count)
            if i not in deleted
            for g in world.grades_of(i)
        ]
        assert {c["key"] for c in gone if c["stream"] == "grades"} == {
            f"{g.student_no}|{g.course_code}|{g.term}" for i in deleted for g in world.grades_of(i)
        }
        # Page boundaries fall elsewhere with every size: each must skip exactly the deleted.
        for page_size in (7, 97, 1000):
            assert academic_keys(cluster, "students", page_size) == students, page_size
        assert academic_keys(cluster, "grades", 97) == grades
        headers = {"X-API-Key": cluster.settings.academic_api_key}
        last_page = httpx.get(
            f"{cluster.urls['academic']}/api/v1/students", params={"pageSize": 7, "pageNo": 9}, headers=headers
        ).json()["data"]
        assert last_page["total"] == len(students) and len(last_page["list"]) == len(students) - 8 * 7
        assert academic_keys(cluster, "students", 7, cursor) == []  # an incremental pull cannot see it

        back = apply_changes(cluster, 1, seed=1, kinds=["student_restored"])
        (restored,) = [c["key"] for c in back if c["stream"] == "students"]
        assert academic_keys(cluster, "students", 7, cursor) == [restored]
        assert restored in academic_keys(cluster, "students", 1000) and len(world.changes.deleted_students) == 2
    finally:
        cluster.stop()


def test_nightly_reconcile_marks_deletions_and_restores(hub: Hub) -> None:
    gone = apply_changes(hub.cluster, 2, seed=99, kinds=["student_deleted"])
    assert {c["kind"] for c in gone} == {"student_deleted"} and all(c["deleted"] for c in gone)
    gone_students = {c["key"] for c in gone if c["stream"] == "students"}
    gone_grades = {c["key"] for c in gone if c["stream"] == "grades"}
    assert len(gone_students) == 2 and gone_grades  # their grades went with them
    already = deleted_keys(hub.engine)
    academic = ["raw/academic/students", "raw/academic/grades", "unified/students", "unified/grades"]

    # An incremental pull cannot see a deletion: nothing lands, nothing is marked.
    mark = raw_mark(hub.engine)
    assert hub.materialize(academic).success
    assert landed_since(hub.engine, mark) == {} and deleted_keys(hub.engine) == already

    result = hub.reconcile()  # the whole nightly run, as its schedule asks for it
    assert result.success
    md = metadata(result)
    for key in RAW_KEYS:
        assert md[key]["landed"] == 0, key
        expected = {"raw/academic/students": 2, "raw/academic/grades": len(gone_grades)}.get(key, 0)
        assert md[key]["deleted_at_source"] == expected, key
    # Every stream with a unified entity of its own is reconciled; events are never deleted.
    reconciled = {f"raw/{source}/{stream}" for source, stream in MAPPINGS} - {"raw/card/card_transactions"}
    assert {key for key in RAW_KEYS if md[key]["mode"] == "reconcile"} == reconciled
    marked = deleted_keys(hub.engine)
    newly = {table: keys - already.get(table, set()) for table, keys in marked.items()}
    assert {table: keys for table, keys in newly.items() if keys} == {"student": gone_students, "grade": gone_grades}
    # Marked, not dropped: the rows stay for whatever refers to them.
    assert gone_students <= set(unified_rows(hub.engine, "academic", "students"))
    assert out_of_sync(hub) == {}

    back = apply_changes(hub.cluster, 1, seed=5, kinds=["student_restored"])
    (restored,) = [c["key"] for c in back if c["stream"] == "students"]
    restored_grades = {c["key"] for c in back if c["stream"] == "grades"}
    assert restored in gone_students and not any(c["deleted"] for c in back)
    # The restore is an edit of the student, so an incremental run brings the row back...
    assert hub.materialize(academic).success
    assert restored not in deleted_keys(hub.engine)["student"]
    # ...but the grades come back as they were, which only a full pull can see.
    assert restored_grades <= deleted_keys(hub.engine)["grade"]
    result = hub.materialize(academic, run_config=reconcile_config(academic))
    assert result.success
    assert metadata(result)["raw/academic/grades"]["deleted_at_source"] == 0  # nothing newly gone
    marked = deleted_keys(hub.engine)
    assert marked["student"] - already.get("student", set()) == gone_students - {restored}
    assert marked["grade"] - already.get("grade", set()) == gone_grades - restored_grades


def test_a_record_a_sync_lands_beside_a_reconcile_is_not_marked_deleted(hub: Hub) -> None:
    """A student enrolled after the nightly pull passed their place, landed and unified by a sync
    that ran while the pull was still landing: not in the pull, and not gone from the source."""
    settings, api_key = http_settings(hub.cluster, "academic"), hub.cluster.settings.academic_api_key
    students = MAPPINGS[("academic", "students")]
    already = deleted_keys(hub.engine).get("student", set())
    enrolled: list[dict[str, Any]] = []

    class PullThenSyncBeside:
        name = "academic"

        def read(self, stream: str, cursor: str | None = None) -> Iterator[Batch]:
            with AcademicSource(settings, api_key, page_size=1000) as source:
                pulled = list(source.read(stream, cursor))
            enrolled.extend(apply_changes(hub.cluster, 1, seed=12, kinds=["new_student"]))
            with AcademicSource(settings, api_key) as source:
                land_stream(hub.engine, source, "students", "sync-beside")
            with hub.engine.begin() as connection:
                unify(connection, students, "sync-beside")
            yield from pulled

    result = land_stream(
        hub.engine,
        PullThenSyncBeside(),
        "students",
        "reconcile-beside",
        reconcile=lambda connection, keys: mark_deleted(connection, students, keys),
    )
    (student,) = [change["key"] for change in enrolled if change["stream"] == "students"]
    assert student in unified_rows(hub.engine, "academic", "students")
    assert result.deleted == 0 and deleted_keys(hub.engine).get("student", set()) == already
    # The next full pull finds the student, and still nothing is gone.
    assert hub.materialize(["raw/academic/students"], run_config=reconcile_config(["raw/academic/students"])).success
    assert deleted_keys(hub.engine).get("student", set()) == already
    assert unified_rows(hub.engine, "academic", "students")[student][-1] is None  # its deleted_at
    # The rest of what the new student brought (bills, a card) comes with the next sync.
    wait_until_served(enrolled)
    assert hub.sync().success and out_of_sync(hub) == {}


# ---------------------------------------------------------------------------- 4. faults
def test_faulty_sources_are_retried_and_nothing_is_lost(hub: Hub, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="campushub.connectors.base")
    mark = raw_mark(hub.engine)
    knobs = {"error_rate": 0.1, "rate_limit_rate": 0.1, "retry_after": 0, "drop_rate": 0.1, "truncate_rate": 0.1}
    with faults(hub.cluster, ["academic", "hr", "finance", "card"], **knobs):
        changes = apply_changes(hub.cluster, 30, seed=77)
        wait_until_served(changes)
        # A full pull of everything through the faults: a page lost on the way would be
        # records marked deleted, a page served twice would be records landed twice.
        result = hub.reconcile()
    assert result.success
    md = metadata(result)
    for key in RAW_KEYS:
        assert (md[key]["deleted_at_source"], md[key]["quarantined"]) == (0, 0), key
    landed = landed_since(hub.engine, mark)
    expected = expected_keys(changes)
    for system, stream in CHANGING:
        assert sorted(landed.pop((system, stream), [])) == sorted(expected[(system, stream)]), stream
    assert landed == {}
    retries = [r.getMessage() for r in caplog.records if "; retry " in r.getMessage()]
    # The faults did hit (some 40% of ~20 requests): what succeeded, succeeded by retrying.
    assert retries and {message.split(":")[0] for message in retries} <= {"academic", "hr", "finance", "card"}
    assert out_of_sync(hub) == {}


def test_source_failing_every_page_leaves_the_hub_untouched(hub: Hub) -> None:
    changes = apply_changes(hub.cluster, 3, seed=8, kinds=["student_phone"])
    keys = ["raw/academic/students", "unified/students"]
    before = ledger(hub.engine, "academic", "students")
    with faults(hub.cluster, ["academic"], truncate_rate=1.0):
        result = hub.materialize(keys, raise_on_error=False)
    assert not result.success
    assert result.is_node_failed("raw__academic__students")
    assert not result.is_node_success("unified__students")  # never built on a failed pull
    assert ledger(hub.engine, "academic", "students") == before
    with hub.engine.connect() as connection:
        status, error = connection.execute(
            select(SyncRun.status, SyncRun.error).where(
                SyncRun.run_id == result.run_id, SyncRun.source == "academic", SyncRun.stream == "students"
            )
        ).one()
    assert status == "failed"
    assert error.startswith(f"MalformedPageError: academic: gave up after {FAST_RETRY.attempts} attempts")

    # The source recovers: the next run picks up exactly what the failed one could not.
    mark = raw_mark(hub.engine)
    assert hub.materialize(keys).success
    assert sorted(landed_since(hub.engine, mark)[("academic", "students")]) == sorted({c["key"] for c in changes})
    assert out_of_sync(hub) == {}


# ---------------------------------------------------------------------------- 5. malformed
MALFORMED_REASONS = {
    "students": {
        "bad_check_digit": "SFZJH: id number: check digit does not match",
        "impossible_date": "CSRQ: '2005-02-30' is not a valid date (%Y-%m-%d)",
        "missing_key": "missing XH",
        "unknown_code": "XBM: unknown code '7'",
    },
    "staff": {
        "bad_check_digit": "idNumber: id number: check digit does not match",
        "impossible_date": "birthDate: '1985/02/30' is not a valid date (%Y/%m/%d)",
        "missing_key": "missing staffNo",
        "unknown_code": "gender: unknown code '未知'",
    },
}


def served_and_broken(world: World, stream: str, rate: float) -> tuple[list[str], list[tuple[str | None, str]]]:
    """What the source serves: the keys of good records, and (key, reason) of broken ones
    (None for the key a record lost), from the same pure function the stand-in breaks them by."""
    if stream == "students":
        indices = [i for i in range(world.student_count) if not world.changes.is_deleted_student(i)]
        key_of, plan = (lambda i: world.student(i).student_no), academic_sim.CORRUPTIBLE["students"]
    else:
        indices = list(range(world.staff_count))
        key_of, plan = (lambda i: world.staff(i).staff_no), hr_sim.CORRUPTIBLE["staff"]
    good: list[str] = []
    broken: list[tuple[str | None, str]] = []
    for index in indices:
        kind = malformed_kind(world.seed, stream, index, rate, plan)
        if kind is None:
            good.append(key_of(index))
        else:
            broken.append((None if kind == "missing_key" else key_of(index), MALFORMED_REASONS[stream][kind]))
    return good, broken


def test_malformed_records_are_quarantined_and_the_rest_of_the_page_loads(hub: Hub, tmp_path: Path) -> None:
    rate = 0.25
    keys = ["raw/academic/students", "unified/students", "raw/hr/staff", "unified/staff"]
    # A database of its own: the load from empty is what is under test.
    with fresh_database(hub.kind, tmp_path) as engine, faults(hub.cluster, ["academic", "hr"], malformed_rate=rate):
        result = materialize(
            [ASSETS[k] for k in keys], resources=resources_for(hub.cluster, url_of(engine)), instance=hub.instance
        )
        assert result.success
        md = metadata(result)
        with engine.connect() as connection:
            quarantined = connection.execute(
                select(QuarantinedRecord.stream, QuarantinedRecord.source_key, QuarantinedRecord.reason)
            ).all()
        landed = landed_since(engine, 0)
        counts = live_counts(engine)

    for source, stream in [("academic", "students"), ("hr", "staff")]:
        good, broken = served_and_broken(hub.world, stream, rate)
        assert good and any(key is None for key, _ in broken), "the rate must break records, keys and all"
        figures = md[f"raw/{source}/{stream}"]
        # One page holds both: the broken records do not hold the good ones back.
        assert figures["pages"] == 1 and figures["fetched"] == len(good) + len(broken)
        assert figures["quarantined"] == len(broken) and figures["landed"] == len(good)
        assert figures["quarantine_reasons"] == dict(Counter(reason.split(":")[0] for _, reason in broken))
        assert sorted(landed[(source, stream)]) == sorted(good)
        assert counts[stream] == len(good)
        rows = [(None if key.startswith("#") else key, reason) for s, key, reason in quarantined if s == stream]
        assert Counter(rows) == Counter(broken)


def test_reconcile_does_not_delete_records_that_arrive_malformed(hub: Hub, tmp_path: Path) -> None:
    keys = ["raw/academic/students", "unified/students"]
    with fresh_database(hub.kind, tmp_path) as engine:
        resources = resources_for(hub.cluster, url_of(engine))
        assert materialize([ASSETS[k] for k in keys], resources=resources, instance=hub.instance).success
        with faults(hub.cluster, ["academic"], malformed_rate=0.25):
            result = materialize(
                [ASSETS[k] for k in keys],
                resources=resources,
                instance=hub.instance,
                run_config=reconcile_config(keys),
            )
        assert result.success
        assert metadata(result)["raw/academic/students"]["quarantined"] > 0
        # Present at the source, only broken on the way: not gone. And a broken record without
        # its key could be any student: the run says it could not decide on deletions.
        landed = metadata(result)["raw/academic/students"]
        assert landed["deleted_at_source"] == 0
        assert landed["deletions_undecidable_keyless_records"] > 0
        assert deleted_keys(engine) == {}


# ---------------------------------------------------------------------------- 6. the code location
def definitions_snapshot(defs: Definitions) -> dict[str, Any]:
    repository = defs.get_repository_def()
    graph = repository.asset_graph
    assets = {}
    for key in sorted(graph.get_all_asset_keys(), key=lambda k: k.to_user_string()):
        node = graph.get(key)
        assets[key.to_user_string()] = {
            "group": node.group_name,
            "deps": sorted(parent.to_user_string() for parent in node.parent_keys),
            "partitions": str(node.partitions_def) if node.partitions_def else None,
            "automated": node.automation_condition is not None,
        }
    return {
        "assets": assets,
        "checks": sorted(f"{k.asset_key.to_user_string()}:{k.name}" for k in graph.asset_check_keys),
        "jobs": sorted(job.name for job in repository.get_all_jobs() if not job.name.startswith("__")),
        "schedules": {
            s.name: {"cron": s.cron_schedule, "timezone": s.execution_timezone, "job": s.job_name}
            for s in sorted(repository.schedule_defs, key=lambda s: s.name)
        },
        "sensors": {s.name: type(s).__name__ for s in sorted(repository.sensor_defs, key=lambda s: s.name)},
        "resources": sorted(defs.resources or {}),
    }


def code_location() -> Definitions:
    """The Definitions `dagster dev -w workspace.yaml` loads, found the way it finds them."""
    (entry,) = yaml.safe_load(WORKSPACE_FILE.read_text())["load_from"]
    module = importlib.import_module(entry["python_module"]["module_name"])
    (defs,) = [value for value in vars(module).values() if isinstance(value, Definitions)]
    return defs


def test_code_location_loads_and_registers_everything() -> None:
    defs = code_location()
    Definitions.validate_loadable(defs)
    snapshot = definitions_snapshot(defs)
    if os.environ.get("UPDATE_SNAPSHOTS"):
        SNAPSHOT_FILE.parent.mkdir(exist_ok=True)
        SNAPSHOT_FILE.write_text(json.dumps(snapshot, indent=2, ensure_ascii=False) + "\n")
    assert SNAPSHOT_FILE.exists(), "no snapshot yet: run with UPDATE_SNAPSHOTS=1"
    assert snapshot == json.loads(SNAPSHOT_FILE.read_text()), (
        "the code location changed; if on purpose, regenerate with UPDATE_SNAPSHOTS=1 and review the diff"
    )
    # Every asset the tests run is one the code location serves, and vice versa.
    assert set(snapshot["assets"]) == set(ASSETS)


def test_schedules_ask_for_the_right_runs() -> None:
    at = dt.datetime(2026, 9, 2, 2, 0, tzinfo=CST)

    (incremental,) = tick(every_15_minutes, at)
    assert incremental.tags["campushub/mode"] == "incremental" and not incremental.run_config

    (nightly,) = tick(nightly_reconcile, at)
    assert nightly.tags["campushub/mode"] == "reconcile"
    ops = nightly.run_config["ops"]
    assert ops == reconcile_run_config()["ops"]
    assert sorted(ops) == sorted(ASSETS[key].op.name for key in RAW_KEYS)
    assert all(op == {"config": {"reconcile": True}} for op in ops.values())
    # The job as the code location defines it, with resources that need no environment.
    bound = Definitions(assets=[*RAW_ASSETS, *ALL_UNIFIED], jobs=JOBS, resources=resources_for_nothing())
    reconcile_job = bound.get_job_def("reconcile")
    validate_run_config(reconcile_job, nightly.run_config)  # raises if the job would refuse it
    assert {key.to_user_string() for key in reconcile_job.asset_layer.executable_asset_keys} >= set(RAW_KEYS)

    # Just after midnight, yesterday still gets its late transactions.
    requests = tick(card_days_current, dt.datetime(2026, 9, 2, 0, 5, tzinfo=CST))
    assert [r.partition_key for r in requests] == ["2026-09-01", "2026-09-02"]
    assert len({r.run_key for r in requests}) == 2
    later = tick(card_days_current, dt.datetime(2026, 9, 2, 0, 20, tzinfo=CST))
    assert {r.run_key for r in later}.isdisjoint(r.run_key for r in requests)  # a new tick is a new run
    assert CARD_DAYS.get_first_partition_key() == "2026-03-01"
