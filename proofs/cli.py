"""`sagemem check`: run the model checkers on the protocol table and print what they found.

- `sagemem check` (quick): for each mode, the exhaustive explorer at the quick bounds (3 agents
  with 1 write, and 2 agents with 2 writes; every fault event enabled, one fault step per run),
  the Z3 one-step table checks, the hostile scenarios, the project's history checkers
  (`sagemem.verify`) on model histories (`proofs.model_histories`: every answered operation's
  shortest path at 2 agents/1 write/1 fault, and 100 seeded random walks of each explored
  definition) and the catalogue of hand-written bugs (`proofs.bugs`: each must be rejected).
  No bounded model checking: at 3 agents and 1 write it covers nothing the explorer does not
  (`--bmc-depth N` runs it anyway).
- `sagemem check --deep`: the explorer at 3 agents x 2 writes and at 4 agents, the model
  histories' graph paths also at 2 agents/2 writes with 3,000 walks per explored definition,
  and bounded model checking for 3 agents to depth `DEEP_BMC_DEPTH` (20) in both modes: 39
  minutes on the 2-core machine with `--workers 2`, 33 of them strict mode's BMC (see
  `docs/coherence-protocol.md`).
- `sagemem check --mutants`: the quick checks, then the extended mutants of the table through
  the kill chain of `proofs.mutants`; prints the kill rate and every surviving mutant.
  `--only NAME,NAME` (or `--only @FILE`, one name a line) checks only those mutants.
- every run also plays the hostile scenarios of `proofs.scenarios` (situations beyond the model:
  a forged invalidation, an L2 restored from an old snapshot, an owner stalled past its lease)
  on the table in each mode.

Progress goes to stderr while a checker runs; the summary goes to stdout. The exit status is 0
when every check passed, 1 when a checker found a violation (its counterexample, an event
sequence with each step's state, is printed), 2 for a usage error or a checker that cannot
run (Z3 missing is a failure, never a silent skip).

This module only parses options, runs checkers and prints; it never changes the table.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, TextIO

from sagemem.spec.invariants import invariants_for
from sagemem.spec.model import (
    DEEP_FORGET_BOUNDS,
    Bounds,
    ProtocolDefinition,
    deep,
    definitions,
    forgetting,
    quick,
)
from sagemem.spec.table import TABLE, Rule
from sagemem.spec.vocabulary import Mode

from .report import CheckReport

if TYPE_CHECKING:
    from .mutants import MutantOutcome, MutationReport, SurvivorRun

__all__ = [
    "CheckOptions",
    "ProgressLine",
    "expected_duration",
    "main",
    "parse_options",
    "plan_labels",
    "run_checks",
]

# `sagemem.verify` on model histories (proofs.model_histories): every answered operation's
# shortest path at these bounds, plus seeded random walks of each explored definition.
HISTORY_GRAPH_QUICK = (Bounds(2, 1, 1),)
HISTORY_GRAPH_DEEP = (Bounds(2, 1, 1), Bounds(2, 2, 1))
HISTORY_WALKS_QUICK = 100
HISTORY_WALKS_DEEP = 3000
QUICK_BMC_DEPTH = 0  # the quick explorer covers 3 agents x 1 write exhaustively: no BMC
DEEP_BMC_DEPTH = 20
BMC_AGENTS = 3
BMC_WRITES = 1


class ProgressLine:
    """One throttled, self-overwriting progress line on a stream (a plain line per update
    when the stream is not a terminal, at most one every `interval_s`)."""

    def __init__(self, stream: TextIO, *, interval_s: float = 1.0) -> None:
        self._stream = stream
        self._interval_s = interval_s
        self._tty = stream.isatty()
        self._last_s = 0.0
        self._width = 0

    def show(self, text: str, *, force: bool = False) -> None:
        """Print `text` now unless the last line was printed less than `interval_s` ago."""
        now = time.monotonic()
        if not force and now - self._last_s < self._interval_s:
            return
        self._last_s = now
        if self._tty:
            padding = " " * max(0, self._width - len(text))
            self._stream.write(f"\r{text}{padding}")
            self._width = len(text)
        else:
            self._stream.write(text + "\n")
        self._stream.flush()

    def done(self, text: str) -> None:
        """Print the final line of a task and start a fresh line."""
        self.show(text, force=True)
        if self._tty:
            self._stream.write("\n")
            self._stream.flush()
        self._width = 0
        self._last_s = 0.0


@dataclass(frozen=True, slots=True)
class CheckOptions:
    """What to check, parsed from the command line."""

    modes: tuple[Mode, ...] = (Mode.COHERENT, Mode.STRICT)
    deep: bool = False
    mutants: bool = False
    agents: int | None = None
    writes: int | None = None
    fault_budget: int | None = None
    bmc_depth: int | None = None
    bmc_agents: int = BMC_AGENTS
    bmc_writes: int = BMC_WRITES
    workers: int = 2
    only: tuple[str, ...] = ()
    confirm_survivors: bool = False
    skip_chain: bool = False
    survivors_log: str | None = None

    @property
    def custom_bounds(self) -> bool:
        """Whether the explorer runs one definition with the given bounds instead of the
        spec's quick (or deep) definitions."""
        return self.agents is not None or self.writes is not None or self.fault_budget is not None

    def depth(self, mode: Mode) -> int:
        """Depth of the bounded model check in `mode`."""
        if self.bmc_depth is not None:
            return self.bmc_depth
        return DEEP_BMC_DEPTH if self.deep else QUICK_BMC_DEPTH


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sagemem check",
        description=(
            "Model-check the coherence protocol table: exhaustive exploration, Z3 one-step "
            "checks and bounded model checking, optionally mutation testing of the checkers. "
            "Without options (the quick check) it takes under a minute on 2 cores."
        ),
        epilog="exit status: 0 every check passed; 1 a checker found a violation (its shortest "
        "event sequence is printed); 2 a usage error or a checker that cannot run.",
    )
    parser.add_argument(
        "--deep",
        action="store_true",
        help=(
            "explore the deep bounds (up to 4 agents) and model-check to depth "
            f"{DEEP_BMC_DEPTH} in both modes (about 40 minutes on 2 cores with --workers 2)"
        ),
    )
    parser.add_argument(
        "--mutants",
        action="store_true",
        help="also run the extended mutants of the table (single rows, effect substitutions "
        "and swaps, refusals, sampled pairs) through the checkers",
    )
    parser.add_argument(
        "--mode",
        choices=["coherent", "strict", "both"],
        default="both",
        help="which consistency mode to check (default: both)",
    )
    parser.add_argument(
        "--agents",
        type=int,
        help="explore ONE definition with this many agents instead of the quick/deep set",
    )
    parser.add_argument(
        "--writes", type=int, help="version-creating writes of that definition (default: 2)"
    )
    parser.add_argument(
        "--fault-budget",
        type=int,
        help="fault steps one run of that definition may take (default: 1)",
    )
    parser.add_argument(
        "--bmc-depth",
        type=int,
        help=f"bounded model checking depth (default: none in the quick check; with --deep "
        f"{DEEP_BMC_DEPTH}; 0 skips it)",
    )
    parser.add_argument(
        "--bmc-agents",
        type=int,
        default=BMC_AGENTS,
        help=f"agents for bounded model checking (default: {BMC_AGENTS})",
    )
    parser.add_argument(
        "--bmc-writes",
        type=int,
        default=BMC_WRITES,
        help=f"writes for bounded model checking (default: {BMC_WRITES})",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=2,
        help="processes for --mutants and for the depths of bounded model checking (default: 2)",
    )
    parser.add_argument(
        "--confirm-survivors",
        action="store_true",
        help="with --mutants: check every survivor again at 2 agents/2 writes/2 faults and 3 "
        "agents/2 writes/1 fault before calling it equivalent: equal reachable state spaces "
        "(one exploration of the real table per bound and mode), else its own exploration, "
        "differential against the real table's graph (the modes of --mode, in its order)",
    )
    parser.add_argument(
        "--skip-chain",
        action="store_true",
        help="with --confirm-survivors and --only: take the named mutants as the chain's "
        "survivors without running the chain on them again (the chain takes about a minute "
        "per survivor)",
    )
    parser.add_argument(
        "--survivors-log",
        metavar="FILE",
        help="with --confirm-survivors: append one JSON line per survivor, bound and mode to "
        "FILE as each is done (name, bounds, mode, outcome, states, edges, seconds, violation); "
        "the runs FILE already holds are not run again (a second run resumes the first)",
    )
    parser.add_argument(
        "--only",
        help="with --mutants: check only these mutants, comma-separated names as the survivor "
        "list prints them (row65:dropped_effect=0), or @FILE with one name a line",
    )
    return parser


