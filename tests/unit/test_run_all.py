"""`benchmarks.run_all` without servers: its options, its workloads, its analysis and report."""

from __future__ import annotations

import random
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from benchmarks.agent_report import format_report
from benchmarks.agent_workloads import (
    SYSTEMS,
    WORKLOADS,
    BenchmarkOptionError,
    OperationStream,
    ReadRecord,
    WriteRecord,
    check_reads,
    percentile,
    stale_reads,
)
from benchmarks.run_all import (
    BASELINE,
    main,
    measure_cell,
    message_totals,
    parse_options,
    summarise_cells,
)
from sagemem import cli
from sagemem.errors import SageMemError


def _workload(name: str) -> Any:
    return next(w for w in WORKLOADS if w.name == name)


@pytest.mark.parametrize(
    ("argv", "shown"),
    [
        (["--workloads", "read95-uniform,chess"], "'chess'"),
        (["--systems", "sagemem-coherent,redis-only"], "'redis-only'"),
        (["--repetitions", "0"], "'0'"),
        (["--repetitions", "many"], "'many'"),
        (["--agents", "-3"], "'-3'"),
        (["--agents", "1"], "got 1"),
        (["--scaling", "2,0"], "'0'"),
        (["--duration-s", "0"], "'0'"),
        (["--warmup-s", "nan"], "'nan'"),
        (["--seed", "x"], "'x'"),
    ],
)
def test_bad_options_raise_a_typed_error_that_shows_the_value(argv: list[str], shown: str) -> None:
    """Unknown names and non-positive counts raise BenchmarkOptionError (a SageMemError and a
    ValueError) whose message shows the bad value."""
    with pytest.raises(BenchmarkOptionError) as raised:
        parse_options(argv)
    assert isinstance(raised.value, SageMemError)
    assert isinstance(raised.value, ValueError)
    assert shown in str(raised.value)


def test_unknown_names_are_answered_with_the_known_ones() -> None:
    """An unknown workload's error lists every workload to choose from."""
    with pytest.raises(BenchmarkOptionError) as raised:
        parse_options(["--workloads", "chess"])
    for workload in WORKLOADS:
        assert workload.name in str(raised.value)


def test_leaving_out_the_baseline_is_refused() -> None:
    """Every ratio is taken against the uncached store, so it cannot be left out."""
    with pytest.raises(BenchmarkOptionError, match=BASELINE):
        parse_options(["--systems", "sagemem-coherent"])


