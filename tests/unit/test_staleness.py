"""Stale reads, staleness ages and session guarantees of the coherent mode, by hand-made cases."""

from __future__ import annotations

import itertools

import pytest

from sagemem.values import JSONValue
from sagemem.verify import (
    CommitRecord,
    Deleted,
    Operation,
    OpKind,
    ReadHit,
    ReadMiss,
    SessionGuarantee,
    Unknown,
    Written,
    analyze_staleness,
    check_invalidation_coverage,
)

_ids = itertools.count(1)


def _op(
    agent: str,
    kind: OpKind,
    start: int,
    end: int | None,
    outcome: ReadHit | ReadMiss | Written | Deleted | Unknown,
    value: JSONValue = None,
    key: str = "k",
) -> Operation:
    return Operation(f"{agent}#{next(_ids)}", agent, key, kind, start, end, outcome, value=value)


def read(agent: str, start: int, end: int, version: int, key: str = "k") -> Operation:
    return _op(agent, OpKind.READ, start, end, ReadHit(f"v{version}", version), key=key)


def miss(agent: str, start: int, end: int) -> Operation:
    return _op(agent, OpKind.READ, start, end, ReadMiss())


def write(agent: str, start: int, end: int, version: int, key: str = "k") -> Operation:
    return _op(agent, OpKind.WRITE, start, end, Written(version), f"v{version}", key=key)


def delete(agent: str, start: int, end: int, version: int) -> Operation:
    return _op(agent, OpKind.DELETE, start, end, Deleted(version))


def test_fresh_reads_are_not_stale() -> None:
    """Reads of the latest committed version, or concurrent with a newer write, are fresh."""
    history = [
        write("a", 0, 10, 1),
        read("b", 20, 30, 1),
        write("a", 40, 60, 2),
        read("b", 45, 55, 1),  # invoked before version 2 committed
        read("b", 70, 80, 2),
    ]
    report = analyze_staleness(history)
    assert report.stale_reads == ()
    assert report.read_count == 3
    assert report.max_staleness_ns == 0
    assert report.stale_read_rate == 0.0


def test_stale_read_is_reported_with_its_age() -> None:
    """A read of version 1 invoked 30 ns after version 2 committed is 30 ns stale."""
    stale = read("c", 50, 60, 1)
    history = [write("a", 0, 10, 1), write("b", 15, 20, 2), read("c", 30, 40, 2), stale]
    report = analyze_staleness(history)
    (found,) = report.stale_reads
    assert found.read == stale
    assert (found.observed_version, found.newer_version) == (1, 2)
    assert (found.newer_committed_at_ns, found.age_ns) == (20, 30)
    assert report.max_staleness_ns == 30
    assert report.stale_read_rate == 0.5
    assert "1 stale (50.00%)" in report.summary()


def test_explicit_commit_records_tighten_the_age() -> None:
    """The home's commit time, earlier than the write's completion, is used."""
    history = [write("a", 0, 10, 1), write("b", 15, 40, 2), read("c", 50, 60, 1)]
    report = analyze_staleness(history, [CommitRecord("k", 2, 25)])
    assert report.stale_reads[0].age_ns == 25


def test_a_later_version_bounds_the_commit_of_an_earlier_one() -> None:
    """Version 2 committed before version 3 did, even if its own write completed late."""
    history = [
        write("a", 0, 10, 1),
        write("b", 15, 100, 2),  # its completion was observed late
        write("c", 20, 30, 3),  # but version 3 committed by 30, so version 2 did too
        read("d", 40, 50, 1),
    ]
    (found,) = analyze_staleness(history).stale_reads
    assert (found.newer_version, found.newer_committed_at_ns, found.age_ns) == (2, 30, 10)


def test_miss_after_a_committed_write_is_stale() -> None:
    """Not seeing a key that exists is a stale read of its absence."""
    stale = miss("b", 20, 30)
    (found,) = analyze_staleness([write("a", 0, 10, 1), stale]).stale_reads
    assert found.read == stale
    assert found.observed_version is None
    assert found.age_ns == 10


def test_miss_after_a_delete_is_fresh_but_before_it_is_stale_after_recreation() -> None:
    """A miss reflects the newest tombstone it could have seen."""
    history = [
        write("a", 0, 10, 1),
        delete("a", 20, 30, 2),
        miss("b", 40, 50),  # fresh: the tombstone is the latest
        write("a", 60, 70, 3),
        miss("b", 80, 90),  # stale: version 3 committed by 70
    ]
    (found,) = analyze_staleness(history).stale_reads
    assert (found.newer_version, found.age_ns) == (3, 10)


def test_unknown_reads_are_not_judged() -> None:
    """A read with an unknown outcome counts neither as a read nor as stale."""
    lost = _op("b", OpKind.READ, 20, None, Unknown("timeout"))
    report = analyze_staleness([write("a", 0, 10, 1), lost])
    assert (report.read_count, report.stale_reads) == (0, ())


def test_keys_are_judged_separately() -> None:
    """A newer version of another key does not make a read stale."""
    history = [write("a", 0, 10, 1, key="x"), write("a", 20, 30, 2, key="x"), read("b", 40, 50, 1)]
    history.append(write("a", 0, 5, 1))
    assert analyze_staleness(history).stale_reads == ()


