"""The campushub code location: `dagster dev -w workspace.yaml`.

Kept light to load: connectors and models import in well under a second; Great Expectations
is imported only inside the checks that run it.
"""

from __future__ import annotations

from dagster import (
    AssetSelection,
    AutomationConditionSensorDefinition,
    Definitions,
    EnvVar,
    ExecutorDefinition,
    in_process_executor,
    multiprocess_executor,
)
from sqlalchemy.engine import make_url

from campushub.models.engine import database_url
from campushub.orchestration.assets.raw import RAW_ASSETS
from campushub.orchestration.assets.unified import ALL_UNIFIED
from campushub.orchestration.automation import JOBS, SCHEDULES
from campushub.orchestration.checks import ASSET_CHECKS
from campushub.orchestration.resources import HRAPI, AcademicAPI, CardAPI, DatabaseResource, FinanceAPI

RESOURCES = {
    "academic": AcademicAPI(base_url=EnvVar("CAMPUSHUB_ACADEMIC_URL"), api_key=EnvVar("CAMPUSHUB_ACADEMIC_API_KEY")),
    "hr": HRAPI(
        base_url=EnvVar("CAMPUSHUB_HR_URL"),
        client_id=EnvVar("CAMPUSHUB_HR_CLIENT_ID"),
        client_secret=EnvVar("CAMPUSHUB_HR_CLIENT_SECRET"),
    ),
    "finance": FinanceAPI(
        base_url=EnvVar("CAMPUSHUB_FINANCE_URL"),
        user=EnvVar("CAMPUSHUB_FINANCE_USER"),
        password=EnvVar("CAMPUSHUB_FINANCE_PASSWORD"),
    ),
    "card": CardAPI(
        base_url=EnvVar("CAMPUSHUB_CARD_URL"),
        app_key=EnvVar("CAMPUSHUB_CARD_APP_KEY"),
        app_secret=EnvVar("CAMPUSHUB_CARD_APP_SECRET"),
    ),
    "database": DatabaseResource(url=EnvVar("CAMPUSHUB_DATABASE_URL")),
}

# What a step's process would otherwise import for itself (the checks' Great Expectations, the
# driver, the instance's storage): forked from a server that has, a step starts in well under a
# second.
PRELOADED = [
    *("campushub.orchestration.definitions", "great_expectations"),
    *("psycopg", "dagster._core.storage.base_storage"),
]


def executor_for(url: str) -> ExecutorDefinition:
    """How a run's steps run, by the unified layer's database. PostgreSQL takes concurrent
    writers: in processes, two at a time. SQLite has one writer per database file, and a writer
    waits at most `BUSY_TIMEOUT_MS` on another's transaction — which landing the card system's
    five million events holds for minutes: one after another, in the run's own process."""
    if make_url(url).get_backend_name() == "sqlite":
        return in_process_executor
    return multiprocess_executor.configured(
        {"max_concurrent": 2, "start_method": {"forkserver": {"preload_modules": PRELOADED}}}
    )


defs = Definitions(
    assets=[*RAW_ASSETS, *ALL_UNIFIED],
    asset_checks=ASSET_CHECKS,
    jobs=JOBS,
    schedules=SCHEDULES,
    sensors=[
        AutomationConditionSensorDefinition(
            "unified_layer_follows_sources",
            target=AssetSelection.key_prefixes(["unified"]),
            minimum_interval_seconds=60,
        )
    ],
    resources=RESOURCES,
    executor=executor_for(database_url()),
)
