"""Data-quality rules for the unified layer, and the code that evaluates them.

Everything a rule depends on is declared here, as data, once: which columns must be present
and unique, which national code table each coded column draws from, the phone and e-mail
formats, the references that chain a student to a college, how far payments may exceed a bill,
and how far a table may shrink below its baseline. Nothing here knows about Dagster:
`campushub.orchestration.checks` turns each `Outcome` into an asset check result.

Column rules run in Great Expectations 1.x against the database itself (a SQL datasource
reading the table where it lives); cross-table rules are plain SQL that SQLite (≥ 3.25, for
window functions) and PostgreSQL both run. The ID-number rule decrypts in Python: ciphertext
cannot be checked in SQL. Failing rows are reported by their keys — ID numbers never, phone
numbers and e-mail addresses masked.
"""

from __future__ import annotations

import datetime as dt
import functools
import os
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from cryptography.fernet import InvalidToken
from sqlalchemy import BindParameter, Connection, Date, Engine, Table, TextClause, bindparam, select, text

from campushub.models.base import Base, UTCDateTime
from campushub.models.landing import SyncState
from campushub.models.protect import decrypt_id
from campushub.models.unified import ROLE_TABLES, Person
from campushub.reference.codes import code_table
from campushub.reference.identity import DOCUMENT_TYPES, id_document_disagreement

# ------------------------------------------------------------------------- declared rules
SAMPLE = 10  # failing keys shown per rule: enough for a steward to start, never a data dump
# A bill may be overpaid by up to ¥1: some cash desks and bank channels round to the yuan.
TOLERANCE_FEN = 100
# A table that loses more than this share of its live rows has most likely been hit by a
# partial pull or a runaway reconcile, not by real deletions — until a steward says otherwise.
ROW_DROP_LIMIT = 0.10
ROW_COUNT = "row_count"  # the row-count check, and the live-row count its verdict carries

# Portable regular expressions: GX runs them with SQLite's REGEXP and PostgreSQL's `~` alike.
PATTERNS: dict[str, str] = {
    "phone": r"^1[0-9]{10}$",  # a mainland mobile number, as normalisation writes it
    "email": r"^[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}$",
}


def mask_phone(value: str) -> str:
    """'13800138000' -> '138****8000'; short or odd values keep only their length."""
    return value[:3] + "*" * (len(value) - 7) + value[-4:] if len(value) >= 8 else "*" * len(value)


def mask_email(value: str) -> str:
    """'zhangsan@example.edu.cn' -> 'z***@example.edu.cn': the domain says enough."""
    local, at, domain = value.partition("@")
    return f"{local[:1]}***{at}{domain}" if at else f"{value[:1]}***"


# What a failing value of each format may show of itself.
MASKS: dict[str, Callable[[str], str]] = {"phone": mask_phone, "email": mask_email}


@dataclass(frozen=True)
class TableRules:
    """Column-level expectations for one unified table."""

    key: tuple[str, ...]  # failing rows are reported by these columns
    not_null: tuple[str, ...] = ()
    unique: tuple[tuple[str, ...], ...] = ()
    codes: Mapping[str, str] = field(default_factory=dict)  # column -> national code table
    formats: Mapping[str, str] = field(default_factory=dict)  # column -> PATTERNS entry

    @property
    def columns(self) -> frozenset[str]:
        """Every column a rule reads."""
        return frozenset({*self.key, *self.not_null, *(c for u in self.unique for c in u), *self.codes, *self.formats})


TABLE_RULES: dict[str, TableRules] = {
    "org_unit": TableRules(key=("code",), not_null=("code", "name", "kind"), unique=(("code",),)),
    "major": TableRules(key=("code",), not_null=("code", "name"), unique=(("code",),)),
    "class_group": TableRules(key=("code",), not_null=("code", "name"), unique=(("code",),)),
    "course": TableRules(key=("code",), not_null=("code", "name"), unique=(("code",),)),
    "student": TableRules(
        key=("student_no",),
        not_null=("student_no",),
        unique=(("student_no",),),  # 学号
        codes={"status": "student_status", "education_level": "education_level"},
        formats={"email": "email"},
    ),
    "grade": TableRules(
        key=("student_no", "course_code", "term"),
        not_null=("student_no", "course_code", "term"),
        unique=(("student_no", "course_code", "term"),),
    ),
    "staff": TableRules(
        key=("staff_no",),
        not_null=("staff_no",),
        unique=(("staff_no",),),  # 工号
        codes={"title_code": "professional_title"},
        formats={"email": "email"},
    ),
    "fee_bill": TableRules(
        key=("bill_no",), not_null=("bill_no", "student_no", "amount_fen", "paid_fen"), unique=(("bill_no",),)
    ),
    "payment": TableRules(
        key=("payment_no",), not_null=("payment_no", "bill_no", "amount_fen"), unique=(("payment_no",),)
    ),
    "card_account": TableRules(
        key=("card_no",), not_null=("card_no", "holder_no", "balance_fen"), unique=(("card_no",),)
    ),
    "person": TableRules(
        key=("id",),
        not_null=("name",),
        codes={
            "sex": "sex",
            "ethnicity": "ethnicity",
            "political_status": "political_status",
            "id_type": DOCUMENT_TYPES,
        },
        formats={"phone": "phone", "email": "email"},
    ),
    # Events: the sequence number is the primary key; only what every balance rule relies on.
    "card_transaction": TableRules(key=("seq",), not_null=("card_no", "amount_fen", "balance_after_fen")),
}


