"""The interpreter: what every guard and effect of the table MEANS, over a global state of one key.

The global `State` holds N agents (L1 entry, what the agent knows locally, its messages in
flight, and its directory/home/L2 records), the home (version, outbox, whether the newest data
still sits at the owner), the L2 copy, and ghost fields for trace properties (reads seen,
writes acknowledged, completed writes, the first violation observed). Values are versions:
the value of version n is whatever the write that created version n wrote.

`successors(defn, state)` enumerates every enabled step (one table row for one subject); a
(state, event) the table does not handle, or handles twice, or lists as impossible, becomes a
step into a state whose `violation` field says so, so every checker reports it as a failure.

Standard library only; no I/O. The meaning of each guard and effect is stated once, as data,
in `meaning` (`GUARDS`, `EFFECTS`); this interpreter compiles it to Python functions at import
and runs those. The few effects `meaning.EFFECTS_IN_CODE` lists keep code here (`_apply`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Final, NamedTuple, cast

from .codes import (
    GRANT_DEAD_INCARNATION,
    GRANT_LIVE_INCARNATION,
    NO_GRANT,
    OP_NONE,
    OP_READ,
    OP_WRITE,
    RECALL,
    UPDATE_BASE,
    Request,
    is_update,
    message_version,
)
from .meaning import (
    EFFECTS,
    GUARDS,
    Announced,
    Field,
    Renderer,
    compile_function,
    effect_needs_subject,
    guard_needs_subject,
    nodes,
)
from .table import REFUSALS, TABLE, Refusal, RefusalKind, RowKey, Rule
from .vocabulary import (
    EVENT_KIND,
    EVENT_SITE,
    STABLE_STATES,
    ActorState,
    Effect,
    Event,
    EventKind,
    Guard,
    L1State,
    Mode,
    Site,
)

__all__ = [
    "ALL_FAULTS",
    "CUT_NOTICED",
    "CUT_UNNOTICED",
    "DEEP_BOUNDS",
    "DEEP_FORGET_BOUNDS",
    "DIRECTORY_FORGETS",
    "DIRECTORY_WAITS",
    "FAULT_EVENT_SET",
    "FORGET_BOUNDS",
    "GRANT_DEAD_INCARNATION",
    "GRANT_LIVE_INCARNATION",
    "LEAVE",
    "LINK_LOST",
    "MESSAGE_EVENTS",
    "NO_GRANT",
    "OPERATION",
    "OP_NONE",
    "OP_READ",
    "OP_WRITE",
    "QUICK_BOUNDS",
    "RECALL",
    "REQUEST_ALTERNATIVE",
    "REQUEST_EVENT",
    "ROLLBACK_TO",
    "SITE_KEY",
    "UNENCODED_AGENT_FIELDS",
    "UNENCODED_GLOBAL_FIELDS",
    "UPDATE_BASE",
    "USER_OFFERED",
    "VERSION_CREATING",
    "AgentState",
    "Bounds",
    "ProtocolDefinition",
    "Request",
    "State",
    "Transition",
    "canonical",
    "consulted_refusals",
    "consults_no_row",
    "deep",
    "definitions",
    "describe",
    "directory_young",
    "forgetting",
    "holds",
    "initial_state",
    "is_forget",
    "is_link_lost",
    "is_rollback",
    "is_update",
    "message_version",
    "offer_transitions",
    "offers",
    "quick",
    "successors",
    "transitions",
]


class AgentState(NamedTuple):
    """One agent's view of the key plus its records held by the directory, home and L2.

    No field stores an agent id, so sorting agents is a sound symmetry reduction.
    """

    st: L1State
    ver: int  # version of the L1 copy (S/E/M/...), or the committed version (WT_A/IM_A); -1 none
    data: int  # version of fill data in flight; -1 none
    floor: int  # newest version this agent has read, written or been told about (local)
    missed: bool  # the bus lost a message to this agent and it has not resynced yet
    inbox: tuple[int, ...]  # messages in flight to it, sorted (RECALL=0, INV(n)=n,
    # UPD(n)=UPDATE_BASE+n)
    req: Request
    lease: bool  # its owner lease is live by its own clock
    rlease: bool  # strict: its read lease (from registration as holder) is live by its own clock
    registered: bool  # directory: listed as a holder
    ack_owed: bool  # directory (strict): owes an acknowledgement
    grant: int  # home: 0 none, 1 this incarnation owns the key, 2 a dead incarnation does
    l2_lease: bool  # L2: holds a valid fill lease
    unsaved: bool  # ghost: it holds an acknowledged write the home does not have
    op: int  # ghost: the application operation in progress (0 none, 1 read, 2 write)
    told: int  # ghost: highest invalidation version delivered to this agent (this process)
    # values (not encoded for Z3: see UNENCODED_AGENT_FIELDS)
    val: int  # value id of the L1 copy (paired with `ver`); -1 none
    dval: int  # value id of the fill data in flight (paired with `data`); -1 none
    gone: bool  # the agent left (closed) for good: it takes no further step (see LEAVE)
    rstart: int  # ghost (coherent): the highest completed write when this agent's read began,
    # if that is above its floor (else 0: the floor check is stronger; strict mode's
    # linearizable_reads is stronger still)
    restored: bool  # ghost: its fill data or copy came from an L2 copy a rollback restored
    # the directory forgetting (see DIRECTORY_FORGETS; not encoded for Z3)
    cut: int = 0  # its bus link went down with the directory's primary (the directory forgot):
    # CUT_UNNOTICED (it hears nothing and still serves its copies), CUT_NOTICED (missed
    # messages noticed, not yet resynchronised), else 0


class State(NamedTuple):
    """The global state of one key. Hashable; `canonical()` sorts the agents."""

    agents: tuple[AgentState, ...]
    home: int  # the home's version (the initial value is version 0)
    outbox: int  # version whose invalidations are still to be relayed; 0 none
    dirty: bool  # the data of version `home` is at the owner, not at the home
    l2: int  # version of the L2 copy; -1 empty
    l2_high: int  # ghost: highest version L2 ever held
    commits: int  # ghost: successful compare-and-swaps / grants at the home
    writes: int  # bound: version-creating writes started so far
    faults: int  # bound: FAULT-kind events (and lease lapses) taken so far
    done: int  # ghost (strict): highest version of a completed (acknowledged) write
    read_max: int  # ghost (strict): highest version any read returned
    violation: str  # ghost: first trace property broken, or a table defect; "" none
    # values (not encoded for Z3: see UNENCODED_GLOBAL_FIELDS)
    hval: int  # value id the home stores (under `home` unless `dirty`: then the owner's is newer)
    l2val: int  # value id of the L2 copy (paired with `l2`); -1 empty
    names: tuple[int, ...]  # ghost: names[v] is the value id version v was created with
    completed: int  # ghost (both modes): highest version of a completed (acknowledged) write
    # the L2 rollback (see ROLLBACK_TO; not encoded for Z3)
    l2_restored: bool  # ghost: the L2 copy was put back by a rollback, not by a protocol step


UNENCODED_AGENT_FIELDS: Final = frozenset({"val", "dval", "rstart", "gone", "restored", "cut"})
"""Agent fields of the value level and the read guarantees: checked by the explorer (and the
hostile scenarios), not encoded for Z3 (the Z3 encoding is the version-level abstraction)."""
UNENCODED_GLOBAL_FIELDS: Final = frozenset({"hval", "l2val", "names", "completed", "l2_restored"})
"""Global fields of the value level and of the L2 rollback, not encoded for Z3 (see
UNENCODED_AGENT_FIELDS and ROLLBACK_TO)."""


FAULT_EVENTS: Final[tuple[Event, ...]] = (
    *(e for e, k in EVENT_KIND.items() if k is EventKind.FAULT),
    Event.LEASE_LAPSE,
)
ALL_FAULTS: Final[frozenset[Event]] = frozenset(FAULT_EVENTS)


@dataclass(frozen=True, slots=True)
class ProtocolDefinition:
    """What every checker checks: a table, a mode and the bounds of the exploration.

    Mutate with `dataclasses.replace(defn, table=...)`. `faults` lists the FAULT events (and
    LEASE_LAPSE) that may happen (all of them by default); `fault_budget` bounds how many of
    them one run takes (None: unbounded). Protocol timers (RETRY, expiries) are always on.
    """

    mode: Mode = Mode.COHERENT
    table: tuple[Rule, ...] = field(default=TABLE, repr=False)
    refusals: tuple[Refusal, ...] = field(default=REFUSALS, repr=False)
    agents: int = 3
    writes: int = 2
    faults: frozenset[Event] = ALL_FAULTS
    fault_budget: int | None = 1
    name: str = field(default="", compare=False)
    leaves: bool = False  # environment: an idle agent may leave (close) for good (see LEAVE)
    l2_rollback: bool = False  # environment: L2 may go back to an older snapshot (ROLLBACK_TO)
    # write-update: a write-through's relay may publish updates (OUTBOX_RELAY_UPDATE) instead
    # of invalidations; both relays stay offered, as production falls back to invalidating
    write_update: bool = False
    # environment: the directory's Redis primary fails over and forgets (DIRECTORY_FORGETS)
    directory_forgets: bool = False

    def __post_init__(self) -> None:
        if not 1 <= self.agents <= 6:
            raise ValueError(f"agents={self.agents} is out of range; use 1..6")
        if not 0 <= self.writes <= 6:
            raise ValueError(f"writes={self.writes} is out of range; use 0..6")
        if self.fault_budget is not None and self.fault_budget < 0:
            raise ValueError(f"fault_budget={self.fault_budget} must be >= 0 or None")
        unknown = self.faults - ALL_FAULTS
        if unknown:
            raise ValueError(
                f"faults {sorted(e.name for e in unknown)} are not fault/timer events; "
                f"choose from {sorted(e.name for e in ALL_FAULTS)}"
            )


@dataclass(frozen=True, slots=True)
class Bounds:
    """One exploration bound: agents, version-creating writes, faults per run."""

    agents: int
    writes: int
    fault_budget: int | None


QUICK_BOUNDS: Final[tuple[Bounds, ...]] = (Bounds(3, 1, 1), Bounds(2, 2, 1))
"""`sagemem check`: 3 agents with every fault event, and 2 writes (two runs per mode)."""

DEEP_BOUNDS: Final[tuple[Bounds, ...]] = (Bounds(3, 2, 1), Bounds(4, 1, 1))
"""`sagemem check --deep`: 3 agents with 2 writes, and 4 agents."""


def definitions(
    mode: Mode, bounds: tuple[Bounds, ...], *, table: tuple[Rule, ...] = TABLE
) -> tuple[ProtocolDefinition, ...]:
    """One ProtocolDefinition per bound, all with every fault event enabled, the L2
    rollback included (`l2_rollback`: an environment fault outside the table), and the
    write-update relay offered beside the invalidating one (`write_update`: production picks
    one per relay, so the definitions offer both)."""
    return tuple(
        ProtocolDefinition(
            mode=mode,
            table=table,
            agents=b.agents,
            writes=b.writes,
            fault_budget=b.fault_budget,
            name=f"{mode.value}-{b.agents}agents-{b.writes}writes-{b.fault_budget}faults",
            l2_rollback=True,
            write_update=True,
        )
        for b in bounds
    )


FORGET_BOUNDS: Final[tuple[Bounds, ...]] = (Bounds(2, 1, 1),)
"""`sagemem check`: the bounds explored with the directory forgetting (`forgetting`), beside
the quick ones: 2 agents, 1 write, the forget as the run's one fault."""

