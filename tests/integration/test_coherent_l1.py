"""CoherentL1Tier on the real servers: reads, the three write paths, the hierarchy, bad input,
compare-and-swap, and the races of the protocol reproduced deterministically by pausing an
agent's adapter at the exact point where the race window opens."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from sagemem.coherence.bus import CoherenceBus
from sagemem.coherence.core import AgentCore, TraceRecord
from sagemem.coherence.directory import RedisDirectory
from sagemem.coherence.home import HomeStore
from sagemem.coherence.steps import ServerSteps
from sagemem.errors import (
    ClosedResourceError,
    ConfigurationError,
    InvalidKeyError,
    InvalidValueError,
    VersionConflict,
)
from sagemem.hierarchy import MemoryHierarchy
from sagemem.spec import TABLE
from sagemem.spec.conformance import LocalStep, divergences
from sagemem.spec.vocabulary import Event, Mode
from sagemem.tiers.l1_coherent import CoherentL1Tier, L1State
from sagemem.tiers.l2 import L2Tier
from sagemem.tiers.l3 import L3Tier
from sagemem.values import JSONValue
from tests.integration.coherent_cluster import Cluster
from tests.integration.polling import poll_until, wait_until
from tests.json_samples import TRICKY_VALUES, assert_same_json

WAIT_S = 10.0


def assert_trace_follows_the_table(records: list[TraceRecord], mode: Mode = Mode.COHERENT) -> None:
    """Every executed transition is a row of the spec's table in `mode`, and per key each one
    starts in the state the previous one left (zero divergence from the table)."""
    rows = {(r.source, r.event, r.guard): r for r in TABLE if mode in r.modes}
    last: dict[str, object] = {}
    for record in records:
        if record.event in (Event.DISCONNECT, Event.DROP_MESSAGE):
            continue  # bus rows: the entry keeps its state (checked by the core's own tests)
        rule = rows.get((record.source, record.event, record.guard))
        assert rule is not None, f"no table row for {record}"
        assert rule.target is record.target, record
        assert rule.effects == record.effects, record
        previous = last.get(record.key)
        assert previous is None or previous is record.source, (previous, record)
        last[record.key] = record.target
    # Replayed through a fresh core executing the spec's table, the recorded events and
    # answers take exactly the recorded transitions.
    replay = AgentCore(mode)
    for record in records:
        step = replay.handle(record.key, record.event, record.payload)
        assert step.fired, (step, record)
        assert (step.guard, step.target) == (record.guard, record.target), record
    # And against the model itself (its successor function, not the core): every step, with
    # the entry's local view before and after, is one the model takes in a reachable state.
    found = divergences(mode, [(r.key, local_step(r)) for r in records])
    assert not found, "\n".join(found[:20])


def local_step(record: TraceRecord) -> LocalStep:
    """The model's local record of a production step."""
    request, missed, operation = record.before
    target_request, target_missed, target_operation = record.after
    return LocalStep(
        record.source,
        request,
        missed,
        operation,
        record.event,
        record.guard,
        record.target,
        target_request,
        target_missed,
        target_operation,
        record.effects,
    )


# -- reads and writes ------------------------------------------------------------------------


async def test_write_through_invalidates_a_holder_and_the_next_read_refetches(
    cluster: Cluster,
) -> None:
    a = await cluster.agent("a")
    b = await cluster.agent("b")
    version = await a.write_through("k", {"belief": 1})
    assert await b.get("k") == {"belief": 1}
    assert b.get_state("k") is L1State.S
    assert await b.read("k") == await cluster.home.read("k")
    newer = await a.write_through("k", {"belief": 2})
    assert newer == version + 1
    await wait_until(lambda: b.get_state("k") is L1State.I, "b's copy invalidated")
    assert await b.get("k") == {"belief": 2}
    assert b.statistics().invalidations_received == 1
    assert_trace_follows_the_table(cluster.traces["a"])
    assert_trace_follows_the_table(cluster.traces["b"])


