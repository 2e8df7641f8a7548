"""L2: a Redis tier shared by the agents of one cluster (redis.asyncio with hiredis).

Each entry is one Redis string at `sagemem:<namespace>:<key>` holding `<version>;<json>`: the
home version of the copy as decimal digits (empty when the value was written here directly
and has no home version), a `;`, then the value's canonical JSON text. One string per entry
keeps every read and write a single command (GET, SET with PX for the TTL). Namespaces match
`sagemem.values.NAMESPACE_PATTERN`, which excludes ':' and every glob character, so the prefix
of one namespace is never a prefix of another's and `clear()` touches only its own keys.

On a Redis/Valkey Cluster (found from the server itself when `connect()` runs: `INFO cluster`,
nothing to configure) the tier talks through redis-py's `RedisCluster`: every command but
`clear()` names one key, so it goes to that key's slot; `clear()` scans every primary and
deletes slot by slot. Credentials that may not run `INFO` (a restricted grant) are taken to
name a single server.

This module must never let a redis exception escape: every driver error becomes
`TierUnavailable` with the driver's exception as the cause.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from typing import Final

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialWithJitterBackoff
from redis.exceptions import RedisError

from sagemem import endpoints, keyspace
from sagemem._driver_errors import not_connected, tier_unavailable
from sagemem._lifecycle import AsyncResource
from sagemem._renamed import UNSET, Unset, renamed
from sagemem.errors import (
    ConfigurationError,
    InvalidValueError,
    TierUnavailable,
)
from sagemem.redis_topology import RedisTopology, topology_or_single_node
from sagemem.tiers.base import TierEntry
from sagemem.values import (
    VALUE_SIZE_MAX_BYTES,
    JSONValue,
    check_key,
    check_namespace,
    decode_value,
    encode_value,
)

__all__ = ["L2Tier"]

_DRIVER_ERRORS: Final = (RedisError, OSError, TimeoutError)
_HINT: Final = (
    "check that the Redis server is running and that the URL (argument or SAGEMEM_REDIS_URL) "
    "points at it; `sagemem services status` shows the embedded servers"
)
_SEPARATOR: Final = b";"
_CLEAR_BATCH: Final = 500


def _check_positive_seconds(name: str, value: object, *, allow_none: bool) -> float | None:
    if value is None and allow_none:
        return None
    if (
        type(value) not in (int, float)
        or not math.isfinite(value)  # type: ignore[arg-type]  # int or float by the check above
        or value <= 0  # type: ignore[operator]  # int or float by the check above
    ):
        allowed = "a positive number of seconds or None" if allow_none else "a positive number"
        raise ConfigurationError(f"L2 {name} must be {allowed}, got {value!r}")
    return float(value)  # type: ignore[arg-type]  # int or float by the check above


class L2Tier(AsyncResource):
    """A Redis-backed tier: one namespace of a Redis server, optionally with a TTL per entry.

    `redis_url=None` takes `SAGEMEM_REDIS_URL`, else the embedded server (started or reused
    by `sagemem.services`) when `connect()` runs. The tier owns its connection pool:
    `connect()` creates it (and checks the server answers), `aclose()` closes it. At most
    `pool_size_max` commands run at once (so at most that many connections are opened); a
    command waits at most `pool_timeout_s` for its turn and at most `command_timeout_s` for
    its reply. `ttl_s` (seconds, may be fractional) makes every entry written or filled
    expire, so a copy a coherence message missed cannot stay stale forever. `url=`, the design
    note's spelling, is accepted too; the old names `ttl=` and `connections_max=` still work
    for one release, with a `DeprecationWarning`.
    """

    name = "L2"

    def __init__(
        self,
        redis_url: str | None = None,
        *,
        namespace: str = "default",
        ttl_s: float | None = None,
        value_size_max_bytes: int = VALUE_SIZE_MAX_BYTES,
        pool_size_max: int = 32,
        connect_timeout_s: float = 5.0,
        command_timeout_s: float = 10.0,
        pool_timeout_s: float = 10.0,
        url: str | Unset | None = UNSET,
        ttl: float | Unset | None = UNSET,
        connections_max: int | Unset = UNSET,
    ) -> None:
        url = renamed("L2Tier", "redis_url", redis_url, None, "url", url, deprecated=False)
        ttl = renamed("L2Tier", "ttl_s", ttl_s, None, "ttl", ttl)
        connections_max = renamed(
            "L2Tier", "pool_size_max", pool_size_max, 32, "connections_max", connections_max
        )
        if url is not None and (type(url) is not str or not url):
            raise ConfigurationError(
                f"L2 redis_url must be a redis:// URL string or None, got {url!r}; None uses "
                "SAGEMEM_REDIS_URL or the embedded server"
            )
        self.namespace: Final = check_namespace(namespace, derived=True)
        seconds = _check_positive_seconds("ttl_s", ttl, allow_none=True)
        self.ttl_s: Final = seconds
        # Redis expiries are whole milliseconds; round up so a tiny TTL never becomes "no TTL".
        self._ttl_ms: Final = None if seconds is None else max(1, math.ceil(seconds * 1000))
        if type(value_size_max_bytes) is not int or value_size_max_bytes < 1:
            raise ConfigurationError(
                f"L2 value_size_max_bytes must be a positive int, got {value_size_max_bytes!r}"
            )
        self.value_size_max_bytes: Final = value_size_max_bytes
        if type(connections_max) is not int or connections_max < 1:
            raise ConfigurationError(
                f"L2 pool_size_max must be a positive int, got {connections_max!r}"
            )
        self._connections_max: Final = connections_max
        self._connect_timeout_s: Final = _check_positive_seconds(
            "connect_timeout_s", connect_timeout_s, allow_none=False
        )
        self._command_timeout_s: Final = _check_positive_seconds(
            "command_timeout_s", command_timeout_s, allow_none=False
        )
        self._pool_timeout_s: Final = _check_positive_seconds(
            "pool_timeout_s", pool_timeout_s, allow_none=False
        )
        self._url_argument: Final = url
        self._prefix: Final = keyspace.l2_prefix(self.namespace)
        self._client: aioredis.Redis | RedisCluster | None = None
        self._pool: aioredis.ConnectionPool | None = None  # None on a cluster
        self._slots: asyncio.Semaphore | None = None
        self._connect_lock = asyncio.Lock()

    def __repr__(self) -> str:
        state = "connected" if self._client is not None else "not connected"
        return f"L2Tier(namespace={self.namespace!r}, ttl_s={self.ttl_s!r}, {state})"

    @property
    def redis_url(self) -> str | None:
        """The Redis URL given to the constructor (None: `SAGEMEM_REDIS_URL` or the embedded
        server, resolved when `connect()` runs)."""
        return self._url_argument

    @property
    def url(self) -> str | None:
        """`redis_url` under its old name."""
        return self._url_argument

    @property
    def ttl(self) -> float | None:
        """`ttl_s` under its old name."""
        return self.ttl_s

    # -- lifecycle ------------------------------------------------------------------------

    async def connect(self) -> None:
        """Resolve the URL, open the pool and check the server answers (idempotent)."""
        async with self._connect_lock:
            if self._client is not None:
                return
            url = self._url_argument
            if url is None:
                url = await endpoints.resolve("redis")
            try:
                # The tier's own semaphore bounds the commands in flight (and their wait for a
                # turn), so the pool never needs more connections than that; redis-py's
                # BlockingConnectionPool would do the same at ~10% of a GET's latency.
                pool = aioredis.ConnectionPool.from_url(
                    url,
                    max_connections=self._connections_max,
                    socket_connect_timeout=self._connect_timeout_s,
                    socket_timeout=self._command_timeout_s,
                    retry=Retry(ExponentialWithJitterBackoff(base=0.01, cap=0.2), retries=2),
                )
            except (ValueError, TypeError) as error:
                raise ConfigurationError(
                    f"L2 url {endpoints.redacted_url(url)!r} is not a valid Redis URL ({error}); "
                    "use redis://host:port/db or unix:///path/to/socket"
                ) from error
            client = aioredis.Redis(connection_pool=pool)
            try:
                await client.ping()
                topology = await topology_or_single_node(client)
            except _DRIVER_ERRORS as error:
                await self._close_quietly(client, pool)
                raise tier_unavailable(self.name, "connect", error, hint=_HINT) from error
            except BaseException:
                await self._close_quietly(client, pool)
                raise
            if topology is RedisTopology.CLUSTER:
                await self._close_quietly(client, pool)
                self._client = await self._connect_cluster(url)
                self._pool = None
            else:
                self._client = client
                self._pool = pool
            self._slots = asyncio.Semaphore(self._connections_max)

    async def _connect_cluster(self, url: str) -> RedisCluster:
        """A `RedisCluster` client for the cluster `url` names a node of, its slot map loaded."""
        cluster = RedisCluster.from_url(
            url,
            max_connections=self._connections_max,
            socket_connect_timeout=self._connect_timeout_s,
            socket_timeout=self._command_timeout_s,
        )
        try:
            connect_s, command_s = self._connect_timeout_s, self._command_timeout_s
            assert connect_s is not None  # checked in the constructor: never None
            assert command_s is not None
            async with asyncio.timeout(connect_s + command_s):
                await cluster.initialize()
        except _DRIVER_ERRORS as error:
            with contextlib.suppress(*_DRIVER_ERRORS, RuntimeError):
                await cluster.aclose()
            raise tier_unavailable(self.name, "connect", error, hint=_HINT) from error
        return cluster

    async def aclose(self) -> None:
        """Close the pool this tier owns (idempotent; never raises a driver error)."""
        async with self._connect_lock:
            client, pool = self._client, self._pool
            self._client = None
            self._pool = None
            self._slots = None
            if isinstance(client, RedisCluster):
                with contextlib.suppress(*_DRIVER_ERRORS, RuntimeError):
                    async with asyncio.timeout(self._command_timeout_s):
                        await client.aclose()
            elif client is not None and pool is not None:
                await self._close_quietly(client, pool)

    async def _close_quietly(self, client: aioredis.Redis, pool: aioredis.ConnectionPool) -> None:
        # Closing must release the sockets even when the server is gone; a failure to say
        # goodbye to a dead server is not the caller's problem.
        try:
            async with asyncio.timeout(self._command_timeout_s):
                await client.aclose()
                await pool.aclose()
        except (*_DRIVER_ERRORS, RuntimeError):
            with contextlib.suppress(*_DRIVER_ERRORS, RuntimeError):
                await pool.disconnect(inuse_connections=True)

    @property
    def on_cluster(self) -> bool:
        """Whether the connected server is a Redis/Valkey Cluster (False before `connect()`)."""
        return isinstance(self._client, RedisCluster)

    # -- the Tier interface ---------------------------------------------------------------

    def redis_key(self, key: str) -> str:
        """The Redis key that holds `key` of this namespace (checks `key` first)."""
        return self._prefix + check_key(key)

    async def read(self, key: str) -> TierEntry | None:
        """The entry for `key`, or None on a miss (a stored None is an entry)."""
        redis_key = self.redis_key(key)
        client, slots = self._connected()
        try:
            await self._take_turn(slots)
            try:
                raw = await client.get(redis_key)
            finally:
                slots.release()
        except _DRIVER_ERRORS as error:
            raise tier_unavailable(self.name, "read", error, hint=_HINT, key=key) from error
        if raw is None:
            return None
        return self._decode(redis_key, raw)

    async def write(self, key: str, value: JSONValue) -> None:
        """Store `value` written at this tier (it has no home version); returns None."""
        await self._store(key, value, None, "write")

    async def fill(self, key: str, entry: TierEntry) -> None:
        """Store a copy promoted from a slower tier, keeping its home version."""
        version = entry.version
        if version is not None and (type(version) is not int or version < 0):
            raise InvalidValueError(
                f"TierEntry.version must be None or a non-negative int, got {version!r}"
            )
        await self._store(key, entry.value, version, "fill")

    async def delete(self, key: str) -> bool:
        """Remove `key`; True if it was present."""
        redis_key = self.redis_key(key)
        client, slots = self._connected()
        try:
            await self._take_turn(slots)
            try:
                removed: int = await client.unlink(redis_key)
            finally:
                slots.release()
        except _DRIVER_ERRORS as error:
            raise tier_unavailable(self.name, "delete", error, hint=_HINT, key=key) from error
        return removed > 0

    async def exists(self, key: str) -> bool:
        """True if `key` holds an entry (a stored None counts)."""
        redis_key = self.redis_key(key)
        client, slots = self._connected()
        try:
            await self._take_turn(slots)
            try:
                found: int = await client.exists(redis_key)
            finally:
                slots.release()
        except _DRIVER_ERRORS as error:
            raise tier_unavailable(self.name, "exists", error, hint=_HINT, key=key) from error
        return found > 0

    async def clear(self) -> None:
        """Remove every key of this namespace (and nothing else), in bounded batches."""
        client, slots = self._connected()
        pattern = self._prefix + "*"
        try:
            await self._take_turn(slots)
            try:
                batch: list[bytes] = []
                async for found in client.scan_iter(match=pattern, count=_CLEAR_BATCH):
                    batch.append(found)
                    if len(batch) >= _CLEAR_BATCH:
                        await client.unlink(*batch)
                        batch.clear()
                if batch:
                    await client.unlink(*batch)
            finally:
                slots.release()
        except _DRIVER_ERRORS as error:
            raise tier_unavailable(self.name, "clear", error, hint=_HINT) from error

    # -- conveniences ---------------------------------------------------------------------

    async def get(self, key: str, default: JSONValue = None) -> JSONValue:
        """The value of `key`, or `default` on a miss."""
        entry = await self.read(key)
        return default if entry is None else entry.value

    async def set(self, key: str, value: JSONValue) -> None:
        """Store `value` under `key` (same as `write`)."""
        await self._store(key, value, None, "set")

    # -- internals ------------------------------------------------------------------------

    def _connected(self) -> tuple[aioredis.Redis | RedisCluster, asyncio.Semaphore]:
        client, slots = self._client, self._slots
        if client is None or slots is None:
            raise not_connected(self.name)
        return client, slots

    async def _take_turn(self, slots: asyncio.Semaphore) -> None:
        """Wait (at most `pool_timeout_s`) until fewer than `connections_max` commands run."""
        if slots.locked():
            async with asyncio.timeout(self._pool_timeout_s):
                await slots.acquire()
        else:
            await slots.acquire()

    async def _store(self, key: str, value: JSONValue, version: int | None, operation: str) -> None:
        redis_key = self.redis_key(key)
        text = encode_value(value, size_max_bytes=self.value_size_max_bytes)
        payload = (b"" if version is None else str(version).encode()) + _SEPARATOR + text.encode()
        client, slots = self._connected()
        try:
            await self._take_turn(slots)
            try:
                await client.set(redis_key, payload, px=self._ttl_ms)
            finally:
                slots.release()
        except _DRIVER_ERRORS as error:
            raise tier_unavailable(self.name, operation, error, hint=_HINT, key=key) from error

    def _decode(self, redis_key: str, raw: bytes | str) -> TierEntry:
        # The pool never decodes responses, so `raw` is bytes; str is accepted for the types.
        data = raw if isinstance(raw, bytes) else raw.encode()
        version_digits, separator, text = data.partition(_SEPARATOR)
        try:
            if not separator or (version_digits and not version_digits.isdigit()):
                raise ValueError("missing '<version>;' prefix")
            value = decode_value(text)
        except ValueError as error:
            raise TierUnavailable(
                f"L2 entry {redis_key!r} is not in sagemem's format ({error}): something other "
                "than sagemem wrote to this namespace; clear() the namespace or pick another",
                tier=self.name,
            ) from error
        return TierEntry(value, int(version_digits) if version_digits else None)