DEEP_FORGET_BOUNDS: Final[tuple[Bounds, ...]] = (Bounds(3, 1, 1), Bounds(2, 2, 1))
"""`sagemem check --deep`: the bounds explored with the directory forgetting, beside the deep
ones (3 agents/1 write is the smallest bound where a strict fill could read an unsettled
version while a cut holder serves the old one; `tests/unit/test_directory_forgets.py` runs
it too)."""


def forgetting(
    mode: Mode, bounds: tuple[Bounds, ...] = FORGET_BOUNDS, *, table: tuple[Rule, ...] = TABLE
) -> tuple[ProtocolDefinition, ...]:
    """One definition per bound in which the directory forgets (DIRECTORY_FORGETS) as the
    run's one fault: no other fault event is offered (nor the L2 rollback), since a run with
    one of them and no forget is a run of the quick (or deep) definitions. The forget
    multiplies the states after it several times over (it cuts every link), so it has bounds
    of its own rather than being on in the quick ones."""
    return tuple(
        dataclasses.replace(
            defn,
            faults=frozenset(),
            l2_rollback=False,
            directory_forgets=True,
            name=f"{defn.name}-forgets",
        )
        for defn in definitions(mode, bounds, table=table)
    )


def quick(mode: Mode, *, table: tuple[Rule, ...] = TABLE) -> tuple[ProtocolDefinition, ...]:
    """The quick definitions of `mode` (see QUICK_BOUNDS)."""
    return definitions(mode, QUICK_BOUNDS, table=table)


def deep(mode: Mode, *, table: tuple[Rule, ...] = TABLE) -> tuple[ProtocolDefinition, ...]:
    """The deep definitions of `mode` (see DEEP_BOUNDS)."""
    return definitions(mode, DEEP_BOUNDS, table=table)


_EMPTY_AGENT: Final = AgentState(
    st=L1State.I,
    ver=-1,
    data=-1,
    floor=0,
    missed=False,
    inbox=(),
    req=Request.NONE,
    lease=False,
    rlease=False,
    registered=False,
    ack_owed=False,
    grant=NO_GRANT,
    l2_lease=False,
    unsaved=False,
    op=0,
    told=0,
    val=-1,
    dval=-1,
    gone=False,
    rstart=0,
    restored=False,
    cut=0,
)


