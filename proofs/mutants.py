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
import random
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from enum import Enum, unique
from typing import Final

from sagemem.spec.model import (
    LEAVE,
    QUICK_BOUNDS,
    SITE_KEY,
    Bounds,
    ProtocolDefinition,
    State,
    consulted_refusals,
    consults_no_row,
    definitions,
    describe,
    offer_transitions,
    offers,
    quick,
    transitions,
)
from sagemem.spec.table import Refusal, RefusalKind, RowKey, Rule
from sagemem.spec.vocabulary import (
    EVENT_SITE,
    STABLE_STATES,
    Effect,
    Event,
    EventKind,
    Guard,
    L1State,
    Mode,
    Site,
)

from .report import CheckReport
from .scenarios import check_scenarios

__all__ = [
    "CheckerKind",
    "CheckerSpec",
    "Mutant",
    "MutantOutcome",
    "MutantProgress",
    "MutationKind",
    "MutationReport",
    "StateSpaceComparison",
    "SurvivorRun",
    "SurvivorVerdict",
    "baseline_coverage",
    "changed_keys",
    "check_mutant",
    "compare_state_spaces",
    "confirm_survivors",
    "default_checkers",
    "equivalence_checkers",
    "generate_extended_mutants",
    "generate_mutants",
    "mutate",
    "mutate_definition",
    "mutate_refusals",
    "run_mutants",
    "screen_mutants",
    "select_mutants",
    "survivor_table",
]


@unique
class MutationKind(Enum):
    """How a single row is changed."""

    WRONG_TARGET = "wrong_target"
    DROPPED_EFFECT = "dropped_effect"
    DROPPED_ROW = "dropped_row"
    WEAKENED_GUARD = "weakened_guard"
    # the extended generator (`generate_extended_mutants`)
    SUBSTITUTED_EFFECT = "substituted_effect"
    SWAPPED_EFFECTS = "swapped_effects"
    REFUSAL_KIND = "refusal_kind"
    DROPPED_REFUSAL = "dropped_refusal"
    PAIR = "pair"


# Effects that a person could plausibly write in place of each other (one group each); an
# effect is only ever substituted by another of its group.
SUBSTITUTES: tuple[frozenset[Effect], ...] = (
    frozenset({Effect.RETURN_VALUE, Effect.RETURN_VALUE_UNCACHED}),
    frozenset({Effect.PUBLISH_INVALIDATIONS, Effect.PUBLISH_INVALIDATIONS_AWAIT_ACKS}),
    frozenset({Effect.L2_LEASED_FILL, Effect.L2_FILL_IF_NEWER}),
    frozenset({Effect.L2_DELETE, Effect.L2_EVICT_COPY, Effect.L2_SET_IF_NEWER}),
    frozenset(
        {Effect.HOME_STORE_AND_RELEASE, Effect.HOME_STORE_KEEP_GRANT, Effect.HOME_STORE_UNFENCED}
    ),
    frozenset({Effect.HOME_COMMIT_VERSION, Effect.HOME_COMMIT_KEEP_VERSION}),
    frozenset(
        {
            Effect.REQUEST_FILL,
            Effect.REQUEST_COMMIT,
            Effect.REQUEST_OWNERSHIP,
            Effect.REQUEST_WRITE_BACK,
            Effect.REQUEST_FLUSH,
        }
    ),
    frozenset({Effect.DIRECTORY_ADD_HOLDER, Effect.DIRECTORY_REMOVE_HOLDER}),
    frozenset({Effect.DROP_COPY, Effect.NOTE_INVALIDATION}),
    frozenset({Effect.REPORT_FENCED, Effect.REPORT_CONFLICT}),
    frozenset({Effect.AWAIT_INVALIDATIONS, Effect.AWAIT_OWNER}),
    frozenset({Effect.L2_READ, Effect.HOME_READ}),
    frozenset({Effect.L2_TAKE_LEASE, Effect.L2_ABANDON_LEASE}),
    frozenset({Effect.DISCARD_MESSAGE, Effect.DISCARD_ALL_MESSAGES}),
)


