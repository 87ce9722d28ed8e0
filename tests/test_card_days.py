"""Card events mapped inside the database (card_days.py) against the Python mapping.

The same landed payloads — well-formed ones and every kind of odd one — are unified twice: by
the Python mapping alone, and by the database's fast path with the Python mapping taking what it
leaves. The table and the quarantine must come out the same, byte for byte as stored, and the fast
path must have taken exactly the well-formed events (so a path that takes nothing fails too).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import re
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Connection, text
from sqlalchemy.exc import OperationalError

from campushub.models import card_days
from campushub.models import normalize as norm
from campushub.models.ingest import LandingResult, land_batches
from campushub.models.migrate import upgrade
from campushub.models.unify import MAPPINGS, _not_loaded, _raw_query, unify
from tests.databases import DATABASES, fresh_database
from tests.landing_support import Batch, Record

DAY = dt.date(2026, 3, 1)
MAPPING = MAPPINGS[("card", "card_transactions")]


def _event(seq: Any, **changes: Any) -> dict[str, Any]:
    event = {
        "seq": seq,
        "card_no": "C2026000123",
        "txn_amt": -1250,
        "balance_after": 8750,
        "txn_type": "消费",
        "merchant_code": "M0001",
        "merchant_name": "第一食堂",
        "txn_time": "20260301073015",
    }
    return {name: value for name, value in (event | changes).items() if value is not _MISSING}


_MISSING = object()

WELL_FORMED = [
    _event(1, txn_amt=-990),  # a second version of 1 follows: the later one must win
    _event(2, merchant_code=None, merchant_name=None),
    _event(3, merchant_code="", merchant_name=""),
    _event(4, merchant_code=_MISSING, merchant_name=_MISSING),
    _event(5, txn_time="20260301000000"),  # local midnight: the previous day in UTC
    _event(6, txn_time="20260301235959", txn_amt=0, txn_type="充值"),
    _event(7, txn_time="20280229120000"),  # a leap day
    _event(8, card_no="", txn_type="冲正X"),  # what the Python mapping lets through, so does SQL
]
SECOND_VERSION = _event(1, txn_amt=-1990)
LEFT_TO_PYTHON = [
    _event("20"),  # digits in a string: the Python mapping reads them
    _event(21, txn_amt="-300", balance_after=" 4000 "),
    _event(22.0),
    _event(23, merchant_code=5),
    _event(24, txn_time="2026030112000"),  # 13 digits: strptime's own reading
    _event(25, txn_time="18991231120000"),
    # refused, with the Python mapping's reasons
    _event(30, txn_time="20260231120000"),
    _event(31, txn_time="20260431120000"),
    _event(32, txn_time="20270229120000"),
    _event(33, txn_time="20260301240000"),
    _event(34, txn_time="20260301235960"),
    _event(35, txn_time="20261301120000"),
    _event(36, card_no=_MISSING),
    _event(37, txn_amt=12.5),
    _event(38, balance_after=True),
    _event(39, txn_amt="12a00"),
    _event(40, txn_time=20260301073015),
]


def _land(connection: Connection) -> None:
    batches = [
        Batch([Record(str(int(float(event["seq"]))), event) for event in WELL_FORMED + LEFT_TO_PYTHON]),
        Batch([Record("1", SECOND_VERSION)]),
    ]
    result = LandingResult("card", "card_transactions", "run-land", "full", None)
    land_batches(connection, "card", "card_transactions", batches, result, append_only=True, event_day=lambda _: DAY)
    assert result.landed == len(WELL_FORMED) + len(LEFT_TO_PYTHON) + 1


def _stored(connection: Connection) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    """The rows as the database stores them (no type conversion on the way out)."""
    events = connection.exec_driver_sql(
        "SELECT seq, card_no, amount_fen, balance_after_fen, kind, merchant_code, merchant_name, at, day"
        " FROM card_transaction ORDER BY seq"
    ).all()
    quarantine = connection.exec_driver_sql(
        "SELECT source_key, reason FROM quarantine ORDER BY source_key, reason"
    ).all()
    return [tuple(row) for row in events], [tuple(row) for row in quarantine]


@DATABASES
def test_card_events_mapped_in_the_database_are_what_the_python_mapping_makes(
    database_kind: str, tmp_path: Path
) -> None:
    with fresh_database(database_kind, tmp_path) as engine:
        upgrade(engine)
        with engine.begin() as connection:
            _land(connection)

        with engine.begin() as connection:
            by_python = unify(connection, dataclasses.replace(MAPPING, in_database=None), "run-py", event_day=DAY)
            python_events, python_quarantine = _stored(connection)
            connection.exec_driver_sql("DELETE FROM card_transaction")
            connection.exec_driver_sql("DELETE FROM quarantine")

        with engine.begin() as connection:
            inserted = card_days.insert_well_formed(connection, DAY)
            taken = {row[0] for row in connection.exec_driver_sql("SELECT seq FROM card_transaction")}
            assert taken == {event["seq"] for event in WELL_FORMED}
            assert inserted == len(WELL_FORMED)
            connection.exec_driver_sql("DELETE FROM card_transaction")

        with engine.begin() as connection:
            by_both = unify(connection, MAPPING, "run-both", event_day=DAY)
            events, quarantine = _stored(connection)

        assert events == python_events
        assert quarantine == python_quarantine
        assert len(python_events) == len(WELL_FORMED) + 6
        assert {row[0]: row[2] for row in events}[1] == -1990  # the later version of event 1
        assert [row[0] for row in python_quarantine] == [str(seq) for seq in range(30, 41)]
        assert (by_both.inserted, by_both.quarantined) == (by_python.inserted, by_python.quarantined) == (14, 11)

        # A day already built costs nothing more: everything is present or refused again.
        with engine.begin() as connection:
            assert card_days.insert_well_formed(connection, DAY) == 0


def test_money_that_is_not_whole_fen_is_refused_with_a_reason() -> None:
    for value in (12.5, True, None, "12a00"):
        try:
            norm.fen(value)  # type: ignore[arg-type]
        except ValueError as error:
            assert "is not a whole number of fen" in str(error)
        else:
            raise AssertionError(f"{value!r} was accepted")


@DATABASES
def test_a_day_is_read_through_the_day_index_which_holds_only_events(database_kind: str, tmp_path: Path) -> None:
    """Raw landing's day index holds events only, its key index everything else (partial
    indexes): the day's read must still go through the day index, not a scan of raw landing."""
    with fresh_database(database_kind, tmp_path) as engine:
        upgrade(engine)
        with engine.begin() as connection:
            _land(connection)
            if database_kind == "postgresql":
                connection.exec_driver_sql("SET LOCAL enable_seqscan = off")  # a tiny table: make it choose
                statement, explain = card_days._POSTGRESQL, "EXPLAIN "
            else:
                statement, explain = card_days._SQLITE, "EXPLAIN QUERY PLAN "
            plan = " ".join(str(row) for row in connection.execute(text(explain + statement), {"day": DAY}))
            assert "ix_raw_record_day" in plan
            if database_kind == "sqlite":
                # The events are in the day index and not in the key index.
                in_day = connection.exec_driver_sql(
                    "SELECT count(*) FROM raw_record INDEXED BY ix_raw_record_day"
                    " WHERE source = 'card' AND stream = 'card_transactions' AND event_day IS NOT NULL"
                ).scalar_one()
                assert in_day == len(WELL_FORMED) + len(LEFT_TO_PYTHON) + 1
                with pytest.raises(OperationalError, match="no query solution"):
                    connection.exec_driver_sql(
                        "SELECT count(*) FROM raw_record INDEXED BY ix_raw_record_key"
                        " WHERE source = 'card' AND stream = 'card_transactions'"
                    ).scalar_one()


