"""`CoherenceBus`: the Redis pub/sub transport of the coherence protocol.

The bus delivers `InvalidateMessage`s and `RecallMessage`s to agent ids; who must receive a
message (the holders of a key, the owner to recall) is the directory's decision, not the bus's.
A message of kind K about key k to agent a travels on the channel
`sagemem-bus:{<namespace>}:<a>|<K's tag>|<k>` (`messages.channel_name`), so that Redis ACLs
can confine who may publish about which keys (`sagemem.grants`); agent a receives all of its
messages through one pattern subscription, `sagemem-bus:{<namespace>}:<a>|*`, and checks that
each message's channel names the kind and key the message carries (a message published on
another key's channel is dropped and counted as misaddressed). Each agent has one sequence
counter `sagemem-bus:{<namespace>}:<a>:seq`. Publishing runs one Lua script per call that, for
every target, INCRs the target's counter and PUBLISHes the message stamped with that number,
atomically, so the receiving listener can tell when a message went missing.

Pub/sub is at most once. The bus never hides a loss: its one listener task (owned by the bus,
started by `connect()`, cancelled and awaited by `aclose()`) reports `Missed` to a subscriber as
soon as it detects that messages may have been lost (the connection failed, a PING went
unanswered, the channel's sequence numbers skipped), reconnects with bounded exponential
backoff, resubscribes, reads each channel's counter to learn where the sequence stands, and
only then reports `Resynced`. A message that is not well formed is counted and dropped; a
handler that raises or overruns its time limit is counted and logged; neither stops the
listener. See docs/decisions/0003-bus-wire-format.md.

The subscriber side drives a raw redis-py connection (send a command, read a reply) instead of
`redis.asyncio.PubSub`, because `PubSub` reconnects and resubscribes by itself on a read error
and so can lose messages without telling anyone, which is the failure this module exists to
prevent.

With sharded pub/sub (`pubsub="sharded"`, or `"auto"` on a cluster) the channels keep their
names but are published with SPUBLISH, and since a shard subscription names one channel, an
agent receives messages only about the keys it follows (`follow`; `CoherentL1Tier` follows a
key before any step that can make it a holder or owner of it). Each agent also subscribes an
anchor, a shard channel named like its classic pattern that nobody publishes on, after its
followed channels: its confirmation says they are all live, and only then is the counter read.
A message about a key the agent does not follow reaches nobody and shows as a sequence gap at
the next message. A shard subscription that the server ends by itself (its node no longer
serves the slot) gives the link up, as MOVED does below.

On a Redis/Valkey Cluster (found from the server at `connect()`) both clients talk to the
primary serving the namespace's hash slot (the namespace is the hash tag of every key and
channel of it, `sagemem.keyspace`), where every script of the namespace runs and publishes.
When that node dies the link drops as above; a node that stays up but no longer serves the
slot answers MOVED, to a probe once per health-check interval or to a publish or directory
script (`home_moved`), and the link is given up the same way. Before reconnecting, the listener
asks the nodes it knows which one serves the slot now and moves both clients there.

This module must never let a redis exception escape: driver errors become `BusUnavailable`
(a `TierUnavailable`) with the driver's exception as the cause.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
from collections.abc import Iterable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Final, Self

import redis.asyncio as aioredis
from redis.asyncio.connection import AbstractConnection
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialWithJitterBackoff, NoBackoff
from redis.commands.core import AsyncScript
from redis.exceptions import MovedError, NoPermissionError, RedisError

from sagemem import endpoints, keyspace
from sagemem._driver_errors import refused_by_server, tier_unavailable
from sagemem._lifecycle import AsyncResource
from sagemem._renamed import UNSET, Unset, renamed
from sagemem.coherence.messages import (
    LUA_SEQUENCED,
    BusEvent,
    BusHandler,
    Delivered,
    InvalidateMessage,
    MalformedMessage,
    Message,
    Missed,
    MissedReason,
    RecallMessage,
    Resynced,
    UpdateMessage,
    channel_name,
    channel_suffix,
    check_agent_id,
    check_pubsub,
    decode,
    encode_unsequenced,
    subscription_pattern,
    uses_sharded_pubsub,
)
from sagemem.errors import (
    ClosedResourceError,
    ConfigurationError,
    SageMemError,
    TierUnavailable,
)
from sagemem.redis_topology import (
    Address,
    RedisTopology,
    cluster_map,
    key_hash_slot,
    topology_or_single_node,
)
from sagemem.spec.vocabulary import MessageKind
from sagemem.values import check_key, check_namespace

__all__ = ["BusStatistics", "BusUnavailable", "CoherenceBus", "Subscription"]

_logger = logging.getLogger("sagemem.coherence.bus")

_DRIVER_ERRORS: Final = (RedisError, OSError, TimeoutError)
_HINT: Final = (
    "check that the Redis server is running and that the URL (argument or SAGEMEM_REDIS_URL) "
    "points at it; `sagemem services status` shows the embedded servers"
)
_TIER: Final = "bus"
_SEQUENCE_SUFFIX: Final = ":seq"
# One script call publishes to at most this many targets (bounds the script's run time).
_TARGETS_PER_SCRIPT_MAX: Final = 256
# Messages that reach a channel between its SUBSCRIBE and the read of its counter are held
# (then delivered in order); past this many, they are dropped and the subscriber told so.
_HELD_MESSAGES_MAX: Final = 1024
# Baselines are read in one MGET once every pending SUBSCRIBE is confirmed, or sooner if this
# many channels wait or the oldest has waited this long.
_BASELINE_BATCH_MAX: Final = 64
_BASELINE_WAIT_MAX_S: Final = 0.05
_READ_WAIT_MAX_S: Final = 1.0
_READ_WAIT_MIN_S: Final = 0.01
_CLOSE_TIMEOUT_S: Final = 5.0
_MALFORMED_LOG_FIRST: Final = 10
_MALFORMED_LOG_EVERY: Final = 1000
_PING_TOKEN: Final = b"sagemem-bus-health"
# Channels named in one SSUBSCRIBE/SUNSUBSCRIBE/PSUBSCRIBE command.
_SUBSCRIBE_BATCH_MAX: Final = 512
# The kinds of message a follower of a key receives, each on its own channel (sharded pub/sub).
_FOLLOWED_KINDS: Final = (MessageKind.INVALIDATE, MessageKind.UPDATE, MessageKind.RECALL)

# KEYS[i]: target i's sequence counter. ARGV[1]: the message up to its seq (encode_unsequenced);
# ARGV[2]: the counters' time to live in ms; ARGV[3]: the publishing command, PUBLISH or
# SPUBLISH (sharded pub/sub); ARGV[3 + i]: target i's channel for this message.
# Returns the number of messages published; refuses (NOPERM) before changing anything when the
# caller's ACL does not allow the publication. The counter lives as long as its channel is used:
# a counter that expired restarts at 1, which the listener reports as a sequence gap (safe).
_PUBLISH_SCRIPT: Final = (
    LUA_SEQUENCED
    + """
local publish = ARGV[3]
if publish ~= 'PUBLISH' and publish ~= 'SPUBLISH' then
  return redis.error_reply('ERR the publishing command must be PUBLISH or SPUBLISH')
