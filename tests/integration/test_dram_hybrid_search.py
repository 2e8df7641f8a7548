"""Hybrid search of the semantic tier on real Postgres: BM25 + vectors fused by RRF, filters."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence

import asyncpg
import pytest

from sagemem.embedding import HashingEmbedder
from sagemem.errors import InvalidValueError
from sagemem.tiers.dram import DRAMTier
from sagemem.values import JSONValue


class ConstantEmbedder:
    """Every text gets the same vector: vector ranking carries no information at all."""

    dimensions = 8

    async def embed(self, texts: Sequence[str]) -> list[list[float]]:
        """The same unit vector for every text."""
        return [[1.0] + [0.0] * 7 for _ in texts]


@pytest.fixture
async def dram(postgres_dsn: str, namespace: str, pg_schema: str) -> AsyncIterator[DRAMTier]:
    """A connected semantic tier (hashing embedder) on a fresh schema and namespace."""
    async with DRAMTier(
        postgres_dsn, namespace=namespace, schema=pg_schema, text_statistics_ttl_s=0
    ) as tier:
        yield tier


async def test_text_mode_ranks_rare_words_above_common_ones(
    postgres_dsn: str, namespace: str, pg_schema: str
) -> None:
    """BM25: the entry sharing the query's rare word outranks entries sharing a common one."""
    async with DRAMTier(
        postgres_dsn,
        namespace=namespace,
        schema=pg_schema,
        embedder=ConstantEmbedder(),
        text_statistics_ttl_s=0,
    ) as tier:
        for index in range(20):
            await tier.set(f"common:{index}", f"Caroline talked about her day number {index}")
        await tier.set("rare", "the zeppelin museum was closed")
        await tier.set("both", "Caroline saw a zeppelin")
        hits = await tier.search("Caroline visited the zeppelin museum", limit=3, mode="text")
        # two rare words beat one rare word plus the common name, which beats the name alone
        assert [hit.key for hit in hits[:2]] == ["rare", "both"]
        assert hits[2].key.startswith("common:")
        assert hits[0].score > hits[1].score > hits[2].score > 0
        hits = await tier.search("Caroline zeppelin", limit=3, mode="text")
        assert [hit.key for hit in hits[:2]] == ["both", "rare"]


async def test_stemming_matches_other_forms_of_a_word(dram: DRAMTier) -> None:
    """English stemming: 'painting' in the query finds an entry that says 'painted'."""
    await dram.set("art", "she painted a sunset over the lake")
    await dram.set("food", "we cooked pasta for dinner")
    hits = await dram.search("painting", limit=1, mode="text")
    assert [hit.key for hit in hits] == ["art"]


async def test_a_query_of_stop_words_or_unknown_words_finds_nothing_by_text(
    dram: DRAMTier,
) -> None:
    """Text mode returns no hit when no query word is indexed; hybrid still ranks by vector."""
    await dram.set("a", "cats purr")
    assert await dram.search("the of and", mode="text") == []
    assert await dram.search("xylophone", mode="text") == []
    assert [hit.key for hit in await dram.search("the of and")] == ["a"]


async def test_hybrid_fuses_both_rankings_with_rrf_scores(dram: DRAMTier) -> None:
    """A key first in both rankings scores 2/(k+1); scores are non-increasing down the list."""
    await dram.set("match", "the pacific ocean is the deepest ocean")
    await dram.set("other", "bread needs flour and yeast")
    hits = await dram.search("deepest pacific ocean", limit=2, rrf_k=60)
    assert hits[0].key == "match"
    assert hits[0].score == pytest.approx(2 / 61)
    assert [hit.score for hit in hits] == sorted((hit.score for hit in hits), reverse=True)


async def test_text_weight_zero_orders_hybrid_hits_as_the_vector_ranking(dram: DRAMTier) -> None:
    """With text_weight=0 only the vector ranking scores: the order is vector mode's order."""
    for index, text in enumerate(["red apples", "green apples and pears", "apple pie", "pears"]):
        await dram.set(f"k{index}", text)
    vector = [hit.key for hit in await dram.search("apples", limit=4, mode="vector")]
    hybrid = [hit.key for hit in await dram.search("apples", limit=4, text_weight=0.0)]
    assert hybrid == vector


