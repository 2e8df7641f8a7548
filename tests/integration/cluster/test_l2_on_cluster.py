"""L2Tier and the plain hierarchy on a real local Valkey cluster (3 primaries + 3 replicas):
found from the server, nothing to configure; every value reads back as written; clear()
reaches every primary; coherent mode refuses a cluster with a typed error that says why."""

from __future__ import annotations

import secrets

import pytest
from redis.asyncio.cluster import RedisCluster

from sagemem.coherence.bus import CoherenceBus
from sagemem.errors import ConfigurationError
from sagemem.hierarchy import MemoryHierarchy
from sagemem.redis_topology import key_hash_slot
from sagemem.tiers.base import TierEntry
from sagemem.tiers.l1 import L1Tier
from sagemem.tiers.l2 import L2Tier
from sagemem.tiers.l3 import L3Tier
from tests.integration.cluster.conftest import LocalCluster
from tests.json_samples import TRICKY_VALUES, assert_same_json

pytestmark = pytest.mark.cluster

KEYS = 120


def _namespace() -> str:
    return f"l2c{secrets.token_hex(4)}"


async def test_l2_on_a_cluster_reads_back_every_value_from_keys_on_every_slot_owner(
    valkey_cluster: LocalCluster,
) -> None:
    """Through one node's URL, L2 finds the cluster, and keys spread over every primary read
    back equal to what was written, with their versions; deletes and exists too."""
    l2 = L2Tier(redis_url=valkey_cluster.url, namespace=_namespace())
    async with l2:
        assert l2.on_cluster
        keys = [f"k{i}" for i in range(KEYS)]
        slots = {key_hash_slot(l2.redis_key(key)) * 3 // 16384 for key in keys}
        assert slots == {0, 1, 2}  # the keys reach every third of the slot space
        for i, key in enumerate(keys):
            await l2.fill(key, TierEntry({"i": i, "key": key}, i + 1))
        for i, key in enumerate(keys):
            assert await l2.read(key) == TierEntry({"i": i, "key": key}, i + 1)
        for value in TRICKY_VALUES:
            await l2.write("tricky", value)
            entry = await l2.read("tricky")
            assert entry is not None
            assert_same_json(entry.value, value)
        assert await l2.exists("k0")
        assert await l2.delete("k0") is True
        assert await l2.read("k0") is None
        assert await l2.delete("k0") is False


async def test_clear_on_a_cluster_removes_the_namespace_on_every_primary_and_nothing_else(
    valkey_cluster: LocalCluster,
) -> None:
    """clear() empties its namespace on all three primaries; another namespace keeps its keys."""
    mine, other = (
        L2Tier(redis_url=valkey_cluster.url, namespace=_namespace()),
        L2Tier(redis_url=valkey_cluster.url, namespace=_namespace()),
    )
    async with mine, other:
        for i in range(KEYS):
            await mine.set(f"k{i}", i)
            await other.set(f"k{i}", i)
        await mine.clear()
        assert [await mine.read(f"k{i}") for i in range(KEYS)] == [None] * KEYS
        assert [await other.get(f"k{i}") for i in range(KEYS)] == list(range(KEYS))
        client = RedisCluster.from_url(valkey_cluster.url)
        try:
            left = [key async for key in client.scan_iter(match=f"sagemem:{mine.namespace}:*")]
        finally:
            await client.aclose()
        assert left == []


async def test_a_plain_hierarchy_runs_on_a_cluster(
    valkey_cluster: LocalCluster, postgres_dsn: str, pg_schema: str
) -> None:
    """MemoryHierarchy([L1, L2 on the cluster, L3]): a value written at the home is read
    through the tiers and promoted into the cluster's L2, equal to what was written."""
    namespace = _namespace()
    l2 = L2Tier(redis_url=valkey_cluster.url, namespace=namespace)
    l3 = L3Tier(postgres_dsn=postgres_dsn, namespace=namespace, schema=pg_schema)
    async with MemoryHierarchy([L1Tier(capacity=16), l2, l3], owns_tiers=True) as memory:
        version = await memory.set("belief", {"sky": "blue"}, tier_index=2)
        entry = await memory.read("belief")
        assert entry == TierEntry({"sky": "blue"}, version)
        assert await l2.read("belief") == TierEntry({"sky": "blue"}, version)


async def test_coherent_mode_refuses_a_cluster_with_a_configuration_error(
    valkey_cluster: LocalCluster,
) -> None:
    """The coherence bus, directory and scripts do not run on a cluster yet: connecting the
    bus to one raises ConfigurationError naming the cluster and the fix, and opens nothing."""
    bus = CoherenceBus(redis_url=valkey_cluster.url, namespace=_namespace())
    with pytest.raises(ConfigurationError, match="Cluster") as raised:
        await bus.connect()
    assert "single Redis" in str(raised.value)
    assert not bus.connected
    await bus.aclose()
