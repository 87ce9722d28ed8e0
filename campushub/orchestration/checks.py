# Dagster reads these signatures at definition time: no `from __future__ import annotations` here.
"""Data-quality checks on the unified assets: blocking, so nothing is built on data known bad.

Every unified asset has its column expectations (Great Expectations, run in the database) and
a row-count guard (held to its last passing evaluation, or to the size a steward accepted);
some have cross-table rules besides — references up the student → class → major → college
chain (keys agreeing with the codes the source sent), payments within their bills, ID numbers
that agree with the person, card balances that reconcile with the transactions, the keys
of other systems a row carries (`source_keys`), and the phones sources sent that could not be
used (`phones`). The rules, and everything they declare, live in `campushub.models.quality`;
`CHECKS` below says which asset gets which.

All checks of one asset run in one op, so an asset costs one extra step, and each result
carries its counts, a few failing keys (never an ID number; phones and e-mails masked) and its
`duration_s`. A failing check has ERROR severity and blocks: the asset's downstream does not run —
but for `source_keys` and `phones`, WARNs: a grade naming no student most often means the
student's record waits in quarantine, which the steward sees there, and holding the grades back
helps no one; a phone that is not a mainland mobile was left out already — the person's record
loaded without it — and only its source can put it right.
"""

import datetime as dt
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from dagster import (
    AssetCheckExecutionContext,
    AssetCheckKey,
    AssetCheckResult,
    AssetChecksDefinition,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetKey,
    DagsterEventType,
    MetadataValue,
    multi_asset_check,
)
from dagster._core.storage.tags import (
    ASSET_PARTITION_RANGE_END_TAG,
    ASSET_PARTITION_RANGE_START_TAG,
    PARTITION_NAME_TAG,
)
from sqlalchemy import Engine

from campushub.models import quality
from campushub.models.service import record_check_result, row_count_baseline
from campushub.orchestration.assets.unified import UNIFIED_POOL
from campushub.orchestration.resources import DatabaseResource


@dataclass(frozen=True)
class Probe:
    """What a rule gets to look at: the database, the asset's table, and (for the row-count
    check) the count it is held to."""

    engine: Engine
    table: str
    baseline: quality.Baseline | None = None
    days: tuple[dt.date, dt.date] | None = None  # a partition run's first and last day
    # Rows written before this instant passed the previous evaluation (None: validate all).
    validated_before: dt.datetime | None = None


@dataclass(frozen=True)
class Rule:
    description: str
    run: Callable[[Probe], quality.Outcome]
    # Blocking, at ERROR severity, unless a failure is more often another system's record
    # waiting in quarantine than this table's fault, or a value the table already went without:
    # then a WARN for a steward.
    blocking: bool = True


def _columns(probe: Probe) -> quality.Outcome:
    return quality.column_expectations(probe.engine, probe.table, days=probe.days, written_since=probe.validated_before)


def _row_count(probe: Probe) -> quality.Outcome:
    with probe.engine.connect() as connection:
        return quality.row_count_drop(connection, probe.table, probe.baseline)


def _references(probe: Probe) -> quality.Outcome:
    with probe.engine.connect() as connection:
        return quality.reference_problems(connection, probe.table)


def _source_keys(probe: Probe) -> quality.Outcome:
    with probe.engine.connect() as connection:
        return quality.source_key_problems(connection, probe.table)


def _phones(probe: Probe) -> quality.Outcome:
    with probe.engine.connect() as connection:
        return quality.unusable_phones(connection)


def _within_bills(probe: Probe) -> quality.Outcome:
    with probe.engine.connect() as connection:
        return quality.overpaid_bills(connection)


def _payments_held(probe: Probe) -> quality.Outcome:
    with probe.engine.connect() as connection:
        return quality.unaccounted_bill_payments(connection)


def _id_numbers(probe: Probe) -> quality.Outcome:
    with probe.engine.connect() as connection:
        return quality.id_number_problems(connection)


def _balances(probe: Probe) -> quality.Outcome:
    with probe.engine.connect() as connection:
        return quality.card_balance_problems(connection, probe.days)


def _chain(probe: Probe) -> quality.Outcome:
    with probe.engine.connect() as connection:
        return quality.card_chain_problems(connection, probe.days)


