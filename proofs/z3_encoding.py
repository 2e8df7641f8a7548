"""The protocol of `sagemem.spec` as Z3 formulas over finite-domain bit-vectors.

One global state of the key becomes a `SymState`: a few bit-vector and Boolean terms per field
(versions are small signed bit-vectors, L1 states and requests 4-bit codes, the inbox one
Boolean per possible message). The meaning of every guard, effect and invariant is written
here a second time, as formulas, mirroring `sagemem.spec.model` and `sagemem.spec.invariants`
field by field. `tests/unit/test_z3_check.py` evaluates both on sampled reachable states and
steps and fails when they disagree, so the two semantics cannot drift apart silently.

A step is one `Step`: (event, subject agent, payload, row or table defect) with its enabling
condition and the successor state, built by applying the row's effects in order to the terms.
A state that breaks no invariant but reaches a (state, event) that the table leaves undefined,
doubles, or lists as impossible steps into a state whose `viol` code is `VIOLATION_DEFECT`.

Two environment events of the model are NOT encoded, by design: an agent leaving
(`ProtocolDefinition.leaves`) and an L2 rollback (`ProtocolDefinition.l2_rollback`, the L2
copy going back to an older snapshot; `sagemem.spec.model.ROLLBACK_TO`). Neither is a row of
the table, so the one-step checks (totality, determinism, rows keeping the type invariant) do
not concern them; the rollback also needs what this version-level abstraction leaves out:
the values of older versions (`names`), and the marks that exempt a restored copy, and the
copies read from it, from the global recency properties (`l2_restored`, `restored`), which
would have to be encoded in every invariant they relax. The offers below ignore both flags,
so an `Encoding` of a definition with them set is the encoding of that definition without
them; the explorer (`proofs.explore`, whose quick and deep definitions turn the rollback on)
is the checker of both events, and the cross-checks with the model run on definitions
without them.

This module must never import the production package `sagemem` (only `sagemem.spec`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Final

import z3

from sagemem.spec.invariants import (  # the shape tables are data shared with the checks
    _HOLDS_OWNED_DATA,
    _HOLDS_VERSION,
    _REQUESTS_BY_STATE,
    invariants_for,
)
from sagemem.spec.model import (
    FAULT_EVENT_SET,
    GRANT_DEAD_INCARNATION,
    GRANT_LIVE_INCARNATION,
    NO_GRANT,
    OP_NONE,
    OP_READ,
    OP_WRITE,
    OPERATION,
    RECALL,
    REQUEST_ALTERNATIVE,
    REQUEST_EVENT,
    SITE_KEY,
    UNENCODED_AGENT_FIELDS,
    UNENCODED_GLOBAL_FIELDS,
    USER_OFFERED,
    VERSION_CREATING,
    AgentState,
    ProtocolDefinition,
    Request,
    State,
    initial_state,
)
from sagemem.spec.table import Refusal, RefusalKind, RowKey, Rule
from sagemem.spec.vocabulary import (
    EVENT_KIND,
    EVENT_SITE,
    Effect,
    Event,
    EventKind,
    Guard,
    L1State,
    Mode,
    Site,
)

__all__ = [
    "AGENT_FIELDS",
    "GLOBAL_FIELDS",
    "VALUE_LEVEL_INVARIANTS",
    "VIOLATION_CODES",
    "Encoding",
    "Step",
    "SymState",
    "version_level",
    "violation_category",
]

type Expr = Any  # z3 ships no type information: every term is a z3.ExprRef

# Violation codes: the model keeps the first violation as text; the encoding keeps its kind.
VIOLATION_NONE: Final = 0
VIOLATION_DEFECT: Final = 1
VIOLATION_MONOTONIC: Final = 2
VIOLATION_LINEARIZABLE: Final = 3
VIOLATION_UNFENCED: Final = 4
VIOLATION_UNANSWERED: Final = 5
VIOLATION_READ_AFTER_INVALIDATION: Final = 6
VIOLATION_CODES: Final[dict[int, str]] = {
    VIOLATION_NONE: "",
    VIOLATION_DEFECT: "table_defect",
    VIOLATION_MONOTONIC: "monotonic_reads_and_read_your_writes",
    VIOLATION_LINEARIZABLE: "linearizable_reads",
    VIOLATION_UNFENCED: "no_acked_write_lost",
    VIOLATION_UNANSWERED: "every_operation_answered",
    VIOLATION_READ_AFTER_INVALIDATION: "reads_respect_invalidations",
}
_TABLE_DEFECTS: Final = ("unhandled", "nondeterministic", "overlap", "impossible_reached")


# Violations of the value level and the read guarantees: recorded by the model only (their
# fields are not encoded, see UNENCODED_AGENT_FIELDS); the encoding sees no violation there.
_UNENCODED_VIOLATIONS: Final = (
    "data_value",
    "read_result",
    "write_invalidates_copies",
)


VALUE_LEVEL_INVARIANTS: Final = frozenset(
    {"version_names_one_value", "data_value_reads", "read_result", "write_invalidates_copies"}
)
"""Invariants over the fields the encoding leaves out (values, read-start ghosts): checked by
the explorer and the scenarios only."""


def violation_category(text: str) -> str:
    """The kind of a model violation text, as the encoding records it ("" for none, and for
    the value-level violations the encoding does not model)."""
    if not text or text.startswith(_UNENCODED_VIOLATIONS):
        return ""
    if text.startswith(_TABLE_DEFECTS):
        return VIOLATION_CODES[VIOLATION_DEFECT]
    for code in (
        VIOLATION_MONOTONIC,
        VIOLATION_LINEARIZABLE,
        VIOLATION_UNFENCED,
        VIOLATION_UNANSWERED,
        VIOLATION_READ_AFTER_INVALIDATION,
    ):
        if text.startswith(VIOLATION_CODES[code]):
            return VIOLATION_CODES[code]
    return "other:" + text


# The invariants' shape data, shared with invariants.py (data, not meaning: one copy).
REQUESTS_BY_STATE: Final = _REQUESTS_BY_STATE
HOLDS_VERSION: Final = _HOLDS_VERSION
HOLDS_OWNED_DATA: Final = _HOLDS_OWNED_DATA
OWNER_STATES: Final = (L1State.E, L1State.M)
VALID_STATES: Final = (L1State.S, L1State.E, L1State.M)


def _field_kind(name: str, value: object) -> str:
    """How a model field is encoded: "st"/"req" codes, "bool", "inbox", or a signed "ver"."""
    if name in ("st", "req"):
        return name
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, tuple):
        return "inbox"
    if isinstance(value, int):
        return "ver"
    raise TypeError(f"model field {name}={value!r} has no Z3 encoding; extend _field_kind")


def _kinds() -> tuple[dict[str, str], dict[str, str]]:
    sample = initial_state(ProtocolDefinition(agents=1))
    agent = sample.agents[0]
    agent_fields = {
        name: _field_kind(name, getattr(agent, name))
        for name in AgentState._fields
        if name != "inbox" and name not in UNENCODED_AGENT_FIELDS
    }
    global_fields = {
        name: "viol" if name == "violation" else _field_kind(name, getattr(sample, name))
        for name in State._fields
        if name != "agents" and name not in UNENCODED_GLOBAL_FIELDS
    }
    return agent_fields, global_fields


_BLANK: Final = initial_state(ProtocolDefinition(agents=1))
_BLANK_AGENT: Final = {name: getattr(_BLANK.agents[0], name) for name in UNENCODED_AGENT_FIELDS}
_BLANK_GLOBAL: Final = {name: getattr(_BLANK, name) for name in UNENCODED_GLOBAL_FIELDS}


def version_level(state: State) -> State:
    """`state` as the encoding sees it: the value-level fields blanked, the violation text
    reduced to its encoded kind (see `violation_category`)."""
    return state._replace(
        agents=tuple(ag._replace(**_BLANK_AGENT) for ag in state.agents),
        violation=violation_category(state.violation),
        **_BLANK_GLOBAL,
    )


# Derived from the model's own state types, so a new field is encoded (as unchanged by
# every effect until this module gives it a meaning; the cross-check test then fails).
AGENT_FIELDS, GLOBAL_FIELDS = _kinds()
_CODE_WIDTH: Final[dict[str, int]] = {"st": 4, "req": 4, "viol": 3}


@dataclass(slots=True)
class SymState:
    """A global state as terms: per agent a field dict plus an inbox (one Boolean per message)."""

    agents: list[dict[str, Expr]]
    inboxes: list[list[Expr]]
    g: dict[str, Expr]

    def copy(self) -> SymState:
        """A shallow copy whose dicts and lists may be updated without touching this one."""
        return SymState(
            [dict(ag) for ag in self.agents], [list(box) for box in self.inboxes], dict(self.g)
        )

    def terms(self) -> Iterator[Expr]:
        """Every term, in a fixed order (agents, their inboxes, then the globals)."""
        for ag, box in zip(self.agents, self.inboxes, strict=True):
            yield from ag.values()
            yield from box
        yield from self.g.values()


@dataclass(frozen=True, slots=True)
class Step:
    """One possible step: its identity, when it is enabled, and the state it leads to."""

    event: Event
    agent: int | None
    payload: int
    rule: Rule | None  # None: a table defect (unhandled, doubled or impossible)
    enabled: Expr
    target: SymState

    def describe(self) -> str:
        """A short label (the explorer's labels come from replaying the trace in the model)."""
        who = f"agent{self.agent + 1}" if self.agent is not None else EVENT_SITE[self.event].value
        what = f"{self.event.name}(v{self.payload})" if self.payload else self.event.name
        if self.rule is None:
            return f"{who} {what}: table defect"
        return f"{who} {what}: {self.rule.source.name} -> {self.rule.target.name}"


class Encoding:
    """The Z3 encoding of one `ProtocolDefinition` (its table, mode and bounds)."""

    def __init__(self, defn: ProtocolDefinition) -> None:
        self.defn = defn
        self.mode = defn.mode
        self.n = defn.agents
        # each write makes at most one version, and the revocation of its grant at most one more
        self.max_version = 2 * defn.writes
        # signed versions: room for -1 .. a few steps past the bound, so a version that
        # overruns the bound is reported by the type invariant before it could wrap around
        needed = 2 * self.max_version + 4
        self.width = max(4, needed.bit_length() + 1)
        self.messages = range(self.max_version + 1)  # RECALL=0, INV(n)=n for n <= bound
        self._steps_cache: dict[int, list[Step]] = {}

    # ------------------------------------------------------------------------------ terms

    def v(self, value: int) -> Expr:
        """A version constant."""
        return z3.BitVecVal(value, self.width)

    def code(self, kind: str, value: int) -> Expr:
        """A constant of a code field (st, req, grant, viol)."""
        return z3.BitVecVal(value, _CODE_WIDTH[kind])

    def _var(self, kind: str, name: str) -> Expr:
        if kind == "bool":
            return z3.Bool(name)
        if kind == "ver":
            return z3.BitVec(name, self.width)
        return z3.BitVec(name, _CODE_WIDTH[kind])

    def _const(self, kind: str, value: int | bool) -> Expr:
        if kind == "bool":
            return z3.BoolVal(bool(value))
        if kind == "ver":
            return self.v(int(value))
        return self.code(kind, int(value))

    def fresh(self, prefix: str) -> SymState:
        """A state of fresh variables named `<prefix>_<field>`."""
        agents = [
            {f: self._var(k, f"{prefix}_a{i}_{f}") for f, k in AGENT_FIELDS.items()}
            for i in range(self.n)
        ]
        inboxes = [[z3.Bool(f"{prefix}_a{i}_msg{m}") for m in self.messages] for i in range(self.n)]
        g = {f: self._var(k, f"{prefix}_{f}") for f, k in GLOBAL_FIELDS.items()}
        return SymState(agents, inboxes, g)

    def concrete(self, state: State) -> SymState:
        """The constant terms of a model state (its violation text kept as its kind)."""
        agents: list[dict[str, Expr]] = []
        inboxes: list[list[Expr]] = []
        for ag in state.agents:
            agents.append({f: self._const(k, getattr(ag, f)) for f, k in AGENT_FIELDS.items()})
            unknown = [m for m in ag.inbox if m not in self.messages]
            if unknown:
                raise ValueError(
                    f"message(s) {unknown} are outside the encoded range 0..{self.max_version}; "
                    "the state breaks the type invariant"
                )
            inboxes.append([z3.BoolVal(m in ag.inbox) for m in self.messages])
        category = violation_category(state.violation)
        codes = {text: code for code, text in VIOLATION_CODES.items()}
        if category not in codes:
            raise ValueError(f"violation {state.violation!r} has no encoding")
        g = {
            f: self._const(k, codes[category] if k == "viol" else getattr(state, f))
            for f, k in GLOBAL_FIELDS.items()
        }
        return SymState(agents, inboxes, g)

    def decode(self, values: Callable[[Expr], Expr], sym: SymState) -> State:
        """The model state whose terms `values` evaluates (a z3 model's `eval`, or `simplify`).

        The violation text is the kind only (e.g. "monotonic_reads"), see `violation_category`.
        """

        def num(term: Expr, signed: bool) -> int:
            value = values(term)
            return int(value.as_signed_long() if signed else value.as_long())

        def flag(term: Expr) -> bool:
            return bool(z3.is_true(values(term)))

        def field(kind: str, term: Expr) -> object:
            if kind == "bool":
                return flag(term)
            if kind == "st":
                return L1State(num(term, False))
            if kind == "req":
                return Request(num(term, False))
            return num(term, True)

        agents = []
        for ag, box in zip(sym.agents, sym.inboxes, strict=True):
            fields = {f: field(k, ag[f]) for f, k in AGENT_FIELDS.items()}
            fields["inbox"] = tuple(m for m in self.messages if flag(box[m]))
            fields.update(_BLANK_AGENT)
            agents.append(AgentState(**fields))  # type: ignore[arg-type]  # built field by field
        gfields = {f: field(k, sym.g[f]) for f, k in GLOBAL_FIELDS.items() if k != "viol"}
        gfields["violation"] = VIOLATION_CODES.get(num(sym.g["violation"], False), "unknown")
        gfields.update(_BLANK_GLOBAL)
        return State(agents=tuple(agents), **gfields)  # type: ignore[arg-type]  # field by field

    def equal(self, left: SymState, right: SymState) -> Expr:
        """The two states are equal, field by field."""
        return z3.And(*(a == b for a, b in zip(left.terms(), right.terms(), strict=True)))

    def domains(self, s: SymState) -> Expr:
        """Every code field holds a member of its enum (the bit-vectors have spare values)."""
        parts = []
        for ag in s.agents:
            parts.append(z3.ULE(ag["st"], self.code("st", max(L1State))))
            parts.append(z3.ULE(ag["req"], self.code("req", max(Request))))
            parts.append(
                z3.And(ag["grant"] >= self.v(0), ag["grant"] <= self.v(GRANT_DEAD_INCARNATION))
            )
        parts.append(z3.ULE(s.g["violation"], self.code("viol", max(VIOLATION_CODES))))
        return z3.And(*parts)

    # ------------------------------------------------------------------------------ helpers

    def is_state(self, ag: dict[str, Expr], *states: L1State) -> Expr:
        """The agent's L1 state is one of `states`."""
        return z3.Or(*(ag["st"] == self.code("st", int(s)) for s in states))

    def _req_is(self, ag: dict[str, Expr], request: Request) -> Expr:
        return ag["req"] == self.code("req", int(request))

    def _grant_is(self, ag: dict[str, Expr], grant: int) -> Expr:
        return ag["grant"] == self.v(grant)

    def _max(self, a: Expr, b: Expr) -> Expr:
        return z3.If(a >= b, a, b)

    def _any_grant(self, s: SymState) -> Expr:
        return z3.Or(*(z3.Not(self._grant_is(ag, NO_GRANT)) for ag in s.agents))

    def _acks_owed(self, s: SymState) -> Expr:
        return z3.Or(*(ag["ack_owed"] for ag in s.agents))

    def _owned_by_other(self, s: SymState, a: int) -> Expr:
        return z3.Or(
            *(
                z3.Not(self._grant_is(ag, NO_GRANT))
                if i != a
                else self._grant_is(ag, GRANT_DEAD_INCARNATION)
                for i, ag in enumerate(s.agents)
            )
        )

    def _at_most_one(self, flags: Sequence[Expr]) -> Expr:
        return z3.And(
            *(
                z3.Not(z3.And(flags[i], flags[j]))
                for i in range(len(flags))
                for j in range(i + 1, len(flags))
            )
        )

    # ------------------------------------------------------------------------------ guards

    def holds(
        self, guard: Guard, s: SymState, a: int | None, payload: int
    ) -> Expr:  # one case per guard, as in model.py
        """The formula of `guard` for subject agent `a` (None: agent-less step), as model.holds."""
        ag = s.agents[a] if a is not None else None
        g = s.g
        no_l2 = g["l2"] < self.v(0)
        false = z3.BoolVal(False)
        match guard:
            case Guard.ALWAYS:
                return z3.BoolVal(True)
            case Guard.CONN_OK:
                return false if ag is None else z3.Not(ag["missed"])
            case Guard.CONN_MISSED:
                return false if ag is None else ag["missed"]
            case Guard.INV_NEWER:
                return false if ag is None else self.v(payload) > ag["ver"]
            case Guard.INV_NOT_NEWER:
                return false if ag is None else self.v(payload) <= ag["ver"]
            case Guard.FETCH_L2_HIT:
                return g["l2"] >= self.v(0)
            case Guard.FETCH_OWNED:
                return z3.And(no_l2, self._any_grant(s))
            case Guard.FETCH_FREE:
                return z3.And(no_l2, z3.Not(self._any_grant(s)))
            case Guard.FETCH_SETTLED:
                return z3.And(
                    no_l2,
                    z3.Not(self._any_grant(s)),
                    g["outbox"] == self.v(0),
                    z3.Not(self._acks_owed(s)),
                )
            case Guard.FETCH_UNSETTLED:
                return z3.And(
                    no_l2,
                    z3.Not(self._any_grant(s)),
                    z3.Or(g["outbox"] != self.v(0), self._acks_owed(s)),
                )
            case Guard.DATA_FRESH:
                if ag is None:
                    return false
                return z3.And(z3.Not(ag["missed"]), ag["data"] >= ag["floor"])
            case Guard.DATA_STALE:
                if ag is None:
                    return false
                return z3.And(z3.Not(ag["missed"]), ag["data"] < ag["floor"])
            case Guard.DATA_NOT_OLDER:
                return false if ag is None else ag["data"] >= ag["floor"]
            case Guard.DATA_OLDER:
                return false if ag is None else ag["data"] < ag["floor"]
            case Guard.OWNED_BY_OTHER:
                return false if a is None else self._owned_by_other(s, a)
            case Guard.NOT_OWNED_BY_OTHER:
                return false if a is None else z3.Not(self._owned_by_other(s, a))
            case Guard.PUBLISHED:
                return g["outbox"] == self.v(0)
            case Guard.UNPUBLISHED:
                return g["outbox"] != self.v(0)
            case Guard.ACKNOWLEDGED:
                return z3.And(g["outbox"] == self.v(0), z3.Not(self._acks_owed(s)))
            case Guard.UNACKNOWLEDGED:
                return z3.Or(g["outbox"] != self.v(0), self._acks_owed(s))
            case Guard.GRANT_HELD:
                return false if ag is None else self._grant_is(ag, GRANT_LIVE_INCARNATION)
            case Guard.GRANT_LOST:
                return false if ag is None else z3.Not(self._grant_is(ag, GRANT_LIVE_INCARNATION))
            case Guard.OWNER_LEASE_LAPSED:
                if ag is None:
                    return false
                return z3.Or(
                    self._grant_is(ag, GRANT_DEAD_INCARNATION),
                    z3.And(self._grant_is(ag, GRANT_LIVE_INCARNATION), z3.Not(ag["lease"])),
                )
            case Guard.OWNER_LEASE_LIVE:
                if ag is None:
                    return false
                return z3.And(self._grant_is(ag, GRANT_LIVE_INCARNATION), ag["lease"])
            case Guard.HOLDER_LEASE_LAPSED:
                return false if ag is None else z3.Not(ag["rlease"])
            case Guard.HOLDER_LEASE_LIVE:
                return false if ag is None else ag["rlease"]
        raise ValueError(f"guard {guard!r} has no Z3 encoding; add it to proofs/z3_encoding.py")

    # ------------------------------------------------------------------------------ effects

    def _check_read(self, w: SymState, a: int, version: Expr) -> None:
        ag = w.agents[a]
        g = w.g
        none = self.code("viol", VIOLATION_NONE)

        def first(viol: Expr, broken: Expr, code: int) -> Expr:
            return z3.If(z3.And(viol == none, broken), self.code("viol", code), viol)

        viol = first(g["violation"], ag["op"] != self.v(OP_READ), VIOLATION_UNANSWERED)
        ag["op"] = self.v(OP_NONE)
        viol = first(viol, version < ag["floor"], VIOLATION_MONOTONIC)
        ag["floor"] = self._max(ag["floor"], version)
        viol = first(viol, version < ag["told"], VIOLATION_READ_AFTER_INVALIDATION)
        if self.mode is Mode.STRICT:
            viol = first(viol, version < g["done"], VIOLATION_LINEARIZABLE)
            viol = first(viol, version < g["read_max"], VIOLATION_LINEARIZABLE)
            g["read_max"] = self._max(g["read_max"], version)
        g["violation"] = viol

    def _l2_set(self, w: SymState, when: Expr, version: Expr) -> None:
        g = w.g
        g["l2"] = z3.If(when, version, g["l2"])
        g["l2_high"] = z3.If(when, self._max(g["l2_high"], version), g["l2_high"])

    def _home_new_version(self, w: SymState, a: int) -> None:
        g = w.g
        g["home"] = g["home"] + self.v(1)
        g["commits"] = g["commits"] + self.v(1)
        g["outbox"] = g["home"]
        w.agents[a]["ver"] = g["home"]
        w.agents[a]["req"] = self.code("req", Request.SETTLE)

    def _void_recalls(self, w: SymState, a: int, when: Expr) -> None:
        w.inboxes[a][RECALL] = z3.And(w.inboxes[a][RECALL], z3.Not(when))

    def _add_message(self, w: SymState, i: int, when: Expr, message: Expr) -> None:
        box = w.inboxes[i]
        for m in self.messages:
            box[m] = z3.Or(box[m], z3.And(when, message == self.v(m)))

    def apply(
        self, effect: Effect, w: SymState, a: int | None, payload: int
    ) -> None:  # one case per effect, as in model.py
        """Apply `effect` to the terms of `w` in place, as model._apply does to a state."""
        g = w.g
        if a is None:
            if effect not in _AGENTLESS_EFFECTS:
                raise ValueError(
                    f"effect {effect.name} needs a subject agent but the row has none; "
                    "the model cannot run it either"
                )
            ag: dict[str, Expr] = {}
        else:
            ag = w.agents[a]
        req = self.code
        match effect:
            case Effect.RETURN_VALUE:
                assert a is not None
                self._check_read(w, a, ag["ver"])
            case Effect.RETURN_VALUE_UNCACHED:
                assert a is not None
                self._check_read(w, a, ag["data"])
                ag["data"] = self.v(-1)
                ag["req"] = req("req", Request.NONE)
            case Effect.INSTALL_COPY:
                ag["ver"] = ag["data"]
                ag["data"] = self.v(-1)
                ag["req"] = req("req", Request.NONE)
            case Effect.DROP_COPY:
                ag["ver"] = self.v(-1)
            case Effect.NOTE_INVALIDATION:
                ag["floor"] = self._max(ag["floor"], self.v(payload))
            case Effect.ACK_WRITE:
                g["violation"] = z3.If(
                    z3.And(
                        g["violation"] == self.code("viol", VIOLATION_NONE),
                        ag["op"] != self.v(OP_WRITE),
                    ),
                    self.code("viol", VIOLATION_UNANSWERED),
                    g["violation"],
                )
                ag["op"] = self.v(OP_NONE)
                ag["floor"] = self._max(ag["floor"], ag["ver"])
                ag["unsaved"] = z3.And(self._grant_is(ag, GRANT_LIVE_INCARNATION), g["dirty"])
                ag["req"] = req("req", Request.NONE)
                if self.mode is Mode.STRICT:
                    g["done"] = self._max(g["done"], ag["ver"])
            case Effect.START_OWNER_LEASE:
                ag["lease"] = z3.BoolVal(True)
            case Effect.LEASE_LAPSED:
                ag["lease"] = z3.BoolVal(False)
                ag["rlease"] = z3.BoolVal(False)
            case Effect.REPORT_CONFLICT:
                g["violation"] = z3.If(
                    z3.And(
                        g["violation"] == self.code("viol", VIOLATION_NONE),
                        ag["op"] != self.v(OP_WRITE),
                    ),
                    self.code("viol", VIOLATION_UNANSWERED),
                    g["violation"],
                )
                ag["op"] = self.v(OP_NONE)
                ag["req"] = req("req", Request.NONE)
            case Effect.REPORT_FENCED:
                ag["unsaved"] = z3.BoolVal(False)
                ag["ver"] = self.v(-1)
                ag["req"] = req("req", Request.NONE)
                ag["lease"] = z3.BoolVal(False)
            case Effect.RESYNC_CONNECTION:
                ag["missed"] = z3.BoolVal(False)
            case Effect.LOSE_VOLATILE_STATE:
                assert a is not None
                ag["ver"] = self.v(-1)
                ag["data"] = self.v(-1)
                ag["floor"] = self.v(0)
                ag["missed"] = z3.BoolVal(False)
                w.inboxes[a] = [z3.BoolVal(False) for _ in self.messages]
                ag["req"] = req("req", Request.NONE)
                ag["lease"] = z3.BoolVal(False)
                ag["rlease"] = z3.BoolVal(False)
                ag["grant"] = z3.If(
                    self._grant_is(ag, NO_GRANT), ag["grant"], self.v(GRANT_DEAD_INCARNATION)
                )
                ag["l2_lease"] = z3.BoolVal(False)
                ag["unsaved"] = z3.BoolVal(False)
                ag["op"] = self.v(OP_NONE)
                ag["told"] = self.v(0)
            case Effect.REFETCH:
                ag["data"] = self.v(-1)
                ag["req"] = req("req", Request.FILL)
            case Effect.MARK_DIRTY:
                g["dirty"] = z3.BoolVal(True)
            case Effect.AWAIT_INVALIDATIONS:
                ag["req"] = req("req", Request.SETTLE)
            case Effect.AWAIT_OWNER:
                ag["req"] = req("req", Request.WAIT_OWNER)
            case Effect.REQUEST_FILL:
                ag["data"] = self.v(-1)
                ag["req"] = req("req", Request.FILL)
            case Effect.REQUEST_COMMIT:
                ag["req"] = req("req", Request.COMMIT)
            case Effect.REQUEST_OWNERSHIP:
                ag["req"] = req("req", Request.ACQUIRE)
            case Effect.REQUEST_WRITE_BACK:
                ag["req"] = req("req", Request.WRITE_BACK)
            case Effect.REQUEST_FLUSH:
                ag["req"] = req("req", Request.FLUSH)
            case Effect.SEND_RECALL:
                for i, other in enumerate(w.agents):
                    self._add_message(w, i, z3.Not(self._grant_is(other, NO_GRANT)), self.v(RECALL))
            case Effect.SEND_ACK:
                ag["ack_owed"] = z3.BoolVal(False)
            case Effect.DISCARD_MESSAGE:
                assert a is not None
                if payload in self.messages:
                    w.inboxes[a][payload] = z3.BoolVal(False)
            case Effect.DISCARD_ALL_MESSAGES:
                assert a is not None
                w.inboxes[a] = [z3.BoolVal(False) for _ in self.messages]
            case Effect.MARK_MISSED:
                ag["missed"] = z3.BoolVal(True)
            case Effect.DIRECTORY_ADD_HOLDER:
                ag["registered"] = z3.BoolVal(True)
                if self.mode is Mode.STRICT:
                    ag["rlease"] = z3.BoolVal(True)
            case Effect.DIRECTORY_REMOVE_HOLDER:
                ag["registered"] = z3.BoolVal(False)
                ag["rlease"] = z3.BoolVal(False)
            case Effect.DIRECTORY_EXPIRE_HOLDER:
                ag["registered"] = z3.BoolVal(False)
                ag["ack_owed"] = z3.BoolVal(False)
            case Effect.PUBLISH_INVALIDATIONS | Effect.PUBLISH_INVALIDATIONS_AWAIT_ACKS:
                version = g["outbox"]
                for i, other in enumerate(w.agents):
                    holder = other["registered"]
                    self._add_message(w, i, holder, version)
                    if effect is Effect.PUBLISH_INVALIDATIONS_AWAIT_ACKS:
                        other["ack_owed"] = z3.Or(other["ack_owed"], holder)
                    other["registered"] = z3.BoolVal(False)
            case Effect.L2_READ:
                ag["data"] = g["l2"]
                ag["l2_lease"] = z3.BoolVal(False)
                ag["req"] = req("req", Request.DATA)
            case Effect.L2_TAKE_LEASE:
                for other in w.agents:
                    other["l2_lease"] = z3.BoolVal(False)
                ag["l2_lease"] = z3.BoolVal(True)
            case Effect.HOME_READ:
                ag["data"] = g["home"]
                ag["req"] = req("req", Request.DATA)
            case Effect.L2_LEASED_FILL:
                self._l2_set(w, ag["l2_lease"], ag["data"])
                ag["l2_lease"] = z3.BoolVal(False)
            case Effect.L2_FILL_IF_NEWER:
                self._l2_set(w, ag["data"] > g["l2"], ag["data"])
            case Effect.L2_DELETE:
                g["l2"] = self.v(-1)
                for other in w.agents:
                    other["l2_lease"] = z3.BoolVal(False)
            case Effect.L2_EVICT_COPY:
                g["l2"] = self.v(-1)
            case Effect.L2_ABANDON_LEASE:
                ag["l2_lease"] = z3.BoolVal(False)
            case Effect.L2_SET_IF_NEWER:
                self._l2_set(w, g["outbox"] > g["l2"], g["outbox"])
            case Effect.HOME_COMMIT_VERSION:
                assert a is not None
                self._home_new_version(w, a)
                live = self._grant_is(ag, GRANT_LIVE_INCARNATION)
                self._void_recalls(w, a, live)
                ag["lease"] = z3.And(ag["lease"], z3.Not(live))
                ag["grant"] = z3.If(live, self.v(NO_GRANT), ag["grant"])
                g["dirty"] = z3.BoolVal(False)
                ag["unsaved"] = z3.BoolVal(False)
            case Effect.HOME_COMMIT_KEEP_VERSION:
                # version level: a commit that names no new version (the value it changes is
                # not encoded; the explorer's version_names_one_value sees it)
                assert a is not None
                g["commits"] = g["commits"] + self.v(1)
                g["outbox"] = z3.If(g["home"] > self.v(0), g["home"], g["outbox"])
                ag["ver"] = g["home"]
                ag["req"] = self.code("req", Request.SETTLE)
                live = self._grant_is(ag, GRANT_LIVE_INCARNATION)
                self._void_recalls(w, a, live)
                ag["lease"] = z3.And(ag["lease"], z3.Not(live))
                ag["grant"] = z3.If(live, self.v(NO_GRANT), ag["grant"])
                g["dirty"] = z3.BoolVal(False)
                ag["unsaved"] = z3.BoolVal(False)
            case Effect.HOME_RESERVE_AND_GRANT:
                assert a is not None
                self._home_new_version(w, a)
                ag["grant"] = self.v(GRANT_LIVE_INCARNATION)
                g["dirty"] = z3.BoolVal(True)
            case Effect.HOME_STORE_AND_RELEASE:
                assert a is not None
                g["dirty"] = z3.BoolVal(False)
                self._void_recalls(w, a, z3.BoolVal(True))
                ag["grant"] = self.v(NO_GRANT)
                ag["unsaved"] = z3.BoolVal(False)
                ag["lease"] = z3.BoolVal(False)
                ag["req"] = req("req", Request.NONE)
            case Effect.HOME_STORE_UNFENCED:
                assert a is not None
                live = self._grant_is(ag, GRANT_LIVE_INCARNATION)
                overwrites = z3.And(z3.Not(live), g["home"] > ag["ver"])
                g["violation"] = z3.If(
                    z3.And(g["violation"] == self.code("viol", VIOLATION_NONE), overwrites),
                    self.code("viol", VIOLATION_UNFENCED),
                    g["violation"],
                )
                g["dirty"] = z3.And(g["dirty"], z3.Not(live))
                self._void_recalls(w, a, live)
                ag["grant"] = z3.If(live, self.v(NO_GRANT), ag["grant"])
                ag["unsaved"] = z3.BoolVal(False)
                ag["ver"] = self.v(-1)
                ag["lease"] = z3.BoolVal(False)
                ag["req"] = req("req", Request.NONE)
            case Effect.HOME_STORE_KEEP_GRANT:
                g["dirty"] = z3.BoolVal(False)
                ag["unsaved"] = z3.BoolVal(False)
                ag["req"] = req("req", Request.NONE)
            case Effect.HOME_REVOKE_GRANT:
                assert a is not None
                self._void_recalls(w, a, z3.BoolVal(True))
                ag["grant"] = self.v(NO_GRANT)
                g["dirty"] = z3.BoolVal(False)
                g["home"] = g["home"] + self.v(1)
                g["commits"] = g["commits"] + self.v(1)
            case Effect.HOME_CLEAR_OUTBOX:
                g["outbox"] = self.v(0)
            case _:
                raise ValueError(
                    f"effect {effect!r} has no Z3 encoding; add it to proofs/z3_encoding.py"
                )

    # ------------------------------------------------------------------------------ steps

    def initial(self, s: SymState) -> Expr:
        """`s` is the initial state of the definition."""
        return self.equal(s, self.concrete(initial_state(self.defn)))

    def offers(self, s: SymState) -> Iterator[tuple[Event, int | None, int, Expr]]:
        """(event, subject agent, payload, offered) as the model offers them, symbolically."""
        faults = self.defn.faults
        true = z3.BoolVal(True)
        budget = self.defn.fault_budget
        # a fault is offered only while the run's fault budget lasts
        fault_ok = true if budget is None else s.g["faults"] < self.v(budget)
        for a, ag in enumerate(s.agents):
            box = s.inboxes[a]
            for event in USER_OFFERED:
                yield event, a, 0, true
            if Event.EVICT in faults:
                yield Event.EVICT, a, 0, fault_ok
            for m in self.messages:
                if m == RECALL:
                    yield Event.DELIVER_RECALL, a, RECALL, box[m]
                else:
                    yield Event.DELIVER_INVALIDATE, a, m, box[m]
                if Event.DROP_MESSAGE in faults:
                    yield Event.DROP_MESSAGE, a, m, z3.And(fault_ok, box[m])
            if Event.DISCONNECT in faults:
                yield Event.DISCONNECT, a, 0, fault_ok
            for request, event in REQUEST_EVENT.items():
                yield event, a, 0, self._req_is(ag, request)
            for request, event in REQUEST_ALTERNATIVE.items():
                yield event, a, 0, self._req_is(ag, request)
            yield Event.RESYNC, a, 0, ag["missed"]
            if Event.LEASE_LAPSE in faults:
                yield Event.LEASE_LAPSE, a, 0, fault_ok
            if Event.CRASH in faults:
                yield Event.CRASH, a, 0, fault_ok
            yield Event.HOME_EXPIRE_OWNER, a, 0, z3.Not(self._grant_is(ag, NO_GRANT))
            yield Event.HOLDER_EXPIRE, a, 0, ag["ack_owed"]
        yield Event.OUTBOX_RELAY, None, 0, s.g["outbox"] != self.v(0)
        if Event.L2_EVICT in faults:
            yield Event.L2_EVICT, None, 0, z3.And(fault_ok, s.g["l2"] >= self.v(0))

    def entry(self, key: RowKey, event: Event) -> tuple[list[Rule], list[Refusal], bool]:
        """The rows and refusals of (key, event) in this mode, and whether any mode has one."""
        rules = [r for r in self.defn.table if r.source is key and r.event is event]
        refusals = [f for f in self.defn.refusals if f.source is key and f.event is event]
        known = bool(rules or refusals)
        return (
            [r for r in rules if self.mode in r.modes],
            [f for f in refusals if self.mode in f.modes],
            known,
        )

    def steps(self, s: SymState) -> list[Step]:
        """Every possible step out of `s`, each with its enabling formula and target terms."""
        steps: list[Step] = []
        not_violated = s.g["violation"] == self.code("viol", VIOLATION_NONE)
        for event, a, payload, offered in self.offers(s):
            site = EVENT_SITE[event]
            keys: list[tuple[RowKey, Expr]]
            if site is Site.AGENT and a is not None:
                keys = [(st, self.is_state(s.agents[a], st)) for st in L1State]
            else:
                keys = [(SITE_KEY[site], z3.BoolVal(True))]
            base = z3.And(not_violated, offered)
            defects: list[Expr] = []
            for key, at_key in keys:
                rules, refusals, _known = self.entry(key, event)
                matched = [self.holds(r.guard, s, a, payload) for r in rules]
                refused = [
                    z3.BoolVal(True) if f.guard is None else self.holds(f.guard, s, a, payload)
                    for f in refusals
                ]
                impossible = [
                    hit
                    for f, hit in zip(refusals, refused, strict=True)
                    if f.kind is RefusalKind.IMPOSSIBLE
                ]
                any_matched = z3.Or(*matched) if matched else z3.BoolVal(False)
                any_refused = z3.Or(*refused) if refused else z3.BoolVal(False)
                doubled = z3.Or(
                    z3.BoolVal(False),
                    *(
                        z3.And(matched[i], matched[j])
                        for i in range(len(matched))
                        for j in range(i + 1, len(matched))
                    ),
                )
                defect = z3.Or(
                    doubled,
                    z3.And(any_matched, any_refused),
                    z3.And(z3.Not(any_matched), z3.Not(any_refused)),
                    z3.And(z3.Not(any_matched), z3.Or(z3.BoolVal(False), *impossible)),
                )
                defects.append(z3.And(at_key, defect))
                for index, rule in enumerate(rules):
                    alone = z3.And(
                        matched[index],
                        *(z3.Not(other) for j, other in enumerate(matched) if j != index),
                        z3.Not(any_refused),
                    )
                    target = s.copy()
                    conditions = [base, at_key, alone]
                    kind = EVENT_KIND[event]
                    if event in FAULT_EVENT_SET:
                        target.g["faults"] = s.g["faults"] + self.v(1)
                    if event in (Event.DELIVER_INVALIDATE, Event.DELIVER_RECALL):
                        assert a is not None
                        target.inboxes[a][payload] = z3.BoolVal(False)
                        if event is Event.DELIVER_INVALIDATE:
                            told = target.agents[a]["told"]
                            target.agents[a]["told"] = self._max(told, self.v(payload))
                    if kind is EventKind.USER and VERSION_CREATING.intersection(rule.effects):
                        conditions.append(s.g["writes"] < self.v(self.defn.writes))
                        target.g["writes"] = s.g["writes"] + self.v(1)
                    if isinstance(rule.target, L1State) and a is not None and site is Site.AGENT:
                        target.agents[a]["st"] = self.code("st", int(rule.target))
                        if event in OPERATION:
                            target.agents[a]["op"] = self.v(OPERATION[event])
                    for effect in rule.effects:
                        self.apply(effect, target, a, payload)
                    steps.append(Step(event, a, payload, rule, z3.And(*conditions), target))
            defect_target = s.copy()
            defect_target.g["violation"] = self.code("viol", VIOLATION_DEFECT)
            steps.append(
                Step(event, a, payload, None, z3.And(base, z3.Or(*defects)), defect_target)
            )
        return steps

    def transition(self, s: SymState, choice: Expr, t: SymState, steps: list[Step]) -> Expr:
        """`t` follows `s` by the step numbered `choice` (a bit-vector selector) of `steps`."""
        width = choice.size()
        chosen = [choice == z3.BitVecVal(i, width) for i in range(len(steps))]
        parts = [z3.ULT(choice, z3.BitVecVal(len(steps), width))]
        parts += [z3.Implies(c, step.enabled) for c, step in zip(chosen, steps, strict=True)]
        current = list(s.terms())
        targets = [list(step.target.terms()) for step in steps]
        for position, (now, after) in enumerate(zip(current, t.terms(), strict=True)):
            value = now
            for c, target in zip(chosen, targets, strict=True):
                changed = target[position]
                if not changed.eq(now):
                    value = z3.If(c, changed, value)
            parts.append(after == value)
        return z3.And(*parts)

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
                    "Encoding.invariant_violations in proofs/z3_encoding.py"
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
            parts += [z3.Implies(box[m], self.v(m) <= g["home"]) for m in self.messages]
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


_AGENTLESS_EFFECTS: Final = frozenset(
    {
        Effect.MARK_DIRTY,
        Effect.SEND_RECALL,
        Effect.PUBLISH_INVALIDATIONS,
        Effect.PUBLISH_INVALIDATIONS_AWAIT_ACKS,
        Effect.L2_DELETE,
        Effect.L2_EVICT_COPY,
        Effect.L2_SET_IF_NEWER,
        Effect.HOME_CLEAR_OUTBOX,
    }
)
