"""The academic affairs connector against the running stand-in, over real HTTP."""

from __future__ import annotations

import pytest

from campushub.connectors.academic import STREAMS, AcademicSource
from campushub.connectors.base import AuthError, Batch, MalformedPageError
from campushub.simulators.academic import CORRUPTIBLE
from campushub.simulators.malformed import malformed_kind, repeats_previous_page
from campushub.simulators.server import SimulatorCluster
from tests.conftest import FAST_RETRY, apply_changes, http_settings, set_faults


def connector(cluster: SimulatorCluster, page_size: int = 97, **overrides: object) -> AcademicSource:
    return AcademicSource(http_settings(cluster, "academic", **overrides), "dev-academic-key", page_size=page_size)


def pull(cluster: SimulatorCluster, stream: str, cursor: str | None = None, page_size: int = 97) -> list[Batch]:
    with connector(cluster, page_size) as source:
        return list(source.read(stream, cursor))


def keys(batches: list[Batch]) -> list[str]:
    return [record.key for batch in batches for record in batch.records if record.key]


def expected_student_keys(cluster: SimulatorCluster) -> list[str]:
    return [cluster.world.student(i).student_no for i in range(cluster.world.student_count)]


@pytest.mark.parametrize("page_size", [1000, 97, 600])
def test_students_every_record_exactly_once(simulators: SimulatorCluster, page_size: int) -> None:
    batches = pull(simulators, "students", page_size=page_size)
    assert keys(batches) == expected_student_keys(simulators)
    assert all(record.ok for batch in batches for record in batch.records)
    assert batches[-1].cursor is not None and all(b.cursor is None for b in batches[:-1])


def test_grades_complete_at_medium_scale(medium_simulators: SimulatorCluster) -> None:
    batches = pull(medium_simulators, "students", page_size=1000)
    assert len(set(keys(batches))) == len(keys(batches)) == medium_simulators.world.student_count == 5_000
    grades = pull(medium_simulators, "grades", page_size=1000)
    grade_keys = keys(grades)
    assert len(grade_keys) == len(set(grade_keys)) == medium_simulators.world.grade_count


def test_reference_streams(simulators: SimulatorCluster) -> None:
    colleges = pull(simulators, "colleges")
    assert {r.data["YXMC"] for b in colleges for r in b.records} >= {"水产学院", "海洋与气象学院"}
    classes = keys(pull(simulators, "classes", page_size=50))
    assert len(classes) == len(set(classes)) == len(simulators.world.classes())
    assert keys(pull(simulators, "courses")) and keys(pull(simulators, "majors"))


def test_incremental_pull_returns_exactly_the_changes(simulators: SimulatorCluster) -> None:
    cursor = pull(simulators, "students")[-1].cursor
    changes = apply_changes(simulators, 40, seed=11)
    expected = {c["key"] for c in changes if c["stream"] == "students"}
    assert expected, "the seed must produce student changes"
    batches = pull(simulators, "students", cursor)
    assert set(keys(batches)) == expected
    assert len(keys(batches)) == len(expected)
    # Nothing changed since: the next pull is empty and moves the cursor forward.
    again = pull(simulators, "students", batches[-1].cursor)
    assert keys(again) == [] and again[-1].cursor >= batches[-1].cursor


def test_bad_api_key_fails_fast(simulators: SimulatorCluster) -> None:
    source = AcademicSource(http_settings(simulators, "academic"), "wrong-key")
    with pytest.raises(AuthError) as raised, source:
        list(source.read("students"))
    assert "credentials refused (HTTP 401)" in str(raised.value)
    assert "wrong-key" not in str(raised.value)


@pytest.mark.parametrize(
    "knobs",
    [
        {"error_rate": 0.3},
        {"rate_limit_rate": 0.3, "retry_after": 0},
        {"drop_rate": 0.3},
        {"truncate_rate": 0.3},
        {"latency_ms": 20},
        {"error_rate": 0.1, "rate_limit_rate": 0.1, "drop_rate": 0.1, "truncate_rate": 0.1},
    ],
    ids=["5xx", "429", "drop", "truncate", "latency", "all"],
)
def test_faults_lose_nothing_and_duplicate_nothing(simulators: SimulatorCluster, knobs: dict[str, float]) -> None:
    set_faults(simulators, "academic", **knobs)
    assert keys(pull(simulators, "students", page_size=50)) == expected_student_keys(simulators)


def test_page_that_stays_malformed_fails_with_source_url_and_page(simulators: SimulatorCluster) -> None:
    set_faults(simulators, "academic", truncate_rate=1.0)
    with pytest.raises(MalformedPageError) as raised:
        pull(simulators, "students")
    message = str(raised.value)
    assert message.startswith(f"academic: gave up after {FAST_RETRY.attempts} attempts")
    assert "/api/v1/students" in message and "(page 1)" in message


