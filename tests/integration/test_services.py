"""The embedded servers for real: start, share between processes, replace when stale, stop.

Each test uses its own private runtime directory (never the session's servers, never a
user's `sagemem services up` servers) and stops everything it started.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import asyncpg
import pytest
import redis.asyncio as redis_asyncio

from sagemem.services import (
    POSTGRES_DSN_ENV,
    REDIS_URL_ENV,
    RUNTIME_DIR_ENV,
    EmbeddedServices,
    ServerState,
    ServiceEndpoints,
    process_alive,
    remove_abandoned_private_runtime_dirs,
)

_REPO_ROOT = Path(__file__).resolve().parents[2]
_COMMAND_TIMEOUT_S = 120


@pytest.fixture
def services(private_services: EmbeddedServices) -> EmbeddedServices:
    """Embedded services in a fresh private runtime directory, stopped and removed after."""
    return private_services


def sagemem_command(runtime_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Run the `sagemem` console script in another process on `runtime_dir`."""
    script = Path(sys.executable).with_name("sagemem")
    command = [str(script)] if script.exists() else [sys.executable, "-m", "sagemem.cli"]
    return subprocess.run(
        [*command, *args],
        env=child_environment(runtime_dir),
        cwd=_REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=_COMMAND_TIMEOUT_S,
        check=False,
    )


def child_environment(runtime_dir: Path) -> dict[str, str]:
    """This process's environment pointed at `runtime_dir`, without any SAGEMEM_* URL."""
    environment = {
        name: value
        for name, value in os.environ.items()
        if name not in (REDIS_URL_ENV, POSTGRES_DSN_ENV)
    }
    environment[RUNTIME_DIR_ENV] = str(runtime_dir)
    return environment


def parse_env_lines(stdout: str) -> dict[str, str]:
    """The NAME=value pairs printed by `services up`, as a shell would set them."""
    script = f'{stdout}\nprintf "%s\\n%s\\n" "${REDIS_URL_ENV}" "${POSTGRES_DSN_ENV}"'
    result = subprocess.run(
        ["sh", "-c", script], capture_output=True, text=True, timeout=30, check=True
    )
    redis_url, postgres_dsn = result.stdout.splitlines()
    return {REDIS_URL_ENV: redis_url, POSTGRES_DSN_ENV: postgres_dsn}


def server_processes(runtime_dir: Path, *, main_only: bool = False) -> list[int]:
    """Live Valkey and Postgres processes whose command line or cwd is in `runtime_dir`.

    With `main_only`, Postgres's worker processes are left out (only the postmaster, started
    with `-D <data directory>`, counts).
    """
    found: list[int] = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            cwd = os.readlink(entry / "cwd")
        except OSError:
            continue
        is_valkey = "valkey-server" in command
        is_postgres = "postgres" in command
        if main_only:
            is_postgres = is_postgres and f"-D {runtime_dir}" in command
        mentions_dir = str(runtime_dir) in command or cwd.startswith(str(runtime_dir))
        if (is_valkey or is_postgres) and mentions_dir and process_alive(int(entry.name)):
            found.append(int(entry.name))
    return sorted(found)


async def check_servers_answer(endpoints: ServiceEndpoints) -> None:
    """Redis answers PING; Postgres answers SELECT 1 and can create the vector extension."""
    client = redis_asyncio.Redis.from_url(endpoints.redis_url)
    try:
        assert await client.ping() is True
    finally:
        await client.aclose()
    connection = await asyncpg.connect(endpoints.postgres_dsn, timeout=30)
    try:
        assert await connection.fetchval("SELECT 1") == 1
        await connection.execute("CREATE EXTENSION IF NOT EXISTS vector")
        assert await connection.fetchval("SELECT '[1,2,3]'::vector::text") == "[1,2,3]"
    finally:
        await connection.close(timeout=30)


async def test_up_starts_servers_that_answer(services: EmbeddedServices) -> None:
    """`up()` gives a Redis that answers PING and a Postgres with pgvector."""
    endpoints = services.up()
    assert endpoints.redis_url.startswith("redis://127.0.0.1:")
    assert endpoints.postgres_dsn.startswith("postgresql://postgres:@/postgres?host=")
    await check_servers_answer(endpoints)
    assert services.status().running


def test_second_process_reuses_the_same_servers(services: EmbeddedServices) -> None:
    """Another process on the same runtime directory gets the same addresses and pids."""
    endpoints = services.up()
    status = services.status()
    up = sagemem_command(services.runtime_dir, "services", "up")
    assert up.returncode == 0, up.stderr
    assert parse_env_lines(up.stdout) == {
        REDIS_URL_ENV: endpoints.redis_url,
        POSTGRES_DSN_ENV: endpoints.postgres_dsn,
    }
    shown = sagemem_command(services.runtime_dir, "services", "status")
    assert shown.returncode == 0, shown.stdout + shown.stderr
    assert f"redis: running, pid {status.redis.pid}, {endpoints.redis_url}" in shown.stdout
    assert f"postgres: running, pid {status.postgres.pid}" in shown.stdout
    assert services.status() == status


