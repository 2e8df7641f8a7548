"""L2 against a real Redis: exact round trips, copies, namespaces, TTL, typed and wrapped errors."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis
import redis.exceptions

from sagemem.errors import (
    ClosedResourceError,
    ConfigurationError,
    InvalidKeyError,
    InvalidValueError,
    TierUnavailable,
    ValueTooLargeError,
)
from sagemem.redis_topology import namespace_node_url
from sagemem.tiers.base import TierEntry
from sagemem.tiers.l2 import L2Tier


@pytest.fixture
async def l2(redis_url: str, namespace: str) -> AsyncIterator[L2Tier]:
    """A connected L2 on a namespace of its own, cleared and closed after the test."""
    async with L2Tier(redis_url, namespace=namespace) as tier:
        yield tier
        await tier.clear()


@pytest.fixture
async def raw_redis(redis_url: str, namespace: str) -> AsyncIterator[aioredis.Redis]:
    """A plain redis-py client on the server that holds the namespace's keys, to look behind
    the tier's back."""
    client = aioredis.Redis.from_url(await namespace_node_url(redis_url, namespace))
    try:
        yield client
    finally:
        await client.aclose()


async def _namespace_keys(client: aioredis.Redis, namespace: str) -> list[bytes]:
    return sorted([key async for key in client.scan_iter(match=f"sagemem:{{{namespace}}}:*")])


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


async def test_clear_of_one_namespace_leaves_a_prefix_sharing_namespace_alone(
    redis_url: str, namespace: str, raw_redis: aioredis.Redis
) -> None:
    """Clearing 'ns' leaves 'ns-b' intact, even for keys that contain ':'."""
    async with (
        L2Tier(redis_url, namespace=namespace) as first,
        L2Tier(redis_url, namespace=f"{namespace}-b") as second,
    ):
        try:
            for key in ("k", "b:k", "x:y:z"):
                await first.set(key, f"first {key}")
                await second.set(key, f"second {key}")
            await first.clear()
            for key in ("k", "b:k", "x:y:z"):
                assert await first.read(key) is None
                assert await second.get(key) == f"second {key}"
            assert await _namespace_keys(raw_redis, namespace) == []
        finally:
            await second.clear()


async def test_clear_removes_more_keys_than_one_batch(
    l2: L2Tier, namespace: str, raw_redis: aioredis.Redis
) -> None:
    """clear() removes every key of the namespace even when there are several batches."""
    async with raw_redis.pipeline(transaction=False) as pipe:
        for index in range(1_234):
            pipe.set(f"sagemem:{{{namespace}}}:bulk{index}", b";1")
        await pipe.execute()
    assert len(await _namespace_keys(raw_redis, namespace)) == 1_234
    await l2.clear()
    assert await _namespace_keys(raw_redis, namespace) == []


async def test_entries_expire_after_the_ttl(
    redis_url: str, namespace: str, raw_redis: aioredis.Redis
) -> None:
    """With ttl_s=0.25 an entry carries a Redis expiry and becomes a miss once it passes."""
    async with L2Tier(redis_url, namespace=namespace, ttl_s=0.25) as tier:
        await tier.set("short", "lived")
        await tier.fill("filled", TierEntry("copy", 3))
        for key in ("short", "filled"):
            remaining_ms = await raw_redis.pttl(f"sagemem:{{{namespace}}}:{key}")
            assert 0 < remaining_ms <= 250
        deadline = time.monotonic() + 10.0
        while await tier.read("short") is not None:
            assert time.monotonic() < deadline, "entry still present 10 s after a 0.25 s TTL"
            await asyncio.sleep(0.05)
        assert await tier.read("short") is None


async def test_without_ttl_entries_do_not_expire(
    l2: L2Tier, namespace: str, raw_redis: aioredis.Redis
) -> None:
    """The default tier sets no expiry (PTTL -1)."""
    await l2.set("forever", 1)
    assert await raw_redis.pttl(f"sagemem:{{{namespace}}}:forever") == -1


@pytest.mark.parametrize(
    ("key", "value", "error"),
    [
        ("", 1, InvalidKeyError),
        ("bad\x00key", 1, InvalidKeyError),
        (7, 1, InvalidKeyError),
        ("k", (1, 2), InvalidValueError),
        ("k", {1: "int key"}, InvalidValueError),
        ("k", float("nan"), InvalidValueError),
        ("k", {"s": {1, 2}}, InvalidValueError),
        ("k", "x" * 100, ValueTooLargeError),
    ],
)
async def test_invalid_keys_and_values_raise_typed_errors_and_touch_nothing(
    redis_url: str,
    namespace: str,
    raw_redis: aioredis.Redis,
    key: object,
    value: object,
    error: type[Exception],
) -> None:
    """Bad input raises its typed error before any I/O: the stored value and key set stay."""
    async with L2Tier(redis_url, namespace=namespace, value_size_max_bytes=64) as tier:
        await tier.set("k", "before")
        before = await _namespace_keys(raw_redis, namespace)
        with pytest.raises(error):
            await tier.set(key, value)  # type: ignore[arg-type]  # deliberately invalid
        with pytest.raises(error):
            await tier.fill(key, TierEntry(value, 1))  # type: ignore[arg-type,arg-type]  # invalid
        assert await tier.get("k") == "before"
        assert await _namespace_keys(raw_redis, namespace) == before
        await tier.clear()


