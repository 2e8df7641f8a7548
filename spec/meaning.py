"""What every guard and effect of the table MEANS, stated once, as data.

A guard is a condition (`GUARDS`) and an effect an update of state fields (`EFFECTS`), both
written in the small language below over the fields of `model.AgentState` and `model.State`.
Three readers interpret the same statement:

- the model (`spec.model`): compiled once, at import, to Python functions over concrete states
  (`compile_guard`, `compile_effect` with the model's `Renderer`); the explorer and the
  Hypothesis tests run those;
- the Z3 encoding (`proofs.z3_semantics`): the same tree read as formulas over a `SymState`;
  an assignment to a field the encoding leaves out (the value level: `UNENCODED_*_FIELDS`) is
  skipped, and reading such a field gives its initial value (as `z3_state.version_level`);
- the production core (`sagemem.coherence.core`): compiled to Python over an agent's
  `EntryCore` for the guards that read only what the agent knows (`LOCAL_FIELDS` and the
  message's version); a guard that reads anything else is server-side (`server_side`): a
  server script evaluates it and the core learns it as the branch of the script's answer.

A few effects are not field updates in both readers (they record violations, which the model
keeps as text and the encoding as codes, or check a property across agents); they keep code in
`model._apply` and `Semantics.apply`, and `EFFECTS_IN_CODE` says which and why.
`tests/unit/test_meaning.py` proves every guard and effect is stated once and that the readers
agree; `tests/unit/test_z3_check.py` compares whole steps of the model and the encoding.

Standard library only; no I/O.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Final, Literal

from .codes import (
    GRANT_DEAD_INCARNATION,
    GRANT_LIVE_INCARNATION,
    NO_GRANT,
    RECALL,
    UPDATE_BASE,
    Request,
)
from .vocabulary import Effect, Guard, Mode

__all__ = [
    "EFFECTS",
    "EFFECTS_IN_CODE",
    "GUARDS",
    "LOCAL_FIELDS",
    "And",
    "Announced",
    "AppendName",
    "Cmp",
    "Code",
    "Drop",
    "Expr",
    "Field",
    "Flag",
    "ForEach",
    "FreshValue",
    "If",
    "InMode",
    "Max",
    "NameOf",
    "Not",
    "Num",
    "Or",
    "Plus",
    "Renderer",
    "Send",
    "Set",
    "Some",
    "Stmt",
    "When",
    "compile_function",
    "effect_needs_subject",
    "guard_needs_subject",
    "nodes",
    "server_side",
]

type Owner = Literal["agent", "each", "key"]


# ------------------------------------------------------------------------------------------
# the language: expressions


@dataclass(frozen=True, slots=True)
class Field:
    """A state field: of the step's subject agent ("agent"), of the agent a `Some`/`ForEach`
    ranges over ("each"), or of the key's global state ("key")."""

    owner: Owner
    name: str


@dataclass(frozen=True, slots=True)
class Num:
    """An integer constant (a version, a grant code, an operation code)."""

    value: int


@dataclass(frozen=True, slots=True)
class Code:
    """A request code (the `req` field)."""

    value: Request


@dataclass(frozen=True, slots=True)
class Flag:
    """A Boolean constant."""

    value: bool


@dataclass(frozen=True, slots=True)
class Announced:
    """The version the step's message announces (`model.message_version(payload)`)."""


@dataclass(frozen=True, slots=True)
class Cmp:
    """A comparison of two integers (or codes, or flags for == and !=)."""

    op: Literal["==", "!=", "<", "<=", ">", ">="]
    left: Expr
    right: Expr


@dataclass(frozen=True, slots=True)
class And:
    """All parts hold."""

    parts: tuple[Expr, ...]


@dataclass(frozen=True, slots=True)
class Or:
    """Some part holds."""

    parts: tuple[Expr, ...]


@dataclass(frozen=True, slots=True)
class Not:
    """The part does not hold."""

    part: Expr


