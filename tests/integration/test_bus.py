"""CoherenceBus against a real Redis: targeted delivery, hostile input, dropped connections, gaps.

Every wait is an event with a timeout (`EventRecorder.wait_for`); nothing sleeps to let things
happen. `measure_one_way_latency` is reused by the coherence benchmark.

Every test taking the `bus` fixture runs with classic pub/sub and with sharded pub/sub (the
default on a cluster): a sharded subscriber receives messages only about the keys it follows,
so each test's subscribers follow the keys it publishes about (a no-op with classic pub/sub),
and messages published behind the bus's back use the bus's publishing command.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import pytest
import redis.asyncio as aioredis

from sagemem.coherence import (
    BusEvent,
    BusUnavailable,
    CoherenceBus,
    Delivered,
    InvalidateMessage,
    Missed,
    MissedReason,
    RecallMessage,
    Resynced,
)
from sagemem.coherence.messages import MESSAGE_SIZE_MAX_BYTES, Message, encode
from sagemem.errors import ClosedResourceError, ConfigurationError
from sagemem.redis_topology import namespace_node_url
from sagemem.spec.vocabulary import MessageKind

WAIT_S = 10.0


class EventRecorder:
    """A bus handler that records events and lets a test await a condition on them."""

    def __init__(self, fail_on: Callable[[BusEvent], bool] | None = None) -> None:
        self.events: list[BusEvent] = []
        self._changed = asyncio.Condition()
        self._fail_on = fail_on

    async def __call__(self, event: BusEvent) -> None:
        async with self._changed:
            self.events.append(event)
            self._changed.notify_all()
        if self._fail_on is not None and self._fail_on(event):
            raise RuntimeError(f"handler fails on {event!r} (on purpose)")

    async def wait_for(self, predicate: Callable[[list[BusEvent]], bool]) -> list[BusEvent]:
        async with asyncio.timeout(WAIT_S), self._changed:
            await self._changed.wait_for(lambda: predicate(self.events))
        return list(self.events)

    async def wait_for_count(self, count: int) -> list[BusEvent]:
        return await self.wait_for(lambda events: len(events) >= count)

    def messages(self) -> list[Message]:
        return [event.message for event in self.events if isinstance(event, Delivered)]


@pytest.fixture(params=["classic", "sharded"])
async def bus(
    redis_url: str, namespace: str, request: pytest.FixtureRequest
) -> AsyncIterator[CoherenceBus]:
    """A connected bus with a fast health check, closed after the test; classic or sharded."""
    async with CoherenceBus(
        redis_url,
        namespace=namespace,
        pubsub=request.param,
        health_check_interval_s=0.2,
        health_check_timeout_s=0.6,
        reconnect_delay_min_s=0.02,
        reconnect_delay_max_s=0.2,
    ) as connected:
        yield connected


@pytest.fixture
async def raw(redis_url: str, namespace: str) -> AsyncIterator[aioredis.Redis]:
    """A plain redis client, for doing things behind the bus's back (on the server that holds
    the namespace's keys)."""
    client = aioredis.Redis.from_url(
        await namespace_node_url(redis_url, namespace), socket_timeout=WAIT_S
    )
    try:
        yield client
    finally:
        await client.aclose()


async def raw_publish(raw: aioredis.Redis, bus: CoherenceBus, channel: str, payload: bytes) -> int:
    """Publish behind the bus's back with the bus's command (PUBLISH or SPUBLISH)."""
    return int(await raw.execute_command(bus.publish_command, channel, payload))  # type: ignore[no-untyped-call]  # untyped in redis-py


