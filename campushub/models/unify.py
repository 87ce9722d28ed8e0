"""From raw landing to the unified layer: normalise each landed record into its entity's row.

Each (source, stream) has one `Mapping`, declared in `MAPPINGS` below: the target table, its
natural key, and a pure function from the payload as received to the normalised row (plus, for
people, the row that feeds identity resolution). `unify()` applies a mapping to the raw records
landed since its watermark, in one transaction with the watermark itself, and writes only rows
whose content changed. A record that cannot be normalised is quarantined with the reason.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import operator
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import orjson
from sqlalchemy import (
    ColumnElement,
    Connection,
    Select,
    Table,
    TextClause,
    and_,
    cast,
    func,
    literal,
    or_,
    select,
    text,
    update,
)

from campushub.models import card_days
from campushub.models import normalize as norm
from campushub.models.base import utcnow
from campushub.models.ingest import bulk_append, bulk_upsert, upsert
from campushub.models.landing import QuarantinedRecord, RawRecord, SyncState, landed_records
from campushub.models.protect import encrypt_id, id_hash
from campushub.models.unified import (
    CardAccount,
    CardTransaction,
    ClassGroup,
    Course,
    FeeBill,
    Grade,
    Major,
    OrgUnit,
    Payment,
    SourceIdentity,
    Staff,
    Student,
)
from campushub.reference.codes import code_by_name
from campushub.reference.identity import DOCUMENT_TYPES, document_type, id_number_as_written
from campushub.reference.source_codes import BILL_STATUS, CARD_HOLDER_KIND

CST = dt.timezone(dt.timedelta(hours=8))
UNIVERSITY_CODE = "10566"  # the root org unit: 广东海洋大学's national institution code
PROGRAMME_YEARS = {"11": 4, "14": 3, "20": 4, "30": 3}  # by GB/T 4658 level


@dataclass(frozen=True)
class Mapped:
    row: dict[str, Any]
    identity: dict[str, Any] | None = None  # a SourceIdentity row, for person streams


@dataclass(frozen=True)
class Mapping:
    source: str
    stream: str
    table: Table
    key: tuple[str, ...]
    map: Callable[[dict[str, Any]], Mapped]
    immutable: bool = False  # events: insert once, never update
    # For a table other streams write too: a column set only on this stream's rows, so a
    # reconcile of this stream never marks the others' rows deleted.
    owns: str | None = None
    # For a day-partitioned event stream: maps and inserts a day's well-formed events inside the
    # database, leaving the rest to `map` (see card_days.py).
    in_database: Callable[[Connection, dt.date], int] | None = None
    # For an immutable stream: a column its payload carries under the same name, named beside
    # the key when PostgreSQL probes whether an event is loaded (see `_not_loaded`).
    probe_also: str | None = None

    @property
    def watermark_stream(self) -> str:
        return f"{self.source}.{self.stream}"


# ---------------------------------------------------------------------------- mappers
def _document_type(sent: Any) -> str:
    """The ID number's document, a code of its table (the connectors held the number to it)."""
    return norm.code(DOCUMENT_TYPES, document_type(sent))


def _person_fields(name: str, phone: str | None, id_number: str | None = None, id_type: Any = None) -> dict[str, Any]:
    usable = _phone(phone) if phone else None
    document = {"id_type": None, "id_number_hash": None, "id_number_cipher": None}
    if id_number:
        kind, id_number = _document_type(id_type), id_number_as_written(id_number)
        document = {
            "id_type": kind,
            "id_number_hash": id_hash(id_number, kind),
            "id_number_cipher": encrypt_id(id_number),
        }
    return {
        "name": norm.person_name(name),
        **document,
        "phone": usable,
        "phone_unusable": _as_sent(phone) if phone and usable is None else None,
    }


def _phone(value: Any) -> str | None:
    """A mainland mobile number, normalised; any other (a landline, a number from abroad) is left
    out of the unified layer — raw landing keeps it as sent, and the identity a copy for the
    steward (`_as_sent`). An optional field that does not fit its shape must not cost the
    person's whole record (a new student would never appear), nor fail the persons' phone rule,
    which admits mainland mobiles alone, run after run."""
    try:
        return norm.phone(str(value))
    except ValueError:
        return None


_UNUSABLE_PHONE_WIDTH: int = SourceIdentity.__table__.c.phone_unusable.type.length


def _as_sent(value: Any) -> str | None:
    """A phone that could not be used, as sent, for the persons' `phones` warning; None for blanks.

    Cut to its column's width rather than left to the over-width check: that check would
    quarantine the whole record for a copy kept only to tell a steward, costing the record
    exactly what leaving the phone out spares it. A prefix is enough to say which phone it was,
    and raw landing keeps the whole of it."""
    text = str(value).strip()
    return text[:_UNUSABLE_PHONE_WIDTH] or None