# The unified assets the checks guard, by the name their verdicts (and a steward's actions on
# them) go by, and the table each one loads.
CHECKED_TABLES: dict[str, str] = {
    "org_units": "org_unit",
    "majors": "major",
    "classes": "class_group",
    "courses": "course",
    "students": "student",
    "grades": "grade",
    "staff": "staff",
    "fee_bills": "fee_bill",
    "payments": "payment",
    "card_accounts": "card_account",
    "persons": "person",
    "card_transactions": "card_transaction",
}


@dataclass(frozen=True)
class Reference:
    """`table.column` must name a live row of `parent` (rows of `table` marked deleted aside)."""

    table: str
    column: str
    parent: str
    key: str  # how a failing row of `table` is reported


@dataclass(frozen=True)
class Agreement:
    """Along `table.via` -> `parent`, `table.column` must equal `parent.parent_column`: a
    student's major is their class's major, their college their major's college."""

    table: str
    via: str
    parent: str
    column: str
    parent_column: str
    key: str


@dataclass(frozen=True)
class KeyReference:
    """`table.column`, a source system's key, must name a row of `parent` by its `parent_column`:
    a grade's 学号 a student, a payment's bill a bill. Failures are counted by the keys that name
    nothing."""

    table: str
    column: str
    parent: str
    parent_column: str


# student → class → major → college
REFERENCES: tuple[Reference, ...] = (
    Reference("student", "class_id", "class_group", "student_no"),
    Reference("student", "major_id", "major", "student_no"),
    Reference("student", "college_id", "org_unit", "student_no"),
    Reference("class_group", "major_id", "major", "code"),
    Reference("major", "college_id", "org_unit", "code"),
)
AGREEMENTS: tuple[Agreement, ...] = (
    Agreement("student", "class_id", "class_group", "major_id", "major_id", "student_no"),
    Agreement("student", "major_id", "major", "college_id", "college_id", "student_no"),
    # The keys follow the codes the source sends (a transfer changes the codes): a key left
    # behind puts a student in the wrong college's lists.
    Agreement("student", "college_id", "org_unit", "college_code", "academic_code", "student_no"),
    Agreement("student", "major_id", "major", "major_code", "code", "student_no"),
    Agreement("student", "class_id", "class_group", "class_code", "code", "student_no"),
    Agreement("staff", "department_id", "org_unit", "department_code", "hr_code", "staff_no"),
)
KEY_REFERENCES: tuple[KeyReference, ...] = (
    KeyReference("grade", "student_no", "student", "student_no"),
    KeyReference("grade", "course_code", "course", "code"),
    KeyReference("fee_bill", "student_no", "student", "student_no"),
    KeyReference("payment", "bill_no", "fee_bill", "bill_no"),
    # A department code that names no unit leaves the staff row's key empty (its department may
    # wait in quarantine).
    KeyReference("staff", "department_code", "org_unit", "hr_code"),
)


# ------------------------------------------------------------------------------ outcomes
@dataclass
class Outcome:
    """One rule's verdict: counts a steward reads, a few failing keys, how long it took."""

    passed: bool
    counts: dict[str, int] = field(default_factory=dict)
    samples: list[dict[str, Any]] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0

    def metadata(self) -> dict[str, Any]:
        metadata: dict[str, Any] = {**self.counts, **self.details, "duration_s": round(self.seconds, 3)}
        if self.samples:
            metadata["failing_keys"] = self.samples
        return metadata


def _timed(rule: Callable[..., Outcome]) -> Callable[..., Outcome]:
    @functools.wraps(rule)
    def run(*args: Any, **kwargs: Any) -> Outcome:
        started = time.perf_counter()
        outcome = rule(*args, **kwargs)
        outcome.seconds = time.perf_counter() - started
        return outcome

    return run


def _table(name: str) -> Table:
    return Base.metadata.tables[name]


def _written_at(table: str) -> str | None:
    """The column stamped with when a row was last written (by the pipeline's upserts and
    updates alike), so a run can validate what it wrote; None for daily event tables, which
    are windowed by day instead."""
    columns = _table(table).c
    return next((name for name in ("loaded_at", "updated_at") if name in columns), None)


def _has_deleted_at(table: str) -> bool:
    return "deleted_at" in _table(table).c


# ------------------------------------------------------------ column rules, in Great Expectations
def _great_expectations() -> Any:
    # Imported on first use only: GX takes seconds to import, and the Dagster code location
    # must load without it. Its usage analytics stay off: this runs on university data.
    os.environ["GX_ANALYTICS_ENABLED"] = "False"
    import great_expectations

    return great_expectations