async def test_l1_write_takes_ownership_and_a_reader_recalls_the_value(cluster: Cluster) -> None:
    a = await cluster.agent("a")
    b = await cluster.agent("b")
    await b.get("k")  # b holds "absent"
    await a.set("k", "mine")
    assert a.get_state("k") is L1State.M
    await wait_until(lambda: b.get_state("k") is L1State.I, "b invalidated by the grant")
    home = await cluster.home.read("k")
    assert home is None  # the value lives in a's L1 until it is written back
    assert await b.get("k") == "mine"  # recalled: a writes back and keeps a Shared copy
    assert a.get_state("k") is L1State.S
    assert await cluster.home.read("k") is not None
    assert a.statistics().recalls_received == 1
    assert b.statistics().recalls_sent >= 1
    assert_trace_follows_the_table(cluster.traces["a"])


async def test_flush_and_close_write_owned_data_back(cluster: Cluster) -> None:
    a = await cluster.agent("a")
    await a.set("k1", [1, 2, 3])
    await a.flush("k1")
    assert a.get_state("k1") is L1State.E
    entry = await cluster.home.read("k1")
    assert entry is not None
    assert entry.value == [1, 2, 3]
    await a.set("k1", [4])
    assert a.get_state("k1") is L1State.M
    await a.set("k2", "two")
    await a.aclose()
    assert (await cluster.home.get("k1"), await cluster.home.get("k2")) == ([4], "two")
    with pytest.raises(ClosedResourceError):
        await a.get("k1")


async def test_delete_is_a_committed_version_that_every_agent_sees(cluster: Cluster) -> None:
    a = await cluster.agent("a")
    b = await cluster.agent("b")
    await a.write_through("k", "x")
    assert await b.get("k") == "x"
    assert await a.delete("k") is True
    await wait_until(lambda: b.get_state("k") is L1State.I, "b invalidated by the delete")
    assert await b.read("k") is None
    assert await b.get("k", "gone") == "gone"
    assert b.get_state("k") is L1State.S  # absence is cached like any version
    assert await a.delete("k") is False


@pytest.mark.parametrize("value", TRICKY_VALUES, ids=repr)
async def test_values_read_back_equal_from_l1_l2_and_the_home(
    cluster: Cluster, value: JSONValue
) -> None:
    a = await cluster.agent("a")
    b = await cluster.agent("b")
    c = await cluster.agent("c")
    await a.write_through("k", value)
    assert_same_json(await b.get("k"), value)  # from the home (fills L2)
    assert_same_json(await b.get("k"), value)  # L1 hit
    assert_same_json(await c.get("k"), value)  # from L2
    assert c.statistics().fills_from_l2 == 1
    await a.set("k", value)
    assert_same_json(await a.get("k"), value)  # the owner's copy
    assert_same_json(await b.get("k"), value)  # recalled


async def test_a_returned_container_is_a_copy(cluster: Cluster) -> None:
    a = await cluster.agent("a")
    await a.write_through("k", {"list": [1]})
    first = await a.get("k")
    assert isinstance(first, dict)
    first["list"] = "changed"
    assert await a.get("k") == {"list": [1]}


async def test_bad_input_is_refused_before_anything_changes(cluster: Cluster) -> None:
    a = await cluster.agent("a")
    with pytest.raises(InvalidKeyError):
        await a.get("")
    with pytest.raises(InvalidValueError):
        await a.set("k", float("nan"))
    with pytest.raises(InvalidValueError):
        await a.write_through("k", {1: "int key"})  # type: ignore[dict-item]  # the bad input
    with pytest.raises(InvalidValueError):
        await a.compare_and_swap("k", "v", 0)
    with pytest.raises(InvalidValueError):
        await a.compare_and_swap("k", "v", None, on_conflict="sometimes")  # type: ignore[arg-type]  # the bad input
    assert a.get_state("k") is L1State.I
    assert await cluster.home.read("k") is None
    assert a.statistics().writes_through == 0


