"""Data-quality checks on the unified layer, on SQLite and PostgreSQL.

A real unified layer is built once per database, by materialising the real assets against the
running stand-ins, checks included: on clean data every check passes. Then rows are broken on
purpose, directly in the database, and each rule must catch exactly what was broken — and a
failed blocking check must stop what is downstream of its asset in the same run.
"""

from __future__ import annotations

import datetime as dt
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from dagster import (
    AssetChecksDefinition,
    AssetCheckSeverity,
    AssetsDefinition,
    DagsterInstance,
    ExecuteInProcessResult,
    materialize,
)
from dagster._core.definitions.asset_checks.asset_check_evaluation import AssetCheckEvaluation
from dagster._core.storage.tags import ASSET_PARTITION_RANGE_END_TAG, ASSET_PARTITION_RANGE_START_TAG
from sqlalchemy import Connection, Engine, delete, func, insert, select, text, update

from campushub.models import quality
from campushub.models.engine import make_engine
from campushub.models.migrate import upgrade
from campushub.models.protect import decrypt_id, encrypt_id
from campushub.models.service import (
    CheckResult,
    RowCountAcceptance,
    accept_row_count,
    record_check_result,
    row_count_baseline,
)
from campushub.models.unified import CardTransaction, Student
from campushub.orchestration.assets.raw import RAW_ASSETS
from campushub.orchestration.assets.unified import ALL_UNIFIED, UNIFIED_ASSETS, card_transactions, persons
from campushub.orchestration.checks import ASSET_CHECKS, CHECKS, HISTORY, STAMP_MARGIN
from campushub.orchestration.resources import HRAPI, AcademicAPI, CardAPI, DatabaseResource, FinanceAPI
from campushub.simulators.server import SimulatorCluster
from campushub.simulators.settings import SimulatorSettings
from tests.conftest import SMALL
from tests.databases import fresh_database

SECRETS = SimulatorSettings()
FULL_SWEEP = {"campushub/mode": "reconcile"}  # the nightly reconcile's runs validate every row


@dataclass
class Layer:
    kind: str
    engine: Engine
    resources: dict[str, Any]
    instance: DagsterInstance
    runs: list[ExecuteInProcessResult]


def checks_on(assets: Sequence[AssetsDefinition]) -> list[AssetChecksDefinition]:
    keys = {key for asset in assets for key in asset.keys}
    return [check for check in ASSET_CHECKS if {spec.asset_key for spec in check.check_specs} <= keys]


def evaluations(result: ExecuteInProcessResult) -> dict[str, AssetCheckEvaluation]:
    return {f"{e.asset_key.path[-1]}.{e.check_name}": e for e in result.get_asset_check_evaluations()}


def materialized(result: ExecuteInProcessResult) -> set[str]:
    return {e.materialization.asset_key.path[-1] for e in result.get_asset_materialization_events()}


def value(evaluation: AssetCheckEvaluation, name: str) -> Any:
    return evaluation.metadata[name].value


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def layer(
    request: pytest.FixtureRequest, simulators: SimulatorCluster, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Layer]:
    with fresh_database(request.param, tmp_path_factory.mktemp(request.param)) as engine:
        urls = simulators.urls
        resources: dict[str, Any] = {
            "academic": AcademicAPI(base_url=urls["academic"], api_key=SECRETS.academic_api_key),
            "hr": HRAPI(base_url=urls["hr"], client_id=SECRETS.hr_client_id, client_secret=SECRETS.hr_client_secret),
            "finance": FinanceAPI(
                base_url=urls["finance"], user=SECRETS.finance_user, password=SECRETS.finance_password
            ),
            "card": CardAPI(base_url=urls["card"], app_key=SECRETS.card_app_key, app_secret=SECRETS.card_app_secret),
            "database": DatabaseResource(url=engine.url.render_as_string(hide_password=False)),
        }
        instance = DagsterInstance.ephemeral()
        unified = [*UNIFIED_ASSETS, persons]
        # Built whole first, then checked: a check failing on clean data shows as such in
        # `test_clean_layer_passes_every_check`, instead of leaving every other test without data.
        built = materialize([*RAW_ASSETS, *unified], resources=resources, instance=instance)
        checked = materialize(
            [*unified, *checks_on(unified)],
            resources={"database": resources["database"]},
            instance=instance,
            raise_on_error=False,
        )
        with engine.connect() as connection:
            first, last = connection.execute(
                text("SELECT MIN(event_day), MAX(event_day) FROM raw_record WHERE stream = 'card_transactions'")
            ).one()
        # Every day's partition in one run, the way a backfill with a single-run policy does it.
        days = materialize(
            [card_transactions, *checks_on([card_transactions])],
            resources={"database": resources["database"]},
            instance=instance,
            tags={ASSET_PARTITION_RANGE_START_TAG: str(first)[:10], ASSET_PARTITION_RANGE_END_TAG: str(last)[:10]},
            raise_on_error=False,
        )
        assert built.success
        yield Layer(request.param, engine, resources, instance, [checked, days])


Statement = str | tuple[str, dict[str, Any]]


def _run(connection: Connection, statement: Statement) -> None:
    sql, params = (statement, {}) if isinstance(statement, str) else statement
    connection.execute(text(sql), params)


@contextmanager
def broken(engine: Engine, *statements: Statement, restore: Sequence[Statement] = ()) -> Iterator[Connection]:
    """Break rows for the length of a test; `restore` puts them back, whatever happened."""
    try:
        with engine.begin() as connection:
            for statement in statements:
                _run(connection, statement)
        with engine.connect() as connection:
            yield connection
    finally:
        with engine.begin() as connection:
            for statement in restore:
                _run(connection, statement)


def one(engine: Engine, sql: str, **params: Any) -> Any:
    with engine.connect() as connection:
        return connection.execute(text(sql), params).one()


def scalar(engine: Engine, sql: str, **params: Any) -> Any:
    return one(engine, sql, **params)[0]


