"""The coherent L1 under faults, against real Redis and Postgres servers (issue 4, "Faults").

Each test injects one fault the protocol claims to survive and checks the claim from the
outside: a pub/sub connection killed just before a write, Redis restarted mid-workload,
Postgres restarted mid-workload, an owner process killed with SIGKILL while it holds a Modified
entry, and an owner paused (SIGSTOP) past its lease whose late write-back must be fenced (plus
that pause's unlucky interleaving made deterministic). One more test pins down what the
restarts exposed: an operation after a timed-out one must get its own answer.
Owners that must die or pause run in a process of their own (`tests/integration/fault_agent.py`).

Every wait is an event or a bounded poll of state (`wait_until`); nothing sleeps to let things
happen, and no assertion depends on how long something took. Leases and TTLs are short (owner
lease 1 s) so the file runs in a few tens of seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypedDict
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest
import redis
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from sagemem.coherence.bus import CoherenceBus
from sagemem.coherence.core import TraceRecord
from sagemem.coherence.home import ABSENT, HomeRead, HomeStore
from sagemem.coherence.messages import BusEvent
from sagemem.errors import TierUnavailable
from sagemem.redis_topology import namespace_node_url
from sagemem.services import EmbeddedServices, create_private_runtime_dir, process_alive
from sagemem.spec.conformance import divergences
from sagemem.spec.model import Request
from sagemem.spec.vocabulary import STABLE_STATES
from sagemem.tiers.base import TierEntry
from sagemem.tiers.l1_coherent import CoherentL1Tier, FencedWrite, L1State
from sagemem.tiers.l3 import L3Tier
from sagemem.values import JSONValue
from tests.integration import fault_agent
from tests.integration.conftest import stop_and_remove
from tests.integration.polling import poll_until, wait_until
from tests.integration.tcp_proxy import FreezableProxy
from tests.integration.test_coherent_l1 import local_step

WAIT_S = 20.0
"""The bound on any single wait for an event (generous: the machine is shared)."""

OWNER_LEASE_S = 1.0
REPO_ROOT = Path(__file__).resolve().parents[2]


class BusOptions(TypedDict, total=False):
    """The `CoherenceBus` timings a test tunes."""

    connect_timeout_s: float
    command_timeout_s: float
    health_check_interval_s: float
    health_check_timeout_s: float
    reconnect_delay_min_s: float
    reconnect_delay_max_s: float


@pytest.fixture
async def raw_redis(redis_url: str, namespace: str) -> AsyncIterator[aioredis.Redis]:
    """A plain redis client, for doing things behind the bus's back (on the server that holds
    the namespace's keys)."""
    client = aioredis.Redis.from_url(
        await namespace_node_url(redis_url, namespace), socket_timeout=WAIT_S
    )
    try:
        yield client
    finally:
        await client.aclose()


@contextlib.asynccontextmanager
async def agent(
    agent_id: str,
    redis_url: str,
    postgres_dsn: str,
    namespace: str,
    schema: str,
    *,
    bus_options: BusOptions | None = None,
    holder_ttl_s: float = 60.0,
    operation_timeout_s: float = WAIT_S,
    outbox_sweep_after_s: float = 2.0,
    mode: str = "coherent",
    update_value_max_bytes: int = 8192,
) -> AsyncIterator[CoherentL1Tier]:
    """One agent as a separate process would have it: its own bus, home pool and L1."""
    home = L3Tier(
        dsn=postgres_dsn,
        namespace=namespace,
        schema=schema,
        connect_timeout_s=2.0,
        command_timeout_s=2.0,
    )
    bus = CoherenceBus(url=redis_url, namespace=namespace, **(bus_options or {}))
    trace: list[TraceRecord] = []
    l1 = CoherentL1Tier(
        agent_id=agent_id,
        bus=bus,
        home=home,
        holder_ttl_s=holder_ttl_s,
        operation_timeout_s=operation_timeout_s,
        outbox_sweep_after_s=outbox_sweep_after_s,
        mode=mode,
        tracer=trace.append,
        update_value_max_bytes=update_value_max_bytes,
    )
    try:
        await bus.connect()
        await l1.start()
        yield l1
        await l1.aclose()
        # Every step the agent took under the fault, close included, is one the model takes.
        found = divergences(l1.mode, [(r.key, local_step(r)) for r in trace])
        assert not found, "\n".join(found[:20])
    finally:
        await l1.aclose()
        await home.aclose()
        await bus.aclose()


@contextlib.asynccontextmanager
async def home_probe(postgres_dsn: str, namespace: str, schema: str) -> AsyncIterator[HomeStore]:
    """The home's statements on a pool of their own, to look at a key's row (owner included)."""
    l3 = L3Tier(dsn=postgres_dsn, namespace=namespace, schema=schema)
    await l3.connect()
    try:
        yield HomeStore(l3)
    finally:
        await l3.aclose()


def hold_deliveries(l1: CoherentL1Tier) -> asyncio.Event:
    """Hold back every bus event addressed to `l1` (set before `start()`) until the returned
    event is set: a pause of its listener, made deterministic. The bus hands the agent's events
    to this gate instead of the driver."""
    released = asyncio.Event()
    driver = l1._driver
    deliver = driver.on_bus

    async def held_until_released(event: BusEvent) -> None:
        await released.wait()
        await deliver(event)

    driver.on_bus = held_until_released  # type: ignore[method-assign]  # test hook
    return released


