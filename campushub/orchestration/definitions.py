"""The campushub code location: `dagster dev -w workspace.yaml`.

Kept light to load: connectors and models import in well under a second; Great Expectations
is imported only inside the checks that run it.
"""

from __future__ import annotations

from dagster import AssetSelection, AutomationConditionSensorDefinition, Definitions, EnvVar, in_process_executor

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
    # A run's steps one after another in the run's own process. Measured at 10,000 students on two
    # cores, steps in processes two at a time gave a full sync nothing (it is bound by the CPU,
    # not by waiting) and made the 15-minute incremental four times slower (a second to start
    # each of its 37 steps); and SQLite takes one writer at a time anyway.
    executor=in_process_executor,
)
