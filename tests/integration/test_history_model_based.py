"""Model-based histories: Hypothesis draws what agent processes do and which faults hit them.

Each example is a drawn program: the keys (2 or 3), one script per agent process (2 or 3
agents; `get`, `set` at tier 0 (ownership), 1 (the L2 index) and 2 (the L3 index; in a
coherent hierarchy both are write-throughs, see `MemoryHierarchy.set`), compare-and-swap
against the version the agent last read or a drawn one, `delete`, `update`, close-and-reopen of
the agent's hierarchy), and the faults: commit replies lost after the commit took effect (off,
or at a drawn rate) and a Redis restart at drawn points of the scripts of some agents (`mark`:
each of them waits there until all have arrived and the test has stopped Redis, then goes on
while it is down, the other agents not pausing at all; Redis comes back empty after a drawn
outage). `tests/integration/history_worker.py --script` runs exactly the script of each agent
on a hierarchy built as `sagemem.connect(agent_id=...)` builds it, recording its history; once
every agent has stopped, each reads every key once more. Then, with the checkers of
`sagemem.verify`:

- strict: every key's history is linearizable;
- coherent: no permanent stale copy: no read is stale once the workload stopped;
- both: every agent's last read equals the home's final value, no operation failed or ended
  with an unknown outcome, and every home version was committed by exactly one recorded
  operation (nothing lost, nothing twice);
- both: trace validation against the model: every row each coherent agent executed (all its
  incarnations, recorded with `--trace`), with its local view before and after, is a step the
  model's own successor function takes in a reachable state (`sagemem.spec.conformance`; 0
  divergences);
- negative control: with a third agent reading through a plain `MemoryHierarchy([L1Tier(),
  L3Tier])` (no protocol: nothing invalidates its copies, and it reads the home's rows without
  recalling an owner), the same check fails for a drawn program.

Bounded for CI: a few examples per mode (one explicit program that uses every operation and
both faults, then generated ones), `derandomize=True` (the same programs on every run, no
example database), and no shrink phase: each example starts 2-3 processes and a Redis restart
costs seconds, so shrinking would take minutes for a program of a dozen steps. A failing
example's program is in the report (`note`, and Hypothesis's "Failing test case", which can be
pasted into an `@example`; each agent's script and history stay in the example's directory).
`SAGEMEM_HISTORY_EXAMPLES=N` explores: N generated programs per mode, drawn at random. The
Hypothesis function runs inside the pytest test (which gets the fixtures, once for all
examples: one private Redis, restarted in place, and the session's Postgres; each example uses
a namespace of its own), so no function-scoped fixture is shared across examples behind
Hypothesis's back and that health check has nothing to suppress.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

import pytest
from hypothesis import Phase, example, given, note, settings
from hypothesis import strategies as st

from sagemem.coherence.home import HomeStore
from sagemem.services import EmbeddedServices
from sagemem.spec.conformance import LocalStep, divergences
from sagemem.spec.model import Request
from sagemem.spec.vocabulary import Effect, Event, Guard, L1State, Mode
from sagemem.tiers.l3 import L3Tier
from sagemem.verify import (
    VersionRule,
    analyze_staleness,
    check_history,
    check_invalidation_coverage,
    load_history,
)
from tests.integration import history_worker
from tests.integration.history_worker import LAST_SEEN, ScriptStep
from tests.integration.test_coherence_faults import redis_ping, start_redis_again, stop_redis
from tests.integration.test_history_multiprocess import (
    _check_common,
    _describe_counts,
    _directory_matured,
    _explain,
    _failures,
    _final_entry,
    _Run,
    _start_worker,
    _Worker,
)

_KEY_NAMES: Final = ("hot0", "hot1", "hot2")
_STEPS_MIN: Final = 3
_STEPS_MAX: Final = 9
_STARTUP_TIMEOUT_S: Final = 90.0
_RESTART_TIMEOUT_S: Final = 30.0
# Only "once the workload stopped" is judged in coherent mode: no bound on younger staleness.
_NO_STALENESS_BOUND_NS: Final = sys.maxsize
_GENERATED_EXAMPLES: Final = 4
_CONTROL_EXAMPLES: Final = 6


@dataclass(frozen=True)
class _Program:
    """What the agents do and which faults hit them (one Hypothesis example)."""

    keys: tuple[str, ...]
    scripts: dict[str, tuple[ScriptStep, ...]]  # agent id -> its steps, in order
    lose_replies: float
    # Redis restarts once each of these agents is paused before this step of its script
    # (empty: no restart).
    restart: tuple[tuple[str, int], ...]
    outage_s: float = 0.0

    def script(self, agent: str) -> list[dict[str, object]]:
        """The JSON script of `agent`, with the restart's `mark` if it pauses for it."""
        steps: list[dict[str, object]] = [dict(step.to_json()) for step in self.scripts[agent]]
        for paused, before in self.restart:
            if paused == agent:
                steps.insert(before, {"op": "mark"})
        return steps

    def describe(self) -> str:
        """The whole program as one JSON object (what `note` shows on a failure)."""
        return json.dumps(
            {
                "keys": list(self.keys),
                "lose_replies": self.lose_replies,
                "restart_redis_once_paused_before": self.restart,
                "outage_s": self.outage_s,
                "scripts": {agent: self.script(agent) for agent in self.scripts},
            }
        )

    def drawn(self) -> set[str]:
        """The operations and faults this program uses (for the coverage check)."""
        found = {_kind(step) for steps in self.scripts.values() for step in steps}
        if self.lose_replies > 0:
            found.add("lost replies")
        if self.restart:
            found.add("redis restart")
        return found