@dataclass(frozen=True, slots=True)
class Mutant:
    """One change of a table: which row (its index in the original table) and how.

    `detail` is the new target's name (WRONG_TARGET), the dropped effect's position
    (DROPPED_EFFECT), "position:EFFECT" (SUBSTITUTED_EFFECT), the first of the two swapped
    positions (SWAPPED_EFFECTS), the new kind's name (REFUSAL_KIND), or empty. Refusal mutants
    name the refusal by `refusal_index` (its index in the original refusals; `row_index` is -1
    and `rule` None); a PAIR holds its two single-row mutants in `parts`.
    """

    kind: MutationKind
    row_index: int
    rule: Rule | None
    detail: str = ""
    refusal_index: int = -1
    refusal: Refusal | None = None
    parts: tuple[Mutant, ...] = ()

    @property
    def name(self) -> str:
        """A stable, readable id such as `row12:wrong_target=I` or
        `refusal3:refusal_kind=STALLED` (a pair joins its two names with `+`)."""
        suffix = f"={self.detail}" if self.detail else ""
        if self.kind is MutationKind.PAIR:
            return "+".join(part.name for part in self.parts)
        if self.refusal is not None:
            return f"refusal{self.refusal_index}:{self.kind.value}{suffix}"
        return f"row{self.row_index}:{self.kind.value}{suffix}"

    def describe(self) -> str:
        """The original row (or refusal) and the change, for reports."""
        if self.kind is MutationKind.PAIR:
            return " AND ".join(part.describe() for part in self.parts)
        if self.refusal is not None:
            f = self.refusal
            guard = "any" if f.guard is None else f.guard.name
            what = f"({f.source.name}, {f.event.name}, {guard}) {f.kind.name}"
            modes = ",".join(sorted(mode.value for mode in f.modes))
            change = (
                "refusal dropped"
                if self.kind is MutationKind.DROPPED_REFUSAL
                else f"kind {f.kind.name} -> {self.detail}"
            )
            return f"refusal {self.refusal_index} ({modes}) {what}: {change}"
        assert self.rule is not None
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
            case MutationKind.SUBSTITUTED_EFFECT:
                position, effect = self.detail.split(":")
                change = f"effect {self.rule.effects[int(position)].name} -> {effect}"
            case MutationKind.SWAPPED_EFFECTS:
                first = int(self.detail)
                effects = self.rule.effects
                change = f"effects {effects[first].name} and {effects[first + 1].name} swapped"
            case _:  # pragma: no cover  # refusal and pair kinds are described above
                change = self.kind.value
        modes = ",".join(sorted(mode.value for mode in self.rule.modes))
        return f"row {self.row_index} ({modes}) {row}: {change}"

    @property
    def modes(self) -> tuple[Mode, ...]:
        """The modes whose checks see this change (coherent first)."""
        if self.parts:
            wanted = frozenset(mode for part in self.parts for mode in part.modes)
        elif self.refusal is not None:
            wanted = self.refusal.modes
        else:
            assert self.rule is not None
            wanted = self.rule.modes
        return tuple(mode for mode in Mode if mode in wanted)


def mutate(table: Sequence[Rule], mutant: Mutant) -> tuple[Rule, ...]:
    """`table` with `mutant`'s change applied (the other rows are the same objects).

    Refusal mutants leave the table as it is (see `mutate_definition`)."""
    if mutant.kind is MutationKind.PAIR:
        for part in mutant.parts:
            table = mutate(table, part)
        return tuple(table)
    if mutant.refusal is not None:
        return tuple(table)
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
        case MutationKind.SUBSTITUTED_EFFECT:
            text, name = mutant.detail.split(":")
            position = int(text)
            effects = (*rule.effects[:position], Effect[name], *rule.effects[position + 1 :])
            rows[mutant.row_index] = dataclasses.replace(rule, effects=effects)
        case MutationKind.SWAPPED_EFFECTS:
            first = int(mutant.detail)
            swapped = list(rule.effects)
            swapped[first], swapped[first + 1] = swapped[first + 1], swapped[first]
            rows[mutant.row_index] = dataclasses.replace(rule, effects=tuple(swapped))
        case _:  # pragma: no cover  # refusal and pair mutants are handled above
            raise ValueError(f"mutant {mutant.name} does not change a row")
    return tuple(rows)


def mutate_refusals(refusals: Sequence[Refusal], mutant: Mutant) -> tuple[Refusal, ...]:
    """`refusals` with `mutant`'s change applied (unchanged for row mutants)."""
    if mutant.kind is MutationKind.PAIR:
        for part in mutant.parts:
            refusals = mutate_refusals(refusals, part)
        return tuple(refusals)
    if mutant.refusal is None:
        return tuple(refusals)
    kept = list(refusals)
    if kept[mutant.refusal_index] != mutant.refusal:
        raise ValueError(
            f"mutant {mutant.name} was generated for {mutant.refusal!r}, but refusal "
            f"{mutant.refusal_index} is {kept[mutant.refusal_index]!r}"
        )
    if mutant.kind is MutationKind.DROPPED_REFUSAL:
        del kept[mutant.refusal_index]
    else:
        kept[mutant.refusal_index] = dataclasses.replace(
            mutant.refusal, kind=RefusalKind[mutant.detail]
        )
    return tuple(kept)