async def test_configuration_errors_say_what_to_fix(cluster: Cluster, redis_url: str) -> None:
    with pytest.raises(ConfigurationError, match="agent id"):
        CoherentL1Tier("bad id!", cluster.bus)
    with pytest.raises(ConfigurationError, match="mode"):
        CoherentL1Tier("a", cluster.bus, mode="eventual")
    with pytest.raises(ConfigurationError, match="capacity"):
        CoherentL1Tier("a", cluster.bus, capacity=0)
    idle = CoherenceBus(url=redis_url, namespace=cluster.bus.namespace)
    with pytest.raises(ConfigurationError, match="connect"):
        await CoherentL1Tier("a", idle).start()
    other = L3Tier(namespace="elsewhere")
    with pytest.raises(ConfigurationError, match="namespace"):
        await CoherentL1Tier("a", cluster.bus, home=other).start()


async def test_capacity_evicts_the_least_recently_used_entry(cluster: Cluster) -> None:
    a = await cluster.agent("a", capacity=2)
    b = await cluster.agent("b")
    for key in ("k1", "k2", "k3"):
        await b.write_through(key, key)
    await a.get("k1")
    await a.get("k2")
    await a.set("k3", "owned")  # a third entry: k1 (least recently used) is evicted
    await wait_until(lambda: a.get_state("k1") is L1State.I, "k1 evicted")
    assert a.statistics().evictions == 1
    assert a.statistics().entries == 2
    assert await b.get("k1") == "k1"


# -- compare-and-swap -------------------------------------------------------------------------


async def test_compare_and_swap_commits_only_at_the_expected_version(cluster: Cluster) -> None:
    a = await cluster.agent("a")
    b = await cluster.agent("b")
    created = await a.compare_and_swap("k", 1, None)
    with pytest.raises(VersionConflict) as conflict:
        await b.compare_and_swap("k", 2, None)
    assert (conflict.value.expected, conflict.value.actual) == (None, created)
    swapped = await b.compare_and_swap("k", 2, created)
    assert swapped == created + 1
    with pytest.raises(VersionConflict) as stale:
        await a.compare_and_swap("k", 3, created)
    assert (stale.value.expected, stale.value.actual) == (created, swapped)
    assert await a.get("k") == 2
    assert_trace_follows_the_table(cluster.traces["a"])


async def test_conflict_policies_are_explicit(cluster: Cluster) -> None:
    a = await cluster.agent("a")
    version = await a.write_through("k", 10)
    await a.write_through("k", 20)
    merged = await a.compare_and_swap(
        "k", 5, version, on_conflict=lambda mine, theirs: [mine, theirs]
    )
    assert await a.get("k") == [5, 20]
    overwritten = await a.compare_and_swap("k", "last", version, on_conflict="last_writer_wins")
    assert overwritten == merged + 1
    assert await a.get("k") == "last"


async def test_an_owner_compares_versions_locally(cluster: Cluster) -> None:
    a = await cluster.agent("a")
    b = await cluster.agent("b")
    reserved = await a.set("k", "owned")
    assert reserved is not None
    with pytest.raises(VersionConflict):
        await a.compare_and_swap("k", "x", reserved + 5)
    assert a.get_state("k") is L1State.M  # the refused swap left the owned data alone
    assert await a.compare_and_swap("k", "swapped", reserved) == reserved + 1
    assert await b.get("k") == "swapped"


async def test_concurrent_updates_lose_nothing(cluster: Cluster) -> None:
    agents = [await cluster.agent(f"a{i}") for i in range(3)]

    async def bump(l1: CoherentL1Tier) -> None:
        for _ in range(15):
            await l1.update("counter", lambda v: v + 1 if isinstance(v, int) else 1, attempts=200)

    await asyncio.gather(*(bump(l1) for l1 in agents))
    assert [await l1.get("counter") for l1 in agents] == [45, 45, 45]
    assert sum(l1.statistics().conflicts for l1 in agents) > 0


# -- the hierarchy ----------------------------------------------------------------------------


