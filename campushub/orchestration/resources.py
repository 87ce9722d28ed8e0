"""Dagster resources: one per source system wrapping its connector, and the database.

Secrets come from the environment through `EnvVar` (see `definitions.py`), so they never sit in
run configuration, logs or the UI.
"""

from __future__ import annotations

import datetime as dt
from functools import cache

from dagster import ConfigurableResource, InitResourceContext
from pydantic import PrivateAttr
from sqlalchemy import Engine

from campushub.connectors.academic import AcademicSource
from campushub.connectors.base import HttpSettings, HttpSource
from campushub.connectors.card import CardSource
from campushub.connectors.finance import POSTING_LAG, FinanceSource
from campushub.connectors.hr import HRSource
from campushub.models.engine import make_engine
from campushub.models.migrate import upgrade
from campushub.orchestration.collector import tune_for_bulk_work


class SourceResource(ConfigurableResource):
    base_url: str
    timeout: float = 30.0

    def http_settings(self) -> HttpSettings:
        return HttpSettings(base_url=self.base_url, timeout=self.timeout)

    def open(self) -> HttpSource:
        raise NotImplementedError


class AcademicAPI(SourceResource):
    api_key: str

    def open(self) -> AcademicSource:
        return AcademicSource(self.http_settings(), self.api_key)


class HRAPI(SourceResource):
    client_id: str
    client_secret: str

    def open(self) -> HRSource:
        return HRSource(self.http_settings(), self.client_id, self.client_secret)


class FinanceAPI(SourceResource):
    user: str
    password: str
    # How far back an incremental payments pull reaches for transfers recorded after the fact.
    posting_lag_hours: float = POSTING_LAG / dt.timedelta(hours=1)

    def open(self) -> FinanceSource:
        lag = dt.timedelta(hours=self.posting_lag_hours)
        return FinanceSource(self.http_settings(), self.user, self.password, posting_lag=lag)


class CardAPI(SourceResource):
    app_key: str
    app_secret: str

    def open(self) -> CardSource:
        return CardSource(self.http_settings(), self.app_key, self.app_secret)


@cache
def _engine(url: str) -> Engine:
    """One engine (and pool) per database per process, migrated to the latest schema once."""
    engine = make_engine(url)
    upgrade(engine)
    return engine


class DatabaseResource(ConfigurableResource):
    """The unified layer's database: SQLite by default, PostgreSQL in production."""

    url: str
    _engine: Engine | None = PrivateAttr(default=None)

    def setup_for_execution(self, context: InitResourceContext) -> None:
        # Every step that bulk-loads uses this resource: its first run tunes the process.
        tune_for_bulk_work()
        self._engine = _engine(self.url)

    @property
    def engine(self) -> Engine:
        return self._engine or _engine(self.url)
