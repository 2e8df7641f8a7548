"""`sagemem.connect()`: a ready hierarchy (L1, L2, L3 and optionally the semantic tier) in one call.

Addresses come from the arguments, else `SAGEMEM_REDIS_URL` / `SAGEMEM_POSTGRES_DSN`, else the
embedded servers (started or reused; see `sagemem.services`).
"""

from __future__ import annotations

from collections.abc import Generator
from types import TracebackType
from typing import Any

from sagemem.hierarchy import MemoryHierarchy
from sagemem.tiers.base import Tier

__all__ = ["connect"]


class _Connection:
    """Awaitable and async context manager around one hierarchy that owns its tiers."""

    def __init__(self, hierarchy: MemoryHierarchy) -> None:
        self._hierarchy = hierarchy

    async def _open(self) -> MemoryHierarchy:
        try:
            await self._hierarchy.connect()
        except BaseException:
            await self._hierarchy.aclose()
            raise
        return self._hierarchy

    def __await__(self) -> Generator[Any, None, MemoryHierarchy]:
        return self._open().__await__()

    async def __aenter__(self) -> MemoryHierarchy:
        return await self._open()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._hierarchy.aclose()


def connect(
    *,
    redis_url: str | None = None,
    postgres_dsn: str | None = None,
    namespace: str = "default",
    l1_capacity: int = 1024,
    l2_ttl_s: float | None = None,
    semantic: bool = False,
) -> _Connection:
    """A hierarchy L1 -> L2 -> L3 (-> DRAM if `semantic`) on the configured or embedded servers.

    Use `async with sagemem.connect() as memory:` (closed on exit), or
    `memory = await sagemem.connect()` and `await memory.aclose()` when done. The hierarchy
    owns its tiers.
    """
    from sagemem.tiers.l1 import L1Tier
    from sagemem.tiers.l2 import L2Tier
    from sagemem.tiers.l3 import L3Tier

    tiers: list[Tier] = [
        L1Tier(capacity=l1_capacity),
        L2Tier(url=redis_url, namespace=namespace, ttl=l2_ttl_s),
        L3Tier(dsn=postgres_dsn, namespace=namespace),
    ]
    if semantic:
        from sagemem.tiers.dram import DRAMTier

        tiers.append(DRAMTier(dsn=postgres_dsn, namespace=namespace))
    return _Connection(MemoryHierarchy(tiers, owns_tiers=True))
