"""Coherence through a failover (issue 17): agent processes work on hot keys of a namespace
on a real local cluster (its own 3 + 3, not the session's) while the primary serving the
namespace's hash slot is killed (SIGKILL) and its replica takes over. Asynchronous replication
may lose the last holder registrations, owed acks, sequence numbers and L2 changes; every
agent's bus link to the old primary drops with it, so every agent resynchronises (drops its
copies), and a strict write settles only once the promoted node's directory is older than the
holders' link trust (its birth key names the node: the promotion is a new birth).

Checked with the history checkers of `test_history_multiprocess`: strict histories are
linearizable; coherent stale reads are covered and nothing is stale once the agents stop;
both: every agent's last read equals the home and every home version was committed by exactly
one recorded operation (no acknowledged write lost). The recovery (promotion, the agents'
first completed operation after the kill) is measured and printed, never asserted."""

from __future__ import annotations

import asyncio
import os
import signal
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
import redis.asyncio as redis_asyncio

from sagemem.coherence.bus import CoherenceBus
from sagemem.coherence.directory import RedisDirectory
from sagemem.coherence.messages import (
    BusEvent,
    Delivered,
    InvalidateMessage,
    Missed,
    Resynced,
)
from sagemem.errors import TierUnavailable
from sagemem.keyspace import directory_birth_key, l2_prefix
from sagemem.redis_topology import key_hash_slot
from tests.integration.cluster.conftest import (
    LocalCluster,
)
from tests.integration.cluster.topology import cluster_nodes, info_fields, url_with_port
from tests.integration.test_history_multiprocess import (
    _check_coherent_run,
    _check_strict_run,
    _Run,
    _run_agents,
)

pytestmark = pytest.mark.cluster

_WORKLOAD_S = 8.0
_KILL_AFTER_S = 3.0  # once the namespace's directory has matured and operations flow
_PROMOTION_TIMEOUT_S = 30.0  # a bound on waiting, not a claim about speed
# A coherent copy is stale at most until its holder's link to the dead primary is seen dead
# (at once for a killed process; a health check otherwise) or an invalidation arrives: far
# below this bound, which is there to catch a copy nobody will ever invalidate.
_MAX_STALENESS_NS = 5_000_000_000


class _Failover:
    """Kills the primary serving `namespace`'s slot and records when its replica took over."""

    def __init__(self, cluster: LocalCluster, namespace: str) -> None:
        self.cluster = cluster
        self.slot = key_hash_slot(l2_prefix(namespace))
        self.killed_at_ns = 0
        self.promoted_after_s = 0.0
        self.victim_port = 0

    async def __call__(self) -> None:
        await asyncio.sleep(_KILL_AFTER_S)
        url = self.cluster.url
        nodes = await cluster_nodes(url)
        [victim] = [node for node in nodes if node.is_primary and node.owns(self.slot)]
        [heir] = [node for node in nodes if node.primary_id == victim.node_id]
        [pid] = [
            node.pid
            for node in self.cluster.status().nodes
            if node.address == url_with_port(url, victim.port)
        ]
        assert pid is not None
        self.victim_port = victim.port
        self.killed_at_ns = time.monotonic_ns()
        os.kill(pid, signal.SIGKILL)
        heir_url = url_with_port(url, heir.port)
        deadline = time.monotonic() + _PROMOTION_TIMEOUT_S
        while time.monotonic() < deadline:
            try:
                info = await info_fields(heir_url, "INFO", "replication")
            except OSError:
                info = {}
            if info.get("role") == "master":
                self.promoted_after_s = (time.monotonic_ns() - self.killed_at_ns) / 1e9
                return
            await asyncio.sleep(0.02)
        raise AssertionError(f"the replica on port {heir.port} was not promoted in time")

    def recovery(self, run: _Run) -> str:
        """When the replica was promoted and when each agent completed its first operation
        invoked after the kill (its service resumed), relative to the kill."""
        firsts: dict[str, int] = {}
        for op in run.operations:
            if op.invoked_at_ns >= self.killed_at_ns and op.completed_at_ns is not None:
                at = op.completed_at_ns - self.killed_at_ns
                firsts[op.agent_id] = min(firsts.get(op.agent_id, at), at)
        resumed = ", ".join(f"{agent} {at / 1e9:.2f} s" for agent, at in sorted(firsts.items()))
        return (
            f"killed the primary on port {self.victim_port} (slot {self.slot}); its replica "
            f"was promoted after {self.promoted_after_s:.2f} s; each agent's first operation "
            f"invoked after the kill completed after: {resumed}"
        )


