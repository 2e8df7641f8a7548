"""The agent workloads of `benchmarks.run_all`, their options and the pure analysis of a run.

Nothing here does I/O: a workload is data (which keys, which operations in which proportion),
an agent draws its operations from it with a seeded `random.Random`, and the analysis
(percentiles, stale reads, the correctness cross-check of the harness) works on the records
the agent processes send back. The systems under test live in `benchmarks.agent_systems`,
the agent process in `benchmarks.agent_process`, the orchestration in `benchmarks.run_all`.
"""

from __future__ import annotations

import bisect
import itertools
import random
import statistics
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Final, Literal

from sagemem.errors import SageMemError
from sagemem.values import JSONValue

__all__ = [
    "SCALING_WORKLOAD",
    "SYSTEMS",
    "WORKLOADS",
    "BenchmarkOptionError",
    "KeyChooser",
    "Operation",
    "OperationStream",
    "ReadRecord",
    "StaleReport",
    "Workload",
    "WriteRecord",
    "check_reads",
    "parse_names",
    "parse_positive_int",
    "parse_positive_ints",
    "percentile",
    "research_document",
    "stale_reads",
    "tag_of",
    "workload_keys",
]

type OperationKind = Literal["read", "write", "update", "search"]
type WorkloadKind = Literal["read_write", "debate", "counter", "research"]

SYSTEMS: Final = (
    "sagemem-coherent",
    "sagemem-update",
    "sagemem-strict",
    "plain-hierarchy",
    "uncached-postgres",
    "broadcast-invalidation",
)
"""The systems every workload runs on; `uncached-postgres` is the baseline of the ratios."""

ZIPF_EXPONENT: Final = 0.99  # YCSB's default skew
DEBATE_READS_PER_TURN: Final = 3
RESEARCH_DOCS: Final = 100
RESEARCH_NOTES: Final = 50
COUNTERS: Final = 4


class BenchmarkOptionError(SageMemError, ValueError):
    """A benchmark option is out of range or names something that does not exist."""


@dataclass(frozen=True, slots=True)
class Workload:
    """One agent workload: its keys and how an agent picks its next operation."""

    name: str
    title: str
    kind: WorkloadKind
    keys: int = 100
    write_fraction: float = 0.0
    zipf: bool = False

    def key(self, index: int) -> str:
        """The `index`-th key of this workload (its name keeps workloads apart)."""
        return f"{self.name}:k{index}"


WORKLOADS: Final = (
    Workload("read95-uniform", "95 % reads / 5 % writes, uniform keys", "read_write", 100, 0.05),
    Workload("read95-zipf", "95 % reads / 5 % writes, Zipfian keys", "read_write", 100, 0.05, True),
    Workload("read99-uniform", "99 % reads / 1 % writes, uniform keys", "read_write", 100, 0.01),
    Workload("read99-zipf", "99 % reads / 1 % writes, Zipfian keys", "read_write", 100, 0.01, True),
    Workload("debate", "debate: read 3 shared beliefs, revise 1", "debate", 20, 0.25),
    Workload("counter", "contended counters via update()", "counter", COUNTERS, 1.0),
    Workload("research", "research: search, read 2 hits + a note, write a note", "research"),
)
"""Every workload, in the order the run and the report use."""

SCALING_WORKLOAD: Final = "read95-uniform"


def workload_keys(workload: Workload) -> list[str]:
    """Every key the workload's agents read or write (what a run stores before it starts)."""
    if workload.kind == "research":
        docs = [f"{workload.name}:doc{i}" for i in range(RESEARCH_DOCS)]
        return docs + [f"{workload.name}:note{i}" for i in range(RESEARCH_NOTES)]
    return [workload.key(i) for i in range(workload.keys)]


@dataclass(frozen=True, slots=True)
class Operation:
    """One operation an agent does next (`query` only for a search)."""

    kind: OperationKind
    key: str = ""
    query: str = ""


class KeyChooser:
    """Uniform or Zipfian (exponent 0.99, key 0 hottest) choice among `count` keys."""

    def __init__(self, count: int, *, zipf: bool) -> None:
        self._count = count
        self._cumulative: list[float] | None = None
        if zipf:
            weights = [1.0 / (rank + 1) ** ZIPF_EXPONENT for rank in range(count)]
            self._cumulative = list(itertools.accumulate(weights))

    def choose(self, rng: random.Random) -> int:
        if self._cumulative is None:
            return rng.randrange(self._count)
        point = rng.random() * self._cumulative[-1]
        return min(self._count - 1, bisect.bisect_left(self._cumulative, point))


RESEARCH_TOPICS: Final = (
    "harbour weather",
    "supply chain delays",
    "protein folding",
    "battery chemistry",
    "election polling",
    "river flooding",
    "chip fabrication",
    "coral reef bleaching",
)


def research_document(index: int) -> str:
    """The text of research document `index` (what the search ranks)."""
    topic = RESEARCH_TOPICS[index % len(RESEARCH_TOPICS)]
    return f"report {index} on {topic}: findings, sources and open questions about {topic}"


