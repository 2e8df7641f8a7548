"""Every agent workload on sagemem and its baselines, side by side: `python -m benchmarks.run_all`.

    uv run python -m benchmarks.run_all [--quick | --full] [--out DIR] [--agents 8]
        [--repetitions 3] [--duration-s S] [--warmup-s S] [--scaling 2]
        [--scaling-repetitions 1]
        [--workloads a,b] [--systems a,b] [--seed N]
    uv run sagemem bench ...   (the same)

Agents are separate OS processes (`benchmarks.agent_process`). For each agent count, each
repetition opens every system in turn (the order rotates from one repetition to the next, so
the systems are interleaved with their baselines in one run), stores the workloads' keys,
and runs every workload: each agent first reads every key of the workload once (its L1 then
holds what a long-running agent's would), then all agents start together, run the workload
untimed for the warm-up, then timed for the duration. Then each agent reads once more every
key written in the run. Everything the agents did is recorded, so the run reports, per
workload and system (median and min-max over the repetitions): ops/s and its ratio to the
uncached Postgres store of the same repetition, p50/p99 latency per operation kind, stale
reads (count and max age) and reads still stale after the workload stopped, L1 hit rate,
coherence messages per operation and per write, Redis and Postgres round trips per operation
(counted in the agents' drivers, see `benchmarks.round_trips`) and Redis commands per
operation on the server (`INFO commandstats` deltas: commands run inside Lua scripts count,
and so does whatever else uses that server at the time).

Writes `results.json` and `report.md` with PNG plots into `--out` (default
`benchmark-results/<UTC timestamp>`); progress goes to stderr. Exit status 0 when every read of
every system returned the value committed as the version it reported, 1 when one did not (the
report lists them) or an agent process failed (its stderr is in `--out`/logs), 2 on a usage
error.

Servers: SAGEMEM_REDIS_URL / SAGEMEM_POSTGRES_DSN, else the embedded ones. Each run uses fresh
namespaces and a private Postgres schema, removed at the end. When SAGEMEM_REDIS_URL names a
Redis Cluster node, the run counts and cleans every node, and the coherent systems (which need
one Redis server) are refused with exit status 2 before anything starts.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import secrets
import statistics
import sys
import time
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

import asyncpg
import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.agent_systems import uncached_store_ddl
from benchmarks.agent_workloads import (
    RESEARCH_DOCS,
    SCALING_WORKLOAD,
    SYSTEMS,
    WORKLOADS,
    BenchmarkOptionError,
    ReadRecord,
    Workload,
    WriteRecord,
    check_reads,
    parse_names,
    parse_positive_ints,
    percentile,
    research_document,
    stale_reads,
    workload_keys,
)
from sagemem.embedding import HashingEmbedder
from sagemem.errors import SageMemError
from sagemem.redis_topology import RedisTopology, detect_redis_topology_at
from sagemem.services import resolve_postgres_dsn, resolve_redis_url
from sagemem.tiers.dram import DRAMTier

__all__ = [
    "BASELINE",
    "BenchmarkFailure",
    "Cell",
    "RunOptions",
    "main",
    "measure_cell",
    "parse_options",
    "run",
    "summarise_cells",
]

BASELINE: Final = "uncached-postgres"
ROOT: Final = Path(__file__).resolve().parents[1]
START_DELAY_S: Final = 0.1  # between sending `run` and the agents' common start
SETTLE_S: Final = 0.1  # after a workload, before the final reads (invalidations in flight)
MESSAGES_SETTLE_S: Final = 2.0  # after the final reads: how long to wait for messages in flight
ANSWER_TIMEOUT_S: Final = 300.0
PROBLEMS_SHOWN: Final = 20

type AdminClient = aioredis.Redis | RedisCluster
"""The systems that do not run on a Redis Cluster (coherent mode's bus and directory need one
server; `CoherenceBus` refuses a cluster with a `ConfigurationError`)."""
CONNECTIONS_BUDGET: Final = 32  # Postgres connections the agents may open at once, together


@dataclass(frozen=True, slots=True)
class RunOptions:
    """What one run measures (`parse_options` builds it from the command line)."""

    profile: str
    agents: int
    scaling: tuple[int, ...]
    repetitions: int
    scaling_repetitions: int
    duration_s: float
    warmup_s: float
    workloads: tuple[str, ...]
    systems: tuple[str, ...]
    seed: int
    out: Path


_PROFILES: Final[dict[str, dict[str, Any]]] = {
    "quick": {
        "agents": 2,
        "scaling": (),
        "repetitions": 1,
        "scaling_repetitions": 1,
        "duration_s": 0.25,
        "warmup_s": 0.1,
    },
    "default": {
        "agents": 8,
        "scaling": (2,),
        "repetitions": 3,
        "scaling_repetitions": 1,
        "duration_s": 0.5,
        "warmup_s": 0.1,
    },
    "full": {
        "agents": 8,
        "scaling": (2, 4, 8, 16, 32),
        "repetitions": 5,
        "scaling_repetitions": 5,
        "duration_s": 4.0,
        "warmup_s": 1.0,
    },
}


def _positive_seconds(option: str, raw: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        value = float("nan")
    if not value > 0 or value == float("inf"):
        raise BenchmarkOptionError(
            f"{option} must be a positive number of seconds, got {raw!r}; e.g. {option} 1.5"
        )
    return value


def parse_options(argv: Sequence[str] | None = None) -> RunOptions:
    """The run's options from `argv`; `BenchmarkOptionError` (a ValueError) says what to fix."""
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.run_all",
        description=(__doc__ or "").split("\n\n")[0],
        epilog="exit status: 0 every read was consistent; 1 a read returned a value other than "
        "the one committed as its version (listed in the report), or an agent process "
        "failed; 2 a usage error.",
    )
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="a smoke run: 2 agents, under a minute")
    size.add_argument("--full", action="store_true", help="longer, 5 repetitions, 2..32 agents")
    parser.add_argument("--out", type=Path, help="results folder (default benchmark-results/TS)")
    parser.add_argument("--agents", help="agent processes of the workloads (default 8)")
    parser.add_argument(
        "--scaling", help="agent counts of the scaling sweep (default 2; --full: 2,4,16,32)"
    )
    parser.add_argument("--repetitions", help="repetitions of every cell (default 3)")
    parser.add_argument(
        "--scaling-repetitions", help="repetitions of each scaling point (default 1)"
    )
    parser.add_argument("--duration-s", help="timed seconds per workload run (default 0.5)")
    parser.add_argument("--warmup-s", help="untimed seconds before each (default 0.1)")
    parser.add_argument("--workloads", help=f"a subset of: {', '.join(w.name for w in WORKLOADS)}")
    parser.add_argument("--systems", help=f"a subset of: {', '.join(SYSTEMS)}")
    parser.add_argument("--seed", help="seed of the agents' operation streams (default 1)")
    args = parser.parse_args(argv)
    profile = "quick" if args.quick else "full" if args.full else "default"
    base = _PROFILES[profile]
    agents = parse_positive_ints("--agents", args.agents)[0] if args.agents else int(base["agents"])
    if args.agents and "," in args.agents:
        raise BenchmarkOptionError(
            f"--agents takes one number, got {args.agents!r}; use --scaling for several"
        )
    scaling = (
        tuple(parse_positive_ints("--scaling", args.scaling))
        if args.scaling
        else tuple(base["scaling"])
    )
    for count in (agents, *scaling):
        if count < 2 or count > 64:
            raise BenchmarkOptionError(
                f"agent counts must be from 2 to 64 (coherence needs two agents; the servers "
                f"allow about 100 connections), got {count}"
            )
    repetitions = (
        parse_positive_ints("--repetitions", args.repetitions)[0]
        if args.repetitions
        else int(base["repetitions"])
    )
    scaling_repetitions = (
        parse_positive_ints("--scaling-repetitions", args.scaling_repetitions)[0]
        if args.scaling_repetitions
        else int(base["scaling_repetitions"])
    )
    workloads = tuple(
        parse_names("--workloads", args.workloads, [w.name for w in WORKLOADS])
        if args.workloads
        else [w.name for w in WORKLOADS]
    )
    systems = tuple(parse_names("--systems", args.systems, SYSTEMS) if args.systems else SYSTEMS)
    if BASELINE not in systems:
        raise BenchmarkOptionError(
            f"--systems {args.systems!r} leaves out {BASELINE}, the baseline every ratio is "
            f"taken against; add it"
        )
    seed = 1
    if args.seed is not None:
        try:
            seed = int(args.seed)
        except ValueError:
            raise BenchmarkOptionError(
                f"--seed must be a whole number, got {args.seed!r}; e.g. --seed 7"
            ) from None
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    return RunOptions(
        profile=profile,
        agents=agents,
        scaling=tuple(count for count in scaling if count != agents),
        repetitions=repetitions,
        scaling_repetitions=scaling_repetitions,
        duration_s=_positive_seconds("--duration-s", args.duration_s)
        if args.duration_s
        else float(base["duration_s"]),
        warmup_s=_positive_seconds("--warmup-s", args.warmup_s)
        if args.warmup_s
        else float(base["warmup_s"]),
        workloads=workloads,
        systems=systems,
        seed=seed,
        out=args.out if args.out is not None else Path("benchmark-results") / stamp,
    )