# -- 1. the pub/sub connection killed just before a write ------------------------------------


async def test_killed_pubsub_connection_before_a_write_never_serves_the_old_value(
    redis_url: str, postgres_dsn: str, namespace: str, pg_schema: str, raw_redis: aioredis.Redis
) -> None:
    """A holder whose pub/sub connection dies loses the writer's invalidation, yet never serves
    the old copy again: without the Missed/RESYNC handling the holder's Shared copy (trusted for
    54 s with holder_ttl_s=60) would keep answering "old" after the write returned."""
    key = "belief:weather"
    # The holder reconnects only after 1 to 2 s, so the write lands while it is disconnected.
    slow_reconnect: BusOptions = {
        "reconnect_delay_min_s": 2.0,
        "reconnect_delay_max_s": 2.0,
        "health_check_interval_s": 0.2,
        "health_check_timeout_s": 0.6,
    }
    endpoints = (redis_url, postgres_dsn, namespace, pg_schema)
    async with (
        agent("holder", *endpoints, bus_options=slow_reconnect, holder_ttl_s=60.0) as holder,
        agent("writer", *endpoints, holder_ttl_s=60.0) as writer,
    ):
        old_version = await writer.write_through(key, "old")
        assert await holder.read(key) == TierEntry("old", old_version)
        assert await holder.read_from(key) == (TierEntry("old", old_version), 0)  # a hit
        assert holder.get_state(key) is L1State.S

        killed = await raw_redis.client_kill_filter(_type="pubsub")
        new_version = await writer.write_through(key, "new")

        assert killed >= 2  # both agents' listeners
        assert new_version > old_version
        assert writer.statistics().invalidations_sent >= 1  # the holder was targeted...
        await wait_until(lambda: holder.statistics().disconnects >= 1, "the holder's Missed")
        # ...but had no subscription: the copy is kept, marked missed, and never served.
        assert holder.statistics().resyncs == 0, "the holder resubscribed too early for the test"
        assert holder.get_state(key) is L1State.S
        assert holder.core.snapshot(key).missed
        assert holder.core.hit(key) is None

        async with asyncio.timeout(WAIT_S):
            entry, source = await holder.read_from(key)  # stalls until RESYNC, then refills

        assert entry == TierEntry("new", new_version)
        assert source in (1, 2)
        stats = holder.statistics()
        assert stats.invalidations_received == 0  # the invalidation itself was lost
        assert stats.disconnects >= 1
        assert stats.resyncs >= 1
        assert await holder.read_from(key) == (TierEntry("new", new_version), 0)


@pytest.mark.parametrize("mode", ["coherent", "strict"])
async def test_an_owner_whose_pubsub_connection_dropped_still_answers_a_recall(
    mode: str,
    redis_url: str,
    postgres_dsn: str,
    namespace: str,
    pg_schema: str,
    raw_redis: aioredis.Redis,
) -> None:
    """An owner holding a flushed value (E) loses its pub/sub connection and resyncs: it keeps
    its grant and its copy (RESYNC drops shared copies, not owned ones), so a reader's recall
    reaches it and the reader gets the value at once. An owner that dropped its entry on the
    resync would ignore the recall and hold the grant until its lease (10 s) lapsed, past the
    reader's operation timeout."""
    key = "belief:owned"
    quick_reconnect: BusOptions = {"health_check_interval_s": 0.2, "health_check_timeout_s": 0.6}
    endpoints = (redis_url, postgres_dsn, namespace, pg_schema)
    async with (
        agent("owner", *endpoints, bus_options=quick_reconnect, mode=mode) as owner,
        agent("reader", *endpoints, mode=mode, operation_timeout_s=3.0) as reader,
    ):
        await owner.set(key, "mine")
        await owner.flush(key)
        assert owner.get_state(key) is L1State.E
        resyncs = owner.statistics().resyncs

        assert await raw_redis.client_kill_filter(_type="pubsub") >= 1
        await wait_until(
            lambda: owner.statistics().resyncs > resyncs, "the owner's resync after the drop"
        )
        assert owner.get_state(key) is L1State.E

        entry = await reader.read(key)
        assert entry is not None
        assert entry.value == "mine"
        assert reader.statistics().recalls_sent >= 1
        assert owner.statistics().recalls_received >= 1


# -- 2 and 3. a server restarted mid-workload -------------------------------------------------

WORKLOAD_KEYS = ("k0", "k1")
WORKLOAD_AGENTS = ("a0", "a1", "a2")
OUTAGE_S_MAX = 10.0
"""A restart here takes a second or two; callers more patient than this never fail."""
# Impatient callers give up during the outage (TierUnavailable, allowed: their steps complete
# in the background); patient ones wait it out. Both must see no stale read and lose no write.
OPERATION_TIMEOUTS = [
    pytest.param(1.0, id="impatient"),
    pytest.param(30.0, id="patient"),
]
OPS_PER_PHASE = 5
WORKLOAD_BUS_OPTIONS: BusOptions = {
    "connect_timeout_s": 1.0,
    "command_timeout_s": 1.0,
    "health_check_interval_s": 0.2,
    "health_check_timeout_s": 0.6,
    "reconnect_delay_min_s": 0.05,
    "reconnect_delay_max_s": 0.3,
}


