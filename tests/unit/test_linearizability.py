"""The per-key linearizability checker on hand-made histories, good and bad."""

from __future__ import annotations

import itertools

import pytest

from sagemem.errors import SageMemError
from sagemem.values import JSONValue
from sagemem.verify import (
    CasConflict,
    Deleted,
    KeyState,
    LinearizabilityResult,
    Operation,
    OpKind,
    ReadHit,
    ReadMiss,
    SearchBoundExceeded,
    Unknown,
    VersionRule,
    Written,
    check_history,
    check_linearizable,
)

_ids = itertools.count(1)


def _op(
    agent: str,
    kind: OpKind,
    span: tuple[int, int | None],
    outcome: ReadHit | ReadMiss | Written | CasConflict | Deleted | Unknown,
    *,
    value: JSONValue = None,
    expected: int | None = None,
    key: str = "k",
) -> Operation:
    return Operation(
        op_id=f"{agent}#{next(_ids)}",
        agent_id=agent,
        key=key,
        kind=kind,
        invoked_at_ns=span[0],
        completed_at_ns=span[1],
        outcome=outcome,
        value=value,
        expected_version=expected,
    )


def read(agent: str, start: int, end: int, value: JSONValue, version: int) -> Operation:
    return _op(agent, OpKind.READ, (start, end), ReadHit(value, version))


def miss(agent: str, start: int, end: int) -> Operation:
    return _op(agent, OpKind.READ, (start, end), ReadMiss())


def write(agent: str, start: int, end: int, value: JSONValue, version: int) -> Operation:
    return _op(agent, OpKind.WRITE, (start, end), Written(version), value=value)


def cas(
    agent: str, start: int, end: int, expected: int | None, value: JSONValue, result: int | str
) -> Operation:
    """A cas; `result` is the new version, or 'conflict:N' / 'conflict:absent'."""
    if isinstance(result, int):
        outcome: Written | CasConflict = Written(result)
    else:
        actual = result.removeprefix("conflict:")
        outcome = CasConflict(None if actual == "absent" else int(actual))
    return _op(agent, OpKind.CAS, (start, end), outcome, value=value, expected=expected)


def delete(agent: str, start: int, end: int, version: int | None) -> Operation:
    return _op(agent, OpKind.DELETE, (start, end), Deleted(version))


def unknown_write(agent: str, start: int, value: JSONValue) -> Operation:
    return _op(agent, OpKind.WRITE, (start, None), Unknown("timeout"), value=value)


def unknown_cas(agent: str, start: int, expected: int | None, value: JSONValue) -> Operation:
    return _op(agent, OpKind.CAS, (start, None), Unknown("killed"), value=value, expected=expected)


def assert_linearizable(result: LinearizabilityResult) -> None:
    assert result.ok, result.message
    assert result.culprit is None


def assert_blames(result: LinearizabilityResult, culprit: Operation) -> None:
    assert not result.ok
    assert result.culprit == culprit, result.message
    assert result.involved[0] == culprit
    assert culprit.op_id in result.message


# Linearizable histories.


def test_empty_history_is_linearizable() -> None:
    """No operations: trivially linearizable."""
    assert_linearizable(check_linearizable([]))


def test_sequential_write_then_read_is_linearizable_and_returns_the_order() -> None:
    """The witness order is the one real time imposes."""
    w, r = write("a", 0, 10, "x", 1), read("b", 20, 30, "x", 1)
    result = check_linearizable([r, w])
    assert_linearizable(result)
    assert result.linearization == (w, r)


def test_concurrent_writes_and_reads_with_several_valid_orders() -> None:
    """Overlapping writes; concurrent reads may see the old or either new value."""
    history = [
        write("a", 0, 100, "x", 1),
        write("b", 10, 110, "y", 2),
        miss("c", 5, 50),  # before both writes took effect
        read("d", 20, 120, "x", 1),  # between them
        read("c", 60, 130, "y", 2),  # after both
        read("e", 115, 140, "y", 2),
    ]
    assert_linearizable(check_linearizable(history))


