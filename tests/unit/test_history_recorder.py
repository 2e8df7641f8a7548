"""The history recorder: timestamps, outcomes, unknown outcomes and the JSON-lines files."""

from __future__ import annotations

import asyncio
import itertools
import json
from pathlib import Path

import pytest

import sagemem.verify
from sagemem.errors import ClosedResourceError, SageMemError, VersionConflict
from sagemem.verify import (
    CasConflict,
    CommitRecord,
    Deleted,
    HistoryFormatError,
    HistoryRecorder,
    IncompleteOperationError,
    Operation,
    OpKind,
    Outcome,
    ReadHit,
    ReadMiss,
    Unknown,
    Written,
    load_commits,
    load_history,
)
from sagemem.verify.history import outcome_from_dict, outcome_to_dict


def _recorder(agent_id: str = "a1", path: Path | None = None) -> HistoryRecorder:
    """A recorder whose clock ticks 10 ns per reading, starting at 100."""
    ticks = itertools.count(100, 10)
    return HistoryRecorder(agent_id, path=path, clock_ns=lambda: next(ticks))


async def test_completed_read_records_invocation_completion_and_outcome() -> None:
    """A read completed inside the block is recorded with both timestamps and its outcome."""
    recorder = _recorder()
    async with recorder.read("k") as op:
        op.hit({"b": 1}, 3)
    expected = Operation(
        op_id="a1#1",
        agent_id="a1",
        key="k",
        kind=OpKind.READ,
        invoked_at_ns=100,
        completed_at_ns=110,
        outcome=ReadHit({"b": 1}, 3),
    )
    assert (expected,) == recorder.operations


async def test_each_completion_helper_records_its_outcome() -> None:
    """miss, written, conflict and deleted record the outcome they name."""
    recorder = _recorder()
    async with recorder.read("k") as op:
        op.miss()
    async with recorder.write("k", "x") as op:
        op.written(1)
    async with recorder.cas("k", "y", 1) as op:
        op.conflict(2)
    async with recorder.delete("k") as op:
        op.deleted(None)
    outcomes = [op.outcome for op in recorder.operations]
    assert [ReadMiss(), Written(1), CasConflict(2), Deleted(None)] == outcomes
    assert [op.op_id for op in recorder.operations] == ["a1#1", "a1#2", "a1#3", "a1#4"]


async def test_body_that_raises_is_recorded_as_unknown_and_the_error_propagates() -> None:
    """A failed write may or may not have happened: it is recorded as Unknown."""
    recorder = _recorder()
    with pytest.raises(ConnectionResetError):
        async with recorder.write("k", 5):
            raise ConnectionResetError("server went away")
    (op,) = recorder.operations
    assert Unknown("ConnectionResetError: server went away") == op.outcome
    assert op.is_unknown


async def test_cancelled_operation_is_recorded_as_unknown() -> None:
    """Cancellation propagates and leaves an Unknown record."""
    recorder = _recorder()
    entered = asyncio.Event()

    async def body() -> None:
        async with recorder.write("k", 5):
            entered.set()
            await asyncio.Event().wait()

    task = asyncio.create_task(body())
    await asyncio.wait_for(entered.wait(), timeout=5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, timeout=5)
    (op,) = recorder.operations
    assert isinstance(op.outcome, Unknown)
    assert "CancelledError" in op.outcome.reason


async def test_version_conflict_escaping_a_cas_is_recorded_as_a_conflict() -> None:
    """The store answered a cas with VersionConflict: that is a known outcome."""
    recorder = _recorder()
    with pytest.raises(VersionConflict):
        async with recorder.cas("k", "v", None):
            raise VersionConflict("k", expected=None, actual=4)
    (op,) = recorder.operations
    assert CasConflict(4) == op.outcome