@pytest.fixture(scope="module")
def restartable_services() -> Iterator[EmbeddedServices]:
    """Embedded servers in a private runtime directory (as `private_services`), shared by this
    module's restart tests to pay for one initdb only; each test leaves them running."""
    services = EmbeddedServices(create_private_runtime_dir())
    try:
        yield services
    finally:
        stop_and_remove(services)


@dataclass
class AgentLog:
    """What one workload agent did and saw."""

    l1: CoherentL1Tier
    operation_timeout_s: float
    completed: int = 0
    unavailable: int = 0  # operations that failed with TierUnavailable (allowed in an outage)
    acknowledged: list[tuple[str, int, str]] = field(default_factory=list)  # key, version, value
    unacknowledged: list[tuple[str, str]] = field(default_factory=list)  # key, value
    reads: list[tuple[str, int, JSONValue]] = field(default_factory=list)
    seen: dict[str, int] = field(default_factory=dict)  # newest version observed per key
    violations: list[str] = field(default_factory=list)
    history: list[str] = field(default_factory=list)  # every operation and its outcome, in order

    def note_write(self, key: str, version: int, value: str) -> None:
        if version <= self.seen.get(key, 0):
            self.violations.append(
                f"{self.l1.agent_id}: write of {key} got version {version}, not above the "
                f"{self.seen[key]} it had already seen"
            )
        self.seen[key] = max(version, self.seen.get(key, 0))
        self.acknowledged.append((key, version, value))

    def note_read(self, key: str, entry: TierEntry | None) -> None:
        assert entry is not None, f"{key} was seeded and never deleted"
        assert entry.version is not None
        if entry.version < self.seen.get(key, 0):
            self.violations.append(
                f"{self.l1.agent_id}: read {key} at version {entry.version} after having seen "
                f"{self.seen[key]} (a stale, non-monotonic read)"
            )
        self.seen[key] = max(entry.version, self.seen.get(key, 0))
        self.reads.append((key, entry.version, entry.value))


async def run_agent(log: AgentLog, stop: asyncio.Event, seed: int) -> None:
    """Random reads and write-throughs on the hot keys until `stop`; outage errors are counted."""
    rng = random.Random(seed)
    number = 0
    while not stop.is_set():
        number += 1
        key = rng.choice(WORKLOAD_KEYS)
        value = f"{log.l1.agent_id}-{number}"
        writing = rng.random() < 0.5
        try:
            # An operation may fail, never hang: the tier raises after operation_timeout_s.
            async with asyncio.timeout(log.operation_timeout_s + 5.0):
                if writing:
                    version = await log.l1.write_through(key, value)
                    log.history.append(f"write {key} {value!r} -> {version}")
                    log.note_write(key, version, value)
                else:
                    entry = await log.l1.read(key)
                    log.history.append(f"read {key} -> {entry}")
                    log.note_read(key, entry)
            log.completed += 1
        except TierUnavailable:
            log.history.append(f"{'write' if writing else 'read'} {key} -> TierUnavailable")
            log.unavailable += 1
            if writing:
                log.unacknowledged.append((key, value))
            await asyncio.sleep(0.01)  # pacing only: do not spin on a server that is down
        except TimeoutError:
            log.violations.append(f"{log.l1.agent_id}: an operation on {key} hung")
            return


async def run_workload_through(
    services: EmbeddedServices,
    namespace: str,
    restart: Callable[[EmbeddedServices, list[AgentLog]], Awaitable[None]],
    operation_timeout_s: float,
) -> list[AgentLog]:
    """Run the 3-agent workload, `restart` a server in the middle, check the outcome."""
    endpoints = await asyncio.to_thread(services.up)
    schema = "faults"
    async with contextlib.AsyncExitStack() as stack:
        logs = [
            AgentLog(
                await stack.enter_async_context(
                    agent(
                        agent_id,
                        endpoints.redis_url,
                        endpoints.postgres_dsn,
                        namespace,
                        schema,
                        bus_options=WORKLOAD_BUS_OPTIONS,
                        holder_ttl_s=60.0,
                        operation_timeout_s=operation_timeout_s,
                        outbox_sweep_after_s=0.5,
                    )
                ),
                operation_timeout_s,
            )
            for agent_id in WORKLOAD_AGENTS
        ]
        for key in WORKLOAD_KEYS:
            logs[0].note_write(key, await logs[0].l1.write_through(key, "seed"), "seed")
        stop = asyncio.Event()
        tasks = [asyncio.create_task(run_agent(log, stop, seed)) for seed, log in enumerate(logs)]
        try:
            await wait_until(
                lambda: all(log.completed >= OPS_PER_PHASE for log in logs), "warm-up operations"
            )
            await restart(services, logs)
            restarted_at = [log.completed for log in logs]
            await wait_until(
                lambda: all(
                    log.completed >= done + OPS_PER_PHASE
                    for log, done in zip(logs, restarted_at, strict=True)
                ),
                "operations after the restart",
                timeout_s=30.0,
            )
        finally:
            stop.set()
            async with asyncio.timeout(WAIT_S):
                await asyncio.gather(*tasks)
        try:
            await check_outcome(logs, endpoints.postgres_dsn, namespace, schema)
        except AssertionError as error:
            histories = "\n".join(f"{log.l1.agent_id}: " + "; ".join(log.history) for log in logs)
            raise AssertionError(f"{error}\noperations, in order:\n{histories}") from None
    return logs


