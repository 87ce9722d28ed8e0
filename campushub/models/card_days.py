"""Card transactions mapped inside the database: the fast path of a card day's rebuild.

The card system sends about five million events at the university's scale, and mapping each in
Python (decode the payload, parse the stamp, build a row, bind it) costs more than landing it.
Every well-formed event is therefore mapped by one INSERT … SELECT over raw landing, in SQL the
database runs natively; what this path cannot vouch for is left for the Python mapping
(`unify.card_transaction`), which stays the one authority on what a record means and why one is
refused. "Well-formed" is deliberately narrower than what the Python mapping accepts — integers
as JSON numbers, the stamp as 14 ASCII digits that name a real instant, text within the column
widths — so this path never writes a value the Python mapping would write differently or refuse
(tests/test_card_days.py feeds both the same payloads, odd ones included, and compares).

A day's stamps are in the card system's zone, fixed UTC+08:00 (`unify.CST`); instants are stored
in UTC, SQLite's as `UTCDateTime` writes them (the UTC wall clock with microseconds).
"""

from __future__ import annotations

import datetime as dt

from sqlalchemy import Connection, text
from sqlalchemy.exc import IntegrityError

_DIGIT = "[0-9]"

# Later versions of an event supersede earlier ones, as in the Python path: on SQLite the
# newest landed row of a sequence number is inserted first, and the rest meet the conflict.
#
# SQLite: each field is read out of the JSON once, in a materialised step — inlined, every
# mention of a field would read it again (a third of the statement's cost). The statement starts
# with INSERT, its WITH after: Python's sqlite3 opens the caller's transaction only before a
# statement that starts with INSERT, UPDATE, DELETE or REPLACE — one that starts with WITH ran
# outside it, committed at once (and reported no row count).
_SQLITE = f"""
INSERT INTO card_transaction (seq, card_no, amount_fen, balance_after_fen, kind, merchant_code, merchant_name, at, day)
WITH fields AS MATERIALIZED (
    SELECT r.id,
           json_type(r.payload, '$.seq') AS seq_type, json_extract(r.payload, '$.seq') AS seq,
           json_type(r.payload, '$.card_no') AS card_no_type, json_extract(r.payload, '$.card_no') AS card_no,
           json_type(r.payload, '$.txn_amt') AS amount_type, json_extract(r.payload, '$.txn_amt') AS amount,
           json_type(r.payload, '$.balance_after') AS balance_type,
           json_extract(r.payload, '$.balance_after') AS balance,
           json_type(r.payload, '$.txn_type') AS kind_type, json_extract(r.payload, '$.txn_type') AS kind,
           json_type(r.payload, '$.merchant_code') AS code_type, json_extract(r.payload, '$.merchant_code') AS code,
           json_type(r.payload, '$.merchant_name') AS name_type, json_extract(r.payload, '$.merchant_name') AS name,
           json_type(r.payload, '$.txn_time') AS stamp_type, json_extract(r.payload, '$.txn_time') AS stamp
      FROM raw_record AS r
     WHERE r.source = 'card' AND r.stream = 'card_transactions' AND r.event_day = :day
       AND NOT EXISTS (SELECT 1 FROM card_transaction AS c WHERE c.seq = CAST(r.source_key AS INTEGER))
), well_formed AS MATERIALIZED (
    SELECT *,
           substr(stamp, 1, 4) || '-' || substr(stamp, 5, 2) || '-' || substr(stamp, 7, 2) || ' ' ||
           substr(stamp, 9, 2) || ':' || substr(stamp, 11, 2) || ':' || substr(stamp, 13, 2) AS local_time
      FROM fields
     WHERE seq_type = 'integer'
       AND card_no_type = 'text' AND length(card_no) <= 16
       AND amount_type = 'integer' AND balance_type = 'integer'
       AND kind_type = 'text' AND length(kind) <= 4
       AND (code_type IS NULL OR code_type = 'null' OR (code_type = 'text' AND length(code) <= 8))
       AND (name_type IS NULL OR name_type = 'null' OR (name_type = 'text' AND length(name) <= 32))
       AND stamp_type = 'text' AND stamp GLOB '{_DIGIT * 14}' AND stamp >= '19000101000000'
)
SELECT seq, card_no, amount, balance, kind, nullif(code, ''), nullif(name, ''),
       strftime('%Y-%m-%d %H:%M:%S', local_time, '-8 hours') || '.000000',
       substr(local_time, 1, 10)
  FROM well_formed
 -- SQLite reads 31 February and 24:00 as days later, and writes them so once asked to move
 -- the time (by nothing): a real instant is one that comes back unchanged
 WHERE datetime(local_time, '+0 seconds') = local_time
 ORDER BY id DESC
ON CONFLICT (seq) DO NOTHING
"""

