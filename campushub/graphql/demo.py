"""The demo users: one real person from the unified layer for each role, so a development token
(`campushub token ROLE`) signs in as someone whose data the stand-ins created.

Which office each role works in is declared here once; the people are found in the data.
"""

from __future__ import annotations

from sqlalchemy import Connection, exists, select

from campushub.graphql.auth import Principal
from campushub.models.unified import CardAccount, FeeBill, OrgUnit, Person, Staff, Student

ACTIVE_STUDENT = "01"  # 在读
# role -> the office its demo user works in (None: a college)
OFFICES: dict[str, str | None] = {
    "staff": None,
    "college_officer": None,
    "academic_officer": "教务处",
    "card_officer": "后勤管理处",
    "finance_officer": "财务处",
    "librarian": "图书馆",
    "hr_officer": "人事处",
    "steward": "网络与信息中心",
}


def demo_student(connection: Connection) -> Principal | None:
    """An enrolled student with a card and bills: every student form fills for them."""
    query = (
        select(Student.student_no, Person.name, OrgUnit.code)
        .join(Person, Person.id == Student.person_id)
        .join(OrgUnit, OrgUnit.id == Student.college_id)
        .where(
            Student.deleted_at.is_(None),
            Student.status == ACTIVE_STUDENT,
            exists().where(CardAccount.person_id == Student.person_id, CardAccount.status == "正常"),
            exists().where(FeeBill.student_no == Student.student_no),
        )
        .order_by(Student.student_no)
        .limit(1)
    )
    row = connection.execute(query).first()
    return Principal(subject=row.student_no, role="student", name=row.name) if row else None


def demo_staff(connection: Connection, role: str, college_code: str | None) -> Principal | None:
    office = OFFICES[role]
    anywhere = (
        select(Staff.staff_no, Person.name, OrgUnit.code)
        .join(Person, Person.id == Staff.person_id)
        .join(OrgUnit, OrgUnit.id == Staff.department_id)
        .where(Staff.deleted_at.is_(None), Staff.employment_status == "在职")
        .order_by(Staff.staff_no)
        .limit(1)
    )
    if office is not None:
        query = anywhere.where(OrgUnit.name == office)
    elif role == "college_officer" and college_code:
        query = anywhere.where(OrgUnit.code == college_code)  # the demo student's college
    else:
        query = anywhere.where(OrgUnit.kind == "college")
    row = connection.execute(query).first()
    if row is None and office is not None:
        # A small world may have nobody in the office (no one works in 人事处 at 600 students):
        # then the first member of staff acts for it, so every role still has a demo user.
        office_code = connection.execute(select(OrgUnit.code).where(OrgUnit.name == office)).scalar()
        anyone = connection.execute(anywhere).first()
        if office_code is not None and anyone is not None:
            return Principal(subject=anyone.staff_no, role=role, org_unit=office_code, name=anyone.name)
    if row is None:
        return None
    return Principal(subject=row.staff_no, role=role, org_unit=row.code, name=row.name)


def demo_users(connection: Connection) -> dict[str, Principal]:
    users: dict[str, Principal] = {}
    student = demo_student(connection)
    college = None
    if student is not None:
        users["student"] = student
        college = connection.execute(
            select(OrgUnit.code)
            .join(Student, Student.college_id == OrgUnit.id)
            .where(Student.student_no == student.subject)
        ).scalar()
    for role in OFFICES:
        found = demo_staff(connection, role, college)
        if found is not None:
            users[role] = found
    return users
