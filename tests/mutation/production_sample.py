"""Sample agent-row and refusal mutants the model rejects, and run the real-server protocol
tests against each: the production half of the mutation score for rows the agent's core
executes (the shared rows have their own exhaustive test, `test_production_mutants.py`).

    uv run python -m tests.mutation.production_sample [--rows 16] [--refusals 8] [--seed 1]
        [--json out.json] [--timeout-s 900] [--model-bounds 2/1/1,3/1/1] [tests ...]

For each sampled mutant (extended generator of `proofs.mutants`, agent rows and agent refusals
only, seeded), the model's explorer judges it first (`--model-bounds`, by default 2 agents / 1
write / 1 fault, then 3/1/1); only mutants the model rejects are kept, since the others may be
equivalent. Each kept mutant then runs the protocol integration tests (`DEFAULT_TESTS`, or
those given) in a fresh pytest with `-p tests.mutation.table_plugin`, which puts the mutant's
table under every `CoherentL1Tier` of its mode; the mutant is killed if the run fails (or
outlives `--timeout-s`). The unmutated table is run first as the control and must pass, else
the sample is void. Progress goes to stderr; the summary and the per-mutant table to stdout.

This is a measurement (about 2-4 minutes per surviving mutant on 2 cores), not part of the
suite: its numbers are reported in docs/coherence-protocol.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import random
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass

from proofs.explore import explore
from proofs.mutants import Mutant, MutationKind, generate_extended_mutants, mutate_definition
from sagemem.spec.model import ProtocolDefinition
from sagemem.spec.vocabulary import L1State, Mode
from tests.mutation.table_plugin import MODE_VARIABLE, MUTANT_VARIABLE

__all__ = ["DEFAULT_TESTS", "SampledMutant", "main", "model_rejects", "population"]

DEFAULT_TESTS: tuple[str, ...] = (
    "tests/integration/test_coherent_l1.py",
    "tests/integration/test_coherence_faults.py",
    "tests/integration/test_adapter_defects.py",
    "tests/integration/test_hierarchy_conflicts.py",
    "tests/integration/test_seed_examples.py",
)
MODEL_BOUNDS: tuple[tuple[int, int, int], ...] = ((2, 1, 1), (3, 1, 1))


@dataclass(frozen=True)
class SampledMutant:
    """One mutant in one mode, what the model said and what the real-server tests said."""

    name: str
    mode: str
    description: str
    model_property: str
    outcome: str  # "killed", "survived", "timed out"
    first_failure: str
    seconds: float


def population(base: ProtocolDefinition) -> list[Mutant]:
    """The extended generator's single mutants of agent rows and agent refusals (no pairs)."""
    chosen: list[Mutant] = []
    for mutant in generate_extended_mutants(base, pairs=0):
        if mutant.kind is MutationKind.PAIR:
            continue
        if mutant.refusal is not None:
            if isinstance(mutant.refusal.source, L1State):
                chosen.append(mutant)
        elif mutant.rule is not None and isinstance(mutant.rule.source, L1State):
            chosen.append(mutant)
    return chosen


def model_rejects(
    mutant: Mutant, mode: Mode, bounds: Sequence[tuple[int, int, int]] = MODEL_BOUNDS
) -> str | None:
    """The property the explorer finds violated at `bounds` (in order), else None."""
    for agents, writes, faults in bounds:
        defn = ProtocolDefinition(mode=mode, agents=agents, writes=writes, fault_budget=faults)
        report = explore(mutate_definition(defn, mutant))
        if not report.ok:
            violated = report.counterexample.property_name if report.counterexample else "?"
            return f"{violated} at {agents}/{writes}/{faults}"
    return None


def _run_tests(tests: Sequence[str], env: dict[str, str], timeout_s: float) -> tuple[str, str]:
    command = [
        sys.executable,
        "-m",
        "pytest",
        "-q",
        "-x",
        "-rf",
        "-p",
        "no:cacheprovider",
        "-p",
        "tests.mutation.table_plugin",
        *tests,
    ]
    try:
        done = subprocess.run(
            command, env=env, capture_output=True, text=True, timeout=timeout_s, check=False
        )
    except subprocess.TimeoutExpired:
        return "timed out", f"no result within {timeout_s:.0f} s"
    if done.returncode == 0:
        return "survived", ""
    failed = [line for line in done.stdout.splitlines() if line.startswith(("FAILED", "ERROR"))]
    return "killed", (failed[0] if failed else done.stdout.strip().splitlines()[-1])[:200]


