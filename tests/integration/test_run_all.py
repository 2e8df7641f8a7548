"""`python -m benchmarks.run_all --quick` on the real servers: a smoke run of the harness.

Two workloads (95/5 reads and writes, and the counter's updates) on every system with two
agent processes: the run must exit 0, write `results.json`, `report.md` and the plots, and
account for what it did (every timed read one L1 hit or miss, every written key read back,
every message sent to a holder received).
Every read of every system is checked by the harness against the write that committed the
version it returned (a problem would make the run exit 1 and is asserted away here too).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks.agent_workloads import SYSTEMS
from benchmarks.run_all import BASELINE, main
from sagemem.services import ServiceEndpoints

WORKLOADS = ("read95-uniform", "counter")


def test_quick_run_measures_every_system_and_every_read_is_consistent(
    service_endpoints: ServiceEndpoints, tmp_path: Path
) -> None:
    """A quick run exits 0 with one cell per workload and system, consistent counters, no
    inconsistent read, no stale read in strict mode or without a cache, and its report."""
    out = tmp_path / "results"
    status = main(["--quick", "--workloads", ",".join(WORKLOADS), "--out", str(out)])
    assert status == 0
    results = json.loads((out / "results.json").read_text())
    cells = results["cells"]
    assert sorted((c["workload"], c["system"]) for c in cells) == sorted(
        (w, s) for w in WORKLOADS for s in SYSTEMS
    )
    for cell in cells:
        where = f"{cell['workload']} on {cell['system']}"
        assert cell["problems"] == [], where
        assert cell["ops"] > 0, where
        kinds = set(cell["latency_us"])
        if cell["workload"] == "counter":
            assert kinds == {"update"}, where
        else:
            assert "read" in kinds, where
            assert cell["reads"] > 0, where
        # every key written in the run is read once more by each of the 2 agents
        assert cell["final_reads"] == 2 * cell["keys_written"], where
        if cell["system"] in ("sagemem-strict", BASELINE):
            assert (cell["stale_reads"], cell["final_stale"]) == (0, 0), where
        if cell["system"] == BASELINE:
            assert cell["l1_hit_rate"] is None
            assert cell["redis_round_trips_per_op"] == 0
            assert cell["postgres_round_trips_per_op"] >= 1, where  # at least the SELECT
        elif cell["workload"] != "counter":  # a plain hierarchy's update reads the home
            assert cell["l1_hit_rate"] is not None, where
            assert 0 <= cell["l1_hit_rate"] <= 1, where
        if cell["system"].startswith("sagemem-"):
            # the messages relays sent to registered holders (and the recalls) all arrived,
            # unless a listener detected a loss (pub/sub is at most once), and none was dropped
            # by the agents' buses
            sent, delivered = cell["messages_to_holders"], cell["messages_delivered"]
            assert sent is not None, where
            assert sent > 0, where
            assert sent == delivered or (sent > delivered and cell["bus_losses"] > 0), (
                where,
                sent,
                delivered,
            )
            assert cell["bus_dropped"] == 0, where
        else:
            assert cell["messages_to_holders"] is None, where
        if cell["workload"] == "read95-uniform" and cell["system"] != BASELINE:
            # every timed read is accounted for by the cache as a hit or a miss, once
            assert cell["l1_lookups"] == cell["latency_us"]["read"]["count"], where
    summary = results["summary"]
    baseline = [e for e in summary if e["system"] == BASELINE]
    assert all(e["ratio_vs_baseline"]["median"] == 1.0 for e in baseline)
    report = (out / "report.md").read_text()
    assert "## Headline: 2 agents, 95/5, 100 uniform keys" in report
    for system in SYSTEMS:
        assert f"| {system} |" in report
    assert (out / "throughput.png").stat().st_size > 0
    assert (out / "latency.png").stat().st_size > 0


def test_a_redis_url_that_does_not_answer_fails_the_run_with_the_reason(
    service_endpoints: ServiceEndpoints,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Exit 1 naming the server and the fix, no traceback and no results written."""
    monkeypatch.setenv("SAGEMEM_REDIS_URL", "redis://127.0.0.1:1/0")
    monkeypatch.setenv("SAGEMEM_POSTGRES_DSN", service_endpoints.postgres_dsn)
    out = tmp_path / "results"
    assert main(["--quick", "--out", str(out)]) == 1
    message = capsys.readouterr().err
    assert "the Redis server at SAGEMEM_REDIS_URL" in message
    assert "Traceback" not in message
    assert not (out / "results.json").exists()