def _progress(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


class BenchmarkFailure(SageMemError, RuntimeError):
    """An agent process failed or did not answer: the run cannot report what it claims."""


# -- agent processes -----------------------------------------------------------------------


class AgentPool:
    """`count` agent processes, each answering one JSON line per command."""

    def __init__(self, count: int, log_dir: Path) -> None:
        self.count: Final = count
        self._log_dir = log_dir
        self._processes: list[asyncio.subprocess.Process] = []
        self._logs: list[Any] = []

    async def start(self) -> None:
        self._log_dir.mkdir(parents=True, exist_ok=True)
        environment = {**os.environ, "PYTHONPATH": str(ROOT)}
        for index in range(self.count):
            log = (self._log_dir / f"agents{self.count}-agent{index}.log").open("wb")
            self._logs.append(log)
            process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "benchmarks.agent_process",
                "--agent-index",
                str(index),
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=log,
                cwd=ROOT,
                env=environment,
                limit=1 << 28,  # a run's records come back as one line
            )
            self._processes.append(process)
        await asyncio.gather(*(self._answer(index) for index in range(self.count)))

    async def _answer(self, index: int) -> dict[str, Any]:
        process = self._processes[index]
        assert process.stdout is not None
        try:
            async with asyncio.timeout(ANSWER_TIMEOUT_S):
                line = await process.stdout.readline()
        except TimeoutError:
            raise BenchmarkFailure(
                f"agent {index} did not answer in {ANSWER_TIMEOUT_S} s"
            ) from None
        if not line:
            log = self._log_dir / f"agents{self.count}-agent{index}.log"
            raise BenchmarkFailure(
                f"agent {index} exited (status {await process.wait()}); its stderr: {log}"
            )
        answer: dict[str, Any] = json.loads(line)
        if not answer.get("ok"):
            raise BenchmarkFailure(str(answer.get("error")))
        return answer

    async def ask(self, commands: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
        """Send command i to agent i (one command: to every agent); all answers, in order."""
        if len(commands) == 1:
            commands = list(commands) * self.count
        for process, command in zip(self._processes, commands, strict=True):
            assert process.stdin is not None
            process.stdin.write((json.dumps(command) + "\n").encode())
            await process.stdin.drain()
        return list(await asyncio.gather(*(self._answer(i) for i in range(self.count))))

    async def aclose(self) -> None:
        for process in self._processes:
            if process.returncode is None and process.stdin is not None:
                with contextlib.suppress(ConnectionError):
                    process.stdin.write(b'{"cmd": "quit"}\n')
                    await process.stdin.drain()
        for process in self._processes:
            try:
                async with asyncio.timeout(30):
                    await process.wait()
            except TimeoutError:
                process.kill()
                await process.wait()
        for log in self._logs:
            log.close()
        self._processes.clear()
        self._logs.clear()


# -- server-side counters ------------------------------------------------------------------


class ServerCounters:
    """Commands the Redis server executed (`INFO commandstats`, all clients, INFO excluded);
    on a cluster, summed over its primaries."""

    def __init__(self, redis_url: str, topology: RedisTopology = RedisTopology.SINGLE_NODE) -> None:
        self._redis_url = redis_url
        self._topology = topology
        self._redis: AdminClient | None = None

    async def connect(self) -> None:
        self._redis = await _admin_client(self._redis_url, self._topology)

    async def snapshot(self) -> int:
        if isinstance(self._redis, RedisCluster):
            replies = await self._redis.info("commandstats", target_nodes=RedisCluster.PRIMARIES)
            # one reply per primary, keyed by node name (a cluster has 3 or more)
            single = any(str(name).startswith("cmdstat_") for name in replies)
            per_node = [replies] if single else list(replies.values())
        else:
            assert self._redis is not None
            per_node = [await self._redis.info("commandstats")]
        return sum(
            int(entry["calls"])
            for stats in per_node
            for name, entry in stats.items()
            if name != "cmdstat_info"
        )

    async def aclose(self) -> None:
        if self._redis is not None:
            await self._redis.aclose()
            self._redis = None


# -- one cell: a workload on a system with N agents, one repetition --------------------------


@dataclass(slots=True)
class Cell:
    """What one workload run on one system measured."""

    workload: str
    system: str
    agents: int
    repetition: int
    ops: int
    ops_s: float
    latency_us: dict[str, dict[str, float]]
    reads: int
    stale_reads: int
    stale_max_age_ms: float
    keys_written: int
    final_reads: int
    final_stale: int
    l1_hit_rate: float | None
    l1_lookups: int | None  # L1 hits + misses in the timed window, by the system's counters
    messages_per_op: float | None
    messages_per_write: float | None
    # The whole run (warm-up, timed part, final reads), once the messages settled: one message
    # per holder each relay messaged and per recall sent, against what the agents received.
    # None for systems without a directory (the broadcast variant messages every agent).
    messages_to_holders: int | None
    messages_delivered: int | None
    bus_losses: int | None  # losses the agents' buses detected in the run (then a RESYNC)
    bus_dropped: int | None  # messages the buses dropped: malformed, misaddressed, handler errors
    redis_commands_per_op: float  # server side: INFO commandstats, every client of the server
    redis_round_trips_per_op: float  # client side: this run's agents only
    postgres_round_trips_per_op: float
    client_cpu_us_per_op: float | None  # the agent processes' CPU (system and user) per op
    problems: list[str] = field(default_factory=list)


def _records(raw: list[list[Any]], kind: type[ReadRecord] | type[WriteRecord]) -> list[Any]:
    return [kind(*row) for row in raw]


def _delta(answers: list[dict[str, Any]], name: str) -> int | None:
    values = [
        answer["counters_end"][name] - answer["counters_timed_start"][name]
        for answer in answers
        if name in answer["counters_end"]
    ]
    return sum(values) if values else None


def _run_delta(
    answers: Sequence[dict[str, Any]], settled: Sequence[dict[str, Any]], name: str
) -> int | None:
    """A counter's growth from each agent's run start to its settled counters, summed."""
    if not settled or len(settled) != len(answers):
        return None
    total = 0
    for answer, later in zip(answers, settled, strict=True):
        start, end = answer.get("counters_run_start") or {}, later["counters"]
        if name not in start or name not in end:
            return None
        total += end[name] - start[name]
    return total


def message_totals(
    answers: Sequence[dict[str, Any]], settled: Sequence[dict[str, Any]]
) -> tuple[int | None, int | None]:
    """(messages sent to holders, messages the agents received) from each agent's counters
    at the start of its run (`answers`) to the `counters` answers in `settled` (same order);
    (None, None) for a system that does not count messages to holders."""
    sent = _run_delta(answers, settled, "messages_to_holders")
    if sent is None:
        return None, None
    return sent, _run_delta(answers, settled, "messages_received")


def measure_cell(
    workload: Workload,
    system: str,
    agents: int,
    repetition: int,
    answers: list[dict[str, Any]],
    final_answers: list[dict[str, Any]],
    prefill: list[WriteRecord],
    server_commands: tuple[int, int],
    warm_answers: Sequence[dict[str, Any]] = (),
    settled_answers: Sequence[dict[str, Any]] = (),
) -> Cell:
    """The cell's figures from the agents' answers (pure: no I/O). `settled_answers` are the
    agents' `counters` answers once the run's messages settled (see `message_totals`)."""
    reads = [r for a in answers for r in _records(a["reads"], ReadRecord)]
    writes = prefill + [w for a in answers for w in _records(a["writes"], WriteRecord)]
    finals = [r for a in final_answers for r in _records(a["reads"], ReadRecord)]
    ops = sum(sum(a["ops"].values()) for a in answers)
    write_ops = sum(a["ops"].get("write", 0) + a["ops"].get("update", 0) for a in answers)
    started = min(a["timed_start_ns"] for a in answers)
    ended = max(a["last_end_ns"] for a in answers)
    window_s = max(ended - started, 1) / 1e9
    latency: dict[str, dict[str, float]] = {}
    pooled: dict[str, list[float]] = defaultdict(list)
    for answer in answers:
        for kind, samples in answer["latency_us"].items():
            pooled[kind] += samples
    for kind, samples in sorted(pooled.items()):
        latency[kind] = {
            "p50": percentile(samples, 0.5),
            "p99": percentile(samples, 0.99),
            "count": len(samples),
        }
    stale = stale_reads(writes, reads)
    newest: dict[str, int] = {}
    for write in writes:
        newest[write.key] = max(newest.get(write.key, 0), write.version)
    final_stale = sum(1 for read in finals if read.version < newest.get(read.key, 0))
    warmed = [r for a in warm_answers for r in _records(a["reads"], ReadRecord)]
    problems = check_reads(writes, reads + finals + warmed)
    hits, misses = _delta(answers, "l1_hits"), _delta(answers, "l1_misses")
    received = _delta(answers, "messages_received")
    to_holders, delivered = message_totals(answers, settled_answers)
    redis_trips = _delta(answers, "redis_round_trips") or 0
    postgres_trips = _delta(answers, "postgres_round_trips") or 0
    client_cpu = _delta(answers, "client_cpu_us")
    return Cell(
        workload=workload.name,
        system=system,
        agents=agents,
        repetition=repetition,
        ops=ops,
        ops_s=ops / window_s,
        latency_us=latency,
        reads=stale.reads,
        stale_reads=stale.stale,
        stale_max_age_ms=stale.max_age_ms,
        keys_written=len({w.key for a in answers for w in _records(a["writes"], WriteRecord)}),
        final_reads=len(finals),
        final_stale=final_stale,
        l1_lookups=None if hits is None or misses is None else hits + misses,
        l1_hit_rate=None
        if hits is None or misses is None or not hits + misses
        else hits / (hits + misses),
        messages_per_op=None if received is None or not ops else received / ops,
        messages_per_write=None if received is None or not write_ops else received / write_ops,
        messages_to_holders=to_holders,
        messages_delivered=delivered,
        bus_losses=_run_delta(answers, settled_answers, "bus_losses"),
        bus_dropped=_run_delta(answers, settled_answers, "bus_dropped"),
        redis_commands_per_op=(server_commands[1] - server_commands[0]) / max(ops, 1),
        redis_round_trips_per_op=redis_trips / max(ops, 1),
        postgres_round_trips_per_op=postgres_trips / max(ops, 1),
        client_cpu_us_per_op=None if client_cpu is None else client_cpu / max(ops, 1),
        problems=problems[:PROBLEMS_SHOWN]
        + (
            [f"... and {len(problems) - PROBLEMS_SHOWN} more"]
            if len(problems) > PROBLEMS_SHOWN
            else []
        ),
    )


# -- the run -------------------------------------------------------------------------------


@dataclass(slots=True)
class _Resources:
    redis_url: str
    postgres_dsn: str
    prefix: str
    schema: str
    corpus: str
    namespaces: list[str] = field(default_factory=list)
    topology: RedisTopology = RedisTopology.SINGLE_NODE


async def _admin_client(redis_url: str, topology: RedisTopology) -> AdminClient:
    """A client of the harness's own (counters, clean-up): on a cluster, one that reaches every
    node (its slot map loaded), else a plain one."""
    if topology is RedisTopology.CLUSTER:
        cluster = RedisCluster.from_url(redis_url)
        try:
            await cluster.initialize()
        except BaseException:
            await cluster.aclose()
            raise
        return cluster
    return aioredis.Redis.from_url(redis_url)


async def _prepare(resources: _Resources, with_corpus: bool) -> None:
    connection = await asyncpg.connect(resources.postgres_dsn, timeout=30)
    try:
        for statement in uncached_store_ddl(resources.schema):
            await connection.execute(statement)
    finally:
        await connection.close(timeout=30)
    if with_corpus:
        _progress(f"indexing the research corpus ({RESEARCH_DOCS} documents) ...")
        research = next(w for w in WORKLOADS if w.kind == "research")
        async with DRAMTier(
            dsn=resources.postgres_dsn,
            namespace=resources.corpus,
            schema=resources.schema,
            embedder=HashingEmbedder(),
        ) as corpus:
            for index in range(RESEARCH_DOCS):
                await corpus.write(f"{research.name}:doc{index}", research_document(index))


async def _remove(resources: _Resources) -> None:
    """Drop the private schema, the run's L3 rows and its Redis keys."""
    connection = await asyncpg.connect(resources.postgres_dsn, timeout=30)
    try:
        clock = time.monotonic()
        await connection.execute(f'DROP SCHEMA IF EXISTS "{resources.schema}" CASCADE')
        _progress(f"  schema dropped in {time.monotonic() - clock:.1f} s")
        clock = time.monotonic()
        table = await connection.fetchval("SELECT to_regclass('sagemem.l3_entries')::text")
        if table is not None and resources.namespaces:
            await connection.execute(
                "DELETE FROM sagemem.l3_entries WHERE namespace = ANY($1::text[])",
                resources.namespaces,
            )
    finally:
        await connection.close(timeout=30)
    client = await _admin_client(resources.redis_url, resources.topology)
    try:
        # One pass over the keyspace (every node's, on a cluster): every namespace of the run
        # starts with the prefix. A cluster client splits UNLINK by slot.
        batch: list[bytes] = []
        async for raw_key in client.scan_iter(match=f"*{resources.prefix}*", count=1000):
            batch.append(raw_key)
            if len(batch) >= 500:
                await client.unlink(*batch)
                batch.clear()
        if batch:
            await client.unlink(*batch)
    finally:
        await client.aclose()
    _progress(f"  L3 rows and Redis keys removed in {time.monotonic() - clock:.1f} s")


def _concurrency(agents: int) -> int:
    """Operations in flight per agent while storing or warming: the agents together stay
    well below the Postgres server's 100 connections (others use it too)."""
    return max(1, min(8, CONNECTIONS_BUDGET // agents))


async def _run_session(
    pool: AgentPool,
    options: RunOptions,
    resources: _Resources,
    counters: ServerCounters,
    system: str,
    repetition_of: tuple[int, int],
    workloads: list[Workload],
    history: list[WriteRecord],
) -> list[Cell]:
    """Open `system` in every agent (L1s start empty), store the workloads' keys the first
    time, run each workload once (repetition `repetition_of[0]` of `repetition_of[1]`).
    `history` holds every write committed in the system's
    namespace by the earlier repetitions; this one's are added."""
    repetition = repetition_of[0]
    namespace = f"{resources.prefix}-{SYSTEMS.index(system)}-a{pool.count}"
    if namespace not in resources.namespaces:
        resources.namespaces.append(namespace)
    research = any(w.kind == "research" for w in workloads)
    clock = time.monotonic()
    await pool.ask(
        [
            {
                "cmd": "open",
                "system": system,
                "namespace": namespace,
                "redis_url": resources.redis_url,
                "postgres_dsn": resources.postgres_dsn,
                "bench_schema": resources.schema,
                "corpus": resources.corpus if research else None,
            }
        ]
    )
    opened_s, clock = time.monotonic() - clock, time.monotonic()
    keys = [key for workload in workloads for key in workload_keys(workload)]
    if not history:  # the first repetition stores the keys; the next ones find them
        shares = [keys[index :: pool.count] for index in range(pool.count)]
        answers = await pool.ask(
            [
                {"cmd": "prefill", "keys": share, "concurrency": _concurrency(pool.count)}
                for share in shares
            ]
        )
        history += [WriteRecord(*row) for answer in answers for row in answer["writes"]]
    _progress(
        f"{system}: {pool.count} agents opened it in {opened_s:.1f} s, "
        f"{len(keys)} keys stored in {time.monotonic() - clock:.1f} s"
    )
    cells: list[Cell] = []
    for workload in workloads:
        _progress(
            f"{pool.count} agents, repetition {repetition + 1}/{repetition_of[1]}: "
            f"{workload.name} on {system} ..."
        )
        warm = await pool.ask(
            [
                {
                    "cmd": "warm",
                    "keys": workload_keys(workload),
                    "concurrency": _concurrency(pool.count),
                }
            ]
        )
        # Every agent's counters before any agent starts: the messages of the run are counted
        # from here (an agent's own start snapshot can come after a faster agent already sent
        # it a message, which would be counted as sent and never as received).
        base = await pool.ask([{"cmd": "counters"}])
        start_ns = time.monotonic_ns() + int(START_DELAY_S * 1e9)
        commands = [
            {
                "cmd": "run",
                "workload": workload.name,
                "start_ns": start_ns,
                "warmup_s": options.warmup_s,
                "duration_s": options.duration_s,
                "seed": options.seed * 1_000_003 + repetition * 1009 + index,
            }
            for index in range(pool.count)
        ]
        running = asyncio.create_task(pool.ask(commands))
        timed_from_s = (start_ns - time.monotonic_ns()) / 1e9 + options.warmup_s
        await asyncio.sleep(max(0.0, timed_from_s))
        before = await counters.snapshot()
        answers = await running
        after = await counters.snapshot()
        for answer, counted in zip(answers, base, strict=True):
            answer["counters_run_start"] = counted["counters"]
        await asyncio.sleep(SETTLE_S)
        # Only the keys written in the run can be stale once it stopped.
        written = sorted({row[0] for answer in answers for row in answer["writes"]})
        finals = await pool.ask([{"cmd": "final", "keys": written}])
        settled = await _settled_counters(pool, answers)
        key_set = set(workload_keys(workload))
        cell = measure_cell(
            workload,
            system,
            pool.count,
            repetition,
            answers,
            finals,
            [w for w in history if w.key in key_set],
            (before, after),
            warm,
            settled,
        )
        history += [WriteRecord(*row) for answer in answers for row in answer["writes"]]
        _progress(
            f"  {cell.ops} ops, {cell.ops_s:,.0f} ops/s, {cell.stale_reads} stale of "
            f"{cell.reads} reads, {cell.final_stale} stale after the run"
            + (f", {len(cell.problems)} PROBLEMS" if cell.problems else "")
        )
        cells.append(cell)
    clock = time.monotonic()
    await pool.ask([{"cmd": "close"}])
    _progress(f"{system}: closed in {time.monotonic() - clock:.1f} s")
    return cells


async def _settled_counters(pool: AgentPool, answers: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every agent's counters once the agents have received every message the relays sent to
    holders during the run (or `MESSAGES_SETTLE_S` passed: pub/sub delivers at most once, and
    a message still missing then is reported as such)."""
    deadline = time.monotonic() + MESSAGES_SETTLE_S
    while True:
        settled = await pool.ask([{"cmd": "counters"}])
        sent, received = message_totals(answers, settled)
        if sent is None or sent == received or time.monotonic() >= deadline:
            return settled
        await asyncio.sleep(0.05)


async def _environment(resources: _Resources) -> dict[str, str]:
    client = aioredis.Redis.from_url(resources.redis_url)
    try:
        info = await client.info("server")
    finally:
        await client.aclose()
    connection = await asyncpg.connect(resources.postgres_dsn, timeout=30)
    try:
        postgres_version = str(await connection.fetchval("SHOW server_version"))
    finally:
        await connection.close(timeout=30)
    redis_version = str(info.get("valkey_version") or info.get("redis_version") or "unknown")
    redis_server = f"{info.get('server_name', 'redis')} {redis_version}"
    if resources.topology is RedisTopology.CLUSTER:
        cluster = await _admin_client(resources.redis_url, resources.topology)
        try:
            assert isinstance(cluster, RedisCluster)
            primaries = len(cluster.get_primaries())
            replicas = len(cluster.get_replicas())
        finally:
            await cluster.aclose()
        redis_server += f", a cluster of {primaries} primaries and {replicas} replicas"
    return {
        "python": platform.python_version(),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores (shared)",
        "redis_server": redis_server,
        "postgres_server": postgres_version,
    }


async def run(options: RunOptions) -> dict[str, Any]:
    """Run every selected workload on every selected system; the results as JSON data."""
    started = time.monotonic()
    _progress("finding or starting Redis and Postgres ...")
    redis_url = await asyncio.to_thread(resolve_redis_url, None)
    postgres_dsn = await asyncio.to_thread(resolve_postgres_dsn, None)
    try:
        topology = await detect_redis_topology_at(redis_url)
    except SageMemError as error:  # the server does not answer, or the URL is not one
        raise BenchmarkFailure(f"the Redis server at SAGEMEM_REDIS_URL: {error}") from error
    token = secrets.token_hex(4)
    resources = _Resources(
        redis_url=redis_url,
        postgres_dsn=postgres_dsn,
        prefix=f"bench-all-{token}",
        schema=f"bench_all_{token}",
        corpus=f"bench-all-{token}-corpus",
        topology=topology,
    )
    environment = await _environment(resources)
    selected = [w for w in WORKLOADS if w.name in options.workloads]
    scaling_workload = next(w for w in WORKLOADS if w.name == SCALING_WORKLOAD)
    plan: list[tuple[int, list[Workload]]] = [(options.agents, selected)]
    plan += [(count, [scaling_workload]) for count in options.scaling]
    histories: dict[tuple[int, str], list[WriteRecord]] = defaultdict(list)
    cells: list[Cell] = []
    counters = ServerCounters(redis_url, topology)
    try:
        await _prepare(resources, any(w.kind == "research" for w in selected))
        await counters.connect()
        for agents, workloads in plan:
            _progress(f"starting {agents} agent processes ...")
            pool = AgentPool(agents, options.out / "logs")
            try:
                await pool.start()
                repetitions = (
                    options.repetitions if agents == options.agents else options.scaling_repetitions
                )
                for repetition in range(repetitions):
                    shift = repetition % len(options.systems)
                    order = options.systems[shift:] + options.systems[:shift]
                    for system in order:
                        cells += await _run_session(
                            pool,
                            options,
                            resources,
                            counters,
                            system,
                            (repetition, repetitions),
                            workloads,
                            histories[(agents, system)],
                        )
            finally:
                await pool.aclose()
    finally:
        _progress("dropping the run's schema, rows and Redis keys ...")
        await counters.aclose()
        await _remove(resources)
    return {
        "benchmark": "run_all",
        "options": {
            **asdict(options),
            "out": str(options.out),
            "workloads": list(options.workloads),
            "systems": list(options.systems),
            "scaling": list(options.scaling),
        },
        "environment": environment,
        "baseline": BASELINE,
        "elapsed_s": round(time.monotonic() - started, 1),
        "cells": [asdict(cell) for cell in cells],
        "summary": summarise_cells(cells),
    }


def _spread(values: list[float]) -> dict[str, float]:
    return {
        "median": float(statistics.median(values)),
        "min": float(min(values)),
        "max": float(max(values)),
    }


def _median_of(values: Iterable[float | None]) -> float | None:
    """The median of the values counted, or None if none was."""
    counted = [v for v in values if v is not None]
    return float(statistics.median(counted)) if counted else None


def _total(values: Iterable[int | None]) -> int | None:
    """The sum, or None if any cell did not count it."""
    counted = list(values)
    if not counted or any(v is None for v in counted):
        return None
    return sum(v for v in counted if v is not None)


def summarise_cells(cells: Sequence[Cell]) -> list[dict[str, Any]]:
    """Per (workload, agents, system): median and min-max over the repetitions, and the ratio
    of its ops/s to the baseline's in the same repetition."""
    groups: dict[tuple[str, int, str], list[Cell]] = defaultdict(list)
    for cell in cells:
        groups[(cell.workload, cell.agents, cell.system)].append(cell)
    baseline_ops = {
        (cell.workload, cell.agents, cell.repetition): cell.ops_s
        for cell in cells
        if cell.system == BASELINE
    }
    summary: list[dict[str, Any]] = []
    for (workload, agents, system), group in groups.items():
        ratios = [
            cell.ops_s / baseline_ops[(workload, agents, cell.repetition)]
            for cell in group
            if baseline_ops.get((workload, agents, cell.repetition))
        ]
        kinds = sorted({kind for cell in group for kind in cell.latency_us})
        hit_rates = [c.l1_hit_rate for c in group if c.l1_hit_rate is not None]
        messages = [c.messages_per_op for c in group if c.messages_per_op is not None]
        per_write = [c.messages_per_write for c in group if c.messages_per_write is not None]
        summary.append(
            {
                "workload": workload,
                "agents": agents,
                "system": system,
                "repetitions": len(group),
                "ops_s": _spread([c.ops_s for c in group]),
                "ratio_vs_baseline": _spread(ratios) if ratios else None,
                "latency_us": {
                    kind: {
                        quantile: float(
                            statistics.median(
                                c.latency_us[kind][quantile] for c in group if kind in c.latency_us
                            )
                        )
                        for quantile in ("p50", "p99")
                    }
                    for kind in kinds
                },
                "reads": sum(c.reads for c in group),
                "stale_reads": sum(c.stale_reads for c in group),
                "stale_max_age_ms": max(c.stale_max_age_ms for c in group),
                "final_reads": sum(c.final_reads for c in group),
                "final_stale": sum(c.final_stale for c in group),
                "l1_hit_rate": statistics.median(hit_rates) if hit_rates else None,
                "messages_per_op": statistics.median(messages) if messages else None,
                "messages_per_write": statistics.median(per_write) if per_write else None,
                "messages_to_holders": _total(c.messages_to_holders for c in group),
                "messages_delivered": _total(c.messages_delivered for c in group),
                "bus_losses": _total(c.bus_losses for c in group),
                "bus_dropped": _total(c.bus_dropped for c in group),
                "redis_commands_per_op": statistics.median(c.redis_commands_per_op for c in group),
                "redis_round_trips_per_op": statistics.median(
                    c.redis_round_trips_per_op for c in group
                ),
                "postgres_round_trips_per_op": statistics.median(
                    c.postgres_round_trips_per_op for c in group
                ),
                "client_cpu_us_per_op": _median_of(c.client_cpu_us_per_op for c in group),
                "problems": sum(len(c.problems) for c in group),
            }
        )
    return summary


def main(argv: Sequence[str] | None = None) -> int:
    """Parse the options, run, write `results.json`, `report.md` and the plots; exit status."""
    try:
        options = parse_options(argv)
    except BenchmarkOptionError as error:
        print(f"run_all: {error}", file=sys.stderr)
        return 2
    from benchmarks.agent_report import write_report

    options.out.mkdir(parents=True, exist_ok=True)
    _progress(
        f"run_all ({options.profile}): {len(options.workloads)} workloads x "
        f"{len(options.systems)} systems x {options.repetitions} repetitions, "
        f"{options.agents} agents (scaling: {list(options.scaling) or 'none'}), "
        f"{options.warmup_s} s warm-up + {options.duration_s} s per run; results in "
        f"{options.out}"
    )
    try:
        results = asyncio.run(run(options))
    except BenchmarkOptionError as error:  # found once the servers were known
        print(f"run_all: {error}", file=sys.stderr)
        return 2
    except BenchmarkFailure as error:
        _progress(f"run_all failed: {error}")
        return 1
    (options.out / "results.json").write_text(json.dumps(results, indent=1))
    report = write_report(results, options.out)
    _progress(f"wrote {options.out / 'results.json'} and {report} in {results['elapsed_s']} s")
    problems = sum(entry["problems"] for entry in results["summary"])
    if problems:
        _progress(f"{problems} inconsistent reads: see the report's Problems section")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
