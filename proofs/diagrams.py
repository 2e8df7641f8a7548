"""Mermaid state diagrams and the row listing of `docs/coherence-protocol.md`, drawn from the table.

Every transition of the protocol is a row of `sagemem.spec.table.TABLE`; this module turns the
rows into the per-agent L1 state machine of each mode (a Mermaid `stateDiagram-v2`, which renders
where the repository is browsed) and into a Markdown table, and writes them into the document
between `<!-- BEGIN GENERATED: name -->` and `<!-- END GENERATED -->` markers. Nothing in those
blocks is edited by hand: `uv run python -m proofs.diagrams --write` regenerates them and
`tests/unit/test_protocol_docs.py` fails when the committed blocks no longer match the table.

Standard library only; the only I/O is reading and writing the document in `main`.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from sagemem.spec.invariants import INVARIANTS
from sagemem.spec.table import REFUSALS, TABLE, Refusal, RefusalKind, Rule
from sagemem.spec.vocabulary import L1_STATE_MEANING, Guard, L1State, Mode

__all__ = [
    "DOCUMENT_PATH",
    "GeneratedBlockError",
    "generated_blocks",
    "invariants_list",
    "main",
    "mermaid_state_diagram",
    "replace_generated_blocks",
    "rows_markdown_table",
    "states_list",
]

DOCUMENT_PATH = Path(__file__).resolve().parent.parent / "docs" / "coherence-protocol.md"

_BEGIN = re.compile(r"<!-- BEGIN GENERATED: (?P<name>[a-z0-9-]+) -->\n")
_END = "<!-- END GENERATED -->"


class GeneratedBlockError(ValueError):
    """The document's generated-block markers are malformed or name an unknown block."""


def _edge_label(rule: Rule) -> str:
    if rule.guard is Guard.ALWAYS:
        return rule.event.name
    return f"{rule.event.name} [{rule.guard.name}]"


def mermaid_state_diagram(rules: Iterable[Rule], mode: Mode) -> str:
    """The per-agent L1 state machine of `mode`: a Mermaid `stateDiagram-v2` plus its self-loops.

    Only rows whose source is an L1 state are drawn (the shared actors' rows are in the row
    table). One edge per (source, target) pair that changes state, labelled with every event
    (and guard other than ALWAYS) that takes it, one per line, in table order. Rows that stay in
    their state would bury the diagram in loops, so they follow it as a list per state.
    """
    edges: dict[tuple[L1State, L1State], list[str]] = {}
    loops: dict[L1State, list[str]] = {}
    for rule in rules:
        if mode not in rule.modes or not isinstance(rule.source, L1State):
            continue
        if not isinstance(rule.target, L1State):
            continue
        label = _edge_label(rule)
        if rule.source is rule.target:
            labels = loops.setdefault(rule.source, [])
        else:
            labels = edges.setdefault((rule.source, rule.target), [])
        if label not in labels:
            labels.append(label)
    lines = ["```mermaid", "stateDiagram-v2", f"    [*] --> {L1State.I.name}"]
    for (source, target), labels in sorted(edges.items()):
        lines.append(f"    {source.name} --> {target.name} : {'<br>'.join(labels)}")
    lines.append("```")
    if loops:
        lines.append("")
        lines.append(f"Rows that stay in their state ({mode.value} mode):")
        lines.append("")
        for state, labels in sorted(loops.items()):
            lines.append(f"- `{state.name}`: {', '.join(labels)}")
    return "\n".join(lines)


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def rows_markdown_table(rules: Sequence[Rule]) -> str:
    """Every row of the table as a Markdown table, numbered as in `TABLE` (from 0)."""
    header = "| # | source | event | guard | target | effects | modes | note |"
    lines = [header, "|---|---|---|---|---|---|---|---|"]
    for index, rule in enumerate(rules):
        effects = ", ".join(effect.name for effect in rule.effects) or "—"
        modes = ", ".join(sorted(mode.value for mode in rule.modes))
        cells = [
            str(index),
            rule.source.name,
            rule.event.name,
            rule.guard.name,
            rule.target.name,
            effects,
            modes,
            rule.note,
        ]
        lines.append("| " + " | ".join(_cell(cell) for cell in cells) + " |")
    return "\n".join(lines)


_REFUSAL_EFFECT = {
    RefusalKind.STALLED: "held: fed again once the entry moves (a read or write waits)",
    RefusalKind.NOT_APPLICABLE: (
        "no-op: a message is dropped; a read or write of a stable entry returns None at once; "
        "a user operation on a busy entry is queued"
    ),
    RefusalKind.IMPOSSIBLE: "a protocol error: the checkers report reaching it",
}


