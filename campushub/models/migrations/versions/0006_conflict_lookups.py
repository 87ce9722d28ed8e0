"""conflicts: indexed by person and by disputed subject

Every prefill asks for the open identity conflicts about its person: by `person_id`, and for
the conflicts that name no person yet, by the ID number or card they dispute (`subject`).
Neither had an index: SQLite scanned the conflicts and built a temporary index on each
request, PostgreSQL scanned them — per request, in proportion to the conflicts ever raised.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-27 11:10:00
"""

from __future__ import annotations

from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_conflict_person_status", "conflict", ["person_id", "status"])
    op.create_index("ix_conflict_subject_status", "conflict", ["subject", "status"])


def downgrade() -> None:
    op.drop_index("ix_conflict_subject_status", table_name="conflict")
    op.drop_index("ix_conflict_person_status", table_name="conflict")
