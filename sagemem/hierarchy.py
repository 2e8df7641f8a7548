"""`MemoryHierarchy`: reads fall through the tiers in order and promote a hit into faster tiers.

The hierarchy validates keys and values once, before any tier is touched, so bad input changes
nothing anywhere. A write at tier i stores the value there and removes the key from the faster
tiers 0..i-1 (they would otherwise serve the older copy); the next read falls through to tier i
and promotes the new value. Promotion copies the entry with its home version, so a cached copy
always says which version it is.

With a `CoherentL1Tier` as tier 0 (several agents sharing L2 and L3), the hierarchy hands the
shared tiers to the protocol: the L1 uses the hierarchy's L3 as its home, a read is the L1's
coherent read (its fill consults L2 with a fill lease, then the home; a promotion is a fill and
never invalidates anyone), a write at tier 0 takes ownership, a write at the L2 or L3 index is
a write-through (the home commits a new version, then every copy, L2's included, is
invalidated), and `delete` commits a deletion the same way. Tiers after the home (the semantic
tier) are consulted only when the home has no value, and written directly.

Coherent search: when an L3Tier is followed by a `DRAMTier` on the same DSN, the semantic tier
becomes the search index of the home (`DRAMTier.attach_home`). Every write this hierarchy
commits at the home is embedded before the write and indexed at the version the home assigned
before the call returns, with the value committed as that version (a coherent tier-0 write's
value may stay in the owner's L1 until written back; the index row carries it); a delete drops
the index row. A hit is an index row whose home row holds its version in the search's own
snapshot (live at it, or reserved at it by an owner), so it carries the home's version, the one
a `get` reports, and the value of that version; between a commit and its index write the key is
missing from searches, never stale. A plain (non-coherent) write at a tier before L3 is a
cache write without a home version: it drops the key's index row, so a search cannot return
the home's older value while this hierarchy serves the newer. See decision record 0006.
"""

from __future__ import annotations

import asyncio
import logging
import statistics as _stats
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Final

from sagemem._lifecycle import AsyncResource
from sagemem.coherence.home import HomeStore
from sagemem.conflicts import ConflictPolicy, check_attempts, check_policy, swap_with_policy
from sagemem.conflicts import update as update_with_retries
from sagemem.errors import ClosedResourceError, ConfigurationError, SageMemError
from sagemem.tiers.base import Tier, TierEntry, TierStatistics
from sagemem.tiers.dram import DRAMTier, IndexEntry
from sagemem.tiers.l1_coherent import CoherentL1Tier
from sagemem.tiers.l2 import L2Tier
from sagemem.tiers.l3 import L3Tier
from sagemem.values import JSONValue, check_key, encode_value

__all__ = ["HierarchyStatistics", "MemoryHierarchy"]

_logger = logging.getLogger("sagemem.hierarchy")

