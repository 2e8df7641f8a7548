"""Sharded pub/sub on the cluster: the coherent agents' buses use it by default (shard
subscriptions only, one anchor and three channels per key followed), a write's invalidation
reaches the holder through it, and a shard message stays on its slot's node and replica
while a classic one crosses the cluster bus to every node (the nodes' own counters, through
`benchmarks/pubsub.py`)."""

from __future__ import annotations

import pytest

from benchmarks.pubsub import measure
from sagemem.spec.vocabulary import L1State, MessageKind
from tests.integration.cluster.conftest import LocalCluster
from tests.integration.coherent_cluster import Cluster
from tests.integration.polling import poll_until
from tests.integration.test_benchmark_pubsub import check_report

pytestmark = pytest.mark.cluster


@pytest.fixture
def redis_url(cluster_redis_url: str) -> str:
    """Here the Redis URL names a node of the cluster."""
    return cluster_redis_url


async def test_coherent_agents_on_a_cluster_listen_on_shard_channels(cluster: Cluster) -> None:
    reader = await cluster.agent("reader")
    writer = await cluster.agent("writer")
    bus = cluster.bus
    assert bus.sharded
    assert bus.statistics().pubsub == "sharded"
    await writer.write_through("k", 1)
    assert await reader.get("k") == 1
    channel = bus.channel_for("reader", MessageKind.INVALIDATE, "k")
    subscribers = await cluster.redis.execute_command("PUBSUB", "SHARDNUMSUB", channel)  # type: ignore[no-untyped-call]  # untyped in redis-py
    assert subscribers == [channel.encode(), 1]
    assert await cluster.redis.execute_command("PUBSUB", "NUMPAT") == 0  # type: ignore[no-untyped-call]  # untyped in redis-py
    # Two agents on one bus: two anchors, and both followed k (reader to hold it, the writer
    # when its write-through's refetch or registration touched it, or not at all).
    followed = bus.statistics().followed_channels
    assert followed in (3, 6)
    [entry] = [
        client
        for client in await cluster.redis.client_list()
        if client.get("name") == f"sagemem-bus-{bus.namespace}"
    ]
    assert (entry["psub"], entry["ssub"]) == ("0", str(2 + followed))

    await writer.write_through("k", 2)

    async def invalidated() -> bool:
        return reader.get_state("k") is L1State.I

    await poll_until(invalidated, "the reader's invalidation over sharded pub/sub")
    assert await reader.get("k") == 2
    assert bus.statistics().sequence_gaps == 0


async def test_a_shard_message_stays_on_its_slots_node_and_replica(
    valkey_cluster: LocalCluster, postgres_dsn: str
) -> None:
    report = await measure(valkey_cluster.url, postgres_dsn, 6)
    check_report(report, 6)
    assert report["topology"] == "cluster"
    traffic = report["cluster_messages_per_bus_message"]
    assert isinstance(traffic, dict)
    # 6 nodes: a classic PUBLISH is sent to the 5 others, a shard message to the primary's
    # replica only (other cluster traffic in the window can only add to either).
    assert traffic["classic"] >= valkey_cluster.shape.primaries
    assert traffic["sharded"] < traffic["classic"]
