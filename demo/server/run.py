"""One run of the live demo: agents on the real library, their events, faults, and a baseline.

A `DemoRun` starts `agents` agents (asyncio tasks), each with its OWN `CoherenceBus`, `L3Tier`
home connection and `CoherentL1Tier`, in a namespace and Postgres schema of its own. In rounds,
the agents write conflicting beliefs to a few shared keys (`set`: ownership, Modified;
`write_through`; `compare_and_swap` on a counter) and read them; at the end of each round every
agent reads every key and the run reports whether they converged (all read the same value at
the home's version).

Everything published to the page comes from the library: each agent's tracer (`core.tracer`)
reports the rows the core executed, the statistics report the messages sent, the home
(`HomeStore.read`) and the L2 copy (`L2Tier.read`) are read back from Postgres and Redis. The
same workload also runs, side by side, on plain `L1Tier` caches over L2/L3 with no
invalidation; each read of either run is compared with the home's version taken just before
it, so stale reads are counted, not claimed.

`DemoRun` is put together from parts, each in its own module and each using only what is below
it: `run_state` (the fields), `monitor` (what is published), `agents` (starting and closing an
agent), `workload` (rounds and convergence) and `faults`; this module adds the lifecycle and the
controls. No part may write a key or change a state behind the library's back while a run is
live (the monitor only reads; the run's keys and schema are deleted only by `aclose()`), and
every wait is bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

import asyncpg
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from sagemem.coherence.home import HomeStore
from sagemem.errors import SageMemError
from sagemem.hierarchy import MemoryHierarchy
from sagemem.redis_topology import namespace_node_url
from sagemem.tiers.l1 import L1Tier
from sagemem.tiers.l2 import L2Tier
from sagemem.tiers.l3 import L3Tier

from .faults import _Faults
from .run_state import (
    _CLOSE_TIMEOUT_S,
    _SCAN_KEYS_MAX,
    AGENT_IDS,
    AGENTS_MAX,
    AGENTS_MIN,
    KEYS,
    FaultError,
    RunSettings,
    _logger,
    _OffAgent,
)

__all__ = [
    "AGENTS_MAX",
    "AGENTS_MIN",
    "AGENT_IDS",
    "KEYS",
    "DemoRun",
    "FaultError",
    "RunSettings",
]


class DemoRun(_Faults):
    """One run: start() launches it in the background, aclose() stops it and cleans up.

    The run owns every client it opens (buses, tiers, a raw Redis client for fault injection
    and cleanup) and closes them in `aclose()`, which also drops the run's Postgres schema and
    deletes its Redis keys. `hub` is borrowed.
    """

    # -- lifecycle ------------------------------------------------------------------------

    def start(self) -> None:
        """Launch the run in a background task owned by this run."""
        if self._task is None and not self._closed:
            self._task = asyncio.create_task(self._main(), name=f"demo-run-{self.run_number}")

    async def aclose(self) -> None:
        """Stop the agents, close every client, drop the schema and the run's Redis keys."""
        async with self._lifecycle:
            if self._closed:
                return
            self._closed = True
            tasks = [t for t in (self._task, self._monitor_task, *self._restarts) if t is not None]
            for task in tasks:
                task.cancel()
            if tasks:
                await asyncio.wait(tasks, timeout=_CLOSE_TIMEOUT_S)
            async with asyncio.TaskGroup() as group:
                for agent in list(self._agents.values()):
                    group.create_task(self._close_agent(agent, orderly=True))
            for off in list(self._off.values()):
                await off.l1.aclose()
            for resource in (
                self._off_l2,
                self._off_l3,
                self._monitor_l2,
                self._monitor_home,
            ):
                if resource is not None:
                    with contextlib.suppress(SageMemError, TimeoutError):
                        async with asyncio.timeout(_CLOSE_TIMEOUT_S):
                            await resource.aclose()
            await self._cleanup_storage()
            if self.status not in ("finished", "failed"):
                self.status = "closed"

    async def _cleanup_storage(self) -> None:
        raw = self._raw
        self._raw = None
        if raw is not None:
            try:
                async with asyncio.timeout(_CLOSE_TIMEOUT_S):
                    doomed: list[bytes] = []
                    for pattern in (f"*{self.namespace}*", f"*{self.off_namespace}*"):
                        async for name in raw.scan_iter(match=pattern, count=500):
                            doomed.append(name)
                            if len(doomed) >= _SCAN_KEYS_MAX:
                                break
                    for start in range(0, len(doomed), 500):
                        await raw.delete(*doomed[start : start + 500])
            except (RedisError, OSError, TimeoutError) as error:
                _logger.warning("demo: could not delete the run's Redis keys: %s", error)
            finally:
                await raw.aclose()
        try:
            connection = await asyncpg.connect(self._postgres_dsn, timeout=_CLOSE_TIMEOUT_S)
            try:
                await connection.execute(
                    f'DROP SCHEMA IF EXISTS "{self.schema}" CASCADE', timeout=_CLOSE_TIMEOUT_S
                )
            finally:
                await connection.close(timeout=_CLOSE_TIMEOUT_S)
        except (asyncpg.PostgresError, OSError, TimeoutError) as error:
            _logger.warning("demo: could not drop schema %s: %s", self.schema, error)

    @property
    def paused(self) -> bool:
        """Whether the agents wait for start or step."""
        return self._gate.paused

    async def set_paused(self, paused: bool) -> None:
        """Pause or resume the agents' operations."""
        await self._gate.set_paused(paused)
        if self.status in ("running", "paused"):
            self.status = "paused" if paused else "running"
        self._publish_run()

    async def step(self) -> None:
        """Let exactly one agent operation run while paused."""
        await self._gate.step()

    def set_delay_ms(self, delay_ms: int) -> None:
        """The pause between an agent's operations (its speed)."""
        self._delay_s = delay_ms / 1000
        self.settings = RunSettings(
            agents=self.settings.agents,
            mode=self.settings.mode,
            delay_ms=delay_ms,
            rounds=self.settings.rounds,
            seed=self.settings.seed,
            compare_off=self.settings.compare_off,
        )

    async def _main(self) -> None:
        try:
            await self._open()
            self.status = "paused" if self._gate.paused else "running"
            self._publish_run()
            self._monitor_task = asyncio.create_task(self._monitor(), name="demo-monitor")
            await self._rounds()
            self.status = "finished"
            self.finished_in_s = time.monotonic() - self.started_at
            await self._sample_home()
            self._publish_stats()
            self._publish_run()
        except asyncio.CancelledError:
            raise
        except Exception as error:  # shown on the page, logged in full
            _logger.exception("demo run %d failed", self.run_number)
            self.status = "failed"
            self.hub.publish("error", {"run": self.run_number, "message": str(error)})
            self._publish_run()

    async def _open(self) -> None:
        self._publish_run()
        # On a cluster: the node holding the namespace, where its agents' connections are.
        node_url = await namespace_node_url(self._redis_url, self.namespace)
        self._raw = aioredis.Redis.from_url(node_url, socket_timeout=5.0)
        self._monitor_home = L3Tier(
            dsn=self._postgres_dsn, namespace=self.namespace, schema=self.schema, pool_size_max=2
        )
        await self._monitor_home.connect()
        self._monitor_store = HomeStore(self._monitor_home)
        self._monitor_l2 = L2Tier(url=self._redis_url, namespace=self.namespace)
        await self._monitor_l2.connect()
        for index in range(self.settings.agents):
            agent = await self._start_agent(AGENT_IDS[index], index, 1)
            self._agents[agent.agent_id] = agent
        if self.settings.compare_off:
            self._off_l2 = L2Tier(url=self._redis_url, namespace=self.off_namespace)
            await self._off_l2.connect()
            self._off_l3 = L3Tier(
                dsn=self._postgres_dsn,
                namespace=self.off_namespace,
                schema=self.schema,
                pool_size_max=3,
            )
            await self._off_l3.connect()
            for index in range(self.settings.agents):
                agent_id = AGENT_IDS[index]
                l1 = L1Tier(capacity=64)
                hierarchy = MemoryHierarchy(tiers=[l1, self._off_l2, self._off_l3])
                self._off[agent_id] = _OffAgent(agent_id, l1, hierarchy)
                self._off_l1[agent_id] = {}
