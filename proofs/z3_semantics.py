"""The semantics half of the Z3 encoding: guards, effects and the steps they make.

The meaning of every guard (`Semantics.holds`) and effect (`Semantics.apply`) is written here a
second time, as formulas, mirroring `sagemem.spec.model` case by case;
`tests/unit/test_z3_check.py` evaluates both on sampled reachable states and steps and fails
when they disagree. A step is one `Step`: (event, subject agent, payload, row or table defect)
with its enabling condition and the successor state, built by applying the row's effects in
order to the terms. A (state, event) that the table leaves undefined, doubles, or lists as
impossible steps into a state whose `viol` code is `VIOLATION_DEFECT`.

This module must never import the production package `sagemem` (only `sagemem.spec`).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Final

import z3

from sagemem.spec.model import (
    FAULT_EVENT_SET,
    GRANT_DEAD_INCARNATION,
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


class Semantics(Terms):
    """Guards, effects, offered events and steps of one definition, as formulas."""

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
                return false if ag is None else self.v(message_version(payload)) > ag["ver"]
            case Guard.INV_NOT_NEWER:
                return false if ag is None else self.v(message_version(payload)) <= ag["ver"]
            case Guard.VALUE_AT_HOME:
                return z3.And(
                    g["outbox"] != self.v(0), g["outbox"] == g["home"], z3.Not(g["dirty"])
                )
            case Guard.VALUE_AT_OWNER:
                return z3.And(g["outbox"] != self.v(0), z3.Or(g["outbox"] != g["home"], g["dirty"]))
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
        raise ValueError(f"guard {guard!r} has no Z3 encoding; add it to proofs/z3_semantics.py")

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
        """A recall (RECALL) or an invalidation of version `message` to agent `i` if `when`."""
        box = w.inboxes[i]
        for m in self.messages:
            if not is_update(m):
                box[m] = z3.Or(box[m], z3.And(when, message == self.v(m)))

    def _add_update(self, w: SymState, i: int, when: Expr, version: Expr) -> None:
        """A write-update of `version` to agent `i` if `when` (model: UPDATE_BASE + version)."""
        box = w.inboxes[i]
        for m in self.messages:
            if is_update(m):
                box[m] = z3.Or(box[m], z3.And(when, version == self.v(message_version(m))))

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
                ag["floor"] = self._max(ag["floor"], self.v(message_version(payload)))
            case Effect.INSTALL_UPDATE:
                ag["ver"] = self.v(message_version(payload))
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
                w.inboxes[a] = {m: z3.BoolVal(False) for m in self.messages}
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
                w.inboxes[a] = {m: z3.BoolVal(False) for m in self.messages}
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
            case Effect.PUBLISH_UPDATES:
                for i, other in enumerate(w.agents):  # the holders stay registered
                    self._add_update(w, i, other["registered"], g["outbox"])
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
                    f"effect {effect!r} has no Z3 encoding; add it to proofs/z3_semantics.py"
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


_AGENTLESS_EFFECTS: Final = frozenset(
    {
        Effect.MARK_DIRTY,
        Effect.SEND_RECALL,
        Effect.PUBLISH_INVALIDATIONS,
        Effect.PUBLISH_INVALIDATIONS_AWAIT_ACKS,
        Effect.PUBLISH_UPDATES,
        Effect.L2_DELETE,
        Effect.L2_EVICT_COPY,
        Effect.L2_SET_IF_NEWER,
        Effect.HOME_CLEAR_OUTBOX,
    }
)