async def test_invalidation_reaches_only_targeted_agents(bus: CoherenceBus) -> None:
    """Holders a and b receive the invalidation; c, not a target, receives nothing."""
    recorders = {agent: EventRecorder() for agent in ("a", "b", "c")}
    follows = {"a": ["belief:x"], "b": ["belief:x"], "c": ["belief:x", "belief:y"]}
    for agent, recorder in recorders.items():
        await bus.subscribe(agent, recorder, keys=follows[agent])

    sent = await bus.publish_invalidate("belief:x", 3, ["a", "b", "a"], sender="writer")
    await bus.publish_invalidate("belief:y", 1, ["c"], sender="writer")

    assert sent == 2
    for agent in ("a", "b"):
        events = await recorders[agent].wait_for_count(1)
        assert events == [Delivered(InvalidateMessage(bus.namespace, "belief:x", 3, "writer", 1))]
    # c's channel is ordered: if belief:x had reached c, it would come before belief:y.
    events = await recorders["c"].wait_for_count(1)
    assert events == [Delivered(InvalidateMessage(bus.namespace, "belief:y", 1, "writer", 1))]
    stats = bus.statistics()
    assert (stats.invalidations_sent, stats.invalidations_received) == (3, 3)


async def test_recall_is_delivered_with_its_owner_epoch(bus: CoherenceBus) -> None:
    """A recall reaches the owner with the epoch the sender saw; statistics count it."""
    recorder = EventRecorder()
    await bus.subscribe("owner", recorder, keys=["k"])

    assert await bus.publish_recall("k", ["owner"], sender="reader", owner_epoch=7) == 1

    events = await recorder.wait_for_count(1)
    assert events == [Delivered(RecallMessage(bus.namespace, "k", "reader", 7, 1))]
    stats = bus.statistics()
    assert (stats.recalls_sent, stats.recalls_received) == (1, 1)


async def test_publishing_to_no_target_sends_nothing(bus: CoherenceBus) -> None:
    """An empty target list is not an error and costs no message."""
    assert await bus.publish_invalidate("k", 1, [], sender="w") == 0
    assert bus.statistics().invalidations_sent == 0


async def test_one_call_publishes_to_more_targets_than_one_script_takes(
    bus: CoherenceBus, raw: aioredis.Redis
) -> None:
    """300 targets (over the 256 per script call) each get exactly one sequenced message."""
    targets = [f"agent-{index}" for index in range(300)]

    assert await bus.publish_invalidate("k", 1, targets, sender="w") == 300

    counters = await raw.mget([bus.sequence_key_for(agent) for agent in targets])
    assert counters == [b"1"] * 300


async def test_bad_targets_and_keys_are_rejected_before_sending(bus: CoherenceBus) -> None:
    """A str instead of a list, an invalid agent id, an invalid key: typed errors, nothing sent."""
    with pytest.raises(ConfigurationError, match="iterable of agent ids"):
        await bus.publish_invalidate("k", 1, "agent-a", sender="w")
    with pytest.raises(ConfigurationError, match="agent id"):
        await bus.publish_invalidate("k", 1, ["has:colon"], sender="w")
    with pytest.raises(ValueError, match="key"):
        await bus.publish_invalidate("", 1, ["a"], sender="w")
    with pytest.raises(ValueError, match="version"):
        await bus.publish_invalidate("k", True, ["a"], sender="w")
    assert bus.statistics().invalidations_sent == 0


HOSTILE_PAYLOADS = [
    b"not json at all",
    b"[1, 2, 3]",
    b"42",
    b'"a string"',
    b"null",
    b"\xff\xfe\xfd",
    b'{"fmt":1,"kind":"invalidate","ns":"x","key":"k","version":"7","sender":"w","seq":1}',
    b'{"fmt":1,"kind":"invalidate","ns":"x","key":"k","sender":"w","seq":1}',
    b'{"fmt":1,"kind":"invalidate","ns":"x","key":"k","version":true,"sender":"w","seq":1}',
    b'{"fmt":1,"kind":"invalidate","ns":"x","key":"k","version":-1,"sender":"w","seq":1}',
    b'{"fmt":2,"kind":"invalidate","ns":"x","key":"k","version":1,"sender":"w","seq":1}',
    b'{"fmt":1,"kind":"evict_all","ns":"x","key":"k","sender":"w","seq":1}',
    b"{" + b'"k":"' + b"x" * MESSAGE_SIZE_MAX_BYTES + b'"}',
    b"[" * 5000 + b"]" * 5000,
]