def initial_state(defn: ProtocolDefinition) -> State:
    """Every L1 invalid, L2 empty, the home holding version 0, nothing in flight."""
    return State(
        agents=(_EMPTY_AGENT,) * defn.agents,
        home=0,
        outbox=0,
        dirty=False,
        l2=-1,
        l2_high=-1,
        commits=0,
        writes=0,
        faults=0,
        done=0,
        read_max=0,
        violation="",
        hval=0,
        l2val=-1,
        names=(0,),
        completed=0,
        l2_restored=False,
    )


def canonical(state: State) -> State:
    """Symmetry reduction: agents are interchangeable (no field names another agent)."""
    agents = state[0]
    ordered = tuple(sorted(agents))
    if ordered == agents:
        return state
    return tuple.__new__(State, (ordered, *state[1:]))


class Transition(NamedTuple):
    """One enabled step: who, what, which row (None for a table-defect step, or for a
    NOT_APPLICABLE refusal that consumes the event: then `refusal` is set), where to."""

    event: Event
    kind: EventKind
    agent: int | None
    payload: int
    rule: Rule | None
    target: State
    refusal: Refusal | None = None

    @property
    def label(self) -> str:
        """The step as an event-script line, e.g. "agent2 READ: I -> IS_D {request_fill}"."""
        if self.rule is not None:
            detail = _rule_detail(self.rule)
        elif is_rollback(self.event, self.payload):
            version = self.payload - ROLLBACK_TO
            detail = (
                f"L2 goes back to v{version} (w{self.target.l2val}), an older copy (Redis "
                "restored from an older snapshot)"
            )
        elif is_forget(self.event, self.payload):
            detail = (
                "the directory's primary fails over and its replica forgets every holder, owed "
                "ack and fill lease; every agent's bus link drops (messages in flight lost)"
            )
        elif is_link_lost(self.event, self.payload):
            detail = "the agent notices its bus link dropped (missed messages: RESYNC follows)"
        elif self.refusal is not None:
            detail = f"{self.refusal.source.name} not applicable: {self.refusal.reason}"
            if self.target.violation:
                detail += f" ({self.target.violation})"
        else:
            detail = self.target.violation
        return _label(self.event, self.agent, self.payload, detail)


# ----------------------------------------------------------------------------------------------
# compiled index of a definition


@dataclass(frozen=True, slots=True)
class _Entry:
    rules: tuple[Rule, ...]
    refusals: tuple[Refusal, ...]
    guards: tuple[Guard, ...]


_CACHE: dict[int, tuple[ProtocolDefinition, dict[tuple[RowKey, Event], _Entry]]] = {}


def _index(defn: ProtocolDefinition) -> dict[tuple[RowKey, Event], _Entry]:
    cached = _CACHE.get(id(defn))
    if cached is not None and cached[0] is defn:
        return cached[1]
    keys: set[tuple[RowKey, Event]] = set()
    for r in defn.table:
        keys.add((r.source, r.event))
    for f in defn.refusals:
        keys.add((f.source, f.event))
    index: dict[tuple[RowKey, Event], _Entry] = {}
    for key in keys:
        rules = tuple(r for r in defn.table if (r.source, r.event) == key and defn.mode in r.modes)
        refusals = tuple(
            f for f in defn.refusals if (f.source, f.event) == key and defn.mode in f.modes
        )
        guards = tuple(
            dict.fromkeys([r.guard for r in rules] + [f.guard for f in refusals if f.guard])
        )
        index[key] = _Entry(rules, refusals, guards)
    if len(_CACHE) > 512:
        _CACHE.clear()
    _CACHE[id(defn)] = (defn, index)
    return index


# ----------------------------------------------------------------------------------------------
# guards


_AGENT_INDEX: Final = {name: i for i, name in enumerate(AgentState._fields)}
_STATE_INDEX: Final = {name: i for i, name in enumerate(State._fields)}


_ANNOUNCE: Final = "_announced = payload - _UPDATE_BASE if payload >= _UPDATE_BASE else payload"


class _GuardReader(Renderer):
    """The model's reader of a guard's condition (`meaning.GUARDS`): Python over a `State`."""

    def field(self, field: Field) -> str:
        if field.owner == "key":
            return f"state[{_STATE_INDEX[field.name]}]"
        agent = "ag" if field.owner == "agent" else "_x"
        return f"{agent}[{_AGENT_INDEX[field.name]}]"

    def agents(self) -> str:
        return "state[0]"


def _compile_guard(guard: Guard) -> Callable[[State, int | None, int], bool]:
    condition = GUARDS[guard]
    reader = _GuardReader()
    prologue: list[str] = []
    if guard_needs_subject(guard):
        prologue += ["if a is None:", "    return False", "ag = state[0][a]"]
    if any(isinstance(n, Announced) for n in nodes(condition)):
        prologue.append(
            "_announced = payload - _UPDATE_BASE if payload >= _UPDATE_BASE else payload"
        )
    body = [f"    return {reader.expr(condition)}"]
    function = compile_function(
        f"guard_{guard.name.lower()}", "state, a, payload", tuple(prologue), body, reader.namespace
    )
    return cast(Callable[[State, int | None, int], bool], function)


_GUARD_CODE: Final = {guard: _compile_guard(guard) for guard in GUARDS}


def holds(guard: Guard, state: State, a: int | None, payload: int) -> bool:
    """Whether `guard` holds for subject agent `a` (None for agent-less steps) and payload:
    its condition in `meaning.GUARDS`, compiled once to Python."""
    return _GUARD_CODE[guard](state, a, payload)


# ----------------------------------------------------------------------------------------------
# effects


_new_agent = tuple.__new__
_new_state = tuple.__new__
_AGENT_POOL: dict[AgentState, AgentState] = {}


def _intern(agent: AgentState) -> AgentState:
    """Share equal agent tuples between states (millions of states, a few hundred agents)."""
    if len(_AGENT_POOL) > 200_000:  # interning only saves memory; a fresh pool is as correct
        _AGENT_POOL.clear()
    return _AGENT_POOL.setdefault(agent, agent)


class _Work:
    """A mutable copy of a State while a row's effects run."""

    __slots__ = ("agents", "g")

    def __init__(self, state: State) -> None:
        # fields of mixed types, addressed by the position constants below
        self.agents: list[list[Any]] = [list(ag) for ag in state.agents]
        self.g: list[Any] = list(state[1:])

    def freeze(self) -> State:
        for ag in self.agents:
            if ag[_RES] and ag[_VER] < 0 and ag[_DATA] < 0:
                ag[_RES] = False  # the restored data is gone (dropped, returned or replaced)
        agents = tuple([_intern(_new_agent(AgentState, ag)) for ag in self.agents])
        return _new_state(State, (agents, *self.g))