@DATABASES
def test_the_fast_path_writes_inside_the_callers_transaction(database_kind: str, tmp_path: Path) -> None:
    """A day's rebuild is one transaction: what the database path inserted goes when it rolls back."""
    with fresh_database(database_kind, tmp_path) as engine:
        upgrade(engine)
        with engine.begin() as connection:
            _land(connection)
        with engine.connect() as connection:
            with connection.begin() as transaction:
                assert card_days.insert_well_formed(connection, DAY) == len(WELL_FORMED)
                transaction.rollback()
            assert connection.exec_driver_sql("SELECT count(*) FROM card_transaction").scalar_one() == 0


def test_a_day_probes_the_card_table_per_event_whatever_the_statistics(tmp_path: Path) -> None:
    """Whether an event is loaded already is one index probe an event. Once raw landing had
    statistics (a day of thousands of events) and the card table had none (a backfill filling
    it), PostgreSQL planned NOT EXISTS as a hash anti-join over the whole card table — for every
    day of a backfill again; and once the card table was analyzed while empty, it scanned the
    whole per-card index for each event, probing it by its second column."""
    earlier = DAY - dt.timedelta(days=1)
    days = {
        earlier: [_event(seq, txn_amt=-seq, txn_time="20260228120000") for seq in range(1, 5_001)],
        DAY: [_event(seq, txn_amt=-seq) for seq in range(5_001, 10_001)],
    }
    with fresh_database("postgresql", tmp_path) as engine:
        upgrade(engine)
        with engine.begin() as connection:
            result = LandingResult("card", "card_transactions", "run-land", "full", None)
            batch = Batch([Record(str(event["seq"]), event) for events in days.values() for event in events])
            land_batches(
                connection,
                "card",
                "card_transactions",
                [batch],
                result,
                append_only=True,
                event_day=lambda event: earlier if event["txn_time"].startswith("20260228") else DAY,
            )
            connection.exec_driver_sql("ANALYZE raw_record")
        for card_table in ("never analyzed", "analyzed while empty, a day loaded since"):
            if card_table != "never analyzed":
                with engine.begin() as connection:
                    connection.exec_driver_sql("ANALYZE card_transaction")
                with engine.begin() as connection:
                    assert card_days.insert_well_formed(connection, earlier) == len(days[earlier])
            with engine.begin() as connection:
                query = _raw_query(MAPPING, 0, DAY).where(_not_loaded(MAPPING, "postgresql"))
                python_path = query.compile(connection, compile_kwargs={"literal_binds": True})
                for statement, parameters in ((card_days._POSTGRESQL, {"day": DAY}), (str(python_path), {})):
                    plan = [str(row[0]).strip() for row in connection.execute(text("EXPLAIN " + statement), parameters)]
                    probes = [n for n, line in enumerate(plan) if "Scan" in line and " on card_transaction" in line]
                    assert probes and "Seq Scan on card_transaction" not in " ".join(plan), (card_table, plan)
                    for n in probes:  # the per-card index is probed by card number, never read whole
                        by_card = re.search(r"\(card_no\)(::text)? = ", plan[n + 1])
                        assert "pk_card_transaction" in plan[n] or by_card, (card_table, plan)
        with engine.begin() as connection:
            assert card_days.insert_well_formed(connection, DAY) == len(days[DAY])