async def test_strict_histories_through_a_failover_are_linearizable(
    request: pytest.FixtureRequest,
    doomed_cluster: LocalCluster,
    postgres_dsn: str,
    pg_schema: str,
    tmp_path: Path,
) -> None:
    """Four strict agent processes (tier-0 writes, write-throughs, swaps, deletes) while the
    primary serving their namespace is killed: every key's history is linearizable and every
    home version is accounted for."""
    namespace = f"t{uuid.uuid4().hex}"
    failover = _Failover(doomed_cluster, namespace)
    agents = [f"s{index}" for index in range(4)]
    run = await _run_agents(
        dict.fromkeys(agents, "strict"),
        seconds=_WORKLOAD_S,
        redis_url=doomed_cluster.url,
        postgres_dsn=postgres_dsn,
        namespace=namespace,
        schema=pg_schema,
        directory=tmp_path,
        mix="35,15,15,10,25",
        during=failover,
    )
    assert failover.killed_at_ns > 0
    assert any(op.invoked_at_ns > failover.killed_at_ns for op in run.operations)
    _check_strict_run(
        request, run, agents, "strict history through a failover", failover.recovery(run)
    )


async def test_coherent_histories_through_a_failover_leave_nothing_stale(
    request: pytest.FixtureRequest,
    doomed_cluster: LocalCluster,
    postgres_dsn: str,
    pg_schema: str,
    tmp_path: Path,
) -> None:
    """Four coherent agent processes while the primary serving their namespace is killed:
    every stale read is covered (bounded), sessions hold, nothing is stale once they stop,
    and no acknowledged write is lost."""
    namespace = f"t{uuid.uuid4().hex}"
    failover = _Failover(doomed_cluster, namespace)
    agents = [f"c{index}" for index in range(4)]
    run = await _run_agents(
        dict.fromkeys(agents, "coherent"),
        seconds=_WORKLOAD_S,
        redis_url=doomed_cluster.url,
        postgres_dsn=postgres_dsn,
        namespace=namespace,
        schema=pg_schema,
        directory=tmp_path,
        during=failover,
    )
    assert failover.killed_at_ns > 0
    _check_coherent_run(
        request,
        run,
        agents,
        "coherent history through a failover",
        failover.recovery(run),
        max_staleness_ns=_MAX_STALENESS_NS,
    )


async def _wait_for(what: str, condition: Callable[[], Awaitable[bool]]) -> None:
    deadline = time.monotonic() + _PROMOTION_TIMEOUT_S
    while time.monotonic() < deadline:
        if await condition():
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"{what} not within {_PROMOTION_TIMEOUT_S} s")


