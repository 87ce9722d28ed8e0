"""raw landing: indexes ending in id, for reads from a watermark and a key's newest version

An incremental unify asks for a stream's records with an id above its watermark. With only
(source, stream, source_key) to go by, both databases walked the stream's whole landed
history to find the few new records: seconds per stream at the university profile. So
(source, stream, id) is added.

Raw landing asks, per page, for each key's newest version (ORDER BY id DESC LIMIT 1). Given
(source, stream, id) and no statistics yet (a first load fills the table in one transaction),
PostgreSQL would walk the stream backwards by id for every key; (source, stream, source_key,
id) answers it from the key's own entries, newest first, whatever the planner knows. For
the same reason a day's events are read through (source, stream, event_day, id): given a way
to read the stream in id order, PostgreSQL would otherwise walk all of it for every day.

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
    op.drop_index("ix_raw_record_key", table_name="raw_record")
    op.create_index("ix_raw_record_key", "raw_record", ["source", "stream", "source_key", "id"])
    op.drop_index("ix_raw_record_day", table_name="raw_record")
    op.create_index("ix_raw_record_day", "raw_record", ["source", "stream", "event_day", "id"])


def downgrade() -> None:
    op.drop_index("ix_raw_record_day", table_name="raw_record")
    op.create_index("ix_raw_record_day", "raw_record", ["source", "stream", "event_day"])
    op.drop_index("ix_raw_record_key", table_name="raw_record")
    op.create_index("ix_raw_record_key", "raw_record", ["source", "stream", "source_key"])
    op.drop_index("ix_raw_record_stream_id", table_name="raw_record")
