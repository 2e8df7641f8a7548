"""Exhaustive explicit-state exploration of the coherence protocol (one key, bounded).

Property checked, for the given `ProtocolDefinition` (table, mode and bounds):

- every invariant of `sagemem.spec.invariants` for the mode holds in EVERY reachable state
  (the table handles every event it is offered; type invariant; versions bounded and L2 never
  going back; no lost update; stale copies covered by an invalidation on its way; single
  owner; no acknowledged write lost; monotonic reads and read-your-writes; in strict mode
  also single-writer-multiple-reader, the data-value invariant and linearizable reads);
- no deadlock: every reachable state that is not quiescent has a successor;
- from every reachable state a quiescent coherent state (`is_quiescent`) is reachable using
  only protocol steps and timers (no new user operation, no further fault);
- prompt progress: from every state reached without a crash or a lapsed lease (message loss,
  disconnects and evictions allowed), a quiescent state is reachable using only
  protocol-internal steps (message deliveries, server answers, resyncs) and backoff retries:
  no lease or registration expiry (HOME_EXPIRE_OWNER, HOLDER_EXPIRE), no fault, no user event
  of any agent and no conflict answer (the model offers HOME_CONFLICT to every write-through,
  but an unconditional write is never refused, so it must be able to commit). So every
  pending operation completes, and every copy settles, without waiting for a lease to run
  out; a protocol that forgets a recall or an acknowledgement is only correct "up to a lease"
  and fails here. After a crash or a lapsed lease, waiting for the lease IS the protocol, so
  those states are only held to the previous property;
- protocol-internal steps alone cannot loop forever: the internal-step graph is acyclic and
  no internal step leaves the state unchanged (such a step stays enabled and can repeat
  forever; self-loops of user, timer and fault events are ignored);
- fair progress (`fair_progress`): every operation completes under fair scheduling, absent
  crashes and lease lapses. Among the states reached without a crash or a lease lapse, no
  strongly connected set of states with an operation in progress (no step in it answering
  one) is FAIR: a set in which every event weak fairness covers (protocol-internal steps but
  the conflict answer, backoff retries and lease/registration expiries) that is enabled in
  all of its states is also taken inside it. User steps of every agent, message losses,
  disconnects and evictions may occur in the loop and are owed nothing (the environment may
  keep reading forever). Weak fairness is per event, not per (event, agent): states are
  canonical, so an agent's identity is not stable along a loop; that assumes less fairness
  where one agent's step is owed and another's of the same event is taken, and more where
  the event is enabled throughout but for changing agents. A violation prints the way in
  and one lap through the loop. At the quick bounds it adds little to prompt progress (which
  asks for a path out of every state, not for every fair run to take one; and a lease expiry
  counts as fair here, not there); it states the inevitability the other two only imply.

Bound: the definition's agent count, version-creating writes and fault budget; reads,
evictions and message deliveries are unbounded within those. States are canonicalised by
sorting the agents (no state field names an agent, so this symmetry reduction is exact).

Method: breadth-first search over canonical states with a plain dict (memory matters past a
few hundred thousand states); invariants are checked when a state is dequeued, and BFS
parents give a SHORTEST counterexample, re-simulated without canonicalisation so that agent
numbers stay stable along the trace. Every edge is kept (target and event class, grouped by
source: the BFS dequeues states in id order). Quiescence is ONE multi-source BFS over the
reversed graph of protocol and timer edges from the quiescent states; prompt progress is one
forward BFS over the edges that are neither a crash nor a lease lapse (the states it must
hold in, with shortest such paths for traces) and ONE multi-source reverse BFS over the
internal and retry edges from the quiescent states (a violation's trace is a shortest such
path, then the prompt steps into the wait); acyclicity is Kahn's algorithm on the
internal-edge graph, and a cycle, if any, is extracted with networkx. Fair progress is one
iterative Tarjan pass over the undisrupted states with an operation in progress (each edge
keeps its event and whether it answers an operation; each state the events of its
self-loops); 0.2-0.7 s per quick definition on the loaded 2-core machine.

The search takes each state's verdict and steps from a successor source (`_Source`): the plain
one (`_Stepper`) steps every state with the definition's table; the graph properties are one
function (`_analyse`) whatever the source. `explore_differential` explores a mutant against
the real table's graph kept by `RealGraph.explore` (same bounds and mode): a state the real
table reached reuses the real steps of every offer the mutant does not change and steps only
the changed offers again, so a mutant costs about the states it adds, not a new exploration;
same order of successors, so the same ids, counterexamples and verdicts as `explore`.
"""

from __future__ import annotations

import time
from array import array
from collections import deque
from collections.abc import Callable, Collection, Iterable, Iterator
from typing import NamedTuple, Protocol

import networkx as nx

from sagemem.spec.invariants import first_violation, is_quiescent
from sagemem.spec.model import (
    LEAVE,
    OP_NONE,
    SITE_KEY,
    ProtocolDefinition,
    State,
    Transition,
    canonical,
    consults_no_row,
    describe,
    initial_state,
    offer_transitions,
    offers,
    transitions,
)
from sagemem.spec.table import RowKey, Rule
from sagemem.spec.vocabulary import EVENT_KIND, EVENT_SITE, Event, EventKind, L1State, Site

from .report import CheckReport, Counterexample, TraceStep

__all__ = [
    "GRAPH_PROPERTIES",
    "OfferKey",
    "ProgressCallback",
    "RealGraph",
    "explore",
    "explore_differential",
    "replay_path",
    "unfired_rows",
]

type ProgressCallback = Callable[[int, int, int], None]
"""Called as progress(states, edges, depth) every `PROGRESS_EVERY` states."""

PROGRESS_EVERY = 20_000

type OfferKey = tuple[RowKey, Event]
"""A (row key, event) pair: the rows and refusals the interpreter consults for one offer."""

# Edge classes (one byte per edge). A self-loop is never stored.
_USER = 0  # READ, WRITE_L1, WRITE_THROUGH, FLUSH
_INTERNAL = 1  # deliveries, server answers, RESYNC, OUTBOX_RELAY
_EXPIRY = 2  # HOME_EXPIRE_OWNER, HOLDER_EXPIRE: a lease or registration runs out
_RETRY = 3  # RETRY: the protocol's own backoff, not a lease
_LAPSE = 4  # LEASE_LAPSE: an agent's lease clock runs out (a fault-budget event)
_FAULT = 5  # EVICT, L2_EVICT, DROP_MESSAGE, DISCONNECT: recovered by protocol steps
_CRASH = 6  # CRASH: the agent restarts empty (its grant and acks wait for a lease)
_CONFLICT = 7  # HOME_CONFLICT: the caller's expected version decides, not the protocol


