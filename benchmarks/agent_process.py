"""One agent process of `benchmarks.run_all`: it opens a system and runs workloads on command.

    python -m benchmarks.agent_process --agent-index N

The coordinator (`benchmarks.run_all`) talks to it in JSON lines: one command on stdin, one
answer on stdout (`{"ok": true, ...}`, or `{"ok": false, "error": ...}` after which the
process exits). Commands:

- `open`: open a system (`benchmarks.agent_systems.open_system`), and the shared search
  corpus (a `DRAMTier`) when given;
- `prefill`: write the given keys (their first versions), answering with the write records;
- `warm`: read the given keys once (untimed), answering with the read records;
- `run`: wait for `start_ns` (`time.monotonic_ns`, one clock for every process of a Linux
  machine), do the workload's operations untimed until the warm-up ends, then timed until the
  deadline (at least one timed operation, even if it starts after the deadline); answer
  with per-kind counts and latencies and every read and write record;
- `final`: read the given keys once more (no agent writes any more), answering with the
  records;
- `close`, `quit`.

Every read and write of the run is recorded (key, version, value tag, when), so the
coordinator can count stale reads and check every value read against the write that
committed it, outside the timed path.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import json
import logging
import os
import random
import sys
import time
from collections import defaultdict
from collections.abc import Sequence
from typing import Any, Final

from benchmarks import round_trips
from benchmarks.agent_systems import AgentSystem, UncachedPostgresSystem, open_system
from benchmarks.agent_workloads import (
    WORKLOADS,
    Operation,
    OperationStream,
    research_document,
    tag_of,
)
from sagemem.embedding import HashingEmbedder
from sagemem.tiers.dram import DRAMTier
from sagemem.values import JSONValue

__all__ = ["main"]

FILLER: Final = "a belief with enough words to look like an agent's note about its task " * 2
SEARCH_HITS: Final = 2

type Record = list[Any]


def _say(answer: dict[str, object]) -> None:
    sys.stdout.write(json.dumps(answer, separators=(",", ":")) + "\n")
    sys.stdout.flush()


def _counter_increment(current: JSONValue) -> JSONValue:
    return (current if isinstance(current, int) else 0) + 1


class Agent:
    """The agent's state between commands: its index, its open system and corpus."""

    def __init__(self, index: int) -> None:
        self.index: Final = index
        self.system: AgentSystem | None = None
        self.corpus: DRAMTier | None = None
        self._seq = 0

    def _value(self, key: str) -> dict[str, JSONValue]:
        self._seq += 1
        return {"tag": f"a{self.index}:{self._seq}", "key": key, "text": FILLER}

    async def open(self, command: dict[str, Any]) -> dict[str, object]:
        await self.close()
        self.system = await open_system(
            command["system"],
            namespace=command["namespace"],
            agent_id=f"agent-{self.index}",
            redis_url=command["redis_url"],
            postgres_dsn=command["postgres_dsn"],
            bench_schema=command["bench_schema"],
        )
        corpus = command.get("corpus")
        if corpus:
            self.corpus = DRAMTier(
                dsn=command["postgres_dsn"],
                namespace=corpus,
                schema=command["bench_schema"],
                embedder=HashingEmbedder(),
                pool_size_max=2,
            )
            await self.corpus.connect()
        return {}

    async def prefill(self, command: dict[str, Any]) -> dict[str, object]:
        system = self._system()
        writes: list[Record] = []
        slots = asyncio.Semaphore(self._concurrency(command))

        async def store(key: str) -> None:
            value: JSONValue
            if ":doc" in key:
                value = {"tag": f"p:{key}", "text": research_document(int(key.rsplit("doc")[1]))}
            elif key.startswith("counter:"):
                value = 0
            else:
                value = {"tag": f"p:{key}", "key": key, "text": FILLER}
            async with slots:
                version = await system.write(key, value)
            writes.append([key, version, time.monotonic_ns(), tag_of(value)])

        await asyncio.gather(*(store(key) for key in command["keys"]))
        return {"writes": writes}

    async def run(self, command: dict[str, Any]) -> dict[str, object]:
        self._system()  # fails early when nothing is open
        workload = next(w for w in WORKLOADS if w.name == command["workload"])
        stream = OperationStream(workload, random.Random(command["seed"]))
        start_ns: int = command["start_ns"]
        timed_from_ns = start_ns + int(command["warmup_s"] * 1e9)
        deadline_ns = timed_from_ns + int(command["duration_s"] * 1e9)
        reads: list[Record] = []
        writes: list[Record] = []
        latency_us: dict[str, list[float]] = defaultdict(list)
        ops: dict[str, int] = defaultdict(int)
        clock = time.monotonic_ns
        delay_s = (start_ns - clock()) / 1e9
        if delay_s > 0:
            await asyncio.sleep(delay_s)
        counters_run_start = self.counters()
        counters_timed: dict[str, int] | None = None
        timed_start_ns = 0
        last_end_ns = 0
        while True:
            now = clock()
            # An agent whose operations outlast the whole timed window still does one timed
            # operation (after the deadline), so that a slow system measures as slow, not 0.
            if now >= deadline_ns and counters_timed is not None:
                break
            timed = now >= timed_from_ns
            if timed and counters_timed is None:
                counters_timed = self.counters()
                timed_start_ns = now
            pending = [stream.next()]
            while pending:
                operation = pending.pop()
                started = clock()
                hits = await self._do(operation, reads, writes, started)
                ended = clock()
                if timed:
                    ops[operation.kind] += 1
                    latency_us[operation.kind].append((ended - started) / 1000)
                    last_end_ns = ended
                pending += [Operation("read", key) for key in reversed(hits)]
        return {
            "ops": ops,
            "latency_us": latency_us,
            "reads": reads,
            "writes": writes,
            "counters_run_start": counters_run_start,
            "counters_timed_start": counters_timed,
            "counters_end": self.counters(),
            "timed_start_ns": timed_start_ns,
            "last_end_ns": last_end_ns,
        }

    async def _do(
        self, operation: Operation, reads: list[Record], writes: list[Record], started: int
    ) -> list[str]:
        """Do `operation`, record it; return the keys a search found (to be read next)."""
        system = self._system()
        key = operation.key
        if operation.kind == "read":
            entry = await system.read(key)
            if entry is None:
                reads.append([key, started, -1, "absent"])
            else:
                version = -2 if entry.version is None else entry.version  # -2: unversioned
                reads.append([key, started, version, tag_of(entry.value)])
        elif operation.kind == "write":
            value = self._value(key)
            version = await system.write(key, value)
            writes.append([key, version, time.monotonic_ns(), tag_of(value)])
        elif operation.kind == "update":
            version, committed = await system.update(key, _counter_increment)
            writes.append([key, version, time.monotonic_ns(), tag_of(committed)])
        else:
            if self.corpus is None:
                raise RuntimeError("a search workload ran without the corpus opened")
            hits = await self.corpus.search(operation.query, limit=SEARCH_HITS)
            return [hit.key for hit in hits]
        return []

    async def final(self, command: dict[str, Any]) -> dict[str, object]:
        reads: list[Record] = []
        for key in command["keys"]:
            await self._do(Operation("read", key), reads, [], time.monotonic_ns())
        return {"reads": reads}

    async def warm(self, command: dict[str, Any]) -> dict[str, object]:
        """Read every given key once, a few at a time: a long-running agent's cache holds
        what it read before, so the timed run starts from there, not from an empty L1."""
        self._system()  # fails early when nothing is open
        reads: list[Record] = []
        slots = asyncio.Semaphore(self._concurrency(command))

        async def read(key: str) -> None:
            async with slots:
                await self._do(Operation("read", key), reads, [], time.monotonic_ns())

        await asyncio.gather(*(read(key) for key in command["keys"]))
        return {"reads": reads}

    def _concurrency(self, command: dict[str, Any]) -> int:
        """How many operations of a `prefill` or `warm` may run at once: one asyncpg
        connection serves one statement at a time; a hierarchy opens a Postgres connection
        per concurrent miss, and all agents share the server's ~100 connections."""
        if isinstance(self._system(), UncachedPostgresSystem):
            return 1
        return max(1, int(command.get("concurrency", 1)))

    async def counters_command(self, command: dict[str, Any]) -> dict[str, object]:
        """The counters now (the coordinator asks after a run, until the messages settle)."""
        del command
        return {"counters": self.counters()}

    def counters(self) -> dict[str, int]:
        """The system's cache counters and this process's round trips so far."""
        return {
            **self._system().counters(),
            **round_trips.counts(),
            "client_cpu_us": time.process_time_ns() // 1000,  # this agent process's CPU
        }

    def _system(self) -> AgentSystem:
        if self.system is None:
            raise RuntimeError("no system is open: send `open` first")
        return self.system

    async def close(self) -> dict[str, object]:
        system, self.system = self.system, None
        corpus, self.corpus = self.corpus, None
        if system is not None:
            await system.aclose()
        if corpus is not None:
            await corpus.aclose()
        return {}


