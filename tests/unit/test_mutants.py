"""Mutation testing: every single-row mutant is generated, and a known-bad one is killed."""

from __future__ import annotations

import io
from collections import Counter
from pathlib import Path

import pytest

from proofs.cli import parse_options, run_checks
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
    select_mutants,
)
from proofs.scenarios import Scenario, check_scenarios, hostile_scenarios, run_scenario
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


def _named(*names: str) -> list[Mutant]:
    return select_mutants(ProtocolDefinition(), names)


def _dropping(source: L1State, event: Event, guard: Guard, effect: Effect, mode: Mode) -> Mutant:
    """The mutant that drops `effect` from the row (source, event, guard) of `mode`, found by
    content so that the test survives renumbering of the table."""
    (index,) = (
        i
        for i, rule in enumerate(TABLE)
        if (rule.source, rule.event, rule.guard) == (source, event, guard) and mode in rule.modes
    )
    position = TABLE[index].effects.index(effect)
    (mutant,) = _named(f"row{index}:dropped_effect={position}")
    return mutant


def test_select_mutants_finds_names_and_rejects_unknown_ones() -> None:
    """`--only` names resolve to the generated mutants, in the order given."""
    chosen = _named("row5:dropped_effect=1", "row0:dropped_row")
    assert [mutant.name for mutant in chosen] == ["row5:dropped_effect=1", "row0:dropped_row"]
    assert chosen[0].rule is TABLE[5]
    assert chosen[1].kind is MutationKind.DROPPED_ROW
    with pytest.raises(ValueError, match="row999:dropped_row"):
        _named("row999:dropped_row")


def test_only_option_selects_mutants(tmp_path: Path) -> None:
    """`sagemem check --mutants --only` takes a comma list or @FILE, and needs --mutants."""
    options = parse_options(["--mutants", "--only", "row1:dropped_row, row2:dropped_row"])
    assert options.only == ("row1:dropped_row", "row2:dropped_row")
    listing = tmp_path / "survivors.txt"
    listing.write_text("row3:dropped_row\nrow4:dropped_row\n", encoding="utf-8")
    assert parse_options(["--mutants", "--only", f"@{listing}"]).only == (
        "row3:dropped_row",
        "row4:dropped_row",
    )
    with pytest.raises(SystemExit):
        parse_options(["--only", "row1:dropped_row"])


def test_an_unknown_only_name_fails_before_any_check_runs() -> None:
    """A misspelt --only name is reported at once (status 2), not after the quick checks."""
    out, err = io.StringIO(), io.StringIO()
    options = parse_options(["--mutants", "--only", "row1:dropped_row,row999:nonsense"])
    assert run_checks(options, out=out, err=err) == 2
    assert "row999:nonsense" in err.getvalue()
    assert "explore" not in out.getvalue()


def test_the_chain_ends_with_the_hostile_scenarios_then_leaving_agents() -> None:
    """The scenarios come after every earlier link, and the explorer with agents that leave
    comes last, so adding either changed no earlier link's kills."""
    chain = default_checkers()
    assert chain[-2].kind is CheckerKind.SCENARIOS
    assert chain[-1].kind is CheckerKind.EXPLORE
    assert chain[-1].leaves
    assert not any(spec.leaves for spec in chain[:-1])


@pytest.mark.parametrize("mode", list(Mode), ids=lambda m: m.value)
def test_the_real_table_passes_every_hostile_scenario(mode: Mode) -> None:
    """Every scenario plays to its expected end on the real table (and reaches the defensive
    rows the model cannot: IS_D FILL_DATA [DATA_STALE], and the stalled owner's rows)."""
    report = check_scenarios(ProtocolDefinition(mode=mode))
    assert report.ok, report.counterexample.render() if report.counterexample else report
    played = [scenario for scenario in hostile_scenarios() if mode in scenario.modes]
    assert int(report.summary["scenarios"]) == len(played) >= 10
    fired = set()
    for scenario in played:
        assert run_scenario(ProtocolDefinition(mode=mode), scenario) is None
        fired.update(_rows_fired(mode, scenario))
    defensive = {
        i
        for i, rule in enumerate(TABLE)
        if (rule.source, rule.event, rule.guard)
        in {
            (L1State.IS_D, Event.FILL_DATA, Guard.DATA_STALE),
            (L1State.MS_A, Event.HOME_WRITE_BACK, Guard.GRANT_LOST),
            (L1State.ME_A, Event.HOME_FLUSH, Guard.GRANT_LOST),
        }
    }
    assert len(defensive) == 3
    assert defensive <= fired