def _mask(*classes: int) -> bytes:
    return bytes(1 if code in classes else 0 for code in range(_CONFLICT + 1))


_QUIESCENCE_EDGES = _mask(_INTERNAL, _CONFLICT, _EXPIRY, _RETRY, _LAPSE)  # protocol, timers
# Prompt progress: protocol steps and backoff retries only. A conflict answer is left out: the
# model offers it to every write-through (it does not track the expected version), but an
# unconditional write is never refused, so it must be able to complete by committing.
_PROMPT_EDGES = _mask(_INTERNAL, _RETRY)
_UNDISRUPTED_EDGES = _mask(_USER, _INTERNAL, _CONFLICT, _EXPIRY, _RETRY, _FAULT)


GRAPH_PROPERTIES = frozenset(
    {"quiescence_reachable", "prompt_progress", "internal_steps_terminate", "fair_progress"}
)
"""The names of the properties checked on the explored graph (`explore(skip=...)`); they are
checked in the order quiescence_reachable, prompt_progress, internal_steps_terminate,
fair_progress."""

# Fairness (fair_progress): the events whose steps weak fairness covers, one bit per event.
_EVENT_CODE = {event: code for code, event in enumerate(Event)}
_EVENT_OF_CODE = tuple(Event)
_COMPLETES = 0x80  # edge_event flag: the step answers an operation in progress
assert len(_EVENT_OF_CODE) < _COMPLETES, "an event code must fit in edge_event's low 7 bits"
_FAIR_EVENTS = sum(
    1 << _EVENT_CODE[event]
    for event, kind in EVENT_KIND.items()
    if (kind is EventKind.INTERNAL and event is not Event.HOME_CONFLICT)
    or (kind is EventKind.TIMER and event is not Event.LEASE_LAPSE)
)
_LAP_STATES_MAX = 40  # a fair loop's trace visits every state of its component up to this size


def _edge_class(step: Transition) -> int:
    match step.kind:
        case EventKind.USER:
            return _USER
        case EventKind.INTERNAL:
            return _CONFLICT if step.event is Event.HOME_CONFLICT else _INTERNAL
        case EventKind.TIMER:
            if step.event is Event.RETRY:
                return _RETRY
            return _LAPSE if step.event is Event.LEASE_LAPSE else _EXPIRY
        case EventKind.FAULT:
            return _CRASH if step.event is Event.CRASH else _FAULT
    raise AssertionError(f"unknown event kind {step.kind!r}")  # pragma: no cover


type _Item = tuple[State | int | str | None, int, int]
"""One step as a successor source yields it, in the order of `transitions`: (target, edge
class, event code, | _COMPLETES if it answers an operation). The target is the canonical next
State, or the id of a state of a `RealGraph` when a differential source reuses the real
table's step, or None for a step that leaves the state unchanged (a self-loop: only its
event code counts), or a str: the label of a protocol-internal step that leaves the state
unchanged (it can repeat forever: a violation)."""


class _Source(Protocol):
    """Where the breadth-first search takes each dequeued state's verdict and steps from.

    `base_id` is the state's id in the `RealGraph` the search reuses (-1 for a state the real
    table never reached, and always -1 without one)."""

    def violation(self, state: State, base_id: int) -> tuple[str, str] | None:
        """The first invariant `state` breaks (name, explanation), or None."""

    def quiescent(self, state: State, base_id: int) -> bool:
        """Whether `state` is quiescent (`is_quiescent`)."""

    def items(self, state: State, base_id: int) -> Iterator[_Item]:
        """Every step of `state`, in the order of `transitions`."""

    def reusable(self, state: State, base_id: int) -> bool:
        """Whether every step of this real-table state (`base_id` >= 0) is the real one, so
        the search copies its edges from the `RealGraph` (no invariant check needed)."""


def _item(state: State, step: Transition) -> _Item:
    target = canonical(step.target)
    if target == state:
        if step.kind is EventKind.INTERNAL:
            return step.label, 0, 0
        return None, 0, _EVENT_CODE[step.event]
    code = _EVENT_CODE[step.event]
    subject = step.agent
    if subject is not None:
        pending = state.agents[subject].op
        if pending != OP_NONE and step.target.agents[subject].op != pending:
            code |= _COMPLETES
    return target, _edge_class(step), code


class _Stepper:
    """The plain successor source: every state stepped with `defn`'s table and checked.

    With `record`, it also notes, for every step, which offer (its position in `offers`)
    produced it, and keeps the self-loops: what `RealGraph` needs to be reused."""

    def __init__(
        self,
        defn: ProtocolDefinition,
        *,
        fired_rows: set[int] | None = None,
        on_state: Callable[[State], None] | None = None,
        record: _Record | None = None,
    ) -> None:
        self.defn = defn
        self.fired_rows = fired_rows
        self.on_state = on_state
        self.record = record
        self.row_index = {id(rule): i for i, rule in enumerate(defn.table)}

    def violation(self, state: State, base_id: int) -> tuple[str, str] | None:
        broken = first_violation(self.defn, state)
        if broken is None and self.on_state is not None:
            self.on_state(state)
        return broken

    def quiescent(self, state: State, base_id: int) -> bool:
        return is_quiescent(self.defn, state)

    def reusable(self, state: State, base_id: int) -> bool:
        return False

    def items(self, state: State, base_id: int) -> Iterator[_Item]:
        fired, record = self.fired_rows, self.record
        if record is None:
            for step in transitions(self.defn, state):
                if fired is not None and step.rule is not None:
                    fired.add(self.row_index[id(step.rule)])
                yield _item(state, step)
            return
        record.loop_start.append(len(record.loop_code))
        for ordinal, step in _numbered_steps(self.defn, state):
            if fired is not None and step.rule is not None:
                fired.add(self.row_index[id(step.rule)])
            item = _item(state, step)
            target = item[0]
            if target is None:
                record.loop_ordinal.append(ordinal)
                record.loop_code.append(item[2])
            elif not isinstance(target, str):
                record.ordinal.append(ordinal)
            yield item


def _numbered_steps(defn: ProtocolDefinition, state: State) -> Iterator[tuple[int, Transition]]:
    """The steps of `transitions`, each with the position of its offer in `offers`."""
    for ordinal, (event, agent, payload) in enumerate(offers(defn, state)):
        for step in offer_transitions(defn, state, event, agent, payload):
            yield ordinal, step