end
if #KEYS > 0 and redis.acl_check_cmd and not redis.acl_check_cmd(publish, ARGV[4], '') then
  return redis.error_reply('NOPERM this user may not publish this message')
end
local sent = 0
for i = 1, #KEYS do
  local seq = redis.call('INCR', KEYS[i])
  redis.call('PEXPIRE', KEYS[i], ARGV[2])
  redis.call(publish, ARGV[3 + i], sequenced(ARGV[1], seq))
  sent = sent + 1
end
return sent
"""
)


class BusUnavailable(TierUnavailable):
    """The bus's Redis server could not be reached or failed; the driver's error is the cause."""

    def __init__(self, message: str) -> None:
        super().__init__(message, tier=_TIER)


def _bus_unavailable(
    operation: str, error: BaseException, key: str | None = None
) -> BusUnavailable:
    # Reuse the tiers' wording (operation, key, driver error, hint) under the bus's own type.
    return BusUnavailable(str(tier_unavailable(_TIER, operation, error, hint=_HINT, key=key)))


@dataclass(frozen=True, slots=True)
class BusStatistics:
    """Counters since `connect()` (they survive reconnects), as returned by `statistics()`."""

    invalidations_sent: int
    recalls_sent: int
    invalidations_received: int
    recalls_received: int
    malformed_messages: int
    misaddressed_messages: int  # well formed, but sent on another key's or kind's channel
    handler_errors: int
    disconnects: int
    reconnects: int
    health_check_failures: int
    sequence_gaps: int
    subscriptions: int
    connected: bool
    updates_received: int = 0  # write-update messages (UpdateMessage)
    # On a Redis/Valkey Cluster: the node serving the namespace's hash slot, and how often the
    # bus moved to another one (a failover or a slot migration). None / 0 on a single server.
    cluster_node: str | None = None
    rehomes: int = 0
    # "classic" (PUBLISH, one pattern subscription per agent) or "sharded" (SPUBLISH, one
    # shard-channel subscription per key an agent follows); how many channels are followed.
    pubsub: str = "classic"
    followed_channels: int = 0


def _log_dropped(count: int, message: str, *args: object) -> None:
    """Log a dropped message: the first few, then one in `_MALFORMED_LOG_EVERY` (a hostile
    publisher must not flood the log)."""
    if count <= _MALFORMED_LOG_FIRST or count % _MALFORMED_LOG_EVERY == 0:
        _logger.warning(message, *args)


class _HealthCheckFailed(Exception):
    """The pub/sub connection did not answer a PING in time: treat it as dead."""


def _pool_address(pool: aioredis.ConnectionPool) -> Address | None:
    """The TCP address a pool's new connections go to (None for a unix socket)."""
    host, port = pool.connection_kwargs.get("host"), pool.connection_kwargs.get("port")
    if isinstance(host, str) and isinstance(port, int):
        return host, port
    return None


def _unique(addresses: Iterable[Address]) -> tuple[Address, ...]:
    return tuple(dict.fromkeys(addresses))


async def _repoint(pool: aioredis.ConnectionPool, address: Address) -> None:
    """Make every connection of `pool`, open or not, talk to `address` from its next connect
    on; open ones are disconnected (a command in flight on one fails and is reported)."""
    host, port = address
    pool.update_connection_kwargs(host=host, port=port)
    # redis-py keeps each connection's address on the connection: move them too.
    for name in ("_available_connections", "_in_use_connections"):
        for connection in list(getattr(pool, name, ())):
            if getattr(connection, "host", None) is not None:
                connection.host, connection.port = host, port
    with contextlib.suppress(*_DRIVER_ERRORS, RuntimeError):
        await pool.disconnect(inuse_connections=True)


def _check_seconds(name: str, value: object) -> float:
    if type(value) not in (int, float) or not isinstance(value, int | float):
        raise ConfigurationError(f"CoherenceBus {name} must be a number of seconds, got {value!r}")
    if not math.isfinite(value) or value <= 0:
        raise ConfigurationError(f"CoherenceBus {name} must be positive and finite, got {value!r}")
    return float(value)


@dataclass(eq=False)
class _Channel:
    """One subscriber's pattern subscription and where its sequence stands on the current
    connection."""

    agent_id: str
    name: bytes  # the subscription pattern `sagemem-bus:<ns>:<agent>|*`
    prefix: bytes  # the pattern without its `*`: what every channel of this agent starts with
    sequence_key: str
    handler: BusHandler
    # Set once the channel is subscribed on the current connection and its baseline is known.
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    requested_on: _Link | None = None
    expected_seq: int = 0  # the last sequence number accepted
    window_end: int | None = None  # messages with seq <= this predate the baseline read
    held: list[Message] = field(default_factory=list)
    overflowed: bool = False
    missed: bool = False  # a Missed was reported and its Resynced is still due
    awaiting_since: float = 0.0
    closed: bool = False
    # Sharded pub/sub only: the shard channels this agent follows (`CoherenceBus.follow`), in
    # the order followed; subscribed on every connection before the agent's anchor.
    follows: dict[bytes, None] = field(default_factory=dict)

    def reset(self) -> None:
        """Forget the connection: nothing is known about the sequence until a new baseline."""
        self.ready.clear()
        self.requested_on = None
        self.window_end = None
        self.held.clear()
        self.overflowed = False


class _Link:
    """One raw pub/sub connection: commands go out under a lock, replies come in to the listener.

    Only the listener reads; any task may send (SUBSCRIBE from `subscribe()`, PING from the
    listener). Sends are serialised so two commands never interleave on the socket.
    """

    def __init__(self, connection: AbstractConnection, command_timeout_s: float) -> None:
        self.connection = connection
        self._command_timeout_s = command_timeout_s
        self._send_lock = asyncio.Lock()
        self.outstanding: dict[bytes, int] = {}  # name -> (P|S)SUBSCRIBE replies still due
        self.unsubscribing: dict[bytes, int] = {}  # shard channel -> SUNSUBSCRIBE replies due
        # Sharded pub/sub: who waits for a channel's SSUBSCRIBE to be confirmed on this link.
        self.waiters: dict[bytes, list[asyncio.Future[None]]] = {}
        self.alive = True
        self.opened_at = asyncio.get_running_loop().time()
        self.last_frame_at = self.opened_at
        self.ping_deadline: float | None = None
        # Set (`home_moved`) when the link's node no longer serves the namespace's slot.
        self.moved: str | None = None

    async def send(self, *args: bytes | str) -> None:
        async with asyncio.timeout(self._command_timeout_s), self._send_lock:
            await self.connection.send_command(*args, check_health=False)

    async def subscribe(self, names: list[bytes], *, sharded: bool = False) -> None:
        """PSUBSCRIBE patterns, or (sharded) SSUBSCRIBE shard channels, in batches."""
        for name in names:  # counted before sending: the reply may be read at once
            self.outstanding[name] = self.outstanding.get(name, 0) + 1
        command = "SSUBSCRIBE" if sharded else "PSUBSCRIBE"
        for start in range(0, len(names), _SUBSCRIBE_BATCH_MAX):
            await self.send(command, *names[start : start + _SUBSCRIBE_BATCH_MAX])

    async def unsubscribe_shard(self, names: list[bytes]) -> None:
        for name in names:
            self.unsubscribing[name] = self.unsubscribing.get(name, 0) + 1
        for start in range(0, len(names), _SUBSCRIBE_BATCH_MAX):
            await self.send("SUNSUBSCRIBE", *names[start : start + _SUBSCRIBE_BATCH_MAX])

    def confirm(self, name: bytes) -> bool:
        """Count a (P|S)SUBSCRIBE reply; True when the name has no more replies due."""
        left = self.outstanding.get(name, 0) - 1
        if left > 0:
            self.outstanding[name] = left
            return False
        self.outstanding.pop(name, None)
        for waiter in self.waiters.pop(name, ()):
            if not waiter.done():
                waiter.set_result(None)
        return True

    def confirm_unsubscribe(self, name: bytes) -> bool:
        """Count a SUNSUBSCRIBE reply; False when none was due: the server dropped the
        subscription by itself (its node no longer serves the channel's slot)."""
        left = self.unsubscribing.get(name, 0)
        if left <= 0:
            return False
        if left > 1:
            self.unsubscribing[name] = left - 1
        else:
            del self.unsubscribing[name]
        return True

    def waiter(self, name: bytes) -> asyncio.Future[None]:
        """A future done when `name`'s SSUBSCRIBE replies are all in (or the link closes)."""
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if name in self.outstanding and self.alive:
            self.waiters.setdefault(name, []).append(waiter)
        else:
            waiter.set_result(None)
        return waiter

    def release_waiters(self) -> None:
        waiters, self.waiters = self.waiters, {}
        for pending in waiters.values():
            for waiter in pending:
                if not waiter.done():
                    waiter.set_result(None)

    async def read(self, timeout_s: float) -> object:
        """The next frame, or None when none arrived within `timeout_s`."""
        return await self.connection.read_response(timeout=timeout_s, disconnect_on_error=False)

    async def close(self) -> None:
        self.alive = False
        self.release_waiters()
        with contextlib.suppress(*_DRIVER_ERRORS, RuntimeError):
            async with asyncio.timeout(_CLOSE_TIMEOUT_S):
                await self.connection.disconnect(nowait=True)