def student(p: dict[str, Any]) -> Mapped:
    entry = norm.date(p["RXNY"] + "01", "%Y%m%d")
    level = norm.code("education_level", p["PYCCM"]) if p.get("PYCCM") else None
    updated = norm.timestamp(p["GXSJ"])
    years = PROGRAMME_YEARS.get(level or "20", 4)
    row = {
        "student_no": p["XH"],
        "college_code": p["YXDM"],
        "major_code": p["ZYDM"],
        "class_code": p["BJDM"],
        "entry_date": entry,
        "education_level": level,
        "status": norm.code("student_status", p["XJZTM"]),
        "expected_graduation": dt.date(entry.year + years, 6, 30),
        "email": p.get("DZYX") or None,
        "source_updated_at": updated,
    }
    identity = {
        "source": "academic",
        "source_key": p["XH"],
        "role": "student",
        "link": None,
        "sex": norm.code("sex", p["XBM"]),
        "birth_date": norm.date(p["CSRQ"], "%Y-%m-%d") if p.get("CSRQ") else None,
        "ethnicity": norm.code("ethnicity", p["MZM"]) if p.get("MZM") else None,
        "political_status": norm.code("political_status", p["ZZMMM"]) if p.get("ZZMMM") else None,
        "email": p.get("DZYX") or None,
        "as_of": updated,
        **_person_fields(p["XM"], p.get("SJHM"), id_number=p.get("SFZJH"), id_type=p.get("SFZJLXM")),
    }
    return Mapped(row, identity)


def staff(p: dict[str, Any]) -> Mapped:
    updated = dt.datetime.fromtimestamp(int(p["modifiedAt"]) / 1000, dt.UTC)
    row = {
        "staff_no": p["staffNo"],
        "department_code": p["deptCode"],
        "position_code": p.get("positionCode") or None,
        "title_code": norm.code("professional_title", p["titleCode"]) if p.get("titleCode") else None,
        "hire_date": norm.date(p["hireDate"], "%Y/%m/%d") if p.get("hireDate") else None,
        "employment_status": p.get("employmentStatus") or None,
        "salary_grade": int(p["salaryGrade"]) if p.get("salaryGrade") not in (None, "") else None,
        "monthly_gross_fen": norm.fen(p["monthlyGrossFen"]) if p.get("monthlyGrossFen") else None,
        "email": p.get("email") or None,
        "source_updated_at": updated,
    }
    identity = {
        "source": "hr",
        "source_key": p["staffNo"],
        "role": "staff",
        "link": None,
        "sex": norm.sex_from_text(p["gender"]),
        "birth_date": norm.date(p["birthDate"], "%Y/%m/%d") if p.get("birthDate") else None,
        "ethnicity": norm.code_from_name("ethnicity", p["ethnicity"]) if p.get("ethnicity") else None,
        "political_status": (
            norm.code_from_name("political_status", p["politicalStatus"]) if p.get("politicalStatus") else None
        ),
        "email": p.get("email") or None,
        "as_of": updated,
        **_person_fields(p["name"], p.get("mobile"), id_number=p.get("idNumber"), id_type=p.get("idType")),
    }
    return Mapped(row, identity)


def card_account(p: dict[str, Any]) -> Mapped:
    kind = CARD_HOLDER_KIND[p["id_type"]]
    updated = norm.timestamp(p["update_time"], norm.COMPACT, CST)
    row = {
        "card_no": p["card_no"],
        "holder_kind": kind,
        "holder_no": p["id_no"],
        "status": p["card_status"],
        "balance_fen": norm.fen(p["balance"]),
        "opened_on": norm.date(p["open_date"], "%Y%m%d") if p.get("open_date") else None,
        "source_updated_at": updated,
    }
    identity = {
        "source": "card",
        "source_key": p["card_no"],
        "role": "cardholder",
        "link": f"{kind}:{p['id_no']}",
        "sex": None,
        "birth_date": None,
        "ethnicity": None,
        "political_status": None,
        "email": None,
        "as_of": updated,
        **_person_fields(p["cust_name"], p.get("mobile")),  # the card holds no ID number
    }
    return Mapped(row, identity)


def card_transaction(p: dict[str, Any]) -> Mapped:
    at = norm.timestamp(p["txn_time"], norm.COMPACT, CST)
    return Mapped(
        {
            "seq": int(p["seq"]),
            "card_no": p["card_no"],
            "amount_fen": norm.fen(p["txn_amt"]),
            "balance_after_fen": norm.fen(p["balance_after"]),
            "kind": p["txn_type"],
            "merchant_code": p.get("merchant_code") or None,
            "merchant_name": p.get("merchant_name") or None,
            "at": at,
            "day": at.astimezone(CST).date(),
        }
    )


