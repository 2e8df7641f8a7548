"""The `sagemem services up|status|down` command."""

from __future__ import annotations

import os
import shlex
import sys

from sagemem.endpoints import redacted_url
from sagemem.errors import ConfigurationError, ServiceError

from .redis_cluster import CLUSTER_PRIMARIES_MIN, ClusterShape
from .registry import EmbeddedServices
from .types import (
    POSTGRES_DSN_ENV,
    REDIS_URL_ENV,
    ClusterStatus,
    ServerState,
    ServerStatus,
    ServiceEndpoints,
)

__all__ = ["cluster_shape_from_options", "format_env_lines", "run_services_command"]


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


def _describe_cluster(cluster: ClusterStatus) -> list[str]:
    shape = ClusterShape(cluster.primaries, cluster.replicas)
    lines = [f"redis cluster: {cluster.state.value}, {shape}, {redacted_url(cluster.address)}"]
    lines += [f"  {_describe(node)}" for node in cluster.nodes]
    return lines


def cluster_shape_from_options(cluster: int | None, replicas: int | None) -> ClusterShape | None:
    """The cluster `sagemem services up --cluster N [--replicas R]` asks for (None: none).

    Raises `ConfigurationError` naming the bad value and the fix.
    """
    if cluster is None:
        if replicas is not None:
            raise ConfigurationError(
                f"--replicas {replicas!r} needs --cluster N: replicas belong to the primaries "
                f"of a cluster; add --cluster {CLUSTER_PRIMARIES_MIN} (or drop --replicas)"
            )
        return None
    return ClusterShape(cluster, 0 if replicas is None else replicas)


def run_services_command(
    action: str,
    *,
    cluster: int | None = None,
    replicas: int | None = None,
    only_cluster: bool = False,
) -> int:
    """Run `sagemem services <action>` on the default runtime directory; return the exit status.

    - `up`: start or reuse; print shell lines setting `SAGEMEM_REDIS_URL` and
      `SAGEMEM_POSTGRES_DSN` (and exporting them) on stdout, progress on stderr. 0, or 1 on error.
      With `cluster` (primaries) and `replicas` (per primary) a Redis cluster takes the
      single-node Redis's place and `SAGEMEM_REDIS_URL` names its first primary; a bad shape,
      or a running cluster of another shape, is a usage error (2) and starts nothing.
    - `status`: print each server's state, pid and address (and the cluster's nodes). 0 if
      Postgres and a Redis run and nothing recorded is stale, 1 if not, 2 on error.
    - `down`: stop all servers and verify they are gone; with `only_cluster`, only the
      cluster. 0 (also if nothing ran), 1 on error.
    """
    services = EmbeddedServices()
    try:
        if action == "up":
            try:
                shape = cluster_shape_from_options(cluster, replicas)
            except ConfigurationError as error:
                print(f"sagemem services up: error: {error}", file=sys.stderr)
                return 2
            print(f"sagemem: embedded servers in {services.runtime_dir}", file=sys.stderr)
            if shape is not None:
                print(f"sagemem: embedded Redis cluster: {shape}", file=sys.stderr)
            try:
                endpoints = services.up(cluster=shape)
            except ConfigurationError as error:  # a cluster of another shape already runs
                print(f"sagemem services up: error: {error}", file=sys.stderr)
                return 2
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
            if status.cluster is not None:
                print("\n".join(_describe_cluster(status.cluster)))
            return 0 if status.running else 1
        if action == "down":
            if only_cluster:
                services.down(redis=False, postgres=False, cluster=True)
                print(
                    f"sagemem: embedded Redis cluster in {services.runtime_dir} stopped",
                    file=sys.stderr,
                )
                return 0
            services.down()
            print(f"sagemem: embedded servers in {services.runtime_dir} stopped", file=sys.stderr)
            return 0
    except ServiceError as error:
        print(f"sagemem services {action}: error: {error}", file=sys.stderr)
        return 2 if action == "status" else 1
    print(f"sagemem services: unknown action {action!r}; use up, status or down", file=sys.stderr)
    return 2