def mutate_definition(defn: ProtocolDefinition, mutant: Mutant) -> ProtocolDefinition:
    """`defn` with `mutant` applied to its table and refusals."""
    return dataclasses.replace(
        defn, table=mutate(defn.table, mutant), refusals=mutate_refusals(defn.refusals, mutant)
    )


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


def _row_extensions(defn: ProtocolDefinition) -> Iterator[Mutant]:
    """Effect substitutions (within `SUBSTITUTES`) and swaps of adjacent effects."""
    for index, rule in enumerate(defn.table):
        for position, effect in enumerate(rule.effects):
            for group in SUBSTITUTES:
                if effect in group:
                    for other in sorted(group - {effect}, key=lambda e: e.name):
                        detail = f"{position}:{other.name}"
                        yield Mutant(MutationKind.SUBSTITUTED_EFFECT, index, rule, detail)
        for position in range(len(rule.effects) - 1):
            if rule.effects[position] is not rule.effects[position + 1]:
                yield Mutant(MutationKind.SWAPPED_EFFECTS, index, rule, str(position))


def _refusal_mutants(defn: ProtocolDefinition) -> Iterator[Mutant]:
    """Every refusal changed to each other kind, and every refusal dropped."""
    for index, refusal in enumerate(defn.refusals):
        for kind in RefusalKind:
            if kind is not refusal.kind:
                yield Mutant(MutationKind.REFUSAL_KIND, -1, None, kind.name, index, refusal)
        yield Mutant(MutationKind.DROPPED_REFUSAL, -1, None, "", index, refusal)


_PAIRABLE: frozenset[MutationKind] = frozenset(
    {
        MutationKind.WRONG_TARGET,
        MutationKind.DROPPED_EFFECT,
        MutationKind.WEAKENED_GUARD,
        MutationKind.SUBSTITUTED_EFFECT,
        MutationKind.SWAPPED_EFFECTS,
    }
)


_UNPAIRED_EVENTS: Final = frozenset(
    {Event.DELIVER_UPDATE, Event.OUTBOX_RELAY_UPDATE, Event.OUTBOX_RELAY_STORE}
)


def _pairs(singles: Sequence[Mutant], count: int, seed: int) -> Iterator[Mutant]:
    """`count` pairs of row mutants on two different rows that share a mode, sampled with a
    fixed seed (dropped rows are not paired: they renumber the rows)."""
    rng = random.Random(seed)
    # The write-update rows (appended to the table later) are mutated one at a time and not
    # paired, so that the sample of pairs, and the names of its survivors, stay as they were.
    pool = [
        m
        for m in singles
        if m.kind in _PAIRABLE and m.rule is not None and m.rule.event not in _UNPAIRED_EVENTS
    ]
    seen: set[tuple[str, str]] = set()
    attempts = 0
    made = 0
    while made < count and attempts < 100 * max(count, 1) and len(pool) > 1:
        attempts += 1
        first, second = rng.sample(pool, 2)
        if first.row_index == second.row_index or not set(first.modes) & set(second.modes):
            continue
        if first.row_index > second.row_index:
            first, second = second, first
        key = (first.name, second.name)
        if key in seen:
            continue
        seen.add(key)
        made += 1
        yield Mutant(MutationKind.PAIR, first.row_index, first.rule, parts=(first, second))


def generate_extended_mutants(
    defn: ProtocolDefinition, *, pairs: int = 150, seed: int = 13
) -> Iterator[Mutant]:
    """The extended generator: every single-row mutant, every effect substitution and swap of
    adjacent effects, every refusal mutant (each other kind, dropped), and `pairs` sampled
    pairs of row mutants."""
    singles = [*generate_mutants(defn), *_row_extensions(defn)]
    yield from singles
    yield from _refusal_mutants(defn)
    yield from _pairs(singles, pairs, seed)


def select_mutants(defn: ProtocolDefinition, names: Iterable[str]) -> list[Mutant]:
    """The mutants of `defn` (extended generator) with these names (as `Mutant.name` prints
    them), in the order given; an unknown name is a ValueError naming it."""
    by_name = {mutant.name: mutant for mutant in generate_extended_mutants(defn)}
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
    leaves: bool = False  # EXPLORE: agents may also leave (close) for good
    l2_rollback: bool = True  # EXPLORE: L2 may go back to an older snapshot (a fault)

    @property
    def name(self) -> str:
        """Short name for reports, e.g. `explore(2 agents, 1 write, 1 fault)`."""
        match self.kind:
            case CheckerKind.TABLE:
                return "z3 table checks"
            case CheckerKind.EXPLORE:
                leaving = ", agents leave" if self.leaves else ""
                rollback = "" if self.l2_rollback else ", no L2 rollback"
                return (
                    f"explore({_count(self.agents, 'agent')}, {_count(self.writes, 'write')}, "
                    f"fault budget {self.fault_budget}{leaving}{rollback})"
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
        # two faults: no L2 rollback (see `equivalence_checkers`)
        CheckerSpec(CheckerKind.EXPLORE, agents=2, writes=1, fault_budget=2, l2_rollback=False),
        CheckerSpec(CheckerKind.COVERAGE),
        CheckerSpec(CheckerKind.SCENARIOS),
        CheckerSpec(CheckerKind.EXPLORE, agents=2, writes=1, fault_budget=1, leaves=True),
    )