async def test_hostile_messages_are_counted_and_dropped_and_delivery_goes_on(
    bus: CoherenceBus, raw: aioredis.Redis
) -> None:
    """Garbage on an agent's channel is counted as malformed; a valid message still arrives."""
    recorder = EventRecorder()
    await bus.subscribe("victim", recorder, keys=["k"])
    channel = bus.channel_for("victim", MessageKind.INVALIDATE, "k")
    foreign = InvalidateMessage("another-namespace", "k", 1, "w", 1)
    payloads = [*HOSTILE_PAYLOADS, encode(foreign)]

    for payload in payloads:
        assert await raw_publish(raw, bus, channel, payload) == 1
    await bus.publish_invalidate("k", 5, ["victim"], sender="w")

    events = await recorder.wait_for_count(1)
    assert events == [Delivered(InvalidateMessage(bus.namespace, "k", 5, "w", 1))]
    stats = bus.statistics()
    assert stats.malformed_messages == len(payloads)
    assert (stats.sequence_gaps, stats.disconnects, stats.handler_errors) == (0, 0, 0)


async def test_a_message_on_another_keys_channel_is_dropped_as_misaddressed(
    bus: CoherenceBus, raw: aioredis.Redis
) -> None:
    """A message whose channel names another key or kind (what a publisher allowed to publish
    about some keys would send to forge one about others, see sagemem.grants) is dropped and
    counted before its sequence number is looked at; a bus that trusted the body alone would
    deliver it. Keys holding the channel's separators travel encoded and arrive intact. With
    sharded pub/sub a channel of a key the agent does not follow reaches nobody."""
    recorder = EventRecorder()
    awkward = "a|i|b%7C|r|*?[x]%"
    await bus.subscribe("victim", recorder, keys=[awkward, "agent:m:x", "team:secret"])
    forged = InvalidateMessage(bus.namespace, "team:secret", 9, "mallory", seq=1)
    recall = RecallMessage(bus.namespace, "agent:m:x", "mallory", None, seq=1)
    for channel, payload in (
        (bus.channel_for("victim", MessageKind.INVALIDATE, "agent:m:x"), encode(forged)),
        (bus.channel_for("victim", MessageKind.INVALIDATE, "agent:m:x"), encode(recall)),
        (bus.channel_for("victim", MessageKind.RECALL, "team:secret"), encode(forged)),
    ):
        assert await raw_publish(raw, bus, channel, payload) == 1
    unfollowed = bus.pattern_for("victim")[:-1] + "i|team:secret|x"  # no key's channel
    assert await raw_publish(raw, bus, unfollowed, encode(forged)) == (0 if bus.sharded else 1)
    await bus.publish_invalidate(awkward, 4, ["victim"], sender="w")

    events = await recorder.wait_for_count(1)
    assert events == [Delivered(InvalidateMessage(bus.namespace, awkward, 4, "w", 1))]
    stats = bus.statistics()
    assert stats.misaddressed_messages == (3 if bus.sharded else 4)
    assert (stats.malformed_messages, stats.sequence_gaps) == (0, 0)


async def test_a_raising_handler_is_counted_and_does_not_stop_delivery(
    bus: CoherenceBus,
) -> None:
    """The handler raises on the first message; the second is delivered all the same."""
    recorder = EventRecorder(fail_on=lambda event: len(recorder.events) == 1)
    await bus.subscribe("a", recorder, keys=["k"])

    await bus.publish_invalidate("k", 1, ["a"], sender="w")
    await bus.publish_invalidate("k", 2, ["a"], sender="w")

    await recorder.wait_for_count(2)
    assert [message.version for message in recorder.messages()] == [1, 2]  # type: ignore[union-attr]
    assert bus.statistics().handler_errors == 1