@DATABASES
def test_an_event_the_probe_misses_meets_the_key_and_counts_as_unchanged(database_kind: str, tmp_path: Path) -> None:
    """The "not loaded" probe names the card number too: a later version of a loaded event under
    another card number looks new to it. On PostgreSQL the plain insert then meets the unique
    key, and the day is built again with ON CONFLICT — the run goes on, the first version stays."""
    later_day = DAY + dt.timedelta(days=1)
    with fresh_database(database_kind, tmp_path) as engine:
        upgrade(engine)
        with engine.begin() as connection:
            result = LandingResult("card", "card_transactions", "run-land", "full", None)
            batches = [Batch([Record("1", _event(1)), Record("2", _event(2))])]
            land_batches(
                connection, "card", "card_transactions", batches, result, append_only=True, event_day=lambda _: DAY
            )
        with engine.begin() as connection:
            assert unify(connection, MAPPING, "run-1", event_day=DAY).inserted == 2
        with engine.begin() as connection:
            result = LandingResult("card", "card_transactions", "run-land-2", "full", None)
            moved = [Batch([Record("1", _event(1, card_no="C2026000999")), Record("3", _event(3))])]
            land_batches(
                connection, "card", "card_transactions", moved, result, append_only=True, event_day=lambda _: DAY
            )
            again = [Batch([Record("2", _event(2, txn_time="20260302080000"))])]  # the same event on another day
            land_batches(
                connection, "card", "card_transactions", again, result, append_only=True, event_day=lambda _: later_day
            )
        with engine.begin() as connection:
            rebuilt = unify(connection, MAPPING, "run-2", event_day=DAY)
            assert (rebuilt.read, rebuilt.inserted, rebuilt.quarantined) == (4, 1, 0)
            assert card_days.insert_well_formed(connection, later_day) == 0
            stored = dict(connection.exec_driver_sql("SELECT seq, card_no FROM card_transaction").all())
            assert stored == {1: "C2026000123", 2: "C2026000123", 3: "C2026000123"}