# --------------------------------------------------------------------------- definitions
def test_code_location_loads_without_great_expectations() -> None:
    probe = (
        "import sys, campushub.orchestration.definitions as d; "
        "assert d.defs.get_repository_def().asset_graph.asset_check_keys; "
        "assert 'great_expectations' not in sys.modules, 'GX imported at load'; print('ok')"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().endswith("ok")


def test_every_unified_asset_has_checks_that_block_but_for_the_warnings() -> None:
    checked = {spec.asset_key for check in ASSET_CHECKS for spec in check.check_specs}
    assert checked == {key for asset in ALL_UNIFIED for key in asset.keys}
    specs = [spec for check in ASSET_CHECKS for spec in check.check_specs]
    # Every check blocks but the warnings about other systems' keys (`source_keys`), about the
    # phones sources sent that were left out (`phones`) and about payments not pulled yet.
    assert {spec.name for spec in specs if not spec.blocking} == {"source_keys", "phones", "payments_held"}
    names = {(spec.asset_key.path[-1], spec.name) for spec in specs}
    assert {("students", "references"), ("payments", "within_bills"), ("persons", "id_numbers")} <= names
    assert {("persons", "phones"), ("payments", "payments_held")} <= names
    assert {("card_transactions", "balances_reconcile"), ("card_transactions", "balances_chain")} <= names
    assert all((entity, "columns") in names and (entity, "row_count") in names for entity in CHECKS)
    # What a steward may accept the size of (`acceptRowCount`) is what the checks guard.
    assert set(CHECKS) == set(quality.CHECKED_TABLES)


def test_masks_show_shape_not_value() -> None:
    assert quality.mask_phone("13800138000") == "138****8000"
    assert quality.mask_phone("12345") == "*****"
    assert quality.mask_email("zhangsan@example.edu.cn") == "z***@example.edu.cn"
    assert quality.mask_email("zhangsan") == "z***"


# ---------------------------------------------------------------------------- clean data
def test_clean_layer_passes_every_check(layer: Layer) -> None:
    checked, days = layer.runs
    found = {**evaluations(checked), **evaluations(days)}
    failed = {name: {k: v.value for k, v in e.metadata.items()} for name, e in found.items() if not e.passed}
    assert not failed
    assert checked.success and days.success
    assert materialized(checked) >= {key.path[-1] for asset in [*UNIFIED_ASSETS, persons] for key in asset.keys}
    expected = {f"{spec.asset_key.path[-1]}.{spec.name}" for check in ASSET_CHECKS for spec in check.check_specs}
    assert set(found) == expected
    assert all(isinstance(value(e, "duration_s"), float) for e in found.values())
    # The checks looked at real data, not at empty tables.
    # The session's stand-ins may have grown: other tests apply changes (new students) to them.
    students = live(layer.engine, "student")
    assert students >= SMALL
    assert value(found["students.columns"], "rows") == students
    assert value(found["students.references"], "rows") == students
    assert value(found["students.row_count"], "row_count") == students
    assert value(found["persons.id_numbers"], "persons_with_id_number") > SMALL
    assert value(found["payments.within_bills"], "bills") > 0
    assert value(found["payments.payments_held"], "bills") == value(found["payments.within_bills"], "bills")
    assert value(found["card_transactions.balances_reconcile"], "cards_with_transactions") > SMALL
    assert value(found["card_transactions.balances_chain"], "transactions") > 10 * SMALL
    assert value(found["students.columns"], "great_expectations").startswith("1.")


# -------------------------------------------------------------- a failed check blocks downstream
def test_failed_blocking_check_stops_downstream_in_the_same_run(layer: Layer) -> None:
    with layer.engine.connect() as connection:
        two = connection.execute(text("SELECT student_no, status FROM student ORDER BY student_no LIMIT 2")).all()
        moved, class_code = connection.execute(
            text("SELECT student_no, class_code FROM student ORDER BY student_no DESC LIMIT 1")
        ).one()
    keys = ", ".join(f"'{no}'" for no, _ in two)
    with broken(
        layer.engine,
        f"UPDATE student SET status = '99' WHERE student_no IN ({keys})",  # no such 学生当前状态码
        # a class academic affairs does not have: linking leaves the student without one
        f"UPDATE student SET class_code = 'NOCLASS', class_id = NULL WHERE student_no = '{moved}'",
        restore=[
            *(f"UPDATE student SET status = '{status}' WHERE student_no = '{no}'" for no, status in two),
            f"UPDATE student SET class_code = '{class_code}' WHERE student_no = '{moved}'",
            "UPDATE student SET class_id = (SELECT id FROM class_group WHERE code = student.class_code)",
        ],
    ):
        assets = [*UNIFIED_ASSETS, persons]
        # Edited behind the pipeline's back: the rows' write stamps did not move, so it is the
        # nightly full sweep's column checks that see them (an incremental run's see what it wrote).
        result = materialize(
            [*assets, *checks_on(assets)],
            resources={"database": layer.resources["database"]},
            instance=layer.instance,
            raise_on_error=False,
            tags=FULL_SWEEP,
        )
    assert not result.success
    found = evaluations(result)
    upstream = {name: e.passed for name, e in found.items() if name.split(".")[0] in {"org_units", "majors", "classes"}}
    assert upstream and all(upstream.values()), f"students never ran: a check upstream failed: {upstream}"
    columns, references = found["students.columns"], found["students.references"]
    assert not columns.passed and not references.passed
    (failure,) = value(columns, "failures")
    assert failure["expectation"] == "expect_column_values_to_be_in_set" and failure["column"] == "status"
    assert failure["unexpected_count"] == 2
    assert sorted(sample["student_no"] for sample in failure["samples"]) == sorted(no for no, _ in two)
    assert value(references, "failing") == 1 and value(references, "class_id missing") == 1
    assert value(references, "failing_keys") == [{"student_no": moved, "column": "class_id", "problem": "missing"}]
    assert found["students.row_count"].passed
    # Upstream and unrelated assets were built; nothing downstream of students was.
    built = materialized(result)
    assert {"org_units", "majors", "classes", "courses", "staff", "card_accounts", "students"} <= built
    assert not built & {"grades", "fee_bills", "payments", "persons"}
    assert not any(name.split(".")[0] in {"grades", "fee_bills", "payments", "persons"} for name in found)


COURSES = next(asset for asset in UNIFIED_ASSETS if asset.key.path[-1] == "courses")


def courses_row_count(layer: Layer) -> AssetCheckEvaluation:
    """Build the courses with their checks, as a sync run does: the row-count check's evaluation."""
    result = materialize(
        [COURSES, *checks_on([COURSES])],
        resources={"database": layer.resources["database"]},
        instance=layer.instance,
        raise_on_error=False,
    )
    return evaluations(result)["courses.row_count"]


def last_verdict_at(layer: Layer) -> str:
    """When the courses' latest row-count verdict counted, as a baseline names it."""
    verdict = CheckResult.__table__.c
    query = select(verdict.counts).where(verdict.entity == "courses", verdict.check_name == "row_count")
    with layer.engine.connect() as connection:
        counted_at = dt.datetime.fromisoformat(connection.execute(query).scalar_one()["counted_at"])
    return counted_at.astimezone(dt.UTC).isoformat(timespec="seconds")


@contextmanager
def fewer_courses(layer: Layer, gone: int) -> Iterator[None]:
    """`gone` courses marked deleted, as a partial pull in a reconcile would; back afterwards."""
    with broken(
        layer.engine,
        f"""UPDATE course SET deleted_at = CURRENT_TIMESTAMP
            WHERE code IN (SELECT code FROM course ORDER BY code LIMIT {gone})""",
        restore=["UPDATE course SET deleted_at = NULL"],
    ):
        yield


@pytest.fixture
def courses_acceptances(layer: Layer) -> Iterator[None]:
    """The acceptances a test makes of the courses' size are its own: gone afterwards."""
    yield
    with layer.engine.begin() as connection:
        connection.execute(delete(RowCountAcceptance).where(RowCountAcceptance.entity == "courses"))


def test_a_row_count_drop_fails_run_after_run_against_the_last_passing_evaluation(layer: Layer) -> None:
    passing = courses_row_count(layer)
    total, passed_at = value(passing, "row_count"), last_verdict_at(layer)
    assert total > 0 and passing.passed
    gone = total // 5
    with fewer_courses(layer, gone):
        dropped = courses_row_count(layer)
        again = courses_row_count(layer)  # nothing changed, and nobody accepted the drop
        # A failing streak longer than the stretch of Dagster's event log the checks read back.
        streak = [courses_row_count(layer) for _ in range(HISTORY)]
    assert not dropped.passed and not again.passed
    assert not any(evaluation.passed for evaluation in streak)
    for evaluation in (dropped, again, streak[-1]):
        assert value(evaluation, "row_count") == total - gone
        assert value(evaluation, "baseline_row_count") == total and value(evaluation, "drop") == round(gone / total, 4)
        assert value(evaluation, "baseline") == f"last passing evaluation at {passed_at}"
    # The rows back: passing again.
    assert courses_row_count(layer).passed


@pytest.mark.usefixtures("courses_acceptances")
def test_a_stewards_acceptance_of_the_new_size_is_the_next_evaluations_baseline(layer: Layer) -> None:
    total = value(courses_row_count(layer), "row_count")
    gone = total // 5
    with fewer_courses(layer, gone):
        assert not courses_row_count(layer).passed
        with layer.engine.begin() as connection:
            accepted = accept_row_count(connection, "courses", "steward-t", "courses retired", total - gone)
        assert accepted["row_count"] == total - gone
        after = courses_row_count(layer)
    assert after.passed
    assert value(after, "row_count") == value(after, "baseline_row_count") == total - gone
    at = accepted["accepted_at"].astimezone(dt.UTC).isoformat(timespec="seconds")
    assert value(after, "baseline") == f"accepted by steward-t at {at}" and value(after, "accepted_by") == "steward-t"


@pytest.mark.usefixtures("courses_acceptances")
def test_a_drop_failed_by_the_checks_first_version_keeps_failing(layer: Layer) -> None:
    """A failing verdict written before baselines were carried names the count it compared with:
    the next evaluation is held to it, not let through as a first one."""
    total = value(courses_row_count(layer), "row_count")
    gone = total // 5
    with fewer_courses(layer, gone):
        counts = {"row_count": total - gone, "previous_row_count": total}
        legacy = quality.Outcome(passed=False, counts=counts, details={"drop": 0.2, "limit": 0.1})
        with layer.engine.begin() as connection:
            record_check_result(connection, "courses", "row_count", legacy, "before-baselines")
        again = courses_row_count(layer)
    assert not again.passed and value(again, "baseline_row_count") == total


@pytest.mark.usefixtures("courses_acceptances")
def test_a_size_accepted_while_a_pass_was_being_written_is_the_baseline(layer: Layer) -> None:
    """A pass is dated by when it counted, not by when its verdict was written (after the rules
    beside it): a steward's acceptance in between is the newer decision."""
    total = value(courses_row_count(layer), "row_count")
    counted_at = dt.datetime.fromisoformat(last_verdict_at(layer))
    verdict = CheckResult.__table__.c
    with layer.engine.begin() as connection:
        connection.execute(
            update(CheckResult)
            .where(verdict.entity == "courses", verdict.check_name == "row_count")
            .values(evaluated_at=counted_at + dt.timedelta(seconds=10))  # written after a slow sweep
        )
        accepted_at = counted_at + dt.timedelta(seconds=5)
        connection.execute(
            insert(RowCountAcceptance).values(
                entity="courses", row_count=total - 1, accepted_by="steward-t", accepted_at=accepted_at, reason="r"
            )
        )
        baseline = row_count_baseline(connection, "courses")
    assert baseline == quality.Baseline(total - 1, accepted_at, "steward-t")


@pytest.mark.usefixtures("courses_acceptances")
def test_a_later_passing_evaluation_moves_the_baseline_on_from_an_acceptance(layer: Layer) -> None:
    total = value(courses_row_count(layer), "row_count")
    gone = total // 5
    with fewer_courses(layer, gone):
        assert not courses_row_count(layer).passed
        with layer.engine.begin() as connection:
            accept_row_count(connection, "courses", "steward-t", "courses retired", total - gone)
        assert courses_row_count(layer).passed
        passed_at = last_verdict_at(layer)
    # The rows back: compared with the pass that followed the acceptance, not with the acceptance.
    back = courses_row_count(layer)
    assert back.passed and value(back, "row_count") == total and value(back, "baseline_row_count") == total - gone
    assert value(back, "baseline") == f"last passing evaluation at {passed_at}"
    back_at = last_verdict_at(layer)
    # The same drop again is measured from the whole table of that latest pass: the smaller size
    # accepted before it no longer covers the drop.
    with fewer_courses(layer, gone):
        dropped = courses_row_count(layer)
    assert not dropped.passed and value(dropped, "baseline_row_count") == total
    assert value(dropped, "baseline") == f"last passing evaluation at {back_at}"
    assert courses_row_count(layer).passed


# ------------------------------------------------------------------- every rule can fail
def test_column_expectations_catch_every_kind_of_bad_value(layer: Layer) -> None:
    """Copies without constraints, so a duplicate or missing key can exist at all."""
    with layer.engine.connect() as connection:
        first, second = connection.execute(text("SELECT student_no FROM student ORDER BY student_no LIMIT 2")).scalars()
        person, phone = connection.execute(text("SELECT id, phone FROM person WHERE phone IS NOT NULL LIMIT 1")).one()
        staff_no = connection.execute(text("SELECT staff_no FROM staff ORDER BY staff_no LIMIT 1")).scalar_one()
    copies = ["qc_student", "qc_person", "qc_staff"]
    try:
        with layer.engine.begin() as connection:
            for copy, table in zip(copies, ["student", "person", "staff"], strict=True):
                connection.execute(text(f"CREATE TABLE {copy} AS SELECT * FROM {table}"))
            connection.execute(text(f"UPDATE qc_student SET student_no = '{first}' WHERE student_no = '{second}'"))
            connection.execute(
                text(
                    """INSERT INTO qc_student (student_no, status, education_level, email, row_hash)
                        VALUES (NULL, '88', 'ZZ', 'not-an-address', 'x')"""
                )
            )
            connection.execute(
                text(f"UPDATE qc_person SET phone = '2{phone[1:]}', sex = '7', id_type = 'Q' WHERE id = {person}")
            )
            connection.execute(text(f"UPDATE qc_staff SET title_code = 'ZZZ' WHERE staff_no = '{staff_no}'"))
        student = quality.column_expectations(layer.engine, "student", table_name="qc_student")
        people = quality.column_expectations(layer.engine, "person", table_name="qc_person")
        staff = quality.column_expectations(layer.engine, "staff", table_name="qc_staff")
    finally:
        with layer.engine.begin() as connection:
            for copy in copies:
                connection.execute(text(f"DROP TABLE IF EXISTS {copy}"))

    def by_column(outcome: quality.Outcome) -> dict[tuple[str, str], dict[str, Any]]:
        return {(f["expectation"].removeprefix("expect_column_"), f["column"]): f for f in outcome.details["failures"]}

    assert not student.passed
    failures = by_column(student)
    assert set(failures) == {
        ("values_to_not_be_null", "student_no"),
        ("values_to_be_unique", "student_no"),
        ("values_to_be_in_set", "status"),
        ("values_to_be_in_set", "education_level"),
        ("values_to_match_regex", "email"),
    }
    assert failures[("values_to_be_unique", "student_no")]["unexpected_count"] == 2
    assert all(f["unexpected_count"] == 1 for k, f in failures.items() if k[0] != "values_to_be_unique")
    assert failures[("values_to_match_regex", "email")]["samples"] == [{"student_no": None, "email": "n***"}]

    assert not people.passed
    failures = by_column(people)
    assert set(failures) == {
        ("values_to_be_in_set", "sex"),
        ("values_to_be_in_set", "id_type"),
        ("values_to_match_regex", "phone"),
    }
    masked = failures[("values_to_match_regex", "phone")]["samples"]
    assert masked == [{"id": person, "phone": quality.mask_phone("2" + phone[1:])}]
    assert phone[1:] not in str(people.metadata())

    assert not staff.passed
    assert by_column(staff)[("values_to_be_in_set", "title_code")]["samples"] == [
        {"staff_no": staff_no, "title_code": "ZZZ"}
    ]


def test_a_partition_runs_column_expectations_read_its_days_alone(layer: Layer) -> None:
    """A copy without constraints, so a transaction can lack its amount at all."""
    engine = layer.engine
    seq, day = one(engine, "SELECT seq, day FROM card_transaction ORDER BY seq DESC LIMIT 1")
    day = dt.date.fromisoformat(str(day))
    on_the_day = scalar(engine, "SELECT COUNT(*) FROM card_transaction WHERE day = :day", day=day)
    total = scalar(engine, "SELECT COUNT(*) FROM card_transaction")
    try:
        with engine.begin() as connection:
            connection.execute(text("CREATE TABLE qc_card_transaction AS SELECT * FROM card_transaction"))
            connection.execute(text(f"UPDATE qc_card_transaction SET amount_fen = NULL WHERE seq = {seq}"))

        def validate(days: tuple[dt.date, dt.date] | None) -> quality.Outcome:
            return quality.column_expectations(engine, "card_transaction", table_name="qc_card_transaction", days=days)

        that_day, day_before, everything = (
            validate((day, day)),
            validate((day - dt.timedelta(days=1),) * 2),
            validate(None),
        )
    finally:
        with engine.begin() as connection:
            connection.execute(text("DROP TABLE IF EXISTS qc_card_transaction"))
    assert not that_day.passed and that_day.counts["rows"] == on_the_day
    (failure,) = that_day.details["failures"]
    assert failure["column"] == "amount_fen" and failure["samples"] == [{"seq": seq, "amount_fen": None}]
    assert day_before.passed and day_before.counts["rows"] < total
    assert not everything.passed and everything.counts["rows"] == total


def test_an_incremental_runs_column_expectations_read_what_was_written_since_they_last_passed(layer: Layer) -> None:
    """What a sync run wrote is validated by that run; what nobody wrote since a passing
    evaluation is not read again — until the nightly sweep (a reconcile run) reads it all."""
    students = next(asset for asset in UNIFIED_ASSETS if asset.key.path[-1] == "students")
    engine, total = layer.engine, live(layer.engine, "student")

    def columns(tags: dict[str, str] | None = None) -> AssetCheckEvaluation:
        result = materialize(
            [students, *checks_on([students])],
            resources={"database": layer.resources["database"]},
            instance=layer.instance,
            raise_on_error=False,
            tags=tags,
        )
        return evaluations(result)["students.columns"]

    # Rows stamped shortly before an evaluation began are validated again by the next (they may
    # have committed after it began): wait until the layer, just built, is older than that.
    with engine.connect() as connection:
        newest = connection.execute(select(func.max(Student.loaded_at))).scalar_one()
    time.sleep(max(0.0, (newest + STAMP_MARGIN - dt.datetime.now(dt.UTC)).total_seconds()))
    full = columns(FULL_SWEEP)
    assert full.passed and value(full, "rows") == total and value(full, "validated") == {"whole_table": "yes"}
    nothing_new = columns()
    assert nothing_new.passed and value(nothing_new, "rows") == 0
    assert set(value(nothing_new, "validated")) == {"written_since", "empty_window"}
    assert value(nothing_new, "expectations") == value(full, "expectations") > 0  # the same rules, no row

    written, behind, status = _two_students_and_a_status(engine)
    stamp = "CURRENT_TIMESTAMP" if layer.kind == "postgresql" else "strftime('%Y-%m-%d %H:%M:%f', 'now')"
    with broken(
        engine,
        # As the pipeline writes a row: with its write stamp. And a row edited behind its back.
        f"UPDATE student SET status = '99', loaded_at = {stamp} WHERE student_no = '{written}'",
        f"UPDATE student SET status = '99' WHERE student_no = '{behind}'",
        restore=[f"UPDATE student SET status = '{status}' WHERE student_no IN ('{written}', '{behind}')"],
    ):
        incremental = columns()
        assert not incremental.passed and value(incremental, "rows") == 1
        (failure,) = value(incremental, "failures")
        assert [sample["student_no"] for sample in failure["samples"]] == [written]
        # After a failure, every row again, until a pass: what was refused is still there.
        again = columns()
        assert not again.passed and value(again, "rows") == total
        assert sorted(sample["student_no"] for sample in value(again, "failures")[0]["samples"]) == sorted(
            [written, behind]
        )
    assert columns().passed  # restored (every row read once more), and
    assert value(columns(), "rows") <= 1  # back to what was written since


def _two_students_and_a_status(engine: Engine) -> tuple[str, str, str]:
    with engine.connect() as connection:
        written, behind = connection.execute(
            text("SELECT student_no FROM student WHERE status = '01' ORDER BY student_no LIMIT 2")
        ).scalars()
    return written, behind, "01"


def test_references_catch_missing_deleted_and_disagreeing(layer: Layer) -> None:
    engine = layer.engine
    major, college = one(engine, "SELECT code, college_id FROM major ORDER BY code LIMIT 1")
    with broken(
        engine,
        f"UPDATE major SET college_id = NULL WHERE code = '{major}'",
        restore=[f"UPDATE major SET college_id = {college} WHERE code = '{major}'"],
    ) as connection:
        majors = quality.reference_problems(connection, "major")
    assert not majors.passed and majors.counts == {
        "rows": live(engine, "major"),
        "failing": 1,
        "college_id missing": 1,
    }
    assert majors.samples == [{"code": major, "column": "college_id", "problem": "missing"}]

    # A class gone at the source (marked deleted) while its students are still current.
    code = scalar(engine, "SELECT MIN(class_code) FROM student")
    members = scalar(engine, "SELECT COUNT(*) FROM student WHERE class_code = :code", code=code)
    with broken(
        engine,
        f"UPDATE class_group SET deleted_at = CURRENT_TIMESTAMP WHERE code = '{code}'",
        restore=[f"UPDATE class_group SET deleted_at = NULL WHERE code = '{code}'"],
    ) as connection:
        deleted = quality.reference_problems(connection, "student")
    assert not deleted.passed
    assert deleted.counts == {
        "rows": live(engine, "student"),
        "failing": members,
        "class_id points at a deleted row": members,
    }

    # A student whose major is not their class's major: checkable only once classes know theirs.
    unlinked = scalar(engine, "SELECT COUNT(*) FROM class_group WHERE major_id IS NULL")
    assert unlinked == 0, f"{unlinked} classes are not linked to a major: nothing to disagree with"
    lone, major_id = one(engine, "SELECT student_no, major_id FROM student ORDER BY student_no LIMIT 1")
    other = scalar(engine, "SELECT MIN(id) FROM major WHERE id <> :id", id=major_id)
    with broken(
        engine,
        f"UPDATE student SET major_id = {other} WHERE student_no = '{lone}'",
        restore=[f"UPDATE student SET major_id = {major_id} WHERE student_no = '{lone}'"],
    ) as connection:
        disagreeing = quality.reference_problems(connection, "student")
    assert not disagreeing.passed and disagreeing.counts["failing"] >= 1
    problem = "major_id disagrees with its class_group"
    assert disagreeing.counts[problem] == 1
    assert {"student_no": lone, "column": "major_id", "problem": problem} in disagreeing.samples


def live(engine: Engine, table: str) -> int:
    return int(scalar(engine, f"SELECT COUNT(*) FROM {table} WHERE deleted_at IS NULL"))


def test_references_catch_keys_left_behind_by_a_transfer_and_source_keys_that_name_nothing(layer: Layer) -> None:
    engine = layer.engine
    lone, college_code = one(engine, "SELECT student_no, college_code FROM student ORDER BY student_no LIMIT 1")
    other = scalar(engine, "SELECT MIN(academic_code) FROM org_unit WHERE academic_code <> :code", code=college_code)
    # The code a transfer brings, its key not yet moved.
    with broken(
        engine,
        f"UPDATE student SET college_code = '{other}' WHERE student_no = '{lone}'",
        restore=[f"UPDATE student SET college_code = '{college_code}' WHERE student_no = '{lone}'"],
    ) as connection:
        transferred = quality.reference_problems(connection, "student")
    problem = "college_code disagrees with its org_unit"
    assert not transferred.passed and transferred.counts[problem] == 1
    assert {"student_no": lone, "column": "college_code", "problem": problem} in transferred.samples

    # A department code naming no unit: the key is left empty, and warned of.
    staff_no, department = one(engine, "SELECT staff_no, department_code FROM staff ORDER BY staff_no LIMIT 1")
    with broken(
        engine,
        f"UPDATE staff SET department_code = 'NOWHERE', department_id = NULL WHERE staff_no = '{staff_no}'",
        restore=[
            f"UPDATE staff SET department_code = '{department}', department_id = "
            f"(SELECT id FROM org_unit WHERE hr_code = '{department}') WHERE staff_no = '{staff_no}'"
        ],
    ) as connection:
        staff = quality.source_key_problems(connection, "staff")
    assert not staff.passed and staff.counts["department_code names no org_unit"] == 1

    grade, student_no = one(engine, "SELECT id, student_no FROM grade ORDER BY id LIMIT 1")
    with broken(
        engine,
        f"UPDATE grade SET student_no = 'NOBODY' WHERE id = {grade}",
        restore=[f"UPDATE grade SET student_no = '{student_no}' WHERE id = {grade}"],
    ) as connection:
        grades = quality.source_key_problems(connection, "grade")
    assert not grades.passed
    assert grades.counts == {"rows": live(engine, "grade"), "failing": 1, "student_no names no student": 1}
    assert grades.samples == [{"student_no": "NOBODY", "problem": "student_no names no student"}]
    with engine.connect() as connection:
        assert quality.reference_problems(connection, "staff").passed
        for table in ("grade", "fee_bill", "payment"):
            assert quality.source_key_problems(connection, table).passed, table
    # A student marked deleted at the source keeps their bills: still named.
    with broken(
        engine,
        f"UPDATE student SET deleted_at = CURRENT_TIMESTAMP WHERE student_no = '{student_no}'",
        restore=[f"UPDATE student SET deleted_at = NULL WHERE student_no = '{student_no}'"],
    ) as connection:
        assert quality.source_key_problems(connection, "grade").passed


def test_references_catch_dangling_ids(layer: Layer) -> None:
    """A reference to a row that does not exist at all: only possible with foreign keys off."""
    lone, class_id = one(layer.engine, "SELECT student_no, class_id FROM student ORDER BY student_no LIMIT 1")
    off, on = (
        ("PRAGMA foreign_keys = OFF", "PRAGMA foreign_keys = ON")
        if layer.kind == "sqlite"
        else ("SET session_replication_role = replica", "SET session_replication_role = DEFAULT")
    )
    with layer.engine.connect() as connection:
        connection.execute(text(off))
        connection.commit()
        try:
            connection.execute(text(f"UPDATE student SET class_id = 999999 WHERE student_no = '{lone}'"))
            connection.commit()
            outcome = quality.reference_problems(connection, "student")
        finally:
            connection.execute(text(f"UPDATE student SET class_id = {class_id} WHERE student_no = '{lone}'"))
            connection.commit()
            connection.execute(text(on))
            connection.commit()
    rows = live(layer.engine, "student")
    assert not outcome.passed and outcome.counts == {"rows": rows, "failing": 1, "class_id dangling": 1}
    assert outcome.samples == [{"student_no": lone, "column": "class_id", "problem": "dangling"}]


def test_card_balances_that_do_not_reconcile_fail(layer: Layer) -> None:
    engine = layer.engine
    # A card whose account changed no later than the newest transaction held: a settled one.
    card, balance = one(
        engine,
        """SELECT card_no, balance_fen FROM card_account
           WHERE card_no IN (SELECT card_no FROM card_transaction)
             AND source_updated_at <= (SELECT MAX(at) FROM card_transaction)
           ORDER BY card_no LIMIT 1""",
    )
    with broken(
        engine,
        f"UPDATE card_account SET balance_fen = balance_fen + 1 WHERE card_no = '{card}'",
        restore=[f"UPDATE card_account SET balance_fen = {balance} WHERE card_no = '{card}'"],
    ) as connection:
        outcome = quality.card_balance_problems(connection)
        # A partition run checks the cards of its days alone: this card's last day, and a day
        # without it.
        last_day = connection.execute(
            text(f"SELECT day FROM card_transaction WHERE card_no = '{card}' ORDER BY seq DESC LIMIT 1")
        ).scalar_one()
        last_day = dt.date.fromisoformat(str(last_day))
        windowed = quality.card_balance_problems(connection, (last_day, last_day))
        elsewhere = quality.card_balance_problems(connection, (dt.date(2000, 1, 1), dt.date(2000, 1, 2)))
    assert not outcome.passed and outcome.counts["failing"] == 1
    (sample,) = outcome.samples
    assert sample["card_no"] == card and sample["balance_fen"] == balance + 1 == sample["balance_after_fen"] + 1
    assert not windowed.passed and windowed.samples == outcome.samples
    assert elsewhere.passed and elsewhere.counts["cards_with_transactions"] == 0


def test_transactions_newer_than_the_account_snapshot_are_not_yet_in_the_balance(layer: Layer) -> None:
    """A transaction after the accounts were pulled must not fail the check (the next sync
    brings the new balance); the same transaction before the snapshot must. The card system
    stamps transactions to the second and serves account changes up to the start of the
    current second, so a transaction stamped in the snapshot's own second is not yet covered."""
    engine = layer.engine
    card = scalar(engine, "SELECT MIN(card_no) FROM card_transaction")
    with engine.connect() as connection:
        snapshot = quality.account_snapshot(connection)
    assert snapshot is not None

    def late(at: dt.datetime) -> quality.Outcome:
        """The balance check with one more transaction of `card`, stored the way unify stores it."""
        table = CardTransaction.__table__
        row = {"card_no": card, "amount_fen": -100, "balance_after_fen": -999_999, "kind": "消费"}
        with engine.begin() as connection:
            seq = connection.execute(select(func.max(table.c.seq))).scalar_one() + 1
            connection.execute(insert(table).values(seq=seq, at=at, day=at.astimezone(quality.CST).date(), **row))
        try:
            with engine.connect() as connection:
                return quality.card_balance_problems(connection)
        finally:
            with engine.begin() as connection:
                connection.execute(delete(table).where(table.c.seq == seq))

    assert late(snapshot + dt.timedelta(hours=1)).passed
    assert late(snapshot).passed
    early = late(snapshot - dt.timedelta(minutes=1))
    assert not early.passed and [s["card_no"] for s in early.samples] == [card]


def test_broken_transaction_chain_fails(layer: Layer) -> None:
    engine = layer.engine
    seq = scalar(engine, "SELECT MAX(seq) FROM card_transaction WHERE seq < (SELECT MAX(seq) FROM card_transaction)")
    card = scalar(engine, f"SELECT card_no FROM card_transaction WHERE seq = {seq}")
    with broken(
        engine,
        f"UPDATE card_transaction SET amount_fen = amount_fen + 5 WHERE seq = {seq}",
        restore=[f"UPDATE card_transaction SET amount_fen = amount_fen - 5 WHERE seq = {seq}"],
    ) as connection:
        outcome = quality.card_chain_problems(connection)
        day = dt.date.fromisoformat(
            str(connection.execute(text(f"SELECT day FROM card_transaction WHERE seq = {seq}")).scalar_one())
        )
        windowed = quality.card_chain_problems(connection, (day, day))  # a partition run of that day
    assert not outcome.passed and outcome.counts["failing"] == 1
    (sample,) = outcome.samples
    assert sample["seq"] == seq and sample["card_no"] == card
    assert sample["previous_balance_fen"] + sample["amount_fen"] == sample["balance_after_fen"] + 5
    assert not windowed.passed and windowed.counts["failing"] == 1 and windowed.samples == outcome.samples


def test_payments_beyond_the_tolerance_fail(layer: Layer) -> None:
    engine = layer.engine
    with engine.connect() as connection:
        bill, amount, paid, count = connection.execute(
            text(
                """SELECT b.bill_no, b.amount_fen, SUM(p.amount_fen), COUNT(*) FROM fee_bill b
                   JOIN payment p ON p.bill_no = b.bill_no GROUP BY b.bill_no, b.amount_fen
                   ORDER BY b.bill_no LIMIT 1"""
            )
        ).one()
        payment, share = connection.execute(
            text(f"SELECT payment_no, amount_fen FROM payment WHERE bill_no = '{bill}' ORDER BY payment_no LIMIT 1")
        ).one()

    def paying(extra: int) -> quality.Outcome:
        # Raise one payment so that the bill's payments total its amount plus `extra`.
        raised = share + (amount - paid) + extra
        with broken(
            engine,
            f"UPDATE payment SET amount_fen = {raised} WHERE payment_no = '{payment}'",
            restore=[f"UPDATE payment SET amount_fen = {share} WHERE payment_no = '{payment}'"],
        ) as connection:
            return quality.overpaid_bills(connection)

    assert paying(quality.TOLERANCE_FEN).passed
    over = paying(quality.TOLERANCE_FEN + 1)
    assert not over.passed and over.counts["failing"] == 1
    paid_fen = amount + quality.TOLERANCE_FEN + 1
    assert over.samples == [{"bill_no": bill, "amount_fen": amount, "paid_fen": paid_fen, "payments": count}]


def test_bills_the_held_payments_fall_short_of_are_warned_of_with_the_amount_missing(layer: Layer) -> None:
    engine = layer.engine
    with engine.connect() as connection:
        assert quality.unaccounted_bill_payments(connection).passed  # the stand-ins' payments add up
        # (bill, paid, its first payment) of the first bill paid in `count` payments
        paid_in = text(
            """SELECT b.bill_no, b.paid_fen, MIN(p.payment_no) FROM fee_bill b
               JOIN payment p ON p.bill_no = b.bill_no GROUP BY b.bill_no, b.paid_fen
               HAVING COUNT(*) = :count ORDER BY b.bill_no LIMIT 1"""
        )
        instalments = connection.execute(paid_in, {"count": 2}).one()
        single = connection.execute(paid_in, {"count": 1}).one()
        first_share = scalar(engine, f"SELECT amount_fen FROM payment WHERE payment_no = '{instalments[2]}'")
    # One instalment of a bill not pulled yet, and the only payment of another gone from the hub.
    gone = [instalments[2], single[2]]
    marked = ", ".join(f"'{payment_no}'" for payment_no in gone)
    with broken(
        engine,
        f"UPDATE payment SET deleted_at = CURRENT_TIMESTAMP WHERE payment_no IN ({marked})",
        restore=[f"UPDATE payment SET deleted_at = NULL WHERE payment_no IN ({marked})"],
    ) as connection:
        outcome = quality.unaccounted_bill_payments(connection)
    assert not outcome.passed
    assert outcome.counts["failing"] == 2 and outcome.counts["missing_fen"] == first_share + single[1]
    expected = [
        {"bill_no": single[0], "paid_fen": single[1], "held_fen": 0, "payments": 0, "missing_fen": single[1]},
        {
            "bill_no": instalments[0],
            "paid_fen": instalments[1],
            "held_fen": instalments[1] - first_share,
            "payments": 1,
            "missing_fen": first_share,
        },
    ]
    assert outcome.samples == sorted(expected, key=lambda bill: (-bill["missing_fen"], bill["bill_no"]))
    with engine.connect() as connection:
        assert quality.unaccounted_bill_payments(connection).passed


def test_phones_left_out_are_warned_of_masked_by_source_and_hold_nothing_back(layer: Layer) -> None:
    engine = layer.engine
    card_no = scalar(engine, "SELECT MIN(card_no) FROM card_account WHERE deleted_at IS NULL")
    sent = {"academic": "0759-2383000", "card": "+44 20 7946 0958"}
    set_phone = "UPDATE source_identity SET phone_unusable = :phone WHERE source = :source AND source_key = :key"
    with engine.connect() as connection:
        student_no, gone = connection.execute(text("SELECT student_no FROM student ORDER BY 1 LIMIT 2")).scalars()
        assert quality.unusable_phones(connection).passed  # the stand-ins send mobiles alone
    with broken(
        engine,
        (set_phone, {"phone": sent["academic"], "source": "academic", "key": student_no}),
        (set_phone, {"phone": sent["card"], "source": "card", "key": card_no}),
        # A record its source no longer has: nothing left there to correct.
        (set_phone, {"phone": "0759-2383001", "source": "academic", "key": gone}),
        f"UPDATE student SET deleted_at = CURRENT_TIMESTAMP WHERE student_no = '{gone}'",
        restore=[
            "UPDATE source_identity SET phone_unusable = NULL WHERE phone_unusable IS NOT NULL",
            f"UPDATE student SET deleted_at = NULL WHERE student_no = '{gone}'",
        ],
    ) as connection:
        outcome = quality.unusable_phones(connection)
        identities = sum(live(engine, table) for table in ("student", "staff", "card_account"))
        connection.rollback()  # not a reader in the way of the run's writes
        result = materialize(
            [persons, *checks_on([persons])],
            resources={"database": layer.resources["database"]},
            instance=layer.instance,
            raise_on_error=False,
        )
    assert not outcome.passed
    assert outcome.counts == {
        "identities": identities,
        "failing": 2,
        "academic: phone not a mainland mobile": 1,
        "card: phone not a mainland mobile": 1,
    }
    assert outcome.samples == [
        {"source": "academic", "source_key": student_no, "phone": "075*****3000"},
        {"source": "card", "source_key": card_no, "phone": "+44*********0958"},
    ]
    shown = str(outcome.metadata())
    assert "2383000" not in shown and "7946" not in shown
    # The persons' warning: a WARN that holds nothing back, its keys as the rule gave them.
    warning = evaluations(result)["persons.phones"]
    assert result.success and not warning.passed and warning.severity == AssetCheckSeverity.WARN
    assert value(warning, "failing_keys") == outcome.samples and value(warning, "failing") == 2
    assert "persons" in materialized(result)
    with engine.connect() as connection:
        # The verdict kept for the steward desk says it only warns; the persons' others block.
        kept = dict(
            connection.execute(
                select(CheckResult.check_name, CheckResult.blocking).where(CheckResult.entity == "persons")
            ).all()
        )
        assert quality.unusable_phones(connection).passed
    assert kept == {"columns": True, "row_count": True, "id_numbers": True, "phones": False}


def test_id_numbers_that_disagree_are_reported_by_person_never_by_number(layer: Layer) -> None:
    with layer.engine.connect() as connection:
        rows = connection.execute(
            text(
                """SELECT id, id_number_cipher, birth_date, sex FROM person
                   WHERE id_number_cipher IS NOT NULL AND birth_date IS NOT NULL AND sex IN ('1', '2')
                     AND id_type = '1'
                   ORDER BY id LIMIT 3"""
            )
        ).all()
    (born, _, birth, _), (sexed, _, _, sex), (forged, cipher, _, _) = rows
    numbers = [decrypt_id(row.id_number_cipher) for row in rows]
    birth = dt.date.fromisoformat(str(birth)[:10])
    # The right person's number with a wrong check character.
    bad = numbers[2][:17] + next(c for c in "0123456789X" if c != numbers[2][17])
    with broken(
        layer.engine,
        f"UPDATE person SET birth_date = '{birth + dt.timedelta(days=1)}' WHERE id = {born}",
        f"UPDATE person SET sex = '{'2' if sex == '1' else '1'}' WHERE id = {sexed}",
        ("UPDATE person SET id_number_cipher = :cipher WHERE id = :id", {"cipher": encrypt_id(bad), "id": forged}),
        restore=[
            f"UPDATE person SET birth_date = '{birth}' WHERE id = {born}",
            f"UPDATE person SET sex = '{sex}' WHERE id = {sexed}",
            ("UPDATE person SET id_number_cipher = :cipher WHERE id = :id", {"cipher": cipher, "id": forged}),
        ],
    ) as connection:
        outcome = quality.id_number_problems(connection)
    assert not outcome.passed
    assert outcome.counts["failing"] == 3
    assert outcome.counts["id number: birth date disagrees with the record"] == 1
    assert outcome.counts["id number: sex digit disagrees with the record"] == 1
    assert outcome.counts["id number: check digit does not match"] == 1
    assert {s["person_id"] for s in outcome.samples} == {born, sexed, forged}
    shown = str(outcome.metadata())
    assert not any(number[6:] in shown for number in [*numbers, bad])  # not even the birth date and sequence


def test_other_documents_are_held_to_their_form_and_never_to_a_birth_date(layer: Layer) -> None:
    with layer.engine.connect() as connection:
        holders = connection.execute(
            text(
                """SELECT id, id_type, id_number_cipher, birth_date FROM person
                   WHERE id_type <> '1' AND birth_date IS NOT NULL ORDER BY id"""
            )
        ).all()
        assert len(holders) >= 2 and quality.id_number_problems(connection).passed
    (moved, _, _, birth), (typo, kind, cipher, _) = holders[:2]
    birth = dt.date.fromisoformat(str(birth)[:10])
    number = decrypt_id(cipher)
    with broken(
        layer.engine,
        # Nothing in a permit or passport number says when its holder was born...
        f"UPDATE person SET birth_date = '{birth + dt.timedelta(days=1)}' WHERE id = {moved}",
        # ...but a lower-case letter or a space is no document's number.
        (
            "UPDATE person SET id_number_cipher = :cipher WHERE id = :id",
            {"cipher": encrypt_id(f" {number}"), "id": typo},
        ),
        restore=[
            f"UPDATE person SET birth_date = '{birth}' WHERE id = {moved}",
            ("UPDATE person SET id_number_cipher = :cipher WHERE id = :id", {"cipher": cipher, "id": typo}),
        ],
    ) as connection:
        outcome = quality.id_number_problems(connection)
    assert not outcome.passed and outcome.counts["failing"] == 1
    assert outcome.counts[f"id number: not the form of a document of type {kind}"] == 1
    assert outcome.samples == [{"person_id": typo, "problem": f"id number: not the form of a document of type {kind}"}]
    assert number not in str(outcome.metadata())


def test_windowed_validations_read_through_the_windows_own_index_on_sqlite(tmp_path: Path) -> None:
    """SQLite would answer GX's unique-key query by walking the whole table through the key's
    index; every windowed table names the index of its window column instead — and the plan
    of that query then searches by the window."""
    sqlite_url, pg_url = f"sqlite:///{tmp_path / 'plan.db'}", "postgresql+psycopg://hub@db/hub"
    windows = {t: quality._written_at(t) for t in quality.TABLE_RULES if quality._written_at(t)}
    windows |= {t: "day" for t in quality.DAILY_TABLES}
    for table, column in windows.items():
        assert quality._windowed_source(pg_url, table, table, column) == table
        assert quality._windowed_source(sqlite_url, table, f"{table}_copy", column) == f"{table}_copy"
        assert quality._windowed_source(sqlite_url, table, table, column).startswith(f"{table} INDEXED BY ix_")
    engine = make_engine(sqlite_url)
    upgrade(engine)
    source = quality._windowed_source(sqlite_url, "grade", "grade", "loaded_at")
    grouped = (
        f"SELECT g.student_no FROM (SELECT * FROM {source} WHERE loaded_at >= '2026-11-27') g JOIN"
        f" (SELECT student_no, course_code, term, count(*) n FROM (SELECT * FROM {source}"
        " WHERE loaded_at >= '2026-11-27') GROUP BY 1, 2, 3) c USING (student_no, course_code, term)"
    )
    with engine.connect() as connection:
        plan = " ".join(str(row) for row in connection.execute(text(f"EXPLAIN QUERY PLAN {grouped}")))
    engine.dispose()
    assert "SEARCH grade USING INDEX ix_grade_loaded_at" in plan and "SCAN grade" not in plan
