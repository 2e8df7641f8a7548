"""RedisDirectory against a real Redis: fill leases, the relay's targeted invalidations, acks, TTLs.

The races are made deterministic by running each actor's steps in a chosen order (the home is
a plain variable here: only the Redis half of the protocol is under test). Waits for a TTL to
run out poll the server with a bounded deadline; nothing else waits on time.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from sagemem.coherence import (
    BusEvent,
    CoherenceBus,
    Delivered,
    InvalidateMessage,
    Missed,
    RecallMessage,
)
from sagemem.coherence.directory import (
    RELAY_L2_DELETE,
    RELAY_L2_SET,
    RELAY_PUBLISH,
    RELAY_PUBLISH_AWAIT_ACKS,
    RELAY_PUBLISH_UPDATES,
    DirectoryUnavailable,
    FillKind,
    FillStep,
    RedisDirectory,
)
from sagemem.errors import ConfigurationError, InvalidValueError
from sagemem.redis_topology import namespace_node_url
from sagemem.spec.vocabulary import MessageKind
from sagemem.tiers.base import TierEntry
from sagemem.tiers.l2 import L2Tier
from sagemem.values import JSONValue
from tests.integration.polling import poll_until

WAIT_S = 10.0
KEY = "belief:x"


@pytest.fixture
async def client(redis_url: str, namespace: str) -> AsyncIterator[aioredis.Redis]:
    """A redis client owned by the test (the directory only borrows it), on the server that
    holds the namespace's keys."""
    owned = aioredis.Redis.from_url(
        await namespace_node_url(redis_url, namespace), socket_timeout=WAIT_S
    )
    try:
        yield owned
    finally:
        await owned.aclose()


@pytest.fixture
def directory(client: aioredis.Redis, namespace: str) -> RedisDirectory:
    """A directory with the default bounds."""
    return RedisDirectory(client, namespace)


@pytest.fixture
async def l2(redis_url: str, namespace: str) -> AsyncIterator[L2Tier]:
    """The namespace's L2 tier, to read what leased fills stored."""
    async with L2Tier(redis_url, namespace=namespace) as tier:
        yield tier


@dataclass
class Home:
    """A stand-in for the home (Postgres): one key's version and value."""

    version: int
    value: JSONValue

    def commit(self) -> int:
        self.version += 1
        self.value = {"v": self.version}
        return self.version


async def leased(directory: RedisDirectory, agent: str, key: str = KEY) -> str:
    """Run the fill script for `agent`, expect an L2 miss, return the lease token."""
    step = await directory.fill(key, agent)
    assert step.kind is FillKind.LEASED, step
    assert step.lease_token is not None
    return step.lease_token


# A naive L2 update that only stores a version newer than the one L2 holds (what leases
# replace): with nothing left to compare against after an eviction, an old fill gets in.
SET_IF_NEWER = """
local current = redis.call('GET', KEYS[1])
if current then
  local held = tonumber(string.match(current, '^(%d+);'))
  if held and held >= tonumber(ARGV[1]) then return 0 end
end
redis.call('SET', KEYS[1], ARGV[2])
return 1
"""


# -- names and shapes ---------------------------------------------------------------------


def test_keys_match_l2_tier_and_bus_and_never_collide(
    client: aioredis.Redis, namespace: str
) -> None:
    """The L2 key is L2Tier's, the channel is the bus's, directory keys have their own prefix."""
    directory = RedisDirectory(client, namespace)
    assert directory.l2_key(KEY) == L2Tier(namespace=namespace).redis_key(KEY)
    bus = CoherenceBus(namespace=namespace)
    assert directory.channel_for("agent-1", "k|x") == bus.channel_for(
        "agent-1", MessageKind.INVALIDATE, "k|x"
    )
    for name in (directory.lease_key(KEY), directory.holders_key(KEY), directory.acks_key(KEY)):
        assert name.startswith(f"sagemem-dir:{{{namespace}}}:")
        assert not name.startswith(f"sagemem:{{{namespace}}}:")


