"""The invariants half of the Z3 encoding: each invariant of `sagemem.spec.invariants` as the
formula "the state breaks it", written a second time over the terms of `proofs.z3_state`.

The shape tables (which requests each state allows, which states hold a version) are data
shared with `sagemem.spec.invariants`; the meaning is stated here, and the cross-check tests
(`tests/unit/test_z3_check.py`) compare it with the model's on sampled reachable states.

This module must never import the production package `sagemem` (only `sagemem.spec`).
"""

from __future__ import annotations

from collections.abc import Callable

import z3

from sagemem.spec.invariants import (  # the shape tables are data shared with the checks
    invariants_for,
)
from sagemem.spec.model import (
    GRANT_DEAD_INCARNATION,
    GRANT_LIVE_INCARNATION,
    NO_GRANT,
    OP_NONE,
    OP_READ,
    OP_WRITE,
    RECALL,
    Request,
    message_version,
)
from sagemem.spec.vocabulary import (
    L1State,
)

from .z3_state import (
    HOLDS_OWNED_DATA,
    HOLDS_VERSION,
    OWNER_STATES,
    REQUESTS_BY_STATE,
    VALID_STATES,
    VALUE_LEVEL_INVARIANTS,
    VIOLATION_DEFECT,
    VIOLATION_LINEARIZABLE,
    VIOLATION_MONOTONIC,
    VIOLATION_READ_AFTER_INVALIDATION,
    VIOLATION_UNANSWERED,
    VIOLATION_UNFENCED,
    Expr,
    SymState,
    Terms,
)

__all__ = ["Invariants"]


