"""One agent process of the multi-process history tests: random operations on hot keys, recorded.

Run as `python -m tests.integration.history_worker --agent A --mode strict|coherent|plain
--namespace NS --schema S --redis URL --dsn DSN --keys k0,k1,k2 --seconds 3 --seed N --out FILE
[--mix 45,23,22,10,0] [--coordinate]`. The agent opens its own `CoherenceBus` and
`CoherentL1Tier` (home: an `L3Tier` on DSN, schema S) and, for SECONDS, does random operations
on random hot keys, in the proportions of `--mix`, each recorded by a `HistoryRecorder`
streaming to FILE (an operation the agent never finishes, e.g. because the process died, loads
as `Unknown`):

- `read` (`ReadHit(value, version)` or `ReadMiss`);
- `write`: `write_through` of a value unique to this agent (`Written(version)`);
- `cas`: `compare_and_swap` against the version this agent last saw (`Written`/`CasConflict`);
- `delete` (`Deleted(version)` if it deleted a live value, `Deleted(None)` if the key was
  absent; see `_Agent.delete` for where the version comes from);
- `set`: a write at L1 (ownership), recorded as a write at the version the home reserved.

`set` is 0 in the default mix. Each `set` names a version of its own (an owner's new local
write reserves one under its grant), and its value reaches the home when it is written back
(recalled, evicted or closed); a reader recalls the owner first, so histories with `set` are
still those of a versioned register.

Mode `plain` is the negative control: a reader whose L1 is a plain `L1Tier` in a
`MemoryHierarchy([L1Tier(), L3Tier])` beside the coherent agents; nothing ever invalidates it,
so once it has cached a version it keeps serving it. It only reads, and it has no L2: a plain
hierarchy promotes a home hit into L2 without a fill lease, so a slow promotion could put back
an old version that a write had just deleted, and the strict agents would then fill it from L2
(most likely what happened once, seed 164097056: a strict read returned version 1 after version
2's write had returned). Mixing a plain hierarchy into a coherent namespace is outside the
protocol; the control must only observe, never change, what the protocol agents see.

With `--coordinate` the agent synchronises with the test through its standard streams: it
prints `ready` once connected and waits for `go` on stdin; after the workload it prints
`stopped <summary JSON>` and waits for `final`; then it reads every key once more (recorded
too: by then no agent writes any more, so each must see the home's final value), prints
`done <summary JSON>` and exits 0. Without it the phases follow each other at once.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import logging
import random
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Final

from sagemem.coherence.bus import CoherenceBus
from sagemem.coherence.core import TraceRecord
from sagemem.coherence.home import CommitAnswer, HomeStore
from sagemem.errors import SageMemError, TierUnavailable, VersionConflict
from sagemem.hierarchy import MemoryHierarchy
from sagemem.spec.vocabulary import Event, Guard
from sagemem.tiers.base import TierEntry
from sagemem.tiers.l1 import L1Tier
from sagemem.tiers.l1_coherent import CoherentL1Tier
from sagemem.tiers.l3 import L3Tier
from sagemem.values import JSONValue
from sagemem.verify.history import HistoryRecorder, PendingOperation

READY: Final = "ready"
GO: Final = "go"
STOPPED: Final = "stopped"
FINAL: Final = "final"
DONE: Final = "done"
MODES: Final = ("strict", "coherent", "plain")

OPERATIONS: Final = ("read", "write", "cas", "delete", "set")
DEFAULT_MIX: Final = "45,23,22,10,0"
# A plain reader's L1 hits never yield to the event loop: pause between its reads, so that it
# does not take a whole core from the agents it runs beside (pacing, not synchronisation).
_PLAIN_READ_PAUSE_S: Final = 0.001
_OPERATION_TIMEOUT_S: Final = 10.0
_COMMAND_TIMEOUT_S: Final = 120.0


class WorkerError(SageMemError, RuntimeError):
    """The worker got an answer it cannot record faithfully (one the protocol should not give)."""


def _say(*words: str) -> None:
    print(*words, flush=True)


class _CommitCapture:
    """A tracer catching the version the home committed for one key's write-through.

    `CoherentL1Tier.delete` only says whether the key held a value; the committed version is in
    the HOME_COMMIT event the tier feeds its core. The agent runs one operation at a time, so
    while it deletes `key`, the only commit of `key` it can trace is that delete's.
    """

    def __init__(self, key: str) -> None:
        self.key = key
        self.version: int | None = None

    def __call__(self, record: TraceRecord) -> None:
        if (
            record.key == self.key
            and record.event is Event.HOME_COMMIT
            and record.payload.branch is Guard.NOT_OWNED_BY_OTHER
            and record.payload.version is not None
        ):
            self.version = record.payload.version


@dataclasses.dataclass
class _Summary:
    agent: str
    mode: str
    outcomes: Counter[str] = dataclasses.field(default_factory=Counter)
    errors: list[str] = dataclasses.field(default_factory=list)
    # Versions of tombstones committed by deletes of keys already absent (recorded in the
    # history as "nothing to delete", since the register model does not version them).
    absent_deletes: defaultdict[str, list[int]] = dataclasses.field(
        default_factory=lambda: defaultdict(list)
    )
    final: dict[str, list[JSONValue] | None] = dataclasses.field(default_factory=dict)
    statistics: dict[str, JSONValue] = dataclasses.field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(
            {
                "agent": self.agent,
                "mode": self.mode,
                "outcomes": dict(self.outcomes),
                "errors": self.errors,
                "absent_deletes": dict(self.absent_deletes),
                "final": self.final,
                "statistics": self.statistics,
            },
            separators=(",", ":"),
        )


class _Agent:
    """The workload of one agent over a coherent L1 (or, in mode `plain`, a plain hierarchy)."""

    def __init__(
        self,
        arguments: argparse.Namespace,
        recorder: HistoryRecorder,
        l1: CoherentL1Tier | None,
        plain: MemoryHierarchy | None,
    ) -> None:
        self.keys: list[str] = arguments.keys
        self.recorder = recorder
        self.l1 = l1
        self.plain = plain
        self.random = random.Random(arguments.seed)
        self.summary = _Summary(agent=arguments.agent, mode=arguments.mode)
        self.last_seen: dict[str, int | None] = {}
        self._written = 0
        self.mix: list[float] = arguments.mix
        self.reopen_every: int = arguments.reopen_every
        # Closes the L1 (writing owned entries back) and returns a new incarnation's, started.
        self.reopen: Callable[[], Awaitable[CoherentL1Tier]] | None = None
        self.reopened = 0

    def _next_value(self) -> str:
        self._written += 1
        return f"{self.recorder.agent_id}:{self._written}"

    def _count(self, pending: PendingOperation) -> None:
        operation = pending.operation
        if operation is not None:
            self.summary.outcomes[f"{operation.kind}:{type(operation.outcome).__name__}"] += 1

    async def _read_entry(self, key: str) -> TierEntry | None:
        if self.l1 is not None:
            return await self.l1.read(key)
        assert self.plain is not None
        return await self.plain.read(key)

    async def read(self, key: str) -> TierEntry | None:
        async with self.recorder.read(key) as pending:
            entry = await self._read_entry(key)
            if entry is None:
                pending.miss()
                self.last_seen[key] = None
            else:
                if entry.version is None:
                    raise WorkerError(f"read of {key!r} returned {entry!r} without a version")
                pending.hit(entry.value, entry.version)
                self.last_seen[key] = entry.version
        self._count(pending)
        return entry

    async def write(self, key: str) -> None:
        assert self.l1 is not None
        value = self._next_value()
        async with self.recorder.write(key, value) as pending:
            pending.written(await self.l1.write_through(key, value))
        self._count(pending)

    async def compare_and_swap(self, key: str) -> None:
        assert self.l1 is not None
        value = self._next_value()
        expected = self.last_seen.get(key)
        pending = self.recorder.cas(key, value, expected)
        try:
            async with pending:
                pending.written(await self.l1.compare_and_swap(key, value, expected))
        except VersionConflict as conflict:
            # Recorded as CasConflict(actual) by the recorder: the store answered.
            self.last_seen[key] = conflict.actual
        self._count(pending)

    async def set(self, key: str) -> None:
        """A write at L1 (ownership), recorded with the version the home reserved for it."""
        assert self.l1 is not None
        value = self._next_value()
        async with self.recorder.write(key, value) as pending:
            version = await self.l1.set(key, value)
            if version is None:
                raise WorkerError(f"set of {key!r} returned no reserved version")
            pending.written(version)
        self._count(pending)
        self.summary.outcomes["set"] += 1  # recorded as a write: count the sets among them

    async def delete(self, key: str) -> None:
        """Delete `key`, recording the tombstone's version (traced from the commit)."""
        l1 = self.l1
        assert l1 is not None
        capture = _CommitCapture(key)
        l1.core.tracer = capture
        try:
            async with self.recorder.delete(key) as pending:
                existed = await l1.delete(key)
                if capture.version is None:
                    raise WorkerError(f"delete of {key!r} returned without a traced commit")
                if existed:
                    pending.deleted(capture.version)
                else:
                    pending.deleted(None)
                    self.summary.absent_deletes[key].append(capture.version)
        finally:
            l1.core.tracer = None
        self._count(pending)

    async def workload(self, seconds: float) -> None:
        """Random operations on random hot keys until `seconds` have passed (or one fails)."""
        deadline = time.monotonic() + seconds
        done = 0
        try:
            while time.monotonic() < deadline:
                done += 1
                if self.reopen is not None and self.reopen_every and done % self.reopen_every == 0:
                    self.l1 = await self.reopen()
                    self.reopened += 1
                key = self.random.choice(self.keys)
                if self.l1 is None:
                    await self.read(key)
                    await asyncio.sleep(_PLAIN_READ_PAUSE_S)
                    continue
                match self.random.choices(OPERATIONS, weights=self.mix)[0]:
                    case "read":
                        await self.read(key)
                    case "write":
                        await self.write(key)
                    case "cas":
                        await self.compare_and_swap(key)
                    case "delete":
                        await self.delete(key)
                    case _:
                        await self.set(key)
        except Exception as error:  # recorded as Unknown; reported, and the agent stops
            self.summary.errors.append(f"workload: {type(error).__name__}: {error}")

    async def final_reads(self) -> None:
        """Read every key once more (after every agent stopped writing)."""
        for key in self.keys:
            try:
                entry = await self.read(key)
            except Exception as error:  # recorded as Unknown; reported
                self.summary.errors.append(f"final read: {type(error).__name__}: {error}")
                continue
            self.summary.final[key] = None if entry is None else [entry.value, entry.version]