async def test_killed_pubsub_connection_reports_missed_then_resynced(
    bus: CoherenceBus, raw: aioredis.Redis
) -> None:
    """CLIENT KILL TYPE pubsub: Missed at once, then Resynced, then new messages arrive."""
    recorders = {agent: EventRecorder() for agent in ("a", "b")}
    for agent, recorder in recorders.items():
        await bus.subscribe(agent, recorder, keys=["k"])

    killed = await raw.client_kill_filter(_type="pubsub")
    assert killed >= 1
    for recorder in recorders.values():
        await recorder.wait_for(lambda events: any(isinstance(e, Resynced) for e in events))
    await bus.publish_invalidate("k", 9, ["a", "b"], sender="w")

    for recorder in recorders.values():
        events = await recorder.wait_for_count(3)
        assert isinstance(events[0], Missed)
        assert events[0].reason is MissedReason.DISCONNECTED
        assert events[1:] == [
            Resynced(),
            Delivered(InvalidateMessage(bus.namespace, "k", 9, "w", 1)),
        ]
    stats = bus.statistics()
    assert stats.disconnects >= 1
    assert stats.reconnects >= 1
    assert stats.connected


async def test_many_subscribers_are_all_resynced_after_a_kill(
    bus: CoherenceBus, raw: aioredis.Redis
) -> None:
    """Forty agents on one bus: each gets Missed, then Resynced, then the next message."""
    recorders = {f"agent-{index}": EventRecorder() for index in range(40)}
    for agent, recorder in recorders.items():
        await bus.subscribe(agent, recorder, keys=["k"])

    await raw.client_kill_filter(_type="pubsub")
    for recorder in recorders.values():
        await recorder.wait_for(lambda events: any(isinstance(e, Resynced) for e in events))
    assert await bus.publish_invalidate("k", 2, list(recorders), sender="w") == 40

    for recorder in recorders.values():
        events = await recorder.wait_for_count(3)
        assert [type(event) for event in events] == [Missed, Resynced, Delivered]


async def test_subscribing_during_a_reconnection_completes_once_resynced(
    bus: CoherenceBus, raw: aioredis.Redis
) -> None:
    """A subscribe() racing a dropped connection returns in sync; it had nothing to miss."""
    await bus.subscribe("early", EventRecorder(), keys=["k"])
    await raw.client_kill_filter(_type="pubsub")

    late = EventRecorder()
    await bus.subscribe("late", late, keys=["k"])
    await bus.publish_invalidate("k", 1, ["late"], sender="w")

    events = await late.wait_for(lambda events: any(isinstance(e, Delivered) for e in events))
    assert events[-1] == Delivered(InvalidateMessage(bus.namespace, "k", 1, "w", 1))
    # Had the SUBSCRIBE won the race against the kill, the loss is reported, never hidden.
    assert [type(event) for event in events] in ([Delivered], [Missed, Resynced, Delivered])


async def test_messages_published_while_disconnected_are_reported_not_silently_lost(
    bus: CoherenceBus, raw: aioredis.Redis
) -> None:
    """Whatever was published around the kill, a subscriber saw it or was told it missed it."""
    recorder = EventRecorder()
    await bus.subscribe("a", recorder, keys=["k"])

    await raw.client_kill_filter(_type="pubsub")
    await bus.publish_invalidate("k", 1, ["a"], sender="w")  # likely lands in the gap
    await recorder.wait_for(lambda events: any(isinstance(e, Resynced) for e in events))
    await bus.publish_invalidate("k", 2, ["a"], sender="w")

    events = await recorder.wait_for(
        lambda events: any(isinstance(e, Delivered) and e.message.seq == 2 for e in events)
    )
    delivered_seqs = [e.message.seq for e in events if isinstance(e, Delivered)]
    assert 1 in delivered_seqs or any(isinstance(e, Missed) for e in events)


