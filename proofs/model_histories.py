"""The project's history checkers (`sagemem.verify`) run on operation histories of the MODEL.

Property checked, for a `ProtocolDefinition` (table, mode and bounds), on the operation
history of each model path it takes (below):

- strict mode: the history of the one key is linearizable (`sagemem.verify.check_history`
  with `VersionRule.CONSECUTIVE`, the rule of the real home, from the initial value: version
  0 of the model is version 1 of the history, and every model version is shifted by one);
- coherent mode: `sagemem.verify.analyze_staleness` finds no monotonic-read and no
  read-your-writes violation, and every stale read it finds (a read that returned a version
  older than one whose write, or a read of it, completed before the read began) had an
  invalidation on its way to the reader when it returned: one in its inbox, a detected loss
  (RESYNC pending), or the reader still registered as holder while the home's outbox holds a
  newer version. The model carries that evidence; a recorded production history does not,
  which is why the multi-process tests bound the age of a stale read instead
  (`check_invalidation_coverage`). Also (this module's own check: `sagemem.verify` compares
  versions only) every read returns the value the write that created its version wrote, and
  never nothing (the key always exists in the model).

Paths: (1) `graph_histories`: breadth-first over the model's states WITHOUT symmetry
reduction, the shortest path to every state whose last step answered an operation (every way
an operation can be answered, on one shortest path each); (2) `random_walk`: seeded random
walks of at most `max_steps` steps, faults included within the definition's budget. Both are
bounded by the definition's agents, writes and fault budget; neither covers every path (the
explorer's invariants check the same guarantees in every reachable state). What this adds: a
check of the checkers against each other, and that a violation the model allows shows in the
history a production run would record.

How a path becomes a history (the model's ghost fields say when an operation is in progress):
a READ, WRITE_L1 or WRITE_THROUGH row that starts an operation is its invocation; the step
whose row returns a value (RETURN_VALUE, RETURN_VALUE_UNCACHED) or acknowledges the write
(ACK_WRITE) is its response, with the version and value the effect returned at that point of
the row (the model's own effects are replayed up to it). Step n happens at time 2n
(invocations) and 2n + 1 (responses). A write's value is the one the home named its version
with (a write-through's is chosen at the commit, an ownership write's at the reservation); a
crash (LOSE_VOLATILE_STATE) or the end of the path leaves an operation `Unknown` (it may have
taken effect). A write-through the home refused (HOME_CONFLICT) is left out: it changes
nothing, and what it would observe is not modelled (the model tracks neither the caller's
expected version nor the version a refusal reports, and production's strict refusal first
waits for the version it saw to settle, `answers.conflict_settles_first`, which the model's
row does not: recorded with the home's version, a strict refusal during an owner's
reservation followed by a read of the older version is not linearizable). The home's
revocation of a lapsed owner (HOME_REVOKE_GRANT) gives the value the home kept a version of
its own: a write by the pseudo-agent "home", invoked at that step, of unknown outcome (it is
no client's operation and nobody is told when it takes effect: recorded as completed at that
step, a strict reader's still-valid copy of the same value under the older version, read
before the relay, would count as a stale read no client could observe). A version created by no
operation (a mutant's extra commit) is left out, so a read of it cannot be explained. The
model has no separate delete or compare-and-swap: a delete is a write-through of a
tombstone, a value like any other.

Never edits the table or the model; imports the interpreter's private effect machinery only
to replay a row's effects up to its response, so the meaning of each effect stays in
`sagemem/spec/model.py`.
"""

from __future__ import annotations

import dataclasses
import random
import time
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Final

from sagemem.spec.model import _DATA as _M_DATA  # the interpreter's field positions
from sagemem.spec.model import _DVAL as _M_DVAL
from sagemem.spec.model import _VAL as _M_VAL
from sagemem.spec.model import _VER as _M_VER
from sagemem.spec.model import (
    OP_NONE,
    RECALL,
    ProtocolDefinition,
    State,
    Transition,
    describe,
    initial_state,
    transitions,
)
from sagemem.spec.model import _apply as _model_apply
from sagemem.spec.model import _Work as _ModelWork
from sagemem.spec.vocabulary import Effect, Event, Mode
from sagemem.verify import (
    KeyState,
    Operation,
    OpKind,
    Outcome,
    ReadHit,
    ReadMiss,
    Unknown,
    VersionRule,
    Written,
    analyze_staleness,
    check_history,
)

