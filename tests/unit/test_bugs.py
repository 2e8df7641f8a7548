"""The catalogue of hand-written protocol bugs: each is rejected with a readable trace."""

from __future__ import annotations

import pytest

from proofs.bugs import BUGS, Bug, bug_definition, check_bug, check_bugs
from proofs.explore import explore
from proofs.scenarios import run_scenario
from sagemem.spec.model import QUICK_BOUNDS, ProtocolDefinition
from sagemem.spec.vocabulary import Mode

CASES = [
    pytest.param(bug, mode, id=f"{bug.name}-{mode.value}")
    for bug in BUGS
    for mode in Mode
    if mode in bug.modes
]

# What each bug must be caught by (a property the bug actually breaks, not just any).
EXPECTED: dict[tuple[str, Mode], str] = {
    ("stale_fill", Mode.COHERENT): "stale_copies_covered",
    ("unfenced_late_write_back", Mode.COHERENT): "version_names_one_value",
    ("unfenced_late_write_back", Mode.STRICT): "version_names_one_value",
    ("transient_state_serves_reads", Mode.COHERENT): "read_result",
    ("transient_state_serves_reads", Mode.STRICT): "linearizable_reads",
    ("delete_keeps_version", Mode.COHERENT): "version_names_one_value",
    ("delete_keeps_version", Mode.STRICT): "version_names_one_value",
    ("strict_write_completes_before_acks", Mode.STRICT): "swmr",
}


def test_the_catalogue_has_every_bug_the_issue_lists() -> None:
    """Stale fill, RESYNC keeping a copy, unfenced write-back (also over a write-through),
    early strict writes, a lapsed owner serving, a transient state serving reads, a
    write-through over a live owner, a delete keeping its version, late registration."""
    assert {bug.name for bug in BUGS} == {
        "stale_fill",
        "resync_keeps_copy",
        "unfenced_late_write_back",
        "unfenced_late_write_back_over_write_through",
        "strict_write_completes_before_acks",
        "lapsed_owner_keeps_serving",
        "transient_state_serves_reads",
        "write_through_over_live_owner",
        "delete_keeps_version",
        "holder_registered_after_read",
    }
    serving = next(bug for bug in BUGS if bug.name == "transient_state_serves_reads")
    assert serving.modes == frozenset(Mode)


@pytest.mark.parametrize(("bug", "mode"), CASES)
def test_each_bug_is_rejected_with_a_readable_trace(bug: Bug, mode: Mode) -> None:
    """The explorer (or the bug's script) rejects the bug; the trace names agents and rows."""
    verdict = check_bug(bug, mode)
    assert verdict.rejected, verdict.line()
    trace = verdict.counterexample
    assert trace is not None
    assert trace.steps
    assert trace.explanation
    assert any(step.event.startswith("agent") for step in trace.steps)
    assert all(" -> " in step.event or ": " in step.event for step in trace.steps)
    rendered = trace.render()
    assert rendered.startswith("violated: ")
    assert "  1. " in rendered
    expected = EXPECTED.get((bug.name, mode))
    if expected is not None:
        assert expected in trace.property_name or expected in trace.explanation, rendered


@pytest.mark.parametrize("mode", list(Mode))
def test_the_real_table_passes_every_bugs_bounds_and_script(mode: Mode) -> None:
    """Without the edit, the same bounds and scripts pass: each rejection is the bug's.

    Bounds that are a quick bound of the spec are left to tests/unit/test_explore.py."""
    quick = {(b.agents, b.writes, b.fault_budget) for b in QUICK_BOUNDS}
    explored: set[tuple[int, int, int | None]] = set()
    for bug in BUGS:
        if mode not in bug.modes:
            continue
        defn = bug_definition(bug, mode)
        bounds = (defn.agents, defn.writes, defn.fault_budget)
        real = ProtocolDefinition(
            mode=mode, agents=defn.agents, writes=defn.writes, fault_budget=defn.fault_budget
        )
        if bounds not in quick and bounds not in explored:
            explored.add(bounds)
            assert explore(real).ok, bug.name
        if bug.script is not None:
            assert run_scenario(real, bug.script) is None, bug.name
    assert explored


def test_check_bugs_reports_a_bug_that_is_not_rejected() -> None:
    """A 'bug' whose edit changes nothing is reported as not rejected (the check can fail)."""
    harmless = Bug("no_change", "an edit that changes nothing", lambda t, r: (t, r))
    report = check_bugs(Mode.COHERENT, (harmless,))
    assert not report.ok
    assert report.summary["not_rejected"] == "no_change"
    assert report.counterexample is not None
    assert "no_change" in report.counterexample.property_name