def test_bad_configuration_and_arguments_are_refused(
    client: aioredis.Redis, namespace: str
) -> None:
    """Bounds must be positive and the holder cap within the bus's per-script cap."""
    with pytest.raises(ConfigurationError, match="lease_ttl_s"):
        RedisDirectory(client, namespace, lease_ttl_s=0)
    with pytest.raises(ConfigurationError, match="holders_max"):
        RedisDirectory(client, namespace, holders_max=257)
    with pytest.raises(ConfigurationError, match="holder_ttl_s"):
        RedisDirectory(client, namespace, holder_ttl_s=float("inf"))
    with pytest.raises(ConfigurationError, match=r"redis\.asyncio\.Redis"):
        RedisDirectory("redis://localhost", namespace)  # type: ignore[arg-type]  # on purpose
    with pytest.raises(ConfigurationError, match="command_slots"):
        RedisDirectory(client, namespace, command_slots=4)  # type: ignore[arg-type]  # on purpose
    for wrong in ("fast", "PUBLISH", None):
        with pytest.raises(ConfigurationError, match="RedisDirectory pubsub must be one of"):
            RedisDirectory(client, namespace, pubsub=wrong)  # type: ignore[arg-type]  # on purpose


async def test_calls_beyond_the_client_pool_wait_for_a_connection(
    redis_url: str, namespace: str
) -> None:
    """Forty concurrent fills through a one-connection client all succeed: a call waits for
    the connection instead of failing with redis-py's "Too many connections"."""
    pool = aioredis.ConnectionPool.from_url(
        await namespace_node_url(redis_url, namespace), max_connections=1
    )
    one = aioredis.Redis(connection_pool=pool)
    try:
        directory = RedisDirectory(one, namespace)
        steps = await asyncio.gather(*(directory.fill(f"k{i}", "a") for i in range(40)))
        assert all(step.registered for step in steps)
        assert [await directory.holders(f"k{i}") for i in range(40)] == [("a",)] * 40
    finally:
        await one.aclose()
        await pool.aclose()


async def test_bad_agent_version_and_token_are_refused(directory: RedisDirectory) -> None:
    """Agent ids, versions and tokens are checked before anything reaches Redis."""
    with pytest.raises(ConfigurationError, match="agent id"):
        await directory.fill(KEY, "a:b")
    with pytest.raises(InvalidValueError, match="version"):
        await directory.invalidate(KEY, -1, "writer")
    with pytest.raises(InvalidValueError, match="lease token"):
        await directory.leased_fill(KEY, "a", "", 1, None)
    assert await directory.holders(KEY) == ()


# -- fills and leases -----------------------------------------------------------------------


async def test_miss_registers_the_holder_and_hands_out_a_bounded_lease(
    client: aioredis.Redis, namespace: str
) -> None:
    """A miss registers the agent and returns a lease that expires within lease_ttl_s."""
    directory = RedisDirectory(client, namespace, lease_ttl_s=5.0, holder_ttl_s=30.0)
    step = await directory.fill(KEY, "a")

    assert step.kind is FillKind.LEASED
    assert step.registered
    assert step.lease_token
    assert await directory.holders(KEY) == ("a",)
    assert 0 < await client.pttl(directory.lease_key(KEY)) <= 5000
    assert 0 < await client.pttl(directory.holders_key(KEY)) <= 30000


async def test_leased_fill_is_read_back_through_l2_tier(
    directory: RedisDirectory, l2: L2Tier
) -> None:
    """A valid lease stores `<version>;<json>`, which L2Tier and the next fill read as a hit."""
    token = await leased(directory, "a")
    assert await directory.leased_fill(KEY, "a", token, 3, {"x": [1, "two"]}) is True

    assert await l2.read(KEY) == TierEntry({"x": [1, "two"]}, 3)
    step = await directory.fill(KEY, "b")
    assert step == FillStep(
        FillKind.L2_HIT, registered=True, entry=TierEntry({"x": [1, "two"]}, 3), holder_added=True
    )
    assert await directory.holders(KEY) == ("a", "b")