def test_read_overlapping_a_write_may_see_the_old_value_and_a_later_one_the_new() -> None:
    """Old value seen during the write, new value after it completed."""
    history = [
        write("a", 0, 10, "old", 1),
        write("a", 20, 60, "new", 2),
        read("b", 30, 40, "old", 1),
        read("c", 35, 45, "new", 2),
        read("b", 70, 80, "new", 2),
    ]
    assert_linearizable(check_linearizable(history))


def test_cas_race_one_wins_one_conflicts() -> None:
    """Two concurrent creates: one gets version 1, the other a conflict reporting it."""
    history = [
        cas("a", 0, 50, None, "a", 1),
        cas("b", 0, 50, None, "b", "conflict:1"),
        read("c", 60, 70, "a", 1),
        cas("b", 80, 90, 1, "b2", 2),
        cas("c", 85, 95, 1, "c2", "conflict:2"),
    ]
    assert_linearizable(check_linearizable(history))


def test_delete_recreate_and_misses() -> None:
    """A delete leaves a tombstone version; re-creation continues the version sequence."""
    history = [
        write("a", 0, 10, "x", 1),
        delete("a", 20, 30, 2),
        miss("b", 40, 50),
        delete("b", 55, 58, None),  # nothing to delete
        cas("b", 60, 70, 1, "stale", "conflict:absent"),
        cas("c", 80, 90, None, "again", 3),
        read("a", 100, 110, "again", 3),
    ]
    assert_linearizable(check_linearizable(history))


def test_unknown_write_may_take_effect_after_its_failure_was_observed() -> None:
    """A timed-out write may land later: reads before see the old value, reads after the new."""
    history = [
        write("a", 0, 10, "x", 1),
        unknown_write("b", 20, "lost?"),
        read("c", 30, 40, "x", 1),
        read("c", 50, 60, "lost?", 2),
        write("a", 70, 80, "z", 3),
    ]
    assert_linearizable(check_linearizable(history))


def test_unknown_write_may_never_take_effect() -> None:
    """A crashed write nobody observed is allowed to have never happened."""
    history = [
        write("a", 0, 10, "x", 1),
        unknown_cas("b", 5, 1, "never"),
        write("a", 20, 30, "y", 2),
        read("c", 40, 50, "y", 2),
    ]
    assert_linearizable(check_linearizable(history))


def test_unknown_write_fills_a_version_gap() -> None:
    """Version 2 is nobody's known write: a crashed write must have created it."""
    history = [write("a", 0, 10, "x", 1), unknown_write("b", 5, "u"), write("a", 20, 30, "z", 3)]
    assert_linearizable(check_linearizable(history))
    without = [op for op in history if not op.is_unknown]
    assert_blames(check_linearizable(without), without[1])


def test_unknown_delete_explains_a_later_miss() -> None:
    """A crashed delete may have happened: a later miss is then legal."""
    unknown_delete = _op("b", OpKind.DELETE, (20, None), Unknown("killed"))
    history = [write("a", 0, 10, "x", 1), unknown_delete, miss("c", 30, 40)]
    assert_linearizable(check_linearizable(history))


def test_value_of_an_unknown_write_at_the_wrong_version_is_detected() -> None:
    """An unknown write creates the next version, not any version."""
    wrong = read("c", 40, 50, "u", 5)
    history = [write("a", 0, 10, "x", 1), unknown_write("b", 20, "u"), wrong]
    assert_blames(check_linearizable(history), wrong)


def test_failed_read_is_ignored() -> None:
    """A read with an unknown outcome changes and reveals nothing."""
    history = [
        write("a", 0, 10, "x", 1),
        _op("b", OpKind.READ, (20, None), Unknown("cancelled")),
    ]
    result = check_linearizable(history)
    assert_linearizable(result)
    assert result.operation_count == 1


def test_initial_state_is_respected() -> None:
    """A history starting from a live key at version 4."""
    history = [read("a", 0, 10, "seed", 4), write("a", 20, 30, "next", 5)]
    assert_linearizable(
        check_linearizable(history, initial=KeyState(exists=True, version=4, value="seed"))
    )
    assert not check_linearizable(history).ok


