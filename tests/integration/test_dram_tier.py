"""The semantic tier on real Postgres + pgvector: exact lookups, versions, search by meaning."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence

import asyncpg
import pytest

from sagemem.embedding import HashingEmbedder
from sagemem.errors import (
    ClosedResourceError,
    ConfigurationError,
    InvalidKeyError,
    InvalidValueError,
    TierUnavailable,
    VersionConflict,
)
from sagemem.tiers.base import TierEntry
from sagemem.tiers.dram import DRAMTier, SearchHit
from sagemem.values import JSONValue

CORPUS: dict[str, JSONValue] = {
    "cats": "cats are small furry pets that purr and chase mice",
    "rust": "the rust compiler checks borrowing and lifetimes at compile time",
    "paris": "paris is the capital city of france, on the river seine",
    "ocean": "the pacific ocean is the largest and deepest ocean on earth",
    "bread": "bake bread with flour, water, salt and yeast in a hot oven",
    "chess": "in chess the queen moves any number of squares in a line",
    "pi": {"constant": "pi", "digits": 3.14159, "about": "ratio of a circle circumference"},
}

QUERIES = [
    ("which pets purr", "cats"),
    ("capital of france", "paris"),
    ("compiler lifetimes and borrowing", "rust"),
    ("largest ocean on earth", "ocean"),
    ("how to bake bread in an oven", "bread"),
    ("how does the queen move in chess", "chess"),
    ("circle circumference ratio", "pi"),
]


@pytest.fixture
async def dram(postgres_dsn: str, namespace: str, pg_schema: str) -> AsyncIterator[DRAMTier]:
    """A connected semantic tier on a fresh schema and namespace, closed after the test."""
    async with DRAMTier(postgres_dsn, namespace=namespace, schema=pg_schema) as tier:
        yield tier


async def _store_corpus(tier: DRAMTier) -> None:
    for key, value in CORPUS.items():
        await tier.set(key, value)


@pytest.mark.parametrize(("query", "expected_key"), QUERIES)
async def test_search_returns_the_semantically_closest_key_first(
    dram: DRAMTier, query: str, expected_key: str
) -> None:
    """With the deterministic embedder, the text sharing the query's words ranks first."""
    await _store_corpus(dram)
    hits = await dram.search(query, limit=3, ef_search=200)
    assert hits[0].key == expected_key
    assert hits[0].value == CORPUS[expected_key]
    assert [hit.distance for hit in hits] == sorted(hit.distance for hit in hits)


async def test_search_hits_carry_value_version_and_distance(dram: DRAMTier) -> None:
    """A hit holds the key's current value and version; an identical text is at distance ~0."""
    await dram.set("note", "first draft")
    version = await dram.set("note", "the meeting moved to thursday")
    [hit] = await dram.search("the meeting moved to thursday", limit=1)
    assert isinstance(hit, SearchHit)
    assert (hit.key, hit.value, hit.version) == ("note", "the meeting moved to thursday", version)
    assert hit.distance == pytest.approx(0.0, abs=1e-6)
    assert hit.similarity == pytest.approx(1.0, abs=1e-6)


async def test_search_follows_updates_and_skips_deleted_keys(dram: DRAMTier) -> None:
    """An updated value is found by its new text; a deleted key is never returned."""
    await _store_corpus(dram)
    await dram.set("cats", "dogs are loyal pets that bark")
    assert (await dram.search("loyal pets that bark", limit=1))[0].key == "cats"
    assert await dram.delete("paris")
    keys = [hit.key for hit in await dram.search("capital of france", limit=10)]
    assert "paris" not in keys
    assert sorted(keys) == sorted(set(CORPUS) - {"paris"})


async def test_search_sees_only_its_own_namespace(
    postgres_dsn: str, namespace: str, pg_schema: str
) -> None:
    """A closer text stored in another namespace of the same table is never returned."""
    async with (
        DRAMTier(postgres_dsn, namespace=namespace, schema=pg_schema) as mine,
        DRAMTier(postgres_dsn, namespace=f"{namespace}-b", schema=pg_schema) as other,
    ):
        await mine.set("mine", "notes about gardening tomatoes")
        await other.set("theirs", "which pets purr")
        hits = await mine.search("which pets purr", limit=5)
        assert [hit.key for hit in hits] == ["mine"]
        await mine.clear()
        assert await mine.search("which pets purr") == []
        assert [hit.key for hit in await other.search("which pets purr")] == ["theirs"]


