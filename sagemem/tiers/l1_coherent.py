"""`CoherentL1Tier`: a per-agent L1 whose entries follow the coherence protocol of `sagemem.spec`.

This is the public face of one agent's coherent L1: it validates arguments, opens and closes
what the agent needs (the home, the directory, its bus subscription) and turns each call into an
operation of `sagemem.coherence.driver.AgentDriver`, which performs the rows that the agent's
`sagemem.coherence.core.AgentCore` fires (the very table object of the spec:
`tier.core.table is sagemem.spec.TABLE`) through one `sagemem.coherence.steps.ServerSteps`.
What a server's answer means is decided in `sagemem.coherence.answers`, never here.

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
commit is the same idempotent commit), never retried for ever in the background. A step the
servers refuse to the credentials in use (a grant of `sagemem.grants` that does not cover the
key) is not retried: it changed nothing, the operation raises `ScopeViolationError`, and so
does every later operation on that key in this tier (re-provisioned grants need a new tier).
Relaying another writer's invalidations of a key the grant may only read is left to others.

Write policy (coherent mode): `write_policy="invalidate"` (the default) makes every write drop
the other agents' copies, which refetch on their next read; `write_policy="update"` makes this
agent's write-throughs send their value (when its JSON text is at most `update_value_max_bytes`)
to the agents holding a copy, which move to the new version and keep hitting (the spec's
OUTBOX_RELAY_UPDATE and DELIVER_UPDATE rows). Larger values, deletes and ownership grants still
invalidate. The policy is the writer's: every agent understands both kinds of message, so the
agents of one namespace may mix policies; set the same one on all of them for predictable
costs. Updates are trusted as the home trusts writes (see `sagemem.coherence.messages`).
Under either policy (coherent mode) a writer's own relay of its write-through stores the value
in L2 (OUTBOX_RELAY_STORE, or OUTBOX_RELAY_UPDATE's L2_SET_IF_NEWER) when its JSON text is at
most `update_value_max_bytes`, so the next miss of the key anywhere is an L2 hit.

A write-through leaves the writer without a copy (the table's WT_A -> I: its version is only
known once the home has committed it). With `refetch_after_write` (on by default under the
update policy) the writer fetches its copy again in the background once the write returned,
through the table's ordinary read (a READ from I): its next read of the key is a hit instead of
a miss. The refetch is counted in `statistics().refetches`, not as a miss; a user operation on
the key while it runs waits for it as for any fill.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from sagemem._lifecycle import AsyncResource
from sagemem.coherence.bus import CoherenceBus, Subscription
from sagemem.coherence.core import ABSENT, NO_PAYLOAD, AgentCore, Payload, Tracer
from sagemem.coherence.directory import RedisDirectory
from sagemem.coherence.driver import (
    RELAY_SENDER,
    AgentDriver,
    DriverSettings,
    FencedWrite,
    pack,
    unpack,
)
from sagemem.coherence.home import HomeStore, owner_token
from sagemem.coherence.messages import UPDATE_VALUE_MAX_BYTES, check_agent_id
from sagemem.coherence.steps import ServerSteps, ServerStepsFactory
from sagemem.conflicts import ConflictPolicy, check_attempts, check_policy, swap_with_policy
from sagemem.conflicts import update as update_with_retries
from sagemem.errors import ClosedResourceError, ConfigurationError, SageMemError
from sagemem.spec.model import ProtocolDefinition
from sagemem.spec.table import REFUSALS, TABLE, Refusal, Rule
from sagemem.spec.vocabulary import Event, L1State, Mode
from sagemem.tiers.base import TierEntry
from sagemem.tiers.l3 import L3Tier
from sagemem.values import JSONValue, check_expected_version, check_key, encode_value

__all__ = [
    "RELAY_SENDER",
    "WRITE_POLICIES",
    "CoherentL1Statistics",
    "CoherentL1Tier",
    "ConflictPolicy",
    "FencedWrite",
    "L1State",
    "Mode",
]

_logger = logging.getLogger("sagemem.coherence")

WRITE_POLICIES: Final = ("invalidate", "update")
"""The `write_policy` values: what a write-through does to the other agents' copies."""

