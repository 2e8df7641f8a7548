"""`sagemem demo` / `python -m demo.server.main`: serve the live demo at http://localhost:8000.

Finds Redis and Postgres (`SAGEMEM_REDIS_URL` / `SAGEMEM_POSTGRES_DSN`, else the embedded
servers, started if needed, with progress on stderr), starts a run of the agents and a uvicorn
server, and prints exactly one line on stdout when the page can be opened:
`sagemem demo: open http://localhost:PORT`. SIGINT or SIGTERM stops it cleanly: the run's L1s,
buses and tiers are closed, the event streams end, and no task is left behind. Embedded servers
the demo started itself are stopped too (unless `--keep-servers`); servers that were already
running, or that the environment names, are left alone, and the last line on stderr says which.
The port is taken before any server starts, so a busy port fails at once, naming `--port`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import logging
import signal
import socket
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Final

import uvicorn

from sagemem.errors import SageMemError
from sagemem.services import (
    EmbeddedServices,
    ServerState,
    ServicesStatus,
    redacted_url,
    resolve_postgres_dsn,
    resolve_redis_url,
)
from sagemem.spec.vocabulary import Mode

from .app import ControlError, DemoController, create_app
from .events import EventHub
from .run import AGENTS_MAX, AGENTS_MIN, RunSettings

__all__ = ["PortUnavailableError", "main"]

_SHUTDOWN_TIMEOUT_S: Final = 15.0


def _progress(message: str) -> None:
    print(f"sagemem demo: {message}", file=sys.stderr, flush=True)


def _agents(text: str) -> int:
    try:
        count = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--agents must be a number, got {text!r}") from None
    if not AGENTS_MIN <= count <= AGENTS_MAX:
        raise argparse.ArgumentTypeError(
            f"--agents must be from {AGENTS_MIN} to {AGENTS_MAX}, got {count}"
        )
    return count


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sagemem demo",
        description="Live demo: agents writing conflicting beliefs on real Redis and Postgres, "
        "watched in the browser (MESI states, messages, convergence). Uses SAGEMEM_REDIS_URL "
        "and SAGEMEM_POSTGRES_DSN when set, else the embedded servers (started if needed, and "
        "stopped on exit if the demo started them).",
        epilog="exit status: 0 when stopped by Ctrl+C or SIGTERM; 1 when it cannot start (port "
        "in use, servers failing) or does not stop cleanly; 2 for a usage error.",
    )
    parser.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to listen on (default 127.0.0.1: this machine only; 0.0.0.0 to open the "
        "page from another machine, e.g. over SSH)",
    )
    parser.add_argument(
        "--port", type=int, default=8000, help="port to listen on (default 8000; 0: any free port)"
    )
    parser.add_argument(
        "--agents", type=_agents, default=2, help=f"agents ({AGENTS_MIN}..{AGENTS_MAX})"
    )
    parser.add_argument("--mode", choices=["coherent", "strict"], default="coherent")
    parser.add_argument(
        "--delay-ms", type=int, default=400, help="pause between an agent's operations"
    )
    parser.add_argument("--rounds", type=int, default=8, help="rounds per run")
    parser.add_argument("--seed", type=int, default=1, help="seed of the workload")
    parser.add_argument("--no-autostart", action="store_true", help="wait for Start on the page")
    parser.add_argument(
        "--no-wait-for-viewer",
        action="store_true",
        help="start the first run at once instead of when the page is first opened",
    )
    parser.add_argument(
        "--no-compare",
        action="store_true",
        help="skip the side-by-side run with coherence off",
    )
    parser.add_argument(
        "--no-browser-hint",
        action="store_true",
        help="do not print the hint about opening a browser (the address line is printed)",
    )
    parser.add_argument(
        "--keep-servers",
        action="store_true",
        help="leave the embedded servers running on exit even if the demo started them "
        "(`sagemem services down` stops them)",
    )
    parser.add_argument("--log-level", default="warning", help="log level of the server")
    return parser


class PortUnavailableError(SageMemError, OSError):
    """The demo cannot listen on the port it was given (the message names the fix)."""


def _listen(host: str, port: int) -> socket.socket:
    try:
        return socket.create_server((host, port), reuse_port=False)
    except OSError as error:
        if error.errno == errno.EADDRINUSE:
            raise PortUnavailableError(
                f"port {port} on {host} is already in use (by another program, or a demo that "
                f"still runs); stop it, or pick another port: `uv run sagemem demo --port "
                f"{port + 1 if port else 8001}` (`--port 0` takes any free port)"
            ) from error
        raise PortUnavailableError(
            f"cannot listen on {host}:{port}: {error.strerror}; pick another `--port` "
            "(0: any free port) or `--host` (127.0.0.1: this machine only)"
        ) from error


@dataclass
class _Servers:
    """Which embedded servers this demo started, and which it found running (to leave alone)."""

    started: list[str]
    found_running: list[str]

    @classmethod
    def compare(
        cls, before: ServicesStatus, after: ServicesStatus, redis_url: str, postgres_dsn: str
    ) -> _Servers:
        started: list[str] = []
        found: list[str] = []
        for name, was, now, address in (
            ("Redis", before.redis, after.redis, redis_url),
            ("Postgres", before.postgres, after.postgres, postgres_dsn),
        ):
            if now.state is not ServerState.RUNNING or now.address != address:
                continue  # not the embedded server (the environment names another one)
            if was.state is ServerState.RUNNING and was.pid == now.pid:
                found.append(f"{name} (pid {now.pid})")
            else:
                started.append(name)
        return cls(started, found)


async def _resolve_servers(services: EmbeddedServices) -> tuple[str, str, _Servers]:
    """The Redis URL and Postgres DSN to use, and which embedded servers that started."""
    before = await asyncio.to_thread(services.status)
    redis_url = ""
    postgres_dsn = ""
    try:
        redis_url = await asyncio.to_thread(resolve_redis_url, None)
        _progress(f"Redis at {redacted_url(redis_url)}")
        postgres_dsn = await asyncio.to_thread(resolve_postgres_dsn, None)
        _progress(f"Postgres at {redacted_url(postgres_dsn)}")
    except BaseException:
        # Postgres failed after Redis started, or Ctrl+C: stop what this process started.
        after = await asyncio.to_thread(services.status)
        await _stop_started(
            services, _Servers.compare(before, after, redis_url or "-", postgres_dsn or "-")
        )
        raise
    after = await asyncio.to_thread(services.status)
    return redis_url, postgres_dsn, _Servers.compare(before, after, redis_url, postgres_dsn)


async def _stop_started(services: EmbeddedServices, servers: _Servers) -> None:
    if servers.started:
        await asyncio.to_thread(
            services.down,
            redis="Redis" in servers.started,
            postgres="Postgres" in servers.started,
        )


async def _release_servers(services: EmbeddedServices, servers: _Servers, *, keep: bool) -> None:
    """Stop the embedded servers this demo started (unless `keep`); say what stays running."""
    started = " and ".join(servers.started)
    if servers.started and keep:
        _progress(
            f"left the embedded {started} running (--keep-servers); "
            "`uv run sagemem services down` stops them"
        )
    elif servers.started:
        _progress(f"stopping the embedded {started} it started ...")
        await _stop_started(services, servers)
        _progress(f"stopped the embedded {started}")
    if servers.found_running:
        they = "they were" if len(servers.found_running) > 1 else "it was"
        _progress(
            f"left running the embedded {' and '.join(servers.found_running)}: {they} running "
            "before the demo started; `uv run sagemem services down` stops them"
        )
    if len(servers.started) + len(servers.found_running) < 2:
        _progress("servers named by SAGEMEM_REDIS_URL / SAGEMEM_POSTGRES_DSN were not touched")


class _Server(uvicorn.Server):
    """uvicorn without its own signal handling (main() handles signals), and with a
    `ready` event set once it accepts connections."""

    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self.ready = asyncio.Event()

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        self.ready.set()


async def _start_for_first_viewer(hub: EventHub, controller: DemoController) -> None:
    await hub.wait_for_viewer()
    run = controller.run
    # Not `run.round == 0`: the paused run may already have entered round 1 (it waits at the
    # gate before the round's first operation) when the first page connects.
    if run is not None and run.paused and not controller.user_controlled:
        try:
            await controller.start()
        except (ControlError, SageMemError) as error:  # the demo goes on; Start retries
            _progress(f"could not start the first run: {error}")


async def _serve(args: argparse.Namespace) -> int:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    signals = (signal.SIGINT, signal.SIGTERM)
    for sig in signals:
        loop.add_signal_handler(sig, stop.set)
    try:
        return await _serve_until(args, stop)
    finally:
        for sig in signals:
            loop.remove_signal_handler(sig)


async def _serve_until(args: argparse.Namespace, stop: asyncio.Event) -> int:
    started = time.monotonic()
    # The port first: a busy port fails at once, before any server is started for nothing.
    listener = _listen(args.host, args.port)
    services = EmbeddedServices()
    try:
        _progress("finding Redis and Postgres (starting the embedded servers if none is set) ...")
        redis_url, postgres_dsn, servers = await _resolve_servers(services)
    except BaseException:
        listener.close()
        raise
    try:
        return await _serve_on(args, stop, listener, redis_url, postgres_dsn, started)
    finally:
        await _release_servers(services, servers, keep=args.keep_servers)


async def _serve_on(
    args: argparse.Namespace,
    stop: asyncio.Event,
    listener: socket.socket,
    redis_url: str,
    postgres_dsn: str,
    started: float,
) -> int:
    port = listener.getsockname()[1]
    hub = EventHub()
    controller = DemoController(
        hub,
        redis_url=redis_url,
        postgres_dsn=postgres_dsn,
        settings=RunSettings(
            agents=args.agents,
            mode=Mode(args.mode),
            delay_ms=args.delay_ms,
            rounds=args.rounds,
            seed=args.seed,
            compare_off=not args.no_compare,
        ),
    )
    config = uvicorn.Config(
        create_app(controller),
        log_level=args.log_level,
        lifespan="off",
        timeout_graceful_shutdown=5,
        access_log=False,
    )
    server = _Server(config)
    serving = asyncio.create_task(server.serve(sockets=[listener]), name="demo-uvicorn")
    waiting_for_viewer: asyncio.Task[None] | None = None
    try:
        if args.no_autostart:
            await controller.pause()
        elif args.no_wait_for_viewer:
            await controller.start()
        else:
            # Someone who opens the page a minute after the command still sees the run from
            # its beginning: it is ready (agents connected) but paused until then.
            await controller.pause()
            waiting_for_viewer = asyncio.create_task(
                _start_for_first_viewer(hub, controller), name="demo-wait-for-viewer"
            )
        ready = asyncio.create_task(server.ready.wait())
        stopping = asyncio.create_task(stop.wait())
        await asyncio.wait({ready, serving, stopping}, return_when=asyncio.FIRST_COMPLETED)
        ready.cancel()
        await asyncio.wait({ready})
        if server.ready.is_set() and not stop.is_set():
            print(f"sagemem demo: open http://localhost:{port}", flush=True)
            if not args.no_browser_hint:
                first = (
                    "; the first run starts when the page is opened"
                    if waiting_for_viewer is not None
                    else ""
                )
                _progress(f"ready in {time.monotonic() - started:.1f} s{first}; Ctrl+C stops it")
            await asyncio.wait({serving, stopping}, return_when=asyncio.FIRST_COMPLETED)
        stopping.cancel()
        await asyncio.wait({stopping})
    finally:
        _progress("stopping ...")
        if waiting_for_viewer is not None:
            waiting_for_viewer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await waiting_for_viewer
        await controller.aclose()
        hub.close()
        server.should_exit = True
        try:
            async with asyncio.timeout(_SHUTDOWN_TIMEOUT_S):
                await serving
        except TimeoutError:
            server.force_exit = True
            serving.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await serving
        listener.close()
    leftover = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
    if leftover:
        _progress(f"leftover tasks at exit: {[t.get_name() for t in leftover]}")
        return 1
    _progress("stopped")
    return 0


def main(argv: Sequence[str]) -> int:
    """Run the demo until SIGINT/SIGTERM; return the process exit status."""
    args = _parser().parse_args(list(argv))
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        return asyncio.run(_serve(args))
    except (SageMemError, OSError) as error:
        _progress(f"failed: {error}")
        return 1


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