def equivalence_checkers() -> tuple[CheckerSpec, ...]:
    """The larger bounds a survivor must also survive before it is called equivalent: 2
    agents, 2 writes, 2 faults and 3 agents, 2 writes, 1 fault (minutes per mode each).

    The 2-fault bound runs without the L2 rollback: with two faults the real table fails there
    in strict mode (a crash, then a rollback: the crashed holder's new fill hits the restored
    copy, skips FETCH_UNSETTLED and renews the read lease its owed ack expires with, so only a
    LEASE_LAPSE, a third fault, frees the writer; production's owed ack keeps its own
    deadline), so every mutant would die there for the model's sake."""
    return (
        CheckerSpec(CheckerKind.EXPLORE, agents=2, writes=2, fault_budget=2, l2_rollback=False),
        CheckerSpec(CheckerKind.EXPLORE, agents=3, writes=2, fault_budget=1),
    )


type Coverage = dict[Mode, frozenset[int]]
_COVERAGE_NAME = "row coverage at the quick bounds"


def baseline_coverage(table: tuple[Rule, ...]) -> Coverage:
    """For each mode, the indices of the rows of `table` that fire at the quick bounds."""
    from .explore import explore

    coverage: Coverage = {}
    for mode in Mode:
        fired: set[int] = set()
        for defn in quick(mode, table=table):
            explore(defn, fired_rows=fired)
        coverage[mode] = frozenset(fired)
    return coverage


def screen_mutants(
    defn: ProtocolDefinition,
    mutants: Sequence[Mutant],
    bounds: tuple[Bounds, ...] = QUICK_BOUNDS,
) -> dict[str, str]:
    """Mutants that are equivalent by construction at the quick bounds, with the reason: a
    refusal mutant whose refusal decides no event in any reachable state of its modes (the
    reachable state space is unchanged), and a swap of two effects that commute in every
    reachable state where the row fires (same successors, so the same state space). Explores
    `bounds` (the quick bounds) in both modes once; returns {mutant name: reason}."""
    from .explore import explore

    refusal_index = {id(f): i for i, f in enumerate(defn.refusals)}
    row_index = {id(r): i for i, r in enumerate(defn.table)}
    swaps = [m for m in mutants if m.kind is MutationKind.SWAPPED_EFFECTS]
    consulted: dict[Mode, set[int]] = {mode: set() for mode in Mode}
    differs: set[str] = set()
    fired_swaps: set[str] = set()
    for mode in Mode:
        for plain in definitions(mode, bounds, table=defn.table):
            bounded = dataclasses.replace(plain, refusals=defn.refusals)
            # one definition per swap and bound, built once (the interpreter caches its index
            # by definition)
            swapped = {
                m.name: dataclasses.replace(
                    mutate_definition(bounded, m),
                    agents=bounded.agents,
                    writes=bounded.writes,
                    fault_budget=bounded.fault_budget,
                )
                for m in swaps
                if m.rule is not None and mode in m.rule.modes
            }
            by_row: dict[int, list[Mutant]] = {}
            for m in swaps:
                if m.name in swapped:
                    by_row.setdefault(m.row_index, []).append(m)

            def visit(
                state: State,
                mode: Mode = mode,
                bounded: ProtocolDefinition = bounded,
                by_row: dict[int, list[Mutant]] = by_row,
                swapped: dict[str, ProtocolDefinition] = swapped,
            ) -> None:
                for f in consulted_refusals(bounded, state):
                    consulted[mode].add(refusal_index[id(f)])
                if not by_row:
                    return
                for step in transitions(bounded, state):
                    if step.rule is None or row_index.get(id(step.rule)) not in by_row:
                        continue
                    for m in by_row[row_index[id(step.rule)]]:
                        if m.name in differs:
                            continue
                        fired_swaps.add(m.name)
                        targets = {
                            t.target
                            for t in transitions(swapped[m.name], state)
                            if t.event is step.event
                            and t.agent == step.agent
                            and t.payload == step.payload
                        }
                        if targets != {step.target}:
                            differs.add(m.name)

            explore(bounded, on_state=visit)
    reasons: dict[str, str] = {}
    for m in mutants:
        if m.refusal is not None and m.kind is not MutationKind.PAIR:
            if _same_meaning(m):
                reasons[m.name] = (
                    "equivalent by construction: STALLED and NOT_APPLICABLE mean the same here "
                    "(no step: a queued user operation, a timer, a request's answer)"
                )
            elif not any(m.refusal_index in consulted[mode] for mode in m.modes):
                reasons[m.name] = (
                    "equivalent by construction: the refusal decides no event in any reachable "
                    "state at the quick bounds"
                )
        elif m.kind is MutationKind.SWAPPED_EFFECTS and m.name not in differs:
            reasons[m.name] = (
                "equivalent by construction: the two effects commute in every reachable state "
                "where the row fires at the quick bounds"
                if m.name in fired_swaps
                else "equivalent by construction: the row fires in no reachable state at the "
                "quick bounds"
            )
    return reasons


