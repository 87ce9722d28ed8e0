"""The main job (`campushub run`): landing, then the unified layer beside (PostgreSQL) or before
(SQLite) the card days, each run with its checks — and nothing built on a landing that failed."""

from __future__ import annotations

import dataclasses
import gc
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, func, select

from campushub.connectors.academic import AcademicSource
from campushub.connectors.base import Batch
from campushub.models.landing import RawRecord
from campushub.models.unified import CardTransaction, Person, SourceIdentity, Student
from campushub.orchestration import mainjob
from campushub.orchestration.collector import THRESHOLDS, tune_for_bulk_work
from campushub.simulators.server import SimulatorCluster
from tests.databases import DATABASES, fresh_database
from tests.test_pipeline import FastAcademicAPI, FastHRAPI, resources_for, url_of


def _count(engine: Engine, *what: object) -> int:
    with engine.connect() as connection:
        return int(connection.execute(select(func.count()).select_from(*what)).scalar_one())


def _main_job_on(
    engine: Engine, resources: dict[str, object], monkeypatch: pytest.MonkeyPatch
) -> tuple[bool, list[str]]:
    monkeypatch.delenv("DAGSTER_HOME", raising=False)  # an in-memory instance
    monkeypatch.setenv("CAMPUSHUB_DATABASE_URL", url_of(engine))
    monkeypatch.setattr(mainjob, "RESOURCES", resources)
    said: list[str] = []
    return mainjob.run_main_job(said.append), said


@DATABASES
def test_main_job_builds_everything_and_says_so_once(
    database_kind: str, simulators: SimulatorCluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with fresh_database(database_kind, tmp_path) as engine:
        succeeded, said = _main_job_on(engine, resources_for(simulators, url_of(engine)), monkeypatch)
        assert succeeded, "\n".join(said)
        assert [line for line in said if line.startswith("main job")] == ["main job: succeeded"]
        assert [line for line in said if line.startswith("quality checks")] == [
            "quality checks: 2 passed, 0 failed",  # the card accounts', with landing
            "quality checks: 32 passed, 0 failed",  # the rest of the unified layer's
            "quality checks: 4 passed, 0 failed",  # the card days'
        ]
        landed_events = RawRecord.__table__.select().where(RawRecord.stream == "card_transactions").subquery()
        assert 0 < _count(engine, CardTransaction) <= _count(engine, landed_events)
        # (other tests add students to the stand-ins this one shares)
        assert _count(engine, Student) >= simulators.settings.students
        assert _count(engine, Person) >= simulators.settings.students
    # Its runs tuned this process's garbage collector for bulk work (orchestration/collector.py).
    assert gc.get_threshold() == THRESHOLDS and gc.get_freeze_count() > 0


LANDLINE = "0759-2383000"


class _LandlineSource(AcademicSource):
    """Academic affairs, but the first student it sends has a landline for a phone."""

    def read(self, stream: str, cursor: str | None = None) -> Iterator[Batch]:
        for batch in super().read(stream, cursor):
            if stream == "students" and batch.page == "page 1" and batch.records:
                first, *rest = batch.records
                landline = first._replace(data={**first.data, "SJHM": LANDLINE})
                batch = dataclasses.replace(batch, records=[landline, *rest])
            yield batch


class LandlineAcademicAPI(FastAcademicAPI):
    def open(self) -> AcademicSource:
        return _LandlineSource(self.http_settings(), self.api_key)


@DATABASES
def test_a_phone_left_out_is_warned_of_and_the_main_job_still_succeeds(
    database_kind: str, simulators: SimulatorCluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with fresh_database(database_kind, tmp_path) as engine:
        resources = resources_for(simulators, url_of(engine))
        academic = resources["academic"]
        assert isinstance(academic, FastAcademicAPI)
        resources["academic"] = LandlineAcademicAPI(base_url=academic.base_url, api_key=academic.api_key)
        succeeded, said = _main_job_on(engine, resources, monkeypatch)
        assert succeeded, "\n".join(said)
        assert said[-1] == "main job: succeeded"
        assert "quality checks: 31 passed, 0 failed, 1 warned (unified/persons: phones)" in said
        with engine.connect() as connection:
            kept = connection.execute(
                select(SourceIdentity.source, SourceIdentity.phone, Student.deleted_at)
                .join(Student, Student.student_no == SourceIdentity.source_key)
                .where(SourceIdentity.phone_unusable == LANDLINE)
            ).all()
        assert kept == [("academic", None, None)]  # the student loaded, without the phone


def test_the_collector_is_tuned_once_per_process() -> None:
    """Objects of earlier runs stay collectable: a later run freezes nothing more."""
    tune_for_bulk_work()
    frozen = gc.get_freeze_count()
    made_since = [[n] for n in range(1_000)]
    tune_for_bulk_work()
    assert gc.get_freeze_count() == frozen and gc.get_threshold() == THRESHOLDS
    del made_since


def test_main_job_builds_nothing_on_a_landing_that_failed(
    simulators: SimulatorCluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with fresh_database("sqlite", tmp_path) as engine:
        resources = resources_for(simulators, url_of(engine))
        resources["hr"] = FastHRAPI(base_url="http://127.0.0.1:9", client_id="-", client_secret="-")  # nothing there
        succeeded, said = _main_job_on(engine, resources, monkeypatch)
        assert not succeeded
        assert said[-1] == "main job: FAILED — see the errors above"
        assert _count(engine, RawRecord) > 0  # the other sources landed
        assert _count(engine, Student) == _count(engine, CardTransaction) == 0


def test_a_warning_is_reported_but_fails_nothing() -> None:
    from types import SimpleNamespace

    from dagster import AssetCheckSeverity, AssetKey

    def evaluation(name: str, passed: bool, severity: AssetCheckSeverity) -> SimpleNamespace:
        return SimpleNamespace(
            asset_key=AssetKey(["unified", "grades"]), check_name=name, passed=passed, severity=severity
        )

    result = SimpleNamespace(
        get_asset_materialization_events=lambda: [],
        get_asset_check_evaluations=lambda: [
            evaluation("columns", True, AssetCheckSeverity.ERROR),
            evaluation("source_keys", False, AssetCheckSeverity.WARN),
        ],
    )
    said: list[str] = []
    assert mainjob._report(result, said.append) == 0  # type: ignore[arg-type]
    assert said == ["quality checks: 1 passed, 0 failed, 1 warned (unified/grades: source_keys)"]
    result.get_asset_check_evaluations = lambda: [evaluation("columns", False, AssetCheckSeverity.ERROR)]
    said.clear()
    assert mainjob._report(result, said.append) == 1  # type: ignore[arg-type]
