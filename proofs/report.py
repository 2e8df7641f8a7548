"""What every checker returns: a report with a summary and, on a violation, a counterexample."""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["CheckReport", "Counterexample", "TraceStep"]


@dataclass(frozen=True, slots=True)
class TraceStep:
    """One step of a counterexample: the event taken (by whom) and the state it led to."""

    event: str
    state: str


@dataclass(frozen=True, slots=True)
class Counterexample:
    """A shortest known event sequence from an initial state to a violation of `property_name`."""

    property_name: str
    initial_state: str
    steps: tuple[TraceStep, ...]
    explanation: str = ""

    def render(self) -> str:
        """The trace as readable text: the violated property, then one line pair per step."""
        lines = [f"violated: {self.property_name}"]
        if self.explanation:
            lines.append(f"  why: {self.explanation}")
        lines.append(f"  initial: {self.initial_state}")
        for index, step in enumerate(self.steps, start=1):
            lines.append(f"  {index:>3}. {step.event}")
            lines.append(f"       -> {step.state}")
        return "\n".join(lines)


@dataclass(frozen=True, slots=True)
class CheckReport:
    """The outcome of one checker on one protocol definition."""

    checker: str
    ok: bool
    summary: dict[str, int | float | str] = field(default_factory=dict)
    counterexample: Counterexample | None = None
