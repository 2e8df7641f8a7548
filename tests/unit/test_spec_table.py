"""The protocol table is total, deterministic, connected, documented and standard-library only."""

from __future__ import annotations

import ast
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest

from sagemem.spec import (
    INVARIANTS,
    REFUSALS,
    TABLE,
    ActorState,
    Event,
    Guard,
    L1State,
    Mode,
    Refusal,
    Rule,
    Site,
    lookup,
    quick,
)
from sagemem.spec.model import SITE_KEY
from sagemem.spec.table import GUARD_PARTITIONS, RowKey, candidates
from sagemem.spec.vocabulary import (
    EFFECT_MEANING,
    EVENT_KIND,
    EVENT_MEANING,
    EVENT_SITE,
    GUARD_MEANING,
    L1_STATE_MEANING,
    Effect,
)

SPEC_DIR = Path(__file__).resolve().parents[2] / "spec"


def _pairs() -> list[tuple[RowKey, Event]]:
    pairs: list[tuple[RowKey, Event]] = []
    for event in Event:
        site = EVENT_SITE[event]
        if site is Site.AGENT:
            pairs += [(state, event) for state in L1State]
        else:
            pairs.append((SITE_KEY[site], event))
    return pairs


def _outcomes(key: RowKey, event: Event, mode: Mode) -> tuple[list[Rule], list[Refusal]]:
    rules = [r for r in TABLE if r.source is key and r.event is event and mode in r.modes]
    refusals = [f for f in REFUSALS if f.source is key and f.event is event and mode in f.modes]
    return rules, refusals


@pytest.mark.parametrize("mode", list(Mode))
def test_every_state_event_pair_is_a_row_or_a_listed_refusal(mode: Mode) -> None:
    """Each (state, event) has rows and refusals covering exactly one guard partition."""
    problems = []
    for key, event in _pairs():
        rules, refusals = _outcomes(key, event, mode)
        if not rules and not refusals:
            problems.append(f"{key.name} x {event.name}: neither a row nor a refusal")
            continue
        if any(f.guard is None for f in refusals):
            if len(refusals) != 1 or rules:
                problems.append(f"{key.name} x {event.name}: a blanket refusal plus more")
            continue
        guards = [r.guard for r in rules] + [f.guard for f in refusals if f.guard is not None]
        if len(guards) != len(set(guards)):
            problems.append(f"{key.name} x {event.name}: a guard outcome appears twice")
        if frozenset(guards) not in GUARD_PARTITIONS:
            problems.append(f"{key.name} x {event.name}: guards {sorted(g.name for g in guards)}")
    assert problems == []


@pytest.mark.parametrize("mode", list(Mode))
def test_lookup_is_deterministic_for_every_guard_outcome(mode: Mode) -> None:
    """lookup() returns exactly the one row (or refusal) for every outcome of the partition."""
    for key, event in _pairs():
        rules, refusals = _outcomes(key, event, mode)
        for rule in rules:
            assert lookup(key, event, rule.guard, mode) is rule
        for refusal in refusals:
            guard = refusal.guard if refusal.guard is not None else Guard.ALWAYS
            assert lookup(key, event, guard, mode) is refusal


def test_lookup_names_the_missing_pair_when_the_table_is_silent() -> None:
    """A guard outside the pair's partition is a table bug, reported with the pair's names."""
    with pytest.raises(LookupError, match=r"\(S, READ, FETCH_L2_HIT\)"):
        lookup(L1State.S, Event.READ, Guard.FETCH_L2_HIT, Mode.COHERENT)


def test_rows_have_consistent_keys_notes_and_modes() -> None:
    """Agent events key on L1 states, actor events on the actor; every row says why it exists."""
    for rule in TABLE:
        expected = L1State if EVENT_SITE[rule.event] is Site.AGENT else ActorState
        assert isinstance(rule.source, expected), rule
        assert isinstance(rule.target, expected), rule
        assert rule.note.strip(), rule
        assert rule.modes, rule
        assert len(rule.effects) == len(set(rule.effects)), rule