@dataclass(frozen=True, slots=True)
class Some:
    """Some agent (`others`: some agent other than the subject) satisfies `body`, which reads
    that agent's fields as `Field("each", ...)`."""

    body: Expr
    others: bool = False


@dataclass(frozen=True, slots=True)
class Max:
    """The larger of two integers."""

    left: Expr
    right: Expr


@dataclass(frozen=True, slots=True)
class Plus:
    """The sum of two integers."""

    left: Expr
    right: Expr


@dataclass(frozen=True, slots=True)
class If:
    """`then` if `cond` holds, else `other`."""

    cond: Expr
    then: Expr
    other: Expr


@dataclass(frozen=True, slots=True)
class InMode:
    """The definition's consistency mode is `mode`."""

    mode: Mode


@dataclass(frozen=True, slots=True)
class FreshValue:
    """Value level: a value id no version and no copy names yet (a new write's value)."""


@dataclass(frozen=True, slots=True)
class NameOf:
    """Value level: the value id version `version` was created with (`State.names`)."""

    version: Expr


type Expr = (
    (Field | Num | Code | Flag | Announced | Cmp | And | Or | Not | Some | Max | Plus | If | InMode)
    | FreshValue
    | NameOf
)


# ------------------------------------------------------------------------------------------
# the language: statements (an effect is a sequence of them, run in order)


@dataclass(frozen=True, slots=True)
class Set:
    """Assign `value` to `target`."""

    target: Field
    value: Expr


@dataclass(frozen=True, slots=True)
class When:
    """Run `body` only if `cond` holds (evaluated once, before the body)."""

    cond: Expr
    body: tuple[Stmt, ...]


@dataclass(frozen=True, slots=True)
class ForEach:
    """Run `body` once per agent, which it reads and writes as `Field("each", ...)`."""

    body: tuple[Stmt, ...]


@dataclass(frozen=True, slots=True)
class Send:
    """Put a message in the inbox of the agent `ForEach` ranges over (a set: a message already
    there stays once): a recall, or an invalidation or update announcing `version`."""

    kind: Literal["recall", "invalidate", "update"]
    version: Expr = Num(0)


@dataclass(frozen=True, slots=True)
class Drop:
    """Remove messages from the subject's inbox: the step's own message ("payload"), every
    recall ("recalls", a released or revoked grant voids them), or all of them ("all")."""

    which: Literal["payload", "recalls", "all"]


@dataclass(frozen=True, slots=True)
class AppendName:
    """Value level: a new version is created with value id `value` (`names += (value,)`)."""

    value: Expr


type Stmt = Set | When | ForEach | Send | Drop | AppendName


# ------------------------------------------------------------------------------------------
# building blocks


def _mine(name: str) -> Field:
    return Field("agent", name)


def _each(name: str) -> Field:
    return Field("each", name)


def _key(name: str) -> Field:
    return Field("key", name)


def _eq(left: Expr, right: Expr) -> Cmp:
    return Cmp("==", left, right)


def _ne(left: Expr, right: Expr) -> Cmp:
    return Cmp("!=", left, right)


def _all(*parts: Expr) -> And:
    return And(parts)


def _some(*parts: Expr) -> Or:
    return Or(parts)


_FALSE: Final = Flag(False)
_TRUE: Final = Flag(True)
_NONE_V: Final = Num(-1)
_ZERO: Final = Num(0)
_ONE: Final = Num(1)

_MISSED = _mine("missed")
_DATA_NOT_OLDER = Cmp(">=", _mine("data"), _mine("floor"))
_DATA_OLDER = Cmp("<", _mine("data"), _mine("floor"))
_NO_L2 = Cmp("<", _key("l2"), _ZERO)
_ANY_GRANT = Some(_ne(_each("grant"), Num(NO_GRANT)))
_ACKS_OWED = Some(_each("ack_owed"))
_PUBLISHED = _eq(_key("outbox"), _ZERO)
_GRANT_LIVE = _eq(_mine("grant"), Num(GRANT_LIVE_INCARNATION))
_OWNED_BY_OTHER = _some(
    Some(_ne(_each("grant"), Num(NO_GRANT)), others=True),
    _eq(_mine("grant"), Num(GRANT_DEAD_INCARNATION)),
)


