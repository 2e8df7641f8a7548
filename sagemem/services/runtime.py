"""The runtime directories (private to this user, refusing symlinks and foreign owners) and the
private files in them: passwords and atomically replaced 0600 files.
"""

from __future__ import annotations

import os
import secrets
import stat
import tempfile
from pathlib import Path
from typing import Final

from sagemem.errors import ServiceError

from .types import RUNTIME_DIR_ENV

__all__ = ["create_private_runtime_dir", "default_runtime_dir", "user_base_dir"]


_PASSWORD_BYTES: Final = 32  # secrets.token_urlsafe: 43 characters, none needing URL quoting


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


def _tail(path: Path, offset: int = 0, limit_bytes: int = 2000) -> str:
    try:
        with path.open("rb") as handle:
            handle.seek(offset)
            data = handle.read()
    except OSError:
        return "(no log)"
    return data[-limit_bytes:].decode(errors="replace").strip() or "(empty log)"
