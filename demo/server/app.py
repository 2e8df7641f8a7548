"""The demo's ASGI app: one static page, an SSE stream of the run's events, JSON controls.

Routes: `GET /` (the page), `GET /events` (Server-Sent Events: a snapshot, then live events;
a browser that reconnects gets a fresh snapshot), `GET /api/state` (the snapshot as JSON), and
`POST /api/<control>`: `start`, `pause`, `step`, `speed` {"delay_ms"}, `mode` {"mode"},
`agents` {"count"}, `restart`, `fault/disconnect` {"agent"}, `fault/kill` {"agent"?}.

The `DemoController` owns the current `DemoRun` and replaces it when the mode or the number of
agents changes; it never touches the library's state itself.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Final

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from sagemem.errors import SageMemError
from sagemem.spec.vocabulary import Mode

from .events import EventHub, JSONObject
from .run import AGENTS_MAX, AGENTS_MIN, DemoRun, FaultError, RunSettings

__all__ = ["DemoController", "create_app"]

STATIC_DIR: Final = Path(__file__).parent / "static"
_DELAY_MS_MIN: Final = 0
_DELAY_MS_MAX: Final = 5000
_BODY_SIZE_MAX: Final = 4096


class ControlError(Exception):
    """A control request that cannot be honoured (bad argument, no run): HTTP 400/409."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


class DemoController:
    """Holds the settings and the current run; every control goes through here."""

    def __init__(
        self,
        hub: EventHub,
        *,
        redis_url: str,
        postgres_dsn: str,
        settings: RunSettings,
    ) -> None:
        self.hub: Final = hub
        self.settings = settings
        self._redis_url: Final = redis_url
        self._postgres_dsn: Final = postgres_dsn
        self._run: DemoRun | None = None
        self._runs = 0
        self._lock = asyncio.Lock()
        self._closed = False
        # A viewer used a control (start, pause, step, ...): the demo no longer starts the
        # first run by itself when a page connects.
        self.user_controlled = False

    @property
    def run(self) -> DemoRun | None:
        """The current run, if any."""
        return self._run

    async def _replace(self, *, paused: bool) -> DemoRun:
        """Close the current run and start a new one with the current settings."""
        if self._closed:
            raise ControlError("the demo is shutting down", 409)
        old, self._run = self._run, None
        if old is not None:
            await old.aclose()
        self._runs += 1
        run = DemoRun(
            self.hub,
            redis_url=self._redis_url,
            postgres_dsn=self._postgres_dsn,
            settings=self.settings,
            run_number=self._runs,
            paused=paused,
        )
        self._run = run
        run.start()
        return run

    async def start(self) -> JSONObject:
        """Resume a paused run, or start a new run if none is going."""
        async with self._lock:
            run = self._run
            if run is None or run.status in ("finished", "failed", "closed"):
                run = await self._replace(paused=False)
            elif run.paused:
                await run.set_paused(False)
            return run.describe()

    async def pause(self) -> JSONObject:
        """Pause the agents (a new run is created paused if none is going)."""
        async with self._lock:
            run = self._run
            if run is None or run.status in ("finished", "failed", "closed"):
                run = await self._replace(paused=True)
            else:
                await run.set_paused(True)
            return run.describe()

    async def step(self) -> JSONObject:
        """Pause if needed and let one agent operation run."""
        async with self._lock:
            run = self._run
            if run is None or run.status in ("finished", "failed", "closed"):
                run = await self._replace(paused=True)
            elif not run.paused:
                await run.set_paused(True)
            await run.step()
            return run.describe()

    async def restart(self) -> JSONObject:
        """Start a fresh run now (fresh namespace and schema)."""
        async with self._lock:
            return (await self._replace(paused=False)).describe()

    async def set_speed(self, delay_ms: object) -> JSONObject:
        """The pause between an agent's operations, in ms."""
        if type(delay_ms) is not int or not _DELAY_MS_MIN <= delay_ms <= _DELAY_MS_MAX:
            raise ControlError(
                f"delay_ms must be an int from {_DELAY_MS_MIN} to {_DELAY_MS_MAX}, got {delay_ms!r}"
            )
        async with self._lock:
            self.settings = _with(self.settings, delay_ms=delay_ms)
            if self._run is not None:
                self._run.set_delay_ms(delay_ms)
            return {"delay_ms": delay_ms}

    async def set_mode(self, mode: object) -> JSONObject:
        """Switch to `coherent` or `strict`: the run restarts in that mode."""
        if mode not in ("coherent", "strict"):
            raise ControlError(f"mode must be 'coherent' or 'strict', got {mode!r}")
        async with self._lock:
            self.settings = _with(self.settings, mode=Mode(mode))
            paused = self._run is not None and self._run.paused
            return (await self._replace(paused=paused)).describe()

    async def set_agents(self, count: object) -> JSONObject:
        """Run with `count` agents (2..6): the run restarts."""
        if type(count) is not int or not AGENTS_MIN <= count <= AGENTS_MAX:
            raise ControlError(
                f"count must be an int from {AGENTS_MIN} to {AGENTS_MAX}, got {count!r}"
            )
        async with self._lock:
            self.settings = _with(self.settings, agents=count)
            paused = self._run is not None and self._run.paused
            return (await self._replace(paused=paused)).describe()

    async def drop_connection(self, agent: object) -> JSONObject:
        """Kill one agent's bus connection (CLIENT KILL)."""
        run = self._require_run()
        if type(agent) is not str:
            raise ControlError(f"agent must be an agent id such as 'agent-b', got {agent!r}")
        try:
            return await run.drop_connection(agent)
        except FaultError as error:
            raise ControlError(str(error), 409) from error

    async def kill_agent(self, agent: object) -> JSONObject:
        """Crash an agent holding a Modified entry and restart it as a new incarnation."""
        run = self._require_run()
        if agent is not None and type(agent) is not str:
            raise ControlError(f"agent must be an agent id or null, got {agent!r}")
        try:
            return await run.kill_agent(agent)
        except FaultError as error:
            raise ControlError(str(error), 409) from error

    def _require_run(self) -> DemoRun:
        run = self._run
        if run is None or run.status in ("starting", "failed", "closed"):
            raise ControlError("no run is going: press Start first", 409)
        return run

    def snapshot(self) -> JSONObject:
        """What a newly connected page needs to draw everything."""
        run = self._run
        base: JSONObject = {
            "settings": {
                "agents": self.settings.agents,
                "mode": self.settings.mode.value,
                "delay_ms": self.settings.delay_ms,
                "rounds": self.settings.rounds,
                "agents_min": AGENTS_MIN,
                "agents_max": AGENTS_MAX,
            }
        }
        if run is None:
            return {**base, "run": None}
        return {**base, **run.snapshot()}

    async def aclose(self) -> None:
        """Stop the current run (idempotent); the hub is closed by its owner."""
        async with self._lock:
            self._closed = True
            run, self._run = self._run, None
            if run is not None:
                await run.aclose()


