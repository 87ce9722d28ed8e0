"""Schema changes go through Alembic only: `campushub db upgrade` (or `upgrade()` in code)."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, text

MIGRATIONS = Path(__file__).parent / "migrations"


def alembic_config(engine: Engine | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    if engine is not None:
        config.set_main_option("sqlalchemy.url", engine.url.render_as_string(hide_password=False).replace("%", "%%"))
    return config


# Upgrades of one PostgreSQL database take turns: every process that opens it makes sure of the
# schema (runs started together, the API's workers), and two creating the same tables at once on
# a fresh database collide.
UPGRADE_LOCK = 0x63616D70  # "camp" in ASCII: a key of this project's own


def upgrade(engine: Engine, revision: str = "head") -> None:
    config = alembic_config(engine)
    with engine.begin() as connection:
        if connection.dialect.name == "postgresql":
            # Held to the end of the transaction; the next upgrader's statements then see this one's
            # work done (READ COMMITTED, the default: each statement sees what committed before it).
            connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": UPGRADE_LOCK})
        config.attributes["connection"] = connection
        command.upgrade(config, revision)
