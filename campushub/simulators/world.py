"""The simulated university: every fact the four source systems hold, generated on demand.

Nothing is stored per record. Each student, member of staff, grade, bill, payment, card account
and card transaction is a pure function of the seed and its index, so a page of any stream at
any scale costs only the records on it. The only state is the overlay of applied changes
(see `changes.py`), which is as large as the number of changes, not the data set.

The world is the ground truth the tests measure the hub against: it knows which records of
which systems belong to one human being, and exactly what changed when.
"""

from __future__ import annotations

import datetime as dt
import random
from array import array
from bisect import bisect_right
from dataclasses import dataclass
from functools import cached_property

from campushub.reference.identity import RESIDENT_ID, make_id_number
from campushub.simulators import catalog

CST = dt.timezone(dt.timedelta(hours=8), "CST")
# The as-of time of the seeded data: every base record was last updated before it.
SNAPSHOT = dt.datetime(2026, 9, 1, 8, 0, tzinfo=CST)
TRANSACTIONS_START = dt.datetime(2026, 3, 1, 6, 0, tzinfo=CST)
CURRENT_ACADEMIC_YEAR = 2026
TRANSACTION_ROUNDS = 93  # card transactions per account in the base data
TRANSACTION_PERIOD = 10  # an account's spending repeats weekly-ish with this period

_MASK64 = (1 << 64) - 1


def mix(*parts: int) -> int:
    """A fast, well-spread 64-bit hash of integers (splitmix64 folded over the parts)."""
    state = 0x9E3779B97F4A7C15
    for part in parts:
        state = (state ^ (part & _MASK64)) * 0xBF58476D1CE4E5B9 & _MASK64
        state = (state ^ (state >> 31)) * 0x94D049BB133111EB & _MASK64
        state ^= state >> 29
    return state


# Identity documents other than the resident identity card (JY/T 1001 code, cumulative odds):
# Hong Kong, Macao and Taiwan students' travel permits, foreign students' passports and
# permanent residence cards; a few foreign members of staff.
_STUDENT_DOCUMENTS = (("6", 0.004), ("7", 0.006), ("8", 0.009), ("A", 0.016), ("9", 0.017))
_STAFF_DOCUMENTS = (("A", 0.005), ("9", 0.006))

# Tags keep the hash streams of different kinds of fact independent.
_LEVEL, _ENTRY, _MAJOR, _CLASS, _STATUS, _UPDATED, _PERSON, _STAFF, _BILL, _CARD, _TXN = range(1, 12)


@dataclass(frozen=True, slots=True)
class Person:
    """One human being, whatever systems they appear in."""

    key: str  # ground-truth identity, e.g. "S12" or "T7"; never served by any system
    name: str
    sex: str  # GB/T 2261.1
    birth: dt.date
    id_number: str
    ethnicity: str  # GB/T 3304
    political_status: str  # GB/T 4762
    phone: str
    id_type: str = RESIDENT_ID  # JY/T 1001's 身份证件类型码: whose number id_number is


@dataclass(frozen=True, slots=True)
class Student:
    index: int
    student_no: str  # 学号
    person: Person
    level: str  # GB/T 4658
    college: str
    major: str
    class_code: str
    entry_year: int
    status: str  # 学生当前状态码
    phone: str
    updated_at: dt.datetime


@dataclass(frozen=True, slots=True)
class Staff:
    index: int
    staff_no: str  # 工号
    person: Person
    name_in_hr: str  # usually the person's name; a typo in a few records
    department: str  # HR department code
    position: str
    title: str  # GB/T 8561, '' for none
    hire_date: dt.date
    employment_status: str  # 在职 / 退休 / 离职
    salary_grade: int
    monthly_gross_fen: int
    phone: str
    updated_at: dt.datetime


@dataclass(frozen=True, slots=True)
class Grade:
    student_no: str
    course_code: str
    course_name: str
    term: str  # 2024-2025-1
    credits: float
    score: int
    text_grade: str  # 五级制 for graded-by-level courses, '' otherwise
    compulsory: bool
    updated_at: dt.datetime


@dataclass(frozen=True, slots=True)
class Bill:
    bill_no: str
    student_no: str
    name_in_finance: str
    item_code: str
    item_name: str
    academic_year: int
    amount_fen: int
    paid_fen: int
    issued: dt.date
    due: dt.date


