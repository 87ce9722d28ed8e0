"""The unified layer's schema, normalisation, survivorship and ID protection."""

from __future__ import annotations

import datetime as dt
import json
import threading
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Date, bindparam, column, event, insert, inspect, select, table, text
from sqlalchemy.types import TypeEngine

from campushub.models import Base
from campushub.models import normalize as norm
from campushub.models import unify as unify_module
from campushub.models.base import UTCDateTime, utcnow
from campushub.models.engine import decode_json, execute_built, make_engine, reading_only
from campushub.models.ingest import (
    _KEY_LISTS,
    _LATEST_HASH,
    LandingResult,
    _latest_hashes,
    bind_processors,
    bulk_update,
    content_hash,
    land_batches,
    prefetched,
)
from campushub.models.landing import RawRecord
from campushub.models.migrate import upgrade
from campushub.models.protect import decrypt_id, encrypt_id, id_hash, mask_id
from campushub.models.survivorship import Candidate, choose, rules
from campushub.models.unified import Grade, Person, SourceIdentity
from campushub.models.unify import MAPPINGS, _write, stored_hashes, stored_hashes_query, unify
from tests.databases import DATABASES, fresh_database
from tests.landing_support import Batch, Record

CST = dt.timezone(dt.timedelta(hours=8))


@DATABASES
def test_migrations_build_exactly_the_models(database_kind: str, tmp_path: Path) -> None:
    with fresh_database(database_kind, tmp_path) as engine:
        upgrade(engine)
        assert set(inspect(engine).get_table_names()) >= set(Base.metadata.tables)
        with engine.connect() as connection:
            differences = compare_metadata(MigrationContext.configure(connection), Base.metadata)
        assert differences == []
        upgrade(engine)  # a second upgrade is a no-op


@DATABASES
def test_landing_compares_with_each_keys_newest_version_by_its_own_index(database_kind: str, tmp_path: Path) -> None:
    """The look-up behind "unchanged, not landed again": the newest version per key, found by
    probing (source, stream, source_key, id) — never by reading the stream in id order, which
    made a first load quadratic."""
    with fresh_database(database_kind, tmp_path) as engine:
        upgrade(engine)
        versions = [[Record(f"S{n}", {"n": n, "v": v}) for n in range(50)] for v in range(3)]
        with engine.begin() as connection:
            result = LandingResult("academic", "students", "run-1", "full", None)
            land_batches(connection, "academic", "students", [Batch(batch) for batch in versions], result)
            assert result.landed == 150
            newest = _latest_hashes(connection, "academic", "students", ["S7", "S49", "missing"])
            assert newest == {"S7": content_hash({"n": 7, "v": 2}), "S49": content_hash({"n": 49, "v": 2})}

            statement, parameters = _LATEST_HASH_PLAN[database_kind]
            if database_kind == "postgresql":
                connection.execute(text("SET LOCAL enable_seqscan = off"))  # a tiny table: make it choose an index
            plan = " ".join(str(row) for row in connection.execute(text(statement), parameters))
        assert "ix_raw_record_key" in plan
        assert "ix_raw_record_stream_id" not in plan


@DATABASES
def test_a_streams_records_are_read_from_the_watermark_through_the_partial_index(
    database_kind: str, tmp_path: Path
) -> None:
    """Raw landing's record indexes leave events out (they are partial): every read of a
    stream's records must say so, or it reads all of raw landing."""
    from campushub.models.landing import landed_records
    from campushub.models.unify import _raw_query

    with fresh_database(database_kind, tmp_path) as engine:
        upgrade(engine)
        with engine.begin() as connection:
            if database_kind == "postgresql":
                connection.execute(text("SET LOCAL enable_seqscan = off"))  # a tiny table: make it choose an index
            explain = "EXPLAIN " if database_kind == "postgresql" else "EXPLAIN QUERY PLAN "
            for query in (
                _raw_query(MAPPINGS[("academic", "grades")], 42, None),
                landed_records("hr", "positions", "payload"),
            ):
                compiled = query.compile(engine, compile_kwargs={"literal_binds": True})
                plan = " ".join(str(row) for row in connection.exec_driver_sql(explain + str(compiled)))
                assert "ix_raw_record_stream_id" in plan, plan
                assert "SCAN raw_record" not in plan and "Seq Scan" not in plan, plan


@DATABASES
def test_a_departments_correction_requests_are_paged_through_the_status_source_index(
    database_kind: str, tmp_path: Path
) -> None:
    """The officers' list filters on status and the department's own source and pages by id:
    the statement the list really runs must find its page through an index on that filter, not
    by walking every request in id order."""
    from campushub.graphql.records import encode_cursor, page
    from campushub.graphql.workorders import _deciding
    from campushub.models.service import CorrectionRequest

    with fresh_database(database_kind, tmp_path) as engine:
        upgrade(engine)
        query = _deciding(
            select(CorrectionRequest.__table__).where(CorrectionRequest.status == "open"), frozenset({"card"})
        )
        statements: list[tuple[str, Any]] = []

        def keep(_connection: Any, _cursor: Any, statement: str, parameters: Any, *_: Any) -> None:
            statements.append((statement, parameters))

        with engine.begin() as connection:
            event.listen(engine, "before_cursor_execute", keep)
            try:
                page(connection, query, CorrectionRequest.id, "correction", 20, encode_cursor("correction", "5"), int)
            finally:
                event.remove(engine, "before_cursor_execute", keep)
            [(statement, parameters)] = statements
            if database_kind == "postgresql":
                connection.execute(text("SET LOCAL enable_seqscan = off"))  # a tiny table: make it choose an index
            explain = "EXPLAIN " if database_kind == "postgresql" else "EXPLAIN QUERY PLAN "
            plan = " ".join(str(row) for row in connection.exec_driver_sql(explain + statement, parameters))
        assert "ix_correction_request_status_source" in plan, plan
        assert "SCAN correction_request" not in plan and "Filter" not in plan, plan


def test_a_record_the_source_fingerprints_is_compared_by_that_and_encoded_only_to_land(tmp_path: Path) -> None:
    with fresh_database("sqlite", tmp_path) as engine:
        upgrade(engine)

        def land(*records: Record) -> LandingResult:
            result = LandingResult("finance", "fee_bills", "run-1", "full", None)
            with engine.begin() as connection:
                land_batches(connection, "finance", "fee_bills", [Batch(list(records))], result)
            return result

        assert land(Record("B1", {"amount": "100"}, digest="d1")).landed == 1
        # Same fingerprint: unchanged, whatever the data says; a new fingerprint lands.
        assert land(Record("B1", {"amount": "999"}, digest="d1")).unchanged == 1
        assert land(Record("B1", {"amount": "200"}, digest="d2")).landed == 1
        with engine.connect() as connection:
            stored = connection.exec_driver_sql(
                "SELECT content_hash, payload FROM raw_record WHERE source_key = 'B1' ORDER BY id"
            ).all()
        assert stored == [("d1", '{"amount": "100"}'), ("d2", '{"amount": "200"}')]


