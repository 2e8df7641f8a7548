"""The protocol of `sagemem.spec` as Z3 formulas over finite-domain bit-vectors.

One global state of the key becomes a `SymState`: a few bit-vector and Boolean terms per field
(versions are small signed bit-vectors, L1 states and requests 4-bit codes, the inbox one
Boolean per possible message). Guards and effects are read, as formulas, from their one
statement in `sagemem.spec.meaning` (a few effects keep code, see `meaning.EFFECTS_IN_CODE`);
the invariants are written here a second time, mirroring `sagemem.spec.invariants` field by
field. The encoding is split by concern: the state and its terms
(`proofs.z3_state`), the semantics of guards, effects and steps (`proofs.z3_semantics`) and
the invariants (`proofs.z3_invariants`); this module joins them as `Encoding`, the entry point
the checkers import. `tests/unit/test_z3_check.py` evaluates both on sampled reachable states and
steps and fails when they disagree, so the two semantics cannot drift apart silently.

A step is one `Step`: (event, subject agent, payload, row or table defect) with its enabling
condition and the successor state, built by applying the row's effects in order to the terms.
A state that breaks no invariant but reaches a (state, event) that the table leaves undefined,
doubles, or lists as impossible steps into a state whose `viol` code is `VIOLATION_DEFECT`.

Three environment events of the model are NOT encoded, by design: an agent leaving
(`ProtocolDefinition.leaves`), the directory forgetting (`ProtocolDefinition.directory_forgets`,
`sagemem.spec.model.DIRECTORY_FORGETS`: its `cut` field, the LINK_LOST step and the strict
wait on a young directory are the explorer's, like the rollback's marks) and an L2 rollback
(`ProtocolDefinition.l2_rollback`, the L2
copy going back to an older snapshot; `sagemem.spec.model.ROLLBACK_TO`). None is a row of
the table, so the one-step checks (totality, determinism, rows keeping the type invariant) do
not concern them; the rollback also needs what this version-level abstraction leaves out:
the values of older versions (`names`), and the marks that exempt a restored copy, and the
copies read from it, from the global recency properties (`l2_restored`, `restored`), which
would have to be encoded in every invariant they relax. The offers below ignore the flags,
so an `Encoding` of a definition with them set is the encoding of that definition without
them; the explorer (`proofs.explore`, whose quick and deep definitions turn the rollback on)
is the checker of these events, and the cross-checks with the model run on definitions
without them.

This module must never import the production package `sagemem` (only `sagemem.spec`).
"""

from __future__ import annotations

from .z3_invariants import Invariants
from .z3_semantics import Semantics
from .z3_state import (
    AGENT_FIELDS,
    GLOBAL_FIELDS,
    VALUE_LEVEL_INVARIANTS,
    VIOLATION_CODES,
    VIOLATION_NONE,
    Step,
    SymState,
    version_level,
    violation_category,
)

__all__ = [
    "AGENT_FIELDS",
    "GLOBAL_FIELDS",
    "VALUE_LEVEL_INVARIANTS",
    "VIOLATION_CODES",
    "VIOLATION_NONE",
    "Encoding",
    "Step",
    "SymState",
    "version_level",
    "violation_category",
]


class Encoding(Semantics, Invariants):
    """The Z3 encoding of one `ProtocolDefinition` (its table, mode and bounds)."""
