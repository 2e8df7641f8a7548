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
"""

from __future__ import annotations

import time
from array import array
from collections import deque
from collections.abc import Callable, Iterator
from typing import NamedTuple

import networkx as nx

from sagemem.spec.invariants import first_violation, is_quiescent
from sagemem.spec.model import (
    OP_NONE,
    ProtocolDefinition,
    State,
    Transition,
    canonical,
    describe,
    initial_state,
    transitions,
)
from sagemem.spec.table import Rule
from sagemem.spec.vocabulary import EVENT_KIND, Event, EventKind

from .report import CheckReport, Counterexample, TraceStep

__all__ = ["GRAPH_PROPERTIES", "ProgressCallback", "explore", "replay_path", "unfired_rows"]

type ProgressCallback = Callable[[int, int, int], None]
"""Called as progress(states, edges, depth) every `PROGRESS_EVERY` states."""

PROGRESS_EVERY = 20_000

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


def explore(  # one BFS with its bookkeeping, kept in one place
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
    unknown = skip - GRAPH_PROPERTIES
    if unknown:
        raise ValueError(
            f"skip={sorted(unknown)} names no graph property; choose from "
            f"{sorted(GRAPH_PROPERTIES)}"
        )
    row_index = {id(rule): i for i, rule in enumerate(defn.table)}
    started = time.perf_counter()
    root = canonical(initial_state(defn))
    ids: dict[State, int] = {root: 0}
    states: list[State] = [root]
    parent = array("l", [-1])
    depth_of = array("l", [0])
    edge_start = array("l")  # the out-edges of state i are edge_start[i]:edge_start[i + 1]
    edge_dst = array("l")
    edge_class = bytearray()
    edge_event = bytearray()  # the edge's event code, | _COMPLETES if it answers an operation
    loop_events = array("Q")  # per state: the events whose steps leave it unchanged
    quiescent = bytearray()
    queue: deque[int] = deque([0])
    summary: dict[str, int | float | str] = {
        "mode": defn.mode.value,
        "agents": defn.agents,
        "writes": defn.writes,
        "fault_budget": "none" if defn.fault_budget is None else defn.fault_budget,
    }

    def finish(ok: bool, counterexample: Counterexample | None = None) -> CheckReport:
        summary.update(
            states=len(states),
            edges=len(edge_dst),
            depth=max(depth_of) if depth_of else 0,
            seconds=round(time.perf_counter() - started, 2),
        )
        return CheckReport("explore", ok, dict(summary), counterexample)

    while queue:
        sid = queue.popleft()  # ids are dequeued in order: edge_start[sid], quiescent[sid]
        edge_start.append(len(edge_dst))
        state = states[sid]
        broken = first_violation(defn, state)
        if broken is not None:
            return finish(False, _counterexample(defn, states, parent, sid, *broken))
        if on_state is not None:
            on_state(state)
        good = is_quiescent(defn, state)
        quiescent.append(good)
        moved = False
        loops = 0
        for step in transitions(defn, state):
            if fired_rows is not None and step.rule is not None:
                fired_rows.add(row_index[id(step.rule)])
            target = canonical(step.target)
            if target == state:
                if step.kind is EventKind.INTERNAL:
                    # An internal step that changes nothing stays enabled, so it can repeat
                    # forever: a livelock (the real table has none; a mutant dropping the
                    # effect that makes progress, e.g. a refetch's HOME_READ, has one).
                    return finish(
                        False,
                        _counterexample(
                            defn,
                            states,
                            parent,
                            sid,
                            "internal_steps_terminate",
                            f"the internal step '{step.label}' leaves the state unchanged and "
                            "stays enabled, so it can repeat forever",
                        ),
                    )
                loops |= 1 << _EVENT_CODE[step.event]
                continue
            moved = True
            tid = ids.get(target)
            if tid is None:
                tid = len(states)
                if max_states is not None and tid >= max_states:
                    summary["status"] = f"truncated at max_states={max_states}"
                    return finish(False)
                ids[target] = tid
                states.append(target)
                parent.append(sid)
                depth_of.append(depth_of[sid] + 1)
                queue.append(tid)
                if progress is not None and tid % PROGRESS_EVERY == 0:
                    progress(len(states), len(edge_dst), depth_of[sid] + 1)
            edge_dst.append(tid)
            edge_class.append(_edge_class(step))
            code = _EVENT_CODE[step.event]
            subject = step.agent
            if subject is not None:
                pending = state.agents[subject].op
                if pending != OP_NONE and step.target.agents[subject].op != pending:
                    code |= _COMPLETES
            edge_event.append(code)
        loop_events.append(loops)
        if not moved and not good:
            return finish(
                False,
                _counterexample(
                    defn,
                    states,
                    parent,
                    sid,
                    "no_deadlock",
                    "no step is enabled but the state is not quiescent",
                ),
            )
    edge_start.append(len(edge_dst))
    if progress is not None:
        progress(len(states), len(edge_dst), max(depth_of))
    del ids
    graph = _Graph(len(states), edge_start, edge_dst, edge_class)
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
        return finish(True)
    fair_started = time.perf_counter()
    starving = _fair_starvation(
        _Fairness(graph, states, order, undisrupted_parent, edge_event, loop_events)
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
    return finish(True)


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

    __slots__ = ("count", "dst", "klass", "start")

    def __init__(self, count: int, start: array[int], dst: array[int], klass: bytearray) -> None:
        self.count = count
        self.start = start
        self.dst = dst
        self.klass = klass

    def edges(self, mask: bytes) -> Iterator[tuple[int, int]]:
        """(source, target) of every edge whose class is in `mask`."""
        start, dst, klass = self.start, self.dst, self.klass
        for node in range(self.count):
            for k in range(start[node], start[node + 1]):
                if mask[klass[k]]:
                    yield node, dst[k]

    def backward(self, seeds: bytearray, mask: bytes) -> bytearray:
        """Every state from which some seed is reachable by edges of `mask` (one multi-source
        BFS over the reversed edges)."""
        count = self.count
        reverse_start = array("l", [0]) * (count + 1)
        for _, d in self.edges(mask):  # two passes: no list of millions of pairs
            reverse_start[d + 1] += 1
        for i in range(count):
            reverse_start[i + 1] += reverse_start[i]
        fill = array("l", reverse_start)
        reverse = array("l", [0]) * reverse_start[count]
        for s, d in self.edges(mask):
            reverse[fill[d]] = s
            fill[d] += 1
        reached = bytearray(seeds)
        frontier = deque(i for i in range(count) if seeds[i])
        while frontier:
            node = frontier.popleft()
            for k in range(reverse_start[node], reverse_start[node + 1]):
                pred = reverse[k]
                if not reached[pred]:
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
    count = graph.count
    indegree = array("l", [0]) * count
    out: dict[int, list[int]] = {}
    for s, d in graph.edges(_mask(_INTERNAL, _CONFLICT)):
        out.setdefault(s, []).append(d)
        indegree[d] += 1
    ready = deque(i for i in range(count) if indegree[i] == 0)
    removed = 0
    while ready:
        node = ready.popleft()
        removed += 1
        for d in out.get(node, ()):
            indegree[d] -= 1
            if indegree[d] == 0:
                ready.append(d)
    if removed == count:
        return None
    residual = nx.DiGraph()
    for s, targets in out.items():
        if indegree[s] > 0:
            residual.add_edges_from((s, d) for d in targets if indegree[d] > 0)
    loop_edges = nx.find_cycle(residual)
    loop = [int(edge[0]) for edge in loop_edges]
    start = min(loop)
    pivot = loop.index(start)
    return start, loop[pivot:] + loop[:pivot] + [start]


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
