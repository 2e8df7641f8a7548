"""The demo's replay history keeps the current run from its start, not heartbeats."""

from __future__ import annotations

import asyncio

from demo.server.events import EventHub


def test_heartbeats_do_not_push_the_run_out_of_the_history() -> None:
    """A thousand `stats` events after a run leave every event of the run in the history."""
    hub = EventHub(history_max=50)
    hub.publish("run", {"run": 1, "status": "running"})
    for number in range(20):
        hub.publish("op", {"run": 1, "n": number})
    for _ in range(1000):
        hub.publish("stats", {"run": 1})
    kinds = [event.kind for event in hub.history()]
    assert kinds == ["run"] + ["op"] * 20


def test_a_new_run_starts_a_new_history() -> None:
    """The first `run` event of a new run number drops the previous run's events."""
    hub = EventHub()
    hub.publish("run", {"run": 1, "status": "running"})
    hub.publish("op", {"run": 1})
    hub.publish("run", {"run": 1, "status": "finished"})
    hub.publish("run", {"run": 2, "status": "starting"})
    hub.publish("op", {"run": 2})
    assert [(e.kind, e.data["run"]) for e in hub.history()] == [("run", 2), ("op", 2)]


async def test_wait_for_viewer_returns_once_a_stream_subscribes() -> None:
    """`wait_for_viewer()` blocks until the first page subscribes to the event stream."""
    hub = EventHub()
    waiting = asyncio.create_task(hub.wait_for_viewer())
    await asyncio.sleep(0)
    assert not waiting.done()
    stream = hub.stream(lambda: {})
    first = await anext(stream)
    assert first.startswith(b"retry: 1000\nid: 0\nevent: snapshot\n")
    async with asyncio.timeout(5):
        await waiting
    hub.close()
    assert [frame async for frame in stream] == []  # the stream ends with the hub
