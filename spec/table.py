"""The coherence protocol as ONE table of data: every transition of every actor is a row.

A `Rule` says: in `source` (an agent's L1 state, or a shared actor's row key), when `event`
happens and `guard` holds, go to `target` and perform `effects` in order. `Refusal` lists every
(state, event, guard outcome) that is deliberately not a row, with its reason:

- `STALLED`: the event waits (it is not taken; the message or request stays pending);
- `NOT_APPLICABLE`: the event does not exist there (a user operation while another is in
  flight is queued by the core; a flush with nothing dirty is a no-op);
- `IMPOSSIBLE`: the protocol guarantees it never happens; the checkers report reaching it.

`lookup()` is what the production core calls. Nothing here does I/O; standard library only.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum, unique
from typing import Final

from .vocabulary import (
    ActorState,
    Effect,
    Event,
    Guard,
    L1State,
    Mode,
)

__all__ = [
    "BOTH_MODES",
    "GUARD_PARTITIONS",
    "REFUSALS",
    "TABLE",
    "Refusal",
    "RefusalKind",
    "RowKey",
    "Rule",
    "lookup",
    "rows_for",
]

type RowKey = L1State | ActorState

BOTH_MODES: Final[frozenset[Mode]] = frozenset({Mode.COHERENT, Mode.STRICT})
_COHERENT: Final[frozenset[Mode]] = frozenset({Mode.COHERENT})
_STRICT: Final[frozenset[Mode]] = frozenset({Mode.STRICT})


@dataclass(frozen=True, slots=True)
class Rule:
    """One transition: `source --event [guard]--> target / effects`, in the given modes."""

    source: RowKey
    event: Event
    guard: Guard
    target: RowKey
    effects: tuple[Effect, ...]
    modes: frozenset[Mode] = BOTH_MODES
    note: str = ""


@unique
class RefusalKind(Enum):
    """Why a (state, event, guard) is not a row."""

    STALLED = "stalled"
    NOT_APPLICABLE = "not_applicable"
    IMPOSSIBLE = "impossible"


@dataclass(frozen=True, slots=True)
class Refusal:
    """A (state, event, guard outcome) that is deliberately not a row; `guard=None`: any."""

    source: RowKey
    event: Event
    guard: Guard | None
    kind: RefusalKind
    reason: str
    modes: frozenset[Mode] = BOTH_MODES


# Guard outcomes form partitions: for a given (source, event, mode) the rows and refusals must
# use exactly the guards of ONE partition (each partition's guards are mutually exclusive and
# exhaustive by their meaning in model.py). The unit tests and Z3 check this.
GUARD_PARTITIONS: Final[tuple[frozenset[Guard], ...]] = (
    frozenset({Guard.ALWAYS}),
    frozenset({Guard.CONN_OK, Guard.CONN_MISSED}),
    frozenset({Guard.INV_NEWER, Guard.INV_NOT_NEWER}),
    frozenset({Guard.VALUE_AT_HOME, Guard.VALUE_AT_OWNER}),
    frozenset({Guard.FETCH_L2_HIT, Guard.FETCH_OWNED, Guard.FETCH_FREE}),
    frozenset({Guard.FETCH_L2_HIT, Guard.FETCH_OWNED, Guard.FETCH_SETTLED, Guard.FETCH_UNSETTLED}),
    frozenset({Guard.DATA_FRESH, Guard.DATA_STALE, Guard.CONN_MISSED}),
    frozenset({Guard.DATA_NOT_OLDER, Guard.DATA_OLDER}),
    frozenset({Guard.OWNED_BY_OTHER, Guard.NOT_OWNED_BY_OTHER}),
    frozenset({Guard.PUBLISHED, Guard.UNPUBLISHED}),
    frozenset({Guard.ACKNOWLEDGED, Guard.UNACKNOWLEDGED}),
    frozenset({Guard.GRANT_HELD, Guard.GRANT_LOST}),
    frozenset({Guard.OWNER_LEASE_LAPSED, Guard.OWNER_LEASE_LIVE}),
    frozenset({Guard.HOLDER_LEASE_LAPSED, Guard.HOLDER_LEASE_LIVE}),
)

I, S, E, M = L1State.I, L1State.S, L1State.E, L1State.M  # noqa: E741  # the MESI names
IS_D, IS_D_I = L1State.IS_D, L1State.IS_D_I
WT_H, WT_A, IM_H, IM_A = L1State.WT_H, L1State.WT_A, L1State.IM_H, L1State.IM_A
MI_A, ME_A, MS_A = L1State.MI_A, L1State.ME_A, L1State.MS_A
TRANSIENT: Final[tuple[L1State, ...]] = (IS_D, IS_D_I, WT_H, WT_A, IM_H, IM_A, MI_A, ME_A, MS_A)
HOME, REDIS, BUS = ActorState.HOME, ActorState.REDIS, ActorState.BUS
A = Guard.ALWAYS
X = Effect

_USER_ROWS: Final[tuple[Rule, ...]] = (
    # READ: reads never invalidate anybody; a miss starts a fill.
    Rule(
        I,
        Event.READ,
        A,
        IS_D,
        (X.REQUEST_FILL,),
        note="a miss starts a fill (never an invalidation)",
    ),
    Rule(S, Event.READ, Guard.CONN_OK, S, (X.RETURN_VALUE,), note="hit on a registered clean copy"),
    Rule(E, Event.READ, A, E, (X.RETURN_VALUE,), note="the owner's copy is protected by its lease"),
    Rule(M, Event.READ, A, M, (X.RETURN_VALUE,), note="the owner reads its own write"),
    # WRITE_L1: tier 0 takes ownership; the value lives in the L1 until written back.
    Rule(
        I,
        Event.WRITE_L1,
        A,
        IM_H,
        (X.REQUEST_OWNERSHIP,),
        note="tier-0 write: ask the home for ownership of the next version",
    ),
    Rule(
        S,
        Event.WRITE_L1,
        A,
        IM_H,
        (X.DIRECTORY_REMOVE_HOLDER, X.DROP_COPY, X.REQUEST_OWNERSHIP),
        note="give up the shared copy, then ask for ownership",
    ),
    # An owner's new local write names a new version: it reserves the next one at the home
    # under its grant (a version names exactly one value; the previous value's version must
    # not be reused for this one).
    Rule(
        E,
        Event.WRITE_L1,
        A,
        IM_H,
        (X.DROP_COPY, X.REQUEST_OWNERSHIP),
        note="the owner reserves a new version for its write (the flushed one names the old value)",
    ),
    Rule(
        M,
        Event.WRITE_L1,
        A,
        IM_H,
        (X.DROP_COPY, X.REQUEST_OWNERSHIP),
        note="the new write supersedes the unsaved one and takes a new version",
    ),
    # WRITE_THROUGH: shared tiers are written through; home first, then L2 delete, then holders.
    Rule(
        I,
        Event.WRITE_THROUGH,
        A,
        WT_H,
        (X.REQUEST_COMMIT,),
        note="write-through: compare-and-swap at the home first",
    ),
    Rule(
        S,
        Event.WRITE_THROUGH,
        A,
        WT_H,
        (X.DIRECTORY_REMOVE_HOLDER, X.DROP_COPY, X.REQUEST_COMMIT),
        note="the writer's own old copy goes first",
    ),
    Rule(
        E,
        Event.WRITE_THROUGH,
        A,
        WT_H,
        (X.DROP_COPY, X.REQUEST_COMMIT),
        note="the owner writes through; the commit releases its grant",
    ),
    Rule(
        M,
        Event.WRITE_THROUGH,
        A,
        WT_H,
        (X.DROP_COPY, X.REQUEST_COMMIT),
        note="the newer write-through supersedes the owner's own unsaved data",
    ),
    # EVICT (capacity, or close()): Modified data is written back, never dropped.
    Rule(
        S,
        Event.EVICT,
        A,
        I,
        (X.DIRECTORY_REMOVE_HOLDER, X.DROP_COPY),
        note="a clean copy is dropped and deregistered",
    ),
    Rule(
        E,
        Event.EVICT,
        A,
        MI_A,
        (X.REQUEST_WRITE_BACK,),
        note="the owner releases its grant (clean data)",
    ),
    Rule(
        M,
        Event.EVICT,
        A,
        MI_A,
        (X.REQUEST_WRITE_BACK,),
        note="Modified data is written back on evict and on close",
    ),
    # FLUSH: write back, keep ownership.
    Rule(
        M,
        Event.FLUSH,
        A,
        ME_A,
        (X.REQUEST_FLUSH,),
        note="flush writes the data back and keeps ownership",
    ),
)


def _inv_plain() -> list[tuple[L1State, Guard, L1State, tuple[Effect, ...], str]]:
    """DELIVER_INVALIDATE's (source, guard, target, effects, note) per state, before strict
    mode's acknowledgement; DELIVER_UPDATE reuses them for every state but S."""
    return [
        (I, A, I, (X.NOTE_INVALIDATION,), "nothing cached; remember the version for later fills"),
        (
            S,
            A,
            I,
            (X.NOTE_INVALIDATION, X.DROP_COPY),
            "the relay removed us from the holders: drop the copy",
        ),
        (
            E,
            Guard.INV_NOT_NEWER,
            E,
            (X.NOTE_INVALIDATION,),
            "a late invalidation from before we owned the key",
        ),
        (
            M,
            Guard.INV_NOT_NEWER,
            M,
            (X.NOTE_INVALIDATION,),
            "a late invalidation from before we owned the key",
        ),
        (
            IS_D,
            A,
            IS_D_I,
            (X.NOTE_INVALIDATION,),
            "the stale-fill fix: the fill in flight may carry the old version",
        ),
        (IS_D_I, A, IS_D_I, (X.NOTE_INVALIDATION,), "already invalidated"),
        (WT_H, A, WT_H, (X.NOTE_INVALIDATION,), "no copy held while writing"),
        (WT_A, A, WT_A, (X.NOTE_INVALIDATION,), "no copy held while writing"),
        (IM_H, A, IM_H, (X.NOTE_INVALIDATION,), "no copy held while acquiring"),
        (IM_A, A, IM_A, (X.NOTE_INVALIDATION,), "a late invalidation; our grant is newer"),
        (
            MI_A,
            A,
            MI_A,
            (X.NOTE_INVALIDATION,),
            "the write-back will learn from the home whether it was fenced",
        ),
        (ME_A, A, ME_A, (X.NOTE_INVALIDATION,), "a late invalidation; our grant is live"),
        (
            MS_A,
            A,
            MI_A,
            (X.NOTE_INVALIDATION,),
            "the copy we meant to keep lost its registration: keep nothing",
        ),
    ]


