"""The command line explains itself: a version, help for every command and action with its exit
statuses, and `sagemem check` saying how long it takes and which depths are done."""

from __future__ import annotations

import dataclasses
import io

import pytest

import sagemem
from proofs.cli import CheckOptions, expected_duration, parse_options, run_checks
from proofs.z3_check import depth_ranges
from sagemem.cli import main
from sagemem.spec.vocabulary import Mode


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    try:
        status = main(list(argv))
    except SystemExit as exit_:  # argparse's --help and --version exit
        status = exit_.code if isinstance(exit_.code, int) else 2
    captured = capsys.readouterr()
    return status, captured.out + captured.err


def test_version_prints_the_package_version(capsys: pytest.CaptureFixture[str]) -> None:
    """`sagemem --version` prints `sagemem X.Y.Z` and exits 0."""
    assert _run(capsys, "--version") == (0, f"sagemem {sagemem.__version__}\n")


def test_services_help_describes_each_action(capsys: pytest.CaptureFixture[str]) -> None:
    """`sagemem services --help` names up, status and down with what each does."""
    status, text = _run(capsys, "services", "--help")
    assert status == 0
    assert "up  " in text
    assert "start the embedded servers" in text
    assert "status  " in text
    assert "down  " in text
    assert "exit status:" in text


@pytest.mark.parametrize(
    ("argv", "documented"),
    [
        (("--help",), "exits 0 on success and 2 on a usage error"),
        (("services", "up", "--help"), "1 they could not be started"),
        (("services", "status", "--help"), "1 one or both do not"),
        (("services", "down", "--help"), "0 stopped, or nothing was running"),
        (("check", "--help"), "1 a checker found a violation"),
        (("demo", "--help"), "1 when it cannot start (port"),
        (("grants", "--help"), "2 a usage error or a failure"),
        (("reindex", "--help"), "1 a server failed"),
    ],
)
def test_every_command_and_action_documents_its_exit_statuses(
    capsys: pytest.CaptureFixture[str], argv: tuple[str, ...], documented: str
) -> None:
    """Each `--help` exits 0 and ends with the exit statuses of that command or action."""
    status, text = _run(capsys, *argv)
    assert status == 0
    assert "exit status" in text or "exits 0" in text
    assert documented in " ".join(text.split())


def test_services_without_an_action_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    """`sagemem services` alone exits 2 and asks for an ACTION."""
    status, text = _run(capsys, "services")
    assert status == 2
    assert "ACTION" in text


def test_check_says_up_front_how_long_the_quick_check_takes() -> None:
    """The first line of the quick check states the expected duration; custom bounds say
    it depends on them."""
    assert "under a minute" in expected_duration(CheckOptions())
    assert "about 40 minutes" in expected_duration(CheckOptions(deep=True))
    assert "depends on the bounds" in expected_duration(parse_options(["--bmc-depth", "3"]))


@pytest.mark.parametrize(
    ("depths", "expected"),
    [
        ([], "none"),
        ([4], "4"),
        ([0, 1, 2, 3, 7, 9, 10], "0-3, 7, 9-10"),
        ([10, 9, 3, 2, 1, 0, 7], "0-3, 7, 9-10"),
    ],
)
def test_depth_ranges_reads_as_sorted_spans(depths: list[int], expected: str) -> None:
    """Depths print as increasing spans whatever order they finished in."""
    assert depth_ranges(depths) == expected


def test_parallel_bmc_progress_names_done_and_pending_depths() -> None:
    """With workers, each answered depth's line says which depths are done of how many, and no
    line reads like the end ("3/3") while depths are still pending."""
    out, err = io.StringIO(), io.StringIO()
    options = dataclasses.replace(
        parse_options(
            ["--agents", "2", "--writes", "1", "--fault-budget", "1", "--bmc-depth", "3"]
        ),
        modes=(Mode.COHERENT,),
        workers=2,
    )
    assert run_checks(options, out=out, err=err) == 0
    first_line = out.getvalue().splitlines()[0]
    assert "depends on the bounds given" in first_line
    bmc_lines = [line for line in err.getvalue().splitlines() if " safe in " in line]
    assert bmc_lines, err.getvalue()
    assert any("done 0-3 of 0-3" in line for line in bmc_lines), bmc_lines
    assert all("done " in line and " of 0-3" in line for line in bmc_lines), bmc_lines
    assert not any("to go" in line or "3/3" in line for line in bmc_lines), bmc_lines