class _Record:
    """What a recording `_Stepper` notes beside the graph (see `RealGraph`)."""

    __slots__ = ("loop_code", "loop_ordinal", "loop_start", "ordinal")

    def __init__(self) -> None:
        self.ordinal = array("H")  # per edge: the position of its offer in `offers`
        self.loop_start = array("l")  # the self-loops of state i: loop_start[i]:loop_start[i+1]
        self.loop_ordinal = array("H")
        self.loop_code = bytearray()


class _Search:
    """What one breadth-first search built: states in id (BFS) order, BFS parents, and the
    graph with each edge's class and event code; `base_of` maps a state to its id in the
    reused `RealGraph` (-1 if the real table never reached it; empty without one)."""

    __slots__ = (
        "base_of",
        "depth_of",
        "edge_event",
        "graph",
        "ids",
        "loop_events",
        "parent",
        "quiescent",
        "states",
    )

    def __init__(self, root: State, base_root: int) -> None:
        self.ids: dict[State, int] = {} if base_root >= 0 else {root: 0}
        self.states: list[State] = [root]
        self.parent = array("l", [-1])
        self.depth_of = array("l", [0])
        self.graph = _Graph(0, array("l"), array("l"), bytearray())
        self.edge_event = bytearray()  # the edge's event code, | _COMPLETES
        self.loop_events = array("Q")  # per state: the events whose steps leave it unchanged
        self.quiescent = bytearray()
        self.base_of = array("l", [base_root]) if base_root >= 0 else array("l")


def _search(  # one BFS with its bookkeeping, kept in one place
    defn: ProtocolDefinition,
    source: _Source,
    summary: dict[str, int | float | str],
    finish: Callable[[bool, Counterexample | None], CheckReport],
    found: _Search,
    *,
    base: RealGraph | None = None,
    progress: ProgressCallback | None = None,
    max_states: int | None = None,
) -> CheckReport | None:
    """Breadth-first search from `found`'s root, filling `found`; a CheckReport if a state
    breaks an invariant, deadlocks, has a protocol-internal self-loop or the search hits
    `max_states`, else None (the graph is complete).

    With `base`, a step whose target is an int names a state of `base` by its id there: it
    is mapped to (or given) an id of this search without hashing the state."""
    states, ids, parent, depth_of = found.states, found.ids, found.parent, found.depth_of
    graph, edge_event, loop_events, quiescent = (
        found.graph,
        found.edge_event,
        found.loop_events,
        found.quiescent,
    )
    edge_start, edge_dst, edge_class = graph.start, graph.dst, graph.klass
    base_of = found.base_of
    alias = array("l", [-1]) * (base.count if base is not None else 0)
    if base is not None and base_of[0] >= 0:
        alias[base_of[0]] = 0
    base_states = base.states if base is not None else []
    queue: deque[int] = deque([0])

    def fail(sid: int, name: str, text: str, parents: array[int] = parent) -> CheckReport:
        return finish(False, _counterexample(defn, states, parents, sid, name, text))

    def add_real(rid: int, sid: int) -> int:
        """A new id for the state `rid` of `base`, reached from `sid` (-1 if truncated)."""
        tid = len(states)
        if max_states is not None and tid >= max_states:
            return -1
        alias[rid] = tid
        states.append(base_states[rid])
        base_of.append(rid)
        parent.append(sid)
        depth_of.append(depth_of[sid] + 1)
        queue.append(tid)
        if progress is not None and tid % PROGRESS_EVERY == 0:
            progress(len(states), len(edge_dst), depth_of[sid] + 1)
        return tid

    while queue:
        sid = queue.popleft()  # ids are dequeued in order: edge_start[sid], quiescent[sid]
        edge_start.append(len(edge_dst))
        state = states[sid]
        base_id = base_of[sid] if base is not None else -1
        if base is not None and base_id >= 0 and source.reusable(state, base_id):
            # every step is the real one: copy the real edges (a real state breaks nothing)
            first, end = base.start[base_id], base.start[base_id + 1]
            base_dst = base.dst
            for k in range(first, end):
                tid = alias[base_dst[k]]
                if tid < 0:
                    tid = add_real(base_dst[k], sid)
                    if tid < 0:
                        summary["status"] = f"truncated at max_states={max_states}"
                        return finish(False, None)
                edge_dst.append(tid)
            edge_class.extend(base.klass[first:end])
            edge_event.extend(base.event[first:end])
            good = bool(base.quiescent[base_id])
            quiescent.append(good)
            loops = 0
            for k in range(base.loop_start[base_id], base.loop_start[base_id + 1]):
                loops |= 1 << base.loop_code[k]
            loop_events.append(loops)
            if first == end and not good:  # pragma: no cover  # the real table passed
                return fail(sid, "no_deadlock", "no step is enabled but the state is not quiescent")
            continue
        broken = source.violation(state, base_id)
        if broken is not None:
            return fail(sid, *broken)
        good = source.quiescent(state, base_id)
        quiescent.append(good)
        moved = False
        loops = 0
        for target, klass, code in source.items(state, base_id):
            if target is None:
                loops |= 1 << code
                continue
            if isinstance(target, str):
                # An internal step that changes nothing stays enabled, so it can repeat
                # forever: a livelock (the real table has none; a mutant dropping the effect
                # that makes progress, e.g. a refetch's HOME_READ, has one).
                return fail(
                    sid,
                    "internal_steps_terminate",
                    f"the internal step '{target}' leaves the state unchanged and stays "
                    "enabled, so it can repeat forever",
                )
            moved = True
            if isinstance(target, int):
                tid = alias[target]
                if tid < 0:
                    tid = add_real(target, sid)
                    if tid < 0:
                        summary["status"] = f"truncated at max_states={max_states}"
                        return finish(False, None)
                edge_dst.append(tid)
                edge_class.append(klass)
                edge_event.append(code)
                continue
            tid = ids.get(target, -1)
            if tid < 0:
                tid = len(states)
                if max_states is not None and tid >= max_states:
                    summary["status"] = f"truncated at max_states={max_states}"
                    return finish(False, None)
                ids[target] = tid
                states.append(target)
                if base is not None:
                    base_of.append(-1)
                parent.append(sid)
                depth_of.append(depth_of[sid] + 1)
                queue.append(tid)
                if progress is not None and tid % PROGRESS_EVERY == 0:
                    progress(len(states), len(edge_dst), depth_of[sid] + 1)
            edge_dst.append(tid)
            edge_class.append(klass)
            edge_event.append(code)
        loop_events.append(loops)
        if not moved and not good:
            return fail(sid, "no_deadlock", "no step is enabled but the state is not quiescent")
    edge_start.append(len(edge_dst))
    graph.count = len(states)
    if progress is not None:
        progress(len(states), len(edge_dst), max(depth_of))
    return None