_SCALARS: Final = (str, int, float, bool, type(None))
# A read whose entry restarts empty (a bogus floor) starts again at most this often.
_READ_RESTARTS: Final = 3


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
    updates_sent: int  # write-update: updates this agent's relays published (one per holder)
    updates_received: int  # updates delivered to this agent
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
    refetches: int = 0  # background fetches of this agent's own written keys (not misses)


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
        write_policy: str = "invalidate",
        update_value_max_bytes: int = 8192,
        refetch_after_write: bool | None = None,
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
        if write_policy not in WRITE_POLICIES:
            raise ConfigurationError(
                f"write_policy must be one of {list(WRITE_POLICIES)}, got {write_policy!r:.80}"
            )
        if write_policy == "update" and mode is Mode.STRICT:
            raise ConfigurationError(
                "write_policy='update' is coherent mode's: strict mode always invalidates (an "
                "updated copy could be read before the write settles); use mode='coherent' or "
                "write_policy='invalidate'"
            )
        if (
            type(update_value_max_bytes) is not int
            or not 1 <= update_value_max_bytes <= UPDATE_VALUE_MAX_BYTES
        ):
            raise ConfigurationError(
                f"update_value_max_bytes must be an int from 1 to {UPDATE_VALUE_MAX_BYTES}, got "
                f"{update_value_max_bytes!r:.80}"
            )
        if refetch_after_write is None:
            refetch_after_write = write_policy == "update"
        if not isinstance(refetch_after_write, bool):
            raise ConfigurationError(
                "refetch_after_write must be True, False or None (None: on under "
                f"write_policy='update'), got {refetch_after_write!r:.80}"
            )
        if not callable(server_steps) or not callable(home_steps):
            raise ConfigurationError(
                "server_steps and home_steps must be callables building the step objects, got "
                f"{server_steps!r:.60} and {home_steps!r:.60}"
            )
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
        self.write_policy: Final = write_policy
        self.refetch_after_write: Final = refetch_after_write
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
        self._home_steps: Final = home_steps
        self._server_steps: Final = server_steps
        self._subscription: Subscription | None = None
        self._started = False
        self._closing = False
        self._closed = False
        self._lifecycle = asyncio.Lock()
        self._driver: Final = AgentDriver(
            agent_id=self.agent_id,
            me=self._me,
            mode=mode,
            bus=bus,
            core=self.core,
            capacity=capacity,
            settings=DriverSettings(
                owner_lease_s=float(owner_lease_s),
                holder_ttl_s=float(holder_ttl_s),
                retry_delay_s=float(retry_delay_s),
                retry_delay_max_s=float(retry_delay_max_s),
                operation_timeout_s=float(operation_timeout_s),
                outbox_sweep_after_s=float(outbox_sweep_after_s),
                update_value_max_bytes=update_value_max_bytes if write_policy == "update" else 0,
                store_value_max_bytes=(
                    update_value_max_bytes
                    if write_policy == "invalidate" and mode is Mode.COHERENT
                    else 0
                ),
                refetch_after_write=refetch_after_write,
            ),
            on_fenced=on_fenced,
            require_open=self._require_started,
        )
        self._fill_lease_s: Final = float(fill_lease_s)
        self._holder_ttl_s: Final = float(holder_ttl_s)
        self._operation_timeout_s: Final = float(operation_timeout_s)

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
                command_slots=self.bus.command_slots,
                lease_ttl_s=self._fill_lease_s,
                holder_ttl_s=self._holder_ttl_s,
                value_size_max_bytes=home.value_size_max_bytes,
                on_moved=self.bus.home_moved,
                pubsub="sharded" if self.bus.sharded else "classic",
            )
            steps = self._server_steps(self._home_steps(home), directory, self.bus)
            try:
                self._subscription = await self.bus.subscribe(self.agent_id, self._driver.on_bus)
            except BaseException:
                if self._owns_home:
                    await home.aclose()
                raise
            self._driver.start(steps)
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
                async with asyncio.timeout(self._operation_timeout_s):
                    await self._driver.release_all()
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
        await self._driver.stop(ClosedResourceError(f"{self!r} was closed"))
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
        driver = self._driver
        c = driver.counts
        return CoherentL1Statistics(
            agent_id=self.agent_id,
            mode=self.mode.value,
            entries=len(driver.lru),
            hits=driver.hits,
            misses=c["misses"],
            fills_from_l2=c["fills_from_l2"],
            fills_from_home=c["fills_from_home"],
            fills_discarded_stale=c["fills_discarded_stale"],
            writes_l1=c["writes_l1"],
            writes_through=c["writes_through"],
            write_backs=c["write_backs"],
            invalidations_sent=c["invalidations_sent"],
            invalidations_received=c["invalidations_received"],
            updates_sent=c["updates_sent"],
            updates_received=c["updates_received"],
            recalls_sent=c["recalls_sent"],
            recalls_received=c["recalls_received"],
            acks_sent=c["acks_sent"],
            conflicts=c["conflicts"],
            fenced_writes=len(driver.fenced),
            evictions=c["evictions"],
            lease_lapses=c["lease_lapses"],
            floors_reset=c["floors_reset"],
            disconnects=c["disconnects"],
            resyncs=c["resyncs"],
            held_events=sum(len(s.held) for s in driver.keys.values()),
            io_retries=c["io_retries"],
            parked_keys=sum(s.parked for s in driver.keys.values()),
            refetches=c["refetches"],
        )

    def fenced_writes(self) -> list[FencedWrite]:
        """The owned writes the home refused (their lease lapsed first), oldest first."""
        return list(self._driver.fenced)

    async def read(self, key: str) -> TierEntry | None:
        """The key's current entry (value and home version), or None if it does not exist.

        A valid copy is returned at once; otherwise the protocol fills it (L2, else the home,
        recalling an owner first), so the answer is never older than an invalidation this
        agent has received, nor than its own writes.
        """
        return (await self.read_from(key))[0]

    async def read_from(self, key: str) -> tuple[TierEntry | None, int]:
        """`read`, and where the data came from: 0 this L1, 1 the L2 copy, 2 the home."""
        driver = self._driver
        hit = driver.cached(key)
        if hit is not None:
            version, value = hit
            return (None if value is ABSENT else TierEntry(unpack(value), version)), 0
        check_key(key)
        for _ in range(_READ_RESTARTS):
            driver.begin_read(key)
            action = await driver.operate(key, Event.READ, NO_PAYLOAD)
            if not (action is None and driver.restarted(key)):
                break  # else the entry restarted empty under this read: read again
        source = driver.source_of(key)
        if action is None or action.value is ABSENT:
            return None, source
        return TierEntry(unpack(action.value), action.version), source

    async def get(self, key: str, default: JSONValue = None) -> JSONValue:
        """The key's value (see `read`), or `default` if it does not exist."""
        hit = self._driver.cached(key)  # the hit path: no coroutine, no TierEntry
        if hit is not None:
            value = hit[1]
            if value is ABSENT:
                return default
            return value if type(value) in _SCALARS else unpack(value)
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
        self._driver.counts["writes_l1"] += 1
        action = await self._driver.operate(key, Event.WRITE_L1, Payload(value=pack(value)))
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
        self._driver.counts["writes_through"] += 1
        action = await self._driver.operate(key, Event.WRITE_THROUGH, Payload(value=pack(value)))
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
            return await self._driver.compare_and_swap_once(key, mine, expected)

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
            return await self._driver.compare_and_swap_once(key, new, expected)

        async def read() -> TierEntry | None:
            return await self.read(key)

        return await update_with_retries(
            fn, default, tries, swap_once=swap_once, read=read, backoff=self._driver.backoff
        )

    async def delete(self, key: str) -> bool:
        """Delete the key at the home (a new, absent version), invalidating every copy.

        Returns whether the key held a value.
        """
        check_key(key)
        action = await self._driver.operate(key, Event.WRITE_THROUGH, Payload(value=ABSENT))
        return action is not None and bool(action.existed)

    async def fill(self, key: str, entry: TierEntry) -> None:
        """A hierarchy promotion: nothing to do, a coherent L1 fills itself through the protocol
        (installing a copy without registering it would let it go stale)."""
        check_key(key)

    async def flush(self, key: str | None = None) -> None:
        """Write Modified data back to the home but keep ownership (M to E); all keys if None."""
        keys = [key] if key is not None else [k for k in self._driver.lru]
        for one in keys:
            check_key(one)
            if self.core.state(one) is L1State.M:
                await self._driver.operate(one, Event.FLUSH, NO_PAYLOAD)

    async def evict(self, key: str) -> None:
        """Give the entry up now: a Shared copy is dropped, an owned one written back."""
        check_key(key)
        await self._driver.release(key)

    async def clear(self) -> None:
        """Give up every entry (as `evict`); the shared tiers are untouched."""
        for key in list(self._driver.lru):
            await self._driver.release(key)