async def test_a_lease_is_used_once_and_only_by_its_agent(
    directory: RedisDirectory, l2: L2Tier
) -> None:
    """Another agent cannot use a lease; its owner uses it once (L2_LEASED_FILL consumes it)."""
    token = await leased(directory, "a")
    assert await directory.leased_fill(KEY, "b", token, 1, "b's") is False
    assert await directory.leased_fill(KEY, "a", token, 1, "a's") is True
    await l2.delete(KEY)
    assert await directory.leased_fill(KEY, "a", token, 1, "again") is False
    assert await l2.read(KEY) is None
    stats = directory.statistics()
    assert (stats.leased_fills_applied, stats.leased_fills_refused) == (1, 2)


async def test_a_newer_lease_voids_the_older_one(directory: RedisDirectory, l2: L2Tier) -> None:
    """L2_TAKE_LEASE voids older leases: the first filler's late fill is refused."""
    first = await leased(directory, "a")
    second = await leased(directory, "b")

    assert await directory.leased_fill(KEY, "a", first, 1, "a's") is False
    assert await directory.leased_fill(KEY, "b", second, 1, "b's") is True
    assert await l2.read(KEY) == TierEntry("b's", 1)


async def test_leased_fill_never_overwrites_a_copy_written_outside_the_protocol(
    directory: RedisDirectory, l2: L2Tier
) -> None:
    """A copy that appeared while the lease was out is kept; the lease is consumed."""
    token = await leased(directory, "a")
    await l2.fill(KEY, TierEntry("direct", 7))
    assert await directory.leased_fill(KEY, "a", token, 6, "older") is False
    assert await l2.read(KEY) == TierEntry("direct", 7)


async def test_lease_expires_after_its_ttl(
    client: aioredis.Redis, namespace: str, l2: L2Tier
) -> None:
    """A filler slower than lease_ttl_s is refused (safe: the copy is just not cached)."""
    directory = RedisDirectory(client, namespace, lease_ttl_s=0.2)
    token = await leased(directory, "a")
    lease_key = directory.lease_key(KEY)

    await poll_until(
        lambda: _gone(client, lease_key), "the lease's TTL to run out", WAIT_S, interval_s=0.02
    )
    assert await directory.leased_fill(KEY, "a", token, 1, "late") is False
    assert await l2.read(KEY) is None


async def _gone(client: aioredis.Redis, name: str) -> bool:
    return int(await client.exists(name)) == 0


# -- the memcache lease races -----------------------------------------------------------------


async def test_fill_racing_a_write_is_refused_so_l2_never_goes_back(
    directory: RedisDirectory, l2: L2Tier
) -> None:
    """A misses and reads v1; a writer commits v2 and relays (voiding the lease); A's late
    fill is refused, and the next filler caches v2."""
    home = Home(version=1, value={"v": 1})
    token_a = await leased(directory, "a")
    version_a, value_a = home.version, home.value  # A's home read, before the write

    version = home.commit()
    assert await directory.invalidate(KEY, version, "writer") == ("a",)

    assert await directory.leased_fill(KEY, "a", token_a, version_a, value_a) is False
    assert await l2.read(KEY) is None
    token_b = await leased(directory, "b")
    assert await directory.leased_fill(KEY, "b", token_b, home.version, home.value) is True
    assert await l2.read(KEY) == TierEntry({"v": 2}, 2)


