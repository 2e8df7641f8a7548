"""The semantic tier guesses which cached word counts a new query may use, without a server."""

from __future__ import annotations

from sagemem.tiers.dram import _known_stems


def test_known_stems_finds_cached_stems_that_prefix_the_query_words() -> None:
    """English stems are prefixes of their words, or a prefix plus 'i' ('studies' -> 'studi');
    cached lexemes the query cannot hold are left out, in sorted order."""
    known = {stem: (1, 0.0) for stem in ("studi", "comet", "trip", "violin", "happi")}
    assert _known_stems("Studies of COMETS, happy trips", known) == [
        "comet",
        "happi",
        "studi",
        "trip",
    ]
    assert _known_stems("", known) == []
    assert _known_stems("orchard", known) == []


def test_known_stems_looks_at_a_bounded_part_of_a_long_query() -> None:
    """A huge query costs bounded work: words past its first 2,000 characters are not looked
    up (the server counts them instead)."""
    known = {"comet": (1, 0.0), "violin": (1, 0.0)}
    text = "comet " + "x" * 5000 + " violin"
    assert _known_stems(text, known) == ["comet"]