ROW_COUNT = quality.ROW_COUNT
COLUMNS = "columns"
VALIDATED_AT = "validated_at"  # when a columns evaluation began: what was written before it, it saw
# Stamps and the check's clock are one host's, but a row stamped just before a validation began
# may commit just after: rows stamped this close before the last validation are validated again.
STAMP_MARGIN = dt.timedelta(seconds=5)
FULL_SWEEP_MODES = frozenset({"reconcile"})  # runs (by job, or campushub/mode tag) that validate everything
HISTORY = 20  # evaluations looked back through for the last finished one

RULES: dict[str, Rule] = {
    COLUMNS: Rule(
        "Column expectations (Great Expectations, in the database): keys present and unique, "
        "codes within their national code tables, phone and e-mail formats. After a passing "
        "evaluation, the rows written since; the nightly reconcile validates every row.",
        _columns,
    ),
    ROW_COUNT: Rule(
        f"Live rows have not dropped by more than {quality.ROW_DROP_LIMIT:.0%} below the last passing evaluation's "
        "count, or the count a data steward accepted since (acceptRowCount): a drop fails run after run until "
        "the rows are back or a steward accepts the new size.",
        _row_count,
    ),
    "references": Rule(
        "Every live row points at live rows up the student → class → major → college chain and agrees with them, "
        "and its keys follow the codes the source sent (a transfer).",
        _references,
    ),
    "source_keys": Rule(
        "The keys of another system a row carries name rows the hub holds (a grade's student and course, a bill's "
        "student, a payment's bill), marked deleted or not. A warning: most often the other record waits in "
        "quarantine.",
        _source_keys,
        blocking=False,
    ),
    "phones": Rule(
        "Every live record of a person (student, member of staff, card holder) was sent a usable phone. One that "
        "is not a mainland mobile (a landline, a number from abroad) is left out of the unified layer and kept as "
        "sent beside the record; listed masked, by source and source key. A warning: the person's record loaded "
        "without it, and only the source can correct it.",
        _phones,
        blocking=False,
    ),
    "within_bills": Rule(
        f"Payments against a bill never exceed it by more than {quality.TOLERANCE_FEN} fen.",
        _within_bills,
    ),
    "payments_held": Rule(
        "What the finance export says each bill has been paid, the payments the hub holds add up to. A warning: "
        "a shortfall is a payment not pulled yet (recorded later than the payments pull reaches back, or made "
        "since it ran) or one waiting in quarantine. The bills are named with the amount missing.",
        _payments_held,
        blocking=False,
    ),
    "id_numbers": Rule(
        "Resident identity numbers carry a valid check character and agree with the person's birth date and sex; "
        "the numbers of other documents (travel permits, passports, permanent residence cards) have their form.",
        _id_numbers,
    ),
    "balances_reconcile": Rule(
        "Each card's balance is the balance after its last transaction.",
        _balances,
    ),
    "balances_chain": Rule(
        "Each transaction's balance is the previous balance plus its amount.",
        _chain,
    ),
}

# unified asset -> the rules beyond columns and row count (its table: `quality.CHECKED_TABLES`)
CHECKS: dict[str, tuple[str, ...]] = {
    "org_units": (),
    "majors": ("references",),
    "classes": ("references",),
    "courses": (),
    "students": ("references",),
    "grades": ("source_keys",),
    "staff": ("references", "source_keys"),
    "fee_bills": ("source_keys",),
    "payments": ("source_keys", "within_bills", "payments_held"),
    "card_accounts": (),
    "persons": ("id_numbers", "phones"),
    # Checked with the transactions rather than the accounts: blocking the account load on a
    # mismatch would also hold back the very transactions that could explain it.
    "card_transactions": ("balances_reconcile", "balances_chain"),
}


def _metadata_value(value: Any) -> Any:
    return MetadataValue.json(value) if isinstance(value, list | dict) else value


def _last_evaluation(context: AssetCheckExecutionContext, key: AssetCheckKey) -> Any | None:
    """The last evaluation of this check that finished: this run's own is only planned while it
    executes, and a run that died left nothing to compare with."""
    history = context.instance.event_log_storage.get_asset_check_execution_history(key, limit=HISTORY)
    for record in history:
        event = record.event.dagster_event if record.event is not None else None
        if event is not None and event.event_type == DagsterEventType.ASSET_CHECK_EVALUATION:
            return event.event_specific_data
    return None


