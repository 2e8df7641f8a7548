"""Properties of the linearizability checker on generated histories.

Histories are made linearizable by construction: a random sequential schedule is run against a
reference model of one key (each operation takes effect at its own instant), then each
operation's interval is stretched around that instant. Any interval containing the instant
keeps the schedule's order consistent with real time, so the checker must accept every such
history; and making one read return an older version than a write that completed before the
read began must always be rejected.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from sagemem.verify import (
    CasConflict,
    Deleted,
    Operation,
    OpKind,
    ReadHit,
    ReadMiss,
    Unknown,
    VersionRule,
    Written,
    check_linearizable,
)

_SLOT_NS = 100  # the schedule's instants are 100 ns apart


@dataclass
class _Reference:
    """The sequential reference model of one key."""

    exists: bool = False
    version: int = 0
    value: int | None = None


@dataclass(frozen=True)
class _Draws:
    """Where the random choices come from (Hypothesis or a seeded `random.Random`)."""

    integer: Callable[[int, int], int]

    def pick[T](self, options: Sequence[T]) -> T:
        return options[self.integer(0, len(options) - 1)]


def _schedule(draws: _Draws, length: int, agents: int, stretch_ns: int) -> list[Operation]:
    """Run `length` random operations sequentially, then stretch their intervals."""
    model = _Reference()
    history: list[Operation] = []
    for index in range(length):
        instant = index * _SLOT_NS + _SLOT_NS // 2
        invoked = instant - draws.integer(0, stretch_ns)
        completed = instant + draws.integer(0, stretch_ns)
        agent = f"a{draws.integer(0, agents - 1)}"
        kind = draws.pick([OpKind.READ, OpKind.READ, OpKind.WRITE, OpKind.CAS, OpKind.DELETE])
        # Failed operations: some took effect, some did not; either way the outcome is lost.
        fate = draws.pick(["known"] * 8 + ["lost-applied", "lost-not-applied"])
        value = draws.integer(0, 5)
        expected = draws.pick([None, model.version, model.version, model.version - 1])
        outcome: ReadHit | ReadMiss | Written | CasConflict | Deleted | Unknown
        applied = fate != "lost-not-applied"
        if kind is OpKind.READ:
            if fate != "known":
                continue  # a lost read changes nothing; the checker ignores it anyway
            outcome = ReadHit(model.value, model.version) if model.exists else ReadMiss()
            value = 0
        elif kind is OpKind.WRITE:
            if applied:
                model = _Reference(True, model.version + 1, value)
            outcome = Written(model.version)
        elif kind is OpKind.CAS:
            matches = (expected is None and not model.exists) or (
                expected is not None and model.exists and expected == model.version
            )
            if matches and applied:
                model = _Reference(True, model.version + 1, value)
                outcome = Written(model.version)
            else:
                outcome = CasConflict(model.version if model.exists else None)
        else:
            if model.exists and applied:
                model = _Reference(False, model.version + 1, None)
                outcome = Deleted(model.version)
            else:
                outcome = Deleted(None)
        if fate != "known":
            outcome = Unknown("lost")
        history.append(
            Operation(
                op_id=f"{agent}#{index}",
                agent_id=agent,
                key="k",
                kind=kind,
                invoked_at_ns=invoked,
                completed_at_ns=None if fate != "known" and draws.integer(0, 1) else completed,
                outcome=outcome,
                value=value if kind in (OpKind.WRITE, OpKind.CAS) else None,
                expected_version=expected if kind is OpKind.CAS else None,
            )
        )
    return history


@st.composite
def stretched_histories(draw: st.DrawFn, length_min: int = 0) -> list[Operation]:
    """A linearizable one-key history: a sequential schedule with stretched intervals."""
    length = draw(st.integers(length_min, 40))
    agents = draw(st.integers(1, 5))
    stretch_ns = draw(st.sampled_from([0, 40, 150, 400]))
    history = _schedule(
        _Draws(lambda low, high: draw(st.integers(low, high))), length, agents, stretch_ns
    )
    return draw(st.permutations(history))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(stretched_histories())
def test_stretched_sequential_schedules_are_linearizable(history: list[Operation]) -> None:
    """Every history built from a legal sequential schedule is accepted, under both rules."""
    for rule in VersionRule:
        result = check_linearizable(history, version_rule=rule)
        assert result.ok, result.message
        known = {op.op_id for op in history if not op.is_unknown}
        assert known <= {op.op_id for op in result.linearization}


def _created(op: Operation) -> int | None:
    if isinstance(op.outcome, Written | Deleted):
        return op.outcome.version
    return None


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(stretched_histories(length_min=8), st.data())
def test_a_read_made_older_than_a_completed_write_is_detected(
    history: list[Operation], data: st.DataObject
) -> None:
    """A read returning a version older than one whose write completed before it began fails."""
    writes = [(op, op.outcome.version) for op in history if isinstance(op.outcome, Written)]
    completed_before = [
        (version, op.completed_at_ns)
        for op in history
        if op.completed_at_ns is not None and (version := _created(op)) is not None
    ]
    candidates = [
        (read, older)
        for read in history
        if isinstance(read.outcome, ReadHit)
        for older, older_version in writes
        if any(
            version > older_version and completed_at_ns < read.invoked_at_ns
            for version, completed_at_ns in completed_before
        )
    ]
    assume(candidates)
    read, older = data.draw(st.sampled_from(candidates))
    assert isinstance(older.outcome, Written)
    mutated = dataclasses.replace(read, outcome=ReadHit(older.value, older.outcome.version))
    result = check_linearizable([mutated if op is read else op for op in history])
    assert not result.ok
    assert result.culprit is not None
    assert result.culprit.op_id in result.message


def test_a_long_four_agent_history_is_linearizable() -> None:
    """A realistic hot-key history (4 agents, 3000 operations, overlapping) is accepted."""
    rng = random.Random(4)
    history = _schedule(_Draws(rng.randint), 3000, 4, 250)
    result = check_linearizable(history)
    assert result.ok, result.message
    assert result.configurations < 10 * len(history)