def refusals_markdown_table(refusals: Sequence[Refusal]) -> str:
    """Every refusal as a Markdown table: (state, event, guard), its kind and its reason,
    preceded by what each kind makes production do."""
    lines = [f"- `{kind.name}`: {_REFUSAL_EFFECT[kind]}" for kind in RefusalKind]
    lines += ["", "| source | event | guard | kind | modes | reason |", "|---|---|---|---|---|---|"]
    for refusal in refusals:
        modes = ", ".join(sorted(mode.value for mode in refusal.modes))
        cells = [
            refusal.source.name,
            refusal.event.name,
            "any" if refusal.guard is None else refusal.guard.name,
            refusal.kind.name,
            modes,
            refusal.reason,
        ]
        lines.append("| " + " | ".join(_cell(cell) for cell in cells) + " |")
    return "\n".join(lines)


def states_list() -> str:
    """Every L1 state with its meaning, stable states first."""
    return "\n".join(f"- `{state.name}`: {L1_STATE_MEANING[state]}" for state in L1State)


def invariants_list() -> str:
    """Every invariant of `sagemem.spec.invariants`, in checking order, with its modes."""
    lines = []
    for invariant in INVARIANTS:
        modes = ", ".join(mode.value for mode in Mode if mode in invariant.modes)
        lines.append(f"- `{invariant.name}` ({modes}): {invariant.statement}")
    return "\n".join(lines)


def generated_blocks(
    rules: Sequence[Rule] = TABLE, refusals: Sequence[Refusal] = REFUSALS
) -> dict[str, str]:
    """The content of every generated block of the document, by block name."""
    blocks = {f"diagram-{mode.value}": mermaid_state_diagram(rules, mode) for mode in Mode}
    blocks["rows"] = rows_markdown_table(rules)
    blocks["refusals"] = refusals_markdown_table(refusals)
    blocks["states"] = states_list()
    blocks["invariants"] = invariants_list()
    return blocks


def replace_generated_blocks(text: str, blocks: Mapping[str, str]) -> str:
    """`text` with the content between each block's markers replaced by `blocks[name]`.

    Raises `GeneratedBlockError` when a marker is unclosed, names a block `blocks` lacks, or a
    block of `blocks` has no markers in the text (so a renamed block cannot silently go stale).
    """
    out: list[str] = []
    position = 0
    seen: set[str] = set()
    while (begin := _BEGIN.search(text, position)) is not None:
        name = begin.group("name")
        end = text.find(_END, begin.end())
        if end < 0:
            raise GeneratedBlockError(
                f"generated block {name!r} has no closing {_END!r}; add it after the block"
            )
        if name not in blocks:
            raise GeneratedBlockError(
                f"generated block {name!r} is unknown; known blocks: {sorted(blocks)}"
            )
        out.append(text[position : begin.end()])
        out.append(blocks[name] + "\n")
        seen.add(name)
        position = end
    out.append(text[position:])
    missing = sorted(set(blocks) - seen)
    if missing:
        raise GeneratedBlockError(
            f"the document has no markers for generated blocks {missing}; add "
            "'<!-- BEGIN GENERATED: name -->' and '<!-- END GENERATED -->' lines for each"
        )
    return "".join(out)


def main(argv: Sequence[str] | None = None) -> int:
    """Check (default) or rewrite (`--write`) the generated blocks of the protocol document."""
    parser = argparse.ArgumentParser(
        prog="python -m proofs.diagrams",
        description="Regenerate the diagrams and row table in docs/coherence-protocol.md.",
    )
    parser.add_argument(
        "--write", action="store_true", help="rewrite the document (default: only check it)"
    )
    parser.add_argument("--path", type=Path, default=DOCUMENT_PATH, help="the document")
    args = parser.parse_args(argv)
    text = args.path.read_text(encoding="utf-8")
    updated = replace_generated_blocks(text, generated_blocks())
    if updated == text:
        print(f"{args.path}: generated blocks are up to date")
        return 0
    if args.write:
        args.path.write_text(updated, encoding="utf-8")
        print(f"{args.path}: generated blocks rewritten")
        return 0
    print(
        f"{args.path}: generated blocks are stale; run `uv run python -m proofs.diagrams --write`",
        file=sys.stderr,
    )
    return 1


if __name__ == "__main__":
    raise SystemExit(main())
