"""Removing what a benchmark run left in Redis."""

from __future__ import annotations

import redis.asyncio as aioredis

from sagemem.redis_topology import namespace_node_url

__all__ = ["remove_namespace_keys"]


async def remove_namespace_keys(redis_url: str, namespace: str) -> None:
    """Unlink every key sagemem wrote for `namespace` (L2 copies, directory, bus counters), on
    the server holding them (on a cluster, the node serving the namespace's hash slot)."""
    client = aioredis.Redis.from_url(await namespace_node_url(redis_url, namespace))
    try:
        async for key in client.scan_iter(match=f"sagemem*:{{{namespace}}}:*", count=500):
            await client.unlink(key)
    finally:
        await client.aclose()
