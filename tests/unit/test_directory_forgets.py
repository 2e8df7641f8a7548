"""The directory forgetting: an environment fault of the model where the Redis primary that
holds a namespace's directory fails over (or a Redis without persistence restarts)."""

from __future__ import annotations

import dataclasses

import pytest

from proofs.explore import explore
from proofs.model_histories import history_of, judge
from proofs.report import CheckReport
from proofs.scenarios import Move
from sagemem.spec import model
from sagemem.spec.invariants import first_violation, is_quiescent
from sagemem.spec.model import (
    CUT_NOTICED,
    CUT_UNNOTICED,
    DEEP_FORGET_BOUNDS,
    DIRECTORY_FORGETS,
    FORGET_BOUNDS,
    LINK_LOST,
    Bounds,
    ProtocolDefinition,
    State,
    Transition,
    forgetting,
    initial_state,
    is_forget,
    transitions,
)
from sagemem.spec.vocabulary import Event, L1State, Mode

MODES = pytest.mark.parametrize("mode", list(Mode), ids=lambda mode: mode.value)

FORGET = (Event.L2_EVICT, None, DIRECTORY_FORGETS)


def _defn(mode: Mode, *, agents: int = 2, forgets: bool = True) -> ProtocolDefinition:
    return ProtocolDefinition(
        mode=mode,
        agents=agents,
        writes=1,
        fault_budget=1,
        l2_rollback=True,
        write_update=True,
        directory_forgets=forgets,
    )


def _step(defn: ProtocolDefinition, state: State, move: tuple[Event, int | None, int]) -> State:
    event, agent, payload = move
    step = Move(event=event, agent=agent, payload=payload).step_in(defn, state)
    assert step is not None, f"{event.name} of agent {agent} (payload {payload}) is not enabled"
    return step.target


def _play(defn: ProtocolDefinition, moves: list[tuple[Event, int | None, int]]) -> State:
    """Take each (event, 1-based agent, payload) step in turn; each must be enabled and
    break no invariant."""
    state = initial_state(defn)
    for move in moves:
        state = _step(defn, state, move)
        assert first_violation(defn, state) is None, (move, first_violation(defn, state))
    return state


def _enabled(defn: ProtocolDefinition, state: State, event: Event, agent: int) -> bool:
    return Move(event=event, agent=agent, payload=0).step_in(defn, state) is not None


def _forgets(defn: ProtocolDefinition, state: State) -> list[Transition]:
    return [t for t in transitions(defn, state) if is_forget(t.event, t.payload)]


# agent1 caches v0 (registered as holder), agent2 writes v1 through and the relay sends agent1
# the invalidation (strict: agent1 owes an ack); agent2 waits for the write to settle.
_HOLDER_INVALIDATED = [
    (Event.READ, 1, 0),
    (Event.FILL_FETCH, 1, 0),
    (Event.FILL_DATA, 1, 0),
    (Event.WRITE_THROUGH, 2, 0),
    (Event.HOME_COMMIT, 2, 0),
    (Event.OUTBOX_RELAY, None, 0),
]


def _trace_text(report: CheckReport) -> str:
    assert report.counterexample is not None
    return report.counterexample.render()


def test_the_forget_is_offered_only_with_the_flag_and_the_fault_budget() -> None:
    """A plain definition (and the quick ones) never forget; with the flag the forget is one
    Redis-site fault step, not offered once the fault budget is spent."""
    state = initial_state(_defn(Mode.COHERENT))
    assert _forgets(_defn(Mode.COHERENT, forgets=False), state) == []
    assert not ProtocolDefinition().directory_forgets
    assert not any(d.directory_forgets for mode in Mode for d in model.quick(mode))
    (step,) = _forgets(_defn(Mode.COHERENT), state)
    assert step.label.startswith("redis DIRECTORY_FORGETS: ")
    assert step.target.faults == 1
    assert _forgets(_defn(Mode.COHERENT), state._replace(faults=1)) == []