from .report import CheckReport, Counterexample, TraceStep

__all__ = [
    "KEY",
    "GraphHistories",
    "HistoryVerdict",
    "ModelHistory",
    "check_model_histories",
    "counterexample",
    "graph_histories",
    "history_of",
    "judge",
    "random_walk",
]

KEY: Final = "k"
"""The one key of the model, as the histories name it."""

HOME_AGENT: Final = "home"
"""The pseudo-agent whose writes are the home's revocations of lapsed owners."""

WALKS: Final = 100
WALK_STEPS: Final = 80
GRAPH_STATES_MAX: Final = 400_000

_RESPONSES: Final = frozenset(
    {Effect.RETURN_VALUE, Effect.RETURN_VALUE_UNCACHED, Effect.ACK_WRITE, Effect.REPORT_CONFLICT}
)
_KIND_BY_EVENT: Final = {
    Event.READ: OpKind.READ,
    Event.WRITE_L1: OpKind.WRITE,
    Event.WRITE_THROUGH: OpKind.WRITE,
}


def _value_name(value_id: int) -> str:
    return f"w{value_id}"


@dataclass
class _Open:
    """An operation in progress along the path."""

    op_id: str
    who: str
    kind: OpKind
    invoked_step: int
    value_id: int | None = None  # writes: the value the home named its version with


@dataclass(frozen=True, slots=True)
class ModelHistory:
    """The operation history of one model path, and what the model knew beside it.

    `steps` are the path's (transition, state after it); `completed_step` maps an operation
    id to the step (1-based) of its response; `covered` holds the ids of the reads that
    returned while an invalidation was on its way to their agent.
    """

    defn: ProtocolDefinition
    steps: tuple[tuple[Transition, State], ...]
    operations: tuple[Operation, ...]
    completed_step: dict[str, int] = field(default_factory=dict)
    covered: frozenset[str] = frozenset()
    unattributed_versions: tuple[int, ...] = ()
    conflicts_left_out: int = 0


@dataclass(frozen=True, slots=True)
class HistoryVerdict:
    """What the history checkers said about one `ModelHistory`.

    `step` is the path step after which the violation shows (the culprit's response), so
    `steps[:step]` is a counterexample; 0 when `ok`.
    """

    ok: bool
    property_name: str = ""
    message: str = ""
    step: int = 0
    operations: tuple[Operation, ...] = ()


def _response(
    defn: ProtocolDefinition, before: State, step: Transition
) -> tuple[Effect, int, int] | None:
    """(effect, model version, value id) the row answers its operation with, replaying the
    row's effects up to the answer; None if the row answers nothing."""
    rule = step.rule
    if rule is None or step.agent is None or not _RESPONSES.intersection(rule.effects):
        return None
    work = _ModelWork(before)
    agent = step.agent
    for effect in rule.effects:
        fields = work.agents[agent]
        if effect is Effect.RETURN_VALUE or effect is Effect.ACK_WRITE:
            return effect, int(fields[_M_VER]), int(fields[_M_VAL])
        if effect is Effect.RETURN_VALUE_UNCACHED:
            return effect, int(fields[_M_DATA]), int(fields[_M_DVAL])
        if effect is Effect.REPORT_CONFLICT:
            return effect, before.home, before.hval
        _model_apply(effect, work, defn.mode, agent, step.payload)
    raise AssertionError("unreachable: the row has a response effect")  # pragma: no cover


def _on_its_way(before: State, agent: int, version: int) -> bool:
    """An invalidation is on its way to `agent` for a copy of `version` (see the docstring)."""
    ag = before.agents[agent]
    if ag.missed or any(message != RECALL for message in ag.inbox):
        return True
    return ag.registered and before.outbox > version


