"""service hall: work orders, correction requests, notifications

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-27 03:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

payload = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")
big_id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
instant = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "work_order",
        sa.Column("id", big_id, autoincrement=True, nullable=False),
        sa.Column("public_id", sa.String(length=32), nullable=False),
        sa.Column("form_id", sa.String(length=64), nullable=False),
        sa.Column("subject_person_id", sa.Integer(), nullable=False),
        sa.Column("requester", sa.String(length=64), nullable=False),
        sa.Column("requester_role", sa.String(length=32), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("snapshot", payload, nullable=False),
        sa.Column("verification_code", sa.String(length=19), nullable=False),
        sa.Column("created_at", instant, nullable=False),
        sa.Column("updated_at", instant, nullable=False),
        sa.Column("updated_by", sa.String(length=64), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_work_order")),
        sa.UniqueConstraint("public_id", name=op.f("uq_work_order_public_id")),
        sa.UniqueConstraint("verification_code", name=op.f("uq_work_order_verification_code")),
    )
    op.create_index("ix_work_order_subject", "work_order", ["subject_person_id", "created_at"])
    op.create_table(
        "correction_request",
        sa.Column("id", big_id, autoincrement=True, nullable=False),
        sa.Column("work_order_id", sa.Integer(), nullable=False),
        sa.Column("subject_person_id", sa.Integer(), nullable=False),
        sa.Column("requester", sa.String(length=64), nullable=False),
        sa.Column("form_id", sa.String(length=64), nullable=False),
        sa.Column("field", sa.String(length=64), nullable=False),
        sa.Column("label", sa.String(length=64), nullable=False),
        sa.Column("source", sa.String(length=16), nullable=False),
        sa.Column("source_key", sa.String(length=64), nullable=True),
        sa.Column("owner", sa.String(length=64), nullable=False),
        sa.Column("current_value", sa.String(length=256), nullable=True),
        sa.Column("claimed_value", sa.String(length=256), nullable=True),
        sa.Column("note", sa.String(length=512), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("created_at", instant, nullable=False),
        sa.Column("decided_at", instant, nullable=True),
        sa.Column("decided_by", sa.String(length=64), nullable=True),
        sa.Column("response_note", sa.String(length=512), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_correction_request")),
    )
    op.create_index("ix_correction_request_status", "correction_request", ["owner", "status"])
    op.create_index(op.f("ix_correction_request_subject_person_id"), "correction_request", ["subject_person_id"])
    op.create_table(
        "notification",
        sa.Column("id", big_id, autoincrement=True, nullable=False),
        sa.Column("person_id", sa.Integer(), nullable=False),
        sa.Column("message", sa.String(length=256), nullable=False),
        sa.Column("link", sa.String(length=128), nullable=True),
        sa.Column("created_at", instant, nullable=False),
        sa.Column("read_at", instant, nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_notification")),
    )
    op.create_index("ix_notification_person", "notification", ["person_id", "read_at"])


def downgrade() -> None:
    op.drop_index("ix_notification_person", table_name="notification")
    op.drop_table("notification")
    op.drop_index(op.f("ix_correction_request_subject_person_id"), table_name="correction_request")
    op.drop_index("ix_correction_request_status", table_name="correction_request")
    op.drop_table("correction_request")
    op.drop_index("ix_work_order_subject", table_name="work_order")
    op.drop_table("work_order")
