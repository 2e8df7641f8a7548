"""The state half of the Z3 encoding: one global state of the key as terms, and the terms.

A `SymState` holds a few bit-vector and Boolean terms per field of `sagemem.spec.model.State`
(versions are small signed bit-vectors, L1 states and requests 4-bit codes, the inbox one
Boolean per possible message); the fields and their kinds are derived from the model's own
state types (`AGENT_FIELDS`, `GLOBAL_FIELDS`). `Terms` builds constants and variables of one
`ProtocolDefinition`'s widths, turns model states into terms and back, and holds the small
predicates (an agent's state, request or grant) that the semantics (`proofs.z3_semantics`) and
the invariants (`proofs.z3_invariants`) both read. `proofs.z3_encoding` puts the three together.

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
)
from sagemem.spec.model import (
    GRANT_DEAD_INCARNATION,
    NO_GRANT,
    UNENCODED_AGENT_FIELDS,
    UNENCODED_GLOBAL_FIELDS,
    UPDATE_BASE,
    AgentState,
    ProtocolDefinition,
    Request,
    State,
    initial_state,
)
from sagemem.spec.table import Rule
from sagemem.spec.vocabulary import (
    EVENT_SITE,
    Event,
    L1State,
)

__all__ = [
    "AGENT_FIELDS",
    "GLOBAL_FIELDS",
    "HOLDS_OWNED_DATA",
    "HOLDS_VERSION",
    "OWNER_STATES",
    "REQUESTS_BY_STATE",
    "VALID_STATES",
    "VALUE_LEVEL_INVARIANTS",
    "VIOLATION_CODES",
    "VIOLATION_DEFECT",
    "VIOLATION_LINEARIZABLE",
    "VIOLATION_MONOTONIC",
    "VIOLATION_NONE",
    "VIOLATION_READ_AFTER_INVALIDATION",
    "VIOLATION_UNANSWERED",
    "VIOLATION_UNFENCED",
    "Expr",
    "Step",
    "SymState",
    "Terms",
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
    inboxes: list[dict[int, Expr]]  # per agent: the model's message id -> "in flight"
    g: dict[str, Expr]

    def copy(self) -> SymState:
        """A shallow copy whose dicts and lists may be updated without touching this one."""
        return SymState(
            [dict(ag) for ag in self.agents], [dict(box) for box in self.inboxes], dict(self.g)
        )

    def terms(self) -> Iterator[Expr]:
        """Every term, in a fixed order (agents, their inboxes, then the globals)."""
        for ag, box in zip(self.agents, self.inboxes, strict=True):
            yield from ag.values()
            yield from box.values()
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


class Terms:
    """The terms of one `ProtocolDefinition`'s encoding: widths, constants, variables, states."""

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
        # RECALL=0, INV(n)=n for n <= bound, and with write-update UPD(n)=UPDATE_BASE+n
        self.messages: tuple[int, ...] = tuple(range(self.max_version + 1)) + (
            tuple(UPDATE_BASE + n for n in range(1, self.max_version + 1))
            if defn.write_update
            else ()
        )
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
        inboxes = [
            {m: z3.Bool(f"{prefix}_a{i}_msg{m}") for m in self.messages} for i in range(self.n)
        ]
        g = {f: self._var(k, f"{prefix}_{f}") for f, k in GLOBAL_FIELDS.items()}
        return SymState(agents, inboxes, g)

    def concrete(self, state: State) -> SymState:
        """The constant terms of a model state (its violation text kept as its kind)."""
        agents: list[dict[str, Expr]] = []
        inboxes: list[dict[int, Expr]] = []
        for ag in state.agents:
            agents.append({f: self._const(k, getattr(ag, f)) for f, k in AGENT_FIELDS.items()})
            unknown = [m for m in ag.inbox if m not in self.messages]
            if unknown:
                raise ValueError(
                    f"message(s) {unknown} are outside the encoded ones {list(self.messages)}; "
                    "the state breaks the type invariant"
                )
            inboxes.append({m: z3.BoolVal(m in ag.inbox) for m in self.messages})
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
