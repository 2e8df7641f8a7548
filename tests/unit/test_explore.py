"""The explorer passes the real table in both modes and rejects broken tables with a trace."""

from __future__ import annotations

import dataclasses

import pytest

from proofs.explore import explore
from proofs.report import CheckReport
from sagemem.spec import (
    REFUSALS,
    TABLE,
    Effect,
    Event,
    Guard,
    L1State,
    Mode,
    ProtocolDefinition,
    Refusal,
    RefusalKind,
    Rule,
    quick,
)

# Rows that need more than the quick bounds to fire (a resync of an already invalidated fill
# needs an invalidation to arrive, then a second message to the same agent to be lost).
# MS_A HOME_WRITE_BACK [GRANT_LOST] and ME_A HOME_FLUSH [GRANT_LOST] are defensive: only a
# production owner stalled past its lease reaches them (see spec/table.py). The hostile
# scenarios of proofs/mutants.py reach both (tests/unit/test_mutants.py). IS_D FILL_DATA
# [DATA_STALE], defensive too, fires at the quick bounds since they include the L2 rollback
# (an agent told of v1 reads the restored v0).
_NEEDS_DEEPER_BOUNDS = {
    (L1State.MS_A, Event.HOME_WRITE_BACK),
    (L1State.ME_A, Event.HOME_FLUSH),
}


@pytest.fixture(scope="module")
def quick_runs() -> tuple[list[CheckReport], set[int]]:
    """Every quick definition of both modes explored once, with the rows that fired."""
    fired: set[int] = set()
    reports = [explore(defn, fired_rows=fired) for mode in Mode for defn in quick(mode)]
    return reports, fired


def test_real_table_passes_every_quick_bound(
    quick_runs: tuple[list[CheckReport], set[int]],
) -> None:
    """Every invariant, quiescence and internal termination hold for the quick bounds."""
    reports, _ = quick_runs
    assert {str(r.summary["mode"]) for r in reports} == {"coherent", "strict"}
    for report in reports:
        assert report.ok, report.counterexample.render() if report.counterexample else report
        assert int(report.summary["states"]) > 10_000
        assert int(report.summary["quiescent_states"]) > 0
        # prompt progress held in the states reached without a crash or a lease lapse
        assert 0 < int(report.summary["prompt_states"]) < int(report.summary["states"])


def test_every_row_fires_within_the_quick_bounds(
    quick_runs: tuple[list[CheckReport], set[int]],
) -> None:
    """No row of the table is dead: each fires in some reachable state of the quick runs."""
    _, fired = quick_runs
    dead = {(rule.source, rule.event) for index, rule in enumerate(TABLE) if index not in fired}
    assert dead == _NEEDS_DEEPER_BOUNDS


def test_progress_is_reported_while_exploring() -> None:
    """The progress callback sees growing state counts and a final call."""
    calls: list[tuple[int, int, int]] = []
    report = explore(
        ProtocolDefinition(mode=Mode.COHERENT, agents=2, writes=1, fault_budget=1),
        progress=lambda states, edges, depth: calls.append((states, edges, depth)),
    )
    assert report.ok
    assert calls
    assert calls[-1][0] == report.summary["states"]


def test_max_states_truncates_and_does_not_pass() -> None:
    """A truncated exploration is not a pass, and says why."""
    report = explore(ProtocolDefinition(mode=Mode.COHERENT, agents=2, writes=1), max_states=50)
    assert not report.ok
    assert report.counterexample is None
    assert "truncated" in str(report.summary["status"])


def test_missing_row_is_reported_as_an_unhandled_event_with_a_readable_trace() -> None:
    """Dropping the Shared read-hit row is found at the first read of a cached copy."""
    table = tuple(r for r in TABLE if not (r.source is L1State.S and r.event is Event.READ))
    report = explore(ProtocolDefinition(mode=Mode.COHERENT, table=table, agents=1, writes=0))
    assert report.counterexample is not None
    trace = report.counterexample
    assert trace.property_name == "table_handles_every_event"
    assert "unhandled" in trace.explanation
    assert [s.event.split(":")[0] for s in trace.steps] == [
        "agent1 READ",
        "agent1 FILL_FETCH",
        "agent1 FILL_DATA",
        "agent1 READ",
    ]
    text = trace.render()
    assert text.startswith("violated: table_handles_every_event")
    assert "a1:S v0" in text