def grade(p: dict[str, Any]) -> Mapped:
    text = p["CJ"].strip()
    if text.isdigit():
        score, band = int(text), None
    else:
        bands = code_by_name("grade_band")
        if text not in bands:
            raise ValueError(f"CJ {text!r} is neither a score nor a grade band")
        score, band = int(bands[text]), text
    return Mapped(
        {
            "student_no": p["XH"],
            "course_code": p["KCDM"],
            "course_name": p.get("KCMC"),
            "term": p["XNXQ"],
            "credits": float(p["XF"]) if p.get("XF") else None,
            "score": score,
            "grade_text": band,
            "compulsory": p.get("KCXZ") == "必修",
            "resit": p.get("KSXZ") == "补考",
            "source_updated_at": norm.timestamp(p["GXSJ"]),
        }
    )


def fee_bill(p: dict[str, Any]) -> Mapped:
    status = p.get("缴费状态", "")
    if status not in BILL_STATUS:
        raise ValueError(f"缴费状态 {status!r} is not one of {', '.join(BILL_STATUS)}")
    return Mapped(
        {
            "bill_no": p["账单号"],
            "student_no": p["学号"],
            "item_code": p["收费项目代码"],
            "item_name": p.get("收费项目") or None,
            "academic_year": p.get("学年") or None,
            "amount_fen": norm.fen(p["应收金额(分)"]),
            "paid_fen": norm.fen(p["已收金额(分)"]),
            "status": BILL_STATUS[status],
            "issued_on": norm.date(p["开票日期"], "%Y/%m/%d") if p.get("开票日期") else None,
            "due_on": norm.date(p["截止日期"], "%Y/%m/%d") if p.get("截止日期") else None,
            "source_updated_at": None,
        }
    )


def payment(p: dict[str, Any]) -> Mapped:
    paid_at = norm.timestamp(p["paidAt"])
    return Mapped(
        {
            "payment_no": p["paymentNo"],
            "bill_no": p["billNo"],
            "student_no": p["studentNo"],
            "amount_fen": norm.fen(p["amountFen"]),
            "channel": p.get("channel"),
            "paid_at": paid_at,
            "source_updated_at": paid_at,
        }
    )


def college(p: dict[str, Any]) -> Mapped:
    return Mapped(
        {
            "code": p["YXDM"],
            "name": p["YXMC"],
            "kind": "college",
            "academic_code": p["YXDM"],
            "source_updated_at": None,
        }
    )


def major(p: dict[str, Any]) -> Mapped:
    return Mapped(
        {
            "code": p["ZYDM"],
            "name": p["ZYMC"],
            "college_code": p["YXDM"],
            "years": int(p["XZ"]) if p.get("XZ") else None,
            "source_updated_at": None,
        }
    )


def class_group(p: dict[str, Any]) -> Mapped:
    return Mapped(
        {
            "code": p["BJDM"],
            "name": p["BJMC"],
            "major_code": p["ZYDM"],
            "entry_year": int(p["NJ"]) if p.get("NJ") else None,
            "source_updated_at": None,
        }
    )


def course(p: dict[str, Any]) -> Mapped:
    return Mapped(
        {
            "code": p["KCDM"],
            "name": p["KCMC"],
            "credits": float(p["XF"]) if p.get("XF") else None,
            "college_code": p.get("KKYXDM") or None,
            "source_updated_at": None,
        }
    )


MAPPINGS: dict[tuple[str, str], Mapping] = {
    (m.source, m.stream): m
    for m in (
        Mapping("academic", "colleges", OrgUnit.__table__, ("code",), college, owns="academic_code"),
        Mapping("academic", "majors", Major.__table__, ("code",), major),
        Mapping("academic", "classes", ClassGroup.__table__, ("code",), class_group),
        Mapping("academic", "courses", Course.__table__, ("code",), course),
        Mapping("academic", "students", Student.__table__, ("student_no",), student),
        Mapping("academic", "grades", Grade.__table__, ("student_no", "course_code", "term"), grade),
        Mapping("hr", "staff", Staff.__table__, ("staff_no",), staff),
        Mapping("finance", "fee_bills", FeeBill.__table__, ("bill_no",), fee_bill),
        Mapping("finance", "payments", Payment.__table__, ("payment_no",), payment),
        Mapping("card", "card_accounts", CardAccount.__table__, ("card_no",), card_account),
        Mapping(
            "card",
            "card_transactions",
            CardTransaction.__table__,
            ("seq",),
            card_transaction,
            immutable=True,
            in_database=card_days.insert_well_formed,
            probe_also="card_no",
        ),
    )
}