async def test_fill_after_an_l2_eviction_is_refused_where_set_if_newer_goes_back(
    client: aioredis.Redis, directory: RedisDirectory, l2: L2Tier
) -> None:
    """With leases, A's v1 fill stays refused after B cached v2 and L2 evicted it; the naive
    set-if-newer, run through the same steps on another key, puts v1 back into L2."""
    naive_key = "belief:naive"
    set_if_newer = client.register_script(SET_IF_NEWER)
    home = Home(version=1, value={"v": 1})

    # A misses (lease) and reads v1 from the home.
    token_a = await leased(directory, "a")
    version_a, value_a = home.version, home.value
    # A writer commits v2 and relays: L2 deleted, A's lease void. (Naive: set L2 to v2.)
    version = home.commit()
    await directory.invalidate(KEY, version, "writer")
    await set_if_newer(keys=[l2.redis_key(naive_key)], args=[2, b'2;{"v":2}'])
    # B misses, reads v2, fills L2 with its lease.
    token_b = await leased(directory, "b")
    assert await directory.leased_fill(KEY, "b", token_b, home.version, home.value) is True
    # Redis evicts the L2 copy (of both keys).
    await client.delete(l2.redis_key(KEY), l2.redis_key(naive_key))
    # A's late fill of v1.
    assert await directory.leased_fill(KEY, "a", token_a, version_a, value_a) is False
    assert await set_if_newer(keys=[l2.redis_key(naive_key)], args=[1, b'1;{"v":1}']) == 1

    assert await l2.read(KEY) is None  # never went back to v1
    assert await l2.read(naive_key) == TierEntry({"v": 1}, 1)  # went back from v2 to v1


# -- targeted invalidation --------------------------------------------------------------------


class Inbox:
    """A bus handler recording one agent's events, awaitable."""

    def __init__(self) -> None:
        self.events: list[BusEvent] = []
        self._changed = asyncio.Condition()

    async def __call__(self, event: BusEvent) -> None:
        async with self._changed:
            self.events.append(event)
            self._changed.notify_all()

    async def wait_for_recall(self) -> None:
        def arrived() -> bool:
            return any(
                isinstance(e, Delivered) and isinstance(e.message, RecallMessage)
                for e in self.events
            )

        async with asyncio.timeout(WAIT_S), self._changed:
            await self._changed.wait_for(arrived)


async def test_invalidation_goes_only_to_the_holders(
    redis_url: str, namespace: str, directory: RedisDirectory
) -> None:
    """32 agents subscribed, 2 hold the key: one write sends 2 messages, in the bus's format."""
    agents = [f"agent-{i}" for i in range(32)]
    inboxes = {agent: Inbox() for agent in agents}
    async with CoherenceBus(redis_url, namespace=namespace) as bus:
        # Every agent follows both keys (sharded pub/sub, a cluster's default; else a no-op).
        await asyncio.gather(
            *(bus.subscribe(agent, inboxes[agent], keys=[KEY, "sentinel"]) for agent in agents)
        )
        for holder in ("agent-3", "agent-17"):
            await directory.fill(KEY, holder)

        messaged = await directory.invalidate(KEY, 5, "agent-0")
        # A recall to every agent after the write: a channel is ordered, so once it arrives,
        # any invalidation for that agent has arrived before it.
        await bus.publish_recall("sentinel", agents, sender="agent-0")
        await asyncio.gather(*(inbox.wait_for_recall() for inbox in inboxes.values()))

        received = {
            agent: [
                e.message
                for e in inbox.events
                if isinstance(e, Delivered) and isinstance(e.message, InvalidateMessage)
            ]
            for agent, inbox in inboxes.items()
        }
        assert messaged == ("agent-17", "agent-3")
        assert {agent: m for agent, m in received.items() if m} == {
            "agent-3": [InvalidateMessage(namespace, KEY, 5, "agent-0", seq=1)],
            "agent-17": [InvalidateMessage(namespace, KEY, 5, "agent-0", seq=1)],
        }
        assert not any(isinstance(e, Missed) for inbox in inboxes.values() for e in inbox.events)
        assert bus.statistics().invalidations_received == 2
        assert directory.statistics().invalidations_sent == 2
    assert await directory.holders(KEY) == ()  # the relay forgot them