# field positions
_ST, _VER, _DATA, _FLOOR, _MISSED, _INBOX, _REQ, _LEASE, _RLEASE, _REG, _ACK, _GRANT = range(12)
_L2L, _UNSAVED, _OP, _TOLD, _VAL, _DVAL, _GONE, _RSTART, _RES, _CUT = range(12, 22)
_HOME, _OUTBOX, _DIRTY, _L2, _L2HIGH, _COMMITS, _WRITES, _FAULTS, _DONE, _READMAX, _VIOL = range(11)
_HVAL, _L2VAL, _NAMES, _COMPLETED, _L2RESTORED = range(11, 16)


def _violate(w: _Work, text: str) -> None:
    # `text` must not name an agent: states are compared after sorting the agents
    if not w.g[_VIOL]:
        w.g[_VIOL] = text


def _in_flight(ag: list[Any]) -> bool:
    """An invalidation is addressed to the agent (in its inbox: any one drops a Shared copy and
    turns a fill into IS_D_I), or the loss of one was detected (reads of shared copies wait
    for RESYNC), or its link went down with a forgetting directory (`cut`: it is bound to
    notice, and a strict write waits until it has resynchronised, see `directory_young`)."""
    return bool(ag[_MISSED]) or ag[_CUT] != 0 or any(m != RECALL for m in ag[_INBOX])


def _check_read(w: _Work, mode: Mode, a: int, version: int, value: int) -> None:
    ag = w.agents[a]
    if ag[_OP] != OP_READ:
        _violate(w, "every_operation_answered: a value was returned to no read")
    ag[_OP] = OP_NONE
    names: tuple[int, ...] = w.g[_NAMES]
    if not 0 <= version < len(names) or names[version] != value:
        named = f"w{names[version]}" if 0 <= version < len(names) else "no value"
        _violate(
            w,
            f"data_value: a read returned w{value} as v{version}, but v{version} names {named} "
            "(the value of the write that created it)",
        )
    # Data a rollback put back in L2 is outside the global recency guarantees (no protocol
    # keeps them over a restored store); the agent-local ones below still hold.
    restored = bool(ag[_RES])
    rstart = int(ag[_RSTART])
    if version < rstart and not _in_flight(ag) and not restored:
        _violate(
            w,
            f"read_result: a read returned v{version}, but the write of v{rstart} completed "
            "before the read began and no invalidation addressed to the reader is in flight",
        )
    floor = int(ag[_FLOOR])
    if version < floor:
        _violate(
            w,
            f"monotonic_reads_and_read_your_writes: a read returned v{version} although the "
            f"agent had read, written or been told of v{floor}",
        )
    ag[_FLOOR] = max(floor, version)
    ag[_RSTART] = 0
    if version < ag[_TOLD]:
        _violate(
            w,
            f"reads_respect_invalidations: a read returned v{version} after the invalidation "
            f"for v{ag[_TOLD]} was delivered",
        )
    if mode is Mode.STRICT and not restored:
        if version < w.g[_DONE]:
            _violate(w, f"linearizable_reads: read v{version} after write v{w.g[_DONE]} completed")
        if version < w.g[_READMAX]:
            _violate(w, f"linearizable_reads: read v{version} after a read of v{w.g[_READMAX]}")
        w.g[_READMAX] = max(w.g[_READMAX], version)


_COPY_STATES: Final = frozenset({L1State.S, L1State.E, L1State.M, L1State.MS_A})


def _check_write_returned(w: _Work, a: int, version: int) -> None:
    """After a write returns, every other copy older than it is invalid or has an
    invalidation addressed to it in flight (fill data about to be installed included)."""
    for b, other in enumerate(w.agents):
        if b == a or other[_RES]:
            continue  # a copy read from a restored L2 is outside the guarantee (see _rollback)
        st = other[_ST]
        held = int(other[_VER]) if st in _COPY_STATES else -1
        if st is L1State.IS_D and int(other[_DATA]) >= int(other[_FLOOR]):
            held = int(other[_DATA])
        if 0 <= held < version and not _in_flight(other):
            _violate(
                w,
                f"write_invalidates_copies: the write of v{version} returned while another agent "
                f"({st.name}) still holds v{held} and no invalidation addressed to it is in "
                "flight",
            )


def _fresh_value(w: _Work) -> int:
    """A value id no version and no copy names yet (a new write's value)."""
    g = w.g
    taken: list[int] = [*g[_NAMES], int(g[_HVAL]), int(g[_L2VAL])]
    for ag in w.agents:
        taken += (int(ag[_VAL]), int(ag[_DVAL]))
    return max(taken) + 1


def _add_message(ag: list[Any], message: int) -> None:
    if ag[_GONE] or ag[_CUT] == CUT_UNNOTICED:
        return  # nobody listens for a departed agent; a cut link (DIRECTORY_FORGETS) hears nothing
    inbox = ag[_INBOX]
    assert isinstance(inbox, tuple)
    if message not in inbox:
        ag[_INBOX] = tuple(sorted((*inbox, message)))


class _EffectReader(Renderer):
    """The model's reader of an effect's update (`meaning.EFFECTS`): Python over a `_Work`."""

    def field(self, field: Field) -> str:
        if field.owner == "key":
            return f"g[{_STATE_INDEX[field.name] - 1}]"
        agent = "ag" if field.owner == "agent" else "_x"
        return f"{agent}[{_AGENT_INDEX[field.name]}]"

    def agents(self) -> str:
        return "w.agents"

    def fresh_value(self) -> str:
        return "_fresh_value(w)"

    def name_of(self, version: str) -> str:
        return f"g[{_NAMES}][{version}]"

    def send(self, kind: str, version: str) -> str:
        message = {
            "recall": "_RECALL",
            "invalidate": version,
            "update": f"(_UPDATE_BASE + {version})",
        }[kind]
        return f"_add_message(_x, {message})"

    def drop(self, which: str) -> str:
        inbox = f"ag[{_INBOX}]"
        if which == "all":
            return f"{inbox} = ()"
        unwanted = "payload" if which == "payload" else "_RECALL"
        return f"{inbox} = tuple([m for m in {inbox} if m != {unwanted}])"

    def append_name(self, value: str) -> str:
        return f"g[{_NAMES}] = (*g[{_NAMES}], {value})"


type _EffectCode = Callable[[_Work, int | None, int], None]


def _compile_effect(effect: Effect, mode: Mode) -> _EffectCode:
    reader = _EffectReader(mode)
    reader.namespace.update(_fresh_value=_fresh_value, _add_message=_add_message)
    statements = EFFECTS[effect]
    prologue = ["g = w.g"]
    if effect_needs_subject(effect):
        prologue += [
            "if a is None:",
            f"    raise ValueError({f'effect {effect.name} needs a subject agent'!r})",
            "ag = w.agents[a]",
        ]
    if any(isinstance(n, Announced) for s in statements for n in nodes(s)):
        prologue.append(
            "_announced = payload - _UPDATE_BASE if payload >= _UPDATE_BASE else payload"
        )
    body = [line for s in statements for line in reader.stmt(s, "    ")]
    name = f"effect_{effect.name.lower()}_{mode.value}"
    function = compile_function(name, "w, a, payload", tuple(prologue), body, reader.namespace)
    return cast(_EffectCode, function)


