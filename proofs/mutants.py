"""Mutation testing of the checkers: every single-row mutant of the table must be caught.

A checker that passes on the real table proves little until it is shown to fail on wrong
tables. `generate_mutants` derives every single-row mutant of a definition's table:

- wrong target: the row goes to another L1 state (every other state, one mutant each). Rows of
  the shared actors (home, Redis, bus) have a single state, so their target is not mutated;
- dropped effect: one effect of the row is removed (one mutant per effect);
- dropped row: the row is deleted;
- weakened guard: the row's guard is replaced by `Guard.ALWAYS`, the weakest guard the
  vocabulary has (the row then also fires where its guard was false). Rows whose guard already
  is ALWAYS have no weakened mutant.

`run_mutants` checks each mutant, in every mode its row belongs to, with a chain of checkers
ordered from cheap to expensive, and stops at the first checker that rejects the mutant (it is
killed): the explorer at 2 agents, 1 write, 1 fault (a fraction of a second); the Z3 one-step
table checks (totality, determinism, type invariant; about 1.5 s); the explorer on every quick
definition of the mode; the explorer at 2 agents, 3 writes and no fault (a third write exposes
copies that a second write left unregistered, which the quick bounds cannot); the explorer at
2 agents, 1 write and 2 faults (the smallest bound where a fill already invalidated meets a
detected message loss, so that the (IS_D_I, RESYNC) rows fire); row coverage: a row that
fires at the quick bounds on the original table no longer fires on the mutant (the mutation
cut off part of the protocol, which no safety property can see); and last the hostile
scenarios (`proofs.scenarios`): scripted runs through situations production meets and the
model cannot reach (a forged invalidation, an L2 restored from an old snapshot, an owner
stalled past its lease, exactly one RESYNC per detected loss), each with its expected end.
Every explorer link checks every property of `proofs.explore`, prompt progress included. A
truncated or inconclusive run never counts as a kill. A mutant no checker kills survives;
each survivor is either equivalent to the real table for every property the checkers state
(the list with reasons is in docs/coherence-protocol.md) or a gap in the checks.

This module never edits the table: mutants are new tuples passed as `ProtocolDefinition.table`.
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from enum import Enum, unique

from proofs.report import CheckReport
from proofs.scenarios import check_scenarios
from sagemem.spec.model import (
    ProtocolDefinition,
    quick,
)
from sagemem.spec.table import Rule
from sagemem.spec.vocabulary import Guard, L1State, Mode

__all__ = [
    "CheckerKind",
    "CheckerSpec",
    "Mutant",
    "MutantOutcome",
    "MutantProgress",
    "MutationKind",
    "MutationReport",
    "baseline_coverage",
    "check_mutant",
    "default_checkers",
    "generate_mutants",
    "mutate",
    "run_mutants",
    "select_mutants",
]


@unique
class MutationKind(Enum):
    """How a single row is changed."""

    WRONG_TARGET = "wrong_target"
    DROPPED_EFFECT = "dropped_effect"
    DROPPED_ROW = "dropped_row"
    WEAKENED_GUARD = "weakened_guard"


@dataclass(frozen=True, slots=True)
class Mutant:
    """One single-row change of a table: which row (its index in the original table) and how.

    `detail` is the new target's name (WRONG_TARGET), the dropped effect's position
    (DROPPED_EFFECT), or empty.
    """

    kind: MutationKind
    row_index: int
    rule: Rule
    detail: str = ""

    @property
    def name(self) -> str:
        """A stable, readable id such as `row12:wrong_target=I`."""
        suffix = f"={self.detail}" if self.detail else ""
        return f"row{self.row_index}:{self.kind.value}{suffix}"

    def describe(self) -> str:
        """The original row and the change, for reports."""
        row = (
            f"{self.rule.source.name} --{self.rule.event.name} [{self.rule.guard.name}]--> "
            f"{self.rule.target.name} {{{', '.join(e.name for e in self.rule.effects)}}}"
        )
        match self.kind:
            case MutationKind.WRONG_TARGET:
                change = f"target {self.rule.target.name} -> {self.detail}"
            case MutationKind.DROPPED_EFFECT:
                change = f"effect {self.rule.effects[int(self.detail)].name} dropped"
            case MutationKind.DROPPED_ROW:
                change = "row dropped"
            case MutationKind.WEAKENED_GUARD:
                change = f"guard {self.rule.guard.name} -> ALWAYS"
        modes = ",".join(sorted(mode.value for mode in self.rule.modes))
        return f"row {self.row_index} ({modes}) {row}: {change}"

    @property
    def modes(self) -> tuple[Mode, ...]:
        """The modes whose checks see this row (coherent first)."""
        return tuple(mode for mode in Mode if mode in self.rule.modes)


def mutate(table: Sequence[Rule], mutant: Mutant) -> tuple[Rule, ...]:
    """`table` with `mutant`'s change applied (the other rows are the same objects)."""
    rows = list(table)
    rule = rows[mutant.row_index]
    if rule != mutant.rule:
        raise ValueError(
            f"mutant {mutant.name} was generated for {mutant.rule!r}, but row "
            f"{mutant.row_index} of this table is {rule!r}; generate the mutants from this table"
        )
    match mutant.kind:
        case MutationKind.WRONG_TARGET:
            rows[mutant.row_index] = dataclasses.replace(rule, target=L1State[mutant.detail])
        case MutationKind.DROPPED_EFFECT:
            position = int(mutant.detail)
            effects = rule.effects[:position] + rule.effects[position + 1 :]
            rows[mutant.row_index] = dataclasses.replace(rule, effects=effects)
        case MutationKind.DROPPED_ROW:
            del rows[mutant.row_index]
        case MutationKind.WEAKENED_GUARD:
            rows[mutant.row_index] = dataclasses.replace(rule, guard=Guard.ALWAYS)
    return tuple(rows)