async def test_the_sender_is_not_messaged_and_keeps_its_registration(
    directory: RedisDirectory,
) -> None:
    """The writer gets no message about its own write; other holders are messaged once."""
    await directory.fill(KEY, "writer")
    await directory.fill(KEY, "reader")

    assert await directory.invalidate(KEY, 2, "writer") == ("reader",)
    assert await directory.holders(KEY) == ("writer",)
    assert await directory.invalidate(KEY, 3, "other") == ("writer",)
    assert await directory.invalidate(KEY, 4, "other") == ()


async def test_a_write_update_relay_stores_its_value_in_l2_unless_a_newer_one_was_relayed(
    directory: RedisDirectory, l2: L2Tier
) -> None:
    """L2_SET_IF_NEWER: the update relay leaves its value in L2 (a later fill hits), but a
    relay of an older version that comes after a newer one's (an invalidation or an update)
    only deletes, so L2 never goes back to the older value."""
    update = (RELAY_L2_DELETE, RELAY_L2_SET, RELAY_PUBLISH_UPDATES)
    relayed = await directory.relay(KEY, 3, "w3", update, value={"v": 3})
    assert relayed.performed == update
    assert await l2.read(KEY) == TierEntry({"v": 3}, 3)
    assert (await directory.fill(KEY, "reader")).kind is FillKind.L2_HIT

    late = await directory.relay(KEY, 2, "w2", update, value={"v": 2})
    assert late.performed == update  # the conditional effect ran; its condition did not hold
    assert await l2.read(KEY) is None  # deleted (L2_DELETE), never set back to version 2

    await directory.relay(KEY, 5, "w5", (RELAY_L2_DELETE, RELAY_PUBLISH))
    await directory.relay(KEY, 4, "w4", update, value={"v": 4})
    assert await l2.read(KEY) is None  # version 5 was relayed first: 4 stays out of L2
    await directory.relay(KEY, 6, "w6", update, value=[6])
    assert await l2.read(KEY) == TierEntry([6], 6)


async def test_a_relay_that_stores_in_l2_needs_the_value(directory: RedisDirectory) -> None:
    """L2_SET_IF_NEWER without the committed value is refused before anything runs."""
    with pytest.raises(InvalidValueError, match="value"):
        await directory.relay(KEY, 2, "w", (RELAY_L2_DELETE, RELAY_L2_SET))
    assert await directory.holders(KEY) == ()


async def test_a_removed_holder_is_not_messaged(directory: RedisDirectory) -> None:
    """DIRECTORY_REMOVE_HOLDER (evict, write from S) stops later invalidations."""
    await directory.fill(KEY, "a")
    await directory.fill(KEY, "b")

    assert await directory.remove_holder(KEY, "a") is True
    assert await directory.remove_holder(KEY, "a") is False
    assert await directory.invalidate(KEY, 2, "writer") == ("b",)


async def test_holders_are_capped_and_the_overflow_is_not_registered(
    client: aioredis.Redis, namespace: str
) -> None:
    """Past holders_max a fill is told it is not registered (so it must not cache)."""
    directory = RedisDirectory(client, namespace, holders_max=2)
    steps = [await directory.fill(KEY, agent) for agent in ("a", "b", "c")]

    assert [step.registered for step in steps] == [True, True, False]
    assert (await directory.fill(KEY, "a")).registered  # a holder may renew
    assert await directory.invalidate(KEY, 2, "writer") == ("a", "b")
    assert directory.statistics().registrations_refused == 1


# -- strict mode: acknowledgements ------------------------------------------------------------


async def test_strict_acks_are_counted_and_cleared(client: aioredis.Redis, namespace: str) -> None:
    """PUBLISH_INVALIDATIONS_AWAIT_ACKS records one owed ack per holder; SEND_ACK clears it."""
    directory = RedisDirectory(client, namespace, holder_ttl_s=60.0)
    await directory.fill(KEY, "a")
    await directory.fill(KEY, "b")

    assert await directory.invalidate(KEY, 2, "writer", await_acks=True) == ("a", "b")
    assert await directory.pending_acks(KEY) == ("a", "b")
    assert 0 < await client.pttl(directory.acks_key(KEY)) <= 60000
    assert await directory.ack(KEY, "a") is True
    assert await directory.ack(KEY, "a") is False
    assert await directory.pending_acks(KEY) == ("b",)
    assert await directory.expire_holder(KEY, "b") is False  # its read lease is still live
    assert await directory.ack(KEY, "b") is True
    assert await directory.pending_acks(KEY) == ()
    assert directory.statistics().acks_received == 2