def _kind(step: ScriptStep) -> str:
    match step.op:
        case "set":
            return f"set tier {step.tier}"
        case "cas":
            return "cas last read" if step.expected == LAST_SEEN else "cas drawn version"
        case _:
            return step.op


_EVERYTHING: Final = frozenset(
    {
        "get", "set tier 0", "set tier 1", "set tier 2", "cas last read", "cas drawn version",
        "delete", "update", "reopen", "lost replies", "redis restart",
    }
)  # fmt: skip


def _steps(keys: tuple[str, ...]) -> st.SearchStrategy[ScriptStep]:
    key = st.sampled_from(keys)
    # A write first: Hypothesis's simplest draw (every choice the first) is then every agent
    # taking ownership of one key in turn, not a program of reads that tests nothing.
    return st.one_of(
        st.builds(ScriptStep, st.just("set"), key, st.sampled_from((0, 1, 2))),
        st.builds(ScriptStep, st.just("get"), key),
        st.builds(
            lambda k, expected: ScriptStep("cas", k, expected=expected),
            key,
            st.one_of(st.just(LAST_SEEN), st.none(), st.integers(1, 4)),
        ),
        st.builds(ScriptStep, st.just("delete"), key),
        st.builds(ScriptStep, st.just("update"), key),
        st.just(ScriptStep("reopen")),
    )


@st.composite
def _programs(draw: st.DrawFn, plain_reader: bool = False) -> _Program:
    """A program for 2-3 agents (with `plain_reader`: 3, the last a plain reader, and no
    fault, so that only that reader can fail the check)."""
    keys = _KEY_NAMES[: draw(st.integers(2, 3), label="key count")]
    count = 3 if plain_reader else draw(st.integers(2, 3), label="agent count")
    scripts: dict[str, tuple[ScriptStep, ...]] = {}
    for index in range(count):
        if plain_reader and index == count - 1:
            gets = st.builds(ScriptStep, st.just("get"), st.sampled_from(keys))
            scripts[f"p{index}"] = tuple(draw(st.lists(gets, min_size=_STEPS_MIN, max_size=6)))
        else:
            steps = st.lists(_steps(keys), min_size=_STEPS_MIN, max_size=_STEPS_MAX)
            scripts[f"a{index}"] = tuple(draw(steps))
    if plain_reader:
        return _Program(keys, scripts, lose_replies=0.0, restart=())
    lose_replies = draw(st.sampled_from((0.0, 0.15, 0.4)), label="lose_replies")
    restart: tuple[tuple[str, int], ...] = ()
    if draw(st.booleans(), label="restart redis"):
        writers = sorted(agent for agent in scripts if agent.startswith("a"))
        paused = draw(st.lists(st.sampled_from(writers), min_size=1, unique=True), label="paused")
        restart = tuple(
            (agent, draw(st.integers(0, len(scripts[agent])), label=f"{agent} pauses before"))
            for agent in paused
        )
    outage_s = draw(st.sampled_from((0.0, 0.3))) if restart else 0.0
    return _Program(keys, scripts, lose_replies, restart, outage_s)


