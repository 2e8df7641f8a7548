"""`CoherentL1Tier`: a per-agent L1 whose entries follow the coherence protocol of `sagemem.spec`.

The tier is an I/O adapter around `sagemem.coherence.core.AgentCore`, which executes the very
table object of the spec (`tier.core.table is sagemem.spec.TABLE`). Every state change of an
entry is a row of that table; this module only performs the actions a row returns and feeds
the outcome back as the next event:

- the core's `request` says what the entry waits for: the fill script (Redis, then the home),
  the fill data, the home's commit or ownership grant, the settling of a write (the outbox
  relay, and in strict mode the acknowledgements), the owner's backoff, a write-back or flush;
- one driver task per key performs, in order, the actions of the rows fired for that key and
  then the request, until the entry is stable; user operations wait for their answer (a
  RETURN_VALUE or ACK_WRITE action), bus messages are fed as they arrive, and an event the
  table says must wait (STALLED) is held and fed again after the entry moves.

Copies live at most `holder_ttl_s` after the fill that registered them was sent (the directory
forgets registrations after that), owned entries at most `owner_lease_s` after the last
successful lease renewal was sent: past that a read refetches (S) or gives the entry up
(LEASE_LAPSE: E drops, M writes back). A bus disconnect marks every entry missed: nothing is
served from a copy until the bus has resubscribed (RESYNC drops Shared copies).

Values are copied in and out like `L1Tier`'s; a key that does not exist is cached as absent.
Server I/O failures are retried with backoff while an operation waits for them; an operation
that has not completed after `operation_timeout_s` raises `TierUnavailable` (`OutcomeUnknown`
if its commit's answer was lost), and once nobody has waited for `operation_timeout_s` the
key's driver parks: the failing step is resumed by the next event on the key (a retried
commit is the same idempotent commit), never retried for ever in the background. A step the servers
refuse to the credentials in use (a grant of `sagemem.grants` that does not cover the key) is
not retried: it changed nothing, the operation raises `ScopeViolationError`, and so does every
later operation on that key in this tier (re-provisioned grants need a new tier). Relaying
another writer's invalidations of a key the grant may only read is left to others.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import marshal
import math
import secrets
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Final, cast

from sagemem._lifecycle import AsyncResource
from sagemem.coherence import answers
from sagemem.coherence.answers import COPY_STATES as _COPY_STATES
from sagemem.coherence.answers import OWNED_STATES as _OWNED_STATES
from sagemem.coherence.answers import StaleVerdict, TimeoutKind
from sagemem.coherence.bus import CoherenceBus, Subscription
from sagemem.coherence.core import (
    ABSENT,
    NO_PAYLOAD,
    Action,
    AgentCore,
    Outcome,
    Payload,
    Step,
    Tracer,
)
from sagemem.coherence.directory import RedisDirectory
from sagemem.coherence.home import HomeStore, owner_agent, owner_token
from sagemem.coherence.messages import (
    BusEvent,
    Delivered,
    InvalidateMessage,
    Missed,
    MissedReason,
    RecallMessage,
    Resynced,
    check_agent_id,
)
from sagemem.coherence.steps import ServerSteps, ServerStepsFactory
from sagemem.conflicts import ConflictPolicy, check_attempts, check_policy, swap_with_policy
from sagemem.conflicts import update as update_with_retries
from sagemem.errors import (
    ClosedResourceError,
    ConfigurationError,
    OutcomeUnknown,
    ProtocolError,
    SageMemError,
    ScopeViolationError,
    TierUnavailable,
    VersionConflict,
)
from sagemem.spec.model import ProtocolDefinition, Request
from sagemem.spec.table import REFUSALS, TABLE, Refusal, Rule
from sagemem.spec.vocabulary import STABLE_STATES, Effect, Event, Guard, L1State, Mode
from sagemem.tiers.base import TierEntry
from sagemem.tiers.l3 import L3Tier
from sagemem.values import JSONValue, check_expected_version, check_key, encode_value

__all__ = [
    "RELAY_SENDER",
    "CoherentL1Statistics",
    "CoherentL1Tier",
    "ConflictPolicy",
    "FencedWrite",
    "L1State",
    "Mode",
]

_logger = logging.getLogger("sagemem.coherence")

RELAY_SENDER: Final = "sagemem.relay"
"""The sender of invalidations relayed by a sweeper for a writer that died (not an agent id)."""

_SCALARS: Final = (str, int, float, bool, type(None))


# A read whose entry restarts empty (see _reset_bogus_floor) starts again at most this often.
_READ_RESTARTS: Final = 3
# Keys with no copy and nothing in flight are forgotten after this long (see _forget_idle).
_FORGET_IDLE_S: Final = 30.0
# A retrying reader or writer sends the same recall (owner, epoch) at most this often.
_RECALL_REPEAT_S: Final = 0.05


class _Packed:
    """A container value kept as marshal bytes, so every read returns a fresh copy."""

    __slots__ = ("frozen",)

    def __init__(self, value: JSONValue) -> None:
        self.frozen = marshal.dumps(value)


def _pack(value: JSONValue) -> JSONValue:
    if value is ABSENT or type(value) in _SCALARS:
        return value
    return cast(JSONValue, _Packed(value))


def _unpack(value: JSONValue) -> JSONValue:
    held: object = value
    if type(held) is _Packed:
        result: JSONValue = marshal.loads(held.frozen)
        return result
    return value


@dataclass(frozen=True, slots=True)
class FencedWrite:
    """An owned (Modified) write the home refused to store: the owner's lease had lapsed and
    the grant was revoked before the write-back arrived (REPORT_FENCED). The value is lost."""

    key: str
    version: int
    value: JSONValue


@dataclass(frozen=True, slots=True)
class CoherentL1Statistics:
    """A snapshot of one coherent L1's counters."""

    agent_id: str
    mode: str
    entries: int
    hits: int
    misses: int
    fills_from_l2: int
    fills_from_home: int
    fills_discarded_stale: int
    writes_l1: int
    writes_through: int
    write_backs: int
    invalidations_sent: int
    invalidations_received: int
    recalls_sent: int
    recalls_received: int
    acks_sent: int
    conflicts: int
    fenced_writes: int
    evictions: int
    lease_lapses: int
    floors_reset: int
    disconnects: int
    resyncs: int
    held_events: int
    io_retries: int
    parked_keys: int


@dataclass(slots=True)
class _Op:
    """A user operation waiting for its answer (RETURN_VALUE / ACK_WRITE / REPORT_FENCED)."""

    future: asyncio.Future[Action | None]


