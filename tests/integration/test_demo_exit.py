"""The demo stops what it started, leaves alone what it found, and answers a busy port with the fix.

Each test runs `python -m demo.server.main` as a real process with no server address in its
environment and a runtime directory of its own, so the embedded servers it sees are the test's.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
from pathlib import Path
from typing import Final

from sagemem.services import (
    POSTGRES_DSN_ENV,
    REDIS_URL_ENV,
    RUNTIME_DIR_ENV,
    EmbeddedServices,
    ServerState,
    process_alive,
)

ROOT: Final = Path(__file__).resolve().parents[2]
START_TIMEOUT_S: Final = 90.0
STOP_TIMEOUT_S: Final = 60.0
ADDRESS_PREFIX: Final = "sagemem demo: open http://localhost:"


def _demo_env(services: EmbeddedServices) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in (REDIS_URL_ENV, POSTGRES_DSN_ENV)}
    env[RUNTIME_DIR_ENV] = str(services.runtime_dir)
    return env


async def _run_demo_until_ready_then_stop(
    services: EmbeddedServices, *args: str
) -> tuple[int, str, tuple[int | None, int | None]]:
    """Start the demo, wait for its address line, note the servers' pids, SIGTERM it.

    Returns the exit status, its stderr and the (Redis, Postgres) pids seen while it ran.
    """
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "demo.server.main",
        "--port",
        "0",
        "--no-autostart",
        "--no-compare",
        *args,
        cwd=ROOT,
        env=_demo_env(services),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert process.stdout is not None
    try:
        async with asyncio.timeout(START_TIMEOUT_S):
            line = (await process.stdout.readline()).decode()
        running = await asyncio.to_thread(services.status)
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
        async with asyncio.timeout(STOP_TIMEOUT_S):
            _, stderr = await process.communicate()
    assert line.startswith(ADDRESS_PREFIX), (line, stderr.decode())
    assert process.returncode is not None
    return process.returncode, stderr.decode(), (running.redis.pid, running.postgres.pid)


async def test_demo_stops_the_embedded_servers_it_started(
    private_services: EmbeddedServices,
) -> None:
    """With no server running, the demo starts both and stops both on SIGTERM, and says so."""
    status, stderr, (redis_pid, postgres_pid) = await _run_demo_until_ready_then_stop(
        private_services
    )
    assert status == 0, stderr
    assert "stopped the embedded Redis and Postgres" in stderr
    after = private_services.status()
    assert (after.redis.state, after.postgres.state) == (ServerState.ABSENT, ServerState.ABSENT)
    assert redis_pid is not None
    assert postgres_pid is not None
    assert not process_alive(redis_pid)
    assert not process_alive(postgres_pid)


async def test_demo_leaves_running_the_servers_it_found_running(
    private_services: EmbeddedServices,
) -> None:
    """Servers running before the demo still run after it, and the exit message names them."""
    await asyncio.to_thread(private_services.up)
    before = private_services.status()
    status, stderr, pids = await _run_demo_until_ready_then_stop(private_services)
    assert status == 0, stderr
    after = private_services.status()
    assert after.running
    assert (after.redis.pid, after.postgres.pid) == (before.redis.pid, before.postgres.pid) == pids
    assert (
        f"left running the embedded Redis (pid {before.redis.pid}) and Postgres "
        f"(pid {before.postgres.pid})"
    ) in stderr
    assert "services down" in stderr


async def test_demo_keep_servers_leaves_the_servers_it_started_running(
    private_services: EmbeddedServices,
) -> None:
    """`--keep-servers`: the servers the demo started still answer after it exits."""
    status, stderr, pids = await _run_demo_until_ready_then_stop(private_services, "--keep-servers")
    assert status == 0, stderr
    after = private_services.status()
    assert after.running
    assert (after.redis.pid, after.postgres.pid) == pids
    assert "--keep-servers" in stderr


async def test_busy_port_fails_at_once_naming_the_port_option(
    private_services: EmbeddedServices,
) -> None:
    """A port in use ends the demo with status 1 and the `--port` fix, starting no server."""
    with socket.create_server(("127.0.0.1", 0)) as occupied:
        port = occupied.getsockname()[1]
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "demo.server.main",
            "--port",
            str(port),
            cwd=ROOT,
            env=_demo_env(private_services),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        async with asyncio.timeout(STOP_TIMEOUT_S):
            stdout, stderr = await process.communicate()
    assert process.returncode == 1
    assert stdout == b""
    message = stderr.decode()
    assert f"port {port} on 127.0.0.1 is already in use" in message
    assert f"--port {port + 1}" in message
    after = private_services.status()
    assert (after.redis.state, after.postgres.state) == (ServerState.ABSENT, ServerState.ABSENT)


def test_down_can_stop_one_server_and_leave_the_other_recorded(
    private_services: EmbeddedServices,
) -> None:
    """`down(postgres=False)` stops Redis only; Postgres still answers and stays in the record."""
    private_services.up()
    before = private_services.status()
    private_services.down(postgres=False)
    after = private_services.status()
    assert after.redis.state is ServerState.ABSENT
    assert before.redis.pid is not None
    assert not process_alive(before.redis.pid)
    assert after.postgres.state is ServerState.RUNNING
    assert after.postgres.pid == before.postgres.pid