# ---------------------------------------------------------------------------- applying a mapping
@dataclass
class UnifyResult:
    entity: str
    read: int = 0
    inserted: int = 0
    updated: int = 0
    unchanged: int = 0
    quarantined: int = 0
    watermark_before: int = 0
    watermark_after: int = 0
    seconds: float = 0.0
    reasons: dict[str, int] = field(default_factory=dict)

    def add(self, other: UnifyResult) -> None:
        for name in ("read", "inserted", "updated", "unchanged", "quarantined"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        for reason, count in other.reasons.items():
            self.reasons[reason] = self.reasons.get(reason, 0) + count

    def metadata(self) -> dict[str, Any]:
        return {
            "read": self.read,
            "inserted": self.inserted,
            "updated": self.updated,
            "unchanged": self.unchanged,
            "quarantined": self.quarantined,
            "watermark_before": self.watermark_before,
            "watermark_after": self.watermark_after,
            "duration_s": round(self.seconds, 3),
        }


def key_getter(key: tuple[str, ...]) -> Callable[[dict[str, Any]], tuple[Any, ...]]:
    """A row's natural key as a tuple, read in C (a generator per row cost a tenth of a write)."""
    if len(key) == 1:
        (name,) = key
        return lambda row: (row[name],)
    return operator.itemgetter(*key)


def row_hash(row: dict[str, Any]) -> str:
    """A mapped row's fingerprint: unchanged rows are not written again. (Computed for millions of
    rows a sync, hence orjson, with its own instants and dates — handing each to `str` cost half
    the time; a change of this function makes the next sync rewrite each row once.)"""
    text = orjson.dumps(row, option=orjson.OPT_SORT_KEYS, default=str)
    return hashlib.md5(text, usedforsecurity=False).hexdigest()


def _watermark(connection: Connection, name: str) -> int:
    value = connection.execute(
        select(SyncState.cursor).where(SyncState.source == "unified", SyncState.stream == name)
    ).scalar_one_or_none()
    return int(value) if value else 0


def _save_watermark(connection: Connection, name: str, value: int, run_id: str) -> None:
    values = {"cursor": str(value), "last_success_at": utcnow(), "last_run_id": run_id}
    statement = upsert(connection, SyncState.__table__).values(source="unified", stream=name, **values)
    connection.execute(statement.on_conflict_do_update(index_elements=["source", "stream"], set_=values))


def _quarantine(connection: Connection, source: str, stream: str, raw: Any, reason: str, run_id: str) -> None:
    now = utcnow()
    statement = upsert(connection, QuarantinedRecord.__table__).values(
        source=source,
        stream=stream,
        source_key=raw.source_key or f"#{raw.content_hash}",
        reason=reason,
        reason_hash=hashlib.md5(reason.encode(), usedforsecurity=False).hexdigest()[:16],
        payload=raw.payload,
        first_seen=now,
        last_seen=now,
        run_id=run_id,
        times_seen=1,
    )
    table = QuarantinedRecord.__table__
    connection.execute(
        statement.on_conflict_do_update(
            index_elements=["source", "stream", "source_key", "reason_hash"],
            set_={"last_seen": now, "run_id": run_id, "times_seen": table.c.times_seen + 1},
        )
    )


def _write(
    connection: Connection,
    table: Table,
    key: tuple[str, ...],
    by_key: dict[tuple[Any, ...], dict[str, Any]],
    immutable: bool,
    loaded_at: dt.datetime,
    *,
    first_load: FirstLoad | None = None,
) -> tuple[int, int, int]:
    """Upsert rows (by their natural key) skipping unchanged ones: (inserted, updated, unchanged).

    `loaded_at` is when the load began, the same for all its rows: a columns check validates
    the rows stamped from shortly before its last validation began (`STAMP_MARGIN`), and a
    per-chunk stamp would put a long load's last chunks there — validated twice.

    `first_load`: the table had no rows when the load began, so only this load's own earlier
    chunks can hold a key — see `_appended`."""
    if not by_key:
        return 0, 0, 0
    rows = list(by_key.values())
    if immutable:
        inserted = bulk_upsert(connection, table, key, rows, update=False)
        return inserted, 0, len(rows) - inserted
    keys = list(by_key)
    for row in rows:
        row["row_hash"] = row_hash(row)
        row["deleted_at"] = None
        row["loaded_at"] = loaded_at
    if first_load is not None and first_load.on:
        if _appended(connection, table, rows):
            return len(rows), 0, 0
        first_load.on = False  # keys repeat in this load (several versions landed): look them up
    existing = stored_hashes(connection, table, key, keys)
    inserted, updated = _write_changed(connection, table, key, zip(keys, rows, strict=True), existing)
    return inserted, updated, len(rows) - inserted - updated


@dataclass
class FirstLoad:
    """A load into a table that had no rows when it began (PostgreSQL; see `_appended`)."""

    on: bool = True  # off from the first chunk that repeated a key: from then on, look keys up


def _first_load(connection: Connection, mapping: Mapping) -> FirstLoad | None:
    if connection.dialect.name != "postgresql" or mapping.immutable:
        return None
    empty = connection.execute(select(literal(1)).select_from(mapping.table).limit(1)).first() is None
    return FirstLoad() if empty else None


def _appended(connection: Connection, table: Table, rows: list[dict[str, Any]]) -> bool:
    """Append a first load's chunk without looking its keys up: a key is there only if an
    earlier chunk of this load wrote it — a record that changed while the source was paged, or
    raw landing holding several versions (a rebuild) — and then the unique key refuses the
    chunk, which goes back to its savepoint for the caller to write the usual way. A look-up
    is a probe of the unique key per key, to find nothing in a first load. (SQLite's look-up
    is cheap, and its driver's savepoints unreliable: it looks up.)"""
    from psycopg.errors import UniqueViolation  # COPY's own error: the driver's, unwrapped

    try:
        with connection.begin_nested():
            bulk_append(connection, table, rows)
    except UniqueViolation:
        return False
    return True


def _write_changed(
    connection: Connection,
    table: Table,
    key: tuple[str, ...],
    keyed_rows: Iterable[tuple[tuple[Any, ...], dict[str, Any]]],
    existing: dict[tuple[Any, ...], str],
) -> tuple[int, int]:
    """Write the rows whose fingerprint (`row_hash`) differs from the stored one: (inserted,
    updated). A row whose key is not stored is appended (`bulk_append`) — unless a value of its
    key is not of its column's type (a number where the key is text): the database stores it
    converted, and `stored_hashes`, comparing values, may have missed its stored twin, so such
    a row is merged (`bulk_upsert`), as changed rows are."""
    kinds = tuple(table.c[name].type.python_type for name in key)
    fresh, merged, inserted = [], [], 0
    for k, row in keyed_rows:
        stored = existing.get(k)
        if stored == row["row_hash"]:
            continue
        if stored is None:
            inserted += 1
            if tuple(map(type, k)) == kinds:
                fresh.append(row)
                continue
        merged.append(row)
    bulk_append(connection, table, fresh)
    bulk_upsert(connection, table, key, merged, update=True)
    return inserted, len(fresh) + len(merged) - inserted


def stored_hashes(
    connection: Connection, table: Table, key: tuple[str, ...], keys: list[tuple[Any, ...]]
) -> dict[tuple[Any, ...], str]:
    """The stored fingerprint of each of `keys` (values of the unique `key`) that has a row.

    PostgreSQL: one probe of the unique key per key, as a scalar subquery over the keys sent as
    arrays. Asked instead for the rows of a list of leading values, it scanned the whole table for
    every chunk of a first load (one transaction, which no statistics cover: it guessed half the
    table would match — grades, whose leading column alone is not unique).

    SQLite: the rows matching the key's leading columns as far as one list — the columns with
    one value in the chunk (a source), then the first with several — which its planner probes
    through the unique index; the rows of other keys are left out here. A probe per key, with
    the keys passed as JSON, cost three times as much there."""
    if not keys:
        return {}
    statement, parameters = stored_hashes_query(connection, table, key, keys)
    found = {tuple(r[: len(key)]): r[-1] for r in connection.execute(statement, parameters) if r[-1] is not None}
    return {k: found[k] for k in keys if k in found}


def stored_hashes_query(
    connection: Connection, table: Table, key: tuple[str, ...], keys: list[tuple[Any, ...]]
) -> tuple[Select[Any] | TextClause, dict[str, Any]]:
    """`stored_hashes`' statement and its parameters (apart, so a test can read its plan)."""
    columns = [table.c[name] for name in key]
    if connection.dialect.name != "postgresql":
        conditions = []
        for position, column in enumerate(columns):
            values = sorted({k[position] for k in keys})
            conditions.append(column == values[0] if len(values) == 1 else column.in_(values))
            if len(values) > 1:
                break
        return select(*columns, table.c.row_hash).where(*conditions), {}
    # Each key column's values go as one JSON array (encoded in C by orjson, where psycopg builds
    # an array value in Python, element by element), read back as the column's type.
    dialect = connection.dialect
    quote = dialect.identifier_preparer.quote
    names = [f"k{i}" for i in range(len(columns))]
    typed = ", ".join(f"CAST({n} AS {c.type.compile(dialect)}) AS {n}" for n, c in zip(names, columns, strict=True))
    arrays = ", ".join(f"json_array_elements_text(CAST(:{n} AS json))" for n in names)
    matches = " AND ".join(f"t.{quote(c.name)} = k.{n}" for n, c in zip(names, columns, strict=True))
    statement = text(
        f"SELECT {', '.join(f'k.{n}' for n in names)}, "
        f"(SELECT t.row_hash FROM {quote(table.name)} AS t WHERE {matches}) "
        f"FROM (SELECT {typed} FROM ROWS FROM ({arrays}) AS j({', '.join(names)})) AS k"
    )
    return statement, {n: orjson.dumps([k[i] for k in keys]).decode() for i, n in enumerate(names)}


def _write_identities(connection: Connection, identities: list[dict[str, Any]]) -> None:
    if not identities:
        return
    table, key = SourceIdentity.__table__, ("source", "source_key")
    keys = [(identity["source"], identity["source_key"]) for identity in identities]
    rows = [
        # The cipher is salted: hash the row without it, so an unchanged person is unchanged.
        {**identity, "row_hash": row_hash({k: v for k, v in identity.items() if k != "id_number_cipher"})}
        for identity in identities
    ]
    for row in rows:
        row["resolved"] = False
    _write_changed(connection, table, key, zip(keys, rows, strict=True), stored_hashes(connection, table, key, keys))


def unify(
    connection: Connection,
    mapping: Mapping,
    run_id: str,
    *,
    chunk: int = 5000,
    event_day: dt.date | None = None,
) -> UnifyResult:
    """Apply `mapping` to the raw records landed since its watermark (in the caller's transaction).

    With `event_day` (card transactions), that day's records are read instead, and no
    watermark is kept: a day's partition is rebuilt from raw landing whenever it is
    materialised. Events already in the table are counted as unchanged without being
    decoded again: they are immutable, so rebuilding a day costs what it lacks.
    """
    started, loaded_at = time.perf_counter(), utcnow()
    result = UnifyResult(mapping.watermark_stream)
    watermark = 0 if event_day else _watermark(connection, mapping.watermark_stream)
    result.watermark_before = result.watermark_after = watermark
    query = _raw_query(mapping, watermark, event_day)
    day_total = None
    if event_day is not None and mapping.immutable:
        # Counted from the day's index alone; what is neither inserted nor read below was in
        # the table already, or an older version of an event that was (counted unchanged).
        day_total = connection.execute(select(func.count()).select_from(query.subquery())).scalar_one()
        if mapping.in_database is not None:
            inserted = mapping.in_database(connection, event_day)
            result.read += inserted
            result.inserted += inserted
        query = query.where(_not_loaded(mapping, connection.dialect.name))
    first_load = _first_load(connection, mapping)
    widths, identity_widths = column_widths(mapping.table), column_widths(SourceIdentity.__table__)
    # Streamed in chunks: one query per stream, memory bounded by the chunk.
    # (Statement options: a connection's own would stream every later statement too.)
    stream = connection.execute(query.execution_options(yield_per=chunk))
    key_of = key_getter(mapping.key)
    for records in stream.partitions():
        watermark = records[-1].id
        by_key: dict[tuple[Any, ...], dict[str, Any]] = {}
        identities: dict[str, dict[str, Any]] = {}
        for record in records:
            try:
                mapped = mapping.map(record.payload)
                too_long = _over_width(widths, mapped.row) or (
                    _over_width(identity_widths, mapped.identity) if mapped.identity is not None else None
                )
                if too_long:
                    raise ValueError(too_long)
            # A record's own fault — a bad value, a missing field, a value of another type than the
            # mapper meets (a number where text should be), a time out of range — costs that
            # record, never its stream.
            except (ValueError, KeyError, TypeError, AttributeError, ArithmeticError, OSError) as exc:
                detail = str(exc) if isinstance(exc, ValueError) else f"{type(exc).__name__}: {exc}"
                result.reasons[detail] = result.reasons.get(detail, 0) + 1
                _quarantine(connection, mapping.source, mapping.stream, record, f"normalise: {detail}", run_id)
                result.quarantined += 1
                continue
            # Later versions of a key in the same chunk supersede earlier ones.
            by_key[key_of(mapped.row)] = mapped.row
            if mapped.identity is not None:
                identities[mapped.identity["source_key"]] = mapped.identity
        result.read += len(records)
        inserted, updated, unchanged = _write(
            connection, mapping.table, mapping.key, by_key, mapping.immutable, loaded_at, first_load=first_load
        )
        result.inserted += inserted
        result.updated += updated
        result.unchanged += unchanged
        _write_identities(connection, list(identities.values()))
    result.watermark_after = watermark
    if day_total is not None:
        result.unchanged += day_total - result.read
        result.read = day_total
    if event_day is None:
        _save_watermark(connection, mapping.watermark_stream, watermark, run_id)
    result.seconds = time.perf_counter() - started
    return result


_RAW_COLUMNS = ("id", "source_key", "content_hash", "payload")


def column_widths(table: Table) -> dict[str, int]:
    """The text columns of `table` with a declared length: PostgreSQL refuses a longer value
    (failing the whole load with it), SQLite would store it as it came."""
    return {column.name: column.type.length for column in table.columns if getattr(column.type, "length", None)}


def _over_width(widths: dict[str, int], row: dict[str, Any]) -> str | None:
    for name, width in widths.items():
        value = row.get(name)
        if isinstance(value, str) and len(value) > width:
            return f"{name}: {len(value)} characters, more than the {width} it may hold"
    return None


def _raw_query(mapping: Mapping, watermark: int, event_day: dt.date | None) -> Select[Any]:
    """The records to map: those landed after the watermark, or the events of one day."""
    if event_day is None:
        return landed_records(mapping.source, mapping.stream, *_RAW_COLUMNS, after=watermark)
    raw = RawRecord.__table__
    return (
        select(*(raw.c[name] for name in _RAW_COLUMNS))
        .where(raw.c.source == mapping.source, raw.c.stream == mapping.stream, raw.c.event_day == event_day)
        .order_by(raw.c.id)
    )


def _not_loaded(mapping: Mapping, dialect: str) -> ColumnElement[bool]:
    """An immutable record whose (single, integer) key is not in its table yet: a scalar
    subquery, one probe of the key a record (see card_days.py: PostgreSQL may turn NOT EXISTS
    into a scan of the whole table).

    On PostgreSQL the probe names `probe_also` too (the card number), so that every index that
    could answer it — the key's, and the per-card index (card_no, seq) — answers with one probe:
    with the key alone, once the card table's statistics said it was empty (an ANALYZE before
    the first backfill), PostgreSQL probed the per-card index by its second column — a scan of
    the whole index per event, ten days of a backfill in 235 s instead of about 1. A loaded
    event whose later version names another card number is then "not loaded": it meets the
    key's conflict and counts as unchanged, as any repeat does — or, if it does not map, is
    quarantined again at each rebuild of its day. (SQLite answers the key through its own index
    whatever its statistics.)"""
    (key,) = mapping.key
    column, raw = mapping.table.c[key], RawRecord.__table__
    conditions = [column == cast(raw.c.source_key, column.type)]
    if mapping.probe_also is not None and dialect == "postgresql":
        also = mapping.probe_also
        conditions.append(mapping.table.c[also] == raw.c.payload[also].as_string())
    return select(column).where(*conditions).scalar_subquery().is_(None)


def mark_deleted(connection: Connection, mapping: Mapping, present_keys: set[str]) -> int:
    """Reconcile: mark rows whose key the source did not send in a full pull as deleted.

    `present_keys` are connector keys: the natural key's values joined by '|'.
    """
    table = mapping.table
    columns = [table.c[name] for name in mapping.key]
    gone, back = [], []
    query = select(*columns, table.c.deleted_at)
    if mapping.owns is not None:
        query = query.where(table.c[mapping.owns].is_not(None))
    for *key, deleted_at in connection.execute(query):
        present = "|".join(str(value) for value in key) in present_keys
        if deleted_at is None and not present:
            gone.append(tuple(key))
        elif deleted_at is not None and present:
            back.append(tuple(key))  # deleted once, restored at the source since
    now = utcnow()
    for keys, value in ((gone, now), (back, None)):
        for start in range(0, len(keys), 500):
            chunk = keys[start : start + 500]
            if len(columns) == 1:
                where = columns[0].in_([key[0] for key in chunk])
            else:
                where = or_(*(and_(*(c == v for c, v in zip(columns, key, strict=True))) for key in chunk))
            connection.execute(update(table).where(where).values(deleted_at=value))
    return len(gone)


def unify_hr_departments(connection: Connection, run_id: str) -> UnifyResult:
    """HR's departments onto the org units: a college HR knows under its own code is the same
    org unit academic affairs knows by YXDM (matched by name); an office is HR's alone."""
    result = UnifyResult("hr.departments")
    watermark = result.watermark_before = _watermark(connection, result.entity)
    records = connection.execute(landed_records("hr", "departments", *_RAW_COLUMNS, after=watermark)).all()
    org = OrgUnit.__table__
    widths = column_widths(org)
    by_name = {name: code for code, name in connection.execute(select(org.c.code, org.c.name))}
    offices = []
    for record in records:
        department = record.payload
        name = norm.person_name(department["name"])  # the same NFKC-and-trim rules apply to names of units
        unit = {"hr_code": department["code"]}  # a college gets HR's code; an office a row of its own
        if not (department.get("kind") == "college" and name in by_name):
            unit |= {"code": f"HR-{department['code']}", "name": name}
        too_long = _over_width(widths, unit)
        if too_long:  # PostgreSQL would refuse it, and the whole load with it
            _quarantine(connection, "hr", "departments", record, f"normalise: {too_long}", run_id)
            result.quarantined += 1
            continue
        if department.get("kind") == "college" and name in by_name:
            connection.execute(update(org).where(org.c.code == by_name[name]).values(hr_code=department["code"]))
            result.updated += 1
        else:
            offices.append(
                {
                    "code": f"HR-{department['code']}",
                    "name": name,
                    "kind": "office",
                    "hr_code": department["code"],
                    "source_updated_at": None,
                }
            )
    by_code = {(office["code"],): office for office in offices}
    inserted, updated, unchanged = _write(connection, org, ("code",), by_code, immutable=False, loaded_at=utcnow())
    result.inserted += inserted
    result.updated += updated
    result.unchanged += unchanged
    result.read = len(records)
    result.watermark_after = records[-1].id if records else watermark
    _save_watermark(connection, result.entity, result.watermark_after, run_id)
    return result


def link_references(connection: Connection) -> None:
    """Resolve the codes unified rows carry into foreign keys, and hang every unit under the
    university. Set-based statements: cheap enough to run after every load."""
    statements = [
        # the university itself, the root of the org tree
        f"""INSERT INTO org_unit (code, name, kind, row_hash, loaded_at)
            SELECT '{UNIVERSITY_CODE}', '广东海洋大学', 'university', '', CURRENT_TIMESTAMP
            WHERE NOT EXISTS (SELECT 1 FROM org_unit WHERE code = '{UNIVERSITY_CODE}')""",
        f"""UPDATE org_unit SET parent_id = (SELECT id FROM org_unit WHERE code = '{UNIVERSITY_CODE}')
            WHERE code <> '{UNIVERSITY_CODE}' AND parent_id IS NULL""",
        _relink("major", {"college_id": ("org_unit", "academic_code", "college_code")}),
        _relink("class_group", {"major_id": ("major", "code", "major_code")}),
        _relink(
            "student",
            {
                "college_id": ("org_unit", "academic_code", "college_code"),
                "major_id": ("major", "code", "major_code"),
                "class_id": ("class_group", "code", "class_code"),
            },
        ),
        _relink("staff", {"department_id": ("org_unit", "hr_code", "department_code")}),
    ]
    if connection.dialect.name == "postgresql":
        # Checking every student's keys against their codes is estimated dear enough for
        # PostgreSQL to compile it to machine code first — 330 of 350 ms at 50,000 students,
        # for a scan that finds what changed through hashed look-ups.
        connection.execute(text("SET LOCAL jit = off"))
    for statement in statements:
        connection.execute(text(statement))
    _name_positions(connection)


def _relink(table: str, references: dict[str, tuple[str, str, str]]) -> str:
    """An UPDATE that points each of `table`'s foreign keys at the unit its code names — for the
    rows where it points nowhere or elsewhere: a student who changed major or class, a member of
    staff who moved department, carries the new code in an upsert that keeps the old key.
    `references`: key column -> (the referenced table, its code column, the row's code column)."""
    assignments = ", ".join(
        f"{key} = (SELECT id FROM {target} WHERE {target_code} = {table}.{code})"
        for key, (target, target_code, code) in references.items()
    )
    stale = " OR ".join(
        f"({table}.{code} IS NULL AND {key} IS NOT NULL) OR ({table}.{code} IS NOT NULL AND NOT EXISTS "
        f"(SELECT 1 FROM {target} WHERE {target}.id = {table}.{key} AND {target}.{target_code} = {table}.{code}))"
        for key, (target, target_code, code) in references.items()
    )
    return f"UPDATE {table} SET {assignments} WHERE {stale}"


def _name_positions(connection: Connection) -> None:
    """Staff rows carry HR's position code; its name comes from HR's positions stream (a
    handful of rows: the latest landed version of each wins)."""
    staff_table = Staff.__table__
    names: dict[str, str] = {}
    for (payload,) in connection.execute(landed_records("hr", "positions", "payload")):
        if payload.get("code") and payload.get("name"):
            names[payload["code"]] = norm.person_name(payload["name"])
    for code, name in names.items():
        connection.execute(
            update(staff_table)
            .where(
                staff_table.c.position_code == code,
                or_(staff_table.c.position_name.is_(None), staff_table.c.position_name != name),
            )
            .values(position_name=name)
        )
