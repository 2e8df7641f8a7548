"""The semantic tier embeds a repeated query text once (its LRU of query embeddings)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from sagemem.embedding import HashingEmbedder
from sagemem.errors import ConfigurationError, TierUnavailable
from sagemem.tiers.dram import DRAMTier


class CountingEmbedder:
    """A HashingEmbedder that counts the texts it was asked to embed."""

    def __init__(self) -> None:
        self.inner = HashingEmbedder()
        self.texts: list[str] = []

    @property
    def dimensions(self) -> int:
        """The inner embedder's dimensions."""
        return self.inner.dimensions

    async def embed(self, texts: Sequence[str]) -> list[list[float]]:
        """The inner embedder's vectors, after noting the texts."""
        self.texts += texts
        return await self.inner.embed(texts)


@pytest.mark.parametrize("cache_size", [0, 2])
async def test_a_repeated_query_is_embedded_once_while_it_is_in_the_cache(
    postgres_dsn: str, namespace: str, pg_schema: str, cache_size: int
) -> None:
    """With a cache of 2, a query is embedded again only after two others pushed it out; with
    0, every search embeds; the hits are the same either way."""
    embedder = CountingEmbedder()
    async with DRAMTier(
        postgres_dsn,
        namespace=namespace,
        schema=pg_schema,
        embedder=embedder,
        query_cache_size=cache_size,
    ) as tier:
        await tier.set("a", "comet over the harbor")
        await tier.set("b", "violin in the orchard")
        embedder.texts.clear()
        first = await tier.search("comet")
        again = await tier.search("comet")
        assert [(hit.key, hit.version, hit.score) for hit in again] == [
            (hit.key, hit.version, hit.score) for hit in first
        ]
        await tier.search("violin")
        await tier.search("orchard")  # "comet" is now the least recently used of three
        await tier.search("comet")
        expected = ["comet", "violin", "orchard", "comet"]
        assert embedder.texts == (["comet", *expected] if cache_size == 0 else expected)


def test_a_bad_query_cache_size_is_refused() -> None:
    """query_cache_size must be an int from 0 to 1,000,000: ConfigurationError names it."""
    for bad in (-1, 1.5, "10", 1_000_001):
        with pytest.raises(ConfigurationError, match="query_cache_size"):
            DRAMTier(query_cache_size=bad)  # type: ignore[arg-type]


async def test_expired_term_statistics_serve_while_a_background_task_recounts_them(
    postgres_dsn: str, namespace: str, pg_schema: str
) -> None:
    """A search after text_statistics_ttl_s weighs words with the old document counts at once
    and recounts them in the background; the next search then scores like a fresh tier."""
    async with (
        DRAMTier(
            postgres_dsn, namespace=namespace, schema=pg_schema, text_statistics_ttl_s=0.2
        ) as tier,
        DRAMTier(postgres_dsn, namespace=namespace, schema=pg_schema) as fresh,
    ):
        for number in range(2):
            await tier.set(f"a{number}", f"comet number {number}")
        await tier.set("b", "violin")
        first = {hit.key: hit.score for hit in await tier.search("comet", mode="text")}
        for number in range(2, 6):
            await tier.set(f"a{number}", f"comet number {number}")
        await asyncio.sleep(0.3)  # the counts expire
        served = {hit.key: hit.score for hit in await tier.search("comet", mode="text")}
        assert served["a0"] == first["a0"]  # the old counts: comet in 2 of 3 rows
        assert tier._recount is not None
        await tier._recount
        after = {hit.key: hit.score for hit in await tier.search("comet", mode="text")}
        expected = {hit.key: hit.score for hit in await fresh.search("comet", mode="text")}
        assert after == pytest.approx(expected)
        assert after["a0"] != pytest.approx(first["a0"])  # comet is now in 6 of 7 rows


class FailingEmbedder(CountingEmbedder):
    """Refuses texts containing 'boom', like a model server that is down for them."""

    async def embed(self, texts: Sequence[str]) -> list[list[float]]:
        """The inner embedder's vectors, or TierUnavailable for a text with 'boom'."""
        if any("boom" in text for text in texts):
            raise TierUnavailable("injected: the embedding service failed", tier="embedder")
        return await super().embed(texts)


async def test_an_embedder_failing_while_the_query_statistics_run_fails_the_search_alone(
    postgres_dsn: str, namespace: str, pg_schema: str
) -> None:
    """A new query is embedded while its word statistics are fetched: when the embedder fails,
    the search raises the embedder's error, and the tier searches normally afterwards."""
    async with DRAMTier(
        postgres_dsn, namespace=namespace, schema=pg_schema, embedder=FailingEmbedder()
    ) as tier:
        await tier.set("a", "comet over the harbor")
        for _ in range(3):
            with pytest.raises(TierUnavailable, match="injected"):
                await tier.search("comet boom")
        assert [hit.key for hit in await tier.search("comet harbor")] == ["a"]