def _expectation_specs(table: str, rules: TableRules) -> list[tuple[str, dict[str, Any]]]:
    """The expectations `rules` make for `table`, as (GX class name, its arguments)."""
    columns = _table(table).c
    required = list(rules.not_null)
    for column in rules.codes:
        if not columns[column].nullable and column not in required:
            required.append(column)
    specs: list[tuple[str, dict[str, Any]]] = [("ExpectColumnValuesToNotBeNull", {"column": c}) for c in required]
    for group in rules.unique:
        if len(group) == 1:
            specs.append(("ExpectColumnValuesToBeUnique", {"column": group[0]}))
        else:
            specs.append(("ExpectCompoundColumnsToBeUnique", {"column_list": list(group)}))
    # In-set and regex expectations pass over nulls: a nullable column may be empty.
    specs += [
        ("ExpectColumnValuesToBeInSet", {"column": column, "value_set": sorted(code_table(codes))})
        for column, codes in rules.codes.items()
    ]
    specs += [
        ("ExpectColumnValuesToMatchRegex", {"column": column, "regex": PATTERNS[pattern]})
        for column, pattern in rules.formats.items()
    ]
    return specs


def _expectations(table: str, rules: TableRules) -> list[Any]:
    import great_expectations.expectations as gxe

    return [getattr(gxe, name)(**arguments) for name, arguments in _expectation_specs(table, rules)]


def _shown(rules: TableRules, column: str, value: Any) -> Any:
    pattern = rules.formats.get(column)
    if value is None or pattern is None:
        return value
    return MASKS[pattern](str(value))


@functools.cache
def _gx_source(url: str) -> tuple[Any, Any]:
    """One ephemeral GX context and SQL datasource per database and process: GX keeps an
    engine per datasource, so reusing it keeps one connection pool rather than one a check."""
    gx = _great_expectations()
    from great_expectations.data_context.types.base import ProgressBarsConfig

    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    # The dialect's own datasource where GX has one (it knows the dialect's regex operator).
    add = {"sqlite": context.data_sources.add_sqlite, "postgresql": context.data_sources.add_postgres}.get(
        url.split(":", 1)[0].split("+", 1)[0], context.data_sources.add_sql
    )
    return context, add(name="unified", connection_string=url)


@functools.cache
def _suite(url: str, table: str) -> Any:
    gx = _great_expectations()
    context, _ = _gx_source(url)
    return context.suites.add(gx.ExpectationSuite(name=table, expectations=_expectations(table, TABLE_RULES[table])))


@functools.cache
def _validation(url: str, table: str, table_name: str) -> Any:
    """The validation of `table_name` against `table`'s rules, built once and run every time."""
    gx = _great_expectations()
    context, source = _gx_source(url)
    name = f"{table}@{table_name}"
    batch = source.add_table_asset(name=name, table_name=table_name).add_batch_definition_whole_table(name)
    return context.validation_definitions.add(gx.ValidationDefinition(name=name, data=batch, suite=_suite(url, table)))


@contextmanager
def _query_validation(url: str, table: str, table_name: str, where: str, label: str, column: str) -> Iterator[Any]:
    """The validation of the rows of `table_name` that `where` (on `column`) selects (a GX
    query asset) against `table`'s rules, removed again afterwards: every run asks for other rows."""
    gx = _great_expectations()
    context, source = _gx_source(url)
    name = f"{table}@{table_name}@{label}"
    query = f"SELECT * FROM {_windowed_source(url, table, table_name, column)} WHERE {where}"
    batch = source.add_query_asset(name=name, query=query)
    definition = batch.add_batch_definition_whole_table(name)
    try:
        yield context.validation_definitions.add(
            gx.ValidationDefinition(name=name, data=definition, suite=_suite(url, table))
        )
    finally:
        context.validation_definitions.delete(name)
        source.delete_asset(name)


def _windowed_source(url: str, table: str, table_name: str, column: str) -> str:
    """What a windowed validation reads. GX checks a unique key by joining the batch to its own
    counts grouped by that key, and SQLite's planner walks the key's unique index for the
    grouping — the whole table, a second a million rows — instead of the window's own index:
    on SQLite the window's index is named (`INDEXED BY`; no such index is an error, not a scan)."""
    if not url.startswith("sqlite") or table_name != table:
        return table_name
    index = next(ix.name for ix in _table(table).indexes if [c.name for c in ix.columns] == [column])
    return f"{table_name} INDEXED BY {index}"


def _instant_literal(url: str, at: dt.datetime) -> str:
    """`at` as the database compares it with a stored UTC instant: SQLite keeps the UTC wall
    clock as text (`UTCDateTime`), PostgreSQL a timestamptz."""
    text = at.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S.%f")
    return f"'{text}'" if url.startswith("sqlite") else f"TIMESTAMPTZ '{text}+00'"


