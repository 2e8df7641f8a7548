"""Each race the protocol fixes comes back, and is caught, when its fix is removed from the table.

Every test builds the mutated table in code (dataclasses.replace over TABLE rows), explores it
with small bounds (2 agents, 2 writes or 1 where that suffices, 1 fault), and asserts the
explorer rejects it with a short counterexample naming the expected property.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import pytest

from proofs.explore import explore
from proofs.report import Counterexample
from sagemem.spec import TABLE, Effect, Event, Guard, L1State, Mode, ProtocolDefinition, Rule


def _edit(predicate: Callable[[Rule], bool], change: Callable[[Rule], Rule]) -> tuple[Rule, ...]:
    table = tuple(change(r) if predicate(r) else r for r in TABLE)
    assert table != TABLE, "the mutation matched no row"
    return table


def _swap(effects: tuple[Effect, ...], old: Effect, new: Effect) -> tuple[Effect, ...]:
    return tuple(new if e is old else e for e in effects)


def _rejected(table: tuple[Rule, ...], mode: Mode, *, writes: int = 2) -> Counterexample:
    defn = ProtocolDefinition(mode=mode, table=table, agents=2, writes=writes, fault_budget=1)
    report = explore(defn)
    assert not report.ok
    assert report.counterexample is not None
    return report.counterexample


def stale_fill_table() -> tuple[Rule, ...]:
    """Without IS_D_I: an invalidation during a fill is noted but the fill still caches."""
    return _edit(
        lambda r: r.source is L1State.IS_D and r.event is Event.DELIVER_INVALIDATE,
        lambda r: dataclasses.replace(r, target=L1State.IS_D),
    )


def l2_set_if_newer_table() -> tuple[Rule, ...]:
    """Writers set L2 if newer (instead of delete) and fills set L2 if newer (no lease)."""
    relayed = _edit(
        lambda r: r.event is Event.OUTBOX_RELAY,
        lambda r: dataclasses.replace(
            r, effects=_swap(r.effects, Effect.L2_DELETE, Effect.L2_SET_IF_NEWER)
        ),
    )
    return tuple(
        dataclasses.replace(
            r, effects=_swap(r.effects, Effect.L2_LEASED_FILL, Effect.L2_FILL_IF_NEWER)
        )
        if Effect.L2_LEASED_FILL in r.effects
        else r
        for r in relayed
    )


def undetected_loss_table() -> tuple[Rule, ...]:
    """The bus drops messages but the listener never notices (no MARK_MISSED)."""
    return _edit(
        lambda r: r.event in (Event.DROP_MESSAGE, Event.DISCONNECT),
        lambda r: dataclasses.replace(
            r, effects=tuple(e for e in r.effects if e is not Effect.MARK_MISSED)
        ),
    )


def no_owner_expiry_table() -> tuple[Rule, ...]:
    """The home never takes ownership away from a crashed or silent owner."""
    return _edit(
        lambda r: r.event is Event.HOME_EXPIRE_OWNER,
        lambda r: dataclasses.replace(r, effects=()),
    )


def unfenced_write_back_table() -> tuple[Rule, ...]:
    """A write-back that lost its grant is applied anyway instead of being fenced."""
    return _edit(
        lambda r: r.source is L1State.MI_A and r.guard is Guard.GRANT_LOST,
        lambda r: dataclasses.replace(r, effects=(Effect.HOME_STORE_UNFENCED,)),
    )


def test_stale_fill_is_caught_without_the_fill_invalidated_state() -> None:
    """A fill racing an invalidation caches a copy the directory no longer lists, so the next
    write's invalidation will never reach it.

    Coherent mode only: a coherent fill may read a committed version before its invalidation is
    relayed. In strict mode the mutant is equivalent: a strict fill reads the home only once the
    write has settled, and data older than the invalidation is refetched by DATA_STALE.
    """
    trace = _rejected(stale_fill_table(), Mode.COHERENT)
    assert trace.property_name == "shared_copies_registered"
    assert len(trace.steps) <= 10
    assert "FILL_DATA" in trace.steps[-1].event
    assert any("DELIVER_INVALIDATE" in step.event for step in trace.steps)


@pytest.mark.parametrize("mode", list(Mode))
def test_l2_going_back_after_eviction_is_caught_with_set_if_newer(mode: Mode) -> None:
    """Set-if-newer lets an old version into L2: a delayed fill after an eviction, or (the
    shorter trace since a revocation gives the home's kept value a new version) the relay of
    a crashed owner's reserved version after its grant was revoked."""
    trace = _rejected(l2_set_if_newer_table(), mode)
    if trace.property_name == "versions_bounded":
        assert "L2 went back" in trace.explanation
        assert any("L2_EVICT" in step.event for step in trace.steps)
    else:
        assert trace.property_name == "stale_copies_covered", trace.explanation
        assert "L2 holds" in trace.explanation
        assert any("HOME_EXPIRE_OWNER" in step.event for step in trace.steps)
        assert "OUTBOX_RELAY" in trace.steps[-1].event
    assert len(trace.steps) <= 10


@pytest.mark.parametrize("mode", list(Mode))
def test_lost_invalidation_is_caught_without_drop_detection(mode: Mode) -> None:
    """A silently dropped invalidation leaves a stale copy with nothing on its way."""
    trace = _rejected(undetected_loss_table(), mode)
    assert trace.property_name == "stale_copies_covered"
    assert any("DROP_MESSAGE" in s.event or "DISCONNECT" in s.event for s in trace.steps)
    assert len(trace.steps) <= 8


@pytest.mark.parametrize("mode", list(Mode))
def test_crashed_owner_blocks_everyone_without_lease_expiry(mode: Mode) -> None:
    """An owner that crashes holding the grant keeps the key owned forever."""
    trace = _rejected(no_owner_expiry_table(), mode, writes=1)
    assert trace.property_name == "quiescence_reachable"
    assert any("CRASH" in step.event for step in trace.steps)
    assert len(trace.steps) <= 5


@pytest.mark.parametrize("mode", list(Mode))
def test_late_write_back_is_caught_without_the_fence(mode: Mode) -> None:
    """An expired owner's late write-back stores its old value under the home's newer
    version (the revocation's, or a write-through's): that version now names two values."""
    trace = _rejected(unfenced_write_back_table(), mode)
    assert trace.property_name == "version_names_one_value"
    assert "the home stores" in trace.explanation
    assert any("LEASE_LAPSE" in step.event for step in trace.steps)
    assert any("HOME_EXPIRE_OWNER" in step.event for step in trace.steps)
    assert len(trace.steps) <= 12
