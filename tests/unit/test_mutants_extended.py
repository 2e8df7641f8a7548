"""The extended mutant generator: substitutions, swaps, refusal mutants, pairs, screening."""

from __future__ import annotations

from collections import Counter

from proofs.mutants import (
    CheckerKind,
    CheckerSpec,
    MutantOutcome,
    MutationKind,
    MutationReport,
    check_mutant,
    generate_extended_mutants,
    mutate_definition,
    screen_mutants,
    select_mutants,
)
from sagemem.spec.model import Bounds, ProtocolDefinition
from sagemem.spec.table import REFUSALS, TABLE, RefusalKind, Rule
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


def test_extended_generator_adds_substitutions_swaps_refusals_and_pairs() -> None:
    """On a 3-row table: substitutions within each effect's group, swaps of adjacent effects,
    two kind changes and one drop per refusal, and the requested number of distinct pairs."""
    defn = ProtocolDefinition(table=SMALL_TABLE, refusals=REFUSALS[:4])
    mutants = list(generate_extended_mutants(defn, pairs=5, seed=1))
    kinds = Counter(m.kind for m in mutants)
    # REQUEST_FILL has 4 substitutes, RETURN_VALUE 1, L2_DELETE 2, PUBLISH_INVALIDATIONS 1
    assert kinds[MutationKind.SUBSTITUTED_EFFECT] == 4 + 1 + 2 + 1
    assert kinds[MutationKind.SWAPPED_EFFECTS] == 2
    assert kinds[MutationKind.REFUSAL_KIND] == 2 * 4
    assert kinds[MutationKind.DROPPED_REFUSAL] == 4
    assert kinds[MutationKind.PAIR] == 5
    assert len({m.name for m in mutants}) == len(mutants)
    pair = next(m for m in mutants if m.kind is MutationKind.PAIR)
    assert pair.parts[0].row_index != pair.parts[1].row_index
    changed = mutate_definition(defn, pair)
    assert sum(a != b for a, b in zip(changed.table, SMALL_TABLE, strict=True)) == 2


def test_refusal_and_row_mutants_change_only_their_part() -> None:
    """A refusal mutant changes one refusal's kind (the table is unchanged); a swap reverses
    two adjacent effects; a substitution replaces one effect."""
    defn = ProtocolDefinition()
    (rekind, swap, sub) = select_mutants(
        defn,
        [
            "refusal0:refusal_kind=STALLED",
            "row5:swapped_effects=0",
            "row0:substituted_effect=0:REQUEST_COMMIT",
        ],
    )
    rekinded = mutate_definition(defn, rekind)
    assert rekinded.table == defn.table
    assert rekinded.refusals[0].kind is RefusalKind.STALLED
    assert rekinded.refusals[1:] == defn.refusals[1:]
    swapped = mutate_definition(defn, swap).table[5].effects
    assert swapped[:2] == TABLE[5].effects[1::-1]
    assert mutate_definition(defn, sub).table[0].effects == (Effect.REQUEST_COMMIT,)


def test_a_refusal_turned_not_applicable_is_killed_with_a_trace() -> None:
    """(S, READ, CONN_MISSED) STALLED -> NOT_APPLICABLE: production would answer the read
    with None; the explorer kills the mutant."""
    defn = ProtocolDefinition()
    index = next(
        i
        for i, f in enumerate(defn.refusals)
        if f.source is L1State.S and f.event is Event.READ and f.guard is Guard.CONN_MISSED
    )
    (mutant,) = select_mutants(defn, [f"refusal{index}:refusal_kind=NOT_APPLICABLE"])
    chain = (CheckerSpec(CheckerKind.EXPLORE, agents=2, writes=1, fault_budget=1),)
    outcome = check_mutant(defn, mutant, chain)
    assert outcome.killed
    assert "every_operation_answered" in outcome.violation


def test_screening_finds_unconsulted_refusals_and_commuting_swaps() -> None:
    """At a tiny bound, a refusal that decides no reachable event and a swap of commuting
    effects are screened as equivalent; a consulted refusal is not."""
    defn = ProtocolDefinition()
    impossible = next(i for i, f in enumerate(defn.refusals) if f.kind is RefusalKind.IMPOSSIBLE)
    names = [
        f"refusal{impossible}:refusal_kind=STALLED",
        "row5:swapped_effects=0",  # DIRECTORY_REMOVE_HOLDER and DROP_COPY commute
    ]
    consulted = next(
        i
        for i, f in enumerate(defn.refusals)
        if f.source is L1State.S and f.event is Event.READ and f.guard is Guard.CONN_MISSED
    )
    names.append(f"refusal{consulted}:refusal_kind=NOT_APPLICABLE")
    chosen = select_mutants(defn, names)
    reasons = screen_mutants(defn, chosen, (Bounds(2, 1, 1),))
    assert "refusal decides no event" in reasons[names[0]]
    assert "commute" in reasons[names[1]]
    assert names[2] not in reasons


def test_report_separates_coverage_kills_invalid_and_screened() -> None:
    """Coverage kills, invalid and screened mutants are counted apart from property kills."""
    defn = ProtocolDefinition()
    a, b, c, d = select_mutants(
        defn, ["row0:dropped_row", "row1:dropped_row", "row2:dropped_row", "row3:dropped_row"]
    )
    report = MutationReport(
        (
            MutantOutcome(a, killed=True, killer="explore(2 agents, 1 write, fault budget 1)"),
            MutantOutcome(b, killed=True, killer="row coverage at the quick bounds"),
            MutantOutcome(c, killed=False, invalid="AssertionError"),
            MutantOutcome(d, killed=False, equivalent="equivalent by construction"),
        ),
        1.0,
    )
    assert (report.property_kills, report.coverage_kills) == (1, 1)
    assert len(report.invalid) == len(report.screened) == 1
    assert report.survivors == ()
    assert report.kill_rate == 1.0
    assert report.property_kill_rate == 0.5
    assert Mode.COHERENT in a.modes
