"""Search through a hierarchy follows its home: writes and deletes of any agent, at any tier.

`sagemem.connect(semantic=True)` (and any `MemoryHierarchy` holding an L3Tier and a DRAMTier on
the same DSN) makes the semantic tier the search index of L3. These tests write and delete
through the hierarchy, plain and coherent, on the real servers, and check every hit: its version
is the home's (the one a `get` reports), never older than one the searching agent already read,
its value is exactly the one written at that version, its distance is that of the value's own
embedding, and a key whose deletion returned before the search began is not a hit.
"""

from __future__ import annotations

import asyncio
import math
import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import pytest

import sagemem
from sagemem.embedding import HashingEmbedder
from sagemem.errors import ConfigurationError, InvalidValueError, TierUnavailable
from sagemem.hierarchy import MemoryHierarchy
from sagemem.tiers.base import Tier, TierEntry
from sagemem.tiers.dram import DRAMTier, SearchHit
from sagemem.tiers.l1 import L1Tier
from sagemem.tiers.l2 import L2Tier
from sagemem.tiers.l3 import L3Tier
from sagemem.values import JSONValue

WORDS = ["harbor", "lantern", "violin", "glacier", "orchard", "comet", "falcon", "meadow"]
SHARED_KEYS = 4
OWN_KEYS = 2
AGENTS = 3
ROUNDS = 40
_EMBEDDER = HashingEmbedder()


def _distance(query: str, text: str) -> float:
    own = _EMBEDDER.embed_one(text)
    query_vector = _EMBEDDER.embed_one(query)
    return 1.0 - math.fsum(a * b for a, b in zip(query_vector, own, strict=True))


@asynccontextmanager
async def _plain(
    redis_url: str, postgres_dsn: str, namespace: str, schema: str
) -> AsyncIterator[MemoryHierarchy]:
    tiers: list[Tier] = [
        L1Tier(),
        L2Tier(url=redis_url, namespace=namespace),
        L3Tier(postgres_dsn, namespace=namespace, schema=schema, pool_size_max=3),
        DRAMTier(postgres_dsn, namespace=namespace, schema=schema, pool_size_max=3),
    ]
    hierarchy = MemoryHierarchy(tiers, owns_tiers=True)
    await hierarchy.connect()
    await hierarchy.wait_reindexed()  # so no repair runs behind the test's back
    try:
        yield hierarchy
    finally:
        await hierarchy.aclose()


def _index_of(hierarchy: MemoryHierarchy) -> DRAMTier:
    index = hierarchy.semantic_index
    assert index is not None
    return index


async def _hits(hierarchy: MemoryHierarchy, query: str, **options: object) -> dict[str, SearchHit]:
    hits = await _index_of(hierarchy).search(query, limit=50, **options)  # type: ignore[arg-type]
    by_key = {hit.key: hit for hit in hits}
    assert len(by_key) == len(hits), f"a key found twice: {[hit.key for hit in hits]}"
    return by_key


@pytest.mark.parametrize("tier_index", [0, 1, 2])
async def test_a_coherent_write_or_delete_is_reflected_in_the_next_search(
    namespace: str, tier_index: int
) -> None:
    """Coherent agents: a write at tier 0, 1 or 2 is found at once with the version a get
    reports, by the writer and by another agent; an update replaces it; a delete removes it."""
    async with (
        sagemem.connect(namespace=namespace, agent_id="writer", semantic=True) as writer,
        sagemem.connect(namespace=namespace, agent_id="reader", semantic=True) as reader,
    ):
        for round_number, word in enumerate(["harbor lantern", "glacier orchard"]):
            value = f"{word} note {round_number}"
            version = await writer.set("note", value, tier_index=tier_index)
            assert version is not None
            entry = await reader.read("note")
            assert entry is not None
            assert (entry.value, entry.version) == (value, version)
            for memory in (writer, reader):
                hit = (await _hits(memory, word))["note"]
                assert (hit.value, hit.version) == (value, version)
                assert math.isclose(hit.distance, _distance(word, value), abs_tol=1e-4)
        assert await reader.delete("note")
        for memory in (writer, reader):
            assert "note" not in await _hits(memory, "glacier orchard note")