async def test_joining_a_busy_channel_delivers_a_contiguous_sequence_without_false_gaps(
    bus: CoherenceBus, raw: aioredis.Redis
) -> None:
    """Messages racing the subscription's counter read are neither lost nor reported as gaps."""
    stop = asyncio.Event()

    async def publish_until_stopped() -> None:
        for version in range(1, 3001):
            if stop.is_set():
                return
            await bus.publish_invalidate("k", version, ["busy"], sender="w")

    publisher = asyncio.create_task(publish_until_stopped())
    try:
        recorder = EventRecorder()
        await bus.subscribe("busy", recorder, keys=["k"])
        await recorder.wait_for_count(50)
    finally:
        stop.set()
        async with asyncio.timeout(WAIT_S):
            await publisher
    last = int(await raw.get(bus.sequence_key_for("busy")) or 0)

    events = await recorder.wait_for(
        lambda events: any(isinstance(e, Delivered) and e.message.seq == last for e in events)
    )
    seqs = [event.message.seq for event in events if isinstance(event, Delivered)]
    assert all(isinstance(event, Delivered) for event in events)
    assert seqs == list(range(seqs[0], last + 1))
    assert bus.statistics().sequence_gaps == 0


async def test_a_skipped_sequence_number_reports_missed_then_resynced(
    bus: CoherenceBus, raw: aioredis.Redis
) -> None:
    """A counter bumped behind the bus's back looks like a lost message: Missed, Resynced."""
    recorder = EventRecorder()
    await bus.subscribe("a", recorder, keys=["k"])
    await bus.publish_invalidate("k", 1, ["a"], sender="w")
    await recorder.wait_for_count(1)

    await raw.incr(bus.sequence_key_for("a"))  # message 2 is "lost"
    await bus.publish_invalidate("k", 3, ["a"], sender="w")

    events = await recorder.wait_for_count(4)
    assert isinstance(events[1], Missed)
    assert events[1].reason is MissedReason.SEQUENCE_GAP
    assert events[2:] == [
        Resynced(),
        Delivered(InvalidateMessage(bus.namespace, "k", 3, "w", 3)),
    ]
    assert bus.statistics().sequence_gaps == 1


async def test_a_forged_out_of_sequence_message_reports_missed(
    bus: CoherenceBus, raw: aioredis.Redis
) -> None:
    """A well-formed message with a seq that goes backwards is a gap too (at worst a refetch)."""
    recorder = EventRecorder()
    await bus.subscribe("a", recorder, keys=["k"])
    await bus.publish_invalidate("k", 1, ["a"], sender="w")
    await bus.publish_invalidate("k", 2, ["a"], sender="w")
    await recorder.wait_for_count(2)

    forged = InvalidateMessage(bus.namespace, "k", 99, "mallory", seq=1)
    await raw_publish(raw, bus, bus.channel_for("a", MessageKind.INVALIDATE, "k"), encode(forged))

    events = await recorder.wait_for_count(5)
    assert [type(event) for event in events[2:]] == [Missed, Resynced, Delivered]
    assert bus.statistics().sequence_gaps == 1


async def test_health_check_detects_an_unresponsive_connection(
    bus: CoherenceBus, raw: aioredis.Redis
) -> None:
    """A server that stops answering PINGs (CLIENT PAUSE) is declared dead and resynced."""
    recorder = EventRecorder()
    await bus.subscribe("a", recorder, keys=["k"])

    await raw.client_pause(2000, all=True)
    events = await recorder.wait_for(lambda events: any(isinstance(e, Resynced) for e in events))

    assert isinstance(events[0], Missed)
    assert events[0].reason is MissedReason.HEALTH_CHECK_FAILED
    assert bus.statistics().health_check_failures >= 1


