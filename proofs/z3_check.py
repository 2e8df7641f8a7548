"""Z3 checks of the protocol table: one-step checks over the whole table, and bounded model checks.

`check_table(defn)` proves, for ONE step from ANY state that satisfies the type invariant (not
only the reachable ones), that the table of `defn`:
- is total: every offered (state, event) has a row or an explicit refusal (stalled, not
  applicable or impossible) for every guard outcome;
- is deterministic: no two rows, and no row and a refusal, are enabled together;
- preserves the type invariant: every row maps a well-formed state to a well-formed state.
  "Well-formed" is the type invariant plus the lemma "no version exceeds the home's" (the
  type invariant alone is not inductive); the home's version bound itself is left to bounded
  model checking, as it depends on how many writes were started.

`bounded_model_check(defn, depth=K)` searches every execution of `defn` of up to K steps from
the initial state (all agents, every enabled fault) for a state that breaks one of the mode's
invariants or takes a step the table leaves undefined, doubles, or calls impossible. The
state is encoded over finite-domain bit-vectors (fresh variables per step, one selector per
step choosing the (row, agent, payload)), which was about 25x faster than integers here. A
depth is a number of protocol steps (one event at one agent, or at the home, L2 or the bus).
In strict mode (by default) executions are searched up to a renaming of the agents: agent
i+1 takes its first step only after agent i has taken one (symmetry breaking; sound because
the agents start alike and no field, guard, effect or invariant names an agent, see
`_AgentOrder`). A
counterexample is replayed through the model's own interpreter, so the trace shows the
explorer's labels and states, and any disagreement between the encoding and the model is
itself reported as a failure.

Both return `proofs.report.CheckReport`; neither ever changes the definition it is given.

Measured on the shared 2-core machine (3 agents, 1 write, 1 fault per run; every fault event):
`check_table` about 1.5 s per mode; BMC to depth 10 about 15 s per mode, to `DEEP_DEPTH` (20)
about 2.5 minutes in coherent mode. Strict mode to depth 20 passed in 2,348 s wall with two
workers (3,268 s of CPU; `sagemem check --mode strict --bmc-depth 20 --workers 2`,
2026-11-26); its depths 16-20 took 255, 396, 469, 848 and 943 s each. The depths are
independent queries (see `_Unrolling`), so `workers > 1` spreads them over processes.
Each depth is one fresh bit-blasting SAT query (simplify, bit-blast, sat), which beat Z3's
incremental modes here (and CaDiCaL, Glucose, Lingeling and MapleChrono on the same CNF at
strict depth 11: 34, 39, 214 and 96 s against Z3's 12 s); the cost of a depth grows with it,
because interleavings of 3 agents and the faults multiply. Tried and measured without gain
(SAT conflicts or CPU at depths 10-14, strict mode): ordering commuting steps (partial-order
reduction, two encodings), a sorted-agents canonical form per step (about 4x more
conflicts), forbidding repeated states, incremental QF_FD solving, other tactics (aig,
solve-eqs), lemmas mined from the explorer's states (Houdini), k-induction (not inductive up
to k=10) and Spacer (no answer in 10 minutes for 2 agents).
"""

from __future__ import annotations

import multiprocessing
import queue
import time
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass
from typing import Any, Final

import z3

from sagemem.spec.invariants import first_violation, invariants_for
from sagemem.spec.model import (
    SITE_KEY,
    ProtocolDefinition,
    State,
    describe,
    initial_state,
    transitions,
)
from sagemem.spec.table import RefusalKind, RowKey, Rule
from sagemem.spec.vocabulary import EVENT_SITE, Event, L1State, Mode, Site

from .report import CheckReport, Counterexample, TraceStep
from .z3_encoding import (
    VIOLATION_NONE,
    Encoding,
    Step,
    SymState,
    version_level,
)

__all__ = [
    "DEEP_DEPTH",
    "QUICK_DEPTH",
    "bounded_model_check",
    "check_table",
    "compare_with_model",
    "depth_ranges",
]

QUICK_DEPTH: Final = 6
DEEP_DEPTH: Final = 20

