"""A mutant explored differentially against the real table's graph gives explore()'s verdict."""

from __future__ import annotations

import dataclasses

import pytest

from proofs.explore import RealGraph, explore, explore_differential
from proofs.mutants import changed_keys, mutate_definition, select_mutants
from proofs.report import CheckReport
from sagemem.spec import TABLE, Effect, Event, Guard, L1State, Mode, ProtocolDefinition, Rule

_COUNTS = ("states", "edges", "depth", "quiescent_states", "protocol_edges", "prompt_states")


def _small(mode: Mode) -> ProtocolDefinition:
    return ProtocolDefinition(mode=mode, agents=2, writes=1, fault_budget=1, l2_rollback=True)


@pytest.fixture(scope="module")
def bases() -> dict[Mode, RealGraph]:
    """The real table's graph at 2 agents, 1 write, 1 fault (with the L2 rollback)."""
    return {mode: RealGraph.explore(_small(mode)) for mode in Mode}


def _assert_same(full: CheckReport, diff: CheckReport) -> None:
    assert diff.ok == full.ok
    for key in _COUNTS:
        assert diff.summary.get(key) == full.summary.get(key), key
    if full.counterexample is None:
        assert diff.counterexample is None
        return
    assert diff.counterexample is not None
    assert diff.counterexample.property_name == full.counterexample.property_name
    assert diff.counterexample.explanation == full.counterexample.explanation
    assert diff.counterexample.steps == full.counterexample.steps
    assert diff.counterexample.render() == full.counterexample.render()


# (mutant, mode, what a full exploration says): kills by an invariant, by the ghost trace
# checks, by a deadlock, by quiescence, by a livelock and by an unhandled event; survivors.
_SAMPLE = [
    ("row60:wrong_target=M", Mode.COHERENT, "single_owner"),
    ("row19:substituted_effect=0:DROP_COPY", Mode.STRICT, "fill_respects_invalidations"),
    ("row26:substituted_effect=0:DROP_COPY", Mode.COHERENT, "reads_respect_invalidations"),
    ("row80:dropped_effect=0", Mode.STRICT, "no_deadlock"),
    ("row75:substituted_effect=0:HOME_STORE_KEEP_GRANT", Mode.COHERENT, "quiescence_reachable"),
    ("row53:dropped_effect=1", Mode.COHERENT, "internal_steps_terminate"),
    ("refusal10:dropped_refusal", Mode.STRICT, "table_handles_every_event"),
    ("row66:dropped_effect=1", Mode.STRICT, "ok"),
    ("row12:dropped_effect=0", Mode.COHERENT, "ok"),
    ("row45:wrong_target=M+row60:dropped_effect=0", Mode.STRICT, "ok"),
    ("refusal108:refusal_kind=NOT_APPLICABLE", Mode.COHERENT, "ok"),
]


@pytest.mark.parametrize(("name", "mode", "expected"), _SAMPLE)
def test_differential_exploration_matches_a_full_one(
    bases: dict[Mode, RealGraph], name: str, mode: Mode, expected: str
) -> None:
    """Same verdict, property, trace and state and edge counts as explore() of the mutant;
    verify=True re-steps every reused offer with the mutant's table and finds no change."""
    (mutant,) = select_mutants(ProtocolDefinition(), [name])
    mutated = dataclasses.replace(mutate_definition(_small(mode), mutant), name=name)
    full = explore(mutated)
    verdict = full.counterexample.property_name if full.counterexample else "ok"
    assert verdict == expected
    diff = explore_differential(bases[mode], mutated, changed_keys(mutant), verify=True)
    _assert_same(full, diff)
    fast = explore_differential(bases[mode], mutated, changed_keys(mutant))
    _assert_same(full, fast)


def test_a_redundant_effect_has_the_real_state_space(bases: dict[Mode, RealGraph]) -> None:
    """A mutant whose re-stepped offers all agree is reported as the real state space; one
    whose steps differ somewhere is not, even when it passes."""
    defn = ProtocolDefinition()
    redundant, stale = select_mutants(defn, ["row66:dropped_effect=1", "row12:dropped_effect=0"])
    same = explore_differential(
        bases[Mode.STRICT],
        mutate_definition(_small(Mode.STRICT), redundant),
        changed_keys(redundant),
    )
    assert same.ok
    assert same.summary["equal_state_space"] == "yes"
    assert int(same.summary["recomputed_offers"]) > 0
    assert same.summary["states"] == bases[Mode.STRICT].count
    assert same.summary["real_states"] == bases[Mode.STRICT].count
    other = explore_differential(
        bases[Mode.COHERENT], mutate_definition(_small(Mode.COHERENT), stale), changed_keys(stale)
    )
    assert other.ok
    assert other.summary["equal_state_space"] == "no"
    assert int(other.summary["differing_offers"]) > 0


