"""Compare-and-swap and update on a plain hierarchy (no coherent L1): the conflict policies of
`sagemem.conflicts` over the L3 home, with the faster tiers' copies dropped after a swap."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from sagemem.errors import InvalidValueError, VersionConflict
from sagemem.hierarchy import MemoryHierarchy
from sagemem.tiers.base import Tier
from sagemem.tiers.l1 import L1Tier
from sagemem.tiers.l2 import L2Tier
from sagemem.tiers.l3 import L3Tier
from sagemem.values import JSONValue


@pytest.fixture
async def hierarchy(
    redis_url: str, postgres_dsn: str, namespace: str, pg_schema: str
) -> AsyncIterator[MemoryHierarchy]:
    tiers: list[Tier] = [
        L1Tier(),
        L2Tier(url=redis_url, namespace=namespace),
        L3Tier(dsn=postgres_dsn, namespace=namespace, schema=pg_schema),
    ]
    made = MemoryHierarchy(tiers, owns_tiers=True)
    await made.connect()
    try:
        yield made
    finally:
        await made.aclose()


async def test_reject_raises_with_both_versions_and_changes_nothing(
    hierarchy: MemoryHierarchy,
) -> None:
    created = await hierarchy.compare_and_swap("k", "first", None)
    assert await hierarchy.get("k") == "first"  # promoted into L1 and L2
    with pytest.raises(VersionConflict) as conflict:
        await hierarchy.compare_and_swap("k", "second", None)
    assert (conflict.value.expected, conflict.value.actual) == (None, created)
    assert await hierarchy.get("k") == "first"
    assert await hierarchy.compare_and_swap("k", "second", created) == created + 1
    assert await hierarchy.get("k") == "second"  # the faster copies were dropped


async def test_merge_and_last_writer_wins_are_explicit(hierarchy: MemoryHierarchy) -> None:
    old = await hierarchy.compare_and_swap("k", [1], None)
    await hierarchy.set("k", [2], tier_index=2)
    merged = await hierarchy.compare_and_swap(
        "k", [3], old, on_conflict=lambda mine, theirs: [theirs, mine]
    )
    assert await hierarchy.get("k") == [[2], [3]]
    assert await hierarchy.compare_and_swap("k", "x", old, on_conflict="last_writer_wins") == (
        merged + 1
    )
    assert await hierarchy.get("k") == "x"
    with pytest.raises(InvalidValueError):
        await hierarchy.compare_and_swap("k", "y", old, on_conflict="sometimes")  # type: ignore[arg-type]  # the bad input
    with pytest.raises(InvalidValueError):
        await hierarchy.compare_and_swap("k", "y", old, attempts=0)
    assert await hierarchy.get("k") == "x"


def _increment(value: JSONValue) -> JSONValue:
    return value + 1 if isinstance(value, int) else 1


async def test_update_reads_modifies_and_writes(hierarchy: MemoryHierarchy) -> None:
    first = await hierarchy.update("counter", _increment)
    second = await hierarchy.update("counter", _increment)
    assert second == first + 1
    assert await hierarchy.get("counter") == 2