def test_a_first_load_without_statistics_still_probes_each_keys_own_versions(tmp_path: Path) -> None:
    """PostgreSQL plans the per-page look-up before any statistics exist for a stream's first
    load (one transaction): it must still probe the key index, never walk the stream by id."""
    with fresh_database("postgresql", tmp_path) as engine:
        upgrade(engine)
        with engine.begin() as connection:
            for version in range(2):
                pages = [
                    Batch([Record(f"S{n}", {"n": n, "v": version}) for n in range(s, s + 1000)])
                    for s in range(0, 20_000, 1000)
                ]
                result = LandingResult("academic", "grades", "run-1", "full", None)
                land_batches(connection, "academic", "grades", pages, result)
            statement, _ = _LATEST_HASH_PLAN["postgresql"]
            keys = json.dumps([f"S{n}" for n in range(1000)])
            plan = " ".join(
                str(row)
                for row in connection.execute(text(statement), {"source": "academic", "stream": "grades", "keys": keys})
            )
        assert "ix_raw_record_key" in plan and "ix_raw_record_stream_id" not in plan, plan


@DATABASES
def test_unify_finds_stored_fingerprints_by_probing_the_unique_key(database_kind: str, tmp_path: Path) -> None:
    """A chunk is compared with the rows already stored through the unique key — on PostgreSQL a
    probe per key, also inside a first load's own transaction, which no statistics cover (asked
    for the rows of a list of students, it scanned all grades for every chunk)."""
    table, key = Grade.__table__, ("student_no", "course_code", "term")
    grades = {
        (f"S{n:05d}", f"C{c:02d}", "2025-2026-1"): {
            "student_no": f"S{n:05d}",
            "course_code": f"C{c:02d}",
            "term": "2025-2026-1",
            "score": (n + c) % 100,
        }
        for n in range(2_000)
        for c in range(20)
    }
    asked = [(f"S{n:05d}", "C07", "2025-2026-1") for n in range(0, 3_000, 3)] + [("S00003", "C99", "2025-2026-1")]
    with fresh_database(database_kind, tmp_path) as engine:
        upgrade(engine)
        with engine.begin() as connection:
            _write(connection, table, key, grades, immutable=False, loaded_at=utcnow())
            found = stored_hashes(connection, table, key, asked)
            stored = {
                tuple(row[:3]): row[3]
                for row in connection.execute(text("SELECT student_no, course_code, term, row_hash FROM grade"))
            }
            statement, parameters = stored_hashes_query(connection, table, key, asked)
            if database_kind == "postgresql":
                explained = connection.execute(text("EXPLAIN " + statement.text), parameters)
            else:
                literal = statement.compile(connection, compile_kwargs={"literal_binds": True})
                explained = connection.execute(text(f"EXPLAIN QUERY PLAN {literal}"))
            plan = " ".join(str(row) for row in explained)
    assert found == {k: stored[k] for k in asked if k in grades} and len(found) == 667
    if database_kind == "postgresql":
        assert "uq_grade_student_no_course_code_term" in plan and "Seq Scan on grade" not in plan, plan
    else:
        assert "SEARCH grade USING INDEX sqlite_autoindex_grade_1 (student_no=?)" in plan, plan


@DATABASES
def test_unify_writes_new_changed_and_unchanged_rows_each_their_way(database_kind: str, tmp_path: Path) -> None:
    """New keys are appended (PostgreSQL: copied straight in), changed ones merged, unchanged
    ones left alone — and a value of the wrong type for its column lands as the text the
    database makes of it, the rest of the chunk with it."""
    table, key = Grade.__table__, ("student_no", "course_code", "term")

    def grades(score: int, odd: bool = False) -> dict[tuple[Any, ...], dict[str, Any]]:
        rows = {
            (f"S{n}", "C01", "2025-2026-1"): {
                "student_no": f"S{n}",
                "course_code": "C01",
                "term": "2025-2026-1",
                "score": score if n < 5 else 60,
                "credits": 2.5,
            }
            for n in range(10)
        }
        if odd:  # a number where the course name's text belongs
            rows[("S10", "C01", "2025-2026-1")] = {**rows[("S9", "C01", "2025-2026-1")], "student_no": "S10"}
            for row in rows.values():
                row["course_name"] = 12345 if row["student_no"] == "S10" else "高等数学"
        return rows

    with fresh_database(database_kind, tmp_path) as engine:
        upgrade(engine)
        with engine.begin() as connection:
            first = _write(connection, table, key, grades(70), immutable=False, loaded_at=utcnow())
            again = _write(connection, table, key, grades(70), immutable=False, loaded_at=utcnow())
            changed = _write(connection, table, key, grades(90, odd=True), immutable=False, loaded_at=utcnow())
            stored = {
                row[0]: (row[1], row[2])
                for row in connection.execute(text("SELECT student_no, score, course_name FROM grade"))
            }
    assert first == (10, 0, 0) and again == (0, 0, 10)
    assert changed == (1, 10, 0)  # S10 new; every other row has a course name now, S0-S4 a new score too
    assert stored["S0"] == (90, "高等数学") and stored["S9"] == (60, "高等数学") and stored["S10"] == (60, "12345")


@DATABASES
def test_bulk_updates_change_only_the_rows_and_columns_they_name(database_kind: str, tmp_path: Path) -> None:
    """The rows named by their key (one column or several) get the other values given — text,
    bytes, None, instants and booleans as they are — and every other row and column stays."""
    at = dt.datetime(2026, 12, 6, 8, 30, tzinfo=CST)
    people = [{"id": n, "name": f"P{n}", "phone": "13800000000", "id_number_hash": f"h{n}"} for n in (1, 2, 3)]
    identity = {"role": "student", "name": "P", "row_hash": "0" * 32, "resolved": False}
    with fresh_database(database_kind, tmp_path) as engine:
        upgrade(engine)
        with engine.begin() as connection:
            connection.execute(insert(Person), people)
            connection.execute(
                insert(SourceIdentity), [{**identity, "source": "academic", "source_key": k} for k in ("S1", "S2")]
            )
            bulk_update(
                connection,
                Person.__table__,
                ("id",),
                [
                    {"id": 1, "name": "张三", "id_number_cipher": b"\x00\\\tcipher", "phone": None, "updated_at": at},
                    {"id": 3, "name": "李\t四", "id_number_cipher": None, "phone": "13900000000", "updated_at": at},
                ],
            )
            bulk_update(connection, Person.__table__, ("id",), [])
            bulk_update(
                connection,
                SourceIdentity.__table__,
                ("source", "source_key"),
                [{"source": "academic", "source_key": "S2", "resolved": True, "person_id": 2}],
            )
            persons = {row.id: row for row in connection.execute(select(Person.__table__))}
            identities = {row.source_key: row for row in connection.execute(select(SourceIdentity.__table__))}
    assert (persons[1].name, persons[1].id_number_cipher, persons[1].phone) == ("张三", b"\x00\\\tcipher", None)
    assert persons[1].updated_at == at and persons[1].id_number_hash == "h1"
    assert (persons[2].name, persons[2].phone) == ("P2", "13800000000") and persons[2].updated_at != at
    assert (persons[3].name, persons[3].phone, persons[3].id_number_cipher) == ("李\t四", "13900000000", None)
    assert (identities["S1"].resolved, identities["S1"].person_id) == (False, None)
    assert (identities["S2"].resolved, identities["S2"].person_id) == (True, 2)


