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
is cached per definition; a step the quick bounds do not take is looked for at wider bounds
(more faults, more writes) before it is called a divergence.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from functools import cache
from typing import Final, NamedTuple

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


WIDER_BOUNDS: Final[tuple[tuple[int, int, int], ...]] = ((2, 1, 3), (2, 2, 2))
"""(agents, writes, faults) explored, in this order and only when needed, for a step the quick
bounds do not take: production runs with several faults (a restart and a lapse, lost replies)
reach local situations that need a larger fault budget than the quick checks use."""


def _wider(mode: Mode) -> Iterator[ProtocolDefinition]:
    for agents, writes, faults in WIDER_BOUNDS:
        yield ProtocolDefinition(mode=mode, agents=agents, writes=writes, fault_budget=faults)


def divergences(
    mode: Mode,
    steps: Iterable[tuple[str, LocalStep]],
    *,
    definitions: Sequence[ProtocolDefinition] | None = None,
) -> list[str]:
    """The steps of a production trace ((key, step) in order) the model never takes, and the
    breaks in a key's chain of states; empty when the trace conforms. `definitions` default to
    the mode's quick bounds, widened (`WIDER_BOUNDS`, explored only if a step needs them)."""
    allowed = model_steps(quick(mode) if definitions is None else definitions)
    wider: Iterator[ProtocolDefinition] = iter(()) if definitions is not None else _wider(mode)
    found: list[str] = []
    last: dict[str, L1State] = {}
    for index, (key, step) in enumerate(steps):
        previous = last.get(key)
        if previous is not None and previous is not step.source:
            found.append(
                f"step {index} on {key!r} starts in {step.source.name}, but the previous step "
                f"on that key ended in {previous.name}: {step.describe()}"
            )
        while step not in allowed:
            defn = next(wider, None)
            if defn is None:
                found.append(f"step {index} on {key!r}: the model never takes {step.describe()}")
                break
            allowed = allowed | _cached(defn)
        last[key] = step.target
    return found
