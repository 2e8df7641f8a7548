"""Staleness and session guarantees of recorded histories, for the `coherent` consistency mode.

`coherent` mode does not promise linearizability: a read may return an older version while the
invalidation of a newer one is still in flight. What it does promise, and what this module
measures on a recorded history (`sagemem.verify.history`):

- every stale read is covered by an invalidation in flight: its staleness age (the read's
  invocation minus the commit time of the first newer version) is at most the delivery bound,
  and nothing is stale once the workload has stopped (`check_invalidation_coverage`);
- monotonic reads: an agent never reads a version older than one it read before;
- read-your-writes: an agent never reads a version older than its own last completed write.

Commit times: the home assigns versions one after another per key, so version v+1 commits after
version v. The completion of a write (and of a read that saw a version) is an upper bound of
that version's commit; explicit `CommitRecord`s, if the recorder got them from the home, are
used as well, and a version's commit time is the least bound known for it or any later
version. Upper bounds make ages underestimates, never false alarms. Operations with an
`Unknown` outcome are not evidence: they are not judged, and a miss that only a delete of
unknown outcome could explain is reported as stale. This module only reads histories; it never
touches a store.
"""

from __future__ import annotations

import bisect
import enum
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from sagemem.verify.history import (
    CommitRecord,
    Deleted,
    Operation,
    OpKind,
    ReadHit,
    ReadMiss,
    Written,
)

__all__ = [
    "CommitRecord",
    "SessionGuarantee",
    "SessionViolation",
    "StaleRead",
    "StalenessReport",
    "UncoveredStaleRead",
    "analyze_staleness",
    "check_invalidation_coverage",
]


@dataclass(frozen=True, slots=True)
class StaleRead:
    """A read that returned `observed_version` (None: a miss) when `newer_version` had committed.

    `age_ns` is the read's invocation time minus `newer_committed_at_ns` (always > 0).
    """

    read: Operation
    observed_version: int | None
    newer_version: int
    newer_committed_at_ns: int
    age_ns: int


class SessionGuarantee(enum.StrEnum):
    """A per-agent guarantee of the `coherent` mode."""

    MONOTONIC_READS = "monotonic reads"
    READ_YOUR_WRITES = "read your writes"


@dataclass(frozen=True, slots=True)
class SessionViolation:
    """`read` broke `guarantee` against `earlier` (a read or a write of the same agent)."""

    guarantee: SessionGuarantee
    read: Operation
    earlier: Operation
    message: str


@dataclass(frozen=True)
class StalenessReport:
    """Stale reads and session-guarantee violations found in a history."""

    read_count: int
    stale_reads: tuple[StaleRead, ...]
    monotonic_read_violations: tuple[SessionViolation, ...]
    read_your_writes_violations: tuple[SessionViolation, ...]

    @property
    def max_staleness_ns(self) -> int:
        """The largest staleness age, 0 if no read was stale."""
        return max((stale.age_ns for stale in self.stale_reads), default=0)

    @property
    def stale_read_rate(self) -> float:
        """Stale reads over reads with a known outcome (0.0 for no reads)."""
        return len(self.stale_reads) / self.read_count if self.read_count else 0.0

    def summary(self) -> str:
        """One line: counts, rate and maximum age."""
        return (
            f"{self.read_count} reads, {len(self.stale_reads)} stale "
            f"({self.stale_read_rate:.2%}), max staleness {self.max_staleness_ns / 1e6:.3f} ms, "
            f"{len(self.monotonic_read_violations)} monotonic-read and "
            f"{len(self.read_your_writes_violations)} read-your-writes violations"
        )


@dataclass(frozen=True, slots=True)
class UncoveredStaleRead:
    """A stale read no in-flight invalidation explains, and why."""

    stale: StaleRead
    reason: str