@_timed
def column_expectations(
    engine: Engine,
    table: str,
    *,
    table_name: str | None = None,
    days: tuple[dt.date, dt.date] | None = None,
    written_since: dt.datetime | None = None,
) -> Outcome:
    """Validate `table` against its `TABLE_RULES` with Great Expectations, in the database.

    `table_name` validates another table under the same rules (a copy, in tests). A run that
    changed little validates the batch it wrote rather than the whole table again:

    - `days` (a partition run's first and last day): for a table of daily events, the rows of
      those days alone when they are few — a run refreshing today's card transactions need
      not read the year's millions again;
    - `written_since`: the rows written at or after that instant (`_written_at`), for a run
      following a passing validation of everything written before it.

    Either batch is complete for these rules: every one of them is about a row by itself,
    but uniqueness, and each unique key is also a unique constraint of the table, so a row
    of the batch cannot duplicate one outside it.
    """
    rules = TABLE_RULES[table]
    url = engine.url.render_as_string(hide_password=False)
    name = table_name or table
    result_format = {
        "result_format": "SUMMARY",
        "unexpected_index_column_names": list(rules.key),
        "partial_unexpected_count": SAMPLE,
    }
    window: dict[str, str] = {}
    if days is not None and _windowed(days) and table in DAILY_TABLES:
        first, last = (day.isoformat() for day in days)  # dates, so the literals are safe
        window = {"days": f"{first}..{last}"}
        where, label, column = f"day BETWEEN '{first}' AND '{last}'", f"{first}..{last}", "day"
    elif written_since is not None and (stamp := _written_at(table)) is not None:
        window = {"written_since": written_since.isoformat()}
        where = f"{stamp} >= {_instant_literal(url, written_since)}"
        label, column = f"since {written_since.isoformat()}", stamp
    if window and not _any_row(engine, name, where):
        # Every rule is about the batch's rows: an empty batch passes them all, and Great
        # Expectations (seconds to import, a few tenths a validation) is not asked.
        expectations = len(_expectation_specs(table, rules))
        counts = {"rows": 0, "expectations": expectations, "failed_expectations": 0, "unexpected_values": 0}
        return Outcome(passed=True, counts=counts, details={"validated": window | {"empty_window": "yes"}})
    if window:
        with _query_validation(url, table, name, where, label, column) as validation:
            result = validation.run(result_format=result_format)
    else:
        result = _validation(url, table, name).run(result_format=result_format)

    outcome = Outcome(passed=bool(result.success))
    failures: list[dict[str, Any]] = []
    rows = 0
    for evaluation in result.results:
        config = evaluation.expectation_config
        kwargs = config.kwargs
        column = kwargs.get("column") or ",".join(kwargs.get("column_list", []))
        info = evaluation.result or {}
        rows = max(rows, int(info.get("element_count") or 0))
        if evaluation.success:
            continue
        error = (evaluation.exception_info or {}).get("exception_message")
        failure: dict[str, Any] = {"expectation": config.type, "column": column}
        if error:
            failure["error"] = str(error)[:300]
        else:
            failure["unexpected_count"] = int(info.get("unexpected_count") or 0)
            # Each failing row by its key, with its value masked where the value is personal;
            # GX's own value lists are not copied, as they would carry phones unmasked.
            failure["samples"] = [
                {
                    **{name: entry.get(name) for name in rules.key},
                    **({column: _shown(rules, column, entry.get(column))} if column in entry else {}),
                }
                for entry in (info.get("partial_unexpected_index_list") or [])[:SAMPLE]
            ]
        failures.append(failure)
    outcome.counts = {
        "rows": rows,
        "expectations": len(result.results),
        "failed_expectations": len(failures),
        "unexpected_values": sum(f.get("unexpected_count", 0) for f in failures),
    }
    if failures:
        outcome.details["failures"] = failures
    outcome.details["validated"] = window or {"whole_table": "yes"}
    outcome.details["great_expectations"] = _great_expectations().__version__
    return outcome


def _any_row(engine: Engine, table_name: str, where: str) -> bool:
    """Whether `table_name` has a row `where` selects (through the window's own index)."""
    with engine.connect() as connection:
        return connection.execute(text(f"SELECT 1 FROM {table_name} WHERE {where} LIMIT 1")).first() is not None


# ----------------------------------------------------------------------- cross-table rules
def _live(alias: str, table: str) -> str:
    return f"{alias}.deleted_at IS NULL" if _has_deleted_at(table) else "1 = 1"


def _cross_table_outcome(
    connection: Connection, table: str, counts: Counter[str], samples: list[dict[str, Any]]
) -> Outcome:
    """A cross-table rule's verdict: the live rows it checked, and its problems counted by kind."""
    checked = connection.execute(text(f"SELECT COUNT(*) FROM {table} c WHERE {_live('c', table)}")).scalar_one()
    failing = sum(counts.values())
    return Outcome(
        passed=failing == 0,
        counts={"rows": int(checked), "failing": failing, **{k: v for k, v in sorted(counts.items())}},
        samples=samples,
    )