def generate_mutants(defn: ProtocolDefinition) -> Iterator[Mutant]:
    """Every single-row mutant of `defn.table`, row by row, in the order documented above."""
    for index, rule in enumerate(defn.table):
        if isinstance(rule.target, L1State):
            for state in L1State:
                if state is not rule.target:
                    yield Mutant(MutationKind.WRONG_TARGET, index, rule, state.name)
        for position in range(len(rule.effects)):
            yield Mutant(MutationKind.DROPPED_EFFECT, index, rule, str(position))
        yield Mutant(MutationKind.DROPPED_ROW, index, rule)
        if rule.guard is not Guard.ALWAYS:
            yield Mutant(MutationKind.WEAKENED_GUARD, index, rule)


def select_mutants(defn: ProtocolDefinition, names: Iterable[str]) -> list[Mutant]:
    """The mutants of `defn.table` with these names (as `Mutant.name` prints them), in the
    order given; an unknown name is a ValueError naming it."""
    by_name = {mutant.name: mutant for mutant in generate_mutants(defn)}
    wanted = [name.strip() for name in names if name.strip()]
    unknown = [name for name in wanted if name not in by_name]
    if unknown:
        raise ValueError(
            f"no mutant of this {len(defn.table)}-row table is named {', '.join(unknown)}; "
            "names look like row12:wrong_target=I, row3:dropped_effect=0, row5:dropped_row or "
            "row7:weakened_guard (`sagemem check --mutants` lists the survivors by name)"
        )
    return [by_name[name] for name in wanted]


# ----------------------------------------------------------------------------------------------
# checkers


@unique
class CheckerKind(Enum):
    """The checkers a mutant can be run through."""

    TABLE = "table"  # Z3 one-step checks over the whole table
    EXPLORE = "explore"  # exhaustive exploration (proofs.explore) at the spec's bounds
    QUICK = "quick"  # the explorer on every quick definition of the mode (collects coverage)
    COVERAGE = "coverage"  # a row that fires on the real table is dead in the mutant
    BMC = "bmc"  # Z3 bounded model checking
    SCENARIOS = "scenarios"  # hostile scenarios beyond the model (see `hostile_scenarios`)


@dataclass(frozen=True, slots=True)
class CheckerSpec:
    """One link of the kill chain: which checker, at which bounds. Picklable for workers."""

    kind: CheckerKind
    agents: int = 0
    writes: int = 0
    fault_budget: int | None = 1
    depth: int = 0

    @property
    def name(self) -> str:
        """Short name for reports, e.g. `explore(2 agents, 1 write, 1 fault)`."""
        match self.kind:
            case CheckerKind.TABLE:
                return "z3 table checks"
            case CheckerKind.EXPLORE:
                return (
                    f"explore({_count(self.agents, 'agent')}, {_count(self.writes, 'write')}, "
                    f"fault budget {self.fault_budget})"
                )
            case CheckerKind.QUICK:
                return "explore(quick bounds)"
            case CheckerKind.COVERAGE:
                return "row coverage at the quick bounds"
            case CheckerKind.SCENARIOS:
                return "hostile scenarios"
            case CheckerKind.BMC:
                return (
                    f"bmc({_count(self.agents, 'agent')}, {_count(self.writes, 'write')}, "
                    f"depth {self.depth})"
                )


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}" if number == 1 else f"{number} {noun}s"