def test_values_compare_as_json_regardless_of_dict_order() -> None:
    """A dict read back with its keys in another order is the same value."""
    history = [write("a", 0, 10, {"p": 1, "q": [2]}, 1), read("b", 20, 30, {"q": [2], "p": 1}, 1)]
    assert_linearizable(check_linearizable(history))


# Histories that are not linearizable.


def test_stale_read_after_a_completed_write_is_detected() -> None:
    """A read invoked after a write completed must not see the older version."""
    stale = read("c", 40, 50, "x", 1)
    history = [write("a", 0, 10, "x", 1), write("b", 20, 30, "y", 2), stale]
    result = check_linearizable(history)
    assert_blames(result, stale)
    assert "version 2" in result.message


def test_miss_after_a_completed_write_is_detected() -> None:
    """A miss after a completed creation is a stale read of the absent key."""
    stale = miss("b", 20, 30)
    assert_blames(check_linearizable([write("a", 0, 10, "x", 1), stale]), stale)


def test_lost_update_through_cas_is_detected() -> None:
    """A second cas from the same expected version cannot succeed after the first completed."""
    lost = cas("b", 30, 40, 1, "b", 3)
    history = [write("a", 0, 5, "x", 1), cas("a", 10, 20, 1, "a", 2), lost]
    assert_blames(check_linearizable(history), lost)


def test_two_operations_creating_the_same_version_are_detected() -> None:
    """Concurrent cas that both claim version 2: one update was lost."""
    first, second = cas("a", 10, 20, 1, "a", 2), cas("b", 12, 22, 1, "b", 2)
    result = check_linearizable([write("a", 0, 5, "x", 1), first, second])
    assert not result.ok
    assert {first, second} == set(result.involved)
    assert "lost update" in result.message


def test_read_of_a_value_never_written_is_detected() -> None:
    """A read cannot return a value no operation wrote."""
    ghost = read("b", 20, 30, "ghost", 1)
    result = check_linearizable([write("a", 0, 10, "x", 1), ghost])
    assert_blames(result, ghost)
    assert "no operation wrote" in result.message


def test_version_going_backwards_is_detected() -> None:
    """An agent reading version 2 and later version 1 saw time go backwards."""
    backwards = read("c", 60, 70, "x", 1)
    history = [
        write("a", 0, 10, "x", 1),
        write("b", 5, 30, "y", 2),
        read("c", 40, 50, "y", 2),
        backwards,
    ]
    assert_blames(check_linearizable(history), backwards)


def test_cas_conflict_reporting_the_wrong_version_is_detected() -> None:
    """A conflict must report the version actually there."""
    wrong = cas("b", 20, 30, 5, "v", "conflict:7")
    assert_blames(check_linearizable([write("a", 0, 10, "x", 1), wrong]), wrong)


def test_read_cannot_see_an_unknown_write_invoked_after_it_completed() -> None:
    """An unknown outcome may take effect only after its invocation."""
    early = read("a", 0, 10, "later", 1)
    assert_blames(check_linearizable([early, unknown_write("b", 20, "later")]), early)


def test_version_below_the_initial_one_is_detected() -> None:
    """Versions only grow: a write creating version 2 after version 4 is impossible."""
    low = write("a", 0, 10, "x", 2)
    result = check_linearizable([low], initial=KeyState(exists=True, version=4, value="s"))
    assert_blames(result, low)


def test_skipped_version_is_rejected_when_consecutive_and_accepted_when_increasing() -> None:
    """The version rule is explicit: consecutive versions are the L3 home's contract."""
    jump = write("a", 20, 30, "y", 3)
    history = [write("a", 0, 10, "x", 1), jump]
    assert_blames(check_linearizable(history), jump)
    assert_linearizable(check_linearizable(history, version_rule=VersionRule.INCREASING))