# Tuned on one query per depth (3 agents, 1 write, SAT conflicts counted). Strict mode: symmetry
# breaking and deciding Booleans false first (most flags of a state are clear) together halve
# the conflicts (depth 10: 52,387 -> 26,308; depth 12: 185,923 -> 86,588). Coherent mode: no
# gain at depth 14 (25,538 -> 24,395) and a loss at depth 20 (49,659 -> 77,845; 90,001 with
# symmetry breaking alone, 63,172 with the phase alone), so it keeps Z3's defaults.
_SYMMETRY_BREAKING_MODES: Final = frozenset({Mode.STRICT})
_SAT_PHASE: Final = {Mode.COHERENT: "caching", Mode.STRICT: "always_false"}

type Progress = Callable[[str], None]


# ----------------------------------------------------------------------------------------------
# one-step checks


def _obligations(enc: Encoding, s: SymState) -> list[tuple[str, str, Any]]:
    """(property, what, formula that is SAT iff the property fails) for the whole table."""
    obligations: list[tuple[str, str, Any]] = []
    seen_offers: set[tuple[object, ...]] = set()
    for event, a, payload, offered in enc.offers(s):  # the same offers as steps()
        if a not in (0, None):
            continue  # agents are interchangeable: agent 1 stands for every agent
        if (event, a, payload) in seen_offers:
            continue
        seen_offers.add((event, a, payload))
        site = EVENT_SITE[event]
        keys: list[tuple[RowKey, Any]]
        if site is Site.AGENT and a is not None:
            keys = [(st, enc.is_state(s.agents[a], st)) for st in L1State]
        else:
            keys = [(SITE_KEY[site], z3.BoolVal(True))]
        for key, at_key in keys:
            rules, refusals, _known = enc.entry(key, event)
            matched = [enc.holds(r.guard, s, a, payload) for r in rules]
            refused = [
                z3.BoolVal(True) if f.guard is None else enc.holds(f.guard, s, a, payload)
                for f in refusals
            ]
            where = f"({key.name}, {event.name}{f', v{payload}' if payload else ''})"
            base = z3.And(offered, at_key)
            covered = z3.Or(z3.BoolVal(False), *matched, *refused)
            obligations.append(
                ("totality", f"{where} has no row or refusal", z3.And(base, z3.Not(covered)))
            )
            for i in range(len(rules)):
                for j in range(i + 1, len(rules)):
                    obligations.append(
                        (
                            "determinism",
                            f"{where}: rows [{rules[i].guard.value}] and "
                            f"[{rules[j].guard.value}] are both enabled",
                            z3.And(base, matched[i], matched[j]),
                        )
                    )
                for f, hit in zip(refusals, refused, strict=True):
                    kind = "impossible" if f.kind is RefusalKind.IMPOSSIBLE else f.kind.value
                    obligations.append(
                        (
                            "determinism",
                            f"{where}: row [{rules[i].guard.value}] and a {kind} refusal "
                            f"[{f.guard.value if f.guard else 'any'}] are both enabled",
                            z3.And(base, matched[i], hit),
                        )
                    )
    return obligations


def _one_step_counterexample(
    enc: Encoding, model: Any, s: SymState, prop: str, what: str, step: Step | None
) -> Counterexample:
    def values(term: Any) -> Any:
        return model.eval(term, model_completion=True)

    before = enc.decode(values, s)
    steps: tuple[TraceStep, ...] = ()
    if step is not None:
        steps = (TraceStep(step.describe(), describe(enc.decode(values, step.target))),)
    return Counterexample(
        property_name=prop,
        initial_state=describe(before),
        steps=steps,
        explanation=f"{what} (from a well-typed state; one step, not necessarily reachable)",
    )


