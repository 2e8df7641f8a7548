"""Processes of the embedded servers: is a pid alive, which pids run in a directory, and stopping
one (escalating to SIGKILL, never signalling a reused pid). Linux reads /proc; elsewhere signals
alone decide.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import signal
import time
from pathlib import Path
from typing import Final

from sagemem.errors import ServiceError

__all__ = ["process_alive"]


_START_TIMEOUT_S: Final = 30.0
_START_POLL_S: Final = 0.02
_STOP_TIMEOUT_S: Final = 15.0
_PROBE_TIMEOUT_S: Final = 2.0
_logger = logging.getLogger("sagemem.services")
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
