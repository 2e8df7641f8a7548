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

With `--script PATH` the agent runs exactly the operations of a JSON script instead of random
ones (the model-based test draws them; see `load_script` for the format), over a hierarchy as
`sagemem.connect(agent_id=...)` builds it (`CoherentL1Tier`, `L2Tier`, `L3Tier`, owning its
tiers and a bus of its own): `get`, `set` at tier 0, 1 or 2, `cas` against the version the agent
last saw or a given one, `delete`, `update`, `reopen` (leave the hierarchy's `async with` and
open a new one) and `mark` (print `mark`, wait for `resume` on stdin: the test restarts Redis
there). It stops at its first failure, like the random workload.

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
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Final

from sagemem.coherence.bus import CoherenceBus
from sagemem.coherence.core import Tracer, TraceRecord
from sagemem.coherence.home import CommitAnswer, HomeStore
from sagemem.errors import SageMemError, TierUnavailable, VersionConflict
from sagemem.hierarchy import MemoryHierarchy
from sagemem.spec.vocabulary import Event, Guard
from sagemem.tiers.base import TierEntry
from sagemem.tiers.l1 import L1Tier
from sagemem.tiers.l1_coherent import CoherentL1Tier
from sagemem.tiers.l2 import L2Tier
from sagemem.tiers.l3 import L3Tier
from sagemem.values import JSONValue
from sagemem.verify.history import HistoryRecorder, PendingOperation

READY: Final = "ready"
GO: Final = "go"
STOPPED: Final = "stopped"
FINAL: Final = "final"
DONE: Final = "done"
MARK: Final = "mark"
RESUME: Final = "resume"
MODES: Final = ("strict", "coherent", "plain")

OPERATIONS: Final = ("read", "write", "cas", "delete", "set")
SCRIPT_OPERATIONS: Final = ("get", "set", "cas", "delete", "update", "reopen", "mark")
# `cas` with this expected version compares against the version the agent last saw of the key
# (None, "must not exist", if it has seen none or a miss).
LAST_SEEN: Final = "last"
DEFAULT_MIX: Final = "45,23,22,10,0"
# A plain reader's L1 hits never yield to the event loop: pause between its reads, so that it
# does not take a whole core from the agents it runs beside (pacing, not synchronisation).
_PLAIN_READ_PAUSE_S: Final = 0.001
_OPERATION_TIMEOUT_S: Final = 10.0
_COMMAND_TIMEOUT_S: Final = 120.0
_REOPEN_TIMEOUT_S: Final = 30.0
_REOPEN_PAUSE_S: Final = 0.05


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

    def __init__(self, key: str, forward: Tracer | None = None) -> None:
        self.key = key
        self.version: int | None = None
        self.forward = forward  # the tracer in place before (every record still reaches it)

    def __call__(self, record: TraceRecord) -> None:
        if self.forward is not None:
            self.forward(record)
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


async def _read_every_key(
    keys: Sequence[str], read: Callable[[str], Awaitable[TierEntry | None]], summary: _Summary
) -> None:
    """The final reads: each key once, its (value, version) or the error into `summary`."""
    for key in keys:
        try:
            entry = await read(key)
        except Exception as error:  # recorded as Unknown; reported
            summary.errors.append(f"final read: {type(error).__name__}: {error}")
            continue
        summary.final[key] = None if entry is None else [entry.value, entry.version]


async def _traced_delete(
    l1: CoherentL1Tier,
    key: str,
    delete: Callable[[str], Awaitable[bool]],
    recorder: HistoryRecorder,
    summary: _Summary,
) -> PendingOperation:
    """Run `delete(key)` recorded as a delete, with the tombstone's version traced from the
    commit `l1` feeds its core (every record still reaches the tracer in place before)."""
    previous = l1.core.tracer
    capture = _CommitCapture(key, previous)
    l1.core.tracer = capture
    try:
        async with recorder.delete(key) as pending:
            existed = await delete(key)
            if capture.version is None:
                raise WorkerError(f"delete of {key!r} returned without a traced commit")
            if existed:
                pending.deleted(capture.version)
            else:
                pending.deleted(None)
                summary.absent_deletes[key].append(capture.version)
    finally:
        l1.core.tracer = previous
    return pending


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
        self._count(await _traced_delete(l1, key, l1.delete, self.recorder, self.summary))

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
        await _read_every_key(self.keys, self.read, self.summary)