# PostgreSQL may evaluate a WHERE clause's conditions in any order, and its date functions raise
# on impossible dates: CASE fixes the order, so a stamp is taken apart only once it is 14 digits
# and built into a date only once its fields are in range. The checks are plain string
# functions, not regular expressions (each match cost about 2 µs an event; with them the day's
# statement took 20-35% longer at 3,000 students): a JSON number's text as jsonb gives it back
# has no exponent, so a whole one is one without '.'.
# "Not loaded yet" is a scalar subquery, which PostgreSQL runs as one index probe an event: as
# NOT EXISTS it may become a hash anti-join over the whole card table — while a backfill fills
# it, in transactions no statistics cover, for every day again (at the university profile, card
# days took twice as long once raw landing had statistics). The probe names the card number
# beside the sequence number, so that either index that could answer it answers with one probe
# (`unify._not_loaded` says why).
# The newest version of each event is chosen by DISTINCT ON and inserted plainly: ON CONFLICT's
# speculative insertion cost about as much again as the insert itself. What a plain insert
# cannot settle — an event the probe did not find under its card number, or one another day's
# transaction inserts at the same time — raises the unique key, and `insert_well_formed` runs
# the statement again with ON CONFLICT (`_MERGING`).
_POSTGRESQL = """
WITH day_events AS (
    SELECT r.id, r.payload AS p, r.payload ->> 'txn_time' AS stamp
      FROM raw_record AS r
     WHERE r.source = 'card' AND r.stream = 'card_transactions' AND r.event_day = :day
       AND (SELECT c.seq FROM card_transaction AS c
             WHERE c.seq = CAST(r.source_key AS BIGINT) AND c.card_no = r.payload ->> 'card_no') IS NULL
), well_formed AS (
    SELECT id, p, (p ->> 'seq')::bigint AS seq,
           substr(stamp, 1, 4)::int AS y, substr(stamp, 5, 2)::int AS mo, substr(stamp, 7, 2)::int AS d,
           substr(stamp, 9, 2)::int AS h, substr(stamp, 11, 2)::int AS mi, substr(stamp, 13, 2)::int AS s
      FROM day_events
     WHERE CASE
           WHEN jsonb_typeof(p -> 'seq') = 'number' AND strpos(p ->> 'seq', '.') = 0
            AND length(p ->> 'seq') <= 18 AND left(p ->> 'seq', 1) <> '-'
            AND jsonb_typeof(p -> 'card_no') = 'string' AND length(p ->> 'card_no') <= 16
            AND jsonb_typeof(p -> 'txn_amt') = 'number' AND strpos(p ->> 'txn_amt', '.') = 0
            AND length(ltrim(p ->> 'txn_amt', '-')) <= 18
            AND jsonb_typeof(p -> 'balance_after') = 'number' AND strpos(p ->> 'balance_after', '.') = 0
            AND length(ltrim(p ->> 'balance_after', '-')) <= 18
            AND jsonb_typeof(p -> 'txn_type') = 'string' AND length(p ->> 'txn_type') <= 4
            AND coalesce(jsonb_typeof(p -> 'merchant_code'), 'null') IN ('null', 'string')
            AND coalesce(length(p ->> 'merchant_code'), 0) <= 8
            AND coalesce(jsonb_typeof(p -> 'merchant_name'), 'null') IN ('null', 'string')
            AND coalesce(length(p ->> 'merchant_name'), 0) <= 32
            AND jsonb_typeof(p -> 'txn_time') = 'string' AND length(stamp) = 14
            AND translate(stamp, '0123456789', '') = '' AND stamp >= '19000101000000'
           THEN CASE
                WHEN substr(stamp, 5, 2)::int BETWEEN 1 AND 12
                 AND substr(stamp, 9, 2)::int < 24 AND substr(stamp, 11, 2)::int < 60
                 AND substr(stamp, 13, 2)::int < 60
                THEN substr(stamp, 7, 2)::int BETWEEN 1 AND extract(
                         day FROM make_date(substr(stamp, 1, 4)::int, substr(stamp, 5, 2)::int, 1)
                                  + interval '1 month - 1 day')
                ELSE false
                END
           ELSE false
           END
), newest AS (
    SELECT DISTINCT ON (seq) * FROM well_formed ORDER BY seq, id DESC
)
INSERT INTO card_transaction (seq, card_no, amount_fen, balance_after_fen, kind, merchant_code, merchant_name, at, day)
SELECT seq,
       p ->> 'card_no',
       (p ->> 'txn_amt')::bigint,
       (p ->> 'balance_after')::bigint,
       p ->> 'txn_type',
       nullif(p ->> 'merchant_code', ''),
       nullif(p ->> 'merchant_name', ''),
       (make_timestamp(y, mo, d, h, mi, s) - interval '8 hours') AT TIME ZONE 'UTC',
       make_date(y, mo, d)
  FROM newest
"""
_MERGING = _POSTGRESQL + "ON CONFLICT (seq) DO NOTHING\n"


def insert_well_formed(connection: Connection, day: dt.date) -> int:
    """Map and insert the day's well-formed card events not yet loaded; returns how many were
    inserted. Whatever it leaves behind is for the Python mapping."""
    if connection.dialect.name == "postgresql":
        try:
            with connection.begin_nested():
                return int(connection.execute(text(_POSTGRESQL), {"day": day}).rowcount)
        except IntegrityError:
            return int(connection.execute(text(_MERGING), {"day": day}).rowcount)
    return int(connection.execute(text(_SQLITE), {"day": day.isoformat()}).rowcount)
