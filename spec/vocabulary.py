"""The words of the coherence protocol: modes, states, events, guards, effects and messages.

Everything here is a plain enum so the same names can be read by the explorer, encoded for Z3,
driven by Hypothesis, drawn into the docs and executed by the production core. The *meaning* of
each guard and effect is implemented once, in `model.py`; this module only names them and says
in one line what they mean (the docstrings of the members' values are in `*_MEANING`).

The model covers ONE key; keys are independent. Actors: N agents (each with an L1 entry), the
home (L3, Postgres: the version, who owns the key, and a transactional outbox of invalidations
still to publish), Redis (the shared L2 copy with memcache-style fill leases, and the directory
of holders with their acknowledgement flags) and the bus (Redis pub/sub: per-destination
messages in flight that may be dropped).

This module must never do I/O or import anything outside the standard library.
"""

from __future__ import annotations

from enum import Enum, IntEnum, unique
from typing import Final

__all__ = [
    "EFFECT_MEANING",
    "EVENT_KIND",
    "EVENT_MEANING",
    "EVENT_SITE",
    "GUARD_MEANING",
    "L1_STATE_MEANING",
    "STABLE_STATES",
    "ActorState",
    "Effect",
    "Event",
    "EventKind",
    "Guard",
    "L1State",
    "MessageKind",
    "Mode",
    "Site",
]


@unique
class Mode(Enum):
    """Consistency mode of a hierarchy (or namespace)."""

    __hash__ = object.__hash__  # members are singletons: identity hashing is exact and fast

    COHERENT = "coherent"
    STRICT = "strict"


@unique
class L1State(IntEnum):
    """State of one agent's L1 entry for the key: MESI plus the transient states the races need.

    Transient names follow the primer's convention (what the entry waits for).
    """

    I = 0  # noqa: E741  # the MESI name; it is never confused with a number here
    S = 1
    E = 2
    M = 3
    IS_D = 4
    IS_D_I = 5
    WT_H = 6
    WT_A = 7
    IM_H = 8
    IM_A = 9
    MI_A = 10
    ME_A = 11
    MS_A = 12


L1_STATE_MEANING: Final[dict[L1State, str]] = {
    L1State.I: "Invalid: no usable copy",
    L1State.S: "Shared: a clean copy, registered in the directory as a holder",
    L1State.E: "Exclusive: the owner (home grant held), copy clean (written back by a flush)",
    L1State.M: "Modified: the owner, holding an acknowledged write the home does not have yet",
    L1State.IS_D: "fill in flight (registered as holder; data not yet installed)",
    L1State.IS_D_I: "fill in flight already invalidated: its data is returned once, never cached",
    L1State.WT_H: "write-through waiting for the home's commit (compare-and-swap)",
    L1State.WT_A: "write-through committed, waiting for its invalidations (and acks in strict)",
    L1State.IM_H: "L1 write waiting for the home to grant ownership (reserve the next version)",
    L1State.IM_A: "L1 write granted, waiting for its invalidations (and acks in strict)",
    L1State.MI_A: "write-back waiting for the home's answer; releases ownership (evict/recall)",
    L1State.ME_A: "flush waiting for the home's answer; keeps ownership (M to E)",
    L1State.MS_A: "recalled: write-back waiting for the home's answer; keeps a Shared copy",
}

STABLE_STATES: Final[frozenset[L1State]] = frozenset({L1State.I, L1State.S, L1State.E, L1State.M})


@unique
class ActorState(Enum):
    """The single row-key state of a shared actor; its data (versions, flags) lives in fields."""

    __hash__ = object.__hash__  # members are singletons: identity hashing is exact and fast

    HOME = "home"
    REDIS = "redis"
    BUS = "bus"


@unique
class Site(Enum):
    """Where a row runs: the agent's sans-IO core, or an atomic server-side script, or the net."""

    __hash__ = object.__hash__  # members are singletons: identity hashing is exact and fast

    AGENT = "agent"
    HOME = "home"
    REDIS = "redis"
    BUS = "bus"


@unique
class EventKind(Enum):
    """What causes an event; the explorer uses it for the quiescence and progress checks."""

    __hash__ = object.__hash__  # members are singletons: identity hashing is exact and fast

    USER = "user"  # an operation the application starts
    INTERNAL = "internal"  # a protocol step: a message delivered, a server script answering
    TIMER = "timer"  # time passes: a lease lapses or is expired
    FAULT = "fault"  # the environment misbehaves: loss, disconnect, crash, eviction


