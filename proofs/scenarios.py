"""Hostile scenarios: scripted runs through situations production meets and the model cannot
reach, each with its expected end.

The explorer covers every interleaving of the modelled events within its bounds. Production
also meets situations outside the model: a forged invalidation (its floor is then reset), an L2
restored from an old snapshot, lost invalidations answered by exactly one RESYNC each, owners
stalled past their lease in MS_A, MI_A and ME_A. Each `Scenario` plays a fixed sequence of
moves: table events (which must be enabled) and hostile changes of the state made directly
(never through the fault rows, so a table that only weakens a fault cannot fail a scenario);
after every move the mode's invariants must hold, and the run must end quiescent with the
expected copies. `sagemem check` plays them in both modes, and they are the last link of the
mutant chain (`proofs.mutants`); they reach the table's defensive rows, which the model cannot.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from sagemem.spec.invariants import invariants_for, is_quiescent
from sagemem.spec.model import (
    AgentState,
    ProtocolDefinition,
    State,
    Transition,
    describe,
    initial_state,
    transitions,
)
from sagemem.spec.vocabulary import Event, L1State, Mode

from .report import CheckReport, Counterexample, TraceStep

__all__ = ["Move", "Scenario", "check_scenarios", "hostile_scenarios", "run_scenario"]


@dataclass(frozen=True, slots=True)
class Move:
    """One move of a hostile scenario.

    Either a step through the table: `event` for subject `agent` (1-based, as traces print
    it; None for the home, Redis or the bus) with `payload` (an invalidation's version, or 0
    for a recall) when several messages are in flight; or a hostile change the model never makes
    (`hostile` says what production event it stands for, `change` applies it).
    """

    event: Event | None = None
    agent: int | None = None
    payload: int | None = None
    hostile: str = ""
    change: Callable[[State], State] | None = None

    def step_in(self, defn: ProtocolDefinition, state: State) -> Transition | None:
        """The table step of `defn` this move takes from `state`, or None when it is not
        offered (or stalled, or refused) there. Only for table moves (`change` is None)."""
        subject = None if self.agent is None else self.agent - 1
        return next(
            (
                t
                for t in transitions(defn, state)
                if t.event is self.event
                and t.agent == subject
                and (self.payload is None or t.payload == self.payload)
            ),
            None,
        )


def _do(event: Event, agent: int | None = None, payload: int | None = None) -> Move:
    return Move(event=event, agent=agent, payload=payload)


def _hostile(what: str, change: Callable[[State], State]) -> Move:
    return Move(hostile=what, change=change)


# Faults are played as hostile changes, not through the fault rows: a mutant that weakens a
# fault row (a loss that loses nothing) only weakens the environment, and must not fail here.
def _lose(agent: int, version: int) -> Move:
    return _hostile(
        f"the bus loses the invalidation for v{version} to agent{agent}; its listener detects "
        "the gap",
        lambda state: _change_agent(
            state,
            agent,
            lambda ag: ag._replace(inbox=tuple(m for m in ag.inbox if m != version), missed=True),
        ),
    )


def _disconnect(agent: int) -> Move:
    return _hostile(
        f"agent{agent}'s bus connection drops: everything in flight to it is lost; detected on "
        "reconnect",
        lambda state: _change_agent(state, agent, lambda ag: ag._replace(inbox=(), missed=True)),
    )


@dataclass(frozen=True, slots=True)
class Scenario:
    """A scripted run through situations production meets and the model cannot reach (a
    forged message, an L2 restored from an old snapshot, an owner stalled past its lease),
    ending where `expect` says: every move must be enabled, every invariant of the mode not in
    `tolerated` must hold after every move (all of them at the end), and the final state must
    be quiescent and satisfy `expect` (None, or what differs). Played in `modes` only.

    A scenario also pins down what the model over-approximates: production feeds ONE RESYNC
    per detected loss (the bus's `Resynced`), where the model offers RESYNC for as long as
    the agent is marked missed."""

    name: str
    story: str
    agents: int
    moves: tuple[Move, ...]
    expect: Callable[[State], str | None]
    tolerated: frozenset[str] = field(default_factory=frozenset)
    modes: frozenset[Mode] = frozenset(Mode)


def _change_agent(state: State, agent: int, change: Callable[[AgentState], AgentState]) -> State:
    agents = list(state.agents)
    agents[agent - 1] = change(agents[agent - 1])
    return state._replace(agents=tuple(agents))


def _expect_agents(*wanted: tuple[int, L1State, int]) -> Callable[[State], str | None]:
    """Each (agent, state, version): the agent ends in that L1 state holding that version."""

    def expect(state: State) -> str | None:
        for agent, st, version in wanted:
            ag = state.agents[agent - 1]
            if ag.st is not st or ag.ver != version:
                held = f" v{ag.ver}" if ag.ver >= 0 else ""
                return f"agent{agent} should end {st.name} v{version}, not {ag.st.name}{held}"
        return None

    return expect


def hostile_scenarios() -> tuple[Scenario, ...]:
    """The scripted hostile scenarios (see docs/coherence-protocol.md, "Mutation testing")."""
    write_through_v1 = (
        _do(Event.WRITE_THROUGH, 1),
        _do(Event.HOME_COMMIT, 1),
        _do(Event.OUTBOX_RELAY),
        _do(Event.WRITE_SETTLED, 1),
    )
    # agent1 owns v1 (Modified); agent2's read recalls it; agent1 starts its write-back
    recalled_owner = (
        _do(Event.WRITE_L1, 1),
        _do(Event.HOME_ACQUIRE, 1),
        _do(Event.OUTBOX_RELAY),
        _do(Event.WRITE_SETTLED, 1),
        _do(Event.READ, 2),
        _do(Event.FILL_FETCH, 2),
        _do(Event.DELIVER_RECALL, 1),
    )
    stall = (
        _hostile(
            "agent1 stalls past its owner lease (SIGSTOP) before it notices the lapse",
            lambda state: _change_agent(state, 1, lambda ag: ag._replace(lease=False)),
        ),
        _do(Event.HOME_EXPIRE_OWNER, 1),
    )
    # after the stall the home keeps v1's predecessor under v2 (the revoked grant's v1 may
    # name the stalled owner's value), so agent3's write-through commits v3
    write_v2 = (
        _do(Event.WRITE_THROUGH, 3),
        _do(Event.HOME_COMMIT, 3),
        _do(Event.OUTBOX_RELAY),
    )
    # the fenced write-back, then the waiting reader fills the new version
    fenced_then_read = (
        _do(Event.WRITE_SETTLED, 3),
        _do(Event.HOME_WRITE_BACK, 1),
        _do(Event.RETRY, 2),
        _do(Event.FILL_FETCH, 2),
        _do(Event.FILL_DATA, 2),
    )
    read_v0 = (_do(Event.READ, 1), _do(Event.FILL_FETCH, 1), _do(Event.FILL_DATA, 1))
    read_again = read_v0
    # agent1's fill has its data (v0) when agent2's write-through commits v1 and the
    # invalidation to agent1 is lost; agent1 resynchronises once and the write settles
    fill_then_lost_invalidation = (
        _do(Event.READ, 1),
        _do(Event.FILL_FETCH, 1),
        _do(Event.WRITE_THROUGH, 2),
        _do(Event.HOME_COMMIT, 2),
        _do(Event.OUTBOX_RELAY),
        _lose(1, 1),
        _do(Event.RESYNC, 1),
        _do(Event.WRITE_SETTLED, 2),
    )
    # the recalled owner loses its connection (a second recall is lost), resynchronises into
    # MI_A still registered and stalls past its lease; agent3 then writes v2 through
    resynced_releasing_owner_stalls = (
        *recalled_owner,
        _do(Event.RETRY, 2),
        _do(Event.FILL_FETCH, 2),
        _disconnect(1),
        _do(Event.RESYNC, 1),
        *stall,
        *write_v2,
    )
    # agent1 holds (or held) v0, agent2 writes v1 through; the relay's invalidation reaches
    # agent1, then Redis is restored from a snapshot holding v0: agent1's next read must not
    # cache v0 (its floor, raised by the invalidation, makes the fill discard it)
    restored = _hostile(
        "Redis is restored from a snapshot taken before the write: L2 holds v0 again",
        # the snapshot's history comes back with it: "L2 never goes back" restarts from v0
        lambda state: state._replace(l2=0, l2val=state.names[0], l2_high=0),
    )
    restored_v2 = _hostile(
        "Redis is restored from a snapshot taken between the revocation and the write of v3: "
        "L2 holds v2",
        lambda state: state._replace(l2=2, l2val=state.names[2], l2_high=2),
    )
    restored_gone = _hostile(
        "the restored copy goes (it expires, or the next relay deletes it)",
        lambda state: state._replace(l2=-1, l2val=-1),
    )
    reread_after_restore = (
        _do(Event.WRITE_SETTLED, 2),
        restored,
        _do(Event.READ, 1),
        _do(Event.FILL_FETCH, 1),
        _do(Event.FILL_DATA, 1),
        restored_gone,
        _do(Event.FILL_FETCH, 1),
        _do(Event.FILL_DATA, 1),
    )
    write_v1_by_agent2 = (
        _do(Event.WRITE_THROUGH, 2),
        _do(Event.HOME_COMMIT, 2),
        _do(Event.OUTBOX_RELAY),
    )
    after_stall = _expect_agents((1, L1State.I, -1), (2, L1State.S, 3), (3, L1State.I, -1))
    # Redis restored to v2: agent 1's read fills v2 (discarded), then the copy is gone and the
    # fill fetches again.
    read_through_restored_v2 = (
        restored_v2,
        _do(Event.READ, 1),
        _do(Event.FILL_FETCH, 1),
        _do(Event.FILL_DATA, 1),
        restored_gone,
        _do(Event.FILL_FETCH, 1),
        _do(Event.FILL_DATA, 1),
    )
    return (
        Scenario(
            "stale_l2_copy_is_refetched",
            "Redis is restored from a snapshot taken before a write-through (or a plain L2 "
            "write puts an old value back): a fill that reads the old copy discards it and "
            "fetches again until the copy is gone, then caches the current version",
            agents=1,
            moves=(
                *write_through_v1,
                _hostile(
                    "Redis is restored from a snapshot taken before the write: L2 holds v0",
                    lambda state: state._replace(
                        l2=0, l2val=state.names[0], l2_high=max(state.l2_high, 0)
                    ),
                ),
                _do(Event.READ, 1),
                _do(Event.FILL_FETCH, 1),
                _do(Event.FILL_DATA, 1),
                _do(Event.FILL_FETCH, 1),
                _do(Event.FILL_DATA, 1),
                _hostile(
                    "the restored copy goes (it expires, or the next relay deletes it)",
                    lambda state: state._replace(l2=-1, l2val=-1),
                ),
                _do(Event.FILL_FETCH, 1),
                _do(Event.FILL_DATA, 1),
            ),
            expect=_expect_agents((1, L1State.S, 1)),
            tolerated=frozenset({"stale_copies_covered"}),
        ),
        Scenario(
            "forged_invalidation_floor_is_reset",
            "an invalidation the protocol never sent (forged, or from another home) names v5: "
            "the home's older answer is discarded, the entry restarts empty (its CRASH row, as "
            "production's floor reset does) and the read starts again",
            agents=1,
            moves=(
                _hostile(
                    "a forged invalidation for v5 reached agent1: its floor is v5",
                    lambda state: _change_agent(state, 1, lambda ag: ag._replace(floor=5)),
                ),
                _do(Event.READ, 1),
                _do(Event.FILL_FETCH, 1),
                _do(Event.FILL_DATA, 1),
                _do(Event.CRASH, 1),
                _do(Event.READ, 1),
                _do(Event.FILL_FETCH, 1),
                _do(Event.FILL_DATA, 1),
            ),
            expect=_expect_agents((1, L1State.S, 0)),
            tolerated=frozenset({"type_invariant"}),  # the forged version is beyond the home
        ),
        Scenario(
            "lost_invalidation_to_a_holder_resyncs_once",
            "the invalidation to a Shared holder is lost; the listener detects the gap and "
            "feeds one RESYNC, which drops the copy and clears the condition, so the next read "
            "fills the new version",
            agents=2,
            moves=(
                *read_v0,
                _do(Event.WRITE_THROUGH, 2),
                _do(Event.HOME_COMMIT, 2),
                _do(Event.OUTBOX_RELAY),
                _lose(1, 1),
                _do(Event.RESYNC, 1),
                _do(Event.WRITE_SETTLED, 2),
                *read_again,
            ),
            expect=_expect_agents((1, L1State.S, 1), (2, L1State.I, -1)),
        ),
        Scenario(
            "lost_invalidation_to_a_fill_resyncs_once",
            "the invalidation to a fill in flight is lost; one RESYNC turns the fill into an "
            "invalidated one, which returns its data once without caching it",
            agents=2,
            moves=(*fill_then_lost_invalidation, _do(Event.FILL_DATA, 1)),
            expect=_expect_agents((1, L1State.I, -1), (2, L1State.I, -1)),
            modes=frozenset({Mode.COHERENT}),
        ),
        Scenario(
            "lost_invalidation_to_a_strict_fill_resyncs_once",
            "strict: the invalidation to a fill in flight is lost; one RESYNC acknowledges and "
            "turns the fill into an invalidated one, which fetches again and caches the new "
            "version",
            agents=2,
            moves=(
                *fill_then_lost_invalidation,
                _do(Event.FILL_DATA, 1),
                _do(Event.FILL_FETCH, 1),
                _do(Event.FILL_DATA, 1),
            ),
            expect=_expect_agents((1, L1State.S, 1), (2, L1State.I, -1)),
            modes=frozenset({Mode.STRICT}),
        ),
        Scenario(
            "stalled_recalled_owner_is_fenced",
            "a recalled owner (MS_A) stalls past its lease and the home expires its grant: its "
            "late write-back is fenced (reported, never applied), it keeps no copy, and the "
            "reader that recalled it fills from the home",
            agents=2,
            moves=(
                *recalled_owner,
                *stall,
                _do(Event.HOME_WRITE_BACK, 1),
                _do(Event.RETRY, 2),
                _do(Event.FILL_FETCH, 2),
                _do(Event.FILL_DATA, 2),
            ),
            expect=_expect_agents((1, L1State.I, -1), (2, L1State.S, 2)),
        ),
        Scenario(
            "stalled_flushing_owner_is_fenced",
            "a flushing owner (ME_A) stalls past its lease and the home expires its grant: its "
            "late flush is fenced and it gives up the key",
            agents=1,
            moves=(
                _do(Event.WRITE_L1, 1),
                _do(Event.HOME_ACQUIRE, 1),
                _do(Event.OUTBOX_RELAY),
                _do(Event.WRITE_SETTLED, 1),
                _do(Event.FLUSH, 1),
                *stall,
                _do(Event.HOME_FLUSH, 1),
            ),
            expect=_expect_agents((1, L1State.I, -1)),
        ),
        Scenario(
            "stalled_recalled_owner_acknowledges",
            "a recalled owner (MS_A) stalls past its lease; the home expires its grant, a "
            "write-through commits v2 and invalidates the owner, which is still registered as "
            "a holder: it acknowledges at once (no wait for its registration to lapse), and its "
            "late write-back is fenced",
            agents=3,
            moves=(
                *recalled_owner,
                *stall,
                *write_v2,
                _do(Event.DELIVER_INVALIDATE, 1, 3),
                *fenced_then_read,
            ),
            expect=after_stall,
        ),
        Scenario(
            "stalled_recalled_owner_resyncs",
            "a recalled owner (MS_A) stalls past its lease and its grant is expired; the "
            "invalidation of the next write-through is lost: the owner resynchronises in MS_A, "
            "acknowledges at once and gives up the copy it meant to keep; its write-back is "
            "fenced",
            agents=3,
            moves=(
                *recalled_owner,
                *stall,
                *write_v2,
                _lose(1, 3),
                _do(Event.RESYNC, 1),
                *fenced_then_read,
            ),
            expect=after_stall,
        ),
        Scenario(
            "stalled_releasing_owner_acknowledges",
            "a recalled owner loses its connection (a second recall is lost), resynchronises "
            "into MI_A still registered, then stalls past its lease; the new write's "
            "invalidation reaches it in MI_A and it acknowledges at once",
            agents=3,
            moves=(
                *resynced_releasing_owner_stalls,
                _do(Event.DELIVER_INVALIDATE, 1, 3),
                *fenced_then_read,
            ),
            expect=after_stall,
        ),
        Scenario(
            "stalled_releasing_owner_resyncs",
            "a recalled owner resynchronises into MI_A still registered, stalls past its lease "
            "and its grant is expired; the next write-through's invalidation to it is lost "
            "too: it resynchronises in MI_A and acknowledges at once",
            agents=3,
            moves=(
                *resynced_releasing_owner_stalls,
                _lose(1, 3),
                _do(Event.RESYNC, 1),
                *fenced_then_read,
            ),
            expect=after_stall,
        ),
        Scenario(
            "restored_l2_after_invalidating_a_shared_copy",
            "agent1's Shared v0 is invalidated by agent2's write-through of v1, then Redis is "
            "restored from a snapshot holding v0: agent1's next fill reads v0 from L2, which "
            "is older than the invalidation it saw, so it is discarded and fetched again",
            agents=2,
            moves=(
                *read_v0,
                *write_v1_by_agent2,
                _do(Event.DELIVER_INVALIDATE, 1, 1),
                *reread_after_restore,
            ),
            expect=_expect_agents((1, L1State.S, 1), (2, L1State.I, -1)),
            tolerated=frozenset({"stale_copies_covered"}),
        ),
        Scenario(
            "restored_l2_after_invalidating_an_idle_holder",
            "agent1's Shared v0 is evicted without deregistering (a stale registration), so "
            "the invalidation for v1 reaches it while Invalid; Redis is then restored to v0: "
            "agent1's next fill must not cache v0",
            agents=2,
            moves=(
                *read_v0,
                _hostile(
                    "agent1's copy is dropped but its registration stays (it lapses later)",
                    lambda state: _change_agent(
                        state, 1, lambda ag: ag._replace(st=L1State.I, ver=-1, val=-1, rlease=False)
                    ),
                ),
                *write_v1_by_agent2,
                _do(Event.DELIVER_INVALIDATE, 1, 1),
                *reread_after_restore,
            ),
            expect=_expect_agents((1, L1State.S, 1), (2, L1State.I, -1)),
            tolerated=frozenset({"stale_copies_covered"}),
        ),
        Scenario(
            "stalled_owners_read_after_restored_l2",
            "as stalled_releasing_owner_acknowledges and stalled_recalled_owner_acknowledges "
            "(the invalidation for v3 reaches the fenced owner in MI_A, or in MS_A), then Redis "
            "is restored to v2: the old owner's next read must not cache a version older than "
            "the invalidation it saw",
            agents=3,
            moves=(
                *resynced_releasing_owner_stalls,
                _do(Event.DELIVER_INVALIDATE, 1, 3),
                *fenced_then_read,
                *read_through_restored_v2,
            ),
            expect=_expect_agents((1, L1State.S, 3), (2, L1State.S, 3), (3, L1State.I, -1)),
            tolerated=frozenset({"stale_copies_covered"}),
        ),
        Scenario(
            "stalled_recalled_owner_reads_after_restored_l2",
            "a recalled owner (MS_A) stalls past its lease; the invalidation for v3 reaches it "
            "in MS_A, its write-back is fenced; Redis is then restored to v2 (the revocation's "
            "version): its next read must not cache v2",
            agents=3,
            moves=(
                *recalled_owner,
                *stall,
                *write_v2,
                _do(Event.DELIVER_INVALIDATE, 1, 3),
                *fenced_then_read,
                *read_through_restored_v2,
            ),
            expect=_expect_agents((1, L1State.S, 3), (2, L1State.S, 3), (3, L1State.I, -1)),
            tolerated=frozenset({"stale_copies_covered"}),
        ),
    )


def run_scenario(defn: ProtocolDefinition, scenario: Scenario) -> Counterexample | None:
    """Play `scenario` on `defn`'s table and mode; None when it ends as expected, else the
    trace up to the first move that is not enabled, breaks an invariant or ends wrong."""
    played = dataclasses.replace(
        defn, agents=scenario.agents, writes=6, fault_budget=None, name=scenario.name
    )
    start = initial_state(played)
    state = start
    steps: list[TraceStep] = []
    checks = invariants_for(played.mode)

    def failed(why: str) -> Counterexample:
        return Counterexample(
            property_name=f"scenario {scenario.name}",
            initial_state=describe(start),
            steps=tuple(steps),
            explanation=f"{why} ({scenario.story})",
        )

    for number, move in enumerate(scenario.moves, start=1):
        if move.change is not None:
            state = move.change(state)
            steps.append(TraceStep(f"HOSTILE: {move.hostile}", describe(state)))
        else:
            step = move.step_in(played, state)
            who = "" if move.agent is None else f"agent{move.agent} "
            what = f"{who}{move.event.name if move.event else '?'}"
            if step is None:
                return failed(
                    f"move {number}, {what}, is not enabled (not offered in this state, or the "
                    "table stalls or refuses it)"
                )
            steps.append(TraceStep(step.label, describe(step.target)))
            if step.rule is None:
                return failed(f"move {number}, {what}: {step.target.violation}")
            state = step.target
        for inv in checks:
            if inv.name in scenario.tolerated:
                continue
            text = inv.check(played, state)
            if text is not None:
                return failed(f"after move {number}, {inv.name}: {text}")
    for inv in checks:
        text = inv.check(played, state)
        if text is not None:
            return failed(f"at the end, {inv.name}: {text}")
    if not is_quiescent(played, state):
        return failed("the scenario does not end quiescent (something is still pending)")
    wrong = scenario.expect(state)
    if wrong is not None:
        return failed(f"at the end, {wrong}")
    return None


def check_scenarios(
    defn: ProtocolDefinition, scenarios: Sequence[Scenario] | None = None
) -> CheckReport:
    """Every hostile scenario on `defn`'s table and mode; the first failure is the report's
    counterexample."""
    started = time.perf_counter()
    chosen = tuple(
        scenario
        for scenario in (scenarios if scenarios is not None else hostile_scenarios())
        if defn.mode in scenario.modes
    )
    summary: dict[str, int | float | str] = {
        "mode": defn.mode.value,
        "scenarios": len(chosen),
        "moves": sum(len(scenario.moves) for scenario in chosen),
    }
    for scenario in chosen:
        counterexample = run_scenario(defn, scenario)
        if counterexample is not None:
            summary["seconds"] = round(time.perf_counter() - started, 3)
            return CheckReport("hostile scenarios", False, summary, counterexample)
    summary["seconds"] = round(time.perf_counter() - started, 3)
    return CheckReport("hostile scenarios", True, summary)