_DISTINCT_KINDS = frozenset({RefusalKind.STALLED, RefusalKind.NOT_APPLICABLE})


def _same_meaning(mutant: Mutant) -> bool:
    """A STALLED <-> NOT_APPLICABLE change where the interpreter (and the adapter) give both
    kinds the same meaning: anything but a message delivery and a read or write asked of a
    stable entry (see `sagemem.spec.model._not_applicable`)."""
    refusal = mutant.refusal
    if refusal is None or mutant.kind is not MutationKind.REFUSAL_KIND:
        return False
    if {refusal.kind, RefusalKind[mutant.detail]} != _DISTINCT_KINDS:
        return False
    if refusal.event in (Event.DELIVER_INVALIDATE, Event.DELIVER_RECALL):
        return False
    user = refusal.event in (Event.READ, Event.WRITE_L1, Event.WRITE_THROUGH)
    return not (user and refusal.source in STABLE_STATES)


def _run_one(spec: CheckerSpec, defn: ProtocolDefinition, fired: set[int]) -> CheckReport | None:
    """One checker on `defn`; None when it has nothing to say (COVERAGE is done by the caller)."""
    match spec.kind:
        case CheckerKind.TABLE:
            from .z3_check import check_table

            return check_table(defn)
        case CheckerKind.EXPLORE:
            from .explore import explore

            bounded = dataclasses.replace(
                defn,
                agents=spec.agents,
                writes=spec.writes,
                fault_budget=spec.fault_budget,
                leaves=spec.leaves,
                l2_rollback=spec.l2_rollback,
            )
            return explore(bounded)
        case CheckerKind.QUICK:
            from .explore import explore

            report: CheckReport | None = None
            for bounded in quick(defn.mode, table=defn.table):
                report = explore(bounded, fired_rows=fired)
                if not report.ok:
                    return report
            return report
        case CheckerKind.BMC:
            from .z3_check import bounded_model_check

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
    invalid: str = ""  # the model cannot interpret this mutant (neither killed nor survived)
    equivalent: str = ""  # screened out as equivalent by construction (see `screen_mutants`)


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
        """The mutants no checker caught (invalid ones excluded)."""
        return tuple(
            o for o in self.outcomes if not o.killed and not o.invalid and not o.equivalent
        )

    @property
    def screened(self) -> tuple[MutantOutcome, ...]:
        """The mutants shown equivalent by construction without running the chain."""
        return tuple(o for o in self.outcomes if o.equivalent)

    @property
    def invalid(self) -> tuple[MutantOutcome, ...]:
        """The mutants the interpreter cannot run (reported apart, not in the kill rate)."""
        return tuple(o for o in self.outcomes if o.invalid)

    @property
    def coverage_kills(self) -> int:
        """Mutants killed only because a row became dead (no property was violated)."""
        return sum(o.killed and o.killer == _COVERAGE_NAME for o in self.outcomes)

    @property
    def property_kills(self) -> int:
        """Mutants killed by a violated property (an invariant, progress, a scenario's end)."""
        return self.killed - self.coverage_kills

    @property
    def kill_rate(self) -> float:
        """killed / (total - invalid - screened equivalent) (1.0 for no mutants)."""
        valid = self.total - len(self.invalid) - len(self.screened)
        return self.killed / valid if valid else 1.0

    @property
    def property_kill_rate(self) -> float:
        """property kills / (total - invalid - screened equivalent)."""
        valid = self.total - len(self.invalid) - len(self.screened)
        return self.property_kills / valid if valid else 1.0

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
    changed = mutate_definition(defn, mutant)
    fired: dict[Mode, set[int]] = {mode: set() for mode in mutant.modes}
    mutated_rows = {part.row_index for part in mutant.parts} | {mutant.row_index}

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
                dead = sorted(baseline[mode] - now - mutated_rows)
                if dead:
                    rows = "; ".join(_row_text(defn.table[i]) for i in dead[:3])
                    return killed(spec, mode, f"{len(dead)} rows became dead: {rows}")
                continue
            mutated = dataclasses.replace(changed, mode=mode, name=mutant.name)
            try:
                report = _run_one(spec, mutated, fired[mode])
            except (AssertionError, IndexError, KeyError, TypeError, ValueError) as error:
                # the interpreter cannot run this combination (an effect without its subject,
                # a field it never has): not a kill, reported apart as invalid
                return MutantOutcome(
                    mutant,
                    killed=False,
                    invalid=f"{spec.name} in {mode.value}: {type(error).__name__}: {error}",
                    seconds=time.perf_counter() - started,
                )
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
    screen: bool = True,
) -> MutationReport:
    """Check every mutant of `defn.table` (or the given `mutants`) and report the outcomes.

    Without `mutants`, the extended generator's mutants are screened first (`screen_mutants`):
    those equivalent by construction are reported as such, not run.

    `defn.mode` is ignored: each mutant is checked in the modes of its row. With `workers > 1`
    the mutants are spread over that many processes; outcomes keep the mutants' order.
    """
    chain = tuple(checkers) if checkers is not None else default_checkers()
    baseline = (
        baseline_coverage(defn.table)
        if any(spec.kind is CheckerKind.COVERAGE for spec in chain)
        else None
    )
    todo = list(mutants) if mutants is not None else list(generate_extended_mutants(defn))
    started = time.perf_counter()
    outcomes: list[MutantOutcome | None] = [None] * len(todo)
    killed = 0
    # screening explores the quick bounds once: worth it for the whole generated set only
    reasons = screen_mutants(defn, todo) if screen and mutants is None else {}
    for position, mutant in enumerate(todo):
        if mutant.name in reasons:
            outcomes[position] = MutantOutcome(
                mutant, killed=False, equivalent=reasons[mutant.name]
            )
    pending = [(p, m) for p, m in enumerate(todo) if outcomes[p] is None]

    def record(position: int, outcome: MutantOutcome, done: int) -> None:
        nonlocal killed
        outcomes[position] = outcome
        killed += outcome.killed
        if progress is not None:
            elapsed = time.perf_counter() - started
            progress(MutantProgress(done, len(todo), killed, elapsed, outcome))

    if workers <= 1 or len(pending) <= 1:
        for done, (position, mutant) in enumerate(pending, start=1):
            record(position, check_mutant(defn, mutant, chain, baseline), done)
    else:
        context = multiprocessing.get_context("fork")
        with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
            futures: dict[Future[MutantOutcome], int] = {
                pool.submit(check_mutant, defn, mutant, chain, baseline): position
                for position, mutant in pending
            }
            for done, future in enumerate(as_completed(futures), start=1):
                record(futures[future], future.result(), done)
    final = tuple(outcome for outcome in outcomes if outcome is not None)
    return MutationReport(final, time.perf_counter() - started)