def _analyse(
    defn: ProtocolDefinition,
    found: _Search,
    summary: dict[str, int | float | str],
    finish: Callable[[bool, Counterexample | None], CheckReport],
    skip: frozenset[str],
) -> CheckReport:
    """The graph properties (`GRAPH_PROPERTIES`, in their order) on a complete search."""
    states, parent, graph = found.states, found.parent, found.graph
    quiescent, edge_class = found.quiescent, graph.klass
    summary["quiescent_states"] = sum(quiescent)
    summary["protocol_edges"] = sum(_QUIESCENCE_EDGES[c] for c in edge_class)

    settles = graph.backward(quiescent, _QUIESCENCE_EDGES)
    stuck = settles.find(0) if "quiescence_reachable" not in skip else -1
    if stuck >= 0:
        return finish(
            False,
            _counterexample(
                defn,
                states,
                parent,
                stuck,
                "quiescence_reachable",
                "from this state no quiescent coherent state is reachable by protocol steps "
                "and timers alone",
            ),
        )

    prompt = graph.backward(quiescent, _PROMPT_EDGES)
    order, undisrupted_parent = graph.forward(_UNDISRUPTED_EDGES)
    summary["prompt_states"] = len(order)
    slow = next((node for node in order if not prompt[node]), None)
    if slow is not None and "prompt_progress" not in skip:
        why, path = _prompt_wait(defn, states, graph, slow, settles)
        reached_at, node = 0, slow
        while undisrupted_parent[node] >= 0:
            reached_at, node = reached_at + 1, undisrupted_parent[node]
        return finish(
            False,
            _counterexample(
                defn,
                states,
                undisrupted_parent,
                slow,
                "prompt_progress",
                f"no crash and no lease lapse happened, yet from the state after step "
                f"{reached_at} no quiescent state is reachable by protocol steps and retries "
                f"alone: {why}",
                loop=path,
            ),
        )

    cycle = _internal_cycle(graph) if "internal_steps_terminate" not in skip else None
    if cycle is not None:
        start, loop = cycle
        return finish(
            False,
            _counterexample(
                defn,
                states,
                parent,
                start,
                "internal_steps_terminate",
                "protocol-internal steps can loop forever; the trace ends with one turn of the "
                "loop",
                loop=loop,
            ),
        )
    if "fair_progress" in skip:
        return finish(True, None)
    fair_started = time.perf_counter()
    starving = _fair_starvation(
        _Fairness(graph, states, order, undisrupted_parent, found.edge_event, found.loop_events)
    )
    summary["fairness_seconds"] = round(time.perf_counter() - fair_started, 2)
    if starving is not None:
        entry, lap, why = starving
        return finish(
            False,
            _counterexample(
                defn, states, undisrupted_parent, entry, "fair_progress", why, loop=lap
            ),
        )
    return finish(True, None)


def _check_skip(skip: frozenset[str]) -> None:
    unknown = skip - GRAPH_PROPERTIES
    if unknown:
        raise ValueError(
            f"skip={sorted(unknown)} names no graph property; choose from "
            f"{sorted(GRAPH_PROPERTIES)}"
        )


def _finisher(
    summary: dict[str, int | float | str], found: _Search, started: float
) -> Callable[[bool, Counterexample | None], CheckReport]:
    def finish(ok: bool, counterexample: Counterexample | None) -> CheckReport:
        summary.update(
            states=len(found.states),
            edges=len(found.graph.dst),
            depth=max(found.depth_of) if found.depth_of else 0,
            seconds=round(time.perf_counter() - started, 2),
        )
        return CheckReport("explore", ok, dict(summary), counterexample)

    return finish


def _summary(defn: ProtocolDefinition) -> dict[str, int | float | str]:
    return {
        "mode": defn.mode.value,
        "agents": defn.agents,
        "writes": defn.writes,
        "fault_budget": "none" if defn.fault_budget is None else defn.fault_budget,
    }


def explore(
    defn: ProtocolDefinition,
    *,
    progress: ProgressCallback | None = None,
    max_states: int | None = None,
    fired_rows: set[int] | None = None,
    on_state: Callable[[State], None] | None = None,
    skip: frozenset[str] = frozenset(),
) -> CheckReport:
    """Explore every reachable state of `defn`; see the module docstring for the properties.

    `skip` names graph properties (of `GRAPH_PROPERTIES`) not to check, e.g. to show that
    `fair_progress` alone rejects a table that an earlier property rejects too.

    `on_state`, if given, is called with every reachable state (canonical) as it is dequeued.

    If `fired_rows` is given, the index (in `defn.table`) of every row that fires in some
    reachable state is added to it (row coverage; see `unfired_rows`).
    """
    _check_skip(skip)
    started = time.perf_counter()
    summary = _summary(defn)
    found = _Search(canonical(initial_state(defn)), -1)
    finish = _finisher(summary, found, started)
    source = _Stepper(defn, fired_rows=fired_rows, on_state=on_state)
    failed = _search(defn, source, summary, finish, found, progress=progress, max_states=max_states)
    if failed is not None:
        return failed
    found.ids.clear()
    return _analyse(defn, found, summary, finish, skip)


