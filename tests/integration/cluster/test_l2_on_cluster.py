"""L2Tier and the plain hierarchy on a real local Valkey cluster (3 primaries + 3 replicas):
found from the server, nothing to configure; every value reads back as written; clear()
reaches every primary a namespace lives on (one: the namespace is its keys' hash tag) and no
other namespace."""

from __future__ import annotations

import secrets

import pytest
from redis.asyncio.cluster import RedisCluster

from sagemem.hierarchy import MemoryHierarchy
from sagemem.redis_topology import key_hash_slot
from sagemem.tiers.base import TierEntry
from sagemem.tiers.l1 import L1Tier
from sagemem.tiers.l2 import L2Tier
from sagemem.tiers.l3 import L3Tier
from tests.integration.cluster.conftest import LocalCluster
from tests.integration.cluster.topology import cluster_nodes
from tests.json_samples import TRICKY_VALUES, assert_same_json

pytestmark = pytest.mark.cluster

KEYS = 120


def _namespace() -> str:
    return f"l2c{secrets.token_hex(4)}"


async def test_l2_on_a_cluster_reads_back_every_value_from_namespaces_on_every_primary(
    valkey_cluster: LocalCluster,
) -> None:
    """Through one node's URL, L2 finds the cluster; a namespace's keys share its hash slot,
    and namespaces spread over every primary; every value reads back equal to what was
    written, with its version; deletes and exists too."""
    by_third: dict[int, str] = {}  # four namespaces in each third of the slot space
    while len(by_third) < 12:
        name = _namespace()
        third = key_hash_slot(name) * 3 // 16384
        if sum(1 for t in by_third.values() if key_hash_slot(t) * 3 // 16384 == third) < 4:
            by_third[len(by_third)] = name
    tiers = [L2Tier(redis_url=valkey_cluster.url, namespace=name) for name in by_third.values()]
    keys = [f"k{i}" for i in range(KEYS // len(tiers))]
    primaries = [node for node in await cluster_nodes(valkey_cluster.url) if node.is_primary]
    served_by: set[int] = set()
    for l2 in tiers:
        async with l2:
            assert l2.on_cluster
            slots = {key_hash_slot(l2.redis_key(key)) for key in keys}
            assert slots == {key_hash_slot(l2.namespace)}  # the namespace is the hash tag
            served_by |= {node.port for node in primaries if node.owns(key_hash_slot(l2.namespace))}
            for i, key in enumerate(keys):
                await l2.fill(key, TierEntry({"i": i, "key": key}, i + 1))
            for i, key in enumerate(keys):
                assert await l2.read(key) == TierEntry({"i": i, "key": key}, i + 1)
    assert served_by == {node.port for node in primaries}  # as the nodes say: every primary
    l2 = tiers[0]
    async with L2Tier(redis_url=valkey_cluster.url, namespace=l2.namespace) as l2:
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
            pattern = mine.redis_key("*")
            left = [key async for key in client.scan_iter(match=pattern)]
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