def _read_outcome(version: int, value_id: int) -> Outcome:
    # a model version below 0 is "no copy": the read returned nothing
    return ReadMiss() if version < 0 else ReadHit(_value_name(value_id), version + 1)


class _Builder:
    """Turns the steps of one path into operations (see the module docstring)."""

    def __init__(self, defn: ProtocolDefinition) -> None:
        self.defn = defn
        self.ops: list[Operation] = []
        self.open: dict[int, _Open] = {}
        self.sequence: dict[str, int] = {}
        self.completed_step: dict[str, int] = {}
        self.covered: set[str] = set()
        self.unattributed: list[int] = []
        self.conflicts = 0

    def _new_id(self, who: str) -> str:
        self.sequence[who] = self.sequence.get(who, 0) + 1
        return f"{who}#{self.sequence[who]}"

    def _close(
        self, pending: _Open, outcome: Outcome, step: int | None, value_id: int | None = None
    ) -> Operation:
        value = None
        if pending.kind is not OpKind.READ:
            chosen = value_id if value_id is not None else pending.value_id
            # a write that never reached the home has a value no read can see
            value = _value_name(chosen) if chosen is not None else f"unwritten-{pending.op_id}"
        operation = Operation(
            op_id=pending.op_id,
            agent_id=pending.who,
            key=KEY,
            kind=pending.kind,
            invoked_at_ns=2 * pending.invoked_step,
            completed_at_ns=None if step is None else 2 * step + 1,
            outcome=outcome,
            value=value,
        )
        self.ops.append(operation)
        if step is not None:
            self.completed_step[operation.op_id] = step
        return operation

    def _invoke(self, agent: int, kind: OpKind, step: int) -> _Open:
        earlier = self.open.pop(agent, None)
        if earlier is not None:  # a mutant started another operation over it
            self._close(earlier, Unknown(f"superseded at step {step}"), None)
        who = f"agent{agent + 1}"
        pending = _Open(self._new_id(who), who, kind, step)
        self.open[agent] = pending
        return pending

    def add(self, number: int, before: State, step: Transition) -> None:
        after = step.target
        agent = step.agent
        if step.rule is None:
            if step.refusal is not None and agent is not None and step.event in _KIND_BY_EVENT:
                # a read or write of a stable entry the table calls not applicable: production
                # answers it at once with nothing
                pending = self._invoke(agent, _KIND_BY_EVENT[step.event], number)
                del self.open[agent]
                outcome: Outcome = (
                    ReadMiss() if pending.kind is OpKind.READ else Unknown("answered with nothing")
                )
                self._close(pending, outcome, number)
            return
        # the row starts an operation: one in progress after it, or a read answered at once
        starts = agent is not None and step.event in _KIND_BY_EVENT
        if starts and agent is not None and (after.agents[agent].op != OP_NONE or _returns(step)):
            self._invoke(agent, _KIND_BY_EVENT[step.event], number)
        self._versions(number, before, step)
        answer = _response(self.defn, before, step)
        if answer is not None and agent is not None:
            self._answer(number, before, agent, answer)
        if agent is not None and agent in self.open and after.agents[agent].op == OP_NONE:
            pending = self.open.pop(agent)
            reason = (
                "the agent crashed"
                if Effect.LOSE_VOLATILE_STATE in step.rule.effects
                else f"dropped at step {number}"
            )
            self._close(pending, Unknown(reason), None)

    def _versions(self, number: int, before: State, step: Transition) -> None:
        after = step.target
        rule = step.rule
        assert rule is not None
        for version in range(len(before.names), len(after.names)):
            value_id = after.names[version]
            if Effect.HOME_REVOKE_GRANT in rule.effects:
                # no client's operation: nobody is told when it takes effect (see the docstring)
                home = _Open(self._new_id(HOME_AGENT), HOME_AGENT, OpKind.WRITE, number)
                home.value_id = value_id
                self._close(home, Unknown("the home revoked a lapsed owner's grant"), None)
                continue
            pending = self.open.get(step.agent) if step.agent is not None else None
            if pending is not None and pending.kind is OpKind.WRITE and pending.value_id is None:
                pending.value_id = value_id
            else:
                self.unattributed.append(version)

    def _answer(
        self, number: int, before: State, agent: int, answer: tuple[Effect, int, int]
    ) -> None:
        effect, version, value_id = answer
        pending = self.open.pop(agent, None)
        if pending is None:
            return  # a value returned to no operation: the model reports it itself
        if effect is Effect.REPORT_CONFLICT:
            self.conflicts += 1  # left out: see the module docstring
        elif effect is Effect.ACK_WRITE:
            outcome: Outcome = (
                Written(version + 1) if version >= 0 else Unknown("acknowledged no version")
            )
            self._close(pending, outcome, number, value_id if version >= 0 else None)
        else:
            operation = self._close(pending, _read_outcome(version, value_id), number)
            if _on_its_way(before, agent, version):
                self.covered.add(operation.op_id)

    def finish(self) -> None:
        for agent in sorted(self.open):
            self._close(self.open[agent], Unknown("still in progress when the path ends"), None)
        self.open.clear()