def _mutant_names(parser: argparse.ArgumentParser, text: str | None) -> tuple[str, ...]:
    if text is None:
        return ()
    if text.startswith("@"):
        try:
            with open(text[1:], encoding="utf-8") as listing:
                names = listing.read().split()
        except OSError as error:
            parser.error(f"--only {text}: cannot read the file ({error.strerror})")
    else:
        names = text.split(",")
    chosen = tuple(name.strip() for name in names if name.strip())
    if not chosen:
        parser.error(f"--only {text!r} names no mutant; give names such as row65:dropped_effect=0")
    return chosen


def parse_options(argv: Sequence[str]) -> CheckOptions:
    """The options of `argv`; exits with status 2 (argparse) on a usage error."""
    parser = _parser()
    args = parser.parse_args(list(argv))
    for name in ("agents", "bmc_agents"):
        value = getattr(args, name)
        if value is not None and not 1 <= value <= 6:
            parser.error(f"--{name.replace('_', '-')}={value} is out of range; use 1..6")
    for name in ("writes", "bmc_writes", "fault_budget"):
        value = getattr(args, name)
        if value is not None and not 0 <= value <= 6:
            parser.error(f"--{name.replace('_', '-')}={value} is out of range; use 0..6")
    if args.bmc_depth is not None and args.bmc_depth < 0:
        parser.error(f"--bmc-depth={args.bmc_depth} is negative; use 0 to skip it")
    if args.workers < 1:
        parser.error(f"--workers={args.workers} is out of range; use 1 or more")
    only = _mutant_names(parser, args.only)
    if only and not args.mutants:
        parser.error("--only selects mutants: use it with --mutants")
    if args.confirm_survivors and not args.mutants:
        parser.error("--confirm-survivors checks surviving mutants: use it with --mutants")
    if args.skip_chain and not (args.confirm_survivors and only):
        parser.error(
            "--skip-chain takes the --only mutants as survivors: use it with --only and "
            "--confirm-survivors"
        )
    if args.survivors_log is not None and not args.confirm_survivors:
        parser.error("--survivors-log records --confirm-survivors: use it with that option")
    modes = tuple(Mode) if args.mode == "both" else (Mode(args.mode),)
    return CheckOptions(
        modes=modes,
        deep=args.deep,
        mutants=args.mutants,
        agents=args.agents,
        writes=args.writes,
        fault_budget=args.fault_budget,
        bmc_depth=args.bmc_depth,
        bmc_agents=args.bmc_agents,
        bmc_writes=args.bmc_writes,
        workers=args.workers,
        only=only,
        confirm_survivors=args.confirm_survivors,
        skip_chain=args.skip_chain,
        survivors_log=args.survivors_log,
    )


