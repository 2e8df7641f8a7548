"""Write-update on the real servers: a write-through sends its value to the holders, who keep
hitting on the new version (the spec's OUTBOX_RELAY_UPDATE and DELIVER_UPDATE rows), and
everything else still invalidates."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

import sagemem
from sagemem.coherence.bus import CoherenceBus
from sagemem.coherence.directory import RedisDirectory
from sagemem.errors import ConfigurationError
from sagemem.spec.vocabulary import Event, Mode
from sagemem.tiers.l1_coherent import CoherentL1Tier, L1State
from sagemem.values import JSONValue
from tests.integration.coherent_cluster import Cluster
from tests.integration.polling import wait_until
from tests.json_samples import TRICKY_VALUES, assert_same_json


def _fills(l1: CoherentL1Tier) -> int:
    """How many fills `l1` ran (from L2 or the home): what a miss costs, tracer or not (a
    traced tier answers every read through the table, so `hits` stays 0)."""
    statistics = l1.statistics()
    return statistics.fills_from_l2 + statistics.fills_from_home


async def _updated(holder: CoherentL1Tier, count: int) -> None:
    await wait_until(lambda: holder.statistics().updates_received >= count, "an update arrived")


async def test_a_holder_moves_to_the_written_value_without_a_miss(cluster: Cluster) -> None:
    """After a write-update returns, a holder's next read is served by its L1 (no fill) on
    the new version."""
    writer = await cluster.agent("writer", write_policy="update")
    holder = await cluster.agent("holder")
    await writer.write_through("k", {"n": 1})
    assert await holder.get("k") == {"n": 1}
    fills = _fills(holder)
    version = await writer.write_through("k", {"n": 2})
    await _updated(holder, 1)
    entry = await holder.read("k")
    assert entry is not None
    assert (entry.value, entry.version) == ({"n": 2}, version)
    assert _fills(holder) == fills
    assert holder.core.state("k") is L1State.S
    assert writer.statistics().updates_sent == 1
    rows = cluster.fired("holder", Event.DELIVER_UPDATE)
    assert [(r.source, r.target) for r in rows] == [(L1State.S, L1State.S)]


@pytest.mark.parametrize("value", TRICKY_VALUES, ids=range(len(TRICKY_VALUES)))
async def test_an_updated_copy_reads_back_equal_to_what_was_written(
    cluster: Cluster, value: JSONValue
) -> None:
    """Every kind of JSON value an update carries is read back by the holder as written."""
    writer = await cluster.agent("writer", write_policy="update")
    holder = await cluster.agent("holder")
    await writer.write_through("k", "before")
    await holder.get("k")
    await writer.write_through("k", value)
    await _updated(holder, 1)
    assert_same_json(await holder.get("k"), value)


async def test_the_holder_stays_registered_and_keeps_receiving_updates(cluster: Cluster) -> None:
    """An updated holder is still a holder: every later write-update reaches it too."""
    writer = await cluster.agent("writer", write_policy="update")
    holder = await cluster.agent("holder")
    await writer.write_through("k", 0)
    await holder.get("k")
    fills = _fills(holder)
    for n in range(1, 6):
        await writer.write_through("k", n)
        await _updated(holder, n)
        assert await holder.get("k") == n
    assert _fills(holder) == fills
    assert holder.statistics().invalidations_received == 0


async def test_a_value_above_the_bound_is_invalidated_instead(cluster: Cluster) -> None:
    """A value whose JSON text is longer than update_value_max_bytes invalidates the holders,
    who then miss and read it from the home."""
    writer = await cluster.agent("writer", write_policy="update", update_value_max_bytes=64)
    holder = await cluster.agent("holder")
    await writer.write_through("k", "small")
    await holder.get("k")
    await writer.write_through("k", "x" * 100)
    await wait_until(
        lambda: holder.statistics().invalidations_received == 1, "an invalidation arrived"
    )
    fills = _fills(holder)
    assert await holder.get("k") == "x" * 100
    assert _fills(holder) == fills + 1
    assert holder.statistics().updates_received == 0


async def test_a_delete_and_an_owned_write_invalidate(cluster: Cluster) -> None:
    """Only a write-through's committed value is sent: a delete and an ownership grant (whose
    value is at the owner) invalidate the holders."""
    writer = await cluster.agent("writer", write_policy="update")
    holder = await cluster.agent("holder")
    await writer.write_through("d", "v1")
    await writer.write_through("o", "v1")
    await holder.get("d")
    await holder.get("o")
    assert await writer.delete("d") is True
    await writer.set("o", "owned")
    await wait_until(
        lambda: holder.statistics().invalidations_received == 2, "two invalidations arrived"
    )
    assert holder.statistics().updates_received == 0
    assert await holder.get("d") is None
    assert await holder.get("o") == "owned"


async def test_an_invalidating_writer_and_an_updating_writer_share_a_namespace(
    cluster: Cluster,
) -> None:
    """The policy is the writer's: holders handle both kinds of message, in any order."""
    updater = await cluster.agent("updater", write_policy="update")
    invalidator = await cluster.agent("invalidator")
    holder = await cluster.agent("holder")
    await updater.write_through("k", "u1")
    await holder.get("k")
    await invalidator.write_through("k", "i2")
    assert await holder.get("k") == "i2"
    await updater.write_through("k", "u3")
    await _updated(holder, 1)
    assert await holder.get("k") == "u3"


