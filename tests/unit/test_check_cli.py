"""`sagemem check`: a summary and exit 0 on the real table, a trace and exit 1 on a bad one."""

from __future__ import annotations

import dataclasses
import io
import sys

import pytest

from proofs.cli import CheckOptions, main, parse_options, plan_labels, run_checks
from sagemem.spec.table import TABLE, Rule
from sagemem.spec.vocabulary import Event, L1State, Mode

# One small definition per mode instead of the quick set, and a shallow bounded model check,
# so the whole command runs in a few seconds; `sagemem check` itself uses the quick bounds.
SMALL = ["--agents", "2", "--writes", "1", "--fault-budget", "1", "--bmc-depth", "3"]


def _stale_fill_table() -> tuple[Rule, ...]:
    """The table with the stale-fill fix removed from both modes' (IS_D, invalidate) rows."""
    return tuple(
        dataclasses.replace(rule, target=L1State.IS_D)
        if rule.source is L1State.IS_D and rule.event is Event.DELIVER_INVALIDATE
        else rule
        for rule in TABLE
    )


def test_real_table_passes_and_prints_a_summary(capsys: pytest.CaptureFixture[str]) -> None:
    """Every checker passes on the real table: exit 0, a per-checker line and a summary."""
    assert main(SMALL) == 0
    out = capsys.readouterr().out
    assert "summary:" in out
    assert "states" in out
    assert "result: OK" in out
    for checker in ("z3 table", "explore ", "z3 bmc"):
        assert out.count(f"\n  {checker}") == 2, checker  # once per mode


def test_mutated_table_exits_1_with_a_counterexample_trace(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Without the stale-fill fix the run fails and prints the event sequence and states."""
    status = main(["--mode", "coherent", *SMALL], table=_stale_fill_table())
    assert status == 1
    out = capsys.readouterr().out
    assert "violated:" in out
    assert "  initial: " in out
    assert "    1. agent" in out
    assert "       -> home=" in out
    assert "result: FAILED" in out


def test_progress_goes_to_stderr_and_the_summary_to_stdout() -> None:
    """Progress lines are written to the error stream, never mixed into the summary."""
    out, err = io.StringIO(), io.StringIO()
    options = dataclasses.replace(parse_options(SMALL), modes=(Mode.COHERENT,))
    assert run_checks(options, out=out, err=err) == 0
    assert "ok in" in err.getvalue()
    assert "ok in" not in out.getvalue()


def test_missing_z3_checker_fails_clearly(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """When the Z3 checker cannot be imported the command fails (status 2), never skips, and
    names the extra that provides it."""
    monkeypatch.setitem(sys.modules, "sagemem.proofs.z3_check", None)
    assert run_checks(CheckOptions(modes=(Mode.COHERENT,))) == 2
    err = capsys.readouterr().err
    assert "cannot import sagemem.proofs.z3_check" in err
    assert 'pip install "sagemem[check]"' in err


@pytest.mark.parametrize(
    "argv", [["--agents", "0"], ["--writes", "9"], ["--bmc-depth", "-1"], ["--mode", "weak"]]
)
def test_bad_options_are_usage_errors(argv: list[str]) -> None:
    """Out-of-range bounds and unknown modes exit with argparse's status 2."""
    with pytest.raises(SystemExit) as raised:
        parse_options(argv)
    assert raised.value.code == 2


def test_deep_selects_depth_20_in_both_modes() -> None:
    """--deep checks both modes to depth 20 (the issue's bound), deeper than the quick check."""
    deep, quick = parse_options(["--deep"]), parse_options([])
    for mode in Mode:
        assert deep.depth(mode) >= 20
        assert quick.depth(mode) < deep.depth(mode)
    assert parse_options(["--deep", "--bmc-depth", "7"]).depth(Mode.STRICT) == 7


def test_quick_check_runs_the_bug_catalogue_and_no_bmc() -> None:
    """The quick check rejects the hand-written bugs in each mode and runs no BMC (the
    explorer covers its bounds); --deep keeps BMC."""
    labels = plan_labels(parse_options([]))
    assert sum(label.startswith("bugs ") for label in labels) == 2
    assert not any(label.startswith("z3 bmc") for label in labels)
    assert sum(label.startswith("z3 bmc") for label in plan_labels(parse_options(["--deep"]))) == 2


def test_confirm_survivors_needs_mutants() -> None:
    """--confirm-survivors re-checks survivors at the larger bounds, so it needs --mutants."""
    assert parse_options(["--mutants", "--confirm-survivors"]).confirm_survivors
    with pytest.raises(SystemExit) as raised:
        parse_options(["--confirm-survivors"])
    assert raised.value.code == 2