class Subscription:
    """An agent's subscription to its messages; `aclose()` (idempotent) unsubscribes."""

    def __init__(self, bus: CoherenceBus, channel: _Channel) -> None:
        self._bus = bus
        self._channel = channel

    @property
    def agent_id(self) -> str:
        """The agent whose channel this is."""
        return self._channel.agent_id

    @property
    def channel(self) -> str:
        """The pub/sub pattern the agent's messages arrive on, `sagemem-bus:<ns>:<agent>|*`."""
        return self._channel.name.decode()

    @property
    def active(self) -> bool:
        """True while subscribed with a known sequence (False during a resubscription)."""
        return not self._channel.closed and self._channel.ready.is_set()

    def __repr__(self) -> str:
        state = "closed" if self._channel.closed else "active" if self.active else "resyncing"
        return f"Subscription(agent_id={self.agent_id!r}, {state})"

    async def follow(self, keys: Iterable[str]) -> None:
        """Receive this agent's messages about `keys` from now on (`CoherenceBus.follow`)."""
        await self._bus.follow(self.agent_id, keys)

    async def unfollow(self, keys: Iterable[str]) -> None:
        """Stop receiving this agent's messages about `keys` (`CoherenceBus.unfollow`)."""
        await self._bus.unfollow(self.agent_id, keys)

    async def aclose(self) -> None:
        """Unsubscribe; the handler receives nothing afterwards (idempotent)."""
        await self._bus._unsubscribe(self._channel)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()


