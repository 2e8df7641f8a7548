"""What the servers' answers and the agent's clocks mean: every choice the I/O driver used to make.

The driver of `CoherentL1Tier` performs I/O and reports what it found; it decides nothing. The
choices that remain between the table's rows and the servers' raw answers are made here, as
pure functions of the facts (no I/O, no clock reads, no driver imports), so they are tested
exhaustively without servers and read in one place:

- which FILL_FETCH branch the fill's answers make (`fetch_verdict`), and what the agent must
  ask the servers before it can tell (read the home, relay a pending outbox, expire a lapsed
  owner);
- which event a commit's or an acquire's answer fires, with which payload (`commit_verdict`,
  `acquire_verdict`), and when a refused request expires the owner (HOME_EXPIRE_OWNER);
- whether a write has settled: PUBLISHED / ACKNOWLEDGED or not yet (`settle_guard`, and
  whether the directory must be asked at all: `needs_ack_facts`);
- what stale fill data means: a bogus floor that restarts the entry (its CRASH row) or a newer
  copy on its way (`stale_data_verdict`);
- when a cached copy or grant may be served (`trusted`), which event ends one that may not
  (`expiry_event`: EVICT or LEASE_LAPSE), and that an owner's lapse comes before any message
  (`lapses_first`); the deadlines themselves (`deadline_after`);
- the owner's own compare-and-swap check (`owner_compare`), and whether a strict conflict
  waits for the conflicting version to settle (`conflict_settles_first`, and what it relays
  meanwhile: `relay_before_conflict`);
- which error a timed-out operation raises (`timeout_error`), when a failing step parks
  (`parks`), whether a recall repeats one just sent (`recall_is_repeat`), and which event a
  lost bus connection fires (`loss_event`), and that a key first touched while disconnected
  starts missed (`first_event`).

Everything an adapter reports is one of the small fact types below; the adapters' own answer
types (`HomeRead`, `CommitAnswer`, `FillStep`) have these fields.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum, unique
from typing import Final, Protocol

from sagemem.coherence.core import ABSENT, Payload
from sagemem.spec.model import Request
from sagemem.spec.vocabulary import Effect, Event, Guard, L1State, Mode
from sagemem.values import JSONValue, TierEntry

__all__ = [
    "COPY_STATES",
    "OWNED_STATES",
    "CommitFacts",
    "FetchVerdict",
    "FillFacts",
    "FillKind",
    "HomeFacts",
    "OwnerCheck",
    "StaleVerdict",
    "TimeoutKind",
    "acquire_verdict",
    "commit_verdict",
    "conflict_settles_first",
    "deadline_after",
    "expiry_event",
    "fetch_verdict",
    "first_event",
    "lapses_first",
    "loss_event",
    "miss_branch",
    "needs_ack_facts",
    "owner_compare",
    "parks",
    "recall_is_repeat",
    "relay_before_conflict",
    "settle_guard",
    "stale_data_verdict",
    "timeout_error",
    "trusted",
]

OWNED_STATES: Final = frozenset({L1State.E, L1State.M})
COPY_STATES: Final = frozenset({L1State.S, L1State.E, L1State.M})


@unique
class FillKind(Enum):
    """What the fill script found (the Redis half of the spec's FILL_FETCH guards)."""

    L2_HIT = "l2_hit"  # FETCH_L2_HIT: the copy is in the answer's `entry`
    LEASED = "leased"  # L2 missed: read the home, then store the fill with the lease token
    UNSETTLED = "unsettled"  # strict FETCH_UNSETTLED (acks owed): nothing done; retry later


class FillFacts(Protocol):
    """The fill script's answer (`RedisDirectory.fill`)."""

    @property
    def kind(self) -> FillKind: ...
    @property
    def registered(self) -> bool: ...
    @property
    def entry(self) -> TierEntry | None: ...
    @property
    def lease_token(self) -> str | None: ...


class HomeFacts(Protocol):
    """What the home holds for a key (`HomeStore.read`)."""

    @property
    def version(self) -> int: ...
    @property
    def value(self) -> JSONValue: ...
    @property
    def owner(self) -> str | None: ...
    @property
    def owner_lapsed(self) -> bool: ...
    @property
    def outbox(self) -> int | None: ...


class CommitFacts(Protocol):
    """The home's answer to a commit or an ownership request (`CommitAnswer`)."""

    @property
    def branch(self) -> Guard: ...
    @property
    def version(self) -> int | None: ...
    @property
    def owner(self) -> str | None: ...
    @property
    def owner_lapsed(self) -> bool: ...
    @property
    def owner_epoch(self) -> int | None: ...
    @property
    def existed(self) -> bool: ...


# -- the fill ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FetchVerdict:
    """FILL_FETCH, decided from the fill script's answer and (once asked) the home's.

    `read_home`: the answer is not known yet; read the home and decide again with its answer.
    Otherwise `payload` is the FILL_FETCH payload (values unpacked, as the servers sent them),
    after the servers are asked to `expire_owner` (HOME_EXPIRE_OWNER of that owner token, whose
    lease lapsed on the server's clock) and to `relay` (OUTBOX_RELAY of that version, strict).
    `owner` is the owner a recall must go to; `registered` whether the directory lists the
    agent as a holder (an unregistered copy may be returned once, never served again);
    `source` where the data came from: 0 nowhere yet, 1 L2, 2 the home.
    """

    read_home: bool = False
    payload: Payload | None = None
    expire_owner: str | None = None
    relay: int | None = None
    owner: str | None = None
    registered: bool = True
    source: int = 0


_ASK_HOME: Final = FetchVerdict(read_home=True)


def _expired(owner: str | None, lapsed: bool) -> str | None:
    """HOME_EXPIRE_OWNER's guard OWNER_LEASE_LAPSED: the owner to revoke, if any."""
    return owner if owner is not None and lapsed else None


def miss_branch(mode: Mode) -> Guard:
    """The FILL_FETCH branch of an L2 miss the home answers (not owned, nothing settling)."""
    return Guard.FETCH_SETTLED if mode is Mode.STRICT else Guard.FETCH_FREE


def fetch_verdict(mode: Mode, me: str, fill: FillFacts, home: HomeFacts | None) -> FetchVerdict:
    """The FILL_FETCH branch the answers make (`home` None until the home was read)."""
    if fill.kind is FillKind.UNSETTLED:
        if mode is not Mode.STRICT:
            raise ValueError("only a strict fill waits for a write to settle (FETCH_UNSETTLED)")
        return FetchVerdict(payload=Payload(branch=Guard.FETCH_UNSETTLED), registered=False)
    if fill.kind is FillKind.L2_HIT:
        entry = fill.entry
        if entry is None:  # the row has no L2_READ: the script did not return the copy
            return FetchVerdict(
                payload=Payload(branch=Guard.FETCH_L2_HIT), registered=fill.registered, source=1
            )
        if entry.version is None:
            raise ValueError(f"an L2 hit without a versioned entry: {fill!r}")
        return FetchVerdict(
            payload=Payload(branch=Guard.FETCH_L2_HIT, version=entry.version, value=entry.value),
            registered=fill.registered,
            source=1,
        )
    if home is None:
        return FetchVerdict(read_home=True, registered=fill.registered)
    if home.owner is not None and home.owner != me:
        return FetchVerdict(
            payload=Payload(branch=Guard.FETCH_OWNED, owner_epoch=home.version),
            expire_owner=_expired(home.owner, home.owner_lapsed),
            owner=home.owner,
            registered=fill.registered,
        )
    if mode is Mode.STRICT and home.outbox is not None:
        return FetchVerdict(
            payload=Payload(branch=Guard.FETCH_UNSETTLED),
            relay=home.outbox,
            registered=fill.registered,
        )
    return FetchVerdict(
        payload=Payload(
            branch=miss_branch(mode),
            version=home.version,
            value=home.value,
            fill_lease=fill.lease_token,
        ),
        registered=fill.registered,
        source=2,
    )


# -- commits and grants --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CommitVerdict:
    """The event a commit's or an acquire's answer fires, and what to ask the servers first."""

    event: Event
    payload: Payload
    expire_owner: str | None = None
    conflict: bool = False  # the home refused (another owner, or a stale compare-and-swap)


def commit_verdict(answer: CommitFacts) -> CommitVerdict:
    """HOME_CONFLICT for a refused compare-and-swap (GRANT_LOST), else HOME_COMMIT with the
    home's branch; an owner whose lease lapsed on the server's clock is expired first."""
    if answer.branch is Guard.GRANT_LOST:
        return CommitVerdict(
            Event.HOME_CONFLICT,
            Payload(branch=Guard.GRANT_LOST, version=answer.version),
            conflict=True,
        )
    if answer.branch not in (Guard.OWNED_BY_OTHER, Guard.NOT_OWNED_BY_OTHER):
        raise ValueError(
            f"a commit answers OWNED_BY_OTHER, NOT_OWNED_BY_OTHER or GRANT_LOST, got {answer!r}"
        )
    other = answer.branch is Guard.OWNED_BY_OTHER
    return CommitVerdict(
        Event.HOME_COMMIT,
        Payload(
            branch=answer.branch,
            version=answer.version,
            owner_epoch=answer.owner_epoch,
            existed=answer.existed,
        ),
        expire_owner=_expired(answer.owner, answer.owner_lapsed) if other else None,
        conflict=other,
    )


def acquire_verdict(answer: CommitFacts) -> CommitVerdict:
    """HOME_ACQUIRE with the home's branch: a granted request's reserved version is also the
    grant's epoch; a refused one names the owner's grant (expired first if it lapsed)."""
    if answer.branch is Guard.OWNED_BY_OTHER:
        return CommitVerdict(
            Event.HOME_ACQUIRE,
            Payload(branch=answer.branch, owner_epoch=answer.owner_epoch),
            expire_owner=_expired(answer.owner, answer.owner_lapsed),
            conflict=True,
        )
    if answer.branch is not Guard.NOT_OWNED_BY_OTHER:
        raise ValueError(f"an acquire answers OWNED_BY_OTHER or NOT_OWNED_BY_OTHER, got {answer!r}")
    return CommitVerdict(
        Event.HOME_ACQUIRE,
        Payload(branch=answer.branch, version=answer.version, owner_epoch=answer.version),
    )


# -- settling a write ----------------------------------------------------------------------------


def settle_guard(
    mode: Mode,
    *,
    outbox_empty: bool,
    acks_owed: bool = False,
    directory_age_s: float = float("inf"),
    directory_settled_s: float = 0.0,
) -> Guard:
    """WRITE_SETTLED's branch: coherent, PUBLISHED once the outbox is empty; strict,
    ACKNOWLEDGED once it is empty, no holder owes an acknowledgement, and the directory is
    old enough (`directory_settled_s`) to list every holder whose copy is still trusted (a
    directory younger than that was born after a Redis restart forgot registrations)."""
    if mode is Mode.COHERENT:
        return Guard.PUBLISHED if outbox_empty else Guard.UNPUBLISHED
    if outbox_empty and not acks_owed and directory_age_s >= directory_settled_s:
        return Guard.ACKNOWLEDGED
    return Guard.UNACKNOWLEDGED


def relay_before_conflict(outbox: int | None, version: int) -> bool:
    """While a strict conflict waits for `version` to settle: an outbox entry of that version
    or older is relayed by the waiter (relaying is idempotent); a newer one is not its to wait
    for (the acks it then waits for are those of `version`'s relay)."""
    return outbox is not None and outbox <= version


def needs_ack_facts(mode: Mode, *, outbox_empty: bool) -> bool:
    """Whether `settle_guard` needs the directory's facts (owed acks, its age): only a strict
    write whose outbox is empty can be ACKNOWLEDGED; otherwise the outbox alone decides."""
    return mode is Mode.STRICT and outbox_empty


def conflict_settles_first(mode: Mode, row_version: int | None) -> bool:
    """A strict compare-and-swap conflict tells the caller the key is at the row's version;
    every later read must return that or newer, so the answer waits until that version has
    settled (as a write would). Coherent answers at once."""
    return mode is Mode.STRICT and row_version is not None


@dataclass(frozen=True, slots=True)
class OwnerCheck:
    """The owner's own compare-and-swap check: `matched`, else the version it holds."""

    matched: bool
    held: int | None


def owner_compare(
    state: L1State, version: int, value: JSONValue, expected: int | None
) -> OwnerCheck | None:
    """An owner (E/M) compares the expected version with its own copy, which is the key's
    value while it owns it (no other agent can commit meanwhile: the table sends every other
    writer through a recall first). None: not an owner, the home compares."""
    if state not in OWNED_STATES:
        return None
    held = None if value is ABSENT else version
    return OwnerCheck(held == expected, held)


# -- fills that bring older data -----------------------------------------------------------------


@unique
class StaleVerdict(Enum):
    """What FILL_DATA [data_stale]/[data_older] means."""

    RESET = "reset"  # the floor is bogus: the entry restarts empty (its CRASH row)
    WAIT = "wait"  # the newer copy is on its way (a relay pending): back off and refetch


def stale_data_verdict(*, source: int, stale_for_s: float, l2_limit_s: float) -> StaleVerdict:
    """Older data than the floor: from the home itself (unowned), proof that the floor came
    from an invalidation the protocol never sent; from L2, legitimate only until the pending
    relay deletes the copy, which the outbox sweep bounds (`l2_limit_s`)."""
    if source == 2 or stale_for_s > l2_limit_s:
        return StaleVerdict.RESET
    return StaleVerdict.WAIT


# -- clocks --------------------------------------------------------------------------------------


def trusted(
    mode: Mode,
    state: L1State,
    now: float,
    deadline: float,
    link_heard_at: Callable[[], float | None],
    link_trust_s: float,
) -> bool:
    """Whether a copy or grant may be served now: before its deadline and, for a strict Shared
    copy, while the bus link it was registered over is confirmed (a frame read within
    `link_trust_s`; a strict holder that cannot confirm it may have missed an invalidation).
    `link_heard_at` is asked only then (this is every L1 hit's check: positional, no I/O)."""
    if now >= deadline:
        return False
    if mode is Mode.COHERENT or state is not L1State.S:
        return True
    heard = link_heard_at()
    return heard is not None and now - heard < link_trust_s


def expiry_event(mode: Mode, state: L1State) -> Event | None:
    """The event that ends a copy or grant that may not be served any more: a coherent Shared
    copy is evicted (EVICT); a grant (E/M) or a strict copy lapses (LEASE_LAPSE: a strict
    holder's read lease is what a writer's wait relies on). None: nothing cached."""
    if state not in COPY_STATES:
        return None
    if state is L1State.S and mode is Mode.COHERENT:
        return Event.EVICT
    return Event.LEASE_LAPSE


def lapses_first(state: L1State, *, now: float, deadline: float) -> bool:
    """An owned entry whose lease ran out by the agent's clock takes LEASE_LAPSE before any
    message: the table assumes the owner notices its lapse first (the home revokes only
    grants whose lease lapsed on the later server clock)."""
    return state in OWNED_STATES and now >= deadline


def deadline_after(
    effects: tuple[Effect, ...],
    source: L1State,
    target: L1State,
    *,
    current: float,
    now: float,
    fill_sent: float,
    registered: bool,
    copy_life_s: float,
    owner_life_s: float,
) -> float:
    """The entry's deadline after a row fired. A copy is trusted `copy_life_s` after the fill
    that registered it was sent (never if it was not registered), a grant `owner_life_s` after
    its request was sent; an owner that writes back and keeps a copy (MS_A to S) trusts it no
    longer than a fresh copy. Clocks are the agent's monotonic seconds."""
    if Effect.INSTALL_COPY in effects:
        return fill_sent + copy_life_s if registered else 0.0
    if Effect.START_OWNER_LEASE in effects:
        return fill_sent + owner_life_s
    if source is L1State.MS_A and target is L1State.S:
        return min(current, now + copy_life_s)
    return current


# -- operations and connections ------------------------------------------------------------------


@unique
class TimeoutKind(Enum):
    """What a timed-out operation tells its caller."""

    OUTCOME_UNKNOWN = "outcome_unknown"  # a commit was sent; it may or may not have happened
    UNAVAILABLE = "unavailable"  # nothing was committed for this operation


def timeout_error(request: Request, *, commit_unanswered: bool) -> TimeoutKind:
    """A commit sent whose answer was not learned is `OutcomeUnknown` (never guessed); a commit
    the home answered (refused while another agent owns the key) committed nothing, and nor did
    anything else that timed out."""
    if request is Request.COMMIT and commit_unanswered:
        return TimeoutKind.OUTCOME_UNKNOWN
    return TimeoutKind.UNAVAILABLE


def parks(*, waiting: bool, failing_for_s: float, operation_timeout_s: float) -> bool:
    """A failing step stops retrying once nobody waits for it and it has failed for an
    operation's timeout: no retry loop without a bound. The next event on the key resumes it
    (a resumed commit is the same idempotent commit)."""
    return not waiting and failing_for_s >= operation_timeout_s


def recall_is_repeat(
    previous: tuple[str | None, int | None] | None,
    previous_at: float,
    recall: tuple[str | None, int | None],
    *,
    now: float,
    repeat_s: float,
) -> bool:
    """The same recall (owner, grant epoch) left less than `repeat_s` ago: not sent again (a
    lost one is sent again by the next retry after that)."""
    return previous == recall and now - previous_at < repeat_s


def first_event(*, known: bool, disconnected: bool) -> Event | None:
    """A key the agent knows nothing of, first touched while the bus is disconnected, starts
    missed (DISCONNECT), as every known key did when the connection was lost."""
    return Event.DISCONNECT if disconnected and not known else None


def loss_event(sequence_gap: bool) -> Event:
    """A gap in the bus's sequence numbers is DROP_MESSAGE; a lost connection DISCONNECT."""
    return Event.DROP_MESSAGE if sequence_gap else Event.DISCONNECT
