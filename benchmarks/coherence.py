"""The coherent L1 beside its baselines, measured in the same run on real Redis and Postgres.

    uv run python benchmarks/coherence.py [--iterations 400] [--json results.json]
        [--hit-iterations N (default 25 x iterations)] [--writes N (default iterations / 4)]

Four measurements, each interleaved with its baseline (alternating which goes first, after a
warm-up) so that machine noise hits both alike; the table reports median, p95 and p99 in
microseconds and the ratio of medians:

1. L1 hit: `CoherentL1Tier.get` on an entry in S and in M, against an `OrderedDict` LRU get
   (awaited in a coroutine, and a plain call). Target: within 5x.
2. Invalidation delivery: from the writer's HOME_COMMIT row to the peer's DELIVER_INVALIDATE
   row (both timed by `AgentCore` tracers with `time.perf_counter_ns`), against a raw redis-py
   PUBLISH of the same bytes to a `PubSub` subscriber in the same process. Target: within 1.5x
   at the median. Measured twice: with the peer in the writer's process (one event loop runs
   both ends, so the writer's own work after publishing delays the peer) and with the peer in
   another process (timed with `time.monotonic_ns`, one clock for all processes on Linux),
   each beside a raw message to the same place. `CoherenceBus.publish_invalidate` to a
   subscribed handler (the bus alone, no protocol) is measured beside the same baseline, and
   the end-to-end `write_through` beside `L3Tier.write`.
3. Messages per write: 32 agents on one bus, 2 of which hold the key, a third writes through;
   invalidations counted by the writer's L1, by the bus's receivers and on the wire (a raw
   PSUBSCRIBE on the namespace's channels). Target: at most 3 (a broadcast would send 31).
4. Strict against coherent mode: `write_through`, `set` (ownership) and the reader's fill after
   each of them, with the ratio strict/coherent.

Every read checks the value it got against the last write, and every step that must happen
(an invalidation, a state) is awaited with a timeout: a run that did not measure what it
claims raises `BenchmarkError` instead of printing numbers.

Servers: SAGEMEM_REDIS_URL / SAGEMEM_POSTGRES_DSN, else the embedded ones. Everything runs in
fresh namespaces and a private Postgres schema, removed at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import platform
import secrets
import sys
import time
from collections.abc import Awaitable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Final

import asyncpg
import redis.asyncio as aioredis

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.baselines import LRU_AWAITED, LruBaseline, await_subscribed, interleaved
from benchmarks.stats import LatencySummary, format_table, summarise
from sagemem import keyspace
from sagemem.coherence.bus import CoherenceBus
from sagemem.coherence.core import TraceRecord
from sagemem.coherence.messages import (
    BusEvent,
    Delivered,
    InvalidateMessage,
    encode,
)
from sagemem.redis_topology import namespace_node_url
from sagemem.services import resolve_postgres_dsn, resolve_redis_url
from sagemem.spec.vocabulary import Event, MessageKind
from sagemem.tiers.l1 import L1Tier
from sagemem.tiers.l1_coherent import CoherentL1Tier, L1State
from sagemem.tiers.l3 import L3Tier
from sagemem.values import JSONValue

HIT_KEYS: Final = 100
HIT_WARMUP_ITERATIONS: Final = 200
WARMUP_ITERATIONS: Final = 20
AGENTS: Final = 32
HOLDERS: Final = 2
WAIT_S: Final = 10.0  # the longest any single protocol step may take before the run fails
SCALAR: Final = "the meeting moved to Thursday at 10:00"
VALUE: Final[JSONValue] = {"belief": SCALAR, "confidence": 0.82, "source": 7}
TARGET_HIT_RATIO: Final = 5.0
TARGET_DELIVERY_RATIO: Final = 1.5
TARGET_MESSAGES_PER_WRITE: Final = 3.0
HIT_S: Final = "CoherentL1Tier.get hit, S (str value)"
HIT_M: Final = "CoherentL1Tier.get hit, M (str value)"
AWAITED_LRU: Final = LRU_AWAITED

_THIS_FILE: Final = str(Path(__file__).resolve())


def _progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


class BenchmarkError(RuntimeError):
    """The run did not measure what it claims (an entry was not in the expected state)."""


class TransitionClock:
    """An `AgentCore` tracer resolving a waiter with the time the row of `event` fires.

    The time is read first thing, with `time.perf_counter_ns`, so that both ends of a delivery
    are timed by the same clock at the same point of the core's work.
    """

    def __init__(self, event: Event) -> None:
        self.event: Final = event
        self._waiters: dict[str, asyncio.Future[int]] = {}

    def __call__(self, record: TraceRecord) -> None:
        now = time.perf_counter_ns()
        if record.event is not self.event:
            return
        waiter = self._waiters.pop(record.key, None)
        if waiter is not None and not waiter.done():
            waiter.set_result(now)

    def expect(self, key: str) -> asyncio.Future[int]:
        """A future set to the time of the next row of `event` for `key` (call before acting)."""
        waiter = asyncio.get_running_loop().create_future()
        self._waiters[key] = waiter
        return waiter


async def _within(waiter: Awaitable[int], what: str) -> int:
    try:
        async with asyncio.timeout(WAIT_S):
            return await waiter
    except TimeoutError:
        raise BenchmarkError(f"{what} did not happen within {WAIT_S} s") from None


def _require_state(l1: CoherentL1Tier, key: str, expected: L1State, why: str) -> None:
    actual = l1.get_state(key)
    if actual is not expected:
        raise BenchmarkError(
            f"agent {l1.agent_id}: key {key!r} is in {actual.name}, expected {expected.name} "
            f"({why})"
        )


def _require_value(l1: CoherentL1Tier, key: str, actual: JSONValue, expected: JSONValue) -> None:
    if actual != expected:
        raise BenchmarkError(
            f"agent {l1.agent_id} read {actual!r} for key {key!r} where the last write was "
            f"{expected!r}: a coherence bug, please report it"
        )


def _labelled(baseline: LatencySummary) -> LatencySummary:
    """`baseline` named with its median: the table shows a baseline only in its ratio column."""
    return replace(baseline, name=f"{baseline.name}: {baseline.median_us:.2f} us")


@dataclass(frozen=True, slots=True)
class MessageCounts:
    """Messages caused by one write-through in the 32-agent namespace."""

    published_by_writer: int  # the writer's CoherentL1Statistics.invalidations_sent delta
    delivered_by_bus: int  # the bus's invalidations_received delta (all 32 subscriptions)
    received_by_agents: int  # the sum of the 32 L1s' invalidations_received deltas
    recalls_sent: int  # the sum of the 32 L1s' recalls_sent deltas


@dataclass(frozen=True, slots=True)
class MessagesPerWrite:
    """Per-write message counts over the run (mean and max), and what a broadcast would send."""

    agents: int
    holders: int
    writes: int
    published_by_writer_mean: float
    published_by_writer_max: int
    delivered_by_bus_mean: float
    delivered_by_bus_max: int
    received_by_agents_mean: float
    recalls_per_write_mean: float
    wire_messages_per_write: float
    broadcast_would_send: int


@dataclass(slots=True)
class Results:
    """Everything one run measured."""

    rows: list[tuple[LatencySummary, LatencySummary | None]]
    delivery: tuple[LatencySummary, LatencySummary]
    cross_process: tuple[LatencySummary, LatencySummary]
    messages: MessagesPerWrite
    hit_counters: dict[str, int]
    environment: dict[str, str]


class _Run:
    """One run's resources (namespaces, buses, homes, agents), all closed by `aclose`."""

    def __init__(self, redis_url: str, postgres_dsn: str) -> None:
        token = secrets.token_hex(4)
        self.redis_url: Final = redis_url
        self.postgres_dsn: Final = postgres_dsn
        self.prefix: Final = f"bench-coh-{token}"
        self.schema: Final = f"bench_coh_{token}"
        self.stack = contextlib.AsyncExitStack()
        self.stack.push_async_callback(self._remove_data)  # runs last
        self.namespaces: list[str] = []

    async def space(self, suffix: str) -> tuple[CoherenceBus, L3Tier]:
        """A fresh namespace: its connected bus and home (closed at the end)."""
        namespace = f"{self.prefix}-{suffix}"
        self.namespaces.append(namespace)
        bus = CoherenceBus(url=self.redis_url, namespace=namespace)
        await bus.connect()
        self.stack.push_async_callback(bus.aclose)
        home = L3Tier(dsn=self.postgres_dsn, namespace=namespace, schema=self.schema)
        await home.connect()
        self.stack.push_async_callback(home.aclose)
        return bus, home

    async def agent(
        self,
        agent_id: str,
        bus: CoherenceBus,
        home: L3Tier,
        *,
        mode: str = "coherent",
        capacity: int = 1024,
    ) -> CoherentL1Tier:
        """A started coherent L1 (closed at the end, before its bus and home)."""
        l1 = CoherentL1Tier(
            agent_id=agent_id,
            bus=bus,
            capacity=capacity,
            mode=mode,
            home=home,
            operation_timeout_s=WAIT_S,
        )
        await l1.start()
        self.stack.push_async_callback(l1.aclose)
        return l1

    async def aclose(self) -> None:
        await self.stack.aclose()

    async def _remove_data(self) -> None:
        """Drop the private schema and every Redis key of the run's namespaces."""
        connection = await asyncpg.connect(self.postgres_dsn, timeout=WAIT_S)
        try:
            await connection.execute(f'DROP SCHEMA IF EXISTS "{self.schema}" CASCADE')
        finally:
            await connection.close(timeout=WAIT_S)
        client = aioredis.Redis.from_url(self.redis_url)
        try:
            for namespace in self.namespaces:
                # L2 copies (sagemem:), directory (sagemem-dir:), bus counters (sagemem-bus:).
                async for raw_key in client.scan_iter(
                    match=f"sagemem*:{{{namespace}}}:*", count=500
                ):
                    await client.unlink(raw_key)
        finally:
            await client.aclose()