class CoherenceBus(AsyncResource):
    """Redis pub/sub transport of invalidations and recalls, addressed to agent ids.

    `redis_url=None` takes `SAGEMEM_REDIS_URL`, else the embedded server, when `connect()` runs
    (`url=`, the
    design note's spelling, is accepted too; `connections_max=` is the deprecated old name of
    `pool_size_max=`, the publishing pool's bound). The bus owns two Redis clients, both created by
    `connect()` and closed by `aclose()`: a small pool for publishing (and reading sequence
    counters) and one dedicated pub/sub connection (replaced after a failure), plus the listener
    task that reads it. Several agents of one process share one bus: each `subscribe()`s its own
    agent id.

    Handlers run one at a time on the listener task, in the order events arrive, each bounded by
    `handler_timeout_s`; they must not await `subscribe()` (the listener is what completes it).
    Every wait is bounded: connecting (`connect_timeout_s`), each command (`command_timeout_s`),
    `subscribe()` (`subscribe_timeout_s`). The listener PINGs the pub/sub connection after
    `health_check_interval_s` of silence and declares it dead if no frame arrives within
    `health_check_timeout_s`; it reconnects after a delay growing from `reconnect_delay_min_s`
    to `reconnect_delay_max_s`.

    `pubsub` chooses the pub/sub flavour: "classic" (PUBLISH; each agent receives every
    message addressed to it through one pattern subscription), "sharded" (SPUBLISH; each agent
    receives messages only about the keys it follows, one shard channel per key and kind, see
    `follow`), or "auto" (the default: sharded on a Redis/Valkey Cluster, where classic
    messages travel to every node, classic on a single server). Every bus of a namespace must
    use the same flavour; `CoherentL1Tier` follows the keys it touches by itself.
    """

    def __init__(
        self,
        redis_url: str | None = None,
        *,
        namespace: str = "default",
        connect_timeout_s: float = 5.0,
        command_timeout_s: float = 5.0,
        subscribe_timeout_s: float = 10.0,
        handler_timeout_s: float = 5.0,
        health_check_interval_s: float = 1.0,
        health_check_timeout_s: float = 2.0,
        reconnect_delay_min_s: float = 0.05,
        reconnect_delay_max_s: float = 2.0,
        sequence_ttl_s: float = 7 * 24 * 3600.0,
        pool_size_max: int = 16,
        pubsub: str = "auto",
        url: str | Unset | None = UNSET,
        connections_max: int | Unset = UNSET,
    ) -> None:
        url = renamed("CoherenceBus", "redis_url", redis_url, None, "url", url, deprecated=False)
        connections_max = renamed(
            "CoherenceBus", "pool_size_max", pool_size_max, 16, "connections_max", connections_max
        )
        if url is not None and (type(url) is not str or not url):
            raise ConfigurationError(
                f"CoherenceBus redis_url must be a redis:// URL string or None, got {url!r}; None "
                "uses SAGEMEM_REDIS_URL or the embedded server"
            )
        self.namespace: Final = check_namespace(namespace)
        self._url_argument: Final = url
        self._pubsub_choice: Final = check_pubsub("CoherenceBus", pubsub)
        self._sharded = pubsub == "sharded"  # settled by connect() for "auto"
        self._connect_timeout_s: Final = _check_seconds("connect_timeout_s", connect_timeout_s)
        self._command_timeout_s: Final = _check_seconds("command_timeout_s", command_timeout_s)
        self._subscribe_timeout_s: Final = _check_seconds(
            "subscribe_timeout_s", subscribe_timeout_s
        )
        self._handler_timeout_s: Final = _check_seconds("handler_timeout_s", handler_timeout_s)
        self._health_interval_s: Final = _check_seconds(
            "health_check_interval_s", health_check_interval_s
        )
        self._health_timeout_s: Final = _check_seconds(
            "health_check_timeout_s", health_check_timeout_s
        )
        self._delay_min_s: Final = _check_seconds("reconnect_delay_min_s", reconnect_delay_min_s)
        self._delay_max_s: Final = max(
            self._delay_min_s, _check_seconds("reconnect_delay_max_s", reconnect_delay_max_s)
        )
        self._sequence_ttl_ms: Final = max(
            1, math.ceil(_check_seconds("sequence_ttl_s", sequence_ttl_s) * 1000)
        )
        if type(connections_max) is not int or connections_max < 1:
            raise ConfigurationError(
                f"CoherenceBus pool_size_max must be a positive int, got {connections_max!r}"
            )
        self._connections_max: Final = connections_max
        self._prefix: Final = keyspace.bus_prefix(self.namespace)
        self._prefix_bytes: Final = self._prefix.encode()

        self._lifecycle_lock = asyncio.Lock()
        self._client: aioredis.Redis | None = None
        self._publish_pool: aioredis.ConnectionPool | None = None
        # Bounds the commands in flight (so the pool never needs more connections) and their
        # wait for a turn; cheaper per call than redis-py's BlockingConnectionPool.
        self._slots = asyncio.Semaphore(connections_max)
        self._subscriber_pool: aioredis.ConnectionPool | None = None
        self._publish_script: AsyncScript | None = None
        self._task: asyncio.Task[None] | None = None
        self._link: _Link | None = None
        self._channels: dict[bytes, _Channel] = {}
        self._awaiting_baseline: dict[bytes, _Channel] = {}
        # On a cluster: the namespace's hash slot (every key and channel of the namespace has
        # the namespace as its hash tag), the node serving it (both clients talk to it only),
        # and every node the last slot map named (asked, in turn, after a failover).
        self._slot: Final = key_hash_slot(self._prefix)
        self._home: Address | None = None
        self._cluster_nodes: tuple[Address, ...] = ()
        self._probe: asyncio.Task[None] | None = None
        self._zero_statistics()

    def _zero_statistics(self) -> None:
        self._rehomes = 0
        self._invalidations_sent = 0
        self._recalls_sent = 0
        self._invalidations_received = 0
        self._recalls_received = 0
        self._updates_received = 0
        self._last_failure = ""
        self._malformed = 0
        self._misaddressed = 0
        self._handler_errors = 0
        self._disconnects = 0
        self._reconnects = 0
        self._health_failures = 0
        self._gaps = 0

    def __repr__(self) -> str:
        state = "connected" if self._task is not None else "not connected"
        return f"CoherenceBus(namespace={self.namespace!r}, {state})"

    # -- names --------------------------------------------------------------------------------

    def channel_for(self, agent_id: str, kind: MessageKind, key: str) -> str:
        """The pub/sub channel on which `agent_id` receives messages of `kind` about `key`."""
        return channel_name(self.namespace, check_agent_id(agent_id), kind, check_key(key))

    def pattern_for(self, agent_id: str) -> str:
        """The pattern through which `agent_id` receives all of its messages."""
        return subscription_pattern(self.namespace, check_agent_id(agent_id))

    def sequence_key_for(self, agent_id: str) -> str:
        """The Redis key counting the messages published to `agent_id`."""
        return self._prefix + check_agent_id(agent_id) + _SEQUENCE_SUFFIX

    # -- lifecycle ----------------------------------------------------------------------------

    async def connect(self) -> None:
        """Resolve the URL, open both clients, check the server answers, start the listener.

        Idempotent; raises `BusUnavailable` if the server cannot be reached.
        """
        async with self._lifecycle_lock:
            if self._task is not None:
                return
            url = self._url_argument
            if url is None:
                url = await endpoints.resolve("redis")
            try:
                publish_pool = aioredis.ConnectionPool.from_url(
                    url,
                    max_connections=self._connections_max,
                    socket_connect_timeout=self._connect_timeout_s,
                    socket_timeout=self._command_timeout_s,
                    retry=Retry(ExponentialWithJitterBackoff(base=0.01, cap=0.2), retries=2),
                )
                # No retries on the subscriber: a failure must surface so that it is reported.
                subscriber_pool = aioredis.ConnectionPool.from_url(
                    url,
                    socket_connect_timeout=self._connect_timeout_s,
                    socket_timeout=self._command_timeout_s,
                    retry=Retry(NoBackoff(), 0),
                    client_name=f"sagemem-bus-{self.namespace}",
                )
                # RESP2 on the subscriber, whatever the URL says: in RESP3 redis-py hands
                # pub/sub pushes to a callback instead of returning them from read_response.
                subscriber_pool.connection_kwargs["protocol"] = 2
            except (ValueError, TypeError) as error:
                raise ConfigurationError(
                    f"CoherenceBus url {endpoints.redacted_url(url)!r} is not a valid Redis URL "
                    f"({error}); use redis://host:port/db or unix:///path/to/socket"
                ) from error
            client = aioredis.Redis(connection_pool=publish_pool)
            link: _Link | None = None
            try:
                async with asyncio.timeout(self._connect_timeout_s + self._command_timeout_s):
                    await client.ping()
                topology = await topology_or_single_node(client)
                self._home, self._cluster_nodes = None, ()
                self._sharded = uses_sharded_pubsub(
                    self._pubsub_choice, on_cluster=topology is RedisTopology.CLUSTER
                )
                if topology is RedisTopology.CLUSTER:
                    slot_map = await cluster_map(client, self._slot)
                    seed = _pool_address(publish_pool)
                    self._cluster_nodes = _unique((*slot_map.nodes, *filter(None, [seed])))
                    self._home = slot_map.primary
                    for pool in (publish_pool, subscriber_pool):
                        await _repoint(pool, slot_map.primary)
                self._subscriber_pool = subscriber_pool
                link = await self._open_link()
            except _DRIVER_ERRORS as error:
                self._subscriber_pool = None
                await self._close_clients(client, publish_pool, subscriber_pool)
                raise _bus_unavailable("connect", error) from error
            except BaseException:
                self._subscriber_pool = None
                await self._close_clients(client, publish_pool, subscriber_pool)
                raise
            self._zero_statistics()
            self._client = client
            self._publish_pool = publish_pool
            self._publish_script = client.register_script(_PUBLISH_SCRIPT)
            self._task = asyncio.create_task(
                self._supervise(link), name=f"sagemem-bus-listener-{self.namespace}"
            )

    async def aclose(self) -> None:
        """Stop the listener, end every subscription, close both clients (idempotent)."""
        async with self._lifecycle_lock:
            task, self._task = self._task, None
            # A handler may close the bus: then the listener is the current task, and it is
            # cancelled last, so that this cleanup runs to the end first.
            from_listener = task is not None and task is asyncio.current_task()
            if task is not None and not from_listener:
                task.cancel()
                _, pending = await asyncio.wait([task], timeout=_CLOSE_TIMEOUT_S)
                if pending:
                    _logger.error("bus %s: listener did not stop in time", self.namespace)
            for channel in self._channels.values():
                channel.closed = True
                channel.ready.set()  # wakes a subscribe() still waiting: it sees `closed`
            self._channels.clear()
            self._awaiting_baseline.clear()
            link, self._link = self._link, None
            if link is not None:
                await link.close()
            client, self._client = self._client, None
            pool, self._publish_pool = self._publish_pool, None
            subscriber_pool, self._subscriber_pool = self._subscriber_pool, None
            self._publish_script = None
            if client is not None and pool is not None and subscriber_pool is not None:
                await self._close_clients(client, pool, subscriber_pool)
            if task is not None and from_listener:
                task.cancel()

    async def _close_clients(
        self,
        client: aioredis.Redis,
        publish_pool: aioredis.ConnectionPool,
        subscriber_pool: aioredis.ConnectionPool,
    ) -> None:
        # Closing must release the sockets even when the server is gone.
        try:
            async with asyncio.timeout(_CLOSE_TIMEOUT_S):
                await client.aclose()
                await publish_pool.aclose()
                await subscriber_pool.aclose()
        except (*_DRIVER_ERRORS, RuntimeError):
            with contextlib.suppress(*_DRIVER_ERRORS, RuntimeError):
                await publish_pool.disconnect(inuse_connections=True)

    def _require_connected(self) -> aioredis.Redis:
        if self._client is None or self._task is None:
            raise ClosedResourceError(
                "CoherenceBus is not connected: call `await bus.connect()` first (or use "
                "`async with bus:`); a bus is also disconnected after `aclose()`"
            )
        return self._client

    @property
    def client(self) -> aioredis.Redis:
        """The bus's publishing client, for the namespace's `RedisDirectory` to borrow (it is
        closed by the bus's `aclose()`). Raises `ClosedResourceError` when not connected."""
        return self._require_connected()

    @property
    def on_cluster(self) -> bool:
        """Whether the bus talks to a Redis/Valkey Cluster (the node serving the namespace's
        hash slot); False before `connect()`."""
        return self._home is not None

    @property
    def sharded(self) -> bool:
        """Whether the bus uses sharded pub/sub (SPUBLISH/SSUBSCRIBE): `pubsub="sharded"`, or
        `"auto"` on a cluster (settled by `connect()`)."""
        return self._sharded

    @property
    def publish_command(self) -> str:
        """The command every publisher of the namespace uses: "SPUBLISH" or "PUBLISH"."""
        return "SPUBLISH" if self._sharded else "PUBLISH"

    @property
    def command_slots(self) -> asyncio.Semaphore:
        """What bounds the commands in flight on `client` to its pool's connections: a
        borrower (the namespace's `RedisDirectory`) takes a slot per call, as the bus does."""
        return self._slots

    @property
    def connected(self) -> bool:
        """True between `connect()` and `aclose()`."""
        return self._client is not None and self._task is not None

    @property
    def link_trust_s(self) -> float:
        """How long after the last frame read from the pub/sub connection the link still counts
        as confirmed: twice `health_check_interval_s` (an idle healthy link answers a PING after
        each interval of silence). Every agent of a namespace must use the same setting."""
        return 2.0 * self._health_interval_s

    def link_heard_at(self) -> float | None:
        """When (`time.monotonic()`) the listener last read a frame from the current pub/sub
        connection, or None while there is none. A link the listener has not read from for
        longer than `link_trust_s` (a dead server, a stalled event loop) is not confirmed."""
        link = self._link
        if link is None or not link.alive:
            return None
        return link.last_frame_at

    def statistics(self) -> BusStatistics:
        """A snapshot of the bus's counters."""
        return BusStatistics(
            invalidations_sent=self._invalidations_sent,
            recalls_sent=self._recalls_sent,
            invalidations_received=self._invalidations_received,
            recalls_received=self._recalls_received,
            updates_received=self._updates_received,
            malformed_messages=self._malformed,
            misaddressed_messages=self._misaddressed,
            handler_errors=self._handler_errors,
            disconnects=self._disconnects,
            reconnects=self._reconnects,
            health_check_failures=self._health_failures,
            sequence_gaps=self._gaps,
            subscriptions=len(self._channels),
            connected=self._link is not None and self._link.alive,
            cluster_node=None if self._home is None else f"{self._home[0]}:{self._home[1]}",
            rehomes=self._rehomes,
            pubsub="sharded" if self._sharded else "classic",
            followed_channels=sum(len(c.follows) for c in self._channels.values()),
        )

    # -- publishing ---------------------------------------------------------------------------

    async def publish_invalidate(
        self, key: str, version: int, targets: Iterable[str], *, sender: str
    ) -> int:
        """Tell each target agent that `version` of `key` was committed; return messages sent.

        One round trip for up to 256 targets; duplicates in `targets` are sent once.
        """
        message = InvalidateMessage(self.namespace, check_key(key), version, sender)
        sent = await self._publish(message, targets)
        self._invalidations_sent += sent
        return sent

    async def publish_recall(
        self, key: str, targets: Iterable[str], *, sender: str, owner_epoch: int | None = None
    ) -> int:
        """Ask each target (the key's owner) to write the key back and release it."""
        message = RecallMessage(self.namespace, check_key(key), sender, owner_epoch)
        sent = await self._publish(message, targets)
        self._recalls_sent += sent
        return sent

    async def _publish(self, message: Message, targets: Iterable[str]) -> int:
        self._require_connected()
        script = self._publish_script
        if isinstance(targets, str | bytes):
            raise ConfigurationError(
                "targets must be an iterable of agent ids, got the single "
                f"{type(targets).__name__} {targets!r:.80}; wrap one agent id in a list"
            )
        unique = list(dict.fromkeys(check_agent_id(target) for target in targets))
        prefix = encode_unsequenced(message)
        suffix = channel_suffix(message.kind, message.key)
        sent = 0
        for start in range(0, len(unique), _TARGETS_PER_SCRIPT_MAX):
            batch = unique[start : start + _TARGETS_PER_SCRIPT_MAX]
            keys = [self.sequence_key_for(agent) for agent in batch]
            args: list[bytes | str | int] = [prefix, self._sequence_ttl_ms, self.publish_command]
            args.extend(self._prefix + agent + suffix for agent in batch)
            assert script is not None
            try:
                async with asyncio.timeout(self._command_timeout_s * 2), self._slots:
                    result = await script(keys=keys, args=args)
            except NoPermissionError as error:
                raise refused_by_server(
                    _TIER, f"publish {message.kind.value}", message.key, error
                ) from error
            except _DRIVER_ERRORS as error:
                if isinstance(error, MovedError):
                    self.home_moved(str(error))
                raise _bus_unavailable(
                    f"publish {message.kind.value}", error, message.key
                ) from error
            sent += int(result)
        return sent

    # -- subscribing --------------------------------------------------------------------------

    async def subscribe(
        self, agent_id: str, handler: BusHandler, *, keys: Iterable[str] = ()
    ) -> Subscription:
        """Deliver `agent_id`'s messages (and Missed/Resynced events) to `handler`.

        Returns once the channel is subscribed and its sequence is known, so every message
        published afterwards is delivered or reported missed. One subscription per agent id.
        With sharded pub/sub the agent receives messages only about the keys it follows:
        `keys` (followed from the start, before the sequence is read) and those given to
        `follow` later; classic pub/sub delivers every message to the agent and ignores `keys`
        (they are still checked). Raises `BusUnavailable` if that takes longer than
        `subscribe_timeout_s`.
        """
        self._require_connected()
        pattern = self.pattern_for(agent_id)
        name = pattern.encode()
        checked = self._checked_keys(keys)
        if not callable(handler):
            raise ConfigurationError(f"handler must be an async callable, got {handler!r:.80}")
        if name in self._channels:
            raise ConfigurationError(
                f"agent {agent_id!r} is already subscribed on this bus; close its "
                "Subscription first (one subscription per agent id)"
            )
        channel = _Channel(
            agent_id=agent_id,
            name=name,
            prefix=pattern[:-1].encode(),
            sequence_key=self.sequence_key_for(agent_id),
            handler=handler,
        )
        if self._sharded:
            channel.follows.update(dict.fromkeys(self._followed_names(channel, checked)))
        self._channels[name] = channel
        try:
            link = self._link
            if link is not None and link.alive:
                channel.requested_on = link
                with contextlib.suppress(*_DRIVER_ERRORS):
                    # A failed send fails the link too: the listener then resubscribes all.
                    # Sharded: the pattern's text is the agent's anchor, a shard channel nobody
                    # publishes on, subscribed after the followed ones: its confirmation says
                    # they are all live (replies come in order).
                    await link.subscribe([*channel.follows, name], sharded=self._sharded)
            async with asyncio.timeout(self._subscribe_timeout_s):
                await channel.ready.wait()
        except TimeoutError as error:
            await self._unsubscribe(channel)
            last = f"; the last one: {self._last_failure}" if self._last_failure else ""
            raise BusUnavailable(
                f"bus subscribe of agent {agent_id!r} was not confirmed within "
                f"{self._subscribe_timeout_s} s (disconnects so far: {self._disconnects}{last}); "
                + _HINT
                + " (a NoPermissionError means the credentials' grant does not cover the bus)"
            ) from error
        except BaseException:
            await self._unsubscribe(channel)
            raise
        if channel.closed:
            raise ClosedResourceError(
                f"CoherenceBus was closed while agent {agent_id!r} was subscribing"
            )
        return Subscription(self, channel)

    async def _unsubscribe(self, channel: _Channel) -> None:
        if channel.closed:
            return
        channel.closed = True
        if self._channels.get(channel.name) is channel:
            del self._channels[channel.name]
        self._awaiting_baseline.pop(channel.name, None)
        link = self._link
        if link is not None and link.alive and channel.requested_on is link:
            with contextlib.suppress(*_DRIVER_ERRORS):
                if self._sharded:
                    await link.unsubscribe_shard([*channel.follows, channel.name])
                else:
                    await link.send("PUNSUBSCRIBE", channel.name)
        channel.follows.clear()

    @staticmethod
    def _checked_keys(keys: Iterable[str]) -> list[str]:
        """Every key checked before anything changes."""
        if isinstance(keys, str | bytes):
            raise ConfigurationError(
                f"keys must be an iterable of keys, got the single {type(keys).__name__} "
                f"{keys!r:.80}; wrap one key in a list"
            )
        return [check_key(key) for key in keys]

    @staticmethod
    def _followed_names(channel: _Channel, keys: list[str]) -> list[bytes]:
        """The shard channels of `channel`'s agent about `keys`, one per kind of message."""
        return [
            channel.prefix + channel_suffix(kind, key)[1:].encode()
            for key in keys
            for kind in _FOLLOWED_KINDS
        ]

    async def follow(self, agent_id: str, keys: Iterable[str]) -> None:
        """Sharded pub/sub: let `agent_id` receive its messages about `keys` (invalidations,
        updates, recalls). Returns once the server has confirmed the new shard subscriptions,
        so every message published afterwards reaches the agent or is reported missed; a
        message to the agent about a key it does not follow is dropped by the server and shows
        as a sequence gap (Missed, then Resynced) when the next one arrives. Follow a key
        before the step that makes the agent a holder or owner of it. With classic pub/sub
        (a single server by default) every message reaches the agent anyway: nothing to do.

        Raises `ConfigurationError` when `agent_id` is not subscribed on this bus, and
        `BusUnavailable` when the server does not confirm within `subscribe_timeout_s`. While
        the connection is down the keys are recorded and subscribed by the reconnection (the
        agent is resynchronised then)."""
        self._require_connected()
        channel = self._channels.get(self.pattern_for(agent_id).encode())
        if channel is None or channel.closed:
            raise ConfigurationError(
                f"agent {agent_id!r} is not subscribed on this bus: `await bus.subscribe(...)` "
                "before following keys"
            )
        checked = self._checked_keys(keys)
        if not self._sharded:
            return
        names = self._followed_names(channel, checked)
        new = [name for name in names if name not in channel.follows]
        for name in new:
            channel.follows[name] = None
        link = self._link
        if link is None or not link.alive or channel.requested_on is not link:
            return  # the listener subscribes every followed channel when it (re)connects
        if new:
            with contextlib.suppress(*_DRIVER_ERRORS):
                # A failed send fails the link too: the listener then resubscribes all.
                await link.subscribe(new, sharded=True)
        waiters = [link.waiter(name) for name in dict.fromkeys(names) if name in link.outstanding]
        if not waiters:
            return
        try:
            async with asyncio.timeout(self._subscribe_timeout_s):
                await asyncio.gather(*waiters)
        except TimeoutError as error:
            raise BusUnavailable(
                f"bus: agent {agent_id!r}'s shard subscriptions were not confirmed within "
                f"{self._subscribe_timeout_s} s; " + _HINT
            ) from error

    async def unfollow(self, agent_id: str, keys: Iterable[str]) -> None:
        """Sharded pub/sub: stop `agent_id`'s subscriptions about `keys` (after the agent
        stopped being a holder or owner of them: a message it is still sent would be dropped
        and show as a sequence gap). Nothing to do with classic pub/sub, for keys not
        followed, or for an agent not subscribed."""
        checked = self._checked_keys(keys)
        channel = self._channels.get(self.pattern_for(agent_id).encode())
        if channel is None or not self._sharded:
            return
        names = self._followed_names(channel, checked)
        gone = [name for name in names if name in channel.follows]
        for name in gone:
            del channel.follows[name]
        link = self._link
        if gone and link is not None and link.alive and channel.requested_on is link:
            with contextlib.suppress(*_DRIVER_ERRORS):
                await link.unsubscribe_shard(gone)

    # -- the listener ---------------------------------------------------------------------------

    async def _open_link(self) -> _Link:
        pool = self._subscriber_pool
        assert pool is not None
        # redis-py leaves these two untyped; make_connection() returns the pool's class.
        connection: AbstractConnection = pool.make_connection()  # type: ignore[no-untyped-call]
        try:
            async with asyncio.timeout(self._connect_timeout_s + self._command_timeout_s):
                await connection.connect()  # type: ignore[no-untyped-call]  # see above
        except BaseException:
            with contextlib.suppress(*_DRIVER_ERRORS, RuntimeError):
                await connection.disconnect(nowait=True)
            raise
        return _Link(connection, self._command_timeout_s)

    def _reconnect_delay_s(self, failures: int) -> float:
        ceiling = min(self._delay_max_s, self._delay_min_s * 2.0 ** min(failures, 32))
        return ceiling * random.uniform(0.5, 1.0)

    async def _supervise(self, link: _Link | None) -> None:
        """The listener task: listen, and after any failure report it and reconnect, forever."""
        failures = 0
        try:
            while True:
                if link is None:
                    await asyncio.sleep(self._reconnect_delay_s(failures))
                    try:
                        if self._cluster_nodes:
                            await self._rehome_or_stay()
                        link = await self._open_link()
                    except _DRIVER_ERRORS as error:
                        failures += 1
                        _logger.warning(
                            "bus %s: reconnect attempt %d failed: %s",
                            self.namespace,
                            failures,
                            error,
                        )
                        continue
                    self._reconnects += 1
                reason, detail = MissedReason.DISCONNECTED, "the listener failed"
                try:
                    await self._listen(link)
                except _HealthCheckFailed as error:
                    self._health_failures += 1
                    reason, detail = MissedReason.HEALTH_CHECK_FAILED, str(error)
                except _DRIVER_ERRORS as error:
                    detail = f"{type(error).__name__}: {error}"
                except Exception as error:  # a bug must not end invalidation: report, reconnect
                    _logger.exception("bus %s: listener error; reconnecting", self.namespace)
                    detail = f"listener error {type(error).__name__}: {error}"
                # A link that lived a while resets the backoff; one that dies at once grows it.
                lived_s = asyncio.get_running_loop().time() - link.opened_at
                failures = 0 if lived_s > self._delay_max_s else failures + 1
                lost, link = link, None
                await self._lose_link(lost, reason, detail)
        finally:
            if link is not None:
                await link.close()
            if self._link is not None:
                await self._link.close()
                self._link = None

    async def _lose_link(self, link: _Link, reason: MissedReason, detail: str) -> None:
        """Report the loss to every subscriber that was in sync, then forget the connection."""
        self._disconnects += 1
        self._last_failure = detail
        self._link = None
        self._awaiting_baseline.clear()
        await link.close()
        _logger.warning("bus %s: pub/sub connection lost (%s): %s", self.namespace, reason, detail)
        for channel in list(self._channels.values()):
            was_ready = channel.ready.is_set()
            channel.reset()
            if was_ready and not channel.missed:
                channel.missed = True
                await self._dispatch(channel, Missed(reason, detail))

    async def _listen(self, link: _Link) -> None:
        """Subscribe every channel on `link`, then read and handle frames until it fails."""
        self._link = link
        # No await between publishing the link and the snapshot: a subscribe() that runs later
        # sees the link and sends its own SUBSCRIBE.
        channels = list(self._channels.values())
        for channel in channels:
            channel.requested_on = link
        if channels:
            # Sharded: each agent's followed channels before its anchor, whose confirmation
            # (replies come in order) then says all of them are live.
            names = [
                name
                for channel in channels
                for name in (*channel.follows, channel.name)
                if self._sharded or name == channel.name
            ]
            await link.subscribe(names, sharded=self._sharded)
        loop = asyncio.get_running_loop()
        link.last_frame_at = loop.time()
        probe_at = link.last_frame_at + self._health_interval_s
        try:
            while True:
                now = loop.time()
                if self._cluster_nodes and now >= probe_at:
                    probe_at = now + self._health_interval_s
                    if self._probe is None or self._probe.done():
                        self._probe = asyncio.create_task(self._probe_home(link))
                if link.moved is not None:
                    raise _HealthCheckFailed(
                        "the node no longer serves the namespace's hash slot (a failover or a "
                        f"slot migration): {link.moved}"
                    )
                await self._listen_once(link, loop)
        finally:
            probe, self._probe = self._probe, None
            if probe is not None and not probe.done():
                probe.cancel()

    async def _listen_once(self, link: _Link, loop: asyncio.AbstractEventLoop) -> None:
        """Wait for one frame (PINGing after a silence) and handle it."""
        now = loop.time()
        wait_s = await self._check_health(link, now)
        if self._awaiting_baseline:
            wait_s = min(wait_s, _BASELINE_WAIT_MAX_S)
        frame = await link.read(max(_READ_WAIT_MIN_S, min(wait_s, _READ_WAIT_MAX_S)))
        now = loop.time()
        if frame is None and link.ping_deadline is not None and now >= link.ping_deadline:
            # Judged only after a read found nothing: a stalled event loop whose answer
            # already waits in the socket must not be mistaken for a dead connection.
            raise _HealthCheckFailed(f"no answer to PING within {self._health_timeout_s} s")
        if frame is not None:
            link.last_frame_at = now
            if link.ping_deadline is not None:  # frames still flow: the link is alive
                link.ping_deadline = max(link.ping_deadline, now + self._health_timeout_s)
            await self._handle_frame(link, frame, now)
        if self._awaiting_baseline and (
            not link.outstanding
            or len(self._awaiting_baseline) >= _BASELINE_BATCH_MAX
            or now - min(c.awaiting_since for c in self._awaiting_baseline.values())
            >= _BASELINE_WAIT_MAX_S
        ):
            await self._fetch_baselines(link)

    def home_moved(self, detail: str) -> None:
        """Say that the node the clients talk to answered MOVED (it no longer serves the
        namespace's slot): the listener gives its link up at once (every subscriber
        resynchronises) and finds the slot's node before reconnecting. What the probe does
        once per health-check interval; the directory calls it when a script meets MOVED."""
        link = self._link
        if link is not None and link.moved is None:
            link.moved = detail
            link.alive = False

    async def _rehome_or_stay(self) -> None:
        """`_rehome`, or, when no node says where the slot is, a warning and the node the
        clients already talk to (connecting to it then fails, or works, as it may)."""
        try:
            await self._rehome()
        except (*_DRIVER_ERRORS, SageMemError) as error:
            _logger.warning(
                "bus %s: cannot locate hash slot %d on the cluster: %s",
                self.namespace,
                self._slot,
                error,
            )

    async def _rehome(self) -> None:
        """On a cluster, before a reconnect: ask the nodes in turn which one serves the
        namespace's slot now, and point both clients at it. Raises the last node's error
        (`TierUnavailable`, or a driver error) when none answers."""
        publish_pool, subscriber_pool = self._publish_pool, self._subscriber_pool
        if publish_pool is None or subscriber_pool is None:
            return
        last: BaseException | None = None
        for address in _unique([*filter(None, [self._home]), *self._cluster_nodes]):
            kwargs = dict(publish_pool.connection_kwargs)
            kwargs.update(host=address[0], port=address[1], retry=Retry(NoBackoff(), 0))
            probe_pool = aioredis.ConnectionPool(
                connection_class=publish_pool.connection_class, max_connections=1, **kwargs
            )
            client = aioredis.Redis(connection_pool=probe_pool)
            try:
                async with asyncio.timeout(self._connect_timeout_s + self._command_timeout_s):
                    slot_map = await cluster_map(client, self._slot)
            except (*_DRIVER_ERRORS, TierUnavailable) as error:
                last = error
                continue
            finally:
                with contextlib.suppress(*_DRIVER_ERRORS, RuntimeError):
                    await client.aclose()
                    await probe_pool.aclose()
            self._cluster_nodes = _unique((*slot_map.nodes, *self._cluster_nodes))
            if slot_map.primary != self._home:
                _logger.warning(
                    "bus %s: hash slot %d is now served by %s:%d (was %s)",
                    self.namespace,
                    self._slot,
                    *slot_map.primary,
                    "unknown" if self._home is None else f"{self._home[0]}:{self._home[1]}",
                )
                self._home = slot_map.primary
                self._rehomes += 1
                for pool in (publish_pool, subscriber_pool):
                    await _repoint(pool, slot_map.primary)
            return
        assert last is not None
        raise last

    async def _probe_home(self, link: _Link) -> None:
        """On a cluster, once per health-check interval: does the node the clients talk to
        still serve the namespace's slot? A replica (an old primary demoted by a failover) or
        a node the slot migrated from answers MOVED: the link is then given up, so every
        subscriber resynchronises and the listener finds the slot's new node."""
        client = self._client
        if client is None:
            return
        try:
            async with asyncio.timeout(self._command_timeout_s), self._slots:
                await client.exists(keyspace.directory_birth_key(self.namespace))
        except MovedError as error:
            self.home_moved(str(error))  # `link_heard_at` stops confirming the link at once
        except (*_DRIVER_ERRORS, NoPermissionError):
            pass  # a dead node shows on the link itself; a grant may not read the key

    async def _check_health(self, link: _Link, now: float) -> float:
        """Send a PING after a silence. Returns how long to wait for the next frame."""
        if link.ping_deadline is not None:
            return link.ping_deadline - now
        idle_until = link.last_frame_at + self._health_interval_s
        if now >= idle_until:
            link.ping_deadline = now + self._health_timeout_s
            await link.send("PING", _PING_TOKEN)
            return self._health_timeout_s
        return idle_until - now

    async def _handle_frame(self, link: _Link, frame: object, now: float) -> None:
        if frame == b"PONG" or frame == _PING_TOKEN:  # PING's answer while nothing is subscribed
            link.ping_deadline = None
            return
        if type(frame) is not list or not frame:
            return  # nothing a RESP2 subscriber is sent; ignore rather than guess
        kind = frame[0]
        if kind == b"pmessage" and len(frame) == 4:
            await self._on_message(frame[1], frame[2], frame[3])
        elif kind == b"smessage" and len(frame) == 3:
            sent_on = frame[1]
            if type(sent_on) is bytes and sent_on.startswith(self._prefix_bytes):
                agent_end = sent_on.find(b"|", len(self._prefix_bytes))
                if agent_end > 0:
                    await self._on_message(sent_on[: agent_end + 1] + b"*", sent_on, frame[2])
        elif kind == b"sunsubscribe" and len(frame) == 3:
            name = frame[1]
            if type(name) is bytes and not link.confirm_unsubscribe(name) and link.moved is None:
                # Not asked for: the node dropped the subscription, because it no longer serves
                # the slot (a failover, a slot migration). The link is given up at once.
                link.moved = f"the server ended the shard subscription {name.decode()!r}"
                link.alive = False
        elif kind in (b"psubscribe", b"ssubscribe") and len(frame) == 3:
            name = frame[1]
            if type(name) is bytes and link.confirm(name):
                channel = self._channels.get(name)
                if channel is not None and channel.requested_on is link:
                    channel.awaiting_since = now
                    self._awaiting_baseline[name] = channel
        elif kind == b"pong":
            link.ping_deadline = None

    async def _fetch_baselines(self, link: _Link) -> None:
        """Read the counters of the newly subscribed channels; they are then in sync."""
        channels = list(self._awaiting_baseline.values())
        self._awaiting_baseline.clear()
        client = self._client
        assert client is not None
        async with asyncio.timeout(self._command_timeout_s * 2), self._slots:
            values = await client.mget([channel.sequence_key for channel in channels])
        for channel, value in zip(channels, values, strict=True):
            if channel.closed or channel.requested_on is not link:
                continue
            try:
                baseline = int(value) if value is not None else 0
            except ValueError:
                _logger.warning("bus: counter %s holds %r; using 0", channel.sequence_key, value)
                baseline = 0
            channel.expected_seq = baseline
            channel.window_end = baseline
            channel.ready.set()
            if channel.overflowed:
                channel.overflowed = False
                if not channel.missed:
                    channel.missed = True
                    await self._dispatch(
                        channel,
                        Missed(MissedReason.OVERFLOW, "too many messages during resubscription"),
                    )
            if channel.missed:
                channel.missed = False
                await self._dispatch(channel, Resynced())
            held, channel.held = channel.held, []
            for message in held:
                await self._accept(channel, message)

    async def _on_message(self, name: object, sent_on: object, data: object) -> None:
        channel = self._channels.get(name) if type(name) is bytes else None
        if channel is None:
            return  # a pattern unsubscribed a moment ago
        try:
            if type(data) is not bytes:
                raise MalformedMessage(f"message payload is a {type(data).__name__}")
            message = decode(data)
            if message.namespace != self.namespace:
                raise MalformedMessage(
                    f"message for namespace {message.namespace!r} on a channel of "
                    f"{self.namespace!r}"
                )
        except MalformedMessage as error:
            self._malformed += 1
            _log_dropped(
                self._malformed,
                "bus %s: dropped malformed message %d on %s: %s",
                self.namespace,
                self._malformed,
                channel.agent_id,
                error,
            )
            return
        if type(sent_on) is not bytes or sent_on != channel.prefix + (
            channel_suffix(message.kind, message.key)[1:].encode()
        ):
            # Published on a channel of another key or kind, which is what an agent allowed
            # to publish about some keys would do to forge a message about others: dropped
            # before its sequence number is looked at.
            self._misaddressed += 1
            _log_dropped(
                self._misaddressed,
                "bus %s: dropped %s message %d about key %r sent on channel %r",
                self.namespace,
                message.kind.value,
                self._misaddressed,
                message.key,
                sent_on,
            )
            return
        if not channel.ready.is_set():
            if len(channel.held) < _HELD_MESSAGES_MAX:
                channel.held.append(message)
            else:
                channel.held.clear()
                channel.overflowed = True
            return
        await self._accept(channel, message)

    async def _accept(self, channel: _Channel, message: Message) -> None:
        """Check the message's place in the channel's sequence, then deliver it."""
        seq = message.seq
        if seq == channel.expected_seq + 1:
            channel.expected_seq = seq
            channel.window_end = None
        elif channel.window_end is not None and seq <= channel.window_end:
            pass  # published between the SUBSCRIBE and the counter read: in order, not a gap
        else:
            self._gaps += 1
            detail = f"expected seq {channel.expected_seq + 1}, received {seq}"
            channel.expected_seq = seq
            channel.window_end = None
            await self._dispatch(channel, Missed(MissedReason.SEQUENCE_GAP, detail))
            await self._dispatch(channel, Resynced())
        if isinstance(message, InvalidateMessage):
            self._invalidations_received += 1
        elif isinstance(message, UpdateMessage):
            self._updates_received += 1
        else:
            self._recalls_received += 1
        await self._dispatch(channel, Delivered(message))

    async def _dispatch(self, channel: _Channel, event: BusEvent) -> None:
        """Run the handler on one event; its failure is counted and logged, never propagated."""
        if channel.closed:
            return
        try:
            async with asyncio.timeout(self._handler_timeout_s):
                await channel.handler(event)
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise  # the bus is closing
            self._count_handler_error(channel, event)
        except Exception:
            self._count_handler_error(channel, event)

    def _count_handler_error(self, channel: _Channel, event: BusEvent) -> None:
        self._handler_errors += 1
        _logger.exception(
            "bus %s: handler of agent %s failed on %s",
            self.namespace,
            channel.agent_id,
            type(event).__name__,
        )