class CheckerUnavailable(RuntimeError):
    """A checker module cannot be imported (Z3 missing, or the module not written yet)."""


def _load(module: str, name: str) -> Callable[..., CheckReport]:
    """`name` from this package's `module` (e.g. ".explore"), whichever name the package was
    imported under (`proofs` in a clone, `sagemem.proofs` from the wheel)."""
    try:
        loaded = importlib.import_module(module, __package__)
    except ImportError as error:
        raise CheckerUnavailable(
            f"cannot import {__package__}{module} ({error}); install the checkers' extra: "
            'pip install "sagemem[check]" (in a clone, `uv sync` installs it)'
        ) from error
    function: Callable[..., CheckReport] = getattr(loaded, name)
    return function


@dataclass(frozen=True, slots=True)
class _Task:
    label: str
    run: Callable[[ProgressLine], CheckReport]


def _explore_task(defn: ProtocolDefinition) -> _Task:
    explore = _load(".explore", "explore")
    label = (
        f"explore  {defn.mode.value:<8} {defn.agents} agents, {defn.writes} writes, "
        f"fault budget {defn.fault_budget}"
        + (", the directory forgets (its only fault)" if defn.directory_forgets else "")
    )

    def run(line: ProgressLine) -> CheckReport:
        started = time.monotonic()

        def progress(states: int, edges: int, depth: int) -> None:
            elapsed = max(time.monotonic() - started, 1e-9)
            line.show(
                f"{label}: {states:,} states ({states / elapsed:,.0f}/s), {edges:,} edges, "
                f"depth {depth}, {elapsed:.0f}s"
            )

        return explore(defn, progress=progress)

    return _Task(label, run)