# Every operation and both faults in one program: the first example of each mode.
_K0, _K1 = _KEY_NAMES[:2]
_EXPLICIT: Final = _Program(
    keys=(_K0, _K1),
    scripts={
        "a0": (
            ScriptStep("get", _K0), ScriptStep("set", _K0, 0), ScriptStep("set", _K1, 1),
            ScriptStep("cas", _K0, expected=LAST_SEEN), ScriptStep("get", _K1),
            ScriptStep("update", _K1), ScriptStep("reopen"), ScriptStep("get", _K0),
        ),
        "a1": (
            ScriptStep("set", _K1, 2), ScriptStep("get", _K0), ScriptStep("delete", _K0),
            ScriptStep("cas", _K0, expected=None), ScriptStep("cas", _K1, expected=2),
            ScriptStep("set", _K0, 0), ScriptStep("get", _K1),
        ),
        "a2": (
            ScriptStep("get", _K1), ScriptStep("update", _K0), ScriptStep("set", _K0, 1),
            ScriptStep("delete", _K1), ScriptStep("reopen"), ScriptStep("get", _K1),
        ),
    },
    lose_replies=0.3,
    restart=(("a0", 3), ("a2", 1)),
    outage_s=0.3,
)  # fmt: skip


@dataclass
class _Coverage:
    """What the examples of one test drew, and how many ran."""

    drawn: Counter[str] = field(default_factory=Counter)
    examples: int = 0


async def _run_program(
    program: _Program,
    mode: str,
    *,
    services: EmbeddedServices | None,
    redis_url: str,
    postgres_dsn: str,
    schema: str,
    directory: Path,
) -> _Run:
    """Run one agent process per script of `program` through the worker's phases (restarting
    Redis at the program's mark), and collect the histories, summaries and the home's values."""
    namespace = f"t{uuid.uuid4().hex}"
    if mode == "strict":
        await _directory_matured(redis_url, namespace)
    home = L3Tier(dsn=postgres_dsn, namespace=namespace, schema=schema)
    await home.connect()  # creates the schema and table once, before the agents start
    workers: dict[str, _Worker] = {}
    try:
        for index, agent in enumerate(program.scripts):
            workers[agent] = await _start_worker(
                agent,
                "plain" if agent.startswith("p") else mode,
                index,
                seconds=0.0,
                mix=history_worker.DEFAULT_MIX,
                redis_url=redis_url,
                postgres_dsn=postgres_dsn,
                namespace=namespace,
                schema=schema,
                directory=directory,
                lose_replies=program.lose_replies,
                keys=program.keys,
                script=_script_path(directory, agent),
                trace=None if agent.startswith("p") else _trace_path(directory, agent),
            )
        async with asyncio.timeout(_STARTUP_TIMEOUT_S):
            for worker in workers.values():
                await worker.expect(history_worker.READY)
        started = time.monotonic()
        for worker in workers.values():
            await worker.send(history_worker.GO)
        if program.restart:
            assert services is not None, "a program with a Redis restart needs its own Redis"
            paused = [workers[agent] for agent, _ in program.restart]
            for worker in paused:
                await worker.expect(history_worker.MARK)
            binary, config = await asyncio.to_thread(stop_redis, services)
            for worker in paused:
                await worker.send(history_worker.RESUME)  # their next steps meet the outage
            await asyncio.sleep(program.outage_s)  # the drawn outage (a fault, not a wait)
            await asyncio.to_thread(start_redis_again, binary, config)
            async with asyncio.timeout(_RESTART_TIMEOUT_S):
                await redis_ping(redis_url)
        for worker in workers.values():
            await worker.expect(history_worker.STOPPED)
        workload_s = time.monotonic() - started
        stopped_at_ns = time.monotonic_ns()
        for worker in workers.values():
            await worker.send(history_worker.FINAL)
        summaries: dict[str, dict[str, object]] = {}
        for worker in workers.values():
            summaries[worker.agent] = json.loads(await worker.expect(history_worker.DONE))
        for worker in workers.values():
            async with asyncio.timeout(_STARTUP_TIMEOUT_S):
                returncode = await worker.process.wait()
            assert returncode == 0, (
                f"agent {worker.agent} exited with {returncode}\n" + worker.diagnostics()
            )
        store = HomeStore(home)
        final_home = {key: await store.read(key) for key in program.keys}
    finally:
        for worker in workers.values():
            if worker.process.returncode is None:
                worker.process.kill()
                await worker.process.wait()
        await home.aclose()
    operations = load_history(worker.history_path for worker in workers.values())
    found: list[str] = []
    for agent in program.scripts:
        if not agent.startswith("p"):
            found += _trace_divergences(_trace_path(directory, agent), Mode(mode), agent)
    note(f"trace validation against the model: {len(found)} divergences")
    assert not found, "production took steps the model never takes:\n" + "\n".join(found[:20])
    return _Run(operations, summaries, stopped_at_ns, final_home, workload_s)