@dataclass(frozen=True, slots=True)
class Payment:
    payment_no: str
    bill_no: str
    student_no: str
    amount_fen: int
    channel: str
    paid_at: dt.datetime


@dataclass(frozen=True, slots=True)
class CardAccount:
    index: int
    card_no: str
    holder_kind: str  # "student" or "staff"
    holder_no: str  # 学号 or 工号
    holder: Person  # ground truth: who really holds the card
    name_on_card: str
    phone: str
    status: str  # 正常 / 挂失 / 冻结
    balance_fen: int
    opened: dt.date
    updated_at: dt.datetime


@dataclass(frozen=True, slots=True)
class CardTransaction:
    seq: int
    card_no: str
    amount_fen: int  # positive top-up, negative spend
    balance_after_fen: int
    kind: str  # 消费 / 充值
    merchant_code: str
    merchant_name: str
    at: dt.datetime


@dataclass(frozen=True, slots=True)
class Scale:
    """How big the university is; every other count follows from the number of students."""

    students: int = 5_000

    @property
    def staff(self) -> int:
        return max(20, round(self.students * 0.07))


_MAJORS: tuple[tuple[str, str, str], ...] = tuple(
    (college, major, name) for college, _, majors in catalog.COLLEGES for major, name in majors
)
_MAJOR_NAMES = {major: name for _, major, name in _MAJORS}
_CHANNELS = ("微信", "支付宝", "银行卡", "现金")
_TEXT_GRADES = ((90, "优秀"), (80, "良好"), (70, "中等"), (60, "及格"), (0, "不及格"))


def _text_grade(score: int) -> str:
    return next(label for floor, label in _TEXT_GRADES if score >= floor)