_LATENCY_SAMPLES_MAX: Final = 4096
_REINDEX_BATCH: Final = 1000


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
    tier (each tier's `connect()` is idempotent). With a semantic index (see
    `semantic_index`), `connect()` also starts indexing, in a background task, the home's
    entries that have no index row for their current version (see `reindex`), unless
    `reindex_on_connect=False`; `wait_reindexed()` awaits it.
    """

    def __init__(
        self, tiers: Sequence[Tier], *, owns_tiers: bool = False, reindex_on_connect: bool = True
    ) -> None:
        if not tiers:
            raise ConfigurationError("MemoryHierarchy needs at least one tier, got none")
        for index, tier in enumerate(tiers):
            if not isinstance(tier, Tier):
                raise ConfigurationError(
                    f"tiers[{index}] is a {type(tier).__name__}, which does not implement the "
                    "Tier interface (read/write/fill/delete/exists/clear/connect/aclose)"
                )
        self.tiers: Final[tuple[Tier, ...]] = tuple(tiers)
        self._coherent: CoherentL1Tier | None = None
        self._home_index = -1
        self._l2_index = -1
        if isinstance(tiers[0], CoherentL1Tier):
            self._bind_coherent_l1()
        self._index: DRAMTier | None = None
        self._index_home = -1  # the index of the L3 tier the semantic tier indexes
        if type(reindex_on_connect) is not bool:
            raise ConfigurationError(
                f"reindex_on_connect must be True or False, got {reindex_on_connect!r}"
            )
        self._reindex_on_connect = reindex_on_connect
        self._reindexing: asyncio.Task[int] | None = None  # started by connect()
        # Index updates that failed after their write took effect (logged; see _after_commit).
        self.index_failures = 0
        if any(isinstance(tier, DRAMTier) for tier in tiers):
            self._bind_semantic_index()
        self._owns_tiers = owns_tiers
        # Awaited by aclose() after the owned tiers are closed (e.g. the bus of a coherent L1
        # that sagemem.connect() made).
        self.closing_callbacks: list[Callable[[], Awaitable[None]]] = []
        self._closed = False
        self._counters = tuple(_TierCounters() for _ in self.tiers)
        self._reads = 0
        self._misses = 0

    def _bind_coherent_l1(self) -> None:
        """Give the coherent L1 the hierarchy's L3 as its home; check the namespaces agree."""
        l1 = self.tiers[0]
        assert isinstance(l1, CoherentL1Tier)
        for index, tier in enumerate(self.tiers):
            if index and isinstance(tier, CoherentL1Tier):
                raise ConfigurationError(
                    f"tiers[{index}] is a CoherentL1Tier: only tier 0 may be one"
                )
            if isinstance(tier, L3Tier):
                if self._home_index >= 0:
                    raise ConfigurationError(
                        "a hierarchy with a CoherentL1Tier needs exactly one L3Tier (the home); "
                        f"tiers[{self._home_index}] and tiers[{index}] are both L3Tiers"
                    )
                self._home_index = index
            elif isinstance(tier, L2Tier):
                self._l2_index = index
        if self._home_index < 0:
            raise ConfigurationError(
                "a hierarchy with a CoherentL1Tier needs an L3Tier: the home where versions "
                "are committed (e.g. tiers=[coherent_l1, l2, l3])"
            )
        if 0 <= self._l2_index > self._home_index:
            raise ConfigurationError("the L2Tier must come before the L3Tier")
        namespace = l1.bus.namespace
        for index in (self._l2_index, self._home_index):
            if index >= 0:
                tier_namespace = getattr(self.tiers[index], "namespace", namespace)
                if tier_namespace != namespace:
                    raise ConfigurationError(
                        f"tiers[{index}] ({self.tiers[index].name}) has namespace "
                        f"{tier_namespace!r} but the coherence bus has {namespace!r}: the "
                        "protocol needs one namespace for the bus, L2 and L3"
                    )
        home = self.tiers[self._home_index]
        assert isinstance(home, L3Tier)
        l1.attach_home(home)
        self._coherent = l1

    def _bind_semantic_index(self) -> None:
        """Make the first DRAMTier after an L3Tier on the same DSN that L3's search index."""
        home_index = next(
            (index for index, tier in enumerate(self.tiers) if isinstance(tier, L3Tier)), -1
        )
        if home_index < 0:
            return
        home = self.tiers[home_index]
        assert isinstance(home, L3Tier)
        for tier in self.tiers[home_index + 1 :]:
            if (
                isinstance(tier, DRAMTier)
                and tier.home is None
                and tier.namespace == home.namespace
                and tier._dsn_argument == home._dsn_argument
            ):
                tier.attach_home(home)
                self._index, self._index_home = tier, home_index
                return

    @property
    def semantic_index(self) -> DRAMTier | None:
        """The DRAMTier that indexes this hierarchy's home for search, or None."""
        return self._index

    @property
    def coherent_l1(self) -> CoherentL1Tier | None:
        """Tier 0 if it is a `CoherentL1Tier`, else None."""
        return self._coherent

    async def connect(self) -> None:
        """Connect every tier (a coherent L1 last, once its home is connected)."""
        for tier in self.tiers[1:] if self._coherent is not None else self.tiers:
            await tier.connect()
        if self._coherent is not None:
            await self._coherent.start()
        if self._index is not None and self._reindex_on_connect and self._reindexing is None:
            self._reindexing = asyncio.get_running_loop().create_task(
                self._reindex_in_background(), name="sagemem search index repair"
            )

    async def reindex(self) -> int:
        """Index every live home entry that has no index row for its current version, now;
        return how many were indexed (0 without a semantic index).

        Such entries come from a writer that stopped between its commit and its index write,
        an owner whose lease lapsed (the home gave its value a version of its own), or writes
        to L3 from a program without the semantic tier. They are missing from searches (never
        stale) until indexed. `connect()` runs this in the background; call it after writing
        to L3 from outside, or use `sagemem reindex` from a shell.
        """
        self._check_open()
        index = self._index
        if index is None:
            return 0
        total = 0
        while True:
            indexed = await index.reindex_home(limit=_REINDEX_BATCH)
            total += indexed
            if indexed < _REINDEX_BATCH:
                return total

    async def wait_reindexed(self) -> int:
        """Await the indexing `connect()` started (see `reindex`); return how many entries it
        indexed (0 if it did not run or failed; a failure is logged and counted in
        `index_failures`)."""
        task = self._reindexing
        return 0 if task is None else await asyncio.shield(task)

    async def _reindex_in_background(self) -> int:
        try:
            indexed = await self.reindex()
        except SageMemError as error:
            self.index_failures += 1
            _logger.warning(
                "indexing the home's unindexed entries on connect failed (%s); they stay "
                "missing from searches until MemoryHierarchy.reindex() runs",
                error,
            )
            return 0
        if indexed:
            _logger.info("indexed %d home entries that had no index row on connect", indexed)
        return indexed

    async def aclose(self) -> None:
        """Close the tiers this hierarchy owns (idempotent); borrowed tiers stay open."""
        if self._closed:
            return
        self._closed = True
        reindexing, self._reindexing = self._reindexing, None
        if reindexing is not None:  # the index repair stops with the hierarchy
            reindexing.cancel()
            await asyncio.wait([reindexing])
        errors: list[BaseException] = []
        if self._owns_tiers:
            # A coherent L1 closes first: it writes its owned entries back to the home (L3)
            # and releases its registrations in Redis, so both must still be open.
            order = [t for t in reversed(self.tiers) if t is not self._coherent]
            if self._coherent is not None:
                order.insert(0, self._coherent)
            for tier in order:
                try:
                    await tier.aclose()
                except Exception as error:  # close the rest, then report the first failure
                    errors.append(error)
        for callback in self.closing_callbacks:
            try:
                await callback()
            except Exception as error:
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
        if self._coherent is not None:
            return await self._coherent_read(self._coherent, key)
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

    async def _coherent_read(self, l1: CoherentL1Tier, key: str) -> TierEntry | None:
        started_ns = time.perf_counter_ns()
        entry, source = await l1.read_from(key)
        elapsed_ns = time.perf_counter_ns() - started_ns
        found = {0: 0, 1: self._l2_index, 2: self._home_index}[source]
        if found < 0:
            found = self._home_index
        if entry is None:
            found = self._home_index + 1
            for index in range(self._home_index + 1, len(self.tiers)):
                entry = await self.tiers[index].read(key)
                if entry is not None:
                    found = index
                    break
        for index in range(min(found + 1, len(self.tiers))):
            counters = self._counters[index]
            if index == found:
                counters.hits += 1
                counters.latencies_ns.append(elapsed_ns)
            elif index == 0 or index in (self._l2_index, self._home_index):
                counters.misses += 1
        if entry is None:
            self._misses += 1
        return entry

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
        semantic = self._index
        prepared = None
        if semantic is not None and (
            index == self._index_home or (self._coherent is not None and index < self._index_home)
        ):
            prepared = await semantic.prepare_index(value)  # before anything changes
        l1 = self._coherent
        if l1 is not None:
            if index == 0:
                version = await l1.set(key, value)
            elif index <= self._home_index:
                version = await l1.write_through(key, value)
            else:  # past the home: stored there, the protocol deletes the faster copies
                version = await self.tiers[index].write(key, value)
                await l1.delete(key)
            self._counters[index].writes += 1
            if semantic is not None and prepared is not None and version is not None:
                await self._after_commit(key, semantic.index_home(key, version, prepared))
            return version
        version = await self.tiers[index].write(key, value)
        self._counters[index].writes += 1
        if semantic is not None and index < self._index_home:
            # A cache write: the home keeps an older value, which search must not return.
            await self._after_commit(key, semantic.unindex_home(key, outdated_only=False))
        for faster in self.tiers[:index]:
            await faster.delete(key)
        if semantic is not None and prepared is not None and version is not None:
            await self._after_commit(key, semantic.index_home(key, version, prepared))
        return version

    async def compare_and_swap(
        self,
        key: str,
        value: JSONValue,
        expected_version: int | None,
        *,
        on_conflict: ConflictPolicy = "reject",
        attempts: int = 10,
    ) -> int:
        """Store `value` at the home only if `key` is live at `expected_version` (None: only if
        it does not exist); return the new version. On a mismatch `on_conflict` decides:
        `"reject"` raises `VersionConflict`, `"last_writer_wins"` writes anyway, a function
        `merge(mine, theirs)` merges and retries (see `CoherentL1Tier.compare_and_swap`).
        Needs a coherent L1, or an L3 tier (whose faster tiers' copies are then dropped)."""
        self._check_open()
        check_key(key)
        encode_value(value)
        semantic = self._index
        prepared = None if semantic is None else await semantic.prepare_index(value)
        if self._coherent is not None:
            committed = [value]
            policy = on_conflict
            if callable(on_conflict):
                merge = on_conflict

                def merging(mine: JSONValue, theirs: JSONValue) -> JSONValue:
                    committed[0] = merge(mine, theirs)  # the value the next swap commits
                    return committed[0]

                policy = merging
            version = await self._coherent.compare_and_swap(
                key, value, expected_version, on_conflict=policy, attempts=attempts
            )
            await self._index_commit(key, version, committed[0], prepared)
            return version
        home_index, home = self._plain_home()

        async def swap_once(mine: JSONValue, expected: int | None) -> int:
            version = await home.compare_and_swap(key, mine, expected)
            await self._index_commit(key, version, mine, prepared)
            return version

        async def overwrite(mine: JSONValue) -> int:
            version = await home.write(key, mine)
            await self._index_commit(key, version, mine, prepared)
            return version

        version = await swap_with_policy(
            key,
            value,
            expected_version,
            check_policy(on_conflict),
            check_attempts(attempts),
            swap_once=swap_once,
            read=lambda: home.read(key),
            overwrite=overwrite,
        )
        for faster in self.tiers[:home_index]:
            await faster.delete(key)
        self._counters[home_index].writes += 1
        return version

    async def update(
        self,
        key: str,
        fn: Callable[[JSONValue], JSONValue],
        *,
        default: JSONValue = None,
        attempts: int = 10,
    ) -> int:
        """Read-modify-write with compare-and-swap: store `fn(current)` (`default` if absent),
        retrying on conflicts up to `attempts` times; return the new version."""
        self._check_open()
        check_key(key)
        if self._coherent is not None:
            if self._index is None or not callable(fn):
                return await self._coherent.update(key, fn, default=default, attempts=attempts)
            computed: list[JSONValue] = []

            def computing(current: JSONValue) -> JSONValue:
                computed[:] = [fn(current)]  # the last value computed is the one committed
                return computed[0]

            version = await self._coherent.update(
                key, computing, default=default, attempts=attempts
            )
            await self._index_commit(key, version, computed[0], None)
            return version
        _, home = self._plain_home()

        async def swap_once(new: JSONValue, expected: int | None) -> int:
            return await self.compare_and_swap(key, new, expected)

        return await update_with_retries(
            fn, default, check_attempts(attempts), swap_once=swap_once, read=lambda: home.read(key)
        )

    async def _index_commit(
        self, key: str, version: int, value: JSONValue, prepared: IndexEntry | None
    ) -> None:
        """Index `value`, committed at the home as `version` (embedded now unless `prepared`
        was made from the same value)."""
        semantic = self._index
        if semantic is None:
            return
        if prepared is None or prepared.canonical_text != encode_value(value):
            try:
                prepared = await semantic.prepare_index(value)
            except SageMemError as error:
                self._index_failed(key, error)
                return
        await self._after_commit(key, semantic.index_home(key, version, prepared))

    async def _after_commit(self, key: str, step: Awaitable[object]) -> None:
        """Index bookkeeping once the write took effect: a failure is logged and counted, never
        raised, since the write is done (the key is then missing from searches, or, for a
        failed unindexing, may show the home's value, until `DRAMTier.reindex_home`)."""
        try:
            await step
        except SageMemError as error:
            self._index_failed(key, error)

    def _index_failed(self, key: str, error: SageMemError) -> None:
        self.index_failures += 1
        _logger.warning(
            "the search index of key %r was not updated after its write (%s); the write "
            "itself took effect. DRAMTier.reindex_home() repairs the index",
            key,
            error,
        )

    def _plain_home(self) -> tuple[int, L3Tier]:
        for index, tier in enumerate(self.tiers):
            if isinstance(tier, L3Tier):
                return index, tier
        raise ConfigurationError(
            "compare_and_swap and update need an L3Tier in the hierarchy (versions live there)"
        )

    async def delete(self, key: str) -> bool:
        """Remove `key` from every tier, slowest first; return whether any tier held it."""
        self._check_open()
        check_key(key)
        removed = False
        if self._coherent is not None:
            for tier in self.tiers[self._home_index + 1 :]:
                removed = await tier.delete(key) or removed
            removed = await self._coherent.delete(key) or removed
        else:
            for tier in reversed(self.tiers):
                removed = await tier.delete(key) or removed
        if self._index is not None:
            # the home's tombstone no longer backs the key's index row
            await self._after_commit(key, self._index.unindex_home(key))
        return removed

    async def exists(self, key: str) -> bool:
        """Whether any tier holds `key` (does not promote)."""
        self._check_open()
        check_key(key)
        if self._coherent is not None:
            return await self.read(key) is not None
        for tier in self.tiers:
            if await tier.exists(key):
                return True
        return False

    async def clear(self) -> None:
        """Clear every tier (each tier clears only its own namespace).

        With a coherent L1, every live key of the home is deleted through the protocol (so
        every agent's copy is invalidated), then the tiers past the home are cleared.
        """
        self._check_open()
        if self._coherent is not None:
            home = self.tiers[self._home_index]
            assert isinstance(home, L3Tier)
            for key in await HomeStore(home).live_keys():
                await self._coherent.delete(key)
            for tier in self.tiers[self._home_index + 1 :]:
                await tier.clear()
            return
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