async def test_coherent_relay_records_no_acks(directory: RedisDirectory) -> None:
    """PUBLISH_INVALIDATIONS (coherent) owes nothing."""
    await directory.fill(KEY, "a")
    await directory.invalidate(KEY, 2, "writer")
    assert await directory.pending_acks(KEY) == ()


async def test_strict_miss_waits_while_an_ack_is_owed(directory: RedisDirectory) -> None:
    """Strict FETCH_UNSETTLED: no registration, no lease until the ack arrives."""
    await directory.fill(KEY, "a")
    await directory.invalidate(KEY, 2, "writer", await_acks=True)

    step = await directory.fill(KEY, "b", strict=True)
    assert step == FillStep(FillKind.UNSETTLED, registered=False, acks_owed=1)
    assert await directory.holders(KEY) == ()
    await directory.ack(KEY, "a")
    assert (await directory.fill(KEY, "b", strict=True)).kind is FillKind.LEASED


async def test_a_lapsed_holder_expires_with_its_owed_ack(
    client: aioredis.Redis, namespace: str
) -> None:
    """HOLDER_EXPIRE: once a holder's read lease lapses its owed ack no longer blocks and can
    be dropped; a holder whose lease is live keeps owing."""
    short = RedisDirectory(client, namespace, holder_ttl_s=0.3)
    long = RedisDirectory(client, namespace, holder_ttl_s=60.0)
    await short.fill(KEY, "a")
    await long.fill(KEY, "b")
    await long.invalidate(KEY, 2, "writer", await_acks=True)

    async def only_b_owes() -> bool:
        return await long.pending_acks(KEY) == ("b",)

    await poll_until(only_b_owes, "only b to owe an ack", WAIT_S, interval_s=0.02)
    assert await long.expire_holder(KEY, "a") is True
    assert await long.expire_holder(KEY, "a") is False
    assert await long.expire_holder(KEY, "b") is False
    assert await client.zrange(long.acks_key(KEY), 0, -1) == [b"b"]
    assert long.statistics().holders_expired == 1


async def test_expire_lapsed_drops_every_lapsed_ack(client: aioredis.Redis, namespace: str) -> None:
    """The sweeper's HOLDER_EXPIRE for a whole key returns the agents whose ack lapsed."""
    short = RedisDirectory(client, namespace, holder_ttl_s=0.3)
    long = RedisDirectory(client, namespace, holder_ttl_s=60.0)
    for agent in ("a", "c"):
        await short.fill(KEY, agent)
    await long.fill(KEY, "b")
    await long.invalidate(KEY, 2, "writer", await_acks=True)

    async def only_b_owes() -> bool:
        return await long.pending_acks(KEY) == ("b",)

    await poll_until(only_b_owes, "only b to owe an ack", WAIT_S, interval_s=0.02)
    assert await long.expire_lapsed(KEY) == ("a", "c")
    assert await long.expire_lapsed(KEY) == ()
    assert await client.zrange(long.acks_key(KEY), 0, -1) == [b"b"]


async def test_lapsed_holders_need_no_message(client: aioredis.Redis, namespace: str) -> None:
    """A registration past its deadline is dropped by the relay instead of messaged."""
    short = RedisDirectory(client, namespace, holder_ttl_s=0.2)
    await short.fill(KEY, "a")

    async def lapsed() -> bool:
        return await short.holders(KEY) == ()

    await poll_until(lapsed, "the registrations to lapse", WAIT_S, interval_s=0.02)
    await short.fill(KEY, "b")
    assert await short.invalidate(KEY, 2, "writer") == ("b",)


