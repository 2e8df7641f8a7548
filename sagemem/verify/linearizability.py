"""A linearizability checker for recorded histories of one versioned key (Wing & Gong, Lowe).

Property: a key's history is linearizable iff there is a total order of its operations that
(1) respects real time (if A completed before B was invoked, A comes first), (2) contains
every operation with a known outcome and any subset of the `Unknown` ones (an operation that
crashed may have taken effect at any point after its invocation, or never), and (3) is a
legal run of the sequential model of one key, `KeyState` = (exists, version, value):

- a read returns the current (value, version), or a miss iff the key does not exist;
- a write creates the next version (see `VersionRule`) and makes the key exist;
- a cas with expected version None succeeds iff the key does not exist, with n iff it exists
  at version n; on success it is a write, on failure it reports the current version (None if
  absent) and changes nothing;
- a delete of an existing key leaves a tombstone at the next version (absent); a delete of an
  absent key reports "nothing to delete" and changes nothing.

Versions are those the home store assigned. `VersionRule.CONSECUTIVE` (the default) assumes
what `sagemem.tiers.l3` does: every write, successful cas and delete of a live key adds exactly
one, so a recorded version is accepted only if it is the current one plus one. This is what
makes hot-key histories cheap to check (the versions nearly fix the order of the writes).
`VersionRule.INCREASING` only requires versions to grow (use it if something else, like a
promotion from a slower tier, may also bump the home's version).

Search: Wing & Gong's depth-first search over the operations that may take effect next (those
invoked before the earliest completion among the not-yet-linearized ones), with Lowe's
memoization of (set of linearized operations, model state), as in Knossos and Porcupine. The
bound is `max_configurations` distinct (set, state) pairs; exceeding it raises
`SearchBoundExceeded` instead of answering. These reductions keep it near-linear on real
histories; each is exact (it never changes the verdict: against a brute-force search over
every real-time order and every subset of unknown outcomes, the verdicts agreed on 12,000
random histories of up to 7 operations, under both version rules):

- an operation that may take effect now and leaves the state unchanged (a read, a cas
  conflict) is taken at once, without branching (moving it first keeps any legal order legal);
- `Unknown` operations are tried only after the known candidates, newest first; under
  CONSECUTIVE only to create a version no known operation created, up to the highest version
  anyone saw (above it only a delete matters, to explain a miss), with the value a read saw
  at that version, and not if a later read needs its value more;
- `Unknown` operations that are interchangeable for the rest of the search (same kind, same
  expected version, values no later read can tell apart) are tried once per configuration and
  memoized as one;
- the set of linearized operations is stored as a watermark over the known operations in
  invocation order plus a small window, not one bit per operation.

Measured on this machine (2 shared cores, CPython 3.12): 4 agents, 3 hot keys, 10,000
recorded operations checked in 0.15 s; one key with 50,000 operations (0.2% unknown
outcomes) in 1.4 s; 4,000 operations of 32 concurrent agents with 2% unknown outcomes in
0.09 s. Refuting a failing history is as fast unless it has many unknown outcomes before the
violation: 20,000 operations with 112 unknown outcomes and a stale read near the end took
14 s (366,825 configurations); `unknown_window_ns` bounds that. INCREASING with many unknown
outcomes and high concurrency is the slow case. This module never touches a store.
"""

from __future__ import annotations

import bisect
import enum
import json
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Final

from sagemem.errors import SageMemError
from sagemem.values import JSONValue
from sagemem.verify.history import (
    CasConflict,
    Deleted,
    Operation,
    OpKind,
    ReadHit,
    Unknown,
    Written,
)

__all__ = [
    "CONFIGURATIONS_MAX",
    "KeyState",
    "LinearizabilityResult",
    "SearchBoundExceeded",
    "VersionRule",
    "check_history",
    "check_linearizable",
]

CONFIGURATIONS_MAX: Final = 1_000_000
"""Default bound on distinct (linearized set, state) configurations explored per key."""


class SearchBoundExceeded(SageMemError, RuntimeError):
    """The search explored `max_configurations` configurations without an answer."""

    def __init__(self, message: str, *, key: str, configurations: int) -> None:
        super().__init__(message)
        self.key = key
        self.configurations = configurations


class VersionRule(enum.Enum):
    """Which recorded versions the sequential model accepts for a write, cas or delete."""

    CONSECUTIVE = "consecutive"
    """Exactly the current version plus one (what the L3 home does)."""
    INCREASING = "increasing"
    """Any version greater than the current one."""


@dataclass(frozen=True, slots=True)
class KeyState:
    """The sequential model's state of one key. A never-written key is `KeyState()`."""

    exists: bool = False
    version: int = 0
    value: JSONValue = None


