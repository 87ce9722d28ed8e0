"""The hub's main job, run in-process: every source synced into the unified layer.

The same assets the schedules run, executed once: raw landing and the unified layer (the
`sync` job's selection), then every day of card transactions in one partition-range run, then
fresh planner statistics for what was just bulk-loaded.
Uses the Dagster instance in $DAGSTER_HOME when set, so the runs show in the Dagster UI.
"""

from __future__ import annotations

import os
from collections.abc import Callable

from dagster import DagsterInstance, materialize
from dagster._core.storage.tags import ASSET_PARTITION_RANGE_END_TAG, ASSET_PARTITION_RANGE_START_TAG

from campushub.models.engine import make_engine, refresh_statistics
from campushub.orchestration.assets.raw import RAW_ASSETS
from campushub.orchestration.assets.unified import CARD_DAYS, UNIFIED_ASSETS, card_transactions, persons
from campushub.orchestration.checks import ASSET_CHECKS
from campushub.orchestration.definitions import RESOURCES

SHOWN = (
    *("fetched", "landed", "quarantined", "inserted", "updated"),
    *("deleted_at_source", "persons_created", "conflicts_opened"),
)


def run_main_job(say: Callable[[str], None]) -> bool:
    instance = DagsterInstance.get() if os.environ.get("DAGSTER_HOME") else DagsterInstance.ephemeral()
    day_checks = [c for c in ASSET_CHECKS if any(k.asset_key == card_transactions.key for k in c.check_keys)]
    other_checks = [c for c in ASSET_CHECKS if c not in day_checks]
    # The blocking checks run with what they check: a failure stops what depends on it.
    everything_but_days = [*RAW_ASSETS, *UNIFIED_ASSETS, persons, *other_checks]
    sync = materialize(everything_but_days, resources=RESOURCES, instance=instance, raise_on_error=False)
    _report(sync, say)
    if not sync.success:
        return False
    days = CARD_DAYS.get_partition_keys()
    by_day = materialize(
        [card_transactions, *day_checks],
        resources=RESOURCES,
        instance=instance,
        tags={ASSET_PARTITION_RANGE_START_TAG: days[0], ASSET_PARTITION_RANGE_END_TAG: days[-1]},
        raise_on_error=False,
    )
    _report(by_day, say)
    if by_day.success:
        engine = make_engine()
        refresh_statistics(engine)
        engine.dispose()
    return by_day.success


def _report(result, say: Callable[[str], None]) -> None:  # type: ignore[no-untyped-def]
    by_asset: dict[str, list] = {}  # type: ignore[type-arg]
    for event in result.get_asset_materialization_events():
        by_asset.setdefault("/".join(event.materialization.asset_key.path), []).append(event.materialization)
    for key, materializations in by_asset.items():
        # A partition-range run reports its totals once per partition: show them once.
        figures = {k: v.value for k, v in materializations[0].metadata.items() if k in SHOWN and v.value}
        described = ", ".join(f"{k} {v:,}" for k, v in figures.items()) or "no change"
        days = f" over {len(materializations)} days" if materializations[0].partition else ""
        say(f"{key:32} {described}{days}")
    evaluations = result.get_asset_check_evaluations()
    failed = [e for e in evaluations if not e.passed]
    if evaluations:
        names = "; ".join(f"{'/'.join(e.asset_key.path)}: {e.check_name}" for e in failed)
        tally = f"{len(evaluations) - len(failed)} passed, {len(failed)} failed"
        say(f"quality checks: {tally}" + (f" ({names})" if names else ""))
    say("main job: " + ("succeeded" if result.success and not failed else "FAILED — see the errors above"))