GUARDS: Final[dict[Guard, Expr]] = {
    Guard.ALWAYS: _TRUE,
    Guard.CONN_OK: Not(_MISSED),
    Guard.CONN_MISSED: _MISSED,
    Guard.INV_NEWER: Cmp(">", Announced(), _mine("ver")),
    Guard.INV_NOT_NEWER: Cmp("<=", Announced(), _mine("ver")),
    Guard.FETCH_L2_HIT: Cmp(">=", _key("l2"), _ZERO),
    Guard.FETCH_OWNED: _all(_NO_L2, _ANY_GRANT),
    Guard.FETCH_FREE: _all(_NO_L2, Not(_ANY_GRANT)),
    Guard.FETCH_SETTLED: _all(_NO_L2, Not(_ANY_GRANT), _PUBLISHED, Not(_ACKS_OWED)),
    Guard.FETCH_UNSETTLED: _all(_NO_L2, Not(_ANY_GRANT), _some(Not(_PUBLISHED), _ACKS_OWED)),
    Guard.DATA_FRESH: _all(Not(_MISSED), _DATA_NOT_OLDER),
    Guard.DATA_STALE: _all(Not(_MISSED), _DATA_OLDER),
    Guard.DATA_NOT_OLDER: _DATA_NOT_OLDER,
    Guard.DATA_OLDER: _DATA_OLDER,
    Guard.OWNED_BY_OTHER: _OWNED_BY_OTHER,
    Guard.NOT_OWNED_BY_OTHER: Not(_OWNED_BY_OTHER),
    Guard.PUBLISHED: _PUBLISHED,
    Guard.UNPUBLISHED: Not(_PUBLISHED),
    Guard.ACKNOWLEDGED: _all(_PUBLISHED, Not(_ACKS_OWED)),
    Guard.UNACKNOWLEDGED: _some(Not(_PUBLISHED), _ACKS_OWED),
    Guard.GRANT_HELD: _GRANT_LIVE,
    Guard.GRANT_LOST: Not(_GRANT_LIVE),
    Guard.OWNER_LEASE_LAPSED: _some(
        _eq(_mine("grant"), Num(GRANT_DEAD_INCARNATION)), _all(_GRANT_LIVE, Not(_mine("lease")))
    ),
    Guard.OWNER_LEASE_LIVE: _all(_GRANT_LIVE, _mine("lease")),
    Guard.HOLDER_LEASE_LAPSED: Not(_mine("rlease")),
    Guard.HOLDER_LEASE_LIVE: _mine("rlease"),
    Guard.VALUE_AT_HOME: _all(
        Not(_PUBLISHED), _eq(_key("outbox"), _key("home")), Not(_key("dirty"))
    ),
    Guard.VALUE_AT_OWNER: _all(
        Not(_PUBLISHED), _some(_ne(_key("outbox"), _key("home")), _key("dirty"))
    ),
}
"""The condition of every guard. A guard that reads the subject agent (its fields, or the
other agents than it) does not hold for an agent-less step (`guard_needs_subject`)."""

LOCAL_FIELDS: Final = frozenset({"ver", "data", "floor", "missed"})
"""The subject agent's fields its own core knows (`EntryCore.version`, the fill data, `floor`,
`missed`); with the message's version (`Announced`) they are all a guard evaluated by the
production core may read. The others are server-side: the home's grant and owner lease, the
directory's holder lease and owed acks, L2, the outbox, other agents' records."""


# ------------------------------------------------------------------------------------------
# effects


def _l2_set(version: Expr, value: Expr) -> tuple[Stmt, ...]:
    """L2 now holds `version` with value id `value` (written by a protocol step)."""
    return (
        Set(_key("l2"), version),
        Set(_key("l2val"), value),
        Set(_key("l2_high"), Max(_key("l2_high"), version)),
        Set(_key("l2_restored"), _FALSE),
    )


