"""Latency samples and the table the benchmarks print (median, p95, p99, ratio to a baseline)."""

from __future__ import annotations

import statistics
from dataclasses import dataclass

__all__ = ["LatencySummary", "format_table", "summarise"]


@dataclass(frozen=True, slots=True)
class LatencySummary:
    """Percentiles of one operation's latency samples, in microseconds."""

    name: str
    samples: int
    median_us: float
    p95_us: float
    p99_us: float


def _percentile(ordered: list[float], fraction: float) -> float:
    return ordered[min(len(ordered) - 1, int(len(ordered) * fraction))]


def summarise(name: str, samples_ns: list[int]) -> LatencySummary:
    """Median, p95 and p99 of `samples_ns` (nanoseconds) in microseconds."""
    if not samples_ns:
        raise ValueError(f"no samples for {name!r}")
    ordered = sorted(sample / 1000 for sample in samples_ns)
    return LatencySummary(
        name=name,
        samples=len(ordered),
        median_us=statistics.median(ordered),
        p95_us=_percentile(ordered, 0.95),
        p99_us=_percentile(ordered, 0.99),
    )


def format_table(rows: list[tuple[LatencySummary, LatencySummary | None]]) -> str:
    """A Markdown table: one row per operation, with its ratio over its baseline's median."""
    lines = [
        "| operation | median us | p95 us | p99 us | baseline | ratio (median) |",
        "|---|---:|---:|---:|---|---:|",
    ]
    for summary, baseline in rows:
        ratio = f"{summary.median_us / baseline.median_us:.2f}x" if baseline else ""
        lines.append(
            f"| {summary.name} | {summary.median_us:.2f} | {summary.p95_us:.2f} | "
            f"{summary.p99_us:.2f} | {baseline.name if baseline else ''} | {ratio} |"
        )
    return "\n".join(lines)
