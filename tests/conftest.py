"""Shared fixtures: the stand-in systems on free loopback ports, and connectors pointed at them."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from campushub.connectors.base import HttpSettings, RetryPolicy
from campushub.simulators.server import SimulatorCluster
from campushub.simulators.settings import SimulatorSettings

SMALL = 600  # students; staff, grades, bills and transactions follow
# Quick retries, and many: with every fault knob on, 40% of attempts fail, and a sync of a few
# hundred requests must not give up on one page by bad luck (0.4**16 ≈ 4e-7 per request).
FAST_RETRY = RetryPolicy(attempts=16, base_delay=0.005, max_delay=0.05, total_time=30.0)


def start_cluster(students: int, **settings: object) -> SimulatorCluster:
    return SimulatorCluster(SimulatorSettings(seed=7, students=students, **settings), ports={}).start()  # type: ignore[arg-type]


@pytest.fixture(scope="session")
def simulators() -> Iterator[SimulatorCluster]:
    cluster = start_cluster(SMALL, hr_token_lifetime=2.0)
    yield cluster
    cluster.stop()


@pytest.fixture(scope="session")
def medium_simulators() -> Iterator[SimulatorCluster]:
    cluster = start_cluster(5_000)
    yield cluster
    cluster.stop()


@pytest.fixture(autouse=True)
def _calm_sources(request: pytest.FixtureRequest) -> Iterator[None]:
    """Every test starts and ends with all fault knobs off."""
    yield
    for name in ("simulators", "medium_simulators"):
        if name in request.fixturenames:
            request.getfixturevalue(name).reset_faults()


def http_settings(cluster: SimulatorCluster, source: str, **overrides: object) -> HttpSettings:
    values: dict[str, object] = {
        "base_url": cluster.urls[source],
        "retry": FAST_RETRY,
        "timeout": 10.0,
        "deadline": 30.0,
    }
    values.update(overrides)
    return HttpSettings(**values)  # type: ignore[arg-type]


def set_faults(cluster: SimulatorCluster, source: str, **knobs: object) -> None:
    """Turn fault knobs through the simulator's own admin API, as an operator would."""
    httpx.put(f"{cluster.urls[source]}/_admin/faults", json=knobs).raise_for_status()


def apply_changes(cluster: SimulatorCluster, count: int, seed: int, kinds: list[str] | None = None) -> list[dict]:
    body: dict[str, object] = {"count": count, "seed": seed}
    if kinds:
        body["kinds"] = kinds
    response = httpx.post(f"{cluster.urls['academic']}/_admin/changes", json=body)
    response.raise_for_status()
    return response.json()["changes"]


@pytest.fixture(scope="session", params=["sqlite", "postgresql"])
def hub_api(request: pytest.FixtureRequest, simulators: SimulatorCluster, tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """The GraphQL API over a unified layer built from the session's stand-ins, once per
    database kind for the whole session: tests that change data must leave it as they found it."""
    from tests.api_support import api_hub

    with api_hub(simulators, request.param, tmp_path_factory.mktemp(f"api-{request.param}")) as hub:
        yield hub
