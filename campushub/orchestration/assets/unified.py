"""Unified assets: one per entity, keyed `unified/<entity>`, grouped with their source.

Each reads the raw records landed since its watermark, normalises them into its table and
links references, in one transaction. They build automatically when what they depend on has
been updated — unless a blocking check on it failed: nothing is built on data known bad.
"""

import datetime as dt
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from dagster import (
    AssetDep,
    AssetExecutionContext,
    AssetKey,
    AssetsDefinition,
    AutomationCondition,
    BackfillPolicy,
    DailyPartitionsDefinition,
    MaterializeResult,
    MetadataValue,
    asset,
)
from sqlalchemy import Connection

from campushub.models.engine import refresh_grown_statistics
from campushub.models.identity import resolve
from campushub.models.unify import MAPPINGS, UnifyResult, link_references, unify, unify_hr_departments
from campushub.orchestration.assets.raw import run_id_of
from campushub.orchestration.resources import DatabaseResource

# Build when upstream data changed, never on top of a failed blocking check.
BUILD_ON_FRESH_GOOD_DATA = AutomationCondition.eager() & AutomationCondition.all_deps_blocking_checks_passed()

CARD_DAYS = DailyPartitionsDefinition(start_date="2026-03-01", timezone="Asia/Shanghai", end_offset=1)
# How a partition-range run builds its days. PostgreSQL: a day a transaction, two at a time
# (the mapping is the server's work, and two backends keep both cores of a small server busy).
# SQLite: one writer, and a commit writes out every page the transaction touched — a day's
# events land all over the card-number index, so a transaction per day wrote most of that index
# again each day (card days 17 µs an event; a week a transaction, 12).
CARD_DAY_WORKERS = 2
SQLITE_DAYS_PER_TRANSACTION = 7


def _metadata(result: UnifyResult) -> dict[str, Any]:
    metadata: dict[str, Any] = result.metadata()
    if result.reasons:
        metadata["quarantine_reasons"] = MetadataValue.json(result.reasons)
    return metadata


# One writer of the unified tables at a time, across runs (deploy/dagster.yaml limits every pool
# to 1): a run's checks then see everything stamped before they began, committed, which is what
# lets a columns check validate only the rows written since its last passing evaluation.
UNIFIED_POOL = "unified_layer"


def unified_asset(
    entity: str,
    group: str,
    streams: Sequence[tuple[str, str]],
    deps: Sequence[str] = (),
    extra: Callable[[Connection, str], UnifyResult] | None = None,
    description: str = "",
) -> AssetsDefinition:
    """An entity built from the raw streams it is made of (and after the entities it refers to)."""

    @asset(
        key=["unified", entity],
        group_name=group,
        deps=[AssetKey(["raw", *stream]) for stream in streams] + [AssetKey(["unified", d]) for d in deps],
        automation_condition=BUILD_ON_FRESH_GOOD_DATA,
        kinds={"python", "sql"},
        description=description,
        pool=UNIFIED_POOL,
    )
    def _unified(context: AssetExecutionContext, database: DatabaseResource) -> MaterializeResult:
        run_id = run_id_of(context)
        total = UnifyResult(entity)
        with database.engine.begin() as connection:
            for source, stream in streams:
                total.add(unify(connection, MAPPINGS[(source, stream)], run_id))
            if extra is not None:
                total.add(extra(connection, run_id))
            link_references(connection)
            refresh_grown_statistics(connection)  # what depends on this plans with them
        if total.inserted == total.updated == 0:
            context.log.info("nothing changed")
        return MaterializeResult(metadata=_metadata(total))

    return _unified


UNIFIED_ASSETS = [
    unified_asset(
        "org_units",
        "academic",
        [("academic", "colleges")],
        extra=unify_hr_departments,
        description="The university, its colleges (academic affairs and HR codes on one row) and offices.",
    ),
    unified_asset("majors", "academic", [("academic", "majors")], deps=["org_units"]),
    unified_asset("classes", "academic", [("academic", "classes")], deps=["majors"]),
    unified_asset("courses", "academic", [("academic", "courses")]),
    unified_asset("students", "academic", [("academic", "students")], deps=["classes"]),
    unified_asset("grades", "academic", [("academic", "grades")], deps=["students", "courses"]),
    unified_asset("staff", "hr", [("hr", "staff")], deps=["org_units"]),
    unified_asset("fee_bills", "finance", [("finance", "fee_bills")], deps=["students"]),
    unified_asset("payments", "finance", [("finance", "payments")], deps=["fee_bills"]),
    unified_asset("card_accounts", "card", [("card", "card_accounts")]),
]


@asset(
    key=["unified", "persons"],
    group_name="identity",
    deps=[AssetKey(["unified", e]) for e in ("students", "staff", "card_accounts")],
    automation_condition=BUILD_ON_FRESH_GOOD_DATA,
    kinds={"python", "sql"},
    description="The person master: one golden record per human being, with provenance and conflicts.",
    pool=UNIFIED_POOL,
)
def persons(context: AssetExecutionContext, database: DatabaseResource) -> MaterializeResult:
    with database.engine.begin() as connection:
        result = resolve(connection)
        refresh_grown_statistics(connection)
    return MaterializeResult(metadata=result.metadata())


@asset(
    key=["unified", "card_transactions"],
    group_name="card",
    partitions_def=CARD_DAYS,
    backfill_policy=BackfillPolicy.multi_run(max_partitions_per_run=31),
    deps=[
        AssetDep(AssetKey(["raw", "card", "card_transactions"])),
        AssetDep(AssetKey(["unified", "card_accounts"])),
    ],
    automation_condition=BUILD_ON_FRESH_GOOD_DATA,
    kinds={"python", "sql"},
    description="Card transactions by day (Asia/Shanghai), rebuilt from raw landing per partition.",
)
def card_transactions(context: AssetExecutionContext, database: DatabaseResource) -> MaterializeResult:
    run_id = run_id_of(context)
    window = context.partition_time_window
    # A multi-partition backfill run covers several days: rebuilt a day or a week a transaction.
    days = [window.start.date() + dt.timedelta(days=n) for n in range((window.end - window.start).days)]
    engine = database.engine

    def build(some_days: list[dt.date]) -> UnifyResult:
        built = UnifyResult("card.card_transactions")
        with engine.begin() as connection:
            for day in some_days:
                built.add(unify(connection, MAPPINGS[("card", "card_transactions")], run_id, event_day=day))
        return built

    if engine.dialect.name == "postgresql":
        workers, per_transaction = CARD_DAY_WORKERS, 1
    else:
        workers, per_transaction = 1, SQLITE_DAYS_PER_TRANSACTION
    batches = [days[start : start + per_transaction] for start in range(0, len(days), per_transaction)]
    total = UnifyResult("card.card_transactions")
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="card-day") as pool:
        for result in pool.map(build, batches):
            total.add(result)
    # Once the days are in, not per day: the two workers' day transactions would queue behind
    # each other's ANALYZE until commit.
    with engine.begin() as connection:
        refresh_grown_statistics(connection, {"card_transaction": total.inserted})
    return MaterializeResult(metadata=_metadata(total))


ALL_UNIFIED = [*UNIFIED_ASSETS, persons, card_transactions]