def test_no_dangling_states_and_every_state_reachable_from_invalid() -> None:
    """In the per-agent table every L1 state is reachable from I and has a way out."""
    edges: dict[L1State, set[L1State]] = defaultdict(set)
    for rule in TABLE:
        if isinstance(rule.source, L1State) and isinstance(rule.target, L1State):
            edges[rule.source].add(rule.target)
    reached = {L1State.I}
    frontier = [L1State.I]
    while frontier:
        for nxt in edges[frontier.pop()]:
            if nxt not in reached:
                reached.add(nxt)
                frontier.append(nxt)
    assert reached == set(L1State)
    for state in L1State:
        assert edges[state] - {state}, f"{state.name} has no way out"


def test_every_name_has_a_meaning_and_a_kind() -> None:
    """The vocabulary documents every state, event, guard and effect."""
    assert set(L1_STATE_MEANING) == set(L1State)
    assert set(EVENT_MEANING) == set(Event) == set(EVENT_SITE) == set(EVENT_KIND)
    assert set(GUARD_MEANING) == set(Guard)
    assert set(EFFECT_MEANING) == set(Effect)


def test_every_guard_and_effect_of_the_table_is_used_or_documented_as_unused() -> None:
    """Effects outside TABLE exist only for the race regression tests, and say so."""
    used = {e for r in TABLE for e in r.effects}
    for effect in set(Effect) - used:
        assert EFFECT_MEANING[effect].startswith("(not in TABLE)"), effect


def test_checkers_receive_the_table_object_itself() -> None:
    """The definitions the checkers take carry the very TABLE object production executes."""
    for mode in Mode:
        for defn in quick(mode):
            assert defn.table is TABLE
            assert defn.refusals is REFUSALS


def test_spec_imports_only_the_standard_library() -> None:
    """Every import in spec/ is relative or from the standard library."""
    for path in sorted(SPEC_DIR.glob("*.py")):
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module or ""]
            else:
                continue
            for name in names:
                assert name.split(".")[0] in sys.stdlib_module_names, f"{path.name}: {name}"


def test_importing_the_spec_loads_no_driver_or_checker() -> None:
    """A fresh interpreter importing sagemem.spec has no redis, asyncpg, networkx or z3 loaded."""
    code = (
        "import sys, sagemem.spec\n"
        "bad = sorted(m for m in ('redis', 'asyncpg', 'networkx', 'z3', 'hypothesis')"
        " if m in sys.modules)\n"
        "print(','.join(bad))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
        cwd=SPEC_DIR.parent,
    )
    assert result.stdout.strip() == ""


@pytest.mark.parametrize("mode", list(Mode))
def test_candidates_lists_exactly_the_rows_and_refusals_of_a_pair(mode: Mode) -> None:
    """candidates() is what the production core evaluates: the pair's rows, then refusals."""
    for key, event in _pairs():
        rules, refusals = _outcomes(key, event, mode)
        assert candidates(key, event, mode) == (*rules, *refusals)


def test_every_documented_invariant_is_checked() -> None:
    """The invariant list is complete, in checking order, with strict-only ones marked."""
    assert [(inv.name, len(inv.modes)) for inv in INVARIANTS] == [
        ("table_handles_every_event", 2),
        ("type_invariant", 2),
        ("version_names_one_value", 2),
        ("data_value_reads", 2),
        ("versions_bounded", 2),
        ("no_lost_update", 2),
        ("fill_respects_invalidations", 2),
        ("stale_copies_covered", 2),
        ("shared_copies_registered", 2),
        ("single_owner", 2),
        ("no_acked_write_lost", 2),
        ("every_operation_answered", 2),
        ("reads_respect_invalidations", 2),
        ("read_result", 2),
        ("write_invalidates_copies", 2),
        ("monotonic_reads_and_read_your_writes", 2),
        ("swmr", 1),
        ("data_value", 1),
        ("linearizable_reads", 1),
    ]