# -- 1. L1 hits ----------------------------------------------------------------------------


async def measure_hits(
    run: _Run, iterations: int
) -> tuple[list[tuple[LatencySummary, LatencySummary | None]], dict[str, int]]:
    """Coherent L1 hits on entries in S and in M beside an OrderedDict LRU get."""
    bus, home = await run.space("hits")
    writer = await run.agent("hit-writer", bus, home)
    reader = await run.agent("hit-reader", bus, home, capacity=4 * HIT_KEYS)
    shared = [f"hit:shared:{i}" for i in range(HIT_KEYS)]
    shared_dict = [f"hit:shared-dict:{i}" for i in range(HIT_KEYS)]
    owned = [f"hit:owned:{i}" for i in range(HIT_KEYS)]
    _progress(f"filling {3 * HIT_KEYS} keys for the L1 hit measurements ...")
    for key in shared:
        await writer.write_through(key, SCALAR)
    for key in shared_dict:
        await writer.write_through(key, VALUE)
    await writer.aclose()  # it holds nothing the reader needs; no recalls during the hits
    for key in shared + shared_dict:
        await reader.get(key)
        _require_state(reader, key, L1State.S, "a fill leaves a Shared copy")
    for key in owned:
        await reader.set(key, SCALAR)
        _require_state(reader, key, L1State.M, "a write at L1 takes ownership")

    lru = LruBaseline(shared, SCALAR)
    lru_get_async = lru.get_awaited
    plain_l1 = L1Tier(capacity=HIT_KEYS)
    for key in shared:
        await plain_l1.set(key, SCALAR)

    async def hit_shared(i: int) -> object:
        return await reader.get(shared[i % HIT_KEYS])

    async def hit_shared_dict(i: int) -> object:
        return await reader.get(shared_dict[i % HIT_KEYS])

    async def hit_owned(i: int) -> object:
        return await reader.get(owned[i % HIT_KEYS])

    async def hit_plain(i: int) -> object:
        return await plain_l1.get(shared[i % HIT_KEYS])

    _progress(f"coherent L1 hits vs OrderedDict LRU get, {iterations} iterations each ...")
    before = reader.statistics()
    lru_sync = lru.measure_plain(iterations)
    rows: list[tuple[LatencySummary, LatencySummary | None]] = [(lru_sync, None)]
    for name, op in (
        (HIT_S, hit_shared),
        (HIT_M, hit_owned),
        ("CoherentL1Tier.get hit, S (dict value, fresh copy)", hit_shared_dict),
        ("L1Tier.get hit (non-coherent, str value)", hit_plain),
    ):
        tier_ns, base_ns = await interleaved(
            iterations, op, lru_get_async, warmup=HIT_WARMUP_ITERATIONS
        )
        baseline = _labelled(summarise(AWAITED_LRU, base_ns))
        summary = summarise(name, tier_ns)
        rows.append((summary, baseline))
        if op is hit_shared:
            rows.append((summary, _labelled(lru_sync)))
    after = reader.statistics()
    counters = {"hits": after.hits - before.hits, "misses": after.misses - before.misses}
    expected_hits = 3 * (iterations + min(iterations, HIT_WARMUP_ITERATIONS))
    if counters["misses"] or counters["hits"] != expected_hits:
        raise BenchmarkError(
            f"the L1 hit measurement missed: {counters} (expected {expected_hits} hits, no "
            "misses); the copies expired or were invalidated during the run"
        )
    return rows, counters