@_timed
def reference_problems(connection: Connection, table: str) -> Outcome:
    """Every live row of `table` points, along each declared reference, at a live row — and
    agrees with it where the chain must agree (a student's major is their class's major)."""
    counts: Counter[str] = Counter()
    samples: list[dict[str, Any]] = []
    for ref in (r for r in REFERENCES if r.table == table):
        rows = connection.execute(
            text(
                f"""SELECT c.{ref.key} AS key,
                       CASE WHEN c.{ref.column} IS NULL THEN 'missing'
                            WHEN p.id IS NULL THEN 'dangling'
                            ELSE 'points at a deleted row' END AS problem
                    FROM {ref.table} c LEFT JOIN {ref.parent} p ON p.id = c.{ref.column}
                    WHERE {_live("c", ref.table)}
                      AND (c.{ref.column} IS NULL OR p.id IS NULL OR NOT ({_live("p", ref.parent)}))
                    ORDER BY c.{ref.key}"""
            )
        ).all()
        for key, problem in rows:
            counts[f"{ref.column} {problem}"] += 1
            if len(samples) < SAMPLE:
                samples.append({ref.key: key, "column": ref.column, "problem": problem})
    for rule in (a for a in AGREEMENTS if a.table == table):
        rows = connection.execute(
            text(
                f"""SELECT c.{rule.key} AS key FROM {rule.table} c JOIN {rule.parent} p ON p.id = c.{rule.via}
                    WHERE {_live("c", rule.table)}
                      AND c.{rule.column} IS NOT NULL AND p.{rule.parent_column} IS NOT NULL
                      AND c.{rule.column} <> p.{rule.parent_column}
                    ORDER BY c.{rule.key}"""
            )
        ).all()
        problem = f"{rule.column} disagrees with its {rule.parent}"
        for (key,) in rows:
            counts[problem] += 1
            if len(samples) < SAMPLE:
                samples.append({rule.key: key, "column": rule.column, "problem": problem})
    return _cross_table_outcome(connection, table, counts, samples)


@_timed
def source_key_problems(connection: Connection, table: str) -> Outcome:
    """The keys of another system each live row of `table` carries name a row the hub holds —
    marked deleted or not: a student who left keeps their bills."""
    counts: Counter[str] = Counter()
    samples: list[dict[str, Any]] = []
    for ref in (r for r in KEY_REFERENCES if r.table == table):
        # By distinct key, not row by row: a table of grades names each student many times.
        codes = connection.execute(
            text(
                f"""SELECT d.code FROM (SELECT DISTINCT c.{ref.column} AS code FROM {ref.table} c
                                        WHERE {_live("c", ref.table)} AND c.{ref.column} IS NOT NULL) d
                    WHERE NOT EXISTS (SELECT 1 FROM {ref.parent} p
                                      WHERE p.{ref.parent_column} = d.code)
                    ORDER BY d.code"""
            )
        ).scalars()
        problem = f"{ref.column} names no {ref.parent}"
        for code in codes:
            counts[problem] += 1
            if len(samples) < SAMPLE:
                samples.append({ref.column: code, "problem": problem})
    return _cross_table_outcome(connection, table, counts, samples)


CST = dt.timezone(dt.timedelta(hours=8))


def account_snapshot(connection: Connection) -> dt.datetime | None:
    """As of when the card system's accounts were last pulled, on the card system's clock:
    the card_accounts cursor is the server time (Asia/Shanghai) of that pull."""
    cursor = connection.execute(
        select(SyncState.cursor).where(SyncState.source == "card", SyncState.stream == "card_accounts")
    ).scalar_one_or_none()
    try:
        return dt.datetime.strptime(cursor, "%Y%m%d%H%M%S").replace(tzinfo=CST) if cursor else None
    except ValueError:
        return None


# Tables of daily events, partitioned by their `day` column.
DAILY_TABLES = frozenset({"card_transaction"})
# A run over at most this many days checks the cards and transactions of those days alone
# (index look-ups); a longer one checks every card, and chains the whole ledger in one pass
# (a window function).
WINDOWED_DAYS = 31


def _windowed(days: tuple[dt.date, dt.date] | None) -> bool:
    return days is not None and (days[1] - days[0]).days < WINDOWED_DAYS


@_timed
def card_balance_problems(connection: Connection, days: tuple[dt.date, dt.date] | None = None) -> Outcome:
    """Each card's balance is the balance after its last transaction.

    With `days` (a partition run's first and last day), only the cards with a transaction on
    those days: what that run can have changed.

    Accounts and transactions are pulled separately, so the two can be out of step for a
    moment; those cards are left for the next run instead of failing it: transactions later
    than the accounts' snapshot are not yet in the balance (so the last transaction *before*
    the snapshot is compared: the snapshot is the exclusive end of the accounts' update-time
    window, and a transaction stamped to the second in that second may be later than every
    account change served), and an account changed after the newest transaction
    held may owe its balance to transactions not loaded yet (counted as `unsettled`).
    """
    snapshot = account_snapshot(connection)
    statement = _last_transactions(before_snapshot=snapshot is not None, windowed=_windowed(days))
    if snapshot is not None:
        # Bound through the same UTC type the columns use, so SQLite's text comparison lines up.
        statement = statement.bindparams(bindparam("snapshot", snapshot, type_=UTCDateTime()))
    if _windowed(days):
        assert days is not None
        statement = statement.bindparams(*_window(days))
    rows = connection.execute(statement).all()
    settled = [row for row in rows if not row.unsettled]
    wrong = [row for row in settled if row.balance_fen != row.balance_after_fen]
    return Outcome(
        passed=not wrong,
        counts={
            "cards_with_transactions": len(rows),
            "unsettled": len(rows) - len(settled),
            "failing": len(wrong),
        },
        samples=[
            {
                "card_no": r.card_no,
                "balance_fen": r.balance_fen,
                "last_seq": r.seq,
                "balance_after_fen": r.balance_after_fen,
            }
            for r in wrong[:SAMPLE]
        ],
        details={"accounts_as_of": snapshot.isoformat() if snapshot else ""},
    )


