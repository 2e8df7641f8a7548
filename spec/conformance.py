"""Trace validation against the model: is each step production took one the model takes?

A production agent records, for every row it executes, its local view before and after (L1
state, what the entry waits for, whether the bus missed messages, the operation in progress),
the event, the guard that held and the effects. It cannot record the servers' or the other
agents' state, so a step is validated by projection: `model_steps(defn)` explores every state
the model (`sagemem.spec.model.transitions`, the pure successor function, not the production
core) can reach within the definition's bounds and collects each agent step as the same local
record.
A production step with no equal among them is a divergence: production reached a local
situation the model never reaches, or took a different row, target or effect list there.

`divergences(mode, steps)` checks a whole trace, also that consecutive steps of one key chain
(each starts where the previous one ended). The exploration takes a few seconds per bound and
is cached per (table, refusals, mode, bounds).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from functools import cache
from typing import NamedTuple

from .model import (
    ProtocolDefinition,
    Request,
    State,
    canonical,
    initial_state,
    quick,
    transitions,
)
from .vocabulary import Effect, Event, Guard, L1State, Mode

__all__ = ["LocalStep", "divergences", "model_steps"]


class LocalStep(NamedTuple):
    """One agent step as the agent itself sees it."""

    source: L1State
    request: Request
    missed: bool
    operation: int
    event: Event
    guard: Guard
    target: L1State
    target_request: Request
    target_missed: bool
    target_operation: int
    effects: tuple[Effect, ...]

    def describe(self) -> str:
        """One line: `S [req=NONE missed=False op=1] --READ/always--> S [...] {effects}`."""

        def view(state: L1State, request: Request, missed: bool, op: int) -> str:
            return f"{state.name} [req={request.name} missed={missed} op={op}]"

        effects = ", ".join(e.value for e in self.effects)
        return (
            f"{view(self.source, self.request, self.missed, self.operation)} "
            f"--{self.event.name}/{self.guard.value}--> "
            f"{view(self.target, self.target_request, self.target_missed, self.target_operation)}"
            f" {{{effects}}}"
        )


def _explore(defn: ProtocolDefinition) -> frozenset[LocalStep]:
    start = canonical(initial_state(defn))
    seen: set[State] = {start}
    frontier = [start]
    steps: set[LocalStep] = set()
    while frontier:
        following: list[State] = []
        for state in frontier:
            for step in transitions(defn, state):
                a = step.agent
                if step.rule is not None and a is not None:
                    before, after = state.agents[a], step.target.agents[a]
                    steps.add(
                        LocalStep(
                            before.st,
                            before.req,
                            before.missed,
                            before.op,
                            step.event,
                            step.rule.guard,
                            after.st,
                            after.req,
                            after.missed,
                            after.op,
                            step.rule.effects,
                        )
                    )
                if step.target.violation:
                    continue
                reached = canonical(step.target)
                if reached not in seen:
                    seen.add(reached)
                    following.append(reached)
        frontier = following
    return frozenset(steps)


@cache
def _cached(defn: ProtocolDefinition) -> frozenset[LocalStep]:
    return _explore(defn)


def model_steps(definitions: Sequence[ProtocolDefinition]) -> frozenset[LocalStep]:
    """Every agent step the model takes in a reachable state of any of `definitions`."""
    found: frozenset[LocalStep] = frozenset()
    for defn in definitions:
        found |= _cached(defn)
    return found


def divergences(
    mode: Mode,
    steps: Iterable[tuple[str, LocalStep]],
    *,
    definitions: Sequence[ProtocolDefinition] | None = None,
) -> list[str]:
    """The steps of a production trace ((key, step) in order) the model never takes, and the
    breaks in a key's chain of states; empty when the trace conforms. `definitions` default to
    the mode's quick bounds."""
    allowed = model_steps(quick(mode) if definitions is None else definitions)
    found: list[str] = []
    last: dict[str, L1State] = {}
    for index, (key, step) in enumerate(steps):
        previous = last.get(key)
        if previous is not None and previous is not step.source:
            found.append(
                f"step {index} on {key!r} starts in {step.source.name}, but the previous step "
                f"on that key ended in {previous.name}: {step.describe()}"
            )
        if step not in allowed:
            found.append(f"step {index} on {key!r}: the model never takes {step.describe()}")
        last[key] = step.target
    return found