# -- 2. invalidation delivery --------------------------------------------------------------


class _PubSubListener:
    """A redis-py PubSub read by a task of its own: `start` subscribes (waiting for the
    server's confirmation) and starts `_listen`; `aclose` stops the task and the PubSub."""

    def __init__(self, client: aioredis.Redis) -> None:
        self._pubsub = client.pubsub()
        self._task: asyncio.Task[None] | None = None

    async def _start(self, channel: str, *, pattern: bool, name: str) -> None:
        if pattern:
            await self._pubsub.psubscribe(channel)
            await await_subscribed(self._pubsub, "psubscribe", WAIT_S)
        else:
            await self._pubsub.subscribe(channel)
            await await_subscribed(self._pubsub, "subscribe", WAIT_S)
        self._task = asyncio.create_task(self._listen(), name=name)

    async def _listen(self) -> None:
        raise NotImplementedError

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self._pubsub.aclose()  # type: ignore[no-untyped-call]  # redis-py leaves it untyped


class _RawSubscriber(_PubSubListener):
    """A redis-py PubSub subscriber in a task: when each message arrived (perf_counter_ns)."""

    def __init__(self, client: aioredis.Redis, channel: str) -> None:
        super().__init__(client)
        self._channel: Final = channel
        self._waiter: asyncio.Future[int] | None = None

    async def start(self) -> None:
        await self._start(self._channel, pattern=False, name="bench-raw-subscriber")

    async def _listen(self) -> None:
        async for message in self._pubsub.listen():
            now = time.perf_counter_ns()
            waiter = self._waiter
            if message["type"] == "message" and waiter is not None and not waiter.done():
                waiter.set_result(now)

    def expect(self) -> asyncio.Future[int]:
        self._waiter = asyncio.get_running_loop().create_future()
        return self._waiter


