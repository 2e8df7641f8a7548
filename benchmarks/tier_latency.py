"""Per-tier read and write latency beside each tier's raw client, measured in the same run.

    uv run python benchmarks/tier_latency.py [--iterations 2000] [--json results.json]

For every operation, the tier call and its baseline run interleaved (alternating which goes
first) on the same servers, so machine noise hits both alike; the table reports median, p95
and p99 in microseconds and the ratio of the tier's median over its baseline's. Baselines:
L1 hit against an OrderedDict LRU get (plain call, and the same wrapped in a coroutine so the
calling convention matches); L2 against redis-py's GET/SET on the same server; L3 and the
semantic tier against asyncpg prepared statements on a plain table of the same shape.
Servers: SAGEMEM_REDIS_URL / SAGEMEM_POSTGRES_DSN, else the embedded ones.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path

import asyncpg
import redis.asyncio as aioredis

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.baselines import LRU_AWAITED, LruBaseline, interleaved
from benchmarks.stats import LatencySummary, format_table, summarise
from sagemem.hierarchy import MemoryHierarchy
from sagemem.services import resolve_postgres_dsn, resolve_redis_url
from sagemem.tiers.dram import DRAMTier
from sagemem.tiers.l1 import L1Tier
from sagemem.tiers.l2 import L2Tier
from sagemem.tiers.l3 import L3Tier
from sagemem.values import JSONValue

KEYS = 1000
WARMUP_ITERATIONS = 200
VALUE: JSONValue = {
    "belief": "the meeting moved to Thursday at 10:00",
    "confidence": 0.82,
    "source": 7,
}
SCALAR = "the meeting moved to Thursday at 10:00"


def _progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


async def run(iterations: int) -> list[tuple[LatencySummary, LatencySummary | None]]:
    """Measure every pair; return (tier, baseline) summaries in table order."""
    _progress("finding or starting Redis and Postgres ...")
    redis_url = await asyncio.to_thread(resolve_redis_url, None)
    postgres_dsn = await asyncio.to_thread(resolve_postgres_dsn, None)
    namespace = f"bench{int(time.time())}"
    keys = [f"bench:key:{i}" for i in range(KEYS)]
    rows: list[tuple[LatencySummary, LatencySummary | None]] = []

    # -- L1 -------------------------------------------------------------------------------
    l1 = L1Tier(capacity=KEYS)
    for key in keys:
        await l1.set(key, SCALAR)
    lru = LruBaseline(keys, SCALAR)
    lru_get_async = lru.get_awaited

    async def l1_get(i: int) -> object:
        return await l1.get(keys[i % KEYS])

    _progress(f"L1 hit vs OrderedDict LRU get, {iterations} iterations ...")
    lru_sync = lru.measure_plain(iterations)
    l1_ns, lru_async_ns = await interleaved(
        iterations, l1_get, lru_get_async, warmup=WARMUP_ITERATIONS
    )
    lru_async = summarise(LRU_AWAITED, lru_async_ns)
    l1_scalar = summarise("L1Tier.get hit (str value)", l1_ns)
    rows += [(lru_sync, None), (lru_async, None), (l1_scalar, lru_async), (l1_scalar, lru_sync)]

    l1_dict = L1Tier(capacity=KEYS)
    for key in keys:
        await l1_dict.set(key, VALUE)

    async def l1_dict_get(i: int) -> object:
        return await l1_dict.get(keys[i % KEYS])

    l1_dict_ns, lru_async_ns2 = await interleaved(
        iterations, l1_dict_get, lru_get_async, warmup=WARMUP_ITERATIONS
    )
    rows.append(
        (
            summarise("L1Tier.get hit (dict value, fresh copy)", l1_dict_ns),
            summarise(LRU_AWAITED, lru_async_ns2),
        )
    )

    hierarchy = MemoryHierarchy([l1])

    async def hierarchy_get(i: int) -> object:
        return await hierarchy.get(keys[i % KEYS])

    h_ns, lru_async_ns3 = await interleaved(
        iterations, hierarchy_get, lru_get_async, warmup=WARMUP_ITERATIONS
    )
    rows.append(
        (
            summarise("MemoryHierarchy.get, L1 hit", h_ns),
            summarise(LRU_AWAITED, lru_async_ns3),
        )
    )

    # -- L2 -------------------------------------------------------------------------------
    raw_redis = aioredis.Redis.from_url(redis_url)
    raw_payload = json.dumps(VALUE).encode()
    async with L2Tier(url=redis_url, namespace=namespace) as l2:
        for key in keys:
            await l2.set(key, VALUE)
            await raw_redis.set(f"raw:{namespace}:{key}", raw_payload)

        async def l2_get(i: int) -> object:
            return await l2.get(keys[i % KEYS])

        async def redis_get(i: int) -> object:
            return await raw_redis.get(f"raw:{namespace}:{keys[i % KEYS]}")

        async def l2_set(i: int) -> object:
            await l2.set(keys[i % KEYS], VALUE)
            return None

        async def redis_set(i: int) -> object:
            return await raw_redis.set(f"raw:{namespace}:{keys[i % KEYS]}", raw_payload)

        _progress(f"L2 vs redis GET/SET, {iterations} iterations ...")
        tier_ns, base_ns = await interleaved(
            iterations, l2_get, redis_get, warmup=WARMUP_ITERATIONS
        )
        rows.append((summarise("L2Tier.get", tier_ns), summarise("redis GET", base_ns)))
        tier_ns, base_ns = await interleaved(
            iterations, l2_set, redis_set, warmup=WARMUP_ITERATIONS
        )
        rows.append((summarise("L2Tier.set", tier_ns), summarise("redis SET", base_ns)))
        await l2.clear()
        async for raw_key in raw_redis.scan_iter(match=f"raw:{namespace}:*", count=500):
            await raw_redis.unlink(raw_key)
    await raw_redis.aclose()

    # -- L3 and the semantic tier ---------------------------------------------------------
    connection = await asyncpg.connect(postgres_dsn)
    raw_table = f"bench_raw_{namespace}"
    await connection.execute(
        f"CREATE TABLE {raw_table} (key text PRIMARY KEY, value jsonb NOT NULL, "
        "version bigint NOT NULL)"
    )
    try:
        await connection.executemany(
            f"INSERT INTO {raw_table} VALUES ($1, $2::jsonb, 1)",
            [(key, json.dumps(VALUE)) for key in keys],
        )
        raw_select = await connection.prepare(
            f"SELECT value::text, version FROM {raw_table} WHERE key = $1"
        )
        raw_upsert = await connection.prepare(
            f"INSERT INTO {raw_table} VALUES ($1, $2::jsonb, 1) ON CONFLICT (key) DO UPDATE "
            f"SET value = EXCLUDED.value, version = {raw_table}.version + 1 RETURNING version"
        )

        async def pg_select(i: int) -> object:
            return await raw_select.fetchrow(keys[i % KEYS])

        async def pg_upsert(i: int) -> object:
            return await raw_upsert.fetchval(keys[i % KEYS], json.dumps(VALUE))

        async with L3Tier(dsn=postgres_dsn, namespace=namespace) as l3:
            for key in keys:
                await l3.set(key, VALUE)

            async def l3_get(i: int) -> object:
                return await l3.get(keys[i % KEYS])

            async def l3_set(i: int) -> object:
                return await l3.write(keys[i % KEYS], VALUE)

            _progress(f"L3 vs asyncpg SELECT/UPSERT, {iterations} iterations ...")
            tier_ns, base_ns = await interleaved(
                iterations, l3_get, pg_select, warmup=WARMUP_ITERATIONS
            )
            rows.append(
                (summarise("L3Tier.get", tier_ns), summarise("asyncpg SELECT by key", base_ns))
            )
            tier_ns, base_ns = await interleaved(
                iterations, l3_set, pg_upsert, warmup=WARMUP_ITERATIONS
            )
            rows.append(
                (
                    summarise("L3Tier.write (new version)", tier_ns),
                    summarise("asyncpg INSERT .. ON CONFLICT", base_ns),
                )
            )
            await l3.clear()

        async with DRAMTier(dsn=postgres_dsn, namespace=namespace) as dram:
            for key in keys[:200]:
                await dram.set(key, VALUE)

            async def dram_get(i: int) -> object:
                return await dram.get(keys[i % 200])

            _progress(f"semantic tier exact lookup vs asyncpg SELECT, {iterations} iterations ...")
            tier_ns, base_ns = await interleaved(
                iterations, dram_get, pg_select, warmup=WARMUP_ITERATIONS
            )
            rows.append(
                (
                    summarise("DRAMTier.get (exact key)", tier_ns),
                    summarise("asyncpg SELECT by key", base_ns),
                )
            )
            await dram.clear()
    finally:
        await connection.execute(f"DROP TABLE IF EXISTS {raw_table}")
        await connection.close()
    return rows


def main() -> None:
    """Parse arguments, run the measurements, print the table (and write JSON if asked)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--iterations", type=int, default=2000)
    parser.add_argument("--json", type=Path, help="also write the numbers to this file")
    args = parser.parse_args()
    rows = asyncio.run(run(args.iterations))
    print(format_table(rows))
    if args.json:
        args.json.write_text(
            json.dumps(
                [
                    {
                        "operation": summary.name,
                        "median_us": summary.median_us,
                        "p95_us": summary.p95_us,
                        "p99_us": summary.p99_us,
                        "baseline": baseline.name if baseline else None,
                        "ratio": summary.median_us / baseline.median_us if baseline else None,
                    }
                    for summary, baseline in rows
                ],
                indent=2,
            )
        )


if __name__ == "__main__":
    main()
