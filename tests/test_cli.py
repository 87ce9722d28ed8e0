"""The command line: `campushub fetch` summarises a stream; bad input gets a clear error."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import httpx
import pytest

from campushub.cli import main
from campushub.simulators.server import SimulatorCluster


def test_fetch_prints_a_summary_with_cursor(
    simulators: SimulatorCluster, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("CAMPUSHUB_ACADEMIC_URL", simulators.urls["academic"])
    monkeypatch.setenv("CAMPUSHUB_ACADEMIC_API_KEY", "dev-academic-key")
    assert main(["fetch", "academic", "students"]) == 0
    line = capsys.readouterr().out
    assert line.startswith(f"academic/students: {simulators.world.student_count} records in 1 pages, 0 flagged")
    assert "cursor 2026-" in line


def test_fetch_without_configuration_names_the_missing_variable(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("CAMPUSHUB_HR_URL", raising=False)
    monkeypatch.chdir("/")  # no .env to fall back on
    assert main(["fetch", "hr", "staff"]) == 2
    assert "CAMPUSHUB_HR_URL is not set" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("knob", "message"),
    [
        ("bogus=1", "unknown fault knobs: ['bogus']"),
        ("error_rate=2", "error_rate is a rate between 0 and 1"),
        ("retry_after_as_date=maybe", "takes true or false"),
    ],
)
def test_bad_fault_knobs_are_refused_before_anything_starts(
    knob: str, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["simulate", "--free-ports", "--fault", knob]) == 2
    assert message in capsys.readouterr().err


def test_serve_with_workers_spreads_connections_and_stops_on_sigterm(tmp_path: Path) -> None:
    """Each worker accepts on its own SO_REUSEPORT socket: keep-alive connections opened in a
    burst reach both (uvicorn's shared socket had one worker take nearly all of them)."""
    port = _free_port()
    env = {
        **os.environ,
        "CAMPUSHUB_DATABASE_URL": f"sqlite:///{tmp_path / 'campushub.db'}",
        "CAMPUSHUB_DATA_DIR": str(tmp_path),
        "CAMPUSHUB_ENV": "production",
    }
    command = [sys.executable, "-m", "campushub.cli", "serve", "--port", str(port), "--workers", "2"]
    server = subprocess.Popen(command, env=env)
    try:
        deadline = time.monotonic() + 60
        while True:
            with contextlib.suppress(OSError):
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            assert server.poll() is None and time.monotonic() < deadline, "the API did not start"
            time.sleep(0.2)
        time.sleep(1.0)  # the second worker, too
        clients = [httpx.Client(base_url=f"http://127.0.0.1:{port}") for _ in range(16)]
        try:
            answered = [client.post("/graphql", json={"query": "{ me { subject } }"}) for client in clients]
            assert {response.status_code for response in answered} == {401}  # served, and no token
            accepted_by = Counter(_owner_of(client, port) for client in clients)
        finally:
            for client in clients:
                client.close()
        assert len(accepted_by) == 2, accepted_by  # both workers hold connections
    finally:
        server.send_signal(signal.SIGTERM)
        assert server.wait(timeout=30) == 0


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _owner_of(client: httpx.Client, port: int) -> int:
    """The pid of the server process holding the other end of the client's one connection."""
    import psutil

    (connection,) = client._transport._pool.connections  # type: ignore[attr-defined]
    local = connection._connection._network_stream.get_extra_info("socket").getsockname()  # type: ignore[union-attr]
    for process in psutil.process_iter():
        with contextlib.suppress(psutil.Error):
            for held in process.net_connections(kind="tcp"):
                if held.laddr and held.laddr.port == port and held.raddr and tuple(held.raddr) == tuple(local):
                    return int(process.pid)
    raise AssertionError(f"no server process holds the connection from {local}")