def _acknowledged(
    event: Event, plain: list[tuple[L1State, Guard, L1State, tuple[Effect, ...], str]]
) -> tuple[Rule, ...]:
    """One coherent row per entry of `plain`, and its strict twin that also acknowledges."""
    rows: list[Rule] = []
    for source, guard, target, effects, note in plain:
        rows.append(Rule(source, event, guard, target, effects, _COHERENT, note))
        rows.append(
            Rule(
                source,
                event,
                guard,
                target,
                (*effects, X.SEND_ACK),
                _STRICT,
                note + "; acknowledge",
            )
        )
    return tuple(rows)


def _inv_rows() -> tuple[Rule, ...]:
    """DELIVER_INVALIDATE in every state; strict mode acknowledges every invalidation."""
    return _acknowledged(Event.DELIVER_INVALIDATE, _inv_plain())


def _update_rows() -> tuple[Rule, ...]:
    """Write-update (a namespace's choice): the relay of a write-through whose value it holds
    publishes the version and the value to the holders, who stay registered; a Shared holder
    moves to the newer version instead of missing. In every other state an update is an
    invalidation (the same rows: the agent has no copy to update, or one in flight that the
    update may be newer than). Coherent mode only: in strict mode a holder that moved to the
    new version could serve it before the write settles while another agent's fill still
    returns the old one (the explorer finds that trace in 12 steps), so strict mode always
    invalidates. The relay also stores the value in L2 (L2_SET_IF_NEWER, after L2_DELETE has
    voided the fill leases), so the next miss of the key, the writer's own refetch included,
    is an L2 hit rather than a home read. Appended after every other row, so the rows before
    keep their numbers."""
    plain = [
        (
            S,
            Guard.INV_NEWER,
            S,
            (X.NOTE_INVALIDATION, X.INSTALL_UPDATE),
            "write-update: the holder moves to the newer version and stays registered",
        ),
        (S, Guard.INV_NOT_NEWER, S, (X.NOTE_INVALIDATION,), "a late update: the copy is newer"),
        *(row for row in _inv_plain() if row[0] is not S),
    ]
    deliveries = tuple(
        Rule(source, Event.DELIVER_UPDATE, guard, target, effects, _COHERENT, note)
        for source, guard, target, effects, note in plain
    )
    relay = Rule(
        HOME,
        Event.OUTBOX_RELAY_UPDATE,
        Guard.VALUE_AT_HOME,
        HOME,
        (X.L2_DELETE, X.L2_SET_IF_NEWER, X.PUBLISH_UPDATES, X.HOME_CLEAR_OUTBOX),
        _COHERENT,
        note=(
            "write-update: delete L2 (voiding fill leases), store the value in L2 unless a "
            "newer version was relayed, send the holders the value"
        ),
    )
    return (*deliveries, relay)


