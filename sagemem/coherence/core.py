"""The sans-IO coherence core: one agent's L1 entries executing the spec's table, row by row.

`AgentCore` holds, per key, exactly what an agent can know locally (its L1 state, the cached
version and value, fill data in flight, its floor, whether its bus connection missed messages,
what it waits for, its own lease clocks) and executes THE table object of `sagemem.spec`
(`sagemem.spec.TABLE` by default, or a mutated table for mutation tests). Shared facts (the
home's version, who owns the key, the outbox, L2, the directory) are never read from anywhere:
they arrive as the `Payload` of the event that answers a request (the branch the server script
took, and the version and value it returned).

`handle(key, event, payload)` looks up the row for (the entry's state, event), evaluates its
guard as its one statement in `sagemem.spec.meaning` says (compiled over local data and the
payload; a server-side guard is the branch the server's script took), moves the entry to the
row's target, applies the effects that only change local data, and returns a
`Step` listing, in row order, the `Action`s the adapter must perform (requests, publications,
L2 and directory scripts, returning a value to the caller, acknowledging a write). Every target
state comes from a row; no transition is decided here. A refusal is reported, not hidden:
STALLED (hold the event and feed it again later), NOT_APPLICABLE (a no-op; user operations are
queued by the adapter), and IMPOSSIBLE or a missing row raise `ProtocolError`.

Three places where production cannot be the model's atomic step, and what the core does:

- a HOME_READ (or L2_READ) in an agent row (FILL_DATA [data_stale]/[data_older]) is a read the
  adapter makes after the decision: the entry waits (`EntryCore.data_pending`) and the answer
  is the payload of the next FILL_DATA (the model reads the home in the same step);
- a recall tagged with an epoch other than the entry's grant is void (`Outcome.VOIDED`), as
  the model voids the recalls of a released or revoked grant;
- `hit(key)` is READ's fast path, compiled from the table's pure hit rows.

This module must never do I/O, import a driver (redis, asyncpg) or contain transition logic
that is not a row of the table.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from enum import Enum, IntEnum, unique
from typing import Final, cast

from sagemem.errors import ConfigurationError, ProtocolError
from sagemem.spec.meaning import (
    GUARDS,
    Announced,
    Cmp,
    Field,
    Renderer,
    compile_function,
    server_side,
)
from sagemem.spec.model import ProtocolDefinition, Request
from sagemem.spec.table import REFUSALS, TABLE, Refusal, RefusalKind, RowKey, Rule
from sagemem.spec.vocabulary import (
    EVENT_SITE,
    ActorState,
    Effect,
    Event,
    Guard,
    L1State,
    Mode,
    Site,
)
from sagemem.values import JSONValue

__all__ = [
    "ABSENT",
    "LOCAL_EFFECTS",
    "NO_PAYLOAD",
    "NO_VERSION",
    "SCRIPT_EFFECTS",
    "SERVER_GUARDS",
    "SERVER_STEP_EVENTS",
    "Action",
    "AgentCore",
    "EntryCore",
    "LocalView",
    "Operation",
    "Outcome",
    "Payload",
    "Step",
    "TraceRecord",
    "Tracer",
]

NO_VERSION: Final = -1


class _Absent:
    """The value of a key that does not exist (never stored, or deleted)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "ABSENT"


# Cached, returned and compared by identity, never serialised: the core treats values as
# opaque, except for telling this one apart (a delete's answer: did the key hold a value?).
ABSENT: Final = cast(JSONValue, _Absent())

# Events that answer a request: the payload carries the branch the server's script took, and
# the HOME_*/L2_*/DIRECTORY_* effects of the row are that script's body, already performed.
SERVER_STEP_EVENTS: Final[frozenset[Event]] = frozenset(
    {
        Event.FILL_FETCH,
        Event.HOME_COMMIT,
        Event.HOME_CONFLICT,
        Event.HOME_ACQUIRE,
        Event.WRITE_SETTLED,
        Event.HOME_WRITE_BACK,
        Event.HOME_FLUSH,
    }
)

# Guards that only a server can evaluate (their condition in `sagemem.spec.meaning.GUARDS`
# reads a field outside `meaning.LOCAL_FIELDS`); an agent learns them as its script's answer.
SERVER_GUARDS: Final[frozenset[Guard]] = frozenset(g for g in Guard if server_side(g))

# Effects that run inside an atomic server script (SQL statement or Lua).
SCRIPT_EFFECTS: Final[frozenset[Effect]] = frozenset(
    e for e in Effect if e.name.startswith(("HOME_", "L2_", "DIRECTORY_", "PUBLISH_"))
)