def test_main_exits_2_on_a_bad_option_and_says_the_fix(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A usage error is exit status 2 with the message on stderr, before anything runs."""
    assert main(["--repetitions", "0"]) == 2
    assert "--repetitions must be a positive whole number, got '0'" in capsys.readouterr().err


def test_profiles_set_sizes_and_options_override_them() -> None:
    """--quick is small, the default has 8 agents and 3 repetitions, --full sweeps 2..32."""
    quick = parse_options(["--quick"])
    default = parse_options([])
    full = parse_options(["--full", "--repetitions", "2", "--out", "x"])
    assert (quick.agents, quick.repetitions, quick.scaling) == (2, 1, ())
    assert (default.agents, default.repetitions) == (8, 3)
    assert full.scaling == (2, 4, 16, 32)  # 8 is the main run's count
    assert full.repetitions == 2
    assert full.out == Path("x")
    assert default.systems == SYSTEMS
    assert default.out.parts[0] == "benchmark-results"


def test_sagemem_bench_help_documents_its_exit_statuses(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`sagemem bench --help` is run_all's help, ending with its exit statuses."""
    with pytest.raises(SystemExit) as exited:
        cli.main(["bench", "--help"])
    assert exited.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "exit status: 0 every read was consistent" in text
    assert "--quick" in text


def test_sagemem_bench_outside_a_checkout_says_where_it_runs(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """From an installed wheel (no benchmarks/ folder) `sagemem bench` exits 2 and says why."""
    monkeypatch.setattr(cli, "_checkout_root", lambda: None)
    assert cli.main(["bench", "--quick"]) == 2
    assert "run it from a clone" in capsys.readouterr().err


def test_read_heavy_streams_write_about_their_fraction() -> None:
    """95/5 draws about 5 % writes, 99/1 about 1 %, over 20,000 operations."""
    for name, low, high in (("read95-uniform", 0.04, 0.06), ("read99-zipf", 0.005, 0.015)):
        stream = OperationStream(_workload(name), random.Random(7))
        kinds = Counter(stream.next().kind for _ in range(20_000))
        assert low < kinds["write"] / 20_000 < high, name
        assert set(kinds) == {"read", "write"}


def test_zipfian_keys_are_skewed_and_uniform_keys_are_not() -> None:
    """Under Zipf the hottest key is drawn far more often than under uniform choice."""
    counts = {}
    for name in ("read95-zipf", "read95-uniform"):
        stream = OperationStream(_workload(name), random.Random(3))
        counts[name] = Counter(stream.next().key for _ in range(20_000))
    hottest_zipf = counts["read95-zipf"].most_common(1)[0]
    assert hottest_zipf[0] == "read95-zipf:k0"
    assert hottest_zipf[1] > 5 * counts["read95-uniform"].most_common(1)[0][1] / 2


def test_a_debate_turn_reads_three_beliefs_and_revises_one_of_them() -> None:
    """Each debate turn is three reads of distinct beliefs, then a write of one of those."""
    stream = OperationStream(_workload("debate"), random.Random(1))
    for _ in range(50):
        turn = [stream.next() for _ in range(4)]
        assert [op.kind for op in turn] == ["read", "read", "read", "write"]
        read_keys = {op.key for op in turn[:3]}
        assert len(read_keys) == 3
        assert turn[3].key in read_keys


def test_counter_and_research_streams_have_their_operations() -> None:
    """The counter only updates; a research turn searches, reads a note and writes one."""
    counter = OperationStream(_workload("counter"), random.Random(1))
    assert {counter.next().kind for _ in range(100)} == {"update"}
    research = OperationStream(_workload("research"), random.Random(1))
    turn = [research.next() for _ in range(3)]
    assert [op.kind for op in turn] == ["search", "read", "write"]
    assert turn[0].query


def test_a_read_older_than_a_returned_write_is_stale_with_its_age() -> None:
    """Stale: a newer version had returned before the read began; its age runs from the first
    such write's return. Reads overlapping the write, or of the newest version, are not."""
    writes = [WriteRecord("k", 1, 0, "p"), WriteRecord("k", 2, 1_000_000, "a")]
    reads = [
        ReadRecord("k", 500_000, 1, "p"),  # before version 2 returned: fresh
        ReadRecord("k", 1_000_000, 1, "p"),  # began as it returned: not yet stale
        ReadRecord("k", 4_000_000, 1, "p"),  # 3 ms after: stale
        ReadRecord("k", 5_000_000, 2, "a"),  # the newest: fresh
        ReadRecord("other", 5_000_000, 9, "x"),  # no write known: not counted stale
    ]
    report = stale_reads(writes, reads)
    assert (report.reads, report.stale) == (5, 1)
    assert report.max_age_ms == pytest.approx(3.0)


def test_check_reads_finds_wrong_values_unknown_versions_and_double_commits() -> None:
    """The harness cross-check names a read whose value is not the one committed as its
    version, a version never committed, and a version committed twice; clean runs pass."""
    writes = [WriteRecord("k", 1, 0, "p"), WriteRecord("k", 2, 5, "a1")]
    assert check_reads(writes, [ReadRecord("k", 9, 2, "a1"), ReadRecord("k", 9, 1, "p")]) == []
    problems = check_reads(
        [*writes, WriteRecord("k", 2, 6, "a2")],
        [ReadRecord("k", 9, 2, "a2"), ReadRecord("k", 9, 1, "a1"), ReadRecord("k", 9, 7, "x")],
    )
    assert len(problems) == 3
    assert "committed twice" in problems[0]
    assert "version 1 returned 'a1'" in problems[1]
    assert "version 7, never written" in problems[2]


def test_percentile_takes_the_median_and_the_nearest_rank() -> None:
    """p50 is the median; p99 of 1..100 is 100 (nearest rank above)."""
    samples = [float(x) for x in range(1, 101)]
    assert percentile(samples, 0.5) == 50.5
    assert percentile(samples, 0.99) == 100.0
    with pytest.raises(ValueError, match="no samples"):
        percentile([], 0.5)


def _answer(ops: int, reads: list[list[Any]], writes: list[list[Any]]) -> dict[str, Any]:
    return {
        "ops": {"read": ops - len(writes), "write": len(writes)},
        "latency_us": {"read": [100.0] * (ops - len(writes)), "write": [900.0] * len(writes)},
        "reads": reads,
        "writes": writes,
        "counters_timed_start": {"l1_hits": 10, "l1_misses": 10, "redis_round_trips": 0},
        "counters_end": {"l1_hits": 40, "l1_misses": 20, "redis_round_trips": 50},
        "timed_start_ns": 0,
        "last_end_ns": 1_000_000_000,
    }


def _cell(system: str, repetition: int, ops: int) -> Any:
    workload = _workload("read95-uniform")
    key = workload.key(0)
    answer = _answer(ops, [[key, 10, 1, "p"]], [[key, 2, 20, "a0:1"]])
    final = {"reads": [[key, 30, 2, "a0:1"]]}
    prefill = [WriteRecord(key, 1, 0, "p")]
    return measure_cell(workload, system, 2, repetition, [answer], [final], prefill, (0, 100))


def test_a_cell_counts_ops_hits_round_trips_and_checks_its_reads() -> None:
    """A cell's figures come from the agents' answers: ops/s over the timed window, the L1 hit
    rate of the timed part, round trips per operation, and no problems for consistent reads."""
    cell = _cell("sagemem-coherent", 0, 100)
    assert cell.ops == 100
    assert cell.ops_s == pytest.approx(100.0)
    assert cell.l1_hit_rate == pytest.approx(30 / 40)
    assert cell.redis_round_trips_per_op == pytest.approx(0.5)
    assert cell.redis_commands_per_op == pytest.approx(1.0)
    assert (cell.final_reads, cell.final_stale, cell.problems) == (1, 0, [])
    assert cell.latency_us["write"]["p50"] == 900.0


def test_ratios_are_taken_against_the_baseline_of_the_same_repetition() -> None:
    """Each repetition's ratio divides by the uncached store's ops/s of that repetition; the
    summary gives their median, min and max."""
    cells = [
        _cell(BASELINE, 0, 100),
        _cell("sagemem-coherent", 0, 50),
        _cell(BASELINE, 1, 200),
        _cell("sagemem-coherent", 1, 300),
    ]
    summary = {entry["system"]: entry for entry in summarise_cells(cells)}
    coherent = summary["sagemem-coherent"]["ratio_vs_baseline"]
    assert (coherent["min"], coherent["max"]) == (0.5, 1.5)
    assert coherent["median"] == pytest.approx(1.0)
    assert summary[BASELINE]["ratio_vs_baseline"]["median"] == 1.0


def test_the_report_has_the_headline_ratios_and_the_workload_tables() -> None:
    """The Markdown report shows the 95/5 headline ratio of each system and a table per
    workload, and says there were no problems."""
    cells = [_cell(BASELINE, 0, 100), _cell("sagemem-coherent", 0, 25)]
    results = {
        "options": {
            "profile": "quick",
            "agents": 2,
            "repetitions": 1,
            "warmup_s": 0.1,
            "duration_s": 0.2,
            "seed": 1,
            "scaling": [],
        },
        "environment": {
            "python": "3.12",
            "machine": "x",
            "redis_server": "valkey",
            "postgres_server": "18",
        },
        "elapsed_s": 1.0,
        "cells": [
            {"workload": c.workload, "system": c.system, "agents": 2, "problems": []} for c in cells
        ],
        "summary": summarise_cells(cells),
    }
    text = format_report(results, ["throughput.png"])
    assert "| sagemem-coherent | 25 | 0.25x (0.25-0.25) |" in text
    assert "### read95-uniform" in text
    assert "None: every read of every system returned the value committed" in text
    assert "![throughput](throughput.png)" in text


def test_message_totals_sum_each_agents_run_from_its_start_to_the_settled_counters() -> None:
    """Messages sent to holders and received are counted from each agent's run start to its
    settled counters, summed over the agents; a system without the counter gives None."""
    answers = [
        {"counters_run_start": {"messages_to_holders": 3, "messages_received": 1}},
        {"counters_run_start": {"messages_to_holders": 0, "messages_received": 5}},
    ]
    settled = [
        {"counters": {"messages_to_holders": 10, "messages_received": 4}},
        {"counters": {"messages_to_holders": 2, "messages_received": 11}},
    ]
    assert message_totals(answers, settled) == (7 + 2, 3 + 6)
    assert message_totals(answers, []) == (None, None)
    plain = [{"counters": {"messages_received": 4}}, {"counters": {"messages_received": 4}}]
    assert message_totals(answers, plain) == (None, None)
    workload = _workload("read95-uniform")
    key = workload.key(0)
    answer = {**_answer(10, [[key, 10, 1, "p"]], [[key, 2, 20, "a0:1"]]), **answers[0]}
    cell = measure_cell(
        workload,
        "sagemem-coherent",
        2,
        0,
        [answer],
        [{"reads": [[key, 30, 2, "a0:1"]]}],
        [WriteRecord(key, 1, 0, "p")],
        (0, 10),
        settled_answers=settled[:1],
    )
    assert (cell.messages_to_holders, cell.messages_delivered) == (7, 3)
