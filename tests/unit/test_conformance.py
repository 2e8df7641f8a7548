"""Trace validation against the model (sagemem.spec.conformance): the projection of the model's
reachable agent steps accepts the steps the model takes and rejects ones it never takes."""

from __future__ import annotations

import dataclasses

import pytest

from sagemem.spec import conformance
from sagemem.spec.conformance import LocalStep, divergences, model_steps
from sagemem.spec.model import ProtocolDefinition, Request
from sagemem.spec.table import TABLE
from sagemem.spec.vocabulary import Effect, Event, Guard, L1State, Mode

SMALL = (ProtocolDefinition(mode=Mode.COHERENT, agents=2, writes=1, fault_budget=1),)


def _read_miss() -> LocalStep:
    """An invalid entry's read: I -> IS_D, waiting for the fill."""
    rule = next(r for r in TABLE if r.source is L1State.I and r.event is Event.READ)
    assert isinstance(rule.target, L1State)
    return LocalStep(
        L1State.I,
        Request.NONE,
        False,
        0,
        Event.READ,
        rule.guard,
        rule.target,
        Request.FILL,
        False,
        1,
        rule.effects,
    )


def test_a_read_miss_is_a_step_the_model_takes() -> None:
    """The first step of every read is among the model's steps, and a trace of it conforms."""
    step = _read_miss()
    assert step in model_steps(SMALL)
    assert divergences(Mode.COHERENT, [("k", step)], definitions=SMALL) == []


def test_a_step_to_another_target_or_with_other_effects_diverges() -> None:
    """Changing the target, the request after, or the effects makes a divergence."""
    step = _read_miss()
    wrong = [
        step._replace(target=L1State.S),
        step._replace(target_request=Request.NONE),
        step._replace(effects=(*step.effects, Effect.SEND_ACK)),
        step._replace(guard=Guard.CONN_MISSED),
    ]
    for bad in wrong:
        found = divergences(Mode.COHERENT, [("k", bad)], definitions=SMALL)
        assert len(found) == 1, bad
        assert "the model never takes" in found[0]
        assert bad.source.name in found[0]


def test_a_broken_chain_of_states_is_reported() -> None:
    """Two steps of one key where the second does not start where the first ended."""
    step = _read_miss()
    found = divergences(Mode.COHERENT, [("k", step), ("k", step)], definitions=SMALL)
    assert any("starts in I" in line and "ended in IS_D" in line for line in found)
    other_key = divergences(Mode.COHERENT, [("k", step), ("j", step)], definitions=SMALL)
    assert other_key == []


def test_a_mutated_table_changes_what_the_model_takes() -> None:
    """The projection is computed from the definition's table: with the read row's target
    changed, the spec's read miss is no longer a model step."""
    step = _read_miss()
    mutated = tuple(
        dataclasses.replace(r, target=L1State.IS_D_I)
        if r.source is L1State.I and r.event is Event.READ
        else r
        for r in TABLE
    )
    defn = (dataclasses.replace(SMALL[0], table=mutated),)
    assert step not in model_steps(defn)
    assert step._replace(target=L1State.IS_D_I) in model_steps(defn)


def test_a_step_beyond_the_quick_bounds_is_looked_for_at_wider_bounds(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A strict copy that missed messages and then lapses needs two faults: the quick bounds
    (one fault) never take that step; with a wider bound it conforms, without it diverges."""
    lapse = LocalStep(
        L1State.S,
        Request.NONE,
        True,
        0,
        Event.LEASE_LAPSE,
        Guard.ALWAYS,
        L1State.I,
        Request.NONE,
        True,
        0,
        (Effect.LEASE_LAPSED, Effect.DROP_COPY),
    )
    monkeypatch.setattr(conformance, "WIDER_BOUNDS", ())
    found = divergences(Mode.STRICT, [("k", lapse)])
    assert len(found) == 1
    assert "LEASE_LAPSE" in found[0]
    monkeypatch.setattr(conformance, "WIDER_BOUNDS", ((2, 1, 2),))
    assert divergences(Mode.STRICT, [("k", lapse)]) == []