async def measure_delivery(
    run: _Run, iterations: int
) -> tuple[list[tuple[LatencySummary, LatencySummary | None]], LatencySummary, LatencySummary]:
    """Home commit to the peer's invalidation, beside a raw pub/sub one-way message."""
    bus, home = await run.space("delivery")
    writer = await run.agent("writer", bus, home)
    peer = await run.agent("peer", bus, home)
    committed = TransitionClock(Event.HOME_COMMIT)
    invalidated = TransitionClock(Event.DELIVER_INVALIDATE)
    writer.core.tracer = committed
    peer.core.tracer = invalidated
    key = "delivery:key"
    raw_key = "delivery:raw-l3"
    channel = f"{run.prefix}-raw-channel"
    publisher = aioredis.Redis.from_url(run.redis_url)
    run.stack.push_async_callback(publisher.aclose)
    subscriber_client = aioredis.Redis.from_url(run.redis_url)
    run.stack.push_async_callback(subscriber_client.aclose)
    subscriber = _RawSubscriber(subscriber_client, channel)
    await subscriber.start()
    run.stack.push_async_callback(subscriber.aclose)
    probe_waiter: list[asyncio.Future[int]] = []

    async def on_probe(event: BusEvent) -> None:
        now = time.perf_counter_ns()
        if isinstance(event, Delivered) and probe_waiter and not probe_waiter[0].done():
            probe_waiter[0].set_result(now)

    probe = await bus.subscribe("probe", on_probe, keys=[key])  # sharded pub/sub: follow it
    run.stack.push_async_callback(probe.aclose)
    await writer.write_through(key, -1)

    delivery_ns: list[int] = []
    write_ns: list[int] = []
    raw_ns: list[int] = []
    bus_ns: list[int] = []
    l3_ns: list[int] = []
    clock = time.perf_counter_ns

    written = [-1]  # the last value written through (the writes count up from here)

    async def coherent(i: int, record: bool) -> None:
        _require_value(peer, key, await peer.get(key), written[0])  # a fill: S again
        _require_state(peer, key, L1State.S, "the peer must hold the key before the write")
        delivered = invalidated.expect(key)
        commit = committed.expect(key)
        written[0] += 1
        started = clock()
        await writer.write_through(key, written[0])
        finished = clock()
        delivered_at = await _within(delivered, "the peer's invalidation")
        committed_at = await _within(commit, "the writer's HOME_COMMIT row")
        if record:
            delivery_ns.append(delivered_at - committed_at)
            write_ns.append(finished - started)

    async def raw(i: int, record: bool) -> None:
        payload = encode(InvalidateMessage(run.prefix, key, i + 1, "writer", seq=i + 1))
        received = subscriber.expect()
        started = clock()
        await publisher.publish(channel, payload)
        received_at = await _within(received, "the raw pub/sub message")
        if record:
            raw_ns.append(received_at - started)

    async def bus_only(i: int, record: bool) -> None:
        probe_waiter[:] = [asyncio.get_running_loop().create_future()]
        started = clock()
        await bus.publish_invalidate(key, i + 1, ["probe"], sender="writer")
        received_at = await _within(probe_waiter[0], "the bus's probe message")
        if record:
            bus_ns.append(received_at - started)

    async def plain_write(i: int, record: bool) -> None:
        started = clock()
        await home.write(raw_key, i)
        if record:
            l3_ns.append(clock() - started)

    _progress(f"invalidation delivery vs raw pub/sub, {iterations} iterations ...")
    ops = (coherent, raw, bus_only, plain_write)
    for i in range(min(iterations, WARMUP_ITERATIONS)):
        for op in ops:
            await op(i, False)
    for i in range(iterations):
        for op in ops if i % 2 == 0 else ops[::-1]:
            await op(i, True)
    delivery = summarise(
        "invalidation delivery (HOME_COMMIT -> peer DELIVER_INVALIDATE)", delivery_ns
    )
    baseline = summarise("redis-py PUBLISH -> PubSub receive (same bytes)", raw_ns)
    rows: list[tuple[LatencySummary, LatencySummary | None]] = [
        (baseline, None),
        (delivery, baseline),
        (summarise("CoherenceBus.publish_invalidate -> handler (bus alone)", bus_ns), baseline),
        (
            summarise("CoherentL1Tier.write_through, 1 holder (end to end)", write_ns),
            _labelled(summarise("L3Tier.write (new version)", l3_ns)),
        ),
    ]
    writer.core.tracer = None
    peer.core.tracer = None
    return rows, delivery, baseline


# -- 2b. delivery to an agent in another process ---------------------------------------------


