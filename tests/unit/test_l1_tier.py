"""The in-process L1 tier: LRU bounds, its statistics, settings (the contract every tier keeps is
tested once for all of them in tests/integration/test_tier_contract.py)."""

from __future__ import annotations

import pytest
from hypothesis import given

from sagemem.errors import ConfigurationError
from sagemem.tiers.base import TierEntry
from sagemem.tiers.l1 import L1Tier
from sagemem.values import JSONValue
from tests.json_samples import assert_same_json, json_values


async def test_least_recently_used_entry_is_evicted_at_capacity() -> None:
    """With capacity 2, reading 'a' makes 'b' the one evicted by a third insert."""
    l1 = L1Tier(capacity=2)
    await l1.set("a", 1)
    await l1.set("b", 2)
    assert await l1.get("a") == 1
    await l1.set("c", 3)
    assert l1.keys() == ["a", "c"]
    assert l1.statistics().evictions == 1


async def test_byte_bound_evicts_until_the_entries_fit() -> None:
    """The byte bound evicts old entries; one entry larger than the bound is refused."""
    l1 = L1Tier(capacity=100, size_max_bytes=30)  # each entry is 13 bytes
    await l1.set("a", "x" * 10)
    await l1.set("b", "y" * 10)
    await l1.set("c", "z" * 10)
    assert l1.keys() == ["b", "c"]
    assert l1.statistics().size_bytes <= 30
    with pytest.raises(ConfigurationError, match="size_max_bytes"):
        await l1.set("big", "w" * 100)
    assert l1.keys() == ["b", "c"]


async def test_a_stored_none_counts_as_a_hit_and_a_missing_key_as_a_miss() -> None:
    """The statistics count a read of a stored None as a hit (the contract tests,
    tests/integration/test_tier_contract.py, check what such reads return)."""
    l1 = L1Tier()
    await l1.set("n", None)
    assert await l1.read("n") == TierEntry(None, None)
    assert await l1.read("missing") is None
    assert await l1.get("missing", default="d") == "d"
    assert l1.statistics().hits == 1
    assert l1.statistics().misses == 2


@pytest.mark.parametrize("capacity", [0, -1, 1.5, "10"])
def test_invalid_capacity_is_refused(capacity: object) -> None:
    """Capacity must be a positive int."""
    with pytest.raises(ConfigurationError):
        L1Tier(capacity=capacity)  # type: ignore[arg-type]  # the point of the test


async def test_aclose_is_idempotent_and_empties_the_cache() -> None:
    """aclose() may be called twice and drops all entries."""
    async with L1Tier() as l1:
        await l1.set("k", 1)
    await l1.aclose()
    assert len(l1) == 0


@given(json_values)
async def test_every_json_value_reads_back_equal_with_the_same_types(value: JSONValue) -> None:
    """Whatever L1 accepts, it returns equal, with the same type at every position."""
    l1 = L1Tier()
    await l1.set("k", value)
    assert_same_json(value, await l1.get("k"))
