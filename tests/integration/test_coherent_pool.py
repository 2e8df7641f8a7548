"""An agent whose operations outnumber its bus's connections: the directory's scripts wait
for a connection (as the bus's own publishes do) instead of failing with redis-py's
"Too many connections"."""

from __future__ import annotations

import asyncio
import logging

import pytest

from sagemem.coherence.bus import CoherenceBus
from sagemem.tiers.l1_coherent import CoherentL1Tier
from tests.integration.coherent_cluster import Cluster

KEYS = 48


async def test_many_concurrent_misses_on_a_two_connection_bus_all_return_their_values(
    cluster: Cluster, redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """48 concurrent read misses (and the close that deregisters them) through a bus of two
    connections: every read returns the value written, nothing is retried or logged."""
    writer = await cluster.agent("writer")
    for i in range(KEYS):
        await writer.write_through(f"k{i}", {"i": i})
    bus = CoherenceBus(url=redis_url, namespace=cluster.bus.namespace, pool_size_max=2)
    await bus.connect()
    reader = CoherentL1Tier("reader", bus, home=cluster.home)
    try:
        await reader.start()
        with caplog.at_level(logging.INFO, logger="sagemem"):
            values = await asyncio.gather(*(reader.get(f"k{i}") for i in range(KEYS)))
            assert values == [{"i": i} for i in range(KEYS)]
            await reader.aclose()
        failures = [r.getMessage() for r in caplog.records if "failed" in r.getMessage()]
        assert failures == []
        assert reader.statistics().io_retries == 0
    finally:
        await reader.aclose()
        await bus.aclose()
