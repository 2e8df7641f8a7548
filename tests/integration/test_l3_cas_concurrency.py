"""L3 compare-and-swap under real concurrency: many tasks, several pools, one Postgres.

Every test releases its tasks together through an `asyncio.Event`, and the tasks go through
several `L3Tier` instances (each with its own pool), so the statements really overlap on the
server: the guarantees come from Postgres row locks, not from the event loop's ordering.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from sagemem.errors import VersionConflict
from sagemem.tiers.l3 import L3Tier

_TIERS = 4
_CONNECTIONS_PER_TIER = 4
_ATTEMPTS_MAX = 2_000


@pytest.fixture
async def tiers(postgres_dsn: str, namespace: str, pg_schema: str) -> AsyncIterator[list[L3Tier]]:
    """Four connected L3 tiers on the same namespace, each with a pool of four connections."""
    opened = [
        L3Tier(
            postgres_dsn,
            namespace=namespace,
            schema=pg_schema,
            pool_size_max=_CONNECTIONS_PER_TIER,
        )
        for _ in range(_TIERS)
    ]
    try:
        for tier in opened:
            await tier.connect()
        yield opened
    finally:
        for tier in opened:
            await tier.aclose()


async def _released_together[T](
    count: int, operation: Callable[[int], Awaitable[T]]
) -> list[T | BaseException]:
    """Run `operation(i)` for i in range(count) as tasks that all start at one signal."""
    start = asyncio.Event()

    async def run(index: int) -> T:
        await start.wait()
        return await operation(index)

    async with asyncio.timeout(120):
        tasks = [asyncio.create_task(run(index)) for index in range(count)]
        await asyncio.sleep(0)  # let every task reach start.wait()
        start.set()
        return await asyncio.gather(*tasks, return_exceptions=True)


async def test_concurrent_increments_lose_no_update(tiers: list[L3Tier]) -> None:
    """60 tasks each add 1 with read + compare_and_swap retries: the counter ends at 60."""
    increments = 60
    await tiers[0].write("counter", 0)  # version 1

    async def increment(index: int) -> int:
        tier = tiers[index % len(tiers)]
        for _ in range(_ATTEMPTS_MAX):
            entry = await tier.read("counter")
            assert entry is not None
            assert isinstance(entry.value, int)
            try:
                return await tier.compare_and_swap("counter", entry.value + 1, entry.version)
            except VersionConflict:
                continue
        raise AssertionError(f"increment {index} never succeeded in {_ATTEMPTS_MAX} attempts")

    results = await _released_together(increments, increment)
    assert [r for r in results if isinstance(r, BaseException)] == []
    assert sorted(results) == list(range(2, increments + 2))  # type: ignore[type-var]  # ints
    final = await tiers[1].read("counter")
    assert final is not None
    assert (final.value, final.version) == (increments, increments + 1)


@pytest.mark.parametrize("round_number", range(5))
async def test_concurrent_creators_exactly_one_wins(tiers: list[L3Tier], round_number: int) -> None:
    """20 tasks create the same absent key with expected None: one wins, 19 see its version."""
    key = f"created-{round_number}"

    async def create(index: int) -> int:
        return await tiers[index % len(tiers)].compare_and_swap(key, f"creator {index}", None)

    results = await _released_together(20, create)
    winners = [(index, r) for index, r in enumerate(results) if isinstance(r, int)]
    losers = [r for r in results if isinstance(r, VersionConflict)]
    assert len(winners) == 1, f"winners: {winners}"
    assert len(losers) == 19, f"unexpected results: {results}"
    winner_index, winner_version = winners[0]
    assert all(loser.actual == winner_version and loser.expected is None for loser in losers)
    assert await tiers[0].get(key) == f"creator {winner_index}"


async def test_concurrent_recreators_of_a_deleted_key_exactly_one_wins(
    tiers: list[L3Tier],
) -> None:
    """20 tasks re-create a tombstoned key with expected None: one wins, above the tombstone."""
    await tiers[0].write("phoenix", "first life")
    await tiers[0].write("phoenix", "still first life")
    assert await tiers[0].delete("phoenix")  # tombstone at version 3

    async def recreate(index: int) -> int:
        return await tiers[index % len(tiers)].compare_and_swap("phoenix", index, None)

    results = await _released_together(20, recreate)
    winners = [r for r in results if isinstance(r, int)]
    assert winners == [4]
    assert sum(isinstance(r, VersionConflict) for r in results) == 19


async def test_concurrent_swaps_and_deletes_at_one_version_exactly_one_wins(
    tiers: list[L3Tier],
) -> None:
    """At version v, 10 swaps and 10 conditional deletes all expecting v: one of them wins."""
    version = await tiers[0].write("contested", "start")

    async def swap_or_delete(index: int) -> int:
        tier = tiers[index % len(tiers)]
        if index % 2:
            return await tier.delete_if_version("contested", version)
        return await tier.compare_and_swap("contested", f"swapped by {index}", version)

    results = await _released_together(20, swap_or_delete)
    assert [r for r in results if isinstance(r, int)] == [version + 1]
    assert sum(isinstance(r, VersionConflict) for r in results) == 19


async def test_concurrent_unconditional_writes_get_distinct_versions(
    tiers: list[L3Tier],
) -> None:
    """50 concurrent writes each return a different version, and the last one is on record."""
    results = await _released_together(
        50, lambda index: tiers[index % len(tiers)].write("blind", index)
    )
    assert sorted(results) == list(range(1, 51))  # type: ignore[type-var]  # ints
    assert await tiers[0].version("blind") == 50
