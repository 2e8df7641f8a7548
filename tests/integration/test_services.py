"""The embedded servers for real: start, share between processes, replace when stale, stop.

Each test uses its own private runtime directory (never the session's servers, never a
user's `sagemem services up` servers) and stops everything it started.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import stat
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest
import redis.asyncio as redis_asyncio
from redis.exceptions import AuthenticationError

from sagemem.grants import create_grant, revoke_grant
from sagemem.scope import AgentCapability
from sagemem.services import (
    POSTGRES_DSN_ENV,
    REDIS_URL_ENV,
    RUNTIME_DIR_ENV,
    EmbeddedServices,
    ServerState,
    ServiceEndpoints,
    process_alive,
    redacted_url,
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

    With `main_only`, Postgres's worker processes are left out: only the postmaster, started
    with `-D <data directory>`, counts (a worker forked a moment ago still shows that command
    line, so a process whose parent is one of the found processes is a worker).
    """
    found: dict[int, int] = {}  # pid -> parent pid
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            cwd = os.readlink(entry / "cwd")
            parent = int((entry / "stat").read_text().rpartition(")")[2].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        is_valkey = "valkey-server" in command
        is_postgres = "postgres" in command
        if main_only:
            is_postgres = is_postgres and f"-D {runtime_dir}" in command
        mentions_dir = str(runtime_dir) in command or cwd.startswith(str(runtime_dir))
        if (is_valkey or is_postgres) and mentions_dir and process_alive(int(entry.name)):
            found[int(entry.name)] = parent
    if main_only:
        return sorted(pid for pid, parent in found.items() if parent not in found)
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


def with_password(url: str, password: str | None) -> str:
    """`url` with the same user and another password (None: no password at all)."""
    parts = urlsplit(url)
    userinfo, _, host = parts.netloc.rpartition("@")
    user = userinfo.partition(":")[0]
    credentials = user if password is None else f"{user}:{password}"
    return urlunsplit(parts._replace(netloc=f"{credentials}@{host}" if credentials else host))


def raw_redis_reply(url: str, command: bytes) -> bytes:
    """The first line the Redis server at `url` answers to `command` (RESP), sent without any
    AUTH: what a process that knows only the address gets."""
    parts = urlsplit(url)
    assert parts.hostname is not None
    assert parts.port is not None
    with socket.create_connection((parts.hostname, parts.port), timeout=10) as sock:
        sock.sendall(command)
        reply = b""
        while b"\r\n" not in reply:
            chunk = sock.recv(4096)
            assert chunk, "the server closed the connection without answering"
            reply += chunk
    return reply.partition(b"\r\n")[0]


async def check_postgres_login_refused(dsn: str) -> None:
    """Postgres refuses to authenticate a connection to `dsn`."""
    try:
        connection = await asyncpg.connect(dsn, timeout=30)
    except asyncpg.InvalidAuthorizationSpecificationError:
        return
    await connection.close(timeout=30)
    raise AssertionError(f"Postgres let in {redacted_url(dsn)}")


async def check_servers_refuse_strangers(endpoints: ServiceEndpoints) -> None:
    """Neither server lets in a client without the password, or with a wrong one."""
    assert raw_redis_reply(endpoints.redis_url, b"PING\r\n").startswith(b"-NOAUTH")
    key_read = b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n"
    assert raw_redis_reply(endpoints.redis_url, key_read).startswith(b"-NOAUTH")
    for password in (None, "wrong"):
        client = redis_asyncio.Redis.from_url(with_password(endpoints.redis_url, password))
        try:
            with pytest.raises(AuthenticationError):
                await client.ping()
        finally:
            await client.aclose()
        await check_postgres_login_refused(with_password(endpoints.postgres_dsn, password))


async def test_up_starts_servers_that_answer(services: EmbeddedServices) -> None:
    """`up()` gives a Redis that answers PING and a Postgres with pgvector."""
    endpoints = services.up()
    assert endpoints.redis_url.startswith("redis://:")
    assert urlsplit(endpoints.redis_url).hostname == "127.0.0.1"
    assert endpoints.postgres_dsn.startswith("postgresql://postgres:")
    assert "@/postgres?host=" in endpoints.postgres_dsn
    await check_servers_answer(endpoints)
    assert services.status().running


async def test_servers_refuse_clients_without_the_password(services: EmbeddedServices) -> None:
    """A client that knows only the address (any local process, any OS user, for Valkey on
    127.0.0.1) gets NOAUTH or a refused login; the URLs' passwords let it in. Without them,
    Valkey's `default` user would be `nopass` and Postgres would `trust` its socket."""
    endpoints = services.up()
    await check_servers_refuse_strangers(endpoints)
    await check_servers_answer(endpoints)
    postmaster = (services.runtime_dir / "pg" / "postmaster.pid").read_text().splitlines()
    assert postmaster[5].strip() == ""  # listen_addresses: no TCP port, only the unix socket


def test_files_holding_passwords_are_private(services: EmbeddedServices) -> None:
    """The record, the Valkey config and the Postgres password file are 0600, the runtime
    directory cannot be listed by others, and `status` prints no password."""
    endpoints = services.up()
    runtime_dir = services.runtime_dir
    secrets_files = [
        runtime_dir / "services.json",
        runtime_dir / "postgres.password",
        runtime_dir / "valkey" / "valkey.conf",
        runtime_dir / "pg" / "pg_hba.conf",
    ]
    assert [oct(stat.S_IMODE(os.stat(path).st_mode)) for path in secrets_files] == ["0o600"] * 4
    for directory in (runtime_dir, runtime_dir / "valkey", runtime_dir / "pg"):
        mode = stat.S_IMODE(os.stat(directory).st_mode)
        assert mode & (stat.S_IRGRP | stat.S_IWGRP | stat.S_IROTH | stat.S_IWOTH) == 0, directory
    passwords = [urlsplit(endpoints.redis_url).password, urlsplit(endpoints.postgres_dsn).password]
    assert all(password and len(password) >= 32 for password in passwords)
    shown = sagemem_command(runtime_dir, "services", "status")
    assert shown.returncode == 0, shown.stdout + shown.stderr
    assert [p for p in passwords if p and p in shown.stdout + shown.stderr] == []
    assert [p for p in passwords if p and p in repr(services.status())] == []


async def test_restricted_credentials_cannot_log_in_as_the_administrator(
    service_endpoints: ServiceEndpoints, namespace: str, pg_schema: str
) -> None:
    """A process holding only a grant's credentials cannot become Valkey's `default` user or
    Postgres's `postgres` without their passwords (with `nopass`/`trust` it could, and the
    grant would bound nothing)."""
    capability = AgentCapability(tiers={0, 1, 2}, l3_read=True, l3_write=False)
    credentials = await create_grant(
        capability,
        agent_id="intern",
        namespace=namespace,
        redis_url=service_endpoints.redis_url,
        postgres_dsn=service_endpoints.postgres_dsn,
        schema=pg_schema,
    )
    try:
        restricted = redis_asyncio.Redis.from_url(credentials.redis_url)
        try:
            assert await restricted.ping() is True
            for username, password in ((None, "wrong"), ("default", "wrong"), ("default", "")):
                with pytest.raises(AuthenticationError):
                    await restricted.auth(password, username)
        finally:
            await restricted.aclose()
        connection = await asyncpg.connect(credentials.postgres_dsn, timeout=30)
        try:
            assert await connection.fetchval("SELECT current_user") != "postgres"
        finally:
            await connection.close(timeout=30)
        as_superuser = urlsplit(credentials.postgres_dsn)
        host = as_superuser.netloc.rpartition("@")[2]
        for guess in (None, as_superuser.password):  # no password; the role's own
            userinfo = "postgres" if guess is None else f"postgres:{guess}"
            dsn = urlunsplit(as_superuser._replace(netloc=f"{userinfo}@{host}"))
            await check_postgres_login_refused(dsn)
    finally:
        await revoke_grant(
            agent_id="intern",
            namespace=namespace,
            redis_url=service_endpoints.redis_url,
            postgres_dsn=service_endpoints.postgres_dsn,
            schema=pg_schema,
        )


async def _trust_every_local_connection(runtime_dir: Path, dsn: str) -> None:
    """Make the running Postgres trust its socket, as sagemem's servers did before they
    required passwords, and wait until a connection without password is let in."""
    hba = runtime_dir / "pg" / "pg_hba.conf"
    owner = os.stat(hba)
    hba.write_text("local all all trust\n")
    os.chown(hba, owner.st_uid, owner.st_gid)
    connection = await asyncpg.connect(dsn, timeout=30)
    try:
        assert await connection.fetchval("SELECT pg_reload_conf()") is True
    finally:
        await connection.close(timeout=30)
    async with asyncio.timeout(30):
        while True:  # the postmaster applies the reload between connections: nothing to await
            try:
                connection = await asyncpg.connect(with_password(dsn, None), timeout=30)
            except asyncpg.InvalidAuthorizationSpecificationError:
                await asyncio.sleep(0.02)
                continue
            await connection.close(timeout=30)
            return


async def test_servers_of_an_older_sagemem_without_passwords_are_replaced(
    services: EmbeddedServices,
) -> None:
    """Servers recorded by a sagemem that did not require passwords (format-1 record, Valkey
    `nopass`, Postgres `trust`) are stopped and started again with passwords, keeping the
    Postgres data; re-attaching to them as they were would leave both servers open."""
    old = services.up()
    before = services.status()
    admin = redis_asyncio.Redis.from_url(old.redis_url)
    try:
        await admin.config_set("requirepass", "")
    finally:
        await admin.aclose()
    await _trust_every_local_connection(services.runtime_dir, old.postgres_dsn)
    connection = await asyncpg.connect(old.postgres_dsn, timeout=30)
    try:
        await connection.execute("CREATE TABLE kept (n int); INSERT INTO kept VALUES (7)")
    finally:
        await connection.close(timeout=30)
    old_record = {
        "format": 1,
        "redis": {"pid": before.redis.pid, "port": urlsplit(old.redis_url).port},
        "postgres": {
            "pid": before.postgres.pid,
            "pgdata": str(services.runtime_dir / "pg"),
            "dsn": with_password(old.postgres_dsn, None),
        },
    }
    (services.runtime_dir / "services.json").write_text(json.dumps(old_record))

    endpoints = services.up()

    after = services.status()
    assert after.running
    assert after.redis.pid != before.redis.pid
    assert after.postgres.pid != before.postgres.pid
    assert [
        pid for pid in (before.redis.pid, before.postgres.pid) if pid and process_alive(pid)
    ] == []
    await check_servers_refuse_strangers(endpoints)
    await check_servers_answer(endpoints)
    connection = await asyncpg.connect(endpoints.postgres_dsn, timeout=30)
    try:
        assert await connection.fetchval("SELECT n FROM kept") == 7
    finally:
        await connection.close(timeout=30)


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
    redis_line = f"redis: running, pid {status.redis.pid}, {redacted_url(endpoints.redis_url)}"
    assert redis_line in shown.stdout
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