async def test_leaving_the_block_without_an_outcome_is_an_error() -> None:
    """Forgetting to complete an operation raises and records it as Unknown."""
    recorder = _recorder()
    with pytest.raises(IncompleteOperationError, match="a1#1"):
        async with recorder.read("k"):
            pass
    (op,) = recorder.operations
    assert op.is_unknown


def test_completing_twice_is_an_error() -> None:
    """An operation has exactly one outcome."""
    recorder = _recorder()
    with recorder.write("k", 1) as op:
        op.written(1)
        with pytest.raises(IncompleteOperationError, match="already completed"):
            op.written(2)
    assert len(recorder.operations) == 1


def test_outcome_that_does_not_fit_the_kind_is_refused() -> None:
    """A write cannot 'hit'; the error names the operation and the allowed outcomes."""
    recorder = _recorder()
    with pytest.raises(HistoryFormatError, match=r"a1#1.*Written"), recorder.write("k", 1) as op:
        op.hit(1, 1)


def test_expected_version_only_on_cas() -> None:
    """A write with an expected version is a recorder misuse, refused at once."""
    recorder = _recorder()
    with pytest.raises(HistoryFormatError, match="only a cas"):
        recorder.operation(OpKind.WRITE, "k", value=1, expected_version=3)


def test_real_clock_orders_invocation_before_completion() -> None:
    """With the default monotonic clock, completion is never before invocation."""
    recorder = HistoryRecorder("real")
    with recorder.read("k") as op:
        op.miss()
    (recorded,) = recorder.operations
    assert recorded.completed_at_ns is not None
    assert recorded.invoked_at_ns <= recorded.completed_at_ns


@pytest.mark.parametrize(
    "outcome",
    [
        ReadHit([1, {"a": None}], 2),
        ReadMiss(),
        Written(7),
        CasConflict(None),
        CasConflict(3),
        Deleted(None),
        Deleted(9),
        Unknown("timeout"),
    ],
)
def test_outcome_round_trips_through_json(outcome: Outcome) -> None:
    """Every outcome survives to_dict, JSON text and from_dict unchanged."""
    assert outcome == outcome_from_dict(json.loads(json.dumps(outcome_to_dict(outcome))))


def test_operation_round_trips_through_json() -> None:
    """A cas operation survives to_dict, JSON text and from_dict unchanged."""
    op = Operation(
        "b#4", "b", "k", OpKind.CAS, 5, 9, Written(3), value={"x": [1]}, expected_version=2
    )
    assert op == Operation.from_dict(json.loads(json.dumps(op.to_dict())))
    assert hash(op) == hash("b#4")


def test_malformed_outcome_record_is_refused_with_the_bad_value() -> None:
    """An unknown outcome type is named in the error."""
    with pytest.raises(HistoryFormatError, match="'teleported'"):
        outcome_from_dict({"type": "teleported"})
    with pytest.raises(HistoryFormatError, match="-1"):
        outcome_from_dict({"type": "written", "version": -1})


def test_streamed_file_keeps_in_flight_operations_as_unknown(tmp_path: Path) -> None:
    """An operation invoked but never completed (process killed) loads as Unknown."""
    path = tmp_path / "a1.jsonl"
    with _recorder(path=path) as recorder:
        with recorder.write("k", "x") as op:
            op.written(1)
        recorder.cas("k", "y", 1)  # the process "dies" before completing this one
    loaded = load_history([path])
    assert [Written(1), Unknown("no completion recorded")] == [op.outcome for op in loaded]
    assert loaded[1].completed_at_ns is None
    assert loaded[1].expected_version == 1
    assert loaded[1].value == "y"


def test_torn_last_line_is_ignored_but_a_torn_middle_line_is_an_error(tmp_path: Path) -> None:
    """SIGKILL can tear only the last line; garbage elsewhere is reported with its line."""
    path = tmp_path / "a1.jsonl"
    with _recorder(path=path) as recorder, recorder.read("k") as op:
        op.miss()
    text = path.read_text()
    path.write_text(text + '{"type": "inv')
    assert [ReadMiss()] == [op.outcome for op in load_history([path])]
    path.write_text('{"type": "inv\n' + text)
    with pytest.raises(HistoryFormatError, match=r"a1\.jsonl:1: not JSON"):
        load_history([path])


