"""unified layer: the write stamps indexed, for checks that validate what a run wrote

A sync run's column checks validate the rows written since their last passing evaluation
(`loaded_at`, and `updated_at` for the person master). Without an index each check read its
whole table to find none or a few: two seconds for the grades at the university profile.
The stamps grow with time, so the new entries are appended at the index's end.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-27 11:00:00
"""

from __future__ import annotations

from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

TRACKED = (
    "org_unit",
    "major",
    "class_group",
    "student",
    "staff",
    "course",
    "grade",
    "fee_bill",
    "payment",
    "card_account",
)


def upgrade() -> None:
    for table in TRACKED:
        op.create_index(f"ix_{table}_loaded_at", table, ["loaded_at"])
    op.create_index("ix_person_updated_at", "person", ["updated_at"])


def downgrade() -> None:
    op.drop_index("ix_person_updated_at", table_name="person")
    for table in TRACKED:
        op.drop_index(f"ix_{table}_loaded_at", table_name=table)
