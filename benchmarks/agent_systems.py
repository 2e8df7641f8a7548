"""The systems an agent process of `benchmarks.run_all` drives: sagemem and its baselines.

Each system gives one agent `read` (value and version), `write` (commits at the home, returns
the new version), `update` (read-modify-write with compare-and-swap, returns the committed
version and value) and `counters` (what the agent's cache did so far). All of them version
every key, so the harness can tell a stale read from a fresh one and check every value read
against the write that committed it:

- `sagemem-coherent` / `sagemem-strict`: `sagemem.connect(namespace, agent_id, mode)`;
  writes are `set(key, value, tier_index=2)` (committed at the home, other copies invalidated
  before it returns), like the baselines' writes;
- `sagemem-update`: coherent mode with `write_policy="update"`: a write-through sends its value
  to the agents holding the key, which keep hitting instead of refetching;
- `plain-hierarchy`: `MemoryHierarchy([L1Tier, L2Tier, L3Tier])` with no coherence: a write
  drops the writer's own copies only, so other agents keep reading what they cached;
- `uncached-postgres`: what LangGraph's Postgres store does, no cache at all: every read one
  `SELECT` by key, every write one upsert (asyncpg, one connection per agent, prepared
  statements), a version column so reads can be checked;
- `broadcast-invalidation`: an `L1Tier` per agent over an `L3Tier` home, and every write
  PUBLISHes (key, version) on one Redis channel every agent listens on (each drops an older
  copy); built here from public pieces, not from `sagemem.coherence`.

Benchmark code: nothing here may be imported by `sagemem`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Callable
from typing import Final, Protocol

import asyncpg
import redis.asyncio as aioredis

import sagemem
from benchmarks.agent_workloads import SYSTEMS, BenchmarkOptionError
from sagemem.errors import VersionConflict
from sagemem.hierarchy import MemoryHierarchy
from sagemem.tiers.base import TierEntry
from sagemem.tiers.l1 import L1Tier
from sagemem.tiers.l1_coherent import CoherentL1Tier
from sagemem.tiers.l2 import L2Tier
from sagemem.tiers.l3 import L3Tier
from sagemem.values import JSONValue

__all__ = ["AgentSystem", "open_system", "uncached_store_ddl"]

L1_CAPACITY: Final = 1024
UPDATE_ATTEMPTS: Final = 50
WAIT_S: Final = 30.0

type UpdateFn = Callable[[JSONValue], JSONValue]


class AgentSystem(Protocol):
    """What an agent process needs from a system under test."""

    async def read(self, key: str) -> TierEntry | None: ...

    async def write(self, key: str, value: JSONValue) -> int: ...

    async def update(self, key: str, fn: UpdateFn) -> tuple[int, JSONValue]: ...

    def counters(self) -> dict[str, int]: ...

    async def aclose(self) -> None: ...


class _HierarchyOperations:
    """Reads, writes at the home (`set(..., tier_index=2)`) and `update()` through a
    `MemoryHierarchy`: what the two hierarchy systems share."""

    _memory: MemoryHierarchy

    async def read(self, key: str) -> TierEntry | None:
        return await self._memory.read(key)

    async def write(self, key: str, value: JSONValue) -> int:
        version = await self._memory.set(key, value, tier_index=2)
        assert version is not None
        return version

    async def update(self, key: str, fn: UpdateFn) -> tuple[int, JSONValue]:
        computed: list[JSONValue] = []

        def computing(current: JSONValue) -> JSONValue:
            computed[:] = [fn(current)]  # the last value computed is the one committed
            return computed[0]

        version = await self._memory.update(key, computing, attempts=UPDATE_ATTEMPTS)
        return version, computed[0]

    async def aclose(self) -> None:
        await self._memory.aclose()


class SagememSystem(_HierarchyOperations):
    """`sagemem.connect(namespace=..., agent_id=..., mode=...)`: the coherent hierarchy."""

    def __init__(self, memory: MemoryHierarchy) -> None:
        self._memory = memory
        l1 = memory.tiers[0]
        assert isinstance(l1, CoherentL1Tier)
        self._l1 = l1

    @classmethod
    async def open(
        cls,
        namespace: str,
        agent_id: str,
        mode: str,
        redis_url: str,
        postgres_dsn: str,
        *,
        write_policy: str = "invalidate",
    ) -> SagememSystem:
        memory = await sagemem.connect(
            namespace=namespace,
            agent_id=agent_id,
            mode=mode,
            redis_url=redis_url,
            postgres_dsn=postgres_dsn,
            l1_capacity=L1_CAPACITY,
            write_policy=write_policy,
        )
        return cls(memory)

    def counters(self) -> dict[str, int]:
        stats = self._l1.statistics()
        bus = self._l1.bus.statistics()
        return {
            "l1_hits": stats.hits,
            "l1_misses": stats.misses,
            "messages_received": stats.invalidations_received
            + stats.updates_received
            + stats.recalls_received,
            "messages_sent": stats.invalidations_sent
            + stats.updates_sent
            + stats.recalls_sent
            + stats.acks_sent,
            # one per holder a relay messaged, one per recall: what the agents must receive
            "messages_to_holders": stats.invalidations_sent
            + stats.updates_sent
            + stats.recalls_sent,
            "bus_losses": stats.disconnects,  # detected losses (sequence gaps, reconnects)
            "bus_dropped": bus.malformed_messages + bus.misaddressed_messages + bus.handler_errors,
        }


class PlainHierarchySystem(_HierarchyOperations):
    """`MemoryHierarchy([L1Tier, L2Tier, L3Tier])`: caches with no coherence at all."""

    def __init__(self, memory: MemoryHierarchy, l1: L1Tier) -> None:
        self._memory = memory
        self._l1 = l1

    @classmethod
    async def open(cls, namespace: str, redis_url: str, postgres_dsn: str) -> PlainHierarchySystem:
        l1 = L1Tier(capacity=L1_CAPACITY)
        memory = MemoryHierarchy(
            [
                l1,
                L2Tier(url=redis_url, namespace=namespace),
                L3Tier(dsn=postgres_dsn, namespace=namespace),
            ],
            owns_tiers=True,
        )
        await memory.connect()
        return cls(memory, l1)

    def counters(self) -> dict[str, int]:
        stats = self._l1.statistics()
        return {"l1_hits": stats.hits, "l1_misses": stats.misses}


def uncached_store_ddl(schema: str) -> list[str]:
    """The uncached store's table (LangGraph's `store` table shape plus a version column)."""
    return [
        f'CREATE SCHEMA IF NOT EXISTS "{schema}"',
        f'CREATE TABLE IF NOT EXISTS "{schema}".store (prefix text NOT NULL, key text NOT NULL, '
        "value jsonb NOT NULL, version bigint NOT NULL DEFAULT 1, "
        "created_at timestamptz NOT NULL DEFAULT now(), "
        "updated_at timestamptz NOT NULL DEFAULT now(), PRIMARY KEY (prefix, key))",
    ]


class UncachedPostgresSystem:
    """No cache: every read one `SELECT` by key, every write one upsert (asyncpg)."""

    def __init__(self, connection: asyncpg.Connection, schema: str, namespace: str) -> None:
        self._connection = connection
        self._prefix = namespace
        table = f'"{schema}".store'
        self._select = f"SELECT value::text, version FROM {table} WHERE prefix = $1 AND key = $2"
        self._upsert = (
            f"INSERT INTO {table} AS s (prefix, key, value) VALUES ($1, $2, $3::text::jsonb) "
            "ON CONFLICT (prefix, key) DO UPDATE SET value = excluded.value, "
            "version = s.version + 1, updated_at = now() RETURNING version"
        )
        self._swap = (
            f"UPDATE {table} SET value = $3::text::jsonb, version = version + 1, "
            "updated_at = now() WHERE prefix = $1 AND key = $2 AND version = $4 RETURNING version"
        )

    @classmethod
    async def open(cls, namespace: str, postgres_dsn: str, schema: str) -> UncachedPostgresSystem:
        connection = await asyncpg.connect(postgres_dsn, timeout=WAIT_S)
        return cls(connection, schema, namespace)

    async def read(self, key: str) -> TierEntry | None:
        row = await self._connection.fetchrow(self._select, self._prefix, key)
        if row is None:
            return None
        return TierEntry(json.loads(row[0]), row[1])

    async def write(self, key: str, value: JSONValue) -> int:
        version: int = await self._connection.fetchval(
            self._upsert, self._prefix, key, json.dumps(value)
        )
        return version

    async def update(self, key: str, fn: UpdateFn) -> tuple[int, JSONValue]:
        for _ in range(UPDATE_ATTEMPTS):
            entry = await self.read(key)
            if entry is None:
                raise LookupError(f"counter {key!r} was not stored before the run")
            new = fn(entry.value)
            version = await self._connection.fetchval(
                self._swap, self._prefix, key, json.dumps(new), entry.version
            )
            if version is not None:
                return int(version), new
        raise RuntimeError(f"{key!r}: {UPDATE_ATTEMPTS} compare-and-swaps lost in a row")

    def counters(self) -> dict[str, int]:
        return {}

    async def aclose(self) -> None:
        await self._connection.close(timeout=WAIT_S)


class BroadcastSystem:
    """An L1 per agent over an L3 home; every write is broadcast to every agent."""

    def __init__(
        self, l1: L1Tier, home: L3Tier, client: aioredis.Redis, channel: str, agent_id: str
    ) -> None:
        self._l1 = l1
        self._home = home
        self._client = client
        self._channel = channel
        self._agent_id = agent_id
        self._pubsub = client.pubsub()
        self._listener: asyncio.Task[None] | None = None
        self._newest: dict[str, int] = {}  # the highest version announced, per key
        self._received = 0
        self._sent = 0
        self._hits = 0
        self._misses = 0

    @classmethod
    async def open(
        cls, namespace: str, agent_id: str, redis_url: str, postgres_dsn: str
    ) -> BroadcastSystem:
        home = L3Tier(dsn=postgres_dsn, namespace=namespace)
        await home.connect()
        client = aioredis.Redis.from_url(redis_url)
        channel = f"bench-bcast:{namespace}"
        system = cls(L1Tier(capacity=L1_CAPACITY), home, client, channel, agent_id)
        await system._pubsub.subscribe(system._channel)
        async with asyncio.timeout(WAIT_S):
            while True:  # the confirmation: every message published from now on reaches us
                message = await system._pubsub.get_message(timeout=WAIT_S)
                if message is not None and message["type"] == "subscribe":
                    break
        system._listener = asyncio.create_task(system._listen(), name="bench-broadcast")
        return system

    async def _listen(self) -> None:
        async for message in self._pubsub.listen():
            if message["type"] != "message":
                continue
            key, version_text, sender = message["data"].decode().split("\t")
            if sender == self._agent_id:
                continue
            self._received += 1
            version = int(version_text)
            if version > self._newest.get(key, 0):
                self._newest[key] = version
            cached = await self._l1.read(key)
            if cached is not None and (cached.version or 0) < version:
                await self._l1.delete(key)

    async def read(self, key: str) -> TierEntry | None:
        entry = await self._l1.read(key)
        if entry is not None:
            self._hits += 1
            return entry
        self._misses += 1
        entry = await self._home.read(key)
        # A broadcast that arrived while the home answered announced a newer version: caching
        # this one would make it permanent.
        if entry is not None and (entry.version or 0) >= self._newest.get(key, 0):
            await self._l1.fill(key, entry)
        return entry

    async def _announce(self, key: str, value: JSONValue, version: int) -> None:
        if version >= self._newest.get(key, 0):
            await self._l1.fill(key, TierEntry(value, version))
        await self._client.publish(self._channel, f"{key}\t{version}\t{self._agent_id}")
        self._sent += 1

    async def write(self, key: str, value: JSONValue) -> int:
        version = await self._home.write(key, value)
        await self._announce(key, value, version)
        return version

    async def update(self, key: str, fn: UpdateFn) -> tuple[int, JSONValue]:
        entry = await self.read(key)
        for _ in range(UPDATE_ATTEMPTS):
            current = None if entry is None else entry.value
            new = fn(current)
            try:
                version = await self._home.compare_and_swap(
                    key, new, None if entry is None else entry.version
                )
            except VersionConflict:
                await self._l1.delete(key)
                entry = await self.read(key)
                continue
            await self._announce(key, new, version)
            return version, new
        raise RuntimeError(f"{key!r}: {UPDATE_ATTEMPTS} compare-and-swaps lost in a row")

    def counters(self) -> dict[str, int]:
        return {
            "l1_hits": self._hits,
            "l1_misses": self._misses,
            "messages_received": self._received,
            "messages_sent": self._sent,
        }

    async def aclose(self) -> None:
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._listener
            self._listener = None
        with contextlib.suppress(Exception):
            await self._pubsub.aclose()  # type: ignore[no-untyped-call]  # redis-py leaves it untyped
        await self._client.aclose()
        await self._home.aclose()


async def open_system(
    system: str,
    *,
    namespace: str,
    agent_id: str,
    redis_url: str,
    postgres_dsn: str,
    bench_schema: str,
) -> AgentSystem:
    """Open `system` (one of `benchmarks.agent_workloads.SYSTEMS`) for one agent."""
    if system in ("sagemem-coherent", "sagemem-strict"):
        mode = system.removeprefix("sagemem-")
        return await SagememSystem.open(namespace, agent_id, mode, redis_url, postgres_dsn)
    if system == "sagemem-update":
        return await SagememSystem.open(
            namespace, agent_id, "coherent", redis_url, postgres_dsn, write_policy="update"
        )
    if system == "plain-hierarchy":
        return await PlainHierarchySystem.open(namespace, redis_url, postgres_dsn)
    if system == "uncached-postgres":
        return await UncachedPostgresSystem.open(namespace, postgres_dsn, bench_schema)
    if system == "broadcast-invalidation":
        return await BroadcastSystem.open(namespace, agent_id, redis_url, postgres_dsn)
    raise BenchmarkOptionError(f"unknown system {system!r}; choose from {', '.join(SYSTEMS)}")
