"""Grants on a real local Valkey cluster (3 primaries + 3 replicas): a grant's Redis user is
created on every node (a cluster does not share ACL users, and a replica promoted by a
failover must know them) and revoked from every node, and the coherent scope tests of
`test_scope_servers` run again here, unchanged, with the privileged and the restricted agents
on the cluster."""

from __future__ import annotations

import pytest
import redis.asyncio as aioredis

from sagemem.coherence.bus import CoherenceBus
from sagemem.grants import redis_username, revoke_grant
from tests.integration.cluster.conftest import LocalCluster
from tests.integration.test_scope_servers import (  # re-run on the cluster by the fixtures below
    TEAM_READER,
    Provision,
    admin_redis,
    coherent_hierarchy,
    provision,
    test_a_restricted_coherent_agent_runs_on_its_credentials_and_cannot_forge,
    test_a_restricted_writer_sends_updates_only_of_keys_it_may_write,
    test_scoped_views_of_a_coherent_hierarchy,
)

pytestmark = pytest.mark.cluster

__all__ = [
    "admin_redis",
    "coherent_hierarchy",
    "provision",
    "test_a_restricted_coherent_agent_runs_on_its_credentials_and_cannot_forge",
    "test_a_restricted_writer_sends_updates_only_of_keys_it_may_write",
    "test_scoped_views_of_a_coherent_hierarchy",
]


@pytest.fixture
def redis_url(cluster_redis_url: str) -> str:
    """Here the Redis URL names a node of the cluster."""
    return cluster_redis_url


async def _users_per_node(cluster: LocalCluster) -> list[set[str]]:
    found: list[set[str]] = []
    for url in cluster.node_urls():
        client = aioredis.Redis.from_url(url, decode_responses=True)
        try:
            found.append({str(user) for user in await client.acl_users()})
        finally:
            await client.aclose()
    return found


async def test_a_grants_user_is_on_every_node_and_revoked_from_every_node(
    valkey_cluster: LocalCluster,
    provision: Provision,
    namespace: str,
    postgres_dsn: str,
    pg_schema: str,
) -> None:
    """create_grant provisions the agent's Redis user on all six nodes, replicas included;
    its credentials reach the namespace's node through any node's URL; revoking it removes
    the user from every node."""
    username = redis_username(agent_id="a", namespace=namespace)
    credentials = await provision(TEAM_READER, "a")
    assert [username in users for users in await _users_per_node(valkey_cluster)] == [True] * 6
    bus = CoherenceBus(redis_url=credentials.redis_url, namespace=namespace)
    async with bus:  # on the grant's own credentials: the slot is found, the bus subscribes
        assert bus.on_cluster
        await bus.subscribe("a", _ignore)
    assert await revoke_grant(
        agent_id="a",
        namespace=namespace,
        redis_url=valkey_cluster.url,
        postgres_dsn=postgres_dsn,
        schema=pg_schema,
    )
    assert [username in users for users in await _users_per_node(valkey_cluster)] == [False] * 6


async def _ignore(event: object) -> None:
    del event
