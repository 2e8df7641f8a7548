"""Starting and closing one demo agent: its own bus, home connection and coherent L1."""

from __future__ import annotations

import asyncio
import contextlib

from sagemem.coherence.bus import CoherenceBus
from sagemem.errors import SageMemError
from sagemem.tiers.l1_coherent import CoherentL1Tier
from sagemem.tiers.l3 import L3Tier

from .monitor import _Monitor
from .run_state import (
    _CLOSE_TIMEOUT_S,
    _OPERATION_TIMEOUT_S,
    _OWNER_LEASE_S,
    _Agent,
    _logger,
)

__all__: list[str] = []  # internal parts of `DemoRun` (demo.server.run)


class _Agents(_Monitor):
    """Starting an agent (bus, home, coherent L1) and closing or abandoning it."""

    async def _bus_client_ids(self) -> set[str]:
        raw = self._raw
        assert raw is not None
        name = f"sagemem-bus-{self.namespace}"
        return {c["id"] for c in await raw.client_list() if c.get("name") == name}

    async def _start_agent(self, agent_id: str, index: int, incarnation_count: int) -> _Agent:
        """Open an agent's own bus, home connection and coherent L1, and find the Redis id of
        its bus's pub/sub connection (the one new client of the bus's name)."""
        async with self._agent_lock:
            known = {a.client_id for a in self._agents.values() if a.agent_id != agent_id}
            before = await self._bus_client_ids()
            bus = CoherenceBus(url=self._redis_url, namespace=self.namespace, sequence_ttl_s=3600)
            await bus.connect()
            home = L3Tier(
                dsn=self._postgres_dsn,
                namespace=self.namespace,
                schema=self.schema,
                pool_size_max=4,
            )
            l1 = CoherentL1Tier(
                agent_id,
                bus,
                capacity=64,
                mode=self.settings.mode,
                home=home,
                owner_lease_s=_OWNER_LEASE_S,
                holder_ttl_s=60.0,
                operation_timeout_s=_OPERATION_TIMEOUT_S,
            )
            agent = _Agent(agent_id, index, bus, home, l1, incarnation_count)
            l1.core.tracer = self._tracer(agent, l1)
            try:
                await l1.start()
            except BaseException:
                await bus.aclose()
                await home.aclose()
                raise
            new = (await self._bus_client_ids()) - before - known
            agent.client_id = next(iter(new)) if len(new) == 1 else None
            agent.status = "running"
            agent.available.set()
            self._entries.setdefault(agent_id, {})
        self.hub.publish(
            "agent",
            {
                "agent": agent_id,
                "incarnation": l1.incarnation,
                "incarnations": incarnation_count,
                "status": "running",
                "redis_client_id": agent.client_id,
            },
        )
        return agent

    async def _close_agent(self, agent: _Agent, *, orderly: bool) -> None:
        """Close (orderly: write back) or abandon (a crash) the agent's L1, then its bus and
        home. An orderly close that overruns its bound falls back to `abandon()`, which ends
        the L1's tasks whatever the servers do."""
        agent.available.clear()
        if orderly:
            try:
                async with asyncio.timeout(_CLOSE_TIMEOUT_S):
                    await agent.l1.aclose()
            except (SageMemError, TimeoutError) as error:
                _logger.warning("demo: closing %s: %r; abandoning it", agent.agent_id, error)
                orderly = False
        if not orderly:
            try:
                async with asyncio.timeout(_CLOSE_TIMEOUT_S):
                    await agent.l1.abandon()
            except (SageMemError, TimeoutError) as error:
                _logger.warning("demo: abandoning %s: %r", agent.agent_id, error)
        for resource in (agent.bus, agent.home):
            with contextlib.suppress(SageMemError, TimeoutError):
                async with asyncio.timeout(_CLOSE_TIMEOUT_S):
                    await resource.aclose()