def check_table(defn: ProtocolDefinition) -> CheckReport:
    """One-step checks over the whole table of `defn`: totality, determinism, type invariant.

    Every obligation is a satisfiability query over one symbolic well-typed state (and its
    symbolic successor); the first failing one is returned as a one-step counterexample.
    """
    started = time.perf_counter()
    enc = Encoding(defn)
    s = enc.fresh("s")
    solver = z3.Solver()
    solver.add(
        enc.type_invariant(s),
        enc.versions_within_home(s),
        s.g["violation"] == enc.code("viol", VIOLATION_NONE),
    )
    counts = {"totality": 0, "determinism": 0, "type_invariant_preserved": 0}

    def failed(prop: str, what: str, step: Step | None) -> CheckReport:
        cex = _one_step_counterexample(enc, solver.model(), s, prop, what, step)
        return CheckReport(
            checker="z3 table checks",
            ok=False,
            summary={
                "mode": defn.mode.value,
                "obligations": sum(counts.values()),
                "seconds": round(time.perf_counter() - started, 3),
            },
            counterexample=cex,
        )

    for prop, what, formula in _obligations(enc, s):
        counts[prop] += 1
        if solver.check(formula) == z3.sat:
            return failed(prop, what, None)

    shape_after = enc.type_invariant
    for step in enc.steps(s):
        if step.rule is None or step.agent not in (0, None):
            continue
        counts["type_invariant_preserved"] += 1
        well_formed = z3.And(
            shape_after(step.target, with_bounds=False), enc.versions_within_home(step.target)
        )
        broken = z3.And(step.enabled, z3.Not(well_formed))
        if solver.check(broken) == z3.sat:
            rule = step.rule
            what = (
                f"row {rule.source.name} --{rule.event.name} [{rule.guard.value}]--> "
                f"{rule.target.name} breaks the type invariant"
            )
            return failed("type_invariant_preserved", what, step)

    return CheckReport(
        checker="z3 table checks",
        ok=True,
        summary={
            "mode": defn.mode.value,
            "rows": sum(defn.mode in r.modes for r in defn.table),
            "totality_obligations": counts["totality"],
            "determinism_obligations": counts["determinism"],
            "type_obligations": counts["type_invariant_preserved"],
            "seconds": round(time.perf_counter() - started, 3),
        },
    )


# ----------------------------------------------------------------------------------------------
# bounded model checking


def _normalized(state: State) -> State:
    return version_level(state)


def _replay(
    defn: ProtocolDefinition, decoded: list[State], chosen: list[Step]
) -> tuple[State, list[TraceStep], bool]:
    """Follow the Z3 trace through the model's interpreter: (last state, steps, agreed)."""
    current = initial_state(defn)
    agreed = _normalized(current) == decoded[0]
    trace: list[TraceStep] = []
    for step, want in zip(chosen, decoded[1:], strict=True):
        match = [
            t
            for t in transitions(defn, current)
            if t.event is step.event and t.agent == step.agent and _normalized(t.target) == want
        ]
        if match:
            current = match[0].target
            trace.append(TraceStep(match[0].label, describe(current)))
        else:
            agreed = False
            current = want
            trace.append(
                TraceStep(
                    f"{step.describe()} [the model's interpreter has no such step]",
                    describe(want),
                )
            )
    return current, trace, agreed


def _agents_start_alike(defn: ProtocolDefinition) -> bool:
    return len(set(initial_state(defn).agents)) <= 1


class _AgentOrder:
    """Symmetry breaking: agent i+1 takes its first step only after agent i has taken one.

    Sound for the invariants, which treat agents alike: take a shortest execution that breaks
    one; renaming its agents in the order of their first steps gives an execution of the same
    length that obeys this rule and breaks the same invariant, and whose earlier states are
    renamings of good states, so good. Renaming is harmless because the agents start alike
    (checked: the initial state has identical agents) and no state field, guard, effect or
    invariant names an agent (`sagemem.spec.model.AgentState`; the explorer's symmetry
    reduction rests on the same fact). Agent-less steps (the relay, L2 evictions) are free.
    """

    def __init__(self, agents: int) -> None:
        self.agents = agents
        self.acted: list[Any] = [z3.BoolVal(False)] * agents

    def constrain(self, choice: Any, steps: list[Step]) -> Any:
        """The rule for the step numbered `choice` out of `steps`, given the earlier steps."""
        width = choice.size()
        takes = []
        for a in range(self.agents):
            numbers = [i for i, step in enumerate(steps) if step.agent == a]
            if numbers == list(range(numbers[0], numbers[-1] + 1)):  # the usual, cheap case
                takes.append(
                    z3.And(
                        z3.UGE(choice, z3.BitVecVal(numbers[0], width)),
                        z3.ULE(choice, z3.BitVecVal(numbers[-1], width)),
                    )
                )
            else:
                takes.append(z3.Or(*(choice == z3.BitVecVal(i, width) for i in numbers)))
        rule = z3.And(
            z3.BoolVal(True),
            *(z3.Implies(takes[a], self.acted[a - 1]) for a in range(1, self.agents)),
        )
        self.acted = [z3.Or(was, now) for was, now in zip(self.acted, takes, strict=True)]
        return rule