# ----------------------------------------------------------------------------------------------
# equivalence at the larger bounds


def changed_keys(mutant: Mutant) -> frozenset[tuple[RowKey, Event]]:
    """The (row key, event) pairs whose rows or refusals `mutant` changes: the interpreter
    consults a (key, event)'s rows and refusals only for an offer of that event at that key,
    so every other offer has the same steps in the mutant as in the original."""
    if mutant.parts:
        return frozenset(key for part in mutant.parts for key in changed_keys(part))
    if mutant.refusal is not None:
        return frozenset({(mutant.refusal.source, mutant.refusal.event)})
    assert mutant.rule is not None
    return frozenset({(mutant.rule.source, mutant.rule.event)})


@dataclass(frozen=True, slots=True)
class StateSpaceComparison:
    """The outcome of `compare_state_spaces` for one bound and mode.

    `differs` maps each mutant whose steps differ from the original's in some reachable state
    of the original to that state (rendered); the others have the original's reachable state
    space exactly. `report` is the original's exploration (it must pass)."""

    mode: Mode
    bounds: CheckerSpec
    report: CheckReport
    equal: tuple[str, ...]
    differs: dict[str, str]
    seconds: float


def compare_state_spaces(
    defn: ProtocolDefinition,
    mutants: Sequence[Mutant],
    spec: CheckerSpec,
    mode: Mode,
    *,
    progress: Callable[[int, int, int], None] | None = None,
) -> StateSpaceComparison:
    """Which of `mutants` (those of `mode`) have exactly the reachable state space of
    `defn`'s table at `spec`'s bounds: one exploration of the original, where every offer
    whose rows a mutant changes (`changed_keys`) is stepped again with the mutant's table
    and compared (event, subject, payload, kind and target state). A mutant whose steps agree
    in every reachable state reaches exactly the same states by the same edges (induction on
    the breadth-first search), so every property the explorer checks, invariants, quiescence,
    prompt progress and acyclicity included, has the same verdict: it is equivalent at these
    bounds. A mutant that differs somewhere needs its own exploration."""
    from .explore import explore

    started = time.perf_counter()
    original = dataclasses.replace(
        defn,
        mode=mode,
        agents=spec.agents,
        writes=spec.writes,
        fault_budget=spec.fault_budget,
        leaves=spec.leaves,
        l2_rollback=spec.l2_rollback,
    )
    chosen = [m for m in mutants if mode in m.modes]
    changed = {m.name: mutate_definition(original, m) for m in chosen}
    by_key: dict[tuple[RowKey, Event], list[str]] = {}
    for m in chosen:
        for key in changed_keys(m):
            by_key.setdefault(key, []).append(m.name)
    differs: dict[str, str] = {}

    def steps(
        d: ProtocolDefinition, state: State, event: Event, agent: int | None, payload: int
    ) -> frozenset[tuple[Event, int | None, int, EventKind, State]]:
        return frozenset(
            (t.event, t.agent, t.payload, t.kind, t.target)
            for t in offer_transitions(d, state, event, agent, payload)
        )

    def visit(state: State) -> None:
        for event, agent, payload in offers(original, state):
            if agent is not None and payload == LEAVE and event is Event.EVICT:
                names = by_key.get((L1State.S, Event.EVICT), [])  # LEAVE runs (S, EVICT)
            elif consults_no_row(event, payload):
                continue  # an environment step: no row is consulted
            else:
                site = EVENT_SITE[event]
                key: RowKey = (
                    state.agents[agent].st
                    if site is Site.AGENT and agent is not None
                    else SITE_KEY[site]
                )
                names = by_key.get((key, event), [])
            pending = [name for name in names if name not in differs]
            if not pending:
                continue
            expected = steps(original, state, event, agent, payload)
            for name in pending:
                if steps(changed[name], state, event, agent, payload) != expected:
                    differs[name] = describe(state)

    report = explore(original, on_state=visit, progress=progress)
    equal = tuple(m.name for m in chosen if m.name not in differs)
    return StateSpaceComparison(mode, spec, report, equal, differs, time.perf_counter() - started)


