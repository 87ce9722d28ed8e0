"""raw landing: an index on (source, stream, id) for reads from a watermark

An incremental unify asks for a stream's records with an id above its watermark. With only
(source, stream, source_key) to go by, both databases walked the stream's whole landed
history to find the few new records: seconds per stream at the university profile.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-27 08:00:00
"""

from __future__ import annotations

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_raw_record_stream_id", "raw_record", ["source", "stream", "id"])


def downgrade() -> None:
    op.drop_index("ix_raw_record_stream_id", table_name="raw_record")
