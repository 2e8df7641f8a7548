"""`benchmarks/coherence.py` runs end to end on the session's servers and reports every number.

Nothing here judges a time: the test checks that each measurement exists and is a positive
number, so the benchmark keeps working as the library changes.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from benchmarks.coherence import main
from sagemem.services import ServiceEndpoints

LATENCY_OPERATIONS = {
    "OrderedDict LRU get (plain call)",
    "CoherentL1Tier.get hit, S (str value)",
    "CoherentL1Tier.get hit, M (str value)",
    "CoherentL1Tier.get hit, S (dict value, fresh copy)",
    "L1Tier.get hit (non-coherent, str value)",
    "redis-py PUBLISH -> PubSub receive (same bytes)",
    "invalidation delivery (HOME_COMMIT -> peer DELIVER_INVALIDATE)",
    "CoherenceBus.publish_invalidate -> handler (bus alone)",
    "CoherentL1Tier.write_through, 1 holder (end to end)",
    *(
        f"{mode}: {label}"
        for mode in ("coherent", "strict")
        for label in (
            "write_through, 1 holder",
            "reader's fill after a remote write_through",
            "set (take ownership from S), 1 holder",
            "reader's fill recalling the owner (M)",
        )
    ),
}


def _positive(value: object) -> bool:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    return math.isfinite(value) and value > 0


def test_benchmark_reports_every_measurement_as_a_positive_number(
    service_endpoints: ServiceEndpoints, tmp_path: Path
) -> None:
    """A tiny run writes JSON with every latency row, the delivery ratio and message counts."""
    out = tmp_path / "coherence.json"

    returned = main(
        ["--iterations", "3", "--hit-iterations", "40", "--writes", "2", "--json", str(out)]
    )

    data = json.loads(out.read_text())
    assert data == json.loads(json.dumps(returned))
    rows = data["latency"]
    reported = {row["operation"] for row in rows}
    assert LATENCY_OPERATIONS - reported == set()
    for row in rows:
        for field in ("samples", "median_us", "p95_us", "p99_us"):
            assert _positive(row[field]), (row["operation"], field, row[field])
        if row["baseline"] is not None:
            assert _positive(row["ratio"]), row
            assert _positive(row["baseline_median_us"]), row
    assert any(row["baseline"] is not None for row in rows)
    for measurement in ("invalidation_delivery", "invalidation_delivery_across_processes"):
        delivery = data[measurement]
        for field in ("median_us", "p95_us", "p99_us", "baseline_median_us", "ratio"):
            assert _positive(delivery[field]), (measurement, field, delivery[field])
    messages = data["messages_per_write"]
    assert (messages["agents"], messages["holders"], messages["writes"]) == (32, 2, 2)
    for field in (
        "published_by_writer_mean",
        "published_by_writer_max",
        "delivered_by_bus_mean",
        "delivered_by_bus_max",
        "received_by_agents_mean",
        "wire_messages_per_write",
        "broadcast_would_send",
    ):
        assert _positive(messages[field]), (field, messages[field])
    assert messages["recalls_per_write_mean"] >= 0
    assert data["hit_counters"]["hits"] > 0
    assert data["hit_counters"]["misses"] == 0
    assert [type(target["met"]) for target in data["targets"]] == [bool] * 4
    assert all(_positive(target["measured"]) for target in data["targets"])
