"""The command line: `campushub fetch` summarises a stream; bad input gets a clear error."""

from __future__ import annotations

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