def _rows_fired(mode: Mode, scenario: Scenario) -> set[int]:
    """Indices of the rows a scenario's table steps fire (replayed move by move)."""
    from sagemem.spec.model import initial_state

    defn = ProtocolDefinition(mode=mode, agents=scenario.agents, writes=6, fault_budget=None)
    index = {id(rule): i for i, rule in enumerate(TABLE)}
    state = initial_state(defn)
    fired: set[int] = set()
    for move in scenario.moves:
        if move.change is not None:
            state = move.change(state)
            continue
        step = move.step_in(defn, state)
        assert step is not None, f"{move} is not enabled"
        assert step.rule is not None
        fired.add(index[id(step.rule)])
        state = step.target
    return fired


def test_a_fill_that_keeps_stale_data_is_killed_by_a_hostile_scenario() -> None:
    """IS_D FILL_DATA [DATA_STALE] without REFETCH (unreachable in the model) keeps the stale
    data and never fetches again: the restored-snapshot scenario rejects it with a trace."""
    mutant = _dropping(
        L1State.IS_D, Event.FILL_DATA, Guard.DATA_STALE, Effect.REFETCH, Mode.COHERENT
    )
    outcome = check_mutant(ProtocolDefinition(), mutant, (CheckerSpec(CheckerKind.SCENARIOS),))
    assert outcome.killed
    assert outcome.killer == "hostile scenarios"
    assert "stale_l2_copy_is_refetched" in outcome.violation
    report = check_scenarios(ProtocolDefinition(table=mutate(TABLE, mutant)))
    trace = report.counterexample
    assert trace is not None
    text = trace.render()
    assert "HOSTILE: Redis is restored from a snapshot" in text
    assert "agent1 FILL_FETCH, is not enabled" in trace.explanation
    assert "a1:IS_D data=v0 req=data" in trace.steps[-1].state


def test_a_stalled_owner_that_does_not_acknowledge_is_killed_in_strict_mode() -> None:
    """MS_A DELIVER_INVALIDATE without SEND_ACK (strict): the writer would wait for the stalled
    owner's registration to lapse; the scenario expects the write to settle at once."""
    mutant = _dropping(
        L1State.MS_A, Event.DELIVER_INVALIDATE, Guard.ALWAYS, Effect.SEND_ACK, Mode.STRICT
    )
    outcome = check_mutant(ProtocolDefinition(), mutant, (CheckerSpec(CheckerKind.SCENARIOS),))
    assert outcome.killed
    assert outcome.mode is Mode.STRICT
    assert "agent3 WRITE_SETTLED, is not enabled" in outcome.violation


def test_a_write_that_never_recalls_the_owner_is_killed_by_prompt_progress() -> None:
    """WT_H HOME_COMMIT [OWNED_BY_OTHER] without SEND_RECALL survived every link before prompt
    progress; the explorer at 2 agents and 2 writes now kills it."""
    mutant = _dropping(
        L1State.WT_H, Event.HOME_COMMIT, Guard.OWNED_BY_OTHER, Effect.SEND_RECALL, Mode.COHERENT
    )
    chain = (CheckerSpec(CheckerKind.EXPLORE, agents=2, writes=2, fault_budget=0),)
    outcome = check_mutant(ProtocolDefinition(), mutant, chain)
    assert outcome.killed
    assert outcome.violation.startswith("prompt_progress")


@pytest.mark.parametrize("mode", list(Mode), ids=lambda m: m.value)
def test_a_resync_that_leaves_the_loss_marked_is_killed(mode: Mode) -> None:
    """S RESYNC without RESYNC_CONNECTION: the model offers RESYNC again while the agent is
    marked missed, production feeds one per detected loss; the scenario catches the
    entry that stays missed (its next fill cannot install)."""
    mutant = _dropping(L1State.S, Event.RESYNC, Guard.ALWAYS, Effect.RESYNC_CONNECTION, mode)
    outcome = check_mutant(ProtocolDefinition(), mutant, (CheckerSpec(CheckerKind.SCENARIOS),))
    assert outcome.killed
    assert "lost_invalidation_to_a_holder_resyncs_once" in outcome.violation
    assert "agent1 FILL_DATA, is not enabled" in outcome.violation
