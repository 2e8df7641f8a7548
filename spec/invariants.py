"""The protocol's invariants as pure functions `(defn, state) -> str | None` (None: it holds).

Trace properties (monotonic reads, read-your-writes, linearizable reads in strict mode) are
checked through ghost fields the interpreter maintains: a read that breaks one records the
first violation in `State.violation`, and the matching invariant here reports it.

An L2 rollback (`ProtocolDefinition.l2_rollback`, an environment fault) puts an older copy back
in L2. The properties that say "L2 never goes back" and the global recency properties (stale
copies covered, strict swmr and data value, and at reads read_result, linearizable reads and
write_invalidates_copies) are stated for the protocol's own steps: they exempt the restored L2
copy (`State.l2_restored`) and the fill data and copies read from it (`AgentState.restored`),
which no protocol can keep fresh over a restored store. The agent-local ones (monotonic reads
and read-your-writes, reads and fills respecting the invalidations the agent saw) hold for them
too: the agent's floor is what defends against a restored copy.

`is_quiescent()` defines the good states the explorer must be able to reach from everywhere:
nothing in flight, nothing waiting, no missed-messages condition, and no stale copy.

Standard library only; no I/O.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from .model import (
    GRANT_DEAD_INCARNATION,
    GRANT_LIVE_INCARNATION,
    NO_GRANT,
    OP_NONE,
    OP_READ,
    OP_WRITE,
    RECALL,
    AgentState,
    ProtocolDefinition,
    Request,
    State,
    message_version,
)
from .table import BOTH_MODES
from .vocabulary import STABLE_STATES, L1State, Mode

__all__ = [
    "INVARIANTS",
    "Invariant",
    "first_violation",
    "invariants_for",
    "is_quiescent",
]

type Check = Callable[[ProtocolDefinition, State], str | None]

_STRICT_ONLY: Final = frozenset({Mode.STRICT})

_REQUESTS_BY_STATE: Final[dict[L1State, frozenset[Request]]] = {
    L1State.I: frozenset({Request.NONE}),
    L1State.S: frozenset({Request.NONE}),
    L1State.E: frozenset({Request.NONE}),
    L1State.M: frozenset({Request.NONE}),
    L1State.IS_D: frozenset({Request.FILL, Request.DATA, Request.WAIT_OWNER}),
    L1State.IS_D_I: frozenset({Request.FILL, Request.DATA, Request.WAIT_OWNER}),
    L1State.WT_H: frozenset({Request.COMMIT, Request.WAIT_OWNER}),
    L1State.WT_A: frozenset({Request.SETTLE}),
    L1State.IM_H: frozenset({Request.ACQUIRE, Request.WAIT_OWNER}),
    L1State.IM_A: frozenset({Request.SETTLE}),
    L1State.MI_A: frozenset({Request.WRITE_BACK}),
    L1State.ME_A: frozenset({Request.FLUSH}),
    L1State.MS_A: frozenset({Request.WRITE_BACK}),
}
_HOLDS_VERSION: Final = frozenset(
    {
        L1State.S,
        L1State.E,
        L1State.M,
        L1State.WT_A,
        L1State.IM_A,
        L1State.MI_A,
        L1State.ME_A,
        L1State.MS_A,
    }
)
# States whose entry holds the owner's unsaved data, or a write in progress that supersedes it
# (a write-through, WT_H; an owner's new local write reserving its version, IM_H).
_HOLDS_OWNED_DATA: Final = frozenset(
    {
        L1State.IM_H,
        L1State.IM_A,
        L1State.M,
        L1State.MI_A,
        L1State.ME_A,
        L1State.MS_A,
        L1State.WT_H,
    }
)
_TABLE_DEFECTS: Final = ("unhandled", "nondeterministic", "overlap", "impossible_reached")


@dataclass(frozen=True, slots=True)
class Invariant:
    """A named invariant, the modes it applies to, and what it states."""

    name: str
    check: Check
    modes: frozenset[Mode]
    statement: str


def _agent_shape(i: int, ag: AgentState, state: State) -> str | None:
    if ag.req not in _REQUESTS_BY_STATE[ag.st]:
        return f"agent{i} in {ag.st.name} waits for {ag.req.name}"
    if (ag.ver >= 0) != (ag.st in _HOLDS_VERSION):
        return f"agent{i} in {ag.st.name} has copy version {ag.ver}"
    if (ag.data >= 0) != (ag.req is Request.DATA):
        return f"agent{i} in {ag.st.name} has fill data {ag.data} while waiting for {ag.req.name}"
    if not 0 <= ag.floor <= state.home:
        return f"agent{i} knows of v{ag.floor} with the home at v{state.home}"
    if any(not 0 <= message_version(m) <= state.home for m in ag.inbox):
        return f"agent{i} has a message {ag.inbox} beyond the home's v{state.home}"
    if ag.grant not in (NO_GRANT, GRANT_LIVE_INCARNATION, GRANT_DEAD_INCARNATION):
        return f"agent{i} has grant {ag.grant}"
    return None


def type_invariant(defn: ProtocolDefinition, state: State) -> str | None:
    """Every field is in its domain and each L1 state has the shape it implies."""
    if len(state.agents) != defn.agents:
        return f"{len(state.agents)} agents, expected {defn.agents}"
    # Each write makes at most one version, and the revocation of its grant at most one more.
    if not 0 <= state.home <= 2 * defn.writes or not 0 <= state.writes <= defn.writes:
        return f"home v{state.home} / writes {state.writes} beyond the bound {defn.writes}"
    if not (state.outbox == 0 or 1 <= state.outbox <= state.home):
        return f"outbox v{state.outbox} with the home at v{state.home}"
    for i, ag in enumerate(state.agents, start=1):
        problem = _agent_shape(i, ag, state)
        if problem:
            return problem
    if sum(ag.grant != NO_GRANT for ag in state.agents) > 1:
        return "the home records two owners"
    if sum(ag.l2_lease for ag in state.agents) > 1:
        return "L2 has two valid fill leases"
    return None


def table_handles_every_event(defn: ProtocolDefinition, state: State) -> str | None:
    """No step reached a (state, event) the table leaves undefined, doubles, or calls impossible."""
    if state.violation.startswith(_TABLE_DEFECTS):
        return state.violation
    return None


def versions_bounded(defn: ProtocolDefinition, state: State) -> str | None:
    """No copy is newer than the home, and no protocol step takes L2 back to an older
    version (an L2 rollback, the environment's fault, may: its copy is marked restored)."""
    for i, ag in enumerate(state.agents, start=1):
        if ag.ver > state.home or ag.data > state.home:
            return f"agent{i} holds v{max(ag.ver, ag.data)} but the home is at v{state.home}"
    if state.l2 > state.home:
        return f"L2 holds v{state.l2} but the home is at v{state.home}"
    if 0 <= state.l2 < state.l2_high and not state.l2_restored:
        return f"L2 went back to v{state.l2} after holding v{state.l2_high}"
    return None


def version_names_one_value(defn: ProtocolDefinition, state: State) -> str | None:
    """A version names exactly one value: every (version, value) pair held anywhere (an L1
    copy, fill data in flight, the L2 copy, the home when the newest data is not at an owner)
    is the pair the write that created the version made, across agents, incarnations and an
    owner's successive local writes."""
    names = state.names
    if len(names) != state.home + 1:
        return f"{len(names)} versions were named but the home is at v{state.home}"

    def wrong(version: int, value: int) -> bool:
        return version >= len(names) or names[version] != value

    if not state.dirty and wrong(state.home, state.hval):
        return (
            f"the home stores w{state.hval} as v{state.home}, but v{state.home} names "
            f"w{names[state.home]}"
        )
    if state.l2 >= 0 and wrong(state.l2, state.l2val):
        return f"L2 holds w{state.l2val} as v{state.l2}, which names another value"
    for i, ag in enumerate(state.agents, start=1):
        if ag.ver >= 0 and wrong(ag.ver, ag.val):
            return f"agent{i} holds w{ag.val} as v{ag.ver}, which names another value"
        if ag.data >= 0 and wrong(ag.data, ag.dval):
            return f"agent{i} is fetching w{ag.dval} as v{ag.data}, which names another value"
    return None


def no_lost_update(defn: ProtocolDefinition, state: State) -> str | None:
    """Successful compare-and-swaps (and grants) equal the home's version count."""
    if state.commits != state.home:
        return f"{state.commits} successful commits but the home is at v{state.home}"
    return None


def fill_respects_invalidations(defn: ProtocolDefinition, state: State) -> str | None:
    """No Shared copy is older than a version its agent knows of (an invalidation seen
    included): a fill never installs a version older than an invalidation already seen."""
    for i, ag in enumerate(state.agents, start=1):
        if ag.st is L1State.S and ag.ver < ag.told:
            return f"agent{i} caches v{ag.ver} after the invalidation for v{ag.told} arrived"
        if ag.st is L1State.S and ag.ver < ag.floor:
            return f"agent{i} caches v{ag.ver} although it knows of v{ag.floor}"
    return None


def _covered(ag: AgentState, version: int, state: State) -> bool:
    if ag.missed or ag.cut:
        return True  # a detected loss, or a link cut by a forgetting directory (bound to be)
    if any(m != RECALL for m in ag.inbox):
        return True  # any invalidation drops an S copy and turns a fill into IS_D_I
    return ag.registered and state.outbox > version


def stale_copies_covered(defn: ProtocolDefinition, state: State) -> str | None:
    """Every stale valid copy (L1, fill data in flight, L2) has an invalidation on its way.

    "On its way": any invalidation in the agent's inbox (it drops an S copy and turns a fill
    in flight into IS_D_I, whatever its version), the agent registered as holder
    while the outbox still holds a newer version, or a detected missed-messages condition
    (which blocks reads until RESYNC). For L2: the outbox holds a newer version (the relay
    will delete it).
    """
    for i, ag in enumerate(state.agents, start=1):
        if ag.restored:
            continue  # read from a copy an L2 rollback put back: only its floor protects it
        valid = ag.st in (L1State.S, L1State.E, L1State.M)
        if (
            valid
            and ag.ver < state.home
            and (ag.st is not L1State.S or not _covered(ag, ag.ver, state))
        ):
            return (
                f"agent{i} holds a valid {ag.st.name} copy of v{ag.ver} but the home is "
                f"at v{state.home} and no invalidation is on its way"
            )
        # fill data older than the agent's floor will be refused by DATA_STALE, not installed
        in_flight = ag.st is L1State.IS_D and ag.floor <= ag.data < state.home
        if in_flight and not _covered(ag, ag.data, state):
            return (
                f"agent{i} is about to install v{ag.data} but the home is at "
                f"v{state.home} and no invalidation is on its way"
            )
    if 0 <= state.l2 < state.home and state.outbox <= state.l2 and not state.l2_restored:
        return f"L2 holds v{state.l2}, the home v{state.home}, and no relay is pending"
    return None


def shared_copies_registered(defn: ProtocolDefinition, state: State) -> str | None:
    """Every Shared copy is listed in the directory (so the next write's relay reaches it),
    unless an invalidation is already on its way to it or its loss was detected."""
    for i, ag in enumerate(state.agents, start=1):
        being_invalidated = ag.missed or ag.cut or any(m != RECALL for m in ag.inbox)
        if ag.st is L1State.S and not ag.registered and not being_invalidated:
            return f"agent{i} holds a Shared copy the directory does not list"
    return None


def single_owner(defn: ProtocolDefinition, state: State) -> str | None:
    """At most one owner (E/M), it holds the home's live grant, and M data is not at home."""
    owners = [ag for ag in state.agents if ag.st in (L1State.E, L1State.M)]
    if len(owners) > 1:
        return f"{len(owners)} agents are owners (E/M)"
    for ag in owners:
        if ag.grant != GRANT_LIVE_INCARNATION:
            return f"an agent is {ag.st.name} without the home's grant"
        if ag.st is L1State.M and not state.dirty:
            return "an agent is Modified but the home believes it has the newest data"
        if ag.st is L1State.E and state.dirty:
            return "an agent is Exclusive (clean) but the home lacks its data"
    return None


def swmr(defn: ProtocolDefinition, state: State) -> str | None:
    """Strict: single writer or multiple readers: an owner excludes every Shared copy."""
    owners = sum(ag.st in (L1State.E, L1State.M) for ag in state.agents)
    # a Shared copy read from an L2 rollback's restored copy is the fault's, not a reader's
    sharers = sum(ag.st is L1State.S and not ag.restored for ag in state.agents)
    if owners and sharers:
        return f"an owner and {sharers} Shared copies coexist"
    return None


def data_value(defn: ProtocolDefinition, state: State) -> str | None:
    """Strict: no valid copy is older than the last completed (acknowledged) write."""
    for i, ag in enumerate(state.agents, start=1):
        if ag.st in (L1State.S, L1State.E, L1State.M) and ag.ver < state.done and not ag.restored:
            return f"agent{i} holds v{ag.ver} after the write of v{state.done} completed"
    return None


def no_acked_write_lost(defn: ProtocolDefinition, state: State) -> str | None:
    """An acknowledged write is at the home, held by its owner, or being written back.

    Losses the protocol allows and reports: a fenced write-back (REPORT_FENCED) and a crash of
    the owner (its process memory is gone; its lease lets the others proceed).
    """
    if state.violation.startswith("no_acked_write_lost"):
        return state.violation
    for i, ag in enumerate(state.agents, start=1):
        if ag.unsaved and ag.st not in _HOLDS_OWNED_DATA:
            return f"agent{i} acknowledged a write it no longer holds ({ag.st.name})"
    if state.dirty and not any(
        ag.grant != NO_GRANT
        and (ag.st in _HOLDS_OWNED_DATA or ag.grant == GRANT_DEAD_INCARNATION or not ag.lease)
        for ag in state.agents
    ):
        return f"the data of v{state.home} is at no owner and not at the home"
    return None


_OP_BY_STATE: Final[dict[L1State, int]] = {
    L1State.IS_D: OP_READ,
    L1State.IS_D_I: OP_READ,
    L1State.WT_H: OP_WRITE,
    L1State.WT_A: OP_WRITE,
    L1State.IM_H: OP_WRITE,
    L1State.IM_A: OP_WRITE,
}


def every_operation_answered(defn: ProtocolDefinition, state: State) -> str | None:
    """Every read returns a value and every write is acknowledged, exactly once, before the
    entry is stable again (no operation is silently dropped)."""
    if state.violation.startswith("every_operation_answered"):
        return state.violation
    for i, ag in enumerate(state.agents, start=1):
        expected = _OP_BY_STATE.get(ag.st, OP_NONE)
        if ag.op != expected:
            names = {OP_NONE: "none", OP_READ: "a read", OP_WRITE: "a write"}
            return f"agent{i} is {ag.st.name} with {names.get(ag.op, ag.op)} in progress"
    return None


def _ghost(prefix: str) -> Check:
    def check(defn: ProtocolDefinition, state: State) -> str | None:
        return state.violation if state.violation.startswith(prefix) else None

    check.__name__ = prefix
    check.__doc__ = f"The ghost check '{prefix}' recorded by the interpreter at a read."
    return check


INVARIANTS: Final[tuple[Invariant, ...]] = (
    Invariant(
        "table_handles_every_event",
        table_handles_every_event,
        BOTH_MODES,
        "no undefined, doubled or impossible step is reached",
    ),
    Invariant(
        "type_invariant",
        type_invariant,
        BOTH_MODES,
        "every field is in its domain; each state has its shape",
    ),
    Invariant(
        "version_names_one_value",
        version_names_one_value,
        BOTH_MODES,
        "a version names exactly one value (home, L2, copies, fills, owners' local writes)",
    ),
    Invariant(
        "data_value_reads",
        _ghost("data_value"),
        BOTH_MODES,
        "every read returns the value its version names: the value of the write that made it",
    ),
    Invariant(
        "versions_bounded",
        versions_bounded,
        BOTH_MODES,
        "no copy newer than the home; no protocol step takes L2 back (an L2 rollback may)",
    ),
    Invariant(
        "no_lost_update",
        no_lost_update,
        BOTH_MODES,
        "successful compare-and-swaps == the home's version count",
    ),
    Invariant(
        "fill_respects_invalidations",
        fill_respects_invalidations,
        BOTH_MODES,
        "no fill installs a version older than an invalidation seen",
    ),
    Invariant(
        "stale_copies_covered",
        stale_copies_covered,
        BOTH_MODES,
        "every stale valid copy has an invalidation on its way (or a detected loss; copies an "
        "L2 rollback restored excepted)",
    ),
    Invariant(
        "shared_copies_registered",
        shared_copies_registered,
        BOTH_MODES,
        "every Shared copy is a directory holder (or already being invalidated)",
    ),
    Invariant(
        "single_owner", single_owner, BOTH_MODES, "at most one owner, holding the home's grant"
    ),
    Invariant(
        "no_acked_write_lost",
        no_acked_write_lost,
        BOTH_MODES,
        "acknowledged writes (Modified data included) are never silently lost",
    ),
    Invariant(
        "every_operation_answered",
        every_operation_answered,
        BOTH_MODES,
        "every read returns and every write is acknowledged, once",
    ),
    Invariant(
        "reads_respect_invalidations",
        _ghost("reads_respect_invalidations"),
        BOTH_MODES,
        "no read returns a version older than an invalidation already delivered to its agent",
    ),
    Invariant(
        "read_result",
        _ghost("read_result"),
        BOTH_MODES,
        "no read returns a version older than a write completed before it began, unless an "
        "invalidation addressed to the reader is in flight",
    ),
    Invariant(
        "write_invalidates_copies",
        _ghost("write_invalidates_copies"),
        BOTH_MODES,
        "when a write returns, every other older copy is invalid or has an invalidation "
        "addressed to it in flight",
    ),
    Invariant(
        "monotonic_reads_and_read_your_writes",
        _ghost("monotonic_reads_and_read_your_writes"),
        BOTH_MODES,
        "each agent's reads never return a version older than one it read or wrote",
    ),
    Invariant("swmr", swmr, _STRICT_ONLY, "strict: single writer or multiple readers at all times"),
    Invariant(
        "data_value",
        data_value,
        _STRICT_ONLY,
        "strict: no valid copy older than the last completed write",
    ),
    Invariant(
        "linearizable_reads",
        _ghost("linearizable_reads"),
        _STRICT_ONLY,
        "strict: reads never return a version older than a completed write or read",
    ),
)


_BY_MODE: Final[dict[Mode, tuple[Invariant, ...]]] = {
    mode: tuple(inv for inv in INVARIANTS if mode in inv.modes) for mode in Mode
}


def invariants_for(mode: Mode) -> tuple[Invariant, ...]:
    """The invariants that apply in `mode`, in checking order."""
    return _BY_MODE[mode]


def first_violation(defn: ProtocolDefinition, state: State) -> tuple[str, str] | None:
    """(invariant name, explanation) of the first invariant `state` breaks, or None."""
    for inv in _BY_MODE[defn.mode]:
        text = inv.check(defn, state)
        if text is not None:
            return inv.name, text
    return None


def is_quiescent(defn: ProtocolDefinition, state: State) -> bool:
    """Nothing in flight or waiting, no loss undetected or unresolved, and no stale copy."""
    if state.violation or state.outbox:
        return False
    if 0 <= state.l2 != state.home and not state.l2_restored:
        return False
    for ag in state.agents:
        if ag.st not in STABLE_STATES or ag.req is not Request.NONE:
            return False
        if ag.inbox or ag.missed or ag.cut or ag.ack_owed or ag.grant == GRANT_DEAD_INCARNATION:
            return False
        if ag.grant == GRANT_LIVE_INCARNATION and not ag.lease:
            return False
        if ag.ver >= 0 and ag.ver != state.home and not ag.restored:
            return False
    return first_violation(defn, state) is None
