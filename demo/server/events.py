"""The demo's event hub: every event the page shows, numbered, fanned out to SSE subscribers.

A subscriber is a bounded queue. A subscriber that falls behind (its queue is full) is dropped
and its stream ends; the browser's EventSource reconnects and starts again from a fresh
snapshot, so a slow page never slows the agents down. The hub keeps the current run's events
from its start (a `run` event with a new run number starts a new history), up to
`history_max` of them, so that a page opened late or reconnecting can replay the run; heartbeat
kinds (`stats`, once a second) are not kept: the snapshot carries their latest values, and a
long-finished run is not pushed out of the history by them.

This module must never block the publisher (the library's tracer callbacks run on the agents'
event loop and must stay cheap).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Final

__all__ = ["HEARTBEAT_KINDS", "DemoEvent", "EventHub", "JSONObject"]

type JSONObject = dict[str, object]

_QUEUE_SIZE_MAX: Final = 2048
# Published often and superseded by the next one: kept out of the replay history.
HEARTBEAT_KINDS: Final = frozenset({"stats"})


@dataclass(frozen=True, slots=True)
class DemoEvent:
    """One numbered event: `kind` names it (trace, op, home, l2, message, converged, ...)."""

    id: int
    kind: str
    data: JSONObject
    at_s: float

    def to_json(self) -> JSONObject:
        """The event as the page receives it."""
        return {"id": self.id, "kind": self.kind, "t": round(self.at_s, 3), **self.data}

    def sse(self) -> bytes:
        """The event as one Server-Sent Events frame."""
        text = json.dumps(self.to_json(), separators=(",", ":"))
        return f"id: {self.id}\nevent: {self.kind}\ndata: {text}\n\n".encode()


_CLOSED: Final = object()


@dataclass(eq=False)
class _Subscriber:
    queue: asyncio.Queue[DemoEvent | object] = field(
        default_factory=lambda: asyncio.Queue(_QUEUE_SIZE_MAX)
    )


class EventHub:
    """Numbers events, keeps a bounded history, and fans them out to subscribers."""

    def __init__(
        self,
        history_max: int = 20_000,
        heartbeat_kinds: frozenset[str] = HEARTBEAT_KINDS,
    ) -> None:
        self._next_id = 1
        self._history: deque[DemoEvent] = deque(maxlen=history_max)
        self._history_run: object = None
        self._heartbeat_kinds: Final = heartbeat_kinds
        self._subscribers: set[_Subscriber] = set()
        self._viewer = asyncio.Event()
        self._closed = False
        self._started = time.monotonic()

    async def wait_for_viewer(self) -> None:
        """Return once a page has subscribed to the stream (at once if one ever has)."""
        await self._viewer.wait()

    @property
    def closed(self) -> bool:
        """Whether `close()` ran (streams have ended, nothing more is published)."""
        return self._closed

    def publish(self, kind: str, data: JSONObject) -> DemoEvent | None:
        """Number `data` as an event of `kind` and hand it to every subscriber (never blocks)."""
        if self._closed:
            return None
        event = DemoEvent(self._next_id, kind, data, time.monotonic() - self._started)
        self._next_id += 1
        if kind == "run" and data.get("run") != self._history_run:
            self._history.clear()  # a new run: the history replays it from its start
            self._history_run = data.get("run")
        if kind not in self._heartbeat_kinds:
            self._history.append(event)
        for subscriber in list(self._subscribers):
            try:
                subscriber.queue.put_nowait(event)
            except asyncio.QueueFull:
                self._drop(subscriber)
        return event

    def history(self) -> list[DemoEvent]:
        """The current run's events (heartbeats left out), oldest first."""
        return list(self._history)

    def _drop(self, subscriber: _Subscriber) -> None:
        self._subscribers.discard(subscriber)
        while not subscriber.queue.empty():
            subscriber.queue.get_nowait()
        subscriber.queue.put_nowait(_CLOSED)

    async def stream(
        self, snapshot: Callable[[], JSONObject], keepalive_s: float = 10.0
    ) -> AsyncIterator[bytes]:
        """SSE frames: a `snapshot` event first (taken after subscribing, so no event is
        missed between the two), then live events until the hub closes or drops this
        subscriber; a comment line every `keepalive_s` of silence keeps proxies open."""
        if self._closed:
            return
        subscriber = _Subscriber()
        self._subscribers.add(subscriber)
        self._viewer.set()
        try:
            state = snapshot()
            state["history"] = [event.to_json() for event in self._history]
            last_id = self._next_id - 1
            frame = json.dumps({"kind": "snapshot", "id": last_id, **state})
            yield f"retry: 1000\nid: {last_id}\nevent: snapshot\ndata: {frame}\n\n".encode()
            while True:
                try:
                    async with asyncio.timeout(keepalive_s):
                        item = await subscriber.queue.get()
                except TimeoutError:
                    yield b": keepalive\n\n"
                    continue
                if not isinstance(item, DemoEvent):
                    return
                if item.id > last_id:
                    yield item.sse()
        finally:
            self._subscribers.discard(subscriber)

    def close(self) -> None:
        """End every stream; later publications are ignored (idempotent)."""
        if self._closed:
            return
        self._closed = True
        for subscriber in list(self._subscribers):
            self._drop(subscriber)