class _Unrolling:
    """The executions of `defn` unrolled step by step: states, transition constraints and the
    choice variable of each step, with every state before the last asserted safe.

    The bounded model check of depth k asks one question of it: can state k break an
    invariant while states 0..k-1 do not? The answers for k = 0..K are independent queries,
    so they can be asked in any order or in parallel; no violation up to K exists exactly when
    all of them are unsatisfiable (a violating execution has a first violating state j, which
    answers query j).
    """

    def __init__(self, defn: ProtocolDefinition, *, symmetry: bool | None) -> None:
        self.defn = defn
        self.enc = Encoding(defn)
        self.states = [self.enc.fresh("s0")]
        self.constraints: list[Any] = [self.enc.initial(self.states[0])]
        self.step_lists: list[list[Step]] = []
        self.choices: list[Any] = []
        if symmetry is None:
            symmetry = defn.mode in _SYMMETRY_BREAKING_MODES
        self.agent_order = (
            _AgentOrder(defn.agents) if symmetry and _agents_start_alike(defn) else None
        )

    @property
    def depth(self) -> int:
        return len(self.states) - 1

    def violated(self) -> Any:
        """The last state breaks an invariant (or took an undefined step)."""
        return z3.Or(*self.enc.invariant_violations(self.states[-1]).values())

    def extend(self) -> None:
        """Assert the last state safe and add one more step after it."""
        k = self.depth
        self.constraints.append(z3.Not(self.violated()))
        steps = self.enc.steps(self.states[k])
        width = max(1, (len(steps) - 1).bit_length())
        choice = z3.BitVec(f"choice{k}", width)
        following = self.enc.fresh(f"s{k + 1}")
        self.constraints.append(self.enc.transition(self.states[k], choice, following, steps))
        if self.agent_order is not None:
            self.constraints.append(self.agent_order.constrain(choice, steps))
        self.states.append(following)
        self.step_lists.append(steps)
        self.choices.append(choice)

    def solve(self, started: float) -> CheckReport | None:
        """Query the last depth: None when no violation is possible there, else its report."""
        # A fresh bit-blasting SAT solver per depth beat every incremental mode of Z3 here.
        # The earlier states are asserted safe, which prunes the search a lot.
        sat = z3.With("sat", phase=_SAT_PHASE[self.defn.mode])
        solver = z3.Then("simplify", "bit-blast", sat).solver()
        solver.add(*self.constraints, self.violated())
        if solver.check() != z3.sat:
            return None
        return _bmc_failure(
            self.defn,
            self.enc,
            solver.model(),
            self.states,
            self.step_lists,
            self.choices,
            started,
        )


@dataclass(frozen=True, slots=True)
class _DepthOutcome:
    depth: int
    seconds: float
    failure: CheckReport | None
    steps_per_depth: int
    symmetry: bool


def _check_depths(
    defn: ProtocolDefinition,
    depths: range,
    symmetry: bool | None,
    started: float,
    report: Callable[[_DepthOutcome], None],
    began: Callable[[int], None],
) -> None:
    """Query each depth of `depths` in turn on one unrolling, stopping at the first failure;
    `began(k)` is called as the query of depth k starts, `report` when it is answered.

    The unrolling is built once from depth 0 (building costs a fraction of a second a step),
    so a run of consecutive depths costs little more than their queries.
    """
    unrolling = _Unrolling(defn, symmetry=symmetry)
    while True:
        k = unrolling.depth
        if k in depths:
            began(k)
            depth_started = time.perf_counter()
            failure = unrolling.solve(started)
            report(
                _DepthOutcome(
                    k,
                    time.perf_counter() - depth_started,
                    failure,
                    len(unrolling.step_lists[-1]) if unrolling.step_lists else 0,
                    unrolling.agent_order is not None,
                )
            )
            if failure is not None:
                return
        if k >= depths[-1]:
            return
        unrolling.extend()