class _KeyVersions:
    """What is known about the versions of one key: commit bounds and tombstones."""

    def __init__(self) -> None:
        self._commit_bound_ns: dict[int, int] = {}
        # Tombstones with the earliest time they can have been created (a delete's invocation,
        # or an exact commit time).
        self._tombstone_from_ns: dict[int, int] = {}
        self._versions: list[int] = []
        self._effective_ns: list[int] = []
        self._tombstone_since_ns: list[int] = []
        self._tombstone_newest: list[int] = []

    def bound(self, version: int, at_ns: int) -> None:
        known = self._commit_bound_ns.get(version)
        self._commit_bound_ns[version] = at_ns if known is None else min(known, at_ns)

    def tombstone(self, version: int, from_ns: int) -> None:
        known = self._tombstone_from_ns.get(version)
        self._tombstone_from_ns[version] = from_ns if known is None else min(known, from_ns)

    def seal(self) -> None:
        # A version commits before every later one: its effective commit time is the least
        # bound of itself and all later versions (a suffix minimum).
        self._versions = sorted(self._commit_bound_ns)
        effective: list[int] = []
        least: int | None = None
        for version in reversed(self._versions):
            bound = self._commit_bound_ns[version]
            least = bound if least is None else min(least, bound)
            effective.append(least)
        self._effective_ns = effective[::-1]
        # Tombstones by the time they may exist from, with the newest version so far: the
        # newest tombstone that may exist by a time is one bisection away.
        newest = 0
        for since, version in sorted((s, v) for v, s in self._tombstone_from_ns.items()):
            newest = max(newest, version)
            self._tombstone_since_ns.append(since)
            self._tombstone_newest.append(newest)

    def first_newer(self, version: int) -> tuple[int, int] | None:
        """The first known version above `version` and its effective commit time."""
        index = bisect.bisect_right(self._versions, version)
        if index == len(self._versions):
            return None
        return self._versions[index], self._effective_ns[index]

    def freshest_absent(self, by_ns: int) -> int:
        """The newest absent version a read completing at `by_ns` may have seen (0: never
        written)."""
        index = bisect.bisect_right(self._tombstone_since_ns, by_ns)
        return self._tombstone_newest[index - 1] if index else 0

    def tombstone_above(self, version: int, by_ns: int) -> bool:
        """Whether a tombstone newer than `version` may exist by `by_ns`."""
        return self.freshest_absent(by_ns) > version


def _key_versions(
    operations: Sequence[Operation], commits: Iterable[CommitRecord]
) -> dict[str, _KeyVersions]:
    keys: defaultdict[str, _KeyVersions] = defaultdict(_KeyVersions)
    for op in operations:
        outcome = op.outcome
        if op.completed_at_ns is None:
            continue
        versions = keys[op.key]
        match outcome:
            case Written(version=version) | ReadHit(version=version):
                versions.bound(version, op.completed_at_ns)
            case Deleted(version=int() as version):
                versions.bound(version, op.completed_at_ns)
                versions.tombstone(version, op.invoked_at_ns)
            case _:
                pass
    for commit in commits:
        versions = keys[commit.key]
        versions.bound(commit.version, commit.committed_at_ns)
        if commit.deleted:
            versions.tombstone(commit.version, commit.committed_at_ns)
    for versions in keys.values():
        versions.seal()
    return dict(keys)


def _reads(operations: Iterable[Operation]) -> list[Operation]:
    return [
        op
        for op in operations
        if op.kind is OpKind.READ and isinstance(op.outcome, ReadHit | ReadMiss)
    ]


def _find_stale(read: Operation, versions: _KeyVersions) -> StaleRead | None:
    assert read.completed_at_ns is not None
    if isinstance(read.outcome, ReadHit):
        observed: int | None = read.outcome.version
        reflected = read.outcome.version
    else:
        # A miss reflects some absent version; give it the benefit of the doubt and take the
        # newest tombstone it could have seen.
        observed = None
        reflected = versions.freshest_absent(read.completed_at_ns)
    newer = versions.first_newer(reflected)
    if newer is None:
        return None
    newer_version, committed_at_ns = newer
    if committed_at_ns >= read.invoked_at_ns:
        return None
    return StaleRead(
        read=read,
        observed_version=observed,
        newer_version=newer_version,
        newer_committed_at_ns=committed_at_ns,
        age_ns=read.invoked_at_ns - committed_at_ns,
    )


