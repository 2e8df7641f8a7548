"""Survivors confirmed at larger bounds: equal reachable state spaces, else their own run."""

from __future__ import annotations

from proofs.mutants import (
    CheckerKind,
    CheckerSpec,
    changed_keys,
    compare_state_spaces,
    confirm_survivors,
    equivalence_checkers,
    select_mutants,
)
from sagemem.spec.model import ProtocolDefinition
from sagemem.spec.vocabulary import Event, L1State, Mode

_SMALL = CheckerSpec(CheckerKind.EXPLORE, agents=2, writes=1, fault_budget=1)
# AWAIT_INVALIDATIONS after HOME_COMMIT_VERSION is redundant (the commit already waits);
# the S EVICT row without DIRECTORY_REMOVE_HOLDER leaves a registration behind; a dropped
# NOTE_INVALIDATION in the S row lets a fill cache a restored older copy.
_REDUNDANT = "row66:dropped_effect=1"
_STALE_REGISTRATION = "row12:dropped_effect=0"
_FORGETFUL = "row18:dropped_effect=0"


def test_changed_keys_name_the_mutated_row_and_pairs_name_both() -> None:
    """A row mutant changes its (state, event); a pair changes both rows' pairs."""
    defn = ProtocolDefinition()
    (evict,) = select_mutants(defn, [_STALE_REGISTRATION])
    assert changed_keys(evict) == {(L1State.S, Event.EVICT)}
    (pair,) = select_mutants(defn, ["row45:wrong_target=M+row60:dropped_effect=0"])
    assert changed_keys(pair) == {
        (L1State.S, Event.DELIVER_RECALL),
        (L1State.IS_D, Event.FILL_DATA),
    }


def test_equal_state_space_is_found_only_for_the_redundant_change() -> None:
    """The redundant effect leaves every reachable step unchanged; the stale registration
    changes the state after an eviction, and the comparison names such a state."""
    defn = ProtocolDefinition()
    mutants = select_mutants(defn, [_REDUNDANT, _STALE_REGISTRATION])
    comparison = compare_state_spaces(defn, mutants, _SMALL, Mode.COHERENT)
    assert comparison.report.ok
    assert comparison.equal == (_REDUNDANT,)
    assert set(comparison.differs) == {_STALE_REGISTRATION}
    assert "S v0 holder" in comparison.differs[_STALE_REGISTRATION]


def test_confirm_survivors_proves_one_and_kills_the_other() -> None:
    """At the given bound the redundant change is confirmed by equal state spaces in both
    modes; the dropped NOTE_INVALIDATION is explored and killed with its property."""
    defn = ProtocolDefinition()
    mutants = select_mutants(defn, [_REDUNDANT, _FORGETFUL])
    redundant, forgetful = confirm_survivors(defn, mutants, bounds=(_SMALL,))
    assert not redundant.killed
    assert len(redundant.how) == 2
    assert all(how.startswith("equal state space") for how in redundant.how)
    assert forgetful.killed
    assert forgetful.mode is Mode.COHERENT
    assert "fill_respects_invalidations" in forgetful.violation


def test_the_two_fault_equivalence_bound_leaves_the_rollback_out() -> None:
    """With two faults the model's strict mode deadlocks on the real table after a crash and
    a rollback, so that bound runs without the rollback; the 3-agent bound keeps it."""
    two_faults, three_agents = equivalence_checkers()
    assert (two_faults.fault_budget, two_faults.l2_rollback) == (2, False)
    assert (three_agents.agents, three_agents.l2_rollback) == (3, True)
