"""The hub's main job, run in-process: every source synced into the unified layer.

The same assets the schedules run, executed once, in three runs:
1. landing — every raw asset — and the card accounts, which is all the card days build on;
2. the rest of the unified layer (the `sync` job's selection but for those) and
3. every day of card transactions in one partition-range run,
2 and 3 side by side on PostgreSQL: the unified layer's work is mostly this process's Python
and the card days' mostly the database's, so together they use the machine's second core,
which either alone leaves idle. On SQLite, one writer: one after the other. Each run carries
its assets' blocking checks. Then fresh planner statistics for what was just bulk-loaded.
Uses the Dagster instance in $DAGSTER_HOME when set, so the runs show in the Dagster UI.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from dagster import (
    AssetChecksDefinition,
    AssetCheckSeverity,
    AssetsDefinition,
    DagsterInstance,
    ExecuteInProcessResult,
    materialize,
)
from dagster._core.storage.tags import ASSET_PARTITION_RANGE_END_TAG, ASSET_PARTITION_RANGE_START_TAG
from sqlalchemy.engine import make_url

from campushub.models.engine import database_url, make_engine, refresh_statistics
from campushub.orchestration.assets.raw import RAW_ASSETS
from campushub.orchestration.assets.unified import CARD_DAYS, UNIFIED_ASSETS, card_transactions, persons
from campushub.orchestration.checks import ASSET_CHECKS
from campushub.orchestration.definitions import RESOURCES

SHOWN = (
    *("fetched", "landed", "quarantined", "inserted", "updated"),
    *("deleted_at_source", "persons_created", "conflicts_opened"),
)
CARD_ACCOUNTS = next(a for a in UNIFIED_ASSETS if a.key.path == ["unified", "card_accounts"])
LANDING = [*RAW_ASSETS, CARD_ACCOUNTS]
UNIFIED_REST = [*(a for a in UNIFIED_ASSETS if a is not CARD_ACCOUNTS), persons]


def checks_on(assets: Sequence[AssetsDefinition]) -> list[AssetChecksDefinition]:
    """The checks of `assets` (blocking, and the warnings): they run in the run that builds them."""
    keys = {asset.key for asset in assets}
    return [c for c in ASSET_CHECKS if any(k.asset_key in keys for k in c.check_keys)]


def sync_and_card_days(
    instance: DagsterInstance,
    days: Sequence[str] | None = None,
    run_config: dict[str, Any] | None = None,
    days_instance: DagsterInstance | None = None,
) -> list[ExecuteInProcessResult]:
    """The three runs (see above); their results in order — only landing's when it failed.

    `days`: the first and last card day, all when None. `days_instance`: where the card-day run
    is recorded, `instance` by default — but an in-memory instance keeps its runs in one
    database connection, which two runs at once cannot share: side by side, the card days then
    get one of their own, and their checks compare with that one's earlier evaluations."""

    def run(
        assets: Sequence[AssetsDefinition], tags: dict[str, str] | None = None, on: DagsterInstance = instance
    ) -> ExecuteInProcessResult:
        return materialize(
            [*assets, *checks_on(assets)],
            resources=RESOURCES,
            instance=on,
            run_config=run_config,
            tags=tags,
            raise_on_error=False,
        )

    days = days or CARD_DAYS.get_partition_keys()
    by_day = {ASSET_PARTITION_RANGE_START_TAG: days[0], ASSET_PARTITION_RANGE_END_TAG: days[-1]}
    landing = run(LANDING)
    if not landing.success:
        return [landing]
    if make_url(database_url()).get_backend_name() == "sqlite":  # one writer
        unified = run(UNIFIED_REST)
        return [landing, unified, run([card_transactions], by_day, days_instance or instance)]
    if days_instance is None:
        days_instance = DagsterInstance.ephemeral() if instance.is_ephemeral else instance
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="card-days") as side:
        card_days = side.submit(run, [card_transactions], by_day, days_instance)
        unified = run(UNIFIED_REST)
        return [landing, unified, card_days.result()]


def run_main_job(say: Callable[[str], None]) -> bool:
    instance = DagsterInstance.get() if os.environ.get("DAGSTER_HOME") else DagsterInstance.ephemeral()
    results = sync_and_card_days(instance)
    failed_checks = sum(_report(result, say) for result in results)
    succeeded = len(results) == 3 and all(result.success for result in results) and not failed_checks
    say("main job: " + ("succeeded" if succeeded else "FAILED — see the errors above"))
    if succeeded:
        engine = make_engine()
        refresh_statistics(engine)
        engine.dispose()
    return succeeded


def _report(result: ExecuteInProcessResult, say: Callable[[str], None]) -> int:
    """What each asset of the run did, and its checks; returns how many checks failed."""
    by_asset: dict[str, list[Any]] = {}
    for event in result.get_asset_materialization_events():
        by_asset.setdefault("/".join(event.materialization.asset_key.path), []).append(event.materialization)
    for key, materializations in by_asset.items():
        # A partition-range run reports its totals once per partition: show them once.
        figures = {k: v.value for k, v in materializations[0].metadata.items() if k in SHOWN and v.value}
        described = ", ".join(f"{k} {v:,}" for k, v in figures.items()) or "no change"
        days = f" over {len(materializations)} days" if materializations[0].partition else ""
        say(f"{key:32} {described}{days}")
    evaluations = result.get_asset_check_evaluations()
    failing = [e for e in evaluations if not e.passed]
    # A warning (`source_keys`, `phones`) is reported, but fails nothing: it holds nothing back.
    failed = [e for e in failing if e.severity == AssetCheckSeverity.ERROR]
    warned = [e for e in failing if e.severity != AssetCheckSeverity.ERROR]
    if evaluations:
        names = "; ".join(f"{'/'.join(e.asset_key.path)}: {e.check_name}" for e in failing)
        tally = f"{len(evaluations) - len(failing)} passed, {len(failed)} failed" + (
            f", {len(warned)} warned" if warned else ""
        )
        say(f"quality checks: {tally}" + (f" ({names})" if names else ""))
    return len(failed)