@dataclasses.dataclass(frozen=True, slots=True)
class ScriptStep:
    """One operation of a script: `op` (one of SCRIPT_OPERATIONS), and what it needs."""

    op: str
    key: str | None = None
    tier: int | None = None  # set: the hierarchy's tier index (0 L1, 1 L2, 2 L3)
    expected: int | str | None = None  # cas: a version, None (absent) or LAST_SEEN

    def to_json(self) -> dict[str, JSONValue]:
        """The script form of this step (what `load_script` reads)."""
        step: dict[str, JSONValue] = {"op": self.op}
        if self.key is not None:
            step["key"] = self.key
        if self.op == "set":
            step["tier"] = self.tier
        if self.op == "cas":
            step["expected"] = self.expected
        return step


def load_script(path: Path) -> list[ScriptStep]:
    """Parse a script: a JSON list of steps, e.g. `[{"op": "get", "key": "k0"}, {"op": "set",
    "key": "k0", "tier": 1}, {"op": "cas", "key": "k0", "expected": "last"}, {"op": "reopen"}]`;
    `get`, `set`, `cas`, `delete` and `update` need a `key`, `set` a `tier` (0, 1 or 2), `cas` an
    `expected` version (an int >= 1, null for "absent", or "last")."""
    data = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(data, list):
        raise WorkerError(f"a script is a JSON list of steps, {path} holds {type(data).__name__}")
    steps: list[ScriptStep] = []
    for index, item in enumerate(data):
        problem = _script_step_problem(item)
        if problem:
            raise WorkerError(f"{path} step {index} {item!r}: {problem}")
        steps.append(
            ScriptStep(item["op"], item.get("key"), item.get("tier"), item.get("expected"))
        )
    return steps


def _script_step_problem(item: object) -> str:
    """Why `item` is not a script step ("" if it is one)."""
    if not isinstance(item, dict) or item.get("op") not in SCRIPT_OPERATIONS:
        return f"needs an 'op' among {SCRIPT_OPERATIONS}"
    op = item["op"]
    if op in ("reopen", "mark"):
        return "" if set(item) == {"op"} else f"{op!r} takes no other field"
    if not isinstance(item.get("key"), str):
        return f"{op!r} needs a str 'key'"
    if op == "set" and item.get("tier") not in (0, 1, 2):
        return "'set' needs a 'tier' of 0, 1 or 2"
    expected = item.get("expected")
    if op == "cas" and not (
        expected is None or expected == LAST_SEEN or (type(expected) is int and expected >= 1)
    ):
        return f"'cas' needs an 'expected' version: an int >= 1, null or {LAST_SEEN!r}"
    return ""


