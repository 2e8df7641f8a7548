"""Survivors at the larger bounds: each run recorded, and the command's options checked."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import proofs.explore
import proofs.mutants
from proofs.cli import main, parse_options
from proofs.mutants import (
    CheckerKind,
    CheckerSpec,
    SurvivorRun,
    confirm_survivors,
    select_mutants,
    survivor_table,
)
from sagemem.spec.model import ProtocolDefinition
from sagemem.spec.vocabulary import Mode

_SMALL = CheckerSpec(CheckerKind.EXPLORE, agents=2, writes=1, fault_budget=1)
_REDUNDANT = "row66:dropped_effect=1"  # AWAIT_INVALIDATIONS after the commit that waits
_FORGETFUL = "row18:dropped_effect=0"  # S DELIVER_INVALIDATE without NOTE_INVALIDATION
_STALE_REGISTRATION = "row12:dropped_effect=0"  # S EVICT keeps its registration


def test_every_survivor_bound_and_mode_is_reported_as_it_is_done() -> None:
    """on_run sees one run per survivor and mode of its own, in the order asked: equal state
    space, survived exploration (the steps differ, no property breaks) or killed."""
    defn = ProtocolDefinition()
    mutants = select_mutants(defn, [_REDUNDANT, _FORGETFUL, _STALE_REGISTRATION])
    runs: list[SurvivorRun] = []
    verdicts = confirm_survivors(
        defn, mutants, bounds=(_SMALL,), on_run=runs.append, modes=(Mode.STRICT, Mode.COHERENT)
    )
    outcomes = {(run.name, run.mode): run.outcome for run in runs}
    assert outcomes == {
        (_REDUNDANT, Mode.STRICT): "equal state space",
        (_REDUNDANT, Mode.COHERENT): "equal state space",
        (_FORGETFUL, Mode.COHERENT): "killed",
        (_STALE_REGISTRATION, Mode.STRICT): "survived exploration",
        (_STALE_REGISTRATION, Mode.COHERENT): "survived exploration",
    }
    assert [run.mode for run in runs][:2] == [Mode.STRICT, Mode.STRICT]
    killed = next(run for run in runs if run.outcome == "killed")
    assert "fill_respects_invalidations" in killed.violation
    assert all(run.states > 0 and run.edges > 0 for run in runs)
    redundant, forgetful, stale = verdicts
    assert not redundant.killed
    assert forgetful.killed
    assert not stale.killed
    assert stale.how == (
        f"survived exploration at {_SMALL.name} in strict",
        f"survived exploration at {_SMALL.name} in coherent",
    )


def test_skip_chain_confirms_the_named_mutants_and_logs_each_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """--skip-chain takes the --only mutants as survivors; --survivors-log gets a JSON line
    per survivor and mode (the larger bounds replaced by a small one here)."""
    monkeypatch.setattr(proofs.mutants, "equivalence_checkers", lambda: (_SMALL,))
    log = tmp_path / "runs.jsonl"
    small = ["--agents", "2", "--writes", "1", "--fault-budget", "1", "--bmc-depth", "0"]
    status = main(
        [
            *small,
            "--mode",
            "coherent",
            "--mutants",
            "--only",
            f"{_REDUNDANT},{_FORGETFUL}",
            "--confirm-survivors",
            "--skip-chain",
            "--survivors-log",
            str(log),
        ]
    )
    assert status == 0
    out = capsys.readouterr().out
    assert "2 taken as survivors (--skip-chain)" in out
    assert f"NOT equivalent: {_FORGETFUL} killed by {_SMALL.name} in coherent" in out
    assert f"equivalent: {_REDUNDANT}: equal state space at {_SMALL.name} in coherent" in out
    entries = [json.loads(line) for line in log.read_text().splitlines()]
    assert [(e["name"], e["mode"], e["outcome"]) for e in entries] == [
        (_REDUNDANT, "coherent", "equal state space"),
        (_FORGETFUL, "coherent", "killed"),
    ]


@pytest.mark.parametrize(
    "argv",
    [
        ["--mutants", "--only", _REDUNDANT, "--skip-chain"],
        ["--mutants", "--confirm-survivors", "--skip-chain"],
        ["--mutants", "--survivors-log", "runs.jsonl"],
    ],
)
def test_the_confirmation_options_need_their_companions(argv: list[str]) -> None:
    """--skip-chain needs --only and --confirm-survivors; --survivors-log needs the latter."""
    with pytest.raises(SystemExit) as raised:
        parse_options(argv)
    assert raised.value.code == 2


def test_a_second_run_with_the_same_log_resumes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Runs already in the log are taken from it: nothing is explored again for them."""
    monkeypatch.setattr(proofs.mutants, "equivalence_checkers", lambda: (_SMALL,))
    log = tmp_path / "runs.jsonl"
    argv = [
        *["--agents", "2", "--writes", "1", "--fault-budget", "1", "--bmc-depth", "0"],
        *["--mode", "coherent", "--mutants", "--only", f"{_REDUNDANT},{_FORGETFUL}"],
        *["--confirm-survivors", "--skip-chain", "--survivors-log", str(log)],
    ]
    assert main(argv) == 0
    first = log.read_text()
    explored: list[object] = []
    monkeypatch.setattr(
        proofs.explore.RealGraph, "explore", classmethod(lambda cls, d: explored.append(d))
    )
    assert main(argv) == 0
    assert log.read_text() == first
    assert explored == []


def test_the_survivor_table_counts_each_survivor_once() -> None:
    """Equal everywhere, survived (some run explored), killed, and not done (a run missing)."""
    defn = ProtocolDefinition()
    redundant, forgetful, stale = select_mutants(
        defn, [_REDUNDANT, _FORGETFUL, _STALE_REGISTRATION]
    )
    runs = [
        SurvivorRun(_REDUNDANT, _SMALL.name, mode, "equal state space", 10, 20, 1.0)
        for mode in Mode
    ]
    runs.append(SurvivorRun(_FORGETFUL, _SMALL.name, Mode.COHERENT, "killed", 5, 9, 1.0, "x"))
    runs.append(
        SurvivorRun(_STALE_REGISTRATION, _SMALL.name, Mode.COHERENT, "survived", 12, 30, 2.0)
    )
    counts, rows = survivor_table([redundant, forgetful, stale], runs, bounds=(_SMALL,))
    assert counts == {"equal": 1, "survived": 0, "killed": 1, "not done": 1}
    assert rows[1] == f"| `{_FORGETFUL}` | coherent: **killed**: x |"
    assert "strict: not done" in rows[2]
    assert "coherent: survived its exploration (12 states, 2 s)" in rows[2]
