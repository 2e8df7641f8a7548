"""`RedisDirectory`: the Redis side of the coherence protocol (directory, L2 fill leases, relay).

Each method is one atomic script of `sagemem.coherence.redis_scripts` (or one command) and
performs exactly the effects of `sagemem.spec` it names, with the meaning `spec/model.py`
gives them. The directory never decides a transition: the sans-IO core looks the row up and
this adapter carries out its Redis effects and reports what happened.

Redis keys (`<ns>` the namespace, `<key>` the user's key):

- `sagemem:<ns>:<key>`: the L2 copy, `<version>;<json>`, exactly as `L2Tier` stores it, so
  L2 reads through `L2Tier` see what leased fills wrote.
- `sagemem-dir:<ns>:lease:<key>`: the key's one fill lease (a hash: token, agent), expiring
  after `lease_ttl_s`. Taking a lease replaces (voids) the previous one; deleting the L2 copy
  deletes it (memcache's leases: a fill whose lease was voided is refused, so L2 never goes
  back to a version older than one a writer already deleted, even after an eviction).
- `sagemem-dir:<ns>:holders:<key>`: the agents holding (or fetching) a copy, a sorted set
  scored by each registration's deadline (server clock, ms); the set expires with its latest
  deadline. At most `holders_max` live holders: past that a fill is not registered (and its
  data must be returned once, never cached).
- `sagemem-dir:<ns>:acks:<key>` (strict): the agents that owe an acknowledgement, scored by
  the deadline of the registration the invalidation was sent for; it expires likewise.
- `sagemem-bus:<ns>:<agent>|i|<key>` and `sagemem-bus:<ns>:<agent>:seq`: the bus's channels
  and sequence counters (`CoherenceBus`), through which invalidations are published in the
  bus's wire format.

Deadlines: a holder registration lives `holder_ttl_s` from the moment the fill script runs.
An agent must stop trusting a copy obtained through a registration (coherent: the entry's
maximum lifetime; strict: its read lease) no later than `holder_ttl_s` after it SENT the fill,
measured on its own clock: then a lapsed registration never hides a live copy from a writer.

This module must never let a redis exception escape: driver errors become
`DirectoryUnavailable` (a `TierUnavailable`) with the driver's exception as the cause.
"""

from __future__ import annotations

import asyncio
import math
import secrets
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Final, TypeVar

import redis.asyncio as aioredis
from redis.exceptions import MovedError, NoPermissionError, RedisError, ResponseError

from sagemem import keyspace, redis_topology
from sagemem._driver_errors import refused_by_server as _refused
from sagemem._driver_errors import tier_unavailable
from sagemem.coherence.answers import FillKind
from sagemem.coherence.messages import (
    INTEGER_MAX,
    InvalidateMessage,
    UpdateMessage,
    channel_name,
    channel_suffix,
    check_agent_id,
    check_pubsub,
    encode_unsequenced,
    uses_sharded_pubsub,
)
from sagemem.coherence.redis_scripts import (
    FILL_L2_HIT,
    FILL_LEASED,
    FILL_UNSETTLED,
    LEASED_FILL_APPLIED,
    LEASED_FILL_LEASE_VOID,
    LEASED_FILL_OCCUPIED,
    register_directory_scripts,
)
from sagemem.errors import (
    ConfigurationError,
    InvalidValueError,
    ScopeViolationError,
    TierUnavailable,
)
from sagemem.spec.vocabulary import MessageKind
from sagemem.values import (
    VALUE_SIZE_MAX_BYTES,
    JSONValue,
    TierEntry,
    check_key,
    check_namespace,
    decode_value,
    encode_value,
)

__all__ = [
    "NO_VALUE",
    "RELAY_L2_DELETE",
    "RELAY_L2_SET",
    "RELAY_PUBLISH",
    "RELAY_PUBLISH_AWAIT_ACKS",
    "RELAY_PUBLISH_UPDATES",
    "DirectoryStatistics",
    "DirectoryUnavailable",
    "FillKind",
    "FillStep",
    "NoValue",
    "RedisDirectory",
    "Relayed",
]

_T = TypeVar("_T")