class Invariants(Terms):
    """The invariants of one definition's mode, as formulas over a `SymState`."""

    # ------------------------------------------------------------------------------ invariants

    def invariant_violations(self, s: SymState) -> dict[str, Expr]:
        """For each invariant of the mode, the formula "`s` breaks it" (as invariants.py)."""
        builders: dict[str, Callable[[SymState], Expr]] = {
            "table_handles_every_event": lambda s: self._viol_is(s, VIOLATION_DEFECT),
            "type_invariant": lambda s: z3.Not(self.type_invariant(s)),
            "versions_bounded": self._versions_unbounded,
            "no_lost_update": lambda s: s.g["commits"] != s.g["home"],
            "fill_respects_invalidations": self._fill_ignores_invalidation,
            "stale_copies_covered": self._stale_uncovered,
            "shared_copies_registered": self._shared_unregistered,
            "single_owner": self._owners_broken,
            "no_acked_write_lost": self._acked_write_lost,
            "monotonic_reads_and_read_your_writes": lambda s: self._viol_is(s, VIOLATION_MONOTONIC),
            "every_operation_answered": self._operation_unanswered,
            "reads_respect_invalidations": lambda s: self._viol_is(
                s, VIOLATION_READ_AFTER_INVALIDATION
            ),
            "swmr": self._swmr_broken,
            "data_value": self._data_value_broken,
            "linearizable_reads": lambda s: self._viol_is(s, VIOLATION_LINEARIZABLE),
        }
        result: dict[str, Expr] = {}
        for inv in invariants_for(self.mode):
            if inv.name in VALUE_LEVEL_INVARIANTS:
                continue
            builder = builders.get(inv.name)
            if builder is None:
                raise ValueError(
                    f"invariant {inv.name!r} has no Z3 encoding; add it to "
                    "Invariants.invariant_violations in proofs/z3_invariants.py"
                )
            result[inv.name] = builder(s)
        return result

    def _viol_is(self, s: SymState, code: int) -> Expr:
        return s.g["violation"] == self.code("viol", code)

    def type_invariant(self, s: SymState, *, with_bounds: bool = True) -> Expr:
        """invariants.type_invariant; `with_bounds=False` drops the version bound of the home
        (not inductive by itself: the one-step check leaves it to bounded model checking)."""
        g = s.g
        zero = self.v(0)
        parts = [self.domains(s)]
        if with_bounds:
            parts += [
                g["home"] >= zero,
                g["home"] <= self.v(self.max_version),
                g["writes"] >= zero,
                g["writes"] <= self.v(self.defn.writes),
            ]
        parts.append(
            z3.Or(g["outbox"] == zero, z3.And(g["outbox"] >= self.v(1), g["outbox"] <= g["home"]))
        )
        for ag, box in zip(s.agents, s.inboxes, strict=True):
            parts.append(
                z3.Or(
                    *(
                        z3.And(
                            self.is_state(ag, st),
                            z3.Or(*(self._req_is(ag, r) for r in REQUESTS_BY_STATE[st])),
                        )
                        for st in L1State
                    )
                )
            )
            parts.append((ag["ver"] >= zero) == self.is_state(ag, *HOLDS_VERSION))
            parts.append((ag["data"] >= zero) == self._req_is(ag, Request.DATA))
            parts.append(z3.And(ag["floor"] >= zero, ag["floor"] <= g["home"]))
            parts += [
                z3.Implies(box[m], self.v(message_version(m)) <= g["home"]) for m in self.messages
            ]
        parts.append(self._at_most_one([z3.Not(self._grant_is(ag, NO_GRANT)) for ag in s.agents]))
        parts.append(self._at_most_one([ag["l2_lease"] for ag in s.agents]))
        return z3.And(*parts)

    def versions_within_home(self, s: SymState) -> Expr:
        """No version anywhere exceeds the home's: the lemma the one-step checks assume."""
        g = s.g
        parts = [z3.And(ag["ver"] <= g["home"], ag["data"] <= g["home"]) for ag in s.agents]
        parts += [g["l2"] <= g["home"], g["l2_high"] <= g["home"]]
        return z3.And(*parts)

    def _versions_unbounded(self, s: SymState) -> Expr:
        g = s.g
        parts = [z3.Or(ag["ver"] > g["home"], ag["data"] > g["home"]) for ag in s.agents]
        parts.append(g["l2"] > g["home"])
        parts.append(z3.And(g["l2"] >= self.v(0), g["l2"] < g["l2_high"]))
        return z3.Or(*parts)

    def _fill_ignores_invalidation(self, s: SymState) -> Expr:
        return z3.Or(
            *(
                z3.And(
                    self.is_state(ag, L1State.S),
                    z3.Or(ag["ver"] < ag["told"], ag["ver"] < ag["floor"]),
                )
                for ag in s.agents
            )
        )

    def _covered(self, s: SymState, a: int, version: Expr) -> Expr:
        ag = s.agents[a]
        box = s.inboxes[a]
        # any invalidation drops an S copy and turns a fill into IS_D_I, whatever its version
        invalidations = [box[m] for m in self.messages if m != RECALL]
        return z3.Or(
            ag["missed"],
            *invalidations,
            z3.And(ag["registered"], s.g["outbox"] > version),
        )

    def _stale_uncovered(self, s: SymState) -> Expr:
        g = s.g
        parts = []
        for a, ag in enumerate(s.agents):
            parts.append(
                z3.And(
                    self.is_state(ag, *VALID_STATES),
                    ag["ver"] < g["home"],
                    z3.Or(
                        z3.Not(self.is_state(ag, L1State.S)), z3.Not(self._covered(s, a, ag["ver"]))
                    ),
                )
            )
            parts.append(
                z3.And(
                    self.is_state(ag, L1State.IS_D),
                    # older than the floor: DATA_STALE refuses it, it is never installed
                    ag["data"] >= ag["floor"],
                    ag["data"] < g["home"],
                    z3.Not(self._covered(s, a, ag["data"])),
                )
            )
        parts.append(z3.And(g["l2"] >= self.v(0), g["l2"] < g["home"], g["outbox"] <= g["l2"]))
        return z3.Or(*parts)

    def _shared_unregistered(self, s: SymState) -> Expr:
        parts = []
        for ag, box in zip(s.agents, s.inboxes, strict=True):
            being_invalidated = z3.Or(ag["missed"], *(box[m] for m in self.messages if m != RECALL))
            parts.append(
                z3.And(
                    self.is_state(ag, L1State.S),
                    z3.Not(ag["registered"]),
                    z3.Not(being_invalidated),
                )
            )
        return z3.Or(*parts)

    def _owners_broken(self, s: SymState) -> Expr:
        owners = [self.is_state(ag, *OWNER_STATES) for ag in s.agents]
        parts = [z3.Not(self._at_most_one(owners))]
        for ag, owner in zip(s.agents, owners, strict=True):
            parts.append(z3.And(owner, z3.Not(self._grant_is(ag, GRANT_LIVE_INCARNATION))))
            parts.append(z3.And(self.is_state(ag, L1State.M), z3.Not(s.g["dirty"])))
            parts.append(z3.And(self.is_state(ag, L1State.E), s.g["dirty"]))
        return z3.Or(*parts)

    def _acked_write_lost(self, s: SymState) -> Expr:
        parts = [self._viol_is(s, VIOLATION_UNFENCED)]
        parts += [
            z3.And(ag["unsaved"], z3.Not(self.is_state(ag, *HOLDS_OWNED_DATA))) for ag in s.agents
        ]
        keeper = z3.Or(
            *(
                z3.And(
                    z3.Not(self._grant_is(ag, NO_GRANT)),
                    z3.Or(
                        self.is_state(ag, *HOLDS_OWNED_DATA),
                        self._grant_is(ag, GRANT_DEAD_INCARNATION),
                        z3.Not(ag["lease"]),
                    ),
                )
                for ag in s.agents
            )
        )
        parts.append(z3.And(s.g["dirty"], z3.Not(keeper)))
        return z3.Or(*parts)

    def _operation_unanswered(self, s: SymState) -> Expr:
        parts = [self._viol_is(s, VIOLATION_UNANSWERED)]
        for ag in s.agents:
            expected = z3.If(
                self.is_state(ag, L1State.IS_D, L1State.IS_D_I),
                self.v(OP_READ),
                z3.If(
                    self.is_state(ag, L1State.WT_H, L1State.WT_A, L1State.IM_H, L1State.IM_A),
                    self.v(OP_WRITE),
                    self.v(OP_NONE),
                ),
            )
            parts.append(ag["op"] != expected)
        return z3.Or(*parts)

    def _swmr_broken(self, s: SymState) -> Expr:
        owner = z3.Or(*(self.is_state(ag, *OWNER_STATES) for ag in s.agents))
        sharer = z3.Or(*(self.is_state(ag, L1State.S) for ag in s.agents))
        return z3.And(owner, sharer)

    def _data_value_broken(self, s: SymState) -> Expr:
        return z3.Or(
            *(z3.And(self.is_state(ag, *VALID_STATES), ag["ver"] < s.g["done"]) for ag in s.agents)
        )
