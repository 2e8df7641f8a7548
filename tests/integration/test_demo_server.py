"""The live demo's server: its event stream comes from the library, its controls and faults work.

The demo runs as a real process (`python -m demo.server.main --port 0`) on the session's
servers; the test reads its Server-Sent Events stream and posts to its control endpoints.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import pytest

from sagemem.services import ServiceEndpoints
from sagemem.spec import TABLE
from sagemem.spec.vocabulary import L1State, Mode

ROOT: Final = Path(__file__).resolve().parents[2]
START_TIMEOUT_S: Final = 60.0
RUN_TIMEOUT_S: Final = 45.0
STOP_TIMEOUT_S: Final = 30.0

type Event = dict[str, object]


@dataclass
class DemoProcess:
    """A running demo server process and the port it serves."""

    process: asyncio.subprocess.Process
    port: int

    async def stop(self) -> tuple[int, str]:
        """SIGTERM, then the exit status and everything it wrote on stderr."""
        if self.process.returncode is None:
            self.process.send_signal(signal.SIGTERM)
        async with asyncio.timeout(STOP_TIMEOUT_S):
            _, stderr = await self.process.communicate()
        assert self.process.returncode is not None
        return self.process.returncode, stderr.decode(errors="replace")


async def start_demo(endpoints: ServiceEndpoints, *args: str) -> DemoProcess:
    """Start the demo on a free port with the session's servers; wait for its address line."""
    env = dict(os.environ)
    env["SAGEMEM_REDIS_URL"] = endpoints.redis_url
    env["SAGEMEM_POSTGRES_DSN"] = endpoints.postgres_dsn
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "demo.server.main",
        "--port",
        "0",
        "--no-browser-hint",
        *args,
        cwd=ROOT,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert process.stdout is not None
    try:
        async with asyncio.timeout(START_TIMEOUT_S):
            line = (await process.stdout.readline()).decode()
    except TimeoutError:
        process.kill()
        await process.wait()
        raise
    prefix = "sagemem demo: open http://localhost:"
    if not line.startswith(prefix):
        process.kill()
        _, stderr = await process.communicate()
        pytest.fail(f"unexpected first line {line!r}; stderr: {stderr.decode()[-2000:]}")
    return DemoProcess(process, int(line[len(prefix) :].strip()))


async def http_json(port: int, method: str, path: str, body: object = None) -> tuple[int, Event]:
    """One HTTP/1.0 request with a JSON body; the status and the JSON answer."""
    payload = b"" if body is None else json.dumps(body).encode()
    async with asyncio.timeout(30):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            writer.write(
                f"{method} {path} HTTP/1.0\r\nHost: localhost\r\n"
                f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n\r\n".encode()
                + payload
            )
            await writer.drain()
            raw = await reader.read()
        finally:
            writer.close()
            await writer.wait_closed()
    head, _, content = raw.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    answer = json.loads(content)
    assert isinstance(answer, dict)
    return status, answer


async def sse_events(port: int) -> AsyncGenerator[Event]:
    """The demo's event stream, one decoded event at a time (HTTP/1.0: no chunking)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=2**24)
    try:
        writer.write(
            b"GET /events HTTP/1.0\r\nHost: localhost\r\nAccept: text/event-stream\r\n\r\n"
        )
        await writer.drain()
        status = await reader.readline()
        assert b" 200 " in status, status
        while (await reader.readline()) not in (b"\r\n", b"\n", b""):
            pass
        data: list[str] = []
        while True:
            raw = await reader.readline()
            if not raw:
                return
            text = raw.decode().rstrip("\r\n")
            if text.startswith("data: "):
                data.append(text[6:])
            elif text == "" and data:
                event = json.loads("\n".join(data))
                data = []
                assert isinstance(event, dict)
                yield event
    finally:
        writer.close()
        await writer.wait_closed()


async def collect_until(
    stream: AsyncIterator[Event], done: Callable[[Event], bool], into: list[Event]
) -> Event:
    """Append events to `into` until `done(event)`; return that event (bounded wait)."""
    async with asyncio.timeout(RUN_TIMEOUT_S):
        async for event in stream:
            into.append(event)
            if done(event):
                return event
    raise AssertionError(f"the stream ended before the awaited event; last: {into[-3:]}")


def rows_of(mode: Mode) -> set[tuple[str, str, str, str]]:
    """(source, event, guard, target) of every row of the spec's table in `mode`."""
    return {
        (rule.source.name, rule.event.name, rule.guard.name, rule.target.name)
        for rule in TABLE
        if mode in rule.modes and isinstance(rule.source, L1State)
    }


