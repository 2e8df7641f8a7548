"""sagemem.verify judges operation histories of the model: the real table passes, bugs fail."""

from __future__ import annotations

import dataclasses
import functools
import random

import pytest

from proofs.bugs import BUGS, Bug, bug_definition
from proofs.cli import parse_options, plan_labels
from proofs.model_histories import (
    KEY,
    ModelHistory,
    check_model_histories,
    history_of,
    judge,
    random_walk,
)
from sagemem.spec import (
    REFUSALS,
    Event,
    Guard,
    L1State,
    Mode,
    ProtocolDefinition,
    RefusalKind,
)
from sagemem.spec.model import Transition, initial_state, transitions
from sagemem.verify import OpKind, ReadHit, Unknown, Written


def _path(defn: ProtocolDefinition, *moves: str) -> list[Transition]:
    """The transitions whose labels start with `moves` (e.g. "agent1 READ"), in order."""
    state = initial_state(defn)
    path: list[Transition] = []
    for move in moves:
        step = next(t for t in transitions(defn, state) if t.label.startswith(move + ":"))
        path.append(step)
        state = step.target
    return path


_WRITE_THEN_READ = (
    "agent1 WRITE_THROUGH",
    "agent1 HOME_COMMIT",
    "home OUTBOX_RELAY",
    "agent1 WRITE_SETTLED",
    "agent2 READ",
    "agent2 FILL_FETCH",
    "agent2 FILL_DATA",
)


@functools.cache
def _bug_report(name: str, mode: Mode) -> tuple[str, str]:
    bug = next(b for b in BUGS if b.name == name)
    report = check_model_histories(graph=[bug_definition(bug, mode)])
    assert not report.ok
    assert report.counterexample is not None
    return report.counterexample.property_name, report.counterexample.render()


def test_a_path_becomes_operations_with_invocation_and_response_times() -> None:
    """A write-through then another agent's fill read: versions shifted by one, times 2n/2n+1."""
    defn = ProtocolDefinition(mode=Mode.STRICT, agents=2, writes=1, fault_budget=0)
    history = history_of(defn, _path(defn, *_WRITE_THEN_READ))
    write, read = history.operations
    assert (write.agent_id, write.kind, write.value, write.outcome) == (
        "agent1",
        OpKind.WRITE,
        "w1",
        Written(2),
    )
    assert (write.invoked_at_ns, write.completed_at_ns) == (2, 9)
    assert (read.agent_id, read.kind, read.outcome) == ("agent2", OpKind.READ, ReadHit("w1", 2))
    assert (read.invoked_at_ns, read.completed_at_ns) == (10, 15)
    assert read.key == KEY
    assert history.completed_step == {write.op_id: 4, read.op_id: 7}
    assert judge(history).ok


def test_a_crash_after_the_commit_leaves_a_write_of_unknown_outcome_that_explains_reads() -> None:
    """The crashed writer's operation is Unknown, carries its value, and a read of it is legal."""
    defn = ProtocolDefinition(mode=Mode.STRICT, agents=2, writes=1, fault_budget=1)
    moves = (
        "agent1 WRITE_THROUGH",
        "agent1 HOME_COMMIT",
        "agent1 CRASH",
        "home OUTBOX_RELAY",
        *_WRITE_THEN_READ[4:],
    )
    history = history_of(defn, _path(defn, *moves))
    write, read = history.operations
    assert isinstance(write.outcome, Unknown)
    assert write.completed_at_ns is None
    assert write.value == "w1"
    assert read.outcome == ReadHit("w1", 2)
    assert judge(history).ok


def test_the_homes_revocation_of_a_lapsed_owner_is_a_write_of_the_kept_value() -> None:
    """HOME_REVOKE_GRANT names the home's old value anew: a "home" write of unknown outcome."""
    defn = ProtocolDefinition(mode=Mode.STRICT, agents=2, writes=1, fault_budget=1)
    moves = (
        "agent1 WRITE_L1",
        "agent1 HOME_ACQUIRE",
        "home OUTBOX_RELAY",
        "agent1 WRITE_SETTLED",
        "agent1 LEASE_LAPSE",
        "agent1 HOME_EXPIRE_OWNER",
        *_WRITE_THEN_READ[4:],
    )
    history = history_of(defn, _path(defn, *moves))
    home = [op for op in history.operations if op.agent_id == "home"]
    assert [(op.value, op.invoked_at_ns, op.completed_at_ns) for op in home] == [("w0", 12, None)]
    assert isinstance(home[0].outcome, Unknown)
    read = history.operations[-1]
    assert read.outcome == ReadHit("w0", 3)
    assert judge(history).ok


@pytest.mark.parametrize("mode", list(Mode))
def test_the_real_table_passes_every_graph_path_and_walk(mode: Mode) -> None:
    """Every answered operation's shortest path (2 agents, 1 write) and 40 walks pass."""
    small = ProtocolDefinition(mode=mode, agents=2, writes=1, fault_budget=0)
    walked = ProtocolDefinition(mode=mode, agents=3, writes=2, fault_budget=1)
    report = check_model_histories(graph=[small], walked=[walked], walks=40)
    assert report.ok, report.counterexample.render() if report.counterexample else report
    assert int(report.summary["graph_paths"]) > 50
    assert report.summary["walks"] == 40
    assert int(report.summary["operations"]) > 200


