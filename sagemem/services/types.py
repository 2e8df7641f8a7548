"""The addresses and states of the embedded servers, and the variables that configure them."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Final

from sagemem.endpoints import redacted_url

__all__ = [
    "POSTGRES_DSN_ENV",
    "REDIS_URL_ENV",
    "RUNTIME_DIR_ENV",
    "ServerState",
    "ServerStatus",
    "ServiceEndpoints",
    "ServicesStatus",
]


REDIS_URL_ENV: Final = "SAGEMEM_REDIS_URL"
POSTGRES_DSN_ENV: Final = "SAGEMEM_POSTGRES_DSN"
RUNTIME_DIR_ENV: Final = "SAGEMEM_RUNTIME_DIR"


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