async def test_the_fill_reads_l2_and_takes_a_lease_only_where_the_rows_say(
    directory: RedisDirectory, client: aioredis.Redis
) -> None:
    """Without L2_READ in the hit row the copy is not returned; without L2_TAKE_LEASE in the
    miss row no lease is handed out (and none is stored), so an older lease stays valid."""
    older = await directory.fill(KEY, "a")
    unleased = await directory.fill(KEY, "b", lease_on_miss=False)
    assert unleased.kind is FillKind.LEASED
    assert unleased.lease_token is None
    assert await client.hget(directory.lease_key(KEY), "agent") == b"a"
    assert older.lease_token is not None
    assert await directory.leased_fill(KEY, "a", older.lease_token, 3, {"v": 3}) is True

    unread = await directory.fill(KEY, "c", read_on_hit=False)
    assert unread.kind is FillKind.L2_HIT
    assert unread.entry is None
    assert unread.registered
    read = await directory.fill(KEY, "c")
    assert read.entry is not None
    assert (read.entry.version, read.entry.value) == (3, {"v": 3})


async def test_lapsed_registrations_stay_where_the_table_has_no_holder_expire(
    client: aioredis.Redis, namespace: str
) -> None:
    """The scripts drop lapsed registrations and owed acks only where the HOLDER_EXPIRE row
    says so (`holders_lapse`): without it a lapsed holder is still messaged, still counted
    against the cap, and a strict fill still waits for its lapsed ack."""
    short = RedisDirectory(client, namespace, holder_ttl_s=0.2, holders_max=2)
    long = RedisDirectory(client, namespace, holder_ttl_s=60.0, holders_max=2)
    await short.fill(KEY, "a")
    await long.fill(KEY, "b")

    async def a_lapsed() -> bool:
        return await long.holders(KEY) == ("b",)

    await poll_until(a_lapsed, "a's registration to lapse", WAIT_S, interval_s=0.02)
    refused = await long.fill(KEY, "c", holders_lapse=False)
    assert refused.registered is False  # the lapsed registration still takes its place
    assert await long.add_holder(KEY, "c", holders_lapse=False) is False
    assert await client.zscore(long.holders_key(KEY), "a") is not None
    effects = (RELAY_L2_DELETE, RELAY_PUBLISH_AWAIT_ACKS)
    messaged = await long.relay(KEY, 2, "writer", effects, holders_lapse=False)
    assert messaged.messaged == ("a", "b")
    assert await long.ack(KEY, "b") is True
    step = await long.fill(KEY, "d", strict=True, holders_lapse=False)
    assert step.kind is FillKind.UNSETTLED  # a's lapsed ack is owed until HOLDER_EXPIRE
    assert (await long.fill(KEY, "d", strict=True)).kind is FillKind.LEASED  # the row drops it


# -- failures -----------------------------------------------------------------------------------


async def test_scripts_are_reloaded_after_script_flush(
    client: aioredis.Redis, directory: RedisDirectory
) -> None:
    """EVALSHA falls back to SCRIPT LOAD on NOSCRIPT (a restarted or flushed server)."""
    await directory.fill(KEY, "a")
    await client.script_flush()
    assert (await directory.fill(KEY, "b")).kind is FillKind.LEASED
    assert await directory.invalidate(KEY, 2, "writer") == ("a", "b")


async def test_unreachable_server_raises_directory_unavailable(namespace: str) -> None:
    """A driver error becomes DirectoryUnavailable naming the operation, with the cause."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    dead = aioredis.Redis(
        host="127.0.0.1", port=port, socket_connect_timeout=1.0, retry=Retry(NoBackoff(), 0)
    )
    try:
        directory = RedisDirectory(dead, namespace, command_timeout_s=5.0)
        with pytest.raises(DirectoryUnavailable, match="fill of key 'belief:x'") as caught:
            await directory.fill(KEY, "a")
        assert caught.value.__cause__ is not None
        assert caught.value.tier == "directory"
    finally:
        await dead.aclose()