def bounded_model_check(
    defn: ProtocolDefinition,
    *,
    depth: int,
    progress: Progress | None = None,
    symmetry: bool | None = None,
    workers: int = 1,
) -> CheckReport:
    """Search every execution of `defn` of at most `depth` steps for an invariant violation.

    Checks each depth k = 0..depth (the first violating state of an execution at step k,
    with states 0..k-1 safe), for the disjunction of the mode's invariants negated, plus
    table defects (an undefined, doubled or impossible (state, event) taken); a violation is
    reported at its shortest depth. `progress` receives a line as each depth's query starts
    and as it is answered (and, with workers, every 30 s while none is answered).
    A depth is a number of protocol steps (one event at one agent, or at the home, L2 or the
    bus). With `symmetry` (when the agents start alike), executions are searched up to a
    renaming of the agents (see `_AgentOrder`): the same verdicts and the same shortest
    violation depth. None (the default) turns it on where it was measured to help: strict mode.

    With `workers > 1` the depths are independent queries spread over that many processes,
    deepest (slowest) first; the verdict and the reported depth are the same as with one.
    """
    if depth < 0:
        raise ValueError(f"depth={depth} is negative; use 0 or more steps")
    if workers < 1:
        raise ValueError(f"workers={workers} is out of range; use 1 or more")
    started = time.perf_counter()
    outcomes: dict[int, _DepthOutcome] = {}

    def record(outcome: _DepthOutcome, running: Collection[int] = ()) -> None:
        outcomes[outcome.depth] = outcome
        if progress is not None and outcome.failure is None:
            elapsed = time.perf_counter() - started
            if workers == 1:
                progress(
                    f"bmc {defn.mode.value}: depth {outcome.depth} of 0-{depth} safe "
                    f"({outcome.seconds:.1f}s; {elapsed:.1f}s in all)"
                )
                return
            # Depths finish out of order (the deepest start first): say which are done,
            # which are being queried and which wait, not a count that reads like the end.
            queued = [k for k in range(depth + 1) if k not in outcomes and k not in running]
            parts = [
                f"depth {outcome.depth} safe in {outcome.seconds:.1f}s",
                f"done {depth_ranges(outcomes)} of 0-{depth}",
            ]
            if running:
                parts.append(f"running {depth_ranges(running)}")
            if queued:
                parts.append(f"queued {depth_ranges(queued)}")
            progress(f"bmc {defn.mode.value}: {'; '.join(parts)} ({elapsed:.1f}s in all)")

    failures: list[CheckReport] = []

    def answer(outcome: _DepthOutcome) -> None:
        if outcome.failure is None:
            record(outcome)
        else:
            failures.append(outcome.failure)

    def began(k: int) -> None:
        if progress is not None:
            elapsed = time.perf_counter() - started
            progress(f"bmc {defn.mode.value}: querying depth {k}/{depth} ({elapsed:.1f}s in all)")

    if workers == 1 or depth == 0:
        _check_depths(defn, range(depth + 1), symmetry, started, answer, began)
        if failures:
            return failures[0]
    else:
        failure = _check_depths_in_parallel(
            defn, depth, symmetry, workers, started, record, progress
        )
        if failure is not None:
            return failure
    last = outcomes[depth]
    return CheckReport(
        checker="z3 bmc",
        ok=True,
        summary={
            "mode": defn.mode.value,
            "agents": defn.agents,
            "writes": defn.writes,
            "depth": depth,
            "steps_per_depth": last.steps_per_depth,
            "symmetry_breaking": "on" if last.symmetry else "off",
            "deepest_query_s": round(last.seconds, 1),
            "seconds": round(time.perf_counter() - started, 2),
        },
    )


@dataclass(frozen=True, slots=True)
class _DepthBegan:
    depth: int
    at: float


@dataclass(frozen=True, slots=True)
class _JobEnded:
    job: int
    error: str | None


type _Answer = _DepthBegan | _DepthOutcome | _JobEnded

# Seconds between progress lines while every running query is still being solved (the
# deepest strict queries take a quarter of an hour each), and between looks at whether a
# worker died without a word (killed by a signal or the kernel's OOM killer).
_QUIET_PROGRESS_S: Final = 30.0
_LIVENESS_S: Final = 2.0


