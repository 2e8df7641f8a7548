"""The interface every tier implements, and the small value types tiers exchange.

A tier stores JSON text per key (see `sagemem.values`) and may carry a version per key (the
home, L3, always does; caches carry the version of the copy they hold). `read()` tells a miss
(`None`) from a stored `None` (a `TierEntry` whose value is `None`).
This module must never import a driver.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import TracebackType
from typing import Protocol, Self, runtime_checkable

from sagemem.values import JSONValue, TierEntry

__all__ = ["Tier", "TierEntry", "TierStatistics"]


@dataclass(frozen=True, slots=True)
class TierStatistics:
    """Counters of one tier inside a hierarchy (a plain snapshot; it never changes)."""

    name: str
    hits: int
    misses: int
    writes: int
    read_latency_us_median: float | None
    read_latency_us_p99: float | None


@runtime_checkable
class Tier(Protocol):
    """What `MemoryHierarchy` needs from a tier."""

    name: str

    async def connect(self) -> None: ...

    async def aclose(self) -> None: ...

    async def read(self, key: str) -> TierEntry | None:
        """Return the entry for `key`, or None on a miss (a stored None is an entry)."""
        ...

    async def write(self, key: str, value: JSONValue) -> int | None:
        """Store `value` as a write at this tier; return the new home version if it has one."""
        ...

    async def fill(self, key: str, entry: TierEntry) -> None:
        """Install a copy read from a slower tier (a promotion), keeping its version."""
        ...

    async def delete(self, key: str) -> bool: ...

    async def exists(self, key: str) -> bool: ...

    async def clear(self) -> None: ...

    async def __aenter__(self) -> Self: ...

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...