async def _peer_process(
    redis_url: str, postgres_dsn: str, schema: str, namespace: str, channel: str
) -> None:
    """The other process of `measure_delivery_across_processes`: a coherent L1 and a raw
    subscriber that print, on stdout, when an invalidation's row fired or a raw message
    arrived (`time.monotonic_ns`, one clock for every process on Linux)."""
    out = sys.stdout

    def tell(line: str) -> None:
        out.write(line + "\n")
        out.flush()

    def on_transition(record: TraceRecord) -> None:
        now = time.monotonic_ns()
        if record.event is Event.DELIVER_INVALIDATE:
            tell(f"inv {now}")

    bus = CoherenceBus(url=redis_url, namespace=namespace)
    await bus.connect()
    home = L3Tier(dsn=postgres_dsn, namespace=namespace, schema=schema)
    await home.connect()
    peer = CoherentL1Tier("xpeer", bus, home=home, operation_timeout_s=WAIT_S)
    await peer.start()
    peer.core.tracer = on_transition
    client = aioredis.Redis.from_url(redis_url)
    pubsub = client.pubsub()
    await pubsub.subscribe(channel)
    await await_subscribed(pubsub, "subscribe", WAIT_S)

    async def listen() -> None:
        async for message in pubsub.listen():
            now = time.monotonic_ns()
            if message["type"] == "message":
                tell(f"raw {now}")

    listener = asyncio.create_task(listen())
    tell("ready")
    loop = asyncio.get_running_loop()
    try:
        while True:
            line = (await loop.run_in_executor(None, sys.stdin.readline)).strip()
            if not line or line == "quit":
                break
            command, _, key = line.partition(" ")
            if command == "fill":
                await peer.get(key)
                tell(f"filled {peer.get_state(key).name}")
    finally:
        listener.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await listener
        await pubsub.aclose()  # type: ignore[no-untyped-call]  # redis-py leaves it untyped
        await client.aclose()
        await peer.aclose()
        await home.aclose()
        await bus.aclose()