def test_histories_of_several_agents_merge_in_invocation_order(tmp_path: Path) -> None:
    """load_history merges files and sorts by invocation time."""
    clock = itertools.count(0, 1)
    paths = [tmp_path / f"{name}.jsonl" for name in ("a", "b")]
    recorders = [HistoryRecorder(p.stem, path=p, clock_ns=lambda: next(clock)) for p in paths]
    with recorders[0].write("k", 1) as first, recorders[1].read("k") as second:
        first.written(1)
        second.hit(1, 1)
    for recorder in recorders:
        recorder.close()
        recorder.close()  # idempotent
    loaded = load_history(paths)
    assert [op.op_id for op in loaded] == ["a#1", "b#1"]


def test_dumped_operations_load_back(tmp_path: Path) -> None:
    """dump() writes whole operation records that load_history reads back."""
    recorder = _recorder()
    with recorder.write("k", [1, 2]) as op:
        op.written(1)
    recorder.dump(tmp_path / "dump.jsonl")
    assert list(recorder.operations) == load_history([tmp_path / "dump.jsonl"])


def test_commit_records_stream_and_load_beside_the_operations(tmp_path: Path) -> None:
    """Commit times reported by the home are kept in the same file and loaded apart."""
    path = tmp_path / "a1.jsonl"
    with _recorder(path=path) as recorder:
        with recorder.write("k", "x") as op:
            op.written(1)
        recorder.commit("k", 1, 105)
        recorder.commit("k", 2, 130, deleted=True)
    expected = [CommitRecord("k", 1, 105), CommitRecord("k", 2, 130, deleted=True)]
    assert load_commits([path]) == expected
    assert list(recorder.commits) == expected
    assert [op.op_id for op in load_history([path])] == ["a1#1"]
    recorder.dump(tmp_path / "dump.jsonl")
    assert load_commits([tmp_path / "dump.jsonl"]) == expected


def test_malformed_commit_record_names_its_line(tmp_path: Path) -> None:
    """A commit record without a version is refused with the file and line."""
    path = tmp_path / "bad.jsonl"
    path.write_text('{"type": "commit", "key": "k", "committed_at_ns": 1, "deleted": false}\n')
    with pytest.raises(HistoryFormatError, match=r"bad\.jsonl:1: commit version"):
        load_commits([path])


def test_duplicate_operation_ids_across_files_are_refused(tmp_path: Path) -> None:
    """Two agents must not share an id: their operations would be confused."""
    for name in ("one", "two"):
        recorder = _recorder("same")
        with recorder.read("k") as op:
            op.miss()
        recorder.dump(tmp_path / f"{name}.jsonl")
    with pytest.raises(HistoryFormatError, match="appears twice"):
        load_history([tmp_path / "one.jsonl", tmp_path / "two.jsonl"])


def test_closed_recorder_refuses_new_operations() -> None:
    """A closed recorder says so instead of silently dropping records."""
    recorder = _recorder()
    recorder.close()
    with pytest.raises(ClosedResourceError, match="closed"):
        recorder.read("k")


def test_errors_are_sagemem_errors() -> None:
    """The recorder's errors derive from SageMemError and the builtin they resemble."""
    assert issubclass(HistoryFormatError, SageMemError)
    assert issubclass(HistoryFormatError, ValueError)
    assert issubclass(IncompleteOperationError, RuntimeError)


def test_verify_package_exports_exactly_its_public_names() -> None:
    """Every name in sagemem.verify.__all__ resolves."""
    for name in sagemem.verify.__all__:
        assert getattr(sagemem.verify, name) is not None, name