_EFFECT_CODE: Final[dict[Mode, dict[Effect, _EffectCode]]] = {
    mode: {effect: _compile_effect(effect, mode) for effect in EFFECTS} for mode in Mode
}


def _apply(effect: Effect, w: _Work, mode: Mode, a: int | None, payload: int) -> None:
    """Run `effect`: its update in `meaning.EFFECTS` (compiled once), or the code below for the
    few effects `meaning.EFFECTS_IN_CODE` lists."""
    compiled = _EFFECT_CODE[mode].get(effect)
    if compiled is not None:
        compiled(w, a, payload)
        return
    g = w.g
    ag: list[Any] = w.agents[a] if a is not None else []
    match effect:
        case Effect.RETURN_VALUE:
            assert a is not None
            _check_read(w, mode, a, int(ag[_VER]), int(ag[_VAL]))
        case Effect.RETURN_VALUE_UNCACHED:
            assert a is not None
            _check_read(w, mode, a, int(ag[_DATA]), int(ag[_DVAL]))
            ag[_DATA] = -1
            ag[_DVAL] = -1
            ag[_REQ] = Request.NONE
        case Effect.ACK_WRITE:
            if ag[_OP] != OP_WRITE:
                _violate(w, "every_operation_answered: a write was acknowledged twice")
            ag[_OP] = OP_NONE
            ag[_FLOOR] = max(int(ag[_FLOOR]), int(ag[_VER]))
            ag[_UNSAVED] = ag[_GRANT] == GRANT_LIVE_INCARNATION and bool(g[_DIRTY])
            ag[_REQ] = Request.NONE
            if mode is Mode.STRICT:
                g[_DONE] = max(int(g[_DONE]), int(ag[_VER]))
            assert a is not None
            _check_write_returned(w, a, int(ag[_VER]))
            g[_COMPLETED] = max(int(g[_COMPLETED]), int(ag[_VER]))
        case Effect.REPORT_CONFLICT:
            if ag[_OP] != OP_WRITE:
                _violate(w, "every_operation_answered: a conflict answered no write")
            ag[_OP] = OP_NONE
            ag[_REQ] = Request.NONE
        case Effect.HOME_STORE_UNFENCED:
            # The write-back's value is stored whoever holds the grant, under the home's
            # current version (the statement lacks its fence): if the grant was revoked, or a
            # newer version committed meanwhile, that version now names the owner's old value.
            g[_HVAL] = ag[_VAL]
            if ag[_GRANT] == GRANT_LIVE_INCARNATION:
                g[_DIRTY] = False
                _void_recalls(ag)
                ag[_GRANT] = NO_GRANT
            ag[_UNSAVED] = False
            ag[_VER] = -1
            ag[_VAL] = -1
            ag[_LEASE] = False
            ag[_REQ] = Request.NONE
        case _:  # pragma: no cover
            raise AssertionError(f"effect {effect!r} has no meaning in model.py")


def _void_recalls(ag: list[Any]) -> None:
    """A released or revoked grant voids the recalls addressed to it (production tags each
    recall with the grant's epoch, and a stale one is ignored on arrival)."""
    ag[_INBOX] = tuple(m for m in ag[_INBOX] if m != RECALL)


# ----------------------------------------------------------------------------------------------
# successors

# Dispatch data of the interpreter, public so the Z3 encoding reads the same objects.
# Events that may also answer a request: a write-through's commit may be refused as a
# conflict (the model does not track the caller's expected version, so it offers both).
REQUEST_ALTERNATIVE: Final[dict[Request, Event]] = {Request.COMMIT: Event.HOME_CONFLICT}
REQUEST_EVENT: Final[dict[Request, Event]] = {
    Request.FILL: Event.FILL_FETCH,
    Request.DATA: Event.FILL_DATA,
    Request.COMMIT: Event.HOME_COMMIT,
    Request.ACQUIRE: Event.HOME_ACQUIRE,
    Request.SETTLE: Event.WRITE_SETTLED,
    Request.WRITE_BACK: Event.HOME_WRITE_BACK,
    Request.FLUSH: Event.HOME_FLUSH,
    Request.WAIT_OWNER: Event.RETRY,
}
FAULT_EVENT_SET: Final = frozenset(FAULT_EVENTS)
OPERATION: Final = {Event.READ: OP_READ, Event.WRITE_L1: OP_WRITE, Event.WRITE_THROUGH: OP_WRITE}
USER_OFFERED: Final = (Event.READ, Event.WRITE_L1, Event.WRITE_THROUGH, Event.FLUSH)
VERSION_CREATING: Final = frozenset({Effect.REQUEST_COMMIT, Effect.REQUEST_OWNERSHIP})
SITE_KEY: Final[dict[Site, ActorState]] = {
    Site.HOME: ActorState.HOME,
    Site.REDIS: ActorState.REDIS,
    Site.BUS: ActorState.BUS,
}


def _offers(defn: ProtocolDefinition, state: State) -> Iterator[tuple[Event, int | None, int]]:
    """Every (event, subject agent, payload) the environment offers in `state`."""
    budget = defn.fault_budget
    budget_left = budget is None or state.faults < budget
    faults = defn.faults if budget_left else frozenset()
    for a, ag in enumerate(state.agents):
        if ag.gone:  # a departed agent's records only expire
            if ag.grant != NO_GRANT:
                yield Event.HOME_EXPIRE_OWNER, a, 0
            if ag.ack_owed:
                yield Event.HOLDER_EXPIRE, a, 0
            continue
        for event in USER_OFFERED:
            yield event, a, 0
        if Event.EVICT in faults:
            yield Event.EVICT, a, 0
            if defn.leaves and ag.st in (L1State.I, L1State.S) and ag.req is Request.NONE:
                yield Event.EVICT, a, LEAVE
        for message in ag.inbox:
            if message == RECALL:
                yield Event.DELIVER_RECALL, a, RECALL
            elif is_update(message):
                yield Event.DELIVER_UPDATE, a, message
            else:
                yield Event.DELIVER_INVALIDATE, a, message
            if Event.DROP_MESSAGE in faults:
                yield Event.DROP_MESSAGE, a, message
        if Event.DISCONNECT in faults:
            yield Event.DISCONNECT, a, 0
        if ag.req is not Request.NONE:
            yield REQUEST_EVENT[ag.req], a, 0
            alternative = REQUEST_ALTERNATIVE.get(ag.req)
            if alternative is not None:
                yield alternative, a, 0
        if ag.missed:
            yield Event.RESYNC, a, 0
        if ag.cut == CUT_UNNOTICED:
            yield Event.RESYNC, a, LINK_LOST
        if Event.LEASE_LAPSE in faults:
            yield Event.LEASE_LAPSE, a, 0
        if Event.CRASH in faults:
            yield Event.CRASH, a, 0
        if ag.grant != NO_GRANT:
            yield Event.HOME_EXPIRE_OWNER, a, 0
        if ag.ack_owed:
            yield Event.HOLDER_EXPIRE, a, 0
    if state.outbox:
        yield Event.OUTBOX_RELAY, None, 0
        if defn.write_update:
            yield Event.OUTBOX_RELAY_UPDATE, None, 0
            yield Event.OUTBOX_RELAY_STORE, None, 0
    if state.l2 >= 0 and Event.L2_EVICT in faults:
        yield Event.L2_EVICT, None, 0
    if defn.directory_forgets and budget_left:
        yield Event.L2_EVICT, None, DIRECTORY_FORGETS
    if defn.l2_rollback and faults and state.l2_high >= 0:
        # any version up to the newest L2 held, older than its copy (see `_rollback`)
        newest = min(state.l2 if state.l2 >= 0 else state.home + 1, state.l2_high + 1)
        for version in range(newest):
            yield Event.L2_EVICT, None, ROLLBACK_TO + version