@unique
class MessageKind(Enum):
    """Messages on the bus (pub/sub, at most once). Only an update carries a value."""

    __hash__ = object.__hash__  # members are singletons: identity hashing is exact and fast

    INVALIDATE = "invalidate"  # "version n was committed: copies older than n are stale"
    RECALL = "recall"  # "someone waits for your owned data: write it back and release"
    UPDATE = "update"  # write-update: "version n was committed with this value"


@unique
class Event(Enum):
    """Everything that can happen to the key. Agent events are keyed by the agent's L1 state."""

    __hash__ = object.__hash__  # members are singletons: identity hashing is exact and fast

    # user operations (one at a time per agent and key; only from stable states)
    READ = "read"
    WRITE_L1 = "write_l1"
    WRITE_THROUGH = "write_through"
    EVICT = "evict"
    FLUSH = "flush"
    # messages delivered to an agent
    DELIVER_INVALIDATE = "deliver_invalidate"
    DELIVER_RECALL = "deliver_recall"
    DELIVER_UPDATE = "deliver_update"
    # server answers to an agent's request (the guard is the script's branch)
    FILL_FETCH = "fill_fetch"
    FILL_DATA = "fill_data"
    HOME_COMMIT = "home_commit"
    HOME_CONFLICT = "home_conflict"
    HOME_ACQUIRE = "home_acquire"
    WRITE_SETTLED = "write_settled"
    HOME_WRITE_BACK = "home_write_back"
    HOME_FLUSH = "home_flush"
    RESYNC = "resync"
    RETRY = "retry"
    # actor steps
    OUTBOX_RELAY = "outbox_relay"
    OUTBOX_RELAY_UPDATE = "outbox_relay_update"
    OUTBOX_RELAY_STORE = "outbox_relay_store"
    HOME_EXPIRE_OWNER = "home_expire_owner"
    HOLDER_EXPIRE = "holder_expire"
    # time and faults
    LEASE_LAPSE = "lease_lapse"
    L2_EVICT = "l2_evict"
    DROP_MESSAGE = "drop_message"
    DISCONNECT = "disconnect"
    CRASH = "crash"


EVENT_SITE: Final[dict[Event, Site]] = {
    Event.READ: Site.AGENT,
    Event.WRITE_L1: Site.AGENT,
    Event.WRITE_THROUGH: Site.AGENT,
    Event.EVICT: Site.AGENT,
    Event.FLUSH: Site.AGENT,
    Event.DELIVER_INVALIDATE: Site.AGENT,
    Event.DELIVER_RECALL: Site.AGENT,
    Event.DELIVER_UPDATE: Site.AGENT,
    Event.FILL_FETCH: Site.AGENT,
    Event.FILL_DATA: Site.AGENT,
    Event.HOME_COMMIT: Site.AGENT,
    Event.HOME_CONFLICT: Site.AGENT,
    Event.HOME_ACQUIRE: Site.AGENT,
    Event.WRITE_SETTLED: Site.AGENT,
    Event.HOME_WRITE_BACK: Site.AGENT,
    Event.HOME_FLUSH: Site.AGENT,
    Event.RESYNC: Site.AGENT,
    Event.RETRY: Site.AGENT,
    Event.LEASE_LAPSE: Site.AGENT,
    Event.CRASH: Site.AGENT,
    Event.OUTBOX_RELAY: Site.HOME,
    Event.OUTBOX_RELAY_UPDATE: Site.HOME,
    Event.OUTBOX_RELAY_STORE: Site.HOME,
    Event.HOME_EXPIRE_OWNER: Site.HOME,
    Event.HOLDER_EXPIRE: Site.REDIS,
    Event.L2_EVICT: Site.REDIS,
    Event.DROP_MESSAGE: Site.BUS,
    Event.DISCONNECT: Site.BUS,
}