@pytest.mark.parametrize(
    ("bug", "mode", "expected"),
    [
        ("transient_state_serves_reads", Mode.STRICT, "history_linearizable"),
        ("transient_state_serves_reads", Mode.COHERENT, "history_stale_read_covered"),
        ("stale_fill", Mode.COHERENT, "history_stale_read_covered"),
        ("delete_keeps_version", Mode.STRICT, "history_linearizable"),
        ("delete_keeps_version", Mode.COHERENT, "history_read_value"),
    ],
)
def test_hand_written_bugs_give_histories_the_checkers_reject(
    bug: str, mode: Mode, expected: str
) -> None:
    """The history of some shortest path breaks the checker of the mode, with a readable trace."""
    name, text = _bug_report(bug, mode)
    assert name == expected
    assert text.startswith(f"violated: {expected}")
    assert "history up to step" in text
    assert "agent1#1" in text or "agent2#1" in text


_BUG_MODES = [(bug, mode) for bug in BUGS for mode in sorted(bug.modes, key=lambda m: m.value)]


@pytest.mark.parametrize(
    ("bug", "mode"), _BUG_MODES, ids=[f"{b.name}-{m.value}" for b, m in _BUG_MODES]
)
def test_every_hand_written_bug_gives_a_history_the_checkers_reject(bug: Bug, mode: Mode) -> None:
    """At the bug's bounds (the late write-back over a write-through needs 2 writes and a
    fault: its own bounds leave it to its script), some graph path's history fails."""
    defn = bug_definition(bug, mode)
    if bug.name == "unfenced_late_write_back_over_write_through":
        defn = dataclasses.replace(defn, writes=2, fault_budget=1)
    report = check_model_histories(graph=[defn])
    assert not report.ok, f"{bug.name} ({mode.value}) passed {report.summary}"
    assert report.counterexample is not None
    assert report.counterexample.property_name.startswith("history_")


@pytest.mark.parametrize(
    ("mode", "expected"),
    [
        (Mode.STRICT, {"history_linearizable"}),
        (Mode.COHERENT, {"history_read_value", "history_monotonic_reads"}),
    ],
)
def test_a_read_refused_as_not_applicable_shows_as_a_miss_the_checkers_reject(
    mode: Mode, expected: set[str]
) -> None:
    """(S, READ, CONN_MISSED) made NOT_APPLICABLE: production answers None, a miss of a live key."""
    refusals = tuple(
        dataclasses.replace(f, kind=RefusalKind.NOT_APPLICABLE)
        if f.source is L1State.S and f.event is Event.READ and f.guard is Guard.CONN_MISSED
        else f
        for f in REFUSALS
    )
    assert refusals != REFUSALS
    defn = ProtocolDefinition(mode=mode, refusals=refusals, agents=2, writes=1, fault_budget=1)
    report = check_model_histories(graph=[defn])
    assert report.counterexample is not None
    assert report.counterexample.property_name in expected
    assert "miss" in report.counterexample.explanation


def test_a_strict_stale_read_is_explained_by_the_linearizability_checker() -> None:
    """MI_A serving a read shows as a read no real-time order can place, and its path says so."""
    _, text = _bug_report("transient_state_serves_reads", Mode.STRICT)
    assert "is not linearizable" in text
    assert "READ: MI_A -> MI_A {return_value}" in text


def test_an_uncovered_stale_read_names_the_newer_version() -> None:
    """A stale fill's read returns an old version although the newer one was known complete."""
    _, text = _bug_report("stale_fill", Mode.COHERENT)
    assert "no invalidation was on its way to the reader" in text
    assert "DELIVER_INVALIDATE" in text


def test_random_walks_are_reproducible_and_bounded() -> None:
    """The same seed gives the same walk; a walk never exceeds its step bound."""
    defn = ProtocolDefinition(mode=Mode.COHERENT, agents=2, writes=1, fault_budget=1)
    first = random_walk(defn, random.Random(5), max_steps=30)
    again = random_walk(defn, random.Random(5), max_steps=30)
    assert [t.label for t in first] == [t.label for t in again]
    assert 0 < len(first) <= 30


def test_walks_of_a_bug_report_the_shortest_failing_walk() -> None:
    """Random walks alone find the ABA delete, and the reported trace ends at the culprit."""
    bug = next(b for b in BUGS if b.name == "delete_keeps_version")
    report = check_model_histories(walked=[bug_definition(bug, Mode.STRICT)], walks=200)
    assert not report.ok
    assert report.counterexample is not None
    assert report.counterexample.property_name == "history_linearizable"
    assert 0 < len(report.counterexample.steps) <= 10


def test_a_truncated_state_graph_is_said_in_the_summary() -> None:
    """max_states stops the graph paths, and the report names the truncated definition."""
    defn = ProtocolDefinition(mode=Mode.COHERENT, agents=2, writes=1, fault_budget=1)
    report = check_model_histories(graph=[defn], max_states=300)
    assert report.ok
    assert report.summary["truncated_2a1w"] == 300
    assert report.summary["graph_states"] == 300


def test_an_empty_history_passes() -> None:
    """A path that answers no operation has nothing to judge."""
    defn = ProtocolDefinition(mode=Mode.STRICT, agents=1, writes=0, fault_budget=0)
    history = ModelHistory(defn, (), ())
    assert judge(history).ok


def test_sagemem_check_runs_the_model_histories_in_each_mode() -> None:
    """The quick plan has one history task per mode (before the bugs)."""
    labels = plan_labels(parse_options([]))
    assert sum(label.startswith("history ") for label in labels) == 2