def check_run(events: list[Event], run: int, mode: Mode) -> None:
    """The events of run `run` come from the library and show coherence at work."""
    traces = [e for e in events if e["kind"] == "trace" and e["run"] == run]
    assert traces, "no transition was traced"
    allowed = rows_of(mode)
    executed = {
        (str(t["source"]), str(t["event"]), str(t["guard"]), str(t["target"])) for t in traces
    }
    assert executed - allowed == set()
    states = {str(t["target"]) for t in traces}
    assert {"M", "S", "I"} <= states, states
    assert any(t["event"] == "DELIVER_INVALIDATE" for t in traces)
    delivered = [
        e
        for e in events
        if e["kind"] == "message" and e["run"] == run and e["phase"] == "delivered"
    ]
    assert any(m["type"] == "INVALIDATE" for m in delivered)
    versions: dict[str, list[int]] = {}
    for e in events:
        if e["kind"] == "home" and e["run"] == run:
            version = e["version"]
            assert isinstance(version, int)
            versions.setdefault(str(e["key"]), []).append(version)
    assert versions, "the home was never read back"
    for key, seen in versions.items():
        assert seen == sorted(seen), f"{key}: home versions went back: {seen}"
    assert max(max(seen) for seen in versions.values()) >= 3
    rounds = [e for e in events if e["kind"] == "converged" and e["run"] == run]
    assert rounds, "no convergence check"
    assert rounds[-1]["converged"] is True, rounds[-1]


async def test_demo_stream_faults_and_mode_switch(service_endpoints: ServiceEndpoints) -> None:
    """A demo run streams library events, converges, survives both faults, and switches mode."""
    demo = await start_demo(service_endpoints, "--delay-ms", "20", "--rounds", "3")
    try:
        events: list[Event] = []
        stream = sse_events(demo.port)
        first = await anext(stream)
        assert first["kind"] == "snapshot"
        await collect_until(
            stream, lambda e: e["kind"] == "run" and e["status"] == "finished", events
        )
        check_run(events, 1, Mode.COHERENT)
        stats = [e for e in events if e["kind"] == "stats"][-1]
        baseline = stats["baseline"]
        assert isinstance(baseline, dict)
        assert baseline["reads"] > 0
        assert baseline["stale_reads"] > 0, "coherence off should have read stale data"

        status, fault = await http_json(
            demo.port, "POST", "/api/fault/disconnect", {"agent": "agent-b"}
        )
        assert (status, fault["killed"]) == (200, 1), fault

        def resynced(event: Event) -> bool:
            return (
                event["kind"] == "trace"
                and event["agent"] == "agent-b"
                and event["event"] == "RESYNC"
            )

        await collect_until(stream, resynced, events)
        assert any(
            e["kind"] == "trace" and e["agent"] == "agent-b" and e["event"] == "DISCONNECT"
            for e in events
        )

        status, fault = await http_json(demo.port, "POST", "/api/fault/kill", {})
        assert status == 200, fault
        lost = fault["lost_modified"]
        assert isinstance(lost, list)
        assert lost, fault
        victim = fault["agent"]
        await collect_until(
            stream,
            lambda e: e["kind"] == "agent" and e["agent"] == victim and e["status"] == "running",
            events,
        )
        await collect_until(
            stream, lambda e: e["kind"] == "converged" and e["converged"] is True, events
        )

        status, described = await http_json(demo.port, "POST", "/api/mode", {"mode": "strict"})
        assert (status, described["mode"]) == (200, "strict")
        await collect_until(
            stream,
            lambda e: e["kind"] == "run" and e["run"] == 2 and e["status"] == "finished",
            events,
        )
        check_run(events, 2, Mode.STRICT)
        assert any(e["kind"] == "message" and e["run"] == 2 and e["type"] == "ACK" for e in events)
        await stream.aclose()

        again = sse_events(demo.port)
        snapshot = await anext(again)
        described_run = snapshot["run"]
        assert isinstance(described_run, dict)
        assert (snapshot["kind"], described_run["run"]) == ("snapshot", 2)
        await again.aclose()

        status, described = await http_json(demo.port, "POST", "/api/pause")
        assert (status, described["run"], described["paused"]) == (200, 3, True)
        stream = sse_events(demo.port)
        await anext(stream)
        status, _ = await http_json(demo.port, "POST", "/api/step")
        assert status == 200
        stepped = await collect_until(stream, lambda e: e["kind"] == "op" and e["run"] == 3, events)
        status, state = await http_json(demo.port, "GET", "/api/state")
        coherent = state["coherent"]
        assert isinstance(coherent, dict)
        assert coherent["reads"] + coherent["writes"] == 1, (coherent, stepped)
        await stream.aclose()

        status, error = await http_json(demo.port, "POST", "/api/mode", {"mode": "eventual"})
        assert status == 400
        assert "eventual" in str(error["error"])
    finally:
        code, stderr = await demo.stop()
    assert code == 0, stderr[-3000:]
    assert "stopped" in stderr, stderr[-3000:]
    assert "leftover" not in stderr, stderr[-3000:]