async def test_a_closed_subscription_receives_nothing_and_can_be_renewed(
    bus: CoherenceBus,
) -> None:
    """After aclose() the old handler hears nothing; a new subscription gets only new messages."""
    first = EventRecorder()
    subscription = await bus.subscribe("a", first, keys=["k"])
    with pytest.raises(ConfigurationError, match="already subscribed"):
        await bus.subscribe("a", EventRecorder(), keys=["k"])

    await subscription.aclose()
    await subscription.aclose()
    await bus.publish_invalidate("k", 1, ["a"], sender="w")
    second = EventRecorder()
    async with await bus.subscribe("a", second, keys=["k"]) as renewed:
        assert renewed.active
        await bus.publish_invalidate("k", 2, ["a"], sender="w")
        events = await second.wait_for_count(1)

    # Message 1 was published after the UNSUBSCRIBE was sent; delivering it to the new
    # subscription would be harmless (an extra invalidation), so only message 2 is required.
    assert events[-1] == Delivered(InvalidateMessage(bus.namespace, "k", 2, "w", 2))
    assert all(isinstance(event, Delivered) for event in events)
    assert first.events == []
    assert bus.statistics().subscriptions == 0


def _bus_tasks() -> list[asyncio.Task[object]]:
    return [t for t in asyncio.all_tasks() if t.get_name().startswith("sagemem-bus-")]


async def test_aclose_is_idempotent_and_leaves_no_task(redis_url: str, namespace: str) -> None:
    """aclose() twice is fine, stops the listener, and the closed bus refuses to work."""
    bus = CoherenceBus(redis_url, namespace=namespace)
    await bus.connect()
    await bus.connect()
    subscription = await bus.subscribe("a", EventRecorder(), keys=["k"])
    assert len(_bus_tasks()) == 1

    await bus.aclose()
    await bus.aclose()

    assert _bus_tasks() == []
    assert not subscription.active
    await subscription.aclose()
    with pytest.raises(ClosedResourceError):
        await bus.publish_invalidate("k", 1, ["a"], sender="w")
    with pytest.raises(ClosedResourceError):
        await bus.subscribe("b", EventRecorder(), keys=["k"])


async def test_a_handler_may_close_the_bus(redis_url: str, namespace: str) -> None:
    """aclose() from inside a handler completes its cleanup, then the listener ends."""
    bus = CoherenceBus(redis_url, namespace=namespace)
    await bus.connect()
    closed = asyncio.Event()

    async def close_on_first_event(event: BusEvent) -> None:
        await bus.aclose()
        closed.set()

    await bus.subscribe("a", close_on_first_event, keys=["k"])
    listeners = _bus_tasks()
    await bus.publish_invalidate("k", 1, ["a"], sender="w")

    async with asyncio.timeout(WAIT_S):
        await closed.wait()
    _, pending = await asyncio.wait(listeners, timeout=WAIT_S)
    assert pending == set()
    assert not bus.statistics().connected


async def test_connect_to_nothing_raises_bus_unavailable(namespace: str) -> None:
    """A URL where no server listens fails fast with BusUnavailable, the cause chained."""
    bus = CoherenceBus("redis://127.0.0.1:1", namespace=namespace, connect_timeout_s=2.0)

    with pytest.raises(BusUnavailable, match="connect") as caught:
        await bus.connect()

    assert caught.value.__cause__ is not None
    assert _bus_tasks() == []


# -- latency, measured (never asserted) -----------------------------------------------------


@dataclass(frozen=True, slots=True)
class OneWayLatency:
    """Median one-way latencies over the same server, in seconds."""

    bus_median_s: float
    raw_median_s: float
    samples: int