async def measure_delivery_across_processes(
    run: _Run, iterations: int
) -> tuple[LatencySummary, LatencySummary]:
    """Delivery to a peer in another process, beside a raw pub/sub message to that process:
    the deployment where agents are processes, without one event loop shared by both ends."""
    bus, home = await run.space("xdelivery")
    writer = await run.agent("xwriter", bus, home)
    channel = f"{run.prefix}-xraw-channel"
    namespace = run.namespaces[-1]
    commit_at: list[int] = []

    def on_commit(record: TraceRecord) -> None:
        now = time.monotonic_ns()
        if record.event is Event.HOME_COMMIT:
            commit_at.append(now)

    writer.core.tracer = on_commit
    peer = await asyncio.create_subprocess_exec(
        sys.executable,
        _THIS_FILE,
        "--peer",
        run.redis_url,
        run.postgres_dsn,
        run.schema,
        namespace,
        channel,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    assert peer.stdin is not None
    assert peer.stdout is not None
    stdin, stdout = peer.stdin, peer.stdout

    async def expect(prefix: str) -> str:
        async with asyncio.timeout(WAIT_S * 3):
            while True:
                line = (await stdout.readline()).decode().strip()
                if not line:
                    raise BenchmarkError(f"the peer process ended while {prefix!r} was awaited")
                if line.startswith(prefix):
                    return line

    async def stop_peer() -> None:
        if peer.returncode is None:
            with contextlib.suppress(ConnectionError):
                stdin.write(b"quit\n")
                await stdin.drain()
            try:
                async with asyncio.timeout(WAIT_S):
                    await peer.wait()
            except TimeoutError:
                peer.kill()
                await peer.wait()

    run.stack.push_async_callback(stop_peer)
    await expect("ready")
    publisher = aioredis.Redis.from_url(run.redis_url)
    run.stack.push_async_callback(publisher.aclose)
    key = "xdelivery:key"
    delivery_ns: list[int] = []
    raw_ns: list[int] = []

    async def coherent(i: int, record: bool) -> None:
        await writer.write_through(key, i)
        stdin.write(f"fill {key}\n".encode())
        await stdin.drain()
        filled = await expect("filled")
        if filled != "filled S":
            raise BenchmarkError(f"the peer must hold the key before the write, got {filled}")
        commit_at.clear()
        await writer.write_through(key, -i)
        delivered = int((await expect("inv")).split()[1])
        if not commit_at:
            raise BenchmarkError("the writer's HOME_COMMIT row was not traced")
        if record:
            delivery_ns.append(delivered - commit_at[-1])

    async def raw(i: int, record: bool) -> None:
        payload = encode(InvalidateMessage(run.prefix, key, i + 1, "xwriter", seq=i + 1))
        started = time.monotonic_ns()
        await publisher.publish(channel, payload)
        received = int((await expect("raw")).split()[1])
        if record:
            raw_ns.append(received - started)

    _progress(f"invalidation delivery to another process, {iterations} iterations ...")
    for i in range(min(iterations, WARMUP_ITERATIONS)):
        await coherent(i, False)
        await raw(i, False)
    for i in range(iterations):
        first, second = (coherent, raw) if i % 2 == 0 else (raw, coherent)
        await first(i, True)
        await second(i, True)
    writer.core.tracer = None
    baseline = summarise("redis-py PUBLISH -> PubSub receive in another process", raw_ns)
    delivery = summarise(
        "invalidation delivery to another process (HOME_COMMIT -> DELIVER_INVALIDATE)",
        delivery_ns,
    )
    return delivery, baseline


# -- 3. messages per write -----------------------------------------------------------------


class _WireCounter(_PubSubListener):
    """Counts the messages published on a namespace's bus channels: a raw PSUBSCRIBE of them
    all, or with sharded pub/sub (no patterns) a raw SSUBSCRIBE of every channel `agents` may
    be sent about `key` (the only key written while it counts)."""

    def __init__(
        self, client: aioredis.Redis, bus: CoherenceBus, agents: list[str], key: str
    ) -> None:
        super().__init__(client)
        self._pattern: Final = f"{keyspace.bus_prefix(bus.namespace)}*"
        self._sentinel: Final = bus.channel_for(
            "zz-bench-sentinel", MessageKind.INVALIDATE, "sentinel"
        ).encode()
        self._sharded: Final = bus.sharded
        self._channels: Final = [
            bus.channel_for(agent, kind, key) for agent in agents for kind in MessageKind
        ]
        self.count = 0
        self._sentinel_seen: asyncio.Event = asyncio.Event()

    async def start(self) -> None:
        if not self._sharded:
            await self._start(self._pattern, pattern=True, name="bench-wire-counter")
            return
        channels = [*self._channels, self._sentinel.decode()]
        await self._pubsub.ssubscribe(*channels)
        for _ in channels:
            await await_subscribed(self._pubsub, "ssubscribe", WAIT_S)
        self._task = asyncio.create_task(self._listen(), name="bench-wire-counter")

    async def _listen(self) -> None:
        async for message in self._pubsub.listen():
            if message["type"] not in ("pmessage", "smessage"):
                continue
            if message["channel"] == self._sentinel:
                self._sentinel_seen.set()
            else:
                self.count += 1

    async def settle(self, publisher: aioredis.Redis) -> int:
        """The count once every message published before now has been read."""
        self._sentinel_seen.clear()
        if self._sharded:
            await publisher.spublish(self._sentinel, b"sentinel")
        else:
            await publisher.publish(self._sentinel, b"sentinel")
        async with asyncio.timeout(WAIT_S):
            await self._sentinel_seen.wait()
        return self.count


async def measure_messages(run: _Run, writes: int) -> MessagesPerWrite:
    """32 agents on one bus, 2 holders, a third writes through: messages per write."""
    bus, home = await run.space("fanout")
    _progress(f"starting {AGENTS} agents on one bus ...")
    agents = [await run.agent(f"agent-{i:02d}", bus, home) for i in range(AGENTS)]
    holders = agents[:HOLDERS]
    writer = agents[HOLDERS]
    clocks = [TransitionClock(Event.DELIVER_INVALIDATE) for _ in holders]
    for holder, transition_clock in zip(holders, clocks, strict=True):
        holder.core.tracer = transition_clock
    key = "fanout:key"
    # On a cluster: the node serving the namespace (where shard messages are published).
    node_url = await namespace_node_url(run.redis_url, bus.namespace)
    client = aioredis.Redis.from_url(node_url)
    run.stack.push_async_callback(client.aclose)
    subscriber_client = aioredis.Redis.from_url(node_url)
    run.stack.push_async_callback(subscriber_client.aclose)
    wire = _WireCounter(subscriber_client, bus, [agent.agent_id for agent in agents], key)
    await wire.start()
    run.stack.push_async_callback(wire.aclose)
    await writer.write_through(key, 0)

    def totals() -> tuple[int, int, int, int]:
        stats = [agent.statistics() for agent in agents]
        return (
            writer.statistics().invalidations_sent,
            bus.statistics().invalidations_received,
            sum(s.invalidations_received for s in stats),
            sum(s.recalls_sent for s in stats),
        )

    _progress(f"messages per write, {AGENTS} agents, {HOLDERS} holders, {writes} writes ...")
    counts: list[MessageCounts] = []
    wire_before = await wire.settle(client)
    for i in range(writes):
        for holder in holders:
            _require_value(holder, key, await holder.get(key), i)
            _require_state(holder, key, L1State.S, "a holder must hold the key before the write")
        waiters = [transition_clock.expect(key) for transition_clock in clocks]
        before = totals()
        await writer.write_through(key, i + 1)
        for waiter in waiters:
            await _within(waiter, "a holder's invalidation")
        after = totals()
        counts.append(MessageCounts(*(a - b for a, b in zip(after, before, strict=True))))
    wire_messages = await wire.settle(client) - wire_before
    for holder in holders:
        holder.core.tracer = None
    published = [c.published_by_writer for c in counts]
    delivered = [c.delivered_by_bus for c in counts]
    return MessagesPerWrite(
        agents=AGENTS,
        holders=HOLDERS,
        writes=writes,
        published_by_writer_mean=sum(published) / writes,
        published_by_writer_max=max(published),
        delivered_by_bus_mean=sum(delivered) / writes,
        delivered_by_bus_max=max(delivered),
        received_by_agents_mean=sum(c.received_by_agents for c in counts) / writes,
        recalls_per_write_mean=sum(c.recalls_sent for c in counts) / writes,
        wire_messages_per_write=wire_messages / writes,
        broadcast_would_send=AGENTS - 1,
    )


# -- 4. strict against coherent ------------------------------------------------------------


MODE_OPERATIONS: Final = (
    "write_through, 1 holder",
    "reader's fill after a remote write_through",
    "set (take ownership from S), 1 holder",
    "reader's fill recalling the owner (M)",
)


async def measure_modes(
    run: _Run, iterations: int
) -> list[tuple[LatencySummary, LatencySummary | None]]:
    """write_through, set and the reader's next fill in strict and in coherent mode."""
    key = "mode:key"
    pairs: dict[str, tuple[CoherentL1Tier, CoherentL1Tier, TransitionClock]] = {}
    samples: dict[str, dict[str, list[int]]] = {}
    for mode in ("coherent", "strict"):
        bus, home = await run.space(mode)
        writer = await run.agent("writer", bus, home, mode=mode)
        reader = await run.agent("reader", bus, home, mode=mode)
        invalidated = TransitionClock(Event.DELIVER_INVALIDATE)
        reader.core.tracer = invalidated
        pairs[mode] = (writer, reader, invalidated)
        samples[mode] = {operation: [] for operation in MODE_OPERATIONS}
        await writer.write_through(key, -1)
        await reader.get(key)
    clock = time.perf_counter_ns

    async def cycle(mode: str, i: int, record: bool) -> None:
        writer, reader, invalidated = pairs[mode]
        _require_state(reader, key, L1State.S, "the reader must hold the key before the write")
        elapsed: list[int] = []
        delivered = invalidated.expect(key)
        started = clock()
        await writer.write_through(key, 2 * i)
        elapsed.append(clock() - started)
        await _within(delivered, f"the reader's invalidation ({mode} write_through)")
        started = clock()
        value = await reader.get(key)
        elapsed.append(clock() - started)
        _require_value(reader, key, value, 2 * i)
        _require_state(reader, key, L1State.S, "a fill leaves a Shared copy")
        delivered = invalidated.expect(key)
        started = clock()
        await writer.set(key, 2 * i + 1)
        elapsed.append(clock() - started)
        await _within(delivered, f"the reader's invalidation ({mode} set)")
        started = clock()
        value = await reader.get(key)
        elapsed.append(clock() - started)
        _require_value(reader, key, value, 2 * i + 1)
        if record:
            for operation, ns in zip(MODE_OPERATIONS, elapsed, strict=True):
                samples[mode][operation].append(ns)

    _progress(f"strict vs coherent writes and fills, {iterations} iterations ...")
    for i in range(min(iterations, WARMUP_ITERATIONS)):
        for mode in ("coherent", "strict"):
            await cycle(mode, i, False)
    for i in range(iterations):
        for mode in ("coherent", "strict") if i % 2 == 0 else ("strict", "coherent"):
            await cycle(mode, i, True)
    for _, reader, _ in pairs.values():
        reader.core.tracer = None
    rows: list[tuple[LatencySummary, LatencySummary | None]] = []
    for operation in MODE_OPERATIONS:
        coherent = summarise(f"coherent: {operation}", samples["coherent"][operation])
        strict = summarise(f"strict: {operation}", samples["strict"][operation])
        rows += [(coherent, None), (strict, coherent)]
    return rows


# -- the run -------------------------------------------------------------------------------


async def _environment(redis_url: str, postgres_dsn: str) -> dict[str, str]:
    client = aioredis.Redis.from_url(redis_url)
    try:
        info = await client.info("server")
    finally:
        await client.aclose()
    connection = await asyncpg.connect(postgres_dsn, timeout=WAIT_S)
    try:
        postgres_version = str(await connection.fetchval("SHOW server_version"))
    finally:
        await connection.close(timeout=WAIT_S)
    redis_version = str(info.get("valkey_version") or info.get("redis_version") or "unknown")
    return {
        "python": platform.python_version(),
        "redis_server": f"{info.get('server_name', 'redis')} {redis_version}",
        "postgres_server": postgres_version,
    }


async def run(iterations: int, hit_iterations: int, writes: int) -> Results:
    """Measure everything once; raise `BenchmarkError` if a measurement was not what it claims."""
    _progress("finding or starting Redis and Postgres ...")
    redis_url = await asyncio.to_thread(resolve_redis_url, None)
    postgres_dsn = await asyncio.to_thread(resolve_postgres_dsn, None)
    environment = await _environment(redis_url, postgres_dsn)
    bench = _Run(redis_url, postgres_dsn)
    try:
        hit_rows, hit_counters = await measure_hits(bench, hit_iterations)
        delivery_rows, delivery, delivery_baseline = await measure_delivery(bench, iterations)
        cross, cross_baseline = await measure_delivery_across_processes(bench, iterations)
        delivery_rows += [(cross_baseline, None), (cross, cross_baseline)]
        messages = await measure_messages(bench, writes)
        mode_rows = await measure_modes(bench, iterations)
    finally:
        _progress("closing agents, dropping the schema and the namespaces' Redis keys ...")
        await bench.aclose()
    return Results(
        rows=hit_rows + delivery_rows + mode_rows,
        delivery=(delivery, delivery_baseline),
        cross_process=(cross, cross_baseline),
        messages=messages,
        hit_counters=hit_counters,
        environment=environment,
    )


def _ratio(summary: LatencySummary, baseline: LatencySummary | None) -> float | None:
    return summary.median_us / baseline.median_us if baseline is not None else None


def _targets(results: Results) -> list[dict[str, object]]:
    """Each target of issue 4 with its measured value and whether it was met in this run."""
    worst_hit = max(
        summary.median_us / baseline.median_us
        for summary, baseline in results.rows
        if summary.name in (HIT_S, HIT_M)
        and baseline is not None
        and baseline.name.startswith(AWAITED_LRU)
    )
    delivery, baseline = results.delivery
    delivery_ratio = delivery.median_us / baseline.median_us
    cross, cross_baseline = results.cross_process
    cross_ratio = cross.median_us / cross_baseline.median_us
    messages = results.messages.published_by_writer_max
    return [
        {
            "target": "coherent L1 hit (S, M; str value) within 5x of an awaited LRU get",
            "measured": round(worst_hit, 2),
            "limit": TARGET_HIT_RATIO,
            "met": worst_hit <= TARGET_HIT_RATIO,
        },
        {
            "target": "invalidation delivery within 1.5x of raw pub/sub at the median "
            "(writer and peer in one process)",
            "measured": round(delivery_ratio, 2),
            "limit": TARGET_DELIVERY_RATIO,
            "met": delivery_ratio <= TARGET_DELIVERY_RATIO,
        },
        {
            "target": "invalidation delivery within 1.5x of raw pub/sub at the median "
            "(peer in another process)",
            "measured": round(cross_ratio, 2),
            "limit": TARGET_DELIVERY_RATIO,
            "met": cross_ratio <= TARGET_DELIVERY_RATIO,
        },
        {
            "target": "invalidations per write with 32 agents, 2 holders (max over writes)",
            "measured": messages,
            "limit": TARGET_MESSAGES_PER_WRITE,
            "met": messages <= TARGET_MESSAGES_PER_WRITE,
        },
    ]


def format_messages(messages: MessagesPerWrite) -> str:
    """A Markdown table of the per-write message counts."""
    return "\n".join(
        [
            f"| per write ({messages.agents} agents, {messages.holders} holders, "
            f"{messages.writes} writes) | mean | max |",
            "|---|---:|---:|",
            f"| invalidations published (writer's L1 statistics) | "
            f"{messages.published_by_writer_mean:.2f} | {messages.published_by_writer_max} |",
            f"| invalidations delivered (bus statistics, all subscribers) | "
            f"{messages.delivered_by_bus_mean:.2f} | {messages.delivered_by_bus_max} |",
            f"| invalidations received (sum of the {messages.agents} L1s) | "
            f"{messages.received_by_agents_mean:.2f} | |",
            f"| recalls sent | {messages.recalls_per_write_mean:.2f} | |",
            f"| bus messages on the wire (PSUBSCRIBE count) | "
            f"{messages.wire_messages_per_write:.2f} | |",
            f"| a broadcast would send | {messages.broadcast_would_send} | |",
        ]
    )


def to_json(results: Results, iterations: int, hit_iterations: int) -> dict[str, object]:
    """Every number of the run, as plain JSON data."""
    delivery, baseline = results.delivery
    return {
        "benchmark": "coherence",
        "iterations": iterations,
        "hit_iterations": hit_iterations,
        "environment": results.environment,
        "latency": [
            {
                "operation": summary.name,
                "samples": summary.samples,
                "median_us": summary.median_us,
                "p95_us": summary.p95_us,
                "p99_us": summary.p99_us,
                "baseline": baseline.name if baseline else None,
                "baseline_median_us": baseline.median_us if baseline else None,
                "ratio": _ratio(summary, baseline),
            }
            for summary, baseline in results.rows
        ],
        "invalidation_delivery": {
            "median_us": delivery.median_us,
            "p95_us": delivery.p95_us,
            "p99_us": delivery.p99_us,
            "baseline_median_us": baseline.median_us,
            "ratio": delivery.median_us / baseline.median_us,
        },
        "invalidation_delivery_across_processes": {
            "median_us": results.cross_process[0].median_us,
            "p95_us": results.cross_process[0].p95_us,
            "p99_us": results.cross_process[0].p99_us,
            "baseline_median_us": results.cross_process[1].median_us,
            "ratio": results.cross_process[0].median_us / results.cross_process[1].median_us,
        },
        "messages_per_write": asdict(results.messages),
        "hit_counters": results.hit_counters,
        "targets": _targets(results),
    }


def main(argv: Sequence[str] | None = None) -> dict[str, object]:
    """Parse arguments, run the measurements, print the tables; return (and maybe write) JSON."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument(
        "--iterations", type=int, default=400, help="samples per protocol measurement"
    )
    parser.add_argument(
        "--hit-iterations", type=int, help="samples per L1 hit measurement (default 25x)"
    )
    parser.add_argument("--writes", type=int, help="writes in the 32-agent run (default 1/4)")
    parser.add_argument("--json", type=Path, help="also write the numbers to this file")
    parser.add_argument("--peer", nargs=5, help=argparse.SUPPRESS)  # the other process
    args = parser.parse_args(argv)
    if args.peer:
        asyncio.run(_peer_process(*args.peer))
        return {}
    iterations = max(1, args.iterations)
    hit_iterations = max(1, args.hit_iterations or 25 * iterations)
    writes = max(1, args.writes or iterations // 4)
    results = asyncio.run(run(iterations, hit_iterations, writes))
    data = to_json(results, iterations, hit_iterations)
    print(format_table(results.rows))
    print()
    print(format_messages(results.messages))
    print()
    for target in _targets(results):
        verdict = "met" if target["met"] else "NOT met"
        print(f"- {target['target']}: {target['measured']} (limit {target['limit']}): {verdict}")
    if args.json:
        args.json.write_text(json.dumps(data, indent=2))
    return data


if __name__ == "__main__":
    main()
