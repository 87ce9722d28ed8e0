"""The production settings, tested: Dagster's instance storage on PostgreSQL (dagster-postgres)
from the shipped `deploy/dagster.yaml`, the unified layer on PostgreSQL running one sync, and
schema upgrades that start together."""

from __future__ import annotations

import shutil
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from alembic.script import ScriptDirectory
from dagster import DagsterInstance, materialize
from sqlalchemy import create_engine, text

from campushub.models.engine import make_engine
from campushub.models.migrate import alembic_config, upgrade
from campushub.orchestration.assets.raw import RAW_ASSETS
from campushub.orchestration.assets.unified import UNIFIED_ASSETS
from campushub.orchestration.resources import AcademicAPI, DatabaseResource
from campushub.simulators.server import SimulatorCluster
from tests.databases import PG_ADMIN_URL, fresh_database, postgres_available

DEPLOY = Path(__file__).parent.parent / "deploy"


@pytest.fixture
def dagster_pg_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A fresh PostgreSQL database for Dagster's storage, named through the env variables."""
    if not postgres_available():
        pytest.skip("PostgreSQL is not reachable at 127.0.0.1:5432")
    name = f"dagster_test_{uuid.uuid4().hex[:10]}"
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    for variable, value in {
        "DAGSTER_PG_HOST": "127.0.0.1",
        "DAGSTER_PG_PORT": "5432",
        "DAGSTER_PG_DB": name,
        "DAGSTER_PG_USERNAME": "postgres",
        "DAGSTER_PG_PASSWORD": "",
    }.items():
        monkeypatch.setenv(variable, value)
    yield name
    with admin.connect() as connection:
        connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


def test_runs_are_stored_in_postgres_and_the_unified_layer_too(
    dagster_pg_env: str, simulators: SimulatorCluster, tmp_path: Path
) -> None:
    shutil.copy(DEPLOY / "dagster.yaml", tmp_path / "dagster.yaml")
    unified_db = f"unified_test_{uuid.uuid4().hex[:10]}"
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{unified_db}"'))
    try:
        with DagsterInstance.from_config(str(tmp_path)) as instance:
            assert type(instance.run_storage).__name__ == "PostgresRunStorage"
            assert type(instance.event_log_storage).__name__ == "PostgresEventLogStorage"
            colleges = next(a for a in RAW_ASSETS if a.key.path == ["raw", "academic", "colleges"])
            org_units = next(a for a in UNIFIED_ASSETS if a.key.path == ["unified", "org_units"])
            url = PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{unified_db}"
            result = materialize(
                [colleges, org_units],
                selection=[colleges.key],
                instance=instance,
                resources={
                    "academic": AcademicAPI(base_url=simulators.urls["academic"], api_key="dev-academic-key"),
                    "database": DatabaseResource(url=url),
                },
            )
            assert result.success
            runs = instance.get_runs()
            assert [run.run_id for run in runs] == [result.run_id]
            record = instance.get_latest_materialization_event(colleges.key)
            assert record is not None and record.asset_materialization is not None
            assert record.asset_materialization.metadata["landed"].value == 18
        engine = create_engine(url)
        with engine.connect() as connection:
            assert connection.execute(text("SELECT count(*) FROM raw_record")).scalar_one() == 18
        engine.dispose()
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{unified_db}" WITH (FORCE)'))
        admin.dispose()


def test_concurrent_upgrades_of_a_fresh_postgresql_database_take_turns(tmp_path: Path) -> None:
    # Each process that opens the database makes sure of the schema — runs started together, the
    # API's workers: on a fresh database two would create the same tables at once.
    with fresh_database("postgresql", tmp_path) as engine:
        url = engine.url.render_as_string(hide_password=False)
        start = threading.Barrier(3, timeout=30)
        failures: list[BaseException] = []

        def upgrade_at_once() -> None:
            own = make_engine(url)
            start.wait()
            try:
                upgrade(own)
            except BaseException as error:
                failures.append(error)
            finally:
                own.dispose()

        upgraders = [threading.Thread(target=upgrade_at_once, daemon=True) for _ in range(3)]
        for upgrader in upgraders:
            upgrader.start()
        deadline = time.monotonic() + 60
        for upgrader in upgraders:
            upgrader.join(timeout=max(0.0, deadline - time.monotonic()))
        assert not any(upgrader.is_alive() for upgrader in upgraders), "upgrades stuck behind each other"
        assert failures == []
        with engine.connect() as connection:
            head = ScriptDirectory.from_config(alembic_config()).get_current_head()
            assert connection.execute(text("SELECT version_num FROM alembic_version")).scalar_one() == head