class RealGraph:
    """The real table's explored graph at one bound and mode, kept to explore mutants
    differentially (`explore_differential`): the states with their ids, every edge (target
    id, class, event code with the completes flag) grouped by source, and for each edge and
    each self-loop the position, in `offers`, of the offer whose step it is. Arrays, not
    objects per edge. Build it with `RealGraph.explore`; `report` is that exploration's."""

    __slots__ = (
        "_holding",
        "count",
        "defn",
        "dst",
        "event",
        "ids",
        "klass",
        "loop_code",
        "loop_ordinal",
        "loop_start",
        "ordinal",
        "quiescent",
        "report",
        "start",
        "states",
    )

    def __init__(self, defn: ProtocolDefinition, found: _Search, record: _Record) -> None:
        self.defn = defn
        self.report: CheckReport | None = None
        self.count = len(found.states)
        self.states = found.states
        self.ids = found.ids
        self.start = found.graph.start
        self.dst = found.graph.dst
        self.klass = found.graph.klass
        self.event = found.edge_event
        self.quiescent = found.quiescent
        self.ordinal = record.ordinal
        self.loop_start = record.loop_start
        self.loop_ordinal = record.loop_ordinal
        self.loop_code = record.loop_code
        self._holding: dict[L1State, array[int]] | None = None

    def holding(self, state: L1State) -> array[int]:
        """The ids of the states where some agent is in `state` (indexed once per graph)."""
        if self._holding is None:
            index: dict[L1State, array[int]] = {st: array("l") for st in L1State}
            for rid, real in enumerate(self.states):
                for st in {agent.st for agent in real.agents}:
                    index[st].append(rid)
            self._holding = index
        return self._holding[state]

    @classmethod
    def explore(
        cls, defn: ProtocolDefinition, *, progress: ProgressCallback | None = None
    ) -> RealGraph:
        """Explore `defn` (every property, as `explore`) and keep its graph. The table must
        pass there: a ValueError names the property it breaks otherwise."""
        started = time.perf_counter()
        summary = _summary(defn)
        found = _Search(canonical(initial_state(defn)), -1)
        finish = _finisher(summary, found, started)
        record = _Record()
        failed = _search(
            defn, _Stepper(defn, record=record), summary, finish, found, progress=progress
        )
        report = (
            failed if failed is not None else _analyse(defn, found, summary, finish, frozenset())
        )
        if not report.ok:
            broken = (
                report.counterexample.property_name
                if report.counterexample
                else report.summary.get("status", "?")
            )
            raise ValueError(
                f"the table of {defn.name or defn.mode.value} fails at {defn.agents} agents, "
                f"{defn.writes} writes, fault budget {defn.fault_budget} ({broken}): no "
                "mutant can be explored against its graph"
            )
        record.loop_start.append(len(record.loop_code))
        graph = cls(defn, found, record)
        graph.report = report
        return graph


def unfired_rows(defns: tuple[ProtocolDefinition, ...]) -> tuple[Rule, ...]:
    """Rows of the (shared) table that fire in no reachable state of any of `defns`.

    A row that never fires is dead under these bounds: its guard or source may be wrong.
    Every definition must use the same table; each is explored in full.
    """
    table = defns[0].table
    fired: set[int] = set()
    for defn in defns:
        if defn.table is not table:
            raise ValueError("unfired_rows() needs definitions that share one table")
        explore(defn, fired_rows=fired)
    return tuple(rule for i, rule in enumerate(table) if i not in fired)


class _Graph:
    """The explored state graph: every non-self-loop edge, grouped by source state."""

    __slots__ = ("_reversed", "count", "dst", "klass", "start")

    def __init__(self, count: int, start: array[int], dst: array[int], klass: bytearray) -> None:
        self.count = count
        self.start = start
        self.dst = dst
        self.klass = klass
        self._reversed: tuple[array[int], array[int], bytearray] | None = None

    def edges(self, mask: bytes) -> Iterator[tuple[int, int]]:
        """(source, target) of every edge whose class is in `mask`."""
        start, dst, klass = self.start, self.dst, self.klass
        for node in range(self.count):
            for k in range(start[node], start[node + 1]):
                if mask[klass[k]]:
                    yield node, dst[k]

    def _reverse(self) -> tuple[array[int], array[int], bytearray]:
        """The reversed graph, every edge (built once): predecessors of node n are
        reverse[reverse_start[n]:reverse_start[n + 1]], with their edges' classes."""
        if self._reversed is not None:
            return self._reversed
        count, start, dst, klass = self.count, self.start, self.dst, self.klass
        reverse_start = array("l", [0]) * (count + 1)
        for d in dst:
            reverse_start[d + 1] += 1
        for i in range(count):
            reverse_start[i + 1] += reverse_start[i]
        fill = array("l", reverse_start)
        reverse = array("l", [0]) * len(dst)
        reverse_class = bytearray(len(dst))
        for node in range(count):
            for k in range(start[node], start[node + 1]):
                at = fill[dst[k]]
                reverse[at] = node
                reverse_class[at] = klass[k]
                fill[dst[k]] = at + 1
        self._reversed = (reverse_start, reverse, reverse_class)
        return self._reversed

    def backward(self, seeds: bytearray, mask: bytes) -> bytearray:
        """Every state from which some seed is reachable by edges of `mask` (one multi-source
        BFS over the reversed edges)."""
        reverse_start, reverse, reverse_class = self._reverse()
        reached = bytearray(seeds)
        frontier = deque(i for i in range(self.count) if seeds[i])
        while frontier:
            node = frontier.popleft()
            for k in range(reverse_start[node], reverse_start[node + 1]):
                pred = reverse[k]
                if not reached[pred] and mask[reverse_class[k]]:
                    reached[pred] = 1
                    frontier.append(pred)
        return reached

    def forward(self, mask: bytes, source: int = 0) -> tuple[list[int], array[int]]:
        """The states reachable from `source` by edges of `mask`, in BFS order, and the BFS
        parents (-1 for `source` and for states not reached)."""
        start, dst, klass = self.start, self.dst, self.klass
        parent = array("l", [-1]) * self.count
        seen = bytearray(self.count)
        seen[source] = 1
        order = [source]
        position = 0
        while position < len(order):
            node = order[position]
            position += 1
            for k in range(start[node], start[node + 1]):
                target = dst[k]
                if mask[klass[k]] and not seen[target]:
                    seen[target] = 1
                    parent[target] = node
                    order.append(target)
        return order, parent


def _prompt_wait(
    defn: ProtocolDefinition, states: list[State], graph: _Graph, node: int, settles: bytearray
) -> tuple[str, list[int]]:
    """Why `node` cannot settle promptly, and a path of prompt steps from `node` to the first
    state (in BFS order) where the wait shows: a non-prompt step, an expiry if any, leads on
    to a quiescent state from there."""
    closure, towards = graph.forward(_PROMPT_EDGES, node)
    escapes: set[str] = set()
    first_exit: int | None = None
    first_expiry: int | None = None
    for member in closure:
        exits = {
            graph.dst[k]: graph.klass[k]
            for k in range(graph.start[member], graph.start[member + 1])
            if not _PROMPT_EDGES[graph.klass[k]] and settles[graph.dst[k]]
        }
        if not exits:
            continue
        if first_exit is None:
            first_exit = member
        if first_expiry is None and _EXPIRY in exits.values():
            first_expiry = member
        targets = {states[t] for t in exits}
        escapes.update(
            step.event.name
            for step in transitions(defn, states[member])
            if step.kind is not EventKind.USER and canonical(step.target) in targets
        )
    end = first_expiry if first_expiry is not None else first_exit
    path = [node]
    if end is not None and end != node:
        back = [end]
        while back[-1] != node:
            back.append(towards[back[-1]])
        path = back[::-1]
    named = sorted(escapes - {Event.HOME_CONFLICT.name})
    if named:
        waits = ", ".join(named)
    elif escapes:
        waits = "HOME_CONFLICT: the waiting write gives up as a failed compare-and-swap"
    else:
        waits = "none but a user event"
    why = (
        f"the {len(closure)} states that protocol steps and retries reach from here settle "
        f"only after a step that is not prompt ({waits}); the trace ends with the prompt "
        "steps into the wait"
    )
    return why, path