async def test_a_plain_hierarchy_keeps_search_at_the_home_version(
    redis_url: str, postgres_dsn: str, namespace: str, pg_schema: str
) -> None:
    """Plain hierarchy: an L3 write, a compare-and-swap and an update are found at the home's
    version; a cache write (tier 0) hides the home's older value from search; a delete removes
    the key."""
    async with _plain(redis_url, postgres_dsn, namespace, pg_schema) as memory:
        first = await memory.set("plan", "harbor plan first", tier_index=2)
        assert (await _hits(memory, "harbor plan"))["plan"].version == first
        second = await memory.compare_and_swap("plan", "harbor plan second", first)
        hit = (await _hits(memory, "harbor plan"))["plan"]
        assert (hit.value, hit.version) == ("harbor plan second", second)
        third = await memory.update("plan", lambda current: f"{current} and third")
        hit = (await _hits(memory, "harbor plan"))["plan"]
        assert (hit.value, hit.version) == ("harbor plan second and third", third)
        assert third > second > first

        await memory.set("plan", "harbor plan cached", tier_index=0)  # not at the home
        assert await memory.get("plan") == "harbor plan cached"
        assert "plan" not in await _hits(memory, "harbor plan")

        fourth = await memory.set("plan", "harbor plan fourth", tier_index=2)
        assert (await _hits(memory, "harbor plan"))["plan"].version == fourth
        assert await memory.delete("plan")
        assert "plan" not in await _hits(memory, "harbor plan")
        assert await _index_of(memory).get("plan") is None  # index rows are no values


async def test_a_search_never_returns_an_entry_its_home_row_no_longer_holds(
    redis_url: str, postgres_dsn: str, namespace: str, pg_schema: str
) -> None:
    """An index row whose home row moved on without it (a write from outside the hierarchy)
    is never a hit; reindex_home indexes the home's current value again."""
    async with _plain(redis_url, postgres_dsn, namespace, pg_schema) as memory:
        await memory.set("fact", "falcon fact old", tier_index=2)
        home = memory.tiers[2]
        assert isinstance(home, L3Tier)
        newer = await home.write("fact", "falcon fact new")  # behind the index's back
        assert "fact" not in await _hits(memory, "falcon fact")
        assert await _index_of(memory).reindex_home() == 1
        hit = (await _hits(memory, "falcon fact"))["fact"]
        assert (hit.value, hit.version) == ("falcon fact new", newer)
        await home.delete("fact")
        assert "fact" not in await _hits(memory, "falcon fact")


@dataclass
class Record:
    """What the agents committed and what their searches returned."""

    written: dict[tuple[str, int], str] = field(default_factory=dict)
    # own key -> (version of its last completed write, whether a delete followed it)
    own: dict[str, tuple[int, bool]] = field(default_factory=dict)
    # shared key -> a version no later search may return (read before a returned delete)
    deleted_at_least: dict[str, int] = field(default_factory=dict)
    observed: list[tuple[str, SearchHit, str]] = field(default_factory=list)
    stale: list[str] = field(default_factory=list)
    searches: int = 0


async def _agent(memory: MemoryHierarchy, agent: int, record: Record, coherent: bool) -> None:
    rng = random.Random(agent)
    seen: dict[str, int] = {}
    tiers = [0, 1, 2] if coherent else [2]
    for round_number in range(ROUNDS):
        if rng.random() < 0.5:
            key = f"shared{rng.randrange(SHARED_KEYS)}"
        else:
            key = f"own{agent}x{rng.randrange(OWN_KEYS)}"
        word = WORDS[(agent + round_number) % len(WORDS)]
        value = f"{word} {key} note a{agent}r{round_number}"
        roll = rng.random()
        if roll < 0.15:
            before = await memory.read(key)
            if await memory.delete(key) and before is not None and before.version is not None:
                if key.startswith("own"):
                    record.own[key] = (before.version, True)
                else:
                    previous = record.deleted_at_least.get(key, 0)
                    record.deleted_at_least[key] = max(previous, before.version)
            elif key.startswith("own") and key in record.own:
                record.own[key] = (record.own[key][0], True)
        else:
            if roll < 0.3:

                def replace(_current: JSONValue, new: str = value) -> JSONValue:
                    return new

                version = await memory.update(key, replace)
            else:
                written = await memory.set(key, value, tier_index=rng.choice(tiers))
                assert written is not None
                version = written
            record.written[(key, version)] = value
            if key.startswith("own"):
                record.own[key] = (version, False)
                # Reflected in the next search: the writer's own key, at its version.
                hit = (await _hits(memory, value)).get(key)
                if hit is None or (hit.value, hit.version) != (value, version):
                    record.stale.append(f"{key} v{version} written, next search: {hit}")
        # Read one key, then search: no hit older than what this agent has read.
        probe = f"shared{rng.randrange(SHARED_KEYS)}"
        entry = await memory.read(probe)
        if entry is not None and entry.version is not None:
            seen[probe] = max(seen.get(probe, 0), entry.version)
        own = dict(record.own)
        deleted = dict(record.deleted_at_least)
        query = f"{rng.choice(WORDS)} note"
        mode = rng.choice(["hybrid", "vector", "text"])
        hits = await _hits(memory, query, mode=mode)
        record.searches += 1
        for key, hit in hits.items():
            record.observed.append((query, hit, mode))
            if hit.version < seen.get(key, 0):
                record.stale.append(f"{key} v{hit.version} after v{seen[key]} was read")
            seen[key] = max(seen.get(key, 0), hit.version)
            if hit.version <= deleted.get(key, 0):
                record.stale.append(f"{key} v{hit.version}: deleted before the search")
            if key in own:
                last, was_deleted = own[key]
                if hit.version < last or (was_deleted and hit.version <= last):
                    record.stale.append(f"{key} v{hit.version}: last own op {own[key]}")
        await asyncio.sleep(0)