async def read_until(l1: CoherentL1Tier, key: str, expected: TierEntry) -> TierEntry | None:
    """Read `key` through `l1` until it answers `expected` (an invalidation may be in flight)."""
    reads: list[TierEntry | None] = []

    async def reads_expected() -> bool:
        reads.append(await l1.read(key))
        return reads[-1] == expected

    try:
        await poll_until(reads_expected, f"{l1.agent_id} to read {key} as {expected}", 5.0)
    except AssertionError as error:
        raise AssertionError(f"{error}; its last reads: {reads[-3:]}") from None
    return reads[-1]


async def check_outcome(
    logs: Sequence[AgentLog], postgres_dsn: str, namespace: str, schema: str
) -> None:
    """Nothing stale once settled, no acknowledged write lost, reads and writes monotonic."""
    violations = [violation for log in logs for violation in log.violations]
    assert violations == []

    def settled() -> bool:
        return all(
            log.l1.get_state(key) in STABLE_STATES
            and log.l1.core.snapshot(key).request is Request.NONE
            for log in logs
            for key in WORKLOAD_KEYS
        )

    await wait_until(settled, "every agent's entries to settle")
    async with home_probe(postgres_dsn, namespace, schema) as home:
        truth: dict[str, HomeRead] = {}

        async def outboxes_relayed() -> bool:
            for key in WORKLOAD_KEYS:
                truth[key] = await home.read(key)
            return all(row.outbox is None and row.owner is None for row in truth.values())

        await poll_until(outboxes_relayed, "every commit's invalidations to be relayed")

        # Converged: every agent reads the home's version and value (invalidations are
        # published; their delivery is awaited by polling the agent's own read).
        for log in logs:
            for key in WORKLOAD_KEYS:
                expected = TierEntry(truth[key].value, truth[key].version)
                log.note_read(key, await read_until(log.l1, key, expected))
        for key in WORKLOAD_KEYS:
            assert await home.read(key) == truth[key], "the home moved after the workload"

    for key in WORKLOAD_KEYS:
        final = truth[key]
        assert final.value is not ABSENT
        acknowledged = {
            version: value for log in logs for (k, version, value) in log.acknowledged if k == key
        }
        writes = sorted(
            (version, log.l1.agent_id, value)
            for log in logs
            for (k, version, value) in log.acknowledged
            if k == key
        )
        shared = [
            (earlier, later)
            for earlier, later in itertools.pairwise(writes)
            if earlier[0] == later[0]
        ]
        assert shared == [], f"acknowledged writes of {key} share a version: {shared}"
        # No acknowledged write lost: the final version covers each of them.
        assert max(acknowledged) <= final.version
        if final.version in acknowledged:
            assert final.value == acknowledged[final.version]
        else:
            # The last commit is a write whose caller timed out during the outage (allowed:
            # "the protocol step it started still completes later"); it must be a real one.
            attempted = {value for log in logs for (k, value) in log.unacknowledged if k == key}
            assert final.value in attempted, f"{key} holds {final.value!r}, which nobody wrote"
        # Every value read is the one written at that version.
        for log in logs:
            for k, version, value in log.reads:
                if k == key and version in acknowledged:
                    assert value == acknowledged[version], (
                        f"{log.l1.agent_id} read {key}@{version} = {value!r}, but "
                        f"{acknowledged[version]!r} was written at that version"
                    )


def _wait_gone(pid: int, what: str) -> None:
    """Block until the (non-child) process `pid` has exited."""
    for _ in range(1500):
        if not process_alive(pid):
            return
        time.sleep(0.01)  # not our child: nothing to wait on but its pid (runs in a thread)
    raise AssertionError(f"{what} (pid {pid}) did not exit within 15 s")


def stop_redis(services: EmbeddedServices) -> tuple[str, Path]:
    """Stop the private Valkey (SIGTERM, no persistence: its data is gone); return what it
    takes to start the same server again on the same port (binary and config file)."""
    url = services.status().redis.address
    assert url is not None
    # Ask the server for its pid: after an earlier restart here, the record's pid is stale.
    with redis.Redis.from_url(url, socket_timeout=WAIT_S) as client:
        pid = int(client.info("server")["process_id"])
    binary = os.readlink(f"/proc/{pid}/exe")
    config = services.runtime_dir / "valkey" / "valkey.conf"
    assert config.is_file(), f"sagemem.services no longer writes {config}; update this test"
    os.kill(pid, signal.SIGTERM)
    _wait_gone(pid, "the embedded Redis")
    return binary, config


def start_redis_again(binary: str, config: Path) -> None:
    """Start Valkey again from the same config file: same port, empty data."""
    subprocess.run([binary, str(config)], check=True, timeout=30, capture_output=True)


def stop_postgres(services: EmbeddedServices) -> str:
    """Stop the private Postgres (SIGINT: a fast shutdown); return its DSN."""
    status = services.status()
    pid = status.postgres.pid
    assert pid is not None, status
    assert status.postgres.address is not None, status
    os.kill(pid, signal.SIGINT)
    _wait_gone(pid, "the embedded Postgres")
    return status.postgres.address


