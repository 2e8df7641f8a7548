"""The coherence protocol of sagemem as executable data: one table, its interpreter, invariants.

Import it as `sagemem.spec`; `import spec` (the repository's top-level folder, also in the
wheel) gives the very same modules, so `spec.L1State is sagemem.spec.L1State`. Standard
library only; no I/O. The production core executes `TABLE` itself, and `proofs/` checks it.

The design in brief (one key; keys are independent):

- Actors: agents (an L1 entry each), the home (Postgres: version, the owner's grant with its
  lease, and a transactional outbox of versions whose invalidations are still to publish),
  Redis (the L2 copy with memcache-style fill leases; the directory of holders and, strict,
  their owed acks) and the bus (pub/sub: per-destination messages that may be lost).
- Reads never invalidate. A miss registers the agent as holder BEFORE reading (L2, else a
  leased home read); an invalidation during the fill makes it IS_D_I (returned once or
  refetched, never cached); data older than what the agent knows of is never installed.
- Writes at a shared tier commit at the home first (with an outbox entry in the same
  transaction); the relay then deletes L2 (voiding fill leases) and invalidates the holders.
  A writer that crashes after committing leaves the outbox to any sweeper.
- A tier-0 write takes ownership (the home reserves the next version and grants it, leased);
  the data is written back on evict/close, flush, a reader's recall, or lease lapse; after
  the home expires a lapsed owner, its late write-back is fenced and reported.
- A lost message or a disconnect is detected by the agent's listener (sequence gaps,
  reconnects; a maximum entry lifetime as backstop) and blocks reads of shared copies until
  RESYNC drops them. Strict mode adds acknowledgements (or lease expiry of silent holders)
  before a write returns, and stalls fills while a write settles.
"""

from __future__ import annotations

if __name__ != "sagemem.spec":
    # Imported as the top-level `spec`: become `sagemem.spec`, submodules included, so that one
    # module tree (one TABLE, one L1State) exists whichever name a user imports.
    from ._alias import alias_package

    alias_package(__name__, "sagemem.spec")

from .invariants import INVARIANTS, Invariant, first_violation, invariants_for, is_quiescent
from .model import (
    ALL_FAULTS,
    DEEP_BOUNDS,
    QUICK_BOUNDS,
    AgentState,
    Bounds,
    ProtocolDefinition,
    Request,
    State,
    Transition,
    canonical,
    deep,
    definitions,
    describe,
    holds,
    initial_state,
    quick,
    successors,
    transitions,
)
from .table import REFUSALS, TABLE, Refusal, RefusalKind, Rule, lookup
from .vocabulary import (
    ActorState,
    Effect,
    Event,
    EventKind,
    Guard,
    L1State,
    MessageKind,
    Mode,
    Site,
)

__all__ = [
    "ALL_FAULTS",
    "DEEP_BOUNDS",
    "INVARIANTS",
    "QUICK_BOUNDS",
    "REFUSALS",
    "TABLE",
    "ActorState",
    "AgentState",
    "Bounds",
    "Effect",
    "Event",
    "EventKind",
    "Guard",
    "Invariant",
    "L1State",
    "MessageKind",
    "Mode",
    "ProtocolDefinition",
    "Refusal",
    "RefusalKind",
    "Request",
    "Rule",
    "Site",
    "State",
    "Transition",
    "canonical",
    "deep",
    "definitions",
    "describe",
    "first_violation",
    "holds",
    "initial_state",
    "invariants_for",
    "is_quiescent",
    "lookup",
    "quick",
    "successors",
    "transitions",
]