def _last_transactions(*, before_snapshot: bool, windowed: bool) -> TextClause:
    """`card_balance_problems`' rows: each card's last transaction, found through the (card_no,
    seq) index — one short probe a card, where ranking every transaction by card (a window
    function over millions of rows) cost seconds; windowed, only the cards with a transaction
    in [:first, :last]. The ledger's end is its newest instant, which lies on its newest day
    (a day is its transactions' date), read through the day index instead of a whole scan."""
    cutoff = "AND l.at < :snapshot" if before_snapshot else ""
    in_window = "AND a.card_no IN (SELECT card_no FROM card_transaction WHERE day BETWEEN :first AND :last)"
    return text(
        f"""WITH ledger AS (
                SELECT MAX(at) AS ends FROM card_transaction
                 WHERE day = (SELECT MAX(day) FROM card_transaction))
            SELECT a.card_no, a.balance_fen, t.balance_after_fen, t.seq,
                   CASE WHEN a.source_updated_at > (SELECT ends FROM ledger) THEN 1 ELSE 0 END AS unsettled
            FROM card_account a
            JOIN card_transaction t ON t.seq = (
                SELECT l.seq FROM card_transaction l WHERE l.card_no = a.card_no {cutoff}
                ORDER BY l.seq DESC LIMIT 1)
            WHERE a.deleted_at IS NULL {in_window if windowed else ""}
            ORDER BY a.card_no"""
    )


@_timed
def card_chain_problems(connection: Connection, days: tuple[dt.date, dt.date] | None = None) -> Outcome:
    """Consecutive transactions of a card chain: the previous balance plus this amount is this
    balance. A gap in the sequence (a transaction not loaded) shows here too.

    With `days`, only the transactions of those days, each against its card's previous one
    (whatever day that was on)."""
    if _windowed(days):
        assert days is not None
        return _chain_problems_in(connection, days)
    rows = connection.execute(
        text(
            """WITH chained AS (
                   SELECT seq, card_no, amount_fen, balance_after_fen,
                          LAG(balance_after_fen) OVER (PARTITION BY card_no ORDER BY seq) AS previous,
                          LAG(seq) OVER (PARTITION BY card_no ORDER BY seq) AS previous_seq
                   FROM card_transaction
               )
               SELECT seq, card_no, previous_seq, previous, amount_fen, balance_after_fen,
                      COUNT(*) OVER () AS failing
               FROM chained
               WHERE previous IS NOT NULL AND previous + amount_fen <> balance_after_fen
               ORDER BY seq LIMIT :sample"""
        ),
        {"sample": SAMPLE},
    ).all()
    total = connection.execute(text("SELECT COUNT(*) FROM card_transaction")).scalar_one()
    return _chain_outcome(rows, int(total))


def _window(days: tuple[dt.date, dt.date]) -> tuple[BindParameter[dt.date], BindParameter[dt.date]]:
    # Typed, so SQLite compares its date text with date text.
    return bindparam("first", days[0], type_=Date()), bindparam("last", days[1], type_=Date())


def _chain_problems_in(connection: Connection, days: tuple[dt.date, dt.date]) -> Outcome:
    rows = connection.execute(
        text(
            """WITH chained AS (
                   SELECT t.seq, t.card_no, t.amount_fen, t.balance_after_fen,
                          p.balance_after_fen AS previous, p.seq AS previous_seq
                   FROM card_transaction t
                   JOIN card_transaction p ON p.seq = (
                       SELECT MAX(q.seq) FROM card_transaction q WHERE q.card_no = t.card_no AND q.seq < t.seq)
                   WHERE t.day BETWEEN :first AND :last
               )
               SELECT seq, card_no, previous_seq, previous, amount_fen, balance_after_fen,
                      COUNT(*) OVER () AS failing
               FROM chained
               WHERE previous + amount_fen <> balance_after_fen
               ORDER BY seq LIMIT :sample"""
        ).bindparams(*_window(days)),
        {"sample": SAMPLE},
    ).all()
    total = connection.execute(
        text("SELECT COUNT(*) FROM card_transaction WHERE day BETWEEN :first AND :last").bindparams(*_window(days))
    ).scalar_one()
    return _chain_outcome(rows, int(total), {"days": f"{days[0].isoformat()}..{days[1].isoformat()}"})


def _chain_outcome(rows: Sequence[Any], total: int, details: dict[str, Any] | None = None) -> Outcome:
    """The balance-chain verdict from the failing rows (each carrying the window's failing count)."""
    failing = int(rows[0].failing) if rows else 0
    return Outcome(
        passed=failing == 0,
        counts={"transactions": total, "failing": failing},
        samples=[
            {
                "seq": r.seq,
                "card_no": r.card_no,
                "previous_seq": r.previous_seq,
                "previous_balance_fen": r.previous,
                "amount_fen": r.amount_fen,
                "balance_after_fen": r.balance_after_fen,
            }
            for r in rows
        ],
        details=details or {},
    )