def validated_before(context: AssetCheckExecutionContext, key: AssetCheckKey) -> dt.datetime | None:
    """Rows written before this instant need no validation again: the last columns evaluation
    passed and saw them. None — validate every row — after a failure (the rows it refused are
    still there), in a full-sweep run, or when there is no such evaluation."""
    if context.run.tags.get("campushub/mode") in FULL_SWEEP_MODES or context.run.job_name in FULL_SWEEP_MODES:
        return None
    evaluation = _last_evaluation(context, key)
    entry = getattr(evaluation, "metadata", {}).get(VALIDATED_AT)
    if evaluation is None or not evaluation.passed or entry is None:
        return None
    try:
        return dt.datetime.fromisoformat(str(entry.value)) - STAMP_MARGIN
    except ValueError:
        return None


def partition_days(context: AssetCheckExecutionContext) -> tuple[dt.date, dt.date] | None:
    """The days a partitioned run builds (one partition, or a range), from the run's tags: the
    checks then look at what that run can have changed, not at every day there is."""
    tags = context.run.tags
    first = tags.get(ASSET_PARTITION_RANGE_START_TAG) or tags.get(PARTITION_NAME_TAG)
    last = tags.get(ASSET_PARTITION_RANGE_END_TAG) or tags.get(PARTITION_NAME_TAG)
    try:
        return (dt.date.fromisoformat(first), dt.date.fromisoformat(last)) if first and last else None
    except ValueError:
        return None


# An asset's rules run side by side, each on a connection of its own: most of their time is the
# database's (a scan, an aggregate, Great Expectations' queries), so two keep both cores busy.
RULE_THREADS = 2


def _evaluated(probes: dict[str, Probe]) -> Iterator[tuple[str, quality.Outcome]]:
    """Each rule's outcome, in the order given; a rule that raised raises here, in its turn."""

    def run(name: str) -> quality.Outcome:
        outcome = RULES[name].run(probes[name])
        if name == COLUMNS:
            outcome.details[VALIDATED_AT] = started_at.isoformat()
        return outcome

    started_at = dt.datetime.now(dt.UTC)  # before any rule reads: rows written later are validated next time
    with ThreadPoolExecutor(max_workers=RULE_THREADS, thread_name_prefix="campushub-check") as pool:
        futures = {name: pool.submit(run, name) for name in probes}
        for name, future in futures.items():
            yield name, future.result()


def checks_for(entity: str) -> AssetChecksDefinition:
    table, extra = quality.CHECKED_TABLES[entity], CHECKS[entity]
    asset_key = AssetKey(["unified", entity])
    names = (COLUMNS, ROW_COUNT, *extra)

    @multi_asset_check(
        name=f"unified_{entity}_checks",
        specs=[
            AssetCheckSpec(name, asset=asset_key, blocking=RULES[name].blocking, description=RULES[name].description)
            for name in names
        ],
        can_subset=True,
        description=f"Data-quality checks on unified/{entity}.",
        # With the writers: a check never runs while another run's write transaction is open,
        # so every row stamped before it began is committed and seen (see `validated_before`).
        pool=UNIFIED_POOL,
    )
    def _checks(context: AssetCheckExecutionContext, database: DatabaseResource) -> Iterator[AssetCheckResult]:
        selected = [name for name in names if AssetCheckKey(asset_key, name) in context.selected_asset_check_keys]
        # What a rule needs from Dagster's event log is read here, on the op's own thread.
        days = partition_days(context)
        baseline: quality.Baseline | None = None
        if ROW_COUNT in selected:  # from the hub's own records: see `row_count_baseline`
            with database.engine.connect() as connection:
                baseline = row_count_baseline(connection, entity)
        probes = {
            name: Probe(
                database.engine,
                table,
                baseline if name == ROW_COUNT else None,
                days,
                validated_before(context, AssetCheckKey(asset_key, name)) if name == COLUMNS else None,
            )
            for name in selected
        }
        for name, outcome in _evaluated(probes):
            with database.engine.begin() as connection:
                record_check_result(connection, entity, name, outcome, context.run.run_id, RULES[name].blocking)
            if not outcome.passed:
                context.log.warning(f"{asset_key.to_user_string()} failed {name}: {outcome.counts}")
            yield AssetCheckResult(
                asset_key=asset_key,
                check_name=name,
                passed=outcome.passed,
                severity=AssetCheckSeverity.ERROR if RULES[name].blocking else AssetCheckSeverity.WARN,
                metadata={k: _metadata_value(v) for k, v in outcome.metadata().items()},
            )

    return _checks


ASSET_CHECKS = [checks_for(entity) for entity in CHECKS]