def test_malformed_records_come_out_flagged_with_reasons(simulators: SimulatorCluster) -> None:
    rate, page_size = 0.2, 20
    set_faults(simulators, "academic", malformed_rate=rate)
    records = [r for b in pull(simulators, "students", page_size=page_size) for r in b.records]
    world = simulators.world
    # What the simulator served, in order: each page, sometimes led by the previous page's last record.
    served: list[tuple[int, bool]] = []
    for page in range(1, -(-world.student_count // page_size) + 1):
        first = (page - 1) * page_size
        if repeats_previous_page(world.seed, "students", page, rate):
            served.append((first - 1, True))
        served += [(i, False) for i in range(first, min(first + page_size, world.student_count))]
    assert len(records) == len(served) and sum(repeat for _, repeat in served) >= 2
    reasons = {
        "bad_check_digit": "SFZJH: id number: check digit does not match",
        "impossible_date": "CSRQ: '2005-02-30' is not a valid date (%Y-%m-%d)",
        "missing_key": "missing XH",
        "unknown_code": "XBM: unknown code '7'",
    }
    flagged = 0
    for record, (index, repeat) in zip(records, served, strict=True):
        kind = malformed_kind(world.seed, "students", index, rate, CORRUPTIBLE["students"])
        expected = {reasons[kind]} if kind else set()
        if repeat and kind != "missing_key":  # a record without its key cannot be recognised again
            expected.add("duplicate: the same record was already sent")
        assert set(record.problems) == expected, (index, record.problems)
        assert record.data  # the raw payload travels with the flag
        flagged += bool(expected)
    assert flagged >= 60


def test_students_registered_with_other_documents_pass_and_a_number_of_the_wrong_form_is_flagged(
    simulators: SimulatorCluster,
) -> None:
    """Hong Kong, Macao and Taiwan students register with their travel permits, foreign students
    with a passport or permanent residence card: each number is held to its own document's form."""
    got = [record for batch in pull(simulators, "students", page_size=1000) for record in batch.records]
    documents = {record.data["SFZJLXM"] for record in got}
    assert "1" in documents and documents - {"1"}, documents
    assert all(record.ok for record in got)
    spec = STREAMS["students"]
    rows = [record.data for record in got]
    assert spec.clean_page_keys(rows) == [record.key for record in got]  # vouched for a page at a time
    permit = next(row for row in rows if row["SFZJLXM"] not in ("1", "A"))
    wrong = {
        "a stray character": (
            {**permit, "SFZJH": permit["SFZJH"] + "-"},
            f"SFZJH: id number: not the form of a document of type {permit['SFZJLXM']}",
        ),
        "named a resident card": (
            {**permit, "SFZJLXM": "1"},
            "SFZJH: id number: not 17 digits and a check character",
        ),
        "an unknown document": ({**permit, "SFZJLXM": "Q"}, "SFZJLXM: unknown code 'Q'"),
    }
    for case, (row, reason) in wrong.items():
        assert spec.problems(row) == [reason], case
        assert permit["SFZJH"] not in reason
        assert spec.clean_page_keys([*rows[:5], row]) is None, case  # the page goes record by record


def test_an_id_number_written_another_way_is_read_as_its_document_prints_it(simulators: SimulatorCluster) -> None:
    """A lower-case x, full-width digits from a Chinese input method, the card's gaps typed as
    spaces: the same number, not a malformed record."""
    spec = STREAMS["students"]
    rows = [record.data for batch in pull(simulators, "students", page_size=1000) for record in batch.records]
    resident = next(row for row in rows if row["SFZJLXM"] == "1" and row["SFZJH"].endswith("X"))
    number = resident["SFZJH"]
    written = {
        "lower case": number.lower(),
        "full width": "".join(chr(ord(c) + 0xFEE0) for c in number),
        "with gaps": f" {number[:6]} {number[6:14]} {number[14:]} ",
    }
    for case, value in written.items():
        row = {**resident, "SFZJH": value}
        assert spec.problems(row) == [], case
        assert spec.clean_page_keys([row]) is None  # the page goes record by record


def test_a_deletion_mid_pull_starts_the_pull_again_and_no_record_is_skipped(caplog: pytest.LogCaptureFixture) -> None:
    """A deletion is not pinned to the pull's first page: it shifts the later pages by a record,
    and one record would cross a page boundary unread. The moved total gives it away."""
    from tests.conftest import start_cluster

    cluster = start_cluster(60)  # its own: the deletion changes the world
    try:
        with connector(cluster, page_size=7) as source:
            pages = source.read("students")
            first = next(pages)
            apply_changes(cluster, 1, seed=4, kinds=["student_deleted"])  # one of the first page's
            rest = list(pages)
        (deleted,) = cluster.world.changes.deleted_students
        live = {cluster.world.student(i).student_no for i in range(cluster.world.student_count) if i != deleted}
        read = keys([first, *rest])
        assert live <= set(read), sorted(live - set(read))
        # The second pull, from page 1, read every live record once.
        labels = [batch.page for batch in rest]
        again = len(labels) - labels[::-1].index("page 1") - 1
        assert sorted(keys(rest[again:])) == sorted(live)
        assert {batch.pull for batch in rest[again:]} == {2} and first.pull == 1  # for the reconcile's count
        assert "pulling it again from the first page" in caplog.text
    finally:
        cluster.stop()


def test_an_answer_of_another_shape_is_a_malformed_page_naming_the_source() -> None:
    """A JSON array where the envelope object should be: the parser meets it as `.get` on a
    list — a malformed page, retried and then named, not an error that escapes the retries."""
    import httpx

    from campushub.connectors.base import HttpSettings

    served: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        served.append(request.url.path)
        return httpx.Response(200, json=[{"code": 0}])

    settings = HttpSettings(base_url="http://academic.test", retry=FAST_RETRY, timeout=5.0, deadline=5.0)
    source = AcademicSource(settings, "key", transport=httpx.MockTransport(handler))
    with source, pytest.raises(MalformedPageError) as failed:
        list(source.read("students"))
    assert "academic" in str(failed.value) and "page 1" in str(failed.value)
    assert len(served) == FAST_RETRY.attempts  # retried as any malformed page is
