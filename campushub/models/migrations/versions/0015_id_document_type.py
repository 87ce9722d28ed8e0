"""person, source_identity: the kind of document an ID number belongs to

Until now every ID number had to be a resident identity number (GB 11643): a student from Hong
Kong, Macao or Taiwan registered with a travel permit, or a foreign student or member of staff
with a passport, was quarantined at each sync and never reached the service hall. Sources now
send the document type beside the number (JY/T 1001's 身份证件类型码) and both are kept:
`id_type`, one character. Every number stored before this revision passed the resident
identity number's rules, so the rows that hold one are type 1 (a person whose every source
record left keeps no number, and gets no type).

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-06 23:45:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None

TABLES = ("person", "source_identity")
RESIDENT_ID = "1"  # frozen here: the code of the resident identity card in JY/T 1001


def upgrade() -> None:
    for table in TABLES:
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.add_column(sa.Column("id_type", sa.String(length=1), nullable=True))
        op.execute(
            sa.text(f"UPDATE {table} SET id_type = :resident WHERE id_number_cipher IS NOT NULL").bindparams(
                resident=RESIDENT_ID
            )
        )


def downgrade() -> None:
    for table in TABLES:
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.drop_column("id_type")
