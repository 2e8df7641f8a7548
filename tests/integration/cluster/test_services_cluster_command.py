"""`sagemem services up --cluster 3`, `status` and `down --cluster` in another process, on a
private runtime directory: the same SAGEMEM_* lines as for one server, the nodes listed by
`status`, every node stopped by `down --cluster` while Postgres keeps running."""

from __future__ import annotations

import pytest

from sagemem.redis_topology import RedisTopology, detect_redis_topology_at
from sagemem.services import (
    POSTGRES_DSN_ENV,
    REDIS_URL_ENV,
    EmbeddedServices,
    ServerState,
    process_alive,
)
from tests.integration.test_services import parse_env_lines, sagemem_command

pytestmark = pytest.mark.cluster


async def test_services_up_with_a_cluster_prints_the_usual_lines_and_down_stops_every_node(
    private_services: EmbeddedServices,
) -> None:
    """`up --cluster 3` exports a Redis URL naming a cluster node and a Postgres DSN; `status`
    lists 3 running primaries and exits 0; a second `up` of another shape exits 2 and
    changes nothing; `down --cluster` leaves no node alive and Postgres running."""
    runtime_dir = private_services.runtime_dir
    up = sagemem_command(runtime_dir, "services", "up", "--cluster", "3")
    assert up.returncode == 0, up.stderr
    exported = parse_env_lines(up.stdout)
    status = private_services.status()
    assert status.cluster is not None
    assert exported[REDIS_URL_ENV] == status.cluster.address
    assert exported[POSTGRES_DSN_ENV] == status.postgres.address
    assert await detect_redis_topology_at(exported[REDIS_URL_ENV]) is RedisTopology.CLUSTER

    shown = sagemem_command(runtime_dir, "services", "status")
    assert shown.returncode == 0, shown.stdout + shown.stderr
    assert "redis cluster: running, 3 primaries, no replicas" in shown.stdout
    assert shown.stdout.count("(primary): running, pid ") == 3
    assert "redis: not started" in shown.stdout

    other_shape = sagemem_command(
        runtime_dir, "services", "up", "--cluster", "3", "--replicas", "1"
    )
    assert other_shape.returncode == 2
    assert "sagemem services down --cluster" in other_shape.stderr
    assert private_services.status().cluster == status.cluster

    pids = [node.pid for node in status.cluster.nodes]
    down = sagemem_command(runtime_dir, "services", "down", "--cluster")
    assert down.returncode == 0, down.stderr
    after = private_services.status()
    assert after.cluster is None
    assert after.postgres.state is ServerState.RUNNING
    assert [pid for pid in pids if pid is None or process_alive(pid)] == []