@dataclass(frozen=True)
class LinearizabilityResult:
    """The verdict on one key's history.

    On success, `linearization` is one legal order of the operations that took effect. On
    failure, it is the longest legal real-time-respecting prefix the search found, `culprit` is
    the operation that could not take effect after it, `involved` the operations the
    explanation refers to (the culprit first), and `message` says why in words.
    """

    key: str
    ok: bool
    operation_count: int
    configurations: int
    linearization: tuple[Operation, ...]
    culprit: Operation | None
    involved: tuple[Operation, ...]
    message: str

    def __bool__(self) -> bool:
        return self.ok


# The model's state inside the search: (exists, version, value id, version is exact). The last
# field is False only under VersionRule.INCREASING after an Unknown write, whose version is then
# known only as a lower bound.
type _State = tuple[bool, int, int, bool]

# A set of taken (linearized) operations: every known operation of rank below the watermark,
# those of rank watermark + j for each bit j of the window, and the Unknown operations of the
# bits of the last int. Far smaller than one bit per operation, and still exact: the
# configurations a search stores would otherwise cost O(n) bytes each.
type _Taken = tuple[int, int, int]

_ABSENT_VALUE: Final = -1
_LIVE_VALUE: Final = -4  # a pin meaning "some value", never equal to a value id
_UNREAD_VALUE: Final = -5  # stands for any value no later read can see
_FORCED: Final = -3  # frame markers; positions in _Search.unknown are >= 0
_LISTED: Final = -2


class _Kind(enum.IntEnum):
    READ_HIT = 0
    READ_MISS = 1
    WRITE = 2
    WRITE_UNKNOWN = 3
    CAS_OK = 4
    CAS_CONFLICT = 5
    CAS_UNKNOWN = 6
    DELETE = 7
    DELETE_NOTHING = 8
    DELETE_UNKNOWN = 9


@dataclass(frozen=True, slots=True)
class _Step:
    """An operation compiled for the search: what it requires and what it does."""

    kind: _Kind
    value_id: int  # the value read or written (_ABSENT_VALUE if none)
    version: int  # the version read, written, deleted or found (0 if none)
    expected: int | None  # cas only: None = must not exist
    conflict_absent: bool  # cas conflict only: the store found the key absent


def _value_key(value: JSONValue) -> str:
    # Values compare as the store returns them: by their JSON (dict order does not matter).
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


_PRESERVING_KINDS: Final = frozenset(
    {_Kind.READ_HIT, _Kind.READ_MISS, _Kind.CAS_CONFLICT, _Kind.DELETE_NOTHING}
)