@dataclass(slots=True)
class _KeyState:
    """What the adapter keeps per key beside the core's entry."""

    # each queued action with the user operation that was waiting when its row fired (None:
    # none, or it gave up): answers go to that operation only, never to a later one
    actions: deque[tuple[Action, _Op | None]] = field(default_factory=deque)
    held: list[tuple[Event, Payload]] = field(default_factory=list)
    driver: asyncio.Task[None] | None = None
    op: _Op | None = None
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    deadline: float = 0.0  # monotonic: the copy (S) or the grant (E/M) is trusted until then
    fill_sent: float = 0.0
    unregistered: bool = False
    owner_hint: str | None = None  # the owner token the last refused request reported
    relayed: int = -1  # the newest version this agent relayed for its own write
    conflict_row_version: int | None = None  # the home row's version a conflict reported
    source: int = 0  # where the last fill found the data: 1 L2, 2 the home
    waits: int = 0  # consecutive backoffs of the request in progress
    # The table refused a transition (a bug), or the servers refused a step to this agent's
    # credentials (the key is outside its grant): the key is stuck, its operations raise.
    broken: ProtocolError | ScopeViolationError | None = None
    recalled: tuple[str | None, int | None] | None = None  # the last recall sent (owner, epoch)
    recalled_at: float = 0.0
    idle_since: float | None = None  # when the maintenance first found the key idle
    reset: bool = False  # the entry restarted empty (a bogus floor) during the operation
    # The driver stopped retrying a failing step that no operation waits for any more; the
    # next event on the key (a user operation, a message) resumes it.
    parked: bool = False
    stale_since: float | None = None  # when the fill in progress first got stale data


