"""Bounded polling for integration tests, for states that several tasks and servers change (a
message crossing the bus, a TTL running out, a restarted server answering): there is no single
event to await. Every wait fails with an AssertionError naming what it waited for."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

__all__ = ["POLL_TIMEOUT_S", "poll_until", "wait_until"]

POLL_TIMEOUT_S = 20.0


async def poll_until(
    probe: Callable[[], Awaitable[bool]],
    what: str,
    timeout_s: float = POLL_TIMEOUT_S,
    *,
    interval_s: float = 0.05,
) -> None:
    """Await `probe` until it returns True; fail after `timeout_s` (a probe that hangs too)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    async with asyncio.timeout(timeout_s + POLL_TIMEOUT_S):
        while not await probe():
            if loop.time() >= deadline:
                raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
            await asyncio.sleep(interval_s)


async def wait_until(
    predicate: Callable[[], bool],
    what: str,
    timeout_s: float = POLL_TIMEOUT_S,
    *,
    interval_s: float = 0.005,
) -> None:
    """Poll `predicate` (cheap, in-memory state) until it holds; fail after `timeout_s`."""

    async def probe() -> bool:
        return predicate()

    await poll_until(probe, what, timeout_s, interval_s=interval_s)
