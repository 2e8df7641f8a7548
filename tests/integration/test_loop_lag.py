"""The loop-lag diagnosis (`python -m benchmarks.loop_lag`) runs end to end on the real
servers and refuses a system that does not exist."""

from __future__ import annotations

import subprocess
import sys

import pytest

from benchmarks.loop_lag import main


def test_one_agent_per_system_reports_throughput_latency_cpu_and_lag() -> None:
    """A short run of two systems prints one line per system with every figure."""
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks.loop_lag",
            "--agents",
            "1",
            "--seconds",
            "0.3",
            "--systems",
            "sagemem-update,uncached-postgres",
        ],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    lines = [line for line in done.stdout.splitlines() if "ops/s" in line]
    assert [line.split()[0] for line in lines] == ["sagemem-update", "uncached-postgres"]
    for line in lines:
        for figure in ("read", "write", "CPU", "loop lag p50"):
            assert figure in line, line


def test_an_unknown_system_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    """A misspelt system exits 2 naming it and the choices, before anything starts."""
    with pytest.raises(SystemExit) as exit_info:
        main(["--systems", "sagemem-fast"])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    assert "sagemem-fast" in error
    assert "uncached-postgres" in error