def _store_rows() -> tuple[Rule, ...]:
    """The invalidating policy's own relay with the value (coherent mode): a writer relaying the
    write-through it committed holds the value, so its relay stores it in L2 (after L2_DELETE
    has voided the fill leases) before invalidating the holders, whose next miss, like the
    writer's own next read, is then an L2 hit rather than a home read. Any other relay (a
    sweeper's, an ownership grant's) holds no value and uses OUTBOX_RELAY. Coherent mode only,
    for the reason write-update is: in strict mode a reader could fill the new version from L2
    while a holder that has not acknowledged yet still serves the old one. Appended after every
    other row, so the rows before keep their numbers."""
    return (
        Rule(
            HOME,
            Event.OUTBOX_RELAY_STORE,
            Guard.VALUE_AT_HOME,
            HOME,
            (X.L2_DELETE, X.L2_SET_IF_NEWER, X.PUBLISH_INVALIDATIONS, X.HOME_CLEAR_OUTBOX),
            _COHERENT,
            note=(
                "the writer's own relay: delete L2 (voiding fill leases), store the value in L2 "
                "unless a newer version was relayed, invalidate the holders"
            ),
        ),
    )


def _recall_rows() -> tuple[Rule, ...]:
    owners = (
        Rule(
            M,
            Event.DELIVER_RECALL,
            A,
            MS_A,
            (X.DIRECTORY_ADD_HOLDER, X.REQUEST_WRITE_BACK),
            note="a reader recalls the data: register as holder, write back, keep a Shared copy",
        ),
        Rule(
            E,
            Event.DELIVER_RECALL,
            A,
            MS_A,
            (X.DIRECTORY_ADD_HOLDER, X.REQUEST_WRITE_BACK),
            note="reads never invalidate: the clean owner keeps a Shared copy",
        ),
    )
    stale = tuple(
        Rule(
            s,
            Event.DELIVER_RECALL,
            A,
            s,
            (),
            note="not (or no longer) the owner: ignore the recall",
        )
        for s in (I, S, IS_D, IS_D_I, WT_H, IM_H, MI_A, MS_A)
    )
    return owners + stale


