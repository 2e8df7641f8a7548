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

This module must never write a key or change a state behind the library's back while a run is
live (the monitor only reads; the run's keys and schema are deleted only by `aclose()`), and
every wait is bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import secrets
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Final, Literal

import asyncpg
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from sagemem.coherence.bus import CoherenceBus
from sagemem.coherence.core import NO_VERSION, TraceRecord
from sagemem.coherence.home import ABSENT, HomeRead, HomeStore, owner_agent
from sagemem.errors import SageMemError, VersionConflict
from sagemem.hierarchy import MemoryHierarchy
from sagemem.spec.vocabulary import Effect, Event, L1State, Mode
from sagemem.tiers.base import TierEntry
from sagemem.tiers.l1 import L1Tier
from sagemem.tiers.l1_coherent import CoherentL1Tier
from sagemem.tiers.l2 import L2Tier
from sagemem.tiers.l3 import L3Tier
from sagemem.values import JSONValue

from .events import EventHub, JSONObject

__all__ = [
    "AGENTS_MAX",
    "AGENTS_MIN",
    "AGENT_IDS",
    "KEYS",
    "DemoRun",
    "FaultError",
    "RunSettings",
]

_logger = logging.getLogger("demo.server")

AGENTS_MIN: Final = 2
AGENTS_MAX: Final = 6
AGENT_IDS: Final = ("agent-a", "agent-b", "agent-c", "agent-d", "agent-e", "agent-f")
WEATHER: Final = "belief:weather"
PLAN: Final = "belief:plan"
VOTES: Final = "belief:votes"
KEYS: Final = (WEATHER, PLAN, VOTES)
# Each agent's conflicting beliefs, by agent index.
_BELIEFS: Final[dict[str, tuple[str, ...]]] = {
    WEATHER: ("sunny", "rainy", "foggy", "snowy", "windy", "cloudy"),
    PLAN: ("hike", "museum", "beach", "cinema", "library", "picnic"),
}
_OWNER_LEASE_S: Final = 3.0  # short, so that the recovery after a killed owner is watchable
_OPERATION_TIMEOUT_S: Final = 8.0
_CLOSE_TIMEOUT_S: Final = 10.0  # above _OPERATION_TIMEOUT_S: aclose() bounds itself first
_AGENT_WAIT_S: Final = 20.0
_CONVERGE_ATTEMPTS_MAX: Final = 5
_MONITOR_INTERVAL_S: Final = 0.25
_STATS_INTERVAL_S: Final = 1.0
_RESTART_DELAY_S: Final = 1.0
_SCAN_KEYS_MAX: Final = 10_000

type RunStatus = Literal["starting", "running", "paused", "finished", "failed", "closed"]
type OpKind = Literal["set", "write_through", "cas", "read"]


class FaultError(Exception):
    """A fault could not be injected (no such agent, agent not running, connection not found)."""


@dataclass(frozen=True, slots=True)
class RunSettings:
    """What a run does: how many agents, the protocol mode, pace, rounds, and the seed."""

    agents: int = 2
    mode: Mode = Mode.COHERENT
    delay_ms: int = 400
    rounds: int = 8
    seed: int = 1
    compare_off: bool = True


def _jsonable(value: JSONValue) -> object:
    """A cached value for the page (values here are scalars; anything else is shown as text)."""
    if value is ABSENT:
        return None
    if value is None or type(value) in (str, int, float, bool):
        return value
    return repr(value)


def _version_or_none(version: int) -> int | None:
    return None if version == NO_VERSION else version


class _Gate:
    """Start/pause/step for the agents' operations: open, or closed with step tokens."""

    def __init__(self, paused: bool) -> None:
        self._paused = paused
        self._tokens = 0
        self._changed = asyncio.Condition()

    @property
    def paused(self) -> bool:
        return self._paused

    async def set_paused(self, paused: bool) -> None:
        async with self._changed:
            self._paused = paused
            self._tokens = 0
            self._changed.notify_all()

    async def step(self) -> None:
        async with self._changed:
            self._tokens += 1
            self._changed.notify_all()

    async def wait_turn(self) -> None:
        """Return when an operation may run (open gate, or one step token taken)."""
        async with self._changed:
            while self._paused and self._tokens == 0:
                await self._changed.wait()
            if self._paused:
                self._tokens -= 1


@dataclass(eq=False)
class _Agent:
    """One demo agent: its bus, home connection and coherent L1 (replaced on restart)."""

    agent_id: str
    index: int
    bus: CoherenceBus
    home: L3Tier
    l1: CoherentL1Tier
    incarnation_count: int = 1
    status: str = "starting"
    client_id: str | None = None  # the Redis id of the bus's pub/sub connection
    available: asyncio.Event = field(default_factory=asyncio.Event)
    invalidations_seen: int = 0
    recalls_seen: int = 0
    acks_seen: int = 0


@dataclass(eq=False)
class _OffAgent:
    """The baseline agent: plain L1Tier over the shared L2/L3, no coherence at all."""

    agent_id: str
    l1: L1Tier
    hierarchy: MemoryHierarchy


@dataclass
class _Counters:
    reads: int = 0
    stale_reads: int = 0
    writes: int = 0
    conflicts: int = 0

    def to_json(self) -> JSONObject:
        return {
            "reads": self.reads,
            "stale_reads": self.stale_reads,
            "writes": self.writes,
            "conflicts": self.conflicts,
        }


class DemoRun:
    """One run: start() launches it in the background, aclose() stops it and cleans up.

    The run owns every client it opens (buses, tiers, a raw Redis client for fault injection
    and cleanup) and closes them in `aclose()`, which also drops the run's Postgres schema and
    deletes its Redis keys. `hub` is borrowed.
    """

    def __init__(
        self,
        hub: EventHub,
        *,
        redis_url: str,
        postgres_dsn: str,
        settings: RunSettings,
        run_number: int,
        paused: bool = False,
    ) -> None:
        self.hub: Final = hub
        self.settings = settings
        self.run_number: Final = run_number
        self._redis_url: Final = redis_url
        self._postgres_dsn: Final = postgres_dsn
        token = secrets.token_hex(4)
        self.namespace: Final = f"demo-{token}"
        self.off_namespace: Final = f"demo-off-{token}"
        self.schema: Final = f"demo_{token}"
        self.status: RunStatus = "starting"
        self.round = 0
        self.phase = "starting"
        self.started_at = time.monotonic()
        self.finished_in_s: float | None = None
        self._gate = _Gate(paused)
        self._delay_s = settings.delay_ms / 1000
        self._agents: dict[str, _Agent] = {}
        self._off: dict[str, _OffAgent] = {}
        self._entries: dict[str, dict[str, JSONObject]] = {}
        self._home: dict[str, JSONObject] = {}
        self._l2: dict[str, JSONObject] = {}
        self._off_l1: dict[str, dict[str, JSONObject]] = {}
        self._writers: dict[tuple[str, int], str] = {}
        self._recallers: dict[str, str] = {}
        self._committed: dict[tuple[str, str], int] = {}
        self._coherent = _Counters()
        self._baseline = _Counters()
        self._last_converged: JSONObject | None = None
        self._last_off_converged: JSONObject | None = None
        self._faults: list[JSONObject] = []
        self._home_dirty = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._monitor_task: asyncio.Task[None] | None = None
        self._closed = False
        self._lifecycle = asyncio.Lock()
        self._agent_lock = asyncio.Lock()
        self._converge_lock = asyncio.Lock()
        self._raw: aioredis.Redis | None = None
        self._monitor_home: L3Tier | None = None
        self._monitor_store: HomeStore | None = None
        self._monitor_l2: L2Tier | None = None
        self._off_l2: L2Tier | None = None
        self._off_l3: L3Tier | None = None
        self._restarts: set[asyncio.Task[None]] = set()
        self._rng = random.Random(settings.seed)
        self._pace_rng = random.Random(settings.seed + 1)

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

    # -- controls -------------------------------------------------------------------------

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

    # -- the main task --------------------------------------------------------------------

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
        self._raw = aioredis.Redis.from_url(self._redis_url, socket_timeout=5.0)
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

    # -- what the library reports -----------------------------------------------------------

    def _tracer(self, agent: _Agent, l1: CoherentL1Tier) -> Callable[[TraceRecord], None]:
        def trace(record: TraceRecord) -> None:
            if agent.l1 is not l1:
                return  # a previous incarnation, finishing after its replacement started
            self._on_trace(agent, l1, record)

        return trace

    def _on_trace(self, agent: _Agent, l1: CoherentL1Tier, record: TraceRecord) -> None:
        """Publish one executed row, the entry it left, and the messages it sent or received."""
        entry = l1.core.snapshot(record.key)
        effects = [effect.name for effect in record.effects]
        payload = record.payload
        view: JSONObject = {
            "state": entry.state.name,
            "version": _version_or_none(entry.version),
            "value": _jsonable(entry.value),
        }
        self._entries.setdefault(agent.agent_id, {})[record.key] = view
        self.hub.publish(
            "trace",
            {
                "run": self.run_number,
                "agent": agent.agent_id,
                "incarnation": l1.incarnation,
                "key": record.key,
                "source": record.source.name,
                "event": record.event.name,
                "guard": record.guard.name,
                "target": record.target.name,
                "effects": effects,
                "payload_version": payload.version,
                "entry": view,
            },
        )
        self._home_dirty.set()
        committed = Effect.HOME_COMMIT_VERSION in record.effects
        reserved = Effect.HOME_RESERVE_AND_GRANT in record.effects
        if (committed or reserved) and payload.version is not None:
            self._writers[(record.key, payload.version)] = agent.agent_id
            self._committed[(agent.agent_id, record.key)] = payload.version
        stats = l1.statistics()
        if stats.invalidations_sent > agent.invalidations_seen:
            count = stats.invalidations_sent - agent.invalidations_seen
            agent.invalidations_seen = stats.invalidations_sent
            version = self._committed.get((agent.agent_id, record.key))
            self._message(
                "INVALIDATE",
                "sent",
                key=record.key,
                sender=agent.agent_id,
                receiver=None,
                version=version,
                count=count,
                row="HOME OUTBOX_RELAY -> PUBLISH_INVALIDATIONS",
            )
        if record.event is Event.DELIVER_INVALIDATE:
            version = payload.version
            sender = self._writers.get((record.key, version or 0), "home")
            self._message(
                "INVALIDATE",
                "delivered",
                key=record.key,
                sender=sender,
                receiver=agent.agent_id,
                version=version,
                row=f"{record.source.name} DELIVER_INVALIDATE -> {record.target.name}",
            )
        if Effect.SEND_RECALL in record.effects:
            owner = self._home.get(record.key, {}).get("owner")
            self._recallers[record.key] = agent.agent_id
            self._message(
                "RECALL",
                "sent",
                key=record.key,
                sender=agent.agent_id,
                receiver=owner if isinstance(owner, str) else None,
                version=payload.owner_epoch,
                row=f"{record.source.name} {record.event.name} -> SEND_RECALL",
            )
        if record.event is Event.DELIVER_RECALL:
            self._message(
                "RECALL",
                "delivered",
                key=record.key,
                sender=self._recallers.get(record.key),
                receiver=agent.agent_id,
                version=payload.owner_epoch,
                row=f"{record.source.name} DELIVER_RECALL -> {record.target.name}",
            )
        if Effect.SEND_ACK in record.effects and stats.acks_sent > agent.acks_seen:
            agent.acks_seen = stats.acks_sent
            version = payload.version
            self._message(
                "ACK",
                "sent",
                key=record.key,
                sender=agent.agent_id,
                receiver=self._writers.get((record.key, version or 0)),
                version=version,
                row=f"{record.source.name} {record.event.name} -> SEND_ACK",
            )

    def _message(
        self,
        kind: str,
        phase: str,
        *,
        key: str,
        sender: str | None,
        receiver: str | None,
        version: int | None,
        row: str,
        count: int = 1,
    ) -> None:
        self.hub.publish(
            "message",
            {
                "run": self.run_number,
                "type": kind,
                "phase": phase,
                "key": key,
                "from": sender,
                "to": receiver,
                "version": version,
                "count": count,
                "row": row,
            },
        )

    async def _monitor(self) -> None:
        """Read the home (L3) and the L2 copies back; publish them when they change."""
        last_stats = 0.0
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(_MONITOR_INTERVAL_S):
                    await self._home_dirty.wait()
            self._home_dirty.clear()
            try:
                await self._sample_home()
            except SageMemError as error:
                _logger.warning("demo monitor: %s", error)
            now = time.monotonic()
            if now - last_stats >= _STATS_INTERVAL_S:
                last_stats = now
                self._publish_stats()
            # Bound the sampling rate whatever the trace rate.
            await asyncio.sleep(0.05)

    async def _sample_home(self) -> None:
        store, l2 = self._monitor_store, self._monitor_l2
        if store is None or l2 is None:
            return
        for key in KEYS:
            found = await store.read(key)
            home: JSONObject = {
                "version": found.version,
                "value": _jsonable(found.value),
                "exists": found.value is not ABSENT,
                "owner": None if found.owner is None else owner_agent(found.owner),
                "owner_token": found.owner,
                "outbox": found.outbox,
            }
            if self._home.get(key) != home:
                self._home[key] = home
                self.hub.publish("home", {"run": self.run_number, "key": key, **home})
            cached = await l2.read(key)
            copy: JSONObject = (
                {"version": None, "value": None, "present": False}
                if cached is None
                else {"version": cached.version, "value": _jsonable(cached.value), "present": True}
            )
            if self._l2.get(key) != copy:
                self._l2[key] = copy
                self.hub.publish("l2", {"run": self.run_number, "key": key, **copy})

    def _publish_stats(self) -> None:
        agents: JSONObject = {}
        for agent_id, agent in self._agents.items():
            stats = agent.l1.statistics()
            bus = agent.bus.statistics()
            agents[agent_id] = {
                "hits": stats.hits,
                "misses": stats.misses,
                "invalidations_sent": stats.invalidations_sent,
                "invalidations_received": stats.invalidations_received,
                "recalls_sent": stats.recalls_sent,
                "recalls_received": stats.recalls_received,
                "acks_sent": stats.acks_sent,
                "conflicts": stats.conflicts,
                "fenced_writes": stats.fenced_writes,
                "disconnects": stats.disconnects,
                "resyncs": stats.resyncs,
                "bus_reconnects": bus.reconnects,
            }
        self.hub.publish(
            "stats",
            {
                "run": self.run_number,
                "agents": agents,
                "coherent": self._coherent.to_json(),
                "baseline": self._baseline.to_json(),
            },
        )

    def _publish_run(self) -> None:
        self.hub.publish("run", self.describe())

    def describe(self) -> JSONObject:
        """The run's settings and progress."""
        return {
            "run": self.run_number,
            "mode": self.settings.mode.value,
            "agents": [AGENT_IDS[i] for i in range(self.settings.agents)],
            "status": self.status,
            "paused": self._gate.paused,
            "round": self.round,
            "rounds": self.settings.rounds,
            "phase": self.phase,
            "delay_ms": round(self._delay_s * 1000),
            "namespace": self.namespace,
            "schema": self.schema,
            "compare_off": self.settings.compare_off,
            "elapsed_s": round(time.monotonic() - self.started_at, 2),
            "finished_in_s": None if self.finished_in_s is None else round(self.finished_in_s, 2),
        }

    def snapshot(self) -> JSONObject:
        """Everything the page draws, as of now (sent first on every SSE connection)."""
        agents: JSONObject = {}
        for agent_id, agent in self._agents.items():
            agents[agent_id] = {
                "incarnation": agent.l1.incarnation,
                "incarnations": agent.incarnation_count,
                "status": agent.status,
                "entries": dict(self._entries.get(agent_id, {})),
            }
        return {
            "run": self.describe(),
            "keys": list(KEYS),
            "agents": agents,
            "home": dict(self._home),
            "l2": dict(self._l2),
            "off": {a: dict(e) for a, e in self._off_l1.items()},
            "coherent": self._coherent.to_json(),
            "baseline": self._baseline.to_json(),
            "converged": self._last_converged,
            "off_converged": self._last_off_converged,
            "faults": [dict(fault) for fault in self._faults],
        }

    # -- the workload ---------------------------------------------------------------------

    async def _rounds(self) -> None:
        for number in range(1, self.settings.rounds + 1):
            self.round = number
            self.phase = "disagree"
            self._publish_run()
            plans = {
                agent_id: self._plan(agent.index, number)
                for agent_id, agent in self._agents.items()
            }
            async with asyncio.TaskGroup() as group:
                for agent_id, plan in plans.items():
                    group.create_task(self._play(agent_id, plan), name=f"demo-{agent_id}")
            self.phase = "converge"
            self._publish_run()
            await self._converge(number)

    def _plan(self, index: int, number: int) -> list[tuple[OpKind, str]]:
        """The agent's operations for a round (seeded: the same for the baseline)."""
        rng = self._rng
        own = WEATHER if (index + number) % 2 == 0 else PLAN
        first: OpKind = "set" if rng.random() < 0.5 else "write_through"
        plan: list[tuple[OpKind, str]] = [(first, own)]
        other = PLAN if own == WEATHER else WEATHER
        plan.append(("read", other))
        plan.append(("cas", VOTES))
        if rng.random() < 0.5:
            plan.append(("read", own))
        return plan

    async def _pace(self) -> None:
        delay = self._delay_s
        if delay > 0:
            await asyncio.sleep(delay * self._pace_rng.uniform(0.5, 1.5))

    async def _agent(self, agent_id: str) -> _Agent:
        agent = self._agents[agent_id]
        if not agent.available.is_set():
            async with asyncio.timeout(_AGENT_WAIT_S):
                await agent.available.wait()
            agent = self._agents[agent_id]
        return agent

    async def _play(self, agent_id: str, plan: list[tuple[OpKind, str]]) -> None:
        for op, key in plan:
            await self._pace()
            await self._gate.wait_turn()
            await self._operate(agent_id, op, key)

    def _belief(self, agent_id: str, key: str) -> str:
        index = AGENT_IDS.index(agent_id)
        return _BELIEFS[key][index]

    async def _operate(self, agent_id: str, op: OpKind, key: str) -> None:
        """One agent operation on the coherent run, then the same on the baseline."""
        agent = await self._agent(agent_id)
        l1 = agent.l1
        data: JSONObject = {"run": self.run_number, "agent": agent_id, "op": op, "key": key}
        mirrored: JSONValue = None
        try:
            match op:
                case "set":
                    value = self._belief(agent_id, key)
                    data["value"] = value
                    data["version"] = await l1.set(key, value)
                    data["state"] = l1.get_state(key).name
                    self._coherent.writes += 1
                    mirrored = value
                case "write_through":
                    value = self._belief(agent_id, key)
                    data["value"] = value
                    data["version"] = await l1.write_through(key, value)
                    self._coherent.writes += 1
                    mirrored = value
                case "cas":
                    current = await self._checked_read(agent_id, l1, key, data)
                    count = current.value if current is not None else 0
                    expected = None if current is None else current.version
                    new = (count if isinstance(count, int) else 0) + 1
                    data["value"] = new
                    data["expected_version"] = expected
                    try:
                        data["version"] = await l1.compare_and_swap(key, new, expected)
                        self._coherent.writes += 1
                    except VersionConflict as conflict:
                        self._coherent.conflicts += 1
                        data["conflict"] = {
                            "expected": conflict.expected,
                            "actual": conflict.actual,
                        }
                case "read":
                    await self._checked_read(agent_id, l1, key, data)
        except SageMemError as error:
            data["error"] = f"{type(error).__name__}: {error}"
        self.hub.publish("op", data)
        self._home_dirty.set()
        if self.settings.compare_off:
            await self._operate_off(agent_id, op, key, mirrored)

    async def _checked_read(
        self, agent_id: str, l1: CoherentL1Tier, key: str, data: JSONObject
    ) -> TierEntry | None:
        """Read through the protocol; stale if older than the home's version just before."""
        store = self._monitor_store
        assert store is not None
        before: HomeRead = await store.read(key)
        entry, source = await l1.read_from(key)
        version = 0 if entry is None else entry.version or 0
        stale = version < before.version
        self._coherent.reads += 1
        if stale:
            self._coherent.stale_reads += 1
        data.update(
            {
                "read_value": None if entry is None else _jsonable(entry.value),
                "read_version": None if entry is None else entry.version,
                "source": ("L1", "L2", "home")[source],
                "home_version_before": before.version,
                "stale": stale,
                "state": l1.get_state(key).name,
            }
        )
        return entry

    async def _operate_off(self, agent_id: str, op: OpKind, key: str, value: JSONValue) -> None:
        off, l3 = self._off.get(agent_id), self._off_l3
        if off is None or l3 is None:
            return
        data: JSONObject = {"run": self.run_number, "agent": agent_id, "op": op, "key": key}
        try:
            if op in ("set", "write_through"):
                data["version"] = await off.hierarchy.set(key, value, tier_index=2)
                data["value"] = _jsonable(value)
                self._baseline.writes += 1
            else:
                entry = await self._off_read(off, key, data)
                if op == "cas":
                    count = 0 if entry is None else entry.value
                    new = (count if isinstance(count, int) else 0) + 1
                    expected = None if entry is None else entry.version
                    data["value"] = new
                    try:
                        data["version"] = await off.hierarchy.compare_and_swap(key, new, expected)
                        self._baseline.writes += 1
                    except VersionConflict as conflict:
                        self._baseline.conflicts += 1
                        data["conflict"] = {
                            "expected": conflict.expected,
                            "actual": conflict.actual,
                        }
        except SageMemError as error:
            data["error"] = f"{type(error).__name__}: {error}"
        await self._off_snapshot(off)
        self.hub.publish(
            "off",
            {**data, "l1": self._off_l1[agent_id], "baseline": self._baseline.to_json()},
        )

    async def _off_read(self, off: _OffAgent, key: str, data: JSONObject) -> TierEntry | None:
        l3 = self._off_l3
        assert l3 is not None
        before = await l3.version(key) or 0
        entry = await off.hierarchy.read(key)
        version = 0 if entry is None else entry.version or 0
        stale = version < before
        self._baseline.reads += 1
        if stale:
            self._baseline.stale_reads += 1
        data.update(
            {
                "read_value": None if entry is None else _jsonable(entry.value),
                "read_version": None if entry is None else entry.version,
                "home_version_before": before,
                "stale": stale,
            }
        )
        return entry

    async def _off_snapshot(self, off: _OffAgent) -> None:
        """The baseline agent's L1 contents (what it would serve without asking anyone)."""
        view: dict[str, JSONObject] = {}
        for key in KEYS:
            cached = await off.l1.read(key)
            if cached is not None:
                view[key] = {"value": _jsonable(cached.value), "version": cached.version}
        self._off_l1[off.agent_id] = view

    async def _converge(self, number: int) -> None:
        """Every agent reads every key (through the protocol) until all agree with the home."""
        async with self._converge_lock:
            await self._converge_locked(number)

    async def _converge_locked(self, number: int) -> None:
        attempts = 0
        while True:
            attempts += 1
            reads: dict[str, dict[str, tuple[object, int | None]]] = {}

            async with asyncio.TaskGroup() as group:
                for agent_id in self._agents:
                    group.create_task(self._read_all(agent_id, reads))
            await self._sample_home()
            keys: JSONObject = {}
            converged = True
            for key in KEYS:
                seen = {reads[a][key] for a in reads}
                home_version = self._home.get(key, {}).get("version")
                agreed = len(seen) == 1 and next(iter(seen))[1] == (home_version or None)
                value, version = next(iter(seen)) if len(seen) == 1 else (None, None)
                keys[key] = {
                    "agreed": agreed,
                    "value": value,
                    "version": version,
                    "home_version": home_version,
                    "views": {
                        a: {"value": reads[a][key][0], "version": reads[a][key][1]} for a in reads
                    },
                }
                converged = converged and agreed
            result: JSONObject = {
                "run": self.run_number,
                "round": number,
                "converged": converged,
                "attempt": attempts,
                "keys": keys,
                "elapsed_s": round(time.monotonic() - self.started_at, 2),
            }
            self._last_converged = result
            self.hub.publish("converged", result)
            if converged:
                self._settle_faults(result)
            if converged or attempts >= _CONVERGE_ATTEMPTS_MAX:
                break
        if self.settings.compare_off:
            await self._converge_off(number)

    async def _read_all(
        self, agent_id: str, reads: dict[str, dict[str, tuple[object, int | None]]]
    ) -> None:
        """One agent reads every key (a convergence check), through the protocol."""
        views: dict[str, tuple[object, int | None]] = {}
        for key in KEYS:
            await self._gate.wait_turn()
            agent = await self._agent(agent_id)
            data: JSONObject = {
                "run": self.run_number,
                "agent": agent_id,
                "op": "read",
                "key": key,
                "phase": "converge",
            }
            try:
                entry = await self._checked_read(agent_id, agent.l1, key, data)
                views[key] = (
                    (None, None) if entry is None else (_jsonable(entry.value), entry.version)
                )
            except SageMemError as error:
                data["error"] = f"{type(error).__name__}: {error}"
                views[key] = ("<error>", None)
            self.hub.publish("op", data)
        reads[agent_id] = views

    async def _converge_off(self, number: int) -> None:
        """The baseline's agents read every key too: without invalidation they may disagree."""
        views: dict[str, JSONObject] = {}
        for agent_id, off in self._off.items():
            view: JSONObject = {}
            for key in KEYS:
                data: JSONObject = {"run": self.run_number, "agent": agent_id, "op": "read"}
                entry = await self._off_read(off, key, data)
                view[key] = {
                    "value": None if entry is None else _jsonable(entry.value),
                    "version": None if entry is None else entry.version,
                    "stale": data["stale"],
                }
            views[agent_id] = view
            await self._off_snapshot(off)
        agreed = all(
            len({repr(self._strip_stale(views[a], key)) for a in views}) == 1 for key in KEYS
        )
        result: JSONObject = {
            "run": self.run_number,
            "round": number,
            "converged": agreed,
            "views": views,
            "baseline": self._baseline.to_json(),
        }
        self._last_off_converged = result
        self.hub.publish("off_converged", result)

    @staticmethod
    def _strip_stale(view: JSONObject, key: str) -> object:
        found = view[key]
        assert isinstance(found, dict)
        return (found["value"], found["version"])

    # -- faults ---------------------------------------------------------------------------

    async def drop_connection(self, agent_id: str) -> JSONObject:
        """Kill `agent_id`'s bus pub/sub connection with CLIENT KILL (the library reconnects)."""
        agent = self._agents.get(agent_id)
        if agent is None or not agent.available.is_set():
            raise FaultError(f"no running agent {agent_id!r}; agents: {list(self._agents)}")
        raw = self._raw
        assert raw is not None
        async with self._agent_lock:
            current = await self._bus_client_ids()
            if agent.client_id not in current:
                # The bus reconnected since: its new connection is the one nobody else has.
                others = {a.client_id for a in self._agents.values() if a is not agent}
                unknown = current - others
                if len(unknown) != 1:
                    raise FaultError(
                        f"cannot tell which Redis client is {agent_id}'s pub/sub connection "
                        f"(candidates {sorted(unknown)}); try again in a second"
                    )
                agent.client_id = next(iter(unknown))
            killed = await raw.client_kill_filter(_id=agent.client_id, _type="pubsub")
            if not killed:  # not subscribed yet (between connect and SUBSCRIBE): kill anyway
                killed = await raw.client_kill_filter(_id=agent.client_id)
        fault: JSONObject = {
            "run": self.run_number,
            "fault": "drop_connection",
            "agent": agent_id,
            "redis_client_id": agent.client_id,
            "killed": int(killed),
            "command": f"CLIENT KILL ID {agent.client_id} TYPE pubsub",
        }
        self._record_fault(fault)
        self._spawn(self._recover(), f"demo-recover-{agent_id}")
        return fault

    def _record_fault(self, fault: JSONObject) -> None:
        """Number `fault`, note when it happened, keep it (the page's fault panel) and publish
        it; its outcome is filled in when the agents next agree (`_settle_faults`)."""
        fault["id"] = len(self._faults) + 1
        fault["at_s"] = round(time.monotonic() - self.started_at, 2)
        fault["recovered_in_s"] = None
        fault["outcome"] = None
        self._faults.append(fault)
        self.hub.publish("fault", dict(fault))

    def _settle_faults(self, converged: JSONObject) -> None:
        """Give each fault still recovering, whose agent runs again, its outcome: how long the
        recovery took (fault to the first round where every agent agrees with the home) and
        what the lost Modified data became."""
        keys = converged["keys"]
        assert isinstance(keys, dict)
        now_s = time.monotonic() - self.started_at
        for fault in self._faults:
            if fault["outcome"] is not None:
                continue
            agent = self._agents.get(str(fault["agent"]))
            if agent is None or agent.status != "running" or not agent.available.is_set():
                continue
            at_s = fault["at_s"]
            assert isinstance(at_s, float | int)
            parts = [
                f"recovered: every agent agrees with the home again (round {converged['round']})"
            ]
            lost = fault.get("lost_modified") or []
            assert isinstance(lost, list)
            for item in lost:
                home = keys.get(item["key"], {})
                parts.append(
                    f"{item['key']} v{item['version']} {json.dumps(item['value'])} was never "
                    f"written back; the home kept v{home.get('home_version')} "
                    f"{json.dumps(home.get('value'))}"
                )
            if fault["fault"] == "kill" and not lost:
                parts.append("no Modified data was lost")
            fault["recovered_in_s"] = round(now_s - at_s, 2)
            fault["outcome"] = "; ".join(parts)
            self.hub.publish(
                "fault_outcome",
                {
                    "run": self.run_number,
                    "id": fault["id"],
                    "recovered_in_s": fault["recovered_in_s"],
                    "outcome": fault["outcome"],
                },
            )

    def _spawn(self, coroutine: Coroutine[object, object, None], name: str) -> None:
        task = asyncio.create_task(coroutine, name=name)
        self._restarts.add(task)
        task.add_done_callback(self._restarts.discard)

    async def kill_agent(self, agent_id: str | None) -> JSONObject:
        """Crash an agent holding a Modified entry (`abandon()`: no write-back), restart it.

        With no agent named, the first agent holding an M entry is chosen; if none does, the
        first agent takes ownership of a key (`set`) first, so that there is data to lose."""
        candidates = [agent_id] if agent_id is not None else list(self._agents)
        for candidate in candidates:
            if candidate not in self._agents:
                raise FaultError(f"no agent {candidate!r}; agents: {list(self._agents)}")
        victim: _Agent | None = None
        for candidate in candidates:
            agent = self._agents[candidate]
            if agent.available.is_set() and any(
                agent.l1.get_state(key) is L1State.M for key in KEYS
            ):
                victim = agent
                break
        if victim is None:
            agent = self._agents[candidates[0]]
            if not agent.available.is_set():
                raise FaultError(f"agent {agent.agent_id} is not running")
            value = self._belief(agent.agent_id, WEATHER)
            await agent.l1.set(WEATHER, value)
            self.hub.publish(
                "op",
                {
                    "run": self.run_number,
                    "agent": agent.agent_id,
                    "op": "set",
                    "key": WEATHER,
                    "value": value,
                    "state": agent.l1.get_state(WEATHER).name,
                    "phase": "fault",
                },
            )
            victim = agent
        lost: list[JSONObject] = []
        for key in KEYS:
            entry = victim.l1.core.snapshot(key)
            if entry.state is L1State.M:
                lost.append(
                    {
                        "key": key,
                        "version": _version_or_none(entry.version),
                        "value": _jsonable(entry.value),
                    }
                )
        victim.status = "crashed"
        await self._close_agent(victim, orderly=False)
        old_incarnation = victim.l1.incarnation
        fault: JSONObject = {
            "run": self.run_number,
            "fault": "kill",
            "agent": victim.agent_id,
            "incarnation": old_incarnation,
            "lost_modified": lost,
            "restart_in_s": _RESTART_DELAY_S,
        }
        self._record_fault(fault)
        self.hub.publish(
            "agent",
            {"agent": victim.agent_id, "incarnation": old_incarnation, "status": "crashed"},
        )
        self._spawn(self._restart(victim), f"demo-restart-{victim.agent_id}")
        return fault

    async def _restart(self, victim: _Agent) -> None:
        await asyncio.sleep(_RESTART_DELAY_S)
        try:
            agent = await self._start_agent(
                victim.agent_id, victim.index, victim.incarnation_count + 1
            )
        except SageMemError as error:
            self.hub.publish("error", {"run": self.run_number, "message": str(error)})
            return
        self._entries[victim.agent_id] = {}
        self._agents[victim.agent_id] = agent
        victim.available.set()  # wake anyone who waited on the old record: they re-read it
        await self._recover()

    async def _recover(self) -> None:
        """After a fault on a finished run, check convergence once more (the reads recall the
        dead owner, wait for its lease to lapse, and refetch), so the recovery is visible."""
        if self.status == "finished":
            self.phase = "recovery"
            self._publish_run()
            await self._converge(self.round)
