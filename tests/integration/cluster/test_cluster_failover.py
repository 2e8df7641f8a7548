"""Killing a primary of a real local cluster (its own 3 + 3 cluster, not the session's): its
replica takes over its slots, writes the replica had acknowledged (WAIT) survive, redis-py's
cluster client resumes, and the recovery time is measured and printed (never asserted)."""

from __future__ import annotations

import asyncio
import os
import signal
import time
import uuid
from collections.abc import Awaitable, Callable

import pytest
import redis.asyncio as redis_asyncio
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import RedisError

from sagemem.redis_topology import key_hash_slot
from sagemem.services import ServerState
from tests.integration.cluster.conftest import (
    LocalCluster,
)
from tests.integration.cluster.topology import cluster_nodes, info_fields, url_with_port

pytestmark = pytest.mark.cluster

_RECOVERY_TIMEOUT_S = 30.0  # a bound on waiting, not a claim about speed
_POLL_S = 0.02
_KEYS_PER_VICTIM = 20


async def _eventually[T](what: str, attempt: Callable[[], Awaitable[T | None]]) -> T:
    """Poll `attempt` (the servers push nothing to await) until it returns a value or raises
    no Redis error; fail after `_RECOVERY_TIMEOUT_S`."""
    deadline = time.monotonic() + _RECOVERY_TIMEOUT_S
    last_error: BaseException | None = None
    while time.monotonic() < deadline:
        try:
            result = await attempt()
        except (RedisError, OSError) as error:
            last_error = error
        else:
            if result is not None:
                return result
        await asyncio.sleep(_POLL_S)
    raise AssertionError(f"{what} not within {_RECOVERY_TIMEOUT_S} s (last error: {last_error!r})")


async def test_a_killed_primary_is_replaced_by_its_replica_without_losing_acknowledged_writes(
    doomed_cluster: LocalCluster,
) -> None:
    """SIGKILL a primary: its replica becomes the primary of the same slots, every write the
    replica acknowledged before the kill reads back, the cluster client writes again, and
    `status()` shows the dead node as stale."""
    url = doomed_cluster.url
    nodes = await cluster_nodes(url)
    victim = next(node for node in nodes if node.is_primary and node.port != nodes[0].port)
    [heir] = [node for node in nodes if node.primary_id == victim.node_id]
    [victim_status] = [
        node
        for node in doomed_cluster.status().nodes
        if node.address == url_with_port(url, victim.port)
    ]
    assert victim_status.pid is not None
    prefix = f"t{uuid.uuid4().hex}"
    keys = [
        key
        for key in (f"{prefix}:k{index}" for index in range(2000))
        if victim.owns(key_hash_slot(key))
    ][:_KEYS_PER_VICTIM]
    assert len(keys) == _KEYS_PER_VICTIM

    direct = redis_asyncio.Redis.from_url(url_with_port(url, victim.port), decode_responses=True)
    try:
        for key in keys:
            await direct.set(key, f"value of {key}")
        acknowledged = await direct.execute_command("WAIT", 1, 5000)  # type: ignore[no-untyped-call]  # untyped in redis-py
    finally:
        await direct.aclose()
    assert acknowledged == 1

    cluster = RedisCluster.from_url(url, decode_responses=True)
    await cluster.initialize()
    try:
        killed_at = time.monotonic()
        os.kill(victim_status.pid, signal.SIGKILL)

        heir_url = url_with_port(url, heir.port)

        async def promoted() -> bool | None:
            info = await info_fields(heir_url, "INFO", "replication")
            return True if info.get("role") == "master" else None

        await _eventually("the replica's promotion", promoted)
        promoted_s = time.monotonic() - killed_at

        survivors = [url_with_port(url, node.port) for node in nodes if node.port != victim.port]

        async def all_ok() -> bool | None:
            states = [(await info_fields(s, "CLUSTER", "INFO"))["cluster_state"] for s in survivors]
            return True if set(states) == {"ok"} else None

        await _eventually("cluster_state:ok on every surviving node", all_ok)
        ok_s = time.monotonic() - killed_at

        async def written() -> bool | None:
            return True if await cluster.set(keys[0], "after the failover") else None

        await _eventually("a write through the cluster client", written)
        client_s = time.monotonic() - killed_at
        print(
            f"\nfailover of the primary on port {victim.port}: replica on port {heir.port} "
            f"promoted after {promoted_s:.2f} s, every survivor at cluster_state:ok after "
            f"{ok_s:.2f} s, RedisCluster client writing again after {client_s:.2f} s"
        )
        values = [await cluster.get(key) for key in keys[1:]]
        assert values == [f"value of {key}" for key in keys[1:]]
        assert await cluster.get(keys[0]) == "after the failover"
    finally:
        await cluster.aclose()

    after = await cluster_nodes(url_with_port(url, heir.port))
    [new_owner] = [node for node in after if node.node_id == heir.node_id]
    assert new_owner.is_primary
    assert new_owner.slot_ranges == victim.slot_ranges
    status = doomed_cluster.status()
    assert status.state is ServerState.STALE
    assert [node.state for node in status.nodes if node.pid == victim_status.pid] == [
        ServerState.STALE
    ]
    assert sum(node.state is ServerState.RUNNING for node in status.nodes) == 5