@MODES
def test_the_forget_clears_the_directory_and_cuts_every_link(mode: Mode) -> None:
    """Registrations, owed acks and fill leases are gone, every message in flight is lost and
    every agent's link is cut; the home (version, outbox) and L2 are untouched."""
    defn = _defn(mode)
    state = _play(defn, _HOLDER_INVALIDATED)
    holder = state.agents[0]
    assert holder.inbox == (1,)
    assert holder.ack_owed is (mode is Mode.STRICT)
    after = _step(defn, state, FORGET)
    assert [ag.cut for ag in after.agents] == [CUT_UNNOTICED, CUT_UNNOTICED]
    for ag in after.agents:
        assert (ag.registered, ag.ack_owed, ag.l2_lease, ag.inbox) == (False, False, False, ())
        assert not ag.missed  # nobody has noticed yet
    assert (after.home, after.outbox, after.l2) == (state.home, state.outbox, state.l2)
    assert (after.agents[0].st, after.agents[0].ver) == (L1State.S, 0)  # still served
    assert after.faults == state.faults + 1


def test_a_cut_agent_hears_nothing_until_it_notices_then_resyncs() -> None:
    """Messages to a cut agent are lost; LINK_LOST is its noticing (missed messages), and
    RESYNC ends the cut: its fill in flight turns IS_D_I and nothing is cut any more."""
    defn = _defn(Mode.COHERENT)
    # after the forget agent2 fills on the new directory (registered there), but its
    # listener is still on the dead primary: agent1's invalidation never reaches it
    state = _play(
        defn,
        [
            FORGET,
            (Event.READ, 2, 0),
            (Event.FILL_FETCH, 2, 0),
            (Event.WRITE_THROUGH, 1, 0),
            (Event.HOME_COMMIT, 1, 0),
            (Event.OUTBOX_RELAY, None, 0),
        ],
    )
    cut = state.agents[1]
    assert (cut.st, cut.data, cut.inbox, cut.cut) == (L1State.IS_D, 0, (), CUT_UNNOTICED)
    state = _step(defn, state, (Event.RESYNC, 2, LINK_LOST))
    assert (state.agents[1].cut, state.agents[1].missed) == (CUT_NOTICED, True)
    assert not _enabled(defn, state, Event.FILL_DATA, 2)  # the data waits for RESYNC
    state = _step(defn, state, (Event.RESYNC, 2, 0))
    assert (state.agents[1].st, state.agents[1].cut, state.agents[1].missed) == (
        L1State.IS_D_I,
        0,
        False,
    )
    assert first_violation(defn, state) is None


def test_a_strict_write_settles_only_once_every_cut_agent_resynced() -> None:
    """Strict: after the forget, neither the writer's settle nor another agent's fill is
    offered until every agent whose link was cut has resynchronised (production: the
    directory is older than the link trust plus a margin)."""
    defn = _defn(Mode.STRICT, agents=3)
    state = _play(defn, [(Event.READ, 3, 0), *_HOLDER_INVALIDATED, FORGET])
    assert not _enabled(defn, state, Event.WRITE_SETTLED, 2)
    assert not _enabled(defn, state, Event.FILL_FETCH, 3)
    for agent in (1, 2, 3):
        state = _step(defn, state, (Event.RESYNC, agent, LINK_LOST))
        state = _step(defn, state, (Event.RESYNC, agent, 0))
        assert _enabled(defn, state, Event.WRITE_SETTLED, 2) is (agent == 3)
    assert state.agents[0].st is L1State.I  # RESYNC dropped the stale copy
    state = _step(defn, state, (Event.WRITE_SETTLED, 2, 0))
    assert state.done == 1
    assert first_violation(defn, state) is None


@pytest.mark.parametrize(
    ("mode", "bounds"),
    [
        (Mode.COHERENT, FORGET_BOUNDS),
        (Mode.STRICT, FORGET_BOUNDS),
        (Mode.STRICT, (DEEP_FORGET_BOUNDS[0],)),
    ],
    ids=["coherent-2agents", "strict-2agents", "strict-3agents"],
)
def test_the_real_table_passes_with_the_directory_forgetting(
    mode: Mode, bounds: tuple[Bounds, ...]
) -> None:
    """Every invariant and graph property holds with the forget as the run's one fault, at
    `sagemem check`'s forget bound (2 agents, 1 write) and, strict, at 3 agents (the bound
    where a fill could read the unsettled version while a cut holder serves the old one)."""
    (defn,) = forgetting(mode, bounds)
    assert defn.directory_forgets
    assert defn.faults == frozenset()
    report = explore(defn)
    assert report.ok, _trace_text(report)
    without = explore(dataclasses.replace(defn, directory_forgets=False))
    assert int(report.summary["states"]) > 2 * int(without.summary["states"])