@dataclass(frozen=True, slots=True)
class SurvivorVerdict:
    """What the larger bounds say of one survivor: killed (by `killer`, with the property
    and the trace length in `violation`) or confirmed, with how at each bound (`how`: "equal
    state space" or "survived exploration", one entry per bound and mode)."""

    mutant: Mutant
    killed: bool
    killer: str = ""
    mode: Mode | None = None
    violation: str = ""
    how: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class SurvivorRun:
    """One survivor at one bound and mode (passed to `confirm_survivors`' `on_run`): its
    outcome is "equal state space", "survived exploration" or "killed" (then `violation`
    names the property and the trace length); states, edges and seconds of its differential
    exploration."""

    name: str
    bounds: str
    mode: Mode
    outcome: str
    states: int
    edges: int
    seconds: float
    violation: str = ""


def confirm_survivors(
    defn: ProtocolDefinition,
    survivors: Sequence[Mutant],
    *,
    bounds: Sequence[CheckerSpec] | None = None,
    progress: Callable[[str], None] | None = None,
    on_run: Callable[[SurvivorRun], None] | None = None,
    modes: Sequence[Mode] = tuple(Mode),
    previous: Sequence[SurvivorRun] = (),
) -> tuple[SurvivorVerdict, ...]:
    """Each survivor at the larger bounds (`equivalence_checkers()`), bound by bound and mode
    by mode: the real table is explored once there and its graph kept (`RealGraph`); each
    survivor of the mode is then explored differentially against it
    (`proofs.explore.explore_differential`: only the offers it changes, `changed_keys`, are
    stepped again, and the states the real table never reached). A survivor whose re-stepped
    offers all agree with the real steps has exactly the real table's reachable state space
    and edges there ("equal state space"); any other is checked for every property on its own
    graph, and killed by the first property it breaks, or survives. A survivor killed at one
    bound is not run at the next. `on_run` sees every (survivor, bound, mode) as it is done;
    `modes` chooses the modes and their order (both, coherent first, by default). `previous`
    holds runs already done (e.g. read back from a log): those are taken as they are, not run
    again, and a bound and mode left with nothing to run is not explored at all."""
    from .explore import RealGraph, explore_differential

    chosen = tuple(bounds) if bounds is not None else equivalence_checkers()
    alive = list(survivors)
    how: dict[str, list[str]] = {m.name: [] for m in alive}
    verdicts: dict[str, SurvivorVerdict] = {}
    recorded = {(run.name, run.bounds, run.mode): run for run in previous}
    for spec in chosen:
        for mode in modes:
            todo = []
            for m in alive:
                if mode not in m.modes or m.name in verdicts:
                    continue
                done = recorded.get((m.name, spec.name, mode))
                if done is None:
                    todo.append(m)
                elif done.outcome == "killed":
                    verdicts[m.name] = SurvivorVerdict(m, True, spec.name, mode, done.violation)
                else:
                    how[m.name].append(f"{done.outcome} at {spec.name} in {mode.value}")
            if not todo:
                continue
            original = _bounded(defn, spec, mode)
            if progress is not None:
                progress(f"exploring the real table at {spec.name} in {mode.value}")
            base = RealGraph.explore(original)
            for m in todo:
                if progress is not None:
                    progress(f"exploring {m.name} at {spec.name} in {mode.value}")
                mutated = dataclasses.replace(mutate_definition(original, m), name=m.name)
                report = explore_differential(base, mutated, changed_keys(m))
                states, edges = int(report.summary["states"]), int(report.summary["edges"])
                seconds = float(report.summary["seconds"])
                if not report.ok and report.counterexample is not None:
                    text = _violation_text(report)
                    verdicts[m.name] = SurvivorVerdict(m, True, spec.name, mode, text)
                    run = SurvivorRun(
                        m.name, spec.name, mode, "killed", states, edges, seconds, text
                    )
                elif report.ok:
                    outcome = (
                        "equal state space"
                        if report.summary.get("equal_state_space") == "yes"
                        else "survived exploration"
                    )
                    how[m.name].append(f"{outcome} at {spec.name} in {mode.value}")
                    run = SurvivorRun(m.name, spec.name, mode, outcome, states, edges, seconds)
                else:  # pragma: no cover  # no max_states: an exploration is never cut short
                    raise AssertionError(f"{m.name}: {report.summary}")
                if on_run is not None:
                    on_run(run)
            del base
        alive = [m for m in alive if m.name not in verdicts]
    return tuple(
        verdicts.get(m.name) or SurvivorVerdict(m, False, how=tuple(how[m.name])) for m in survivors
    )