def test_copy_kept_after_invalidation_is_reported() -> None:
    """A Shared copy that survives its invalidation is older than what its agent knows of."""
    table = tuple(
        dataclasses.replace(r, target=L1State.S, effects=(Effect.NOTE_INVALIDATION,))
        if r.source is L1State.S and r.event is Event.DELIVER_INVALIDATE
        else r
        for r in TABLE
    )
    report = explore(ProtocolDefinition(mode=Mode.COHERENT, table=table, agents=2, writes=1))
    assert report.counterexample is not None
    assert report.counterexample.property_name == "fill_respects_invalidations"
    assert "caches v0 after the invalidation for v1 arrived" in report.counterexample.explanation


def test_retry_without_backoff_is_reported_as_an_internal_loop() -> None:
    """Re-sending a fill at once when the key is owned can spin forever against a dead owner."""
    table = tuple(
        dataclasses.replace(r, effects=(Effect.SEND_RECALL, Effect.REQUEST_FILL))
        if r.event is Event.FILL_FETCH and r.guard is Guard.FETCH_OWNED
        else r
        for r in TABLE
    )
    report = explore(ProtocolDefinition(mode=Mode.COHERENT, table=table, agents=2, writes=1))
    assert report.counterexample is not None
    assert report.counterexample.property_name == "internal_steps_terminate"
    # The immediate re-send is a FILL_FETCH that changes nothing while the owner is away.
    assert "FILL_FETCH" in report.counterexample.explanation


def test_a_request_nobody_answers_is_reported_as_a_deadlock() -> None:
    """If the home never answers a write-through (neither commits nor refuses it as a
    conflict), the lone writer is stuck."""
    table = tuple(
        r
        for r in TABLE
        if not (r.event is Event.HOME_COMMIT and r.guard is Guard.NOT_OWNED_BY_OTHER)
        and r.event is not Event.HOME_CONFLICT
    )
    refusals = (
        *REFUSALS,
        Refusal(
            L1State.WT_H,
            Event.HOME_COMMIT,
            Guard.NOT_OWNED_BY_OTHER,
            RefusalKind.STALLED,
            "test: the home never answers",
        ),
        Refusal(
            L1State.WT_H,
            Event.HOME_CONFLICT,
            Guard.GRANT_LOST,
            RefusalKind.STALLED,
            "test: the home never answers",
        ),
    )
    defn = ProtocolDefinition(
        mode=Mode.COHERENT,
        table=table,
        refusals=refusals,
        agents=1,
        writes=1,
        faults=frozenset(),
    )
    report = explore(defn)
    assert report.counterexample is not None
    assert report.counterexample.property_name == "no_deadlock"
    assert report.counterexample.steps[-1].event.startswith("agent1 WRITE_THROUGH")


def test_an_internal_step_that_changes_nothing_is_reported_as_a_livelock() -> None:
    """Dropping the REFETCH of an invalidated fill whose data is older than the agent's floor
    makes FILL_DATA repeat forever without changing the state: caught."""
    stale_refetch = next(
        rule
        for rule in TABLE
        if rule.source is L1State.IS_D_I
        and rule.event is Event.FILL_DATA
        and rule.guard is Guard.DATA_OLDER
    )
    table = tuple(
        dataclasses.replace(rule, effects=tuple(e for e in rule.effects if e is not Effect.REFETCH))
        if rule is stale_refetch
        else rule
        for rule in TABLE
    )
    defn = ProtocolDefinition(mode=Mode.COHERENT, table=table, agents=2, writes=2, fault_budget=0)
    report = explore(defn)
    assert not report.ok
    assert report.counterexample is not None
    assert report.counterexample.property_name == "internal_steps_terminate"
    assert "FILL_DATA" in report.counterexample.explanation


