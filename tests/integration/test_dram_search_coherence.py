"""Search stays coherent with writes: concurrent writers and searchers on real Postgres.

Several agents (each its own `DRAMTier`, so its own connection pool) write, update and delete
keys while other agents search. Checked on every hit: the version is never older than one the
searching agent already saw for that key (by `read` or an earlier search), the value is exactly
the one its writer stored at that version, the distance is the one of that value's own
embedding (so value and embedding come from the same write), and a key whose deletion had
returned before a search started is not in that search's hits.
"""

from __future__ import annotations

import asyncio
import math
import random
from dataclasses import dataclass, field

from sagemem.embedding import HashingEmbedder
from sagemem.tiers.dram import DRAMTier
from sagemem.values import JSONValue

WRITERS = 3
SEARCHERS = 2
KEYS = 8
ROUNDS = 25
SEARCHES = 40
WORDS = ["harbor", "lantern", "violin", "glacier", "orchard", "comet", "falcon", "meadow"]


@dataclass
class Record:
    """What the writers committed and what the searchers observed."""

    values: dict[tuple[str, int], JSONValue] = field(default_factory=dict)
    # key -> the highest version a returned delete superseded
    deleted_versions: dict[str, int] = field(default_factory=dict)
    stale: list[str] = field(default_factory=list)
    checked_hits: int = 0


def _text(value: JSONValue) -> str:
    assert isinstance(value, dict)
    text = value["text"]
    assert isinstance(text, str)
    return text


async def _writer(tier: DRAMTier, writer: int, record: Record, seed: int) -> None:
    rng = random.Random(seed)
    for round_number in range(ROUNDS):
        key = f"k{rng.randrange(KEYS)}"
        word = WORDS[int(key[1:])]
        value: JSONValue = {
            "text": f"{word} note {writer}-{round_number} {rng.choice(WORDS)}",
            "writer": writer,
            "round": round_number,
        }
        version = await tier.set(key, value)
        record.values[(key, version)] = value
        if key != "k0" and rng.random() < 0.15 and await tier.delete(key):
            # the tombstone is newer than `version`: no later search may return it
            previous = record.deleted_versions.get(key, 0)
            record.deleted_versions[key] = max(previous, version)


async def _searcher(tier: DRAMTier, record: Record, seed: int) -> None:
    rng = random.Random(seed)
    seen: dict[str, int] = {}
    embedder = HashingEmbedder()
    for _ in range(SEARCHES):
        key = f"k{rng.randrange(KEYS)}"
        entry = await tier.read(key)
        if entry is not None and entry.version is not None:
            seen[key] = max(seen.get(key, 0), entry.version)
        query = f"{WORDS[int(key[1:])]} note"
        deleted = dict(record.deleted_versions)  # deletions that returned before the search
        hits = await tier.search(query, limit=KEYS, mode=rng.choice(["hybrid", "vector", "text"]))
        query_vector = embedder.embed_one(query)
        for hit in hits:
            record.checked_hits += 1
            if hit.version < seen.get(hit.key, 0):
                record.stale.append(f"{hit.key} v{hit.version} after v{seen[hit.key]} was seen")
            seen[hit.key] = max(seen.get(hit.key, 0), hit.version)
            own = embedder.embed_one(_text(hit.value))
            expected = 1.0 - math.fsum(a * b for a, b in zip(query_vector, own, strict=True))
            if not math.isclose(hit.distance, expected, abs_tol=1e-4):
                record.stale.append(f"{hit.key} v{hit.version}: embedding of another value")
            if hit.version <= deleted.get(hit.key, 0):
                record.stale.append(f"{hit.key} v{hit.version} was deleted before the search")
        await asyncio.sleep(0)


async def test_concurrent_writers_never_make_a_search_return_stale_entries(
    postgres_dsn: str, namespace: str, pg_schema: str
) -> None:
    """0 stale hits: versions never go back, values and embeddings match what was written."""
    tiers = [
        DRAMTier(
            postgres_dsn, namespace=namespace, schema=pg_schema, pool_size_max=2, text_of=_text
        )
        for _ in range(WRITERS + SEARCHERS)
    ]
    record = Record()
    for tier in tiers:
        await tier.connect()
    try:
        for index in range(KEYS):
            key = f"k{index}"
            value: JSONValue = {"text": f"{WORDS[index]} note start", "writer": -1, "round": -1}
            record.values[(key, await tiers[0].set(key, value))] = value
        async with asyncio.TaskGroup() as group:
            for writer in range(WRITERS):
                group.create_task(_writer(tiers[writer], writer, record, seed=writer))
            for searcher in range(SEARCHERS):
                group.create_task(_searcher(tiers[WRITERS + searcher], record, seed=100 + searcher))
        assert record.stale == []
        assert record.checked_hits > SEARCHES
        # After the writers stop, every live key is found at its latest version.
        latest: dict[str, int] = {}
        for key, version in record.values:
            latest[key] = max(latest.get(key, 0), version)
        for key in latest:
            entry = await tiers[-1].read(key)
            assert entry is None or record.values[(key, entry.version or 0)] == entry.value
            hits = await tiers[-1].search(f"{WORDS[int(key[1:])]} note", limit=KEYS)
            found = {hit.key: hit.version for hit in hits}
            if entry is None:
                assert key not in found
            else:
                assert found.get(key) == entry.version
    finally:
        for tier in tiers:
            await tier.aclose()
