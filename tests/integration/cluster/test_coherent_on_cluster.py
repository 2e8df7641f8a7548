"""Coherent and strict mode on a real local Valkey cluster (3 primaries + 3 replicas): the
coherent L1's own integration tests run again here, unchanged, with the bus, directory, L2
and scripts on the cluster (a namespace's keys share one hash slot, so every protocol script
runs on the node serving it), plus what only a cluster has: the bus talks to the node that
serves the namespace's slot, and namespaces spread over the primaries."""

from __future__ import annotations

import asyncio
import secrets

import pytest

from sagemem.coherence.answers import FillKind
from sagemem.coherence.bus import CoherenceBus
from sagemem.coherence.directory import RedisDirectory
from sagemem.errors import ConfigurationError
from sagemem.redis_topology import key_hash_slot, namespace_node_url
from sagemem.tiers.l2 import L2Tier
from tests.integration.cluster.conftest import LocalCluster
from tests.integration.cluster.topology import cluster_nodes
from tests.integration.test_coherent_l1 import (  # re-run on the cluster by the fixtures below
    test_a_fill_racing_an_invalidation_is_returned_once_and_never_cached,
    test_a_forged_invalidation_cannot_stall_reads,
    test_a_late_fill_cannot_put_an_older_version_back_into_l2_after_an_eviction,
    test_an_owners_write_back_racing_a_recall_is_not_lost,
    test_compare_and_swap_commits_only_at_the_expected_version,
    test_concurrent_updates_lose_nothing,
    test_delete_is_a_committed_version_that_every_agent_sees,
    test_fill_data_older_than_an_invalidation_is_fetched_again,
    test_flush_and_close_write_owned_data_back,
    test_hierarchies_of_coherent_agents_share_l2_and_l3,
    test_l1_write_takes_ownership_and_a_reader_recalls_the_value,
    test_of_two_concurrent_deletes_exactly_one_removed_the_value,
    test_values_read_back_equal_from_l1_l2_and_the_home,
    test_write_through_invalidates_a_holder_and_the_next_read_refetches,
)

pytestmark = pytest.mark.cluster

__all__ = [
    "test_a_fill_racing_an_invalidation_is_returned_once_and_never_cached",
    "test_a_forged_invalidation_cannot_stall_reads",
    "test_a_late_fill_cannot_put_an_older_version_back_into_l2_after_an_eviction",
    "test_an_owners_write_back_racing_a_recall_is_not_lost",
    "test_compare_and_swap_commits_only_at_the_expected_version",
    "test_concurrent_updates_lose_nothing",
    "test_delete_is_a_committed_version_that_every_agent_sees",
    "test_fill_data_older_than_an_invalidation_is_fetched_again",
    "test_flush_and_close_write_owned_data_back",
    "test_hierarchies_of_coherent_agents_share_l2_and_l3",
    "test_l1_write_takes_ownership_and_a_reader_recalls_the_value",
    "test_of_two_concurrent_deletes_exactly_one_removed_the_value",
    "test_values_read_back_equal_from_l1_l2_and_the_home",
    "test_write_through_invalidates_a_holder_and_the_next_read_refetches",
]


@pytest.fixture
def redis_url(cluster_redis_url: str) -> str:
    """Here the Redis URL names a node of the cluster."""
    return cluster_redis_url


async def test_the_bus_talks_to_the_node_serving_the_namespaces_slot(
    valkey_cluster: LocalCluster,
) -> None:
    """Through any node's URL, the bus of each namespace finds the primary that serves the
    namespace's hash slot (as the nodes themselves say: `CLUSTER NODES`), for namespaces
    on every primary; every key of a namespace is in the namespace's slot."""
    nodes = [node for node in await cluster_nodes(valkey_cluster.url) if node.is_primary]
    assert len(nodes) == valkey_cluster.shape.primaries
    wanted: dict[int, list[str]] = {node.port: [] for node in nodes}
    while any(len(names) < 2 for names in wanted.values()):
        namespace = f"spread{secrets.token_hex(4)}"
        [owner] = [node for node in nodes if node.owns(key_hash_slot(namespace))]
        wanted[owner.port].append(namespace)
    for port, names in wanted.items():
        for namespace in names:
            bus = CoherenceBus(redis_url=valkey_cluster.url, namespace=namespace)
            async with bus:
                assert bus.statistics().cluster_node == f"127.0.0.1:{port}"
            l2_key = L2Tier(redis_url=valkey_cluster.url, namespace=namespace).redis_key("k")
            assert key_hash_slot(l2_key) == key_hash_slot(namespace)  # the namespace is the tag


async def test_a_strict_fill_waits_while_the_namespaces_directory_is_young(
    valkey_cluster: LocalCluster, namespace: str
) -> None:
    """On a cluster a namespace's directory is born on the node serving it at its first
    strict step: a strict fill then answers UNSETTLED (nothing registered, no lease) until
    the directory is older than the settle time it is given; a coherent fill never waits."""
    bus = CoherenceBus(redis_url=valkey_cluster.url, namespace=namespace)
    async with bus:
        directory = RedisDirectory(bus.client, namespace)
        young = await directory.fill("k", "a", strict=True, directory_settled_s=0.5)
        assert young.kind is FillKind.UNSETTLED
        assert await directory.holders("k") == ()
        assert (await directory.fill("k", "b", strict=False)).kind is FillKind.LEASED
        await asyncio.sleep(0.6)
        grown = await directory.fill("k", "a", strict=True, directory_settled_s=0.5)
        assert grown.kind is FillKind.LEASED
        assert await directory.holders("k") == ("a", "b")
        with pytest.raises(ConfigurationError):
            await directory.fill("k", "a", strict=True, directory_settled_s=-1.0)


async def test_namespace_node_url_names_the_node_the_bus_talks_to(
    valkey_cluster: LocalCluster, redis_url: str, namespace: str
) -> None:
    """`namespace_node_url` keeps the URL's credentials and points it at the primary serving
    the namespace (the bus's node); a bad namespace is a ConfigurationError."""
    url = await namespace_node_url(valkey_cluster.url, namespace)
    bus = CoherenceBus(redis_url=valkey_cluster.url, namespace=namespace)
    async with bus:
        assert url.endswith(f"@{bus.statistics().cluster_node}/0")
    assert url.split("@")[0] == valkey_cluster.url.split("@")[0]  # same credentials
    with pytest.raises(ConfigurationError):
        await namespace_node_url(valkey_cluster.url, "bad{tag}")