def _parse_mix(text: str) -> list[float]:
    weights = [float(weight) for weight in text.split(",")]
    if len(weights) != len(OPERATIONS) or min(weights) < 0 or sum(weights) <= 0:
        raise argparse.ArgumentTypeError(
            f"--mix needs {len(OPERATIONS)} non-negative weights ({', '.join(OPERATIONS)}) "
            f"that are not all 0, e.g. {DEFAULT_MIX}; got {text!r}"
        )
    return weights


def parse_arguments(argv: list[str]) -> argparse.Namespace:
    """The command line described in the module docstring."""
    parser = argparse.ArgumentParser(prog="history_worker", description=__doc__)
    parser.add_argument("--agent", required=True)
    parser.add_argument("--mode", required=True, choices=MODES)
    parser.add_argument("--namespace", required=True)
    parser.add_argument("--schema", required=True)
    parser.add_argument("--redis", required=True, help="the Redis URL")
    parser.add_argument("--dsn", required=True, help="the Postgres DSN")
    parser.add_argument(
        "--keys", required=True, type=lambda text: [k for k in text.split(",") if k]
    )
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--mix",
        type=_parse_mix,
        default=_parse_mix(DEFAULT_MIX),
        help=f"relative weights of {', '.join(OPERATIONS)} (default {DEFAULT_MIX})",
    )
    parser.add_argument("--out", required=True, type=Path, help="the JSON-lines history file")
    parser.add_argument("--coordinate", action="store_true", help="ready/go/stopped/final/done")
    parser.add_argument(
        "--reopen-every",
        type=int,
        default=0,
        help="close the L1 and start a new incarnation after every N operations (0: never)",
    )
    parser.add_argument(
        "--lose-replies",
        type=float,
        default=0.0,
        help="probability that a commit's reply is lost after the commit took effect",
    )
    return parser.parse_args(argv)