_DRIVER_ERRORS: Final = (RedisError, OSError, TimeoutError)
_TIER: Final = "directory"
_HINT: Final = (
    "check that the Redis server is running and that the client given to RedisDirectory "
    "points at it; `sagemem services status` shows the embedded servers"
)
# How Redis words an ACL refusal of a command run inside a script (a plain ResponseError).
_ACL_FAILURE: Final = "ACL failure in script"
_L2_SEPARATOR: Final = b";"
_TOKEN_BYTES: Final = 16
_SEQUENCE_TTL_S: Final = 7 * 24 * 3600.0  # as CoherenceBus's default `sequence_ttl_s`
# Matches the bus's per-script target cap: one invalidation script publishes at most this many.
_HOLDERS_MAX_LIMIT: Final = 256


class DirectoryUnavailable(TierUnavailable):
    """The directory's Redis server could not be reached or failed; the driver's error is the
    cause (or an L2 entry is not in sagemem's format)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, tier=_TIER)


RELAY_L2_DELETE: Final = "D"
"""`RedisDirectory.relay` effect: L2_DELETE."""
RELAY_PUBLISH: Final = "P"
"""`RedisDirectory.relay` effect: PUBLISH_INVALIDATIONS."""
RELAY_PUBLISH_AWAIT_ACKS: Final = "A"
"""`RedisDirectory.relay` effect: PUBLISH_INVALIDATIONS_AWAIT_ACKS."""
RELAY_PUBLISH_UPDATES: Final = "U"
"""Relay effect letter: PUBLISH_UPDATES (write-update; the holders stay registered)."""
RELAY_L2_SET: Final = "S"
"""Relay effect letter: L2_SET_IF_NEWER (write-update: L2 holds the committed value, unless a
newer version of the key was already relayed)."""
_RELAY_EFFECTS: Final = frozenset(
    {RELAY_L2_DELETE, RELAY_PUBLISH, RELAY_PUBLISH_AWAIT_ACKS, RELAY_PUBLISH_UPDATES, RELAY_L2_SET}
)
_RELAYED_TTL_MS: Final = 24 * 3600 * 1000
"""How long a key's highest relayed version is remembered (`RedisDirectory.relayed_key`): a
write-through whose own relay comes later than this after a newer version's relay (a process
stalled for a day) could store its older value in L2 again."""


@dataclass(frozen=True, slots=True)
class Relayed:
    """What the relay script did: the effects it performed, in order, and whom it messaged."""

    performed: tuple[str, ...]
    messaged: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class FillStep:
    """The answer of `RedisDirectory.fill`.

    `registered` is False when the holder set was full: the data may be returned once but must
    not be cached (nobody would invalidate it); `holder_added` says the script performed
    DIRECTORY_ADD_HOLDER (False also when the entry's row did not ask for it). `acks_owed`
    counts the holders that still owe an acknowledgement (known on a miss; 0 on a hit).
    """

    kind: FillKind
    registered: bool
    entry: TierEntry | None = None
    lease_token: str | None = None
    acks_owed: int = 0
    holder_added: bool = False  # DIRECTORY_ADD_HOLDER was performed (False: refused or not asked)


@dataclass(frozen=True, slots=True)
class DirectoryStatistics:
    """Counters of one `RedisDirectory` since it was created (a plain snapshot)."""

    fills: int
    l2_hits: int
    leases_granted: int
    fills_unsettled: int
    registrations_refused: int
    leased_fills_applied: int
    leased_fills_refused: int
    relays: int
    invalidations_sent: int
    acks_received: int
    holders_removed: int
    holders_expired: int
    updates_sent: int = 0  # write-update messages published (one per holder messaged)


class NoValue:
    """No value given (a relay of invalidations): unlike None, which is a JSON value."""

    __slots__ = ()


NO_VALUE: Final = NoValue()


def _check_seconds(name: str, value: object) -> float:
    if type(value) not in (int, float) or not isinstance(value, int | float):
        raise ConfigurationError(
            f"RedisDirectory {name} must be a number of seconds, got {value!r}"
        )
    if not math.isfinite(value) or value <= 0:
        raise ConfigurationError(
            f"RedisDirectory {name} must be positive and finite, got {value!r}"
        )
    return float(value)


def _publish_command(pubsub: str, *, on_cluster: bool) -> str:
    return "SPUBLISH" if uses_sharded_pubsub(pubsub, on_cluster=on_cluster) else "PUBLISH"


def _ms(seconds: float) -> int:
    # Redis expiries are whole milliseconds; round up so a tiny TTL never becomes "no TTL".
    return max(1, math.ceil(seconds * 1000))


def _text(raw: object) -> str:
    """A reply element as text (the borrowed client may or may not decode responses)."""
    if isinstance(raw, bytes):
        return raw.decode()
    if isinstance(raw, str):
        return raw
    raise DirectoryUnavailable(f"directory script replied {raw!r:.80} where text was expected")


class RedisDirectory:
    """The coherence directory, the L2 fill leases and the outbox relay of one namespace.

    The directory BORROWS `client` (a `redis.asyncio.Redis` the caller owns and closes): it
    opens and closes nothing, so it has no `connect()`/`aclose()`, and the client must stay
    open while the directory is used. It must point at the same server as the namespace's
    `L2Tier` and `CoherenceBus`. Scripts are sent by EVALSHA (loaded on first use, reloaded
    after a server restart). Each call waits at most `command_timeout_s`.

    Bounds: `lease_ttl_s` (how long a filler may take between its L2 miss and its leased
    fill; a late fill is refused, which is safe), `holder_ttl_s` (how long a registration
    lasts, see the module docstring: the agent's copy must expire sooner), `holders_max`
    live holders per key (at most 256, the bus's per-script cap), `l2_ttl_s` (expiry of L2
    copies stored by leased fills: give the namespace's `L2Tier` ttl; None: none),
    `sequence_ttl_s` (the bus's sequence counters, as `CoherenceBus(sequence_ttl_s=...)`).
    `command_slots` bounds the calls in flight on the borrowed client, so that its pool never
    needs more connections than it may open (redis-py fails a call with "Too many
    connections" instead of waiting): pass the bus's `command_slots` when the client is the
    bus's; None makes one of the size of the client's pool. `on_moved` (the bus's
    `home_moved`) is told when the server answers MOVED (on a cluster, the node no longer
    serves the namespace's slot). `pubsub` is the namespace bus's pub/sub flavour, which the
    relay publishes with: "classic" (PUBLISH), "sharded" (SPUBLISH) or "auto" (the bus's
    default: sharded on a cluster, found from the server before the first relay).
    """

    def __init__(
        self,
        client: aioredis.Redis,
        namespace: str,
        *,
        lease_ttl_s: float = 10.0,
        holder_ttl_s: float = 60.0,
        holders_max: int = _HOLDERS_MAX_LIMIT,
        l2_ttl_s: float | None = None,
        sequence_ttl_s: float = _SEQUENCE_TTL_S,
        value_size_max_bytes: int = VALUE_SIZE_MAX_BYTES,
        command_timeout_s: float = 10.0,
        command_slots: asyncio.Semaphore | None = None,
        on_moved: Callable[[str], None] | None = None,
        pubsub: str = "auto",
    ) -> None:
        if not isinstance(client, aioredis.Redis):
            raise ConfigurationError(
                f"RedisDirectory needs a redis.asyncio.Redis client, got {client!r:.80}"
            )
        self.namespace: Final = check_namespace(namespace)
        self._lease_ttl_ms: Final = _ms(_check_seconds("lease_ttl_s", lease_ttl_s))
        self._holder_ttl_ms: Final = _ms(_check_seconds("holder_ttl_s", holder_ttl_s))
        if type(holders_max) is not int or not 1 <= holders_max <= _HOLDERS_MAX_LIMIT:
            raise ConfigurationError(
                f"RedisDirectory holders_max must be an int from 1 to {_HOLDERS_MAX_LIMIT}, "
                f"got {holders_max!r}"
            )
        self._holders_max: Final = holders_max
        self._l2_ttl_ms: Final = (
            0 if l2_ttl_s is None else _ms(_check_seconds("l2_ttl_s", l2_ttl_s))
        )
        self._sequence_ttl_ms: Final = _ms(_check_seconds("sequence_ttl_s", sequence_ttl_s))
        if type(value_size_max_bytes) is not int or value_size_max_bytes < 1:
            raise ConfigurationError(
                "RedisDirectory value_size_max_bytes must be a positive int, got "
                f"{value_size_max_bytes!r}"
            )
        self._value_size_max_bytes: Final = value_size_max_bytes
        self._command_timeout_s: Final = _check_seconds("command_timeout_s", command_timeout_s)
        self._client: Final = client
        if command_slots is None:
            pool_max = getattr(client.connection_pool, "max_connections", None)
            command_slots = asyncio.Semaphore(pool_max if isinstance(pool_max, int) else 16)
        elif not isinstance(command_slots, asyncio.Semaphore):
            raise ConfigurationError(
                "RedisDirectory command_slots must be an asyncio.Semaphore (the bus's "
                f"`command_slots`) or None, got {command_slots!r:.80}"
            )
        self._slots: Final = command_slots
        self._scripts: Final = register_directory_scripts(client)
        self._prefix: Final = keyspace.directory_prefix(self.namespace)
        self._on_moved: Final = on_moved
        self._pubsub: Final = check_pubsub("RedisDirectory", pubsub)
        self._publish_command: str | None = (
            None if pubsub == "auto" else _publish_command(pubsub, on_cluster=False)
        )
        # A script may touch only keys of its own slot on a cluster: the birth is then the
        # namespace's; one server keeps one birth for every namespace (the scripts pick).
        self._birth_key: Final = keyspace.directory_birth_key(self.namespace)
        self._l2_prefix: Final = keyspace.l2_prefix(self.namespace)  # L2Tier's own keys
        self._channel_prefix: Final = keyspace.bus_prefix(self.namespace)
        self._fills = 0
        self._l2_hits = 0
        self._leases_granted = 0
        self._fills_unsettled = 0
        self._registrations_refused = 0
        self._leased_fills_applied = 0
        self._leased_fills_refused = 0
        self._relays = 0
        self._invalidations_sent = 0
        self._updates_sent = 0
        self._acks_received = 0
        self._holders_removed = 0
        self._holders_expired = 0

    def __repr__(self) -> str:
        return f"RedisDirectory(namespace={self.namespace!r})"

    # -- names ------------------------------------------------------------------------------

    def l2_key(self, key: str) -> str:
        """The Redis key of `key`'s L2 copy (the same as `L2Tier.redis_key`)."""
        return self._l2_prefix + check_key(key)

    def lease_key(self, key: str) -> str:
        """The Redis key of `key`'s fill lease."""
        return f"{self._prefix}lease:{check_key(key)}"

    def holders_key(self, key: str) -> str:
        """The Redis key of `key`'s holder set."""
        return f"{self._prefix}holders:{check_key(key)}"

    def acks_key(self, key: str) -> str:
        """The Redis key of `key`'s owed acknowledgements (strict mode)."""
        return f"{self._prefix}acks:{check_key(key)}"

    def relayed_key(self, key: str) -> str:
        """The Redis key of the highest version of `key` any relay has relayed (every relay
        raises it): the write-update relay's L2_SET_IF_NEWER stores its value only if no newer
        version was relayed before it."""
        return f"{self._prefix}relayed:{check_key(key)}"

    def channel_for(self, agent_id: str, key: str) -> str:
        """The channel of `agent_id`'s invalidations of `key` (as `CoherenceBus.channel_for`)."""
        return channel_name(
            self.namespace, check_agent_id(agent_id), MessageKind.INVALIDATE, check_key(key)
        )

    # -- the protocol's Redis steps ---------------------------------------------------------

    async def fill(
        self,
        key: str,
        agent_id: str,
        *,
        strict: bool = False,
        register_on_hit: bool = True,
        register_on_miss: bool = True,
        holders_lapse: bool = True,
        read_on_hit: bool = True,
        lease_on_miss: bool = True,
        directory_settled_s: float = 0.0,
    ) -> FillStep:
        """The Redis half of FILL_FETCH: DIRECTORY_ADD_HOLDER, then L2_READ or L2_TAKE_LEASE.

        One atomic script. On an L2 hit the copy is returned; on a miss a fresh lease token is
        returned (the key's previous lease becomes void): read the home, then call
        `leased_fill` with it, or simply forget it (L2_ABANDON_LEASE: it expires in Redis).
        Registration happens before the home is asked whether an owner holds the key; a
        registration the protocol did not need costs at most one extra message. With
        `strict=True` a miss while some holder owes an ack returns `FillKind.UNSETTLED` and
        changes nothing (the home's outbox is the caller's check). `register_on_hit` and
        `register_on_miss` say whether the entry's FILL_FETCH rows (L2 hit; miss) have
        DIRECTORY_ADD_HOLDER: the script registers the agent only where they do.
        `holders_lapse` says whether the table's HOLDER_EXPIRE row expires lapsed holders: only
        then does the script drop lapsed registrations and owed acks before it counts them.
        `read_on_hit` and `lease_on_miss` say whether the L2-hit row has L2_READ and the miss
        row L2_TAKE_LEASE: without them the step carries no entry / no lease token. With
        `strict=True` and `directory_settled_s` > 0 the fill also returns
        `FillKind.UNSETTLED`, changing nothing, while the directory is younger than that
        (born after a server restart or a cluster failover, see `settle_facts`): a holder the
        directory forgot may still serve its copy, so no new version may be read yet.
        """
        if type(directory_settled_s) not in (int, float) or not 0 <= directory_settled_s < 1e6:
            raise ConfigurationError(
                "RedisDirectory.fill directory_settled_s must be seconds from 0 (no check) "
                f"up to 1e6, got {directory_settled_s!r}"
            )
        keys = self._keys(key)
        agent = check_agent_id(agent_id)
        token = secrets.token_hex(_TOKEN_BYTES)
        reply = await self._run(
            "fill",
            key,
            self._scripts.fill(
                keys=[*keys[1:4], self._birth_key],
                args=[
                    agent,
                    token,
                    self._lease_ttl_ms,
                    self._holder_ttl_ms,
                    self._holders_max,
                    1 if strict else 0,
                    keys[0],  # the copy, only read: see FILL_SCRIPT
                    1 if register_on_hit else 0,
                    1 if register_on_miss else 0,
                    1 if holders_lapse else 0,
                    1 if read_on_hit else 0,
                    1 if lease_on_miss else 0,
                    _ms(directory_settled_s) if strict and directory_settled_s > 0 else 0,
                    keyspace.DIRECTORY_BIRTH_KEY,
                ],
            ),
        )
        kind, registration, payload, owed = reply
        registered = int(registration) != 0
        added = int(registration) == 1
        self._fills += 1
        if kind == FILL_UNSETTLED:
            self._fills_unsettled += 1
            return FillStep(FillKind.UNSETTLED, registered=False, acks_owed=int(owed))
        if not registered:
            self._registrations_refused += 1
        if kind == FILL_L2_HIT:
            self._l2_hits += 1
            entry = self._decode_entry(keys[0], payload) if _text(payload) else None
            return FillStep(
                FillKind.L2_HIT, registered, entry=entry, acks_owed=int(owed), holder_added=added
            )
        if kind == FILL_LEASED:
            lease = _text(payload) or None
            self._leases_granted += 1 if lease is not None else 0
            return FillStep(
                FillKind.LEASED,
                registered,
                lease_token=lease,
                acks_owed=int(owed),
                holder_added=added,
            )
        raise DirectoryUnavailable(f"fill script of key {key!r} replied an unknown kind {kind!r}")

    async def add_holder(self, key: str, agent_id: str, *, holders_lapse: bool = True) -> bool:
        """DIRECTORY_ADD_HOLDER alone (a recalled owner keeps a Shared copy): register
        `agent_id` for `holder_ttl_s`; False if the holder set was full (do not keep a copy).
        `holders_lapse`: lapsed registrations make room first (the HOLDER_EXPIRE row)."""
        agent = check_agent_id(agent_id)
        reply = await self._run(
            "add holder",
            key,
            self._scripts.add_holder(
                keys=[self.holders_key(key)],
                args=[agent, self._holder_ttl_ms, self._holders_max, 1 if holders_lapse else 0],
            ),
        )
        if int(reply):
            return True
        self._registrations_refused += 1
        return False

    async def leased_fill(
        self, key: str, agent_id: str, token: str, version: int, value: JSONValue
    ) -> bool:
        """L2_LEASED_FILL: store `value` at `version` in L2 if `token` is still the key's lease.

        The lease is consumed either way it was valid. Returns True if the copy was stored;
        False if the lease was voided (a writer's delete, a newer lease, its expiry, or an
        earlier use), if L2 already holds a copy written outside the protocol, or if the
        agent's grant does not let it write the copy (the server refused; nothing changed).
        """
        agent = check_agent_id(agent_id)
        if type(token) is not str or not token:
            raise InvalidValueError(
                f"lease token must be the non-empty str FillStep.lease_token, got {token!r:.80}"
            )
        if type(version) is not int or not 0 <= version <= INTEGER_MAX:
            raise InvalidValueError(
                f"version must be the home version read (an int >= 0), got {version!r}"
            )
        payload = self._encode_entry(version, value)
        try:
            reply = await self._run(
                "leased fill",
                key,
                self._scripts.leased_fill(
                    keys=[self.l2_key(key), self.lease_key(key)],
                    args=[agent, token, payload, self._l2_ttl_ms],
                ),
            )
        except ScopeViolationError:
            # The agent may read this key but not write its L2 copy (its grant): the server
            # refused before the script ran, so nothing changed. The lease goes unused and
            # expires (L2_ABANDON_LEASE); the next fill of an agent allowed to write it fills L2.
            self._leased_fills_refused += 1
            return False
        if int(reply) == LEASED_FILL_APPLIED:
            self._leased_fills_applied += 1
            return True
        if int(reply) not in (LEASED_FILL_OCCUPIED, LEASED_FILL_LEASE_VOID):
            raise DirectoryUnavailable(f"leased fill of key {key!r} replied {reply!r:.80}")
        self._leased_fills_refused += 1
        return False

    async def invalidate(
        self, key: str, version: int, sender: str, *, await_acks: bool = False
    ) -> tuple[str, ...]:
        """The Redis half of OUTBOX_RELAY for committed `version` of `key`.

        One atomic script: L2_DELETE (the copy, and every fill lease with it), then
        PUBLISH_INVALIDATIONS: an `InvalidateMessage(version, sender)` to every live holder
        except `sender`, through the bus's channels and sequence numbers, after which they are
        no longer holders. `await_acks=True` (strict: PUBLISH_INVALIDATIONS_AWAIT_ACKS) also
        records an owed ack per holder messaged. Returns the agents messaged, sorted.
        `sender` is not messaged and its own registration, if any, is kept.
        """
        effects = (
            (RELAY_L2_DELETE, RELAY_PUBLISH_AWAIT_ACKS)
            if await_acks
            else (RELAY_L2_DELETE, RELAY_PUBLISH)
        )
        return (await self.relay(key, version, sender, effects)).messaged

    async def relay(
        self,
        key: str,
        version: int,
        sender: str,
        effects: Sequence[str],
        *,
        holders_lapse: bool = True,
        value: JSONValue | NoValue = NO_VALUE,
    ) -> Relayed:
        """The Redis effects of an OUTBOX_RELAY row, performed in the row's order in one atomic
        script: `RELAY_L2_DELETE`, `RELAY_PUBLISH` or `RELAY_PUBLISH_AWAIT_ACKS` (see
        `invalidate`). Returns what the script reports it performed, and whom it messaged.
        `holders_lapse`: whether the table's HOLDER_EXPIRE row expires lapsed holders: then
        lapsed holders are dropped unmessaged and owed acks vanish when the last holder's read
        lease lapses (HOLDER_EXPIRE performed by the server's key expiry); False messages every
        registered holder and keeps owed acks until they are acknowledged or `expire_lapsed`
        drops them. `RELAY_PUBLISH_UPDATES` (write-update) publishes an `UpdateMessage` carrying
        `value`, the value committed as `version`, and keeps the holders registered;
        `RELAY_L2_SET` (write-update's L2_SET_IF_NEWER) stores `value` as L2's copy of
        `version`, unless a relay of a newer version of the key came first: every relay raises
        the key's highest relayed version (`relayed_key`), so a write-through's own relay that
        runs late never puts its older value back into L2. `value` is required with either
        letter, and only then."""
        check_agent_id(sender)
        if type(version) is not int or not 0 <= version <= INTEGER_MAX:
            raise InvalidValueError(
                f"version must be the committed home version (an int >= 0), got {version!r}"
            )
        unknown = [e for e in effects if e not in _RELAY_EFFECTS]
        if unknown:
            raise InvalidValueError(
                f"relay effects must be among {sorted(_RELAY_EFFECTS)}, got {unknown!r}"
            )
        updating = RELAY_PUBLISH_UPDATES in effects
        needs_value = updating or RELAY_L2_SET in effects
        if needs_value != (value is not NO_VALUE):
            raise InvalidValueError(
                "a relay that publishes updates or stores the value in L2 needs the committed "
                f"value, and only it: pass value= with {RELAY_PUBLISH_UPDATES!r} or "
                f"{RELAY_L2_SET!r} among the effects (got effects "
                f"{list(effects)!r}, {'a' if value is not NO_VALUE else 'no'} value)"
            )
        l2_entry = b""
        if RELAY_L2_SET in effects:
            assert not isinstance(value, NoValue)
            l2_entry = self._encode_entry(version, value)
        message: InvalidateMessage | UpdateMessage
        if updating:
            message = UpdateMessage(self.namespace, check_key(key), version, value, sender)
        else:
            message = InvalidateMessage(self.namespace, check_key(key), version, sender)
        publish_command = self._publish_command or await self._detect_publish_command()
        reply = await self._run(
            "invalidate",
            key,
            self._scripts.invalidate(
                keys=self._keys(key),
                args=[
                    self._channel_prefix,
                    encode_unsequenced(message),
                    sender,
                    1 if holders_lapse else 0,
                    self._sequence_ttl_ms,
                    channel_suffix(message.kind, key),
                    "".join(effects),
                    version,
                    l2_entry,
                    self._l2_ttl_ms,
                    _RELAYED_TTL_MS,
                    publish_command,
                ],
            ),
        )
        performed = tuple(_text(reply[0])) if reply else ()
        messaged = tuple(sorted(_text(agent) for agent in reply[1:]))
        self._relays += 1
        if updating:
            self._updates_sent += len(messaged)
        else:
            self._invalidations_sent += len(messaged)
        return Relayed(performed, messaged)

    async def ack(self, key: str, agent_id: str) -> bool:
        """SEND_ACK: `agent_id` no longer owes an acknowledgement for `key`; True if it did."""
        agent = check_agent_id(agent_id)
        removed = await self._run("ack", key, self._client.zrem(self.acks_key(key), agent))
        if int(removed):
            self._acks_received += 1
            return True
        return False

    async def settle_facts(self, key: str) -> tuple[tuple[str, ...], float]:
        """What a strict write of `key` settles on, in one script: the agents that still owe an
        ack (lapsed ones included: only HOLDER_EXPIRE, `expire_lapsed`, drops them), and how
        long ago (seconds, the Redis server's clock) the directory was born on the server
        serving it. Its birth key (`keyspace.DIRECTORY_BIRTH_KEY` on one server,
        `keyspace.directory_birth_key(namespace)` on a cluster) is created on first use after
        each server start, and on a cluster again when a failover moved the namespace to a
        promoted replica, so a young directory may have forgotten registrations a restarted
        server or an old primary lost."""
        age_ms, owed = await self._run(
            "settle facts",
            key,
            self._scripts.settle_facts(
                keys=[self.acks_key(key), self._birth_key], args=[keyspace.DIRECTORY_BIRTH_KEY]
            ),
        )
        return tuple(sorted(_text(agent) for agent in owed)), int(age_ms) / 1000.0

    async def pending_acks(self, key: str) -> tuple[str, ...]:
        """The agents that still owe an ack for `key` and whose read lease has not lapsed."""
        return await self._live_members("pending acks", key, self.acks_key(key))

    async def holders(self, key: str) -> tuple[str, ...]:
        """The live holders of `key`, sorted (for inspection and tests)."""
        return await self._live_members("holders", key, self.holders_key(key))

    async def remove_holder(self, key: str, agent_id: str) -> bool:
        """DIRECTORY_REMOVE_HOLDER: forget `agent_id` as a holder of `key`; True if it was one."""
        agent = check_agent_id(agent_id)
        removed = await self._run(
            "remove holder", key, self._client.zrem(self.holders_key(key), agent)
        )
        if int(removed):
            self._holders_removed += 1
            return True
        return False

    async def leave(self, keys: Sequence[str], agent_id: str) -> None:
        """An agent that stops (closes its L1) leaves the directory of `keys`: its
        registrations and any acks it still owes are dropped, so no writer waits for an ack it
        will never send (it serves nothing any more). One pipelined round trip."""
        agent = check_agent_id(agent_id)
        if not keys:
            return
        pipe = self._client.pipeline(transaction=False)
        for key in keys:
            pipe.zrem(self.holders_key(key), agent)
            pipe.zrem(self.acks_key(key), agent)
        await self._run("leave", keys[0], pipe.execute())

    async def expire_holder(self, key: str, agent_id: str) -> bool:
        """HOLDER_EXPIRE (DIRECTORY_EXPIRE_HOLDER): drop `agent_id`'s owed ack and registration
        once their deadline has passed (guard HOLDER_LEASE_LAPSED, on the server's clock).

        Returns True if something lapsed was dropped; False if nothing of the agent has lapsed
        (a live read lease is never cut short) or nothing was recorded.
        """
        agent = check_agent_id(agent_id)
        reply = await self._run(
            "expire holder",
            key,
            self._scripts.expire_holder(
                keys=[self.holders_key(key), self.acks_key(key)], args=[agent]
            ),
        )
        if int(reply):
            self._holders_expired += 1
            return True
        return False

    async def expire_lapsed(self, key: str) -> tuple[str, ...]:
        """HOLDER_EXPIRE for every lapsed holder of `key`; returns those whose ack was owed."""
        reply = await self._run(
            "expire lapsed",
            key,
            self._scripts.expire_lapsed(keys=[self.holders_key(key), self.acks_key(key)]),
        )
        expired = tuple(sorted(_text(agent) for agent in reply))
        self._holders_expired += len(expired)
        return expired

    def statistics(self) -> DirectoryStatistics:
        """A snapshot of this directory's counters."""
        return DirectoryStatistics(
            fills=self._fills,
            l2_hits=self._l2_hits,
            leases_granted=self._leases_granted,
            fills_unsettled=self._fills_unsettled,
            registrations_refused=self._registrations_refused,
            leased_fills_applied=self._leased_fills_applied,
            leased_fills_refused=self._leased_fills_refused,
            relays=self._relays,
            invalidations_sent=self._invalidations_sent,
            updates_sent=self._updates_sent,
            acks_received=self._acks_received,
            holders_removed=self._holders_removed,
            holders_expired=self._holders_expired,
        )

    # -- internals --------------------------------------------------------------------------

    def _keys(self, key: str) -> list[str]:
        return [
            self.l2_key(key),
            self.lease_key(key),
            self.holders_key(key),
            self.acks_key(key),
            self.relayed_key(key),
        ]

    async def _detect_publish_command(self) -> str:
        """`pubsub="auto"`: SPUBLISH on a cluster, PUBLISH on a single server (as the bus)."""
        try:
            async with self._slots:
                topology = await redis_topology.topology_or_single_node(self._client)
        except TierUnavailable as error:
            raise DirectoryUnavailable(str(error)) from error
        on_cluster = topology is redis_topology.RedisTopology.CLUSTER
        self._publish_command = _publish_command(self._pubsub, on_cluster=on_cluster)
        return self._publish_command

    async def _live_members(self, operation: str, key: str, set_key: str) -> tuple[str, ...]:
        reply = await self._run(operation, key, self._scripts.live_members(keys=[set_key]))
        return tuple(sorted(_text(agent) for agent in reply))

    async def _run(self, operation: str, key: str, call: Awaitable[_T]) -> _T:
        """Await one command or script with the timeout; translate driver errors."""
        try:
            async with asyncio.timeout(self._command_timeout_s), self._slots:
                return await call
        except NoPermissionError as error:
            raise _refused(_TIER, operation, key, error) from error
        except MovedError as error:  # the node no longer serves the namespace's slot
            if self._on_moved is not None:
                self._on_moved(str(error))
            raise DirectoryUnavailable(
                str(tier_unavailable(_TIER, operation, error, hint=_HINT, key=key))
            ) from error
        except ResponseError as error:
            if str(error).startswith(_ACL_FAILURE):  # a command refused inside a script
                raise _refused(_TIER, operation, key, error) from error
            raise DirectoryUnavailable(
                str(tier_unavailable(_TIER, operation, error, hint=_HINT, key=key))
            ) from error
        except _DRIVER_ERRORS as error:
            raise DirectoryUnavailable(
                str(tier_unavailable(_TIER, operation, error, hint=_HINT, key=key))
            ) from error

    def _encode_entry(self, version: int, value: JSONValue) -> bytes:
        """An L2 entry as the protocol stores it: `<version>;<json>`."""
        text = encode_value(value, size_max_bytes=self._value_size_max_bytes)
        return str(version).encode() + _L2_SEPARATOR + text.encode()

    def _decode_entry(self, redis_key: str, raw: object) -> TierEntry:
        data = raw if isinstance(raw, bytes) else _text(raw).encode()
        version_digits, separator, text = data.partition(_L2_SEPARATOR)
        try:
            if not separator or (version_digits and not version_digits.isdigit()):
                raise ValueError("missing '<version>;' prefix")
            value = decode_value(text)
        except ValueError as error:
            raise DirectoryUnavailable(
                f"L2 entry {redis_key!r} is not in sagemem's format ({error}): something other "
                "than sagemem wrote to this namespace; clear() the namespace or pick another"
            ) from error
        return TierEntry(value, int(version_digits) if version_digits else None)
