"""Mutation testing: every single-row mutant is generated, and a known-bad one is killed."""

from __future__ import annotations

from collections import Counter

import pytest

from proofs.mutants import (
    CheckerKind,
    CheckerSpec,
    Mutant,
    MutationKind,
    check_mutant,
    default_checkers,
    generate_mutants,
    mutate,
    run_mutants,
)
from sagemem.spec.model import ProtocolDefinition
from sagemem.spec.table import TABLE, Rule
from sagemem.spec.vocabulary import ActorState, Effect, Event, Guard, L1State, Mode

SMALL_TABLE = (
    Rule(L1State.I, Event.READ, Guard.ALWAYS, L1State.IS_D, (Effect.REQUEST_FILL,)),
    Rule(L1State.S, Event.READ, Guard.CONN_OK, L1State.S, (Effect.RETURN_VALUE,)),
    Rule(
        ActorState.HOME,
        Event.OUTBOX_RELAY,
        Guard.ALWAYS,
        ActorState.HOME,
        (Effect.L2_DELETE, Effect.PUBLISH_INVALIDATIONS, Effect.HOME_CLEAR_OUTBOX),
    ),
)

SMALL_EXPLORER = (CheckerSpec(CheckerKind.EXPLORE, agents=2, writes=2, fault_budget=1),)


def _stale_fill_mutant() -> Mutant:
    """The stale-fill race: an invalidation during a fill no longer moves IS_D to IS_D_I."""
    index = next(
        i
        for i, rule in enumerate(TABLE)
        if rule.source is L1State.IS_D
        and rule.event is Event.DELIVER_INVALIDATE
        and rule.target is L1State.IS_D_I
        and Mode.COHERENT in rule.modes
    )
    return Mutant(MutationKind.WRONG_TARGET, index, TABLE[index], L1State.IS_D.name)


def test_generated_mutant_counts_for_a_small_table() -> None:
    """Each L1 row gets one wrong target per other state, one mutant per effect, one drop and,
    if guarded, one weakened guard; actor rows get no wrong target."""
    defn = ProtocolDefinition(table=SMALL_TABLE)
    mutants = list(generate_mutants(defn))
    other_states = len(L1State) - 1
    expected = Counter(
        {
            MutationKind.WRONG_TARGET: 2 * other_states,
            MutationKind.DROPPED_EFFECT: 1 + 1 + 3,
            MutationKind.DROPPED_ROW: 3,
            MutationKind.WEAKENED_GUARD: 1,
        }
    )
    assert expected == Counter(mutant.kind for mutant in mutants)
    assert len(mutants) == len({mutant.name for mutant in mutants})


def test_mutate_changes_exactly_one_row() -> None:
    """Each kind of mutation changes only its row, in the documented way."""
    table = SMALL_TABLE
    weakened = mutate(table, Mutant(MutationKind.WEAKENED_GUARD, 1, table[1]))
    assert weakened[1].guard is Guard.ALWAYS
    assert weakened[0] is table[0]
    assert weakened[2] is table[2]
    dropped_effect = mutate(table, Mutant(MutationKind.DROPPED_EFFECT, 2, table[2], "1"))
    assert dropped_effect[2].effects == (Effect.L2_DELETE, Effect.HOME_CLEAR_OUTBOX)
    dropped_row = mutate(table, Mutant(MutationKind.DROPPED_ROW, 0, table[0]))
    assert (table[1], table[2]) == dropped_row
    retargeted = mutate(table, Mutant(MutationKind.WRONG_TARGET, 0, table[0], "S"))
    assert retargeted[0].target is L1State.S


def test_mutate_rejects_a_mutant_of_another_table() -> None:
    """A mutant applied to a table whose row differs is refused, naming the row."""
    mutant = Mutant(MutationKind.DROPPED_ROW, 0, SMALL_TABLE[1])
    with pytest.raises(ValueError, match="row 0"):
        mutate(SMALL_TABLE, mutant)


def test_stale_fill_mutant_is_killed_by_the_explorer() -> None:
    """Removing the stale-fill fix is caught at 2 agents, 2 writes (it needs a second write)."""
    outcome = check_mutant(ProtocolDefinition(), _stale_fill_mutant(), SMALL_EXPLORER)
    assert outcome.killed
    assert outcome.mode is Mode.COHERENT
    assert outcome.killer == SMALL_EXPLORER[0].name


def test_run_mutants_reports_kills_per_checker() -> None:
    """The report counts killed mutants and says which checker killed them first."""
    dropped = Mutant(MutationKind.DROPPED_ROW, 0, TABLE[0])
    report = run_mutants(
        ProtocolDefinition(),
        checkers=SMALL_EXPLORER,
        mutants=[_stale_fill_mutant(), dropped],
        workers=1,
    )
    assert (report.killed, report.total) == (2, 2)
    assert {SMALL_EXPLORER[0].name: 2} == report.kills_by_checker()
    assert report.survivors == ()


def test_the_real_table_passes_the_small_explorer() -> None:
    """The chain's first checker accepts the real table, so its kills are the mutations'."""
    from proofs.explore import explore

    first = default_checkers()[0]
    assert first.kind is CheckerKind.EXPLORE
    for mode in Mode:
        defn = ProtocolDefinition(
            mode=mode, agents=first.agents, writes=first.writes, fault_budget=first.fault_budget
        )
        assert explore(defn).ok