def _lossy_home(probability: float, seed: int) -> Callable[[L3Tier], HomeStore]:
    """The home's statements, losing each commit's reply with `probability` after the commit
    took effect (as a connection dropped after COMMIT): the agent must learn the outcome."""
    chance = random.Random(seed ^ 0x5A5A)

    class LossyHome(HomeStore):
        async def commit(
            self, key: str, value: JSONValue, me: str, operation_id: str
        ) -> CommitAnswer:
            return self._lose(await super().commit(key, value, me, operation_id))

        async def commit_if(
            self, key: str, value: JSONValue, me: str, expected: int | None, operation_id: str
        ) -> CommitAnswer:
            return self._lose(await super().commit_if(key, value, me, expected, operation_id))

        def _lose(self, answer: CommitAnswer) -> CommitAnswer:
            if chance.random() < probability:
                raise TierUnavailable("a commit's reply was lost (injected)", tier="L3")
            return answer

    return LossyHome


async def _await_command(expected: str, coordinate: bool) -> None:
    if not coordinate:
        return
    async with asyncio.timeout(_COMMAND_TIMEOUT_S):
        line = await asyncio.to_thread(sys.stdin.readline)
    if line.strip() != expected:
        raise WorkerError(f"expected the command {expected!r} on stdin, got {line!r}")


