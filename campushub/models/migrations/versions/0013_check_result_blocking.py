"""check_result: whether a failing verdict blocks, or only warns

Most checks block what depends on their asset when they fail; a few only warn (a grade naming a
student who waits in quarantine, a phone left out that only its source can correct) and hold
nothing back. The latest verdicts kept for the API did not say which was which, so the steward
desk showed a warning as a failure, and counted it with them. Verdicts already kept are of
blocking checks but for those two rules' (`source_keys`, `phones`), marked here as warnings.

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-06 22:05:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("check_result", schema=None) as batch_op:
        batch_op.add_column(sa.Column("blocking", sa.Boolean(), server_default=sa.true(), nullable=False))
    check_result = sa.table("check_result", sa.column("check_name", sa.String), sa.column("blocking", sa.Boolean))
    op.execute(
        check_result.update()
        .where(check_result.c.check_name.in_(["source_keys", "phones"]))
        .values(blocking=sa.false())
    )


def downgrade() -> None:
    with op.batch_alter_table("check_result", schema=None) as batch_op:
        batch_op.drop_column("blocking")
