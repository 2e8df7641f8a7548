"""MemoryHierarchy: fall-through reads, promotion, write placement, validation, statistics."""

from __future__ import annotations

import pytest

from sagemem.errors import ClosedResourceError, ConfigurationError, InvalidValueError
from sagemem.hierarchy import MemoryHierarchy
from sagemem.tiers.base import TierEntry
from sagemem.tiers.l1 import L1Tier
from tests.fake_tiers import RecordingTier


def _three_tiers() -> tuple[L1Tier, RecordingTier, RecordingTier, MemoryHierarchy]:
    l1 = L1Tier(capacity=8)
    l2 = RecordingTier("L2")
    l3 = RecordingTier("L3", versioned=True)
    return l1, l2, l3, MemoryHierarchy(tiers=[l1, l2, l3])


async def test_read_falls_through_and_promotes_with_the_home_version() -> None:
    """An L3 hit is copied into L2 and L1 with its version; the next read hits L1 only."""
    l1, l2, l3, h = _three_tiers()
    version = await h.set("fact:pi", 3.14159, tier_index=2)
    assert version == 1
    assert await h.get("fact:pi") == 3.14159
    assert await l1.read("fact:pi") == TierEntry(3.14159, 1)
    assert l2.entries["fact:pi"][1] == 1
    l2.calls.clear()
    l3.calls.clear()
    assert await h.get("fact:pi") == 3.14159
    assert l2.calls == []
    assert l3.calls == []
    stats = h.statistics()
    assert (stats.tier("L1").hits, stats.tier("L1").misses) == (1, 1)
    assert (stats.tier("L3").hits, stats.tier("L3").writes) == (1, 1)


async def test_write_at_a_slower_tier_drops_faster_copies() -> None:
    """After a write at L3, no faster tier serves the previous value."""
    l1, _, _, h = _three_tiers()
    await h.set("k", "old", tier_index=2)
    assert await h.get("k") == "old"
    await h.set("k", "new", tier_index=2)
    assert await l1.read("k") is None
    assert await h.get("k") == "new"


async def test_stored_none_is_returned_without_falling_through() -> None:
    """A None stored in L1 is a hit: slower tiers are not asked."""
    _, l2, _, h = _three_tiers()
    await h.set("n", None, tier_index=0)
    assert await h.get("n", default="missing") is None
    assert l2.calls == []


async def test_miss_everywhere_returns_default() -> None:
    """A key no tier holds returns the default and counts one hierarchy miss."""
    _, _, _, h = _three_tiers()
    assert await h.get("absent", default=42) == 42
    assert h.statistics().misses == 1


async def test_invalid_value_touches_no_tier() -> None:
    """A value that would not round-trip is refused before any tier is called."""
    _, l2, l3, h = _three_tiers()
    with pytest.raises(InvalidValueError):
        await h.set("k", {"bad": {1, 2}}, tier_index=2)  # type: ignore[dict-item]  # the point
    assert l2.calls == []
    assert l3.calls == []


@pytest.mark.parametrize("tier_index", [-1, 3, "1", 1.0])
async def test_out_of_range_tier_index_is_refused(tier_index: object) -> None:
    """tier_index must name one of the hierarchy's tiers."""
    _, l2, _, h = _three_tiers()
    with pytest.raises(ConfigurationError, match="tier_index"):
        await h.set("k", 1, tier_index=tier_index)  # type: ignore[arg-type]  # the point
    assert l2.calls == []


async def test_delete_removes_the_key_from_every_tier() -> None:
    """delete() clears all copies, so the next read misses."""
    _, _, _, h = _three_tiers()
    await h.set("k", 1, tier_index=2)
    await h.get("k")
    assert await h.delete("k") is True
    assert await h.get("k") is None
    assert await h.exists("k") is False


async def test_hierarchy_closes_only_owned_tiers() -> None:
    """Borrowed tiers stay open; owned ones are closed once, even if aclose() runs twice."""
    borrowed = RecordingTier("L2")
    async with MemoryHierarchy([borrowed]) as h:
        assert borrowed.connected == 1
    assert borrowed.closed == 0
    owned = RecordingTier("L2")
    h = MemoryHierarchy([owned], owns_tiers=True)
    await h.aclose()
    await h.aclose()
    assert owned.closed == 1
    with pytest.raises(ClosedResourceError):
        await h.get("k")


def test_objects_that_are_not_tiers_are_refused() -> None:
    """A non-tier in the list is refused with the index named."""
    with pytest.raises(ConfigurationError, match=r"tiers\[1\]"):
        MemoryHierarchy([L1Tier(), object()])  # type: ignore[list-item]  # the point
