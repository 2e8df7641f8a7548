"""Which kind of Redis a URL names (one server, or a node of a Redis/Valkey Cluster), and the
hash slot a key lives in on a cluster.

Cluster mode is detected from the server itself (`INFO cluster` says `cluster_enabled:1`), so
the user configures nothing new. `key_hash_slot` is the cluster's own mapping of a key to one
of 16384 slots: CRC16 (XMODEM: polynomial 0x1021, initial value 0) of the key, or of its hash
tag, modulo 16384. The hash tag is the part between the first `{` and the first `}` after it,
when that part is not empty; keys with the same tag live in the same slot, which is how a
multi-key script keeps all its keys on one node.

This module reads the server's answer and computes; it never changes anything on the server,
and the slot computation does no I/O at all.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from enum import StrEnum
from typing import Final
from urllib.parse import urlsplit, urlunsplit

import redis.asyncio as redis_asyncio
from redis.exceptions import NoPermissionError, RedisError

from sagemem._driver_errors import refused_by_server, tier_unavailable
from sagemem.endpoints import redacted_url
from sagemem.errors import ConfigurationError, ScopeViolationError, TierUnavailable
from sagemem.values import check_namespace

__all__ = [
    "HASH_SLOT_COUNT",
    "Address",
    "ClusterMap",
    "RedisTopology",
    "cluster_map",
    "detect_redis_topology",
    "detect_redis_topology_at",
    "key_hash_slot",
    "namespace_node_url",
    "topology_or_single_node",
    "url_at",
]


HASH_SLOT_COUNT: Final = 16384
_CRC16_POLYNOMIAL: Final = 0x1021
_DETECT_TIMEOUT_S: Final = 5.0
_TIER: Final = "Redis"


def _crc16_table() -> tuple[int, ...]:
    """The 256 CRC16/XMODEM remainders of one byte, for the byte-at-a-time loop below."""
    table: list[int] = []
    for byte in range(256):
        crc = byte << 8
        for _bit in range(8):
            crc = (crc << 1) ^ _CRC16_POLYNOMIAL if crc & 0x8000 else crc << 1
            crc &= 0xFFFF
        table.append(crc)
    return tuple(table)


_CRC16_TABLE: Final = _crc16_table()


def _crc16(data: bytes) -> int:
    crc = 0
    for byte in data:
        crc = ((crc << 8) & 0xFFFF) ^ _CRC16_TABLE[((crc >> 8) ^ byte) & 0xFF]
    return crc


def _hashed_part(key: bytes) -> bytes:
    """The key's hash tag if it has a non-empty one, else the whole key."""
    opening = key.find(b"{")
    if opening == -1:
        return key
    closing = key.find(b"}", opening + 1)
    if closing == -1 or closing == opening + 1:
        return key
    return key[opening + 1 : closing]


def key_hash_slot(key: str | bytes) -> int:
    """The cluster hash slot (0-16383) of `key`; a str is hashed as its UTF-8 bytes.

    Same answer as the server's `CLUSTER KEYSLOT`. Raises `ConfigurationError` (a
    `ValueError`) for anything but a str or bytes.
    """
    if isinstance(key, str):
        encoded = key.encode()
    elif isinstance(key, bytes):
        encoded = key
    else:
        raise ConfigurationError(
            f"key {key!r} is a {type(key).__name__}, not a str or bytes; pass the key as the "
            "string (or bytes) sent to Redis"
        )
    return _crc16(_hashed_part(encoded)) % HASH_SLOT_COUNT


async def _ask(client: redis_asyncio.Redis, *command: str) -> object:
    """One command within 5 s; a refusal for lack of permission is `ScopeViolationError`,
    anything else that fails `TierUnavailable`."""
    what = " ".join(command)
    try:
        async with asyncio.timeout(_DETECT_TIMEOUT_S):
            reply: object = await client.execute_command(*command)  # type: ignore[no-untyped-call]  # untyped in redis-py
    except NoPermissionError as error:
        raise refused_by_server(_TIER, what, None, error) from error
    except (RedisError, OSError, TimeoutError) as error:
        raise tier_unavailable(
            _TIER,
            what,
            error,
            hint="check that the Redis server at the configured URL runs and answers",
        ) from error
    return reply


class RedisTopology(StrEnum):
    """What a Redis URL names."""

    SINGLE_NODE = "single-node"  # a standalone server (or a replica of one)
    CLUSTER = "cluster"  # a node of a Redis/Valkey Cluster: keys are spread over slots


async def detect_redis_topology(client: redis_asyncio.Redis) -> RedisTopology:
    """Ask the server behind `client` (`INFO cluster`) whether it is a cluster node.

    The client is borrowed: it is used for one command and left open. Raises
    `TierUnavailable` when the server does not answer within 5 s, `ScopeViolationError`
    when the credentials may not run `INFO` (a restricted grant).
    """
    info = await _ask(client, "INFO", "cluster")
    enabled = info.get("cluster_enabled", 0) if isinstance(info, dict) else 0
    return RedisTopology.CLUSTER if str(enabled) == "1" else RedisTopology.SINGLE_NODE