def _server_rows() -> tuple[Rule, ...]:
    rows: list[Rule] = []
    for s in (IS_D, IS_D_I):
        rows += [
            Rule(
                s,
                Event.FILL_FETCH,
                Guard.FETCH_L2_HIT,
                s,
                (X.DIRECTORY_ADD_HOLDER, X.L2_READ),
                note="register as holder BEFORE reading, so a later write's relay finds us",
            ),
            Rule(
                s,
                Event.FILL_FETCH,
                Guard.FETCH_OWNED,
                s,
                (X.SEND_RECALL, X.AWAIT_OWNER),
                note="an owner holds the data: recall it and wait",
            ),
            Rule(
                s,
                Event.FILL_FETCH,
                Guard.FETCH_FREE,
                s,
                (X.DIRECTORY_ADD_HOLDER, X.L2_TAKE_LEASE, X.HOME_READ),
                _COHERENT,
                note="L2 miss: take a fill lease, then read the home",
            ),
            Rule(
                s,
                Event.FILL_FETCH,
                Guard.FETCH_SETTLED,
                s,
                (X.DIRECTORY_ADD_HOLDER, X.L2_TAKE_LEASE, X.HOME_READ),
                _STRICT,
                note="L2 miss with no write settling: take a fill lease, then read the home",
            ),
        ]
    rows += [
        Rule(
            IS_D,
            Event.FILL_DATA,
            Guard.DATA_FRESH,
            S,
            (X.L2_LEASED_FILL, X.INSTALL_COPY, X.RETURN_VALUE),
            note="fill L2 only with a valid lease; cache the copy",
        ),
        Rule(
            IS_D,
            Event.FILL_DATA,
            Guard.DATA_STALE,
            IS_D,
            (X.L2_ABANDON_LEASE, X.REFETCH),
            note=(
                "never install a version older than one this agent knows of: fetch again "
                "(through FILL_FETCH, which asks whether an owner holds newer data)"
            ),
        ),
        Rule(
            IS_D_I,
            Event.FILL_DATA,
            Guard.DATA_NOT_OLDER,
            I,
            (X.L2_ABANDON_LEASE, X.DIRECTORY_REMOVE_HOLDER, X.RETURN_VALUE_UNCACHED),
            _COHERENT,
            note="the stale-fill fix: return the data once, do not cache it",
        ),
        Rule(
            IS_D_I,
            Event.FILL_DATA,
            Guard.DATA_OLDER,
            IS_D_I,
            (X.L2_ABANDON_LEASE, X.REFETCH),
            _COHERENT,
            note="older than a version this agent knows of: fetch again (owner check included)",
        ),
        Rule(
            IS_D_I,
            Event.FILL_DATA,
            A,
            IS_D,
            (X.L2_ABANDON_LEASE, X.REFETCH),
            _STRICT,
            note="strict: the data may predate a write in progress; fetch again",
        ),
        Rule(
            WT_H,
            Event.HOME_COMMIT,
            Guard.OWNED_BY_OTHER,
            WT_H,
            (X.SEND_RECALL, X.AWAIT_OWNER),
            note="an owner holds unsaved data: recall it first",
        ),
        Rule(
            WT_H,
            Event.HOME_COMMIT,
            Guard.NOT_OWNED_BY_OTHER,
            WT_A,
            (X.HOME_COMMIT_VERSION, X.AWAIT_INVALIDATIONS),
            note="the home commits first (outbox in the same transaction)",
        ),
        Rule(
            WT_H,
            Event.HOME_CONFLICT,
            Guard.GRANT_LOST,
            I,
            (X.REPORT_CONFLICT,),
            note="a compare-and-swap whose expected version is stale: nothing committed",
        ),
        Rule(
            IM_H,
            Event.HOME_ACQUIRE,
            Guard.OWNED_BY_OTHER,
            IM_H,
            (X.SEND_RECALL, X.AWAIT_OWNER),
            note="another owner: recall and wait",
        ),
        Rule(
            IM_H,
            Event.HOME_ACQUIRE,
            Guard.NOT_OWNED_BY_OTHER,
            IM_A,
            (X.HOME_RESERVE_AND_GRANT, X.START_OWNER_LEASE, X.AWAIT_INVALIDATIONS),
            note="reserve the next version for this owner; the lease starts with the grant",
        ),
        Rule(
            WT_A,
            Event.WRITE_SETTLED,
            Guard.PUBLISHED,
            I,
            (X.ACK_WRITE, X.DROP_COPY),
            _COHERENT,
            note="coherent: returns once L2 is deleted and invalidations published",
        ),
        Rule(
            WT_A,
            Event.WRITE_SETTLED,
            Guard.ACKNOWLEDGED,
            I,
            (X.ACK_WRITE, X.DROP_COPY),
            _STRICT,
            note="strict: returns once no other valid copy of the old version remains",
        ),
        Rule(
            IM_A,
            Event.WRITE_SETTLED,
            Guard.PUBLISHED,
            M,
            (X.ACK_WRITE,),
            _COHERENT,
            note="ownership taken: Modified",
        ),
        Rule(
            IM_A,
            Event.WRITE_SETTLED,
            Guard.ACKNOWLEDGED,
            M,
            (X.ACK_WRITE,),
            _STRICT,
            note="strict: Modified only after every holder acknowledged",
        ),
        Rule(
            MI_A,
            Event.HOME_WRITE_BACK,
            Guard.GRANT_HELD,
            I,
            (X.HOME_STORE_AND_RELEASE, X.DROP_COPY),
            note="the data reaches the home; ownership released",
        ),
        Rule(
            MS_A,
            Event.HOME_WRITE_BACK,
            Guard.GRANT_HELD,
            S,
            (X.HOME_STORE_AND_RELEASE,),
            note="written back on recall; the copy stays as a registered Shared copy",
        ),
        Rule(
            MI_A,
            Event.HOME_WRITE_BACK,
            Guard.GRANT_LOST,
            I,
            (X.REPORT_FENCED,),
            note="the late write-back is fenced: rejected and reported, never applied",
        ),
        Rule(
            ME_A,
            Event.HOME_FLUSH,
            Guard.GRANT_HELD,
            E,
            (X.HOME_STORE_KEEP_GRANT,),
            note="flushed: clean owner",
        ),
        # Defensive rows, unreachable in the model (a recalled or flushing owner's lease is
        # live there, and the home revokes only lapsed grants), reachable in production when the
        # owner's process stalls longer than its lease between deciding and the home's answer
        # (a SIGSTOP, a swap storm): the write is fenced and reported, never applied.
        Rule(
            MS_A,
            Event.HOME_WRITE_BACK,
            Guard.GRANT_LOST,
            I,
            (X.REPORT_FENCED,),
            note=(
                "a recalled owner that stalled past its lease: fenced, keeps no copy (its "
                "registration lapses: at most one needless invalidation)"
            ),
        ),
        Rule(
            ME_A,
            Event.HOME_FLUSH,
            Guard.GRANT_LOST,
            I,
            (X.REPORT_FENCED,),
            note="a flushing owner that stalled past its lease: fenced",
        ),
    ]
    retry = (
        (IS_D, X.REQUEST_FILL),
        (IS_D_I, X.REQUEST_FILL),
        (WT_H, X.REQUEST_COMMIT),
        (IM_H, X.REQUEST_OWNERSHIP),
    )
    rows += [
        Rule(s, Event.RETRY, A, s, (eff,), note="back off, then ask again") for s, eff in retry
    ]
    return tuple(rows)