@_timed
def overpaid_bills(connection: Connection, tolerance_fen: int = TOLERANCE_FEN) -> Outcome:
    """The payments against a bill never exceed it by more than the declared tolerance."""
    rows = connection.execute(
        text(
            """SELECT b.bill_no, b.amount_fen, p.paid_fen, p.payments
               FROM fee_bill b
               JOIN (SELECT bill_no, SUM(amount_fen) AS paid_fen, COUNT(*) AS payments
                     FROM payment WHERE deleted_at IS NULL GROUP BY bill_no) p ON p.bill_no = b.bill_no
               WHERE b.deleted_at IS NULL AND p.paid_fen > b.amount_fen + :tolerance
               ORDER BY p.paid_fen - b.amount_fen DESC, b.bill_no"""
        ),
        {"tolerance": tolerance_fen},
    ).all()
    bills = connection.execute(text("SELECT COUNT(*) FROM fee_bill WHERE deleted_at IS NULL")).scalar_one()
    # Not a failure by itself (a payment may land before the daily bill export), but a
    # steward wants to know.
    orphans = connection.execute(
        text(
            """SELECT COUNT(*) FROM payment p WHERE p.deleted_at IS NULL
               AND NOT EXISTS (SELECT 1 FROM fee_bill b WHERE b.bill_no = p.bill_no AND b.deleted_at IS NULL)"""
        )
    ).scalar_one()
    return Outcome(
        passed=not rows,
        counts={"bills": int(bills), "failing": len(rows), "payments_without_bill": int(orphans)},
        samples=[
            {"bill_no": r.bill_no, "amount_fen": r.amount_fen, "paid_fen": int(r.paid_fen), "payments": r.payments}
            for r in rows[:SAMPLE]
        ],
        details={"tolerance_fen": tolerance_fen},
    )


@_timed
def unaccounted_bill_payments(connection: Connection) -> Outcome:
    """What the finance export says a bill has been paid is covered by the payments the hub
    holds. A shortfall is a payment the hub has not pulled (recorded later than the payments
    pull reaches back, or made since the last pull) or one waiting in quarantine: the bills are
    named with the amount missing, largest first."""
    rows = connection.execute(
        text(
            """SELECT b.bill_no, b.paid_fen, COALESCE(p.held_fen, 0) AS held_fen, COALESCE(p.payments, 0) AS payments,
                      COUNT(*) OVER () AS failing, SUM(b.paid_fen - COALESCE(p.held_fen, 0)) OVER () AS missing_fen
               FROM fee_bill b
               LEFT JOIN (SELECT bill_no, SUM(amount_fen) AS held_fen, COUNT(*) AS payments
                          FROM payment WHERE deleted_at IS NULL GROUP BY bill_no) p ON p.bill_no = b.bill_no
               WHERE b.deleted_at IS NULL AND b.paid_fen > COALESCE(p.held_fen, 0)
               ORDER BY b.paid_fen - COALESCE(p.held_fen, 0) DESC, b.bill_no LIMIT :sample"""
        ),
        {"sample": SAMPLE},
    ).all()
    bills = connection.execute(text("SELECT COUNT(*) FROM fee_bill WHERE deleted_at IS NULL")).scalar_one()
    return Outcome(
        passed=not rows,
        counts={
            "bills": int(bills),
            "failing": int(rows[0].failing) if rows else 0,
            "missing_fen": int(rows[0].missing_fen) if rows else 0,
        },
        samples=[
            {
                "bill_no": r.bill_no,
                "paid_fen": r.paid_fen,
                "held_fen": int(r.held_fen),
                "payments": int(r.payments),
                "missing_fen": r.paid_fen - int(r.held_fen),
            }
            for r in rows
        ],
    )


@_timed
def id_number_problems(connection: Connection, chunk: int = 5000) -> Outcome:
    """Every stored resident identity number is valid (GB 11643 check character, a real birth
    date) and agrees with the person's birth date and sex; every other document's number has its
    document's form. Decrypted in memory one at a time, never reported."""
    counts: Counter[str] = Counter()
    samples: list[dict[str, Any]] = []
    checked = 0
    query = (
        select(Person.id, Person.id_type, Person.id_number_cipher, Person.birth_date, Person.sex)
        .where(Person.id_number_cipher.is_not(None))
        .order_by(Person.id)
    )
    rows = connection.execution_options(yield_per=chunk).execute(query)
    for person_id, id_type, cipher, birth_date, sex in rows:
        checked += 1
        try:
            number = decrypt_id(cipher)
        except InvalidToken:
            problem: str | None = "id number: cannot be decrypted with the current key"
        else:
            problem = id_document_disagreement(id_type, number, birth_date, sex)
        if problem:
            counts[problem] += 1
            if len(samples) < SAMPLE:
                samples.append({"person_id": person_id, "problem": problem})
    failing = sum(counts.values())
    return Outcome(
        passed=failing == 0,
        counts={"persons_with_id_number": checked, "failing": failing, **dict(sorted(counts.items()))},
        samples=samples,
    )