class _Model:
    """The sequential specification of one key, over interned values."""

    def __init__(
        self,
        rule: VersionRule,
        claimed: set[int],
        ceiling: int,
        pinned_values: dict[int, int],
    ) -> None:
        self.consecutive = rule is VersionRule.CONSECUTIVE
        # Versions created by operations with a known outcome. Under CONSECUTIVE an Unknown
        # operation can only have created a version nobody else did, and (since every
        # version up to the highest one seen was created by someone) only one up to that
        # `ceiling`, except a delete: above the ceiling nothing observes a version, and only
        # a miss can tell the key is absent.
        self.claimed = claimed if self.consecutive else set()
        self.ceiling = ceiling if self.consecutive else None
        # A version nobody with a known outcome created but a read saw (with its value): only
        # an Unknown write or cas of that value can have created it.
        self.pinned_values = pinned_values if self.consecutive else {}
        self.claimed_sorted = sorted(claimed)

    def _next_ok(self, state: _State, version: int) -> bool:
        # Under INCREASING an inexact state means "at least state[1]": a version above the
        # bound is above some feasible actual version.
        if self.consecutive:
            return version == state[1] + 1
        # Every version above the current one that a known operation created must still take
        # effect, in version order: skipping one would leave it no place.
        index = bisect.bisect_right(self.claimed_sorted, state[1])
        return index < len(self.claimed_sorted) and self.claimed_sorted[index] == version

    def _unknown_may_create(self, version: int, value_id: int) -> bool:
        if version in self.claimed:
            return False
        pinned = self.pinned_values.get(version)
        deleting = value_id == _ABSENT_VALUE
        if pinned is not None and (deleting or pinned not in (_LIVE_VALUE, value_id)):
            return False
        return deleting or self.ceiling is None or version <= self.ceiling

    def _at(self, state: _State, version: int) -> bool:
        """The key exists and may be at `version`."""
        if not state[0]:
            return False
        return version == state[1] or (not state[3] and version >= state[1])

    def step(self, state: _State, step: _Step) -> _State | None:
        """The state after `step`, or None if `step` cannot take effect in `state`."""
        exists, version = state[0], state[1]
        match step.kind:
            case _Kind.READ_HIT:
                if step.value_id == state[2] and self._at(state, step.version):
                    return (True, step.version, step.value_id, True)
                return None
            case _Kind.READ_MISS:
                return None if exists else state
            case _Kind.WRITE:
                if self._next_ok(state, step.version):
                    return (True, step.version, step.value_id, True)
                return None
            case _Kind.WRITE_UNKNOWN:
                if not self._unknown_may_create(version + 1, step.value_id):
                    return None
                return (True, version + 1, step.value_id, self.consecutive)
            case _Kind.CAS_OK:
                if step.expected is None:
                    matches = not exists
                else:
                    matches = self._at(state, step.expected)
                    state = (True, step.expected, state[2], True)
                if matches and self._next_ok(state, step.version):
                    return (True, step.version, step.value_id, True)
                return None
            case _Kind.CAS_CONFLICT:
                if step.conflict_absent:
                    return state if not exists and step.expected is not None else None
                if step.version == step.expected or not self._at(state, step.version):
                    return None
                return (True, step.version, state[2], True)
            case _Kind.CAS_UNKNOWN:
                # Only the successful case is tried: a failed cas changes nothing, which is
                # the same as never taking effect.
                if step.expected is None:
                    if exists or not self._unknown_may_create(version + 1, step.value_id):
                        return None
                    return (True, version + 1, step.value_id, self.consecutive)
                if not self._at(state, step.expected) or not self._unknown_may_create(
                    step.expected + 1, step.value_id
                ):
                    return None
                return (True, step.expected + 1, step.value_id, self.consecutive)
            case _Kind.DELETE:
                if exists and self._next_ok(state, step.version):
                    return (False, step.version, _ABSENT_VALUE, True)
                return None
            case _Kind.DELETE_NOTHING:
                return None if exists else state
            case _Kind.DELETE_UNKNOWN:
                if not exists or not self._unknown_may_create(version + 1, _ABSENT_VALUE):
                    return None
                return (False, version + 1, _ABSENT_VALUE, self.consecutive)


class _Compiler:
    """Interns values and compiles operations into `_Step`s."""

    def __init__(self) -> None:
        self.value_ids: dict[str, int] = {}

    def value_id(self, value: JSONValue) -> int:
        return self.value_ids.setdefault(_value_key(value), len(self.value_ids))

    def known_value_id(self, value: JSONValue) -> int | None:
        return self.value_ids.get(_value_key(value))

    def compile(self, op: Operation) -> _Step:
        outcome = op.outcome
        unknown = isinstance(outcome, Unknown)
        match op.kind:
            case OpKind.READ:
                if isinstance(outcome, ReadHit):
                    # Reads are compiled after all writes: an unseen value gets a fresh id that
                    # no state can hold, so the read can never take effect.
                    return _Step(
                        _Kind.READ_HIT, self.value_id(outcome.value), outcome.version, None, False
                    )
                return _Step(_Kind.READ_MISS, _ABSENT_VALUE, 0, None, False)
            case OpKind.WRITE:
                value_id = self.value_id(op.value)
                if unknown:
                    return _Step(_Kind.WRITE_UNKNOWN, value_id, 0, None, False)
                assert isinstance(outcome, Written)
                return _Step(_Kind.WRITE, value_id, outcome.version, None, False)
            case OpKind.CAS:
                value_id = self.value_id(op.value)
                if unknown:
                    return _Step(_Kind.CAS_UNKNOWN, value_id, 0, op.expected_version, False)
                if isinstance(outcome, Written):
                    return _Step(
                        _Kind.CAS_OK, value_id, outcome.version, op.expected_version, False
                    )
                assert isinstance(outcome, CasConflict)
                return _Step(
                    _Kind.CAS_CONFLICT,
                    _ABSENT_VALUE,
                    outcome.actual or 0,
                    op.expected_version,
                    outcome.actual is None,
                )
            case OpKind.DELETE:
                if unknown:
                    return _Step(_Kind.DELETE_UNKNOWN, _ABSENT_VALUE, 0, None, False)
                assert isinstance(outcome, Deleted)
                if outcome.version is None:
                    return _Step(_Kind.DELETE_NOTHING, _ABSENT_VALUE, 0, None, False)
                return _Step(_Kind.DELETE, _ABSENT_VALUE, outcome.version, None, False)


def _describe_state(state: _State, values: Sequence[str]) -> str:
    exists, version, value_id, exact = state
    at = f"version {version}" if exact else f"a version >= {version}"
    if not exists:
        return f"absent ({'never written' if version == 0 else 'tombstone at ' + at})"
    return f"{json.loads(values[value_id])!r} at {at}"