def _resync_rows() -> tuple[Rule, ...]:
    """RESYNC: after a detected loss, nothing cached is usable until revalidated."""
    plain: list[tuple[L1State, L1State, tuple[Effect, ...], str]] = [
        (I, I, (X.RESYNC_CONNECTION,), "nothing cached"),
        (
            S,
            I,
            (X.DROP_COPY, X.RESYNC_CONNECTION),
            "a missed invalidation may concern this copy: drop it",
        ),
        (E, E, (X.RESYNC_CONNECTION,), "owned copies are protected by the lease, not by messages"),
        (M, M, (X.RESYNC_CONNECTION,), "owned copies are protected by the lease, not by messages"),
        (
            IS_D,
            IS_D_I,
            (X.RESYNC_CONNECTION,),
            "the fill in flight may have missed its invalidation",
        ),
        (
            MS_A,
            MI_A,
            (X.RESYNC_CONNECTION,),
            "a missed invalidation may concern the copy to keep",
        ),
    ] + [
        (s, s, (X.RESYNC_CONNECTION,), "no copy at stake")
        for s in (IS_D_I, WT_H, WT_A, IM_H, IM_A, MI_A, ME_A)
    ]
    rows: list[Rule] = []
    for source, target, effects, note in plain:
        rows.append(Rule(source, Event.RESYNC, A, target, effects, _COHERENT, note))
        rows.append(
            Rule(
                source,
                Event.RESYNC,
                A,
                target,
                (*effects, X.SEND_ACK),
                _STRICT,
                note + "; acknowledge",
            )
        )
    return tuple(rows)