async def test_where_filters_by_value_containment_at_the_server(dram: DRAMTier) -> None:
    """`where` keeps only dict values containing it, in every mode."""
    await dram.set("t1", {"kind": "turn", "speaker": "Ann", "text": "I love hiking"})
    await dram.set("t2", {"kind": "turn", "speaker": "Bob", "text": "I love hiking too"})
    await dram.set("o1", {"kind": "note", "speaker": "Ann", "text": "Ann loves hiking"})
    for mode in ("hybrid", "vector", "text"):
        hits = await dram.search(
            "hiking", limit=10, mode=mode, where={"kind": "turn", "speaker": "Ann"}
        )
        assert [hit.key for hit in hits] == ["t1"], mode
    assert await dram.search("hiking", where={"kind": "missing"}) == []


async def test_limit_and_candidates_bound_the_result(dram: DRAMTier) -> None:
    """At most `limit` hits come back, however many match."""
    for index in range(12):
        await dram.set(f"k{index}", f"hiking trip number {index}")
    assert len(await dram.search("hiking trip", limit=5)) == 5
    assert len(await dram.search("hiking trip", limit=5, candidates=5, mode="text")) == 5


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"mode": "fuzzy"}, "mode"),
        ({"candidates": 3, "limit": 5}, "candidates"),
        ({"rrf_k": 0}, "rrf_k"),
        ({"text_weight": -1.0}, "text_weight"),
        ({"where": ["kind"]}, "where"),
        ({"where": {"x": float("nan")}}, "NaN|finite|nan"),
    ],
)
async def test_invalid_hybrid_arguments_raise_before_querying(
    dram: DRAMTier, kwargs: dict[str, object], fragment: str
) -> None:
    """Bad mode, candidates, rrf_k or where raise InvalidValueError naming the argument."""
    with pytest.raises(InvalidValueError, match=fragment):
        await dram.search("x", **kwargs)  # type: ignore[arg-type]


async def test_a_vector_query_refuses_text_modes(dram: DRAMTier) -> None:
    """A vector has no words: hybrid or text mode with a vector query is refused."""
    vector = HashingEmbedder().embed_one("x")
    with pytest.raises(InvalidValueError, match="mode='vector'"):
        await dram.search(vector, mode="hybrid")


async def test_deleted_and_updated_entries_leave_the_text_index(dram: DRAMTier) -> None:
    """After an update or delete, old words no longer find the key; new words do."""
    await dram.set("k", "the violin lesson")
    await dram.set("gone", "the violin concert")
    await dram.set("k", "the trumpet lesson")
    await dram.delete("gone")
    assert await dram.search("violin", mode="text") == []
    hits = await dram.search("trumpet", mode="text")
    assert [(hit.key, hit.version, hit.value) for hit in hits] == [("k", 2, "the trumpet lesson")]


async def test_a_table_from_before_hybrid_search_gains_the_text_columns(
    postgres_dsn: str, namespace: str, pg_schema: str, raw_postgres: asyncpg.Connection
) -> None:
    """An older dram_entries table (no search_text) is upgraded on connect; rows stay readable."""
    await raw_postgres.execute("CREATE EXTENSION IF NOT EXISTS vector")
    await raw_postgres.execute(f'CREATE SCHEMA "{pg_schema}"')
    await raw_postgres.execute(
        f'CREATE TABLE "{pg_schema}".dram_entries (namespace text NOT NULL, key text NOT NULL, '
        "value jsonb, version bigint NOT NULL, deleted boolean NOT NULL, "
        "updated_at timestamptz NOT NULL DEFAULT now(), embedding vector(256), "
        "PRIMARY KEY (namespace, key))"
    )
    old_vector = "[" + ",".join(["0.0625"] * 256) + "]"
    await raw_postgres.execute(
        f"INSERT INTO \"{pg_schema}\".dram_entries VALUES ($1, 'old', '\"old text\"', 3, false, "
        f"now(), '{old_vector}')",
        namespace,
    )
    async with DRAMTier(postgres_dsn, namespace=namespace, schema=pg_schema) as tier:
        assert await tier.get("old") == "old text"
        await tier.set("new", "brand new words")
        assert [hit.key for hit in await tier.search("brand new", mode="text")] == ["new"]
        assert {hit.key for hit in await tier.search("brand new words")} == {"new", "old"}


