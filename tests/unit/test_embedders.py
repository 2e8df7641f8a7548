"""The offline embedders: load from their wheels with downloads off, and embed by meaning."""

from __future__ import annotations

import math
import subprocess
import sys
from collections.abc import Sequence

import pytest

from sagemem.embedders import MiniLMEmbedder, OpenAIEmbedder, WordLlamaEmbedder
from sagemem.embedding import Embedder
from sagemem.errors import ConfigurationError


def _cosine(a: Sequence[float], b: Sequence[float]) -> float:
    return math.fsum(x * y for x, y in zip(a, b, strict=True))


@pytest.fixture(scope="module")
def minilm() -> MiniLMEmbedder:
    """One MiniLM model for the module (loading takes about a second)."""
    return MiniLMEmbedder(threads=1)


@pytest.fixture(scope="module")
def wordllama() -> WordLlamaEmbedder:
    """One WordLlama model for the module."""
    return WordLlamaEmbedder()


@pytest.mark.parametrize("which", ["minilm", "wordllama"])
async def test_offline_embedders_return_unit_vectors_of_their_size_in_order(
    which: str, request: pytest.FixtureRequest
) -> None:
    """Each text gets a unit vector of `dimensions` floats; batches keep the order."""
    embedder: MiniLMEmbedder | WordLlamaEmbedder = request.getfixturevalue(which)
    assert isinstance(embedder, Embedder)
    texts = ["the cat purrs", "", "stock prices fell sharply today", "the cat purrs"]
    vectors = await embedder.embed(texts)
    assert [len(vector) for vector in vectors] == [embedder.dimensions] * 4
    for vector in vectors:
        assert math.isclose(math.fsum(c * c for c in vector), 1.0, rel_tol=1e-5)
    assert vectors[0] == pytest.approx(vectors[3], abs=1e-6)
    alone = await embedder.embed(["stock prices fell sharply today"])
    assert alone[0] == pytest.approx(vectors[2], abs=1e-4)
    assert await embedder.embed([]) == []


@pytest.mark.parametrize("which", ["minilm", "wordllama"])
async def test_offline_embedders_place_paraphrases_closer_than_unrelated_text(
    which: str, request: pytest.FixtureRequest
) -> None:
    """Texts sharing meaning but no words are closer than texts on another topic."""
    embedder: MiniLMEmbedder | WordLlamaEmbedder = request.getfixturevalue(which)
    query, paraphrase, unrelated = await embedder.embed(
        [
            "my dog loves long walks",
            "the puppy enjoys going for a stroll",
            "quarterly earnings beat analyst forecasts",
        ]
    )
    assert _cosine(query, paraphrase) > _cosine(query, unrelated) + 0.1


def test_minilm_has_384_dimensions_and_refuses_bad_settings() -> None:
    """MiniLM's size is fixed; out-of-range settings raise ConfigurationError naming them."""
    with pytest.raises(ConfigurationError, match="max_tokens"):
        MiniLMEmbedder(max_tokens=4)
    with pytest.raises(ConfigurationError, match="batch_size"):
        MiniLMEmbedder(batch_size=0)
    with pytest.raises(ConfigurationError, match="threads"):
        MiniLMEmbedder(threads=0)


def test_wordllama_refuses_sizes_its_weights_do_not_have() -> None:
    """WordLlama's bundled weights truncate to 64/128/256 dimensions; others are refused."""
    assert WordLlamaEmbedder(64).dimensions == 64
    with pytest.raises(ConfigurationError, match="64, 128 or 256"):
        WordLlamaEmbedder(300)


async def test_embedders_refuse_a_bare_string_or_non_strings(wordllama: WordLlamaEmbedder) -> None:
    """A str instead of a list, or a non-str item, raises ConfigurationError before any work."""
    with pytest.raises(ConfigurationError, match="wrap it in a list"):
        await wordllama.embed("just a string")
    with pytest.raises(ConfigurationError, match="embeds str only"):
        await wordllama.embed(["ok", 3])  # type: ignore[list-item]


def test_models_load_with_the_network_disabled() -> None:
    """Both models load from the installed wheels in a process where sockets cannot connect."""
    code = (
        "import socket\n"
        "def refuse(*args, **kwargs):\n"
        "    raise OSError('network disabled in this test')\n"
        "socket.socket.connect = refuse\n"
        "socket.create_connection = refuse\n"
        "import asyncio\n"
        "from sagemem.embedders import MiniLMEmbedder, WordLlamaEmbedder\n"
        "for embedder in (MiniLMEmbedder(threads=1), WordLlamaEmbedder()):\n"
        "    print(len(asyncio.run(embedder.embed(['offline']))[0]))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=120,
        env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"},
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["384", "256"]


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"model": "", "dimensions": 8}, "model"),
        ({"model": "m", "dimensions": 0}, "dimensions"),
        ({"model": "m", "dimensions": 8, "base_url": "ftp://x"}, "base_url"),
        ({"model": "m", "dimensions": 8, "timeout_s": 0}, "timeout_s"),
        ({"model": "m", "dimensions": 8, "batch_size": 0}, "batch_size"),
    ],
)
def test_openai_embedder_refuses_bad_settings(kwargs: dict[str, object], fragment: str) -> None:
    """Bad OpenAIEmbedder settings raise ConfigurationError naming the setting."""
    with pytest.raises(ConfigurationError, match=fragment):
        OpenAIEmbedder(**kwargs)  # type: ignore[arg-type]


def test_openai_embedder_repr_never_shows_the_key() -> None:
    """The API key stays out of repr (which error messages include)."""
    embedder = OpenAIEmbedder("m", dimensions=8, api_key="sk-secret", base_url="http://x/v1")
    assert "sk-secret" not in repr(embedder)
