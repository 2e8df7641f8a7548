"""The Z3 checks: they pass on the real table, agree with the model, and catch broken tables."""

from __future__ import annotations

import dataclasses
import os
import random
import re
import signal
import time

import pytest
import z3

from proofs.z3_check import (
    QUICK_DEPTH,
    _AgentOrder,
    _Unrolling,
    bounded_model_check,
    check_table,
    compare_with_model,
)
from proofs.z3_encoding import Encoding
from sagemem.spec.model import ProtocolDefinition, State, initial_state, transitions
from sagemem.spec.table import Rule
from sagemem.spec.vocabulary import ActorState, Effect, Event, Guard, L1State, Mode
from tests.property.strategies import without_stale_fill_fix

MODES = pytest.mark.parametrize("mode", list(Mode), ids=lambda mode: mode.value)


def _three_agents(mode: Mode) -> ProtocolDefinition:
    """The first quick bound: 3 agents, 1 write, one fault per run (every fault event), and
    the write-update relay offered beside the invalidating one, as in the quick check."""
    return ProtocolDefinition(mode=mode, agents=3, writes=1, fault_budget=1, write_update=True)


def _small(mode: Mode) -> ProtocolDefinition:
    """2 agents, 1 write: enough for every race below, and fast."""
    return ProtocolDefinition(mode=mode, agents=2, writes=1, fault_budget=1)


def _replace_rows(
    defn: ProtocolDefinition, match: dict[str, object], **changes: object
) -> ProtocolDefinition:
    """`defn` with every row whose fields equal `match` changed by `changes` (at least one)."""

    def hit(rule: Rule) -> bool:
        return all(getattr(rule, key) == value for key, value in match.items())

    table = tuple(dataclasses.replace(r, **changes) if hit(r) else r for r in defn.table)  # type: ignore[arg-type]  # field names checked by dataclasses.replace
    assert table != defn.table, f"no row matches {match}"
    return dataclasses.replace(defn, table=table)


def _drop_effect(
    defn: ProtocolDefinition, match: dict[str, object], effect: Effect
) -> ProtocolDefinition:
    rows = []
    for rule in defn.table:
        if all(getattr(rule, key) == value for key, value in match.items()):
            rule = dataclasses.replace(
                rule, effects=tuple(e for e in rule.effects if e is not effect)
            )
        rows.append(rule)
    assert tuple(rows) != defn.table, f"no row matches {match} with {effect.name}"
    return dataclasses.replace(defn, table=tuple(rows))


def _sample_states(defn: ProtocolDefinition, count: int, seed: int) -> list[State]:
    """Reachable states from seeded random walks through the model's interpreter."""
    rng = random.Random(seed)
    states: list[State] = []
    while len(states) < count:
        state = initial_state(defn)
        for _ in range(rng.randint(5, 30)):
            options = [t.target for t in transitions(defn, state)]
            if not options:
                break
            state = rng.choice(options)
            if state.violation:
                break
            states.append(state)
    return states[:count]


@MODES
def test_table_checks_pass_on_the_real_table(mode: Mode) -> None:
    """Totality, determinism and type-invariant preservation hold for every row."""
    report = check_table(_three_agents(mode))
    assert report.counterexample is None
    assert report.ok


@MODES
def test_bmc_finds_no_violation_at_the_quick_depth(mode: Mode) -> None:
    """No execution of 3 agents up to the quick depth breaks an invariant."""
    report = bounded_model_check(_three_agents(mode), depth=QUICK_DEPTH)
    assert report.counterexample is None, report.counterexample.render()
    assert report.summary["depth"] == QUICK_DEPTH
    assert report.summary["symmetry_breaking"] == ("on" if mode is Mode.STRICT else "off")


@MODES
def test_encoding_agrees_with_the_model_on_sampled_states(mode: Mode) -> None:
    """On reachable states, Z3's successors and invariant verdicts equal the interpreter's."""
    defn = _three_agents(mode)
    for state in _sample_states(defn, 10, seed=7):
        assert compare_with_model(defn, state) == []


def test_encoding_agreement_check_can_fail() -> None:
    """The Z3 encoding of a different table disagrees with the model where the tables differ."""
    defn = _small(Mode.COHERENT)
    state = initial_state(defn)
    script = [
        (Event.WRITE_THROUGH, 1),
        (Event.READ, 0),
        (Event.FILL_FETCH, 0),
        (Event.HOME_COMMIT, 1),
        (Event.OUTBOX_RELAY, None),
    ]
    for event, agent in script:
        state = next(
            t.target for t in transitions(defn, state) if t.event is event and t.agent == agent
        )
    assert compare_with_model(defn, state) == []
    problems = compare_with_model(defn, state, encoded=without_stale_fill_fix(defn))
    assert problems
    assert any("DELIVER_INVALIDATE" in problem for problem in problems)