def _answers(step: Transition) -> bool:
    """The step answers an operation: a response row, or a read or write of a stable entry
    the table calls not applicable (answered at once with nothing)."""
    if step.rule is None:
        return step.refusal is not None and step.event in _KIND_BY_EVENT
    return bool(_RESPONSES.intersection(step.rule.effects))


def _returns(step: Transition) -> bool:
    rule = step.rule
    return rule is not None and bool(
        {Effect.RETURN_VALUE, Effect.RETURN_VALUE_UNCACHED}.intersection(rule.effects)
    )


def history_of(defn: ProtocolDefinition, path: Sequence[Transition]) -> ModelHistory:
    """The operation history of `path`, a sequence of transitions from the initial state."""
    builder = _Builder(defn)
    before = initial_state(defn)
    steps: list[tuple[Transition, State]] = []
    for number, step in enumerate(path, start=1):
        builder.add(number, before, step)
        steps.append((step, step.target))
        before = step.target
    builder.finish()
    operations = sorted(builder.ops, key=lambda op: (op.invoked_at_ns, op.op_id))
    return ModelHistory(
        defn=defn,
        steps=tuple(steps),
        operations=tuple(operations),
        completed_step=dict(builder.completed_step),
        covered=frozenset(builder.covered),
        unattributed_versions=tuple(builder.unattributed),
        conflicts_left_out=builder.conflicts,
    )


def _steps(defn: ProtocolDefinition, state: State) -> Iterator[Transition]:
    """The enabled steps of `state`, also past a violation the model's ghost checks recorded
    (the interpreter stops there; the history goes on, so that what the bad step leads to can
    show in the history, independently of the ghost check that saw it)."""
    return transitions(defn, state._replace(violation="") if state.violation else state)


def random_walk(
    defn: ProtocolDefinition, rng: random.Random, max_steps: int = WALK_STEPS
) -> list[Transition]:
    """A random path from the initial state: each step uniformly among the enabled steps
    that change the state (past recorded violations, see `_steps`), until `max_steps` or no
    step."""
    state = initial_state(defn)
    path: list[Transition] = []
    for _ in range(max_steps):
        options = [step for step in _steps(defn, state) if step.target != state]
        if not options:
            break
        chosen = rng.choice(options)
        path.append(chosen)
        state = chosen.target
    return path


def _step_of(history: ModelHistory, operation: Operation) -> int:
    return history.completed_step.get(operation.op_id, len(history.steps))


def judge(history: ModelHistory) -> HistoryVerdict:
    """Run the history checkers of the definition's mode on `history`."""
    ops = history.operations
    if history.defn.mode is Mode.STRICT:
        initial = {KEY: KeyState(exists=True, version=1, value=_value_name(0))}
        results = check_history(ops, initial=initial, version_rule=VersionRule.CONSECUTIVE)
        result = results.get(KEY)
        if result is None or result.ok:  # None: no operation at all
            return HistoryVerdict(True)
        assert result.culprit is not None
        return HistoryVerdict(
            False,
            "history_linearizable",
            result.message,
            _step_of(history, result.culprit),
            ops,
        )
    found = _coherent_violations(history)
    if not found:
        return HistoryVerdict(True)
    step, name, message = min(found)
    return HistoryVerdict(False, name, message, step, ops)