_HOME_NEW_VERSION: Final[tuple[Stmt, ...]] = (
    Set(_key("home"), Plus(_key("home"), _ONE)),
    Set(_key("commits"), Plus(_key("commits"), _ONE)),
    Set(_key("outbox"), _key("home")),
    Set(_mine("ver"), _key("home")),
    Set(_mine("restored"), _FALSE),
    Set(_mine("val"), FreshValue()),
    AppendName(_mine("val")),
    Set(_mine("req"), Code(Request.SETTLE)),
)
_RELEASE_IF_LIVE: Final = When(
    _GRANT_LIVE,
    (Drop("recalls"), Set(_mine("grant"), Num(NO_GRANT)), Set(_mine("lease"), _FALSE)),
)
_LISTENING: Final = Not(_each("gone"))  # nobody listens for a departed agent


def _request(request: Request) -> tuple[Stmt, ...]:
    return (Set(_mine("req"), Code(request)),)


def _publish(*, await_acks: bool) -> tuple[Stmt, ...]:
    acks = (Set(_each("ack_owed"), _TRUE),) if await_acks else ()
    body = (
        When(_LISTENING, (Send("invalidate", _key("outbox")),)),
        Set(_each("registered"), _FALSE),
        *acks,
    )
    return (ForEach((When(_each("registered"), body),)),)