def _label(event: Event, a: int | None, payload: int, detail: str) -> str:
    who = f"agent{a + 1}" if a is not None else EVENT_SITE[event].value
    if event is Event.EVICT and payload == LEAVE:
        what = "LEAVE (close)"
    elif is_rollback(event, payload):
        what = f"L2_ROLLBACK(v{payload - ROLLBACK_TO})"
    elif is_forget(event, payload):
        what = "DIRECTORY_FORGETS"
    elif is_link_lost(event, payload):
        what = "LINK_LOST (noticed)"
    elif event in (Event.DELIVER_INVALIDATE, Event.DROP_MESSAGE) and payload != RECALL:
        what = f"{event.name}(v{payload})"
    elif event is Event.DROP_MESSAGE:
        what = f"{event.name}(recall)"
    else:
        what = event.name
    return f"{who} {what}: {detail}"


def transitions(defn: ProtocolDefinition, state: State) -> Iterator[Transition]:
    """Every enabled step of `state` (self-loops included), with its row."""
    if state.violation:
        return
    index = _index(defn)
    for event, a, payload in _offers(defn, state):
        yield from _offer_steps(defn, state, index, event, a, payload)


def offers(defn: ProtocolDefinition, state: State) -> Iterator[tuple[Event, int | None, int]]:
    """Every (event, subject agent or None, payload) the environment offers in `state`; the
    offers do not depend on the table, only on the state and the definition's bounds."""
    return _offers(defn, state)


def offer_transitions(
    defn: ProtocolDefinition, state: State, event: Event, agent: int | None, payload: int
) -> Iterator[Transition]:
    """The steps `transitions` yields for one offer (as `offers` lists it) of `state`."""
    if state.violation:
        return iter(())
    return _offer_steps(defn, state, _index(defn), event, agent, payload)


def _offer_steps(
    defn: ProtocolDefinition,
    state: State,
    index: dict[tuple[RowKey, Event], _Entry],
    event: Event,
    a: int | None,
    payload: int,
) -> Iterator[Transition]:
    """The steps of one offer: its row, a refusal's step, or a table defect."""
    if payload == LEAVE and event is Event.EVICT:
        assert a is not None
        yield _leave(defn, state, index, a)
        return
    if payload >= ROLLBACK_TO and event is Event.L2_EVICT:
        yield _rollback(state, payload)
        return
    if is_forget(event, payload):
        yield _forget(state)
        return
    if is_link_lost(event, payload):
        assert a is not None
        yield _link_lost(state, a)
        return
    if defn.mode is Mode.STRICT and event in DIRECTORY_WAITS and directory_young(state):
        return  # strict: waits for a directory old enough (see directory_young)
    site = EVENT_SITE[event]
    key: RowKey = state.agents[a].st if site is Site.AGENT and a is not None else SITE_KEY[site]
    entry = index.get((key, event))
    kind = EVENT_KIND[event]
    if entry is None:
        yield _defect(
            state, event, kind, a, payload, f"unhandled: no row for ({key.name}, {event.name})"
        )
        return
    matched = [r for r in entry.rules if holds(r.guard, state, a, payload)]
    refused = [f for f in entry.refusals if f.guard is None or holds(f.guard, state, a, payload)]
    if len(matched) > 1:
        yield _defect(
            state,
            event,
            kind,
            a,
            payload,
            f"nondeterministic: {len(matched)} rows for ({key.name}, {event.name})",
        )
        return
    if matched and refused:
        yield _defect(
            state,
            event,
            kind,
            a,
            payload,
            f"overlap: a row and a refusal for ({key.name}, {event.name})",
        )
        return
    if not matched:
        if not refused:
            yield _defect(
                state,
                event,
                kind,
                a,
                payload,
                f"unhandled: no row for ({key.name}, {event.name}) under these guards",
            )
        elif any(f.kind is RefusalKind.IMPOSSIBLE for f in refused):
            yield _defect(
                state,
                event,
                kind,
                a,
                payload,
                f"impossible_reached: ({key.name}, {event.name}): {refused[0].reason}",
            )
        elif all(f.kind is RefusalKind.NOT_APPLICABLE for f in refused):
            consumed = _not_applicable(state, event, kind, a, payload, key, refused[0])
            if consumed is not None:
                yield consumed
        return
    rule = matched[0]
    w = _Work(state)
    if event in FAULT_EVENT_SET:
        w.g[_FAULTS] = state.faults + 1
    if event in MESSAGE_EVENTS:
        assert a is not None
        agent = w.agents[a]
        agent[_INBOX] = tuple(m for m in agent[_INBOX] if m != payload)
        if event is not Event.DELIVER_RECALL:
            agent[_TOLD] = max(agent[_TOLD], message_version(payload))
    if kind is EventKind.USER and VERSION_CREATING.intersection(rule.effects):
        if state.writes >= defn.writes:
            return
        w.g[_WRITES] = state.writes + 1
    if isinstance(rule.target, L1State) and a is not None and site is Site.AGENT:
        w.agents[a][_ST] = rule.target
        if event in OPERATION:
            w.agents[a][_OP] = OPERATION[event]
        if event is Event.READ and defn.mode is Mode.COHERENT:
            # A read older than the floor is the floor check's (and, strict, any read older
            # than a completed write is linearizable_reads'): keep rstart only above it.
            completed = w.g[_COMPLETED]
            w.agents[a][_RSTART] = completed if completed > w.agents[a][_FLOOR] else 0
    for effect in rule.effects:
        _apply(effect, w, defn.mode, a, payload)
    if a is not None and w.agents[a][_CUT]:
        if Effect.LOSE_VOLATILE_STATE in rule.effects:
            w.agents[a][_CUT] = 0  # the restarted process connects afresh, to the new primary
        elif event is Event.RESYNC and w.agents[a][_CUT] == CUT_NOTICED:
            w.agents[a][_CUT] = 0  # resubscribed on the new primary, its copies revalidated
    yield Transition(event, kind, a, payload, rule, w.freeze())