async def _drive(agent: _Agent, arguments: argparse.Namespace) -> None:
    _say(READY)
    await _await_command(GO, arguments.coordinate)
    await agent.workload(arguments.seconds)
    _say(STOPPED, agent.summary.to_json())
    await _await_command(FINAL, arguments.coordinate)
    await agent.final_reads()


async def run(arguments: argparse.Namespace) -> int:
    """Connect, run the phases, close; print the summary with `done`."""
    home = L3Tier(dsn=arguments.dsn, namespace=arguments.namespace, schema=arguments.schema)
    with HistoryRecorder(arguments.agent, path=arguments.out) as recorder:
        if arguments.mode == "plain":
            plain = MemoryHierarchy(
                [L1Tier(), home],
                owns_tiers=True,
            )
            agent = _Agent(arguments, recorder, None, plain)
            await plain.connect()
            try:
                await _drive(agent, arguments)
            finally:
                await plain.aclose()
        else:
            async with CoherenceBus(url=arguments.redis, namespace=arguments.namespace) as bus:

                def new_l1() -> CoherentL1Tier:
                    return CoherentL1Tier(
                        agent_id=arguments.agent,
                        bus=bus,
                        mode=arguments.mode,
                        home=home,
                        operation_timeout_s=_OPERATION_TIMEOUT_S,
                        home_steps=_lossy_home(arguments.lose_replies, arguments.seed),
                    )

                closed: list[CoherentL1Tier] = []
                agent = _Agent(arguments, recorder, new_l1(), None)

                async def reopen() -> CoherentL1Tier:
                    assert agent.l1 is not None
                    await agent.l1.aclose()
                    closed.append(agent.l1)
                    fresh = new_l1()
                    await fresh.start()
                    return fresh

                agent.reopen = reopen
                try:
                    assert agent.l1 is not None
                    await agent.l1.start()
                    await _drive(agent, arguments)
                finally:
                    if agent.l1 is not None:
                        await agent.l1.aclose()
                    await home.aclose()
                totals: Counter[str] = Counter()
                for tier in (*closed, agent.l1):
                    if tier is not None:
                        for name, value in dataclasses.asdict(tier.statistics()).items():
                            if type(value) is int:
                                totals[name] += value
                totals["reopened"] = agent.reopened
                agent.summary.statistics = dict(totals)
    _say(DONE, agent.summary.to_json())
    return 0


def main() -> None:
    """Entry point of `python -m tests.integration.history_worker`."""
    logging.basicConfig(
        level=logging.WARNING, stream=sys.stderr, format="%(relativeCreated)d %(name)s %(message)s"
    )
    sys.exit(asyncio.run(run(parse_arguments(sys.argv[1:]))))


if __name__ == "__main__":
    main()