def _table_task(defn: ProtocolDefinition) -> _Task:
    check_table = _load(".z3_check", "check_table")
    label = f"z3 table {defn.mode.value:<8} one-step totality, determinism, type invariant"

    def run(line: ProgressLine) -> CheckReport:
        line.show(f"{label}: solving", force=True)
        return check_table(defn)

    return _Task(label, run)


def _scenario_task(defn: ProtocolDefinition) -> _Task:
    check_scenarios = _load(".scenarios", "check_scenarios")
    label = f"hostile  {defn.mode.value:<8} scenarios beyond the model"

    def run(line: ProgressLine) -> CheckReport:
        line.show(f"{label}: playing", force=True)
        return check_scenarios(defn)

    return _Task(label, run)


def _bugs_task(mode: Mode) -> _Task:
    check_bugs = _load(".bugs", "check_bugs")
    label = f"bugs     {mode.value:<8} hand-written protocol bugs must be rejected"

    def run(line: ProgressLine) -> CheckReport:
        line.show(f"{label}: checking", force=True)
        return check_bugs(mode)

    return _Task(label, run)


def _histories_task(mode: Mode, table: tuple[Rule, ...], *, deep_run: bool) -> _Task:
    check_model_histories = _load(".model_histories", "check_model_histories")
    label = f"history  {mode.value:<8} sagemem.verify on model histories"
    graph_bounds = HISTORY_GRAPH_DEEP if deep_run else HISTORY_GRAPH_QUICK
    walks = HISTORY_WALKS_DEEP if deep_run else HISTORY_WALKS_QUICK
    walked = (*quick(mode, table=table), *(deep(mode, table=table) if deep_run else ()))

    def run(line: ProgressLine) -> CheckReport:
        line.show(f"{label}: judging", force=True)
        return check_model_histories(
            graph=definitions(mode, graph_bounds, table=table), walked=walked, walks=walks
        )

    return _Task(label, run)


def _bmc_task(defn: ProtocolDefinition, depth: int, workers: int) -> _Task:
    bounded_model_check = _load(".z3_check", "bounded_model_check")
    label = (
        f"z3 bmc   {defn.mode.value:<8} {defn.agents} agents, {defn.writes} writes, depth {depth}"
    )

    def run(line: ProgressLine) -> CheckReport:
        def progress(text: str) -> None:
            line.show(f"{label}: {text}", force=True)

        return bounded_model_check(defn, depth=depth, progress=progress, workers=workers)

    return _Task(label, run)


