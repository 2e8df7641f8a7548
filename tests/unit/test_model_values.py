"""The model's value level and read guarantees: values named by versions, read-result,
write-invalidates-copies, and agents that leave."""

from __future__ import annotations

import dataclasses

from proofs.explore import explore
from sagemem.spec.invariants import INVARIANTS, first_violation
from sagemem.spec.model import (
    LEAVE,
    ProtocolDefinition,
    State,
    Transition,
    initial_state,
    transitions,
)
from sagemem.spec.table import TABLE
from sagemem.spec.vocabulary import Event, L1State, Mode


def _step(defn: ProtocolDefinition, state: State, event: Event, agent: int | None) -> Transition:
    return next(t for t in transitions(defn, state) if t.event is event and t.agent == agent)


def _run(defn: ProtocolDefinition, script: list[tuple[Event, int | None]]) -> State:
    state = initial_state(defn)
    for event, agent in script:
        state = _step(defn, state, event, agent).target
    return state


def test_a_write_through_names_a_new_value_for_its_version() -> None:
    """The home starts with w0 as v0; a committed write-through stores a fresh value as v1,
    and the reader's fill carries that pair."""
    defn = ProtocolDefinition(mode=Mode.COHERENT, agents=2, writes=1)
    state = _run(
        defn,
        [
            (Event.WRITE_THROUGH, 0),
            (Event.HOME_COMMIT, 0),
            (Event.OUTBOX_RELAY, None),
            (Event.WRITE_SETTLED, 0),
            (Event.READ, 1),
            (Event.FILL_FETCH, 1),
            (Event.FILL_DATA, 1),
        ],
    )
    assert state.names[0] == 0
    assert state.home == 1
    assert state.hval == state.names[1] != state.names[0]
    reader = state.agents[1]
    assert (reader.st, reader.ver, reader.val) == (L1State.S, 1, state.names[1])
    assert first_violation(defn, state) is None


def test_a_version_that_names_two_values_is_reported() -> None:
    """A copy holding another value under a named version breaks version_names_one_value."""
    defn = ProtocolDefinition(mode=Mode.STRICT, agents=1, writes=1)
    state = initial_state(defn)
    forged = state._replace(agents=(state.agents[0]._replace(st=L1State.S, ver=0, val=7),))
    assert first_violation(defn, forged) == (
        "version_names_one_value",
        "agent1 holds w7 as v0, which names another value",
    )


def test_a_write_returning_over_an_uninvalidated_copy_is_reported() -> None:
    """When a write-through returns while another agent still holds an older Shared copy with
    no invalidation in flight, write_invalidates_copies names it."""
    defn = ProtocolDefinition(mode=Mode.COHERENT, agents=2, writes=1)
    state = _run(
        defn, [(Event.WRITE_THROUGH, 0), (Event.HOME_COMMIT, 0), (Event.OUTBOX_RELAY, None)]
    )
    stale = state.agents[1]._replace(st=L1State.S, ver=0, val=0, registered=True)
    state = state._replace(agents=(state.agents[0], stale))
    settled = _step(defn, state, Event.WRITE_SETTLED, 0).target
    assert settled.violation.startswith("write_invalidates_copies")
    check = next(inv.check for inv in INVARIANTS if inv.name == "write_invalidates_copies")
    assert check(defn, settled) == settled.violation
    pending = state._replace(agents=(state.agents[0], stale._replace(inbox=(1,))))
    assert not _step(defn, pending, Event.WRITE_SETTLED, 0).target.violation


def test_agents_may_leave_and_the_real_table_still_passes() -> None:
    """With LEAVE enabled an idle agent closes for good (its EVICT row, then the directory
    forgets it); the real table keeps every property, and a gone agent takes no step."""
    defn = ProtocolDefinition(mode=Mode.STRICT, agents=2, writes=1, leaves=True)
    report = explore(defn)
    assert report.ok, report.counterexample.render() if report.counterexample else report
    state = _run(defn, [(Event.READ, 0), (Event.FILL_FETCH, 0), (Event.FILL_DATA, 0)])
    leave = next(
        t for t in transitions(defn, state) if t.event is Event.EVICT and t.payload == LEAVE
    )
    assert "LEAVE" in leave.label
    gone = leave.target.agents[0]
    assert gone.gone
    assert gone.st is L1State.I
    assert not gone.registered
    assert all(t.agent != 0 for t in transitions(defn, leave.target))


def test_leaving_without_an_eviction_row_is_a_table_defect() -> None:
    """LEAVE runs the table's (S, EVICT) row: without it the explorer reports the gap."""
    table = tuple(r for r in TABLE if not (r.source is L1State.S and r.event is Event.EVICT))
    defn = dataclasses.replace(
        ProtocolDefinition(mode=Mode.COHERENT, agents=1, writes=0, leaves=True), table=table
    )
    report = explore(defn)
    assert not report.ok
    assert report.counterexample is not None
    assert report.counterexample.property_name == "table_handles_every_event"
