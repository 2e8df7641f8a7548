"""Hypothesis stateful tests over the protocol specification (`sagemem.spec`).

`protocol_machine(defn)` builds a `RuleBasedStateMachine` with ONE named rule per protocol
event (`read`, `deliver_invalidate`, `fill_data`, ...), each drawing the agent it happens to.
A rule's precondition is the table's: the event is enabled for some agent in the current
state (the interpreter's `transitions()` decides, so guards, refusals and bounds all apply).
After every step each invariant of the mode runs as its own `@invariant()`; the ghost checks
(monotonic reads, read-your-writes, linearizable reads in strict mode, no acknowledged write
lost) are among them. A failure shrinks into a short script of named events, and the
assertion message carries the interpreter's labels and states.

Sizing (measured on the shared 2-core machine): `PROTOCOL_SETTINGS` (200 examples x 40 steps)
takes about 3-12 s per mode at 3 agents, 2 writes, 3 faults per run. The mutant test uses a fixed
seed (`derandomize`) so it never depends on luck: it finds the stale fill within 3-5 s and
spends about 12 s shrinking it to the 6-step script (about 15-20 s in all).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from sagemem.spec.invariants import Invariant, invariants_for
from sagemem.spec.model import (
    ProtocolDefinition,
    State,
    Transition,
    describe,
    initial_state,
    transitions,
)
from sagemem.spec.vocabulary import Event, Mode
from tests.property.strategies import (
    MUTANT_SETTINGS,
    PROTOCOL_SETTINGS,
    agent_indexes,
    random_testing_bounds,
    variant_indexes,
    without_stale_fill_fix,
)


class ProtocolMachineBase(RuleBasedStateMachine):
    """The global state of one key, advanced one table row at a time."""

    definition: ProtocolDefinition

    def __init__(self) -> None:
        super().__init__()
        self.state: State = initial_state(self.definition)
        self.labels: list[str] = []
        self._enabled: dict[Event, list[Transition]] = {}
        self._refresh()

    def _refresh(self) -> None:
        enabled: dict[Event, list[Transition]] = {}
        for t in transitions(self.definition, self.state):
            enabled.setdefault(t.event, []).append(t)
        self._enabled = enabled

    def is_enabled(self, event: Event) -> bool:
        """Some agent (or actor) can take `event` now."""
        return event in self._enabled

    def take(self, event: Event, agent: int, variant: int) -> None:
        """Take `event` at `agent` (or the next agent that has it enabled), variant `variant`."""
        options = self._enabled[event]
        n = self.definition.agents

        def distance(t: Transition) -> int:
            return 0 if t.agent is None else (t.agent - agent) % n

        nearest = min(distance(t) for t in options)
        mine = [t for t in options if distance(t) == nearest]
        chosen = mine[variant % len(mine)]
        self.state = chosen.target
        self.labels.append(chosen.label)
        self._refresh()

    def explain(self, text: str) -> str:
        """An assertion message: the violation, the steps taken, and the final state."""
        steps = "\n".join(f"  {i:>3}. {label}" for i, label in enumerate(self.labels, 1))
        return f"{text}\nsteps:\n{steps}\nstate: {describe(self.state)}"


def _event_rule(defn: ProtocolDefinition, event: Event) -> Callable[..., None]:
    def step(self: ProtocolMachineBase, agent: int, variant: int) -> None:
        self.take(event, agent, variant)

    step.__name__ = step.__qualname__ = event.value

    def enabled(self: ProtocolMachineBase) -> bool:
        return self.is_enabled(event)

    decorated: Callable[..., None] = rule(agent=agent_indexes(defn), variant=variant_indexes())(
        precondition(enabled)(step)
    )
    return decorated


def _invariant_check(inv: Invariant) -> Callable[[ProtocolMachineBase], None]:
    def check(self: ProtocolMachineBase) -> None:
        text = inv.check(self.definition, self.state)
        assert text is None, self.explain(f"{inv.name} violated: {text}")

    check.__name__ = check.__qualname__ = inv.name
    decorated: Callable[[ProtocolMachineBase], None] = invariant()(check)
    return decorated


def protocol_machine(defn: ProtocolDefinition) -> type[ProtocolMachineBase]:
    """A state machine class over `defn`: one rule per event, one invariant per property."""
    namespace: dict[str, Any] = {"definition": defn}
    for event in Event:
        namespace[event.value] = _event_rule(defn, event)
    for inv in invariants_for(defn.mode):
        namespace[inv.name] = _invariant_check(inv)
    name = f"ProtocolMachine_{defn.mode.value}"
    return type(name, (ProtocolMachineBase,), namespace)


@pytest.mark.parametrize("mode", list(Mode), ids=lambda mode: mode.value)
def test_every_event_script_keeps_the_invariants(mode: Mode) -> None:
    """Random scripts of named events (3 agents, 2 writes, 3 faults) never break an invariant."""
    run_state_machine_as_test(
        protocol_machine(random_testing_bounds(mode)), settings=PROTOCOL_SETTINGS
    )


def test_machine_has_one_named_rule_per_event() -> None:
    """Every protocol event is a rule of its own, so failures read as event scripts."""
    machine = protocol_machine(random_testing_bounds(Mode.COHERENT))
    names = {
        name
        for name, member in inspect.getmembers(machine)
        if hasattr(member, "hypothesis_stateful_rule")
    }
    assert {event.value for event in Event} == names


def test_machine_finds_the_stale_fill_when_its_fix_is_removed() -> None:
    """Without the IS_D -> IS_D_I fix, the machine finds a stale copy left uncovered."""
    small = ProtocolDefinition(mode=Mode.COHERENT, agents=2, writes=1, fault_budget=1)
    mutated = without_stale_fill_fix(small)
    with pytest.raises(AssertionError, match="violated") as failure:
        run_state_machine_as_test(protocol_machine(mutated), settings=MUTANT_SETTINGS)
    assert "deliver_invalidate" in str(failure.value).lower()