def _precheck(
    key: str, ops: Sequence[Operation], initial: KeyState
) -> LinearizabilityResult | None:
    """Find the plainly impossible outcomes, whose explanation needs no search."""
    written: set[str] = {
        _value_key(op.value) for op in ops if op.kind in (OpKind.WRITE, OpKind.CAS)
    }
    if initial.exists:
        written.add(_value_key(initial.value))
    version_owner: dict[int, Operation] = {}
    for op in ops:
        outcome = op.outcome
        if isinstance(outcome, ReadHit) and _value_key(outcome.value) not in written:
            return _failure(
                key,
                ops,
                0,
                (),
                op,
                (op,),
                f"key {key!r}: {op.describe()} returned a value that no operation wrote",
            )
        new_version = outcome.version if isinstance(outcome, Written | Deleted) else None
        if new_version is None:
            continue
        if new_version <= initial.version:
            return _failure(
                key,
                ops,
                0,
                (),
                op,
                (op,),
                f"key {key!r}: {op.describe()} created version {new_version}, but the key "
                f"starts at version {initial.version} and versions only grow",
            )
        other = version_owner.get(new_version)
        if other is not None:
            return _failure(
                key,
                ops,
                0,
                (),
                op,
                (op, other),
                f"key {key!r}: {op.describe()} and {other.describe()} both created version "
                f"{new_version}; a version is created once (one of them is a lost update)",
            )
        version_owner[new_version] = op
    return None


def _failure(
    key: str,
    ops: Sequence[Operation],
    configurations: int,
    prefix: tuple[Operation, ...],
    culprit: Operation,
    involved: tuple[Operation, ...],
    message: str,
) -> LinearizabilityResult:
    return LinearizabilityResult(
        key=key,
        ok=False,
        operation_count=len(ops),
        configurations=configurations,
        linearization=prefix,
        culprit=culprit,
        involved=involved,
        message=message,
    )


def check_linearizable(
    operations: Iterable[Operation],
    *,
    initial: KeyState | None = None,
    version_rule: VersionRule = VersionRule.CONSECUTIVE,
    max_configurations: int = CONFIGURATIONS_MAX,
    unknown_window_ns: int | None = None,
) -> LinearizabilityResult:
    """Decide whether the history of one key is linearizable (see the module docstring).

    `operations` must all be on the same key; `initial` is the key's state before the first
    one (default: never written). Reads with an `Unknown` outcome are ignored (they change
    nothing and reveal nothing). An operation with an `Unknown` outcome may take effect at any
    time after its invocation, or never; with `unknown_window_ns`, only within that long
    after its invocation, or never (use it when the store bounds how long a request can stay
    in flight: it makes failing histories with many unknown outcomes much cheaper to refute).
    Raises `SearchBoundExceeded` after `max_configurations` distinct configurations, and
    `ValueError` if the operations span several keys.
    """
    if unknown_window_ns is not None and unknown_window_ns < 0:
        raise ValueError(f"unknown_window_ns must be None or >= 0, got {unknown_window_ns}")
    ops = [op for op in operations if not (op.kind is OpKind.READ and op.is_unknown)]
    keys = {op.key for op in ops}
    if len(keys) > 1:
        raise ValueError(
            f"check_linearizable checks one key at a time, got {sorted(keys)!r}; "
            "use check_history() to split a history by key"
        )
    key = next(iter(keys)) if keys else ""
    start = initial if initial is not None else KeyState()
    if start.version < 0 or (start.exists and start.version == 0):
        raise ValueError(
            f"initial state {start!r} is impossible: a live key has a version >= 1 "
            "and versions are never negative"
        )
    early = _precheck(key, ops, start)
    if early is not None:
        return early

    # Compile: writes first, so a read's value id is known iff some operation wrote it.
    compiler = _Compiler()
    initial_value_id = compiler.value_id(start.value) if start.exists else _ABSENT_VALUE
    order = sorted(range(len(ops)), key=lambda i: ops[i].kind is OpKind.READ)
    steps: list[_Step | None] = [None] * len(ops)
    for index in order:
        steps[index] = compiler.compile(ops[index])
    value_texts = [text for text, _ in sorted(compiler.value_ids.items(), key=lambda kv: kv[1])]
    claimed = {version for op in ops if (version := _created_version(op)) is not None}
    observed = {
        outcome.version if isinstance(outcome, ReadHit) else outcome.actual or 0
        for op in ops
        if isinstance(outcome := op.outcome, ReadHit | CasConflict)
    }
    # A conflict reporting a version proves it live; a read proves its value too.
    pinned_values = {
        step.version: step.value_id
        for step in steps
        if step is not None and step.kind is _Kind.READ_HIT and step.version not in claimed
    }
    pinned_values.update(
        (step.version, _LIVE_VALUE)
        for step in steps
        if step is not None
        and step.kind is _Kind.CAS_CONFLICT
        and not step.conflict_absent
        and step.version not in claimed
        and step.version not in pinned_values
    )
    model = _Model(version_rule, claimed, max(claimed | observed | {start.version}), pinned_values)
    preserving = [step is not None and step.kind in _PRESERVING_KINDS for step in steps]
    search = _Search(key, ops, steps, preserving, model, max_configurations, unknown_window_ns)
    return search.run((start.exists, start.version, initial_value_id, True), value_texts)