@_timed
def unusable_phones(connection: Connection) -> Outcome:
    """No live source identity was sent a phone that could not be used: one that is not a
    mainland mobile (a landline, a number from abroad) is left out of the unified layer, so that
    it does not cost the record, and kept beside it as sent (`phone_unusable`) — for a steward
    to have the source corrected, since a form that needs the phone finds none. Counted by
    source; failing identities are named by their source key, the phone masked. A record marked
    deleted is not counted: there is nothing left at its source to correct."""
    counts: Counter[str] = Counter()
    samples: list[dict[str, Any]] = []
    identities = 0
    for source, (role_table, key) in ROLE_TABLES.items():
        table = role_table.name
        joined = f"""FROM source_identity i JOIN {table} r ON r.{key} = i.source_key AND {_live("r", table)}
                     WHERE i.source = :source"""
        live, unusable = connection.execute(
            text(f"SELECT COUNT(*), COUNT(i.phone_unusable) {joined}"), {"source": source}
        ).one()
        identities += int(live)
        if not unusable:
            continue
        counts[f"{source}: phone not a mainland mobile"] = int(unusable)
        if len(samples) == SAMPLE:
            continue
        rows = connection.execute(
            text(
                f"""SELECT i.source_key, i.phone_unusable {joined} AND i.phone_unusable IS NOT NULL
                    ORDER BY i.source_key LIMIT :sample"""
            ),
            {"source": source, "sample": SAMPLE - len(samples)},
        ).all()
        samples += [{"source": source, "source_key": k, "phone": mask_phone(phone)} for k, phone in rows]
    failing = sum(counts.values())
    return Outcome(
        passed=failing == 0,
        counts={"identities": identities, "failing": failing, **dict(sorted(counts.items()))},
        samples=samples,
    )


def live_rows(connection: Connection, table: str) -> int:
    """Rows that are current: marked deletions do not count, since rows are never removed."""
    where = " WHERE deleted_at IS NULL" if _has_deleted_at(table) else ""
    return int(connection.execute(text(f"SELECT COUNT(*) FROM {table}{where}")).scalar_one())


@dataclass(frozen=True)
class Baseline:
    """The live-row count a table is held to: its last passing evaluation's, or the size a data
    steward accepted since then (`accepted_by`)."""

    row_count: int
    at: dt.datetime
    accepted_by: str | None = None

    def describe(self) -> str:
        at = self.at.astimezone(dt.UTC).isoformat(timespec="seconds")
        return f"accepted by {self.accepted_by} at {at}" if self.accepted_by else f"last passing evaluation at {at}"

    def details(self) -> dict[str, Any]:
        """What a verdict says of it: for the steward, and for the evaluation after a failing
        one, which is held to the same baseline (`after`)."""
        details: dict[str, Any] = {"baseline": self.describe(), "baseline_at": self.at.isoformat()}
        if self.accepted_by:
            details["accepted_by"] = self.accepted_by
        return details

    @classmethod
    def after(cls, passed: bool, verdict: Mapping[str, Any], evaluated_at: dt.datetime) -> Baseline | None:
        """The baseline the evaluation after this verdict (its counts and details, as stored) is
        held to: a passing one's own count, as of when it was counted — a steward's acceptance
        made while the verdict was still being written is newer, and wins; a failing one's, the
        baseline it was itself held to, or (a verdict written before baselines were carried) the
        count it compared with. None only for a verdict that says neither."""
        try:
            if passed:
                counted_at = verdict.get("counted_at")
                at = dt.datetime.fromisoformat(counted_at) if counted_at else evaluated_at
                return cls(int(verdict[ROW_COUNT]), at)
            if "baseline_at" in verdict:
                at = dt.datetime.fromisoformat(verdict["baseline_at"])
                return cls(int(verdict["baseline_row_count"]), at, verdict.get("accepted_by"))
            if "previous_row_count" in verdict:
                return cls(int(verdict["previous_row_count"]), evaluated_at)
        except (KeyError, TypeError, ValueError):
            pass
        return None


@_timed
def row_count_drop(
    connection: Connection, table: str, baseline: Baseline | None, limit: float = ROW_DROP_LIMIT
) -> Outcome:
    """No more than `limit` of the baseline's live rows have gone. Without a baseline (a first
    evaluation) there is nothing to compare with: it passes, and becomes the baseline."""
    counted_at = dt.datetime.now(dt.UTC)  # before counting: a size accepted later is newer than this count
    current = live_rows(connection, table)
    previous = baseline.row_count if baseline is not None else None
    drop = 0.0 if not previous else max(0.0, (previous - current) / previous)
    details: dict[str, Any] = {"drop": round(drop, 4), "limit": limit, "counted_at": counted_at.isoformat()}
    counts = {ROW_COUNT: current}
    if baseline is not None:
        counts["baseline_row_count"] = baseline.row_count
        details |= baseline.details()
    else:
        details["note"] = "first evaluation: nothing to compare with"
    return Outcome(passed=drop <= limit, counts=counts, details=details)