def main(argv: Sequence[str] | None = None) -> int:
    """Run the sample; exit 0 if the control passed (whatever the kill rate), 2 if it failed."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("tests", nargs="*", default=list(DEFAULT_TESTS))
    parser.add_argument("--rows", type=int, default=16, help="agent-row mutants to keep")
    parser.add_argument("--refusals", type=int, default=8, help="refusal mutants to keep")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--timeout-s", type=float, default=900.0)
    parser.add_argument("--json", default="", help="write the results to this file")
    parser.add_argument(
        "--model-bounds",
        default="2/1/1,3/1/1",
        help="agents/writes/faults the explorer judges each mutant at, in order",
    )
    options = parser.parse_args(argv)
    if options.rows < 0 or options.refusals < 0 or options.timeout_s <= 0:
        parser.error("--rows and --refusals must be >= 0 and --timeout-s > 0")
    try:
        bounds = [
            (int(a), int(w), int(f))
            for a, w, f in (part.split("/") for part in options.model_bounds.split(","))
        ]
    except ValueError:
        parser.error(f"--model-bounds takes A/W/F[,A/W/F...], got {options.model_bounds!r}")

    def say(text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    base = ProtocolDefinition(mode=Mode.COHERENT)
    pool = [(m, mode) for m in population(base) for mode in m.modes]
    random.Random(options.seed).shuffle(pool)
    wanted = {"row": options.rows, "refusal": options.refusals}
    kept: list[tuple[Mutant, Mode, str]] = []
    screened = 0
    for mutant, mode in pool:
        family = "refusal" if mutant.refusal is not None else "row"
        if wanted[family] == 0:
            continue
        screened += 1
        violated = model_rejects(mutant, mode, bounds)
        say(f"model: {mutant.name} [{mode.value}]: {violated or 'not rejected (skipped)'}")
        if violated is not None:
            kept.append((mutant, mode, violated))
            wanted[family] -= 1
        if not any(wanted.values()):
            break

    env = {k: v for k, v in os.environ.items() if k not in (MUTANT_VARIABLE, MODE_VARIABLE)}
    started = time.monotonic()
    outcome, failure = _run_tests(options.tests, env, options.timeout_s)
    say(f"control (the real table): {outcome} in {time.monotonic() - started:.0f} s {failure}")
    if outcome != "survived":
        print(f"control run failed: {failure}; the sample is void")
        return 2
    results: list[SampledMutant] = []
    for number, (mutant, mode, violated) in enumerate(kept, 1):
        started = time.monotonic()
        outcome, failure = _run_tests(
            options.tests,
            {**env, MUTANT_VARIABLE: mutant.name, MODE_VARIABLE: mode.value},
            options.timeout_s,
        )
        seconds = time.monotonic() - started
        results.append(
            SampledMutant(
                mutant.name, mode.value, mutant.describe(), violated, outcome, failure, seconds
            )
        )
        say(f"[{number}/{len(kept)}] {mutant.name} [{mode.value}]: {outcome} ({seconds:.0f} s)")

    killed = sum(r.outcome != "survived" for r in results)
    print(
        f"{killed} of {len(results)} model-rejected mutants broke the real-server tests "
        f"({screened} screened by the model, seed {options.seed})"
    )
    for family in ("row", "refusal"):
        part = [r for r in results if r.name.startswith(family)]
        dead = sum(r.outcome != "survived" for r in part)
        print(f"  {family} mutants: {dead} of {len(part)}")
    for r in results:
        print(f"- {r.outcome:9} {r.name} [{r.mode}] {r.description}")
        print(f"    model: {r.model_property}; tests: {r.first_failure or '-'}")
    if options.json:
        with open(options.json, "w", encoding="utf-8") as out:
            json.dump([dataclasses.asdict(r) for r in results], out, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