class CoherentL1Tier(AsyncResource):
    """One agent's L1, coherent with every other agent's through `bus` and a home (L3).

    `agent_id` names the agent's bus channel (letters, digits, `_.-`); `capacity` bounds the
    cached entries (least recently used ones are evicted: Shared copies dropped, owned ones
    written back). `mode` is `"coherent"` (default) or `"strict"` (see docs/coherence-protocol.md).
    `home` is the L3 tier holding the keys' versions; placed in a `MemoryHierarchy`, the
    hierarchy's L3 is used; standalone and without one, the tier opens its own `L3Tier` on the
    default Postgres (`SAGEMEM_POSTGRES_DSN` or the embedded server) in the bus's namespace.
    The bus must be connected before `start()`; it is borrowed (never closed here).
    `home_steps` builds the object that runs the home's protocol statements on that tier
    (`HomeStore`; tests pass a subclass that injects faults such as a lost reply), and
    `server_steps` the object through which every server step goes (`ServerSteps`: the home,
    the directory and recalls; tests pass a subclass that pauses or counts a step).
    """

    name = "L1"

    def __init__(
        self,
        agent_id: str,
        bus: CoherenceBus,
        capacity: int = 1024,
        *,
        mode: Mode | str = Mode.COHERENT,
        home: L3Tier | None = None,
        owner_lease_s: float = 10.0,
        holder_ttl_s: float = 60.0,
        fill_lease_s: float = 10.0,
        retry_delay_s: float = 0.001,
        retry_delay_max_s: float = 0.05,
        operation_timeout_s: float = 30.0,
        outbox_sweep_after_s: float = 2.0,
        tracer: Tracer | None = None,
        definition: ProtocolDefinition | None = None,
        on_fenced: Callable[[FencedWrite], None] | None = None,
        home_steps: Callable[[L3Tier], HomeStore] = HomeStore,
        server_steps: ServerStepsFactory = ServerSteps,
    ) -> None:
        self.agent_id: Final = check_agent_id(agent_id)
        if agent_id == RELAY_SENDER:
            raise ConfigurationError(f"agent id {RELAY_SENDER!r} is reserved for the relay")
        if not isinstance(bus, CoherenceBus):
            raise ConfigurationError(
                f"bus must be a sagemem.coherence.bus.CoherenceBus, got {bus!r:.80}"
            )
        if type(capacity) is not int or capacity < 1:
            raise ConfigurationError(f"capacity must be a positive int, got {capacity!r}")
        if isinstance(mode, str) and not isinstance(mode, Mode):
            try:
                mode = Mode(mode)
            except ValueError:
                raise ConfigurationError(
                    f"mode must be 'coherent' or 'strict', got {mode!r}"
                ) from None
        if not isinstance(mode, Mode):
            raise ConfigurationError(f"mode must be 'coherent' or 'strict', got {mode!r}")
        if home is not None and not isinstance(home, L3Tier):
            raise ConfigurationError(f"home must be an L3Tier or None, got {home!r:.80}")
        for name, seconds in (
            ("owner_lease_s", owner_lease_s),
            ("holder_ttl_s", holder_ttl_s),
            ("fill_lease_s", fill_lease_s),
            ("retry_delay_s", retry_delay_s),
            ("retry_delay_max_s", retry_delay_max_s),
            ("operation_timeout_s", operation_timeout_s),
            ("outbox_sweep_after_s", outbox_sweep_after_s),
        ):
            if type(seconds) not in (int, float) or not math.isfinite(seconds) or seconds <= 0:
                raise ConfigurationError(f"{name} must be a positive number, got {seconds!r}")
        self.bus: Final = bus
        self.capacity: Final = capacity
        self.mode: Final[Mode] = mode
        self.incarnation: Final = secrets.token_hex(4)
        self._me: Final = owner_token(self.agent_id, self.incarnation)
        table: tuple[Rule, ...] = TABLE
        refusals: tuple[Refusal, ...] = REFUSALS
        if definition is not None:
            if definition.mode is not mode:
                raise ConfigurationError(
                    f"definition.mode {definition.mode.value} differs from mode {mode.value}"
                )
            table, refusals = definition.table, definition.refusals
        self.core: Final = AgentCore(mode, table=table, refusals=refusals, tracer=tracer)
        self._home_tier = home
        self._owns_home = False
        self._owner_lease_s: Final = float(owner_lease_s)
        self._holder_ttl_s: Final = float(holder_ttl_s)
        self._fill_lease_s: Final = float(fill_lease_s)
        # Trust a copy a little less long than the directory keeps its registration.
        self._copy_life_s: Final = self._holder_ttl_s * 0.9
        self._owner_life_s: Final = self._owner_lease_s * 0.9
        self._retry_delay_s: Final = float(retry_delay_s)
        self._retry_delay_max_s: Final = max(float(retry_delay_max_s), self._retry_delay_s)
        self._operation_timeout_s: Final = float(operation_timeout_s)
        self._outbox_sweep_after_s: Final = float(outbox_sweep_after_s)
        # How long L2 may keep answering a fill with data older than the agent's floor before
        # the floor is taken as bogus: the sweep's period twice, plus a second.
        self._stale_l2_limit_s: Final = 2 * self._outbox_sweep_after_s + 1.0
        # How old the directory must be before a strict write settles on it: the holders'
        # link trust (same bus settings in a namespace), plus a margin for clock rates.
        self._directory_settled_s: Final = bus.link_trust_s * 1.1 + 0.1
        self._on_fenced = on_fenced
        self._home_steps: Final = home_steps
        self._server_steps: Final = server_steps
        self._steps: ServerSteps | None = None
        self._subscription: Subscription | None = None
        self._maintenance: asyncio.Task[None] | None = None
        self._keys: dict[str, _KeyState] = {}
        self._lru: OrderedDict[str, None] = OrderedDict()
        self._tasks: set[asyncio.Task[None]] = set()
        self._started = False
        self._closing = False
        self._closed = False
        self._disconnected = False
        self._lifecycle = asyncio.Lock()
        self._fenced: list[FencedWrite] = []
        self._hits = 0
        self._counts: dict[str, int] = dict.fromkeys(
            (
                "misses",
                "fills_from_l2",
                "fills_from_home",
                "fills_discarded_stale",
                "writes_l1",
                "writes_through",
                "write_backs",
                "invalidations_sent",
                "invalidations_received",
                "recalls_sent",
                "recalls_received",
                "acks_sent",
                "conflicts",
                "evictions",
                "lease_lapses",
                "floors_reset",
                "disconnects",
                "resyncs",
                "io_retries",
            ),
            0,
        )

    def __repr__(self) -> str:
        state = "closed" if self._closed else "started" if self._started else "not started"
        return (
            f"CoherentL1Tier(agent_id={self.agent_id!r}, mode={self.mode.value!r}, "
            f"namespace={self.bus.namespace!r}, {state})"
        )

    # -- wiring and lifecycle -----------------------------------------------------------------

    def attach_home(self, home: L3Tier) -> None:
        """Use `home` (a hierarchy's L3) as this agent's home; only before `start()`."""
        if self._home_tier is home:
            return
        if self._started:
            raise ConfigurationError(
                f"{self!r} is already started with another home; place it in its "
                "MemoryHierarchy before calling start()"
            )
        if self._home_tier is not None:
            raise ConfigurationError(f"{self!r} already has a home tier ({self._home_tier!r})")
        self._home_tier = home

    @property
    def home_tier(self) -> L3Tier | None:
        """The L3 tier this agent commits to (None until one is attached or started)."""
        return self._home_tier

    async def connect(self) -> None:
        """Same as `start()` (so the tier fits `MemoryHierarchy.connect()`)."""
        await self.start()

    async def start(self) -> None:
        """Subscribe to this agent's bus channel and open the home; idempotent."""
        async with self._lifecycle:
            if self._closed:
                raise ClosedResourceError(f"{self!r} was closed; create a new tier")
            if self._started:
                return
            if not self.bus.connected:
                raise ConfigurationError(
                    "the CoherenceBus is not connected: `await bus.connect()` before "
                    "`await l1.start()`"
                )
            home = self._home_tier
            if home is None:
                home = L3Tier(namespace=self.bus.namespace)
                self._home_tier = home
                self._owns_home = True
            if home.namespace != self.bus.namespace:
                raise ConfigurationError(
                    f"the home's namespace {home.namespace!r} differs from the bus's "
                    f"{self.bus.namespace!r}: give both (and the L2) the same namespace"
                )
            await home.connect()
            directory = RedisDirectory(
                self.bus.client,
                self.bus.namespace,
                lease_ttl_s=self._fill_lease_s,
                holder_ttl_s=self._holder_ttl_s,
                value_size_max_bytes=home.value_size_max_bytes,
            )
            self._steps = self._server_steps(self._home_steps(home), directory, self.bus)
            try:
                self._subscription = await self.bus.subscribe(self.agent_id, self._on_bus)
            except BaseException:
                if self._owns_home:
                    await home.aclose()
                raise
            self._maintenance = asyncio.create_task(
                self._maintain(), name=f"sagemem-l1-{self.agent_id}-maintenance"
            )
            self._started = True

    async def aclose(self) -> None:
        """Write owned entries back, drop registrations, unsubscribe; idempotent.

        Writes that the home fences meanwhile are reported (`fenced_writes()`), not raised. If
        the release takes longer than `operation_timeout_s` (servers down), or the caller
        cancels `aclose()`, the rest is abandoned: every task of the tier is stopped anyway.
        """
        async with self._lifecycle:
            if self._closed:
                return
            if not self._started:
                self._closed = True
                return
            self._closing = True
            try:
                if self._maintenance is not None:
                    self._maintenance.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await self._maintenance
                async with asyncio.timeout(self._operation_timeout_s):
                    for key in list(self._lru):
                        await self._release(key)
                    for state in list(self._keys.values()):
                        if state.driver is not None:
                            await asyncio.wait({state.driver})
                    # Registrations a fill in flight made, and acks owed for invalidations that
                    # arrive from now on, would hold strict writers back until they lapse.
                    assert self._steps is not None
                    await self._steps.leave(list(self._keys), self.agent_id)
            except (TimeoutError, SageMemError) as error:
                _logger.warning("L1 %s: release on close incomplete: %s", self.agent_id, error)
            finally:
                await self._stop()

    async def abandon(self) -> None:
        """Stop at once as a crashed process would: nothing is written back, registrations and
        grants are left to lapse (the home revokes a lapsed owner; its data is lost). For fault
        injection (tests, the demo); `aclose()` is the orderly way to stop."""
        async with self._lifecycle:
            if self._closed:
                return
            await self._stop()

    async def _stop(self) -> None:
        """Cancel every task of the tier, fail waiting operations, unsubscribe, close what it
        owns. Runs to the end even if the caller is cancelled meanwhile."""
        self._closed = True
        tasks = [t for t in self._tasks]
        tasks += [s.driver for s in self._keys.values() if s.driver is not None]
        if self._maintenance is not None:
            tasks.append(self._maintenance)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.shield(asyncio.wait(tasks))
        for state in self._keys.values():
            op = state.op
            if op is not None and not op.future.done():
                op.future.set_exception(ClosedResourceError(f"{self!r} was closed"))
        subscription = self._subscription
        self._subscription = None
        if subscription is not None:
            with contextlib.suppress(SageMemError):
                await asyncio.shield(subscription.aclose())
        if self._owns_home and self._home_tier is not None:
            await asyncio.shield(self._home_tier.aclose())

    def _require_started(self) -> None:
        if self._closed or (self._closing and not self._lifecycle.locked()):
            raise ClosedResourceError(f"{self!r} was closed with aclose()")
        if not self._started:
            raise ClosedResourceError(f"{self!r} is not started: `await l1.start()` first")

    # -- reading ------------------------------------------------------------------------------

    def get_state(self, key: str) -> L1State:
        """The entry's protocol state: `L1State.M/E/S/I`, or a transient state mid-operation."""
        check_key(key)
        return self.core.state(key)

    def statistics(self) -> CoherentL1Statistics:
        """A snapshot of this tier's counters."""
        c = self._counts
        return CoherentL1Statistics(
            agent_id=self.agent_id,
            mode=self.mode.value,
            entries=len(self._lru),
            hits=self._hits,
            misses=c["misses"],
            fills_from_l2=c["fills_from_l2"],
            fills_from_home=c["fills_from_home"],
            fills_discarded_stale=c["fills_discarded_stale"],
            writes_l1=c["writes_l1"],
            writes_through=c["writes_through"],
            write_backs=c["write_backs"],
            invalidations_sent=c["invalidations_sent"],
            invalidations_received=c["invalidations_received"],
            recalls_sent=c["recalls_sent"],
            recalls_received=c["recalls_received"],
            acks_sent=c["acks_sent"],
            conflicts=c["conflicts"],
            fenced_writes=len(self._fenced),
            evictions=c["evictions"],
            lease_lapses=c["lease_lapses"],
            floors_reset=c["floors_reset"],
            disconnects=c["disconnects"],
            resyncs=c["resyncs"],
            held_events=sum(len(s.held) for s in self._keys.values()),
            io_retries=c["io_retries"],
            parked_keys=sum(s.parked for s in self._keys.values()),
        )

    def fenced_writes(self) -> list[FencedWrite]:
        """The owned writes the home refused (their lease lapsed first), oldest first."""
        return list(self._fenced)

    async def read(self, key: str) -> TierEntry | None:
        """The key's current entry (value and home version), or None if it does not exist.

        A valid copy is returned at once; otherwise the protocol fills it (L2, else the home,
        recalling an owner first), so the answer is never older than an invalidation this
        agent has received, nor than its own writes.
        """
        return (await self.read_from(key))[0]

    async def read_from(self, key: str) -> tuple[TierEntry | None, int]:
        """`read`, and where the data came from: 0 this L1, 1 the L2 copy, 2 the home."""
        hit = self.core.hit(key)
        if hit is not None:
            state = self._keys.get(key)
            if state is not None and self._trusted(key, state, time.monotonic()):
                self._hits += 1
                self._lru.move_to_end(key)
                version, value = hit
                return (None if value is ABSENT else TierEntry(_unpack(value), version)), 0
        check_key(key)
        state = self._state(key)
        for _ in range(_READ_RESTARTS):
            state.source = 0
            state.reset = False
            action = await self._operate(key, Event.READ, NO_PAYLOAD)
            if not (action is None and state.reset):
                break  # else the entry restarted empty under this read: read again
        source = state.source
        if action is None or action.value is ABSENT:
            return None, source
        return TierEntry(_unpack(action.value), action.version), source

    async def get(self, key: str, default: JSONValue = None) -> JSONValue:
        """The key's value (see `read`), or `default` if it does not exist."""
        hit = self.core.hit(key)  # the hit path inline: no coroutine, no TierEntry
        if hit is not None:
            state = self._keys.get(key)
            if state is not None and self._trusted(key, state, time.monotonic()):
                self._hits += 1
                self._lru.move_to_end(key)
                value = hit[1]
                if value is ABSENT:
                    return default
                return value if type(value) in _SCALARS else _unpack(value)
        entry = (await self.read_from(key))[0]
        return default if entry is None else entry.value

    async def exists(self, key: str) -> bool:
        """Whether the key exists (a coherent read)."""
        return await self.read(key) is not None

    # -- writing ------------------------------------------------------------------------------

    async def set(self, key: str, value: JSONValue) -> int | None:
        """Write at L1 (tier 0): take ownership of the key (Modified) and keep the value here.

        Other agents' copies are invalidated before this returns; the value reaches the home
        when it is written back (eviction, `flush()`, `aclose()`, or another agent's read,
        which recalls it). Returns the version the home reserved for the write.
        """
        check_key(key)
        encode_value(value)
        self._counts["writes_l1"] += 1
        action = await self._operate(key, Event.WRITE_L1, Payload(value=_pack(value)))
        return None if action is None else action.version

    async def write(self, key: str, value: JSONValue) -> int | None:
        """`set` (the `Tier` interface's write at this tier)."""
        return await self.set(key, value)

    async def write_through(self, key: str, value: JSONValue) -> int:
        """Commit `value` at the home (a new version) and invalidate every other copy first.

        Returns the committed version once every holder's invalidation is published (strict:
        acknowledged, or the holder's lease expired).
        """
        check_key(key)
        encode_value(value)
        self._counts["writes_through"] += 1
        action = await self._operate(key, Event.WRITE_THROUGH, Payload(value=_pack(value)))
        assert action is not None
        assert action.version is not None
        return action.version

    async def compare_and_swap(
        self,
        key: str,
        value: JSONValue,
        expected_version: int | None,
        *,
        on_conflict: ConflictPolicy = "reject",
        attempts: int = 10,
    ) -> int:
        """Commit `value` at the home only if the key is live at `expected_version` (None: only
        if it does not exist); invalidate every other copy; return the new version.

        On a mismatch nothing is committed and `on_conflict` decides, explicitly:
        `"reject"` raises `VersionConflict` (with the expected and the actual version);
        `"last_writer_wins"` commits `value` anyway (a plain write-through); a function
        `merge(mine, theirs)` is called with this value and the current one (None if absent)
        and its result is compare-and-swapped against the current version, up to `attempts`
        times before `VersionConflict` is raised.
        """
        check_key(key)
        encode_value(value)
        check_expected_version(expected_version)
        policy = check_policy(on_conflict)
        tries = check_attempts(attempts)

        async def swap_once(mine: JSONValue, expected: int | None) -> int:
            return await self._compare_and_swap_once(key, mine, expected)

        async def read() -> TierEntry | None:
            return await self.read(key)

        async def overwrite(mine: JSONValue) -> int:
            return await self.write_through(key, mine)

        return await swap_with_policy(
            key,
            value,
            expected_version,
            policy,
            tries,
            swap_once=swap_once,
            read=read,
            overwrite=overwrite,
        )

    async def update(
        self,
        key: str,
        fn: Callable[[JSONValue], JSONValue],
        *,
        default: JSONValue = None,
        attempts: int = 10,
    ) -> int:
        """Read-modify-write: store `fn(current value)` (`default` if the key does not exist)
        with a compare-and-swap, retrying with a fresh read up to `attempts` times; return the
        new version, or raise `VersionConflict` if every attempt lost a race."""
        check_key(key)
        tries = check_attempts(attempts)

        async def swap_once(new: JSONValue, expected: int | None) -> int:
            return await self._compare_and_swap_once(key, new, expected)

        async def read() -> TierEntry | None:
            return await self.read(key)

        return await update_with_retries(
            fn, default, tries, swap_once=swap_once, read=read, backoff=self._backoff
        )

    async def _compare_and_swap_once(self, key: str, value: JSONValue, expected: int | None) -> int:
        self._require_started()
        core_entry = self.core.snapshot(key)
        check = answers.owner_compare(
            core_entry.state, core_entry.version, core_entry.value, expected
        )
        if check is not None and not check.matched:
            raise VersionConflict(key, expected=expected, actual=check.held)
        self._counts["writes_through"] += 1
        action = await self._operate(
            key, Event.WRITE_THROUGH, Payload(value=_pack(value)), conditional=(expected,)
        )
        assert action is not None
        if action.effect is Effect.REPORT_CONFLICT:
            seen = self._state(key).conflict_row_version
            if answers.conflict_settles_first(self.mode, seen):
                assert seen is not None
                await self._await_settled(key, seen)
            raise VersionConflict(key, expected=expected, actual=action.version)
        assert action.version is not None
        return action.version

    async def _await_settled(self, key: str, version: int) -> None:
        """Wait (bounded) until no invalidation of `version` or older is pending for `key`."""
        steps = self._steps
        assert steps is not None
        try:
            async with asyncio.timeout(self._operation_timeout_s):
                attempt = 0
                while True:
                    try:
                        pending = await steps.outbox(key)
                        if pending is not None and pending <= version:
                            await self._relay(key, pending, RELAY_SENDER)
                        elif not await steps.pending_acks(key):
                            return
                        else:
                            await steps.expire_lapsed(key)
                    except TierUnavailable:  # a server is away: ask again, within the bound
                        self._counts["io_retries"] += 1
                    await self._backoff(attempt)
                    attempt += 1
        except TimeoutError:
            raise TierUnavailable(
                f"L1 {self.agent_id}: the conflicting version {version} of key {key!r} did not "
                f"settle within {self._operation_timeout_s} s; check the Redis and Postgres "
                "servers",
                tier="L1",
            ) from None

    async def delete(self, key: str) -> bool:
        """Delete the key at the home (a new, absent version), invalidating every copy.

        Returns whether the key held a value.
        """
        check_key(key)
        action = await self._operate(key, Event.WRITE_THROUGH, Payload(value=ABSENT))
        return action is not None and bool(action.existed)

    async def fill(self, key: str, entry: TierEntry) -> None:
        """A hierarchy promotion: nothing to do, a coherent L1 fills itself through the protocol
        (installing a copy without registering it would let it go stale)."""
        check_key(key)

    async def flush(self, key: str | None = None) -> None:
        """Write Modified data back to the home but keep ownership (M to E); all keys if None."""
        keys = [key] if key is not None else [k for k in self._lru]
        for one in keys:
            check_key(one)
            if self.core.state(one) is L1State.M:
                await self._operate(one, Event.FLUSH, NO_PAYLOAD)

    async def evict(self, key: str) -> None:
        """Give the entry up now: a Shared copy is dropped, an owned one written back."""
        check_key(key)
        await self._release(key)

    async def clear(self) -> None:
        """Give up every entry (as `evict`); the shared tiers are untouched."""
        for key in list(self._lru):
            await self._release(key)

    async def _release(self, key: str) -> None:
        if self.core.state(key) in _COPY_STATES:
            self._counts["evictions"] += 1
            await self._operate(key, Event.EVICT, NO_PAYLOAD)

    # -- operations ---------------------------------------------------------------------------

    async def _operate(
        self,
        key: str,
        event: Event,
        payload: Payload,
        *,
        conditional: tuple[int | None] | None = None,
    ) -> Action | None:
        """Start a user operation and wait for its answer (None for a no-op such as flushing
        a clean entry)."""
        self._require_started()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._operation_timeout_s
        state = self._state(key)
        while True:
            if state.parked:  # a step stopped retrying after its callers left: resume it
                state.parked = False
                self._kick(key, state)
            if isinstance(state.broken, ScopeViolationError):
                raise ScopeViolationError(
                    f"L1 {self.agent_id}: key {key!r} is outside what this agent's "
                    f"credentials allow: {state.broken}"
                )
            if state.broken is not None:
                raise ProtocolError(
                    f"L1 {self.agent_id}: key {key!r} is stuck after a protocol error: "
                    f"{state.broken}"
                )
            if state.op is None and state.driver is None and not state.actions:
                self._expire_if_lapsed(key, state)
            if state.op is None:
                if self._disconnected and key not in self.core:
                    self._fire(key, Event.DISCONNECT, NO_PAYLOAD)
                op = _Op(loop.create_future())
                state.op = op
                if event is Event.WRITE_THROUGH:
                    # The commit's identity and condition travel with the entry (the core keeps
                    # them until the write is answered): a retry is the same commit.
                    payload = dataclasses.replace(
                        payload,
                        operation_id=secrets.token_hex(8),
                        conditional=conditional is not None,
                        expected=None if conditional is None else conditional[0],
                    )
                step = self._fire(key, event, payload)
                if step.fired:
                    if event is Event.READ:
                        self._counts["misses"] += 1
                    return await self._wait(key, state, op, deadline)
                state.op = None
                if step.outcome is Outcome.NOT_APPLICABLE and step.source in STABLE_STATES:
                    return None  # e.g. flushing a clean entry, evicting nothing
            # The entry is busy (a transient state, or a read stalled until RESYNC): wait.
            changed = state.changed
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise TierUnavailable(
                    f"L1 {self.agent_id}: {event.value} of key {key!r} waited "
                    f"{self._operation_timeout_s} s for the entry (state "
                    f"{self.core.state(key).name}) to settle; check the Redis and Postgres "
                    "servers",
                    tier="L1",
                )
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(min(remaining, 0.25)):
                    await changed.wait()

    async def _wait(self, key: str, state: _KeyState, op: _Op, deadline: float) -> Action | None:
        self._kick(key, state)
        if state.driver is None and not op.future.done():
            op.future.set_result(None)  # nothing to perform and nothing to wait for
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(max(0.0, deadline - loop.time())):
                return await asyncio.shield(op.future)
        except TimeoutError:
            kind = answers.timeout_error(self.core.snapshot(key).request)
            if kind is TimeoutKind.OUTCOME_UNKNOWN:
                raise OutcomeUnknown(
                    f"L1 {self.agent_id}: the commit of key {key!r} was sent but its answer "
                    f"could not be learned within {self._operation_timeout_s} s: it may or may "
                    "not have taken effect (it is never applied twice, and a compare-and-swap "
                    "keeps its version check). Re-read the key; check the Postgres server",
                    tier="L3",
                    key=key,
                ) from None
            raise TierUnavailable(
                f"L1 {self.agent_id}: operation on key {key!r} did not complete within "
                f"{self._operation_timeout_s} s (state {self.core.state(key).name}); it "
                "continues in the background. Check the Redis and Postgres servers",
                tier="L1",
            ) from None
        finally:
            if state.op is op:
                state.op = None
                self._signal(state)

    @staticmethod
    def _signal(state: _KeyState) -> None:
        """Wake whoever waits for this key's entry to change."""
        changed, state.changed = state.changed, asyncio.Event()
        changed.set()

    def _state(self, key: str) -> _KeyState:
        state = self._keys.get(key)
        if state is None:
            state = self._keys[key] = _KeyState()
        return state

    def _fire(self, key: str, event: Event, payload: Payload) -> Step:
        """Execute one event through the core and queue the actions of the row it fired."""
        step = self.core.handle(key, event, payload)
        if step.fired:
            self._after(key, step)
        return step

    def _after(self, key: str, step: Step) -> None:
        state = self._state(key)
        for action in step.actions:
            state.actions.append((action, state.op))
        state.parked = False  # a row fired: new work for the driver
        self._note(key, state, step)
        self._signal(state)
        if state.held:
            held, state.held = state.held, []
            for event, payload in held:
                self._deliver(key, event, payload)
        self._kick(key, state)

    def _note(self, key: str, state: _KeyState, step: Step) -> None:
        """Keep the LRU and the copy's deadline in step with the entry's state."""
        target = step.target
        rule = step.rule
        assert rule is not None
        state.deadline = answers.deadline_after(
            rule.effects,
            step.source,
            target,
            current=state.deadline,
            now=time.monotonic(),
            fill_sent=state.fill_sent,
            registered=not state.unregistered,
            copy_life_s=self._copy_life_s,
            owner_life_s=self._owner_life_s,
        )
        if target in _COPY_STATES:
            self._lru[key] = None
            self._lru.move_to_end(key)
            if len(self._lru) > self.capacity:
                self._evict_one()
        else:
            self._lru.pop(key, None)

    def _evict_one(self) -> None:
        for key in self._lru:
            state = self._keys.get(key)
            if state is not None and state.op is None and state.driver is None:
                self._spawn(self._release(key), f"evict {key}")
                return

    def _trusted(self, key: str, state: _KeyState, now: float) -> bool:
        """Whether the entry's copy or grant may be served now: before its deadline and, for a
        strict Shared copy, while the bus link it was registered over is confirmed (a frame
        read within `link_trust_s`). A strict holder that cannot confirm its link (the server
        restarted and forgot its registration, or this event loop stalled) may have missed an
        invalidation; a strict writer waits that long after the directory is born."""
        return answers.trusted(
            self.mode,
            self.core.state(key),
            now=now,
            deadline=state.deadline,
            link_heard_at=self.bus.link_heard_at(),
            link_trust_s=self.bus.link_trust_s,
        )

    def _expire_if_lapsed(self, key: str, state: _KeyState) -> None:
        """A copy or grant past its deadline (or a strict copy whose link is not confirmed):
        LEASE_LAPSE (E, M, strict S) or EVICT (S)."""
        event = answers.expiry_event(self.mode, self.core.state(key))
        if event is None or self._trusted(key, state, time.monotonic()):
            return
        self._counts["lease_lapses"] += 1
        self._fire(key, event, NO_PAYLOAD)

    def _kick(self, key: str, state: _KeyState) -> None:
        """Make sure the key's driver runs if it has actions to perform or a request open
        (unless it is parked: see `_drive`)."""
        if state.driver is not None or self._closed or state.broken is not None or state.parked:
            return
        if not state.actions and self.core.snapshot(key).request is Request.NONE:
            return
        state.driver = asyncio.get_running_loop().create_task(
            self._drive(key, state), name=f"sagemem-l1-{self.agent_id}-{key[:40]}"
        )

    def _spawn(self, coroutine: Coroutine[object, object, None], name: str) -> None:
        async def logged() -> None:
            try:
                await coroutine
            except SageMemError as error:
                _logger.warning("L1 %s: %s failed: %s", self.agent_id, name, error)

        task = asyncio.get_running_loop().create_task(logged(), name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- the driver ---------------------------------------------------------------------------

    async def _drive(self, key: str, state: _KeyState) -> None:
        """Perform the key's queued actions in order, then its open request, until idle."""
        failures = 0
        failing_since = 0.0
        try:
            while True:
                try:
                    while state.actions:
                        action, owner = state.actions[0]
                        await self._perform(key, state, action, owner)
                        state.actions.popleft()
                    request = self.core.snapshot(key).request
                    if request is Request.NONE:
                        state.waits = 0
                        return
                    await self._request(key, state, request)
                    failures = 0
                except (ProtocolError, ScopeViolationError) as error:
                    # A transition the table does not allow: a bug (in the table or here); or
                    # a step the servers refused to this agent's grant (sagemem.grants), which
                    # changed nothing and would be refused again. Stop driving this key and
                    # fail its operations loudly, never loop.
                    state.broken = error
                    _logger.error("L1 %s: key %r: %s", self.agent_id, key, error)
                    op = state.op
                    if op is not None and not op.future.done():
                        op.future.set_exception(error)
                    return
                except TierUnavailable as error:
                    failures += 1
                    self._counts["io_retries"] += 1
                    now = time.monotonic()
                    if failures == 1:
                        failing_since = now
                    waiting = state.op is not None and not state.op.future.done()
                    if answers.parks(
                        waiting=waiting,
                        failing_for_s=now - failing_since,
                        operation_timeout_s=self._operation_timeout_s,
                    ):
                        # Every caller has been answered (or timed out): stop retrying. The
                        # step is resumed, from where it stopped, by the next event on the
                        # key; a commit resumed later is the same idempotent commit.
                        state.parked = True
                        _logger.warning(
                            "L1 %s: key %r: parked after %d failed attempts (%s); the next "
                            "operation on the key resumes it",
                            self.agent_id,
                            key,
                            failures,
                            error,
                        )
                        return
                    if failures == 1 or failures % 50 == 0:
                        _logger.warning(
                            "L1 %s: key %r: %s (retry %d)", self.agent_id, key, error, failures
                        )
                    await asyncio.sleep(min(1.0, self._retry_delay_s * 2**failures))
        finally:
            state.driver = None
            op = state.op
            if (
                op is not None
                and not op.future.done()
                and not state.actions
                and self.core.snapshot(key).request is Request.NONE
            ):
                op.future.set_result(None)  # an operation without an answer (evict, flush)
            self._signal(state)
            if state.actions or (
                not self._closed and self.core.snapshot(key).request is not Request.NONE
            ):
                self._kick(key, state)

    async def _wait_turn(self, state: _KeyState) -> None:
        """Back off before asking again (an owner, a settling write): 1, 2, 4... ms, capped."""
        await self._backoff(state.waits)
        state.waits += 1

    async def _backoff(self, attempt: int) -> None:
        await asyncio.sleep(
            min(self._retry_delay_max_s, self._retry_delay_s * 2 ** min(attempt, 16))
        )

    async def _request(self, key: str, state: _KeyState, request: Request) -> None:
        steps = self._steps
        assert steps is not None
        entry = self.core.snapshot(key)
        match request:
            case Request.FILL:
                payload = await self._fill_fetch(key, state)
                step = self._fire(key, Event.FILL_FETCH, payload)
                if step.stalled:  # strict: a write is still settling
                    await self._wait_turn(state)
            case Request.DATA:
                payload = NO_PAYLOAD
                if entry.data_pending:
                    found = await steps.home_read(key)
                    payload = Payload(version=found.version, value=_pack(found.value))
                step = self._fire(key, Event.FILL_DATA, payload)
                if step.fired and step.guard in (Guard.DATA_STALE, Guard.DATA_OLDER):
                    self._counts["fills_discarded_stale"] += 1
                    now = time.monotonic()
                    if state.stale_since is None:
                        state.stale_since = now
                    stale = answers.stale_data_verdict(
                        source=state.source,
                        stale_for_s=now - state.stale_since,
                        l2_limit_s=self._stale_l2_limit_s,
                    )
                    if stale is StaleVerdict.RESET:
                        self._reset_bogus_floor(key, state)
                    else:
                        await self._wait_turn(state)  # the newer copy is on its way: back off
                elif step.fired:
                    state.stale_since = None
                if step.stalled:  # the bus missed messages: wait for RESYNC
                    await self._wait_changed(state)
            case Request.COMMIT:
                value = _unpack(entry.write_value)
                operation_id = entry.write_id
                assert operation_id is not None, "a write-through always carries its id"
                if entry.write_conditional:
                    answer = await steps.commit_if(
                        key, value, self._me, entry.write_expected, operation_id
                    )
                else:
                    answer = await steps.commit(key, value, self._me, operation_id)
                state.owner_hint = answer.owner
                verdict = answers.commit_verdict(answer)
                if verdict.conflict:
                    self._counts["conflicts"] += 1
                if verdict.event is Event.HOME_CONFLICT:
                    state.conflict_row_version = answer.row_version
                await self._expire_owner(key, verdict.expire_owner)
                self._fire(key, verdict.event, verdict.payload)
            case Request.ACQUIRE:
                state.fill_sent = time.monotonic()
                answer = await steps.acquire(key, self._me, self._owner_lease_ms)
                state.owner_hint = answer.owner
                verdict = answers.acquire_verdict(answer)
                if verdict.conflict:
                    self._counts["conflicts"] += 1
                await self._expire_owner(key, verdict.expire_owner)
                self._fire(key, verdict.event, verdict.payload)
            case Request.SETTLE:
                branch = await self._settle(key, state, entry.version)
                step = self._fire(key, Event.WRITE_SETTLED, Payload(branch=branch))
                if step.stalled:
                    await self._wait_turn(state)
            case Request.WAIT_OWNER:
                await self._wait_turn(state)
                self._fire(key, Event.RETRY, NO_PAYLOAD)
            case Request.WRITE_BACK | Request.FLUSH:
                assert entry.owner_epoch is not None
                keep = None if request is Request.WRITE_BACK else self._owner_lease_ms
                sent = time.monotonic()
                branch = await steps.write_back(
                    key, self._me, entry.owner_epoch, _unpack(entry.value), keep_ms=keep
                )
                self._counts["write_backs"] += 1
                if keep is not None and branch is Guard.GRANT_HELD:
                    state.deadline = max(state.deadline, sent + self._owner_life_s)
                event = Event.HOME_WRITE_BACK if keep is None else Event.HOME_FLUSH
                self._fire(key, event, Payload(branch=branch))
            case _:
                raise AssertionError(f"unexpected request {request!r}")  # pragma: no cover

    @property
    def _owner_lease_ms(self) -> int:
        return max(1, math.ceil(self._owner_lease_s * 1000))

    def _reset_bogus_floor(self, key: str, state: _KeyState) -> None:
        """The home itself, with no owner, answered a version older than this agent's floor.
        Versions are committed at the home before any invalidation names them, so that floor
        came from an invalidation the protocol never sent (forged, or from another home): the
        entry's volatile state is dropped (its CRASH row: it restarts empty, as after a
        restart) and the read starts again, instead of refetching forever."""
        self._counts["floors_reset"] += 1
        _logger.warning(
            "L1 %s: key %r: the home's version is older than an invalidation this agent "
            "received (forged?); the entry restarts empty",
            self.agent_id,
            key,
        )
        state.reset = True
        state.stale_since = None
        self._fire(key, Event.CRASH, NO_PAYLOAD)

    async def _wait_changed(self, state: _KeyState) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(0.25):
                await state.changed.wait()

    async def _fill_fetch(self, key: str, state: _KeyState) -> Payload:
        """The fill script (FILL_FETCH): register, L2 get or lease, else read the home."""
        steps = self._steps
        assert steps is not None
        strict = self.mode is Mode.STRICT
        state.fill_sent = time.monotonic()
        fill = await steps.fill(key, self.agent_id, strict=strict)
        verdict = answers.fetch_verdict(self.mode, self._me, fill, None)
        if verdict.read_home:
            verdict = answers.fetch_verdict(self.mode, self._me, fill, await steps.home_read(key))
        state.unregistered = not verdict.registered
        if verdict.owner is not None:
            state.owner_hint = verdict.owner
        await self._expire_owner(key, verdict.expire_owner)
        if verdict.relay is not None:
            await self._relay(key, verdict.relay, RELAY_SENDER)
        payload = verdict.payload
        assert payload is not None
        if verdict.source == 1:
            self._counts["fills_from_l2"] += 1
        elif verdict.source == 2:
            self._counts["fills_from_home"] += 1
        state.source = verdict.source
        return dataclasses.replace(payload, value=_pack(payload.value))

    async def _expire_owner(self, key: str, owner: str | None) -> None:
        """HOME_EXPIRE_OWNER of `owner` (a verdict's: its lease lapsed on the server's clock)."""
        steps = self._steps
        assert steps is not None
        if owner is None:
            return
        rule = self.core.shared_row(Event.HOME_EXPIRE_OWNER, Guard.OWNER_LEASE_LAPSED)
        assert isinstance(rule, Rule)
        if await steps.revoke(key, owner):
            _logger.info("L1 %s: revoked the lapsed grant of %s on %r", self.agent_id, owner, key)

    async def _relay(self, key: str, version: int, sender: str) -> bool:
        """OUTBOX_RELAY of `version`: L2 delete, publish invalidations, clear the outbox.

        Returns True if the outbox is empty afterwards as far as this relay knows."""
        steps = self._steps
        assert steps is not None
        rule = self.core.shared_row(Event.OUTBOX_RELAY, Guard.ALWAYS)
        assert isinstance(rule, Rule)
        try:
            messaged = await steps.invalidate(
                key, version, sender, await_acks=self.mode is Mode.STRICT
            )
        except ScopeViolationError:
            if sender != RELAY_SENDER:
                raise
            # Relaying another writer's invalidations of a key this agent may read but not
            # write: its grant does not allow publishing them (sagemem.grants), and nothing was
            # changed. The writer, or an agent allowed to write the key, relays them.
            _logger.info("L1 %s: not allowed to relay invalidations of %r", self.agent_id, key)
            return False
        self._counts["invalidations_sent"] += len(messaged)
        if messaged:
            # Agents of this process may have just received the invalidation: let their bus
            # listener run before this writer's bookkeeping (the outbox), so a co-located
            # holder stops serving its copy sooner.
            await asyncio.sleep(0)
        return await steps.clear_outbox(key, version)

    async def _settle(self, key: str, state: _KeyState, version: int) -> Guard:
        """Relay this write's invalidations (once) and report PUBLISHED / ACKNOWLEDGED or not
        yet (WRITE_SETTLED's branch)."""
        steps = self._steps
        assert steps is not None
        empty = False
        if state.relayed < version:
            empty = await self._relay(key, version, self.agent_id)
            state.relayed = version
        if not empty:
            pending = await steps.outbox(key)
            if pending is None:
                empty = True
            else:  # a newer commit's entry (its writer relays it too; relaying is idempotent)
                empty = await self._relay(key, pending, self.agent_id)
        if self.mode is Mode.COHERENT or not empty:
            return answers.settle_guard(self.mode, outbox_empty=empty)
        owed, directory_age_s = await steps.settle_facts(key)
        if owed:
            await steps.expire_lapsed(key)  # holders whose read lease lapsed owe nothing
        return answers.settle_guard(
            self.mode,
            outbox_empty=True,
            acks_owed=bool(owed),
            directory_age_s=directory_age_s,
            directory_settled_s=self._directory_settled_s,
        )

    async def _perform(self, key: str, state: _KeyState, action: Action, owner: _Op | None) -> None:
        """Carry out one action of a fired row; `owner` is the operation its answer is for."""
        steps = self._steps
        assert steps is not None
        match action.effect:
            case (
                Effect.RETURN_VALUE
                | Effect.RETURN_VALUE_UNCACHED
                | Effect.ACK_WRITE
                | Effect.REPORT_CONFLICT
            ):
                if owner is not None and not owner.future.done():
                    owner.future.set_result(action)
            case Effect.REPORT_FENCED:
                fenced = FencedWrite(key, action.version or 0, _unpack(action.value))
                self._fenced.append(fenced)
                _logger.warning(
                    "L1 %s: the write-back of %r (version %s) was fenced: the grant had "
                    "lapsed; the value is lost",
                    self.agent_id,
                    key,
                    action.version,
                )
                if self._on_fenced is not None:
                    self._on_fenced(fenced)
                if owner is not None and not owner.future.done():
                    owner.future.set_result(action)
            case Effect.SEND_RECALL:
                holder = state.owner_hint
                now = time.monotonic()
                recall = (holder, action.owner_epoch)
                if answers.recall_is_repeat(
                    state.recalled, state.recalled_at, recall, now=now, repeat_s=_RECALL_REPEAT_S
                ):
                    return
                state.recalled, state.recalled_at = recall, now
                if holder is not None:
                    await steps.recall(
                        key,
                        owner_agent(holder),
                        sender=self.agent_id,
                        owner_epoch=action.owner_epoch,
                    )
                    self._counts["recalls_sent"] += 1
            case Effect.SEND_ACK:
                if await steps.ack(key, self.agent_id):
                    self._counts["acks_sent"] += 1
            case Effect.DIRECTORY_ADD_HOLDER:
                if not await steps.add_holder(key, self.agent_id):
                    state.deadline = 0.0  # not registered: the kept copy must not be served
            case Effect.DIRECTORY_REMOVE_HOLDER:
                await steps.remove_holder(key, self.agent_id)
            case Effect.L2_LEASED_FILL:
                if action.fill_lease is not None and action.value is not ABSENT:
                    assert action.version is not None
                    await steps.leased_fill(
                        key, self.agent_id, action.fill_lease, action.version, _unpack(action.value)
                    )
            case _:
                pass  # requests (the driver performs them next), waits, abandoned leases

    # -- the bus ------------------------------------------------------------------------------

    async def _on_bus(self, event: BusEvent) -> None:
        """The bus handler: feed messages and connection events to the core (never blocks)."""
        match event:
            case Delivered(message=InvalidateMessage() as message):
                self._counts["invalidations_received"] += 1
                self._deliver(
                    message.key, Event.DELIVER_INVALIDATE, Payload(version=message.version)
                )
            case Delivered(message=RecallMessage() as message):
                self._counts["recalls_received"] += 1
                self._deliver(
                    message.key, Event.DELIVER_RECALL, Payload(owner_epoch=message.owner_epoch)
                )
            case Missed(reason=reason):
                self._counts["disconnects"] += 1
                self._disconnected = True
                loss = answers.loss_event(reason is MissedReason.SEQUENCE_GAP)
                for key in self.core:
                    self._fire(key, loss, NO_PAYLOAD)
            case Resynced():
                self._counts["resyncs"] += 1
                self._disconnected = False
                for key in self.core:
                    self._deliver(key, Event.RESYNC, NO_PAYLOAD)

    def _deliver(self, key: str, event: Event, payload: Payload) -> None:
        """Feed an event that does not start an operation; hold it if the table says wait.

        An owned entry whose lease ran out by this agent's clock gets its LEASE_LAPSE first:
        the table assumes the owner notices its lapse before anything else happens to the
        entry (the home revokes only grants whose lease lapsed on the later server clock).
        """
        state = self._keys.get(key)
        if state is not None and answers.lapses_first(
            self.core.state(key), now=time.monotonic(), deadline=state.deadline
        ):
            self._counts["lease_lapses"] += 1
            self._fire(key, Event.LEASE_LAPSE, NO_PAYLOAD)
        step = self.core.handle(key, event, payload)
        if step.stalled:
            self._state(key).held.append((event, payload))
        elif step.fired:
            self._after(key, step)

    # -- maintenance --------------------------------------------------------------------------

    async def _maintain(self) -> None:
        """Renew owner leases, expire lapsed copies, relay outboxes whose writer died."""
        interval = min(self._owner_lease_s / 3, self._holder_ttl_s / 3, 1.0)
        last_sweep = time.monotonic()
        while True:
            await asyncio.sleep(interval)
            try:
                await self._renew_grants()
                now = time.monotonic()
                for key in list(self._lru):
                    state = self._keys.get(key)
                    if (
                        state is not None
                        and now >= state.deadline
                        and state.op is None
                        and state.driver is None
                        and not state.actions
                    ):
                        self._expire_if_lapsed(key, state)
                if now - last_sweep >= self._outbox_sweep_after_s:
                    last_sweep = now
                    await self._sweep_outboxes()
                    self._forget_idle(now)
            except SageMemError as error:
                _logger.warning("L1 %s: maintenance failed: %s", self.agent_id, error)

    def _forget_idle(self, now: float) -> None:
        """Drop what is kept for keys with no copy and nothing in flight, idle for a while, so
        an agent touching many keys does not grow without bound. Only the floor is lost: after
        `_FORGET_IDLE_S` every invalidation the floor records has long been relayed (the
        relay deletes L2 first, and outboxes are swept every `outbox_sweep_after_s`), so no
        fill can return a version older than it."""
        for key in list(self._keys):
            state = self._keys[key]
            if (
                key in self._lru
                or state.op is not None
                or state.driver is not None
                or state.actions
                or state.held
                or state.broken is not None
            ):
                state.idle_since = None
                continue
            if state.idle_since is None:
                state.idle_since = now
            elif now - state.idle_since >= _FORGET_IDLE_S and self.core.forget(key):
                del self._keys[key]

    async def _renew_grants(self) -> None:
        steps = self._steps
        assert steps is not None
        owned = [key for key in self.core if self.core.snapshot(key).owner_epoch is not None]
        if not owned:
            return
        sent = time.monotonic()
        still = await steps.renew(owned, self._me, self._owner_lease_ms)
        for key in still:
            state = self._keys.get(key)
            if state is not None and self.core.state(key) in _OWNED_STATES:
                state.deadline = max(state.deadline, sent + self._owner_life_s)

    async def _sweep_outboxes(self) -> None:
        steps = self._steps
        assert steps is not None
        after_ms = math.ceil(self._outbox_sweep_after_s * 1000)
        for key, version in await steps.stale_outboxes(after_ms):
            await self._relay(key, version, RELAY_SENDER)