async def topology_or_single_node(client: redis_asyncio.Redis) -> RedisTopology:
    """`detect_redis_topology`, except that credentials which may not run `INFO` (a restricted
    grant's user) are asked `CLUSTER SLOTS` instead (which a grant allows: a single server
    answers it with an error), and are taken to name a single server if that is refused too:
    what `L2Tier` and `CoherenceBus` decide at connect."""
    try:
        return await detect_redis_topology(client)
    except ScopeViolationError:
        pass
    try:
        async with asyncio.timeout(_DETECT_TIMEOUT_S):
            await client.execute_command("CLUSTER", "SLOTS")  # type: ignore[no-untyped-call]
    except (RedisError, OSError, TimeoutError):
        return RedisTopology.SINGLE_NODE
    return RedisTopology.CLUSTER


Address = tuple[str, int]


@dataclass(frozen=True, slots=True)
class ClusterMap:
    """What one node of a cluster said about one hash slot (`CLUSTER SLOTS`)."""

    slot: int
    primary: Address  # the node serving the slot
    replicas: tuple[Address, ...]  # its replicas, in the order the node listed them
    nodes: tuple[Address, ...]  # every node the answer names, the slot's primary first


def _address(entry: object) -> Address | None:
    if not isinstance(entry, list) or len(entry) < 2:
        return None
    host, port = entry[0], entry[1]
    if isinstance(host, bytes):
        host = host.decode()
    if not isinstance(host, str) or not isinstance(port, int) or not host or host == "?":
        return None
    return host, port


async def cluster_map(client: redis_asyncio.Redis, slot: int) -> ClusterMap:
    """Ask the cluster node behind `client` which node serves `slot` (`CLUSTER SLOTS`).

    The client is borrowed. Raises `TierUnavailable` when the node does not answer within
    5 s, or answers that no node serves the slot (a cluster still forming, or one that lost
    every copy of the slot), `ScopeViolationError` when the credentials may not ask.
    """
    if type(slot) is not int or not 0 <= slot < HASH_SLOT_COUNT:
        raise ConfigurationError(f"slot {slot!r} is not a hash slot; use an int in 0..16383")
    reply = await _ask(client, "CLUSTER", "SLOTS")
    everyone: list[Address] = []
    owner: tuple[Address, tuple[Address, ...]] | None = None
    for entry in reply if isinstance(reply, list) else ():
        if not isinstance(entry, list) or len(entry) < 3:
            continue
        addresses = [a for a in map(_address, entry[2:]) if a is not None]
        everyone.extend(a for a in addresses if a not in everyone)
        start, end = entry[0], entry[1]
        if addresses and isinstance(start, int) and isinstance(end, int) and start <= slot <= end:
            owner = addresses[0], tuple(addresses[1:])
    if owner is None:
        raise TierUnavailable(
            f"Redis CLUSTER SLOTS: no node of the cluster serves hash slot {slot}; wait for "
            "the cluster to form or to finish a failover (CLUSTER INFO says cluster_state:ok)",
            tier=_TIER,
        )
    primary, replicas = owner
    nodes = (primary, *(a for a in everyone if a != primary))
    return ClusterMap(slot=slot, primary=primary, replicas=replicas, nodes=nodes)


def _client_for(redis_url: str) -> redis_asyncio.Redis:
    """A client of its own for `redis_url`; a URL redis-py cannot use is a ConfigurationError."""
    try:
        return redis_asyncio.Redis.from_url(redis_url, socket_timeout=_DETECT_TIMEOUT_S)
    except ValueError as error:
        raise ConfigurationError(
            f"Redis URL {redacted_url(redis_url)!r} cannot be used: {error}; use a URL such "
            "as 'redis://127.0.0.1:6379/0'"
        ) from error


async def detect_redis_topology_at(redis_url: str) -> RedisTopology:
    """`detect_redis_topology` on a client of its own for `redis_url`, closed before returning."""
    client = _client_for(redis_url)
    try:
        return await detect_redis_topology(client)
    finally:
        await client.aclose()


async def namespace_node_url(redis_url: str, namespace: str) -> str:
    """The URL of the server that holds `namespace`'s keys: `redis_url` itself on one server;
    on a cluster the same URL (credentials, database) pointed at the primary serving the
    namespace's hash slot (every key of a namespace carries the namespace as its hash tag,
    `sagemem.keyspace`). For tools that look at a namespace's keys or clients directly (the
    demo's fault injection, tests); the library's own clients find the node themselves.

    Raises `ConfigurationError` for a bad URL or namespace, `TierUnavailable` when the server
    does not answer."""
    check_namespace(namespace, derived=True)  # a scope's L2 space is a namespace's too
    client = _client_for(redis_url)
    try:
        if await topology_or_single_node(client) is not RedisTopology.CLUSTER:
            return redis_url
        host, port = (await cluster_map(client, key_hash_slot(namespace))).primary
    finally:
        await client.aclose()
    return url_at(redis_url, (host, port))


def url_at(redis_url: str, address: Address) -> str:
    """`redis_url` (credentials, database and options kept) pointed at another node."""
    parts = urlsplit(redis_url)
    userinfo, at, _ = parts.netloc.rpartition("@")
    host, port = address
    netloc_host = f"[{host}]" if ":" in host else host
    return urlunsplit(parts._replace(netloc=f"{userinfo}{at}{netloc_host}:{port}"))