EFFECTS: Final[dict[Effect, tuple[Stmt, ...]]] = {
    Effect.INSTALL_COPY: (
        Set(_mine("ver"), _mine("data")),
        Set(_mine("val"), _mine("dval")),
        Set(_mine("data"), _NONE_V),
        Set(_mine("dval"), _NONE_V),
        Set(_mine("req"), Code(Request.NONE)),
    ),
    Effect.DROP_COPY: (Set(_mine("ver"), _NONE_V), Set(_mine("val"), _NONE_V)),
    Effect.NOTE_INVALIDATION: (Set(_mine("floor"), Max(_mine("floor"), Announced())),),
    Effect.INSTALL_UPDATE: (
        Set(_mine("ver"), Announced()),
        Set(_mine("val"), NameOf(Announced())),
    ),
    Effect.START_OWNER_LEASE: (Set(_mine("lease"), _TRUE),),
    Effect.LEASE_LAPSED: (Set(_mine("lease"), _FALSE), Set(_mine("rlease"), _FALSE)),
    Effect.REPORT_FENCED: (
        Set(_mine("unsaved"), _FALSE),
        Set(_mine("ver"), _NONE_V),
        Set(_mine("val"), _NONE_V),
        Set(_mine("req"), Code(Request.NONE)),
        Set(_mine("lease"), _FALSE),
    ),
    Effect.RESYNC_CONNECTION: (Set(_mine("missed"), _FALSE),),
    Effect.LOSE_VOLATILE_STATE: (
        Set(_mine("ver"), _NONE_V),
        Set(_mine("data"), _NONE_V),
        Set(_mine("val"), _NONE_V),
        Set(_mine("dval"), _NONE_V),
        Set(_mine("rstart"), _ZERO),
        Set(_mine("floor"), _ZERO),
        Set(_mine("missed"), _FALSE),
        Drop("all"),
        Set(_mine("req"), Code(Request.NONE)),
        Set(_mine("lease"), _FALSE),
        Set(_mine("rlease"), _FALSE),
        When(
            _ne(_mine("grant"), Num(NO_GRANT)),
            (Set(_mine("grant"), Num(GRANT_DEAD_INCARNATION)),),
        ),
        Set(_mine("l2_lease"), _FALSE),
        Set(_mine("unsaved"), _FALSE),
        Set(_mine("op"), _ZERO),
        Set(_mine("told"), _ZERO),
    ),
    Effect.REFETCH: (
        # Production backs off after discarding stale data (and resets the floor past
        # `l2_limit_s`); the model lets the back-off last until the restored copy is gone (its
        # TTL), so a refetch never reads the same restored copy again.
        When(
            _all(_mine("restored"), _key("l2_restored"), _DATA_OLDER),
            (
                Set(_key("l2"), _NONE_V),
                Set(_key("l2val"), _NONE_V),
                Set(_key("l2_restored"), _FALSE),
            ),
        ),
        Set(_mine("data"), _NONE_V),
        Set(_mine("dval"), _NONE_V),
        Set(_mine("req"), Code(Request.FILL)),
    ),
    Effect.MARK_DIRTY: (
        Set(_key("dirty"), _TRUE),
        Set(_mine("val"), FreshValue()),  # the owner's local write: a new value, same version
    ),
    Effect.AWAIT_INVALIDATIONS: _request(Request.SETTLE),
    Effect.AWAIT_OWNER: _request(Request.WAIT_OWNER),
    Effect.REQUEST_FILL: (
        Set(_mine("data"), _NONE_V),
        Set(_mine("dval"), _NONE_V),
        Set(_mine("req"), Code(Request.FILL)),
    ),
    Effect.REQUEST_COMMIT: _request(Request.COMMIT),
    Effect.REQUEST_OWNERSHIP: _request(Request.ACQUIRE),
    Effect.REQUEST_WRITE_BACK: _request(Request.WRITE_BACK),
    Effect.REQUEST_FLUSH: _request(Request.FLUSH),
    Effect.SEND_RECALL: (
        ForEach((When(_all(_ne(_each("grant"), Num(NO_GRANT)), _LISTENING), (Send("recall"),)),)),
    ),
    Effect.SEND_ACK: (Set(_mine("ack_owed"), _FALSE),),
    Effect.DISCARD_MESSAGE: (Drop("payload"),),
    Effect.DISCARD_ALL_MESSAGES: (Drop("all"),),
    Effect.MARK_MISSED: (Set(_mine("missed"), _TRUE),),
    Effect.DIRECTORY_ADD_HOLDER: (
        Set(_mine("registered"), _TRUE),
        When(InMode(Mode.STRICT), (Set(_mine("rlease"), _TRUE),)),
    ),
    Effect.DIRECTORY_REMOVE_HOLDER: (
        Set(_mine("registered"), _FALSE),
        Set(_mine("rlease"), _FALSE),
    ),
    Effect.DIRECTORY_EXPIRE_HOLDER: (
        Set(_mine("registered"), _FALSE),
        Set(_mine("ack_owed"), _FALSE),
    ),
    Effect.PUBLISH_INVALIDATIONS: _publish(await_acks=False),
    Effect.PUBLISH_INVALIDATIONS_AWAIT_ACKS: _publish(await_acks=True),
    Effect.PUBLISH_UPDATES: (
        # the holders stay registered: the next relay reaches them
        ForEach((When(_all(_each("registered"), _LISTENING), (Send("update", _key("outbox")),)),)),
    ),
    Effect.L2_READ: (
        Set(_mine("data"), _key("l2")),
        Set(_mine("dval"), _key("l2val")),
        Set(_mine("restored"), _key("l2_restored")),
        Set(_mine("l2_lease"), _FALSE),
        Set(_mine("req"), Code(Request.DATA)),
    ),
    Effect.L2_TAKE_LEASE: (
        ForEach((Set(_each("l2_lease"), _FALSE),)),
        Set(_mine("l2_lease"), _TRUE),
    ),
    Effect.HOME_READ: (
        Set(_mine("data"), _key("home")),
        Set(_mine("dval"), _key("hval")),
        Set(_mine("restored"), _FALSE),
        Set(_mine("req"), Code(Request.DATA)),
    ),
    Effect.L2_LEASED_FILL: (
        When(
            _mine("l2_lease"),
            (*_l2_set(_mine("data"), _mine("dval")), Set(_mine("l2_lease"), _FALSE)),
        ),
    ),
    Effect.L2_FILL_IF_NEWER: (
        When(Cmp(">", _mine("data"), _key("l2")), _l2_set(_mine("data"), _mine("dval"))),
    ),
    Effect.L2_DELETE: (
        Set(_key("l2"), _NONE_V),
        Set(_key("l2val"), _NONE_V),
        Set(_key("l2_restored"), _FALSE),
        ForEach((Set(_each("l2_lease"), _FALSE),)),
    ),
    Effect.L2_EVICT_COPY: (
        Set(_key("l2"), _NONE_V),
        Set(_key("l2val"), _NONE_V),
        Set(_key("l2_restored"), _FALSE),
    ),
    Effect.L2_ABANDON_LEASE: (Set(_mine("l2_lease"), _FALSE),),
    Effect.L2_SET_IF_NEWER: (
        When(
            Cmp(">", _key("outbox"), _key("l2")),
            _l2_set(_key("outbox"), NameOf(_key("outbox"))),
        ),
    ),
    Effect.HOME_COMMIT_VERSION: (
        *_HOME_NEW_VERSION,
        Set(_key("hval"), _mine("val")),
        _RELEASE_IF_LIVE,
        Set(_key("dirty"), _FALSE),
        Set(_mine("unsaved"), _FALSE),
    ),
    Effect.HOME_RESERVE_AND_GRANT: (
        *_HOME_NEW_VERSION,
        Set(_mine("grant"), Num(GRANT_LIVE_INCARNATION)),
        Set(_key("dirty"), _TRUE),
    ),
    Effect.HOME_STORE_AND_RELEASE: (
        Set(_key("dirty"), _FALSE),
        Set(_key("hval"), _mine("val")),
        Drop("recalls"),
        Set(_mine("grant"), Num(NO_GRANT)),
        Set(_mine("unsaved"), _FALSE),
        Set(_mine("lease"), _FALSE),
        Set(_mine("req"), Code(Request.NONE)),
    ),
    Effect.HOME_COMMIT_KEEP_VERSION: (
        # A delete (or any commit) that changes the value but not the version: ABA.
        Set(_key("commits"), Plus(_key("commits"), _ONE)),
        Set(_key("hval"), FreshValue()),
        Set(_mine("ver"), _key("home")),
        Set(_mine("restored"), _FALSE),
        Set(_mine("val"), _key("hval")),
        When(Cmp(">", _key("home"), _ZERO), (Set(_key("outbox"), _key("home")),)),
        Set(_mine("req"), Code(Request.SETTLE)),
        _RELEASE_IF_LIVE,
        Set(_key("dirty"), _FALSE),
        Set(_mine("unsaved"), _FALSE),
    ),
    Effect.HOME_STORE_KEEP_GRANT: (
        Set(_key("dirty"), _FALSE),
        Set(_key("hval"), _mine("val")),
        Set(_mine("unsaved"), _FALSE),
        Set(_mine("req"), Code(Request.NONE)),
    ),
    Effect.HOME_REVOKE_GRANT: (
        Drop("recalls"),
        Set(_mine("grant"), Num(NO_GRANT)),
        Set(_key("dirty"), _FALSE),
        # The revoked grant's version may name a value the owner acknowledged and the home
        # never got: the value the home keeps gets a version of its own.
        Set(_key("home"), Plus(_key("home"), _ONE)),
        Set(_key("commits"), Plus(_key("commits"), _ONE)),
        AppendName(_key("hval")),
    ),
    Effect.HOME_CLEAR_OUTBOX: (Set(_key("outbox"), _ZERO),),
}
"""The update of the state fields every data effect makes, run in order."""