async def wait_for_outage(logs: Sequence[AgentLog], what: str) -> None:
    """Keep the server down until the agents met the outage: with impatient callers, until
    every agent had an operation fail (TierUnavailable), so the outage covers writes that
    commit (or not) after their caller gave up; with patient ones, until an operation is
    being retried against the dead server."""
    if all(log.operation_timeout_s < OUTAGE_S_MAX for log in logs):
        await wait_until(
            lambda: all(log.unavailable >= 1 for log in logs),
            f"every agent to have an operation fail during the {what} outage",
        )
    else:
        await wait_until(
            lambda: sum(log.l1.statistics().io_retries for log in logs) >= 1,
            f"an operation to be retried during the {what} outage",
        )


async def redis_ping(url: str) -> None:
    """Wait until the Redis at `url` answers."""
    client = aioredis.Redis.from_url(url, socket_timeout=1.0, socket_connect_timeout=1.0)

    async def answers() -> bool:
        try:
            return bool(await client.ping())
        except (OSError, RedisError):
            return False

    try:
        await poll_until(answers, f"the restarted Redis at {url} to answer")
    finally:
        await client.aclose()


@pytest.mark.parametrize("operation_timeout_s", OPERATION_TIMEOUTS)
async def test_redis_restart_mid_workload_loses_no_write_and_leaves_nothing_stale(
    restartable_services: EmbeddedServices, namespace: str, operation_timeout_s: float
) -> None:
    """Redis is stopped (its directory, L2 copies and sequence counters are wiped) and started
    again on the same port while 3 agents read and write: without the protocol's handling a
    holder would keep a copy whose invalidation was never delivered (the directory forgot it),
    and reads would go stale or backwards."""

    async def restart_redis(services: EmbeddedServices, logs: list[AgentLog]) -> None:
        url = services.status().redis.address
        assert url is not None
        binary, config = await asyncio.to_thread(stop_redis, services)
        await wait_until(
            lambda: all(log.l1.bus.statistics().disconnects >= 1 for log in logs),
            "every bus to notice the lost connection",
        )
        await wait_for_outage(logs, "Redis")
        await asyncio.to_thread(start_redis_again, binary, config)
        await redis_ping(url)

    logs = await run_workload_through(
        restartable_services, namespace, restart_redis, operation_timeout_s
    )

    for log in logs:
        stats = log.l1.statistics()
        assert stats.disconnects >= 1
        assert stats.resyncs >= 1
    if operation_timeout_s > OUTAGE_S_MAX:
        assert [log.unavailable for log in logs] == [0, 0, 0]  # patient callers never fail
    print(
        "\nRedis restart: operations completed "
        f"{[log.completed for log in logs]}, failed with TierUnavailable "
        f"{[log.unavailable for log in logs]}, io retries "
        f"{[log.l1.statistics().io_retries for log in logs]}"
    )


async def test_a_strict_holder_that_missed_a_redis_restart_never_serves_its_old_copy(
    restartable_services: EmbeddedServices, namespace: str, pg_schema: str
) -> None:
    """Strict mode across a Redis restart: the restarted server's directory has forgotten the
    holder, so without more the writer completes at once, and a holder that has not noticed the
    restart (its link frozen here, as when its event loop stalls) serves the old value after
    the write returned. The writer waits until a copy registered before the restart is no
    longer trusted, and the holder does not trust a copy over a link it cannot confirm."""
    redis_url = restartable_services.ensure_redis()
    postgres_dsn = restartable_services.ensure_postgres()
    parsed = urlsplit(redis_url)
    assert parsed.hostname is not None
    assert parsed.port is not None
    # Slow health checks: the holder's bus must not notice the frozen link by itself before
    # it reads (a PING after 1.5 s of silence, dead after 10 s more without an answer).
    slow: BusOptions = {"health_check_interval_s": 1.5, "health_check_timeout_s": 10.0}
    endpoints = (postgres_dsn, namespace, pg_schema)
    async with FreezableProxy(parsed.hostname, parsed.port) as proxy:
        proxied = urlunsplit(
            parsed._replace(netloc=f"{parsed.netloc.rsplit('@', 1)[0]}@127.0.0.1:{proxy.port}")
        )
        async with (
            agent("w", redis_url, *endpoints, bus_options=slow, mode="strict") as writer,
            agent("h", proxied, *endpoints, bus_options=slow, mode="strict") as holder,
        ):
            old = await writer.write_through("k", "old")
            assert await holder.read("k") == TierEntry("old", old)
            assert holder.get_state("k") is L1State.S
            proxy.freeze()
            binary, config = await asyncio.to_thread(stop_redis, restartable_services)
            await asyncio.to_thread(start_redis_again, binary, config)
            await redis_ping(redis_url)
            async with asyncio.timeout(WAIT_S):
                new = await writer.write_through("k", "new")
            reading = asyncio.create_task(holder.get("k"))
            await asyncio.sleep(0)  # a hit answers in its first step
            if not reading.done():
                await proxy.cut()  # the holder reconnects (to the restarted server) and refetches
            async with asyncio.timeout(WAIT_S):
                assert await reading == "new"
            assert await holder.read("k") == TierEntry("new", new)