async def test_a_demoted_primary_is_left_and_every_subscriber_resynchronises(
    doomed_cluster: LocalCluster,
) -> None:
    """A manual failover demotes the node serving the namespace to a replica that stays up
    (its connections too): the demoted node ends the bus's shard subscriptions (or the
    probe sees MOVED), the bus gives the link up (the subscriber is told it missed messages,
    then resynchronised), finds the promoted node, resubscribes the keys it follows there,
    and messages flow again through it."""
    namespace = f"t{uuid.uuid4().hex}"
    events: list[BusEvent] = []

    async def handler(event: BusEvent) -> None:
        events.append(event)

    bus = CoherenceBus(redis_url=doomed_cluster.url, namespace=namespace)
    sender = CoherenceBus(redis_url=doomed_cluster.url, namespace=namespace)
    async with bus, sender:
        subscription = await bus.subscribe("a", handler)
        await subscription.follow(["k"])  # sharded pub/sub, the default on a cluster
        before = bus.statistics().cluster_node
        assert before is not None
        old_port = int(before.rsplit(":", 1)[1])
        nodes = await cluster_nodes(doomed_cluster.url)
        [old] = [node for node in nodes if node.port == old_port]
        [heir] = [node for node in nodes if node.primary_id == old.node_id]
        heir_url = url_with_port(doomed_cluster.url, heir.port)
        await info_fields(heir_url, "CLUSTER", "FAILOVER")  # replies OK; the switch follows

        async def moved() -> bool:
            statistics = bus.statistics()
            resynced = any(isinstance(event, Resynced) for event in events)
            return statistics.rehomes == 1 and statistics.connected and resynced

        await _wait_for("the bus on the promoted node", moved)
        assert bus.statistics().cluster_node == f"127.0.0.1:{heir.port}"
        assert [type(event) for event in events] == [Missed, Resynced]
        old_url = url_with_port(doomed_cluster.url, old_port)
        demoted = await info_fields(old_url, "INFO", "replication")
        assert demoted["role"] == "slave"  # the old primary is alive, as a replica

        async def delivered() -> bool:
            try:  # the sender's bus meets MOVED once, then follows the slot too
                await sender.publish_invalidate("k", 7, ["a"], sender="b")
            except TierUnavailable:
                return False
            return any(isinstance(event, Delivered) for event in events)

        await _wait_for("an invalidation through the new primary", delivered)
        [message] = {event.message for event in events if isinstance(event, Delivered)}
        assert isinstance(message, InvalidateMessage)
        assert (message.key, message.version) == ("k", 7)


async def test_a_promoted_replica_is_a_new_birth_of_the_directory(
    doomed_cluster: LocalCluster,
) -> None:
    """The namespace's directory birth (what a strict write's settling waits on) is renewed on
    the replica a failover promotes, although the replica holds the old primary's birth key:
    the key names the node that wrote it, and the promoted node is another."""
    namespace = f"t{uuid.uuid4().hex}"
    bus = CoherenceBus(redis_url=doomed_cluster.url, namespace=namespace)
    async with bus:
        directory = RedisDirectory(bus.client, namespace)
        await directory.settle_facts("k")  # born now, on the primary
        await asyncio.sleep(1.0)
        age_before = (await directory.settle_facts("k"))[1]
        assert age_before >= 1.0
        node = bus.statistics().cluster_node
        assert node is not None
        port = int(node.rsplit(":", 1)[1])
        nodes = await cluster_nodes(doomed_cluster.url)
        [old] = [n for n in nodes if n.port == port]
        [heir] = [n for n in nodes if n.primary_id == old.node_id]
        # The birth key reached the replica before the primary dies (read on the replica).
        birth_key = directory_birth_key(namespace)
        replica = redis_asyncio.Redis.from_url(
            url_with_port(doomed_cluster.url, heir.port), single_connection_client=True
        )
        try:
            await replica.execute_command("READONLY")  # type: ignore[no-untyped-call]  # untyped in redis-py

            async def replicated() -> bool:
                return await replica.hget(birth_key, "ms") is not None

            await _wait_for("the birth key on the replica", replicated)
        finally:
            await replica.aclose()
        primary = url_with_port(doomed_cluster.url, port)
        [pid] = [n.pid for n in doomed_cluster.status().nodes if n.address == primary]
        assert pid is not None
        os.kill(pid, signal.SIGKILL)

        async def promoted() -> bool:
            return bus.statistics().cluster_node == f"127.0.0.1:{heir.port}"

        await _wait_for("the bus on the promoted replica", promoted)

        async def answered() -> bool:
            try:
                await directory.settle_facts("k")
            except TierUnavailable:
                return False
            return True

        await _wait_for("the promoted node's answer", answered)
        age_after = (await directory.settle_facts("k"))[1]
        assert age_after < age_before  # born again on the promoted node