async def measure_one_way_latency(
    redis_url: str, namespace: str, *, samples: int = 200
) -> OneWayLatency:
    """Publish-to-handler latency of the bus and of a raw redis-py pub/sub message."""
    bus_latencies: list[float] = []
    raw_latencies: list[float] = []
    async with CoherenceBus(redis_url, namespace=namespace) as bus:
        arrived = asyncio.Event()

        async def on_event(event: BusEvent) -> None:
            arrived.set()

        await bus.subscribe("latency", on_event, keys=["k"])
        for version in range(samples):
            arrived.clear()
            started = time.perf_counter()
            await bus.publish_invalidate("k", version, ["latency"], sender="w")
            async with asyncio.timeout(WAIT_S):
                await arrived.wait()
            bus_latencies.append(time.perf_counter() - started)

    client = aioredis.Redis.from_url(redis_url)
    pubsub = client.pubsub()
    try:
        channel = f"sagemem-latency:{namespace}"
        await pubsub.subscribe(channel)
        async with asyncio.timeout(WAIT_S):
            while await pubsub.get_message(timeout=1.0) is None:
                pass  # the subscribe confirmation
        for _ in range(samples):
            started = time.perf_counter()
            await client.publish(channel, b"x")
            async with asyncio.timeout(WAIT_S):
                while await pubsub.get_message(timeout=1.0) is None:
                    pass
            raw_latencies.append(time.perf_counter() - started)
    finally:
        await pubsub.aclose()  # type: ignore[no-untyped-call]  # redis-py leaves it untyped
        await client.aclose()
    return OneWayLatency(
        bus_median_s=statistics.median(bus_latencies),
        raw_median_s=statistics.median(raw_latencies),
        samples=samples,
    )


async def test_one_way_latency_is_measured(redis_url: str, namespace: str) -> None:
    """Measures (does not judge) the bus's one-way latency next to raw pub/sub."""
    latency = await measure_one_way_latency(redis_url, namespace, samples=100)

    print(
        f"\nbus one-way median {latency.bus_median_s * 1e6:.0f} us, raw pub/sub "
        f"{latency.raw_median_s * 1e6:.0f} us (ratio "
        f"{latency.bus_median_s / latency.raw_median_s:.2f}, {latency.samples} samples)"
    )
    assert latency.bus_median_s > 0
    assert latency.raw_median_s > 0


async def _pubsub_client(raw: aioredis.Redis, bus: CoherenceBus) -> dict[str, str]:
    """The server's CLIENT LIST entry of the bus's pub/sub connection."""
    name = f"sagemem-bus-{bus.namespace}"
    [entry] = [client for client in await raw.client_list() if client.get("name") == name]
    return entry


async def test_a_sharded_subscriber_hears_only_the_keys_it_follows(
    redis_url: str, namespace: str, raw: aioredis.Redis
) -> None:
    """Sharded pub/sub: the bus holds shard subscriptions only (one anchor per agent, one
    channel per followed key and kind of message), a message about a key the agent does not
    follow reaches nobody and shows as a gap at the next message (never a silent loss),
    following and unfollowing change what arrives, and a reconnection resubscribes every
    followed key."""
    async with CoherenceBus(
        redis_url, namespace=namespace, pubsub="sharded", reconnect_delay_max_s=0.2
    ) as bus:
        recorder = EventRecorder()
        subscription = await bus.subscribe("a", recorder, keys=["k"])
        assert bus.sharded
        assert bus.publish_command == "SPUBLISH"
        stats = bus.statistics()
        assert (stats.pubsub, stats.followed_channels) == ("sharded", 3)
        entry = await _pubsub_client(raw, bus)
        assert (entry["psub"], entry["ssub"]) == ("0", "4")  # the anchor and k's 3 kinds

        await bus.publish_invalidate("other", 1, ["a"], sender="w")  # seq 1: not followed
        await bus.publish_invalidate("k", 2, ["a"], sender="w")  # seq 2
        events = await recorder.wait_for_count(3)
        assert isinstance(events[0], Missed)
        assert events[0].reason is MissedReason.SEQUENCE_GAP
        assert events[1:] == [
            Resynced(),
            Delivered(InvalidateMessage(bus.namespace, "k", 2, "w", 2)),
        ]

        await subscription.follow(["other", "k"])  # k: already followed, nothing sent
        assert bus.statistics().followed_channels == 6
        await bus.publish_recall("other", ["a"], sender="w", owner_epoch=4)
        events = await recorder.wait_for_count(4)
        assert events[3] == Delivered(RecallMessage(bus.namespace, "other", "w", 4, 3))

        await raw.client_kill_filter(_type="pubsub")
        await recorder.wait_for(lambda events: isinstance(events[-1], Resynced))
        assert (await _pubsub_client(raw, bus))["ssub"] == "7"
        await bus.publish_invalidate("other", 5, ["a"], sender="w")
        events = await recorder.wait_for(lambda events: isinstance(events[-1], Delivered))
        assert events[-1] == Delivered(InvalidateMessage(bus.namespace, "other", 5, "w", 4))

        await subscription.unfollow(["k"])
        await subscription.unfollow(["k", "never-followed"])  # nothing to do: no error
        assert bus.statistics().followed_channels == 3
        await bus.publish_invalidate("other", 6, ["a"], sender="w")
        await recorder.wait_for(
            lambda events: events[-1] == Delivered(InvalidateMessage(namespace, "other", 6, "w", 5))
        )
        assert (await _pubsub_client(raw, bus))["ssub"] == "4"
        await subscription.aclose()
        assert bus.statistics().followed_channels == 0


