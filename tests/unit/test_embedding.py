"""The deterministic hashing embedder: stable, unit-length, and closer for texts sharing words."""

from __future__ import annotations

import math

import pytest

from sagemem.embedding import DIMENSIONS_MAX, Embedder, HashingEmbedder
from sagemem.errors import ConfigurationError


def _cosine_distance(a: list[float], b: list[float]) -> float:
    return 1.0 - math.fsum(x * y for x, y in zip(a, b, strict=True))


async def test_same_text_gives_the_same_vector_across_instances() -> None:
    """Two embedders with the same settings map a text to exactly the same vector."""
    first = await HashingEmbedder(64).embed(["the quick brown fox"])
    second = await HashingEmbedder(64).embed(["the quick brown fox"])
    assert first == second


def test_known_vector_is_stable_across_processes() -> None:
    """The hash is BLAKE2b, not Python's salted hash: a pinned vector never changes."""
    vector = HashingEmbedder(8).embed_one("sagemem")
    expected = [0.0, 0.218857, -0.437714, -0.844162, -0.218857, 0.0, 0.0, 0.0]
    assert expected == [round(component, 6) for component in vector]


@pytest.mark.parametrize(
    "text", ["", "   ", "!!!", "a", "hello world", "日本語のテキスト", "x" * 5000]
)
def test_every_text_gets_a_unit_vector_of_the_configured_length(text: str) -> None:
    """Any text, even empty or punctuation only, embeds to a unit vector of `dimensions` floats."""
    vector = HashingEmbedder(32).embed_one(text)
    assert len(vector) == 32
    assert math.isclose(math.fsum(component * component for component in vector), 1.0)


def test_texts_sharing_words_are_closer_than_unrelated_texts() -> None:
    """A query is closer to the text that shares its words than to an unrelated one."""
    embedder = HashingEmbedder(256)
    query = embedder.embed_one("which pets purr")
    related = embedder.embed_one("cats are small pets that purr")
    unrelated = embedder.embed_one("the rust compiler checks lifetimes")
    assert _cosine_distance(query, related) < _cosine_distance(query, unrelated)


def test_words_sharing_a_stem_are_closer_than_unrelated_words() -> None:
    """Character n-grams make 'compiler' closer to 'compilers' than to 'ocean'."""
    embedder = HashingEmbedder(256)
    word = embedder.embed_one("compiler")
    assert _cosine_distance(word, embedder.embed_one("compilers")) < _cosine_distance(
        word, embedder.embed_one("ocean")
    )


def test_case_and_unicode_forms_do_not_change_the_vector() -> None:
    """Case-folding and NFKC: 'Café' composed or decomposed, in any case, is one vector."""
    embedder = HashingEmbedder(64)
    assert embedder.embed_one("Café") == embedder.embed_one("CAFE\u0301")


async def test_embed_returns_one_vector_per_text_in_order() -> None:
    """embed() keeps the order of its input."""
    embedder = HashingEmbedder(16)
    texts = ["alpha", "beta", "gamma"]
    assert await embedder.embed(texts) == [embedder.embed_one(text) for text in texts]


def test_hashing_embedder_satisfies_the_embedder_protocol() -> None:
    """HashingEmbedder is an Embedder with its dimensions exposed."""
    embedder = HashingEmbedder(48)
    assert isinstance(embedder, Embedder)
    assert embedder.dimensions == 48


@pytest.mark.parametrize("dimensions", [0, -1, DIMENSIONS_MAX + 1, 2.5, True, "8"])
def test_invalid_dimensions_are_refused(dimensions: object) -> None:
    """Dimensions outside 1..DIMENSIONS_MAX (or not an int) raise ConfigurationError."""
    with pytest.raises(ConfigurationError, match="dimensions"):
        HashingEmbedder(dimensions)  # type: ignore[arg-type]  # deliberately invalid


def test_non_text_input_is_refused() -> None:
    """embed_one refuses anything but str, naming the type."""
    with pytest.raises(ConfigurationError, match="bytes"):
        HashingEmbedder(8).embed_one(b"bytes")  # type: ignore[arg-type]  # deliberately invalid