# Effects that only change what the core holds: never returned to the adapter. DISCARD_* and
# MARK_MISSED describe what the network did and what the listener detected (already happened).
LOCAL_EFFECTS: Final[frozenset[Effect]] = frozenset(
    {
        Effect.INSTALL_COPY,
        Effect.DROP_COPY,
        Effect.NOTE_INVALIDATION,
        Effect.INSTALL_UPDATE,
        Effect.MARK_DIRTY,
        Effect.RESYNC_CONNECTION,
        Effect.LOSE_VOLATILE_STATE,
        Effect.DISCARD_MESSAGE,
        Effect.DISCARD_ALL_MESSAGES,
        Effect.MARK_MISSED,
    }
)

_BUS_EVENTS: Final = frozenset(e for e, site in EVENT_SITE.items() if site is Site.BUS)


@unique
class Operation(IntEnum):
    """The application operation in progress on an entry (the spec's `op` field)."""

    NONE = 0
    READ = 1
    WRITE = 2


_OPERATION_OF: Final[dict[Event, Operation]] = {
    Event.READ: Operation.READ,
    Event.WRITE_L1: Operation.WRITE,
    Event.WRITE_THROUGH: Operation.WRITE,
}


@unique
class Outcome(Enum):
    """What `handle` did with an event."""

    FIRED = "fired"  # a row matched: the entry moved and the actions must be performed
    STALLED = "stalled"  # the event waits: hold it and feed it again after the state changes
    NOT_APPLICABLE = "not_applicable"  # nothing happens (a user operation is queued meanwhile)
    VOIDED = "voided"  # a recall addressed to a grant this agent no longer holds: ignored


@dataclass(frozen=True, slots=True)
class Payload:
    """What the event carries: a message's version, or the answer of a server script.

    `branch` is the guard the server evaluated (FETCH_*, [NOT_]OWNED_BY_OTHER, PUBLISHED...,
    GRANT_*); `version` and `value` are the data the script returned (fetched, committed or
    reserved version), or the invalidation's version, or the value of a write; `fill_lease` is
    the L2 fill-lease token the fill script handed out; `owner_epoch` identifies a grant.
    A write operation's event also carries its `operation_id` (what makes its commit
    idempotent at the home) and, for a compare-and-swap, `conditional` with the `expected`
    live version (None: the key must not exist); a commit's answer says whether the home's row
    `existed` (held a live value) before it.
    """

    branch: Guard | None = None
    version: int | None = None
    value: JSONValue = None
    fill_lease: str | None = None
    owner_epoch: int | None = None
    operation_id: str | None = None
    conditional: bool = False
    expected: int | None = None
    existed: bool = False


NO_PAYLOAD: Final = Payload()


@dataclass(slots=True)
class EntryCore:
    """What one agent knows locally about one key (the local fields of the spec's AgentState).

    `version`/`value`: the L1 copy (S/E/M/MS_A/...), or the committed version while a write
    settles (WT_A/IM_A); `data`/`data_value`: fill data in flight; `floor`: the newest version
    the agent read, wrote or was told of; `missed`: the bus lost a message and no RESYNC ran
    yet; `request`: what the adapter waits for; `owner_lease`/`read_lease`: the agent's own
    lease clocks; `fill_lease`: an L2 fill-lease token in hand (the server may have voided
    it); `owner_epoch`: the grant the home handed out (the home may have revoked it);
    `write_value`: the value of the write in progress; `write_id`, `write_conditional` and
    `write_expected`: its operation id and compare-and-swap condition, fixed when the write's
    row fires and kept until it is answered, whatever operations start meanwhile (a retried
    commit is the same commit: idempotent, and never less conditional than asked);
    `write_existed`: whether the write replaced a live value, known at once when an owner
    writes (its copy is the key's value; the home's row may be older), else the home's answer.
    """

    state: L1State = L1State.I
    version: int = NO_VERSION
    value: JSONValue = None
    data: int = NO_VERSION
    data_value: JSONValue = None
    floor: int = 0
    missed: bool = False
    request: Request = Request.NONE
    owner_lease: bool = False
    read_lease: bool = False
    fill_lease: str | None = None
    owner_epoch: int | None = None
    operation: Operation = Operation.NONE
    write_value: JSONValue = None
    write_id: str | None = None
    write_conditional: bool = False
    write_expected: int | None = None
    write_existed: bool | None = None

    @property
    def data_pending(self) -> bool:
        """The core asked the adapter to read data (HOME_READ/L2_READ) and waits for it."""
        return self.request is Request.DATA and self.data == NO_VERSION

    @property
    def idle(self) -> bool:
        """Invalid, nothing in flight, nothing missed: forgetting it loses only the floor."""
        return (
            self.state is L1State.I
            and self.request is Request.NONE
            and self.operation is Operation.NONE
            and not self.missed
            and self.fill_lease is None
            and self.owner_epoch is None
        )


