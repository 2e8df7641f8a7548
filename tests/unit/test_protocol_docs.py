"""The generated blocks of docs/coherence-protocol.md match the table they were drawn from."""

from __future__ import annotations

import dataclasses

import pytest

from proofs.diagrams import (
    DOCUMENT_PATH,
    GeneratedBlockError,
    generated_blocks,
    mermaid_state_diagram,
    replace_generated_blocks,
)
from sagemem.spec.table import REFUSALS, TABLE, RefusalKind
from sagemem.spec.vocabulary import Event, Guard, L1State, Mode


def test_committed_generated_blocks_match_the_table() -> None:
    """Fails when the table changed but `python -m proofs.diagrams --write` was not run."""
    text = DOCUMENT_PATH.read_text(encoding="utf-8")
    regenerated = replace_generated_blocks(text, generated_blocks(TABLE))
    assert regenerated == text, (
        "docs/coherence-protocol.md is stale; run `uv run python -m proofs.diagrams --write`"
    )


def test_a_changed_row_changes_the_diagram() -> None:
    """The staleness check can fail: retargeting one row changes the generated diagram."""
    index = next(
        i
        for i, rule in enumerate(TABLE)
        if rule.source is L1State.IS_D
        and rule.target is L1State.IS_D_I
        and Mode.COHERENT in rule.modes
    )
    mutated = list(TABLE)
    mutated[index] = dataclasses.replace(TABLE[index], target=L1State.S)
    original = mermaid_state_diagram(TABLE, Mode.COHERENT)
    assert mermaid_state_diagram(tuple(mutated), Mode.COHERENT) != original


def test_diagram_has_an_edge_for_every_state_changing_l1_row() -> None:
    """Every L1 row that changes state appears as an edge of its mode's diagram."""
    for mode in Mode:
        diagram = mermaid_state_diagram(TABLE, mode)
        for rule in TABLE:
            if mode not in rule.modes or not isinstance(rule.source, L1State):
                continue
            if rule.source is rule.target:
                assert f"`{rule.source.name}`:" in diagram
            else:
                assert f"    {rule.source.name} --> {rule.target.name} : " in diagram


def test_replace_generated_blocks_rejects_unknown_and_missing_blocks() -> None:
    """A marker naming an unknown block, or a block without markers, is an error."""
    blocks = {"rows": "table"}
    with pytest.raises(GeneratedBlockError, match="unknown"):
        replace_generated_blocks(
            "<!-- BEGIN GENERATED: nope -->\nx\n<!-- END GENERATED -->\n", blocks
        )
    with pytest.raises(GeneratedBlockError, match="no markers"):
        replace_generated_blocks("no markers here\n", blocks)


def test_replace_generated_blocks_keeps_the_text_around_the_blocks() -> None:
    """Only the text between the markers is replaced."""
    text = "intro\n<!-- BEGIN GENERATED: rows -->\nold\n<!-- END GENERATED -->\noutro\n"
    expected = "intro\n<!-- BEGIN GENERATED: rows -->\nnew\n<!-- END GENERATED -->\noutro\n"
    assert expected == replace_generated_blocks(text, {"rows": "new"})


def test_a_changed_refusal_kind_makes_the_docs_stale() -> None:
    """The generated docs include the refusals: turning (S, READ, CONN_MISSED) from STALLED
    into NOT_APPLICABLE changes the committed document."""
    refusals = tuple(
        dataclasses.replace(f, kind=RefusalKind.NOT_APPLICABLE)
        if f.source is L1State.S and f.event is Event.READ and f.guard is Guard.CONN_MISSED
        else f
        for f in REFUSALS
    )
    assert refusals != REFUSALS
    text = DOCUMENT_PATH.read_text(encoding="utf-8")
    assert replace_generated_blocks(text, generated_blocks(TABLE, refusals)) != text
    assert "| S | READ | CONN_MISSED | STALLED |" in text
