"""The GraphQL API over a unified layer built from the stand-ins, for the API tests.

`built_hub` materializes every unpartitioned asset (raw landing → unified → persons) through
Dagster against a fresh database, exactly as production loads it; `ApiServer` serves the API
on a free loopback port with uvicorn, and `Api` talks to it over HTTP with a role's token.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import uvicorn
from dagster import materialize
from sqlalchemy import Engine

from campushub.graphql.app import ApiSettings, create_app
from campushub.graphql.auth import Principal, mint_token
from campushub.graphql.demo import demo_users
from campushub.models.migrate import upgrade
from campushub.orchestration.assets.raw import RAW_ASSETS
from campushub.orchestration.assets.unified import UNIFIED_ASSETS, persons
from campushub.simulators.server import SimulatorCluster
from tests.databases import fresh_database
from tests.test_pipeline import resources_for, url_of


def build_unified_layer(cluster: SimulatorCluster, engine: Engine) -> None:
    upgrade(engine)
    result = materialize(
        [*RAW_ASSETS, *UNIFIED_ASSETS, persons], resources=resources_for(cluster, url_of(engine)), raise_on_error=True
    )
    assert result.success


class ApiServer:
    """The API app under uvicorn in a background thread, on a free loopback port."""

    def __init__(self, engine: Engine, settings: ApiSettings) -> None:
        self._socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._socket.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._socket.getsockname()[1]}/graphql"
        self.app = create_app(engine, settings)
        config = uvicorn.Config(self.app, log_level="warning", lifespan="off", access_log=False)
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=asyncio.run, args=(self._server.serve(sockets=[self._socket]),), name="api", daemon=True
        )

    def __enter__(self) -> ApiServer:
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if time.monotonic() > deadline:
                raise RuntimeError("the API did not start within 10 s")
            time.sleep(0.02)
        return self

    def __exit__(self, *_: object) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=10)
        self._socket.close()
        self.app.graphql.close()  # the connections its worker kept (the lifespan, off here, would)


@dataclass
class Api:
    """A client of the API signed in as one principal."""

    url: str
    principal: Principal | None
    client: httpx.Client = field(default_factory=lambda: httpx.Client(timeout=30))

    @property
    def token(self) -> str:
        assert self.principal is not None
        return mint_token(self.principal)

    def post(self, query: str, variables: dict[str, Any] | None = None, **headers: str) -> httpx.Response:
        sent = {"Content-Type": "application/json", **headers}
        if self.principal is not None and "Authorization" not in sent:
            sent["Authorization"] = f"Bearer {self.token}"
        return self.client.post(self.url, json={"query": query, "variables": variables}, headers=sent)

    def query(self, query: str, variables: dict[str, Any] | None = None) -> dict[str, Any]:
        """The whole answer (data and errors) of a query that must be a well-formed request."""
        response = self.post(query, variables)
        assert response.status_code == 200, response.text
        return response.json()


@dataclass
class ApiHub:
    engine: Engine
    url: str
    users: dict[str, Principal]
    cluster: SimulatorCluster

    def as_role(self, role: str) -> Api:
        return Api(self.url, self.users[role])

    def as_principal(self, principal: Principal | None) -> Api:
        return Api(self.url, principal)


@contextmanager
def api_hub(cluster: SimulatorCluster, kind: str, tmp_path: Path, *, development: bool = False) -> Iterator[ApiHub]:
    with fresh_database(kind, tmp_path) as engine:
        build_unified_layer(cluster, engine)
        with engine.connect() as connection:
            users = demo_users(connection)
        with ApiServer(engine, ApiSettings(development=development)) as server:
            yield ApiHub(engine, server.url, users, cluster)
