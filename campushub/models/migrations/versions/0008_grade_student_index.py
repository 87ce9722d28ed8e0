"""grade: no index of its own on student_no

The unique key (student_no, course_code, term) leads with student_no, so it already serves
every look-up by student; the separate index only cost a write per grade (1.8 million at the
university profile).

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-27 22:00:00
"""

from __future__ import annotations

from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.drop_index("ix_grade_student_no", table_name="grade")


def downgrade() -> None:
    op.create_index("ix_grade_student_no", "grade", ["student_no"])