def _session_violations(
    operations: Sequence[Operation], versions_by_key: dict[str, _KeyVersions]
) -> tuple[list[SessionViolation], list[SessionViolation]]:
    """Sweep each (agent, key) in invocation order, against what completed before."""
    monotonic: list[SessionViolation] = []
    own_writes: list[SessionViolation] = []
    sessions: defaultdict[tuple[str, str], list[Operation]] = defaultdict(list)
    for op in operations:
        if op.completed_at_ns is not None and not op.is_unknown:
            sessions[op.agent_id, op.key].append(op)
    for (agent, key), ops in sorted(sessions.items()):
        versions = versions_by_key[key]
        by_completion = sorted(ops, key=lambda op: op.completed_at_ns or 0)
        done = 0
        # The newest version this agent has seen, and its own newest write (with tombstone flag).
        seen: tuple[int, Operation] | None = None
        wrote: tuple[int, bool, Operation] | None = None
        for op in sorted(ops, key=lambda op: op.invoked_at_ns):
            while done < len(by_completion) and (
                (by_completion[done].completed_at_ns or 0) < op.invoked_at_ns
            ):
                earlier = by_completion[done]
                done += 1
                match earlier.outcome:
                    case ReadHit(version=version) if seen is None or version > seen[0]:
                        seen = (version, earlier)
                    case Written(version=version) if wrote is None or version > wrote[0]:
                        wrote = (version, False, earlier)
                    case Deleted(version=int() as version) if wrote is None or version > wrote[0]:
                        wrote = (version, True, earlier)
                    case _:
                        pass
            if op.kind is not OpKind.READ:
                continue
            assert op.completed_at_ns is not None
            read_version = op.outcome.version if isinstance(op.outcome, ReadHit) else None
            if seen is not None:
                older = (
                    read_version < seen[0]
                    if read_version is not None
                    else not versions.tombstone_above(seen[0], op.completed_at_ns)
                )
                if older:
                    monotonic.append(
                        SessionViolation(
                            SessionGuarantee.MONOTONIC_READS,
                            op,
                            seen[1],
                            f"agent {agent!r} on key {key!r}: {op.describe()} is older than "
                            f"version {seen[0]} it read before ({seen[1].describe()})",
                        )
                    )
            if wrote is not None:
                version, tombstone, write = wrote
                if read_version is not None:
                    older = read_version < version or (tombstone and read_version <= version)
                else:
                    older = not tombstone and not versions.tombstone_above(
                        version, op.completed_at_ns
                    )
                if older:
                    own_writes.append(
                        SessionViolation(
                            SessionGuarantee.READ_YOUR_WRITES,
                            op,
                            write,
                            f"agent {agent!r} on key {key!r}: {op.describe()} does not see its "
                            f"own earlier {write.describe()}",
                        )
                    )
    return monotonic, own_writes


def analyze_staleness(
    operations: Iterable[Operation], commits: Iterable[CommitRecord] = ()
) -> StalenessReport:
    """Find the stale reads and the session-guarantee violations of a history (all keys).

    A read is stale if it returned version v (or a miss) when a version newer than v (newer
    than the freshest tombstone it could have seen) had committed before the read was
    invoked. Reads and writes with an `Unknown` outcome are not judged, but what they reveal
    (nothing, for an unknown) is not used either.
    """
    ops = list(operations)
    versions_by_key = _key_versions(ops, commits)
    reads = _reads(ops)
    stale = [
        found
        for read in sorted(reads, key=lambda op: (op.invoked_at_ns, op.op_id))
        if (found := _find_stale(read, versions_by_key[read.key])) is not None
    ]
    monotonic, own_writes = _session_violations(ops, versions_by_key)
    return StalenessReport(
        read_count=len(reads),
        stale_reads=tuple(stale),
        monotonic_read_violations=tuple(monotonic),
        read_your_writes_violations=tuple(own_writes),
    )


def check_invalidation_coverage(
    report: StalenessReport,
    *,
    max_staleness_ns: int,
    quiescent_since_ns: int | None = None,
) -> tuple[UncoveredStaleRead, ...]:
    """Return the stale reads that no in-flight invalidation covers (empty: all covered).

    An invalidation is published when its version commits and is delivered within
    `max_staleness_ns`, so a stale read older than that is a violation. With
    `quiescent_since_ns` (the time the workload's last write completed plus the delivery
    bound), any stale read invoked at or after it is a violation too: once the workload
    stops, nothing may be stale.
    """
    if max_staleness_ns < 0:
        raise ValueError(f"max_staleness_ns must be >= 0, got {max_staleness_ns}")
    uncovered: list[UncoveredStaleRead] = []
    for stale in report.stale_reads:
        if stale.age_ns > max_staleness_ns:
            uncovered.append(
                UncoveredStaleRead(
                    stale,
                    f"{stale.read.describe()} is {stale.age_ns} ns stale (version "
                    f"{stale.newer_version} committed at {stale.newer_committed_at_ns} ns), "
                    f"over the delivery bound of {max_staleness_ns} ns",
                )
            )
        elif quiescent_since_ns is not None and stale.read.invoked_at_ns >= quiescent_since_ns:
            uncovered.append(
                UncoveredStaleRead(
                    stale,
                    f"{stale.read.describe()} is stale (version {stale.newer_version} "
                    f"committed at {stale.newer_committed_at_ns} ns) although the workload "
                    f"was quiescent since {quiescent_since_ns} ns",
                )
            )
    return tuple(uncovered)