def _check_observations(record: Record) -> None:
    for query, hit, mode in record.observed:
        value = record.written.get((hit.key, hit.version))
        if value != hit.value:
            record.stale.append(f"{hit.key} v{hit.version} is {hit.value!r}, written {value!r}")
        if mode != "text" and not math.isclose(
            hit.distance, _distance(query, str(hit.value)), abs_tol=1e-4
        ):
            record.stale.append(f"{hit.key} v{hit.version}: embedding of another value")


async def _settled_search_matches_the_home(memory: MemoryHierarchy, record: Record) -> None:
    """After the writers stop (and `reindex_home` indexed the values of owners whose lease
    lapsed under load, which the home gives a version of their own), every live key is a hit
    at the version a read reports."""
    keys = {key for key, _ in record.written}
    await _index_of(memory).reindex_home()
    hits = await _hits(memory, "note")
    for key in sorted(keys):
        entry = await memory.read(key)
        if entry is None:
            assert key not in hits, f"{key} deleted but found"
        else:
            assert key in hits, f"{key} live at v{entry.version} but not found"
            assert (hits[key].value, hits[key].version) == (entry.value, entry.version)


async def test_concurrent_coherent_agents_never_get_a_stale_search_result(namespace: str) -> None:
    """3 coherent agents write (tiers 0/1/2, update), delete and search the same keys at
    once: 0 stale hits, every own write found by the next search, values as written."""
    record = Record()
    agents = [
        sagemem.connect(namespace=namespace, agent_id=f"agent{index}", semantic=True)
        for index in range(AGENTS)
    ]
    memories = [await agent for agent in agents]
    try:
        async with asyncio.TaskGroup() as group:
            for index, memory in enumerate(memories):
                group.create_task(_agent(memory, index, record, coherent=True))
        _check_observations(record)
        print(f"{record.searches} searches, {len(record.observed)} hits, stale: {record.stale}")
        assert record.stale == []
        assert len(record.observed) > record.searches  # the searches found something
        await _settled_search_matches_the_home(memories[0], record)
    finally:
        for memory in memories:
            await memory.aclose()


async def test_concurrent_plain_hierarchies_never_get_a_stale_search_result(
    redis_url: str, postgres_dsn: str, namespace: str, pg_schema: str
) -> None:
    """3 plain hierarchies on one home write at L3, update, delete and search at once: 0 stale
    hits, every own write found by the next search, values as written."""
    record = Record()
    async with (
        _plain(redis_url, postgres_dsn, namespace, pg_schema) as first,
        _plain(redis_url, postgres_dsn, namespace, pg_schema) as second,
        _plain(redis_url, postgres_dsn, namespace, pg_schema) as third,
    ):
        memories = [first, second, third]
        async with asyncio.TaskGroup() as group:
            for index, memory in enumerate(memories):
                group.create_task(_agent(memory, index, record, coherent=False))
        _check_observations(record)
        print(f"{record.searches} searches, {len(record.observed)} hits, stale: {record.stale}")
        assert record.stale == []
        assert len(record.observed) > record.searches
        for memory in memories:
            for tier in memory.tiers[:2]:
                await tier.clear()  # plain caches are not coherent: read the home
        await _settled_search_matches_the_home(first, record)


async def test_connect_passes_its_embedder_to_the_semantic_index(namespace: str) -> None:
    """connect(semantic=True, embedder=...) embeds with that embedder; without semantic the
    embedder is refused with ConfigurationError."""
    embedder = HashingEmbedder()
    async with sagemem.connect(namespace=namespace, semantic=True, embedder=embedder) as memory:
        assert _index_of(memory).embedder is embedder
    with pytest.raises(ConfigurationError, match="needs semantic=True"):
        sagemem.connect(namespace=namespace, embedder=embedder)