def test_reusing_a_step_the_mutant_changed_is_caught(bases: dict[Mode, RealGraph]) -> None:
    """Told that a killed mutant changes nothing, the search would reuse its changed steps and
    pass it; verify=True re-steps every reused offer and refuses."""
    (mutant,) = select_mutants(ProtocolDefinition(), ["row60:wrong_target=M"])
    mutated = mutate_definition(_small(Mode.COHERENT), mutant)
    blind = explore_differential(bases[Mode.COHERENT], mutated, frozenset())
    assert blind.ok, "with no changed offer every real step is reused"
    with pytest.raises(AssertionError, match="reused the real steps of"):
        explore_differential(bases[Mode.COHERENT], mutated, frozenset(), verify=True)


def _edited(source: L1State, event: Event, edit: dict[str, object], mode: Mode) -> tuple[Rule, ...]:
    return tuple(
        dataclasses.replace(rule, **edit)  # type: ignore[arg-type]
        if (rule.source, rule.event) == (source, event) and mode in rule.modes
        else rule
        for rule in TABLE
    )


@pytest.mark.parametrize("mode", list(Mode), ids=lambda m: m.value)
def test_fair_progress_is_found_on_the_differential_graph(
    bases: dict[Mode, RealGraph], mode: Mode
) -> None:
    """A Modified owner that ignores recalls starves a reader under fair scheduling: the same
    fair_progress trace as explore() (the earlier graph properties skipped)."""
    table = tuple(
        dataclasses.replace(r, target=r.source, effects=())
        if r.source is L1State.M and r.event is Event.DELIVER_RECALL
        else r
        for r in TABLE
    )
    mutated = dataclasses.replace(_small(mode), table=table)
    skip = frozenset({"quiescence_reachable", "prompt_progress"})
    full = explore(mutated, skip=skip)
    assert full.counterexample is not None
    assert full.counterexample.property_name == "fair_progress"
    changed = {(L1State.M, Event.DELIVER_RECALL)}
    _assert_same(full, explore_differential(bases[mode], mutated, changed, skip=skip))


def test_prompt_progress_is_found_on_the_differential_graph() -> None:
    """A write-through that never recalls the owner breaks prompt progress, as in explore()."""
    mode = Mode.STRICT
    rows = [
        i
        for i, rule in enumerate(TABLE)
        if (rule.source, rule.event, rule.guard)
        == (L1State.WT_H, Event.HOME_COMMIT, Guard.OWNED_BY_OTHER)
        and mode in rule.modes
    ]
    (row,) = rows
    effects = tuple(e for e in TABLE[row].effects if e is not Effect.SEND_RECALL)
    table = (*TABLE[:row], dataclasses.replace(TABLE[row], effects=effects), *TABLE[row + 1 :])
    real = ProtocolDefinition(mode=mode, agents=2, writes=2, fault_budget=0)
    mutated = dataclasses.replace(real, table=table)
    full = explore(mutated)
    assert full.counterexample is not None
    assert full.counterexample.property_name == "prompt_progress"
    base = RealGraph.explore(real)
    changed = {(L1State.WT_H, Event.HOME_COMMIT)}
    _assert_same(full, explore_differential(base, mutated, changed))


def test_a_mutant_at_other_bounds_is_refused(bases: dict[Mode, RealGraph]) -> None:
    """The real graph only stands for the mutant at its own bounds and mode."""
    other = dataclasses.replace(_small(Mode.STRICT), writes=2)
    with pytest.raises(ValueError, match="writes=2"):
        explore_differential(bases[Mode.STRICT], other, frozenset())


def test_a_failing_real_table_gives_no_graph() -> None:
    """A table that breaks a property at the bound cannot stand for the real one."""
    table = _edited(L1State.M, Event.DELIVER_RECALL, {"effects": ()}, Mode.COHERENT)
    with pytest.raises(ValueError, match="no mutant can be explored"):
        RealGraph.explore(dataclasses.replace(_small(Mode.COHERENT), table=table))