EFFECTS_IN_CODE: Final[dict[Effect, str]] = {
    Effect.RETURN_VALUE: (
        "answers a read: checks the read guarantees (value, floor, invalidations seen, "
        "strict linearizability) and records the first broken one, as text in the model and "
        "as a code in the encoding"
    ),
    Effect.RETURN_VALUE_UNCACHED: "as RETURN_VALUE, for the fill data, which it then drops",
    Effect.ACK_WRITE: (
        "answers a write: records an unanswered write (text vs code), and the model checks "
        "every other agent's copy (write_invalidates_copies, value level, not encoded)"
    ),
    Effect.REPORT_CONFLICT: "answers a write: records an unanswered write (text vs code)",
    Effect.HOME_STORE_UNFENCED: (
        "a mutant's effect: the encoding records the lost write as a violation at once, the "
        "model leaves it to its value-level invariants (version_names_one_value)"
    ),
}
"""Effects whose meaning stays code in `model._apply` and `proofs.z3_semantics.Semantics.apply`,
and why; `tests/unit/test_meaning.py` checks the two agree on them (version level)."""


# ------------------------------------------------------------------------------------------
# reading the statements


def nodes(item: Expr | Stmt) -> Iterator[Expr | Stmt]:
    """`item` and every expression and statement inside it, depth first."""
    yield item
    match item:
        case Cmp(_, left, right) | Max(left, right) | Plus(left, right):
            yield from nodes(left)
            yield from nodes(right)
        case And(parts) | Or(parts):
            for part in parts:
                yield from nodes(part)
        case Not(part):
            yield from nodes(part)
        case Some(body, _):
            yield from nodes(body)
        case If(cond, then, other):
            yield from nodes(cond)
            yield from nodes(then)
            yield from nodes(other)
        case NameOf(version):
            yield from nodes(version)
        case Set(target, value):
            yield from nodes(target)
            yield from nodes(value)
        case When(cond, body):
            yield from nodes(cond)
            for stmt in body:
                yield from nodes(stmt)
        case ForEach(body):
            for stmt in body:
                yield from nodes(stmt)
        case Send(_, version):
            yield from nodes(version)
        case AppendName(value):
            yield from nodes(value)