async def test_hierarchies_of_coherent_agents_share_l2_and_l3(cluster: Cluster) -> None:
    a = CoherentL1Tier("a", cluster.bus, update_value_max_bytes=1)  # values of 2 bytes and more:
    # its relays store none in L2, so b's first read goes to the home
    b = CoherentL1Tier("b", cluster.bus)
    ha = MemoryHierarchy([a, cluster.l2, cluster.home])
    hb = MemoryHierarchy([b, cluster.l2, cluster.home])
    await ha.connect()
    await hb.connect()
    try:
        assert a.home_tier is cluster.home
        version = await ha.set("fact", 10, tier_index=2)
        assert version is not None
        assert await hb.get("fact") == 10  # from the home: a fill (promotion), nobody invalidated
        assert await ha.get("fact") == 10  # from L2, filled under b's lease
        assert ha.statistics().tier("L2").hits == 1
        assert hb.statistics().tier("L3").hits == 1
        assert await cluster.l2.read("fact") == await cluster.home.read("fact")
        assert b.get_state("fact") is L1State.S
        assert await ha.set("fact", 20, tier_index=1) == version + 1  # L2 write: a write-through
        await wait_until(lambda: b.get_state("fact") is L1State.I, "b invalidated")
        assert await cluster.l2.read("fact") is None  # the relay deleted the stale L2 copy
        assert await hb.get("fact") == 20
        await hb.set("fact", 3)  # tier 0: b owns it
        assert await ha.get("fact") == 3
        with pytest.raises(VersionConflict):
            await ha.compare_and_swap("fact", 4, version)  # stale: b's write came since
        current = await ha.read("fact")
        assert current is not None
        assert current.value == 3
        assert current.version is not None
        swapped = await ha.compare_and_swap("fact", 4, current.version)
        assert swapped == current.version + 1
        assert await hb.update("fact", lambda v: [v]) == swapped + 1
        assert await ha.get("fact") == [4]
        assert await ha.exists("fact")
        assert await hb.delete("fact") is True
        assert await ha.get("fact") is None
        await ha.set("other", "x", tier_index=2)
        await ha.clear()
        assert await hb.get("other") is None
    finally:
        await a.aclose()
        await b.aclose()


async def test_a_coherent_hierarchy_needs_a_home_and_one_namespace(cluster: Cluster) -> None:
    with pytest.raises(ConfigurationError, match="L3Tier"):
        MemoryHierarchy([CoherentL1Tier("a", cluster.bus), cluster.l2])
    with pytest.raises(ConfigurationError, match="namespace"):
        MemoryHierarchy([CoherentL1Tier("a", cluster.bus), L2Tier(namespace="x"), cluster.home])


# -- the races, reproduced deterministically --------------------------------------------------