def default_checkers() -> tuple[CheckerSpec, ...]:
    """The kill chain of `sagemem check --mutants`: cheap first, then row coverage, then the
    hostile scenarios (last, so that adding them left every earlier link's kills unchanged)."""
    return (
        CheckerSpec(CheckerKind.EXPLORE, agents=2, writes=1, fault_budget=1),
        CheckerSpec(CheckerKind.TABLE),
        CheckerSpec(CheckerKind.QUICK),
        CheckerSpec(CheckerKind.EXPLORE, agents=2, writes=3, fault_budget=0),
        CheckerSpec(CheckerKind.EXPLORE, agents=2, writes=1, fault_budget=2),
        CheckerSpec(CheckerKind.COVERAGE),
        CheckerSpec(CheckerKind.SCENARIOS),
    )


type Coverage = dict[Mode, frozenset[int]]


def baseline_coverage(table: tuple[Rule, ...]) -> Coverage:
    """For each mode, the indices of the rows of `table` that fire at the quick bounds."""
    from proofs.explore import explore

    coverage: Coverage = {}
    for mode in Mode:
        fired: set[int] = set()
        for defn in quick(mode, table=table):
            explore(defn, fired_rows=fired)
        coverage[mode] = frozenset(fired)
    return coverage


def _run_one(spec: CheckerSpec, defn: ProtocolDefinition, fired: set[int]) -> CheckReport | None:
    """One checker on `defn`; None when it has nothing to say (COVERAGE is done by the caller)."""
    match spec.kind:
        case CheckerKind.TABLE:
            from proofs.z3_check import check_table

            return check_table(defn)
        case CheckerKind.EXPLORE:
            from proofs.explore import explore

            bounded = dataclasses.replace(
                defn, agents=spec.agents, writes=spec.writes, fault_budget=spec.fault_budget
            )
            return explore(bounded)
        case CheckerKind.QUICK:
            from proofs.explore import explore

            report: CheckReport | None = None
            for bounded in quick(defn.mode, table=defn.table):
                report = explore(bounded, fired_rows=fired)
                if not report.ok:
                    return report
            return report
        case CheckerKind.BMC:
            from proofs.z3_check import bounded_model_check

            bounded = dataclasses.replace(
                defn, agents=spec.agents, writes=spec.writes, fault_budget=spec.fault_budget
            )
            return bounded_model_check(bounded, depth=spec.depth)
        case CheckerKind.SCENARIOS:
            return check_scenarios(defn)
        case CheckerKind.COVERAGE:
            return None


def _original_index(mutant: Mutant, index: int) -> int:
    """The index in the original table of row `index` of the mutated table."""
    if mutant.kind is MutationKind.DROPPED_ROW and index >= mutant.row_index:
        return index + 1
    return index


# ----------------------------------------------------------------------------------------------
# running


@dataclass(frozen=True, slots=True)
class MutantOutcome:
    """What the chain did with one mutant: killed by `killer` in `mode`, or survived."""

    mutant: Mutant
    killed: bool
    killer: str = ""
    mode: Mode | None = None
    violation: str = ""
    seconds: float = 0.0


@dataclass(frozen=True, slots=True)
class MutationReport:
    """Every mutant's outcome, with the totals `sagemem check --mutants` prints."""

    outcomes: tuple[MutantOutcome, ...]
    seconds: float

    @property
    def total(self) -> int:
        """How many mutants were checked."""
        return len(self.outcomes)

    @property
    def killed(self) -> int:
        """How many mutants some checker caught."""
        return sum(outcome.killed for outcome in self.outcomes)

    @property
    def survivors(self) -> tuple[MutantOutcome, ...]:
        """The mutants no checker caught."""
        return tuple(outcome for outcome in self.outcomes if not outcome.killed)

    @property
    def kill_rate(self) -> float:
        """killed / total (1.0 for no mutants)."""
        return self.killed / self.total if self.total else 1.0

    def kills_by_checker(self) -> dict[str, int]:
        """How many mutants each checker of the chain killed first."""
        counts: dict[str, int] = {}
        for outcome in self.outcomes:
            if outcome.killed:
                counts[outcome.killer] = counts.get(outcome.killer, 0) + 1
        return counts