_TIME_AND_FAULT_ROWS: Final[tuple[Rule, ...]] = (
    Rule(
        M,
        Event.LEASE_LAPSE,
        A,
        MI_A,
        (X.LEASE_LAPSED, X.REQUEST_WRITE_BACK),
        note="an owner whose lease ran out stops serving and writes back (maybe fenced)",
    ),
    Rule(
        E,
        Event.LEASE_LAPSE,
        A,
        I,
        (X.LEASE_LAPSED, X.DROP_COPY),
        note="a clean owner just lets go; the home expires the grant",
    ),
    Rule(
        S,
        Event.LEASE_LAPSE,
        A,
        I,
        (X.LEASE_LAPSED, X.DROP_COPY),
        _STRICT,
        note="strict: a copy is valid only under a live read lease",
    ),
    Rule(
        IS_D,
        Event.LEASE_LAPSE,
        A,
        IS_D_I,
        (X.LEASE_LAPSED,),
        _STRICT,
        note="strict: a fill whose read lease lapsed must not install its data",
    ),
    *(
        Rule(
            s,
            Event.CRASH,
            A,
            I,
            (X.LOSE_VOLATILE_STATE,),
            note="the process restarts empty; directory and home keep their records",
        )
        for s in L1State
    ),
    Rule(
        HOME,
        Event.OUTBOX_RELAY,
        A,
        HOME,
        (X.L2_DELETE, X.PUBLISH_INVALIDATIONS, X.HOME_CLEAR_OUTBOX),
        _COHERENT,
        note="writers delete L2 (voiding fill leases) and invalidate the holders",
    ),
    Rule(
        HOME,
        Event.OUTBOX_RELAY,
        A,
        HOME,
        (X.L2_DELETE, X.PUBLISH_INVALIDATIONS_AWAIT_ACKS, X.HOME_CLEAR_OUTBOX),
        _STRICT,
        note="strict: as coherent, and every holder owes an ack",
    ),
    Rule(
        HOME,
        Event.HOME_EXPIRE_OWNER,
        Guard.OWNER_LEASE_LAPSED,
        HOME,
        (X.HOME_REVOKE_GRANT,),
        note="a crashed or silent owner loses ownership so others make progress",
    ),
    Rule(
        REDIS,
        Event.HOLDER_EXPIRE,
        Guard.HOLDER_LEASE_LAPSED,
        REDIS,
        (X.DIRECTORY_EXPIRE_HOLDER,),
        note="strict: an unresponsive holder's lease replaces its ack",
    ),
    Rule(REDIS, Event.L2_EVICT, A, REDIS, (X.L2_EVICT_COPY,), note="Redis may evict at any time"),
    Rule(
        BUS,
        Event.DROP_MESSAGE,
        A,
        BUS,
        (X.DISCARD_MESSAGE, X.MARK_MISSED),
        note="pub/sub is at most once; the listener detects the gap",
    ),
    Rule(
        BUS,
        Event.DISCONNECT,
        A,
        BUS,
        (X.DISCARD_ALL_MESSAGES, X.MARK_MISSED),
        note="a dropped connection loses everything in flight; detected on reconnect",
    ),
)

TABLE: Final[tuple[Rule, ...]] = (
    _USER_ROWS
    + _inv_rows()
    + _recall_rows()
    + _server_rows()
    + _resync_rows()
    + _TIME_AND_FAULT_ROWS
    + _update_rows()
    + _store_rows()
)

