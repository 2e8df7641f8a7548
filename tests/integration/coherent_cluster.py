"""A bus, a shared home and L2, and coherent agents over them in one process: the fixture
`cluster` (tests/integration/conftest.py) of the coherent L1's integration tests."""

from __future__ import annotations

from typing import Any

import redis.asyncio as aioredis

from sagemem.coherence.bus import CoherenceBus
from sagemem.coherence.core import TraceRecord
from sagemem.spec.vocabulary import Event
from sagemem.tiers.l1_coherent import CoherentL1Tier
from sagemem.tiers.l2 import L2Tier
from sagemem.tiers.l3 import L3Tier

__all__ = ["Cluster"]


class Cluster:
    """A bus, a shared home and L2, and coherent agents over them (one process)."""

    def __init__(
        self,
        redis_url: str,
        dsn: str,
        namespace: str,
        schema: str,
        raw_url: str | None = None,
        *,
        pubsub: str = "auto",
    ) -> None:
        self.bus = CoherenceBus(url=redis_url, namespace=namespace, pubsub=pubsub)
        self.home = L3Tier(dsn=dsn, namespace=namespace, schema=schema)
        self.l2 = L2Tier(url=redis_url, namespace=namespace)
        # The server holding the namespace's keys (`raw_url`: on a cluster, its slot's node).
        self.redis = aioredis.Redis.from_url(raw_url or redis_url)
        self.agents: list[CoherentL1Tier] = []
        self.traces: dict[str, list[TraceRecord]] = {}

    async def agent(self, agent_id: str, **options: Any) -> CoherentL1Tier:
        trace: list[TraceRecord] = []
        self.traces[agent_id] = trace
        l1 = CoherentL1Tier(agent_id, self.bus, home=self.home, tracer=trace.append, **options)
        await l1.start()
        self.agents.append(l1)
        return l1

    def fired(self, agent_id: str, event: Event) -> list[TraceRecord]:
        """The rows `agent_id`'s core executed for `event`, in order."""
        return [record for record in self.traces[agent_id] if record.event is event]

    async def aclose(self) -> None:
        for l1 in self.agents:
            await l1.aclose()
        await self.l2.aclose()
        await self.home.aclose()
        await self.bus.aclose()
        await self.redis.aclose()
