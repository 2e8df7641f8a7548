"""The in-process L1 tier: LRU bounds, copies in and out, misses versus stored None."""

from __future__ import annotations

import pytest
from hypothesis import given

from sagemem.errors import ConfigurationError, InvalidKeyError, InvalidValueError
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


async def test_stored_none_is_a_hit_not_a_miss() -> None:
    """read() returns an entry holding None for a stored None, and None for a miss."""
    l1 = L1Tier()
    await l1.set("n", None)
    assert await l1.read("n") == TierEntry(None, None)
    assert await l1.read("missing") is None
    assert await l1.get("missing", default="d") == "d"
    assert l1.statistics().hits == 1
    assert l1.statistics().misses == 2


async def test_returned_and_passed_objects_are_copies() -> None:
    """Mutating the object written or the object read never changes what is cached."""
    l1 = L1Tier()
    items: list[JSONValue] = [1, 2]
    await l1.set("k", {"list": items, "nested": {"a": 1}})
    items.append(3)
    read = await l1.get("k")
    assert read == {"list": [1, 2], "nested": {"a": 1}}
    assert isinstance(read, dict)
    nested = read["nested"]
    assert isinstance(nested, dict)
    nested["a"] = 99
    assert await l1.get("k") == {"list": [1, 2], "nested": {"a": 1}}


async def test_bad_key_or_value_changes_nothing() -> None:
    """Invalid input raises a typed error and leaves the cache as it was."""
    l1 = L1Tier()
    await l1.set("k", 1)
    with pytest.raises(InvalidValueError):
        await l1.set("k", (1, 2))  # type: ignore[arg-type]  # the point of the test
    with pytest.raises(InvalidKeyError):
        await l1.set("", 2)
    with pytest.raises(InvalidKeyError):
        await l1.get(5)  # type: ignore[arg-type]  # the point of the test
    assert await l1.get("k") == 1
    assert len(l1) == 1


async def test_fill_keeps_the_version_of_the_copy() -> None:
    """A promoted entry keeps the home version it was copied from."""
    l1 = L1Tier()
    await l1.fill("k", TierEntry("v", 7))
    assert await l1.read("k") == TierEntry("v", 7)


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