LEAVE: Final = -1
"""Payload of the EVICT step that is an agent leaving: `close()` (see `_leave`)."""


def _leave(
    defn: ProtocolDefinition, state: State, index: dict[tuple[RowKey, Event], _Entry], a: int
) -> Transition:
    """An idle agent (I or S) closes for good, as production's `aclose()` does: its entry is
    evicted by the table's EVICT row (a Shared copy's row deregisters it), then the directory
    forgets the agent (`RedisDirectory.leave`: registration and owed acks dropped), its
    messages in flight are lost and it takes no further step. Its home grant, if a lapsed
    owner left one, is expired by the home as any other."""
    ag = state.agents[a]
    w = _Work(state)
    w.g[_FAULTS] = state.faults + 1
    rule: Rule | None = None
    if ag.st is L1State.S:
        entry = index.get((L1State.S, Event.EVICT))
        matched = [r for r in entry.rules if holds(r.guard, state, a, 0)] if entry else []
        if len(matched) != 1:
            text = f"unhandled: no single row for (S, EVICT) when agent{a + 1} leaves"
            return _defect(state, Event.EVICT, EventKind.FAULT, a, LEAVE, text)
        rule = matched[0]
        for effect in rule.effects:
            _apply(effect, w, defn.mode, a, 0)
    left = w.agents[a]
    left[_ST] = L1State.I
    left[_VER] = left[_DATA] = left[_VAL] = left[_DVAL] = -1
    left[_INBOX] = ()
    left[_MISSED] = False
    left[_REQ] = Request.NONE
    left[_RLEASE] = False
    left[_LEASE] = False
    left[_REG] = False
    left[_ACK] = False
    left[_L2L] = False
    left[_OP] = OP_NONE
    left[_RSTART] = 0
    left[_CUT] = 0
    left[_GONE] = True
    return Transition(Event.EVICT, EventKind.FAULT, a, LEAVE, rule, w.freeze())


ROLLBACK_TO: Final = 1000
"""Payload base of the L2_EVICT step that is an L2 rollback: payload ROLLBACK_TO + v puts back
version v (see `_rollback`)."""


def is_rollback(event: Event, payload: int) -> bool:
    """Whether the step (event, payload) is an L2 rollback, not a plain L2 eviction."""
    return event is Event.L2_EVICT and payload >= ROLLBACK_TO


def _rollback(state: State, payload: int) -> Transition:
    """Redis is restored from an older snapshot (`ProtocolDefinition(l2_rollback=True)`): the
    L2 copy goes back to a version v no newer than the newest it ever held (`l2_high`) and
    older than the copy it holds now (any such v when it is empty), with the value v names;
    an environment fault outside the table, counted against the fault budget (going back to
    an empty L2 is L2_EVICT). The model does not remember which older versions L2 held (a
    field for that history split the states by a third), so it may put back a version L2
    skipped: a superset of the snapshots Redis can have taken (a kill's trace shows which
    version came back, and whether L2 had held it). Fill
    leases and the directory are not restored. A copy put back this way is marked
    (`l2_restored`) until a protocol step writes or deletes L2, and so is the fill data or copy
    of an agent that reads it (`restored`): those are exempt from the global recency
    properties (read_result, linearizable reads, stale copies covered, ...), which no protocol
    can keep over a restored store, but not from the agent-local ones (its floor: monotonic
    reads, read-your-writes, reads and fills respecting the invalidations it saw)."""
    version = payload - ROLLBACK_TO
    w = _Work(state)
    w.g[_FAULTS] = state.faults + 1
    w.g[_L2] = version
    w.g[_L2VAL] = state.names[version]
    w.g[_L2RESTORED] = True
    return Transition(Event.L2_EVICT, EventKind.FAULT, None, payload, None, w.freeze())


CUT_UNNOTICED: Final = 1
"""`AgentState.cut`: the agent's link went down with the forgetting directory's primary and it
has not noticed: it hears nothing (messages to it are lost) and still serves its copies."""
CUT_NOTICED: Final = 2
"""`AgentState.cut`: it noticed (LINK_LOST: its bus has missed messages) and has not yet
resynchronised (RESYNC) nor restarted (CRASH) nor left."""

DIRECTORY_FORGETS: Final = -2
"""Payload of the L2_EVICT step that is the directory forgetting (see `_forget`)."""
LINK_LOST: Final = -3
"""Payload of the RESYNC step in which an agent notices that its bus link went down with the
directory's primary (see `_link_lost`)."""


def is_forget(event: Event, payload: int) -> bool:
    """Whether the step (event, payload) is the directory forgetting (DIRECTORY_FORGETS)."""
    return event is Event.L2_EVICT and payload == DIRECTORY_FORGETS


def is_link_lost(event: Event, payload: int) -> bool:
    """Whether the step (event, payload) is an agent noticing its cut bus link (LINK_LOST)."""
    return event is Event.RESYNC and payload == LINK_LOST


def consults_no_row(event: Event, payload: int) -> bool:
    """Whether the step is an environment step that consults no row of the table: an L2
    rollback, the directory forgetting, or an agent noticing its cut link."""
    return is_rollback(event, payload) or is_forget(event, payload) or is_link_lost(event, payload)


DIRECTORY_WAITS: Final = frozenset({Event.WRITE_SETTLED, Event.FILL_FETCH})
"""Strict: the steps that wait while the directory is young (`directory_young`): a write's
settling, and a fill's fetch (else a fill could return the unsettled new version while a
holder whose link went down still serves the old one: a newer read, then an older one)."""


def directory_young(state: State) -> bool:
    """Strict: the directory is too young for a write to settle, as some agent whose link went
    down when it forgot has not yet resynchronised (nor restarted, nor left): `AgentState.cut`.
    Production's rule, with clocks: a strict write settles only on a directory older than
    `CoherenceBus.link_trust_s` plus a margin (`settle_guard`'s `directory_settled_s`; the
    directory's birth key is set anew on the new primary), and a strict holder serves a
    Shared copy only while a frame confirmed its link within `link_trust_s`
    (`answers.trusted`; otherwise the copy lapses and the read refetches): once the directory
    is that old, no holder of the forgotten directory still serves a copy from before it
    forgot. The model has no clocks: its counterpart of that moment is every such agent's
    RESYNC (which drops a Shared copy and turns a fill into IS_D_I)."""
    return any(ag.cut for ag in state.agents)