def _check_depths_in_parallel(
    defn: ProtocolDefinition,
    depth: int,
    symmetry: bool | None,
    workers: int,
    started: float,
    record: Callable[[_DepthOutcome, Collection[int]], None],
    progress: Progress | None,
) -> CheckReport | None:
    """Query depths 0..`depth` in `workers` processes; the shallowest failure, or None.

    A query costs more the deeper it is (strict mode, 3 agents: depths 16-20 took 255, 396,
    469, 848 and 943 s), so the deeper half of the depths are queued one by one, deepest
    first, for whichever worker is free; the shallower half is one last job that walks them in
    turn on one unrolling (building a depth from scratch costs about 0.4 s a step, not worth
    repeating for queries of a few seconds). Once a depth fails, only shallower queries are
    awaited (the failure reported is the shortest) and the workers are then terminated,
    deeper queries and all. While no answer arrives, `progress` hears every
    `_QUIET_PROGRESS_S` which depths are being queried, and for how long. A worker that
    raises, or dies without a word, ends the check with a RuntimeError that says so.
    """
    context = multiprocessing.get_context("fork")
    answers: multiprocessing.Queue[_Answer] = context.Queue()
    shallow = depth // 2
    jobs = [range(k, k + 1) for k in range(depth, shallow, -1)]
    jobs.append(range(0, shallow + 1))
    waiting = list(enumerate(jobs))
    processes: dict[int, multiprocessing.process.BaseProcess] = {}
    failures: dict[int, CheckReport] = {}
    answered: set[int] = set()
    running: dict[int, float] = {}
    assigned: set[int] = set()  # depths of the jobs a worker has taken (built or queried)
    last_word = time.perf_counter()
    try:
        while not answered.issuperset(range(depth + 1)):
            while waiting and len(processes) < workers:
                number, job = waiting.pop(0)
                process = context.Process(
                    target=_check_depths_job,
                    args=(answers, number, defn, job, symmetry, started),
                    name=f"sagemem-bmc-depths-{job.start}-{job.stop - 1}",
                    daemon=True,
                )
                process.start()
                processes[number] = process
                assigned.update(job)
            try:
                answer = answers.get(timeout=_LIVENESS_S)
            except queue.Empty:
                _check_alive(processes, jobs)
                if progress is not None and time.perf_counter() - last_word >= _QUIET_PROGRESS_S:
                    progress(_still_querying(defn, depth, running, len(answered), started))
                    last_word = time.perf_counter()
                continue
            if isinstance(answer, _JobEnded):
                if answer.error is not None:
                    raise RuntimeError(f"a bounded model checking worker failed: {answer.error}")
                processes.pop(answer.job).join()
                continue
            if isinstance(answer, _DepthBegan):
                running[answer.depth] = answer.at
                continue
            last_word = time.perf_counter()
            running.pop(answer.depth, None)
            answered.add(answer.depth)
            if answer.failure is None:
                record(answer, assigned - answered)
            else:
                failures[answer.depth] = answer.failure
            if failures and answered.issuperset(range(min(failures))):
                break
    finally:
        for worker in processes.values():
            worker.terminate()
        for worker in processes.values():
            worker.join()
        answers.close()
    return failures[min(failures)] if failures else None


def _check_alive(
    processes: dict[int, multiprocessing.process.BaseProcess], jobs: list[range]
) -> None:
    """Raise if a worker died before it reported the end of its job (its answers are lost)."""
    for number, process in processes.items():
        if not process.is_alive() and process.exitcode != 0:
            depths = jobs[number]
            raise RuntimeError(
                f"a bounded model checking worker (depths {depths.start}-{depths.stop - 1}) "
                f"died with exit code {process.exitcode} before answering; a negative code is "
                "the signal that killed it (-9: SIGKILL, often the kernel's OOM killer)"
            )


def depth_ranges(depths: Iterable[int]) -> str:
    """Depths as short ranges in increasing order: [0, 1, 2, 3, 7, 9, 10] -> "0-3, 7, 9-10"."""
    ordered = sorted(set(depths))
    if not ordered:
        return "none"
    spans: list[str] = []
    first = last = ordered[0]
    for k in [*ordered[1:], None]:
        if k is not None and k == last + 1:
            last = k
            continue
        spans.append(str(first) if first == last else f"{first}-{last}")
        if k is not None:
            first = last = k
    return ", ".join(spans)


def _still_querying(
    defn: ProtocolDefinition, depth: int, running: dict[int, float], answered: int, started: float
) -> str:
    now = time.perf_counter()
    queries = ", ".join(
        f"depth {k} ({now - since:.0f}s)" for k, since in sorted(running.items(), reverse=True)
    )
    return (
        f"bmc {defn.mode.value}: querying {queries or 'nothing yet'}; {answered} of "
        f"{depth + 1} depths answered, {now - started:.0f}s in all"
    )


