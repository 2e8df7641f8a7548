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
    "ClusterStatus",
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
class ClusterStatus:
    """The embedded Redis cluster as seen by `EmbeddedServices.status()`.

    `state` is RUNNING when every node answers and says the cluster is ok, STALE otherwise
    (a node died, or the cluster lost a slot). `primaries` and `replicas` (per primary) are the
    shape it was started with; `nodes` are its nodes, each named with its current role.
    `address` is the first primary's URL, password included; `repr()` hides the password.
    """

    state: ServerState
    primaries: int
    replicas: int
    address: str
    nodes: tuple[ServerStatus, ...]

    def __repr__(self) -> str:
        return (
            f"ClusterStatus(state={self.state!r}, primaries={self.primaries!r}, "
            f"replicas={self.replicas!r}, address={redacted_url(self.address)!r}, "
            f"nodes={self.nodes!r})"
        )


@dataclass(frozen=True, slots=True)
class ServicesStatus:
    """The embedded servers of one runtime directory: the single-node Redis, Postgres and,
    if one was started (`sagemem services up --cluster N`), the Redis cluster."""

    runtime_dir: Path
    redis: ServerStatus
    postgres: ServerStatus
    cluster: ClusterStatus | None = None  # None: no cluster recorded

    @property
    def running(self) -> bool:
        """True when Postgres and a Redis (the single node, or the cluster when no single
        node is recorded) answer, and nothing recorded is stale."""
        if self.postgres.state is not ServerState.RUNNING:
            return False
        if self.cluster is None:
            return self.redis.state is ServerState.RUNNING
        if self.cluster.state is not ServerState.RUNNING:
            return False
        return self.redis.state is not ServerState.STALE
