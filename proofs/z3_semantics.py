"""The semantics half of the Z3 encoding: guards, effects and the steps they make.

The meaning of every guard and effect is stated once, as data, in `sagemem.spec.meaning`; this
module is its Z3 reader (`Semantics.holds` reads a guard's condition as a formula,
`Semantics.apply` runs an effect's statements on the terms), as `sagemem.spec.model` is its
Python reader. The few effects `meaning.EFFECTS_IN_CODE` lists keep code here and in the model;
`tests/unit/test_meaning.py` and `tests/unit/test_z3_check.py` evaluate both readers on
sampled states and steps and fail when they disagree.

A step is one `Step`: (event, subject agent, payload, row or table defect) with its enabling
condition and the successor state, built by applying the row's effects in order to the terms.
A (state, event) that the table leaves undefined, doubles, or lists as
impossible steps into a state whose `viol` code is `VIOLATION_DEFECT`.

This module must never import the production package `sagemem` (only `sagemem.spec`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Final

import z3

from sagemem.spec.meaning import (
    EFFECTS,
    GUARDS,
    And,
    Announced,
    AppendName,
    Cmp,
    Code,
    Drop,
    Field,
    Flag,
    ForEach,
    FreshValue,
    If,
    InMode,
    Max,
    NameOf,
    Not,
    Num,
    Or,
    Plus,
    Send,
    Set,
    Some,
    Stmt,
    When,
    guard_needs_subject,
)
from sagemem.spec.meaning import Expr as MeaningExpr
from sagemem.spec.model import (
    FAULT_EVENT_SET,
    GRANT_LIVE_INCARNATION,
    MESSAGE_EVENTS,
    NO_GRANT,
    OP_NONE,
    OP_READ,
    OP_WRITE,
    OPERATION,
    RECALL,
    REQUEST_ALTERNATIVE,
    REQUEST_EVENT,
    SITE_KEY,
    USER_OFFERED,
    VERSION_CREATING,
    Request,
    initial_state,
    is_update,
    message_version,
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

from .z3_state import (
    _BLANK_AGENT,
    _BLANK_GLOBAL,
    VIOLATION_DEFECT,
    VIOLATION_LINEARIZABLE,
    VIOLATION_MONOTONIC,
    VIOLATION_NONE,
    VIOLATION_READ_AFTER_INVALIDATION,
    VIOLATION_UNANSWERED,
    VIOLATION_UNFENCED,
    Expr,
    Step,
    SymState,
    Terms,
)

__all__ = ["Semantics"]

_Z3_OPS: Final[dict[str, Callable[[Expr, Expr], Expr]]] = {
    "==": lambda left, right: left == right,
    "!=": lambda left, right: left != right,
    "<": lambda left, right: left < right,
    "<=": lambda left, right: left <= right,
    ">": lambda left, right: left > right,
    ">=": lambda left, right: left >= right,
}


class Semantics(Terms):
    """Guards, effects, offered events and steps of one definition, as formulas."""

    # ------------------------------------------------------------------------------ guards

    def holds(self, guard: Guard, s: SymState, a: int | None, payload: int) -> Expr:
        """The formula of `guard`'s condition (`meaning.GUARDS`) for subject agent `a` (None:
        agent-less step, where a guard that reads the subject does not hold), as model.holds."""
        if a is None and guard_needs_subject(guard):
            return z3.BoolVal(False)
        return self._term(GUARDS[guard], s, a, None, payload)

    def _field(self, f: Field, s: SymState, a: int | None, each: int | None) -> Expr:
        """The term of a field; a field the encoding leaves out reads as its initial value."""
        if f.owner == "key":
            if f.name in s.g:
                return s.g[f.name]
            return self._blank(_BLANK_GLOBAL[f.name])
        index = a if f.owner == "agent" else each
        if index is None:
            raise ValueError(
                f"the {f.owner} field {f.name!r} needs a subject agent but the step has none; "
                "the model cannot run it either"
            )
        agent = s.agents[index]
        if f.name in agent:
            return agent[f.name]
        return self._blank(_BLANK_AGENT[f.name])

    def _blank(self, value: object) -> Expr:
        if isinstance(value, bool):
            return z3.BoolVal(value)
        assert isinstance(value, int), f"unencoded field value {value!r}"
        return self.v(value)

    def _term(  # one case per node of the language
        self, e: MeaningExpr, s: SymState, a: int | None, each: int | None, payload: int
    ) -> Expr:
        """The Z3 term of expression `e` of `sagemem.spec.meaning`."""
        match e:
            case Field():
                return self._field(e, s, a, each)
            case Num(value):
                return self.v(value)
            case Code(value):
                return self.code("req", int(value))
            case Flag(value):
                return z3.BoolVal(value)
            case Announced():
                return self.v(message_version(payload))
            case Cmp(op, left, right):
                return _Z3_OPS[op](
                    self._term(left, s, a, each, payload), self._term(right, s, a, each, payload)
                )
            case And(parts):
                return z3.And(*(self._term(p, s, a, each, payload) for p in parts))
            case Or(parts):
                return z3.Or(*(self._term(p, s, a, each, payload) for p in parts))
            case Not(part):
                return z3.Not(self._term(part, s, a, each, payload))
            case Some(body, others):
                terms = [
                    self._term(body, s, a, i, payload)
                    for i in range(len(s.agents))
                    if not (others and i == a)
                ]
                return z3.Or(*terms) if terms else z3.BoolVal(False)
            case Max(left, right):
                return self._max(
                    self._term(left, s, a, each, payload), self._term(right, s, a, each, payload)
                )
            case Plus(left, right):
                return self._term(left, s, a, each, payload) + self._term(
                    right, s, a, each, payload
                )
            case If(cond, then, other):
                return z3.If(
                    self._term(cond, s, a, each, payload),
                    self._term(then, s, a, each, payload),
                    self._term(other, s, a, each, payload),
                )
            case InMode(mode):
                return z3.BoolVal(self.mode is mode)
            case FreshValue() | NameOf():
                raise ValueError(
                    f"{e!r} is of the value level, which the encoding leaves out; only a "
                    "field it does not encode may be assigned it"
                )
        raise AssertionError(f"unknown expression {e!r}")  # pragma: no cover

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

    def _void_recalls(self, w: SymState, a: int, when: Expr) -> None:
        w.inboxes[a][RECALL] = z3.And(w.inboxes[a][RECALL], z3.Not(when))

    def apply(self, effect: Effect, w: SymState, a: int | None, payload: int) -> None:
        """Apply `effect` to the terms of `w` in place, as model._apply does to a state: its
        update in `meaning.EFFECTS`, or the code below for `meaning.EFFECTS_IN_CODE`."""
        statements = EFFECTS.get(effect)
        if statements is not None:
            for statement in statements:
                self._run(statement, w, a, None, payload, None)
            return
        if a is None:
            raise ValueError(
                f"effect {effect.name} needs a subject agent but the row has none; "
                "the model cannot run it either"
            )
        g = w.g
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
            case _:
                raise ValueError(
                    f"effect {effect!r} has no Z3 encoding; add it to proofs/z3_semantics.py"
                )

    def _run(  # one case per statement of the language
        self,
        statement: Stmt,
        w: SymState,
        a: int | None,
        each: int | None,
        payload: int,
        when: Expr | None,
    ) -> None:
        """Run one statement of `sagemem.spec.meaning` on the terms of `w`, only `when` holds
        (None: always). An assignment to a field the encoding leaves out is skipped."""
        match statement:
            case Set(target, value):
                fields = self._fields_of(target, w, a, each)
                if target.name not in fields:
                    return  # the value level: not encoded
                new = self._term(value, w, a, each, payload)
                fields[target.name] = new if when is None else z3.If(when, new, fields[target.name])
            case When(cond, body):
                holds = self._term(cond, w, a, each, payload)
                if z3.is_false(z3.simplify(holds)):
                    return
                inner = holds if when is None else z3.And(when, holds)
                for s in body:
                    self._run(s, w, a, each, payload, inner)
            case ForEach(body):
                for i in range(len(w.agents)):
                    for s in body:
                        self._run(s, w, a, i, payload, when)
            case Send(kind, version):
                assert each is not None, "Send runs inside ForEach"
                box = w.inboxes[each]
                sent = z3.BoolVal(True) if when is None else when
                if kind == "recall":
                    box[RECALL] = z3.Or(box[RECALL], sent)
                    return
                announced = self._term(version, w, a, each, payload)
                for m in self.messages:
                    if is_update(m) == (kind == "update"):
                        box[m] = z3.Or(
                            box[m], z3.And(sent, announced == self.v(message_version(m)))
                        )
            case Drop(which):
                if a is None:
                    raise ValueError("dropping messages needs a subject agent; the step has none")
                box = w.inboxes[a]
                dropped = {"payload": [payload], "recalls": [RECALL], "all": list(self.messages)}
                for m in dropped[which]:
                    if m in box:
                        box[m] = z3.BoolVal(False) if when is None else z3.And(box[m], z3.Not(when))
            case AppendName():
                return  # the value level: not encoded

    def _fields_of(
        self, target: Field, w: SymState, a: int | None, each: int | None
    ) -> dict[str, Expr]:
        if target.owner == "key":
            return w.g
        index = a if target.owner == "agent" else each
        if index is None:
            raise ValueError(
                f"the {target.owner} field {target.name!r} needs a subject agent but the step "
                "has none; the model cannot run it either"
            )
        return w.agents[index]

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
                elif is_update(m):
                    yield Event.DELIVER_UPDATE, a, m, box[m]
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
        if self.defn.write_update:
            yield Event.OUTBOX_RELAY_UPDATE, None, 0, s.g["outbox"] != self.v(0)
            yield Event.OUTBOX_RELAY_STORE, None, 0, s.g["outbox"] != self.v(0)
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
                    if event in MESSAGE_EVENTS:
                        assert a is not None
                        target.inboxes[a][payload] = z3.BoolVal(False)
                        if event is not Event.DELIVER_RECALL:
                            told = target.agents[a]["told"]
                            announced = self.v(message_version(payload))
                            target.agents[a]["told"] = self._max(told, announced)
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