async def test_invalid_input_is_refused_even_before_connect() -> None:
    """Validation needs no server: a bad key raises InvalidKeyError on an unconnected tier."""
    tier = L2Tier("redis://127.0.0.1:1")
    with pytest.raises(InvalidKeyError):
        await tier.set("", 1)
    with pytest.raises(InvalidValueError):
        await tier.set("k", {1, 2})  # type: ignore[arg-type]  # deliberately invalid


@pytest.mark.parametrize(
    "kwargs",
    [
        {"namespace": "a:b"},
        {"namespace": ""},
        {"ttl_s": 0},
        {"ttl_s": -1.0},
        {"ttl_s": float("inf")},
        {"ttl_s": "10"},
        {"value_size_max_bytes": 0},
        {"pool_size_max": 0},
        {"command_timeout_s": 0},
    ],
)
def test_invalid_settings_are_refused(kwargs: dict[str, object]) -> None:
    """Malformed settings raise ConfigurationError naming the setting."""
    with pytest.raises(ConfigurationError):
        L2Tier("redis://127.0.0.1:1", **kwargs)  # type: ignore[arg-type]  # deliberately invalid


async def test_use_before_connect_and_after_aclose_raises_closed_resource_error(
    redis_url: str, namespace: str
) -> None:
    """An unconnected tier says to call connect(); aclose() is idempotent; reconnect works."""
    tier = L2Tier(redis_url, namespace=namespace)
    with pytest.raises(ClosedResourceError, match=r"connect\(\)"):
        await tier.read("k")
    await tier.connect()
    await tier.connect()
    await tier.set("k", 1)
    await tier.aclose()
    await tier.aclose()
    with pytest.raises(ClosedResourceError, match=r"connect\(\)"):
        await tier.set("k", 2)
    await tier.connect()
    assert await tier.get("k") == 1
    await tier.clear()
    await tier.aclose()


async def test_url_none_uses_the_configured_server(
    redis_url: str, namespace: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without a URL the tier takes SAGEMEM_REDIS_URL and sees what an explicit URL wrote."""
    monkeypatch.setenv("SAGEMEM_REDIS_URL", redis_url)
    async with (
        L2Tier(redis_url, namespace=namespace) as explicit,
        L2Tier(namespace=namespace) as configured,
    ):
        await explicit.set("shared", "seen")
        assert await configured.get("shared") == "seen"
        await explicit.clear()


async def test_unreachable_server_raises_tier_unavailable_with_the_cause() -> None:
    """connect() to a closed port raises TierUnavailable chaining the driver's error."""
    tier = L2Tier(f"redis://127.0.0.1:{_closed_port()}", connect_timeout_s=2.0)
    with pytest.raises(TierUnavailable) as caught:
        await tier.connect()
    assert caught.value.tier == "L2"
    assert isinstance(caught.value.__cause__, (redis.exceptions.RedisError, OSError))
    with pytest.raises(ClosedResourceError):
        await tier.read("k")


async def test_server_errors_during_commands_are_wrapped(
    l2: L2Tier, namespace: str, raw_redis: aioredis.Redis
) -> None:
    """A Redis error reply (WRONGTYPE) surfaces as TierUnavailable with the ResponseError cause."""
    await raw_redis.rpush(f"sagemem:{{{namespace}}}:listkey", "x")
    with pytest.raises(TierUnavailable) as caught:
        await l2.read("listkey")
    assert isinstance(caught.value.__cause__, redis.exceptions.ResponseError)
    assert "listkey" in str(caught.value)


async def test_foreign_data_in_the_namespace_is_reported_not_misread(
    l2: L2Tier, namespace: str, raw_redis: aioredis.Redis
) -> None:
    """A string that sagemem did not write raises TierUnavailable instead of a wrong value."""
    await raw_redis.set(f"sagemem:{{{namespace}}}:foreign", b"not sagemem")
    with pytest.raises(TierUnavailable, match="not in sagemem's format"):
        await l2.read("foreign")


async def test_many_concurrent_commands_share_a_small_pool(redis_url: str, namespace: str) -> None:
    """200 concurrent writes and reads through pool_size_max=2 all complete, none lost."""
    async with L2Tier(redis_url, namespace=namespace, pool_size_max=2) as tier:
        async with asyncio.timeout(60):
            await asyncio.gather(*(tier.set(f"k{index}", index) for index in range(200)))
            values = await asyncio.gather(*(tier.get(f"k{index}") for index in range(200)))
        assert values == list(range(200))
        await tier.clear()