@dataclass(frozen=True, slots=True)
class Action:
    """An effect the adapter must perform, with the data it needs."""

    effect: Effect
    version: int | None = None
    value: JSONValue = None
    fill_lease: str | None = None
    owner_epoch: int | None = None
    operation_id: str | None = None
    conditional: bool = False
    expected: int | None = None
    existed: bool | None = None


@dataclass(frozen=True, slots=True)
class Step:
    """The result of one event: the row (or refusal), the move, and the actions to perform.

    `script_effects` are the effects of the row that the answering server script already
    performed (its answer was the payload); they are listed for tracing, never to be redone.
    """

    key: str
    event: Event
    guard: Guard | None
    source: L1State
    target: L1State
    outcome: Outcome
    rule: Rule | None
    refusal: Refusal | None
    actions: tuple[Action, ...] = ()
    script_effects: tuple[Effect, ...] = ()

    @property
    def fired(self) -> bool:
        """A row matched and was executed."""
        return self.outcome is Outcome.FIRED

    @property
    def stalled(self) -> bool:
        """The event must be held and fed again later."""
        return self.outcome is Outcome.STALLED


type LocalView = tuple[Request, bool, int]
"""The local fields the model has too: what the entry waits for, whether the bus missed
messages, the operation in progress (0 none, 1 read, 2 write)."""


@dataclass(frozen=True, slots=True)
class TraceRecord:
    """One executed transition, for replaying production traces through the spec: the row's
    source, event, guard, target and effects, the payload, and the entry's `LocalView` before
    and after it."""

    key: str
    source: L1State
    event: Event
    guard: Guard
    target: L1State
    effects: tuple[Effect, ...]
    payload: Payload
    before: LocalView = (Request.NONE, False, 0)
    after: LocalView = (Request.NONE, False, 0)


type Tracer = Callable[[TraceRecord], None]


@dataclass(frozen=True, slots=True)
class _Cell:
    rules: tuple[Rule, ...]
    refusals: tuple[Refusal, ...]


type _Index = dict[tuple[RowKey, Event], _Cell]
_INDEX_CACHE: dict[tuple[int, int, Mode], tuple[tuple[Rule, ...], tuple[Refusal, ...], _Index]] = {}
_INDEX_CACHE_MAX: Final = 32


def _index(table: tuple[Rule, ...], refusals: tuple[Refusal, ...], mode: Mode) -> _Index:
    """The rows and refusals of `table` by (source, event) in `mode` (cached per table)."""
    cached = _INDEX_CACHE.get((id(table), id(refusals), mode))
    if cached is not None and cached[0] is table and cached[1] is refusals:
        return cached[2]
    if len(_INDEX_CACHE) >= _INDEX_CACHE_MAX:
        _INDEX_CACHE.clear()
    index = _build_index(table, refusals, mode)
    _INDEX_CACHE[(id(table), id(refusals), mode)] = (table, refusals, index)
    return index


def _build_index(table: tuple[Rule, ...], refusals: tuple[Refusal, ...], mode: Mode) -> _Index:
    rules_by: dict[tuple[RowKey, Event], list[Rule]] = {}
    refusals_by: dict[tuple[RowKey, Event], list[Refusal]] = {}
    for rule in table:
        if mode in rule.modes:
            rules_by.setdefault((rule.source, rule.event), []).append(rule)
    for refusal in refusals:
        if mode in refusal.modes:
            refusals_by.setdefault((refusal.source, refusal.event), []).append(refusal)
    return {
        key: _Cell(tuple(rules_by.get(key, ())), tuple(refusals_by.get(key, ())))
        for key in rules_by.keys() | refusals_by.keys()
    }


def _hit_guards(index: _Index) -> dict[L1State, Guard]:
    """The states whose READ row is a pure hit (stay, only RETURN_VALUE) and its guard, when
    ALWAYS or CONN_OK and no refusal can hold together with it."""
    hits: dict[L1State, Guard] = {}
    for state in L1State:
        cell = index.get((state, Event.READ))
        if cell is None:
            continue
        for rule in cell.rules:
            if (
                rule.target is state
                and rule.effects == (Effect.RETURN_VALUE,)
                and rule.guard in (Guard.ALWAYS, Guard.CONN_OK)
                and not any(f.guard in (None, rule.guard) for f in cell.refusals)
                and len([r for r in cell.rules if r.guard in (Guard.ALWAYS, rule.guard)]) == 1
            ):
                hits[state] = rule.guard
    return hits