class Gate:
    """Pauses one call of an adapter method until the test opens the gate."""

    def __init__(self) -> None:
        self.reached = asyncio.Event()
        self.opened = asyncio.Event()

    def wrap(self, method: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
        async def paused(*args: Any, **kwargs: Any) -> Any:
            if not self.reached.is_set():
                self.reached.set()
                await self.opened.wait()
            return await method(*args, **kwargs)

        return paused

    async def until_reached(self) -> None:
        async with asyncio.timeout(WAIT_S):
            await self.reached.wait()


type _Wrapper = Callable[[Callable[..., Awaitable[Any]]], Callable[..., Awaitable[Any]]]


class Stepping:
    """A `server_steps` factory whose named steps are wrapped (paused by a Gate, slowed...);
    `made` holds the `ServerSteps` it built, so a test can reach the servers' objects."""

    def __init__(self, **wrappers: _Wrapper) -> None:
        self.wrappers = wrappers
        self.made: list[ServerSteps] = []

    def __call__(
        self, home: HomeStore, directory: RedisDirectory, bus: CoherenceBus
    ) -> ServerSteps:
        steps = ServerSteps(home, directory, bus)
        for name, wrap in self.wrappers.items():
            setattr(steps, name, wrap(getattr(steps, name)))
        self.made.append(steps)
        return steps


async def test_a_fill_racing_an_invalidation_is_returned_once_and_never_cached(
    cluster: Cluster,
) -> None:
    """a commits version 2 but its relay is paused; b's fill reads version 2 from the home
    (registering b as a holder) and pauses before its answer reaches b's core; a's relay then
    invalidates b.
    Without IS_D_I b would install version 2 after the relay forgot it as a holder, so the
    invalidation of version 3 would never reach it: stale forever. With it, b returns version
    2 once (the read overlapped the write) and caches nothing."""
    relay = Gate()
    answered = asyncio.Event()
    resume = asyncio.Event()
    pausing = asyncio.Event()

    def pause_after(read: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
        async def read_then_pause(key: str) -> Any:
            found = await read(key)
            if pausing.is_set():
                answered.set()
                await resume.wait()
            return found

        return read_then_pause

    a = await cluster.agent(
        "a", server_steps=Stepping(relay=relay.wrap), update_value_max_bytes=1
    )  # relays store no value: b reads the home
    b = await cluster.agent("b", server_steps=Stepping(home_read=pause_after))
    relay.reached.set()  # a's first write passes
    await a.write_through("k", "v1")
    relay.reached.clear()
    pausing.set()
    writer = asyncio.create_task(a.write_through("k", "v2"))
    await relay.until_reached()  # v2 is committed, its invalidations not yet published
    reader = asyncio.create_task(b.get("k"))
    async with asyncio.timeout(WAIT_S):
        await answered.wait()  # b registered as a holder and read v2 from the home
    assert b.get_state("k") is L1State.IS_D
    relay.opened.set()
    assert await writer == 2
    await wait_until(lambda: b.get_state("k") is L1State.IS_D_I, "the fill is invalidated")
    resume.set()
    assert await reader == "v2"
    assert b.get_state("k") is L1State.I  # returned once, never cached
    await a.write_through("k", "v3")
    assert await b.get("k") == "v3"
    assert_trace_follows_the_table(cluster.traces["b"])


async def test_fill_data_older_than_an_invalidation_is_fetched_again(cluster: Cluster) -> None:
    """b's fill reads version 1 and pauses; a commits version 2 and b hears of it. The data
    is older than what b now knows of: b fetches again (through the owner check) and returns
    version 2, never version 1."""
    answered = asyncio.Event()
    resume = asyncio.Event()

    def pause_once(read: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
        async def read_then_pause(key: str) -> Any:
            found = await read(key)
            if not answered.is_set():
                answered.set()
                await resume.wait()
            return found

        return read_then_pause

    a = await cluster.agent("a", update_value_max_bytes=1)  # relays store no value
    b = await cluster.agent("b", server_steps=Stepping(home_read=pause_once))
    await a.write_through("k", "v1")
    reader = asyncio.create_task(b.get("k"))
    async with asyncio.timeout(WAIT_S):
        await answered.wait()
    await a.write_through("k", "v2")
    await wait_until(lambda: b.core.snapshot("k").floor == 2, "b heard of version 2")
    resume.set()
    assert await reader == "v2"
    assert b.statistics().fills_discarded_stale == 1
    assert_trace_follows_the_table(cluster.traces["b"])


async def test_a_late_fill_cannot_put_an_older_version_back_into_l2_after_an_eviction(
    cluster: Cluster,
) -> None:
    """b's fill read version 1 and pauses before writing L2 (b's read has returned: the L2 fill
    runs after it); a commits version 2 (the relay deletes L2 and voids b's lease); Redis evicts
    whatever L2 held; c fills version 2. When b resumes, set-if-newer alone would accept nothing
    here, but after an eviction it would accept v1; the lease makes b's fill a no-op, so L2
    never goes back."""
    gate = Gate()
    stepping = Stepping(leased_fill=gate.wrap)
    a = await cluster.agent("a", update_value_max_bytes=1)  # relays store no value
    b = await cluster.agent("b", server_steps=stepping)
    c = await cluster.agent("c")
    await a.write_through("k", "v1")
    directory = stepping.made[0].directory
    reader = asyncio.create_task(b.get("k"))
    await gate.until_reached()
    await a.write_through("k", "v2")
    await cluster.redis.delete(directory.l2_key("k"))  # L2 evicts the key
    assert await c.get("k") == "v2"

    async def c_filled_l2() -> bool:  # c's leased fill runs after its read returned
        return await cluster.l2.read("k") is not None

    await poll_until(c_filled_l2, "c's fill of L2")
    assert await reader == "v1"  # the read returns without waiting for its L2 fill
    gate.opened.set()
    await wait_until(
        lambda: directory.statistics().leased_fills_refused == 1, "b's late fill was refused"
    )
    entry = await cluster.l2.read("k")
    assert entry is not None
    assert (entry.value, entry.version) == ("v2", 2)


async def test_an_owners_write_back_racing_a_recall_is_not_lost(cluster: Cluster) -> None:
    """a owns the key (M) and starts writing it back on eviction; b's read meanwhile finds the
    key owned and recalls it. The recall reaches a in MI_A and is ignored (the write-back is
    already on its way); b retries and reads a's value once the write-back lands."""
    gate = Gate()
    a = await cluster.agent("a", server_steps=Stepping(write_back=gate.wrap))
    b = await cluster.agent("b")
    await a.set("k", "owned")
    evicting = asyncio.create_task(a.evict("k"))
    await gate.until_reached()
    assert a.get_state("k") is L1State.MI_A
    reader = asyncio.create_task(b.get("k"))
    await wait_until(lambda: a.statistics().recalls_received >= 1, "the recall reached a")
    assert a.get_state("k") is L1State.MI_A
    gate.opened.set()
    assert await reader == "owned"
    await evicting
    assert a.get_state("k") is L1State.I
    assert a.fenced_writes() == []
    assert_trace_follows_the_table(cluster.traces["a"])
    assert any(
        r.event is Event.DELIVER_RECALL and r.source is L1State.MI_A for r in cluster.traces["a"]
    )


async def test_of_two_concurrent_deletes_exactly_one_removed_the_value(cluster: Cluster) -> None:
    """The delete's answer comes from the row as locked by its own commit: when two agents
    delete one live value at once, one says it removed it and the other found nothing."""
    a = await cluster.agent("a", mode="strict")
    b = await cluster.agent("b", mode="strict")
    for round_ in range(20):
        await a.write_through("k", round_)
        answers = await asyncio.gather(a.delete("k"), b.delete("k"))
        assert sorted(answers) == [False, True], (round_, answers)


async def test_idle_keys_are_forgotten_and_read_again_correctly(
    cluster: Cluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An agent touching many keys keeps nothing for keys it no longer holds (after an idle
    period); the next read of such a key fills it again with the current value."""
    import sagemem.coherence.driver as module

    monkeypatch.setattr(module, "FORGET_IDLE_S", 0.0)
    a = await cluster.agent("a")
    b = await cluster.agent("b")
    await b.write_through("k", "v1")
    assert await a.get("k") == "v1"
    await a.evict("k")
    a._driver.forget_idle(0.0)  # noticed idle
    a._driver.forget_idle(1.0)  # and forgotten
    assert "k" not in a.core
    assert a.get_state("k") is L1State.I
    await b.write_through("k", "v2")
    assert await a.get("k") == "v2"


@pytest.mark.parametrize("l2_copy", [False, True], ids=["home", "l2"])
async def test_a_forged_invalidation_cannot_stall_reads(
    cluster: Cluster, redis_url: str, l2_copy: bool
) -> None:
    """An invalidation naming a version the home never committed raises the reader's floor
    above anything a fill can return. The home's own answer (or L2's, past the relay bound)
    proves the floor bogus: the entry restarts empty and the read returns the current value,
    instead of refetching forever."""
    a = await cluster.agent("a", outbox_sweep_after_s=0.2)
    b = await cluster.agent("b")
    await b.write_through("k", "current")
    assert await a.get("k") == "current"  # a holds it; its fill also put the copy in L2
    if not l2_copy:
        await cluster.redis.delete(cluster.l2.redis_key("k"))
    flavour = "sharded" if cluster.bus.sharded else "classic"  # as every bus of a namespace
    forger = CoherenceBus(url=redis_url, namespace=cluster.bus.namespace, pubsub=flavour)
    await forger.connect()
    try:
        await forger.publish_invalidate("k", 10**12, ["a"], sender="mallory")
    finally:
        await forger.aclose()
    await wait_until(lambda: a.get_state("k") is L1State.I, "the forged message arrived")
    async with asyncio.timeout(WAIT_S):
        assert await a.get("k") == "current"
    assert a.statistics().floors_reset == 1
    assert a.get_state("k") is L1State.S
