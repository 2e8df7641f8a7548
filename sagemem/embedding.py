"""Text embeddings for the semantic tier: the `Embedder` protocol and a deterministic default.

`Embedder.embed` is a coroutine, because real embedders call a model server or an HTTP API;
an in-process embedder simply returns without awaiting anything. `HashingEmbedder` needs no
model and no dependency: it hashes words and character n-grams into a fixed number of
dimensions (the "hashing trick") and L2-normalises the result. It is deterministic across
processes and machines (BLAKE2b, not Python's salted `hash`), so tests can rely on it: texts
that share words are closer in cosine distance than unrelated texts, and words that share
stems are somewhat close. It knows nothing about synonyms; plug in a real model for that.
This module must never do I/O.
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections.abc import Sequence
from hashlib import blake2b
from typing import Final, Protocol, runtime_checkable

from sagemem.errors import ConfigurationError

__all__ = ["DIMENSIONS_MAX", "Embedder", "HashingEmbedder"]

# pgvector's HNSW index accepts vectors of at most 2,000 dimensions.
DIMENSIONS_MAX: Final = 2000
_WORD: Final = re.compile(r"\w+")
_WORD_WEIGHT: Final = 1.0
_NGRAM_WEIGHT: Final = 0.35
_EMPTY_FEATURE: Final = "\x00empty"


@runtime_checkable
class Embedder(Protocol):
    """Turns texts into vectors of `dimensions` floats (one per text, in order)."""

    @property
    def dimensions(self) -> int:
        """The length of every vector `embed` returns."""
        ...

    async def embed(self, texts: Sequence[str]) -> list[list[float]]:
        """One vector per text, in the order of `texts`."""
        ...


class HashingEmbedder:
    """A deterministic embedder: hashed words and character n-grams, L2-normalised.

    Each word (Unicode-normalised, case-folded) adds weight to one signed bucket, and each
    `ngram_size`-character slice of `<word>` adds a smaller weight to another, so shared words
    dominate the similarity and shared stems contribute. Every text, even an empty one, gets a
    unit vector (cosine distance is undefined for a zero vector).
    """

    def __init__(self, dimensions: int = 256, *, ngram_size: int = 3) -> None:
        if type(dimensions) is not int or not 1 <= dimensions <= DIMENSIONS_MAX:
            raise ConfigurationError(
                f"HashingEmbedder dimensions must be an int from 1 to {DIMENSIONS_MAX}, "
                f"got {dimensions!r}"
            )
        if type(ngram_size) is not int or not 1 <= ngram_size <= 8:
            raise ConfigurationError(
                f"HashingEmbedder ngram_size must be an int from 1 to 8, got {ngram_size!r}"
            )
        self._dimensions: Final = dimensions
        self.ngram_size: Final = ngram_size

    def __repr__(self) -> str:
        return f"HashingEmbedder(dimensions={self._dimensions}, ngram_size={self.ngram_size})"

    @property
    def dimensions(self) -> int:
        """The length of every vector this embedder returns."""
        return self._dimensions

    async def embed(self, texts: Sequence[str]) -> list[list[float]]:
        """One unit vector per text, in order (computed in-process, without awaiting)."""
        return [self.embed_one(text) for text in texts]

    def embed_one(self, text: str) -> list[float]:
        """The unit vector of one text."""
        if type(text) is not str:
            raise ConfigurationError(
                f"HashingEmbedder embeds str only, got {type(text).__name__} {text!r:.80}"
            )
        vector = [0.0] * self._dimensions
        normalised = unicodedata.normalize("NFKC", text).casefold()
        for word in _WORD.findall(normalised):
            self._add(vector, "w\x00" + word, _WORD_WEIGHT)
            padded = f"<{word}>"
            for start in range(max(1, len(padded) - self.ngram_size + 1)):
                self._add(vector, "g\x00" + padded[start : start + self.ngram_size], _NGRAM_WEIGHT)
        norm = math.sqrt(math.fsum(component * component for component in vector))
        if norm == 0.0:
            # No words, or features that cancelled out exactly: a fixed direction of its own.
            vector = [0.0] * self._dimensions
            self._add(vector, _EMPTY_FEATURE, 1.0)
            norm = 1.0
        return [component / norm for component in vector]

    def _add(self, vector: list[float], feature: str, weight: float) -> None:
        digest = int.from_bytes(
            blake2b(feature.encode("utf-8", "surrogatepass"), digest_size=8).digest(), "big"
        )
        sign = 1.0 if digest & 1 else -1.0
        vector[(digest >> 1) % self._dimensions] += sign * weight