def test_coverage_accepts_stale_reads_within_the_delivery_bound() -> None:
    """A stale read younger than the delivery bound is covered by an in-flight invalidation."""
    history = [write("a", 0, 10, 1), write("b", 15, 20, 2), read("c", 50, 60, 1)]
    report = analyze_staleness(history)
    assert check_invalidation_coverage(report, max_staleness_ns=30) == ()


def test_coverage_reports_stale_reads_past_the_delivery_bound() -> None:
    """A stale read older than the bound means an invalidation was lost or late."""
    stale = read("c", 50, 60, 1)
    report = analyze_staleness([write("a", 0, 10, 1), write("b", 15, 20, 2), stale])
    (uncovered,) = check_invalidation_coverage(report, max_staleness_ns=29)
    assert uncovered.stale.read == stale
    assert stale.op_id in uncovered.reason
    assert "29 ns" in uncovered.reason


def test_coverage_reports_any_stale_read_once_quiescent() -> None:
    """Once the workload stopped, even a young stale read is a violation."""
    stale = read("c", 50, 60, 1)
    report = analyze_staleness([write("a", 0, 10, 1), write("b", 15, 20, 2), stale])
    (uncovered,) = check_invalidation_coverage(
        report, max_staleness_ns=1_000, quiescent_since_ns=45
    )
    assert "quiescent" in uncovered.reason
    assert check_invalidation_coverage(report, max_staleness_ns=1_000, quiescent_since_ns=55) == ()


def test_coverage_refuses_a_negative_bound() -> None:
    """A negative delivery bound is a caller error."""
    with pytest.raises(ValueError, match="-1"):
        check_invalidation_coverage(analyze_staleness([]), max_staleness_ns=-1)


def test_monotonic_reads_violation_names_both_reads() -> None:
    """An agent reading version 2 and then version 1 breaks monotonic reads."""
    first, second = read("c", 30, 40, 2), read("c", 50, 60, 1)
    history = [write("a", 0, 10, 1), write("b", 15, 20, 2), first, second]
    (violation,) = analyze_staleness(history).monotonic_read_violations
    assert violation.guarantee is SessionGuarantee.MONOTONIC_READS
    assert (violation.read, violation.earlier) == (second, first)
    assert second.op_id in violation.message
    assert first.op_id in violation.message


def test_monotonic_reads_concern_one_agent_and_completed_reads_only() -> None:
    """Another agent's newer read, or an overlapping read of the same agent, is no constraint."""
    history = [
        write("a", 0, 10, 1),
        write("b", 15, 20, 2),
        read("c", 30, 40, 2),
        read("d", 50, 60, 1),  # another agent: stale, but not a session violation
        read("d", 70, 100, 2),
        read("d", 80, 90, 1),  # overlaps the previous read of d
    ]
    report = analyze_staleness(history)
    assert report.monotonic_read_violations == ()
    assert len(report.stale_reads) == 2


def test_monotonic_miss_is_allowed_only_after_a_delete() -> None:
    """After reading version 2, a miss is fine only if a newer tombstone may exist."""
    bad_miss = miss("c", 50, 60)
    history = [write("a", 0, 10, 1), read("c", 20, 30, 1), bad_miss]
    (violation,) = analyze_staleness(history).monotonic_read_violations
    assert violation.read == bad_miss
    deleted = [
        write("a", 0, 10, 1),
        read("c", 20, 30, 1),
        delete("a", 40, 55, 2),
        miss("c", 50, 60),
    ]
    assert analyze_staleness(deleted).monotonic_read_violations == ()


def test_read_your_writes_violation_names_the_write() -> None:
    """An agent that wrote version 2 must not then read version 1."""
    own = write("a", 15, 20, 2)
    stale = read("a", 30, 40, 1)
    history = [write("b", 0, 10, 1), own, stale]
    (violation,) = analyze_staleness(history).read_your_writes_violations
    assert violation.guarantee is SessionGuarantee.READ_YOUR_WRITES
    assert (violation.read, violation.earlier) == (stale, own)
    assert own.op_id in violation.message


def test_read_your_writes_after_own_delete_and_own_write() -> None:
    """After its own delete an agent must miss; after its own write it must not miss."""
    after_delete = read("a", 40, 50, 1)
    after_write = miss("a", 80, 90)
    history = [
        write("a", 0, 10, 1),
        delete("a", 20, 30, 2),
        after_delete,
        write("a", 60, 70, 3),
        after_write,
    ]
    violations = analyze_staleness(history).read_your_writes_violations
    assert [v.read for v in violations] == [after_delete, after_write]


def test_read_your_writes_allows_a_miss_after_another_agents_delete() -> None:
    """Someone else deleted the key after our write: missing it is fine."""
    history = [write("a", 0, 10, 1), delete("b", 20, 30, 2), miss("a", 40, 50)]
    report = analyze_staleness(history)
    assert report.read_your_writes_violations == ()
    assert report.stale_reads == ()


def test_unknown_writes_do_not_set_a_session_floor() -> None:
    """A write that may not have happened does not oblige the agent to see it."""
    lost = _op("a", OpKind.WRITE, 15, None, Unknown("timeout"), "v2")
    history = [write("b", 0, 10, 1), lost, read("a", 30, 40, 1)]
    assert analyze_staleness(history).read_your_writes_violations == ()