def _trace_path(directory: Path, agent: str) -> Path:
    return directory / f"{agent}.trace.jsonl"


def _trace_divergences(path: Path, mode: Mode, agent: str) -> list[str]:
    """The steps of `agent`'s recorded trace (every incarnation) the model never takes."""
    by_incarnation: dict[int, list[tuple[str, LocalStep]]] = {}
    with path.open(encoding="utf-8") as lines:
        for line in lines:
            row = json.loads(line)
            step = LocalStep(
                L1State[row["source"]],
                Request[row["request"]],
                bool(row["missed"]),
                int(row["operation"]),
                Event[row["event"]],
                Guard[row["guard"]],
                L1State[row["target"]],
                Request[row["target_request"]],
                bool(row["target_missed"]),
                int(row["target_operation"]),
                tuple(Effect[name] for name in row["effects"]),
            )
            by_incarnation.setdefault(int(row["incarnation"]), []).append((row["key"], step))
    return [
        f"{agent} incarnation {incarnation}: {line}"
        for incarnation, steps in sorted(by_incarnation.items())
        for line in divergences(mode, steps)
    ]


def _script_path(directory: Path, agent: str) -> Path:
    return directory / f"{agent}.script.json"


def _check(run: _Run, mode: str, agents: list[str]) -> None:
    """The acceptance check of one run in `mode` (see the module docstring)."""
    if mode == "strict":
        results = check_history(run.operations, version_rule=VersionRule.INCREASING)
        note(
            "linearizability: "
            + ", ".join(f"{key} {'ok' if r.ok else 'REFUTED'}" for key, r in results.items())
        )
        failures = _failures(results)
        assert not failures, _explain(failures)
    else:
        report = analyze_staleness(run.operations)
        note(f"staleness: {report.summary()}")
        permanent = check_invalidation_coverage(
            report, max_staleness_ns=_NO_STALENESS_BOUND_NS, quiescent_since_ns=run.stopped_at_ns
        )
        assert not permanent, "stale once the workload stopped:\n" + _explain(
            [found.reason for found in permanent]
        )
    _check_common(run, agents)


def _property(
    mode: str,
    coverage: _Coverage,
    run_program: Callable[[_Program, str, Path], _Run],
    directory: Path,
) -> Callable[[_Program], None]:
    """The body of one example: note the program, run it, check it."""

    def check_program(program: _Program) -> None:
        coverage.examples += 1
        coverage.drawn.update(program.drawn())
        note(f"mode {mode}, program {program.describe()}")
        started = time.monotonic()
        example_directory = directory / f"example{coverage.examples}"
        run = run_program(program, mode, example_directory)
        note(f"histories in {example_directory}; {_describe_counts(run)}")
        home = {key: _final_entry(read) for key, read in run.home.items()}
        note(f"home after the run {home}; run took {time.monotonic() - started:.1f} s")
        print(f"example {coverage.examples} ({mode}, {time.monotonic() - started:.1f} s): "
              f"{program.describe()}\n{_describe_counts(run)}")  # fmt: skip
        _check(run, mode, list(program.scripts))

    return check_program


