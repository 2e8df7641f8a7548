"""The Markdown report and PNG plots of `benchmarks.run_all`, made from its results JSON.

Pure presentation: every number comes from the results (`summary` and `cells`); nothing is
measured here.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

__all__ = ["HEADLINE_WORKLOAD", "format_report", "write_report"]

HEADLINE_WORKLOAD: Final = "read95-uniform"
MACHINE_NOTE: Final = (
    "Absolute numbers on a shared machine move from run to run; the ratios against the "
    "uncached store, measured in the same repetition, are what to compare."
)


def _fmt(value: float | None, digits: int = 0, suffix: str = "") -> str:
    if value is None:
        return "-"
    return f"{value:,.{digits}f}{suffix}"


def _spread(entry: dict[str, float] | None, digits: int = 0, suffix: str = "") -> str:
    if entry is None:
        return "-"
    return (
        f"{_fmt(entry['median'], digits, suffix)} "
        f"({_fmt(entry['min'], digits)}-{_fmt(entry['max'], digits)})"
    )


def _latency(entry: dict[str, Any], kind: str) -> str:
    figures = entry["latency_us"].get(kind)
    if figures is None:
        return "-"
    return f"{figures['p50']:,.0f} / {figures['p99']:,.0f}"


def _rows(summary: Sequence[dict[str, Any]], workload: str, agents: int) -> list[dict[str, Any]]:
    return [e for e in summary if e["workload"] == workload and e["agents"] == agents]


def _sent_delivered(entry: dict[str, Any]) -> str:
    sent, delivered = entry.get("messages_to_holders"), entry.get("messages_delivered")
    if sent is None or delivered is None:
        return "-"
    losses = entry.get("bus_losses")
    return f"{sent} / {delivered}" + (f" ({losses} losses detected)" if losses else "")


def _workload_table(entries: Sequence[dict[str, Any]]) -> list[str]:
    kinds = sorted({kind for e in entries for kind in e["latency_us"]})
    lines = [
        "| system | ops/s median (min-max) | x uncached (min-max) | "
        + " | ".join(f"{kind} p50/p99 us" for kind in kinds)
        + " | stale reads (max age ms) | stale after run | L1 hit rate | msgs/op | msgs/write"
        " | msgs to holders / delivered | Redis RT/op | PG RT/op | Redis cmds/op (server)"
        " | agent CPU us/op |",
        "|---|---:|---:|" + "---:|" * len(kinds) + "---:|" * 10,
    ]
    for e in entries:
        stale = f"{e['stale_reads']} of {e['reads']} ({e['stale_max_age_ms']:.1f})"
        hit = None if e["l1_hit_rate"] is None else 100 * e["l1_hit_rate"]
        lines.append(
            f"| {e['system']} | {_spread(e['ops_s'])} | {_spread(e['ratio_vs_baseline'], 2, 'x')}"
            " | "
            + " | ".join(_latency(e, kind) for kind in kinds)
            + f" | {stale} | {e['final_stale']} of {e['final_reads']} | {_fmt(hit, 1, ' %')}"
            f" | {_fmt(e['messages_per_op'], 2)} | {_fmt(e['messages_per_write'], 2)}"
            f" | {_sent_delivered(e)}"
            f" | {_fmt(e['redis_round_trips_per_op'], 2)}"
            f" | {_fmt(e['postgres_round_trips_per_op'], 2)}"
            f" | {_fmt(e['redis_commands_per_op'], 2)}"
            f" | {_fmt(e.get('client_cpu_us_per_op'), 0)} |"
        )
    return lines


def format_report(results: dict[str, Any], plots: Sequence[str]) -> str:
    """The report's Markdown text."""
    options = results["options"]
    summary = results["summary"]
    agents = options["agents"]
    environment = results["environment"]
    lines = [
        "# sagemem agent workloads (`benchmarks.run_all`)",
        "",
        f"Profile `{options['profile']}`: {agents} agent processes, {options['repetitions']} "
        f"repetition(s), {options['warmup_s']} s warm-up + {options['duration_s']} s timed per "
        f"workload run, seed {options['seed']}; scaling sweep: "
        f"{options['scaling'] or 'none'}"
        + (
            f" ({options.get('scaling_repetitions', 1)} repetition(s) each)"
            if options["scaling"]
            else ""
        )
        + f". Took {results['elapsed_s']} s.",
        "",
        f"Environment: Python {environment['python']}, {environment['machine']}, "
        f"{environment['redis_server']}, PostgreSQL {environment['postgres_server']}. "
        + MACHINE_NOTE,
        "",
    ]
    headline = {e["system"]: e for e in _rows(summary, HEADLINE_WORKLOAD, agents)}
    if headline:
        lines += [
            f"## Headline: {agents} agents, 95/5, 100 uniform keys",
            "",
            "| system | ops/s median | x uncached Postgres (min-max over repetitions) |",
            "|---|---:|---:|",
        ]
        for system, e in headline.items():
            lines.append(
                f"| {system} | {_fmt(e['ops_s']['median'])} | "
                f"{_spread(e['ratio_vs_baseline'], 2, 'x')} |"
            )
        lines.append("")
    lines += [
        "## Per workload",
        "",
        "Latencies are per operation (a search is the pgvector query alone; the reads of its "
        "hits count as reads). A read is stale when a write of a newer version of its key had "
        'returned before the read began; its age is how long before. "Stale after run": every '
        "agent's read of every key written in the run, once it stopped. RT: round "
        "trips counted in the agents' drivers. msgs: coherence messages received by the agents "
        "(invalidations and recalls; for the broadcast variant, every broadcast). Msgs to "
        "holders / delivered: over the whole run, once settled, the messages sagemem's relays "
        "sent to registered holders plus the recalls sent, and how many the agents received "
        "(equal unless pub/sub lost one). Agent CPU: the agent processes' own CPU time (user and "
        "system) per operation in the timed window, servers not included.",
        "",
    ]
    workloads = list(dict.fromkeys(e["workload"] for e in summary if e["agents"] == agents))
    for workload in workloads:
        lines += [f"### {workload}", "", *_workload_table(_rows(summary, workload, agents)), ""]
    scaling = sorted({e["agents"] for e in summary if e["workload"] == HEADLINE_WORKLOAD})
    if len(scaling) > 1:
        systems = list(dict.fromkeys(e["system"] for e in summary))
        lines += [
            f"## Scaling ({HEADLINE_WORKLOAD}): ops/s median and x uncached",
            "",
            "| agents | " + " | ".join(systems) + " |",
            "|---:|" + "---:|" * len(systems),
        ]
        for count in scaling:
            by_system = {e["system"]: e for e in _rows(summary, HEADLINE_WORKLOAD, count)}
            cells = []
            for system in systems:
                found = by_system.get(system)
                if found is None:
                    cells.append("-")
                    continue
                ratio = found["ratio_vs_baseline"]
                cells.append(
                    f"{_fmt(found['ops_s']['median'])}"
                    + (f" ({ratio['median']:.2f}x)" if ratio else "")
                )
            lines.append(f"| {count} | " + " | ".join(cells) + " |")
        lines.append("")
    problems = [
        (cell["workload"], cell["system"], cell["agents"], problem)
        for cell in results["cells"]
        for problem in cell["problems"]
    ]
    lines += ["## Problems", ""]
    if problems:
        lines += [
            f"- {workload} on {system}, {count} agents: {problem}"
            for workload, system, count, problem in problems
        ]
    else:
        lines.append(
            "None: every read of every system returned the value committed as the version it "
            "reported, and no version was committed twice."
        )
    lines.append("")
    if plots:
        lines += ["## Plots", ""] + [f"![{Path(p).stem}]({p})" for p in plots] + [""]
    return "\n".join(lines)