EVENT_KIND: Final[dict[Event, EventKind]] = {
    Event.READ: EventKind.USER,
    Event.WRITE_L1: EventKind.USER,
    Event.WRITE_THROUGH: EventKind.USER,
    Event.EVICT: EventKind.FAULT,
    Event.FLUSH: EventKind.USER,
    Event.DELIVER_INVALIDATE: EventKind.INTERNAL,
    Event.DELIVER_RECALL: EventKind.INTERNAL,
    Event.DELIVER_UPDATE: EventKind.INTERNAL,
    Event.FILL_FETCH: EventKind.INTERNAL,
    Event.FILL_DATA: EventKind.INTERNAL,
    Event.HOME_COMMIT: EventKind.INTERNAL,
    Event.HOME_CONFLICT: EventKind.INTERNAL,
    Event.HOME_ACQUIRE: EventKind.INTERNAL,
    Event.WRITE_SETTLED: EventKind.INTERNAL,
    Event.HOME_WRITE_BACK: EventKind.INTERNAL,
    Event.HOME_FLUSH: EventKind.INTERNAL,
    Event.RESYNC: EventKind.INTERNAL,
    Event.RETRY: EventKind.TIMER,
    Event.OUTBOX_RELAY: EventKind.INTERNAL,
    Event.OUTBOX_RELAY_UPDATE: EventKind.INTERNAL,
    Event.OUTBOX_RELAY_STORE: EventKind.INTERNAL,
    Event.HOME_EXPIRE_OWNER: EventKind.TIMER,
    Event.HOLDER_EXPIRE: EventKind.TIMER,
    Event.LEASE_LAPSE: EventKind.TIMER,
    Event.L2_EVICT: EventKind.FAULT,
    Event.DROP_MESSAGE: EventKind.FAULT,
    Event.DISCONNECT: EventKind.FAULT,
    Event.CRASH: EventKind.FAULT,
}

EVENT_MEANING: Final[dict[Event, str]] = {
    Event.READ: "the application reads the key through this agent",
    Event.WRITE_L1: "the application writes at tier 0 (the coherent L1): take ownership",
    Event.WRITE_THROUGH: "the application writes at a shared tier (L2/L3): commit at the home",
    Event.EVICT: "the L1 evicts the entry (capacity), or close() releases it",
    Event.FLUSH: "flush(): write Modified data back but keep ownership",
    Event.DELIVER_INVALIDATE: "an invalidation message reaches the agent",
    Event.DELIVER_RECALL: "a recall message reaches the owner",
    Event.DELIVER_UPDATE: (
        "an update message (write-update: the committed version and its value) reaches the agent"
    ),
    Event.FILL_FETCH: "the fill script runs: register as holder, L2 get or lease, else home read",
    Event.FILL_DATA: "the fetched data reaches the agent's core",
    Event.HOME_COMMIT: "the home's compare-and-swap for a write-through runs",
    Event.HOME_CONFLICT: (
        "the home refuses a conditional write-through: the version it expects is not the "
        "current one (nothing is committed)"
    ),
    Event.HOME_ACQUIRE: "the home's ownership grant for an L1 write runs",
    Event.WRITE_SETTLED: "the writer learns whether its invalidations are published (and acked)",
    Event.HOME_WRITE_BACK: "the home's fenced write-back (release ownership) runs",
    Event.HOME_FLUSH: "the home's fenced flush (keep ownership) runs",
    Event.RESYNC: "the agent's bus listener has detected missed messages and resynchronises",
    Event.RETRY: "the backoff timer of a request that found an owner fires: send it again",
    Event.OUTBOX_RELAY: "the outbox relay runs: L2 delete, publish invalidations to holders",
    Event.OUTBOX_RELAY_UPDATE: (
        "the outbox relay of a write-update namespace runs for a write-through it holds the "
        "value of: L2 delete, publish the version and value to the holders, who stay holders"
    ),
    Event.OUTBOX_RELAY_STORE: (
        "the writer's own outbox relay in an invalidating namespace, for a write-through it "
        "holds the value of: L2 delete, store the value in L2, invalidate the holders"
    ),
    Event.HOME_EXPIRE_OWNER: "the home expires an owner whose lease has lapsed",
    Event.HOLDER_EXPIRE: "the directory expires a holder that owes an ack and whose lease lapsed",
    Event.LEASE_LAPSE: "the agent's own (conservative) lease clock runs out",
    Event.L2_EVICT: "Redis evicts the L2 copy",
    Event.DROP_MESSAGE: "the bus loses one message to this agent",
    Event.DISCONNECT: "the agent's pub/sub connection drops (all its messages in flight lost)",
    Event.CRASH: "the agent's process dies and restarts empty (a new incarnation)",
}