class _Search:
    """Wing & Gong's search with Lowe's memoization over one key's compiled operations.

    Operations with a known outcome live in a doubly-linked list of their invocation and
    completion entries in time order (invocations first at equal times: such operations are
    concurrent); linearizing one lifts both entries out. The candidates to take effect next
    are the invocations before the first completion in the list. Operations with an `Unknown`
    outcome are kept apart, sorted by invocation: they never have to take effect, so they are
    only tried after the listed candidates, and only those invoked by that first completion.
    """

    def __init__(
        self,
        key: str,
        ops: Sequence[Operation],
        steps: Sequence[_Step | None],
        preserving: Sequence[bool],
        model: _Model,
        max_configurations: int,
        unknown_window_ns: int | None,
    ) -> None:
        self.key = key
        self.unknown_window_ns = unknown_window_ns
        self.ops = ops
        self.steps = steps
        self.preserving = preserving
        self.model = model
        self.max_configurations = max_configurations
        n = len(ops)
        self.n = n
        self.unknown = sorted(
            (i for i, op in enumerate(ops) if op.is_unknown),
            key=lambda i: ops[i].invoked_at_ns,
        )
        self.unknown_invoked = [ops[i].invoked_at_ns for i in self.unknown]
        # Entries: i < n is operation i's invocation, n + i its completion; 2n is the head.
        self.time = [op.invoked_at_ns for op in ops] + [op.completed_at_ns or 0 for op in ops]
        timeline = sorted(
            (self.time[entry], entry >= n, entry)
            for i, op in enumerate(ops)
            if not op.is_unknown
            for entry in (i, n + i)
        )
        self.head = 2 * n
        self.end = -1
        self.nxt = [self.end] * (2 * n + 1)
        self.prv = [self.end] * (2 * n + 1)
        previous = self.head
        for _, _, entry in timeline:
            self.nxt[previous] = entry
            self.prv[entry] = previous
            previous = entry
        # The rank of each operation among the known ones (in invocation order) or among
        # the Unknown ones (self.unknown order), for the compact taken sets.
        self.rank = [0] * n
        for rank, i in enumerate(self.unknown):
            self.rank[i] = rank
        known = sorted((op.invoked_at_ns, i) for i, op in enumerate(ops) if not op.is_unknown)
        for rank, (_, i) in enumerate(known):
            self.rank[i] = rank
        self.is_unknown = [op.is_unknown for op in ops]
        # For each value, the versions pinned to it (seen by reads, created by no known
        # operation), and the positions in self.unknown of the operations writing it.
        self.pinned_versions: dict[int, list[int]] = {}
        for version, value_id in sorted(model.pinned_values.items()):
            self.pinned_versions.setdefault(value_id, []).append(version)
        self.unknown_by_value: dict[int, list[int]] = {}
        for position, i in enumerate(self.unknown):
            step = steps[i]
            assert step is not None
            self.unknown_by_value.setdefault(step.value_id, []).append(position)
        # The highest version at which some read saw each value.
        self.last_read_version: dict[int, int] = {}
        for step in steps:
            if step is not None and step.kind is _Kind.READ_HIT:
                latest = self.last_read_version.get(step.value_id, -1)
                self.last_read_version[step.value_id] = max(latest, step.version)
        self.seen: set[tuple[int, int, object, _State]] = set()
        self.remaining_cache: dict[tuple[int, int], tuple[tuple[int, int, int], ...]] = {}

    def take(self, taken: _Taken, i: int) -> _Taken:
        """The taken set `taken` plus operation `i`."""
        watermark, window, unknown = taken
        if self.is_unknown[i]:
            return (watermark, window, unknown | (1 << self.rank[i]))
        window |= 1 << (self.rank[i] - watermark)
        # Slide the watermark past the operations now all taken: (-(w + 1)) & (w + 1) is
        # the lowest clear bit of w, so its position counts w's trailing ones.
        ones = ((-(window + 1)) & (window + 1)).bit_length() - 1
        return (watermark + ones, window >> ones, unknown)

    def lift(self, i: int) -> None:
        nxt, prv = self.nxt, self.prv
        for entry in (i, self.n + i):
            nxt[prv[entry]] = nxt[entry]
            if nxt[entry] != self.end:
                prv[nxt[entry]] = prv[entry]

    def unlift(self, i: int) -> None:
        nxt, prv = self.nxt, self.prv
        for entry in (self.n + i, i):
            nxt[prv[entry]] = entry
            if nxt[entry] != self.end:
                prv[nxt[entry]] = entry

    def remaining_unknown(
        self, taken_unknown: int, version: int
    ) -> tuple[tuple[int, int, int], ...]:
        """The Unknown operations not taken yet, up to interchangeability (see unknown_kind):
        configurations that differ only in which of several interchangeable operations they
        used have the same futures, so they are memoized as one."""
        cache_key = (taken_unknown, version)
        cached = self.remaining_cache.get(cache_key)
        if cached is not None:
            return cached
        kinds: list[tuple[int, int, int]] = []
        ceiling = self.model.ceiling
        for position, i in enumerate(self.unknown):
            if taken_unknown >> position & 1:
                continue
            step = self.steps[i]
            assert step is not None
            expected = -1 if step.expected is None else step.expected
            if (
                step.kind is _Kind.CAS_UNKNOWN
                and step.expected is not None
                and step.expected < version
            ):
                continue  # versions only grow: it can never match again
            if step.kind is not _Kind.DELETE_UNKNOWN and ceiling is not None and version >= ceiling:
                continue  # nothing it could create can be observed any more
            kinds.append((step.kind, expected, self.visible_value(step.value_id, version)))
        remaining = tuple(sorted(kinds))
        self.remaining_cache[cache_key] = remaining
        return remaining

    def remember(self, taken: _Taken, state: _State) -> bool:
        """Record a new configuration; False if it was explored before (and failed)."""
        watermark, window, taken_unknown = taken
        unknown: object = taken_unknown
        if self.unknown and self.unknown_window_ns is None:
            unknown = self.remaining_unknown(taken_unknown, state[1])
        configuration = (watermark, window, unknown, state)
        if configuration in self.seen:
            return False
        if len(self.seen) >= self.max_configurations:
            hint = (
                f"; {len(self.unknown)} operations have unknown outcomes, and bounding how "
                "long they may take effect (unknown_window_ns) shrinks the search most"
                if self.unknown and self.unknown_window_ns is None
                else ""
            )
            raise SearchBoundExceeded(
                f"key {self.key!r}: the linearizability search explored "
                f"{self.max_configurations} configurations of {self.n} operations without "
                f"an answer; raise max_configurations or check a shorter history{hint}",
                key=self.key,
                configurations=len(self.seen),
            )
        self.seen.add(configuration)
        return True

    def unknown_kind(self, i: int, new_state: _State | None) -> tuple[int, int, int]:
        """Unknown operations of one kind are interchangeable where one of them may take
        effect: each is invoked already, so may take effect wherever the other could, and
        their values differ only where no read can see it. Trying one per kind is exact."""
        if new_state is None or self.unknown_window_ns is not None:
            return (-1, i, 0)  # distinct: not interchangeable (inapplicable, or deadlines)
        step = self.steps[i]
        assert step is not None
        expected = -1 if step.expected is None else step.expected
        return (step.kind, expected, self.visible_value(step.value_id, new_state[1] - 1))

    def visible_value(self, value_id: int, version: int) -> int:
        """`value_id`, or _UNREAD_VALUE if no read can see it once written above `version`.

        Under CONSECUTIVE only versions no known operation created matter (an Unknown write
        cannot create the others); under INCREASING any later read might."""
        if value_id == _ABSENT_VALUE:
            return value_id
        if self.model.consecutive:
            pinned = self.pinned_versions.get(value_id)
            seen_above = pinned is not None and pinned[-1] > version
        else:
            seen_above = self.last_read_version.get(value_id, -1) > version
        return value_id if seen_above else _UNREAD_VALUE

    def needed_later(self, i: int, version: int, taken_unknown: int) -> bool:
        """Whether Unknown operation `i`, about to create `version`, must be kept for later:
        reads saw its value at later versions that only Unknown operations can have created,
        and without it too few operations with that value would remain."""
        value = self.steps[i].value_id  # type: ignore[union-attr]  # compiled: never None
        if self.model.pinned_values.get(version) == value:
            return False
        later = self.pinned_versions.get(value)
        if not later:
            return False
        needed = len(later) - bisect.bisect_right(later, version)
        if needed == 0:
            return False
        others = sum(
            1
            for position in self.unknown_by_value[value]
            if self.unknown[position] != i and not taken_unknown >> position & 1
        )
        return others < needed

    def first_completion(self) -> int:
        entry = self.nxt[self.head]
        while 0 <= entry < self.n:
            entry = self.nxt[entry]
        return entry

    def run(self, initial: _State, value_texts: Sequence[str]) -> LinearizabilityResult:
        ops, steps, model, n = self.ops, self.steps, self.model, self.n
        nxt, end = self.nxt, self.end
        state = initial
        taken: _Taken = (0, 0, 0)
        # Frames: (operation, state and taken set before it, how it was chosen). How:
        # _FORCED (no alternative to try), _LISTED (resume the list after it) or its
        # position in self.unknown (resume below it).
        stack: list[tuple[int, _State, _Taken, int]] = []
        # floors[j]: the latest invocation among the first j + 1 operations taken, a lower
        # bound of the time at which the next one takes effect.
        floors: list[int] = []
        window = self.unknown_window_ns
        # For each Unknown frame, the kinds of Unknown operations tried in its configuration
        # (see unknown_kind); `tried` is the set of the configuration being explored.
        tried_stack: list[set[tuple[int, int, int]]] = []
        tried: set[tuple[int, int, int]] = set()
        best_depth = -1
        best_prefix: list[int] = []
        best_state = state
        best_blocker = -1
        entry = nxt[self.head]
        # None: scanning the list; else the position in self.unknown to try next (downwards).
        unknown_at: int | None = None
        forced_pass = True
        while True:
            if forced_pass:
                # An operation that may take effect now and leaves the state unchanged (a
                # read, a cas conflict, ...) can always be moved first: it was invoked before
                # every pending completion, so no real-time edge forbids it, and the rest of
                # any legal order stays legal. Taking it without branching keeps concurrent
                # reads from multiplying the configurations by every subset of them.
                forced_pass = False
                candidate = nxt[self.head]
                while 0 <= candidate < n:
                    step = steps[candidate]
                    assert step is not None
                    if self.preserving[candidate] and model.step(state, step) == state:
                        break
                    candidate = nxt[candidate]
                else:
                    candidate = -1
                if candidate >= 0:
                    configuration = (self.take(taken, candidate), state)
                    if self.remember(*configuration):
                        stack.append((candidate, state, taken, _FORCED))
                        floors.append(
                            max(floors[-1], self.time[candidate])
                            if floors
                            else self.time[candidate]
                        )
                        taken = configuration[0]
                        self.lift(candidate)
                        forced_pass = True
                        continue
                    # Explored from here before, without success: this configuration fails.
                else:
                    entry, unknown_at = nxt[self.head], None
                    continue
            elif unknown_at is None and entry == end:
                break  # every operation with a known outcome took effect
            elif unknown_at is None and entry < n:
                step = steps[entry]
                assert step is not None
                new_state = model.step(state, step)
                if new_state is not None:
                    configuration = (self.take(taken, entry), new_state)
                    if self.remember(*configuration):
                        stack.append((entry, state, taken, _LISTED))
                        floors.append(
                            max(floors[-1], self.time[entry]) if floors else self.time[entry]
                        )
                        state, taken = new_state, configuration[0]
                        self.lift(entry)
                        forced_pass = True
                        continue
                entry = nxt[entry]
                continue
            else:
                # The listed candidates are exhausted: try the Unknown operations invoked
                # before the first pending completion, then give up on this configuration.
                # The most recently invoked first: an operation that failed long ago is the
                # least likely to explain what happens now.
                completion = entry if entry >= n else self.first_completion()
                if unknown_at is None:
                    time_limit = self.time[completion]
                    unknown_at = bisect.bisect_right(self.unknown_invoked, time_limit) - 1
                    tried = set()
                while unknown_at >= 0:
                    op = self.unknown[unknown_at]
                    too_late = (
                        window is not None
                        and bool(floors)
                        and (self.time[op] + window < floors[-1])
                    )
                    if not too_late and not taken[2] >> unknown_at & 1:
                        step = steps[op]
                        assert step is not None
                        new_state = model.step(state, step)
                        kind = self.unknown_kind(op, new_state)
                        if (
                            new_state is not None
                            and kind not in tried
                            and not self.needed_later(op, new_state[1], taken[2])
                        ):
                            tried.add(kind)
                            configuration = (self.take(taken, op), new_state)
                            if self.remember(*configuration):
                                stack.append((op, state, taken, unknown_at))
                                tried_stack.append(tried)
                                floors.append(
                                    max(floors[-1], self.time[op]) if floors else self.time[op]
                                )
                                state, taken = new_state, configuration[0]
                                forced_pass = True
                                break
                    unknown_at -= 1
                if forced_pass:
                    continue
                if len(stack) > best_depth:
                    best_depth = len(stack)
                    best_prefix = [frame[0] for frame in stack]
                    best_state = state
                    best_blocker = completion - n
            # Backtrack to the last real choice; forced frames have no alternative to try.
            while True:
                if not stack:
                    return _explain(
                        self.key,
                        ops,
                        len(self.seen),
                        best_prefix,
                        best_state,
                        best_blocker,
                        value_texts,
                    )
                undone, state, taken, how = stack.pop()
                floors.pop()
                if how >= 0:
                    tried = tried_stack.pop()
                if how != _FORCED:
                    break
                self.unlift(undone)
            if how == _LISTED:
                self.unlift(undone)
                entry, unknown_at = nxt[undone], None
            else:
                entry, unknown_at = self.first_completion(), how - 1

        order = [frame[0] for frame in stack]
        return LinearizabilityResult(
            key=self.key,
            ok=True,
            operation_count=n,
            configurations=len(self.seen),
            linearization=tuple(ops[i] for i in order),
            culprit=None,
            involved=(),
            message=f"key {self.key!r}: {n} operations are linearizable "
            f"({len(order)} took effect, {len(self.seen)} configurations explored)",
        )