@pytest.mark.parametrize("operation_timeout_s", OPERATION_TIMEOUTS)
async def test_postgres_restart_mid_workload_loses_no_write_and_leaves_nothing_stale(
    restartable_services: EmbeddedServices, namespace: str, operation_timeout_s: float
) -> None:
    """Postgres (the home) is stopped and started again while 3 agents read and write: without
    the protocol's handling a commit whose invalidations were never relayed (its writer timed
    out) would leave stale copies, and an acknowledged write could be lost or reordered."""

    async def restart_postgres(services: EmbeddedServices, logs: list[AgentLog]) -> None:
        dsn = await asyncio.to_thread(stop_postgres, services)
        await wait_for_outage(logs, "Postgres")
        assert await asyncio.to_thread(services.ensure_postgres) == dsn

    logs = await run_workload_through(
        restartable_services, namespace, restart_postgres, operation_timeout_s
    )

    assert sum(log.l1.statistics().io_retries for log in logs) >= 1
    if operation_timeout_s > OUTAGE_S_MAX:
        assert [log.unavailable for log in logs] == [0, 0, 0]  # patient callers never fail
    print(
        "\nPostgres restart: operations completed "
        f"{[log.completed for log in logs]}, failed with TierUnavailable "
        f"{[log.unavailable for log in logs]}, io retries "
        f"{[log.l1.statistics().io_retries for log in logs]}"
    )


async def test_an_operation_after_a_timed_out_one_gets_its_own_answer(
    redis_url: str, postgres_dsn: str, namespace: str, pg_schema: str
) -> None:
    """What the impatient workloads above hit by chance, made deterministic: a read times out
    while the home is locked, its fill is invalidated, a second read waits, the home answers.
    Each later operation must get its own answer: otherwise the second read is answered with
    the first one's data and the write after it returns that read's version before it even
    committed (its invalidations unpublished), as if it were done (regression test for
    bugs.md 'An operation that timed out ... leaves its answer queued')."""
    key = "plan:step"
    endpoints = (redis_url, postgres_dsn, namespace, pg_schema)
    async with (
        agent("a", *endpoints, operation_timeout_s=0.5) as impatient,
        # its relay leaves L2 empty (no value is within 1 byte), so the read goes to the home
        agent("w", *endpoints, update_value_max_bytes=1) as writer,
    ):
        first = await writer.write_through(key, "v1")
        home_tier = impatient.home_tier
        assert home_tier is not None
        locker = await asyncpg.connect(postgres_dsn, timeout=WAIT_S)
        try:
            transaction = locker.transaction()
            await transaction.start()
            await locker.execute(f"LOCK TABLE {home_tier.table} IN ACCESS EXCLUSIVE MODE")
            with pytest.raises(TierUnavailable):
                await impatient.read(key)  # its fill waits for the home's answer
            assert impatient.get_state(key) is L1State.IS_D
            await writer.bus.publish_invalidate(key, first, [impatient.agent_id], sender="w")
            await wait_until(lambda: impatient.get_state(key) is L1State.IS_D_I, "IS_D_I")
            second_read = asyncio.create_task(impatient.read(key))
            await asyncio.sleep(0)  # it starts and waits for the entry to settle
            await transaction.rollback()  # the home answers the first read's fill
        finally:
            await locker.close(timeout=WAIT_S)
        async with asyncio.timeout(WAIT_S):
            assert await second_read == TierEntry("v1", first)
            written = await impatient.write_through(key, "v2")

        assert impatient.get_state(key) not in (L1State.WT_H, L1State.WT_A)  # it completed
        assert written == first + 1
        assert await writer.read(key) == TierEntry("v2", written)


# -- 4 and 5. an owner process killed or paused while it holds a Modified entry ---------------


@dataclass
class OwnerProcess:
    """A `fault_agent` process that owns one key (Modified), and its reports."""

    process: asyncio.subprocess.Process
    stderr_path: Path
    version: int = 0

    async def line(self) -> str:
        """The agent's next line of output (fails with its stderr if it ended instead)."""
        assert self.process.stdout is not None
        async with asyncio.timeout(WAIT_S):
            raw = await self.process.stdout.readline()
        if not raw:
            await self.process.wait()
            raise AssertionError(
                f"fault_agent exited ({self.process.returncode}) without answering; stderr:\n"
                + self.stderr_path.read_text()[-4000:]
            )
        return raw.decode().strip()

    def signal(self, number: signal.Signals) -> None:
        self.process.send_signal(number)

    async def send(self, command: str) -> None:
        """Send one command line (`fault_agent.READ` or `fault_agent.CLOSE`)."""
        assert self.process.stdin is not None
        self.process.stdin.write(f"{command}\n".encode())
        async with asyncio.timeout(WAIT_S):
            await self.process.stdin.drain()

    async def read(self) -> str:
        """Ask the agent to read its key; its answer line (`read ...` or `read-failed ...`)."""
        await self.send(fault_agent.READ)
        return await self.line()

    async def close(self) -> tuple[list[list[JSONValue]], dict[str, Any]]:
        """Ask the agent to close; its fenced writes and statistics, once it exited 0."""
        await self.send(fault_agent.CLOSE)
        fenced_word, fenced_json = (await self.line()).split(" ", 1)
        stats_word, stats_json = (await self.line()).split(" ", 1)
        async with asyncio.timeout(WAIT_S):
            assert await self.process.wait() == 0
        assert (fenced_word, stats_word) == (fault_agent.FENCED, fault_agent.STATS)
        fenced: list[list[JSONValue]] = json.loads(fenced_json)
        stats: dict[str, Any] = json.loads(stats_json)  # CoherentL1Statistics as a dict
        return fenced, stats