def _bounded(defn: ProtocolDefinition, spec: CheckerSpec, mode: Mode) -> ProtocolDefinition:
    """`defn` at `spec`'s bounds (an EXPLORE spec) in `mode`."""
    return dataclasses.replace(
        defn,
        mode=mode,
        agents=spec.agents,
        writes=spec.writes,
        fault_budget=spec.fault_budget,
        leaves=spec.leaves,
        l2_rollback=spec.l2_rollback,
    )


def survivor_table(
    survivors: Sequence[Mutant],
    runs: Sequence[SurvivorRun],
    bounds: Sequence[CheckerSpec] | None = None,
) -> tuple[dict[str, int], list[str]]:
    """The survivors' runs (`confirm_survivors`' `on_run`, or a `--survivors-log` read back)
    as Markdown table rows, one per survivor and a column per bound, with the counts: "equal"
    (equal state spaces at every bound and mode of its own), "survived" (every bound done,
    some by its own exploration), "killed" and "not done" (some bound and mode not run)."""
    chosen = tuple(bounds) if bounds is not None else equivalence_checkers()
    by_key = {(run.name, run.bounds, run.mode): run for run in runs}
    counts = {"equal": 0, "survived": 0, "killed": 0, "not done": 0}
    rows = []
    for m in survivors:
        cells: list[str] = []
        outcomes: list[str] = []
        for spec in chosen:
            parts = []
            for mode in m.modes:
                run = by_key.get((m.name, spec.name, mode))
                if run is None:
                    killed_before = any(o == "killed" for o in outcomes)
                    parts.append(f"{mode.value}: {'-' if killed_before else 'not done'}")
                    outcomes.append("-" if killed_before else "not done")
                    continue
                outcomes.append(run.outcome)
                if run.outcome == "equal state space":
                    parts.append(f"{mode.value}: equal state space")
                elif run.outcome == "killed":
                    parts.append(f"{mode.value}: **killed**: {run.violation}")
                else:
                    parts.append(
                        f"{mode.value}: survived its exploration ({run.states:,} states, "
                        f"{run.seconds:.0f} s)"
                    )
            cells.append("; ".join(parts))
        if "killed" in outcomes:
            counts["killed"] += 1
        elif "not done" in outcomes:
            counts["not done"] += 1
        elif all(o == "equal state space" for o in outcomes):
            counts["equal"] += 1
        else:
            counts["survived"] += 1
        rows.append(f"| `{m.name}` | " + " | ".join(cells) + " |")
    return counts, rows
