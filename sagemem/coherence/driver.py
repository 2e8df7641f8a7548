"""The I/O driver of one coherent agent: it performs what `AgentCore` returns, and decides nothing.

`AgentDriver` owns the agent's `AgentCore` (executing the spec's table), its per-key bookkeeping
(the actions queued by fired rows, held events, the copy's deadline, one driver task per key),
the LRU order of its cached entries and its counters. It performs every action and request
through one `ServerSteps` object (the home, the directory, recalls) and feeds the answer back as
the next event; what an answer means (which branch, which event, settled or not, a bogus floor,
a lapsed copy) is read by the pure functions of `sagemem.coherence.answers`:

- the core's `request` says what the entry waits for: the fill script (Redis, then the home),
  the fill data, the home's commit or ownership grant, the settling of a write (the outbox
  relay, and in strict mode the acknowledgements), the owner's backoff, a write-back or flush;
- one task per key performs, in order, the actions of the rows fired for that key and then the
  request, until the entry is stable; user operations wait for their answer (a RETURN_VALUE or
  ACK_WRITE action), bus messages are fed as they arrive, and an event the table says must
  wait (STALLED) is held and fed again after the entry moves;
- server I/O failures are retried with backoff while an operation waits; once nobody has
  waited for `operation_timeout_s` the key's task parks (resumed by the next event on the key);
- a step the servers refuse to the credentials in use stops the key (`ScopeViolationError`),
  and so does a transition the table refuses as impossible (`ProtocolError`).

`CoherentL1Tier` (sagemem.tiers.l1_coherent) is the public face: it validates arguments,
opens and closes the resources, and turns user calls into `operate(...)`.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import marshal
import math
import secrets
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Final, cast

from sagemem.coherence import answers
from sagemem.coherence.answers import COPY_STATES as _COPY_STATES
from sagemem.coherence.answers import OWNED_STATES as _OWNED_STATES
from sagemem.coherence.answers import StaleVerdict, TimeoutKind
from sagemem.coherence.bus import CoherenceBus
from sagemem.coherence.core import (
    ABSENT,
    NO_PAYLOAD,
    Action,
    AgentCore,
    Outcome,
    Payload,
    Step,
)
from sagemem.coherence.directory import NO_VALUE, NoValue
from sagemem.coherence.home import owner_agent
from sagemem.coherence.messages import (
    BusEvent,
    Delivered,
    InvalidateMessage,
    Missed,
    MissedReason,
    RecallMessage,
    Resynced,
    UpdateMessage,
)
from sagemem.coherence.steps import REDIS_RELAY_EFFECTS, ServerSteps
from sagemem.errors import (
    OutcomeUnknown,
    ProtocolError,
    SageMemError,
    ScopeViolationError,
    TierUnavailable,
    VersionConflict,
)
from sagemem.spec.model import Request
from sagemem.spec.table import Rule
from sagemem.spec.vocabulary import STABLE_STATES, Effect, Event, Guard, L1State, Mode
from sagemem.values import JSONValue

__all__ = ["RELAY_SENDER", "AgentDriver", "DriverSettings", "FencedWrite", "pack", "unpack"]

_logger = logging.getLogger("sagemem.coherence")

RELAY_SENDER: Final = "sagemem.relay"
"""The sender of invalidations relayed by a sweeper for a writer that died (not an agent id)."""

_SCALARS: Final = (str, int, float, bool, type(None))

# Keys with no copy and nothing in flight are forgotten after this long (see forget_idle).
FORGET_IDLE_S: Final = 30.0
# A retrying reader or writer sends the same recall (owner, epoch) at most this often.
_RECALL_REPEAT_S: Final = 0.05


class _Packed:
    """A container value kept as marshal bytes, so every read returns a fresh copy."""

    __slots__ = ("frozen",)

    def __init__(self, value: JSONValue) -> None:
        self.frozen = marshal.dumps(value)


def pack(value: JSONValue) -> JSONValue:
    """`value` as the core keeps it: scalars as they are, containers frozen (copied on read)."""
    if value is ABSENT or type(value) in _SCALARS:
        return value
    return cast(JSONValue, _Packed(value))


def unpack(value: JSONValue) -> JSONValue:
    """A fresh copy of a value the core keeps (see `pack`)."""
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
class DriverSettings:
    """The driver's clocks and bounds, in seconds (validated by `CoherentL1Tier`)."""

    owner_lease_s: float
    holder_ttl_s: float
    retry_delay_s: float
    retry_delay_max_s: float
    operation_timeout_s: float
    outbox_sweep_after_s: float
    # write-update (coherent mode): the encoded size up to which a write-through's relay sends
    # its value to the holders (OUTBOX_RELAY_UPDATE); 0 always invalidates (OUTBOX_RELAY)
    update_value_max_bytes: int = 0
    # the invalidating policy (coherent mode): the encoded size up to which this agent's own
    # relay of its write-through stores the value in L2 (OUTBOX_RELAY_STORE); 0 never does
    store_value_max_bytes: int = 0
    # fetch this agent's copy of a key again, in the background, after its write-through
    # returned (the write leaves it in I): its next read hits
    refetch_after_write: bool = False


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
    # A commit was sent and no answer has come back since (lost reply, server away).
    commit_unanswered: bool = False