@unique
class Guard(Enum):
    """Conditions that select a row. Agent guards read only what the agent knows locally or
    what the answering script returned; shared-actor guards read that actor's data."""

    __hash__ = object.__hash__  # members are singletons: identity hashing is exact and fast

    ALWAYS = "always"
    CONN_OK = "conn_ok"
    CONN_MISSED = "conn_missed"
    INV_NEWER = "inv_newer"
    INV_NOT_NEWER = "inv_not_newer"
    FETCH_L2_HIT = "fetch_l2_hit"
    FETCH_OWNED = "fetch_owned"
    FETCH_FREE = "fetch_free"
    FETCH_SETTLED = "fetch_settled"
    FETCH_UNSETTLED = "fetch_unsettled"
    DATA_FRESH = "data_fresh"
    DATA_STALE = "data_stale"
    DATA_NOT_OLDER = "data_not_older"
    DATA_OLDER = "data_older"
    OWNED_BY_OTHER = "owned_by_other"
    NOT_OWNED_BY_OTHER = "not_owned_by_other"
    PUBLISHED = "published"
    UNPUBLISHED = "unpublished"
    ACKNOWLEDGED = "acknowledged"
    UNACKNOWLEDGED = "unacknowledged"
    GRANT_HELD = "grant_held"
    GRANT_LOST = "grant_lost"
    OWNER_LEASE_LAPSED = "owner_lease_lapsed"
    OWNER_LEASE_LIVE = "owner_lease_live"
    HOLDER_LEASE_LAPSED = "holder_lease_lapsed"
    HOLDER_LEASE_LIVE = "holder_lease_live"
    VALUE_AT_HOME = "value_at_home"
    VALUE_AT_OWNER = "value_at_owner"


GUARD_MEANING: Final[dict[Guard, str]] = {
    Guard.ALWAYS: "no condition",
    Guard.CONN_OK: "the agent's bus connection has not missed a message",
    Guard.CONN_MISSED: "the agent's bus connection missed messages (drop detected, not resynced)",
    Guard.INV_NEWER: "the invalidation's (or update's) version is newer than the entry's version",
    # the agent's floor: the newest version it has read, written or been told about
    Guard.INV_NOT_NEWER: (
        "the invalidation's (or update's) version is not newer than the entry's version"
    ),
    Guard.FETCH_L2_HIT: "the fill script found an L2 copy",
    Guard.FETCH_OWNED: "L2 missed and the home says an owner (or a dead incarnation) holds it",
    Guard.FETCH_FREE: "L2 missed and the key is not owned (coherent: read the home)",
    Guard.FETCH_SETTLED: "strict: L2 missed, not owned, no invalidation pending or unacked",
    Guard.FETCH_UNSETTLED: "strict: L2 missed, not owned, but a write is still settling",
    Guard.DATA_FRESH: "connection ok and fetched version >= the agent's floor",
    Guard.DATA_STALE: "connection ok and fetched version < the agent's floor",
    Guard.DATA_NOT_OLDER: "fetched version >= the agent's floor",
    Guard.DATA_OLDER: "fetched version < the agent's floor",
    Guard.OWNED_BY_OTHER: "the home says another agent (or a dead incarnation) owns the key",
    Guard.NOT_OWNED_BY_OTHER: "the home says nobody, or this agent, owns the key",
    Guard.PUBLISHED: "the home's outbox is empty: every committed invalidation was published",
    Guard.UNPUBLISHED: "the home's outbox still holds an invalidation",
    Guard.ACKNOWLEDGED: "outbox empty and the directory owes no acknowledgement",
    Guard.UNACKNOWLEDGED: "outbox pending or some holder still owes an acknowledgement",
    Guard.GRANT_HELD: "the home still records this agent's incarnation as owner",
    Guard.GRANT_LOST: "the home no longer records this agent as owner (its lease expired)",
    Guard.OWNER_LEASE_LAPSED: "the owner's lease has lapsed by its own clock (or it crashed)",
    Guard.OWNER_LEASE_LIVE: "the owner's lease is still live",
    Guard.HOLDER_LEASE_LAPSED: "the holder's read lease has lapsed by its own clock (or crashed)",
    Guard.HOLDER_LEASE_LIVE: "the holder's read lease is still live",
    Guard.VALUE_AT_HOME: (
        "the outbox's version is the home's and its value is at the home (a write-through's "
        "commit, not an ownership grant whose data is still at the owner)"
    ),
    Guard.VALUE_AT_OWNER: "the outbox's version is an ownership grant: its value is at the owner",
}