def explored_definitions(
    options: CheckOptions, mode: Mode, table: tuple[Rule, ...]
) -> tuple[ProtocolDefinition, ...]:
    """The definitions the explorer checks in `mode`: the spec's quick or deep set and the
    bounds explored with the directory forgetting (`forgetting`), or one definition with the
    bounds given on the command line."""
    if options.custom_bounds:
        base = ProtocolDefinition(mode=mode, table=table, write_update=True)
        return (
            dataclasses.replace(
                base,
                agents=base.agents if options.agents is None else options.agents,
                writes=base.writes if options.writes is None else options.writes,
                fault_budget=(
                    base.fault_budget if options.fault_budget is None else options.fault_budget
                ),
            ),
        )
    if options.deep:
        return (*deep(mode, table=table), *forgetting(mode, DEEP_FORGET_BOUNDS, table=table))
    return (*quick(mode, table=table), *forgetting(mode, table=table))


def _plan(options: CheckOptions, table: tuple[Rule, ...]) -> list[_Task]:
    tasks: list[_Task] = []
    for mode in options.modes:
        base = ProtocolDefinition(mode=mode, table=table)
        # the one-step checks cover every offer, the write-update relay and its messages too
        tasks.append(_table_task(dataclasses.replace(base, write_update=True)))
        tasks.extend(_explore_task(defn) for defn in explored_definitions(options, mode, table))
        tasks.append(_scenario_task(base))
        if not options.custom_bounds:
            tasks.append(_histories_task(mode, table, deep_run=options.deep))
        if table is TABLE and not options.custom_bounds:
            # the catalogue edits the real table; custom bounds or tables skip it
            tasks.append(_bugs_task(mode))
        if options.depth(mode) > 0:
            bmc_defn = dataclasses.replace(
                base, agents=options.bmc_agents, writes=options.bmc_writes
            )
            tasks.append(_bmc_task(bmc_defn, options.depth(mode), options.workers))
    return tasks


def plan_labels(options: CheckOptions, table: tuple[Rule, ...] = TABLE) -> tuple[str, ...]:
    """The label of every task `options` select, in running order (nothing is run)."""
    return tuple(task.label for task in _plan(options, table))


def _format_summary(report: CheckReport) -> str:
    return ", ".join(
        f"{key}={value:,}" if isinstance(value, int) else f"{key}={value}"
        for key, value in report.summary.items()
        if key != "mode"
    )


def expected_duration(options: CheckOptions) -> str:
    """How long the run `options` select takes on the 2-core machine the docs measured it on."""
    if options.custom_bounds or options.bmc_depth is not None or options.only:
        return "its duration depends on the bounds given"
    if options.mutants:
        return "expect about 40 minutes on 2 cores (a minute of quick checks, then mutants)"
    if options.deep:
        return "expect about 40 minutes on 2 cores (strict mode's BMC is most of it)"
    return "expect under a minute on 2 cores (progress on stderr)"


def run_checks(
    options: CheckOptions,
    *,
    table: tuple[Rule, ...] = TABLE,
    out: TextIO | None = None,
    err: TextIO | None = None,
) -> int:
    """Run the checks `options` select on `table`; print progress, summary, counterexample.

    Returns the exit status: 0 all passed, 1 a violation (or a surviving mutant is NOT a
    failure: survivors are listed for review), 2 a checker could not run.
    """
    out = out if out is not None else sys.stdout
    err = err if err is not None else sys.stderr
    line = ProgressLine(err)
    started = time.monotonic()
    kind = "deep" if options.deep else "quick"
    modes = ", ".join(mode.value for mode in options.modes)
    print(
        f"sagemem check ({kind}): {len(table)} rows, modes {modes}; {expected_duration(options)}",
        file=out,
        flush=True,
    )
    if options.only:
        from .mutants import select_mutants

        try:  # before the quick checks: a misspelt name must not wait for them
            select_mutants(ProtocolDefinition(table=table), options.only)
        except ValueError as error:
            print(f"sagemem check: --only: {error}", file=err)
            return 2
    try:
        tasks = _plan(options, table)
    except CheckerUnavailable as error:
        print(f"sagemem check: {error}", file=err)
        return 2
    totals = _Totals()
    for task in tasks:
        task_started = time.monotonic()
        report = task.run(line)
        totals.add(report)
        seconds = time.monotonic() - task_started
        verdict = "ok" if report.ok else "VIOLATION"
        line.done(f"{task.label}: {verdict} in {seconds:.1f}s")
        print(f"  {task.label}: {verdict} ({seconds:.1f}s) {_format_summary(report)}", file=out)
        if not report.ok:
            print(f"\n{task.label} found a violation:", file=out)
            if report.counterexample is not None:
                print(report.counterexample.render(), file=out)
            print(
                f"\nresult: FAILED after {time.monotonic() - started:.1f}s "
                "(the trace above is the shortest known event sequence)",
                file=out,
            )
            return 1
    print(totals.render(options.modes), file=out)
    if options.mutants:
        status = _run_mutation_testing(options, table, out=out, line=line)
        if status != 0:
            return status
    print(f"result: OK, every check passed in {time.monotonic() - started:.1f}s", file=out)
    return 0