@DATABASES
def test_a_text_key_sent_as_a_number_is_merged_and_can_change(database_kind: str, tmp_path: Path) -> None:
    """A source may send a text key as a number: the database stores it as text, where looking
    stored rows up by value does not find it — so its row is merged, never appended, and a
    change to it updates the row instead of failing the load on the unique key."""
    table, key = Grade.__table__, ("student_no", "course_code", "term")

    def grade(score: int) -> dict[tuple[Any, ...], dict[str, Any]]:
        row = {"student_no": 20231001, "course_code": "C01", "term": "2025-2026-1", "score": score}
        return {(20231001, "C01", "2025-2026-1"): row}

    with fresh_database(database_kind, tmp_path) as engine:
        upgrade(engine)
        with engine.begin() as connection:
            _write(connection, table, key, grade(70), immutable=False, loaded_at=utcnow())
            _write(connection, table, key, grade(80), immutable=False, loaded_at=utcnow())
            stored = [tuple(row) for row in connection.execute(text("SELECT student_no, score FROM grade"))]
    assert stored == [("20231001", 80)]


@DATABASES
def test_a_first_load_appends_without_look_ups_until_a_key_comes_twice(
    database_kind: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Into an empty table, PostgreSQL appends a chunk without looking its keys up; a key an
    earlier chunk of the same load wrote (a record that changed while the source was paged)
    makes that chunk and every later one go the usual way — merged, the later version winning."""

    def grade(student_no: str, score: int) -> Record:
        data = {
            "XH": student_no,
            "KCDM": "C01",
            "XNXQ": "2025-2026-1",
            "CJ": str(score),
            "GXSJ": "2026-01-15T10:00:00+08:00",
        }
        return Record(f"{student_no}|C01|2025-2026-1", data)

    looked_up: list[int] = []
    original = unify_module.stored_hashes

    def counting(connection: Any, table: Any, key: Any, keys: list[Any]) -> dict[Any, str]:
        looked_up.append(len(keys))
        return original(connection, table, key, keys)

    monkeypatch.setattr(unify_module, "stored_hashes", counting)
    mapping = MAPPINGS[("academic", "grades")]
    with fresh_database(database_kind, tmp_path) as engine:
        upgrade(engine)
        with engine.begin() as connection:
            result = LandingResult("academic", "grades", "run", "full", None)
            pages = [
                Batch([grade("S1", 60), grade("S2", 61), grade("S3", 62)]),
                Batch([grade("S4", 63), grade("S1", 90), grade("S5", 64)]),
                Batch([grade("S6", 65)]),
            ]
            land_batches(connection, "academic", "grades", pages, result)
            loaded = unify(connection, mapping, "run", chunk=3)
            scores = dict(connection.execute(text("SELECT student_no, score FROM grade")).all())
            again = unify(connection, mapping, "run-2")
    assert scores == {"S1": 90, "S2": 61, "S3": 62, "S4": 63, "S5": 64, "S6": 65}
    assert (loaded.inserted, loaded.updated, again.read) == (6, 1, 0)
    # PostgreSQL appended the first chunk unlooked; from the chunk that repeated a key on, it
    # looks keys up. SQLite looks every chunk up.
    assert looked_up == ([3, 1] if database_kind == "postgresql" else [3, 3, 1])


_LATEST_HASH_PLAN = {
    "sqlite": (
        "EXPLAIN QUERY PLAN " + _LATEST_HASH.format(keys=_KEY_LISTS["sqlite"]),
        {"source": "academic", "stream": "students", "keys": '["S1", "S2"]'},
    ),
    "postgresql": (
        "EXPLAIN " + _LATEST_HASH.format(keys=_KEY_LISTS["postgresql"]),
        {"source": "academic", "stream": "students", "keys": '["S1", "S2"]'},
    ),
}


@pytest.mark.parametrize(
    ("raw", "clean"),
    [
        ("陈\u3000伟 ", "陈伟"),
        ("阿依古丽．买买提", "阿依古丽·买买提"),
        ("艾力•吐尔逊", "艾力·吐尔逊"),
        ("Ｌｉ Ｍｉｎｇ", "Li Ming"),
    ],
)
def test_names_are_nfkc_trimmed_and_dots_unified(raw: str, clean: str) -> None:
    assert norm.person_name(raw) == clean


def test_normalisers_reject_with_reasons() -> None:
    assert norm.phone("+86 138-0013-8000") == "13800138000"
    assert norm.phone("0086 138 0013 8000") == norm.phone("００８６１３８００１３８０００") == "13800138000"
    assert norm.phone("+86 (0)138 0013 8000") == norm.phone("0086-0-13800138000") == "13800138000"
    with pytest.raises(ValueError, match="not an 11-digit"):
        norm.phone("0759-2383000")
    with pytest.raises(ValueError, match="not an 11-digit"):
        norm.phone("0044 7946 0958 12")  # a number from abroad
    assert norm.date("1985/03/12", "%Y/%m/%d") == dt.date(1985, 3, 12)
    with pytest.raises(ValueError, match="not a date"):
        norm.date("1985/02/30", "%Y/%m/%d")
    assert norm.fen("520000") == 520000
    with pytest.raises(ValueError, match="whole number"):
        norm.fen("12a00")
    assert norm.code_from_name("ethnicity", "壮族") == "08"
    assert norm.sex_from_text("女") == "2"
    with pytest.raises(ValueError):
        norm.code("sex", "7")


@pytest.mark.parametrize("value", ["20261127150702", "20260230000000", "20261127250000", "2026112715070x", ""])
def test_compact_timestamps_read_by_hand_as_strptime_reads_them(value: str) -> None:
    def by_strptime() -> dt.datetime:
        return dt.datetime.strptime(value, norm.COMPACT).replace(tzinfo=CST)

    try:
        expected = by_strptime()
    except ValueError:
        with pytest.raises(ValueError, match="not a timestamp in the form"):
            norm.timestamp(value, norm.COMPACT, CST)
    else:
        assert norm.timestamp(value, norm.COMPACT, CST) == expected


def test_prefetched_pages_keep_order_errors_and_stop_when_the_consumer_does() -> None:
    fetched: list[int] = []
    closed = threading.Event()

    def pages(count: int, fail_at: int | None = None) -> Iterator[int]:
        try:
            for page in range(count):
                if page == fail_at:
                    raise ConnectionError(f"page {page}")
                fetched.append(page)
                yield page
        finally:
            closed.set()

    assert list(prefetched(pages(50))) == list(range(50))

    seen = []
    with pytest.raises(ConnectionError, match="page 7"):
        for page in prefetched(pages(50, fail_at=7)):
            seen.append(page)
    assert seen == list(range(7))  # every page before the failure, in order

    fetched.clear()
    closed.clear()
    with closing(prefetched(pages(1000), depth=2)) as reading:
        assert next(reading) == 0
    assert closed.is_set()  # the reader was closed on its own thread …
    assert len(fetched) <= 1 + 2 + 1  # … having read ahead by the depth and the page in flight, no more


def test_survivorship_priority_and_recency() -> None:
    early, late = dt.datetime(2026, 1, 1, tzinfo=dt.UTC), dt.datetime(2026, 6, 1, tzinfo=dt.UTC)
    names = [Candidate("hr", "T1", "王小明", late), Candidate("academic", "S1", "王晓明", early)]
    winner, why = choose("person", "name", names)
    assert winner is not None and winner.value == "王晓明" and "academic is authoritative" in why
    phones = [Candidate("academic", "S1", "13800000000", early), Candidate("hr", "T1", "13900000000", late)]
    winner, why = choose("person", "phone", phones)
    assert winner is not None and winner.value == "13900000000" and why.startswith("most recent: hr")
    assert choose("person", "email", [])[0] is None
    assert set(rules()) >= {"person", "student", "staff", "card_account"}
    # A card's record time moves with every purchase: its phone, however recent the record,
    # gives way to academic's or HR's, and fills in only where neither has one.
    latest = dt.datetime(2026, 12, 1, tzinfo=dt.UTC)
    card = Candidate("card", "C1", "13700000000", latest)
    winner, _ = choose("person", "phone", [*phones, card])
    assert winner is not None and winner.value == "13900000000"
    winner, why = choose("person", "phone", [Candidate("academic", "S1", None, early), card])
    assert winner is card and why == "only card has a value for person.phone (a fallback)"


def test_id_numbers_are_encrypted_and_hashed_not_stored_plain() -> None:
    number = "440111200604257222"
    cipher = encrypt_id(number)
    assert number.encode() not in cipher and decrypt_id(cipher) == number
    assert id_hash(number) == id_hash(number.lower()) and len(id_hash(number)) == 64
    assert number not in id_hash(number)
    assert mask_id(number) == "440***********7222"
    # Another document's shorter number: never more than a quarter of it shown at either end.
    masked = {"H12345678": "H1*****78", "12345678": "12****78", "VNM123456789012": "VNM********9012", "AB1": "***"}
    assert {sent: mask_id(sent) for sent in masked} == masked


@pytest.mark.parametrize(
    ("kind", "value"),
    [
        (UTCDateTime(), dt.datetime(2026, 11, 27, 10, 58, 0, tzinfo=dt.UTC)),
        (UTCDateTime(), dt.datetime(2026, 11, 27, 18, 58, 0, 123456, tzinfo=CST)),
        (UTCDateTime(), dt.datetime(1999, 12, 31, 23, 59, 59, 999999, tzinfo=dt.timezone(dt.timedelta(hours=-5)))),
        (UTCDateTime(), dt.datetime(1001, 1, 1, 0, 0, 1, 1, tzinfo=dt.UTC)),
        (UTCDateTime(), None),
        (Date(), dt.date(2026, 2, 28)),
        (Date(), dt.date(1001, 1, 1)),
        (Date(), dt.datetime(2026, 3, 1, 7, 30)),  # a datetime into a date column: its date
        (Date(), None),
    ],
)
def test_sqlite_bulk_binds_write_the_text_sqlalchemy_writes(kind: TypeEngine[Any], value: Any, tmp_path: Path) -> None:
    """Bulk writers format SQLite dates and instants themselves: byte for byte as SQLAlchemy
    would, or stored values would stop comparing equal (and sorting) with the ORM's."""
    engine = make_engine(f"sqlite:///{tmp_path / 'binds.db'}")
    with engine.connect() as connection:
        probe = table("probe", column("at", kind))
        (fast,) = bind_processors(connection, probe, ["at"])
        sqlalchemy_own = kind.dialect_impl(connection.dialect).bind_processor(connection.dialect)
        assert fast is not None and sqlalchemy_own is not None
        assert fast(value) == sqlalchemy_own(value)
    engine.dispose()


def test_sqlite_bulk_binds_refuse_naive_instants(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'binds.db'}")
    with engine.connect() as connection:
        (fast,) = bind_processors(connection, table("probe", column("at", UTCDateTime())), ["at"])
        with pytest.raises(ValueError, match="naive datetime"):
            fast(dt.datetime(2026, 11, 27, 10, 58))
    engine.dispose()


@DATABASES
def test_statistics_are_refreshed_after_a_bulk_load(database_kind: str, tmp_path: Path) -> None:
    from campushub.models.engine import refresh_statistics

    with fresh_database(database_kind, tmp_path) as engine:
        upgrade(engine)
        refresh_statistics(engine)  # nothing to do on SQLite; must not fail there either
        if database_kind == "postgresql":
            with engine.connect() as connection:
                analyzed = connection.execute(
                    text("SELECT last_analyze IS NOT NULL FROM pg_stat_user_tables WHERE relname = 'card_account'")
                ).scalar_one()
            assert analyzed


@DATABASES
def test_a_load_refreshes_the_statistics_of_what_it_grew_in_its_own_transaction(
    database_kind: str, tmp_path: Path
) -> None:
    """The step after a bulk load plans with statistics of what was loaded, whether or not
    autovacuum has come round: a transaction that grew a table beyond autovacuum's own
    threshold analyzes it, its own rows included; a small change leaves a big table alone."""
    from campushub.models.engine import refresh_grown_statistics

    table, key = Grade.__table__, ("student_no", "course_code", "term")

    grades = {
        (f"S{n:05d}", f"C{c:02d}", "T"): {"student_no": f"S{n:05d}", "course_code": f"C{c:02d}", "term": "T"}
        for n in range(1_000)
        for c in range(10)
    }

    with fresh_database(database_kind, tmp_path) as engine:
        upgrade(engine)
        with engine.begin() as connection:
            _write(connection, table, key, grades, immutable=False, loaded_at=utcnow())
            analyzed = refresh_grown_statistics(connection)
            if database_kind == "postgresql":
                # n_distinct: a count, or minus a share of the rows (from a tenth of them on)
                known = connection.execute(
                    text(
                        "SELECT round(CASE WHEN s.n_distinct < 0 THEN -s.n_distinct * c.reltuples"
                        " ELSE s.n_distinct END) FROM pg_stats s JOIN pg_class c ON c.relname = s.tablename"
                        " WHERE s.tablename = 'grade' AND s.attname = 'student_no'"
                    )
                ).scalar_one()
        with engine.begin() as connection:
            again = refresh_grown_statistics(connection, {"grade": 500})
            told = refresh_grown_statistics(connection, {"grade": 2_000})
    if database_kind == "sqlite":
        assert analyzed == again == told == []  # SQLite needs none
        return
    assert analyzed == ["grade"] and known == 1_000  # its own 1,000 students, sampled before commit
    assert again == [] and told == ["grade"]  # 500 of 10,000 rows is below the threshold; 2,000 is not


def test_json_columns_read_what_the_standard_library_wrote() -> None:
    """orjson reads stored payloads; what it refuses (NaN) or would misread (an integer beyond
    64 bits, as a float) reads back exactly, from text and from bytes (psycopg hands bytes)."""
    values = [
        {"seq": 7, "name": "陈伟", "paid": -1250, "at": None, "rate": 0.1},
        {"x": float("nan")},
        {"big": 2**70, "small": -(2**63)},
        {"card": "6222021234567890123"},  # 19 digits in a string: read by the standard reader, alike
    ]
    for value in values:
        text_ = json.dumps(value, sort_keys=True, ensure_ascii=False)
        for stored in (text_, text_.encode()):
            assert json.dumps(decode_json(stored), sort_keys=True, ensure_ascii=False) == text_
    assert type(decode_json('{"big": 1180591620717411303424}')["big"]) is int
    assert decode_json('{"deep": {"big": [1180591620717411303424]}}') == {"deep": {"big": [2**70]}}
    assert decode_json("[1180591620717411303424]") == [2**70]


def test_a_load_stamps_every_row_it_writes_with_when_it_began(tmp_path: Path, monkeypatch: Any) -> None:
    """One write stamp a load, however long it runs: a columns check re-reads rows stamped
    shortly before its last pass, which per-chunk stamps would make a long load's last chunks."""
    from campushub.models import unify as unify_module

    ticks = iter(dt.datetime(2026, 11, 27, 8, tzinfo=dt.UTC) + dt.timedelta(seconds=10 * n) for n in range(100))
    monkeypatch.setattr(unify_module, "utcnow", lambda: next(ticks))
    grades = [
        {
            "XH": f"2026{n:04d}",
            "KCDM": "MATH101",
            "XNXQ": "2025-2026-1",
            "CJ": "88",
            "GXSJ": "2026-01-20T10:00:00+08:00",
        }
        for n in range(12)
    ]
    with fresh_database("sqlite", tmp_path) as engine:
        upgrade(engine)
        with engine.begin() as connection:
            result = LandingResult("academic", "grades", "run-land", "full", None)
            batch = Batch([Record(f"{g['XH']}|MATH101|2025-2026-1", g) for g in grades])
            land_batches(connection, "academic", "grades", [batch], result)
            loaded = unify(connection, MAPPINGS[("academic", "grades")], "run-unify", chunk=5)
            stamps = connection.exec_driver_sql("SELECT DISTINCT loaded_at FROM grade").scalars().all()
    assert loaded.inserted == 12
    assert stamps == ["2026-11-27 08:00:00.000000"]


@DATABASES
def test_a_kept_statement_runs_compiled_once_as_sqlalchemy_runs_it(database_kind: str, tmp_path: Path) -> None:
    """`execute_built` answers as `Connection.execute` does — typed results, an expanding IN
    list of any length — compiling the statement once per dialect; it refuses DML, whose
    compiled form depends on the parameters given."""
    with fresh_database(database_kind, tmp_path) as engine:
        upgrade(engine)
        at = dt.datetime(2026, 12, 6, 8, 30, tzinfo=dt.UTC)
        with engine.begin() as connection:
            connection.execute(
                insert(Person),
                [{"name": f"学生{n}", "created_at": at, "updated_at": at} for n in range(5)],
            )
        statement = select(Person.id, Person.name, Person.updated_at).where(
            Person.id.in_(bindparam("ids", expanding=True))
        )
        with engine.connect() as connection:
            ids = list(connection.execute(select(Person.id).order_by(Person.id)).scalars())
            for wanted in (ids[:1], ids[1:4], []):
                built = execute_built(connection, statement, {"ids": wanted}).all()
                assert built == connection.execute(statement, {"ids": wanted}).all()
                assert [row.updated_at for row in built] == [at] * len(wanted)
            with pytest.raises(TypeError, match="SELECT or text"):
                execute_built(connection, insert(Person), {"name": "x"})


@DATABASES
def test_a_reading_connection_opens_no_transaction_and_leaves_sqlite_its_compiled_statements(
    database_kind: str, tmp_path: Path
) -> None:
    """`reading_only`: PostgreSQL reads in autocommit (no BEGIN and COMMIT round trips). On
    SQLite nothing is switched, so nothing is switched back at check-in: SQLAlchemy would do it
    with a `PRAGMA read_uncommitted`, which expires every statement compiled on the connection."""
    with fresh_database(database_kind, tmp_path) as engine:
        upgrade(engine)
        engine.dispose()  # the connections made from here on are traced
        executed: list[str] = []
        if database_kind == "sqlite":
            event.listen(engine, "connect", lambda dbapi, _record: dbapi.set_trace_callback(executed.append))
        for _ in range(2):
            with engine.connect() as connection, reading_only(connection):
                assert connection.execute(select(Person.id)).all() == []
                driver = connection.connection.driver_connection
                assert driver.autocommit if database_kind == "postgresql" else not driver.in_transaction
        assert not [statement for statement in executed if "read_uncommitted" in statement.lower()], executed
        if database_kind == "sqlite":
            assert any(statement.startswith("SELECT person.id") for statement in executed), executed
            # A write there would be rolled back at check-in, silently: refused instead.
            refused = pytest.raises(RuntimeError, match="meant only to read")
            with refused, engine.connect() as connection, reading_only(connection):
                connection.execute(insert(Person).values(name="学生", created_at=utcnow(), updated_at=utcnow()))
            with engine.connect() as connection:
                assert connection.execute(select(Person.id)).all() == []


def _upgraded(engine: Any) -> Any:
    upgrade(engine)
    return engine


@DATABASES
def test_a_transfer_moves_a_students_and_a_staff_members_keys_to_their_new_units(
    database_kind: str, tmp_path: Path
) -> None:
    """The unified rows keep their foreign keys across upserts; the codes a transfer changes
    must move them (a college officer's scope follows `college_id`)."""
    from campushub.models.unified import ClassGroup, Major, OrgUnit, Staff, Student
    from campushub.models.unify import link_references

    units = {"old": ("C01", "H01", "M01", "K01"), "new": ("C02", "H02", "M02", "K02")}
    with fresh_database(database_kind, tmp_path) as engine, _upgraded(engine).begin() as connection:
        for which, (college, department, major, klass) in units.items():
            connection.execute(
                insert(OrgUnit).values(
                    code=college, name=f"{which} college", kind="college", academic_code=college, row_hash=""
                )
            )
            connection.execute(
                insert(OrgUnit).values(
                    code=department, name=f"{which} office", kind="office", hr_code=department, row_hash=""
                )
            )
            connection.execute(
                insert(Major).values(code=major, name=f"{which} major", college_code=college, row_hash="")
            )
            connection.execute(
                insert(ClassGroup).values(code=klass, name=f"{which} class", major_code=major, row_hash="")
            )
        old_college, _, old_major, old_class = units["old"]
        connection.execute(
            insert(Student).values(
                student_no="S1", college_code=old_college, major_code=old_major, class_code=old_class, row_hash=""
            )
        )
        connection.execute(insert(Staff).values(staff_no="T1", department_code=units["old"][1], row_hash=""))
        link_references(connection)

        def keys() -> tuple[tuple[str, str, str], str]:
            student = connection.execute(
                select(OrgUnit.code, Major.code, ClassGroup.code)
                .select_from(Student)
                .join(OrgUnit, OrgUnit.id == Student.college_id)
                .join(Major, Major.id == Student.major_id)
                .join(ClassGroup, ClassGroup.id == Student.class_id)
            ).one()
            department = connection.execute(
                select(OrgUnit.code).select_from(Staff).join(OrgUnit, OrgUnit.id == Staff.department_id)
            ).scalar_one()
            return tuple(student), department  # type: ignore[return-value]

        assert keys() == ((old_college, old_major, old_class), units["old"][1])
        new_college, new_department, new_major, new_class = units["new"]
        # What an upsert of the transferred records writes: the new codes, the old keys kept.
        connection.execute(
            Student.__table__.update().values(college_code=new_college, major_code=new_major, class_code=new_class)
        )
        connection.execute(Staff.__table__.update().values(department_code=new_department))
        link_references(connection)
        assert keys() == ((new_college, new_major, new_class), new_department)
        # A code left empty leaves no key behind.
        connection.execute(Student.__table__.update().values(class_code=None))
        link_references(connection)
        assert connection.execute(select(Student.class_id)).scalar_one() is None


@DATABASES
def test_a_record_that_cannot_be_mapped_or_stored_is_quarantined_and_its_stream_goes_on(
    database_kind: str, tmp_path: Path
) -> None:
    """A value wider than its column (PostgreSQL would refuse the whole load with it, SQLite
    store it as it came) and a value of a type the mapper never met (a number where text was
    expected) each cost their own record, with a reason — never the stream's next load."""
    from campushub.models.landing import QuarantinedRecord

    def grade(student_no: str, score: object) -> Record:
        data = {
            "XH": student_no,
            "KCDM": "C01",
            "XNXQ": "2025-2026-1",
            "CJ": score,
            "GXSJ": "2026-01-15T10:00:00+08:00",
        }
        return Record(f"{student_no}|C01|2025-2026-1", data)

    mapping = MAPPINGS[("academic", "grades")]
    with fresh_database(database_kind, tmp_path) as engine, _upgraded(engine).begin() as connection:
        result = LandingResult("academic", "grades", "run", "full", None)
        too_long = "S" * 21  # 学号 holds 20
        page = Batch([grade("S1", "60"), grade(too_long, "61"), grade("S3", 62), grade("S4", "63")])
        land_batches(connection, "academic", "grades", [page], result)
        loaded = unify(connection, mapping, "run")
        scores = dict(connection.execute(text("SELECT student_no, score FROM grade")).all())
        reasons = dict(connection.execute(select(QuarantinedRecord.source_key, QuarantinedRecord.reason)).all())
    assert scores == {"S1": 60, "S4": 63}
    assert (loaded.inserted, loaded.quarantined) == (2, 2)
    assert (
        reasons[f"{too_long}|C01|2025-2026-1"] == "normalise: student_no: 21 characters, more than the 20 it may hold"
    )
    assert reasons["S3|C01|2025-2026-1"].startswith("normalise: AttributeError")


# A student as academic affairs sends one, but for the phone (SJHM).
A_STUDENT = {
    "XH": "202401010001",
    "XM": "陈伟",
    "XBM": "1",
    "CSRQ": "2005-03-01",
    "YXDM": "01",
    "ZYDM": "0101",
    "BJDM": "010101",
    "RXNY": "202409",
    "XJZTM": "01",
    "GXSJ": "2026-01-15T10:00:00+08:00",
}


def test_a_phone_that_is_not_a_mainland_mobile_is_left_out_not_the_record_refused() -> None:
    from campushub.models.unify import student

    payload = A_STUDENT
    mobile = student({**payload, "SJHM": "+86 138-0013-8000"})
    assert mobile.identity is not None and mobile.identity["phone"] == "13800138000"
    landline = student({**payload, "SJHM": "0759-2383123"})  # the record loads, without the phone
    assert landline.identity is not None and landline.identity["phone"] is None
    assert landline.row["student_no"] == "202401010001"
    as_number = student({**payload, "SJHM": 13800138000})  # a number where text was expected
    assert as_number.identity is not None and as_number.identity["phone"] == "13800138000"


@DATABASES
def test_phones_left_out_before_they_were_kept_are_read_back_from_raw_landing(
    database_kind: str, tmp_path: Path
) -> None:
    """Identities loaded before migration 0012 kept no phone that was not a mainland mobile, and
    an unchanged record is never unified again: 0014 reads it back from each one's newest
    landed record, so the persons' phones warning names them too."""
    sent = {  # (source, stream, key) -> the phones its versions carried, oldest first
        ("academic", "students", "S1"): [{"SJHM": "0759-1111111"}, {"SJHM": "0759-2383000"}],
        ("academic", "students", "S2"): [{"SJHM": "138 0013 8000"}],
        ("academic", "students", "S3"): [{}],
        ("hr", "staff", "T1"): [{"mobile": "+44 20 7946 0958"}],
        ("hr", "staff", "T2"): [{"mobile": 8613800138000}],  # a mobile sent as a number
        ("card", "card_accounts", "C1"): [{"mobile": "0759-2383000 ext. 1234 (office, weekdays only)"}],
    }
    with fresh_database(database_kind, tmp_path) as engine:
        upgrade(engine, "0013")
        with engine.begin() as connection:
            for (source, stream, key), versions in sent.items():
                for n, payload in enumerate(versions):
                    connection.execute(
                        insert(RawRecord).values(
                            source=source,
                            stream=stream,
                            source_key=key,
                            run_id="r",
                            fetched_at=utcnow(),
                            content_hash=f"{key}-{n}",
                            payload={"key": key, **payload},
                        )
                    )
                usable = norm.phone("13800138000") if key in ("S2", "T2") else None
                connection.execute(
                    insert(SourceIdentity).values(
                        source=source, source_key=key, role="student", name="测试", phone=usable, row_hash="h"
                    )
                )
        upgrade(engine)
        with engine.connect() as connection:
            kept = dict(connection.execute(select(SourceIdentity.source_key, SourceIdentity.phone_unusable)).all())
    assert kept == {
        "S1": "0759-2383000",  # the newest version's
        "S2": None,
        "S3": None,
        "T1": "+44 20 7946 0958",
        "T2": None,
        "C1": "0759-2383000 ext. 1234 (office, ",  # cut to the column's width, as unify cuts it
    }


@DATABASES
def test_a_phone_left_out_is_kept_as_sent_beside_its_identity_until_a_usable_one_comes(
    database_kind: str, tmp_path: Path
) -> None:
    """A landline loads its record without a phone — the golden record's too — and the identity
    keeps what was sent, for the persons' `phones` warning; a value wider than that copy's column
    is cut, never the record quarantined. A later mobile replaces it, and the copy is gone."""
    from campushub.models.identity import resolve

    def student(no: str, phone: str, at: str) -> Record:
        return Record(no, {**A_STUDENT, "XH": no, "SJHM": phone, "GXSJ": f"2026-01-{at}T10:00:00+08:00"})

    rambling = "0759-2383000 转 8021（学院办公室，工作日上午 8:00-11:30 有人）"
    assert len(rambling) > SourceIdentity.__table__.c.phone_unusable.type.length
    mapping = MAPPINGS[("academic", "students")]
    with fresh_database(database_kind, tmp_path) as engine, _upgraded(engine).begin() as connection:

        def sync(*records: Record) -> Any:
            result = LandingResult("academic", "students", "run", "incremental", None)
            land_batches(connection, "academic", "students", [Batch(list(records))], result)
            loaded = unify(connection, mapping, "run")
            resolve(connection)
            return loaded

        def phones() -> dict[str, tuple[str | None, str | None, str | None]]:
            rows = connection.execute(
                select(SourceIdentity.source_key, SourceIdentity.phone, SourceIdentity.phone_unusable, Person.phone)
                .join(Person, Person.id == SourceIdentity.person_id)
                .order_by(SourceIdentity.source_key)
            )
            return {key: (phone, unusable, golden) for key, phone, unusable, golden in rows}

        first = sync(
            student("S1", "0759-2383000", "15"), student("S2", rambling, "15"), student("S3", "13800138000", "15")
        )
        assert (first.inserted, first.quarantined) == (3, 0)
        assert phones() == {
            "S1": (None, "0759-2383000", None),
            "S2": (None, rambling[:32], None),
            "S3": ("13800138000", None, "13800138000"),
        }
        later = sync(student("S1", "+86 139-0013-9000", "16"))
        assert (later.updated, later.quarantined) == (1, 0)
        assert phones()["S1"] == ("13900139000", None, "13900139000")


@DATABASES
def test_an_hr_department_too_wide_for_its_org_unit_is_quarantined_and_the_rest_load(
    database_kind: str, tmp_path: Path
) -> None:
    from campushub.models.landing import QuarantinedRecord
    from campushub.models.unified import OrgUnit
    from campushub.models.unify import unify_hr_departments

    long_name = "海洋与气象学院" * 10  # 70 characters: an org unit's name holds 64
    page = Batch(
        [
            Record("D01", {"code": "D01", "name": "人事处", "kind": "office"}),
            Record("D02", {"code": "D02", "name": long_name, "kind": "office"}),
        ]
    )
    with fresh_database(database_kind, tmp_path) as engine, _upgraded(engine).begin() as connection:
        land_batches(connection, "hr", "departments", [page], LandingResult("hr", "departments", "run", "full", None))
        result = unify_hr_departments(connection, "run")
        units = dict(connection.execute(select(OrgUnit.hr_code, OrgUnit.name)).all())
        reasons = dict(connection.execute(select(QuarantinedRecord.source_key, QuarantinedRecord.reason)).all())
    assert units == {"D01": "人事处"} and result.quarantined == 1
    assert reasons == {"D02": "normalise: name: 70 characters, more than the 64 it may hold"}


@DATABASES
def test_a_pull_started_again_counts_present_only_what_the_last_pull_brought(
    database_kind: str, tmp_path: Path
) -> None:
    """A reconcile marks deleted what its pull did not bring back: when the pull started again
    (its pages shifted under a deletion), a record read before the restart may be the one deleted."""
    first = Batch([Record("S1", {"n": 1}), Record("S2", {"n": 2})])
    again = Batch([Record("S1", {"n": 1}), Record("S3", {"n": 3})], pull=2)
    with fresh_database(database_kind, tmp_path) as engine, _upgraded(engine).begin() as connection:
        seen: set[str] = set()
        result = LandingResult("academic", "students", "run", "reconcile", None)
        land_batches(connection, "academic", "students", [first, again], result, seen_keys=seen)
    assert seen == {"S1", "S3"}


def test_the_streams_the_pipeline_schedules_are_the_streams_the_connectors_declare() -> None:
    """The sync order is the pipeline's (`models.sources.STREAMS`); each stream's contract is
    its connector's. Neither may name a stream the other lacks."""
    from importlib import import_module

    from campushub.connectors import SOURCES
    from campushub.models.sources import STREAMS

    assert set(STREAMS) == set(SOURCES)
    for source, target in SOURCES.items():
        connector = import_module(target.split(":")[0])
        assert set(STREAMS[source]) == set(connector.STREAMS), source
        assert len(STREAMS[source]) == len(set(STREAMS[source])), source


# ---------------------------------------------------------------------------- identity documents
def test_identity_documents_are_held_to_their_own_forms_and_reasons_never_repeat_the_number() -> None:
    from campushub.reference.identity import (
        RESIDENT_ID,
        check_character,
        id_document_disagreement,
        id_document_problem,
    )

    resident = "440802200403011236"
    assert id_document_problem(RESIDENT_ID, resident) is None
    valid = {
        "6": ["H12345678", "H1234567890", "A123456(7)", "K12345678"],  # HK travel permit, identity card, passport
        "7": ["M12345678", "1234567(8)"],  # a Macao resident's travel permit, identity card
        "8": ["12345678", "1234567890"],  # a Taiwan resident's
        "9": ["VNM123456789012", resident.replace("44", "93", 1)[:17] + "X"],  # 2017 and 2023 editions
        "A": ["E12345678", "K1234567", "G123456789012"],  # passports
        "Z": ["ABC1234", "ABCDEFGHIJKLMNOPQR"],  # 18 characters, but not a card with a check digit
    }
    for document, numbers in valid.items():
        for number in numbers:
            if document == "9" and len(number) == 18:  # the 2023 edition carries a check character
                number = number[:17] + check_character(number[:17])
            assert id_document_problem(document, number) is None, (document, number)
    wrong = {
        ("6", "H1234"): "not the form of a document of type 6",
        ("7", "H12345678"): "not the form of a document of type 7",  # a Hong Kong permit named a Macao one
        ("8", "1234567"): "not the form of a document of type 8",
        ("A", "e1234567"): "not the form of a document of type A",
        ("A", "E 1234567"): "not the form of a document of type A",
        ("9", "9" + "1" * 16 + "0"): "check digit does not match",
        (RESIDENT_ID, "E12345678"): "not 17 digits and a check character",  # a passport named a resident card
    }
    for (document, number), reason in wrong.items():
        problem = id_document_problem(document, number)
        assert problem == f"id number: {reason}" and number not in problem, (document, number)
    # Only a resident identity number says when a person was born, and whether a man or a woman.
    born = dt.date(2004, 3, 1)
    assert id_document_disagreement(RESIDENT_ID, resident, dt.date(2004, 3, 2), "1") is not None
    assert id_document_disagreement(RESIDENT_ID, resident, born, "1") is None
    assert id_document_disagreement("A", "E12345678", dt.date(1999, 1, 1), "2") is None


def test_a_record_names_its_document_and_one_that_names_none_holds_a_resident_number() -> None:
    from campushub.models.unify import staff, student

    passport = student({**A_STUDENT, "SFZJLXM": "A", "SFZJH": "E12345678"}).identity
    resident = student({**A_STUDENT, "SFZJH": "440802200503011232"}).identity
    nothing = student(A_STUDENT).identity
    assert passport is not None and resident is not None and nothing is not None
    assert (passport["id_type"], resident["id_type"], nothing["id_type"]) == ("A", "1", None)
    assert passport["id_number_hash"] == id_hash("E12345678", "A") != id_hash("E12345678")
    # Stored as the document prints it: a lower-case x, full-width digits and gaps typed as spaces.
    written = student({**A_STUDENT, "SFZJH": "４４０１１１ 20060425 722x"}).identity
    assert written is not None and decrypt_id(written["id_number_cipher"]) == "44011120060425722X"
    assert written["id_number_hash"] == id_hash("44011120060425722X")
    with pytest.raises(ValueError, match="is not a code of id_document_type"):
        student({**A_STUDENT, "SFZJLXM": "Q", "SFZJH": "E12345678"})
    member = {
        "staffNo": "T1",
        "name": "黎明",
        "gender": "男",
        "idType": "6",
        "idNumber": "H12345678",
        "deptCode": "D01",
        "hireDate": "2020/09/01",
        "modifiedAt": "1767225600000",
    }
    identity = staff(member).identity
    assert identity is not None and identity["id_type"] == "6"


@DATABASES
def test_a_document_matches_only_the_same_kind_of_document(database_kind: str, tmp_path: Path) -> None:
    """A staff member who is also a student registered their Hong Kong permit with both offices:
    one person, the document with them. The same number as another kind of document (passports
    of two countries may share one) is someone else, never merged."""
    from campushub.models.identity import resolve

    permit = "H12345678"

    def member(no: str, id_type: str) -> Record:
        return Record(
            no,
            {
                "staffNo": no,
                "name": "陈伟",
                "gender": "男",
                "idType": id_type,
                "idNumber": permit,
                "deptCode": "D01",
                "hireDate": "2020/09/01",
                "modifiedAt": "1767225600000",
            },
        )

    records = {
        ("academic", "students"): [Record("S1", {**A_STUDENT, "XH": "S1", "SFZJLXM": "6", "SFZJH": permit})],
        ("hr", "staff"): [member("T1", "6"), member("T2", "A")],
    }
    with fresh_database(database_kind, tmp_path) as engine, _upgraded(engine).begin() as connection:
        for (source, stream), batch in records.items():
            result = LandingResult(source, stream, "run", "incremental", None)
            land_batches(connection, source, stream, [Batch(batch)], result)
            unify(connection, MAPPINGS[(source, stream)], "run")
        resolve(connection)
        rows = connection.execute(
            select(SourceIdentity.source_key, SourceIdentity.person_id, Person.id_type, Person.id_number_cipher)
            .join(Person, Person.id == SourceIdentity.person_id)
            .order_by(SourceIdentity.source_key)
        ).all()
    people = {key: (person_id, id_type, decrypt_id(cipher)) for key, person_id, id_type, cipher in rows}
    assert people["S1"] == people["T1"] == (people["S1"][0], "6", permit)
    assert people["T2"][0] != people["S1"][0] and people["T2"][1:] == ("A", permit)
    assert id_hash(permit, "6") != id_hash(permit, "A") != id_hash(permit)


@DATABASES
def test_numbers_stored_before_document_types_were_kept_are_resident_numbers(
    database_kind: str, tmp_path: Path
) -> None:
    with fresh_database(database_kind, tmp_path) as engine:
        upgrade(engine, "0014")
        with engine.begin() as connection:
            # S3: a person whose every source record left — the hash kept, the number gone.
            for key, digest, number in (("S1", "h1", "440111200604257222"), ("S2", None, None), ("S3", "h3", None)):
                cipher = encrypt_id(number) if number else None
                connection.execute(
                    insert(SourceIdentity).values(
                        source="academic",
                        source_key=key,
                        role="student",
                        name="测试",
                        id_number_hash=digest,
                        id_number_cipher=cipher,
                        row_hash="h",
                    )
                )
                connection.execute(insert(Person).values(name=key, id_number_hash=digest, id_number_cipher=cipher))
        upgrade(engine)
        with engine.connect() as connection:
            identities = dict(connection.execute(select(SourceIdentity.source_key, SourceIdentity.id_type)).all())
            people = dict(connection.execute(select(Person.name, Person.id_type)).all())
    assert identities == people == {"S1": "1", "S2": None, "S3": None}


@DATABASES
def test_a_record_gone_before_a_reconcile_pull_started_again_is_marked_deleted(
    database_kind: str, tmp_path: Path
) -> None:
    """The first pull landed a changed S2; S2 was deleted, the pages shifted and the pull started
    again without it. What this run landed in the abandoned pull says nothing of what is there."""
    from campushub.models.ingest import land_stream
    from campushub.models.unify import mark_deleted

    mapping = MAPPINGS[("academic", "students")]

    def student(no: str, phone: str) -> Record:
        return Record(no, {**A_STUDENT, "XH": no, "SJHM": phone})

    class Pages:
        name = "academic"

        def __init__(self, *batches: Batch) -> None:
            self.batches = batches

        def read(self, stream: str, cursor: str | None = None) -> Iterator[Batch]:
            yield from self.batches

    with fresh_database(database_kind, tmp_path) as engine:
        upgrade(engine)
        land_stream(
            engine, Pages(Batch([student("S1", "13800138001"), student("S2", "13800138002")])), "students", "r1"
        )
        with engine.begin() as connection:
            unify(connection, mapping, "r1")
        changed = Batch([student("S1", "13800138001"), student("S2", "13900139002")], pull=1)
        again = Batch([student("S1", "13800138001")], pull=2)
        result = land_stream(
            engine,
            Pages(changed, again),
            "students",
            "reconcile",
            reconcile=lambda connection, keys: mark_deleted(connection, mapping, keys),
        )
        with engine.connect() as connection:
            gone = connection.execute(
                select(mapping.table.c.student_no).where(mapping.table.c.deleted_at.is_not(None))
            ).scalars()
            assert (result.deleted, list(gone)) == (1, ["S2"])
