"""fair_progress: under weak fairness of the protocol's steps, every operation completes."""

from __future__ import annotations

import dataclasses

import pytest

from proofs.explore import GRAPH_PROPERTIES, explore
from sagemem.spec import TABLE, Event, L1State, Mode, ProtocolDefinition, Rule


def _owner_ignores_recalls(table: tuple[Rule, ...]) -> tuple[Rule, ...]:
    """A Modified owner consumes a reader's recall and does nothing (no write-back)."""
    return tuple(
        dataclasses.replace(r, target=r.source, effects=())
        if r.source is L1State.M and r.event is Event.DELIVER_RECALL
        else r
        for r in table
    )


_EARLIER = frozenset({"quiescence_reachable", "prompt_progress"})


@pytest.mark.parametrize("mode", list(Mode))
def test_a_reader_retrying_forever_against_a_deaf_owner_breaks_fair_progress(mode: Mode) -> None:
    """The reader's RETRY/FILL_FETCH and the owner's ignored recall loop fairly forever."""
    defn = ProtocolDefinition(
        mode=mode, table=_owner_ignores_recalls(TABLE), agents=2, writes=1, fault_budget=1
    )
    report = explore(defn, skip=_EARLIER)
    assert not report.ok
    trace = report.counterexample
    assert trace is not None
    assert trace.property_name == "fair_progress"
    assert "a read (agent in IS_D)" in trace.explanation
    assert "DELIVER_RECALL, FILL_FETCH, RETRY" in trace.explanation
    # prefix + lap: the trace ends in a state it has been in before
    states = [step.state for step in trace.steps]
    assert states[-1] in states[:-1]
    lap = states[states.index(states[-1]) + 1 :]
    assert lap, "the lap takes at least one step"
    assert not any("CRASH" in step.event or "LEASE_LAPSE" in step.event for step in trace.steps)
    assert trace.render().startswith("violated: fair_progress")


def test_the_deaf_owner_is_rejected_first_by_an_earlier_property() -> None:
    """Without skipping, the checks that run before fair_progress already reject that table."""
    defn = ProtocolDefinition(
        mode=Mode.COHERENT, table=_owner_ignores_recalls(TABLE), agents=2, writes=1
    )
    report = explore(defn)
    assert report.counterexample is not None
    assert report.counterexample.property_name in _EARLIER


@pytest.mark.parametrize("mode", list(Mode))
def test_the_real_table_has_no_fair_starving_loop(mode: Mode) -> None:
    """Every property, fair_progress included, holds at 2 agents, 1 write, 1 fault."""
    report = explore(ProtocolDefinition(mode=mode, agents=2, writes=1, fault_budget=1))
    assert report.ok, report.counterexample.render() if report.counterexample else report
    assert "fairness_seconds" in report.summary


def test_skipping_fair_progress_skips_only_it() -> None:
    """A skipped fair_progress leaves the deaf owner to no graph check but the skipped ones."""
    defn = ProtocolDefinition(
        mode=Mode.COHERENT, table=_owner_ignores_recalls(TABLE), agents=2, writes=1
    )
    report = explore(defn, skip=GRAPH_PROPERTIES)
    assert report.ok
    assert "fairness_seconds" not in report.summary


def test_an_unknown_property_name_is_refused() -> None:
    """skip= takes only the graph properties' names, and says which exist."""
    with pytest.raises(ValueError, match="fair_progress"):
        explore(ProtocolDefinition(agents=1, writes=0), skip=frozenset({"fairness"}))
