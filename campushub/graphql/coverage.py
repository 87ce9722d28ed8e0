"""Form coverage over the whole population, counted in the database.

"How much of this form fills itself, for everyone who may use it" is the hub's headline figure
(data travels, people don't). Filling every person's form to count it would cost seconds per
form at 50,000 students; instead each prefill path declares here when it can be filled — an SQL
condition on the person — and one aggregate query per form counts them all.
`tests/test_api_prefill.py` checks the counts against prefill itself, person by person.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import ColumnElement, Connection, case, exists, func, literal, select

from campushub.graphql.forms import Form, Subject
from campushub.models.unified import CardAccount, FeeBill, Grade, Payment, Person, Staff, Student

PersonId = ColumnElement[Any]
Condition = Callable[[PersonId], ColumnElement[bool]]


def _person(column: str) -> Condition:
    return lambda person_id: exists().where(Person.id == person_id, getattr(Person, column).is_not(None))


def _student(*conditions: ColumnElement[bool]) -> Condition:
    return lambda person_id: exists().where(Student.person_id == person_id, Student.deleted_at.is_(None), *conditions)


def _staff(*conditions: ColumnElement[bool]) -> Condition:
    return lambda person_id: exists().where(Staff.person_id == person_id, Staff.deleted_at.is_(None), *conditions)


def _card(*conditions: ColumnElement[bool]) -> Condition:
    return lambda person_id: exists().where(
        CardAccount.person_id == person_id, CardAccount.deleted_at.is_(None), *conditions
    )


def _student_has(table: Any) -> Condition:
    """Fees and grades: found by the person's 学号."""
    return _student(exists().where(table.student_no == Student.student_no, table.deleted_at.is_(None)))


def _never(_: PersonId) -> ColumnElement[bool]:
    return literal(False)


# path -> when the hub can fill it for a person (kept in step with prefill.PATHS by a test)
FILLABLE: dict[str, Condition] = {
    **{f"person.{name}": _person(name) for name in ("name", "sex", "birth_date", "ethnicity", "political_status")},
    "person.phone": _person("phone"),
    "person.email": _person("email"),
    "person.id_number": _person("id_number_cipher"),
    "person.id_type": _person("id_type"),
    "student.student_no": _student(),
    "student.college": _student(Student.college_id.is_not(None)),
    "student.major": _student(Student.major_id.is_not(None)),
    "student.class": _student(Student.class_id.is_not(None)),
    "student.education_level": _student(Student.education_level.is_not(None)),
    "student.entry_date": _student(Student.entry_date.is_not(None)),
    "student.expected_graduation": _student(Student.expected_graduation.is_not(None)),
    "student.status": _student(Student.status.is_not(None)),
    "staff.staff_no": _staff(),
    "staff.department": _staff(Staff.department_id.is_not(None)),
    "staff.position": _staff(Staff.position_name.is_not(None)),
    "staff.title": _staff(Staff.title_code.is_not(None)),
    "staff.hire_date": _staff(Staff.hire_date.is_not(None)),
    "staff.employment_status": _staff(Staff.employment_status.is_not(None)),
    "staff.monthly_gross": _staff(Staff.monthly_gross_fen.is_not(None)),
    "card.card_no": _card(),
    "card.holder_no": _card(),
    "card.status": _card(),
    "card.balance": _card(),
    "card.refundable_balance": _card(),
    "card.returned": _never,
    **{f"fees.{name}": _student_has(FeeBill) for name in ("billed", "paid", "outstanding", "settled")},
    "fees.outstanding_items": _student_has(FeeBill),
    "fees.last_payment_at": _student_has(Payment),
    **{f"grades.{name}": _student_has(Grade) for name in ("courses", "credits", "average_score", "last_term")},
}

POPULATION: dict[Subject, Any] = {
    "student": select(Student.person_id).where(Student.deleted_at.is_(None), Student.person_id.is_not(None)),
    "staff": select(Staff.person_id).where(Staff.deleted_at.is_(None), Staff.person_id.is_not(None)),
    "cardholder": select(CardAccount.person_id).where(
        CardAccount.deleted_at.is_(None), CardAccount.person_id.is_not(None)
    ),
}


@dataclass(frozen=True, slots=True)
class Coverage:
    form_id: str
    population: int
    filled: Mapping[str, int]  # field -> people for whom the hub fills it

    @property
    def share(self) -> float:
        """The share of the form's fields the hub fills, over everyone who may use it."""
        cells = self.population * len(self.filled)
        return sum(self.filled.values()) / cells if cells else 0.0


def coverage(connection: Connection, form: Form) -> Coverage:
    people = POPULATION[form.subject].distinct().subquery("people")
    person_id = people.c.person_id
    counted = [
        func.coalesce(func.sum(case((FILLABLE[field.path](person_id), 1), else_=0)), 0) if field.path else literal(0)
        for field in form.fields
    ]
    row = connection.execute(select(func.count(), *counted).select_from(people)).one()
    population, *filled = row
    return Coverage(form.id, population, {field.name: int(n) for field, n in zip(form.fields, filled, strict=True)})
