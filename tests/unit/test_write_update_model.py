"""Write-update in the model: the rows are explored like every other row, edits of them are
rejected with a trace, and the reason strict mode has no update rows is a trace too."""

from __future__ import annotations

import dataclasses

import pytest

from proofs.explore import explore, unfired_rows
from sagemem.spec.model import ProtocolDefinition, quick
from sagemem.spec.table import TABLE, Rule
from sagemem.spec.vocabulary import Effect, Event, Guard, L1State, Mode

SMALL = {"agents": 2, "writes": 1, "fault_budget": 1, "write_update": True}


def _row(event: Event, source: object, guard: Guard | None = None) -> int:
    for index, rule in enumerate(TABLE):
        if rule.event is event and rule.source is source and guard in (None, rule.guard):
            return index
    raise AssertionError(f"no row for {event} in {source}")


def _with(index: int, effects: tuple[Effect, ...]) -> tuple[Rule, ...]:
    return tuple(
        dataclasses.replace(r, effects=effects) if i == index else r for i, r in enumerate(TABLE)
    )


def test_the_checked_definitions_offer_the_update_relay_and_fire_the_update_rows() -> None:
    """The quick definitions turn write-update on; at small bounds the real table passes and
    the update relay and every update row but MI_A's fire (MI_A's needs an owner that was a
    holder, a write-back and a write-through in one run: it fires at the quick bounds, 2
    agents/2 writes with a fault, measured 2026-12-07)."""
    definitions = (*quick(Mode.COHERENT), *quick(Mode.STRICT))
    assert all(d.write_update for d in definitions)
    small = (
        ProtocolDefinition(
            mode=Mode.COHERENT, agents=2, writes=2, fault_budget=0, write_update=True
        ),
        ProtocolDefinition(
            mode=Mode.COHERENT, agents=2, writes=1, fault_budget=1, write_update=True
        ),
    )
    for defn in small:
        assert explore(defn).ok
    unfired = [
        (r.source, r.event)
        for r in unfired_rows(small)
        if r.event in (Event.DELIVER_UPDATE, Event.OUTBOX_RELAY_UPDATE)
    ]
    assert unfired == [(L1State.MI_A, Event.DELIVER_UPDATE)]


@pytest.mark.parametrize(
    ("name", "table", "properties"),
    [
        (
            "an update that does not install its value",
            _with(
                _row(Event.DELIVER_UPDATE, L1State.S, Guard.INV_NEWER),
                effects=(Effect.NOTE_INVALIDATION,),
            ),
            {"fill_respects_invalidations", "stale_copies_covered"},
        ),
        (
            "a late update installed over a newer copy",
            _with(
                _row(Event.DELIVER_UPDATE, L1State.S, Guard.INV_NOT_NEWER),
                effects=(Effect.NOTE_INVALIDATION, Effect.INSTALL_UPDATE),
            ),
            {"fill_respects_invalidations", "monotonic_reads_and_read_your_writes"},
        ),
        (
            "an update relay that keeps the L2 copy",
            _with(
                _row(
                    Event.OUTBOX_RELAY_UPDATE,
                    next(r.source for r in TABLE if r.event is Event.OUTBOX_RELAY_UPDATE),
                ),
                effects=(Effect.PUBLISH_UPDATES, Effect.HOME_CLEAR_OUTBOX),
            ),
            {"stale_copies_covered"},
        ),
    ],
)
def test_a_broken_update_row_is_rejected_with_a_trace(
    name: str, table: tuple[Rule, ...], properties: set[str]
) -> None:
    """Each edit of a write-update row breaks a property the explorer names, with its trace."""
    defn = ProtocolDefinition(mode=Mode.COHERENT, table=table, **SMALL)  # type: ignore[arg-type]
    report = explore(defn)
    if report.ok:  # a late update needs two writes
        report = explore(dataclasses.replace(defn, writes=2, fault_budget=0))
    assert not report.ok, name
    assert report.counterexample is not None
    assert report.counterexample.property_name in properties, report.counterexample
    assert any("UPDATE" in step.event for step in report.counterexample.steps)