def _plots(results: dict[str, Any], out: Path) -> list[str]:
    """Draw the PNGs into `out`; return their file names."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    summary = results["summary"]
    agents = results["options"]["agents"]
    systems = list(dict.fromkeys(e["system"] for e in summary))
    workloads = list(dict.fromkeys(e["workload"] for e in summary if e["agents"] == agents))
    width = 0.8 / max(len(systems), 1)
    names: list[str] = []

    def grouped(metric: str, title: str, ylabel: str, file: str, *, log: bool = False) -> None:
        figure, axes = plt.subplots(figsize=(max(6, 1.6 * len(workloads)), 4))
        for offset, system in enumerate(systems):
            values = []
            for workload in workloads:
                e = next(
                    (x for x in _rows(summary, workload, agents) if x["system"] == system), None
                )
                value = None if e is None else e[metric]
                if isinstance(value, dict):
                    value = value["median"]
                values.append(value if value is not None else 0.0)
            positions = [i + offset * width for i in range(len(workloads))]
            axes.bar(positions, values, width, label=system)
        axes.set_xticks([i + 0.4 - width / 2 for i in range(len(workloads))], workloads)
        axes.tick_params(axis="x", labelrotation=20)
        axes.set_title(title)
        axes.set_ylabel(ylabel)
        if log:
            axes.set_yscale("log")
        axes.legend(fontsize="small")
        figure.tight_layout()
        figure.savefig(out / file, dpi=100)
        plt.close(figure)
        names.append(file)

    grouped("ops_s", f"throughput, {agents} agents (median)", "ops/s", "throughput.png", log=True)
    grouped("stale_reads", "stale reads (all repetitions)", "reads", "stale_reads.png")
    grouped("l1_hit_rate", "L1 hit rate (median)", "fraction of reads", "l1_hit_rate.png")
    grouped(
        "messages_per_write",
        "coherence messages received per write (median)",
        "messages",
        "messages.png",
    )
    grouped("redis_round_trips_per_op", "Redis round trips per operation", "RT/op", "redis_rt.png")
    grouped(
        "postgres_round_trips_per_op", "Postgres round trips per operation", "RT/op", "pg_rt.png"
    )
    figure, grid = plt.subplots(2, 2, figsize=(11, 8))
    for row, operation in enumerate(("read", "write")):
        for side, quantile in enumerate(("p50", "p99")):
            axes = grid[row][side]
            for offset, system in enumerate(systems):
                values = []
                for workload in workloads:
                    e = next(
                        (x for x in _rows(summary, workload, agents) if x["system"] == system),
                        None,
                    )
                    kind = "update" if workload == "counter" else operation
                    figures = None if e is None else e["latency_us"].get(kind)
                    values.append(0.0 if figures is None else figures[quantile])
                axes.bar(
                    [i + offset * width for i in range(len(workloads))],
                    values,
                    width,
                    label=system,
                )
            axes.set_xticks([i + 0.4 - width / 2 for i in range(len(workloads))], workloads)
            axes.tick_params(axis="x", labelrotation=30, labelsize="small")
            axes.set_yscale("log")
            axes.set_title(f"{operation} latency {quantile} (update for counter), us")
    grid[0][0].legend(fontsize="small")
    figure.tight_layout()
    figure.savefig(out / "latency.png", dpi=100)
    plt.close(figure)
    names.append("latency.png")
    counts = sorted({e["agents"] for e in summary if e["workload"] == HEADLINE_WORKLOAD})
    if len(counts) > 1:
        figure, axes = plt.subplots(figsize=(6, 4))
        for system in systems:
            points = [
                (count, e["ops_s"]["median"])
                for count in counts
                for e in _rows(summary, HEADLINE_WORKLOAD, count)
                if e["system"] == system
            ]
            axes.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=system)
        axes.set_xscale("log", base=2)
        axes.set_xlabel("agent processes")
        axes.set_ylabel("ops/s (median)")
        axes.set_title(f"scaling, {HEADLINE_WORKLOAD}")
        axes.legend(fontsize="small")
        figure.tight_layout()
        figure.savefig(out / "scaling.png", dpi=100)
        plt.close(figure)
        names.append("scaling.png")
    return names


def write_report(results: dict[str, Any], out: Path) -> Path:
    """Write `report.md` and its plots into `out`; return the report's path."""
    plots = _plots(results, out)
    path = out / "report.md"
    path.write_text(format_report(results, plots))
    return path
