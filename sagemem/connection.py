"""`sagemem.connect()`: a ready hierarchy (L1, L2, L3 and optionally the semantic tier) in one call.

Addresses come from the arguments, else `SAGEMEM_REDIS_URL` / `SAGEMEM_POSTGRES_DSN`, else the
embedded servers (started or reused; see `sagemem.services`). With `agent_id`, tier 0 is a
`CoherentL1Tier` on a `CoherenceBus` of its own, so several agents (processes or tasks) that
connect to the same namespace stay coherent.
"""

from __future__ import annotations

from collections.abc import Generator
from types import TracebackType
from typing import Any

from sagemem.coherence.bus import CoherenceBus
from sagemem.embedding import Embedder
from sagemem.errors import ConfigurationError
from sagemem.hierarchy import MemoryHierarchy
from sagemem.tiers.base import Tier
from sagemem.tiers.dram import DRAMTier
from sagemem.tiers.l1 import L1Tier
from sagemem.tiers.l1_coherent import CoherentL1Tier
from sagemem.tiers.l2 import L2Tier
from sagemem.tiers.l3 import L3Tier

__all__ = ["connect"]


class _Connection:
    """Awaitable and async context manager around one hierarchy that owns its tiers."""

    def __init__(self, hierarchy: MemoryHierarchy, bus: CoherenceBus | None = None) -> None:
        self._hierarchy = hierarchy
        self._bus = bus

    async def _open(self) -> MemoryHierarchy:
        try:
            if self._bus is not None:
                await self._bus.connect()
                self._hierarchy.closing_callbacks.append(self._bus.aclose)
            await self._hierarchy.connect()
        except BaseException:
            await self._hierarchy.aclose()
            if self._bus is not None:
                await self._bus.aclose()
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
    agent_id: str | None = None,
    mode: str = "coherent",
    embedder: Embedder | None = None,
    write_policy: str = "invalidate",
) -> _Connection:
    """A hierarchy L1 -> L2 -> L3 (-> DRAM if `semantic`) on the configured or embedded servers.

    Use `async with sagemem.connect() as memory:` (closed on exit), or
    `memory = await sagemem.connect()` and `await memory.aclose()` when done. The hierarchy
    owns its tiers. `agent_id` makes L1 a `CoherentL1Tier` of that agent (`mode` "coherent"
    or "strict"; every agent of a namespace must use the same mode) on a bus the hierarchy
    also closes. With `semantic`, the DRAM tier embeds with `embedder` (default
    `HashingEmbedder`; see README for which to choose) and is the search index of L3: every
    write and delete through the hierarchy is reflected in the next `search` (see
    `sagemem.hierarchy`). Passing `embedder` without `semantic` is refused.
    `write_policy="update"` (coherent mode, with `agent_id`) sends the value of this agent's
    writes to the agents holding a copy instead of invalidating it (see `CoherentL1Tier`).
    """
    if embedder is not None and not semantic:
        raise ConfigurationError(
            f"connect(embedder={embedder!r}) needs semantic=True (the embedder serves the "
            "semantic tier)"
        )
    if write_policy != "invalidate" and agent_id is None:
        raise ConfigurationError(
            f"connect(write_policy={write_policy!r:.40}) needs agent_id: the write policy is "
            "the coherent L1's (without agent_id nothing is kept coherent)"
        )
    bus = None
    l1: Tier
    if agent_id is None:
        l1 = L1Tier(capacity=l1_capacity)
    else:
        bus = CoherenceBus(redis_url, namespace=namespace)
        l1 = CoherentL1Tier(agent_id, bus, l1_capacity, mode=mode, write_policy=write_policy)
    tiers: list[Tier] = [
        l1,
        L2Tier(redis_url, namespace=namespace, ttl_s=l2_ttl_s),
        L3Tier(postgres_dsn, namespace=namespace),
    ]
    if semantic:
        tiers.append(DRAMTier(postgres_dsn, namespace=namespace, embedder=embedder))
    return _Connection(MemoryHierarchy(tiers, owns_tiers=True), bus)
