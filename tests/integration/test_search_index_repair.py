"""Home entries without an index row are indexed when a hierarchy opens, or on request.

Entries written to L3 by a program without the semantic tier (or by a writer that stopped
between its commit and its index write) are missing from searches. A `MemoryHierarchy` with a
semantic index indexes them in the background when it connects, `reindex()` does it at once,
and `sagemem reindex` does it from a shell. Real Postgres throughout.
"""

from __future__ import annotations

import asyncio

import pytest

from sagemem.errors import ConfigurationError
from sagemem.hierarchy import MemoryHierarchy
from sagemem.reindex import main as reindex_main
from sagemem.tiers.dram import DRAMTier
from sagemem.tiers.l3 import L3Tier


def _hierarchy(
    postgres_dsn: str, namespace: str, schema: str, *, reindex_on_connect: bool = True
) -> MemoryHierarchy:
    tiers = [
        L3Tier(postgres_dsn, namespace=namespace, schema=schema, pool_size_max=2),
        DRAMTier(postgres_dsn, namespace=namespace, schema=schema, pool_size_max=2),
    ]
    return MemoryHierarchy(tiers, owns_tiers=True, reindex_on_connect=reindex_on_connect)


async def _found(hierarchy: MemoryHierarchy, query: str) -> dict[str, tuple[object, int]]:
    index = hierarchy.semantic_index
    assert index is not None
    return {hit.key: (hit.value, hit.version) for hit in await index.search(query, limit=20)}


async def test_entries_written_without_the_semantic_tier_are_indexed_when_a_hierarchy_opens(
    postgres_dsn: str, namespace: str, pg_schema: str
) -> None:
    """Two values an L3-only program wrote (one replacing an indexed value) are found, at the
    home's versions, once the hierarchy's open-time repair finished; nothing is left after."""
    async with _hierarchy(postgres_dsn, namespace, pg_schema) as first:
        # The open-time repair of an empty namespace finishes before the write, so it cannot
        # race the write's own index update (it would index the new entry itself).
        assert await first.wait_reindexed() == 0
        await first.set("fact:a", "harbor lantern old", tier_index=0)
    async with L3Tier(postgres_dsn, namespace=namespace, schema=pg_schema) as outside:
        replaced = await outside.write("fact:a", "harbor lantern new")
        added = await outside.write("fact:b", "harbor violin")
    async with _hierarchy(postgres_dsn, namespace, pg_schema) as memory:
        assert await memory.wait_reindexed() == 2
        found = await _found(memory, "harbor")
        assert found == {
            "fact:a": ("harbor lantern new", replaced),
            "fact:b": ("harbor violin", added),
        }
        assert await memory.reindex() == 0


async def test_without_reindex_on_connect_entries_stay_missing_until_reindex_runs(
    postgres_dsn: str, namespace: str, pg_schema: str
) -> None:
    """reindex_on_connect=False opens without repairing: the L3-only write is missing from
    search (never stale) until `reindex()` indexes it and returns 1."""
    async with L3Tier(postgres_dsn, namespace=namespace, schema=pg_schema) as outside:
        version = await outside.write("note", "glacier orchard")
    async with _hierarchy(postgres_dsn, namespace, pg_schema, reindex_on_connect=False) as memory:
        assert await memory.wait_reindexed() == 0
        assert await _found(memory, "glacier orchard") == {}
        assert await memory.reindex() == 1
        assert await _found(memory, "glacier orchard") == {"note": ("glacier orchard", version)}


async def test_the_reindex_command_indexes_what_an_l3_only_program_wrote(
    postgres_dsn: str, namespace: str, pg_schema: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """`sagemem reindex --namespace NS` prints how many entries it indexed and exits 0; a
    hierarchy opened later finds the entry without repairing anything itself."""
    async with L3Tier(postgres_dsn, namespace=namespace, schema=pg_schema) as outside:
        version = await outside.write("plan", "comet falcon meadow")
    arguments = ["--namespace", namespace, "--schema", pg_schema, "--postgres-dsn", postgres_dsn]
    assert await _run_in_thread(arguments) == 0
    assert f"indexed 1 entries of namespace {namespace!r}" in capsys.readouterr().out
    async with _hierarchy(postgres_dsn, namespace, pg_schema) as memory:
        assert await memory.wait_reindexed() == 0
        assert await _found(memory, "comet") == {"plan": ("comet falcon meadow", version)}


async def _run_in_thread(arguments: list[str]) -> int:
    """The command runs its own event loop (asyncio.run), so it runs in a worker thread."""
    return await asyncio.to_thread(reindex_main, arguments)


def test_the_reindex_command_refuses_an_unknown_embedder_setting(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`--embedder openai` without a model is a usage error (exit 2) that says what is missing."""
    assert reindex_main(["--namespace", "ns", "--embedder", "openai"]) == 2
    assert "--embedding-model" in capsys.readouterr().err


def test_reindex_on_connect_must_be_a_bool() -> None:
    """A non-bool reindex_on_connect is refused with ConfigurationError naming the value."""
    with pytest.raises(ConfigurationError, match=r"reindex_on_connect.*'yes'"):
        MemoryHierarchy([L3Tier()], reindex_on_connect="yes")  # type: ignore[arg-type]
