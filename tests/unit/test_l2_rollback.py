"""The L2 rollback: an environment fault of the model where L2 goes back to an older snapshot."""

from __future__ import annotations

import dataclasses

import pytest

from proofs.explore import explore
from proofs.scenarios import Move
from sagemem.spec.invariants import first_violation, is_quiescent, versions_bounded
from sagemem.spec.model import (
    ROLLBACK_TO,
    ProtocolDefinition,
    State,
    Transition,
    initial_state,
    is_rollback,
    quick,
    transitions,
)
from sagemem.spec.table import TABLE
from sagemem.spec.vocabulary import Effect, Event, L1State, Mode

MODES = pytest.mark.parametrize("mode", list(Mode), ids=lambda mode: mode.value)


def _small(mode: Mode, *, writes: int = 1, rollback: bool = True) -> ProtocolDefinition:
    return ProtocolDefinition(
        mode=mode, agents=2, writes=writes, fault_budget=1, l2_rollback=rollback
    )


def _play(defn: ProtocolDefinition, moves: list[tuple[Event, int | None]]) -> State:
    """Take each (event, 1-based agent) step of the table in turn; each must be enabled."""
    state = initial_state(defn)
    for number, (event, agent) in enumerate(moves, start=1):
        step = Move(event=event, agent=agent).step_in(defn, state)
        assert step is not None, f"move {number} ({event.name}) is not enabled"
        state = step.target
        assert first_violation(defn, state) is None, (number, first_violation(defn, state))
    return state


# agent1 caches v0 (L2 now holds v0), agent2 writes v1 through: the relay deletes L2 and the
# invalidation reaches agent1, whose floor is now v1.
_INVALIDATED_READER = [
    (Event.READ, 1),
    (Event.FILL_FETCH, 1),
    (Event.FILL_DATA, 1),
    (Event.WRITE_THROUGH, 2),
    (Event.HOME_COMMIT, 2),
    (Event.OUTBOX_RELAY, None),
    (Event.DELIVER_INVALIDATE, 1),
    (Event.WRITE_SETTLED, 2),
]


def _rollbacks(defn: ProtocolDefinition, state: State) -> list[Transition]:
    return [t for t in transitions(defn, state) if is_rollback(t.event, t.payload)]


def test_quick_definitions_offer_the_rollback_and_plain_ones_do_not() -> None:
    """`sagemem check`'s bounds include the rollback; a plain definition (Z3's) leaves it off."""
    assert all(defn.l2_rollback for mode in Mode for defn in quick(mode))
    assert not ProtocolDefinition().l2_rollback


@MODES
def test_rollback_puts_back_an_older_version_as_a_fault(mode: Mode) -> None:
    """After the relay deleted v0 from L2, the rollback restores v0 with the value v0 names,
    marks the copy restored and takes one fault of the budget."""
    defn = _small(mode)
    state = _play(defn, _INVALIDATED_READER)
    assert state.l2 == -1
    assert state.home == 1
    (step,) = _rollbacks(defn, state)
    after = step.target
    assert (after.l2, after.l2val, after.l2_restored) == (0, state.names[0], True)
    assert after.faults == state.faults + 1
    assert step.payload == ROLLBACK_TO + 0
    assert "L2_ROLLBACK(v0)" in step.label


def test_rollback_is_not_offered_without_the_flag_budget_or_history() -> None:
    """No rollback when the definition leaves it off, when the fault budget is spent, or
    before L2 ever held a copy."""
    state = _play(_small(Mode.COHERENT), _INVALIDATED_READER)
    assert _rollbacks(_small(Mode.COHERENT, rollback=False), state) == []
    assert _rollbacks(_small(Mode.COHERENT), state._replace(faults=1)) == []
    assert _rollbacks(_small(Mode.COHERENT), initial_state(_small(Mode.COHERENT))) == []


def test_only_older_versions_than_the_current_copy_come_back() -> None:
    """A rollback never moves L2 forward, nor past the newest copy it held: with v0 in L2
    (and the home at v0, then v1) nothing is offered."""
    defn = _small(Mode.COHERENT)
    state = _play(defn, _INVALIDATED_READER[:3])
    assert state.l2 == 0
    assert _rollbacks(defn, state) == []
    state = _play(defn, _INVALIDATED_READER[:5])
    assert (state.home, state.l2) == (1, 0)
    assert _rollbacks(defn, state) == []


@MODES
def test_a_reader_told_of_v1_discards_the_restored_v0_and_caches_v1(mode: Mode) -> None:
    """The floor defends against the restored copy: the stale fill is discarded, the restored
    copy is gone once the fill backs off, and the refetch caches the home's v1."""
    defn = _small(mode)
    state = _play(defn, _INVALIDATED_READER)
    state = _rollbacks(defn, state)[0].target
    defn_played = dataclasses.replace(defn, fault_budget=None)
    moves = [(Event.READ, 1), (Event.FILL_FETCH, 1), (Event.FILL_DATA, 1)]
    for event, agent in moves:
        step = Move(event=event, agent=agent).step_in(defn_played, state)
        assert step is not None
        state = step.target
    assert state.agents[0].st is L1State.IS_D
    assert state.l2 == -1
    assert not state.l2_restored
    for event, agent in [(Event.FILL_FETCH, 1), (Event.FILL_DATA, 1)]:
        step = Move(event=event, agent=agent).step_in(defn_played, state)
        assert step is not None
        state = step.target
    assert (state.agents[0].st, state.agents[0].ver) == (L1State.S, 1)
    assert is_quiescent(defn_played, state)


