"""row_count_acceptance: a steward's acceptance of a unified table's new size

The row-count check compared a table's live rows with its previous evaluation's, failed or not:
a source that lost 40% of its students failed the check once, and the run after compared with
the shrunk table and passed — the drop accepted without anyone deciding so. The check now holds
a table to its last passing evaluation until a data steward accepts the new size (the GraphQL
mutation `acceptRowCount`). Each acceptance is kept, with who made it, when and why: the newest,
when newer than the last pass, is the count the check compares with.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-06 21:30:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None

big_id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "row_count_acceptance",
        sa.Column("id", big_id, autoincrement=True, nullable=False),
        sa.Column("entity", sa.String(length=32), nullable=False),
        sa.Column("row_count", sa.Integer(), nullable=False),
        sa.Column("accepted_by", sa.String(length=64), nullable=False),
        sa.Column("accepted_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("reason", sa.String(length=256), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_row_count_acceptance")),
    )
    op.create_index("ix_row_count_acceptance_entity", "row_count_acceptance", ["entity", "accepted_at"])


def downgrade() -> None:
    op.drop_index("ix_row_count_acceptance_entity", table_name="row_count_acceptance")
    op.drop_table("row_count_acceptance")
