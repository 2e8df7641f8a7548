"""Classic against sharded pub/sub for the coherence bus, in one run on the same servers.

    uv run python -m benchmarks.pubsub [--iterations 300] [--json out.json]

Meant for a Redis/Valkey Cluster (`SAGEMEM_REDIS_URL` naming any node, e.g. after
`eval "$(uv run sagemem services up --cluster 3 --replicas 1)"`); it runs on one server too.
Each flavour gets its own namespace, both served by the same node. Measured, the two flavours
interleaved (alternating which goes first) after a warm-up:

- **delivery**: `CoherenceBus.publish_invalidate` to the moment the subscriber's handler runs
  (one bus publishing, one subscriber following the key);
- **cluster traffic**: pub/sub messages the nodes forwarded over the cluster bus per bus
  message (`CLUSTER INFO`: `cluster_stats_messages_publish_sent` plus
  `cluster_stats_messages_publishshard_sent`, summed over every node, over each flavour's own
  publishing phase). Classic PUBLISH on a cluster goes to every node; a shard message only to
  the replicas of its slot's primary;
- **a coherent agent's misses**: the first read of a key (sharded: the agent follows the key
  first, one more round trip) against the miss of a key it already followed (its copy was
  invalidated by a write), both served from L2.

Every read's value is checked against what was written. Reported: median, p95, p99 per
operation and the ratios sharded / classic.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import secrets
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict
from typing import Final

import asyncpg
import redis.asyncio as aioredis

from benchmarks.cleanup import remove_namespace_keys
from benchmarks.stats import LatencySummary, format_table, summarise
from sagemem.coherence.bus import CoherenceBus
from sagemem.coherence.messages import BusEvent, Delivered
from sagemem.endpoints import redacted_url
from sagemem.redis_topology import (
    RedisTopology,
    cluster_map,
    detect_redis_topology,
    namespace_node_url,
    url_at,
)
from sagemem.services import resolve_postgres_dsn, resolve_redis_url
from sagemem.spec.vocabulary import L1State
from sagemem.tiers.l1_coherent import CoherentL1Tier
from sagemem.tiers.l3 import L3Tier

__all__ = ["FLAVOURS", "main", "measure"]

FLAVOURS: Final = ("classic", "sharded")
WARMUP: Final = 30
WAIT_S: Final = 10.0
_NODE_PICK_TRIES: Final = 200


def _progress(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


async def _namespaces(redis_url: str, token: str) -> dict[str, str]:
    """One namespace per flavour, both served by the node serving the first."""
    first = f"bench-pubsub-{token}-sharded"
    node = await namespace_node_url(redis_url, first)
    for attempt in range(_NODE_PICK_TRIES):
        second = f"bench-pubsub-{token}-classic{attempt}"
        if await namespace_node_url(redis_url, second) == node:
            return {"sharded": first, "classic": second}
    raise RuntimeError(f"no namespace on the node of {first!r} in {_NODE_PICK_TRIES} tries")


async def _node_urls(redis_url: str) -> list[str]:
    """Every node of the cluster (replicas too), or the one server."""
    client = aioredis.Redis.from_url(redis_url)
    try:
        if await detect_redis_topology(client) is not RedisTopology.CLUSTER:
            return []
        return [url_at(redis_url, address) for address in (await cluster_map(client, 0)).nodes]
    finally:
        await client.aclose()


async def _cluster_publish_messages(node_urls: list[str]) -> int:
    """Pub/sub messages the nodes have sent over the cluster bus (0 on one server)."""
    total = 0
    for url in node_urls:
        client = aioredis.Redis.from_url(url)
        try:
            info = await client.execute_command("CLUSTER", "INFO")  # type: ignore[no-untyped-call]  # untyped in redis-py
        finally:
            await client.aclose()
        text = info.decode() if isinstance(info, bytes) else str(info)
        for line in text.split():
            name, _, value = line.partition(":")
            if name in (
                "cluster_stats_messages_publish_sent",
                "cluster_stats_messages_publishshard_sent",
            ):
                total += int(value)
    return total


async def _until_invalidated(reader: CoherentL1Tier, keys: list[str]) -> None:
    """Poll (the invalidations arrive on the bus's own time) until every key is Invalid."""
    deadline = time.monotonic() + 60
    left = list(keys)
    while left:
        left = [key for key in left if reader.get_state(key) is not L1State.I]
        if left and time.monotonic() > deadline:
            raise RuntimeError(f"{len(left)} invalidations did not arrive within 60 s")
        await asyncio.sleep(0.01 if left else 0)


async def _timed_pairs(
    iterations: int, ops: dict[str, Callable[[int], Awaitable[None]]]
) -> dict[str, list[int]]:
    """Each op `iterations` times (after WARMUP untimed rounds), the order rotating per round;
    op(i) must use its own fresh material for every i it is given."""
    names = list(ops)
    samples: dict[str, list[int]] = {name: [] for name in names}
    clock = time.perf_counter_ns
    for i in range(WARMUP + iterations):
        order = names if i % 2 == 0 else names[::-1]
        for name in order:
            started = clock()
            await ops[name](i)
            elapsed = clock() - started
            if i >= WARMUP:
                samples[name].append(elapsed)
    return samples


async def measure(redis_url: str, postgres_dsn: str, iterations: int) -> dict[str, object]:
    """Both flavours side by side; the summaries, ratios and cluster traffic."""
    token = secrets.token_hex(4)
    count = WARMUP + iterations
    namespaces = await _namespaces(redis_url, token)
    node_urls = await _node_urls(redis_url)
    schema = f"bench_ps_{token}"
    buses: dict[str, CoherenceBus] = {}
    publishers: dict[str, CoherenceBus] = {}
    homes: dict[str, L3Tier] = {}
    agents: list[CoherentL1Tier] = []
    try:
        arrivals: dict[str, asyncio.Future[int]] = {}

        def handler(flavour: str) -> Callable[[BusEvent], Awaitable[None]]:
            async def on_event(event: BusEvent) -> None:
                waiter = arrivals.get(flavour)
                if isinstance(event, Delivered) and waiter is not None and not waiter.done():
                    waiter.set_result(time.perf_counter_ns())

            return on_event

        for flavour in FLAVOURS:
            namespace = namespaces[flavour]
            bus = CoherenceBus(redis_url, namespace=namespace, pubsub=flavour)
            publisher = CoherenceBus(redis_url, namespace=namespace, pubsub=flavour)
            await bus.connect()
            buses[flavour] = bus
            await publisher.connect()
            publishers[flavour] = publisher
            await bus.subscribe("probe", handler(flavour), keys=["k"])

        def deliver(flavour: str) -> Callable[[int], Awaitable[None]]:
            async def op(i: int) -> None:
                arrivals[flavour] = asyncio.get_running_loop().create_future()
                await publishers[flavour].publish_invalidate("k", i + 1, ["probe"], sender="w")
                async with asyncio.timeout(WAIT_S):
                    await arrivals[flavour]

            return op

        _progress(f"delivery, {iterations} messages per flavour ...")
        delivery = await _timed_pairs(iterations, {f: deliver(f) for f in FLAVOURS})
        traffic: dict[str, float] = {}
        for flavour in FLAVOURS:
            before = await _cluster_publish_messages(node_urls)
            for i in range(iterations):
                await deliver(flavour)(count + i)
            traffic[flavour] = (await _cluster_publish_messages(node_urls) - before) / iterations

        rows: list[tuple[LatencySummary, LatencySummary | None]] = []
        summaries: dict[str, LatencySummary] = {}
        for flavour in FLAVOURS:
            summaries[f"delivery {flavour}"] = summarise(
                f"bus delivery, {flavour}", delivery[flavour]
            )

        readers: dict[str, CoherentL1Tier] = {}
        for flavour in FLAVOURS:
            home = L3Tier(postgres_dsn, namespace=namespaces[flavour], schema=schema)
            await home.connect()
            homes[flavour] = home
            writer = CoherentL1Tier(
                "writer", buses[flavour], 8 * count, home=home, operation_timeout_s=WAIT_S
            )
            reader = CoherentL1Tier(
                "reader", buses[flavour], 8 * count, home=home, operation_timeout_s=WAIT_S
            )
            for l1 in (writer, reader):
                await l1.start()
                agents.append(l1)
            readers[flavour] = reader
            _progress(f"{flavour}: writing {2 * count} keys ...")
            for i in range(count):
                await writer.write_through(f"first:{i}", i)
                await writer.write_through(f"again:{i}", -i)
                assert await reader.get(f"again:{i}") == -i  # held, and followed
            for i in range(count):
                await writer.write_through(f"again:{i}", i)
            await _until_invalidated(reader, [f"again:{i}" for i in range(count)])

        def read(flavour: str, kind: str) -> Callable[[int], Awaitable[None]]:
            async def op(i: int) -> None:
                value = await readers[flavour].get(f"{kind}:{i}")
                if value != i:
                    raise RuntimeError(f"{flavour} {kind}:{i} read back {value!r}")

            return op

        _progress(f"coherent misses, {iterations} per kind and flavour ...")
        misses = await _timed_pairs(
            iterations,
            {f"{kind} {f}": read(f, kind) for f in FLAVOURS for kind in ("first", "again")},
        )
        labels = {
            "first": "coherent miss, first read of the key (L2 hit)",
            "again": "coherent miss, key followed before (L2 hit)",
        }
        for name, samples in misses.items():
            kind, flavour = name.split(" ")
            summaries[name] = summarise(f"{labels[kind]}, {flavour}", samples)
        for name in ("delivery", "first", "again"):
            rows.append((summaries[f"{name} sharded"], summaries[f"{name} classic"]))
            rows.append((summaries[f"{name} classic"], None))
        ratios = {
            name: summaries[f"{name} sharded"].median_us / summaries[f"{name} classic"].median_us
            for name in ("delivery", "first", "again")
        }
        return {
            "topology": "cluster" if node_urls else "single server",
            "node": redacted_url(await namespace_node_url(redis_url, namespaces["sharded"])),
            "iterations": iterations,
            "summaries": {name: asdict(summary) for name, summary in summaries.items()},
            "median_ratio_sharded_to_classic": ratios,
            "cluster_messages_per_bus_message": traffic,
            "table": format_table(rows),
        }
    finally:
        for l1 in agents:
            await l1.aclose()
        for home in homes.values():
            await home.aclose()
        for bus in [*buses.values(), *publishers.values()]:
            await bus.aclose()
        connection = await asyncpg.connect(postgres_dsn, timeout=WAIT_S)
        try:
            await connection.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        finally:
            await connection.close()
        for namespace in namespaces.values():
            await remove_namespace_keys(redis_url, namespace)


def main(argv: Sequence[str] | None = None) -> int:
    """Print the table, the ratios and the cluster traffic (and write --json); exit 0."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--iterations", type=int, default=300)
    parser.add_argument("--json", default="")
    options = parser.parse_args(argv)
    if options.iterations < 1:
        parser.error(f"--iterations must be >= 1, got {options.iterations}")
    result = asyncio.run(measure(resolve_redis_url(), resolve_postgres_dsn(), options.iterations))
    print(f"servers: {result['topology']}, both namespaces on {result['node']}")
    print(result["table"])
    ratios = result["median_ratio_sharded_to_classic"]
    traffic = result["cluster_messages_per_bus_message"]
    assert isinstance(ratios, dict)
    assert isinstance(traffic, dict)
    for name, ratio in ratios.items():
        print(f"median sharded / classic, {name}: {ratio:.2f}x")
    for flavour, per_message in traffic.items():
        print(f"cluster-bus messages per bus message, {flavour}: {per_message:.2f}")
    if options.json:
        with open(options.json, "w", encoding="utf-8") as out:
            json.dump(result, out, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