def test_table_checks_catch_a_weakened_guard() -> None:
    """Two rows enabled together (a guard weakened to ALWAYS) break determinism."""
    defn = _replace_rows(
        _three_agents(Mode.COHERENT),
        {"source": L1State.IS_D, "event": Event.FILL_DATA, "guard": Guard.DATA_STALE},
        guard=Guard.ALWAYS,
    )
    report = check_table(defn)
    assert not report.ok
    assert report.counterexample is not None
    assert report.counterexample.property_name == "determinism"


def test_table_checks_catch_a_dropped_row() -> None:
    """A (state, event) left without a row or refusal breaks totality."""
    defn = _three_agents(Mode.COHERENT)
    table = tuple(r for r in defn.table if not (r.source is L1State.M and r.event is Event.FLUSH))
    report = check_table(dataclasses.replace(defn, table=table))
    assert not report.ok
    assert report.counterexample is not None
    assert report.counterexample.property_name == "totality"
    assert "(M, FLUSH)" in report.counterexample.explanation


def test_table_checks_catch_a_wrong_target() -> None:
    """A row into a state whose shape its effects do not produce breaks the type invariant."""
    defn = _replace_rows(
        _three_agents(Mode.COHERENT),
        {"source": L1State.WT_A, "event": Event.WRITE_SETTLED},
        target=L1State.S,
    )
    report = check_table(defn)
    assert not report.ok
    assert report.counterexample is not None
    assert report.counterexample.property_name == "type_invariant_preserved"
    assert "WT_A --WRITE_SETTLED" in report.counterexample.explanation


def test_bmc_catches_the_stale_fill_without_its_fix() -> None:
    """Without IS_D -> IS_D_I, BMC finds a fill that installs a version nobody invalidates."""
    report = bounded_model_check(without_stale_fill_fix(_small(Mode.COHERENT)), depth=12)
    assert not report.ok
    cex = report.counterexample
    assert cex is not None
    assert cex.property_name in ("stale_copies_covered", "fill_respects_invalidations")
    labels = [step.event for step in cex.steps]
    assert any("DELIVER_INVALIDATE" in label for label in labels), cex.render()
    assert all("no such step" not in label for label in labels), cex.render()


@MODES
def test_bmc_catches_a_dropped_l2_delete(mode: Mode) -> None:
    """A relay that no longer deletes L2 (nor voids fill leases) leaves an old L2 copy."""
    defn = _drop_effect(
        _small(mode),
        {"source": ActorState.HOME, "event": Event.OUTBOX_RELAY},
        Effect.L2_DELETE,
    )
    report = bounded_model_check(defn, depth=12)
    assert not report.ok
    cex = report.counterexample
    assert cex is not None
    assert cex.property_name == "stale_copies_covered"
    assert any("OUTBOX_RELAY" in step.event for step in cex.steps), cex.render()


def test_bmc_symmetry_breaking_keeps_the_shortest_violation() -> None:
    """Searching up to a renaming of the agents finds the same race at the same depth."""
    defn = without_stale_fill_fix(_small(Mode.COHERENT))
    reduced = bounded_model_check(defn, depth=8, symmetry=True)
    full = bounded_model_check(defn, depth=8, symmetry=False)
    assert not reduced.ok
    assert not full.ok
    assert reduced.counterexample is not None
    assert full.counterexample is not None
    assert reduced.counterexample.property_name == full.counterexample.property_name
    assert reduced.summary["violation_depth"] == full.summary["violation_depth"]


def test_bmc_symmetry_breaking_lets_every_agent_act() -> None:
    """The race needs a reader and a writer: agent1 acts first, agent2 still takes part."""
    report = bounded_model_check(
        without_stale_fill_fix(_small(Mode.COHERENT)), depth=8, symmetry=True
    )
    cex = report.counterexample
    assert cex is not None
    actors = [step.event.split()[0] for step in cex.steps if step.event.startswith("agent")]
    assert actors[0] == "agent1", cex.render()
    assert "agent2" in actors, cex.render()
    assert all("no such step" not in step.event for step in cex.steps), cex.render()