async def test_an_updating_writer_gets_its_copy_back_and_its_next_read_hits(
    cluster: Cluster,
) -> None:
    """Under write-update the writer refetches its own copy after the write returns (the
    table's READ from I, in the background): its next read is served by its L1 with the version
    it wrote, counted as a refetch and not as a miss."""
    writer = await cluster.agent("writer", write_policy="update")
    assert writer.refetch_after_write is True
    version = await writer.write_through("k", {"n": 1})
    await wait_until(lambda: writer.core.state("k") is L1State.S, "the writer refetched")
    fills = _fills(writer)
    entry = await writer.read("k")
    assert entry is not None
    assert (entry.value, entry.version) == ({"n": 1}, version)
    assert _fills(writer) == fills  # served by the L1
    assert writer.statistics().refetches == 1
    reads = [r for r in cluster.fired("writer", Event.READ) if r.source is L1State.I]
    assert len(reads) == 1  # the refetch went through the table's read row


async def test_the_write_update_leaves_its_value_in_l2_for_the_next_miss(
    cluster: Cluster,
) -> None:
    """The update relay stores the written value in L2 (L2_SET_IF_NEWER): the writer's refetch
    and a new reader's miss are L2 hits, not home reads; so does an invalidating writer's own
    relay (OUTBOX_RELAY_STORE); a delete leaves L2 empty, so the next miss reads the home."""
    writer = await cluster.agent("writer", write_policy="update")
    version = await writer.write_through("k", {"n": 1})
    await wait_until(lambda: writer.core.state("k") is L1State.S, "the writer refetched")
    assert (writer.statistics().fills_from_l2, writer.statistics().fills_from_home) == (1, 0)
    reader = await cluster.agent("reader")
    entry = await reader.read("k")
    assert entry is not None
    assert (entry.value, entry.version) == ({"n": 1}, version)
    assert (reader.statistics().fills_from_l2, reader.statistics().fills_from_home) == (1, 0)

    plain = await cluster.agent("plain")
    await plain.write_through("other", "x")
    late = await cluster.agent("late")
    assert await late.get("other") == "x"
    assert (late.statistics().fills_from_l2, late.statistics().fills_from_home) == (1, 0)
    stored = await cluster.l2.read("other")
    assert stored is not None
    assert stored.value == "x"

    await plain.delete("other")
    gone = await cluster.agent("gone")
    assert await gone.get("other") is None
    assert (gone.statistics().fills_from_l2, gone.statistics().fills_from_home) == (0, 1)


async def test_only_values_within_the_bound_are_stored_in_l2(cluster: Cluster) -> None:
    """An invalidating writer's relay stores a value whose JSON text is at most
    `update_value_max_bytes` (OUTBOX_RELAY_STORE) and leaves L2 empty for a longer one
    (OUTBOX_RELAY): the next miss then reads the home."""
    writer = await cluster.agent("writer", update_value_max_bytes=4)
    await writer.write_through("short", "ab")  # '"ab"': 4 bytes
    await writer.write_through("long", "abc")  # 5 bytes
    assert (await cluster.l2.read("short")) is not None
    assert (await cluster.l2.read("long")) is None
    reader = await cluster.agent("reader")
    assert await reader.get("short") == "ab"
    assert await reader.get("long") == "abc"
    assert (reader.statistics().fills_from_l2, reader.statistics().fills_from_home) == (1, 1)


@pytest.mark.parametrize("value", TRICKY_VALUES, ids=range(len(TRICKY_VALUES)))
async def test_a_value_the_relay_stored_in_l2_reads_back_equal_to_what_was_written(
    cluster: Cluster, value: JSONValue
) -> None:
    """Every kind of JSON value the update relay stores in L2 is read back as written by an
    agent whose miss it serves."""
    writer = await cluster.agent("writer", write_policy="update")
    await writer.write_through("k", value)
    reader = await cluster.agent("reader")
    assert_same_json(await reader.get("k"), value)
    assert reader.statistics().fills_from_l2 == 1