_ONE_AT_A_TIME = "one operation at a time per agent and key: the core queues the caller"
_USER_EVENTS = (Event.READ, Event.WRITE_L1, Event.WRITE_THROUGH, Event.EVICT, Event.FLUSH)

REFUSALS: Final[tuple[Refusal, ...]] = (
    *(
        Refusal(s, ev, None, RefusalKind.NOT_APPLICABLE, _ONE_AT_A_TIME)
        for s in TRANSIENT
        for ev in _USER_EVENTS
    ),
    Refusal(
        S,
        Event.READ,
        Guard.CONN_MISSED,
        RefusalKind.STALLED,
        "a detected loss blocks reads until RESYNC",
    ),
    Refusal(I, Event.EVICT, None, RefusalKind.NOT_APPLICABLE, "nothing cached to evict"),
    *(
        Refusal(s, Event.FLUSH, None, RefusalKind.NOT_APPLICABLE, "nothing dirty: flush is a no-op")
        for s in (I, S, E)
    ),
    Refusal(
        E,
        Event.DELIVER_INVALIDATE,
        Guard.INV_NEWER,
        RefusalKind.IMPOSSIBLE,
        "no version is committed while a live grant is held; a lapsed owner has left E",
    ),
    Refusal(
        M,
        Event.DELIVER_INVALIDATE,
        Guard.INV_NEWER,
        RefusalKind.IMPOSSIBLE,
        "no version is committed while a live grant is held; a lapsed owner has left M",
    ),
    Refusal(
        WT_A,
        Event.DELIVER_RECALL,
        None,
        RefusalKind.IMPOSSIBLE,
        "a write-through commit released the grant and voided its recalls",
    ),
    Refusal(
        IM_A,
        Event.DELIVER_RECALL,
        None,
        RefusalKind.STALLED,
        "the recall waits until the write settles and the owner is in M",
    ),
    Refusal(
        ME_A,
        Event.DELIVER_RECALL,
        None,
        RefusalKind.STALLED,
        "the recall waits until the flush is answered",
    ),
    Refusal(
        WT_H,
        Event.HOME_CONFLICT,
        Guard.GRANT_HELD,
        RefusalKind.NOT_APPLICABLE,
        "an owner compares versions itself (its copy is the only one that can change): the home "
        "never refuses its commit",
    ),
    *(
        Refusal(s, ev, None, RefusalKind.IMPOSSIBLE, "no such request is outstanding in this state")
        for s in L1State
        for ev in (Event.FILL_FETCH, Event.FILL_DATA, Event.RETRY)
        if s not in (IS_D, IS_D_I) and not (ev is Event.RETRY and s in (WT_H, IM_H))
    ),
    *(
        Refusal(s, ev, None, RefusalKind.IMPOSSIBLE, "no such request is outstanding in this state")
        for s, ev in (
            *((s, Event.HOME_COMMIT) for s in L1State if s is not WT_H),
            *((s, Event.HOME_CONFLICT) for s in L1State if s is not WT_H),
            *((s, Event.HOME_ACQUIRE) for s in L1State if s is not IM_H),
            *((s, Event.WRITE_SETTLED) for s in L1State if s not in (WT_A, IM_A)),
            *((s, Event.HOME_WRITE_BACK) for s in L1State if s not in (MI_A, MS_A)),
            *((s, Event.HOME_FLUSH) for s in L1State if s is not ME_A),
        )
    ),
    *(
        Refusal(
            s,
            Event.FILL_FETCH,
            Guard.FETCH_UNSETTLED,
            RefusalKind.STALLED,
            "strict: fills wait until the write settles",
            _STRICT,
        )
        for s in (IS_D, IS_D_I)
    ),
    Refusal(
        IS_D,
        Event.FILL_DATA,
        Guard.CONN_MISSED,
        RefusalKind.STALLED,
        "the data waits until RESYNC decides whether it is still usable",
    ),
    Refusal(
        WT_A,
        Event.WRITE_SETTLED,
        Guard.UNPUBLISHED,
        RefusalKind.STALLED,
        "the write returns after its invalidations are published",
        _COHERENT,
    ),
    Refusal(
        IM_A,
        Event.WRITE_SETTLED,
        Guard.UNPUBLISHED,
        RefusalKind.STALLED,
        "the write returns after its invalidations are published",
        _COHERENT,
    ),
    Refusal(
        WT_A,
        Event.WRITE_SETTLED,
        Guard.UNACKNOWLEDGED,
        RefusalKind.STALLED,
        "the write returns after every holder acknowledged",
        _STRICT,
    ),
    Refusal(
        IM_A,
        Event.WRITE_SETTLED,
        Guard.UNACKNOWLEDGED,
        RefusalKind.STALLED,
        "the write returns after every holder acknowledged",
        _STRICT,
    ),
    Refusal(
        S,
        Event.LEASE_LAPSE,
        None,
        RefusalKind.NOT_APPLICABLE,
        "coherent copies carry no read lease",
        _COHERENT,
    ),
    Refusal(
        IS_D,
        Event.LEASE_LAPSE,
        None,
        RefusalKind.NOT_APPLICABLE,
        "coherent fills carry no read lease",
        _COHERENT,
    ),
    *(
        Refusal(
            s,
            Event.LEASE_LAPSE,
            None,
            RefusalKind.NOT_APPLICABLE,
            "no lease is held (or it is already being acted on)",
        )
        for s in (I, *TRANSIENT)
        if s is not IS_D
    ),
    Refusal(
        HOME,
        Event.HOME_EXPIRE_OWNER,
        Guard.OWNER_LEASE_LIVE,
        RefusalKind.STALLED,
        "a live owner keeps its grant",
    ),
    Refusal(
        REDIS,
        Event.HOLDER_EXPIRE,
        Guard.HOLDER_LEASE_LIVE,
        RefusalKind.STALLED,
        "a live holder's ack is awaited",
    ),
    # write-update (appended last, so the refusals before keep their numbers)
    *(
        Refusal(
            s,
            Event.DELIVER_UPDATE,
            Guard.INV_NEWER,
            RefusalKind.IMPOSSIBLE,
            "no version is committed while a live grant is held; a lapsed owner has left " + s.name,
            _COHERENT,
        )
        for s in (E, M)
    ),
    *(
        Refusal(
            s,
            Event.DELIVER_UPDATE,
            None,
            RefusalKind.IMPOSSIBLE,
            "strict mode never publishes updates (OUTBOX_RELAY_UPDATE is not applicable there)",
            _STRICT,
        )
        for s in L1State
    ),
    Refusal(
        HOME,
        Event.OUTBOX_RELAY_UPDATE,
        Guard.VALUE_AT_OWNER,
        RefusalKind.NOT_APPLICABLE,
        "an ownership grant's value is at the owner: the relay invalidates (OUTBOX_RELAY)",
        _COHERENT,
    ),
    Refusal(
        HOME,
        Event.OUTBOX_RELAY_UPDATE,
        None,
        RefusalKind.NOT_APPLICABLE,
        "strict mode always invalidates: an updated holder could serve the new version before "
        "the write settles, while another agent's fill still returns the old one",
        _STRICT,
    ),
    # the invalidating policy's relay with the value (appended last, like write-update's)
    Refusal(
        HOME,
        Event.OUTBOX_RELAY_STORE,
        Guard.VALUE_AT_OWNER,
        RefusalKind.NOT_APPLICABLE,
        "an ownership grant's value is at the owner: the relay only invalidates (OUTBOX_RELAY)",
        _COHERENT,
    ),
    Refusal(
        HOME,
        Event.OUTBOX_RELAY_STORE,
        None,
        RefusalKind.NOT_APPLICABLE,
        "strict mode never stores a write's value in L2 before the write settles: a reader "
        "could fill the new version while a holder that has not acknowledged serves the old one",
        _STRICT,
    ),
)