def test_agent_order_admits_exactly_first_steps_in_agent_order() -> None:
    """Agent k+1's first step may follow agent k's, never precede it; agent-less steps are free."""
    defn = _three_agents(Mode.STRICT)
    enc = Encoding(defn)
    steps = enc.steps(enc.fresh("s"))
    width = max(1, (len(steps) - 1).bit_length())
    first = {
        who: next(i for i, step in enumerate(steps) if step.agent == who) for who in (0, 1, 2, None)
    }

    def admitted(*agents: int | None) -> bool:
        order = _AgentOrder(defn.agents)
        solver = z3.Solver()
        for k, who in enumerate(agents):
            choice = z3.BitVec(f"choice{k}", width)
            solver.add(order.constrain(choice, steps), choice == first[who])
        return bool(solver.check() == z3.sat)

    assert admitted(0, 1, 2)
    assert admitted(None, 0, 0, 1, 0, 2, 1)
    assert not admitted(1)
    assert not admitted(0, 2)
    assert not admitted(None, 0, 2, 1)


def test_bmc_rejects_a_negative_depth() -> None:
    """A negative depth is a usage error that names the value."""
    with pytest.raises(ValueError, match="depth=-1"):
        bounded_model_check(_three_agents(Mode.COHERENT), depth=-1)


def test_bmc_rejects_no_workers() -> None:
    """workers=0 is a usage error that names the value."""
    with pytest.raises(ValueError, match="workers=0"):
        bounded_model_check(_small(Mode.COHERENT), depth=2, workers=0)


def test_bmc_in_parallel_passes_the_real_table() -> None:
    """Spread over processes, every depth is still answered and the table still passes."""
    lines: list[str] = []
    report = bounded_model_check(_small(Mode.STRICT), depth=6, workers=2, progress=lines.append)
    assert report.ok, report.counterexample
    assert report.summary["depth"] == 6
    answered = sorted(
        int(line.split("depth ")[1].split(" ")[0]) for line in lines if " safe " in line
    )
    assert answered == list(range(7)), lines
    assert "done 0-6 of 0-6" in [line for line in lines if " safe " in line][-1]


def test_bmc_in_parallel_says_what_it_is_querying_while_no_answer_comes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A long quiet query still prints progress: which depths run, and for how long."""
    solve = _Unrolling.solve

    def slow(self: _Unrolling, started: float) -> object:
        time.sleep(0.5)
        return solve(self, started)

    monkeypatch.setattr("proofs.z3_check._Unrolling.solve", slow)
    monkeypatch.setattr("proofs.z3_check._QUIET_PROGRESS_S", 0.1)
    monkeypatch.setattr("proofs.z3_check._LIVENESS_S", 0.05)
    lines: list[str] = []
    report = bounded_model_check(_small(Mode.STRICT), depth=3, workers=2, progress=lines.append)
    assert report.ok, report.counterexample
    quiet = [line for line in lines if re.search(r"querying depth \d+ \(\d+s\)", line)]
    assert quiet, lines
    assert all("depths answered" in line for line in quiet), quiet


@pytest.mark.parametrize("extra", [0, 2], ids=["violation-at-the-deepest", "deeper-too"])
def test_bmc_in_parallel_reports_the_shortest_violation(extra: int) -> None:
    """The parallel search reports the violation at the same shortest depth as one process,
    whether the bound is that depth or deeper (deeper queries may also find violations; the
    shortest wins)."""
    defn = without_stale_fill_fix(_small(Mode.COHERENT))
    alone = bounded_model_check(defn, depth=8)
    assert not alone.ok
    shortest = alone.summary["violation_depth"]
    assert isinstance(shortest, int)
    spread = bounded_model_check(defn, depth=shortest + extra, workers=3)
    assert not spread.ok
    assert spread.summary["violation_depth"] == shortest
    assert spread.counterexample is not None
    assert alone.counterexample is not None
    assert spread.counterexample.property_name == alone.counterexample.property_name


def test_bmc_in_parallel_reports_a_failed_worker(monkeypatch: pytest.MonkeyPatch) -> None:
    """A worker that raises ends the check with an error naming it, not a hang or a pass."""

    def broken(self: object, started: float) -> None:
        raise ArithmeticError("solver exploded")

    monkeypatch.setattr("proofs.z3_check._Unrolling.solve", broken)
    with pytest.raises(RuntimeError, match="ArithmeticError: solver exploded"):
        bounded_model_check(_small(Mode.COHERENT), depth=3, workers=2)


def test_bmc_in_parallel_reports_a_worker_killed_without_a_word(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A worker killed mid-query (as the OOM killer would) ends the check with an error that
    names the signal, instead of waiting forever for its answers."""

    def killed(self: object, started: float) -> None:
        os.kill(os.getpid(), signal.SIGKILL)

    monkeypatch.setattr("proofs.z3_check._Unrolling.solve", killed)
    with pytest.raises(RuntimeError, match="died with exit code -9"):
        bounded_model_check(_small(Mode.COHERENT), depth=3, workers=2)