async def test_classic_pub_sub_delivers_without_following(
    redis_url: str, namespace: str, raw: aioredis.Redis
) -> None:
    """Classic pub/sub (the default on a single server): one pattern subscription per agent
    hears every message addressed to it; `follow` checks its keys and does nothing else."""
    async with CoherenceBus(redis_url, namespace=namespace, pubsub="classic") as bus:
        recorder = EventRecorder()
        subscription = await bus.subscribe("a", recorder)
        await subscription.follow(["k"])
        stats = bus.statistics()
        assert (stats.pubsub, stats.followed_channels) == ("classic", 0)
        assert bus.publish_command == "PUBLISH"
        entry = await _pubsub_client(raw, bus)
        assert (entry["psub"], entry["ssub"]) == ("1", "0")
        await bus.publish_invalidate("anything", 1, ["a"], sender="w")
        events = await recorder.wait_for_count(1)
        assert events == [Delivered(InvalidateMessage(namespace, "anything", 1, "w", 1))]
        with pytest.raises(ValueError, match="key"):
            await subscription.follow([""])


@pytest.mark.parametrize("pubsub", ["classic", "sharded"])
async def test_bad_pubsub_choices_and_followed_keys_are_refused_and_change_nothing(
    redis_url: str, namespace: str, pubsub: str
) -> None:
    """Typed errors, each saying what to pass instead, and nothing followed or subscribed."""
    for wrong in ("fast", "", "SHARDED", None, 1):
        with pytest.raises(ConfigurationError, match="pubsub must be one of"):
            CoherenceBus(redis_url, namespace=namespace, pubsub=wrong)  # type: ignore[arg-type]  # on purpose
    bus = CoherenceBus(redis_url, namespace=namespace, pubsub=pubsub)
    with pytest.raises(ClosedResourceError):
        await bus.follow("a", ["k"])
    async with bus:
        with pytest.raises(ConfigurationError, match="not subscribed"):
            await bus.follow("a", ["k"])
        with pytest.raises(ConfigurationError, match="wrap one key in a list"):
            await bus.subscribe("a", EventRecorder(), keys="k")
        with pytest.raises(ValueError, match="key"):
            await bus.subscribe("a", EventRecorder(), keys=["k", ""])
        assert bus.statistics().subscriptions == 0
        subscription = await bus.subscribe("a", EventRecorder(), keys=["k"])
        with pytest.raises(ConfigurationError, match="wrap one key in a list"):
            await subscription.follow("other")
        with pytest.raises(ValueError, match="key"):
            await subscription.follow(["other", ""])  # the good key is not followed either
        with pytest.raises(ConfigurationError, match="wrap one key in a list"):
            await subscription.unfollow("k")
        assert bus.statistics().followed_channels == (3 if pubsub == "sharded" else 0)