def _reads_subject(items: tuple[Expr | Stmt, ...]) -> bool:
    return any(
        (isinstance(n, Field) and n.owner == "agent")
        or (isinstance(n, Some) and n.others)
        or isinstance(n, (Announced, Drop))
        for item in items
        for n in nodes(item)
    )


def guard_needs_subject(guard: Guard) -> bool:
    """Whether `guard` reads the step's subject agent (then it fails for agent-less steps)."""
    return _reads_subject((GUARDS[guard],))


def effect_needs_subject(effect: Effect) -> bool:
    """Whether a data effect reads or writes the step's subject agent."""
    return _reads_subject(EFFECTS[effect])


def server_side(guard: Guard) -> bool:
    """Whether only a server can evaluate `guard`: it reads a field outside `LOCAL_FIELDS`
    (the key's, another agent's, or the subject's records held by the home or directory)."""
    return any(
        isinstance(n, Field) and (n.owner != "agent" or n.name not in LOCAL_FIELDS)
        for n in nodes(GUARDS[guard])
    )


# ------------------------------------------------------------------------------------------
# compiling to Python (the model's and the core's reader)


_PY_OPS: Final = {"==": "==", "!=": "!=", "<": "<", "<=": "<=", ">": ">", ">=": ">="}


class Renderer:
    """Turns statements into Python source; a reader says how its fields are reached by
    overriding `field` (and, for effects, `fresh_value`, `name_of` and the statement hooks).
    Constants are bound by name in `namespace`, which the compiled function runs in."""

    def __init__(self, mode: Mode | None = None) -> None:
        self.mode = mode
        self.namespace: dict[str, object] = {
            "_RECALL": RECALL,
            "_UPDATE_BASE": UPDATE_BASE,
            **{f"_REQ_{r.name}": r for r in Request},
        }

    # ---- expressions

    def field(self, field: Field) -> str:  # pragma: no cover - every reader overrides it
        """The Python expression reading `field`."""
        raise NotImplementedError

    def announced(self) -> str:
        """The Python expression of the version the step's message announces."""
        return "_announced"

    def compare(self, cmp: Cmp) -> str:
        """The Python expression of a comparison."""
        return f"({self.expr(cmp.left)} {_PY_OPS[cmp.op]} {self.expr(cmp.right)})"

    def fresh_value(self) -> str:
        """The Python expression of a new value id (value level)."""
        raise ValueError("FreshValue has no meaning for this reader")

    def name_of(self, version: str) -> str:
        """The Python expression of the value id `version` names (value level)."""
        raise ValueError("NameOf has no meaning for this reader")

    def agents(self) -> str:
        """The Python expression of the agents' sequence."""
        raise ValueError("this reader has no agents to range over")

    def expr(self, e: Expr) -> str:
        """The Python source of expression `e`."""
        match e:
            case Field():
                return self.field(e)
            case Num(value):
                return repr(value)
            case Code(value):
                return f"_REQ_{value.name}"
            case Flag(value):
                return repr(value)
            case Announced():
                return self.announced()
            case Cmp():
                return self.compare(e)
            case And(parts):
                return "(" + " and ".join(self.expr(p) for p in parts) + ")"
            case Or(parts):
                return "(" + " or ".join(self.expr(p) for p in parts) + ")"
            case Not(part):
                return f"(not {self.expr(part)})"
            case Some(body, others):
                if others:
                    return (
                        f"any({self.expr(body)} for _i, _x in enumerate({self.agents()}) "
                        "if _i != a)"
                    )
                return f"any({self.expr(body)} for _x in {self.agents()})"
            case Max(left, right):
                return f"max({self.expr(left)}, {self.expr(right)})"
            case Plus(left, right):
                return f"({self.expr(left)} + {self.expr(right)})"
            case If(cond, then, other):
                return f"({self.expr(then)} if {self.expr(cond)} else {self.expr(other)})"
            case InMode(mode):
                if self.mode is None:
                    raise ValueError("InMode needs a reader compiled for one mode")
                return repr(self.mode is mode)
            case FreshValue():
                return self.fresh_value()
            case NameOf(version):
                return self.name_of(self.expr(version))
        raise AssertionError(f"unknown expression {e!r}")  # pragma: no cover

    # ---- statements

    def stmt(self, s: Stmt, indent: str) -> list[str]:
        """The Python source lines of statement `s`."""
        match s:
            case Set(target, value):
                return [f"{indent}{self.field(target)} = {self.expr(value)}"]
            case When(cond, body):
                lines = [f"{indent}if {self.expr(cond)}:"]
                for inner in body:
                    lines += self.stmt(inner, indent + "    ")
                return lines
            case ForEach(body):
                lines = [f"{indent}for _x in {self.agents()}:"]
                for inner in body:
                    lines += self.stmt(inner, indent + "    ")
                return lines
            case Send(kind, version):
                return [f"{indent}{self.send(kind, self.expr(version))}"]
            case Drop(which):
                return [f"{indent}{self.drop(which)}"]
            case AppendName(value):
                return [f"{indent}{self.append_name(self.expr(value))}"]
        raise AssertionError(f"unknown statement {s!r}")  # pragma: no cover

    def send(self, kind: str, version: str) -> str:
        """A Python statement sending a message to the agent `ForEach` ranges over."""
        raise ValueError("this reader sends no messages")

    def drop(self, which: str) -> str:
        """A Python statement removing messages from the subject's inbox."""
        raise ValueError("this reader has no inbox")

    def append_name(self, value: str) -> str:
        """A Python statement recording a new version's value id (value level)."""
        raise ValueError("AppendName has no meaning for this reader")


def compile_function(
    name: str, params: str, prologue: tuple[str, ...], body: list[str], namespace: dict[str, object]
) -> Callable[..., object]:
    """Compile `def name(params): prologue; body` once, in `namespace` (no tree is walked
    when the function runs)."""
    lines = [f"def {name}({params}):", *(f"    {line}" for line in prologue)]
    lines += body or ["    pass"]
    source = "\n".join(lines) + "\n"
    scope = dict(namespace)
    exec(compile(source, f"<meaning:{name}>", "exec"), scope)  # our own statements
    function = scope[name]
    assert callable(function)
    return function
