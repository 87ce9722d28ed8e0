"""The unified layer: one row per real-world thing, whatever systems it was found in.

Every entity keeps its natural key from its authoritative system (学号, 工号, card number, …),
the source's own last-modified time (`source_updated_at`), a hash of the normalised row (so a
re-sync that changes nothing writes nothing), and `deleted_at`, set by the nightly reconcile
when the source no longer has the record: deletions are marked, never silently dropped.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import BigInteger, Date, ForeignKey, Index, LargeBinary, String, Table, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from campushub.models.base import Base, BigId, utcnow


class Tracked:
    """Columns every unified entity carries."""

    row_hash: Mapped[str] = mapped_column(String(32))
    source_updated_at: Mapped[dt.datetime | None]
    # When the load that wrote the row began (one stamp a load). Indexed: a run's column checks
    # read the rows written since their last pass by it.
    loaded_at: Mapped[dt.datetime] = mapped_column(default=utcnow, onupdate=utcnow, index=True)
    deleted_at: Mapped[dt.datetime | None]


class OrgUnit(Tracked, Base):
    """The university, its colleges and offices. Colleges appear in academic affairs (YXDM) and
    in HR (its own department codes); both codes land on the same row."""

    __tablename__ = "org_unit"

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    code: Mapped[str] = mapped_column(String(16), unique=True)
    name: Mapped[str] = mapped_column(String(64))
    kind: Mapped[str] = mapped_column(String(16))  # university / college / office
    parent_id: Mapped[int | None] = mapped_column(ForeignKey("org_unit.id"))
    academic_code: Mapped[str | None] = mapped_column(String(16), unique=True)
    hr_code: Mapped[str | None] = mapped_column(String(16), unique=True)


class Major(Tracked, Base):
    __tablename__ = "major"

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    code: Mapped[str] = mapped_column(String(16), unique=True)
    name: Mapped[str] = mapped_column(String(64))
    college_id: Mapped[int | None] = mapped_column(ForeignKey("org_unit.id"))
    college_code: Mapped[str | None] = mapped_column(String(16))
    years: Mapped[int | None]


class ClassGroup(Tracked, Base):
    __tablename__ = "class_group"

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    code: Mapped[str] = mapped_column(String(16), unique=True)
    name: Mapped[str] = mapped_column(String(64))
    major_id: Mapped[int | None] = mapped_column(ForeignKey("major.id"))
    major_code: Mapped[str | None] = mapped_column(String(16))
    entry_year: Mapped[int | None]


class Person(Base):
    """The golden record: one per human being. Which source supplied each field, and as of
    when, is in `field_provenance`; the ID number is stored encrypted, with a keyed hash
    beside it for matching and look-up."""

    __tablename__ = "person"

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(64))
    sex: Mapped[str | None] = mapped_column(String(1))  # GB/T 2261.1
    birth_date: Mapped[dt.date | None] = mapped_column(Date)
    ethnicity: Mapped[str | None] = mapped_column(String(2))  # GB/T 3304
    political_status: Mapped[str | None] = mapped_column(String(2))  # GB/T 4762
    # The kind of document the ID number belongs to (JY/T 1001: 1 resident identity card,
    # 6-8 Hong Kong, Macao and Taiwan permits, 9 permanent residence card, A passport). It comes
    # with the number from the source whose number won: the two are one fact.
    id_type: Mapped[str | None] = mapped_column(String(1))
    id_number_cipher: Mapped[bytes | None] = mapped_column(LargeBinary)
    id_number_hash: Mapped[str | None] = mapped_column(String(64), unique=True)
    phone: Mapped[str | None] = mapped_column(String(20))
    email: Mapped[str | None] = mapped_column(String(128))
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(default=utcnow, onupdate=utcnow, index=True)  # as loaded_at


class SourceIdentity(Base):
    """A person as one source system knows them — the input of identity resolution.

    Academic affairs (per student), HR (per member of staff) and the card system (per card
    holder) each contribute one row; resolution links rows to a `person` (or, where they
    contradict each other, to the conflicts queue instead)."""

    __tablename__ = "source_identity"
    __table_args__ = (UniqueConstraint("source", "source_key"),)

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    source: Mapped[str] = mapped_column(String(16))
    source_key: Mapped[str] = mapped_column(String(20))  # 学号, 工号 or card number
    role: Mapped[str] = mapped_column(String(16))  # student / staff / cardholder
    link: Mapped[str | None] = mapped_column(String(32), index=True)  # a card's holder: "student:<学号>"
    name: Mapped[str] = mapped_column(String(64))
    sex: Mapped[str | None] = mapped_column(String(1))
    birth_date: Mapped[dt.date | None] = mapped_column(Date)
    ethnicity: Mapped[str | None] = mapped_column(String(2))
    political_status: Mapped[str | None] = mapped_column(String(2))
    id_type: Mapped[str | None] = mapped_column(String(1))  # as on `person`
    id_number_cipher: Mapped[bytes | None] = mapped_column(LargeBinary)
    id_number_hash: Mapped[str | None] = mapped_column(String(64), index=True)
    phone: Mapped[str | None] = mapped_column(String(20))
    # The phone as the source sent it when it is not a mainland mobile, and so left out of
    # `phone` (see `_phone` in unify.py): never a golden value, only what the persons' `phones`
    # warning shows a steward, so that the source gets corrected. Cut to this width when longer.
    phone_unusable: Mapped[str | None] = mapped_column(String(32))
    email: Mapped[str | None] = mapped_column(String(128))
    as_of: Mapped[dt.datetime | None]
    row_hash: Mapped[str] = mapped_column(String(32))
    resolved: Mapped[bool] = mapped_column(default=False)  # False: changed since last resolution
    person_id: Mapped[int | None] = mapped_column(ForeignKey("person.id"), index=True)


class Student(Tracked, Base):
    __tablename__ = "student"
    # A college's students in 学号 order: a department page reads its hundred rows off the index
    # instead of sorting the whole college for each page.
    __table_args__ = (Index("ix_student_college_student_no", "college_id", "student_no"),)

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    student_no: Mapped[str] = mapped_column(String(20), unique=True)
    person_id: Mapped[int | None] = mapped_column(ForeignKey("person.id"), index=True)
    college_id: Mapped[int | None] = mapped_column(ForeignKey("org_unit.id"))
    major_id: Mapped[int | None] = mapped_column(ForeignKey("major.id"))
    class_id: Mapped[int | None] = mapped_column(ForeignKey("class_group.id"))
    college_code: Mapped[str | None] = mapped_column(String(16))
    major_code: Mapped[str | None] = mapped_column(String(16))
    class_code: Mapped[str | None] = mapped_column(String(16))
    entry_date: Mapped[dt.date | None] = mapped_column(Date)
    education_level: Mapped[str | None] = mapped_column(String(2))  # GB/T 4658
    status: Mapped[str | None] = mapped_column(String(2))  # 学生当前状态码
    expected_graduation: Mapped[dt.date | None] = mapped_column(Date)
    email: Mapped[str | None] = mapped_column(String(128))


class Staff(Tracked, Base):
    __tablename__ = "staff"

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    staff_no: Mapped[str] = mapped_column(String(20), unique=True)
    person_id: Mapped[int | None] = mapped_column(ForeignKey("person.id"), index=True)
    department_id: Mapped[int | None] = mapped_column(ForeignKey("org_unit.id"))
    department_code: Mapped[str | None] = mapped_column(String(16))
    position_code: Mapped[str | None] = mapped_column(String(8))
    position_name: Mapped[str | None] = mapped_column(String(32))
    title_code: Mapped[str | None] = mapped_column(String(3))  # GB/T 8561
    hire_date: Mapped[dt.date | None] = mapped_column(Date)
    employment_status: Mapped[str | None] = mapped_column(String(8))
    salary_grade: Mapped[int | None]
    monthly_gross_fen: Mapped[int | None] = mapped_column(BigInteger)
    email: Mapped[str | None] = mapped_column(String(128))


class Course(Tracked, Base):
    __tablename__ = "course"

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    code: Mapped[str] = mapped_column(String(16), unique=True)
    name: Mapped[str] = mapped_column(String(64))
    credits: Mapped[float | None]
    college_code: Mapped[str | None] = mapped_column(String(16))


class Grade(Tracked, Base):
    __tablename__ = "grade"
    # Leads with student_no: it is the look-up by student too (no index of its own to write).
    __table_args__ = (UniqueConstraint("student_no", "course_code", "term"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    student_no: Mapped[str] = mapped_column(String(20))
    course_code: Mapped[str] = mapped_column(String(16))
    course_name: Mapped[str | None] = mapped_column(String(64))
    term: Mapped[str] = mapped_column(String(16))
    credits: Mapped[float | None]
    score: Mapped[int | None]  # numeric score, or the band's midpoint for graded-by-level courses
    grade_text: Mapped[str | None] = mapped_column(String(8))
    compulsory: Mapped[bool | None]
    resit: Mapped[bool | None]


class FeeBill(Tracked, Base):
    __tablename__ = "fee_bill"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    bill_no: Mapped[str] = mapped_column(String(20), unique=True)
    student_no: Mapped[str] = mapped_column(String(20), index=True)
    item_code: Mapped[str] = mapped_column(String(8))
    item_name: Mapped[str | None] = mapped_column(String(16))
    academic_year: Mapped[str | None] = mapped_column(String(9))
    amount_fen: Mapped[int] = mapped_column(BigInteger)
    paid_fen: Mapped[int] = mapped_column(BigInteger)
    status: Mapped[str | None] = mapped_column(String(8))
    issued_on: Mapped[dt.date | None] = mapped_column(Date)
    due_on: Mapped[dt.date | None] = mapped_column(Date)


class Payment(Tracked, Base):
    __tablename__ = "payment"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    payment_no: Mapped[str] = mapped_column(String(24), unique=True)
    bill_no: Mapped[str] = mapped_column(String(20), index=True)
    student_no: Mapped[str] = mapped_column(String(20), index=True)
    amount_fen: Mapped[int] = mapped_column(BigInteger)
    channel: Mapped[str | None] = mapped_column(String(8))
    paid_at: Mapped[dt.datetime | None]


class CardAccount(Tracked, Base):
    __tablename__ = "card_account"

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    card_no: Mapped[str] = mapped_column(String(16), unique=True)
    person_id: Mapped[int | None] = mapped_column(ForeignKey("person.id"), index=True)
    holder_kind: Mapped[str] = mapped_column(String(8))  # student / staff
    holder_no: Mapped[str] = mapped_column(String(20), index=True)
    status: Mapped[str] = mapped_column(String(4))  # 正常 / 挂失 / 冻结
    balance_fen: Mapped[int] = mapped_column(BigInteger)
    opened_on: Mapped[dt.date | None] = mapped_column(Date)


class CardTransaction(Base):
    """Immutable events: loaded once by sequence number, never updated."""

    __tablename__ = "card_transaction"
    __table_args__ = (Index("ix_card_transaction_card", "card_no", "seq"),)

    seq: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    card_no: Mapped[str] = mapped_column(String(16))
    amount_fen: Mapped[int] = mapped_column(BigInteger)
    balance_after_fen: Mapped[int] = mapped_column(BigInteger)
    kind: Mapped[str] = mapped_column(String(4))
    merchant_code: Mapped[str | None] = mapped_column(String(8))
    merchant_name: Mapped[str | None] = mapped_column(String(32))
    at: Mapped[dt.datetime]
    day: Mapped[dt.date] = mapped_column(Date, index=True)  # the daily partition it belongs to


class FieldProvenance(Base):
    """For every golden field: which system supplied the winning value, under which of its
    keys, and as of when."""

    __tablename__ = "field_provenance"

    entity: Mapped[str] = mapped_column(String(16), primary_key=True)
    entity_id: Mapped[int] = mapped_column(primary_key=True)
    field: Mapped[str] = mapped_column(String(32), primary_key=True)
    source: Mapped[str] = mapped_column(String(16))
    source_key: Mapped[str] = mapped_column(String(64))
    as_of: Mapped[dt.datetime | None]


class Conflict(Base):
    """Where sources disagree: about who someone is (identity conflicts, never merged silently:
    a steward resolves them), or about a field's value (recorded with the value that won and
    the survivorship rule that picked it)."""

    __tablename__ = "conflict"
    # Every prefill asks for the open conflicts about its person: by the person, or — for the
    # identity conflicts that name no person yet — by the ID number or card they dispute.
    __table_args__ = (
        UniqueConstraint("kind", "subject"),
        Index("ix_conflict_person_status", "person_id", "status"),
        Index("ix_conflict_subject_status", "subject", "status"),
    )

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    kind: Mapped[str] = mapped_column(String(32))
    subject: Mapped[str] = mapped_column(String(128))  # stable description, e.g. "card:200000018"
    person_id: Mapped[int | None] = mapped_column(ForeignKey("person.id"))
    details: Mapped[dict[str, Any]]
    status: Mapped[str] = mapped_column(String(16), default="open")  # open / resolved
    opened_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    resolved_at: Mapped[dt.datetime | None]
    resolved_by: Mapped[str | None] = mapped_column(String(64))
    resolution: Mapped[str | None] = mapped_column(String(256))


# Each source's person records: the role table that holds them, and the column of its key — the
# `source_key` of the record's `source_identity`.
ROLE_TABLES: dict[str, tuple[Table, str]] = {
    "academic": (Student.__table__, "student_no"),
    "hr": (Staff.__table__, "staff_no"),
    "card": (CardAccount.__table__, "card_no"),
}