@unique
class Effect(Enum):
    """Actions a row performs, named as what a production adapter does.

    In a row whose event is a server step (FILL_FETCH, HOME_*, OUTBOX_RELAY, ...), the HOME_*,
    L2_* and DIRECTORY_* effects are the body of ONE atomic script (SQL statement or Lua); the
    other effects are applied by the agent's core when the script's answer arrives.
    """

    __hash__ = object.__hash__  # members are singletons: identity hashing is exact and fast

    # local (agent core)
    RETURN_VALUE = "return_value"
    RETURN_VALUE_UNCACHED = "return_value_uncached"
    INSTALL_COPY = "install_copy"
    DROP_COPY = "drop_copy"
    NOTE_INVALIDATION = "note_invalidation"
    INSTALL_UPDATE = "install_update"
    ACK_WRITE = "ack_write"
    START_OWNER_LEASE = "start_owner_lease"
    LEASE_LAPSED = "lease_lapsed"
    REPORT_FENCED = "report_fenced"
    REPORT_CONFLICT = "report_conflict"
    RESYNC_CONNECTION = "resync_connection"
    LOSE_VOLATILE_STATE = "lose_volatile_state"
    REFETCH = "refetch"
    MARK_DIRTY = "mark_dirty"
    AWAIT_INVALIDATIONS = "await_invalidations"
    AWAIT_OWNER = "await_owner"
    # requests the agent's adapter sends (answered by a later server step)
    REQUEST_FILL = "request_fill"
    REQUEST_COMMIT = "request_commit"
    REQUEST_OWNERSHIP = "request_ownership"
    REQUEST_WRITE_BACK = "request_write_back"
    REQUEST_FLUSH = "request_flush"
    # bus
    SEND_RECALL = "send_recall"
    SEND_ACK = "send_ack"
    DISCARD_MESSAGE = "discard_message"
    DISCARD_ALL_MESSAGES = "discard_all_messages"
    MARK_MISSED = "mark_missed"
    # directory (Redis, Lua)
    DIRECTORY_ADD_HOLDER = "directory_add_holder"
    DIRECTORY_REMOVE_HOLDER = "directory_remove_holder"
    DIRECTORY_EXPIRE_HOLDER = "directory_expire_holder"
    PUBLISH_INVALIDATIONS = "publish_invalidations"
    PUBLISH_INVALIDATIONS_AWAIT_ACKS = "publish_invalidations_await_acks"
    PUBLISH_UPDATES = "publish_updates"
    # L2 (Redis, Lua)
    L2_READ = "l2_read"
    L2_TAKE_LEASE = "l2_take_lease"
    L2_LEASED_FILL = "l2_leased_fill"
    L2_DELETE = "l2_delete"
    L2_EVICT_COPY = "l2_evict_copy"
    L2_ABANDON_LEASE = "l2_abandon_lease"
    L2_SET_IF_NEWER = "l2_set_if_newer"
    L2_FILL_IF_NEWER = "l2_fill_if_newer"
    # home (Postgres, one SQL statement each)
    HOME_READ = "home_read"
    HOME_COMMIT_VERSION = "home_commit_version"
    HOME_RESERVE_AND_GRANT = "home_reserve_and_grant"
    HOME_STORE_AND_RELEASE = "home_store_and_release"
    HOME_STORE_KEEP_GRANT = "home_store_keep_grant"
    HOME_STORE_UNFENCED = "home_store_unfenced"
    HOME_COMMIT_KEEP_VERSION = "home_commit_keep_version"
    HOME_REVOKE_GRANT = "home_revoke_grant"
    HOME_CLEAR_OUTBOX = "home_clear_outbox"