def _forget(state: State) -> Transition:
    """The directory's Redis primary fails over (`ProtocolDefinition(directory_forgets=True)`;
    or a single Redis restarts without persistence): the promoted replica has lost the
    primary's recent writes. Worst case, the directory forgets everything it holds for the key:
    every holder registration, owed acknowledgement and fill lease. Every agent's bus listener
    is pinned to that primary, so every link drops at once: each agent's messages in flight
    are lost, and until it notices (LINK_LOST, then RESYNC as after DISCONNECT) it hears
    nothing and still serves its copies (`cut`). The home (versions, outbox, grants) is not
    affected; L2's loss is the L2 rollback (ROLLBACK_TO). An environment fault outside the
    table, counted against the fault budget."""
    w = _Work(state)
    w.g[_FAULTS] = state.faults + 1
    for ag in w.agents:
        ag[_REG] = False
        ag[_ACK] = False
        ag[_L2L] = False
        if not ag[_GONE]:
            ag[_INBOX] = ()
            ag[_CUT] = CUT_UNNOTICED
    return Transition(Event.L2_EVICT, EventKind.FAULT, None, DIRECTORY_FORGETS, None, w.freeze())


def _link_lost(state: State, a: int) -> Transition:
    """The agent notices that its bus link went down with the forgetting directory's primary
    (a failed health check, the connection's error, or its link trust lapsing): its bus has
    missed messages, and RESYNC follows as after DISCONNECT. A protocol-internal step, owed
    to every cut agent (weak fairness covers RESYNC)."""
    w = _Work(state)
    ag = w.agents[a]
    ag[_CUT] = CUT_NOTICED
    ag[_MISSED] = True
    return Transition(Event.RESYNC, EventKind.INTERNAL, a, LINK_LOST, None, w.freeze())


_ANSWERED_OPERATIONS: Final = {
    Event.READ: "read",
    Event.WRITE_L1: "write",
    Event.WRITE_THROUGH: "write",
}


MESSAGE_EVENTS: Final = frozenset(
    {Event.DELIVER_INVALIDATE, Event.DELIVER_RECALL, Event.DELIVER_UPDATE}
)
"""The events that deliver a message from the agent's inbox (its payload names the message)."""


def _not_applicable(
    state: State,
    event: Event,
    kind: EventKind,
    a: int | None,
    payload: int,
    key: RowKey,
    refusal: Refusal,
) -> Transition | None:
    """What a NOT_APPLICABLE refusal does, as production's adapter treats it (a STALLED one
    holds the event: no step). A message is consumed and nothing else happens (a STALLED one
    is held and fed again); a read or write asked of a STABLE entry returns at once with
    nothing (production returns None: for a read or write that is an operation answered with
    nothing); anything else (a user operation queued behind one in flight, a flush or evict
    with nothing to do, a request's answer, which the adapter sends again, a timer) changes
    nothing, so it is no step."""
    if event in MESSAGE_EVENTS:
        assert a is not None
        agents = list(state.agents)
        ag = agents[a]
        agents[a] = ag._replace(inbox=tuple(m for m in ag.inbox if m != payload))
        return Transition(
            event, kind, a, payload, None, state._replace(agents=tuple(agents)), refusal
        )
    if event in _ANSWERED_OPERATIONS and key in STABLE_STATES:
        what = _ANSWERED_OPERATIONS[event]
        text = (
            f"every_operation_answered: a {what} of a {key.name} entry returned nothing (the "
            "table calls it not applicable: production answers it at once with None)"
        )
        return Transition(event, kind, a, payload, None, state._replace(violation=text), refusal)
    return None


def _rule_detail(rule: Rule) -> str:
    moves = (
        f"{rule.source.name} -> {rule.target.name}"
        if isinstance(rule.source, L1State)
        else rule.source.name
    )
    guard = "" if rule.guard is Guard.ALWAYS else f" [{rule.guard.value}]"
    effects = ", ".join(e.value for e in rule.effects)
    return f"{moves}{guard} {{{effects}}}"


def _defect(
    state: State, event: Event, kind: EventKind, a: int | None, payload: int, text: str
) -> Transition:
    return Transition(event, kind, a, payload, None, state._replace(violation=text))


def consulted_refusals(defn: ProtocolDefinition, state: State) -> Iterator[Refusal]:
    """The refusals of `defn` that decide some event offered in `state` (no row matched and
    the refusal's guard holds): the refusals whose kind matters in this state."""
    if state.violation:
        return
    index = _index(defn)
    for event, a, payload in _offers(defn, state):
        if (payload == LEAVE and event is Event.EVICT) or consults_no_row(event, payload):
            continue
        site = EVENT_SITE[event]
        key: RowKey = state.agents[a].st if site is Site.AGENT and a is not None else SITE_KEY[site]
        entry = index.get((key, event))
        if entry is None or any(holds(r.guard, state, a, payload) for r in entry.rules):
            continue
        for f in entry.refusals:
            if f.guard is None or holds(f.guard, state, a, payload):
                yield f


def successors(defn: ProtocolDefinition, state: State) -> Iterator[tuple[str, State]]:
    """(label, next state) for every enabled step that changes the state.

    Labels read as event scripts: "agent2 FILL_FETCH: IS_D -> IS_D [fetch_free] {...}".
    """
    for t in transitions(defn, state):
        if t.target != state:
            yield t.label, t.target


# ----------------------------------------------------------------------------------------------
# rendering


def describe(state: State) -> str:
    """A compact one-line rendering of a global state for traces."""
    parts = []
    for i, ag in enumerate(state.agents, start=1):
        bits = [ag.st.name]
        if ag.ver >= 0:
            bits.append(f"v{ag.ver}")
        if ag.data >= 0:
            bits.append(f"data=v{ag.data}")
        if ag.req is not Request.NONE:
            bits.append(f"req={ag.req.name.lower()}")
        if ag.floor:
            bits.append(f"floor=v{ag.floor}")
        if ag.missed:
            bits.append("MISSED")
        if ag.cut:
            bits.append("LINK_CUT" if ag.cut == CUT_UNNOTICED else "cut_unsynced")
        if ag.inbox:
            msgs = ",".join(
                "recall"
                if m == RECALL
                else f"upd(v{message_version(m)})"
                if is_update(m)
                else f"inv(v{m})"
                for m in ag.inbox
            )
            bits.append(f"inbox=[{msgs}]")
        if ag.registered:
            bits.append("holder")
        if ag.ack_owed:
            bits.append("ack_owed")
        if ag.grant:
            bits.append("grant" if ag.grant == GRANT_LIVE_INCARNATION else "grant(dead)")
        if ag.lease:
            bits.append("lease")
        if ag.rlease:
            bits.append("read_lease")
        if ag.l2_lease:
            bits.append("l2_lease")
        if ag.restored:
            bits.append("restored")
        parts.append(f"a{i}:{' '.join(bits)}")
    home = f"home=v{state.home}" + (" (data at owner)" if state.dirty else "")
    outbox = f" outbox=v{state.outbox}" if state.outbox else ""
    l2 = f"L2=v{state.l2}" if state.l2 >= 0 else "L2=empty"
    if state.l2_restored:
        l2 += " (restored)"
    viol = f" VIOLATION={state.violation!r}" if state.violation else ""
    return f"{home}{outbox} {l2} | " + " | ".join(parts) + viol
