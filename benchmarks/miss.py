"""What a coherent L1 miss costs, beside one Postgres SELECT of the same row in the same run.

    uv run python -m benchmarks.miss [--iterations 300] [--mode coherent|strict] [--json out.json]

Three operations, interleaved (alternating which goes first) after a warm-up:

- a coherent L1 miss whose key is in L2 (another agent filled it): the fill script's round trip;
- a coherent L1 miss whose key is only at the home (L2 was deleted by the write): the fill
  script, the home's read, and the leased L2 fill;
- the baseline: one `SELECT value, version` of the same kind of row through a plain asyncpg
  connection (a prepared statement), what an uncached Postgres store does for every read.

Every miss reads a key no agent of the run has read before, so each is a real miss; the run
checks each returned value against what was written. Reported: median, p95, p99 per operation,
the ratio of each miss to the SELECT, and the client CPU time per operation (process time over
the timed loop, which also contains the baseline's share). Redis and Postgres are the embedded
servers unless `SAGEMEM_REDIS_URL` / `SAGEMEM_POSTGRES_DSN` say otherwise.
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

from benchmarks.baselines import interleaved
from benchmarks.cleanup import remove_namespace_keys
from benchmarks.stats import LatencySummary, format_table, summarise
from sagemem import keyspace
from sagemem.coherence.bus import CoherenceBus
from sagemem.redis_topology import namespace_node_url
from sagemem.services import resolve_postgres_dsn, resolve_redis_url
from sagemem.tiers.l1_coherent import CoherentL1Tier
from sagemem.tiers.l3 import L3Tier
from sagemem.values import JSONValue

__all__ = ["main", "measure"]

WARMUP: Final = 30
WAIT_S: Final = 10.0
BELIEF: Final = "the meeting moved to Thursday at 10:00"


def _value(i: int) -> JSONValue:
    return {"belief": BELIEF, "confidence": 0.8, "i": i}


SELECT: Final = "SELECT value::text, version FROM {table} WHERE namespace = $1 AND key = $2"


def _progress(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


async def measure(
    redis_url: str, postgres_dsn: str, iterations: int, mode: str = "coherent"
) -> dict[str, object]:
    """Run the three operations `iterations` times each; the summaries and CPU per op."""
    token = secrets.token_hex(4)
    namespace, schema = f"bench-miss-{token}", f"bench_miss_{token}"
    count = iterations + min(iterations, WARMUP)
    bus = CoherenceBus(redis_url, namespace=namespace)
    home = L3Tier(postgres_dsn, namespace=namespace, schema=schema)
    connection: asyncpg.Connection | None = None
    agents: list[CoherentL1Tier] = []
    try:
        await bus.connect()
        await home.connect()

        async def agent(name: str) -> CoherentL1Tier:
            l1 = CoherentL1Tier(
                name, bus, 4 * count, mode=mode, home=home, operation_timeout_s=WAIT_S
            )
            await l1.start()
            agents.append(l1)
            return l1

        writer, filler, reader = await agent("writer"), await agent("filler"), await agent("reader")
        _progress(f"writing {3 * count} keys ...")
        for i in range(count):
            for kind in ("l2", "home", "select"):
                await writer.write_through(f"{kind}:{i}", _value(i))
        # A write-through's relay leaves the value in L2 (OUTBOX_RELAY_STORE): remove the home
        # keys' copies, so that their misses go to the home.
        raw = aioredis.Redis.from_url(await namespace_node_url(redis_url, namespace))
        try:
            await raw.unlink(*(keyspace.l2_prefix(namespace) + f"home:{i}" for i in range(count)))
        finally:
            await raw.aclose()
        _progress("filling L2 for the L2-hit keys through another agent ...")
        for i in range(count):
            await filler.get(f"l2:{i}")
        await writer.aclose()
        await filler.aclose()
        connection = await asyncpg.connect(postgres_dsn, timeout=WAIT_S)
        statement = await connection.prepare(SELECT.format(table=home.table))

        def checked(kind: str) -> Callable[[int], Awaitable[None]]:
            async def read(i: int) -> None:
                value = await reader.get(f"{kind}:{i}")
                if value != _value(i):
                    raise RuntimeError(f"{kind}:{i} read back {value!r}")

            return read

        async def select(i: int) -> None:
            row = await statement.fetchrow(namespace, f"select:{i}")
            if row is None or json.loads(row[0]) != _value(i):
                raise RuntimeError(f"select:{i} read back {row!r}")

        rows: list[tuple[LatencySummary, LatencySummary | None]] = []
        cpu: dict[str, float] = {}
        for kind, name in (
            ("l2", f"{mode} L1 miss, L2 hit"),
            ("home", f"{mode} L1 miss, L2 miss (home read, leased L2 fill)"),
        ):
            _progress(f"{name} vs one SELECT, {iterations} iterations ...")
            started = time.process_time()
            miss_ns, base_ns = await interleaved(
                iterations, checked(kind), select, warmup=min(iterations, WARMUP)
            )
            cpu[name] = (time.process_time() - started) / (2 * (iterations + WARMUP)) * 1e6
            baseline = summarise("one SELECT (asyncpg, prepared)", base_ns)
            rows.append((summarise(name, miss_ns), baseline))
            rows.append((baseline, None))
        statistics = reader.statistics()
        expected = {"fills_from_l2": count, "fills_from_home": count}
        found = {name: getattr(statistics, name) for name in expected}
        if found != expected:
            raise RuntimeError(f"the reader's fills were {found}, expected {expected}")
        return {
            "rows": [(asdict(a), asdict(b) if b else None) for a, b in rows],
            "table": format_table(rows),
            "cpu_us_per_op_pair": cpu,
            "reader_misses": statistics.misses,
        }
    finally:
        for l1 in agents:
            await l1.aclose()
        if connection is not None:
            await connection.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
            await connection.close()
        await home.aclose()
        await bus.aclose()
        await remove_namespace_keys(redis_url, namespace)


def main(argv: Sequence[str] | None = None) -> int:
    """Print the table (and write --json); exit 0."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--iterations", type=int, default=300)
    parser.add_argument("--mode", choices=("coherent", "strict"), default="coherent")
    parser.add_argument("--json", default="")
    options = parser.parse_args(argv)
    if options.iterations < 1:
        parser.error(f"--iterations must be >= 1, got {options.iterations}")
    result = asyncio.run(
        measure(resolve_redis_url(), resolve_postgres_dsn(), options.iterations, options.mode)
    )
    print(result["table"])
    cpu = result["cpu_us_per_op_pair"]
    assert isinstance(cpu, dict)
    for name, us in cpu.items():
        print(f"client CPU per (miss + SELECT) pair, {name}: {us:.0f} us")
    if options.json:
        with open(options.json, "w", encoding="utf-8") as out:
            json.dump(result, out, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