async def test_search_by_vector_and_limit(dram: DRAMTier) -> None:
    """A vector query works like its text; limit caps the number of hits."""
    await _store_corpus(dram)
    vector = HashingEmbedder(dram.dimensions).embed_one("largest ocean on earth")
    hits = await dram.search(vector, limit=2)
    assert len(hits) == 2
    assert hits[0].key == "ocean"


@pytest.mark.parametrize(
    ("query", "kwargs", "fragment"),
    [
        ([0.0] * 256, {}, "all zeros"),
        ([1.0] * 3, {}, "3 components"),
        ([float("nan")] * 256, {}, "finite"),
        ("text", {"limit": 0}, "limit"),
        ("text", {"limit": 1001}, "limit"),
        ("text", {"ef_search": 0}, "ef_search"),
        ("text", {"ef_search": 5000}, "ef_search"),
    ],
)
async def test_invalid_search_arguments_are_refused(
    dram: DRAMTier, query: str | list[float], kwargs: dict[str, int], fragment: str
) -> None:
    """Bad query vectors, limits or ef_search raise InvalidValueError naming the problem."""
    with pytest.raises(InvalidValueError, match=fragment):
        await dram.search(query, **kwargs)  # type: ignore[arg-type]  # ints for any keyword


async def test_the_table_has_an_hnsw_cosine_index_that_search_can_use(
    dram: DRAMTier, pg_schema: str, raw_postgres: asyncpg.Connection
) -> None:
    """pg_indexes lists an HNSW vector_cosine_ops index, and the search query can use it."""
    indexes = await raw_postgres.fetch(
        "SELECT indexdef FROM pg_indexes WHERE schemaname = $1 AND tablename = 'dram_entries'",
        pg_schema,
    )
    definitions = [record["indexdef"] for record in indexes]
    assert any("USING hnsw" in d and "vector_cosine_ops" in d for d in definitions), definitions
    await _store_corpus(dram)
    vector_text = "[" + ",".join(["0.0625"] * dram.dimensions) + "]"
    async with raw_postgres.transaction():
        for setting in ("enable_seqscan", "enable_bitmapscan", "enable_sort"):
            await raw_postgres.execute(f"SET LOCAL {setting} = off")
        plan = await raw_postgres.fetch(
            f'EXPLAIN SELECT key FROM "{pg_schema}".dram_entries WHERE namespace = $1 AND NOT '
            f"deleted ORDER BY embedding <=> '{vector_text}'::vector LIMIT 3",
            dram.namespace,
        )
    assert "dram_entries_embedding_hnsw" in "\n".join(record[0] for record in plan)


async def test_compare_and_swap_and_versions_work_as_in_l3(dram: DRAMTier) -> None:
    """The semantic tier is versioned like L3: CAS, delete tombstones, versions only grow."""
    created = await dram.compare_and_swap("k", "first", None)
    with pytest.raises(VersionConflict):
        await dram.compare_and_swap("k", "again", None)
    swapped = await dram.compare_and_swap("k", "second", created)
    assert await dram.delete("k")
    with pytest.raises(VersionConflict) as caught:
        await dram.compare_and_swap("k", "stale", swapped)
    assert caught.value.actual is None
    recreated = await dram.compare_and_swap("k", "third", None)
    assert created < swapped < recreated
    await dram.fill("promoted", TierEntry("from below", 5))
    assert TierEntry("from below", 5) == await dram.read("promoted")


async def test_text_of_and_a_custom_embedder_choose_what_is_searched(
    postgres_dsn: str, namespace: str, pg_schema: str
) -> None:
    """text_of picks the field to embed; a custom async embedder is used for values and queries."""
    calls: list[list[str]] = []

    class RecordingEmbedder:
        dimensions = 16

        async def embed(self, texts: Sequence[str]) -> list[list[float]]:
            calls.append(list(texts))
            return [HashingEmbedder(16).embed_one(text) for text in texts]

    def text_of(value: JSONValue) -> str:
        assert isinstance(value, dict)
        text = value["text"]
        assert isinstance(text, str)
        return text

    async with DRAMTier(
        postgres_dsn,
        namespace=namespace,
        schema=pg_schema,
        embedder=RecordingEmbedder(),
        text_of=text_of,
    ) as tier:
        await tier.set("a", {"text": "purring cats", "id": 1})
        await tier.set("b", {"text": "ocean tides", "id": 2})
        hits = await tier.search("cats that purr", limit=1)
        assert [hit.key for hit in hits] == ["a"]
        assert calls == [["purring cats"], ["ocean tides"], ["cats that purr"]]


