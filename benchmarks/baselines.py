"""Baselines shared by the benchmarks, so every ratio is taken against the same thing."""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from benchmarks.stats import LatencySummary, summarise

__all__ = ["LruBaseline", "Op", "await_subscribed", "interleaved"]

type Op = Callable[[int], Awaitable[object]]
"""One timed operation; it gets the iteration number (to pick a key)."""

LRU_PLAIN: str = "OrderedDict LRU get (plain call)"
LRU_AWAITED: str = "OrderedDict LRU get (awaited coroutine)"


class LruBaseline:
    """An `OrderedDict` LRU over `keys` (all holding `value`): the cheapest possible L1 hit."""

    def __init__(self, keys: Sequence[str], value: object) -> None:
        self._keys = list(keys)
        self._lru: OrderedDict[str, object] = OrderedDict((key, value) for key in self._keys)

    def get(self, key: str) -> object:
        value = self._lru.get(key)
        if value is not None:
            self._lru.move_to_end(key)
        return value

    async def get_awaited(self, i: int) -> object:
        """The i-th key's get inside a coroutine (the calling convention of an async tier)."""
        return self.get(self._keys[i % len(self._keys)])

    def measure_plain(self, iterations: int) -> LatencySummary:
        """The plain call, timed one call at a time."""
        samples: list[int] = []
        for i in range(iterations):
            key = self._keys[i % len(self._keys)]
            started = time.perf_counter_ns()
            self.get(key)
            samples.append(time.perf_counter_ns() - started)
        return summarise(LRU_PLAIN, samples)


async def await_subscribed(pubsub: Any, kind: str, timeout_s: float) -> None:
    """Wait until redis-py's `pubsub` confirms its (p)subscription (`kind` "subscribe" or
    "psubscribe"), so that every message published afterwards reaches it."""
    deadline = time.monotonic() + timeout_s
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError(f"no {kind} confirmation within {timeout_s} s")
        message = await pubsub.get_message(timeout=remaining)
        if message is not None and message["type"] == kind:
            return


async def interleaved(
    iterations: int, tier_op: Op, baseline_op: Op, *, warmup: int = 200
) -> tuple[list[int], list[int]]:
    """Time both operations `iterations` times each, alternating which goes first, after
    `min(iterations, warmup)` untimed rounds (caches, statement plans); returns both lists of
    nanoseconds. The rounds get the numbers 0, 1, ... in order, warm-up first, so an operation
    that uses a fresh key per number (a miss) never meets a warm-up's key in a timed round."""
    tier_ns: list[int] = []
    base_ns: list[int] = []
    clock = time.perf_counter_ns
    warm = min(iterations, warmup)
    for i in range(warm):
        await tier_op(i)
        await baseline_op(i)
    for i in range(iterations):
        for which in (0, 1) if i % 2 == 0 else (1, 0):
            op = tier_op if which == 0 else baseline_op
            started = clock()
            await op(warm + i)
            elapsed = clock() - started
            (tier_ns if which == 0 else base_ns).append(elapsed)
    return tier_ns, base_ns