def _created_version(op: Operation) -> int | None:
    outcome = op.outcome
    return outcome.version if isinstance(outcome, Written | Deleted) else None


def _changes_state(op: Operation) -> bool:
    outcome = op.outcome
    if isinstance(outcome, Unknown):
        return op.kind is not OpKind.READ
    return isinstance(outcome, Written) or (
        isinstance(outcome, Deleted) and outcome.version is not None
    )


def _explain(
    key: str,
    ops: Sequence[Operation],
    configurations: int,
    prefix: list[int],
    state: _State,
    blocker: int,
    value_texts: Sequence[str],
) -> LinearizabilityResult:
    culprit = ops[blocker]
    done = set(prefix)
    # The operation that set the state the culprit could not accept, and the ones that were
    # still free to take effect before the culprit's completion (its concurrent rivals).
    setter = next((ops[i] for i in reversed(prefix) if _changes_state(ops[i])), None)
    assert culprit.completed_at_ns is not None
    rivals = [
        op
        for i, op in enumerate(ops)
        if i not in done and i != blocker and op.invoked_at_ns <= culprit.completed_at_ns
    ]
    creator = None
    if isinstance(culprit.outcome, ReadHit):
        read_version = culprit.outcome.version
        creator = next(
            (op for op in ops if _created_version(op) == read_version and op is not culprit),
            None,
        )
    involved = tuple(
        dict.fromkeys(
            [culprit, *([setter] if setter else []), *([creator] if creator else []), *rivals[:8]]
        )
    )
    after = f"after {setter.describe()}" if setter is not None else "from the initial state"
    rival_text = (
        "; no other operation could take effect before it"
        if not rivals
        else f"; nor after any of the {len(rivals)} operations that could still take effect "
        f"before its completion (e.g. {rivals[0].describe()})"
    )
    created = "" if creator is None else f" (its version was created by {creator.describe()})"
    message = (
        f"key {key!r} is not linearizable: {culprit.describe()}{created} cannot take effect "
        f"in any order that respects real time. The longest legal order found has "
        f"{len(prefix)} of {len(ops)} operations and leaves the key "
        f"{_describe_state(state, value_texts)} ({after}){rival_text}"
    )
    return _failure(
        key,
        ops,
        configurations,
        tuple(ops[i] for i in prefix),
        culprit,
        involved,
        message,
    )


def check_history(
    operations: Iterable[Operation],
    *,
    initial: dict[str, KeyState] | None = None,
    version_rule: VersionRule = VersionRule.CONSECUTIVE,
    max_configurations: int = CONFIGURATIONS_MAX,
    unknown_window_ns: int | None = None,
) -> dict[str, LinearizabilityResult]:
    """Check each key's history on its own (keys are independent); return results by key."""
    by_key: defaultdict[str, list[Operation]] = defaultdict(list)
    for op in operations:
        by_key[op.key].append(op)
    starts = initial or {}
    return {
        key: check_linearizable(
            key_ops,
            initial=starts.get(key),
            version_rule=version_rule,
            max_configurations=max_configurations,
            unknown_window_ns=unknown_window_ns,
        )
        for key, key_ops in sorted(by_key.items())
    }