@contextlib.asynccontextmanager
async def owner_process(
    tmp_path: Path,
    redis_url: str,
    postgres_dsn: str,
    namespace: str,
    schema: str,
    key: str,
    value: JSONValue,
    *,
    operation_timeout_s: float = WAIT_S,
) -> AsyncIterator[OwnerProcess]:
    """Start `fault_agent` as agent "owner", wait for it to own `key`; kill it at the end."""
    stderr_path = tmp_path / "owner.stderr"
    with stderr_path.open("wb") as stderr:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            fault_agent.__name__,
            redis_url,
            postgres_dsn,
            namespace,
            schema,
            "owner",
            key,
            json.dumps(value),
            f"--owner-lease-s={OWNER_LEASE_S}",
            f"--operation-timeout-s={operation_timeout_s}",
            cwd=REPO_ROOT,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=stderr,
        )
    owner = OwnerProcess(process, stderr_path)
    try:
        words = (await owner.line()).split()
        assert words[0] == fault_agent.OWNS, words
        assert words[2] == L1State.M.name, words
        owner.version = int(words[1])
        yield owner
    finally:
        if process.returncode is None:
            process.kill()  # also ends a stopped process
        async with asyncio.timeout(WAIT_S):
            await process.wait()


async def test_owner_killed_while_modified_loses_its_grant_and_others_progress(
    tmp_path: Path, redis_url: str, postgres_dsn: str, namespace: str, pg_schema: str
) -> None:
    """An owner SIGKILLed while Modified never writes back nor answers recalls: without the
    home's lease (HOME_EXPIRE_OWNER) every other agent's read and write of the key would wait
    for it forever; with it they proceed once the 1 s lease lapses."""
    key = "plan:step"
    endpoints = (redis_url, postgres_dsn, namespace, pg_schema)
    async with (
        agent("peer", *endpoints, operation_timeout_s=WAIT_S) as peer,
        agent("late-reader", *endpoints, operation_timeout_s=WAIT_S) as late_reader,
        home_probe(postgres_dsn, namespace, pg_schema) as home,
    ):
        seeded = await peer.write_through(key, "before")
        async with owner_process(tmp_path, *endpoints, key, "never-written-back") as owner:
            assert owner.version > seeded
            row = await home.read(key)
            assert row.owner is not None
            assert row.owner.startswith("owner/")
            assert row.version == owner.version

            owner.signal(signal.SIGKILL)
            async with asyncio.timeout(WAIT_S):
                assert await owner.process.wait() == -signal.SIGKILL

            async with asyncio.timeout(WAIT_S):
                read = await peer.read(key)
            async with asyncio.timeout(WAIT_S):
                written = await peer.write_through(key, "after")

        # The owner's value died with its process (a write at L1 is not durable until written
        # back); the grant was revoked, and the peer's read and write went through. The value
        # the home kept is read under a version of its own: the dead owner's version named its
        # own (lost) value and is never reused.
        assert read == TierEntry("before", owner.version + 1)
        assert written > owner.version
        row = await home.read(key)
        assert (row.owner, row.version, row.value) == (None, written, "after")
        assert peer.statistics().recalls_sent >= 1  # it did try the owner first
        assert await late_reader.read(key) == TierEntry("after", written)


@contextlib.asynccontextmanager
async def owner_paused_and_taken_over(
    tmp_path: Path, endpoints: tuple[str, str, str, str], taker: CoherentL1Tier, key: str
) -> AsyncIterator[tuple[OwnerProcess, int]]:
    """An owner process sets `key` to "late" (Modified) and is paused (SIGSTOP); `taker`
    commits "winner" once the home revoked the lapsed grant; the owner then resumes (SIGCONT).
    Yields the owner and the taker's committed version."""
    await taker.write_through(key, "before")
    async with owner_process(tmp_path, *endpoints, key, "late", operation_timeout_s=3.0) as owner:
        owner.signal(signal.SIGSTOP)
        async with asyncio.timeout(WAIT_S):
            taken = await taker.write_through(key, "winner")  # waits for the lease to lapse
        assert taken > owner.version
        assert taker.statistics().conflicts >= 1  # the live grant refused it at first
        owner.signal(signal.SIGCONT)
        yield owner, taken