def _check_depths_job(
    answers: multiprocessing.Queue[_Answer],
    number: int,
    defn: ProtocolDefinition,
    depths: range,
    symmetry: bool | None,
    started: float,
) -> None:
    """A worker process: answer `depths`, then say the job `number` ended (and how)."""
    try:
        _check_depths(
            defn,
            depths,
            symmetry,
            started,
            answers.put,
            lambda k: answers.put(_DepthBegan(k, time.perf_counter())),
        )
    except Exception as error:  # reported to the parent, which raises it there
        answers.put(_JobEnded(number, f"{type(error).__name__}: {error}"))
    else:
        answers.put(_JobEnded(number, None))
    answers.close()
    answers.join_thread()


def _bmc_failure(
    defn: ProtocolDefinition,
    enc: Encoding,
    model: Any,
    states: list[SymState],
    step_lists: list[list[Step]],
    choices: list[Any],
    started: float,
) -> CheckReport:
    def values(term: Any) -> Any:
        return model.eval(term, model_completion=True)

    decoded = [enc.decode(values, s) for s in states]
    chosen = [
        steps[values(choice).as_long()] for steps, choice in zip(step_lists, choices, strict=True)
    ]
    last, trace, agreed = _replay(defn, decoded, chosen)
    found = first_violation(defn, last)
    if found is not None and agreed:
        name, explanation = found
    else:
        broken = [
            name
            for name, formula in enc.invariant_violations(states[-1]).items()
            if z3.is_true(values(formula))
        ]
        name = "z3_encoding_agrees_with_model"
        explanation = (
            f"the Z3 encoding reports {broken} broken, but the model's interpreter "
            f"{'disagrees' if found is None else 'took a different path'}: "
            "proofs/z3_encoding.py and sagemem/spec/model.py have drifted apart"
        )
    if decoded[-1].violation == "table_defect" and last.violation:
        explanation = last.violation
    return CheckReport(
        checker="z3 bmc",
        ok=False,
        summary={
            "mode": defn.mode.value,
            "agents": defn.agents,
            "writes": defn.writes,
            "violation_depth": len(chosen),
            "seconds": round(time.perf_counter() - started, 2),
        },
        counterexample=Counterexample(
            property_name=name,
            initial_state=describe(initial_state(defn)),
            steps=tuple(trace),
            explanation=explanation,
        ),
    )


# ----------------------------------------------------------------------------------------------
# agreement with the model's interpreter


def compare_with_model(
    defn: ProtocolDefinition, state: State, *, encoded: ProtocolDefinition | None = None
) -> list[str]:
    """Where the Z3 encoding of `encoded` (default `defn`) and the model of `defn` disagree.

    Compares, on the concrete `state`, the set of enabled steps (event, agent, row, target
    state) and the verdict of every invariant. An empty list means they agree here.
    """
    enc = Encoding(encoded if encoded is not None else defn)
    sym = enc.concrete(state)
    z3_steps: set[tuple[Event, int | None, Rule | None, State]] = set()
    for step in enc.steps(sym):
        if z3.is_true(z3.simplify(step.enabled)):
            target = enc.decode(z3.simplify, step.target)
            z3_steps.add((step.event, step.agent, step.rule, target))
    model_steps = {
        (t.event, t.agent, t.rule, _normalized(t.target)) for t in transitions(defn, state)
    }
    problems: list[str] = []
    where = describe(state)
    for event, agent, rule, target in sorted(z3_steps - model_steps, key=repr):
        problems.append(
            f"only Z3 takes {event} at agent {agent} by {rule} to {describe(target)} from {where}"
        )
    for event, agent, rule, target in sorted(model_steps - z3_steps, key=repr):
        problems.append(
            f"only the model takes {event} at agent {agent} by {rule} to {describe(target)} "
            f"from {where}"
        )
    checks = {inv.name: inv.check for inv in invariants_for(defn.mode)}
    for name, formula in enc.invariant_violations(sym).items():
        z3_broken = z3.is_true(z3.simplify(formula))
        model_broken = checks[name](defn, state) is not None
        if z3_broken != model_broken:
            problems.append(
                f"invariant {name}: Z3 says {'broken' if z3_broken else 'holds'}, the model "
                f"says {'broken' if model_broken else 'holds'} in {where}"
            )
    return problems