async def test_a_writer_closed_right_after_its_writes_leaves_no_registration(
    cluster: Cluster,
) -> None:
    """Closing cancels the refetches not yet run: the closed writer is a holder of none of
    the keys it wrote (a registration left behind would be messaged, and waited for by strict
    writers, until it lapsed)."""
    writer = await cluster.agent("writer", write_policy="update")
    keys = [f"k{i}" for i in range(20)]
    for key in keys:
        await writer.write_through(key, key)
    await writer.aclose()
    directory = RedisDirectory(cluster.redis, cluster.bus.namespace)
    assert [await directory.holders(key) for key in keys] == [()] * len(keys)


@pytest.mark.parametrize("options", [{}, {"write_policy": "update", "refetch_after_write": False}])
async def test_without_refetch_the_writer_is_left_without_a_copy(
    cluster: Cluster, options: dict[str, Any]
) -> None:
    """Under invalidate (the default) or with refetch_after_write=False, the written key stays
    Invalid at the writer until it reads it."""
    writer = await cluster.agent("writer", **options)
    await writer.write_through("k", 1)
    await asyncio.sleep(0.2)
    assert writer.core.state("k") is L1State.I
    assert writer.statistics().refetches == 0
    assert await writer.get("k") == 1


async def test_concurrent_updates_leave_every_holder_on_the_last_version(cluster: Cluster) -> None:
    """Updates that race (and may arrive out of order) never move a holder back: once the
    writes return, each holder's copy is the home's last version."""
    writers = [await cluster.agent(f"w{i}", write_policy="update") for i in range(3)]
    holders = [await cluster.agent(f"h{i}") for i in range(3)]
    await writers[0].write_through("k", -1)
    for holder in holders:
        await holder.get("k")
    await asyncio.gather(
        *(w.write_through("k", 10 * i + n) for i, w in enumerate(writers) for n in range(4))
    )
    newest = await cluster.home.read("k")
    assert newest is not None

    def settled() -> bool:
        return all(
            h.core.state("k") is not L1State.S or h.core.snapshot("k").version == newest.version
            for h in holders
        )

    await wait_until(settled, "every holder on the last version or dropped")
    for holder in holders:
        entry = await holder.read("k")
        assert entry is not None
        assert (entry.value, entry.version) == (newest.value, newest.version)


async def test_connect_builds_an_updating_hierarchy(
    redis_url: str, postgres_dsn: str, namespace: str
) -> None:
    """`sagemem.connect(write_policy="update", agent_id=...)` writes with updates."""
    async with (
        sagemem.connect(
            redis_url=redis_url,
            postgres_dsn=postgres_dsn,
            namespace=namespace,
            agent_id="writer",
            write_policy="update",
        ) as writer,
        sagemem.connect(
            redis_url=redis_url, postgres_dsn=postgres_dsn, namespace=namespace, agent_id="reader"
        ) as reader,
    ):
        await writer.set("k", "v1", tier_index=2)
        assert await reader.get("k") == "v1"
        await writer.set("k", "v2", tier_index=2)
        l1 = reader.tiers[0]
        assert isinstance(l1, CoherentL1Tier)
        await _updated(l1, 1)
        assert await reader.get("k") == "v2"
        await reader.clear()


@pytest.mark.parametrize(
    ("options", "needle"),
    [
        ({"write_policy": "broadcast"}, "write_policy must be one of"),
        ({"write_policy": None}, "write_policy must be one of"),
        ({"write_policy": "update", "mode": Mode.STRICT}, "coherent mode's"),
        ({"write_policy": "update", "update_value_max_bytes": 0}, "update_value_max_bytes"),
        ({"write_policy": "update", "update_value_max_bytes": 10**6}, "update_value_max_bytes"),
        ({"write_policy": "update", "update_value_max_bytes": 1.5}, "update_value_max_bytes"),
        ({"refetch_after_write": "yes"}, "refetch_after_write"),
        ({"refetch_after_write": 1}, "refetch_after_write"),
    ],
)
async def test_bad_write_policy_options_are_refused(
    redis_url: str, namespace: str, options: dict[str, Any], needle: str
) -> None:
    """A policy that does not exist, write-update in strict mode and a bound out of range are
    a ConfigurationError naming the option."""
    bus = CoherenceBus(redis_url=redis_url, namespace=namespace)
    with pytest.raises(ConfigurationError, match=needle):
        CoherentL1Tier("agent", bus, **options)


async def test_connect_refuses_a_write_policy_without_an_agent(
    redis_url: str, postgres_dsn: str, namespace: str
) -> None:
    """Without agent_id there is no coherent L1 to apply the policy: refused before opening."""
    with pytest.raises(ConfigurationError, match="needs agent_id"):
        sagemem.connect(
            redis_url=redis_url,
            postgres_dsn=postgres_dsn,
            namespace=namespace,
            write_policy="update",
        )