def _holders_expire(core: AgentCore) -> bool:
    """Whether `core`'s HOLDER_EXPIRE row expires lapsed holders (DIRECTORY_EXPIRE_HOLDER)."""
    try:
        rule = core.shared_row(Event.HOLDER_EXPIRE, Guard.HOLDER_LEASE_LAPSED)
    except ProtocolError:
        return False
    return isinstance(rule, Rule) and Effect.DIRECTORY_EXPIRE_HOLDER in rule.effects


class AgentDriver:
    """Performs one agent's protocol: the core's actions and requests, bus events, maintenance.

    `require_open` raises if the owning tier is closed (called at the start of each operation).
    The bus is borrowed; `steps` are set by `start`.
    """

    def __init__(
        self,
        *,
        agent_id: str,
        me: str,
        mode: Mode,
        bus: CoherenceBus,
        core: AgentCore,
        capacity: int,
        settings: DriverSettings,
        on_fenced: Callable[[FencedWrite], None] | None,
        require_open: Callable[[], None],
    ) -> None:
        self.agent_id: Final = agent_id
        self.mode: Final = mode
        self.bus: Final = bus
        self.core: Final = core
        # Whether the table's HOLDER_EXPIRE row expires lapsed holders (and their owed acks):
        # the scripts drop lapsed registrations only then. The table is fixed: looked up once.
        self._holders_lapse: Final = _holders_expire(core)
        self.capacity: Final = capacity
        self._me: Final = me
        self._require_open: Final = require_open
        self._owner_lease_s: Final = settings.owner_lease_s
        self._holder_ttl_s: Final = settings.holder_ttl_s
        # Trust a copy a little less long than the directory keeps its registration.
        self._copy_life_s: Final = settings.holder_ttl_s * 0.9
        self._owner_life_s: Final = settings.owner_lease_s * 0.9
        self._retry_delay_s: Final = settings.retry_delay_s
        self._retry_delay_max_s: Final = max(settings.retry_delay_max_s, settings.retry_delay_s)
        self._operation_timeout_s: Final = settings.operation_timeout_s
        self._outbox_sweep_after_s: Final = settings.outbox_sweep_after_s
        self._update_value_max_bytes: Final = settings.update_value_max_bytes
        self._store_value_max_bytes: Final = settings.store_value_max_bytes
        self._refetch_after_write: Final = settings.refetch_after_write
        # How long L2 may keep answering a fill with data older than the agent's floor before
        # the floor is taken as bogus: the sweep's period twice, plus a second.
        self._stale_l2_limit_s: Final = 2 * settings.outbox_sweep_after_s + 1.0
        # How old the directory must be before a strict write settles on it: the holders'
        # link trust (same bus settings in a namespace), plus a margin for clock rates.
        self._directory_settled_s: Final = bus.link_trust_s * 1.1 + 0.1
        self._on_fenced = on_fenced
        self._steps: ServerSteps | None = None
        self._maintenance: asyncio.Task[None] | None = None
        self.keys: dict[str, _KeyState] = {}
        self.lru: OrderedDict[str, None] = OrderedDict()
        self._tasks: set[asyncio.Task[object]] = set()
        self._refetches: set[asyncio.Task[object]] = set()
        self._releasing = False  # closing: no new refetch may register this agent
        self.closed = False
        self._disconnected = False
        self.fenced: list[FencedWrite] = []
        self.hits = 0
        self.counts: dict[str, int] = dict.fromkeys(
            (
                "misses",
                "refetches",
                "fills_from_l2",
                "fills_from_home",
                "fills_discarded_stale",
                "writes_l1",
                "writes_through",
                "write_backs",
                "invalidations_sent",
                "invalidations_received",
                "updates_sent",
                "updates_received",
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

    # -- lifecycle ----------------------------------------------------------------------------

    def start(self, steps: ServerSteps) -> None:
        """Use `steps` for every server step and start the maintenance task."""
        self._steps = steps
        self._maintenance = asyncio.create_task(
            self._maintain(), name=f"sagemem-l1-{self.agent_id}-maintenance"
        )

    async def release_all(self) -> None:
        """The orderly part of closing: stop maintenance, give every entry up (owned ones are
        written back), wait for the key tasks, and leave the directory of every known key."""
        if self._maintenance is not None:
            self._maintenance.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._maintenance
        # A refetch not yet started would register this agent after it left the directory.
        self._releasing = True
        refetches = list(self._refetches)
        for task in refetches:
            task.cancel()
        await asyncio.gather(*refetches, return_exceptions=True)
        for key in list(self.lru):
            await self.release(key)
        for state in list(self.keys.values()):
            if state.driver is not None:
                await asyncio.wait({state.driver})
        # Registrations a fill in flight made, and acks owed for invalidations that arrive
        # from now on, would hold strict writers back until they lapse.
        assert self._steps is not None
        await self._steps.leave(list(self.keys), self.agent_id)

    async def stop(self, closed_error: BaseException) -> None:
        """Cancel every task and fail waiting operations with `closed_error`. Runs to the end
        even if the caller is cancelled meanwhile."""
        self.closed = True
        tasks = [t for t in self._tasks]
        tasks += [s.driver for s in self.keys.values() if s.driver is not None]
        if self._maintenance is not None:
            tasks.append(self._maintenance)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.shield(asyncio.wait(tasks))
        for state in self.keys.values():
            op = state.op
            if op is not None and not op.future.done():
                op.future.set_exception(closed_error)

    # -- the hit path -------------------------------------------------------------------------

    def cached(self, key: str) -> tuple[int, JSONValue] | None:
        """The entry's (version, packed value) if it may be served now without I/O, else None
        (counted as a hit when served)."""
        hit = self.core.hit(key)
        if hit is None:
            return None
        state = self.keys.get(key)
        if state is None:
            return None
        bus = self.bus  # `_trusted`'s check, one call less on every hit
        if not answers.trusted(
            self.mode,
            self.core.state(key),
            time.monotonic(),
            state.deadline,
            bus.link_heard_at,
            bus.link_trust_s,
        ):
            return None
        self.hits += 1
        self.lru.move_to_end(key)
        return hit

    def source_of(self, key: str) -> int:
        """Where the key's last fill found its data: 0 nowhere, 1 L2, 2 the home."""
        state = self.keys.get(key)
        return 0 if state is None else state.source

    def restarted(self, key: str) -> bool:
        """Whether the entry restarted empty (a bogus floor) during the last operation."""
        state = self.keys.get(key)
        return state is not None and state.reset

    def begin_read(self, key: str) -> None:
        """Forget where the previous read found its data and whether it restarted."""
        state = self._state(key)
        state.source = 0
        state.reset = False

    async def compare_and_swap_once(self, key: str, value: JSONValue, expected: int | None) -> int:
        self._require_open()
        core_entry = self.core.snapshot(key)
        check = answers.owner_compare(
            core_entry.state, core_entry.version, core_entry.value, expected
        )
        if check is not None and not check.matched:
            raise VersionConflict(key, expected=expected, actual=check.held)
        self.counts["writes_through"] += 1
        action = await self.operate(
            key, Event.WRITE_THROUGH, Payload(value=pack(value)), conditional=(expected,)
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
                        if answers.relay_before_conflict(pending, version):
                            assert pending is not None
                            await self._relay(key, pending, RELAY_SENDER)
                        elif not (await steps.settle_facts(key))[0]:
                            return
                        else:
                            await self._expire_holders(key)  # whose read lease lapsed
                    except TierUnavailable:  # a server is away: ask again, within the bound
                        self.counts["io_retries"] += 1
                    await self.backoff(attempt)
                    attempt += 1
        except TimeoutError:
            raise TierUnavailable(
                f"L1 {self.agent_id}: the conflicting version {version} of key {key!r} did not "
                f"settle within {self._operation_timeout_s} s; check the Redis and Postgres "
                "servers",
                tier="L1",
            ) from None

    async def _refetch(self, key: str) -> None:
        """Read `key` into this L1 after this agent's write-through returned (the table's READ
        from I), unless the entry is busy or valid again: a user operation on it fetches for
        itself."""
        await asyncio.sleep(0)  # let the write's caller run first
        state = self.keys.get(key)
        if self.closed or self._releasing or state is None or state.op is not None:
            return
        if self.core.state(key) is not L1State.I:
            return
        await self.operate(key, Event.READ, NO_PAYLOAD, refetch=True)

    async def release(self, key: str) -> None:
        if self.core.state(key) in _COPY_STATES:
            self.counts["evictions"] += 1
            await self.operate(key, Event.EVICT, NO_PAYLOAD)

    # -- operations ---------------------------------------------------------------------------

    async def operate(
        self,
        key: str,
        event: Event,
        payload: Payload,
        *,
        conditional: tuple[int | None] | None = None,
        refetch: bool = False,
    ) -> Action | None:
        """Start a user operation and wait for its answer (None for a no-op such as flushing
        a clean entry). `refetch`: a READ this driver starts itself after a write-through
        (counted as a refetch, not a miss)."""
        self._require_open()
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
                first = answers.first_event(known=key in self.core, disconnected=self._disconnected)
                if first is not None:
                    self._fire(key, first, NO_PAYLOAD)
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
                        self.counts["refetches" if refetch else "misses"] += 1
                    answer = await self._wait(key, state, op, deadline)
                    if (
                        event is Event.WRITE_THROUGH
                        and self._refetch_after_write
                        and answer is not None
                        and answer.effect is Effect.ACK_WRITE
                        and not self._releasing
                    ):
                        task = self._spawn(self._refetch(key), f"refetch of {key!r}")
                        self._refetches.add(task)
                        task.add_done_callback(self._refetches.discard)
                    return answer
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
            kind = answers.timeout_error(
                self.core.request(key), commit_unanswered=state.commit_unanswered
            )
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
        state = self.keys.get(key)
        if state is None:
            state = self.keys[key] = _KeyState()
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
            self.lru[key] = None
            self.lru.move_to_end(key)
            if len(self.lru) > self.capacity:
                self._evict_one()
        else:
            self.lru.pop(key, None)

    def _evict_one(self) -> None:
        for key in self.lru:
            state = self.keys.get(key)
            if state is not None and state.op is None and state.driver is None:
                self._spawn(self.release(key), f"evict {key}")
                return

    def _trusted(self, key: str, state: _KeyState, now: float) -> bool:
        """Whether the entry's copy or grant may be served now: before its deadline and, for a
        strict Shared copy, while the bus link it was registered over is confirmed (a frame
        read within `link_trust_s`). A strict holder that cannot confirm its link (the server
        restarted and forgot its registration, or this event loop stalled) may have missed an
        invalidation; a strict writer waits that long after the directory is born."""
        bus = self.bus
        return answers.trusted(
            self.mode,
            self.core.state(key),
            now,
            state.deadline,
            bus.link_heard_at,
            bus.link_trust_s,
        )

    def _expire_if_lapsed(self, key: str, state: _KeyState) -> None:
        """A copy or grant past its deadline (or a strict copy whose link is not confirmed):
        LEASE_LAPSE (E, M, strict S) or EVICT (S)."""
        event = answers.expiry_event(self.mode, self.core.state(key))
        if event is None or self._trusted(key, state, time.monotonic()):
            return
        self.counts["lease_lapses"] += 1
        self._fire(key, event, NO_PAYLOAD)

    def _kick(self, key: str, state: _KeyState) -> None:
        """Make sure the key's driver runs if it has actions to perform or a request open
        (unless it is parked: see `_drive`)."""
        if state.driver is not None or self.closed or state.broken is not None or state.parked:
            return
        if not state.actions and self.core.request(key) is Request.NONE:
            return
        state.driver = asyncio.get_running_loop().create_task(
            self._drive(key, state), name=f"sagemem-l1-{self.agent_id}-{key[:40]}"
        )

    def _spawn(
        self, coroutine: Coroutine[object, object, object], name: str
    ) -> asyncio.Task[object]:
        """Run `coroutine` in the background; a failure is logged (a SageMemError as a warning),
        never raised. The coroutine is the task's own, so cancelling a task that has not started
        yet closes it (no "never awaited" coroutine is left behind)."""
        task = asyncio.get_running_loop().create_task(coroutine, name=name)
        self._tasks.add(task)

        def finished(done: asyncio.Task[object]) -> None:
            self._tasks.discard(done)
            if done.cancelled():
                return
            error = done.exception()
            if isinstance(error, SageMemError):
                _logger.warning("L1 %s: %s failed: %s", self.agent_id, name, error)
            elif error is not None:
                _logger.error("L1 %s: %s failed", self.agent_id, name, exc_info=error)

        task.add_done_callback(finished)
        return task

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
                    request = self.core.request(key)
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
                    self.counts["io_retries"] += 1
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
                and self.core.request(key) is Request.NONE
            ):
                op.future.set_result(None)  # an operation without an answer (evict, flush)
            self._signal(state)
            if state.actions or (not self.closed and self.core.request(key) is not Request.NONE):
                self._kick(key, state)

    async def _wait_turn(self, state: _KeyState) -> None:
        """Back off before asking again (an owner, a settling write): 1, 2, 4... ms, capped."""
        await self.backoff(state.waits)
        state.waits += 1

    async def backoff(self, attempt: int) -> None:
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
                    payload = Payload(version=found.version, value=pack(found.value))
                step = self._fire(key, Event.FILL_DATA, payload)
                if step.fired and step.guard in (Guard.DATA_STALE, Guard.DATA_OLDER):
                    self.counts["fills_discarded_stale"] += 1
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
                value = unpack(entry.write_value)
                operation_id = entry.write_id
                assert operation_id is not None, "a write-through always carries its id"
                state.commit_unanswered = True  # until an answer arrives, the outcome is unknown
                if not self._row_performs(key, Event.HOME_COMMIT, Effect.HOME_COMMIT_VERSION):
                    answer = await steps.ownership(key, self._me)  # the row commits nothing
                elif entry.write_conditional:
                    answer = await steps.commit_if(
                        key, value, self._me, entry.write_expected, operation_id
                    )
                else:
                    answer = await steps.commit(key, value, self._me, operation_id)
                state.commit_unanswered = False
                state.owner_hint = answer.owner
                verdict = answers.commit_verdict(answer)
                if verdict.conflict:
                    self.counts["conflicts"] += 1
                if verdict.event is Event.HOME_CONFLICT:
                    state.conflict_row_version = answer.row_version
                await self._expire_owner(key, verdict.expire_owner)
                self._fire(key, verdict.event, verdict.payload)
            case Request.ACQUIRE:
                state.fill_sent = time.monotonic()
                if self._row_performs(key, Event.HOME_ACQUIRE, Effect.HOME_RESERVE_AND_GRANT):
                    answer = await steps.acquire(key, self._me, self._owner_lease_ms)
                else:
                    answer = await steps.ownership(key, self._me)  # the row grants nothing
                state.owner_hint = answer.owner
                verdict = answers.acquire_verdict(answer)
                if verdict.conflict:
                    self.counts["conflicts"] += 1
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
                event = Event.HOME_WRITE_BACK if request is Request.WRITE_BACK else Event.HOME_FLUSH
                # The statement is the one the row names for a held grant: store and release,
                # store and keep the grant, or (no store) only ask whether the grant is held.
                sent = time.monotonic()
                keep: int | None = None
                if self._row_performs(key, event, Effect.HOME_STORE_AND_RELEASE):
                    branch = await steps.write_back(
                        key, self._me, entry.owner_epoch, unpack(entry.value)
                    )
                elif self._row_performs(key, event, Effect.HOME_STORE_KEEP_GRANT):
                    keep = self._owner_lease_ms
                    branch = await steps.write_back(
                        key, self._me, entry.owner_epoch, unpack(entry.value), keep_ms=keep
                    )
                else:
                    branch = await steps.grant_held(key, self._me, entry.owner_epoch)
                self.counts["write_backs"] += 1
                if keep is not None and branch is Guard.GRANT_HELD:
                    state.deadline = max(state.deadline, sent + self._owner_life_s)
                self._fire(key, event, Payload(branch=branch))
            case _:
                raise AssertionError(f"unexpected request {request!r}")  # pragma: no cover

    def _row_performs(self, key: str, event: Event, effect: Effect) -> bool:
        """Whether the entry's row for `event` in its successful branch (NOT_OWNED_BY_OTHER,
        or GRANT_HELD) names the home statement `effect`: the statement is run only then."""
        branches = self.core.branches(key, event)
        success = branches.get(Guard.NOT_OWNED_BY_OTHER, branches.get(Guard.GRANT_HELD, ()))
        return effect in success

    @property
    def _owner_lease_ms(self) -> int:
        return max(1, math.ceil(self._owner_lease_s * 1000))

    def _reset_bogus_floor(self, key: str, state: _KeyState) -> None:
        """The home itself, with no owner, answered a version older than this agent's floor.
        Versions are committed at the home before any invalidation names them, so that floor
        came from an invalidation the protocol never sent (forged, or from another home): the
        entry's volatile state is dropped (its CRASH row: it restarts empty, as after a
        restart) and the read starts again, instead of refetching forever."""
        self.counts["floors_reset"] += 1
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
        # The script registers the agent where the entry's FILL_FETCH rows say so.
        branches = self.core.branches(key, Event.FILL_FETCH)
        miss = answers.miss_branch(self.mode)
        hit_effects = branches.get(Guard.FETCH_L2_HIT, ())
        miss_effects = branches.get(miss, ())
        on_hit = Effect.DIRECTORY_ADD_HOLDER in hit_effects
        on_miss = Effect.DIRECTORY_ADD_HOLDER in miss_effects
        state.fill_sent = time.monotonic()
        fill = await steps.fill(
            key,
            self.agent_id,
            strict=strict,
            register_on_hit=on_hit,
            register_on_miss=on_miss,
            holders_lapse=self._holders_lapse,
            read_on_hit=Effect.L2_READ in hit_effects,
            lease_on_miss=Effect.L2_TAKE_LEASE in miss_effects,
            directory_settled_s=self._directory_settled_s if strict else 0.0,
        )
        verdict = answers.fetch_verdict(self.mode, self._me, fill, None)
        if verdict.read_home:
            verdict = answers.fetch_verdict(self.mode, self._me, fill, await steps.home_read(key))
        branch = verdict.payload.branch if verdict.payload is not None else None
        if branch in (Guard.FETCH_L2_HIT, miss):
            attempted = fill.holder_added or not fill.registered
            wanted = Effect.DIRECTORY_ADD_HOLDER in branches.get(branch, ())
            if attempted is not wanted:
                raise ProtocolError(
                    f"FILL_FETCH of {key!r} [{branch.value}]: the fill script "
                    f"{'registered' if attempted else 'did not register'} the agent, the row "
                    f"{'has' if wanted else 'has no'} DIRECTORY_ADD_HOLDER"
                )
            effect, done = (
                (Effect.L2_READ, fill.entry is not None)
                if branch is Guard.FETCH_L2_HIT
                else (Effect.L2_TAKE_LEASE, fill.lease_token is not None)
            )
            if done is not (effect in branches.get(branch, ())):
                raise ProtocolError(
                    f"FILL_FETCH of {key!r} [{branch.value}]: the fill script "
                    f"{'performed' if done else 'did not perform'} {effect.name}, unlike the row"
                )
        state.unregistered = not verdict.registered
        if verdict.owner is not None:
            state.owner_hint = verdict.owner
        await self._expire_owner(key, verdict.expire_owner)
        if verdict.relay is not None:
            await self._relay(key, verdict.relay, RELAY_SENDER)
        payload = verdict.payload
        assert payload is not None
        if verdict.source == 1:
            self.counts["fills_from_l2"] += 1
        elif verdict.source == 2:
            self.counts["fills_from_home"] += 1
        state.source = verdict.source
        return dataclasses.replace(payload, value=pack(payload.value))

    async def _expire_owner(self, key: str, owner: str | None) -> None:
        """HOME_EXPIRE_OWNER of `owner` (a verdict's: its lease lapsed on the server's clock)."""
        steps = self._steps
        assert steps is not None
        if owner is None:
            return
        rule = self.core.shared_row(Event.HOME_EXPIRE_OWNER, Guard.OWNER_LEASE_LAPSED)
        if not isinstance(rule, Rule):
            return  # the table never expires an owner (a mutant)
        for effect in rule.effects:
            if effect is not Effect.HOME_REVOKE_GRANT:
                raise ProtocolError(
                    f"HOME_EXPIRE_OWNER's row names {effect.name}, which no server step performs"
                )
            if await steps.revoke(key, owner):
                _logger.info(
                    "L1 %s: revoked the lapsed grant of %s on %r", self.agent_id, owner, key
                )

    async def _expire_holders(self, key: str) -> None:
        """HOLDER_EXPIRE of every holder of `key` whose read lease lapsed, from its row."""
        steps = self._steps
        assert steps is not None
        rule = self.core.shared_row(Event.HOLDER_EXPIRE, Guard.HOLDER_LEASE_LAPSED)
        if not isinstance(rule, Rule):
            return  # the table never expires a holder (a mutant)
        for effect in rule.effects:
            if effect is not Effect.DIRECTORY_EXPIRE_HOLDER:
                raise ProtocolError(
                    f"HOLDER_EXPIRE's row names {effect.name}, which no server step performs"
                )
            await steps.expire_lapsed(key)

    async def _relay(
        self, key: str, version: int, sender: str, value: JSONValue | NoValue = NO_VALUE
    ) -> bool:
        """OUTBOX_RELAY of `version`, executed from its row: the row's effects are performed in
        its order (consecutive Redis effects in one atomic script, HOME_CLEAR_OUTBOX as the
        home's statement), and what the servers report they performed must be the row's list.
        With `value` (the value this agent's write-through committed as `version`, so
        VALUE_AT_HOME holds) the row is OUTBOX_RELAY_UPDATE's under write-update, whose updates
        carry it, else OUTBOX_RELAY_STORE's, which stores it in L2 and invalidates.

        Returns True if the outbox is empty afterwards as far as this relay knows."""
        steps = self._steps
        assert steps is not None
        if value is NO_VALUE:
            rule = self.core.shared_row(Event.OUTBOX_RELAY, Guard.ALWAYS)
        else:
            event = (
                Event.OUTBOX_RELAY_UPDATE
                if self._update_value_max_bytes
                else Event.OUTBOX_RELAY_STORE
            )
            rule = self.core.shared_row(event, Guard.VALUE_AT_HOME)
            if not isinstance(rule, Rule):  # no such row (strict mode, or a mutant)
                return await self._relay(key, version, sender)
        if not isinstance(rule, Rule):
            return False  # the table relays nothing (a mutant): the outbox stays
        performed: list[Effect] = []
        emptied = False
        redis_batch: list[Effect] = []

        async def run_redis_batch() -> bool:
            if not redis_batch:
                return True
            try:
                done, messaged = await steps.relay(
                    key,
                    version,
                    sender,
                    tuple(redis_batch),
                    holders_lapse=self._holders_lapse,
                    value=(
                        value
                        if Effect.PUBLISH_UPDATES in redis_batch
                        or Effect.L2_SET_IF_NEWER in redis_batch
                        else NO_VALUE
                    ),
                )
            except ScopeViolationError:
                if sender != RELAY_SENDER:
                    raise
                # Relaying another writer's invalidations of a key this agent may read but not
                # write: its grant does not allow publishing them (sagemem.grants), and nothing
                # was changed. The writer, or an agent allowed to write the key, relays them.
                _logger.info("L1 %s: not allowed to relay invalidations of %r", self.agent_id, key)
                return False
            performed.extend(done)
            redis_batch.clear()
            updating = Effect.PUBLISH_UPDATES in rule.effects
            sent = "updates_sent" if updating else "invalidations_sent"
            self.counts[sent] += len(messaged)
            if messaged:
                # Agents of this process may have just received the invalidation: let their
                # bus listener run before this writer's bookkeeping (the outbox), so a
                # co-located holder stops serving its copy sooner.
                await asyncio.sleep(0)
            return True

        for effect in rule.effects:
            if effect in REDIS_RELAY_EFFECTS:
                redis_batch.append(effect)
            elif effect is Effect.HOME_CLEAR_OUTBOX:
                if not await run_redis_batch():
                    return False
                emptied = await steps.clear_outbox(key, version)
                performed.append(effect)
            else:
                raise ProtocolError(
                    f"OUTBOX_RELAY's row names {effect.name}, which no server step performs"
                )
        if not await run_redis_batch():
            return False
        if tuple(performed) != rule.effects:
            raise ProtocolError(
                f"OUTBOX_RELAY of {key!r}: the servers performed "
                f"{[e.name for e in performed]}, the row says {[e.name for e in rule.effects]}"
            )
        return emptied

    def _relay_value(self, key: str) -> JSONValue | NoValue:
        """The value this agent's own relay of `key` carries: the value of its write-through
        in flight (WT_A: committed at the home, so VALUE_AT_HOME), if its JSON text is within
        the policy's bound (write-update: the updates carry it; invalidate: it is stored in
        L2); else NO_VALUE (the relay only invalidates). An ownership grant's relay (IM_A)
        carries no value: the value is at the owner."""
        limit = self._update_value_max_bytes or self._store_value_max_bytes
        if not limit or self.core.state(key) is not L1State.WT_A:
            return NO_VALUE
        written = self.core.snapshot(key).write_value
        if written is ABSENT:
            return NO_VALUE  # a delete: holders drop their copies, L2 stays empty
        value = unpack(written)
        size = len(json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode())
        return value if size <= limit else NO_VALUE

    async def _settle(self, key: str, state: _KeyState, version: int) -> Guard:
        """Relay this write's invalidations (once) and report PUBLISHED / ACKNOWLEDGED or not
        yet (WRITE_SETTLED's branch)."""
        steps = self._steps
        assert steps is not None
        empty = False
        if state.relayed < version:
            empty = await self._relay(key, version, self.agent_id, self._relay_value(key))
            state.relayed = version
        if not empty:
            pending = await steps.outbox(key)
            if pending is None:
                empty = True
            else:  # a newer commit's entry (its writer relays it too; relaying is idempotent)
                empty = await self._relay(key, pending, self.agent_id)
        if not answers.needs_ack_facts(self.mode, outbox_empty=empty):
            return answers.settle_guard(self.mode, outbox_empty=empty)
        owed, directory_age_s = await steps.settle_facts(key)
        if owed:
            await self._expire_holders(key)  # holders whose read lease lapsed owe nothing
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
                fenced = FencedWrite(key, action.version or 0, unpack(action.value))
                self.fenced.append(fenced)
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
                    self.counts["recalls_sent"] += 1
            case Effect.SEND_ACK:
                if await steps.ack(key, self.agent_id):
                    self.counts["acks_sent"] += 1
            case Effect.DIRECTORY_ADD_HOLDER:
                if not await steps.add_holder(
                    key, self.agent_id, holders_lapse=self._holders_lapse
                ):
                    state.deadline = 0.0  # not registered: the kept copy must not be served
            case Effect.DIRECTORY_REMOVE_HOLDER:
                await steps.remove_holder(key, self.agent_id)
            case Effect.L2_LEASED_FILL:
                if action.fill_lease is not None and action.value is not ABSENT:
                    assert action.version is not None
                    # The read returns without waiting for L2: the lease decides whether the
                    # copy may still be stored (a write meanwhile voids it, so storing it late
                    # is storing it before that write's relay deleted it).
                    self._spawn(
                        steps.leased_fill(
                            key,
                            self.agent_id,
                            action.fill_lease,
                            action.version,
                            unpack(action.value),
                        ),
                        f"leased L2 fill of {key[:40]!r}",
                    )
            case _:
                pass  # requests (the driver performs them next), waits, abandoned leases

    # -- the bus ------------------------------------------------------------------------------

    async def on_bus(self, event: BusEvent) -> None:
        """The bus handler: feed messages and connection events to the core (never blocks)."""
        match event:
            case Delivered(message=InvalidateMessage() as message):
                self.counts["invalidations_received"] += 1
                self._deliver(
                    message.key, Event.DELIVER_INVALIDATE, Payload(version=message.version)
                )
            case Delivered(message=UpdateMessage() as message):
                self.counts["updates_received"] += 1
                self._deliver(
                    message.key,
                    Event.DELIVER_UPDATE,
                    Payload(version=message.version, value=pack(cast(JSONValue, message.value))),
                )
            case Delivered(message=RecallMessage() as message):
                self.counts["recalls_received"] += 1
                self._deliver(
                    message.key, Event.DELIVER_RECALL, Payload(owner_epoch=message.owner_epoch)
                )
            case Missed(reason=reason):
                self.counts["disconnects"] += 1
                self._disconnected = True
                loss = answers.loss_event(reason is MissedReason.SEQUENCE_GAP)
                for key in self.core:
                    self._fire(key, loss, NO_PAYLOAD)
            case Resynced():
                self.counts["resyncs"] += 1
                self._disconnected = False
                for key in self.core:
                    self._deliver(key, Event.RESYNC, NO_PAYLOAD)

    def _deliver(self, key: str, event: Event, payload: Payload) -> None:
        """Feed an event that does not start an operation; hold it if the table says wait.

        An owned entry whose lease ran out by this agent's clock gets its LEASE_LAPSE first:
        the table assumes the owner notices its lapse before anything else happens to the
        entry (the home revokes only grants whose lease lapsed on the later server clock).
        """
        state = self.keys.get(key)
        if state is not None and answers.lapses_first(
            self.core.state(key), now=time.monotonic(), deadline=state.deadline
        ):
            self.counts["lease_lapses"] += 1
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
                for key in list(self.lru):
                    state = self.keys.get(key)
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
                    forgotten = self.forget_idle(now)
                    if forgotten:
                        assert self._steps is not None
                        await self._steps.forget(forgotten, self.agent_id)
            except SageMemError as error:
                _logger.warning("L1 %s: maintenance failed: %s", self.agent_id, error)

    def forget_idle(self, now: float) -> list[str]:
        """Drop what is kept for keys with no copy and nothing in flight, idle for a while, so
        an agent touching many keys does not grow without bound. Only the floor is lost: after
        `FORGET_IDLE_S` every invalidation the floor records has long been relayed (the
        relay deletes L2 first, and outboxes are swept every `outbox_sweep_after_s`), so no
        fill can return a version older than it. Returns the keys forgotten."""
        forgotten: list[str] = []
        for key in list(self.keys):
            state = self.keys[key]
            if (
                key in self.lru
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
            elif now - state.idle_since >= FORGET_IDLE_S and self.core.forget(key):
                del self.keys[key]
                forgotten.append(key)
        return forgotten

    async def _renew_grants(self) -> None:
        steps = self._steps
        assert steps is not None
        owned = [key for key in self.core if self.core.snapshot(key).owner_epoch is not None]
        if not owned:
            return
        sent = time.monotonic()
        still = await steps.renew(owned, self._me, self._owner_lease_ms)
        for key in still:
            state = self.keys.get(key)
            if state is not None and self.core.state(key) in _OWNED_STATES:
                state.deadline = max(state.deadline, sent + self._owner_life_s)

    async def _sweep_outboxes(self) -> None:
        steps = self._steps
        assert steps is not None
        after_ms = math.ceil(self._outbox_sweep_after_s * 1000)
        for key, version in await steps.stale_outboxes(after_ms):
            await self._relay(key, version, RELAY_SENDER)