@dataclass(slots=True)
class _Totals:
    """Sums over the explorer runs and the Z3 checks, for the closing summary."""

    states: int = 0
    edges: int = 0
    depth: int = 0
    explorer_runs: int = 0
    obligations: int = 0
    bmc_depth: int = 0
    bugs: int = 0

    def add(self, report: CheckReport) -> None:
        summary = report.summary

        def number(key: str) -> int:
            value = summary.get(key, 0)
            return value if isinstance(value, int) else 0

        if report.checker == "explore":
            self.explorer_runs += 1
            self.states += number("states")
            self.edges += number("edges")
            self.depth = max(self.depth, number("depth"))
        elif report.checker == "z3 table checks":
            self.obligations += sum(number(key) for key in summary if key.endswith("obligations"))
        elif report.checker == "hand-written bugs":
            self.bugs += number("bugs")
        elif report.checker.endswith("bmc"):
            self.bmc_depth = max(self.bmc_depth, number("depth"))

    def render(self, modes: Sequence[Mode]) -> str:
        invariants = ", ".join(f"{len(invariants_for(mode))} in {mode.value}" for mode in modes)
        return (
            f"summary: {self.states:,} states, {self.edges:,} edges, max depth {self.depth} "
            f"over {self.explorer_runs} explorer runs; invariants checked in every state: "
            f"{invariants}; {self.obligations:,} Z3 one-step obligations proved; "
            f"{self.bugs} hand-written bugs rejected (over the modes); bounded model checking "
            f"to depth {self.bmc_depth}"
        )


def _run_mutation_testing(
    options: CheckOptions, table: tuple[Rule, ...], *, out: TextIO, line: ProgressLine
) -> int:
    from .mutants import MutantOutcome, MutantProgress, run_mutants, select_mutants

    def progress(update: MutantProgress) -> None:
        rate = update.done / max(update.elapsed_s, 1e-9)
        line.show(
            f"mutants: {update.done}/{update.total} checked, {update.killed} killed "
            f"({rate:.1f}/s, {update.elapsed_s:.0f}s)"
        )

    defn = ProtocolDefinition(table=table)
    try:
        chosen = select_mutants(defn, options.only) if options.only else None
    except ValueError as error:
        print(f"sagemem check: --only: {error}", file=sys.stderr)
        return 2
    if options.skip_chain and chosen is not None:
        survivors: tuple[MutantOutcome, ...] = tuple(
            MutantOutcome(mutant, killed=False) for mutant in chosen
        )
        print(f"  mutants: {len(survivors)} taken as survivors (--skip-chain)", file=out)
    else:
        try:
            report = run_mutants(defn, progress=progress, mutants=chosen, workers=options.workers)
        except CheckerUnavailable as error:
            print(f"sagemem check: {error}", file=sys.stderr)
            return 2
        _print_mutation_report(report, out=out, line=line)
        survivors = report.survivors
    if survivors and options.confirm_survivors:
        survivors = _confirm(defn, survivors, options, out=out, line=line)
    if survivors:
        print(f"  {len(survivors)} surviving mutants:", file=out)
        for outcome in survivors:
            print(f"    {outcome.mutant.name}: {outcome.mutant.describe()}", file=out)
    return 0