class _Fairness(NamedTuple):
    """What the fair_progress check reads from the explored graph."""

    graph: _Graph
    states: list[State]
    order: list[int]  # the states reached without a crash or a lease lapse, in BFS order
    parent: array[int]  # their BFS parents along such steps
    edge_event: bytearray
    loop_events: array[int]


def _pending(state: State) -> bool:
    return any(agent.op != OP_NONE for agent in state.agents)


def _event_names(mask: int) -> str:
    names = [_EVENT_OF_CODE[code].name for code in range(len(_EVENT_OF_CODE)) if mask >> code & 1]
    return ", ".join(names) if names else "none"


def _fair_starvation(facts: _Fairness) -> tuple[int, list[int], str] | None:
    """A fair loop in which an operation stays in progress forever, or None.

    In the graph of the states reached without a crash or a lease lapse, restricted to the
    states with an operation in progress and to the steps (of those classes) that answer no
    operation, find the strongly connected components (Tarjan, iterative). Along any cycle
    operations start as often as they are answered, so in a component no step answers one
    and the operations in progress are the same in all its states. A non-trivial component
    (two states or more, or one with a step that leaves it unchanged) is a starving loop if it
    is FAIR: every event covered by weak fairness (`_FAIR_EVENTS`) that is enabled in all of
    its states is taken by a step inside it. A run that visits every state and step of such a
    component forever is then weakly fair, and the operations never complete. Per component
    this is exact: a smaller loop inside an unfair component is unfair too (the event is
    enabled in all its states and taken in none of them).

    Returns (entry state, a lap through the component from the entry, explanation).
    """
    graph, states, order = facts.graph, facts.states, facts.order
    start, dst, klass, event = graph.start, graph.dst, graph.klass, facts.edge_event
    member = bytearray(graph.count)
    position = array("l", [-1]) * graph.count
    for index, node in enumerate(order):
        position[node] = index
        if _pending(states[node]):
            member[node] = 1

    def successors(node: int) -> Iterator[int]:
        for k in range(start[node], start[node + 1]):
            target = dst[k]
            if member[target] and _UNDISRUPTED_EDGES[klass[k]] and not event[k] & _COMPLETES:
                yield target

    # Tarjan's algorithm without recursion.
    index_of = array("l", [-1]) * graph.count
    low = array("l", [0]) * graph.count
    on_stack = bytearray(graph.count)
    stack: list[int] = []
    counter = 0
    best: tuple[int, list[int]] | None = None  # (BFS position of its entry, component)
    for root in order:
        if not member[root] or index_of[root] >= 0:
            continue
        work: list[tuple[int, Iterator[int]]] = [(root, successors(root))]
        index_of[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack[root] = 1
        while work:
            node, pending = work[-1]
            advanced = False
            for target in pending:
                if index_of[target] < 0:
                    index_of[target] = low[target] = counter
                    counter += 1
                    stack.append(target)
                    on_stack[target] = 1
                    work.append((target, successors(target)))
                    advanced = True
                    break
                if on_stack[target]:
                    low[node] = min(low[node], index_of[target])
            if advanced:
                continue
            work.pop()
            if work:
                parent_node = work[-1][0]
                low[parent_node] = min(low[parent_node], low[node])
            if low[node] != index_of[node]:
                continue
            component: list[int] = []
            while True:
                popped = stack.pop()
                on_stack[popped] = 0
                component.append(popped)
                if popped == node:
                    break
            if not _is_fair_loop(facts, component):
                continue
            entry = min(component, key=lambda n: position[n])
            if best is None or position[entry] < best[0]:
                best = (position[entry], component)
    if best is None:
        return None
    return _explain_starvation(facts, best[1], position)


def _component_events(facts: _Fairness, component: list[int]) -> tuple[int, int, set[int]]:
    """(fair events enabled in every state, fair events taken inside, the component's set)."""
    graph, event = facts.graph, facts.edge_event
    inside = set(component)
    always = _FAIR_EVENTS
    taken = 0
    for node in component:
        enabled = facts.loop_events[node]
        taken |= facts.loop_events[node]
        for k in range(graph.start[node], graph.start[node + 1]):
            code = event[k]
            bit = 1 << (code & ~_COMPLETES)
            enabled |= bit
            if (
                graph.dst[k] in inside
                and not code & _COMPLETES
                and _UNDISRUPTED_EDGES[graph.klass[k]]
            ):
                taken |= bit
        always &= enabled
    return always, taken & _FAIR_EVENTS, inside


def _is_fair_loop(facts: _Fairness, component: list[int]) -> bool:
    if len(component) == 1 and not facts.loop_events[component[0]]:
        return False  # a single state that no step keeps: not a loop
    always, taken, _ = _component_events(facts, component)
    return not always & ~taken


def _explain_starvation(
    facts: _Fairness, component: list[int], position: array[int]
) -> tuple[int, list[int], str]:
    graph, states = facts.graph, facts.states
    always, taken, inside = _component_events(facts, component)
    entry = min(component, key=lambda n: position[n])

    def inner_path(source: int, goals: set[int]) -> list[int]:
        """A shortest path inside the component from `source` to a goal (source excluded)."""
        back = {source: -1}
        frontier = deque([source])
        while frontier:
            node = frontier.popleft()
            for k in range(graph.start[node], graph.start[node + 1]):
                target = graph.dst[k]
                if target in inside and target not in back and not facts.edge_event[k] & _COMPLETES:
                    back[target] = node
                    if target in goals:
                        path = [target]
                        while back[path[-1]] != source:
                            path.append(back[path[-1]])
                        return path[::-1]
                    frontier.append(target)
        return []

    lap = [entry]
    if len(component) <= _LAP_STATES_MAX:
        unvisited = inside - {entry}
        while unvisited:
            step = inner_path(lap[-1], unvisited)
            if not step:
                break
            lap += step
            unvisited -= set(step)
    if len(lap) > 1 or len(component) > 1:
        lap += inner_path(lap[-1], {entry}) if lap[-1] != entry or len(lap) == 1 else []
    kinds = {0: "none", 1: "a read", 2: "a write"}
    waiting = "; ".join(
        f"{kinds.get(agent.op, agent.op)} (agent in {agent.st.name})"
        for agent in states[entry].agents
        if agent.op != OP_NONE
    )
    self_loops = _event_names(_loop_union(facts, component) & _FAIR_EVENTS)
    why = (
        f"no crash and no lease lapse happened, yet the run can loop forever in these "
        f"{len(component)} states, fairly, with an operation in progress: {waiting}. No step "
        f"in the loop answers it; the protocol's steps enabled in every state of the loop "
        f"({_event_names(always)}) are all taken in it (steps taken in it: "
        f"{_event_names(taken)}; steps that change nothing: {self_loops}), so weak fairness "
        f"does not force it out. The trace is the way in, then one lap"
        + (" through every state of the loop" if len(component) <= _LAP_STATES_MAX else "")
    )
    return entry, lap, why


def _loop_union(facts: _Fairness, component: list[int]) -> int:
    union = 0
    for node in component:
        union |= facts.loop_events[node]
    return union


def _internal_cycle(graph: _Graph) -> tuple[int, list[int]] | None:
    """(first node of a cycle, the cycle's nodes) among internal edges, or None (Kahn)."""
    count, start, dst, klass = graph.count, graph.start, graph.dst, graph.klass
    internal = _mask(_INTERNAL, _CONFLICT)
    indegree = array("l", [0]) * count
    for node in range(count):
        for k in range(start[node], start[node + 1]):
            if internal[klass[k]]:
                indegree[dst[k]] += 1
    ready = deque(i for i in range(count) if indegree[i] == 0)
    removed = 0
    while ready:
        node = ready.popleft()
        removed += 1
        for k in range(start[node], start[node + 1]):
            if internal[klass[k]]:
                d = dst[k]
                indegree[d] -= 1
                if indegree[d] == 0:
                    ready.append(d)
    if removed == count:
        return None
    residual = nx.DiGraph()
    for s in range(count):
        if indegree[s] > 0:
            residual.add_edges_from(
                (s, dst[k])
                for k in range(start[s], start[s + 1])
                if internal[klass[k]] and indegree[dst[k]] > 0
            )
    loop_edges = nx.find_cycle(residual)
    loop = [int(edge[0]) for edge in loop_edges]
    first = min(loop)
    pivot = loop.index(first)
    return first, loop[pivot:] + loop[:pivot] + [first]


def replay_path(
    defn: ProtocolDefinition, path: list[State]
) -> tuple[State, list[tuple[Transition, State]]]:
    """Re-simulate a path of canonical states from the initial state without canonicalising,
    so the agent numbers in the labels stay stable. Returns (initial, [(step, state), ...])."""
    current = initial_state(defn)
    steps: list[tuple[Transition, State]] = []
    for wanted in path[1:]:
        for step in transitions(defn, current):
            if canonical(step.target) == wanted and step.target != current:
                steps.append((step, step.target))
                current = step.target
                break
        else:  # pragma: no cover  # the path came from the same successor function
            raise AssertionError("a counterexample step could not be replayed")
    return initial_state(defn), steps


def _counterexample(
    defn: ProtocolDefinition,
    states: list[State],
    parent: array[int],
    sid: int,
    name: str,
    explanation: str,
    loop: list[int] | None = None,
) -> Counterexample:
    chain = []
    node = sid
    while node >= 0:
        chain.append(node)
        node = parent[node]
    chain.reverse()
    if loop:
        chain += loop[1:]
    start, steps = replay_path(defn, [states[i] for i in chain])
    return Counterexample(
        property_name=name,
        initial_state=describe(start),
        steps=tuple(TraceStep(step.label, describe(state)) for step, state in steps),
        explanation=explanation,
    )


def _offer_key(state: State, event: Event, agent: int | None, payload: int) -> OfferKey | None:
    """The (row key, event) whose rows and refusals decide this offer of `state`, or None for
    an offer that consults no row (an L2 rollback, the directory forgetting or an agent noticing
    it, an Invalid agent leaving)."""
    if event is Event.EVICT and payload == LEAVE:
        if agent is not None and state.agents[agent].st is L1State.S:
            return L1State.S, Event.EVICT  # a Shared copy leaves through its EVICT row
        return None
    if consults_no_row(event, payload):
        return None
    site = EVENT_SITE[event]
    if site is Site.AGENT and agent is not None:
        return state.agents[agent].st, event
    return SITE_KEY[site], event


class _Differential:
    """The successor source of `explore_differential`: a state the real table reached reuses
    the real steps of every offer whose (row key, event) the mutant leaves alone and steps
    only the others with the mutant's table; any other state is stepped and checked in full.

    Such a state needs no invariant check: every property `first_violation` checks is a
    predicate of the state and of the definition's mode and bounds (`type_invariant` reads
    `defn.agents` and `defn.writes`; the trace properties are ghost fields of the state,
    `State.violation`, which a step sets); none reads the table or the refusals, and the
    mutant shares the real definition's mode and bounds, so a state that passed in the real
    table's exploration passes here too. The same holds for `is_quiescent`."""

    def __init__(
        self,
        base: RealGraph,
        defn: ProtocolDefinition,
        changed: frozenset[OfferKey],
        verify: bool,
    ) -> None:
        self.base = base
        self.defn = defn
        self.changed = changed
        self.verify = verify
        self.sources = frozenset(key for key, _ in changed)
        self.shared = any(not isinstance(key, L1State) for key in self.sources)
        self.recomputed = 0  # offers of real states stepped again with the mutant's table
        self.differing = 0  # of those, the offers whose steps differ from the real ones

    def violation(self, state: State, base_id: int) -> tuple[str, str] | None:
        return None if base_id >= 0 else first_violation(self.defn, state)

    def quiescent(self, state: State, base_id: int) -> bool:
        if base_id >= 0:
            return bool(self.base.quiescent[base_id])
        return is_quiescent(self.defn, state)

    def reusable(self, state: State, base_id: int) -> bool:
        if self.verify or self.shared:
            return False
        sources = self.sources
        return not any(agent.st in sources for agent in state.agents)

    def _fresh(self, state: State, steps: Iterable[Transition]) -> Iterator[_Item]:
        ids = self.base.ids
        for step in steps:
            item = _item(state, step)
            target = item[0]
            if isinstance(target, State):
                known = ids.get(target)
                if known is not None:
                    yield known, item[1], item[2]
                    continue
            yield item

    def _offers(
        self, state: State, base_id: int
    ) -> Iterator[tuple[Event, int | None, int, OfferKey | None, list[_Item]]]:
        """Every offer of the real state `base_id`: (event, agent, payload, its (row key,
        event) or None, the real steps of it)."""
        base = self.base
        k, end = base.start[base_id], base.start[base_id + 1]
        loop_k, loop_end = base.loop_start[base_id], base.loop_start[base_id + 1]
        for ordinal, (event, agent, payload) in enumerate(offers(self.defn, state)):
            old: list[_Item] = []
            while k < end and base.ordinal[k] == ordinal:
                old.append((base.dst[k], base.klass[k], base.event[k]))
                k += 1
            while loop_k < loop_end and base.loop_ordinal[loop_k] == ordinal:
                old.append((None, 0, base.loop_code[loop_k]))
                loop_k += 1
            yield event, agent, payload, _offer_key(state, event, agent, payload), old
        if k != end or loop_k != loop_end:  # pragma: no cover  # the same offers both times
            raise AssertionError("the real steps and the offers of a state disagree")

    def _restep(self, state: State, event: Event, agent: int | None, payload: int) -> list[_Item]:
        return list(self._fresh(state, offer_transitions(self.defn, state, event, agent, payload)))

    def differs_at(self, state: State, base_id: int) -> bool:
        """Whether some changed offer of the real state `base_id` has other steps here."""
        for event, agent, payload, key, old in self._offers(state, base_id):
            if key is not None and key in self.changed:
                self.recomputed += 1
                if _steps_of(self._restep(state, event, agent, payload)) != _steps_of(old):
                    self.differing += 1
                    return True
        return False

    def items(self, state: State, base_id: int) -> Iterator[_Item]:
        if base_id < 0:
            yield from self._fresh(state, transitions(self.defn, state))
            return
        for event, agent, payload, key, old in self._offers(state, base_id):
            if key is None or key not in self.changed:
                if self.verify and _steps_of(
                    self._restep(state, event, agent, payload)
                ) != _steps_of(old):
                    raise AssertionError(
                        f"the differential search reused the real steps of {event.name} "
                        f"(agent {agent}, payload {payload}) at {key}, which the mutant "
                        f"changes: {describe(state)}"
                    )
                yield from old
                continue
            self.recomputed += 1
            new = self._restep(state, event, agent, payload)
            if _steps_of(new) != _steps_of(old):
                self.differing += 1
            yield from new

    def scan(self) -> bool:
        """Whether the mutant's steps differ from the real ones in some real state: every
        changed offer of every real state where one is offered, stepped again (stops at the
        first difference). False: the mutant has exactly the real graph."""
        base = self.base
        if self.shared:
            candidates: Iterable[int] = range(base.count)
        else:
            candidates = sorted(
                {
                    rid
                    for source in self.sources
                    if isinstance(source, L1State)
                    for rid in base.holding(source)
                }
            )
        states = base.states
        return any(self.differs_at(states[rid], rid) for rid in candidates)


def _steps_of(items: list[_Item]) -> tuple[list[_Item], set[int]]:
    """An offer's steps as compared: the edges in order, and the self-loops' events."""
    return (
        [item for item in items if item[0] is not None],
        {item[2] for item in items if item[0] is None},
    )


def explore_differential(
    base: RealGraph,
    defn: ProtocolDefinition,
    changed: Collection[OfferKey],
    *,
    progress: ProgressCallback | None = None,
    max_states: int | None = None,
    skip: frozenset[str] = frozenset(),
    verify: bool = False,
) -> CheckReport:
    """Explore `defn`, a mutant of `base.defn` that changes only the rows and refusals of the
    (row key, event) pairs in `changed`, differentially against the real table's graph.

    The breadth-first search is `explore`'s, with the same successor order, so it assigns
    the same ids, finds the same first violation and the same graph: a state the real table
    reached takes the real steps of every offer whose (row key, event) is not in `changed`
    (the interpreter consults only that pair's rows and refusals for an offer) and steps the
    others with `defn`'s table; a state the real table never reached is stepped and checked
    in full (`_Differential` says why real states need no invariant check). The graph
    properties then run on the mutant's graph as in `explore`, and counterexamples are
    replayed with `defn`'s table. The summary adds `equal_state_space` ("yes" when no
    re-stepped offer differs: the mutant has the real reachable state space and edges),
    `recomputed_offers`, `differing_offers` and `real_states` (states reused from `base`).

    First every changed offer of every real state where it is offered is stepped again
    (`_Differential.scan`); if none has other steps, the mutant's graph IS the real one and
    the real report is returned (with `equal_state_space` "yes"), no search needed.

    `verify` re-steps every offer of every real state and raises AssertionError if a reused
    step is not the mutant's (a check of `changed`; slow; it also runs the search when the
    scan finds no difference)."""
    _check_skip(skip)
    for field_name in (
        "mode",
        "agents",
        "writes",
        "faults",
        "fault_budget",
        "leaves",
        "l2_rollback",
    ):
        if getattr(defn, field_name) != getattr(base.defn, field_name):
            raise ValueError(
                f"the mutant's {field_name}={getattr(defn, field_name)!r} is not the real "
                f"graph's ({getattr(base.defn, field_name)!r}); explore the real table at "
                "the mutant's bounds and mode first (RealGraph.explore)"
            )
    started = time.perf_counter()
    summary = _summary(defn)
    found = _Search(base.states[0], 0)
    finish = _finisher(summary, found, started)
    source = _Differential(base, defn, frozenset(changed), verify)

    def done(report: CheckReport) -> CheckReport:
        reused = sum(1 for b in found.base_of if b >= 0)
        report.summary.update(
            equal_state_space="yes" if source.differing == 0 and report.ok else "no",
            recomputed_offers=source.recomputed,
            differing_offers=source.differing,
            real_states=reused,
        )
        return report

    if not verify and not source.scan():
        # no changed offer has other steps in any real state: the mutant's graph is the real
        # one (induction on the search), so is every verdict
        assert base.report is not None
        report = base.report
        summary = dict(report.summary)
        summary["seconds"] = round(time.perf_counter() - started, 2)
        summary.update(
            equal_state_space="yes",
            recomputed_offers=source.recomputed,
            differing_offers=0,
            real_states=base.count,
        )
        return CheckReport("explore", report.ok, summary, None)
    failed = _search(
        defn,
        source,
        summary,
        finish,
        found,
        base=base,
        progress=progress,
        max_states=max_states,
    )
    if failed is not None:
        return done(failed)
    return done(_analyse(defn, found, summary, finish, skip))