@dataclass(slots=True)
class OperationStream:
    """An agent's endless sequence of operations for one workload (seeded, reproducible)."""

    workload: Workload
    rng: random.Random
    _chooser: KeyChooser = field(init=False)
    _pending: list[Operation] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._chooser = KeyChooser(self.workload.keys, zipf=self.workload.zipf)

    def next(self) -> Operation:
        if not self._pending:
            self._pending = self._turn()[::-1]
        return self._pending.pop()

    def _turn(self) -> list[Operation]:
        workload, rng = self.workload, self.rng
        if workload.kind == "read_write":
            kind: OperationKind = "write" if rng.random() < workload.write_fraction else "read"
            return [Operation(kind, workload.key(self._chooser.choose(rng)))]
        if workload.kind == "debate":
            beliefs = rng.sample(range(workload.keys), DEBATE_READS_PER_TURN)
            revised = rng.choice(beliefs)
            reads = [Operation("read", workload.key(i)) for i in beliefs]
            return [*reads, Operation("write", workload.key(revised))]
        if workload.kind == "counter":
            return [Operation("update", workload.key(rng.randrange(workload.keys)))]
        topic = rng.choice(RESEARCH_TOPICS)
        return [
            Operation("search", query=topic),  # the agent reads the hits it gets
            Operation("read", f"{workload.name}:note{rng.randrange(RESEARCH_NOTES)}"),
            Operation("write", f"{workload.name}:note{rng.randrange(RESEARCH_NOTES)}"),
        ]


def tag_of(value: JSONValue) -> str:
    """What identifies a written value: its `tag` item (every write's is unique), or the
    value itself for a counter."""
    if isinstance(value, dict):
        return str(value.get("tag"))
    return repr(value)


# -- options -------------------------------------------------------------------------------


def parse_positive_int(option: str, raw: str) -> int:
    """`raw` as an int of at least 1, else `BenchmarkOptionError` naming `option`."""
    try:
        value = int(raw)
    except ValueError:
        value = 0
        ok = False
    else:
        ok = value >= 1
    if not ok:
        raise BenchmarkOptionError(
            f"{option} must be a positive whole number, got {raw!r}; e.g. {option} 3"
        )
    return value


def parse_positive_ints(option: str, raw: str) -> list[int]:
    """A comma-separated list of positive ints (e.g. "2,4,16")."""
    parts = [part.strip() for part in raw.split(",") if part.strip()]
    if not parts:
        raise BenchmarkOptionError(f"{option} needs at least one number, got {raw!r}; e.g. 2,8")
    return sorted({parse_positive_int(option, part) for part in parts})


def parse_names(option: str, raw: str, known: Sequence[str]) -> list[str]:
    """A comma-separated selection of `known` names, in `known`'s order."""
    chosen = {part.strip() for part in raw.split(",") if part.strip()}
    unknown = sorted(chosen - set(known))
    if unknown or not chosen:
        raise BenchmarkOptionError(
            f"{option} {raw!r}: unknown name(s) {unknown}; choose from {', '.join(known)} "
            "(comma-separated)"
        )
    return [name for name in known if name in chosen]


# -- analysis ------------------------------------------------------------------------------


def percentile(samples: Sequence[float], fraction: float) -> float:
    """The `fraction` percentile of `samples` (nearest rank; the median for 0.5)."""
    if not samples:
        raise ValueError("percentile of no samples")
    if fraction == 0.5:
        return float(statistics.median(samples))
    ordered = sorted(samples)
    return float(ordered[min(len(ordered) - 1, int(len(ordered) * fraction))])


@dataclass(frozen=True, slots=True)
class WriteRecord:
    """A committed write: its key, the version it created, when it returned, its value's tag."""

    key: str
    version: int
    end_ns: int
    tag: str


@dataclass(frozen=True, slots=True)
class ReadRecord:
    """A read: its key, when it began, the version and tag it returned (version -1: a miss)."""

    key: str
    start_ns: int
    version: int
    tag: str


@dataclass(frozen=True, slots=True)
class StaleReport:
    """Reads that returned a version older than one committed before they began."""

    reads: int
    stale: int
    max_age_ms: float  # how long the newer version had been committed when the read began


def stale_reads(writes: Iterable[WriteRecord], reads: Iterable[ReadRecord]) -> StaleReport:
    """Count the stale reads: a read is stale when a write of a newer version of its key had
    returned before the read began; its age is how long before the first such write returned."""
    by_key: dict[str, list[WriteRecord]] = defaultdict(list)
    for write in writes:
        by_key[write.key].append(write)
    ends: dict[str, list[int]] = {}
    newest: dict[str, list[int]] = {}
    for key, records in by_key.items():
        records.sort(key=lambda record: record.end_ns)
        ends[key] = [record.end_ns for record in records]
        newest[key] = list(itertools.accumulate((r.version for r in records), max))
    count = 0
    stale = 0
    max_age_ns = 0
    for read in reads:
        count += 1
        key_ends = ends.get(read.key)
        if key_ends is None:
            continue
        before = bisect.bisect_left(key_ends, read.start_ns)  # writes that returned before
        if before == 0 or newest[read.key][before - 1] <= read.version:
            continue
        stale += 1
        first_newer = next(r for r in by_key[read.key] if r.version > read.version)
        max_age_ns = max(max_age_ns, read.start_ns - first_newer.end_ns)
    return StaleReport(reads=count, stale=stale, max_age_ms=max_age_ns / 1e6)


def check_reads(writes: Iterable[WriteRecord], reads: Iterable[ReadRecord]) -> list[str]:
    """The harness's own cross-check: every read returned the value some write (or the
    prefill) committed as that version of that key, and no version was committed twice.
    Returns one line per problem (empty: all consistent)."""
    committed: dict[tuple[str, int], str] = {}
    problems: list[str] = []
    for write in writes:
        slot = (write.key, write.version)
        if slot in committed and committed[slot] != write.tag:
            problems.append(
                f"{write.key!r} version {write.version} committed twice "
                f"({committed[slot]!r} and {write.tag!r})"
            )
        committed[slot] = write.tag
    for read in reads:
        expected = committed.get((read.key, read.version))
        if expected is None:
            problems.append(f"read of {read.key!r} returned version {read.version}, never written")
        elif expected != read.tag:
            problems.append(
                f"read of {read.key!r} version {read.version} returned {read.tag!r}, but "
                f"{expected!r} was written as that version"
            )
    return problems