class World:
    """The seeded university. Base facts are pure functions; changes live in `self.changes`."""

    def __init__(self, seed: int = 2026, scale: Scale | None = None) -> None:
        from campushub.simulators.changes import ChangeOverlay

        self.seed = seed
        self.scale = scale or Scale()
        self.base_students = self.scale.students
        self.staff_count = self.scale.staff
        self.changes = ChangeOverlay(self)
        self._patterns: dict[int, tuple[int, tuple[int, ...], tuple[int, ...]]] = {}

    # ---------------------------------------------------------------- counts and layout
    @property
    def student_count(self) -> int:
        return self.base_students + self.changes.new_student_count

    @cached_property
    def classes_per_cohort(self) -> int:
        return max(1, self.base_students // (len(_MAJORS) * 4 * 35))

    @cached_property
    def dual_role_count(self) -> int:
        """Members of staff who are also enrolled (in-service doctoral students)."""
        by_staff = (self.staff_count - 7 + 39) // 40
        by_students = (self.base_students - 5 + 96) // 97
        return max(0, min(by_staff, by_students))

    def staff_index_of_dual_student(self, index: int) -> int | None:
        if index < self.base_students and index % 97 == 5 and index // 97 < self.dual_role_count:
            return index // 97 * 40 + 7
        return None

    def student_index_of_dual_staff(self, index: int) -> int | None:
        if index % 40 == 7 and index // 40 < self.dual_role_count:
            return index // 40 * 97 + 5
        return None

    # ---------------------------------------------------------------- cheap per-student facts
    def _h(self, tag: int, *parts: int) -> int:
        return mix(self.seed, tag, *parts)

    def level_of(self, index: int) -> str:
        if self.staff_index_of_dual_student(index) is not None:
            return "11"
        roll = self._h(_LEVEL, index) % 100
        return "20" if roll < 87 else "14" if roll < 97 else "11"

    def entry_year_of(self, index: int) -> int:
        if index >= self.base_students:
            return CURRENT_ACADEMIC_YEAR
        roll = self._h(_ENTRY, index)
        if self.level_of(index) == "14":
            return 2024 + roll % 2
        return 2022 + roll % 4

    def grades_count_of(self, index: int) -> int:
        completed_terms = (CURRENT_ACADEMIC_YEAR - self.entry_year_of(index)) * 2
        return completed_terms * (8 if self.level_of(index) == "20" else 4)

    def bills_count_of(self, index: int) -> int:
        return (CURRENT_ACADEMIC_YEAR - self.entry_year_of(index) + 1) * len(catalog.FEE_ITEMS)

    @cached_property
    def _grade_offsets(self) -> array:
        return self._offsets(self.grades_count_of)

    @cached_property
    def _bill_offsets(self) -> array:
        return self._offsets(self.bills_count_of)

    def _offsets(self, count_of) -> array:  # type: ignore[no-untyped-def]
        """Cumulative per-student counts, so record n maps to its student by bisection."""
        offsets = array("q", [0])
        total = 0
        for index in range(self.base_students):
            total += count_of(index)
            offsets.append(total)
        return offsets

    @property
    def grade_count(self) -> int:
        return self._grade_offsets[-1]  # new students have no grades yet

    @property
    def base_bill_count(self) -> int:
        return self._bill_offsets[-1]

    def grade_indices_of(self, index: int) -> range:
        """The positions of a student's grades in the grades stream (none for new students)."""
        if index >= self.base_students:
            return range(0)
        return range(self._grade_offsets[index], self._grade_offsets[index + 1])

    def locate_grade(self, n: int) -> tuple[int, int]:
        """The (student index, slot) of the n-th grade record."""
        student = bisect_right(self._grade_offsets, n) - 1
        return student, n - self._grade_offsets[student]

    # ---------------------------------------------------------------- people
    def _person(self, key: str, rng: random.Random, birth_from: int, birth_to: int) -> Person:
        sex = "1" if rng.random() < 0.52 else "2"
        ethnicity_roll = rng.random()
        if ethnicity_roll < 0.004:
            name = rng.choice(catalog.MINORITY_NAMES)
            ethnicity = "05"
        else:
            surname = rng.choice(catalog.COMPOUND_SURNAMES) if rng.random() < 0.01 else rng.choice(catalog.SURNAMES)
            given_pool = catalog.RARE_GBK_CHARS if rng.random() < 0.03 else catalog.GIVEN_CHARS
            given = rng.choice(given_pool) + (rng.choice(catalog.GIVEN_CHARS) if rng.random() < 0.7 else "")
            name = surname + given
            ethnicity = "01" if ethnicity_roll < 0.93 else rng.choice(("08", "13", "19", "22", "03", "11"))
        birth = dt.date(rng.randint(birth_from, birth_to), rng.randint(1, 12), rng.randint(1, 28))
        sequence = rng.randrange(0, 500) * 2 + (1 if sex == "1" else 0)
        id_number = make_id_number(rng.choice(catalog.AREA_CODES), birth, sequence)
        political = rng.choices(("03", "13", "01", "02"), weights=(70, 18, 9, 3))[0]
        phone = f"1{rng.choice('3456789')}{rng.randrange(10**9):09d}"
        id_type, id_number = self._identity_document(key, id_number)
        return Person(key, name, sex, birth, id_number, ethnicity, political, phone, id_type)

    def _identity_document(self, key: str, resident_number: str) -> tuple[str, str]:
        """Most people register with their resident identity card; students from Hong Kong,
        Macao and Taiwan with their travel permits, and from abroad with a passport or permanent
        residence card. Drawn on a stream of its own, so everything else about a person is the
        same whichever document they hold."""
        rng = random.Random(f"{self.seed}/document/{key}")
        roll = rng.random()
        odds = _STUDENT_DOCUMENTS if key.startswith("S") else _STAFF_DOCUMENTS
        document = next((document for document, below in odds if roll < below), RESIDENT_ID)
        if document == RESIDENT_ID:
            return RESIDENT_ID, resident_number
        digits = f"{rng.randrange(10**8):08d}"
        number = {
            "6": f"H{digits}",
            "7": f"M{digits}",
            "8": digits,
            "9": f"{rng.choice(catalog.COUNTRY_CODES)}{rng.randrange(10**12):012d}",
            "A": f"{rng.choice('EGKMPS')}{digits}",
        }[document]
        return document, number

    def student_person(self, index: int) -> Person:
        rng = random.Random(self._h(_PERSON, 0, index))
        staff = self.staff_index_of_dual_student(index)
        if staff is not None:
            return self._person(f"T{staff}", rng, 1990, 1998)
        entry = self.entry_year_of(index)
        age = {"20": 18, "14": 22, "11": 25}[self.level_of(index)]
        return self._person(f"S{index}", rng, entry - age - 1, entry - age)

    def staff_person(self, index: int) -> Person:
        student = self.student_index_of_dual_staff(index)
        if student is not None:
            return self.student_person(student)
        return self._person(f"T{index}", random.Random(self._h(_PERSON, 1, index)), 1965, 1998)

    # ---------------------------------------------------------------- academic affairs
    def student_no(self, index: int) -> str:
        college = _MAJORS[self._h(_MAJOR, index) % len(_MAJORS)][0]
        return f"{self.entry_year_of(index)}{college[1:]}{index:06d}"

    def student(self, index: int) -> Student:
        if not 0 <= index < self.student_count:
            raise IndexError(index)
        person = self.student_person(index)
        college, major, _ = _MAJORS[self._h(_MAJOR, index) % len(_MAJORS)]
        entry = self.entry_year_of(index)
        class_no = self._h(_CLASS, index) % self.classes_per_cohort + 1
        status_roll = self._h(_STATUS, index) % 1000
        status = "02" if status_roll < 10 else "03" if status_roll < 15 else "13" if status_roll < 17 else "01"
        updated = SNAPSHOT - dt.timedelta(seconds=self._h(_UPDATED, 0, index) % (200 * 86400) + 1)
        base = Student(
            index=index,
            student_no=self.student_no(index),
            person=person,
            level=self.level_of(index),
            college=college,
            major=major,
            class_code=f"{major[:6]}{entry % 100:02d}{class_no:02d}",
            entry_year=entry,
            status=status,
            phone=person.phone,
            updated_at=updated,
        )
        return self.changes.patch_student(base)

    def classes(self) -> list[tuple[str, str, str, int, str]]:
        """(class code, name, major code, entry year, level) of every class."""
        rows = []
        for _, major, name in _MAJORS:
            for year in range(2022, CURRENT_ACADEMIC_YEAR + 1):
                for class_no in range(1, self.classes_per_cohort + 1):
                    code = f"{major[:6]}{year % 100:02d}{class_no:02d}"
                    rows.append((code, f"{name}{year % 100:02d}-{class_no}班", major, year, "20"))
        return rows

    def courses(self) -> list[tuple[str, str, float, str]]:
        """(course code, name, credits, offering college code or '' for general education)."""
        rows = [(code, name, credits, "") for code, name, credits in catalog.GENERAL_COURSES]
        for college, _, _ in catalog.COLLEGES:
            subject = catalog.SUBJECT_OF_COLLEGE[college]
            for n, (stem, credits) in enumerate(catalog.COLLEGE_COURSE_STEMS, 1):
                rows.append((f"{college}{n:03d}", f"{subject}{stem}", credits, college))
        return rows

    @cached_property
    def _courses_by_college(self) -> dict[str, list[tuple[str, str, float, str]]]:
        by_college: dict[str, list[tuple[str, str, float, str]]] = {}
        for course in self.courses():
            by_college.setdefault(course[3], []).append(course)
        return by_college

    def grades_of(self, index: int, first_slot: int = 0, last_slot: int | None = None) -> list[Grade]:
        """A student's grades, one per slot: per completed term, general then college courses."""
        count = self.grades_count_of(index)
        last_slot = count if last_slot is None else min(last_slot, count)
        if first_slot >= last_slot:
            return []
        student_no = self.student_no(index)
        college = _MAJORS[self._h(_MAJOR, index) % len(_MAJORS)][0]
        entry = self.entry_year_of(index)
        per_term = 8 if self.level_of(index) == "20" else 4
        general, own = self._courses_by_college[""], self._courses_by_college[college]
        rng = random.Random(self._h(_UPDATED, 1, index))
        grades = []
        for slot in range(count):
            term_index, position = divmod(slot, per_term)
            # Draw for every slot so a slot's values never depend on which slots were asked for.
            score = max(0, min(100, round(rng.gauss(78, 10))))
            by_level = rng.random() < 0.1
            if not first_slot <= slot < last_slot:
                continue
            half = per_term // 2
            pool, pick = (
                (general, term_index * half + position)
                if position < half
                else (own, term_index * half + position - half)
            )
            code, name, credits, _ = pool[pick % len(pool)]
            year = entry + term_index // 2
            semester = term_index % 2 + 1
            term_end = dt.datetime(year + 1, 1 if semester == 1 else 7, 20, 9, tzinfo=CST)
            grades.append(
                Grade(
                    student_no=student_no,
                    course_code=code,
                    course_name=name,
                    term=f"{year}-{year + 1}-{semester}",
                    credits=credits,
                    score=score,
                    text_grade=_text_grade(score) if by_level else "",
                    compulsory=pool is general or position % 2 == 0,
                    updated_at=min(term_end, SNAPSHOT - dt.timedelta(seconds=1)),
                )
            )
        return grades

    # ---------------------------------------------------------------- HR
    def staff_no(self, index: int) -> str:
        hire_year = 1990 + self._h(_STAFF, 0, index) % 36
        if self.student_index_of_dual_staff(index) is not None:
            hire_year = 2018 + self._h(_STAFF, 0, index) % 8
        return f"{hire_year}{index:05d}"

    def hr_departments(self) -> list[tuple[str, str, str]]:
        """(HR department code, name, kind) — HR numbers colleges its own way."""
        rows = [(f"D{n:02d}", name, "college") for n, (_, name, _) in enumerate(catalog.COLLEGES, 1)]
        start = len(rows) + 1
        rows += [(f"D{n:02d}", name, "office") for n, name in enumerate(catalog.OFFICES, start)]
        return rows

    def staff(self, index: int) -> Staff:
        if not 0 <= index < self.staff_count:
            raise IndexError(index)
        person = self.staff_person(index)
        rng = random.Random(self._h(_STAFF, 1, index))
        staff_no = self.staff_no(index)
        departments = self.hr_departments()
        colleges = [d for d in departments if d[2] == "college"]
        offices = [d for d in departments if d[2] == "office"]
        dual = self.student_index_of_dual_staff(index)
        in_college = dual is not None or rng.random() < 0.72
        department = rng.choice(colleges if in_college else offices)
        if in_college:
            position = rng.choices(("P01", "P02", "P04"), weights=(75, 10, 15))[0]
        elif department[1] == "图书馆":
            position = "P05"
        else:
            position = rng.choices(("P03", "P06"), weights=(80, 20))[0]
        title = {
            "P01": rng.choices(("011", "012", "013", "014"), weights=(18, 32, 40, 10))[0],
            "P04": rng.choice(("081", "082", "083")),
            "P05": rng.choice(("091", "092", "093")),
        }.get(position, "")
        if dual is not None:
            title = "013"
        hire_year = int(staff_no[:4])
        salary_grade = min(65, max(1, (CURRENT_ACADEMIC_YEAR - hire_year) * 2 + rng.randint(1, 12)))
        monthly_gross = 600_000 + salary_grade * 18_000 + rng.randrange(0, 200_000, 100)
        status = rng.choices(("在职", "退休", "离职"), weights=(95, 3, 2))[0] if dual is None else "在职"
        name = person.name
        if dual is not None and index // 40 % 30 == 1 and len(name) >= 2:
            # A typo in one system: same ID number, different name. A steward must decide.
            name = name[:-1] + ("明" if name[-1] != "明" else "铭")
        phone = person.phone
        if dual is not None and rng.random() < 0.4:
            phone = f"1{rng.choice('3456789')}{rng.randrange(10**9):09d}"  # changed in HR only
        base = Staff(
            index=index,
            staff_no=staff_no,
            person=person,
            name_in_hr=name,
            department=department[0],
            position=position,
            title=title,
            hire_date=dt.date(hire_year, rng.choice((7, 9)), 1),
            employment_status=status,
            salary_grade=salary_grade,
            monthly_gross_fen=monthly_gross,
            phone=phone,
            updated_at=SNAPSHOT - dt.timedelta(seconds=self._h(_UPDATED, 2, index) % (300 * 86400) + 1),
        )
        return self.changes.patch_staff(base)

    # ---------------------------------------------------------------- finance
    def bill_no(self, index: int, slot: int) -> str:
        return f"B{index:07d}{slot:02d}"

    def bills_of(self, index: int) -> list[Bill]:
        return [self.changes.patch_bill(bill) for bill in self.base_bills_of(index)]

    def payments_of(self, index: int) -> list[Payment]:
        """Every payment against a student's bills, in payment-number order."""
        payments = []
        for bill in self.base_bills_of(index):
            payments += self.base_payments_of(bill)
            payments += self.changes.payments_for(bill.bill_no)
        return payments

    def base_bills_of(self, index: int) -> list[Bill]:
        student_no = self.student_no(index)
        person = self.student_person(index)
        entry = self.entry_year_of(index)
        level = self.level_of(index)
        rng = random.Random(self._h(_BILL, index))
        name = person.name
        roll = rng.random()
        if roll < 0.015:
            name = name + " "  # stray space typed at the counter
        elif roll < 0.025 and len(name) >= 2:
            name = name[0] + "\u3000" + name[1:]  # full-width space between surname and given name
        name = name.replace("·", "．") if rng.random() < 0.5 else name
        bills = []
        for slot in range(self.bills_count_of(index)):
            year = entry + slot // len(catalog.FEE_ITEMS)
            item_code, item_name = catalog.FEE_ITEMS[slot % len(catalog.FEE_ITEMS)]
            if item_code == "XF":
                amount = {"20": 520_000, "14": 800_000, "11": 1_000_000}[level] + rng.choice((0, 40_000, 160_000))
            else:
                amount = rng.choice((120_000, 150_000, 180_000))
            if index >= self.base_students:
                paid = 0  # a new student's bills: payments arrive later, as logged changes
            elif year < CURRENT_ACADEMIC_YEAR:
                paid = amount if rng.random() < 0.985 else amount // 2
            else:
                roll = rng.random()
                paid = amount if roll < 0.7 else amount // 2 if roll < 0.8 else 0
            bill = Bill(
                bill_no=self.bill_no(index, slot),
                student_no=student_no,
                name_in_finance=name,
                item_code=item_code,
                item_name=item_name,
                academic_year=year,
                amount_fen=amount,
                paid_fen=paid,
                issued=dt.date(year, 8, 15),
                due=dt.date(year, 9, 30),
            )
            bills.append(bill)
        return bills

    def base_payments_of(self, bill: Bill) -> list[Payment]:
        """Payments behind a base bill's paid amount: one, or two instalments."""
        base_paid_fen = bill.paid_fen
        if base_paid_fen == 0:
            return []
        rng = random.Random(self._h(_BILL, int(bill.bill_no[1:])))
        first = base_paid_fen if rng.random() < 0.85 or base_paid_fen < 2 else base_paid_fen // 2
        parts = [first] if first == base_paid_fen else [first, base_paid_fen - first]
        start = dt.datetime(bill.academic_year, 8, 20, 9, tzinfo=CST)
        payments = []
        for n, amount in enumerate(parts, 1):
            at = start + dt.timedelta(minutes=rng.randrange(0, 60 * 24 * 40))
            payments.append(
                Payment(
                    f"P{bill.bill_no[1:]}{n}",
                    bill.bill_no,
                    bill.student_no,
                    amount,
                    rng.choice(_CHANNELS),
                    min(at, SNAPSHOT - dt.timedelta(seconds=1)),
                )
            )
        return payments

    # ---------------------------------------------------------------- campus card
    @property
    def base_account_count(self) -> int:
        return self.base_students + self.staff_count

    @property
    def account_count(self) -> int:
        return self.base_account_count + self.changes.new_student_count

    def card_no(self, account: int) -> str:
        return str(200_000_001 + account)

    def account_of_card(self, card_no: str) -> int:
        return int(card_no) - 200_000_001

    def account_exists(self, account: int) -> bool:
        """Dual-role people carry one card, their staff card; their student slot has none."""
        if not 0 <= account < self.account_count:
            return False
        return account >= self.base_students or self.staff_index_of_dual_student(account) is None

    def _account_holder(self, account: int) -> tuple[str, str, Person, dt.date]:
        if account < self.base_students:
            entry = self.entry_year_of(account)
            return "student", self.student_no(account), self.student_person(account), dt.date(entry, 9, 1)
        if account < self.base_account_count:
            staff = account - self.base_students
            return "staff", self.staff_no(staff), self.staff_person(staff), dt.date(int(self.staff_no(staff)[:4]), 9, 1)
        student = self.base_students + account - self.base_account_count
        return "student", self.student_no(student), self.student_person(student), dt.date(CURRENT_ACADEMIC_YEAR, 9, 1)

    def _spending_pattern(self, account: int) -> tuple[int, tuple[int, ...], tuple[int, ...]]:
        """Opening balance, one period of amounts (spends, then a top-up that covers them), and
        the running sums of that period.

        A periodic pattern keeps every balance a closed-form function of the transaction's
        position, so any transaction can be generated alone and balances always reconcile.
        Patterns are a few integers per card, cached because every round visits every card.
        """
        cached = self._patterns.get(account)
        if cached is not None:
            return cached
        rng = random.Random(self._h(_CARD, 0, account))
        spends = [-rng.randrange(600, 2500, 10) for _ in range(TRANSACTION_PERIOD - 1)]
        pattern = (*spends, -sum(spends) + rng.randrange(0, 600, 100))
        running = tuple(sum(pattern[: n + 1]) for n in range(TRANSACTION_PERIOD))
        cached = (rng.randrange(5_000, 30_000, 100), pattern, running)
        self._patterns[account] = cached
        return cached

    def base_balance_after(self, account: int, round_no: int) -> int:
        opening, _, running = self._spending_pattern(account)
        full, position = divmod(round_no, TRANSACTION_PERIOD)
        return opening + full * running[-1] + running[position]

    def card_account(self, account: int) -> CardAccount:
        if not self.account_exists(account):
            raise IndexError(account)
        kind, holder_no, holder, opened = self._account_holder(account)
        rng = random.Random(self._h(_CARD, 1, account))
        name = holder.name
        if account % 20011 == 17 and account + 1 < self.base_students:
            # One card, two people: the name belongs to someone else. A steward must decide.
            name = self.student_person(account + 1).name
        elif rng.random() < 0.01:
            name = name + " "
        name = name.replace("·", "•")
        phone = holder.phone if rng.random() > 0.03 else f"1{rng.choice('3456789')}{rng.randrange(10**9):09d}"
        status = rng.choices(("正常", "挂失", "冻结"), weights=(985, 10, 5))[0]
        in_base = account < self.base_account_count
        balance = self.base_balance_after(account, TRANSACTION_ROUNDS - 1) if in_base else 0
        base = CardAccount(
            index=account,
            card_no=self.card_no(account),
            holder_kind=kind,
            holder_no=holder_no,
            holder=holder,
            name_on_card=name,
            phone=phone,
            status=status,
            balance_fen=balance,
            opened=opened,
            updated_at=SNAPSHOT - dt.timedelta(seconds=self._h(_UPDATED, 3, account) % (30 * 86400) + 1),
        )
        return self.changes.patch_card_account(base)

    @property
    def base_transaction_seq_end(self) -> int:
        """One past the highest sequence number of the base data."""
        return TRANSACTION_ROUNDS * self.base_account_count

    @cached_property
    def _seconds_per_transaction(self) -> int:
        """In millionths of a second, so timestamps stay integers and increase with seq."""
        span = (SNAPSHOT - TRANSACTIONS_START).total_seconds() - 3600
        return int(span * 1_000_000 / self.base_transaction_seq_end)

    def base_transaction(self, seq: int) -> CardTransaction | None:
        """The base transaction with this sequence number, or None for a gap (no such card)."""
        round_no, account = divmod(seq, self.base_account_count)
        if round_no >= TRANSACTION_ROUNDS or not self.account_exists(account):
            return None
        _, pattern, _ = self._spending_pattern(account)
        amount = pattern[round_no % TRANSACTION_PERIOD]
        at = TRANSACTIONS_START + dt.timedelta(seconds=seq * self._seconds_per_transaction // 1_000_000)
        if amount > 0:
            merchant_code, merchant_name, kind = "T000", "自助充值机", "充值"
        else:
            merchant_code, merchant_name = catalog.MERCHANTS[mix(self.seed, _TXN, seq) % len(catalog.MERCHANTS)]
            kind = "消费"
        return CardTransaction(
            seq=seq + 1,  # vendor sequence numbers start at 1
            card_no=self.card_no(account),
            amount_fen=amount,
            balance_after_fen=self.base_balance_after(account, round_no),
            kind=kind,
            merchant_code=merchant_code,
            merchant_name=merchant_name,
            at=at,
        )