async def _serve(index: int) -> int:
    agent = Agent(index)
    loop = asyncio.get_running_loop()
    _say({"ok": True, "ready": index})
    try:
        while True:
            line = await loop.run_in_executor(None, sys.stdin.readline)
            if not line.strip():
                return 0  # the coordinator went away
            command = json.loads(line)
            name = command["cmd"]
            if name == "quit":
                return 0
            try:
                handler = {
                    "open": agent.open,
                    "prefill": agent.prefill,
                    "run": agent.run,
                    "final": agent.final,
                    "warm": agent.warm,
                    "counters": agent.counters_command,
                }.get(name)
                answer = await (handler(command) if handler else agent.close())
            except Exception as error:
                _say({"ok": False, "error": f"agent {index}, {name}: {error!r}"})
                return 1
            _say({"ok": True, **answer})
    finally:
        await agent.close()


PROFILE_VARIABLE = "SAGEMEM_BENCH_PROFILE_DIR"
"""Set to a folder to profile every agent process's CPU there (diagnosis only)."""


def main(argv: Sequence[str] | None = None) -> int:
    """Serve the coordinator's commands until `quit` or end of input; the exit status."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--agent-index", type=int, required=True)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    round_trips.install()
    profile_dir = os.environ.get(PROFILE_VARIABLE)
    if not profile_dir:
        return asyncio.run(_serve(args.agent_index))
    # Where an agent's CPU goes: a CPU-time profile of the whole process, one file per agent
    # (`python -m pstats <dir>/agent-<i>.prof`). Profiling slows the agent: never in a run
    # whose numbers are reported.
    profiler = cProfile.Profile(time.process_time)
    try:
        return profiler.runcall(asyncio.run, _serve(args.agent_index))
    finally:
        profiler.dump_stats(os.path.join(profile_dir, f"agent-{args.agent_index}.prof"))


if __name__ == "__main__":
    raise SystemExit(main())
