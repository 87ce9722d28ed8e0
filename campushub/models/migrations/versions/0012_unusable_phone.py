"""source_identity: the phone as sent, when it is not a mainland mobile

A phone that is not a mainland mobile (a landline such as 0759-2383000, a number from abroad) is
left out of the unified layer, so that an optional field does not cost the person's record —
but nobody was told: raw landing alone kept it, a steward never saw that it was dropped, the
source was never corrected, and the service hall's forms showed the phone as missing. Each
source identity now keeps what was sent in that case (`phone_unusable`, cut to 32 characters),
and the persons' `phones` check warns of every live one. Nullable, and empty for every existing
identity: one whose record lands again is filled in then.

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-06 21:50:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("source_identity", schema=None) as batch_op:
        batch_op.add_column(sa.Column("phone_unusable", sa.String(length=32), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("source_identity", schema=None) as batch_op:
        batch_op.drop_column("phone_unusable")
