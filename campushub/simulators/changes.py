"""The change knob: random edits applied on top of the seeded world, with exact ground truth.

Every applied change is logged with the stream and record key it touched and a strictly
increasing timestamp, so a test can ask "what changed in stream X after time T" and compare an
incremental pull with the truth.

Some changes are never random ones: they happen only when a test asks for them by kind
(`ON_REQUEST_KINDS`), because an incremental pull cannot see them as it sees the rest and the
random mix must stay comparable with incremental pulls. A deleted record is not in any page; a
late-posted payment (a bank transfer the finance office records days after it was made) carries
a payment time from before the previous sync's cursor.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import random
import threading
import time
from bisect import bisect_left, insort
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from campushub.reference.finance import POSTING_LAG

if TYPE_CHECKING:
    from campushub.simulators.world import Bill, CardAccount, CardTransaction, Payment, Staff, Student, World


@dataclass(frozen=True, slots=True)
class Change:
    number: int
    at: dt.datetime
    kind: str
    system: str  # academic / hr / finance / card
    stream: str
    key: str
    deleted: bool = False  # the record is gone from the source (or, False, back again)

    def as_json(self) -> dict[str, object]:
        return {**dataclasses.asdict(self), "at": self.at.isoformat()}


# kind -> weight of being picked
CHANGE_KINDS: dict[str, int] = {
    "new_student": 10,
    "student_status": 15,
    "student_phone": 15,
    "staff_phone": 10,
    "staff_title": 5,
    "card_transactions": 25,
    "bill_paid": 15,
    "card_lost": 5,
}
# Asked for explicitly only (see the module docstring); weights for when several are asked for.
ON_REQUEST_KINDS: dict[str, int] = {
    "student_deleted": 2,  # an erroneous student record removed from academic affairs, grades and all
    "student_restored": 1,  # a deleted student put back (the deletion was the error)
    "late_payment": 1,  # a bill paid by bank transfer, recorded now with the day it was paid
}
# How long before it is recorded a late-posted payment was made: bank transfers settle in days.
# Within the lag the finance office promises (and its connector reaches back over), with half a
# day to spare; a payment posted later than that is for the `payments_held` check to find.
LATE_POSTING = (dt.timedelta(hours=2), POSTING_LAG - dt.timedelta(hours=12))
_PROMOTIONS = {"014": "013", "013": "012", "012": "011", "083": "082", "082": "081", "093": "092", "092": "091"}
_STATUS_MOVES = {"01": ("02", "03"), "02": ("05",), "05": ("02",), "13": ("01",), "03": ("03",)}


class ChangeOverlay:
    """Patches over the base world, as small as the number of changes applied."""

    def __init__(self, world: World) -> None:
        self.world = world
        self.lock = threading.Lock()
        self.log: list[Change] = []
        self.new_student_count = 0
        self.student_patches: dict[int, dict[str, object]] = {}
        self.staff_patches: dict[int, dict[str, object]] = {}
        self.bill_patches: dict[str, dict[str, object]] = {}
        self.extra_payments: dict[str, list[Payment]] = {}
        self.account_patches: dict[int, dict[str, object]] = {}
        self.transactions: list[CardTransaction] = []
        # Sorted: the academic API pages "every student but these" without listing the rest.
        self.deleted_students: list[int] = []
        self.fee_bills_version = 0
        # stream -> record index -> when it changed: lets a pager select "changed between
        # since and until" stably, however often a record changes while it is being paged.
        self.touched: dict[str, dict[int, list[dt.datetime]]] = {}
        self._last_at: dt.datetime | None = None

    # ------------------------------------------------------------------ reading
    @staticmethod
    def _patch(base, patches: dict[object, dict[str, object]], key: object):  # type: ignore[no-untyped-def]
        patch = patches.get(key)
        return dataclasses.replace(base, **patch) if patch else base

    def patch_student(self, base: Student) -> Student:
        return self._patch(base, self.student_patches, base.index)

    def patch_staff(self, base: Staff) -> Staff:
        return self._patch(base, self.staff_patches, base.index)

    def patch_bill(self, base: Bill) -> Bill:
        patch = self.bill_patches.get(base.bill_no)
        if not patch or "paid_fen" not in patch:
            return base
        return dataclasses.replace(base, paid_fen=patch["paid_fen"])

    def patch_card_account(self, base: CardAccount) -> CardAccount:
        patch = self.account_patches.get(base.index)
        if not patch:
            return base
        fields = {k: v for k, v in patch.items() if k != "balance_delta_fen"}
        return dataclasses.replace(
            base, balance_fen=base.balance_fen + int(patch.get("balance_delta_fen", 0)), **fields
        )

    def payments_for(self, bill_no: str) -> list[Payment]:
        return self.extra_payments.get(bill_no, [])

    def bill_updated_at(self, bill_no: str) -> dt.datetime | None:
        patch = self.bill_patches.get(bill_no)
        return patch["updated_at"] if patch else None  # type: ignore[return-value]

    def is_deleted_student(self, index: int) -> bool:
        position = bisect_left(self.deleted_students, index)
        return position < len(self.deleted_students) and self.deleted_students[position] == index

    def changed_keys(self, stream: str, since: dt.datetime | None = None) -> set[str]:
        """Ground truth: the keys of `stream` changed after `since` (all changes if None)."""
        return {c.key for c in self.log if c.stream == stream and (since is None or c.at > since)}

    # ------------------------------------------------------------------ writing
    def _tick(self) -> dt.datetime:
        """Now, but strictly after the snapshot and after every earlier change (by 1 µs)."""
        from campushub.simulators.world import CST, SNAPSHOT

        floor = max(SNAPSHOT, self._last_at or SNAPSHOT) + dt.timedelta(microseconds=1)
        self._last_at = max(dt.datetime.now(CST), floor)
        return self._last_at

    def _record(
        self,
        at: dt.datetime,
        kind: str,
        system: str,
        stream: str,
        key: str,
        index: int | None = None,
        *,
        deleted: bool = False,
    ) -> None:
        self.log.append(Change(len(self.log) + 1, at, kind, system, stream, key, deleted))
        if index is not None:
            self.touched.setdefault(stream, {}).setdefault(index, []).append(at)

    def changed_between(self, stream: str, since: dt.datetime, until: dt.datetime | None) -> list[int]:
        """Indices of `stream` records changed in (since, until], in index order."""
        return sorted(
            index
            for index, times in self.touched.get(stream, {}).items()
            if any(since < at and (until is None or at <= until) for at in times)
        )

    def apply(self, count: int, seed: int | None = None, kinds: list[str] | None = None) -> list[Change]:
        """Apply `count` random changes; returns the log entries they produced."""
        rng = random.Random(seed if seed is not None else len(self.log) * 7919 + self.world.seed)
        handlers: dict[str, Callable[[random.Random, dt.datetime], None]] = {
            "new_student": self._new_student,
            "student_status": self._student_status,
            "student_phone": self._student_phone,
            "staff_phone": self._staff_phone,
            "staff_title": self._staff_title,
            "card_transactions": self._card_transactions,
            "bill_paid": self._bill_paid,
            "late_payment": self._late_payment,
            "card_lost": self._card_lost,
            "student_deleted": self._student_deleted,
            "student_restored": self._student_restored,
        }
        choices = kinds or list(CHANGE_KINDS)
        unknown = set(choices) - set(handlers)
        if unknown:
            raise ValueError(f"unknown change kinds: {sorted(unknown)}")
        weights = [{**CHANGE_KINDS, **ON_REQUEST_KINDS}[k] for k in choices]
        with self.lock:
            first = len(self.log)
            for _ in range(count):
                kind = rng.choices(choices, weights)[0]
                handlers[kind](rng, self._tick())
            # A burst is stamped 1 µs apart, a little ahead of the clock: wait until it is in
            # the past, so that a pull right after sees every change just applied.
            ahead = (self._last_at - dt.datetime.now(self._last_at.tzinfo)).total_seconds() if self._last_at else 0
            if ahead > 0:
                time.sleep(ahead)
            return self.log[first:]

    def _random_student(self, rng: random.Random) -> int:
        """A student academic affairs still has: a deleted record cannot be edited."""
        while True:
            index = rng.randrange(self.world.student_count)
            if not self.deleted_students or not self.is_deleted_student(index):
                return index

    def _new_student(self, rng: random.Random, at: dt.datetime) -> None:
        index = self.world.base_students + self.new_student_count
        self.new_student_count += 1
        self.student_patches[index] = {"updated_at": at}
        student = self.world.student(index)
        self._record(at, "new_student", "academic", "students", student.student_no, index)
        account = self.world.base_account_count + index - self.world.base_students
        self.account_patches[account] = {"updated_at": at}
        self._record(at, "new_student", "card", "card_accounts", self.world.card_no(account), account)
        self.fee_bills_version += 1
        for bill in self.world.bills_of(index):
            self.bill_patches[bill.bill_no] = {"updated_at": at}
            self._record(at, "new_student", "finance", "fee_bills", bill.bill_no)

    def _student_status(self, rng: random.Random, at: dt.datetime) -> None:
        index = self._random_student(rng)
        current = self.world.student(index).status
        self.student_patches.setdefault(index, {}).update(
            status=rng.choice(_STATUS_MOVES.get(current, ("01",))), updated_at=at
        )
        self._record(at, "student_status", "academic", "students", self.world.student_no(index), index)

    def _student_phone(self, rng: random.Random, at: dt.datetime) -> None:
        index = self._random_student(rng)
        phone = f"1{rng.choice('3456789')}{rng.randrange(10**9):09d}"
        self.student_patches.setdefault(index, {}).update(phone=phone, updated_at=at)
        self._record(at, "student_phone", "academic", "students", self.world.student_no(index), index)

    def _staff_phone(self, rng: random.Random, at: dt.datetime) -> None:
        index = rng.randrange(self.world.staff_count)
        phone = f"1{rng.choice('3456789')}{rng.randrange(10**9):09d}"
        self.staff_patches.setdefault(index, {}).update(phone=phone, updated_at=at)
        self._record(at, "staff_phone", "hr", "staff", self.world.staff_no(index), index)

    def _staff_title(self, rng: random.Random, at: dt.datetime) -> None:
        index = rng.randrange(self.world.staff_count)
        title = self.world.staff(index).title
        self.staff_patches.setdefault(index, {}).update(title=_PROMOTIONS.get(title, title or "013"), updated_at=at)
        self._record(at, "staff_title", "hr", "staff", self.world.staff_no(index), index)

    def _deletion(self, index: int, at: dt.datetime, kind: str, deleted: bool) -> None:
        """Log a student's record and each of its grades as gone (or back)."""
        student_no = self.world.student_no(index)
        self._record(at, kind, "academic", "students", student_no, deleted=deleted)
        for grade in self.world.grades_of(index):
            key = f"{grade.student_no}|{grade.course_code}|{grade.term}"
            self._record(at, kind, "academic", "grades", key, deleted=deleted)

    def _student_deleted(self, rng: random.Random, at: dt.datetime) -> None:
        if len(self.deleted_students) >= self.world.student_count:
            return  # nothing left to delete
        index = self._random_student(rng)
        insort(self.deleted_students, index)
        # Not `touched`: an updated-since pull never serves a deleted record; only a full pull
        # notices, by its absence. Finance and the card system keep their own records of the
        # student: the hub has to notice the inconsistency, the sources do not cascade.
        self._deletion(index, at, "student_deleted", deleted=True)

    def _student_restored(self, rng: random.Random, at: dt.datetime) -> None:
        if not self.deleted_students:
            return  # nothing to restore: the change is a no-op and logs nothing
        index = self.deleted_students.pop(rng.randrange(len(self.deleted_students)))
        # Putting the record back is an edit of it, so an incremental pull serves the student
        # again. Its grades return as they were, with their old update times: only a full
        # pull sees them come back.
        self.student_patches.setdefault(index, {}).update(updated_at=at)
        self.touched.setdefault("students", {}).setdefault(index, []).append(at)
        self._deletion(index, at, "student_restored", deleted=False)

    def _random_account(self, rng: random.Random) -> int:
        while True:
            account = rng.randrange(self.world.account_count)
            if self.world.account_exists(account):
                return account

    def _card_transactions(self, rng: random.Random, at: dt.datetime) -> None:
        from campushub.simulators import catalog
        from campushub.simulators.world import CardTransaction

        account = self._random_account(rng)
        balance = self.world.card_account(account).balance_fen
        card_no = self.world.card_no(account)
        delta = 0
        for _ in range(rng.randint(1, 3)):
            if balance + delta < 3000:
                amount, (code, name), kind = 10_000, ("T000", "自助充值机"), "充值"
            else:
                amount, (code, name), kind = -rng.randrange(600, 2500, 10), rng.choice(catalog.MERCHANTS), "消费"
            delta += amount
            seq = self.world.base_transaction_seq_end + len(self.transactions) + 1
            self.transactions.append(CardTransaction(seq, card_no, amount, balance + delta, kind, code, name, at))
            self._record(at, "card_transactions", "card", "card_transactions", str(seq))
        patch = self.account_patches.setdefault(account, {})
        patch.update(balance_delta_fen=int(patch.get("balance_delta_fen", 0)) + delta, updated_at=at)
        self._record(at, "card_transactions", "card", "card_accounts", card_no, account)

    def _card_lost(self, rng: random.Random, at: dt.datetime) -> None:
        account = self._random_account(rng)
        self.account_patches.setdefault(account, {}).update(status="挂失", updated_at=at)
        self._record(at, "card_lost", "card", "card_accounts", self.world.card_no(account), account)

    def _late_payment(self, rng: random.Random, at: dt.datetime) -> None:
        lag = rng.uniform(LATE_POSTING[0].total_seconds(), LATE_POSTING[1].total_seconds())
        self._bill_paid(rng, at, paid_at=at - dt.timedelta(seconds=round(lag)))

    def _bill_paid(self, rng: random.Random, at: dt.datetime, paid_at: dt.datetime | None = None) -> None:
        """An unpaid bill paid in full; recorded `at`, paid then too unless `paid_at` says earlier."""
        from campushub.simulators.world import Payment

        for _ in range(50):  # most students have paid; look for one who has not
            index = self._random_student(rng)
            unpaid = [b for b in self.world.bills_of(index) if b.paid_fen < b.amount_fen]
            if unpaid:
                break
        else:
            return self._card_transactions(rng, at)
        bill = unpaid[0]
        existing = self.world.base_payments_of(self.world.base_bills_of(index)[int(bill.bill_no[-2:])])
        existing += self.payments_for(bill.bill_no)
        payment = Payment(
            f"P{bill.bill_no[1:]}{len(existing) + 1}",
            bill.bill_no,
            bill.student_no,
            bill.amount_fen - bill.paid_fen,
            "银行卡" if paid_at else rng.choice(("微信", "支付宝", "银行卡")),
            paid_at or at,
        )
        self.extra_payments.setdefault(bill.bill_no, []).append(payment)
        self.bill_patches.setdefault(bill.bill_no, {}).update(paid_fen=bill.amount_fen, updated_at=at)
        self.fee_bills_version += 1
        kind = "late_payment" if paid_at else "bill_paid"
        self._record(at, kind, "finance", "payments", payment.payment_no)
        self._record(at, kind, "finance", "fee_bills", bill.bill_no)