class AgentCore:
    """One agent's L1 entries, driven by the protocol table; does no I/O.

    `table`/`refusals` default to the spec's objects (`core.table is sagemem.spec.TABLE`); pass
    a mutated table to run production code against a mutant. `tracer`, if given, is called
    with a `TraceRecord` for every executed row.
    """

    __slots__ = ("_entries", "_hit_guards", "_index", "mode", "refusals", "table", "tracer")

    def __init__(
        self,
        mode: Mode = Mode.COHERENT,
        *,
        table: tuple[Rule, ...] = TABLE,
        refusals: tuple[Refusal, ...] = REFUSALS,
        tracer: Tracer | None = None,
    ) -> None:
        if not isinstance(mode, Mode):
            raise ConfigurationError(
                f"mode must be a sagemem.spec.Mode (Mode.COHERENT or Mode.STRICT), got {mode!r}"
            )
        self.mode: Final = mode
        self.table: Final = table
        self.refusals: Final = refusals
        self.tracer = tracer
        self._index: Final = _index(table, refusals, mode)
        self._hit_guards: Final = _hit_guards(self._index)
        self._entries: dict[str, EntryCore] = {}

    @classmethod
    def from_definition(
        cls, definition: ProtocolDefinition, *, tracer: Tracer | None = None
    ) -> AgentCore:
        """A core executing the table, refusals and mode of a spec `ProtocolDefinition`."""
        return cls(
            definition.mode, table=definition.table, refusals=definition.refusals, tracer=tracer
        )

    # -- reading ---------------------------------------------------------------------------

    def state(self, key: str) -> L1State:
        """The L1 state of `key` (I for a key never seen)."""
        entry = self._entries.get(key)
        return L1State.I if entry is None else entry.state

    def snapshot(self, key: str) -> EntryCore:
        """A copy of what the core knows about `key` (changing it changes nothing)."""
        entry = self._entries.get(key)
        return EntryCore() if entry is None else dataclasses.replace(entry)

    def request(self, key: str) -> Request:
        """What the adapter waits for on `key` (`snapshot(key).request` without the copy)."""
        entry = self._entries.get(key)
        return Request.NONE if entry is None else entry.request

    def keys(self) -> tuple[str, ...]:
        """Every key the core holds an entry for."""
        return tuple(self._entries)

    def __contains__(self, key: object) -> bool:
        return key in self._entries

    def __iter__(self) -> Iterator[str]:
        """The keys the core holds an entry for (a snapshot: handling events meanwhile is safe)."""
        return iter(tuple(self._entries))

    def load(self, key: str, entry: EntryCore) -> None:
        """Install a copy of `entry` as the entry of `key` (restore a snapshot; the conformance
        tests seed a core from a state of the spec model)."""
        self._entries[key] = dataclasses.replace(entry)

    def forget(self, key: str) -> bool:
        """Drop the entry of `key` if it is idle (bounds memory); True if it was dropped.

        Only the floor is lost, which is safe: L2 never goes back and the home only moves
        forward, so a later fill cannot return a version older than one this agent saw.
        """
        entry = self._entries.get(key)
        if entry is None:
            return True
        if not entry.idle:
            return False
        del self._entries[key]
        return True

    def branches(self, key: str, event: Event) -> Mapping[Guard, tuple[Effect, ...]]:
        """For a server step in the entry's current state: each branch (guard) the script may
        take, with the script effects it must perform atomically in that branch."""
        cell = self._index.get((self.state(key), event))
        if cell is None:
            return {}
        return {
            rule.guard: tuple(e for e in rule.effects if e in SCRIPT_EFFECTS) for rule in cell.rules
        }

    def shared_row(self, event: Event, guard: Guard) -> Rule | Refusal:
        """The row (or refusal) of a shared actor's event (OUTBOX_RELAY, HOME_EXPIRE_OWNER,
        HOLDER_EXPIRE, L2_EVICT, ...) for the guard the server evaluated."""
        site = EVENT_SITE[event]
        if site is Site.AGENT:
            raise ProtocolError(
                f"{event.name} is an agent event: feed it to handle(key, event, payload)"
            )
        actor = {Site.HOME: ActorState.HOME, Site.REDIS: ActorState.REDIS}.get(site, ActorState.BUS)
        cell = self._index.get((actor, event))
        for rule in cell.rules if cell else ():
            if rule.guard is guard:
                return rule
        for refusal in cell.refusals if cell else ():
            if refusal.guard is None or refusal.guard is guard:
                if refusal.kind is RefusalKind.IMPOSSIBLE:
                    break
                return refusal
        raise ProtocolError(
            f"the protocol table has no row for ({actor.name}, {event.name}, {guard.name}) in "
            f"mode {self.mode.value}: the server reported a branch the table does not allow"
        )

    # -- deciding and executing ------------------------------------------------------------

    def hit(self, key: str) -> tuple[int, JSONValue] | None:
        """READ's fast path: (version, value) if the table answers READ in the entry's state by
        a row that only returns the copy (e.g. S [conn_ok], E, M); else None: call `handle`.

        Exactly `handle(key, Event.READ)` for those rows (the floor rises to the version), in a
        fraction of the time. Compiled from the table at construction, so a mutant changes it
        too; disabled while a tracer is set, so that every row is traced.
        """
        entry = self._entries.get(key)
        if entry is None or self.tracer is not None:
            return None
        guard = self._hit_guards.get(entry.state)
        if guard is None or not _GUARD_CODE[guard](entry, entry.data, NO_PAYLOAD):
            return None
        if entry.version > entry.floor:
            entry.floor = entry.version
        return entry.version, entry.value

    def decide(self, key: str, event: Event, payload: Payload = NO_PAYLOAD) -> Rule | Refusal:
        """The row (or STALLED/NOT_APPLICABLE refusal) `handle` would execute; changes nothing.

        A void recall (see `Outcome.VOIDED`) is reported as a NOT_APPLICABLE refusal.

        Raises `ProtocolError` for an IMPOSSIBLE refusal, a missing or doubled row, an event
        that is not the agent's, or a payload that lacks what the event needs.
        """
        entry = self._entries.get(key) or EntryCore()
        if _voided_recall(entry, event, payload):
            return Refusal(
                entry.state,
                event,
                None,
                RefusalKind.NOT_APPLICABLE,
                "a recall for a grant this agent no longer holds is void",
            )
        return self._decide(key, entry, event, payload)[0]

    def handle(self, key: str, event: Event, payload: Payload = NO_PAYLOAD) -> Step:
        """Execute `event` on the entry of `key` and return what the adapter must do."""
        entry = self._entries.get(key)
        if entry is None:
            entry = EntryCore()
        source = entry.state
        if _voided_recall(entry, event, payload):
            return Step(key, event, None, source, source, Outcome.VOIDED, None, None)
        chosen, guard = self._decide(key, entry, event, payload)
        if isinstance(chosen, Refusal):
            outcome = (
                Outcome.STALLED if chosen.kind is RefusalKind.STALLED else Outcome.NOT_APPLICABLE
            )
            return Step(key, event, guard, source, source, outcome, None, chosen)
        self._entries.setdefault(key, entry)
        before = (entry.request, entry.missed, int(entry.operation))
        actions, script = self._execute(entry, chosen, payload)
        assert guard is not None
        if self.tracer is not None:
            after = (entry.request, entry.missed, int(entry.operation))
            self.tracer(
                TraceRecord(
                    key, source, event, guard, entry.state, chosen.effects, payload, before, after
                )
            )
        return Step(
            key, event, guard, source, entry.state, Outcome.FIRED, chosen, None, actions, script
        )

    def connection_lost(self, event: Event = Event.DISCONNECT) -> tuple[Step, ...]:
        """The bus listener detected a loss (DISCONNECT, or DROP_MESSAGE for a sequence gap):
        run the bus row for every entry, so each stays unusable until its RESYNC."""
        if event not in _BUS_EVENTS:
            raise ProtocolError(
                f"{event.name} is not a bus event; use one of {sorted(e.name for e in _BUS_EVENTS)}"
            )
        return tuple(self.handle(key, event) for key in tuple(self._entries))

    # -- internals -------------------------------------------------------------------------

    def _row_key(self, entry: EntryCore, event: Event) -> RowKey:
        site = EVENT_SITE[event]
        if site is Site.AGENT:
            return entry.state
        if site is Site.BUS:
            return ActorState.BUS
        raise ProtocolError(
            f"{event.name} runs at the {site.value} (a server script), not in an agent's core; "
            "use shared_row(event, guard) to get its effects"
        )

    def _decide(
        self, key: str, entry: EntryCore, event: Event, payload: Payload
    ) -> tuple[Rule | Refusal, Guard | None]:
        row_key = self._row_key(entry, event)
        where = f"key {key!r} in state {entry.state.name}, event {event.name}"
        cell = self._index.get((row_key, event))
        if cell is None:
            raise ProtocolError(
                f"the protocol table has no row or refusal for ({row_key.name}, {event.name}) "
                f"in mode {self.mode.value} ({where}); add one to spec/table.py"
            )
        if event in SERVER_STEP_EVENTS and payload.branch is None:
            raise ProtocolError(
                f"{where}: the payload must carry the server script's branch (a Guard, one of "
                f"{sorted(r.guard.name for r in cell.rules)})"
            )
        if event is Event.DELIVER_INVALIDATE and payload.version is None:
            raise ProtocolError(f"{where}: the payload must carry the invalidation's version")
        if event is Event.DELIVER_UPDATE and (payload.version is None or payload.value is ABSENT):
            raise ProtocolError(f"{where}: the payload must carry the update's version and value")
        data = entry.data
        if event is Event.FILL_DATA and payload.version is not None:
            data = payload.version
        matched = [r for r in cell.rules if self._holds(r.guard, entry, data, payload)]
        refused = [
            f
            for f in cell.refusals
            if f.guard is None or self._holds(f.guard, entry, data, payload)
        ]
        if len(matched) > 1:
            raise ProtocolError(
                f"{where}: {len(matched)} rows match (guards "
                f"{[r.guard.name for r in matched]}); the table must be deterministic"
            )
        if matched and refused:
            raise ProtocolError(
                f"{where}: row [{matched[0].guard.name}] and a {refused[0].kind.value} refusal "
                "both match; the table must not overlap"
            )
        if matched:
            rule = matched[0]
            self._check_answer(where, rule, entry, payload, data)
            return rule, rule.guard
        if not refused:
            branch = f" (server branch {payload.branch.name})" if payload.branch else ""
            raise ProtocolError(
                f"{where}{branch}: no row or refusal matches in mode {self.mode.value}; "
                f"the rows here have guards {[r.guard.name for r in cell.rules]}"
            )
        refusal = refused[0]
        if refusal.kind is RefusalKind.IMPOSSIBLE:
            raise ProtocolError(
                f"{where}, guard {refusal.guard.name if refusal.guard else 'any'}: the table "
                f"says this cannot happen ({refusal.reason}); this is a protocol bug"
            )
        return refusal, refusal.guard

    def _holds(self, guard: Guard, entry: EntryCore, data: int, payload: Payload) -> bool:
        """Whether `guard` holds: its condition (`sagemem.spec.meaning.GUARDS`) compiled over
        local data and the answer, or, server-side, the branch the server's script took."""
        return _GUARD_CODE[guard](entry, data, payload)

    def _check_answer(
        self, where: str, rule: Rule, entry: EntryCore, payload: Payload, data: int
    ) -> None:
        """Refuse, before anything changes, a payload that lacks what the row's effects need,
        and a row that would answer an operation nobody started."""
        server = rule.event in SERVER_STEP_EVENTS
        if rule.event is Event.FILL_DATA and data == NO_VERSION:
            raise ProtocolError(f"{where}: no fill data; pass the version read in the payload")
        operation = _OPERATION_OF.get(rule.event, entry.operation)
        for effect in rule.effects:
            if server and effect in _NEEDS_VERSION and payload.version is None:
                raise ProtocolError(
                    f"{where}: the script's answer for {effect.name} must carry the version"
                )
            if server and effect is Effect.L2_TAKE_LEASE and payload.fill_lease is None:
                raise ProtocolError(f"{where}: the fill script's answer must carry its lease")
            if effect in (Effect.RETURN_VALUE, Effect.RETURN_VALUE_UNCACHED):
                if operation is not Operation.READ:
                    raise ProtocolError(f"{where}: {effect.name} but no read is in progress")
                operation = Operation.NONE
            elif effect in (Effect.ACK_WRITE, Effect.REPORT_CONFLICT):
                if operation is not Operation.WRITE:
                    raise ProtocolError(f"{where}: {effect.name} but no write is in progress")
                operation = Operation.NONE
            elif effect is Effect.LOSE_VOLATILE_STATE:
                operation = Operation.NONE

    def _execute(
        self, entry: EntryCore, rule: Rule, payload: Payload
    ) -> tuple[tuple[Action, ...], tuple[Effect, ...]]:
        event = rule.event
        server = event in SERVER_STEP_EVENTS
        if isinstance(rule.target, L1State):
            entry.state = rule.target
        operation = _OPERATION_OF.get(event)
        if operation is not None:
            entry.operation = operation
            if operation is Operation.WRITE:
                entry.write_value = payload.value
                entry.write_id = payload.operation_id
                entry.write_conditional = payload.conditional
                entry.write_expected = payload.expected
                owned = rule.source in (L1State.E, L1State.M)
                entry.write_existed = (entry.value is not ABSENT) if owned else None
        if event is Event.FILL_DATA and payload.version is not None:
            entry.data, entry.data_value = payload.version, payload.value
        actions: list[Action] = []
        script: list[Effect] = []
        for effect in rule.effects:
            by_script = server and effect in SCRIPT_EFFECTS
            action = self._apply(effect, entry, payload, by_script)
            if by_script:
                script.append(effect)
            elif action is not None:
                actions.append(action)
        return tuple(actions), tuple(script)

    def _apply(  # one case per effect, by design (mirrors sagemem.spec.model._apply)
        self, effect: Effect, entry: EntryCore, payload: Payload, by_script: bool
    ) -> Action | None:
        """Apply the local part of `effect`; return the action the adapter performs, if any."""
        action = None if effect in LOCAL_EFFECTS else Action(effect)
        match effect:
            case Effect.RETURN_VALUE:
                action = Action(effect, version=entry.version, value=entry.value)
                entry.floor = max(entry.floor, entry.version)
                entry.operation = Operation.NONE
            case Effect.RETURN_VALUE_UNCACHED:
                action = Action(effect, version=entry.data, value=entry.data_value)
                entry.floor = max(entry.floor, entry.data)
                entry.data, entry.data_value = NO_VERSION, None
                entry.request = Request.NONE
                entry.operation = Operation.NONE
            case Effect.INSTALL_COPY:
                entry.version, entry.value = entry.data, entry.data_value
                entry.data, entry.data_value = NO_VERSION, None
                entry.request = Request.NONE
            case Effect.DROP_COPY:
                entry.version, entry.value = NO_VERSION, None
            case Effect.NOTE_INVALIDATION:
                if payload.version is not None:
                    entry.floor = max(entry.floor, payload.version)
            case Effect.INSTALL_UPDATE:
                assert payload.version is not None  # checked in _decide
                entry.version, entry.value = payload.version, payload.value
            case Effect.ACK_WRITE:
                action = Action(
                    effect,
                    version=entry.version,
                    operation_id=entry.write_id,
                    existed=entry.write_existed,
                )
                entry.value, entry.write_value = entry.write_value, None
                entry.write_id, entry.write_conditional, entry.write_expected = None, False, None
                entry.write_existed = None
                entry.floor = max(entry.floor, entry.version)
                entry.request = Request.NONE
                entry.operation = Operation.NONE
            case Effect.START_OWNER_LEASE:
                action = Action(effect, owner_epoch=entry.owner_epoch)
                entry.owner_lease = True
            case Effect.LEASE_LAPSED:
                entry.owner_lease = False
                entry.read_lease = False
            case Effect.REPORT_CONFLICT:
                action = Action(effect, version=payload.version, operation_id=entry.write_id)
                entry.write_value = None
                entry.write_id, entry.write_conditional, entry.write_expected = None, False, None
                entry.write_existed = None
                entry.request = Request.NONE
                entry.operation = Operation.NONE
            case Effect.REPORT_FENCED:
                action = Action(effect, version=entry.version, value=entry.value)
                entry.version, entry.value = NO_VERSION, None
                entry.request = Request.NONE
                entry.owner_lease = False
                entry.owner_epoch = None
            case Effect.RESYNC_CONNECTION:
                entry.missed = False
            case Effect.LOSE_VOLATILE_STATE:
                fresh = EntryCore(state=entry.state)
                for field in dataclasses.fields(EntryCore):
                    setattr(entry, field.name, getattr(fresh, field.name))
            case Effect.REFETCH | Effect.REQUEST_FILL:
                entry.data, entry.data_value = NO_VERSION, None
                entry.request = Request.FILL
            case Effect.MARK_DIRTY:
                pass  # the target state (M) records it; the value arrives with ACK_WRITE
            case Effect.AWAIT_INVALIDATIONS:
                action = Action(effect, version=entry.version)
                entry.request = Request.SETTLE
            case Effect.AWAIT_OWNER:
                entry.request = Request.WAIT_OWNER
            case Effect.REQUEST_COMMIT:
                action = Action(
                    effect,
                    value=entry.write_value,
                    owner_epoch=entry.owner_epoch,
                    operation_id=entry.write_id,
                    conditional=entry.write_conditional,
                    expected=entry.write_expected,
                )
                entry.request = Request.COMMIT
            case Effect.REQUEST_OWNERSHIP:
                entry.request = Request.ACQUIRE
            case Effect.REQUEST_WRITE_BACK | Effect.REQUEST_FLUSH:
                action = Action(
                    effect, version=entry.version, value=entry.value, owner_epoch=entry.owner_epoch
                )
                entry.request = (
                    Request.WRITE_BACK if effect is Effect.REQUEST_WRITE_BACK else Request.FLUSH
                )
            case Effect.SEND_RECALL:
                action = Action(effect, owner_epoch=payload.owner_epoch)
            case Effect.MARK_MISSED:
                entry.missed = True
            case Effect.DIRECTORY_ADD_HOLDER:
                if self.mode is Mode.STRICT:
                    entry.read_lease = True  # registration starts the holder's read lease
            case Effect.DIRECTORY_REMOVE_HOLDER:
                entry.read_lease = False
            case Effect.L2_READ | Effect.HOME_READ:
                if by_script:
                    entry.data, entry.data_value = _version(payload), payload.value
                else:  # the adapter reads and feeds the answer as FILL_DATA's payload
                    entry.data, entry.data_value = NO_VERSION, None
                if effect is Effect.L2_READ:
                    entry.fill_lease = None
                entry.request = Request.DATA
            case Effect.L2_TAKE_LEASE:
                if by_script:
                    entry.fill_lease = payload.fill_lease
            case Effect.L2_LEASED_FILL:
                action = Action(
                    effect, version=entry.data, value=entry.data_value, fill_lease=entry.fill_lease
                )
                entry.fill_lease = None
            case Effect.L2_ABANDON_LEASE:
                action = Action(effect, fill_lease=entry.fill_lease)
                entry.fill_lease = None
            case Effect.L2_FILL_IF_NEWER:
                action = Action(effect, version=entry.data, value=entry.data_value)
            case Effect.HOME_COMMIT_VERSION:
                if payload.version is not None:
                    entry.version = payload.version
                if entry.write_existed is None:
                    entry.write_existed = payload.existed
                entry.request = Request.SETTLE
                entry.owner_lease = False  # the commit releases this agent's grant, if any
                entry.owner_epoch = None
            case Effect.HOME_RESERVE_AND_GRANT:
                if payload.version is not None:
                    entry.version = payload.version
                entry.owner_epoch = payload.owner_epoch
                entry.request = Request.SETTLE
            case Effect.HOME_STORE_AND_RELEASE:
                entry.owner_lease = False
                entry.owner_epoch = None
                entry.request = Request.NONE
            case Effect.HOME_STORE_KEEP_GRANT:
                entry.request = Request.NONE
            case Effect.HOME_STORE_UNFENCED:
                entry.version, entry.value = NO_VERSION, None
                entry.owner_lease = False
                entry.owner_epoch = None
                entry.request = Request.NONE
            case _:
                pass  # no local data: the bus, the directory, L2 or the home change
        return action