async def test_scores_in_vector_mode_are_similarities(dram: DRAMTier) -> None:
    """In vector mode `score` is `1 - distance`."""
    await dram.set("a", "cats purr")
    (hit,) = await dram.search("cats purr", limit=1, mode="vector")
    assert hit.score == pytest.approx(hit.similarity)
    values: list[JSONValue] = [hit.value]
    assert values == ["cats purr"]


async def test_selective_words_together_select_at_most_four_candidates_worth_of_rows(
    postgres_dsn: str, namespace: str, pg_schema: str
) -> None:
    """Text candidates come from the rarest words first, within 4 rows per candidate: with 15
    candidates (60 rows), a word in 40 rows is not used to select once a rarer one selected
    40, so its short entries, which BM25 would rank first, are not among the hits."""
    async with DRAMTier(
        postgres_dsn,
        namespace=namespace,
        schema=pg_schema,
        embedder=ConstantEmbedder(),
        text_statistics_ttl_s=0,
    ) as tier:
        await tier.set("gamma", "gamma")
        for index in range(39):
            await tier.set(f"alpha:{index}", f"alpha with many more words in entry {index}")
        for index in range(40):
            await tier.set(f"beta:{index}", "beta")
        hits = await tier.search("gamma alpha beta", limit=15, candidates=15, mode="text")
        assert hits[0].key == "gamma"
        assert [hit.key.split(":")[0] for hit in hits[1:]] == ["alpha"] * 14
        # Searched alone, the word in 40 rows selects them all (the query's rarest word).
        alone = await tier.search("beta", limit=15, candidates=15, mode="text")
        assert {hit.key.split(":")[0] for hit in alone} == {"beta"}


async def test_a_new_query_with_cached_words_scores_as_on_a_fresh_tier(
    postgres_dsn: str, namespace: str, pg_schema: str
) -> None:
    """A query that is new but shares words (in other forms) with earlier ones gets its word
    counts partly from the cache and partly from its one round trip: the scores equal those
    of a tier that counts every word afresh."""
    async with (
        DRAMTier(postgres_dsn, namespace=namespace, schema=pg_schema) as tier,
        DRAMTier(
            postgres_dsn, namespace=namespace, schema=pg_schema, text_statistics_ttl_s=0
        ) as fresh,
    ):
        texts = ["studies of comets", "comet trip", "a study trip", "happy comets", "trips"]
        for index, text in enumerate(texts):
            await tier.set(f"k{index}", text)
        await tier.search("studies of comets", mode="text")  # caches 'studi' and 'comet'
        await tier.search("happiness", mode="text")  # caches 'happi'
        for query in ("the comet study trip", "happy studying trips"):
            cached = {hit.key: hit.score for hit in await tier.search(query, mode="text")}
            expected = {hit.key: hit.score for hit in await fresh.search(query, mode="text")}
            assert cached == pytest.approx(expected)
            assert len(cached) >= 3


async def test_the_tier_s_connections_plan_every_search_for_its_own_parameters(
    dram: DRAMTier,
) -> None:
    """plan_cache_mode is force_custom_plan on the tier's connections: Postgres never swaps a
    search's plan for its generic one (10x slower on some data), however often it runs."""
    await dram.set("a", "cats purr")
    for _ in range(7):  # past the five executions after which Postgres may go generic
        assert [hit.key for hit in await dram.search("cats")] == ["a"]
    async with dram._connected().lease() as connection:
        assert await connection.fetchval("SHOW plan_cache_mode") == "force_custom_plan"