def _coherent_violations(history: ModelHistory) -> list[tuple[int, str, str]]:
    ops = history.operations
    found: list[tuple[int, str, str]] = []
    report = analyze_staleness(ops)
    for violation in (*report.monotonic_read_violations, *report.read_your_writes_violations):
        name = "history_" + violation.guarantee.value.replace(" ", "_")
        found.append((_step_of(history, violation.read), name, violation.message))
    for stale in report.stale_reads:
        if stale.read.op_id in history.covered:
            continue
        found.append(
            (
                _step_of(history, stale.read),
                "history_stale_read_covered",
                f"{stale.read.describe()} returned {_version_text(stale.observed_version)} "
                f"although version {stale.newer_version} was known complete at "
                f"{stale.newer_committed_at_ns} ns, before the read began, and no invalidation "
                "was on its way to the reader when it returned",
            )
        )
    named: dict[int, str] = {1: _value_name(0)}
    unknown_values: set[str] = set()
    for op in ops:
        if isinstance(op.outcome, Written) and isinstance(op.value, str):
            named.setdefault(op.outcome.version, op.value)
        elif op.is_unknown and op.kind is not OpKind.READ and isinstance(op.value, str):
            unknown_values.add(op.value)
    for op in ops:
        if isinstance(op.outcome, ReadMiss):
            found.append(
                (
                    _step_of(history, op),
                    "history_read_value",
                    f"{op.describe()}: the key always exists in the model, yet the read "
                    "returned nothing",
                )
            )
        if not isinstance(op.outcome, ReadHit):
            continue
        creator = named.get(op.outcome.version)
        if creator == op.outcome.value or (creator is None and op.outcome.value in unknown_values):
            continue  # the write that made it, or one of unknown outcome that may have
        written = (
            f"written with {creator!r}"
            if creator
            else f"created by no operation that wrote {op.outcome.value!r}"
        )
        found.append(
            (
                _step_of(history, op),
                "history_read_value",
                f"{op.describe()}: version {op.outcome.version} was {written}",
            )
        )
    return found


def _version_text(version: int | None) -> str:
    return "a miss" if version is None else f"version {version}"


def counterexample(history: ModelHistory, verdict: HistoryVerdict) -> Counterexample:
    """The path up to the violation, with the history and the checker's words."""
    shown = history.steps[: verdict.step]
    cutoff = 2 * verdict.step + 1
    lines = [op.describe() for op in verdict.operations if op.invoked_at_ns <= cutoff]
    explanation = (
        f"{verdict.message}\n  history up to step {verdict.step} (time 2n: step n's "
        "invocations, 2n + 1: its responses; versions are the model's plus 1):\n    "
        + "\n    ".join(lines)
    )
    return Counterexample(
        property_name=verdict.property_name,
        initial_state=describe(initial_state(history.defn)),
        steps=tuple(TraceStep(step.label, describe(state)) for step, state in shown),
        explanation=explanation,
    )