def test_an_uninformed_reader_may_cache_the_restored_copy_marked_restored() -> None:
    """An agent that never heard of v1 caches the restored v0: a consequence of the fault
    (its copy is marked restored and exempt from the recency properties), not a violation."""
    defn = ProtocolDefinition(mode=Mode.COHERENT, agents=3, writes=1, l2_rollback=True)
    state = _play(defn, _INVALIDATED_READER)
    state = _rollbacks(defn, state)[0].target
    for event in (Event.READ, Event.FILL_FETCH, Event.FILL_DATA):
        step = Move(event=event, agent=3).step_in(defn, state)
        assert step is not None
        state = step.target
    reader = state.agents[2]
    assert (reader.st, reader.ver, reader.restored) == (L1State.S, 0, True)
    assert first_violation(defn, state) is None


def test_l2_going_back_by_a_protocol_step_is_still_a_violation() -> None:
    """versions_bounded exempts only a copy the rollback restored: L2 back at v0 after it
    held v1 is a violation unless the rollback put it there."""
    defn = _small(Mode.COHERENT)
    state = _play(defn, _INVALIDATED_READER)._replace(l2=0, l2val=0, l2_high=1)
    assert versions_bounded(defn, state) is not None
    assert versions_bounded(defn, state._replace(l2_restored=True)) is None


@MODES
def test_the_real_table_passes_with_the_rollback(mode: Mode) -> None:
    """Every property of the explorer holds for the real table at 2 agents, 1 write, with
    the rollback as the run's fault."""
    report = explore(_small(mode))
    assert report.ok, report.counterexample.render() if report.counterexample else report


def _note_row(source: L1State, mode: Mode) -> int:
    (index,) = [
        i
        for i, rule in enumerate(TABLE)
        if rule.source is source
        and rule.event is Event.DELIVER_INVALIDATE
        and mode in rule.modes
        and Effect.NOTE_INVALIDATION in rule.effects
    ]
    return index


def _without_note(index: int, defn: ProtocolDefinition) -> ProtocolDefinition:
    rule = TABLE[index]
    effects = tuple(e for e in rule.effects if e is not Effect.NOTE_INVALIDATION)
    table = (*TABLE[:index], dataclasses.replace(rule, effects=effects), *TABLE[index + 1 :])
    return dataclasses.replace(defn, table=table)


@pytest.mark.parametrize(
    ("source", "mode", "writes"),
    [
        (L1State.S, Mode.COHERENT, 1),
        (L1State.S, Mode.STRICT, 1),
        (L1State.WT_H, Mode.COHERENT, 2),
    ],
    ids=["S-coherent", "S-strict", "WT_H-coherent"],
)
def test_a_dropped_note_invalidation_dies_once_l2_may_go_back(
    source: L1State, mode: Mode, writes: int
) -> None:
    """Without NOTE_INVALIDATION the agent's floor stays below the invalidation it saw: with
    the rollback its next fill caches the restored older copy (fill_respects_invalidations),
    and the trace shows the rollback; without the rollback the explorer cannot tell (checked
    at 1 write)."""
    mutant = _without_note(_note_row(source, mode), _small(mode, writes=writes))
    report = explore(mutant)
    assert not report.ok
    assert report.counterexample is not None
    trace = report.counterexample
    assert trace.property_name == "fill_respects_invalidations", trace.render()
    assert any("L2_ROLLBACK(v0)" in step.event for step in trace.steps), trace.render()
    if writes == 1:  # the 2-write bound without the rollback is slow; 1 write makes the point
        assert explore(dataclasses.replace(mutant, l2_rollback=False)).ok


def test_two_faults_crash_then_rollback_stall_a_strict_writer_in_the_model() -> None:
    """A known limit of the model, why the 2-fault bounds run without the rollback: a holder
    that owes an ack crashes, its new fill hits the restored copy (FETCH_UNSETTLED is asked
    only on an L2 miss) and renews the read lease its owed ack expires with, so only a
    LEASE_LAPSE, a third fault, would free the writer (production's owed ack keeps its own
    deadline)."""
    defn = ProtocolDefinition(mode=Mode.STRICT, agents=2, writes=1, fault_budget=2)
    assert explore(defn).ok
    report = explore(dataclasses.replace(defn, l2_rollback=True))
    assert report.counterexample is not None
    assert report.counterexample.property_name == "no_deadlock"
    labels = [step.event for step in report.counterexample.steps]
    assert any("CRASH" in label for label in labels)
    assert any("L2_ROLLBACK" in label for label in labels)