def _without_effect(
    source: L1State, event: Event, guard: Guard, effect: Effect, mode: Mode
) -> tuple[Rule, ...]:
    """TABLE with `effect` dropped from the one row (source, event, guard) of `mode`."""
    rows = [
        i
        for i, rule in enumerate(TABLE)
        if (rule.source, rule.event, rule.guard) == (source, event, guard) and mode in rule.modes
    ]
    assert len(rows) == 1
    rule = TABLE[rows[0]]
    assert effect in rule.effects
    changed = dataclasses.replace(rule, effects=tuple(e for e in rule.effects if e is not effect))
    return (*TABLE[: rows[0]], changed, *TABLE[rows[0] + 1 :])


@pytest.mark.parametrize("mode", list(Mode), ids=lambda m: m.value)
def test_a_write_that_never_recalls_the_owner_breaks_prompt_progress(mode: Mode) -> None:
    """Row (WT_H, HOME_COMMIT, [OWNED_BY_OTHER]) without SEND_RECALL: the write-through waits
    until the owner leaves on its own (an eviction, a lapsed lease). Every safety invariant
    and the timed quiescence property still hold; prompt progress does not."""
    table = _without_effect(
        L1State.WT_H, Event.HOME_COMMIT, Guard.OWNED_BY_OTHER, Effect.SEND_RECALL, mode
    )
    report = explore(ProtocolDefinition(mode=mode, table=table, agents=2, writes=2, fault_budget=0))
    assert not report.ok
    trace = report.counterexample
    assert trace is not None
    assert trace.property_name == "prompt_progress"
    events = [step.event.split(":")[0] for step in trace.steps]
    assert "agent1 WRITE_L1" in events or "agent2 WRITE_L1" in events
    assert any(event.endswith("WRITE_THROUGH") for event in events)
    assert len(events) <= 6
    assert "a2:WT_H" in trace.steps[-1].state or "a1:WT_H" in trace.steps[-1].state
    # no fault is offered (budget 0): only giving up as a failed compare-and-swap ends the wait
    assert "HOME_CONFLICT: the waiting write gives up" in trace.explanation
    assert trace.render().startswith("violated: prompt_progress")


def test_a_write_that_never_recalls_the_owner_waits_for_a_fault() -> None:
    """With faults offered, the explanation names them: the owner's eviction, lease lapse or
    crash would end the wait (none of them is a protocol step)."""
    table = _without_effect(
        L1State.WT_H, Event.HOME_COMMIT, Guard.OWNED_BY_OTHER, Effect.SEND_RECALL, Mode.COHERENT
    )
    report = explore(
        ProtocolDefinition(mode=Mode.COHERENT, table=table, agents=2, writes=2, fault_budget=1)
    )
    assert report.counterexample is not None
    assert report.counterexample.property_name == "prompt_progress"
    for fault in ("CRASH", "EVICT", "LEASE_LAPSE"):
        assert fault in report.counterexample.explanation


def test_an_ack_replaced_by_a_holder_expiry_breaks_prompt_progress() -> None:
    """Strict (WT_H, DELIVER_INVALIDATE) without SEND_ACK: a writer's invalidation reaches a
    holder that is itself writing; without the ack the first writer waits for the holder's
    registration to expire (HOLDER_EXPIRE): correct up to a lease, not prompt."""
    table = _without_effect(
        L1State.WT_H, Event.DELIVER_INVALIDATE, Guard.ALWAYS, Effect.SEND_ACK, Mode.STRICT
    )
    report = explore(
        ProtocolDefinition(mode=Mode.STRICT, table=table, agents=2, writes=2, fault_budget=0)
    )
    trace = report.counterexample
    assert trace is not None
    assert trace.property_name == "prompt_progress"
    assert "HOLDER_EXPIRE" in trace.explanation
    # the trace ends with the holder owing an ack for an invalidation it will not acknowledge
    assert "ack_owed" in trace.steps[-1].state
    assert "WT_H" in trace.steps[-1].state


def test_prompt_progress_is_not_required_after_a_crash() -> None:
    """After a crash, waiting for the dead owner's lease IS the protocol: the real table
    passes although a crashed owner blocks the others until HOME_EXPIRE_OWNER."""
    defn = ProtocolDefinition(
        mode=Mode.COHERENT,
        agents=2,
        writes=1,
        faults=frozenset({Event.CRASH}),
        fault_budget=1,
    )
    report = explore(defn)
    assert report.ok, report.counterexample.render() if report.counterexample else report
    assert int(report.summary["prompt_states"]) < int(report.summary["states"])