def test_strict_passes_with_the_forget_and_one_more_fault() -> None:
    """Strict, 2 agents, 1 write, fault budget 2: the forget with any other fault (a crash or
    a lapsed lease of a cut agent, a disconnect, a lost message...) in the same run; the L2
    rollback is off, as in every 2-fault bound (see test_l2_rollback)."""
    defn = dataclasses.replace(_defn(Mode.STRICT), fault_budget=2, l2_rollback=False)
    report = explore(defn)
    assert report.ok, _trace_text(report)


def _keeps_links(forget: object) -> object:
    """A forget that only clears the directory: the agents' links survive (a bus that is not
    pinned to the directory's primary)."""
    assert callable(forget)

    def variant(state: State) -> Transition:
        step: Transition = forget(state)
        agents = tuple(
            ag._replace(cut=0, inbox=old.inbox)
            for ag, old in zip(step.target.agents, state.agents, strict=True)
        )
        return step._replace(target=step.target._replace(agents=agents))

    return variant


def test_a_forget_that_keeps_the_links_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    """Mutant: the directory forgets but no link drops. The explorer rejects it at once (a
    Shared copy the directory no longer lists), and played on, the next write leaves the
    copy stale with nothing on its way to it: the permanent stale copy the pinning prevents."""
    monkeypatch.setattr(model, "_forget", _keeps_links(model._forget))
    defn = _defn(Mode.COHERENT)
    report = explore(defn)
    assert not report.ok
    assert report.counterexample is not None
    assert report.counterexample.property_name == "shared_copies_registered"
    assert "redis DIRECTORY_FORGETS" in _trace_text(report)
    state = initial_state(defn)
    for move in [(Event.READ, 1, 0), (Event.FILL_FETCH, 1, 0), (Event.FILL_DATA, 1, 0), FORGET]:
        state = _step(defn, state, move)
    for move in [
        (Event.WRITE_THROUGH, 2, 0),
        (Event.HOME_COMMIT, 2, 0),
        (Event.OUTBOX_RELAY, None, 0),
        (Event.WRITE_SETTLED, 2, 0),
    ]:
        state = _step(defn, state, move)
    assert (state.agents[0].st, state.agents[0].ver, state.home) == (L1State.S, 0, 1)
    assert state.agents[0].inbox == ()
    assert not state.agents[0].missed
    assert state.violation.startswith("write_invalidates_copies")
    assert not is_quiescent(defn, state)


def test_a_strict_write_settling_right_after_the_forget_is_caught(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Mutant: a strict write settles on the young directory (no wait for the cut agents):
    an owner and the cut holder's old Shared copy coexist (swmr), after the forget."""
    monkeypatch.setattr(model, "DIRECTORY_WAITS", frozenset({Event.FILL_FETCH}))
    report = explore(_defn(Mode.STRICT))
    assert not report.ok
    assert report.counterexample is not None
    assert report.counterexample.property_name == "swmr"
    text = _trace_text(report)
    assert "redis DIRECTORY_FORGETS" in text
    assert text.index("DIRECTORY_FORGETS") < text.rindex("WRITE_SETTLED")


def test_a_strict_fill_that_does_not_wait_for_the_young_directory_is_caught(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Mutant (production's rule when this fault was modelled): only the settle waits for a
    young directory; a fill reads the unsettled v1 while a cut holder still has v0, and a
    read that starts after that fill returned answers v0: not linearizable."""
    monkeypatch.setattr(model, "DIRECTORY_WAITS", frozenset({Event.WRITE_SETTLED}))
    defn = _defn(Mode.STRICT, agents=3)
    report = explore(defn)
    assert not report.ok
    assert report.counterexample is not None
    assert report.counterexample.property_name == "linearizable_reads"
    assert "redis DIRECTORY_FORGETS" in _trace_text(report)
    # played: agent3's read of v1 returns, then agent1's NEW read returns its cached v0; the
    # project's linearizability checker (sagemem.verify) rejects that history too
    path: list[Transition] = []
    state = initial_state(defn)
    for event, agent, payload in [
        *_HOLDER_INVALIDATED,
        FORGET,
        (Event.READ, 3, 0),
        (Event.FILL_FETCH, 3, 0),
        (Event.FILL_DATA, 3, 0),
        (Event.READ, 1, 0),
    ]:
        step = Move(event=event, agent=agent, payload=payload).step_in(defn, state)
        assert step is not None, (event, agent)
        path.append(step)
        state = step.target
    assert state.violation == "linearizable_reads: read v0 after a read of v1"
    verdict = judge(history_of(defn, path))
    assert not verdict.ok
    assert verdict.property_name == "history_linearizable"
    assert verdict.step == len(path)