@dataclass(frozen=True, slots=True)
class MutantProgress:
    """Passed to the progress callback after each mutant."""

    done: int
    total: int
    killed: int
    elapsed_s: float
    last: MutantOutcome


def _violation_text(report: CheckReport) -> str:
    if report.counterexample is not None:
        cx = report.counterexample
        text = cx.property_name
        if cx.explanation:
            text += f": {cx.explanation}"
        return f"{text} (after {len(cx.steps)} steps)"
    return str(report.summary.get("violation", "violation"))


def check_mutant(
    defn: ProtocolDefinition,
    mutant: Mutant,
    checkers: Sequence[CheckerSpec],
    baseline: Coverage | None = None,
) -> MutantOutcome:
    """Run the chain on one mutant, in each of its modes, until a checker kills it.

    A COVERAGE link needs `baseline` (from `baseline_coverage` of the original table) and a
    QUICK link before it: it kills the mutant when a row that fires on the original table at
    the quick bounds no longer fires (a dead row: the mutation cut off part of the protocol).
    """
    started = time.perf_counter()
    table = mutate(defn.table, mutant)
    fired: dict[Mode, set[int]] = {mode: set() for mode in mutant.modes}

    def killed(spec: CheckerSpec, mode: Mode, violation: str) -> MutantOutcome:
        return MutantOutcome(
            mutant,
            killed=True,
            killer=spec.name,
            mode=mode,
            violation=violation,
            seconds=time.perf_counter() - started,
        )

    for spec in checkers:
        for mode in mutant.modes:
            if spec.kind is CheckerKind.COVERAGE:
                if baseline is None:
                    raise ValueError("a COVERAGE checker needs the baseline coverage")
                now = {_original_index(mutant, i) for i in fired[mode]}
                dead = sorted(baseline[mode] - now - {mutant.row_index})
                if dead:
                    rows = "; ".join(_row_text(defn.table[i]) for i in dead[:3])
                    return killed(spec, mode, f"{len(dead)} rows became dead: {rows}")
                continue
            mutated = dataclasses.replace(defn, table=table, mode=mode, name=mutant.name)
            report = _run_one(spec, mutated, fired[mode])
            if report is not None and not report.ok and report.counterexample is not None:
                return killed(spec, mode, _violation_text(report))
    return MutantOutcome(mutant, killed=False, seconds=time.perf_counter() - started)


def _row_text(rule: Rule) -> str:
    return f"({rule.source.name}, {rule.event.name}, {rule.guard.name})"


def run_mutants(
    defn: ProtocolDefinition,
    *,
    checkers: Sequence[CheckerSpec] | None = None,
    progress: Callable[[MutantProgress], None] | None = None,
    mutants: Sequence[Mutant] | None = None,
    workers: int = 2,
) -> MutationReport:
    """Check every mutant of `defn.table` (or the given `mutants`) and report the outcomes.

    `defn.mode` is ignored: each mutant is checked in the modes of its row. With `workers > 1`
    the mutants are spread over that many processes; outcomes keep the mutants' order.
    """
    chain = tuple(checkers) if checkers is not None else default_checkers()
    baseline = (
        baseline_coverage(defn.table)
        if any(spec.kind is CheckerKind.COVERAGE for spec in chain)
        else None
    )
    todo = list(mutants) if mutants is not None else list(generate_mutants(defn))
    started = time.perf_counter()
    outcomes: list[MutantOutcome | None] = [None] * len(todo)
    killed = 0

    def record(position: int, outcome: MutantOutcome, done: int) -> None:
        nonlocal killed
        outcomes[position] = outcome
        killed += outcome.killed
        if progress is not None:
            elapsed = time.perf_counter() - started
            progress(MutantProgress(done, len(todo), killed, elapsed, outcome))

    if workers <= 1 or len(todo) <= 1:
        for position, mutant in enumerate(todo):
            record(position, check_mutant(defn, mutant, chain, baseline), position + 1)
    else:
        context = multiprocessing.get_context("fork")
        with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
            futures: dict[Future[MutantOutcome], int] = {
                pool.submit(check_mutant, defn, mutant, chain, baseline): position
                for position, mutant in enumerate(todo)
            }
            for done, future in enumerate(as_completed(futures), start=1):
                record(futures[future], future.result(), done)
    final = tuple(outcome for outcome in outcomes if outcome is not None)
    return MutationReport(final, time.perf_counter() - started)