class _ScriptedAgent:
    """Runs the steps of a script, one at a time, on a hierarchy; records each operation.

    `open_memory(incarnation)` returns a connected hierarchy (incarnation 0 first; `reopen`
    closes the current one, which writes its L1's owned entries back, and opens the next).
    """

    def __init__(
        self,
        arguments: argparse.Namespace,
        recorder: HistoryRecorder,
        steps: list[ScriptStep],
        open_memory: Callable[[int], Awaitable[MemoryHierarchy]],
    ) -> None:
        self.keys: list[str] = arguments.keys
        self.recorder = recorder
        self.steps = steps
        self.open_memory = open_memory
        self.coordinate: bool = arguments.coordinate
        self.memory: MemoryHierarchy | None = None
        self.incarnation = 0
        self.summary = _Summary(agent=arguments.agent, mode=arguments.mode)
        self.statistics: Counter[str] = Counter()
        self.last_seen: dict[str, int | None] = {}
        self._written = 0

    def _next_value(self) -> str:
        self._written += 1
        return f"{self.recorder.agent_id}:{self._written}"

    def _count(self, pending: PendingOperation, name: str | None = None) -> None:
        operation = pending.operation
        if operation is not None:
            kind = name or operation.kind
            self.summary.outcomes[f"{kind}:{type(operation.outcome).__name__}"] += 1

    async def open(self) -> None:
        """Open the first incarnation's hierarchy."""
        self.memory = await self.open_memory(self.incarnation)

    async def close(self) -> None:
        """Close the current hierarchy (if any), adding its L1's counters to the summary's."""
        memory, self.memory = self.memory, None
        if memory is None:
            return
        l1 = memory.coherent_l1
        try:
            await memory.aclose()
        finally:
            if l1 is not None:
                for name, value in dataclasses.asdict(l1.statistics()).items():
                    if type(value) is int:
                        self.statistics[name] += value

    def _memory(self) -> MemoryHierarchy:
        if self.memory is None:
            raise WorkerError("the agent's hierarchy is closed (a reopen failed?)")
        return self.memory

    def _coherent(self, step: ScriptStep) -> CoherentL1Tier:
        l1 = self._memory().coherent_l1
        if l1 is None:
            raise WorkerError(f"a plain agent only runs 'get' and 'mark' steps, not {step!r}")
        return l1

    async def read(self, key: str) -> TierEntry | None:
        async with self.recorder.read(key) as pending:
            entry = await self._memory().read(key)
            if entry is None:
                pending.miss()
            else:
                if entry.version is None:
                    raise WorkerError(f"read of {key!r} returned {entry!r} without a version")
                pending.hit(entry.value, entry.version)
        self.last_seen[key] = None if entry is None else entry.version
        self._count(pending)
        return entry

    async def set(self, step: ScriptStep, key: str) -> None:
        self._coherent(step)
        value = self._next_value()
        async with self.recorder.write(key, value) as pending:
            version = await self._memory().set(key, value, tier_index=step.tier or 0)
            if version is None:
                raise WorkerError(f"set of {key!r} at tier {step.tier} returned no version")
            pending.written(version)
        self._count(pending, f"set{step.tier}")

    async def compare_and_swap(self, step: ScriptStep, key: str) -> None:
        self._coherent(step)
        value = self._next_value()
        expected = self.last_seen.get(key) if step.expected == LAST_SEEN else step.expected
        assert not isinstance(expected, str)
        pending = self.recorder.cas(key, value, expected)
        try:
            async with pending:
                pending.written(await self._memory().compare_and_swap(key, value, expected))
        except VersionConflict as conflict:
            # Recorded as CasConflict(actual) by the recorder: the store answered.
            self.last_seen[key] = conflict.actual
        self._count(pending)

    async def update(self, step: ScriptStep, key: str) -> None:
        """`update` with a function returning a value of its own: recorded as a write of that
        value at the version `update` returns (each try is a compare-and-swap)."""
        self._coherent(step)
        value = self._next_value()
        async with self.recorder.write(key, value) as pending:
            pending.written(await self._memory().update(key, lambda _current: value))
        self._count(pending, "update")

    async def delete(self, step: ScriptStep, key: str) -> None:
        """Delete `key`, recording the tombstone's version (traced from the commit)."""
        l1 = self._coherent(step)
        delete = self._memory().delete
        self._count(await _traced_delete(l1, key, delete, self.recorder, self.summary))

    async def reopen(self) -> None:
        """Close the hierarchy and open the next incarnation's. Opening while Redis is down
        (a restart) fails at once (`BusUnavailable`): as a client would, try again until
        `_REOPEN_TIMEOUT_S` has passed."""
        await self.close()
        self.incarnation += 1
        async with asyncio.timeout(_REOPEN_TIMEOUT_S):
            while True:
                try:
                    self.memory = await self.open_memory(self.incarnation)
                    break
                except TierUnavailable:
                    self.summary.outcomes["reopen:retried"] += 1
                    await asyncio.sleep(_REOPEN_PAUSE_S)
        self.summary.outcomes["reopen"] += 1

    async def step(self, step: ScriptStep) -> None:
        """Run one step."""
        if step.op == "reopen":
            await self.reopen()
            return
        if step.op == "mark":
            _say(MARK)
            await _await_command(RESUME, self.coordinate)
            return
        key = step.key
        assert key is not None, step  # load_script checked it
        match step.op:
            case "get":
                await self.read(key)
            case "set":
                await self.set(step, key)
            case "cas":
                await self.compare_and_swap(step, key)
            case "update":
                await self.update(step, key)
            case _:
                await self.delete(step, key)

    async def workload(self) -> None:
        """Every step of the script in order (the agent stops at the first that fails)."""
        for index, step in enumerate(self.steps):
            try:
                await self.step(step)
            except Exception as error:  # recorded as Unknown; reported, and the agent stops
                self.summary.errors.append(
                    f"step {index} {step.to_json()}: {type(error).__name__}: {error}"
                )
                return

    async def final_reads(self) -> None:
        """Read every key once more (after every agent stopped writing)."""
        await _read_every_key(self.keys, self.read, self.summary)


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
        "--script",
        type=Path,
        default=None,
        help="run the steps of this JSON script instead of random operations (see load_script)",
    )
    parser.add_argument(
        "--trace",
        type=Path,
        default=None,
        help="with --script: write every row the coherent L1 executes here (JSON lines)",
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


async def _drive(agent: _Agent | _ScriptedAgent, arguments: argparse.Namespace) -> None:
    _say(READY)
    await _await_command(GO, arguments.coordinate)
    if isinstance(agent, _ScriptedAgent):
        await agent.workload()
    else:
        await agent.workload(arguments.seconds)
    _say(STOPPED, agent.summary.to_json())
    await _await_command(FINAL, arguments.coordinate)
    await agent.final_reads()


def trace_line(incarnation: int, record: TraceRecord) -> dict[str, object]:
    """One executed row as a JSON object (read back by `tests.integration.trace_steps`)."""
    request, missed, operation = record.before
    target_request, target_missed, target_operation = record.after
    return {
        "incarnation": incarnation,
        "key": record.key,
        "source": record.source.name,
        "request": request.name,
        "missed": missed,
        "operation": operation,
        "event": record.event.name,
        "guard": record.guard.name,
        "target": record.target.name,
        "target_request": target_request.name,
        "target_missed": target_missed,
        "target_operation": target_operation,
        "effects": [effect.name for effect in record.effects],
    }


async def run_script(arguments: argparse.Namespace) -> int:
    """Run the script of `--script` (each incarnation a hierarchy of its own), then the final
    reads; print the summary with `done`."""
    steps = load_script(arguments.script)
    trace_file = None if arguments.trace is None else arguments.trace.open("w", encoding="utf-8")

    def tracer_of(incarnation: int) -> Tracer | None:
        if trace_file is None:
            return None
        out = trace_file

        def write(record: TraceRecord) -> None:
            out.write(json.dumps(trace_line(incarnation, record)) + "\n")

        return write

    async def open_memory(incarnation: int) -> MemoryHierarchy:
        home = L3Tier(dsn=arguments.dsn, namespace=arguments.namespace, schema=arguments.schema)
        if arguments.mode == "plain":
            memory = MemoryHierarchy([L1Tier(), home], owns_tiers=True)
            await memory.connect()
            return memory
        bus = CoherenceBus(url=arguments.redis, namespace=arguments.namespace)
        l1 = CoherentL1Tier(
            arguments.agent,
            bus,
            mode=arguments.mode,
            operation_timeout_s=_OPERATION_TIMEOUT_S,
            home_steps=_lossy_home(arguments.lose_replies, arguments.seed + incarnation),
            tracer=tracer_of(incarnation),
        )
        l2 = L2Tier(url=arguments.redis, namespace=arguments.namespace)
        memory = MemoryHierarchy([l1, l2, home], owns_tiers=True)
        # As sagemem.connect(agent_id=...) does: the hierarchy closes the bus after its tiers.
        try:
            await bus.connect()
            memory.closing_callbacks.append(bus.aclose)
            await memory.connect()
        except BaseException:
            await memory.aclose()
            await bus.aclose()
            raise
        return memory

    with HistoryRecorder(arguments.agent, path=arguments.out) as recorder:
        agent = _ScriptedAgent(arguments, recorder, steps, open_memory)
        await agent.open()
        try:
            await _drive(agent, arguments)
        finally:
            await agent.close()
            if trace_file is not None:
                trace_file.close()
        agent.summary.statistics = {**agent.statistics, "reopened": agent.incarnation}
    _say(DONE, agent.summary.to_json())
    return 0


async def run(arguments: argparse.Namespace) -> int:
    """Connect, run the phases, close; print the summary with `done`."""
    if arguments.script is not None:
        return await run_script(arguments)
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
