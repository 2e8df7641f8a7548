"""The state of one demo run, shared by its parts: settings, the agents' records, counters.

`_RunState` holds every field of a run (what `DemoRun.__init__` sets up); the parts of a run
build on it in one line, each using only what is below it: `monitor` (what the library
reports, published to the page), `agents` (starting and closing an agent), `workload` (the
rounds of operations and the convergence check), `faults` (dropping a connection, killing an
agent) and `run` (`DemoRun`: lifecycle and controls).
"""

from __future__ import annotations

import asyncio
import logging
import random
import secrets
import time
from dataclasses import dataclass, field
from typing import Final, Literal

import redis.asyncio as aioredis

from sagemem.coherence.bus import CoherenceBus
from sagemem.coherence.core import NO_VERSION
from sagemem.coherence.home import ABSENT, HomeStore
from sagemem.hierarchy import MemoryHierarchy
from sagemem.spec.vocabulary import Mode
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


class _RunState:
    """Every field of a run; the methods live in the parts built on it (see the module doc)."""

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