def candidates(source: RowKey, event: Event, mode: Mode) -> tuple[Rule | Refusal, ...]:
    """Every row and refusal of TABLE/REFUSALS for (source, event) in `mode`: the production
    core evaluates each one's guard (None: always) and takes the single one that holds."""
    return (
        *rows_for(TABLE, source, event, mode),
        *(f for f in REFUSALS if f.source is source and f.event is event and mode in f.modes),
    )


def rows_for(table: tuple[Rule, ...], source: RowKey, event: Event, mode: Mode) -> tuple[Rule, ...]:
    """Every row of `table` for (source, event) in `mode` (one per guard outcome)."""
    return tuple(r for r in table if r.source is source and r.event is event and mode in r.modes)


_INDEX: Final[dict[tuple[RowKey, Event, Mode, Guard], Rule]] = {
    (r.source, r.event, mode, r.guard): r for r in TABLE for mode in r.modes
}


def lookup(source: RowKey, event: Event, guard: Guard, mode: Mode) -> Rule | Refusal:
    """The row of TABLE (or the refusal) for (source, event, guard outcome) in `mode`.

    Raises `LookupError` when the table says nothing: that is a bug in the table.
    """
    rule = _INDEX.get((source, event, mode, guard))
    if rule is not None:
        return rule
    for refusal in REFUSALS:
        if (
            refusal.source is source
            and refusal.event is event
            and mode in refusal.modes
            and (refusal.guard is None or refusal.guard is guard)
        ):
            return refusal
    raise LookupError(
        f"the protocol table has no row or refusal for ({source.name}, {event.name}, "
        f"{guard.name}) in mode {mode.value}; add one to spec/table.py"
    )
