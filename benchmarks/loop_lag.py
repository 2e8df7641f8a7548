"""Why a write is slow in the 8-agent runs: each agent process's event-loop lag and CPU.

    uv run python -m benchmarks.loop_lag [--agents 8] [--seconds 4] [--systems a,b]

Runs the 95/5, 100-key workload on each system in turn (one process per agent, as
`benchmarks.run_all` does) and reports, per system: ops/s, the write and read latency
medians, each agent's CPU time, and its event-loop lag: how late a 2 ms timer fires in that
agent's loop (p50/p90 over the run). A lag of several milliseconds is time every step of an
operation waits before its process runs again: a write that chains three round trips (commit,
relay, outbox clear) pays it at each. A diagnosis, not a figure of the report: the probe's own
wakeups cost every system the same few percent.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import secrets
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from typing import Any, Final

import asyncpg

from benchmarks.agent_systems import open_system, uncached_store_ddl
from benchmarks.agent_workloads import SYSTEMS, BenchmarkOptionError
from sagemem.services import resolve_postgres_dsn, resolve_redis_url

__all__ = ["main"]

KEYS: Final = 100
WRITE_FRACTION: Final = 0.05
PROBE_S: Final = 0.002
START_DELAY_S: Final = 3.0


async def _agent(arguments: dict[str, Any]) -> dict[str, Any]:
    """One agent: open the system, read every key, run until the end, report."""
    system = await open_system(
        arguments["system"],
        namespace=arguments["namespace"],
        agent_id=f"lag{arguments['index']}",
        redis_url=arguments["redis_url"],
        postgres_dsn=arguments["postgres_dsn"],
        bench_schema=arguments["schema"],
    )
    keys = [f"k{i}" for i in range(KEYS)]
    try:
        if arguments["index"] == 0:
            for key in keys:
                await system.write(key, {"key": key, "n": 0})
        await asyncio.sleep(max(0.0, arguments["start_at"] - time.time()))
        for key in keys:
            await system.read(key)
        lags: list[float] = []

        async def probe() -> None:
            while True:
                began = time.perf_counter()
                await asyncio.sleep(PROBE_S)
                lags.append(time.perf_counter() - began - PROBE_S)

        prober = asyncio.create_task(probe())
        rng = random.Random(arguments["index"])
        latency: dict[str, list[float]] = {"read": [], "write": []}
        cpu = time.process_time()
        end = time.perf_counter() + arguments["seconds"]
        while time.perf_counter() < end:
            key = keys[rng.randrange(KEYS)]
            began = time.perf_counter()
            if rng.random() < WRITE_FRACTION:
                await system.write(key, {"key": key, "n": rng.random()})
                latency["write"].append(time.perf_counter() - began)
            else:
                await system.read(key)
                latency["read"].append(time.perf_counter() - began)
        cpu = time.process_time() - cpu
        prober.cancel()
        lags.sort()
        return {
            "ops": len(latency["read"]) + len(latency["write"]),
            "read_ms": statistics.median(latency["read"]) * 1e3 if latency["read"] else 0.0,
            "write_ms": statistics.median(latency["write"]) * 1e3 if latency["write"] else 0.0,
            "cpu_s": cpu,
            "lag_p50_ms": lags[len(lags) // 2] * 1e3 if lags else 0.0,
            "lag_p90_ms": lags[int(len(lags) * 0.9)] * 1e3 if lags else 0.0,
        }
    finally:
        await system.aclose()


async def _run_system(
    system: str, agents: int, seconds: float, redis_url: str, postgres_dsn: str, schema: str
) -> list[dict[str, Any]]:
    namespace = f"loop-lag-{secrets.token_hex(4)}"
    start_at = time.time() + START_DELAY_S
    processes = []
    for index in range(agents):
        arguments = {
            "system": system,
            "index": index,
            "namespace": namespace,
            "redis_url": redis_url,
            "postgres_dsn": postgres_dsn,
            "schema": schema,
            "start_at": start_at,
            "seconds": seconds,
        }
        processes.append(
            await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "benchmarks.loop_lag",
                "--agent",
                json.dumps(arguments),
                stdout=subprocess.PIPE,
            )
        )
    results = []
    for process in processes:
        out, _ = await process.communicate()
        if process.returncode != 0:
            raise RuntimeError(f"an agent process of {system} failed ({process.returncode})")
        results.append(json.loads(out))
    return results


async def _main(options: argparse.Namespace) -> None:
    systems = [s for s in options.systems.split(",") if s]
    unknown = [s for s in systems if s not in SYSTEMS]
    if unknown:
        raise BenchmarkOptionError(f"unknown systems {unknown}; choose from {', '.join(SYSTEMS)}")
    redis_url = await asyncio.to_thread(resolve_redis_url, None)
    postgres_dsn = await asyncio.to_thread(resolve_postgres_dsn, None)
    schema = f"loop_lag_{secrets.token_hex(4)}"
    connection = await asyncpg.connect(postgres_dsn, timeout=30)
    try:
        for statement in uncached_store_ddl(schema):
            await connection.execute(statement)
        print(
            f"{options.agents} agent processes, 95/5 over {KEYS} keys, {options.seconds} s "
            f"per system, {os.cpu_count()} cores",
            flush=True,
        )
        for system in systems:
            results = await _run_system(
                system, options.agents, options.seconds, redis_url, postgres_dsn, schema
            )
            ops = sum(r["ops"] for r in results)

            def median(name: str, of: Sequence[dict[str, Any]] = results) -> float:
                return float(statistics.median(float(r[name]) for r in of))

            print(
                f"{system:24} {ops / options.seconds:8,.0f} ops/s; medians over the agents: "
                f"read {median('read_ms'):.3f} ms, write {median('write_ms'):.1f} ms, "
                f"CPU {median('cpu_s') / options.seconds:.0%} of a core, "
                f"loop lag p50 {median('lag_p50_ms'):.2f} ms / p90 {median('lag_p90_ms'):.2f} ms",
                flush=True,
            )
    finally:
        await connection.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        await connection.close()


def main(argv: Sequence[str] | None = None) -> int:
    """Run the diagnosis (or, with --agent, one agent process of it)."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--agents", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--systems", default="sagemem-update,uncached-postgres")
    parser.add_argument("--agent", help=argparse.SUPPRESS)
    options = parser.parse_args(argv)
    if options.agent is not None:
        print(json.dumps(asyncio.run(_agent(json.loads(options.agent)))))
        return 0
    if options.agents < 1 or not options.seconds > 0:
        parser.error("--agents must be at least 1 and --seconds positive")
    try:
        asyncio.run(_main(options))
    except BenchmarkOptionError as error:
        parser.error(str(error))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