async def test_an_embedder_returning_bad_vectors_is_reported(
    postgres_dsn: str, namespace: str, pg_schema: str
) -> None:
    """An embedder returning the wrong length raises before anything is written."""

    class WrongLengthEmbedder:
        dimensions = 8

        async def embed(self, texts: Sequence[str]) -> list[list[float]]:
            return [[1.0] * 7 for _ in texts]

    async with DRAMTier(
        postgres_dsn, namespace=namespace, schema=pg_schema, embedder=WrongLengthEmbedder()
    ) as tier:
        with pytest.raises(InvalidValueError, match="7 components"):
            await tier.set("k", "text")
        assert await tier.read("k") is None


def test_mismatched_embedder_settings_are_refused() -> None:
    """dimensions disagreeing with the embedder, or a sync embedder, raise ConfigurationError."""
    with pytest.raises(ConfigurationError, match="dimensions"):
        DRAMTier("postgresql://localhost/db", embedder=HashingEmbedder(32), dimensions=64)

    class SyncEmbedder:
        dimensions = 8

        def embed(self, texts: Sequence[str]) -> list[list[float]]:
            return [[1.0] * 8 for _ in texts]

    with pytest.raises(ConfigurationError, match="async def embed"):
        DRAMTier("postgresql://localhost/db", embedder=SyncEmbedder())  # type: ignore[arg-type]  # sync on purpose


async def test_connecting_with_another_embedding_size_to_a_schema_is_refused(
    postgres_dsn: str, namespace: str, pg_schema: str
) -> None:
    """One schema holds one embedding size: a second size fails at connect() with advice."""
    async with DRAMTier(postgres_dsn, namespace=namespace, schema=pg_schema, dimensions=32):
        pass
    other = DRAMTier(postgres_dsn, namespace=namespace, schema=pg_schema, dimensions=64)
    with pytest.raises(ConfigurationError, match="another schema"):
        await other.connect()
    with pytest.raises(ClosedResourceError):
        await other.read("k")


async def test_invalid_keys_and_values_raise_typed_errors_before_embedding(
    postgres_dsn: str, namespace: str, pg_schema: str
) -> None:
    """Bad input, or an unconnected tier, is refused before the embedder is called."""
    calls: list[int] = []

    class CountingEmbedder:
        dimensions = 8

        async def embed(self, texts: Sequence[str]) -> list[list[float]]:
            calls.append(len(texts))
            return [HashingEmbedder(8).embed_one(text) for text in texts]

    tier = DRAMTier(
        postgres_dsn, namespace=namespace, schema=pg_schema, embedder=CountingEmbedder()
    )
    with pytest.raises(InvalidKeyError):
        await tier.set("", "x")
    with pytest.raises(InvalidValueError):
        await tier.set("k", {"t": (1, 2)})  # type: ignore[dict-item]  # deliberately invalid
    with pytest.raises(ClosedResourceError):
        await tier.set("k", "valid, but the tier is not connected")
    with pytest.raises(ClosedResourceError):
        await tier.search("valid, but the tier is not connected")
    assert calls == []


async def test_use_before_connect_raises_closed_resource_error(
    postgres_dsn: str, namespace: str, pg_schema: str
) -> None:
    """search() and read() on an unconnected tier say to call connect(); aclose() is idempotent."""
    tier = DRAMTier(postgres_dsn, namespace=namespace, schema=pg_schema)
    with pytest.raises(ClosedResourceError, match=r"connect\(\)"):
        await tier.search("anything")
    await tier.connect()
    await tier.aclose()
    await tier.aclose()
    with pytest.raises(ClosedResourceError, match=r"connect\(\)"):
        await tier.read("k")


async def test_unreachable_server_raises_tier_unavailable_with_the_cause(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """connect() to a socket directory with no server raises TierUnavailable with the cause."""
    empty_dir = tmp_path_factory.mktemp("no-postgres")
    tier = DRAMTier(f"postgresql://postgres@/postgres?host={empty_dir}", connect_timeout_s=2.0)
    with pytest.raises(TierUnavailable) as caught:
        await tier.connect()
    assert caught.value.tier == "DRAM"
    assert caught.value.__cause__ is not None


async def test_server_errors_during_search_are_wrapped(
    dram: DRAMTier, raw_postgres: asyncpg.Connection, pg_schema: str
) -> None:
    """A table dropped behind the tier's back makes search() raise TierUnavailable."""
    await dram.set("k", "text")
    await raw_postgres.execute(f'DROP TABLE "{pg_schema}".dram_entries')
    with pytest.raises(TierUnavailable) as caught:
        await dram.search("text")
    assert isinstance(caught.value.__cause__, asyncpg.PostgresError)