def _runner(
    services: EmbeddedServices | None, redis_url: str, postgres_dsn: str, schema: str
) -> Callable[[_Program, str, Path], _Run]:
    def run_program(program: _Program, mode: str, directory: Path) -> _Run:
        directory.mkdir(parents=True)
        for agent in program.scripts:
            _script_path(directory, agent).write_text(
                json.dumps(program.script(agent)), encoding="utf-8"
            )
        return asyncio.run(
            _run_program(
                program,
                mode,
                services=services,
                redis_url=redis_url,
                postgres_dsn=postgres_dsn,
                schema=schema,
                directory=directory,
            )
        )

    return run_program


# SAGEMEM_HISTORY_EXAMPLES=N explores: N generated examples, drawn at random (not derandomized).
_EXPLORE_EXAMPLES: Final = int(os.environ.get("SAGEMEM_HISTORY_EXAMPLES", "0"))
_SETTINGS: Final = settings(
    max_examples=_EXPLORE_EXAMPLES or _GENERATED_EXAMPLES,
    deadline=None,
    derandomize=not _EXPLORE_EXAMPLES,
    database=None,
    phases=(Phase.explicit, Phase.generate),
    print_blob=False,
)


@pytest.fixture
def restartable_redis(private_services: EmbeddedServices) -> str:
    """A private Redis for this test alone (the examples restart it), started; its URL."""
    return private_services.ensure_redis()


@pytest.mark.parametrize("mode", ["strict", "coherent"])
def test_drawn_programs_with_faults_keep_the_mode_s_guarantee(
    mode: str,
    request: pytest.FixtureRequest,
    private_services: EmbeddedServices,
    restartable_redis: str,
    postgres_dsn: str,
    pg_schema: str,
    tmp_path: Path,
) -> None:
    """Drawn scripts of 2-3 agent processes (every operation, close/reopen, lost replies, a
    Redis restart): strict histories linearizable, coherent ones with no permanent stale copy,
    every home version committed by exactly one operation."""
    started = time.monotonic()
    coverage = _Coverage()
    check_program = _property(
        mode,
        coverage,
        _runner(private_services, restartable_redis, postgres_dsn, pg_schema),
        tmp_path,
    )
    _SETTINGS(given(program=_programs())(example(program=_EXPLICIT)(check_program)))()
    text = (
        f"{coverage.examples} programs in {time.monotonic() - started:.1f} s; "
        f"drawn: {dict(sorted(coverage.drawn.items()))}"
    )
    print(text)
    request.node.add_report_section("call", f"model-based {mode}", text)
    assert coverage.examples == 1 + (_EXPLORE_EXAMPLES or _GENERATED_EXAMPLES)
    assert set(coverage.drawn) >= _EVERYTHING, sorted(_EVERYTHING - set(coverage.drawn))


@pytest.mark.parametrize("mode", ["strict", "coherent"])
def test_a_plain_reader_among_drawn_programs_fails_the_check(
    mode: str,
    redis_url: str,
    postgres_dsn: str,
    pg_schema: str,
    tmp_path: Path,
) -> None:
    """Negative control: a third agent reading through a plain hierarchy (`L1Tier` over the
    home, outside the protocol) makes the mode's check fail for a drawn program (of at most
    six, run until the first is refuted), naming that agent."""
    coverage = _Coverage()
    check_program = _property(
        mode,
        coverage,
        _runner(None, redis_url, postgres_dsn, pg_schema),
        tmp_path,
    )
    refutations: list[AssertionError] = []

    def control_program(program: _Program) -> None:
        # Caught here, not raised to Hypothesis: a failure would be replayed (another run of
        # processes) and could come back as flaky. One refuted program is all this needs.
        if refutations:
            return
        try:
            check_program(program)
        except AssertionError as failure:
            refutations.append(failure)

    control = settings(_SETTINGS, phases=(Phase.generate,), max_examples=_CONTROL_EXAMPLES)
    control(given(program=_programs(plain_reader=True))(control_program))()
    assert refutations, f"none of {coverage.examples} programs with a plain reader was refuted"
    failure = str(refutations[0])
    print(f"the check failed as it must ({coverage.examples} programs run): {failure[:600]}")
    assert "p2" in failure, f"the failure does not name the plain reader p2: {failure}"