def test_concurrent_ups_start_one_set_of_servers(services: EmbeddedServices) -> None:
    """Two processes running `services up` at once print the same servers; one set runs."""
    environment = child_environment(services.runtime_dir)
    command = [sys.executable, "-m", "sagemem.cli", "services", "up"]
    starters = [
        subprocess.Popen(
            command,
            env=environment,
            cwd=_REPO_ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    outputs = [starter.communicate(timeout=_COMMAND_TIMEOUT_S) for starter in starters]
    assert [starter.returncode for starter in starters] == [0, 0], outputs
    first, second = (parse_env_lines(stdout) for stdout, _ in outputs)
    assert first == second
    status = services.status()
    assert status.running
    assert server_processes(services.runtime_dir, main_only=True) == sorted(
        [status.redis.pid or 0, status.postgres.pid or 0]
    )


def test_down_leaves_no_server_process(services: EmbeddedServices) -> None:
    """After `services down` no server process of the runtime directory is alive."""
    services.up()
    status = services.status()
    pids = [status.redis.pid, status.postgres.pid]
    assert len(server_processes(services.runtime_dir, main_only=True)) == 2
    assert len(server_processes(services.runtime_dir)) > 2  # Postgres's workers count too
    down = sagemem_command(services.runtime_dir, "services", "down")
    assert down.returncode == 0, down.stderr
    assert [pid for pid in pids if pid is not None and process_alive(pid)] == []
    assert server_processes(services.runtime_dir) == []
    shown = sagemem_command(services.runtime_dir, "services", "status")
    assert shown.returncode == 1
    assert "redis: not started" in shown.stdout


def test_eval_of_up_output_exports_both_variables(services: EmbeddedServices) -> None:
    """`eval "$(sagemem services up)"` sets and exports both variables for child processes."""
    script = Path(sys.executable).with_name("sagemem")
    assert script.exists(), f"console script {script} missing; run `uv sync`"
    shell = (
        f'eval "$({script} services up)" && '
        f'sh -c \'printf "%s\\n%s\\n" "${REDIS_URL_ENV}" "${POSTGRES_DSN_ENV}"\''
    )
    result = subprocess.run(
        ["sh", "-c", shell],
        env=child_environment(services.runtime_dir),
        capture_output=True,
        text=True,
        timeout=_COMMAND_TIMEOUT_S,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    endpoints = services.up()
    assert result.stdout.splitlines() == [endpoints.redis_url, endpoints.postgres_dsn]


async def test_stale_redis_is_replaced_and_live_postgres_kept(
    services: EmbeddedServices,
) -> None:
    """A recorded Redis that died is detected as stale; `up()` starts a new one."""
    services.up()
    before = services.status()
    assert before.redis.pid is not None
    os.kill(before.redis.pid, signal.SIGKILL)
    assert services.status().redis.state is ServerState.STALE
    endpoints = services.up()
    after = services.status()
    assert after.running
    assert after.redis.pid != before.redis.pid
    assert after.postgres == before.postgres
    await check_servers_answer(endpoints)


async def test_session_fixture_exports_the_endpoints(
    service_endpoints: ServiceEndpoints, pg_schema: str, namespace: str
) -> None:
    """The session servers answer, their URLs are in the environment, the names are fresh."""
    assert os.environ[REDIS_URL_ENV] == service_endpoints.redis_url
    assert os.environ[POSTGRES_DSN_ENV] == service_endpoints.postgres_dsn
    await check_servers_answer(service_endpoints)
    assert pg_schema != namespace
    connection = await asyncpg.connect(service_endpoints.postgres_dsn, timeout=30)
    try:
        await connection.execute(f'CREATE SCHEMA "{pg_schema}"')
    finally:
        await connection.close(timeout=30)


def test_servers_of_a_killed_owner_are_stopped_by_the_next_sweep() -> None:
    """Servers left by a process that died without `down()` are stopped by the next sweep."""
    owner = subprocess.run(
        [
            sys.executable,
            "-c",
            "import os\n"
            "from sagemem.services import EmbeddedServices, create_private_runtime_dir\n"
            "services = EmbeddedServices(create_private_runtime_dir())\n"
            "services.up()\n"
            "print(services.runtime_dir, flush=True)\n"
            "os._exit(0)  # like a killed test run: no down()\n",
        ],
        env=child_environment(Path("/nonexistent")),
        cwd=_REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=_COMMAND_TIMEOUT_S,
        check=True,
    )
    runtime_dir = Path(owner.stdout.strip())
    try:
        assert len(server_processes(runtime_dir, main_only=True)) == 2
        assert runtime_dir in remove_abandoned_private_runtime_dirs()
        assert server_processes(runtime_dir) == []
        assert not runtime_dir.exists()
    finally:
        EmbeddedServices(runtime_dir).down()
