"""source_identity: the unusable phones of identities loaded before 0012, read back from raw landing

Migration 0012 began keeping, beside each source identity, a phone its source sent that is not a
mainland mobile — but only as records are unified again, and an unchanged record never is: an
identity loaded before it kept no such phone, and the persons' `phones` warning stayed silent
about every one of them. Here each identity still without a phone is given the one its newest
landed record carries, where that one is not a mainland mobile.

What a phone field is called, and when a phone is a mainland mobile, are copied here as they
stand at this revision (the mappers in `unify.py`, `normalize.phone`): a migration must do the
same thing whatever the code becomes. Nothing is done on downgrade: 0012's drops the column.

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-06 22:58:00
"""

from __future__ import annotations

import re
import unicodedata

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None

# (source, stream) whose records make source identities -> the payload field their phone comes in
PHONE_FIELDS = {
    ("academic", "students"): "SJHM",
    ("hr", "staff"): "mobile",
    ("card", "card_accounts"): "mobile",
}
KEPT_WIDTH = 32  # source_identity.phone_unusable
CHUNK = 1_000


def _mobile(value: str) -> bool:
    digits = re.sub(r"\D", "", unicodedata.normalize("NFKC", value))
    for country in ("00860", "0086", "860", "86"):
        if len(digits) == 11 + len(country) and digits.startswith(country):
            digits = digits[len(country) :]
    return len(digits) == 11 and digits.startswith("1")


def upgrade() -> None:
    raw = sa.table(
        "raw_record",
        sa.column("id", sa.BigInteger),
        sa.column("source", sa.String),
        sa.column("stream", sa.String),
        sa.column("source_key", sa.String),
        sa.column("payload", sa.JSON().with_variant(postgresql.JSONB(), "postgresql")),
        sa.column("event_day", sa.Date),
    )
    identity = sa.table(
        "source_identity",
        sa.column("id", sa.Integer),
        sa.column("source", sa.String),
        sa.column("source_key", sa.String),
        sa.column("phone", sa.String),
        sa.column("phone_unusable", sa.String),
    )
    connection = op.get_bind()
    for (source, stream), field in PHONE_FIELDS.items():
        newest = (
            sa.select(sa.func.max(raw.c.id).label("id"))
            .where(raw.c.source == source, raw.c.stream == stream, raw.c.event_day.is_(None))
            .group_by(raw.c.source_key)
            .subquery()
        )
        sent = connection.execute(
            sa.select(identity.c.id, raw.c.payload[field])
            .join_from(newest, raw, raw.c.id == newest.c.id)
            .join(identity, sa.and_(identity.c.source == source, identity.c.source_key == raw.c.source_key))
            .where(identity.c.phone.is_(None), identity.c.phone_unusable.is_(None))
        ).all()
        unusable = []
        for identity_id, phone in sent:
            text = "" if phone is None else str(phone).strip()
            if text and not _mobile(text):
                unusable.append({"identity_id": identity_id, "kept": text[:KEPT_WIDTH]})
        update = (
            identity.update()
            .where(identity.c.id == sa.bindparam("identity_id"))
            .values(phone_unusable=sa.bindparam("kept"))
        )
        for start in range(0, len(unusable), CHUNK):
            connection.execute(update, unusable[start : start + CHUNK])


def downgrade() -> None:
    pass