def test_increasing_rule_still_orders_writes_by_version() -> None:
    """Under the increasing rule a later write cannot create a smaller version."""
    first, second = write("a", 0, 10, "x", 5), write("b", 20, 30, "y", 2)
    result = check_linearizable([first, second], version_rule=VersionRule.INCREASING)
    assert not result.ok
    # Version 2 must come before version 5, but real time puts it after: the search stops at
    # the first of the two that cannot take effect.
    assert result.culprit == first, result.message


def test_increasing_rule_with_an_unknown_write_of_unknown_version() -> None:
    """An unknown write's version is only bounded below; a later read pins it."""
    history = [
        write("a", 0, 10, "x", 1),
        unknown_write("b", 20, "u"),
        read("c", 30, 40, "u", 7),
        write("a", 50, 60, "z", 8),
    ]
    assert_linearizable(check_linearizable(history, version_rule=VersionRule.INCREASING))
    assert not check_linearizable(history).ok


# The API around the search.


def test_check_history_checks_each_key_alone() -> None:
    """Keys are independent: one bad key does not taint another."""
    good = [_op("a", OpKind.WRITE, (0, 10), Written(1), value=1, key="good")]
    bad_read = _op("b", OpKind.READ, (20, 30), ReadMiss(), key="bad")
    bad = [_op("a", OpKind.WRITE, (0, 10), Written(1), value=1, key="bad"), bad_read]
    results = check_history(good + bad)
    assert sorted(results) == ["bad", "good"]
    assert results["good"].ok
    assert_blames(results["bad"], bad_read)


def test_one_key_at_a_time() -> None:
    """check_linearizable refuses a multi-key history and points to check_history."""
    ops = [
        _op("a", OpKind.READ, (0, 1), ReadMiss(), key="k1"),
        _op("a", OpKind.READ, (0, 1), ReadMiss(), key="k2"),
    ]
    with pytest.raises(ValueError, match="check_history"):
        check_linearizable(ops)


def test_search_bound_raises_a_clear_error() -> None:
    """Past max_configurations the checker refuses to guess."""
    history = [write("a", 10 * i, 10 * i + 5, i, i) for i in range(1, 20)]
    with pytest.raises(SearchBoundExceeded, match="max_configurations") as raised:
        check_linearizable(history, max_configurations=5)
    assert isinstance(raised.value, SageMemError)
    assert raised.value.configurations == 5


def test_unknown_window_bounds_when_a_failed_write_may_land() -> None:
    """With unknown_window_ns, a failed write takes effect soon after its invocation or never."""
    history = [
        write("a", 0, 10, "x", 1),
        unknown_write("b", 20, "u"),
        read("c", 50, 60, "x", 1),
        read("c", 100, 110, "u", 2),
    ]
    assert_linearizable(check_linearizable(history))
    assert_linearizable(check_linearizable(history, unknown_window_ns=30))
    late = check_linearizable(history, unknown_window_ns=20)
    assert not late.ok
    with pytest.raises(ValueError, match="unknown_window_ns"):
        check_linearizable(history, unknown_window_ns=-1)


def test_many_interchangeable_unknown_writes_are_refuted_without_trying_each() -> None:
    """Failed writes nobody read are interchangeable: one per gap is tried, not every one."""
    history = [unknown_write(f"u{i}", 0, f"unread-{i}") for i in range(40)]
    for gap in range(20):
        start = 100 * (gap + 1)
        history.append(write("a", start, start + 10, f"known-{gap}", 2 * gap + 2))
    stale = read("c", 5000, 5010, "known-0", 2)
    result = check_linearizable([*history, stale])
    assert_blames(result, stale)
    assert result.configurations < 1_000


def test_failure_explanation_names_the_prefix_and_state() -> None:
    """The explanation gives the longest legal prefix and the state it leaves."""
    w1, w2 = write("a", 0, 10, "x", 1), write("b", 20, 30, "y", 2)
    stale = read("c", 40, 50, "x", 1)
    result = check_linearizable([w1, w2, stale])
    assert result.linearization == (w1, w2)
    assert w2 in result.involved
    assert "'y' at version 2" in result.message