def _print_mutation_report(report: MutationReport, *, out: TextIO, line: ProgressLine) -> None:
    line.done(f"mutants: {report.killed}/{report.total} killed in {report.seconds:.0f}s")
    print(
        f"  mutants: {report.killed}/{report.total} killed ({report.kill_rate:.1%}) "
        f"in {report.seconds:.0f}s",
        file=out,
    )
    print(
        f"    property kills: {report.property_kills} ({report.property_kill_rate:.1%}); "
        f"coverage kills (a row became dead, no property violated): {report.coverage_kills}; "
        f"invalid (the interpreter cannot run them, not counted): {len(report.invalid)}; "
        f"equivalent by construction at the quick bounds (screened, not counted): "
        f"{len(report.screened)}",
        file=out,
    )
    for checker, count in report.kills_by_checker().items():
        print(f"    first killed by {checker}: {count}", file=out)
    for outcome in report.invalid:
        print(f"    invalid {outcome.mutant.name}: {outcome.invalid}", file=out)


def _logged_runs(path: str) -> tuple[SurvivorRun, ...]:
    """The runs an earlier `--survivors-log` recorded in `path` (none if it does not exist):
    a second run with the same log resumes where the first stopped."""
    from .mutants import SurvivorRun

    try:
        with open(path, encoding="utf-8") as log:
            lines = log.read().splitlines()
    except FileNotFoundError:
        return ()
    return tuple(
        SurvivorRun(
            entry["name"],
            entry["bounds"],
            Mode(entry["mode"]),
            entry["outcome"],
            int(entry["states"]),
            int(entry["edges"]),
            float(entry["seconds"]),
            entry.get("violation", ""),
        )
        for entry in map(json.loads, filter(None, lines))
    )


def _confirm(
    defn: ProtocolDefinition,
    survivors: tuple[MutantOutcome, ...],
    options: CheckOptions,
    *,
    out: TextIO,
    line: ProgressLine,
) -> tuple[MutantOutcome, ...]:
    """The survivors at the larger bounds (`confirm_survivors`); returns those confirmed."""
    from .mutants import confirm_survivors

    def record(run: SurvivorRun) -> None:
        line.show(f"{run.name} at {run.bounds} in {run.mode.value}: {run.outcome}", force=True)
        if options.survivors_log is None:
            return
        entry = {
            "name": run.name,
            "bounds": run.bounds,
            "mode": run.mode.value,
            "outcome": run.outcome,
            "states": run.states,
            "edges": run.edges,
            "seconds": run.seconds,
            "violation": run.violation,
            "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        with open(options.survivors_log, "a", encoding="utf-8") as log:
            log.write(json.dumps(entry) + "\n")

    previous = _logged_runs(options.survivors_log) if options.survivors_log else ()
    verdicts = confirm_survivors(
        defn,
        [outcome.mutant for outcome in survivors],
        progress=lambda text: line.show(text),
        on_run=record,
        modes=options.modes,
        previous=previous,
    )
    confirmed = []
    for outcome, verdict in zip(survivors, verdicts, strict=True):
        if verdict.killed:
            print(
                f"    NOT equivalent: {outcome.mutant.name} killed by {verdict.killer} in "
                f"{verdict.mode.value if verdict.mode else '?'}: {verdict.violation}",
                file=out,
            )
        else:
            print(f"    equivalent: {outcome.mutant.name}: {'; '.join(verdict.how)}", file=out)
            confirmed.append(outcome)
    return tuple(confirmed)


def main(argv: list[str], *, table: tuple[Rule, ...] | None = None) -> int:
    """Entry point of `sagemem check`; `table` replaces the real table (for tests)."""
    options = parse_options(argv)
    return run_checks(options, table=TABLE if table is None else table)