async def test_index_operations_refuse_bad_input_and_a_missing_home(
    redis_url: str, postgres_dsn: str, namespace: str, pg_schema: str
) -> None:
    """A bad home version or reindex limit raises InvalidValueError; a tier without a home, or
    a home attached after connecting, raises ConfigurationError; nothing is indexed."""
    async with _plain(redis_url, postgres_dsn, namespace, pg_schema) as memory:
        index = _index_of(memory)
        entry = await index.prepare_index("comet note")
        with pytest.raises(InvalidValueError, match="home version"):
            await index.index_home("k", 0, entry)
        with pytest.raises(InvalidValueError, match="limit"):
            await index.reindex_home(0)
        assert "k" not in await _hits(memory, "comet note")
        with pytest.raises(ConfigurationError, match="before the DRAM tier connects"):
            index.attach_home(L3Tier(postgres_dsn, namespace=namespace, schema=pg_schema))
    async with DRAMTier(postgres_dsn, namespace=namespace, schema=pg_schema) as alone:
        with pytest.raises(ConfigurationError, match="indexes no home"):
            await alone.unindex_home("k")


async def test_a_table_of_an_older_sagemem_is_upgraded_in_place(
    redis_url: str, postgres_dsn: str, namespace: str, pg_schema: str, raw_postgres: Any
) -> None:
    """A semantic table created before index rows existed (with the check that a tombstone has
    no embedding) gains the new columns and check on connect; its rows stay readable."""
    await raw_postgres.execute("CREATE EXTENSION IF NOT EXISTS vector")
    vector = await raw_postgres.fetchval(
        "SELECT n.nspname FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace "
        "WHERE e.extname = 'vector'"
    )
    table = f'"{pg_schema}".dram_entries'
    await raw_postgres.execute(f'CREATE SCHEMA "{pg_schema}"')
    await raw_postgres.execute(
        f"CREATE TABLE {table} (namespace text NOT NULL, key text NOT NULL, value jsonb, "
        "version bigint NOT NULL CHECK (version >= 1), deleted boolean NOT NULL, "
        f'updated_at timestamptz NOT NULL DEFAULT now(), embedding "{vector}".vector(256), '
        "search_text text, search_tsv tsvector GENERATED ALWAYS AS "
        "(to_tsvector('english'::regconfig, coalesce(search_text, ''))) STORED, "
        "PRIMARY KEY (namespace, key), CHECK (deleted = (value IS NULL)), "
        "CHECK (deleted = (embedding IS NULL)))"
    )
    old = _EMBEDDER.embed_one("meadow note old")
    await raw_postgres.execute(
        f"INSERT INTO {table} (namespace, key, value, version, deleted, embedding, search_text) "
        f'VALUES ($1, $2, $3::text::jsonb, 3, false, $4::text::"{vector}".vector, $5)',
        namespace,
        "old",
        '"meadow note old"',
        str(old),
        "meadow note old",
    )
    async with _plain(redis_url, postgres_dsn, namespace, pg_schema) as memory:
        index = _index_of(memory)
        assert await index.read("old") == TierEntry("meadow note old", 3)
        version = await memory.set("new", "meadow note new", tier_index=2)
        hits = await _hits(memory, "meadow note")
        assert (hits["new"].version, hits["old"].version) == (version, 3)
    checks = await raw_postgres.fetch(
        "SELECT pg_get_constraintdef(oid) FROM pg_constraint WHERE conrelid = $1::regclass "
        "AND contype = 'c'",
        table,
    )
    definitions = [str(row[0]) for row in checks]
    assert "CHECK ((deleted = (embedding IS NULL)))" not in definitions
    assert any("home_version" in definition for definition in definitions)


async def test_an_index_failure_after_the_write_took_effect_is_logged_not_raised(
    redis_url: str,
    postgres_dsn: str,
    namespace: str,
    pg_schema: str,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The index update comes after the home committed: when it fails, the write still
    reports its version (it took effect and is read back), the failure is logged and counted,
    and the key is missing from search, never stale, until reindex_home repairs it."""
    async with _plain(redis_url, postgres_dsn, namespace, pg_schema) as hierarchy:
        index = _index_of(hierarchy)
        version = await hierarchy.set("note", "harbor lantern first", tier_index=2)
        original = index.index_home

        async def refused(*args: object, **kwargs: object) -> None:
            raise TierUnavailable("injected: the index write failed", tier="DRAM")

        monkeypatch.setattr(index, "index_home", refused)
        newer = await hierarchy.set("note", "glacier orchard second", tier_index=2)
        assert version is not None
        assert newer == version + 1
        entry = await hierarchy.read("note")
        assert entry is not None
        assert (entry.value, entry.version) == ("glacier orchard second", newer)
        assert hierarchy.index_failures == 1
        assert "was not updated after its write" in caplog.text
        assert "note" not in await _hits(hierarchy, "harbor lantern first")
        monkeypatch.setattr(index, "index_home", original)
        await index.reindex_home()
        hit = (await _hits(hierarchy, "glacier orchard"))["note"]
        assert (hit.value, hit.version) == ("glacier orchard second", newer)