async def test_paused_owner_late_write_back_cannot_overwrite_the_takers_value(
    tmp_path: Path, redis_url: str, postgres_dsn: str, namespace: str, pg_schema: str
) -> None:
    """An owner paused (SIGSTOP) past its lease resumes and writes its Modified value back:
    without the fence (the home checks owner and epoch) that late write-back would overwrite
    the value another agent committed after the grant was revoked; without the lease check
    the resumed owner would serve its own stale "late" value; without REPORT_FENCED it would
    never learn that its write was lost."""
    key = "plan:step"
    endpoints = (redis_url, postgres_dsn, namespace, pg_schema)
    async with (
        agent("taker", *endpoints) as taker,
        agent("late-reader", *endpoints) as late_reader,
        home_probe(postgres_dsn, namespace, pg_schema) as home,
    ):
        async with owner_paused_and_taken_over(tmp_path, endpoints, taker, key) as (owner, taken):
            reply = await owner.read()
            fenced, owner_stats = await owner.close()

        # The resumed owner reads the taker's value, never its own stale "late"...
        assert reply == f"{fault_agent.READ} {json.dumps(['winner', taken])}"
        # ...its late write-back reached the home, was refused, and is reported as lost...
        assert owner_stats["write_backs"] >= 1
        assert fenced == [[key, owner.version, "late"]]
        assert owner_stats["fenced_writes"] == 1
        # ...and the home kept the taker's value.
        row = await home.read(key)
        assert (row.owner, row.version, row.value) == (None, taken, "winner")
        assert await late_reader.read(key) == TierEntry("winner", taken)
        assert await taker.read(key) == TierEntry("winner", taken)


async def test_recall_reaching_a_lapsed_owner_reports_the_fenced_write(
    redis_url: str, postgres_dsn: str, namespace: str, pg_schema: str
) -> None:
    """The interleaving a pause leaves to chance, made deterministic: the owner's lease checks
    stop and its bus deliveries are held (as in a pause), the taker takes the key over, then
    the held recalls reach the owner still in M before any lease-lapse check. Its write-back
    must be fenced and reported, and the owner must then read the taker's value: otherwise
    the application believes a write the home refused, and the key stays unusable in the
    owner's L1 (regression test for bugs.md 'MS_A + HOME_WRITE_BACK[GRANT_LOST]')."""
    key = "plan:step"
    endpoints = (redis_url, postgres_dsn, namespace, pg_schema)
    home = L3Tier(dsn=postgres_dsn, namespace=namespace, schema=pg_schema)
    bus = CoherenceBus(url=redis_url, namespace=namespace, handler_timeout_s=WAIT_S)
    owner = CoherentL1Tier(
        agent_id="owner",
        bus=bus,
        home=home,
        owner_lease_s=OWNER_LEASE_S,
        holder_ttl_s=60.0,
        operation_timeout_s=2.0,
    )
    deliveries = hold_deliveries(owner)
    driver = owner._driver
    try:
        async with agent("taker", *endpoints) as taker:
            await bus.connect()
            await owner.start()
            await taker.write_through(key, "before")
            epoch = await owner.set(key, "late")
            assert owner.get_state(key) is L1State.M
            maintenance = driver._maintenance  # the lease renewals and lapse checks: paused
            assert maintenance is not None
            maintenance.cancel()

            async with asyncio.timeout(WAIT_S):
                taken = await taker.write_through(key, "winner")  # waits for the lease to lapse
            assert epoch is not None
            assert taken > epoch
            assert taker.statistics().recalls_sent >= 1

            deliveries.set()  # the owner resumes: its held recalls arrive while it is in M
            await wait_until(
                lambda: owner.statistics().recalls_received >= 1, "the held recalls", 5.0
            )
            await wait_until(
                lambda: owner.fenced_writes() != [], "the owner to report its fenced write", 3.0
            )
            assert owner.fenced_writes() == [FencedWrite(key, epoch, "late")]
            async with asyncio.timeout(WAIT_S):
                assert await owner.read(key) == TierEntry("winner", taken)
    finally:
        await owner.aclose()
        await home.aclose()
        await bus.aclose()


async def test_an_invalidation_older_than_an_owners_version_leaves_the_owner_serving_it(
    redis_url: str, postgres_dsn: str, namespace: str, pg_schema: str
) -> None:
    """A holder's bus deliveries are held back while another agent's write-through invalidates
    its copy; the holder then writes the key itself (taking ownership at a newer version) and
    flushes it (E). When the held invalidation finally arrives it names an older version: the
    owner notes it and keeps serving its own value, and a reader still gets that value."""
    key = "plan:owner"
    endpoints = (redis_url, postgres_dsn, namespace, pg_schema)
    home = L3Tier(dsn=postgres_dsn, namespace=namespace, schema=pg_schema)
    bus = CoherenceBus(url=redis_url, namespace=namespace, handler_timeout_s=WAIT_S)
    owner = CoherentL1Tier(
        agent_id="late-holder", bus=bus, home=home, holder_ttl_s=60.0, operation_timeout_s=5.0
    )
    deliveries = hold_deliveries(owner)
    try:
        async with agent("writer", *endpoints, operation_timeout_s=5.0) as writer:
            await bus.connect()
            await owner.start()
            await writer.write_through(key, "v1")
            assert (await owner.read(key) or TierEntry(None)).value == "v1"
            second = await writer.write_through(key, "v2")  # its invalidation is held back
            mine = await owner.set(key, "mine")
            await owner.flush(key)
            assert mine is not None
            assert mine > second
            assert owner.get_state(key) is L1State.E

            deliveries.set()
            await wait_until(
                lambda: owner.statistics().invalidations_received >= 1, "the held invalidation"
            )
            assert owner.get_state(key) is L1State.E
            assert await owner.read(key) == TierEntry("mine", mine)
            assert (await writer.read(key) or TierEntry(None)).value == "mine"
    finally:
        await owner.aclose()
        await home.aclose()
        await bus.aclose()
