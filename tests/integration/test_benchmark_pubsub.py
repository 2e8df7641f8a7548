"""`benchmarks/pubsub.py` (classic against sharded pub/sub) runs end to end and reports every
number; on the session's single server nothing crosses a cluster bus. Nothing here judges a
time. `tests/integration/cluster/test_sharded_pubsub.py` runs it on the cluster."""

from __future__ import annotations

import json
import math
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from benchmarks.pubsub import main, measure

OPERATIONS = ("delivery", "first", "again")


def check_report(report: dict[str, object], iterations: int) -> None:
    """Every summary has `iterations` samples of positive latencies; every ratio is positive."""
    summaries = report["summaries"]
    assert isinstance(summaries, dict)
    assert set(summaries) == {f"{op} {f}" for op in OPERATIONS for f in ("classic", "sharded")}
    for name, summary in summaries.items():
        assert summary["samples"] == iterations, name
        for field in ("median_us", "p95_us", "p99_us"):
            assert math.isfinite(summary[field]), (name, field)
            assert summary[field] > 0, (name, field)
    ratios = report["median_ratio_sharded_to_classic"]
    assert isinstance(ratios, dict)
    assert set(ratios) == set(OPERATIONS)
    assert all(ratio > 0 for ratio in ratios.values())


async def test_the_pubsub_benchmark_reports_both_flavours(
    redis_url: str, postgres_dsn: str
) -> None:
    """On one server nothing crosses a cluster bus; on a cluster (the suite pointed at one) a
    classic message does, and a shard message less."""
    report = await measure(redis_url, postgres_dsn, 4)
    check_report(report, 4)
    traffic = report["cluster_messages_per_bus_message"]
    assert isinstance(traffic, dict)
    if report["topology"] == "single server":
        assert traffic == {"classic": 0.0, "sharded": 0.0}
    else:
        assert report["topology"] == "cluster"
        assert traffic["sharded"] < traffic["classic"]


def test_the_pubsub_benchmarks_command_line_writes_json_and_refuses_bad_counts(
    redis_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "pubsub.json"
    assert main(["--iterations", "2", "--json", str(out)]) == 0
    check_report(json.loads(out.read_text()), 2)
    printed = capsys.readouterr().out
    assert "median sharded / classic, delivery" in printed
    password = urlsplit(redis_url).password
    if password:  # the embedded server has one: the printed URL must not show it
        assert password not in printed
    with pytest.raises(SystemExit) as refused:
        main(["--iterations", "0"])
    assert refused.value.code == 2