_NEEDS_VERSION: Final = frozenset(
    {
        Effect.L2_READ,
        Effect.HOME_READ,
        Effect.HOME_COMMIT_VERSION,
        Effect.HOME_RESERVE_AND_GRANT,
    }
)


def _voided_recall(entry: EntryCore, event: Event, payload: Payload) -> bool:
    """A recall tagged with another grant's epoch than the one this entry holds is void.

    The spec's interpreter voids the recalls of a grant when it is released or revoked
    (`model._void_recalls`); production tags each recall with the grant's epoch and ignores
    a stale one on arrival. An untagged recall is taken at face value.
    """
    return (
        event is Event.DELIVER_RECALL
        and payload.owner_epoch is not None
        and payload.owner_epoch != entry.owner_epoch
    )


def _version(payload: Payload) -> int:
    assert payload.version is not None  # _check_answer refused the answer otherwise
    return payload.version


class _LocalGuardReader(Renderer):
    """The core's reader of a guard's condition: Python over an `EntryCore`, the fill data (the
    answer's, for FILL_DATA) and the payload. A comparison with the message's version is false
    when the payload carries none."""

    _FIELDS: Final = {
        "ver": "entry.version",
        "data": "data",
        "floor": "entry.floor",
        "missed": "entry.missed",
    }

    def field(self, field: Field) -> str:
        if field.owner != "agent" or field.name not in self._FIELDS:
            raise ValueError(f"{field} is server-side: the core cannot read it")
        return self._FIELDS[field.name]

    def announced(self) -> str:
        return "payload.version"

    def compare(self, cmp: Cmp) -> str:
        text = super().compare(cmp)
        if isinstance(cmp.left, Announced) or isinstance(cmp.right, Announced):
            return f"(payload.version is not None and {text})"
        return text


type _GuardCode = Callable[[EntryCore, int, Payload], bool]


def _compile_guard(guard: Guard) -> _GuardCode:
    if server_side(guard):

        def answered(entry: EntryCore, data: int, payload: Payload, _guard: Guard = guard) -> bool:
            return payload.branch is _guard

        return answered
    reader = _LocalGuardReader()
    body = [f"    return {reader.expr(GUARDS[guard])}"]
    name = f"guard_{guard.name.lower()}"
    function = compile_function(name, "entry, data, payload", (), body, reader.namespace)
    return cast(_GuardCode, function)


_GUARD_CODE: Final[dict[Guard, _GuardCode]] = {guard: _compile_guard(guard) for guard in Guard}
