"""`benchmarks/miss.py` runs end to end: every timed miss is a real miss of its kind (the
benchmark checks the reader's fills: one from L2 per L2-hit key, one from the home per home
key, warm-up included), and every row is a positive number. Nothing here judges a time."""

from __future__ import annotations

import math

from benchmarks.miss import measure


async def test_the_miss_benchmark_times_real_misses_of_each_kind(
    redis_url: str, postgres_dsn: str
) -> None:
    result = await measure(redis_url, postgres_dsn, 5)
    assert result["reader_misses"] == 2 * (5 + 5)  # warm-up rounds use keys of their own
    rows = result["rows"]
    assert isinstance(rows, list)
    assert len(rows) == 4
    for summary, baseline in rows:
        assert summary["samples"] == 5
        assert math.isfinite(summary["median_us"])
        assert summary["median_us"] > 0
        if baseline is not None:
            assert baseline["name"] == "one SELECT (asyncpg, prepared)"