def check_model_histories(
    *,
    graph: Iterable[ProtocolDefinition] = (),
    walked: Iterable[ProtocolDefinition] = (),
    walks: int = WALKS,
    max_steps: int = WALK_STEPS,
    max_states: int = GRAPH_STATES_MAX,
    seed: int = 13,
) -> CheckReport:
    """Judge (see `judge`) the histories of every answered operation's shortest path in each
    definition of `graph` (`graph_histories`), then of `walks` seeded random walks of each
    definition of `walked`. Fails with the first failing history of the state graph (a
    shortest one), or the shortest failing walk of the first walked definition with one.

    The definitions run without the L2 rollback (`l2_rollback=False`): a copy read from a
    restored L2 is outside the global guarantees these checkers judge (linearizability, stale
    reads), exactly as the model's invariants exempt it; the explorer checks the rollback."""
    started = time.perf_counter()
    graph = [dataclasses.replace(defn, l2_rollback=False) for defn in graph]
    walked = [dataclasses.replace(defn, l2_rollback=False) for defn in walked]
    summary: dict[str, int | float | str] = {
        "graph_paths": 0,
        "walks": 0,
        "operations": 0,
        "conflicts_left_out": 0,
    }

    def fail(
        defn: ProtocolDefinition, history: ModelHistory, verdict: HistoryVerdict
    ) -> CheckReport:
        summary["seconds"] = round(time.perf_counter() - started, 2)
        summary["failed"] = defn.name or f"{defn.agents} agents, {defn.writes} writes"
        return CheckReport("model histories", False, summary, counterexample(history, verdict))

    for defn in graph:
        summary["mode"] = defn.mode.value
        histories = graph_histories(defn, max_states=max_states)
        for history in histories:
            summary["graph_paths"] = int(summary["graph_paths"]) + 1
            summary["operations"] = int(summary["operations"]) + len(history.operations)
            summary["conflicts_left_out"] = (
                int(summary["conflicts_left_out"]) + history.conflicts_left_out
            )
            verdict = judge(history)
            if not verdict.ok:
                return fail(defn, history, verdict)
        summary["graph_states"] = int(summary.get("graph_states", 0)) + histories.states
        if histories.truncated:  # said, never silent: the graph paths are then a sample
            summary[f"truncated_{defn.agents}a{defn.writes}w"] = max_states
    rng = random.Random(seed)
    for defn in walked:
        summary["mode"] = defn.mode.value
        worst: tuple[int, ModelHistory, HistoryVerdict] | None = None
        for _ in range(walks):
            history = history_of(defn, random_walk(defn, rng, max_steps))
            summary["walks"] = int(summary["walks"]) + 1
            summary["operations"] = int(summary["operations"]) + len(history.operations)
            summary["conflicts_left_out"] = (
                int(summary["conflicts_left_out"]) + history.conflicts_left_out
            )
            verdict = judge(history)
            if not verdict.ok and (worst is None or verdict.step < worst[0]):
                worst = (verdict.step, history, verdict)
        if worst is not None:
            return fail(defn, worst[1], worst[2])
    summary["seconds"] = round(time.perf_counter() - started, 2)
    return CheckReport("model histories", True, summary)


class GraphHistories:
    """The history of the shortest path to every state the model reaches (breadth-first,
    without symmetry reduction, so agent numbers are stable along each path) whose last step
    answered an operation: every way an operation can be answered within the definition's
    bounds, each on one shortest path (past recorded violations, see `_steps`). Iterate it;
    afterwards `states` says how many states were reached and `truncated` whether
    `max_states` stopped it."""

    def __init__(self, defn: ProtocolDefinition, max_states: int) -> None:
        self.defn = defn
        self.max_states = max_states
        self.states = 0
        self.truncated = False

    def __iter__(self) -> Iterator[ModelHistory]:
        defn = self.defn
        root = initial_state(defn)
        parent: dict[State, tuple[State, Transition] | None] = {root: None}
        queue: deque[State] = deque([root])
        while queue:
            state = queue.popleft()
            for step in _steps(defn, state):
                target = step.target
                answers = _answers(step)
                if target == state or target in parent:
                    if target == state and answers:  # a read answered from a copy, unchanged
                        yield history_of(defn, [*_path_to(parent, state), step])
                    continue
                if len(parent) >= self.max_states:
                    self.states, self.truncated = len(parent), True
                    return
                parent[target] = (state, step)
                queue.append(target)
                if answers:
                    yield history_of(defn, _path_to(parent, target))
        self.states = len(parent)


def graph_histories(
    defn: ProtocolDefinition, *, max_states: int = GRAPH_STATES_MAX
) -> GraphHistories:
    """The histories of `defn`'s state graph (see `GraphHistories`)."""
    return GraphHistories(defn, max_states)


def _path_to(
    parent: dict[State, tuple[State, Transition] | None], state: State
) -> list[Transition]:
    path: list[Transition] = []
    link = parent[state]
    while link is not None:
        path.append(link[1])
        link = parent[link[0]]
    path.reverse()
    return path
