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
- protocol-internal steps alone cannot loop forever: the internal-step graph is acyclic and
  no internal step leaves the state unchanged (such a step stays enabled and can repeat
  forever; self-loops of user, timer and fault events are ignored).

Bound: the definition's agent count, version-creating writes and fault budget; reads,
evictions and message deliveries are unbounded within those. States are canonicalised by
sorting the agents (no state field names an agent, so this symmetry reduction is exact).

Method: breadth-first search over canonical states with a plain dict (memory matters past a
few hundred thousand states); invariants are checked when a state is dequeued, and BFS
parents give a SHORTEST counterexample, re-simulated without canonicalisation so that agent
numbers stay stable along the trace. Quiescence is ONE multi-source BFS over the reversed
graph of protocol and timer edges from the quiescent states; acyclicity is Kahn's algorithm
on the internal-edge graph, and a cycle, if any, is extracted with networkx.
"""

from __future__ import annotations

import time
from array import array
from collections import deque
from collections.abc import Callable

import networkx as nx

from proofs.report import CheckReport, Counterexample, TraceStep
from sagemem.spec.invariants import first_violation, is_quiescent
from sagemem.spec.model import (
    ProtocolDefinition,
    State,
    Transition,
    canonical,
    describe,
    initial_state,
    transitions,
)
from sagemem.spec.table import Rule
from sagemem.spec.vocabulary import EventKind

__all__ = ["ProgressCallback", "explore", "replay_path", "unfired_rows"]

type ProgressCallback = Callable[[int, int, int], None]
"""Called as progress(states, edges, depth) every `PROGRESS_EVERY` states."""

PROGRESS_EVERY = 20_000
_INTERNAL = 1
_TIMER = 2


def explore(  # one BFS with its bookkeeping, kept in one place
    defn: ProtocolDefinition,
    *,
    progress: ProgressCallback | None = None,
    max_states: int | None = None,
    fired_rows: set[int] | None = None,
) -> CheckReport:
    """Explore every reachable state of `defn`; see the module docstring for the properties.

    If `fired_rows` is given, the index (in `defn.table`) of every row that fires in some
    reachable state is added to it (row coverage; see `unfired_rows`).
    """
    row_index = {id(rule): i for i, rule in enumerate(defn.table)}
    started = time.perf_counter()
    root = canonical(initial_state(defn))
    ids: dict[State, int] = {root: 0}
    states: list[State] = [root]
    parent = array("l", [-1])
    depth_of = array("l", [0])
    edge_src = array("l")
    edge_dst = array("l")
    edge_kind = bytearray()
    edges = 0
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
            edges=edges,
            depth=max(depth_of) if depth_of else 0,
            seconds=round(time.perf_counter() - started, 2),
        )
        return CheckReport("explore", ok, dict(summary), counterexample)

    while queue:
        sid = queue.popleft()
        state = states[sid]
        broken = first_violation(defn, state)
        if broken is not None:
            return finish(False, _counterexample(defn, states, parent, sid, *broken))
        good = is_quiescent(defn, state)
        quiescent.append(good)  # ids are dequeued in order: this is quiescent[sid]
        moved = False
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
                    progress(len(states), edges, depth_of[sid] + 1)
            edges += 1
            if step.kind is EventKind.INTERNAL or step.kind is EventKind.TIMER:
                edge_src.append(sid)
                edge_dst.append(tid)
                edge_kind.append(_INTERNAL if step.kind is EventKind.INTERNAL else _TIMER)
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
    if progress is not None:
        progress(len(states), edges, max(depth_of))
    del ids
    summary["quiescent_states"] = sum(quiescent)
    summary["protocol_edges"] = len(edge_src)

    stuck = _unreachable_quiescence(len(states), quiescent, edge_src, edge_dst)
    if stuck is not None:
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
    cycle = _internal_cycle(len(states), edge_src, edge_dst, edge_kind)
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


def _unreachable_quiescence(
    count: int, quiescent: bytearray, src: array[int], dst: array[int]
) -> int | None:
    """The smallest state id from which no quiescent state is reachable, or None."""
    reverse_start = array("l", [0]) * (count + 1)
    for d in dst:
        reverse_start[d + 1] += 1
    for i in range(count):
        reverse_start[i + 1] += reverse_start[i]
    fill = array("l", reverse_start)
    reverse = array("l", [0]) * len(src)
    for s, d in zip(src, dst, strict=True):
        reverse[fill[d]] = s
        fill[d] += 1
    reached = bytearray(quiescent)
    frontier = deque(i for i in range(count) if quiescent[i])
    while frontier:
        node = frontier.popleft()
        for k in range(reverse_start[node], reverse_start[node + 1]):
            pred = reverse[k]
            if not reached[pred]:
                reached[pred] = 1
                frontier.append(pred)
    missing = reached.find(0)
    return None if missing < 0 else missing


def _internal_cycle(
    count: int, src: array[int], dst: array[int], kind: bytearray
) -> tuple[int, list[int]] | None:
    """(first node of a cycle, the cycle's nodes) among internal edges, or None (Kahn)."""
    indegree = array("l", [0]) * count
    out: dict[int, list[int]] = {}
    for s, d, k in zip(src, dst, kind, strict=True):
        if k == _INTERNAL and s != d:
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
