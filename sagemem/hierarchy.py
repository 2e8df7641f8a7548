"""`MemoryHierarchy`: reads fall through the tiers in order and promote a hit into faster tiers.

The hierarchy validates keys and values once, before any tier is touched, so bad input changes
nothing anywhere. A write at tier i stores the value there and removes the key from the faster
tiers 0..i-1 (they would otherwise serve the older copy); the next read falls through to tier i
and promotes the new value. Promotion copies the entry with its home version, so a cached copy
always says which version it is. For several agents sharing tiers, coherent L1s keep every
agent's copies fresh (see `sagemem.tiers.l1_coherent`); this module adds no coherence itself.
"""

from __future__ import annotations

import statistics as _stats
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from sagemem._lifecycle import AsyncResource
from sagemem.errors import ClosedResourceError, ConfigurationError
from sagemem.tiers.base import Tier, TierEntry, TierStatistics
from sagemem.values import JSONValue, check_key, encode_value

__all__ = ["HierarchyStatistics", "MemoryHierarchy"]

_LATENCY_SAMPLES_MAX: Final = 4096


@dataclass(frozen=True, slots=True)
class HierarchyStatistics:
    """Per-tier counters of one hierarchy, fastest tier first (a plain snapshot)."""

    tiers: tuple[TierStatistics, ...]
    reads: int
    misses: int

    def tier(self, name: str) -> TierStatistics:
        """The statistics of the tier called `name` (e.g. "L2")."""
        for tier in self.tiers:
            if tier.name == name:
                return tier
        raise KeyError(f"no tier named {name!r}; tiers are {[t.name for t in self.tiers]}")


class _TierCounters:
    __slots__ = ("hits", "latencies_ns", "misses", "writes")

    def __init__(self) -> None:
        self.hits = 0
        self.misses = 0
        self.writes = 0
        self.latencies_ns: deque[int] = deque(maxlen=_LATENCY_SAMPLES_MAX)


class MemoryHierarchy(AsyncResource):
    """An ordered list of tiers, fastest first, read through and promoted on hit.

    The tiers are borrowed unless `owns_tiers=True`: `aclose()` closes only tiers it owns
    (`sagemem.connect()` builds a hierarchy that owns its tiers). `connect()` connects every
    tier (each tier's `connect()` is idempotent).
    """

    def __init__(self, tiers: Sequence[Tier], *, owns_tiers: bool = False) -> None:
        if not tiers:
            raise ConfigurationError("MemoryHierarchy needs at least one tier, got none")
        for index, tier in enumerate(tiers):
            if not isinstance(tier, Tier):
                raise ConfigurationError(
                    f"tiers[{index}] is a {type(tier).__name__}, which does not implement the "
                    "Tier interface (read/write/fill/delete/exists/clear/connect/aclose)"
                )
        self.tiers: Final[tuple[Tier, ...]] = tuple(tiers)
        self._owns_tiers = owns_tiers
        self._closed = False
        self._counters = tuple(_TierCounters() for _ in self.tiers)
        self._reads = 0
        self._misses = 0

    async def connect(self) -> None:
        """Connect every tier."""
        for tier in self.tiers:
            await tier.connect()

    async def aclose(self) -> None:
        """Close the tiers this hierarchy owns (idempotent); borrowed tiers stay open."""
        if self._closed:
            return
        self._closed = True
        if not self._owns_tiers:
            return
        errors: list[BaseException] = []
        for tier in reversed(self.tiers):
            try:
                await tier.aclose()
            except Exception as error:  # close the rest, then report the first failure
                errors.append(error)
        if errors:
            raise errors[0]

    def _check_open(self) -> None:
        if self._closed:
            raise ClosedResourceError("this MemoryHierarchy was closed with aclose()")

    def _check_tier_index(self, tier_index: object) -> int:
        if type(tier_index) is not int or not 0 <= tier_index < len(self.tiers):
            names = ", ".join(f"{i}={t.name}" for i, t in enumerate(self.tiers))
            raise ConfigurationError(
                f"tier_index {tier_index!r} is out of range; this hierarchy has {names}"
            )
        return tier_index

    async def read(self, key: str) -> TierEntry | None:
        """The entry for `key` from the fastest tier holding it (promoted), or None on a miss."""
        self._check_open()
        check_key(key)
        self._reads += 1
        for index, tier in enumerate(self.tiers):
            counters = self._counters[index]
            started_ns = time.perf_counter_ns()
            entry = await tier.read(key)
            counters.latencies_ns.append(time.perf_counter_ns() - started_ns)
            if entry is None:
                counters.misses += 1
                continue
            counters.hits += 1
            for faster in self.tiers[:index]:
                await faster.fill(key, entry)
            return entry
        self._misses += 1
        return None

    async def get(self, key: str, default: JSONValue = None) -> JSONValue:
        """The value of `key` from the fastest tier holding it, or `default` if no tier has it.

        A stored None is a value: it is returned (and promoted) like any other.
        """
        entry = await self.read(key)
        return default if entry is None else entry.value

    async def set(self, key: str, value: JSONValue, tier_index: int = 0) -> int | None:
        """Write `value` at tier `tier_index` and drop the faster tiers' copies of `key`.

        Returns the new home version when the tier assigns one (L3), else None. The key and
        value are checked before any tier is touched.
        """
        self._check_open()
        check_key(key)
        index = self._check_tier_index(tier_index)
        encode_value(value)
        version = await self.tiers[index].write(key, value)
        self._counters[index].writes += 1
        for faster in self.tiers[:index]:
            await faster.delete(key)
        return version

    async def delete(self, key: str) -> bool:
        """Remove `key` from every tier, slowest first; return whether any tier held it."""
        self._check_open()
        check_key(key)
        removed = False
        for tier in reversed(self.tiers):
            removed = await tier.delete(key) or removed
        return removed

    async def exists(self, key: str) -> bool:
        """Whether any tier holds `key` (does not promote)."""
        self._check_open()
        check_key(key)
        for tier in self.tiers:
            if await tier.exists(key):
                return True
        return False

    async def clear(self) -> None:
        """Clear every tier (each tier clears only its own namespace)."""
        self._check_open()
        for tier in self.tiers:
            await tier.clear()

    def statistics(self) -> HierarchyStatistics:
        """Hits, misses, writes and read latency (median, p99, in microseconds) per tier."""
        snapshots = []
        for tier, counters in zip(self.tiers, self._counters, strict=True):
            samples = sorted(counters.latencies_ns)
            median = _stats.median(samples) / 1000 if samples else None
            p99 = (
                samples[min(len(samples) - 1, int(len(samples) * 0.99))] / 1000 if samples else None
            )
            snapshots.append(
                TierStatistics(
                    name=tier.name,
                    hits=counters.hits,
                    misses=counters.misses,
                    writes=counters.writes,
                    read_latency_us_median=median,
                    read_latency_us_p99=p99,
                )
            )
        return HierarchyStatistics(tiers=tuple(snapshots), reads=self._reads, misses=self._misses)
