# Dagster reads these signatures at definition time: no `from __future__ import annotations` here.
"""Raw landing assets: one per source stream, grouped by source, keyed `raw/<source>/<stream>`.

Each run pulls its stream from the stored cursor (everything, in a reconcile run), lands what
changed, quarantines what is broken and moves the cursor — in one database transaction.
A reconcile run also marks unified records the source no longer has as deleted.
"""

import datetime as dt
from collections.abc import Callable
from typing import Any

from dagster import (
    AssetExecutionContext,
    AssetsDefinition,
    Config,
    FreshnessPolicy,
    MaterializeResult,
    MetadataValue,
    asset,
)

from campushub.models.ingest import land_stream
from campushub.models.sources import FRESHNESS, STREAMS
from campushub.models.unify import MAPPINGS, mark_deleted
from campushub.orchestration.resources import DatabaseResource

# Event streams: records never change once sent, and each belongs to the day it happened.
APPEND_ONLY = {("card", "card_transactions")}
EVENT_DAY: dict[tuple[str, str], Callable[[dict[str, Any]], dt.date]] = {
    ("card", "card_transactions"): lambda payload: dt.datetime.strptime(payload["txn_time"][:8], "%Y%m%d").date(),
}


class SyncConfig(Config):
    reconcile: bool = False  # pull everything and mark what the source no longer has


def run_id_of(context: AssetExecutionContext) -> str:
    return context.run.run_id


def raw_asset(source: str, stream: str) -> AssetsDefinition:
    append_only = (source, stream) in APPEND_ONLY
    event_day = EVENT_DAY.get((source, stream))

    @asset(
        key=["raw", source, stream],
        group_name=source,
        pool=f"{source}_api",  # one source API is never hammered by parallel runs
        required_resource_keys={source, "database"},
        freshness_policy=FreshnessPolicy.time_window(fail_window=FRESHNESS[source]),
        kinds={"python", "sql"},
        description=f"{stream} from the {source} system, as received (raw landing).",
    )
    def _raw(context: AssetExecutionContext, config: SyncConfig) -> MaterializeResult:
        run_id = run_id_of(context)
        database: DatabaseResource = context.resources.database
        mapping = MAPPINGS.get((source, stream))
        reconcile = None
        if config.reconcile and not append_only and mapping is not None:
            reconcile = lambda connection, keys: mark_deleted(connection, mapping, keys)  # noqa: E731
        with getattr(context.resources, source).open() as connector:
            result = land_stream(
                database.engine,
                connector,
                stream,
                run_id,
                append_only=append_only,
                event_day=event_day,
                reconcile=reconcile,
            )
        metadata: dict[str, Any] = result.metadata()
        if result.quarantine_reasons:
            metadata["quarantine_reasons"] = MetadataValue.json(result.quarantine_reasons)
        if result.landed == 0 and result.deleted == 0:
            context.log.info("no change at the source since the last sync")
        return MaterializeResult(metadata=metadata)

    return _raw


RAW_ASSETS = [raw_asset(source, stream) for source, streams in STREAMS.items() for stream in streams]
