"""raw landing: the key and watermark indexes hold only records, the day index only events

Events (card transactions, each with its day) are read by day and nothing else; every other
record is read by key and from a watermark, and has no day. Each of the three indexes held
every landed row all the same: at the university profile ten million event entries in the key
and watermark indexes and two and a half million empty-day entries in the day index, written
on every landing and never read. Partial indexes (`WHERE event_day IS NULL` / `IS NOT NULL`,
which both databases support) hold only the rows read through them: an event is written into
one index instead of three.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-27 19:40:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

_KEY = ["source", "stream", "source_key", "id"]
_STREAM = ["source", "stream", "id"]
_DAY = ["source", "stream", "event_day", "id"]


def _partial(condition: str, postgresql: str | None = None) -> dict[str, sa.TextClause]:
    return {"sqlite_where": sa.text(condition), "postgresql_where": sa.text(postgresql or condition)}


def upgrade() -> None:
    op.drop_index("ix_raw_record_key", table_name="raw_record")
    op.create_index("ix_raw_record_key", "raw_record", _KEY, **_partial("event_day IS NULL"))
    op.drop_index("ix_raw_record_stream_id", table_name="raw_record")
    # On PostgreSQL `id IS NOT NULL` (always true) keeps the index to reads that compare id: see landing.py.
    by_id = _partial("event_day IS NULL", postgresql="event_day IS NULL AND id IS NOT NULL")
    op.create_index("ix_raw_record_stream_id", "raw_record", _STREAM, **by_id)
    op.drop_index("ix_raw_record_day", table_name="raw_record")
    op.create_index("ix_raw_record_day", "raw_record", _DAY, **_partial("event_day IS NOT NULL"))


def downgrade() -> None:
    op.drop_index("ix_raw_record_day", table_name="raw_record")
    op.create_index("ix_raw_record_day", "raw_record", _DAY)
    op.drop_index("ix_raw_record_stream_id", table_name="raw_record")
    op.create_index("ix_raw_record_stream_id", "raw_record", _STREAM)
    op.drop_index("ix_raw_record_key", table_name="raw_record")
    op.create_index("ix_raw_record_key", "raw_record", _KEY)