def _with(
    settings: RunSettings,
    *,
    agents: int | None = None,
    mode: Mode | None = None,
    delay_ms: int | None = None,
) -> RunSettings:
    return RunSettings(
        agents=settings.agents if agents is None else agents,
        mode=settings.mode if mode is None else mode,
        delay_ms=settings.delay_ms if delay_ms is None else delay_ms,
        rounds=settings.rounds,
        seed=settings.seed,
        compare_off=settings.compare_off,
    )


async def _body(request: Request) -> JSONObject:
    raw = await request.body()
    if not raw:
        return {}
    if len(raw) > _BODY_SIZE_MAX:
        raise ControlError(f"request body too large ({len(raw)} bytes; at most {_BODY_SIZE_MAX})")
    try:
        parsed = json.loads(raw)
    except json.JSONDecodeError as error:
        raise ControlError(f"request body is not JSON: {error}") from error
    if not isinstance(parsed, dict):
        raise ControlError(f"request body must be a JSON object, got {parsed!r:.80}")
    return parsed


def create_app(controller: DemoController) -> Starlette:
    """The Starlette app serving `controller`'s demo (lifespan is the caller's business)."""

    async def index(request: Request) -> Response:
        return FileResponse(STATIC_DIR / "index.html", headers={"Cache-Control": "no-store"})

    async def events(request: Request) -> Response:
        return StreamingResponse(
            controller.hub.stream(controller.snapshot),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
        )

    async def state(request: Request) -> Response:
        return JSONResponse(controller.snapshot())

    async def control(request: Request) -> Response:
        name = request.path_params["name"]
        controller.user_controlled = True
        try:
            body = await _body(request)
            match name:
                case "start":
                    result = await controller.start()
                case "pause":
                    result = await controller.pause()
                case "step":
                    result = await controller.step()
                case "restart":
                    result = await controller.restart()
                case "speed":
                    result = await controller.set_speed(body.get("delay_ms"))
                case "mode":
                    result = await controller.set_mode(body.get("mode"))
                case "agents":
                    result = await controller.set_agents(body.get("count"))
                case "fault/disconnect":
                    result = await controller.drop_connection(body.get("agent"))
                case "fault/kill":
                    result = await controller.kill_agent(body.get("agent"))
                case _:
                    return JSONResponse({"error": f"no control {name!r}"}, status_code=404)
        except ControlError as error:
            return JSONResponse({"error": str(error)}, status_code=error.status)
        except SageMemError as error:
            return JSONResponse({"error": f"{type(error).__name__}: {error}"}, status_code=503)
        return JSONResponse(result)

    return Starlette(
        routes=[
            Route("/", index),
            Route("/events", events),
            Route("/api/state", state),
            Route("/api/{name:path}", control, methods=["POST"]),
            Mount("/static", app=StaticFiles(directory=STATIC_DIR), name="static"),
        ]
    )
