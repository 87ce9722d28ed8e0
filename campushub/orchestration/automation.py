"""When things run: incremental sync every 15 minutes, a nightly full reconcile, and the
card transactions' daily partitions kept current. Unified assets follow on their own
(automation conditions), so the schedules only pull from the sources."""

from __future__ import annotations

from dagster import (
    AssetSelection,
    DefaultScheduleStatus,
    RunRequest,
    ScheduleEvaluationContext,
    define_asset_job,
    schedule,
)

from campushub.orchestration.assets.unified import CARD_DAYS

RAW = AssetSelection.key_prefixes(["raw"])
CARD_TRANSACTIONS = AssetSelection.assets(["unified", "card_transactions"])
UNPARTITIONED_UNIFIED = AssetSelection.key_prefixes(["unified"]) - CARD_TRANSACTIONS

sync_job = define_asset_job(
    "sync",
    selection=RAW | UNPARTITIONED_UNIFIED,
    description="Pull every source from its cursor and bring the unified layer up to date.",
)
reconcile_job = define_asset_job(
    "reconcile",
    selection=RAW | UNPARTITIONED_UNIFIED,
    description="Pull every source whole; mark records the sources no longer have as deleted.",
)
card_days_job = define_asset_job(
    "card_transactions_by_day",
    selection=CARD_TRANSACTIONS,
    description="Build one day's card transactions from raw landing (backfill for history).",
)


@schedule(
    job=sync_job,
    cron_schedule="*/15 * * * *",
    execution_timezone="Asia/Shanghai",
    default_status=DefaultScheduleStatus.RUNNING,
)
def every_15_minutes(context: ScheduleEvaluationContext) -> RunRequest:
    return RunRequest(run_key=None, tags={"campushub/mode": "incremental"})


@schedule(
    job=reconcile_job,
    cron_schedule="0 2 * * *",
    execution_timezone="Asia/Shanghai",
    default_status=DefaultScheduleStatus.RUNNING,
)
def nightly_reconcile(context: ScheduleEvaluationContext) -> RunRequest:
    return RunRequest(run_config=reconcile_run_config(), tags={"campushub/mode": "reconcile"})


@schedule(
    job=card_days_job,
    cron_schedule="5,20,35,50 * * * *",
    execution_timezone="Asia/Shanghai",
    default_status=DefaultScheduleStatus.RUNNING,
)
def card_days_current(context: ScheduleEvaluationContext) -> list[RunRequest]:
    """Today's and yesterday's partitions, a few minutes after each sync: late transactions of
    yesterday still reach their day."""
    keys = CARD_DAYS.get_partition_keys(current_time=context.scheduled_execution_time)[-2:]
    return [
        RunRequest(partition_key=key, run_key=f"{key}@{context.scheduled_execution_time:%Y%m%d%H%M}") for key in keys
    ]


def reconcile_run_config() -> dict:  # type: ignore[type-arg]
    from campushub.orchestration.assets.raw import STREAMS

    ops = {
        f"raw__{source}__{stream}": {"config": {"reconcile": True}}
        for source, streams in STREAMS.items()
        for stream in streams
    }
    return {"ops": ops}


SCHEDULES = [every_15_minutes, nightly_reconcile, card_days_current]
JOBS = [sync_job, reconcile_job, card_days_job]