EFFECT_MEANING: Final[dict[Effect, str]] = {
    Effect.RETURN_VALUE: "return the entry's (or fetched) value to the caller",
    Effect.RETURN_VALUE_UNCACHED: "return the fetched value once, without caching it",
    Effect.INSTALL_COPY: "install the fetched version as the L1 copy (starts a strict read lease)",
    Effect.DROP_COPY: "forget the L1 copy",
    Effect.NOTE_INVALIDATION: "raise the agent's floor to the invalidation's version",
    Effect.INSTALL_UPDATE: "replace the L1 copy by the update's version and value (stay Shared)",
    Effect.ACK_WRITE: "return success to the writer (the write is acknowledged)",
    Effect.START_OWNER_LEASE: "start renewing the ownership lease",
    Effect.LEASE_LAPSED: "stop renewing: the agent's own lease clock ran out",
    Effect.REPORT_FENCED: "report to the application that its owned write was fenced (lost)",
    Effect.REPORT_CONFLICT: "answer the writer: version conflict, nothing was committed",
    Effect.RESYNC_CONNECTION: "reconnect/resubscribe; clear the missed-messages condition",
    Effect.LOSE_VOLATILE_STATE: "the process died: L1, requests, leases and messages are gone",
    Effect.REFETCH: "discard the fetched data and run the fill script again",
    Effect.MARK_DIRTY: (
        "(not in TABLE) the owner's copy now holds data the home does not have (E to M); an "
        "owner's local write now reserves a new version instead (E to IM_H)"
    ),
    Effect.AWAIT_INVALIDATIONS: "wait until the outbox is relayed (and, strict, acks are in)",
    Effect.AWAIT_OWNER: "the key is owned: wait for the backoff timer, then retry (RETRY)",
    Effect.REQUEST_FILL: "send the fill script (register, L2 get-or-lease, home read)",
    Effect.REQUEST_COMMIT: "send the home's compare-and-swap for a write-through",
    Effect.REQUEST_OWNERSHIP: "send the home's ownership grant request",
    Effect.REQUEST_WRITE_BACK: "send the fenced write-back (and release) to the home",
    Effect.REQUEST_FLUSH: "send the fenced flush (keep ownership) to the home",
    Effect.SEND_RECALL: "publish a recall to the current owner",
    Effect.SEND_ACK: "acknowledge: clear this agent's ack flag in the directory (strict)",
    Effect.DISCARD_MESSAGE: "the bus loses the message",
    Effect.DISCARD_ALL_MESSAGES: "the bus loses every message in flight to the agent",
    Effect.MARK_MISSED: "the agent's listener detects the loss (sequence gap / reconnect)",
    Effect.DIRECTORY_ADD_HOLDER: "directory: add the agent to the key's holders",
    Effect.DIRECTORY_REMOVE_HOLDER: "directory: remove the agent from the key's holders",
    Effect.DIRECTORY_EXPIRE_HOLDER: "directory: drop a lapsed holder and its owed ack",
    Effect.PUBLISH_INVALIDATIONS: "publish an invalidation to every holder and forget them",
    Effect.PUBLISH_INVALIDATIONS_AWAIT_ACKS: "as above, and record an owed ack per holder",
    Effect.PUBLISH_UPDATES: (
        "publish the outbox's version and its value to every holder, who stay registered"
    ),
    Effect.L2_READ: "fill data = the L2 copy's version",
    Effect.L2_TAKE_LEASE: "L2 miss: hand out a fill lease (voids older leases)",
    Effect.L2_LEASED_FILL: "set the L2 copy if this agent's lease is still valid; consume it",
    Effect.L2_DELETE: "delete the L2 copy and void every fill lease",
    Effect.L2_EVICT_COPY: "the L2 copy disappears (leases survive)",
    Effect.L2_ABANDON_LEASE: "forget an unused fill lease token (it expires in L2)",
    Effect.L2_SET_IF_NEWER: (
        "write-update's relay: L2 holds the committed version and its value, unless a newer "
        "version of the key was relayed"
    ),
    Effect.L2_FILL_IF_NEWER: "(not in TABLE) set L2 to the fetched version if newer",
    Effect.HOME_READ: "fill data = the home's version (also replaces L2 data below the floor)",
    Effect.HOME_COMMIT_VERSION: "version += 1, release this agent's grant, outbox the version",
    Effect.HOME_RESERVE_AND_GRANT: "version += 1 held at the owner, grant this agent, outbox it",
    Effect.HOME_STORE_AND_RELEASE: "store the owner's data (fenced by the grant), release it",
    Effect.HOME_STORE_KEEP_GRANT: "store the owner's data (fenced by the grant), keep the grant",
    Effect.HOME_STORE_UNFENCED: "(not in TABLE) store the write-back without checking the grant",
    Effect.HOME_COMMIT_KEEP_VERSION: (
        "(not in TABLE) commit a new value (a delete's tombstone) without a new version: ABA"
    ),
    Effect.HOME_REVOKE_GRANT: (
        "drop the lapsed owner's grant (its unsaved data is lost); the value the home keeps "
        "gets a new version, so the grant's version never names two values"
    ),
    Effect.HOME_CLEAR_OUTBOX: "delete the relayed outbox entry",
}
