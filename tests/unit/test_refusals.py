"""STALLED and NOT_APPLICABLE refusals mean in the model what they mean in production."""

from __future__ import annotations

import dataclasses

from proofs.explore import explore
from sagemem.spec.model import ProtocolDefinition, initial_state, transitions
from sagemem.spec.table import REFUSALS, Refusal, RefusalKind
from sagemem.spec.vocabulary import Event, Guard, L1State, Mode


def _rekind(match: tuple[L1State, Event], kind: RefusalKind) -> tuple[Refusal, ...]:
    changed = tuple(
        dataclasses.replace(f, kind=kind) if (f.source, f.event) == match else f for f in REFUSALS
    )
    assert changed != REFUSALS
    return changed


def test_a_read_stalled_on_a_missed_connection_must_not_become_not_applicable() -> None:
    """(S, READ, CONN_MISSED) as NOT_APPLICABLE makes production return None for the read:
    the explorer reports an operation answered with nothing."""
    defn = ProtocolDefinition(
        mode=Mode.COHERENT,
        refusals=_rekind((L1State.S, Event.READ), RefusalKind.NOT_APPLICABLE),
        agents=2,
        writes=1,
    )
    report = explore(defn)
    assert not report.ok
    trace = report.counterexample
    assert trace is not None
    assert trace.property_name == "every_operation_answered"
    assert "returned nothing" in trace.explanation
    assert "not applicable" in trace.steps[-1].event
    assert any("DROP_MESSAGE" in step.event or "DISCONNECT" in step.event for step in trace.steps)


def test_a_not_applicable_message_is_consumed_and_a_stalled_one_is_held() -> None:
    """A recall refused as NOT_APPLICABLE in IM_A is dropped (a step that empties the inbox);
    as STALLED (the real table) it stays in flight and no step is offered for it."""
    base = ProtocolDefinition(mode=Mode.COHERENT, agents=1, writes=1)
    state = initial_state(base)
    agent = state.agents[0]._replace(st=L1State.IM_A, ver=1, val=1, inbox=(0,))
    state = state._replace(agents=(agent,))
    stalled = [t for t in transitions(base, state) if t.event is Event.DELIVER_RECALL]
    assert stalled == []
    dropped = dataclasses.replace(
        base, refusals=_rekind((L1State.IM_A, Event.DELIVER_RECALL), RefusalKind.NOT_APPLICABLE)
    )
    consumed = [t for t in transitions(dropped, state) if t.event is Event.DELIVER_RECALL]
    assert len(consumed) == 1
    assert consumed[0].rule is None
    assert consumed[0].refusal is not None
    assert consumed[0].target.agents[0].inbox == ()
    assert consumed[0].target.agents[0].st is L1State.IM_A


def test_a_flush_of_a_clean_entry_stays_a_no_op() -> None:
    """NOT_APPLICABLE user operations that have nothing to do (flush of a clean entry) are
    no step at all: nothing changes and nothing is reported."""
    defn = ProtocolDefinition(mode=Mode.STRICT, agents=1, writes=0)
    state = initial_state(defn)
    assert [t for t in transitions(defn, state) if t.event is Event.FLUSH] == []
    assert all(f.guard is not Guard.CONN_OK for f in REFUSALS if f.event is Event.FLUSH)
